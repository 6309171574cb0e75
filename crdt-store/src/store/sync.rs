//! The store's side of document sync: the catalogue of what this node holds, and Automerge sync
//! messages generated from and applied to stored documents, with each peer's sync state kept in
//! memory for the connection and persisted (its shared heads) for the next one.
//!
//! Which documents to sync with whom, and when, is decided elsewhere (`mesh::proto::sync`); this
//! module only answers its requests.

use automerge::patches::PatchLog;
use automerge::sync::{self, SyncDoc};
use automerge::{AutoCommit, ChangeHash};
use redb::{Durability, ReadableDatabase, ReadableTable};
use samod_core::DocumentId;

use super::{
    CHUNKS, ChunkStats, HEADS, HeadsDigest, NAMES, RETIRED, Store, content_chunks, decode_heads,
    heads_digest, name_in, sync_state_key,
};
use crate::docs::WorkflowDoc;
use crate::error::{EngineContext, Result, StoreError};
use crate::names::DocName;
use mesh::proto::sync::{Applied, ApplyFailed, ApplyRequest, Replica};
use mesh::proto::wire::{CatalogueEntry, DocIdBytes};

/// The digest a catalogue gives for a document retired here: peers do not send it back.
pub const RETIRED_DIGEST: HeadsDigest = [0xff; 16];

/// Sync peers whose names start with this keep their sync state for the session only: it is
/// neither persisted nor read back. Clients of the WebSocket endpoint are such peers: their
/// peer ids are new on every connection, so a persisted state would never be read again.
pub const SESSION_PEER_PREFIX: &str = "session:";

/// One document this node holds (or retired), as a catalogue lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogueItem {
    /// The document id.
    pub id: DocumentId,
    /// Its name.
    pub name: DocName,
    /// The digest of its heads, or [`RETIRED_DIGEST`].
    pub digest: HeadsDigest,
}

/// A sync message from a peer, to apply.
#[derive(Debug, Clone)]
pub struct SyncApply {
    /// The document.
    pub doc: DocumentId,
    /// The peer that sent it.
    pub peer: String,
    /// The document's name as the peer gave it, for a document this node does not hold yet.
    pub name: Option<String>,
    /// The Automerge sync message.
    pub payload: Vec<u8>,
    /// Who sent it, which decides what it may change.
    pub sender: Sender,
}

/// Stands in for a client when it writes a workflow: given the newest version the client
/// wrote (unsigned, as clients cannot sign) and the versions that stood before, it refuses it
/// with a reason or gives the version this node writes over it, signed by this node.
pub type Vouch = std::sync::Arc<
    dyn Fn(&WorkflowDoc, &[WorkflowDoc]) -> std::result::Result<WorkflowDoc, String> + Send + Sync,
>;

/// Who sent a sync message.
#[derive(Clone, Default)]
pub enum Sender {
    /// A peer of the mesh: its changes are held to authorship and the write rules.
    #[default]
    Peer,
    /// A client that may read only: a message that would change the document is refused
    /// whole ([`SyncRejected::Unauthorized`]).
    Reader,
    /// A client writing through this node (the WebSocket endpoint). Held to authorship as a
    /// peer; a definition that is not one readable value is refused; a new workflow version
    /// goes to the [`Vouch`], and the version it gives is written over the client's in the
    /// same transaction, so that what other nodes receive is this node's signed version.
    Client(Vouch),
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Sender::Peer => "Peer",
            Sender::Reader => "Reader",
            Sender::Client(_) => "Client",
        })
    }
}

/// The outcome of applying one sync message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncApplied {
    /// Whether the document changed.
    pub changed: bool,
    /// The digest of the local heads afterwards.
    pub ours: HeadsDigest,
    /// The digest of the peer's heads as its message gave them.
    pub theirs: Option<HeadsDigest>,
}

/// Why one sync message was not applied. The store itself is unharmed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyncRejected {
    /// The message does not decode, or Automerge refused its content.
    #[error("malformed sync message for {doc}: {reason}")]
    Malformed {
        /// The document.
        doc: String,
        /// Why.
        reason: String,
    },
    /// The name the peer gave does not derive to the document id in this mesh.
    #[error("document {doc} is not named {name} in this mesh")]
    WrongName {
        /// The document.
        doc: String,
        /// The name given.
        name: String,
    },
    /// The document is not known here by name (and no valid name came with it).
    #[error("document {0} has no known name")]
    Unnamed(String),
    /// The document was retired here; it is not taken back.
    #[error("document {0} was retired")]
    Retired(String),
    /// The stored document could not be read.
    #[error("{0}")]
    Local(String),
    /// Free space on this node is under the watermark: only the registry is taken in, so
    /// the mesh keeps working while the operator makes room. The peer sends it again later.
    #[error("{0}")]
    NoHeadroom(String),
    /// A change by an author without the right to it: another node's results or registry
    /// entry, or a workflow version not signed by a `control` node. Nothing of the message is
    /// stored or relayed.
    #[error("refused a change to {doc}: {reason}")]
    Unauthorized {
        /// The document.
        doc: String,
        /// Who wrote what, and the rule it breaks.
        reason: String,
        /// Whether the session took in what the message says the peer holds, so that an answer
        /// can carry what the peer lacks (never when this node holds nothing of the document:
        /// an answer saying so would have the peer send it everything again).
        heard: bool,
    },
}

impl SyncRejected {
    /// Whether a refusal, as its text travels to the replicator, is of a change by an author
    /// without the right to it ([`SyncRejected::Unauthorized`]).
    pub fn is_refused_change(reason: &str) -> bool {
        reason.starts_with("refused a change to ")
    }

    /// Whether the peer sent something it should not have (its connection is then closed).
    pub fn peer_at_fault(&self) -> bool {
        matches!(
            self,
            SyncRejected::Malformed { .. } | SyncRejected::WrongName { .. }
        )
    }
}

impl Store {
    /// Every document this node holds under a known name, with its heads digest, in id order;
    /// retired documents are listed with [`RETIRED_DIGEST`].
    pub fn sync_catalogue(&self) -> Result<Vec<CatalogueItem>> {
        let txn = self.db.begin_read().during("read catalogue")?;
        let heads = txn.open_table(HEADS).during("read catalogue")?;
        let names = txn.open_table(NAMES).during("read catalogue")?;
        let retired = txn.open_table(RETIRED).during("read catalogue")?;
        let mut out = Vec::new();
        for item in names.iter().during("read catalogue")? {
            let (id, name) = item.during("read catalogue")?;
            let (Ok(doc), Ok(name)) = (
                id.value().parse::<DocumentId>(),
                name.value().parse::<DocName>(),
            ) else {
                continue;
            };
            if let Some(h) = heads.get(id.value()).during("read catalogue")? {
                out.push(CatalogueItem {
                    id: doc,
                    name,
                    digest: heads_digest(&decode_heads(h.value())),
                });
            }
        }
        for item in retired.iter().during("read catalogue")? {
            let (id, name) = item.during("read catalogue")?;
            if let (Ok(doc), Ok(name)) = (
                id.value().parse::<DocumentId>(),
                name.value().parse::<DocName>(),
            ) {
                out.push(CatalogueItem {
                    id: doc,
                    name,
                    digest: RETIRED_DIGEST,
                });
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// The next Automerge sync message about `doc` for `peer`, or `None` when there is nothing
    /// to say. A document not held here takes part as an empty one, which asks for everything.
    pub fn sync_generate(&mut self, doc: &DocumentId, peer: &str) -> Result<Option<Vec<u8>>> {
        if !self.cache.contains_key(doc) {
            self.ensure_sync_state(doc, peer)?;
            if let Some(answer) = self.answer_from_stored_chunks(doc, peer)? {
                return Ok(answer);
            }
        }
        self.load_sync_session(doc, peer, None)?;
        let state = self
            .sync_states
            .get_mut(&(doc.clone(), peer.to_owned()))
            .expect("loaded above");
        let message = match self.cache.get_mut(doc) {
            Some(cached) => cached.doc.sync().generate_sync_message(state),
            None => {
                let mut empty = AutoCommit::new();
                empty.sync().generate_sync_message(state)
            }
        };
        Ok(message.map(sync::Message::encode))
    }

    /// Applies sync messages from peers, in order, in one transaction. Each message gets its own
    /// outcome; `Err` means the store itself failed (nothing of the batch is kept).
    ///
    /// The commit is not fsynced: what arrives by sync still exists at its sender, and a crash
    /// loses at most what arrived since the last durable commit, which the next session sends
    /// again (the persisted sync state is lost with it, so the two stay consistent). The store
    /// thread makes it durable within a moment ([`Store::unflushed_since`]).
    pub fn sync_apply(
        &mut self,
        batch: Vec<SyncApply>,
    ) -> Result<Vec<std::result::Result<SyncApplied, SyncRejected>>> {
        let low_on_space = self.require_headroom("take in synced documents").err();
        let registry = self.document_id(&DocName::Mesh);
        let mut txn = self.db.begin_write().during("apply sync")?;
        txn.set_durability(Durability::None)
            .map_err(|e| StoreError::Engine {
                operation: "apply sync",
                source: Box::new(e.into()),
            })?;
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut touched: Vec<DocumentId> = Vec::new();
        let mut changed: Vec<DocumentId> = Vec::new();
        for message in batch {
            let doc = message.doc.clone();
            if let Some(refusal) = low_on_space.as_ref().filter(|_| doc != registry) {
                outcomes.push(Err(SyncRejected::NoHeadroom(refusal.to_string())));
                continue;
            }
            match self.apply_one(&txn, message) {
                Ok(applied) => {
                    if applied.changed && !changed.contains(&doc) {
                        changed.push(doc.clone());
                    }
                    touched.push(doc);
                    outcomes.push(Ok(applied));
                }
                Err(ApplyError::Rejected(rejected)) => {
                    // A refused message may have left the cached copy half-changed; the next
                    // message about it reads it again as this transaction holds it. A refused
                    // change has had its document read again already (`hear_refused_peer`).
                    if !matches!(rejected, SyncRejected::Unauthorized { .. }) {
                        self.cache.remove(&doc);
                    }
                    outcomes.push(Err(rejected));
                }
                Err(ApplyError::Store(e)) => {
                    self.abandon_sync_batch(&touched);
                    self.cache.remove(&doc);
                    return Err(e);
                }
            }
        }
        let started = std::time::Instant::now();
        if let Err(e) = txn.commit().during("apply sync") {
            self.abandon_sync_batch(&touched);
            return Err(e);
        }
        self.metrics
            .deferred_commit_seconds
            .observe_duration(started.elapsed());
        if !changed.is_empty() && self.unflushed_since.is_none() {
            self.unflushed_since = Some(std::time::Instant::now());
        }
        for id in &changed {
            self.notify_changed(id);
        }
        Ok(outcomes)
    }

    /// Forgets the sync sessions of a peer: the next one starts from the persisted state.
    pub fn sync_forget_peer(&mut self, peer: &str) {
        self.sync_states.retain(|(_, p), _| p != peer);
        self.refused_heads.retain(|(_, p), _| p != peer);
    }

    /// Forgets the in-memory sync session of one document with a peer: the next message
    /// starts from the persisted state (heads and a Bloom filter, no changes).
    pub fn sync_restart_session(&mut self, doc: &DocumentId, peer: &str) {
        self.sync_states.remove(&(doc.clone(), peer.to_owned()));
    }

    /// A failed transaction leaves cached documents and sync states ahead of the disk.
    fn abandon_sync_batch(&mut self, touched: &[DocumentId]) {
        for id in touched {
            self.cache.remove(id);
            self.sync_states.retain(|(doc, _), _| doc != id);
        }
    }

    fn apply_one(
        &mut self,
        txn: &redb::WriteTransaction,
        message: SyncApply,
    ) -> std::result::Result<SyncApplied, ApplyError> {
        let SyncApply {
            doc,
            peer,
            name,
            payload,
            sender,
        } = message;
        let label = doc.to_string();
        {
            let retired = txn.open_table(RETIRED).during("apply sync")?;
            if retired.get(label.as_str()).during("apply sync")?.is_some() {
                return Err(SyncRejected::Retired(label).into());
            }
        }
        // The name as this batch's transaction holds it: an earlier message may have named a
        // document new here, and its sender names it only once.
        let known = name_in(
            &txn.open_table(NAMES).during("apply sync")?,
            &doc,
            "apply sync",
        )?;
        let label = match (&known, name) {
            (Some(known), _) => known.to_string(),
            (None, Some(given)) => {
                let parsed = given.parse::<DocName>().ok();
                match parsed {
                    Some(parsed) if self.document_id(&parsed) == doc => {
                        let mut names = txn.open_table(NAMES).during("apply sync")?;
                        names
                            .insert(label.as_str(), given.as_str())
                            .during("apply sync")?;
                        given
                    }
                    _ => {
                        return Err(SyncRejected::WrongName {
                            doc: label,
                            name: given,
                        }
                        .into());
                    }
                }
            }
            (None, None) => return Err(SyncRejected::Unnamed(label).into()),
        };
        let decoded = sync::Message::decode(&payload).map_err(|e| malformed(&label, e))?;
        if !self.cache.contains_key(&doc)
            && opens_from_nothing(&decoded)
            && let Some(ours) = self.stored_heads(txn, &doc)?
        {
            // The peer holds nothing of a document this node has not loaded: what the message
            // does to the session does not depend on the document (see `opens_from_nothing`),
            // and the answer can be the stored chunks. Loading a large document here would
            // only delay that answer.
            self.ensure_sync_state(&doc, &peer)?;
            let key = (doc.clone(), peer.clone());
            let state = self.sync_states.get_mut(&key).expect("ensured above");
            let shared_before = state.shared_heads.clone();
            AutoCommit::new()
                .sync()
                .receive_sync_message(state, decoded)
                .map_err(|e| malformed(&label, e))?;
            let theirs = state.their_heads.as_deref().map(heads_digest);
            if state.shared_heads != shared_before {
                let encoded = state.encode();
                self.persist_sync_state(txn, &doc, &peer, &encoded)?;
            }
            return Ok(SyncApplied {
                changed: false,
                ours: heads_digest(&ours),
                theirs,
            });
        }
        self.load_sync_session(&doc, &peer, Some(txn))?;
        if !self.cache.contains_key(&doc) {
            let mut empty = AutoCommit::new();
            empty.set_actor(self.config.actor.clone());
            self.cache_insert(&doc, empty, ChunkStats::default());
        }
        let key = (doc.clone(), peer.clone());
        let state = self.sync_states.get_mut(&key).expect("loaded above");
        let shared_before = state.shared_heads.clone();
        let cached = self.cache.get_mut(&doc).expect("cached above");
        let before: Vec<ChangeHash> = cached.doc.get_heads();
        let message_heads = decoded.heads.clone();
        // A patch log of its own, dropped at once: Automerge 0.12 records the events of every
        // applied change in the document's patch log even while it is inactive, never clears
        // them, and re-indexes them all whenever a change brings a new actor. With the
        // registry's one actor per node that grew without bound and was re-walked per node met.
        cached
            .doc
            .sync()
            .receive_sync_message_log_patches(state, decoded, &mut PatchLog::null())
            .map_err(|e| malformed(&label, e))?;
        let theirs = state.their_heads.as_deref().map(heads_digest);
        if let Some(refused) = self.refused_heads.get(&key) {
            leave_out_refused(state, refused);
        }
        let persist = (state.shared_heads != shared_before).then(|| state.encode());
        let changed = cached.doc.get_heads() != before;
        let refused = match (changed, &sender) {
            (false, _) => Ok(()),
            (true, Sender::Peer) => self.check_authorship(&doc, &label, &before),
            (true, Sender::Reader) => {
                Err("the sender may read this document but not change it".to_owned())
            }
            (true, Sender::Client(vouch)) => self
                .check_client_change(&doc, &label, &before)
                .and_then(|()| self.vouch_for_client(&doc, &label, &before, vouch))
                .and_then(|()| self.check_authorship(&doc, &label, &before)),
        };
        let after = self
            .cache
            .get_mut(&doc)
            .expect("cached above")
            .doc
            .get_heads();
        if let Err(reason) = refused {
            let heard = self.hear_refused_peer(txn, &doc, &peer, &payload, message_heads)?;
            return Err(SyncRejected::Unauthorized {
                doc: label,
                reason,
                heard,
            }
            .into());
        }
        if after.is_empty() {
            // Nothing arrived for a document this node does not hold: keep no empty copy.
            self.cache.remove(&doc);
        }
        if changed && !before.is_empty() {
            self.observe_lag(&doc, &before);
        }
        if changed {
            self.store_changes(txn, &label, &doc, &before)?;
        }
        if let Some(encoded) = persist {
            self.persist_sync_state(txn, &doc, &peer, &encoded)?;
        }
        Ok(SyncApplied {
            changed,
            ours: heads_digest(&after),
            theirs,
        })
    }

    /// After refusing a message's changes: the session starts afresh from the persisted state
    /// and takes in what the message says the peer holds and needs, without its changes. The
    /// answer then carries this node's changes that the peer lacks: a peer whose own changes
    /// are refused still receives everyone else's (a revocation, a new CA), instead of the
    /// refusal ending every conversation before this side has said anything.
    fn hear_refused_peer(
        &mut self,
        txn: &redb::WriteTransaction,
        doc: &DocumentId,
        peer: &str,
        payload: &[u8],
        message_heads: Vec<ChangeHash>,
    ) -> std::result::Result<bool, ApplyError> {
        let key = (doc.clone(), peer.to_owned());
        self.sync_states.remove(&key);
        // The cached copy holds the refused changes; read the document again as stored.
        self.cache.remove(doc);
        self.load_sync_session(doc, peer, Some(txn))?;
        let Some(cached) = self.cache.get_mut(doc) else {
            return Ok(false);
        };
        if cached.doc.get_heads().is_empty() {
            return Ok(false);
        }
        let refused: Vec<ChangeHash> = message_heads
            .into_iter()
            .filter(|head| cached.doc.get_change_by_hash(head).is_none())
            .collect();
        let state = self.sync_states.get_mut(&key).expect("loaded above");
        let Ok(mut bare) = sync::Message::decode(payload) else {
            return Ok(false);
        };
        bare.changes = sync::ChunkList::empty();
        cached
            .doc
            .sync()
            .receive_sync_message_log_patches(state, bare, &mut PatchLog::null())
            .map_err(|e| malformed(&doc.to_string(), e))?;
        leave_out_refused(state, &refused);
        self.refused_heads.insert(key, refused);
        Ok(true)
    }

    /// Counts how long the changes a sync message brought took to get here from their writers,
    /// by the time each carries. A document new here is left out: its history is old, not late.
    fn observe_lag(&mut self, doc: &DocumentId, before: &[ChangeHash]) {
        /// Beyond this a change's time is a stopped clock or another unit, not a lag.
        const PLAUSIBLE_MS: i64 = 7 * 24 * 3600 * 1000;
        let Some(cached) = self.cache.get_mut(doc) else {
            return;
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        for change in cached.doc.get_changes(before) {
            let written = change.timestamp();
            // A clock a little ahead of this one reads as no lag; far off, as nothing.
            let lag = now - written;
            if written > 0 && (-1000..PLAUSIBLE_MS).contains(&lag) {
                self.metrics
                    .sync_lag_seconds
                    .observe(lag.max(0) as f64 / 1000.0);
            }
        }
    }

    /// Makes sure the document (if stored) is in the cache and the session with the peer has a
    /// sync state, restored from the persisted one when there is one. Within a sync batch
    /// (`txn`) the document is read as the batch's transaction holds it: an earlier message of
    /// the batch may have changed it, and it may have left the cache since (loading others
    /// evicts it, a refused message drops it).
    fn load_sync_session(
        &mut self,
        doc: &DocumentId,
        peer: &str,
        txn: Option<&redb::WriteTransaction>,
    ) -> Result<()> {
        if !self.cache.contains_key(doc) {
            let label = doc.to_string();
            let decoded = match txn {
                Some(txn) => {
                    let chunks = txn.open_table(CHUNKS).during("apply sync")?;
                    self.decode_from(&chunks, doc, &label)?
                }
                None => self.decode(doc, &label)?,
            };
            if let Some((decoded, stats)) = decoded {
                self.cache_insert(doc, decoded, stats);
            }
        } else if let Some(cached) = self.cache.get_mut(doc) {
            self.tick += 1;
            cached.last_used = self.tick;
        }
        self.ensure_sync_state(doc, peer)
    }

    /// Makes sure the session with the peer has a sync state, without loading the document.
    fn ensure_sync_state(&mut self, doc: &DocumentId, peer: &str) -> Result<()> {
        let key = (doc.clone(), peer.to_owned());
        if !self.sync_states.contains_key(&key) {
            // A persisted state restores only the heads both sides had in common: the new
            // session's first message offers what changed since, not the whole history.
            let state = self
                .load_sync_state(doc, peer)?
                .and_then(|bytes| sync::State::decode(&bytes).ok())
                .unwrap_or_default();
            self.sync_states.insert(key, state);
        }
        Ok(())
    }

    /// The heads of a document as the store holds it, `None` when it holds none of it.
    fn stored_heads(
        &self,
        txn: &redb::WriteTransaction,
        doc: &DocumentId,
    ) -> Result<Option<Vec<ChangeHash>>> {
        let table = txn.open_table(HEADS).during("apply sync")?;
        let heads = table
            .get(doc.to_string().as_str())
            .during("apply sync")?
            .map(|h| decode_heads(h.value()));
        Ok(heads.filter(|h| !h.is_empty()))
    }

    /// The answer to a peer that holds nothing of a document not loaded here: its stored chunks
    /// as they are, which carry what Automerge would send (a whole document in one V2 message)
    /// after loading the document and saving it again. `None` when that does not apply.
    ///
    /// The session's state moves as Automerge's own generation would move it, except that the
    /// hashes sent are not recorded; they only spare resending changes to a peer that has not
    /// yet acknowledged them, and the peer's next message acknowledges everything at once.
    fn answer_from_stored_chunks(
        &mut self,
        doc: &DocumentId,
        peer: &str,
    ) -> Result<Option<Option<Vec<u8>>>> {
        let key = (doc.clone(), peer.to_owned());
        let state = self.sync_states.get(&key).expect("ensured by the caller");
        // What they need does not matter: a peer without heads gets the whole document.
        let wants_everything = state.their_heads.as_deref() == Some(&[])
            && state
                .their_have
                .as_ref()
                .is_some_and(|have| have.iter().all(|h| h.last_sync.is_empty()))
            && state
                .their_capabilities
                .as_ref()
                .is_some_and(|caps| caps.contains(&sync::Capability::MessageV2))
            && !state.read_only
            && !state.peer_read_only
            && !state.needs_reset;
        if !wants_everything {
            return Ok(None);
        }
        let Some(heads) = self.heads(doc)?.filter(|h| !h.is_empty()) else {
            return Ok(None);
        };
        let label = doc.to_string();
        let txn = self.db.begin_read().during("generate sync")?;
        let state = self.sync_states.get(&key).expect("ensured by the caller");
        if state.have_responded && state.in_flight && state.last_sent_heads == heads {
            // Sent already and not yet acknowledged: Automerge would say nothing either.
            return Ok(Some(None));
        }
        // Snapshots first, then the changes since: one run of chunks that loading on the other
        // side takes as it takes a stored document (a change whose dependencies come later
        // waits for them).
        let chunks = txn.open_table(CHUNKS).during("generate sync")?;
        let stored = content_chunks(&chunks, doc, "generate sync")?;
        let snapshot_prefix = format!("{label}/snapshot/");
        let (snapshots, changes): (Vec<_>, Vec<_>) = stored
            .iter()
            .partition(|(chunk_key, _)| chunk_key.starts_with(&snapshot_prefix));
        let snapshot_bytes: u64 = snapshots.iter().map(|(_, n)| n).sum();
        let change_bytes: u64 = changes.iter().map(|(_, n)| n).sum();
        if snapshot_bytes == 0 || change_bytes > snapshot_bytes / 2 {
            // Changes stored one by one are several times the size of the same changes in a
            // compressed save: decoding and saving sends fewer bytes then.
            return Ok(None);
        }
        let mut whole = Vec::new();
        for (chunk_key, _) in stored {
            if let Some(bytes) = chunks.get(chunk_key.as_str()).during("generate sync")? {
                whole.extend_from_slice(&self.unseal(&chunk_key, bytes.value())?);
            }
        }
        if whole.is_empty() {
            return Ok(None);
        }
        let mut flags = sync::MessageFlags::new();
        flags.set(sync::MessageFlags::SUPPORTS_SYNC_RESET);
        let message = sync::Message {
            heads: heads.clone(),
            need: Vec::new(),
            // No Bloom filter: the peer holds nothing to compare against it, and an empty
            // `have` asks it for nothing but what it needs (nothing).
            have: Vec::new(),
            changes: sync::ChunkList::from(vec![whole]),
            flags: Some(flags),
            version: sync::MessageVersion::V2,
        };
        let state = self
            .sync_states
            .get_mut(&key)
            .expect("ensured by the caller");
        state.have_responded = true;
        state.last_sent_heads = heads;
        state.in_flight = true;
        Ok(Some(Some(message.encode())))
    }
}

fn malformed(doc: &str, reason: impl ToString) -> SyncRejected {
    SyncRejected::Malformed {
        doc: doc.to_owned(),
        reason: reason.to_string(),
    }
}

impl Store {
    /// Keeps the heads a session's two sides have in common, for the next session.
    fn persist_sync_state(
        &self,
        txn: &redb::WriteTransaction,
        doc: &DocumentId,
        peer: &str,
        encoded: &[u8],
    ) -> Result<()> {
        if peer.starts_with(SESSION_PEER_PREFIX) {
            return Ok(());
        }
        let key = sync_state_key(doc, peer)?.to_string();
        let mut chunks = txn.open_table(CHUNKS).during("apply sync")?;
        chunks
            .insert(key.as_str(), self.seal(&key, encoded).as_ref())
            .during("apply sync")?;
        Ok(())
    }
}

/// Whether a sync message comes from a peer that holds nothing of the document and can take
/// a whole document in one message: no heads, no changes, flags present (V2).
/// Receiving such a message sets the same session state whatever the receiving document holds
/// (Automerge's "the peer has lost all its data" reset), so it can be received without loading
/// the document.
fn opens_from_nothing(message: &sync::Message) -> bool {
    message.heads.is_empty()
        && message.changes.is_empty()
        && message.have.iter().all(|h| h.last_sync.is_empty())
        && message
            .flags
            .is_some_and(|f| !f.contains(sync::MessageFlags::READ_ONLY))
}

enum ApplyError {
    Rejected(SyncRejected),
    Store(StoreError),
}

impl From<SyncRejected> for ApplyError {
    fn from(e: SyncRejected) -> Self {
        ApplyError::Rejected(e)
    }
}

impl From<StoreError> for ApplyError {
    fn from(e: StoreError) -> Self {
        ApplyError::Store(e)
    }
}

/// The id as the protocol carries it (16 bytes).
fn doc_bytes(id: &DocumentId) -> DocIdBytes {
    id.as_bytes()
        .try_into()
        .expect("document ids of this store are 16 bytes")
}

/// Takes the heads of refused changes out of what the peer is said to hold. With none left,
/// the peer is taken to hold what both sides shared: an empty list would say it lost everything.
fn leave_out_refused(state: &mut sync::State, refused: &[ChangeHash]) {
    if refused.is_empty() {
        return;
    }
    if let Some(theirs) = state.their_heads.as_mut() {
        theirs.retain(|head| !refused.contains(head));
        if theirs.is_empty() {
            theirs.clone_from(&state.shared_heads);
        }
    }
}

fn doc_id(bytes: &DocIdBytes) -> DocumentId {
    DocumentId::try_from(bytes.to_vec()).expect("16 bytes make a document id")
}

impl CatalogueItem {
    /// The entry as a catalogue carries it.
    pub fn to_entry(&self) -> CatalogueEntry {
        CatalogueEntry {
            doc: doc_bytes(&self.id),
            digest: self.digest,
            name: self.name.to_string(),
        }
    }
}

impl Replica for Store {
    type Error = StoreError;

    fn catalogue(&mut self) -> Result<Vec<CatalogueEntry>> {
        Ok(self
            .sync_catalogue()?
            .iter()
            .map(CatalogueItem::to_entry)
            .collect())
    }

    fn generate(&mut self, doc: &DocIdBytes, peer: &str) -> Result<Option<Vec<u8>>> {
        self.sync_generate(&doc_id(doc), peer)
    }

    fn apply(
        &mut self,
        batch: Vec<ApplyRequest>,
    ) -> Result<Vec<std::result::Result<Applied, ApplyFailed>>> {
        let batch = batch
            .into_iter()
            .map(|r| SyncApply {
                doc: doc_id(&r.doc),
                peer: r.peer,
                name: r.name,
                payload: r.payload,
                sender: Sender::Peer,
            })
            .collect();
        Ok(self
            .sync_apply(batch)?
            .into_iter()
            .map(|outcome| match outcome {
                Ok(a) => Ok(Applied {
                    changed: a.changed,
                    ours: a.ours,
                    theirs: a.theirs,
                }),
                Err(rejected) => Err(ApplyFailed {
                    peer_at_fault: rejected.peer_at_fault(),
                    heard: matches!(rejected, SyncRejected::Unauthorized { heard: true, .. }),
                    reason: rejected.to_string(),
                }),
            })
            .collect())
    }

    fn forget_peer(&mut self, peer: &str) {
        self.sync_forget_peer(peer);
    }

    fn restart_session(&mut self, doc: &DocIdBytes, peer: &str) {
        self.sync_restart_session(&doc_id(doc), peer);
    }
}
