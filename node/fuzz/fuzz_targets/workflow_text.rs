//! Workflow text comes from operators' files and, over `POST /workflows`, from whoever holds
//! the API token. Whatever its bytes, the pre-scan and the parser must answer quickly with a
//! definition or an error naming what was wrong, never panic; a definition they accept must
//! fit in a document, and read back as stored it must pass the validation that peers apply.
#![no_main]

use crdt_store::{MAX_DEFINITION_BYTES, WorkflowDoc};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let started = std::time::Instant::now();
    let parsed = rhizome::run::workflow::parse(text);
    // The pre-scan bounds what reaches the parser: nothing in 1 MiB should take long.
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "{} bytes took {:?}",
        text.len(),
        started.elapsed()
    );
    let Ok(definition) = parsed else {
        return;
    };
    let stored = definition.encode();
    assert!(stored.len() <= MAX_DEFINITION_BYTES);
    let read: WorkflowDoc = serde_json::from_str(&stored).expect("a stored definition decodes");
    assert_eq!(read, definition);
    rhizome::run::workflow::validate(&read).expect("what parses validates as stored");
});
