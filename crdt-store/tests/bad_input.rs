//! Bad input gets a clear error naming the file or document and what was wrong; nothing panics
//! and the rest of the store stays readable.

use crdt_store::samod_core::StorageKey;
use crdt_store::samod_core::io::StorageTask;
use crdt_store::{DocName, Store, StoreConfig, StoreError, WorkflowDoc};
use rand::{Rng, SeedableRng};

fn config() -> StoreConfig {
    StoreConfig::new("test-mesh", "node-a")
}

#[test]
fn a_garbage_file_is_named_as_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let garbage: Vec<u8> = (0..65_536).map(|_| rng.r#gen()).collect();
    std::fs::write(&path, garbage).unwrap();
    let err = Store::open(&path, config()).unwrap_err();
    assert!(matches!(err, StoreError::CorruptFile { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains(path.to_str().unwrap()) && msg.contains("corrupt"),
        "{msg}"
    );
}

#[test]
fn a_truncated_file_is_named_as_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    {
        let mut store = Store::open(&path, config()).unwrap();
        for i in 0..200 {
            store
                .update::<WorkflowDoc, _>(&DocName::workflow(&format!("w{i}")).unwrap(), |wf| {
                    wf.description = "x".repeat(500)
                })
                .unwrap();
        }
    }
    let len = std::fs::metadata(&path).unwrap().len();
    for cut in [len / 2, 1000, 10] {
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(cut).unwrap();
        drop(file);
        match Store::open(&path, config()) {
            Err(StoreError::CorruptFile { path: p, reason }) => {
                assert_eq!(p, path);
                assert!(!reason.is_empty());
            }
            Err(other) => panic!("truncated to {cut} bytes: unexpected error {other:?}"),
            Ok(_) => panic!("truncated to {cut} bytes: opened as if nothing was wrong"),
        }
    }
}

#[test]
fn a_corrupt_chunk_names_its_document_and_spares_the_others() {
    let mut store = Store::open_in_memory(config()).unwrap();
    let good = DocName::workflow("good").unwrap();
    let bad = DocName::workflow("bad").unwrap();
    for name in [&good, &bad] {
        store
            .update::<WorkflowDoc, _>(name, |wf| wf.version = 7)
            .unwrap();
    }
    let bad_id = store.document_id(&bad);
    let key = StorageKey::from_parts([bad_id.to_string().as_str(), "incremental", "ffff"]).unwrap();
    store
        .execute(vec![StorageTask::Put {
            key,
            value: b"\x85\x6f\x4a\x83 definitely not automerge".to_vec(),
        }])
        .unwrap();
    let err = store.read::<WorkflowDoc>(&bad).unwrap_err();
    assert!(matches!(err, StoreError::CorruptChunk { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("workflow/bad") && msg.contains("incremental/ffff"),
        "{msg}"
    );
    assert_eq!(store.read::<WorkflowDoc>(&good).unwrap().version, 7);
    assert_eq!(store.list_docs().unwrap().len(), 2);
}

#[test]
fn unknown_documents_are_named() {
    let store = Store::open_in_memory(config()).unwrap();
    for missing in [
        "workflow/nope",
        "mesh",
        "4NKmMLKPcpchZkCFh2uKv5mqG2c3",
        "zzz",
    ] {
        let err = store.resolve(missing).unwrap_err();
        assert!(matches!(err, StoreError::NoSuchDocument(_)), "{err:?}");
        assert!(err.to_string().contains(missing));
    }
    let err = store.resolve("workflow/a/b").unwrap_err().to_string();
    assert!(err.contains("workflow/<id>"), "{err}");
}

#[test]
fn a_data_dir_that_is_a_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"").unwrap();
    let err = Store::open(&blocker.join("store.redb"), config()).unwrap_err();
    assert!(matches!(err, StoreError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("not-a-dir"), "{err}");
}

#[test]
fn a_corrupt_results_window_holds_back_only_its_own_records() {
    use crdt_store::{ResultsQuery, RunRecord, Window};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let hour = 3_600_000;
    let t0 = 1_795_478_400_000;
    let record = |id: &str, at: i64| RunRecord {
        run_id: id.into(),
        workflow: "w".into(),
        node: "node-a".into(),
        started_ms: at,
        finished_ms: at,
        ..RunRecord::default()
    };
    let broken = DocName::results("node-a", Window::containing(t0, 60)).unwrap();
    {
        let mut store = Store::open(&path, config()).unwrap();
        store.append_results(&[record("first", t0)]).unwrap();
        store.apply_pending(usize::MAX).unwrap();
        let id = store.document_id(&broken);
        let key = StorageKey::from_parts([id.to_string().as_str(), "incremental", "bad"]).unwrap();
        store
            .execute(vec![StorageTask::Put {
                key,
                value: b"garbage".to_vec(),
            }])
            .unwrap();
        store
            .append_results(&[record("stuck", t0 + 1), record("fine", t0 + hour)])
            .unwrap();
        // The good window takes its record; the broken one keeps its record in the log.
        let listed = store.results(&ResultsQuery::default()).unwrap();
        let ids: Vec<&str> = listed.iter().map(|r| r.run_id.as_str()).collect();
        assert_eq!(ids, vec!["fine"]);
        assert_eq!(store.pending_results().unwrap(), 1);
    }
    // The node still opens, and the record is still logged.
    let store = Store::open(&path, config()).unwrap();
    assert_eq!(store.pending_results().unwrap(), 1);
}
