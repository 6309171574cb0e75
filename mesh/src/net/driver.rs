//! The mesh driver: one actor that owns the QUIC endpoint, discovery and the membership state
//! machine, and one task per connection that turns a QUIC stream into framed [`Message`]s.
//!
//! Each connection carries one bidirectional stream, opened by the dialler. Both sides first send
//! a [`Hello`]; a hello whose mesh or node id disagrees with the peer's certificate closes the
//! connection. A frame that does not decode closes that connection with the reason logged; the
//! node keeps serving its other peers.
//!
//! The actor also owns the zone aggregator election: it sends this node's [`Status`] on every
//! new connection and to every peer when it changes, feeds received statuses, liveness and
//! membership changes into the election, and reports changes of the aggregator chain as
//! [`MeshEvent::Hierarchy`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::blob_buffers::POOL;
use super::discovery::{Discovery, DiscoveryConfig, DiscoveryEvent, Interfaces};
use super::identity::{MESH_SERVER_NAME, NodeCredentials, Revocations, node_id_of};
use crate::proto::election::{self, Election, ElectionTiming, Hierarchy, ZoneError};
use crate::proto::membership::{ConnId, InEvent, Membership, NodeId, OutEvent, PeerInfo, Timing};
use crate::proto::wire::{self, Capabilities, Hello, Message, Role, Status};

/// Commands queued for the actor.
pub const COMMANDS_CAP: usize = 64;
/// Events from connection tasks queued for the actor.
pub const CONN_EVENTS_CAP: usize = 1024;
/// Messages queued for one connection's writer; a peer that does not read is closed rather
/// than allowed to grow memory.
pub const CONN_OUTBOX_CAP: usize = 256;
/// Blobs queued for one connection's bulk stream (up to a MiB each). The transfer machine
/// bounds what it serves at once, so this is rarely reached.
pub const BULK_OUTBOX_CAP: usize = 64;
/// quinn's priority of the bulk stream; the control stream keeps the default 0.
const BULK_PRIORITY: i32 = -1;
/// Events queued for the user of the mesh.
pub const MESH_EVENTS_CAP: usize = 1024;
/// How long a dial or a hello may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How soon a status that found a peer's queue full is sent again (the latest status then, so
/// a peer never keeps an outdated one).
pub const STATUS_RETRY: Duration = Duration::from_millis(50);

/// How a node takes part in the mesh.
#[derive(Debug, Clone)]
pub struct MeshConfig {
    /// The node's credentials (certificate, key, mesh CA).
    pub credentials: NodeCredentials,
    /// Revoked node ids, refused at the handshake.
    pub revoked: Revocations,
    /// The mesh id (derived from the CA).
    pub mesh_id: String,
    /// The node's zone path.
    pub zone: String,
    /// The node's role.
    pub role: Role,
    /// What the node offers as an aggregator (with the role, its rank in elections).
    pub capabilities: Capabilities,
    /// Where the QUIC endpoint listens.
    pub listen: SocketAddr,
    /// Peers to dial by address (e.g. the cloud).
    pub bootstrap: Vec<String>,
    /// mDNS discovery, or `None` for none.
    pub discovery: Option<Interfaces>,
    /// Membership timing.
    pub timing: Timing,
    /// Seed of the membership's randomness (jitter).
    pub seed: u64,
    /// Answers enrolment requests of machines that join with a token; only on a node that
    /// holds the mesh CA. `None`: a connection without a certificate is refused at the
    /// handshake.
    pub enrolment: Option<Arc<dyn super::enrolment::Enrolment>>,
}

/// Something the user of the mesh should know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MeshEvent {
    /// A peer is connected and introduced.
    PeerUp(NodeId),
    /// A peer is gone.
    PeerDown(NodeId, String),
    /// A message for the layer above (catalogues and sync messages).
    Received(NodeId, Message),
    /// This node's aggregator chain or the zones it aggregates changed.
    Hierarchy(Hierarchy),
    /// A connection from `from` was refused at the TLS handshake: a certificate of another
    /// mesh, revoked, expired, or none.
    HandshakeRefused {
        /// The address it came from.
        from: SocketAddr,
        /// The handshake's error.
        reason: String,
    },
    /// Dialling `addr` failed: it does not resolve or answer, or its handshake failed (a
    /// certificate of another mesh, revoked, expired).
    DialFailed {
        /// The address dialled.
        addr: String,
        /// Why.
        reason: String,
    },
}

/// Errors of the driver.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    /// The endpoint could not be set up.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The listen address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// TLS configuration failed.
    #[error(transparent)]
    Identity(#[from] super::identity::IdentityError),
    /// Discovery failed to start.
    #[error(transparent)]
    Discovery(#[from] super::discovery::DiscoveryError),
    /// The mesh actor has stopped.
    #[error("the mesh has stopped")]
    Stopped,
    /// No connection to that peer.
    #[error("not connected to {0}")]
    NotConnected(NodeId),
    /// The message would not fit in one frame.
    #[error("a message of {0} bytes exceeds the frame limit")]
    TooLarge(usize),
    /// The configured zone is not a valid zone path.
    #[error(transparent)]
    Zone(#[from] ZoneError),
}

/// What the QUIC connection serving a peer has carried, as quinn counts it: UDP payload bytes
/// and datagrams in each direction since the connection started (handshake included).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// UDP payload bytes sent.
    pub udp_bytes_sent: u64,
    /// UDP payload bytes received.
    pub udp_bytes_received: u64,
    /// UDP datagrams sent.
    pub datagrams_sent: u64,
    /// UDP datagrams received.
    pub datagrams_received: u64,
    /// The current round-trip time estimate.
    pub rtt: Duration,
}

enum Command {
    Peers(oneshot::Sender<Vec<PeerInfo>>),
    LinkStats(NodeId, oneshot::Sender<Option<LinkStats>>),
    Outbox(
        NodeId,
        Stream,
        oneshot::Sender<Option<mpsc::Sender<Message>>>,
    ),
    Disconnect(NodeId, String),
    Shutdown(oneshot::Sender<()>),
    Hierarchy(oneshot::Sender<Hierarchy>),
    SetCapabilities(Capabilities),
    Learned(NodeId, String),
    Credentials(Box<NodeCredentials>, oneshot::Sender<Result<(), MeshError>>),
}

/// Which of a connection's streams a queue feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    /// Everything but blobs: membership, election, sync.
    Control,
    /// Artifact blobs ([`Message::ChunkData`]), on a stream of their own with a lower priority,
    /// so that a megabyte of artifact never holds up a workflow's sync message behind it.
    Bulk,
}

/// A connection's queues and the connection itself.
struct Conn {
    outbox: mpsc::Sender<Message>,
    bulk: mpsc::Sender<Message>,
    connection: quinn::Connection,
}

enum ConnEvent {
    Ready {
        conn: ConnId,
        node: NodeId,
        outbound: bool,
        addr: Option<String>,
        outbox: mpsc::Sender<Message>,
        bulk: mpsc::Sender<Message>,
        connection: quinn::Connection,
    },
    Frame(ConnId, Message),
    Closed(ConnId, String),
    DialFailed(String, String),
}

/// A cheap handle to a running mesh node.
#[derive(Debug, Clone)]
pub struct MeshHandle {
    commands: mpsc::Sender<Command>,
    local_addr: SocketAddr,
}

impl MeshHandle {
    /// Where the QUIC endpoint listens (with the port chosen when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The known peers.
    pub async fn peers(&self) -> Result<Vec<PeerInfo>, MeshError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Peers(tx))
            .await
            .map_err(|_| MeshError::Stopped)?;
        rx.await.map_err(|_| MeshError::Stopped)
    }

    /// What the connection currently serving a peer has carried; `None` if the peer is not
    /// connected.
    pub async fn link_stats(&self, node: &str) -> Result<Option<LinkStats>, MeshError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::LinkStats(node.to_owned(), tx))
            .await
            .map_err(|_| MeshError::Stopped)?;
        rx.await.map_err(|_| MeshError::Stopped)
    }

    /// Sends a message to a connected peer, waiting while its connection's queue is full
    /// (backpressure; nothing is dropped). Messages from one caller arrive in order.
    pub async fn send(&self, node: &str, message: Message) -> Result<(), MeshError> {
        let len = message.encoded_len();
        if len > 4 + crate::proto::wire::MAX_FRAME_LEN {
            return Err(MeshError::TooLarge(len));
        }
        let stream = if matches!(message, Message::ChunkData { .. }) {
            Stream::Bulk
        } else {
            Stream::Control
        };
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Outbox(node.to_owned(), stream, tx))
            .await
            .map_err(|_| MeshError::Stopped)?;
        let outbox = rx
            .await
            .map_err(|_| MeshError::Stopped)?
            .ok_or_else(|| MeshError::NotConnected(node.to_owned()))?;
        outbox
            .send(message)
            .await
            .map_err(|_| MeshError::NotConnected(node.to_owned()))
    }

    /// The queue of the connection currently serving a peer, for a caller that sends many
    /// messages: sending into it costs no round trip through the actor, keeps the caller's
    /// order, and waits for room when the peer reads slowly. `None` if the peer is not
    /// connected. The queue closes with its connection; a caller keeps it until `PeerDown`.
    pub async fn outbox(&self, node: &str) -> Result<Option<mpsc::Sender<Message>>, MeshError> {
        self.queue(node, Stream::Control).await
    }

    /// Like [`MeshHandle::outbox`], for artifact blobs ([`Message::ChunkData`] only): they
    /// travel on a stream of their own, below everything else in priority.
    pub async fn bulk_outbox(
        &self,
        node: &str,
    ) -> Result<Option<mpsc::Sender<Message>>, MeshError> {
        self.queue(node, Stream::Bulk).await
    }

    async fn queue(
        &self,
        node: &str,
        stream: Stream,
    ) -> Result<Option<mpsc::Sender<Message>>, MeshError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Outbox(node.to_owned(), stream, tx))
            .await
            .map_err(|_| MeshError::Stopped)?;
        rx.await.map_err(|_| MeshError::Stopped)
    }

    /// Closes the connection to a peer; it is redialled like any lost connection.
    pub async fn disconnect(&self, node: &str, reason: &str) -> Result<(), MeshError> {
        self.commands
            .send(Command::Disconnect(node.to_owned(), reason.to_owned()))
            .await
            .map_err(|_| MeshError::Stopped)
    }

    /// This node's place in the hierarchy now: its zone, aggregator chain and the zones it
    /// aggregates.
    pub async fn hierarchy(&self) -> Result<Hierarchy, MeshError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Hierarchy(tx))
            .await
            .map_err(|_| MeshError::Stopped)?;
        rx.await.map_err(|_| MeshError::Stopped)
    }

    /// Updates what this node offers as an aggregator (free disk changes as it runs); peers
    /// hear of it when its rank changes.
    pub async fn set_capabilities(&self, capabilities: Capabilities) -> Result<(), MeshError> {
        self.commands
            .send(Command::SetCapabilities(capabilities))
            .await
            .map_err(|_| MeshError::Stopped)
    }

    /// Tells membership where a node of the mesh accepts connections, as something other than
    /// mDNS learned it (the registry): how members of a zone find each other where multicast
    /// does not pass. A known address changes nothing; a new one is dialled at once.
    pub async fn learned(&self, node: NodeId, addr: String) -> Result<(), MeshError> {
        self.commands
            .send(Command::Learned(node, addr))
            .await
            .map_err(|_| MeshError::Stopped)
    }

    /// Uses renewed credentials (a new certificate for the node's key) for every handshake from
    /// now on; connections already up keep theirs.
    pub async fn set_credentials(&self, credentials: NodeCredentials) -> Result<(), MeshError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Credentials(Box::new(credentials), tx))
            .await
            .map_err(|_| MeshError::Stopped)?;
        rx.await.map_err(|_| MeshError::Stopped)?
    }

    /// Says goodbye to every peer and on mDNS, then stops.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// Starts a mesh node: binds the endpoint, starts discovery, and runs the actor.
///
/// The event receiver must be drained on its own task: when it is full the actor waits for
/// room (that is how backpressure reaches senders), so a consumer that stops draining while it
/// waits on the handle would wait forever.
pub async fn spawn(
    config: MeshConfig,
) -> Result<(MeshHandle, mpsc::Receiver<MeshEvent>), MeshError> {
    let me = config.credentials.node_id()?;
    let election = Election::new(
        me.clone(),
        config.zone.clone(),
        config.role,
        config.capabilities,
        ElectionTiming::default(),
        Duration::ZERO,
    )?;
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(config.timing.heartbeat));
    transport.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(config.timing.dead_after * 2).expect("a small timeout"),
    ));
    let transport = Arc::new(transport);
    let (server_config, client_config) = tls_configs(
        &config.credentials,
        &config.revoked,
        config.enrolment.is_some(),
        transport.clone(),
    )?;
    let listen_failed = |source| MeshError::Listen {
        addr: config.listen,
        source,
    };
    let socket = std::net::UdpSocket::bind(config.listen).map_err(listen_failed)?;
    enlarge_buffers(&socket);
    let mut endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server_config),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(listen_failed)?;
    endpoint.set_default_client_config(client_config);
    let local_addr = endpoint.local_addr().map_err(listen_failed)?;

    let (discovery, discovered) = match &config.discovery {
        Some(interfaces) => {
            let (d, rx) = Discovery::start(DiscoveryConfig {
                mesh_id: config.mesh_id.clone(),
                node_id: me.clone(),
                port: local_addr.port(),
                interfaces: interfaces.clone(),
                addresses: if *interfaces == Interfaces::Loopback {
                    vec!["127.0.0.1".parse().expect("an address")]
                } else {
                    Vec::new()
                },
            })?;
            (Some(d), Some(rx))
        }
        None => (None, None),
    };

    let (commands, command_rx) = mpsc::channel(COMMANDS_CAP);
    let (events_tx, events) = mpsc::channel(MESH_EVENTS_CAP);
    let (conn_tx, conn_rx) = mpsc::channel(CONN_EVENTS_CAP);
    let hello = Hello {
        mesh_id: config.mesh_id.clone(),
        node_id: me.clone(),
        role: config.role,
        zone: config.zone.clone(),
        listen_port: local_addr.port(),
    };
    let mut membership = Membership::new(
        me.clone(),
        config.timing,
        StdRng::seed_from_u64(config.seed),
    );
    let epoch = Instant::now();
    for addr in &config.bootstrap {
        membership.handle(InEvent::Bootstrap { addr: addr.clone() }, Duration::ZERO);
    }
    let actor = Actor {
        me,
        revoked: config.revoked.clone(),
        transport,
        enrolment: config.enrolment.clone(),
        hello,
        endpoint,
        discovery,
        membership,
        election,
        stale_status: BTreeSet::new(),
        epoch,
        conns: BTreeMap::new(),
        next_conn: 1,
        conn_tx,
        events: events_tx,
    };
    let span = tracing::info_span!("mesh", node = %actor.me);
    tokio::spawn(tracing::Instrument::instrument(
        actor.run(command_rx, conn_rx, discovered),
        span,
    ));
    Ok((
        MeshHandle {
            commands,
            local_addr,
        },
        events,
    ))
}

struct Actor {
    me: NodeId,
    revoked: Revocations,
    transport: Arc<quinn::TransportConfig>,
    enrolment: Option<Arc<dyn super::enrolment::Enrolment>>,
    hello: Hello,
    endpoint: quinn::Endpoint,
    discovery: Option<Discovery>,
    membership: Membership<StdRng>,
    election: Election,
    /// Peers whose queue was full when a status was due: they get the latest one shortly.
    stale_status: BTreeSet<NodeId>,
    epoch: Instant,
    conns: BTreeMap<ConnId, Conn>,
    next_conn: ConnId,
    conn_tx: mpsc::Sender<ConnEvent>,
    events: mpsc::Sender<MeshEvent>,
}

impl Actor {
    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut conn_events: mpsc::Receiver<ConnEvent>,
        mut discovered: Option<mpsc::Receiver<DiscoveryEvent>>,
    ) {
        let endpoint = self.endpoint.clone();
        self.flush().await;
        loop {
            let mut wake = self.epoch + self.membership.poll_timeout();
            if let Some(at) = self.election.poll_timeout() {
                wake = wake.min(self.epoch + at);
            }
            if !self.stale_status.is_empty() {
                wake = wake.min(Instant::now() + STATUS_RETRY);
            }
            tokio::select! {
                biased;
                command = commands.recv() => match command {
                    Some(Command::Peers(reply)) => {
                        let _ = reply.send(self.membership.peers(self.now()));
                    }
                    Some(Command::LinkStats(node, reply)) => {
                        let stats = self
                            .membership
                            .connection(&node)
                            .and_then(|c| self.conns.get(&c))
                            .map(|c| {
                                let stats = c.connection.stats();
                                LinkStats {
                                    udp_bytes_sent: stats.udp_tx.bytes,
                                    udp_bytes_received: stats.udp_rx.bytes,
                                    datagrams_sent: stats.udp_tx.datagrams,
                                    datagrams_received: stats.udp_rx.datagrams,
                                    rtt: stats.path.rtt,
                                }
                            });
                        let _ = reply.send(stats);
                    }
                    Some(Command::Outbox(node, stream, reply)) => {
                        let outbox = self
                            .membership
                            .connection(&node)
                            .and_then(|c| self.conns.get(&c))
                            .map(|c| match stream {
                                Stream::Control => c.outbox.clone(),
                                Stream::Bulk => c.bulk.clone(),
                            });
                        let _ = reply.send(outbox);
                    }
                    Some(Command::Disconnect(node, reason)) => {
                        if let Some(conn) = self.membership.connection(&node)
                            && let Some(Conn { connection, .. }) = self.conns.get(&conn)
                        {
                            connection.close(0u32.into(), close_reason(&reason));
                        }
                    }
                    Some(Command::Hierarchy(reply)) => {
                        let _ = reply.send(self.election.hierarchy());
                    }
                    Some(Command::SetCapabilities(capabilities)) => {
                        let now = self.now();
                        self.election.set_capabilities(capabilities, now);
                    }
                    Some(Command::Learned(node, addr)) => {
                        let now = self.now();
                        self.membership.handle(InEvent::Discovered { node, addr }, now);
                    }
                    Some(Command::Credentials(credentials, reply)) => {
                        let _ = reply.send(self.use_credentials(&credentials));
                    }
                    Some(Command::Shutdown(reply)) => {
                        self.shutdown().await;
                        let _ = reply.send(());
                        return;
                    }
                    None => {
                        self.shutdown().await;
                        return;
                    }
                },
                Some(event) = conn_events.recv() => self.on_conn_event(event).await,
                Some(incoming) = endpoint.accept() => {
                    let conn = self.next_conn;
                    self.next_conn += 1;
                    let tx = self.conn_tx.clone();
                    let hello = self.hello.clone();
                    let enrolment = self.enrolment.clone();
                    let events = self.events.clone();
                    let from = incoming.remote_address();
                    tokio::spawn(async move {
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, incoming).await {
                            Ok(Ok(connection)) => match enrolment.filter(|_| asks_to_join(&connection)) {
                                Some(enrolment) => super::enrolment::serve(connection, enrolment).await,
                                None => run_connection(conn, connection, false, None, hello, tx).await,
                            },
                            Ok(Err(e)) => {
                                tracing::info!(error = %e, %from, "refused an incoming connection");
                                // Dropped when the layer above is behind: the log has it.
                                let _ = events.try_send(MeshEvent::HandshakeRefused { from, reason: e.to_string() });
                            }
                            Err(_) => tracing::info!("an incoming handshake timed out"),
                        }
                    });
                }
                Some(found) = async {
                    match discovered.as_mut() { Some(rx) => rx.recv().await, None => std::future::pending().await }
                } => {
                    let event = match found {
                        DiscoveryEvent::Found { node, addr } => InEvent::Discovered { node, addr: addr.to_string() },
                        DiscoveryEvent::Left { node } => InEvent::Lost { node },
                    };
                    let now = self.now();
                    self.membership.handle(event, now);
                }
                () = tokio::time::sleep_until(wake) => {
                    let now = self.now();
                    self.membership.handle_timeout(now);
                    if self.election.leases_due(now) {
                        self.election.renew(self.membership.heard_times());
                    }
                    self.election.handle_timeout(now);
                }
            }
            self.flush().await;
        }
    }

    async fn on_conn_event(&mut self, event: ConnEvent) {
        let now = self.now();
        match event {
            ConnEvent::Ready {
                conn,
                node,
                outbound,
                addr,
                outbox,
                bulk,
                connection,
            } => {
                self.conns.insert(
                    conn,
                    Conn {
                        outbox,
                        bulk,
                        connection,
                    },
                );
                self.membership.handle(
                    InEvent::Connected {
                        conn,
                        node,
                        outbound,
                        addr,
                    },
                    now,
                );
            }
            ConnEvent::Frame(conn, message) => {
                self.membership.handle(InEvent::Received { conn }, now);
                self.feed_election(conn, &message, now);
                // Only the connection in use speaks for its peer; a duplicate about to close
                // does not. Waiting for room is the backpressure that reaches the sender.
                if matches!(
                    message,
                    Message::Summary { .. }
                        | Message::Buckets { .. }
                        | Message::Catalogue { .. }
                        | Message::Sync { .. }
                        | Message::Heads { .. }
                        | Message::ChunkWant { .. }
                        | Message::ChunkData { .. }
                        | Message::ChunkMissing { .. }
                ) && let Some(node) = self.membership.speaker(conn).cloned()
                {
                    let _ = self.events.send(MeshEvent::Received(node, message)).await;
                }
            }
            ConnEvent::Closed(conn, reason) => {
                tracing::debug!(conn, %reason, "connection closed");
                self.conns.remove(&conn);
                self.membership.handle(InEvent::Closed { conn }, now);
            }
            ConnEvent::DialFailed(addr, reason) => {
                tracing::debug!(%addr, %reason, "dial failed");
                // Dropped when the layer above is behind: a later dial tells again.
                let _ = self.events.try_send(MeshEvent::DialFailed {
                    addr: addr.clone(),
                    reason,
                });
                self.membership.handle(InEvent::DialFailed { addr }, now);
            }
        }
    }

    /// A status from a peer's connection in use is the election's input. Other frames renew
    /// the peer's lease through membership, which sees every frame, when the lease check
    /// falls due.
    fn feed_election(&mut self, conn: ConnId, message: &Message, now: Duration) {
        let Message::Status(status) = message else {
            return;
        };
        let Some(node) = self.membership.speaker(conn) else {
            return;
        };
        self.election.handle(
            election::InEvent::Status {
                from: node.clone(),
                status: status.clone(),
            },
            now,
        );
    }

    /// Carries out what the membership and the election asked for.
    async fn flush(&mut self) {
        let actions = self.membership.drain();
        let now = self.now();
        self.election.handle_membership(&actions, now);
        for action in actions {
            match action {
                OutEvent::Dial(addr) => self.dial(addr),
                OutEvent::Send(conn, message) => {
                    if let Some(Conn { outbox, .. }) = self.conns.get(&conn) {
                        let _ = outbox.try_send(message);
                    }
                }
                OutEvent::Close(conn, reason) => {
                    if let Some(Conn {
                        outbox, connection, ..
                    }) = self.conns.remove(&conn)
                    {
                        let _ = outbox.try_send(Message::Goodbye {
                            reason: reason.clone(),
                        });
                        connection.close(0u32.into(), close_reason(&reason));
                    }
                }
                OutEvent::Rebrowse => {
                    if let Some(d) = &self.discovery
                        && let Err(e) = d.rebrowse()
                    {
                        tracing::warn!(error = %e, "mDNS re-browse failed");
                    }
                }
                OutEvent::PeerUp(node) => {
                    tracing::info!(peer = %node, "peer up");
                    let _ = self.events.send(MeshEvent::PeerUp(node)).await;
                }
                OutEvent::PeerDown(node, reason) => {
                    tracing::info!(peer = %node, %reason, "peer down");
                    let _ = self.events.send(MeshEvent::PeerDown(node, reason)).await;
                }
            }
        }
        self.flush_election().await;
    }

    async fn flush_election(&mut self) {
        for node in std::mem::take(&mut self.stale_status) {
            let status = self.election.status();
            self.send_status(&node, status);
        }
        while let Some(action) = self.election.poll() {
            match action {
                election::OutEvent::Send(node, status) => self.send_status(&node, status),
                election::OutEvent::Broadcast(status) => {
                    let peers: Vec<NodeId> = self
                        .conns
                        .keys()
                        .filter_map(|c| self.membership.peer_of(*c))
                        .filter(|n| self.membership.connection(n).is_some())
                        .cloned()
                        .collect::<BTreeSet<_>>()
                        .into_iter()
                        .collect();
                    for node in peers {
                        self.send_status(&node, status.clone());
                    }
                }
                election::OutEvent::Changed(hierarchy) => {
                    tracing::info!(
                        chain = ?hierarchy.chain,
                        aggregates = ?hierarchy.aggregates,
                        "aggregator chain changed"
                    );
                    for (zone, claimants) in &hierarchy.split {
                        tracing::warn!(
                            %zone,
                            ?claimants,
                            "zone split: its members do not reach each other and each side \
                             elected its own aggregator; the rollups of all of them are taken"
                        );
                    }
                    let _ = self.events.send(MeshEvent::Hierarchy(hierarchy)).await;
                }
                election::OutEvent::Refused { from, reason } => {
                    tracing::warn!(peer = %from, %reason, "ignored an election status");
                }
            }
        }
    }

    /// Queues a status for a peer without waiting: a full queue marks the peer for a retry
    /// with the latest status, so that the actor never blocks on one slow peer.
    fn send_status(&mut self, node: &str, status: Status) {
        let outbox = self
            .membership
            .connection(node)
            .and_then(|c| self.conns.get(&c))
            .map(|c| &c.outbox);
        if let Some(outbox) = outbox
            && let Err(mpsc::error::TrySendError::Full(_)) =
                outbox.try_send(Message::Status(status))
        {
            self.stale_status.insert(node.to_owned());
        }
    }

    fn dial(&mut self, addr: String) {
        let conn = self.next_conn;
        self.next_conn += 1;
        let tx = self.conn_tx.clone();
        let hello = self.hello.clone();
        let endpoint = self.endpoint.clone();
        tokio::spawn(async move {
            let target = match tokio::net::lookup_host(&addr).await.map(|mut a| a.next()) {
                Ok(Some(target)) => target,
                Ok(None) | Err(_) => {
                    let _ = tx
                        .send(ConnEvent::DialFailed(
                            addr,
                            "address does not resolve".into(),
                        ))
                        .await;
                    return;
                }
            };
            let connecting = match endpoint.connect(target, MESH_SERVER_NAME) {
                Ok(c) => c,
                Err(e) => {
                    let _ = tx.send(ConnEvent::DialFailed(addr, e.to_string())).await;
                    return;
                }
            };
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting).await {
                Ok(Ok(connection)) => {
                    run_connection(conn, connection, true, Some(addr), hello, tx).await
                }
                Ok(Err(e)) => {
                    let _ = tx.send(ConnEvent::DialFailed(addr, e.to_string())).await;
                }
                Err(_) => {
                    let _ = tx
                        .send(ConnEvent::DialFailed(addr, "handshake timed out".into()))
                        .await;
                }
            }
        });
    }

    fn use_credentials(&mut self, credentials: &NodeCredentials) -> Result<(), MeshError> {
        let (server, client) = tls_configs(
            credentials,
            &self.revoked,
            self.enrolment.is_some(),
            self.transport.clone(),
        )?;
        self.endpoint.set_server_config(Some(server));
        self.endpoint.set_default_client_config(client);
        Ok(())
    }

    async fn shutdown(&mut self) {
        for (
            _,
            Conn {
                outbox, connection, ..
            },
        ) in std::mem::take(&mut self.conns)
        {
            let _ = outbox.try_send(Message::Goodbye {
                reason: "node shutting down".into(),
            });
            connection.close(0u32.into(), b"node shutting down");
        }
        if let Some(d) = self.discovery.take() {
            d.shutdown().await;
        }
        self.endpoint.close(0u32.into(), b"node shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
        tracing::debug!(node = %self.me, "mesh stopped");
    }
}

/// Introduces both sides, then pumps frames between the stream and the actor until either side
/// closes or sends something undecodable.
async fn run_connection(
    conn: ConnId,
    connection: quinn::Connection,
    outbound: bool,
    addr: Option<String>,
    hello: Hello,
    actor: mpsc::Sender<ConnEvent>,
) {
    let dialled = if outbound { addr.clone() } else { None };
    let fail = |reason: String| {
        let actor = actor.clone();
        let connection = connection.clone();
        let dialled = dialled.clone();
        async move {
            tracing::info!(conn, %reason, "closing connection");
            connection.close(1u32.into(), close_reason(&reason));
            if let Some(addr) = dialled {
                let _ = actor.send(ConnEvent::DialFailed(addr, reason)).await;
            }
        }
    };
    let peer = match peer_node_id(&connection) {
        Ok(id) => id,
        Err(e) => return fail(e).await,
    };
    let streams = if outbound {
        connection.open_bi().await
    } else {
        connection.accept_bi().await
    };
    let (mut send, mut recv) = match streams {
        Ok(s) => s,
        Err(e) => return fail(format!("no stream: {e}")).await,
    };
    if let Err(e) = send
        .write_all(&Message::Hello(hello.clone()).to_frame())
        .await
    {
        return fail(format!("cannot send hello: {e}")).await;
    }
    let mut reader = FrameReader::default();
    let first = match tokio::time::timeout(HANDSHAKE_TIMEOUT, reader.next(&mut recv)).await {
        Ok(Ok(Some(message))) => message,
        Ok(Ok(None)) => return fail("closed before its hello".into()).await,
        Ok(Err(ReadError::Protocol(e) | ReadError::Io(e))) => return fail(e).await,
        Err(_) => return fail("no hello in time".into()).await,
    };
    match first {
        Message::Hello(theirs) if theirs.mesh_id != hello.mesh_id => {
            return fail(format!("peer says it is of mesh {}", theirs.mesh_id)).await;
        }
        Message::Hello(theirs) if theirs.node_id != peer => {
            return fail(format!(
                "peer says it is {} but its certificate is {peer}",
                theirs.node_id
            ))
            .await;
        }
        Message::Hello(_) => {}
        other => return fail(format!("expected a hello, got {other:?}")).await,
    }
    let (outbox, mut outgoing) = mpsc::channel::<Message>(CONN_OUTBOX_CAP);
    let (bulk, bulk_outgoing) = mpsc::channel::<Message>(BULK_OUTBOX_CAP);
    if actor
        .send(ConnEvent::Ready {
            conn,
            node: peer,
            outbound,
            addr,
            outbox,
            bulk,
            connection: connection.clone(),
        })
        .await
        .is_err()
    {
        return;
    }
    let writer = tokio::spawn(async move {
        let mut buf = Vec::new();
        while let Some(message) = outgoing.recv().await {
            buf.clear();
            message.encode(&mut buf);
            if send.write_all(&buf).await.is_err() {
                break;
            }
            if matches!(message, Message::Goodbye { .. }) {
                let _ = send.finish();
                break;
            }
        }
    });
    let bulk_writer = tokio::spawn(write_bulk(connection.clone(), bulk_outgoing));
    let bulk_reader = tokio::spawn(read_bulk(conn, connection.clone(), actor.clone()));
    let reason = loop {
        match reader.next(&mut recv).await {
            Ok(Some(Message::Goodbye { reason })) => break format!("peer said goodbye: {reason}"),
            Ok(Some(message)) => {
                if actor.send(ConnEvent::Frame(conn, message)).await.is_err() {
                    break "node stopping".into();
                }
            }
            Ok(None) => break "stream ended".into(),
            Err(ReadError::Protocol(e)) => {
                tracing::warn!(conn, error = %e, "closing a connection that sent bad data");
                connection.close(2u32.into(), close_reason(&e));
                break e;
            }
            Err(ReadError::Io(e)) => break e,
        }
    };
    writer.abort();
    bulk_writer.abort();
    bulk_reader.abort();
    let _ = actor.send(ConnEvent::Closed(conn, reason)).await;
}

/// Writes the blobs queued for a peer on a unidirectional stream of their own, opened with the
/// first blob. Its priority is below the control stream's, so quinn sends control frames first
/// whenever both have data waiting.
async fn write_bulk(connection: quinn::Connection, mut outgoing: mpsc::Receiver<Message>) {
    let mut stream: Option<quinn::SendStream> = None;
    while let Some(message) = outgoing.recv().await {
        let Message::ChunkData { hash, bytes } = message else {
            tracing::warn!("only blobs go on the bulk stream; dropped another message");
            continue;
        };
        let send = match &mut stream {
            Some(send) => send,
            None => match connection.open_uni().await {
                Ok(send) => {
                    let _ = send.set_priority(BULK_PRIORITY);
                    stream.insert(send)
                }
                Err(_) => return,
            },
        };
        // The blob goes to quinn as it is, not copied into a frame buffer (and quinn keeps
        // the `Bytes` it is given rather than copying them into its own).
        let head = wire::chunk_data_head(&hash, bytes.len());
        let mut frame = [bytes::Bytes::copy_from_slice(&head), bytes];
        if send.write_all_chunks(&mut frame).await.is_err() {
            return;
        }
    }
}

/// Reads the blobs a peer sends on its bulk streams. Anything but a blob there is a protocol
/// error and closes the connection.
async fn read_bulk(conn: ConnId, connection: quinn::Connection, actor: mpsc::Sender<ConnEvent>) {
    while let Ok(mut recv) = connection.accept_uni().await {
        let actor = actor.clone();
        let connection = connection.clone();
        tokio::spawn(async move {
            loop {
                match next_blob(&mut recv).await {
                    Ok(Some(message)) => {
                        if actor.send(ConnEvent::Frame(conn, message)).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(ReadError::Protocol(e)) => {
                        tracing::warn!(conn, error = %e, "closing a connection that sent bad data");
                        connection.close(2u32.into(), close_reason(&e));
                        return;
                    }
                    Err(ReadError::Io(_)) => return,
                }
            }
        });
    }
}

/// What the QUIC socket asks for as its receive and send buffers. The default (208 KiB on
/// Linux) overflows when a peer sends a burst of artifact data: the kernel drops datagrams, the
/// sender resends them (up to 1.6 times a small transfer on a site's uplink). The kernel caps
/// the request at `net.core.rmem_max` / `wmem_max`.
const UDP_BUFFER_BYTES: usize = 4 << 20;

fn enlarge_buffers(socket: &std::net::UdpSocket) {
    use rustix::net::sockopt;
    if let Err(e) = sockopt::set_socket_recv_buffer_size(socket, UDP_BUFFER_BYTES) {
        tracing::debug!(error = %e, "cannot enlarge the QUIC socket's receive buffer");
    }
    if let Err(e) = sockopt::set_socket_send_buffer_size(socket, UDP_BUFFER_BYTES) {
        tracing::debug!(error = %e, "cannot enlarge the QUIC socket's send buffer");
    }
}

/// QUIC close reasons must fit in one packet.
fn close_reason(reason: &str) -> &[u8] {
    let mut end = reason.len().min(200);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason.as_bytes()[..end]
}

/// The QUIC server and client configurations of a node with these credentials.
fn tls_configs(
    credentials: &NodeCredentials,
    revoked: &Revocations,
    enrolment: bool,
    transport: Arc<quinn::TransportConfig>,
) -> Result<(quinn::ServerConfig, quinn::ClientConfig), MeshError> {
    let tls_error = |e: &dyn std::fmt::Display| {
        super::identity::IdentityError::Tls(rustls::Error::General(e.to_string()))
    };
    let server =
        QuicServerConfig::try_from(credentials.server_config_with(revoked.clone(), enrolment)?)
            .map_err(|e| tls_error(&e))?;
    let client = QuicClientConfig::try_from(credentials.client_config(revoked.clone())?)
        .map_err(|e| tls_error(&e))?;
    let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(server));
    server_config.transport_config(transport.clone());
    let mut client_config = quinn::ClientConfig::new(Arc::new(client));
    client_config.transport_config(transport);
    Ok((server_config, client_config))
}

/// Whether an incoming connection negotiated the enrolment protocol.
fn asks_to_join(connection: &quinn::Connection) -> bool {
    connection
        .handshake_data()
        .and_then(|data| data.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|data| data.protocol)
        .is_some_and(|protocol| protocol == super::enrolment::JOIN_ALPN)
}

fn peer_node_id(connection: &quinn::Connection) -> Result<NodeId, String> {
    let identity = connection
        .peer_identity()
        .ok_or("peer presented no certificate")?;
    let certs = identity
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .map_err(|_| "unexpected peer identity")?;
    let cert = certs.first().ok_or("peer presented no certificate")?;
    node_id_of(cert).map_err(|e| e.to_string())
}

enum ReadError {
    /// The peer sent bytes that are not a valid frame.
    Protocol(String),
    /// The stream failed or ended early.
    Io(String),
}

/// The next blob of a bulk stream, read straight into a buffer of its own, never past its end
/// (so nothing of the next frame is read); `None` at the end of the stream.
async fn next_blob(recv: &mut quinn::RecvStream) -> Result<Option<Message>, ReadError> {
    let mut head = [0u8; wire::CHUNK_DATA_HEAD];
    let mut have = 0;
    while have < head.len() {
        match recv.read(&mut head[have..]).await {
            Ok(Some(n)) => have += n,
            Ok(None) if have == 0 => return Ok(None),
            Ok(None) => return Err(ReadError::Protocol("stream ended inside a frame".into())),
            Err(e) => return Err(ReadError::Io(format!("read failed: {e}"))),
        }
    }
    let (hash, len) = wire::read_chunk_data_head(&head)
        .map_err(|e| ReadError::Protocol(format!("protocol error on the bulk stream: {e}")))?;
    // Filled in place: each read takes whatever quinn holds, up to what the blob still lacks.
    // The buffer goes back to the pool once the blob is stored and dropped.
    let mut buffer = POOL.buffer(len);
    let bytes = buffer.as_mut_slice();
    let mut filled = 0;
    while filled < len {
        match recv.read(&mut bytes[filled..]).await {
            Ok(Some(n)) => filled += n,
            Ok(None) => return Err(ReadError::Protocol("stream ended inside a blob".into())),
            Err(e) => return Err(ReadError::Io(format!("read failed: {e}"))),
        }
    }
    Ok(Some(Message::ChunkData {
        hash,
        bytes: buffer.freeze(),
    }))
}

/// Reassembles frames from a stream, holding at most one frame's bound in memory.
#[derive(Default)]
struct FrameReader {
    buf: Vec<u8>,
}

impl FrameReader {
    async fn next(&mut self, recv: &mut quinn::RecvStream) -> Result<Option<Message>, ReadError> {
        loop {
            match Message::decode(&self.buf) {
                Ok(Some((message, used))) => {
                    self.buf.drain(..used);
                    return Ok(Some(message));
                }
                Ok(None) => {}
                Err(e) => return Err(ReadError::Protocol(format!("protocol error: {e}"))),
            }
            let mut chunk = [0u8; 16 * 1024];
            match recv.read(&mut chunk).await {
                Ok(Some(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Ok(None) if self.buf.is_empty() => return Ok(None),
                Ok(None) => {
                    return Err(ReadError::Protocol("stream ended inside a frame".into()));
                }
                Err(e) => return Err(ReadError::Io(format!("read failed: {e}"))),
            }
        }
    }
}
