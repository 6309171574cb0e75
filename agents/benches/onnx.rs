//! The `onnx` agent's cost per inference against a bare ONNX Runtime session running the same
//! model on the same image, side by side:
//! - `bare_session_run`: a tensor made from the pixels, `Session::run`, the label and the
//!   probabilities read back: what any caller of ONNX Runtime does;
//! - `agent_infer`: the agent's synchronous path (pixels read from JSON, the model run, the JSON
//!   output built), on the calling thread;
//! - `agent_run`: `Agent::run` as the engine calls it, which hands inference to tokio's
//!   blocking pool and waits for it.
//!
//! Needs ONNX Runtime (scripts/setup.sh). Run: `cargo bench -p agents --bench onnx`. The
//! overhead ratios are printed at the end twice: from criterion's medians (the three measured
//! one after the other) and from paired runs that alternate the bare session with one agent
//! path round by round, which a shared machine's changing load skews less.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Instant;

use agents::onnx::{Onnx, OnnxConfig, environment};
use agents::{Agent, RunContext};
use criterion::{BatchSize, Criterion};
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::Tensor;
use serde_json::{Value, json};

const GROUP: &str = "onnx_digits";

fn models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models")
}

fn first_test_image() -> Vec<f32> {
    let text = std::fs::read_to_string(models().join("digits-test.json")).unwrap();
    let set: Value = serde_json::from_str(&text).unwrap();
    set["features"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect()
}

struct Fixture {
    pixels: Vec<f32>,
    input: Value,
    agent: Onnx,
    session: Session,
    runtime: tokio::runtime::Runtime,
}

impl Fixture {
    fn new() -> Fixture {
        let model = models().join("digits.onnx");
        let config: OnnxConfig = serde_json::from_value(json!({
            "model": model,
            "input": "pixels",
            "output": "label",
            "probabilities": "probabilities",
            "shape": [1, 64],
            "field": "pixels",
            "labels": ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"],
            "threads": 1,
        }))
        .unwrap();
        let agent = Onnx::new(config).unwrap_or_else(|e| panic!("{e}"));
        let pixels = first_test_image();
        let input = json!({ "pixels": pixels, "camera": "door" });
        // The same session options as the agent's.
        let session = Session::builder(environment().unwrap())
            .unwrap()
            .with_intra_threads(1)
            .unwrap()
            .with_inter_threads(1)
            .unwrap()
            .with_optimization_level(GraphOptimizationLevel::All)
            .unwrap()
            .commit_from_file(&model)
            .unwrap();
        // The node's daemon runs a multi-threaded runtime.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        let mut fixture = Fixture {
            pixels,
            input,
            agent,
            session,
            runtime,
        };
        // All paths agree before they are timed.
        let class = fixture.infer()["class"].as_i64().unwrap();
        assert_eq!(fixture.bare().0, class);
        assert_eq!(fixture.run(fixture.input.clone())["class"], class);
        fixture
    }

    fn bare(&mut self) -> (i64, f32) {
        let tensor = Tensor::from_array(([1usize, 64], self.pixels.clone())).unwrap();
        let outputs = self.session.run(ort::inputs!["pixels" => tensor]).unwrap();
        let label = outputs["label"].try_extract_tensor::<i64>().unwrap().1[0];
        let (_, probabilities) = outputs["probabilities"]
            .try_extract_tensor::<f32>()
            .unwrap();
        (label, probabilities[label as usize])
    }

    fn infer(&self) -> Value {
        self.agent.infer(black_box(&self.input)).unwrap()
    }

    fn run(&self, input: Value) -> Value {
        self.runtime
            .block_on(self.agent.run(input, RunContext { now_ms: 0 }))
            .unwrap()
    }
}

fn bench(c: &mut Criterion, fixture: &mut Fixture) {
    let mut group = c.benchmark_group(GROUP);
    group.bench_function("bare_session_run", |b| b.iter(|| black_box(fixture.bare())));
    group.bench_function("agent_infer", |b| b.iter(|| black_box(fixture.infer())));
    group.bench_function("agent_run", |b| {
        b.iter_batched(
            || fixture.input.clone(),
            |input| fixture.run(input),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

/// Nanoseconds per call of `f`, over `iterations` calls.
fn time_ns(iterations: u32, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    for _ in 0..iterations {
        f();
    }
    start.elapsed().as_nanos() as f64 / f64::from(iterations)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Two paths timed in alternation, round after round, so that a change in the shared machine's
/// load touches both alike; medians over the rounds, in ns per call. The agent's two paths are
/// paired with the bare session separately: running inference on tokio's blocking threads in
/// between slows the synchronous path down, which would blur what each costs.
fn paired(fixture: &mut Fixture, agent_run: bool) -> (f64, f64) {
    const ROUNDS: usize = 41;
    const ITERATIONS: u32 = 2_000;
    let (mut bare, mut agent) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        bare.push(time_ns(ITERATIONS, || {
            black_box(fixture.bare());
        }));
        if agent_run {
            let mut inputs = vec![fixture.input.clone(); ITERATIONS as usize].into_iter();
            agent.push(time_ns(ITERATIONS, || {
                black_box(fixture.run(inputs.next().unwrap()));
            }));
        } else {
            agent.push(time_ns(ITERATIONS, || {
                black_box(fixture.infer());
            }));
        }
    }
    (median(bare), median(agent))
}

fn report(bare: f64, infer: f64, run: f64) {
    report_one("agent_infer", bare, infer);
    report_one("agent_run", bare, run);
}

fn report_one(name: &str, bare: f64, ns: f64) {
    println!(
        "  {name} / bare_session_run = {:.3} (overhead {:+.1}%, {:+.0} ns)",
        ns / bare,
        (ns / bare - 1.0) * 100.0,
        ns - bare
    );
}

fn output_directory() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
        .join("criterion")
}

/// The median of a benchmark of this run, in nanoseconds.
fn median_ns(name: &str) -> Option<f64> {
    let path = output_directory()
        .join(GROUP)
        .join(name)
        .join("new/estimates.json");
    let estimates: Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    estimates["median"]["point_estimate"].as_f64()
}

fn main() {
    let mut criterion = Criterion::default()
        .output_directory(&output_directory())
        .configure_from_args();
    let mut fixture = Fixture::new();
    bench(&mut criterion, &mut fixture);
    criterion.final_summary();
    if let (Some(bare), Some(infer), Some(run)) = (
        median_ns("bare_session_run"),
        median_ns("agent_infer"),
        median_ns("agent_run"),
    ) {
        println!(
            "\ncriterion medians, ns: bare_session_run {bare:.0}, agent_infer {infer:.0}, agent_run {run:.0}"
        );
        report(bare, infer, run);
    }
    // `cargo test --benches` runs each benchmark once: no figures wanted then.
    if std::env::args().any(|a| a == "--bench") {
        let (bare, infer) = paired(&mut fixture, false);
        println!("\npaired: bare_session_run {bare:.0} ns, agent_infer {infer:.0} ns");
        report_one("agent_infer", bare, infer);
        let (bare, run) = paired(&mut fixture, true);
        println!("paired: bare_session_run {bare:.0} ns, agent_run {run:.0} ns");
        report_one("agent_run", bare, run);
    }
}
