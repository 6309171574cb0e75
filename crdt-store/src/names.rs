//! Document names and the ids derived from them.
//!
//! Every replicated document has a logical name (`mesh`, `workflow/<id>`,
//! `results/<node>/<window>`, `rollup/<zone>/<window>`, `alerts/<node>/<window>`) and an
//! automerge-repo document id. The id
//! is derived from the mesh id and the name by hashing, so that every node of a mesh agrees on the
//! id of `workflow/ingest` without asking anyone: two nodes that create it while apart create the
//! same document, and their edits merge when they meet.

use std::fmt;
use std::str::FromStr;

use samod_core::DocumentId;
use sha2::{Digest, Sha256};

use crate::error::{Result, StoreError};

/// Longest accepted name segment (a workflow id, node id, zone or window).
pub const MAX_SEGMENT_LEN: usize = 128;

/// The kind of a document, which decides its schema and who it is shared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DocKind {
    /// The mesh registry: one per mesh.
    Mesh,
    /// A workflow definition.
    Workflow,
    /// One node's run records for one time window.
    Results,
    /// A zone aggregator's summaries for one time window.
    Rollup,
    /// One node's alerts (fired and resolved) for one time window.
    Alerts,
}

impl DocKind {
    /// The name of the kind as it appears in document names and output.
    pub fn as_str(self) -> &'static str {
        match self {
            DocKind::Mesh => "mesh",
            DocKind::Workflow => "workflow",
            DocKind::Results => "results",
            DocKind::Rollup => "rollup",
            DocKind::Alerts => "alerts",
        }
    }
}

impl fmt::Display for DocKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The logical name of a document.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DocName {
    /// `mesh`
    Mesh,
    /// `workflow/<id>`
    Workflow { id: String },
    /// `results/<node>/<window>`
    Results { node: String, window: Window },
    /// `rollup/<zone>/<window>`; inside the name the zone path's `/` is written `+` and the
    /// root zone is `+` alone (zone levels never contain `+`, so the name reads back exactly).
    Rollup { zone: String, window: Window },
    /// `alerts/<node>/<window>`
    Alerts { node: String, window: Window },
}

impl DocName {
    /// The document's kind.
    pub fn kind(&self) -> DocKind {
        match self {
            DocName::Mesh => DocKind::Mesh,
            DocName::Workflow { .. } => DocKind::Workflow,
            DocName::Results { .. } => DocKind::Results,
            DocName::Rollup { .. } => DocKind::Rollup,
            DocName::Alerts { .. } => DocKind::Alerts,
        }
    }

    /// An alerts document name, checked.
    pub fn alerts(node: &str, window: Window) -> Result<Self> {
        check_segment(node, "node id")?;
        Ok(DocName::Alerts {
            node: node.to_owned(),
            window,
        })
    }

    /// A workflow document name, checked.
    pub fn workflow(id: &str) -> Result<Self> {
        check_segment(id, "workflow id")?;
        Ok(DocName::Workflow { id: id.to_owned() })
    }

    /// A results document name, checked.
    pub fn results(node: &str, window: Window) -> Result<Self> {
        check_segment(node, "node id")?;
        Ok(DocName::Results {
            node: node.to_owned(),
            window,
        })
    }

    /// A rollup document name, checked. `zone` is a zone path such as `site-a/line-3`, or
    /// `` for the root.
    pub fn rollup(zone: &str, window: Window) -> Result<Self> {
        let encoded = if zone.is_empty() {
            "+".to_owned()
        } else {
            zone.replace('/', "+")
        };
        Self::rollup_encoded(&encoded, window)
    }

    fn rollup_encoded(encoded: &str, window: Window) -> Result<Self> {
        let levels_ok = encoded == "+"
            || encoded
                .split('+')
                .all(|level| check_segment(level, "zone level").is_ok());
        if !levels_ok {
            return Err(StoreError::InvalidName {
                name: encoded.to_owned(),
                reason: "a zone is levels of ASCII letters, digits, '-', '_' and '.', \
                         joined by '/'"
                    .into(),
            });
        }
        Ok(DocName::Rollup {
            zone: encoded.to_owned(),
            window,
        })
    }

    /// The zone path of a rollup document (`site-a/line-3`, `` for the root).
    pub fn rollup_zone(&self) -> Option<String> {
        match self {
            DocName::Rollup { zone, .. } if zone == "+" => Some(String::new()),
            DocName::Rollup { zone, .. } => Some(zone.replace('+', "/")),
            _ => None,
        }
    }

    /// The automerge-repo document id of this name within the given mesh.
    pub fn document_id(&self, mesh_id: &str) -> DocumentId {
        let mut hasher = Sha256::new();
        hasher.update(b"rhizome-doc-v1\0");
        hasher.update(mesh_id.as_bytes());
        hasher.update(b"\0");
        hasher.update(self.to_string().as_bytes());
        let digest = hasher.finalize();
        DocumentId::try_from(digest[..16].to_vec()).expect("a 16-byte id is always valid")
    }

    /// The window of a results or rollup document.
    pub fn window(&self) -> Option<Window> {
        match self {
            DocName::Results { window, .. }
            | DocName::Rollup { window, .. }
            | DocName::Alerts { window, .. } => Some(*window),
            _ => None,
        }
    }
}

fn check_segment(segment: &str, what: &'static str) -> Result<()> {
    let problem = if segment.is_empty() {
        "is empty"
    } else if segment.len() > MAX_SEGMENT_LEN {
        "is longer than 128 bytes"
    } else if !segment
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        "may only contain ASCII letters, digits, '-', '_' and '.'"
    } else {
        return Ok(());
    };
    Err(StoreError::InvalidName {
        name: segment.to_owned(),
        reason: format!("the {what} {problem}"),
    })
}

impl fmt::Display for DocName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DocName::Mesh => f.write_str("mesh"),
            DocName::Workflow { id } => write!(f, "workflow/{id}"),
            DocName::Results { node, window } => write!(f, "results/{node}/{window}"),
            DocName::Rollup { zone, window } => write!(f, "rollup/{zone}/{window}"),
            DocName::Alerts { node, window } => write!(f, "alerts/{node}/{window}"),
        }
    }
}

impl FromStr for DocName {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self> {
        let invalid = |reason: &str| StoreError::InvalidName {
            name: s.to_owned(),
            reason: reason.to_owned(),
        };
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            ["mesh"] => Ok(DocName::Mesh),
            ["workflow", id] => DocName::workflow(id),
            ["results", node, window] => DocName::results(node, window.parse()?),
            ["rollup", zone, window] => DocName::rollup_encoded(zone, window.parse()?),
            ["alerts", node, window] => DocName::alerts(node, window.parse()?),
            ["alerts", ..] => Err(invalid("expected alerts/<node>/<window>")),
            ["workflow", ..] => Err(invalid("expected workflow/<id>")),
            ["results", ..] => Err(invalid("expected results/<node>/<window>")),
            ["rollup", ..] => Err(invalid("expected rollup/<zone>/<window>")),
            _ => Err(invalid(
                "expected mesh, workflow/<id>, results/<node>/<window>, rollup/<zone>/<window> or \
                 alerts/<node>/<window>",
            )),
        }
    }
}

/// A time window, identified by its start in milliseconds since the Unix epoch and its length.
///
/// Written as `<start>+<length>` with the start as a UTC timestamp and the length in minutes,
/// e.g. `2026-11-24T04:00Z+60m`, so names sort by time and say what they cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Window {
    /// Start of the window, milliseconds since the Unix epoch (UTC).
    pub start_ms: i64,
    /// Length of the window in whole minutes.
    pub minutes: u32,
}

impl Window {
    /// The window of the given length that contains `at_ms`.
    pub fn containing(at_ms: i64, minutes: u32) -> Window {
        let len = i64::from(minutes.max(1)) * 60_000;
        Window {
            start_ms: at_ms.div_euclid(len) * len,
            minutes: minutes.max(1),
        }
    }

    /// End of the window (exclusive), milliseconds since the Unix epoch.
    pub fn end_ms(&self) -> i64 {
        self.start_ms + i64::from(self.minutes) * 60_000
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (y, mo, d, h, mi) = civil_from_ms(self.start_ms);
        write!(f, "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}Z+{}m", self.minutes)
    }
}

impl FromStr for Window {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self> {
        let invalid = || StoreError::InvalidName {
            name: s.to_owned(),
            reason: "a window is written YYYY-MM-DDTHH:MMZ+<minutes>m".to_owned(),
        };
        let (start, len) = s.split_once('+').ok_or_else(invalid)?;
        let minutes: u32 = len
            .strip_suffix('m')
            .and_then(|m| m.parse().ok())
            .filter(|m| *m > 0)
            .ok_or_else(invalid)?;
        let b = start.as_bytes();
        if b.len() != 17 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' {
            return Err(invalid());
        }
        if b[16] != b'Z' {
            return Err(invalid());
        }
        let num = |r: std::ops::Range<usize>| -> Result<i64> {
            start[r].parse::<i64>().map_err(|_| invalid())
        };
        let (y, mo, d, h, mi) = (
            num(0..4)?,
            num(5..7)?,
            num(8..10)?,
            num(11..13)?,
            num(14..16)?,
        );
        if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 {
            return Err(invalid());
        }
        let start_ms = (days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60) * 1000;
        Ok(Window { start_ms, minutes })
    }
}

/// Formats milliseconds since the epoch as an RFC 3339 UTC timestamp with milliseconds.
pub fn format_timestamp(ms: i64) -> String {
    let (y, mo, d, h, mi) = civil_from_ms(ms);
    let s = ms.div_euclid(1000).rem_euclid(60);
    let frac = ms.rem_euclid(1000);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{frac:03}Z")
}

/// Parses an RFC 3339 UTC timestamp (`2026-11-24T04:00:00Z`, fractional seconds allowed) or a
/// date (`2026-11-24`, meaning its midnight UTC) into milliseconds since the epoch.
pub fn parse_timestamp(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> { text.get(r)?.parse::<i64>().ok() };
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return None;
    }
    let mut ms = days_from_civil(y, mo, d) * 86_400_000;
    if b.len() == 10 {
        return Some(ms);
    }
    if b.len() < 20 || b[10] != b'T' || b[13] != b':' || b[16] != b':' || *b.last()? != b'Z' {
        return None;
    }
    let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if h > 23 || mi > 59 || s > 60 {
        return None;
    }
    ms += (h * 3600 + mi * 60 + s) * 1000;
    let frac = &text[19..text.len() - 1];
    if let Some(digits) = frac.strip_prefix('.') {
        if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        let millis: String = digits.chars().chain("000".chars()).take(3).collect();
        ms += millis.parse::<i64>().ok()?;
    } else if !frac.is_empty() {
        return None;
    }
    Some(ms)
}

fn civil_from_ms(ms: i64) -> (i64, i64, i64, i64, i64) {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    (y, m, d, rem / 3600, (rem % 3600) / 60)
}

// Proleptic Gregorian calendar conversions (H. Hinnant's algorithms), so names need no date crate.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

pub(crate) fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_round_trip() {
        for name in [
            "mesh",
            "workflow/ingest-1",
            "results/node-a/2026-11-24T04:00Z+60m",
            "rollup/site-a+line-3/2026-11-24T00:00Z+1440m",
            "rollup/lan-192.168.1.0-24/2026-11-24T00:00Z+1440m",
            "rollup/+/2026-11-24T00:00Z+1440m",
        ] {
            let parsed: DocName = name.parse().unwrap();
            assert_eq!(parsed.to_string(), name);
        }
        let window = Window::containing(0, 60);
        for zone in ["site-a/line-3", "lan-192.168.1.0-24", ""] {
            let name = DocName::rollup(zone, window).unwrap();
            assert_eq!(name.rollup_zone().as_deref(), Some(zone));
            let back: DocName = name.to_string().parse().unwrap();
            assert_eq!(back, name);
        }
        assert!(
            "rollup/a++b/2026-11-24T00:00Z+60m"
                .parse::<DocName>()
                .is_err()
        );
        assert!(DocName::rollup("a//b", window).is_err());
    }

    #[test]
    fn bad_names_say_what_is_wrong() {
        let err = "workflow/".parse::<DocName>().unwrap_err().to_string();
        assert!(err.contains("workflow id is empty"), "{err}");
        let err = "results/a/yesterday"
            .parse::<DocName>()
            .unwrap_err()
            .to_string();
        assert!(err.contains("YYYY-MM-DD"), "{err}");
        let err = "files/x".parse::<DocName>().unwrap_err().to_string();
        assert!(err.contains("expected mesh"), "{err}");
    }

    #[test]
    fn ids_depend_on_mesh_and_name() {
        let a = DocName::workflow("w").unwrap();
        let b = DocName::workflow("v").unwrap();
        assert_eq!(a.document_id("m1"), a.document_id("m1"));
        assert_ne!(a.document_id("m1"), a.document_id("m2"));
        assert_ne!(a.document_id("m1"), b.document_id("m1"));
    }

    proptest! {
        #[test]
        fn windows_round_trip(start in -10_000_000_000_000i64..10_000_000_000_000i64, minutes in 1u32..100_000) {
            let w = Window::containing(start, minutes);
            prop_assert!(w.start_ms <= start && start < w.end_ms());
            let parsed: Window = w.to_string().parse().unwrap();
            prop_assert_eq!(parsed, w);
        }

        #[test]
        fn timestamps_round_trip(ms in 0i64..10_000_000_000_000i64) {
            prop_assert_eq!(parse_timestamp(&format_timestamp(ms)), Some(ms));
        }

        #[test]
        fn days_round_trip(days in -1_000_000i64..1_000_000) {
            let (y, m, d) = civil_from_days(days);
            prop_assert_eq!(days_from_civil(y, m, d), days);
        }
    }
}
