//! Who may write what, as a receiving store enforces it on every sync message: a node's results
//! and its registry entry are written by that node only, revocation decisions by anyone (the
//! CA's signature decides whether they count), workflow versions only as the node's write rules
//! allow. A refused message stores nothing and names the author and the rule.

use std::sync::Arc;

use crdt_store::{
    AlertRecord, AlertsDoc, DocName, MeshRegistry, NodeEntry, ResultsDoc, Revocation, RunRecord,
    RunStatus, Store, StoreConfig, SyncApply, SyncRejected, Window, WorkflowDoc, WriteRules,
};

fn store(node: &str) -> Store {
    Store::open_in_memory(StoreConfig::new("mesh", node)).unwrap()
}

/// Runs a sync session from `from` to `to` over one document until it settles; the first
/// refusal on the way, if any.
fn sync(
    from: &mut Store,
    from_id: &str,
    to: &mut Store,
    to_id: &str,
    name: &DocName,
) -> Option<SyncRejected> {
    let doc = from.document_id(name);
    for _ in 0..16 {
        let mut quiet = true;
        if let Some(payload) = from.sync_generate(&doc, to_id).unwrap() {
            quiet = false;
            let outcome = to
                .sync_apply(vec![SyncApply {
                    doc: doc.clone(),
                    peer: from_id.into(),
                    name: Some(name.to_string()),
                    payload,
                    sender: crdt_store::Sender::Peer,
                }])
                .unwrap();
            if let Some(Err(refused)) = outcome.into_iter().next() {
                return Some(refused);
            }
        }
        if let Some(payload) = to.sync_generate(&doc, from_id).unwrap() {
            quiet = false;
            let outcome = from
                .sync_apply(vec![SyncApply {
                    doc: doc.clone(),
                    peer: to_id.into(),
                    name: Some(name.to_string()),
                    payload,
                    sender: crdt_store::Sender::Peer,
                }])
                .unwrap();
            if let Some(Err(refused)) = outcome.into_iter().next() {
                return Some(refused);
            }
        }
        if quiet {
            return None;
        }
    }
    panic!("sync of {name} did not settle");
}

fn record(node: &str, id: &str) -> RunRecord {
    RunRecord {
        run_id: id.into(),
        workflow: "w".into(),
        workflow_version: 1,
        node: node.into(),
        started_ms: 1_700_000_000_000,
        finished_ms: 1_700_000_000_005,
        status: RunStatus::Succeeded,
        output: "{}".into(),
        ..RunRecord::default()
    }
}

#[test]
fn results_are_taken_from_their_owner_only() {
    let (mut a, mut b, mut c) = (store("node-a"), store("node-b"), store("node-c"));
    let window = Window::containing(1_700_000_000_005, 60);
    let of_a = DocName::results("node-a", window).unwrap();
    // a's own results travel.
    a.append_results(&[record("node-a", "r1")]).unwrap();
    a.apply_pending(usize::MAX).unwrap();
    assert!(sync(&mut a, "node-a", &mut c, "node-c", &of_a).is_none());
    // b writes into a's results document (a forged record) and offers it to c.
    assert!(sync(&mut a, "node-a", &mut b, "node-b", &of_a).is_none());
    b.update::<ResultsDoc, _>(&of_a, |doc| {
        doc.runs.insert("forged".into(), record("node-a", "forged"));
    })
    .unwrap();
    let refused = sync(&mut b, "node-b", &mut c, "node-c", &of_a).expect("refused");
    let text = refused.to_string();
    assert!(
        matches!(refused, SyncRejected::Unauthorized { .. }),
        "{text}"
    );
    assert!(!refused.peer_at_fault(), "{text}");
    assert!(
        text.contains("node-b") || text.contains("6e6f64652d62"),
        "the author is named: {text}"
    );
    assert!(text.contains("only node-a writes"), "{text}");
    let held: ResultsDoc = c.read(&of_a).unwrap();
    assert!(held.runs.contains_key("r1") && !held.runs.contains_key("forged"));
}

#[test]
fn alerts_are_taken_from_their_node_only_and_relayed_by_others() {
    let (mut a, mut agg, mut cloud) = (store("node-a"), store("node-agg"), store("node-cloud"));
    let of_a = DocName::alerts("node-a", Window::containing(1_700_000_000_005, 60)).unwrap();
    a.update::<AlertsDoc, _>(&of_a, |doc| {
        doc.alerts.insert(
            AlertRecord::key("disk", 1_700_000_000_005),
            AlertRecord {
                rule: "disk".into(),
                state: "firing".into(),
                fired_ms: 1_700_000_000_005,
                ..AlertRecord::default()
            },
        );
    })
    .unwrap();
    // Relayed unchanged through the aggregator, it is a's own writing at the cloud.
    assert!(sync(&mut a, "node-a", &mut agg, "node-agg", &of_a).is_none());
    assert!(sync(&mut agg, "node-agg", &mut cloud, "node-cloud", &of_a).is_none());
    let held: AlertsDoc = cloud.read(&of_a).unwrap();
    assert_eq!(held.alerts.len(), 1);
    // The aggregator resolving a's alert in its stead is refused.
    agg.update::<AlertsDoc, _>(&of_a, |doc| {
        doc.alerts
            .values_mut()
            .for_each(|a| a.state = "resolved".into());
    })
    .unwrap();
    let refused = sync(&mut agg, "node-agg", &mut cloud, "node-cloud", &of_a).expect("refused");
    assert!(
        matches!(refused, SyncRejected::Unauthorized { .. }),
        "{refused}"
    );
    let held: AlertsDoc = cloud.read(&of_a).unwrap();
    assert!(held.alerts.values().all(|a| a.state == "firing"));
}

#[test]
fn each_registry_entry_is_taken_from_its_node_and_revocations_from_anyone() {
    let (mut a, mut b) = (store("node-a"), store("node-b"));
    a.update::<MeshRegistry, _>(&DocName::Mesh, |m| {
        m.nodes.insert("node-a".into(), NodeEntry::default());
    })
    .unwrap();
    b.update::<MeshRegistry, _>(&DocName::Mesh, |m| {
        m.nodes.insert(
            "node-b".into(),
            NodeEntry {
                name: "b".into(),
                ..NodeEntry::default()
            },
        );
        // Decisions are checked by signature when read, not by author here.
        m.revoked.insert("node-x".into(), Revocation::default());
    })
    .unwrap();
    assert!(sync(&mut b, "node-b", &mut a, "node-a", &DocName::Mesh).is_none());
    let registry: MeshRegistry = a.read(&DocName::Mesh).unwrap();
    assert_eq!(registry.nodes["node-b"].name, "b");
    assert!(registry.revoked.contains_key("node-x"));
    // b renames a: refused, and a's entry stays a's.
    b.update::<MeshRegistry, _>(&DocName::Mesh, |m| {
        m.nodes.get_mut("node-a").unwrap().name = "pwned".into();
    })
    .unwrap();
    let refused = sync(&mut b, "node-b", &mut a, "node-a", &DocName::Mesh).expect("refused");
    assert!(
        refused.to_string().contains("nodes/node-a"),
        "the entry is named: {refused}"
    );
    assert!(
        matches!(refused, SyncRejected::Unauthorized { heard: true, .. }),
        "a answers with what b lacks: {refused:?}"
    );
    let registry: MeshRegistry = a.read(&DocName::Mesh).unwrap();
    assert_eq!(registry.nodes["node-a"].name, "");
    // b adds an entry for a node that does not exist: refused too.
    let mut c = store("node-c");
    let mut d = store("node-b");
    d.update::<MeshRegistry, _>(&DocName::Mesh, |m| {
        m.nodes.insert("node-z".into(), NodeEntry::default());
    })
    .unwrap();
    // c holds nothing of the registry: there is nothing to answer b with (an answer saying c
    // holds nothing would have b send everything again).
    let refused = sync(&mut d, "node-b", &mut c, "node-c", &DocName::Mesh);
    assert!(
        matches!(
            refused,
            Some(SyncRejected::Unauthorized { heard: false, .. })
        ),
        "{refused:?}"
    );
}

#[test]
fn a_peer_whose_changes_are_refused_still_receives_the_others_and_the_conversation_ends() {
    let (mut a, mut b) = (store("node-a"), store("node-b"));
    a.update::<MeshRegistry, _>(&DocName::Mesh, |m| {
        m.nodes.insert("node-a".into(), NodeEntry::default());
    })
    .unwrap();
    assert!(sync(&mut a, "node-a", &mut b, "node-b", &DocName::Mesh).is_none());
    // b renames a in its own copy; a, meanwhile, writes a decision b has not seen.
    b.update::<MeshRegistry, _>(&DocName::Mesh, |m| {
        m.nodes.get_mut("node-a").unwrap().name = "pwned".into();
    })
    .unwrap();
    a.update::<MeshRegistry, _>(&DocName::Mesh, |m| {
        m.revoked.insert(
            "node-x".into(),
            Revocation {
                reason: "lost".into(),
                ..Revocation::default()
            },
        );
    })
    .unwrap();
    // Each side answers every message it receives, refused or not, as a node's replicator
    // does, until neither has anything to say.
    let doc = a.document_id(&DocName::Mesh);
    let send = |from: &mut Store, from_id: &str, to: &mut Store, to_id: &str| {
        let payload = from.sync_generate(&doc, to_id).unwrap()?;
        let outcome = to
            .sync_apply(vec![SyncApply {
                doc: doc.clone(),
                peer: from_id.into(),
                name: Some("mesh".into()),
                payload,
                sender: crdt_store::Sender::Peer,
            }])
            .unwrap();
        Some(outcome.into_iter().next().unwrap().err())
    };
    let (mut refusals, mut quiet) = (0, false);
    for _ in 0..20 {
        let said = [
            send(&mut b, "node-b", &mut a, "node-a"),
            send(&mut a, "node-a", &mut b, "node-b"),
        ];
        for refused in said.iter().flatten().flatten() {
            assert!(
                matches!(refused, SyncRejected::Unauthorized { .. }),
                "{refused}"
            );
            refusals += 1;
        }
        if said.iter().all(Option::is_none) {
            quiet = true;
            break;
        }
    }
    assert!(refusals >= 1, "b's rename was offered and refused");
    assert!(quiet, "a and b kept messaging each other after the refusal");
    let at_b: MeshRegistry = b.read(&DocName::Mesh).unwrap();
    assert_eq!(
        at_b.revoked["node-x"].reason, "lost",
        "a's decision reached b"
    );
    let at_a: MeshRegistry = a.read(&DocName::Mesh).unwrap();
    assert_eq!(at_a.nodes["node-a"].name, "");
}

/// Refuses every version not written by `node-cloud`.
#[derive(Debug)]
struct CloudOnly;

impl WriteRules for CloudOnly {
    fn check_workflow_version(
        &self,
        version: &WorkflowDoc,
        _registry: &crdt_store::MeshRegistry,
    ) -> Result<(), String> {
        if version.updated_by == "node-cloud" {
            Ok(())
        } else {
            Err(format!("{} holds no control role", version.updated_by))
        }
    }
}

#[test]
fn workflow_versions_stand_only_as_the_write_rules_allow() {
    let mut config = StoreConfig::new("mesh", "node-edge");
    config.write_rules = Some(Arc::new(CloudOnly));
    let mut edge = Store::open_in_memory(config).unwrap();
    let (mut cloud, mut rogue) = (store("node-cloud"), store("node-rogue"));
    let name = DocName::workflow("w").unwrap();
    let version = |by: &str, v: u64| WorkflowDoc {
        id: "w".into(),
        version: v,
        updated_by: by.into(),
        updated_ms: v as i64,
        ..WorkflowDoc::default()
    };
    cloud
        .update::<WorkflowDoc, _>(&name, |w| *w = version("node-cloud", 1))
        .unwrap();
    assert!(sync(&mut cloud, "node-cloud", &mut edge, "node-edge", &name).is_none());
    let held: WorkflowDoc = edge.read(&name).unwrap();
    assert_eq!(held.updated_by, "node-cloud");
    // The rogue node takes the cloud's version, writes its own over it, and offers it.
    assert!(sync(&mut cloud, "node-cloud", &mut rogue, "node-rogue", &name).is_none());
    rogue
        .update::<WorkflowDoc, _>(&name, |w| *w = version("node-rogue", 2))
        .unwrap();
    let refused = sync(&mut rogue, "node-rogue", &mut edge, "node-edge", &name).expect("refused");
    assert!(
        refused
            .to_string()
            .contains("node-rogue holds no control role"),
        "{refused}"
    );
    let held: WorkflowDoc = edge.read(&name).unwrap();
    assert_eq!((held.version, held.updated_by.as_str()), (1, "node-cloud"));
}

mod property {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Step {
        /// Honest replica `r` writes its own entry.
        Own { r: usize, value: u8 },
        /// The rogue writes into replica `r`'s entry.
        Forge { r: usize, value: u8 },
        /// Two honest replicas sync.
        Sync { a: usize, b: usize },
        /// The rogue syncs with honest replica `r` (takes what it has, offers what it wrote).
        Rogue { r: usize },
    }

    fn step(replicas: usize) -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => (0..replicas, any::<u8>()).prop_map(|(r, value)| Step::Own { r, value }),
            2 => (0..replicas, any::<u8>()).prop_map(|(r, value)| Step::Forge { r, value }),
            3 => (0..replicas, 0..replicas).prop_map(|(a, b)| Step::Sync { a, b }),
            2 => (0..replicas).prop_map(|r| Step::Rogue { r }),
        ]
    }

    fn id(r: usize) -> String {
        format!("node-{r}")
    }

    /// Syncs two honest replicas both ways until quiet.
    fn settle(a: &mut Store, a_id: &str, b: &mut Store, b_id: &str) {
        assert!(sync(a, a_id, b, b_id, &DocName::Mesh).is_none());
        assert!(sync(b, b_id, a, a_id, &DocName::Mesh).is_none());
    }

    /// A few rounds of messages between an honest replica and the rogue, each way, whatever is
    /// refused. (The two never settle once the rogue holds a forged change: the honest side
    /// can never take the rogue's heads.)
    fn exchange(honest: &mut Store, honest_id: &str, rogue: &mut Store) {
        let doc = honest.document_id(&DocName::Mesh);
        let send = |from: &mut Store, from_id: &str, to: &mut Store, to_id: &str| {
            if let Some(payload) = from.sync_generate(&doc, to_id).unwrap() {
                to.sync_apply(vec![SyncApply {
                    doc: doc.clone(),
                    peer: from_id.into(),
                    name: Some("mesh".into()),
                    payload,
                    sender: crdt_store::Sender::Peer,
                }])
                .unwrap();
            }
        };
        for _ in 0..6 {
            send(honest, honest_id, rogue, "node-rogue");
            send(rogue, "node-rogue", honest, honest_id);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

        /// Honest replicas and a rogue that writes into their entries: whatever the order of
        /// writes and syncs, the honest replicas end with identical registries holding exactly
        /// each node's own last write, and none of the rogue's.
        #[test]
        fn honest_replicas_converge_on_exactly_the_authorised_changes(
            (replicas, steps) in (3usize..=5).prop_flat_map(|n| (Just(n), proptest::collection::vec(step(n), 1..30)))
        ) {
            let mut stores: Vec<Store> = (0..replicas).map(|r| store(&id(r))).collect();
            let mut rogue = store("node-rogue");
            let mut expected: Vec<Option<u8>> = vec![None; replicas];
            for step in &steps {
                match *step {
                    Step::Own { r, value } => {
                        let me = id(r);
                        stores[r]
                            .update::<MeshRegistry, _>(&DocName::Mesh, |m| {
                                m.nodes.entry(me.clone()).or_default().name = format!("v{value}");
                            })
                            .unwrap();
                        expected[r] = Some(value);
                    }
                    Step::Forge { r, value } => {
                        rogue
                            .update::<MeshRegistry, _>(&DocName::Mesh, |m| {
                                m.nodes.entry(id(r)).or_default().name = format!("forged{value}");
                            })
                            .unwrap();
                    }
                    Step::Sync { a, b } if a != b => {
                        let (lo, hi) = (a.min(b), a.max(b));
                        let (left, right) = stores.split_at_mut(hi);
                        settle(&mut left[lo], &id(lo), &mut right[0], &id(hi));
                    }
                    Step::Sync { .. } => {}
                    Step::Rogue { r } => exchange(&mut stores[r], &id(r), &mut rogue),
                }
            }
            for _ in 0..2 {
                for a in 0..replicas {
                    for b in a + 1..replicas {
                        let (left, right) = stores.split_at_mut(b);
                        settle(&mut left[a], &id(a), &mut right[0], &id(b));
                    }
                }
            }
            let registries: Vec<MeshRegistry> = stores
                .iter_mut()
                .map(|s| s.read::<MeshRegistry>(&DocName::Mesh).unwrap())
                .collect();
            for registry in &registries[1..] {
                prop_assert_eq!(registry, &registries[0]);
            }
            for (r, value) in expected.iter().enumerate() {
                let held = registries[0].nodes.get(&id(r)).map(|e| e.name.clone());
                prop_assert_eq!(held, value.map(|v| format!("v{v}")));
            }
            let text = format!("{:?}", registries[0]);
            prop_assert!(!text.contains("forged"), "{}", text);
        }
    }
}
