//! Convergence: k replicas of each document kind make random concurrent edits through the typed
//! API, exchange Automerge sync messages in random orders and groupings, and must end with
//! identical heads and identical typed values, keeping every edit that the merge rules promise.

use std::collections::BTreeSet;

use automerge::sync::{State as SyncState, SyncDoc};
use automerge::{AutoCommit, ChangeHash};
use crdt_store::samod_core::StorageKey;
use crdt_store::samod_core::io::StorageTask;
use crdt_store::{
    ChangeTime, DocName, MeshRegistry, NodeEntry, Revocation, RollupDoc, RunRecord, RunStatus,
    StepDef, Store, StoreConfig, Target, TypedDoc, Window, WorkflowDoc,
};
use crdt_store::{ConflictPolicy, Resolution, WorkflowVersions};
use proptest::prelude::*;

const WINDOW: Window = Window {
    start_ms: 1_795_478_400_000,
    minutes: 60,
};

fn replica(i: usize) -> Store {
    let mut config = StoreConfig::new("prop-mesh", &format!("node-{i}"));
    config.change_time = ChangeTime::Zero;
    // Small, so compaction runs often during the test.
    config.compact_after_chunks = 4;
    Store::open_in_memory(config).unwrap()
}

/// Runs the Automerge sync protocol between two replicas' copies of a document until neither
/// has anything to send, then stores what each received through the samod storage path.
fn sync_pair(a: &mut Store, b: &mut Store, name: &DocName) {
    let id = a.document_id(name);
    let mut doc_a = a.automerge(&id).unwrap();
    let mut doc_b = b.automerge(&id).unwrap();
    let (heads_a, heads_b) = (doc_a.get_heads(), doc_b.get_heads());
    let (mut state_a, mut state_b) = (SyncState::new(), SyncState::new());
    for _ in 0..64 {
        let to_b = doc_a.sync().generate_sync_message(&mut state_a);
        if let Some(msg) = &to_b {
            doc_b
                .sync()
                .receive_sync_message(&mut state_b, msg.clone())
                .unwrap();
        }
        let to_a = doc_b.sync().generate_sync_message(&mut state_b);
        if let Some(msg) = &to_a {
            doc_a
                .sync()
                .receive_sync_message(&mut state_a, msg.clone())
                .unwrap();
        }
        if to_a.is_none() && to_b.is_none() {
            break;
        }
    }
    store_received(a, name, &mut doc_a, &heads_a);
    store_received(b, name, &mut doc_b, &heads_b);
}

fn store_received(store: &mut Store, name: &DocName, doc: &mut AutoCommit, before: &[ChangeHash]) {
    let id = store.document_id(name);
    let tasks: Vec<StorageTask> = doc
        .get_changes(before)
        .into_iter()
        .map(|c| StorageTask::Put {
            key: StorageKey::incremental_path(&id, c.hash()),
            value: c.raw_bytes().to_vec(),
        })
        .collect();
    store.execute(tasks).unwrap();
}

fn heads(store: &mut Store, name: &DocName) -> Vec<ChangeHash> {
    let id = store.document_id(name);
    store.automerge(&id).unwrap().get_heads()
}

/// One step of a schedule: an edit by one replica, or a sync between a group of replicas.
#[derive(Debug, Clone)]
enum Step {
    Edit { replica: usize, choice: u8, arg: u8 },
    Sync { group: Vec<usize>, order_seed: u64 },
}

fn schedule(replicas: usize) -> impl Strategy<Value = Vec<Step>> {
    let edit =
        (0..replicas, any::<u8>(), any::<u8>()).prop_map(|(replica, choice, arg)| Step::Edit {
            replica,
            choice,
            arg,
        });
    let sync = (
        proptest::collection::btree_set(0..replicas, 2..=replicas),
        any::<u64>(),
    )
        .prop_map(|(group, order_seed)| Step::Sync {
            group: group.into_iter().collect(),
            order_seed,
        });
    proptest::collection::vec(prop_oneof![3 => edit, 1 => sync], 1..40)
}

/// Applies the schedule, then syncs everyone with everyone until quiet, and checks convergence.
fn run<T: TypedDoc + PartialEq + std::fmt::Debug>(
    name: &DocName,
    replicas: usize,
    steps: &[Step],
    mut edit: impl FnMut(usize, u8, u8, &mut T),
) -> Vec<T> {
    let mut stores: Vec<Store> = (0..replicas).map(replica).collect();
    for store in &mut stores {
        store.update::<T, _>(name, |_| ()).unwrap();
    }
    for step in steps {
        match step {
            Step::Edit {
                replica,
                choice,
                arg,
            } => {
                stores[*replica]
                    .update::<T, _>(name, |value| edit(*replica, *choice, *arg, value))
                    .unwrap();
            }
            Step::Sync { group, order_seed } => {
                for (a, b) in sync_order(group, replicas, *order_seed) {
                    let (left, right) = stores.split_at_mut(b);
                    sync_pair(&mut left[a], &mut right[0], name);
                }
            }
        }
    }
    // Two full rounds: enough for every change to reach every replica in a complete graph.
    for _ in 0..2 {
        for a in 0..replicas {
            for b in a + 1..replicas {
                let (left, right) = stores.split_at_mut(b);
                sync_pair(&mut left[a], &mut right[0], name);
            }
        }
    }
    let expected_heads = heads(&mut stores[0], name);
    let values: Vec<T> = stores
        .iter_mut()
        .map(|s| s.read::<T>(name).unwrap())
        .collect();
    for (i, store) in stores.iter_mut().enumerate() {
        assert_eq!(
            heads(store, name),
            expected_heads,
            "replica {i} heads differ"
        );
        assert_eq!(values[i], values[0], "replica {i} value differs");
    }
    values
}

/// The pairs of a sync step in the order they sync: a deterministic shuffle of the pairs
/// inside the group.
fn sync_order(group: &[usize], replicas: usize, order_seed: u64) -> Vec<(usize, usize)> {
    let group: Vec<usize> = group.iter().copied().filter(|g| *g < replicas).collect();
    let mut pairs: Vec<(usize, usize)> = group
        .iter()
        .flat_map(|a| group.iter().filter(move |b| a < *b).map(move |b| (*a, *b)))
        .collect();
    let mut seed = order_seed;
    for i in (1..pairs.len()).rev() {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        pairs.swap(i, (seed >> 33) as usize % (i + 1));
    }
    pairs
}

/// A whole definition, as one replica applies it: every field may differ from the last one,
/// so that a merge of two could be told from either.
fn written_version(replica: usize, write: usize, choice: u8, arg: u8) -> WorkflowDoc {
    let policy = match choice % 3 {
        0 => ConflictPolicy::LastWrite,
        1 => ConflictPolicy::ControlWins,
        _ => ConflictPolicy::Manual,
    };
    let steps = (0..=arg % 3)
        .map(|i| {
            (
                format!("step-{write}-{i}"),
                StepDef {
                    agent: "threshold".into(),
                    config: format!("{{\"above\":{arg}}}"),
                    inputs: vec!["input".into()],
                    ..StepDef::default()
                },
            )
        })
        .collect();
    WorkflowDoc {
        id: "pipeline".into(),
        version: write as u64 + 1,
        description: format!("write {write} by {replica}"),
        trigger: format!("every {}s", 1 + arg % 5),
        target: Target {
            tags: vec![format!("tag-{write}")],
            ..Target::default()
        },
        steps,
        timeout_ms: u64::from(arg),
        max_concurrent: 1 + u32::from(arg % 4),
        conflict: policy,
        deleted: false,
        rollback_of: 0,
        rollout: None,
        updated_by: format!("node-{replica}"),
        // Replica 0 is a cloud peer: its versions carry the control role.
        by_control: replica == 0,
        author_cert: String::new(),
        signature: String::new(),
        // Few distinct times, so that ties (broken by writer, then text) are common.
        updated_ms: i64::from(arg % 4),
    }
}

/// The writes that no later write has replaced: a write replaces everything its writer had
/// seen, and a sync shares what both sides had seen.
fn standing_writes(steps: &[Step], replicas: usize) -> BTreeSet<usize> {
    let mut seen: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); replicas];
    let mut replaced = BTreeSet::new();
    let mut writes = 0;
    for step in steps {
        match step {
            Step::Edit { replica, .. } => {
                replaced.extend(seen[*replica].iter().copied());
                seen[*replica].insert(writes);
                writes += 1;
            }
            Step::Sync { group, order_seed } => {
                for (a, b) in sync_order(group, replicas, *order_seed) {
                    let both: BTreeSet<usize> = seen[a].union(&seen[b]).copied().collect();
                    seen[a] = both.clone();
                    seen[b] = both;
                }
            }
        }
    }
    (0..writes).filter(|w| !replaced.contains(w)).collect()
}

fn edits_by(steps: &[Step]) -> Vec<(usize, u8, u8)> {
    steps
        .iter()
        .filter_map(|s| match s {
            Step::Edit {
                replica,
                choice,
                arg,
            } => Some((*replica, *choice, *arg)),
            _ => None,
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn mesh_registry_converges(replicas in 2usize..5, steps in schedule(4)) {
        let steps: Vec<Step> = steps.into_iter().filter(|s| valid_for(s, replicas)).collect();
        let values = run::<MeshRegistry>(&DocName::Mesh, replicas, &steps, |r, choice, arg, mesh| {
            match choice % 3 {
                0 | 1 => {
                    let entry = mesh.nodes.entry(format!("node-{r}")).or_insert_with(NodeEntry::default);
                    entry.heartbeat += 1;
                    entry.tags = vec![format!("t{}", arg % 4)];
                }
                _ => {
                    let target = format!("node-{}", arg % 6);
                    if arg % 2 == 0 {
                        mesh.revoked.insert(target, Revocation { revoked_ms: i64::from(arg), reason: "test".into(), ..Revocation::default() });
                    } else {
                        mesh.revoked.remove(&target);
                    }
                }
            }
        });
        // Each node writes only its own entry, so every node that wrote one has it everywhere.
        let writers: BTreeSet<String> = edits_by(&steps)
            .into_iter()
            .filter(|(_, c, _)| c % 3 != 2)
            .map(|(r, _, _)| format!("node-{r}"))
            .collect();
        let present: BTreeSet<String> = values[0].nodes.keys().cloned().collect();
        prop_assert_eq!(present, writers);
    }

    /// Replicas apply whole versions concurrently and merge in random orders: they end with
    /// the same versions standing, exactly the writes nobody replaced, each exactly as written
    /// (never a mix of two), and resolve them alike under every policy.
    #[test]
    fn workflow_versions_stay_atomic_and_resolve_alike(
        replicas in 2usize..4,
        steps in schedule(3),
    ) {
        let steps: Vec<Step> = steps.into_iter().filter(|s| valid_for(s, replicas)).collect();
        let name = DocName::workflow("pipeline").unwrap();
        let mut written: Vec<WorkflowDoc> = Vec::new();
        let values = run::<WorkflowVersions>(&name, replicas, &steps, |r, choice, arg, w| {
            let version = written_version(r, written.len(), choice, arg);
            written.push(version.clone());
            w.versions = vec![version];
        });
        let standing: BTreeSet<usize> = standing_writes(&steps, replicas);
        let mut expected: Vec<&WorkflowDoc> = standing.iter().map(|w| &written[*w]).collect();
        let held: Vec<&WorkflowDoc> = values[0].versions.iter().collect();
        expected.sort_by_key(|v| v.description.clone());
        let mut sorted = held.clone();
        sorted.sort_by_key(|v| v.description.clone());
        prop_assert_eq!(sorted, expected, "the versions standing are the writes not replaced");
        prop_assert!(values[0].rejected.is_empty());
        let control = |v: &WorkflowDoc| v.by_control;
        // Every replica has the same versions (checked by `run`), hence the same resolution.
        match values[0].resolve() {
            Resolution::Unapplied => prop_assert!(written.is_empty()),
            Resolution::Resolved(winner) => {
                prop_assert!(written.contains(winner), "the winner is a written version");
                let newest = held
                    .iter()
                    .copied()
                    .max_by_key(|v| (v.updated_ms, v.updated_by.clone(), v.encode()))
                    .unwrap();
                match values[0].policy() {
                    ConflictPolicy::Manual => prop_assert_eq!(held.len(), 1),
                    ConflictPolicy::ControlWins if held.iter().any(|v| control(v)) => {
                        prop_assert!(control(winner));
                        let newest_control = held
                            .iter()
                            .copied()
                            .filter(|v| control(v))
                            .max_by_key(|v| (v.updated_ms, v.updated_by.clone(), v.encode()))
                            .unwrap();
                        prop_assert_eq!(winner, newest_control);
                    }
                    _ => prop_assert_eq!(winner, newest),
                }
            }
            Resolution::Competing(competing) => {
                prop_assert_eq!(values[0].policy(), ConflictPolicy::Manual);
                prop_assert!(competing.len() >= 2);
                prop_assert_eq!(competing.iter().collect::<Vec<_>>(), held);
            }
        }
    }

    #[test]
    fn results_converge_and_keep_every_record(replicas in 2usize..5, steps in schedule(4)) {
        let steps: Vec<Step> = steps.into_iter().filter(|s| valid_for(s, replicas)).collect();
        let name = DocName::results("node-0", WINDOW).unwrap();
        let mut counter = 0u32;
        let values = run::<crdt_store::ResultsDoc>(&name, replicas, &steps, |r, _, arg, doc| {
            counter += 1;
            let run_id = format!("run-{r}-{counter}");
            doc.runs.insert(run_id.clone(), RunRecord {
                run_id,
                workflow: "w".into(),
                node: "node-0".into(),
                started_ms: WINDOW.start_ms,
                finished_ms: WINDOW.start_ms + i64::from(arg),
                status: if arg % 5 == 0 { RunStatus::Failed } else { RunStatus::Succeeded },
                output: format!("{{\"v\":{arg}}}"),
                ..RunRecord::default()
            });
        });
        prop_assert_eq!(values[0].runs.len(), edits_by(&steps).len());
    }

    #[test]
    fn rollup_converges(replicas in 2usize..5, steps in schedule(4)) {
        let steps: Vec<Step> = steps.into_iter().filter(|s| valid_for(s, replicas)).collect();
        let name = DocName::rollup("site-a/line-1", WINDOW).unwrap();
        let values = run::<RollupDoc>(&name, replicas, &steps, |r, choice, arg, rollup| {
            let summary = rollup.summary_mut(&format!("w{}", choice % 2), &format!("source-{r}"));
            summary.runs += 1;
            summary.max_ms = summary.max_ms.max(u64::from(arg));
            summary.last_status = RunStatus::Succeeded;
        });
        let sources = values[0].summaries.len();
        let expected: BTreeSet<(u8, usize)> = edits_by(&steps).into_iter().map(|(r, c, _)| (c % 2, r)).collect();
        prop_assert_eq!(sources, expected.len());
    }
}

fn valid_for(step: &Step, replicas: usize) -> bool {
    match step {
        Step::Edit { replica, .. } => *replica < replicas,
        Step::Sync { group, .. } => group.iter().filter(|r| **r < replicas).count() >= 2,
    }
}
