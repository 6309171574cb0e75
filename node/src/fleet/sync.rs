//! Document sync in a running node: the replication machine of `mesh::proto::sync` driven over
//! the mesh, with the store as its replica.
//!
//! One actor owns the [`Replicator`]. It never waits on the network or the store while events
//! are waiting: store work runs as one batch at a time on the store thread (answers come back
//! as events), and frames go to one forwarding task per peer, which waits for room in that
//! peer's connection. A peer whose forwarding queue overflows is not reading: its connection is
//! closed, and the next connection resumes from the persisted sync state.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crdt_store::{Store, StoreError, StoreHandle};
use mesh::net::driver::{MeshConfig, MeshEvent, MeshHandle};
use mesh::proto::election::Hierarchy;
use mesh::proto::membership::NodeId;
use mesh::proto::sync::{
    PeerSyncStatus, Replicator, Served, SharePolicy, SyncConfig, SyncIn, SyncOut,
};
use mesh::proto::transfer::{TransferIn, TransferStats};
use mesh::proto::wire::{BlobHash, CatalogueEntry, DocIdBytes, Message};

use crate::fleet::transfer::{BlobOutcome, Blobs};
use tokio::sync::{Notify, broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;

/// Commands queued for the sync actor.
const COMMANDS_CAP: usize = 64;
/// Frames queued for one peer's forwarding task. The protocol bounds what is in flight (a
/// generate per document and peer, at most `max_outstanding` at once), so a full queue means
/// the peer stopped reading.
const FORWARD_CAP: usize = 8192;

/// Local document changes waiting for the actor, coalesced per document (so the set is bounded
/// by the number of documents).
#[derive(Debug)]
pub struct ChangeFeed {
    changed: Mutex<Pending>,
    notify: Notify,
    /// Bumped when the `mesh` document changes; several tasks follow it.
    mesh: watch::Sender<u64>,
    /// Bumped when a workflow document changes.
    workflows: watch::Sender<u64>,
    /// Workflow documents changed since the scheduler's follower last looked, by name; `None`
    /// after a reopen, which asks for everything.
    workflow_names: Mutex<Option<BTreeSet<String>>>,
    /// Results and rollup documents changed since the rollup writer last looked, by name.
    results: Mutex<BTreeSet<String>>,
    results_changed: Notify,
    /// Every changed document, for followers of single documents (the WebSocket endpoint's
    /// clients). A follower that lags behind looks at all of its documents again.
    docs: broadcast::Sender<DocIdBytes>,
}

/// Changed documents kept for followers that are behind; beyond it they look at everything.
const DOC_CHANGES_CAP: usize = 1024;

impl Default for ChangeFeed {
    fn default() -> Self {
        ChangeFeed {
            changed: Mutex::default(),
            notify: Notify::new(),
            mesh: watch::channel(0).0,
            workflows: watch::channel(0).0,
            workflow_names: Mutex::new(Some(BTreeSet::new())),
            results: Mutex::default(),
            results_changed: Notify::new(),
            docs: broadcast::channel(DOC_CHANGES_CAP).0,
        }
    }
}

/// What the actor has not taken from the feed yet.
#[derive(Debug, Default)]
struct Pending {
    /// Everything the store held when it was last reopened after a failure, if it was since
    /// the actor last looked; changes before it are superseded by it.
    reopened: Option<Vec<CatalogueEntry>>,
    /// Changes since then, coalesced per document.
    changed: BTreeMap<DocIdBytes, CatalogueEntry>,
}

impl ChangeFeed {
    /// Records that the store was reopened, holding `held`; called on the store thread by the
    /// store's reopen listener. Any document may differ from what was reported before (a
    /// commit that never became durable is rolled back), so every follower looks again.
    pub fn reopened(&self, held: Vec<CatalogueEntry>) {
        {
            let mut results = self.results.lock().expect("change feed lock");
            for entry in &held {
                if entry.name.starts_with("results/") || entry.name.starts_with("rollup/") {
                    results.insert(entry.name.clone());
                }
            }
        }
        self.results_changed.notify_one();
        self.mesh.send_modify(|v| *v += 1);
        *self.workflow_names.lock().expect("change feed lock") = None;
        self.workflows.send_modify(|v| *v += 1);
        for entry in &held {
            let _ = self.docs.send(entry.doc);
        }
        let mut pending = self.changed.lock().expect("change feed lock");
        pending.changed.clear();
        pending.reopened = Some(held);
        drop(pending);
        self.notify.notify_one();
    }

    /// Records a change; called on the store thread by the store's change listener.
    pub fn push(&self, entry: CatalogueEntry) {
        if entry.name == "mesh" {
            self.mesh.send_modify(|v| *v += 1);
        } else if entry.name.starts_with("workflow/") {
            if let Some(names) = &mut *self.workflow_names.lock().expect("change feed lock") {
                names.insert(entry.name.clone());
            }
            self.workflows.send_modify(|v| *v += 1);
        } else if entry.name.starts_with("results/") || entry.name.starts_with("rollup/") {
            self.results
                .lock()
                .expect("change feed lock")
                .insert(entry.name.clone());
            self.results_changed.notify_one();
        }
        // No follower is not an error: the endpoint may have no client.
        let _ = self.docs.send(entry.doc);
        self.changed
            .lock()
            .expect("change feed lock")
            .changed
            .insert(entry.doc, entry);
        self.notify.notify_one();
    }

    /// Follows changes of the `mesh` document.
    pub fn mesh_changes(&self) -> watch::Receiver<u64> {
        self.mesh.subscribe()
    }

    /// Waits until a results or rollup document changed, then takes the names of those that
    /// did.
    pub async fn results_changed(&self) -> BTreeSet<String> {
        loop {
            let taken = std::mem::take(&mut *self.results.lock().expect("change feed lock"));
            if !taken.is_empty() {
                return taken;
            }
            self.results_changed.notified().await;
        }
    }

    /// Follows changes of every document, by id.
    pub fn doc_changes(&self) -> broadcast::Receiver<DocIdBytes> {
        self.docs.subscribe()
    }

    /// Follows changes of workflow documents.
    pub fn workflow_changes(&self) -> watch::Receiver<u64> {
        self.workflows.subscribe()
    }

    /// The workflow documents changed since the last call, by name; `None` when every
    /// workflow must be looked at again (the store was reopened).
    pub fn take_changed_workflows(&self) -> Option<BTreeSet<String>> {
        self.workflow_names
            .lock()
            .expect("change feed lock")
            .replace(BTreeSet::new())
    }

    /// What the replicator must be told, in order: a reopened store's documents first, then
    /// the changes since.
    fn take(&self) -> Vec<SyncIn> {
        let pending = std::mem::take(&mut *self.changed.lock().expect("change feed lock"));
        pending
            .reopened
            .map(SyncIn::StoreReopened)
            .into_iter()
            .chain(pending.changed.into_values().map(SyncIn::LocalChanged))
            .collect()
    }
}

enum Command {
    Status(oneshot::Sender<Vec<PeerSyncStatus>>),
    SharePolicy(oneshot::Sender<SharePolicy>),
    Resync(Option<NodeId>),
    Policy(SharePolicy),
    WantBlobs(Vec<BlobHash>, mpsc::UnboundedSender<BlobOutcome>),
    AttachArtifacts(crate::fleet::artifacts::Artifacts),
    TransferStats(oneshot::Sender<TransferStats>),
}

/// A cheap handle to the sync actor.
#[derive(Debug, Clone)]
pub struct SyncHandle {
    commands: mpsc::Sender<Command>,
    /// What replication saw, for `rhizome explain`.
    pub diagnostics: crate::fleet::diagnostics::Diagnostics,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::Status(_) => "Status",
            Command::SharePolicy(_) => "SharePolicy",
            Command::Resync(_) => "Resync",
            Command::Policy(_) => "Policy",
            Command::WantBlobs(..) => "WantBlobs",
            Command::AttachArtifacts(_) => "AttachArtifacts",
            Command::TransferStats(_) => "TransferStats",
        })
    }
}

impl SyncHandle {
    /// Where replication with each connected peer stands.
    pub async fn status(&self) -> Vec<PeerSyncStatus> {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Status(tx)).await.is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// The share policy in force: which peer may see which document.
    pub async fn share_policy(&self) -> SharePolicy {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::SharePolicy(tx)).await.is_err() {
            return SharePolicy::default();
        }
        rx.await.unwrap_or_default()
    }

    /// Compares catalogues with a peer (or all) again.
    pub async fn resync(&self, peer: Option<NodeId>) {
        let _ = self.commands.send(Command::Resync(peer)).await;
    }

    /// Asks peers for artifact blobs this node lacks; each outcome arrives on the receiver.
    pub async fn want_blobs(&self, hashes: Vec<BlobHash>) -> mpsc::UnboundedReceiver<BlobOutcome> {
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = self.commands.send(Command::WantBlobs(hashes, tx)).await;
        rx
    }

    /// Lets peers be served from (and blobs be stored into) the node's artifact store.
    pub async fn attach_artifacts(&self, artifacts: crate::fleet::artifacts::Artifacts) {
        let _ = self
            .commands
            .send(Command::AttachArtifacts(artifacts))
            .await;
    }

    /// Blobs moved since start.
    pub async fn transfer_stats(&self) -> TransferStats {
        let (tx, rx) = oneshot::channel();
        if self
            .commands
            .send(Command::TransferStats(tx))
            .await
            .is_err()
        {
            return TransferStats::default();
        }
        rx.await.unwrap_or_default()
    }

    /// Tells replication who aggregates which zone.
    pub async fn set_policy(&self, policy: SharePolicy) {
        let _ = self.commands.send(Command::Policy(policy)).await;
    }

    /// Asks connected peers (or one) to compare again, then waits until every shared document
    /// is known to be equal on both sides, or until `timeout`. Returns the last status of the
    /// peers asked about.
    pub async fn sync(
        &self,
        peer: Option<NodeId>,
        timeout: Duration,
    ) -> (bool, Vec<PeerSyncStatus>) {
        self.resync(peer.clone()).await;
        let deadline = Instant::now() + timeout;
        // The resync request reaches the peer and its answer comes back before the status means
        // anything; polling covers that and any sessions it starts.
        let mut wait = Duration::from_millis(5);
        loop {
            tokio::time::sleep(wait).await;
            let status: Vec<PeerSyncStatus> = self
                .status()
                .await
                .into_iter()
                .filter(|s| peer.as_ref().is_none_or(|p| *p == s.peer))
                .collect();
            let converged = status.iter().all(|s| s.pending.is_empty())
                && (peer.is_none() || !status.is_empty());
            if converged || Instant::now() >= deadline {
                return (converged, status);
            }
            wait = (wait * 2).min(Duration::from_millis(100));
        }
    }
}

/// The parts of a node that replicate documents, running.
#[derive(Debug)]
pub struct Replication {
    /// The store thread.
    pub store: StoreHandle,
    /// The mesh driver.
    pub mesh: MeshHandle,
    /// The sync actor.
    pub sync: SyncHandle,
    /// Every committed change of the store, as the node's tasks follow it.
    pub changes: Arc<ChangeFeed>,
    /// The election's latest view, as the sync actor passes it on.
    pub hierarchy: watch::Receiver<Option<Hierarchy>>,
}

/// Starts a node's replication as `rhizome start` does: the store on its thread with its
/// change listener feeding a [`ChangeFeed`], the mesh driver, and the sync actor over both.
/// `observe` also sees every committed change, on the store thread just before the feed (the
/// daemon passes a no-op; benchmarks timestamp changes with it, so it must return at once).
pub async fn start(
    me: NodeId,
    config: SyncConfig,
    mut store: Store,
    mesh: MeshConfig,
    audit: Arc<crate::security::audit::Audit>,
    mut observe: impl FnMut(&CatalogueEntry) + Send + 'static,
) -> anyhow::Result<Replication> {
    let changes = Arc::new(ChangeFeed::default());
    let feed = changes.clone();
    store.set_change_listener(move |entry| {
        observe(&entry);
        feed.push(entry);
    });
    let feed = changes.clone();
    store.set_reopen_listener(move |held| feed.reopened(held));
    let store = StoreHandle::spawn(store);
    let (mesh, events) = mesh::net::driver::spawn(mesh).await?;
    let (hierarchy_tx, hierarchy) = watch::channel(None);
    let sync = spawn(
        me,
        config,
        store.clone(),
        mesh.clone(),
        events,
        changes.clone(),
        hierarchy_tx,
        audit,
    )
    .await?;
    Ok(Replication {
        store,
        mesh,
        sync,
        changes,
        hierarchy,
    })
}

/// A batch of sync work on the store thread: the answers, and the store's failure if it
/// failed or refused (it is reopening).
type StoreCall = Pin<Box<dyn Future<Output = Result<(Served, Option<String>), StoreError>> + Send>>;

/// Starts the sync actor. `events` are the mesh's events (the actor consumes all of them);
/// `changes` is fed by the store's change listener.
#[allow(clippy::too_many_arguments)]
pub async fn spawn(
    me: NodeId,
    config: SyncConfig,
    store: StoreHandle,
    mesh: MeshHandle,
    events: mpsc::Receiver<MeshEvent>,
    changes: Arc<ChangeFeed>,
    hierarchy: watch::Sender<Option<Hierarchy>>,
    audit: Arc<crate::security::audit::Audit>,
) -> Result<SyncHandle, StoreError> {
    let catalogue = store
        .call(mesh::proto::sync::Replica::catalogue)
        .recv()
        .await?;
    let epoch = Instant::now();
    let mut replicator = Replicator::new(me.clone(), config);
    replicator.handle(SyncIn::LocalDocs(catalogue), Duration::ZERO);
    let (commands, command_rx) = mpsc::channel(COMMANDS_CAP);
    let diagnostics = crate::fleet::diagnostics::Diagnostics::default();
    let (blobs, blob_answers) = Blobs::new(me.clone(), mesh.clone());
    let actor = Actor {
        blobs,
        diagnostics: diagnostics.clone(),
        replicator,
        store,
        mesh,
        forwarders: BTreeMap::new(),
        hierarchy,
        waiting: Vec::new(),
        epoch,
        audit,
    };
    let span = tracing::info_span!("sync", node = %me);
    tokio::spawn(tracing::Instrument::instrument(
        actor.run(command_rx, events, changes, blob_answers),
        span,
    ));
    Ok(SyncHandle {
        commands,
        diagnostics,
    })
}

struct Actor {
    replicator: Replicator,
    /// Artifact blobs: fetched from and served to peers under the same byte budget.
    blobs: Blobs,
    store: StoreHandle,
    mesh: MeshHandle,
    forwarders: BTreeMap<NodeId, mpsc::Sender<Message>>,
    /// The election's latest view, for whoever derives the share policy from it.
    hierarchy: watch::Sender<Option<Hierarchy>>,
    /// Store operations waiting for the batch in flight to finish.
    waiting: Vec<SyncOut>,
    epoch: Instant,
    /// Where refused changes and refused handshakes are recorded.
    audit: Arc<crate::security::audit::Audit>,
    /// What `rhizome explain` is told.
    diagnostics: crate::fleet::diagnostics::Diagnostics,
}

impl Actor {
    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut events: mpsc::Receiver<MeshEvent>,
        changes: Arc<ChangeFeed>,
        mut blob_answers: mpsc::UnboundedReceiver<TransferIn>,
    ) {
        // One store batch at a time; what arrives meanwhile waits in `waiting`.
        let mut store_call: Option<StoreCall> = None;
        loop {
            if store_call.is_none() && !self.waiting.is_empty() {
                let ops = std::mem::take(&mut self.waiting);
                let ticket = self.store.call_even_if_broken(move |s, refusal| {
                    if let Some(refusal) = refusal {
                        let reason = refusal.to_string();
                        return (Served::refused(ops, &reason), Some(reason));
                    }
                    let (served, failure) = mesh::proto::sync::serve(s, ops);
                    if let Some(e) = &failure {
                        s.note_failure(e);
                    }
                    (served, failure.map(|e| e.to_string()))
                });
                store_call = Some(Box::pin(ticket.recv()));
            }
            let wake = self
                .replicator
                .poll_timeout(self.now())
                .into_iter()
                .chain(self.blobs.poll_timeout())
                .min()
                .map(|t| self.epoch + t);
            // Unbiased: a steady stream of frames from peers must not starve local changes.
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Status(reply)) => {
                        let peers: Vec<NodeId> = self.replicator.peers().cloned().collect();
                        let status = peers.iter().filter_map(|p| self.replicator.status(p)).collect();
                        let _ = reply.send(status);
                    }
                    Some(Command::SharePolicy(reply)) => {
                        let _ = reply.send(self.replicator.policy().clone());
                    }
                    Some(Command::Resync(peer)) => self.input(SyncIn::Resync(peer)),
                    Some(Command::Policy(policy)) => self.input(SyncIn::Policy(policy)),
                    Some(Command::WantBlobs(hashes, reply)) => {
                        let now = self.now();
                        self.blobs.want(hashes, reply, now);
                        self.dispatch();
                    }
                    Some(Command::AttachArtifacts(artifacts)) => self.blobs.attach(artifacts),
                    Some(Command::TransferStats(reply)) => {
                        let _ = reply.send(self.blobs.stats());
                    }
                    None => return,
                },
                Some(answer) = blob_answers.recv() => {
                    let now = self.now();
                    self.blobs.input(answer, now);
                    self.dispatch();
                }
                served = async { store_call.as_mut().expect("guarded").await }, if store_call.is_some() => {
                    store_call = None;
                    match served {
                        Ok((served, failure)) => {
                            if let Some(failure) = failure {
                                // The store reopens itself; once it has, the reopen listener
                                // starts a new round with every peer. Until then sync work is
                                // answered as refused, so no peer is told we hold what we
                                // could not store.
                                tracing::warn!(error = %failure, "sync work refused: the store is not serving");
                            }
                            self.route(served.network);
                            for answer in served.answers {
                                if let SyncIn::Applied { peer, doc, outcome: Err(failed) } = &answer {
                                    self.diagnostics.sync_refused(
                                        peer,
                                        &crdt_store::samod_core::DocumentId::try_from(doc.to_vec())
                                            .map(|d| d.to_string())
                                            .unwrap_or_default(),
                                        &failed.reason,
                                    );
                                    crate::ops::metrics::events().inc(
                                        "rhizome_sync_messages_refused_total",
                                        "Sync messages from peers not applied, by reason.",
                                        crate::ops::metrics::labels([(
                                            "reason",
                                            refusal_reason(&failed.reason),
                                        )]),
                                    );
                                    if crdt_store::SyncRejected::is_refused_change(&failed.reason) {
                                        self.audit.record(
                                            crate::security::audit::Kind::ChangeRefused,
                                            peer.clone(),
                                            failed.reason.clone(),
                                        );
                                    }
                                }
                                self.input(answer);
                            }
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "document sync stops: the store thread is gone");
                            return;
                        }
                    }
                }
                event = events.recv() => match event {
                    Some(MeshEvent::PeerUp(peer)) => {
                        peer_event("up");
                        self.diagnostics.peer_up(&peer);
                        self.start_forwarder(&peer);
                        let now = self.now();
                        self.blobs.peer_up(&peer, now);
                        self.input(SyncIn::PeerUp(peer));
                    }
                    Some(MeshEvent::PeerDown(peer, why)) => {
                        peer_event("down");
                        self.diagnostics.peer_down(&peer, &why);
                        self.forwarders.remove(&peer);
                        let now = self.now();
                        self.blobs.peer_down(&peer, now);
                        self.input(SyncIn::PeerDown(peer));
                    }
                    Some(MeshEvent::Received(peer, message)) => {
                        if matches!(
                            message,
                            Message::ChunkWant { .. } | Message::ChunkData { .. } | Message::ChunkMissing { .. }
                        ) {
                            let now = self.now();
                            self.blobs.input(TransferIn::Received(peer, message), now);
                            self.dispatch();
                        } else {
                            self.input(SyncIn::Received(peer, message));
                        }
                    }
                    Some(MeshEvent::DialFailed { addr, reason }) => {
                        self.diagnostics.dial_failed(&addr, &reason);
                        crate::ops::metrics::events().inc(
                            "rhizome_mesh_dials_failed_total",
                            "Connection attempts to a known address that failed.",
                            Vec::new(),
                        );
                    }
                    Some(MeshEvent::HandshakeRefused { from, reason }) => {
                        self.diagnostics.handshake_refused(&from.to_string(), &reason);
                        crate::ops::metrics::events().inc(
                            "rhizome_mesh_handshakes_refused_total",
                            "Connections refused at the TLS handshake, by reason.",
                            crate::ops::metrics::labels([("reason", handshake_reason(&reason))]),
                        );
                        self.audit.record(
                            crate::security::audit::Kind::HandshakeRefused,
                            from.to_string(),
                            reason,
                        );
                    }
                    Some(MeshEvent::Hierarchy(hierarchy)) => {
                        crate::ops::metrics::events().inc(
                            "rhizome_mesh_chain_changes_total",
                            "Times the aggregator chain or the zones this node aggregates changed.",
                            Vec::new(),
                        );
                        tracing::info!(chain = ?hierarchy.chain, aggregates = ?hierarchy.aggregates, "aggregator chain");
                        let now = self.now();
                        self.blobs.chain(&hierarchy, now);
                        self.dispatch();
                        let _ = self.hierarchy.send(Some(hierarchy));
                    }
                    None => return,
                },
                () = changes.notify.notified() => {
                    for input in changes.take() {
                        self.input(input);
                    }
                }
                () = async {
                    match wake {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => {
                    let now = self.now();
                    let stalls = self.replicator.stall_rounds();
                    self.replicator.handle_timeout(now);
                    self.blobs.handle_timeout(now);
                    let healed = self.replicator.stall_rounds() - stalls;
                    if healed > 0 {
                        tracing::info!(
                            peers = healed,
                            "sync messages were not applied by a peer (its disk full, its store \
                             recovering, or it did not share them then): comparing again"
                        );
                    }
                    self.dispatch();
                }
            }
        }
    }

    fn input(&mut self, event: SyncIn) {
        let now = self.now();
        self.replicator.handle(event, now);
        self.dispatch();
    }

    /// Sends frames now; store operations wait for the next batch. Artifact blobs go out while
    /// the byte budget is open to them, and hold results back while they wait for it.
    fn dispatch(&mut self) {
        let now = self.now();
        let open = self.replicator.artifacts_may_send(now);
        let waiting = self.blobs.budget(open);
        self.replicator.set_artifacts_waiting(waiting);
        let mut requests = Vec::new();
        let replicator = &mut self.replicator;
        self.blobs.dispatch(
            |peer, message| requests.push(SyncOut::Send(peer, message)),
            |bytes| replicator.spend(bytes),
        );
        self.route(requests);
        let mut network = Vec::new();
        for out in self.replicator.drain() {
            match out {
                SyncOut::Send(..) | SyncOut::Close(..) => network.push(out),
                store_op => self.waiting.push(store_op),
            }
        }
        self.route(network);
    }

    fn route(&mut self, network: Vec<SyncOut>) {
        for out in network {
            match out {
                SyncOut::Send(peer, message) => {
                    let Some(forwarder) = self.forwarders.get(&peer) else {
                        continue;
                    };
                    if let Err(mpsc::error::TrySendError::Full(_)) = forwarder.try_send(message) {
                        self.close(peer, "not reading: its sync queue is full".into());
                    }
                }
                SyncOut::Close(peer, reason) => self.close(peer, reason),
                _ => unreachable!("only network outputs are routed"),
            }
        }
    }

    fn close(&mut self, peer: NodeId, reason: String) {
        tracing::warn!(%peer, %reason, "closing the connection");
        self.forwarders.remove(&peer);
        let mesh = self.mesh.clone();
        tokio::spawn(async move {
            let _ = mesh.disconnect(&peer, &reason).await;
        });
    }

    /// One task per connected peer moves frames into its connection's queue, waiting for room
    /// there without holding up the actor.
    fn start_forwarder(&mut self, peer: &NodeId) {
        let (tx, mut rx) = mpsc::channel::<Message>(FORWARD_CAP);
        self.forwarders.insert(peer.clone(), tx);
        let mesh = self.mesh.clone();
        let peer = peer.clone();
        tokio::spawn(async move {
            let Ok(Some(outbox)) = mesh.outbox(&peer).await else {
                return;
            };
            while let Some(message) = rx.recv().await {
                if outbox.send(message).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// Counts a peer coming up or going down (failure detections are the downs).
fn peer_event(event: &str) {
    crate::ops::metrics::events().inc(
        "rhizome_mesh_peer_events_total",
        "Peers connected (up) and lost (down: a goodbye, a failure detected, a closed connection).",
        crate::ops::metrics::labels([("event", event)]),
    );
}

/// A closed set of reasons for a refused sync message, from its message.
fn refusal_reason(reason: &str) -> &'static str {
    if crdt_store::SyncRejected::is_refused_change(reason) {
        "unauthorized"
    } else if reason.starts_with("malformed") {
        "malformed"
    } else if reason.contains("is not named") {
        "wrong_name"
    } else if reason.contains("free") || reason.contains("space") {
        "low_space"
    } else if reason.contains("retired") {
        "retired"
    } else {
        "other"
    }
}

/// A closed set of reasons for a refused handshake, from the TLS error.
fn handshake_reason(reason: &str) -> &'static str {
    let lower = reason.to_ascii_lowercase();
    if lower.contains("revoked") {
        "revoked"
    } else if lower.contains("expired") || lower.contains("notvalidyet") {
        "expired"
    } else if lower.contains("unknownissuer") || lower.contains("badsignature") {
        "unknown_ca"
    } else if lower.contains("nocertificate") || lower.contains("no certificate") {
        "no_certificate"
    } else {
        "other"
    }
}
