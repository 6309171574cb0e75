//! `Store::results_since`: following a results window by its changes gives, at every step,
//! the same records as reading it whole, whether the document is cached or decoded afresh.

use std::collections::BTreeMap;

use crdt_store::{DocName, RunRecord, RunStatus, Store, StoreConfig, Window};
use proptest::prelude::*;

const T0: i64 = 1_795_478_400_000; // 2026-11-24T00:00Z, the start of a window

fn record(id: u8, status: u8, output: u8) -> RunRecord {
    RunRecord {
        run_id: format!("r{id:03}"),
        workflow: "w".into(),
        workflow_version: 1,
        node: "node-a".into(),
        started_ms: T0 + i64::from(id),
        finished_ms: T0 + i64::from(id) + 5,
        status: if status == 0 {
            RunStatus::Succeeded
        } else {
            RunStatus::Failed
        },
        output: format!("{{\"v\":{output}}}"),
        ..RunRecord::default()
    }
}

fn window_name() -> DocName {
    DocName::results("node-a", Window::containing(T0, 60)).unwrap()
}

/// Appends of (run, status, output); a run appended again with other values is rewritten in
/// place.
type Batch = Vec<(u8, u8, u8)>;

/// Batches, each followed by a reopen of the store or not.
fn batches() -> impl Strategy<Value = Vec<(Batch, bool)>> {
    prop::collection::vec(
        (
            prop::collection::vec((0u8..40, 0u8..2, 0u8..3), 0..12),
            any::<bool>(),
        ),
        1..10,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn following_changes_equals_reading_whole(steps in batches()) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let config = StoreConfig::new("test-mesh", "node-a");
        let mut store = Store::open(&path, config.clone()).unwrap();
        let name = window_name();
        let mut followed: BTreeMap<String, RunRecord> = BTreeMap::new();
        let mut heads = Vec::new();
        for (batch, reopen) in steps {
            let records: Vec<RunRecord> =
                batch.iter().map(|&(id, status, output)| record(id, status, output)).collect();
            if !records.is_empty() {
                store.append_results(&records).unwrap();
                store.apply_pending(usize::MAX).unwrap();
            }
            if reopen {
                // Not cached: the document is decoded from its chunks.
                drop(store);
                store = Store::open(&path, config.clone()).unwrap();
            }
            let since = store.results_since(&name, &heads).unwrap();
            prop_assert_eq!(since.whole, heads.is_empty());
            let appended: std::collections::BTreeSet<String> =
                records.iter().map(|r| r.run_id.clone()).collect();
            for run in &since.runs {
                prop_assert!(
                    since.whole || appended.contains(&run.run_id),
                    "{} was not written since", run.run_id
                );
                followed.insert(run.run_id.clone(), run.clone());
            }
            let whole = store.results_since(&name, &[]).unwrap();
            prop_assert!(whole.whole);
            let whole: BTreeMap<String, RunRecord> =
                whole.runs.into_iter().map(|r| (r.run_id.clone(), r)).collect();
            prop_assert_eq!(since.total, whole.len());
            prop_assert_eq!(&followed, &whole);
            if !since.heads.is_empty() {
                heads = since.heads;
            }
        }
    }
}

#[test]
fn heads_the_document_never_had_read_it_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(
        &dir.path().join("store.redb"),
        StoreConfig::new("m", "node-a"),
    )
    .unwrap();
    store
        .append_results(&[record(1, 0, 0), record(2, 0, 0)])
        .unwrap();
    store.apply_pending(usize::MAX).unwrap();
    let stranger = automerge::ChangeHash([7; 32]);
    let read = store.results_since(&window_name(), &[stranger]).unwrap();
    assert!(read.whole);
    assert_eq!(read.runs.len(), 2);

    // Nothing new since the current heads: nothing read.
    let again = store.results_since(&window_name(), &read.heads).unwrap();
    assert!(!again.whole);
    assert!(again.runs.is_empty());
    assert_eq!(again.total, 2);

    // A window never written reads as empty.
    let empty = DocName::results("node-a", Window::containing(T0 - 3_600_000, 60)).unwrap();
    let none = store.results_since(&empty, &[]).unwrap();
    assert!(none.runs.is_empty() && none.heads.is_empty());
}
