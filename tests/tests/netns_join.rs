//! Enrolment across real network namespaces (lab: tests/src/netns.rs): the node that holds the
//! CA on one host, a fresh machine on another with nothing but a join token, and, on a third, a
//! node of another mesh standing in for the right one (a man in the middle). The fresh machine
//! joins, syncs and runs a workflow; the stand-in is refused before the token is sent, so the
//! token still works at the real node afterwards. Needs root and iproute2; skipped otherwise.

use std::time::Duration;

use rhizome_e2e::netns::{Lab, start_node};
use rhizome_e2e::process::{LogsOnPanic, init, ok, run_in, run_on};
use rhizome_e2e::wait_until;
use serde_json::Value;

#[test]
fn a_fresh_machine_joins_across_namespaces_and_a_stand_in_is_refused() {
    let Some(mut lab) = Lab::new() else { return };
    let lan = lab.lan("jn", "10.81.0", 3);
    let tmp = tempfile::tempdir().unwrap();
    let [cloud_dir, edge_dir, other_dir] = ["cloud", "edge", "other"].map(|n| tmp.path().join(n));
    let _logs = LogsOnPanic(vec![cloud_dir.clone(), edge_dir.clone(), other_dir.clone()]);
    init(&cloud_dir, "cloud", None);
    init(&other_dir, "other", None);
    let cloud = start_node(&lan.hosts[0], None, &cloud_dir, &[], &["--role", "cloud"]);
    let other = start_node(&lan.hosts[2], None, &other_dir, &[], &[]);
    let file = tmp.path().join("probe.yaml");
    std::fs::write(
        &file,
        "id: probe\ntrigger: manual\nsteps:\n  - id: s\n    agent: noop\n",
    )
    .unwrap();
    ok(run_on(
        &cloud,
        &["workflow", "apply", file.to_str().unwrap()],
    ));
    let token = ok(run_on(&cloud, &["mesh", "token", "create", "--json"]))["token"]
        .as_str()
        .unwrap()
        .to_owned();

    // The stand-in holds no certificate of the token's CA: refused before anything is sent.
    let edge_ns = Some(lan.hosts[1].ns.as_str());
    let stand_in = run_in(
        edge_ns,
        &tmp.path().join("tricked"),
        &[
            "join",
            &lan.cables[2].quic(),
            "--token",
            &token,
            "--name",
            "tricked",
        ],
    );
    assert!(!stand_in.status.success());
    let why = String::from_utf8_lossy(&stand_in.stderr);
    assert!(
        why.contains("does not hold a certificate of the mesh CA"),
        "{why}"
    );

    // The real node, with the same token: the machine joins, dials it at start, syncs, runs.
    let joined = ok(run_in(
        edge_ns,
        &edge_dir,
        &[
            "join",
            &lan.cables[0].quic(),
            "--token",
            &token,
            "--name",
            "edge",
            "--json",
        ],
    ));
    assert_eq!(joined["role"], "member", "{joined}");
    let edge = start_node(&lan.hosts[1], None, &edge_dir, &[], &[]);
    wait_until(
        "the workflow reaches the edge",
        Duration::from_secs(20),
        || {
            let listed = run_on(&edge, &["workflow", "list", "--json"]);
            serde_json::from_slice::<Value>(&listed.stdout).is_ok_and(|l| l[0]["id"] == "probe")
        },
    );
    let record = ok(run_on(&edge, &["run", "probe", "--json"]));
    assert_eq!(record["status"], "succeeded", "{record}");

    // Used once, refused the second time, across the network too.
    let again = run_in(
        edge_ns,
        &tmp.path().join("again"),
        &[
            "join",
            &lan.cables[0].quic(),
            "--token",
            &token,
            "--name",
            "again",
        ],
    );
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("used already"));
    drop((cloud, edge, other));
}
