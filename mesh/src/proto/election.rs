//! Zone aggregator election: which node aggregates each zone, from this node's zone up to the
//! root.
//!
//! # Zones
//! A zone is a path such as `site-a/line-3` (parent `site-a`, whose parent is the root zone
//! `""`). The members of zone `Z` are the live nodes whose zone is `Z` plus the aggregators of
//! `Z`'s child zones: the aggregator of `site-a/line-3` takes part in `site-a`'s election, and so
//! on up to the root, where the cloud peer sits. Each zone elects one aggregator among its
//! members. The members of a zone are expected to reach each other directly (one LAN, or
//! `--peer` addresses); a zone split by a partition elects one aggregator per side, and the two
//! resolve to one when the sides meet again.
//!
//! # What nodes tell each other
//! Every node sends a [`Status`] on each new connection and to every peer whenever it changes:
//! its zone, role and [`Capabilities`], its uptime, the zones it aggregates ([`Claim`]s) and the
//! aggregator chain it sees. A peer counts as a live member once it is up (membership says so),
//! its status has arrived, and it has been heard from within [`ElectionTiming::lease`]: the
//! drivers renew leases from membership's last-heard times when they fall due
//! ([`Election::renew`]), or report frames one by one ([`InEvent::Heard`]).
//!
//! # Rank
//! Candidates are ordered by [`Rank`], compared field by field, higher first:
//! 1. role: cloud before edge;
//! 2. power: mains before battery or unknown (the two are equal);
//! 3. CPU count;
//! 4. memory class: ⌊log2(total memory in MiB)⌋, so 15.6 GiB and 15.9 GiB are equal;
//! 5. free disk class: ⌊log2(free MiB on the data dir's filesystem)⌋;
//! 6. uptime class: under 1 min, 10 min, 1 h, 1 day, then a day or more (0..=4);
//! 7. node id: the smaller id first.
//!
//! Fields 1–4 are the *stable* part of the rank: they do not change while a node runs (unless
//! its power source does). Free disk and uptime are noisy: they order candidates in a fresh
//! election but never displace a sitting aggregator.
//!
//! # The decision for one zone
//! With the members `M` of a zone and the claimants `C ⊆ M` (members that announce they
//! aggregate it):
//! - `best` = the member of highest rank;
//! - `incumbent` = the claimant with an established claim if any, then the highest rank (an
//!   established claim has been held for [`ElectionTiming::establish`]; a node that was alone a
//!   moment ago and joins an established zone therefore yields);
//! - the aggregator is `incumbent`, unless there is none or `best` is *clearly better*: its stable
//!   rank (role, power, CPUs, memory class) is strictly higher. Then it is `best`.
//!
//! Everything the decision reads is in the statuses, so members that see the same membership
//! and the same statuses pick the same aggregator. After a partition heals the zone has two
//! claimants; the rule above keeps one, and the other stops claiming as soon as it sees the
//! first. When the aggregator is lost (membership reports it down, or its lease runs out) its
//! claim disappears with it, and the members pick `best` in the same step: there is no
//! timeout before re-election.
//!
//! # The chain
//! A node decides its own zone. Where it wins, it takes part in the parent zone and decides that
//! too, and so on. Above the first level it does not win, it adopts the chain announced by that
//! level's aggregator: a node sees its own zone's members, not necessarily the upper levels.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use super::membership::{self, NodeId};
use super::wire::{Capabilities, Claim, MAX_STATUS_ZONES, Power, Role, Status};

/// A zone path: segments joined by `/`; the root zone is `""`.
pub type Zone = String;

/// Most levels in a zone path (`a/b/c` has three).
pub const MAX_ZONE_DEPTH: usize = 8;

/// Longest zone path, in bytes (as document names allow).
pub const MAX_ZONE_LEN: usize = 128;

/// Upper bounds of the uptime classes; a node up for longer than the last is in the top class.
const UPTIME_CLASSES: [Duration; 4] = [
    Duration::from_secs(60),
    Duration::from_secs(600),
    Duration::from_secs(3600),
    Duration::from_secs(86_400),
];

/// Why a zone path is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ZoneError {
    /// The path is longer than [`MAX_ZONE_LEN`].
    #[error("zone `{0}` is longer than {MAX_ZONE_LEN} bytes")]
    TooLong(String),
    /// The path has more than [`MAX_ZONE_DEPTH`] levels.
    #[error("zone `{0}` has more than {MAX_ZONE_DEPTH} levels")]
    TooDeep(String),
    /// A level is empty (a leading, trailing or doubled `/`).
    #[error("zone `{0}` has an empty level (a leading, trailing or doubled '/')")]
    EmptyLevel(String),
    /// A level has a character other than ASCII letters, digits, `-`, `_` and `.`.
    #[error(
        "zone `{zone}`: level `{level}` may only contain ASCII letters, digits, '-', '_' and '.'"
    )]
    BadLevel {
        /// The whole path.
        zone: String,
        /// The offending level.
        level: String,
    },
}

/// Checks a zone path: `""` (the root) or levels of ASCII letters, digits, `-`, `_` and `.`
/// joined by `/`, at most [`MAX_ZONE_DEPTH`] levels and [`MAX_ZONE_LEN`] bytes.
pub fn check_zone(zone: &str) -> Result<(), ZoneError> {
    if zone.is_empty() {
        return Ok(());
    }
    if zone.len() > MAX_ZONE_LEN {
        return Err(ZoneError::TooLong(zone.to_owned()));
    }
    let mut depth = 0;
    for level in zone.split('/') {
        depth += 1;
        if level.is_empty() {
            return Err(ZoneError::EmptyLevel(zone.to_owned()));
        }
        if !level
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(ZoneError::BadLevel {
                zone: zone.to_owned(),
                level: level.to_owned(),
            });
        }
    }
    if depth > MAX_ZONE_DEPTH {
        return Err(ZoneError::TooDeep(zone.to_owned()));
    }
    Ok(())
}

/// The parent of a zone; `None` for the root.
pub fn parent_zone(zone: &str) -> Option<&str> {
    if zone.is_empty() {
        None
    } else {
        Some(zone.rsplit_once('/').map_or("", |(parent, _)| parent))
    }
}

/// A zone and its ancestors, from the zone up to the root: `a/b` gives `["a/b", "a", ""]`.
pub fn zone_path(zone: &str) -> Vec<&str> {
    let mut path = vec![zone];
    let mut at = zone;
    while let Some(parent) = parent_zone(at) {
        path.push(parent);
        at = parent;
    }
    path
}

/// A candidate's place in the order of candidates (see the module documentation). `Ord` puts
/// the better candidate last, so the best is the maximum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rank {
    /// Role; cloud ranks first.
    pub role: Role,
    /// Mains power; battery and unknown are equal.
    pub mains: bool,
    /// Logical CPUs.
    pub cpus: u32,
    /// ⌊log2(total memory, MiB)⌋.
    pub memory_class: u8,
    /// ⌊log2(free disk, MiB)⌋.
    pub disk_class: u8,
    /// 0: under 1 min, 1: under 10 min, 2: under 1 h, 3: under 1 day, 4: longer.
    pub uptime_class: u8,
    /// The node id; the smaller id ranks first.
    pub node: NodeId,
}

impl Rank {
    /// The rank of a node with these capabilities, up for `uptime`.
    pub fn of(node: &str, role: Role, caps: &Capabilities, uptime: Duration) -> Rank {
        Rank {
            role,
            mains: caps.power == Power::Mains,
            cpus: caps.cpus,
            memory_class: log2_class(caps.memory_mb),
            disk_class: log2_class(caps.disk_free_mb),
            uptime_class: uptime_class(uptime),
            node: node.to_owned(),
        }
    }

    /// The rank a status announces.
    pub fn of_status(node: &str, status: &Status) -> Rank {
        Rank::of(
            node,
            status.role,
            &status.caps,
            Duration::from_secs(status.uptime_s),
        )
    }

    /// The part of the rank that does not drift while a node runs.
    fn stable(&self) -> (Role, bool, u32, u8) {
        (self.role, self.mains, self.cpus, self.memory_class)
    }

    /// Whether this candidate should displace `incumbent`: its stable rank (role, power, CPUs,
    /// memory class) is strictly higher. Free disk, uptime and node id never displace.
    pub fn clearly_better_than(&self, incumbent: &Rank) -> bool {
        self.stable() > incumbent.stable()
    }
}

impl Ord for Rank {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (
            self.role,
            self.mains,
            self.cpus,
            self.memory_class,
            self.disk_class,
            self.uptime_class,
        )
            .cmp(&(
                other.role,
                other.mains,
                other.cpus,
                other.memory_class,
                other.disk_class,
                other.uptime_class,
            ))
            // Reversed: the smaller id is the better candidate.
            .then_with(|| other.node.cmp(&self.node))
    }
}

impl PartialOrd for Rank {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

fn log2_class(mb: u64) -> u8 {
    (63 - mb.max(1).leading_zeros()) as u8
}

fn uptime_class(uptime: Duration) -> u8 {
    UPTIME_CLASSES.iter().filter(|b| uptime >= **b).count() as u8
}

/// Timing knobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElectionTiming {
    /// A peer not heard from for this long no longer counts as a member, whatever membership
    /// says. Longer than membership's `dead_after`, so that normally membership speaks first.
    pub lease: Duration,
    /// How long a claim must be held before it is established and outranks fresh claims.
    /// Longer than it takes a starting node to find its zone (mDNS answers within ~1 s).
    pub establish: Duration,
}

impl Default for ElectionTiming {
    fn default() -> Self {
        ElectionTiming {
            lease: Duration::from_secs(3),
            establish: Duration::from_secs(10),
        }
    }
}

/// What happened, as the driver tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InEvent {
    /// A peer is connected (membership's `PeerUp`). This node's status is sent to it.
    PeerUp(NodeId),
    /// A peer is gone (membership's `PeerDown`): it stops counting at once, and its status is
    /// forgotten (a new connection brings a new one).
    PeerDown(NodeId),
    /// A frame arrived from a peer: renews its lease.
    Heard(NodeId),
    /// A peer's status arrived.
    Status {
        /// The sender.
        from: NodeId,
        /// What it said.
        status: Status,
    },
}

/// What the driver must do, or should know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutEvent {
    /// Send this node's status to one peer (it just connected).
    Send(NodeId, Status),
    /// Send this node's status to every connected peer (it changed).
    Broadcast(Status),
    /// This node's chain or the zones it aggregates changed; the new view.
    Changed(Hierarchy),
    /// A peer's status was ignored.
    Refused {
        /// The sender.
        from: NodeId,
        /// Why.
        reason: String,
    },
}

/// This node's place in the hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    /// This node's zone.
    pub zone: Zone,
    /// From this node's zone up to the root: each zone with its aggregator, if known.
    pub chain: Vec<(Zone, Option<NodeId>)>,
    /// The zones this node aggregates, from its own zone upwards (a prefix of the chain).
    pub aggregates: Vec<Zone>,
    /// The aggregators of the zones directly below those this node aggregates, as their live
    /// claims say (one per zone: an established claim first, then the smaller node id), so that
    /// what flows up from them can be routed here.
    pub below: Vec<(Zone, NodeId)>,
    /// Zones directly below those this node aggregates that more than one live peer claims
    /// with an established claim, with those claimants (by node id): the zone is split, its members cannot reach each other
    /// while each side reaches this node. Each claimant's rollups cover different nodes, so all
    /// of them are accepted here, not only the one in `below`.
    pub split: Vec<(Zone, Vec<NodeId>)>,
}

impl Hierarchy {
    /// Whether this node aggregates a zone. An aggregator also does its zone's upkeep
    /// (folding the registry's heads), so that one node per zone does it.
    pub fn is_aggregator(&self) -> bool {
        !self.aggregates.is_empty()
    }
}

#[derive(Debug, Clone)]
struct Peer {
    up: bool,
    expired: bool,
    last_heard: Duration,
    status: Option<Status>,
}

impl Peer {
    fn live(&self) -> Option<&Status> {
        if self.up && !self.expired {
            self.status.as_ref()
        } else {
            None
        }
    }
}

/// One member of a zone as the decision sees it.
struct Member<'a> {
    node: &'a str,
    rank: Rank,
    /// Its claim on the zone being decided, if any: established or not.
    claim: Option<bool>,
}

/// The election state machine of one node.
///
/// Feed it with [`Election::handle`] (or [`Election::handle_membership`]) and
/// [`Election::handle_timeout`]; drain what it asks for with [`Election::poll`] after each call.
/// It reads no clock: `now` is the time since any fixed origin, the same for every call.
#[derive(Debug, Clone)]
pub struct Election {
    me: NodeId,
    zone: Zone,
    role: Role,
    caps: Capabilities,
    timing: ElectionTiming,
    started: Duration,
    now: Duration,
    peers: BTreeMap<NodeId, Peer>,
    /// No lease of a live peer runs out before this (it may be earlier than the first that
    /// does): a frame moves a lease later without touching it, so renewing a lease on every
    /// frame costs no pass over the peers, and neither do `poll_timeout` and most wakes.
    lease_check: Option<Duration>,
    /// The zones this node claims, along its path from its zone upwards, with when each claim
    /// began.
    claims: Vec<(Zone, Duration)>,
    chain: Vec<(Zone, Option<NodeId>)>,
    reported: Hierarchy,
    announced: Status,
    out: VecDeque<OutEvent>,
}

/// Keeps `check` no later than `runs_out`, a lease's end.
fn lease_runs_out(check: &mut Option<Duration>, runs_out: Duration) {
    *check = Some(check.map_or(runs_out, |at| at.min(runs_out)));
}

impl Election {
    /// A node of `zone` that knows no peers yet: it aggregates its zone and every zone above.
    /// Its uptime counts from `now`.
    pub fn new(
        me: NodeId,
        zone: Zone,
        role: Role,
        caps: Capabilities,
        timing: ElectionTiming,
        now: Duration,
    ) -> Result<Self, ZoneError> {
        check_zone(&zone)?;
        let empty = Hierarchy {
            zone: zone.clone(),
            chain: Vec::new(),
            aggregates: Vec::new(),
            below: Vec::new(),
            split: Vec::new(),
        };
        let placeholder = Status {
            zone: zone.clone(),
            role,
            caps,
            uptime_s: 0,
            aggregates: Vec::new(),
            chain: Vec::new(),
        };
        let mut election = Election {
            me,
            zone,
            role,
            caps,
            timing,
            started: now,
            now,
            lease_check: None,
            peers: BTreeMap::new(),
            claims: Vec::new(),
            chain: Vec::new(),
            reported: empty,
            announced: placeholder,
            out: VecDeque::new(),
        };
        election.decide();
        election.reported = election.hierarchy();
        election.announced = election.status();
        Ok(election)
    }

    /// Takes one event; drain the resulting actions with [`Election::poll`].
    pub fn handle(&mut self, event: InEvent, now: Duration) {
        self.now = self.now.max(now);
        match event {
            InEvent::PeerUp(node) => {
                if node == self.me {
                    return;
                }
                let peer = self.peers.entry(node.clone()).or_insert(Peer {
                    up: true,
                    expired: false,
                    last_heard: self.now,
                    status: None,
                });
                peer.up = true;
                peer.expired = false;
                peer.last_heard = self.now;
                self.lease_starts();
                self.update();
                self.out.push_back(OutEvent::Send(node, self.status()));
            }
            InEvent::PeerDown(node) => {
                if self.peers.remove(&node).is_some() {
                    self.update();
                }
            }
            InEvent::Heard(node) => self.heard(&node, self.now),
            InEvent::Status { from, status } => {
                let Some(peer) = self.peers.get_mut(&from) else {
                    self.out.push_back(OutEvent::Refused {
                        from,
                        reason: "status from a peer that is not connected".into(),
                    });
                    return;
                };
                peer.last_heard = self.now;
                peer.expired = false;
                lease_runs_out(&mut self.lease_check, self.now + self.timing.lease);
                if let Err(reason) = check_status(&status) {
                    self.out.push_back(OutEvent::Refused { from, reason });
                    return;
                }
                peer.status = Some(status);
                self.update();
            }
        }
    }

    /// Feeds the peer changes among membership's actions, in their order. A `PeerDown`
    /// followed in the same batch by a `PeerUp` of the same node is membership replacing a
    /// connection, not a loss: the peer keeps counting (and is sent this node's status again).
    pub fn handle_membership(&mut self, actions: &[membership::OutEvent], now: Duration) {
        for (i, action) in actions.iter().enumerate() {
            match action {
                membership::OutEvent::PeerUp(node) => {
                    self.handle(InEvent::PeerUp(node.clone()), now);
                }
                membership::OutEvent::PeerDown(node, _) => {
                    let back = actions[i + 1..]
                        .iter()
                        .any(|a| matches!(a, membership::OutEvent::PeerUp(n) if n == node));
                    if !back {
                        self.handle(InEvent::PeerDown(node.clone()), now);
                    }
                }
                _ => {}
            }
        }
    }

    /// A frame arrived from a peer: renews its lease.
    fn heard(&mut self, node: &str, at: Duration) {
        if let Some(peer) = self.peers.get_mut(node) {
            peer.last_heard = peer.last_heard.max(at);
            if peer.expired && self.now < peer.last_heard + self.timing.lease {
                peer.expired = false;
                self.lease_starts();
                self.update();
            }
        }
    }

    /// Whether leases are to be looked at now: a driver that does not report every frame
    /// ([`InEvent::Heard`]) calls [`Election::renew`] first, with when each peer was last
    /// heard from.
    pub fn leases_due(&self, now: Duration) -> bool {
        self.lease_check.is_some_and(|at| at <= now)
    }

    /// Renews leases from when each peer was last heard from, as membership knows it (it
    /// sees every frame). Drivers call this when [`Election::leases_due`] rather than
    /// reporting every frame, which cost a lookup by node id per frame.
    pub fn renew<'a>(&mut self, heard: impl IntoIterator<Item = (&'a NodeId, Duration)>) {
        for (node, at) in heard {
            self.heard(node, at);
        }
    }

    /// A lease began now (a peer came up, or was heard again after its lease ran out).
    fn lease_starts(&mut self) {
        lease_runs_out(&mut self.lease_check, self.now + self.timing.lease);
    }

    /// Advances timers: expired leases, uptime classes, claims becoming established.
    pub fn handle_timeout(&mut self, now: Duration) {
        let before = self.now;
        self.now = self.now.max(now);
        let lease = self.timing.lease;
        let mut expired = false;
        if self.lease_check.is_some_and(|at| at <= self.now) {
            self.lease_check = None;
            for peer in self.peers.values_mut() {
                if !peer.up || peer.expired {
                    continue;
                }
                let runs_out = peer.last_heard + lease;
                if self.now >= runs_out {
                    peer.expired = true;
                    expired = true;
                } else {
                    lease_runs_out(&mut self.lease_check, runs_out);
                }
            }
        }
        // Deciding again costs a pass over every member of every zone: do it only when a
        // lease ran out or a time that enters the decision (an uptime class, a claim becoming
        // established) passed since the last call. Drivers wake this machine for every timer of
        // the node, most of which concern other machines.
        let crossed = |at: Duration| before < at && at <= self.now;
        let boundary = UPTIME_CLASSES.iter().any(|b| crossed(self.started + *b))
            || self
                .claims
                .iter()
                .any(|(_, since)| crossed(*since + self.timing.establish));
        if expired || boundary {
            self.update();
        }
    }

    /// When [`Election::handle_timeout`] must next be called, if anything is scheduled.
    pub fn poll_timeout(&self) -> Option<Duration> {
        let uptime = UPTIME_CLASSES
            .iter()
            .map(|b| self.started + *b)
            .find(|at| *at > self.now);
        let establish = self
            .claims
            .iter()
            .map(|(_, since)| *since + self.timing.establish)
            .filter(|at| *at > self.now);
        self.lease_check
            .into_iter()
            .chain(uptime)
            .chain(establish)
            .min()
    }

    /// The next action for the driver, if any.
    pub fn poll(&mut self) -> Option<OutEvent> {
        self.out.pop_front()
    }

    /// Drains every pending action.
    pub fn drain(&mut self) -> Vec<OutEvent> {
        self.out.drain(..).collect()
    }

    /// Updates this node's capabilities (free disk changes as it runs). Peers hear of it only
    /// when its rank changes.
    pub fn set_capabilities(&mut self, caps: Capabilities, now: Duration) {
        self.now = self.now.max(now);
        self.caps = caps;
        self.update();
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.me
    }

    /// This node's zone.
    pub fn zone(&self) -> &str {
        &self.zone
    }

    /// This node's place in the hierarchy: its chain and the zones it aggregates.
    pub fn hierarchy(&self) -> Hierarchy {
        let mut below: BTreeMap<&str, (bool, &NodeId)> = BTreeMap::new();
        let mut claimants: BTreeMap<&str, Vec<NodeId>> = BTreeMap::new();
        for (node, peer) in &self.peers {
            let Some(status) = peer.live() else {
                continue;
            };
            for claim in &status.aggregates {
                let under_mine = parent_zone(&claim.zone)
                    .is_some_and(|parent| self.claims.iter().any(|(z, _)| z == parent));
                if !under_mine {
                    continue;
                }
                // Only established claims make a split: a starting node claims every zone on
                // its path for a moment, and must not be sent a zone's rollups for it.
                if claim.established {
                    claimants
                        .entry(claim.zone.as_str())
                        .or_default()
                        .push(node.clone());
                }
                // Peers iterate in id order: a later one replaces only with an established
                // claim over a fresh one.
                let better = below
                    .get(claim.zone.as_str())
                    .is_none_or(|(established, _)| claim.established && !*established);
                if better {
                    below.insert(&claim.zone, (claim.established, node));
                }
            }
        }
        Hierarchy {
            zone: self.zone.clone(),
            chain: self.chain.clone(),
            aggregates: self.claims.iter().map(|(z, _)| z.clone()).collect(),
            below: below
                .into_iter()
                .map(|(zone, (_, node))| (zone.to_owned(), node.clone()))
                .collect(),
            split: claimants
                .into_iter()
                .filter(|(_, nodes)| nodes.len() > 1)
                .map(|(zone, nodes)| (zone.to_owned(), nodes))
                .collect(),
        }
    }

    /// From this node's zone up to the root: each zone with its aggregator, if known.
    pub fn chain(&self) -> &[(Zone, Option<NodeId>)] {
        &self.chain
    }

    /// The zones this node aggregates, from its own zone upwards.
    pub fn aggregates(&self) -> Vec<Zone> {
        self.claims.iter().map(|(z, _)| z.clone()).collect()
    }

    /// The aggregator of a zone: from the chain for this node's zone and its ancestors, else
    /// decided from the members this node sees (`None` if it sees none).
    pub fn aggregator_of(&self, zone: &str) -> Option<NodeId> {
        if let Some((_, node)) = self.chain.iter().find(|(z, _)| z == zone) {
            return node.clone();
        }
        decide(self.members_of(zone, self.is_member(zone))).map(str::to_owned)
    }

    /// The live members of a zone this node sees (itself included when it is one), by node id:
    /// the nodes of the zone and the aggregators of its child zones.
    pub fn members(&self, zone: &str) -> Vec<NodeId> {
        let mut nodes: Vec<NodeId> = self
            .members_of(zone, self.is_member(zone))
            .map(|m| m.node.to_owned())
            .collect();
        nodes.sort();
        nodes
    }

    /// The last status a live peer sent.
    pub fn status_of(&self, node: &str) -> Option<&Status> {
        self.peers.get(node).and_then(Peer::live)
    }

    /// This node's rank now.
    pub fn rank(&self) -> Rank {
        Rank::of(&self.me, self.role, &self.caps, self.uptime())
    }

    /// The status this node announces now.
    pub fn status(&self) -> Status {
        Status {
            zone: self.zone.clone(),
            role: self.role,
            caps: self.caps,
            uptime_s: self.uptime().as_secs(),
            aggregates: self
                .claims
                .iter()
                .map(|(zone, since)| Claim {
                    zone: zone.clone(),
                    established: self.now >= *since + self.timing.establish,
                })
                .collect(),
            chain: self.chain.clone(),
        }
    }

    fn uptime(&self) -> Duration {
        self.now.saturating_sub(self.started)
    }

    /// Decides again, then reports and announces what changed.
    fn update(&mut self) {
        self.decide();
        let view = self.hierarchy();
        if view != self.reported {
            self.reported = view.clone();
            self.out.push_back(OutEvent::Changed(view));
        }
        let status = self.status();
        if significant(&status) != significant(&self.announced) {
            self.announced = status.clone();
            self.out.push_back(OutEvent::Broadcast(status));
        }
    }

    /// Decides this node's chain and claims from the current view. A level's decision reads
    /// this node's claims, which are the decision's output: repeat until they settle (twice at
    /// most per level, see the module documentation).
    fn decide(&mut self) {
        for _ in 0..=2 * (MAX_ZONE_DEPTH + 1) {
            let (chain, won) = self.evaluate();
            self.chain = chain;
            let settled = won.len() == self.claims.len()
                && won.iter().zip(&self.claims).all(|(w, (c, _))| w == c);
            if settled {
                return;
            }
            let now = self.now;
            let old = std::mem::take(&mut self.claims);
            self.claims = won
                .into_iter()
                .map(|zone| {
                    let since = old
                        .iter()
                        .find(|(z, _)| *z == zone)
                        .map_or(now, |(_, since)| *since);
                    (zone, since)
                })
                .collect();
        }
        debug_assert!(false, "the election did not settle");
    }

    /// One pass over this node's path: returns the chain and the levels this node wins.
    fn evaluate(&self) -> (Vec<(Zone, Option<NodeId>)>, Vec<Zone>) {
        let path = zone_path(&self.zone);
        let mut chain = Vec::with_capacity(path.len());
        let mut won = Vec::new();
        for (i, level) in path.iter().enumerate() {
            // This node takes part here: the level is its zone, or it won the level below.
            let winner = decide(self.members_of(level, true))
                .expect("this node is a member")
                .to_owned();
            let mine = winner == self.me;
            chain.push(((*level).to_owned(), Some(winner.clone())));
            if mine {
                won.push((*level).to_owned());
                continue;
            }
            // Above a level this node does not win, it adopts what that level's aggregator
            // announces.
            let theirs = self
                .status_of(&winner)
                .map(|s| s.chain.as_slice())
                .unwrap_or_default();
            for above in &path[i + 1..] {
                let node = theirs
                    .iter()
                    .find(|(z, _)| z == above)
                    .and_then(|(_, n)| n.clone());
                chain.push(((*above).to_owned(), node));
            }
            break;
        }
        (chain, won)
    }

    /// Whether this node is a member of `zone`: its own zone, or one whose child it aggregates.
    fn is_member(&self, zone: &str) -> bool {
        self.zone == zone
            || self
                .claims
                .iter()
                .any(|(z, _)| parent_zone(z) == Some(zone))
    }

    /// The live members of `zone`, this node among them if `me`.
    fn members_of<'a>(&'a self, zone: &'a str, me: bool) -> impl Iterator<Item = Member<'a>> + 'a {
        let mine = me.then(|| Member {
            node: &self.me,
            rank: self.rank(),
            claim: self
                .claims
                .iter()
                .find(|(z, _)| z == zone)
                .map(|(_, since)| self.now >= *since + self.timing.establish),
        });
        let others = self.peers.iter().filter_map(move |(node, peer)| {
            let status = peer.live()?;
            let member = status.zone == zone
                || status
                    .aggregates
                    .iter()
                    .any(|c| parent_zone(&c.zone) == Some(zone));
            member.then(|| Member {
                node,
                rank: Rank::of_status(node, status),
                claim: status
                    .aggregates
                    .iter()
                    .find(|c| c.zone == zone)
                    .map(|c| c.established),
            })
        });
        mine.into_iter().chain(others)
    }
}

/// The decision for one zone among its members (see the module documentation).
fn decide<'a>(members: impl IntoIterator<Item = Member<'a>>) -> Option<&'a str> {
    let members: Vec<Member<'a>> = members.into_iter().collect();
    let best = members.iter().max_by(|a, b| a.rank.cmp(&b.rank))?;
    let incumbent = members
        .iter()
        .filter_map(|m| m.claim.map(|established| (established, m)))
        .max_by(|(ea, a), (eb, b)| (ea, &a.rank).cmp(&(eb, &b.rank)));
    match incumbent {
        Some((_, incumbent)) if !best.rank.clearly_better_than(&incumbent.rank) => {
            Some(incumbent.node)
        }
        _ => Some(best.node),
    }
}

/// What peers must hear about: everything but the exact free disk and uptime, which change all
/// the time and matter only through their classes, and but the chain of a node that aggregates
/// nothing: peers adopt only an aggregator's chain, so a member's chain changes would cost a
/// message to every peer each time the upper levels change, for nothing. (A new connection
/// still gets the current chain.)
fn significant(status: &Status) -> impl Eq + use<> {
    (
        status.zone.clone(),
        status.role,
        status.caps.power,
        status.caps.cpus,
        log2_class(status.caps.memory_mb),
        log2_class(status.caps.disk_free_mb),
        uptime_class(Duration::from_secs(status.uptime_s)),
        status.aggregates.clone(),
        if status.aggregates.is_empty() {
            Vec::new()
        } else {
            status.chain.clone()
        },
    )
}

/// A status this node can act on: valid zones, claims only on the sender's own path.
fn check_status(status: &Status) -> Result<(), String> {
    check_zone(&status.zone).map_err(|e| e.to_string())?;
    let path = zone_path(&status.zone);
    for (i, claim) in status.aggregates.iter().enumerate() {
        if status.aggregates[..i].iter().any(|c| c.zone == claim.zone) {
            return Err(format!("claims zone `{}` twice", claim.zone));
        }
        if !path.contains(&claim.zone.as_str()) {
            return Err(format!(
                "claims zone `{}`, which is not on the path of its zone `{}`",
                claim.zone, status.zone
            ));
        }
    }
    if status.aggregates.len() > MAX_STATUS_ZONES || status.chain.len() > MAX_STATUS_ZONES {
        return Err("names too many zones".into());
    }
    for (zone, _) in &status.chain {
        check_zone(zone).map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, VecDeque};

    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    const EDGE: Role = Role::Edge;
    const CLOUD: Role = Role::Cloud;

    fn caps(cpus: u32, memory_mb: u64, disk_free_mb: u64, power: Power) -> Capabilities {
        Capabilities {
            power,
            cpus,
            memory_mb,
            disk_free_mb,
        }
    }

    /// A small edge box: 4 CPUs, 8 GiB, 64 GiB free, mains.
    fn edge_box() -> Capabilities {
        caps(4, 7_800, 65_000, Power::Mains)
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// Timing for tests that do not exercise the lease: peers never expire.
    fn no_lease() -> ElectionTiming {
        ElectionTiming {
            lease: secs(1_000_000_000),
            ..ElectionTiming::default()
        }
    }

    /// Nodes joined by links that deliver statuses in order per direction, in an order across
    /// links chosen by a seeded RNG.
    struct Net {
        nodes: BTreeMap<NodeId, Election>,
        links: BTreeSet<(NodeId, NodeId)>,
        queues: BTreeMap<(NodeId, NodeId), VecDeque<Status>>,
        now: Duration,
        rng: StdRng,
        timing: ElectionTiming,
    }

    impl Net {
        fn new(seed: u64) -> Net {
            Net {
                nodes: BTreeMap::new(),
                links: BTreeSet::new(),
                queues: BTreeMap::new(),
                now: secs(0),
                rng: StdRng::seed_from_u64(seed),
                timing: no_lease(),
            }
        }

        fn add(&mut self, id: &str, zone: &str, role: Role, caps: Capabilities) {
            let e =
                Election::new(id.into(), zone.into(), role, caps, self.timing, self.now).unwrap();
            self.nodes.insert(id.into(), e);
        }

        fn node(&self, id: &str) -> &Election {
            &self.nodes[id]
        }

        fn linked(&self, a: &str, b: &str) -> bool {
            let key = if a < b { (a, b) } else { (b, a) };
            self.links.contains(&(key.0.to_owned(), key.1.to_owned()))
        }

        fn connect(&mut self, a: &str, b: &str) {
            if a == b || self.linked(a, b) {
                return;
            }
            let key = if a < b { (a, b) } else { (b, a) };
            self.links.insert((key.0.into(), key.1.into()));
            let now = self.now;
            self.nodes
                .get_mut(a)
                .unwrap()
                .handle(InEvent::PeerUp(b.into()), now);
            self.pump(a);
            self.nodes
                .get_mut(b)
                .unwrap()
                .handle(InEvent::PeerUp(a.into()), now);
            self.pump(b);
        }

        fn connect_all(&mut self) {
            let ids: Vec<NodeId> = self.nodes.keys().cloned().collect();
            for a in &ids {
                for b in &ids {
                    self.connect(a, b);
                }
            }
        }

        fn disconnect(&mut self, a: &str, b: &str) {
            if !self.linked(a, b) {
                return;
            }
            let key = if a < b { (a, b) } else { (b, a) };
            self.links.remove(&(key.0.to_owned(), key.1.to_owned()));
            self.queues.remove(&(a.to_owned(), b.to_owned()));
            self.queues.remove(&(b.to_owned(), a.to_owned()));
            let now = self.now;
            for (x, y) in [(a, b), (b, a)] {
                if let Some(e) = self.nodes.get_mut(x) {
                    e.handle(InEvent::PeerDown(y.into()), now);
                    self.pump(x);
                }
            }
        }

        /// Takes a node away: its peers see it go down, one after the other, without any
        /// message delivered in between.
        fn kill(&mut self, id: &str) {
            let peers: Vec<NodeId> = self
                .nodes
                .keys()
                .filter(|p| self.linked(id, p))
                .cloned()
                .collect();
            self.nodes.remove(id);
            for p in peers {
                self.disconnect(id, &p);
            }
        }

        fn pump(&mut self, id: &str) {
            let out = self.nodes.get_mut(id).unwrap().drain();
            for event in out {
                match event {
                    OutEvent::Send(to, status) => {
                        if self.linked(id, &to) {
                            self.queues
                                .entry((id.into(), to))
                                .or_default()
                                .push_back(status);
                        }
                    }
                    OutEvent::Broadcast(status) => {
                        let peers: Vec<NodeId> = self
                            .nodes
                            .keys()
                            .filter(|p| self.linked(id, p))
                            .cloned()
                            .collect();
                        for p in peers {
                            self.queues
                                .entry((id.into(), p))
                                .or_default()
                                .push_back(status.clone());
                        }
                    }
                    OutEvent::Changed(_) => {}
                    OutEvent::Refused { from, reason } => {
                        panic!("{id} refused a status from {from}: {reason}")
                    }
                }
            }
        }

        /// Delivers one message from a random non-empty link; false when none is pending.
        fn deliver_one(&mut self) -> bool {
            let pending: Vec<(NodeId, NodeId)> = self
                .queues
                .iter()
                .filter(|(_, q)| !q.is_empty())
                .map(|(k, _)| k.clone())
                .collect();
            if pending.is_empty() {
                return false;
            }
            let (from, to) = pending[self.rng.gen_range(0..pending.len())].clone();
            let status = self
                .queues
                .get_mut(&(from.clone(), to.clone()))
                .unwrap()
                .pop_front()
                .unwrap();
            let now = self.now;
            self.nodes
                .get_mut(&to)
                .unwrap()
                .handle(InEvent::Status { from, status }, now);
            self.pump(&to);
            true
        }

        /// Delivers until nothing is pending; panics if that does not happen.
        fn settle(&mut self) {
            for _ in 0..200_000 {
                if !self.deliver_one() {
                    return;
                }
            }
            panic!("the election did not settle");
        }

        /// Moves time forward and runs every node's timers.
        fn advance(&mut self, by: Duration) {
            self.now += by;
            let now = self.now;
            let ids: Vec<NodeId> = self.nodes.keys().cloned().collect();
            for id in ids {
                self.nodes.get_mut(&id).unwrap().handle_timeout(now);
                self.pump(&id);
            }
        }

        /// The groups of nodes that reach each other (links are expected to form cliques).
        fn components(&self) -> Vec<BTreeSet<NodeId>> {
            let mut seen = BTreeSet::new();
            let mut out = Vec::new();
            for id in self.nodes.keys() {
                if seen.contains(id) {
                    continue;
                }
                let group: BTreeSet<NodeId> = self
                    .nodes
                    .keys()
                    .filter(|p| *p == id || self.linked(id, p))
                    .cloned()
                    .collect();
                seen.extend(group.iter().cloned());
                out.push(group);
            }
            out
        }

        /// After settling: in each component, at most one node claims each zone, and every
        /// node's chain names, for each level, the one node of its component that claims it.
        fn check_one_aggregator_per_zone(&self) -> Result<(), String> {
            for component in self.components() {
                let mut claimants: BTreeMap<Zone, Vec<&str>> = BTreeMap::new();
                for id in &component {
                    for zone in self.node(id).aggregates() {
                        claimants.entry(zone).or_default().push(id);
                    }
                }
                for (zone, nodes) in &claimants {
                    if nodes.len() > 1 {
                        return Err(format!("zone `{zone}` has aggregators {nodes:?}"));
                    }
                }
                for id in &component {
                    let e = self.node(id);
                    for (zone, node) in e.chain() {
                        let claimant = claimants.get(zone).map(|n| n[0]);
                        if node.as_deref() != claimant {
                            return Err(format!(
                                "{id} names {node:?} for zone `{zone}`, the claimant is \
                                 {claimant:?}; chain {:?}",
                                e.chain()
                            ));
                        }
                        if e.aggregator_of(zone) != node.clone() {
                            return Err(format!("{id}: aggregator_of(`{zone}`) disagrees"));
                        }
                    }
                    if e.chain().len() != zone_path(e.zone()).len() {
                        return Err(format!("{id}: chain {:?} misses levels", e.chain()));
                    }
                }
            }
            Ok(())
        }

        /// Zone → aggregator as the nodes see it (they must agree).
        fn aggregators(&self) -> BTreeMap<Zone, NodeId> {
            let mut out = BTreeMap::new();
            for (id, e) in &self.nodes {
                for zone in e.aggregates() {
                    out.insert(zone, id.clone());
                }
            }
            out
        }
    }

    #[test]
    fn zone_paths_parents_and_checks() {
        assert_eq!(
            zone_path("site-a/line-3"),
            vec!["site-a/line-3", "site-a", ""]
        );
        assert_eq!(zone_path(""), vec![""]);
        assert_eq!(parent_zone("site-a"), Some(""));
        assert_eq!(parent_zone(""), None);
        assert!(check_zone("").is_ok());
        assert!(check_zone("site-a/line_3.b").is_ok());
        assert_eq!(check_zone("/a"), Err(ZoneError::EmptyLevel("/a".into())));
        assert_eq!(
            check_zone("a//b"),
            Err(ZoneError::EmptyLevel("a//b".into()))
        );
        assert!(
            matches!(check_zone("a/b c"), Err(ZoneError::BadLevel { level, .. }) if level == "b c")
        );
        assert!(matches!(
            check_zone("a/b/c/d/e/f/g/h/i"),
            Err(ZoneError::TooDeep(_))
        ));
        assert!(check_zone("a/b/c/d/e/f/g/h").is_ok());
        assert!(matches!(
            check_zone(&"x".repeat(129)),
            Err(ZoneError::TooLong(_))
        ));
        let err = Election::new(
            "n".into(),
            "a/".into(),
            EDGE,
            edge_box(),
            no_lease(),
            secs(0),
        );
        assert!(err.is_err());
    }

    #[test]
    fn rank_order_follows_the_documented_fields() {
        let r = |id: &str, role, c: Capabilities, up: u64| Rank::of(id, role, &c, secs(up));
        let base = r("m", EDGE, edge_box(), 7200);
        // Role first: a tiny cloud node beats a big edge node.
        let tiny_cloud = r("z", CLOUD, caps(1, 512, 100, Power::Unknown), 0);
        let big_edge = r(
            "a",
            EDGE,
            caps(64, 512_000, 10_000_000, Power::Mains),
            999_999,
        );
        assert!(tiny_cloud > big_edge);
        // Then power: mains beats battery and unknown, which are equal.
        let battery = r("a", EDGE, caps(64, 7_800, 65_000, Power::Battery), 7200);
        let unknown = r("a", EDGE, caps(64, 7_800, 65_000, Power::Unknown), 7200);
        assert!(base > battery);
        assert_eq!(battery.cmp(&unknown), std::cmp::Ordering::Equal);
        // Then CPUs, memory class, free disk class, uptime class.
        assert!(r("z", EDGE, caps(8, 1_000, 1, Power::Mains), 0) > base);
        assert!(r("z", EDGE, caps(4, 16_000, 1, Power::Mains), 0) > base);
        assert!(r("z", EDGE, caps(4, 7_800, 140_000, Power::Mains), 0) > base);
        assert!(r("z", EDGE, edge_box(), 90_000) > base);
        assert!(r("z", EDGE, edge_box(), 7200) < base);
        // Last, the node id: the smaller wins.
        assert!(r("a", EDGE, edge_box(), 7200) > base);
        // Classes absorb noise: 15.6 vs 15.9 GiB, 40 vs 50 GiB free, 2 h vs 20 h up.
        let a = r("a", EDGE, caps(4, 16_000, 40_960, Power::Mains), 7_200);
        let b = r("a", EDGE, caps(4, 16_300, 51_200, Power::Mains), 72_000);
        assert_eq!(a.cmp(&b), std::cmp::Ordering::Equal);
    }

    #[test]
    fn only_the_stable_rank_is_a_clear_margin() {
        let r = |c: Capabilities, up: u64, id: &str| Rank::of(id, EDGE, &c, secs(up));
        let inc = r(edge_box(), 100, "z");
        assert!(
            !r(caps(4, 7_800, 10_000_000, Power::Mains), 999_999, "a").clearly_better_than(&inc)
        );
        assert!(r(caps(5, 7_800, 1, Power::Mains), 0, "z").clearly_better_than(&inc));
        assert!(r(caps(4, 16_000, 1, Power::Mains), 0, "z").clearly_better_than(&inc));
        let on_battery = r(caps(4, 7_800, 65_000, Power::Battery), 100, "z");
        assert!(inc.clearly_better_than(&on_battery));
        assert!(
            Rank::of("z", CLOUD, &caps(1, 1, 1, Power::Unknown), secs(0)).clearly_better_than(&inc)
        );
    }

    #[test]
    fn a_lone_node_aggregates_its_whole_path() {
        let e = Election::new(
            "n".into(),
            "a/b".into(),
            EDGE,
            edge_box(),
            no_lease(),
            secs(0),
        )
        .unwrap();
        assert_eq!(e.aggregates(), vec!["a/b", "a", ""]);
        assert_eq!(
            e.chain(),
            &[
                ("a/b".to_owned(), Some("n".to_owned())),
                ("a".to_owned(), Some("n".to_owned())),
                (String::new(), Some("n".to_owned())),
            ]
        );
    }

    #[test]
    fn the_best_node_wins_a_fresh_zone() {
        let mut net = Net::new(1);
        net.add("a", "site", EDGE, caps(2, 4_000, 10_000, Power::Mains));
        net.add("b", "site", EDGE, caps(8, 4_000, 10_000, Power::Mains));
        net.add("c", "site", EDGE, caps(8, 4_000, 10_000, Power::Battery));
        net.connect_all();
        net.settle();
        net.check_one_aggregator_per_zone().unwrap();
        assert_eq!(net.aggregators()["site"], "b");
        assert_eq!(net.node("a").aggregator_of("site").as_deref(), Some("b"));
        assert_eq!(net.node("c").members("site"), vec!["a", "b", "c"]);
    }

    #[test]
    fn a_better_newcomer_does_not_displace_a_healthy_incumbent() {
        let mut net = Net::new(2);
        net.add("m", "site", EDGE, edge_box());
        net.add("n", "site", EDGE, edge_box());
        net.connect_all();
        net.settle();
        assert_eq!(net.aggregators()["site"], "m");
        net.advance(secs(30));
        // Better by id and free disk, but not by a clear margin.
        net.add("a", "site", EDGE, caps(4, 7_800, 10_000_000, Power::Mains));
        net.connect_all();
        net.settle();
        net.check_one_aggregator_per_zone().unwrap();
        assert_eq!(net.aggregators()["site"], "m");
        // A clearly better one (more CPUs) takes over.
        net.add("z", "site", EDGE, caps(16, 7_800, 1_000, Power::Mains));
        net.connect_all();
        net.settle();
        net.check_one_aggregator_per_zone().unwrap();
        assert_eq!(net.aggregators()["site"], "z");
    }

    #[test]
    fn the_incumbent_losing_mains_power_hands_over() {
        let mut net = Net::new(3);
        net.add("a", "site", EDGE, edge_box());
        net.add("b", "site", EDGE, edge_box());
        net.connect_all();
        net.settle();
        assert_eq!(net.aggregators()["site"], "a");
        let now = net.now;
        net.nodes
            .get_mut("a")
            .unwrap()
            .set_capabilities(caps(4, 7_800, 65_000, Power::Battery), now);
        net.pump("a");
        net.settle();
        net.check_one_aggregator_per_zone().unwrap();
        assert_eq!(net.aggregators()["site"], "b");
    }

    #[test]
    fn an_established_claim_beats_a_fresh_one() {
        let mut net = Net::new(4);
        net.add("m", "site", EDGE, edge_box());
        net.add("n", "site", EDGE, edge_box());
        net.connect_all();
        net.settle();
        net.advance(secs(30));
        net.settle();
        assert!(net.node("m").status().aggregates[0].established);
        // "a" ranks higher than "m" (by id) and was alone a moment ago, claiming the zone.
        net.add("a", "site", EDGE, edge_box());
        assert_eq!(net.node("a").aggregates(), vec!["site", ""]);
        net.connect_all();
        net.settle();
        net.check_one_aggregator_per_zone().unwrap();
        assert_eq!(net.aggregators()["site"], "m");

        // Two fresh claims: the rank decides.
        let mut net = Net::new(5);
        net.add("m", "site", EDGE, edge_box());
        net.add("a", "site", EDGE, edge_box());
        net.connect_all();
        net.settle();
        assert_eq!(net.aggregators()["site"], "a");
    }

    #[test]
    fn a_lost_aggregator_is_replaced_in_the_same_step() {
        let mut net = Net::new(6);
        for id in ["a", "b", "c", "d"] {
            net.add(id, "site", EDGE, edge_box());
        }
        net.connect_all();
        net.settle();
        assert_eq!(net.aggregators()["site"], "a");
        // Every survivor decides on its own, with no message in between, and they agree.
        net.kill("a");
        for id in ["b", "c", "d"] {
            assert_eq!(
                net.node(id).aggregator_of("site").as_deref(),
                Some("b"),
                "{id}"
            );
        }
        assert_eq!(net.node("b").aggregates(), vec!["site", ""]);
        net.settle();
        net.check_one_aggregator_per_zone().unwrap();
        assert_eq!(net.aggregators()["site"], "b");
    }

    /// Node b of zone `site`, with default timing, that at 0 s met a and took it for the zone's
    /// aggregator (a's id ranks first).
    fn b_under_aggregator_a() -> Election {
        let timing = ElectionTiming::default();
        let mut b =
            Election::new("b".into(), "site".into(), EDGE, edge_box(), timing, secs(0)).unwrap();
        let a =
            Election::new("a".into(), "site".into(), EDGE, edge_box(), timing, secs(0)).unwrap();
        b.handle(InEvent::PeerUp("a".into()), secs(0));
        b.handle(
            InEvent::Status {
                from: "a".into(),
                status: a.status(),
            },
            secs(0),
        );
        assert_eq!(b.aggregator_of("site").as_deref(), Some("a"));
        b
    }

    #[test]
    fn leases_are_renewed_from_when_membership_last_heard_a_peer() {
        let mut b = b_under_aggregator_a();
        let a_id: NodeId = "a".into();
        assert!(!b.leases_due(Duration::from_millis(2_999)));
        assert!(b.leases_due(secs(3)));
        // Membership heard a at 2.5 s: the lease runs to 5.5 s.
        b.renew([(&a_id, Duration::from_millis(2_500))]);
        b.handle_timeout(secs(3));
        assert_eq!(b.aggregator_of("site").as_deref(), Some("a"));
        assert_eq!(b.poll_timeout(), Some(Duration::from_millis(5_500)));
        // Not heard since: the lease runs out, and an old time does not bring it back.
        b.renew([(&a_id, Duration::from_millis(2_500))]);
        b.handle_timeout(Duration::from_millis(5_500));
        assert_eq!(b.aggregator_of("site").as_deref(), Some("b"));
        b.renew([(&a_id, Duration::from_millis(2_500))]);
        assert_eq!(b.aggregator_of("site").as_deref(), Some("b"));
    }

    #[test]
    fn a_silent_aggregator_loses_its_lease() {
        let mut b = b_under_aggregator_a();
        b.drain();
        // Heard within the lease: still the aggregator.
        b.handle(InEvent::Heard("a".into()), Duration::from_millis(2_500));
        // Hearing a peer does not move the wake-up (that would cost a pass over the peers per
        // frame): b wakes when the first lease could have run out, and learns the next one.
        assert_eq!(b.poll_timeout(), Some(Duration::from_millis(3_000)));
        b.handle_timeout(Duration::from_millis(3_000));
        assert_eq!(b.aggregator_of("site").as_deref(), Some("a"));
        assert_eq!(b.poll_timeout(), Some(Duration::from_millis(5_500)));
        b.handle_timeout(Duration::from_millis(5_499));
        assert_eq!(b.aggregator_of("site").as_deref(), Some("a"));
        // The lease runs out: b takes over in that very step and says so.
        b.handle_timeout(Duration::from_millis(5_500));
        assert_eq!(b.aggregator_of("site").as_deref(), Some("b"));
        let out = b.drain();
        assert!(
            out.iter()
                .any(|e| matches!(e, OutEvent::Changed(h) if h.aggregates == vec!["site", ""]))
        );
        assert!(out.iter().any(|e| matches!(e, OutEvent::Broadcast(_))));
        // Heard again: a's claim counts again, and as the better-ranked claimant it wins back.
        b.handle(InEvent::Heard("a".into()), Duration::from_millis(6_000));
        assert_eq!(b.aggregator_of("site").as_deref(), Some("a"));
    }

    #[test]
    fn child_aggregators_elect_the_parent_and_the_cloud_wins_the_root() {
        let mut net = Net::new(7);
        net.add("a1", "site-a/line-1", EDGE, edge_box());
        net.add("a2", "site-a/line-1", EDGE, edge_box());
        net.add(
            "a3",
            "site-a/line-2",
            EDGE,
            caps(8, 7_800, 65_000, Power::Mains),
        );
        net.add("b1", "site-b", EDGE, edge_box());
        net.add("b2", "site-b", EDGE, edge_box());
        net.add("zc", "", CLOUD, caps(2, 2_000, 1_000, Power::Unknown));
        net.connect_all();
        net.settle();
        net.check_one_aggregator_per_zone().unwrap();
        let agg = net.aggregators();
        assert_eq!(agg["site-a/line-1"], "a1");
        assert_eq!(agg["site-a/line-2"], "a3");
        // a3 has more CPUs than a1: it wins site-a.
        assert_eq!(agg["site-a"], "a3");
        assert_eq!(agg["site-b"], "b1");
        assert_eq!(agg[""], "zc");
        assert_eq!(net.node("a3").aggregates(), vec!["site-a/line-2", "site-a"]);
        assert_eq!(net.node("zc").aggregates(), vec![""]);
        assert_eq!(net.node("a1").members("site-a"), vec!["a1", "a3"]);
        assert_eq!(net.node("zc").members(""), vec!["a3", "b1", "zc"]);
        assert_eq!(
            net.node("a2").chain(),
            &[
                ("site-a/line-1".to_owned(), Some("a1".to_owned())),
                ("site-a".to_owned(), Some("a3".to_owned())),
                (String::new(), Some("zc".to_owned())),
            ]
        );
    }

    #[test]
    fn a_zone_split_under_the_parent_lists_every_established_claimant() {
        let mut net = Net::new(11);
        net.add("a1", "site-a", EDGE, edge_box());
        net.add("a2", "site-a", EDGE, edge_box());
        net.add("zc", "", CLOUD, caps(2, 2_000, 1_000, Power::Unknown));
        net.connect("a1", "zc");
        net.connect("a2", "zc");
        net.settle();
        // Each half of site-a claims it; a fresh claim is no split yet (a starting node claims
        // every zone on its path for a moment).
        assert!(net.node("zc").hierarchy().split.is_empty());
        net.advance(secs(30));
        net.settle();
        let view = net.node("zc").hierarchy();
        assert_eq!(
            view.split,
            vec![("site-a".to_owned(), vec!["a1".to_owned(), "a2".to_owned()])]
        );
        assert_eq!(view.below, vec![("site-a".to_owned(), "a1".to_owned())]);
        // The members meet: one aggregator again, and no split.
        net.connect("a1", "a2");
        net.settle();
        net.check_one_aggregator_per_zone().unwrap();
        assert!(net.node("zc").hierarchy().split.is_empty());
    }

    #[test]
    fn a_member_adopts_the_chain_above_from_its_aggregator() {
        // m is in site-a/line-1 and sees only its zone's aggregator a, which sees the cloud.
        let mut net = Net::new(8);
        net.add("a", "site-a/line-1", EDGE, edge_box());
        net.add("m", "site-a/line-1", EDGE, edge_box());
        net.add("c", "", CLOUD, edge_box());
        net.connect("a", "m");
        net.connect("a", "c");
        net.settle();
        assert_eq!(
            net.node("m").chain(),
            &[
                ("site-a/line-1".to_owned(), Some("a".to_owned())),
                ("site-a".to_owned(), Some("a".to_owned())),
                (String::new(), Some("c".to_owned())),
            ]
        );
        assert!(net.node("m").aggregates().is_empty());
        assert_eq!(net.node("m").aggregator_of("").as_deref(), Some("c"));
    }

    #[test]
    fn bad_statuses_are_refused() {
        let mut e = Election::new(
            "n".into(),
            "s".into(),
            EDGE,
            edge_box(),
            no_lease(),
            secs(0),
        )
        .unwrap();
        let good = Election::new(
            "p".into(),
            "s".into(),
            EDGE,
            edge_box(),
            no_lease(),
            secs(0),
        )
        .unwrap()
        .status();
        e.handle(
            InEvent::Status {
                from: "p".into(),
                status: good.clone(),
            },
            secs(0),
        );
        assert!(
            matches!(&e.drain()[..], [OutEvent::Refused { reason, .. }] if reason.contains("not connected"))
        );
        e.handle(InEvent::PeerUp("p".into()), secs(0));
        e.drain();
        let mut bad = good.clone();
        bad.aggregates.push(Claim {
            zone: "elsewhere".into(),
            established: true,
        });
        e.handle(
            InEvent::Status {
                from: "p".into(),
                status: bad,
            },
            secs(0),
        );
        assert!(
            matches!(&e.drain()[..], [OutEvent::Refused { reason, .. }] if reason.contains("not on the path"))
        );
        let mut bad = good;
        bad.zone = "a//b".into();
        e.handle(
            InEvent::Status {
                from: "p".into(),
                status: bad,
            },
            secs(0),
        );
        assert!(
            matches!(&e.drain()[..], [OutEvent::Refused { reason, .. }] if reason.contains("empty level"))
        );
        assert!(e.status_of("p").is_none());
    }

    #[test]
    fn a_replaced_connection_is_not_a_loss() {
        let mut net = Net::new(9);
        net.add("a", "s", EDGE, edge_box());
        net.add("b", "s", EDGE, edge_box());
        net.connect_all();
        net.settle();
        let b = net.nodes.get_mut("b").unwrap();
        b.handle_membership(
            &[
                membership::OutEvent::PeerDown("a".into(), "connection replaced".into()),
                membership::OutEvent::PeerUp("a".into()),
            ],
            secs(1),
        );
        let out = b.drain();
        assert_eq!(b.aggregator_of("s").as_deref(), Some("a"));
        assert!(
            !out.iter().any(|e| matches!(e, OutEvent::Changed(_))),
            "{out:?}"
        );
        assert!(
            out.iter()
                .any(|e| matches!(e, OutEvent::Send(to, _) if to == "a"))
        );
        // A down that is not followed by an up is a loss.
        b.handle_membership(
            &[membership::OutEvent::PeerDown("a".into(), "silent".into())],
            secs(2),
        );
        assert_eq!(b.aggregator_of("s").as_deref(), Some("b"));
    }

    #[test]
    fn uptime_classes_and_established_claims_are_announced_on_time() {
        let mut e = Election::new(
            "n".into(),
            "s".into(),
            EDGE,
            edge_box(),
            no_lease(),
            secs(5),
        )
        .unwrap();
        // The claim becomes established 10 s after it began.
        assert_eq!(e.poll_timeout(), Some(secs(15)));
        e.handle_timeout(secs(15));
        assert!(matches!(&e.drain()[..], [OutEvent::Broadcast(s)] if s.aggregates[0].established));
        // Then the first uptime class boundary, 60 s after start.
        assert_eq!(e.poll_timeout(), Some(secs(65)));
        e.handle_timeout(secs(64));
        assert!(e.drain().is_empty());
        e.handle_timeout(secs(65));
        assert!(matches!(&e.drain()[..], [OutEvent::Broadcast(s)] if s.uptime_s == 60));
        e.handle_timeout(secs(86_405));
        e.drain();
        assert_eq!(e.poll_timeout(), None);
    }

    #[test]
    fn only_aggregators_announce_their_chain_changes() {
        let t = secs(0);
        let mut a =
            Election::new("a".into(), "site".into(), EDGE, edge_box(), no_lease(), t).unwrap();
        let mut m =
            Election::new("m".into(), "site".into(), EDGE, edge_box(), no_lease(), t).unwrap();
        let c = Election::new("c".into(), "".into(), CLOUD, edge_box(), no_lease(), t).unwrap();
        m.handle(InEvent::PeerUp("a".into()), t);
        m.handle(
            InEvent::Status {
                from: "a".into(),
                status: a.status(),
            },
            t,
        );
        assert_eq!(m.aggregator_of("site").as_deref(), Some("a"));
        m.drain();
        // The cloud reaches a, not m: a's chain changes and a announces it.
        a.handle(InEvent::PeerUp("c".into()), t);
        a.handle(
            InEvent::Status {
                from: "c".into(),
                status: c.status(),
            },
            t,
        );
        let announced = a
            .drain()
            .into_iter()
            .find_map(|e| match e {
                OutEvent::Broadcast(s) => Some(s),
                _ => None,
            })
            .expect("an aggregator announces its new chain");
        // m adopts it; its own chain changed, but nobody adopts a member's chain: no message.
        m.handle(
            InEvent::Status {
                from: "a".into(),
                status: announced,
            },
            t,
        );
        assert_eq!(m.chain()[1], (String::new(), Some("c".to_owned())));
        let out = m.drain();
        assert!(matches!(&out[..], [OutEvent::Changed(_)]), "{out:?}");
    }

    #[test]
    fn capability_noise_is_not_announced() {
        let mut e = Election::new(
            "n".into(),
            "s".into(),
            EDGE,
            edge_box(),
            no_lease(),
            secs(0),
        )
        .unwrap();
        e.set_capabilities(caps(4, 7_800, 64_000, Power::Mains), secs(1));
        assert!(e.drain().is_empty());
        e.set_capabilities(caps(4, 7_800, 20_000, Power::Mains), secs(2));
        assert!(
            matches!(&e.drain()[..], [OutEvent::Broadcast(s)] if s.caps.disk_free_mb == 20_000)
        );
    }

    const ZONES: [&str; 6] = ["", "a", "a/x", "a/y", "b", "b/z"];

    #[derive(Debug, Clone)]
    struct Spec {
        zone: usize,
        cloud: bool,
        power: u8,
        cpus: u32,
        memory_mb: u64,
        disk_free_mb: u64,
        started_s: u64,
        group: u8,
    }

    fn arb_spec() -> impl Strategy<Value = Spec> {
        (
            0..ZONES.len(),
            prop::bool::weighted(0.15),
            0u8..3,
            1u32..4,
            1_000u64..40_000,
            1u64..1_000_000,
            0u64..200_000,
            0u8..3,
        )
            .prop_map(
                |(zone, cloud, power, cpus, memory_mb, disk_free_mb, started_s, group)| Spec {
                    zone,
                    cloud,
                    power,
                    cpus,
                    memory_mb,
                    disk_free_mb,
                    started_s,
                    group,
                },
            )
    }

    fn spec_caps(s: &Spec) -> Capabilities {
        caps(
            s.cpus,
            s.memory_mb,
            s.disk_free_mb,
            [Power::Unknown, Power::Battery, Power::Mains][s.power as usize],
        )
    }

    /// Nodes started at various times, linked within their groups in a random order.
    fn build(specs: &[Spec], seed: u64) -> Net {
        let mut net = Net::new(seed);
        for (i, s) in specs.iter().enumerate() {
            net.now = secs(s.started_s);
            let role = if s.cloud { CLOUD } else { EDGE };
            net.add(&format!("n{i:02}"), ZONES[s.zone], role, spec_caps(s));
        }
        net.now = secs(200_000);
        net.advance(secs(0));
        let mut pairs = Vec::new();
        for i in 0..specs.len() {
            for j in i + 1..specs.len() {
                if specs[i].group == specs[j].group {
                    pairs.push((i, j));
                }
            }
        }
        // Links come up in a random order, with messages delivered in between.
        while !pairs.is_empty() {
            let (i, j) = pairs.swap_remove(net.rng.gen_range(0..pairs.len()));
            net.connect(&format!("n{i:02}"), &format!("n{j:02}"));
            for _ in 0..net.rng.gen_range(0..4) {
                net.deliver_one();
            }
        }
        net
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        /// Whatever the members, capabilities, partitions and delivery order: after settling,
        /// each component has at most one aggregator per zone and every member agrees on it;
        /// after the partitions heal, the same holds for the whole mesh.
        #[test]
        fn members_agree_and_each_zone_has_one_aggregator(
            specs in proptest::collection::vec(arb_spec(), 2..10),
            seed in any::<u64>(),
        ) {
            let mut net = build(&specs, seed);
            net.settle();
            net.check_one_aggregator_per_zone().map_err(TestCaseError::fail)?;
            net.advance(secs(30));
            net.settle();
            net.check_one_aggregator_per_zone().map_err(TestCaseError::fail)?;
            net.connect_all();
            net.settle();
            net.check_one_aggregator_per_zone().map_err(TestCaseError::fail)?;
        }

        /// Members that see the same statuses decide alike, whatever order they arrived in.
        #[test]
        fn the_order_of_announcements_does_not_matter(
            specs in proptest::collection::vec(arb_spec(), 2..10),
            seed in any::<u64>(),
        ) {
            let mut net = build(&specs, seed);
            net.connect_all();
            net.settle();
            // Two fresh observers in the same zone as the first node get every status, in two
            // different orders.
            let zone = net.node("n00").zone().to_owned();
            let statuses: Vec<(NodeId, Status)> =
                net.nodes.iter().map(|(id, e)| (id.clone(), e.status())).collect();
            let mut views = Vec::new();
            for order_seed in [seed, seed.wrapping_add(1)] {
                let mut order = statuses.clone();
                let mut rng = StdRng::seed_from_u64(order_seed);
                for i in (1..order.len()).rev() {
                    order.swap(i, rng.gen_range(0..=i));
                }
                let mut o = Election::new(
                    "zz-observer".into(), zone.clone(), EDGE, caps(1, 1, 1, Power::Battery),
                    no_lease(), net.now,
                ).unwrap();
                for (from, status) in order {
                    o.handle(InEvent::PeerUp(from.clone()), net.now);
                    o.handle(InEvent::Status { from, status }, net.now);
                }
                let decided: Vec<Option<NodeId>> =
                    ZONES.iter().map(|z| o.aggregator_of(z)).collect();
                views.push((o.chain().to_vec(), decided));
            }
            prop_assert_eq!(&views[0], &views[1]);
        }

        /// When an aggregator is lost, every remaining member of its zone names the same new
        /// aggregator in the step that reports the loss, and that choice stands.
        #[test]
        fn a_lost_aggregator_is_replaced_at_once_by_one_node(
            specs in proptest::collection::vec(arb_spec(), 3..10),
            seed in any::<u64>(),
            victim in any::<prop::sample::Index>(),
        ) {
            let mut net = build(&specs, seed);
            net.connect_all();
            net.settle();
            net.advance(secs(30));
            net.settle();
            let aggregators: Vec<NodeId> =
                net.nodes.iter().filter(|(_, e)| !e.aggregates().is_empty())
                    .map(|(id, _)| id.clone()).collect();
            let lost = victim.get(&aggregators).clone();
            let zone = net.node(&lost).zone().to_owned();
            net.kill(&lost);
            let members: Vec<NodeId> = net.nodes.iter()
                .filter(|(_, e)| e.zone() == zone).map(|(id, _)| id.clone()).collect();
            let chosen: BTreeSet<Option<NodeId>> =
                members.iter().map(|m| net.node(m).aggregator_of(&zone)).collect();
            if !members.is_empty() {
                prop_assert_eq!(chosen.len(), 1, "members disagree: {:?}", chosen);
                let chosen = chosen.into_iter().next().unwrap();
                prop_assert!(chosen.is_some() && chosen.as_deref() != Some(lost.as_str()));
                net.settle();
                net.check_one_aggregator_per_zone().map_err(TestCaseError::fail)?;
                prop_assert_eq!(net.aggregators().get(&zone).cloned(), chosen);
            }
        }

        /// Free disk and uptime may change any amount: no aggregator changes.
        #[test]
        fn capability_noise_never_displaces_an_incumbent(
            specs in proptest::collection::vec(arb_spec(), 2..10),
            seed in any::<u64>(),
            noise in proptest::collection::vec((1u64..10_000_000, any::<bool>()), 10),
            later in 0u64..200_000,
        ) {
            let mut net = build(&specs, seed);
            net.connect_all();
            net.settle();
            net.advance(secs(30));
            net.settle();
            let before = net.aggregators();
            net.advance(secs(later));
            let ids: Vec<NodeId> = net.nodes.keys().cloned().collect();
            for (id, (disk, change)) in ids.iter().zip(noise) {
                if change {
                    let now = net.now;
                    let e = net.nodes.get_mut(id).unwrap();
                    let mut c = e.caps;
                    c.disk_free_mb = disk;
                    e.set_capabilities(c, now);
                    net.pump(id);
                }
            }
            net.settle();
            net.check_one_aggregator_per_zone().map_err(TestCaseError::fail)?;
            prop_assert_eq!(net.aggregators(), before);
        }
    }
}
