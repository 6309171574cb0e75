//! Which peer may see which document. The same pure rule runs on every node, so an allowed peer
//! can relay a document onward and a refused one never learns that it exists.

use std::collections::BTreeSet;

use samod_core::ShareConfig;

use crate::names::DocName;

/// The share policy of a node: a function of the document's name, the peer and the set of
/// aggregators this node knows of.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SharePolicy {
    aggregators: BTreeSet<String>,
}

impl SharePolicy {
    /// A policy with no aggregators: results and rollups stay with their owners.
    pub fn new() -> SharePolicy {
        SharePolicy::default()
    }

    /// Replaces the set of aggregator node ids. Returns whether it changed.
    pub fn set_aggregators(&mut self, aggregators: BTreeSet<String>) -> bool {
        let changed = self.aggregators != aggregators;
        self.aggregators = aggregators;
        changed
    }

    /// The node ids that receive results and rollups.
    pub fn aggregators(&self) -> &BTreeSet<String> {
        &self.aggregators
    }

    /// The decision for one document and one connected member of the mesh. Admission (mesh
    /// certificate, revocations) has already excluded strangers by the time a peer is asked about.
    pub fn decide(&self, name: Option<&DocName>, peer: &str) -> ShareConfig {
        match name {
            // An id whose name this node does not know: do not even admit to having it.
            None => ShareConfig::none(),
            Some(DocName::Mesh | DocName::Workflow { .. }) => ShareConfig::read_write(),
            Some(DocName::Results { node, .. }) => {
                if node == peer || self.aggregators.contains(peer) {
                    ShareConfig::read_write()
                } else {
                    ShareConfig::none()
                }
            }
            Some(DocName::Rollup { .. }) => {
                if self.aggregators.contains(peer) {
                    ShareConfig::read_write()
                } else {
                    ShareConfig::none()
                }
            }
        }
    }

    /// Whether a peer may see a document at all.
    pub fn shares(&self, name: Option<&DocName>, peer: &str) -> bool {
        self.decide(name, peer) != ShareConfig::none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::Window;

    #[test]
    fn mesh_and_workflows_go_everywhere_results_to_owner_and_aggregators() {
        let mut policy = SharePolicy::new();
        let window = Window::containing(0, 60);
        let results = DocName::results("a", window).unwrap();
        let rollup = DocName::rollup("site", window).unwrap();
        assert!(policy.shares(Some(&DocName::Mesh), "x"));
        assert!(policy.shares(Some(&DocName::workflow("w").unwrap()), "x"));
        assert!(policy.shares(Some(&results), "a"));
        assert!(!policy.shares(Some(&results), "b"));
        assert!(!policy.shares(Some(&rollup), "b"));
        assert!(!policy.shares(None, "a"));

        assert!(policy.set_aggregators(["b".to_owned()].into()));
        assert!(!policy.set_aggregators(["b".to_owned()].into()));
        assert!(policy.shares(Some(&results), "b"));
        assert!(policy.shares(Some(&rollup), "b"));
        assert!(!policy.shares(Some(&results), "c"));
    }
}
