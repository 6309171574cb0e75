//! Hand-overs converge. A cloud and three edges of one site, workflows running on every edge;
//! the site's aggregator is killed with SIGKILL and brought back, three times over, so that the
//! zone changes hands at every kill and again when a former aggregator returns. Afterwards
//! `rhizome sync` exits 0 on every node within the bound the README states (30 s after the last
//! election settles; this test, on a shared machine, allows twice that and prints the time), and
//! the cloud counts every run every edge recorded.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rhizome_e2e::process::{
    LogsOnPanic, Running, chain, init, init_in, ok, own_runs, run, start, start_with, status,
};
use rhizome_e2e::wait_until;
use rhizome_e2e::workflows::probe;

/// Twice what the README promises (every node in sync 30 s after the election settled).
const HAND_OVER_BOUND: Duration = Duration::from_secs(60);

fn apply(dir: &Path, tmp: &Path, yaml: &str) {
    let file = tmp.join("workflow.yaml");
    std::fs::write(&file, yaml).unwrap();
    ok(run(dir, &["workflow", "apply", file.to_str().unwrap()]));
}

fn node_id(node: &Running) -> String {
    status(node)["node_id"].as_str().unwrap().to_owned()
}

/// The aggregator of site-a, when every edge names the same one and the cloud as the root.
fn agreed_aggregator(edges: &[Running], cloud_id: &str) -> Option<String> {
    let chains: Vec<_> = edges.iter().map(|e| chain(&status(e))).collect();
    let first = chains.first()?;
    let agreed = chains.iter().all(|c| c == first)
        && first.len() == 2
        && first[1] == (String::new(), cloud_id.to_owned());
    agreed.then(|| first[0].1.clone())
}

/// `rhizome sync` on a node, with a short timeout: `None` when it said "in sync" with every
/// peer, else what it said.
fn not_in_sync(node: &Running) -> Option<String> {
    let out = run(&node.dir, &["sync", "--timeout", "3s"]);
    (!out.status.success()).then(|| {
        format!(
            "{}: {}{}",
            node.dir.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn after_repeated_kills_of_the_aggregator_every_node_is_in_sync_within_the_bound() {
    let tmp = tempfile::tempdir().unwrap();
    let c_dir = tmp.path().join("cloud");
    let e_dirs: Vec<PathBuf> = (1..=3).map(|i| tmp.path().join(format!("e{i}"))).collect();
    let mut all_dirs = vec![c_dir.clone()];
    all_dirs.extend(e_dirs.iter().cloned());
    let _logs = LogsOnPanic(all_dirs);
    init(&c_dir, "cloud", None);
    let mesh = c_dir.join("mesh");
    for (i, dir) in e_dirs.iter().enumerate() {
        init_in(
            dir,
            &format!("e{}", i + 1),
            Some(&mesh),
            &["--zone", "site-a", "--tag", "sensor"],
        );
    }

    let cloud = start_with(&c_dir, &[], &["--role", "cloud"]);
    let cloud_id = node_id(&cloud);
    let mut edges: Vec<Running> = Vec::new();
    for dir in &e_dirs {
        let mut peers = vec![cloud.quic.clone()];
        peers.extend(edges.iter().map(|e| e.quic.clone()));
        let peers: Vec<&str> = peers.iter().map(String::as_str).collect();
        edges.push(start(dir, &peers));
    }
    let ids: Vec<String> = edges.iter().map(node_id).collect();
    wait_until("site-a elected", Duration::from_secs(20), || {
        agreed_aggregator(&edges, &cloud_id).is_some()
    });
    apply(&c_dir, tmp.path(), &probe("{every: 300ms}"));

    for round in 1..=3 {
        let aggregator = agreed_aggregator(&edges, &cloud_id).unwrap();
        let k = ids.iter().position(|id| *id == aggregator).unwrap();
        edges[k].kill();
        let survivors: Vec<usize> = (0..edges.len()).filter(|&i| i != k).collect();
        wait_until(
            &format!("round {round}: the survivors re-elect"),
            Duration::from_secs(15),
            || {
                let chains: Vec<_> = survivors
                    .iter()
                    .map(|&i| chain(&status(&edges[i])))
                    .collect();
                chains.iter().all(|c| {
                    c.first()
                        .is_some_and(|(_, a)| *a != aggregator && ids.contains(a))
                }) && chains.windows(2).all(|w| w[0] == w[1])
            },
        );
        // Runs go on meanwhile under the new aggregator.
        std::thread::sleep(Duration::from_secs(2));
        let peers = [cloud.quic.clone(), edges[survivors[0]].quic.clone()];
        edges[k] = start(&e_dirs[k], &[&peers[0], &peers[1]]);
        wait_until(
            &format!("round {round}: the returned edge agrees on the aggregator"),
            Duration::from_secs(20),
            || agreed_aggregator(&edges, &cloud_id).is_some(),
        );
        std::thread::sleep(Duration::from_secs(2));
    }

    // The runs stop; from here, every node must report in sync within the bound.
    apply(&c_dir, tmp.path(), &probe("manual"));
    let settled = Instant::now();
    let nodes: Vec<&Running> = std::iter::once(&cloud).chain(edges.iter()).collect();
    let mut pending: Vec<usize> = (0..nodes.len()).collect();
    let mut said = Vec::new();
    while !pending.is_empty() {
        said.clear();
        pending.retain(|&i| match not_in_sync(nodes[i]) {
            Some(text) => {
                said.push(text);
                true
            }
            None => false,
        });
        assert!(
            settled.elapsed() < HAND_OVER_BOUND || pending.is_empty(),
            "not every node in sync within {HAND_OVER_BOUND:?}:\n{}",
            said.join("\n")
        );
    }
    let took = settled.elapsed();
    eprintln!("after three hand-overs, every node was in sync {took:?} after the election settled");
    // Still in sync on a second asking: not one lucky moment.
    for node in &nodes {
        let out = run(&node.dir, &["sync", "--timeout", "10s"]);
        assert!(
            out.status.success(),
            "{}: {}{}",
            node.dir.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Nothing acknowledged was lost on the way up: the cloud counts every recorded run (the
    // site's aggregator folds its rollups every 2 s, after the results arrived).
    let recorded: usize = edges
        .iter()
        .zip(&ids)
        .map(|(e, id)| own_runs(e, "probe", id) as usize)
        .sum();
    assert!(recorded > 0);
    let mut fleet = serde_json::Value::Null;
    wait_until(
        "the cloud counts every recorded run",
        Duration::from_secs(30),
        || {
            fleet = ok(run(&c_dir, &["status", "--fleet", "--json"]));
            fleet["runs"].as_u64() == Some(recorded as u64) && fleet["nodes"].as_u64() == Some(3)
        },
    );
    // A former aggregator keeps the rollups it wrote, and says they are stale; the current
    // aggregator's and the cloud's are not.
    let aggregator = agreed_aggregator(&edges, &cloud_id).unwrap();
    let mut stale_views = 0;
    for (edge, id) in edges.iter().zip(&ids) {
        let view = ok(run(&edge.dir, &["status", "--fleet", "--json"]));
        for zone in view["zones"].as_array().unwrap() {
            let stale = zone["stale"].as_bool().unwrap_or(false);
            assert_eq!(stale, *id != aggregator, "{}: {zone}", edge.dir.display());
            stale_views += usize::from(stale);
        }
    }
    // Every kill hands the zone over, so at least the first aggregator is a former one.
    assert!(stale_views > 0, "no former aggregator held rollups");
    let view = ok(run(&c_dir, &["status", "--fleet", "--json"]));
    assert!(
        view["zones"]
            .as_array()
            .unwrap()
            .iter()
            .all(|z| z["stale"].is_null()),
        "{view}"
    );
    eprintln!(
        "{recorded} runs recorded, {} counted by the cloud; in sync {:?} after the runs stopped",
        fleet["runs"],
        settled.elapsed()
    );
}
