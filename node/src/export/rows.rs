//! What each exported document yields as table rows: pure functions from the store's typed
//! documents to rows, and the few value types PostgreSQL needs that Rust lacks (a timestamp
//! from epoch milliseconds, JSON text bound as `jsonb`).
//!
//! Every row knows its key (the table's primary key) and a 128-bit hash of its whole content,
//! which the exporter keeps per document so that a document that changed rewrites only the
//! rows that changed.

use std::collections::{BTreeSet, HashSet};
use std::error::Error;
use std::hash::{Hash, Hasher};

use bytes::{BufMut, BytesMut};
use crdt_store::{AlertsDoc, DocName, MeshRegistry, ResultsDoc, RollupDoc, RunRecord};
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

/// A point in time as milliseconds since the Unix epoch, bound as `timestamptz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Millis(pub i64);

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01).
const PG_EPOCH_US: i64 = 946_684_800_000_000;

impl ToSql for Millis {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        let us = self.0.saturating_mul(1000).saturating_sub(PG_EPOCH_US);
        out.put_i64(us);
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        matches!(*ty, Type::TIMESTAMPTZ | Type::TIMESTAMP)
    }

    to_sql_checked!();
}

/// JSON text known to be valid for PostgreSQL's `jsonb`, bound as `jsonb` (or `json`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Jsonb(pub String);

impl Jsonb {
    /// `text` when PostgreSQL takes it as JSON; otherwise the text as a JSON string, so that
    /// nothing is lost and no row is refused. Empty text is `None` (SQL `NULL`).
    pub fn from_text(text: &str) -> Option<Jsonb> {
        if text.is_empty() {
            return None;
        }
        // jsonb refuses the NUL character even escaped; serde_json takes it.
        let valid = serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
            && !text.contains("\\u0000");
        if valid {
            Some(Jsonb(text.to_owned()))
        } else {
            let clean = text.replace('\0', "\u{fffd}");
            Some(Jsonb(
                serde_json::to_string(&clean).expect("a string always encodes"),
            ))
        }
    }

    /// A value serialised by serde (always valid JSON).
    pub fn of<T: serde::Serialize>(value: &T) -> Jsonb {
        let text = serde_json::to_string(value).expect("the exported values always encode");
        // Strings in it may hold NUL characters, escaped, which jsonb refuses: then the text
        // is kept as a JSON string.
        if text.contains("\\u0000") {
            Jsonb::from_text(&text).expect("serde never writes empty JSON")
        } else {
            Jsonb(text)
        }
    }
}

impl ToSql for Jsonb {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        if *ty == Type::JSONB {
            // The binary jsonb format: a version byte, then the text.
            out.put_u8(1);
        }
        out.put_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        matches!(*ty, Type::JSONB | Type::JSON)
    }

    to_sql_checked!();
}

/// Text for a PostgreSQL `text` column, which cannot hold the NUL character.
fn text(s: &str) -> String {
    if s.contains('\0') {
        s.replace('\0', "\u{fffd}")
    } else {
        s.to_owned()
    }
}

/// A count as `bigint` (saturating: no count comes near it).
fn big(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// One row of `runs`: one run record.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RunRow {
    pub node: String,
    pub run_id: String,
    pub workflow: String,
    pub workflow_version: i64,
    pub status: String,
    pub started_at: Millis,
    pub finished_at: Millis,
    pub duration_ms: i64,
    pub output: Option<Jsonb>,
    pub error: Option<String>,
    pub steps: Jsonb,
}

/// One row of `rollups`: one workflow's runs on one node in one window of one zone.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RollupRow {
    pub zone: String,
    pub window_start: Millis,
    pub window_minutes: i32,
    pub workflow: String,
    pub node: String,
    pub runs: i64,
    pub failures: i64,
    pub total_ms: i64,
    pub max_ms: i64,
    pub last_status: String,
    pub last_finished_at: Millis,
    pub last_output: Option<Jsonb>,
    pub last_run_id: String,
}

/// One row of `nodes`: a member of the mesh as the registry describes it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeRow {
    pub id: String,
    pub name: String,
    pub zone: String,
    pub role: Option<String>,
    pub tags: Vec<String>,
    pub capabilities: Jsonb,
    pub vitals: Option<Jsonb>,
    pub addresses: Vec<String>,
    pub version: String,
    pub heartbeat: i64,
    pub last_seen: Millis,
    pub state: String,
}

/// One row of `alerts`: one firing of a rule on a node.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AlertRow {
    pub node: String,
    pub rule: String,
    pub fired_at: Millis,
    pub state: String,
    pub condition: String,
    pub value: String,
    pub resolved_at: Option<Millis>,
}

/// Rows of every table, as one document or one transaction yields them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rows {
    pub runs: Vec<RunRow>,
    pub rollups: Vec<RollupRow>,
    pub nodes: Vec<NodeRow>,
    pub alerts: Vec<AlertRow>,
}

/// A row's identity for change detection: 128 bits of its whole content.
pub type RowHash = u128;

/// The hash of a row (key and content together); stable within one process.
pub fn row_hash(table: &str, row: &impl Hash) -> RowHash {
    let half = |salt: u64| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        salt.hash(&mut h);
        table.hash(&mut h);
        row.hash(&mut h);
        h.finish()
    };
    (u128::from(half(0x5eed_0001)) << 64) | u128::from(half(0x5eed_0002))
}

impl Rows {
    /// How many rows there are.
    pub fn len(&self) -> usize {
        self.runs.len() + self.rollups.len() + self.nodes.len() + self.alerts.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The hash of every row.
    pub fn hashes(&self) -> HashSet<RowHash> {
        let mut out = HashSet::with_capacity(self.len());
        out.extend(self.runs.iter().map(|r| row_hash("runs", r)));
        out.extend(self.rollups.iter().map(|r| row_hash("rollups", r)));
        out.extend(self.nodes.iter().map(|r| row_hash("nodes", r)));
        out.extend(self.alerts.iter().map(|r| row_hash("alerts", r)));
        out
    }

    /// The rows whose hash is not in `known` (all of them when `known` is `None`).
    pub fn not_in(self, known: Option<&HashSet<RowHash>>) -> Rows {
        let Some(known) = known else {
            return self;
        };
        let keep = |table: &str, row: &dyn HashRow| !known.contains(&row.hash_in(table));
        Rows {
            runs: self.runs.into_iter().filter(|r| keep("runs", r)).collect(),
            rollups: self
                .rollups
                .into_iter()
                .filter(|r| keep("rollups", r))
                .collect(),
            nodes: self
                .nodes
                .into_iter()
                .filter(|r| keep("nodes", r))
                .collect(),
            alerts: self
                .alerts
                .into_iter()
                .filter(|r| keep("alerts", r))
                .collect(),
        }
    }

    /// Adds `other`'s rows.
    pub fn extend(&mut self, other: Rows) {
        self.runs.extend(other.runs);
        self.rollups.extend(other.rollups);
        self.nodes.extend(other.nodes);
        self.alerts.extend(other.alerts);
    }

    /// One row per key, the last one given winning: a statement may not upsert one key twice.
    pub fn dedup(&mut self) {
        dedup_by_key(&mut self.runs, |r| (r.node.clone(), r.run_id.clone()));
        dedup_by_key(&mut self.rollups, |r| {
            (
                r.zone.clone(),
                r.window_start,
                r.window_minutes,
                r.workflow.clone(),
                r.node.clone(),
            )
        });
        dedup_by_key(&mut self.nodes, |r| r.id.clone());
        dedup_by_key(&mut self.alerts, |r| {
            (r.node.clone(), r.rule.clone(), r.fired_at)
        });
    }
}

/// Object-safe hashing of a row, for [`Rows::not_in`].
trait HashRow {
    fn hash_in(&self, table: &str) -> RowHash;
}

impl<T: Hash> HashRow for T {
    fn hash_in(&self, table: &str) -> RowHash {
        row_hash(table, self)
    }
}

fn dedup_by_key<T, K: Ord>(rows: &mut Vec<T>, key: impl Fn(&T) -> K) {
    if rows.len() < 2 {
        return;
    }
    let mut last = std::collections::BTreeMap::new();
    for (i, row) in rows.iter().enumerate() {
        last.insert(key(row), i);
    }
    if last.len() == rows.len() {
        return;
    }
    let keep: BTreeSet<usize> = last.into_values().collect();
    let mut i = 0;
    rows.retain(|_| {
        let kept = keep.contains(&i);
        i += 1;
        kept
    });
}

/// The rows of a results document: one per run record.
pub fn from_results(doc: &ResultsDoc) -> Vec<RunRow> {
    from_runs(doc.runs.values())
}

/// One row per run record.
pub fn from_runs<'a>(records: impl IntoIterator<Item = &'a RunRecord>) -> Vec<RunRow> {
    records
        .into_iter()
        .map(|r| RunRow {
            node: text(&r.node),
            run_id: text(&r.run_id),
            workflow: text(&r.workflow),
            workflow_version: big(r.workflow_version),
            status: r.status.as_str().to_owned(),
            started_at: Millis(r.started_ms),
            finished_at: Millis(r.finished_ms),
            duration_ms: (r.finished_ms - r.started_ms).max(0),
            output: Jsonb::from_text(&r.output),
            error: r.error.as_deref().map(text),
            steps: Jsonb::of(&r.steps),
        })
        .collect()
}

/// The rows of a rollup document: one per (workflow, source node).
pub fn from_rollup(name: &DocName, doc: &RollupDoc) -> Vec<RollupRow> {
    let Some(window) = name.window() else {
        return Vec::new();
    };
    let zone = name.rollup_zone().unwrap_or_default();
    doc.summaries
        .values()
        .map(|s| RollupRow {
            zone: text(&zone),
            window_start: Millis(window.start_ms),
            window_minutes: i32::try_from(window.minutes).unwrap_or(i32::MAX),
            workflow: text(&s.workflow),
            node: text(&s.source),
            runs: big(s.runs),
            failures: big(s.failures),
            total_ms: big(s.total_ms),
            max_ms: big(s.max_ms),
            last_status: s.last_status.as_str().to_owned(),
            last_finished_at: Millis(s.last_finished_ms),
            last_output: Jsonb::from_text(&s.last_output),
            last_run_id: text(&s.last_run_id),
        })
        .collect()
}

/// What the registry does not say about its members but the exporting node knows.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// The exporting node's own id and role (`edge`, `cloud`), which its own entry may not
    /// carry yet; other nodes' roles come from their entries.
    pub me: Option<(String, String)>,
    /// Members revoked by a valid decision of the mesh CA.
    pub revoked: BTreeSet<String>,
}

/// The rows of the registry: one per member.
pub fn from_registry(registry: &MeshRegistry, facts: &Facts) -> Vec<NodeRow> {
    registry
        .nodes
        .iter()
        .map(|(id, e)| NodeRow {
            id: text(id),
            name: text(&e.name),
            zone: text(&e.zone),
            role: facts
                .me
                .as_ref()
                .filter(|(me, _)| me == id)
                .map(|(_, role)| role.clone())
                .or_else(|| (!e.role.is_empty()).then(|| text(&e.role))),
            tags: e.tags.iter().map(|t| text(t)).collect(),
            capabilities: Jsonb::of(&e.capabilities),
            vitals: e.vitals.as_ref().map(Jsonb::of),
            addresses: e.addresses.iter().map(|a| text(a)).collect(),
            version: text(&e.version),
            heartbeat: big(e.heartbeat),
            last_seen: Millis(e.updated_ms),
            state: if facts.revoked.contains(id) {
                "revoked".into()
            } else {
                "member".into()
            },
        })
        .collect()
}

/// The rows of an alerts document: one per firing.
pub fn from_alerts(doc: &AlertsDoc) -> Vec<AlertRow> {
    doc.alerts
        .values()
        .map(|a| AlertRow {
            node: text(&doc.node),
            rule: text(&a.rule),
            fired_at: Millis(a.fired_ms),
            state: text(&a.state),
            condition: text(&a.condition),
            value: text(&a.value),
            resolved_at: (a.resolved_ms > 0).then_some(Millis(a.resolved_ms)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crdt_store::{AlertRecord, NodeEntry, RunRecord, RunStatus, RunSummary, Window};

    fn record(id: &str, output: &str) -> RunRecord {
        RunRecord {
            run_id: id.into(),
            workflow: "w".into(),
            workflow_version: 3,
            node: "n1".into(),
            started_ms: 1_000,
            finished_ms: 1_250,
            status: RunStatus::Failed,
            steps: Vec::new(),
            output: output.into(),
            error: Some("bad\0byte".into()),
        }
    }

    #[test]
    fn run_records_map_to_rows() {
        let mut doc = ResultsDoc::default();
        for (id, out) in [
            ("a", "{\"x\": 1}"),
            ("b", "not json"),
            ("c", ""),
            ("d", "\"\\u0000\""),
        ] {
            doc.runs.insert(id.into(), record(id, out));
        }
        let rows = from_results(&doc);
        assert_eq!(rows.len(), 4);
        let a = &rows[0];
        assert_eq!((a.node.as_str(), a.run_id.as_str()), ("n1", "a"));
        assert_eq!((a.status.as_str(), a.duration_ms), ("failed", 250));
        assert_eq!(a.output, Some(Jsonb("{\"x\": 1}".into())));
        assert_eq!(a.error.as_deref(), Some("bad\u{fffd}byte"));
        assert_eq!(a.steps, Jsonb("[]".into()));
        // Invalid JSON is kept, as a JSON string.
        assert_eq!(rows[1].output, Some(Jsonb("\"not json\"".into())));
        assert_eq!(rows[2].output, None);
        // An escaped NUL, which jsonb refuses, is kept as text.
        let d: String = serde_json::from_str(&rows[3].output.as_ref().unwrap().0).unwrap();
        assert_eq!(d, "\"\\u0000\"");
    }

    #[test]
    fn rollups_name_their_zone_and_window() {
        let window = Window {
            start_ms: 1_800_000_000_000 / 3_600_000 * 3_600_000,
            minutes: 60,
        };
        let name = DocName::rollup("site-a/line-3", window).unwrap();
        let mut doc = RollupDoc::default();
        *doc.summary_mut("w", "n1") = RunSummary {
            workflow: "w".into(),
            source: "n1".into(),
            runs: 10,
            failures: 2,
            total_ms: 100,
            max_ms: 30,
            last_status: RunStatus::Succeeded,
            last_finished_ms: 5,
            last_output: "1".into(),
            last_run_id: "r9".into(),
        };
        let rows = from_rollup(&name, &doc);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].zone, "site-a/line-3");
        assert_eq!(rows[0].window_start, Millis(window.start_ms));
        assert_eq!((rows[0].window_minutes, rows[0].runs), (60, 10));
        let root = DocName::rollup("", window).unwrap();
        assert_eq!(from_rollup(&root, &doc)[0].zone, "");
    }

    #[test]
    fn registry_and_alerts_map_to_rows() {
        let mut registry = MeshRegistry::default();
        registry.nodes.insert(
            "id1".into(),
            NodeEntry {
                name: "press-7".into(),
                tags: vec!["sensor".into()],
                updated_ms: 42,
                ..NodeEntry::default()
            },
        );
        registry.nodes.insert("id2".into(), NodeEntry::default());
        let facts = Facts {
            me: Some(("id1".into(), "cloud".into())),
            revoked: ["id2".to_owned()].into(),
        };
        let rows = from_registry(&registry, &facts);
        assert_eq!(rows[0].role.as_deref(), Some("cloud"));
        assert_eq!(rows[0].state, "member");
        assert_eq!(rows[0].last_seen, Millis(42));
        assert_eq!(rows[0].capabilities, Jsonb("[]".into()));
        assert_eq!(
            (rows[1].role.as_deref(), rows[1].state.as_str()),
            (None, "revoked")
        );

        let mut alerts = AlertsDoc {
            node: "id1".into(),
            ..AlertsDoc::default()
        };
        alerts.alerts.insert(
            AlertRecord::key("hot", 7),
            AlertRecord {
                rule: "hot".into(),
                state: "firing".into(),
                fired_ms: 7,
                ..AlertRecord::default()
            },
        );
        let rows = from_alerts(&alerts);
        assert_eq!((rows[0].fired_at, rows[0].resolved_at), (Millis(7), None));
    }

    #[test]
    fn changed_rows_are_told_apart_and_keys_deduplicated() {
        let mut doc = ResultsDoc::default();
        doc.runs.insert("a".into(), record("a", "1"));
        let before = Rows {
            runs: from_results(&doc),
            ..Rows::default()
        };
        let known = before.hashes();
        doc.runs.insert("b".into(), record("b", "2"));
        let after = Rows {
            runs: from_results(&doc),
            ..Rows::default()
        };
        let new = after.clone().not_in(Some(&known));
        assert_eq!(new.runs.len(), 1);
        assert_eq!(new.runs[0].run_id, "b");
        assert_eq!(after.clone().not_in(None).len(), 2);

        let mut twice = after.clone();
        twice.extend(after);
        twice.runs[0].workflow = "older".into();
        twice.dedup();
        assert_eq!(twice.runs.len(), 2);
        assert!(twice.runs.iter().all(|r| r.workflow == "w"));
    }

    #[test]
    fn timestamps_are_microseconds_since_2000() {
        let mut out = BytesMut::new();
        Millis(946_684_800_001)
            .to_sql(&Type::TIMESTAMPTZ, &mut out)
            .unwrap();
        assert_eq!(out.as_ref(), 1000i64.to_be_bytes());
        let mut out = BytesMut::new();
        Jsonb("{}".into()).to_sql(&Type::JSONB, &mut out).unwrap();
        assert_eq!(out.as_ref(), b"\x01{}");
    }
}
