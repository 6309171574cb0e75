//! Artifact blobs over the mesh in a running node: the transfer machine of
//! `mesh::proto::transfer`, driven by the sync actor (so that blobs and document sync share one
//! byte budget, in one order of priority), with the artifact store for reading and storing
//! blobs on a thread of their own ([`BlobIo`]).
//!
//! Every blob received is stored in a pack file under its hash, checked against it
//! before it is written; a manifest fetched for this node is then installed from there by
//! [`crate::fleet::artifacts::fetch`]. A node that passes a blob on for its members keeps it
//! too, so each member after the first is served from the site's own copy.

use std::collections::BTreeMap;
use std::time::Duration;

use mesh::net::driver::MeshHandle;
use mesh::proto::election::Hierarchy;
use mesh::proto::membership::NodeId;
use mesh::proto::transfer::{Transfer, TransferConfig, TransferIn, TransferOut, TransferStats};
use mesh::proto::wire::{BlobHash, Message};
use tokio::sync::mpsc;

use crate::fleet::artifacts::Artifacts;

/// Blobs queued for one peer's bulk stream: the machine keeps at most a few in flight per peer.
const BULK_QUEUE: usize = 16;

/// What a local want is told: the blob, and whether it is stored.
pub type BlobOutcome = (BlobHash, Result<(), String>);

/// The node's side of the transfer machine.
#[derive(Debug)]
pub struct Blobs {
    me: NodeId,
    machine: Transfer,
    artifacts: Option<Artifacts>,
    mesh: MeshHandle,
    answers: mpsc::UnboundedSender<TransferIn>,
    bulk: BTreeMap<NodeId, mpsc::Sender<Message>>,
    io: BlobIo,
    waiters: BTreeMap<BlobHash, Vec<mpsc::UnboundedSender<BlobOutcome>>>,
}

impl Blobs {
    /// The machine, and the receiver of the answers of its blocking work and bulk forwarders,
    /// which the actor feeds back through [`Blobs::input`].
    pub fn new(me: NodeId, mesh: MeshHandle) -> (Blobs, mpsc::UnboundedReceiver<TransferIn>) {
        let (answers, answers_rx) = mpsc::unbounded_channel();
        (
            Blobs {
                me,
                machine: Transfer::new(TransferConfig::default()),
                artifacts: None,
                mesh,
                answers,
                bulk: BTreeMap::new(),
                io: BlobIo::start(),
                waiters: BTreeMap::new(),
            },
            answers_rx,
        )
    }

    /// The node's artifact store, once it is open. Until then every request of a peer is
    /// answered "missing" and nothing can be stored.
    pub fn attach(&mut self, artifacts: Artifacts) {
        self.artifacts = Some(artifacts);
    }

    pub fn stats(&self) -> TransferStats {
        self.machine.stats()
    }

    pub fn peer_up(&mut self, peer: &NodeId, now: Duration) {
        let (tx, mut rx) = mpsc::channel::<Message>(BULK_QUEUE);
        self.bulk.insert(peer.clone(), tx);
        let mesh = self.mesh.clone();
        let answers = self.answers.clone();
        let who = peer.clone();
        tokio::spawn(async move {
            let outbox = mesh.bulk_outbox(&who).await.ok().flatten();
            while let Some(message) = rx.recv().await {
                if let Some(outbox) = &outbox {
                    let _ = outbox.send(message).await;
                }
                // Handed over (or the connection is gone): the slot is free either way.
                if answers.send(TransferIn::Sent(who.clone())).is_err() {
                    return;
                }
            }
        });
        self.machine.handle(TransferIn::PeerUp(peer.clone()), now);
    }

    pub fn peer_down(&mut self, peer: &NodeId, now: Duration) {
        self.bulk.remove(peer);
        self.machine.handle(TransferIn::PeerDown(peer.clone()), now);
    }

    /// The aggregators above this node, nearest first.
    pub fn chain(&mut self, hierarchy: &Hierarchy, now: Duration) {
        let mut chain: Vec<NodeId> = Vec::new();
        for aggregator in hierarchy.chain.iter().filter_map(|(_, a)| a.as_ref()) {
            if *aggregator != self.me && !chain.contains(aggregator) {
                chain.push(aggregator.clone());
            }
        }
        self.machine.handle(TransferIn::Chain(chain), now);
    }

    /// This node needs these blobs; each outcome goes to `reply`.
    pub fn want(
        &mut self,
        hashes: Vec<BlobHash>,
        reply: mpsc::UnboundedSender<BlobOutcome>,
        now: Duration,
    ) {
        for hash in hashes {
            self.waiters.entry(hash).or_default().push(reply.clone());
            self.machine.handle(TransferIn::Want(hash), now);
        }
    }

    pub fn input(&mut self, event: TransferIn, now: Duration) {
        self.machine.handle(event, now);
    }

    pub fn handle_timeout(&mut self, now: Duration) {
        self.machine.handle_timeout(now);
    }

    pub fn poll_timeout(&self) -> Option<Duration> {
        self.machine.poll_timeout()
    }

    /// Opens or closes the serving of blobs under the byte budget; returns whether blobs wait
    /// for it.
    pub fn budget(&mut self, open: bool) -> bool {
        self.machine.set_budget_open(open);
        self.machine.wants_budget()
    }

    /// Carries out what the machine asked for: requests go to `control` (the peer's sync
    /// stream), blobs to the peer's bulk stream, their bytes counted by `spend`.
    pub fn dispatch(
        &mut self,
        mut control: impl FnMut(NodeId, Message),
        mut spend: impl FnMut(usize),
    ) {
        for out in self.machine.drain() {
            match out {
                TransferOut::Send(peer, message @ Message::ChunkData { .. }) => {
                    let len = message.encoded_len();
                    spend(len);
                    crate::ops::metrics::events().add(
                        "rhizome_artifact_bytes_served_total",
                        "Bytes of artifact blobs sent to peers.",
                        Vec::new(),
                        len as f64,
                    );
                    let queued = self
                        .bulk
                        .get(&peer)
                        .is_some_and(|bulk| bulk.try_send(message).is_ok());
                    if !queued {
                        let _ = self.answers.send(TransferIn::Sent(peer));
                    }
                }
                TransferOut::Send(peer, message) => control(peer, message),
                TransferOut::Read { peer, hash, hops } => {
                    let answers = self.answers.clone();
                    let Some(artifacts) = self.artifacts.clone() else {
                        let _ = answers.send(TransferIn::Read {
                            peer,
                            hash,
                            hops,
                            bytes: None,
                        });
                        continue;
                    };
                    self.io.run(move || {
                        let hex = hex::encode(hash);
                        let bytes = match survive(|| artifacts.read_blob(&hex)) {
                            Ok(Ok(bytes)) => bytes,
                            Ok(Err(e)) => {
                                tracing::warn!(blob = %hex, error = %e, "cannot read a blob a peer asked for");
                                None
                            }
                            Err(panic) => {
                                tracing::error!(blob = %hex, %panic, "reading a blob a peer asked for failed");
                                None
                            }
                        };
                        let _ = answers.send(TransferIn::Read {
                            peer,
                            hash,
                            hops,
                            bytes,
                        });
                    });
                }
                TransferOut::Store { hash, from, bytes } => {
                    let answers = self.answers.clone();
                    let artifacts = self.artifacts.clone();
                    self.io.run(move || {
                        let hex = hex::encode(hash);
                        let len = bytes.len();
                        let outcome = match artifacts {
                            None => Err("the artifact store is not open yet".to_owned()),
                            Some(artifacts) => match survive(|| artifacts.store_blob(&hex, &bytes)) {
                                Ok(stored) => stored.map_err(|e| format!("{e:#}")),
                                Err(panic) => Err(panic),
                            },
                        };
                        // The buffer goes back to its pool now, not when the answer is read.
                        drop(bytes);
                        match &outcome {
                            Ok(()) => crate::ops::metrics::events().add(
                                "rhizome_artifact_bytes_received_total",
                                "Bytes of artifact blobs received from peers and stored.",
                                Vec::new(),
                                len as f64,
                            ),
                            Err(reason) => {
                                tracing::warn!(peer = %from, blob = %hex, %reason, "refused a blob from a peer");
                                crate::ops::metrics::events().inc(
                                    "rhizome_artifact_blobs_refused_total",
                                    "Artifact blobs from peers not stored (not matching their hash, or the disk failed).",
                                    Vec::new(),
                                );
                            }
                        }
                        let _ = answers.send(TransferIn::Stored {
                            hash,
                            from,
                            outcome,
                        });
                    });
                }
                TransferOut::Fetched(hash) => self.tell(hash, Ok(())),
                TransferOut::Failed(hash, reason) => self.tell(hash, Err(reason)),
            }
        }
    }

    fn tell(&mut self, hash: BlobHash, outcome: Result<(), String>) {
        for waiter in self.waiters.remove(&hash).unwrap_or_default() {
            let _ = waiter.send((hash, outcome.clone()));
        }
    }
}

/// The thread that reads and stores blobs, one after another, for the transfer machine.
///
/// Not the runtime's blocking pool: a transfer reads or stores thousands of blobs, and a task
/// per blob there cost a task to await it, the pool's lock and two thread wakeups each; here a
/// blob is one message to a thread that is usually awake already, which answers the machine
/// itself. One thread is enough: blobs are stored one at a time under the pack's lock anyway,
/// and a read from the page cache takes microseconds.
#[derive(Debug)]
struct BlobIo {
    jobs: std::sync::mpsc::Sender<Box<dyn FnOnce() + Send>>,
}

impl BlobIo {
    fn start() -> BlobIo {
        let (jobs, queue) = std::sync::mpsc::channel::<Box<dyn FnOnce() + Send>>();
        std::thread::Builder::new()
            .name("rhizome-blobs".into())
            .spawn(move || {
                // Ends when the machine is dropped with its sender.
                for job in queue {
                    job();
                }
            })
            .expect("starting the blob thread");
        BlobIo { jobs }
    }

    /// Queues `job`, which must answer the machine whatever happens (see [`survive`]).
    fn run(&self, job: impl FnOnce() + Send + 'static) {
        if self.jobs.send(Box::new(job)).is_err() {
            tracing::error!("the blob thread is gone: a blob was neither read nor stored");
        }
    }
}

/// Runs `f`, turning a panic into an error naming it, so that the blob thread lives on and the
/// machine still gets its answer (or a serving slot would stay taken forever).
fn survive<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .map_err(|panic| format!("panicked: {}", crate::node::panic_message(&*panic)))
}
