//! automerge-repo's network protocol, version "1", sans-IO: what a JavaScript
//! `@automerge/automerge-repo-network-websocket` client or a Rust `samod` repo speaks to a
//! server over a WebSocket.
//!
//! - [`Message`]: the messages, and their CBOR encoding (one map per binary frame, as cbor-x
//!   with `useRecords: false, tagUint8Array: false` and samod write it). Decoding never panics,
//!   never allocates more than a small multiple of the frame, and refuses with a
//!   [`DecodeError`] what is not a message.
//! - [`doc_id`]: document ids (bs58check strings of the id's bytes) and `automerge:` URLs.
//! - [`Connection`]: the server side of one connection: the `join`/`peer` handshake, the
//!   `senderId`/`targetId` checks, pings and dead clients, as events for a driver.
//!
//! What this module must never do: IO, read a clock, or decide about documents (whether the
//! node has one, whether a client may see or change it): that is the driver's, with the
//! store and the share policy.

mod cbor;
mod connection;
pub mod doc_id;
mod message;

pub use cbor::MAX_DEPTH;
pub use connection::{
    CloseReason, Connection, DEAD_AFTER, Ephemeral, Event, JOIN_WITHIN, PING_EVERY,
};
pub use doc_id::{
    AutomergeUrl, DocumentIdError, automerge_url, automerge_url_at, document_id_string,
    parse_document_id, parse_document_id16,
};
pub use message::{
    DecodeError, MAX_DOCUMENT_ID_BYTES, MAX_LIST_ITEMS, MAX_MESSAGE_BYTES, MAX_PROTOCOL_VERSIONS,
    MAX_TYPE_LEN, Message, PROTOCOL_VERSION, PeerMetadata, RemoteHeads,
};

#[cfg(test)]
mod tests;
