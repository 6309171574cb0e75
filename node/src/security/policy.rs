//! Mesh-wide settings only the mesh CA may decide, signed like revocations and obeyed only when
//! the signature verifies. One so far: whether members (nodes without the `control` role) may
//! write workflows. Off by default: then only control nodes change what runs where, and a
//! member's version is refused by every peer. On, members write too (their versions still
//! signed with their own certificates, so authorship holds), and `conflict: control_wins`
//! makes a control node's version win over theirs.

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use crdt_store::{MeshRegistry, PolicyDecision};
use mesh::net::identity::{MeshCa, verify_ca_signature};

/// The setting that lets members write workflows.
pub const MEMBERS_WRITE_WORKFLOWS: &str = "members_write_workflows";

/// Every setting, with what it means, for `mesh policy`.
pub const SETTINGS: &[(&str, &str)] = &[(
    MEMBERS_WRITE_WORKFLOWS,
    "true: nodes without the control role may apply workflows too (control_wins then favours \
     control nodes' versions); false (the default): only control nodes may",
)];

/// The mesh's settings as the CA decided them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MeshPolicy {
    pub members_write_workflows: bool,
}

/// The settings a registry's valid decisions make, and the decisions ignored (by setting,
/// with why).
pub fn read(
    registry: &MeshRegistry,
    mesh_id: &str,
    ca_cert_pem: &str,
) -> (MeshPolicy, BTreeMap<String, String>) {
    let mut policy = MeshPolicy::default();
    let mut ignored = BTreeMap::new();
    for (setting, decision) in &registry.policy {
        let valid = !decision.signature.is_empty()
            && verify_ca_signature(
                ca_cert_pem,
                &decision.signed_text(mesh_id, setting),
                &decision.signature,
            );
        if !valid {
            ignored.insert(
                setting.clone(),
                "not signed by the mesh CA for this setting and value".into(),
            );
            continue;
        }
        match (setting.as_str(), decision.value.as_str()) {
            (MEMBERS_WRITE_WORKFLOWS, "true") => policy.members_write_workflows = true,
            (MEMBERS_WRITE_WORKFLOWS, "false") => policy.members_write_workflows = false,
            (setting, value) => {
                ignored.insert(
                    setting.to_owned(),
                    format!("`{value}` is not a value this version knows"),
                );
            }
        }
    }
    (policy, ignored)
}

/// A decision about `setting`, checked and signed by the CA.
pub fn decide(ca: &MeshCa, setting: &str, value: &str, now_ms: i64) -> Result<PolicyDecision> {
    if !SETTINGS.iter().any(|(name, _)| *name == setting) {
        let known: Vec<&str> = SETTINGS.iter().map(|(name, _)| *name).collect();
        bail!(
            "`{setting}` is not a mesh setting (known: {})",
            known.join(", ")
        );
    }
    if !matches!(value, "true" | "false") {
        bail!("{setting} is true or false, not `{value}`");
    }
    let mut decision = PolicyDecision {
        value: value.to_owned(),
        decided_ms: now_ms,
        signature: String::new(),
    };
    decision.signature = ca.sign(&decision.signed_text(ca.mesh_id(), setting))?;
    Ok(decision)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_cas_settings_count() {
        let ca = MeshCa::create().unwrap();
        let mut registry = MeshRegistry::default();
        let read_now = |r: &MeshRegistry| read(r, ca.mesh_id(), ca.cert_pem());
        assert!(!read_now(&registry).0.members_write_workflows);
        let on = decide(&ca, MEMBERS_WRITE_WORKFLOWS, "true", 1).unwrap();
        registry
            .policy
            .insert(MEMBERS_WRITE_WORKFLOWS.into(), on.clone());
        assert!(read_now(&registry).0.members_write_workflows);
        // A member flips it on by writing the value without the CA.
        let mut forged = on;
        forged.value = "false".into();
        registry
            .policy
            .insert(MEMBERS_WRITE_WORKFLOWS.into(), forged);
        let (policy, ignored) = read_now(&registry);
        assert!(!policy.members_write_workflows && ignored.contains_key(MEMBERS_WRITE_WORKFLOWS));
        assert!(decide(&ca, "nonsense", "true", 1).is_err());
        assert!(decide(&ca, MEMBERS_WRITE_WORKFLOWS, "maybe", 1).is_err());
    }
}
