//! The `onnx` agent against the digits model shipped in `agents/models/`, and how it refuses a
//! missing library, a missing model and configurations that do not fit the model.
//!
//! These tests need ONNX Runtime: `scripts/setup.sh` fetches it (scripts/test.sh runs it first).
//! Without it they fail with the agent's message saying so.

use std::path::{Path, PathBuf};
use std::process::Command;

use agents::onnx::{LIBRARY_CACHE_DIR, LIBRARY_ENV, LIBRARY_FILE, locate_library};
use agents::{Agent, AgentError, Registry, RunContext};
use serde::Deserialize;
use serde_json::{Value, json};

fn models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models")
}

fn digits_config() -> Value {
    json!({
        "model": models().join("digits.onnx"),
        "input": "pixels",
        "output": "label",
        "probabilities": "probabilities",
        "shape": [1, 64],
        "field": "pixels",
        "labels": ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"],
    })
}

fn create(config: &Value) -> Result<Box<dyn Agent>, AgentError> {
    Registry.create("onnx", config)
}

fn digits() -> Box<dyn Agent> {
    create(&digits_config()).unwrap_or_else(|e| panic!("{e}"))
}

fn error_of(config: Value) -> String {
    create(&config).unwrap_err().to_string()
}

#[derive(Deserialize)]
struct TestSet {
    accuracy: f64,
    features: Vec<Vec<f64>>,
    labels: Vec<i64>,
    predictions: Vec<i64>,
}

fn test_set() -> TestSet {
    let text = std::fs::read_to_string(models().join("digits-test.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap()
}

fn run(rt: &tokio::runtime::Runtime, agent: &dyn Agent, input: Value) -> Result<Value, AgentError> {
    rt.block_on(agent.run(input, RunContext { now_ms: 0 }))
}

#[test]
fn the_agent_scores_the_accuracy_the_training_script_recorded() {
    let set = test_set();
    assert_eq!(set.features.len(), 450);
    let agent = digits();
    let rt = runtime();
    let mut correct = 0;
    for (i, (pixels, truth)) in set.features.iter().zip(&set.labels).enumerate() {
        let out = run(&rt, &*agent, json!({ "pixels": pixels, "image": i })).unwrap();
        let class = out["class"].as_i64().unwrap();
        assert_eq!(
            class, set.predictions[i],
            "image {i}: the agent and ONNX Runtime's Python binding disagree: {out}"
        );
        if class == *truth {
            correct += 1;
        }
    }
    let accuracy = correct as f64 / set.labels.len() as f64;
    assert!(
        (accuracy - set.accuracy).abs() < 1e-9,
        "the agent's accuracy {accuracy} differs from the recorded {}",
        set.accuracy
    );
    // The figure agents/models/README.md gives.
    assert!((accuracy - 0.966667).abs() < 1e-6, "{accuracy}");
}

#[test]
fn known_images_get_their_labels_with_probabilities_and_passthrough() {
    let set = test_set();
    let agent = digits();
    let rt = runtime();
    let names = [
        "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
    ];
    // The first image of each digit that the model gets right.
    for digit in 0..10 {
        let i = (0..set.labels.len())
            .find(|&i| set.labels[i] == digit && set.predictions[i] == digit)
            .unwrap();
        let out = run(
            &rt,
            &*agent,
            json!({ "pixels": set.features[i], "camera": "door", "seq": i, "meta": {"x": 1} }),
        )
        .unwrap();
        assert_eq!(out["class"], digit, "{out}");
        assert_eq!(out["label"], names[digit as usize], "{out}");
        let probabilities: Vec<f64> = out["probabilities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_f64().unwrap())
            .collect();
        assert_eq!(probabilities.len(), 10);
        assert!((probabilities.iter().sum::<f64>() - 1.0).abs() < 1e-4);
        let confidence = out["confidence"].as_f64().unwrap();
        assert_eq!(confidence, probabilities[digit as usize]);
        assert!(confidence > 0.5, "{out}");
        // Scalars pass through; the tensor and nested objects do not.
        assert_eq!(out["camera"], "door");
        assert_eq!(out["seq"], i);
        assert!(
            out.get("pixels").is_none() && out.get("meta").is_none(),
            "{out}"
        );
    }
}

#[test]
fn features_nested_arrays_labels_and_passthrough_are_configurable() {
    let set = test_set();
    let i = 3;
    let expected = set.predictions[i];
    let rt = runtime();

    // 64 named fields instead of one array; numeric labels; chosen passthrough fields.
    let mut config = digits_config();
    let names: Vec<String> = (0..64).map(|p| format!("p{p}")).collect();
    config["features"] = json!(names);
    config.as_object_mut().unwrap().remove("field");
    config["labels"] = json!([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    config["passthrough"] = json!(["site"]);
    let agent = create(&config).unwrap();
    let mut input = serde_json::Map::new();
    for (name, v) in names.iter().zip(&set.features[i]) {
        input.insert(name.clone(), json!(v));
    }
    input.insert("site".into(), json!("north"));
    input.insert("other".into(), json!(1));
    let out = run(&rt, &*agent, Value::Object(input.clone())).unwrap();
    assert_eq!(out["label"], expected, "{out}");
    assert_eq!(out["site"], "north");
    assert!(out.get("other").is_none(), "{out}");
    input.remove("p17");
    let err = run(&rt, &*agent, Value::Object(input))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no field `p17`"), "{err}");

    // An 8x8 image as nested rows, reached through a step name; no labels: the class index.
    let mut config = digits_config();
    config["field"] = json!("camera.image");
    config.as_object_mut().unwrap().remove("labels");
    let agent = create(&config).unwrap();
    let rows: Vec<&[f64]> = set.features[i].chunks(8).collect();
    let out = run(&rt, &*agent, json!({"camera": {"image": rows}})).unwrap();
    assert_eq!(out["label"], expected);
    assert_eq!(out["class"], expected);

    // Only the label output: no probabilities or confidence.
    let mut config = digits_config();
    config.as_object_mut().unwrap().remove("probabilities");
    let agent = create(&config).unwrap();
    let out = run(&rt, &*agent, json!({"pixels": set.features[i]})).unwrap();
    assert_eq!(out["class"], expected);
    assert!(out.get("probabilities").is_none() && out.get("confidence").is_none());

    // The probabilities as the main output: the class is their arg-max, given as scores.
    let mut config = digits_config();
    config["output"] = json!("probabilities");
    config.as_object_mut().unwrap().remove("probabilities");
    let agent = create(&config).unwrap();
    let out = run(&rt, &*agent, json!({"pixels": set.features[i]})).unwrap();
    assert_eq!(out["class"], expected);
    assert_eq!(out["scores"].as_array().unwrap().len(), 10);
}

#[test]
fn concurrent_runs_share_the_session_and_agree() {
    let set = test_set();
    let agent: std::sync::Arc<dyn Agent> = digits().into();
    let rt = runtime();
    let outs = rt.block_on(async {
        let runs = (0..16).map(|i| {
            let agent = agent.clone();
            let pixels = set.features[i].clone();
            tokio::spawn(async move {
                agent
                    .run(json!({ "pixels": pixels }), RunContext { now_ms: 0 })
                    .await
            })
        });
        let mut outs = Vec::new();
        for run in runs.collect::<Vec<_>>() {
            outs.push(run.await.unwrap().unwrap());
        }
        outs
    });
    for (i, out) in outs.iter().enumerate() {
        assert_eq!(out["class"], set.predictions[i]);
    }
}

#[test]
fn without_a_tokio_runtime_the_agent_runs_in_place() {
    let set = test_set();
    let agent = digits();
    let out = futures_executor::block_on(agent.run(
        json!({ "pixels": set.features[0] }),
        RunContext { now_ms: 0 },
    ))
    .unwrap();
    assert_eq!(out["class"], set.predictions[0]);
}

#[test]
fn inputs_that_do_not_fit_the_shape_fail_the_run_clearly() {
    let set = test_set();
    let agent = digits();
    let rt = runtime();
    let short = &set.features[0][..63];
    let err = run(&rt, &*agent, json!({ "pixels": short })).unwrap_err();
    assert!(matches!(err, AgentError::Input { .. }), "{err:?}");
    let err = err.to_string();
    assert!(
        err.contains("`pixels` has 63 values; shape [1, 64] takes 64"),
        "{err}"
    );
    let mut long = set.features[0].clone();
    long.extend([0.0; 100]);
    let err = run(&rt, &*agent, json!({ "pixels": long }))
        .unwrap_err()
        .to_string();
    assert!(err.contains("`pixels`"), "{err}");
    let err = run(&rt, &*agent, json!({ "pixels": "image" }))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("array of numbers") && err.contains("\"image\""),
        "{err}"
    );
    let err = run(&rt, &*agent, json!({ "pixels": [[1, 2], ["x"]] }))
        .unwrap_err()
        .to_string();
    assert!(err.contains("found \"x\""), "{err}");
    let err = run(&rt, &*agent, json!({ "image": [] }))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no field `pixels`") && err.contains("it has: image"),
        "{err}"
    );
    // The agent still works after refusing bad input.
    let out = run(&rt, &*agent, json!({ "pixels": set.features[0] })).unwrap();
    assert_eq!(out["class"], set.predictions[0]);
}

#[test]
fn a_missing_or_broken_model_is_named_when_the_agent_is_created() {
    let mut config = digits_config();
    config["model"] = json!("no/such/digits.onnx");
    let err = create(&config).unwrap_err();
    assert!(matches!(err, AgentError::Setup { .. }), "{err:?}");
    let err = err.to_string();
    let cwd = std::env::current_dir().unwrap();
    assert!(
        err.contains(&format!(
            "model file {} not found",
            cwd.join("no/such/digits.onnx").display()
        )) && err.contains("working directory"),
        "{err}"
    );
    // Applying a workflow checks the configuration only: the model lives on the running node.
    Registry.validate("onnx", &config).unwrap();
    // An engine can record the failure as the step's.
    let standin = Registry.create_or_unavailable("onnx", &config).unwrap();
    assert_eq!(standin.kind(), "onnx");
    let failure = futures_executor::block_on(standin.run(json!({}), RunContext { now_ms: 0 }))
        .unwrap_err()
        .to_string();
    assert!(
        failure.contains("model file") && failure.contains("not found"),
        "{failure}"
    );
    // Configuration errors are not deferred.
    let mut bad = config.clone();
    bad["shape"] = json!([]);
    assert!(Registry.create_or_unavailable("onnx", &bad).is_err());

    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.onnx");
    std::fs::write(&garbage, b"not a model").unwrap();
    config["model"] = json!(garbage);
    let err = error_of(config);
    assert!(
        err.contains(&format!("cannot load model {}", garbage.display())),
        "{err}"
    );
}

#[test]
fn names_types_and_shapes_that_do_not_fit_the_model_are_named() {
    let with = |key: &str, value: Value| {
        let mut config = digits_config();
        config[key] = value;
        error_of(config)
    };
    let err = with("input", json!("image"));
    assert!(
        err.contains("no input `image` (its inputs: pixels)"),
        "{err}"
    );
    let err = with("output", json!("digit"));
    assert!(
        err.contains("no output `digit` (its outputs: label, probabilities)"),
        "{err}"
    );
    let err = with("probabilities", json!("probs"));
    assert!(err.contains("no output `probs`"), "{err}");
    let mut config = digits_config();
    config["output"] = json!("probabilities");
    config["probabilities"] = json!("label");
    let err = error_of(config);
    assert!(
        err.contains("`label`") && err.contains("not a float tensor"),
        "{err}"
    );
    let err = with("shape", json!([1, 63]));
    assert!(
        err.contains("`shape` [1, 63] does not fit input `pixels`") && err.contains("[-1, 64]"),
        "{err}"
    );
    let err = with("shape", json!([64]));
    assert!(err.contains("does not fit"), "{err}");
    let err = with("labels", json!(["a", "b", "c"]));
    assert!(
        err.contains("3 labels given") && err.contains("10 classes"),
        "{err}"
    );
}

#[test]
fn configurations_are_checked_without_the_model_when_a_workflow_is_applied() {
    let check = |change: &dyn Fn(&mut Value)| {
        let mut config = digits_config();
        config["model"] = json!("only/on/the/runner.onnx");
        change(&mut config);
        Registry
            .validate("onnx", &config)
            .map_err(|e| e.to_string())
    };
    check(&|_| {}).unwrap();
    type Change<'a> = &'a dyn Fn(&mut Value);
    let cases: Vec<(Change, &str)> = vec![
        (&|c| c["modle"] = json!("x"), "unknown field `modle`"),
        (&|c| c["shape"] = json!([]), "at least one dimension"),
        (&|c| c["shape"] = json!([1, 0]), "`shape[1]` is 0"),
        (&|c| c["shape"] = json!([1, -1]), "`shape[1]` is -1"),
        (&|c| c["shape"] = json!([1 << 20, 1 << 20]), "exceeds"),
        (&|c| c["labels"] = json!([]), "`labels` is empty"),
        (&|c| c["labels"] = json!(["a", ""]), "`labels[1]` is empty"),
        (&|c| c["labels"] = json!(["a", "a"]), "appears twice"),
        (
            &|c| c["labels"] = json!(["a", null]),
            "a string or a number",
        ),
        (&|c| c["threads"] = json!(0), "`threads` must be within"),
        (&|c| c["model"] = json!(""), "`model` must not be empty"),
        (&|c| c["input"] = json!(" "), "`input` must not be empty"),
        (&|c| c["probabilities"] = json!("label"), "same output"),
        (&|c| c["features"] = json!(["a"]), "not both"),
        (
            &|c| {
                c.as_object_mut().unwrap().remove("field");
            },
            "give `features`",
        ),
        (
            &|c| {
                c.as_object_mut().unwrap().remove("field");
                c["features"] = json!(["a", "b"]);
            },
            "2 features do not fill shape [1, 64]",
        ),
        (
            &|c| {
                c.as_object_mut().unwrap().remove("shape");
            },
            "missing field `shape`",
        ),
    ];
    for (change, expected) in cases {
        let err = check(change).unwrap_err();
        assert!(
            err.contains(expected) && err.contains("agent `onnx`"),
            "{expected}: {err}"
        );
    }
}

#[test]
fn the_library_lookup_follows_its_documented_order() {
    let dir = tempfile::tempdir().unwrap();
    let exe_dir = dir.path().join("bin");
    let repo = dir.path().join("repo");
    let deep = repo.join("a/b");
    std::fs::create_dir_all(&exe_dir).unwrap();
    std::fs::create_dir_all(&deep).unwrap();
    let cache = repo.join(LIBRARY_CACHE_DIR);
    std::fs::create_dir_all(&cache).unwrap();
    let cached = cache.join(LIBRARY_FILE);
    std::fs::write(&cached, b"").unwrap();

    // Found in the cache of an ancestor of the working directory.
    let found = locate_library(None, Some(&exe_dir), Some(&deep)).unwrap();
    assert_eq!(found, cached);
    // Next to the executable comes first.
    let beside = exe_dir.join(LIBRARY_FILE);
    std::fs::write(&beside, b"").unwrap();
    assert_eq!(
        locate_library(None, Some(&exe_dir), Some(&deep)).unwrap(),
        beside
    );
    // The variable comes before both, relative to the working directory.
    let named = deep.join("my-ort.so");
    std::fs::write(&named, b"").unwrap();
    assert_eq!(
        locate_library(Some("my-ort.so".into()), Some(&exe_dir), Some(&deep)).unwrap(),
        named
    );
    // A variable naming nothing is an error, not a reason to look elsewhere.
    let err = locate_library(Some("/nowhere/lib.so".into()), Some(&exe_dir), Some(&deep))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(LIBRARY_ENV) && err.contains("/nowhere/lib.so") && err.contains("not a file"),
        "{err}"
    );
    // Nothing anywhere: every place is named, and the way out.
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let err = locate_library(None, Some(&empty), Some(&empty))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&empty.join(LIBRARY_FILE).display().to_string())
            && err.contains(
                &empty
                    .join(LIBRARY_CACHE_DIR)
                    .join(LIBRARY_FILE)
                    .display()
                    .to_string()
            )
            && err.contains("scripts/setup.sh"),
        "{err}"
    );
}

/// Runs `child_creates_the_agent` in a child process with `ORT_DYLIB_PATH` set to `library`
/// (ONNX Runtime is loaded once per process, so the failure needs a fresh one); returns what
/// the child printed.
fn child_with_library(library: &Path) -> String {
    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "child_creates_the_agent",
            "--nocapture",
        ])
        .env(LIBRARY_ENV, library)
        .env("ONNX_TEST_CHILD", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the child failed:\n{stdout}\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    stdout
}

#[test]
fn a_missing_library_is_a_clear_error_not_a_panic() {
    let stdout = child_with_library(Path::new("/nonexistent/libonnxruntime.so"));
    assert!(
        stdout.contains(
            "agent `onnx` cannot start on this node: ONNX Runtime library not found: \
             ORT_DYLIB_PATH names /nonexistent/libonnxruntime.so, which is not a file"
        ),
        "{stdout}"
    );
    // A file that is not ONNX Runtime.
    let not_a_library = models().join("README.md");
    let stdout = child_with_library(&not_a_library);
    assert!(
        stdout.contains(&format!(
            "cannot load ONNX Runtime from {}",
            not_a_library.display()
        )),
        "{stdout}"
    );
}

#[test]
#[ignore = "run in a child process by a_missing_library_is_a_clear_error_not_a_panic"]
fn child_creates_the_agent() {
    assert_eq!(
        std::env::var("ONNX_TEST_CHILD").as_deref(),
        Ok("1"),
        "only meant as a child process"
    );
    let err = create(&digits_config()).unwrap_err();
    assert!(matches!(err, AgentError::Setup { .. }), "{err:?}");
    // A second attempt gives the same answer: nothing was half-initialised.
    assert_eq!(create(&digits_config()).unwrap_err(), err);
    println!("child error: {err}");
}
