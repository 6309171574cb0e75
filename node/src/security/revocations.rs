//! Revocations are decisions of the mesh CA: `mesh revoke` signs one with the CA key, and
//! every node counts only decisions whose signature its copy of the CA certificate verifies.
//! The `mesh` document is writable by every member (each writes its own entry there), so an
//! unsigned or wrongly signed decision, from a compromised member or anyone relaying for one,
//! is ignored and logged rather than obeyed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, Result, bail};
use crdt_store::{MeshRegistry, Revocation};
use mesh::net::identity::{MeshCa, verify_ca_signature};

/// What a registry's revocation decisions amount to, for one mesh.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdicts {
    /// Node ids whose valid decision says revoked.
    pub revoked: BTreeSet<String>,
    /// Decisions ignored, by node id, with why.
    pub ignored: BTreeMap<String, String>,
}

/// Checks every decision of `registry` against the mesh CA's certificate.
pub fn verdicts(registry: &MeshRegistry, mesh_id: &str, ca_cert_pem: &str) -> Verdicts {
    let mut verdicts = Verdicts::default();
    for (node, decision) in &registry.revoked {
        if decision.signature.is_empty() {
            verdicts.ignored.insert(
                node.clone(),
                "not signed by the mesh CA (written by a member, or before revocations were \
                 signed)"
                    .into(),
            );
        } else if !verify_ca_signature(
            ca_cert_pem,
            &decision.signed_text(mesh_id, node),
            &decision.signature,
        ) {
            verdicts.ignored.insert(
                node.clone(),
                "its signature is not the mesh CA's for this node and decision".into(),
            );
        } else if !decision.withdrawn {
            verdicts.revoked.insert(node.clone());
        }
    }
    verdicts
}

/// A decision about `node`, signed by the CA.
pub fn decide(ca: &MeshCa, node: &str, withdrawn: bool, reason: &str, now_ms: i64) -> Revocation {
    let mut decision = Revocation {
        revoked_ms: now_ms,
        reason: reason.to_owned(),
        withdrawn,
        signature: String::new(),
    };
    decision.signature = ca
        .sign(&decision.signed_text(ca.mesh_id(), node))
        .expect("an ed25519 key signs");
    decision
}

/// Checks a node id as the command line gives it.
pub fn check_node_id(node: &str) -> Result<()> {
    if node.len() != 32 || !node.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("`{node}` is not a node id (32 hex characters, see `rhizome doc show mesh`)");
    }
    Ok(())
}

/// The CA that `mesh revoke` signs with: `--mesh DIR`, or the one this data dir holds because
/// its node started the mesh.
pub fn ca_for_decisions(data_dir: &Path, mesh_dir: Option<&Path>) -> Result<MeshCa> {
    let own = data_dir.join(crate::config::OWN_MESH_DIR);
    let dir = mesh_dir.unwrap_or(&own);
    if !dir.join(crate::config::CA_KEY_FILE).exists() {
        bail!(
            "revoking needs the mesh CA's key, and {} holds none: run this where the CA is \
             (the node that created the mesh, or `--mesh DIR` with the directory of \
             `rhizome mesh create`)",
            dir.display()
        );
    }
    crate::mesh_admin::load_ca(dir).context("the mesh CA for signing the decision")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_decisions_the_ca_signed_count_and_the_latest_says_which() {
        let ca = MeshCa::create().unwrap();
        let stranger = MeshCa::create().unwrap();
        let (a, b, c, d) = (
            "a".repeat(32),
            "b".repeat(32),
            "c".repeat(32),
            "d".repeat(32),
        );
        let mut registry = MeshRegistry::default();
        registry
            .revoked
            .insert(a.clone(), decide(&ca, &a, false, "stolen", 1));
        // A member writes a decision of its own: no signature.
        registry.revoked.insert(
            b.clone(),
            Revocation {
                revoked_ms: 2,
                reason: "I say so".into(),
                ..Revocation::default()
            },
        );
        // Another CA's signature, and a signature moved from another node.
        registry
            .revoked
            .insert(c.clone(), decide(&stranger, &c, false, "x", 3));
        let mut moved = decide(&ca, &a, false, "stolen", 1);
        moved.revoked_ms = 1;
        registry.revoked.insert(d.clone(), moved);
        let v = verdicts(&registry, ca.mesh_id(), ca.cert_pem());
        assert_eq!(v.revoked, BTreeSet::from([a.clone()]));
        assert_eq!(
            v.ignored.keys().cloned().collect::<BTreeSet<_>>(),
            BTreeSet::from([b.clone(), c.clone(), d.clone()])
        );
        assert!(v.ignored[&b].contains("not signed"), "{}", v.ignored[&b]);
        // Withdrawn by the CA: no longer revoked.
        registry
            .revoked
            .insert(a.clone(), decide(&ca, &a, true, "found again", 5));
        assert!(
            verdicts(&registry, ca.mesh_id(), ca.cert_pem())
                .revoked
                .is_empty()
        );
        // A withdrawal that claims to be a revocation does not verify.
        let mut flipped = decide(&ca, &a, true, "found again", 5);
        flipped.withdrawn = false;
        registry.revoked.insert(a.clone(), flipped);
        let v = verdicts(&registry, ca.mesh_id(), ca.cert_pem());
        assert!(v.revoked.is_empty() && v.ignored.contains_key(&a));
        assert!(check_node_id(&a).is_ok() && check_node_id("nope").is_err());
    }
}
