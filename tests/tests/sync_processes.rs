//! Document sync between real `rhizome start` processes on loopback: a workflow applied on one
//! node reaches the others; edits made on two nodes while they were cut off both survive the
//! merge on all three; a node killed with SIGKILL catches up on restart; a reconnect between
//! nodes in sync costs a few hundred bytes; a node of another mesh learns nothing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rhizome_e2e::process::{
    Running, connected, doc_names, init, init_in, ok, peers, run, start, start_on, stop,
};
use rhizome_e2e::wait_until;
use rhizome_e2e::workflows::LINE;
use serde_json::Value;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn apply(dir: &Path, file: &Path) {
    ok(run(dir, &["workflow", "apply", file.to_str().unwrap()]));
}

/// The workflow as a node has it, or `None` if it has not arrived.
fn workflow(dir: &Path, id: &str) -> Option<Value> {
    let out = run(dir, &["workflow", "show", id, "--json"]);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).unwrap())
}

fn step_config(workflow: &Value, step: &str) -> Value {
    serde_json::from_str(workflow["steps"][step]["config"].as_str().unwrap()).unwrap()
}

/// Replication bytes (both directions) with every connected peer, as the node counts them.
fn sync_bytes(node: &Running) -> u64 {
    peers(node)
        .iter()
        .filter_map(|p| p.get("sync").filter(|s| !s.is_null()))
        .map(|s| s["bytes_sent"].as_u64().unwrap() + s["bytes_received"].as_u64().unwrap())
        .sum()
}

fn sync_now(node: &Running) -> Value {
    ok(run(&node.dir, &["sync", "--timeout", "20s", "--json"]))
}

#[test]
fn three_processes_converge_through_edits_cuts_and_kills() {
    let tmp = tempfile::tempdir().unwrap();
    let dirs: Vec<PathBuf> = ["a", "b", "c"].iter().map(|n| tmp.path().join(n)).collect();
    let (a_dir, b_dir, c_dir) = (&dirs[0], &dirs[1], &dirs[2]);
    init(a_dir, "a", None);
    let mesh = a_dir.join("mesh");
    // b applies a version of its own while cut off: it needs `control`.
    init_in(b_dir, "b", Some(&mesh), &["--control"]);
    init(c_dir, "c", Some(&mesh));

    let a = start(a_dir, &[]);
    let mut b = start(b_dir, &[&a.quic]);
    let mut c = start(c_dir, &[&a.quic, &b.quic]);
    for node in [&a, &b, &c] {
        wait_until("full mesh", Duration::from_secs(10), || {
            connected(node) == 2
        });
    }

    // Applied on a, the workflow reaches c; the mesh registry lists all three everywhere.
    apply(a_dir, &write(tmp.path(), "base.yaml", LINE));
    let took = wait_until("the workflow reaches c", Duration::from_secs(10), || {
        workflow(c_dir, "line").is_some()
    });
    eprintln!("a workflow applied on a was readable on c after {took:?}");
    let report = sync_now(&c);
    assert_eq!(report["converged"], true, "{report}");
    for dir in [a_dir, b_dir, c_dir] {
        let mesh = ok(run(dir, &["doc", "show", "mesh", "--json"]));
        assert_eq!(
            mesh["content"]["nodes"].as_object().unwrap().len(),
            3,
            "{mesh}"
        );
    }

    // b is cut off (stopped); a and b apply versions that edit different steps meanwhile.
    // Stopped, not killed: a kill may come before b's store made the workflow it just received
    // durable (applied sync messages are flushed within 250 ms; its sender still has them), and
    // b's offline edit would then create the workflow anew rather than edit it. c's kill below
    // covers a crash.
    stop(b);
    wait_until("b declared down", Duration::from_secs(6), || {
        connected(&a) == 1
    });
    let from_a = LINE.replace("{seed: 1}", "{seed: 2}");
    let from_b = LINE.replace("threshold: 3}", "threshold: 4}");
    apply(a_dir, &write(tmp.path(), "a.yaml", &from_a));
    apply(b_dir, &write(tmp.path(), "b.yaml", &from_b));
    b = start(b_dir, &[&a.quic, &c.quic]);
    wait_until("b back", Duration::from_secs(10), || connected(&b) == 2);
    let report = sync_now(&b);
    assert_eq!(report["converged"], true, "{report}");
    sync_now(&a);
    sync_now(&c);
    // A definition is one value per version, never merged: every node ends with b's version
    // whole (applied last, so last under `conflict: last_write`), and lists a's beside it.
    for dir in [a_dir, b_dir, c_dir] {
        let resolved = workflow(dir, "line").unwrap();
        assert_eq!(
            (
                step_config(&resolved, "read")["seed"].clone(),
                step_config(&resolved, "score")["threshold"].clone()
            ),
            (serde_json::json!(1), serde_json::json!(4)),
            "b's version, whole, on {dir:?}: {resolved}"
        );
        assert_eq!(
            resolved["competing"].as_array().map(Vec::len),
            Some(2),
            "{resolved}"
        );
    }

    // c is killed with SIGKILL; a keeps changing things; c restarts and catches up.
    c.child.kill().unwrap();
    c.child.wait().unwrap();
    for i in 0..10 {
        let text = LINE.replace("id: line", &format!("id: extra-{i}"));
        apply(a_dir, &write(tmp.path(), &format!("extra-{i}.yaml"), &text));
    }
    c = start(c_dir, &[&a.quic, &b.quic]);
    wait_until("c back", Duration::from_secs(10), || connected(&c) == 2);
    let report = sync_now(&c);
    assert_eq!(report["converged"], true, "{report}");
    for i in 0..10 {
        assert!(workflow(c_dir, &format!("extra-{i}")).is_some());
    }

    // A restart with nothing to catch up (same address, so its registry entry stays as it was)
    // costs summaries only.
    let port = c.quic.clone();
    stop(c);
    c = start_on(c_dir, &port, &[&a.quic, &b.quic]);
    wait_until("c back again", Duration::from_secs(10), || {
        connected(&c) == 2
    });
    let report = sync_now(&c);
    assert_eq!(report["converged"], true, "{report}");
    let bytes = sync_bytes(&c);
    eprintln!("reconnect of a node in sync with two peers: {bytes} bytes of replication frames");
    assert!(bytes < 1_000, "{bytes} bytes for a reconnect in sync");
}

#[test]
fn a_node_of_another_mesh_learns_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (a_dir, s_dir) = (tmp.path().join("a"), tmp.path().join("stranger"));
    init(&a_dir, "a", None);
    init(&s_dir, "stranger", None);
    let a = start(&a_dir, &[]);
    apply(&a_dir, &write(tmp.path(), "base.yaml", LINE));
    let stranger = start(&s_dir, &[&a.quic]);
    // Long enough for several dial attempts.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(connected(&a), 0);
    assert_eq!(connected(&stranger), 0);
    assert!(workflow(&s_dir, "line").is_none());
    let docs = ok(run(&s_dir, &["doc", "list", "--json"]));
    let names = doc_names(&docs);
    assert_eq!(names, vec!["mesh"], "the stranger holds {names:?}");
    let registry = ok(run(&s_dir, &["doc", "show", "mesh", "--json"]));
    assert_eq!(
        registry["content"]["nodes"].as_object().unwrap().len(),
        1,
        "the stranger learnt of other nodes: {registry}"
    );
}

/// Two nodes apply different definitions of the same workflows while apart, then meet. A
/// definition is never merged field by field: under `last_write` the later one stands whole on
/// both, under `control_wins` the one applied on the node that started the mesh (a `control`
/// node) stands although it is older, and under `manual` both are listed, with who wrote them,
/// until someone applies a new version. b is a member: it may write workflows only because the
/// mesh CA lets members do so (`members_write_workflows`).
#[test]
fn concurrent_versions_resolve_by_their_conflict_policy() {
    let tmp = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (tmp.path().join("a"), tmp.path().join("b"));
    init(&a_dir, "a", None);
    init(&b_dir, "b", Some(&a_dir.join("mesh")));
    // Until the CA says otherwise, a member may not apply a workflow.
    let file = write(tmp.path(), "early.yaml", LINE);
    let refused = run(&b_dir, &["workflow", "apply", file.to_str().unwrap()]);
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && why.contains("`control` role"),
        "{why}"
    );
    ok(run(
        &a_dir,
        &["mesh", "policy", "set", "members_write_workflows", "true"],
    ));
    {
        let a = start(&a_dir, &[]);
        let b = start(&b_dir, &[&a.quic]);
        wait_until("b has the mesh's setting", Duration::from_secs(15), || {
            ok(run(&b_dir, &["mesh", "policy", "--json"]))["members_write_workflows"] == true
        });
        stop(b);
        stop(a);
    }
    let id_of = |dir: &Path| -> String {
        ok(run(dir, &["status", "--json"]))["node_id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (a_id, b_id) = (id_of(&a_dir), id_of(&b_dir));
    let policies = ["last_write", "control_wins", "manual"];
    let definition = |policy: &str, seed: u32, threshold: u32| {
        LINE.replace("id: line", &format!("id: w-{policy}\nconflict: {policy}"))
            .replace("{seed: 1}", &format!("{{seed: {seed}}}"))
            .replace("threshold: 3}", &format!("threshold: {threshold}}}"))
    };
    // Neither node runs: each applies to its own store, a first, b a moment later.
    for policy in policies {
        let file = write(
            tmp.path(),
            &format!("a-{policy}.yaml"),
            &definition(policy, 7, 3),
        );
        apply(&a_dir, &file);
    }
    std::thread::sleep(Duration::from_millis(20));
    for policy in policies {
        let file = write(
            tmp.path(),
            &format!("b-{policy}.yaml"),
            &definition(policy, 1, 9),
        );
        apply(&b_dir, &file);
    }
    let a = start(&a_dir, &[]);
    let b = start(&b_dir, &[&a.quic]);
    wait_until("a and b meet", Duration::from_secs(10), || {
        connected(&b) == 1
    });
    sync_now(&b);
    sync_now(&a);
    let pair = |w: &Value| {
        (
            step_config(w, "read")["seed"].as_u64().unwrap(),
            step_config(w, "score")["threshold"].as_u64().unwrap(),
        )
    };
    for dir in [&a_dir, &b_dir] {
        let last = workflow(dir, "w-last_write").unwrap();
        assert_eq!(pair(&last), (1, 9), "b's, written last, whole: {last}");
        assert_eq!(last["updated_by"], b_id.as_str());
        let control = workflow(dir, "w-control_wins").unwrap();
        assert_eq!(
            pair(&control),
            (7, 3),
            "a's, written on control, whole: {control}"
        );
        assert_eq!(control["updated_by"], a_id.as_str());
        assert_eq!(control["by_control"], true);
        let manual = workflow(dir, "w-manual").unwrap();
        assert_eq!(manual["state"], "conflict", "{manual}");
        let competing = manual["competing"].as_array().unwrap();
        let mut writers: Vec<(&str, (u64, u64))> = competing
            .iter()
            .map(|c| (c["updated_by"].as_str().unwrap(), pair(c)))
            .collect();
        writers.sort();
        let mut expected = vec![(a_id.as_str(), (7, 3)), (b_id.as_str(), (1, 9))];
        expected.sort();
        assert_eq!(writers, expected, "{manual}");
        let text = String::from_utf8(ok_text(run(dir, &["workflow", "show", "w-manual"]))).unwrap();
        assert!(
            text.contains("2 versions compete") && text.contains(&format!("{a_id} (control)")),
            "{text}"
        );
    }
    // A new version applied anywhere resolves the manual conflict everywhere.
    let file = write(tmp.path(), "resolve.yaml", &definition("manual", 5, 5));
    apply(&b_dir, &file);
    sync_now(&b);
    for dir in [&a_dir, &b_dir] {
        wait_until("the resolution arrives", Duration::from_secs(10), || {
            workflow(dir, "w-manual").is_some_and(|w| w["state"] == "ok" && pair(&w) == (5, 5))
        });
    }
    drop((a, b));
}

fn ok_text(out: std::process::Output) -> Vec<u8> {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}
