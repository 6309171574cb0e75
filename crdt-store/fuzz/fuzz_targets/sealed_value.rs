//! What an encrypted store reads back from its file is bytes it cannot trust (a damaged disk, a
//! file edited by hand). Whatever they are, opening a value gives an error naming why, never a
//! panic and never bytes the store did not seal (AES-GCM tags cannot be forged); a value it
//! sealed, changed anywhere, never opens; a wrapped data key does not unwrap unless this store
//! key wrapped it.
#![no_main]

use std::collections::BTreeMap;

use crdt_store::seal::{Key, Sealer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let store_key = Key::from_bytes([3; 32]);
    let sealer = Sealer::new(&BTreeMap::from([(1, Key::from_bytes([5; 32]))]), 1);
    match sealer.open(b"doc/incremental/x", data) {
        Ok(_) => panic!("bytes the store did not seal opened"),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
    // While plaintext written before encryption may remain, it reads as it is.
    let converting = sealer.clone().with_plaintext(true);
    if let Ok(plain) = converting.open(b"doc/incremental/x", data) {
        assert_eq!(plain.as_ref(), data);
    }
    assert!(store_key.unwrap_key(1, data).is_none());
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Key::from_hex(text);
    }
    if !data.is_empty() {
        let mut sealed = sealer.seal(b"k", data);
        assert_eq!(sealer.open(b"k", &sealed).unwrap().as_ref(), data);
        let at = data[0] as usize % sealed.len();
        sealed[at] ^= 1;
        assert!(sealer.open(b"k", &sealed).is_err(), "changed at byte {at}");
    }
});
