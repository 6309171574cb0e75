//! Certificates that expire and renew themselves, between real processes: a node joined with a
//! short-lived certificate renews it from the node that holds the CA before it ends, again and
//! again, and reconnects with the renewed one after its first certificate is long gone; a node
//! that stayed away past the end of its certificate is refused at every handshake, says so in
//! its health, and is back after joining again with a new token.

use std::path::Path;
use std::time::{Duration, Instant};

use rhizome_e2e::process::{LogsOnPanic, connected, init, log_file, ok, run, start, stop};
use rhizome_e2e::wait_until;

/// Short lifetimes, so that a test sees several renewals.
fn short_lived(dir: &Path, lifetime: &str, renew_before: &str) {
    let path = dir.join("rhizome.toml");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace(
            "cert_lifetime = \"90d\"",
            &format!("cert_lifetime = \"{lifetime}\""),
        )
        .replace(
            "renew_before = \"30d\"",
            &format!("renew_before = \"{renew_before}\""),
        );
    std::fs::write(&path, text).unwrap();
}

fn cert_ends(dir: &Path) -> String {
    ok(run(dir, &["status", "--json"]))["cert_expires"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn join(dir: &Path, ca_dir: &Path, addr: &str, name: &str) {
    let token = ok(run(ca_dir, &["mesh", "token", "create", "--json"]))["token"]
        .as_str()
        .unwrap()
        .to_owned();
    ok(run(dir, &["join", addr, "--token", &token, "--name", name]));
}

#[test]
fn short_certificates_renew_before_they_end_and_an_expired_one_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let cloud_dir = tmp.path().join("cloud");
    let edge_dir = tmp.path().join("edge");
    let late_dir = tmp.path().join("late");
    let _logs = LogsOnPanic(vec![cloud_dir.clone(), edge_dir.clone(), late_dir.clone()]);
    init(&cloud_dir, "cloud", None);
    short_lived(&cloud_dir, "20s", "12s");
    let mut cloud = start(&cloud_dir, &[]);
    let port = cloud.quic.clone();

    join(&edge_dir, &cloud_dir, &port, "edge");
    short_lived(&edge_dir, "20s", "12s");
    let first = cert_ends(&edge_dir);
    let edge = start(&edge_dir, &[]);
    wait_until(
        "the edge reaches the cloud",
        Duration::from_secs(15),
        || connected(&edge) == 1,
    );
    // The late node joins now and stays away past its certificate's end.
    join(&late_dir, &cloud_dir, &port, "late");
    let late_joined = Instant::now();

    // Renewed before it ends, and again.
    wait_until(
        "the edge renews its certificate",
        Duration::from_secs(20),
        || cert_ends(&edge_dir) != first,
    );
    let second = cert_ends(&edge_dir);
    wait_until("the edge renews it again", Duration::from_secs(20), || {
        cert_ends(&edge_dir) != second
    });
    let log = std::fs::read_to_string(log_file(&edge_dir)).unwrap();
    assert!(log.contains("renewed this node's certificate"), "{log}");
    assert!(second > first, "{first} -> {second}");

    // Past the first certificate's end, a fresh handshake works only with a renewed one: the
    // cloud restarts, and the edge is back.
    stop(cloud);
    cloud = rhizome_e2e::process::start_on(&cloud_dir, &port, &[]);
    wait_until("the edge reconnects", Duration::from_secs(20), || {
        connected(&edge) == 1
    });
    assert_eq!(
        ok(run(&edge_dir, &["status", "--json"]))["health"]["status"],
        "ok"
    );

    // The late node's certificate ended while it was away: refused, and it says why.
    let wait = Duration::from_secs(21).saturating_sub(late_joined.elapsed());
    std::thread::sleep(wait);
    let late = start(&late_dir, &[]);
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        connected(&late),
        0,
        "a node with an expired certificate got in"
    );
    let health = ok(run(&late_dir, &["status", "--json"]))["health"].clone();
    assert_eq!(health["status"], "degraded", "{health}");
    assert!(
        health["problems"].to_string().contains("expired"),
        "{health}"
    );
    stop(late);
    // A new token brings it back.
    std::fs::remove_dir_all(&late_dir).unwrap();
    join(&late_dir, &cloud_dir, &port, "late");
    let late = start(&late_dir, &[]);
    wait_until("the late node is back", Duration::from_secs(20), || {
        connected(&late) >= 1
    });
    drop((cloud, edge, late));
}
