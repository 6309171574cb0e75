//! The workflow file format (YAML) and its validation, before anything is stored.
//!
//! ```yaml
//! id: sensor-zscore
//! description: flag temperature spikes
//! trigger: {every: 30s}          # manual | {every: <duration>} | {after: <workflow>}
//! target: {tags: [sensor]}       # nodes, tags, zones; empty = every node
//! timeout: 10s
//! max_concurrent: 1
//! conflict: last_write           # or control_wins, manual: how concurrent versions resolve
//! steps:
//!   - id: read
//!     agent: sensor
//!   - id: score
//!     agent: zscore
//!     inputs: [read]
//!     config: {field: value, last: 20}
//!     timeout: 2s
//!     retries: 2
//!     backoff: 200ms
//!   - id: alert
//!     agent: threshold
//!     inputs: [score]
//!     when: score.anomaly
//!     config: {field: z, above: 3}
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use crdt_store::{
    ConflictPolicy, DocKind, DocName, MAX_DEFINITION_BYTES, MAX_DEFINITION_DEPTH, RejectedVersion,
    Resolution, StepDef, Store, Target, WorkflowDoc, WorkflowVersions,
};
use serde::{Deserialize, Serialize};

use crate::config::parse_duration;

/// The name a step uses for the run's own input.
pub const RUN_INPUT: &str = "input";
/// Most steps in one workflow.
pub const MAX_STEPS: usize = 256;
/// Most retries of one step.
pub const MAX_RETRIES: u32 = 10;
/// Most concurrent runs of one workflow on one node.
pub const MAX_CONCURRENT: u32 = 64;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkflowFile {
    id: String,
    #[serde(default)]
    version: Option<u64>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    trigger: TriggerSpec,
    #[serde(default)]
    target: TargetSpec,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default = "one")]
    max_concurrent: u32,
    #[serde(default)]
    conflict: ConflictPolicy,
    /// How a new version of this workflow reaches the fleet when it is applied over one in
    /// effect: the stages and gates of `rollout start` (docs/rollouts.md).
    #[serde(default)]
    rollout: Option<crate::run::rollout::StageArgs>,
    steps: Vec<StepSpec>,
}

fn one() -> u32 {
    1
}

/// `manual`, `{every: 30s}` or `{after: other-workflow}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum TriggerSpec {
    Named(String),
    Keyed(TriggerKeys),
}

impl Default for TriggerSpec {
    fn default() -> Self {
        TriggerSpec::Named("manual".into())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TriggerKeys {
    every: Option<String>,
    after: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetSpec {
    #[serde(default)]
    nodes: Vec<String>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    zones: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StepSpec {
    id: String,
    agent: String,
    #[serde(default)]
    config: serde_json::Value,
    #[serde(default)]
    inputs: Vec<String>,
    #[serde(default)]
    when: Option<String>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    retries: u32,
    #[serde(default)]
    backoff: Option<String>,
}

/// Reads and validates a workflow file; one larger than a definition may be is not read.
pub fn load(path: &Path) -> Result<WorkflowDoc> {
    use std::io::Read;
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot read the workflow file {}", path.display()))?;
    let mut text = String::new();
    file.take(MAX_DEFINITION_BYTES as u64 + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("cannot read the workflow file {}", path.display()))?;
    if text.len() > MAX_DEFINITION_BYTES {
        let bytes = std::fs::metadata(path).map_or(text.len() as u64, |m| m.len());
        bail!(
            "{}: the workflow file is {bytes} bytes, over the limit of {MAX_DEFINITION_BYTES} \
             bytes (1 MiB) for a workflow definition",
            path.display()
        );
    }
    parse(&text).with_context(|| format!("{}", path.display()))
}

/// Parses and validates a workflow definition: every error names the field or step. The text
/// is bounded in size and nesting before it is parsed ([`crate::run::prescan`]).
pub fn parse(text: &str) -> Result<WorkflowDoc> {
    crate::run::prescan::workflow_text(text)
        .context("the workflow definition is refused before parsing")?;
    let file: WorkflowFile = serde_norway::from_str(text)?;
    DocName::workflow(&file.id)?;
    let duration_ms = |what: &str, text: &Option<String>| -> Result<u64> {
        text.as_deref()
            .map(|t| parse_duration(t).map(|d| d.as_millis() as u64))
            .transpose()
            .with_context(|| what.to_owned())
            .map(Option::unwrap_or_default)
    };
    let trigger = match &file.trigger {
        TriggerSpec::Named(name) if name == "manual" => "manual".to_owned(),
        TriggerSpec::Named(other) => {
            bail!(
                "trigger: `{other}` is not `manual`, `{{every: <duration>}}` or `{{after: <workflow>}}`"
            )
        }
        TriggerSpec::Keyed(TriggerKeys {
            every: Some(every),
            after: None,
        }) => {
            let ms = duration_ms("trigger.every", &Some(every.clone()))?;
            if ms < MIN_PERIOD.as_millis() as u64 {
                bail!("trigger.every: `{every}` is shorter than the minimum of 100ms");
            }
            format!("every {every}")
        }
        TriggerSpec::Keyed(TriggerKeys {
            every: None,
            after: Some(other),
        }) => {
            DocName::workflow(other).context("trigger.after")?;
            format!("after {other}")
        }
        TriggerSpec::Keyed(_) => bail!("trigger: give exactly one of `every` and `after`"),
    };
    if file.steps.is_empty() {
        bail!("steps: a workflow needs at least one step");
    }
    if file.steps.len() > MAX_STEPS {
        bail!(
            "steps: {} steps exceed the limit of {MAX_STEPS}",
            file.steps.len()
        );
    }
    let mut steps = BTreeMap::new();
    for step in &file.steps {
        let name = &step.id;
        let context = || format!("step `{name}`");
        let def = StepDef {
            agent: step.agent.clone(),
            config: step.config.to_string(),
            inputs: step.inputs.clone(),
            when: step.when.clone(),
            timeout_ms: duration_ms("timeout", &step.timeout).with_context(context)?,
            retries: step.retries,
            backoff_ms: duration_ms("backoff", &step.backoff).with_context(context)?,
        };
        if steps.insert(name.clone(), def).is_some() {
            bail!("step `{name}` is defined twice");
        }
    }
    let definition = WorkflowDoc {
        id: file.id.clone(),
        version: file.version.unwrap_or(0),
        description: file.description,
        trigger,
        target: Target {
            nodes: file.target.nodes,
            tags: file.target.tags,
            zones: file.target.zones,
        },
        steps,
        timeout_ms: duration_ms("timeout", &file.timeout)?,
        max_concurrent: file.max_concurrent,
        conflict: file.conflict,
        deleted: false,
        rollback_of: 0,
        // A template until it is applied: `apply` numbers it, or drops it for a first version.
        rollout: file
            .rollout
            .map(|declared| declared.plan_over(None))
            .transpose()
            .context("rollout")?,
        updated_by: String::new(),
        by_control: false,
        author_cert: String::new(),
        signature: String::new(),
        updated_ms: 0,
    };
    validate(&definition)?;
    Ok(definition)
}

/// The checks of [`parse`] on a definition as stored, so that one written by a peer (which
/// skipped this node's validation, or was validated by a build with other agents) is run only
/// once this node has validated it too.
pub fn validate(definition: &WorkflowDoc) -> Result<()> {
    DocName::workflow(&definition.id)?;
    if let Trigger::After(other) = Trigger::parse(&definition.trigger)?
        && other == definition.id
    {
        bail!("trigger.after: a workflow cannot trigger on its own results");
    }
    check_target(&definition.target)?;
    if !(1..=MAX_CONCURRENT).contains(&definition.max_concurrent) {
        bail!(
            "max_concurrent: {} is outside 1..={MAX_CONCURRENT}",
            definition.max_concurrent
        );
    }
    if definition.steps.is_empty() {
        bail!("steps: a workflow needs at least one step");
    }
    if definition.steps.len() > MAX_STEPS {
        bail!(
            "steps: {} steps exceed the limit of {MAX_STEPS}",
            definition.steps.len()
        );
    }
    let registry = agents::Registry;
    for (name, step) in &definition.steps {
        let context = || format!("step `{name}`");
        DocName::workflow(name)
            .map_err(|_| {
                anyhow::anyhow!("a step id may only contain letters, digits, '-', '_' and '.'")
            })
            .with_context(context)?;
        if name == RUN_INPUT {
            bail!("step `{name}`: `{RUN_INPUT}` is reserved for the run's input");
        }
        crdt_store::check_json_bounds(&step.config, MAX_DEFINITION_BYTES, MAX_DEFINITION_DEPTH)
            .map_err(|e| anyhow::anyhow!("config: {e}"))
            .with_context(context)?;
        let config: serde_json::Value = serde_json::from_str(&step.config)
            .map_err(|e| anyhow::anyhow!("config is not JSON: {e}"))
            .with_context(context)?;
        registry
            .validate(&step.agent, &config)
            .with_context(context)?;
        for input in &step.inputs {
            if input != RUN_INPUT && !definition.steps.contains_key(input) {
                bail!(
                    "step `{name}`: input `{input}` is neither a step of this workflow nor `{RUN_INPUT}`"
                );
            }
            if input == name {
                bail!("step `{name}`: a step cannot take its own output as input");
            }
        }
        if let Some(when) = &step.when {
            check_condition(when, &step.inputs).with_context(context)?;
        }
        if step.retries > MAX_RETRIES {
            bail!(
                "step `{name}`: retries {} exceed the limit of {MAX_RETRIES}",
                step.retries
            );
        }
    }
    if let Some(cycle) = find_cycle(&definition.steps) {
        bail!("steps form a cycle: {}", cycle.join(" -> "));
    }
    definition
        .check_size()
        .context("the workflow definition as stored (JSON)")?;
    Ok(())
}

/// Who applies a workflow version: the node, whether it holds the mesh's `control` role
/// (recorded in the version as [`WorkflowDoc::by_control`], which `conflict: control_wins`
/// ranks first), and the credentials it signs with.
#[derive(Debug, Clone)]
pub struct Writer {
    /// The node id.
    pub node: String,
    /// Its certificate carries `control` ([`crate::node::Node::holds_control`]).
    pub control: bool,
    /// Signs what it applies; `None` writes unsigned versions, which peers refuse (tests of the
    /// format alone).
    pub signer: Option<std::sync::Arc<mesh::net::identity::NodeCredentials>>,
    /// The mesh and its CA certificate (PEM), against which the mesh's signed settings are read
    /// (whether members may write workflows).
    pub mesh_id: String,
    pub trust: crate::security::trust::Trust,
}

impl Writer {
    /// A writer signing with a key made from `seed`, certified by `ca` with `role`.
    #[cfg(test)]
    pub(crate) fn for_tests(
        ca: &mesh::net::identity::MeshCa,
        seed: u8,
        role: mesh::net::identity::NodeRole,
    ) -> Writer {
        let secret = [seed; 32];
        let public = ed25519_dalek::SigningKey::from_bytes(&secret)
            .verifying_key()
            .to_bytes();
        let creds = mesh::net::identity::NodeCredentials::new(
            &ca.issue(&public, role).unwrap(),
            ca.cert_pem(),
            secret,
        )
        .unwrap();
        Writer {
            node: creds.node_id().unwrap(),
            control: role == mesh::net::identity::NodeRole::Control,
            signer: Some(std::sync::Arc::new(creds)),
            mesh_id: ca.mesh_id().to_owned(),
            trust: crate::security::trust::Trust::from_bundle(ca.cert_pem()).unwrap(),
        }
    }

    /// `definition` as this node writes it over the versions `standing`: the next version
    /// number (or the definition's own, if higher), a time after theirs, this node as its
    /// author, signed.
    pub fn next_version(
        &self,
        definition: WorkflowDoc,
        standing: &[WorkflowDoc],
    ) -> Result<WorkflowDoc> {
        let highest = |of: fn(&WorkflowDoc) -> i64| standing.iter().map(of).max();
        let version = highest(|v| v.version as i64).map_or(0, |v| v as u64) + 1;
        let mut stored = WorkflowDoc {
            version: version.max(definition.version),
            updated_by: self.node.clone(),
            by_control: self.control,
            updated_ms: crate::node::now_ms().max(highest(|v| v.updated_ms).map_or(0, |ms| ms + 1)),
            author_cert: String::new(),
            signature: String::new(),
            ..definition
        };
        if let Some(signer) = &self.signer {
            crate::security::workflow_rights::sign(&mut stored, signer);
        }
        stored
            .check_size()
            .with_context(|| format!("workflow `{}` is not stored", stored.id))?;
        Ok(stored)
    }
}

/// A workflow as this node schedules it: the version it runs, or, when it runs none, the
/// version it would and why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredWorkflow {
    /// The version in effect here.
    pub doc: WorkflowDoc,
    /// Why it is not run on this node: it failed validation here, or versions compete.
    pub blocked: Option<String>,
}

/// What this node makes of one workflow's stored versions under its conflict policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assessed {
    /// What to schedule; `None` before the first apply (or if only empty versions stand).
    pub scheduled: Option<StoredWorkflow>,
    /// The last version validated here, which `manual` keeps running while versions compete.
    pub validated: Option<WorkflowDoc>,
}

/// Resolves a workflow's versions and validates the outcome. `last_validated` is the version
/// this node validated last (kept by [`stored_since`]); `base` gives the version the competing
/// ones replaced (from the document's history) when there is no such version.
pub fn assess(
    versions: &WorkflowVersions,
    last_validated: Option<&WorkflowDoc>,
    base: impl FnOnce() -> Option<WorkflowDoc>,
) -> Assessed {
    let validated = |doc: &WorkflowDoc| -> Result<(), String> {
        validate(doc).map_err(|e| {
            format!(
                "version {} from {} is invalid on this node: {e:#}",
                doc.version, doc.updated_by
            )
        })
    };
    match versions.resolve() {
        Resolution::Unapplied => Assessed {
            scheduled: None,
            validated: last_validated.cloned(),
        },
        // A deleted workflow is reported (who deleted it, when), never run; a `manual`
        // conflict after it has no validated version to fall back on.
        Resolution::Resolved(doc) if doc.deleted => Assessed {
            scheduled: Some(StoredWorkflow {
                doc: doc.clone(),
                blocked: Some(crate::run::history::deletion_reason(doc)),
            }),
            validated: None,
        },
        Resolution::Resolved(doc) if doc.steps.is_empty() => Assessed {
            scheduled: None,
            validated: last_validated.cloned(),
        },
        Resolution::Resolved(doc) => match validated(doc) {
            Ok(()) => Assessed {
                scheduled: Some(StoredWorkflow {
                    doc: doc.clone(),
                    blocked: None,
                }),
                validated: Some(doc.clone()),
            },
            Err(reason) => Assessed {
                scheduled: Some(StoredWorkflow {
                    doc: doc.clone(),
                    blocked: Some(reason),
                }),
                validated: last_validated.cloned(),
            },
        },
        Resolution::Competing(competing) => {
            let kept = last_validated
                .cloned()
                .or_else(|| base().filter(|b| validated(b).is_ok()));
            match kept {
                Some(doc) => Assessed {
                    scheduled: Some(StoredWorkflow {
                        doc: doc.clone(),
                        blocked: None,
                    }),
                    validated: Some(doc),
                },
                None => Assessed {
                    scheduled: Some(StoredWorkflow {
                        doc: competing[0].clone(),
                        blocked: Some(format!(
                            "{} versions compete under `conflict: manual` and this node has \
                             validated no earlier version to keep running: apply one to resolve \
                             (`rhizome workflow show {}` lists them)",
                            competing.len(),
                            versions.id
                        )),
                    }),
                    validated: None,
                },
            }
        }
    }
}

/// One stored workflow as this node would schedule it; `None` if it was never applied.
pub fn stored_one(store: &mut Store, name: &DocName) -> Result<Option<StoredWorkflow>> {
    let versions: WorkflowVersions = store.read(name)?;
    Ok(assess(&versions, None, || stored_base(store, name)).scheduled)
}

/// The version the competing versions of a stored workflow replaced, from its history.
fn stored_base(store: &mut Store, name: &DocName) -> Option<WorkflowDoc> {
    let id = store.document_id(name);
    let doc = store.automerge(&id).ok()?;
    crdt_store::workflow_base(&doc)
}

/// A stored workflow as `workflow show` and `GET /doc` present it: the version in effect on
/// this node (its fields at the top level, as for a single definition), and the state of its
/// versions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowView {
    /// The version this node runs (or would run but for `error`).
    #[serde(flatten)]
    pub definition: Option<WorkflowDoc>,
    /// `ok`, `invalid` (not run here: see `error`), `conflict` (versions compete; `manual`),
    /// `deleted` (the version in effect is a deletion: see `updated_by`, `updated_ms`), or
    /// `not_applied`.
    pub state: String,
    /// For a deleted workflow: the name of the node that deleted it, if the registry knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_by_name: Option<String>,
    /// For a deleted workflow: the last version before its deletion, which `workflow rollback
    /// --to` brings back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restorable: Option<u64>,
    /// Why the definition is not run on this node.
    pub error: Option<String>,
    /// The policy that decides between concurrent versions.
    pub policy: ConflictPolicy,
    /// Versions applied concurrently and not resolved yet, newest first (empty without a
    /// conflict); each with why it would not run here, if it would not.
    pub competing: Vec<CompetingVersion>,
    /// Stored values that are not readable definitions.
    pub rejected: Vec<RejectedVersion>,
}

/// One of the versions of a workflow that compete.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompetingVersion {
    #[serde(flatten)]
    pub definition: WorkflowDoc,
    /// Why this node would not run it.
    pub invalid: Option<String>,
}

/// The [`WorkflowView`] of a stored workflow.
pub fn view(store: &mut Store, name: &DocName) -> Result<WorkflowView> {
    let versions: WorkflowVersions = store.read(name)?;
    let assessed = assess(&versions, None, || stored_base(store, name));
    let competing = if versions.versions.len() > 1 {
        versions
            .versions
            .iter()
            .map(|v| CompetingVersion {
                definition: v.clone(),
                invalid: validate(v).err().map(|e| format!("{e:#}")),
            })
            .collect()
    } else {
        Vec::new()
    };
    let conflict = matches!(versions.resolve(), Resolution::Competing(_));
    let (definition, error) = match assessed.scheduled {
        Some(s) => (Some(s.doc), s.blocked),
        None => (versions.latest().cloned(), None),
    };
    let deleted = definition.as_ref().filter(|d| d.deleted && !conflict);
    let (deleted_by_name, restorable) = match deleted {
        Some(tombstone) => (
            store
                .registry()?
                .nodes
                .get(&tombstone.updated_by)
                .map(|e| e.name.clone()),
            crate::run::history::before_deletion(store, name),
        ),
        None => (None, None),
    };
    let state = match (&definition, &error) {
        _ if conflict => "conflict",
        _ if deleted.is_some() => "deleted",
        (None, _) => "not_applied",
        (Some(_), Some(_)) => "invalid",
        (Some(_), None) => "ok",
    };
    Ok(WorkflowView {
        definition,
        state: state.into(),
        deleted_by_name,
        restorable,
        error,
        policy: versions.policy(),
        competing,
        rejected: versions.rejected,
    })
}

/// A workflow as `workflow list` shows it: the version in effect here, and its state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListedWorkflow {
    #[serde(flatten)]
    pub doc: WorkflowDoc,
    /// `ok`, `not_run` (see `error`) or `deleted`.
    pub state: String,
    /// Why it does not run on this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Every stored workflow by id, as this node schedules it; deleted ones only with `all`.
pub fn list(store: &mut Store, all: bool) -> Result<Vec<ListedWorkflow>> {
    Ok(stored(store)?
        .into_iter()
        .filter(|s| all || !s.doc.deleted)
        .map(|StoredWorkflow { doc, blocked }| ListedWorkflow {
            state: match (&blocked, doc.deleted) {
                (_, true) => "deleted",
                (Some(_), false) => "not_run",
                (None, false) => "ok",
            }
            .into(),
            error: blocked.filter(|_| !doc.deleted),
            doc,
        })
        .collect())
}

/// Every workflow in the store, by id, as this node schedules it (the version in effect, and
/// why it does not run, if it does not). A name that was never applied is left out.
///
/// Reads the name registry rather than listing every document, so that the scheduler can call
/// it every few seconds on a store full of results windows.
pub fn stored(store: &mut Store) -> Result<Vec<StoredWorkflow>> {
    read_stored(store, &mut KnownWorkflows::new(), false)
}

/// What [`stored_since`] knew of one workflow document when it last looked.
#[derive(Debug, Clone, Default)]
pub struct Known {
    /// The document's heads.
    pub heads: Vec<automerge::ChangeHash>,
    /// What it made of the document then.
    pub assessed: Option<Assessed>,
}

/// What [`stored_since`] knew of each workflow document, by document id.
pub type KnownWorkflows = BTreeMap<String, Known>;

/// [`stored`], reading again only the documents whose heads moved since `known`, which it
/// updates. A heads lookup costs an index read where hydrating a document decodes all of its
/// changes, so a node that reloads on every change and every few seconds does not pay for
/// every workflow it holds each time. `known` also holds the last version validated per
/// workflow, which a `manual` workflow keeps running while versions compete.
pub fn stored_since(store: &mut Store, known: &mut KnownWorkflows) -> Result<Vec<StoredWorkflow>> {
    read_stored(store, known, true)
}

/// [`stored_since`]; with `log`, says why a workflow changed to one not run, or in conflict
/// (the scheduler's reading: once per change, where listing would say it at every call).
fn read_stored(
    store: &mut Store,
    known: &mut KnownWorkflows,
    log: bool,
) -> Result<Vec<StoredWorkflow>> {
    let mut present = BTreeSet::new();
    for (id, name) in store.names()? {
        if name.kind() != DocKind::Workflow {
            continue;
        }
        present.insert(id.to_string());
        reassess(store, known, &id, &name, log)?;
    }
    known.retain(|id, _| present.contains(id));
    let mut out: Vec<StoredWorkflow> = known
        .values()
        .filter_map(|k| k.assessed.as_ref()?.scheduled.clone())
        .collect();
    out.sort_by(|a, b| a.doc.id.cmp(&b.doc.id));
    Ok(out)
}

/// [`stored_since`] for the named workflow documents only: those among them whose version in
/// effect here changed since `known`. One edit then costs one document's read, not a walk of
/// every document the node holds and a comparison of every workflow.
pub fn changed_among(
    store: &mut Store,
    known: &mut KnownWorkflows,
    names: &BTreeSet<DocName>,
) -> Result<Vec<StoredWorkflow>> {
    let mut out = Vec::new();
    for name in names.iter().filter(|n| n.kind() == DocKind::Workflow) {
        let id = store.document_id(name);
        if store.heads(&id)?.is_none() {
            continue;
        }
        if reassess(store, known, &id, name, true)? {
            let scheduled = known
                .get(&id.to_string())
                .and_then(|k| k.assessed.as_ref()?.scheduled.clone());
            out.extend(scheduled);
        }
    }
    Ok(out)
}

/// Reads one workflow document again if its heads moved since `known`, and assesses it;
/// whether it was read.
fn reassess(
    store: &mut Store,
    known: &mut KnownWorkflows,
    id: &crdt_store::samod_core::DocumentId,
    name: &DocName,
    log: bool,
) -> Result<bool> {
    let heads = store.heads(id)?.unwrap_or_default();
    let entry = known.entry(id.to_string()).or_default();
    if entry.assessed.is_some() && entry.heads == heads {
        return Ok(false);
    }
    let versions: WorkflowVersions = store.read(name)?;
    let last = entry.assessed.as_ref().and_then(|a| a.validated.as_ref());
    let assessed = assess(&versions, last, || stored_base(store, name));
    if log {
        match &assessed.scheduled {
            Some(StoredWorkflow {
                doc,
                blocked: Some(reason),
            }) => {
                tracing::warn!(workflow = %doc.id, version = doc.version, %reason, "workflow not run");
            }
            _ if versions.in_conflict() => {
                tracing::warn!(
                    workflow = %versions.id,
                    versions = versions.versions.len(),
                    rejected = versions.rejected.len(),
                    policy = versions.policy().as_str(),
                    "workflow versions conflict"
                );
            }
            _ => {}
        }
    }
    *entry = Known {
        heads,
        assessed: Some(assessed),
    };
    Ok(true)
}

/// When a workflow runs, as stored in its document's `trigger`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// Only when asked: `POST /run/{workflow}` or `rhizome run`.
    Manual,
    /// Periodically, the first time as soon as the node knows the workflow.
    Every(Duration),
    /// After each succeeded run of the named workflow on this node, with its output as input.
    After(String),
}

/// The shortest period of an `every` trigger.
pub const MIN_PERIOD: Duration = Duration::from_millis(100);

impl Trigger {
    /// Parses a stored trigger (`manual`, `every 30s`, `after other-workflow`). Definitions
    /// replicated from peers skipped this node's validation, so this checks again.
    pub fn parse(stored: &str) -> Result<Trigger> {
        match stored.split_once(' ') {
            None if stored == "manual" || stored.is_empty() => Ok(Trigger::Manual),
            Some(("every", period)) => {
                let period = parse_duration(period).context("trigger")?;
                if period < MIN_PERIOD {
                    bail!(
                        "trigger: every {period:?} is shorter than the minimum of {MIN_PERIOD:?}"
                    );
                }
                Ok(Trigger::Every(period))
            }
            Some(("after", other)) => {
                DocName::workflow(other).context("trigger")?;
                Ok(Trigger::After(other.to_owned()))
            }
            _ => bail!(
                "trigger: `{stored}` is not `manual`, `every <duration>` or `after <workflow>`"
            ),
        }
    }
}

/// What a target selector is matched against: this node's id, name, zone and tags.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeTraits {
    pub id: String,
    pub name: String,
    pub zone: String,
    pub tags: Vec<String>,
}

/// Whether a target selects this node. Each non-empty list must match, empty lists match every
/// node: `nodes` when it names the node's name or id, `tags` when the node carries every tag
/// listed, `zones` when one of them is the node's zone or an ancestor of it (`site-a` selects
/// `site-a` and `site-a/line-3`, not `site-ab`).
pub fn selects(target: &Target, node: &NodeTraits) -> bool {
    let named = target.nodes.is_empty()
        || target
            .nodes
            .iter()
            .any(|n| *n == node.name || *n == node.id);
    let tagged = target.tags.iter().all(|t| node.tags.contains(t));
    let zoned =
        target.zones.is_empty() || target.zones.iter().any(|z| zone_contains(z, &node.zone));
    named && tagged && zoned
}

/// Whether `zone` is `ancestor` or lies below it, by whole path segments.
pub fn zone_contains(ancestor: &str, zone: &str) -> bool {
    let ancestor = ancestor.trim_end_matches('/');
    let zone = zone.trim_end_matches('/');
    ancestor.is_empty()
        || zone == ancestor
        || zone
            .strip_prefix(ancestor)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// A target in one line, as `workflow list` and refusals show it.
pub fn describe_target(target: &Target) -> String {
    let mut parts = Vec::new();
    for (what, list) in [
        ("nodes", &target.nodes),
        ("tags", &target.tags),
        ("zones", &target.zones),
    ] {
        if !list.is_empty() {
            parts.push(format!("{what}={}", list.join(",")));
        }
    }
    if parts.is_empty() {
        "all nodes".to_owned()
    } else {
        parts.join(" ")
    }
}

/// A step's `when`: `<input>.<field>` (truthy) or `<input>.<field> <op> <number>` with `op`
/// one of `== != > >= < <=`. Parsed once, by validation and by the engine alike.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    input: String,
    field: String,
    compare: Option<(String, f64)>,
}

impl Condition {
    /// Parses the syntax; which inputs exist is checked by the caller.
    pub fn parse(when: &str) -> Result<Condition> {
        let parts: Vec<&str> = when.split_whitespace().collect();
        let (path, rest) = match parts.as_slice() {
            [path] => (*path, None),
            [path, op, value] => (*path, Some((*op, *value))),
            _ => {
                bail!("when: `{when}` is not `<input>.<field>` or `<input>.<field> <op> <number>`")
            }
        };
        let Some((input, field)) = path.split_once('.').filter(|(_, f)| !f.is_empty()) else {
            bail!("when: `{path}` must name an input and a field, as `score.anomaly`");
        };
        let compare = match rest {
            None => None,
            Some((op, value)) => {
                if !matches!(op, "==" | "!=" | ">" | ">=" | "<" | "<=") {
                    bail!("when: unknown comparison `{op}` (use == != > >= < <=)");
                }
                let value = value
                    .parse::<f64>()
                    .map_err(|_| anyhow::anyhow!("when: `{value}` is not a number"))?;
                Some((op.to_owned(), value))
            }
        };
        Ok(Condition {
            input: input.to_owned(),
            field: field.to_owned(),
            compare,
        })
    }

    /// The input the condition reads.
    pub fn input(&self) -> &str {
        &self.input
    }

    /// Whether it holds for these inputs: truthy means true, a non-zero number or a non-empty
    /// string; a missing input or field is false.
    pub fn holds(&self, inputs: &BTreeMap<String, serde_json::Value>) -> bool {
        use serde_json::Value;
        let Some(value) = inputs.get(&self.input).and_then(|v| v.get(&self.field)) else {
            return false;
        };
        match &self.compare {
            None => match value {
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
                Value::String(s) => !s.is_empty(),
                Value::Null => false,
                _ => true,
            },
            Some((op, limit)) => {
                let Some(v) = value.as_f64() else {
                    return false;
                };
                match op.as_str() {
                    "==" => v == *limit,
                    "!=" => v != *limit,
                    ">" => v > *limit,
                    ">=" => v >= *limit,
                    "<" => v < *limit,
                    _ => v <= *limit,
                }
            }
        }
    }
}

fn check_target(target: &Target) -> Result<()> {
    for (what, list) in [
        ("nodes", &target.nodes),
        ("tags", &target.tags),
        ("zones", &target.zones),
    ] {
        if let Some(bad) = list.iter().find(|v| v.trim().is_empty()) {
            bail!("target.{what}: `{bad}` is empty");
        }
    }
    for zone in &target.zones {
        if zone.trim_end_matches('/').split('/').any(str::is_empty) {
            bail!("target.zones: `{zone}` is not a zone path such as `site-a/line-3`");
        }
    }
    Ok(())
}

fn check_condition(when: &str, inputs: &[String]) -> Result<()> {
    let condition = Condition::parse(when)?;
    if !inputs.iter().any(|i| i == condition.input()) {
        bail!("when: `{}` is not an input of this step", condition.input());
    }
    Ok(())
}

/// A cycle among the steps' inputs, if any, as the step ids along it.
fn find_cycle(steps: &BTreeMap<String, StepDef>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    fn visit(
        id: &str,
        steps: &BTreeMap<String, StepDef>,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match marks.get(id) {
            Some(Mark::Done) => return None,
            Some(Mark::Visiting) => {
                let start = path.iter().position(|p| p == id).unwrap_or(0);
                let mut cycle = path[start..].to_vec();
                cycle.push(id.to_owned());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(id.to_owned(), Mark::Visiting);
        path.push(id.to_owned());
        for input in steps
            .get(id)
            .map(|s| s.inputs.as_slice())
            .unwrap_or_default()
        {
            if steps.contains_key(input)
                && let Some(cycle) = visit(input, steps, marks, path)
            {
                return Some(cycle);
            }
        }
        path.pop();
        marks.insert(id.to_owned(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    steps
        .keys()
        .find_map(|id| visit(id, steps, &mut marks, &mut Vec::new()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer(node: &str) -> Writer {
        Writer {
            node: node.into(),
            control: true,
            signer: None,
            mesh_id: String::new(),
            trust: crate::security::trust::Trust::empty(),
        }
    }

    const EXAMPLE: &str = r#"
id: sensor-zscore
description: flag temperature spikes
trigger: {every: 30s}
target: {tags: [sensor]}
timeout: 10s
steps:
  - id: read
    agent: sensor
  - id: score
    agent: zscore
    inputs: [read]
    config: {field: value, last: 20}
    timeout: 2s
    retries: 2
    backoff: 200ms
  - id: alert
    agent: threshold
    inputs: [score]
    when: score.anomaly
    config: {field: z, above: 3}
"#;

    fn error(text: &str) -> String {
        format!("{:#}", parse(text).unwrap_err())
    }

    #[test]
    fn the_documented_example_parses() {
        let wf = parse(EXAMPLE).unwrap();
        assert_eq!(wf.id, "sensor-zscore");
        assert_eq!(wf.trigger, "every 30s");
        assert_eq!(wf.timeout_ms, 10_000);
        assert_eq!(wf.target.tags, vec!["sensor"]);
        let score = &wf.steps["score"];
        assert_eq!(
            (score.timeout_ms, score.retries, score.backoff_ms),
            (2000, 2, 200)
        );
        assert_eq!(wf.steps["alert"].when.as_deref(), Some("score.anomaly"));
        let config: serde_json::Value = serde_json::from_str(&score.config).unwrap();
        assert_eq!(config["last"], 20);
    }

    #[test]
    fn bad_definitions_name_what_is_wrong() {
        let cases = [
            (
                EXAMPLE.replace("agent: zscore", "agent: zscroe"),
                "unknown agent `zscroe`",
            ),
            (
                EXAMPLE.replace("retries: 2", "retrys: 2"),
                "unknown field `retrys`",
            ),
            (
                EXAMPLE.replace("inputs: [read]", "inputs: [raed]"),
                "input `raed`",
            ),
            (
                EXAMPLE.replace("timeout: 2s", "timeout: 2 seconds"),
                "step `score`",
            ),
            (
                EXAMPLE.replace("every: 30s", "every: 10ms"),
                "minimum of 100ms",
            ),
            (
                EXAMPLE.replace("last: 20", "last: 0"),
                "`last` must be at least 1",
            ),
            (
                EXAMPLE.replace("when: score.anomaly", "when: read.value"),
                "not an input",
            ),
            (
                EXAMPLE.replace("when: score.anomaly", "when: score.z ~ 3"),
                "unknown comparison",
            ),
            (
                EXAMPLE.replace(
                    "  - id: read\n    agent: sensor\n",
                    "  - id: read\n    agent: sensor\n    inputs: [alert]\n",
                ),
                "cycle",
            ),
            (EXAMPLE.replace("id: alert", "id: score"), "defined twice"),
            ("id: x\nsteps: []\n".to_owned(), "at least one step"),
            ("id: a/b\nsteps: []\n".to_owned(), "workflow id"),
        ];
        for (text, expected) in cases {
            let err = error(&text);
            assert!(err.contains(expected), "expected `{expected}` in: {err}");
        }
    }

    #[test]
    fn selectors_match_names_tags_and_zones() {
        let node = NodeTraits {
            id: "0123456789abcdef0123456789abcdef".into(),
            name: "press-7".into(),
            zone: "site-a/line-3".into(),
            tags: vec!["camera".into(), "sensor".into()],
        };
        let target = |nodes: &[&str], tags: &[&str], zones: &[&str]| Target {
            nodes: nodes.iter().map(|s| s.to_string()).collect(),
            tags: tags.iter().map(|s| s.to_string()).collect(),
            zones: zones.iter().map(|s| s.to_string()).collect(),
        };
        let cases = [
            (target(&[], &[], &[]), true, "empty selects every node"),
            (target(&["press-7"], &[], &[]), true, "by name"),
            (target(&["other", &node.id], &[], &[]), true, "by id"),
            (target(&["other"], &[], &[]), false, "another name"),
            (target(&[], &["sensor"], &[]), true, "a tag it carries"),
            (target(&[], &["sensor", "camera"], &[]), true, "every tag"),
            (
                target(&[], &["sensor", "gpu"], &[]),
                false,
                "one tag missing",
            ),
            (target(&[], &[], &["site-a/line-3"]), true, "its zone"),
            (target(&[], &[], &["site-a"]), true, "a parent zone"),
            (target(&[], &[], &["site-a/"]), true, "a trailing slash"),
            (
                target(&[], &[], &["site-b", "site-a"]),
                true,
                "any of the zones",
            ),
            (
                target(&[], &[], &["site-a/line-3/cell-1"]),
                false,
                "a sub-zone of its zone",
            ),
            (
                target(&[], &[], &["site-ab"]),
                false,
                "a zone that only shares a prefix",
            ),
            (
                target(&[], &[], &["site-a/line"]),
                false,
                "a partial segment",
            ),
            (
                target(&["press-7"], &["sensor"], &["site-b"]),
                false,
                "every list must match",
            ),
            (
                target(&["press-7"], &["sensor"], &["site-a"]),
                true,
                "all lists match",
            ),
        ];
        for (target, expected, what) in cases {
            assert_eq!(selects(&target, &node), expected, "{what}: {target:?}");
        }
        assert_eq!(describe_target(&target(&[], &[], &[])), "all nodes");
        assert_eq!(
            describe_target(&target(&["a"], &["t1", "t2"], &[])),
            "nodes=a tags=t1,t2"
        );
    }

    #[test]
    fn stored_triggers_parse_back() {
        let trigger = |yaml: &str| {
            let wf = parse(&format!(
                "id: w\ntrigger: {yaml}\nsteps:\n  - id: a\n    agent: noop\n"
            ))
            .unwrap();
            Trigger::parse(&wf.trigger).unwrap()
        };
        assert_eq!(trigger("manual"), Trigger::Manual);
        assert_eq!(
            trigger("{every: 30s}"),
            Trigger::Every(Duration::from_secs(30))
        );
        assert_eq!(trigger("{after: other}"), Trigger::After("other".into()));
        for bad in ["every 10ms", "every soon", "after a/b", "hourly", "every"] {
            assert!(Trigger::parse(bad).is_err(), "{bad}");
        }
        let err = error("id: w\ntarget: {zones: [\"a//b\"]}\nsteps:\n  - id: a\n    agent: noop\n");
        assert!(err.contains("target.zones"), "{err}");
        let err = error("id: w\ntarget: {tags: [\"\"]}\nsteps:\n  - id: a\n    agent: noop\n");
        assert!(err.contains("target.tags"), "{err}");
    }

    #[test]
    fn stored_since_rereads_only_the_workflows_that_changed() {
        let mut store =
            Store::open_in_memory(crdt_store::StoreConfig::new("mesh", "node")).unwrap();
        let apply = |store: &mut Store, id: &str, description: &str| {
            let yaml = format!(
                "id: {id}\ndescription: {description}\nsteps:\n  - id: a\n    agent: noop\n"
            );
            crate::cli::commands::apply_workflow(store, parse(&yaml).unwrap(), &writer("node"))
                .unwrap();
        };
        apply(&mut store, "w1", "first");
        apply(&mut store, "w2", "first");
        let mut known = KnownWorkflows::new();
        let all = stored(&mut store).unwrap();
        assert_eq!(stored_since(&mut store, &mut known).unwrap(), all);
        assert_eq!(all.len(), 2);
        assert!(all.iter().all(|s| s.blocked.is_none()));

        // w2's entry is marked: it is served from `known` as long as its heads stay put.
        let w2 = known
            .values_mut()
            .find_map(|k| {
                k.assessed
                    .as_mut()?
                    .scheduled
                    .as_mut()
                    .filter(|s| s.doc.id == "w2")
            })
            .unwrap();
        w2.doc.description = "from what was known".into();
        apply(&mut store, "w1", "second");
        apply(&mut store, "w3", "first");
        let seen = stored_since(&mut store, &mut known).unwrap();
        let descriptions: Vec<(&str, &str)> = seen
            .iter()
            .map(|w| (w.doc.id.as_str(), w.doc.description.as_str()))
            .collect();
        assert_eq!(
            descriptions,
            [
                ("w1", "second"),
                ("w2", "from what was known"),
                ("w3", "first")
            ]
        );
        apply(&mut store, "w2", "second");
        assert_eq!(
            stored_since(&mut store, &mut known).unwrap(),
            stored(&mut store).unwrap()
        );
    }

    #[test]
    fn deep_or_large_texts_are_refused_before_parsing() {
        let n = 100_000;
        for (what, text) in [
            ("flow", format!("id: x\nsteps: {}", "[".repeat(n))),
            ("block", format!("id: x\nsteps:\n{}x\n", "- ".repeat(n))),
        ] {
            let started = std::time::Instant::now();
            let err = error(&text);
            assert!(
                started.elapsed() < std::time::Duration::from_millis(500),
                "{what} took {:?}",
                started.elapsed()
            );
            assert!(
                err.contains("refused before parsing")
                    && err.contains("limit of 64 levels at line"),
                "{what}: {err}"
            );
        }
        let padded = format!(
            "id: x\ndescription: {}\nsteps:\n  - id: a\n    agent: noop\n",
            "x".repeat(MAX_DEFINITION_BYTES)
        );
        let err = error(&padded);
        assert!(err.contains("exceed the limit of 1048576 bytes"), "{err}");
        // Under the limit as YAML, over it as stored: refused too.
        let escaped = format!(
            "id: x\ndescription: \"{}\"\nsteps:\n  - id: a\n    agent: noop\n",
            "\\x01".repeat(MAX_DEFINITION_BYTES / 4 - 100)
        );
        assert!(escaped.len() < MAX_DEFINITION_BYTES);
        let err = error(&escaped);
        assert!(err.len() < 1000, "the error is short: {}", &err[..200]);
        assert!(
            err.contains("as stored (JSON)") && err.contains("limit of 1048576 bytes"),
            "{err}"
        );

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.yaml");
        std::fs::write(&path, &padded).unwrap();
        let err = format!("{:#}", load(&path).unwrap_err());
        assert!(
            err.contains("big.yaml") && err.contains("over the limit of 1048576 bytes"),
            "{err}"
        );
    }

    /// A definition as a peer might store it: whole, but never validated here.
    fn from_a_peer(edit: impl FnOnce(&mut WorkflowDoc)) -> WorkflowDoc {
        let mut doc = parse(EXAMPLE).unwrap();
        edit(&mut doc);
        doc
    }

    #[test]
    fn definitions_from_peers_are_validated_again() {
        let cases: [(WorkflowDoc, &str); 6] = [
            (
                from_a_peer(|d| d.steps.get_mut("score").unwrap().agent = "quantum".into()),
                "unknown agent `quantum`",
            ),
            (
                from_a_peer(|d| d.steps.get_mut("score").unwrap().inputs = vec!["nowhere".into()]),
                "input `nowhere`",
            ),
            (from_a_peer(|d| d.trigger = "every 1ms".into()), "minimum"),
            (from_a_peer(|d| d.max_concurrent = 1000), "max_concurrent"),
            (
                from_a_peer(|d| d.steps.get_mut("read").unwrap().inputs = vec!["alert".into()]),
                "cycle",
            ),
            (
                from_a_peer(|d| {
                    d.steps.get_mut("read").unwrap().config =
                        format!("{}{}", "[".repeat(1000), "]".repeat(1000))
                }),
                "limit of 64 levels",
            ),
        ];
        for (doc, expected) in cases {
            let err = format!("{:#}", validate(&doc).unwrap_err());
            assert!(err.contains(expected), "expected `{expected}` in: {err}");
            let versions = WorkflowVersions {
                id: doc.id.clone(),
                versions: vec![doc.clone()],
                rejected: Vec::new(),
            };
            let assessed = assess(&versions, None, || None);
            let scheduled = assessed.scheduled.unwrap();
            assert!(
                scheduled
                    .blocked
                    .as_deref()
                    .is_some_and(|r| r.contains(expected)),
                "{scheduled:?}"
            );
            assert_eq!(assessed.validated, None);
        }
        assert!(validate(&parse(EXAMPLE).unwrap()).is_ok());
    }

    #[test]
    fn a_manual_conflict_keeps_the_last_validated_version_running() {
        let version = |writer: &str, ms: i64, description: &str| {
            from_a_peer(|d| {
                d.conflict = ConflictPolicy::Manual;
                d.updated_by = writer.into();
                d.updated_ms = ms;
                d.description = description.into();
            })
        };
        let base = version("n0", 1, "agreed");
        let a = version("n1", 5, "from n1");
        let b = version("n2", 6, "from n2");
        let competing = WorkflowVersions {
            id: base.id.clone(),
            versions: vec![b.clone(), a.clone()],
            rejected: Vec::new(),
        };
        // A node that ran `base` goes on running it.
        let kept = assess(&competing, Some(&base), || unreachable!());
        assert_eq!(kept.scheduled.as_ref().unwrap().doc, base);
        assert_eq!(kept.scheduled.unwrap().blocked, None);
        // A node that knows no earlier version takes the one both replaced, from history.
        let fresh = assess(&competing, None, || Some(base.clone()));
        assert_eq!(fresh.scheduled.unwrap().doc, base);
        // Without either, nothing runs and the reason says how to resolve it.
        let none = assess(&competing, None, || None);
        let blocked = none.scheduled.unwrap().blocked.unwrap();
        assert!(
            blocked.contains("2 versions compete") && blocked.contains("apply"),
            "{blocked}"
        );
        // Under last_write the newest runs at once.
        let mut last_write = competing.clone();
        for v in &mut last_write.versions {
            v.conflict = ConflictPolicy::LastWrite;
        }
        let newest = assess(&last_write, Some(&base), || None);
        assert_eq!(newest.scheduled.unwrap().doc, last_write.versions[0]);
    }

    #[test]
    fn show_lists_competing_versions_and_an_apply_resolves_them() {
        use crdt_store::automerge::{AutoCommit, sync::SyncDoc};
        let mut a = Store::open_in_memory(crdt_store::StoreConfig::new("mesh", "node-a")).unwrap();
        let mut b = Store::open_in_memory(crdt_store::StoreConfig::new("mesh", "node-b")).unwrap();
        let yaml = |description: &str| {
            format!(
                "id: w\ndescription: {description}\nconflict: manual\nsteps:\n  - id: a\n    agent: noop\n"
            )
        };
        let name = DocName::workflow("w").unwrap();
        let apply = |store: &mut Store, description: &str, node: &str| {
            crate::cli::commands::apply_workflow(
                store,
                parse(&yaml(description)).unwrap(),
                &writer(node),
            )
            .unwrap()
        };
        // Exchanges the document both ways, as a sync session would.
        let sync = |a: &mut Store, b: &mut Store| {
            let id = a.document_id(&name);
            let held = |s: &mut Store| s.automerge(&id).unwrap_or_else(|_| AutoCommit::new());
            let (mut da, mut db) = (held(a), held(b));
            let (mut sa, mut sb) = (
                crdt_store::automerge::sync::State::new(),
                crdt_store::automerge::sync::State::new(),
            );
            for _ in 0..8 {
                if let Some(m) = da.sync().generate_sync_message(&mut sa) {
                    db.sync().receive_sync_message(&mut sb, m).unwrap();
                }
                if let Some(m) = db.sync().generate_sync_message(&mut sb) {
                    da.sync().receive_sync_message(&mut sa, m).unwrap();
                }
            }
            for (store, doc) in [(a, &mut da), (b, &mut db)] {
                let tasks = doc
                    .get_changes(&[])
                    .into_iter()
                    .map(|c| crdt_store::samod_core::io::StorageTask::Put {
                        key: crdt_store::samod_core::StorageKey::incremental_path(&id, c.hash()),
                        value: c.raw_bytes().to_vec(),
                    })
                    .collect();
                store.execute(tasks).unwrap();
                store.remember_name(&id, &name).unwrap();
            }
        };
        let agreed = apply(&mut a, "agreed", "node-a");
        sync(&mut a, &mut b);
        let one = apply(&mut a, "from a", "node-a");
        // a's scheduler reads (and validates) its own version before b's arrives.
        let mut known = KnownWorkflows::new();
        stored_since(&mut a, &mut known).unwrap();
        let two = apply(&mut b, "from b", "node-b");
        sync(&mut a, &mut b);
        let running = stored_since(&mut a, &mut known).unwrap();
        assert_eq!(
            running[0].doc, one,
            "a keeps running the last version it validated"
        );
        assert_eq!(running[0].blocked, None);
        for store in [&mut a, &mut b] {
            let shown = view(store, &name).unwrap();
            assert_eq!(shown.state, "conflict");
            assert_eq!(shown.policy, ConflictPolicy::Manual);
            let writers: Vec<&str> = shown
                .competing
                .iter()
                .map(|c| c.definition.updated_by.as_str())
                .collect();
            assert_eq!(writers.len(), 2);
            assert!(writers.contains(&"node-a") && writers.contains(&"node-b"));
            // Both nodes run what they agreed on before, read from the history.
            assert_eq!(shown.definition.as_ref(), Some(&agreed));
            let json = serde_json::to_value(&shown).unwrap();
            assert_eq!(json["description"], "agreed");
            assert_eq!(json["competing"].as_array().unwrap().len(), 2);
        }
        assert_ne!(one, two);
        let resolved = apply(&mut b, "resolved", "node-b");
        sync(&mut a, &mut b);
        for store in [&mut a, &mut b] {
            let shown = view(store, &name).unwrap();
            assert_eq!(shown.state, "ok");
            assert!(shown.competing.is_empty());
            assert_eq!(shown.definition.as_ref(), Some(&resolved));
            assert!(resolved.version > one.version.max(two.version));
        }
    }

    #[test]
    fn yaml_errors_give_a_line() {
        let err = error("id: x\nsteps:\n  - id: a\n    agent: noop\n    inputs: 3\n");
        assert!(err.contains("line 5"), "{err}");
    }
}
