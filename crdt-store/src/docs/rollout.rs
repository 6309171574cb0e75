//! Staged rollouts, decided from replicated facts alone.
//!
//! A rollout moves the nodes a workflow targets from a baseline version to a new one in stages
//! (one canary, then 10 %, then all), each gated by the health its nodes report. It must keep
//! going when the cloud is away and agree with itself across a partition, so nothing here is
//! decided by one node and told to the others: the **plan** (signed by a control node), the
//! **controls** (pause, resume, abort: append-only events) and every node's **report** (in its
//! own registry entry) replicate to every node, and [`decide`] is a pure function of them. Two
//! nodes that hold the same facts decide the same thing, whatever the order the facts arrived
//! in, and a node cut off keeps what it runs until the facts reach it again.
//!
//! - **Who is in which stage**: the targeted nodes in the order of SHA-256(rollout id, node
//!   id): stable, unrelated to names, and different per rollout, so the same node is not the
//!   canary of every rollout. Stage `k` covers a prefix of that order (a count, or a percentage
//!   of the targets rounded up), never less than the stage before.
//! - **Gates**: a stage is passed when each of its nodes reports the new version active with at
//!   least `min_runs` runs, a success rate of at least `min_success_pct`, and `soak_ms` since it
//!   switched, all as of its own report (never a receiver's clock). A node that has not
//!   reported holds the stage: an offline node is waited for, not guessed about.
//! - **Concurrency**: within a stage, at most `max_concurrent` admitted nodes that have not yet
//!   passed the gate (0: no limit); the next ones in the order wait for a slot.
//! - **Abort**: an abort control, or failed nodes (reported `failed`, or below the success rate
//!   after `min_runs`) reaching `abort_failure_pct` of the nodes that took the new version or
//!   are admitted to it (at least one): then no node is admitted, every node runs the
//!   baseline, and those that took the new version report `rolled-back`. A node's `failed`
//!   report is final, so the abort stands once everyone went back.
//! - **Controls merge to the safer**: abort beats everything; a pause holds the rollout at the
//!   stage its author saw (the stage recorded in the event) unless a resume that *saw* that
//!   pause (lists it) lifts it. A pause and a resume made concurrently leave it paused.
//!
//! A completed rollout admits every target: the new version is simply the workflow's version.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// How large a stage is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// This many nodes (cumulative, like every stage).
    Nodes(u32),
    /// This percentage of the targeted nodes, rounded up (1 to 100).
    Percent(u8),
}

/// What a stage's nodes must show before the next stage starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gate {
    /// Runs of the new version each node must have finished.
    pub min_runs: u32,
    /// Share of those runs that succeeded, percent.
    pub min_success_pct: u8,
    /// How long each node must have run the new version, milliseconds.
    pub soak_ms: u64,
    /// Alerts of this severity or above that fired on a node after it switched fail it there.
    /// Left out of the encoding when off, so plans signed before it existed verify unchanged.
    #[serde(default, skip_serializing_if = "AlertGate::is_off")]
    pub alerts: AlertGate,
}

impl Default for Gate {
    fn default() -> Self {
        Gate {
            min_runs: 3,
            min_success_pct: 95,
            soak_ms: 60_000,
            alerts: AlertGate::Off,
        }
    }
}

/// Which alerts fail a node that took the new version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertGate {
    /// Alerts do not count.
    #[default]
    Off,
    /// Warnings and critical alerts.
    Warning,
    /// Critical alerts only.
    Critical,
}

impl AlertGate {
    pub fn is_off(&self) -> bool {
        *self == AlertGate::Off
    }

    /// Whether an alert of `severity` (`warning`, `critical`) counts.
    pub fn counts(&self, severity: &str) -> bool {
        match self {
            AlertGate::Off => false,
            AlertGate::Warning => matches!(severity, "warning" | "critical"),
            AlertGate::Critical => severity == "critical",
        }
    }
}

/// A rollout as a control node started it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Names the rollout (`<workflow>@<version>`); seeds the order of the nodes.
    pub id: String,
    /// The version rolled out.
    pub version: u64,
    /// The version nodes run until they are admitted, and after an abort.
    pub baseline: u64,
    /// Cumulative stage sizes, in order; the last covers what the rollout ends with.
    pub stages: Vec<Stage>,
    pub gate: Gate,
    /// Failed nodes, as a share of the nodes admitted so far, that abort the rollout.
    pub abort_failure_pct: u8,
    /// Admitted nodes of the current stage that have not passed the gate yet, at most (0: any).
    pub max_concurrent: u32,
}

/// An operator's decision about a running rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Pause,
    Resume,
    Abort,
}

/// One control, as stored: append-only, keyed by `id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Control {
    /// Unique (the author's node id and a time suffice).
    pub id: String,
    pub action: Action,
    /// The stage its author saw (what a pause holds the rollout at).
    pub stage: usize,
    /// Controls its author had seen: a resume lifts only the pauses it lists.
    pub seen: Vec<String>,
    pub by: String,
    pub at_ms: i64,
}

/// Where a node stands in a rollout, as it reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeState {
    /// Not admitted yet: runs the baseline.
    Pending,
    /// Admitted, fetching what the new version needs (still runs the baseline).
    Fetching,
    /// Runs the new version.
    Active,
    /// Runs the new version and passed the gate.
    Succeeded,
    /// The new version fails here (cannot start, or its runs fail).
    Failed,
    /// Took the new version and went back to the baseline after an abort.
    RolledBack,
}

/// A node's report of one rollout, written in its own registry entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub rollout: String,
    /// The version it runs.
    pub version: u64,
    pub state: NodeState,
    /// Runs of the new version finished, and how many failed.
    pub runs: u32,
    pub failures: u32,
    /// When it switched to the new version (0: it has not).
    pub since_ms: i64,
    /// When this report was written.
    pub at_ms: i64,
    /// Why it failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Alerts that count under the gate and fired here since it switched.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub alerts: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Where the rollout stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Status {
    /// Stage `stage` (0-based) is running.
    Running { stage: usize },
    /// Held at stage `stage` by a pause.
    Paused { stage: usize },
    /// Every stage passed.
    Completed,
    /// Stopped; every node runs the baseline.
    Aborted { reason: String },
}

/// What [`decide`] concludes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub status: Status,
    /// The nodes that run the new version now.
    pub admitted: BTreeSet<String>,
    /// Every target, in rollout order, with the stage it belongs to.
    pub order: Vec<(String, usize)>,
}

impl Decision {
    /// The version `node` runs.
    pub fn version_for(&self, plan: &Plan, node: &str) -> u64 {
        if self.admitted.contains(node) {
            plan.version
        } else {
            plan.baseline
        }
    }
}

/// The targets in rollout order.
pub fn order(plan: &Plan, targets: &BTreeSet<String>) -> Vec<String> {
    let mut keyed: Vec<([u8; 32], &String)> = targets
        .iter()
        .map(|node| {
            let mut hash = Sha256::new();
            hash.update(plan.id.as_bytes());
            hash.update([0]);
            hash.update(node.as_bytes());
            (hash.finalize().into(), node)
        })
        .collect();
    keyed.sort();
    keyed.into_iter().map(|(_, n)| n.clone()).collect()
}

/// Cumulative node counts of the stages for `n` targets: never decreasing, at most `n`.
pub fn stage_sizes(plan: &Plan, n: usize) -> Vec<usize> {
    let mut sizes = Vec::with_capacity(plan.stages.len());
    let mut last = 0;
    for stage in &plan.stages {
        let size = match *stage {
            Stage::Nodes(k) => k as usize,
            Stage::Percent(p) => (n * usize::from(p.min(100))).div_ceil(100),
        };
        last = size.min(n).max(last);
        sizes.push(last);
    }
    sizes
}

fn passed(plan: &Plan, report: Option<&Report>) -> bool {
    let Some(r) = report else {
        return false;
    };
    r.version == plan.version
        && matches!(r.state, NodeState::Active | NodeState::Succeeded)
        && r.runs >= plan.gate.min_runs
        && success_pct(r) >= u32::from(plan.gate.min_success_pct)
        && r.since_ms > 0
        && r.at_ms.saturating_sub(r.since_ms) >= plan.gate.soak_ms as i64
        && !alerted(plan, r)
}

/// Whether alerts the gate counts fired on the node since it switched.
fn alerted(plan: &Plan, r: &Report) -> bool {
    !plan.gate.alerts.is_off() && r.version == plan.version && r.alerts > 0
}

fn success_pct(r: &Report) -> u32 {
    if r.runs == 0 {
        return 100;
    }
    ((u64::from(r.runs - r.failures.min(r.runs)) * 100) / u64::from(r.runs)) as u32
}

/// Whether the node switched to the new version at some point (a node's `failed` report is
/// final, and one that rolled back says so: an abort stays an abort after everyone went back).
fn took(report: Option<&Report>) -> bool {
    report.is_some_and(|r| {
        r.since_ms > 0
            || matches!(
                r.state,
                NodeState::Active
                    | NodeState::Succeeded
                    | NodeState::Failed
                    | NodeState::RolledBack
            )
    })
}

fn failed(plan: &Plan, report: Option<&Report>) -> bool {
    let Some(r) = report else {
        return false;
    };
    r.state == NodeState::Failed
        || alerted(plan, r)
        || (r.version == plan.version
            && r.runs >= plan.gate.min_runs.max(1)
            && success_pct(r) < u32::from(plan.gate.min_success_pct))
}

/// Whether a node's `next` report tells the fleet something its `previous` one did not: a new
/// state, version or failure count, runs short of the gate's, or the soak time reached. Runs
/// counted beyond what the gate needs are not news: the registry replicates to every node.
pub fn news(plan: &Plan, previous: Option<&Report>, next: &Report) -> bool {
    let Some(previous) = previous else {
        return true;
    };
    let soaked = |r: &Report| r.since_ms > 0 && r.at_ms - r.since_ms >= plan.gate.soak_ms as i64;
    previous.state != next.state
        || previous.version != next.version
        || previous.since_ms != next.since_ms
        || previous.failures != next.failures
        || previous.alerts != next.alerts
        || previous.runs.min(plan.gate.min_runs) != next.runs.min(plan.gate.min_runs)
        || soaked(previous) != soaked(next)
}

/// The rollout's state and who runs the new version, from the plan, the controls, the targets
/// (from the registry) and the nodes' reports of this rollout.
pub fn decide(
    plan: &Plan,
    controls: &[Control],
    targets: &BTreeSet<String>,
    reports: &BTreeMap<String, Report>,
) -> Decision {
    let order = order(plan, targets);
    let sizes = stage_sizes(plan, order.len());
    let stage_of = |i: usize| sizes.iter().position(|&s| i < s).unwrap_or(sizes.len());
    let order_out: Vec<(String, usize)> = order
        .iter()
        .enumerate()
        .map(|(i, n)| (n.clone(), stage_of(i)))
        .collect();
    let aborted = |reason: String| Decision {
        status: Status::Aborted { reason },
        admitted: BTreeSet::new(),
        order: order_out.clone(),
    };
    if let Some(abort) = controls
        .iter()
        .filter(|c| c.action == Action::Abort)
        .min_by(|a, b| a.id.cmp(&b.id))
    {
        return aborted(format!("aborted by {}", abort.by));
    }
    let report = |node: &str| reports.get(node).filter(|r| r.rollout == plan.id);
    // The furthest stage the facts allow, before pauses and concurrency.
    let last = sizes.len().saturating_sub(1);
    let mut stage = 0;
    while stage < last
        && order[..sizes[stage]]
            .iter()
            .all(|n| passed(plan, report(n)))
    {
        stage += 1;
    }
    // Pauses not lifted by a resume that saw them hold the rollout where their authors saw it.
    let lifted: BTreeSet<&str> = controls
        .iter()
        .filter(|c| c.action == Action::Resume)
        .flat_map(|c| c.seen.iter().map(String::as_str))
        .collect();
    let held = controls
        .iter()
        .filter(|c| c.action == Action::Pause && !lifted.contains(c.id.as_str()))
        .map(|c| c.stage)
        .min();
    let status_stage = held.map_or(stage, |h| stage.min(h));
    let mut admitted = BTreeSet::new();
    let mut unproven = 0u32;
    let within = sizes.get(status_stage).copied().unwrap_or(0);
    for node in &order[..within] {
        let proven = passed(plan, report(node));
        if !proven && plan.max_concurrent > 0 && unproven >= plan.max_concurrent {
            // A node that already runs the new version keeps it; new ones wait for a slot.
            if report(node).is_some_and(|r| r.version == plan.version) {
                admitted.insert(node.clone());
            }
            continue;
        }
        if !proven {
            unproven += 1;
        }
        admitted.insert(node.clone());
    }
    // Failures among the nodes that took (or were given) the new version.
    let took: Vec<&String> = order
        .iter()
        .filter(|n| admitted.contains(*n) || took(report(n)))
        .collect();
    let failures = took.iter().filter(|n| failed(plan, report(n))).count();
    if failures > 0
        && failures * 100 >= took.len().max(1) * usize::from(plan.abort_failure_pct.max(1))
    {
        let first = took
            .iter()
            .find(|n| failed(plan, report(n)))
            .map(|n| n.as_str())
            .unwrap_or_default();
        return aborted(format!(
            "{failures} of {} nodes that took version {} failed (abort at {} %; first: {first})",
            took.len(),
            plan.version,
            plan.abort_failure_pct
        ));
    }
    let status = if held.is_some_and(|h| h < stage || (h == stage && stage < last)) {
        Status::Paused {
            stage: status_stage,
        }
    } else if stage == last
        && order[..sizes.get(last).copied().unwrap_or(0)]
            .iter()
            .all(|n| passed(plan, report(n)))
    {
        Status::Completed
    } else {
        Status::Running { stage }
    };
    Decision {
        status,
        admitted,
        order: order_out,
    }
}

/// Root keys of a workflow's document that hold its rollouts' controls: `rollout_control/<id>`,
/// one signed JSON text ([`SignedControl`]) each. Keys of their own (not entries of one map)
/// so that controls written concurrently on two nodes never shadow each other.
pub const CONTROL_KEY_PREFIX: &str = "rollout_control/";

/// A control as stored: who may decide is checked by every reader (a control node's
/// certificate and signature), like a version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedControl {
    /// The rollout (its [`Plan::id`]) the control is about.
    pub rollout: String,
    pub control: Control,
    /// The author's node certificate (PEM).
    pub author_cert: String,
    /// Hex ed25519 signature over [`SignedControl::signed_text`].
    pub signature: String,
}

impl SignedControl {
    /// What the author signs.
    pub fn signed_text(&self, mesh_id: &str, workflow: &str) -> String {
        format!(
            "rhizome rollout control v1\nmesh {mesh_id}\nworkflow {workflow}\nrollout {}\n{}",
            self.rollout,
            serde_json::to_string(&self.control).expect("a control encodes")
        )
    }
}

/// The rollout controls of one workflow's document, as stored text by id. Append-only: a write
/// adds the controls it lacks and never changes or removes one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RolloutControls {
    pub id: String,
    pub controls: BTreeMap<String, String>,
}

impl crate::docs::TypedDoc for RolloutControls {
    const KIND: crate::names::DocKind = crate::names::DocKind::Workflow;

    fn genesis(name: &crate::names::DocName) -> Self {
        RolloutControls {
            id: crate::docs::workflow_id_of(name),
            controls: BTreeMap::new(),
        }
    }

    fn read_from(doc: &automerge::AutoCommit) -> Result<Self, autosurgeon::HydrateError> {
        use automerge::{ROOT, ReadDoc, ScalarValue, Value};
        let text = |key: &str| match doc.get(ROOT, key) {
            Ok(Some((Value::Scalar(s), _))) => match s.as_ref() {
                ScalarValue::Str(t) => Some(t.to_string()),
                _ => None,
            },
            _ => None,
        };
        let mut controls = BTreeMap::new();
        for key in doc.keys(ROOT) {
            if let Some(id) = key.strip_prefix(CONTROL_KEY_PREFIX)
                && let Some(value) = text(&key)
            {
                controls.insert(id.to_owned(), value);
            }
        }
        Ok(RolloutControls {
            id: text("id").unwrap_or_default(),
            controls,
        })
    }

    fn write_to(&self, doc: &mut automerge::AutoCommit) -> Result<(), autosurgeon::ReconcileError> {
        use automerge::{ROOT, ReadDoc, transaction::Transactable};
        // A document's first write is the workflow's own genesis, byte for byte.
        if doc.get(ROOT, "id")?.is_none() {
            crate::docs::TypedDoc::write_to(&crate::WorkflowDoc::unapplied(&self.id), doc)?;
        }
        for (id, text) in &self.controls {
            let key = format!("{CONTROL_KEY_PREFIX}{id}");
            if doc.get(ROOT, key.as_str())?.is_none() {
                doc.put(ROOT, key, text.as_str())?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn plan() -> Plan {
        Plan {
            id: "detect@5".into(),
            version: 5,
            baseline: 4,
            stages: vec![Stage::Nodes(1), Stage::Percent(50), Stage::Percent(100)],
            gate: Gate {
                min_runs: 3,
                min_success_pct: 90,
                soak_ms: 1_000,
                alerts: AlertGate::Off,
            },
            abort_failure_pct: 50,
            max_concurrent: 0,
        }
    }

    fn nodes(n: usize) -> BTreeSet<String> {
        (0..n).map(|i| format!("node-{i:02}")).collect()
    }

    fn healthy(plan: &Plan, node: &str) -> (String, Report) {
        (
            node.to_owned(),
            Report {
                rollout: plan.id.clone(),
                version: plan.version,
                state: NodeState::Active,
                runs: 10,
                failures: 0,
                since_ms: 1_000,
                at_ms: 5_000,
                reason: None,
                alerts: 0,
            },
        )
    }

    fn failing(plan: &Plan, node: &str) -> (String, Report) {
        let (n, mut r) = healthy(plan, node);
        r.failures = 10;
        (n, r)
    }

    fn control(id: &str, action: Action, stage: usize, seen: &[&str]) -> Control {
        Control {
            id: id.into(),
            action,
            stage,
            seen: seen.iter().map(|s| (*s).to_owned()).collect(),
            by: "cloud".into(),
            at_ms: 0,
        }
    }

    #[test]
    fn the_controls_view_of_a_workflow_document_starts_from_its_genesis() {
        let name: crate::names::DocName = "workflow/detect".parse().unwrap();
        let mut controls = crate::docs::genesis_doc::<RolloutControls>(&name).unwrap();
        let mut workflow = crate::docs::genesis_doc::<crate::WorkflowDoc>(&name).unwrap();
        assert_eq!(
            controls.save(),
            workflow.save(),
            "one genesis, whichever view opens it"
        );
    }

    #[test]
    fn stages_advance_as_gates_pass() {
        let plan = plan();
        let targets = nodes(10);
        let order = order(&plan, &targets);
        let mut reports = BTreeMap::new();
        let d = decide(&plan, &[], &targets, &reports);
        assert_eq!(d.status, Status::Running { stage: 0 });
        assert_eq!(d.admitted, BTreeSet::from([order[0].clone()]));
        reports.extend([healthy(&plan, &order[0])]);
        let d = decide(&plan, &[], &targets, &reports);
        assert_eq!(d.status, Status::Running { stage: 1 });
        assert_eq!(d.admitted.len(), 5);
        reports.extend(order[..5].iter().map(|n| healthy(&plan, n)));
        let d = decide(&plan, &[], &targets, &reports);
        assert_eq!(d.status, Status::Running { stage: 2 });
        assert_eq!(d.admitted.len(), 10);
        reports.extend(order.iter().map(|n| healthy(&plan, n)));
        assert_eq!(
            decide(&plan, &[], &targets, &reports).status,
            Status::Completed
        );
    }

    #[test]
    fn an_alert_the_gate_counts_fails_the_node_and_one_it_does_not_is_ignored() {
        let mut plan = plan();
        plan.gate.alerts = AlertGate::Critical;
        let targets = nodes(10);
        let order = order(&plan, &targets);
        let (canary, mut report) = healthy(&plan, &order[0]);
        report.alerts = 1;
        let reports = BTreeMap::from([(canary.clone(), report.clone())]);
        let d = decide(&plan, &[], &targets, &reports);
        assert!(
            matches!(&d.status, Status::Aborted { reason } if reason.contains(&canary)),
            "{:?}",
            d.status
        );
        plan.gate.alerts = AlertGate::Off;
        let d = decide(&plan, &[], &targets, &reports);
        assert_eq!(d.status, Status::Running { stage: 1 });
        assert!(AlertGate::Warning.counts("critical") && !AlertGate::Critical.counts("warning"));
    }

    #[test]
    fn a_gate_without_alerts_encodes_as_before() {
        let gate = Gate::default();
        assert!(!serde_json::to_string(&gate).unwrap().contains("alerts"));
        let parsed: Gate =
            serde_json::from_str(r#"{"min_runs":1,"min_success_pct":90,"soak_ms":5}"#).unwrap();
        assert_eq!(parsed.alerts, AlertGate::Off);
    }

    #[test]
    fn a_failing_canary_aborts_and_nobody_runs_the_new_version() {
        let plan = plan();
        let targets = nodes(10);
        let order = order(&plan, &targets);
        let reports = BTreeMap::from([failing(&plan, &order[0])]);
        let d = decide(&plan, &[], &targets, &reports);
        assert!(matches!(d.status, Status::Aborted { .. }), "{:?}", d.status);
        assert!(d.admitted.is_empty());
        assert_eq!(d.version_for(&plan, &order[0]), 4);
    }

    #[test]
    fn an_abort_stands_once_everyone_went_back() {
        let plan = plan();
        let targets = nodes(10);
        let order = order(&plan, &targets);
        let (name, mut report) = failing(&plan, &order[0]);
        report.state = NodeState::Failed;
        report.version = plan.baseline;
        let d = decide(&plan, &[], &targets, &BTreeMap::from([(name, report)]));
        assert!(matches!(d.status, Status::Aborted { .. }), "{:?}", d.status);
    }

    #[test]
    fn an_unreported_node_holds_its_stage() {
        let plan = plan();
        let targets = nodes(4);
        let order = order(&plan, &targets);
        let reports = BTreeMap::from([healthy(&plan, &order[0])]);
        // Stage 1 is 2 of 4: node 1 has not reported, so stage 2 does not start.
        let d = decide(&plan, &[], &targets, &reports);
        assert_eq!(d.status, Status::Running { stage: 1 });
        assert_eq!(d.admitted.len(), 2);
    }

    #[test]
    fn concurrency_bounds_the_unproven_nodes_of_a_stage() {
        let mut plan = plan();
        plan.stages = vec![Stage::Percent(100)];
        plan.max_concurrent = 2;
        let targets = nodes(6);
        let order = order(&plan, &targets);
        let d = decide(&plan, &[], &targets, &BTreeMap::new());
        assert_eq!(d.admitted, order[..2].iter().cloned().collect());
        let reports = BTreeMap::from([healthy(&plan, &order[0])]);
        let d = decide(&plan, &[], &targets, &reports);
        assert_eq!(d.admitted, order[..3].iter().cloned().collect());
    }

    #[test]
    fn pause_holds_resume_lifts_only_what_it_saw_and_abort_wins() {
        let plan = plan();
        let targets = nodes(10);
        let order = order(&plan, &targets);
        let reports: BTreeMap<_, _> = order.iter().map(|n| healthy(&plan, n)).collect();
        let pause = control("p1", Action::Pause, 0, &[]);
        let d = decide(&plan, std::slice::from_ref(&pause), &targets, &reports);
        assert_eq!(d.status, Status::Paused { stage: 0 });
        assert_eq!(d.admitted.len(), 1);
        // A resume made without seeing the pause (concurrently) does not lift it.
        let blind = control("r0", Action::Resume, 0, &[]);
        let d = decide(&plan, &[pause.clone(), blind], &targets, &reports);
        assert_eq!(d.status, Status::Paused { stage: 0 });
        let resume = control("r1", Action::Resume, 0, &["p1"]);
        let d = decide(&plan, &[pause.clone(), resume.clone()], &targets, &reports);
        assert_eq!(d.status, Status::Completed);
        let abort = control("a1", Action::Abort, 1, &[]);
        let d = decide(&plan, &[pause, resume, abort], &targets, &reports);
        assert!(matches!(d.status, Status::Aborted { .. }));
        assert!(d.admitted.is_empty());
    }

    fn arb_report(plan: Plan) -> impl Strategy<Value = Report> {
        (
            any::<bool>(),
            0u32..8,
            0u32..8,
            0i64..3_000,
            prop_oneof![
                Just(NodeState::Active),
                Just(NodeState::Failed),
                Just(NodeState::Pending)
            ],
        )
            .prop_map(move |(new, runs, failures, soak, state)| Report {
                rollout: plan.id.clone(),
                version: if new { plan.version } else { plan.baseline },
                state,
                runs,
                failures: failures.min(runs),
                since_ms: 1,
                at_ms: 1 + soak,
                reason: None,
                alerts: 0,
            })
    }

    /// The generated reports given to the targets in order (as many as there are of both).
    fn reports_of(targets: &BTreeSet<String>, reports: Vec<Report>) -> BTreeMap<String, Report> {
        targets.iter().cloned().zip(reports).collect()
    }

    proptest! {
        /// Facts decide, not the order they arrived in: the same reports and controls, in any
        /// order, give the same decision; any abort among the controls aborts.
        #[test]
        fn decisions_depend_on_the_facts_only(
            n in 1usize..12,
            reports in proptest::collection::vec(arb_report(plan()), 0..12),
            actions in proptest::collection::vec((0u8..3, 0usize..3, any::<bool>()), 0..4),
            shuffle in any::<u64>(),
        ) {
            let plan = plan();
            let targets = nodes(n);
            let reports = reports_of(&targets, reports);
            let mut controls: Vec<Control> = actions
                .iter()
                .enumerate()
                .map(|(i, (a, stage, sees))| {
                    let action = [Action::Pause, Action::Resume, Action::Abort][usize::from(*a)];
                    let seen: Vec<&str> = if *sees { vec!["c0"] } else { vec![] };
                    control(&format!("c{i}"), action, *stage, &seen)
                })
                .collect();
            let first = decide(&plan, &controls, &targets, &reports);
            let k = (shuffle as usize) % controls.len().max(1);
            controls.rotate_left(k);
            controls.reverse();
            let second = decide(&plan, &controls, &targets, &reports);
            prop_assert_eq!(&first, &second);
            if controls.iter().any(|c| c.action == Action::Abort) {
                prop_assert!(first.admitted.is_empty());
            }
            // Admitted nodes are a prefix of the order, within the current stage.
            for node in &first.admitted {
                prop_assert!(targets.contains(node));
            }
        }

        /// Adding a pause never admits more nodes than without it: controls merge to the safer.
        #[test]
        fn a_pause_never_widens_a_rollout(
            n in 1usize..12,
            reports in proptest::collection::vec(arb_report(plan()), 0..12),
            stage in 0usize..3,
        ) {
            let plan = plan();
            let targets = nodes(n);
            let reports = reports_of(&targets, reports);
            let free = decide(&plan, &[], &targets, &reports);
            let paused = decide(&plan, &[control("p", Action::Pause, stage, &[])], &targets, &reports);
            let free_aborted = matches!(free.status, Status::Aborted { .. });
            prop_assert!(paused.admitted.is_subset(&free.admitted) || free_aborted);
        }
    }
}
