//! Bytes from the network go through `Message::decode`: it must never panic, must never
//! allocate beyond its bounds, and what it accepts must re-encode to exactly the bytes consumed
//! (one encoding per message, so nothing is smuggled in ignored bytes).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh::proto::wire::Message;

fuzz_target!(|data: &[u8]| {
    let mut at = 0;
    while let Ok(Some((message, used))) = Message::decode(&data[at..]) {
        assert_eq!(message.to_frame(), &data[at..at + used]);
        at += used;
    }
});
