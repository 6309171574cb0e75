//! Enrolment over the network: a fresh machine with only a join token joins the mesh through
//! the node that holds the CA, which never hands out its key, and syncs and runs like any
//! member. A token works once: used again, expired or withdrawn it is refused saying which; a
//! token of another mesh, or a node of another mesh standing in for the right one, is refused
//! before anything is sent; a node that holds no CA does not enrol anyone.

use std::path::Path;
use std::time::Duration;

use rhizome_e2e::process::{LogsOnPanic, connected, init, ok, run, start, start_with};
use rhizome_e2e::wait_until;
use serde_json::Value;

fn token(ca_dir: &Path, extra: &[&str]) -> String {
    let mut args = vec!["mesh", "token", "create", "--json"];
    args.extend(extra);
    ok(run(ca_dir, &args))["token"].as_str().unwrap().to_owned()
}

fn join(dir: &Path, addr: &str, token: &str, name: &str) -> std::process::Output {
    run(
        dir,
        &["join", addr, "--token", token, "--name", name, "--json"],
    )
}

fn refused(out: std::process::Output) -> String {
    assert!(!out.status.success(), "it was accepted");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_machine_with_only_a_token_joins_and_a_token_works_once() {
    let tmp = tempfile::tempdir().unwrap();
    let cloud_dir = tmp.path().join("cloud");
    let edge_dir = tmp.path().join("edge");
    let _logs = LogsOnPanic(vec![cloud_dir.clone(), edge_dir.clone()]);
    init(&cloud_dir, "cloud", None);
    let cloud = start_with(&cloud_dir, &[], &["--role", "cloud"]);
    let first = token(&cloud_dir, &["--zone", "site-a"]);
    assert!(first.starts_with("rzj_"));

    let joined = ok(join(&edge_dir, &cloud.quic, &first, "edge"));
    assert_eq!(joined["role"], "member", "{joined}");
    assert_eq!(joined["zone"], "site-a", "the token's zone: {joined}");
    assert!(!edge_dir.join("mesh").exists(), "the edge got no CA");
    assert!(!edge_dir.join("ca.key").exists());
    let status = ok(run(&edge_dir, &["status", "--json"]));
    assert_eq!(
        status["mesh_id"],
        ok(run(&cloud_dir, &["status", "--json"]))["mesh_id"]
    );
    assert_eq!(status["mesh_role"], "member");

    // Started with nothing but its data dir, it dials the node it joined through and syncs.
    let edge = start(&edge_dir, &[]);
    wait_until(
        "the edge reaches the cloud",
        Duration::from_secs(15),
        || connected(&edge) == 1,
    );
    let file = tmp.path().join("w.yaml");
    std::fs::write(
        &file,
        "id: probe\ntrigger: manual\nsteps:\n  - id: s\n    agent: noop\n",
    )
    .unwrap();
    ok(run(
        &cloud_dir,
        &["workflow", "apply", file.to_str().unwrap()],
    ));
    wait_until(
        "the workflow reaches the edge",
        Duration::from_secs(15),
        || {
            let listed = run(&edge_dir, &["workflow", "list", "--json"]);
            serde_json::from_slice::<Value>(&listed.stdout).is_ok_and(|l| l[0]["id"] == "probe")
        },
    );
    let run_out = ok(run(&edge_dir, &["run", "probe", "--json"]));
    assert_eq!(run_out["status"], "succeeded", "{run_out}");

    // The same token again: refused, and nothing is left half made.
    let again = tmp.path().join("again");
    let why = refused(join(&again, &cloud.quic, &first, "again"));
    assert!(why.contains("used already"), "{why}");
    assert!(!again.exists(), "a refused join left {again:?} behind");
    // An expired one, a withdrawn one.
    let short = token(&cloud_dir, &["--ttl", "1s"]);
    std::thread::sleep(Duration::from_millis(1500));
    let why = refused(join(&tmp.path().join("late"), &cloud.quic, &short, "late"));
    assert!(why.contains("expired"), "{why}");
    let withdrawn = token(&cloud_dir, &[]);
    let id = &withdrawn[69..77];
    ok(run(&cloud_dir, &["mesh", "token", "revoke", id]));
    let why = refused(join(&tmp.path().join("w"), &cloud.quic, &withdrawn, "w"));
    assert!(why.contains("withdrawn"), "{why}");
    let listed = ok(run(&cloud_dir, &["mesh", "token", "list", "--json"]));
    let states: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["state"].as_str().unwrap())
        .collect();
    assert!(states.iter().any(|s| s.starts_with("used")), "{listed}");
    assert!(
        !listed.to_string().contains(&first[78..]),
        "secrets are not listed"
    );

    // A token of another mesh, and a node of another mesh standing in for the right one.
    let other_dir = tmp.path().join("other");
    init(&other_dir, "other", None);
    let other = start(&other_dir, &[]);
    let theirs = token(&other_dir, &[]);
    let why = refused(join(&tmp.path().join("x1"), &cloud.quic, &theirs, "x1"));
    assert!(
        why.contains("does not hold a certificate of the mesh CA"),
        "{why}"
    );
    let ours = token(&cloud_dir, &[]);
    let why = refused(join(&tmp.path().join("x2"), &other.quic, &ours, "x2"));
    assert!(
        why.contains("does not hold a certificate of the mesh CA"),
        "{why}"
    );
    // The stand-in learnt nothing: the token is still good at the real node.
    ok(join(&tmp.path().join("x3"), &cloud.quic, &ours, "x3"));
    // A node that holds no CA enrols no one.
    let why = refused(join(
        &tmp.path().join("x4"),
        &edge.quic,
        &token(&cloud_dir, &[]),
        "x4",
    ));
    assert!(why.contains("did not take the enrolment"), "{why}");
    // The CA holder recorded every join and every refusal.
    let events = ok(run(&cloud_dir, &["status", "--security", "--json"]));
    assert!(events["counts"]["joined"].as_u64() >= Some(2), "{events}");
    assert!(
        events["counts"]["enrolment_refused"].as_u64() >= Some(3),
        "{events}"
    );
    // Join tokens are made only where the CA is.
    let why = refused(run(&edge_dir, &["mesh", "token", "create"]));
    assert!(why.contains("holds none"), "{why}");
    drop((cloud, edge, other));
}
