//! The report of one run: deterministic text (the same seed and scenario give the same bytes),
//! and the same as an HTML page with an inline SVG plot of divergence over time. Wall time is
//! not part of either; the command line prints it on a line of its own.

use std::fmt::Write as _;
use std::time::Duration;

use crdt_store::docs::rollout::Status;
use mesh::proto::wire::Message;

/// The kinds of frame, for traffic counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Hello.
    Hello,
    /// Heartbeat.
    Heartbeat,
    /// Election status.
    Status,
    /// Summary.
    Summary,
    /// Bucket digests.
    Buckets,
    /// Catalogue.
    Catalogue,
    /// Sync.
    Sync,
    /// Heads of one document.
    Heads,
    /// Goodbye.
    Goodbye,
    /// Artifact blobs and their requests.
    Blob,
}

const KINDS: [&str; 10] = [
    "hello",
    "heartbeat",
    "status",
    "summary",
    "buckets",
    "catalogue",
    "sync",
    "heads",
    "goodbye",
    "blob",
];

impl Kind {
    /// The kind of a message.
    pub fn of(msg: &Message) -> Kind {
        match msg {
            Message::Hello(_) => Kind::Hello,
            Message::Heartbeat { .. } => Kind::Heartbeat,
            Message::Status(_) => Kind::Status,
            Message::Summary { .. } => Kind::Summary,
            Message::Buckets { .. } => Kind::Buckets,
            Message::Catalogue { .. } => Kind::Catalogue,
            Message::Sync { .. } => Kind::Sync,
            Message::Heads { .. } => Kind::Heads,
            Message::Goodbye { .. } => Kind::Goodbye,
            Message::ChunkWant { .. }
            | Message::ChunkData { .. }
            | Message::ChunkMissing { .. } => Kind::Blob,
        }
    }
}

/// Frames and bytes one node sent, by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeTraffic {
    /// Frames by kind.
    pub frames: [u64; KINDS.len()],
    /// Bytes by kind (whole frames).
    pub bytes: [u64; KINDS.len()],
}

impl NodeTraffic {
    /// Counts one frame.
    pub fn count(&mut self, kind: Kind, len: usize) {
        self.frames[kind as usize] += 1;
        self.bytes[kind as usize] += len as u64;
    }

    /// Bytes of every kind.
    pub fn total_bytes(&self) -> u64 {
        self.bytes.iter().sum()
    }

    /// Frames of every kind.
    pub fn total_frames(&self) -> u64 {
        self.frames.iter().sum()
    }
}

/// A fault ended; how long until every node agreed again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heal {
    /// When the fault ended.
    pub at: Duration,
    /// What ended.
    pub label: String,
    /// When divergence first reached zero after it.
    pub converged_at: Option<Duration>,
    /// Bytes sent by all nodes up to the heal.
    pub bytes_before: u64,
    /// Bytes sent per live node between the heal and convergence.
    pub bytes_per_node: u64,
}

/// A zone's aggregator lost (crashed, cut off, gone), and how long its members took to agree on
/// another.
#[derive(Debug, Clone)]
pub struct Reelection {
    /// The zone.
    pub zone: String,
    /// The aggregator lost.
    pub lost: String,
    /// When it was lost.
    pub at: Duration,
    /// When every live member of the zone first named the same live aggregator other than the
    /// lost one.
    pub agreed_at: Option<Duration>,
}

impl Heal {
    /// A heal at `at`.
    pub fn new(at: Duration, label: String) -> Heal {
        Heal {
            at,
            label,
            converged_at: None,
            bytes_before: 0,
            bytes_per_node: 0,
        }
    }
}

/// A broken invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// When it was found.
    pub at: Duration,
    /// Which invariant.
    pub invariant: &'static str,
    /// What exactly.
    pub detail: String,
}

/// Everything a run found.
#[derive(Debug, Clone)]
pub struct Report {
    /// The scenario's name.
    pub scenario: String,
    /// How the scenario was given (bundled name or path), for the replay command.
    pub scenario_arg: String,
    /// The seed.
    pub seed: u64,
    /// Nodes asked for.
    pub nodes: usize,
    /// Nodes alive at the end.
    pub nodes_at_end: usize,
    /// The planted bug, if any.
    pub plant: Option<&'static str>,
    /// Simulated time.
    pub simulated: Duration,
    /// Events processed.
    pub events: u64,
    /// Writes made (edits, appends).
    pub writes: u64,
    /// Results acknowledged.
    pub acknowledged: u64,
    /// Fault ends and the convergence after each.
    pub heals: Vec<Heal>,
    /// Aggregators lost, and the re-election of each.
    pub reelections: Vec<Reelection>,
    /// Faults: start, end, label.
    pub faults: Vec<(Duration, Duration, String)>,
    /// Traffic sent by each node, by name.
    pub traffic: Vec<(String, NodeTraffic)>,
    /// Invariant checks passed or failed, by name.
    pub checks: Vec<(&'static str, u64)>,
    /// The first violations.
    pub violations: Vec<Violation>,
    /// All violations.
    pub violation_count: u64,
    /// Differing node pairs over time (a point where the value changed).
    pub divergence: Vec<(Duration, u64)>,
    /// When the quiet tail started.
    pub quiet_from: Duration,
    /// Storage operations that failed under a store (storage faults), breaking it.
    pub store_failures: u64,
    /// Broken stores that reopened themselves while their node ran.
    pub store_reopens: u64,
    /// How the scenario's staged rollout ended, as the first live node decided it (every node
    /// must decide alike); `None` without one, or when no node holds its plan.
    pub rollout: Option<RolloutOutcome>,
}

/// A rollout's status in words.
pub fn rollout_status(status: &Status) -> String {
    match status {
        Status::Running { stage } => format!("running at stage {stage}"),
        Status::Paused { stage } => format!("paused at stage {stage}"),
        Status::Completed => "completed".to_owned(),
        Status::Aborted { reason } => format!("aborted ({reason})"),
    }
}

/// Where a staged rollout stands at the end of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutOutcome {
    /// Running, paused, completed or aborted.
    pub status: Status,
    /// Nodes that run the new version.
    pub admitted: usize,
    /// Nodes the rollout targets (every node in the registry).
    pub targets: usize,
    /// Pauses, resumes and aborts stored.
    pub controls: usize,
}

impl Report {
    /// Whether every invariant held.
    pub fn passed(&self) -> bool {
        self.violation_count == 0
    }

    /// The one command that replays this run exactly.
    pub fn replay_command(&self) -> String {
        let mut cmd = format!(
            "cargo run --release -p simulator -- --scenario {} --nodes {} --seed {}",
            self.scenario_arg, self.nodes, self.seed
        );
        if let Some(plant) = self.plant {
            let _ = write!(cmd, " --plant-bug {plant}");
        }
        cmd
    }

    /// The report as text; deterministic.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        let w = &mut out;
        let _ = writeln!(
            w,
            "scenario {} · seed {} · {} nodes ({} alive at the end){}",
            self.scenario,
            self.seed,
            self.nodes,
            self.nodes_at_end,
            self.plant
                .map(|p| format!(" · planted bug: {p}"))
                .unwrap_or_default()
        );
        let _ = writeln!(
            w,
            "simulated {} · {} events · {} writes · {} results acknowledged",
            human(self.simulated),
            self.events,
            self.writes,
            self.acknowledged
        );
        if self.store_failures > 0 {
            let _ = writeln!(
                w,
                "storage: {} failed operations broke a store · {} stores reopened themselves",
                self.store_failures, self.store_reopens
            );
        }
        if let Some(r) = &self.rollout {
            let _ = writeln!(
                w,
                "rollout: {} · {} of {} nodes admitted · {} controls",
                rollout_status(&r.status),
                r.admitted,
                r.targets,
                r.controls
            );
        }
        let _ = writeln!(w, "\nfaults");
        if self.faults.is_empty() {
            let _ = writeln!(w, "  none");
        }
        for (from, to, label) in &self.faults {
            let _ = writeln!(w, "  {:>10} – {:>10}  {label}", clock(*from), clock(*to));
        }
        let _ = writeln!(w, "\nconvergence after each heal");
        if self.heals.is_empty() {
            let _ = writeln!(w, "  no heals");
        }
        for h in &self.heals {
            match h.converged_at {
                Some(c) => {
                    let _ = writeln!(
                        w,
                        "  {:>10}  {:<40} converged in {:>9}, {} B per node",
                        clock(h.at),
                        h.label,
                        human(c.saturating_sub(h.at)),
                        h.bytes_per_node
                    );
                }
                None => {
                    let _ = writeln!(w, "  {:>10}  {:<40} did not converge", clock(h.at), h.label);
                }
            }
        }
        if !self.reelections.is_empty() {
            let _ = writeln!(
                w,
                "\nre-elections (from the loss to every member of the zone naming the same new \
                 aggregator)"
            );
            let mut times = Vec::new();
            for r in &self.reelections {
                let what = format!("{} lost ({})", r.lost, r.zone);
                match r.agreed_at {
                    Some(t) => {
                        times.push(t.saturating_sub(r.at));
                        let _ = writeln!(
                            w,
                            "  {:>10}  {what:<40} agreed in {:>9}",
                            clock(r.at),
                            human(t.saturating_sub(r.at))
                        );
                    }
                    None => {
                        let _ = writeln!(w, "  {:>10}  {what:<40} no agreement", clock(r.at));
                    }
                }
            }
            times.sort_unstable();
            if let (Some(min), Some(max)) = (times.first(), times.last()) {
                let _ = writeln!(
                    w,
                    "  {} re-elections: min {} · median {} · max {}",
                    times.len(),
                    human(*min),
                    human(times[times.len() / 2]),
                    human(*max)
                );
            }
        }
        let _ = writeln!(w, "\ntraffic per node (sent)");
        let n = self.traffic.len().max(1) as u64;
        let mut frames = [0u64; KINDS.len()];
        let mut bytes = [0u64; KINDS.len()];
        for (_, t) in &self.traffic {
            for k in 0..KINDS.len() {
                frames[k] += t.frames[k];
                bytes[k] += t.bytes[k];
            }
        }
        for k in 0..KINDS.len() {
            let _ = writeln!(
                w,
                "  {:<10} {:>12} frames {:>14} B   mean per node {:>10} frames {:>12} B",
                KINDS[k],
                frames[k],
                bytes[k],
                frames[k] / n,
                bytes[k] / n
            );
        }
        let total_bytes: u64 = bytes.iter().sum();
        let total_frames: u64 = frames.iter().sum();
        let max = self
            .traffic
            .iter()
            .max_by_key(|(name, t)| (t.total_bytes(), std::cmp::Reverse(name.clone())));
        let _ = writeln!(
            w,
            "  total      {total_frames:>12} frames {total_bytes:>14} B   mean per node {:>10} frames {:>12} B",
            total_frames / n,
            total_bytes / n
        );
        if let Some((name, t)) = max {
            let _ = writeln!(
                w,
                "  busiest    {name} ({} frames, {} B)",
                t.total_frames(),
                t.total_bytes()
            );
        }
        let _ = writeln!(w, "\ninvariant checks");
        for (name, count) in &self.checks {
            let _ = writeln!(w, "  {count:>10}  {name}");
        }
        let peak = self.divergence.iter().map(|(_, v)| *v).max().unwrap_or(0);
        let _ = writeln!(
            w,
            "\ndivergence: peak {peak} differing node pairs; {} changes recorded",
            self.divergence.len()
        );
        if self.passed() {
            let _ = writeln!(w, "\nPASSED: every invariant held");
        } else {
            let _ = writeln!(w, "\nFAILED: {} violations", self.violation_count);
            for v in &self.violations {
                let _ = writeln!(w, "  {:>10}  {}: {}", clock(v.at), v.invariant, v.detail);
            }
            let _ = writeln!(w, "replay with: {}", self.replay_command());
        }
        out
    }

    /// The report as an HTML page with an SVG plot of divergence; no scripts.
    pub fn render_html(&self) -> String {
        let mut out = String::new();
        let _ = write!(
            out,
            "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>simulation {} seed {}</title>\
             <style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}pre{{background:#f6f6f6;padding:1em;overflow-x:auto}}</style>\
             </head><body>\n<h1>{} · seed {}</h1>\n",
            escape(&self.scenario),
            self.seed,
            escape(&self.scenario),
            self.seed
        );
        out.push_str("<h2>Divergence over time</h2>\n<p>Node pairs that hold different heads of a document they share. Shaded: faults; grey line: start of the quiet tail.</p>\n");
        out.push_str(&self.svg());
        out.push_str("\n<h2>Report</h2>\n<pre>");
        out.push_str(&escape(&self.render_text()));
        out.push_str("</pre>\n</body></html>\n");
        out
    }

    fn svg(&self) -> String {
        let (width, height, left, bottom, top, right) = (1000.0, 320.0, 60.0, 30.0, 10.0, 10.0);
        let plot_w = width - left - right;
        let plot_h = height - top - bottom;
        let t_max = self.simulated.as_secs_f64().max(1e-9);
        let peak = self
            .divergence
            .iter()
            .map(|(_, v)| *v)
            .max()
            .unwrap_or(0)
            .max(1) as f64;
        let x = |t: Duration| left + t.as_secs_f64() / t_max * plot_w;
        let y = |v: u64| top + plot_h - (v as f64 / peak) * plot_h;
        let mut s = String::new();
        let _ = write!(
            s,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\">"
        );
        for (from, to, label) in &self.faults {
            let (x0, x1) = (x(*from), x(*to).max(x(*from) + 1.0));
            let _ = write!(
                s,
                "<rect x=\"{x0:.1}\" y=\"{top}\" width=\"{:.1}\" height=\"{plot_h}\" fill=\"#f4b183\" fill-opacity=\"0.35\"><title>{}</title></rect>",
                x1 - x0,
                escape(label)
            );
        }
        let qx = x(self.quiet_from);
        let _ = write!(
            s,
            "<line x1=\"{qx:.1}\" y1=\"{top}\" x2=\"{qx:.1}\" y2=\"{}\" stroke=\"#999\" stroke-dasharray=\"4 3\"/>",
            top + plot_h
        );
        // A step line, thinned to at most a few thousand points.
        let stride = (self.divergence.len() / 4000).max(1);
        let mut points = String::new();
        let mut last = 0u64;
        for (k, (t, v)) in self.divergence.iter().enumerate() {
            if k % stride != 0 && k + 1 != self.divergence.len() {
                continue;
            }
            let _ = write!(
                points,
                "{:.1},{:.1} {:.1},{:.1} ",
                x(*t),
                y(last),
                x(*t),
                y(*v)
            );
            last = *v;
        }
        let _ = write!(points, "{:.1},{:.1}", x(self.simulated), y(last));
        let _ = write!(
            s,
            "<polyline fill=\"none\" stroke=\"#1f5fa8\" stroke-width=\"1.5\" points=\"{points}\"/>"
        );
        let _ = write!(
            s,
            "<line x1=\"{left}\" y1=\"{0}\" x2=\"{1}\" y2=\"{0}\" stroke=\"#000\"/><line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{0}\" stroke=\"#000\"/>",
            top + plot_h,
            left + plot_w
        );
        for k in 0..=5 {
            let t = Duration::from_secs_f64(t_max * k as f64 / 5.0);
            let _ = write!(
                s,
                "<text x=\"{:.1}\" y=\"{}\" font-size=\"11\" text-anchor=\"middle\">{}</text>",
                x(t),
                height - 8.0,
                clock(t)
            );
        }
        let _ = write!(
            s,
            "<text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\">{}</text><text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\">0</text></svg>",
            left - 4.0,
            top + 10.0,
            peak as u64,
            left - 4.0,
            top + plot_h
        );
        s
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A simulated instant as `1d02:03:04.567` / `02:03.456`.
pub fn clock(t: Duration) -> String {
    let ms = t.as_millis() as u64;
    let (days, rest) = (ms / 86_400_000, ms % 86_400_000);
    let (h, m, s, milli) = (
        rest / 3_600_000,
        rest / 60_000 % 60,
        rest / 1000 % 60,
        rest % 1000,
    );
    match (days, h) {
        (0, 0) => format!("{m:02}:{s:02}.{milli:03}"),
        (0, _) => format!("{h:02}:{m:02}:{s:02}"),
        _ => format!("{days}d{h:02}:{m:02}:{s:02}"),
    }
}

/// A duration for people: `350 ms`, `2.4 s`, `3 m 20 s`, `7 d 2 h`.
pub fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.2} s", d.as_secs_f64())
    } else if ms < 3_600_000 {
        format!("{} m {} s", ms / 60_000, ms / 1000 % 60)
    } else if ms < 86_400_000 {
        format!("{} h {} m", ms / 3_600_000, ms / 60_000 % 60)
    } else {
        format!("{} d {} h", ms / 86_400_000, ms / 3_600_000 % 24)
    }
}
