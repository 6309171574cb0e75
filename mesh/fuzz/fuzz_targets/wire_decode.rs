//! Bytes from the network go through `Message::decode`: it must never panic, must never
//! allocate beyond its bounds, and what it accepts must re-encode to exactly the bytes consumed
//! (one encoding per message, so nothing is smuggled in ignored bytes). A status message must
//! also respect its bounds on claims and chain entries.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh::proto::wire::{MAX_STATUS_ZONES, Message};

fuzz_target!(|data: &[u8]| {
    let mut at = 0;
    while let Ok(Some((message, used))) = Message::decode(&data[at..]) {
        if let Message::Status(status) = &message {
            assert!(status.aggregates.len() <= MAX_STATUS_ZONES);
            assert!(status.chain.len() <= MAX_STATUS_ZONES);
        }
        assert_eq!(message.to_frame(), &data[at..at + used]);
        assert_eq!(message.encoded_len(), used);
        at += used;
    }
});
