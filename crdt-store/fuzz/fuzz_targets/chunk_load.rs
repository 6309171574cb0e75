//! Chunks arrive from peers through samod's storage writes. Whatever their bytes, reading the
//! document must give a value or a `CorruptChunk` error, never a panic, and the other documents
//! must stay readable.
#![no_main]

use crdt_store::samod_core::StorageKey;
use crdt_store::samod_core::io::StorageTask;
use crdt_store::{DocName, Store, StoreConfig, WorkflowDoc};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut store = Store::open_in_memory(StoreConfig::new("fuzz", "node")).unwrap();
    let target = DocName::workflow("target").unwrap();
    let other = DocName::workflow("other").unwrap();
    for name in [&target, &other] {
        store
            .update::<WorkflowDoc, _>(name, |wf| wf.version = 1)
            .unwrap();
    }
    let id = store.document_id(&target);
    let key = StorageKey::from_parts([id.to_string().as_str(), "incremental", "fuzz"]).unwrap();
    store
        .execute(vec![StorageTask::Put {
            key,
            value: data.to_vec(),
        }])
        .unwrap();
    let _ = store.read::<WorkflowDoc>(&target);
    assert_eq!(store.read::<WorkflowDoc>(&other).unwrap().version, 1);
});
