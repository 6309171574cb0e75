//! The `onnx` agent's cost per inference against a bare ONNX Runtime session running the same
//! model on the same image, side by side:
//! - `bare_session_run`: a tensor made from the pixels, `Session::run`, the label and the
//!   probabilities read back: what any caller of ONNX Runtime does;
//! - `agent_infer`: the agent's synchronous path (pixels read from JSON, the model run, the JSON
//!   output built), on the calling thread;
//! - `agent_run`: `Agent::run` as the engine calls it, which hands inference to tokio's
//!   blocking pool and waits for it.
//!
//! Needs ONNX Runtime (scripts/setup.sh). Run: `cargo bench -p agents --bench onnx`; the
//! overhead ratios are printed at the end.

use std::hint::black_box;
use std::path::{Path, PathBuf};

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

fn bench(c: &mut Criterion) {
    let pixels = first_test_image();
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
    let input = json!({ "pixels": pixels, "camera": "door" });

    // The same session options as the agent's.
    let mut session = Session::builder(environment().unwrap())
        .unwrap()
        .with_intra_threads(1)
        .unwrap()
        .with_inter_threads(1)
        .unwrap()
        .with_optimization_level(GraphOptimizationLevel::All)
        .unwrap()
        .commit_from_file(&model)
        .unwrap();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();

    // Both paths agree before they are timed.
    let expected = agent.infer(&input).unwrap()["class"].as_i64().unwrap();
    let bare = |session: &mut Session| {
        let tensor = Tensor::from_array(([1usize, 64], pixels.clone())).unwrap();
        let outputs = session.run(ort::inputs!["pixels" => tensor]).unwrap();
        let label = outputs["label"].try_extract_tensor::<i64>().unwrap().1[0];
        let (_, probabilities) = outputs["probabilities"]
            .try_extract_tensor::<f32>()
            .unwrap();
        (label, probabilities[label as usize])
    };
    assert_eq!(bare(&mut session).0, expected);

    let mut group = c.benchmark_group(GROUP);
    group.bench_function("bare_session_run", |b| {
        b.iter(|| black_box(bare(&mut session)))
    });
    group.bench_function("agent_infer", |b| {
        b.iter(|| black_box(agent.infer(black_box(&input)).unwrap()))
    });
    group.bench_function("agent_run", |b| {
        b.iter_batched(
            || input.clone(),
            |input| {
                runtime
                    .block_on(agent.run(input, RunContext { now_ms: 0 }))
                    .unwrap()
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
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
    bench(&mut criterion);
    criterion.final_summary();
    let (Some(bare), Some(infer), Some(run)) = (
        median_ns("bare_session_run"),
        median_ns("agent_infer"),
        median_ns("agent_run"),
    ) else {
        return;
    };
    println!("\nmedians: bare {bare:.0} ns, agent_infer {infer:.0} ns, agent_run {run:.0} ns");
    for (name, ns) in [("agent_infer", infer), ("agent_run", run)] {
        println!(
            "{name} / bare_session_run = {:.3} (overhead {:+.1}%, {:+.0} ns)",
            ns / bare,
            (ns / bare - 1.0) * 100.0,
            ns - bare
        );
    }
}
