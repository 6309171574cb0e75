//! A site split in two halves that both still reach the cloud, with real packets between
//! network namespaces (lab: tests/src/netns.rs):
//!
//! ```text
//!   switch "s", 10.79.1.0/24:  s0 .1 (cloud)   s1 .2 (edge, site-a)   s2 .3 (edge, site-a)
//! ```
//!
//! The edges' switch ports are then isolated (`bridge link set ... isolated on`): they no
//! longer reach each other, each still reaches the cloud. Each half elects its own aggregator
//! of site-a; the cloud reports the zone split (status, `--json`, its log) and takes the rollups
//! of both claimants, so its fleet view counts every run of both halves during the split, not
//! only one side's until the heal. After the heal, one aggregator again and every node in sync.
//! Timings are printed, never asserted. Needs root and iproute2; skipped otherwise.

use std::time::{Duration, Instant};

use rhizome_e2e::netns::{Lab, start_node};
use rhizome_e2e::process::{
    LogsOnPanic, Running, apply_on, chain, init, init_in, ok, own_runs, run_on, status,
};
use rhizome_e2e::wait_until;
use rhizome_e2e::workflows::probe;

fn fleet_runs(cloud: &Running) -> u64 {
    ok(run_on(cloud, &["status", "--fleet", "--json"]))["runs"]
        .as_u64()
        .unwrap()
}

/// The claimants of site-a the cloud reports, if it reports the zone split.
fn split_claimants(cloud: &Running) -> Vec<String> {
    let view = status(cloud);
    view["hierarchy"]["split"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["zone"] == "site-a")
        .flat_map(|s| s["aggregators"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a["aggregator"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn both_halves_of_a_split_site_reach_the_cloud_during_the_split() {
    let Some(mut lab) = Lab::new() else {
        return;
    };
    let lan = lab.lan("s", "10.79.1", 3);
    let tmp = tempfile::tempdir().unwrap();
    let dirs: Vec<_> = ["cloud", "e1", "e2"]
        .iter()
        .map(|n| tmp.path().join(n))
        .collect();
    let _logs = LogsOnPanic(dirs.clone());
    init(&dirs[0], "cloud", None);
    let mesh = dirs[0].join("mesh");
    for (i, name) in ["e1", "e2"].iter().enumerate() {
        init_in(
            &dirs[i + 1],
            name,
            Some(&mesh),
            &["--zone", "site-a", "--tag", "sensor"],
        );
    }
    let cloud_addr = lan.cables[0].quic();
    let cloud = start_node(&lan.hosts[0], None, &dirs[0], &[], &["--role", "cloud"]);
    let edges: Vec<Running> = (1..3)
        .map(|i| start_node(&lan.hosts[i], None, &dirs[i], &[&cloud_addr], &[]))
        .collect();
    let ids: Vec<String> = edges
        .iter()
        .map(|e| status(e)["node_id"].as_str().unwrap().to_owned())
        .collect();
    wait_until("one aggregator for site-a", Duration::from_secs(30), || {
        let chains: Vec<_> = edges.iter().map(|e| chain(&status(e))).collect();
        chains[0] == chains[1] && chains[0].len() == 2 && ids.contains(&chains[0][0].1)
    });
    assert!(split_claimants(&cloud).is_empty());
    apply_on(&cloud, &probe("{every: 300ms}"));
    wait_until("runs reach the cloud", Duration::from_secs(30), || {
        fleet_runs(&cloud) > 0
    });

    // Split the site: the edges no longer reach each other, each still reaches the cloud.
    for cable in &lan.cables[1..] {
        lab.set_isolated(cable, true);
    }
    let split_at = Instant::now();
    let took = wait_until(
        "the cloud reports site-a split",
        Duration::from_secs(60),
        || {
            let mut claimants = split_claimants(&cloud);
            claimants.sort();
            let mut both = ids.clone();
            both.sort();
            claimants == both
        },
    );
    eprintln!("site split -> reported by the cloud after {took:?}");
    let text = String::from_utf8_lossy(&run_on(&cloud, &["status"]).stdout).to_string();
    assert!(text.contains("zone site-a is split"), "{text}");
    // `/health` says so too (a warning: the cloud itself is healthy), naming both aggregators.
    let health = status(&cloud)["health"].clone();
    let warnings = health["warnings"].to_string();
    assert!(
        warnings.contains("zone site-a is split")
            && ["e1", "e2"].iter().all(|n| warnings.contains(n)),
        "{health}"
    );
    assert_eq!(health["status"], "ok", "{health}");
    for edge in &edges {
        let own = chain(&status(edge));
        assert_eq!(own[0].0, "site-a");
        assert!(
            ids.iter().any(|id| *id == own[0].1),
            "each half has an aggregator of its own: {own:?}"
        );
    }
    // Still split: the runs stop, and the cloud counts every run of both halves.
    std::thread::sleep(Duration::from_secs(2));
    apply_on(&cloud, &probe("manual"));
    let took = wait_until(
        "the cloud counts both halves' runs during the split",
        Duration::from_secs(60),
        || {
            let recorded: u64 = edges
                .iter()
                .zip(&ids)
                .map(|(e, id)| own_runs(e, "probe", id))
                .sum::<u64>();
            fleet_runs(&cloud) == recorded
        },
    );
    eprintln!(
        "during the split, the cloud counted both halves' runs {took:?} after they stopped ({:?} into the split)",
        split_at.elapsed()
    );
    assert_eq!(
        split_claimants(&cloud).len(),
        2,
        "the split healed by itself"
    );
    // The fleet view marks the zone split, with both aggregators.
    let fleet = ok(run_on(&cloud, &["status", "--fleet", "--json"]));
    let site = fleet["zones"]
        .as_array()
        .unwrap()
        .iter()
        .find(|z| z["zone"] == "site-a")
        .unwrap_or_else(|| panic!("{fleet}"));
    let mut marked: Vec<String> = site["split"]
        .as_array()
        .unwrap_or_else(|| panic!("{site}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    marked.sort();
    let mut both = ids.clone();
    both.sort();
    assert_eq!(marked, both, "{site}");
    let text = String::from_utf8_lossy(&run_on(&cloud, &["status", "--fleet"]).stdout).to_string();
    assert!(text.contains("site-a (split)"), "{text}");

    // Heal: one aggregator again, the split no longer reported, every node in sync.
    for cable in &lan.cables[1..] {
        lab.set_isolated(cable, false);
    }
    let took = wait_until("site-a heals", Duration::from_secs(60), || {
        let chains: Vec<_> = edges.iter().map(|e| chain(&status(e))).collect();
        chains[0] == chains[1] && split_claimants(&cloud).is_empty()
    });
    eprintln!("heal -> one aggregator again after {took:?}");
    let nodes: Vec<&Running> = std::iter::once(&cloud).chain(edges.iter()).collect();
    wait_until("every node in sync", Duration::from_secs(60), || {
        nodes
            .iter()
            .all(|n| run_on(n, &["sync", "--timeout", "3s"]).status.success())
    });
    let recorded: u64 = edges
        .iter()
        .zip(&ids)
        .map(|(e, id)| own_runs(e, "probe", id))
        .sum::<u64>();
    wait_until(
        "the cloud counts every run",
        Duration::from_secs(30),
        || fleet_runs(&cloud) == recorded,
    );
}
