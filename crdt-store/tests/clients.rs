//! What a store takes from a client of the WebSocket endpoint (an automerge-repo `Repo` with
//! a random actor), by the sender it is given: a reader changes nothing; a writing client
//! changes workflows only, never as Automerge Text, and only through the vouch, whose signed
//! version is what stands; a refusal stores nothing.

use std::sync::Arc;

use automerge::sync::{self, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{AutoCommit, ObjType, ROOT, ReadDoc};
use crdt_store::{
    DocName, MeshRegistry, NodeEntry, SESSION_PEER_PREFIX, Sender, Store, StoreConfig, SyncApply,
    SyncRejected, Vouch, WorkflowDoc,
};

const PEER: &str = "session:1";

fn node() -> Store {
    Store::open_in_memory(StoreConfig::new("mesh", "node")).unwrap()
}

fn workflow(store: &mut Store) -> DocName {
    let name = DocName::workflow("line").unwrap();
    store
        .update::<WorkflowDoc, _>(&name, |w| {
            w.version = 1;
            w.description = "base".into();
            w.trigger = "manual".into();
            w.updated_by = "node".into();
        })
        .unwrap();
    name
}

/// The client's copy of a document the node holds, written by an actor of its own.
fn client_copy(store: &mut Store, name: &DocName) -> AutoCommit {
    let mut doc = store.automerge(&store.document_id(name)).unwrap().fork();
    doc.set_actor(automerge::ActorId::random());
    doc
}

/// Syncs the client's document to the node until neither has more to say; the node's first
/// refusal, if any.
fn push(
    client: &mut AutoCommit,
    node: &mut Store,
    name: &DocName,
    sender: &Sender,
) -> Option<SyncRejected> {
    let doc = node.document_id(name);
    let mut state = sync::State::new();
    for _ in 0..16 {
        let mut quiet = true;
        if let Some(message) = client.sync().generate_sync_message(&mut state) {
            quiet = false;
            let outcome = node
                .sync_apply(vec![SyncApply {
                    doc: doc.clone(),
                    peer: PEER.into(),
                    name: None,
                    payload: message.encode(),
                    sender: sender.clone(),
                }])
                .unwrap();
            if let Some(Err(refused)) = outcome.into_iter().next() {
                return Some(refused);
            }
        }
        if let Some(answer) = node.sync_generate(&doc, PEER).unwrap() {
            quiet = false;
            client
                .sync()
                .receive_sync_message(&mut state, sync::Message::decode(&answer).unwrap())
                .unwrap();
        }
        if quiet {
            return None;
        }
    }
    panic!("the sync did not settle");
}

/// Writes a new definition the way a JavaScript client does: one string value (or Text).
fn write_definition(client: &mut AutoCommit, description: &str, as_text: bool) {
    let text = client
        .get(ROOT, "definition")
        .unwrap()
        .and_then(|(v, _)| v.into_string().ok())
        .expect("the definition is a string");
    let mut definition: serde_json::Value = serde_json::from_str(&text).unwrap();
    definition["description"] = description.into();
    definition["version"] = 2.into();
    let text = definition.to_string();
    if as_text {
        let obj = client
            .put_object(ROOT, "definition", ObjType::Text)
            .unwrap();
        client.splice_text(&obj, 0, 0, &text).unwrap();
    } else {
        client.put(ROOT, "definition", text).unwrap();
    }
}

fn vouching(by: &'static str) -> Vouch {
    Arc::new(move |written: &WorkflowDoc, standing: &[WorkflowDoc]| {
        let highest = standing.iter().map(|v| v.version).max().unwrap_or(0);
        Ok(WorkflowDoc {
            updated_by: by.into(),
            version: written.version.max(highest + 1),
            ..written.clone()
        })
    })
}

#[test]
fn a_reader_changes_nothing() {
    let mut node = node();
    let name = workflow(&mut node);
    let mut client = client_copy(&mut node, &name);
    write_definition(&mut client, "a reader's edit", false);
    let refused = push(&mut client, &mut node, &name, &Sender::Reader).expect("refused");
    assert!(
        matches!(&refused, SyncRejected::Unauthorized { reason, .. } if reason.contains("may read")),
        "{refused}"
    );
    assert_eq!(node.read::<WorkflowDoc>(&name).unwrap().description, "base");
}

#[test]
fn a_writing_client_stands_behind_the_nodes_signed_version() {
    let mut node = node();
    let name = workflow(&mut node);
    let mut client = client_copy(&mut node, &name);
    write_definition(&mut client, "a client's edit", false);
    let sender = Sender::Client(vouching("node"));
    assert_eq!(push(&mut client, &mut node, &name, &sender), None);
    let standing = node.read::<WorkflowDoc>(&name).unwrap();
    assert_eq!(standing.description, "a client's edit");
    assert_eq!(standing.updated_by, "node", "the vouched version stands");
    assert_eq!(standing.version, 2);
    // The client learns of the node's version: one value, no conflict.
    let mut state = sync::State::new();
    let doc = node.document_id(&name);
    for _ in 0..8 {
        if let Some(m) = node.sync_generate(&doc, "session:2").unwrap() {
            client
                .sync()
                .receive_sync_message(&mut state, sync::Message::decode(&m).unwrap())
                .unwrap();
        }
        match client.sync().generate_sync_message(&mut state) {
            Some(m) => {
                node.sync_apply(vec![SyncApply {
                    doc: doc.clone(),
                    peer: "session:2".into(),
                    name: None,
                    payload: m.encode(),
                    sender: Sender::Reader,
                }])
                .unwrap();
            }
            None => break,
        }
    }
    assert_eq!(client.get_all(ROOT, "definition").unwrap().len(), 1);
}

#[test]
fn a_version_the_node_does_not_vouch_for_is_not_stored() {
    let mut node = node();
    let name = workflow(&mut node);
    let mut client = client_copy(&mut node, &name);
    write_definition(&mut client, "refused", false);
    let sender = Sender::Client(Arc::new(|_: &WorkflowDoc, _: &[WorkflowDoc]| {
        Err("steps form a cycle".to_owned())
    }));
    let refused = push(&mut client, &mut node, &name, &sender).expect("refused");
    assert!(
        refused.to_string().contains("steps form a cycle"),
        "{refused}"
    );
    assert_eq!(node.read::<WorkflowDoc>(&name).unwrap().description, "base");
}

#[test]
fn a_definition_written_as_text_is_refused() {
    let mut node = node();
    let name = workflow(&mut node);
    let mut client = client_copy(&mut node, &name);
    write_definition(&mut client, "as text", true);
    let refused = push(
        &mut client,
        &mut node,
        &name,
        &Sender::Client(vouching("node")),
    )
    .expect("refused");
    assert!(refused.to_string().contains("not readable"), "{refused}");
    assert_eq!(node.read::<WorkflowDoc>(&name).unwrap().description, "base");
}

#[test]
fn clients_change_workflows_only() {
    let mut node = node();
    node.update::<MeshRegistry, _>(&DocName::Mesh, |m| {
        m.write_entry("node", NodeEntry::default(), 1)
    })
    .unwrap();
    let mut client = client_copy(&mut node, &DocName::Mesh);
    let nodes = client.get(ROOT, "nodes").unwrap().unwrap().1;
    client.put_object(&nodes, "intruder", ObjType::Map).unwrap();
    let refused = push(
        &mut client,
        &mut node,
        &DocName::Mesh,
        &Sender::Client(vouching("node")),
    )
    .expect("refused");
    assert!(
        refused.to_string().contains("written by nodes only"),
        "{refused}"
    );
    assert!(
        !node
            .read::<MeshRegistry>(&DocName::Mesh)
            .unwrap()
            .nodes
            .contains_key("intruder")
    );
    // The session's sync state was never written to disk: clients come and go.
    assert!(PEER.starts_with(SESSION_PEER_PREFIX));
    let doc = node.document_id(&DocName::Mesh);
    assert_eq!(node.load_sync_state(&doc, PEER).unwrap(), None);
}
