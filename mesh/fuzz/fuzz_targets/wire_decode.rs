//! Bytes from the network go through `Message::decode`: it must never panic, must never
//! allocate beyond its bounds, and what it accepts must re-encode to exactly the bytes consumed
//! (one encoding per message, so nothing is smuggled in ignored bytes). A status message must
//! also respect its bounds on claims and chain entries. The head of a frame on a bulk stream,
//! read on its own before the blob, must agree with the whole frame's decoding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh::proto::wire::{
    CHUNK_DATA_HEAD, MAX_BLOB_LEN, MAX_STATUS_ZONES, Message, read_chunk_data_head,
};

fuzz_target!(|data: &[u8]| {
    if let Some(head) = data.get(..CHUNK_DATA_HEAD) {
        let head: &[u8; CHUNK_DATA_HEAD] = head.try_into().expect("the head's length");
        if let Ok((hash, len)) = read_chunk_data_head(head) {
            assert!(len <= MAX_BLOB_LEN);
            if let Ok(Some((Message::ChunkData { hash: whole, bytes }, _))) = Message::decode(data) {
                assert_eq!((whole, bytes.len()), (hash, len));
            }
        }
    }
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
