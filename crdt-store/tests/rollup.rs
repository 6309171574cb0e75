//! Rollups: an aggregator summarises the results documents of its zone's nodes per window,
//! and the fleet view adds the rollups of every zone up.

use std::collections::BTreeSet;

use crdt_store::{
    ChangeTime, DocName, RollupDoc, RunRecord, RunStatus, Store, StoreConfig, Window,
};

const HOUR: i64 = 3_600_000;
const BASE: i64 = 1_795_478_400_000;

fn store(node: &str) -> Store {
    let mut config = StoreConfig::new("rollup-test", node);
    config.change_time = ChangeTime::Zero;
    Store::open_in_memory(config).unwrap()
}

fn record(node: &str, n: i64, workflow: &str, status: RunStatus, took: i64) -> RunRecord {
    RunRecord {
        run_id: format!("{node}-{workflow}-{n}"),
        workflow: workflow.into(),
        workflow_version: 1,
        node: node.into(),
        started_ms: BASE + n * 60_000,
        finished_ms: BASE + n * 60_000 + took,
        status,
        output: format!("{{\"n\":{n}}}"),
        ..RunRecord::default()
    }
}

#[test]
fn an_aggregator_rolls_up_its_zone_per_window_and_workflow() {
    let mut agg = store("agg");
    let mut records = Vec::new();
    for n in 0..90 {
        // 90 minutes: two windows of one hour.
        let status = if n % 10 == 0 {
            RunStatus::Failed
        } else {
            RunStatus::Succeeded
        };
        records.push(record("agg", n, "scan", status, 100 + n));
        records.push(record("edge", n, "scan", RunStatus::Succeeded, 50));
        records.push(record("stranger", n, "scan", RunStatus::Succeeded, 50));
    }
    agg.append_results(&records).unwrap();
    agg.apply_pending(usize::MAX).unwrap();

    let members: BTreeSet<String> = ["agg", "edge"].iter().map(|s| s.to_string()).collect();
    let written = agg.roll_up("site/line", &members, None).unwrap();
    assert_eq!(written.len(), 2, "{written:?}");
    let first = DocName::rollup("site/line", Window::containing(BASE, 60)).unwrap();
    assert_eq!(first.to_string(), "rollup/site+line/2026-11-24T00:00Z+60m");
    let rollup: RollupDoc = agg.read(&first).unwrap();
    assert_eq!(rollup.zone, "site/line");
    let mine = &rollup.summaries["scan/agg"];
    assert_eq!(mine.runs, 60);
    assert_eq!(mine.failures, 6);
    assert_eq!(mine.max_ms, 159);
    assert_eq!(mine.last_finished_ms, BASE + 59 * 60_000 + 159);
    assert_eq!(mine.last_output, "{\"n\":59}");
    assert_eq!(rollup.summaries["scan/edge"].runs, 60);
    assert!(!rollup.summaries.contains_key("scan/stranger"));

    // Nothing new: nothing is rewritten.
    assert!(agg.roll_up("site/line", &members, None).unwrap().is_empty());
    // Only the windows asked for are redone.
    let later: BTreeSet<Window> = [Window::containing(BASE + HOUR, 60)].into();
    agg.append_results(&[record("edge", 95, "scan", RunStatus::Failed, 10)])
        .unwrap();
    let written = agg.roll_up("site/line", &members, Some(&later)).unwrap();
    assert_eq!(written.len(), 1);

    let fleet = agg.fleet(None).unwrap();
    assert_eq!(fleet.zones.len(), 1);
    assert_eq!(fleet.zones[0].zone, "site/line");
    assert_eq!(fleet.runs, 181);
    assert_eq!(fleet.failures, 10);
    assert_eq!(fleet.nodes, 2);
    let scan = &fleet.zones[0].workflows[0];
    assert_eq!(scan.workflow, "scan");
    assert_eq!(scan.last_node, "edge");
    assert_eq!(scan.last_status, RunStatus::Failed);
    // Only windows that end after `since`.
    let recent = agg.fleet(Some(BASE + HOUR)).unwrap();
    assert_eq!(recent.runs, 61);
}
