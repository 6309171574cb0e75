//! A seeded chaos schedule over real processes: two sites of three edges and a cloud in network
//! namespaces (`Lab::two_sites_and_a_cloud`), each edge's data dir on a small tmpfs of its own.
//!
//! A schedule is drawn from its seed: faults that start at random times in the first
//! [`CHAOS`] and last a few seconds, each one of kill -9 of any node (restarted when the fault
//! ends), an edge unplugged, a site split (every edge port isolated: the edges no longer reach
//! each other, each still reaches the cloud), a site cut off from the cloud, the cloud
//! isolated, multicast dropped on a site's switch, an edge's disk filled below its watermark,
//! and 10 % loss on an edge's cable. Faults overlap. Throughout, a workflow runs every second
//! on every edge, and the test asks edges for runs of their own (`rhizome run`), keeping the
//! ids of those acknowledged.
//!
//! After the last fault is healed and the workflow stopped, checked: every node's `rhizome
//! sync` exits 0; each site has one aggregator that every member names, under the cloud; the
//! cloud counts, per site, exactly the runs the site's edges recorded (none lost, none
//! twice); every acknowledged run is among its node's results; no node panicked. A failure
//! prints the seed, the schedule and the command that replays it.
//!
//! `RHIZOME_CHAOS_SEEDS` picks the schedules (`1,2,3`, or a range `1-50`); CI runs 1 to 3.
//! `bench/chaos-soak.sh` runs many and sums the `chaos-result` lines this test prints. Timings
//! are printed, never asserted. Needs root, iproute2 and nft; skipped otherwise.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rhizome_e2e::disk::{Tmpfs, fill};
use rhizome_e2e::netns::{Cable, Host, Lab, TwoSites, start_node};
use rhizome_e2e::process::{
    LogsOnPanic, Running, apply_on, chain, init, init_in, log_file, ok, own_runs, run_on, status,
};
use rhizome_e2e::wait_until;
use rhizome_e2e::workflows::probe;
use serde_json::Value;

const EDGES_PER_SITE: usize = 3;
const SITES: [&str; 2] = ["site-a", "site-b"];
/// Faults start within this time after the workflow runs everywhere, and end by its end.
const CHAOS: Duration = Duration::from_secs(40);
/// Each edge's filesystem; its watermark (5 %) is about 2.4 MiB.
const EDGE_DISK: &str = "48m";
/// What a filled disk keeps free: below the watermark, so the node refuses writes by name
/// before the filesystem itself fails.
const FILLED_KEEPS: u64 = 512 << 10;
/// How long the end may take: healed, stopped, in sync and counted.
const SETTLE: Duration = Duration::from_secs(120);

/// A node of the lab: the cloud, or edge `i` of site `s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum NodeRef {
    Cloud,
    Edge(usize, usize),
}

impl fmt::Display for NodeRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeRef::Cloud => f.write_str("cloud"),
            NodeRef::Edge(s, i) => write!(f, "{}{i}", ["a", "b"][*s]),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    /// kill -9, restarted when the fault ends.
    Kill(NodeRef),
    /// The edge's cable unplugged at the switch.
    Unplug(usize, usize),
    /// Every edge port of the site isolated: no edge reaches another, each reaches the cloud.
    SplitSite(usize),
    /// The router's port on the site's switch unplugged.
    CutSite(usize),
    IsolateCloud,
    NoMulticast(usize),
    FillDisk(usize, usize),
    Loss(usize, usize),
}

impl Fault {
    /// The kind, as the soak's counts name it.
    fn kind(&self) -> &'static str {
        match self {
            Fault::Kill(_) => "kill",
            Fault::Unplug(..) => "unplug",
            Fault::SplitSite(_) => "split",
            Fault::CutSite(_) => "site-cut",
            Fault::IsolateCloud => "cloud-isolated",
            Fault::NoMulticast(_) => "no-multicast",
            Fault::FillDisk(..) => "disk-full",
            Fault::Loss(..) => "loss",
        }
    }

    fn random(rng: &mut StdRng) -> Fault {
        let site = rng.gen_range(0..2);
        let edge = rng.gen_range(0..EDGES_PER_SITE);
        match rng.gen_range(0..9) {
            // Kills are the fault the promises are most about: twice as likely.
            0 | 1 => Fault::Kill(if rng.gen_range(0..7) == 0 {
                NodeRef::Cloud
            } else {
                NodeRef::Edge(site, edge)
            }),
            2 => Fault::Unplug(site, edge),
            3 => Fault::SplitSite(site),
            4 => Fault::CutSite(site),
            5 => Fault::IsolateCloud,
            6 => Fault::NoMulticast(site),
            7 => Fault::FillDisk(site, edge),
            _ => Fault::Loss(site, edge),
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let edge = |s: &usize, i: &usize| NodeRef::Edge(*s, *i);
        match self {
            Fault::Kill(node) => write!(f, "kill -9 {node}"),
            Fault::Unplug(s, i) => write!(f, "unplug {}", edge(s, i)),
            Fault::SplitSite(s) => write!(f, "split {}", SITES[*s]),
            Fault::CutSite(s) => write!(f, "cut {} from the cloud", SITES[*s]),
            Fault::IsolateCloud => f.write_str("isolate the cloud"),
            Fault::NoMulticast(s) => write!(f, "drop multicast on {}", SITES[*s]),
            Fault::FillDisk(s, i) => write!(f, "fill {}'s disk", edge(s, i)),
            Fault::Loss(s, i) => write!(f, "10% loss on {}", edge(s, i)),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Planned {
    at: Duration,
    lasts: Duration,
    fault: Fault,
}

/// The schedule of `seed`: the same seed, the same schedule.
fn schedule(seed: u64) -> Vec<Planned> {
    let mut rng = StdRng::seed_from_u64(seed);
    let wanted = rng.gen_range(6..=10);
    let chaos_ms = CHAOS.as_millis() as u64;
    let mut plan: Vec<Planned> = Vec::new();
    while plan.len() < wanted {
        let at = Duration::from_millis(rng.gen_range(500..chaos_ms - 3_000));
        let lasts = Duration::from_millis(rng.gen_range(3_000..15_000)).min(CHAOS - at);
        let fault = Fault::random(&mut rng);
        // One fault of a kind on one target at a time: a second kill of a dead node, or a
        // second nft table of the same name, is not a fault.
        let overlaps = plan
            .iter()
            .any(|p| p.fault == fault && p.at < at + lasts && at < p.at + p.lasts);
        if !overlaps {
            plan.push(Planned { at, lasts, fault });
        }
    }
    plan.sort_by_key(|p| (p.at, p.fault));
    plan
}

fn describe(plan: &[Planned]) -> String {
    plan.iter()
        .map(|p| {
            format!(
                "  at {:>5.1}s for {:>4.1}s: {}",
                p.at.as_secs_f64(),
                p.lasts.as_secs_f64(),
                p.fault
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

struct Member {
    host: Host,
    cable: Cable,
    dir: PathBuf,
    id: String,
    node: Option<Running>,
    /// The filler file while the disk is full.
    filler: Option<PathBuf>,
}

/// The lab and its nodes, with the faults in force.
///
/// Fields drop in order: the nodes are killed, then their disks unmounted, then the lab's
/// namespaces deleted.
struct Mesh {
    cloud: Member,
    /// `edges[s][i]`.
    edges: Vec<Vec<Member>>,
    _disks: Vec<Tmpfs>,
    net: TwoSites,
    lab: Lab,
}

impl Mesh {
    fn member(&mut self, node: NodeRef) -> &mut Member {
        match node {
            NodeRef::Cloud => &mut self.cloud,
            NodeRef::Edge(s, i) => &mut self.edges[s][i],
        }
    }

    fn cloud_addr(&self) -> String {
        self.net.cloud_cable.quic()
    }

    fn start(&mut self, node: NodeRef) {
        let cloud = self.cloud_addr();
        let m = self.member(node);
        m.node = Some(match node {
            NodeRef::Cloud => start_node(&m.host, None, &m.dir, &[], &["--role", "cloud"]),
            NodeRef::Edge(..) => start_node(&m.host, Some(&m.cable), &m.dir, &[&cloud], &[]),
        });
    }

    fn nodes(&self) -> impl Iterator<Item = (NodeRef, &Member)> {
        std::iter::once((NodeRef::Cloud, &self.cloud)).chain(
            self.edges.iter().enumerate().flat_map(|(s, site)| {
                site.iter()
                    .enumerate()
                    .map(move |(i, m)| (NodeRef::Edge(s, i), m))
            }),
        )
    }

    fn begin(&mut self, fault: Fault) {
        match fault {
            Fault::Kill(node) => self.member(node).node.take().expect("running").kill(),
            Fault::Unplug(s, i) => self.lab.set_plugged(&self.edges[s][i].cable, false),
            Fault::SplitSite(s) => {
                for cable in &self.net.sites[s].cables {
                    self.lab.set_isolated(cable, true);
                }
            }
            Fault::CutSite(s) => self.lab.set_plugged(&self.net.sites[s].uplink, false),
            Fault::IsolateCloud => self.lab.set_plugged(&self.net.cloud_cable, false),
            Fault::NoMulticast(s) => self.lab.drop_multicast(&self.net.sites[s].switch),
            Fault::FillDisk(s, i) => {
                let disk = self.edges[s][i].dir.parent().unwrap().to_owned();
                self.edges[s][i].filler = Some(fill(&disk, FILLED_KEEPS));
            }
            Fault::Loss(s, i) => self.lab.lossy(&self.edges[s][i].cable, 10),
        }
    }

    fn end(&mut self, fault: Fault) {
        match fault {
            Fault::Kill(node) => self.start(node),
            Fault::Unplug(s, i) => self.lab.set_plugged(&self.edges[s][i].cable, true),
            Fault::SplitSite(s) => {
                for cable in &self.net.sites[s].cables {
                    self.lab.set_isolated(cable, false);
                }
            }
            Fault::CutSite(s) => self.lab.set_plugged(&self.net.sites[s].uplink, true),
            Fault::IsolateCloud => self.lab.set_plugged(&self.net.cloud_cable, true),
            Fault::NoMulticast(s) => self.lab.pass_multicast(&self.net.sites[s].switch),
            Fault::FillDisk(s, i) => {
                let filler = self.edges[s][i].filler.take().expect("filled");
                std::fs::remove_file(filler).unwrap();
            }
            Fault::Loss(s, i) => self.lab.lossless(&self.edges[s][i].cable),
        }
    }

    /// The site's aggregator, if every member names the same one of them, under the cloud.
    fn agreed_aggregator(&self, s: usize) -> Option<String> {
        let mut agreed: Option<String> = None;
        for m in &self.edges[s] {
            let out = run_on(m.node.as_ref()?, &["status", "--json"]);
            if !out.status.success() {
                return None;
            }
            let status: Value = serde_json::from_slice(&out.stdout).ok()?;
            let [(zone, aggregator), (root, top)] = chain(&status).try_into().ok()?;
            let member = self.edges[s].iter().any(|e| e.id == aggregator);
            if zone != SITES[s]
                || !member
                || !root.is_empty()
                || top != self.cloud.id
                || agreed.as_ref().is_some_and(|a| a != &aggregator)
            {
                return None;
            }
            agreed = Some(aggregator);
        }
        agreed
    }

    /// Runs each site's edges recorded themselves.
    fn recorded(&self) -> [u64; 2] {
        let mut per_site = [0; 2];
        for (s, site) in self.edges.iter().enumerate() {
            for m in site {
                per_site[s] += own_runs(m.node.as_ref().unwrap(), "probe", &m.id);
            }
        }
        per_site
    }

    /// Runs the cloud counts per site; zeros while it cannot answer.
    fn counted(&self) -> [u64; 2] {
        let out = run_on(
            self.cloud.node.as_ref().unwrap(),
            &["status", "--fleet", "--json"],
        );
        let mut per_site = [0; 2];
        let Ok(view) = serde_json::from_slice::<Value>(&out.stdout) else {
            return per_site;
        };
        for zone in view["zones"].as_array().into_iter().flatten() {
            if let Some(s) = SITES.iter().position(|z| zone["zone"] == *z) {
                per_site[s] += zone["workflows"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|w| w["workflow"] == "probe")
                    .map(|w| w["runs"].as_u64().unwrap())
                    .sum::<u64>();
            }
        }
        per_site
    }

    /// The nodes whose `rhizome sync` does not exit 0 now.
    fn out_of_sync(&self) -> Vec<NodeRef> {
        self.nodes()
            .filter(|(_, m)| {
                !run_on(m.node.as_ref().unwrap(), &["sync", "--timeout", "5s"])
                    .status
                    .success()
            })
            .map(|(n, _)| n)
            .collect()
    }
}

/// What one schedule did, for the soak's sums.
#[derive(Debug, Default)]
struct Outcome {
    recorded: u64,
    acknowledged: usize,
    refused: usize,
    lost: u64,
    duplicates: u64,
    healed_to_elected: Duration,
    healed_to_in_sync: Duration,
    healed_to_counted: Duration,
}

fn seeds() -> Vec<u64> {
    let spec = std::env::var("RHIZOME_CHAOS_SEEDS").unwrap_or_else(|_| "1,2,3".to_owned());
    let mut seeds = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => seeds.extend(a.parse::<u64>().unwrap()..=b.parse::<u64>().unwrap()),
            None => seeds.push(part.parse().unwrap()),
        }
    }
    seeds
}

#[test]
fn seeded_chaos_schedules_lose_nothing_and_converge() {
    if Lab::new().is_none() || !Lab::has_nft() {
        return;
    }
    for seed in seeds() {
        let plan = schedule(seed);
        eprintln!("chaos seed {seed}:\n{}", describe(&plan));
        let replay = format!(
            "replay: RHIZOME_CHAOS_SEEDS={seed} cargo nextest run -p rhizome-e2e -E \
             'binary(netns_chaos)' --no-capture"
        );
        let outcome = std::panic::catch_unwind(|| run_schedule(seed, &plan));
        match outcome {
            Ok(o) => {
                let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
                for p in &plan {
                    *kinds.entry(p.fault.kind()).or_default() += 1;
                }
                let kinds: Vec<String> = kinds.iter().map(|(k, n)| format!("{k}={n}")).collect();
                eprintln!(
                    "chaos-result seed={seed} faults={} {} recorded={} acknowledged={} \
                     refused={} lost={} duplicates={} elected_ms={} in_sync_ms={} counted_ms={}",
                    plan.len(),
                    kinds.join(" "),
                    o.recorded,
                    o.acknowledged,
                    o.refused,
                    o.lost,
                    o.duplicates,
                    o.healed_to_elected.as_millis(),
                    o.healed_to_in_sync.as_millis(),
                    o.healed_to_counted.as_millis(),
                );
            }
            Err(panic) => {
                eprintln!(
                    "chaos seed {seed} FAILED; schedule:\n{}\n{replay}",
                    describe(&plan)
                );
                std::panic::resume_unwind(panic);
            }
        }
    }
}

/// Polls `check` until it holds or `within` has passed; whether it held.
fn settles(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if check() {
            return true;
        }
        if start.elapsed() > within {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn run_schedule(seed: u64, plan: &[Planned]) -> Outcome {
    let mut lab = Lab::new().unwrap();
    let net = lab.two_sites_and_a_cloud(EDGES_PER_SITE);
    let tmp = tempfile::tempdir().unwrap();
    let cloud_dir = tmp.path().join("cloud");
    init(&cloud_dir, "cloud", None);
    let mesh_ca = cloud_dir.join("mesh");
    let mut disks = Vec::new();
    let mut edges = Vec::new();
    for (s, site) in net.sites.iter().enumerate() {
        let mut members = Vec::new();
        for (i, (host, cable)) in site.hosts.iter().zip(&site.cables).enumerate() {
            let name = NodeRef::Edge(s, i).to_string();
            let disk = tmp.path().join(format!("{name}-disk"));
            disks.push(Tmpfs::mount(&disk, EDGE_DISK).expect("root mounts a tmpfs"));
            let dir = disk.join("node");
            init_in(
                &dir,
                &name,
                Some(&mesh_ca),
                &["--tag", "sensor", "--zone", SITES[s]],
            );
            members.push(Member {
                host: host.clone(),
                cable: cable.clone(),
                dir,
                id: String::new(),
                node: None,
                filler: None,
            });
        }
        edges.push(members);
    }
    let cloud = Member {
        host: net.cloud.clone(),
        cable: net.cloud_cable.clone(),
        dir: cloud_dir,
        id: String::new(),
        node: None,
        filler: None,
    };
    let mut mesh = Mesh {
        cloud,
        edges,
        _disks: disks,
        net,
        lab,
    };
    let logs: Vec<PathBuf> = mesh.nodes().map(|(_, m)| m.dir.clone()).collect();
    let _logs = LogsOnPanic(logs.clone());

    let all: Vec<NodeRef> = mesh.nodes().map(|(n, _)| n).collect();
    for &node in &all {
        mesh.start(node);
        let m = mesh.member(node);
        m.id = status(m.node.as_ref().unwrap())["node_id"]
            .as_str()
            .unwrap()
            .to_owned();
    }
    apply_on(mesh.cloud.node.as_ref().unwrap(), &probe("{every: 1s}"));
    wait_until(
        "every edge runs the workflow",
        Duration::from_secs(30),
        || {
            mesh.edges
                .iter()
                .flatten()
                .all(|m| own_runs(m.node.as_ref().unwrap(), "probe", &m.id) > 0)
        },
    );

    // The schedule, as a timeline of fault starts and ends; between them, runs asked for.
    let mut timeline: Vec<(Duration, bool, Fault)> = plan
        .iter()
        .flat_map(|p| [(p.at, true, p.fault), (p.at + p.lasts, false, p.fault)])
        .collect();
    // At equal times an end goes first, so a fault that ends and begins again is applied
    // twice in order.
    timeline.sort_by_key(|(at, begins, fault)| (*at, *begins, *fault));
    // The runs asked for are drawn from the seed too, but what they meet depends on timing.
    let mut asks = StdRng::seed_from_u64(seed ^ 0x5eed);
    let mut acknowledged: Vec<(NodeRef, String)> = Vec::new();
    let mut refused = 0;
    let began = Instant::now();
    for (at, begins, fault) in timeline {
        while began.elapsed() < at {
            let node = NodeRef::Edge(asks.gen_range(0..2), asks.gen_range(0..EDGES_PER_SITE));
            if let Some(running) = mesh.member(node).node.as_ref() {
                let out = run_on(running, &["run", "probe", "--json"]);
                if out.status.success() {
                    let record: Value = serde_json::from_slice(&out.stdout).unwrap();
                    acknowledged.push((node, record["run_id"].as_str().unwrap().to_owned()));
                } else {
                    refused += 1;
                }
            }
            std::thread::sleep(Duration::from_millis(700).min(at.saturating_sub(began.elapsed())));
        }
        if begins {
            mesh.begin(fault);
        } else {
            mesh.end(fault);
        }
    }
    let healed = Instant::now();

    // Healed: the workflow stops, and everything must settle.
    apply_on(mesh.cloud.node.as_ref().unwrap(), &probe("manual"));
    let mut outcome = Outcome {
        acknowledged: acknowledged.len(),
        refused,
        ..Outcome::default()
    };
    wait_until("one aggregator per site under the cloud", SETTLE, || {
        (0..2).all(|s| mesh.agreed_aggregator(s).is_some())
    });
    outcome.healed_to_elected = healed.elapsed();
    let mut behind = Vec::new();
    let in_sync = settles(SETTLE, || {
        behind = mesh.out_of_sync();
        behind.is_empty()
    });
    assert!(
        in_sync,
        "`rhizome sync` still fails on {behind:?} {SETTLE:?} after the heal"
    );
    outcome.healed_to_in_sync = healed.elapsed();
    let mut seen = ([0; 2], [0; 2]);
    let counted = settles(SETTLE, || {
        seen = (mesh.recorded(), mesh.counted());
        seen.0 == seen.1
    });
    let (recorded, at_cloud) = seen;
    outcome.recorded = recorded.iter().sum();
    for s in 0..2 {
        outcome.lost += recorded[s].saturating_sub(at_cloud[s]);
        outcome.duplicates += at_cloud[s].saturating_sub(recorded[s]);
    }
    assert!(
        counted,
        "runs recorded per site {recorded:?}, counted at the cloud {at_cloud:?}"
    );
    outcome.healed_to_counted = healed.elapsed();

    let mut stored: BTreeMap<NodeRef, Vec<String>> = BTreeMap::new();
    for (node, run_id) in &acknowledged {
        let ids = stored.entry(*node).or_insert_with(|| {
            let m = mesh.member(*node);
            let results = ok(run_on(
                m.node.as_ref().unwrap(),
                &[
                    "results",
                    "--workflow",
                    "probe",
                    "--node",
                    &m.id.clone(),
                    "--json",
                ],
            ));
            results
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|r| r["run_id"].as_str().map(str::to_owned))
                .collect()
        });
        let found = ids.iter().filter(|id| *id == run_id).count();
        assert_eq!(
            found, 1,
            "acknowledged run {run_id} of {node} is stored {found} times"
        );
    }
    for dir in &logs {
        let log = std::fs::read_to_string(log_file(dir)).unwrap_or_default();
        assert!(!log.contains("panicked"), "{} panicked", dir.display());
    }
    outcome
}
