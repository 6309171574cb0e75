//! The export into PostgreSQL (`[export] postgres = "..."`): the run records, rollups, fleet
//! inventory and alerts this node holds, written into a schema of the operator's database
//! (`rhizome` by default: `runs`, `rollups`, `nodes`, `alerts`, `export_checkpoint`) that the
//! node creates and migrates itself ([`schema`]).
//!
//! **Exactly once.** Every stored document is an Automerge document with heads. The exporter
//! keeps, per document, the digest of the heads it last exported (`export_checkpoint`, keyed
//! by this node's id and the document's name). A document whose heads differ from its
//! checkpoint is read whole at its current heads, and every row it yields is upserted (keyed
//! by the table's primary key, replacing changed values, never adding to them) **in the same
//! transaction** that writes its new checkpoint. A kill at any moment therefore leaves either
//! the rows and the checkpoint, or neither: the document is still pending and is exported
//! again, and the upserts make that harmless; so does a replay from scratch (the checkpoints
//! deleted). Rows are never deleted: retention on the node does not reach the database.
//!
//! **Off the hot paths.** The exporter is one task. It reads the store through the node's
//! [`StoreHandle`], one document per call, maps documents to rows on a blocking thread, and
//! sends only rows that changed since it last wrote the document (it remembers a hash of every
//! row it wrote, per document, for as long as the connection lasts). While the database is
//! away it retries with back-off ([`BACKOFF_MIN`] to [`BACKOFF_MAX`]) and goes on counting
//! what is pending; the node keeps working and the export catches up from the store.
//!
//! It must never write to the store, and never hold the store for longer than reading one
//! document takes.

pub mod postgres;
pub mod rows;
pub mod schema;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use crdt_store::samod_core::DocumentId;
use crdt_store::{
    AlertsDoc, DocKind, DocName, MeshRegistry, RETIRED_DIGEST, ResultsSince, RollupDoc, StoreHandle,
};
use serde::{Deserialize, Serialize};

use postgres::{Checkpoint, Db, Exported, Target};
pub use postgres::{ExportError, Method};
use rows::{Facts, RowHash, Rows};

/// First wait after a failure; it doubles up to [`BACKOFF_MAX`].
pub const BACKOFF_MIN: Duration = Duration::from_millis(500);
/// Longest wait between two tries while the database is away. A try costs one connection
/// attempt; a longer wait would dominate the catch-up once the database is back (its backlog
/// of a 10-minute outage at 40 runs/s is written in 2 to 4 s).
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Documents one transaction holds at most (their checkpoints are one statement).
pub const MAX_DOCS_PER_TRANSACTION: usize = 256;
/// Documents one pass reads at most before looking at the store's catalogue again.
pub const MAX_DOCS_PER_PASS: usize = 1024;
/// Largest `batch`.
pub const MAX_BATCH: usize = 50_000;

/// The export's settings, checked.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where to connect.
    pub postgres: tokio_postgres::Config,
    /// The schema.
    pub schema: String,
    /// Rows per statement.
    pub batch: usize,
    /// How often the store is looked at when nothing was pending.
    pub interval: Duration,
    /// How rows are sent.
    pub method: Method,
    /// Longest wait for one transaction or setup step (`export.timeout`).
    pub timeout: Duration,
}

impl Settings {
    /// From `[export]`; `None` when `postgres` is empty.
    pub fn from_section(section: &crate::config::ExportSection) -> Result<Option<Settings>> {
        if section.postgres.trim().is_empty() {
            return Ok(None);
        }
        // The error of the parser never repeats the text, which may hold a password.
        let postgres: tokio_postgres::Config = section.postgres.parse().map_err(|e| {
            anyhow::anyhow!(
                "export.postgres (RHIZOME_EXPORT_POSTGRES) is not a PostgreSQL connection \
                 string ({e}); examples: postgres://user:password@host:5432/dbname, \
                 host=/run/postgresql dbname=fleet"
            )
        })?;
        if postgres.get_hosts().is_empty() {
            bail!(
                "export.postgres (RHIZOME_EXPORT_POSTGRES) names no host: give one, such as \
                 postgres://user@127.0.0.1:5432/dbname"
            );
        }
        schema::check_schema_name(&section.schema)
            .map_err(anyhow::Error::msg)
            .context("export.schema (RHIZOME_EXPORT_SCHEMA)")?;
        if section.batch == 0 || section.batch > MAX_BATCH {
            bail!(
                "export.batch must be between 1 and {MAX_BATCH} rows (got {})",
                section.batch
            );
        }
        let interval = crate::config::parse_duration(&section.interval)
            .context("export.interval (RHIZOME_EXPORT_INTERVAL)")?;
        if interval < Duration::from_millis(100) {
            bail!("export.interval must be at least 100ms");
        }
        let timeout = crate::config::parse_duration(&section.timeout)
            .context("export.timeout (RHIZOME_EXPORT_TIMEOUT)")?;
        if timeout < Duration::from_secs(1) {
            bail!("export.timeout must be at least 1s");
        }
        Ok(Some(Settings {
            postgres,
            schema: section.schema.clone(),
            batch: section.batch,
            interval,
            method: Method::default(),
            timeout,
        }))
    }

    /// Where the database is, for messages (no password).
    pub fn target(&self) -> Target {
        Target::of(&self.postgres, &self.schema)
    }
}

/// Where the export stands: `GET /export`, `rhizome export status`, `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExportStatus {
    /// Whether `[export] postgres` is set.
    pub configured: bool,
    /// `off`, `connecting`, `exporting`, `up to date` or `failing`.
    pub state: String,
    /// `host:port/dbname` (never the password).
    #[serde(default)]
    pub target: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub schema: Option<String>,
    /// The exporter's id in `export_checkpoint`: this node's id.
    #[serde(default)]
    pub exporter: String,
    /// Whether a connection is open now.
    pub connected: bool,
    /// The schema version in the database when the connection was made (before migrating),
    /// and the version this build writes.
    #[serde(default)]
    pub schema_version_found: Option<i32>,
    pub schema_version: i32,
    /// Documents whose heads differ from their checkpoint (as last read from the database).
    pub documents_pending: usize,
    /// Documents whose checkpoint is current.
    pub documents_exported: usize,
    /// Rows written since the node started (a row rewritten counts again).
    pub rows_exported: u64,
    /// Transactions committed since the node started.
    pub transactions: u64,
    /// Seconds since the oldest pending document was first seen pending; 0 when none is.
    pub lag_seconds: f64,
    /// The oldest pending document.
    #[serde(default)]
    pub oldest_pending: Option<String>,
    /// When a transaction last committed, ms since the epoch.
    #[serde(default)]
    pub last_success_ms: Option<i64>,
    /// The last error, a sentence, and when; kept after the export recovers.
    #[serde(default)]
    pub last_error: Option<String>,
    #[serde(default)]
    pub last_error_reason: Option<String>,
    #[serde(default)]
    pub last_error_ms: Option<i64>,
    /// Since when the oldest pending document is pending (for `lag_seconds`).
    #[serde(default, skip_serializing)]
    pub oldest_pending_since_ms: Option<i64>,
}

/// The shared view of the export's state: cheap to clone, read by the API.
#[derive(Debug, Clone, Default)]
pub struct ExportHandle(Arc<Mutex<ExportStatus>>);

impl ExportHandle {
    /// The handle of a node whose export is configured by `settings` (`None`: off).
    pub fn new(settings: Option<&Settings>, exporter: &str) -> ExportHandle {
        let status = match settings {
            None => ExportStatus {
                state: "off".into(),
                schema_version: schema::VERSION,
                ..ExportStatus::default()
            },
            Some(s) => {
                let target = s.target();
                ExportStatus {
                    configured: true,
                    state: "connecting".into(),
                    target: Some(target.place),
                    user: Some(target.user),
                    schema: Some(s.schema.clone()),
                    exporter: exporter.to_owned(),
                    schema_version: schema::VERSION,
                    ..ExportStatus::default()
                }
            }
        };
        ExportHandle(Arc::new(Mutex::new(status)))
    }

    /// The state now, with the lag computed for this moment.
    pub fn status(&self) -> ExportStatus {
        let mut status = self.0.lock().expect("export status").clone();
        status.lag_seconds = match (status.documents_pending, status.oldest_pending_since_ms) {
            (0, _) | (_, None) => 0.0,
            (_, Some(since)) => (crate::node::now_ms() - since).max(0) as f64 / 1000.0,
        };
        status
    }

    fn update(&self, f: impl FnOnce(&mut ExportStatus)) {
        f(&mut self.0.lock().expect("export status"));
    }
}

/// What the registry's rows need beyond the registry, computed from it.
pub type FactsSource = Arc<dyn Fn(&MeshRegistry) -> Facts + Send + Sync>;

/// A document read from the store, at the heads given.
enum Read {
    Mesh(MeshRegistry),
    /// A results window: whole, or the records changed since its checkpoint.
    Results(ResultsSince),
    Rollup(RollupDoc),
    Alerts(AlertsDoc),
}

/// One document's rows, ready to be written with its checkpoint.
struct Ready {
    name: String,
    checkpoint: Checkpoint,
    heads: Vec<automerge::ChangeHash>,
    /// Every row the document yields now (their hashes).
    hashes: HashSet<RowHash>,
    /// The rows to write: those not known to be in the database.
    rows: Rows,
}

/// The exporter task.
pub struct Exporter {
    settings: Settings,
    me: String,
    store: StoreHandle,
    status: ExportHandle,
    facts: FactsSource,
    /// The checkpoint of every document, as last read from or written to the database.
    checkpoints: HashMap<String, Exported>,
    /// Hashes of the rows written per document during this connection.
    known: HashMap<String, HashSet<RowHash>>,
    /// When each pending document was first seen pending.
    first_seen: HashMap<String, i64>,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter")
            .field("me", &self.me)
            .field("schema", &self.settings.schema)
            .finish_non_exhaustive()
    }
}

/// The exportable documents of the catalogue: id, name (as text and parsed), heads digest.
type Pending = Vec<(DocumentId, DocName, String)>;

/// What a pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pass {
    /// Documents exported.
    pub documents: usize,
    /// Rows written.
    pub rows: usize,
    /// Documents still pending afterwards (not read in this pass, or failed to read).
    pub left: usize,
}

impl Exporter {
    pub fn new(
        settings: Settings,
        me: String,
        store: StoreHandle,
        status: ExportHandle,
        facts: FactsSource,
    ) -> Exporter {
        Exporter {
            settings,
            me,
            store,
            status,
            facts,
            checkpoints: HashMap::new(),
            known: HashMap::new(),
            first_seen: HashMap::new(),
        }
    }

    /// Runs until the task is aborted.
    pub async fn run(mut self) {
        let mut backoff = BACKOFF_MIN;
        let mut db: Option<Db> = None;
        loop {
            if db.is_none() {
                match self.connect().await {
                    Ok(connected) => {
                        db = Some(connected);
                        backoff = BACKOFF_MIN;
                    }
                    Err(e) => {
                        self.failed(&e);
                        // Pending documents are still counted against the last checkpoints.
                        if let Ok(pending) = self.pending().await {
                            self.note_pending(&pending);
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                        continue;
                    }
                }
            }
            let connection = db.as_mut().expect("connected above");
            match self.pass(connection).await {
                Ok(pass) if pass.left > 0 => tokio::task::yield_now().await,
                Ok(_) => tokio::time::sleep(self.settings.interval).await,
                Err(e) => {
                    self.failed(&e);
                    if e.drops_connection() {
                        db = None;
                        self.status.update(|s| s.connected = false);
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            }
            backoff = BACKOFF_MIN;
        }
    }

    /// Connects and migrates; the rows known from an earlier connection are forgotten (the
    /// database may have changed meanwhile).
    pub async fn connect(&mut self) -> Result<Db, ExportError> {
        self.status.update(|s| s.state = "connecting".into());
        let (db, checkpoints) = Db::connect(
            &self.settings.postgres,
            self.settings.target(),
            &self.me,
            self.settings.method,
            self.settings.batch,
            self.settings.timeout,
        )
        .await?;
        self.checkpoints = checkpoints;
        self.known.clear();
        let found = db.found_version;
        self.status.update(|s| {
            s.connected = true;
            s.schema_version_found = Some(found);
            s.state = "exporting".into();
        });
        tracing::info!(target = %self.settings.target().place, "export connected to PostgreSQL");
        Ok(db)
    }

    fn failed(&self, e: &ExportError) {
        let reason = e.reason();
        crate::ops::metrics::events().add(
            "rhizome_export_errors_total",
            "Export failures since the node started, by reason (connect, auth, permission, \
             schema, refused, database, timeout, store).",
            vec![("reason", reason.to_owned())],
            1.0,
        );
        let text = e.to_string();
        tracing::warn!(reason, error = %text, "export failed; trying again");
        self.status.update(|s| {
            s.state = "failing".into();
            s.last_error = Some(text);
            s.last_error_reason = Some(reason.to_owned());
            s.last_error_ms = Some(crate::node::now_ms());
        });
    }

    /// The documents whose heads differ from their checkpoint, registry first, then rollups,
    /// alerts, results, oldest window first.
    async fn pending(&mut self) -> Result<Pending, ExportError> {
        let catalogue = self
            .store
            .call(|s| s.sync_catalogue())
            .recv()
            .await
            .map_err(|e| ExportError::Store(e.to_string()))?;
        let mut pending: Pending = Vec::new();
        let mut exported = 0;
        for item in catalogue {
            if item.digest == RETIRED_DIGEST || !exportable(&item.name) {
                continue;
            }
            let digest = hex::encode(item.digest);
            if self
                .checkpoints
                .get(&item.name.to_string())
                .is_some_and(|c| c.digest == digest)
            {
                exported += 1;
            } else {
                pending.push((item.id, item.name, digest));
            }
        }
        pending.sort_by_key(|(_, name, _)| (rank(name), name.window(), name.to_string()));
        self.status.update(|s| s.documents_exported = exported);
        Ok(pending)
    }

    /// Records what of `pending` is still pending (its checkpoint is not the digest listed).
    fn note_pending(&mut self, pending: &Pending) {
        let now = crate::node::now_ms();
        let names: HashSet<String> = pending
            .iter()
            .map(|(_, n, digest)| (n.to_string(), digest))
            .filter(|(n, digest)| self.checkpoints.get(n).is_none_or(|c| c.digest != **digest))
            .map(|(n, _)| n)
            .collect();
        // Documents exported, or dropped from the store, are forgotten.
        self.first_seen.retain(|name, _| names.contains(name));
        for name in &names {
            self.first_seen.entry(name.clone()).or_insert(now);
        }
        let oldest = self
            .first_seen
            .iter()
            .min_by_key(|(name, since)| (**since, (*name).clone()))
            .map(|(n, s)| (n.clone(), *s));
        let left = names.len();
        self.status.update(|s| {
            s.documents_pending = left;
            s.oldest_pending = oldest.as_ref().map(|(n, _)| n.clone());
            s.oldest_pending_since_ms = oldest.map(|(_, since)| since);
        });
    }

    /// Exports what is pending now, in transactions of about `batch` rows.
    pub async fn pass(&mut self, db: &mut Db) -> Result<Pass, ExportError> {
        let pending = self.pending().await?;
        self.note_pending(&pending);
        let mut pass = Pass::default();
        let mut group: Vec<Ready> = Vec::new();
        let mut group_rows = 0;
        let mut failed_reads = 0;
        let started = std::time::Instant::now();
        let mut reading = Duration::ZERO;
        for (id, name, _) in pending.iter().take(MAX_DOCS_PER_PASS) {
            let read_started = std::time::Instant::now();
            let read = self.read(id.clone(), name.clone()).await;
            reading += read_started.elapsed();
            let ready = match read {
                Ok(ready) => ready,
                Err(e) => {
                    // One unreadable document does not hold up the others.
                    self.failed(&e);
                    failed_reads += 1;
                    continue;
                }
            };
            group_rows += ready.rows.len();
            group.push(ready);
            if group_rows >= self.settings.batch || group.len() >= MAX_DOCS_PER_TRANSACTION {
                let (docs, rows) = self.commit(db, std::mem::take(&mut group)).await?;
                pass.documents += docs;
                pass.rows += rows;
                group_rows = 0;
                self.note_pending(&pending);
            }
        }
        if !group.is_empty() {
            let (docs, rows) = self.commit(db, group).await?;
            pass.documents += docs;
            pass.rows += rows;
        }
        self.note_pending(&pending);
        pass.left = pending.len() - pass.documents - failed_reads;
        if pass.documents > 0 {
            tracing::debug!(
                documents = pass.documents,
                rows = pass.rows,
                left = pass.left,
                took_ms = started.elapsed().as_millis() as u64,
                reading_ms = reading.as_millis() as u64,
                "export pass"
            );
        }
        if failed_reads == 0 {
            let state = if pending.len() == pass.documents {
                "up to date"
            } else {
                "exporting"
            };
            self.status.update(|s| s.state = state.into());
        }
        Ok(pass)
    }

    /// Reads one document at its current heads and maps it to rows. A results window is
    /// read from its checkpoint's heads on: only the records changed since (the rest are in
    /// the database with that checkpoint), so a pass costs what is new, not the window.
    async fn read(&self, id: DocumentId, name: DocName) -> Result<Ready, ExportError> {
        let read_name = name.clone();
        let label = name.to_string();
        let since = self
            .checkpoints
            .get(&label)
            .map(|c| c.heads.clone())
            .unwrap_or_default();
        let (heads, doc) = self
            .store
            .call(move |s| {
                let doc = match read_name.kind() {
                    DocKind::Mesh => Read::Mesh(s.read(&read_name)?),
                    DocKind::Results => {
                        let since = s.results_since(&read_name, &since)?;
                        return Ok((since.heads.clone(), Read::Results(since)));
                    }
                    DocKind::Rollup => Read::Rollup(s.read(&read_name)?),
                    DocKind::Alerts => Read::Alerts(s.read(&read_name)?),
                    DocKind::Workflow => unreachable!("workflows are not exported"),
                };
                let heads = s.heads(&id)?.unwrap_or_default();
                Ok((heads, doc))
            })
            .recv()
            .await
            .map_err(|e| ExportError::Store(format!("{name}: {e}")))?;
        let facts = self.facts.clone();
        let known = self.known.get(&label).cloned();
        let exporter = self.me.clone();
        // Decoding outputs and hashing rows is CPU work: off the async workers.
        tokio::task::spawn_blocking(move || {
            let mut count = None;
            let mut partial = false;
            let all = match &doc {
                Read::Mesh(registry) => Rows {
                    nodes: rows::from_registry(registry, &facts(registry)),
                    ..Rows::default()
                },
                Read::Results(since) => {
                    count = Some(since.total);
                    partial = !since.whole;
                    Rows {
                        runs: rows::from_runs(&since.runs),
                        ..Rows::default()
                    }
                }
                Read::Rollup(rollup) => Rows {
                    rollups: rows::from_rollup(&name, rollup),
                    ..Rows::default()
                },
                Read::Alerts(alerts) => Rows {
                    alerts: rows::from_alerts(alerts),
                    ..Rows::default()
                },
            };
            let mut hashes = all.hashes();
            if partial {
                // The rows not read this time are still the document's.
                hashes.extend(known.iter().flatten().copied());
            }
            let count = count.unwrap_or_else(|| all.len());
            let rows = all.not_in(known.as_ref());
            Ready {
                checkpoint: Checkpoint {
                    exporter,
                    document: label.clone(),
                    heads_digest: hex::encode(crdt_store::heads_digest(&heads)),
                    heads: Exported::format_heads(&heads),
                    rows: i64::try_from(count).unwrap_or(i64::MAX),
                },
                heads,
                name: label,
                hashes,
                rows,
            }
        })
        .await
        .map_err(|e| ExportError::Store(format!("mapping rows failed: {e}")))
    }

    /// Writes a group of documents in one transaction; returns (documents, rows).
    async fn commit(
        &mut self,
        db: &mut Db,
        mut group: Vec<Ready>,
    ) -> Result<(usize, usize), ExportError> {
        let mut rows = Rows::default();
        let mut checkpoints = Vec::with_capacity(group.len());
        for ready in &mut group {
            rows.extend(std::mem::take(&mut ready.rows));
            checkpoints.push(ready.checkpoint.clone());
        }
        rows.dedup();
        let written = rows.len();
        db.write(&rows, &checkpoints).await?;
        let docs = group.len();
        for ready in group {
            self.checkpoints.insert(
                ready.name.clone(),
                Exported {
                    digest: ready.checkpoint.heads_digest.clone(),
                    heads: ready.heads,
                },
            );
            self.first_seen.remove(&ready.name);
            self.known.insert(ready.name, ready.hashes);
        }
        let now = crate::node::now_ms();
        self.status.update(|s| {
            s.rows_exported += written as u64;
            s.transactions += 1;
            s.last_success_ms = Some(now);
            s.connected = true;
        });
        Ok((docs, written))
    }
}

/// Whether documents of this kind are exported (workflow definitions are not).
fn exportable(name: &DocName) -> bool {
    !matches!(name.kind(), DocKind::Workflow)
}

/// Export order: the inventory first, then summaries, alerts, raw results.
fn rank(name: &DocName) -> u8 {
    match name.kind() {
        DocKind::Mesh => 0,
        DocKind::Rollup => 1,
        DocKind::Alerts => 2,
        DocKind::Results => 3,
        DocKind::Workflow => 4,
    }
}

/// Starts the export of a running node, when configured: its handle (for the API) and task.
pub fn spawn(
    node: &crate::node::Node,
    node_id: &str,
    role: mesh::proto::wire::Role,
    store: StoreHandle,
) -> Result<(ExportHandle, Option<tokio::task::JoinHandle<()>>)> {
    let settings = node.config.export.settings()?;
    let handle = ExportHandle::new(settings.as_ref(), node_id);
    let Some(settings) = settings else {
        return Ok((handle, None));
    };
    let (me, role, mesh_id, trust) = (
        node_id.to_owned(),
        role.to_string(),
        node.mesh_id.clone(),
        node.trust.clone(),
    );
    let facts: FactsSource = Arc::new(move |registry: &MeshRegistry| Facts {
        me: Some((me.clone(), role.clone())),
        revoked: crate::security::revocations::verdicts(registry, &mesh_id, &trust.all()).revoked,
    });
    tracing::info!(
        target = %settings.target().place,
        schema = %settings.schema,
        "exporting to PostgreSQL"
    );
    let exporter = Exporter::new(settings, node_id.to_owned(), store, handle.clone(), facts);
    Ok((handle, Some(tokio::spawn(exporter.run()))))
}

/// The export's figures in `/metrics`, when it is configured (its errors are counted as they
/// happen, under `rhizome_export_errors_total{reason}`).
pub fn expose(status: &ExportStatus, out: &mut crate::ops::metrics::Exposition) {
    if !status.configured {
        return;
    }
    out.gauge(
        "rhizome_export_pending_documents",
        "Documents whose heads differ from their export checkpoint.",
        &[],
        status.documents_pending as f64,
    );
    out.counter(
        "rhizome_export_rows_total",
        "Rows written into PostgreSQL since the node started.",
        &[],
        status.rows_exported as f64,
    );
    out.gauge(
        "rhizome_export_lag_seconds",
        "Seconds since the oldest pending document was first seen pending (0 when none is).",
        &[],
        status.lag_seconds,
    );
    out.gauge(
        "rhizome_export_connected",
        "1 while the export holds a connection to PostgreSQL.",
        &[],
        if status.connected { 1.0 } else { 0.0 },
    );
    if let Some(ms) = status.last_success_ms {
        out.gauge(
            "rhizome_export_last_success_timestamp_seconds",
            "When an export transaction last committed, seconds since the epoch.",
            &[],
            ms as f64 / 1000.0,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ExportSection;

    fn section(postgres: &str) -> ExportSection {
        ExportSection {
            postgres: postgres.into(),
            ..ExportSection::default()
        }
    }

    #[test]
    fn settings_are_checked() {
        assert!(Settings::from_section(&section("")).unwrap().is_none());
        let s = Settings::from_section(&section("postgres://u:pw@127.0.0.1:5433/fleet"))
            .unwrap()
            .unwrap();
        assert_eq!((s.batch, s.interval), (1000, Duration::from_secs(2)));
        assert_eq!(s.target().place, "127.0.0.1:5433/fleet");
        let err = format!(
            "{:#}",
            Settings::from_section(&section("postgres://u:secret@host:notaport/db")).unwrap_err()
        );
        assert!(err.contains("export.postgres"), "{err}");
        assert!(!err.contains("secret"), "{err}");
        let err = format!(
            "{:#}",
            Settings::from_section(&section("dbname=fleet")).unwrap_err()
        );
        assert!(err.contains("no host"), "{err}");
        let bad = ExportSection {
            schema: "Fleet".into(),
            ..section("host=/tmp")
        };
        assert!(
            format!("{:#}", Settings::from_section(&bad).unwrap_err()).contains("export.schema")
        );
        let bad = ExportSection {
            batch: 0,
            ..section("host=/tmp")
        };
        assert!(Settings::from_section(&bad).is_err());
    }

    #[test]
    fn the_status_of_a_node_without_export_says_off() {
        let status = ExportHandle::new(None, "n").status();
        assert!(!status.configured);
        assert_eq!(status.state, "off");
        assert_eq!(status.schema_version, schema::VERSION);
    }
}
