//! Document replication: which documents each peer may see, which of them differ, and in which
//! order their Automerge sync sessions run.
//!
//! The Automerge work itself (generating and applying sync messages against stored documents,
//! keeping each peer's `sync::State`) belongs to whoever stores documents; this machine only asks
//! for it through [`SyncOut::Generate`] and [`SyncOut::Apply`] and is told the outcome through
//! [`SyncIn::Generated`] and [`SyncIn::Applied`]. Payloads are opaque here.
//!
//! On a new connection both sides send a [`Message::Summary`]: a digest over the catalogue of
//! documents they may share with the other (ids and heads digests). Equal summaries end the
//! exchange: nodes in sync reconnect with two small frames. Otherwise both send their catalogue,
//! and a sync session starts for every shared document whose heads differ, or that one side
//! lacks. Sessions run by priority (mesh > workflows > rollups > results), at most
//! [`SyncConfig::max_outstanding`] store operations at a time, under an optional byte rate.
//! A local change schedules a session with every connected peer that shares the document, so it
//! is announced at once.
//!
//! A change that arrived from a peer is relayed lazily: after [`SyncConfig::relay_delay`], to
//! each other sharing peer whose heads are not known to match, as a [`Message::Heads`] (the
//! heads digest). A peer whose heads differ starts a session afresh from the persisted sync
//! state; one whose heads match does nothing, or says that they match if we cannot know. In a
//! LAN's full mesh the writer's own push has reached everyone by then, and a relay costs a
//! small frame each way and no Automerge work instead of the change crossing every link; where
//! the writer is not connected to everyone (a gateway, the cloud, a half-healed partition) the
//! peer that lacks the change asks for it. Relays to a peer are coalesced per document, and a
//! session that runs anyway (the peer wrote to us) replaces the relay.
//!
//! Which peer may see which document is [`SharePolicy`]: a pure function of the document's name,
//! the two nodes and the hierarchy view, symmetric in the two nodes
//! ([`SharePolicy::shared_between`]), so that two nodes with the same view agree on what they
//! share and neither sends what the other drops.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use sha2::{Digest as _, Sha256};

use super::election::Hierarchy;
use super::membership::NodeId;
use super::wire::{
    BUCKETS, CatalogueEntry, DocIdBytes, HeadsDigest, MAX_CATALOGUE_ENTRIES, MAX_FRAME_LEN, Message,
};

/// A document id (the automerge-repo document id's bytes).
pub type DocId = DocIdBytes;

/// Where artifact blobs stand under the byte budget: after the mesh and workflow definitions
/// (a version is worth nothing before it arrives, and a blob it needs is fetched because of
/// it), level with rollups and alerts (small), and before results (a backlog of results can
/// wait for a model a new version runs; results are never lost, only later).
pub const ARTIFACT_PRIORITY: u8 = 2;

/// The digest a catalogue gives for a document the sender does not hold.
pub const ABSENT: HeadsDigest = [0; 16];

/// The digest a catalogue gives for a document the sender retired (a tombstone): it is not
/// sent to the sender again, and the sender does not send it either.
pub const RETIRED: HeadsDigest = [0xff; 16];

/// The bucket of a document: the top four bits of its id.
fn bucket_of(doc: &DocId) -> usize {
    usize::from(doc[0] >> 4)
}

/// Catalogue bytes per frame, well under the frame limit.
const CATALOGUE_FRAME_BYTES: usize = MAX_FRAME_LEN / 4;

/// What the protocol knows of a document from its name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum DocClass {
    /// The mesh registry: everyone.
    Mesh,
    /// A workflow definition: everyone.
    Workflow,
    /// Run results of one node: the owner and its zone's aggregator.
    Results {
        /// The node that wrote them.
        owner: NodeId,
    },
    /// Summaries of a zone: the zone's aggregator and the aggregators above it.
    Rollup {
        /// The zone summarised.
        zone: String,
    },
    /// Alerts of one node: the owner, and the aggregators of its zone and every zone above it,
    /// so that they travel up the chain to the cloud.
    Alerts {
        /// The node that raised them.
        owner: NodeId,
    },
}

impl DocClass {
    /// Classifies a document name (`mesh`, `workflow/<id>`, `results/<node>/<window>`,
    /// `rollup/<zone>/<window>`). `None` for a name of no known kind.
    pub fn of(name: &str) -> Option<DocClass> {
        if name == "mesh" {
            return Some(DocClass::Mesh);
        }
        let (kind, rest) = name.split_once('/')?;
        match kind {
            "workflow" if !rest.is_empty() => Some(DocClass::Workflow),
            "results" => {
                let (owner, window) = rest.split_once('/')?;
                (!owner.is_empty() && !window.is_empty() && !window.contains('/')).then(|| {
                    DocClass::Results {
                        owner: owner.to_owned(),
                    }
                })
            }
            "alerts" => {
                let (owner, window) = rest.split_once('/')?;
                (!owner.is_empty() && !window.is_empty() && !window.contains('/')).then(|| {
                    DocClass::Alerts {
                        owner: owner.to_owned(),
                    }
                })
            }
            // The zone path is written with `+` for `/`, and `+` alone for the root.
            "rollup" => {
                let (zone, window) = rest.split_once('/')?;
                if zone.is_empty() || window.is_empty() || window.contains('/') {
                    return None;
                }
                let zone = if zone == "+" {
                    String::new()
                } else {
                    zone.replace('+', "/")
                };
                Some(DocClass::Rollup { zone })
            }
            _ => None,
        }
    }

    /// Sync order: lower first. Membership and definitions before data. Artifact blobs
    /// ([`ARTIFACT_PRIORITY`]) come after definitions and before results.
    pub fn priority(&self) -> u8 {
        match self {
            DocClass::Mesh => 0,
            DocClass::Workflow => 1,
            DocClass::Rollup { .. } | DocClass::Alerts { .. } => 2,
            DocClass::Results { .. } => 3,
        }
    }
}

/// Who may see what. Every node evaluates the same rule on its own view of the hierarchy, so a
/// pair of nodes with the same view agree on every decision, and a document reaches the nodes
/// that need it hop by hop.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SharePolicy {
    /// The zone of each node whose zone is known.
    pub zone_of: BTreeMap<NodeId, String>,
    /// The aggregator of each zone whose aggregator is known.
    pub aggregator_of: BTreeMap<String, NodeId>,
    /// Every claimant of each split zone directly below one this node aggregates
    /// ([`Hierarchy::split`]): each aggregates the members it reaches, so this node takes the
    /// rollups of all of them.
    pub split_claimants: BTreeMap<String, BTreeSet<NodeId>>,
    /// The mesh's cloud peers (from their registry entries). Each takes every rollup and
    /// alerts document, not only the one the root zone elected: a second cloud peer then
    /// holds the fleet's figures when the first dies, with nothing to catch up on.
    pub clouds: BTreeSet<NodeId>,
    /// Raw results go to the cloud (`sync.results_to = "cloud"`): every cloud peer takes them
    /// too, for the same reason.
    pub results_to_clouds: bool,
}

impl SharePolicy {
    /// The policy a node derives from its own view: the zone of every node it knows (`zones`,
    /// from the replicated registry, where each node writes its own) and the aggregators its
    /// election names (its chain, the zones it aggregates, and the aggregators of the zones
    /// just below those). Nodes with the same view derive the same policy.
    pub fn from_view<'a>(
        me: &str,
        hierarchy: &Hierarchy,
        zones: impl IntoIterator<Item = (&'a NodeId, &'a String)>,
    ) -> SharePolicy {
        let mut policy = SharePolicy::default();
        for (node, zone) in zones {
            policy.zone_of.insert(node.clone(), zone.clone());
        }
        policy.zone_of.insert(me.to_owned(), hierarchy.zone.clone());
        for (zone, aggregator) in &hierarchy.chain {
            if let Some(aggregator) = aggregator {
                policy
                    .aggregator_of
                    .insert(zone.clone(), aggregator.clone());
            }
        }
        for zone in &hierarchy.aggregates {
            policy.aggregator_of.insert(zone.clone(), me.to_owned());
        }
        for (zone, aggregator) in &hierarchy.below {
            policy
                .aggregator_of
                .insert(zone.clone(), aggregator.clone());
        }
        for (zone, claimants) in &hierarchy.split {
            policy
                .split_claimants
                .insert(zone.clone(), claimants.iter().cloned().collect());
        }
        policy
    }

    /// The peers with whom what node `me` shares ([`SharePolicy::shared_between`]) may differ
    /// between this policy and `next`:
    /// - the old and new aggregators of every zone whose aggregator changed, and those of the
    ///   old and new zone of every node whose zone changed (its results go to them);
    /// - where `me` is one of those aggregators, the other end of what it gains or loses: the
    ///   members of a zone it takes or gives up (their results), the aggregators above and
    ///   below that zone (its rollups), and a node that moves into or out of its zone.
    ///
    /// The rule depends on nothing else, so no other peer gains or loses a document. A fleet's
    /// start changes the policy with every new registry entry; comparing again with every peer
    /// each time kept a storm of catalogue rounds going.
    pub fn peers_affected_by(&self, next: &SharePolicy, me: &str) -> BTreeSet<NodeId> {
        let mut peers = BTreeSet::new();
        for zone in differing_keys(&self.aggregator_of, &next.aggregator_of) {
            let ends = [self, next].map(|policy| policy.aggregator_of.get(zone));
            peers.extend(ends.iter().flatten().map(|a| (*a).clone()));
            if !ends.iter().flatten().any(|a| *a == me) {
                continue;
            }
            for policy in [self, next] {
                let members = policy.zone_of.iter().filter(|(_, z)| *z == zone);
                peers.extend(members.map(|(node, _)| node.clone()));
                let related = policy
                    .aggregator_of
                    .iter()
                    .filter(|(z, _)| within(z, zone) || within(zone, z));
                peers.extend(related.map(|(_, a)| a.clone()));
            }
        }
        for node in differing_keys(&self.zone_of, &next.zone_of) {
            let zones = [self, next].map(|policy| policy.zone_of.get(node));
            for zone in zones.into_iter().flatten() {
                for policy in [self, next] {
                    if let Some(aggregator) = policy.aggregator_of.get(zone) {
                        peers.insert(aggregator.clone());
                        if aggregator == me {
                            peers.insert(node.to_owned());
                        }
                    }
                }
            }
        }
        // A claimant of a split zone that joins or leaves the set gains or loses the zone's
        // rollups with every node they admit: the aggregators of the zone and above it, and
        // the other claimants.
        let empty = BTreeSet::new();
        for zone in self
            .split_claimants
            .keys()
            .chain(next.split_claimants.keys())
        {
            let [old, new] = [self, next].map(|p| p.split_claimants.get(zone).unwrap_or(&empty));
            let changed: BTreeSet<&NodeId> = old.symmetric_difference(new).collect();
            peers.extend(changed.iter().map(|n| (*n).clone()));
            if changed.iter().any(|n| *n == me) {
                for policy in [self, next] {
                    let above =
                        zone_and_ancestors(zone).filter_map(|z| policy.aggregator_of.get(z));
                    peers.extend(above.cloned());
                }
                peers.extend(old.union(new).cloned());
            }
        }
        // A node that becomes (or stops being) a cloud peer gains (or loses) the rollups and
        // alerts of everyone who holds any; everyone else gains or loses that node.
        let clouds_changed: BTreeSet<&NodeId> =
            self.clouds.symmetric_difference(&next.clouds).collect();
        peers.extend(clouds_changed.iter().map(|n| (*n).clone()));
        if clouds_changed.iter().any(|n| *n == me)
            || self.results_to_clouds != next.results_to_clouds
        {
            for policy in [self, next] {
                peers.extend(policy.zone_of.keys().cloned());
            }
        }
        peers.remove(me);
        peers
    }

    /// Whether two nodes share documents of this class: the rule admits both of them
    /// ([`SharePolicy::shares`]). Symmetric, so that two nodes with the same view make the same
    /// decision about each other: a node that offered a document the other does not share would
    /// see its sync messages dropped unapplied, and a former aggregator (which still holds
    /// results) would offer them to their owner and to the new aggregator on every round
    /// without end.
    pub fn shared_between(&self, class: &DocClass, a: &str, b: &str) -> bool {
        self.shares(class, a) && self.shares(class, b)
    }

    /// Why the rule admits `node` to documents of this class, or does not: a sentence, for
    /// `rhizome explain`.
    pub fn explain(&self, class: &DocClass, node: &str) -> (bool, String) {
        let admitted = self.shares(class, node);
        let why = match class {
            DocClass::Mesh => "every member shares the mesh document".to_owned(),
            DocClass::Workflow => "every member shares every workflow".to_owned(),
            DocClass::Results { owner } => {
                let zone = self.zone_of.get(owner);
                let aggregator = zone.and_then(|z| self.aggregator_of.get(z));
                if owner == node {
                    "results are shared with their owner".to_owned()
                } else if admitted {
                    format!(
                        "results are shared with the aggregator of their owner's zone ({})",
                        zone.map_or("?", |z| zone_name(z))
                    )
                } else {
                    match (zone, aggregator) {
                        (None, _) => format!(
                            "results go to their owner and the aggregator of its zone, and the \
                             zone of {owner} is not known here yet"
                        ),
                        (Some(zone), None) => format!(
                            "results go to their owner and the aggregator of its zone, and zone \
                             {} has no aggregator known here",
                            zone_name(zone)
                        ),
                        (Some(zone), Some(aggregator)) => format!(
                            "results go to their owner and the aggregator of its zone: zone {} \
                             is aggregated by {aggregator}",
                            zone_name(zone)
                        ),
                    }
                }
            }
            DocClass::Alerts { owner } => {
                if owner == node {
                    "alerts are shared with the node that raised them".to_owned()
                } else if admitted {
                    "alerts are shared with the aggregators of their node's zone and every zone \
                     above it"
                        .to_owned()
                } else {
                    format!(
                        "alerts go to their node and the aggregators of its zone and every zone \
                         above it{}",
                        match self.zone_of.get(owner) {
                            Some(zone) => format!(" (zone {})", zone_name(zone)),
                            None => format!(", and the zone of {owner} is not known here yet"),
                        }
                    )
                }
            }
            DocClass::Rollup { zone } => {
                let holders: Vec<String> = zone_and_ancestors(zone)
                    .filter_map(|z| {
                        self.aggregator_of
                            .get(z)
                            .map(|a| format!("{a} ({})", zone_name(z)))
                    })
                    .collect();
                if admitted && self.clouds.contains(node) {
                    "every cloud peer takes every rollup, to take over from another".to_owned()
                } else if admitted {
                    format!(
                        "rollups of zone {} are shared with the aggregators of it and the zones \
                         above it",
                        zone_name(zone)
                    )
                } else {
                    format!(
                        "rollups of zone {} go to the aggregators of it and the zones above it: \
                         {}",
                        zone_name(zone),
                        if holders.is_empty() {
                            "none known here".to_owned()
                        } else {
                            holders.join(", ")
                        }
                    )
                }
            }
        };
        (admitted, why)
    }

    /// Whether the rule admits `node` to documents of this class; two nodes share a document
    /// when it admits both ([`SharePolicy::shared_between`]).
    ///
    /// - `mesh` and workflows: every member (admission already refused strangers).
    /// - `results/<owner>/…`: the owner and the aggregator of the owner's zone.
    /// - `rollup/<zone>/…`: the aggregator of the zone and of every zone above it; where a zone
    ///   is split, every claimant; every cloud peer.
    /// - `alerts/<owner>/…`: the owner and whoever holds the rollups of its zone.
    pub fn shares(&self, class: &DocClass, peer: &str) -> bool {
        match class {
            DocClass::Mesh | DocClass::Workflow => true,
            DocClass::Results { owner } => {
                owner == peer
                    || self
                        .zone_of
                        .get(owner)
                        .and_then(|zone| self.aggregator_of.get(zone))
                        .is_some_and(|aggregator| aggregator == peer)
                    || (self.results_to_clouds && self.clouds.contains(peer))
            }
            DocClass::Rollup { zone } => self.holds_rollups_of(zone, peer),
            DocClass::Alerts { owner } => {
                owner == peer
                    || self
                        .zone_of
                        .get(owner)
                        .is_some_and(|zone| self.holds_rollups_of(zone, peer))
            }
        }
    }

    /// Whether `peer` aggregates `zone` or a zone above it (or claims a split one), or is a
    /// cloud peer.
    fn holds_rollups_of(&self, zone: &str, peer: &str) -> bool {
        self.clouds.contains(peer)
            || zone_and_ancestors(zone).any(|z| {
                self.aggregator_of.get(z).is_some_and(|a| a == peer)
                    || self
                        .split_claimants
                        .get(z)
                        .is_some_and(|claimants| claimants.contains(peer))
            })
    }
}

/// A zone as people read it: the root has a name.
fn zone_name(zone: &str) -> &str {
    if zone.is_empty() { "(root)" } else { zone }
}

/// The keys whose values differ between two maps, or that one of them lacks.
fn differing_keys<'a>(
    a: &'a BTreeMap<String, String>,
    b: &'a BTreeMap<String, String>,
) -> impl Iterator<Item = &'a str> {
    let changed = a
        .iter()
        .filter(|(k, v)| b.get(*k) != Some(*v))
        .map(|(k, _)| k.as_str());
    let added = b.keys().filter(|k| !a.contains_key(*k)).map(String::as_str);
    changed.chain(added)
}

/// How long a driver lets registry changes gather before it derives the share policy again
/// (an election's change goes through at once). A fleet's start is a storm of registry
/// changes, one per node, and deriving the policy reads the whole registry: without a pause a
/// node of a 1,000-node fleet would read 1,000 entries a thousand times over.
pub const POLICY_SETTLE: Duration = Duration::from_millis(250);

/// Whether `zone` is `ancestor` or lies below it.
fn within(zone: &str, ancestor: &str) -> bool {
    zone_and_ancestors(zone).any(|z| z == ancestor)
}

/// `a/b/c`, `a/b`, `a`, `` (the root).
fn zone_and_ancestors(zone: &str) -> impl Iterator<Item = &str> {
    let mut next = Some(zone);
    std::iter::from_fn(move || {
        let current = next?;
        next = if current.is_empty() {
            None
        } else {
            Some(current.rsplit_once('/').map_or("", |(parent, _)| parent))
        };
        Some(current)
    })
}

/// Knobs of the replication machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncConfig {
    /// Store operations (generate) asked for and not yet answered, across all peers; the rest
    /// wait in priority order. Bounds the work one driver batch does.
    pub max_outstanding: usize,
    /// Bytes of sync payload per second, over all peers; `None` for no cap. Sessions wait
    /// (in priority order) while the budget is spent; received messages are still applied.
    pub bytes_per_sec: Option<u64>,
    /// How long a change that arrived from one peer waits before it is offered to the others.
    /// A few LAN round trips, so that the writer's own push lands first; relays that fall due
    /// meanwhile are coalesced per peer and document.
    pub relay_delay: Duration,
    /// How often each peer's shared documents are checked for a stalled session (see
    /// [`Replicator::handle_timeout`]): a document whose heads differ from the peer's, with
    /// nothing of ours pending for it and the peer's heads unchanged over two checks in a row,
    /// starts a new round with that peer. So a stall heals within two periods.
    pub stall_check: Duration,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            max_outstanding: 512,
            bytes_per_sec: None,
            relay_delay: Duration::from_millis(200),
            stall_check: Duration::from_secs(10),
        }
    }
}

/// What the store answered to an [`SyncOut::Apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Whether the document changed.
    pub changed: bool,
    /// The digest of the local heads after applying.
    pub ours: HeadsDigest,
    /// The digest of the peer's heads, as the message told them.
    pub theirs: Option<HeadsDigest>,
}

/// Why the store could not apply a sync message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyFailed {
    /// What went wrong.
    pub reason: String,
    /// The peer sent something malformed (as opposed to a local failure): its connection is
    /// closed.
    pub peer_at_fault: bool,
    /// Only the message's changes were refused (an author without the right to them); what it
    /// says the peer holds was taken in, so the session answers with what the peer lacks.
    pub heard: bool,
}

/// What happened, as the driver tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncIn {
    /// The documents stored locally at start, with their names and heads digests.
    LocalDocs(Vec<CatalogueEntry>),
    /// A local document changed (written here, or by an applied sync message).
    LocalChanged(CatalogueEntry),
    /// The hierarchy view changed: the decisions of the share policy may differ now.
    Policy(SharePolicy),
    /// A peer is connected.
    PeerUp(NodeId),
    /// A peer is gone.
    PeerDown(NodeId),
    /// A replication message from a peer (summary, catalogue or sync; others are ignored).
    Received(NodeId, Message),
    /// The store's answer to [`SyncOut::Generate`]: the next sync message, or `None` when it
    /// has nothing to say.
    Generated {
        /// The document.
        doc: DocId,
        /// The peer.
        peer: NodeId,
        /// The Automerge sync message.
        payload: Option<Vec<u8>>,
    },
    /// The store's answer to [`SyncOut::Apply`].
    Applied {
        /// The document.
        doc: DocId,
        /// The peer.
        peer: NodeId,
        /// The outcome.
        outcome: Result<Applied, ApplyFailed>,
    },
    /// Ask a peer (or every peer) to compare summaries again, as `rhizome sync` does.
    Resync(Option<NodeId>),
    /// The store could not carry out a [`SyncOut::Generate`] (it failed or is recovering).
    GenerateFailed {
        /// The document.
        doc: DocId,
        /// The peer.
        peer: NodeId,
    },
    /// The store was reopened after a failure: these are the documents it holds now. What it
    /// held in memory beyond its last durable commit is gone (changes applied from peers, the
    /// in-memory sync sessions), so every peer is compared with again from the persisted state.
    StoreReopened(Vec<CatalogueEntry>),
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncOut {
    /// Send a message to a peer, in order.
    Send(NodeId, Message),
    /// Produce the next sync message for a document and a peer, and answer with
    /// [`SyncIn::Generated`].
    Generate {
        /// The document.
        doc: DocId,
        /// The peer.
        peer: NodeId,
        /// Start the session afresh from the persisted sync state (the peer told heads that
        /// differ from ours): the message then carries heads and a Bloom filter, whatever the
        /// in-memory session believed the peer had heard.
        fresh: bool,
    },
    /// Apply a sync message from a peer, and answer with [`SyncIn::Applied`].
    Apply {
        /// The document.
        doc: DocId,
        /// The peer.
        peer: NodeId,
        /// The document's name when this node did not hold it yet (the store checks that the
        /// name derives to the id before recording it).
        name: Option<String>,
        /// The Automerge sync message.
        payload: Vec<u8>,
    },
    /// Forget the in-memory sync states of a peer: the next session starts from the persisted
    /// state (a new connection must not inherit in-flight bookkeeping of an old one).
    ForgetPeer(NodeId),
    /// Close the connection to a peer that broke the protocol.
    Close(NodeId, String),
}

/// A sync message to apply, as [`Replica::apply`] takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyRequest {
    /// The document.
    pub doc: DocId,
    /// The peer that sent it.
    pub peer: NodeId,
    /// The document's name, for a document the replica does not hold yet.
    pub name: Option<String>,
    /// The Automerge sync message.
    pub payload: Vec<u8>,
}

/// The document store as replication needs it: it generates and applies Automerge sync
/// messages and keeps each peer's sync state. Production and the simulator use the same
/// implementation, over a file or in memory.
pub trait Replica {
    /// A failure of the store itself (not of one message): replication cannot go on.
    type Error: std::fmt::Display;

    /// Every document held (or retired, with [`RETIRED`]), with its name and heads digest.
    fn catalogue(&mut self) -> Result<Vec<CatalogueEntry>, Self::Error>;

    /// The next sync message about a document for a peer, or `None`.
    fn generate(&mut self, doc: &DocId, peer: &str) -> Result<Option<Vec<u8>>, Self::Error>;

    /// Forgets the in-memory sync state of one document with one peer: the next message
    /// starts from the persisted state.
    fn restart_session(&mut self, doc: &DocId, peer: &str);

    /// Applies messages in order; each gets its outcome.
    #[allow(clippy::type_complexity)]
    fn apply(
        &mut self,
        batch: Vec<ApplyRequest>,
    ) -> Result<Vec<Result<Applied, ApplyFailed>>, Self::Error>;

    /// Forgets a peer's in-memory sync states.
    fn forget_peer(&mut self, peer: &str);
}

/// The store operations among `ops` carried out against `replica`, and the rest.
#[derive(Debug, Default)]
pub struct Served {
    /// Answers to feed back into the [`Replicator`]: one per store operation, whether it was
    /// carried out or not.
    pub answers: Vec<SyncIn>,
    /// What is left for the network driver ([`SyncOut::Send`], [`SyncOut::Close`]), in order.
    pub network: Vec<SyncOut>,
}

impl Served {
    /// The answers to `ops` when the store could not carry them out (it is broken and
    /// recovering, or a storage operation failed): every generate and apply failed, and the
    /// replicator waits for the store to come back ([`SyncIn::StoreReopened`]) or for its
    /// stall check. The network outputs go on.
    pub fn refused(ops: Vec<SyncOut>, reason: &str) -> Served {
        let mut served = Served::default();
        served.refuse(ops, reason);
        served
    }

    fn refuse(&mut self, ops: impl IntoIterator<Item = SyncOut>, reason: &str) {
        for op in ops {
            match op {
                SyncOut::Apply { doc, peer, .. } => self.answers.push(SyncIn::Applied {
                    doc,
                    peer,
                    outcome: Err(ApplyFailed {
                        reason: reason.to_owned(),
                        peer_at_fault: false,
                        heard: false,
                    }),
                }),
                SyncOut::Generate { doc, peer, .. } => {
                    self.answers.push(SyncIn::GenerateFailed { doc, peer });
                }
                SyncOut::ForgetPeer(_) => {}
                network @ (SyncOut::Send(..) | SyncOut::Close(..)) => self.network.push(network),
            }
        }
    }
}

/// Carries out the store operations among `ops`: applies before generates (a message generated
/// after applying is at least as current), each run of applies in one batch, and a
/// [`SyncOut::ForgetPeer`] before anything that follows it.
///
/// A failure of the store itself stops the work there: the operations not carried out are
/// answered as failed ([`Served::refused`]), so that the replicator's bookkeeping stays whole,
/// and the error is returned beside the answers for the driver to act on (the store must be
/// reopened before it is trusted again).
pub fn serve<R: Replica>(replica: &mut R, ops: Vec<SyncOut>) -> (Served, Option<R::Error>) {
    let mut served = Served::default();
    let mut applies: Vec<ApplyRequest> = Vec::new();
    let mut generates: Vec<(DocId, NodeId, bool)> = Vec::new();
    // Carries out what is gathered; on a failure, hands back the operations it did not finish.
    let flush = |replica: &mut R,
                 served: &mut Served,
                 applies: &mut Vec<ApplyRequest>,
                 generates: &mut Vec<(DocId, NodeId, bool)>|
     -> Result<(), (R::Error, Vec<SyncOut>)> {
        let unfinished_generates = |generates: &mut dyn Iterator<Item = (DocId, NodeId, bool)>| {
            generates
                .map(|(doc, peer, fresh)| SyncOut::Generate { doc, peer, fresh })
                .collect::<Vec<_>>()
        };
        if !applies.is_empty() {
            let batch = std::mem::take(applies);
            let keys: Vec<(DocId, NodeId)> =
                batch.iter().map(|a| (a.doc, a.peer.clone())).collect();
            match replica.apply(batch) {
                Ok(outcomes) => {
                    for ((doc, peer), outcome) in keys.into_iter().zip(outcomes) {
                        served.answers.push(SyncIn::Applied { doc, peer, outcome });
                    }
                }
                Err(e) => {
                    let mut unfinished: Vec<SyncOut> = keys
                        .into_iter()
                        .map(|(doc, peer)| SyncOut::Apply {
                            doc,
                            peer,
                            name: None,
                            payload: Vec::new(),
                        })
                        .collect();
                    unfinished.extend(unfinished_generates(&mut generates.drain(..)));
                    return Err((e, unfinished));
                }
            }
        }
        let mut pending = generates.drain(..);
        while let Some((doc, peer, fresh)) = pending.next() {
            if fresh {
                replica.restart_session(&doc, &peer);
            }
            match replica.generate(&doc, &peer) {
                Ok(payload) => served
                    .answers
                    .push(SyncIn::Generated { doc, peer, payload }),
                Err(e) => {
                    let mut unfinished = vec![SyncOut::Generate { doc, peer, fresh }];
                    unfinished.extend(unfinished_generates(&mut pending));
                    return Err((e, unfinished));
                }
            }
        }
        Ok(())
    };
    let mut ops = ops.into_iter();
    let mut failure = None;
    for op in ops.by_ref() {
        let flushed = match op {
            SyncOut::Apply {
                doc,
                peer,
                name,
                payload,
            } => {
                applies.push(ApplyRequest {
                    doc,
                    peer,
                    name,
                    payload,
                });
                Ok(())
            }
            SyncOut::Generate { doc, peer, fresh } => {
                generates.push((doc, peer, fresh));
                Ok(())
            }
            SyncOut::ForgetPeer(peer) => {
                let flushed = flush(replica, &mut served, &mut applies, &mut generates);
                if flushed.is_ok() {
                    replica.forget_peer(&peer);
                }
                flushed
            }
            network @ (SyncOut::Send(..) | SyncOut::Close(..)) => {
                served.network.push(network);
                Ok(())
            }
        };
        if let Err(failed) = flushed {
            failure = Some(failed);
            break;
        }
    }
    let flushed = match failure {
        Some(failed) => Err(failed),
        None => flush(replica, &mut served, &mut applies, &mut generates),
    };
    match flushed {
        Ok(()) => (served, None),
        Err((e, unfinished)) => {
            let reason = format!("the store failed: {e}");
            served.refuse(unfinished.into_iter().chain(ops), &reason);
            (served, Some(e))
        }
    }
}

/// Replication traffic with one peer since the connection started (summaries, catalogues and
/// sync messages, as framed on the wire), for status and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerTraffic {
    /// Frame bytes sent.
    pub bytes_sent: u64,
    /// Frame bytes received.
    pub bytes_received: u64,
    /// Frames sent.
    pub messages_sent: u64,
    /// Frames received.
    pub messages_received: u64,
}

/// Where replication with one peer stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSyncStatus {
    /// The peer.
    pub peer: NodeId,
    /// Documents shared with the peer.
    pub shared: usize,
    /// Shared documents whose heads are not known to be equal on both sides, by name.
    pub pending: Vec<String>,
    /// Traffic since the connection started.
    pub traffic: PeerTraffic,
}

#[derive(Debug, Default)]
struct Session {
    /// A generate is asked for and not answered.
    generating: bool,
    /// Something happened while generating: generate again after the answer.
    again: bool,
    /// The next generate starts from the persisted sync state (see [`SyncOut::Generate`]).
    fresh: bool,
}

impl PeerState {
    /// Whether the peer holds these heads of a document and knows that we hold them too.
    fn in_step(&self, doc: &DocId, digest: &HeadsDigest) -> bool {
        self.theirs.get(doc) == Some(digest) && self.told.get(doc) == Some(digest)
    }
}

#[derive(Debug, Default)]
struct PeerState {
    /// What we know of the peer's heads of each document ([`ABSENT`]: it has none).
    theirs: BTreeMap<DocId, HeadsDigest>,
    /// Names the peer told us (catalogue, sync messages), for documents we may not hold.
    their_names: BTreeMap<DocId, String>,
    /// Documents the peer knows by name, so sync messages about them carry no name.
    named: BTreeSet<DocId>,
    /// The catalogue being received, until its last frame.
    incoming: Vec<CatalogueEntry>,
    /// The summary last sent, so a matching summary from the peer can be answered with ours
    /// when ours has changed since.
    sent_summary: Option<HeadsDigest>,
    /// Whether our bucket digests went out in this round.
    buckets_sent: bool,
    /// The buckets whose catalogue went out in this round: one per bucket, direction and round
    /// (a connection, a policy change or an explicit resync), so that changing documents cannot
    /// make catalogues ping-pong. After the round, sync sessions carry each side's heads.
    catalogue_sent: u16,
    sessions: BTreeMap<DocId, Session>,
    /// Relays waiting for their time: when each falls due.
    relays: BTreeMap<DocId, Duration>,
    /// Our heads digest when our last sync message about each document went to the peer: what
    /// the peer knows we hold. Automerge does not answer a message whose heads equal its own,
    /// so without this the sender of such a message would never learn that the heads match.
    told: BTreeMap<DocId, HeadsDigest>,
    /// The documents that differed from the peer's heads at the last stall check, with what we
    /// knew of the peer's heads then (`None`: nothing).
    unsettled: BTreeMap<DocId, Option<HeadsDigest>>,
    /// Documents we sent a sync message about since the last stall check: with `unsettled`,
    /// the only ones a check looks at, so that its cost follows traffic, not the store's size.
    sent_since_check: BTreeSet<DocId>,
    traffic: PeerTraffic,
}

/// The replication state machine of one node.
#[derive(Debug)]
pub struct Replicator {
    me: NodeId,
    config: SyncConfig,
    policy: SharePolicy,
    /// Every local document: name and heads digest.
    local: BTreeMap<DocId, (String, DocClass, HeadsDigest)>,
    peers: BTreeMap<NodeId, PeerState>,
    /// Sessions waiting for a generate, by (priority, order of arrival).
    queue: BTreeMap<(u8, u64), (NodeId, DocId)>,
    queued: BTreeSet<(NodeId, DocId)>,
    /// Relays waiting for their time, by when they fall due (see [`PeerState::relays`]).
    relays: BTreeSet<(Duration, NodeId, DocId)>,
    next_seq: u64,
    outstanding: usize,
    /// Byte budget (token bucket) and when it was last refilled.
    budget: i64,
    refilled: Duration,
    /// When the next stall check is due: set when a sync message goes out, cleared by a check
    /// that finds nothing to watch.
    next_stall_check: Option<Duration>,
    /// Rounds started because a session stalled, since start.
    stall_rounds: u64,
    /// Artifact blobs wait for the byte budget: sessions below [`ARTIFACT_PRIORITY`] wait
    /// behind them.
    artifacts_waiting: bool,
    out: VecDeque<SyncOut>,
}

impl Replicator {
    /// A replicator for node `me`.
    pub fn new(me: NodeId, config: SyncConfig) -> Replicator {
        Replicator {
            me,
            config,
            policy: SharePolicy::default(),
            local: BTreeMap::new(),
            peers: BTreeMap::new(),
            queue: BTreeMap::new(),
            queued: BTreeSet::new(),
            relays: BTreeSet::new(),
            next_seq: 0,
            outstanding: 0,
            budget: config.bytes_per_sec.map_or(0, |r| r as i64),
            refilled: Duration::ZERO,
            next_stall_check: None,
            stall_rounds: 0,
            artifacts_waiting: false,
            out: VecDeque::new(),
        }
    }

    /// Takes one event.
    pub fn handle(&mut self, event: SyncIn, now: Duration) {
        self.refill(now);
        match event {
            SyncIn::LocalDocs(entries) => {
                for entry in entries {
                    self.local_changed(entry, None, now);
                }
            }
            SyncIn::LocalChanged(entry) => self.local_changed(entry, None, now),
            SyncIn::Policy(policy) => {
                // Shared sets may have grown or shrunk: compare again with the peers concerned
                // (none when the policy is the same).
                let affected = self.policy.peers_affected_by(&policy, &self.me);
                self.policy = policy;
                for peer in affected {
                    if self.peers.contains_key(&peer) {
                        self.new_round(&peer, false);
                    }
                }
            }
            SyncIn::PeerUp(peer) => {
                if peer == self.me {
                    return;
                }
                self.drop_peer(&peer);
                self.peers.insert(peer.clone(), PeerState::default());
                self.out.push_back(SyncOut::ForgetPeer(peer.clone()));
                self.send_summary(&peer, false);
            }
            SyncIn::PeerDown(peer) => {
                if self.drop_peer(&peer) {
                    self.out.push_back(SyncOut::ForgetPeer(peer));
                }
            }
            SyncIn::Received(peer, message) => self.received(peer, message),
            SyncIn::Generated { doc, peer, payload } => self.generated(doc, peer, payload, now),
            SyncIn::Applied { doc, peer, outcome } => self.applied(doc, peer, outcome, now),
            SyncIn::Resync(target) => {
                let peers: Vec<NodeId> = match target {
                    Some(peer) => self
                        .peers
                        .contains_key(&peer)
                        .then_some(peer)
                        .into_iter()
                        .collect(),
                    None => self.peers.keys().cloned().collect(),
                };
                for peer in peers {
                    self.new_round(&peer, true);
                }
            }
            SyncIn::GenerateFailed { doc, peer } => self.generate_failed(doc, peer, now),
            SyncIn::StoreReopened(entries) => {
                let now_held: BTreeSet<DocId> = entries.iter().map(|e| e.doc).collect();
                self.local.retain(|doc, _| now_held.contains(doc));
                for entry in entries {
                    if let Some(class) = DocClass::of(&entry.name) {
                        self.local
                            .insert(entry.doc, (entry.name, class, entry.digest));
                    }
                }
                let peers: Vec<NodeId> = self.peers.keys().cloned().collect();
                for peer in peers {
                    self.new_round(&peer, true);
                }
            }
        }
        self.schedule();
    }

    /// Lets time pass: relays that fell due start, the byte budget refills, and every
    /// [`SyncConfig::stall_check`] stalled sessions are looked for.
    ///
    /// A session stalls when a message it sent was not applied on the other side although the
    /// connection stayed up: the receiver refused it (its disk below the watermark, its store
    /// recovering) or did not share the document at that moment. The sender's in-memory
    /// Automerge state believes it delivered and never sends those changes again; only a new
    /// round, which starts both sides' sessions from the persisted state, gets them across.
    pub fn handle_timeout(&mut self, now: Duration) {
        self.refill(now);
        if self.next_stall_check.is_some_and(|due| due <= now) {
            self.check_stalls();
            // A quiet mesh has no timer: the next message sent arms it again.
            let watching = self
                .peers
                .values()
                .any(|p| !p.unsettled.is_empty() || !p.sent_since_check.is_empty());
            self.next_stall_check = watching.then(|| now + self.config.stall_check);
        }
        while let Some((due, peer, doc)) = self.relays.first().cloned() {
            if due > now {
                break;
            }
            self.relays.pop_first();
            self.relay_due(&peer, doc);
        }
        self.schedule();
    }

    /// When [`Replicator::handle_timeout`] must be called next, if ever: when the next relay
    /// falls due, or while sessions wait for the byte budget.
    pub fn poll_timeout(&self, now: Duration) -> Option<Duration> {
        let relay = self.relays.first().map(|(due, _, _)| *due);
        let budget = self.config.bytes_per_sec.and_then(|rate| {
            if (self.queue.is_empty() && !self.artifacts_waiting) || self.budget > 0 || rate == 0 {
                return None;
            }
            let missing = (1 - self.budget) as u128;
            let wait_ns = (missing * 1_000_000_000).div_ceil(u128::from(rate));
            Some(
                self.refilled.max(now) + Duration::from_nanos(wait_ns.min(u64::MAX as u128) as u64),
            )
        });
        relay
            .into_iter()
            .chain(budget)
            .chain(self.next_stall_check)
            .min()
    }

    /// Whether an artifact blob may be sent now under the byte budget: there is no cap, or
    /// budget is left and no session of higher priority (the mesh, definitions) waits for it.
    pub fn artifacts_may_send(&mut self, now: Duration) -> bool {
        if self.config.bytes_per_sec.is_none() {
            return true;
        }
        self.refill(now);
        self.budget > 0
            && self
                .queue
                .first_key_value()
                .is_none_or(|((priority, _), _)| *priority >= ARTIFACT_PRIORITY)
    }

    /// Counts bytes of artifact blobs sent against the byte budget.
    pub fn spend(&mut self, bytes: usize) {
        if self.config.bytes_per_sec.is_some() {
            self.budget -= bytes as i64;
        }
    }

    /// Tells whether artifact blobs wait for the byte budget: while they do, results sessions
    /// do not start under a cap, and the budget's refill is a timeout.
    pub fn set_artifacts_waiting(&mut self, waiting: bool) {
        let was = std::mem::replace(&mut self.artifacts_waiting, waiting);
        if was && !waiting {
            self.schedule();
        }
    }

    /// Rounds started because a session with a peer stalled, since start.
    pub fn stall_rounds(&self) -> u64 {
        self.stall_rounds
    }

    /// Starts a new round with every peer that has a shared document whose heads differed at
    /// this check and the last with no progress on the peer's side and nothing of ours pending.
    fn check_stalls(&mut self) {
        let mut stalled = Vec::new();
        for (peer, state) in &mut self.peers {
            let sent = std::mem::take(&mut state.sent_since_check);
            let mut now_unsettled = BTreeMap::new();
            // A document with work under way is looked at again next time: its session may yet
            // end with the peer behind.
            let mut busy = Vec::new();
            for doc in sent.iter().chain(state.unsettled.keys()) {
                let Some((_, class, ours)) = self.local.get(doc) else {
                    continue;
                };
                if *ours == RETIRED || !self.policy.shared_between(class, &self.me, peer) {
                    continue;
                }
                let theirs = state.theirs.get(doc).copied();
                let pending = state.sessions.contains_key(doc)
                    || state.relays.contains_key(doc)
                    || self.queued.contains(&(peer.clone(), *doc));
                if pending {
                    busy.push(*doc);
                } else if theirs != Some(*ours) && theirs != Some(RETIRED) {
                    now_unsettled.insert(*doc, theirs);
                }
            }
            state.sent_since_check.extend(busy);
            let stuck = now_unsettled
                .iter()
                .any(|(doc, theirs)| state.unsettled.get(doc) == Some(theirs));
            if stuck {
                state.unsettled.clear();
                stalled.push(peer.clone());
            } else {
                state.unsettled = now_unsettled;
            }
        }
        for peer in stalled {
            self.stall_rounds += 1;
            self.new_round(&peer, false);
        }
    }

    /// The next thing to do, if any.
    pub fn poll(&mut self) -> Option<SyncOut> {
        self.out.pop_front()
    }

    /// Everything to do now.
    pub fn drain(&mut self) -> Vec<SyncOut> {
        self.out.drain(..).collect()
    }

    /// The connected peers.
    pub fn peers(&self) -> impl Iterator<Item = &NodeId> {
        self.peers.keys()
    }

    /// Whether a peer is connected (between its `PeerUp` and `PeerDown`).
    pub fn is_connected(&self, peer: &str) -> bool {
        self.peers.contains_key(peer)
    }

    /// Where replication with a connected peer stands; `None` if it is not connected.
    pub fn status(&self, peer: &str) -> Option<PeerSyncStatus> {
        let state = self.peers.get(peer)?;
        let mut shared = 0;
        let mut pending = Vec::new();
        let mut seen = BTreeSet::new();
        for (doc, (name, class, ours)) in &self.local {
            if !self.shares_with(class, peer) {
                continue;
            }
            seen.insert(*doc);
            if *ours == RETIRED {
                continue;
            }
            shared += 1;
            let theirs = state.theirs.get(doc);
            if theirs != Some(ours) && theirs != Some(&RETIRED) {
                pending.push(name.clone());
            }
        }
        // Documents the peer has that this node lacks and may hold.
        for (doc, digest) in &state.theirs {
            if seen.contains(doc) || *digest == ABSENT || *digest == RETIRED {
                continue;
            }
            if let Some(name) = state.their_names.get(doc)
                && DocClass::of(name).is_some_and(|c| self.shares_with(&c, peer))
            {
                shared += 1;
                pending.push(name.clone());
            }
        }
        Some(PeerSyncStatus {
            peer: peer.to_owned(),
            shared,
            pending,
            traffic: state.traffic,
        })
    }

    /// The share policy in force.
    pub fn policy(&self) -> &SharePolicy {
        &self.policy
    }

    /// Whether this node shares documents of a class with a peer under the policy in force
    /// (what every catalogue, session and received message is checked against).
    pub fn shares_with(&self, class: &DocClass, peer: &str) -> bool {
        self.policy.shared_between(class, &self.me, peer)
    }

    /// Every local document (retired ones included): id, name and class.
    pub fn documents(&self) -> impl Iterator<Item = (&DocId, &str, &DocClass)> {
        self.local
            .iter()
            .map(|(doc, (name, class, _))| (doc, name.as_str(), class))
    }

    /// The local heads digest of a document, if this node holds it.
    pub fn local_digest(&self, doc: &DocId) -> Option<HeadsDigest> {
        self.local.get(doc).map(|(_, _, d)| *d)
    }

    /// A local document changed: written here (`from` is `None`), or by a sync message from
    /// `from`. A local write goes to every sharing peer at once; a change from a peer is
    /// relayed after [`SyncConfig::relay_delay`] (see the module documentation).
    fn local_changed(&mut self, entry: CatalogueEntry, from: Option<&NodeId>, now: Duration) {
        let Some(class) = DocClass::of(&entry.name) else {
            return;
        };
        if let Some((_, _, digest)) = self.local.get(&entry.doc)
            && *digest == entry.digest
        {
            return;
        }
        let peers: Vec<NodeId> = self
            .peers
            .keys()
            .filter(|p| self.shares_with(&class, p))
            .cloned()
            .collect();
        let retired = entry.digest == RETIRED;
        self.local
            .insert(entry.doc, (entry.name, class.clone(), entry.digest));
        if retired {
            return;
        }
        for peer in peers {
            match from {
                None => self.want(&peer, entry.doc, class.priority()),
                Some(from) if *from == peer => {}
                Some(_) => self.schedule_relay(&peer, entry.doc, entry.digest, now),
            }
        }
    }

    /// Offers a document that changed by a peer's message to another peer, after the delay,
    /// unless a relay is already waiting or both sides know that they hold the same heads.
    fn schedule_relay(&mut self, peer: &NodeId, doc: DocId, digest: HeadsDigest, now: Duration) {
        let Some(state) = self.peers.get_mut(peer) else {
            return;
        };
        if state.relays.contains_key(&doc) || state.in_step(&doc, &digest) {
            return;
        }
        let due = now + self.config.relay_delay;
        state.relays.insert(doc, due);
        self.relays.insert((due, peer.clone(), doc));
    }

    /// A relay fell due: tell the peer our heads, unless both sides know by now that they hold
    /// the same heads, or a session with it runs anyway.
    fn relay_due(&mut self, peer: &NodeId, doc: DocId) {
        let Some(ours) = self.local_digest(&doc) else {
            return;
        };
        let Some(state) = self.peers.get_mut(peer) else {
            return;
        };
        state.relays.remove(&doc);
        // A session exists from the moment one is wanted until its last generate is answered.
        if state.in_step(&doc, &ours) || state.sessions.contains_key(&doc) {
            return;
        }
        self.send_heads(peer, doc, ours);
    }

    /// Tells the peer our heads of a document.
    fn send_heads(&mut self, peer: &NodeId, doc: DocId, digest: HeadsDigest) {
        let Some(state) = self.peers.get_mut(peer) else {
            return;
        };
        let name = if state.named.insert(doc) {
            self.local.get(&doc).map(|(n, _, _)| n.clone())
        } else {
            None
        };
        state.told.insert(doc, digest);
        self.send(peer, Message::Heads { doc, digest, name });
    }

    /// Asks for a generate that starts the session afresh from the persisted sync state.
    fn want_fresh(&mut self, peer: &NodeId, doc: DocId, priority: u8) {
        if let Some(state) = self.peers.get_mut(peer) {
            state.sessions.entry(doc).or_default().fresh = true;
        }
        self.want(peer, doc, priority);
    }

    /// A session with the peer runs anyway: a relay waiting for it is not needed.
    fn cancel_relay(&mut self, peer: &NodeId, doc: &DocId) {
        if let Some(state) = self.peers.get_mut(peer)
            && let Some(due) = state.relays.remove(doc)
        {
            self.relays.remove(&(due, peer.clone(), *doc));
        }
    }

    /// The documents shared with a peer, in id order, with our digests.
    fn catalogue_for(&self, peer: &str) -> Vec<CatalogueEntry> {
        self.local
            .iter()
            .filter(|(_, (_, class, _))| self.shares_with(class, peer))
            .map(|(doc, (name, _, digest))| CatalogueEntry {
                doc: *doc,
                digest: *digest,
                name: name.clone(),
            })
            .collect()
    }

    fn summary_of<'a>(entries: impl IntoIterator<Item = &'a CatalogueEntry>) -> HeadsDigest {
        let mut hash = Sha256::new();
        for entry in entries {
            hash.update(entry.doc);
            hash.update(entry.digest);
        }
        hash.finalize()[..16].try_into().expect("16 bytes")
    }

    /// The digest of each bucket of the catalogue for a peer.
    fn bucket_digests(&self, peer: &str) -> Vec<HeadsDigest> {
        let entries = self.catalogue_for(peer);
        (0..BUCKETS)
            .map(|k| Self::summary_of(entries.iter().filter(|e| bucket_of(&e.doc) == k)))
            .collect()
    }

    /// Starts a new round of comparison with a peer.
    fn new_round(&mut self, peer: &str, reply: bool) {
        if let Some(state) = self.peers.get_mut(peer) {
            state.buckets_sent = false;
            state.catalogue_sent = 0;
            self.out.push_back(SyncOut::ForgetPeer(peer.to_owned()));
        }
        self.send_summary(peer, reply);
    }

    fn send_summary(&mut self, peer: &str, reply: bool) {
        let entries = self.catalogue_for(peer);
        let digest = Self::summary_of(&entries);
        if let Some(state) = self.peers.get_mut(peer) {
            state.sent_summary = Some(digest);
        }
        self.send(
            peer,
            Message::Summary {
                digest,
                docs: entries.len() as u64,
                reply,
            },
        );
    }

    fn send_buckets(&mut self, peer: &str) {
        let digests = self.bucket_digests(peer);
        if let Some(state) = self.peers.get_mut(peer) {
            state.buckets_sent = true;
        }
        self.send(peer, Message::Buckets { digests });
    }

    /// Sends the catalogue of the buckets in `mask` not sent yet in this round.
    fn send_catalogue(&mut self, peer: &str, mask: u16) {
        let Some(state) = self.peers.get(peer) else {
            return;
        };
        let mask = mask & !state.catalogue_sent;
        if mask == 0 {
            return;
        }
        let entries = self.catalogue_for(peer);
        let mut frame = Vec::new();
        let mut bytes = 0;
        for entry in entries {
            if mask & (1 << bucket_of(&entry.doc)) == 0 {
                continue;
            }
            let len = 33 + entry.name.len();
            if !frame.is_empty()
                && (frame.len() == MAX_CATALOGUE_ENTRIES || bytes + len > CATALOGUE_FRAME_BYTES)
            {
                let entries = std::mem::take(&mut frame);
                self.send(
                    peer,
                    Message::Catalogue {
                        buckets: mask,
                        complete: false,
                        entries,
                    },
                );
                bytes = 0;
            }
            bytes += len;
            frame.push(entry);
        }
        if let Some(state) = self.peers.get_mut(peer) {
            state.named.extend(frame.iter().map(|e| e.doc));
            state.catalogue_sent |= mask;
        }
        self.send(
            peer,
            Message::Catalogue {
                buckets: mask,
                complete: true,
                entries: frame,
            },
        );
    }

    fn send(&mut self, peer: &str, message: Message) {
        if let Some(state) = self.peers.get_mut(peer) {
            state.traffic.bytes_sent += message.encoded_len() as u64;
            state.traffic.messages_sent += 1;
        }
        self.out.push_back(SyncOut::Send(peer.to_owned(), message));
    }

    fn received(&mut self, peer: NodeId, message: Message) {
        let Some(state) = self.peers.get_mut(&peer) else {
            return;
        };
        if matches!(
            message,
            Message::Summary { .. }
                | Message::Buckets { .. }
                | Message::Catalogue { .. }
                | Message::Sync { .. }
                | Message::Heads { .. }
        ) {
            state.traffic.bytes_received += message.encoded_len() as u64;
            state.traffic.messages_received += 1;
        }
        match message {
            Message::Summary { digest, reply, .. } => {
                let ours = self.catalogue_for(&peer);
                let current = Self::summary_of(&ours);
                let state = self.peers.get_mut(&peer).expect("checked above");
                if current == digest {
                    for entry in &ours {
                        state.theirs.insert(entry.doc, entry.digest);
                        state.named.insert(entry.doc);
                    }
                    // The peer compared our earlier summary: tell it the current one, which it
                    // holds too.
                    if reply || state.sent_summary != Some(current) {
                        self.send_summary(&peer, false);
                    }
                } else {
                    // A summary opens a round on the sender's side (a connection, a policy
                    // change, a resync): take part in it afresh, whatever this side sent in
                    // its own last round, or a side that has just started to share a document
                    // might never hear of it. Only summaries open rounds, and a round sends
                    // each bucket's catalogue once each way, so this cannot loop.
                    //
                    // Its sessions start from the persisted sync state, as on a connection:
                    // the round follows a policy change, before which the peer may have
                    // dropped our sync messages unapplied (it did not share the document
                    // then). An in-memory Automerge session would believe them delivered: it
                    // would wait for an answer that never comes, and never send those changes
                    // again. Every message the peer dropped was sent before this summary
                    // arrived, so forgetting here clears all of them.
                    state.buckets_sent = false;
                    state.catalogue_sent = 0;
                    self.out.push_back(SyncOut::ForgetPeer(peer.clone()));
                    self.send_buckets(&peer);
                }
            }
            Message::Buckets { digests } => {
                let ours = self.bucket_digests(&peer);
                let mut differ: u16 = 0;
                let mut same = Vec::new();
                for (k, (mine, theirs)) in ours.iter().zip(&digests).enumerate() {
                    if mine == theirs {
                        same.push(k);
                    } else {
                        differ |= 1 << k;
                    }
                }
                let entries = self.catalogue_for(&peer);
                let state = self.peers.get_mut(&peer).expect("checked above");
                for entry in entries.iter().filter(|e| same.contains(&bucket_of(&e.doc))) {
                    state.theirs.insert(entry.doc, entry.digest);
                    state.named.insert(entry.doc);
                }
                let answer_buckets = !state.buckets_sent;
                if answer_buckets {
                    self.send_buckets(&peer);
                }
                self.send_catalogue(&peer, differ);
            }
            Message::Catalogue {
                buckets,
                complete,
                entries,
            } => {
                let state = self.peers.get_mut(&peer).expect("checked above");
                // A peer may not make this node buffer more than a catalogue's bound.
                if state.incoming.len() + entries.len() > MAX_CATALOGUE_ENTRIES * 4 {
                    self.out.push_back(SyncOut::Close(
                        peer.clone(),
                        "catalogue exceeds its bound".into(),
                    ));
                    self.drop_peer(&peer);
                    return;
                }
                state.incoming.extend(entries);
                if complete {
                    let entries = std::mem::take(&mut state.incoming);
                    self.catalogue_received(&peer, entries, buckets);
                    // Each side learns the other's digests of a bucket once per round, also
                    // those that are equal and so start no session.
                    self.send_catalogue(&peer, buckets);
                }
            }
            Message::Sync { doc, name, payload } => self.sync_received(peer, doc, name, payload),
            Message::Heads { doc, digest, name } => self.heads_received(peer, doc, digest, name),
            _ => {}
        }
    }

    fn catalogue_received(&mut self, peer: &NodeId, entries: Vec<CatalogueEntry>, buckets: u16) {
        let listed = |doc: &DocId| buckets & (1 << bucket_of(doc)) != 0;
        let mut theirs: BTreeMap<DocId, HeadsDigest> = BTreeMap::new();
        {
            let state = self.peers.get_mut(peer).expect("connected");
            for entry in entries {
                if !listed(&entry.doc) {
                    continue;
                }
                // Only what this node would share with the peer counts; the rest is ignored.
                let Some(class) = DocClass::of(&entry.name) else {
                    continue;
                };
                if !self.policy.shared_between(&class, &self.me, peer) {
                    continue;
                }
                state.named.insert(entry.doc);
                state.their_names.insert(entry.doc, entry.name);
                theirs.insert(entry.doc, entry.digest);
            }
        }
        for entry in self.catalogue_for(peer) {
            if listed(&entry.doc) {
                theirs.entry(entry.doc).or_insert(ABSENT);
            }
        }
        // One side opens each session, so that the two openings do not cross: a document one
        // side lacks is asked for by that side (if both opened, each opening would be answered
        // with the whole document, and it would cross twice), and one both hold differently by
        // the side with the smaller node id (crossing openings are each answered with what the
        // other lacks, and the answers to the answers repeat much of it: at 500 simulated nodes
        // half the sync bytes). The catalogue exchange is symmetric, so that side always sees
        // the difference.
        let wanted: Vec<(DocId, u8)> = theirs
            .iter()
            .filter(|(doc, digest)| {
                let ours = self.local_digest(doc).unwrap_or(ABSENT);
                ours != **digest
                    && ours != RETIRED
                    && **digest != RETIRED
                    && **digest != ABSENT
                    && (ours == ABSENT || self.me < *peer)
            })
            .map(|(doc, _)| (*doc, self.priority_of(peer, doc)))
            .collect();
        let state = self.peers.get_mut(peer).expect("connected");
        state.theirs.retain(|doc, _| !listed(doc));
        state.theirs.extend(theirs);
        for (doc, priority) in wanted {
            self.want(peer, doc, priority);
        }
    }

    /// Notes what a peer's message about a document says of its name, and decides whether
    /// the document is one to sync with the peer: not retired here, known by name, shared by
    /// policy. `Some(None)` for a document held here; `Some(Some(name))` for one this node
    /// lacks (the store creates it by that name).
    fn shared_by_message(
        &mut self,
        peer: &NodeId,
        doc: DocId,
        name: Option<String>,
    ) -> Option<Option<String>> {
        let state = self.peers.get_mut(peer).expect("checked by the caller");
        if let Some(name) = name {
            state.their_names.insert(doc, name);
        }
        state.named.insert(doc);
        match self.local.get(&doc) {
            Some((_, _, digest)) if *digest == RETIRED => None,
            Some((_, class, _)) => self
                .policy
                .shared_between(class, &self.me, peer)
                .then_some(None),
            None => {
                // Neither held nor named: nothing to classify it by, so it is not shared.
                let name = state.their_names.get(&doc)?;
                let class = DocClass::of(name)?;
                self.policy
                    .shared_between(&class, &self.me, peer)
                    .then(|| Some(name.clone()))
            }
        }
    }

    /// The peer told us its heads of a document: nothing to do if they match ours (but say
    /// that ours match if the peer does not know), otherwise a session from our side finds
    /// out what differs.
    fn heads_received(
        &mut self,
        peer: NodeId,
        doc: DocId,
        digest: HeadsDigest,
        name: Option<String>,
    ) {
        if self.shared_by_message(&peer, doc, name).is_none() || digest == RETIRED {
            return;
        }
        self.cancel_relay(&peer, &doc);
        let ours = self.local_digest(&doc);
        let state = self.peers.get_mut(&peer).expect("checked by the caller");
        state.theirs.insert(doc, digest);
        if ours == Some(digest) {
            if state.told.get(&doc) != Some(&digest) {
                self.send_heads(&peer, doc, digest);
            }
        } else if digest != ABSENT {
            // A session from the persisted sync state: the in-memory one may believe that the
            // peer has heard everything, and would then say nothing.
            let priority = self.priority_of(&peer, &doc);
            self.want_fresh(&peer, doc, priority);
        }
    }

    fn sync_received(&mut self, peer: NodeId, doc: DocId, name: Option<String>, payload: Vec<u8>) {
        self.cancel_relay(&peer, &doc);
        let Some(name) = self.shared_by_message(&peer, doc, name) else {
            return;
        };
        self.out.push_back(SyncOut::Apply {
            doc,
            peer,
            name,
            payload,
        });
    }

    fn generated(&mut self, doc: DocId, peer: NodeId, payload: Option<Vec<u8>>, now: Duration) {
        // An answer for a session of an earlier connection is not counted again: dropping the
        // peer already took its generates off `outstanding`.
        let Some(state) = self.peers.get_mut(&peer) else {
            return;
        };
        let again = match state.sessions.get_mut(&doc) {
            Some(session) if session.generating => {
                session.generating = false;
                std::mem::take(&mut session.again)
            }
            _ => return,
        };
        self.outstanding = self.outstanding.saturating_sub(1);
        if let Some(payload) = payload {
            let local = self.local.get(&doc);
            let name = local
                .filter(|_| !state.named.contains(&doc))
                .map(|(n, _, _)| n.clone());
            if let Some((_, _, digest)) = local {
                state.told.insert(doc, *digest);
            }
            state.sent_since_check.insert(doc);
            self.next_stall_check
                .get_or_insert(now + self.config.stall_check);
            state.named.insert(doc);
            state.traffic.bytes_sent += payload.len() as u64;
            state.traffic.messages_sent += 1;
            if self.config.bytes_per_sec.is_some() {
                self.budget -= payload.len() as i64;
            }
            self.out.push_back(SyncOut::Send(
                peer.clone(),
                Message::Sync { doc, name, payload },
            ));
        }
        if again {
            let priority = self.priority_of(&peer, &doc);
            self.want(&peer, doc, priority);
        } else {
            let state = self.peers.get_mut(&peer).expect("connected");
            state.sessions.remove(&doc);
        }
    }

    /// The store could not produce the message: the session ends, and the document is watched
    /// by the stall check, which compares again with the peer if it is still behind. Asking
    /// again at once would spin against a store that refuses everything until it is reopened.
    fn generate_failed(&mut self, doc: DocId, peer: NodeId, now: Duration) {
        let Some(state) = self.peers.get_mut(&peer) else {
            return;
        };
        match state.sessions.get(&doc) {
            Some(session) if session.generating => {}
            _ => return,
        }
        state.sessions.remove(&doc);
        self.outstanding = self.outstanding.saturating_sub(1);
        self.watch_for_stall(&peer, doc, now);
    }

    /// Has the stall check look at a document with a peer at its next pass.
    fn watch_for_stall(&mut self, peer: &str, doc: DocId, now: Duration) {
        if let Some(state) = self.peers.get_mut(peer) {
            state.sent_since_check.insert(doc);
            self.next_stall_check
                .get_or_insert(now + self.config.stall_check);
        }
    }

    fn applied(
        &mut self,
        doc: DocId,
        peer: NodeId,
        outcome: Result<Applied, ApplyFailed>,
        now: Duration,
    ) {
        match outcome {
            Ok(applied) => {
                // The peer says it holds our heads; Automerge does not answer that, so unless
                // our last message said so too, say it with our heads.
                let mut ack = false;
                if let Some(state) = self.peers.get_mut(&peer)
                    && let Some(theirs) = applied.theirs
                {
                    state.theirs.insert(doc, theirs);
                    ack = theirs == applied.ours && state.told.get(&doc) != Some(&theirs);
                }
                if applied.changed {
                    let name = self.local.get(&doc).map(|(n, _, _)| n.clone()).or_else(|| {
                        self.peers
                            .get(&peer)
                            .and_then(|s| s.their_names.get(&doc).cloned())
                    });
                    if let Some(name) = name {
                        self.local_changed(
                            CatalogueEntry {
                                doc,
                                digest: applied.ours,
                                name,
                            },
                            Some(&peer),
                            now,
                        );
                    }
                }
                // Answer the peer (Automerge sync is a conversation until neither side has
                // anything to say).
                if ack {
                    self.send_heads(&peer, doc, applied.ours);
                } else if self.peers.contains_key(&peer) {
                    let priority = self.priority_of(&peer, &doc);
                    self.want(&peer, doc, priority);
                }
            }
            Err(failed) => {
                if failed.heard {
                    let priority = self.priority_of(&peer, &doc);
                    self.want(&peer, doc, priority);
                } else if !failed.peer_at_fault {
                    // Refused here (the disk low, the store recovering): the peer's session
                    // believes the message delivered. Its own stall check notices; watching
                    // the document here as well heals it from whichever side looks first.
                    self.watch_for_stall(&peer, doc, now);
                } else if self.drop_peer(&peer) {
                    self.out.push_back(SyncOut::Close(
                        peer.clone(),
                        format!("bad sync message: {}", failed.reason),
                    ));
                    self.out.push_back(SyncOut::ForgetPeer(peer));
                }
            }
        }
    }

    fn priority_of(&self, peer: &str, doc: &DocId) -> u8 {
        self.local
            .get(doc)
            .map(|(_, c, _)| c.priority())
            .or_else(|| {
                self.peers
                    .get(peer)
                    .and_then(|s| s.their_names.get(doc))
                    .and_then(|n| DocClass::of(n))
                    .map(|c| c.priority())
            })
            .unwrap_or(u8::MAX)
    }

    /// Asks for a generate for (peer, doc), now or after the one in flight.
    fn want(&mut self, peer: &NodeId, doc: DocId, priority: u8) {
        let Some(state) = self.peers.get_mut(peer) else {
            return;
        };
        let session = state.sessions.entry(doc).or_default();
        if session.generating {
            session.again = true;
            return;
        }
        if self.queued.insert((peer.clone(), doc)) {
            self.queue
                .insert((priority, self.next_seq), (peer.clone(), doc));
            self.next_seq += 1;
        }
    }

    fn schedule(&mut self) {
        while self.outstanding < self.config.max_outstanding
            && (self.config.bytes_per_sec.is_none() || self.budget > 0)
        {
            if self.artifacts_waiting
                && self.config.bytes_per_sec.is_some()
                && self
                    .queue
                    .first_key_value()
                    .is_some_and(|((priority, _), _)| *priority > ARTIFACT_PRIORITY)
            {
                break;
            }
            let Some((_, (peer, doc))) = self.queue.pop_first() else {
                break;
            };
            self.queued.remove(&(peer.clone(), doc));
            let Some(state) = self.peers.get_mut(&peer) else {
                continue;
            };
            let session = state.sessions.entry(doc).or_default();
            if session.generating {
                session.again = true;
                continue;
            }
            session.generating = true;
            let fresh = std::mem::take(&mut session.fresh);
            self.outstanding += 1;
            self.out.push_back(SyncOut::Generate { doc, peer, fresh });
        }
    }

    fn refill(&mut self, now: Duration) {
        let Some(rate) = self.config.bytes_per_sec else {
            return;
        };
        if now <= self.refilled {
            return;
        }
        let gained = (now - self.refilled).as_nanos() * u128::from(rate) / 1_000_000_000;
        self.budget = (self.budget as i128 + gained as i128).min(rate as i128) as i64;
        self.refilled = now;
    }

    /// Forgets a peer's sessions; their outstanding generates no longer count. Returns whether
    /// the peer was connected.
    fn drop_peer(&mut self, peer: &str) -> bool {
        let Some(state) = self.peers.remove(peer) else {
            return false;
        };
        let generating = state.sessions.values().filter(|s| s.generating).count();
        self.outstanding = self.outstanding.saturating_sub(generating);
        self.queued.retain(|(p, _)| p != peer);
        self.queue.retain(|_, (p, _)| p != peer);
        for (doc, due) in state.relays {
            self.relays.remove(&(due, peer.to_owned(), doc));
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_classify() {
        assert_eq!(DocClass::of("mesh"), Some(DocClass::Mesh));
        assert_eq!(DocClass::of("workflow/a"), Some(DocClass::Workflow));
        assert_eq!(
            DocClass::of("results/ab12/2026-11-24T04:00Z+60m"),
            Some(DocClass::Results {
                owner: "ab12".into()
            })
        );
        assert_eq!(
            DocClass::of("rollup/site-a+line-3/2026-11-24T04:00Z+60m"),
            Some(DocClass::Rollup {
                zone: "site-a/line-3".into()
            })
        );
        assert_eq!(
            DocClass::of("rollup/+/2026-11-24T04:00Z+60m"),
            Some(DocClass::Rollup { zone: "".into() })
        );
        assert_eq!(DocClass::of("results/ab12"), None);
        assert_eq!(DocClass::of("workflow/"), None);
        assert_eq!(DocClass::of("other/x"), None);
        assert_eq!(DocClass::of(""), None);
    }

    #[test]
    fn policy_routes_results_to_the_owners_aggregator_and_rollups_up_the_chain() {
        let mut policy = SharePolicy::default();
        let results = DocClass::of("results/o/w").unwrap();
        let rollup = DocClass::of("rollup/site-a+line-3/w").unwrap();
        assert!(policy.shares(&DocClass::Mesh, "x"));
        assert!(policy.shares(&DocClass::Workflow, "x"));
        assert!(policy.shares(&results, "o"));
        assert!(!policy.shares(&results, "agg"));
        assert!(!policy.shares(&rollup, "agg"));

        policy.zone_of.insert("o".into(), "site-a/line-3".into());
        policy
            .aggregator_of
            .insert("site-a/line-3".into(), "agg".into());
        policy.aggregator_of.insert("".into(), "cloud".into());
        assert!(policy.shares(&results, "agg"));
        assert!(!policy.shares(&results, "cloud"));
        assert!(policy.shares(&rollup, "agg"));
        assert!(policy.shares(&rollup, "cloud"));
        assert!(!policy.shares(&rollup, "o"));
        assert_eq!(
            zone_and_ancestors("a/b").collect::<Vec<_>>(),
            vec!["a/b", "a", ""]
        );
    }

    #[test]
    fn alerts_go_to_the_owner_and_every_aggregator_above_it() {
        let mut policy = SharePolicy::default();
        let alerts = DocClass::of("alerts/o/2026-11-24T04:00Z+60m").unwrap();
        assert_eq!(alerts, DocClass::Alerts { owner: "o".into() });
        assert_eq!(DocClass::of("alerts/o"), None);
        assert!(policy.shares(&alerts, "o"));
        assert!(!policy.shares(&alerts, "agg"));
        policy.zone_of.insert("o".into(), "site-a/line-3".into());
        policy
            .aggregator_of
            .insert("site-a/line-3".into(), "agg".into());
        policy.aggregator_of.insert("site-a".into(), "site".into());
        policy.aggregator_of.insert("".into(), "cloud".into());
        for holder in ["o", "agg", "site", "cloud"] {
            assert!(policy.shares(&alerts, holder), "{holder}");
        }
        assert!(!policy.shares(&alerts, "another-edge"));
        assert!(alerts.priority() < DocClass::Results { owner: "o".into() }.priority());
    }

    #[test]
    fn what_two_nodes_share_is_decided_the_same_way_on_both_sides() {
        let mut policy = SharePolicy::default();
        policy.zone_of.insert("o".into(), "site-a".into());
        policy.zone_of.insert("agg".into(), "site-a".into());
        policy.zone_of.insert("former".into(), "site-a".into());
        policy.aggregator_of.insert("site-a".into(), "agg".into());
        policy.aggregator_of.insert("".into(), "cloud".into());
        let results = DocClass::of("results/o/w").unwrap();
        let rollup = DocClass::of("rollup/site-a/w").unwrap();
        let nodes = ["o", "agg", "former", "cloud"];
        for a in nodes {
            for b in nodes {
                for class in [&results, &rollup, &DocClass::Mesh] {
                    assert_eq!(
                        policy.shared_between(class, a, b),
                        policy.shared_between(class, b, a),
                        "{a} and {b} about {class:?}"
                    );
                }
            }
        }
        assert!(policy.shared_between(&results, "o", "agg"));
        assert!(policy.shared_between(&rollup, "agg", "cloud"));
        // A former aggregator still holds results, but neither their owner nor the new
        // aggregator would take them from it: it offers them to no one.
        assert!(policy.shares(&results, "o"));
        assert!(!policy.shared_between(&results, "former", "o"));
        assert!(!policy.shared_between(&results, "former", "agg"));
        assert!(!policy.shared_between(&rollup, "former", "cloud"));
    }

    #[test]
    fn a_policy_change_touches_only_the_peers_whose_shares_move() {
        let mut before = SharePolicy::default();
        for (node, zone) in [
            ("o", "site-a"),
            ("agg-a", "site-a"),
            ("p", "site-b"),
            ("agg-b", "site-b"),
            ("l", "site-b/line"),
            ("agg-l", "site-b/line"),
        ] {
            before.zone_of.insert(node.into(), zone.into());
        }
        before.aggregator_of.insert("site-a".into(), "agg-a".into());
        before.aggregator_of.insert("site-b".into(), "agg-b".into());
        before
            .aggregator_of
            .insert("site-b/line".into(), "agg-l".into());
        before.aggregator_of.insert("".into(), "cloud".into());
        let set = |nodes: &[&str]| -> BTreeSet<NodeId> {
            nodes.iter().map(|n| (*n).to_owned()).collect()
        };
        assert!(before.peers_affected_by(&before.clone(), "o").is_empty());

        // A new node in site-a: only site-a's aggregator gains its results, and the aggregator
        // only the new node's.
        let mut joined = before.clone();
        joined.zone_of.insert("n".into(), "site-a".into());
        assert_eq!(before.peers_affected_by(&joined, "o"), set(&["agg-a"]));
        assert_eq!(before.peers_affected_by(&joined, "agg-a"), set(&["n"]));
        // A node moving zones: both aggregators (and, for them, the node).
        let mut moved = before.clone();
        moved.zone_of.insert("o".into(), "site-b".into());
        assert_eq!(
            before.peers_affected_by(&moved, "p"),
            set(&["agg-a", "agg-b"])
        );
        assert_eq!(
            before.peers_affected_by(&moved, "agg-b"),
            set(&["agg-a", "o"])
        );
        // A new aggregator: the old and the new one; for them, the zone's members and the
        // aggregators of the chain above and of the zones below.
        let mut elected = before.clone();
        elected.aggregator_of.insert("site-b".into(), "p".into());
        assert_eq!(
            before.peers_affected_by(&elected, "o"),
            set(&["agg-b", "p"])
        );
        assert_eq!(
            before.peers_affected_by(&elected, "p"),
            set(&["agg-b", "agg-l", "cloud"])
        );
        // A zone without an aggregator affects nobody yet.
        let mut unknown = before.clone();
        unknown.zone_of.insert("q".into(), "site-c".into());
        assert!(before.peers_affected_by(&unknown, "o").is_empty());
        assert!(before.peers_affected_by(&unknown, "agg-a").is_empty());
        // site-b/line split in two, both halves reaching site-b's aggregator: it takes the
        // rollups of the second claimant too, and only that claimant gains anything.
        let mut split = before.clone();
        split
            .split_claimants
            .insert("site-b/line".into(), set(&["agg-l", "l"]));
        assert_eq!(
            before.peers_affected_by(&split, "agg-b"),
            set(&["agg-l", "l"])
        );
        let line_rollup = DocClass::of("rollup/site-b+line/w").unwrap();
        assert!(!before.shared_between(&line_rollup, "agg-b", "l"));
        assert!(split.shared_between(&line_rollup, "agg-b", "l"));
        assert!(split.shared_between(&line_rollup, "agg-b", "agg-l"));

        // Whatever the change and wherever it is seen from, a peer outside the set shares
        // exactly what it shared before.
        let nodes = ["o", "p", "n", "q", "l", "agg-a", "agg-b", "agg-l", "cloud"];
        let classes = [
            DocClass::of("results/o/w").unwrap(),
            DocClass::of("results/n/w").unwrap(),
            DocClass::of("results/p/w").unwrap(),
            DocClass::of("results/q/w").unwrap(),
            DocClass::of("rollup/site-b/w").unwrap(),
            DocClass::of("rollup/site-b+line/w").unwrap(),
            DocClass::of("rollup/site-a/w").unwrap(),
            DocClass::Mesh,
        ];
        for next in [&joined, &moved, &elected, &unknown, &split] {
            for change in [(&before, next), (next, &before)] {
                for me in nodes {
                    let affected = change.0.peers_affected_by(change.1, me);
                    for peer in nodes {
                        if peer == me || affected.contains(peer) {
                            continue;
                        }
                        for class in &classes {
                            assert_eq!(
                                change.0.shared_between(class, me, peer),
                                change.1.shared_between(class, me, peer),
                                "{me} with {peer} about {class:?}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_round_starts_both_sides_sessions_from_the_persisted_state() {
        // The aggregator's opening for the owner's results was dropped by the owner, whose
        // policy did not share them at that moment: the aggregator's in-memory session still
        // waits for an answer. The owner's policy changes and its round reaches the
        // aggregator: the store must forget the in-memory sessions with the owner before the
        // round's sessions run, or it would have nothing to say.
        let now = Duration::ZERO;
        let mut policy = SharePolicy::default();
        policy.zone_of.insert("o".into(), "site".into());
        policy.aggregator_of.insert("site".into(), "agg".into());
        let mut agg = Replicator::new("agg".into(), SyncConfig::default());
        agg.handle(SyncIn::Policy(policy.clone()), now);
        agg.handle(SyncIn::PeerUp("o".into()), now);
        agg.drain();
        let summary = Message::Summary {
            digest: [9; 16],
            docs: 1,
            reply: false,
        };
        agg.handle(SyncIn::Received("o".into(), summary.clone()), now);
        let out = agg.drain();
        assert!(
            matches!(&out[0], SyncOut::ForgetPeer(p) if p == "o"),
            "{out:?}"
        );
        agg.handle(
            SyncIn::Received(
                "o".into(),
                Message::Catalogue {
                    buckets: u16::MAX,
                    complete: true,
                    entries: vec![entry(7, 7, "results/o/w")],
                },
            ),
            now,
        );
        assert!(
            agg.drain()
                .iter()
                .any(|o| matches!(o, SyncOut::Generate { doc, .. } if *doc == [7; 16]))
        );

        // The side whose policy changed starts its sessions afresh too.
        let mut owner = Replicator::new("o".into(), SyncConfig::default());
        owner.handle(SyncIn::PeerUp("agg".into()), now);
        owner.drain();
        owner.handle(SyncIn::Policy(policy), now);
        let out = owner.drain();
        let forget = out
            .iter()
            .position(|o| matches!(o, SyncOut::ForgetPeer(p) if p == "agg"));
        let summary = out
            .iter()
            .position(|o| matches!(o, SyncOut::Send(p, Message::Summary { .. }) if p == "agg"));
        assert!(forget.is_some() && forget < summary, "{out:?}");

        // Equal summaries open no round and forget nothing.
        let mut twin = Replicator::new("agg".into(), SyncConfig::default());
        twin.handle(SyncIn::PeerUp("o".into()), now);
        let sent = twin.drain();
        let ours = sends(&sent)[0].clone();
        twin.handle(SyncIn::Received("o".into(), ours), now);
        assert!(
            !twin
                .drain()
                .iter()
                .any(|o| matches!(o, SyncOut::ForgetPeer(_)))
        );
    }

    #[test]
    fn a_new_registry_entry_starts_a_round_with_its_aggregator_only() {
        let now = Duration::ZERO;
        let mut a = Replicator::new("a".into(), SyncConfig::default());
        a.handle(SyncIn::LocalDocs(vec![entry(1, 1, "mesh")]), now);
        for peer in ["agg", "b", "c"] {
            a.handle(SyncIn::PeerUp(peer.into()), now);
        }
        let mut policy = SharePolicy::default();
        policy.aggregator_of.insert("site".into(), "agg".into());
        a.handle(SyncIn::Policy(policy.clone()), now);
        a.drain();
        policy.zone_of.insert("new".into(), "site".into());
        a.handle(SyncIn::Policy(policy), now);
        let summaries_to: Vec<NodeId> = a
            .drain()
            .into_iter()
            .filter_map(|o| match o {
                SyncOut::Send(peer, Message::Summary { .. }) => Some(peer),
                _ => None,
            })
            .collect();
        assert_eq!(summaries_to, vec!["agg".to_owned()]);
    }

    fn entry(doc: u8, digest: u8, name: &str) -> CatalogueEntry {
        CatalogueEntry {
            doc: [doc; 16],
            digest: [digest; 16],
            name: name.into(),
        }
    }

    fn sends(out: &[SyncOut]) -> Vec<&Message> {
        out.iter()
            .filter_map(|o| match o {
                SyncOut::Send(_, m) => Some(m),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_session_whose_message_was_not_applied_opens_a_new_round_after_two_checks() {
        let period = SyncConfig::default().stall_check;
        let mut a = Replicator::new("a".into(), SyncConfig::default());
        a.handle(SyncIn::LocalDocs(vec![entry(1, 1, "mesh")]), Duration::ZERO);
        a.handle(SyncIn::PeerUp("b".into()), Duration::ZERO);
        a.drain();
        // The peer holds older heads; our message to it is lost (it refused to apply it).
        a.handle(
            SyncIn::Received(
                "b".into(),
                Message::Heads {
                    doc: [1; 16],
                    digest: [2; 16],
                    name: None,
                },
            ),
            Duration::ZERO,
        );
        let generate = a.drain();
        assert!(
            generate
                .iter()
                .any(|o| matches!(o, SyncOut::Generate { doc, .. } if *doc == [1; 16])),
            "{generate:?}"
        );
        a.handle(
            SyncIn::Generated {
                doc: [1; 16],
                peer: "b".into(),
                payload: Some(vec![1]),
            },
            Duration::ZERO,
        );
        a.drain();
        assert_eq!(a.poll_timeout(Duration::ZERO), Some(period));

        // One check sees the difference; the next, with no progress, opens a round.
        a.handle_timeout(period);
        assert!(sends(&a.drain()).is_empty());
        a.handle_timeout(period * 2);
        let out = a.drain();
        assert!(
            matches!(&out[..], [SyncOut::ForgetPeer(p), SyncOut::Send(q, Message::Summary { .. })]
                if p == "b" && q == "b"),
            "{out:?}"
        );
        assert_eq!(a.stall_rounds(), 1);

        // Progress on the peer's side between two checks is no stall.
        a.handle_timeout(period * 3);
        a.handle(
            SyncIn::Received(
                "b".into(),
                Message::Heads {
                    doc: [1; 16],
                    digest: [3; 16],
                    name: None,
                },
            ),
            period * 3,
        );
        a.handle(
            SyncIn::Generated {
                doc: [1; 16],
                peer: "b".into(),
                payload: Some(vec![2]),
            },
            period * 3,
        );
        a.drain();
        a.handle_timeout(period * 4);
        assert!(sends(&a.drain()).is_empty());
        assert_eq!(a.stall_rounds(), 1);

        // Heads in step: nothing to heal, however long it lasts.
        a.handle(
            SyncIn::Received(
                "b".into(),
                Message::Heads {
                    doc: [1; 16],
                    digest: [1; 16],
                    name: None,
                },
            ),
            period * 4,
        );
        a.drain();
        for k in 5..10 {
            a.handle_timeout(period * k);
        }
        assert!(sends(&a.drain()).is_empty());
        assert_eq!(a.stall_rounds(), 1);
        // And a quiet replicator sets no timer: a network of them goes quiet.
        assert_eq!(a.poll_timeout(period * 10), None);
    }

    /// A replica whose storage fails from the `fail_at`-th operation on.
    struct FailingReplica {
        done: usize,
        fail_at: usize,
    }

    impl FailingReplica {
        fn step(&mut self) -> Result<(), String> {
            self.done += 1;
            if self.done > self.fail_at {
                Err("no space left on device".into())
            } else {
                Ok(())
            }
        }
    }

    impl Replica for FailingReplica {
        type Error = String;
        fn catalogue(&mut self) -> Result<Vec<CatalogueEntry>, String> {
            Ok(Vec::new())
        }
        fn generate(&mut self, _: &DocId, _: &str) -> Result<Option<Vec<u8>>, String> {
            self.step().map(|()| Some(vec![7]))
        }
        fn restart_session(&mut self, _: &DocId, _: &str) {}
        fn apply(
            &mut self,
            batch: Vec<ApplyRequest>,
        ) -> Result<Vec<Result<Applied, ApplyFailed>>, String> {
            self.step()?;
            Ok(batch
                .iter()
                .map(|_| {
                    Ok(Applied {
                        changed: false,
                        ours: [1; 16],
                        theirs: None,
                    })
                })
                .collect())
        }
        fn forget_peer(&mut self, _: &str) {}
    }

    #[test]
    fn a_store_that_fails_mid_batch_answers_every_operation() {
        let ops = || {
            vec![
                SyncOut::Apply {
                    doc: [1; 16],
                    peer: "b".into(),
                    name: None,
                    payload: vec![1],
                },
                SyncOut::Send("b".into(), Message::Goodbye { reason: "x".into() }),
                SyncOut::Generate {
                    doc: [2; 16],
                    peer: "b".into(),
                    fresh: false,
                },
                SyncOut::Generate {
                    doc: [3; 16],
                    peer: "c".into(),
                    fresh: true,
                },
                SyncOut::ForgetPeer("c".into()),
                SyncOut::Generate {
                    doc: [4; 16],
                    peer: "c".into(),
                    fresh: false,
                },
            ]
        };
        let kinds = |served: &Served| -> Vec<(&'static str, DocId)> {
            served
                .answers
                .iter()
                .map(|a| match a {
                    SyncIn::Applied { doc, outcome, .. } => (
                        if outcome.is_ok() {
                            "applied"
                        } else {
                            "refused"
                        },
                        *doc,
                    ),
                    SyncIn::Generated { doc, .. } => ("generated", *doc),
                    SyncIn::GenerateFailed { doc, .. } => ("failed", *doc),
                    other => panic!("not an answer: {other:?}"),
                })
                .collect()
        };
        // Apply and one generate succeed; the storage fails at the second generate.
        let (served, failure) = serve(
            &mut FailingReplica {
                done: 0,
                fail_at: 2,
            },
            ops(),
        );
        assert_eq!(failure.as_deref(), Some("no space left on device"));
        assert_eq!(
            kinds(&served),
            [
                ("applied", [1; 16]),
                ("generated", [2; 16]),
                ("failed", [3; 16]),
                ("failed", [4; 16])
            ]
        );
        assert_eq!(
            served.network,
            [SyncOut::Send(
                "b".into(),
                Message::Goodbye { reason: "x".into() }
            )]
        );
        // The very first operation fails: the apply is refused, not blamed on the peer.
        let (served, failure) = serve(
            &mut FailingReplica {
                done: 0,
                fail_at: 0,
            },
            ops(),
        );
        assert!(failure.is_some());
        assert_eq!(kinds(&served)[0], ("refused", [1; 16]));
        assert!(matches!(
            &served.answers[0],
            SyncIn::Applied {
                outcome: Err(ApplyFailed {
                    peer_at_fault: false,
                    heard: false,
                    ..
                }),
                ..
            }
        ));
        assert_eq!(served.answers.len(), 4);
        // A store that is refusing answers everything the same way, without being asked.
        assert_eq!(kinds(&Served::refused(ops(), "recovering")), kinds(&served));
    }

    #[test]
    fn a_failed_generate_is_watched_and_a_reopened_store_compares_again_with_every_peer() {
        let period = SyncConfig::default().stall_check;
        let mut a = Replicator::new("a".into(), SyncConfig::default());
        a.handle(
            SyncIn::LocalDocs(vec![entry(1, 1, "mesh"), entry(2, 1, "workflow/w")]),
            Duration::ZERO,
        );
        for peer in ["b", "c"] {
            a.handle(SyncIn::PeerUp(peer.into()), Duration::ZERO);
        }
        a.drain();
        a.handle(SyncIn::LocalChanged(entry(1, 2, "mesh")), Duration::ZERO);
        let asked = a.drain();
        assert_eq!(
            asked
                .iter()
                .filter(|o| matches!(o, SyncOut::Generate { .. }))
                .count(),
            2,
            "{asked:?}"
        );
        for peer in ["b", "c"] {
            a.handle(
                SyncIn::GenerateFailed {
                    doc: [1; 16],
                    peer: peer.into(),
                },
                Duration::ZERO,
            );
        }
        // Not asked again at once (the store refuses until it reopens), but watched.
        assert!(a.drain().is_empty());
        assert_eq!(a.poll_timeout(Duration::ZERO), Some(period));
        // The store comes back having lost the change and the workflow (never durable).
        a.handle(
            SyncIn::StoreReopened(vec![entry(1, 1, "mesh")]),
            Duration::from_millis(50),
        );
        let out = a.drain();
        for peer in ["b", "c"] {
            assert!(
                out.iter()
                    .any(|o| matches!(o, SyncOut::ForgetPeer(p) if p == peer)),
                "{out:?}"
            );
            assert!(
                out.iter().any(|o| matches!(o,
                    SyncOut::Send(p, Message::Summary { reply: true, docs: 1, .. }) if p == peer)),
                "{out:?}"
            );
        }
    }

    #[test]
    fn a_message_whose_changes_were_refused_is_answered_and_one_refused_here_is_not() {
        let mut a = Replicator::new("a".into(), SyncConfig::default());
        a.handle(SyncIn::LocalDocs(vec![entry(1, 1, "mesh")]), Duration::ZERO);
        a.handle(SyncIn::PeerUp("b".into()), Duration::ZERO);
        a.drain();
        let failed = |heard| SyncIn::Applied {
            doc: [1; 16],
            peer: "b".into(),
            outcome: Err(ApplyFailed {
                reason: "x".into(),
                peer_at_fault: false,
                heard,
            }),
        };
        let asked = |out: &[SyncOut]| {
            out.iter()
                .any(|o| matches!(o, SyncOut::Generate { peer, .. } if peer == "b"))
        };
        // A store that could not apply (its disk full) has not heard the peer: nothing to say.
        a.handle(failed(false), Duration::ZERO);
        assert!(!asked(&a.drain()));
        // Only the author's changes were refused: the answer carries what b lacks.
        a.handle(failed(true), Duration::ZERO);
        let out = a.drain();
        assert!(asked(&out), "{out:?}");
    }

    #[test]
    fn equal_summaries_end_the_exchange() {
        let now = Duration::ZERO;
        let mut a = Replicator::new("a".into(), SyncConfig::default());
        let mut b = Replicator::new("b".into(), SyncConfig::default());
        let docs = vec![entry(1, 1, "mesh"), entry(2, 2, "workflow/w")];
        a.handle(SyncIn::LocalDocs(docs.clone()), now);
        b.handle(SyncIn::LocalDocs(docs), now);
        a.handle(SyncIn::PeerUp("b".into()), now);
        b.handle(SyncIn::PeerUp("a".into()), now);
        let from_a = a.drain();
        let from_b = b.drain();
        for m in sends(&from_b) {
            a.handle(SyncIn::Received("b".into(), m.clone()), now);
        }
        for m in sends(&from_a) {
            b.handle(SyncIn::Received("a".into(), m.clone()), now);
        }
        assert!(a.drain().is_empty());
        assert!(b.drain().is_empty());
        assert!(a.status("b").unwrap().pending.is_empty());
        assert_eq!(a.status("b").unwrap().shared, 2);
    }

    #[test]
    fn differing_documents_start_sessions_and_a_missing_one_is_asked_for() {
        let now = Duration::ZERO;
        let mut a = Replicator::new("a".into(), SyncConfig::default());
        a.handle(
            SyncIn::LocalDocs(vec![
                entry(1, 1, "results/a/w"),
                entry(2, 2, "workflow/w"),
                entry(3, 3, "mesh"),
            ]),
            now,
        );
        a.handle(SyncIn::PeerUp("b".into()), now);
        a.drain();
        // b holds an older mesh and no workflow; results/a stay with a.
        a.handle(
            SyncIn::Received(
                "b".into(),
                Message::Catalogue {
                    buckets: u16::MAX,
                    complete: true,
                    entries: vec![entry(3, 9, "mesh")],
                },
            ),
            now,
        );
        let out = a.drain();
        let generates: Vec<DocId> = out
            .iter()
            .filter_map(|o| match o {
                SyncOut::Generate { doc, .. } => Some(*doc),
                _ => None,
            })
            .collect();
        // The mesh differs on both sides: a session. The workflow b lacks: b asks for it.
        assert_eq!(generates, vec![[3; 16]]);
        let pending = a.status("b").unwrap().pending;
        assert_eq!(pending, vec!["workflow/w".to_string(), "mesh".to_string()]);
    }

    #[test]
    fn told_heads_are_answered_once_when_equal_and_open_a_fresh_session_when_not() {
        let now = Duration::ZERO;
        let mut a = Replicator::new("a".into(), SyncConfig::default());
        a.handle(SyncIn::LocalDocs(vec![entry(1, 1, "workflow/w")]), now);
        a.handle(SyncIn::PeerUp("b".into()), now);
        a.drain();
        let heads = |digest: u8, name: Option<&str>| Message::Heads {
            doc: [1; 16],
            digest: [digest; 16],
            name: name.map(str::to_owned),
        };
        // b holds what a holds: a says so once (b cannot know), and then nothing more. b knows
        // the document by name, since it told its heads.
        a.handle(SyncIn::Received("b".into(), heads(1, None)), now);
        assert_eq!(sends(&a.drain()), vec![&heads(1, None)]);
        a.handle(SyncIn::Received("b".into(), heads(1, None)), now);
        assert!(a.drain().is_empty());
        assert!(a.status("b").unwrap().pending.is_empty());
        // b moved on: a opens a session afresh rather than answering with heads.
        a.handle(SyncIn::Received("b".into(), heads(2, None)), now);
        assert_eq!(
            a.drain(),
            vec![SyncOut::Generate {
                doc: [1; 16],
                peer: "b".into(),
                fresh: true
            }]
        );
        // Heads of a document a may not share with b (someone else's results) are ignored.
        a.handle(
            SyncIn::Received(
                "b".into(),
                Message::Heads {
                    doc: [7; 16],
                    digest: [7; 16],
                    name: Some("results/c/w".into()),
                },
            ),
            now,
        );
        assert!(a.drain().is_empty());
    }

    #[test]
    fn a_document_both_hold_differently_is_opened_by_the_smaller_id_alone() {
        let now = Duration::ZERO;
        let catalogue = |digest: u8| Message::Catalogue {
            buckets: u16::MAX,
            complete: true,
            entries: vec![entry(3, digest, "mesh")],
        };
        let generates = |r: &mut Replicator| {
            r.drain()
                .into_iter()
                .filter(|o| matches!(o, SyncOut::Generate { .. }))
                .count()
        };
        let mut a = Replicator::new("a".into(), SyncConfig::default());
        let mut b = Replicator::new("b".into(), SyncConfig::default());
        a.handle(SyncIn::LocalDocs(vec![entry(3, 1, "mesh")]), now);
        b.handle(SyncIn::LocalDocs(vec![entry(3, 2, "mesh")]), now);
        a.handle(SyncIn::PeerUp("b".into()), now);
        b.handle(SyncIn::PeerUp("a".into()), now);
        a.drain();
        b.drain();
        a.handle(SyncIn::Received("b".into(), catalogue(2)), now);
        b.handle(SyncIn::Received("a".into(), catalogue(1)), now);
        assert_eq!(generates(&mut a), 1);
        assert_eq!(generates(&mut b), 0);
        // b still knows the document differs, and waits for a's opening.
        assert_eq!(b.status("a").unwrap().pending, vec!["mesh".to_string()]);
    }

    #[test]
    fn a_document_unknown_by_name_is_not_applied() {
        let now = Duration::ZERO;
        let mut a = Replicator::new("a".into(), SyncConfig::default());
        a.handle(SyncIn::PeerUp("b".into()), now);
        a.drain();
        let sync = |name: Option<&str>| Message::Sync {
            doc: [5; 16],
            name: name.map(str::to_owned),
            payload: vec![1],
        };
        a.handle(SyncIn::Received("b".into(), sync(None)), now);
        assert!(a.drain().is_empty());
        // Someone else's results are not for this node.
        a.handle(SyncIn::Received("b".into(), sync(Some("results/c/w"))), now);
        assert!(a.drain().is_empty());
        a.handle(SyncIn::Received("b".into(), sync(Some("workflow/x"))), now);
        assert_eq!(
            a.drain(),
            vec![SyncOut::Apply {
                doc: [5; 16],
                peer: "b".into(),
                name: Some("workflow/x".into()),
                payload: vec![1],
            }]
        );
    }

    #[test]
    fn generates_are_bounded_and_coalesced() {
        let now = Duration::ZERO;
        let mut a = Replicator::new(
            "a".into(),
            SyncConfig {
                max_outstanding: 2,
                bytes_per_sec: None,
                ..SyncConfig::default()
            },
        );
        a.handle(SyncIn::PeerUp("b".into()), now);
        a.drain();
        for i in 0..5 {
            a.handle(
                SyncIn::LocalChanged(entry(i, 1, &format!("workflow/{i}"))),
                now,
            );
        }
        let out = a.drain();
        assert_eq!(
            out.iter()
                .filter(|o| matches!(o, SyncOut::Generate { .. }))
                .count(),
            2
        );
        // A change during a generate asks for one more, after the answer.
        a.handle(SyncIn::LocalChanged(entry(0, 2, "workflow/0")), now);
        assert!(a.drain().is_empty());
        a.handle(
            SyncIn::Generated {
                doc: [0; 16],
                peer: "b".into(),
                payload: Some(vec![7]),
            },
            now,
        );
        let out = a.drain();
        assert!(
            matches!(&out[0], SyncOut::Send(_, Message::Sync { name: Some(n), .. }) if n == "workflow/0")
        );
        assert!(matches!(out[1], SyncOut::Generate { .. }));
    }

    #[test]
    fn a_late_answer_from_an_earlier_connection_does_not_lift_the_bound() {
        let now = Duration::ZERO;
        let mut a = Replicator::new(
            "a".into(),
            SyncConfig {
                max_outstanding: 1,
                bytes_per_sec: None,
                ..SyncConfig::default()
            },
        );
        a.handle(SyncIn::PeerUp("b".into()), now);
        a.handle(SyncIn::LocalChanged(entry(1, 1, "workflow/1")), now);
        a.drain();
        // The connection drops and comes back while the store still works on doc 1.
        a.handle(SyncIn::PeerDown("b".into()), now);
        a.handle(SyncIn::PeerUp("b".into()), now);
        a.handle(SyncIn::LocalChanged(entry(2, 1, "workflow/2")), now);
        a.handle(SyncIn::LocalChanged(entry(3, 1, "workflow/3")), now);
        let generates = |out: &[SyncOut]| {
            out.iter()
                .filter(|o| matches!(o, SyncOut::Generate { .. }))
                .count()
        };
        assert_eq!(generates(&a.drain()), 1);
        // The answer of the earlier connection's session arrives: it frees nothing.
        a.handle(
            SyncIn::Generated {
                doc: [1; 16],
                peer: "b".into(),
                payload: None,
            },
            now,
        );
        assert_eq!(
            generates(&a.drain()),
            0,
            "two generates outstanding, bound 1"
        );
    }

    #[test]
    fn artifact_blobs_wait_behind_definitions_and_results_behind_blobs() {
        let mut a = Replicator::new(
            "a".into(),
            SyncConfig {
                max_outstanding: 100,
                bytes_per_sec: Some(1000),
                ..SyncConfig::default()
            },
        );
        let t0 = Duration::from_secs(1);
        a.handle(
            SyncIn::Policy(SharePolicy {
                clouds: BTreeSet::from(["b".to_owned()]),
                results_to_clouds: true,
                ..SharePolicy::default()
            }),
            t0,
        );
        a.handle(SyncIn::PeerUp("b".into()), t0);
        // Spend the budget, then queue a definition and a results window.
        a.spend(1500);
        a.handle(SyncIn::LocalChanged(entry(1, 1, "workflow/1")), t0);
        a.handle(SyncIn::LocalChanged(entry(2, 1, "results/a/1")), t0);
        a.drain();
        assert!(!a.artifacts_may_send(t0), "no budget");
        a.set_artifacts_waiting(true);
        let later = t0 + Duration::from_secs(1);
        a.handle_timeout(later);
        let generated: Vec<DocId> = a
            .drain()
            .into_iter()
            .filter_map(|o| match o {
                SyncOut::Generate { doc, .. } => Some(doc),
                _ => None,
            })
            .collect();
        assert_eq!(
            generated,
            vec![[1; 16]],
            "the definition first, results held"
        );
        assert!(
            a.artifacts_may_send(later),
            "budget left, nothing above blobs waits"
        );
        a.spend(5000);
        a.set_artifacts_waiting(false);
        let much_later = later + Duration::from_secs(6);
        a.handle_timeout(much_later);
        assert!(
            a.drain()
                .iter()
                .any(|o| matches!(o, SyncOut::Generate { doc, .. } if *doc == [2; 16])),
            "results go once blobs no longer wait"
        );
    }

    #[test]
    fn the_byte_budget_paces_sessions() {
        let mut a = Replicator::new(
            "a".into(),
            SyncConfig {
                max_outstanding: 100,
                bytes_per_sec: Some(1000),
                ..SyncConfig::default()
            },
        );
        let t0 = Duration::from_secs(1);
        a.handle(SyncIn::PeerUp("b".into()), t0);
        a.handle(SyncIn::LocalChanged(entry(1, 1, "workflow/1")), t0);
        a.drain();
        a.handle(
            SyncIn::Generated {
                doc: [1; 16],
                peer: "b".into(),
                payload: Some(vec![0; 3000]),
            },
            t0,
        );
        a.drain();
        a.handle(SyncIn::LocalChanged(entry(2, 1, "workflow/2")), t0);
        assert!(
            a.drain()
                .iter()
                .all(|o| !matches!(o, SyncOut::Generate { .. }))
        );
        let wake = a.poll_timeout(t0).expect("waiting for budget");
        assert!(wake > t0 + Duration::from_secs(1));
        a.handle_timeout(wake);
        assert!(
            a.drain()
                .iter()
                .any(|o| matches!(o, SyncOut::Generate { .. }))
        );
    }
}
