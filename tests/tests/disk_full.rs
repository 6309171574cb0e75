//! A real node on a small tmpfs whose disk fills up: runs and workflow applies are refused with
//! 507 and a non-zero exit naming the filesystem, `/health` turns `degraded` with the reason,
//! nothing acknowledged is lost, and writes resume by themselves once space is freed. The node's
//! log is a file on the full disk too, as it often is in the field.

use std::path::Path;
use std::time::Duration;

use rhizome_e2e::disk::{Tmpfs, fill, mount_ext4};
use rhizome_e2e::process::{LogsOnPanic, init, init_in, log_file, ok, run, start};
use rhizome_e2e::{wait_until, workflows};

fn health(dir: &Path) -> serde_json::Value {
    let status = ok(run(dir, &["status", "--json"]));
    status["health"].clone()
}

#[test]
fn a_node_on_a_full_tmpfs_refuses_by_name_and_resumes_when_space_is_freed() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(_mount) = Tmpfs::mount(&tmp.path().join("disk"), "24m") else {
        return;
    };
    refuses_by_name_and_resumes(&tmp);
}

#[test]
fn a_node_on_a_full_ext4_refuses_by_name_and_resumes_when_space_is_freed() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(_mount) = mount_ext4(&tmp.path().join("disk"), 32) else {
        return;
    };
    refuses_by_name_and_resumes(&tmp);
}

fn refuses_by_name_and_resumes(tmp: &tempfile::TempDir) {
    let disk = tmp.path().join("disk");
    let dir = disk.join("node");
    init_in(&dir, "edge", None, &["--tag", "sensor"]);
    let node = start(&dir, &[]);
    let wf = tmp.path().join("probe.yaml");
    std::fs::write(&wf, workflows::probe("manual")).unwrap();
    ok(run(&dir, &["workflow", "apply", wf.to_str().unwrap()]));
    let before = ok(run(&dir, &["run", "probe", "--json"]));
    assert_eq!(health(&dir)["status"], "ok");

    // Under the watermark (5% of 24 MiB): refused before the disk is actually full.
    let filler = fill(&disk, 256 << 10);
    let refused = run(&dir, &["run", "probe", "--json"]);
    assert!(
        !refused.status.success(),
        "a run was accepted on a full disk"
    );
    let text = String::from_utf8_lossy(&refused.stderr);
    assert!(
        text.contains("507")
            && text.contains("store.min_free")
            && text.contains(&dir.display().to_string()),
        "the refusal must name the status, the watermark and the data dir: {text}"
    );
    let applied = run(&dir, &["workflow", "apply", wf.to_str().unwrap()]);
    assert!(
        !applied.status.success(),
        "a workflow apply was acknowledged on a full disk"
    );
    assert!(String::from_utf8_lossy(&applied.stderr).contains("507"));
    let degraded = health(&dir);
    assert_eq!(degraded["status"], "degraded", "{degraded}");
    assert!(
        degraded["problems"][0]
            .as_str()
            .unwrap()
            .contains("low disk"),
        "{degraded}"
    );
    let human = String::from_utf8_lossy(&run(&dir, &["status"]).stdout).to_string();
    assert!(
        human.contains("degraded") && human.contains("low disk"),
        "{human}"
    );

    // Space freed: writes resume within seconds, by themselves.
    std::fs::remove_file(&filler).unwrap();
    let resumed = wait_until(
        "a run is acknowledged after space is freed",
        Duration::from_secs(20),
        || run(&dir, &["run", "probe", "--json"]).status.success(),
    );
    eprintln!("space freed -> first acknowledged run: {resumed:?}");
    assert_eq!(health(&dir)["status"], "ok");
    let results = ok(run(&dir, &["results", "--json"]));
    let ids: Vec<&str> = results
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["run_id"].as_str())
        .collect();
    assert!(ids.contains(&before["run_id"].as_str().unwrap()), "{ids:?}");
    drop(node);
}

/// With the watermark off, the filesystem itself refuses: the failed commit is reported (the
/// run is not called done), the store reopens itself, and writes resume once space is freed.
#[test]
fn a_real_enospc_on_tmpfs_is_reported_and_the_store_recovers_without_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(_mount) = Tmpfs::mount(&tmp.path().join("disk"), "24m") else {
        return;
    };
    enospc_is_reported_and_recovered(&tmp);
}

#[test]
fn a_real_enospc_on_ext4_is_reported_and_the_store_recovers_without_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(_mount) = mount_ext4(&tmp.path().join("disk"), 32) else {
        return;
    };
    enospc_is_reported_and_recovered(&tmp);
}

fn enospc_is_reported_and_recovered(tmp: &tempfile::TempDir) {
    let disk = tmp.path().join("disk");
    let dir = disk.join("node");
    init_in(&dir, "edge", None, &["--tag", "sensor"]);
    std::fs::write(
        dir.join("rhizome.toml"),
        std::fs::read_to_string(dir.join("rhizome.toml"))
            .unwrap()
            .replace("min_free = \"default\"", "min_free = \"0\""),
    )
    .unwrap();
    let node = start(&dir, &[]);
    let wf = tmp.path().join("probe.yaml");
    std::fs::write(&wf, workflows::probe("manual")).unwrap();
    ok(run(&dir, &["workflow", "apply", wf.to_str().unwrap()]));
    let before = ok(run(&dir, &["run", "probe", "--json"]));

    let filler = fill(&disk, 0);
    let mut refused = 0;
    // The store's file may hold free pages from before the disk filled: the first few runs
    // can fit in them. Until one is refused, then a few more.
    for _ in 0..50 {
        if refused >= 3 {
            break;
        }
        let out = run(&dir, &["run", "probe", "--json"]);
        if !out.status.success() {
            refused += 1;
            let text = String::from_utf8_lossy(&out.stderr);
            assert!(
                text.contains("could not be stored")
                    || text.contains("507")
                    || text.contains("503"),
                "{text}"
            );
        }
    }
    assert!(refused > 0, "no run failed on a disk with no space left");

    std::fs::remove_file(&filler).unwrap();

    let resumed = wait_until(
        "a run is acknowledged after space is freed",
        Duration::from_secs(20),
        || run(&dir, &["run", "probe", "--json"]).status.success(),
    );
    eprintln!("space freed -> first acknowledged run (ENOSPC): {resumed:?}");
    let results = ok(run(&dir, &["results", "--json"]));
    let ids: Vec<&str> = results
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["run_id"].as_str())
        .collect();
    assert!(ids.contains(&before["run_id"].as_str().unwrap()), "{ids:?}");
    drop(node);
}

/// The ids of the workflows a node knows.
fn workflow_ids(dir: &Path) -> Vec<String> {
    ok(run(dir, &["workflow", "list", "--json"]))
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|w| w["id"].as_str().map(str::to_owned))
        .collect()
}

/// A peer writes while this node's disk is under the watermark: the node refuses to apply what
/// arrives (it would have to store it) and its peer's session is left believing it delivered.
/// Once space is freed the change arrives over the same connection, without a reconnect or a
/// restart, and both nodes say they are in sync.
#[test]
fn what_a_peer_sent_while_the_disk_was_full_arrives_once_space_is_freed() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(_mount) = Tmpfs::mount(&tmp.path().join("disk"), "24m") else {
        return;
    };
    let (a_dir, b_dir) = (tmp.path().join("a"), tmp.path().join("disk").join("b"));
    let _logs = LogsOnPanic(vec![a_dir.clone(), b_dir.clone()]);
    init(&a_dir, "a", None);
    init(&b_dir, "b", Some(&a_dir.join("mesh")));
    let a = start(&a_dir, &[]);
    let b = start(&b_dir, &[&a.quic]);
    let apply = |id: &str| {
        let file = tmp.path().join(format!("{id}.yaml"));
        std::fs::write(
            &file,
            format!("id: {id}\nsteps:\n  - id: s\n    agent: noop\n"),
        )
        .unwrap();
        ok(run(&a_dir, &["workflow", "apply", file.to_str().unwrap()]));
    };
    apply("before");
    wait_until("b gets the first workflow", Duration::from_secs(20), || {
        workflow_ids(&b_dir).contains(&"before".to_owned())
    });

    let filler = fill(&tmp.path().join("disk"), 256 << 10);
    wait_until("b reports low disk", Duration::from_secs(10), || {
        health(&b_dir)["status"] == "degraded"
    });
    apply("during");
    // The change reaches b, which refuses to store it while it is under the watermark.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !workflow_ids(&b_dir).contains(&"during".to_owned()),
        "b stored a document while under the watermark"
    );
    let out = run(&b_dir, &["sync", "--timeout", "1s"]);
    assert!(
        !out.status.success(),
        "b said it was in sync while it lacked a workflow"
    );

    std::fs::remove_file(&filler).unwrap();
    let took = wait_until(
        "the workflow written during the outage reaches b",
        Duration::from_secs(60),
        || workflow_ids(&b_dir).contains(&"during".to_owned()),
    );
    eprintln!("space freed -> the peer's change stored on the full node: {took:?}");
    // Healed by the sender's stall check on the live connection, which it logs.
    let a_log = std::fs::read_to_string(log_file(&a_dir)).unwrap();
    assert!(a_log.contains("comparing again"), "{a_log}");
    for (name, dir) in [("a", &a_dir), ("b", &b_dir)] {
        let out = run(dir, &["sync", "--timeout", "10s"]);
        assert!(
            out.status.success(),
            "{name}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(health(&b_dir)["status"], "ok");
    drop((a, b));
}

/// As above, with no watermark (`min_free = "0"`): the filesystem itself answers ENOSPC inside
/// the commit that applies the peer's change, which breaks the store. It reopens itself once
/// space is freed and tells replication, which compares again with the peer: the change
/// arrives without a restart.
#[test]
fn what_a_peer_sent_into_a_disk_with_no_space_left_arrives_once_space_is_freed() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(_mount) = Tmpfs::mount(&tmp.path().join("disk"), "24m") else {
        return;
    };
    let (a_dir, b_dir) = (tmp.path().join("a"), tmp.path().join("disk").join("b"));
    let _logs = LogsOnPanic(vec![a_dir.clone(), b_dir.clone()]);
    init(&a_dir, "a", None);
    init(&b_dir, "b", Some(&a_dir.join("mesh")));
    let config = b_dir.join("rhizome.toml");
    std::fs::write(
        &config,
        std::fs::read_to_string(&config)
            .unwrap()
            .replace("min_free = \"default\"", "min_free = \"0\""),
    )
    .unwrap();
    let a = start(&a_dir, &[]);
    let b = start(&b_dir, &[&a.quic]);
    // Each definition carries 200 KB of text nothing compresses, so storing it needs pages
    // the full filesystem cannot give.
    let apply = |id: &str| {
        let mut x = id.bytes().fold(0x9e37_79b9_7f4a_7c15_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        let filler: String = (0..25_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                format!("{:08x}", x as u32)
            })
            .collect();
        let file = tmp.path().join(format!("{id}.yaml"));
        std::fs::write(
            &file,
            format!("id: {id}\ndescription: \"{filler}\"\nsteps:\n  - id: s\n    agent: noop\n"),
        )
        .unwrap();
        ok(run(&a_dir, &["workflow", "apply", file.to_str().unwrap()]));
    };
    apply("before");
    wait_until("b gets the first workflow", Duration::from_secs(20), || {
        workflow_ids(&b_dir).contains(&"before".to_owned())
    });

    let filler = fill(&tmp.path().join("disk"), 0);
    for id in ["during-1", "during-2", "during-3"] {
        apply(id);
    }
    // b takes the changes in, cannot make them durable, and its store breaks: it answers reads
    // and `sync` with the reason, as long as the disk stays full.
    wait_until(
        "b's store refuses, naming the full disk",
        Duration::from_secs(20),
        || {
            let out = run(&b_dir, &["workflow", "list", "--json"]);
            let text = String::from_utf8_lossy(&out.stderr);
            !out.status.success() && text.contains("503") && text.contains("No space left")
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    let out = run(&b_dir, &["sync", "--timeout", "1s"]);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && text.contains("not in sync") && text.contains("free of"),
        "b said it was in sync while its store could not keep what it took in: {text}"
    );
    // The store takes no writes: the node is failing, not merely degraded.
    assert_eq!(health(&b_dir)["status"], "failing");

    std::fs::remove_file(&filler).unwrap();
    let took = wait_until(
        "the workflows written while b's disk was full reach b",
        Duration::from_secs(60),
        || {
            let out = run(&b_dir, &["workflow", "list", "--json"]);
            let held: Vec<String> = if out.status.success() {
                workflow_ids(&b_dir)
            } else {
                Vec::new()
            };
            ["during-1", "during-2", "during-3"]
                .iter()
                .all(|id| held.contains(&(*id).to_owned()))
        },
    );
    eprintln!("space freed -> the peer's changes stored after ENOSPC: {took:?}");
    for (name, dir) in [("a", &a_dir), ("b", &b_dir)] {
        let out = run(dir, &["sync", "--timeout", "10s"]);
        assert!(
            out.status.success(),
            "{name}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(health(&b_dir)["status"], "ok");
    drop((a, b));
}
