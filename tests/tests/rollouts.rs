//! Staged rollouts on real processes: a cloud and three edges run a periodic workflow. A
//! version that cannot run on the canary stops there and the canary goes back to the version
//! before; a healthy one proceeds stage by stage until every edge runs it; a pause holds a
//! rollout at its stage until a resume. Timings are printed, never asserted.

use std::time::{Duration, Instant};

use rhizome_e2e::process::{
    LogsOnPanic, Running, cloud_and_site, json_if_ok, ok, run_on, start_on_with, stop,
};
use rhizome_e2e::wait_until;
use serde_json::Value;

fn workflow(description: &str, model: Option<&str>) -> String {
    let step = match model {
        Some(model) => format!(
            "  - id: score\n    agent: onnx\n    inputs: [input]\n    config:\n      model: {model}\n      input: x\n      output: y\n      shape: [1, 4]\n      field: x\n"
        ),
        None => "  - id: pass\n    agent: noop\n".to_owned(),
    };
    format!(
        "id: probe\ndescription: {description}\ntrigger:\n  every: 300ms\ntarget:\n  tags: [sensor]\nsteps:\n{step}"
    )
}

fn rollout_status(node: &Running) -> Value {
    ok(run_on(node, &["rollout", "status", "probe", "--json"]))
}

fn version_here(node: &Running) -> u64 {
    ok(run_on(node, &["workflow", "schedule", "--json"]))
        .as_array()
        .and_then(|all| all.iter().find(|w| w["workflow"] == "probe").cloned())
        .and_then(|w| w["version"].as_u64())
        .unwrap_or(0)
}

fn start_rollout(cloud: &Running, file: &std::path::Path, extra: &[&str]) -> Value {
    let mut args = vec![
        "rollout",
        "start",
        "probe",
        "--file",
        file.to_str().unwrap(),
        "--gate-runs",
        "2",
        "--gate-soak",
        "1s",
        "--json",
    ];
    args.extend_from_slice(extra);
    ok(run_on(cloud, &args))
}

#[test]
fn rollouts_stop_at_a_failing_canary_and_go_through_when_healthy() {
    let tmp = tempfile::tempdir().unwrap();
    let _logs = LogsOnPanic(
        ["cloud", "e1", "e2", "e3"]
            .iter()
            .map(|n| tmp.path().join(n))
            .collect(),
    );
    let [cloud, e1, e2, e3]: [Running; 4] =
        cloud_and_site(tmp.path(), &["e1", "e2", "e3"], &["--tag", "sensor"])
            .try_into()
            .unwrap_or_else(|_| unreachable!());
    let edges = [&e1, &e2, &e3];
    let file = tmp.path().join("probe.yaml");

    // Version 1 everywhere at once.
    version_1_everywhere(&cloud, &edges, &file);

    // A rollout that is not permitted without a first version, and bad stages, are refused.
    let bad = run_on(
        &cloud,
        &[
            "rollout",
            "start",
            "probe",
            "--file",
            file.to_str().unwrap(),
            "--stages",
            "1,0%",
        ],
    );
    assert!(!bad.status.success());
    let said = String::from_utf8_lossy(&bad.stderr);
    assert!(said.contains("stage `0%`"), "{said}");

    // Version 2 cannot run (its model is missing): the canary fails and goes back, the others
    // never leave version 1.
    std::fs::write(&file, workflow("broken", Some("/no/such/model.onnx"))).unwrap();
    let started = Instant::now();
    let stored = start_rollout(&cloud, &file, &["--stages", "1,100%"]);
    assert_eq!(stored["version"], 2);
    let (status, canary) = aborted_at_the_canary(&cloud, "the rollout of version 2 aborts", 30);
    eprintln!("failing canary to aborted: {:?}", started.elapsed());
    assert_eq!(canary["report"]["state"], "failed", "{status}");
    assert!(
        canary["report"]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("model"),
        "{canary}"
    );
    wait_until(
        "every edge runs version 1 again",
        Duration::from_secs(20),
        || edges.iter().all(|e| version_here(e) == 1),
    );
    eprintln!(
        "failing canary to every edge on version 1: {:?}",
        started.elapsed()
    );
    let others_took = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["stage"] != 0)
        .any(|n| n["report"]["since_ms"].as_i64().unwrap_or(0) > 0);
    assert!(
        !others_took,
        "a node past the canary took version 2: {status}"
    );

    // Version 3 is healthy: the canary first, then everyone.
    std::fs::write(&file, workflow("healthy", None)).unwrap();
    let started = Instant::now();
    let stored = start_rollout(&cloud, &file, &["--stages", "1,100%"]);
    assert_eq!(stored["version"], 3);
    let mut first_stage_done = None;
    wait_until(
        "the rollout of version 3 completes",
        Duration::from_secs(40),
        || {
            let status = rollout_status(&cloud);
            if first_stage_done.is_none() && status["status"]["stage"] == 1 {
                first_stage_done = Some(started.elapsed());
            }
            status["status"]["state"] == "completed"
        },
    );
    eprintln!(
        "healthy rollout: stage 2 started after {first_stage_done:?}, completed after {:?}",
        started.elapsed()
    );
    wait_until("every edge runs version 3", Duration::from_secs(20), || {
        edges.iter().all(|e| version_here(e) == 3)
    });
    // The transition, from the nodes' own reports: the canary's gate was met at its switch
    // plus the soak (its two runs take 0.6 s, less than the 1 s soak); the next stage's nodes
    // switched at their `since_ms`.
    let status = rollout_status(&cloud);
    let since = |stage: u64| -> Vec<i64> {
        status["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["stage"] == stage)
            .filter_map(|n| n["report"]["since_ms"].as_i64())
            .collect()
    };
    if let (Some(canary), Some(next)) = (since(0).first().copied(), since(1).into_iter().min()) {
        eprintln!(
            "stage transition after the canary's gate was met: {} ms",
            next - (canary + 1_000)
        );
    }

    // Version 4, declared as a rollout in its file and applied as any version, paused at
    // once: only the canary takes it until a resume.
    let declared = format!(
        "{}rollout:\n  stages: 1,100%\n  gate_runs: 2\n  gate_soak: 1s\n",
        workflow("paused", None)
    );
    std::fs::write(&file, declared).unwrap();
    let applied = ok(run_on(
        &cloud,
        &["workflow", "apply", file.to_str().unwrap(), "--json"],
    ));
    assert_eq!(applied["version"], 4, "{applied}");
    assert_eq!(applied["rollout"]["baseline"], 3, "{applied}");
    assert_eq!(applied["rollout"]["gate"]["soak_ms"], 1000, "{applied}");
    ok(run_on(&cloud, &["rollout", "pause", "probe"]));
    std::thread::sleep(Duration::from_secs(5));
    let status = rollout_status(&cloud);
    assert_eq!(status["status"]["state"], "paused", "{status}");
    let on_4 = edges.iter().filter(|e| version_here(e) == 4).count();
    assert!(
        on_4 <= 1,
        "{on_4} edges took version 4 while paused at the canary"
    );
    let refused = run_on(&e1, &["rollout", "resume", "probe"]);
    assert!(!refused.status.success(), "an edge resumed a rollout");
    ok(run_on(&cloud, &["rollout", "resume", "probe"]));
    wait_until(
        "the resumed rollout completes",
        Duration::from_secs(40),
        || rollout_status(&cloud)["status"]["state"] == "completed",
    );
    wait_until("every edge runs version 4", Duration::from_secs(20), || {
        edges.iter().all(|e| version_here(e) == 4)
    });

    for node in [e3, e2, e1, cloud] {
        stop(node);
    }
}

/// A rollout gated on alerts: version 2 runs fine but its output makes a critical fleet rule
/// fire on the canary, which fails it there and aborts the rollout; an alert that fired before
/// the switch (a warning rule firing everywhere from the start) does not count.
#[test]
fn an_alert_after_the_switch_fails_the_canary_of_a_rollout_gated_on_alerts() {
    let tmp = tempfile::tempdir().unwrap();
    let (_logs, [cloud, e1, e2]) = cloud_and_two_edges(tmp.path());
    let rules = tmp.path().join("rules.toml");
    std::fs::write(
        &rules,
        "[[rules]]\nname = \"hot\"\nwhen = \"output:probe.triggered == true\"\nseverity = \"critical\"\n\n\
         [[rules]]\nname = \"always\"\nwhen = \"disk_free > 1B\"\nseverity = \"critical\"\n",
    )
    .unwrap();
    ok(run_on(
        &cloud,
        &["alerts", "apply", rules.to_str().unwrap()],
    ));
    let file = tmp.path().join("probe.yaml");
    version_1_everywhere(&cloud, &[&e1, &e2], &file);
    wait_until(
        "the rule that fires everywhere fires on both edges",
        Duration::from_secs(30),
        || {
            [&e1, &e2].iter().all(|e| {
                ok(run_on(e, &["alerts", "--json"]))["alerts"]
                    .as_array()
                    .is_some_and(|a| {
                        a.iter()
                            .any(|a| a["rule"] == "always" && a["state"] == "firing")
                    })
            })
        },
    );

    let hot = "id: probe\ndescription: hot\ntrigger:\n  every: 300ms\ntarget:\n  tags: [sensor]\n\
               steps:\n  - id: read\n    agent: sensor\n    config: {seed: 3}\n  - id: hot\n    \
               agent: threshold\n    inputs: [read]\n    config: {field: value, below: 1000000000}\n";
    std::fs::write(&file, hot).unwrap();
    let started = Instant::now();
    ok(run_on(
        &cloud,
        &[
            "rollout",
            "start",
            "probe",
            "--file",
            file.to_str().unwrap(),
            "--stages",
            "1,100%",
            "--gate-runs",
            "2",
            "--gate-soak",
            "30s",
            "--gate-alerts",
            "critical",
        ],
    ));
    let (status, canary) =
        aborted_at_the_canary(&cloud, "the alert on the canary aborts the rollout", 60);
    eprintln!("alert on the canary to aborted: {:?}", started.elapsed());
    let reason = canary["report"]["reason"].as_str().unwrap_or_default();
    assert_eq!(canary["report"]["state"], "failed", "{status}");
    assert!(
        reason.contains("hot") && !reason.contains("always"),
        "{canary}"
    );
}

/// The cloud started the rollout and went away: the edges decide it among themselves from the
/// replicated plan and their reports, stage by stage, and the cloud finds it completed when it
/// returns.
#[test]
fn a_rollout_goes_on_while_the_cloud_that_started_it_is_away() {
    let tmp = tempfile::tempdir().unwrap();
    let (_logs, [cloud, e1, e2]) = cloud_and_two_edges(tmp.path());
    let edges = [&e1, &e2];
    let file = tmp.path().join("probe.yaml");
    version_1_everywhere(&cloud, &edges, &file);

    std::fs::write(&file, workflow("second", None)).unwrap();
    // A soak long enough that the cloud is gone before the canary's gate is met.
    ok(run_on(
        &cloud,
        &[
            "rollout",
            "start",
            "probe",
            "--file",
            file.to_str().unwrap(),
            "--stages",
            "1,100%",
            "--gate-runs",
            "2",
            "--gate-soak",
            "4s",
        ],
    ));
    wait_until("both edges hold the plan", Duration::from_secs(20), || {
        edges.iter().all(|e| {
            json_if_ok(run_on(e, &["rollout", "status", "probe", "--json"]))["rollout"] == "probe@2"
        })
    });
    let (cloud_dir, cloud_addr) = (cloud.dir.clone(), cloud.quic.clone());
    stop(cloud);
    let away = Instant::now();
    let away_ms = wall_ms();
    let mut status = Value::Null;
    wait_until(
        "the edges complete the rollout without the cloud",
        Duration::from_secs(60),
        || {
            status = rollout_status(&e1);
            status["status"]["state"] == "completed"
        },
    );
    eprintln!(
        "cloud away -> rollout completed by the edges: {:?}",
        away.elapsed()
    );
    assert!(edges.iter().all(|e| version_here(e) == 2), "{status}");
    let canary = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["stage"] == 0)
        .unwrap();
    assert!(
        canary["report"]["since_ms"].as_i64().unwrap() + 4_000 > away_ms,
        "the canary's gate was met before the cloud left: {canary}"
    );

    let cloud = start_on_with(&cloud_dir, &cloud_addr, &[], &["--role", "cloud"]);
    wait_until(
        "the returning cloud sees the rollout completed",
        Duration::from_secs(30),
        || rollout_status(&cloud)["status"]["state"] == "completed",
    );
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Waits (`what`, up to `secs`) until the rollout of `probe` is aborted as `node` sees it;
/// its status and the canary's row.
fn aborted_at_the_canary(node: &Running, what: &str, secs: u64) -> (Value, Value) {
    let mut status = Value::Null;
    wait_until(what, Duration::from_secs(secs), || {
        status = rollout_status(node);
        status["status"]["state"] == "aborted"
    });
    let canary = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["stage"] == 0)
        .unwrap()
        .clone();
    (status, canary)
}

/// A cloud and edges `e1`, `e2` tagged `sensor`, with their logs printed if the test fails.
fn cloud_and_two_edges(root: &std::path::Path) -> (LogsOnPanic, [Running; 3]) {
    let logs = LogsOnPanic(["cloud", "e1", "e2"].iter().map(|n| root.join(n)).collect());
    let nodes = cloud_and_site(root, &["e1", "e2"], &["--tag", "sensor"])
        .try_into()
        .unwrap_or_else(|_| unreachable!());
    (logs, nodes)
}

/// Version 1 of `probe` applied at the cloud, and run by every one of `edges`.
fn version_1_everywhere(cloud: &Running, edges: &[&Running], file: &std::path::Path) {
    std::fs::write(file, workflow("first", None)).unwrap();
    ok(run_on(
        cloud,
        &["workflow", "apply", file.to_str().unwrap()],
    ));
    wait_until("every edge runs version 1", Duration::from_secs(20), || {
        edges.iter().all(|e| version_here(e) == 1)
    });
}
