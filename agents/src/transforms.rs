//! Built-in data transforms for sensor pipelines, and a simulated sensor for demos.
//!
//! Windowed agents keep their window in memory, per step: it restarts empty when the node
//! restarts, which is what a sliding statistic over live readings wants.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::{Agent, AgentError, AgentFuture, RunContext, number};

/// The agent kind a configuration belongs to, for error messages.
pub trait Named {
    /// The agent kind.
    const AGENT: &'static str;
}

/// Largest window a windowed agent keeps.
pub const MAX_WINDOW: usize = 100_000;

fn config_error(agent: &'static str, reason: impl Into<String>) -> AgentError {
    AgentError::Config {
        agent,
        reason: reason.into(),
    }
}

fn ready(result: Result<Value, AgentError>) -> AgentFuture<'static> {
    Box::pin(std::future::ready(result))
}

// ---------------------------------------------------------------------------------------------

/// `select`: keeps some fields of the input object, optionally renaming them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectConfig {
    /// Fields to keep; empty keeps every field.
    #[serde(default)]
    pub fields: Vec<String>,
    /// Renames applied after selection, `from -> to`.
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
}

impl Named for SelectConfig {
    const AGENT: &'static str = "select";
}

/// The `select` agent.
#[derive(Debug)]
pub struct Select(SelectConfig);

impl Select {
    /// Checks the configuration.
    pub fn new(config: SelectConfig) -> Result<Self, AgentError> {
        if !config.fields.is_empty()
            && let Some(from) = config.rename.keys().find(|f| !config.fields.contains(f))
        {
            return Err(config_error(
                "select",
                format!("rename of `{from}`, which is not among the selected fields"),
            ));
        }
        Ok(Select(config))
    }
}

impl Agent for Select {
    fn kind(&self) -> &'static str {
        "select"
    }
    fn run<'a>(&'a self, input: Value, _: RunContext) -> AgentFuture<'a> {
        let Value::Object(mut object) = input else {
            return ready(Err(AgentError::Input {
                agent: "select",
                reason: format!("the input is not an object: {input}"),
            }));
        };
        let mut out = Map::new();
        if self.0.fields.is_empty() {
            out = object;
        } else {
            for field in &self.0.fields {
                match object.remove(field) {
                    Some(v) => {
                        out.insert(field.clone(), v);
                    }
                    None => {
                        return ready(Err(AgentError::Input {
                            agent: "select",
                            reason: format!("the input has no field `{field}`"),
                        }));
                    }
                }
            }
        }
        for (from, to) in &self.0.rename {
            if let Some(v) = out.remove(from) {
                out.insert(to.clone(), v);
            }
        }
        ready(Ok(Value::Object(out)))
    }
}

// ---------------------------------------------------------------------------------------------

/// `threshold`: flags a numeric field above and/or below limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThresholdConfig {
    /// The field to test.
    pub field: String,
    /// Triggered when the value is above this.
    pub above: Option<f64>,
    /// Triggered when the value is below this.
    pub below: Option<f64>,
}

impl Named for ThresholdConfig {
    const AGENT: &'static str = "threshold";
}

/// The `threshold` agent: outputs the input with `"triggered": bool` added.
#[derive(Debug)]
pub struct Threshold(ThresholdConfig);

impl Threshold {
    /// Checks the configuration.
    pub fn new(config: ThresholdConfig) -> Result<Self, AgentError> {
        match (config.above, config.below) {
            (None, None) => Err(config_error("threshold", "give `above`, `below` or both")),
            (Some(a), Some(b)) if b > a => Err(config_error(
                "threshold",
                format!("`below` ({b}) is greater than `above` ({a}): nothing could pass"),
            )),
            _ => Ok(Threshold(config)),
        }
    }
}

impl Agent for Threshold {
    fn kind(&self) -> &'static str {
        "threshold"
    }
    fn run<'a>(&'a self, input: Value, _: RunContext) -> AgentFuture<'a> {
        let value = match number("threshold", &input, &self.0.field) {
            Ok(v) => v,
            Err(e) => return ready(Err(e)),
        };
        let triggered =
            self.0.above.is_some_and(|a| value > a) || self.0.below.is_some_and(|b| value < b);
        let mut out = input.as_object().cloned().unwrap_or_default();
        out.insert("triggered".into(), Value::Bool(triggered));
        ready(Ok(Value::Object(out)))
    }
}

// ---------------------------------------------------------------------------------------------

/// Which readings a window holds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowSpec {
    /// The last N readings.
    pub last: Option<usize>,
    /// The readings of the last duration (`30s`, `5m`, `1h`).
    pub duration: Option<String>,
}

#[derive(Debug)]
struct Window {
    last: Option<usize>,
    duration_ms: Option<i64>,
    readings: VecDeque<(i64, f64)>,
}

impl Window {
    fn new(agent: &'static str, spec: &WindowSpec) -> Result<Window, AgentError> {
        let duration_ms = spec
            .duration
            .as_deref()
            .map(|d| {
                parse_duration_ms(d).ok_or_else(|| {
                    config_error(agent, format!("`{d}` is not a duration (30s, 5m, 1h)"))
                })
            })
            .transpose()?;
        match (spec.last, duration_ms) {
            (None, None) => Err(config_error(agent, "the window needs `last` or `duration`")),
            (Some(0), _) => Err(config_error(agent, "`last` must be at least 1")),
            (Some(n), _) if n > MAX_WINDOW => Err(config_error(
                agent,
                format!("`last` of {n} exceeds the limit of {MAX_WINDOW}"),
            )),
            (last, duration_ms) => Ok(Window {
                last,
                duration_ms,
                readings: VecDeque::new(),
            }),
        }
    }

    fn push(&mut self, now_ms: i64, value: f64) {
        self.readings.push_back((now_ms, value));
        let cap = self.last.unwrap_or(MAX_WINDOW);
        while self.readings.len() > cap {
            self.readings.pop_front();
        }
        if let Some(d) = self.duration_ms {
            while self.readings.front().is_some_and(|(t, _)| *t <= now_ms - d) {
                self.readings.pop_front();
            }
        }
    }

    fn stats(&self) -> Stats {
        let n = self.readings.len();
        let values = self.readings.iter().map(|(_, v)| *v);
        let mean = values.clone().sum::<f64>() / n.max(1) as f64;
        let var = if n > 1 {
            values.clone().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64
        } else {
            0.0
        };
        Stats {
            count: n,
            mean,
            min: values.clone().fold(f64::INFINITY, f64::min),
            max: values.fold(f64::NEG_INFINITY, f64::max),
            stddev: var.sqrt(),
        }
    }
}

struct Stats {
    count: usize,
    mean: f64,
    min: f64,
    max: f64,
    stddev: f64,
}

pub(crate) fn parse_duration_ms(text: &str) -> Option<i64> {
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let n: i64 = text[..split].parse().ok()?;
    let unit = match &text[split..] {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    n.checked_mul(unit).filter(|ms| *ms > 0)
}

/// `window_stats`: mean, min, max, standard deviation and count of a field over a window.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowStatsConfig {
    /// The numeric field.
    pub field: String,
    /// The window.
    #[serde(flatten)]
    pub window: WindowSpec,
}

impl Named for WindowStatsConfig {
    const AGENT: &'static str = "window_stats";
}

/// The `window_stats` agent.
#[derive(Debug)]
pub struct WindowStats {
    field: String,
    window: Mutex<Window>,
}

impl WindowStats {
    /// Checks the configuration.
    pub fn new(config: WindowStatsConfig) -> Result<Self, AgentError> {
        Ok(WindowStats {
            window: Mutex::new(Window::new("window_stats", &config.window)?),
            field: config.field,
        })
    }
}

impl Agent for WindowStats {
    fn kind(&self) -> &'static str {
        "window_stats"
    }
    fn run<'a>(&'a self, input: Value, context: RunContext) -> AgentFuture<'a> {
        let value = match number("window_stats", &input, &self.field) {
            Ok(v) => v,
            Err(e) => return ready(Err(e)),
        };
        let mut window = self.window.lock().expect("window lock");
        window.push(context.now_ms, value);
        let s = window.stats();
        ready(Ok(json!({
            "count": s.count, "mean": s.mean, "min": s.min, "max": s.max, "stddev": s.stddev,
        })))
    }
}

// ---------------------------------------------------------------------------------------------

/// `zscore`: how many standard deviations a reading is from the window's mean before it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZScoreConfig {
    /// The numeric field.
    pub field: String,
    /// The window the reading is compared with.
    #[serde(flatten)]
    pub window: WindowSpec,
    /// |z| above which the reading is an anomaly.
    #[serde(default = "default_z")]
    pub threshold: f64,
    /// Readings needed before anything is flagged.
    #[serde(default = "default_warmup")]
    pub warmup: usize,
}

fn default_z() -> f64 {
    3.0
}

fn default_warmup() -> usize {
    5
}

impl Named for ZScoreConfig {
    const AGENT: &'static str = "zscore";
}

/// The `zscore` agent: outputs `{value, z, anomaly}`.
#[derive(Debug)]
pub struct ZScore {
    config: ZScoreConfig,
    window: Mutex<Window>,
}

impl ZScore {
    /// Checks the configuration.
    pub fn new(config: ZScoreConfig) -> Result<Self, AgentError> {
        // Written so that NaN is refused too.
        if config.threshold.is_nan() || config.threshold <= 0.0 {
            return Err(config_error("zscore", "`threshold` must be positive"));
        }
        Ok(ZScore {
            window: Mutex::new(Window::new("zscore", &config.window)?),
            config,
        })
    }
}

impl Agent for ZScore {
    fn kind(&self) -> &'static str {
        "zscore"
    }
    fn run<'a>(&'a self, input: Value, context: RunContext) -> AgentFuture<'a> {
        let value = match number("zscore", &input, &self.config.field) {
            Ok(v) => v,
            Err(e) => return ready(Err(e)),
        };
        let mut window = self.window.lock().expect("window lock");
        // The reading is scored against the window before it joins, so a spike does not
        // dampen its own score.
        let before = window.stats();
        let z = if before.count >= 2 && before.stddev > 0.0 {
            (value - before.mean) / before.stddev
        } else {
            0.0
        };
        let anomaly = before.count >= self.config.warmup && z.abs() > self.config.threshold;
        window.push(context.now_ms, value);
        ready(Ok(json!({ "value": value, "z": z, "anomaly": anomaly })))
    }
}

// ---------------------------------------------------------------------------------------------

/// `sensor`: a simulated temperature-like reading for demos: a slow random walk with noise and
/// occasional spikes, reproducible from its seed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SensorConfig {
    /// Level the walk starts at.
    #[serde(default = "default_level")]
    pub mean: f64,
    /// Uniform noise amplitude around the level.
    #[serde(default = "default_noise")]
    pub noise: f64,
    /// Probability of a spike per reading.
    #[serde(default = "default_spike_probability")]
    pub spike_probability: f64,
    /// Spike height.
    #[serde(default = "default_spike")]
    pub spike: f64,
    /// Seed of the simulation.
    #[serde(default)]
    pub seed: u64,
}

fn default_level() -> f64 {
    21.0
}
fn default_noise() -> f64 {
    0.3
}
fn default_spike_probability() -> f64 {
    0.02
}
fn default_spike() -> f64 {
    4.0
}

impl Named for SensorConfig {
    const AGENT: &'static str = "sensor";
}

/// The `sensor` agent: outputs `{value}`.
#[derive(Debug)]
pub struct Sensor {
    config: SensorConfig,
    state: Mutex<(StdRng, f64)>,
}

impl Sensor {
    /// Checks the configuration.
    pub fn new(config: SensorConfig) -> Result<Self, AgentError> {
        if !(0.0..=1.0).contains(&config.spike_probability) {
            return Err(config_error(
                "sensor",
                "`spike_probability` must be within 0..=1",
            ));
        }
        if config.noise < 0.0 {
            return Err(config_error("sensor", "`noise` must not be negative"));
        }
        Ok(Sensor {
            state: Mutex::new((StdRng::seed_from_u64(config.seed), config.mean)),
            config,
        })
    }
}

impl Agent for Sensor {
    fn kind(&self) -> &'static str {
        "sensor"
    }
    fn run<'a>(&'a self, _input: Value, _: RunContext) -> AgentFuture<'a> {
        let mut state = self.state.lock().expect("sensor lock");
        let (rng, level) = &mut *state;
        *level += rng.gen_range(-0.15..=0.15);
        let noise = if self.config.noise > 0.0 {
            rng.gen_range(-self.config.noise..=self.config.noise)
        } else {
            0.0
        };
        let spike = if rng.gen_bool(self.config.spike_probability) {
            self.config.spike
        } else {
            0.0
        };
        let value = ((*level + noise + spike) * 100.0).round() / 100.0;
        ready(Ok(json!({ "value": value })))
    }
}
