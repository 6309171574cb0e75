//! The server side of one automerge-repo WebSocket connection, as a state machine.
//!
//! The driver owns the socket. It feeds every binary frame to [`Connection::handle`], every
//! pong to [`Connection::pong`], and calls [`Connection::handle_timeout`] at
//! [`Connection::poll_timeout`]; it acts on the [`Event`]s in order: sends what
//! [`Event::Send`] carries (encoded with [`Message::encode`]) as a binary frame, sends a
//! WebSocket ping on [`Event::Ping`], hands documents' sync messages to the store, relays
//! [`Event::Ephemeral`] to the document's other clients, and on [`Event::Close`] closes the
//! socket (after sending anything that came before it) and drops the connection.
//!
//! Rules: the first message must be `join` offering protocol version "1" (or no versions, as
//! the JavaScript server allows); the answer is `peer`, and a repeated `join` from the same
//! peer (clients retry) is answered again. After that every message's `senderId` must be the
//! joined peer and its `targetId` this server. A protocol violation is answered with an
//! `error` message and a close; a client silent for [`DEAD_AFTER`] (no frame, no pong) or not
//! joined within [`JOIN_WITHIN`] is closed. Time is a [`Duration`] since any fixed origin.

use std::time::Duration;

use super::doc_id::{self, DocumentIdError};
use super::message::{
    self, DecodeError, MAX_MESSAGE_BYTES, Message, PROTOCOL_VERSION, PeerMetadata,
};
use crate::proto::wire::DocIdBytes;

/// How often the driver pings the client (the JavaScript server pings every 5 s).
pub const PING_EVERY: Duration = Duration::from_secs(5);

/// A client not heard from (no frame, no pong) for this long is closed: three missed pings.
pub const DEAD_AFTER: Duration = Duration::from_secs(15);

/// A client must send `join` within this long of the connection opening (clients send it as
/// soon as the socket opens).
pub const JOIN_WITHIN: Duration = Duration::from_secs(10);

/// Longest peer id or message quoted in a [`CloseReason`], in bytes.
const MAX_QUOTED_LEN: usize = 128;

/// Why a connection closes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CloseReason {
    /// A frame is not a valid automerge-repo message (or is too large).
    #[error("invalid message: {0}")]
    BadMessage(#[from] DecodeError),
    /// The first message was not `join`.
    #[error("`{message_type}` message before `join`")]
    NotJoined {
        /// The type of the message that came first.
        message_type: String,
    },
    /// The client does not offer protocol version "1".
    #[error(
        "unsupported protocol version: the client offers {offered:?}, this server speaks \"1\""
    )]
    UnsupportedProtocol {
        /// The versions offered.
        offered: Vec<String>,
    },
    /// A message's `senderId` is not the peer id the client joined with.
    #[error("message from {got:?} on the connection of peer {joined:?}")]
    WrongSender {
        /// The joined peer id.
        joined: String,
        /// The message's `senderId`.
        got: String,
    },
    /// A message's `targetId` is not this server's peer id.
    #[error("message for {got:?} sent to peer {server:?}")]
    WrongTarget {
        /// This server's peer id.
        server: String,
        /// The message's `targetId`.
        got: String,
    },
    /// A message names a document with an id that is not bs58check.
    #[error("invalid document id: {0}")]
    BadDocumentId(DocumentIdError),
    /// The client sent a message that only a server sends.
    #[error("unexpected `{message_type}` message from a client")]
    Unexpected {
        /// Its type.
        message_type: String,
    },
    /// The client reported an error (and closes itself).
    #[error("the client reported an error: {message}")]
    ClientError {
        /// What it said.
        message: String,
    },
    /// The client said it is leaving.
    #[error("the client left")]
    ClientLeft,
    /// Nothing heard from the client (no frame, no pong) for too long.
    #[error("no frame or pong from the client for {silent_for:?}")]
    Dead {
        /// How long it has been silent.
        silent_for: Duration,
    },
    /// The client did not send `join` in time.
    #[error("no `join` within {waited:?} of connecting")]
    NoJoin {
        /// How long it had.
        waited: Duration,
    },
}

impl CloseReason {
    /// The WebSocket close code to send: 1009 (message too big) for an oversized frame, 1002
    /// (protocol error) for other protocol violations, 1000 (normal) otherwise.
    pub fn close_code(&self) -> u16 {
        match self {
            CloseReason::BadMessage(DecodeError::TooLarge { .. }) => 1009,
            CloseReason::ClientError { .. }
            | CloseReason::ClientLeft
            | CloseReason::Dead { .. }
            | CloseReason::NoJoin { .. } => 1000,
            _ => 1002,
        }
    }

    /// True when the client is told why with an `error` message before the close.
    pub fn tells_client(&self) -> bool {
        !matches!(
            self,
            CloseReason::ClientError { .. } | CloseReason::ClientLeft | CloseReason::Dead { .. }
        )
    }
}

/// An `ephemeral` message from the client, to relay to the document's other clients.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Ephemeral {
    /// The document it is about.
    pub document_id: DocIdBytes,
    /// The peer that created it (the client; kept when relayed).
    pub sender_id: String,
    /// The sender's session (kept when relayed).
    pub session_id: String,
    /// The sender's counter in that session (kept when relayed).
    pub count: u64,
    /// The payload.
    pub data: Vec<u8>,
}

/// What the driver must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Send this message to the client as a binary frame ([`Message::encode`]).
    Send(Message),
    /// The client joined (once per connection; after the `peer` answer in the same batch).
    Joined {
        /// The client's peer id.
        client_peer_id: String,
        /// What it says about itself.
        metadata: PeerMetadata,
    },
    /// The client sent a sync message for a document.
    Sync {
        /// The document.
        document_id: DocIdBytes,
        /// The Automerge sync message.
        data: Vec<u8>,
    },
    /// The client asks for a document: apply the sync message if the node has the document
    /// and the client may see it, else answer with [`Connection::doc_unavailable`] (the client
    /// waits for that answer).
    Request {
        /// The document.
        document_id: DocIdBytes,
        /// The Automerge sync message.
        data: Vec<u8>,
    },
    /// The client does not have a document the node offered.
    DocUnavailable {
        /// The document.
        document_id: DocIdBytes,
    },
    /// Relay this to the document's other clients with [`Connection::ephemeral`] on their
    /// connections (already deduplicated against this client's earlier ones).
    Ephemeral(Ephemeral),
    /// A valid message this server does not act on (`remote-subscription-change`,
    /// `remote-heads-changed`, an unknown type, an id that is not 16 bytes): log it at debug.
    Ignored {
        /// Its type.
        message_type: String,
    },
    /// Send a WebSocket ping.
    Ping,
    /// Close the socket (with [`CloseReason::close_code`]) and drop the connection; nothing
    /// more comes from it.
    Close {
        /// Why.
        reason: CloseReason,
    },
}

/// The joined client.
#[derive(Debug, Clone)]
struct Client {
    peer_id: String,
    metadata: PeerMetadata,
}

/// One client's connection to this server.
#[derive(Debug, Clone)]
pub struct Connection {
    server_peer_id: String,
    server_metadata: PeerMetadata,
    max_message_bytes: usize,
    client: Option<Client>,
    closed: bool,
    opened_at: Duration,
    last_heard: Duration,
    next_ping: Duration,
    /// The session and highest count of the client's ephemeral messages so far.
    ephemeral_session: Option<(String, u64)>,
}

impl Connection {
    /// A connection opened at `now`, on a server with peer id `server_peer_id` (the peer id
    /// clients see; the default metadata says it has no storage id and is not ephemeral).
    pub fn new(server_peer_id: impl Into<String>, now: Duration) -> Connection {
        Connection {
            server_peer_id: server_peer_id.into(),
            server_metadata: PeerMetadata::default(),
            max_message_bytes: MAX_MESSAGE_BYTES,
            client: None,
            closed: false,
            opened_at: now,
            last_heard: now,
            next_ping: now + PING_EVERY,
            ephemeral_session: None,
        }
    }

    /// Sets the metadata sent in `peer` (a storage id lets clients keep sync state for this
    /// server across reconnects).
    pub fn with_metadata(mut self, metadata: PeerMetadata) -> Connection {
        self.server_metadata = metadata;
        self
    }

    /// Lowers the largest frame accepted (default and ceiling: [`MAX_MESSAGE_BYTES`]).
    pub fn with_max_message_bytes(mut self, max: usize) -> Connection {
        self.max_message_bytes = max.min(MAX_MESSAGE_BYTES);
        self
    }

    /// This server's peer id.
    pub fn server_peer_id(&self) -> &str {
        &self.server_peer_id
    }

    /// The client's peer id, once it has joined.
    pub fn client_peer_id(&self) -> Option<&str> {
        self.client.as_ref().map(|c| c.peer_id.as_str())
    }

    /// The client's metadata, once it has joined.
    pub fn client_metadata(&self) -> Option<&PeerMetadata> {
        self.client.as_ref().map(|c| &c.metadata)
    }

    /// True once a [`Event::Close`] has been returned; the connection then ignores input.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Handles one binary frame received at `now`.
    pub fn handle(&mut self, frame: &[u8], now: Duration) -> Vec<Event> {
        if self.closed {
            return Vec::new();
        }
        self.last_heard = self.last_heard.max(now);
        let message = match Message::decode_limited(frame, self.max_message_bytes) {
            Ok(message) => message,
            Err(e) => return self.close(CloseReason::BadMessage(e)),
        };
        let Some(client) = &self.client else {
            return match message {
                Message::Join {
                    sender_id,
                    peer_metadata,
                    supported_protocol_versions,
                } => self.on_join(sender_id, peer_metadata, supported_protocol_versions),
                other => self.close(CloseReason::NotJoined {
                    message_type: cut(other.message_type()),
                }),
            };
        };
        if let Some(sender) = message.sender_id()
            && sender != client.peer_id
        {
            let reason = CloseReason::WrongSender {
                joined: cut(&client.peer_id),
                got: cut(sender),
            };
            return self.close(reason);
        }
        if let Some(target) = message.target_id()
            && target != self.server_peer_id
        {
            let reason = CloseReason::WrongTarget {
                server: cut(&self.server_peer_id),
                got: cut(target),
            };
            return self.close(reason);
        }
        match message {
            Message::Join {
                sender_id,
                peer_metadata,
                supported_protocol_versions,
            } => self.on_join(sender_id, peer_metadata, supported_protocol_versions),
            Message::Peer { .. } => self.close(CloseReason::Unexpected {
                message_type: "peer".into(),
            }),
            Message::Leave { .. } => self.close(CloseReason::ClientLeft),
            Message::Error { message } => self.close(CloseReason::ClientError {
                message: cut(&message),
            }),
            Message::Sync {
                document_id, data, ..
            } => self
                .on_document_message(document_id, |document_id| Event::Sync { document_id, data }),
            Message::Request {
                document_id, data, ..
            } => self.on_document_message(document_id, |document_id| Event::Request {
                document_id,
                data,
            }),
            Message::DocUnavailable { document_id, .. } => match self.document_id(&document_id) {
                Ok(Some(document_id)) => vec![Event::DocUnavailable { document_id }],
                Ok(None) => vec![ignored("doc-unavailable")],
                Err(reason) => self.close(reason),
            },
            Message::Ephemeral {
                sender_id,
                count,
                session_id,
                document_id,
                data,
                ..
            } => {
                let document_id = match self.document_id(&document_id) {
                    Ok(Some(id)) => id,
                    Ok(None) => return vec![ignored("ephemeral")],
                    Err(reason) => return self.close(reason),
                };
                if let Some((session, last)) = &self.ephemeral_session
                    && *session == session_id
                    && count <= *last
                {
                    return Vec::new();
                }
                self.ephemeral_session = Some((session_id.clone(), count));
                vec![Event::Ephemeral(Ephemeral {
                    document_id,
                    sender_id,
                    session_id,
                    count,
                    data,
                })]
            }
            other @ (Message::RemoteSubscriptionChange { .. }
            | Message::RemoteHeadsChanged { .. }
            | Message::Unknown(_)) => vec![ignored(other.message_type())],
        }
    }

    /// Records a pong received at `now`.
    pub fn pong(&mut self, now: Duration) {
        self.last_heard = self.last_heard.max(now);
    }

    /// When [`Connection::handle_timeout`] must be called next; `None` once closed.
    pub fn poll_timeout(&self) -> Option<Duration> {
        if self.closed {
            return None;
        }
        let mut at = self.next_ping.min(self.last_heard + DEAD_AFTER);
        if self.client.is_none() {
            at = at.min(self.opened_at + JOIN_WITHIN);
        }
        Some(at)
    }

    /// Fires the timers due at `now`: a ping, or a close when the client has gone silent or
    /// never joined.
    pub fn handle_timeout(&mut self, now: Duration) -> Vec<Event> {
        if self.closed {
            return Vec::new();
        }
        if self.client.is_none() && now >= self.opened_at + JOIN_WITHIN {
            return self.close(CloseReason::NoJoin {
                waited: now.saturating_sub(self.opened_at),
            });
        }
        if now >= self.last_heard + DEAD_AFTER {
            return self.close(CloseReason::Dead {
                silent_for: now.saturating_sub(self.last_heard),
            });
        }
        if now >= self.next_ping {
            self.next_ping = now + PING_EVERY;
            return vec![Event::Ping];
        }
        Vec::new()
    }

    /// The frame carrying an Automerge sync message for a document to the client; `None`
    /// before the client has joined or after the close. `data` must not be empty (the
    /// JavaScript library refuses zero-length messages).
    pub fn sync(&self, document_id: &DocIdBytes, data: &[u8]) -> Option<Vec<u8>> {
        let client = self.open_client()?;
        let mut out = Vec::with_capacity(128 + data.len());
        message::encode_doc_message(
            &mut out,
            "sync",
            &self.server_peer_id,
            &client.peer_id,
            &doc_id::document_id_string(document_id),
            data,
        );
        Some(out)
    }

    /// The frame telling the client that this server does not have a document or will not
    /// share it; `None` before the client has joined or after the close.
    pub fn doc_unavailable(&self, document_id: &DocIdBytes) -> Option<Vec<u8>> {
        let client = self.open_client()?;
        Some(
            self.doc_unavailable_message(client, doc_id::document_id_string(document_id))
                .encode(),
        )
    }

    /// The frame relaying another client's ephemeral message to this client (keeping its
    /// sender, session and count); `None` before this client has joined or after the close.
    pub fn ephemeral(&self, message: &Ephemeral) -> Option<Vec<u8>> {
        let client = self.open_client()?;
        let mut out = Vec::with_capacity(128 + message.data.len());
        message::encode_ephemeral(
            &mut out,
            &message.sender_id,
            &client.peer_id,
            message.count,
            &message.session_id,
            &doc_id::document_id_string(&message.document_id),
            &message.data,
        );
        Some(out)
    }

    fn open_client(&self) -> Option<&Client> {
        self.client.as_ref().filter(|_| !self.closed)
    }

    fn doc_unavailable_message(&self, client: &Client, document_id: String) -> Message {
        Message::DocUnavailable {
            sender_id: self.server_peer_id.clone(),
            target_id: client.peer_id.clone(),
            document_id,
        }
    }

    fn on_join(
        &mut self,
        sender_id: String,
        metadata: PeerMetadata,
        versions: Option<Vec<String>>,
    ) -> Vec<Event> {
        if let Some(offered) = versions
            && !offered.iter().any(|v| v == PROTOCOL_VERSION)
        {
            let offered = offered.iter().map(|v| cut(v)).collect();
            return self.close(CloseReason::UnsupportedProtocol { offered });
        }
        let peer = Event::Send(Message::Peer {
            sender_id: self.server_peer_id.clone(),
            target_id: sender_id.clone(),
            peer_metadata: self.server_metadata.clone(),
            selected_protocol_version: PROTOCOL_VERSION.into(),
        });
        if self.client.is_some() {
            // A retry from the joined peer (another sender was refused before this).
            return vec![peer];
        }
        self.client = Some(Client {
            peer_id: sender_id.clone(),
            metadata: metadata.clone(),
        });
        vec![
            peer,
            Event::Joined {
                client_peer_id: sender_id,
                metadata,
            },
        ]
    }

    /// A `sync` or `request`: the event for a 16-byte id, `doc-unavailable` for other valid
    /// ids (this node holds only 16-byte ids), a close for an invalid one.
    fn on_document_message(
        &mut self,
        document_id: String,
        event: impl FnOnce(DocIdBytes) -> Event,
    ) -> Vec<Event> {
        match self.document_id(&document_id) {
            Ok(Some(id)) => vec![event(id)],
            Ok(None) => match &self.client {
                Some(client) => vec![Event::Send(
                    self.doc_unavailable_message(client, document_id),
                )],
                None => Vec::new(),
            },
            Err(reason) => self.close(reason),
        }
    }

    /// A 16-byte id; `None` for a valid id of another length; a close reason for a string
    /// that is not an id.
    fn document_id(&self, id: &str) -> Result<Option<DocIdBytes>, CloseReason> {
        match doc_id::parse_document_id16(id) {
            Ok(id) => Ok(Some(id)),
            Err(DocumentIdError::WrongLength { .. }) => Ok(None),
            Err(e) => Err(CloseReason::BadDocumentId(e)),
        }
    }

    fn close(&mut self, reason: CloseReason) -> Vec<Event> {
        self.closed = true;
        let mut events = Vec::with_capacity(2);
        if reason.tells_client() {
            events.push(Event::Send(Message::Error {
                message: reason.to_string(),
            }));
        }
        events.push(Event::Close { reason });
        events
    }
}

fn ignored(message_type: &str) -> Event {
    Event::Ignored {
        message_type: message_type.to_owned(),
    }
}

/// A string cut to [`MAX_QUOTED_LEN`] bytes at a character boundary.
fn cut(s: &str) -> String {
    let mut end = s.len().min(MAX_QUOTED_LEN);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}
