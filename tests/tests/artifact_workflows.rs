//! Workflows that reference artifacts, on real nodes: a version applied at the cloud with
//! `model: artifact:digits` pins the artifact's id; an edge that never had the model fetches it
//! before it switches to the version and then classifies with ONNX Runtime; a version whose
//! artifact no peer holds leaves the edge on the version it runs; the cache cap evicts the
//! least recently used artifact, never the one in use.

use std::time::Duration;

use rand::{Rng, SeedableRng};
use rhizome_e2e::process::{
    LogsOnPanic, Running, add_artifact, init, init_in, ok, run_on, start, start_with, stop,
};
use rhizome_e2e::wait_until;
use serde_json::Value;

const WORKFLOW: &str = "id: digits\ntrigger: manual\nsteps:\n  - id: classify\n    agent: onnx\n    inputs: [input]\n    config:\n      model: MODEL\n      input: pixels\n      output: label\n      shape: [1, 64]\n      field: pixels\n      labels: [zero, one, two, three, four, five, six, seven, eight, nine]\n      threads: 1\n";

fn repo() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn classify(node: &Running) -> Option<Value> {
    let input = repo().join("docs/examples/digit-7.json");
    let out = run_on(
        node,
        &[
            "run",
            "digits",
            "--input",
            input.to_str().unwrap(),
            "--json",
        ],
    );
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).unwrap())
}

fn schedule_of(node: &Running, workflow: &str) -> Value {
    let listed = ok(run_on(node, &["workflow", "schedule", "--json"]));
    listed
        .as_array()
        .and_then(|all| all.iter().find(|w| w["workflow"] == workflow))
        .cloned()
        .unwrap_or(Value::Null)
}

fn artifact_ids(node: &Running) -> Vec<String> {
    ok(run_on(node, &["artifact", "list", "--json"]))["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn an_edge_fetches_a_versions_model_before_running_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (c_dir, e_dir) = (tmp.path().join("cloud"), tmp.path().join("edge"));
    let _logs = LogsOnPanic(vec![c_dir.clone(), e_dir.clone()]);
    init(&c_dir, "cloud", None);
    init_in(
        &e_dir,
        "edge",
        Some(&c_dir.join("mesh")),
        &["--zone", "site-a"],
    );
    ok(run_on_dir(
        &e_dir,
        &["config", "set", "artifacts.cache_size", "10KB"],
    ));
    let cloud = start_with(&c_dir, &[], &["--role", "cloud"]);
    let edge = start(&e_dir, &[&cloud.quic]);

    // The edge holds an older artifact of its own, used before the model arrives.
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let mut old = vec![0u8; 15_000];
    rng.fill(&mut old[..]);
    let old_path = tmp.path().join("old.bin");
    std::fs::write(&old_path, &old).unwrap();
    let old_id = add_artifact(&edge, &old_path, Some("old"))["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // A name unknown where the version is applied is refused, naming the step.
    let file = tmp.path().join("digits.yaml");
    std::fs::write(&file, WORKFLOW.replace("MODEL", "artifact:digits")).unwrap();
    let refused = run_on(&cloud, &["workflow", "apply", file.to_str().unwrap()]);
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("step `classify`") && said.contains("digits"),
        "{said}"
    );

    let model = repo().join("agents/models/digits.onnx");
    let added = add_artifact(&cloud, &model, Some("digits"));
    let model_id = added["id"].as_str().unwrap().to_owned();
    let applied = ok(run_on(
        &cloud,
        &["workflow", "apply", file.to_str().unwrap(), "--json"],
    ));
    let config = applied["steps"]["classify"]["config"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        config.contains(&format!("artifact:{model_id}")),
        "the version pins the id: {config}"
    );

    // The edge runs it once the model is here, with ONNX Runtime.
    let mut result = None;
    wait_until(
        "the edge classifies with the fetched model",
        Duration::from_secs(30),
        || {
            result = classify(&edge);
            result.is_some()
        },
    );
    let record = result.unwrap();
    assert_eq!(record["status"], "succeeded", "{record}");
    assert!(record["output"].to_string().contains("seven"), "{record}");
    // Over its 10 KB cap, the edge evicted its least recently used artifact, not the model in
    // use (alone larger than the cap).
    let held = artifact_ids(&edge);
    assert!(held.contains(&model_id), "{held:?}");
    assert!(!held.contains(&old_id), "{held:?}");
    ok(run_on(&edge, &["artifact", "gc", "--json"]));
    assert!(
        artifact_ids(&edge).contains(&model_id),
        "a pinned artifact was collected"
    );

    // A version whose model no peer holds: the edge stays on version 1 and says why.
    let missing = "0".repeat(64);
    std::fs::write(
        &file,
        WORKFLOW.replace("MODEL", &format!("artifact:{missing}")),
    )
    .unwrap();
    ok(run_on(
        &cloud,
        &["workflow", "apply", file.to_str().unwrap()],
    ));
    wait_until(
        "the edge hears of version 2",
        Duration::from_secs(20),
        || schedule_of(&edge, "digits")["fetching"]["version"] == 2,
    );
    let record = classify(&edge).expect("the edge still runs version 1");
    assert_eq!(record["workflow_version"], 1, "{record}");
    let schedule = schedule_of(&edge, "digits");
    eprintln!("the edge's schedule while version 2 waits: {schedule}");
    assert_eq!(schedule["version"], 1);

    stop(edge);
    stop(cloud);
}

fn run_on_dir(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    rhizome_e2e::process::run(dir, args)
}
