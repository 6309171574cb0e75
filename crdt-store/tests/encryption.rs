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
