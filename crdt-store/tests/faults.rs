//! The store under a failing disk: full (ENOSPC), failing (EIO) and short writes injected
//! beneath a real redb file. What was acknowledged survives; what was refused is not stored;
//! the store recovers by itself once the disk does.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crdt_store::fault::{FaultPlan, FaultyBackend, InjectedFault};
use crdt_store::headroom::MinFree;
use crdt_store::{
    DocName, MeshRegistry, NodeEntry, ResultsQuery, RetireReason, RunRecord, RunStatus, Store,
    StoreConfig, StoreError, StoreHandle, SyncApply, Window, WriteFault,
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

/// Sends one sync message, if `from` has one; returns whether it had.
fn send(from: &mut Store, from_id: &str, to: &mut Store, to_id: &str, name: &DocName) -> bool {
    let doc = from.document_id(name);
    let Some(payload) = from.sync_generate(&doc, to_id).unwrap() else {
        return false;
    };
    let outcome = to
        .sync_apply(vec![SyncApply {
            doc,
            peer: from_id.into(),
            name: Some(name.to_string()),
            payload,
            sender: crdt_store::Sender::Peer,
        }])
        .unwrap();
    assert!(outcome.iter().all(Result::is_ok), "{outcome:?}");
    true
}

/// Runs the store's own sync between two stores over one document until both are quiet.
fn sync_doc(a: &mut Store, a_id: &str, b: &mut Store, b_id: &str, name: &DocName) {
    for _ in 0..32 {
        let sent_ab = send(a, a_id, b, b_id, name);
        let sent_ba = send(b, b_id, a, a_id, name);
        if !sent_ab && !sent_ba {
            return;
        }
    }
    panic!("sync of {name} did not settle");
}

#[test]
fn below_the_watermark_only_windows_the_aggregator_holds_are_retired() {
    let dir = tempfile::tempdir().unwrap();
    let mut edge = Store::open(&dir.path().join("store.redb"), config()).unwrap();
    let mut aggregator = Store::open_in_memory(StoreConfig::new("test-mesh", "agg")).unwrap();
    let mut held = record("held");
    held.finished_ms = 1_700_000_000_005;
    let mut only_here = record("only-here");
    only_here.finished_ms = 1_700_100_000_005;
    edge.append_results(&[held.clone(), only_here.clone()])
        .unwrap();
    edge.apply_pending(usize::MAX).unwrap();
    let window_of = |r: &RunRecord| DocName::Results {
        node: "node-a".into(),
        window: Window::containing(r.finished_ms, 60),
    };
    let held_doc = window_of(&held);
    let kept_doc = window_of(&only_here);
    assert_ne!(held_doc, kept_doc);
    sync_doc(&mut edge, "node-a", &mut aggregator, "agg", &held_doc);

    let now = 1_800_000_000_000;
    // With room to spare nothing is retired.
    assert!(
        edge.retire_held_windows(&["agg".into()], now)
            .unwrap()
            .is_empty()
    );
    edge.set_min_free(MinFree::Bytes(u64::MAX / 4));
    let retired = edge.retire_held_windows(&["agg".into()], now).unwrap();
    let names: Vec<&str> = retired.iter().map(|r| r.doc.as_str()).collect();
    assert_eq!(names, vec![held_doc.to_string().as_str()]);
    assert_eq!(retired[0].reason, RetireReason::HeldUpstream);
    let ids = stored_ids(&mut edge);
    assert_eq!(
        ids,
        vec!["only-here".to_string()],
        "what only this node holds stays"
    );
    // A holder that is not in the chain does not count.
    assert!(
        edge.retire_held_windows(&["stranger".into()], now)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn below_the_watermark_synced_documents_wait_but_the_registry_comes_in() {
    let dir = tempfile::tempdir().unwrap();
    let mut edge = Store::open_in_memory(StoreConfig::new("test-mesh", "node-a")).unwrap();
    edge.append_results(&[record("r1")]).unwrap();
    edge.apply_pending(usize::MAX).unwrap();
    edge.update::<MeshRegistry, _>(&DocName::Mesh, |m| {
        m.nodes.insert("node-a".into(), NodeEntry::default());
    })
    .unwrap();
    let mut full = Store::open(&dir.path().join("store.redb"), config()).unwrap();
    full.set_min_free(MinFree::Bytes(u64::MAX / 4));

    let window = DocName::Results {
        node: "node-a".into(),
        window: Window::containing(record("r1").finished_ms, 60),
    };
    let doc = edge.document_id(&window);
    let payload = edge.sync_generate(&doc, "full").unwrap().unwrap();
    let outcome = full
        .sync_apply(vec![SyncApply {
            doc,
            peer: "node-a".into(),
            name: Some(window.to_string()),
            payload,
            sender: crdt_store::Sender::Peer,
        }])
        .unwrap();
    let refused = outcome[0].as_ref().unwrap_err();
    assert!(
        matches!(refused, crdt_store::SyncRejected::NoHeadroom(_)),
        "{refused}"
    );
    assert!(
        !refused.peer_at_fault(),
        "a full disk here is not the sender's fault"
    );
    assert!(refused.to_string().contains("store.min_free"), "{refused}");

    sync_doc(&mut edge, "node-a", &mut full, "full", &DocName::Mesh);
    let registry: MeshRegistry = full.read(&DocName::Mesh).unwrap();
    assert!(
        registry.nodes.contains_key("node-a"),
        "the registry is taken in"
    );
}

#[test]
fn a_reopened_store_tells_what_it_holds_including_what_a_failed_flush_rolled_back() {
    let dir = tempfile::tempdir().unwrap();
    let plan = FaultPlan::new();
    let mut a = faulty_store(&dir, &plan);
    let peer_dir = tempfile::tempdir().unwrap();
    let mut b = Store::open(
        &peer_dir.path().join("store.redb"),
        StoreConfig::new("test-mesh", "node-b"),
    )
    .unwrap();
    let reported = Arc::new(std::sync::Mutex::new(None));
    let told = reported.clone();
    a.set_reopen_listener(move |held| *told.lock().unwrap() = Some(held));
    a.update::<MeshRegistry, _>(&DocName::Mesh, |m| {
        m.nodes.insert("node-a".into(), NodeEntry::default());
    })
    .unwrap();
    let durable = mesh_digest(&mut a);
    assert!(durable.is_some());
    // A peer's change arrives as a sync message: applied, but not fsynced yet.
    b.update::<MeshRegistry, _>(&DocName::Mesh, |m| {
        m.nodes.insert("node-b".into(), NodeEntry::default());
    })
    .unwrap();
    sync_doc(&mut b, "node-b", &mut a, "node-a", &DocName::Mesh);
    let applied = mesh_digest(&mut a);
    assert_ne!(applied, durable);
    // The flush that would make it durable fails: the store breaks, then reopens.
    plan.arm(InjectedFault::NoSpace, 0);
    let failed = a.flush().unwrap_err();
    a.note_failure(&failed);
    assert!(a.broken().is_some());
    assert!(a.reopen().is_err(), "the disk is still full");
    assert!(reported.lock().unwrap().is_none());
    plan.clear();
    a.reopen().unwrap();
    let held = reported
        .lock()
        .unwrap()
        .take()
        .expect("told after the reopen");
    let entry = held
        .iter()
        .find(|e| e.name == "mesh")
        .expect("the mesh document is listed");
    // What the listener hears is the store's truth now, whichever way the engine went.
    assert_eq!(Some(entry.digest), mesh_digest(&mut a));
    // The applied change was never durable: the reopen rolled it back, which is why
    // replication must be told (it announced the change to peers already).
    assert_eq!(Some(entry.digest), durable);
}

/// The heads digest of the `mesh` document in a store's catalogue.
fn mesh_digest(store: &mut Store) -> Option<[u8; 16]> {
    use mesh::proto::sync::Replica as _;
    store
        .catalogue()
        .unwrap()
        .into_iter()
        .find(|e| e.name == "mesh")
        .map(|e| e.digest)
}

/// What a seeded schedule of store work does, one operation at a time.
#[derive(Debug, Clone, Copy)]
enum Work {
    Append,
    Fold,
    Compact,
    Retention,
    SyncIn,
    Flush,
}

/// Faults (full, failing, torn writes) armed at seeded points of a mix of every kind of store
/// work: ingest, folding the log into documents, compaction, retention and applying a peer's
/// sync messages. Every failure names the fault, the store always reopens once the disk is
/// back, nothing acknowledged is lost (unless retention retired its window), and what the
/// peer sent arrives in the end.
#[test]
fn faults_at_seeded_points_of_every_kind_of_work_lose_nothing_acknowledged() {
    use rand::{Rng, SeedableRng};
    let faults = [
        InjectedFault::NoSpace,
        InjectedFault::Io,
        InjectedFault::ShortWrite,
    ];
    let kinds = [
        Work::Append,
        Work::Fold,
        Work::Compact,
        Work::Retention,
        Work::SyncIn,
        Work::Flush,
    ];
    let hour = 3_600_000;
    let start_ms = 1_700_000_000_000_i64;
    let mut failures_seen = 0;
    for seed in 0..24u64 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let dir = tempfile::tempdir().unwrap();
        let plan = FaultPlan::new();
        let mut store = {
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
            let mut config = config();
            config.results_window_minutes = 60;
            config.retention.max_age_ms = Some(6 * hour);
            config.compact_after_chunks = 4;
            Store::open_on_backend(Arc::new(faulty), Some(&path), config).unwrap()
        };
        let mut peer = Store::open_in_memory(StoreConfig::new("test-mesh", "node-b")).unwrap();
        let mut acknowledged: Vec<RunRecord> = Vec::new();
        let mut retired: Vec<String> = Vec::new();
        let mut peer_entries: Vec<String> = Vec::new();
        let mut armed_for = 0;
        for step in 0..80 {
            if armed_for == 0 && rng.gen_bool(0.15) {
                plan.arm(faults[rng.gen_range(0..3)], rng.gen_range(0..6));
                armed_for = rng.gen_range(1..8);
            } else if armed_for > 0 {
                armed_for -= 1;
                if armed_for == 0 {
                    plan.clear();
                }
            }
            if store.broken().is_some() {
                if let Err(e) = store.reopen() {
                    assert!(e.write_fault().is_some(), "seed {seed}: reopen: {e}");
                }
                continue;
            }
            let now_ms = start_ms + step * hour / 4;
            let work = kinds[rng.gen_range(0..kinds.len())];
            let outcome: Result<(), StoreError> = match work {
                Work::Append => {
                    let mut r = record(&format!("s{seed}-r{step}"));
                    r.started_ms = now_ms - 5;
                    r.finished_ms = now_ms;
                    store.append_results(std::slice::from_ref(&r)).map(|_| {
                        acknowledged.push(r);
                    })
                }
                Work::Fold => store.apply_pending(usize::MAX).map(|_| ()),
                Work::Compact => store.compact_all().map(|_| ()),
                Work::Retention => store.enforce_retention(now_ms).map(|done| {
                    retired.extend(done.into_iter().map(|r| r.doc));
                }),
                Work::SyncIn => {
                    // The peer writes its own entry, as nodes do: a new tag each time.
                    let tag = format!("t{step}");
                    peer.update::<MeshRegistry, _>(&DocName::Mesh, |m| {
                        m.nodes
                            .entry("node-b".into())
                            .or_default()
                            .tags
                            .push(tag.clone());
                    })
                    .unwrap();
                    peer_entries.push(tag);
                    let doc = peer.document_id(&DocName::Mesh);
                    match peer.sync_generate(&doc, "node-a").unwrap() {
                        None => Ok(()),
                        Some(payload) => store
                            .sync_apply(vec![SyncApply {
                                doc,
                                peer: "node-b".into(),
                                name: Some("mesh".into()),
                                payload,
                                sender: crdt_store::Sender::Peer,
                            }])
                            .map(|_| ()),
                    }
                }
                Work::Flush => store.flush(),
            };
            if let Err(e) = outcome {
                failures_seen += 1;
                assert!(
                    e.write_fault().is_some() || e.is_storage_failure(),
                    "seed {seed}, step {step}, {work:?}: a failure must name the disk: {e}"
                );
                store.note_failure(&e);
                // The peer's session believes its message delivered: start it afresh, as a
                // new round does.
                peer.sync_forget_peer("node-a");
            }
        }
        plan.clear();
        if store.broken().is_some() {
            store
                .reopen()
                .expect("the store reopens once the disk is back");
        }
        // What was retired is gone by design; everything else acknowledged is here.
        let ids = stored_ids(&mut store);
        for r in &acknowledged {
            let window = DocName::Results {
                node: "node-a".into(),
                window: Window::containing(r.finished_ms, 60),
            }
            .to_string();
            assert!(
                retired.contains(&window) || ids.contains(&r.run_id),
                "seed {seed}: acknowledged {} lost",
                r.run_id
            );
        }
        // A fresh session brings whatever the peer wrote that a failure rolled back.
        peer.sync_forget_peer("node-a");
        store.sync_forget_peer("node-b");
        sync_doc(&mut peer, "node-b", &mut store, "node-a", &DocName::Mesh);
        let registry: MeshRegistry = store.read(&DocName::Mesh).unwrap();
        for tag in &peer_entries {
            assert!(
                registry.nodes["node-b"].tags.contains(tag),
                "seed {seed}: {tag}"
            );
        }
        // And the file, opened by a new process, holds the same.
        drop(store);
        let mut again = Store::open(&dir.path().join("store.redb"), config()).unwrap();
        let reread = stored_ids(&mut again);
        assert_eq!(reread, ids, "seed {seed}: what a new process reads");
    }
    assert!(
        failures_seen > 20,
        "the schedule injected too little: {failures_seen}"
    );
}
