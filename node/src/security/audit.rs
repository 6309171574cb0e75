//! Security events: every join, certificate issued or renewed, connection refused at the
//! handshake, change refused, write through an API token, and revocation, as a structured log
//! line (target `rhizome::audit`), a counter per kind, and a bounded list of the most recent,
//! which `rhizome status --security` (`GET /security`) shows.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// Recent events kept; older ones live in the log only.
pub const RECENT_EVENTS: usize = 256;
/// How far back among the recent events a repeat is looked for. A peer that keeps offering
/// the same refused change, or a revoked node that keeps redialling, repeats one event every
/// few seconds for as long as it runs: folded into one row, it cannot push every other event
/// out of the list.
const FOLD_WITHIN: usize = 16;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A machine joined with a token and got a certificate.
    Joined,
    /// A join or renewal was refused.
    EnrolmentRefused,
    /// A node's certificate was renewed (this node's own, or one this node issued).
    Renewed,
    /// A connection was refused at the TLS handshake (another mesh, revoked, expired).
    HandshakeRefused,
    /// A change from a peer was refused: its author had no right to it.
    ChangeRefused,
    /// A write through the HTTP API, with the token that made it.
    ApiWrite,
    /// A request to the HTTP API was refused (no token, unknown, expired, revoked, role).
    ApiRefused,
    /// The mesh CA revoked a node or withdrew a revocation.
    Revocation,
    /// A decision in the mesh document was ignored (not signed by the mesh CA).
    DecisionIgnored,
    /// The mesh's CAs changed: one added (a rotation started) or retired (one finished).
    CaChanged,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Joined => "joined",
            Kind::EnrolmentRefused => "enrolment_refused",
            Kind::Renewed => "renewed",
            Kind::HandshakeRefused => "handshake_refused",
            Kind::ChangeRefused => "change_refused",
            Kind::ApiWrite => "api_write",
            Kind::ApiRefused => "api_refused",
            Kind::CaChanged => "ca_changed",
            Kind::Revocation => "revocation",
            Kind::DecisionIgnored => "decision_ignored",
        }
    }
}

/// One event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub at_ms: i64,
    pub kind: Kind,
    /// Who or what it is about: a node id, an address, a token's name.
    pub subject: String,
    pub detail: String,
    /// Times the same event (kind, subject, detail) happened before, folded into this one;
    /// `at_ms` is the latest.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub repeats: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What `GET /security` answers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditView {
    /// Events of each kind since the node started.
    pub counts: BTreeMap<String, u64>,
    /// The most recent events, oldest first.
    pub recent: Vec<Event>,
}

/// The node's record of security events.
#[derive(Debug, Default)]
pub struct Audit {
    inner: Mutex<(VecDeque<Event>, BTreeMap<Kind, u64>)>,
}

impl Audit {
    /// Records an event: logged, counted, kept among the recent.
    pub fn record(&self, kind: Kind, subject: impl Into<String>, detail: impl Into<String>) {
        let event = Event {
            at_ms: crate::node::now_ms(),
            kind,
            subject: subject.into(),
            detail: detail.into(),
            repeats: 0,
        };
        tracing::warn!(
            target: "rhizome::audit",
            kind = kind.as_str(),
            subject = %event.subject,
            detail = %event.detail,
            "security event"
        );
        let mut inner = self.inner.lock().expect("audit lock");
        *inner.1.entry(kind).or_default() += 1;
        let recent = &mut inner.0;
        let same = |e: &Event| {
            e.kind == event.kind && e.subject == event.subject && e.detail == event.detail
        };
        let from = recent.len().saturating_sub(FOLD_WITHIN);
        if let Some(at) = (from..recent.len()).rev().find(|&i| same(&recent[i])) {
            let earlier = recent.remove(at).expect("found above");
            recent.push_back(Event {
                repeats: earlier.repeats + 1,
                ..event
            });
            return;
        }
        if recent.len() == RECENT_EVENTS {
            recent.pop_front();
        }
        recent.push_back(event);
    }

    /// The counters and the recent events.
    pub fn view(&self) -> AuditView {
        let inner = self.inner.lock().expect("audit lock");
        AuditView {
            counts: inner
                .1
                .iter()
                .map(|(k, n)| (k.as_str().to_owned(), *n))
                .collect(),
            recent: inner.0.iter().cloned().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_counted_and_the_recent_ones_kept_in_order() {
        let audit = Audit::default();
        for i in 0..RECENT_EVENTS + 10 {
            audit.record(Kind::ApiWrite, "ci", format!("POST /run/{i}"));
        }
        audit.record(Kind::ChangeRefused, "node-b", "results of node-a");
        let view = audit.view();
        assert_eq!(view.counts["api_write"], (RECENT_EVENTS + 10) as u64);
        assert_eq!(view.counts["change_refused"], 1);
        assert_eq!(view.recent.len(), RECENT_EVENTS);
        assert_eq!(view.recent.last().unwrap().kind, Kind::ChangeRefused);
        assert_eq!(view.recent[0].detail, "POST /run/11");
    }

    #[test]
    fn an_event_repeated_among_the_latest_is_one_row_with_its_count() {
        let audit = Audit::default();
        audit.record(Kind::Joined, "node-c", "with token t1");
        for _ in 0..1000 {
            audit.record(Kind::ChangeRefused, "node-b", "refused a change to mesh");
            audit.record(Kind::HandshakeRefused, "127.0.0.1:9", "node x is revoked");
        }
        audit.record(
            Kind::ChangeRefused,
            "node-b",
            "refused a change to workflow/w",
        );
        let view = audit.view();
        assert_eq!(view.counts["change_refused"], 1001);
        assert_eq!(view.counts["handshake_refused"], 1000);
        let rows: Vec<(&str, u64)> = view
            .recent
            .iter()
            .map(|e| (e.detail.as_str(), e.repeats))
            .collect();
        assert_eq!(
            rows,
            [
                ("with token t1", 0),
                ("refused a change to mesh", 999),
                ("node x is revoked", 999),
                ("refused a change to workflow/w", 0),
            ]
        );
        // Beyond the window a repeat is a row of its own again.
        for i in 0..FOLD_WITHIN {
            audit.record(Kind::ApiWrite, "ci", format!("POST /run/{i}"));
        }
        audit.record(Kind::Joined, "node-c", "with token t1");
        let view = audit.view();
        assert_eq!(view.recent.len(), 5 + FOLD_WITHIN);
        assert_eq!(view.recent.last().unwrap().repeats, 0);
    }
}
