//! `onnx`: runs an ONNX model through ONNX Runtime, which is loaded at run time.
//!
//! # Where ONNX Runtime comes from
//! The build links nothing: the shared library is found when the first `onnx` agent is created,
//! in this order:
//! 1. the file named by the `ORT_DYLIB_PATH` environment variable, if it is set (and nothing
//!    else then: an explicit choice that is wrong is an error, not a reason to guess);
//! 2. `libonnxruntime.so` in the directory of the running executable;
//! 3. `.cache/onnxruntime/libonnxruntime.so` in the current directory or any of its ancestors,
//!    where `scripts/setup.sh` puts the library of the `onnxruntime` PyPI wheel.
//!
//! A missing or unloadable library is an [`AgentError::Setup`] naming every place looked at;
//! nothing panics. The ONNX Runtime environment is made once per process and shared by every
//! session; a failed attempt is not remembered, so a library installed later is found by the
//! next agent created.
//!
//! # Configuration
//! Checked without touching the disk by [`OnnxConfig::check`] when a workflow is applied; the
//! model file, its input and output names, types and shapes are checked when the agent is
//! created on the node that runs the step (a relative `model` path is resolved against the
//! node's working directory), and a dry run on zeros proves the shape before any real input.
//!
//! # Output
//! An object with `class` (the class index), `label` (`labels[class]` when labels are given,
//! the model's string label, or else the class index), `probabilities` and `confidence` (the
//! probability of the chosen class; float32 probabilities are rounded to 7 decimal places) when
//! a probabilities output is configured, `scores` when the main output is a float tensor (the
//! class is then its arg-max, unless it holds a single value: a score, reported alone), and the
//! input's scalar fields (or those listed in `passthrough`) copied alongside, so that later
//! steps still see them; the agent's own keys win over input fields of the same name.
//!
//! Each run is one example: the input tensor has exactly the configured `shape`. Runs of one
//! step share one session and take turns; `threads` sets ONNX Runtime's threads inside a run.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{DynValue, Tensor, TensorElementType, ValueType};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::transforms::Named;
use crate::{Agent, AgentError, AgentFuture, AgentResult, RunContext};

const AGENT: &str = "onnx";

/// The environment variable that names the ONNX Runtime library, first in the lookup order.
pub const LIBRARY_ENV: &str = "ORT_DYLIB_PATH";
/// The library's file name next to the executable and in the setup's cache.
pub const LIBRARY_FILE: &str = "libonnxruntime.so";
/// Where `scripts/setup.sh` puts the library, relative to the repository root.
pub const LIBRARY_CACHE_DIR: &str = ".cache/onnxruntime";

/// Largest input tensor, in elements: an edge model's input, with room to spare.
pub const MAX_INPUT_ELEMENTS: usize = 1 << 24;
/// Most intra-op threads a step may ask for.
pub const MAX_THREADS: usize = 256;

/// Keys the agent writes; passthrough fields with these names are not copied.
const OUTPUT_KEYS: &[&str] = &["class", "label", "probabilities", "confidence", "scores"];

/// `onnx` configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnnxConfig {
    /// The model file; relative paths are resolved against the node's working directory.
    pub model: String,
    /// The model's input that receives the tensor.
    pub input: String,
    /// The model's main output: a class index (integer), a label (string), or scores (float;
    /// the class is their arg-max).
    pub output: String,
    /// An optional float output of per-class probabilities.
    #[serde(default)]
    pub probabilities: Option<String>,
    /// The input tensor's shape, every dimension given (`[1, 64]`).
    pub shape: Vec<i64>,
    /// Numeric input fields, in tensor order (`[mean, std, z]`); or use `field`.
    #[serde(default)]
    pub features: Option<Vec<String>>,
    /// One input field holding the whole tensor as an array (nested arrays are flattened).
    #[serde(default)]
    pub field: Option<String>,
    /// Class labels by index: strings or numbers.
    #[serde(default)]
    pub labels: Option<Vec<Value>>,
    /// ONNX Runtime's intra-op threads.
    #[serde(default = "one")]
    pub threads: usize,
    /// Input fields copied into the output; by default every scalar field of the input.
    #[serde(default)]
    pub passthrough: Option<Vec<String>>,
}

fn one() -> usize {
    1
}

impl Named for OnnxConfig {
    const AGENT: &'static str = AGENT;
}

fn config_error(reason: impl Into<String>) -> AgentError {
    AgentError::Config {
        agent: AGENT,
        reason: reason.into(),
    }
}

fn setup_error(reason: impl Into<String>) -> AgentError {
    AgentError::Setup {
        agent: AGENT,
        reason: reason.into(),
    }
}

fn failed(reason: impl Into<String>) -> AgentError {
    AgentError::Failed {
        agent: AGENT,
        reason: reason.into(),
    }
}

fn input_error(reason: impl Into<String>) -> AgentError {
    AgentError::Input {
        agent: AGENT,
        reason: reason.into(),
    }
}

impl OnnxConfig {
    /// Checks what can be checked without the model: what a workflow is refused for when it is
    /// applied.
    pub fn check(&self) -> Result<(), AgentError> {
        for (name, value) in [
            ("model", &self.model),
            ("input", &self.input),
            ("output", &self.output),
        ] {
            if value.trim().is_empty() {
                return Err(config_error(format!("`{name}` must not be empty")));
            }
        }
        if self
            .probabilities
            .as_deref()
            .is_some_and(|p| p.trim().is_empty())
        {
            return Err(config_error("`probabilities` must not be empty when given"));
        }
        if self.probabilities.as_deref() == Some(self.output.as_str()) {
            return Err(config_error(
                "`probabilities` names the same output as `output`",
            ));
        }
        let elements = self.elements()?;
        match (&self.features, &self.field) {
            (Some(_), Some(_)) => {
                return Err(config_error("give `features` or `field`, not both"));
            }
            (None, None) => {
                return Err(config_error(
                    "give `features` (a list of numeric input fields) or `field` (one field holding an array)",
                ));
            }
            (Some(features), None) => {
                if features.is_empty() {
                    return Err(config_error("`features` must list at least one field"));
                }
                if let Some(empty) = features.iter().position(|f| f.is_empty()) {
                    return Err(config_error(format!("`features[{empty}]` is empty")));
                }
                if features.len() != elements {
                    return Err(config_error(format!(
                        "{} features do not fill shape {:?} ({elements} values)",
                        features.len(),
                        self.shape
                    )));
                }
            }
            (None, Some(field)) => {
                if field.is_empty() {
                    return Err(config_error("`field` must not be empty"));
                }
            }
        }
        if let Some(labels) = &self.labels {
            if labels.is_empty() {
                return Err(config_error(
                    "`labels` is empty: give one per class, or leave it out",
                ));
            }
            for (i, label) in labels.iter().enumerate() {
                match label {
                    Value::String(s) if s.is_empty() => {
                        return Err(config_error(format!("`labels[{i}]` is empty")));
                    }
                    Value::String(_) | Value::Number(_) => {}
                    other => {
                        return Err(config_error(format!(
                            "`labels[{i}]` is {other}: a label is a string or a number"
                        )));
                    }
                }
                if labels[..i].contains(label) {
                    return Err(config_error(format!(
                        "`labels[{i}]` ({label}) appears twice"
                    )));
                }
            }
        }
        if !(1..=MAX_THREADS).contains(&self.threads) {
            return Err(config_error(format!(
                "`threads` must be within 1..={MAX_THREADS}, not {}",
                self.threads
            )));
        }
        if let Some(fields) = &self.passthrough
            && let Some(empty) = fields.iter().position(|f| f.is_empty())
        {
            return Err(config_error(format!("`passthrough[{empty}]` is empty")));
        }
        Ok(())
    }

    /// The number of values the input tensor holds.
    fn elements(&self) -> Result<usize, AgentError> {
        if self.shape.is_empty() {
            return Err(config_error(
                "`shape` must have at least one dimension, e.g. [1, 64]",
            ));
        }
        let mut elements: usize = 1;
        for (i, dim) in self.shape.iter().enumerate() {
            if *dim < 1 {
                return Err(config_error(format!(
                    "`shape[{i}]` is {dim}: every dimension must be given and positive"
                )));
            }
            elements = elements
                .checked_mul(*dim as usize)
                .filter(|n| *n <= MAX_INPUT_ELEMENTS)
                .ok_or_else(|| {
                    config_error(format!(
                        "shape {:?} exceeds {MAX_INPUT_ELEMENTS} values",
                        self.shape
                    ))
                })?;
        }
        Ok(elements)
    }
}

// ---------------------------------------------------------------------------------------------
// Finding and loading ONNX Runtime.

/// Finds the ONNX Runtime library from this process's environment, executable and working
/// directory, in the documented order.
pub fn find_library() -> Result<PathBuf, AgentError> {
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf));
    locate_library(
        std::env::var_os(LIBRARY_ENV),
        exe_dir.as_deref(),
        std::env::current_dir().ok().as_deref(),
    )
}

/// The lookup itself, with its inputs given: `env` is the value of [`LIBRARY_ENV`], `exe_dir` the
/// executable's directory, `cwd` the working directory.
pub fn locate_library(
    env: Option<OsString>,
    exe_dir: Option<&Path>,
    cwd: Option<&Path>,
) -> Result<PathBuf, AgentError> {
    if let Some(env) = env.filter(|v| !v.is_empty()) {
        let path = absolute(PathBuf::from(env), cwd);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(setup_error(format!(
                "ONNX Runtime library not found: {LIBRARY_ENV} names {}, which is not a file \
                 (unset it to use the library fetched by scripts/setup.sh)",
                path.display()
            )))
        };
    }
    let mut looked = Vec::new();
    if let Some(dir) = exe_dir {
        let path = dir.join(LIBRARY_FILE);
        if path.is_file() {
            return Ok(path);
        }
        looked.push(path);
    }
    if let Some(cwd) = cwd {
        for dir in cwd.ancestors() {
            let path = dir.join(LIBRARY_CACHE_DIR).join(LIBRARY_FILE);
            if path.is_file() {
                return Ok(path);
            }
        }
        looked.push(cwd.join(LIBRARY_CACHE_DIR).join(LIBRARY_FILE));
    }
    let looked: Vec<String> = looked.iter().map(|p| p.display().to_string()).collect();
    Err(setup_error(format!(
        "ONNX Runtime library not found: {LIBRARY_ENV} is not set, and there is no {LIBRARY_FILE} \
         at {} (nor in {LIBRARY_CACHE_DIR}/ of any parent directory); run scripts/setup.sh, \
         or set {LIBRARY_ENV} to the library's path",
        looked.join(" or ")
    )))
}

fn absolute(path: PathBuf, cwd: Option<&Path>) -> PathBuf {
    match cwd {
        Some(cwd) if path.is_relative() => cwd.join(path),
        _ => path,
    }
}

static ENVIRONMENT: OnceLock<Environment> = OnceLock::new();
static LOADING: Mutex<()> = Mutex::new(());

/// The process's ONNX Runtime environment, made on first use.
pub fn environment() -> Result<&'static Environment, AgentError> {
    if let Some(environment) = ENVIRONMENT.get() {
        return Ok(environment);
    }
    let _one_at_a_time = LOADING.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(environment) = ENVIRONMENT.get() {
        return Ok(environment);
    }
    let path = find_library()?;
    // `init_from` reports a missing or foreign library as an error; every other ort call made
    // before it would load the library itself and panic on failure.
    let builder = ort::init_from(&path).map_err(|e| {
        setup_error(format!(
            "cannot load ONNX Runtime from {}: {e}",
            path.display()
        ))
    })?;
    let environment = builder
        .with_name("rhizome")
        .with_telemetry(false)
        .build()
        .map_err(|e| {
            setup_error(format!(
                "ONNX Runtime from {} loaded but its environment failed: {e}",
                path.display()
            ))
        })?;
    Ok(ENVIRONMENT.get_or_init(|| environment))
}

// ---------------------------------------------------------------------------------------------
// The agent.

/// How the main output is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OutputKind {
    /// A class index.
    Int64,
    /// A class index.
    Int32,
    /// A label.
    String,
    /// Scores; the class is the arg-max.
    Float32,
    /// Scores; the class is the arg-max.
    Float64,
}

/// The input tensor, allocated once and overwritten by each run.
#[derive(Debug)]
enum InputBuffer {
    F32(Tensor<f32>),
    F64(Tensor<f64>),
}

#[derive(Debug)]
struct Loaded {
    session: Session,
    buffer: InputBuffer,
}

#[derive(Debug)]
struct Inner {
    config: OnnxConfig,
    path: PathBuf,
    elements: usize,
    output_kind: OutputKind,
    probabilities_kind: Option<OutputKind>,
    loaded: Mutex<Loaded>,
    /// The model is quick enough to run on the async executor itself (see [`INLINE_BELOW`]).
    inline: bool,
}

/// A model whose inference takes less than this (timed once, after the dry run) runs on the
/// async executor's own thread: it holds the executor no longer than the JSON work around it
/// (tokio's rule of thumb is 10–100 µs between two awaits), and a hand-off to the blocking pool
/// would cost more than the inference. Slower models run on the blocking pool.
pub const INLINE_BELOW: std::time::Duration = std::time::Duration::from_micros(50);

/// The `onnx` agent: one loaded model.
#[derive(Debug, Clone)]
pub struct Onnx(Arc<Inner>);

impl Onnx {
    /// Checks the configuration, loads ONNX Runtime if needed, loads the model and checks its
    /// input and outputs against the configuration, then runs it once on zeros.
    pub fn new(config: OnnxConfig) -> Result<Onnx, AgentError> {
        config.check()?;
        let elements = config.elements()?;
        let cwd = std::env::current_dir().ok();
        let path = absolute(PathBuf::from(&config.model), cwd.as_deref());
        if !path.is_file() {
            let relative = if Path::new(&config.model).is_relative() {
                format!(
                    " (`{}` is resolved against the node's working directory {})",
                    config.model,
                    cwd.as_deref()
                        .map_or("?".into(), |c| c.display().to_string())
                )
            } else {
                String::new()
            };
            return Err(setup_error(format!(
                "model file {} not found{relative}",
                path.display()
            )));
        }
        let environment = environment()?;
        let model_error =
            |e: ort::Error| setup_error(format!("cannot load model {}: {e}", path.display()));
        let mut builder = Session::builder(environment).map_err(model_error)?;
        let option_error = |e: ort::Error<_>| model_error(e.into());
        builder = builder
            .with_intra_threads(config.threads)
            .map_err(option_error)?
            .with_inter_threads(1)
            .map_err(option_error)?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(option_error)?;
        let session = builder.commit_from_file(&path).map_err(model_error)?;

        let model = path.display();
        let inputs: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
        let Some(input) = session.inputs().iter().find(|i| i.name() == config.input) else {
            return Err(setup_error(format!(
                "model {model} has no input `{}` (its inputs: {})",
                config.input,
                inputs.join(", ")
            )));
        };
        if inputs.len() > 1 {
            return Err(setup_error(format!(
                "model {model} has {} inputs ({}); the agent feeds exactly one",
                inputs.len(),
                inputs.join(", ")
            )));
        }
        let ValueType::Tensor {
            ty: input_type,
            shape: model_shape,
            ..
        } = input.dtype()
        else {
            return Err(setup_error(format!(
                "input `{}` of model {model} is not a tensor but {}",
                config.input,
                input.dtype()
            )));
        };
        if model_shape.len() != config.shape.len()
            || model_shape
                .iter()
                .zip(&config.shape)
                .any(|(model, ours)| *model >= 0 && model != ours)
        {
            return Err(setup_error(format!(
                "`shape` {:?} does not fit input `{}` of model {model}, which is {:?} (-1: any size)",
                config.shape, config.input, &**model_shape
            )));
        }
        let dims = config.shape.clone();
        let tensor_error =
            |e: ort::Error| setup_error(format!("cannot make the input tensor: {e}"));
        let buffer = match input_type {
            TensorElementType::Float32 => InputBuffer::F32(
                Tensor::from_array((dims, vec![0f32; elements])).map_err(tensor_error)?,
            ),
            TensorElementType::Float64 => InputBuffer::F64(
                Tensor::from_array((dims, vec![0f64; elements])).map_err(tensor_error)?,
            ),
            other => {
                return Err(setup_error(format!(
                    "input `{}` of model {model} holds {other}; the agent feeds float32 or float64",
                    config.input
                )));
            }
        };

        let outputs: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
        let output_of = |name: &str, role: &str| -> Result<(OutputKind, Vec<i64>), AgentError> {
            let Some(outlet) = session.outputs().iter().find(|o| o.name() == name) else {
                return Err(setup_error(format!(
                    "model {model} has no output `{name}` (its outputs: {})",
                    outputs.join(", ")
                )));
            };
            let ValueType::Tensor { ty, shape, .. } = outlet.dtype() else {
                return Err(setup_error(format!(
                    "{role} `{name}` of model {model} is {}, not a tensor (a scikit-learn \
                     classifier exported with ZipMap gives a sequence of maps: export it with \
                     zipmap disabled)",
                    outlet.dtype()
                )));
            };
            let kind = match ty {
                TensorElementType::Int64 => OutputKind::Int64,
                TensorElementType::Int32 => OutputKind::Int32,
                TensorElementType::String => OutputKind::String,
                TensorElementType::Float32 => OutputKind::Float32,
                TensorElementType::Float64 => OutputKind::Float64,
                other => {
                    return Err(setup_error(format!(
                        "{role} `{name}` of model {model} holds {other}, which the agent does not read"
                    )));
                }
            };
            Ok((kind, shape.to_vec()))
        };
        let (output_kind, output_shape) = output_of(&config.output, "output")?;
        let probabilities = config
            .probabilities
            .as_deref()
            .map(|name| output_of(name, "probabilities output"))
            .transpose()?;
        if let Some((kind, _)) = &probabilities
            && !matches!(kind, OutputKind::Float32 | OutputKind::Float64)
        {
            return Err(setup_error(format!(
                "probabilities output `{}` of model {model} is not a float tensor",
                config.probabilities.as_deref().unwrap_or_default()
            )));
        }
        // The number of classes, where the model declares it.
        let classes = probabilities
            .as_ref()
            .map(|(_, shape)| shape)
            .or(
                matches!(output_kind, OutputKind::Float32 | OutputKind::Float64)
                    .then_some(&output_shape),
            )
            .and_then(|shape| shape.last().copied())
            .filter(|n| *n > 0);
        if let (Some(labels), Some(classes)) = (&config.labels, classes)
            && labels.len() as i64 != classes
        {
            return Err(setup_error(format!(
                "{} labels given, but model {model} has {classes} classes",
                labels.len()
            )));
        }

        let mut inner = Inner {
            elements,
            output_kind,
            probabilities_kind: probabilities.map(|(kind, _)| kind),
            loaded: Mutex::new(Loaded { session, buffer }),
            path,
            config,
            inline: false,
        };
        // A dry run finds what the declared types do not show (a fixed reshape inside the
        // model), and moves the first run's one-off cost out of the first real step.
        let zeros = vec![0.0; inner.elements];
        inner.run_values(&zeros).map_err(|e| {
            setup_error(format!(
                "model {} does not run on a zero input of shape {:?}: {e}",
                inner.path.display(),
                inner.config.shape
            ))
        })?;
        // Timed after the dry run, which pays the first run's one-off costs. The time decides
        // only where inferences run, never what they return.
        let timed = std::time::Instant::now();
        let _ = inner.run_values(&zeros);
        inner.inline = timed.elapsed() < INLINE_BELOW;
        Ok(Onnx(Arc::new(inner)))
    }

    /// The configuration the agent was made from.
    pub fn config(&self) -> &OnnxConfig {
        &self.0.config
    }

    /// One inference on the calling thread: what [`Agent::run`] runs off the async executor.
    pub fn infer(&self, input: &Value) -> AgentResult {
        self.0.infer(input)
    }
}

impl Inner {
    fn infer(&self, input: &Value) -> AgentResult {
        let values = self.gather(input)?;
        let mut out = self.run_values(&values)?;
        self.pass_through(input, &mut out)?;
        Ok(Value::Object(out))
    }

    /// Reads the tensor's values from the input.
    fn gather(&self, input: &Value) -> Result<Vec<f64>, AgentError> {
        let mut values = Vec::with_capacity(self.elements);
        if let Some(features) = &self.config.features {
            for name in features {
                let value = lookup(input, name).ok_or_else(|| missing(input, name))?;
                values.push(scalar(value).ok_or_else(|| {
                    input_error(format!("feature `{name}` is {value}, not a number"))
                })?);
            }
        } else if let Some(name) = &self.config.field {
            let value = lookup(input, name).ok_or_else(|| missing(input, name))?;
            flatten(value, &mut values, self.elements).map_err(|what| {
                input_error(format!(
                    "field `{name}` must be an array of numbers (nested arrays allowed): {what}"
                ))
            })?;
            if values.len() != self.elements {
                return Err(input_error(format!(
                    "field `{name}` has {} values; shape {:?} takes {}",
                    values.len(),
                    self.config.shape,
                    self.elements
                )));
            }
        }
        Ok(values)
    }

    /// Runs the model on `values` and reads its outputs.
    fn run_values(&self, values: &[f64]) -> Result<Map<String, Value>, AgentError> {
        let mut loaded = self.loaded.lock().unwrap_or_else(PoisonError::into_inner);
        let Loaded { session, buffer } = &mut *loaded;
        let run_error = |e: ort::Error| failed(format!("inference failed: {e}"));
        let outputs = match buffer {
            InputBuffer::F32(tensor) => {
                for (slot, v) in tensor.extract_tensor_mut().1.iter_mut().zip(values) {
                    *slot = *v as f32;
                }
                session.run(ort::inputs![self.config.input.as_str() => &*tensor])
            }
            InputBuffer::F64(tensor) => {
                tensor.extract_tensor_mut().1.copy_from_slice(values);
                session.run(ort::inputs![self.config.input.as_str() => &*tensor])
            }
        }
        .map_err(run_error)?;

        let mut out = Map::new();
        let main = outputs
            .get(self.config.output.as_str())
            .ok_or_else(|| failed(format!("the model gave no output `{}`", self.config.output)))?;
        let mut class: Option<i64> = None;
        let mut label: Option<Value> = None;
        match self.output_kind {
            OutputKind::Int64 => class = Some(single(&self.config.output, ints::<i64>(main)?)?),
            OutputKind::Int32 => class = Some(single(&self.config.output, ints::<i32>(main)?)?),
            OutputKind::String => {
                let (_, strings) = main
                    .try_extract_strings()
                    .map_err(|e| failed(format!("output `{}`: {e}", self.config.output)))?;
                let [one] = <[String; 1]>::try_from(strings).map_err(|all| {
                    failed(format!(
                        "output `{}` has {} labels; the agent reads one example per run",
                        self.config.output,
                        all.len()
                    ))
                })?;
                if let Some(labels) = &self.config.labels {
                    class = labels
                        .iter()
                        .position(|l| l.as_str() == Some(one.as_str()))
                        .map(|i| i as i64);
                }
                label = Some(Value::String(one));
            }
            OutputKind::Float32 | OutputKind::Float64 => {
                let scores = floats(&self.config.output, main, self.output_kind)?;
                // One value is a score or a regression, not a choice among classes.
                if scores.len() > 1 {
                    class = argmax(&scores).map(|i| i as i64);
                }
                out.insert("scores".into(), numbers(&scores));
            }
        }
        if let (Some(name), Some(kind)) = (&self.config.probabilities, self.probabilities_kind) {
            let value = outputs
                .get(name.as_str())
                .ok_or_else(|| failed(format!("the model gave no output `{name}`")))?;
            let mut probabilities = floats(name, value, kind)?;
            if kind == OutputKind::Float32 {
                // A float32 holds about 7 decimal digits of a probability; the rest of its
                // float64 spelling (0.98400807380676270) is noise in a result.
                for p in &mut probabilities {
                    *p = (*p * 1e7).round() / 1e7;
                }
            }
            if class.is_none() && label.is_none() {
                class = argmax(&probabilities).map(|i| i as i64);
            }
            if let Some(p) = class
                .and_then(|c| usize::try_from(c).ok())
                .and_then(|c| probabilities.get(c))
            {
                out.insert("confidence".into(), number(*p));
            }
            out.insert("probabilities".into(), numbers(&probabilities));
        }
        if let Some(class) = class {
            out.insert("class".into(), Value::from(class));
            if label.is_none() {
                label = Some(match &self.config.labels {
                    Some(labels) => usize::try_from(class)
                        .ok()
                        .and_then(|c| labels.get(c))
                        .cloned()
                        .ok_or_else(|| {
                            failed(format!(
                                "the model chose class {class}, but only {} labels are configured",
                                labels.len()
                            ))
                        })?,
                    None => Value::from(class),
                });
            }
        }
        if let Some(label) = label {
            out.insert("label".into(), label);
        }
        Ok(out)
    }

    fn pass_through(&self, input: &Value, out: &mut Map<String, Value>) -> Result<(), AgentError> {
        match &self.config.passthrough {
            Some(fields) => {
                for name in fields {
                    let value = lookup(input, name).ok_or_else(|| missing(input, name))?;
                    if !OUTPUT_KEYS.contains(&name.as_str()) {
                        out.insert(name.clone(), value.clone());
                    }
                }
            }
            None => {
                if let Some(object) = input.as_object() {
                    for (name, value) in object {
                        if !value.is_array()
                            && !value.is_object()
                            && !OUTPUT_KEYS.contains(&name.as_str())
                        {
                            out.insert(name.clone(), value.clone());
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// A field of the input: a top-level key, or a dotted path into nested objects (`score.z`, for
/// a step with several inputs).
fn lookup<'v>(input: &'v Value, name: &str) -> Option<&'v Value> {
    if let Some(value) = input.get(name) {
        return Some(value);
    }
    name.split('.').try_fold(input, |value, key| value.get(key))
}

fn missing(input: &Value, name: &str) -> AgentError {
    input_error(format!(
        "the input has no field `{name}` (it has: {})",
        crate::fields_of(input)
    ))
}

fn scalar(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::Bool(b) => Some(f64::from(u8::from(*b))),
        _ => None,
    }
}

fn flatten(value: &Value, into: &mut Vec<f64>, limit: usize) -> Result<(), String> {
    match value {
        Value::Array(items) => {
            for item in items {
                if into.len() > limit {
                    return Err(format!("more than {limit} values"));
                }
                flatten(item, into, limit)?;
            }
            Ok(())
        }
        other => match scalar(other) {
            Some(v) => {
                into.push(v);
                Ok(())
            }
            None => Err(format!("found {other}")),
        },
    }
}

fn ints<T: ort::value::PrimitiveTensorElementType + Copy + Into<i64>>(
    value: &DynValue,
) -> Result<Vec<i64>, AgentError> {
    let (_, data) = value
        .try_extract_tensor::<T>()
        .map_err(|e| failed(format!("cannot read the output: {e}")))?;
    Ok(data.iter().map(|v| (*v).into()).collect())
}

fn single(name: &str, values: Vec<i64>) -> Result<i64, AgentError> {
    match values.as_slice() {
        [one] => Ok(*one),
        all => Err(failed(format!(
            "output `{name}` has {} values; the agent reads one example per run",
            all.len()
        ))),
    }
}

fn floats(name: &str, value: &DynValue, kind: OutputKind) -> Result<Vec<f64>, AgentError> {
    let error = |e: ort::Error| failed(format!("cannot read output `{name}`: {e}"));
    Ok(match kind {
        OutputKind::Float64 => value.try_extract_tensor::<f64>().map_err(error)?.1.to_vec(),
        _ => value
            .try_extract_tensor::<f32>()
            .map_err(error)?
            .1
            .iter()
            .map(|v| f64::from(*v))
            .collect(),
    })
}

fn argmax(values: &[f64]) -> Option<usize> {
    values
        .iter()
        .enumerate()
        .filter(|(_, v)| !v.is_nan())
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i)
}

/// JSON has no NaN or infinity: those become null.
fn number(v: f64) -> Value {
    serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number)
}

fn numbers(values: &[f64]) -> Value {
    Value::Array(values.iter().map(|v| number(*v)).collect())
}

impl Agent for Onnx {
    fn kind(&self) -> &'static str {
        AGENT
    }

    fn run<'a>(&'a self, input: Value, _: RunContext) -> AgentFuture<'a> {
        let inner = Arc::clone(&self.0);
        Box::pin(async move {
            // Without a tokio runtime the caller is blocking already, and a quick model costs
            // less than the hand-off to the blocking pool: run in place.
            if inner.inline || tokio::runtime::Handle::try_current().is_err() {
                return inner.infer(&input);
            }
            tokio::task::spawn_blocking(move || inner.infer(&input))
                .await
                .map_err(|e| failed(format!("the inference task ended abnormally: {e}")))?
        })
    }
}
