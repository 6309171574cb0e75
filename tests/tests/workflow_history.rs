//! A workflow's history, rollback and deletion between two real `rhizome start` processes:
//! versions applied on one node are listed on the other with their author and what changed; a
//! rollback makes an earlier definition current on both as a new version, and it runs; a
//! deletion stops a periodic workflow on both, and a new apply brings it back; every bad
//! request is refused with exit 1 and a message naming the problem.

use std::time::Duration;

use rhizome_e2e::process::{
    LogsOnPanic, Running, apply_on, connected, init, init_in, json_if_ok, ok, own_runs, run,
    run_on, start, status, stop,
};
use rhizome_e2e::wait_until;
use serde_json::{Value, json};

/// A manual workflow `line` whose versions differ by their reading's seed.
fn line(seed: u32) -> String {
    format!(
        "
id: line
description: seed {seed}
trigger: manual
steps:
  - id: read
    agent: sensor
    config: {{seed: {seed}}}
"
    )
}

/// A workflow `tick` that runs every second on every node.
const TICK: &str = "
id: tick
trigger: {every: 1s}
steps:
  - id: read
    agent: sensor
    config: {seed: 7}
";

fn history(node: &Running, id: &str) -> Value {
    json_if_ok(run_on(node, &["workflow", "history", id, "--json"]))
}

fn show(node: &Running, id: &str) -> Value {
    json_if_ok(run_on(node, &["workflow", "show", id, "--json"]))
}

fn step_config(workflow: &Value, step: &str) -> Value {
    serde_json::from_str(workflow["steps"][step]["config"].as_str().unwrap()).unwrap()
}

/// Runs a command that must fail with exit 1 and an error naming `expected`.
fn refused(node: &Running, args: &[&str], expected: &str) {
    let out = run_on(node, args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
    assert!(
        stderr.contains(expected),
        "{args:?}: expected `{expected}` in {stderr}"
    );
}

#[test]
fn history_rollback_and_delete_reach_both_nodes() {
    let tmp = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (tmp.path().join("a"), tmp.path().join("b"));
    init(&a_dir, "a", None);
    init(&b_dir, "b", Some(&a_dir.join("mesh")));
    let a = start(&a_dir, &[]);
    let b = start(&b_dir, &[&a.quic]);
    let _logs = LogsOnPanic(vec![a_dir.clone(), b_dir.clone()]);
    for node in [&a, &b] {
        wait_until("a and b connected", Duration::from_secs(15), || {
            connected(node) == 1
        });
    }
    let a_id = status(&a)["node_id"].as_str().unwrap().to_owned();
    let b_id = status(&b)["node_id"].as_str().unwrap().to_owned();

    // Three versions applied on a; b lists all three, newest first, written by a.
    for seed in 1..=3 {
        apply_on(&a, &line(seed));
    }
    wait_until(
        "b holds the three versions",
        Duration::from_secs(20),
        || {
            history(&b, "line")["versions"]
                .as_array()
                .is_some_and(|v| v.len() == 3)
        },
    );
    let listed = history(&b, "line");
    assert_eq!(listed["total"], 3, "{listed}");
    let versions = listed["versions"].as_array().unwrap();
    let numbers: Vec<u64> = versions
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [3, 2, 1], "{listed}");
    for v in versions {
        assert_eq!(v["author"], a_id.as_str(), "{v}");
        assert_eq!(v["author_name"], "a", "{v}");
        assert!(v["at_ms"].as_i64().unwrap() > 0, "{v}");
        assert_eq!(v["concurrent_with"], json!([]), "{v}");
        assert!(v.get("refused").is_none(), "b verifies a's signature: {v}");
    }
    assert_eq!(versions[2]["summary"], "first version");
    assert_eq!(
        versions[1]["summary"], "description changed; step `read` config changed",
        "{listed}"
    );
    let current: Vec<bool> = versions.iter().map(|v| v["current"] == true).collect();
    assert_eq!(current, [true, false, false], "{listed}");
    let text =
        String::from_utf8_lossy(&run_on(&b, &["workflow", "history", "line"]).stdout).into_owned();
    assert!(
        text.contains(&format!("a ({a_id})")) && text.contains("first version"),
        "{text}"
    );
    let limited = json_if_ok(run_on(
        &b,
        &["workflow", "history", "line", "--limit", "1", "--json"],
    ));
    assert_eq!(
        limited["versions"].as_array().map(Vec::len),
        Some(1),
        "{limited}"
    );
    assert_eq!(limited["total"], 3, "{limited}");

    // Rollback to v1 on a: version 4 with v1's definition, current on both nodes.
    let rolled = ok(run_on(
        &a,
        &["workflow", "rollback", "line", "--to", "1", "--json"],
    ));
    assert_eq!(
        (rolled["version"].clone(), rolled["rollback_of"].clone()),
        (json!(4), json!(1))
    );
    for node in [&a, &b] {
        wait_until("version 4 is current", Duration::from_secs(20), || {
            show(node, "line")["version"] == 4
        });
        let shown = show(node, "line");
        assert_eq!(step_config(&shown, "read"), json!({"seed": 1}), "{shown}");
        assert_eq!(shown["state"], "ok", "{shown}");
    }
    let newest = history(&b, "line")["versions"][0].clone();
    assert_eq!(newest["version"], 4);
    assert!(
        newest["summary"]
            .as_str()
            .unwrap()
            .starts_with("rolled back to v1: description changed; step `read` config changed"),
        "{newest}"
    );
    // The scheduler runs what was rolled back to (it takes up a replicated version within
    // its reload period: until then a run may still be of version 3).
    let mut record = Value::Null;
    wait_until("b runs version 4", Duration::from_secs(20), || {
        record = json_if_ok(run_on(&b, &["run", "line", "--json"]));
        record["workflow_version"] == 4
    });
    assert_eq!(record["status"], "succeeded", "{record}");

    // A periodic workflow runs on b until it is deleted on a.
    apply_on(&a, TICK);
    wait_until("b runs tick", Duration::from_secs(30), || {
        own_runs(&b, "tick", &b_id) >= 2
    });
    let deleted = ok(run_on(&a, &["workflow", "delete", "tick", "--json"]));
    assert_eq!(deleted["deleted"], true, "{deleted}");
    let deleted_version = deleted["version"].as_u64().unwrap();
    for node in [&a, &b] {
        wait_until("the deletion is seen", Duration::from_secs(20), || {
            show(node, "tick")["state"] == "deleted"
        });
    }
    // Each scheduler has taken the deletion up once it refuses to run the workflow.
    for node in [&a, &b] {
        wait_until("the scheduler stops tick", Duration::from_secs(20), || {
            let out = run_on(node, &["run", "tick"]);
            !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("was deleted")
        });
    }
    // A run already in flight then finishes and is recorded within moments; after that, no
    // new run starts in the seconds that follow, on either node.
    std::thread::sleep(Duration::from_secs(1));
    let counts = || (own_runs(&a, "tick", &a_id), own_runs(&b, "tick", &b_id));
    let after_deletion = counts();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        counts(),
        after_deletion,
        "runs of a deleted workflow went on (a, b)"
    );
    refused(&b, &["run", "tick"], "was deleted");
    let shown = show(&b, "tick");
    assert_eq!(
        (
            shown["updated_by"].clone(),
            shown["deleted_by_name"].clone()
        ),
        (json!(a_id), json!("a")),
        "{shown}"
    );
    let text =
        String::from_utf8_lossy(&run_on(&b, &["workflow", "show", "tick"]).stdout).into_owned();
    assert!(
        text.contains("was deleted by a (") && text.contains("rollback tick --to 1"),
        "{text}"
    );
    let ids = |listed: Value| -> Vec<(String, String)> {
        listed
            .as_array()
            .unwrap()
            .iter()
            .map(|w| {
                (
                    w["id"].as_str().unwrap().to_owned(),
                    w["state"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    assert_eq!(
        ids(ok(run_on(&b, &["workflow", "list", "--json"]))),
        [("line".to_owned(), "ok".to_owned())]
    );
    assert_eq!(
        ids(ok(run_on(&b, &["workflow", "list", "--all", "--json"]))),
        [
            ("line".to_owned(), "ok".to_owned()),
            ("tick".to_owned(), "deleted".to_owned())
        ]
    );
    // Its results stay.
    assert!(own_runs(&b, "tick", &b_id) >= 2);

    // Bad requests, each refused by name.
    refused(&b, &["workflow", "history", "nope"], "no workflow `nope`");
    refused(
        &a,
        &["workflow", "rollback", "nope", "--to", "1"],
        "no workflow `nope`",
    );
    refused(
        &a,
        &["workflow", "rollback", "line", "--to", "9"],
        "has no version 9: its versions are 1 to 4",
    );
    refused(
        &a,
        &["workflow", "rollback", "line", "--to", "1"],
        "version 1 of workflow `line` is already current (as version 4)",
    );
    refused(
        &a,
        &["workflow", "rollback", "line", "--to", "4"],
        "version 4 of workflow `line` is already current",
    );
    refused(&a, &["workflow", "delete", "nope"], "no workflow `nope`");
    refused(&a, &["workflow", "delete", "tick"], "already deleted");
    let tombstone = deleted_version.to_string();
    refused(
        &a,
        &["workflow", "rollback", "tick", "--to", &tombstone],
        "is its deletion",
    );

    // A new apply of the same id brings it back, as a higher version, on both nodes.
    apply_on(&a, TICK);
    for node in [&a, &b] {
        wait_until("tick is back", Duration::from_secs(20), || {
            let shown = show(node, "tick");
            shown["state"] == "ok" && shown["version"].as_u64() > Some(deleted_version)
        });
    }
    let back_from = own_runs(&b, "tick", &b_id);
    wait_until("b runs tick again", Duration::from_secs(30), || {
        own_runs(&b, "tick", &b_id) > back_from
    });
    let newest = history(&b, "tick")["versions"][0].clone();
    assert_eq!(
        newest["summary"],
        format!("applied after the deletion in v{deleted_version}"),
        "{newest}"
    );
}

/// Two nodes apply versions while apart: once they meet, both list both versions, each marked
/// as concurrent with the other, and a rollback to that number must name its writer.
#[test]
fn versions_applied_apart_are_listed_as_concurrent_on_both_nodes() {
    let tmp = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (tmp.path().join("a"), tmp.path().join("b"));
    init(&a_dir, "a", None);
    // b applies a version of its own while apart: it needs `control`.
    init_in(&b_dir, "b", Some(&a_dir.join("mesh")), &["--control"]);
    let a = start(&a_dir, &[]);
    let b = start(&b_dir, &[&a.quic]);
    let _logs = LogsOnPanic(vec![a_dir.clone(), b_dir.clone()]);
    wait_until("a and b connected", Duration::from_secs(15), || {
        connected(&a) == 1
    });
    apply_on(&a, &line(1));
    wait_until("b holds version 1", Duration::from_secs(20), || {
        history(&b, "line")["total"] == 1
    });
    let b_id = status(&b)["node_id"].as_str().unwrap().to_owned();

    // Stopped, not killed, so that b's store holds version 1 durably before b writes over it.
    stop(b);
    wait_until("b declared down", Duration::from_secs(10), || {
        connected(&a) == 0
    });
    apply_on(&a, &line(2));
    let file = tmp.path().join("from-b.yaml");
    std::fs::write(&file, line(3)).unwrap();
    ok(run(&b_dir, &["workflow", "apply", file.to_str().unwrap()]));
    let b = start(&b_dir, &[&a.quic]);
    for node in [&a, &b] {
        wait_until(
            "both versions on both nodes",
            Duration::from_secs(30),
            || history(node, "line")["total"] == 3,
        );
        let listed = history(node, "line");
        let versions = listed["versions"].as_array().unwrap();
        let twos: Vec<&Value> = versions.iter().filter(|v| v["version"] == 2).collect();
        assert_eq!(twos.len(), 2, "{listed}");
        for (v, other) in [(twos[0], twos[1]), (twos[1], twos[0])] {
            assert_eq!(
                v["concurrent_with"],
                json!([{"version": 2, "author": other["author"]}]),
                "{listed}"
            );
        }
        assert_eq!(
            twos.iter().filter(|v| v["current"] == true).count(),
            1,
            "last_write makes one of them current: {listed}"
        );
        assert_eq!(versions[2]["version"], 1, "{listed}");
        assert_eq!(versions[2]["concurrent_with"], json!([]), "{listed}");
    }

    refused(
        &a,
        &["workflow", "rollback", "line", "--to", "2"],
        "was written concurrently by",
    );
    // Either of the two may be current; rolling back to the one that is not is a change.
    let listed = history(&a, "line");
    let other = listed["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["version"] == 2 && v["current"] == false)
        .unwrap()["author"]
        .as_str()
        .unwrap()
        .to_owned();
    let by = if other == b_id { "b" } else { "a" };
    let rolled = ok(run_on(
        &a,
        &[
            "workflow", "rollback", "line", "--to", "2", "--by", by, "--json",
        ],
    ));
    assert_eq!(rolled["version"], 3, "{rolled}");
    wait_until("b has the rollback", Duration::from_secs(20), || {
        history(&b, "line")["total"] == 4
    });
    let newest = history(&b, "line")["versions"][0].clone();
    let summary = newest["summary"].as_str().unwrap();
    assert!(
        summary.starts_with("rolled back to v2") && summary.contains("replaces concurrent v2"),
        "{newest}"
    );
    assert_eq!(newest["current"], true, "{newest}");
}
