//! automerge-repo's messages and their CBOR encoding: one map per WebSocket binary frame.
//!
//! Decoding is tolerant where JavaScript clients vary (keys in any order, integers sent as
//! floats, `undefined` or `null` for absent fields, the older `metadata` key, unknown keys and
//! message types, tags, indefinite lengths) and strict where the bytes are not a message
//! (not CBOR, not a map, a missing or mistyped required field, trailing bytes, too large, too
//! deep). It runs in two steps: one pass over the map checks that every value is well-formed
//! CBOR within [`MAX_DEPTH`](super::cbor::MAX_DEPTH) and records where the known keys' values
//! start; then the fields that the message type needs are read from there. Fields that a type
//! does not use are never interpreted, so they cannot make it fail.

use super::cbor::{self, Item, Len, Reader};
use super::doc_id;

/// Largest frame decoded, in bytes (tungstenite's default message limit). The WebSocket
/// layer should refuse larger messages before they are assembled; the decoder checks again.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Most entries of `supportedProtocolVersions` kept; later ones are skipped (a client offers
/// one today).
pub const MAX_PROTOCOL_VERSIONS: usize = 16;

/// Most entries kept of the loosely read lists (`add`, `remove`, `newHeads` and each entry's
/// `heads`); later ones are skipped.
pub const MAX_LIST_ITEMS: usize = 1024;

/// Longest byte-string `documentId` accepted (samod reads ids sent as bytes; the JavaScript
/// library sends strings). Real ids are 16 bytes.
pub const MAX_DOCUMENT_ID_BYTES: usize = 64;

/// Longest message `type` kept in [`Message::Unknown`]; a longer one is cut at a character
/// boundary, so that logging it stays cheap.
pub const MAX_TYPE_LEN: usize = 64;

/// The only protocol version that exists.
pub const PROTOCOL_VERSION: &str = "1";

/// Why a frame is not an automerge-repo message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The frame is larger than the size limit.
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The frame's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The input ends inside a CBOR item (or an item claims more bytes than there are).
    #[error("message is truncated: a CBOR item at byte {at} runs past the end")]
    Truncated {
        /// Offset of the item being read.
        at: usize,
    },
    /// The bytes are not well-formed CBOR.
    #[error("invalid CBOR at byte {at}: {reason}")]
    InvalidCbor {
        /// Offset of the offending item.
        at: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Arrays and maps nest deeper than the limit.
    #[error("CBOR arrays and maps nest deeper than {max} levels")]
    TooDeep {
        /// The limit.
        max: usize,
    },
    /// The frame's top-level item is not a map.
    #[error("message is a CBOR {found}, not a map")]
    NotAMap {
        /// The kind of item found.
        found: &'static str,
    },
    /// Bytes follow the message's map.
    #[error("{count} bytes follow the message's map")]
    TrailingBytes {
        /// How many.
        count: usize,
    },
    /// The map has no `type` key (or it is `undefined`/`null`).
    #[error("message has no `type`")]
    MissingType,
    /// A field that the message's type requires is absent, `undefined` or `null`.
    #[error("`{message_type}` message lacks the field `{field}`")]
    MissingField {
        /// The message's type.
        message_type: &'static str,
        /// The missing field.
        field: &'static str,
    },
    /// A field holds a CBOR item of the wrong kind.
    #[error("field `{field}` is a {found}, expected a {expected}")]
    WrongType {
        /// The field.
        field: &'static str,
        /// The kind it must be.
        expected: &'static str,
        /// The kind it is.
        found: &'static str,
    },
    /// A text string is not valid UTF-8.
    #[error("text string at byte {at} is not valid UTF-8")]
    InvalidUtf8 {
        /// Offset of the string.
        at: usize,
    },
    /// A number field is negative, fractional, not finite or beyond `u64`.
    #[error("field `{field}` is not a non-negative integer")]
    NotAnInteger {
        /// The field.
        field: &'static str,
    },
    /// A `documentId` sent as a byte string is longer than [`MAX_DOCUMENT_ID_BYTES`].
    #[error("byte-string `documentId` of {len} bytes exceeds {max} bytes")]
    DocumentIdTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// What a peer says about itself in `join` and `peer`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct PeerMetadata {
    /// The peer's storage id, if it has storage (sync states are kept per storage id).
    pub storage_id: Option<String>,
    /// True when the peer will not come back with this storage id.
    pub is_ephemeral: bool,
}

/// One entry of `remote-heads-changed`'s `newHeads`: the heads a storage id has.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct RemoteHeads {
    /// The storage id whose heads these are.
    pub storage_id: String,
    /// The heads, bs58check strings.
    pub heads: Vec<String>,
    /// When the heads were seen, milliseconds since the Unix epoch (0 if not a number).
    pub timestamp: u64,
}

/// One automerge-repo network message (protocol version "1"). Document ids are kept as sent
/// (the bs58check string); see [`super::doc_id`] to read them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Message {
    /// `join`: the client's first message (repeated on retries).
    Join {
        /// The client's peer id.
        sender_id: String,
        /// What the client says about itself (`peerMetadata`, or the older `metadata`;
        /// default when absent).
        peer_metadata: PeerMetadata,
        /// The protocol versions offered; `None` when absent (the JavaScript server then
        /// assumes "1").
        supported_protocol_versions: Option<Vec<String>>,
    },
    /// `peer`: the server's answer to `join`.
    Peer {
        /// The server's peer id.
        sender_id: String,
        /// The client's peer id.
        target_id: String,
        /// What the server says about itself.
        peer_metadata: PeerMetadata,
        /// The version chosen: "1".
        selected_protocol_version: String,
    },
    /// `leave`: samod says it is disconnecting.
    Leave {
        /// The leaving peer.
        sender_id: String,
    },
    /// `error`: the sender is about to close the connection because of `message`.
    Error {
        /// A description of the error.
        message: String,
    },
    /// `sync`: an Automerge sync message about a document.
    Sync {
        /// The sending peer.
        sender_id: String,
        /// The receiving peer.
        target_id: String,
        /// The document's bs58check id.
        document_id: String,
        /// The Automerge sync message.
        data: Vec<u8>,
    },
    /// `request`: like `sync`, but the receiver answers `doc-unavailable` if it lacks the
    /// document.
    Request {
        /// The sending peer.
        sender_id: String,
        /// The receiving peer.
        target_id: String,
        /// The document's bs58check id.
        document_id: String,
        /// The Automerge sync message.
        data: Vec<u8>,
    },
    /// `doc-unavailable`: the sender does not have the document (or will not share it).
    DocUnavailable {
        /// The sending peer.
        sender_id: String,
        /// The receiving peer.
        target_id: String,
        /// The document's bs58check id.
        document_id: String,
    },
    /// `ephemeral`: an application message about a document, relayed to its other peers and
    /// never stored; deduplicated by `sender_id` + `session_id`, higher `count` wins.
    Ephemeral {
        /// The peer that created the message (kept when relayed).
        sender_id: String,
        /// The receiving peer.
        target_id: String,
        /// The sender's message counter within its session.
        count: u64,
        /// The sender's session.
        session_id: String,
        /// The document's bs58check id.
        document_id: String,
        /// The payload (CBOR written by the application).
        data: Vec<u8>,
    },
    /// `remote-subscription-change`: the sender wants to hear (or stop hearing) about the heads
    /// of these storage ids.
    RemoteSubscriptionChange {
        /// The sending peer.
        sender_id: String,
        /// The receiving peer.
        target_id: String,
        /// Storage ids added (at most [`MAX_LIST_ITEMS`] kept).
        add: Vec<String>,
        /// Storage ids removed (at most [`MAX_LIST_ITEMS`] kept).
        remove: Vec<String>,
    },
    /// `remote-heads-changed`: the heads that storage ids have for a document.
    RemoteHeadsChanged {
        /// The sending peer.
        sender_id: String,
        /// The receiving peer.
        target_id: String,
        /// The document's bs58check id.
        document_id: String,
        /// Heads per storage id (at most [`MAX_LIST_ITEMS`] kept).
        new_heads: Vec<RemoteHeads>,
    },
    /// A message of a type this build does not know (cut to [`MAX_TYPE_LEN`] bytes): log it
    /// and carry on.
    Unknown(String),
}

impl Message {
    /// The message's `type` as it appears on the wire.
    pub fn message_type(&self) -> &str {
        match self {
            Message::Join { .. } => "join",
            Message::Peer { .. } => "peer",
            Message::Leave { .. } => "leave",
            Message::Error { .. } => "error",
            Message::Sync { .. } => "sync",
            Message::Request { .. } => "request",
            Message::DocUnavailable { .. } => "doc-unavailable",
            Message::Ephemeral { .. } => "ephemeral",
            Message::RemoteSubscriptionChange { .. } => "remote-subscription-change",
            Message::RemoteHeadsChanged { .. } => "remote-heads-changed",
            Message::Unknown(message_type) => message_type,
        }
    }

    /// The sending peer's id, for the messages that carry one.
    pub fn sender_id(&self) -> Option<&str> {
        match self {
            Message::Join { sender_id, .. }
            | Message::Peer { sender_id, .. }
            | Message::Leave { sender_id }
            | Message::Sync { sender_id, .. }
            | Message::Request { sender_id, .. }
            | Message::DocUnavailable { sender_id, .. }
            | Message::Ephemeral { sender_id, .. }
            | Message::RemoteSubscriptionChange { sender_id, .. }
            | Message::RemoteHeadsChanged { sender_id, .. } => Some(sender_id),
            Message::Error { .. } | Message::Unknown(_) => None,
        }
    }

    /// The receiving peer's id, for the messages that carry one.
    pub fn target_id(&self) -> Option<&str> {
        match self {
            Message::Peer { target_id, .. }
            | Message::Sync { target_id, .. }
            | Message::Request { target_id, .. }
            | Message::DocUnavailable { target_id, .. }
            | Message::Ephemeral { target_id, .. }
            | Message::RemoteSubscriptionChange { target_id, .. }
            | Message::RemoteHeadsChanged { target_id, .. } => Some(target_id),
            Message::Join { .. }
            | Message::Leave { .. }
            | Message::Error { .. }
            | Message::Unknown(_) => None,
        }
    }

    /// Decodes one frame, refusing frames over [`MAX_MESSAGE_BYTES`].
    pub fn decode(frame: &[u8]) -> Result<Message, DecodeError> {
        Self::decode_limited(frame, MAX_MESSAGE_BYTES)
    }

    /// Decodes one frame, refusing frames over `max_bytes`.
    pub fn decode_limited(frame: &[u8], max_bytes: usize) -> Result<Message, DecodeError> {
        if frame.len() > max_bytes {
            return Err(DecodeError::TooLarge {
                len: frame.len(),
                max: max_bytes,
            });
        }
        let mut r = Reader::new(frame);
        let len = match r.item()? {
            Item::Map(len) => len,
            other => {
                return Err(DecodeError::NotAMap {
                    found: other.kind(),
                });
            }
        };
        let mut fields = Fields::default();
        r.entries(len, |r, key| {
            let slot = match key {
                Item::Text(_) => {
                    let name = r.string_after(key)?;
                    fields.slot(&name)
                }
                _ => {
                    r.skip_after(key, 2)?;
                    None
                }
            };
            let at = r.pos();
            let value = r.item()?;
            if value == Item::Break {
                return Err(DecodeError::InvalidCbor {
                    at,
                    reason: "map ends between a key and its value",
                });
            }
            r.skip_after(value, 2)?;
            if let Some(slot) = slot {
                *slot = Some(at);
            }
            Ok(())
        })?;
        if r.remaining() > 0 {
            return Err(DecodeError::TrailingBytes {
                count: r.remaining(),
            });
        }
        Fields::build(&fields, frame)
    }

    /// Encodes the message as one CBOR map (definite lengths, text keys, byte strings), as
    /// cbor-x and samod read it.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.payload_len());
        match self {
            Message::Join {
                sender_id,
                peer_metadata,
                supported_protocol_versions,
            } => {
                cbor::map(
                    &mut out,
                    3 + usize::from(supported_protocol_versions.is_some()),
                );
                entry_text(&mut out, "type", "join");
                entry_text(&mut out, "senderId", sender_id);
                cbor::text(&mut out, "peerMetadata");
                encode_metadata(&mut out, peer_metadata);
                if let Some(versions) = supported_protocol_versions {
                    cbor::text(&mut out, "supportedProtocolVersions");
                    encode_strings(&mut out, versions);
                }
            }
            Message::Peer {
                sender_id,
                target_id,
                peer_metadata,
                selected_protocol_version,
            } => {
                cbor::map(&mut out, 5);
                entry_text(&mut out, "type", "peer");
                entry_text(&mut out, "senderId", sender_id);
                cbor::text(&mut out, "peerMetadata");
                encode_metadata(&mut out, peer_metadata);
                entry_text(
                    &mut out,
                    "selectedProtocolVersion",
                    selected_protocol_version,
                );
                entry_text(&mut out, "targetId", target_id);
            }
            Message::Leave { sender_id } => {
                cbor::map(&mut out, 2);
                entry_text(&mut out, "type", "leave");
                entry_text(&mut out, "senderId", sender_id);
            }
            Message::Error { message } => {
                cbor::map(&mut out, 2);
                entry_text(&mut out, "type", "error");
                entry_text(&mut out, "message", message);
            }
            Message::Sync {
                sender_id,
                target_id,
                document_id,
                data,
            } => encode_doc_message(&mut out, "sync", sender_id, target_id, document_id, data),
            Message::Request {
                sender_id,
                target_id,
                document_id,
                data,
            } => encode_doc_message(&mut out, "request", sender_id, target_id, document_id, data),
            Message::DocUnavailable {
                sender_id,
                target_id,
                document_id,
            } => {
                cbor::map(&mut out, 4);
                entry_text(&mut out, "type", "doc-unavailable");
                entry_text(&mut out, "senderId", sender_id);
                entry_text(&mut out, "targetId", target_id);
                entry_text(&mut out, "documentId", document_id);
            }
            Message::Ephemeral {
                sender_id,
                target_id,
                count,
                session_id,
                document_id,
                data,
            } => encode_ephemeral(
                &mut out,
                sender_id,
                target_id,
                *count,
                session_id,
                document_id,
                data,
            ),
            Message::RemoteSubscriptionChange {
                sender_id,
                target_id,
                add,
                remove,
            } => {
                cbor::map(&mut out, 5);
                entry_text(&mut out, "type", "remote-subscription-change");
                entry_text(&mut out, "senderId", sender_id);
                entry_text(&mut out, "targetId", target_id);
                cbor::text(&mut out, "add");
                encode_strings(&mut out, add);
                cbor::text(&mut out, "remove");
                encode_strings(&mut out, remove);
            }
            Message::RemoteHeadsChanged {
                sender_id,
                target_id,
                document_id,
                new_heads,
            } => {
                cbor::map(&mut out, 5);
                entry_text(&mut out, "type", "remote-heads-changed");
                entry_text(&mut out, "senderId", sender_id);
                entry_text(&mut out, "targetId", target_id);
                entry_text(&mut out, "documentId", document_id);
                cbor::text(&mut out, "newHeads");
                cbor::map(&mut out, new_heads.len());
                for entry in new_heads {
                    cbor::text(&mut out, &entry.storage_id);
                    cbor::map(&mut out, 2);
                    cbor::text(&mut out, "heads");
                    encode_strings(&mut out, &entry.heads);
                    cbor::text(&mut out, "timestamp");
                    cbor::number(&mut out, entry.timestamp);
                }
            }
            Message::Unknown(message_type) => {
                cbor::map(&mut out, 1);
                entry_text(&mut out, "type", message_type);
            }
        }
        out
    }

    fn payload_len(&self) -> usize {
        match self {
            Message::Sync { data, .. }
            | Message::Request { data, .. }
            | Message::Ephemeral { data, .. } => data.len(),
            _ => 0,
        }
    }
}

/// Encodes a `sync` or `request` message from borrowed parts.
pub(super) fn encode_doc_message(
    out: &mut Vec<u8>,
    message_type: &str,
    sender_id: &str,
    target_id: &str,
    document_id: &str,
    data: &[u8],
) {
    cbor::map(out, 5);
    entry_text(out, "type", message_type);
    entry_text(out, "senderId", sender_id);
    entry_text(out, "targetId", target_id);
    entry_text(out, "documentId", document_id);
    cbor::text(out, "data");
    cbor::bytes(out, data);
}

/// Encodes an `ephemeral` message from borrowed parts.
pub(super) fn encode_ephemeral(
    out: &mut Vec<u8>,
    sender_id: &str,
    target_id: &str,
    count: u64,
    session_id: &str,
    document_id: &str,
    data: &[u8],
) {
    cbor::map(out, 7);
    entry_text(out, "type", "ephemeral");
    entry_text(out, "senderId", sender_id);
    entry_text(out, "targetId", target_id);
    cbor::text(out, "count");
    cbor::number(out, count);
    entry_text(out, "sessionId", session_id);
    entry_text(out, "documentId", document_id);
    cbor::text(out, "data");
    cbor::bytes(out, data);
}

fn entry_text(out: &mut Vec<u8>, key: &str, value: &str) {
    cbor::text(out, key);
    cbor::text(out, value);
}

fn encode_strings(out: &mut Vec<u8>, strings: &[String]) {
    cbor::array(out, strings.len());
    for s in strings {
        cbor::text(out, s);
    }
}

fn encode_metadata(out: &mut Vec<u8>, metadata: &PeerMetadata) {
    cbor::map(out, 1 + usize::from(metadata.storage_id.is_some()));
    if let Some(storage_id) = &metadata.storage_id {
        entry_text(out, "storageId", storage_id);
    }
    cbor::text(out, "isEphemeral");
    cbor::boolean(out, metadata.is_ephemeral);
}

/// Where the values of the known keys start in the frame (the last occurrence wins, as in
/// JavaScript).
#[derive(Debug, Default)]
struct Fields {
    message_type: Option<usize>,
    sender_id: Option<usize>,
    target_id: Option<usize>,
    document_id: Option<usize>,
    data: Option<usize>,
    count: Option<usize>,
    session_id: Option<usize>,
    message: Option<usize>,
    peer_metadata: Option<usize>,
    metadata: Option<usize>,
    supported_protocol_versions: Option<usize>,
    selected_protocol_version: Option<usize>,
    add: Option<usize>,
    remove: Option<usize>,
    new_heads: Option<usize>,
}

impl Fields {
    fn slot(&mut self, key: &[u8]) -> Option<&mut Option<usize>> {
        Some(match key {
            b"type" => &mut self.message_type,
            b"senderId" => &mut self.sender_id,
            b"targetId" => &mut self.target_id,
            b"documentId" => &mut self.document_id,
            b"data" => &mut self.data,
            b"count" => &mut self.count,
            b"sessionId" => &mut self.session_id,
            b"message" => &mut self.message,
            b"peerMetadata" => &mut self.peer_metadata,
            b"metadata" => &mut self.metadata,
            b"supportedProtocolVersions" => &mut self.supported_protocol_versions,
            b"selectedProtocolVersion" => &mut self.selected_protocol_version,
            b"add" => &mut self.add,
            b"remove" => &mut self.remove,
            b"newHeads" => &mut self.new_heads,
            _ => return None,
        })
    }

    fn build(&self, frame: &[u8]) -> Result<Message, DecodeError> {
        let message_type =
            read_text(frame, self.message_type, "type")?.ok_or(DecodeError::MissingType)?;
        let known: &'static str = match message_type.as_str() {
            "join" => "join",
            "peer" => "peer",
            "leave" => "leave",
            "error" => "error",
            "sync" => "sync",
            "request" => "request",
            "doc-unavailable" => "doc-unavailable",
            "ephemeral" => "ephemeral",
            "remote-subscription-change" => "remote-subscription-change",
            "remote-heads-changed" => "remote-heads-changed",
            _ => {
                let mut message_type = message_type;
                if message_type.len() > MAX_TYPE_LEN {
                    let mut end = MAX_TYPE_LEN;
                    while !message_type.is_char_boundary(end) {
                        end -= 1;
                    }
                    message_type.truncate(end);
                }
                return Ok(Message::Unknown(message_type));
            }
        };
        let f = Required {
            frame,
            message_type: known,
        };
        Ok(match known {
            "join" => Message::Join {
                sender_id: f.text(self.sender_id, "senderId")?,
                peer_metadata: self.metadata(frame)?,
                supported_protocol_versions: read_versions(
                    frame,
                    self.supported_protocol_versions,
                )?,
            },
            "peer" => Message::Peer {
                sender_id: f.text(self.sender_id, "senderId")?,
                target_id: f.text(self.target_id, "targetId")?,
                peer_metadata: self.metadata(frame)?,
                selected_protocol_version: f
                    .text(self.selected_protocol_version, "selectedProtocolVersion")?,
            },
            "leave" => Message::Leave {
                sender_id: f.text(self.sender_id, "senderId")?,
            },
            "error" => Message::Error {
                message: f.text(self.message, "message")?,
            },
            "sync" | "request" => {
                let sender_id = f.text(self.sender_id, "senderId")?;
                let target_id = f.text(self.target_id, "targetId")?;
                let document_id = f.document_id(self.document_id)?;
                let data = f.bytes(self.data, "data")?;
                if known == "sync" {
                    Message::Sync {
                        sender_id,
                        target_id,
                        document_id,
                        data,
                    }
                } else {
                    Message::Request {
                        sender_id,
                        target_id,
                        document_id,
                        data,
                    }
                }
            }
            "doc-unavailable" => Message::DocUnavailable {
                sender_id: f.text(self.sender_id, "senderId")?,
                target_id: f.text(self.target_id, "targetId")?,
                document_id: f.document_id(self.document_id)?,
            },
            "ephemeral" => Message::Ephemeral {
                sender_id: f.text(self.sender_id, "senderId")?,
                target_id: f.text(self.target_id, "targetId")?,
                count: f.integer(self.count, "count")?,
                session_id: f.text(self.session_id, "sessionId")?,
                document_id: f.document_id(self.document_id)?,
                data: f.bytes(self.data, "data")?,
            },
            "remote-subscription-change" => Message::RemoteSubscriptionChange {
                sender_id: f.text(self.sender_id, "senderId")?,
                target_id: f.text(self.target_id, "targetId")?,
                add: read_loose_strings(frame, self.add)?,
                remove: read_loose_strings(frame, self.remove)?,
            },
            _ => Message::RemoteHeadsChanged {
                sender_id: f.text(self.sender_id, "senderId")?,
                target_id: f.text(self.target_id, "targetId")?,
                document_id: f.document_id(self.document_id)?,
                new_heads: read_new_heads(frame, self.new_heads)?,
            },
        })
    }

    /// `peerMetadata`, else the older `metadata`, else the default.
    fn metadata(&self, frame: &[u8]) -> Result<PeerMetadata, DecodeError> {
        for (at, field) in [
            (self.peer_metadata, "peerMetadata"),
            (self.metadata, "metadata"),
        ] {
            if let Some(metadata) = read_metadata(frame, at, field)? {
                return Ok(metadata);
            }
        }
        Ok(PeerMetadata::default())
    }
}

/// Reads the required fields of one message type, naming it in errors.
struct Required<'a> {
    frame: &'a [u8],
    message_type: &'static str,
}

impl Required<'_> {
    fn missing(&self, field: &'static str) -> DecodeError {
        DecodeError::MissingField {
            message_type: self.message_type,
            field,
        }
    }

    fn text(&self, at: Option<usize>, field: &'static str) -> Result<String, DecodeError> {
        read_text(self.frame, at, field)?.ok_or_else(|| self.missing(field))
    }

    fn bytes(&self, at: Option<usize>, field: &'static str) -> Result<Vec<u8>, DecodeError> {
        let (mut r, item) = present(self.frame, at)?.ok_or_else(|| self.missing(field))?;
        match item {
            Item::Bytes(_) => r.bytes_after(item),
            other => Err(wrong(field, "byte string", other)),
        }
    }

    /// A `documentId`: a text string as sent, or a byte string (as samod also reads) turned
    /// into its bs58check string.
    fn document_id(&self, at: Option<usize>) -> Result<String, DecodeError> {
        let field = "documentId";
        let (mut r, item) = present(self.frame, at)?.ok_or_else(|| self.missing(field))?;
        let start = r.pos();
        match item {
            Item::Text(_) => r.text_after(item, start),
            Item::Bytes(_) => {
                let bytes = r.string_after(item)?;
                if bytes.len() > MAX_DOCUMENT_ID_BYTES {
                    return Err(DecodeError::DocumentIdTooLong {
                        len: bytes.len(),
                        max: MAX_DOCUMENT_ID_BYTES,
                    });
                }
                Ok(doc_id::document_id_string(&bytes))
            }
            other => Err(wrong(field, "text string", other)),
        }
    }

    fn integer(&self, at: Option<usize>, field: &'static str) -> Result<u64, DecodeError> {
        let (_, item) = present(self.frame, at)?.ok_or_else(|| self.missing(field))?;
        match item {
            Item::Uint(n) => Ok(n),
            Item::Float(f) => float_to_u64(f).ok_or(DecodeError::NotAnInteger { field }),
            Item::Negative(_) => Err(DecodeError::NotAnInteger { field }),
            other => Err(wrong(field, "number", other)),
        }
    }
}

/// A float that holds a non-negative integer within `u64`, as that integer (JavaScript sends
/// every number as a float64 once it is not a small integer).
fn float_to_u64(f: f64) -> Option<u64> {
    // 2^64 is exactly representable; every float below it that is integral fits.
    (f.is_finite() && f >= 0.0 && f.fract() == 0.0 && f < 18_446_744_073_709_551_616.0)
        .then_some(f as u64)
}

fn wrong(field: &'static str, expected: &'static str, found: Item) -> DecodeError {
    DecodeError::WrongType {
        field,
        expected,
        found: found.kind(),
    }
}

/// The reader after the head of the value at `at`, and that head; `None` when the key is
/// absent or its value `undefined`/`null`.
fn present(frame: &[u8], at: Option<usize>) -> Result<Option<(Reader<'_>, Item)>, DecodeError> {
    let Some(at) = at else { return Ok(None) };
    let mut r = Reader::at(frame, at);
    let item = r.item()?;
    Ok((!item.is_absent()).then_some((r, item)))
}

fn read_text(
    frame: &[u8],
    at: Option<usize>,
    field: &'static str,
) -> Result<Option<String>, DecodeError> {
    let Some((mut r, item)) = present(frame, at)? else {
        return Ok(None);
    };
    let start = r.pos();
    match item {
        Item::Text(_) => r.text_after(item, start).map(Some),
        other => Err(wrong(field, "text string", other)),
    }
}

/// A map's entries: calls `entry` with each text key and the reader before its value, which
/// `entry` must consume; skips pairs whose key is not text.
fn for_each_pair(
    r: &mut Reader<'_>,
    len: Len,
    depth: usize,
    mut entry: impl FnMut(&mut Reader<'_>, &str) -> Result<(), DecodeError>,
) -> Result<(), DecodeError> {
    r.entries(len, |r, key| {
        let at = r.pos();
        if let Item::Text(_) = key {
            let key = r.text_after(key, at)?;
            entry(r, &key)
        } else {
            r.skip_after(key, depth + 1)?;
            r.skip(depth + 1)
        }
    })
}

fn read_metadata(
    frame: &[u8],
    at: Option<usize>,
    field: &'static str,
) -> Result<Option<PeerMetadata>, DecodeError> {
    let Some((mut r, item)) = present(frame, at)? else {
        return Ok(None);
    };
    let Item::Map(len) = item else {
        return Err(wrong(field, "map", item));
    };
    let mut metadata = PeerMetadata::default();
    for_each_pair(&mut r, len, 2, |r, key| {
        let at = r.pos();
        let value = r.item()?;
        match key {
            "storageId" => {
                metadata.storage_id = match value {
                    Item::Text(_) => Some(r.text_after(value, at)?),
                    v if v.is_absent() => None,
                    other => return Err(wrong("storageId", "text string", other)),
                }
            }
            "isEphemeral" => {
                metadata.is_ephemeral = match value {
                    Item::Bool(b) => b,
                    v if v.is_absent() => false,
                    other => return Err(wrong("isEphemeral", "boolean", other)),
                }
            }
            _ => r.skip_after(value, 3)?,
        }
        Ok(())
    })?;
    Ok(Some(metadata))
}

fn read_versions(frame: &[u8], at: Option<usize>) -> Result<Option<Vec<String>>, DecodeError> {
    let field = "supportedProtocolVersions";
    let Some((mut r, item)) = present(frame, at)? else {
        return Ok(None);
    };
    let Item::Array(len) = item else {
        return Err(wrong(field, "array", item));
    };
    let mut versions = Vec::new();
    r.entries(len, |r, item| {
        let at = r.pos();
        let Item::Text(_) = item else {
            return Err(wrong(field, "array of text strings", item));
        };
        let version = r.text_after(item, at)?;
        if versions.len() < MAX_PROTOCOL_VERSIONS {
            versions.push(version);
        }
        Ok(())
    })?;
    Ok(Some(versions))
}

/// A list of strings read loosely: anything but an array is taken as empty, non-text entries
/// are skipped, and at most [`MAX_LIST_ITEMS`] are kept.
fn read_loose_strings(frame: &[u8], at: Option<usize>) -> Result<Vec<String>, DecodeError> {
    let Some((mut r, item)) = present(frame, at)? else {
        return Ok(Vec::new());
    };
    read_loose_strings_after(&mut r, item, 2)
}

fn read_loose_strings_after(
    r: &mut Reader<'_>,
    item: Item,
    depth: usize,
) -> Result<Vec<String>, DecodeError> {
    let mut strings = Vec::new();
    let Item::Array(len) = item else {
        r.skip_after(item, depth)?;
        return Ok(strings);
    };
    r.entries(len, |r, item| {
        let at = r.pos();
        match item {
            Item::Text(_) if strings.len() < MAX_LIST_ITEMS => {
                // Invalid UTF-8 in a loosely read list is skipped like any other bad entry.
                if let Ok(s) = r.text_after(item, at) {
                    strings.push(s);
                }
                Ok(())
            }
            other => r.skip_after(other, depth + 1),
        }
    })?;
    Ok(strings)
}

/// `newHeads`, read loosely: malformed entries are skipped.
fn read_new_heads(frame: &[u8], at: Option<usize>) -> Result<Vec<RemoteHeads>, DecodeError> {
    let mut new_heads = Vec::new();
    let Some((mut r, item)) = present(frame, at)? else {
        return Ok(new_heads);
    };
    let Item::Map(len) = item else {
        r.skip_after(item, 2)?;
        return Ok(new_heads);
    };
    for_each_pair(&mut r, len, 2, |r, storage_id| {
        let value = r.item()?;
        let Item::Map(len) = value else {
            return r.skip_after(value, 3);
        };
        let mut entry = RemoteHeads {
            storage_id: storage_id.to_owned(),
            ..RemoteHeads::default()
        };
        for_each_pair(r, len, 3, |r, key| {
            let value = r.item()?;
            match key {
                "heads" => entry.heads = read_loose_strings_after(r, value, 4)?,
                "timestamp" => {
                    entry.timestamp = match value {
                        Item::Uint(n) => n,
                        Item::Float(f) if f.is_finite() && f >= 0.0 => f as u64,
                        other => {
                            r.skip_after(other, 4)?;
                            0
                        }
                    }
                }
                _ => r.skip_after(value, 4)?,
            }
            Ok(())
        })?;
        if new_heads.len() < MAX_LIST_ITEMS {
            new_heads.push(entry);
        }
        Ok(())
    })?;
    Ok(new_heads)
}
