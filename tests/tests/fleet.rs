//! Results flow up the hierarchy between real processes: a workflow applied on the cloud peer
//! runs on the edge nodes its target selects, each edge's results reach its site's aggregator
//! and the site's rollups reach the cloud, whose fleet view adds them up. When the aggregator is
//! killed the site re-elects and nothing is lost: once the runs stop, the cloud counts every run
//! that every edge recorded.

use std::path::Path;
use std::time::Duration;

use rhizome_e2e::process::{
    Running, chain, doc_names, init, init_in, ok, own_runs, run, start, start_with, status,
};
use rhizome_e2e::wait_until;
use rhizome_e2e::workflows::probe;

fn apply(dir: &Path, tmp: &Path, yaml: &str) {
    let file = tmp.join("workflow.yaml");
    std::fs::write(&file, yaml).unwrap();
    ok(run(dir, &["workflow", "apply", file.to_str().unwrap()]));
}

/// Runs per node in the cloud's fleet view (from the rollups it holds).
fn fleet_runs(cloud: &Running) -> (u64, usize) {
    let fleet = ok(run(&cloud.dir, &["status", "--fleet", "--json"]));
    (
        fleet["runs"].as_u64().unwrap(),
        fleet["nodes"].as_u64().unwrap() as usize,
    )
}

#[test]
fn results_reach_the_cloud_through_the_site_aggregator_across_a_re_election() {
    let tmp = tempfile::tempdir().unwrap();
    let (c_dir, e1_dir, e2_dir) = (
        tmp.path().join("cloud"),
        tmp.path().join("e1"),
        tmp.path().join("e2"),
    );
    init(&c_dir, "cloud", None);
    let mesh = c_dir.join("mesh");
    let edge = ["--zone", "site-a", "--tag", "sensor"];
    init_in(&e1_dir, "e1", Some(&mesh), &edge);
    init_in(&e2_dir, "e2", Some(&mesh), &edge);

    let cloud = start_with(&c_dir, &[], &["--role", "cloud"]);
    let mut e1 = start(&e1_dir, &[&cloud.quic]);
    let mut e2 = start(&e2_dir, &[&cloud.quic, &e1.quic]);
    let ids = [&e1, &e2].map(|n| status(n)["node_id"].as_str().unwrap().to_owned());
    wait_until("the site elected", Duration::from_secs(15), || {
        let chains = [chain(&status(&e1)), chain(&status(&e2))];
        chains[0] == chains[1] && chains[0].len() == 2 && ids.contains(&chains[0][0].1)
    });

    // Applied on the cloud, which the target does not select: only the edges run it.
    apply(&c_dir, tmp.path(), &probe("{every: 200ms}"));
    let took = wait_until(
        "both edges' runs reach the cloud",
        Duration::from_secs(20),
        || fleet_runs(&cloud).1 == 2,
    );
    eprintln!("runs of both edges were in the cloud's fleet view after {took:?}");
    let at_cloud = ok(run(&c_dir, &["results", "--workflow", "probe", "--json"]));
    assert_eq!(
        at_cloud,
        serde_json::json!([]),
        "the cloud ran or received raw results"
    );

    // The cloud holds rollups, not the raw results of the edges.
    let docs = ok(run(&c_dir, &["doc", "list", "--json"]));
    let names = doc_names(&docs);
    assert!(
        names.iter().any(|n| n.starts_with("rollup/site-a/")),
        "{names:?}"
    );
    assert!(
        !names.iter().any(|n| n.starts_with("results/")),
        "{names:?}"
    );

    // Kill the site's aggregator: the other edge takes over and the runs keep arriving.
    let aggregator = chain(&status(&e1))[0].1.clone();
    let (dead_dir, survivor_id) = if aggregator == ids[0] {
        e1.child.kill().unwrap();
        e1.child.wait().unwrap();
        (e1_dir.clone(), ids[1].clone())
    } else {
        e2.child.kill().unwrap();
        e2.child.wait().unwrap();
        (e2_dir.clone(), ids[0].clone())
    };
    let survivor = if aggregator == ids[0] { &e2 } else { &e1 };
    wait_until("the survivor re-elected", Duration::from_secs(10), || {
        chain(&status(survivor))
            .first()
            .is_some_and(|(_, a)| *a == survivor_id)
    });
    let before = fleet_runs(&cloud).0;
    wait_until(
        "runs keep reaching the cloud",
        Duration::from_secs(20),
        || fleet_runs(&cloud).0 > before + 5,
    );

    // The killed edge comes back; the runs stop; every run recorded anywhere is counted.
    let restarted = start(&dead_dir, &[&cloud.quic, &survivor.quic]);
    if aggregator == ids[0] {
        e1 = restarted;
    } else {
        e2 = restarted;
    }
    apply(&c_dir, tmp.path(), &probe("manual"));
    let took = wait_until(
        "the cloud counts every recorded run",
        Duration::from_secs(30),
        || {
            let recorded =
                own_runs(&e1, "probe", &ids[0]) as usize + own_runs(&e2, "probe", &ids[1]) as usize;
            fleet_runs(&cloud).0 as usize == recorded && recorded > 0
        },
    );
    eprintln!("after the runs stopped, the cloud's counts matched the edges' after {took:?}");
}
