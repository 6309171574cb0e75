//! Releases of the `rhizome` binary itself, as the registry holds them.
//!
//! A release is an artifact (the binary's bytes move like any other artifact's) named by a
//! record that a control node signs: the version, the artifact id and the SHA-256 of the whole
//! file. A node installs nothing whose record does not verify against the mesh CA, and nothing
//! whose bytes do not hash to the record's SHA-256. `release rollout` signs the record again
//! with a staged-rollout [`Plan`]: version 1 of the plan is "runs this release", version 0 "runs
//! what it ran before", so the stages, gates and abort criteria of workflow rollouts apply as
//! they are, decided by [`super::rollout::decide`] from the nodes' reports.

use serde::{Deserialize, Serialize};

use super::rollout::Plan;

/// The key of a node's release report in [`super::NodeEntry::rollouts`]; no workflow id can be
/// it (workflow ids do not hold `@`).
pub const REPORT_KEY: &str = "@release";

/// Where a pause, resume or abort of a release rollout is kept: in the registry's `releases`
/// map beside the records (a new map would change the registry's genesis, which every node
/// of a mesh must share), under a key no version can be (versions hold no `/`). Each is a
/// [`super::rollout::SignedControl`] as JSON, signed for the workflow name [`REPORT_KEY`].
pub fn control_key(rollout_id: &str, control_id: &str) -> String {
    format!("{rollout_id}/control/{control_id}")
}

/// Whether a key of the registry's `releases` map holds a control rather than a release.
pub fn is_control_key(key: &str) -> bool {
    key.contains("/control/")
}

/// A release as published, and rolled out once `rollout` is set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// `X.Y.Z`.
    pub version: String,
    /// The artifact that holds the binary.
    pub artifact: String,
    /// SHA-256 of the whole binary, hex.
    pub sha256: String,
    pub size: u64,
    pub published_by: String,
    pub published_ms: i64,
    /// The staged rollout, once started; its plan version 1 is this release, 0 what ran before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Plan>,
    /// When the rollout was started: of releases rolled out, the latest start is the one
    /// in effect.
    #[serde(default)]
    pub rollout_ms: i64,
    /// How long a node gives the new binary to come up healthy before it returns to the one
    /// it ran, milliseconds.
    #[serde(default)]
    pub trial_ms: u64,
    /// The signer's node certificate (PEM), which must carry the `control` role.
    pub author_cert: String,
    /// Hex ed25519 signature by that node's key over [`Release::signed_text`].
    pub signature: String,
}

impl Release {
    /// What the signer signs: every field but the certificate and the signature.
    pub fn signed_text(&self, mesh_id: &str) -> String {
        let bare = Release {
            author_cert: String::new(),
            signature: String::new(),
            ..self.clone()
        };
        format!(
            "rhizome release v1\nmesh {mesh_id}\n{}",
            serde_json::to_string(&bare).expect("a release encodes")
        )
    }

    /// The id of its rollout (the seed of the order of the nodes).
    pub fn rollout_id(&self) -> String {
        format!("release@{}", self.version)
    }
}

/// Whether `version` reads as `X.Y.Z` (digits, with an optional `-suffix`).
pub fn valid_version(version: &str) -> bool {
    let (core, suffix) = match version.split_once('-') {
        Some((core, suffix)) => (core, Some(suffix)),
        None => (version, None),
    };
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 9 && p.bytes().all(|b| b.is_ascii_digit()))
        && suffix.is_none_or(|s| {
            !s.is_empty()
                && s.len() <= 40
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_read_as_three_numbers() {
        for good in ["0.2.0", "10.0.1", "1.2.3-rc.1"] {
            assert!(valid_version(good), "{good}");
        }
        for bad in [
            "",
            "1.2",
            "1.2.3.4",
            "v1.2.3",
            "1..3",
            "1.2.3-",
            "1.2.x",
            "1.2.3-a b",
        ] {
            assert!(!valid_version(bad), "{bad}");
        }
    }

    #[test]
    fn the_signature_covers_the_plan() {
        let release = Release {
            version: "0.2.0".into(),
            ..Release::default()
        };
        let planned = Release {
            rollout_ms: 5,
            ..release.clone()
        };
        assert_ne!(release.signed_text("m"), planned.signed_text("m"));
        let signed = Release {
            signature: "ab".into(),
            ..release.clone()
        };
        assert_eq!(release.signed_text("m"), signed.signed_text("m"));
    }
}
