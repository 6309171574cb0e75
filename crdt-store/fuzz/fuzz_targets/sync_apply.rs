//! Sync messages arrive from peers and from clients of the WebSocket endpoint as untrusted
//! bytes and go straight to `Store::sync_apply`. Whatever the bytes, applying must give an outcome per message (a
//! rejection naming what was wrong, never a panic), the store must keep working, and documents
//! already stored must read back unchanged unless the message was a valid sync message.
#![no_main]

use crdt_store::{DocName, Sender, Store, StoreConfig, SyncApply, WorkflowDoc};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut store = Store::open_in_memory(StoreConfig::new("fuzz", "node")).unwrap();
    let held = DocName::workflow("held").unwrap();
    let other = DocName::workflow("other").unwrap();
    for name in [&held, &other] {
        store
            .update::<WorkflowDoc, _>(name, |wf| wf.version = 1)
            .unwrap();
    }
    let fresh = DocName::workflow("fresh").unwrap();
    // A client whose workflow versions the node would refuse to stand behind.
    let refusing: crdt_store::Vouch = std::sync::Arc::new(|_: &WorkflowDoc, _: &[WorkflowDoc]| {
        Err("not vouched for".to_owned())
    });
    let batch = vec![
        SyncApply {
            doc: store.document_id(&held),
            peer: "peer".into(),
            name: None,
            payload: data.to_vec(),
            sender: Sender::Peer,
        },
        SyncApply {
            doc: store.document_id(&fresh),
            peer: "peer".into(),
            name: Some(fresh.to_string()),
            payload: data.to_vec(),
            sender: Sender::Peer,
        },
        SyncApply {
            doc: store.document_id(&held),
            peer: format!("{}reader", crdt_store::SESSION_PEER_PREFIX),
            name: None,
            payload: data.to_vec(),
            sender: Sender::Reader,
        },
        SyncApply {
            doc: store.document_id(&held),
            peer: format!("{}client", crdt_store::SESSION_PEER_PREFIX),
            name: None,
            payload: data.to_vec(),
            sender: Sender::Client(refusing),
        },
    ];
    let outcomes = store.sync_apply(batch).expect("the store itself does not fail");
    assert_eq!(outcomes.len(), 4);
    // What a reader sent never changes anything.
    if let Ok(applied) = &outcomes[2] {
        assert!(!applied.changed, "{applied:?}");
    }
    assert_eq!(store.read::<WorkflowDoc>(&other).unwrap().version, 1);
    let _ = store.read::<WorkflowDoc>(&held);
    let _ = store.sync_catalogue().unwrap();
    let _ = store.sync_generate(&store.document_id(&held), "peer").unwrap();
});
