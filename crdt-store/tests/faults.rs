//! The store under a failing disk: full (ENOSPC), failing (EIO) and short writes injected
//! beneath a real redb file. What was acknowledged survives; what was refused is not stored;
//! the store recovers by itself once the disk does.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crdt_store::fault::{FaultPlan, FaultyBackend, InjectedFault};
use crdt_store::headroom::MinFree;
use crdt_store::{
    DocName, MeshRegistry, NodeEntry, ResultsQuery, RunRecord, RunStatus, Store, StoreConfig,
    StoreError, StoreHandle, WriteFault,
};

fn config() -> StoreConfig {
    let mut config = StoreConfig::new("test-mesh", "node-a");
    config.min_free = MinFree::Off;
    config
}

fn record(id: &str) -> RunRecord {
    RunRecord {
        run_id: id.into(),
        workflow: "w".into(),
        workflow_version: 1,
        node: "node-a".into(),
        started_ms: 1_700_000_000_000,
        finished_ms: 1_700_000_000_005,
        status: RunStatus::Succeeded,
        output: "{\"v\":1}".into(),
        ..RunRecord::default()
    }
}

/// A store over a real file, with faults injected under it.
fn faulty_store(dir: &tempfile::TempDir, plan: &Arc<FaultPlan>) -> Store {
    let path = dir.path().join("store.redb");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .unwrap();
    let backend = redb::backends::FileBackend::new(file).unwrap();
    let faulty = FaultyBackend::new(Arc::new(backend), plan.clone());
    Store::open_on_backend(Arc::new(faulty), Some(&path), config()).unwrap()
}

fn stored_ids(store: &mut Store) -> Vec<String> {
    let mut ids: Vec<String> = store
        .results(&ResultsQuery::default())
        .unwrap()
        .into_iter()
        .map(|r| r.run_id)
        .collect();
    ids.sort();
    ids
}

/// Appends until one is acknowledged; the store must come back by itself.
fn append_until_acknowledged(handle: &StoreHandle, id: &str) -> Duration {
    let started = Instant::now();
    loop {
        if handle.append(vec![record(id)]).wait().is_ok() {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the store did not recover after the fault was cleared"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_full_disk_refuses_writes_and_the_store_recovers_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let plan = FaultPlan::new();
    let handle = StoreHandle::spawn(faulty_store(&dir, &plan));
    handle.append(vec![record("before")]).wait().unwrap();

    plan.arm(InjectedFault::NoSpace, 0);
    let refused = handle.append(vec![record("refused")]).wait().unwrap_err();
    assert_eq!(
        refused.write_fault(),
        Some(WriteFault::NoSpace),
        "{refused}"
    );
    // While the disk stays full, writes keep being refused, naming the cause.
    let again = handle
        .append(vec![record("refused-again")])
        .wait()
        .unwrap_err();
    assert_eq!(again.write_fault(), Some(WriteFault::NoSpace), "{again}");

    plan.clear();
    append_until_acknowledged(&handle, "after");
    let ids = handle.call(|s| Ok(stored_ids(s))).wait().unwrap();
    assert!(ids.contains(&"before".to_string()) && ids.contains(&"after".to_string()));
    assert!(!ids.iter().any(|id| id.starts_with("refused")), "{ids:?}");
    handle.shutdown();

    // What was acknowledged is on disk: a fresh open of the file finds it.
    let mut reopened = Store::open(&dir.path().join("store.redb"), config()).unwrap();
    let ids = stored_ids(&mut reopened);
    assert!(ids.contains(&"before".to_string()) && ids.contains(&"after".to_string()));
}

/// Every fault kind, striking at every point of the next few commits: whatever was
/// acknowledged is stored (then and after a fresh open), nothing refused is.
#[test]
fn no_acknowledged_write_is_lost_whatever_the_fault_and_wherever_it_strikes() {
    for fault in [
        InjectedFault::NoSpace,
        InjectedFault::Io,
        InjectedFault::ShortWrite,
    ] {
        for after in 0..12 {
            let dir = tempfile::tempdir().unwrap();
            let plan = FaultPlan::new();
            let handle = StoreHandle::spawn(faulty_store(&dir, &plan));
            let mut acknowledged = Vec::new();
            plan.arm(fault, after);
            for i in 0..6 {
                let id = format!("r{i}");
                match handle.append(vec![record(&id)]).wait() {
                    Ok(_) => acknowledged.push(id),
                    Err(e) => assert!(
                        e.write_fault().is_some(),
                        "{fault:?} after {after}: a failed write must name the disk: {e}"
                    ),
                }
                let entry = format!("w{i}");
                let _ = handle
                    .call(move |s| {
                        s.update::<MeshRegistry, _>(&DocName::Mesh, |m| {
                            m.nodes.insert(entry.clone(), NodeEntry::default());
                        })
                    })
                    .wait();
            }
            plan.clear();
            append_until_acknowledged(&handle, "last");
            acknowledged.push("last".into());
            let ids = handle.call(|s| Ok(stored_ids(s))).wait().unwrap();
            for id in &acknowledged {
                assert!(
                    ids.contains(id),
                    "{fault:?} after {after}: {id} lost: {ids:?}"
                );
            }
            handle.shutdown();
            let mut reopened = Store::open(&dir.path().join("store.redb"), config()).unwrap();
            let ids = stored_ids(&mut reopened);
            for id in &acknowledged {
                assert!(
                    ids.contains(id),
                    "{fault:?} after {after}: {id} lost on disk"
                );
            }
            assert!(plan.injected() > 0 || after > 0);
        }
    }
}

#[test]
fn below_the_watermark_runs_are_refused_by_name_but_the_registry_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let mut config = config();
    // Larger than any filesystem: always below.
    config.min_free = MinFree::Bytes(u64::MAX / 4);
    let mut store = Store::open(&path, config).unwrap();
    let refused = store.append_results(&[record("r1")]).unwrap_err();
    let StoreError::NoHeadroom { dir: named, .. } = &refused else {
        panic!("expected a headroom refusal, got {refused}");
    };
    assert_eq!(named, dir.path());
    let text = refused.to_string();
    assert!(
        text.contains("store.min_free") && text.contains("run result"),
        "{text}"
    );
    assert_eq!(refused.write_fault(), Some(WriteFault::NoSpace));
    store
        .update::<MeshRegistry, _>(&DocName::Mesh, |m| {
            m.nodes.insert("node-a".into(), NodeEntry::default());
        })
        .expect("the registry is written below the watermark");
    assert!(stored_ids(&mut store).is_empty());
    let room = store.headroom().unwrap().unwrap();
    assert!(room.is_low() && room.total_bytes > 0);
}
