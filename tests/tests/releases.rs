//! Over-the-air releases of `rhizome` itself, on real processes each run from its own
//! installed copy of the binary: a good release (a second binary: the build's bytes with a
//! trailer, so that its SHA-256 differs) ends installed on every node, each keeping its pid and
//! the binary it replaced; a broken one (a script that exits at start) is tried by every node,
//! each returns to the binary it ran by itself, and the rollout aborts; a kill -9 during a
//! trial leaves a node that starts on the binary it had. Timings are printed, never asserted.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rhizome_e2e::process::{
    LogsOnPanic, Running, init, init_in, json_if_ok, log_file, ok, run_on, start_installed,
};
use rhizome_e2e::releases::{free_listen_addr, install, report_of, sha256, status};
use rhizome_e2e::{rhizome_bin, wait_until};
use serde_json::Value;

/// `release publish FILE --version VERSION --json` on `node`.
fn publish(node: &Running, file: &Path, version: &str) -> std::process::Output {
    run_on(
        node,
        &[
            "release",
            "publish",
            file.to_str().unwrap(),
            "--version",
            version,
            "--json",
        ],
    )
}

/// `release rollout VERSION FLAGS --json` on `node`, which must succeed.
fn roll_out(node: &Running, version: &str, flags: &[&str]) -> Value {
    let mut args = vec!["release", "rollout", version, "--json"];
    args.extend_from_slice(flags);
    ok(run_on(node, &args))
}

struct Fleet {
    nodes: Vec<Running>,
    names: Vec<&'static str>,
    bins: Vec<PathBuf>,
    listens: Vec<String>,
}

impl Fleet {
    fn peers_of(&self, i: usize) -> Vec<String> {
        (0..self.listens.len())
            .filter(|j| *j != i)
            .map(|j| self.listens[j].clone())
            .collect()
    }

    fn start(&self, i: usize, root: &Path) -> Running {
        let peers = self.peers_of(i);
        let peers: Vec<&str> = peers.iter().map(String::as_str).collect();
        start_installed(
            &self.bins[i],
            &root.join(self.names[i]),
            &self.listens[i],
            &peers,
            if i == 0 { &["--role", "cloud"] } else { &[] },
        )
    }
}

#[test]
fn releases_install_where_healthy_and_undo_themselves_where_not() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let names = vec!["cloud", "e1", "e2"];
    let _logs = LogsOnPanic(names.iter().map(|n| root.join(n)).collect());
    init(&root.join("cloud"), "cloud", None);
    for name in &names[1..] {
        init_in(
            &root.join(name),
            name,
            Some(&root.join("cloud").join("mesh")),
            &["--zone", "site-a"],
        );
    }
    // e2 can be made unhealthy at will: a critical check that fails while a file exists.
    let e2_down = root.join("e2-down");
    let e2_config = root.join("e2").join("rhizome.toml");
    let mut text = std::fs::read_to_string(&e2_config).unwrap();
    text.push_str(&format!(
        "\n[[health.checks]]\nname = \"lab\"\ncommand = \"test ! -e {}\"\ninterval = \"200ms\"\n\
         critical = true\n",
        e2_down.display()
    ));
    std::fs::write(&e2_config, text).unwrap();
    let original = sha256(&rhizome_bin());
    let mut bins = Vec::new();
    for name in &names {
        let dir = root.join(format!("bin-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        let bin = dir.join("rhizome");
        std::fs::copy(rhizome_bin(), &bin).unwrap();
        bins.push(bin);
    }
    let mut fleet = Fleet {
        nodes: Vec::new(),
        names: names.clone(),
        bins,
        listens: names.iter().map(|_| free_listen_addr()).collect(),
    };
    for i in 0..names.len() {
        let node = fleet.start(i, root);
        fleet.nodes.push(node);
    }
    let pids: Vec<u32> = fleet.nodes.iter().map(|n| n.child.id()).collect();
    let cloud = &fleet.nodes[0];
    wait_until(
        "every node knows the others",
        Duration::from_secs(30),
        || {
            fleet.nodes.iter().all(|n| {
                json_if_ok(run_on(n, &["peers", "--json"]))
                    .as_array()
                    .is_some_and(|p| p.iter().filter(|p| p["state"] == "connected").count() >= 2)
            })
        },
    );

    // Only a control node publishes, and only a version that reads X.Y.Z.
    let good = root.join("rhizome-0.2.0");
    let mut bytes = std::fs::read(rhizome_bin()).unwrap();
    bytes.extend_from_slice(b"\nrhizome release 0.2.0\n");
    install(&good, &bytes);
    let good_sha = sha256(&good);
    let refused = publish(&fleet.nodes[1], &good, "0.2.0");
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("control"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let bad_version = publish(cloud, &good, "v2");
    assert!(String::from_utf8_lossy(&bad_version.stderr).contains("X.Y.Z"));

    // A good release: installed everywhere, each node keeping its pid and what it replaced.
    let published = ok(publish(cloud, &good, "0.2.0"));
    assert_eq!(published["sha256"], good_sha.as_str());
    // In the manifest format every build reads, so that any node can fetch its update.
    let artifact = published["artifact"].as_str().unwrap();
    let shown = ok(run_on(cloud, &["artifact", "show", artifact, "--json"]));
    assert_eq!(shown["manifest"]["format"], 1, "{shown}");
    let started = Instant::now();
    roll_out(
        cloud,
        "0.2.0",
        &["--stages", "1,100%", "--gate-soak", "1s", "--trial", "60s"],
    );
    let mut canary_at = None;
    wait_until(
        "release 0.2.0 is installed on every node",
        Duration::from_secs(180),
        || {
            let s = status(&fleet.nodes[0]);
            if canary_at.is_none() && names.iter().any(|n| report_of(&s, n)["state"] == "active") {
                canary_at = Some(started.elapsed());
            }
            s["rollout"]["status"]["state"] == "completed"
        },
    );
    eprintln!(
        "release 0.2.0: canary running it after {canary_at:?}, every node after {:?}",
        started.elapsed()
    );
    let swaps: Vec<String> = names
        .iter()
        .filter_map(|n| {
            let log = std::fs::read_to_string(log_file(&root.join(n))).unwrap_or_default();
            let line = log
                .lines()
                .find(|l| l.starts_with("release 0.2.0: installed"))?;
            let took = line
                .split(" in ")
                .nth(1)?
                .split(' ')
                .take(2)
                .collect::<Vec<_>>();
            Some(format!("{n} {}", took.join(" ")))
        })
        .collect();
    eprintln!("release 0.2.0: swap (stop, trial until healthy, commit, re-exec): {swaps:?}");
    for (i, node) in fleet.nodes.iter_mut().enumerate() {
        assert_eq!(
            sha256(&fleet.bins[i]),
            good_sha,
            "{} runs the release",
            names[i]
        );
        assert_eq!(
            sha256(&previous_of(&fleet.bins[i])),
            original,
            "{} kept what it replaced",
            names[i]
        );
        assert!(
            node.child.try_wait().unwrap().is_none(),
            "{} still runs as the same process",
            names[i]
        );
        assert_eq!(node.child.id(), pids[i]);
    }
    let health = ok(run_on(&fleet.nodes[1], &["status", "--json"]));
    assert_eq!(health["health"]["status"], "ok", "{health}");

    // A broken release: every node tries it, goes back by itself, and the rollout aborts.
    let broken = root.join("rhizome-0.3.0");
    install(
        &broken,
        b"#!/bin/sh\necho 'this build is broken' >&2\nexit 3\n",
    );
    ok(publish(&fleet.nodes[0], &broken, "0.3.0"));
    let started = Instant::now();
    roll_out(
        &fleet.nodes[0],
        "0.3.0",
        &[
            "--stages",
            "100%",
            "--abort-failures",
            "100",
            "--trial",
            "20s",
        ],
    );
    let mut first_failure = None;
    let aborted = wait_until(
        "the broken release is aborted",
        Duration::from_secs(120),
        || {
            let s = status(&fleet.nodes[0]);
            if first_failure.is_none()
                && names.iter().any(|n| report_of(&s, n)["state"] == "failed")
            {
                first_failure = Some(started.elapsed());
            }
            s["rollout"]["status"]["state"] == "aborted"
        },
    );
    eprintln!(
        "release 0.3.0 (exits at start): first node back on its binary after {first_failure:?}, rollout aborted after {aborted:?}"
    );
    let s = status(&fleet.nodes[0]);
    for (i, node) in fleet.nodes.iter_mut().enumerate() {
        let report = report_of(&s, names[i]);
        assert_eq!(report["state"], "failed", "{}: {s}", names[i]);
        assert!(
            report["reason"]
                .as_str()
                .unwrap_or_default()
                .contains("exited"),
            "{}: {report}",
            names[i]
        );
        assert_eq!(
            sha256(&fleet.bins[i]),
            good_sha,
            "{} is back on 0.2.0",
            names[i]
        );
        assert!(
            node.child.try_wait().unwrap().is_none(),
            "{} runs",
            names[i]
        );
    }

    // A release that comes up healthy on two nodes but not on the third: the third fails its
    // trial, which aborts the rollout, and the two that took it go back to what they ran.
    let other = root.join("rhizome-0.5.0");
    let mut bytes = std::fs::read(rhizome_bin()).unwrap();
    bytes.extend_from_slice(b"\nrhizome release 0.5.0\n");
    install(&other, &bytes);
    std::fs::write(&e2_down, "").unwrap();
    ok(publish(&fleet.nodes[0], &other, "0.5.0"));
    let started = Instant::now();
    roll_out(
        &fleet.nodes[0],
        "0.5.0",
        &[
            "--stages",
            "100%",
            "--abort-failures",
            "30",
            "--trial",
            "8s",
        ],
    );
    wait_until(
        "the two nodes that took 0.5.0 are back on 0.2.0",
        Duration::from_secs(120),
        || {
            let s = status(&fleet.nodes[0]);
            s["rollout"]["status"]["state"] == "aborted"
                && ["cloud", "e1"]
                    .iter()
                    .all(|n| report_of(&s, n)["state"] == "rolled-back")
        },
    );
    eprintln!(
        "release 0.5.0 (unhealthy on e2): rolled back on the other nodes after {:?}",
        started.elapsed()
    );
    std::fs::remove_file(&e2_down).unwrap();
    let s = status(&fleet.nodes[0]);
    let e2_report = report_of(&s, "e2");
    assert_eq!(e2_report["state"], "failed", "{s}");
    assert!(
        e2_report["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("did not come up healthy"),
        "{e2_report}"
    );
    for (i, node) in fleet.nodes.iter_mut().enumerate() {
        assert_eq!(sha256(&fleet.bins[i]), good_sha, "{} is on 0.2.0", names[i]);
        assert!(
            node.child.try_wait().unwrap().is_none(),
            "{} runs",
            names[i]
        );
    }

    // A kill -9 during a trial: the node starts again on the binary it had.
    let hanging = root.join("rhizome-0.4.0");
    install(&hanging, b"#!/bin/sh\nsleep 120\n");
    let hanging_release = ok(publish(&fleet.nodes[0], &hanging, "0.4.0"));
    // Fetched ahead: the cloud, which alone holds it, stops for its own trial at once.
    ok(run_on(
        &fleet.nodes[2],
        &[
            "artifact",
            "fetch",
            hanging_release["artifact"].as_str().unwrap(),
        ],
    ));
    roll_out(
        &fleet.nodes[0],
        "0.4.0",
        &[
            "--stages",
            "100%",
            "--abort-failures",
            "100",
            "--trial",
            "60s",
        ],
    );
    let e2 = root.join("e2");
    wait_until(
        "e2 is trying release 0.4.0",
        Duration::from_secs(60),
        || {
            std::fs::read_to_string(e2.join("release-trial.json"))
                .is_ok_and(|t| t.contains("0.4.0") && t.contains("\"outcome\": null"))
        },
    );
    let mut victim = fleet.nodes.remove(2);
    victim.child.kill().unwrap();
    victim.child.wait().unwrap();
    drop(victim);
    let restarted = fleet.start(2, root);
    assert_eq!(
        sha256(&fleet.bins[2]),
        good_sha,
        "e2 still has 0.2.0 installed"
    );
    wait_until(
        "e2 reports the trial it lost as failed",
        Duration::from_secs(60),
        || {
            let s = status(&restarted);
            report_of(&s, "e2")["state"] == "failed"
        },
    );
    let s = status(&restarted);
    assert!(
        report_of(&s, "e2")["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("stopped during the trial"),
        "{s}"
    );
    fleet.nodes.push(restarted);
}

fn previous_of(installed: &Path) -> PathBuf {
    installed.with_file_name("rhizome.previous")
}
