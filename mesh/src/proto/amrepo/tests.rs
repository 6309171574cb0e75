use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::proto::wire::DocIdBytes;

const ZERO_TO_15: DocIdBytes = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];
const ID_0_TO_15: &str = "1Bhh3pU9gLXZiNDL6PEa1Gs9fh";
/// A valid bs58check id of three bytes: automerge-repo accepts it, this node cannot hold it.
const ID_3_BYTES: &str = "3DUz7ncyT";
const SERVER: &str = "rhizome-node";
const CLIENT: &str = "peer-abc";

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// A CBOR text string with the shortest head (for hand-written vectors).
fn t(s: &str) -> Vec<u8> {
    let mut out = if s.len() < 24 {
        vec![0x60 | s.len() as u8]
    } else {
        assert!(s.len() < 256);
        vec![0x78, s.len() as u8]
    };
    out.extend_from_slice(s.as_bytes());
    out
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

// ---------------------------------------------------------------------------------------------
// Real bytes from JavaScript: cbor-x 1.6.9 `new Encoder({ tagUint8Array: false, useRecords:
// false }).encode(...)` (what automerge-repo 2.5.6 uses), in Node.js 20. Note cbor-x's map
// heads with a two-byte length (0xb9 0x00 0x04), `undefined` (0xf7), and the float64
// timestamp.

/// `{type: "join", senderId: "peer-abc", peerMetadata: {storageId: undefined, isEphemeral:
/// true}, supportedProtocolVersions: ["1"]}`: a repo without storage.
const JS_JOIN_NO_STORAGE: &str = "b900046474797065646a6f696e6873656e646572496468706565722d6162636c706565724d65746164617461b900026973746f726167654964f76b6973457068656d6572616cf57819737570706f7274656450726f746f636f6c56657273696f6e73816131";

/// `{type: "join", senderId: "client-1", peerMetadata: {storageId: "3760df37-…", isEphemeral:
/// false}, supportedProtocolVersions: ["1"]}`.
const JS_JOIN_STORAGE: &str = "b900046474797065646a6f696e6873656e646572496468636c69656e742d316c706565724d65746164617461b900026973746f726167654964782433373630646633372d613463362d346636362d396563642d3733323033396139333835646b6973457068656d6572616cf47819737570706f7274656450726f746f636f6c56657273696f6e73816131";

/// `{type: "sync", senderId: "peer-abc", targetId: "rhizome-node", documentId:
/// "1Bhh3pU9gLXZiNDL6PEa1Gs9fh", data}` with `data` a real Automerge sync message (47 bytes,
/// `generateSyncMessage` for `from({hello: "world"})`).
const JS_SYNC: &str = "b9000564747970656473796e636873656e646572496468706565722d6162636874617267657449646c7268697a6f6d652d6e6f64656a646f63756d656e744964781a3142686833705539674c585a694e444c365045613147733966686464617461582f4201bf960a6341624f4a9339a2258c848d47b27386ffb9b32bf10530c7429e6f6aac00010005010a07358800020284";

/// The same as a `request`.
const JS_REQUEST: &str = "b90005647479706567726571756573746873656e646572496468706565722d6162636874617267657449646c7268697a6f6d652d6e6f64656a646f63756d656e744964781a3142686833705539674c585a694e444c365045613147733966686464617461582f4201bf960a6341624f4a9339a2258c848d47b27386ffb9b32bf10530c7429e6f6aac00010005010a07358800020284";

/// `{type: "ephemeral", senderId, targetId, count: 3, sessionId: "sess", documentId, data:
/// [0xa1, 0x61, 0x78, 0x01]}`.
const JS_EPHEMERAL: &str = "b90007647479706569657068656d6572616c6873656e646572496468706565722d6162636874617267657449646c7268697a6f6d652d6e6f646565636f756e74036973657373696f6e496464736573736a646f63756d656e744964781a3142686833705539674c585a694e444c36504561314773396668646461746144a1617801";

/// `{type: "remote-heads-changed", …, newHeads: {"3760df37-…": {heads: ["abc"], timestamp:
/// 1733325000123}}}`: the timestamp is a float64.
const JS_REMOTE_HEADS: &str = "b9000564747970657472656d6f74652d68656164732d6368616e6765646873656e646572496468706565722d6162636874617267657449646c7268697a6f6d652d6e6f64656a646f63756d656e744964781a3142686833705539674c585a694e444c36504561314773396668686e65774865616473b90001782433373630646633372d613463362d346636362d396563642d373332303339613933383564b9000265686561647381636162636974696d657374616d70fb4279392388dbb000";

/// `{type: "remote-subscription-change", …, add: ["3760df37-…"], remove: undefined}`.
const JS_REMOTE_SUBSCRIPTION: &str = "b900056474797065781a72656d6f74652d737562736372697074696f6e2d6368616e67656873656e646572496468706565722d6162636874617267657449646c7268697a6f6d652d6e6f64656361646481782433373630646633372d613463362d346636362d396563642d3733323033396139333835646672656d6f7665f7";

const STORAGE: &str = "3760df37-a4c6-4f66-9ecd-732039a9385d";

fn js_sync_data() -> Vec<u8> {
    hex(
        "4201bf960a6341624f4a9339a2258c848d47b27386ffb9b32bf10530c7429e6f6aac00010005010a07358800020284",
    )
}

#[test]
fn javascript_messages_decode() {
    assert_eq!(
        Message::decode(&hex(JS_JOIN_NO_STORAGE)).unwrap(),
        Message::Join {
            sender_id: CLIENT.into(),
            peer_metadata: PeerMetadata {
                storage_id: None,
                is_ephemeral: true
            },
            supported_protocol_versions: Some(vec!["1".into()]),
        }
    );
    assert_eq!(
        Message::decode(&hex(JS_JOIN_STORAGE)).unwrap(),
        Message::Join {
            sender_id: "client-1".into(),
            peer_metadata: PeerMetadata {
                storage_id: Some(STORAGE.into()),
                is_ephemeral: false
            },
            supported_protocol_versions: Some(vec!["1".into()]),
        }
    );
    let sync = Message::Sync {
        sender_id: CLIENT.into(),
        target_id: SERVER.into(),
        document_id: ID_0_TO_15.into(),
        data: js_sync_data(),
    };
    assert_eq!(Message::decode(&hex(JS_SYNC)).unwrap(), sync);
    let Message::Sync {
        sender_id,
        target_id,
        document_id,
        data,
    } = sync
    else {
        unreachable!()
    };
    assert_eq!(
        Message::decode(&hex(JS_REQUEST)).unwrap(),
        Message::Request {
            sender_id,
            target_id,
            document_id,
            data
        }
    );
    assert_eq!(
        Message::decode(&hex(JS_EPHEMERAL)).unwrap(),
        Message::Ephemeral {
            sender_id: CLIENT.into(),
            target_id: SERVER.into(),
            count: 3,
            session_id: "sess".into(),
            document_id: ID_0_TO_15.into(),
            data: vec![0xa1, 0x61, 0x78, 0x01],
        }
    );
    assert_eq!(
        Message::decode(&hex(JS_REMOTE_HEADS)).unwrap(),
        Message::RemoteHeadsChanged {
            sender_id: CLIENT.into(),
            target_id: SERVER.into(),
            document_id: ID_0_TO_15.into(),
            new_heads: vec![RemoteHeads {
                storage_id: STORAGE.into(),
                heads: vec!["abc".into()],
                timestamp: 1_733_325_000_123,
            }],
        }
    );
    assert_eq!(
        Message::decode(&hex(JS_REMOTE_SUBSCRIPTION)).unwrap(),
        Message::RemoteSubscriptionChange {
            sender_id: CLIENT.into(),
            target_id: SERVER.into(),
            add: vec![STORAGE.into()],
            remove: vec![],
        }
    );
}

// ---------------------------------------------------------------------------------------------
// Round trips

fn every_kind() -> Vec<Message> {
    vec![
        Message::Join {
            sender_id: CLIENT.into(),
            peer_metadata: PeerMetadata {
                storage_id: Some(STORAGE.into()),
                is_ephemeral: false,
            },
            supported_protocol_versions: Some(vec!["1".into()]),
        },
        Message::Join {
            sender_id: CLIENT.into(),
            peer_metadata: PeerMetadata::default(),
            supported_protocol_versions: None,
        },
        Message::Peer {
            sender_id: SERVER.into(),
            target_id: CLIENT.into(),
            peer_metadata: PeerMetadata {
                storage_id: None,
                is_ephemeral: true,
            },
            selected_protocol_version: "1".into(),
        },
        Message::Leave {
            sender_id: CLIENT.into(),
        },
        Message::Error {
            message: "unsupported protocol version".into(),
        },
        Message::Sync {
            sender_id: SERVER.into(),
            target_id: CLIENT.into(),
            document_id: ID_0_TO_15.into(),
            data: js_sync_data(),
        },
        Message::Request {
            sender_id: CLIENT.into(),
            target_id: SERVER.into(),
            document_id: ID_0_TO_15.into(),
            data: vec![0x42; 300],
        },
        Message::DocUnavailable {
            sender_id: SERVER.into(),
            target_id: CLIENT.into(),
            document_id: ID_0_TO_15.into(),
        },
        Message::Ephemeral {
            sender_id: CLIENT.into(),
            target_id: SERVER.into(),
            count: u64::MAX,
            session_id: "sess".into(),
            document_id: ID_0_TO_15.into(),
            data: vec![],
        },
        Message::RemoteSubscriptionChange {
            sender_id: CLIENT.into(),
            target_id: SERVER.into(),
            add: vec![STORAGE.into()],
            remove: vec!["x".into(), "y".into()],
        },
        Message::RemoteHeadsChanged {
            sender_id: CLIENT.into(),
            target_id: SERVER.into(),
            document_id: ID_0_TO_15.into(),
            new_heads: vec![RemoteHeads {
                storage_id: STORAGE.into(),
                heads: vec!["a".into(), "b".into()],
                timestamp: 1_733_325_000_123,
            }],
        },
        Message::Unknown("future-message".into()),
    ]
}

#[test]
fn every_kind_round_trips() {
    for message in every_kind() {
        let bytes = message.encode();
        assert_eq!(Message::decode(&bytes).unwrap(), message, "{bytes:02x?}");
    }
}

#[test]
fn encoding_is_what_cbor_x_writes_up_to_head_widths() {
    // cbor-x writes the same keys and values in the same order, but map heads two bytes wide:
    // replacing its `b9 00 nn` by `a0 | nn` gives our bytes.
    let ours = Message::decode(&hex(JS_SYNC)).unwrap().encode();
    let theirs = hex(JS_SYNC);
    assert_eq!(ours[0], 0xa5);
    assert_eq!(&ours[1..], &theirs[3..]);
    let ours = Message::decode(&hex(JS_EPHEMERAL)).unwrap().encode();
    let theirs = hex(JS_EPHEMERAL);
    assert_eq!(ours[0], 0xa7);
    assert_eq!(&ours[1..], &theirs[3..]);
}

// ---------------------------------------------------------------------------------------------
// Tolerant decoding, on hand-written bytes

fn sync_fields() -> Vec<u8> {
    cat(&[
        &t("type"),
        &t("sync"),
        &t("senderId"),
        &t(CLIENT),
        &t("targetId"),
        &t(SERVER),
        &t("documentId"),
        &t(ID_0_TO_15),
        &t("data"),
        &[0x43, 1, 2, 3],
    ])
}

fn expected_sync() -> Message {
    Message::Sync {
        sender_id: CLIENT.into(),
        target_id: SERVER.into(),
        document_id: ID_0_TO_15.into(),
        data: vec![1, 2, 3],
    }
}

fn ephemeral_with_count(count: &[u8]) -> Vec<u8> {
    cat(&[
        &[0xa7],
        &t("count"),
        count,
        &t("type"),
        &t("ephemeral"),
        &t("senderId"),
        &t(CLIENT),
        &t("targetId"),
        &t(SERVER),
        &t("sessionId"),
        &t("s"),
        &t("documentId"),
        &t(ID_0_TO_15),
        &t("data"),
        &[0x40],
    ])
}

#[test]
fn integers_sent_as_floats_are_accepted() {
    for count in [
        &[0x03][..],
        &[0xf9, 0x42, 0x00],
        &[0xfa, 0x40, 0x40, 0x00, 0x00],
        &[0xfb, 0x40, 0x08, 0, 0, 0, 0, 0, 0],
    ] {
        let Message::Ephemeral { count, .. } =
            Message::decode(&ephemeral_with_count(count)).unwrap()
        else {
            panic!("not ephemeral")
        };
        assert_eq!(count, 3);
    }
    // 2^53 as a float64.
    let big = Message::decode(&ephemeral_with_count(&[0xfb, 0x43, 0x40, 0, 0, 0, 0, 0, 0]));
    assert!(matches!(big, Ok(Message::Ephemeral { count, .. }) if count == 1 << 53));
}

#[test]
fn numbers_that_are_not_counts_are_refused() {
    let not_integer = |bytes: &[u8]| {
        Message::decode(&ephemeral_with_count(bytes))
            == Err(DecodeError::NotAnInteger { field: "count" })
    };
    assert!(not_integer(&[0xfb, 0x40, 0x0c, 0, 0, 0, 0, 0, 0])); // 3.5
    assert!(not_integer(&[0xfb, 0xbf, 0xf0, 0, 0, 0, 0, 0, 0])); // -1.0
    assert!(not_integer(&[0xf9, 0x7e, 0x00])); // NaN
    assert!(not_integer(&[0xf9, 0x7c, 0x00])); // Infinity
    assert!(not_integer(&[0xfb, 0x43, 0xf0, 0, 0, 0, 0, 0, 0])); // 2^64
    assert!(not_integer(&[0x20])); // -1
    assert_eq!(
        Message::decode(&ephemeral_with_count(&t("3"))),
        Err(DecodeError::WrongType {
            field: "count",
            expected: "number",
            found: "text string"
        })
    );
}

#[test]
fn undefined_and_null_mean_absent() {
    for absent in [0xf7u8, 0xf6] {
        let join = cat(&[
            &[0xa4],
            &t("type"),
            &t("join"),
            &t("senderId"),
            &t(CLIENT),
            &t("peerMetadata"),
            &[0xa2],
            &t("storageId"),
            &[absent],
            &t("isEphemeral"),
            &[absent],
            &t("supportedProtocolVersions"),
            &[absent],
        ]);
        assert_eq!(
            Message::decode(&join).unwrap(),
            Message::Join {
                sender_id: CLIENT.into(),
                peer_metadata: PeerMetadata::default(),
                supported_protocol_versions: None,
            }
        );
        // A required field that is undefined is missing.
        let sync = cat(&[&[0xa2], &t("type"), &t("leave"), &t("senderId"), &[absent]]);
        assert_eq!(
            Message::decode(&sync),
            Err(DecodeError::MissingField {
                message_type: "leave",
                field: "senderId"
            })
        );
    }
}

#[test]
fn the_older_metadata_key_is_read() {
    let join = |keys: &[&[u8]]| {
        let mut bytes = vec![0xa2 + keys.len() as u8];
        bytes.extend(cat(&[&t("type"), &t("join"), &t("senderId"), &t(CLIENT)]));
        for k in keys {
            bytes.extend_from_slice(k);
        }
        Message::decode(&bytes).unwrap()
    };
    let metadata = |storage: &str| cat(&[&[0xa1], &t("storageId"), &t(storage)]);
    let old = cat(&[&t("metadata"), &metadata("old")]);
    let new = cat(&[&t("peerMetadata"), &metadata("new")]);
    let storage = |m: Message| match m {
        Message::Join { peer_metadata, .. } => peer_metadata.storage_id,
        _ => None,
    };
    assert_eq!(storage(join(&[&old])).as_deref(), Some("old"));
    // Both present, in either order: `peerMetadata` wins.
    assert_eq!(storage(join(&[&old, &new])).as_deref(), Some("new"));
    assert_eq!(storage(join(&[&new, &old])).as_deref(), Some("new"));
    // An undefined `peerMetadata` falls back to `metadata`.
    let undefined = cat(&[&t("peerMetadata"), &[0xf7]]);
    assert_eq!(storage(join(&[&undefined, &old])).as_deref(), Some("old"));
}

#[test]
fn keys_in_any_order_and_unknown_keys_are_accepted() {
    let mut pairs: Vec<Vec<u8>> = vec![
        cat(&[&t("type"), &t("sync")]),
        cat(&[&t("senderId"), &t(CLIENT)]),
        cat(&[&t("targetId"), &t(SERVER)]),
        cat(&[&t("documentId"), &t(ID_0_TO_15)]),
        cat(&[&t("data"), &[0x43, 1, 2, 3]]),
        // Unknown keys: a text key with a nested value, an integer key, a byte-string key.
        cat(&[&t("extra"), &[0xa1, 0x01, 0x82, 0xf5, 0xf6]]),
        vec![0x07, 0x60],
        vec![0x41, 0x00, 0xfb, 0, 0, 0, 0, 0, 0, 0, 0],
        // A known key that a sync message does not use, with a value of a silly type.
        cat(&[&t("count"), &t("not a number")]),
    ];
    for rotation in 0..pairs.len() {
        pairs.rotate_left(1);
        let mut bytes = vec![0xa9];
        bytes.extend(pairs.concat());
        assert_eq!(
            Message::decode(&bytes).unwrap(),
            expected_sync(),
            "rotation {rotation}"
        );
    }
}

#[test]
fn indefinite_lengths_and_tags_are_accepted() {
    // An indefinite map, an indefinite text string for `senderId`, an indefinite byte string
    // for `data` (two chunks), and a tag (64, Uint8Array) around it.
    let bytes = cat(&[
        &[0xbf],
        &t("type"),
        &t("sync"),
        &t("senderId"),
        &[0x7f, 0x64],
        b"peer",
        &[0x64],
        b"-abc",
        &[0xff],
        &t("targetId"),
        &t(SERVER),
        &t("documentId"),
        &t(ID_0_TO_15),
        &t("data"),
        &[0xd8, 0x40, 0x5f, 0x41, 1, 0x42, 2, 3, 0xff],
        &[0xff],
    ]);
    assert_eq!(Message::decode(&bytes).unwrap(), expected_sync());
}

#[test]
fn a_byte_string_document_id_is_read_as_its_bs58check_string() {
    let mut bytes = vec![0xa5];
    bytes.extend(cat(&[
        &t("type"),
        &t("doc-unavailable"),
        &t("senderId"),
        &t(CLIENT),
        &t("targetId"),
        &t(SERVER),
        &t("documentId"),
        &[0x50],
        &ZERO_TO_15,
        &t("data"),
        &[0x40],
    ]));
    assert_eq!(
        Message::decode(&bytes).unwrap(),
        Message::DocUnavailable {
            sender_id: CLIENT.into(),
            target_id: SERVER.into(),
            document_id: ID_0_TO_15.into(),
        }
    );
    let mut long = cat(&[
        &[0xa4],
        &t("type"),
        &t("doc-unavailable"),
        &t("senderId"),
        &t(CLIENT),
        &t("targetId"),
        &t(SERVER),
        &t("documentId"),
        &[0x58, 65],
    ]);
    long.extend([0; 65]);
    assert_eq!(
        Message::decode(&long),
        Err(DecodeError::DocumentIdTooLong { len: 65, max: 64 })
    );
}

#[test]
fn unknown_types_decode_as_unknown() {
    let bytes = cat(&[&[0xa2], &t("type"), &t("presence"), &t("senderId"), &[0x01]]);
    assert_eq!(
        Message::decode(&bytes).unwrap(),
        Message::Unknown("presence".into())
    );
    let long_type = "é".repeat(100);
    let mut bytes = vec![0xa1];
    bytes.extend(t("type"));
    bytes.extend([0x78, 200]);
    bytes.extend(long_type.as_bytes());
    let Message::Unknown(cut) = Message::decode(&bytes).unwrap() else {
        panic!("not unknown")
    };
    assert_eq!(cut, "é".repeat(MAX_TYPE_LEN / 2));
}

#[test]
fn loose_fields_never_fail() {
    // `add` is a number, `remove` holds a number and a string, `newHeads` is a string.
    let rsc = cat(&[
        &[0xa5],
        &t("type"),
        &t("remote-subscription-change"),
        &t("senderId"),
        &t(CLIENT),
        &t("targetId"),
        &t(SERVER),
        &t("add"),
        &[0x05],
        &t("remove"),
        &[0x82, 0x01],
        &t("x"),
    ]);
    assert_eq!(
        Message::decode(&rsc).unwrap(),
        Message::RemoteSubscriptionChange {
            sender_id: CLIENT.into(),
            target_id: SERVER.into(),
            add: vec![],
            remove: vec!["x".into()],
        }
    );
    let rhc = |new_heads: &[u8]| {
        cat(&[
            &[0xa5],
            &t("type"),
            &t("remote-heads-changed"),
            &t("senderId"),
            &t(CLIENT),
            &t("targetId"),
            &t(SERVER),
            &t("documentId"),
            &t(ID_0_TO_15),
            &t("newHeads"),
            new_heads,
        ])
    };
    let heads_of = |bytes: Vec<u8>| match Message::decode(&bytes).unwrap() {
        Message::RemoteHeadsChanged { new_heads, .. } => new_heads,
        _ => panic!("not remote-heads-changed"),
    };
    assert_eq!(heads_of(rhc(&t("nonsense"))), vec![]);
    // An entry that is not a map is skipped; a timestamp that is text counts as 0.
    let mixed = cat(&[
        &[0xa3],
        &t("a"),
        &[0x01],
        &t("b"),
        &[0xa2],
        &t("heads"),
        &[0x81],
        &t("h"),
        &t("timestamp"),
        &t("yesterday"),
        &[0x02],
        &[0xa0],
    ]);
    assert_eq!(
        heads_of(rhc(&mixed)),
        vec![RemoteHeads {
            storage_id: "b".into(),
            heads: vec!["h".into()],
            timestamp: 0,
        }]
    );
}

#[test]
fn long_lists_are_cut() {
    let mut versions = vec![0x98, 40];
    for _ in 0..40 {
        versions.extend(t("9"));
    }
    let join = cat(&[
        &[0xa3],
        &t("type"),
        &t("join"),
        &t("senderId"),
        &t(CLIENT),
        &t("supportedProtocolVersions"),
        &versions,
    ]);
    let Message::Join {
        supported_protocol_versions: Some(v),
        ..
    } = Message::decode(&join).unwrap()
    else {
        panic!("not join")
    };
    assert_eq!(v.len(), MAX_PROTOCOL_VERSIONS);
}

// ---------------------------------------------------------------------------------------------
// Refusals

#[test]
fn what_is_not_a_map_is_refused() {
    assert_eq!(Message::decode(&[]), Err(DecodeError::Truncated { at: 0 }));
    assert_eq!(
        Message::decode(&[0x80]),
        Err(DecodeError::NotAMap { found: "array" })
    );
    assert_eq!(
        Message::decode(&[0x01]),
        Err(DecodeError::NotAMap {
            found: "unsigned integer"
        })
    );
    assert_eq!(
        Message::decode(&[0xff]),
        Err(DecodeError::NotAMap {
            found: "break code"
        })
    );
    assert_eq!(
        Message::decode(&t("join")),
        Err(DecodeError::NotAMap {
            found: "text string"
        })
    );
}

#[test]
fn missing_or_mistyped_fields_are_refused() {
    assert_eq!(Message::decode(&[0xa0]), Err(DecodeError::MissingType));
    assert_eq!(
        Message::decode(&cat(&[&[0xa1], &t("type"), &[0x01]])),
        Err(DecodeError::WrongType {
            field: "type",
            expected: "text string",
            found: "unsigned integer"
        })
    );
    // Each required field of `sync`, left out in turn.
    let fields = ["senderId", "targetId", "documentId", "data"];
    for missing in fields {
        let mut bytes = vec![0xa4, 0x64];
        bytes.extend(b"type");
        bytes.extend(t("sync"));
        for field in fields.iter().filter(|f| **f != missing) {
            bytes.extend(t(field));
            if *field == "data" {
                bytes.extend([0x41, 0]);
            } else {
                bytes.extend(t(ID_0_TO_15));
            }
        }
        assert_eq!(
            Message::decode(&bytes),
            Err(DecodeError::MissingField {
                message_type: "sync",
                field: missing
            })
        );
    }
    // `data` as text; `senderId` as a number; `peerMetadata` as a string.
    let mut bytes = sync_fields();
    let at = bytes.len() - 4;
    bytes.truncate(at);
    bytes.splice(0..0, [0xa5]);
    bytes.extend(t("abc"));
    assert_eq!(
        Message::decode(&bytes),
        Err(DecodeError::WrongType {
            field: "data",
            expected: "byte string",
            found: "text string"
        })
    );
    let leave = cat(&[&[0xa2], &t("type"), &t("leave"), &t("senderId"), &[0x01]]);
    assert!(matches!(
        Message::decode(&leave),
        Err(DecodeError::WrongType {
            field: "senderId",
            ..
        })
    ));
    let join = cat(&[
        &[0xa3],
        &t("type"),
        &t("join"),
        &t("senderId"),
        &t(CLIENT),
        &t("peerMetadata"),
        &t("me"),
    ]);
    assert!(matches!(
        Message::decode(&join),
        Err(DecodeError::WrongType {
            field: "peerMetadata",
            ..
        })
    ));
}

#[test]
fn invalid_utf8_is_refused() {
    let leave = cat(&[
        &[0xa2],
        &t("type"),
        &t("leave"),
        &t("senderId"),
        &[0x62, 0xc3, 0x28],
    ]);
    assert!(matches!(
        Message::decode(&leave),
        Err(DecodeError::InvalidUtf8 { .. })
    ));
}

#[test]
fn oversized_frames_are_refused_before_reading() {
    let bytes = expected_sync().encode();
    assert_eq!(
        Message::decode_limited(&bytes, bytes.len() - 1),
        Err(DecodeError::TooLarge {
            len: bytes.len(),
            max: bytes.len() - 1
        })
    );
    Message::decode_limited(&bytes, bytes.len()).unwrap();
    let huge = vec![0u8; MAX_MESSAGE_BYTES + 1];
    assert_eq!(
        Message::decode(&huge),
        Err(DecodeError::TooLarge {
            len: MAX_MESSAGE_BYTES + 1,
            max: MAX_MESSAGE_BYTES
        })
    );
}

#[test]
fn declared_lengths_beyond_the_input_are_refused() {
    // A map of 2^32 - 1 pairs holding one; a `data` of 2^64 - 1 bytes holding three.
    let map = cat(&[&[0xba, 0xff, 0xff, 0xff, 0xff], &t("type"), &t("sync")]);
    assert!(matches!(
        Message::decode(&map),
        Err(DecodeError::Truncated { .. })
    ));
    let mut data = vec![0xa5];
    data.extend(sync_fields());
    let at = data.len() - 4;
    data.truncate(at);
    data.extend([
        0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 2, 3,
    ]);
    assert!(matches!(
        Message::decode(&data),
        Err(DecodeError::Truncated { .. })
    ));
}

#[test]
fn deep_nesting_is_refused() {
    let mut bytes = vec![0xa2];
    bytes.extend(cat(&[&t("type"), &t("sync"), &t("extra")]));
    bytes.extend(vec![0x81; MAX_DEPTH]);
    bytes.push(0x00);
    assert_eq!(
        Message::decode(&bytes),
        Err(DecodeError::TooDeep { max: MAX_DEPTH })
    );
}

#[test]
fn trailing_bytes_and_stray_breaks_are_refused() {
    let mut bytes = expected_sync().encode();
    bytes.push(0xa0);
    assert_eq!(
        Message::decode(&bytes),
        Err(DecodeError::TrailingBytes { count: 1 })
    );
    // A break inside a definite map, and between a key and its value in an indefinite one.
    assert!(matches!(
        Message::decode(&[0xa1, 0xff]),
        Err(DecodeError::InvalidCbor { .. })
    ));
    let bytes = cat(&[&[0xbf], &t("type"), &[0xff]]);
    assert!(matches!(
        Message::decode(&bytes),
        Err(DecodeError::InvalidCbor { .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// Property tests

fn text() -> impl Strategy<Value = String> {
    any::<String>().prop_map(|s| s.chars().take(12).collect())
}

fn strings(max: usize) -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(text(), 0..max)
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..64)
}

fn metadata() -> impl Strategy<Value = PeerMetadata> {
    (prop::option::of(text()), any::<bool>()).prop_map(|(storage_id, is_ephemeral)| PeerMetadata {
        storage_id,
        is_ephemeral,
    })
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (
            text(),
            metadata(),
            prop::option::of(strings(MAX_PROTOCOL_VERSIONS))
        )
            .prop_map(|(sender_id, peer_metadata, supported_protocol_versions)| {
                Message::Join {
                    sender_id,
                    peer_metadata,
                    supported_protocol_versions,
                }
            }),
        (text(), text(), metadata(), text()).prop_map(
            |(sender_id, target_id, peer_metadata, selected_protocol_version)| Message::Peer {
                sender_id,
                target_id,
                peer_metadata,
                selected_protocol_version
            }
        ),
        text().prop_map(|sender_id| Message::Leave { sender_id }),
        text().prop_map(|message| Message::Error { message }),
        (text(), text(), text(), bytes()).prop_map(|(sender_id, target_id, document_id, data)| {
            Message::Sync {
                sender_id,
                target_id,
                document_id,
                data,
            }
        }),
        (text(), text(), text(), bytes()).prop_map(|(sender_id, target_id, document_id, data)| {
            Message::Request {
                sender_id,
                target_id,
                document_id,
                data,
            }
        }),
        (text(), text(), text()).prop_map(|(sender_id, target_id, document_id)| {
            Message::DocUnavailable {
                sender_id,
                target_id,
                document_id,
            }
        }),
        (text(), text(), any::<u64>(), text(), text(), bytes()).prop_map(
            |(sender_id, target_id, count, session_id, document_id, data)| Message::Ephemeral {
                sender_id,
                target_id,
                count,
                session_id,
                document_id,
                data
            }
        ),
        (text(), text(), strings(8), strings(8)).prop_map(|(sender_id, target_id, add, remove)| {
            Message::RemoteSubscriptionChange {
                sender_id,
                target_id,
                add,
                remove,
            }
        }),
        (
            text(),
            text(),
            text(),
            prop::collection::vec(
                (text(), strings(4), any::<u64>()).prop_map(|(storage_id, heads, timestamp)| {
                    RemoteHeads {
                        storage_id,
                        heads,
                        timestamp,
                    }
                }),
                0..4
            )
        )
            .prop_map(|(sender_id, target_id, document_id, new_heads)| {
                Message::RemoteHeadsChanged {
                    sender_id,
                    target_id,
                    document_id,
                    new_heads,
                }
            }),
        "[a-z-]{0,20}"
            .prop_filter("a known type", |t| !KNOWN_TYPES.contains(&t.as_str()))
            .prop_map(Message::Unknown),
    ]
}

const KNOWN_TYPES: &[&str] = &[
    "join",
    "peer",
    "leave",
    "error",
    "sync",
    "request",
    "doc-unavailable",
    "ephemeral",
    "remote-subscription-change",
    "remote-heads-changed",
];

proptest! {
    #[test]
    fn encode_then_decode_is_identity(message in message()) {
        prop_assert_eq!(Message::decode(&message.encode()), Ok(message));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(message) = Message::decode(&bytes) {
            // What decodes re-encodes to something that decodes the same.
            prop_assert_eq!(Message::decode(&message.encode()), Ok(message));
        }
        let mut connection = joined();
        let events = connection.handle(&bytes, Duration::from_secs(1));
        prop_assert!(events.len() <= 2);
    }

    #[test]
    fn mutated_messages_never_panic(
        message in message(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = message.encode();
        for (at, byte) in flips {
            let i = at.index(bytes.len());
            bytes[i] = byte;
        }
        let end = cut.index(bytes.len() + 1);
        let _ = Message::decode(&bytes[..end]);
        let _ = Message::decode(&bytes);
        joined().handle(&bytes, Duration::from_secs(1));
    }
}

// ---------------------------------------------------------------------------------------------
// The connection

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn join_frame(sender: &str, versions: &[&str]) -> Vec<u8> {
    join_frame_offering(sender, Some(versions))
}

fn join_frame_offering(sender: &str, versions: Option<&[&str]>) -> Vec<u8> {
    Message::Join {
        sender_id: sender.into(),
        peer_metadata: PeerMetadata {
            storage_id: Some(STORAGE.into()),
            is_ephemeral: false,
        },
        supported_protocol_versions: versions.map(|v| v.iter().map(|s| s.to_string()).collect()),
    }
    .encode()
}

fn joined() -> Connection {
    let mut c = Connection::new(SERVER, secs(0));
    let events = c.handle(&join_frame(CLIENT, &["1"]), secs(0));
    assert_eq!(events.len(), 2);
    c
}

fn doc_frame(kind: &str, sender: &str, target: &str, id: &str) -> Vec<u8> {
    let (sender_id, target_id, document_id, data) =
        (sender.into(), target.into(), id.into(), vec![1]);
    match kind {
        "sync" => Message::Sync {
            sender_id,
            target_id,
            document_id,
            data,
        },
        "request" => Message::Request {
            sender_id,
            target_id,
            document_id,
            data,
        },
        "doc-unavailable" => Message::DocUnavailable {
            sender_id,
            target_id,
            document_id,
        },
        _ => unreachable!(),
    }
    .encode()
}

fn closed_with(events: &[Event]) -> Option<&CloseReason> {
    match events.last() {
        Some(Event::Close { reason }) => Some(reason),
        _ => None,
    }
}

#[test]
fn join_is_answered_with_peer() {
    let mut c = Connection::new(SERVER, secs(0)).with_metadata(PeerMetadata {
        storage_id: Some("server-storage".into()),
        is_ephemeral: false,
    });
    assert_eq!(c.client_peer_id(), None);
    assert_eq!(c.sync(&ZERO_TO_15, &[1]), None);
    let events = c.handle(&hex(JS_JOIN_NO_STORAGE), secs(1));
    assert_eq!(
        events,
        vec![
            Event::Send(Message::Peer {
                sender_id: SERVER.into(),
                target_id: CLIENT.into(),
                peer_metadata: PeerMetadata {
                    storage_id: Some("server-storage".into()),
                    is_ephemeral: false,
                },
                selected_protocol_version: "1".into(),
            }),
            Event::Joined {
                client_peer_id: CLIENT.into(),
                metadata: PeerMetadata {
                    storage_id: None,
                    is_ephemeral: true
                },
            },
        ]
    );
    assert_eq!(c.client_peer_id(), Some(CLIENT));
    assert!(c.client_metadata().unwrap().is_ephemeral);
    // The JavaScript client's real sync message is then accepted.
    assert_eq!(
        c.handle(&hex(JS_SYNC), secs(2)),
        vec![Event::Sync {
            document_id: ZERO_TO_15,
            data: js_sync_data()
        }]
    );
}

#[test]
fn a_repeated_join_is_answered_again() {
    let mut c = joined();
    let events = c.handle(&join_frame(CLIENT, &["1"]), secs(5));
    assert!(matches!(
        events.as_slice(),
        [Event::Send(Message::Peer { .. })]
    ));
    // A join without versions is accepted, as the JavaScript server does.
    let mut c = Connection::new(SERVER, secs(0));
    let events = c.handle(&join_frame_offering(CLIENT, None), secs(0));
    assert!(matches!(
        events.as_slice(),
        [Event::Send(Message::Peer { .. }), Event::Joined { .. }]
    ));
}

#[test]
fn an_unsupported_protocol_is_refused_naming_the_offer() {
    let mut c = Connection::new(SERVER, secs(0));
    let events = c.handle(&join_frame(CLIENT, &["2", "3"]), secs(0));
    let [
        Event::Send(Message::Error { message }),
        Event::Close { reason },
    ] = events.as_slice()
    else {
        panic!("{events:?}")
    };
    assert!(message.contains("[\"2\", \"3\"]"), "{message}");
    assert_eq!(
        reason,
        &CloseReason::UnsupportedProtocol {
            offered: vec!["2".into(), "3".into()]
        }
    );
    assert_eq!(reason.close_code(), 1002);
    assert!(c.is_closed());
    assert_eq!(c.handle(&join_frame(CLIENT, &["1"]), secs(1)), vec![]);
    assert_eq!(c.poll_timeout(), None);
}

#[test]
fn messages_before_join_close() {
    let mut c = Connection::new(SERVER, secs(0));
    let events = c.handle(&doc_frame("sync", CLIENT, SERVER, ID_0_TO_15), secs(0));
    assert_eq!(
        closed_with(&events),
        Some(&CloseReason::NotJoined {
            message_type: "sync".into()
        })
    );
    assert!(matches!(events[0], Event::Send(Message::Error { .. })));
}

#[test]
fn garbage_closes_with_the_decode_error() {
    let mut c = joined();
    let events = c.handle(&[0x80], secs(1));
    assert_eq!(
        closed_with(&events),
        Some(&CloseReason::BadMessage(DecodeError::NotAMap {
            found: "array"
        }))
    );
    let mut c = Connection::new(SERVER, secs(0)).with_max_message_bytes(10);
    let events = c.handle(&join_frame(CLIENT, &["1"]), secs(0));
    let reason = closed_with(&events).unwrap();
    assert!(matches!(
        reason,
        CloseReason::BadMessage(DecodeError::TooLarge { max: 10, .. })
    ));
    assert_eq!(reason.close_code(), 1009);
}

#[test]
fn another_sender_or_target_closes() {
    let mut c = joined();
    let events = c.handle(&doc_frame("sync", "intruder", SERVER, ID_0_TO_15), secs(1));
    assert_eq!(
        closed_with(&events),
        Some(&CloseReason::WrongSender {
            joined: CLIENT.into(),
            got: "intruder".into()
        })
    );
    let mut c = joined();
    let events = c.handle(&join_frame("intruder", &["1"]), secs(1));
    assert!(matches!(
        closed_with(&events),
        Some(CloseReason::WrongSender { .. })
    ));
    let mut c = joined();
    let events = c.handle(
        &doc_frame("request", CLIENT, "someone-else", ID_0_TO_15),
        secs(1),
    );
    assert_eq!(
        closed_with(&events),
        Some(&CloseReason::WrongTarget {
            server: SERVER.into(),
            got: "someone-else".into()
        })
    );
    // A peer id quoted in a reason is cut.
    let mut c = joined();
    let long = "x".repeat(10_000);
    let events = c.handle(&doc_frame("sync", &long, SERVER, ID_0_TO_15), secs(1));
    let Some(CloseReason::WrongSender { got, .. }) = closed_with(&events) else {
        panic!("{events:?}")
    };
    assert_eq!(got.len(), 128);
}

#[test]
fn document_messages_become_events() {
    let mut c = joined();
    assert_eq!(
        c.handle(&doc_frame("request", CLIENT, SERVER, ID_0_TO_15), secs(1)),
        vec![Event::Request {
            document_id: ZERO_TO_15,
            data: vec![1]
        }]
    );
    assert_eq!(
        c.handle(
            &doc_frame("doc-unavailable", CLIENT, SERVER, ID_0_TO_15),
            secs(1)
        ),
        vec![Event::DocUnavailable {
            document_id: ZERO_TO_15
        }]
    );
    // A valid id of another length: this node cannot hold it, so it says so at once.
    assert_eq!(
        c.handle(&doc_frame("request", CLIENT, SERVER, ID_3_BYTES), secs(1)),
        vec![Event::Send(Message::DocUnavailable {
            sender_id: SERVER.into(),
            target_id: CLIENT.into(),
            document_id: ID_3_BYTES.into(),
        })]
    );
    assert_eq!(
        c.handle(
            &doc_frame("doc-unavailable", CLIENT, SERVER, ID_3_BYTES),
            secs(1)
        ),
        vec![Event::Ignored {
            message_type: "doc-unavailable".into()
        }]
    );
    // An id that is not bs58check is a broken client.
    let events = c.handle(&doc_frame("sync", CLIENT, SERVER, "not-an-id"), secs(1));
    assert!(matches!(
        closed_with(&events),
        Some(CloseReason::BadDocumentId(_))
    ));
}

#[test]
fn outgoing_frames_decode_as_expected() {
    let c = joined();
    assert_eq!(
        Message::decode(&c.sync(&ZERO_TO_15, &[7, 8]).unwrap()).unwrap(),
        Message::Sync {
            sender_id: SERVER.into(),
            target_id: CLIENT.into(),
            document_id: ID_0_TO_15.into(),
            data: vec![7, 8],
        }
    );
    assert_eq!(
        Message::decode(&c.doc_unavailable(&ZERO_TO_15).unwrap()).unwrap(),
        Message::DocUnavailable {
            sender_id: SERVER.into(),
            target_id: CLIENT.into(),
            document_id: ID_0_TO_15.into(),
        }
    );
}

#[test]
fn ephemeral_messages_are_deduplicated_and_relayed() {
    let mut a = joined();
    let frame = |count: u64, session: &str| {
        Message::Ephemeral {
            sender_id: CLIENT.into(),
            target_id: SERVER.into(),
            count,
            session_id: session.into(),
            document_id: ID_0_TO_15.into(),
            data: vec![0xa0],
        }
        .encode()
    };
    let events = a.handle(&frame(1, "s1"), secs(1));
    let [Event::Ephemeral(first)] = events.as_slice() else {
        panic!("not relayed: {events:?}")
    };
    let first = first.clone();
    assert_eq!(
        first,
        Ephemeral {
            document_id: ZERO_TO_15,
            sender_id: CLIENT.into(),
            session_id: "s1".into(),
            count: 1,
            data: vec![0xa0],
        }
    );
    assert_eq!(a.handle(&frame(1, "s1"), secs(1)), vec![]);
    assert_eq!(a.handle(&hex(JS_EPHEMERAL), secs(1)).len(), 1);
    assert_eq!(a.handle(&frame(2, "sess"), secs(1)), vec![]);
    assert_eq!(a.handle(&frame(1, "s2"), secs(1)).len(), 1);

    // Relayed to another client: that client is the target, the rest is kept.
    let mut b = Connection::new(SERVER, secs(0));
    assert_eq!(b.ephemeral(&first), None);
    b.handle(&join_frame("peer-b", &["1"]), secs(0));
    assert_eq!(
        Message::decode(&b.ephemeral(&first).unwrap()).unwrap(),
        Message::Ephemeral {
            sender_id: CLIENT.into(),
            target_id: "peer-b".into(),
            count: 1,
            session_id: "s1".into(),
            document_id: ID_0_TO_15.into(),
            data: vec![0xa0],
        }
    );
}

#[test]
fn remote_messages_and_unknown_types_are_ignored() {
    let mut c = joined();
    for (frame, message_type) in [
        (hex(JS_REMOTE_HEADS), "remote-heads-changed"),
        (hex(JS_REMOTE_SUBSCRIPTION), "remote-subscription-change"),
        (Message::Unknown("presence".into()).encode(), "presence"),
    ] {
        assert_eq!(
            c.handle(&frame, secs(1)),
            vec![Event::Ignored {
                message_type: message_type.into()
            }]
        );
    }
    assert!(!c.is_closed());
}

#[test]
fn leave_error_and_peer_from_the_client_close() {
    let mut c = joined();
    let events = c.handle(
        &Message::Leave {
            sender_id: CLIENT.into(),
        }
        .encode(),
        secs(1),
    );
    assert_eq!(
        events,
        vec![Event::Close {
            reason: CloseReason::ClientLeft
        }]
    );
    let mut c = joined();
    let events = c.handle(
        &Message::Error {
            message: "bye".into(),
        }
        .encode(),
        secs(1),
    );
    assert_eq!(
        events,
        vec![Event::Close {
            reason: CloseReason::ClientError {
                message: "bye".into()
            }
        }]
    );
    let mut c = joined();
    let peer = Message::Peer {
        sender_id: CLIENT.into(),
        target_id: SERVER.into(),
        peer_metadata: PeerMetadata::default(),
        selected_protocol_version: "1".into(),
    };
    let events = c.handle(&peer.encode(), secs(1));
    assert_eq!(
        closed_with(&events),
        Some(&CloseReason::Unexpected {
            message_type: "peer".into()
        })
    );
}

#[test]
fn pings_keep_a_client_and_silence_drops_it() {
    let mut c = Connection::new(SERVER, secs(100));
    assert_eq!(c.poll_timeout(), Some(secs(105)));
    assert_eq!(c.handle_timeout(secs(104)), vec![]);
    assert_eq!(c.handle_timeout(secs(105)), vec![Event::Ping]);
    c.handle(&join_frame(CLIENT, &["1"]), secs(106));
    assert_eq!(c.poll_timeout(), Some(secs(110)));
    // Answering every ping keeps it open for a long time.
    let mut now = secs(110);
    for _ in 0..100 {
        assert_eq!(c.poll_timeout(), Some(now));
        assert_eq!(c.handle_timeout(now), vec![Event::Ping]);
        c.pong(now + Duration::from_millis(3));
        now += PING_EVERY;
    }
    // Then silence: pings go out, and after DEAD_AFTER it is closed without an error message.
    let mut events = Vec::new();
    while events.is_empty() || events == vec![Event::Ping] {
        let at = c.poll_timeout().unwrap();
        events = c.handle_timeout(at);
    }
    assert_eq!(
        events,
        vec![Event::Close {
            reason: CloseReason::Dead {
                silent_for: DEAD_AFTER
            }
        }]
    );
    assert!(c.is_closed());
    assert!(
        !CloseReason::Dead {
            silent_for: DEAD_AFTER
        }
        .tells_client()
    );
    assert_eq!(c.poll_timeout(), None);
}

#[test]
fn frames_count_as_signs_of_life() {
    let mut c = joined();
    for s in 1..40 {
        c.handle(&doc_frame("sync", CLIENT, SERVER, ID_0_TO_15), secs(s));
        let events = c.handle_timeout(secs(s));
        assert!(closed_with(&events).is_none());
    }
}

#[test]
fn a_client_that_never_joins_is_closed() {
    let mut c = Connection::new(SERVER, secs(0));
    c.pong(secs(5));
    c.pong(secs(9));
    assert_eq!(c.poll_timeout(), Some(secs(5)));
    c.handle_timeout(secs(5));
    assert_eq!(c.poll_timeout(), Some(JOIN_WITHIN));
    let events = c.handle_timeout(JOIN_WITHIN);
    assert_eq!(
        closed_with(&events),
        Some(&CloseReason::NoJoin {
            waited: JOIN_WITHIN
        })
    );
}
