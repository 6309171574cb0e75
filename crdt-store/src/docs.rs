//! Typed documents: the Rust shape of each document kind, mapped onto Automerge with autosurgeon.
//!
//! Concurrency is designed into the shapes. Everything that two nodes may write at once lives
//! under a map key of its own (a node's registry entry, a workflow step, a run record), so that
//! concurrent writes touch different keys and all of them survive the merge. A scalar written
//! concurrently (a workflow's description) ends with one of the written values on every replica.
//!
//! Every document starts from a *genesis* change that all nodes produce byte for byte (fixed
//! actor, time zero, content derived from the name only). Two nodes that create the same document
//! while apart therefore share its root objects, instead of each creating a `runs` map of its own
//! of which the merge would keep only one.

use std::collections::BTreeMap;

use automerge::{ActorId, AutoCommit, transaction::CommitOptions};
use autosurgeon::{Hydrate, Reconcile};
use serde::{Deserialize, Serialize};

use crate::error::{Result, StoreError};
use crate::names::{DocKind, DocName};

/// The actor of every genesis change.
const GENESIS_ACTOR: &[u8] = b"rhizome-genesis";

/// A Rust type that is the content of one document kind.
pub trait TypedDoc: Reconcile + Hydrate + Sized {
    /// The kind of document this type describes.
    const KIND: DocKind;

    /// The content a document of this name starts with on every node.
    fn genesis(name: &DocName) -> Self;
}

/// Creates the genesis of a document: the same bytes on every node for the same name.
pub fn genesis_doc<T: TypedDoc>(name: &DocName) -> Result<AutoCommit> {
    let mut doc = AutoCommit::new().with_actor(ActorId::from(GENESIS_ACTOR));
    autosurgeon::reconcile(&mut doc, T::genesis(name)).map_err(|e| StoreError::Write {
        doc: name.to_string(),
        reason: e.to_string(),
    })?;
    doc.commit_with(CommitOptions::default().with_time(0));
    Ok(doc)
}

/// Reads a typed value out of a document.
pub fn hydrate<T: TypedDoc>(name: &DocName, doc: &AutoCommit) -> Result<T> {
    autosurgeon::hydrate(doc).map_err(|e| StoreError::Shape {
        doc: name.to_string(),
        kind: T::KIND.as_str(),
        reason: e.to_string(),
    })
}

/// Writes a typed value into a document as the smallest set of changes.
pub fn reconcile<T: TypedDoc>(name: &DocName, doc: &mut AutoCommit, value: &T) -> Result<()> {
    autosurgeon::reconcile(doc, value).map_err(|e| StoreError::Write {
        doc: name.to_string(),
        reason: e.to_string(),
    })
}

// ---------------------------------------------------------------------------------------------
// mesh

/// The mesh registry: every member's entry and the revoked node ids.
#[derive(Debug, Clone, Default, PartialEq, Eq, Reconcile, Hydrate, Serialize, Deserialize)]
pub struct MeshRegistry {
    /// Members by node id; each node writes only its own entry.
    pub nodes: BTreeMap<String, NodeEntry>,
    /// Revoked node ids, written by administrators; a revoked node is refused at the handshake.
    pub revoked: BTreeMap<String, Revocation>,
}

/// The zone of every node in a registry document, read without decoding the rest of each
/// entry (tags, addresses, ...): routing needs only this, and a fleet's registry is large.
/// An entry whose zone is missing or not a string is left out, as decoding it would fail.
pub fn registry_zones(doc: &AutoCommit) -> BTreeMap<String, String> {
    use automerge::ReadDoc;
    let mut zones = BTreeMap::new();
    let Some(nodes) = registry_nodes(doc) else {
        return zones;
    };
    for node in doc.keys(&nodes) {
        if let Some(zone) = entry_zone(doc, &nodes, &node) {
            zones.insert(node, zone);
        }
    }
    zones
}

/// The registry's map of entries by node id.
fn registry_nodes(doc: &AutoCommit) -> Option<automerge::ObjId> {
    use automerge::{ObjType, ROOT, ReadDoc, Value};
    match doc.get(ROOT, "nodes") {
        Ok(Some((Value::Object(ObjType::Map), nodes))) => Some(nodes),
        _ => None,
    }
}

/// The zone of one registry entry, if the entry exists and its zone is a string.
fn entry_zone(doc: &AutoCommit, nodes: &automerge::ObjId, node: &str) -> Option<String> {
    use automerge::{ObjType, ReadDoc, ScalarValue, Value};
    let Ok(Some((Value::Object(ObjType::Map), entry))) = doc.get(nodes, node) else {
        return None;
    };
    match doc.get(&entry, "zone") {
        Ok(Some((Value::Scalar(zone), _))) => match zone.as_ref() {
            ScalarValue::Str(zone) => Some(zone.to_string()),
            _ => None,
        },
        _ => None,
    }
}

/// What registry changes do to the nodes' zones, read from their operations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ZoneEffect {
    /// They set no zone and delete no key: merges of heads (no operations), liveness updates,
    /// renames.
    None,
    /// They set zones only in entries they create, under these node ids (a node's first
    /// entry: every change of a fleet's start-up storm).
    NewEntries(Vec<String>),
    /// They may change the zone of an entry they did not create (a move), or delete a key.
    Unknown,
}

/// The [`ZoneEffect`] of a set of registry changes.
pub fn zone_effect(changes: &[automerge::Change]) -> ZoneEffect {
    use automerge::legacy::{Key, ObjectId, OpType};
    let mut created = Vec::new();
    for change in changes.iter().filter(|c| !c.is_empty()) {
        let decoded = change.decode();
        let start = decoded.start_op.get();
        for op in &decoded.operations {
            match (&op.action, &op.key) {
                (OpType::Delete, Key::Map(_)) => return ZoneEffect::Unknown,
                (OpType::Put(_) | OpType::Make(_), Key::Map(key)) if key == "zone" => {
                    // The entry written to must be a map made by an earlier operation of this
                    // change, at a node id's key.
                    let ObjectId::Id(obj) = &op.obj else {
                        return ZoneEffect::Unknown;
                    };
                    let maker = obj
                        .counter()
                        .checked_sub(start)
                        .filter(|_| *obj.actor() == decoded.actor_id)
                        .and_then(|i| decoded.operations.get(usize::try_from(i).ok()?));
                    match maker {
                        Some(maker) if matches!(maker.action, OpType::Make(_)) => {
                            match &maker.key {
                                Key::Map(node) => created.push(node.to_string()),
                                Key::Seq(_) => return ZoneEffect::Unknown,
                            }
                        }
                        _ => return ZoneEffect::Unknown,
                    }
                }
                _ => {}
            }
        }
    }
    if created.is_empty() {
        ZoneEffect::None
    } else {
        ZoneEffect::NewEntries(created)
    }
}

/// Updates `zones` for entries created by registry changes: reads only those entries. `false`
/// if one of them is not where an entry would be (the whole registry must be read then).
pub fn read_new_zones<'a>(
    doc: &AutoCommit,
    nodes: impl IntoIterator<Item = &'a String>,
    zones: &mut BTreeMap<String, String>,
) -> bool {
    let Some(registry) = registry_nodes(doc) else {
        return false;
    };
    for node in nodes {
        let Some(zone) = entry_zone(doc, &registry, node) else {
            return false;
        };
        zones.insert(node.clone(), zone);
    }
    true
}

/// One member of the mesh as it describes itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Reconcile, Hydrate, Serialize, Deserialize)]
pub struct NodeEntry {
    /// Human-readable name.
    pub name: String,
    /// Zone path, e.g. `site-a/line-3`.
    pub zone: String,
    /// Free-form tags used by workflow selectors.
    pub tags: Vec<String>,
    /// Capabilities such as `onnx` or `llm`.
    pub capabilities: Vec<String>,
    /// Addresses the node listens on, `host:port`.
    pub addresses: Vec<String>,
    /// Software version.
    pub version: String,
    /// Incremented by the node on each liveness update.
    pub heartbeat: u64,
    /// When the entry was last written, milliseconds since the Unix epoch.
    pub updated_ms: i64,
}

impl MeshRegistry {
    /// Whether the registry holds `entry` for `node` already, apart from the liveness fields
    /// (`heartbeat`, `updated_ms`). The registry replicates to every node: a node rewrites its
    /// entry only when it says something new, so a restart with the same settings changes no
    /// document.
    pub fn holds(&self, node: &str, entry: &NodeEntry) -> bool {
        self.nodes.get(node).is_some_and(|old| {
            NodeEntry {
                heartbeat: entry.heartbeat,
                updated_ms: entry.updated_ms,
                ..old.clone()
            } == *entry
        })
    }

    /// Writes `node`'s entry, one heartbeat after its previous one, as written at `now_ms`.
    pub fn write_entry(&mut self, node: &str, entry: NodeEntry, now_ms: i64) {
        let heartbeat = self.nodes.get(node).map_or(0, |e| e.heartbeat) + 1;
        self.nodes.insert(
            node.to_owned(),
            NodeEntry {
                heartbeat,
                updated_ms: now_ms,
                ..entry
            },
        );
    }
}

/// Why and when a node was revoked.
#[derive(Debug, Clone, Default, PartialEq, Eq, Reconcile, Hydrate, Serialize, Deserialize)]
pub struct Revocation {
    /// When, milliseconds since the Unix epoch.
    pub revoked_ms: i64,
    /// The administrator's reason.
    pub reason: String,
}

impl TypedDoc for MeshRegistry {
    const KIND: DocKind = DocKind::Mesh;
    fn genesis(_: &DocName) -> Self {
        MeshRegistry::default()
    }
}

// ---------------------------------------------------------------------------------------------
// workflow

/// A workflow definition as replicated: a DAG of steps keyed by step id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Reconcile, Hydrate, Serialize, Deserialize)]
pub struct WorkflowDoc {
    /// The workflow id (the `<id>` of `workflow/<id>`).
    pub id: String,
    /// Bumped by every apply; runs record the version they ran.
    pub version: u64,
    /// What the workflow is for.
    pub description: String,
    /// When it runs: `manual`, `every <duration>`, or `after <workflow>`.
    pub trigger: String,
    /// Which nodes run it.
    pub target: Target,
    /// Steps by step id.
    pub steps: BTreeMap<String, StepDef>,
    /// Run-level timeout in milliseconds; 0 means the engine's default.
    pub timeout_ms: u64,
    /// How many runs of this workflow may be in flight on one node.
    pub max_concurrent: u32,
    /// Who applied the last version (node id).
    pub updated_by: String,
    /// When, milliseconds since the Unix epoch.
    pub updated_ms: i64,
}

/// A selector of nodes. Empty lists select everything; non-empty lists must all match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Reconcile, Hydrate, Serialize, Deserialize)]
pub struct Target {
    /// Node names.
    pub nodes: Vec<String>,
    /// Tags a node must carry.
    pub tags: Vec<String>,
    /// Zone path prefixes.
    pub zones: Vec<String>,
}

/// One step of a workflow.
#[derive(Debug, Clone, Default, PartialEq, Eq, Reconcile, Hydrate, Serialize, Deserialize)]
pub struct StepDef {
    /// The agent that runs the step.
    pub agent: String,
    /// The agent's configuration, as JSON text.
    pub config: String,
    /// Ids of the steps (or `input`) whose outputs feed this step.
    pub inputs: Vec<String>,
    /// Optional condition on the inputs.
    pub when: Option<String>,
    /// Step timeout in milliseconds; 0 means the engine's default.
    pub timeout_ms: u64,
    /// How many times a failed step is retried.
    pub retries: u32,
    /// Delay before the first retry in milliseconds; doubles with each retry.
    pub backoff_ms: u64,
}

impl TypedDoc for WorkflowDoc {
    const KIND: DocKind = DocKind::Workflow;
    fn genesis(name: &DocName) -> Self {
        let id = match name {
            DocName::Workflow { id } => id.clone(),
            _ => String::new(),
        };
        WorkflowDoc {
            id,
            ..WorkflowDoc::default()
        }
    }
}

// ---------------------------------------------------------------------------------------------
// results

/// One node's run records for one time window. Append-only: records are added, never changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Reconcile, Hydrate, Serialize, Deserialize)]
pub struct ResultsDoc {
    /// The node that wrote the records.
    pub node: String,
    /// The window, as in the document name.
    pub window: String,
    /// Run records by run id.
    pub runs: BTreeMap<String, RunRecord>,
}

/// The outcome of a run or a step.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Reconcile, Hydrate, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Finished without error.
    #[default]
    Succeeded,
    /// An agent failed after its retries.
    Failed,
    /// The run or a step exceeded its timeout.
    TimedOut,
    /// The node shut down while the run was in flight.
    Interrupted,
    /// A step was skipped because its condition was false.
    Skipped,
}

impl RunStatus {
    /// The status as written in output.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::TimedOut => "timed_out",
            RunStatus::Interrupted => "interrupted",
            RunStatus::Skipped => "skipped",
        }
    }
}

/// The record of one workflow run on one node.
///
/// In a document a record is one JSON string, not a tree of Automerge objects: records are
/// immutable and written by one node, so per-field merging buys nothing, while a tree costs ~40
/// operations per record (measured: folding ran at ~2,200 records/s as a tree).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    /// Unique run id.
    pub run_id: String,
    /// The workflow that ran.
    pub workflow: String,
    /// The version of the workflow that ran.
    pub workflow_version: u64,
    /// The node that ran it.
    pub node: String,
    /// Start, milliseconds since the Unix epoch.
    pub started_ms: i64,
    /// End, milliseconds since the Unix epoch; decides the results window.
    pub finished_ms: i64,
    /// Outcome of the run.
    pub status: RunStatus,
    /// Per-step records, in the order the steps finished.
    pub steps: Vec<StepRecord>,
    /// The run's output as JSON text.
    pub output: String,
    /// The error that ended the run, if any.
    pub error: Option<String>,
}

/// The record of one step within a run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Step id.
    pub step: String,
    /// Outcome of the step.
    pub status: RunStatus,
    /// Start, milliseconds since the Unix epoch.
    pub started_ms: i64,
    /// Duration in microseconds.
    pub duration_us: u64,
    /// How many attempts were made.
    pub attempts: u32,
    /// The step's output as JSON text.
    pub output: String,
    /// The step's last error, if any.
    pub error: Option<String>,
}

impl Reconcile for RunRecord {
    type Key<'a> = autosurgeon::reconcile::NoKey;

    fn reconcile<R: autosurgeon::Reconciler>(&self, reconciler: R) -> Result<(), R::Error> {
        let json = serde_json::to_string(self).expect("a run record always encodes");
        json.reconcile(reconciler)
    }
}

impl Hydrate for RunRecord {
    fn hydrate_string(json: &str) -> Result<Self, autosurgeon::HydrateError> {
        serde_json::from_str(json)
            .map_err(|e| autosurgeon::HydrateError::unexpected("a JSON run record", e.to_string()))
    }
}

/// Upper bound on the encoded size of one run record; larger records are refused.
pub const MAX_RECORD_BYTES: usize = 1 << 20;

impl RunRecord {
    /// Checks what the store relies on: a usable run id, a node id, a sane time range and size.
    pub fn validate(&self) -> Result<()> {
        let invalid = |reason: String| StoreError::InvalidRecord {
            run_id: self.run_id.clone(),
            reason,
        };
        if self.run_id.is_empty() || self.run_id.len() > 128 {
            return Err(invalid("the run id must be 1 to 128 bytes".into()));
        }
        if self.workflow.is_empty() {
            return Err(invalid("the workflow id is empty".into()));
        }
        DocName::results(&self.node, crate::names::Window::containing(0, 1))
            .map_err(|e| invalid(e.to_string()))?;
        if self.finished_ms < self.started_ms {
            return Err(invalid(format!(
                "finished_ms {} is before started_ms {}",
                self.finished_ms, self.started_ms
            )));
        }
        Ok(())
    }
}

impl TypedDoc for ResultsDoc {
    const KIND: DocKind = DocKind::Results;
    fn genesis(name: &DocName) -> Self {
        match name {
            DocName::Results { node, window } => ResultsDoc {
                node: node.clone(),
                window: window.to_string(),
                runs: BTreeMap::new(),
            },
            _ => ResultsDoc::default(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// rollup

/// A zone aggregator's summary of one window: one entry per (workflow, source node).
#[derive(Debug, Clone, Default, PartialEq, Eq, Reconcile, Hydrate, Serialize, Deserialize)]
pub struct RollupDoc {
    /// The zone summarised (its path; `` for the root).
    pub zone: String,
    /// The window, as in the document name.
    pub window: String,
    /// Summaries keyed `<workflow>/<source node>`. One flat map rather than a map per workflow:
    /// two aggregators that concurrently created the same workflow's inner map would create two
    /// maps at one key, and the merge would keep only one of them with its entries.
    pub summaries: BTreeMap<String, RunSummary>,
}

impl RollupDoc {
    /// The summary of one workflow from one source, created empty if absent.
    pub fn summary_mut(&mut self, workflow: &str, source: &str) -> &mut RunSummary {
        self.summaries
            .entry(format!("{workflow}/{source}"))
            .or_insert_with(|| RunSummary {
                workflow: workflow.to_owned(),
                source: source.to_owned(),
                ..RunSummary::default()
            })
    }
}

/// Counts and latency statistics of one source's runs of one workflow in one window.
#[derive(Debug, Clone, Default, PartialEq, Eq, Reconcile, Hydrate, Serialize, Deserialize)]
pub struct RunSummary {
    /// The workflow summarised.
    pub workflow: String,
    /// The node whose runs these are.
    pub source: String,
    /// Runs seen.
    pub runs: u64,
    /// Runs that did not succeed.
    pub failures: u64,
    /// Sum of run durations, milliseconds.
    pub total_ms: u64,
    /// Longest run, milliseconds.
    pub max_ms: u64,
    /// Status of the latest run.
    pub last_status: RunStatus,
    /// End of the latest run, milliseconds since the Unix epoch.
    pub last_finished_ms: i64,
    /// Output of the latest run, JSON text.
    pub last_output: String,
    /// Run id of the latest run (breaks ties between runs that ended in the same millisecond).
    pub last_run_id: String,
}

impl TypedDoc for RollupDoc {
    const KIND: DocKind = DocKind::Rollup;
    fn genesis(name: &DocName) -> Self {
        match name {
            DocName::Rollup { window, .. } => RollupDoc {
                zone: name.rollup_zone().unwrap_or_default(),
                window: window.to_string(),
                summaries: BTreeMap::new(),
            },
            _ => RollupDoc::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn genesis_is_identical_everywhere() {
        let name: DocName = "results/n1/2026-11-24T04:00Z+60m".parse().unwrap();
        let mut a = genesis_doc::<ResultsDoc>(&name).unwrap();
        let mut b = genesis_doc::<ResultsDoc>(&name).unwrap();
        assert_eq!(a.get_heads(), b.get_heads());
        assert_eq!(a.save(), b.save());
        let other: DocName = "results/n2/2026-11-24T04:00Z+60m".parse().unwrap();
        let mut c = genesis_doc::<ResultsDoc>(&other).unwrap();
        assert_ne!(a.get_heads(), c.get_heads());
    }

    #[test]
    fn values_round_trip_through_a_document() {
        let name = DocName::workflow("w").unwrap();
        let mut doc = genesis_doc::<WorkflowDoc>(&name).unwrap();
        let mut wf: WorkflowDoc = hydrate(&name, &doc).unwrap();
        assert_eq!(wf.id, "w");
        wf.version = 3;
        wf.steps.insert(
            "read".into(),
            StepDef {
                agent: "sensor".into(),
                config: "{}".into(),
                inputs: vec!["input".into()],
                when: Some("x > 1".into()),
                timeout_ms: 10,
                retries: 2,
                backoff_ms: 100,
            },
        );
        reconcile(&name, &mut doc, &wf).unwrap();
        doc.commit();
        let back: WorkflowDoc = hydrate(&name, &doc).unwrap();
        assert_eq!(back, wf);
    }

    #[test]
    fn a_document_of_another_kind_is_a_shape_error() {
        let name = DocName::workflow("w").unwrap();
        let doc = genesis_doc::<WorkflowDoc>(&name).unwrap();
        let err = hydrate::<ResultsDoc>(&name, &doc).unwrap_err().to_string();
        assert!(
            err.contains("workflow/w") && err.contains("results"),
            "{err}"
        );
    }

    /// Commits an edit of the registry as one change by `actor`, and returns that change.
    fn registry_change(
        doc: &mut AutoCommit,
        actor: &str,
        edit: impl FnOnce(&mut MeshRegistry),
    ) -> automerge::Change {
        doc.set_actor(ActorId::from(actor.as_bytes()));
        let before = doc.get_heads();
        let mut registry: MeshRegistry = hydrate(&DocName::Mesh, doc).unwrap();
        edit(&mut registry);
        reconcile(&DocName::Mesh, doc, &registry).unwrap();
        doc.commit();
        let changes = doc.get_changes(&before);
        assert!(changes.len() <= 1);
        changes.into_iter().next().unwrap_or_else(|| {
            doc.empty_change(CommitOptions::default());
            doc.get_changes(&before)[0].clone()
        })
    }

    fn entry(name: &str, zone: &str) -> NodeEntry {
        NodeEntry {
            name: name.into(),
            zone: zone.into(),
            tags: vec!["press".into()],
            ..NodeEntry::default()
        }
    }

    #[test]
    fn zone_effect_names_new_entries_and_gives_up_on_moves_and_deletions() {
        let mut doc = genesis_doc::<MeshRegistry>(&DocName::Mesh).unwrap();
        let n1 = registry_change(&mut doc, "n1", |r| {
            r.write_entry("n1", entry("one", "site-a"), 1)
        });
        let n2 = registry_change(&mut doc, "n2", |r| r.write_entry("n2", entry("two", ""), 1));
        assert_eq!(
            zone_effect(std::slice::from_ref(&n1)),
            ZoneEffect::NewEntries(vec!["n1".into()])
        );
        assert_eq!(
            zone_effect(&[n1, n2]),
            ZoneEffect::NewEntries(vec!["n1".into(), "n2".into()])
        );
        let mut zones = BTreeMap::new();
        assert!(read_new_zones(
            &doc,
            &["n1".into(), "n2".into()],
            &mut zones
        ));
        assert_eq!(zones, registry_zones(&doc));
        assert!(!read_new_zones(&doc, &["n9".into()], &mut zones));

        let merge = registry_change(&mut doc, "n3", |_| {});
        assert!(merge.is_empty());
        let rename = registry_change(&mut doc, "n1", |r| {
            r.nodes.get_mut("n1").unwrap().name = "uno".into();
        });
        let liveness = registry_change(&mut doc, "n2", |r| {
            r.write_entry("n2", entry("two", ""), 2);
        });
        assert_eq!(zone_effect(&[merge, rename, liveness]), ZoneEffect::None);

        let moved = registry_change(&mut doc, "n2", |r| {
            r.nodes.get_mut("n2").unwrap().zone = "site-b".into();
        });
        assert_eq!(zone_effect(&[moved]), ZoneEffect::Unknown);
        let removed = registry_change(&mut doc, "n1", |r| {
            r.nodes.remove("n1");
        });
        assert_eq!(zone_effect(&[removed]), ZoneEffect::Unknown);
    }

    #[test]
    fn registry_zones_reads_what_decoding_the_registry_gives() {
        let mut registry = MeshRegistry::default();
        for (node, zone) in [("n1", "site-a/line-1"), ("n2", ""), ("n3", "site-b")] {
            let entry = NodeEntry {
                name: node.into(),
                zone: zone.into(),
                tags: vec!["press".into()],
                addresses: vec!["10.0.0.1:7400".into()],
                ..NodeEntry::default()
            };
            registry.write_entry(node, entry, 1_000);
        }
        let mut doc = genesis_doc::<MeshRegistry>(&DocName::Mesh).unwrap();
        reconcile(&DocName::Mesh, &mut doc, &registry).unwrap();
        doc.commit();
        let decoded: MeshRegistry = hydrate(&DocName::Mesh, &doc).unwrap();
        let expected: BTreeMap<String, String> = decoded
            .nodes
            .into_iter()
            .map(|(node, entry)| (node, entry.zone))
            .collect();
        assert_eq!(registry_zones(&doc), expected);
        assert_eq!(expected.len(), 3);
    }

    #[test]
    fn a_registry_entry_is_rewritten_only_when_it_says_something_new() {
        let mut registry = MeshRegistry::default();
        let entry = NodeEntry {
            name: "press-7".into(),
            zone: "site-a".into(),
            ..NodeEntry::default()
        };
        assert!(!registry.holds("n1", &entry));
        registry.write_entry("n1", entry.clone(), 1_000);
        registry.write_entry("n1", entry.clone(), 2_000);
        assert_eq!(registry.nodes["n1"].heartbeat, 2);
        assert_eq!(registry.nodes["n1"].updated_ms, 2_000);
        // Liveness alone is nothing new; another zone is.
        assert!(registry.holds("n1", &entry));
        let moved = NodeEntry {
            zone: "site-b".into(),
            ..entry
        };
        assert!(!registry.holds("n1", &moved));
    }
}
