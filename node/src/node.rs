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
    /// The mesh CAs this node trusts (`ca.crt`, then what CA records in the `mesh` document
    /// add), shared by everything that checks a signature or a certificate.
    pub trust: crate::security::trust::Trust,
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
        let trust = crate::security::trust::Trust::from_bundle(&ca)
            .with_context(|| format!("{} is corrupt", dir.ca_cert().display()))?;
        Ok(Node {
            dir,
            config,
            identity,
            mesh_id,
            trust,
        })
    }

    pub fn node_id(&self) -> String {
        self.identity.node_id()
    }

    /// What the node's certificate says: its mesh role and validity.
    pub fn cert_info(&self) -> Result<mesh::net::identity::CertInfo> {
        let pem = std::fs::read_to_string(self.dir.cert())
            .with_context(|| format!("cannot read {}", self.dir.cert().display()))?;
        let der = mesh::net::identity::parse_pem_cert(&pem, "node certificate")?;
        mesh::net::identity::cert_info(&der)
            .with_context(|| format!("{} is not valid", self.dir.cert().display()))
    }

    /// Whether this node's certificate carries the mesh's `control` role (the node that
    /// started the mesh, or one made with `init --mesh DIR --control`): it may change
    /// workflows, and its versions win under `conflict: control_wins`. Only the CA grants it.
    pub fn holds_control(&self) -> bool {
        self.cert_info()
            .is_ok_and(|c| c.role == mesh::net::identity::NodeRole::Control)
    }

    /// Who this node writes workflow versions as, and the credentials it signs them with.
    pub fn writer(&self) -> Result<crate::run::workflow::Writer> {
        Ok(crate::run::workflow::Writer {
            node: self.node_id(),
            control: self.holds_control(),
            signer: Some(std::sync::Arc::new(
                crate::security::workflow_rights::credentials(self)?,
            )),
            mesh_id: self.mesh_id.clone(),
            trust: self.trust.clone(),
        })
    }

    /// The rules the store applies to what peers send (signed workflow versions).
    fn write_rules(&self) -> Result<std::sync::Arc<dyn crdt_store::WriteRules>> {
        Ok(std::sync::Arc::new(
            crate::security::workflow_rights::ControlSigned {
                mesh_id: self.mesh_id.clone(),
                trust: self.trust.clone(),
            },
        ))
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
        let mut config = self.config.store_config(&self.mesh_id, &self.node_id())?;
        config.write_rules = Some(self.write_rules()?);
        let path = self.dir.store();
        crate::security::store_key::open(&self.config.store, &self.dir.root, &path, config).map_err(
            |e| {
                // "In use by another process" says all; anything else names the data dir.
                if matches!(
                    e.downcast_ref::<StoreError>(),
                    Some(StoreError::Locked { .. })
                ) {
                    e
                } else {
                    e.context(format!("opening the store of {}", self.dir.root.display()))
                }
            },
        )
    }
}

/// Milliseconds since the Unix epoch, from the wall clock.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// What a caught panic said, for a log line or a failure's reason.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}
