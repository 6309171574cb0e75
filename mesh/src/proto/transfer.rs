//! Artifact transfer: fetching blobs (chunks and manifests, each named by its SHA-256) from
//! peers, and serving them.
//!
//! **Where a blob is asked for.** First the aggregators of this node's chain, nearest first,
//! with a hop budget: an aggregator that lacks the blob fetches it itself from *its* chain
//! (one hop fewer) and answers every member that asked from the one copy, so a site's uplink
//! carries each blob once however many of its nodes want it. Then every other connected peer,
//! with no hops: each answers from what it holds. A peer that answers "missing", sends bytes
//! that do not hash to the name, or stays silent for [`TransferConfig::silence`] is not asked
//! for that blob again; when no source is left the fetch fails and whoever waited is told.
//!
//! **Resuming** costs nothing here: the layer above asks only for the blobs it lacks, so after
//! a broken connection or a restart the blobs already stored are never asked for again.
//!
//! **Pipelining.** At most [`TransferConfig::window`] requests are outstanding per source, so
//! one transfer keeps a link busy without queueing a whole artifact at the server.
//!
//! **Serving** is bounded per peer: at most [`TransferConfig::serve_in_flight`] blobs read and
//! not yet handed to the peer's connection, at most [`TransferConfig::serve_queue`] requests
//! waiting; requests beyond that are answered "missing" at once (an honest peer never has that
//! many outstanding). Blobs are read only while the byte budget is open
//! ([`Transfer::set_budget_open`]): the owner of the bandwidth cap opens it after workflows and
//! before results.
//!
//! The layer above reads and stores blobs ([`TransferOut::Read`], [`TransferOut::Store`]) and
//! checks every blob against its hash before it is stored or counted as fetched.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use super::membership::NodeId;
use super::wire::{BlobHash, Message};

/// Knobs of the transfer machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransferConfig {
    /// Requests outstanding at one source.
    pub window: usize,
    /// How long a source may stay silent (no blob, no "missing") while requests to it are
    /// outstanding before they are asked elsewhere.
    pub silence: Duration,
    /// The hop budget of this node's own requests: how far up the chain they may be passed.
    pub max_hops: u8,
    /// Blobs read for one peer and not yet handed to its connection.
    pub serve_in_flight: usize,
    /// Requests of one peer waiting to be served.
    pub serve_queue: usize,
}

impl Default for TransferConfig {
    fn default() -> Self {
        TransferConfig {
            window: 16,
            silence: Duration::from_secs(30),
            max_hops: 8,
            serve_in_flight: 4,
            serve_queue: 1024,
        }
    }
}

/// Who waits for a blob being fetched.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Waiter {
    /// This node (an artifact being fetched here).
    Local,
    /// A peer whose request this node passed up the chain.
    Peer(NodeId),
}

/// What happened, as the driver tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferIn {
    /// A peer is connected.
    PeerUp(NodeId),
    /// A peer is gone.
    PeerDown(NodeId),
    /// This node's aggregators upwards, nearest first, itself left out.
    Chain(Vec<NodeId>),
    /// This node needs a blob it does not hold.
    Want(BlobHash),
    /// A transfer message from a peer (others are ignored).
    Received(NodeId, Message),
    /// The answer to [`TransferOut::Read`]: the blob's bytes, or `None` if not held here.
    Read {
        /// Who asked.
        peer: NodeId,
        /// The blob.
        hash: BlobHash,
        /// The hop budget the peer gave.
        hops: u8,
        /// The bytes, if held.
        bytes: Option<bytes::Bytes>,
    },
    /// A blob served to a peer has been handed to its connection.
    Sent(NodeId),
    /// The answer to [`TransferOut::Store`]: stored, or refused (it does not hash to its name,
    /// or the disk failed).
    Stored {
        /// The blob.
        hash: BlobHash,
        /// Who sent it.
        from: NodeId,
        /// `Err` with the reason if it was not stored.
        outcome: Result<(), String>,
    },
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferOut {
    /// Send a message to a peer (blobs on the bulk stream, requests on the control stream).
    Send(NodeId, Message),
    /// Look a blob up for a peer that asked; answer with [`TransferIn::Read`].
    Read {
        /// Who asked.
        peer: NodeId,
        /// The blob.
        hash: BlobHash,
        /// The hop budget the peer gave.
        hops: u8,
    },
    /// Check a received blob against its hash and store it; answer with
    /// [`TransferIn::Stored`].
    Store {
        /// The blob.
        hash: BlobHash,
        /// Who sent it.
        from: NodeId,
        /// Its bytes.
        bytes: bytes::Bytes,
    },
    /// A blob this node wanted is stored.
    Fetched(BlobHash),
    /// No source could give a blob this node wanted.
    Failed(BlobHash, String),
}

/// One blob being fetched.
#[derive(Debug)]
struct Fetch {
    waiters: BTreeSet<Waiter>,
    /// Hop budget of the requests this node sends up its chain for it.
    hops: u8,
    /// Sources that answered "missing", sent a bad blob or stayed silent.
    tried: BTreeSet<NodeId>,
    /// The source asked now, if any.
    asked: Option<NodeId>,
    /// Whether the blob arrived and is being stored.
    storing: bool,
    /// Its length, once it arrived.
    arrived: u64,
}

#[derive(Debug, Default)]
struct Source {
    /// Hashes asked of this source and not answered.
    outstanding: BTreeSet<BlobHash>,
    /// When it last sent a blob or a "missing" (or when the first request went out).
    last_heard: Duration,
}

#[derive(Debug, Default)]
struct ServeQueue {
    waiting: VecDeque<(BlobHash, u8)>,
    in_flight: usize,
}

/// Counters since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransferStats {
    /// Blobs received and stored.
    pub blobs_received: u64,
    /// Bytes of those blobs.
    pub bytes_received: u64,
    /// Blobs served to peers.
    pub blobs_served: u64,
    /// Bytes of those blobs.
    pub bytes_served: u64,
    /// Blobs refused (not matching their hash, or not stored).
    pub blobs_refused: u64,
}

/// The transfer machine of one node.
#[derive(Debug)]
pub struct Transfer {
    config: TransferConfig,
    connected: BTreeSet<NodeId>,
    chain: Vec<NodeId>,
    fetches: BTreeMap<BlobHash, Fetch>,
    /// Fetches without a source asked, in the order they were wanted.
    pending: VecDeque<BlobHash>,
    sources: BTreeMap<NodeId, Source>,
    serving: BTreeMap<NodeId, ServeQueue>,
    /// Round-robin position over peers being served.
    serve_turn: Option<NodeId>,
    budget_open: bool,
    /// Blobs stored lately, oldest first: a peer's request read just before one of them was
    /// stored finds nothing, and is read again rather than fetched a second time.
    stored_lately: VecDeque<BlobHash>,
    out: VecDeque<TransferOut>,
    stats: TransferStats,
}

/// How many stored blobs [`Transfer`] remembers for requests that raced their storing.
const STORED_LATELY: usize = 4096;

impl Transfer {
    /// A machine with nothing to do.
    pub fn new(config: TransferConfig) -> Transfer {
        Transfer {
            config,
            connected: BTreeSet::new(),
            chain: Vec::new(),
            fetches: BTreeMap::new(),
            pending: VecDeque::new(),
            sources: BTreeMap::new(),
            serving: BTreeMap::new(),
            serve_turn: None,
            budget_open: true,
            stored_lately: VecDeque::new(),
            out: VecDeque::new(),
            stats: TransferStats::default(),
        }
    }

    /// Handles one event.
    pub fn handle(&mut self, event: TransferIn, now: Duration) {
        match event {
            TransferIn::PeerUp(peer) => {
                self.connected.insert(peer);
                self.assign(now);
            }
            TransferIn::PeerDown(peer) => self.peer_down(&peer, now),
            TransferIn::Chain(chain) => {
                self.chain = chain;
                self.assign(now);
            }
            TransferIn::Want(hash) => {
                self.join(hash, Waiter::Local, self.config.max_hops);
                self.assign(now);
            }
            TransferIn::Received(peer, message) => self.received(peer, message, now),
            TransferIn::Read {
                peer,
                hash,
                hops,
                bytes,
            } => self.read(peer, hash, hops, bytes, now),
            TransferIn::Sent(peer) => {
                if let Some(queue) = self.serving.get_mut(&peer) {
                    queue.in_flight = queue.in_flight.saturating_sub(1);
                }
                self.serve();
            }
            TransferIn::Stored {
                hash,
                from,
                outcome,
            } => self.stored(hash, from, outcome, now),
        }
    }

    /// Whether blobs may be read for peers now (the bandwidth cap's owner decides).
    pub fn set_budget_open(&mut self, open: bool) {
        self.budget_open = open;
        self.serve();
    }

    /// Whether requests of peers wait for the byte budget.
    pub fn wants_budget(&self) -> bool {
        self.serving.values().any(|q| !q.waiting.is_empty())
    }

    /// Silences falling due.
    pub fn handle_timeout(&mut self, now: Duration) {
        let silent: Vec<NodeId> = self
            .sources
            .iter()
            .filter(|(_, s)| !s.outstanding.is_empty() && now >= s.last_heard + self.config.silence)
            .map(|(peer, _)| peer.clone())
            .collect();
        for peer in silent {
            let hashes = self
                .sources
                .get_mut(&peer)
                .map(|s| std::mem::take(&mut s.outstanding))
                .unwrap_or_default();
            for hash in hashes {
                self.give_up_on(hash, &peer);
            }
        }
        self.assign(now);
    }

    /// When [`Transfer::handle_timeout`] must be called next, if ever.
    pub fn poll_timeout(&self) -> Option<Duration> {
        self.sources
            .values()
            .filter(|s| !s.outstanding.is_empty())
            .map(|s| s.last_heard + self.config.silence)
            .min()
    }

    /// The next action.
    pub fn poll(&mut self) -> Option<TransferOut> {
        self.out.pop_front()
    }

    /// Every action now.
    pub fn drain(&mut self) -> Vec<TransferOut> {
        self.out.drain(..).collect()
    }

    /// Counters since start.
    pub fn stats(&self) -> TransferStats {
        self.stats
    }

    /// Blobs being fetched (for this node or for peers).
    pub fn fetching(&self) -> usize {
        self.fetches.len()
    }

    fn join(&mut self, hash: BlobHash, waiter: Waiter, hops: u8) {
        match self.fetches.get_mut(&hash) {
            Some(fetch) => {
                fetch.waiters.insert(waiter);
                fetch.hops = fetch.hops.max(hops);
            }
            None => {
                self.fetches.insert(
                    hash,
                    Fetch {
                        waiters: BTreeSet::from([waiter]),
                        hops,
                        tried: BTreeSet::new(),
                        asked: None,
                        storing: false,
                        arrived: 0,
                    },
                );
                self.pending.push_back(hash);
            }
        }
    }

    fn received(&mut self, peer: NodeId, message: Message, now: Duration) {
        match message {
            Message::ChunkWant { hash, hops } => self.wanted(peer, hash, hops),
            Message::ChunkData { hash, bytes } => {
                let asked_here = self
                    .fetches
                    .get(&hash)
                    .is_some_and(|f| f.asked.as_ref() == Some(&peer) && !f.storing);
                if !asked_here {
                    // Not asked of this peer (or already answered): not stored.
                    return;
                }
                self.heard(&peer, &hash, now);
                if let Some(fetch) = self.fetches.get_mut(&hash) {
                    fetch.storing = true;
                    fetch.arrived = bytes.len() as u64;
                }
                self.out.push_back(TransferOut::Store {
                    hash,
                    from: peer,
                    bytes,
                });
            }
            Message::ChunkMissing { hash } => {
                let asked_here = self
                    .fetches
                    .get(&hash)
                    .is_some_and(|f| f.asked.as_ref() == Some(&peer) && !f.storing);
                if asked_here {
                    self.heard(&peer, &hash, now);
                    self.give_up_on(hash, &peer);
                    self.assign(now);
                }
            }
            _ => {}
        }
    }

    /// A peer asks for a blob: it is read if there is room, else answered "missing".
    fn wanted(&mut self, peer: NodeId, hash: BlobHash, hops: u8) {
        if !self.connected.contains(&peer) {
            return;
        }
        // A peer we are asking for this very blob cannot be its source: a loop between two
        // views of the chain. Saying "missing" lets both go on to other sources.
        if self
            .fetches
            .get(&hash)
            .is_some_and(|f| f.asked.as_ref() == Some(&peer))
        {
            self.out
                .push_back(TransferOut::Send(peer, Message::ChunkMissing { hash }));
            return;
        }
        let queue = self.serving.entry(peer.clone()).or_default();
        if queue.waiting.len() >= self.config.serve_queue {
            self.out
                .push_back(TransferOut::Send(peer, Message::ChunkMissing { hash }));
            return;
        }
        queue.waiting.push_back((hash, hops));
        self.serve();
    }

    /// Reads waiting requests, round robin over peers, within each peer's in-flight bound and
    /// while the budget is open.
    fn serve(&mut self) {
        while self.budget_open {
            let peers: Vec<NodeId> = self.serving.keys().cloned().collect();
            if peers.is_empty() {
                return;
            }
            // Start after the peer served last, wrapping around.
            let start = self
                .serve_turn
                .as_ref()
                .map_or(0, |last| peers.iter().position(|p| p > last).unwrap_or(0));
            let next = (0..peers.len())
                .map(|i| &peers[(start + i) % peers.len()])
                .find(|p| {
                    let q = &self.serving[*p];
                    !q.waiting.is_empty() && q.in_flight < self.config.serve_in_flight
                })
                .cloned();
            let Some(peer) = next else {
                return;
            };
            let queue = self.serving.get_mut(&peer).expect("listed");
            let (hash, hops) = queue.waiting.pop_front().expect("not empty");
            queue.in_flight += 1;
            self.serve_turn = Some(peer.clone());
            self.out.push_back(TransferOut::Read { peer, hash, hops });
        }
    }

    fn read(
        &mut self,
        peer: NodeId,
        hash: BlobHash,
        hops: u8,
        bytes: Option<bytes::Bytes>,
        now: Duration,
    ) {
        if !self.connected.contains(&peer) {
            return;
        }
        match bytes {
            Some(bytes) => {
                // The slot stays taken until the connection has the blob ([`TransferIn::Sent`]).
                self.stats.blobs_served += 1;
                self.stats.bytes_served += bytes.len() as u64;
                self.out
                    .push_back(TransferOut::Send(peer, Message::ChunkData { hash, bytes }));
            }
            None => {
                if let Some(queue) = self.serving.get_mut(&peer) {
                    queue.in_flight = queue.in_flight.saturating_sub(1);
                }
                if self.stored_lately.contains(&hash) {
                    // Read before the blob was stored here: read it again.
                    if let Some(queue) = self.serving.get_mut(&peer) {
                        queue.waiting.push_front((hash, 0));
                    }
                } else if hops > 0 {
                    self.join(hash, Waiter::Peer(peer), hops - 1);
                    self.assign(now);
                } else {
                    self.out
                        .push_back(TransferOut::Send(peer, Message::ChunkMissing { hash }));
                }
                self.serve();
            }
        }
    }

    fn stored(&mut self, hash: BlobHash, from: NodeId, outcome: Result<(), String>, now: Duration) {
        let Some(fetch) = self.fetches.get_mut(&hash) else {
            return;
        };
        fetch.storing = false;
        match outcome {
            Ok(()) => {
                let fetch = self.fetches.remove(&hash).expect("present");
                if self.stored_lately.len() == STORED_LATELY {
                    self.stored_lately.pop_front();
                }
                self.stored_lately.push_back(hash);
                self.stats.blobs_received += 1;
                self.stats.bytes_received += fetch.arrived;
                for waiter in fetch.waiters {
                    match waiter {
                        Waiter::Local => self.out.push_back(TransferOut::Fetched(hash)),
                        Waiter::Peer(peer) => {
                            // Served like any request, from the copy just stored.
                            if self.connected.contains(&peer) {
                                self.serving
                                    .entry(peer)
                                    .or_default()
                                    .waiting
                                    .push_back((hash, 0));
                            }
                        }
                    }
                }
                self.serve();
            }
            Err(reason) => {
                let _ = reason;
                self.stats.blobs_refused += 1;
                self.give_up_on(hash, &from);
            }
        }
        self.assign(now);
    }

    /// `peer` will not give `hash`: it is asked elsewhere.
    fn give_up_on(&mut self, hash: BlobHash, peer: &NodeId) {
        if let Some(source) = self.sources.get_mut(peer) {
            source.outstanding.remove(&hash);
        }
        if let Some(fetch) = self.fetches.get_mut(&hash)
            && fetch.asked.as_ref() == Some(peer)
        {
            fetch.asked = None;
            fetch.tried.insert(peer.clone());
            self.pending.push_front(hash);
        }
    }

    fn heard(&mut self, peer: &NodeId, hash: &BlobHash, now: Duration) {
        if let Some(source) = self.sources.get_mut(peer) {
            source.outstanding.remove(hash);
            source.last_heard = now;
        }
    }

    fn peer_down(&mut self, peer: &NodeId, now: Duration) {
        self.connected.remove(peer);
        self.serving.remove(peer);
        if let Some(source) = self.sources.remove(peer) {
            for hash in source.outstanding {
                if let Some(fetch) = self.fetches.get_mut(&hash)
                    && fetch.asked.as_ref() == Some(peer)
                {
                    fetch.asked = None;
                    fetch.storing = false;
                    self.pending.push_front(hash);
                }
            }
        }
        let waiter = Waiter::Peer(peer.clone());
        for fetch in self.fetches.values_mut() {
            fetch.waiters.remove(&waiter);
        }
        self.assign(now);
    }

    /// The sources of a blob, in order: the chain upwards (with hops), then every other
    /// connected peer (without).
    fn candidates(&self, fetch: &Fetch) -> Vec<(NodeId, u8)> {
        let usable = |peer: &NodeId| {
            self.connected.contains(peer)
                && !fetch.tried.contains(peer)
                && !fetch.waiters.contains(&Waiter::Peer(peer.clone()))
        };
        let mut out: Vec<(NodeId, u8)> = self
            .chain
            .iter()
            .filter(|p| usable(p))
            .map(|p| (p.clone(), fetch.hops))
            .collect();
        for peer in &self.connected {
            if usable(peer) && !self.chain.contains(peer) {
                out.push((peer.clone(), 0));
            }
        }
        out
    }

    /// Gives each waiting fetch its best source, within each source's window. A fetch whose
    /// best source is full waits for it rather than going to a worse one; a fetch with no
    /// source left fails.
    fn assign(&mut self, now: Duration) {
        // Fetches whose best source is full, kept in their order ahead of the rest.
        let mut held_back = VecDeque::new();
        while let Some(hash) = self.pending.pop_front() {
            // Once every peer's window is full nothing more can go out: the rest waits as it
            // is, so a large artifact's thousands of blobs are not walked at every event.
            if self.every_window_full() {
                self.pending.push_front(hash);
                break;
            }
            let Some(fetch) = self.fetches.get(&hash) else {
                continue;
            };
            if fetch.asked.is_some() || fetch.storing {
                continue;
            }
            let Some((source, hops)) = self.candidates(fetch).into_iter().next() else {
                self.fail(hash);
                continue;
            };
            let entry = self.sources.entry(source.clone()).or_default();
            if entry.outstanding.len() >= self.config.window {
                held_back.push_back(hash);
                continue;
            }
            if entry.outstanding.is_empty() {
                entry.last_heard = now;
            }
            entry.outstanding.insert(hash);
            self.fetches.get_mut(&hash).expect("present").asked = Some(source.clone());
            self.out
                .push_back(TransferOut::Send(source, Message::ChunkWant { hash, hops }));
        }
        while let Some(hash) = held_back.pop_back() {
            self.pending.push_front(hash);
        }
    }

    fn every_window_full(&self) -> bool {
        !self.connected.is_empty()
            && self.connected.iter().all(|p| {
                self.sources
                    .get(p)
                    .is_some_and(|s| s.outstanding.len() >= self.config.window)
            })
    }

    fn fail(&mut self, hash: BlobHash) {
        let Some(fetch) = self.fetches.remove(&hash) else {
            return;
        };
        let reason = if fetch.tried.is_empty() {
            "no connected peer to ask".to_owned()
        } else {
            format!(
                "none of {} asked holds it or could get it",
                fetch.tried.iter().cloned().collect::<Vec<_>>().join(", ")
            )
        };
        for waiter in fetch.waiters {
            match waiter {
                Waiter::Local => self
                    .out
                    .push_back(TransferOut::Failed(hash, reason.clone())),
                Waiter::Peer(peer) => self
                    .out
                    .push_back(TransferOut::Send(peer, Message::ChunkMissing { hash })),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Duration = Duration::ZERO;

    fn h(n: u8) -> BlobHash {
        [n; 32]
    }

    fn machine(peers: &[&str], chain: &[&str]) -> Transfer {
        let mut t = Transfer::new(TransferConfig::default());
        for p in peers {
            t.handle(TransferIn::PeerUp((*p).into()), T0);
        }
        t.handle(
            TransferIn::Chain(chain.iter().map(|p| (*p).to_owned()).collect()),
            T0,
        );
        t
    }

    fn sends(out: &[TransferOut]) -> Vec<(String, Message)> {
        out.iter()
            .filter_map(|o| match o {
                TransferOut::Send(p, m) => Some((p.clone(), m.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn asks_the_chain_with_hops_then_other_peers_without_then_fails() {
        let mut t = machine(&["agg", "cloud", "e2"], &["agg", "cloud"]);
        t.handle(TransferIn::Want(h(1)), T0);
        assert_eq!(
            t.drain(),
            vec![TransferOut::Send(
                "agg".into(),
                Message::ChunkWant {
                    hash: h(1),
                    hops: 8
                }
            )]
        );
        t.handle(
            TransferIn::Received("agg".into(), Message::ChunkMissing { hash: h(1) }),
            T0,
        );
        assert_eq!(
            sends(&t.drain()),
            vec![(
                "cloud".into(),
                Message::ChunkWant {
                    hash: h(1),
                    hops: 8
                }
            )]
        );
        t.handle(
            TransferIn::Received("cloud".into(), Message::ChunkMissing { hash: h(1) }),
            T0,
        );
        assert_eq!(
            sends(&t.drain()),
            vec![(
                "e2".into(),
                Message::ChunkWant {
                    hash: h(1),
                    hops: 0
                }
            )]
        );
        t.handle(
            TransferIn::Received("e2".into(), Message::ChunkMissing { hash: h(1) }),
            T0,
        );
        let out = t.drain();
        assert!(
            matches!(&out[..], [TransferOut::Failed(hash, reason)] if *hash == h(1) && reason.contains("agg, cloud, e2")),
            "{out:?}"
        );
        assert_eq!(t.fetching(), 0);
    }

    #[test]
    fn a_bad_blob_is_not_counted_and_the_blob_is_asked_elsewhere() {
        let mut t = machine(&["liar", "good"], &["liar"]);
        t.handle(TransferIn::Want(h(2)), T0);
        t.drain();
        t.handle(
            TransferIn::Received(
                "liar".into(),
                Message::ChunkData {
                    hash: h(2),
                    bytes: vec![0; 10].into(),
                },
            ),
            T0,
        );
        assert_eq!(
            t.drain(),
            vec![TransferOut::Store {
                hash: h(2),
                from: "liar".into(),
                bytes: vec![0; 10].into()
            }]
        );
        t.handle(
            TransferIn::Stored {
                hash: h(2),
                from: "liar".into(),
                outcome: Err("hash differs".into()),
            },
            T0,
        );
        assert_eq!(
            sends(&t.drain()),
            vec![(
                "good".into(),
                Message::ChunkWant {
                    hash: h(2),
                    hops: 0
                }
            )]
        );
        assert_eq!(t.stats().blobs_refused, 1);
        t.handle(
            TransferIn::Received(
                "good".into(),
                Message::ChunkData {
                    hash: h(2),
                    bytes: vec![1].into(),
                },
            ),
            T0,
        );
        t.drain();
        t.handle(
            TransferIn::Stored {
                hash: h(2),
                from: "good".into(),
                outcome: Ok(()),
            },
            T0,
        );
        assert_eq!(t.drain(), vec![TransferOut::Fetched(h(2))]);
    }

    #[test]
    fn blobs_nobody_asked_for_are_not_stored() {
        let mut t = machine(&["a", "b"], &["a"]);
        t.handle(
            TransferIn::Received(
                "a".into(),
                Message::ChunkData {
                    hash: h(3),
                    bytes: vec![1].into(),
                },
            ),
            T0,
        );
        assert!(t.drain().is_empty());
        t.handle(TransferIn::Want(h(3)), T0);
        t.drain();
        // Asked of a, sent by b.
        t.handle(
            TransferIn::Received(
                "b".into(),
                Message::ChunkData {
                    hash: h(3),
                    bytes: vec![1].into(),
                },
            ),
            T0,
        );
        assert!(t.drain().is_empty());
    }

    #[test]
    fn a_window_of_requests_per_source() {
        let mut t = machine(&["agg"], &["agg"]);
        for n in 0..20 {
            t.handle(TransferIn::Want(h(n)), T0);
        }
        assert_eq!(sends(&t.drain()).len(), 16);
        t.handle(
            TransferIn::Received(
                "agg".into(),
                Message::ChunkData {
                    hash: h(0),
                    bytes: vec![].into(),
                },
            ),
            T0,
        );
        t.drain();
        t.handle(
            TransferIn::Stored {
                hash: h(0),
                from: "agg".into(),
                outcome: Ok(()),
            },
            T0,
        );
        let out = t.drain();
        assert!(out.contains(&TransferOut::Fetched(h(0))));
        assert_eq!(
            sends(&out),
            vec![(
                "agg".into(),
                Message::ChunkWant {
                    hash: h(16),
                    hops: 8
                }
            )]
        );
    }

    #[test]
    fn a_lost_or_silent_source_is_replaced() {
        let mut t = machine(&["agg", "cloud"], &["agg", "cloud"]);
        t.handle(TransferIn::Want(h(4)), T0);
        t.drain();
        t.handle(TransferIn::PeerDown("agg".into()), T0);
        assert_eq!(
            sends(&t.drain()),
            vec![(
                "cloud".into(),
                Message::ChunkWant {
                    hash: h(4),
                    hops: 8
                }
            )]
        );
        let due = t.poll_timeout().expect("a request outstanding");
        assert_eq!(due, TransferConfig::default().silence);
        t.handle_timeout(due);
        let out = t.drain();
        assert!(matches!(&out[..], [TransferOut::Failed(..)]), "{out:?}");
    }

    #[test]
    fn an_aggregator_fetches_once_for_all_its_members() {
        let mut agg = machine(&["e1", "e2", "cloud"], &["cloud"]);
        for edge in ["e1", "e2"] {
            agg.handle(
                TransferIn::Received(
                    edge.into(),
                    Message::ChunkWant {
                        hash: h(5),
                        hops: 8,
                    },
                ),
                T0,
            );
        }
        let reads = agg.drain();
        assert_eq!(reads.len(), 2);
        for edge in ["e1", "e2"] {
            agg.handle(
                TransferIn::Read {
                    peer: edge.into(),
                    hash: h(5),
                    hops: 8,
                    bytes: None,
                },
                T0,
            );
        }
        // One request up the chain, with a hop fewer.
        assert_eq!(
            sends(&agg.drain()),
            vec![(
                "cloud".into(),
                Message::ChunkWant {
                    hash: h(5),
                    hops: 7
                }
            )]
        );
        agg.handle(
            TransferIn::Received(
                "cloud".into(),
                Message::ChunkData {
                    hash: h(5),
                    bytes: vec![7].into(),
                },
            ),
            T0,
        );
        agg.drain();
        agg.handle(
            TransferIn::Stored {
                hash: h(5),
                from: "cloud".into(),
                outcome: Ok(()),
            },
            T0,
        );
        let out = agg.drain();
        assert_eq!(
            out,
            vec![
                TransferOut::Read {
                    peer: "e1".into(),
                    hash: h(5),
                    hops: 0
                },
                TransferOut::Read {
                    peer: "e2".into(),
                    hash: h(5),
                    hops: 0
                },
            ]
        );
        agg.handle(
            TransferIn::Read {
                peer: "e1".into(),
                hash: h(5),
                hops: 0,
                bytes: Some(vec![7].into()),
            },
            T0,
        );
        assert_eq!(
            agg.drain(),
            vec![TransferOut::Send(
                "e1".into(),
                Message::ChunkData {
                    hash: h(5),
                    bytes: vec![7].into()
                }
            )]
        );
    }

    #[test]
    fn a_request_read_just_before_its_blob_was_stored_is_read_again_not_fetched() {
        let mut agg = machine(&["e1", "cloud"], &["cloud"]);
        agg.handle(TransferIn::Want(h(9)), T0);
        agg.drain();
        agg.handle(
            TransferIn::Received(
                "cloud".into(),
                Message::ChunkData {
                    hash: h(9),
                    bytes: vec![9].into(),
                },
            ),
            T0,
        );
        agg.drain();
        // A member asks; its read is under way when the blob is stored.
        agg.handle(
            TransferIn::Received(
                "e1".into(),
                Message::ChunkWant {
                    hash: h(9),
                    hops: 8,
                },
            ),
            T0,
        );
        assert_eq!(
            agg.drain(),
            vec![TransferOut::Read {
                peer: "e1".into(),
                hash: h(9),
                hops: 8
            }]
        );
        agg.handle(
            TransferIn::Stored {
                hash: h(9),
                from: "cloud".into(),
                outcome: Ok(()),
            },
            T0,
        );
        agg.drain();
        agg.handle(
            TransferIn::Read {
                peer: "e1".into(),
                hash: h(9),
                hops: 8,
                bytes: None,
            },
            T0,
        );
        assert_eq!(
            agg.drain(),
            vec![TransferOut::Read {
                peer: "e1".into(),
                hash: h(9),
                hops: 0
            }],
            "read again, not asked of the cloud a second time"
        );
    }

    #[test]
    fn no_hops_left_means_an_answer_from_what_is_held() {
        let mut t = machine(&["e1", "cloud"], &["cloud"]);
        t.handle(
            TransferIn::Received(
                "e1".into(),
                Message::ChunkWant {
                    hash: h(6),
                    hops: 0,
                },
            ),
            T0,
        );
        t.drain();
        t.handle(
            TransferIn::Read {
                peer: "e1".into(),
                hash: h(6),
                hops: 0,
                bytes: None,
            },
            T0,
        );
        assert_eq!(
            t.drain(),
            vec![TransferOut::Send(
                "e1".into(),
                Message::ChunkMissing { hash: h(6) }
            )]
        );
    }

    #[test]
    fn two_nodes_asking_each_other_break_the_loop() {
        let mut t = machine(&["x"], &["x"]);
        t.handle(TransferIn::Want(h(7)), T0);
        t.drain();
        t.handle(
            TransferIn::Received(
                "x".into(),
                Message::ChunkWant {
                    hash: h(7),
                    hops: 7,
                },
            ),
            T0,
        );
        assert_eq!(
            t.drain(),
            vec![TransferOut::Send(
                "x".into(),
                Message::ChunkMissing { hash: h(7) }
            )]
        );
    }

    #[test]
    fn serving_is_bounded_per_peer_and_waits_for_the_budget() {
        let mut t = machine(&["e1"], &[]);
        t.set_budget_open(false);
        for n in 0..10 {
            t.handle(
                TransferIn::Received(
                    "e1".into(),
                    Message::ChunkWant {
                        hash: h(n),
                        hops: 0,
                    },
                ),
                T0,
            );
        }
        assert!(t.drain().is_empty());
        assert!(t.wants_budget());
        t.set_budget_open(true);
        let reads = t.drain();
        assert_eq!(reads.len(), 4, "{reads:?}");
        for n in 0..4 {
            t.handle(
                TransferIn::Read {
                    peer: "e1".into(),
                    hash: h(n),
                    hops: 0,
                    bytes: Some(vec![n].into()),
                },
                T0,
            );
        }
        assert_eq!(sends(&t.drain()).len(), 4);
        t.handle(TransferIn::Sent("e1".into()), T0);
        assert_eq!(
            t.drain(),
            vec![TransferOut::Read {
                peer: "e1".into(),
                hash: h(4),
                hops: 0
            }]
        );
    }

    #[test]
    fn a_flood_of_requests_is_answered_missing_beyond_the_queue() {
        let mut t = machine(&["e1"], &[]);
        t.set_budget_open(false);
        let limit = TransferConfig::default().serve_queue;
        for n in 0..=limit {
            let mut hash = [0u8; 32];
            hash[..8].copy_from_slice(&(n as u64).to_be_bytes());
            t.handle(
                TransferIn::Received("e1".into(), Message::ChunkWant { hash, hops: 0 }),
                T0,
            );
        }
        let out = t.drain();
        assert_eq!(out.len(), 1);
        assert!(matches!(
            &out[0],
            TransferOut::Send(_, Message::ChunkMissing { .. })
        ));
    }

    /// Nodes wired together in memory, each message delivered in order; blob bytes are the
    /// hash's first byte repeated, and a node "holds" what it stored or was seeded with.
    struct Net {
        nodes: BTreeMap<String, (Transfer, BTreeSet<BlobHash>)>,
        /// Blobs carried per directed link.
        carried: BTreeMap<(String, String), u64>,
        fetched: BTreeMap<String, BTreeSet<BlobHash>>,
    }

    impl Net {
        fn new(links: &[(&str, &str)], chains: &[(&str, &[&str])]) -> Net {
            let mut nodes: BTreeMap<String, (Transfer, BTreeSet<BlobHash>)> = BTreeMap::new();
            for (a, b) in links {
                for (x, y) in [(a, b), (b, a)] {
                    let node = nodes.entry((*x).into()).or_insert_with(|| {
                        (Transfer::new(TransferConfig::default()), BTreeSet::new())
                    });
                    node.0.handle(TransferIn::PeerUp((*y).into()), T0);
                }
            }
            for (node, chain) in chains {
                let chain = chain.iter().map(|c| (*c).to_owned()).collect();
                nodes
                    .get_mut(*node)
                    .unwrap()
                    .0
                    .handle(TransferIn::Chain(chain), T0);
            }
            Net {
                nodes,
                carried: BTreeMap::new(),
                fetched: BTreeMap::new(),
            }
        }

        fn run(&mut self) {
            loop {
                let mut moved = false;
                let names: Vec<String> = self.nodes.keys().cloned().collect();
                for name in names {
                    let (out, held) = {
                        let (t, held) = self.nodes.get_mut(&name).unwrap();
                        (t.drain(), held.clone())
                    };
                    for action in out {
                        moved = true;
                        let node = &mut self.nodes.get_mut(&name).unwrap().0;
                        match action {
                            TransferOut::Send(to, message) => {
                                if matches!(message, Message::ChunkData { .. }) {
                                    *self.carried.entry((name.clone(), to.clone())).or_default() +=
                                        1;
                                    node.handle(TransferIn::Sent(to.clone()), T0);
                                }
                                let target = &mut self.nodes.get_mut(&to).unwrap().0;
                                target.handle(TransferIn::Received(name.clone(), message), T0);
                            }
                            TransferOut::Read { peer, hash, hops } => {
                                let bytes = held.contains(&hash).then(|| vec![hash[0]; 4].into());
                                node.handle(
                                    TransferIn::Read {
                                        peer,
                                        hash,
                                        hops,
                                        bytes,
                                    },
                                    T0,
                                );
                            }
                            TransferOut::Store { hash, from, bytes } => {
                                let ok = bytes[..] == [hash[0]; 4];
                                let entry = self.nodes.get_mut(&name).unwrap();
                                if ok {
                                    entry.1.insert(hash);
                                }
                                entry.0.handle(
                                    TransferIn::Stored {
                                        hash,
                                        from,
                                        outcome: if ok { Ok(()) } else { Err("bad".into()) },
                                    },
                                    T0,
                                );
                            }
                            TransferOut::Fetched(hash) => {
                                self.fetched.entry(name.clone()).or_default().insert(hash);
                            }
                            TransferOut::Failed(hash, reason) => {
                                panic!("{name} failed {hash:?}: {reason}")
                            }
                        }
                    }
                }
                if !moved {
                    return;
                }
            }
        }
    }

    #[test]
    fn two_sites_fetch_each_blob_across_each_uplink_once() {
        // Edges of a site are connected to each other and to their aggregator; aggregators to
        // the cloud; one edge also directly to the cloud.
        let links = [
            ("a0", "a1"),
            ("a0", "a2"),
            ("a1", "a2"),
            ("a0", "cloud"),
            ("a2", "cloud"),
            ("b0", "b1"),
            ("b0", "b2"),
            ("b1", "b2"),
            ("b0", "cloud"),
        ];
        let chains: [(&str, &[&str]); 7] = [
            ("a0", &["cloud"]),
            ("a1", &["a0", "cloud"]),
            ("a2", &["a0", "cloud"]),
            ("b0", &["cloud"]),
            ("b1", &["b0", "cloud"]),
            ("b2", &["b0", "cloud"]),
            ("cloud", &[]),
        ];
        let mut net = Net::new(&links, &chains);
        let blobs: Vec<BlobHash> = (1..=40).map(h).collect();
        net.nodes
            .get_mut("cloud")
            .unwrap()
            .1
            .extend(blobs.iter().copied());
        for edge in ["a0", "a1", "a2", "b0", "b1", "b2"] {
            for blob in &blobs {
                net.nodes
                    .get_mut(edge)
                    .unwrap()
                    .0
                    .handle(TransferIn::Want(*blob), T0);
            }
        }
        net.run();
        for edge in ["a0", "a1", "a2", "b0", "b1", "b2"] {
            assert_eq!(net.fetched[edge].len(), blobs.len(), "{edge}");
        }
        let from_cloud: u64 = net
            .carried
            .iter()
            .filter(|((from, _), _)| from == "cloud")
            .map(|(_, n)| n)
            .sum();
        assert_eq!(from_cloud, 2 * blobs.len() as u64, "{:?}", net.carried);
    }
}
