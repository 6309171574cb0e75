//! The world: nodes, the event queue on virtual time, the network, mDNS, faults, workloads and
//! invariants. This module is the second driver of `mesh::proto` (the first is `mesh::net`):
//! it feeds membership and replication the same events the network driver does, and carries
//! out their actions against simulated connections and real in-memory stores.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crdt_store::docs::rollout::{
    self, Action, Control, Decision, Gate, NodeState, Plan, RolloutControls, SignedControl, Stage,
    Status,
};
use crdt_store::fault::{FaultPlan, FaultyBackend, InjectedFault};
use crdt_store::{
    ChangeTime, DocName, MERGE_HEADS_EVERY, MeshRegistry, NodeEntry, REOPEN_BACKOFF_MAX,
    REOPEN_BACKOFF_MIN, ResultsQuery, RetentionPolicy, RunRecord, RunStatus, StepDef, Store,
    StoreConfig, StoreError, Window, WorkflowDoc,
};
use mesh::proto::election::{self, Election, ElectionTiming, Hierarchy};
use mesh::proto::membership::{self, Addr, ConnId, Membership, NodeId, PeerState, Timing};
use mesh::proto::sync::{
    ABSENT, DocClass, DocId, POLICY_SETTLE, RETIRED, Replica, Replicator, Served, SharePolicy,
    SyncConfig, SyncIn, SyncOut, serve,
};
use mesh::proto::wire::{Capabilities, CatalogueEntry, HeadsDigest, Message, Power, Role};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::net::{Conn, Cut, End, Model, Net};
use crate::report::{Heal, Kind, NodeTraffic, Reelection, Report, RolloutOutcome, Violation};
use crate::scenario::{Aggregation, FaultKind, FaultSpec, GroupBy, Scenario, StorageError};

/// The mesh id of every simulated store.
const MESH_ID: &str = "sim";
/// Virtual time zero as a Unix timestamp (2026-01-01T00:00Z), for result timestamps.
const EPOCH_MS: i64 = 1_767_225_600_000;
/// How long a dial to an unreachable address takes to fail (the driver's handshake timeout).
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long mDNS keeps a crashed node's records (its TTL) before peers see it leave.
const MDNS_TTL: Duration = Duration::from_secs(120);
/// How often divergence is sampled while something changes.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);
/// Violations kept in full; more are counted.
const MAX_VIOLATIONS: usize = 50;
/// Passes of a node's timers at one instant after which its driver is spinning.
const SPIN_LIMIT: u32 = 100;
/// How long a supervisor waits before starting a node whose start failed (its disk failing).
const START_RETRY: Duration = Duration::from_secs(1);
/// A storage fault hits one of a node's next this many writes to its disk.
const STORAGE_FAULT_WITHIN: u64 = 8;
/// The workflow that `[workload.rollout]` rolls out in stages (apart from the edited ones).
const ROLLED_WORKFLOW: &str = "rolled";
/// How long the writer of the rollout's plan waits before trying again when it could not.
const ROLLOUT_START_RETRY: Duration = Duration::from_secs(1);

/// A fault planted in the simulated network: one that no protocol survives, to check that the
/// invariants catch it, or one that the protocol must heal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plant {
    /// Every catalogue frame is silently dropped: nodes never learn what differs.
    DropCatalogue,
    /// The first sync frame of each document on each connection is silently dropped, as by a
    /// receiver that refuses it: the stall check must heal it.
    DropFirstSync,
    /// A store that reopened itself after a storage failure does not tell replication what it
    /// holds now: changes rolled back with the failed commit are never asked for again, and
    /// peers' sessions believe them delivered.
    SilentReopen,
}

impl Plant {
    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Plant::DropCatalogue => "drop-catalogue",
            Plant::DropFirstSync => "drop-first-sync",
            Plant::SilentReopen => "silent-reopen",
        }
    }

    /// Parses a command-line name.
    pub fn parse(name: &str) -> Option<Plant> {
        match name {
            "drop-catalogue" => Some(Plant::DropCatalogue),
            "drop-first-sync" => Some(Plant::DropFirstSync),
            "silent-reopen" => Some(Plant::SilentReopen),
            _ => None,
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The scenario.
    pub scenario: Scenario,
    /// How the scenario was named on the command line (for the replay command).
    pub scenario_arg: String,
    /// Node count (default: the scenario's).
    pub nodes: Option<usize>,
    /// The seed that decides everything.
    pub seed: u64,
    /// A planted bug, if any.
    pub plant: Option<Plant>,
}

#[derive(Debug)]
enum Ev {
    Start(usize),
    Wake {
        node: usize,
        inc: u32,
        generation: u64,
    },
    Serve {
        node: usize,
        inc: u32,
    },
    Connected {
        node: usize,
        inc: u32,
        conn: ConnId,
        outbound: bool,
        addr: Option<Addr>,
    },
    DialFailed {
        node: usize,
        inc: u32,
        addr: Addr,
    },
    Arrive {
        conn: ConnId,
        to: usize,
        msg: Message,
    },
    Closed {
        node: usize,
        inc: u32,
        conn: ConnId,
    },
    Discovered {
        node: usize,
        inc: u32,
        about: usize,
    },
    Lost {
        node: usize,
        inc: u32,
        about: usize,
        about_inc: Option<u32>,
    },
    Fault(usize),
    HealCut {
        cut: u64,
        label: String,
    },
    SwizzleStop {
        nodes: Vec<usize>,
        cuts: Vec<u64>,
        step: Duration,
        hold: Duration,
        label: String,
    },
    SwizzleRestore {
        cuts: Vec<u64>,
        step: Duration,
        label: String,
    },
    FlapStep {
        until: Duration,
        step: Duration,
    },
    Restart {
        node: usize,
        lose_store: bool,
    },
    /// A failed start is tried again, as a supervisor would.
    StartAgain(usize),
    /// The store thread's reopen of a broken store falls due.
    Reopen {
        node: usize,
        inc: u32,
    },
    /// Failing disks work again.
    DisksBack {
        nodes: Vec<usize>,
        label: String,
    },
    WorkflowEdit,
    /// A node writes the rollout's plan.
    RolloutStart,
    /// A node decides the rollout from its store and reports what it runs.
    RolloutTick {
        node: usize,
        inc: u32,
    },
    /// A random node pauses, resumes or aborts the rollout.
    RolloutControl,
    ResultAppend {
        node: usize,
        inc: u32,
    },
    RegistryWrite {
        node: usize,
        inc: u32,
    },
    Retention {
        node: usize,
        inc: u32,
    },
    MergeHeads {
        node: usize,
        inc: u32,
    },
    PolicyDue {
        node: usize,
        inc: u32,
    },
    Sample,
}

/// Events in the order of their time, then of their scheduling. The heap holds only that key
/// and a slot; the events themselves (up to ~130 bytes, a message inside) stay in a slab, so
/// each of the heap's sift steps moves 24 bytes. A million pending events are common.
#[derive(Default)]
struct Queue {
    heap: BinaryHeap<Reverse<(Duration, u64, u32)>>,
    slots: Vec<Option<Ev>>,
    free: Vec<u32>,
    seq: u64,
}

impl Queue {
    fn push(&mut self, at: Duration, ev: Ev) {
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Some(ev);
                slot
            }
            None => {
                self.slots.push(Some(ev));
                u32::try_from(self.slots.len() - 1).expect("fewer than 2^32 pending events")
            }
        };
        self.seq += 1;
        self.heap.push(Reverse((at, self.seq, slot)));
    }

    fn next_at(&self) -> Option<Duration> {
        self.heap.peek().map(|Reverse((at, _, _))| *at)
    }

    fn pop(&mut self) -> Option<(Duration, Ev)> {
        let Reverse((at, _, slot)) = self.heap.pop()?;
        self.free.push(slot);
        let ev = self.slots[slot as usize]
            .take()
            .expect("a queued slot holds its event");
        Some((at, ev))
    }
}

/// The volatile state of a running node: lost in a crash.
struct Live {
    membership: Membership<StdRng>,
    replicator: Replicator,
    /// The zone election, when the scenario elects aggregators.
    election: Option<Election>,
    /// The election's latest view of the hierarchy.
    hierarchy: Option<Hierarchy>,
    /// The share policy must be recomputed (the hierarchy or the registry changed).
    policy_dirty: bool,
    /// Registry changes gather until a [`POLICY_SETTLE`] pause ends, as the node's do.
    policy_due: bool,
    /// Connections open at this node.
    conns: BTreeSet<ConnId>,
    /// Store work asked for by the replicator, done at the next serve.
    ops: Vec<SyncOut>,
    serve_pending: bool,
    /// Acknowledged results not yet folded into documents.
    fold_pending: bool,
    wake_at: Option<Duration>,
    wake_generation: u64,
    /// Wakes that found the timer already due again at the same instant.
    spins: u32,
    /// Documents for which a sync frame went out on each connection (planted bug).
    first_sync_dropped: BTreeSet<(ConnId, DocId)>,
}

struct Node {
    name: String,
    id: NodeId,
    addr: Addr,
    segment: Option<usize>,
    zone: String,
    gateway: bool,
    caps: Capabilities,
    inc: u32,
    store: Option<Store>,
    live: Option<Live>,
    /// Left for good, or replaced after losing its store.
    gone: bool,
    /// Heads digests of stored documents, as the store's change listener reported them.
    digests: BTreeMap<DocId, HeadsDigest>,
    /// This node's own results documents and their windows.
    own_results: BTreeMap<DocId, Window>,
    changes: Arc<Mutex<Vec<CatalogueEntry>>>,
    /// What the store's reopen listener reported, until the replicator is told.
    reopened: Arc<Mutex<Option<Vec<CatalogueEntry>>>>,
    /// The disk under the store: storage faults are armed and cleared here. A replacement
    /// node (its store lost) gets a new disk.
    disk: Arc<FaultPlan>,
    /// Failed reopens of the broken store since it broke (for the back-off).
    reopen_attempts: u32,
    /// A reopen is scheduled.
    reopen_due: bool,
    /// The registry entry could not be written at start: written once the store serves.
    registry_owed: bool,
    results_seq: u64,
    traffic: NodeTraffic,
}

impl Node {
    fn alive(&self) -> bool {
        self.live.is_some()
    }
}

struct Acked {
    owner: usize,
    run_id: String,
    window: Window,
    /// The owner lost its store: the node that held the record then (its aggregator), if any.
    /// The record must survive as long as that node does (relayed to a new aggregator).
    held_by: Option<usize>,
}

struct Segment {
    /// The zones on this LAN; its nodes are dealt to them in turn.
    zones: Vec<String>,
    members: Vec<usize>,
}

impl Segment {
    /// The zone of the segment's `k`-th node.
    fn zone_of_member(&self, k: usize) -> String {
        self.zones[k % self.zones.len()].clone()
    }
}

/// The simulation.
#[allow(missing_debug_implementations)]
pub struct World {
    sc: Scenario,
    opts: Options,
    now: Duration,
    queue: Queue,
    rng: StdRng,
    nodes: Vec<Node>,
    by_addr: BTreeMap<Addr, usize>,
    by_id: BTreeMap<NodeId, usize>,
    net: Net,
    segments: Vec<Segment>,
    cloud: Option<usize>,
    policy: SharePolicy,
    /// Aggregator node index per zone (static aggregation).
    aggregator: BTreeMap<String, usize>,
    common_docs: Vec<DocId>,
    ledger: Vec<Acked>,
    violations: Vec<Violation>,
    violation_count: u64,
    checks: BTreeMap<&'static str, u64>,
    events: u64,
    dirty: bool,
    sample_pending: bool,
    divergence: Vec<(Duration, u64)>,
    fault_spans: Vec<(Duration, Duration, String)>,
    heals: Vec<Heal>,
    /// Aggregators lost, measured until their zones agree on another.
    reelections: Vec<Reelection>,
    writes: u64,
    edits: u64,
    last_write: Duration,
    last_fault_end: Duration,
    /// Storage operations that failed (a store broke), and successful reopens.
    store_failures: u64,
    store_reopens: u64,
    /// The decision taken from each pair of heads (registry, rolled workflow) a node decided
    /// from, and the first node that took it: whoever holds the same facts decides alike.
    rollout_decisions: BTreeMap<(HeadsDigest, HeadsDigest), (RolloutView, usize)>,
    rollout_outcome: Option<RolloutOutcome>,
}

/// What a node decides of the rollout: its status and who runs the new version.
type RolloutView = (Status, BTreeSet<String>);

/// The rollout's facts as one node's store holds them, and its decision.
struct RolloutFacts {
    plan: Plan,
    controls: Vec<Control>,
    reports: BTreeMap<String, rollout::Report>,
    decision: Decision,
}

impl RolloutFacts {
    /// Reads the facts from a node's store; `None` before the plan reached it. Controls are
    /// taken as they are stored: a real node verifies each one's signature and its author's
    /// `control` role first (`node::run::rollout::obey`, tested there); what is checked here is
    /// that the decision converges, so the simulated controls are unsigned.
    fn read(store: &mut Store) -> crdt_store::Result<Option<RolloutFacts>> {
        let name = rolled_name();
        let doc: WorkflowDoc = store.read(&name)?;
        let Some(plan) = doc.rollout.clone().filter(|p| p.version == doc.version) else {
            return Ok(None);
        };
        let registry: MeshRegistry = store.read(&DocName::Mesh)?;
        let stored: RolloutControls = store.read(&name)?;
        let targets: BTreeSet<String> = registry.nodes.keys().cloned().collect();
        let reports: BTreeMap<String, rollout::Report> = registry
            .nodes
            .iter()
            .filter_map(|(id, entry)| {
                let text = entry.rollouts.get(ROLLED_WORKFLOW)?;
                let report: rollout::Report = serde_json::from_str(text).ok()?;
                (report.rollout == plan.id).then(|| (id.clone(), report))
            })
            .collect();
        let controls: Vec<Control> = stored
            .controls
            .values()
            .filter_map(|text| serde_json::from_str::<SignedControl>(text).ok())
            .filter(|signed| signed.rollout == plan.id)
            .map(|signed| signed.control)
            .collect();
        let decision = rollout::decide(&plan, &controls, &targets, &reports);
        Ok(Some(RolloutFacts {
            plan,
            controls,
            reports,
            decision,
        }))
    }

    fn aborted(&self) -> bool {
        matches!(self.decision.status, Status::Aborted { .. })
    }

    /// The stage the rollout is at, as a control's author records it.
    fn stage(&self) -> usize {
        match self.decision.status {
            Status::Running { stage } | Status::Paused { stage } => stage,
            Status::Completed | Status::Aborted { .. } => self.plan.stages.len().saturating_sub(1),
        }
    }

    fn view(&self) -> RolloutView {
        (self.decision.status.clone(), self.decision.admitted.clone())
    }
}

impl World {
    /// Builds the world of a scenario: nodes placed on segments, nothing started yet.
    pub fn new(opts: Options) -> World {
        let sc = opts.scenario.clone();
        let mut rng = StdRng::seed_from_u64(opts.seed);
        let n = &sc.network;
        let model = Model {
            lan: (n.lan_latency[0].0, n.lan_latency[1].0),
            wan: (n.wan_latency[0].0, n.wan_latency[1].0),
            jitter: n.jitter.0,
            bytes_per_sec: n.bandwidth_mbit * 1e6 / 8.0,
            loss: n.loss,
        };
        let net = Net::new(model, rng.r#gen());
        let mut segments: Vec<Segment> = if sc.segments.is_empty() {
            vec![Segment {
                zones: vec!["lan".into()],
                members: Vec::new(),
            }]
        } else {
            sc.segments
                .iter()
                .map(|s| Segment {
                    zones: if s.zones.is_empty() {
                        vec![s.zone.clone().unwrap_or_else(|| s.name.clone())]
                    } else {
                        s.zones.clone()
                    },
                    members: Vec::new(),
                })
                .collect()
        };
        let count = opts.nodes.unwrap_or(sc.nodes).max(1);
        // Nodes go to segments by weight, largest remainder first, deterministically.
        let weights: Vec<f64> = if sc.segments.is_empty() {
            vec![1.0]
        } else {
            sc.segments.iter().map(|s| s.weight).collect()
        };
        let total: f64 = weights.iter().sum();
        let mut placed = 0;
        for (i, w) in weights.iter().enumerate() {
            let share = if i + 1 == weights.len() {
                count - placed
            } else {
                ((w / total) * count as f64).round() as usize
            };
            let share = share.min(count - placed);
            for _ in 0..share {
                segments[i].members.push(placed);
                placed += 1;
            }
        }
        let mut common_docs = vec![doc_bytes(&DocName::Mesh)];
        for k in 0..sc.workload.workflows {
            common_docs.push(doc_bytes(&workflow_name(k)));
        }
        let mut world = World {
            sc,
            opts,
            now: Duration::ZERO,
            queue: Queue::default(),
            rng,
            nodes: Vec::new(),
            by_addr: BTreeMap::new(),
            by_id: BTreeMap::new(),
            net,
            segments: Vec::new(),
            cloud: None,
            policy: SharePolicy::default(),
            aggregator: BTreeMap::new(),
            common_docs,
            ledger: Vec::new(),
            violations: Vec::new(),
            violation_count: 0,
            checks: BTreeMap::new(),
            events: 0,
            dirty: false,
            sample_pending: false,
            divergence: vec![(Duration::ZERO, 0)],
            fault_spans: Vec::new(),
            heals: Vec::new(),
            reelections: Vec::new(),
            writes: 0,
            edits: 0,
            last_write: Duration::ZERO,
            last_fault_end: Duration::ZERO,
            store_failures: 0,
            store_reopens: 0,
            rollout_decisions: BTreeMap::new(),
            rollout_outcome: None,
        };
        let gateways = world.sc.cloud.as_ref().map(|c| c.gateways_per_segment);
        for (s, seg) in segments.iter().enumerate() {
            for (k, &i) in seg.members.iter().enumerate() {
                debug_assert_eq!(i, world.nodes.len());
                let gateway = gateways.is_some_and(|g| g == 0 || k < g);
                world.add_node(Some(s), seg.zone_of_member(k), gateway, i);
            }
        }
        world.segments = segments;
        if world.sc.cloud.is_some() {
            let i = world.nodes.len();
            world.add_node(None, String::new(), false, i);
            world.cloud = Some(i);
        }
        if world.sc.aggregation == Aggregation::Static {
            for seg in &world.segments {
                for (k, &node) in seg.members.iter().enumerate() {
                    world
                        .aggregator
                        .entry(seg.zone_of_member(k))
                        .or_insert(node);
                }
            }
            world.rebuild_policy();
        }
        for i in 0..world.nodes.len() {
            world.schedule(Duration::ZERO, Ev::Start(i));
        }
        for (i, f) in world.sc.faults.clone().iter().enumerate() {
            world.schedule(f.at.0, Ev::Fault(i));
        }
        if let Some(every) = world.sc.workload.workflow_edit_every {
            let first = world.exp(every.0);
            world.schedule(first, Ev::WorkflowEdit);
        }
        if let Some(spec) = world.sc.workload.rollout.clone() {
            world.common_docs.push(doc_bytes(&rolled_name()));
            world.schedule(spec.start.0, Ev::RolloutStart);
            if let Some(every) = spec.control_every {
                let first = spec.start.0 + world.exp(every.0);
                world.schedule(first, Ev::RolloutControl);
            }
        }
        world
    }

    fn add_node(&mut self, segment: Option<usize>, zone: String, gateway: bool, index: usize) {
        let id = format!("{:016x}", self.rng.r#gen::<u64>());
        let caps = Capabilities {
            power: Power::Mains,
            cpus: if segment.is_none() {
                16
            } else {
                [2, 4, 8][self.rng.gen_range(0..3)]
            },
            memory_mb: [2048, 4096, 8192][self.rng.gen_range(0..3)],
            disk_free_mb: self.rng.gen_range(1_000..100_000),
        };
        self.by_id.insert(id.clone(), index);
        let addr = match segment {
            Some(s) => format!("10.{}.{}.{}:4860", s, index / 250, index % 250 + 1),
            None => "cloud.example:4860".to_owned(),
        };
        self.by_addr.insert(addr.clone(), index);
        self.nodes.push(Node {
            name: match segment {
                Some(_) => format!("n{index:04}"),
                None => "cloud".to_owned(),
            },
            id,
            addr,
            segment,
            zone,
            gateway,
            caps,
            inc: 0,
            store: None,
            live: None,
            gone: false,
            digests: BTreeMap::new(),
            own_results: BTreeMap::new(),
            changes: Arc::new(Mutex::new(Vec::new())),
            reopened: Arc::new(Mutex::new(None)),
            disk: FaultPlan::new(),
            reopen_attempts: 0,
            reopen_due: false,
            registry_owed: false,
            results_seq: 0,
            traffic: NodeTraffic::default(),
        });
    }

    fn rebuild_policy(&mut self) {
        // Elected aggregators come from each node's own election and registry, as on a real
        // node: the world's policy (no aggregators) would overwrite them on every node until
        // its next registry change.
        if self.sc.aggregation == Aggregation::Election {
            return;
        }
        let mut policy = SharePolicy::default();
        for node in &self.nodes {
            if !node.gone && node.segment.is_some() {
                policy.zone_of.insert(node.id.clone(), node.zone.clone());
            }
        }
        for (zone, &agg) in &self.aggregator {
            policy
                .aggregator_of
                .insert(zone.clone(), self.nodes[agg].id.clone());
        }
        self.policy = policy;
        for i in 0..self.nodes.len() {
            if self.nodes[i].alive() {
                let policy = self.policy.clone();
                self.sync_input(i, SyncIn::Policy(policy));
            }
        }
        for i in 0..self.nodes.len() {
            self.check_shares_agree(i, false);
        }
    }

    fn schedule(&mut self, at: Duration, ev: Ev) {
        self.queue.push(at.max(self.now), ev);
    }

    fn exp(&mut self, mean: Duration) -> Duration {
        let u: f64 = self.rng.gen_range(f64::EPSILON..1.0);
        Duration::from_secs_f64(-u.ln() * mean.as_secs_f64())
    }

    fn check(&mut self, name: &'static str) {
        *self.checks.entry(name).or_default() += 1;
    }

    fn violate(&mut self, invariant: &'static str, detail: String) {
        self.violation_count += 1;
        if self.violations.len() < MAX_VIOLATIONS {
            self.violations.push(Violation {
                at: self.now,
                invariant,
                detail,
            });
        }
    }

    /// Runs the scenario to its end and checks the final invariants.
    pub fn run(self) -> Report {
        self.run_with_progress(Duration::MAX, &mut |_, _| {})
    }

    /// Runs the scenario, calling `progress` with the simulated time and the events so far
    /// each time another `every` of simulated time has passed.
    pub fn run_with_progress(
        mut self,
        every: Duration,
        progress: &mut dyn FnMut(Duration, u64),
    ) -> Report {
        let end = self.sc.duration.0;
        self.advance(end, every, progress);
        self.now = end;
        self.sample();
        self.final_checks();
        self.report()
    }

    /// Processes every event due up to `until` (not beyond the scenario's end).
    fn advance(
        &mut self,
        until: Duration,
        every: Duration,
        progress: &mut dyn FnMut(Duration, u64),
    ) {
        let until = until.min(self.sc.duration.0);
        let mut next_progress = every;
        while let Some(at) = self.queue.next_at() {
            if at > until {
                break;
            }
            let (at, ev) = self.queue.pop().expect("an event is due");
            while at >= next_progress {
                progress(next_progress, self.events);
                next_progress = next_progress.saturating_add(every);
            }
            self.now = at;
            self.events += 1;
            self.dispatch(ev);
        }
    }

    fn dispatch(&mut self, ev: Ev) {
        match ev {
            Ev::Start(i) => {
                self.start(i);
            }
            Ev::Wake {
                node,
                inc,
                generation,
            } => self.wake(node, inc, generation),
            Ev::Serve { node, inc } => {
                if self.is_live(node, inc) {
                    self.serve(node);
                }
            }
            Ev::Connected {
                node,
                inc,
                conn,
                outbound,
                addr,
            } => self.connected(node, inc, conn, outbound, addr),
            Ev::DialFailed { node, inc, addr } => {
                if self.is_live(node, inc) {
                    self.membership_input(node, membership::InEvent::DialFailed { addr });
                }
            }
            Ev::Arrive { conn, to, msg } => self.arrive(conn, to, msg),
            Ev::Closed { node, inc, conn } => {
                if self.is_live(node, inc) {
                    self.membership_input(node, membership::InEvent::Closed { conn });
                }
            }
            Ev::Discovered { node, inc, about } => {
                // The record travels from `about` to `node`.
                if self.is_live(node, inc)
                    && !self.nodes[about].gone
                    && !self.net.is_cut(about, node)
                {
                    let event = membership::InEvent::Discovered {
                        node: self.nodes[about].id.clone(),
                        addr: self.nodes[about].addr.clone(),
                    };
                    self.membership_input(node, event);
                }
            }
            Ev::Lost {
                node,
                inc,
                about,
                about_inc,
            } => {
                // An expiring record (about_inc set) does not expire if the node came back.
                let expired = about_inc
                    .is_none_or(|i| self.nodes[about].inc == i && !self.nodes[about].alive());
                if self.is_live(node, inc) && expired {
                    let event = membership::InEvent::Lost {
                        node: self.nodes[about].id.clone(),
                    };
                    self.membership_input(node, event);
                }
            }
            Ev::Fault(i) => self.fault(i),
            Ev::HealCut { cut, label } => {
                self.net.heal(cut);
                self.release_held();
                // A single flapping link is not a heal of its own.
                if !label.is_empty() {
                    self.healed(label);
                }
            }
            Ev::SwizzleStop {
                nodes,
                cuts,
                step,
                hold,
                label,
            } => self.swizzle_stop(nodes, cuts, step, hold, label),
            Ev::SwizzleRestore {
                mut cuts,
                step,
                label,
            } => {
                if let Some(cut) = cuts.pop() {
                    self.net.heal(cut);
                    self.release_held();
                }
                if cuts.is_empty() {
                    self.healed(label);
                } else {
                    self.schedule(self.now + step, Ev::SwizzleRestore { cuts, step, label });
                }
            }
            Ev::FlapStep { until, step } => self.flap_step(until, step),
            Ev::Restart { node, lose_store } => self.restart(node, lose_store),
            Ev::StartAgain(node) => {
                if !self.nodes[node].gone && !self.nodes[node].alive() && self.start(node) {
                    self.check_results_survived(node);
                }
            }
            Ev::Reopen { node, inc } => self.reopen(node, inc),
            Ev::DisksBack { nodes, label } => {
                for i in nodes {
                    self.nodes[i].disk.clear();
                }
                self.healed(label);
            }
            Ev::WorkflowEdit => self.workflow_edit(),
            Ev::RolloutStart => self.rollout_start(),
            Ev::RolloutTick { node, inc } => self.rollout_tick(node, inc),
            Ev::RolloutControl => self.rollout_control(),
            Ev::ResultAppend { node, inc } => self.result_append(node, inc),
            Ev::RegistryWrite { node, inc } => {
                if self.is_live(node, inc) {
                    self.write_registry(node, false);
                    if let Some(every) = self.sc.workload.registry_every {
                        let at = self.now + self.exp(every.0);
                        if at < self.sc.quiet_from() {
                            self.schedule(at, Ev::RegistryWrite { node, inc });
                        }
                    }
                }
            }
            Ev::Retention { node, inc } => self.retention(node, inc),
            Ev::MergeHeads { node, inc } => self.merge_heads(node, inc),
            Ev::PolicyDue { node, inc } => {
                if self.is_live(node, inc) {
                    let live = self.nodes[node].live.as_mut().expect("live");
                    live.policy_due = false;
                    live.policy_dirty = true;
                    self.schedule_serve(node);
                }
            }
            Ev::Sample => {
                self.sample_pending = false;
                self.sample();
            }
        }
    }

    fn is_live(&self, node: usize, inc: u32) -> bool {
        let n = &self.nodes[node];
        n.inc == inc && n.alive()
    }

    fn wan(&self, a: usize, b: usize) -> bool {
        let (sa, sb) = (self.nodes[a].segment, self.nodes[b].segment);
        sa.is_none() || sb.is_none() || sa != sb
    }

    // ----------------------------------------------------------------------------------------
    // node life

    /// Starts node `i` as `rhizome start` does: opens its store (a node that ran before opens
    /// the same bytes again, which folds the results its log holds), then joins. `false` when
    /// the store cannot be opened (its disk failing); a supervisor tries again after
    /// [`START_RETRY`].
    fn start(&mut self, i: usize) -> bool {
        let timing = Timing::default();
        let mseed = self.rng.r#gen();
        let node = &mut self.nodes[i];
        let opened = match node.store.as_mut() {
            Some(store) => store.reopen(),
            None => {
                let mut config = StoreConfig::new(MESH_ID, &node.id);
                config.change_time = ChangeTime::Zero;
                config.results_window_minutes = self.sc.store.window_minutes;
                config.retention = RetentionPolicy {
                    max_age_ms: self.sc.store.retention.map(|d| d.0.as_millis() as i64),
                    max_bytes: None,
                };
                let disk = Arc::new(FaultyBackend::in_memory(node.disk.clone()));
                Store::open_on_backend(disk, None, config).map(|store| {
                    node.store = Some(store);
                })
            }
        };
        // The store, once made, stays with the node whatever happens: it is the node's disk.
        let catalogue =
            opened.and_then(|()| node.store.as_mut().expect("opened above").catalogue());
        let catalogue = match catalogue {
            Ok(catalogue) => catalogue,
            Err(e) => {
                assert!(
                    e.write_fault().is_some(),
                    "{}: opening the store: {e}",
                    node.name
                );
                if let Some(store) = node.store.as_mut() {
                    store.note_failure(&e);
                }
                self.store_failures += 1;
                self.schedule(self.now + START_RETRY, Ev::StartAgain(i));
                return false;
            }
        };
        node.inc += 1;
        let inc = node.inc;
        let mut store = node.store.take().expect("opened above");
        let changes = node.changes.clone();
        store.set_change_listener(move |entry| changes.lock().expect("not poisoned").push(entry));
        let reopened = node.reopened.clone();
        store.set_reopen_listener(move |held| *reopened.lock().expect("not poisoned") = Some(held));
        node.changes.lock().expect("not poisoned").clear();
        node.reopened.lock().expect("not poisoned").take();
        node.reopen_attempts = 0;
        node.reopen_due = false;
        node.digests = catalogue.iter().map(|e| (e.doc, e.digest)).collect();
        let mut replicator = Replicator::new(node.id.clone(), SyncConfig::default());
        replicator.handle(SyncIn::LocalDocs(catalogue), self.now);
        replicator.handle(SyncIn::Policy(self.policy.clone()), self.now);
        let mut membership = Membership::new(node.id.clone(), timing, StdRng::seed_from_u64(mseed));
        let election = (self.sc.aggregation == Aggregation::Election).then(|| {
            let role = if node.segment.is_none() {
                Role::Cloud
            } else {
                Role::Edge
            };
            Election::new(
                node.id.clone(),
                node.zone.clone(),
                role,
                node.caps,
                ElectionTiming::default(),
                self.now,
            )
            .expect("segment zones are valid zone paths")
        });
        if node.gateway
            && let Some(cloud) = self.cloud
        {
            let addr = self.nodes[cloud].addr.clone();
            membership.handle(membership::InEvent::Bootstrap { addr }, self.now);
        }
        let node = &mut self.nodes[i];
        node.store = Some(store);
        let elects = election.is_some();
        // The election's first view (this node alone aggregates its zone and those above) is
        // never reported as a change; the node's routing starts from it, and so does this. A
        // node that stays its zone's aggregator from its start would otherwise never route
        // its members' results to itself.
        let hierarchy = election.as_ref().map(Election::hierarchy);
        node.live = Some(Live {
            membership,
            replicator,
            election,
            hierarchy,
            policy_dirty: elects,
            policy_due: false,
            conns: BTreeSet::new(),
            ops: Vec::new(),
            serve_pending: false,
            fold_pending: false,
            wake_at: None,
            wake_generation: 0,
            spins: 0,
            first_sync_dropped: BTreeSet::new(),
        });
        self.dirty = true;
        self.after_membership(i);
        self.after_election(i);
        self.after_sync(i);
        if elects {
            self.schedule_serve(i);
        }
        // `rhizome start` writes the node's own registry entry.
        self.write_registry(i, true);
        self.announce(i);
        let quiet = self.sc.quiet_from();
        if let Some(every) = self.sc.workload.result_every
            && self.nodes[i].segment.is_some()
        {
            let at = self.now + self.exp(every.0);
            if at < quiet {
                self.schedule(at, Ev::ResultAppend { node: i, inc });
            }
        }
        if let Some(every) = self.sc.workload.registry_every {
            let at = self.now + self.exp(every.0);
            if at < quiet {
                self.schedule(at, Ev::RegistryWrite { node: i, inc });
            }
        }
        if let Some(every) = self.sc.workload.rollout.as_ref().map(|r| r.report_every) {
            let at = self.now + self.exp(every.0);
            if at < quiet {
                self.schedule(at, Ev::RolloutTick { node: i, inc });
            }
        }
        if self.sc.store.retention.is_some() {
            let every = self.sc.store.retention_every.0;
            let at =
                self.now + Duration::from_nanos(self.rng.gen_range(0..every.as_nanos() as u64));
            self.schedule(at, Ev::Retention { node: i, inc });
        }
        let phase = self.rng.gen_range(0..MERGE_HEADS_EVERY.as_nanos() as u64);
        self.schedule(
            self.now + Duration::from_nanos(phase),
            Ev::MergeHeads { node: i, inc },
        );
        true
    }

    // ----------------------------------------------------------------------------------------
    // the store thread: failures and reopening

    /// Runs a store operation of node `i` as its store thread does: refused while the store is
    /// broken; a storage failure breaks the store and schedules its reopen. `None` when it was
    /// refused or failed. Any other error is a bug of the simulation.
    fn store_op<R>(
        &mut self,
        i: usize,
        what: &str,
        op: impl FnOnce(&mut Store) -> crdt_store::Result<R>,
    ) -> Option<R> {
        let store = self.nodes[i].store.as_mut()?;
        if store.broken().is_some() {
            return None;
        }
        match op(store) {
            Ok(done) => Some(done),
            Err(e) => {
                self.store_failed(i, what, &e);
                None
            }
        }
    }

    fn store_failed(&mut self, i: usize, what: &str, e: &StoreError) {
        assert!(
            e.is_storage_failure(),
            "{}: {what}: {e}",
            self.nodes[i].name
        );
        let store = self.nodes[i].store.as_mut().expect("a failed store exists");
        store.note_failure(e);
        self.store_failures += 1;
        self.schedule_reopen(i);
    }

    /// The store thread tries to reopen a broken store after a back-off, as
    /// `StoreHandle` does: the first at once, then doubling up to [`REOPEN_BACKOFF_MAX`].
    fn schedule_reopen(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        if node.reopen_due || !node.alive() {
            return;
        }
        node.reopen_due = true;
        let wait = if node.reopen_attempts == 0 {
            Duration::ZERO
        } else {
            REOPEN_BACKOFF_MIN
                .saturating_mul(1 << node.reopen_attempts.min(16))
                .min(REOPEN_BACKOFF_MAX)
        };
        let inc = node.inc;
        self.schedule(self.now + wait, Ev::Reopen { node: i, inc });
    }

    fn reopen(&mut self, i: usize, inc: u32) {
        if !self.is_live(i, inc) {
            return;
        }
        let node = &mut self.nodes[i];
        node.reopen_due = false;
        let Some(store) = node.store.as_mut() else {
            return;
        };
        if store.broken().is_some() && store.reopen().is_err() {
            node.reopen_attempts += 1;
            self.schedule_reopen(i);
            return;
        }
        node.reopen_attempts = 0;
        // Reopened here, or already by a check that read the disk.
        let Some(held) = node.reopened.lock().expect("not poisoned").take() else {
            return;
        };
        self.store_reopens += 1;
        // Changes reported before the reopen may have been rolled back: the catalogue the
        // reopen listener was given replaces them, for the replicator and for the checks.
        node.changes.lock().expect("not poisoned").clear();
        node.digests = held.iter().map(|e| (e.doc, e.digest)).collect();
        for entry in &held {
            if let Ok(DocName::Results {
                node: owner,
                window,
            }) = entry.name.parse::<DocName>()
                && owner == node.id
            {
                node.own_results.insert(entry.doc, window);
            }
        }
        self.dirty = true;
        if self.opts.plant != Some(Plant::SilentReopen) {
            self.sync_input(i, SyncIn::StoreReopened(held));
        }
        if let Some(live) = self.nodes[i].live.as_mut() {
            live.fold_pending = true;
            live.policy_dirty = live.election.is_some();
        }
        if std::mem::take(&mut self.nodes[i].registry_owed) {
            self.write_registry(i, true);
        }
        self.schedule_serve(i);
        self.mark_dirty();
    }

    fn crash(&mut self, i: usize) {
        let Some(live) = self.nodes[i].live.take() else {
            return;
        };
        for conn in live.conns {
            if let Some(c) = self.net.conns.get_mut(&conn)
                && let Some(e) = c.end_of(i, self.nodes[i].inc)
            {
                c.ends[e].open = false;
                c.ends[e].held.clear();
                c.ends[1 - e].held.clear();
            }
        }
        self.nodes[i].changes.lock().expect("not poisoned").clear();
        self.dirty = true;
        // No goodbye on mDNS: peers forget the node when its records expire.
        if let Some(s) = self.nodes[i].segment {
            let inc = self.nodes[i].inc;
            for p in self.segments[s].members.clone() {
                if p != i && self.nodes[p].alive() {
                    let pinc = self.nodes[p].inc;
                    self.schedule(
                        self.now + MDNS_TTL,
                        Ev::Lost {
                            node: p,
                            inc: pinc,
                            about: i,
                            about_inc: Some(inc),
                        },
                    );
                }
            }
        }
    }

    fn restart(&mut self, i: usize, lose_store: bool) {
        if self.nodes[i].gone || self.nodes[i].alive() {
            return;
        }
        let label = format!(
            "restart {}{}",
            self.nodes[i].name,
            if lose_store { " as a replacement" } else { "" }
        );
        self.healed(label);
        if !lose_store {
            // The store survives: the new process opens the same bytes (what it held in memory,
            // its sync sessions among it, is gone).
            if self.start(i) {
                self.check_results_survived(i);
            }
            return;
        }
        // The disk is gone: a replacement with a new identity and an empty store takes the
        // same address and place.
        let old = i;
        self.nodes[old].gone = true;
        self.nodes[old].store = None;
        let index = self.nodes.len();
        let (segment, zone, gateway) = {
            let n = &self.nodes[old];
            (n.segment, n.zone.clone(), n.gateway)
        };
        let addr = self.nodes[old].addr.clone();
        self.add_node(segment, zone.clone(), gateway, index);
        self.by_addr.remove(&self.nodes[index].addr.clone());
        self.nodes[index].addr = addr.clone();
        self.nodes[index].name = format!("{}'", self.nodes[old].name);
        self.by_addr.insert(addr, index);
        if let Some(s) = segment {
            let members = &mut self.segments[s].members;
            members.retain(|&m| m != old);
            members.push(index);
        }
        if self.aggregator.get(&zone) == Some(&old) {
            self.aggregator.insert(zone, index);
        }
        self.rebuild_policy();
        self.start(index);
    }

    /// After a restart with the store intact, every result it acknowledged is still there.
    fn check_results_survived(&mut self, i: usize) {
        let owner = self.nodes[i].id.clone();
        let found = self.results_at(i, &owner);
        let missing: Vec<String> = self
            .ledger
            .iter()
            .filter(|a| a.owner == i && !found.contains(&a.run_id))
            .map(|a| a.run_id.clone())
            .collect();
        self.check("acknowledged results survive a restart");
        if !missing.is_empty() {
            let detail = format!(
                "{} restarted without {} acknowledged results (first: {})",
                self.nodes[i].name,
                missing.len(),
                missing[0]
            );
            self.violate("no acknowledged result is lost", detail);
        }
    }

    fn results_at(&mut self, at: usize, owner: &str) -> BTreeSet<String> {
        let Some(store) = self.nodes[at].store.as_mut() else {
            return BTreeSet::new();
        };
        // A broken store is read as a process opening its disk would read it; while the disk
        // still fails, what it holds is unknown.
        if store.broken().is_some() && store.reopen().is_err() {
            return BTreeSet::new();
        }
        let query = ResultsQuery {
            node: Some(owner.to_owned()),
            ..ResultsQuery::default()
        };
        let records = store.results(&query).expect("results read");
        self.drain_changes(at);
        records.into_iter().map(|r| r.run_id).collect()
    }

    fn leave(&mut self, i: usize) {
        let inc = self.nodes[i].inc;
        let conns: Vec<ConnId> = self.nodes[i]
            .live
            .as_ref()
            .map(|l| l.conns.iter().copied().collect())
            .unwrap_or_default();
        for conn in conns {
            self.close(i, conn);
        }
        if let Some(s) = self.nodes[i].segment {
            for p in self.segments[s].members.clone() {
                if p != i && self.nodes[p].alive() && !self.net.is_cut(i, p) {
                    let lat = self.net.latency(i, p, false);
                    let pinc = self.nodes[p].inc;
                    self.schedule(
                        self.now + lat,
                        Ev::Lost {
                            node: p,
                            inc: pinc,
                            about: i,
                            about_inc: None,
                        },
                    );
                }
            }
            self.segments[s].members.retain(|&m| m != i);
        }
        self.nodes[i].live = None;
        self.nodes[i].gone = true;
        self.nodes[i].store = None;
        let _ = inc;
        self.dirty = true;
    }

    // ----------------------------------------------------------------------------------------
    // the driver: feeding membership and replication, carrying out their actions

    fn membership_input(&mut self, i: usize, event: membership::InEvent) {
        let now = self.now;
        if let Some(live) = self.nodes[i].live.as_mut() {
            live.membership.handle(event, now);
        }
        self.after_membership(i);
    }

    fn sync_input(&mut self, i: usize, event: SyncIn) {
        let now = self.now;
        if let Some(live) = self.nodes[i].live.as_mut() {
            live.replicator.handle(event, now);
        }
        self.after_sync(i);
    }

    fn after_membership(&mut self, i: usize) {
        loop {
            let Some(live) = self.nodes[i].live.as_mut() else {
                return;
            };
            let actions = live.membership.drain();
            if actions.is_empty() {
                break;
            }
            if let Some(e) = live.election.as_mut() {
                e.handle_membership(&actions, self.now);
            }
            for action in actions {
                match action {
                    membership::OutEvent::Dial(addr) => self.dial(i, addr),
                    membership::OutEvent::Send(conn, msg) => self.send(i, conn, msg),
                    membership::OutEvent::Close(conn, _) => self.close(i, conn),
                    membership::OutEvent::Rebrowse => self.rebrowse(i),
                    membership::OutEvent::PeerUp(peer) => self.sync_input(i, SyncIn::PeerUp(peer)),
                    membership::OutEvent::PeerDown(peer, _) => {
                        self.sync_input(i, SyncIn::PeerDown(peer))
                    }
                }
            }
            self.after_election(i);
        }
        self.reschedule_wake(i);
    }

    /// Carries out what the election asked for, as the network driver does.
    fn after_election(&mut self, i: usize) {
        let now = self.now;
        let Some(live) = self.nodes[i].live.as_mut() else {
            return;
        };
        let Some(e) = live.election.as_mut() else {
            return;
        };
        let outs = e.drain();
        for out in outs {
            let Some(live) = self.nodes[i].live.as_mut() else {
                return;
            };
            match out {
                election::OutEvent::Send(peer, status) => {
                    if let Some(conn) = live.membership.connection(&peer) {
                        self.send(i, conn, Message::Status(status));
                    }
                }
                election::OutEvent::Broadcast(status) => {
                    let conns: Vec<ConnId> = live
                        .membership
                        .peers(now)
                        .iter()
                        .filter_map(|p| live.membership.connection(&p.node))
                        .collect();
                    for conn in conns {
                        self.send(i, conn, Message::Status(status.clone()));
                    }
                }
                election::OutEvent::Changed(hierarchy) => {
                    live.hierarchy = Some(hierarchy);
                    live.policy_dirty = true;
                    self.dirty = true;
                    self.schedule_serve(i);
                    self.settle_reelections();
                }
                election::OutEvent::Refused { .. } => {}
            }
        }
    }

    /// Starts timing a re-election for each picked node that aggregates its zone.
    fn losing_aggregators(&mut self, picked: &[usize]) {
        if self.sc.aggregation != Aggregation::Election {
            return;
        }
        for &i in picked {
            if self.is_aggregator(i) {
                self.reelections.push(Reelection {
                    zone: self.nodes[i].zone.clone(),
                    lost: self.nodes[i].name.clone(),
                    at: self.now,
                    agreed_at: None,
                });
            }
        }
    }

    /// Closes the re-elections whose zones now agree on a live aggregator other than the lost
    /// one. Only election changes (and losses) can close one, so this runs on each.
    fn settle_reelections(&mut self) {
        if self.reelections.iter().all(|r| r.agreed_at.is_some()) {
            return;
        }
        for k in 0..self.reelections.len() {
            let r = &self.reelections[k];
            if r.agreed_at.is_some() {
                continue;
            }
            let mut named = None;
            let mut agreed = false;
            for m in 0..self.nodes.len() {
                let n = &self.nodes[m];
                if !n.alive() || n.segment.is_none() || n.zone != r.zone || n.name == r.lost {
                    continue;
                }
                let view = self.aggregator_for(m);
                let good =
                    view.is_some_and(|a| self.nodes[a].alive() && self.nodes[a].name != r.lost);
                if !good || (named.is_some() && named != view) {
                    agreed = false;
                    break;
                }
                named = view;
                agreed = true;
            }
            if agreed {
                self.reelections[k].agreed_at = Some(self.now);
            }
        }
    }

    fn after_sync(&mut self, i: usize) {
        let Some(live) = self.nodes[i].live.as_mut() else {
            return;
        };
        let outs = live.replicator.drain();
        let mut network = Vec::new();
        for out in outs {
            match out {
                SyncOut::Send(..) | SyncOut::Close(..) => network.push(out),
                op => live.ops.push(op),
            }
        }
        let needs_serve = !live.ops.is_empty() && !live.serve_pending;
        for out in network {
            let Some(live) = self.nodes[i].live.as_ref() else {
                return;
            };
            match out {
                SyncOut::Send(peer, msg) => {
                    // The driver sends to the peer's current connection; with none the message
                    // is dropped, as `MeshHandle::send` refuses it.
                    if let Some(conn) = live.membership.connection(&peer) {
                        self.send(i, conn, msg);
                    }
                }
                SyncOut::Close(peer, _) => {
                    if let Some(conn) = live.membership.connection(&peer) {
                        self.close(i, conn);
                    }
                }
                _ => unreachable!("only network actions are collected"),
            }
        }
        if needs_serve {
            self.schedule_serve(i);
        }
        self.reschedule_wake(i);
    }

    fn schedule_serve(&mut self, i: usize) {
        let delay = self.sc.store.store_delay.0;
        let Some(live) = self.nodes[i].live.as_mut() else {
            return;
        };
        if live.serve_pending {
            return;
        }
        live.serve_pending = true;
        let inc = self.nodes[i].inc;
        self.schedule(self.now + delay, Ev::Serve { node: i, inc });
    }

    /// The store thread's turn: folds acknowledged results, runs the replicator's store work,
    /// and answers.
    fn serve(&mut self, i: usize) {
        let now = self.now;
        let node = &mut self.nodes[i];
        let (Some(live), Some(store)) = (node.live.as_mut(), node.store.as_mut()) else {
            return;
        };
        live.serve_pending = false;
        // While the store is broken, folding and reading the registry wait for its reopen.
        let serving = store.broken().is_none();
        if serving && live.fold_pending {
            live.fold_pending = false;
            if let Err(e) = store.apply_pending(usize::MAX) {
                live.fold_pending = true;
                self.store_failed(i, "folding results", &e);
                return self.serve(i);
            }
        }
        let mut policy_changed = false;
        if serving
            && live.policy_dirty
            && let Some(hierarchy) = &live.hierarchy
        {
            match store.node_zones() {
                Ok(zones) => {
                    live.policy_dirty = false;
                    let policy = SharePolicy::from_view(&node.id, hierarchy, &zones);
                    policy_changed = live.replicator.policy() != &policy;
                    live.replicator.handle(SyncIn::Policy(policy), now);
                }
                Err(e) => {
                    self.store_failed(i, "reading the registry", &e);
                    return self.serve(i);
                }
            }
        }
        let ops = std::mem::take(&mut live.ops);
        let generates = ops
            .iter()
            .filter(|o| matches!(o, SyncOut::Generate { .. }))
            .count();
        // As the node's sync actor does: a broken store refuses the whole batch, and a failure
        // within it answers what was not carried out as failed.
        let (served, failure) = match store.refusal() {
            Some(refusal) => (Served::refused(ops, &refusal.to_string()), None),
            None => serve(store, ops),
        };
        for answer in served.answers {
            live.replicator.handle(answer, now);
        }
        if let Some(e) = failure {
            self.store_failed(i, "sync work", &e);
        }
        let bound = SyncConfig::default().max_outstanding;
        self.check("store work per batch stays within the replicator's bound");
        if generates > bound {
            let detail = format!(
                "{} asked for {generates} generates at once, more than the bound of {bound}",
                self.nodes[i].name
            );
            self.violate("replication work is bounded", detail);
        }
        self.drain_changes(i);
        self.after_sync(i);
        if policy_changed {
            self.check_shares_agree(i, false);
        }
    }

    /// Passes what the store's change listener saw on to the replicator, as the node does.
    fn drain_changes(&mut self, i: usize) {
        let entries: Vec<CatalogueEntry> =
            std::mem::take(&mut *self.nodes[i].changes.lock().expect("not poisoned"));
        if entries.is_empty() {
            return;
        }
        let own_prefix = format!("results/{}/", self.nodes[i].id);
        let mut policy_due = false;
        for entry in entries {
            let node = &mut self.nodes[i];
            if node.digests.get(&entry.doc) != Some(&entry.digest) {
                node.digests.insert(entry.doc, entry.digest);
                self.dirty = true;
            }
            if entry.name.starts_with(&own_prefix)
                && let Ok(DocName::Results { window, .. }) = entry.name.parse::<DocName>()
            {
                node.own_results.insert(entry.doc, window);
            }
            if let Some(live) = node.live.as_mut() {
                if entry.name == "mesh" && live.election.is_some() && !live.policy_due {
                    live.policy_due = true;
                    policy_due = true;
                }
                live.replicator
                    .handle(SyncIn::LocalChanged(entry), self.now);
            }
        }
        if policy_due {
            let inc = self.nodes[i].inc;
            self.schedule(self.now + POLICY_SETTLE, Ev::PolicyDue { node: i, inc });
        }
        self.after_sync(i);
        self.mark_dirty();
    }

    fn mark_dirty(&mut self) {
        if self.dirty && !self.sample_pending {
            self.sample_pending = true;
            self.schedule(self.now + SAMPLE_EVERY, Ev::Sample);
        }
    }

    fn reschedule_wake(&mut self, i: usize) {
        let now = self.now;
        let node = &mut self.nodes[i];
        let Some(live) = node.live.as_mut() else {
            return;
        };
        let mut next = live.membership.poll_timeout();
        if let Some(t) = live.replicator.poll_timeout(now) {
            next = next.min(t);
        }
        if let Some(t) = live.election.as_ref().and_then(Election::poll_timeout) {
            next = next.min(t);
        }
        if live.wake_at.is_some_and(|w| w <= next) {
            return;
        }
        live.wake_generation += 1;
        live.wake_at = Some(next);
        let (inc, generation) = (node.inc, live.wake_generation);
        self.schedule(
            next,
            Ev::Wake {
                node: i,
                inc,
                generation,
            },
        );
    }

    fn wake(&mut self, i: usize, inc: u32, generation: u64) {
        let now = self.now;
        if !self.is_live(i, inc) {
            return;
        }
        let live = self.nodes[i].live.as_mut().expect("live");
        if live.wake_generation != generation {
            return;
        }
        live.wake_at = None;
        live.membership.handle_timeout(now);
        live.replicator.handle_timeout(now);
        if let Some(e) = live.election.as_mut() {
            if e.leases_due(now) {
                e.renew(live.membership.heard_times());
            }
            e.handle_timeout(now);
        }
        self.after_membership(i);
        self.after_election(i);
        self.after_sync(i);
        // A machine may ask to be woken again at the same instant (a peer just declared down
        // is redialled on the next pass), but not over and over: a real driver would spin.
        self.check("timers advance after they fire");
        let live = self.nodes[i].live.as_mut().expect("live");
        let due = live
            .membership
            .poll_timeout()
            .min(live.replicator.poll_timeout(now).unwrap_or(Duration::MAX))
            .min(
                live.election
                    .as_ref()
                    .and_then(Election::poll_timeout)
                    .unwrap_or(Duration::MAX),
            );
        if due > now {
            live.spins = 0;
            return;
        }
        live.spins += 1;
        if live.spins < SPIN_LIMIT {
            return;
        }
        if live.spins == SPIN_LIMIT {
            let _ = live;
            let detail = format!(
                "{}: after {SPIN_LIMIT} passes of handle_timeout at {} poll_timeout() is still {} \
                 (not in the future), so a driver's timer fires again and again: it spins",
                self.nodes[i].name,
                crate::report::clock(now),
                crate::report::clock(due)
            );
            self.violate("timers advance", detail);
        }
        // Keep the simulation going without spinning: look again a millisecond later.
        let live = self.nodes[i].live.as_mut().expect("live");
        live.wake_generation += 1;
        live.wake_at = Some(now + Duration::from_millis(1));
        let generation = live.wake_generation;
        self.schedule(
            now + Duration::from_millis(1),
            Ev::Wake {
                node: i,
                inc,
                generation,
            },
        );
    }

    // ----------------------------------------------------------------------------------------
    // network

    fn dial(&mut self, from: usize, addr: Addr) {
        let inc = self.nodes[from].inc;
        let target = self.by_addr.get(&addr).copied();
        let reachable = target.filter(|&t| {
            t != from
                && self.nodes[t].alive()
                && !self.net.is_cut(from, t)
                && !self.net.is_cut(t, from)
        });
        let Some(t) = reachable else {
            self.schedule(
                self.now + DIAL_TIMEOUT,
                Ev::DialFailed {
                    node: from,
                    inc,
                    addr,
                },
            );
            return;
        };
        let wan = self.wan(from, t);
        let lat = self.net.latency(from, t, wan);
        let conn = self.net.next_conn_id();
        // QUIC's handshake takes a round trip, then both sides exchange hellos: the acceptor is
        // ready after 1.5 round trips, the dialler after 2.
        let accept_at = self.now + lat * 3;
        let dial_at = self.now + lat * 4;
        let tinc = self.nodes[t].inc;
        self.net.conns.insert(
            conn,
            Conn {
                ends: [
                    End {
                        node: from,
                        inc,
                        open: true,
                        last_arrival: dial_at,
                        held: Default::default(),
                    },
                    End {
                        node: t,
                        inc: tinc,
                        open: true,
                        last_arrival: accept_at,
                        held: Default::default(),
                    },
                ],
            },
        );
        for (n, peer) in [(from, t), (t, from)] {
            let hello = Message::Hello(mesh::proto::wire::Hello {
                mesh_id: MESH_ID.into(),
                node_id: self.nodes[n].id.clone(),
                role: if self.nodes[n].segment.is_none() {
                    Role::Cloud
                } else {
                    Role::Edge
                },
                zone: self.nodes[n].zone.clone(),
                listen_port: 4860,
            });
            self.nodes[n]
                .traffic
                .count(Kind::Hello, hello.encoded_len());
            let _ = peer;
        }
        if let Some(live) = self.nodes[from].live.as_mut() {
            live.conns.insert(conn);
        }
        if let Some(live) = self.nodes[t].live.as_mut() {
            live.conns.insert(conn);
        }
        self.schedule(
            accept_at,
            Ev::Connected {
                node: t,
                inc: tinc,
                conn,
                outbound: false,
                addr: None,
            },
        );
        self.schedule(
            dial_at,
            Ev::Connected {
                node: from,
                inc,
                conn,
                outbound: true,
                addr: Some(addr),
            },
        );
    }

    fn connected(
        &mut self,
        node: usize,
        inc: u32,
        conn: ConnId,
        outbound: bool,
        addr: Option<Addr>,
    ) {
        if !self.is_live(node, inc) {
            return;
        }
        let Some(c) = self.net.conns.get(&conn) else {
            return;
        };
        let Some(e) = c.end_of(node, inc) else {
            return;
        };
        if !c.ends[e].open {
            return;
        }
        let peer = self.nodes[c.ends[1 - e].node].id.clone();
        self.membership_input(
            node,
            membership::InEvent::Connected {
                conn,
                node: peer,
                outbound,
                addr,
            },
        );
    }

    fn send(&mut self, from: usize, conn: ConnId, msg: Message) {
        let inc = self.nodes[from].inc;
        let Some(c) = self.net.conns.get(&conn) else {
            return;
        };
        let Some(s) = c.end_of(from, inc) else {
            return;
        };
        if !c.ends[s].open {
            return;
        }
        let to = c.ends[1 - s].node;
        let len = msg.encoded_len();
        self.nodes[from].traffic.count(Kind::of(&msg), len);
        if let Some(plant) = self.opts.plant {
            let drop = match (&msg, plant) {
                (Message::Catalogue { .. }, Plant::DropCatalogue) => true,
                (Message::Sync { doc, .. }, Plant::DropFirstSync) => self.nodes[from]
                    .live
                    .as_mut()
                    .is_some_and(|l| l.first_sync_dropped.insert((conn, *doc))),
                _ => false,
            };
            if drop {
                return;
            }
        }
        let wan = self.wan(from, to);
        let at = self.net.arrival(self.now, from, to, len, wan);
        let c = self.net.conns.get_mut(&conn).expect("checked above");
        let r = 1 - s;
        let at = at.max(c.ends[r].last_arrival);
        c.ends[r].last_arrival = at;
        self.schedule(at, Ev::Arrive { conn, to: r, msg });
    }

    fn arrive(&mut self, conn: ConnId, to: usize, msg: Message) {
        let Some(c) = self.net.conns.get_mut(&conn) else {
            return;
        };
        let (from, node, inc) = (c.ends[1 - to].node, c.ends[to].node, c.ends[to].inc);
        if !c.ends[to].open || !c.ends[1 - to].open && !matches!(msg, Message::Goodbye { .. }) {
            // A closed connection discards what was in flight towards it; a closed sender's
            // unacknowledged data is abandoned too.
            if !c.ends[to].open {
                return;
            }
        }
        let cut = self.net.is_cut(from, node);
        let c = self.net.conns.get_mut(&conn).expect("present");
        if cut || !c.ends[to].held.is_empty() {
            c.ends[to].held.push_back(msg);
            return;
        }
        if !self.is_live(node, inc) {
            return;
        }
        self.deliver(node, conn, to, msg);
    }

    fn deliver(&mut self, node: usize, conn: ConnId, to: usize, msg: Message) {
        if let Message::Goodbye { .. } = msg {
            if let Some(c) = self.net.conns.get_mut(&conn) {
                c.ends[to].open = false;
            }
            if let Some(live) = self.nodes[node].live.as_mut() {
                live.conns.remove(&conn);
            }
            self.membership_input(node, membership::InEvent::Received { conn });
            self.membership_input(node, membership::InEvent::Closed { conn });
            return;
        }
        self.membership_input(node, membership::InEvent::Received { conn });
        self.feed_election(node, conn, &msg);
        if matches!(
            msg,
            Message::Summary { .. }
                | Message::Buckets { .. }
                | Message::Catalogue { .. }
                | Message::Sync { .. }
                | Message::Heads { .. }
        ) {
            let Some(live) = self.nodes[node].live.as_ref() else {
                return;
            };
            // Only the connection in use speaks for its peer, as in the network driver.
            if let Some(peer) = live.membership.speaker(conn).cloned() {
                self.sync_input(node, SyncIn::Received(peer, msg));
            }
        }
    }

    /// A status from a peer's connection in use is the election's input; other frames renew
    /// leases through membership at the lease check (as in the network driver).
    fn feed_election(&mut self, node: usize, conn: ConnId, msg: &Message) {
        let now = self.now;
        let Message::Status(status) = msg else {
            return;
        };
        let Some(live) = self.nodes[node].live.as_mut() else {
            return;
        };
        let Some(peer) = live.membership.speaker(conn) else {
            return;
        };
        let Some(e) = live.election.as_mut() else {
            return;
        };
        e.handle(
            election::InEvent::Status {
                from: peer.clone(),
                status: status.clone(),
            },
            now,
        );
        self.after_election(node);
    }

    /// Closes this node's end: the peer learns it from a goodbye that follows what was already
    /// sent, unless a cut swallows it.
    fn close(&mut self, i: usize, conn: ConnId) {
        let inc = self.nodes[i].inc;
        let Some(c) = self.net.conns.get_mut(&conn) else {
            return;
        };
        let Some(s) = c.end_of(i, inc) else {
            return;
        };
        if !c.ends[s].open {
            return;
        }
        c.ends[s].open = false;
        c.ends[s].held.clear();
        let r = 1 - s;
        let to = c.ends[r].node;
        let peer_open = c.ends[r].open;
        if let Some(live) = self.nodes[i].live.as_mut() {
            live.conns.remove(&conn);
        }
        self.schedule(self.now, Ev::Closed { node: i, inc, conn });
        let goodbye = Message::Goodbye {
            reason: "closed".into(),
        };
        let len = goodbye.encoded_len();
        self.nodes[i].traffic.count(Kind::Goodbye, len);
        let held = !self.net.conns[&conn].ends[r].held.is_empty();
        if !peer_open || held || self.net.is_cut(i, to) {
            // Unacknowledged data and the close itself are lost; the peer finds out by silence.
            if let Some(c) = self.net.conns.get_mut(&conn) {
                c.ends[r].held.clear();
            }
            return;
        }
        let wan = self.wan(i, to);
        let at = self.net.arrival(self.now, i, to, len, wan);
        let c = self.net.conns.get_mut(&conn).expect("present");
        let at = at.max(c.ends[r].last_arrival);
        c.ends[r].last_arrival = at;
        self.schedule(
            at,
            Ev::Arrive {
                conn,
                to: r,
                msg: goodbye,
            },
        );
    }

    /// After a cut heals, frames it held travel on, in order.
    fn release_held(&mut self) {
        let waiting: Vec<(ConnId, usize)> = self
            .net
            .conns
            .iter()
            .flat_map(|(id, c)| {
                (0..2)
                    .filter(|&e| !c.ends[e].held.is_empty())
                    .map(move |e| (*id, e))
            })
            .collect();
        for (conn, to) in waiting {
            let c = &self.net.conns[&conn];
            let (from, node) = (c.ends[1 - to].node, c.ends[to].node);
            if self.net.is_cut(from, node) {
                continue;
            }
            let wan = self.wan(from, node);
            let frames: Vec<Message> = self.net.conns.get_mut(&conn).expect("present").ends[to]
                .held
                .drain(..)
                .collect();
            for msg in frames {
                // Retransmitted after the heal: they arrive a latency later, in order.
                let at = self.net.arrival(self.now, from, node, 0, wan);
                let c = self.net.conns.get_mut(&conn).expect("present");
                let at = at.max(c.ends[to].last_arrival);
                c.ends[to].last_arrival = at;
                self.schedule(at, Ev::Arrive { conn, to, msg });
            }
        }
        // Forget connections closed at both ends with nothing in flight.
        let now = self.now;
        self.net.conns.retain(|_, c| {
            c.ends.iter().any(|e| e.open) || c.ends.iter().any(|e| e.last_arrival > now)
        });
    }

    // ----------------------------------------------------------------------------------------
    // mDNS

    fn announce(&mut self, i: usize) {
        let Some(s) = self.nodes[i].segment else {
            return;
        };
        let inc = self.nodes[i].inc;
        for p in self.segments[s].members.clone() {
            if p == i || !self.nodes[p].alive() {
                continue;
            }
            let pinc = self.nodes[p].inc;
            // The announcement reaches p; p's answer to the browse reaches i.
            let a = Duration::from_millis(self.rng.gen_range(750..=1000));
            let b = Duration::from_millis(self.rng.gen_range(750..=1000));
            self.schedule(
                self.now + a,
                Ev::Discovered {
                    node: p,
                    inc: pinc,
                    about: i,
                },
            );
            self.schedule(
                self.now + b,
                Ev::Discovered {
                    node: i,
                    inc,
                    about: p,
                },
            );
        }
    }

    fn rebrowse(&mut self, i: usize) {
        let Some(s) = self.nodes[i].segment else {
            return;
        };
        let inc = self.nodes[i].inc;
        for p in self.segments[s].members.clone() {
            if p == i || !self.nodes[p].alive() || self.net.is_cut(i, p) {
                continue;
            }
            let at = self.now + Duration::from_millis(self.rng.gen_range(20..=120));
            self.schedule(
                at,
                Ev::Discovered {
                    node: i,
                    inc,
                    about: p,
                },
            );
        }
    }

    // ----------------------------------------------------------------------------------------
    // faults

    fn pick(&mut self, count: usize, aggregators: bool) -> Vec<usize> {
        let mut candidates: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].alive() && self.nodes[i].segment.is_some())
            .filter(|&i| !aggregators || self.is_aggregator(i))
            .collect();
        candidates.shuffle(&mut self.rng);
        candidates.truncate(count);
        candidates.sort_unstable();
        candidates
    }

    fn names(&self, nodes: &[usize]) -> String {
        let names: Vec<&str> = nodes.iter().map(|&i| self.nodes[i].name.as_str()).collect();
        if names.len() > 6 {
            format!("{} nodes", names.len())
        } else {
            names.join(" ")
        }
    }

    fn fault(&mut self, index: usize) {
        let spec: FaultSpec = self.sc.faults[index].clone();
        let quiet = self.sc.quiet_from();
        if let Some(every) = spec.every {
            let next = self.now + every.0;
            let end = next + spec.lasts.map_or(Duration::ZERO, |d| d.0);
            if end < quiet {
                self.schedule(next, Ev::Fault(index));
            }
        }
        let lasts = spec.lasts.map(|d| d.0);
        let end = lasts.map(|d| self.now + d);
        let all: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| !self.nodes[i].gone)
            .collect();
        match spec.kind {
            FaultKind::Partition => {
                let groups = spec.groups.unwrap_or(2);
                let mut of = vec![u8::MAX; self.nodes.len()];
                match spec.by {
                    GroupBy::Random => {
                        let mut order = all.clone();
                        order.shuffle(&mut self.rng);
                        for (k, i) in order.into_iter().enumerate() {
                            of[i] = (k % groups) as u8;
                        }
                    }
                    GroupBy::Segment => {
                        let mut segs: Vec<usize> = (0..self.segments.len()).collect();
                        segs.shuffle(&mut self.rng);
                        for (k, s) in segs.into_iter().enumerate() {
                            for &i in &self.segments[s].members {
                                of[i] = (k % groups) as u8;
                            }
                        }
                        if let Some(c) = self.cloud {
                            of[c] = self.rng.gen_range(0..groups) as u8;
                        }
                    }
                    GroupBy::WithinSegment => {
                        let split: Vec<usize> = (0..self.segments.len())
                            .filter(|&s| self.segments[s].members.len() >= groups)
                            .collect();
                        if let Some(&s) = split.choose(&mut self.rng) {
                            let mut members: Vec<usize> = self.segments[s]
                                .members
                                .iter()
                                .copied()
                                .filter(|i| all.contains(i))
                                .collect();
                            members.shuffle(&mut self.rng);
                            for (k, i) in members.into_iter().enumerate() {
                                of[i] = (k % groups) as u8;
                            }
                        }
                    }
                }
                let cut = self.net.cut(Cut::Groups(of));
                let label = match spec.by {
                    GroupBy::WithinSegment => format!("split of one segment into {groups}"),
                    GroupBy::Random | GroupBy::Segment => format!("partition into {groups}"),
                };
                self.open_fault(cut, end.expect("validated"), label);
            }
            FaultKind::OneWay => {
                let mut order = all.clone();
                order.shuffle(&mut self.rng);
                let k = ((order.len() as f64) * spec.fraction.unwrap_or(0.5)).ceil() as usize;
                let mut from = vec![false; self.nodes.len()];
                let mut to = vec![true; self.nodes.len()];
                for &i in &order[..k.min(order.len())] {
                    from[i] = true;
                    to[i] = false;
                }
                let cut = self.net.cut(Cut::OneWay { from, to });
                let label = format!("one-way cut of {k}");
                self.open_fault(cut, end.expect("validated"), label);
            }
            FaultKind::Isolate => {
                let picked = self.pick(spec.count.unwrap_or(1), spec.aggregators);
                self.losing_aggregators(&picked);
                for i in picked {
                    let cut = self.net.cut(Cut::Node(i));
                    let label = format!("isolate {}", self.nodes[i].name);
                    self.open_fault(cut, end.expect("validated"), label);
                }
            }
            FaultKind::Swizzle => {
                let mut order: Vec<usize> = all
                    .iter()
                    .copied()
                    .filter(|&i| self.nodes[i].alive())
                    .collect();
                order.shuffle(&mut self.rng);
                let k = ((order.len() as f64) * spec.fraction.unwrap_or(0.5)).ceil() as usize;
                order.truncate(k);
                order.reverse();
                let label = format!("swizzle {k}");
                self.fault_spans
                    .push((self.now, end.expect("validated"), label.clone()));
                self.swizzle_stop(
                    order,
                    Vec::new(),
                    spec.step.expect("validated").0,
                    lasts.expect("validated"),
                    label,
                );
            }
            FaultKind::Flap => {
                let until = end.expect("validated");
                self.fault_spans
                    .push((self.now, until, "flapping links".into()));
                self.flap_step(until, spec.step.expect("validated").0);
            }
            FaultKind::Crash => {
                let picked = self.pick(spec.count.unwrap_or(1), spec.aggregators);
                self.losing_aggregators(&picked);
                let label = format!(
                    "crash {}{}",
                    self.names(&picked),
                    if spec.lose_store { " (store lost)" } else { "" }
                );
                for &i in &picked {
                    if spec.lose_store {
                        self.record_store_loss(i);
                    }
                    self.crash(i);
                    if let Some(lasts) = lasts {
                        self.schedule(
                            self.now + lasts,
                            Ev::Restart {
                                node: i,
                                lose_store: spec.lose_store,
                            },
                        );
                    }
                }
                let until = end.unwrap_or(self.now);
                self.fault_spans.push((self.now, until, label));
            }
            FaultKind::Storage => {
                let picked = self.pick(spec.count.unwrap_or(1), spec.aggregators);
                let fault = match spec.error {
                    StorageError::NoSpace => InjectedFault::NoSpace,
                    StorageError::Io => InjectedFault::Io,
                    StorageError::ShortWrite => InjectedFault::ShortWrite,
                };
                for &i in &picked {
                    let after = self.rng.gen_range(0..STORAGE_FAULT_WITHIN);
                    self.nodes[i].disk.arm(fault, after);
                }
                let until = end.expect("validated");
                let label = format!("{} disk of {}", fault.name(), self.names(&picked));
                self.fault_spans.push((self.now, until, label.clone()));
                self.schedule(
                    until,
                    Ev::DisksBack {
                        nodes: picked,
                        label,
                    },
                );
            }
            FaultKind::Leave => {
                let picked = self.pick(spec.count.unwrap_or(1), spec.aggregators);
                self.losing_aggregators(&picked);
                let label = format!("leave {}", self.names(&picked));
                for &i in &picked {
                    if self.sc.aggregation == Aggregation::Static && self.is_aggregator(i) {
                        // Static aggregation has no one to take over: keep aggregators.
                        continue;
                    }
                    self.leave(i);
                }
                self.fault_spans.push((self.now, self.now, label));
                self.rebuild_policy();
            }
            FaultKind::Join => {
                let count = spec.count.unwrap_or(1);
                for _ in 0..count {
                    let s = self.rng.gen_range(0..self.segments.len());
                    let index = self.nodes.len();
                    let zone = self.segments[s].zone_of_member(self.segments[s].members.len());
                    let gateway = self
                        .sc
                        .cloud
                        .as_ref()
                        .is_some_and(|c| c.gateways_per_segment == 0);
                    self.add_node(Some(s), zone, gateway, index);
                    self.segments[s].members.push(index);
                    self.schedule(self.now, Ev::Start(index));
                }
                self.fault_spans
                    .push((self.now, self.now, format!("join {count}")));
                self.rebuild_policy();
            }
        }
        self.dirty = true;
        self.mark_dirty();
    }

    fn open_fault(&mut self, cut: u64, end: Duration, label: String) {
        self.fault_spans.push((self.now, end, label.clone()));
        self.schedule(end, Ev::HealCut { cut, label });
    }

    fn healed(&mut self, label: String) {
        self.last_fault_end = self.last_fault_end.max(self.now);
        self.heals.push(Heal::new(self.now, label));
        self.dirty = true;
        self.mark_dirty();
        let bytes: u64 = self.nodes.iter().map(|n| n.traffic.total_bytes()).sum();
        if let Some(h) = self.heals.last_mut() {
            h.bytes_before = bytes;
        }
    }

    /// Stops one node's links per step; once all are stopped, holds, then restores them one
    /// per step in random order.
    fn swizzle_stop(
        &mut self,
        mut nodes: Vec<usize>,
        mut cuts: Vec<u64>,
        step: Duration,
        hold: Duration,
        label: String,
    ) {
        let Some(i) = nodes.pop() else {
            return;
        };
        cuts.push(self.net.cut(Cut::Node(i)));
        if nodes.is_empty() {
            cuts.shuffle(&mut self.rng);
            let stopping = step * cuts.len() as u32;
            let restore_at = self.now + hold.saturating_sub(stopping * 2).max(step);
            self.schedule(restore_at, Ev::SwizzleRestore { cuts, step, label });
        } else {
            self.schedule(
                self.now + step,
                Ev::SwizzleStop {
                    nodes,
                    cuts,
                    step,
                    hold,
                    label,
                },
            );
        }
    }

    fn flap_step(&mut self, until: Duration, step: Duration) {
        if self.now >= until {
            self.healed("flapping links stop".into());
            return;
        }
        let alive: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].alive())
            .collect();
        if alive.len() >= 2 {
            let a = alive[self.rng.gen_range(0..alive.len())];
            let mut b = alive[self.rng.gen_range(0..alive.len())];
            if a == b {
                b = alive[(alive.iter().position(|&x| x == a).expect("present") + 1) % alive.len()];
            }
            let down_for = Duration::from_millis(self.rng.gen_range(200..4000));
            let cut = self.net.cut(Cut::Pair(a, b));
            let heal_at = (self.now + down_for).min(until);
            self.schedule(
                heal_at,
                Ev::HealCut {
                    cut,
                    label: String::new(),
                },
            );
        }
        self.schedule(self.now + step, Ev::FlapStep { until, step });
    }

    fn record_store_loss(&mut self, i: usize) {
        let zone = self.nodes[i].zone.clone();
        let _ = zone;
        let aggregator = self.aggregator_for(i).filter(|&a| a != i);
        let at_aggregator = match aggregator {
            Some(a) if self.nodes[a].store.is_some() => {
                let owner = self.nodes[i].id.clone();
                self.results_at(a, &owner)
            }
            _ => BTreeSet::new(),
        };
        for acked in self.ledger.iter_mut().filter(|a| a.owner == i) {
            acked.held_by = aggregator.filter(|_| at_aggregator.contains(&acked.run_id));
        }
    }

    // ----------------------------------------------------------------------------------------
    // workload

    fn workflow_edit(&mut self) {
        let quiet = self.sc.quiet_from();
        if let Some(every) = self.sc.workload.workflow_edit_every {
            let at = self.now + self.exp(every.0);
            if at < quiet {
                self.schedule(at, Ev::WorkflowEdit);
            }
        }
        let alive: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].alive() && self.nodes[i].segment.is_some())
            .collect();
        if alive.is_empty() {
            return;
        }
        let i = alive[self.rng.gen_range(0..alive.len())];
        let k = self.rng.gen_range(0..self.sc.workload.workflows);
        self.edits += 1;
        let edit = self.edits;
        let name = workflow_name(k);
        let (by, updated_ms) = (
            self.nodes[i].id.clone(),
            EPOCH_MS + self.now.as_millis() as i64,
        );
        let step = format!("s{}", self.rng.gen_range(0..4));
        let edited = self.store_op(i, "workflow edit", |store| {
            store.update::<WorkflowDoc, _>(&name, |w| {
                w.id = format!("wf-{k}");
                w.version += 1;
                w.description = format!("edit {edit}");
                w.updated_by = by;
                w.updated_ms = updated_ms;
                w.steps.insert(
                    step,
                    StepDef {
                        agent: "transform".into(),
                        config: format!("{{\"edit\":{edit}}}"),
                        ..StepDef::default()
                    },
                );
            })
        });
        if edited.is_some() {
            self.note_write();
        }
        self.drain_changes(i);
    }

    fn note_write(&mut self) {
        self.writes += 1;
        self.last_write = self.now;
    }

    fn result_append(&mut self, i: usize, inc: u32) {
        if !self.is_live(i, inc) {
            return;
        }
        if let Some(every) = self.sc.workload.result_every {
            let at = self.now + self.exp(every.0);
            if at < self.sc.quiet_from() {
                self.schedule(at, Ev::ResultAppend { node: i, inc });
            }
        }
        let node = &mut self.nodes[i];
        node.results_seq += 1;
        let finished = EPOCH_MS + self.now.as_millis() as i64;
        let record = RunRecord {
            run_id: format!("{}-{}", node.id, node.results_seq),
            workflow: "wf-0".into(),
            workflow_version: 1,
            node: node.id.clone(),
            started_ms: finished - 5,
            finished_ms: finished,
            status: RunStatus::Succeeded,
            output: format!("{{\"value\":{}}}", node.results_seq),
            ..RunRecord::default()
        };
        let window = Window::containing(finished, self.sc.store.window_minutes);
        // Acknowledged means `append_results` returned: from here on it must never be lost.
        let appended = self.store_op(i, "appending a result", |store| {
            store.append_results(std::slice::from_ref(&record))
        });
        if appended.is_some() {
            self.ledger.push(Acked {
                owner: i,
                run_id: record.run_id,
                window,
                held_by: None,
            });
            if let Some(live) = self.nodes[i].live.as_mut() {
                live.fold_pending = true;
            }
            self.schedule_serve(i);
            self.note_write();
        }
    }

    /// Writes the node's own registry entry. At start, as `rhizome start` does, only when it
    /// says something new (so a restart with the same settings changes no document).
    fn write_registry(&mut self, i: usize, at_start: bool) {
        let now_ms = EPOCH_MS + self.now.as_millis() as i64;
        let node = &mut self.nodes[i];
        let entry = NodeEntry {
            name: node.name.clone(),
            zone: node.zone.clone(),
            addresses: vec![node.addr.clone()],
            version: env!("CARGO_PKG_VERSION").into(),
            ..NodeEntry::default()
        };
        let id = node.id.clone();
        // Rollout reports are the scheduler's, and a `failed` one is final: rewriting the entry
        // keeps them, as the node does.
        let kept = |registry: &MeshRegistry, entry: NodeEntry| NodeEntry {
            rollouts: registry
                .nodes
                .get(&id)
                .map(|e| e.rollouts.clone())
                .unwrap_or_default(),
            ..entry
        };
        let written = self.store_op(i, "registry write", |store| {
            if at_start {
                let registry: MeshRegistry = store.read(&DocName::Mesh)?;
                if registry.holds(&id, &kept(&registry, entry.clone())) {
                    return Ok(());
                }
            }
            store.update::<MeshRegistry, _>(&DocName::Mesh, |m| {
                let entry = kept(m, entry);
                m.write_entry(&id, entry, now_ms)
            })
        });
        // A node whose disk fails as it starts writes its entry once the store serves again.
        if written.is_none() && at_start {
            self.nodes[i].registry_owed = true;
        }
        self.drain_changes(i);
    }

    /// A random live node writes the rolled workflow's first version, then the next one with
    /// its rollout plan, as `rhizome rollout start` does (unsigned: see [`RolloutFacts::read`]).
    fn rollout_start(&mut self) {
        let alive: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].alive() && self.nodes[i].segment.is_some())
            .collect();
        let written = match alive.choose(&mut self.rng) {
            Some(&i) => self.write_rollout_plan(i),
            None => false,
        };
        if written {
            self.note_write();
        } else if self.now + ROLLOUT_START_RETRY < self.sc.quiet_from() {
            self.schedule(self.now + ROLLOUT_START_RETRY, Ev::RolloutStart);
        }
    }

    fn write_rollout_plan(&mut self, i: usize) -> bool {
        let step = |version: u64| StepDef {
            agent: "transform".into(),
            config: format!("{{\"version\":{version}}}"),
            ..StepDef::default()
        };
        let first = WorkflowDoc {
            id: ROLLED_WORKFLOW.into(),
            version: 1,
            description: "rolled out in stages".into(),
            trigger: "every 10s".into(),
            steps: BTreeMap::from([("s0".to_owned(), step(1))]),
            updated_by: self.nodes[i].id.clone(),
            updated_ms: EPOCH_MS + self.now.as_millis() as i64,
            ..WorkflowDoc::default()
        };
        let next = WorkflowDoc {
            version: 2,
            steps: BTreeMap::from([("s0".to_owned(), step(2))]),
            rollout: Some(rollout_plan()),
            ..first.clone()
        };
        let written = self.store_op(i, "starting the rollout", |store| {
            store.update::<WorkflowDoc, _>(&rolled_name(), |w| *w = first)?;
            store.update::<WorkflowDoc, _>(&rolled_name(), |w| *w = next)
        });
        self.drain_changes(i);
        written.is_some()
    }

    /// Node `i` decides the rollout from its own store and reports what it runs in its own
    /// registry entry when that says something new, as the node's scheduler does.
    fn rollout_tick(&mut self, i: usize, inc: u32) {
        if !self.is_live(i, inc) {
            return;
        }
        if let Some(every) = self.sc.workload.rollout.as_ref().map(|r| r.report_every) {
            let at = self.now + self.exp(every.0);
            if at < self.sc.quiet_from() {
                self.schedule(at, Ev::RolloutTick { node: i, inc });
            }
        }
        let Some(facts) = self.rollout_facts(i) else {
            return;
        };
        let id = self.nodes[i].id.clone();
        let runs_new =
            facts.decision.admitted.contains(&id) || facts.decision.status == Status::Completed;
        let failing = self.rollout_failing(i);
        let now_ms = EPOCH_MS + self.now.as_millis() as i64;
        let previous = facts.reports.get(&id);
        let next = next_report(
            &facts.plan,
            previous,
            runs_new,
            failing,
            facts.aborted(),
            now_ms,
        );
        if !rollout::news(&facts.plan, previous, &next) {
            return;
        }
        let text = serde_json::to_string(&next).expect("a report encodes");
        let written = self.store_op(i, "writing a rollout report", |store| {
            store.update::<MeshRegistry, _>(&DocName::Mesh, |m| {
                m.nodes
                    .get_mut(&id)
                    .map(|entry| entry.rollouts.insert(ROLLED_WORKFLOW.to_owned(), text))
                    .is_some()
            })
        });
        if written == Some(true) {
            self.note_write();
        }
        self.drain_changes(i);
    }

    /// A random live node pauses the rollout, resumes it (lifting the pauses it sees) or, now
    /// and then, aborts it, as an operator on a control node would.
    fn rollout_control(&mut self) {
        if let Some(every) = self
            .sc
            .workload
            .rollout
            .as_ref()
            .and_then(|r| r.control_every)
        {
            let at = self.now + self.exp(every.0);
            if at < self.sc.quiet_from() {
                self.schedule(at, Ev::RolloutControl);
            }
        }
        let alive: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].alive())
            .collect();
        if alive.is_empty() {
            return;
        }
        let i = alive[self.rng.gen_range(0..alive.len())];
        let roll = self.rng.gen_range(0..10);
        // As `rhizome rollout pause|resume|abort`: nothing to control before the plan arrives
        // or once the rollout is aborted.
        let Some(facts) = self.rollout_facts(i).filter(|f| !f.aborted()) else {
            return;
        };
        let lifted: BTreeSet<&str> = facts
            .controls
            .iter()
            .filter(|c| c.action == Action::Resume)
            .flat_map(|c| c.seen.iter().map(String::as_str))
            .collect();
        let paused = facts
            .controls
            .iter()
            .any(|c| c.action == Action::Pause && !lifted.contains(c.id.as_str()));
        let action = match roll {
            0 => Action::Abort,
            _ if paused => Action::Resume,
            _ => Action::Pause,
        };
        let at_ms = EPOCH_MS + self.now.as_millis() as i64;
        let by = self.nodes[i].id.clone();
        let control = Control {
            id: format!("{by}-{at_ms}"),
            action,
            stage: facts.stage(),
            seen: facts.controls.iter().map(|c| c.id.clone()).collect(),
            by,
            at_ms,
        };
        let id = control.id.clone();
        let text = serde_json::to_string(&SignedControl {
            rollout: facts.plan.id.clone(),
            control,
            author_cert: String::new(),
            signature: String::new(),
        })
        .expect("a control encodes");
        let written = self.store_op(i, "writing a rollout control", |store| {
            store.update::<RolloutControls, _>(&rolled_name(), |c| {
                c.controls.insert(id, text);
            })
        });
        if written.is_some() {
            self.note_write();
        }
        self.drain_changes(i);
    }

    /// Whether node `i`'s runs of the new version fail: a share of the nodes that depends on
    /// the seed, and not on the order random numbers are drawn in.
    fn rollout_failing(&self, i: usize) -> bool {
        let percent = self
            .sc
            .workload
            .rollout
            .as_ref()
            .map_or(0, |r| r.failing_percent);
        // FNV-1a: stable across builds and platforms, unlike the standard library's hasher.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in self
            .opts
            .seed
            .to_le_bytes()
            .iter()
            .chain(self.nodes[i].id.as_bytes())
        {
            hash = (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
        }
        hash % 100 < u64::from(percent)
    }

    /// The rollout's facts in node `i`'s store and its decision, once the plan reached it.
    /// Whoever holds the same heads of the registry and the workflow must decide alike.
    fn rollout_facts(&mut self, i: usize) -> Option<RolloutFacts> {
        self.drain_changes(i);
        let facts = self
            .store_op(i, "reading the rollout's facts", RolloutFacts::read)
            .flatten()?;
        let digest = |doc: DocId| self.nodes[i].digests.get(&doc).copied().unwrap_or(ABSENT);
        let heads = (
            digest(doc_bytes(&DocName::Mesh)),
            digest(doc_bytes(&rolled_name())),
        );
        let view = facts.view();
        self.check("an aborted rollout admits nobody");
        let abort_control = facts.controls.iter().any(|c| c.action == Action::Abort);
        if (facts.aborted() && !view.1.is_empty()) || (abort_control && !facts.aborted()) {
            let detail = format!(
                "{} decides {} with {} controls, an abort among them: {abort_control}",
                self.nodes[i].name,
                self.describe_view(&view),
                facts.controls.len()
            );
            self.violate("an aborted rollout admits nobody", detail);
        }
        self.check("nodes holding the same facts decide the rollout alike");
        match self.rollout_decisions.get(&heads).cloned() {
            None => {
                self.rollout_decisions.insert(heads, (view, i));
            }
            Some((first, by)) if first != view => {
                let detail = format!(
                    "{} decides {} from the same registry and workflow heads as {}, which \
                     decided {}",
                    self.nodes[i].name,
                    self.describe_view(&view),
                    self.nodes[by].name,
                    self.describe_view(&first)
                );
                self.violate(
                    "nodes holding the same facts decide the rollout alike",
                    detail,
                );
            }
            Some(_) => {}
        }
        Some(facts)
    }

    /// A decision in words, with node names rather than ids.
    fn describe_view(&self, (status, admitted): &RolloutView) -> String {
        let status = crate::report::rollout_status(status);
        let names: Vec<String> = admitted
            .iter()
            .map(|id| {
                self.by_id
                    .get(id)
                    .map_or_else(|| id.clone(), |&k| self.nodes[k].name.clone())
            })
            .collect();
        format!("{status}, admitting [{}]", names.join(" "))
    }

    /// Folds the registry's heads into one when it has many and this node aggregates a zone,
    /// as the node's upkeep does.
    fn merge_heads(&mut self, i: usize, inc: u32) {
        if !self.is_live(i, inc) {
            return;
        }
        self.schedule(
            self.now + MERGE_HEADS_EVERY,
            Ev::MergeHeads { node: i, inc },
        );
        let aggregates = self.nodes[i]
            .live
            .as_ref()
            .and_then(|l| l.hierarchy.as_ref())
            .is_some_and(Hierarchy::is_aggregator);
        if !aggregates {
            return;
        }
        let merged = self.store_op(i, "merging the registry's heads", |store| {
            store.merge_heads::<MeshRegistry>(&DocName::Mesh)
        });
        if merged == Some(true) {
            self.drain_changes(i);
            self.schedule_serve(i);
        }
    }

    fn retention(&mut self, i: usize, inc: u32) {
        if !self.is_live(i, inc) {
            return;
        }
        let every = self.sc.store.retention_every.0;
        self.schedule(self.now + every, Ev::Retention { node: i, inc });
        let now_ms = EPOCH_MS + self.now.as_millis() as i64;
        let retired = self
            .store_op(i, "retention", |store| store.enforce_retention(now_ms))
            .unwrap_or_default();
        self.drain_changes(i);
        for r in retired {
            let Ok(name) = r.doc.parse::<DocName>() else {
                continue;
            };
            let doc = doc_bytes(&name);
            self.nodes[i].digests.insert(doc, RETIRED);
            self.sync_input(
                i,
                SyncIn::LocalChanged(CatalogueEntry {
                    doc,
                    digest: RETIRED,
                    name: r.doc,
                }),
            );
        }
    }

    // ----------------------------------------------------------------------------------------
    // invariants

    /// The aggregator of a node's zone: fixed (static aggregation) or as the node's own election
    /// sees it.
    fn aggregator_for(&self, owner: usize) -> Option<usize> {
        match self.sc.aggregation {
            Aggregation::None => None,
            Aggregation::Static => self.aggregator.get(&self.nodes[owner].zone).copied(),
            Aggregation::Election => {
                let live = self.nodes[owner].live.as_ref()?;
                let e = live.election.as_ref()?;
                let id = e.aggregator_of(&self.nodes[owner].zone)?;
                self.by_id.get(&id).copied()
            }
        }
    }

    /// The aggregator of a zone as its first live member sees it.
    fn zone_aggregator(&self, zone: &str) -> Option<usize> {
        let member = (0..self.nodes.len()).find(|&i| {
            self.nodes[i].alive() && self.nodes[i].zone == zone && self.nodes[i].segment.is_some()
        })?;
        self.aggregator_for(member)
    }

    /// Whether a node currently aggregates its own zone.
    fn is_aggregator(&self, i: usize) -> bool {
        match self.sc.aggregation {
            Aggregation::None => false,
            Aggregation::Static => self.aggregator.values().any(|a| *a == i),
            Aggregation::Election => self.nodes[i]
                .live
                .as_ref()
                .and_then(|l| l.election.as_ref())
                .is_some_and(|e| e.aggregates().contains(&self.nodes[i].zone)),
        }
    }

    /// Whether a window may have been retired by now.
    fn retirable(&self, window: &Window) -> bool {
        self.sc.store.retention.is_some_and(|age| {
            window.end_ms() < EPOCH_MS + self.now.as_millis() as i64 - age.0.as_millis() as i64
        })
    }

    /// Node pairs that hold different heads of a document they both may hold.
    fn divergence(&self) -> u64 {
        let live: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].alive())
            .collect();
        let mut groups: BTreeMap<Vec<HeadsDigest>, u64> = BTreeMap::new();
        let mut signature: BTreeMap<usize, Vec<HeadsDigest>> = BTreeMap::new();
        for &i in &live {
            let sig: Vec<HeadsDigest> = self
                .common_docs
                .iter()
                .map(|d| self.nodes[i].digests.get(d).copied().unwrap_or(ABSENT))
                .collect();
            *groups.entry(sig.clone()).or_default() += 1;
            signature.insert(i, sig);
        }
        let n = live.len() as u64;
        let mut differing = n * n.saturating_sub(1) / 2;
        for count in groups.values() {
            differing -= count * (count - 1) / 2;
        }
        for &o in &live {
            let Some(a) = self.aggregator_for(o) else {
                continue;
            };
            if a == o || !self.nodes[a].alive() || signature[&o] != signature[&a] {
                continue;
            }
            let differs = self.nodes[o].own_results.iter().any(|(doc, window)| {
                let ours = self.nodes[o].digests.get(doc);
                ours != Some(&RETIRED)
                    && !self.retirable(window)
                    && self.nodes[a].digests.get(doc) != ours
            });
            if differs {
                differing += 1;
            }
        }
        differing
    }

    fn sample(&mut self) {
        self.dirty = false;
        let value = self.divergence();
        if self.divergence.last().map(|(_, v)| *v) != Some(value) {
            self.divergence.push((self.now, value));
        }
        if value == 0 {
            let bytes: u64 = self.nodes.iter().map(|n| n.traffic.total_bytes()).sum();
            let live = self.nodes.iter().filter(|n| n.alive()).count().max(1) as u64;
            for heal in self.heals.iter_mut().filter(|h| h.converged_at.is_none()) {
                heal.converged_at = Some(self.now);
                heal.bytes_per_node = (bytes - heal.bytes_before) / live;
            }
        }
    }

    fn final_checks(&mut self) {
        let live: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].alive())
            .collect();
        // Liveness: identical heads of every document all may hold, from the stores themselves.
        let mut docs: Vec<(DocId, String)> = vec![(doc_bytes(&DocName::Mesh), "mesh".into())];
        for k in 0..self.sc.workload.workflows {
            docs.push((doc_bytes(&workflow_name(k)), workflow_name(k).to_string()));
        }
        if self.sc.workload.rollout.is_some() {
            docs.push((doc_bytes(&rolled_name()), rolled_name().to_string()));
        }
        for (doc, name) in &docs {
            let mut by_digest: BTreeMap<HeadsDigest, Vec<usize>> = BTreeMap::new();
            for &i in &live {
                let truth = self.truth(i, doc);
                if self.nodes[i].digests.get(doc).copied().unwrap_or(ABSENT) != truth {
                    let detail = format!(
                        "{}: the store's heads of {name} differ from what its change listener \
                         reported",
                        self.nodes[i].name
                    );
                    self.violate("the change listener reports every change", detail);
                }
                by_digest.entry(truth).or_default().push(i);
            }
            self.check("all nodes converge on shared documents");
            if by_digest.len() > 1 {
                let sides: Vec<String> = by_digest.values().map(|v| self.names(v)).collect();
                let detail = format!(
                    "{name} still has {} different heads {} after the last fault and write: {}",
                    by_digest.len(),
                    crate::report::human(self.now.saturating_sub(self.quiet_point())),
                    sides.join(" | ")
                );
                self.violate("all nodes converge on shared documents", detail);
            }
        }
        // Liveness: results reach the aggregator.
        for &o in &live {
            let Some(a) = self.aggregator_for(o) else {
                continue;
            };
            if a == o || !self.nodes[a].alive() {
                continue;
            }
            let own: Vec<(DocId, Window)> = self.nodes[o]
                .own_results
                .iter()
                .map(|(d, w)| (*d, *w))
                .collect();
            for (doc, window) in own {
                if self.retirable(&window) {
                    continue;
                }
                self.check("results reach their aggregator");
                let (ours, theirs) = (self.truth(o, &doc), self.truth(a, &doc));
                if ours != RETIRED && ours != theirs {
                    let detail = format!(
                        "results of {} for {} differ between owner and aggregator {}",
                        self.nodes[o].name,
                        crdt_store::format_timestamp(window.start_ms),
                        self.nodes[a].name
                    );
                    self.violate("results reach their aggregator", detail);
                }
            }
        }
        // Safety: every acknowledged result is at its owner (and at the aggregator).
        let mut by_owner: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (k, acked) in self.ledger.iter().enumerate() {
            by_owner.entry(acked.owner).or_default().push(k);
        }
        for (owner, entries) in by_owner {
            let owner_id = self.nodes[owner].id.clone();
            let zone = self.nodes[owner].zone.clone();
            let at_owner = self.results_at(owner, &owner_id);
            let aggregator = self
                .zone_aggregator(&zone)
                .filter(|&a| a != owner && self.nodes[a].alive());
            let at_aggregator = aggregator.map(|a| self.results_at(a, &owner_id));
            let store_kept = self.nodes[owner].store.is_some();
            for k in entries {
                let acked = &self.ledger[k];
                if self.retirable(&acked.window) {
                    continue;
                }
                let run = acked.run_id.clone();
                let held_by = acked.held_by;
                if store_kept {
                    self.check("no acknowledged result is lost");
                    if !at_owner.contains(&run) {
                        let detail = format!(
                            "{} lost its acknowledged result {run}",
                            self.nodes[owner].name
                        );
                        self.violate("no acknowledged result is lost", detail);
                    }
                }
                if store_kept {
                    if let Some(found) = &at_aggregator
                        && self.nodes[owner].alive()
                    {
                        self.check("acknowledged results reach the aggregator");
                        if !found.contains(&run) {
                            let detail = format!(
                                "the aggregator of {} lacks its acknowledged result {run}",
                                self.nodes[owner].name
                            );
                            self.violate("acknowledged results reach the aggregator", detail);
                        }
                    }
                } else if let Some(h) = held_by.filter(|&h| !self.nodes[h].gone) {
                    // The owner's disk is gone: the copy its aggregator held then must survive,
                    // there or at the zone's aggregator now. (The share policy lets only the
                    // owner and the current aggregator hold results, so a former aggregator
                    // cannot hand such a copy on.)
                    self.check("no acknowledged result is lost");
                    let at_holder = self.results_at(h, &owner_id).contains(&run);
                    let at_current = at_aggregator.as_ref().is_some_and(|f| f.contains(&run));
                    if !at_holder && !at_current {
                        let detail = format!(
                            "{}'s result {run} (its store is lost) is gone from {}, which held it",
                            self.nodes[owner].name, self.nodes[h].name
                        );
                        self.violate("no acknowledged result is lost", detail);
                    }
                }
            }
        }
        if self.sc.aggregation == Aggregation::Election {
            self.check_elections(&live);
        }
        if self.sc.workload.rollout.is_some() {
            self.check_rollout(&live);
        }
        for &i in &live {
            self.check_shares_agree(i, true);
        }
        // The registry lists every live node everywhere.
        let live_ids: BTreeSet<String> = live
            .iter()
            .filter(|&&i| self.nodes[i].segment.is_some() || self.cloud == Some(i))
            .map(|&i| self.nodes[i].id.clone())
            .collect();
        for &i in &live {
            let store = self.nodes[i].store.as_mut().expect("live");
            let listed = store.node_zones().expect("registry reads");
            let missing = live_ids
                .iter()
                .filter(|id| !listed.contains_key(*id))
                .count();
            self.check("the registry lists every live node");
            if missing > 0 {
                let detail = format!(
                    "{}'s registry lacks {missing} of {} live nodes",
                    self.nodes[i].name,
                    live_ids.len()
                );
                self.violate("the registry lists every live node", detail);
            }
        }
        // Membership: nodes that can reach each other are connected.
        for &i in &live {
            for &j in &live {
                if i >= j || !self.should_connect(i, j) {
                    continue;
                }
                self.check("reachable nodes are connected");
                let (a, b) = (&self.nodes[i], &self.nodes[j]);
                let la = a.live.as_ref().expect("live");
                let lb = b.live.as_ref().expect("live");
                let connected = la.membership.connection(&b.id).is_some()
                    && lb.membership.connection(&a.id).is_some();
                if !connected {
                    let state = |l: &Live, id: &str| {
                        l.membership
                            .peers(self.now)
                            .into_iter()
                            .find(|p| p.node == id)
                            .map_or("unknown".to_owned(), |p| format!("{:?}", p.state))
                    };
                    let detail = format!(
                        "{} and {} are not connected ({} sees {}, {} sees {})",
                        a.name,
                        b.name,
                        a.name,
                        state(la, &b.id),
                        b.name,
                        state(lb, &a.id)
                    );
                    self.violate("reachable nodes are connected", detail);
                }
            }
        }
        let _ = PeerState::Connected;
    }

    /// Liveness of the rollout: once the facts have spread, every live node decides it alike
    /// (the same status and the same nodes admitted), whichever side of which partition it
    /// decided on before.
    fn check_rollout(&mut self, live: &[usize]) {
        let mut views: Vec<(Option<RolloutView>, Vec<usize>)> = Vec::new();
        let mut outcome = None;
        for &i in live {
            if self.nodes[i]
                .store
                .as_ref()
                .is_none_or(|s| s.broken().is_some())
            {
                continue;
            }
            let facts = self.rollout_facts(i);
            let view = facts.as_ref().map(RolloutFacts::view);
            if let Some(f) = facts.as_ref().filter(|_| outcome.is_none()) {
                outcome = Some(RolloutOutcome {
                    status: f.decision.status.clone(),
                    admitted: f.decision.admitted.len(),
                    targets: f.decision.order.len(),
                    controls: f.controls.len(),
                });
            }
            match views.iter_mut().find(|(v, _)| *v == view) {
                Some((_, nodes)) => nodes.push(i),
                None => views.push((view, vec![i])),
            }
        }
        self.rollout_outcome = outcome;
        self.check("every node decides the rollout alike");
        if views.len() > 1 {
            let sides: Vec<String> = views
                .iter()
                .map(|(view, nodes)| {
                    let decided = view
                        .as_ref()
                        .map_or("holds no plan".to_owned(), |v| self.describe_view(v));
                    format!("{}: {decided}", self.names(nodes))
                })
                .collect();
            let detail = format!(
                "{} different decisions {} after the last fault and write: {}",
                views.len(),
                crate::report::human(self.now.saturating_sub(self.quiet_point())),
                sides.join(" | ")
            );
            self.violate("every node decides the rollout alike", detail);
        }
    }

    /// Connected components, over connections both ends consider in use, of the live nodes
    /// `admit` lets in: a component's smallest node index for each of them.
    fn components(&self, live: &[usize], admit: impl Fn(usize) -> bool) -> BTreeMap<usize, usize> {
        let mut component: BTreeMap<usize, usize> = BTreeMap::new();
        for &start in live.iter().filter(|&&i| admit(i)) {
            if component.contains_key(&start) {
                continue;
            }
            let mut stack = vec![start];
            component.insert(start, start);
            while let Some(n) = stack.pop() {
                let l = self.nodes[n].live.as_ref().expect("live");
                for p in l.membership.peers(self.now) {
                    let Some(&j) = self.by_id.get(&p.node) else {
                        continue;
                    };
                    if l.membership.connection(&p.node).is_some()
                        && self.nodes[j].alive()
                        && admit(j)
                        && !component.contains_key(&j)
                    {
                        component.insert(j, start);
                        stack.push(j);
                    }
                }
            }
        }
        component
    }

    /// After stabilisation: at most one aggregator per zone among the nodes of that zone that
    /// reach each other, and every member of a zone sees the same one.
    ///
    /// "Reach each other" counts only paths through the zone itself (its members and the
    /// members of the zones below it): two halves of a split site that both reach the cloud
    /// are not one zone, each elects its own aggregator, and the parent takes both halves'
    /// rollups. For the root every node is in the zone, so this is the whole mesh.
    fn check_elections(&mut self, live: &[usize]) {
        let mut claimed: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for &i in live {
            let e = self.nodes[i]
                .live
                .as_ref()
                .and_then(|l| l.election.as_ref());
            for zone in e.map(|e| e.aggregates()).unwrap_or_default() {
                claimed.entry(zone).or_default().push(i);
            }
        }
        let mut claims: BTreeMap<(usize, String), Vec<usize>> = BTreeMap::new();
        for (zone, claimants) in claimed {
            let component = self.components(live, |n| {
                claimants.contains(&n) || zone_within(&self.nodes[n].zone, &zone)
            });
            for i in claimants {
                claims
                    .entry((component[&i], zone.clone()))
                    .or_default()
                    .push(i);
            }
        }
        for ((_, zone), nodes) in &claims {
            self.check("at most one aggregator per zone among members that reach each other");
            if nodes.len() > 1 {
                let detail = format!(
                    "zone {:?} has {} aggregators whose members reach each other: {}",
                    zone,
                    nodes.len(),
                    self.names(nodes)
                );
                self.violate(
                    "at most one aggregator per zone among members that reach each other",
                    detail,
                );
            }
        }
        let mut seen: BTreeMap<(usize, String), BTreeSet<Option<usize>>> = BTreeMap::new();
        let zones: BTreeSet<String> = live
            .iter()
            .filter(|&&i| self.nodes[i].segment.is_some())
            .map(|&i| self.nodes[i].zone.clone())
            .collect();
        for zone in zones {
            let component = self.components(live, |n| zone_within(&self.nodes[n].zone, &zone));
            for &i in live {
                if self.nodes[i].segment.is_some() && self.nodes[i].zone == zone {
                    seen.entry((component[&i], zone.clone()))
                        .or_default()
                        .insert(self.aggregator_for(i));
                }
            }
        }
        for ((_, zone), views) in seen {
            self.check("the members of a zone agree on its aggregator");
            if views.len() > 1 || views.contains(&None) {
                let names: Vec<String> = views
                    .iter()
                    .map(|v| v.map_or("none".to_owned(), |a| self.nodes[a].name.clone()))
                    .collect();
                let detail = format!("zone {zone:?}: members see {}", names.join(", "));
                self.violate("the members of a zone agree on its aggregator", detail);
            }
        }
    }

    /// What node `i` shares with each peer it is connected to (both replicators count the
    /// other as connected), against what that peer shares with `i`, for every document either
    /// holds. Where the two disagree, one side offers what the other drops unapplied, and a
    /// session the offering side opened waits for an answer that never comes.
    ///
    /// `settled` (the end of a run, elections agreed and registries converged): every
    /// decision must agree, and each pair is compared once. Otherwise (after a policy change)
    /// only the decisions whose inputs both views hold alike (the zone of a result's owner and
    /// the aggregators a document's routing reads): nodes that see the hierarchy differently
    /// for a moment may disagree, but the rule must not make nodes that see it alike disagree.
    fn check_shares_agree(&mut self, i: usize, settled: bool) {
        let Some(li) = self.nodes[i].live.as_ref() else {
            return;
        };
        let me = &self.nodes[i].id;
        let mut checked = 0;
        let mut found: Vec<String> = Vec::new();
        for peer in li.replicator.peers() {
            let Some(&j) = self.by_id.get(peer) else {
                continue;
            };
            if settled && j < i {
                continue;
            }
            let Some(lj) = self.nodes[j].live.as_ref() else {
                continue;
            };
            if !lj.replicator.is_connected(me) {
                continue;
            }
            checked += 1;
            let (pi, pj) = (li.replicator.policy(), lj.replicator.policy());
            let theirs = lj.replicator.documents().filter(|_| settled);
            for (_, name, class) in li.replicator.documents().chain(theirs) {
                if !settled && !same_inputs(pi, pj, class) {
                    continue;
                }
                let (ours, back) = (
                    li.replicator.shares_with(class, peer),
                    lj.replicator.shares_with(class, me),
                );
                if ours != back {
                    let (yes, no) = if ours { (i, j) } else { (j, i) };
                    found.push(format!(
                        "{} shares {name} with {}, which does not share it back",
                        self.nodes[yes].name, self.nodes[no].name
                    ));
                    break;
                }
            }
        }
        for _ in 0..checked {
            self.check("connected nodes agree on what they share");
        }
        for detail in found {
            self.violate("connected nodes agree on what they share", detail);
        }
    }

    fn should_connect(&self, i: usize, j: usize) -> bool {
        let (a, b) = (&self.nodes[i], &self.nodes[j]);
        match (a.segment, b.segment) {
            (Some(x), Some(y)) => x == y,
            (None, Some(_)) => b.gateway,
            (Some(_), None) => a.gateway,
            (None, None) => false,
        }
    }

    fn quiet_point(&self) -> Duration {
        self.last_fault_end.max(self.last_write)
    }

    /// The heads digest a node's store holds for a document.
    fn truth(&mut self, i: usize, doc: &DocId) -> HeadsDigest {
        let store = self.nodes[i].store.as_mut().expect("live");
        let catalogue = store.catalogue().expect("catalogue");
        catalogue
            .into_iter()
            .find(|e| e.doc == *doc)
            .map_or(ABSENT, |e| e.digest)
    }

    fn report(self) -> Report {
        let live = self.nodes.iter().filter(|n| n.alive()).count();
        let mut traffic: Vec<(String, NodeTraffic)> = self
            .nodes
            .iter()
            .map(|n| (n.name.clone(), n.traffic.clone()))
            .collect();
        traffic.sort_by(|a, b| a.0.cmp(&b.0));
        Report {
            scenario: self.sc.name.clone(),
            scenario_arg: self.opts.scenario_arg.clone(),
            seed: self.opts.seed,
            nodes: self.opts.nodes.unwrap_or(self.sc.nodes),
            nodes_at_end: live,
            plant: self.opts.plant.map(Plant::name),
            simulated: self.sc.duration.0,
            events: self.events,
            writes: self.writes,
            acknowledged: self.ledger.len() as u64,
            heals: self.heals,
            reelections: self.reelections,
            faults: self.fault_spans,
            traffic,
            checks: self.checks.into_iter().collect(),
            violations: self.violations,
            violation_count: self.violation_count,
            divergence: self.divergence,
            quiet_from: self.sc.quiet_from(),
            store_failures: self.store_failures,
            store_reopens: self.store_reopens,
            rollout: self.rollout_outcome,
        }
    }
}

/// Whether two share policies hold the same inputs for documents of a class: the owner's zone
/// and its aggregator (results), the aggregators of the zone and of every zone above it
/// (rollups).
fn same_inputs(a: &SharePolicy, b: &SharePolicy, class: &DocClass) -> bool {
    match class {
        DocClass::Mesh | DocClass::Workflow => true,
        DocClass::Results { owner } => {
            let zone = a.zone_of.get(owner);
            zone == b.zone_of.get(owner)
                && zone.is_none_or(|z| a.aggregator_of.get(z) == b.aggregator_of.get(z))
        }
        DocClass::Rollup { zone } => same_chain(a, b, zone),
        DocClass::Alerts { owner } => {
            let zone = a.zone_of.get(owner);
            zone == b.zone_of.get(owner) && zone.is_none_or(|z| same_chain(a, b, z))
        }
    }
}

/// Whether two share policies name the same aggregators for `zone` and every zone above it.
fn same_chain(a: &SharePolicy, b: &SharePolicy, zone: &str) -> bool {
    let mut next = Some(zone);
    while let Some(z) = next {
        if a.aggregator_of.get(z) != b.aggregator_of.get(z) {
            return false;
        }
        next = (!z.is_empty()).then(|| z.rsplit_once('/').map_or("", |(parent, _)| parent));
    }
    true
}

/// Whether `zone` is `ancestor` or lies below it (`site-a/line-1` within `site-a`; every zone
/// within the root, `""`).
fn zone_within(zone: &str, ancestor: &str) -> bool {
    ancestor.is_empty()
        || zone == ancestor
        || zone
            .strip_prefix(ancestor)
            .is_some_and(|rest| rest.starts_with('/'))
}

fn workflow_name(k: usize) -> DocName {
    DocName::workflow(&format!("wf-{k}")).expect("a valid workflow id")
}

fn rolled_name() -> DocName {
    DocName::workflow(ROLLED_WORKFLOW).expect("a valid workflow id")
}

/// The plan of `[workload.rollout]`: one canary, then half, then every node; a stage passes
/// once each of its nodes ran the new version three times, all but one in ten successfully,
/// for eight seconds; half the nodes that took it failing aborts it. Slow enough that stages
/// pass while the mesh is split.
fn rollout_plan() -> Plan {
    Plan {
        id: format!("{ROLLED_WORKFLOW}@2"),
        version: 2,
        baseline: 1,
        stages: vec![Stage::Nodes(1), Stage::Percent(50), Stage::Percent(100)],
        gate: Gate {
            min_runs: 3,
            min_success_pct: 90,
            soak_ms: 8_000,
            ..Gate::default()
        },
        abort_failure_pct: 50,
        max_concurrent: 0,
    }
}

/// A simulated node's next report, as `node::run::rollout::next_report` makes it: one more run
/// of the new version each time it decides while it runs it (each failing on a failing node),
/// the baseline otherwise; a `failed` report is final, and a node that took the new version
/// reports `rolled-back` once the rollout is aborted.
fn next_report(
    plan: &Plan,
    previous: Option<&rollout::Report>,
    runs_new: bool,
    failing: bool,
    aborted: bool,
    now_ms: i64,
) -> rollout::Report {
    let switched = previous.filter(|r| r.version == plan.version && r.since_ms > 0);
    let (runs, failures, since_ms) = match (runs_new, switched) {
        (true, Some(r)) => (r.runs + 1, r.failures + u32::from(failing), r.since_ms),
        (true, None) => (0, 0, now_ms),
        (false, _) => previous.map_or((0, 0, 0), |r| (r.runs, r.failures, r.since_ms)),
    };
    let below_gate = runs >= plan.gate.min_runs.max(1)
        && (runs - failures.min(runs)) * 100 < runs * u32::from(plan.gate.min_success_pct);
    let (state, reason) = match previous.filter(|r| r.state == NodeState::Failed) {
        Some(failed) => (NodeState::Failed, failed.reason.clone()),
        None if runs_new && below_gate => (
            NodeState::Failed,
            Some(format!(
                "{failures} of {runs} runs of version {} failed",
                plan.version
            )),
        ),
        None if runs_new => (NodeState::Active, None),
        None if aborted && since_ms > 0 => (NodeState::RolledBack, None),
        None => (NodeState::Pending, None),
    };
    rollout::Report {
        rollout: plan.id.clone(),
        version: if runs_new {
            plan.version
        } else {
            plan.baseline
        },
        state,
        runs,
        failures,
        since_ms,
        at_ms: now_ms,
        reason,
        alerts: 0,
    }
}

fn doc_bytes(name: &DocName) -> DocId {
    name.document_id(MESH_ID)
        .as_bytes()
        .try_into()
        .expect("16-byte document ids")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn world(scenario: &str, nodes: usize, seed: u64) -> World {
        World::new(Options {
            scenario: Scenario::load(scenario).expect("a bundled scenario"),
            scenario_arg: scenario.to_owned(),
            nodes: Some(nodes),
            seed,
            plant: None,
        })
    }

    fn disagreements(w: &World) -> Vec<&Violation> {
        w.violations
            .iter()
            .filter(|v| v.invariant == "connected nodes agree on what they share")
            .collect()
    }

    #[test]
    fn a_node_that_names_another_aggregator_is_seen_to_disagree() {
        let mut w = world("churn", 5, 1);
        // Before the first fault: the zone has elected, every node holds results.
        w.advance(Duration::from_secs(12), Duration::MAX, &mut |_, _| {});
        let live: Vec<usize> = (0..w.nodes.len()).filter(|&i| w.nodes[i].alive()).collect();
        for &i in &live {
            w.check_shares_agree(i, true);
        }
        assert!(disagreements(&w).is_empty(), "{:?}", w.violations);
        assert!(w.checks["connected nodes agree on what they share"] > 0);

        // An owner that believes another member aggregates the zone offers its results there
        // and not to the real aggregator: both pairs disagree.
        let owner = live
            .iter()
            .copied()
            .find(|&i| !w.is_aggregator(i) && !w.nodes[i].own_results.is_empty())
            .expect("a member with results");
        let other = live
            .iter()
            .copied()
            .find(|&i| i != owner && !w.is_aggregator(i))
            .expect("another member");
        let mut skewed = w.nodes[owner]
            .live
            .as_ref()
            .expect("live")
            .replicator
            .policy()
            .clone();
        let zone = w.nodes[owner].zone.clone();
        skewed.aggregator_of.insert(zone, w.nodes[other].id.clone());
        w.sync_input(owner, SyncIn::Policy(skewed));
        // Seen as a change, the views differ in what the results' routing reads: no verdict.
        w.check_shares_agree(owner, false);
        assert!(disagreements(&w).is_empty(), "{:?}", w.violations);
        // Settled, they must agree: they do not.
        for &i in &live {
            w.check_shares_agree(i, true);
        }
        let found: Vec<String> = disagreements(&w).iter().map(|v| v.detail.clone()).collect();
        let (o, x) = (&w.nodes[owner].name, &w.nodes[other].name);
        assert!(
            found
                .iter()
                .any(|d| d.starts_with(&format!("{o} shares results/"))
                    && d.ends_with(&format!("with {x}, which does not share it back"))),
            "{found:?}"
        );
        assert_eq!(found.len(), 2, "{found:?}");
    }

    #[test]
    fn run_until_then_run_gives_the_same_report_as_a_run() {
        let whole = world("churn", 4, 3).run().render_text();
        let mut w = world("churn", 4, 3);
        w.advance(Duration::from_secs(30), Duration::MAX, &mut |_, _| {});
        assert_eq!(w.run().render_text(), whole);
    }
}
