//! Membership and failure detection: which peers to dial, which connections to keep, when a
//! peer is down.
//!
//! Discovery (mDNS) is slow to notice a dead peer (its records live for two minutes) and backs
//! off re-browsing for up to an hour, so liveness is decided here, from traffic: every frame
//! counts as a sign of life, a heartbeat goes out on each connection every
//! [`Timing::heartbeat`], and a peer that stays silent for [`Timing::dead_after`] is declared
//! down and its connection closed. The known addresses of lost peers are kept and redialled
//! with jittered exponential back-off (at most [`Timing::redial_max`] plus jitter), so a healed
//! partition reconnects without waiting for discovery; the driver is asked to re-browse now and
//! then for nodes whose address changed.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rand::Rng;

use super::wire::Message;

/// A node id (hex of the node's public key prefix).
pub type NodeId = String;

/// An address the driver can dial, `host:port`; opaque to the protocol.
pub type Addr = String;

/// A connection, numbered by the driver.
pub type ConnId = u64;

/// Timing knobs; the defaults meet the goals of detecting failure within 3 s and rediscovering
/// after a heal within 5 s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Interval between heartbeats on a quiet connection.
    pub heartbeat: Duration,
    /// Silence after which a peer is declared down and its connection closed.
    pub dead_after: Duration,
    /// First redial delay after a failure; doubles per failure.
    pub redial_min: Duration,
    /// Longest redial delay.
    pub redial_max: Duration,
    /// How often the driver is asked to browse for peers again.
    pub rebrowse: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            // Two and a half heartbeats fit in `dead_after`: one late or lost heartbeat does not
            // make a peer look dead. Idle connections cost a frame each way per second; in a
            // fifty-node LAN's full mesh that is 2,450 frames a second, not 4,900.
            heartbeat: Duration::from_secs(1),
            dead_after: Duration::from_millis(2500),
            redial_min: Duration::from_millis(200),
            redial_max: Duration::from_secs(3),
            // Rare on purpose: every browse makes every node on the LAN answer. Healed
            // partitions are found by redialling known addresses, not by browsing.
            rebrowse: Duration::from_secs(30),
        }
    }
}

/// What happened, as the driver tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InEvent {
    /// Discovery found a node of this mesh at an address.
    Discovered {
        /// The node found.
        node: NodeId,
        /// Where it accepts connections.
        addr: Addr,
    },
    /// Discovery saw the node leave (an mDNS goodbye). Its connection, if any, is kept while
    /// it carries traffic.
    Lost {
        /// The node that left.
        node: NodeId,
    },
    /// A configured peer address whose node id is not known until it answers.
    Bootstrap {
        /// Where to dial.
        addr: Addr,
    },
    /// A connection completed its handshake; `node` is the authenticated peer.
    Connected {
        /// The connection.
        conn: ConnId,
        /// The peer's node id.
        node: NodeId,
        /// True if this side dialled.
        outbound: bool,
        /// The address dialled, for outbound connections.
        addr: Option<Addr>,
    },
    /// A dial did not produce a connection.
    DialFailed {
        /// The address that failed.
        addr: Addr,
    },
    /// A frame arrived on a connection.
    Received {
        /// The connection.
        conn: ConnId,
    },
    /// A connection closed, for whatever reason.
    Closed {
        /// The connection.
        conn: ConnId,
    },
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutEvent {
    /// Open a connection to this address.
    Dial(Addr),
    /// Send a message on a connection.
    Send(ConnId, Message),
    /// Close a connection, giving the reason to the peer and the log.
    Close(ConnId, String),
    /// Browse for peers again (discovery's own back-off is too slow).
    Rebrowse,
    /// A peer became reachable.
    PeerUp(NodeId),
    /// A peer is no longer reachable.
    PeerDown(NodeId, String),
}

/// Where a peer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerState {
    /// Known, not connected, waiting for its redial time.
    Idle,
    /// A dial is under way.
    Dialling,
    /// Connected.
    Connected,
}

#[derive(Debug, Clone)]
struct Peer {
    addr: Option<Addr>,
    state: PeerState,
    conn: Option<ConnId>,
    /// When the peer was last heard from, as of its last connection's end (while connected,
    /// the connection's own [`Conn::last_heard`] is the live value).
    last_heard: Duration,
    last_sent: Duration,
    failures: u32,
    next_dial: Duration,
    heartbeat_seq: u64,
}

#[derive(Debug, Clone)]
struct Conn {
    node: NodeId,
    outbound: bool,
    /// Kept here rather than on the peer so that a frame, the most frequent event by far,
    /// costs one lookup by connection number and none by node id.
    last_heard: Duration,
    /// The peer's connection in use (not a duplicate about to close).
    in_use: bool,
}

/// A peer as reported to status commands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// The node id.
    pub node: NodeId,
    /// Its last known address.
    pub addr: Option<Addr>,
    /// Where it stands.
    pub state: PeerState,
    /// Time since it was last heard from.
    pub silent_for: Duration,
}

/// The membership state machine of one node.
#[derive(Debug)]
pub struct Membership<R> {
    me: NodeId,
    timing: Timing,
    rng: R,
    peers: BTreeMap<NodeId, Peer>,
    conns: BTreeMap<ConnId, Conn>,
    bootstrap: BTreeMap<Addr, (Duration, u32)>,
    bootstrap_dialling: BTreeSet<Addr>,
    next_rebrowse: Duration,
    /// When connected peers are next looked at: the earliest heartbeat due or silence
    /// deadline among them. A look sends a heartbeat to every peer past half its interval, so
    /// their heartbeats fall into step and a node wakes about once a heartbeat, however many
    /// peers it has, and not at all in between unless a peer falls silent.
    next_tick: Duration,
    /// What [`Membership::poll_timeout`] answers, kept up to date by every call that can move
    /// it (frames received cannot), so that asking costs nothing.
    next_wake: Duration,
    out: Vec<OutEvent>,
}

impl<R: Rng> Membership<R> {
    /// A node with no peers yet. `rng` must be seeded by the caller.
    pub fn new(me: NodeId, timing: Timing, rng: R) -> Self {
        Membership {
            me,
            timing,
            rng,
            peers: BTreeMap::new(),
            conns: BTreeMap::new(),
            bootstrap: BTreeMap::new(),
            bootstrap_dialling: BTreeSet::new(),
            next_rebrowse: Duration::ZERO,
            next_tick: Duration::ZERO,
            next_wake: Duration::ZERO,
            out: Vec::new(),
        }
    }

    /// Takes one event; the resulting actions are drained with [`Membership::poll`].
    pub fn handle(&mut self, event: InEvent, now: Duration) {
        match event {
            InEvent::Discovered { node, addr } => {
                if node == self.me {
                    return;
                }
                let peer = self.peers.entry(node).or_insert_with(|| Peer::new(now));
                if peer.addr.as_ref() != Some(&addr) {
                    peer.addr = Some(addr);
                    // A new address is worth trying at once, whatever the back-off said.
                    peer.failures = 0;
                    peer.next_dial = now;
                }
            }
            InEvent::Lost { node } => {
                if let Some(peer) = self.peers.get_mut(&node)
                    && peer.state == PeerState::Idle
                {
                    peer.addr = None;
                }
            }
            InEvent::Bootstrap { addr } => {
                self.bootstrap.entry(addr).or_insert((now, 0));
            }
            InEvent::Connected {
                conn,
                node,
                outbound,
                addr,
            } => self.on_connected(conn, node, outbound, addr, now),
            InEvent::DialFailed { addr } => {
                if self.bootstrap_dialling.remove(&addr) {
                    let backoff = self.backoff(self.bootstrap.get(&addr).map_or(0, |b| b.1));
                    let entry = self.bootstrap.entry(addr.clone()).or_insert((now, 0));
                    entry.1 += 1;
                    entry.0 = now + backoff;
                }
                let failed: Vec<NodeId> = self
                    .peers
                    .iter()
                    .filter(|(_, p)| {
                        p.state == PeerState::Dialling && p.addr.as_ref() == Some(&addr)
                    })
                    .map(|(n, _)| n.clone())
                    .collect();
                for node in failed {
                    let failures = self.peers[&node].failures;
                    let backoff = self.backoff(failures);
                    let peer = self.peers.get_mut(&node).expect("listed above");
                    peer.state = PeerState::Idle;
                    peer.failures += 1;
                    peer.next_dial = now + backoff;
                }
            }
            InEvent::Received { conn } => {
                // Only the connection in use speaks for its peer: the tick reads that one's.
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.last_heard = now;
                }
                // Liveness is looked at on the next look: a frame moves no timer, so nothing
                // else runs per frame (the most frequent event by far). A look scheduled for a
                // silence deadline that a frame has since moved just schedules the next one.
                return;
            }
            InEvent::Closed { conn } => {
                if let Some(c) = self.conns.remove(&conn)
                    && let Some(peer) = self.peers.get_mut(&c.node)
                    && peer.conn == Some(conn)
                {
                    peer.last_heard = c.last_heard;
                    peer.conn = None;
                    peer.state = PeerState::Idle;
                    peer.next_dial = now + self.timing.redial_min;
                    self.out
                        .push(OutEvent::PeerDown(c.node, "connection closed".into()));
                }
            }
        }
        self.handle_timeout(now);
    }

    fn on_connected(
        &mut self,
        conn: ConnId,
        node: NodeId,
        outbound: bool,
        addr: Option<Addr>,
        now: Duration,
    ) {
        if let Some(addr) = &addr
            && self.bootstrap_dialling.remove(addr)
            && let Some(entry) = self.bootstrap.get_mut(addr)
        {
            entry.1 = 0;
        }
        if node == self.me {
            // A bootstrap address that leads back here is never dialled again.
            if let Some(addr) = &addr {
                self.bootstrap.remove(addr);
            }
            self.out
                .push(OutEvent::Close(conn, "connected to itself".into()));
            return;
        }
        let peer = self
            .peers
            .entry(node.clone())
            .or_insert_with(|| Peer::new(now));
        if outbound && addr.is_some() {
            peer.addr = addr;
        }
        let mut replaced = false;
        if let Some(existing) = peer.conn {
            // Both sides dialled at once (the two connections go opposite ways): keep the one
            // dialled by the smaller node id, which both sides pick alike. The same side
            // dialling again means its old connection is stale (it restarted, or lost it
            // before this side noticed): keep the new one.
            let existing_outbound = self.conns.get(&existing).is_some_and(|c| c.outbound);
            let keep_new = if existing_outbound == outbound {
                true
            } else {
                dialled_by_smaller(&self.me, &node, outbound)
            };
            if !keep_new {
                self.conns.insert(
                    conn,
                    Conn {
                        node: node.clone(),
                        outbound,
                        last_heard: now,
                        in_use: false,
                    },
                );
                self.out
                    .push(OutEvent::Close(conn, "duplicate connection".into()));
                return;
            }
            self.conns.remove(&existing);
            self.out.push(OutEvent::Close(
                existing,
                "replaced by a newer connection".into(),
            ));
            replaced = true;
        }
        peer.conn = Some(conn);
        peer.state = PeerState::Connected;
        peer.last_heard = now;
        peer.last_sent = Duration::ZERO;
        // Looked at now: its first heartbeat goes at once, with those of peers past half
        // their interval.
        self.next_tick = self.next_tick.min(now);
        peer.failures = 0;
        self.conns.insert(
            conn,
            Conn {
                node: node.clone(),
                outbound,
                last_heard: now,
                in_use: true,
            },
        );
        if replaced {
            // Whatever was in flight on the old connection is gone: sessions above must start
            // over, exactly as after a disconnection.
            self.out.push(OutEvent::PeerDown(
                node.clone(),
                "connection replaced".into(),
            ));
        }
        self.out.push(OutEvent::PeerUp(node));
    }

    /// Advances timers: heartbeats, failure detection, redials, re-browsing.
    pub fn handle_timeout(&mut self, now: Duration) {
        let timing = self.timing;
        let ticking = now >= self.next_tick;
        let mut down = Vec::new();
        for (node, peer) in self.peers.iter_mut() {
            match peer.state {
                PeerState::Connected if !ticking => {}
                PeerState::Connected => {
                    let conn = peer.conn.expect("a connected peer has a connection");
                    if let Some(c) = self.conns.get(&conn) {
                        peer.last_heard = c.last_heard;
                    }
                    // Every peer past half its interval gets its heartbeat with the one that
                    // fell due, which keeps them in step: one look a heartbeat for all, each
                    // connection carrying one every half to whole `heartbeat`.
                    if now.saturating_sub(peer.last_heard) >= timing.dead_after {
                        down.push((node.clone(), conn));
                    } else if now >= peer.last_sent + timing.heartbeat / 2 {
                        peer.heartbeat_seq += 1;
                        peer.last_sent = now;
                        self.out.push(OutEvent::Send(
                            conn,
                            Message::Heartbeat {
                                seq: peer.heartbeat_seq,
                            },
                        ));
                    }
                }
                PeerState::Idle => {
                    if let Some(addr) = &peer.addr
                        && now >= peer.next_dial
                        && self.me < *node
                    {
                        // Only the smaller id dials a discovered peer; the other waits to be
                        // dialled, which halves duplicate connections. A silent peer that
                        // never dials back is still reached: the larger id dials too once the
                        // smaller has had a back-off period to do it.
                        peer.state = PeerState::Dialling;
                        self.out.push(OutEvent::Dial(addr.clone()));
                    } else if let Some(addr) = &peer.addr
                        && now >= peer.next_dial + timing.redial_max
                    {
                        peer.state = PeerState::Dialling;
                        self.out.push(OutEvent::Dial(addr.clone()));
                    }
                }
                PeerState::Dialling => {}
            }
        }
        if ticking {
            // Both are later than now: a peer not sent to is less than half an interval past
            // its last heartbeat, and one not declared down is within its silence allowance.
            self.next_tick = self
                .peers
                .values()
                .filter(|p| {
                    p.state == PeerState::Connected && !down.iter().any(|(_, c)| Some(*c) == p.conn)
                })
                .map(|p| (p.last_sent + timing.heartbeat).min(p.last_heard + timing.dead_after))
                .min()
                .unwrap_or(now + timing.heartbeat);
        }
        for (node, conn) in down {
            let peer = self.peers.get_mut(&node).expect("listed above");
            peer.conn = None;
            peer.state = PeerState::Idle;
            peer.next_dial = now;
            self.conns.remove(&conn);
            let reason = format!("silent for {} ms", timing.dead_after.as_millis());
            self.out.push(OutEvent::Close(conn, reason.clone()));
            self.out.push(OutEvent::PeerDown(node, reason));
        }
        let mut bootstrap_dials = Vec::new();
        for (addr, (next, _)) in &self.bootstrap {
            if now >= *next && !self.bootstrap_dialling.contains(addr) && !self.reaching(addr) {
                bootstrap_dials.push(addr.clone());
            }
        }
        for addr in bootstrap_dials {
            self.bootstrap_dialling.insert(addr.clone());
            self.out.push(OutEvent::Dial(addr));
        }
        if now >= self.next_rebrowse {
            self.next_rebrowse = now + timing.rebrowse;
            self.out.push(OutEvent::Rebrowse);
        }
        self.next_wake = self.compute_next_wake();
    }

    /// When [`Membership::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Duration {
        self.next_wake
    }

    fn compute_next_wake(&self) -> Duration {
        let timing = self.timing;
        let mut next = self.next_rebrowse;
        for (node, peer) in &self.peers {
            let at = match peer.state {
                PeerState::Connected => self.next_tick,
                PeerState::Idle if peer.addr.is_some() => {
                    if self.me < *node {
                        peer.next_dial
                    } else {
                        peer.next_dial + timing.redial_max
                    }
                }
                _ => continue,
            };
            next = next.min(at);
        }
        // Exactly the bootstrap addresses `handle_timeout` would dial: one that is connected
        // (or being dialled as a known peer) keeps its past due time and must not make the
        // driver's timer fire again and again; it is dialled when its connection ends, which
        // reaches `handle_timeout` through `handle`.
        for (addr, (at, _)) in &self.bootstrap {
            if *at < next && !self.bootstrap_dialling.contains(addr) && !self.reaching(addr) {
                next = *at;
            }
        }
        next
    }

    /// Whether a known peer at this address is connected or being dialled. A pass over the
    /// peers, but most nodes have one bootstrap address or none, and this allocates nothing
    /// (it runs after every event).
    fn reaching(&self, addr: &Addr) -> bool {
        self.peers
            .values()
            .any(|p| p.state != PeerState::Idle && p.addr.as_ref() == Some(addr))
    }

    /// The next action for the driver, if any.
    pub fn poll(&mut self) -> Option<OutEvent> {
        if self.out.is_empty() {
            None
        } else {
            Some(self.out.remove(0))
        }
    }

    /// Drains every pending action.
    pub fn drain(&mut self) -> Vec<OutEvent> {
        std::mem::take(&mut self.out)
    }

    /// The connection currently used for a peer.
    pub fn connection(&self, node: &str) -> Option<ConnId> {
        self.peers.get(node).and_then(|p| p.conn)
    }

    /// The peer on a connection.
    pub fn peer_of(&self, conn: ConnId) -> Option<&NodeId> {
        self.conns.get(&conn).map(|c| &c.node)
    }

    /// When each connected peer was last heard from (any frame on its connection in use).
    pub fn heard_times(&self) -> impl Iterator<Item = (&NodeId, Duration)> {
        self.peers.iter().filter_map(|(node, peer)| {
            let conn = self.conns.get(&peer.conn?)?;
            Some((node, conn.last_heard))
        })
    }

    /// The peer a connection speaks for: its peer, if it is the connection in use (a duplicate
    /// about to close speaks for nobody).
    pub fn speaker(&self, conn: ConnId) -> Option<&NodeId> {
        self.conns.get(&conn).filter(|c| c.in_use).map(|c| &c.node)
    }

    /// Every known peer, by node id.
    pub fn peers(&self, now: Duration) -> Vec<PeerInfo> {
        self.peers
            .iter()
            .map(|(node, p)| PeerInfo {
                node: node.clone(),
                addr: p.addr.clone(),
                state: p.state,
                silent_for: now.saturating_sub(
                    p.conn
                        .and_then(|c| self.conns.get(&c))
                        .map_or(p.last_heard, |c| c.last_heard),
                ),
            })
            .collect()
    }

    fn backoff(&mut self, failures: u32) -> Duration {
        let base = self
            .timing
            .redial_min
            .saturating_mul(1 << failures.min(16))
            .min(self.timing.redial_max);
        // Up to 50% jitter so that nodes cut off together do not redial in lockstep.
        let jitter = self.rng.gen_range(0..=base.as_millis() as u64 / 2);
        base + Duration::from_millis(jitter)
    }
}

impl Peer {
    fn new(now: Duration) -> Peer {
        Peer {
            addr: None,
            state: PeerState::Idle,
            conn: None,
            last_heard: now,
            last_sent: Duration::ZERO,
            failures: 0,
            next_dial: now,
            heartbeat_seq: 0,
        }
    }
}

/// Whether a connection between `me` and `peer` that `me` dialled (`outbound`) or accepted was
/// dialled by the smaller of the two ids.
fn dialled_by_smaller(me: &str, peer: &str, outbound: bool) -> bool {
    (me < peer) == outbound
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn node(me: &str) -> Membership<StdRng> {
        Membership::new(me.into(), Timing::default(), StdRng::seed_from_u64(1))
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_smaller_id_dials_a_discovered_peer() {
        let mut a = node("a");
        let mut b = node("b");
        a.handle(
            InEvent::Discovered {
                node: "b".into(),
                addr: "b:1".into(),
            },
            ms(0),
        );
        b.handle(
            InEvent::Discovered {
                node: "a".into(),
                addr: "a:1".into(),
            },
            ms(0),
        );
        assert!(a.drain().contains(&OutEvent::Dial("b:1".into())));
        assert!(!b.drain().iter().any(|e| matches!(e, OutEvent::Dial(_))));
    }

    #[test]
    fn a_silent_peer_is_declared_down_within_the_deadline() {
        let mut a = node("a");
        a.handle(
            InEvent::Connected {
                conn: 1,
                node: "b".into(),
                outbound: true,
                addr: Some("b:1".into()),
            },
            ms(0),
        );
        assert!(a.drain().contains(&OutEvent::PeerUp("b".into())));
        let mut t = 0;
        let mut down_at = None;
        while t < 10_000 {
            t = a.poll_timeout().as_millis() as u64;
            a.handle_timeout(ms(t));
            for e in a.drain() {
                if let OutEvent::PeerDown(n, _) = e {
                    assert_eq!(n, "b");
                    down_at.get_or_insert(t);
                }
            }
            if down_at.is_some() {
                break;
            }
        }
        let down_at = down_at.expect("declared down");
        assert!(down_at <= 3000, "declared down after {down_at} ms");
        assert_eq!(a.connection("b"), None);
    }

    #[test]
    fn traffic_keeps_a_peer_alive_and_heartbeats_flow() {
        let mut a = node("a");
        a.handle(
            InEvent::Connected {
                conn: 1,
                node: "b".into(),
                outbound: true,
                addr: Some("b:1".into()),
            },
            ms(0),
        );
        a.drain();
        let mut heartbeats = 0;
        for t in (10..20_000).step_by(10) {
            if t % 100 == 0 {
                a.handle(InEvent::Received { conn: 1 }, ms(t));
            }
            // As a driver does: the timer fires when it is due.
            if a.poll_timeout() <= ms(t) {
                a.handle_timeout(ms(t));
            }
            for e in a.drain() {
                match e {
                    OutEvent::Send(1, Message::Heartbeat { .. }) => heartbeats += 1,
                    OutEvent::PeerDown(..) => panic!("declared down while talking"),
                    _ => {}
                }
            }
        }
        assert!((17..=23).contains(&heartbeats), "{heartbeats}");
    }

    #[test]
    fn simultaneous_dials_keep_one_connection_chosen_alike() {
        let mut a = node("a");
        let mut b = node("b");
        // Connection 1 dialled by a, connection 2 dialled by b; each side sees both.
        a.handle(
            InEvent::Connected {
                conn: 1,
                node: "b".into(),
                outbound: true,
                addr: Some("b:1".into()),
            },
            ms(0),
        );
        a.handle(
            InEvent::Connected {
                conn: 2,
                node: "b".into(),
                outbound: false,
                addr: None,
            },
            ms(1),
        );
        b.handle(
            InEvent::Connected {
                conn: 2,
                node: "a".into(),
                outbound: true,
                addr: Some("a:1".into()),
            },
            ms(0),
        );
        b.handle(
            InEvent::Connected {
                conn: 1,
                node: "a".into(),
                outbound: false,
                addr: None,
            },
            ms(1),
        );
        assert_eq!(a.connection("b"), Some(1));
        assert_eq!(b.connection("a"), Some(1));
        let a_out = a.drain();
        let b_out = b.drain();
        // On a the kept connection came first; on b it replaced the first one, which resets
        // whatever sessions b had started on it.
        assert!(
            a_out.contains(&OutEvent::Close(2, "duplicate connection".into())),
            "{a_out:?}"
        );
        assert!(
            b_out.contains(&OutEvent::Close(2, "replaced by a newer connection".into())),
            "{b_out:?}"
        );
        assert!(b_out.contains(&OutEvent::PeerDown(
            "a".into(),
            "connection replaced".into()
        )));
    }

    #[test]
    fn a_peer_that_dials_again_replaces_its_stale_connection() {
        let mut a = node("a");
        let inbound = |conn| InEvent::Connected {
            conn,
            node: "b".into(),
            outbound: false,
            addr: None,
        };
        a.handle(inbound(1), ms(0));
        a.drain();
        // b restarted and dialled again before a noticed that the old connection died.
        a.handle(inbound(2), ms(500));
        let out = a.drain();
        assert_eq!(a.connection("b"), Some(2));
        assert!(out.contains(&OutEvent::Close(1, "replaced by a newer connection".into())));
        assert!(out.contains(&OutEvent::PeerDown(
            "b".into(),
            "connection replaced".into()
        )));
        assert!(out.contains(&OutEvent::PeerUp("b".into())));
        // The old connection's close does not take the peer down again.
        a.handle(InEvent::Closed { conn: 1 }, ms(600));
        assert!(
            !a.drain()
                .iter()
                .any(|e| matches!(e, OutEvent::PeerDown(..)))
        );
    }

    #[test]
    fn failed_dials_back_off_and_a_new_address_is_tried_at_once() {
        let mut a = node("a");
        a.handle(
            InEvent::Discovered {
                node: "b".into(),
                addr: "b:1".into(),
            },
            ms(0),
        );
        assert!(a.drain().contains(&OutEvent::Dial("b:1".into())));
        a.handle(InEvent::DialFailed { addr: "b:1".into() }, ms(10));
        a.drain();
        let next = a.poll_timeout();
        assert!(next >= ms(10 + 200) && next <= ms(10 + 300), "{next:?}");
        a.handle(
            InEvent::Discovered {
                node: "b".into(),
                addr: "b:2".into(),
            },
            ms(20),
        );
        assert!(a.drain().contains(&OutEvent::Dial("b:2".into())));
    }

    #[test]
    fn bootstrap_peers_are_dialled_and_redialled() {
        let mut a = node("z");
        a.handle(
            InEvent::Bootstrap {
                addr: "cloud:4860".into(),
            },
            ms(0),
        );
        assert!(a.drain().contains(&OutEvent::Dial("cloud:4860".into())));
        a.handle(
            InEvent::DialFailed {
                addr: "cloud:4860".into(),
            },
            ms(5),
        );
        a.drain();
        a.handle_timeout(ms(150));
        assert!(!a.drain().contains(&OutEvent::Dial("cloud:4860".into())));
        a.handle_timeout(ms(1000));
        assert!(a.drain().contains(&OutEvent::Dial("cloud:4860".into())));
        a.handle(
            InEvent::Connected {
                conn: 7,
                node: "c".into(),
                outbound: true,
                addr: Some("cloud:4860".into()),
            },
            ms(1010),
        );
        assert!(a.drain().contains(&OutEvent::PeerUp("c".into())));
        // While connected (and talking) the bootstrap address is not dialled again, and its
        // past due time is no deadline (the driver would spin on it).
        for t in (1100..5000).step_by(100) {
            a.handle(InEvent::Received { conn: 7 }, ms(t));
            // As a driver does: the timer fires when due, and then it is in the future.
            if a.poll_timeout() <= ms(t) {
                a.handle_timeout(ms(t));
            }
            assert!(!a.drain().contains(&OutEvent::Dial("cloud:4860".into())));
            assert!(a.poll_timeout() > ms(t), "deadline in the past at {t} ms");
        }
        // Once the connection closes, it is.
        a.handle(InEvent::Closed { conn: 7 }, ms(5000));
        assert!(a.drain().contains(&OutEvent::Dial("cloud:4860".into())));
    }

    #[test]
    fn a_connected_bootstrap_peer_does_not_keep_the_timer_due() {
        // Found by the simulator (fleet-1000 scenario): poll_timeout returned the bootstrap
        // entry's past due time while handle_timeout skipped the connected address, so a
        // driver's timer fired again at once, forever.
        let mut a = node("z");
        a.handle(
            InEvent::Bootstrap {
                addr: "cloud:4860".into(),
            },
            ms(0),
        );
        a.handle(
            InEvent::Connected {
                conn: 7,
                node: "c".into(),
                outbound: true,
                addr: Some("cloud:4860".into()),
            },
            ms(10),
        );
        a.drain();
        for t in [100, 600, 1100] {
            a.handle(InEvent::Received { conn: 7 }, ms(t));
            a.handle_timeout(ms(t));
            a.drain();
            assert!(a.poll_timeout() > ms(t), "due again at once at {t} ms");
        }
        // While the lost cloud peer is redialled as a known peer, the bootstrap entry waits too.
        a.handle(InEvent::Closed { conn: 7 }, ms(1200));
        let dials = a.drain();
        assert_eq!(
            dials
                .iter()
                .filter(|e| **e == OutEvent::Dial("cloud:4860".into()))
                .count(),
            1,
            "{dials:?}"
        );
        a.handle_timeout(ms(1500));
        assert!(a.poll_timeout() > ms(1500));
    }

    #[test]
    fn rebrowse_is_requested_periodically() {
        let mut a = node("a");
        let mut count = 0;
        let mut t = Duration::ZERO;
        while t < Duration::from_secs(100) {
            a.handle_timeout(t);
            count += a
                .drain()
                .iter()
                .filter(|e| **e == OutEvent::Rebrowse)
                .count();
            t = a.poll_timeout().max(t + ms(1));
        }
        assert_eq!(count, 4);
    }
}
