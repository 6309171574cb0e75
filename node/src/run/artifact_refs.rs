//! Workflows that reference artifacts instead of paths: an `onnx` step's `model:
//! artifact:<name or id>`.
//!
//! A version pins exact bytes: when a definition is applied, each `artifact:<name>` is
//! replaced by `artifact:<id>` of the artifact that name stands for on the applying node, which
//! must hold it. Every node that runs the version then runs the same model, a later `artifact
//! add` under the same name changes nothing until a new version is applied, and a rollback
//! returns to the model the old version ran. Nodes fetch what a version references before they
//! switch to it, and never evict it while it is in use (see the scheduler).

use std::collections::BTreeSet;

use anyhow::{Context, Result, bail};
use crdt_store::WorkflowDoc;
use serde_json::Value;

/// How a configuration names an artifact.
pub const PREFIX: &str = "artifact:";

/// The agents whose `model` may name an artifact.
const MODEL_AGENTS: &[&str] = &["onnx"];

fn is_id(text: &str) -> bool {
    text.len() == 64
        && text
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// The artifact ids a version references (after [`pin`], every reference is an id).
pub fn referenced(doc: &WorkflowDoc) -> BTreeSet<String> {
    doc.steps
        .values()
        .filter(|step| MODEL_AGENTS.contains(&step.agent.as_str()))
        .filter_map(|step| {
            let config: Value = serde_json::from_str(&step.config).ok()?;
            let model = config.get("model")?.as_str()?;
            let id = model.strip_prefix(PREFIX)?;
            is_id(id).then(|| id.to_owned())
        })
        .collect()
}

/// Whether the definition names an artifact by name (which [`pin`] must resolve).
pub fn referenced_by_name(doc: &WorkflowDoc) -> bool {
    doc.steps
        .values()
        .filter(|step| MODEL_AGENTS.contains(&step.agent.as_str()))
        .filter_map(|step| serde_json::from_str::<Value>(&step.config).ok())
        .any(|config| {
            config
                .get("model")
                .and_then(Value::as_str)
                .and_then(|m| m.strip_prefix(PREFIX))
                .is_some_and(|r| !is_id(r))
        })
}

/// Replaces every `artifact:<name>` of the definition by `artifact:<id>`, with `resolve`
/// naming the id a name stands for here. A reference by whole id stays as it is (the applying
/// node need not hold it: each node fetches it).
pub fn pin(mut doc: WorkflowDoc, resolve: impl Fn(&str) -> Result<String>) -> Result<WorkflowDoc> {
    for (name, step) in doc.steps.iter_mut() {
        if !MODEL_AGENTS.contains(&step.agent.as_str()) {
            continue;
        }
        let mut config: Value = serde_json::from_str(&step.config)
            .with_context(|| format!("step `{name}`: config is not JSON"))?;
        let Some(model) = config.get("model").and_then(Value::as_str) else {
            continue;
        };
        let Some(reference) = model.strip_prefix(PREFIX) else {
            continue;
        };
        if is_id(reference) {
            continue;
        }
        if reference.is_empty() {
            bail!("step `{name}`: `model: {PREFIX}` names no artifact");
        }
        let id = resolve(reference).with_context(|| {
            format!(
                "step `{name}`: model `{model}`: a version pins the artifact a name stands for on \
                 the node that applies it; add it there first (`rhizome artifact add FILE --name \
                 {reference}`), or name it by its whole id"
            )
        })?;
        config["model"] = Value::String(format!("{PREFIX}{id}"));
        step.config = config.to_string();
    }
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(yaml: &str) -> WorkflowDoc {
        crate::run::workflow::parse(yaml).unwrap()
    }

    const YAML: &str = "id: detect\ntrigger: manual\nsteps:\n  - id: score\n    agent: onnx\n    inputs: [input]\n    config:\n      model: artifact:model\n      input: x\n      shape: [1, 4]\n      output: y\n      field: x\n  - id: pass\n    agent: noop\n    inputs: [score]\n";

    #[test]
    fn names_are_pinned_to_ids_and_ids_are_kept() {
        let id = "a".repeat(64);
        let pinned = pin(doc(YAML), |name| {
            assert_eq!(name, "model");
            Ok(id.clone())
        })
        .unwrap();
        assert_eq!(referenced(&pinned), BTreeSet::from([id.clone()]));
        let again = pin(pinned.clone(), |_| panic!("an id is not resolved")).unwrap();
        assert_eq!(again, pinned);
    }

    #[test]
    fn an_unknown_name_is_refused_naming_the_step() {
        let err = pin(doc(YAML), |name| bail!("no artifact named `{name}` here")).unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("step `score`"), "{text}");
        assert!(text.contains("no artifact named `model`"), "{text}");
    }

    #[test]
    fn paths_are_not_references() {
        let yaml = YAML.replace("artifact:model", "models/m.onnx");
        let unchanged = pin(doc(&yaml), |_| panic!("a path is not resolved")).unwrap();
        assert!(referenced(&unchanged).is_empty());
    }
}
