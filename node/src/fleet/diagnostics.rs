//! What replication remembers for `rhizome explain`: when each peer came and went and why,
//! connections refused at the handshake, dials that failed, and the last sync message refused
//! per peer and document. Facts the node saw, bounded, never guesses.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// Refusals and failed dials kept, the most recent.
const KEPT: usize = 64;

/// Sync refusals kept, one per (peer, document), the most recent.
const REFUSALS_KEPT: usize = 256;

/// Events at addresses: the address, what happened there and when.
pub type AtAddresses = Vec<(String, Seen)>;

/// Something that happened, when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    pub at_ms: i64,
    pub what: String,
}

#[derive(Debug, Default)]
struct Inner {
    /// Each peer's last up and down, with the reason it went down.
    up: BTreeMap<String, i64>,
    down: BTreeMap<String, Seen>,
    /// Incoming connections refused at the handshake: address, reason.
    refused: VecDeque<(String, Seen)>,
    /// Dials that failed: address, reason.
    dials: VecDeque<(String, Seen)>,
    /// The last refused sync message per (peer, document id).
    sync_refused: BTreeMap<(String, String), Seen>,
}

/// Shared between the sync actor, which records, and the API, which explains.
#[derive(Debug, Clone, Default)]
pub struct Diagnostics(Arc<Mutex<Inner>>);

fn push(list: &mut VecDeque<(String, Seen)>, addr: String, what: String) {
    if list.len() == KEPT {
        list.pop_front();
    }
    list.push_back((
        addr,
        Seen {
            at_ms: crate::node::now_ms(),
            what,
        },
    ));
}

impl Diagnostics {
    pub fn peer_up(&self, peer: &str) {
        let mut inner = self.0.lock().expect("diagnostics");
        inner.up.insert(peer.to_owned(), crate::node::now_ms());
    }

    pub fn peer_down(&self, peer: &str, reason: &str) {
        let mut inner = self.0.lock().expect("diagnostics");
        inner.down.insert(
            peer.to_owned(),
            Seen {
                at_ms: crate::node::now_ms(),
                what: reason.to_owned(),
            },
        );
    }

    pub fn handshake_refused(&self, from: &str, reason: &str) {
        push(
            &mut self.0.lock().expect("diagnostics").refused,
            from.to_owned(),
            reason.to_owned(),
        );
    }

    pub fn dial_failed(&self, addr: &str, reason: &str) {
        push(
            &mut self.0.lock().expect("diagnostics").dials,
            addr.to_owned(),
            reason.to_owned(),
        );
    }

    pub fn sync_refused(&self, peer: &str, doc: &str, reason: &str) {
        let mut inner = self.0.lock().expect("diagnostics");
        if inner.sync_refused.len() >= REFUSALS_KEPT
            && !inner
                .sync_refused
                .contains_key(&(peer.to_owned(), doc.to_owned()))
            && let Some(oldest) = inner
                .sync_refused
                .iter()
                .min_by_key(|(_, seen)| seen.at_ms)
                .map(|(k, _)| k.clone())
        {
            inner.sync_refused.remove(&oldest);
        }
        inner.sync_refused.insert(
            (peer.to_owned(), doc.to_owned()),
            Seen {
                at_ms: crate::node::now_ms(),
                what: reason.to_owned(),
            },
        );
    }

    /// When the peer last came up and went down (and why).
    pub fn peer(&self, peer: &str) -> (Option<i64>, Option<Seen>) {
        let inner = self.0.lock().expect("diagnostics");
        (inner.up.get(peer).copied(), inner.down.get(peer).cloned())
    }

    /// Handshake refusals and failed dials at any of `addresses`, most recent last.
    pub fn about_addresses(&self, addresses: &[String]) -> (AtAddresses, AtAddresses) {
        let inner = self.0.lock().expect("diagnostics");
        let matches = |addr: &String| addresses.iter().any(|a| a == addr);
        (
            inner
                .refused
                .iter()
                .filter(|(a, _)| matches(a))
                .cloned()
                .collect(),
            inner
                .dials
                .iter()
                .filter(|(a, _)| matches(a))
                .cloned()
                .collect(),
        )
    }

    /// Every recent handshake refusal.
    pub fn refusals(&self) -> Vec<(String, Seen)> {
        self.0
            .lock()
            .expect("diagnostics")
            .refused
            .iter()
            .cloned()
            .collect()
    }

    /// The last refused sync message for a document, per peer.
    pub fn sync_refusals(&self, doc: &str) -> BTreeMap<String, Seen> {
        self.0
            .lock()
            .expect("diagnostics")
            .sync_refused
            .iter()
            .filter(|((_, d), _)| d == doc)
            .map(|((peer, _), seen)| (peer.clone(), seen.clone()))
            .collect()
    }
}
