//! `rhizome mesh rotate-ca`: replacing the mesh CA, through the running node when there is one
//! (it holds the store), else on the store directly. The CA's key signs every record here;
//! the node only stores and spreads them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, Result, bail};
use crdt_store::{CaRecord, DocName, MeshRegistry};
use serde_json::json;

use crate::node::{Node, now_ms};
use crate::security::trust::{self, holder};

pub fn rotate_ca(
    root: &Path,
    mesh_dir: Option<&Path>,
    finish: bool,
    force: bool,
    json: bool,
) -> Result<()> {
    let here = Node::load(root)?;
    let own = root.join(crate::config::OWN_MESH_DIR);
    let dir = mesh_dir.unwrap_or(&own);
    if !dir.join(crate::config::CA_KEY_FILE).exists() && !dir.join("ca-next.key").exists() {
        bail!(
            "rotating the CA needs the mesh CA's key, and {} holds none: run this where the CA \
             is (the node that created the mesh, or `--mesh DIR` with the directory of `rhizome \
             mesh create`)",
            dir.display()
        );
    }
    let store_records = |records: BTreeMap<String, CaRecord>| -> Result<()> {
        match crate::cli::client::running_node(&here.dir) {
            Some(api) => {
                let _: serde_json::Value =
                    api.post("/mesh/cas", &json!({ "records": records }).to_string())?;
            }
            None => {
                let mut store = here.open_store()?;
                store.update::<MeshRegistry, _>(&DocName::Mesh, |mesh| mesh.cas.extend(records))?;
                let registry: MeshRegistry = store.read(&DocName::Mesh)?;
                trust::update(&here.trust, &registry, &here.mesh_id, &here.dir)?;
            }
        }
        Ok(())
    };
    if !finish {
        let next = holder::start(dir, now_ms(), store_records)?;
        let fp = mesh::net::enrolment::fingerprint(next.cert_pem())?;
        if json {
            println!(
                "{}",
                serde_json::to_string_pretty(&json!({
                    "current": fp,
                    "mesh_id": next.mesh_id(),
                    "finished": false,
                }))?
            );
        } else {
            println!(
                "new CA {} of mesh {} announced; every node trusts it beside the old one and \
                 renews its certificate from it once online",
                &fp[..16],
                next.mesh_id()
            );
            println!(
                "  next  `rhizome mesh rotate-ca --finish` once every node has renewed (it says \
                 which have not)"
            );
        }
        return Ok(());
    }
    let registry = read_registry(&here)?;
    let view = trust::evaluate(&registry, &here.mesh_id, &here.trust.all())?;
    let revoked: BTreeSet<String> =
        crate::security::revocations::verdicts(&registry, &here.mesh_id, &view.all()).revoked;
    let done = holder::finish(
        dir,
        &registry,
        &view,
        &revoked,
        force,
        now_ms(),
        store_records,
    )?;
    if json {
        println!("{}", serde_json::to_string_pretty(&done)?);
    } else if done.retired.is_empty() {
        println!(
            "nothing to retire: CA {} is the only one the mesh admits",
            &done.current[..16]
        );
    } else {
        println!(
            "retired CA {}; the mesh admits only CA {} from now on",
            done.retired
                .iter()
                .map(|fp| &fp[..16])
                .collect::<Vec<_>>()
                .join(", "),
            &done.current[..16]
        );
        for (id, name) in &done.waiting_for {
            println!(
                "  ! {name} ({id}) still holds an old certificate: it joins again with a token"
            );
        }
    }
    Ok(())
}

/// The `mesh` document, from the running node or the store.
fn read_registry(node: &Node) -> Result<MeshRegistry> {
    let shown: serde_json::Value = match crate::cli::client::running_node(&node.dir) {
        Some(api) => api.get("/doc?id=mesh")?,
        None => crate::cli::commands::show_doc(&mut node.open_store()?, "mesh")?,
    };
    serde_json::from_value(shown["content"].clone()).context("the mesh document")
}
