//! A node's local context: data dir, configuration, identity, store.

use std::path::Path;

use anyhow::{Context, Result, bail};
use crdt_store::{Store, StoreError};

use crate::config::{Config, DataDir};
use crate::identity::Identity;

#[derive(Debug)]
pub struct Node {
    pub dir: DataDir,
    pub config: Config,
    pub identity: Identity,
    /// Derived from the mesh CA certificate (`ca.crt`); never configured by hand.
    pub mesh_id: String,
}

impl Node {
    /// Loads an initialised data dir.
    pub fn load(root: &Path) -> Result<Node> {
        let dir = DataDir::new(root.to_owned());
        if !dir.key().exists() {
            bail!(
                "{} holds no rhizome node (no {}): run `rhizome init --data-dir {}` first",
                root.display(),
                crate::config::KEY_FILE,
                root.display()
            );
        }
        let config = Config::load(&dir.config(), std::env::vars())?;
        let identity = Identity::load(&dir.key())?;
        let ca = std::fs::read_to_string(dir.ca_cert()).with_context(|| {
            format!(
                "cannot read the mesh CA certificate {}",
                dir.ca_cert().display()
            )
        })?;
        let mesh_id = mesh::net::identity::mesh_id_of_ca(&ca)
            .with_context(|| format!("{} is corrupt", dir.ca_cert().display()))?;
        Ok(Node {
            dir,
            config,
            identity,
            mesh_id,
        })
    }

    pub fn node_id(&self) -> String {
        self.identity.node_id()
    }

    /// Whether this node holds the mesh's `control` role, whose workflow versions win under
    /// `conflict: control_wins`: a cloud peer (`role`, as configured or given to `start`), or
    /// the node that created the mesh and holds its CA key.
    pub fn holds_control(&self, role: mesh::proto::wire::Role) -> bool {
        role == mesh::proto::wire::Role::Cloud
            || self
                .dir
                .root
                .join(crate::config::OWN_MESH_DIR)
                .join(crate::config::CA_KEY_FILE)
                .exists()
    }

    /// Who this node writes as, with the role it is configured with.
    pub fn writer(&self) -> Result<crate::run::workflow::Writer> {
        let role = crate::fleet::hierarchy::parse_role(&self.config.node.role)?;
        Ok(crate::run::workflow::Writer {
            node: self.node_id(),
            control: self.holds_control(role),
        })
    }

    /// What workflow target selectors are matched against.
    pub fn traits(&self) -> crate::run::workflow::NodeTraits {
        crate::run::workflow::NodeTraits {
            id: self.node_id(),
            name: self.config.node.name.clone(),
            zone: self.config.node.zone.clone(),
            tags: self.config.node.tags.clone(),
        }
    }

    /// Opens the store directly (no node is running on this data dir).
    pub fn open_store(&self) -> Result<Store> {
        let config = self.config.store_config(&self.mesh_id, &self.node_id())?;
        let path = self.dir.store();
        match Store::open(&path, config) {
            Ok(store) => Ok(store),
            Err(e @ StoreError::Locked { .. }) => Err(e.into()),
            Err(e) => {
                Err(e).with_context(|| format!("opening the store of {}", self.dir.root.display()))
            }
        }
    }
}

/// Milliseconds since the Unix epoch, from the wall clock.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
