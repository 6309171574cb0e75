//! Who may change what runs where: workflow versions are applied only on nodes whose
//! certificate carries the `control` role (or on any member, where the mesh CA has set
//! `members_write_workflows`), signed there with the node's key, and taken from a peer only
//! when the signature and the certificate verify against the mesh CA and the writer had the
//! right. A member that writes a version without it (a compromised edge, a modified binary)
//! finds its peers refusing it: the version goes no further than its own store.

use anyhow::{Context, Result};
use crdt_store::WorkflowDoc;
use mesh::net::identity::{NodeCredentials, NodeRole, verify_node_signature};

/// Why a node may not apply a workflow version; the API answers it with 403.
#[derive(Debug, thiserror::Error)]
#[error(
    "this node's certificate holds the `{role}` role: workflows are changed on a node with the \
     `control` role (the cloud peer, the node that created the mesh, or one made with \
     `rhizome init --mesh DIR --control`); its peers would refuse a version written here"
)]
pub struct NotPermitted {
    pub role: NodeRole,
}

/// Whether `writer` may apply workflow versions: a `control` node always, a member when the
/// mesh's policy lets members write workflows. The outer error is the store's.
pub fn may_apply(
    store: &mut crdt_store::Store,
    writer: &crate::run::workflow::Writer,
) -> crdt_store::Result<Result<(), NotPermitted>> {
    if writer.control {
        return Ok(Ok(()));
    }
    let registry = store.registry()?;
    let (policy, _) =
        crate::security::policy::read(&registry, &writer.mesh_id, &writer.trust.all());
    Ok(if policy.members_write_workflows {
        Ok(())
    } else {
        Err(NotPermitted {
            role: NodeRole::Member,
        })
    })
}

/// Signs a version about to be applied here: the writer's certificate travels with it.
pub fn sign(version: &mut WorkflowDoc, credentials: &NodeCredentials) {
    version.author_cert = credentials.cert_pem();
    version.signature = String::new();
    version.signature = credentials.sign(&version.signed_text());
}

/// The rules a node's store applies to workflow versions from peers.
#[derive(Debug)]
pub struct ControlSigned {
    pub mesh_id: String,
    /// The mesh's CAs.
    pub trust: crate::security::trust::Trust,
}

impl crdt_store::WriteRules for ControlSigned {
    fn check_workflow_version(
        &self,
        version: &WorkflowDoc,
        registry: &crdt_store::MeshRegistry,
    ) -> Result<(), String> {
        if version.signature.is_empty() || version.author_cert.is_empty() {
            return Err("it is not signed (only versions signed on a control node stand)".into());
        }
        let signer = verify_node_signature(
            &self.trust.all(),
            &version.author_cert,
            &version.signed_text(),
            &version.signature,
        )
        .map_err(|e| e.to_string())?;
        if signer.node_id != version.updated_by {
            return Err(format!(
                "it names {} as its writer but is signed by node {}",
                version.updated_by, signer.node_id
            ));
        }
        let control = signer.role == NodeRole::Control;
        if version.by_control != control {
            return Err(format!(
                "it says by_control = {}, but its writer holds the `{}` role",
                version.by_control, signer.role
            ));
        }
        if !control {
            let (policy, _) =
                crate::security::policy::read(registry, &self.mesh_id, &self.trust.all());
            if !policy.members_write_workflows {
                return Err(format!(
                    "its writer, node {}, holds the `{}` role, not `control`, and the mesh does \
                     not let members write workflows",
                    signer.node_id, signer.role
                ));
            }
        }
        Ok(())
    }
}

/// The credentials a node signs with, from its data dir.
pub fn credentials(node: &crate::node::Node) -> Result<NodeCredentials> {
    let read = |path: std::path::PathBuf| {
        std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))
    };
    NodeCredentials::new(
        &read(node.dir.cert())?,
        &read(node.dir.ca_cert())?,
        node.identity.secret(),
    )
    .with_context(|| format!("the certificates in {}", node.dir.root.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crdt_store::WriteRules as _;
    use mesh::net::identity::MeshCa;

    fn node(ca: &MeshCa, seed: u8, role: NodeRole) -> (NodeCredentials, String) {
        let secret = [seed; 32];
        let pair = ed25519_dalek::SigningKey::from_bytes(&secret);
        let public = pair.verifying_key().to_bytes();
        let creds =
            NodeCredentials::new(&ca.issue(&public, role).unwrap(), ca.cert_pem(), secret).unwrap();
        let id = creds.node_id().unwrap();
        (creds, id)
    }

    #[test]
    fn only_versions_signed_by_a_control_node_of_this_mesh_stand() {
        let ca = MeshCa::create().unwrap();
        let rules = ControlSigned {
            mesh_id: ca.mesh_id().to_owned(),
            trust: crate::security::trust::Trust::from_bundle(ca.cert_pem()).unwrap(),
        };
        let mut registry = crdt_store::MeshRegistry::default();
        let (cloud, cloud_id) = node(&ca, 1, NodeRole::Control);
        let (edge, edge_id) = node(&ca, 2, NodeRole::Member);
        let version = |by: &str| WorkflowDoc {
            id: "w".into(),
            version: 3,
            updated_by: by.into(),
            by_control: true,
            ..WorkflowDoc::default()
        };
        let mut good = version(&cloud_id);
        sign(&mut good, &cloud);
        assert_eq!(rules.check_workflow_version(&good, &registry), Ok(()));
        let why = |v: &WorkflowDoc| rules.check_workflow_version(v, &registry).unwrap_err();
        assert!(why(&version(&cloud_id)).contains("not signed"));
        // Changed after signing.
        let mut edited = good.clone();
        edited.trigger = "every 1s".into();
        assert!(
            why(&edited).contains("not the certificate key's"),
            "{}",
            why(&edited)
        );
        // An edge signs its own version: a valid signature, the wrong role.
        let mut by_edge = version(&edge_id);
        by_edge.by_control = false;
        sign(&mut by_edge, &edge);
        assert!(why(&by_edge).contains("`member` role"), "{}", why(&by_edge));
        // Claiming control does not make it so.
        let mut claims = version(&edge_id);
        sign(&mut claims, &edge);
        assert!(why(&claims).contains("by_control"), "{}", why(&claims));
        // An edge claims the cloud wrote it, with the cloud's certificate but its own key.
        let mut forged = version(&cloud_id);
        forged.author_cert = cloud.cert_pem();
        forged.signature = edge.sign(&forged.signed_text());
        assert!(
            why(&forged).contains("not the certificate key's"),
            "{}",
            why(&forged)
        );
        // A control node of another mesh.
        let stranger_ca = MeshCa::create().unwrap();
        let (stranger, stranger_id) = node(&stranger_ca, 1, NodeRole::Control);
        let mut foreign = version(&stranger_id);
        sign(&mut foreign, &stranger);
        assert!(
            why(&foreign).contains("not issued by this mesh"),
            "{}",
            why(&foreign)
        );
        // Signed by the cloud, but naming another writer.
        let mut misnamed = version(&edge_id);
        sign(&mut misnamed, &cloud);
        assert!(why(&misnamed).contains("names"), "{}", why(&misnamed));
        // Once the CA lets members write, the edge's signed version stands (and still may not
        // claim control); a member's own say-so lets nothing in.
        registry.policy.insert(
            crate::security::policy::MEMBERS_WRITE_WORKFLOWS.into(),
            crate::security::policy::decide(
                &ca,
                crate::security::policy::MEMBERS_WRITE_WORKFLOWS,
                "true",
                1,
            )
            .unwrap(),
        );
        assert_eq!(rules.check_workflow_version(&by_edge, &registry), Ok(()));
        assert!(rules.check_workflow_version(&claims, &registry).is_err());
    }
}
