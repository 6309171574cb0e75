//! The running node's artifacts as its workflows see them: what a version lacks, fetching it
//! from peers, pins on what is in use, and `onnx` steps whose `model: artifact:<id>` is
//! resolved to the artifact's file here.

use std::collections::BTreeSet;
use std::sync::Arc;

use agents::{AgentError, Registry};

use super::Artifacts;
use crate::fleet::sync::SyncHandle;
use crate::run::artifact_refs::PREFIX;
use crate::run::engine::AgentFactory;
use crate::run::scheduler::ArtifactProvider;

/// [`ArtifactProvider`] over the node's store and its sync actor.
#[derive(Debug, Clone)]
pub struct NodeArtifacts {
    pub artifacts: Artifacts,
    pub sync: SyncHandle,
}

impl ArtifactProvider for NodeArtifacts {
    fn missing(&self, ids: &BTreeSet<String>) -> BTreeSet<String> {
        self.artifacts
            .with_blocking(|s| {
                Ok(ids
                    .iter()
                    .filter(|id| !s.missing_chunks(id).is_ok_and(|m| m.is_empty()))
                    .cloned()
                    .collect())
            })
            .unwrap_or_else(|_| ids.clone())
    }

    fn fetch(&self, ids: BTreeSet<String>, done: Box<dyn FnOnce(Result<(), String>) + Send>) {
        let (artifacts, sync) = (self.artifacts.clone(), self.sync.clone());
        tokio::spawn(async move {
            for id in &ids {
                if let Err(e) = super::fetch::fetch(&sync, &artifacts, id).await {
                    return done(Err(format!("{e:#}")));
                }
            }
            done(Ok(()));
        });
    }

    fn pin(&self, ids: BTreeSet<String>) {
        self.artifacts.pin(ids);
    }
}

/// The agents crate's registry, with an `onnx` step's `model: artifact:<id>` replaced by the
/// path of that artifact's file on this node (written out from its chunks the first time).
/// An artifact not whole here is a setup error of the step, like a missing model file.
pub fn agent_factory(artifacts: Artifacts) -> AgentFactory {
    Arc::new(move |kind, config| {
        let model = config
            .get("model")
            .and_then(|m| m.as_str())
            .and_then(|m| m.strip_prefix(PREFIX));
        let Some(id) = model.filter(|_| kind == "onnx") else {
            return Registry.create(kind, config);
        };
        let path = artifacts
            .with_blocking(|s| s.materialize(id, crate::node::now_ms()))
            .map_err(|e| AgentError::Setup {
                agent: "onnx",
                reason: format!("model {PREFIX}{id}: {e:#}"),
            })?;
        let mut config = config.clone();
        config["model"] = serde_json::Value::String(path.to_string_lossy().into_owned());
        Registry.create(kind, &config)
    })
}
