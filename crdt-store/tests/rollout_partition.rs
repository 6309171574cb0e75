//! A rollout across a partition: the workflow's document and the registry are forked into two
//! sides; on each side some nodes report (their own registry entries) and a control node may
//! pause, resume or abort (controls in the workflow's document), all through the typed API on
//! real Automerge documents. After the sides merge, both compute the same decision; every
//! control either side wrote is kept, so an abort on either side is an abort after the heal. An
//! abort by the failure threshold is a function of the merged facts (a failed report is final,
//! so failures only add up; healthy nodes of the other side count too).

use std::collections::{BTreeMap, BTreeSet};

use automerge::AutoCommit;
use crdt_store::docs::rollout::{
    Action, AlertGate, Control, Decision, Gate, NodeState, Plan, Report, RolloutControls, Stage,
    Status, decide,
};
use crdt_store::{DocName, MeshRegistry, NodeEntry, TypedDoc};
use proptest::prelude::*;

fn plan() -> Plan {
    Plan {
        id: "probe@2".into(),
        version: 2,
        baseline: 1,
        stages: vec![Stage::Nodes(1), Stage::Percent(50), Stage::Percent(100)],
        gate: Gate {
            min_runs: 2,
            min_success_pct: 90,
            soak_ms: 100,
            alerts: AlertGate::Off,
        },
        abort_failure_pct: 50,
        max_concurrent: 0,
    }
}

const NODES: usize = 6;

fn node(i: usize) -> String {
    format!("node-{i}")
}

/// One side's writes: reports by some nodes, and controls by the control node.
#[derive(Debug, Clone)]
struct Side {
    reports: Vec<(usize, bool, u32)>,
    controls: Vec<(u8, usize)>,
}

fn arb_side() -> impl Strategy<Value = Side> {
    (
        proptest::collection::vec((0..NODES, any::<bool>(), 0u32..5), 0..6),
        proptest::collection::vec((0u8..3, 0usize..3), 0..3),
    )
        .prop_map(|(reports, controls)| Side { reports, controls })
}

fn report(healthy: bool, runs: u32) -> String {
    serde_json::to_string(&Report {
        rollout: plan().id,
        version: 2,
        state: if healthy {
            NodeState::Active
        } else {
            NodeState::Failed
        },
        runs,
        failures: if healthy { 0 } else { runs },
        since_ms: 1,
        at_ms: 1_000,
        reason: None,
        alerts: 0,
    })
    .unwrap()
}

/// Applies a side's writes to its copies of the two documents, each write reading what the
/// side holds then (a resume lists the controls its author has seen).
fn write_side(
    side: &Side,
    tag: &str,
    parity: usize,
    registry: &mut AutoCommit,
    workflow: &mut AutoCommit,
) {
    // Each node is on one side of the partition and writes only its own entry.
    for (n, healthy, runs) in side.reports.iter().filter(|(n, _, _)| n % 2 == parity) {
        let mut r = MeshRegistry::read_from(registry).unwrap();
        let entry = r.nodes.entry(node(*n)).or_insert_with(NodeEntry::default);
        entry
            .rollouts
            .insert("probe".into(), report(*healthy, *runs));
        r.write_to(registry).unwrap();
    }
    for (i, (action, stage)) in side.controls.iter().enumerate() {
        let mut c = RolloutControls::read_from(workflow).unwrap();
        let seen: Vec<String> = c.controls.keys().cloned().collect();
        let id = format!("{tag}-{i}");
        let control = Control {
            id: id.clone(),
            action: [Action::Pause, Action::Resume, Action::Abort][usize::from(*action)],
            stage: *stage,
            seen,
            by: "cloud".into(),
            at_ms: i as i64,
        };
        c.controls
            .insert(id, serde_json::to_string(&control).unwrap());
        c.write_to(workflow).unwrap();
    }
}

/// The decision a side holding these documents makes (controls taken as verified: signatures
/// are the node's concern, tested there).
fn decision(registry: &AutoCommit, workflow: &AutoCommit) -> (Decision, Vec<Control>) {
    let r = MeshRegistry::read_from(registry).unwrap();
    let c = RolloutControls::read_from(workflow).unwrap();
    let targets: BTreeSet<String> = (0..NODES).map(node).collect();
    let reports: BTreeMap<String, Report> = r
        .nodes
        .iter()
        .filter_map(|(n, e)| {
            Some((
                n.clone(),
                serde_json::from_str(e.rollouts.get("probe")?).ok()?,
            ))
        })
        .collect();
    let controls: Vec<Control> = c
        .controls
        .values()
        .map(|t| serde_json::from_str(t).unwrap())
        .collect();
    (decide(&plan(), &controls, &targets, &reports), controls)
}

fn genesis<T: TypedDoc>(name: &str) -> AutoCommit {
    crdt_store::docs::genesis_doc::<T>(&name.parse::<DocName>().unwrap()).unwrap()
}

proptest! {
    #[test]
    fn both_sides_decide_alike_after_the_heal(a in arb_side(), b in arb_side()) {
        let mut registry_a = genesis::<MeshRegistry>("mesh");
        let mut workflow_a = genesis::<RolloutControls>("workflow/probe");
        let mut registry_b = registry_a.fork().with_actor("side-b".as_bytes().into());
        let mut workflow_b = workflow_a.fork().with_actor("side-b".as_bytes().into());
        registry_a.set_actor("side-a".as_bytes().into());
        workflow_a.set_actor("side-a".as_bytes().into());
        write_side(&a, "a", 0, &mut registry_a, &mut workflow_a);
        write_side(&b, "b", 1, &mut registry_b, &mut workflow_b);
        registry_a.merge(&mut registry_b.clone()).unwrap();
        registry_b.merge(&mut registry_a.clone()).unwrap();
        workflow_a.merge(&mut workflow_b.clone()).unwrap();
        workflow_b.merge(&mut workflow_a.clone()).unwrap();
        let (after_a, controls) = decision(&registry_a, &workflow_a);
        let (after_b, _) = decision(&registry_b, &workflow_b);
        prop_assert_eq!(&after_a, &after_b);
        // Every control either side wrote is held after the heal.
        let written = a.controls.len() + b.controls.len();
        prop_assert_eq!(controls.len(), written);
        if controls.iter().any(|c| c.action == Action::Abort) {
            let aborted = matches!(after_a.status, Status::Aborted { .. });
            prop_assert!(aborted);
        }
    }
}
