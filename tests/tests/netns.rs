//! Three nodes on one LAN, each in a network namespace of its own, plugged by a veth pair into a
//! switch (a bridge in a fourth namespace), with mDNS only on that cable and no `--peer`: real
//! packets, discovery by mDNS alone (lab: tests/src/netns.rs).
//!
//! - Membership: they find each other, notice a partition (the cable unplugged at the switch)
//!   and reconnect when it heals, and notice a kill -9 and a restart.
//! - Document sync: a workflow applied on one node converges on all; edits made on both sides of
//!   a partition survive the heal on all three; a node killed with SIGKILL while 200 workflows
//!   stream to it restarts and catches up, with nothing lost.
//! - Loss: with 10 % of the frames dropped at random each way on one cable (nft `numgen` in the
//!   switch), concurrent writes on two nodes still converge everywhere (QUIC retransmits).
//!
//! Timings are printed, never asserted (BENCHMARKS.md "Network namespaces"). Needs root and
//! iproute2 (loss also nft); skipped with a message otherwise.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rhizome_e2e::netns::{Lab, Lan, start_node};
use rhizome_e2e::process::{LogsOnPanic, Running, init_in, ok, run_in, run_on};
use rhizome_e2e::wait_until;
use rhizome_e2e::workflows::LINE;
use serde_json::Value;

const NODES: usize = 3;

/// Data dirs of `NODES` nodes of one mesh, initialised; the first made the mesh.
fn init_nodes(tmp: &Path) -> Vec<PathBuf> {
    let dirs: Vec<PathBuf> = (0..NODES).map(|i| tmp.join(format!("n{i}"))).collect();
    let mesh = dirs[0].join("mesh");
    for (i, dir) in dirs.iter().enumerate() {
        // The last node applies a workflow of its own while cut off: it needs `control`.
        let control: &[&str] = if i + 1 == NODES { &["--control"] } else { &[] };
        init_in(
            dir,
            &format!("n{i}"),
            (i > 0).then_some(mesh.as_path()),
            control,
        );
    }
    dirs
}

/// Starts node `i` on its host of `lan`, mDNS on its cable only, no `--peer`.
fn start(lan: &Lan, i: usize, dir: &Path) -> Running {
    start_node(&lan.hosts[i], Some(&lan.cables[i]), dir, &[], &[])
}

/// Connected peers, or 0 while the node cannot answer (starting, killed).
fn connected_or_0(node: &Running) -> usize {
    let out = run_on(node, &["peers", "--json"]);
    if !out.status.success() {
        return 0;
    }
    serde_json::from_slice::<Value>(&out.stdout)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .map_or(0, |peers| {
            peers.iter().filter(|p| p["state"] == "connected").count()
        })
}

fn full_mesh(nodes: &[Running]) -> bool {
    nodes.iter().all(|n| connected_or_0(n) == NODES - 1)
}

/// Applies workflow text through the node in namespace `netns` on `dir`.
fn apply_in(netns: &str, dir: &Path, name: &str, text: &str) {
    let file = dir.with_extension(format!("{name}.yaml"));
    std::fs::write(&file, text).unwrap();
    ok(run_in(
        Some(netns),
        dir,
        &["workflow", "apply", file.to_str().unwrap()],
    ));
}

fn apply(node: &Running, name: &str, text: &str) {
    apply_in(node.netns.as_deref().unwrap(), &node.dir, name, text);
}

/// The workflow as a node has it, or `None` if it has not arrived.
fn workflow(node: &Running, id: &str) -> Option<Value> {
    let out = run_on(node, &["workflow", "show", id, "--json"]);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).unwrap())
}

/// Ids of the workflows a node holds.
fn workflow_ids(node: &Running) -> Vec<String> {
    let out = run_on(node, &["workflow", "list", "--json"]);
    ok(out)
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|w| w["id"].as_str().map(str::to_owned))
        .collect()
}

/// Workflow documents whose id starts with `prefix` in a node's store: through the node in
/// `netns` while it runs, else from the store. Cheaper to poll than [`workflow_ids`], which
/// reads every workflow.
fn workflow_docs(netns: Option<&str>, dir: &Path, prefix: &str) -> usize {
    let out = run_in(netns, dir, &["doc", "list", "--json"]);
    if !out.status.success() {
        return 0;
    }
    let prefix = format!("workflow/{prefix}");
    serde_json::from_slice::<Value>(&out.stdout)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter(|d| d["name"].as_str().is_some_and(|n| n.starts_with(&prefix)))
        .count()
}

/// [`workflow_docs`] of a running node.
fn docs_on(node: &Running, prefix: &str) -> usize {
    workflow_docs(node.netns.as_deref(), &node.dir, prefix)
}

/// Every workflow of `prefix` on `node` reads back whole, `expected` of them.
fn assert_workflows(node: &Running, prefix: &str, expected: usize) {
    let ids = workflow_ids(node);
    let found = ids.iter().filter(|id| id.starts_with(prefix)).count();
    assert_eq!(found, expected, "{} holds {ids:?}", node.dir.display());
}

fn step_config(workflow: &Value, step: &str) -> Value {
    serde_json::from_str(workflow["steps"][step]["config"].as_str().unwrap()).unwrap()
}

/// `rhizome sync` on a node: converged with both other nodes.
fn assert_converged(node: &Running) {
    let report = ok(run_on(node, &["sync", "--timeout", "20s", "--json"]));
    assert_eq!(report["converged"], true, "{report}");
    assert_eq!(
        report["peers"].as_array().map(Vec::len),
        Some(NODES - 1),
        "{report}"
    );
}

/// A workflow of its own for bulk writes.
fn bulk(prefix: &str, i: usize) -> String {
    LINE.replace("id: line", &format!("id: {prefix}-{i}"))
}

#[test]
fn namespaced_nodes_discover_partition_heal_and_survive_a_kill() {
    let Some(mut lab) = Lab::new() else { return };
    let lan = lab.lan("m", "10.77.0", NODES);
    let tmp = tempfile::tempdir().unwrap();
    let dirs = init_nodes(tmp.path());
    let _logs = LogsOnPanic(dirs.clone());
    let mut nodes: Vec<Running> = (0..NODES).map(|i| start(&lan, i, &dirs[i])).collect();
    let took = wait_until("discovery by mDNS alone", Duration::from_secs(20), || {
        full_mesh(&nodes)
    });
    eprintln!("netns: full mesh of {NODES} by mDNS alone after {took:?}");

    // Partition: node 2's cable is unplugged at the switch.
    lab.set_plugged(&lan.cables[2], false);
    let took = wait_until("partition noticed", Duration::from_secs(8), || {
        connected_or_0(&nodes[0]) == 1 && connected_or_0(&nodes[2]) == 0
    });
    eprintln!("netns: partition noticed after {took:?}");
    lab.set_plugged(&lan.cables[2], true);
    let took = wait_until("partition healed", Duration::from_secs(10), || {
        full_mesh(&nodes)
    });
    eprintln!("netns: full mesh again {took:?} after the heal");

    // kill -9 and restart.
    nodes[1].kill();
    let took = wait_until("kill noticed", Duration::from_secs(8), || {
        connected_or_0(&nodes[0]) == 1 && connected_or_0(&nodes[2]) == 1
    });
    eprintln!("netns: kill -9 noticed after {took:?}");
    nodes[1] = start(&lan, 1, &dirs[1]);
    let took = wait_until("restarted node rejoins", Duration::from_secs(15), || {
        full_mesh(&nodes)
    });
    eprintln!("netns: restarted node rejoined after {took:?}");
}

#[test]
fn namespaced_nodes_sync_documents_through_a_partition_and_a_kill_mid_sync() {
    let Some(mut lab) = Lab::new() else { return };
    let lan = lab.lan("s", "10.77.0", NODES);
    let tmp = tempfile::tempdir().unwrap();
    let dirs = init_nodes(tmp.path());
    let _logs = LogsOnPanic(dirs.clone());
    let mut nodes: Vec<Running> = (0..NODES).map(|i| start(&lan, i, &dirs[i])).collect();
    wait_until("discovery by mDNS alone", Duration::from_secs(20), || {
        full_mesh(&nodes)
    });

    // Applied on node 0, the workflow reaches the others.
    apply(&nodes[0], "base", LINE);
    let took = wait_until(
        "the workflow reaches every node",
        Duration::from_secs(10),
        || nodes[1..].iter().all(|n| workflow(n, "line").is_some()),
    );
    eprintln!("netns: a workflow applied on node 0 was readable on both others after {took:?}");
    for node in &nodes {
        assert_converged(node);
    }

    // Node 2 is cut off; nodes 0 and 2 apply versions that edit different steps meanwhile.
    lab.set_plugged(&lan.cables[2], false);
    wait_until("partition noticed", Duration::from_secs(8), || {
        connected_or_0(&nodes[0]) == 1 && connected_or_0(&nodes[2]) == 0
    });
    apply(&nodes[0], "a", &LINE.replace("{seed: 1}", "{seed: 2}"));
    apply(
        &nodes[2],
        "c",
        &LINE.replace("threshold: 3}", "threshold: 4}"),
    );
    assert_eq!(
        step_config(&workflow(&nodes[1], "line").unwrap(), "read")["seed"],
        2
    );
    lab.set_plugged(&lan.cables[2], true);
    // Definitions are never merged: node 2's version (applied last) wins whole everywhere.
    let took = wait_until(
        "node 2's version everywhere",
        Duration::from_secs(15),
        || {
            nodes.iter().all(|n| {
                workflow(n, "line").is_some_and(|w| {
                    step_config(&w, "read")["seed"] == 1
                        && step_config(&w, "score")["threshold"] == 4
                })
            })
        },
    );
    eprintln!(
        "netns: versions from both sides of a partition resolved alike everywhere {took:?} after the heal"
    );
    // The edits can meet through node 1 before node 2 has redialled node 0 (its back-off grew
    // while cut off): convergence with both peers is asked once all three are connected.
    wait_until("full mesh after the heal", Duration::from_secs(15), || {
        full_mesh(&nodes)
    });
    for node in &nodes {
        assert_converged(node);
    }

    // 200 workflows are applied on node 0; node 1 is killed with SIGKILL while they stream to
    // it, and restarted while they are still being applied.
    const BULK: usize = 200;
    let applied = Arc::new(AtomicUsize::new(0));
    let writing = Instant::now();
    let writer = {
        let (ns, dir, applied) = (
            nodes[0].netns.clone().unwrap(),
            nodes[0].dir.clone(),
            applied.clone(),
        );
        std::thread::spawn(move || {
            for i in 0..BULK {
                apply_in(&ns, &dir, "bulk", &bulk("bulk", i));
                applied.store(i + 1, Ordering::SeqCst);
            }
        })
    };
    let count = |node: &Running| docs_on(node, "bulk-");
    wait_until("node 1 receiving", Duration::from_secs(30), || {
        count(&nodes[1]) >= 20
    });
    nodes[1].kill();
    let killed_at = applied.load(Ordering::SeqCst);
    let held = workflow_docs(None, &dirs[1], "bulk-");
    wait_until(
        "more applied while node 1 is down",
        Duration::from_secs(30),
        || applied.load(Ordering::SeqCst) >= killed_at + 30 || writer.is_finished(),
    );
    nodes[1] = start(&lan, 1, &dirs[1]);
    let restarted_at = applied.load(Ordering::SeqCst);
    writer.join().unwrap();
    eprintln!(
        "netns: node 1 killed with {held} of the {killed_at} bulk workflows applied so far, \
         restarted at {restarted_at} of {BULK}; the {BULK} applies took {:?}",
        writing.elapsed()
    );
    assert!(
        restarted_at < BULK,
        "the writer finished before node 1 restarted: the restart was not mid-sync"
    );
    let started = Instant::now();
    wait_until("every workflow everywhere", Duration::from_secs(40), || {
        nodes.iter().all(|n| count(n) == BULK)
    });
    eprintln!(
        "netns: all {BULK} workflows on every node {:?} after the writer finished",
        started.elapsed()
    );
    wait_until(
        "full mesh after the restart",
        Duration::from_secs(15),
        || full_mesh(&nodes),
    );
    for node in &nodes {
        assert_converged(node);
        assert_workflows(node, "bulk-", BULK);
        let resolved = workflow(node, "line").unwrap();
        assert_eq!(step_config(&resolved, "read")["seed"], 1);
        assert_eq!(step_config(&resolved, "score")["threshold"], 4);
    }
}

#[test]
fn namespaced_nodes_converge_over_a_lossy_link() {
    let Some(mut lab) = Lab::new() else { return };
    if !Lab::has_nft() {
        return;
    }
    let lan = lab.lan("l", "10.77.0", NODES);
    let tmp = tempfile::tempdir().unwrap();
    let dirs = init_nodes(tmp.path());
    let _logs = LogsOnPanic(dirs.clone());
    let nodes: Vec<Running> = (0..NODES).map(|i| start(&lan, i, &dirs[i])).collect();
    wait_until("discovery by mDNS alone", Duration::from_secs(20), || {
        full_mesh(&nodes)
    });

    // 10 % loss each way on node 2's cable while nodes 0 and 2 both write.
    const PER_WRITER: usize = 50;
    lab.lossy(&lan.cables[2], 10);
    let started = Instant::now();
    let writers: Vec<_> = [0, 2]
        .into_iter()
        .map(|w| {
            let (ns, dir) = (nodes[w].netns.clone().unwrap(), nodes[w].dir.clone());
            std::thread::spawn(move || {
                for i in 0..PER_WRITER {
                    apply_in(&ns, &dir, "lossy", &bulk(&format!("from-{w}"), i));
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap();
    }
    let total = |node: &Running| docs_on(node, "from-");
    wait_until(
        "every write everywhere over the lossy link",
        Duration::from_secs(40),
        || nodes.iter().all(|n| total(n) == 2 * PER_WRITER),
    );
    for node in &nodes {
        assert_converged(node);
        assert_workflows(node, "from-", 2 * PER_WRITER);
    }
    let dropped = lab.dropped(&lan.cables[2]);
    eprintln!(
        "netns: {} workflows written on two nodes converged on all three through 10 % loss in \
         {:?}; {dropped} frames dropped",
        2 * PER_WRITER,
        started.elapsed()
    );
    assert!(
        dropped > 0,
        "no frame was dropped: the loss rule did not apply"
    );
    lab.lossless(&lan.cables[2]);
}
