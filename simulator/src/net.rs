//! The simulated network: connections with two ends, per-pair latency, serialisation delay,
//! retransmission delay for lost frames, and cuts (partitions, one-way cuts, isolated nodes,
//! single links) that hold frames until they heal or the connection closes.
//!
//! Frames of one connection direction arrive in the order sent (a QUIC stream is reliable and
//! ordered); frames of different connections are reordered freely by their latencies.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use mesh::proto::membership::ConnId;
use mesh::proto::wire::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// One end of a connection.
#[derive(Debug)]
pub struct End {
    /// The node at this end.
    pub node: usize,
    /// The node's incarnation when the connection formed; a restarted node does not own it.
    pub inc: u32,
    /// Whether this end still takes frames.
    pub open: bool,
    /// When the last frame towards this end arrives (frames stay in order).
    pub last_arrival: Duration,
    /// Frames towards this end held by a cut, in order.
    pub held: VecDeque<Message>,
}

/// A connection between two nodes; end 0 dialled.
#[derive(Debug)]
pub struct Conn {
    /// The dialler's end and the acceptor's.
    pub ends: [End; 2],
}

impl Conn {
    /// Which end belongs to this node incarnation.
    pub fn end_of(&self, node: usize, inc: u32) -> Option<usize> {
        (0..2).find(|&i| self.ends[i].node == node && self.ends[i].inc == inc)
    }
}

/// A link between two nodes: its base latency and its own random stream, so traffic on one
/// link does not change the delays drawn on another.
#[derive(Debug)]
pub struct Link {
    /// One-way base latency.
    pub base: Duration,
    rng: StdRng,
}

/// A rule that cuts traffic from some nodes to others while it is active.
#[derive(Debug, Clone)]
pub enum Cut {
    /// Nodes in different groups cannot talk (`u8::MAX`: not part of the partition).
    Groups(Vec<u8>),
    /// Traffic from `from` nodes to `to` nodes is cut; the reverse flows.
    OneWay {
        /// Senders cut off.
        from: Vec<bool>,
        /// Receivers they cannot reach.
        to: Vec<bool>,
    },
    /// Every link of one node.
    Node(usize),
    /// Both directions between two nodes.
    Pair(usize, usize),
}

impl Cut {
    fn cuts(&self, from: usize, to: usize) -> bool {
        match self {
            Cut::Groups(g) => match (g.get(from), g.get(to)) {
                (Some(&a), Some(&b)) => a != u8::MAX && b != u8::MAX && a != b,
                _ => false,
            },
            Cut::OneWay { from: f, to: t } => {
                f.get(from).copied().unwrap_or(false) && t.get(to).copied().unwrap_or(false)
            }
            Cut::Node(n) => *n == from || *n == to,
            Cut::Pair(a, b) => (*a == from && *b == to) || (*a == to && *b == from),
        }
    }
}

/// Latency and loss settings.
#[derive(Debug, Clone, Copy)]
pub struct Model {
    /// Base latency bounds within a segment.
    pub lan: (Duration, Duration),
    /// Base latency bounds across segments and to the cloud.
    pub wan: (Duration, Duration),
    /// Extra per-frame delay bound.
    pub jitter: Duration,
    /// Bytes per second leaving one node.
    pub bytes_per_sec: f64,
    /// Probability that a frame is retransmitted once.
    pub loss: f64,
}

/// Connections, links and cuts.
#[derive(Debug)]
pub struct Net {
    /// Settings.
    pub model: Model,
    seed: u64,
    /// Open and recently closed connections.
    pub conns: BTreeMap<ConnId, Conn>,
    next_conn: ConnId,
    links: BTreeMap<(usize, usize), Link>,
    /// Active cuts by id.
    pub cuts: BTreeMap<u64, Cut>,
    next_cut: u64,
    /// When each node's outgoing link is free again.
    tx_free: BTreeMap<usize, Duration>,
}

impl Net {
    /// An empty network.
    pub fn new(model: Model, seed: u64) -> Net {
        Net {
            model,
            seed,
            conns: BTreeMap::new(),
            next_conn: 1,
            links: BTreeMap::new(),
            cuts: BTreeMap::new(),
            next_cut: 1,
            tx_free: BTreeMap::new(),
        }
    }

    /// Whether traffic from `from` to `to` is cut now.
    pub fn is_cut(&self, from: usize, to: usize) -> bool {
        self.cuts.values().any(|c| c.cuts(from, to))
    }

    /// Adds a cut; returns its id for [`Net::heal`].
    pub fn cut(&mut self, cut: Cut) -> u64 {
        let id = self.next_cut;
        self.next_cut += 1;
        self.cuts.insert(id, cut);
        id
    }

    /// Removes a cut.
    pub fn heal(&mut self, id: u64) {
        self.cuts.remove(&id);
    }

    fn link(&mut self, a: usize, b: usize, wan: bool) -> &mut Link {
        let key = (a.min(b), a.max(b));
        let seed = self.seed;
        let (lo, hi) = if wan { self.model.wan } else { self.model.lan };
        self.links.entry(key).or_insert_with(|| {
            let mut rng = StdRng::seed_from_u64(
                seed ^ (key.0 as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
                    ^ (key.1 as u64).wrapping_mul(0xc2b2_ae3d_27d4_eb4f),
            );
            let base = if hi > lo {
                lo + Duration::from_nanos(rng.gen_range(0..(hi - lo).as_nanos() as u64))
            } else {
                lo
            };
            Link { base, rng }
        })
    }

    /// The base one-way latency between two nodes.
    pub fn latency(&mut self, a: usize, b: usize, wan: bool) -> Duration {
        self.link(a, b, wan).base
    }

    /// A new connection id.
    pub fn next_conn_id(&mut self) -> ConnId {
        let id = self.next_conn;
        self.next_conn += 1;
        id
    }

    /// When a frame of `len` bytes sent now from `from` to `to` arrives, before the in-order
    /// clamp: the sender's queue, serialisation, latency, jitter, and a retransmission when the
    /// frame is lost.
    pub fn arrival(
        &mut self,
        now: Duration,
        from: usize,
        to: usize,
        len: usize,
        wan: bool,
    ) -> Duration {
        let model = self.model;
        let free = self.tx_free.entry(from).or_default();
        let start = (*free).max(now);
        let serialise = Duration::from_secs_f64(len as f64 / model.bytes_per_sec);
        *free = start + serialise;
        let sent = *free;
        let link = self.link(from, to, wan);
        let mut delay = link.base;
        if !model.jitter.is_zero() {
            delay += Duration::from_nanos(link.rng.gen_range(0..model.jitter.as_nanos() as u64));
        }
        // A lost packet is retransmitted after about three round trips (QUIC's probe timeout),
        // possibly more than once.
        while model.loss > 0.0 && link.rng.gen_bool(model.loss) {
            delay += (link.base * 6).max(Duration::from_millis(20));
        }
        sent + delay
    }
}
