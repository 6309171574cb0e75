//! Prometheus metrics: `GET /metrics` in the text exposition format.
//!
//! Two sources. What the node already knows as state (store size, peers, the aggregator chain,
//! workflows, the resource monitor's last sample) is read when scraped, so it costs nothing in
//! between. What happens (runs finishing, peers going down, refusals) is counted as it happens
//! in a process-wide [`Events`] table: an addition under a lock held for nanoseconds.
//!
//! Cardinality is bounded by construction. No run ids and no node ids as labels: peers are
//! grouped by class (`aggregator` for the nodes of this node's aggregator chain, `member` for
//! the others), reasons are closed sets, and workflow labels are capped per family at
//! [`MAX_SERIES`] (a fleet with more workflows than that sees the rest as `workflow="other"`).

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};

use crdt_store::metrics::Histogram;

/// Series one event family may hold; further label sets count under `other`.
pub const MAX_SERIES: usize = 200;

/// Bucket bounds (seconds) of run and step durations.
pub const RUN_BOUNDS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
];

/// A metric's type, as `# TYPE` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// Labels of one series, in the order given.
pub type Labels = Vec<(&'static str, String)>;

#[derive(Debug)]
struct Family {
    kind: Kind,
    help: &'static str,
    /// Lines of the family's samples, each without the metric name's prefix handled.
    lines: Vec<String>,
}

/// One scrape's text, built family by family: the samples of a family stay together whatever
/// order they are added in, as the format requires.
#[derive(Debug, Default)]
pub struct Exposition {
    families: BTreeMap<String, Family>,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: Kind, help: &'static str) -> &mut Family {
        self.families.entry(name.to_owned()).or_insert(Family {
            kind,
            help,
            lines: Vec::new(),
        })
    }

    /// A counter's value.
    pub fn counter(&mut self, name: &str, help: &'static str, labels: &[(&str, &str)], v: f64) {
        let line = sample(name, labels, v);
        self.family(name, Kind::Counter, help).lines.push(line);
    }

    /// A gauge's value.
    pub fn gauge(&mut self, name: &str, help: &'static str, labels: &[(&str, &str)], v: f64) {
        let line = sample(name, labels, v);
        self.family(name, Kind::Gauge, help).lines.push(line);
    }

    /// A histogram: its buckets (cumulative, with `+Inf`), sum and count.
    pub fn histogram(
        &mut self,
        name: &str,
        help: &'static str,
        labels: &[(&str, &str)],
        h: &Histogram,
    ) {
        let mut lines = Vec::with_capacity(h.bounds().len() + 3);
        let cumulative = h.cumulative();
        for (i, count) in cumulative.iter().enumerate() {
            let bound = h
                .bounds()
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), |b| format_value(*b));
            let mut with_le: Vec<(&str, &str)> = labels.to_vec();
            with_le.push(("le", &bound));
            lines.push(sample(&format!("{name}_bucket"), &with_le, *count as f64));
        }
        lines.push(sample(&format!("{name}_sum"), labels, h.sum()));
        lines.push(sample(&format!("{name}_count"), labels, h.count() as f64));
        self.family(name, Kind::Histogram, help).lines.extend(lines);
    }

    /// The text: `# HELP`, `# TYPE`, then the samples, family after family.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (name, family) in &self.families {
            out.push_str(&format!("# HELP {name} {}\n", family.help));
            out.push_str(&format!("# TYPE {name} {}\n", family.kind.as_str()));
            for line in &family.lines {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

/// One sample line.
fn sample(name: &str, labels: &[(&str, &str)], value: f64) -> String {
    if labels.is_empty() {
        return format!("{name} {}", format_value(value));
    }
    let labels: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    format!("{name}{{{}}} {}", labels.join(","), format_value(value))
}

/// A label value escaped as the format requires.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A value as the format writes it: integers without a fraction, infinities by name.
fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// Counts of what happened since the process started.
#[derive(Debug, Default)]
pub struct Events {
    inner: Mutex<EventsInner>,
}

#[derive(Debug, Default)]
struct EventsInner {
    counters: BTreeMap<&'static str, (&'static str, BTreeMap<Labels, f64>)>,
    histograms: BTreeMap<&'static str, (&'static str, BTreeMap<Labels, Histogram>)>,
}

/// The process's event counts.
pub fn events() -> &'static Events {
    static EVENTS: OnceLock<Events> = OnceLock::new();
    EVENTS.get_or_init(Events::default)
}

/// The label set a new series gets: its own, or `other` for every value once the family is
/// full.
fn bounded<T>(series: &BTreeMap<Labels, T>, labels: Labels) -> Labels {
    if series.contains_key(&labels) || series.len() < MAX_SERIES {
        labels
    } else {
        labels
            .into_iter()
            .map(|(k, _)| (k, "other".into()))
            .collect()
    }
}

impl Events {
    /// Adds `n` to a counter.
    pub fn add(&self, name: &'static str, help: &'static str, labels: Labels, n: f64) {
        let mut inner = self.inner.lock().expect("metrics");
        let (_, series) = inner
            .counters
            .entry(name)
            .or_insert_with(|| (help, BTreeMap::new()));
        let labels = bounded(series, labels);
        *series.entry(labels).or_default() += n;
    }

    /// Counts one event.
    pub fn inc(&self, name: &'static str, help: &'static str, labels: Labels) {
        self.add(name, help, labels, 1.0);
    }

    /// Adds an observation to a histogram with `bounds`.
    pub fn observe(
        &self,
        name: &'static str,
        help: &'static str,
        bounds: &'static [f64],
        labels: Labels,
        value: f64,
    ) {
        let mut inner = self.inner.lock().expect("metrics");
        let (_, series) = inner
            .histograms
            .entry(name)
            .or_insert_with(|| (help, BTreeMap::new()));
        let labels = bounded(series, labels);
        series
            .entry(labels)
            .or_insert_with(|| Histogram::new(bounds))
            .observe(value);
    }

    /// A counter's current value (tests).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let inner = self.inner.lock().expect("metrics");
        inner.counters.get(name).map_or(0.0, |(_, series)| {
            series
                .iter()
                .filter(|(l, _)| {
                    labels
                        .iter()
                        .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
                })
                .map(|(_, v)| v)
                .sum()
        })
    }

    /// Writes every counter and histogram into `out`.
    pub fn expose(&self, out: &mut Exposition) {
        let inner = self.inner.lock().expect("metrics");
        for (name, (help, series)) in &inner.counters {
            for (labels, value) in series {
                let labels: Vec<(&str, &str)> =
                    labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
                out.counter(name, help, &labels, *value);
            }
        }
        for (name, (help, series)) in &inner.histograms {
            for (labels, h) in series {
                let labels: Vec<(&str, &str)> =
                    labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
                out.histogram(name, help, &labels, h);
            }
        }
    }
}

/// Labels from pairs of literals and values.
pub fn labels<const N: usize>(pairs: [(&'static str, &str); N]) -> Labels {
    pairs.into_iter().map(|(k, v)| (k, v.to_owned())).collect()
}

/// Runs kept per workflow for alert rules: the failure rate is computed over at most these.
const RECENT_RUNS_PER_WORKFLOW: usize = 4096;
/// A run output larger than this is not kept for `output:` alert rules.
const MAX_KEPT_OUTPUT: usize = 64 * 1024;

/// Each workflow's recent runs on this node, for alert rules: when each finished and whether
/// it failed, and the latest output.
#[derive(Debug, Default)]
pub struct RecentRuns {
    inner: Mutex<BTreeMap<String, WorkflowRuns>>,
}

#[derive(Debug, Default)]
struct WorkflowRuns {
    /// (finished ms, failed), oldest first.
    finished: std::collections::VecDeque<(i64, bool)>,
    /// The latest run's output (JSON text), when not too large.
    last_output: Option<String>,
}

/// The process's recent runs.
pub fn recent_runs() -> &'static RecentRuns {
    static RUNS: OnceLock<RecentRuns> = OnceLock::new();
    RUNS.get_or_init(RecentRuns::default)
}

impl RecentRuns {
    fn record(&self, record: &crdt_store::RunRecord) {
        use crdt_store::RunStatus;
        let mut inner = self.inner.lock().expect("recent runs");
        // Bounded like the metrics' series: a workflow beyond them is not watched.
        if !inner.contains_key(&record.workflow) && inner.len() >= MAX_SERIES {
            return;
        }
        let runs = inner.entry(record.workflow.clone()).or_default();
        let failed = matches!(
            record.status,
            RunStatus::Failed | RunStatus::TimedOut | RunStatus::Interrupted
        );
        if runs.finished.len() == RECENT_RUNS_PER_WORKFLOW {
            runs.finished.pop_front();
        }
        runs.finished.push_back((record.finished_ms, failed));
        runs.last_output = (record.output.len() <= MAX_KEPT_OUTPUT).then(|| record.output.clone());
    }

    /// Percent of the runs of `workflow` (of every workflow when `None`) that finished since
    /// `since_ms` and failed; `None` when none finished.
    pub fn failure_rate(&self, workflow: Option<&str>, since_ms: i64) -> Option<f64> {
        let inner = self.inner.lock().expect("recent runs");
        let (mut all, mut failed) = (0u64, 0u64);
        for (name, runs) in inner.iter() {
            if workflow.is_some_and(|w| w != name) {
                continue;
            }
            for (at, f) in runs.finished.iter().rev() {
                if *at < since_ms {
                    break;
                }
                all += 1;
                failed += u64::from(*f);
            }
        }
        (all > 0).then(|| failed as f64 * 100.0 / all as f64)
    }

    /// The output of the latest run of `workflow` here.
    pub fn last_output(&self, workflow: &str) -> Option<String> {
        let inner = self.inner.lock().expect("recent runs");
        inner.get(workflow).and_then(|r| r.last_output.clone())
    }
}

/// Counts a finished run: by workflow and status, with its duration and its steps'.
pub fn record_run(record: &crdt_store::RunRecord) {
    recent_runs().record(record);
    let status = record.status.as_str();
    let e = events();
    e.inc(
        "rhizome_workflow_runs_total",
        "Runs finished on this node, by workflow and status.",
        labels([("workflow", &record.workflow), ("status", status)]),
    );
    let took = (record.finished_ms - record.started_ms).max(0) as f64 / 1000.0;
    e.observe(
        "rhizome_workflow_run_duration_seconds",
        "How long runs took from start to finish, by workflow.",
        RUN_BOUNDS,
        labels([("workflow", &record.workflow)]),
        took,
    );
    for step in &record.steps {
        e.observe(
            "rhizome_workflow_step_duration_seconds",
            "How long steps took, by status.",
            RUN_BOUNDS,
            labels([("status", step.status.as_str())]),
            step.duration_us as f64 / 1_000_000.0,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_group_their_samples_and_values_are_escaped() {
        let mut out = Exposition::default();
        out.gauge("b_gauge", "A gauge.", &[("k", "v\"1\n")], 1.5);
        out.counter("a_total", "A counter.", &[], 3.0);
        out.gauge("b_gauge", "A gauge.", &[("k", "v2")], 2.0);
        let mut h = Histogram::new(&[0.1, 1.0]);
        h.observe(0.05);
        h.observe(5.0);
        out.histogram("c_seconds", "A histogram.", &[("x", "y")], &h);
        let text = out.render();
        let expected = "# HELP a_total A counter.\n# TYPE a_total counter\na_total 3\n\
            # HELP b_gauge A gauge.\n# TYPE b_gauge gauge\nb_gauge{k=\"v\\\"1\\n\"} 1.5\n\
            b_gauge{k=\"v2\"} 2\n\
            # HELP c_seconds A histogram.\n# TYPE c_seconds histogram\n\
            c_seconds_bucket{x=\"y\",le=\"0.1\"} 1\nc_seconds_bucket{x=\"y\",le=\"1\"} 1\n\
            c_seconds_bucket{x=\"y\",le=\"+Inf\"} 2\nc_seconds_sum{x=\"y\"} 5.05\n\
            c_seconds_count{x=\"y\"} 2\n";
        assert_eq!(text, expected);
    }

    #[test]
    fn a_family_holds_a_bounded_number_of_series() {
        let events = Events::default();
        for i in 0..MAX_SERIES + 50 {
            events.inc("t_total", "T.", labels([("workflow", &format!("w{i}"))]));
        }
        assert_eq!(events.value("t_total", &[("workflow", "other")]), 50.0);
        let mut out = Exposition::default();
        events.expose(&mut out);
        assert_eq!(out.render().lines().count(), MAX_SERIES + 1 + 2);
    }
}
