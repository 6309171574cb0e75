//! Encryption at rest: with a store key, nothing of a record, a workflow or a sync state is
//! readable in the store file; the store opens only with its key, says which key it needs when
//! given another or none, and a store encrypted after the fact reads what it wrote before.

use crdt_store::seal::Key;
use crdt_store::{
    DocName, MeshRegistry, NodeEntry, ResultsQuery, RunRecord, RunStatus, Store, StoreConfig,
    StoreError, WorkflowDoc,
};

fn config(key: Option<&Key>) -> StoreConfig {
    let mut config = StoreConfig::new("mesh", "node-a");
    config.encryption = key.cloned();
    config
}

fn record(id: &str, output: &str) -> RunRecord {
    RunRecord {
        run_id: id.into(),
        workflow: "w".into(),
        workflow_version: 1,
        node: "node-a".into(),
        started_ms: 1_700_000_000_000,
        finished_ms: 1_700_000_000_005,
        status: RunStatus::Succeeded,
        output: output.into(),
        ..RunRecord::default()
    }
}

/// Writes a record (logged and folded), a workflow and the registry, each carrying `marker`.
fn write_everything(store: &mut Store, marker: &str) {
    store
        .append_results(&[record(
            &format!("run-{marker}"),
            &format!("{{\"v\":\"{marker}\"}}"),
        )])
        .unwrap();
    store.apply_pending(usize::MAX).unwrap();
    store
        .append_results(&[record(
            &format!("logged-{marker}"),
            &format!("{{\"v\":\"log-{marker}\"}}"),
        )])
        .unwrap();
    // Document names stay readable (the store's index): the workflow's id is no secret.
    let name = DocName::workflow("wf").unwrap();
    store
        .update::<WorkflowDoc, _>(&name, |w| {
            w.id = "wf".into();
            w.description = format!("description {marker}");
        })
        .unwrap();
    store
        .update::<MeshRegistry, _>(&DocName::Mesh, |m| {
            m.nodes.insert(
                "node-a".into(),
                NodeEntry {
                    name: format!("name {marker}"),
                    ..NodeEntry::default()
                },
            );
        })
        .unwrap();
    let doc = store.document_id(&DocName::Mesh);
    store
        .save_sync_state(&doc, "node-b", format!("state {marker}").as_bytes())
        .unwrap();
}

fn file_contains(path: &std::path::Path, text: &str) -> bool {
    let bytes = std::fs::read(path).unwrap();
    bytes.windows(text.len()).any(|w| w == text.as_bytes())
}

#[test]
fn nothing_readable_on_disk_and_only_the_key_opens_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let key = Key::generate();
    {
        let mut store = Store::open(&path, config(Some(&key))).unwrap();
        assert!(store.encrypted());
        write_everything(&mut store, "SECRETMARK");
    }
    for text in [
        "run-SECRETMARK",
        "\"v\":\"SECRETMARK",
        "description SECRET",
        "log-SECRET",
        "state SECRET",
        "name SECRET",
        "SECRETMARK",
    ] {
        assert!(
            !file_contains(&path, text),
            "{text} is readable in the store file"
        );
    }
    // The key opens it: everything reads back, the logged record folds.
    {
        let mut store = Store::open(&path, config(Some(&key))).unwrap();
        let ids: Vec<String> = store
            .results(&ResultsQuery::default())
            .unwrap()
            .into_iter()
            .map(|r| r.run_id)
            .collect();
        assert!(ids.contains(&"run-SECRETMARK".to_owned()), "{ids:?}");
        assert!(ids.contains(&"logged-SECRETMARK".to_owned()), "{ids:?}");
        let w: WorkflowDoc = store.read(&DocName::workflow("wf").unwrap()).unwrap();
        assert_eq!(w.description, "description SECRETMARK");
        let doc = store.document_id(&DocName::Mesh);
        assert_eq!(
            store.load_sync_state(&doc, "node-b").unwrap().unwrap(),
            b"state SECRETMARK"
        );
    }
    // Without a key, or with another: refused before anything is read, saying why.
    let err = Store::open(&path, config(None)).unwrap_err();
    assert!(matches!(err, StoreError::Encrypted { .. }), "{err}");
    assert!(err.to_string().contains("RHIZOME_STORE_KEY"), "{err}");
    let other = Key::generate();
    let err = Store::open(&path, config(Some(&other))).unwrap_err();
    assert!(matches!(err, StoreError::WrongKey { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains(&other.fingerprint()) && text.contains(&key.fingerprint()),
        "{text}"
    );
    // Refused opens lose nothing.
    let mut store = Store::open(&path, config(Some(&key))).unwrap();
    let w: WorkflowDoc = store.read(&DocName::workflow("wf").unwrap()).unwrap();
    assert_eq!(w.description, "description SECRETMARK");
}

#[test]
fn a_store_encrypted_later_reads_what_it_wrote_before() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    {
        let mut store = Store::open(&path, config(None)).unwrap();
        assert!(!store.encrypted());
        write_everything(&mut store, "PLAINMARK");
    }
    assert!(
        file_contains(&path, "PLAINMARK"),
        "written before encryption"
    );
    let key = Key::generate();
    let mut store = Store::open(&path, config(Some(&key))).unwrap();
    write_everything(&mut store, "AFTERMARK");
    let ids: Vec<String> = store
        .results(&ResultsQuery::default())
        .unwrap()
        .into_iter()
        .map(|r| r.run_id)
        .collect();
    for id in [
        "run-PLAINMARK",
        "logged-PLAINMARK",
        "run-AFTERMARK",
        "logged-AFTERMARK",
    ] {
        assert!(ids.contains(&id.to_owned()), "{id}: {ids:?}");
    }
    let registry: MeshRegistry = store.read(&DocName::Mesh).unwrap();
    assert_eq!(registry.nodes["node-a"].name, "name AFTERMARK");
    drop(store);
    assert!(!file_contains(&path, "AFTERMARK"));
    // Once encrypted, it needs its key.
    assert!(matches!(
        Store::open(&path, config(None)).unwrap_err(),
        StoreError::Encrypted { .. }
    ));
}

fn run_ids(store: &mut Store) -> Vec<String> {
    let mut ids: Vec<String> = store
        .results(&ResultsQuery::default())
        .unwrap()
        .into_iter()
        .map(|r| r.run_id)
        .collect();
    ids.sort();
    ids
}

/// Runs re-seal steps of `budget` values until the pass ends; returns the values re-sealed.
fn reseal_all(store: &mut Store, budget: usize) -> usize {
    let mut total = 0;
    for _ in 0..10_000 {
        let step = store.reseal_step(budget).unwrap();
        assert_eq!(step.unreadable, 0);
        total += step.resealed;
        if step.done {
            return total;
        }
    }
    panic!("re-sealing never ended");
}

#[test]
fn rotating_the_store_key_opens_with_either_key_until_the_old_one_is_retired() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let (old, new) = (Key::generate(), Key::generate());
    let mut store = Store::open(&path, config(Some(&old))).unwrap();
    for i in 0..20 {
        write_everything(&mut store, &format!("BEFORE{i}"));
    }
    reseal_all(&mut store, 7);
    let before = store.key_status().unwrap().unwrap();
    assert_eq!(before.store_key, old.fingerprint());
    assert!(before.old_data_keys.is_empty() && !before.resealing);

    let data_key = store.add_store_key(&new).unwrap();
    assert!(data_key > before.data_key);
    write_everything(&mut store, "DURING");
    let status = store.key_status().unwrap().unwrap();
    assert_eq!(status.store_key, new.fingerprint());
    assert_eq!(status.other_store_keys, vec![old.fingerprint()]);
    assert_eq!(status.rotating_to, Some(new.fingerprint()));
    assert_eq!(status.old_data_keys, vec![before.data_key]);
    assert!(status.resealing);
    let expected = run_ids(&mut store);
    drop(store);

    // Killed here (before the new key is in place, or after): either key opens everything.
    for key in [&old, &new] {
        let mut store = Store::open(&path, config(Some(key))).unwrap();
        assert_eq!(run_ids(&mut store), expected);
        let w: WorkflowDoc = store.read(&DocName::workflow("wf").unwrap()).unwrap();
        assert_eq!(w.description, "description DURING");
    }

    // The re-seal resumes at open and, a few values at a time, moves everything to the new
    // data key; the old one is dropped with the last batch.
    let mut store = Store::open(&path, config(Some(&new))).unwrap();
    let resealed = reseal_all(&mut store, 5);
    assert!(resealed > 40, "only {resealed} values re-sealed");
    let status = store.key_status().unwrap().unwrap();
    assert!(
        status.old_data_keys.is_empty() && !status.resealing,
        "{status:?}"
    );
    assert_eq!(store.reseal_step(5).unwrap().resealed, 0, "nothing left");
    assert_eq!(
        store.retire_other_store_keys().unwrap(),
        vec![old.fingerprint()]
    );
    assert_eq!(run_ids(&mut store), expected);
    drop(store);

    let err = Store::open(&path, config(Some(&old))).unwrap_err();
    assert!(matches!(err, StoreError::WrongKey { .. }), "{err}");
    let mut store = Store::open(&path, config(Some(&new))).unwrap();
    assert_eq!(run_ids(&mut store), expected);
    let status = store.key_status().unwrap().unwrap();
    assert!(status.other_store_keys.is_empty() && status.rotating_to.is_none());
}

#[test]
fn a_store_encrypted_later_seals_what_it_wrote_before_once_resealed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    {
        let mut store = Store::open(&path, config(None)).unwrap();
        write_everything(&mut store, "PLAINMARK");
        // Not encrypted: nothing to rotate, and saying so.
        let err = store.add_store_key(&Key::generate()).unwrap_err();
        assert!(matches!(err, StoreError::NotEncrypted { .. }), "{err}");
    }
    let key = Key::generate();
    let mut store = Store::open(&path, config(Some(&key))).unwrap();
    assert!(store.key_status().unwrap().unwrap().resealing);
    let expected = run_ids(&mut store);
    assert!(reseal_all(&mut store, 3) > 0);
    assert_eq!(run_ids(&mut store), expected);
    let registry: MeshRegistry = store.read(&DocName::Mesh).unwrap();
    assert_eq!(registry.nodes["node-a"].name, "name PLAINMARK");
    let doc = store.document_id(&DocName::Mesh);
    assert_eq!(
        store.load_sync_state(&doc, "node-b").unwrap().unwrap(),
        b"state PLAINMARK"
    );
    // Live values are sealed now; a compaction leaves the old pages to be reused.
    store.compact_all().unwrap();
    drop(store);
    assert!(matches!(
        Store::open(&path, config(None)).unwrap_err(),
        StoreError::Encrypted { .. }
    ));
}

#[test]
fn a_rotation_started_again_before_the_last_finished_keeps_two_keys_at_most() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let (first, second, third) = (Key::generate(), Key::generate(), Key::generate());
    let mut store = Store::open(&path, config(Some(&first))).unwrap();
    write_everything(&mut store, "ONE");
    store.add_store_key(&second).unwrap();
    write_everything(&mut store, "TWO");
    drop(store);
    // The second key never reached the key file: the node starts with the first again and
    // rotates to a third.
    let mut store = Store::open(&path, config(Some(&first))).unwrap();
    store.add_store_key(&third).unwrap();
    write_everything(&mut store, "THREE");
    let status = store.key_status().unwrap().unwrap();
    assert_eq!(status.other_store_keys, vec![first.fingerprint()]);
    let expected = run_ids(&mut store);
    drop(store);
    assert!(matches!(
        Store::open(&path, config(Some(&second))).unwrap_err(),
        StoreError::WrongKey { .. }
    ));
    for key in [&first, &third] {
        let mut store = Store::open(&path, config(Some(key))).unwrap();
        assert_eq!(run_ids(&mut store), expected);
    }
}
