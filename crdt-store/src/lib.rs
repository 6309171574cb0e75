//! Automerge documents persisted in one redb file.
//!
//! This crate is the node's memory. It stores every replicated document as automerge-repo
//! chunks (the key layout samod uses, so an automerge-repo endpoint can serve the same store,
//! see [`Store::execute`]), maps the document kinds of the mesh onto Rust types ([`docs`]),
//! takes result records through a durable log whose acknowledgement means *fsynced*
//! ([`Store::append_results`]), retires old windows by a retention policy, writes zone rollups
//! ([`Store::roll_up`]), and is the replica that document sync (`mesh::proto::sync`) generates
//! and applies Automerge sync messages against, with each peer's sync state persisted.
//!
//! It must never do networking, and its API uses no async runtime: blocking work happens on the
//! store thread behind [`StoreHandle`], whose answers can be awaited from any executor.
//! The invariants (what is durable when, what a crash can lose) are in `docs/design.md`.

pub mod docs;
mod error;
pub mod fault;
mod handle;
pub mod headroom;
pub mod metrics;
pub mod names;
pub mod seal;
mod store;

pub use automerge;
pub use docs::{
    AlertRecord, AlertsDoc, BoundsError, CaRecord, ConflictPolicy, FleetRule, MAX_DEFINITION_BYTES,
    MAX_DEFINITION_DEPTH, MAX_RUN_INPUT_BYTES, MeshRegistry, NodeEntry, PolicyDecision,
    RejectedVersion, Resolution, ResultsDoc, Revocation, RollupDoc, RunRecord, RunStatus,
    RunSummary, StepDef, StepRecord, Target, TypedDoc, Vitals, WorkflowDoc, WorkflowVersions,
    check_json_bounds, workflow_base,
};
pub use error::{Result, StoreError, WriteFault};
pub use handle::{MAX_GROUP_RECORDS, STORE_QUEUE_CAP, StoreHandle, Ticket};
pub use names::{DocKind, DocName, Window, format_timestamp, parse_timestamp};
pub use samod_core;
pub use store::{
    APPLY_BATCH, Broken, CatalogueItem, ChangeTime, Compaction, DOC_CACHE_CAP, DocInfo,
    FORMAT_VERSION, FleetView, HeadsDigest, KeyStatus, MAX_HEADS, MERGE_HEADS_EVERY,
    REOPEN_BACKOFF_MAX, REOPEN_BACKOFF_MIN, REOPEN_MIN_FREE, RETIRED_DIGEST, Reseal, ResultsQuery,
    ResultsSince, RetentionPolicy, RetireReason, Retired, SESSION_PEER_PREFIX, Sender, Store,
    StoreConfig, StoreStats, SyncApplied, SyncApply, SyncRejected, Vouch, WorkflowView, WriteRules,
    ZoneView, heads_digest, summarize,
};
