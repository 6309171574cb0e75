//! Whatever a caller puts after `Authorization: Bearer`, the node answers with a role or a
//! refusal naming why, never a panic; only the exact token it issued carries that token's role.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rhizome::api::auth::{Role, Tokens, create};

fuzz_target!(|data: &[u8]| {
    let Ok(presented) = std::str::from_utf8(data) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.json");
    let (issued, _) = create(&path, "fuzz", Role::Operator, None, 0).unwrap();
    let tokens = Tokens::new(path, "local".into());
    match tokens.check(Some(presented), 1) {
        Ok(caller) if presented.trim() == issued => assert_eq!(caller.role, Role::Operator),
        Ok(caller) => assert_eq!((presented.trim(), caller.role), ("local", Role::Admin)),
        Err(refused) => assert!(!refused.to_string().is_empty()),
    }
});
