//! Releases on nodes run as the shipped systemd unit runs them: `ProtectSystem=strict` with
//! `ReadWritePaths` the data dir, so the file system is read-only but for the data dir. Each
//! protected node runs in a mount namespace of its own where the test's directory (which holds
//! every binary and data dir) is bound read-only over itself and the node's data dir stays
//! writable inside it: the same kind of read-only bind mounts systemd makes for the unit, over
//! a smaller tree.
//!
//! - e1's binary sits outside its data dir (the unit's default, `/usr/local/bin`): it cannot
//!   write a release beside it, reports the release `failed` naming the path and the error,
//!   keeps running the binary it had, and nothing is left beside that binary; a rollout whose
//!   abort criteria that failure crosses aborts.
//! - e2's binary sits in its data dir (`install-service --binary /var/lib/rhizome/bin/rhizome`,
//!   as docs/rollouts.md says): it installs a release there and keeps its pid, and an abort by
//!   hand takes it back to the binary it kept, under the same protection.
//!
//! Needs root (mount namespaces); skipped otherwise.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rhizome_e2e::process::{
    LogsOnPanic, Running, init, init_in, json_if_ok, ok, run_on, start_command, start_installed,
};
use rhizome_e2e::releases::{free_listen_addr, install, report_of, sha256, status};
use rhizome_e2e::{rhizome_bin, wait_until};
use serde_json::Value;

/// A build of this `rhizome` whose SHA-256 differs: its bytes with a trailer naming `version`.
fn build(version: &str) -> Vec<u8> {
    let mut bytes = std::fs::read(rhizome_bin()).unwrap();
    bytes.extend_from_slice(format!("\nrhizome release {version}\n").as_bytes());
    bytes
}

/// The mounts of the shipped unit's `ProtectSystem=strict` + `ReadWritePaths=<data dir>`, over
/// `root` (the test's directory, which holds every binary and data dir): a private mount
/// namespace, `data` bound writable, then `root` bound over itself with its submounts and made
/// read-only. `unshare` and `sh` execute the binary given after it, so the node keeps the
/// child's pid.
fn protected(root: &Path, data: &Path) -> Command {
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(
            "mount --bind \"$DATA\" \"$DATA\" && mount --rbind \"$ROOT\" \"$ROOT\" \
             && mount -o remount,bind,ro \"$ROOT\" && exec \"$@\"",
        )
        .arg("sh")
        .env("DATA", data)
        .env("ROOT", root);
    cmd
}

fn can_protect() -> bool {
    #[allow(unsafe_code)]
    // SAFETY: geteuid(2) has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let unshare = Command::new("unshare")
        .args(["--mount", "--", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !(root && unshare) {
        eprintln!("skipped: mount namespaces need root and unshare (root: {root})");
    }
    root && unshare
}

fn publish_and_roll_out(cloud: &Running, file: &Path, version: &str, abort_failures: &str) {
    ok(run_on(
        cloud,
        &[
            "release",
            "publish",
            file.to_str().unwrap(),
            "--version",
            version,
            "--json",
        ],
    ));
    ok(run_on(
        cloud,
        &[
            "release",
            "rollout",
            version,
            "--json",
            "--stages",
            "100%",
            "--abort-failures",
            abort_failures,
            "--trial",
            "60s",
        ],
    ));
}

/// What sits in a binary's directory, by name.
fn beside(binary: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(binary.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn releases_under_the_units_read_only_file_system() {
    if !can_protect() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().canonicalize().unwrap();
    let names = ["cloud", "e1", "e2"];
    let dirs: Vec<PathBuf> = names.iter().map(|n| root.join(n)).collect();
    let _logs = LogsOnPanic(dirs.clone());
    init(&dirs[0], "cloud", None);
    for (dir, name) in dirs.iter().zip(names).skip(1) {
        init_in(
            dir,
            name,
            Some(&dirs[0].join("mesh")),
            &["--zone", "site-a"],
        );
    }
    let original = std::fs::read(rhizome_bin()).unwrap();
    let bins = [
        root.join("bin-cloud").join("rhizome"),
        root.join("usr-local-bin").join("rhizome"),
        dirs[2].join("bin").join("rhizome"),
    ];
    for bin in &bins {
        install(bin, &original);
    }
    let listens: Vec<String> = names.iter().map(|_| free_listen_addr()).collect();
    let peers_of = |i: usize| -> Vec<String> {
        (0..listens.len())
            .filter(|j| *j != i)
            .map(|j| listens[j].clone())
            .collect()
    };
    let start = |i: usize| -> Running {
        let peers = peers_of(i);
        let peers: Vec<&str> = peers.iter().map(String::as_str).collect();
        if i == 0 {
            start_installed(
                &bins[0],
                &dirs[0],
                &listens[0],
                &peers,
                &["--role", "cloud"],
            )
        } else {
            let mut command = protected(&root, &dirs[i]);
            command.arg(&bins[i]);
            start_command(command, &dirs[i], &listens[i], &peers, &[])
        }
    };
    let mut nodes: Vec<Running> = (0..names.len()).map(start).collect();
    let pids: Vec<u32> = nodes.iter().map(|n| n.child.id()).collect();
    wait_until(
        "every node knows the others",
        Duration::from_secs(30),
        || {
            nodes.iter().all(|n| {
                json_if_ok(run_on(n, &["peers", "--json"]))
                    .as_array()
                    .is_some_and(|p| p.iter().filter(|p| p["state"] == "connected").count() >= 2)
            })
        },
    );
    // The protection holds: the test's directory is read-only to e1, its data dir is not.
    let probe = |node: usize, path: &Path| {
        Command::new("nsenter")
            .args(["--mount", "--target", &pids[node].to_string(), "--"])
            .args(["sh", "-c", "touch \"$1\" && rm \"$1\"", "sh"])
            .arg(path)
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
            .success()
    };
    assert!(!probe(1, &bins[1].with_file_name("probe")));
    assert!(probe(1, &dirs[1].join("probe")));

    let original_sha = sha256(&bins[1]);
    let alive = |nodes: &mut Vec<Running>| {
        for (i, node) in nodes.iter_mut().enumerate() {
            assert!(
                node.child.try_wait().unwrap().is_none(),
                "{} runs",
                names[i]
            );
            assert_eq!(node.child.id(), pids[i], "{} kept its pid", names[i]);
        }
    };
    // Each node runs its installed binary of the given SHA-256, and its API answers healthy,
    // with no swap under way: no candidate beside the binary (a trial), no process on a binary
    // a rename replaced (between commit and re-execution), no trial without an outcome.
    let settled = |nodes: &Vec<Running>, shas: [&str; 3]| {
        nodes.iter().enumerate().all(|(i, node)| {
            let exe = std::fs::read_link(format!("/proc/{}/exe", node.child.id()));
            let trial = std::fs::read_to_string(dirs[i].join("release-trial.json"));
            exe.is_ok_and(|exe| exe == bins[i])
                && beside(&bins[i])
                    .iter()
                    .all(|f| f == "rhizome" || f == "rhizome.previous")
                && !trial.is_ok_and(|t| t.contains("\"outcome\": null"))
                && sha256(&bins[i]) == shas[i]
                && json_if_ok(run_on(node, &["status", "--json"]))["health"]["status"] == "ok"
        })
    };
    let e1_untouched = || {
        assert_eq!(
            std::fs::read(&bins[1]).unwrap(),
            original,
            "e1 keeps its binary"
        );
        assert_eq!(
            beside(&bins[1]),
            ["rhizome"],
            "nothing half-installed beside it"
        );
    };

    // 0.2.0, aborted when a third of the nodes fail: e1 cannot write it beside its binary,
    // says so, and its failure aborts the rollout; nobody is left on 0.2.0.
    let v2 = root.join("rhizome-0.2.0");
    install(&v2, &build("0.2.0"));
    publish_and_roll_out(&nodes[0], &v2, "0.2.0", "30");
    let mut seen = Value::Null;
    wait_until(
        "the rollout of 0.2.0 is aborted by e1's failure, every node on the binary it had",
        Duration::from_secs(180),
        || {
            let s = status(&nodes[0]);
            s["rollout"]["status"]["state"] == "aborted"
                && report_of(&s, "e1")["state"] == "failed"
                && ["cloud", "e2"]
                    .iter()
                    .all(|n| report_of(&s, n)["state"] != "active")
                && settled(&nodes, [&original_sha; 3])
                && {
                    seen = s;
                    true
                }
        },
    );
    let reason = report_of(&seen, "e1")["reason"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    eprintln!("e1 on release 0.2.0: {reason}");
    assert!(
        reason.contains(&bins[1].display().to_string()) && reason.contains("Read-only file system"),
        "e1's reason names the binary it could not write beside, and why: {reason}"
    );
    e1_untouched();
    alive(&mut nodes);

    // 0.3.0, aborted only if half the nodes fail: e1 fails again, e2 installs it in its data
    // dir, keeping the binary it replaced there.
    let v3 = root.join("rhizome-0.3.0");
    install(&v3, &build("0.3.0"));
    let v3_sha = sha256(&v3);
    publish_and_roll_out(&nodes[0], &v3, "0.3.0", "50");
    wait_until(
        "cloud and e2 run 0.3.0 and e1 reports it failed",
        Duration::from_secs(180),
        || {
            let s = status(&nodes[0]);
            report_of(&s, "e1")["state"] == "failed"
                && settled(&nodes, [&v3_sha, &original_sha, &v3_sha])
                && ["cloud", "e2"].iter().all(|n| {
                    matches!(
                        report_of(&s, n)["state"].as_str(),
                        Some("active" | "succeeded")
                    )
                })
        },
    );
    assert_eq!(
        std::fs::read(bins[2].with_file_name("rhizome.previous")).unwrap(),
        original,
        "e2 kept what it replaced, in its data dir"
    );
    e1_untouched();
    alive(&mut nodes);
    let e2 = ok(run_on(&nodes[2], &["status", "--json"]));
    assert_eq!(e2["health"]["status"], "ok", "{e2}");

    // Aborted by hand: the nodes that took 0.3.0 go back to the binary they kept, e2 under
    // the same protection.
    ok(run_on(&nodes[0], &["release", "abort", "0.3.0"]));
    let mut seen = Value::Null;
    wait_until(
        "cloud and e2 are back on the binary they ran before 0.3.0",
        Duration::from_secs(180),
        || {
            let s = status(&nodes[0]);
            ["cloud", "e2"]
                .iter()
                .all(|n| report_of(&s, n)["state"] == "rolled-back")
                && settled(&nodes, [&original_sha; 3])
                && {
                    seen = s;
                    true
                }
        },
    );
    eprintln!(
        "release 0.3.0 aborted by hand: {}",
        ["cloud", "e1", "e2"]
            .map(|n| format!("{n} {}", report_of(&seen, n)["state"]))
            .join(", ")
    );
    e1_untouched();
    alive(&mut nodes);
}
