//! Typed documents: the Rust shape of each document kind, mapped onto Automerge with autosurgeon.
//!
//! Concurrency is designed into the shapes. Everything that two nodes may write at once lives
//! under a map key of its own (a node's registry entry, a workflow step, a run record), so that
//! concurrent writes touch different keys and all of them survive the merge. A scalar written
//! concurrently ends with one of the written values on every replica.
//!
//! A workflow definition is the exception to merging: it is one atomic value per version (a
//! JSON text under one key), because a definition merged field by field from two versions is a
//! definition nobody wrote or validated. Versions written concurrently stand side by side as
//! an Automerge conflict until one is applied over them; [`WorkflowVersions`] reads them all
//! and resolves them by the workflow's [`ConflictPolicy`].
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

pub mod history;
pub mod release;
pub mod rollout;

/// The actor of every genesis change.
const GENESIS_ACTOR: &[u8] = b"rhizome-genesis";

/// A Rust type that is the content of one document kind.
pub trait TypedDoc: Sized {
    /// The kind of document this type describes.
    const KIND: DocKind;

    /// The content a document of this name starts with on every node.
    fn genesis(name: &DocName) -> Self;

    /// Reads the value out of a document.
    fn read_from(doc: &AutoCommit) -> Result<Self, autosurgeon::HydrateError>;

    /// Writes the value into a document as the smallest set of changes.
    fn write_to(&self, doc: &mut AutoCommit) -> Result<(), autosurgeon::ReconcileError>;
}

/// [`TypedDoc`] for a type whose fields Automerge merges key by key, as autosurgeon maps them.
macro_rules! merged_by_key {
    ($type:ty, $kind:expr, $genesis:expr) => {
        impl TypedDoc for $type {
            const KIND: DocKind = $kind;
            fn genesis(name: &DocName) -> Self {
                $genesis(name)
            }
            fn read_from(doc: &AutoCommit) -> Result<Self, autosurgeon::HydrateError> {
                autosurgeon::hydrate(doc)
            }
            fn write_to(&self, doc: &mut AutoCommit) -> Result<(), autosurgeon::ReconcileError> {
                autosurgeon::reconcile(doc, self)
            }
        }
    };
}

/// Creates the genesis of a document: the same bytes on every node for the same name.
pub fn genesis_doc<T: TypedDoc>(name: &DocName) -> Result<AutoCommit> {
    let mut doc = AutoCommit::new().with_actor(ActorId::from(GENESIS_ACTOR));
    T::genesis(name)
        .write_to(&mut doc)
        .map_err(|e| StoreError::Write {
            doc: name.to_string(),
            reason: e.to_string(),
        })?;
    doc.commit_with(CommitOptions::default().with_time(0));
    Ok(doc)
}

/// Reads a typed value out of a document.
pub fn hydrate<T: TypedDoc>(name: &DocName, doc: &AutoCommit) -> Result<T> {
    T::read_from(doc).map_err(|e| StoreError::Shape {
        doc: name.to_string(),
        kind: T::KIND.as_str(),
        reason: e.to_string(),
    })
}

/// Writes a typed value into a document as the smallest set of changes.
pub fn reconcile<T: TypedDoc>(name: &DocName, doc: &mut AutoCommit, value: &T) -> Result<()> {
    value.write_to(doc).map_err(|e| StoreError::Write {
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
    /// Revocation decisions by node id, each signed by the mesh CA; a node whose valid
    /// decision says revoked is refused at the handshake. Any member can write here, so only
    /// the CA's signature makes a decision count ([`Revocation::signature`]).
    pub revoked: BTreeMap<String, Revocation>,
    /// Mesh-wide settings only the mesh CA may decide (who may write workflows, say), by name,
    /// each signed by the CA; nodes obey only valid ones ([`PolicyDecision::signature`]).
    #[autosurgeon(missing = "Default::default")]
    #[serde(default)]
    pub policy: BTreeMap<String, PolicyDecision>,
    /// The mesh's CAs beyond the first, by certificate fingerprint (SHA-256, hex): each added
    /// or retired by a decision signed by a CA the nodes already trust (`mesh rotate-ca`).
    #[autosurgeon(missing = "Default::default")]
    #[serde(default)]
    pub cas: BTreeMap<String, CaRecord>,
    /// Alert rules for every node of the fleet, by name: each a [`FleetRule`] as JSON, signed
    /// by a control node (as workflow versions are); nodes obey only valid ones. One string
    /// per rule, so that two concurrent writes of a rule leave one of them whole, never a
    /// mix of the two that no signature covers.
    #[autosurgeon(missing = "Default::default")]
    #[serde(default)]
    pub alert_rules: BTreeMap<String, String>,
    /// Releases of the `rhizome` binary by version: each a [`release::Release`] as JSON,
    /// signed by a control node. One string per release, like alert rules.
    #[autosurgeon(missing = "Default::default")]
    #[serde(default)]
    pub releases: BTreeMap<String, String>,
}

/// An alert rule applied to the whole fleet (`rhizome alerts apply`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetRule {
    /// The rule, as JSON; empty when the rule was withdrawn.
    pub rule: String,
    /// When it was written, ms since the epoch; the latest write of a name wins.
    pub updated_ms: i64,
    /// The node that wrote it.
    pub updated_by: String,
    /// That node's certificate (PEM), which must carry the `control` role.
    pub author_cert: String,
    /// Hex ed25519 signature by that node's key over [`FleetRule::signed_text`].
    pub signature: String,
}

impl FleetRule {
    /// What the writer signs.
    pub fn signed_text(&self, mesh_id: &str, name: &str) -> String {
        format!(
            "rhizome alert rule v1\nmesh {mesh_id}\nname {name}\nat {}\nby {}\n{}",
            self.updated_ms, self.updated_by, self.rule
        )
    }
}

/// A CA of the mesh as the CA holder announced it: trusted from `added_ms`, and for admission
/// no longer from `retired_ms` (0: not retired).
#[derive(Debug, Clone, Default, PartialEq, Eq, Reconcile, Hydrate, Serialize, Deserialize)]
pub struct CaRecord {
    /// The CA's certificate, PEM.
    pub cert_pem: String,
    /// When it was added, milliseconds since the Unix epoch.
    pub added_ms: i64,
    /// When it was retired; 0 while it admits nodes.
    pub retired_ms: i64,
    /// This CA's key certified by the CA that endorsed it (a cross certificate, PEM), which
    /// nodes present while both CAs admit, for nodes that trust only the older one.
    #[autosurgeon(missing = "Default::default")]
    #[serde(default)]
    pub cross_pem: String,
    /// Hex ed25519 signature by a CA of the mesh over [`CaRecord::signed_text`].
    pub signature: String,
}

impl CaRecord {
    /// What a CA of the mesh signs: the mesh, the CA's fingerprint and certificate, and when it
    /// was added and retired.
    pub fn signed_text(&self, mesh_id: &str, fingerprint: &str) -> String {
        format!(
            "rhizome ca v1\nmesh {mesh_id}\nca {fingerprint}\nadded {}\nretired {}\n{}{}",
            self.added_ms, self.retired_ms, self.cert_pem, self.cross_pem
        )
    }
}

/// The CA's decision about one mesh-wide setting.
#[derive(Debug, Clone, Default, PartialEq, Eq, Reconcile, Hydrate, Serialize, Deserialize)]
pub struct PolicyDecision {
    /// The setting's value, as text.
    pub value: String,
    /// When it was decided, milliseconds since the Unix epoch.
    pub decided_ms: i64,
    /// Hex ed25519 signature by the mesh CA key over [`PolicyDecision::signed_text`].
    pub signature: String,
}

impl PolicyDecision {
    /// What the CA signs: the mesh, the setting, its value and when.
    pub fn signed_text(&self, mesh_id: &str, setting: &str) -> String {
        format!(
            "rhizome policy v1\nmesh {mesh_id}\nsetting {setting}\nvalue {}\nat {}",
            self.value, self.decided_ms
        )
    }
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
    /// Fingerprint of the mesh CA that issued the node's certificate in use (a CA rotation
    /// ends once every node's is the new one).
    #[autosurgeon(missing = "Default::default")]
    #[serde(default)]
    pub ca: String,
    /// The node's coarse health, rewritten only when it moves by more than its rounding: the
    /// registry replicates to every node.
    #[autosurgeon(missing = "Default::default")]
    #[serde(default)]
    pub vitals: Option<Vitals>,
    /// `edge` or `cloud`, as the node was started; empty in entries written before roles were
    /// published.
    #[autosurgeon(missing = "Default::default")]
    #[serde(default)]
    pub role: String,
    /// The node's report of each workflow's rollout it takes part in, by workflow: JSON of
    /// [`rollout::Report`]. Every node decides rollouts from these.
    #[autosurgeon(missing = "Default::default")]
    #[serde(default)]
    pub rollouts: BTreeMap<String, String>,
}

/// What a node tells the fleet of its health, rounded so that it changes rarely.
#[derive(Debug, Clone, Default, PartialEq, Eq, Reconcile, Hydrate, Serialize, Deserialize)]
pub struct Vitals {
    /// Host CPU use, percent, rounded to 5.
    pub cpu_percent: u64,
    /// Memory in use, percent, rounded to 5.
    pub memory_used_percent: u64,
    /// Free space of the data dir's filesystem, percent.
    pub disk_free_percent: u64,
    /// One-minute load average × 100, rounded to 5.
    pub load1_x100: u64,
    /// Hottest sensor, °C, where the host has one.
    pub temperature_celsius: Option<i64>,
    /// Battery charge, percent, where the host has one.
    pub battery_percent: Option<u64>,
    /// When measured, ms since the epoch.
    pub at_ms: i64,
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

/// The CA's decision about one node: revoked, or the revocation withdrawn.
#[derive(Debug, Clone, Default, PartialEq, Eq, Reconcile, Hydrate, Serialize, Deserialize)]
pub struct Revocation {
    /// When the decision was made, milliseconds since the Unix epoch.
    pub revoked_ms: i64,
    /// The administrator's reason.
    pub reason: String,
    /// The revocation was withdrawn (`mesh unrevoke`) at `revoked_ms`.
    #[autosurgeon(missing = "Default::default")]
    #[serde(default)]
    pub withdrawn: bool,
    /// Hex ed25519 signature by the mesh CA key over [`Revocation::signed_text`]; empty in
    /// decisions written before revocations were signed, which count for nothing.
    #[autosurgeon(missing = "Default::default")]
    #[serde(default)]
    pub signature: String,
}

impl Revocation {
    /// What the CA signs: the mesh, the node, the decision and its time, so that a signature
    /// can be moved to no other node, mesh or decision.
    pub fn signed_text(&self, mesh_id: &str, node: &str) -> String {
        format!(
            "rhizome revocation v1\nmesh {mesh_id}\nnode {node}\n{} at {}\nreason {}",
            if self.withdrawn {
                "withdrawn"
            } else {
                "revoked"
            },
            self.revoked_ms,
            self.reason
        )
    }
}

merged_by_key!(MeshRegistry, DocKind::Mesh, |_: &DocName| {
    MeshRegistry::default()
});

// ---------------------------------------------------------------------------------------------
// workflow

/// The root key holding a workflow's definition: one JSON string per version, so that two
/// versions applied concurrently are two values of one key (an Automerge conflict that
/// [`WorkflowVersions`] exposes), never a field-by-field merge into a definition nobody wrote.
pub const DEFINITION_KEY: &str = "definition";

/// Largest encoded workflow definition, in bytes: larger ones are refused when written and
/// not read when they arrive from a peer.
pub const MAX_DEFINITION_BYTES: usize = 1 << 20;

/// Deepest nesting of collections in a workflow definition (JSON arrays and objects, YAML
/// sequences and mappings): the step configurations the agents take need a handful of levels,
/// and parsers' cost and stack grow with depth.
pub const MAX_DEFINITION_DEPTH: usize = 64;

/// Keys of the layout before definitions were atomic (every field a key of the root), read
/// when a document has no [`DEFINITION_KEY`] yet and deleted by the first write of the new one.
const LEGACY_KEYS: [&str; 9] = [
    "version",
    "description",
    "trigger",
    "target",
    "steps",
    "timeout_ms",
    "max_concurrent",
    "updated_by",
    "updated_ms",
];

/// How the versions of a workflow that were applied concurrently are resolved.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum ConflictPolicy {
    /// The version written last wins, by (`updated_ms`, `updated_by`), then by its encoded text:
    /// every replica orders the same values the same way.
    #[default]
    LastWrite,
    /// A version applied on a node holding the mesh's `control` role
    /// ([`WorkflowDoc::by_control`]) wins over the others (the last written among them);
    /// without one, as [`ConflictPolicy::LastWrite`].
    ControlWins,
    /// Nothing wins: the competing versions are shown until someone applies a new one.
    Manual,
}

impl ConflictPolicy {
    /// The policy as written in workflow files.
    pub fn as_str(self) -> &'static str {
        match self {
            ConflictPolicy::LastWrite => "last_write",
            ConflictPolicy::ControlWins => "control_wins",
            ConflictPolicy::Manual => "manual",
        }
    }

    /// Reads a policy as written in workflow files.
    pub fn parse(text: &str) -> Option<ConflictPolicy> {
        [
            ConflictPolicy::LastWrite,
            ConflictPolicy::ControlWins,
            ConflictPolicy::Manual,
        ]
        .into_iter()
        .find(|p| p.as_str() == text)
    }
}

/// A workflow definition as replicated: a DAG of steps keyed by step id. A document holds it
/// as one atomic value ([`DEFINITION_KEY`]); reading a `WorkflowDoc` gives the newest version
/// by the last-write order, whatever the policy. What a node runs is decided by
/// [`WorkflowVersions::resolve`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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
    /// How concurrent versions are resolved (absent in definitions older than policies).
    #[serde(default)]
    pub conflict: ConflictPolicy,
    /// This version retires the workflow (`workflow delete`): a tombstone with no steps,
    /// signed and resolved like any version, so that concurrent edits and deletions meet under
    /// the same conflict policy and authorship checks, and a later version brings the workflow
    /// back. Absent from the text of ordinary versions, whose encoding (and so signature) stays
    /// as it was before deletions existed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
    /// The version whose definition this one makes current again (`workflow rollback`); 0 in
    /// versions applied from a file.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rollback_of: u64,
    /// The staged rollout this version is deployed by (its baseline is the version before):
    /// signed with the version. Absent from versions applied everywhere at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<rollout::Plan>,
    /// Who applied this version (node id).
    pub updated_by: String,
    /// Whether the node that applied this version held the mesh's `control` role then (a
    /// cloud peer, or the node that holds the mesh CA), which `conflict: control_wins` ranks
    /// first. Carried in the version itself, so that every replica resolves alike whatever
    /// it knows of the writer.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub by_control: bool,
    /// The writer's node certificate (PEM), issued by the mesh CA: it says which node wrote
    /// this version and whether that node holds `control`. Empty in unsigned versions.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub author_cert: String,
    /// Hex ed25519 signature by the writer's node key over [`WorkflowDoc::signed_text`]:
    /// receivers take a version from a peer only when it verifies, whoever relayed it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub signature: String,
    /// When, milliseconds since the Unix epoch.
    pub updated_ms: i64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl WorkflowDoc {
    /// What a workflow that was never applied reads as.
    pub(crate) fn unapplied(id: &str) -> WorkflowDoc {
        WorkflowDoc {
            id: id.to_owned(),
            ..WorkflowDoc::default()
        }
    }

    /// The definition as its author wrote it, without what every write stamps on it (version,
    /// writer, time, signature, rollback mark): two versions with the same content run alike.
    pub fn content(&self) -> WorkflowDoc {
        WorkflowDoc {
            version: 0,
            rollback_of: 0,
            rollout: None,
            updated_by: String::new(),
            by_control: false,
            author_cert: String::new(),
            signature: String::new(),
            updated_ms: 0,
            ..self.clone()
        }
    }

    /// The definition as stored: one JSON text.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("a workflow definition always encodes")
    }

    /// What the writer signs: the definition as stored, without the signature.
    pub fn signed_text(&self) -> String {
        WorkflowDoc {
            signature: String::new(),
            ..self.clone()
        }
        .encode()
    }

    /// Checks that the definition fits in a document ([`MAX_DEFINITION_BYTES`]); writers call
    /// this before storing, as readers refuse a larger one.
    pub fn check_size(&self) -> Result<(), BoundsError> {
        let bytes = self.encode().len();
        if bytes > MAX_DEFINITION_BYTES {
            return Err(BoundsError::TooLarge {
                bytes,
                limit: MAX_DEFINITION_BYTES,
            });
        }
        Ok(())
    }

    /// Decodes a stored definition of workflow `id`, bounded before parsing.
    fn decode(id: &str, text: &str) -> Result<WorkflowDoc, String> {
        check_json_bounds(text, MAX_DEFINITION_BYTES, MAX_DEFINITION_DEPTH)
            .map_err(|e| format!("the definition is refused unread: {e}"))?;
        let doc: WorkflowDoc = serde_json::from_str(text)
            .map_err(|e| format!("the definition is not a workflow definition: {e}"))?;
        if doc.id != id {
            return Err(format!(
                "the definition is of workflow `{}`, not `{id}`",
                doc.id
            ));
        }
        Ok(doc)
    }
}

/// A size or nesting limit that a text exceeds, found before parsing it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BoundsError {
    /// The text is longer than the limit.
    #[error("{bytes} bytes exceed the limit of {limit} bytes")]
    TooLarge {
        /// Its length.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// Collections nest deeper than the limit.
    #[error("nesting exceeds the limit of {limit} levels at line {line}, column {column}")]
    TooDeep {
        /// The limit.
        limit: usize,
        /// Where the limit was exceeded, 1-based.
        line: usize,
        /// The column (in characters), 1-based.
        column: usize,
    },
}

/// Checks a JSON text's length and the nesting of its arrays and objects, in one pass that
/// costs the same whatever the text holds, so that a hostile text is refused before a parser
/// spends time or stack on it. Brackets inside strings do not count.
pub fn check_json_bounds(
    text: &str,
    max_bytes: usize,
    max_depth: usize,
) -> Result<(), BoundsError> {
    if text.len() > max_bytes {
        return Err(BoundsError::TooLarge {
            bytes: text.len(),
            limit: max_bytes,
        });
    }
    let (mut depth, mut line, mut column) = (0usize, 1usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for c in text.chars() {
        column += 1;
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '[' | '{' => {
                depth += 1;
                if depth > max_depth {
                    return Err(BoundsError::TooDeep {
                        limit: max_depth,
                        line,
                        column,
                    });
                }
            }
            ']' | '}' => depth = depth.saturating_sub(1),
            '\n' => {
                line += 1;
                column = 0;
            }
            _ => {}
        }
    }
    Ok(())
}

/// A stored value of a workflow's definition that is not a definition this node can read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedVersion {
    /// Its size in bytes.
    pub bytes: usize,
    /// Why it was not read.
    pub reason: String,
}

/// Every version of a workflow that stands in its document: one, or several applied
/// concurrently that nobody has resolved by applying again (an Automerge conflict on
/// [`DEFINITION_KEY`]), or none before the first apply.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowVersions {
    /// The workflow id.
    pub id: String,
    /// The readable versions, newest first by the last-write order.
    pub versions: Vec<WorkflowDoc>,
    /// Values that are not readable definitions (too large, too deep, not JSON, another
    /// workflow's); they take no part in resolving.
    pub rejected: Vec<RejectedVersion>,
}

/// What a workflow's versions come to under its conflict policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution<'a> {
    /// No readable version: never applied, or only rejected values.
    Unapplied,
    /// The version in effect (the only one, or the policy's winner).
    Resolved(&'a WorkflowDoc),
    /// Versions that compete under the `manual` policy, newest first.
    Competing(&'a [WorkflowDoc]),
}

impl WorkflowVersions {
    /// Whether concurrent versions stand unresolved (by a new apply).
    pub fn in_conflict(&self) -> bool {
        self.versions.len() + self.rejected.len() > 1
    }

    /// The newest readable version by the last-write order.
    pub fn latest(&self) -> Option<&WorkflowDoc> {
        self.versions.first()
    }

    /// The policy that decides between the competing versions: the most cautious any of them
    /// asks for (`manual`, then `control_wins`, then `last_write`), so that every replica uses
    /// the same one and a version asking for a manual decision is never overruled silently.
    pub fn policy(&self) -> ConflictPolicy {
        self.versions
            .iter()
            .map(|v| v.conflict)
            .max()
            .unwrap_or_default()
    }

    /// The version in effect under the policy: a function of the standing versions alone, so
    /// that every replica holding the same ones resolves them alike.
    pub fn resolve(&self) -> Resolution<'_> {
        match self.versions.as_slice() {
            [] => Resolution::Unapplied,
            [only] => Resolution::Resolved(only),
            all => match self.policy() {
                ConflictPolicy::LastWrite => Resolution::Resolved(&all[0]),
                ConflictPolicy::ControlWins => {
                    Resolution::Resolved(all.iter().find(|v| v.by_control).unwrap_or(&all[0]))
                }
                ConflictPolicy::Manual => Resolution::Competing(all),
            },
        }
    }

    /// Reads the versions standing in a workflow document.
    fn read(doc: &AutoCommit) -> Result<WorkflowVersions, autosurgeon::HydrateError> {
        use automerge::{ROOT, ReadDoc, ScalarValue, Value};
        let obj = &ROOT;
        let id: String = autosurgeon::hydrate_prop(doc, obj, "id")?;
        let values = doc.get_all(obj, DEFINITION_KEY)?;
        let mut read = WorkflowVersions {
            id,
            ..WorkflowVersions::default()
        };
        if values.is_empty() {
            if doc.get(obj, "steps")?.is_some() {
                match LegacyWorkflow::hydrate_map(doc, obj) {
                    // The old genesis wrote every field: a workflow never applied has no steps.
                    Ok(legacy) if legacy.steps.is_empty() && legacy.version == 0 => {}
                    Ok(legacy) => read.versions.push(legacy.into()),
                    Err(e) => read.rejected.push(RejectedVersion {
                        bytes: 0,
                        reason: format!("a definition in the old layout that cannot be read: {e}"),
                    }),
                }
            }
            return Ok(read);
        }
        let mut decoded: Vec<(WorkflowDoc, String)> = Vec::new();
        for (value, _) in values {
            match value {
                Value::Scalar(s) => match s.as_ref() {
                    ScalarValue::Str(text) => match WorkflowDoc::decode(&read.id, text) {
                        Ok(doc) => decoded.push((doc, text.to_string())),
                        Err(reason) => read.rejected.push(RejectedVersion {
                            bytes: text.len(),
                            reason,
                        }),
                    },
                    other => read.rejected.push(RejectedVersion {
                        bytes: 0,
                        reason: format!("the definition is a {other:?}, not a JSON text"),
                    }),
                },
                Value::Object(kind) => read.rejected.push(RejectedVersion {
                    bytes: 0,
                    reason: format!("the definition is a {kind:?} object, not a JSON text"),
                }),
            }
        }
        decoded.sort_by(|(a, a_text), (b, b_text)| {
            (b.updated_ms, &b.updated_by, b_text).cmp(&(a.updated_ms, &a.updated_by, a_text))
        });
        decoded.dedup_by(|(_, a), (_, b)| a == b);
        read.versions = decoded.into_iter().map(|(doc, _)| doc).collect();
        Ok(read)
    }
}

/// The version that every competing value of a workflow's definition replaced, when they all
/// replaced the same one: what the fleet agreed on before versions were applied concurrently
/// (each value's change depends on the heads its writer had, at which exactly what it replaced
/// stood). `None` without a conflict, or when the writers started from different versions.
pub fn workflow_base(doc: &AutoCommit) -> Option<WorkflowDoc> {
    use automerge::{ROOT, ReadDoc, ScalarValue, Value};
    let values = doc.get_all(ROOT, DEFINITION_KEY).ok()?;
    if values.len() < 2 {
        return None;
    }
    let mut base: Option<(automerge::ObjId, String)> = None;
    for (_, op) in &values {
        let change = doc.get_change_by_hash(&doc.hash_for_opid(op)?)?;
        let replaced = doc.get_all_at(ROOT, DEFINITION_KEY, change.deps()).ok()?;
        let [(Value::Scalar(value), replaced_op)] = replaced.as_slice() else {
            return None;
        };
        let ScalarValue::Str(text) = value.as_ref() else {
            return None;
        };
        match &base {
            None => base = Some((replaced_op.clone(), text.to_string())),
            Some((seen, _)) if seen == replaced_op => {}
            Some(_) => return None,
        }
    }
    let id: String = autosurgeon::hydrate_prop(doc, ROOT, "id").ok()?;
    WorkflowDoc::decode(&id, &base?.1).ok()
}

/// A definition in the layout before definitions were atomic.
#[derive(Debug, Hydrate)]
struct LegacyWorkflow {
    id: String,
    version: u64,
    description: String,
    trigger: String,
    target: Target,
    steps: BTreeMap<String, StepDef>,
    timeout_ms: u64,
    max_concurrent: u32,
    updated_by: String,
    updated_ms: i64,
}

impl From<LegacyWorkflow> for WorkflowDoc {
    fn from(w: LegacyWorkflow) -> WorkflowDoc {
        WorkflowDoc {
            id: w.id,
            version: w.version,
            description: w.description,
            trigger: w.trigger,
            target: w.target,
            steps: w.steps,
            timeout_ms: w.timeout_ms,
            max_concurrent: w.max_concurrent,
            conflict: ConflictPolicy::LastWrite,
            deleted: false,
            rollback_of: 0,
            rollout: None,
            updated_by: w.updated_by,
            by_control: false,
            author_cert: String::new(),
            signature: String::new(),
            updated_ms: w.updated_ms,
        }
    }
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

pub(crate) fn workflow_id_of(name: &DocName) -> String {
    match name {
        DocName::Workflow { id } => id.clone(),
        _ => String::new(),
    }
}

impl TypedDoc for WorkflowDoc {
    const KIND: DocKind = DocKind::Workflow;

    fn genesis(name: &DocName) -> Self {
        WorkflowDoc::unapplied(&workflow_id_of(name))
    }

    fn read_from(doc: &AutoCommit) -> Result<Self, autosurgeon::HydrateError> {
        let read = WorkflowVersions::read(doc)?;
        Ok(match read.versions.into_iter().next() {
            Some(latest) => latest,
            None => WorkflowDoc::unapplied(&read.id),
        })
    }

    /// Writes the definition over every version standing, unless it is the one reading gives:
    /// a write that changes nothing leaves competing versions in place.
    fn write_to(&self, doc: &mut AutoCommit) -> Result<(), autosurgeon::ReconcileError> {
        use automerge::{ROOT, ReadDoc, transaction::Transactable};
        // The id is the genesis's; rewriting it would orphan every stored definition.
        if doc.get(ROOT, "id")?.is_none() {
            doc.put(ROOT, "id", self.id.as_str())?;
        }
        let in_effect = match WorkflowVersions::read(doc) {
            Ok(read) => read.versions.into_iter().next(),
            Err(_) => None,
        };
        if *self == in_effect.unwrap_or_else(|| WorkflowDoc::unapplied(&self.id)) {
            return Ok(());
        }
        doc.put(ROOT, DEFINITION_KEY, self.encode())?;
        for key in LEGACY_KEYS {
            if doc.get(ROOT, key)?.is_some() {
                doc.delete(ROOT, key)?;
            }
        }
        Ok(())
    }
}

/// The same document as [`WorkflowDoc`], read with every competing version; its genesis is
/// byte for byte the same.
impl TypedDoc for WorkflowVersions {
    const KIND: DocKind = DocKind::Workflow;

    fn genesis(name: &DocName) -> Self {
        WorkflowVersions {
            id: workflow_id_of(name),
            ..WorkflowVersions::default()
        }
    }

    fn read_from(doc: &AutoCommit) -> Result<Self, autosurgeon::HydrateError> {
        WorkflowVersions::read(doc)
    }

    /// Writes the only version there is. Several versions are what a merge produces, not
    /// something to write: they write nothing (apply one to resolve them).
    fn write_to(&self, doc: &mut AutoCommit) -> Result<(), autosurgeon::ReconcileError> {
        match self.versions.as_slice() {
            [only] => only.write_to(doc),
            _ => WorkflowDoc::unapplied(&self.id).write_to(doc),
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

/// Largest run input (JSON text), in bytes. A run's record carries its input and its steps'
/// outputs and must stay under [`MAX_RECORD_BYTES`]; an input refused when the run is asked
/// for is better than a run accepted whose record cannot be stored.
pub const MAX_RUN_INPUT_BYTES: usize = 256 << 10;

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

merged_by_key!(ResultsDoc, DocKind::Results, |name: &DocName| match name {
    DocName::Results { node, window } => ResultsDoc {
        node: node.clone(),
        window: window.to_string(),
        runs: BTreeMap::new(),
    },
    _ => ResultsDoc::default(),
});

// ---------------------------------------------------------------------------------------------
// alerts

/// One node's alerts of one window: each firing of a rule, keyed `<rule>@<fired_ms>`, updated in
/// place when it resolves. Written by that node only; travels up the aggregator chain.
#[derive(Debug, Clone, Default, PartialEq, Eq, Reconcile, Hydrate, Serialize, Deserialize)]
pub struct AlertsDoc {
    /// The node whose alerts these are.
    pub node: String,
    /// The window, as in the document name.
    pub window: String,
    pub alerts: BTreeMap<String, AlertRecord>,
}

/// One firing of an alert rule on one node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Reconcile, Hydrate, Serialize, Deserialize)]
pub struct AlertRecord {
    /// The rule's name.
    pub rule: String,
    /// `firing` or `resolved`.
    pub state: String,
    /// The rule's condition, as written.
    pub condition: String,
    /// What was seen when it fired (and last, while firing).
    pub value: String,
    /// When the condition had held long enough, ms since the epoch.
    pub fired_ms: i64,
    /// When it stopped holding; 0 while firing.
    pub resolved_ms: i64,
}

impl AlertRecord {
    /// The key of a firing in its document.
    pub fn key(rule: &str, fired_ms: i64) -> String {
        format!("{rule}@{fired_ms}")
    }
}

merged_by_key!(AlertsDoc, DocKind::Alerts, |name: &DocName| match name {
    DocName::Alerts { node, window } => AlertsDoc {
        node: node.clone(),
        window: window.to_string(),
        alerts: BTreeMap::new(),
    },
    _ => AlertsDoc::default(),
});

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

merged_by_key!(RollupDoc, DocKind::Rollup, |name: &DocName| match name {
    DocName::Rollup { window, .. } => RollupDoc {
        zone: name.rollup_zone().unwrap_or_default(),
        window: window.to_string(),
        summaries: BTreeMap::new(),
    },
    _ => RollupDoc::default(),
});

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

    fn version(writer: &str, ms: i64, description: &str, conflict: ConflictPolicy) -> WorkflowDoc {
        WorkflowDoc {
            id: "w".into(),
            version: 2,
            description: description.into(),
            trigger: "manual".into(),
            steps: BTreeMap::from([(
                "a".into(),
                StepDef {
                    agent: "noop".into(),
                    config: "null".into(),
                    ..StepDef::default()
                },
            )]),
            max_concurrent: 1,
            conflict,
            updated_by: writer.into(),
            updated_ms: ms,
            ..WorkflowDoc::default()
        }
    }

    /// A document holding `base`, then one fork per version writing it concurrently, merged.
    fn concurrent(base: Option<&WorkflowDoc>, versions: &[WorkflowDoc]) -> AutoCommit {
        let name = DocName::workflow("w").unwrap();
        let mut doc = genesis_doc::<WorkflowDoc>(&name).unwrap();
        if let Some(base) = base {
            doc.set_actor(ActorId::from(b"base".as_slice()));
            reconcile(&name, &mut doc, base).unwrap();
            doc.commit();
        }
        let mut forks: Vec<AutoCommit> = versions
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let mut fork = doc.fork().with_actor(ActorId::from(vec![i as u8 + 1]));
                reconcile(&name, &mut fork, v).unwrap();
                fork.commit();
                fork
            })
            .collect();
        for fork in &mut forks {
            doc.merge(fork).unwrap();
        }
        doc
    }

    #[test]
    fn concurrent_versions_are_a_conflict_on_one_key_never_a_merge() {
        use automerge::{ROOT, ReadDoc};
        let a = version("node-a", 10, "from a", ConflictPolicy::LastWrite);
        let mut b = version("node-b", 20, "from b", ConflictPolicy::LastWrite);
        b.trigger = "every 30s".into();
        let base = version("node-c", 1, "base", ConflictPolicy::LastWrite);
        let mut doc = concurrent(Some(&base), &[a.clone(), b.clone()]);
        assert_eq!(doc.get_all(ROOT, DEFINITION_KEY).unwrap().len(), 2);
        let name = DocName::workflow("w").unwrap();
        let read: WorkflowVersions = hydrate(&name, &doc).unwrap();
        assert_eq!(read.versions, vec![b.clone(), a.clone()], "newest first");
        assert!(read.in_conflict());
        // What a plain read gives is one of the written versions, whole.
        assert_eq!(hydrate::<WorkflowDoc>(&name, &doc).unwrap(), b);
        assert_eq!(workflow_base(&doc), Some(base));

        // Writing what is already read changes nothing: the conflict stays.
        let heads = doc.get_heads();
        let latest: WorkflowDoc = hydrate(&name, &doc).unwrap();
        reconcile(&name, &mut doc, &latest).unwrap();
        doc.commit();
        assert_eq!(doc.get_heads(), heads);
        // A new version replaces them all.
        let next = version("node-a", 30, "resolved", ConflictPolicy::LastWrite);
        reconcile(&name, &mut doc, &next).unwrap();
        doc.commit();
        let read: WorkflowVersions = hydrate(&name, &doc).unwrap();
        assert_eq!(read.versions, vec![next]);
        assert!(!read.in_conflict());
    }

    #[test]
    fn each_policy_picks_what_it_promises() {
        let name = DocName::workflow("w").unwrap();
        let versions = |policy_a, policy_b| {
            let a = version("node-a", 50, "from a", policy_a);
            let b = version("node-b", 50, "from b", policy_b);
            let doc = concurrent(None, &[a.clone(), b.clone()]);
            (hydrate::<WorkflowVersions>(&name, &doc).unwrap(), a, b)
        };
        // Same time: the writer id decides, the same way on every replica.
        let (read, _, b) = versions(ConflictPolicy::LastWrite, ConflictPolicy::LastWrite);
        assert_eq!(read.resolve(), Resolution::Resolved(&b));
        // control_wins: the control writer's version, however old; without one, last write.
        let (read, _, b) = versions(ConflictPolicy::ControlWins, ConflictPolicy::LastWrite);
        assert_eq!(read.policy(), ConflictPolicy::ControlWins);
        assert_eq!(read.resolve(), Resolution::Resolved(&b));
        let mut a = version(
            "node-a",
            10,
            "from a, on the cloud",
            ConflictPolicy::ControlWins,
        );
        a.by_control = true;
        let b = version("node-b", 50, "from b, later", ConflictPolicy::LastWrite);
        let doc = concurrent(None, &[a.clone(), b.clone()]);
        let read: WorkflowVersions = hydrate(&name, &doc).unwrap();
        assert_eq!(read.resolve(), Resolution::Resolved(&a));
        // manual: nothing wins, every version is shown; the most cautious policy applies.
        let (read, a, b) = versions(ConflictPolicy::LastWrite, ConflictPolicy::Manual);
        assert_eq!(read.policy(), ConflictPolicy::Manual);
        let competing = [b, a];
        assert_eq!(read.resolve(), Resolution::Competing(&competing));
        // One version is always in effect, whatever its policy.
        let only = version("node-a", 1, "only", ConflictPolicy::Manual);
        let doc = concurrent(None, std::slice::from_ref(&only));
        let read: WorkflowVersions = hydrate(&name, &doc).unwrap();
        assert_eq!(read.resolve(), Resolution::Resolved(&only));
        let never: WorkflowVersions =
            hydrate(&name, &genesis_doc::<WorkflowVersions>(&name).unwrap()).unwrap();
        assert_eq!(never.resolve(), Resolution::Unapplied);
    }

    #[test]
    fn both_workflow_types_start_from_the_same_genesis() {
        let name = DocName::workflow("w").unwrap();
        let mut a = genesis_doc::<WorkflowDoc>(&name).unwrap();
        let mut b = genesis_doc::<WorkflowVersions>(&name).unwrap();
        assert_eq!(a.save(), b.save());
        assert_eq!(
            hydrate::<WorkflowDoc>(&name, &a).unwrap(),
            WorkflowDoc::unapplied("w")
        );
    }

    #[test]
    fn unreadable_definitions_are_rejected_with_a_reason_not_run() {
        use automerge::{ROOT, transaction::Transactable};
        let name = DocName::workflow("w").unwrap();
        let good = version("node-a", 1, "good", ConflictPolicy::LastWrite);
        let mut doc = genesis_doc::<WorkflowDoc>(&name).unwrap();
        let mut writer = doc.fork().with_actor(ActorId::from(b"good".as_slice()));
        reconcile(&name, &mut writer, &good).unwrap();
        writer.commit();
        let mut other = doc.fork().with_actor(ActorId::from(b"peer".as_slice()));
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        other.put(ROOT, DEFINITION_KEY, deep).unwrap();
        other.commit();
        let mut huge = doc.fork().with_actor(ActorId::from(b"huge".as_slice()));
        huge.put(ROOT, DEFINITION_KEY, "x".repeat(MAX_DEFINITION_BYTES + 1))
            .unwrap();
        huge.commit();
        let mut foreign = doc.fork().with_actor(ActorId::from(b"foreign".as_slice()));
        let mut elsewhere = good.clone();
        elsewhere.id = "other".into();
        foreign
            .put(ROOT, DEFINITION_KEY, elsewhere.encode())
            .unwrap();
        foreign.commit();
        for fork in [&mut writer, &mut other, &mut huge, &mut foreign] {
            doc.merge(fork).unwrap();
        }
        let started = std::time::Instant::now();
        let read: WorkflowVersions = hydrate(&name, &doc).unwrap();
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert_eq!(read.versions, vec![good.clone()]);
        let reasons: Vec<&str> = read.rejected.iter().map(|r| r.reason.as_str()).collect();
        assert_eq!(reasons.len(), 3, "{reasons:?}");
        assert!(
            reasons.iter().any(|r| r.contains("limit of 64 levels")),
            "{reasons:?}"
        );
        assert!(
            reasons.iter().any(|r| r.contains("limit of 1048576 bytes")),
            "{reasons:?}"
        );
        assert!(reasons.iter().any(|r| r.contains("not `w`")), "{reasons:?}");
        assert_eq!(read.resolve(), Resolution::Resolved(&good));
        let mut too_big = good;
        too_big.description = "x".repeat(MAX_DEFINITION_BYTES);
        assert!(
            too_big
                .check_size()
                .unwrap_err()
                .to_string()
                .contains("1048576")
        );
    }

    #[test]
    fn definitions_in_the_old_layout_are_read_and_replaced_by_the_first_write() {
        let name = DocName::workflow("w").unwrap();
        let mut doc = AutoCommit::new();
        let old = LegacyShape {
            id: "w".into(),
            version: 3,
            description: "old".into(),
            trigger: "manual".into(),
            target: Target::default(),
            steps: BTreeMap::from([("a".into(), StepDef::default())]),
            timeout_ms: 0,
            max_concurrent: 1,
            updated_by: "n1".into(),
            updated_ms: 7,
        };
        autosurgeon::reconcile(&mut doc, &old).unwrap();
        doc.commit();
        let read: WorkflowDoc = hydrate(&name, &doc).unwrap();
        assert_eq!((read.version, read.description.as_str()), (3, "old"));
        let next = version("n2", 9, "new", ConflictPolicy::Manual);
        reconcile(&name, &mut doc, &next).unwrap();
        doc.commit();
        assert_eq!(hydrate::<WorkflowDoc>(&name, &doc).unwrap(), next);
        use automerge::{ROOT, ReadDoc};
        assert!(doc.get(ROOT, "steps").unwrap().is_none());
    }

    /// The old layout, as the previous build wrote it.
    #[derive(Reconcile)]
    struct LegacyShape {
        id: String,
        version: u64,
        description: String,
        trigger: String,
        target: Target,
        steps: BTreeMap<String, StepDef>,
        timeout_ms: u64,
        max_concurrent: u32,
        updated_by: String,
        updated_ms: i64,
    }

    #[test]
    fn json_bounds_are_checked_before_parsing() {
        let ok = r#"{"a": [1, {"b": "[[[[ in a string \" ]"}]}"#;
        assert_eq!(check_json_bounds(ok, 1 << 10, 3), Ok(()));
        assert_eq!(
            check_json_bounds(ok, 1 << 10, 2),
            Err(BoundsError::TooDeep {
                limit: 2,
                line: 1,
                column: 11
            })
        );
        assert_eq!(
            check_json_bounds(ok, 10, 8),
            Err(BoundsError::TooLarge {
                bytes: ok.len(),
                limit: 10
            })
        );
        let deep = "[".repeat(100_000);
        let started = std::time::Instant::now();
        let err = check_json_bounds(&format!("\n{deep}"), usize::MAX, 64).unwrap_err();
        assert!(started.elapsed() < std::time::Duration::from_millis(100));
        assert_eq!(
            err.to_string(),
            "nesting exceeds the limit of 64 levels at line 2, column 65"
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
