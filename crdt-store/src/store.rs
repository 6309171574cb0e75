//! The store: one redb file holding every document's Automerge chunks, the durable result log,
//! per-peer sync state and the name registry. Owned by one thread (see [`crate::StoreHandle`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use automerge::{ActorId, AutoCommit, ObjType, ReadDoc, transaction::CommitOptions};
use redb::{
    Database, DatabaseError, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    StorageError, TableDefinition, WriteTransaction,
};
use samod_core::io::{StorageResult, StorageTask};
use samod_core::{CompactionHash, DocumentId, StorageKey};

use crate::docs::{self, ResultsDoc, RunRecord, TypedDoc};
use crate::error::{EngineContext, Result, StoreError, WriteFault};
use crate::fault::SharedBackend;
use crate::headroom::{Headroom, MinFree};
use crate::names::{DocKind, DocName, Window};
use mesh::proto::wire::CatalogueEntry;

mod authorship;
mod incremental;
mod keys;
mod rollup;
mod sync;
pub use incremental::ResultsSince;
pub use keys::{KeyStatus, Reseal};
pub use rollup::{FleetView, WorkflowView, ZoneView, summarize};
pub use sync::{
    CatalogueItem, RETIRED_DIGEST, SESSION_PEER_PREFIX, Sender, SyncApplied, SyncApply,
    SyncRejected, Vouch,
};

/// Automerge chunks and every other samod key, by the key's parts joined with `/`
/// (automerge-repo's layout: `<doc>/snapshot/<hash>`, `<doc>/incremental/<hash>`,
/// `<doc>/sync-state/<peer>`, `storage-adapter-id`).
const CHUNKS: TableDefinition<&str, &[u8]> = TableDefinition::new("chunks-1");
/// Document id → logical name, for the documents whose name this node knows.
const NAMES: TableDefinition<&str, &str> = TableDefinition::new("names-1");
/// Acknowledged result records not yet folded into results documents, by sequence number.
const RESULT_LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("result-log-1");
/// Counters and the format version.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta-1");
/// Document id → its current heads (32-byte change hashes, concatenated), so the catalogue of
/// what this node holds is read without decoding any document.
const HEADS: TableDefinition<&str, &[u8]> = TableDefinition::new("heads-1");
/// Document id → name of a document retired by retention: a tombstone, so that sync does not
/// fetch it back from a peer that still holds it.
const RETIRED: TableDefinition<&str, &str> = TableDefinition::new("retired-1");
/// Data keys, each wrapped by a store key: `<store key fingerprint>/<data key id>` → wrapped.
/// Empty in a store that is not encrypted.
const KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("keys-1");
/// The data key that seals new values.
const META_DATA_KEY: &str = "data-key";

/// Heads a document may have before [`Store::merge_heads`] folds them into one.
pub const MAX_HEADS: usize = 8;

/// How often a driver offers the registry to [`Store::merge_heads`], at a random phase per
/// node: rarely enough that merges seldom cross (a LAN delivers one in milliseconds), often
/// enough that a fleet's start-up leaves many heads for a few seconds only.
pub const MERGE_HEADS_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

const META_FORMAT: &str = "format";
const META_NEXT_SEQ: &str = "result-next-seq";
const META_APPLIED_SEQ: &str = "result-applied-seq";
/// Set once the heads index covers every document (stores made before it existed build it on
/// open).
const META_HEADS_INDEXED: &str = "heads-indexed";

/// Told of every document a write changed: its id, name and new heads digest.
type ChangeListener = Box<dyn FnMut(CatalogueEntry) + Send>;
type ReopenListener = Box<dyn FnMut(Vec<CatalogueEntry>) + Send>;

/// A digest of a document's heads: equal digests mean equal heads.
pub type HeadsDigest = [u8; 16];

/// The digest of a set of heads (order does not matter).
pub fn heads_digest(heads: &[automerge::ChangeHash]) -> HeadsDigest {
    use sha2::Digest as _;
    let mut sorted: Vec<&automerge::ChangeHash> = heads.iter().collect();
    sorted.sort();
    let mut hash = sha2::Sha256::new();
    for head in sorted {
        hash.update(head.0);
    }
    hash.finalize()[..16].try_into().expect("16 bytes")
}

/// The on-disk format this build reads and writes.
pub const FORMAT_VERSION: u64 = 1;

/// Documents kept decoded in memory; beyond this the least recently used is dropped.
pub const DOC_CACHE_CAP: usize = 64;

/// What timestamp new Automerge changes carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeTime {
    /// The wall clock, in milliseconds since the epoch: a receiver tells from it how long a
    /// change took to reach it (the writer's clock; skew shows).
    Wall,
    /// Always zero, so that a simulation produces identical bytes on every run.
    Zero,
}

/// Retirement rules for windowed documents (`results/...`, `rollup/...`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Windows that ended longer ago than this are retired.
    pub max_age_ms: Option<i64>,
    /// When windowed documents take more than this many bytes, the oldest are retired.
    pub max_bytes: Option<u64>,
}

/// How a store is set up.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The mesh this store belongs to; part of every document id.
    pub mesh_id: String,
    /// This node's id: the owner of its results documents.
    pub node_id: String,
    /// Automerge actor id for this node's changes.
    pub actor: ActorId,
    /// Length of a results window in minutes.
    pub results_window_minutes: u32,
    /// Incremental chunks a document may accumulate before it is compacted into a snapshot
    /// (see `docs/design.md` for the full trigger); `usize::MAX` turns automatic compaction off.
    pub compact_after_chunks: usize,
    /// Retirement of old windows.
    pub retention: RetentionPolicy,
    /// Timestamps of new changes.
    pub change_time: ChangeTime,
    /// Free space the store keeps on its filesystem: writes below it are refused.
    pub min_free: MinFree,
    /// Who may write what, beyond what the store checks itself (see [`WriteRules`]); `None`
    /// takes every workflow version a peer sends (the simulator, tests of other things).
    pub write_rules: Option<std::sync::Arc<dyn WriteRules>>,
    /// The store key: with it, documents, the result log and sync states are sealed on disk
    /// ([`crate::seal`]); a store encrypted once refuses to open without it.
    pub encryption: Option<crate::seal::Key>,
}

/// What a receiving node checks of a peer's sync message before storing it, where the check
/// needs more than documents: certificates and signatures, which the node holds. The store
/// checks authorship by actor itself (a change is attributed to the node whose id is its
/// actor): results documents are written by their owner only, and each registry entry by its
/// node only.
pub trait WriteRules: Send + Sync + std::fmt::Debug {
    /// Whether a workflow version new to this store may stand, given the mesh registry as
    /// this store holds it (where the mesh's signed settings are): in a node, it must be signed
    /// by a node allowed to write workflows. The error says why not.
    fn check_workflow_version(
        &self,
        version: &crate::docs::WorkflowDoc,
        registry: &crate::docs::MeshRegistry,
    ) -> Result<(), String>;
}

impl StoreConfig {
    /// A configuration with the defaults: one-hour windows, compaction after 64 chunks, no
    /// retention limits.
    pub fn new(mesh_id: &str, node_id: &str) -> StoreConfig {
        StoreConfig {
            mesh_id: mesh_id.to_owned(),
            node_id: node_id.to_owned(),
            actor: ActorId::from(node_id.as_bytes()),
            results_window_minutes: 60,
            compact_after_chunks: 64,
            retention: RetentionPolicy::default(),
            change_time: ChangeTime::Wall,
            min_free: MinFree::Default,
            write_rules: None,
            encryption: None,
        }
    }
}

/// One stored document, as listed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DocInfo {
    /// automerge-repo document id.
    pub id: String,
    /// Logical name, when this node knows it.
    pub name: Option<String>,
    /// Kind, when the name is known.
    pub kind: Option<String>,
    /// Stored chunks (snapshots and incremental changes).
    pub chunks: usize,
    /// Bytes of those chunks.
    pub bytes: u64,
}

/// The outcome of compacting one document.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Compaction {
    /// The document compacted.
    pub doc: String,
    /// Chunks before.
    pub chunks_before: usize,
    /// Bytes before.
    pub bytes_before: u64,
    /// Bytes after (one snapshot).
    pub bytes_after: u64,
}

/// Why a window was retired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RetireReason {
    /// The window ended longer ago than the maximum age.
    Age,
    /// Windowed documents took more than the size cap.
    Size,
    /// Free space fell under the watermark, and the aggregator chain already holds the window.
    HeldUpstream,
}

/// One retired window.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Retired {
    /// The document's name.
    pub doc: String,
    /// Its size when retired.
    pub bytes: u64,
    /// Why.
    pub reason: RetireReason,
}

/// Which stored results to list.
#[derive(Debug, Clone, Default)]
pub struct ResultsQuery {
    /// Only this workflow.
    pub workflow: Option<String>,
    /// Only this node.
    pub node: Option<String>,
    /// Only runs that finished at or after this time (ms since the epoch).
    pub since_ms: Option<i64>,
}

/// Store-wide counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct StoreStats {
    /// Stored documents.
    pub documents: usize,
    /// Bytes of all chunks.
    pub chunk_bytes: u64,
    /// Acknowledged results not yet folded into documents.
    pub pending_results: u64,
    /// Size of the store file.
    pub file_bytes: u64,
}

struct CachedDoc {
    doc: AutoCommit,
    chunks: ChunkStats,
    last_used: u64,
}

/// What a document's stored chunks look like, to decide when to compact.
#[derive(Debug, Clone, Copy, Default)]
struct ChunkStats {
    incremental_chunks: usize,
    incremental_bytes: u64,
    snapshot_bytes: u64,
}

/// Incremental bytes that trigger a compaction even when there are few chunks.
const COMPACT_MIN_BYTES: u64 = 1 << 20;

impl ChunkStats {
    /// Compaction re-saves the whole document, so it must wait until enough new bytes have
    /// accumulated to pay for it (half the snapshot): a trickle of one-record changes into a
    /// large window would otherwise re-save the window every few records. Many chunks alone
    /// also trigger it, with a hard cap so loading never has to read too many pieces.
    fn wants_compaction(&self, compact_after_chunks: usize) -> bool {
        if compact_after_chunks == usize::MAX {
            return false;
        }
        let paid_for = self.incremental_bytes.saturating_mul(2) >= self.snapshot_bytes;
        (self.incremental_chunks > compact_after_chunks && paid_for)
            || self.incremental_chunks > compact_after_chunks.saturating_mul(64)
            || (self.incremental_bytes >= COMPACT_MIN_BYTES && paid_for)
    }
}

/// The document store. Not `Sync`: one thread owns it; share it through a
/// [`StoreHandle`](crate::StoreHandle).
pub struct Store {
    db: Database,
    /// Where the bytes live, to open the database again after a failed commit.
    medium: Medium,
    path: Option<PathBuf>,
    /// Set by a failed commit: until [`Store::reopen`] succeeds, the database is not trusted.
    broken: Option<Broken>,
    config: StoreConfig,
    cache: HashMap<DocumentId, CachedDoc>,
    tick: u64,
    /// Logged results that could not be folded into their document (a corrupt results
    /// document); they stay in the log and are skipped until the store is reopened.
    stuck: std::collections::BTreeSet<u64>,
    /// Told of every document a write changed, after the write committed.
    change_listener: Option<ChangeListener>,
    /// Told of every document held after a reopen ([`Store::set_reopen_listener`]).
    reopen_listener: Option<ReopenListener>,
    /// Automerge sync state per (document, peer) for the sessions of current connections.
    sync_states: HashMap<(DocumentId, String), automerge::sync::State>,
    /// Per (document, peer), the heads of the peer's last message whose changes were refused:
    /// left out of what the peer is taken to hold, so that the session neither asks for them
    /// again nor keeps answering a peer whose heads can never equal ours.
    refused_heads: HashMap<(DocumentId, String), Vec<automerge::ChangeHash>>,
    /// Seals what goes to disk, in an encrypted store.
    sealer: Option<crate::seal::Sealer>,
    /// Where the running re-seal pass has got to ([`Store::reseal_step`]).
    reseal_cursor: Option<keys::ResealCursor>,
    /// What the store counts about itself ([`Store::metrics`]).
    metrics: crate::metrics::StoreMetrics,
    /// Since when a commit that was not fsynced waits for a durable one (sync applies).
    unflushed_since: Option<std::time::Instant>,
    /// The zone of every node in the registry as of some registry heads.
    zones: Option<ZoneCache>,
    /// The registry as last read by [`Store::registry`], and at which heads: a sync batch of
    /// workflow documents checks every one against the same registry, and followers poll it,
    /// where each read would hydrate all its entries.
    registry_at: Option<(
        Vec<automerge::ChangeHash>,
        std::sync::Arc<crate::docs::MeshRegistry>,
    )>,
}

/// Where a store's bytes live.
enum Medium {
    /// A file, opened again by path.
    File(PathBuf),
    /// A backend kept across reopens (memory, or a fault-injecting wrapper in tests).
    Shared(std::sync::Arc<dyn redb::StorageBackend>),
}

/// What broke the store, and since when.
#[derive(Debug, Clone)]
pub struct Broken {
    /// The error of the failed operation.
    pub cause: String,
    /// Whether the filesystem was full or failing.
    pub fault: WriteFault,
    /// When it failed.
    pub since: std::time::Instant,
    /// Reopen attempts since.
    pub attempts: u32,
    /// When the next reopen is due.
    pub retry_at: std::time::Instant,
}

/// First wait after a failed reopen; doubled per failed attempt up to [`REOPEN_BACKOFF_MAX`],
/// so that writes resume within about a second of the disk recovering, without spinning
/// while it has not.
pub const REOPEN_BACKOFF_MIN: std::time::Duration = std::time::Duration::from_millis(50);

/// Longest wait between attempts to reopen a broken store.
pub const REOPEN_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(1);

/// Free space a store broken by a full filesystem waits for before it reopens. Reopening needs
/// almost no space (the last durable commit is already on disk), so without this a store on a
/// full disk would reopen at once, take in the next sync message in memory, fail to make it
/// durable, and go round again many times a second for as long as the disk stays full.
pub const REOPEN_MIN_FREE: u64 = 1 << 20;

/// The zones [`Store::node_zones`] read, kept across registry changes that cannot move them.
struct ZoneCache {
    /// The registry heads `zones` and `unread` describe.
    at: Vec<automerge::ChangeHash>,
    zones: BTreeMap<String, String>,
    /// Entries created since `zones` was read: their zones are read when next asked for,
    /// once for all of them (a fleet's start brings them one sync message at a time).
    unread: BTreeSet<String>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .field("node", &self.config.node_id)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (or creates) the store file at `path`, then folds any acknowledged results that a
    /// crash left in the log into their documents.
    pub fn open(path: &Path, config: StoreConfig) -> Result<Store> {
        if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
                path: dir.to_owned(),
                source,
            })?;
        }
        let db = Database::create(path).map_err(|e| open_error(path, e))?;
        Store::init(
            db,
            Medium::File(path.to_owned()),
            Some(path.to_owned()),
            config,
        )
    }

    /// A store that lives in memory only (for simulation and tests).
    pub fn open_in_memory(config: StoreConfig) -> Result<Store> {
        Store::open_on_backend(
            std::sync::Arc::new(redb::backends::InMemoryBackend::new()),
            None,
            config,
        )
    }

    /// A store over any redb backend, kept across reopens: how tests put a
    /// [`FaultyBackend`](crate::fault::FaultyBackend) under a store. `path` is what the store
    /// reports as its file and where it measures free space, if it has one.
    pub fn open_on_backend(
        backend: std::sync::Arc<dyn redb::StorageBackend>,
        path: Option<&Path>,
        config: StoreConfig,
    ) -> Result<Store> {
        let shown = path.unwrap_or(Path::new(":memory:"));
        let db = redb::Builder::new()
            .create_with_backend(SharedBackend(backend.clone()))
            .map_err(|e| open_error(shown, e))?;
        Store::init(
            db,
            Medium::Shared(backend),
            path.map(Path::to_owned),
            config,
        )
    }

    fn init(
        db: Database,
        medium: Medium,
        path: Option<PathBuf>,
        config: StoreConfig,
    ) -> Result<Store> {
        Store::prepare(&db, path.as_deref())?;
        let sealer = Store::load_sealer(&db, path.as_deref(), config.encryption.as_ref())?;
        let mut store = Store {
            db,
            medium,
            path,
            broken: None,
            config,
            cache: HashMap::new(),
            tick: 0,
            stuck: std::collections::BTreeSet::new(),
            change_listener: None,
            reopen_listener: None,
            sync_states: HashMap::new(),
            refused_heads: HashMap::new(),
            sealer,
            reseal_cursor: None,
            metrics: crate::metrics::StoreMetrics::default(),
            unflushed_since: None,
            zones: None,
            registry_at: None,
        };
        store.index_all_heads()?;
        let recovered = store.apply_pending(usize::MAX)?;
        if recovered > 0 {
            tracing::info!(
                recovered,
                "folded acknowledged results left in the log into their documents"
            );
            store.flush()?;
        }
        Ok(store)
    }

    /// Creates the tables a new file lacks and checks the format version of an old one.
    fn prepare(db: &Database, path: Option<&Path>) -> Result<()> {
        // A store that has every table gets no commit from opening it: an open refused
        // afterwards (a wrong key) has changed nothing in it.
        if Store::prepared(db)? {
            return Ok(());
        }
        let txn = db.begin_write().during("open")?;
        {
            txn.open_table(CHUNKS).during("open")?;
            txn.open_table(NAMES).during("open")?;
            txn.open_table(RESULT_LOG).during("open")?;
            txn.open_table(HEADS).during("open")?;
            txn.open_table(RETIRED).during("open")?;
            txn.open_table(KEYS).during("open")?;
            let mut meta = txn.open_table(META).during("open")?;
            let found = meta.get(META_FORMAT).during("open")?.map(|v| v.value());
            match found {
                None => {
                    meta.insert(META_FORMAT, FORMAT_VERSION).during("open")?;
                }
                Some(v) if v == FORMAT_VERSION => {}
                Some(found) => {
                    return Err(StoreError::FormatVersion {
                        path: path.map(Path::to_owned).unwrap_or_default(),
                        found,
                        expected: FORMAT_VERSION,
                    });
                }
            }
        }
        txn.commit().during("open")
    }

    /// Whether every table exists and the format is this version's.
    fn prepared(db: &Database) -> Result<bool> {
        let txn = db.begin_read().during("open")?;
        let exists = |result: std::result::Result<(), redb::TableError>| match result {
            Ok(()) => Ok(true),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(false),
            Err(e) => Err(e),
        };
        let all = exists(txn.open_table(CHUNKS).map(drop)).during("open")?
            && exists(txn.open_table(NAMES).map(drop)).during("open")?
            && exists(txn.open_table(RESULT_LOG).map(drop)).during("open")?
            && exists(txn.open_table(HEADS).map(drop)).during("open")?
            && exists(txn.open_table(RETIRED).map(drop)).during("open")?
            && exists(txn.open_table(KEYS).map(drop)).during("open")?;
        if !all {
            return Ok(false);
        }
        let meta = match txn.open_table(META) {
            Ok(meta) => meta,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(false),
            Err(e) => return Err(e).during("open"),
        };
        let format = meta.get(META_FORMAT).during("open")?.map(|v| v.value());
        Ok(format == Some(FORMAT_VERSION))
    }

    // -----------------------------------------------------------------------------------------
    // failure and recovery

    /// Records that a storage operation failed under the store, if `error` says it did: the
    /// database then answers nothing but errors until it is reopened ([`Store::reopen`]).
    pub fn note_failure(&mut self, error: &StoreError) {
        if !error.is_storage_failure() || self.broken.is_some() {
            return;
        }
        let fault = error.write_fault().unwrap_or(WriteFault::Io);
        self.metrics.failures += 1;
        tracing::error!(error = %error, ?fault, "a store commit failed; reopening the store");
        let now = std::time::Instant::now();
        self.broken = Some(Broken {
            cause: error.to_string(),
            fault,
            since: now,
            attempts: 0,
            retry_at: now,
        });
    }

    /// Why the store is not serving, while it is not.
    pub fn broken(&self) -> Option<&Broken> {
        self.broken.as_ref()
    }

    /// The refusal a request gets while the store is broken.
    pub fn refusal(&self) -> Option<StoreError> {
        self.broken.as_ref().map(|b| StoreError::Recovering {
            cause: b.cause.clone(),
            fault: b.fault,
        })
    }

    /// Drops the database and opens it again over the same bytes, as after a restart: redb
    /// rolls back to the last durable commit, and everything this process held beyond it
    /// (cached documents, sync sessions, the heads index) is read again from disk. Peers send
    /// again whatever that rolled back, because the sync sessions restart from stored state.
    ///
    /// A failed reopen leaves the store broken (whatever it was before): the old database is
    /// closed by then.
    pub fn reopen(&mut self) -> Result<()> {
        let outcome = self.open_again();
        if let Err(e) = &outcome
            && self.broken.is_none()
        {
            let now = std::time::Instant::now();
            self.broken = Some(Broken {
                cause: e.to_string(),
                fault: e.write_fault().unwrap_or(WriteFault::Io),
                since: now,
                attempts: 0,
                retry_at: now,
            });
        }
        if let (Err(e), Some(broken)) = (&outcome, self.broken.as_mut()) {
            broken.attempts += 1;
            let backoff = REOPEN_BACKOFF_MIN
                .saturating_mul(1 << broken.attempts.min(16))
                .min(REOPEN_BACKOFF_MAX);
            broken.retry_at = std::time::Instant::now() + backoff;
            tracing::warn!(error = %e, attempts = broken.attempts, "reopening the store failed");
        }
        outcome
    }

    fn open_again(&mut self) -> Result<()> {
        if self
            .broken
            .as_ref()
            .is_some_and(|b| b.fault == WriteFault::NoSpace)
            && let Some(Ok(room)) = self.headroom()
            && room.free_bytes < REOPEN_MIN_FREE
        {
            return Err(StoreError::NoHeadroom {
                refused: "reopen the store after its filesystem filled up".into(),
                dir: room.dir,
                free: room.free_bytes,
                total: room.total_bytes,
                min_free: REOPEN_MIN_FREE,
            });
        }
        let shown = self
            .path
            .clone()
            .unwrap_or_else(|| PathBuf::from(":memory:"));
        // The old database must be closed before the file can be opened again (redb locks it).
        let placeholder = redb::Builder::new()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|e| open_error(&shown, e))?;
        drop(std::mem::replace(&mut self.db, placeholder));
        let db = match &self.medium {
            Medium::File(path) => Database::create(path).map_err(|e| open_error(path, e))?,
            Medium::Shared(backend) => redb::Builder::new()
                .create_with_backend(SharedBackend(backend.clone()))
                .map_err(|e| open_error(&shown, e))?,
        };
        Store::prepare(&db, self.path.as_deref())?;
        self.sealer =
            Store::load_sealer(&db, self.path.as_deref(), self.config.encryption.as_ref())?;
        self.db = db;
        self.cache.clear();
        self.sync_states.clear();
        self.reseal_cursor = None;
        self.zones = None;
        self.stuck.clear();
        self.unflushed_since = None;
        self.index_all_heads()?;
        self.apply_pending(usize::MAX)?;
        self.flush()?;
        if let Some(broken) = self.broken.take() {
            self.metrics.reopens += 1;
            tracing::info!(
                attempts = broken.attempts,
                after_ms = broken.since.elapsed().as_millis() as u64,
                "the store was reopened and serves again"
            );
        }
        if self.reopen_listener.is_some() {
            let held = mesh::proto::sync::Replica::catalogue(self)?;
            if let Some(listener) = self.reopen_listener.as_mut() {
                listener(held);
            }
        }
        Ok(())
    }

    /// Free space on the store's filesystem against `store.min_free`; `None` for a store
    /// without a file.
    pub fn headroom(&self) -> Option<std::io::Result<Headroom>> {
        let dir = self.path.as_deref()?.parent()?;
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        Some(crate::headroom::headroom(dir, self.config.min_free))
    }

    /// Changes the free-space watermark (configuration reloaded, or a test).
    pub fn set_min_free(&mut self, min_free: MinFree) {
        self.config.min_free = min_free;
    }

    /// Refuses `refused` when free space is under the watermark. A filesystem that cannot be
    /// measured does not block writes: the commit itself then tells.
    pub fn require_headroom(&mut self, refused: impl std::fmt::Display) -> Result<()> {
        let answer = self.check_headroom(refused);
        if answer.is_err() {
            *self.metrics.refused.entry("low_space").or_default() += 1;
        }
        answer
    }

    fn check_headroom(&self, refused: impl std::fmt::Display) -> Result<()> {
        if self.config.min_free == MinFree::Off {
            return Ok(());
        }
        match self.headroom() {
            Some(Ok(room)) if room.is_low() => Err(StoreError::NoHeadroom {
                refused: refused.to_string(),
                dir: room.dir,
                free: room.free_bytes,
                total: room.total_bytes,
                min_free: room.min_free_bytes,
            }),
            _ => Ok(()),
        }
    }

    /// The configuration the store was opened with.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// The store file, or `None` for an in-memory store.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Makes every earlier non-durable commit durable.
    pub fn flush(&mut self) -> Result<()> {
        let started = std::time::Instant::now();
        let txn = self.db.begin_write().during("flush")?;
        txn.commit().during("flush")?;
        self.metrics
            .durable_commit_seconds
            .observe_duration(started.elapsed());
        self.unflushed_since = None;
        Ok(())
    }

    /// Counts a write refused for `reason` outside the store's own checks (by its handle).
    pub fn note_refusal(&mut self, reason: &'static str) {
        *self.metrics.refused.entry(reason).or_default() += 1;
    }

    /// What the store counted since it was opened.
    pub fn metrics(&self) -> crate::metrics::StoreMetrics {
        self.metrics.clone()
    }

    /// Since when a commit waits for [`Store::flush`] to become durable, if one does.
    pub fn unflushed_since(&self) -> Option<std::time::Instant> {
        self.unflushed_since
    }

    // -----------------------------------------------------------------------------------------
    // samod storage: a key/value store with prefix ranges, in automerge-repo's key layout.

    /// Loads one key.
    pub fn load(&self, key: &StorageKey) -> Result<Option<Vec<u8>>> {
        let txn = self.db.begin_read().during("load")?;
        let table = txn.open_table(CHUNKS).during("load")?;
        let name = key.to_string();
        let value = table.get(name.as_str()).during("load")?;
        value
            .map(|v| Ok(self.unseal(&name, v.value())?.into_owned()))
            .transpose()
    }

    /// Loads every key that starts with `prefix` (component-wise).
    pub fn load_range(&self, prefix: &StorageKey) -> Result<HashMap<StorageKey, Vec<u8>>> {
        let prefix = prefix.to_string();
        let mut out = HashMap::new();
        let txn = self.db.begin_read().during("load range")?;
        let table = txn.open_table(CHUNKS).during("load range")?;
        for item in table.range(prefix.as_str()..).during("load range")? {
            let (k, v) = item.during("load range")?;
            let k = k.value();
            if !is_component_prefix(&prefix, k) {
                if k.starts_with(prefix.as_str()) {
                    continue;
                }
                break;
            }
            if let Ok(key) = StorageKey::from_parts(k.split('/')) {
                out.insert(key, self.unseal(k, v.value())?.into_owned());
            }
        }
        Ok(out)
    }

    /// Runs a batch of samod storage tasks in one durable transaction, answering each.
    pub fn execute(&mut self, tasks: Vec<StorageTask>) -> Result<Vec<StorageResult>> {
        let mut results = Vec::with_capacity(tasks.len());
        let mut writes = Vec::new();
        for (i, task) in tasks.iter().enumerate() {
            match task {
                StorageTask::Load { key } => results.push(StorageResult::Load {
                    value: self.load(key)?,
                }),
                StorageTask::LoadRange { prefix } => results.push(StorageResult::LoadRange {
                    values: self.load_range(prefix)?,
                }),
                StorageTask::Put { .. } => {
                    writes.push(i);
                    results.push(StorageResult::Put);
                }
                StorageTask::Delete { .. } => {
                    writes.push(i);
                    results.push(StorageResult::Delete);
                }
            }
        }
        if !writes.is_empty() {
            let txn = self.db.begin_write().during("storage write")?;
            {
                let mut table = txn.open_table(CHUNKS).during("storage write")?;
                for i in writes {
                    match &tasks[i] {
                        StorageTask::Put { key, value } => {
                            self.forget_doc_of(key);
                            let name = key.to_string();
                            table
                                .insert(name.as_str(), self.seal(&name, value).as_ref())
                                .during("storage write")?;
                        }
                        StorageTask::Delete { key } => {
                            self.forget_doc_of(key);
                            table
                                .remove(key.to_string().as_str())
                                .during("storage write")?;
                        }
                        _ => {}
                    }
                }
            }
            txn.commit().during("storage write")?;
            self.reindex_after_raw_writes(&tasks)?;
        }
        Ok(results)
    }

    /// Persists the Automerge sync state of a document with one peer, so that a reconnect sends
    /// only what is missing.
    pub fn save_sync_state(&mut self, doc: &DocumentId, peer: &str, state: &[u8]) -> Result<()> {
        let key = sync_state_key(doc, peer)?;
        self.execute(vec![StorageTask::Put {
            key,
            value: state.to_vec(),
        }])?;
        Ok(())
    }

    /// The persisted sync state of a document with one peer.
    pub fn load_sync_state(&self, doc: &DocumentId, peer: &str) -> Result<Option<Vec<u8>>> {
        if peer.starts_with(sync::SESSION_PEER_PREFIX) {
            return Ok(None);
        }
        self.load(&sync_state_key(doc, peer)?)
    }

    /// Raw chunk writes bypass the document cache: index the heads of the documents they
    /// touched from what is now stored.
    fn reindex_after_raw_writes(&mut self, tasks: &[StorageTask]) -> Result<()> {
        let mut touched = std::collections::BTreeSet::new();
        for task in tasks {
            if let StorageTask::Put { key, .. } | StorageTask::Delete { key } = task
                && let Some(first) = key.into_iter().next()
                && let Ok(id) = first.parse::<DocumentId>()
            {
                touched.insert(id);
            }
        }
        if touched.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write().during("index heads")?;
        for id in &touched {
            match self.decode(id, &id.to_string()) {
                Ok(Some((mut doc, _))) => Self::index_heads(&txn, id, &doc.get_heads())?,
                Ok(None) => {
                    let mut heads = txn.open_table(HEADS).during("index heads")?;
                    heads
                        .remove(id.to_string().as_str())
                        .during("index heads")?;
                }
                // Corrupt chunks are named when the document is read; the index skips it.
                Err(_) => {}
            }
        }
        txn.commit().during("index heads")
    }

    fn forget_doc_of(&mut self, key: &StorageKey) {
        if let Some(first) = key.into_iter().next()
            && let Ok(id) = first.parse::<DocumentId>()
        {
            self.cache.remove(&id);
        }
    }

    // -----------------------------------------------------------------------------------------
    // documents

    /// The document id of a name in this store's mesh.
    pub fn document_id(&self, name: &DocName) -> DocumentId {
        name.document_id(&self.config.mesh_id)
    }

    /// Finds a stored document by logical name (`workflow/w`) or by document id.
    pub fn resolve(&self, name_or_id: &str) -> Result<(DocumentId, Option<DocName>)> {
        let (id, name) = if name_or_id == "mesh" || name_or_id.contains('/') {
            let name: DocName = name_or_id.parse()?;
            (self.document_id(&name), Some(name))
        } else {
            let id: DocumentId = name_or_id
                .parse()
                .map_err(|_| StoreError::NoSuchDocument(name_or_id.to_owned()))?;
            let name = self.name_of(&id)?;
            (id, name)
        };
        if self.chunk_keys(&id)?.is_empty() {
            return Err(StoreError::NoSuchDocument(name_or_id.to_owned()));
        }
        Ok((id, name))
    }

    fn name_of(&self, id: &DocumentId) -> Result<Option<DocName>> {
        let txn = self.db.begin_read().during("read names")?;
        let table = txn.open_table(NAMES).during("read names")?;
        name_in(&table, id, "read names")
    }

    /// Calls `listener` with the catalogue entry (id, name, new heads digest) of every document a
    /// write changed — local edits, folded results and applied sync messages — once the write
    /// has committed, so that sync can announce it and the scheduler can notice workflows.
    pub fn set_change_listener(&mut self, listener: impl FnMut(CatalogueEntry) + Send + 'static) {
        self.change_listener = Some(Box::new(listener));
    }

    /// Calls `listener` with every document the store holds (id, name, heads digest) each time
    /// it has been reopened ([`Store::reopen`]). Changes reported before the reopen may be gone
    /// (a commit that never became durable is rolled back), so what the listener is told here
    /// replaces everything it was told before.
    pub fn set_reopen_listener(
        &mut self,
        listener: impl FnMut(Vec<CatalogueEntry>) + Send + 'static,
    ) {
        self.reopen_listener = Some(Box::new(listener));
    }

    /// Tells the listener about a document that changed. A batch that changed more documents
    /// than the cache holds has evicted some of them by now: their heads come from the index,
    /// which the same commit wrote.
    fn notify_changed(&mut self, id: &DocumentId) {
        if self.change_listener.is_none() {
            return;
        }
        let Ok(Some(heads)) = self.heads(id) else {
            return;
        };
        let digest = heads_digest(&heads);
        if let Ok(Some(name)) = self.name_of(id)
            && let Some(listener) = self.change_listener.as_mut()
        {
            listener(
                CatalogueItem {
                    id: id.clone(),
                    name,
                    digest,
                }
                .to_entry(),
            );
        }
    }

    /// The logical name recorded for a document id.
    pub fn name_of_id(&self, id: &DocumentId) -> Result<Option<DocName>> {
        self.name_of(id)
    }

    /// Every document id with a recorded name, in id order.
    pub fn names(&self) -> Result<Vec<(DocumentId, DocName)>> {
        let txn = self.db.begin_read().during("read names")?;
        let table = txn.open_table(NAMES).during("read names")?;
        let mut out = Vec::new();
        for item in table.iter().during("read names")? {
            let (id, name) = item.during("read names")?;
            if let (Ok(id), Ok(name)) = (
                id.value().parse::<DocumentId>(),
                name.value().parse::<DocName>(),
            ) {
                out.push((id, name));
            }
        }
        Ok(out)
    }

    /// Records the name of a document learnt from a peer. The name must derive to the id within
    /// this store's mesh, so a peer cannot mislabel a document.
    pub fn remember_name(&mut self, id: &DocumentId, name: &DocName) -> Result<()> {
        if self.document_id(name) != *id {
            return Err(StoreError::Shape {
                doc: name.to_string(),
                kind: "name",
                reason: format!("the name does not derive to document id {id}"),
            });
        }
        let txn = self.db.begin_write().during("record name")?;
        {
            let mut names = txn.open_table(NAMES).during("record name")?;
            names
                .insert(id.to_string().as_str(), name.to_string().as_str())
                .during("record name")?;
        }
        txn.commit().during("record name")
    }

    /// The heads of a stored document, or `None` if nothing is stored for it.
    pub fn heads(&mut self, id: &DocumentId) -> Result<Option<Vec<automerge::ChangeHash>>> {
        if let Some(cached) = self.cache.get_mut(id) {
            return Ok(Some(cached.doc.get_heads()));
        }
        let txn = self.db.begin_read().during("read heads")?;
        let table = txn.open_table(HEADS).during("read heads")?;
        Ok(table
            .get(id.to_string().as_str())
            .during("read heads")?
            .map(|v| decode_heads(v.value())))
    }

    /// Records a document's heads in the index, within `txn`.
    fn index_heads(
        txn: &WriteTransaction,
        id: &DocumentId,
        heads: &[automerge::ChangeHash],
    ) -> Result<()> {
        let mut table = txn.open_table(HEADS).during("index heads")?;
        let bytes: Vec<u8> = heads.iter().flat_map(|h| h.0).collect();
        table
            .insert(id.to_string().as_str(), bytes.as_slice())
            .during("index heads")?;
        Ok(())
    }

    /// Builds the heads index for stores made before it existed (once).
    fn index_all_heads(&mut self) -> Result<()> {
        {
            let txn = self.db.begin_read().during("open")?;
            let meta = txn.open_table(META).during("open")?;
            if meta.get(META_HEADS_INDEXED).during("open")?.is_some() {
                return Ok(());
            }
        }
        let docs = self.list_docs()?;
        let txn = self.db.begin_write().during("index heads")?;
        for info in docs {
            let Ok(id) = info.id.parse::<DocumentId>() else {
                continue;
            };
            // A document that does not decode keeps no index entry; it is named when read.
            match self.decode(&id, &info.id) {
                Ok(Some((mut doc, _))) => Self::index_heads(&txn, &id, &doc.get_heads())?,
                Ok(None) => {}
                Err(e) => tracing::warn!(doc = %info.id, error = %e, "not indexed"),
            }
        }
        {
            let mut meta = txn.open_table(META).during("index heads")?;
            meta.insert(META_HEADS_INDEXED, 1).during("index heads")?;
        }
        txn.commit().during("index heads")
    }

    /// The raw bytes of every stored change of a document that is not an ancestor of `heads`.
    pub fn changes_since(
        &mut self,
        id: &DocumentId,
        heads: &[automerge::ChangeHash],
    ) -> Result<Vec<Vec<u8>>> {
        let mut doc = self.automerge(id)?;
        Ok(doc
            .get_changes(heads)
            .into_iter()
            .map(|c| c.raw_bytes().to_vec())
            .collect())
    }

    /// Every stored document with its size.
    pub fn list_docs(&self) -> Result<Vec<DocInfo>> {
        let txn = self.db.begin_read().during("list documents")?;
        let names = txn.open_table(NAMES).during("list documents")?;
        let chunks = txn.open_table(CHUNKS).during("list documents")?;
        let mut docs: BTreeMap<String, DocInfo> = BTreeMap::new();
        for item in chunks.iter().during("list documents")? {
            let (k, v) = item.during("list documents")?;
            let mut parts = k.value().split('/');
            let (Some(id), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            if kind != "snapshot" && kind != "incremental" {
                continue;
            }
            let info = docs.entry(id.to_owned()).or_insert_with(|| DocInfo {
                id: id.to_owned(),
                name: None,
                kind: None,
                chunks: 0,
                bytes: 0,
            });
            info.chunks += 1;
            info.bytes += v.value().len() as u64;
        }
        for info in docs.values_mut() {
            if let Some(name) = names.get(info.id.as_str()).during("list documents")? {
                let name = name.value().to_owned();
                info.kind = name
                    .parse::<DocName>()
                    .ok()
                    .map(|n| n.kind().as_str().to_owned());
                info.name = Some(name);
            }
        }
        let mut out: Vec<DocInfo> = docs.into_values().collect();
        out.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// The keys and sizes of a document's content chunks.
    fn chunk_keys(&self, id: &DocumentId) -> Result<Vec<(String, u64)>> {
        let txn = self.db.begin_read().during("read chunks")?;
        let table = txn.open_table(CHUNKS).during("read chunks")?;
        content_chunks(&table, id, "read chunks")
    }

    /// Decodes a document from its stored chunks. `None` if nothing is stored for it.
    ///
    /// Loading is strict: Automerge's incremental load silently skips bytes it cannot parse,
    /// which would hide a corrupt chunk and lose its changes, so every chunk must parse whole.
    fn decode(&self, id: &DocumentId, label: &str) -> Result<Option<(AutoCommit, ChunkStats)>> {
        let txn = self.db.begin_read().during("read document")?;
        let table = txn.open_table(CHUNKS).during("read document")?;
        self.decode_from(&table, id, label)
    }

    /// [`Store::decode`] from a table of chunks as a transaction sees it.
    fn decode_from(
        &self,
        table: &impl ReadableTable<&'static str, &'static [u8]>,
        id: &DocumentId,
        label: &str,
    ) -> Result<Option<(AutoCommit, ChunkStats)>> {
        let mut all = Vec::new();
        let mut chunks: Vec<(String, std::ops::Range<usize>)> = Vec::new();
        let mut stats = ChunkStats::default();
        for prefix in content_prefixes(id) {
            for item in table.range(prefix.as_str()..).during("read document")? {
                let (k, v) = item.during("read document")?;
                if !k.value().starts_with(prefix.as_str()) {
                    break;
                }
                let start = all.len();
                all.extend_from_slice(&self.unseal(k.value(), v.value())?);
                chunks.push((k.value().to_owned(), start..all.len()));
                let len = v.value().len() as u64;
                if prefix.ends_with("/incremental/") {
                    stats.incremental_chunks += 1;
                    stats.incremental_bytes += len;
                } else {
                    stats.snapshot_bytes += len;
                }
            }
        }
        if chunks.is_empty() {
            return Ok(None);
        }
        let mut doc = match AutoCommit::load_with_options(&all, strict_load()) {
            Ok(doc) => doc,
            Err(whole) => {
                // Find the chunk that does not parse: a change chunk must parse as one change, any
                // other chunk as a document of its own.
                let corrupt = chunks.iter().find_map(|(key, range)| {
                    let bytes = &all[range.clone()];
                    if automerge::Change::from_bytes(bytes.to_vec()).is_ok() {
                        return None;
                    }
                    AutoCommit::load_with_options(bytes, strict_load())
                        .err()
                        .map(|e| (key.clone(), e.to_string()))
                });
                if let Some((key, reason)) = corrupt {
                    return Err(StoreError::CorruptChunk {
                        doc: label.to_owned(),
                        key,
                        reason,
                    });
                }
                // Every chunk parses, so the whole failed on something like a change whose
                // dependencies are not stored yet; Automerge queues those, so read what there is.
                tracing::warn!(doc = label, error = %whole, "document loaded leniently");
                let mut doc = AutoCommit::new();
                doc.load_incremental(&all)
                    .map_err(|e| StoreError::CorruptChunk {
                        doc: label.to_owned(),
                        key: "(the chunks together)".into(),
                        reason: e.to_string(),
                    })?;
                doc
            }
        };
        doc.set_actor(self.config.actor.clone());
        Ok(Some((doc, stats)))
    }

    /// The whole Automerge document with this id (a copy; edits to it are not stored).
    pub fn automerge(&mut self, id: &DocumentId) -> Result<AutoCommit> {
        let label = self
            .name_of(id)?
            .map(|n| n.to_string())
            .unwrap_or_else(|| id.to_string());
        if let Some(cached) = self.cache.get_mut(id) {
            return Ok(cached.doc.fork());
        }
        match self.decode(id, &label)? {
            Some((doc, _)) => Ok(doc),
            None => Err(StoreError::NoSuchDocument(label)),
        }
    }

    /// Reads a typed document. A document never written reads as its genesis content.
    pub fn read<T: TypedDoc>(&mut self, name: &DocName) -> Result<T> {
        check_kind::<T>(name)?;
        let id = self.document_id(name);
        match self.with_stored(&id, &name.to_string(), |doc| docs::hydrate(name, doc))? {
            Some(value) => value,
            None => docs::hydrate(name, &docs::genesis_doc::<T>(name)?),
        }
    }

    /// `read` applied to the stored document, the cached copy or else decoded for the
    /// occasion (and not kept); `None` when nothing of it is stored.
    fn with_stored<R>(
        &self,
        id: &DocumentId,
        label: &str,
        read: impl FnOnce(&AutoCommit) -> R,
    ) -> Result<Option<R>> {
        if let Some(cached) = self.cache.get(id) {
            return Ok(Some(read(&cached.doc)));
        }
        Ok(self.decode(id, label)?.map(|(doc, _)| read(&doc)))
    }

    /// [`Self::with_stored`] for reads that need the document mutably (Automerge's diff
    /// closes a pending transaction first); it writes nothing.
    fn with_stored_mut<R>(
        &mut self,
        id: &DocumentId,
        label: &str,
        read: impl FnOnce(&mut AutoCommit) -> R,
    ) -> Result<Option<R>> {
        if let Some(cached) = self.cache.get_mut(id) {
            return Ok(Some(read(&mut cached.doc)));
        }
        Ok(self.decode(id, label)?.map(|(mut doc, _)| read(&mut doc)))
    }

    /// The zone of every node in the registry. Routing derives the share policy from it
    /// whenever the election or the registry changes; reading 1,000 entries each time would
    /// cost more than everything else a node does while a fleet starts, so the answer is kept
    /// until the registry's heads move.
    pub fn node_zones(&mut self) -> Result<BTreeMap<String, String>> {
        let id = self.document_id(&DocName::Mesh);
        let heads = self.heads(&id)?.unwrap_or_default();
        if let Some(mut cache) = self.zones.take()
            && cache.at == heads
        {
            let unread = std::mem::take(&mut cache.unread);
            let read = unread.is_empty()
                || self.with_stored(&id, "mesh", |doc| {
                    docs::read_new_zones(doc, &unread, &mut cache.zones)
                })? == Some(true);
            if read {
                let zones = cache.zones.clone();
                self.zones = Some(cache);
                return Ok(zones);
            }
        }
        let zones = self
            .with_stored(&id, "mesh", docs::registry_zones)?
            .unwrap_or_default();
        self.zones = Some(ZoneCache {
            at: heads,
            zones: zones.clone(),
            unread: BTreeSet::new(),
        });
        Ok(zones)
    }

    /// The mesh registry, shared, read again only when its heads moved: for readers that look
    /// at it often (the write rules, once per workflow document; followers on a timer).
    pub fn registry(&mut self) -> Result<std::sync::Arc<crate::docs::MeshRegistry>> {
        let id = self.document_id(&DocName::Mesh);
        let heads = self.heads(&id)?.unwrap_or_default();
        if let Some((at, registry)) = &self.registry_at
            && *at == heads
        {
            return Ok(registry.clone());
        }
        let registry = std::sync::Arc::new(self.read::<crate::docs::MeshRegistry>(&DocName::Mesh)?);
        self.registry_at = Some((heads, registry.clone()));
        Ok(registry)
    }

    /// Edits a typed document: `edit` changes the value, and the difference is committed as one
    /// Automerge change and stored durably before this returns.
    pub fn update<T: TypedDoc, R>(
        &mut self,
        name: &DocName,
        edit: impl FnOnce(&mut T) -> R,
    ) -> Result<R> {
        check_kind::<T>(name)?;
        // The registry carries this node's liveness and addresses: refusing it would cut the
        // node off from the mesh that must help free its disk. Alerts are how the fleet learns
        // that the disk is filling: a few small records, bounded per document.
        if !matches!(name.kind(), DocKind::Mesh | DocKind::Alerts) {
            self.require_headroom(format_args!("write {name}"))?;
        }
        self.write_doc::<T, R>(name, "update document", |store, txn, id| {
            let cached = store.cache.get_mut(id).expect("loaded by write_doc");
            let before = cached.doc.get_heads();
            let mut value: T = docs::hydrate(name, &cached.doc)?;
            let result = edit(&mut value);
            docs::reconcile(name, &mut cached.doc, &value)?;
            store.commit_doc(txn, name, id, &before)?;
            Ok(result)
        })
    }

    /// Runs `write` against the document loaded into the cache (its genesis created if it was
    /// never stored), in one write transaction committed durably. On failure the cached copy
    /// is dropped, as it may hold a change that never reached the disk; on success the change
    /// listener hears of the document.
    fn write_doc<T: TypedDoc, R>(
        &mut self,
        name: &DocName,
        operation: &'static str,
        write: impl FnOnce(&mut Self, &WriteTransaction, &DocumentId) -> Result<R>,
    ) -> Result<R> {
        let id = self.document_id(name);
        let txn = self.db.begin_write().during(operation)?;
        let mut before = None;
        let outcome = (|| {
            self.load_into_cache::<T>(&txn, name, &id)?;
            before = self.cache.get_mut(&id).map(|c| c.doc.get_heads());
            let result = write(self, &txn, &id)?;
            let started = std::time::Instant::now();
            txn.commit().during(operation)?;
            self.metrics
                .durable_commit_seconds
                .observe_duration(started.elapsed());
            Ok(result)
        })();
        if outcome.is_err() {
            self.cache.remove(&id);
        } else if before != self.cache.get_mut(&id).map(|c| c.doc.get_heads()) {
            // A write that changed nothing (a rollup rewritten with the same figures) tells no
            // one: the rollup writer, which writes on every change, would wake itself forever.
            self.notify_changed(&id);
        }
        outcome
    }

    /// Folds the heads of a document into one with an empty change (whose dependencies are
    /// all current heads), when it has more than [`MAX_HEADS`]; returns whether it wrote.
    ///
    /// Every node writes its own entry of the registry, so after a fleet starts the registry
    /// has a head per node, and every Automerge sync message about it carries them all (and
    /// as many again as the last shared heads): 32 bytes each, 64 KB a message at 1,000 nodes.
    /// One node's merge makes one head of them for everyone it reaches. Drivers call this on
    /// zone aggregators now and then, at a random phase per node ([`MERGE_HEADS_EVERY`]), so
    /// that few merges run concurrently (concurrent merges make one head each, still far
    /// fewer).
    pub fn merge_heads<T: TypedDoc>(&mut self, name: &DocName) -> Result<bool> {
        check_kind::<T>(name)?;
        let id = self.document_id(name);
        if self
            .heads(&id)?
            .is_none_or(|heads| heads.len() <= MAX_HEADS)
        {
            return Ok(false);
        }
        self.write_doc::<T, ()>(name, "merge heads", |store, txn, id| {
            let options = store.commit_options();
            let cached = store.cache.get_mut(id).expect("loaded by write_doc");
            let before = cached.doc.get_heads();
            cached.doc.empty_change(options);
            store.store_changes(txn, &name.to_string(), id, &before)
        })?;
        Ok(true)
    }

    /// Makes sure the document is decoded in the cache, creating its genesis (in `txn`) if it
    /// was never stored.
    fn load_into_cache<T: TypedDoc>(
        &mut self,
        txn: &WriteTransaction,
        name: &DocName,
        id: &DocumentId,
    ) -> Result<()> {
        self.tick += 1;
        if let Some(cached) = self.cache.get_mut(id) {
            cached.last_used = self.tick;
            return Ok(());
        }
        let (doc, stats) = match self.decode(id, &name.to_string())? {
            Some(found) => found,
            None => {
                let mut doc = docs::genesis_doc::<T>(name)?;
                let mut chunks = txn.open_table(CHUNKS).during("create document")?;
                let mut stats = ChunkStats::default();
                for change in doc.get_changes(&[]) {
                    let key = StorageKey::incremental_path(id, change.hash()).to_string();
                    chunks
                        .insert(key.as_str(), self.seal(&key, change.raw_bytes()).as_ref())
                        .during("create document")?;
                    stats.incremental_chunks += 1;
                    stats.incremental_bytes += change.raw_bytes().len() as u64;
                }
                let mut names = txn.open_table(NAMES).during("create document")?;
                names
                    .insert(id.to_string().as_str(), name.to_string().as_str())
                    .during("create document")?;
                Self::index_heads(txn, id, &doc.get_heads())?;
                doc.set_actor(self.config.actor.clone());
                (doc, stats)
            }
        };
        self.cache_insert(id, doc, stats);
        Ok(())
    }

    /// Keeps a decoded document in the cache, dropping the least recently used beyond the cap.
    fn cache_insert(&mut self, id: &DocumentId, doc: AutoCommit, chunks: ChunkStats) {
        self.tick += 1;
        if self.cache.len() >= DOC_CACHE_CAP
            && !self.cache.contains_key(id)
            && let Some(oldest) = self
                .cache
                .iter()
                .min_by_key(|(_, c)| c.last_used)
                .map(|(k, _)| k.clone())
        {
            self.cache.remove(&oldest);
        }
        self.cache.insert(
            id.clone(),
            CachedDoc {
                doc,
                chunks,
                last_used: self.tick,
            },
        );
    }

    /// The options of a change written here: its time as configured.
    fn commit_options(&self) -> CommitOptions {
        match self.config.change_time {
            ChangeTime::Wall => CommitOptions::default().with_time(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as i64),
            ),
            ChangeTime::Zero => CommitOptions::default().with_time(0),
        }
    }

    /// Commits the cached document's pending operations as one change and writes the new
    /// changes as incremental chunks, compacting when there are too many.
    fn commit_doc(
        &mut self,
        txn: &WriteTransaction,
        name: &DocName,
        id: &DocumentId,
        before: &[automerge::ChangeHash],
    ) -> Result<()> {
        let options = self.commit_options();
        let cached = self.cache.get_mut(id).expect("document is cached");
        cached.doc.commit_with(options);
        self.store_changes(txn, &name.to_string(), id, before)
    }

    /// Writes the cached document's changes since `before` as incremental chunks and indexes its
    /// heads, compacting when there are too many chunks, within `txn`.
    fn store_changes(
        &mut self,
        txn: &WriteTransaction,
        label: &str,
        id: &DocumentId,
        before: &[automerge::ChangeHash],
    ) -> Result<()> {
        let cached = self.cache.get_mut(id).expect("document is cached");
        if before.is_empty() {
            // New to this store (every held document has at least its genesis change), most
            // often fetched whole from a peer: one snapshot. Splitting thousands of changes
            // out of the document into chunks of their own, only for the chunk count to fold
            // them into a snapshot in the same transaction, cost twice as much as the fetch.
            let heads = cached.doc.get_heads();
            if heads.is_empty() {
                return Ok(());
            }
            Self::index_heads(txn, id, &heads)?;
            self.compact_in(txn, label.to_owned(), id)?;
            return Ok(());
        }
        let changes = cached.doc.get_changes(before);
        if changes.is_empty() {
            return Ok(());
        }
        let after = cached.doc.get_heads();
        Self::index_heads(txn, id, &after)?;
        // The zones read at `before` are carried to `after` when the changes set no zone (merges
        // of heads, liveness updates) or only those of entries they create (a fleet's start):
        // re-reading a thousand entries for each was most of a 1,000-node simulation's time.
        let registry = self
            .zones
            .as_ref()
            .is_some_and(|cache| cache.at.as_slice() == before)
            && *id == self.document_id(&DocName::Mesh);
        if registry && let Some(cache) = &mut self.zones {
            match docs::zone_effect(&changes) {
                docs::ZoneEffect::None => cache.at = after,
                docs::ZoneEffect::NewEntries(nodes) => {
                    cache.unread.extend(nodes);
                    cache.at = after;
                }
                docs::ZoneEffect::Unknown => {}
            }
        }
        {
            let mut table = txn.open_table(CHUNKS).during("write document")?;
            for change in &changes {
                let key = StorageKey::incremental_path(id, change.hash()).to_string();
                table
                    .insert(key.as_str(), self.seal(&key, change.raw_bytes()).as_ref())
                    .during("write document")?;
            }
        }
        let cached = self.cache.get_mut(id).expect("document is cached");
        cached.chunks.incremental_chunks += changes.len();
        cached.chunks.incremental_bytes += changes
            .iter()
            .map(|c| c.raw_bytes().len() as u64)
            .sum::<u64>();
        if cached
            .chunks
            .wants_compaction(self.config.compact_after_chunks)
        {
            self.compact_in(txn, label.to_owned(), id)?;
        }
        Ok(())
    }

    /// Replaces every chunk of a document by one snapshot, within `txn`.
    fn compact_in(
        &mut self,
        txn: &WriteTransaction,
        label: String,
        id: &DocumentId,
    ) -> Result<Compaction> {
        if !self.cache.contains_key(id) {
            let (doc, chunks) = self
                .decode(id, &label)?
                .ok_or_else(|| StoreError::NoSuchDocument(label.clone()))?;
            self.cache_insert(id, doc, chunks);
        }
        let cached = self.cache.get_mut(id).expect("document is cached");
        let snapshot = cached.doc.save();
        let snapshot_key =
            StorageKey::snapshot_path(id, &CompactionHash::new(&cached.doc.get_heads()))
                .to_string();
        let mut table = txn.open_table(CHUNKS).during("compact")?;
        let old = content_chunks(&table, id, "compact")?;
        for (key, _) in &old {
            if *key != snapshot_key {
                table.remove(key.as_str()).during("compact")?;
            }
        }
        let sealed = self.seal(&snapshot_key, &snapshot).into_owned();
        let cached = self.cache.get_mut(id).expect("document is cached");
        table
            .insert(snapshot_key.as_str(), sealed.as_slice())
            .during("compact")?;
        cached.chunks = ChunkStats {
            incremental_chunks: 0,
            incremental_bytes: 0,
            snapshot_bytes: snapshot.len() as u64,
        };
        Ok(Compaction {
            doc: label,
            chunks_before: old.len(),
            bytes_before: old.iter().map(|(_, n)| n).sum(),
            bytes_after: snapshot.len() as u64,
        })
    }

    /// Compacts a document's chunks into one snapshot, durably.
    pub fn compact(&mut self, name_or_id: &str) -> Result<Compaction> {
        let (id, name) = self.resolve(name_or_id)?;
        let label = name
            .map(|n| n.to_string())
            .unwrap_or_else(|| id.to_string());
        let txn = self.db.begin_write().during("compact")?;
        let report = self.compact_in(&txn, label, &id)?;
        txn.commit().during("compact")?;
        self.metrics.compactions += 1;
        Ok(report)
    }

    /// Drops the decoded copy of a document, as the cache does when it is full: the next use
    /// decodes it again from what is stored. Sync sessions keep their state.
    pub fn evict(&mut self, name_or_id: &str) -> Result<()> {
        let (id, _) = self.resolve(name_or_id)?;
        self.cache.remove(&id);
        Ok(())
    }

    /// Compacts every document that has more than one chunk.
    pub fn compact_all(&mut self) -> Result<Vec<Compaction>> {
        let mut reports = Vec::new();
        for info in self.list_docs()? {
            if info.chunks > 1 {
                reports.push(self.compact(&info.id)?);
            }
        }
        Ok(reports)
    }

    // -----------------------------------------------------------------------------------------
    // results

    /// Appends result records to the durable log. When this returns `Ok`, the records are on
    /// disk (fsynced) and will reach their results documents even if the process dies now.
    /// Returns each record's sequence number.
    pub fn append_results(&mut self, records: &[RunRecord]) -> Result<Vec<u64>> {
        for record in records {
            record.validate()?;
        }
        let mut encoded = Vec::with_capacity(records.len());
        for record in records {
            let bytes = serde_json::to_vec(record).map_err(|e| StoreError::InvalidRecord {
                run_id: record.run_id.clone(),
                reason: e.to_string(),
            })?;
            if bytes.len() > docs::MAX_RECORD_BYTES {
                return Err(StoreError::InvalidRecord {
                    run_id: record.run_id.clone(),
                    reason: format!(
                        "the record is {} bytes, more than the limit of {}",
                        bytes.len(),
                        docs::MAX_RECORD_BYTES
                    ),
                });
            }
            encoded.push(bytes);
        }
        self.require_headroom(format_args!("store {} run result(s)", records.len()))?;
        let mut txn = self.db.begin_write().during("append results")?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| StoreError::Engine {
                operation: "append results",
                source: Box::new(e.into()),
            })?;
        let mut seqs = Vec::with_capacity(records.len());
        {
            let mut meta = txn.open_table(META).during("append results")?;
            let mut next = meta
                .get(META_NEXT_SEQ)
                .during("append results")?
                .map(|v| v.value())
                .unwrap_or(1);
            let mut log = txn.open_table(RESULT_LOG).during("append results")?;
            for bytes in &encoded {
                log.insert(next, self.seal(&log_key(next), bytes).as_ref())
                    .during("append results")?;
                seqs.push(next);
                next += 1;
            }
            meta.insert(META_NEXT_SEQ, next).during("append results")?;
        }
        let started = std::time::Instant::now();
        txn.commit().during("append results")?;
        self.metrics
            .durable_commit_seconds
            .observe_duration(started.elapsed());
        Ok(seqs)
    }

    /// How many acknowledged results wait in the log.
    pub fn pending_results(&self) -> Result<u64> {
        let txn = self.db.begin_read().during("count pending")?;
        let log = txn.open_table(RESULT_LOG).during("count pending")?;
        log.len().during("count pending")
    }

    /// Folds up to `max` logged results into their results documents, in one transaction that
    /// also removes them from the log, so a crash either applies a record or leaves it logged.
    /// Returns how many were applied.
    pub fn apply_pending(&mut self, max: usize) -> Result<usize> {
        let mut applied_total = 0;
        while applied_total < max {
            let batch = (max - applied_total).min(APPLY_BATCH);
            let n = self.apply_batch(batch)?;
            if n == 0 {
                break;
            }
            applied_total += n;
        }
        Ok(applied_total)
    }

    fn apply_batch(&mut self, max: usize) -> Result<usize> {
        let mut records: Vec<(u64, RunRecord)> = Vec::new();
        {
            let txn = self.db.begin_read().during("read result log")?;
            let log = txn.open_table(RESULT_LOG).during("read result log")?;
            for item in log.iter().during("read result log")? {
                if records.len() >= max {
                    break;
                }
                let (seq, bytes) = item.during("read result log")?;
                let seq = seq.value();
                if self.stuck.contains(&seq) {
                    continue;
                }
                let opened = self.unseal(&log_key(seq), bytes.value());
                match opened.and_then(|b| {
                    serde_json::from_slice::<RunRecord>(&b).map_err(|e| StoreError::Sealed {
                        key: log_key(seq),
                        reason: e.to_string(),
                    })
                }) {
                    Ok(record) => records.push((seq, record)),
                    Err(e) => {
                        tracing::error!(seq, error = %e, "a logged result does not decode; it stays in the log");
                        self.stuck.insert(seq);
                    }
                }
            }
        }
        if records.is_empty() {
            return Ok(0);
        }
        let mut by_doc: BTreeMap<DocName, Vec<(u64, &RunRecord)>> = BTreeMap::new();
        for (seq, record) in &records {
            let window = Window::containing(record.finished_ms, self.config.results_window_minutes);
            by_doc
                .entry(DocName::results(&record.node, window)?)
                .or_default()
                .push((*seq, record));
        }
        // Durable before anyone hears of it. The log entries leave in this same transaction, so
        // a fold lost in a crash would be applied again on open, and the records kept; but the
        // change it made would be made anew, a different change under the same actor and
        // sequence number, and a peer that had been sent the first one refuses the second
        // forever ("duplicate seq"): that results window would never sync again. One fsync per
        // folded batch.
        let txn = self.db.begin_write().during("apply results")?;
        let mut applied: Vec<u64> = Vec::new();
        let mut touched: Vec<DocumentId> = Vec::new();
        for (name, group) in &by_doc {
            let id = self.document_id(name);
            touched.push(id.clone());
            match self.apply_group(&txn, name, &id, group) {
                Ok(()) => applied.extend(group.iter().map(|(seq, _)| *seq)),
                Err(e @ StoreError::Engine { .. }) => {
                    self.forget(&touched);
                    return Err(e);
                }
                Err(e) => {
                    // One document that cannot take its records must not stop the others, nor
                    // the node from opening: its records stay logged (nothing is lost) and are
                    // skipped until the store is reopened.
                    self.cache.remove(&id);
                    tracing::error!(doc = %name, records = group.len(), error = %e,
                        "results cannot be folded into their document; they stay in the log");
                    self.stuck.extend(group.iter().map(|(seq, _)| *seq));
                }
            }
        }
        let outcome = (|| {
            {
                let mut log = txn.open_table(RESULT_LOG).during("apply results")?;
                for seq in &applied {
                    log.remove(*seq).during("apply results")?;
                }
                if let Some(last) = applied.iter().max() {
                    let mut meta = txn.open_table(META).during("apply results")?;
                    meta.insert(META_APPLIED_SEQ, *last)
                        .during("apply results")?;
                }
            }
            let started = std::time::Instant::now();
            txn.commit().during("apply results")?;
            self.metrics
                .durable_commit_seconds
                .observe_duration(started.elapsed());
            Ok(())
        })();
        if let Err(e) = outcome {
            self.forget(&touched);
            return Err(e);
        }
        for id in &touched {
            self.notify_changed(id);
        }
        // Records of stuck documents count as handled for this batch, so callers move on.
        Ok(records.len())
    }

    fn apply_group(
        &mut self,
        txn: &WriteTransaction,
        name: &DocName,
        id: &DocumentId,
        group: &[(u64, &RunRecord)],
    ) -> Result<()> {
        self.load_into_cache::<ResultsDoc>(txn, name, id)?;
        let cached = self.cache.get_mut(id).expect("loaded above");
        let before = cached.doc.get_heads();
        let runs = match cached.doc.get(automerge::ROOT, "runs") {
            Ok(Some((automerge::Value::Object(ObjType::Map), runs))) => runs,
            _ => {
                return Err(StoreError::Shape {
                    doc: name.to_string(),
                    kind: "results",
                    reason: "the root has no `runs` map".into(),
                });
            }
        };
        for (_, record) in group {
            autosurgeon::reconcile_prop(&mut cached.doc, &runs, record.run_id.as_str(), *record)
                .map_err(|e| StoreError::Write {
                    doc: name.to_string(),
                    reason: e.to_string(),
                })?;
        }
        self.commit_doc(txn, name, id, &before)
    }

    /// Drops cached documents whose in-memory changes did not reach the disk, so the next read
    /// decodes what is stored.
    fn forget(&mut self, ids: &[DocumentId]) {
        for id in ids {
            self.cache.remove(id);
        }
    }

    /// Stored results matching the query, oldest first. Logged results are applied first, so
    /// everything acknowledged is listed.
    pub fn results(&mut self, query: &ResultsQuery) -> Result<Vec<RunRecord>> {
        self.apply_pending(usize::MAX)?;
        let mut out = Vec::new();
        for (name, _) in self.windowed_docs(DocKind::Results)? {
            let DocName::Results { node, window } = &name else {
                continue;
            };
            if query.node.as_ref().is_some_and(|n| n != node) {
                continue;
            }
            if query.since_ms.is_some_and(|since| window.end_ms() <= since) {
                continue;
            }
            let doc: ResultsDoc = match self.read(&name) {
                Ok(doc) => doc,
                Err(e @ StoreError::Engine { .. }) => return Err(e),
                Err(e) => {
                    // The other windows stay readable; the broken one is named in the log.
                    tracing::error!(doc = %name, error = %e, "skipping an unreadable results window");
                    continue;
                }
            };
            out.extend(doc.runs.into_values().filter(|r| {
                query.workflow.as_ref().is_none_or(|w| *w == r.workflow)
                    && query.since_ms.is_none_or(|since| r.finished_ms >= since)
            }));
        }
        out.sort_by(|a, b| {
            (a.finished_ms, &a.node, &a.run_id).cmp(&(b.finished_ms, &b.node, &b.run_id))
        });
        Ok(out)
    }

    /// Named documents of a windowed kind with their sizes, oldest window first.
    fn windowed_docs(&self, kind: DocKind) -> Result<Vec<(DocName, u64)>> {
        let mut docs = Vec::new();
        for info in self.list_docs()? {
            if let Some(name) = info.name.and_then(|n| n.parse::<DocName>().ok())
                && name.kind() == kind
            {
                docs.push((name, info.bytes));
            }
        }
        docs.sort_by_key(|(name, _)| name.window());
        Ok(docs)
    }

    /// Retires windowed documents (`results/...`, `rollup/...`) by the retention policy: first
    /// those older than the maximum age, then the oldest until the total is under the size cap.
    /// The window that contains `now_ms` is never retired. Each retirement is logged.
    pub fn enforce_retention(&mut self, now_ms: i64) -> Result<Vec<Retired>> {
        let policy = self.config.retention;
        if policy.max_age_ms.is_none() && policy.max_bytes.is_none() {
            return Ok(Vec::new());
        }
        self.apply_pending(usize::MAX)?;
        let mut windowed = self.windowed_docs(DocKind::Results)?;
        windowed.extend(self.windowed_docs(DocKind::Rollup)?);
        windowed.extend(self.windowed_docs(DocKind::Alerts)?);
        windowed.sort_by_key(|(name, _)| name.window().map(|w| w.end_ms()));
        let mut total: u64 = windowed.iter().map(|(_, b)| b).sum();
        let mut retired = Vec::new();
        for (name, bytes) in windowed {
            let window = name.window().expect("windowed documents have a window");
            if window.end_ms() > now_ms {
                continue;
            }
            let reason = if policy
                .max_age_ms
                .is_some_and(|age| window.end_ms() < now_ms - age)
            {
                RetireReason::Age
            } else if policy.max_bytes.is_some_and(|cap| total > cap) {
                RetireReason::Size
            } else {
                continue;
            };
            self.remove_doc(&name)?;
            total -= bytes;
            tracing::info!(doc = %name, bytes, reason = ?reason, "retired window");
            retired.push(Retired {
                doc: name.to_string(),
                bytes,
                reason,
            });
        }
        if let Some(cap) = policy.max_bytes
            && total > cap
        {
            tracing::warn!(
                total,
                cap,
                "windowed documents exceed the size cap; only current windows remain"
            );
        }
        Ok(retired)
    }

    /// Makes room when free space is under the watermark by retiring closed windows (oldest
    /// first) that one of `holders` (the aggregator chain) is known to hold whole: its sync
    /// state, in this session or persisted from an earlier one, shares every head of the
    /// document. Nothing only this node holds is retired. The file is then compacted, so the
    /// space returns to the filesystem (redb reuses freed pages but does not shrink by itself).
    pub fn retire_held_windows(&mut self, holders: &[String], now_ms: i64) -> Result<Vec<Retired>> {
        let low = matches!(self.headroom(), Some(Ok(room)) if room.is_low());
        if !low || holders.is_empty() {
            return Ok(Vec::new());
        }
        self.apply_pending(usize::MAX)?;
        let mut windowed = self.windowed_docs(DocKind::Results)?;
        windowed.extend(self.windowed_docs(DocKind::Rollup)?);
        windowed.sort_by_key(|(name, _)| name.window().map(|w| w.end_ms()));
        let mut retired = Vec::new();
        for (name, bytes) in windowed {
            let window = name.window().expect("windowed documents have a window");
            if window.end_ms() > now_ms {
                continue;
            }
            if !self.held_by_any(&name, holders)? {
                continue;
            }
            self.remove_doc(&name)?;
            tracing::info!(doc = %name, bytes, "retired a window the aggregator chain holds, to make room");
            retired.push(Retired {
                doc: name.to_string(),
                bytes,
                reason: RetireReason::HeldUpstream,
            });
        }
        if !retired.is_empty() {
            self.flush()?;
            if let Err(e) = self.db.compact() {
                tracing::warn!(error = %e, "compacting the store file after retiring windows failed");
            }
        }
        Ok(retired)
    }

    /// Whether one of `holders` shares every head of a document, by its sync state.
    fn held_by_any(&mut self, name: &DocName, holders: &[String]) -> Result<bool> {
        let id = self.document_id(name);
        let Some(heads) = self.heads(&id)? else {
            return Ok(false);
        };
        for peer in holders {
            let shared = match self.sync_states.get(&(id.clone(), peer.clone())) {
                Some(state) => Some(state.shared_heads.clone()),
                None => self
                    .load_sync_state(&id, peer)?
                    .and_then(|bytes| automerge::sync::State::decode(&bytes).ok())
                    .map(|state| state.shared_heads),
            };
            if shared.is_some_and(|shared| heads.iter().all(|h| shared.contains(h))) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Deletes every chunk, sync state and the name of a document, durably.
    fn remove_doc(&mut self, name: &DocName) -> Result<()> {
        let id = self.document_id(name);
        self.cache.remove(&id);
        self.sync_states.retain(|(doc, _), _| *doc != id);
        let prefix = format!("{id}/");
        let txn = self.db.begin_write().during("retire document")?;
        {
            let mut chunks = txn.open_table(CHUNKS).during("retire document")?;
            let keys: Vec<String> = chunks
                .range(prefix.as_str()..)
                .during("retire document")?
                .map_while(|item| {
                    item.ok()
                        .map(|(k, _)| k.value().to_owned())
                        .filter(|k| k.starts_with(&prefix))
                })
                .collect();
            for key in keys {
                chunks.remove(key.as_str()).during("retire document")?;
            }
            let mut names = txn.open_table(NAMES).during("retire document")?;
            names
                .remove(id.to_string().as_str())
                .during("retire document")?;
            let mut heads = txn.open_table(HEADS).during("retire document")?;
            heads
                .remove(id.to_string().as_str())
                .during("retire document")?;
            let mut retired = txn.open_table(RETIRED).during("retire document")?;
            retired
                .insert(id.to_string().as_str(), name.to_string().as_str())
                .during("retire document")?;
        }
        txn.commit().during("retire document")?;
        if name.window().is_some() {
            self.metrics.windows_retired += 1;
        }
        Ok(())
    }

    /// Store-wide counters.
    pub fn stats(&self) -> Result<StoreStats> {
        let docs = self.list_docs()?;
        Ok(StoreStats {
            documents: docs.len(),
            chunk_bytes: docs.iter().map(|d| d.bytes).sum(),
            pending_results: self.pending_results()?,
            file_bytes: self
                .path
                .as_ref()
                .and_then(|p| std::fs::metadata(p).ok())
                .map_or(0, |m| m.len()),
        })
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // Earlier non-durable commits become durable, so the next open has nothing to redo.
        if let Err(e) = self.flush() {
            tracing::warn!(error = %e, "final flush of the store failed");
        }
    }
}

/// Results folded into documents per transaction.
pub const APPLY_BATCH: usize = 4096;

fn check_kind<T: TypedDoc>(name: &DocName) -> Result<()> {
    if name.kind() != T::KIND {
        return Err(StoreError::Shape {
            doc: name.to_string(),
            kind: T::KIND.as_str(),
            reason: format!("it is a {} document", name.kind()),
        });
    }
    Ok(())
}

fn strict_load() -> automerge::LoadOptions<'static> {
    automerge::LoadOptions::new()
        .on_partial_load(automerge::OnPartialLoad::Error)
        .verification_mode(automerge::VerificationMode::Check)
}

/// The recorded name of a document, as a transaction sees the names table.
fn name_in(
    table: &impl ReadableTable<&'static str, &'static str>,
    id: &DocumentId,
    operation: &'static str,
) -> Result<Option<DocName>> {
    let name = table.get(id.to_string().as_str()).during(operation)?;
    Ok(name.and_then(|n| n.value().parse().ok()))
}

/// The keys and sizes of a document's snapshot and incremental chunks, in key order.
fn content_chunks(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    id: &DocumentId,
    operation: &'static str,
) -> Result<Vec<(String, u64)>> {
    let mut keys = Vec::new();
    for prefix in content_prefixes(id) {
        for item in table.range(prefix.as_str()..).during(operation)? {
            let (k, v) = item.during(operation)?;
            if !k.value().starts_with(prefix.as_str()) {
                break;
            }
            keys.push((k.value().to_owned(), v.value().len() as u64));
        }
    }
    Ok(keys)
}

/// The name a result log record is sealed under.
fn log_key(seq: u64) -> String {
    format!("result-log/{seq}")
}

fn content_prefixes(id: &DocumentId) -> [String; 2] {
    [format!("{id}/snapshot/"), format!("{id}/incremental/")]
}

fn decode_heads(bytes: &[u8]) -> Vec<automerge::ChangeHash> {
    bytes
        .chunks_exact(32)
        .map(|c| automerge::ChangeHash(c.try_into().expect("32 bytes")))
        .collect()
}

fn sync_state_key(doc: &DocumentId, peer: &str) -> Result<StorageKey> {
    StorageKey::from_parts([doc.to_string().as_str(), "sync-state", peer]).map_err(|_| {
        StoreError::InvalidName {
            name: peer.to_owned(),
            reason: "a peer id must be non-empty and contain no '/'".into(),
        }
    })
}

fn is_component_prefix(prefix: &str, key: &str) -> bool {
    key == prefix
        || (key.starts_with(prefix) && key.as_bytes().get(prefix.len()) == Some(&b'/'))
        || prefix.is_empty()
}

fn open_error(path: &Path, error: DatabaseError) -> StoreError {
    match error {
        DatabaseError::DatabaseAlreadyOpen => StoreError::Locked {
            path: path.to_owned(),
        },
        DatabaseError::Storage(StorageError::Io(source))
            if !matches!(
                source.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData
            ) =>
        {
            StoreError::Io {
                path: path.to_owned(),
                source,
            }
        }
        other => StoreError::CorruptFile {
            path: path.to_owned(),
            reason: other.to_string(),
        },
    }
}
