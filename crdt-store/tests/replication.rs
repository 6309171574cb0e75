//! Replication between stores through the real protocol machine (`mesh::proto::sync`) and the
//! store's replica, with an in-process network of per-link FIFO queues: edits reach peers,
//! concurrent edits converge, reconnects send only what is missing (also after a restart, from
//! the persisted sync state), the share policy keeps results where they belong, and garbage from
//! a peer closes only that peer.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crdt_store::{
    ChangeTime, DocName, MeshRegistry, NodeEntry, RunRecord, RunStatus, Store, StoreConfig, Window,
    WorkflowDoc, WorkflowVersions,
};
use mesh::proto::sync::{
    ApplyRequest, Replica, Replicator, SharePolicy, SyncConfig, SyncIn, SyncOut, serve,
};
use mesh::proto::wire::{CatalogueEntry, Message};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const MESH: &str = "replication-test";

fn config(node: &str) -> StoreConfig {
    let mut config = StoreConfig::new(MESH, node);
    config.change_time = ChangeTime::Zero;
    config.compact_after_chunks = 8;
    config
}

struct Node {
    id: String,
    store: Store,
    sync: Replicator,
}

impl Node {
    fn new(id: &str, store: Store) -> Node {
        let mut node = Node {
            id: id.to_owned(),
            store,
            sync: Replicator::new(id.to_owned(), SyncConfig::default()),
        };
        let entries = node.store.catalogue().unwrap();
        node.sync.handle(SyncIn::LocalDocs(entries), Duration::ZERO);
        node
    }

    fn in_memory(id: &str) -> Node {
        Node::new(id, Store::open_in_memory(config(id)).unwrap())
    }

    /// Edits a typed document and tells the replicator, as the node's change listener does.
    fn edit_workflow(&mut self, id: &str, description: &str) -> DocName {
        let name = DocName::workflow(id).unwrap();
        self.store
            .update::<WorkflowDoc, _>(&name, |w| {
                w.id = id.to_owned();
                w.description = description.to_owned();
                w.version += 1;
            })
            .unwrap();
        name
    }

    fn edit_mesh(&mut self, name: &str) -> DocName {
        let me = self.id.clone();
        self.store
            .update::<MeshRegistry, _>(&DocName::Mesh, |m| {
                m.nodes.insert(
                    me,
                    NodeEntry {
                        name: name.to_owned(),
                        ..NodeEntry::default()
                    },
                );
            })
            .unwrap();
        DocName::Mesh
    }

    /// What the node's change listener would pass on after a local write.
    fn changed(&mut self, name: &DocName) -> SyncIn {
        let entry = self
            .store
            .catalogue()
            .unwrap()
            .into_iter()
            .find(|e| e.name == name.to_string())
            .unwrap();
        SyncIn::LocalChanged(entry)
    }
}

/// A link direction: (from, to).
type Link = (String, String);

/// Nodes and the links between connected pairs; frames flow in order on each link.
struct Net {
    nodes: BTreeMap<String, Node>,
    links: BTreeMap<(String, String), VecDeque<Message>>,
    /// Frames sent per link direction, to count what a reconnect costs.
    bytes: BTreeMap<(String, String), usize>,
    /// Every sync payload delivered, by link direction, when asked for.
    sync_log: Option<Vec<(Link, Vec<u8>)>>,
    /// Virtual time: it moves only when every link is quiet, to the next replicator timer.
    now: Duration,
}

impl Net {
    fn new(nodes: Vec<Node>) -> Net {
        Net {
            nodes: nodes.into_iter().map(|n| (n.id.clone(), n)).collect(),
            links: BTreeMap::new(),
            bytes: BTreeMap::new(),
            sync_log: None,
            now: Duration::ZERO,
        }
    }

    fn connect(&mut self, a: &str, b: &str) {
        self.links.insert((a.into(), b.into()), VecDeque::new());
        self.links.insert((b.into(), a.into()), VecDeque::new());
        self.input(a, SyncIn::PeerUp(b.into()));
        self.input(b, SyncIn::PeerUp(a.into()));
    }

    fn edit_workflow(&mut self, node: &str, id: &str, description: &str) {
        let n = self.nodes.get_mut(node).unwrap();
        let name = n.edit_workflow(id, description);
        let event = n.changed(&name);
        self.input(node, event);
    }

    fn edit_mesh(&mut self, node: &str, text: &str) {
        let n = self.nodes.get_mut(node).unwrap();
        let name = n.edit_mesh(text);
        let event = n.changed(&name);
        self.input(node, event);
    }

    fn disconnect(&mut self, a: &str, b: &str) {
        self.links.remove(&(a.to_owned(), b.to_owned()));
        self.links.remove(&(b.to_owned(), a.to_owned()));
        self.input(a, SyncIn::PeerDown(b.into()));
        self.input(b, SyncIn::PeerDown(a.into()));
    }

    /// Feeds one event and carries out everything it leads to on that node (store work now,
    /// frames onto the links).
    fn input(&mut self, node: &str, event: SyncIn) {
        let now = self.now;
        self.nodes.get_mut(node).unwrap().sync.handle(event, now);
        self.settle(node);
    }

    /// Lets time pass on one node: its due timers fire and what follows is carried out.
    fn tick(&mut self, node: &str) {
        let now = self.now;
        self.nodes.get_mut(node).unwrap().sync.handle_timeout(now);
        self.settle(node);
    }

    /// Carries out what a node's replicator asked for until it asks for nothing more: store
    /// work now, frames onto the links.
    fn settle(&mut self, node: &str) {
        loop {
            let now = self.now;
            let n = self.nodes.get_mut(node).unwrap();
            let ops = n.sync.drain();
            if ops.is_empty() {
                return;
            }
            let (served, failure) = serve(&mut n.store, ops);
            if let Some(e) = failure {
                panic!("the store failed: {e}");
            }
            for answer in served.answers {
                n.sync.handle(answer, now);
            }
            for out in served.network {
                match out {
                    SyncOut::Send(peer, message) => {
                        let key = (node.to_owned(), peer);
                        if let Some(link) = self.links.get_mut(&key) {
                            *self.bytes.entry(key).or_default() += message.encoded_len();
                            link.push_back(message);
                        }
                    }
                    SyncOut::Close(peer, _) => {
                        self.links.remove(&(node.to_owned(), peer.clone()));
                        self.links.remove(&(peer.clone(), node.to_owned()));
                        let n = self.nodes.get_mut(node).unwrap();
                        n.sync.handle(SyncIn::PeerDown(peer.clone()), now);
                        let _ = n.sync.drain();
                        n.store.forget_peer(&peer);
                        self.input(&peer, SyncIn::PeerDown(node.to_owned()));
                    }
                    _ => unreachable!("serve leaves only network outputs"),
                }
            }
        }
    }

    /// Moves time to the earliest replicator timer and fires it; false when none is set.
    fn advance(&mut self) -> bool {
        let next = self
            .nodes
            .iter()
            .filter_map(|(id, n)| Some((n.sync.poll_timeout(self.now)?, id.clone())))
            .min();
        let Some((at, node)) = next else {
            return false;
        };
        self.now = self.now.max(at);
        self.tick(&node);
        true
    }

    /// Delivers frames, one at a time from a link picked by `rng`, until every link is empty.
    fn run(&mut self, rng: &mut StdRng) {
        for _ in 0..1_000_000 {
            let busy: Vec<(String, String)> = self
                .links
                .iter()
                .filter(|(_, q)| !q.is_empty())
                .map(|(k, _)| k.clone())
                .collect();
            if busy.is_empty() {
                if self.advance() {
                    continue;
                }
                return;
            }
            let (from, to) = busy[rng.gen_range(0..busy.len())].clone();
            let message = self
                .links
                .get_mut(&(from.clone(), to.clone()))
                .unwrap()
                .pop_front()
                .unwrap();
            if let (Some(log), Message::Sync { payload, .. }) = (&mut self.sync_log, &message) {
                log.push(((from.clone(), to.clone()), payload.clone()));
            }
            self.input(&to, SyncIn::Received(from, message));
        }
        panic!("the network did not go quiet");
    }

    fn store(&mut self, node: &str) -> &mut Store {
        &mut self.nodes.get_mut(node).unwrap().store
    }

    fn heads(&mut self, node: &str, name: &DocName) -> Option<Vec<automerge::ChangeHash>> {
        let store = self.store(node);
        let id = store.document_id(name);
        store.heads(&id).unwrap()
    }

    fn pending(&self, node: &str, peer: &str) -> Vec<String> {
        self.nodes[node].sync.status(peer).unwrap().pending
    }
}

fn rng() -> StdRng {
    StdRng::seed_from_u64(7)
}

#[test]
fn an_edit_reaches_every_connected_node_and_concurrent_edits_merge() {
    let mut net = Net::new(vec![
        Node::in_memory("a"),
        Node::in_memory("b"),
        Node::in_memory("c"),
    ]);
    net.connect("a", "b");
    net.connect("b", "c");
    net.run(&mut rng());
    let flow = DocName::workflow("flow").unwrap();

    net.edit_workflow("a", "flow", "v1");
    net.run(&mut rng());
    assert_eq!(net.heads("c", &flow), net.heads("a", &flow));

    // Concurrent edits on a and c, to different fields and to the same one.
    net.edit_mesh("a", "alpha");
    net.edit_mesh("c", "gamma");
    net.edit_workflow("a", "flow", "from a");
    net.edit_workflow("c", "flow", "from c");
    net.run(&mut rng());
    for node in ["a", "b", "c"] {
        assert_eq!(
            net.heads(node, &DocName::Mesh),
            net.heads("a", &DocName::Mesh)
        );
        assert_eq!(net.heads(node, &flow), net.heads("a", &flow));
        let mesh: MeshRegistry = net.store(node).read(&DocName::Mesh).unwrap();
        assert_eq!(mesh.nodes["a"].name, "alpha", "{node} lost a's edit");
        assert_eq!(mesh.nodes["c"].name, "gamma", "{node} lost c's edit");
    }
    assert!(net.pending("b", "a").is_empty());
    assert!(net.pending("b", "c").is_empty());
}

/// In a full mesh the writer's own push reaches everyone; the others only probe each other
/// (heads and a Bloom filter), so the change crosses no link between two of them.
#[test]
fn a_relayed_change_does_not_cross_links_it_already_reached() {
    let ids = ["a", "b", "c", "d"];
    let mut net = Net::new(ids.iter().map(|id| Node::in_memory(id)).collect());
    for (i, a) in ids.iter().enumerate() {
        for b in &ids[i + 1..] {
            net.connect(a, b);
        }
    }
    net.run(&mut rng());
    net.bytes.clear();
    // Incompressible, so that a copy of the change cannot hide in a small frame.
    let mut noise = StdRng::seed_from_u64(1);
    let text: String = (0..20_000)
        .map(|_| char::from(b'a' + noise.gen_range(0..26)))
        .collect();
    net.edit_workflow("a", "flow", &text);
    net.run(&mut rng());
    let flow = DocName::workflow("flow").unwrap();
    for id in ids {
        assert_eq!(net.heads(id, &flow), net.heads("a", &flow), "{id} differs");
        for peer in ids {
            if peer != id {
                assert!(
                    net.pending(id, peer).is_empty(),
                    "{id} still waits for {peer}"
                );
            }
        }
    }
    for ((from, to), bytes) in &net.bytes {
        if from != "a" && to != "a" {
            assert!(*bytes < 1_000, "{bytes} bytes from {from} to {to}");
        }
    }
}

/// `count` nodes `n00`, `n01`, ... that each wrote their own registry entry, connected to
/// `n00` and synced: the registry has a head per node.
fn registry_writers(count: usize) -> (Vec<String>, Net) {
    let ids: Vec<String> = (0..count).map(|i| format!("n{i:02}")).collect();
    let mut net = Net::new(ids.iter().map(|id| Node::in_memory(id)).collect());
    for id in &ids {
        net.edit_mesh(id, id);
    }
    for id in &ids[1..] {
        net.connect("n00", id);
    }
    net.run(&mut rng());
    (ids, net)
}

/// Every node writes its own registry entry, so a fleet's registry has a head per node until
/// one node folds them into one; the merge reaches the others like any change.
#[test]
fn many_heads_are_merged_into_one_that_replicates() {
    let (ids, mut net) = registry_writers(12);
    let heads = net.heads("n00", &DocName::Mesh).unwrap();
    assert!(heads.len() > crdt_store::MAX_HEADS, "{} heads", heads.len());
    let store = net.store("n01");
    assert_eq!(store.node_zones().unwrap().len(), 12);
    assert!(store.merge_heads::<MeshRegistry>(&DocName::Mesh).unwrap());
    assert!(!store.merge_heads::<MeshRegistry>(&DocName::Mesh).unwrap());
    let event = net.nodes.get_mut("n01").unwrap().changed(&DocName::Mesh);
    net.input("n01", event);
    net.run(&mut rng());
    for id in &ids {
        let heads = net.heads(id, &DocName::Mesh).unwrap();
        assert_eq!(heads.len(), 1, "{id} has {} heads", heads.len());
        assert_eq!(net.store(id).node_zones().unwrap().len(), 12, "{id}");
    }
}

/// `node` moves its own registry entry to `zone`, and the change is announced.
fn move_zone(net: &mut Net, node: &str, zone: &str) {
    let n = net.nodes.get_mut(node).unwrap();
    let me = n.id.clone();
    n.store
        .update::<MeshRegistry, _>(&DocName::Mesh, |m| {
            m.nodes.get_mut(&me).unwrap().zone = zone.to_owned();
        })
        .unwrap();
    let event = n.changed(&DocName::Mesh);
    net.input(node, event);
}

/// `node` writes its first registry entry, in `zone`, and the change is announced.
fn register(net: &mut Net, node: &str, zone: &str) {
    let n = net.nodes.get_mut(node).unwrap();
    let me = n.id.clone();
    n.store
        .update::<MeshRegistry, _>(&DocName::Mesh, |m| {
            let entry = NodeEntry {
                name: me.clone(),
                zone: zone.to_owned(),
                ..NodeEntry::default()
            };
            m.write_entry(&me, entry, 0);
        })
        .unwrap();
    let event = n.changed(&DocName::Mesh);
    net.input(node, event);
}

/// New entries arriving after the zones were read are read alone (the rest is carried
/// forward): what routing gets must equal a full read of the registry every time.
#[test]
fn zones_of_new_entries_match_a_full_read_of_the_registry() {
    let ids: Vec<String> = (0..8).map(|i| format!("n{i:02}")).collect();
    let mut net = Net::new(ids.iter().map(|id| Node::in_memory(id)).collect());
    register(&mut net, "n00", "site-0");
    let mesh = net.store("n00").document_id(&DocName::Mesh);
    for (i, id) in ids.iter().enumerate().skip(1) {
        assert_eq!(net.store("n00").node_zones().unwrap().len(), i);
        register(&mut net, id, &format!("site-{}", i % 3));
        net.connect("n00", id);
        net.run(&mut rng());
        let full = crdt_store::docs::registry_zones(&net.store("n00").automerge(&mesh).unwrap());
        assert_eq!(full.len(), i + 1);
        assert_eq!(net.store("n00").node_zones().unwrap(), full, "after {id}");
    }
}

#[test]
fn zones_follow_the_registry_through_merges_renames_and_moves() {
    // Enough writers for the registry to have heads to merge.
    let (ids, mut net) = registry_writers(10);
    let zone_of = |net: &mut Net, node: &str, of: &str| {
        net.store(node).node_zones().unwrap().get(of).cloned()
    };
    assert_eq!(zone_of(&mut net, "n09", "n01").as_deref(), Some(""));
    // Changes that set no zone (a merge, a rename) keep what was read; one that does is seen,
    // whether it arrives by sync or is written here.
    assert!(
        net.store("n00")
            .merge_heads::<MeshRegistry>(&DocName::Mesh)
            .unwrap()
    );
    let event = net.nodes.get_mut("n00").unwrap().changed(&DocName::Mesh);
    net.input("n00", event);
    net.run(&mut rng());
    assert_eq!(net.heads("n09", &DocName::Mesh).unwrap().len(), 1);
    assert_eq!(zone_of(&mut net, "n09", "n01").as_deref(), Some(""));
    net.edit_mesh("n01", "renamed");
    net.run(&mut rng());
    assert_eq!(zone_of(&mut net, "n09", "n01").as_deref(), Some(""));
    move_zone(&mut net, "n01", "site-2/line-1");
    net.run(&mut rng());
    for id in &ids {
        assert_eq!(
            zone_of(&mut net, id, "n01").as_deref(),
            Some("site-2/line-1"),
            "{id}"
        );
    }
    move_zone(&mut net, "n09", "site-3");
    assert_eq!(zone_of(&mut net, "n09", "n09").as_deref(), Some("site-3"));
}

#[test]
fn a_reconnect_between_nodes_in_sync_costs_two_summaries() {
    let mut net = Net::new(vec![Node::in_memory("a"), Node::in_memory("b")]);
    net.connect("a", "b");
    for i in 0..20 {
        net.edit_workflow("a", &format!("w{i}"), "x");
    }
    net.run(&mut rng());
    net.disconnect("a", "b");
    net.bytes.clear();
    net.connect("a", "b");
    net.run(&mut rng());
    let total: usize = net.bytes.values().sum();
    assert!(total < 100, "{total} bytes for a reconnect in sync");
}

#[test]
fn a_restarted_node_gets_only_what_it_missed_from_the_persisted_sync_state() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.redb");
    let mut net = Net::new(vec![
        Node::in_memory("a"),
        Node::new("b", Store::open(&path, config("b")).unwrap()),
    ]);
    net.connect("a", "b");
    let big = "x".repeat(200);
    for i in 0..200 {
        net.edit_workflow("a", "flow", &format!("{big}{i}"));
    }
    net.run(&mut rng());
    let flow = DocName::workflow("flow").unwrap();
    assert_eq!(net.heads("b", &flow), net.heads("a", &flow));

    // b stops; a changes the document a little; b restarts from its file.
    net.disconnect("a", "b");
    let b = net.nodes.remove("b").unwrap();
    drop(b);
    net.edit_workflow("a", "flow", "one more");
    net.nodes.insert(
        "b".into(),
        Node::new("b", Store::open(&path, config("b")).unwrap()),
    );
    net.bytes.clear();
    net.connect("a", "b");
    net.run(&mut rng());
    assert_eq!(net.heads("b", &flow), net.heads("a", &flow));
    let sent: usize = net.bytes.values().sum();
    // The history is ~200 changes of >200 bytes; only the one new change may cross.
    assert!(sent < 3_000, "{sent} bytes to catch up one change");
}

/// A node that holds nothing of a document gets the holder's stored chunks as they are (a
/// snapshot and the changes since): the holder answers without loading the document (its message then carries no Bloom filter, which
/// a message generated from the loaded document always does), and the session goes on normally
/// from there in both directions.
#[test]
fn a_node_holding_nothing_gets_the_stored_snapshot_and_the_session_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.redb");
    let flow = DocName::workflow("flow").unwrap();
    {
        let mut a = Node::new("a", Store::open(&path, config("a")).unwrap());
        for i in 0..300 {
            a.edit_workflow("flow", &format!("edit {i}"));
        }
        a.store.compact(&flow.to_string()).unwrap();
        for i in 300..303 {
            a.edit_workflow("flow", &format!("edit {i}"));
        }
    }
    // Reopened: nothing decoded in memory.
    let mut net = Net::new(vec![
        Node::new("a", Store::open(&path, config("a")).unwrap()),
        Node::in_memory("b"),
    ]);
    let snapshot = {
        let store = &net.nodes["a"].store;
        let id = store.document_id(&flow);
        let chunks = store
            .load_range(
                &crdt_store::samod_core::StorageKey::from_parts([
                    id.to_string().as_str(),
                    "snapshot",
                ])
                .unwrap(),
            )
            .unwrap();
        assert_eq!(chunks.len(), 1, "compacted into one snapshot");
        chunks.into_values().next().unwrap()
    };
    net.sync_log = Some(Vec::new());
    net.connect("a", "b");
    net.run(&mut rng());
    assert_eq!(net.heads("b", &flow), net.heads("a", &flow));
    let whole: Vec<automerge::sync::Message> = net
        .sync_log
        .take()
        .unwrap()
        .into_iter()
        .filter(|(link, _)| link == &("a".to_owned(), "b".to_owned()))
        .map(|(_, payload)| automerge::sync::Message::decode(&payload).unwrap())
        .filter(|m| !m.changes.is_empty())
        .collect();
    assert_eq!(whole.len(), 1, "the document crossed once");
    // The snapshot, then the three changes made after it.
    let chunks: Vec<&[u8]> = whole[0].changes.iter().collect();
    assert_eq!(chunks.len(), 1);
    assert!(chunks[0].starts_with(&snapshot) && chunks[0].len() > snapshot.len());
    assert!(
        whole[0].have.is_empty(),
        "answered without loading the document"
    );
    let read = net.store("b").read::<WorkflowDoc>(&flow).unwrap();
    assert_eq!(read.description, "edit 302");

    // The sessions go on: an edit on either side reaches the other, and only the edit crosses.
    net.bytes.clear();
    net.edit_workflow("a", "flow", "from a");
    net.run(&mut rng());
    assert_eq!(net.heads("b", &flow), net.heads("a", &flow));
    net.edit_workflow("b", "flow", "from b");
    net.run(&mut rng());
    assert_eq!(net.heads("b", &flow), net.heads("a", &flow));
    let read = net.store("a").read::<WorkflowDoc>(&flow).unwrap();
    assert_eq!(read.description, "from b");
    let sent: usize = net.bytes.values().sum();
    // Each edit carries the whole definition: it is one atomic value.
    assert!(sent < 4_000, "{sent} bytes for two small edits");
}

/// One sync batch may change more documents than the store keeps decoded: the change listener
/// (which announces changes to other peers and to the node's own watchers) still hears of each.
#[test]
fn every_document_of_a_batch_wider_than_the_cache_reaches_the_change_listener() {
    let docs = crdt_store::DOC_CACHE_CAP + 16;
    let mut a = Store::open_in_memory(config("a")).unwrap();
    let mut b = Store::open_in_memory(config("b")).unwrap();
    let heard: Arc<Mutex<BTreeMap<[u8; 16], [u8; 16]>>> = Arc::default();
    let listener = heard.clone();
    b.set_change_listener(move |entry| {
        listener.lock().unwrap().insert(entry.doc, entry.digest);
    });
    for i in 0..docs {
        let name = DocName::workflow(&format!("w{i}")).unwrap();
        a.update::<WorkflowDoc, _>(&name, |w| w.description = format!("document {i}"))
            .unwrap();
    }
    let catalogue = a.catalogue().unwrap();
    // Each round is one batch per side: b asks about every document, a answers them all.
    for _ in 0..4 {
        let mut to_a = Vec::new();
        for entry in &catalogue {
            if let Some(payload) = b.generate(&entry.doc, "a").unwrap() {
                to_a.push(ApplyRequest {
                    doc: entry.doc,
                    peer: "b".into(),
                    name: None,
                    payload,
                });
            }
        }
        assert!(a.apply(to_a).unwrap().iter().all(Result::is_ok));
        let mut to_b = Vec::new();
        for entry in &catalogue {
            if let Some(payload) = a.generate(&entry.doc, "b").unwrap() {
                to_b.push(ApplyRequest {
                    doc: entry.doc,
                    peer: "a".into(),
                    name: Some(entry.name.clone()),
                    payload,
                });
            }
        }
        assert!(b.apply(to_b).unwrap().iter().all(Result::is_ok));
    }
    assert_eq!(b.catalogue().unwrap(), catalogue, "b holds what a holds");
    let expected: BTreeMap<[u8; 16], [u8; 16]> =
        catalogue.iter().map(|e| (e.doc, e.digest)).collect();
    assert_eq!(*heard.lock().unwrap(), expected);
}

/// Every message of `from` about the documents in `catalogue` that it has something to say
/// about, as one batch for `to`.
fn messages(
    from: &mut Store,
    sender: &str,
    to: &str,
    catalogue: &[CatalogueEntry],
) -> Vec<ApplyRequest> {
    catalogue
        .iter()
        .filter_map(|entry| {
            let payload = from.generate(&entry.doc, to).unwrap()?;
            Some(ApplyRequest {
                doc: entry.doc,
                peer: sender.into(),
                name: Some(entry.name.clone()),
                payload,
            })
        })
        .collect()
}

/// Syncs `a` and `b` on the documents in `catalogue` until neither has anything to say.
fn sync_pair(a: (&mut Store, &str), b: (&mut Store, &str), catalogue: &[CatalogueEntry]) {
    let ((a, a_id), (b, b_id)) = (a, b);
    for _ in 0..8 {
        let to_b = messages(a, a_id, b_id, catalogue);
        let to_a = messages(b, b_id, a_id, catalogue);
        if to_a.is_empty() && to_b.is_empty() {
            return;
        }
        assert!(b.apply(to_b).unwrap().iter().all(Result::is_ok));
        assert!(a.apply(to_a).unwrap().iter().all(Result::is_ok));
    }
    panic!("{a_id} and {b_id} still talking after 8 rounds");
}

/// b holds what a1 holds: a document `shared` and `others` more; a2 holds `shared` too, and
/// each pair has synced, so the next edits travel as sync messages carrying changes.
struct TwoWriters {
    a1: Store,
    a2: Store,
    b: Store,
    shared: DocName,
    catalogue: Vec<CatalogueEntry>,
    shared_only: Vec<CatalogueEntry>,
}

impl TwoWriters {
    fn new(others: usize) -> TwoWriters {
        let mut a1 = Store::open_in_memory(config("a1")).unwrap();
        let mut a2 = Store::open_in_memory(config("a2")).unwrap();
        let mut b = Store::open_in_memory(config("b")).unwrap();
        let shared = DocName::workflow("shared").unwrap();
        for i in 0..others {
            let name = DocName::workflow(&format!("w{i}")).unwrap();
            a1.update::<WorkflowDoc, _>(&name, |w| w.description = "first".into())
                .unwrap();
        }
        a1.update::<WorkflowDoc, _>(&shared, |w| w.description = "first".into())
            .unwrap();
        let catalogue = a1.catalogue().unwrap();
        let shared_only: Vec<CatalogueEntry> = catalogue
            .iter()
            .filter(|e| e.name == shared.to_string())
            .cloned()
            .collect();
        sync_pair((&mut a1, "a1"), (&mut b, "b"), &catalogue);
        sync_pair((&mut a1, "a1"), (&mut a2, "a2"), &shared_only);
        sync_pair((&mut a2, "a2"), (&mut b, "b"), &shared_only);
        TwoWriters {
            a1,
            a2,
            b,
            shared,
            catalogue,
            shared_only,
        }
    }

    /// Concurrent edits of `shared` on a1 and a2 (a1 edits every other document too); a1's
    /// messages to b, `shared`'s first, and a2's.
    fn concurrent_edits(&mut self) -> (Vec<ApplyRequest>, Vec<ApplyRequest>) {
        for entry in &self.catalogue {
            let name: DocName = entry.name.parse().unwrap();
            self.a1
                .update::<WorkflowDoc, _>(&name, |w| w.description = "from a1".into())
                .unwrap();
        }
        self.a2
            .update::<WorkflowDoc, _>(&self.shared, |w| w.trigger = "from a2".into())
            .unwrap();
        let mut from_a1 = messages(&mut self.a1, "a1", "b", &self.catalogue);
        assert_eq!(from_a1.len(), self.catalogue.len(), "a1 sends every edit");
        let first = from_a1
            .iter()
            .position(|m| m.name.as_deref() == Some(self.shared.to_string().as_str()))
            .unwrap();
        let message = from_a1.remove(first);
        from_a1.insert(0, message);
        let from_a2 = messages(&mut self.a2, "a2", "b", &self.shared_only);
        assert_eq!(from_a2.len(), 1);
        (from_a1, from_a2)
    }

    fn assert_b_holds_both_edits(&mut self) {
        let id = self.b.document_id(&self.shared);
        let mut expected = self.a1.automerge(&id).unwrap();
        expected
            .merge(&mut self.a2.automerge(&id).unwrap())
            .unwrap();
        let mut expected = expected.get_heads();
        expected.sort();
        let mut held = self.b.heads(&id).unwrap().unwrap();
        held.sort();
        assert_eq!(held, expected, "both edits are held");
        // Concurrent versions of a definition stand side by side, each whole.
        let read = self.b.read::<WorkflowVersions>(&self.shared).unwrap();
        let mut versions: Vec<(&str, &str)> = read
            .versions
            .iter()
            .map(|v| (v.description.as_str(), v.trigger.as_str()))
            .collect();
        versions.sort();
        assert_eq!(versions, [("first", "from a2"), ("from a1", "")]);
    }
}

/// Two messages about one document in a batch that loads more documents between them than the
/// store keeps decoded: the second must land on the document the first changed, not on the
/// copy on disk (the batch's transaction is not committed yet), or the first's change would
/// be missing from memory and the heads index while its sender believes it delivered.
#[test]
fn a_document_changed_early_in_a_batch_wider_than_the_cache_keeps_that_change() {
    let mut net = TwoWriters::new(crdt_store::DOC_CACHE_CAP + 16);
    let (mut batch, from_a2) = net.concurrent_edits();
    batch.extend(from_a2);
    assert!(net.b.apply(batch).unwrap().iter().all(Result::is_ok));
    net.assert_b_holds_both_edits();
}

/// The same after a refused message between the two: the document is read again as the
/// batch left it, not as it is on disk.
#[test]
fn a_refused_message_between_two_good_ones_loses_neither() {
    let mut net = TwoWriters::new(0);
    let (mut batch, from_a2) = net.concurrent_edits();
    let garbage = ApplyRequest {
        payload: b"not a sync message".to_vec(),
        peer: "stranger".into(),
        ..batch[0].clone()
    };
    batch.push(garbage);
    batch.extend(from_a2);
    let outcomes = net.b.apply(batch).unwrap();
    assert!(outcomes[0].is_ok() && outcomes[2].is_ok(), "{outcomes:?}");
    assert!(outcomes[1].as_ref().unwrap_err().peer_at_fault);
    net.assert_b_holds_both_edits();
}

/// Two peers' first messages about a document new here, in one batch: the first names it,
/// and the second (whose sender may already have named it) finds the name this batch wrote.
#[test]
fn a_document_named_earlier_in_a_batch_is_known_to_the_rest_of_it() {
    let mut net = TwoWriters::new(0);
    let mut c = Store::open_in_memory(config("c")).unwrap();
    let mut first = messages(&mut net.a1, "a1", "c", &net.shared_only);
    let mut second = messages(&mut net.a2, "a2", "c", &net.shared_only);
    assert!(first[0].name.is_some());
    second[0].name = None;
    first.append(&mut second);
    let outcomes = c.apply(first).unwrap();
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
}

fn record(node: &str, run: usize) -> RunRecord {
    RunRecord {
        run_id: format!("{node}-{run}"),
        workflow: "flow".into(),
        workflow_version: 1,
        node: node.into(),
        started_ms: 1_795_478_400_000,
        finished_ms: 1_795_478_400_000 + run as i64,
        status: RunStatus::Succeeded,
        ..RunRecord::default()
    }
}

#[test]
fn results_stay_with_their_owner_until_it_has_an_aggregator() {
    let mut net = Net::new(vec![
        Node::in_memory("a"),
        Node::in_memory("agg"),
        Node::in_memory("c"),
    ]);
    net.connect("a", "agg");
    net.connect("a", "c");
    net.connect("agg", "c");
    let a = net.nodes.get_mut("a").unwrap();
    a.store.append_results(&[record("a", 1)]).unwrap();
    a.store.apply_pending(usize::MAX).unwrap();
    let window = Window::containing(1_795_478_400_000, 60);
    let results = DocName::results("a", window).unwrap();
    let event = a.changed(&results);
    net.input("a", event);
    net.run(&mut rng());
    assert_eq!(net.heads("agg", &results), None);
    assert_eq!(net.heads("c", &results), None);

    // Every node learns that agg aggregates a's zone.
    let mut policy = SharePolicy::default();
    for node in ["a", "agg", "c"] {
        policy.zone_of.insert(node.into(), "site".into());
    }
    policy.aggregator_of.insert("site".into(), "agg".into());
    for node in ["a", "agg", "c"] {
        net.input(node, SyncIn::Policy(policy.clone()));
    }
    net.run(&mut rng());
    assert_eq!(net.heads("agg", &results), net.heads("a", &results));
    assert_eq!(
        net.heads("c", &results),
        None,
        "c is neither owner nor aggregator"
    );
    let at_agg = net.store("agg").results(&Default::default()).unwrap();
    assert_eq!(at_agg, vec![record("a", 1)]);
}

#[test]
fn garbage_from_a_peer_closes_that_peer_only() {
    let mut net = Net::new(vec![
        Node::in_memory("a"),
        Node::in_memory("b"),
        Node::in_memory("c"),
    ]);
    net.connect("a", "b");
    net.connect("a", "c");
    net.run(&mut rng());
    net.edit_workflow("a", "flow", "v1");
    net.run(&mut rng());
    let flow = DocName::workflow("flow").unwrap();
    let doc: [u8; 16] = net.nodes["a"]
        .store
        .document_id(&flow)
        .as_bytes()
        .try_into()
        .unwrap();
    net.input(
        "a",
        SyncIn::Received(
            "b".into(),
            Message::Sync {
                doc,
                name: None,
                payload: vec![0x42, 0xff, 0x00, 0x13],
            },
        ),
    );
    assert!(
        net.nodes["a"].sync.status("b").is_none(),
        "b was not closed"
    );
    // c is still served.
    net.edit_workflow("a", "flow", "v2");
    net.run(&mut rng());
    assert_eq!(net.heads("c", &flow), net.heads("a", &flow));
    assert_eq!(net.heads("a", &flow).unwrap().len(), 1);
}

#[derive(Debug, Clone)]
enum Step {
    Edit { node: usize, doc: usize, text: u8 },
    Toggle { a: usize, b: usize },
    Deliver { seed: u64 },
    Cold { node: usize, doc: usize },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..3usize, 0..3usize, any::<u8>()).prop_map(|(node, doc, text)| Step::Edit { node, doc, text }),
        1 => (0..3usize, 0..3usize).prop_map(|(a, b)| Step::Toggle { a, b }),
        2 => any::<u64>().prop_map(|seed| Step::Deliver { seed }),
        1 => (0..3usize, 0..3usize).prop_map(|(node, doc)| Step::Cold { node, doc }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Random edits, random partial deliveries and random disconnects; once everyone is
    /// connected again and the network is quiet, every replica holds identical heads.
    #[test]
    fn replicas_converge_whatever_the_schedule(steps in proptest::collection::vec(step(), 1..40)) {
        let ids = ["a", "b", "c"];
        let mut net = Net::new(ids.iter().map(|id| Node::in_memory(id)).collect());
        for (i, a) in ids.iter().enumerate() {
            for b in &ids[i + 1..] {
                net.connect(a, b);
            }
        }
        for step in steps {
            match step {
                Step::Edit { node, doc, text } => {
                    if doc == 0 {
                        net.edit_mesh(ids[node], &format!("{text}"));
                    } else {
                        net.edit_workflow(ids[node], &format!("w{doc}"), &format!("{}-{text}", ids[node]));
                    }
                }
                Step::Toggle { a, b } if a != b => {
                    let key = (ids[a].to_owned(), ids[b].to_owned());
                    if net.links.contains_key(&key) {
                        net.disconnect(ids[a], ids[b]);
                    } else {
                        net.connect(ids[a], ids[b]);
                    }
                }
                Step::Toggle { .. } => {}
                Step::Cold { node, doc } => {
                    // One snapshot, nothing decoded: the store answers a peer that holds
                    // nothing from the snapshot without loading the document.
                    let name = if doc == 0 { DocName::Mesh } else { DocName::workflow(&format!("w{doc}")).unwrap() };
                    let store = net.store(ids[node]);
                    if store.compact(&name.to_string()).is_ok() {
                        store.evict(&name.to_string()).unwrap();
                    }
                }
                Step::Deliver { seed } => {
                    // Deliver some frames, not necessarily all.
                    let mut rng = StdRng::seed_from_u64(seed);
                    for _ in 0..rng.gen_range(0..30) {
                        let busy: Vec<_> = net.links.iter().filter(|(_, q)| !q.is_empty()).map(|(k, _)| k.clone()).collect();
                        if busy.is_empty() { break; }
                        let (from, to) = busy[rng.gen_range(0..busy.len())].clone();
                        let m = net.links.get_mut(&(from.clone(), to.clone())).unwrap().pop_front().unwrap();
                        net.input(&to, SyncIn::Received(from, m));
                    }
                }
            }
        }
        for (i, a) in ids.iter().enumerate() {
            for b in &ids[i + 1..] {
                if !net.links.contains_key(&(a.to_string(), b.to_string())) {
                    net.connect(a, b);
                }
            }
        }
        net.run(&mut rng());
        let names = [DocName::Mesh, DocName::workflow("w1").unwrap(), DocName::workflow("w2").unwrap()];
        for name in &names {
            let reference = net.heads("a", name);
            for id in ids {
                prop_assert_eq!(net.heads(id, name), reference.clone(), "{} differs on {}", name, id);
            }
        }
        for a in ids {
            for b in ids {
                if a != b {
                    prop_assert!(net.pending(a, b).is_empty(), "{a} still waits for {b}: {:?}", net.pending(a, b));
                }
            }
        }
    }
}
