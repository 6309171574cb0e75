//! A zone where multicast does not pass (`--no-mdns`): each member knows only one bootstrap
//! peer, yet the members meet through the addresses the registry carries, and elect one
//! aggregator between them.

use std::time::Duration;

use rhizome_e2e::process::{chain, connected, init_in, start, status};
use rhizome_e2e::wait_until;

#[test]
fn members_of_a_zone_meet_through_the_registry_and_elect_one_aggregator() {
    let tmp = tempfile::tempdir().unwrap();
    let dirs: Vec<_> = ["hub", "b", "c"]
        .iter()
        .map(|n| tmp.path().join(n))
        .collect();
    let zone = ["--zone", "site-a/line-1"];
    init_in(&dirs[0], "hub", None, &zone);
    let mesh = dirs[0].join("mesh");
    init_in(&dirs[1], "b", Some(&mesh), &zone);
    init_in(&dirs[2], "c", Some(&mesh), &zone);
    let hub = start(&dirs[0], &[]);
    // b and c are told only of the hub; nothing tells them of each other but the registry.
    let b = start(&dirs[1], &[&hub.quic]);
    let c = start(&dirs[2], &[&hub.quic]);
    let took = wait_until("b and c meet", Duration::from_secs(20), || {
        connected(&b) == 2 && connected(&c) == 2
    });
    eprintln!("members with one bootstrap peer met through the registry in {took:?}");
    let aggregator = |node| {
        chain(&status(node))
            .first()
            .map(|(_, a)| a.clone())
            .unwrap_or_default()
    };
    wait_until(
        "one aggregator for the zone",
        Duration::from_secs(20),
        || {
            let seen: Vec<String> = [&hub, &b, &c].iter().map(|n| aggregator(n)).collect();
            !seen[0].is_empty() && seen.iter().all(|a| *a == seen[0])
        },
    );
}
