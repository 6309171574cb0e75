//! The `Agent` trait and the built-in agents that workflow steps run: ONNX models through ONNX
//! Runtime, local LLMs over an OpenAI-compatible HTTP API, and data transforms.
//!
//! Agents never touch the store or the network of the mesh: they take a step's input (JSON) and
//! return its output (JSON). An agent instance belongs to one step of one workflow and may keep
//! state between runs (a sliding window); the engine creates it from the step's configuration
//! through the [`Registry`], which validates that configuration before a workflow is accepted.
//!
//! An agent must never panic or block the async executor: bad input, a missing model or
//! library, and an unreachable server are [`AgentError`]s that name what was wrong, and
//! blocking work (ONNX inference) moves to tokio's blocking threads.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use serde_json::Value;

pub mod llm;
pub mod onnx;
pub mod transforms;

/// A step's output, or why it failed.
pub type AgentResult = Result<Value, AgentError>;

/// The future an agent returns.
pub type AgentFuture<'a> = Pin<Box<dyn Future<Output = AgentResult> + Send + 'a>>;

/// What an agent is told besides its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunContext {
    /// The time of the run, milliseconds since the Unix epoch; agents read no clock themselves,
    /// so that runs can be replayed.
    pub now_ms: i64,
}

/// Errors of agents: bad configuration (refused when a workflow is applied) or a failed run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentError {
    /// No agent of this kind exists.
    #[error("unknown agent `{0}` (known: {known})", known = KNOWN.join(", "))]
    UnknownAgent(String),
    /// The step's configuration does not fit the agent.
    #[error("invalid configuration for agent `{agent}`: {reason}")]
    Config {
        /// The agent kind.
        agent: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The agent cannot be made on this node: a library or a model file is missing or unusable.
    #[error("agent `{agent}` cannot start on this node: {reason}")]
    Setup {
        /// The agent kind.
        agent: &'static str,
        /// What is missing, and where it was looked for.
        reason: String,
    },
    /// The input lacks what the agent needs.
    #[error("agent `{agent}`: {reason}")]
    Input {
        /// The agent kind.
        agent: &'static str,
        /// What is missing or malformed.
        reason: String,
    },
    /// The agent ran and failed (an unreachable server, a model error).
    #[error("agent `{agent}` failed: {reason}")]
    Failed {
        /// The agent kind.
        agent: &'static str,
        /// Why.
        reason: String,
    },
}

/// Something a workflow step runs.
pub trait Agent: Send + Sync + std::fmt::Debug {
    /// The agent's kind, as written in workflows.
    fn kind(&self) -> &'static str;

    /// Runs once on `input`. Blocking work (inference) must be moved off the async executor by
    /// the agent itself.
    fn run<'a>(&'a self, input: Value, context: RunContext) -> AgentFuture<'a>;
}

/// Agent kinds the registry can build.
const KNOWN: &[&str] = &[
    "select",
    "threshold",
    "window_stats",
    "zscore",
    "sensor",
    "noop",
    "onnx",
    "llm",
];

/// Builds agents from workflow step configurations.
#[derive(Debug, Default, Clone, Copy)]
pub struct Registry;

impl Registry {
    /// Every agent kind this build knows.
    pub fn kinds(&self) -> &'static [&'static str] {
        KNOWN
    }

    /// Checks a step's configuration without touching this node's files or network: what a
    /// workflow is refused for when it is applied. Unknown kinds, unknown fields and bad values
    /// are named. What depends on the node that runs the step (an ONNX model file, the ONNX
    /// Runtime library) is checked by [`Registry::create`] there.
    pub fn validate(&self, kind: &str, config: &Value) -> Result<(), AgentError> {
        match kind {
            "onnx" => parse::<onnx::OnnxConfig>(config)?.check(),
            "llm" => llm::Llm::new(parse(config)?).map(drop),
            _ => self.create(kind, config).map(drop),
        }
    }

    /// Creates an agent of `kind` from its configuration, refusing what [`Registry::validate`]
    /// refuses, and, for agents that need them, a missing library or model file with where it
    /// was looked for ([`AgentError::Setup`]).
    pub fn create(&self, kind: &str, config: &Value) -> Result<Box<dyn Agent>, AgentError> {
        use transforms::*;
        Ok(match kind {
            "onnx" => Box::new(onnx::Onnx::new(parse(config)?)?),
            "llm" => Box::new(llm::Llm::new(parse(config)?)?),
            "select" => Box::new(Select::new(parse(config)?)?),
            "threshold" => Box::new(Threshold::new(parse(config)?)?),
            "window_stats" => Box::new(WindowStats::new(parse(config)?)?),
            "zscore" => Box::new(ZScore::new(parse(config)?)?),
            "sensor" => Box::new(Sensor::new(parse(config)?)?),
            "noop" => Box::new(Noop),
            other => return Err(AgentError::UnknownAgent(other.to_owned())),
        })
    }
}

impl Registry {
    /// Like [`Registry::create`], except that an agent which cannot start on this node
    /// ([`AgentError::Setup`]: a model file or library missing here) becomes an
    /// [`Unavailable`] agent whose every run fails with that error. An engine uses it so that a
    /// workflow replicated to a node that lacks a model records a failed step, with the rest of
    /// the run around it, instead of failing before the run exists.
    pub fn create_or_unavailable(
        &self,
        kind: &str,
        config: &Value,
    ) -> Result<Box<dyn Agent>, AgentError> {
        match self.create(kind, config) {
            Err(error @ AgentError::Setup { agent, .. }) => {
                Ok(Box::new(Unavailable { kind: agent, error }))
            }
            other => other,
        }
    }
}

/// Stands for an agent that could not be made on this node: each run fails with the reason.
#[derive(Debug, Clone)]
pub struct Unavailable {
    kind: &'static str,
    error: AgentError,
}

impl Agent for Unavailable {
    fn kind(&self) -> &'static str {
        self.kind
    }
    fn run<'a>(&'a self, _: Value, _: RunContext) -> AgentFuture<'a> {
        Box::pin(std::future::ready(Err(self.error.clone())))
    }
}

/// A configuration object, or an empty one for `null`.
fn parse<T: serde::de::DeserializeOwned + transforms::Named>(
    config: &Value,
) -> Result<T, AgentError> {
    let config = if config.is_null() {
        Value::Object(serde_json::Map::new())
    } else {
        config.clone()
    };
    serde_json::from_value(config).map_err(|e| AgentError::Config {
        agent: T::AGENT,
        reason: e.to_string(),
    })
}

/// Reads a numeric field of an input object.
pub(crate) fn number(agent: &'static str, input: &Value, field: &str) -> Result<f64, AgentError> {
    match input.get(field) {
        Some(v) => v.as_f64().ok_or_else(|| AgentError::Input {
            agent,
            reason: format!("field `{field}` is {v}, not a number"),
        }),
        None => Err(AgentError::Input {
            agent,
            reason: format!(
                "the input has no field `{field}` (it has: {})",
                fields_of(input)
            ),
        }),
    }
}

pub(crate) fn fields_of(input: &Value) -> String {
    match input.as_object() {
        Some(map) if !map.is_empty() => map.keys().cloned().collect::<Vec<_>>().join(", "),
        Some(_) => "no fields".into(),
        None => format!("not an object but {input}"),
    }
}

/// An agent that returns its input: the engine's overhead is measured with it.
#[derive(Debug, Clone, Copy)]
pub struct Noop;

impl Agent for Noop {
    fn kind(&self) -> &'static str {
        "noop"
    }
    fn run<'a>(&'a self, input: Value, _: RunContext) -> AgentFuture<'a> {
        Box::pin(std::future::ready(Ok(input)))
    }
}

/// Merges named inputs into one object (`{"step-a": ..., "step-b": ...}`), or passes a single
/// input through unchanged: what the engine hands an agent with several upstream steps.
pub fn merge_inputs(inputs: BTreeMap<String, Value>) -> Value {
    if inputs.len() == 1 {
        inputs.into_values().next().expect("one input")
    } else {
        Value::Object(inputs.into_iter().collect())
    }
}
