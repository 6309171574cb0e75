//! Scenarios: the topology, workload and fault schedule of one simulation, read from TOML.
//!
//! Durations are written as text (`"500ms"`, `"30s"`, `"5m"`, `"2h"`, `"7d"`). A scenario names
//! the node count it is meant for; `--nodes` overrides it, and every fault that picks nodes
//! picks them by fraction or count from whatever is alive at the time, so the same file scales.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

/// Scenarios shipped with the simulator, by name (`--scenario NAME`).
pub const BUNDLED: &[(&str, &str)] = &[
    (
        "partition-heal",
        include_str!("../scenarios/partition-heal.toml"),
    ),
    (
        "flapping-links",
        include_str!("../scenarios/flapping-links.toml"),
    ),
    ("churn", include_str!("../scenarios/churn.toml")),
    (
        "aggregator-crash",
        include_str!("../scenarios/aggregator-crash.toml"),
    ),
    ("swizzle", include_str!("../scenarios/swizzle.toml")),
    ("site-split", include_str!("../scenarios/site-split.toml")),
    ("disk-faults", include_str!("../scenarios/disk-faults.toml")),
    (
        "long-offline",
        include_str!("../scenarios/long-offline.toml"),
    ),
    ("fleet-1000", include_str!("../scenarios/fleet-1000.toml")),
    (
        "hierarchy-500",
        include_str!("../scenarios/hierarchy-500.toml"),
    ),
    (
        "rollout-partition",
        include_str!("../scenarios/rollout-partition.toml"),
    ),
];

/// The scenarios the CI sweep runs over many seeds, at small node counts.
pub const STANDARD: &[&str] = &[
    "partition-heal",
    "flapping-links",
    "churn",
    "swizzle",
    "aggregator-crash",
    "site-split",
    "disk-faults",
    "rollout-partition",
];

/// Why a scenario could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// Neither a bundled scenario nor a readable file.
    #[error("no scenario named {name:?} (bundled: {bundled}) and no such file: {reason}")]
    NotFound {
        /// What was asked for.
        name: String,
        /// The bundled names.
        bundled: String,
        /// Why the file could not be read.
        reason: String,
    },
    /// The TOML does not parse or has fields of the wrong shape.
    #[error("scenario {source_name}: {reason}")]
    Parse {
        /// The file or bundled name.
        source_name: String,
        /// The parser's message (it names line and column).
        reason: String,
    },
    /// The scenario parses but asks for something impossible.
    #[error("scenario {source_name}: {reason}")]
    Invalid {
        /// The file or bundled name.
        source_name: String,
        /// What is wrong, naming the field.
        reason: String,
    },
}

/// A duration written as text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Dur(pub Duration);

impl Dur {
    /// Parses `"250ms"`, `"30s"`, `"5m"`, `"2h"`, `"7d"` (a number and a unit).
    pub fn parse(text: &str) -> Result<Dur, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("{text:?} has no unit (ms, s, m, h or d)"))?;
        let (number, unit) = text.split_at(split);
        let value: f64 = number
            .parse()
            .map_err(|_| format!("{text:?} does not start with a number"))?;
        let millis = match unit.trim() {
            "ms" => 1.0,
            "s" => 1_000.0,
            "m" | "min" => 60_000.0,
            "h" => 3_600_000.0,
            "d" => 86_400_000.0,
            other => return Err(format!("{text:?} has an unknown unit {other:?}")),
        };
        Ok(Dur(Duration::from_micros((value * millis * 1000.0) as u64)))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", crate::report::human(self.0))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Dur::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// One simulation's description.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name, used in reports and replay commands.
    pub name: String,
    /// What the scenario exercises.
    #[serde(default)]
    pub description: String,
    /// Edge nodes (the cloud peer, if any, comes on top).
    pub nodes: usize,
    /// Simulated time in total.
    pub duration: Dur,
    /// The quiet tail: no faults start and no writes happen in the last `settle` of the run;
    /// every node must have converged by the end (the liveness bound).
    pub settle: Dur,
    /// Seeds the CI sweep runs for this scenario (besides a range of generated ones).
    #[serde(default)]
    pub seeds: Vec<u64>,
    /// The network model.
    #[serde(default)]
    pub network: NetworkSpec,
    /// LAN segments (mDNS reaches only within one). Default: one segment `lan`.
    #[serde(default)]
    pub segments: Vec<SegmentSpec>,
    /// A cloud peer that gateway nodes dial by address.
    #[serde(default)]
    pub cloud: Option<CloudSpec>,
    /// Who writes what, how often.
    #[serde(default)]
    pub workload: WorkloadSpec,
    /// Store settings (results windows, retention).
    #[serde(default)]
    pub store: StoreSpec,
    /// Which node aggregates each zone's results.
    #[serde(default)]
    pub aggregation: Aggregation,
    /// The fault schedule.
    #[serde(default)]
    pub faults: Vec<FaultSpec>,
}

/// Latency, bandwidth and loss.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkSpec {
    /// One-way latency between two nodes of one segment: each pair gets a base latency drawn
    /// between these bounds.
    pub lan_latency: [Dur; 2],
    /// One-way latency between segments and to the cloud.
    pub wan_latency: [Dur; 2],
    /// Extra delay per frame, drawn between zero and this (frames of one connection still
    /// arrive in order).
    pub jitter: Dur,
    /// Each node's outgoing bandwidth in megabits per second (serialisation delay).
    pub bandwidth_mbit: f64,
    /// Probability that a frame is lost once and retransmitted (it arrives late, never not).
    pub loss: f64,
}

impl Default for NetworkSpec {
    fn default() -> Self {
        NetworkSpec {
            lan_latency: [
                Dur(Duration::from_micros(300)),
                Dur(Duration::from_millis(3)),
            ],
            wan_latency: [
                Dur(Duration::from_millis(20)),
                Dur(Duration::from_millis(80)),
            ],
            jitter: Dur(Duration::from_millis(1)),
            bandwidth_mbit: 100.0,
            loss: 0.0,
        }
    }
}

/// A LAN segment.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentSpec {
    /// The segment's name.
    pub name: String,
    /// The zone of its nodes (default: the segment's name).
    #[serde(default)]
    pub zone: Option<String>,
    /// Several zones sharing this LAN (the lines of one site, `site-a/line-1`, ...): nodes are
    /// dealt to them in turn. Excludes `zone`.
    #[serde(default)]
    pub zones: Vec<String>,
    /// Share of the nodes placed here, relative to the other segments' weights.
    #[serde(default = "one")]
    pub weight: f64,
}

fn one() -> f64 {
    1.0
}

/// The cloud peer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudSpec {
    /// Nodes of each segment that dial the cloud by address (`--peer`); 0 means all.
    #[serde(default)]
    pub gateways_per_segment: usize,
}

/// The writes the simulated fleet makes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkloadSpec {
    /// Mean interval between workflow edits, mesh-wide (each by a random live node).
    pub workflow_edit_every: Option<Dur>,
    /// How many distinct workflows edits pick from.
    pub workflows: usize,
    /// Mean interval between result appends, per node.
    pub result_every: Option<Dur>,
    /// Mean interval between each node's rewrite of its own registry entry.
    pub registry_every: Option<Dur>,
    /// One staged rollout of a workflow, decided by every node from its own store.
    pub rollout: Option<RolloutSpec>,
}

impl Default for WorkloadSpec {
    fn default() -> Self {
        WorkloadSpec {
            workflow_edit_every: None,
            workflows: 3,
            result_every: None,
            registry_every: None,
            rollout: None,
        }
    }
}

/// A staged rollout (`[workload.rollout]`): at `start` one node writes a new version of a
/// workflow with a plan (one canary, then half, then all, each gated by runs and soak time);
/// from then on every node decides the rollout from the plan, controls and reports its own
/// store holds, and reports what it runs in its own registry entry, as a node's scheduler does.
/// Some nodes' runs of the new version fail, and random nodes pause, resume or abort it now
/// and then: the decision must come out the same on every node once the facts have spread.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RolloutSpec {
    /// When the plan is written (the nodes are up by then).
    pub start: Dur,
    /// Mean interval between each node's decision and report.
    pub report_every: Dur,
    /// Mean interval between pauses, resumes and aborts, mesh-wide, each by a random live
    /// node (absent: none).
    pub control_every: Option<Dur>,
    /// Share of the nodes whose runs of the new version fail, percent (which ones depends on
    /// the seed).
    pub failing_percent: u8,
}

impl Default for RolloutSpec {
    fn default() -> Self {
        RolloutSpec {
            start: Dur(Duration::from_secs(2)),
            report_every: Dur(Duration::from_secs(2)),
            control_every: None,
            failing_percent: 0,
        }
    }
}

/// Store settings of every node.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSpec {
    /// Length of a results window in minutes.
    pub window_minutes: u32,
    /// Windows that ended longer ago than this are retired.
    pub retention: Option<Dur>,
    /// How often each node enforces retention.
    pub retention_every: Dur,
    /// How long one batch of store work takes (the store thread's turn-around).
    pub store_delay: Dur,
}

impl Default for StoreSpec {
    fn default() -> Self {
        StoreSpec {
            window_minutes: 60,
            retention: None,
            retention_every: Dur(Duration::from_secs(600)),
            store_delay: Dur(Duration::from_millis(2)),
        }
    }
}

/// How zone aggregators are chosen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Aggregation {
    /// Results stay with their owner (no share policy).
    #[default]
    None,
    /// The first node of each zone aggregates it, fixed for the whole run, and every node is
    /// told so through the share policy.
    Static,
    /// Each zone elects its aggregator (`mesh::proto::election`), and each node routes results
    /// by its own election's view and the registry's zones.
    Election,
}

/// The kinds of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// Live nodes split into `groups` random groups (or by segment) with no traffic between.
    Partition,
    /// Traffic from a random `fraction` of nodes to the rest is cut; the reverse still flows.
    OneWay,
    /// `count` random nodes lose every link.
    Isolate,
    /// The links of a random `fraction` of nodes stop one node every `step`, stay down, then
    /// come back one by one in random order.
    Swizzle,
    /// Random single links go down and up again, every `step`, for the fault's duration.
    Flap,
    /// `count` random nodes crash (no goodbye) and restart after `for` (or never).
    Crash,
    /// `count` random nodes stop gracefully (goodbyes) for good.
    Leave,
    /// `count` random nodes' disks fail under their stores for `for` (`error`: full, failing
    /// or tearing writes), from a random one of their next few writes on; their stores must
    /// refuse what they cannot store, reopen themselves once the disk is back, and lose
    /// nothing they acknowledged.
    Storage,
    /// `count` new nodes join a random segment.
    Join,
}

/// What a failing disk answers (fault kind `storage`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StorageError {
    /// ENOSPC: the filesystem is full.
    #[default]
    NoSpace,
    /// EIO: the device fails.
    Io,
    /// A write stores only its first half, then ENOSPC.
    ShortWrite,
}

/// How a partition groups nodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GroupBy {
    /// Random groups.
    #[default]
    Random,
    /// One group per segment (the cloud alone).
    Segment,
    /// The members of one random segment split into `groups` random groups, while every other
    /// node (the cloud, the other segments) still reaches all of them: a site's switch split
    /// in two, both halves keeping the uplink. Each half elects its own aggregator of the zone.
    WithinSegment,
}

/// One fault of the schedule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    /// What happens.
    pub kind: FaultKind,
    /// When it starts.
    pub at: Dur,
    /// How long it lasts (a crash: until the restart; absent: for good).
    #[serde(rename = "for")]
    pub lasts: Option<Dur>,
    /// Repeat the fault this often until the quiet tail.
    #[serde(default)]
    pub every: Option<Dur>,
    /// Partition: how many groups.
    #[serde(default)]
    pub groups: Option<usize>,
    /// Partition: how nodes are grouped.
    #[serde(default)]
    pub by: GroupBy,
    /// Isolate, crash, leave, join, storage: how many nodes.
    #[serde(default)]
    pub count: Option<usize>,
    /// One-way, swizzle: which share of the live nodes.
    #[serde(default)]
    pub fraction: Option<f64>,
    /// Swizzle, flap: the pace.
    #[serde(default)]
    pub step: Option<Dur>,
    /// Crash: the node's store is lost too (a replacement node with a new identity and an
    /// empty store comes back at the same address).
    #[serde(default)]
    pub lose_store: bool,
    /// Crash, isolate, storage: pick aggregators (when there are any) rather than random
    /// nodes.
    #[serde(default)]
    pub aggregators: bool,
    /// Storage: what the disk answers.
    #[serde(default)]
    pub error: StorageError,
}

impl Scenario {
    /// Loads a bundled scenario by name, or a TOML file by path.
    pub fn load(name_or_path: &str) -> Result<Scenario, ScenarioError> {
        if let Some((name, text)) = BUNDLED.iter().find(|(n, _)| *n == name_or_path) {
            return Scenario::parse(text, name);
        }
        let text = std::fs::read_to_string(name_or_path);
        // `scenarios/partition-heal.toml` names the bundled copy when no such file is here.
        if text.is_err()
            && let Some(stem) = std::path::Path::new(name_or_path)
                .file_stem()
                .and_then(|s| s.to_str())
            && let Some((name, text)) = BUNDLED.iter().find(|(n, _)| *n == stem)
        {
            return Scenario::parse(text, name);
        }
        let text = text.map_err(|e| ScenarioError::NotFound {
            name: name_or_path.to_owned(),
            bundled: BUNDLED
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", "),
            reason: e.to_string(),
        })?;
        Scenario::parse(&text, name_or_path)
    }

    /// Parses and checks a scenario; `source_name` names it in errors.
    pub fn parse(text: &str, source_name: &str) -> Result<Scenario, ScenarioError> {
        let scenario: Scenario = toml::from_str(text).map_err(|e| ScenarioError::Parse {
            source_name: source_name.to_owned(),
            reason: e.to_string(),
        })?;
        scenario
            .validate()
            .map_err(|reason| ScenarioError::Invalid {
                source_name: source_name.to_owned(),
                reason,
            })?;
        Ok(scenario)
    }

    /// The moment the quiet tail starts.
    pub fn quiet_from(&self) -> Duration {
        self.duration.0.saturating_sub(self.settle.0)
    }

    fn validate(&self) -> Result<(), String> {
        if self.nodes == 0 {
            return Err("`nodes` must be at least 1".into());
        }
        if self.settle.0 > self.duration.0 {
            return Err(format!(
                "`settle` ({}) is longer than `duration` ({})",
                self.settle, self.duration
            ));
        }
        if self.segments.len() > 1 && self.cloud.is_none() {
            return Err(
                "several `segments` need a `[cloud]`: mDNS does not cross segments, so they \
                 would never meet"
                    .into(),
            );
        }
        if self.aggregation == Aggregation::Election
            && self
                .cloud
                .as_ref()
                .is_some_and(|c| c.gateways_per_segment > 0)
        {
            return Err(
                "`cloud.gateways_per_segment` must be 0 (every node dials the cloud) with \
                 `aggregation = \"election\"`: any node of a zone may be elected, and an \
                 aggregator that cannot reach the cloud would claim the root zone for itself \
                 (the members of a zone must reach each other)"
                    .into(),
            );
        }
        for s in &self.segments {
            if s.weight <= 0.0 || !s.weight.is_finite() {
                return Err(format!("segment {:?}: `weight` must be positive", s.name));
            }
            if s.zone.is_some() && !s.zones.is_empty() {
                return Err(format!(
                    "segment {:?}: give either `zone` or `zones`, not both",
                    s.name
                ));
            }
            for zone in s.zone.iter().chain(&s.zones) {
                mesh::proto::election::check_zone(zone)
                    .map_err(|e| format!("segment {:?}: zone {zone:?}: {e}", s.name))?;
            }
        }
        let n = &self.network;
        if n.lan_latency[0] > n.lan_latency[1] || n.wan_latency[0] > n.wan_latency[1] {
            return Err("`network` latency bounds must be [low, high]".into());
        }
        if !(0.0..1.0).contains(&n.loss) {
            return Err("`network.loss` must be in [0, 1)".into());
        }
        if n.bandwidth_mbit <= 0.0 || !n.bandwidth_mbit.is_finite() {
            return Err("`network.bandwidth_mbit` must be positive".into());
        }
        if self.workload.workflows == 0 {
            return Err("`workload.workflows` must be at least 1".into());
        }
        if let Some(r) = &self.workload.rollout {
            if r.start.0 >= self.quiet_from() {
                return Err("`workload.rollout.start` is inside the quiet tail (`settle`)".into());
            }
            if r.report_every.0.is_zero() || r.control_every.is_some_and(|c| c.0.is_zero()) {
                return Err("`workload.rollout` intervals must be positive".into());
            }
            if r.failing_percent > 100 {
                return Err("`workload.rollout.failing_percent` must be at most 100".into());
            }
        }
        for (i, f) in self.faults.iter().enumerate() {
            let at = |what: &str| format!("fault {} ({:?} at {}): {what}", i + 1, f.kind, f.at);
            if f.at.0 >= self.quiet_from() {
                return Err(at("starts inside the quiet tail (`settle`)"));
            }
            if let Some(every) = f.every
                && every.0.is_zero()
            {
                return Err(at("`every` must be positive"));
            }
            let needs_end = !matches!(
                f.kind,
                FaultKind::Crash | FaultKind::Leave | FaultKind::Join
            );
            if needs_end && f.lasts.is_none() {
                return Err(at("needs `for`"));
            }
            if let Some(lasts) = f.lasts
                && f.at.0 + lasts.0 > self.quiet_from()
            {
                return Err(at("lasts into the quiet tail (`settle`)"));
            }
            match f.kind {
                FaultKind::Partition if f.groups.unwrap_or(2) < 2 => {
                    return Err(at("`groups` must be at least 2"));
                }
                FaultKind::OneWay | FaultKind::Swizzle
                    if !f.fraction.is_some_and(|x| x > 0.0 && x <= 1.0) =>
                {
                    return Err(at("needs `fraction` in (0, 1]"));
                }
                FaultKind::Swizzle | FaultKind::Flap if f.step.is_none_or(|s| s.0.is_zero()) => {
                    return Err(at("needs a positive `step`"));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_bad_ones_are_named() {
        assert_eq!(Dur::parse("250ms").unwrap().0, Duration::from_millis(250));
        assert_eq!(Dur::parse("1.5s").unwrap().0, Duration::from_millis(1500));
        assert_eq!(Dur::parse("7d").unwrap().0, Duration::from_secs(7 * 86_400));
        assert!(Dur::parse("30").unwrap_err().contains("no unit"));
        assert!(Dur::parse("3 weeks").unwrap_err().contains("unknown unit"));
    }

    #[test]
    fn every_bundled_scenario_parses() {
        for (name, text) in BUNDLED {
            Scenario::parse(text, name).unwrap();
        }
    }

    #[test]
    fn bad_scenarios_get_messages_naming_the_problem() {
        let err = Scenario::parse("name = 1", "x.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("x.toml"), "{err}");
        let base = "name = \"t\"\nnodes = 3\nduration = \"60s\"\nsettle = \"20s\"\n";
        let late = format!("{base}[[faults]]\nkind = \"partition\"\nat = \"50s\"\nfor = \"5s\"\n");
        let err = Scenario::parse(&late, "t").unwrap_err().to_string();
        assert!(err.contains("quiet tail"), "{err}");
        let typo = format!("{base}[[faults]]\nkind = \"partishun\"\nat = \"5s\"\n");
        let err = Scenario::parse(&typo, "t").unwrap_err().to_string();
        assert!(err.contains("partishun"), "{err}");
        assert_eq!(
            Scenario::load("scenarios/churn.toml").unwrap().name,
            "churn"
        );
        let err = Scenario::load("no-such-scenario").unwrap_err().to_string();
        assert!(err.contains("partition-heal"), "{err}");
        let both = format!("{base}[[segments]]\nname = \"s\"\nzone = \"a\"\nzones = [\"a/1\"]\n");
        let err = Scenario::parse(&both, "t").unwrap_err().to_string();
        assert!(err.contains("either `zone` or `zones`"), "{err}");
        let bad = format!("{base}[[segments]]\nname = \"s\"\nzones = [\"a//1\"]\n");
        let err = Scenario::parse(&bad, "t").unwrap_err().to_string();
        assert!(err.contains("a//1"), "{err}");
    }
}
