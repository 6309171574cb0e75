//! A site whose switch drops multicast, with real packets between network namespaces (lab:
//! tests/src/netns.rs):
//!
//! ```text
//!   switch "m", 10.80.1.0/24, multicast dropped:
//!   m0 .1 (cloud)   m1 .2   m2 .3   m3 .4   (edges of site-a, mDNS on eth0)
//! ```
//!
//! The edges run mDNS, whose packets the switch drops, and are given only the cloud's address
//! (`--peer`, the README's cloud recipe). They must still meet through the addresses the
//! registry carries and elect one aggregator of site-a between them, and every run of every
//! edge must reach the cloud's counts. Timings are printed, never asserted. Needs root,
//! iproute2 and nft; skipped otherwise.

use std::time::Duration;

use rhizome_e2e::netns::{Lab, start_node};
use rhizome_e2e::process::{
    LogsOnPanic, Running, apply_on, chain, init, init_in, ok, own_runs, run_on, status,
};
use rhizome_e2e::wait_until;
use rhizome_e2e::workflows::probe;

const EDGES: usize = 3;

#[test]
fn edges_that_know_only_the_cloud_elect_one_aggregator_and_every_run_is_counted() {
    if !Lab::has_nft() {
        return;
    }
    let Some(mut lab) = Lab::new() else {
        return;
    };
    let lan = lab.lan("m", "10.80.1", EDGES + 1);
    lab.drop_multicast(&lan.switch);
    let tmp = tempfile::tempdir().unwrap();
    let dirs: Vec<_> = (0..=EDGES)
        .map(|i| {
            tmp.path().join(if i == 0 {
                "cloud".into()
            } else {
                format!("e{i}")
            })
        })
        .collect();
    let _logs = LogsOnPanic(dirs.clone());
    init(&dirs[0], "cloud", None);
    let mesh = dirs[0].join("mesh");
    for (i, dir) in dirs.iter().enumerate().skip(1) {
        init_in(
            dir,
            &format!("e{i}"),
            Some(&mesh),
            &["--zone", "site-a", "--tag", "sensor"],
        );
    }
    let cloud_addr = lan.cables[0].quic();
    let cloud = start_node(&lan.hosts[0], None, &dirs[0], &[], &["--role", "cloud"]);
    let edges: Vec<Running> = (1..=EDGES)
        .map(|i| {
            start_node(
                &lan.hosts[i],
                Some(&lan.cables[i]),
                &dirs[i],
                &[&cloud_addr],
                &[],
            )
        })
        .collect();
    let ids: Vec<String> = edges
        .iter()
        .map(|e| status(e)["node_id"].as_str().unwrap().to_owned())
        .collect();

    let took = wait_until(
        "one aggregator for site-a, the same in every edge's chain",
        Duration::from_secs(60),
        || {
            let chains: Vec<_> = edges.iter().map(|e| chain(&status(e))).collect();
            chains.iter().all(|c| *c == chains[0])
                && chains[0].len() == 2
                && ids.contains(&chains[0][0].1)
        },
    );
    eprintln!("with multicast dropped, site-a had one aggregator after {took:?}");
    assert!(
        lab.multicast_dropped(&lan.switch) > 0,
        "the edges sent no multicast: mDNS was not tried"
    );
    // Each edge reaches the others directly, not only through the cloud.
    for edge in &edges {
        let peers = ok(run_on(edge, &["peers", "--json"]));
        let connected = peers
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["state"] == "connected")
            .count();
        assert_eq!(connected, EDGES, "{}: {peers}", edge.dir.display());
    }

    apply_on(&cloud, &probe("{every: 300ms}"));
    std::thread::sleep(Duration::from_secs(3));
    apply_on(&cloud, &probe("manual"));
    let mut recorded = 0;
    let took = wait_until(
        "the cloud counts every run of every edge",
        Duration::from_secs(60),
        || {
            recorded = edges
                .iter()
                .zip(&ids)
                .map(|(e, id)| own_runs(e, "probe", id))
                .sum::<u64>();
            let fleet = ok(run_on(&cloud, &["status", "--fleet", "--json"]));
            recorded > 0
                && fleet["runs"].as_u64() == Some(recorded)
                && fleet["nodes"].as_u64() == Some(EDGES as u64)
        },
    );
    eprintln!("{recorded} runs, all counted by the cloud {took:?} after the runs stopped");
}
