//! Replacing the mesh CA between real processes: `mesh rotate-ca` on the running CA holder
//! announces a new CA; the nodes online trust it and renew from it at once; a node offline
//! through the first step comes back with its old certificate (still admitted), learns the new
//! CA and renews; `--finish` waits for it, then retires the old CA. Afterwards a node that
//! still holds only a certificate of the old CA is refused, workflows signed before the
//! rotation still stand everywhere, and a machine joining with a new token takes part.

use std::path::Path;
use std::time::Duration;

use rhizome_e2e::process::{LogsOnPanic, connected, init, ok, run, start, stop};
use rhizome_e2e::wait_until;

fn cert_ca(dir: &Path) -> String {
    ok(run(dir, &["status", "--json"]))["cert_ca"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn cas_in(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("ca.crt"))
        .unwrap()
        .matches("BEGIN CERTIFICATE")
        .count()
}

fn apply(dir: &Path, id: &str) {
    let file = dir.with_extension(format!("{id}.yaml"));
    std::fs::write(
        &file,
        format!("id: {id}\ntrigger: manual\nsteps:\n  - id: s\n    agent: noop\n"),
    )
    .unwrap();
    ok(run(dir, &["workflow", "apply", file.to_str().unwrap()]));
}

fn has_workflow(dir: &Path, id: &str) -> bool {
    run(dir, &["workflow", "show", id, "--json"])
        .status
        .success()
}

#[test]
fn the_mesh_ca_rotates_with_a_node_offline_through_part_of_it() {
    let tmp = tempfile::tempdir().unwrap();
    let [cloud_dir, e1_dir, e2_dir, late_dir] =
        ["cloud", "e1", "e2", "late"].map(|n| tmp.path().join(n));
    let _logs = LogsOnPanic(vec![cloud_dir.clone(), e1_dir.clone(), e2_dir.clone()]);
    init(&cloud_dir, "cloud", None);
    let mesh = cloud_dir.join("mesh");
    init(&e1_dir, "e1", Some(&mesh));
    init(&e2_dir, "e2", Some(&mesh));
    // Made before the rotation and never started until it is over.
    init(&late_dir, "late", Some(&mesh));

    let cloud = start(&cloud_dir, &[]);
    let e1 = start(&e1_dir, &[&cloud.quic]);
    let e2 = start(&e2_dir, &[&cloud.quic, &e1.quic]);
    for node in [&cloud, &e1, &e2] {
        wait_until("all three connected", Duration::from_secs(15), || {
            connected(node) == 2
        });
    }
    apply(&cloud_dir, "before");
    wait_until("the workflow reaches e2", Duration::from_secs(15), || {
        has_workflow(&e2_dir, "before")
    });
    let old_ca = cert_ca(&cloud_dir);
    assert!(!old_ca.is_empty());
    stop(e2);

    // The first step, on the running CA holder: the nodes online renew from the new CA.
    let rotation = ok(run(&cloud_dir, &["mesh", "rotate-ca", "--json"]));
    let new_ca = rotation["current"].as_str().unwrap().to_owned();
    assert_ne!(new_ca, old_ca);
    for dir in [&cloud_dir, &e1_dir] {
        wait_until(
            "a node online renews from the new CA",
            Duration::from_secs(20),
            || cert_ca(dir) == new_ca,
        );
        assert_eq!(cas_in(dir), 2, "{dir:?} trusts both CAs");
    }
    // A version signed with a certificate of the new CA reaches e1.
    apply(&cloud_dir, "after");
    wait_until(
        "the new version reaches e1",
        Duration::from_secs(15),
        || has_workflow(&e1_dir, "after"),
    );

    // e2 has not renewed: finishing is refused, naming it.
    let out = run(&cloud_dir, &["mesh", "rotate-ca", "--finish"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("e2"), "{err}");

    // Back with its old certificate, still admitted: it learns the new CA and renews.
    let e2 = start(&e2_dir, &[&cloud.quic, &e1.quic]);
    wait_until("e2 renews from the new CA", Duration::from_secs(30), || {
        cert_ca(&e2_dir) == new_ca
    });
    wait_until(
        "the CA holder sees every node on the new CA",
        Duration::from_secs(20),
        || {
            run(&cloud_dir, &["mesh", "rotate-ca", "--finish", "--json"])
                .status
                .success()
        },
    );
    for dir in [&cloud_dir, &e1_dir, &e2_dir] {
        assert!(has_workflow(dir, "after"), "{dir:?}");
    }
    assert!(
        !mesh.join(format!("ca-{}.key", &old_ca[..16])).exists(),
        "the retired CA's key is deleted"
    );

    // Fresh handshakes after the retirement: the three meet again on the new CA, and every
    // version signed before the rotation still stands.
    stop(cloud);
    stop(e1);
    stop(e2);
    let cloud = start(&cloud_dir, &[]);
    let e1 = start(&e1_dir, &[&cloud.quic]);
    let e2 = start(&e2_dir, &[&cloud.quic, &e1.quic]);
    for node in [&cloud, &e1, &e2] {
        wait_until("all three connected again", Duration::from_secs(15), || {
            connected(node) == 2
        });
    }
    for dir in [&cloud_dir, &e1_dir, &e2_dir] {
        assert!(has_workflow(dir, "before") && has_workflow(dir, "after"));
    }

    // A node with only a certificate of the retired CA gets in nowhere.
    let late = start(&late_dir, &[&cloud.quic, &e1.quic]);
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        connected(&late),
        0,
        "a certificate of the retired CA got in"
    );
    let events = ok(run(&cloud_dir, &["status", "--security", "--json"]));
    assert!(
        events["counts"]["handshake_refused"].as_u64().unwrap_or(0) >= 1,
        "{events}"
    );
    // A machine joining now gets a certificate of the new CA and every CA of the mesh's
    // history, and takes part.
    let fresh_dir = tmp.path().join("fresh");
    let token = ok(run(&cloud_dir, &["mesh", "token", "create", "--json"]))["token"]
        .as_str()
        .unwrap()
        .to_owned();
    ok(run(
        &fresh_dir,
        &["join", &cloud.quic, "--token", &token, "--name", "fresh"],
    ));
    assert_eq!(cert_ca(&fresh_dir), new_ca);
    assert_eq!(cas_in(&fresh_dir), 2);
    let fresh = start(&fresh_dir, &[]);
    wait_until(
        "the new machine syncs the workflows",
        Duration::from_secs(20),
        || has_workflow(&fresh_dir, "before") && has_workflow(&fresh_dir, "after"),
    );
    drop((cloud, e1, e2, late, fresh));
}
