//! The store's behaviour on a real redb file: persistence, results, retention, compaction, the
//! samod storage interface and sync state.

use std::collections::HashSet;

use crdt_store::samod_core::io::{StorageResult, StorageTask};
use crdt_store::samod_core::{DocumentId, StorageKey};
use crdt_store::{
    DocName, MeshRegistry, NodeEntry, ResultsQuery, RetentionPolicy, RetireReason, RunRecord,
    RunStatus, Store, StoreConfig, StoreHandle, Window, WorkflowDoc,
};

const HOUR: i64 = 3_600_000;
const T0: i64 = 1_795_478_400_000; // 2026-11-24T00:00Z

fn config() -> StoreConfig {
    StoreConfig::new("test-mesh", "node-a")
}

fn record(id: &str, finished_ms: i64) -> RunRecord {
    RunRecord {
        run_id: id.into(),
        workflow: "w".into(),
        workflow_version: 1,
        node: "node-a".into(),
        started_ms: finished_ms - 5,
        finished_ms,
        status: RunStatus::Succeeded,
        output: "{\"v\":1}".into(),
        ..RunRecord::default()
    }
}

#[test]
fn documents_persist_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let name = DocName::workflow("ingest").unwrap();
    {
        let mut store = Store::open(&path, config()).unwrap();
        store
            .update::<WorkflowDoc, _>(&name, |wf| {
                wf.version = 2;
                wf.description = "reads sensors".into();
            })
            .unwrap();
        store
            .update::<MeshRegistry, _>(&DocName::Mesh, |m| {
                m.nodes.insert("node-a".into(), NodeEntry::default());
            })
            .unwrap();
    }
    let mut store = Store::open(&path, config()).unwrap();
    let wf: WorkflowDoc = store.read(&name).unwrap();
    assert_eq!((wf.id.as_str(), wf.version), ("ingest", 2));
    assert_eq!(wf.description, "reads sensors");
    let names: Vec<Option<String>> = store
        .list_docs()
        .unwrap()
        .into_iter()
        .map(|d| d.name)
        .collect();
    assert_eq!(
        names,
        vec![Some("mesh".into()), Some("workflow/ingest".into())]
    );
}

#[test]
fn reading_a_document_as_another_kind_is_refused() {
    let mut store = Store::open_in_memory(config()).unwrap();
    let err = store
        .read::<WorkflowDoc>(&DocName::Mesh)
        .unwrap_err()
        .to_string();
    assert!(err.contains("mesh") && err.contains("workflow"), "{err}");
}

#[test]
fn appended_results_are_listed_once_each_by_window() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let mut store = Store::open(&path, config()).unwrap();
    let records: Vec<RunRecord> = (0..300)
        .map(|i| record(&format!("r{i}"), T0 + i * 60_000))
        .collect();
    let seqs = store.append_results(&records).unwrap();
    assert_eq!(seqs.len(), 300);
    assert_eq!(store.pending_results().unwrap(), 300);
    // Appending the same run again overwrites it rather than duplicating it.
    store.append_results(&records[..10]).unwrap();
    let listed = store.results(&ResultsQuery::default()).unwrap();
    assert_eq!(listed.len(), 300);
    assert_eq!(store.pending_results().unwrap(), 0);
    let windows: HashSet<String> = store
        .list_docs()
        .unwrap()
        .into_iter()
        .filter_map(|d| d.name)
        .collect();
    assert_eq!(windows.len(), 5, "300 minutes make 5 one-hour windows");
    let since = store
        .results(&ResultsQuery {
            since_ms: Some(T0 + 4 * HOUR),
            ..ResultsQuery::default()
        })
        .unwrap();
    assert_eq!(since.len(), 60);
    assert!(since.iter().all(|r| r.finished_ms >= T0 + 4 * HOUR));
    let none = store
        .results(&ResultsQuery {
            workflow: Some("other".into()),
            ..ResultsQuery::default()
        })
        .unwrap();
    assert!(none.is_empty());
}

#[test]
fn logged_results_are_applied_when_the_store_opens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    {
        let mut store = Store::open(&path, config()).unwrap();
        store
            .append_results(&[record("a", T0), record("b", T0 + 1)])
            .unwrap();
        assert_eq!(store.pending_results().unwrap(), 2);
        // Dropped without applying: as if the process died after the acknowledgement.
    }
    let store = Store::open(&path, config()).unwrap();
    assert_eq!(store.pending_results().unwrap(), 0);
    let name = DocName::results("node-a", Window::containing(T0, 60)).unwrap();
    assert_eq!(
        store.list_docs().unwrap()[0].name.as_deref(),
        Some(name.to_string().as_str())
    );
}

#[test]
fn invalid_records_are_refused_before_anything_is_stored() {
    let mut store = Store::open_in_memory(config()).unwrap();
    let mut bad = record("", T0);
    let err = store
        .append_results(&[record("ok", T0), bad.clone()])
        .unwrap_err()
        .to_string();
    assert!(err.contains("run id"), "{err}");
    bad.run_id = "x".into();
    bad.node = "no/slashes".into();
    let err = store.append_results(&[bad]).unwrap_err().to_string();
    assert!(err.contains("node id"), "{err}");
    let mut backwards = record("y", T0);
    backwards.started_ms = T0 + 10;
    assert!(store.append_results(&[backwards]).is_err());
    assert_eq!(store.pending_results().unwrap(), 0);
}

#[test]
fn the_handle_groups_concurrent_appends() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let handle = StoreHandle::spawn(Store::open(&path, config()).unwrap());
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let handle = handle.clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    let seqs = handle
                        .append(vec![record(&format!("t{t}-{i}"), T0 + i)])
                        .wait()
                        .unwrap();
                    assert_eq!(seqs.len(), 1);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let invalid = handle.append(vec![record("", T0)]).wait();
    assert!(invalid.is_err());
    let count = handle
        .call(|s| Ok(s.results(&ResultsQuery::default())?.len()))
        .wait()
        .unwrap();
    assert_eq!(count, 400);
    handle.shutdown();
    let store = Store::open(&path, config()).unwrap();
    assert_eq!(store.pending_results().unwrap(), 0);
}

#[test]
fn retention_retires_old_windows_by_age_then_by_size() {
    let mut cfg = config();
    cfg.retention = RetentionPolicy {
        max_age_ms: Some(24 * HOUR),
        max_bytes: None,
    };
    let mut store = Store::open_in_memory(cfg.clone()).unwrap();
    // One record per hour for three days.
    let records: Vec<RunRecord> = (0..72)
        .map(|h| record(&format!("h{h}"), T0 + h * HOUR + 1))
        .collect();
    store.append_results(&records).unwrap();
    let now = T0 + 72 * HOUR;
    let retired = store.enforce_retention(now).unwrap();
    assert!(retired.iter().all(|r| r.reason == RetireReason::Age));
    // Windows ending before now - 24h: the first 47 (window h ends at h+1).
    assert_eq!(retired.len(), 47);
    let left = store.results(&ResultsQuery::default()).unwrap();
    assert_eq!(left.len(), 25);
    assert_eq!(left[0].run_id, "h47");

    // Now a size cap that fits about half of what is left.
    let total: u64 = store.list_docs().unwrap().iter().map(|d| d.bytes).sum();
    drop(store);
    cfg.retention = RetentionPolicy {
        max_age_ms: None,
        max_bytes: Some(total / 2),
    };
    let mut store = Store::open_in_memory(cfg).unwrap();
    store.append_results(&records[47..]).unwrap();
    let retired = store.enforce_retention(now).unwrap();
    assert!(!retired.is_empty());
    assert!(retired.iter().all(|r| r.reason == RetireReason::Size));
    let after: u64 = store.list_docs().unwrap().iter().map(|d| d.bytes).sum();
    assert!(after <= total / 2, "{after} > {}", total / 2);
    let left = store.results(&ResultsQuery::default()).unwrap();
    // Oldest first: whatever is left is the newest windows.
    assert_eq!(left.last().unwrap().run_id, "h71");
    assert_eq!(left[0].run_id, format!("h{}", 72 - left.len()));
}

#[test]
fn compaction_keeps_content_and_heads() {
    let mut cfg = config();
    cfg.compact_after_chunks = usize::MAX;
    let mut store = Store::open_in_memory(cfg).unwrap();
    let name = DocName::workflow("w").unwrap();
    for i in 1..=100u64 {
        store
            .update::<WorkflowDoc, _>(&name, |wf| wf.version = i)
            .unwrap();
    }
    let id = store.document_id(&name);
    let before = store.list_docs().unwrap()[0].clone();
    assert_eq!(before.chunks, 101, "genesis plus one chunk per change");
    let heads = store.automerge(&id).unwrap().get_heads();
    let report = store.compact("workflow/w").unwrap();
    assert_eq!(report.chunks_before, 101);
    assert!(report.bytes_after < report.bytes_before);
    let after = store.list_docs().unwrap()[0].clone();
    assert_eq!(after.chunks, 1);
    assert_eq!(store.automerge(&id).unwrap().get_heads(), heads);
    assert_eq!(store.read::<WorkflowDoc>(&name).unwrap().version, 100);
}

#[test]
fn documents_compact_automatically() {
    let mut cfg = config();
    cfg.compact_after_chunks = 8;
    let mut store = Store::open_in_memory(cfg).unwrap();
    let name = DocName::workflow("w").unwrap();
    for i in 0..50u64 {
        store
            .update::<WorkflowDoc, _>(&name, |wf| wf.version = i)
            .unwrap();
    }
    assert!(store.list_docs().unwrap()[0].chunks <= 9);
    assert_eq!(store.read::<WorkflowDoc>(&name).unwrap().version, 49);
}

#[test]
fn samod_storage_tasks_follow_key_components() {
    let mut store = Store::open_in_memory(config()).unwrap();
    let key = |parts: &[&str]| StorageKey::from_parts(parts).unwrap();
    let results = store
        .execute(vec![
            StorageTask::Put {
                key: key(&["a", "b"]),
                value: vec![1],
            },
            StorageTask::Put {
                key: key(&["a", "b", "c"]),
                value: vec![2],
            },
            StorageTask::Put {
                key: key(&["a", "bc"]),
                value: vec![3],
            },
            StorageTask::Put {
                key: key(&["storage-adapter-id"]),
                value: b"id".to_vec(),
            },
        ])
        .unwrap();
    assert!(results.iter().all(|r| matches!(r, StorageResult::Put)));
    let range = store.load_range(&key(&["a", "b"])).unwrap();
    let mut found: Vec<String> = range.keys().map(|k| k.to_string()).collect();
    found.sort();
    assert_eq!(found, vec!["a/b", "a/b/c"]);
    assert_eq!(store.load(&key(&["a", "bc"])).unwrap(), Some(vec![3]));
    store
        .execute(vec![StorageTask::Delete {
            key: key(&["a", "bc"]),
        }])
        .unwrap();
    assert_eq!(store.load(&key(&["a", "bc"])).unwrap(), None);
    match &store
        .execute(vec![StorageTask::LoadRange {
            prefix: key(&["a"]),
        }])
        .unwrap()[0]
    {
        StorageResult::LoadRange { values } => assert_eq!(values.len(), 2),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn sync_state_is_kept_per_document_and_peer() {
    let mut store = Store::open_in_memory(config()).unwrap();
    let doc: DocumentId = DocName::Mesh.document_id("test-mesh");
    assert_eq!(store.load_sync_state(&doc, "peer-1").unwrap(), None);
    store.save_sync_state(&doc, "peer-1", b"state-1").unwrap();
    store.save_sync_state(&doc, "peer-2", b"state-2").unwrap();
    assert_eq!(
        store.load_sync_state(&doc, "peer-1").unwrap().as_deref(),
        Some(&b"state-1"[..])
    );
    assert!(store.save_sync_state(&doc, "bad/peer", b"x").is_err());
}

#[test]
fn a_second_opener_is_told_the_store_is_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let _first = Store::open(&path, config()).unwrap();
    let err = Store::open(&path, config()).unwrap_err().to_string();
    assert!(err.contains("in use"), "{err}");
}
