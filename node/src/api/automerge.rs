//! `GET /automerge`: automerge-repo's WebSocket protocol, so that a JavaScript `Repo` (Node.js
//! or a browser, with `@automerge/automerge-repo-network-websocket`) or a Rust `samod` repo
//! joins the mesh as a client of this node.
//!
//! The protocol itself (messages, handshake, pings, dead clients) is `mesh::proto::amrepo`'s
//! [`Connection`]; this is its driver: one task per socket, with the store as the document
//! side. What a client may do is the token's:
//! - The token comes in the URL query (`?token=…`): browsers cannot set headers on a WebSocket
//!   upgrade. It is checked at the upgrade, before any message, by the API's access rule
//!   (`monitor` at least), and again at every ping, so a revoked token loses its socket.
//! - Every document the node holds may be read, as `GET /doc` reads it. A document the node
//!   does not hold (or retired) is answered `doc-unavailable` at once; documents a client
//!   creates are not taken in: the node holds only the mesh's named documents.
//! - A `monitor` token may not change anything: a sync message that would change a document
//!   is refused whole, and the socket is closed with the reason (1008). `operator` and
//!   `admin` tokens may write what a mesh peer may write: the store's authorship and write
//!   rules judge a client's changes as they judge a peer's (another node's results are
//!   refused; in a mesh that requires signed workflow versions, an unsigned edit is refused
//!   and workflows are applied with `POST /workflows` instead).
//! - A change from a client is made durable (fsync) before the answer that acknowledges it
//!   leaves: the answer's heads tell the client the node holds its change.
//!
//! Each socket is its own sync peer in the store (`session:<n>:<client peer id>`), whose sync
//! state lives as long as the socket: a client's peer id is new on every connection.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message as Frame, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use crdt_store::samod_core::DocumentId;
use crdt_store::{
    DocName, SESSION_PEER_PREFIX, Sender, Store, StoreError, SyncApply, SyncRejected, WorkflowDoc,
};
use mesh::proto::amrepo::{CloseReason, Connection, Ephemeral, Event, MAX_MESSAGE_BYTES, Message};
use mesh::proto::wire::DocIdBytes;
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::AppState;
use super::auth::{Caller, Role};
use crate::run::workflow::Writer;

/// How long a send may wait for a client that does not read before its socket is dropped.
const SEND_PATIENCE: Duration = Duration::from_secs(30);

/// Ephemeral messages kept for clients that are behind; older ones are dropped for them
/// (ephemeral messages are presence and cursors: the next one supersedes them).
const EPHEMERAL_CAP: usize = 256;

/// WebSocket close code for a refusal by policy (RFC 6455 7.4.1).
const CLOSE_POLICY: u16 = 1008;
/// WebSocket close code for a failure of this server.
const CLOSE_SERVER_ERROR: u16 = 1011;

/// The endpoint's clients, as they share ephemeral messages.
#[derive(Debug)]
pub struct Clients {
    next_socket: AtomicU64,
    /// Ephemeral messages with the socket they came from.
    ephemeral: broadcast::Sender<(u64, Arc<Ephemeral>)>,
    connected: AtomicU64,
}

impl Default for Clients {
    fn default() -> Self {
        Clients {
            next_socket: AtomicU64::new(1),
            ephemeral: broadcast::channel(EPHEMERAL_CAP).0,
            connected: AtomicU64::new(0),
        }
    }
}

impl Clients {
    /// Sockets open now.
    pub fn connected(&self) -> u64 {
        self.connected.load(Ordering::Relaxed)
    }
}

/// The upgrade: the access rule has checked the token already (its caller is in the request).
pub async fn get_automerge(
    State(state): State<Arc<AppState>>,
    axum::Extension(caller): axum::Extension<Caller>,
    query: axum::extract::Query<TokenQuery>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let token = query.0.token;
    upgrade
        .max_message_size(MAX_MESSAGE_BYTES)
        .max_frame_size(MAX_MESSAGE_BYTES)
        .on_upgrade(move |socket| serve(state, caller, token, socket))
}

/// The query of `GET /automerge`.
#[derive(Debug, serde::Deserialize)]
pub struct TokenQuery {
    /// The token, when it is not in an `Authorization` header.
    #[serde(default)]
    token: Option<String>,
}

/// What the store made of a client's sync message.
enum Answer {
    /// The node does not hold the document (or retired it): `doc-unavailable`.
    Unavailable,
    /// Applied; the reply to send, if any.
    Reply(Option<Vec<u8>>),
    /// Refused: the socket closes with this reason.
    Refused(SyncRejected),
}

/// One socket's session.
struct Session {
    state: Arc<AppState>,
    caller: Caller,
    token: Option<String>,
    socket_id: u64,
    /// The sync peer this socket is in the store.
    peer: String,
    conn: Connection,
    epoch: Instant,
    /// Documents the client syncs with this node.
    docs: BTreeSet<DocIdBytes>,
}

async fn serve(state: Arc<AppState>, caller: Caller, token: Option<String>, mut socket: WebSocket) {
    let clients = state.clients.clone();
    let socket_id = clients.next_socket.fetch_add(1, Ordering::Relaxed);
    clients.connected.fetch_add(1, Ordering::Relaxed);
    let mut session = Session {
        // No storage id: a client keeps no sync state for this server across sockets, as
        // this server keeps none for it.
        conn: Connection::new(state.health.node_id.clone(), Duration::ZERO),
        peer: format!("{SESSION_PEER_PREFIX}{socket_id}"),
        state,
        caller,
        token,
        socket_id,
        epoch: Instant::now(),
        docs: BTreeSet::new(),
    };
    let why = session.run(&mut socket).await;
    tracing::info!(
        socket = socket_id,
        client = session.conn.client_peer_id().unwrap_or("-"),
        token = %session.caller.name,
        reason = %why,
        "automerge-repo client disconnected"
    );
    let peer = session.peer.clone();
    let _ = session
        .state
        .store
        .call(move |s| {
            s.sync_forget_peer(&peer);
            Ok(())
        })
        .recv()
        .await;
    clients.connected.fetch_sub(1, Ordering::Relaxed);
}

impl Session {
    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    /// Serves the socket until it closes; returns why.
    async fn run(&mut self, socket: &mut WebSocket) -> String {
        let mut changes = self.state.changes.doc_changes();
        let mut ephemeral = self.state.clients.ephemeral.subscribe();
        loop {
            let wake = self
                .conn
                .poll_timeout()
                .map(|at| self.epoch + at)
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            let events = tokio::select! {
                frame = socket.recv() => match frame {
                    Some(Ok(Frame::Binary(bytes))) => self.conn.handle(&bytes, self.now()),
                    Some(Ok(Frame::Pong(_))) => {
                        self.conn.pong(self.now());
                        Vec::new()
                    }
                    // Answered by the WebSocket layer itself.
                    Some(Ok(Frame::Ping(_))) => Vec::new(),
                    Some(Ok(Frame::Text(_))) => {
                        let why = "text frame: automerge-repo messages are binary CBOR";
                        self.refuse(socket, 1003, why).await;
                        return why.into();
                    }
                    Some(Ok(Frame::Close(_))) | None => return "the client closed the socket".into(),
                    Some(Err(e)) => return format!("socket error: {e}"),
                },
                _ = tokio::time::sleep_until(wake) => self.conn.handle_timeout(self.now()),
                changed = changes.recv() => {
                    let docs: Vec<DocIdBytes> = match changed {
                        Ok(doc) if self.docs.contains(&doc) => vec![doc],
                        Ok(_) => Vec::new(),
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            self.docs.iter().copied().collect()
                        }
                        Err(broadcast::error::RecvError::Closed) => {
                            return "the node is stopping".into();
                        }
                    };
                    for doc in docs {
                        if let Err(why) = self.offer(socket, doc).await {
                            return why;
                        }
                    }
                    Vec::new()
                }
                relayed = ephemeral.recv() => {
                    if let Ok((from, message)) = relayed
                        && from != self.socket_id
                        && self.docs.contains(&message.document_id)
                        && let Some(frame) = self.conn.ephemeral(&message)
                        && let Err(why) = send(socket, frame).await
                    {
                        return why;
                    }
                    Vec::new()
                }
            };
            for event in events {
                if let Err(why) = self.on_event(socket, event).await {
                    return why;
                }
            }
        }
    }

    async fn on_event(&mut self, socket: &mut WebSocket, event: Event) -> Result<(), String> {
        match event {
            Event::Send(message) => send(socket, message.encode()).await,
            Event::Joined {
                client_peer_id,
                metadata,
            } => {
                tracing::info!(
                    socket = self.socket_id,
                    client = %client_peer_id,
                    storage_id = metadata.storage_id.as_deref().unwrap_or("-"),
                    token = %self.caller.name,
                    role = %self.caller.role,
                    "automerge-repo client joined"
                );
                Ok(())
            }
            Event::Sync { document_id, data } | Event::Request { document_id, data } => {
                self.on_sync(socket, document_id, data).await
            }
            Event::DocUnavailable { document_id } => {
                self.docs.remove(&document_id);
                Ok(())
            }
            Event::Ephemeral(message) => {
                // No other client is not an error.
                let _ = self
                    .state
                    .clients
                    .ephemeral
                    .send((self.socket_id, Arc::new(message)));
                Ok(())
            }
            Event::Ignored { message_type } => {
                tracing::debug!(socket = self.socket_id, %message_type, "ignored a message");
                Ok(())
            }
            Event::Ping => {
                self.recheck_token(socket).await?;
                send_frame(socket, Frame::Ping(Vec::new().into())).await
            }
            Event::Close { reason } => {
                let code = reason.close_code();
                let _ = socket
                    .send(Frame::Close(Some(CloseFrame {
                        code,
                        reason: close_text(&reason.to_string()).into(),
                    })))
                    .await;
                if !matches!(reason, CloseReason::ClientLeft) {
                    tracing::warn!(socket = self.socket_id, reason = %reason, "closed an automerge-repo client");
                }
                Err(reason.to_string())
            }
        }
    }

    /// A token revoked or expired since the upgrade ends the session.
    async fn recheck_token(&mut self, socket: &mut WebSocket) -> Result<(), String> {
        let Some(token) = self.token.as_deref() else {
            return Ok(());
        };
        if let Err(refused) = self.state.tokens.check(Some(token), crate::node::now_ms()) {
            let why = format!("the token is no longer accepted: {refused}");
            self.refuse(socket, CLOSE_POLICY, &why).await;
            return Err(why);
        }
        Ok(())
    }

    /// Applies a client's sync message (a `sync` or a `request`) and answers it.
    async fn on_sync(
        &mut self,
        socket: &mut WebSocket,
        document_id: DocIdBytes,
        data: Vec<u8>,
    ) -> Result<(), String> {
        let Ok(doc) = DocumentId::try_from(document_id.to_vec()) else {
            return self.unavailable(socket, document_id).await;
        };
        let peer = self.peer.clone();
        let role = self.caller.role;
        let writer = self.state.writer.clone();
        let answer = self
            .state
            .store
            .call(move |s| answer(s, doc, &peer, data, role, &writer))
            .recv()
            .await;
        match answer {
            Ok(Answer::Unavailable) => self.unavailable(socket, document_id).await,
            Ok(Answer::Reply(reply)) => {
                self.docs.insert(document_id);
                match reply.and_then(|r| self.conn.sync(&document_id, &r)) {
                    Some(frame) => send(socket, frame).await,
                    None => Ok(()),
                }
            }
            Ok(Answer::Refused(rejected)) => {
                let why = format!(
                    "token {} ({}): {rejected}",
                    self.caller.name, self.caller.role
                );
                self.state.audit.record(
                    crate::security::audit::Kind::ChangeRefused,
                    format!("automerge-repo client (token {})", self.caller.name),
                    why.clone(),
                );
                let code = match rejected {
                    SyncRejected::NoHeadroom(_) | SyncRejected::Local(_) => CLOSE_SERVER_ERROR,
                    SyncRejected::Malformed { .. } => 1002,
                    _ => CLOSE_POLICY,
                };
                self.refuse(socket, code, &why).await;
                Err(why)
            }
            Err(e) => {
                let why = format!("the store failed: {e}");
                self.refuse(socket, CLOSE_SERVER_ERROR, &why).await;
                Err(why)
            }
        }
    }

    /// Offers the client what changed in a document it syncs.
    async fn offer(
        &mut self,
        socket: &mut WebSocket,
        document_id: DocIdBytes,
    ) -> Result<(), String> {
        let Ok(doc) = DocumentId::try_from(document_id.to_vec()) else {
            return Ok(());
        };
        let peer = self.peer.clone();
        let message = self
            .state
            .store
            .call(move |s| s.sync_generate(&doc, &peer))
            .recv()
            .await
            .map_err(|e| format!("the store failed: {e}"))?;
        match message.and_then(|m| self.conn.sync(&document_id, &m)) {
            Some(frame) => send(socket, frame).await,
            None => Ok(()),
        }
    }

    async fn unavailable(
        &mut self,
        socket: &mut WebSocket,
        document_id: DocIdBytes,
    ) -> Result<(), String> {
        self.docs.remove(&document_id);
        match self.conn.doc_unavailable(&document_id) {
            Some(frame) => send(socket, frame).await,
            None => Ok(()),
        }
    }

    /// Tells the client why (an `error` message, then the close frame).
    async fn refuse(&self, socket: &mut WebSocket, code: u16, why: &str) {
        tracing::warn!(socket = self.socket_id, token = %self.caller.name, reason = %why, "closing an automerge-repo client");
        let error = Message::Error {
            message: why.to_owned(),
        };
        let _ = send(socket, error.encode()).await;
        let _ = socket
            .send(Frame::Close(Some(CloseFrame {
                code,
                reason: close_text(why).into(),
            })))
            .await;
    }
}

/// On the store thread: whether the node holds the document, then the message applied (made
/// durable when it changed something) and the answer generated.
fn answer(
    store: &mut Store,
    doc: DocumentId,
    peer: &str,
    payload: Vec<u8>,
    role: Role,
    writer: &Writer,
) -> Result<Answer, StoreError> {
    let Some(name) = store.name_of_id(&doc)? else {
        return Ok(Answer::Unavailable);
    };
    if store.heads(&doc)?.is_none() {
        return Ok(Answer::Unavailable);
    }
    let sender = match role {
        Role::Monitor => Sender::Reader,
        // Applying a workflow through the API needs an admin token; so does writing one here.
        Role::Operator => Sender::Client(Arc::new(|_: &WorkflowDoc, _: &[WorkflowDoc]| {
            Err("applying a workflow needs an admin token".to_owned())
        })),
        Role::Admin => {
            let may_write = matches!(name, DocName::Workflow { .. })
                .then(|| crate::security::workflow_rights::may_apply(store, writer))
                .transpose()?
                .unwrap_or(Ok(()))
                .map_err(|refused| refused.to_string());
            let writer = writer.clone();
            Sender::Client(Arc::new(
                move |written: &WorkflowDoc, standing: &[WorkflowDoc]| {
                    may_write.clone()?;
                    crate::run::workflow::validate(written)
                        .and_then(|()| writer.next_version(written.clone(), standing))
                        .map_err(|e| format!("{e:#}"))
                },
            ))
        }
    };
    let outcome = store
        .sync_apply(vec![SyncApply {
            doc: doc.clone(),
            peer: peer.to_owned(),
            name: None,
            payload,
            sender,
        }])?
        .pop()
        .expect("one outcome per message");
    match outcome {
        Ok(applied) => {
            if applied.changed {
                // The answer's heads acknowledge the change: it must be on disk first.
                store.flush()?;
            }
            Ok(Answer::Reply(store.sync_generate(&doc, peer)?))
        }
        Err(SyncRejected::Retired(_) | SyncRejected::Unnamed(_)) => Ok(Answer::Unavailable),
        Err(rejected) => Ok(Answer::Refused(rejected)),
    }
}

async fn send(socket: &mut WebSocket, frame: Vec<u8>) -> Result<(), String> {
    send_frame(socket, Frame::Binary(frame.into())).await
}

async fn send_frame(socket: &mut WebSocket, frame: Frame) -> Result<(), String> {
    match tokio::time::timeout(SEND_PATIENCE, socket.send(frame)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("socket error: {e}")),
        Err(_) => Err(format!("the client read nothing for {SEND_PATIENCE:?}")),
    }
}

/// A close frame's reason is at most 123 bytes.
fn close_text(why: &str) -> String {
    let mut end = why.len().min(123);
    while !why.is_char_boundary(end) {
        end -= 1;
    }
    why[..end].to_owned()
}
