//! Three nodes, each in a network namespace of its own, joined by veth pairs to a bridge that
//! lives in a fourth namespace: they find each other by mDNS alone, notice a partition (a link
//! taken down) and reconnect when it heals, and notice a kill -9 and a restart.
//!
//! Every address used lives inside namespaces this test creates and deletes; nothing leaves
//! them. Needs root and iproute2; skipped (with a message) otherwise.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rhizome_e2e::{rhizome_bin, wait_until};
use serde_json::Value;

const NODES: usize = 3;

struct Lab {
    tag: String,
    children: Vec<Option<Child>>,
}

impl Lab {
    fn bridge_ns(&self) -> String {
        format!("rzb-{}", self.tag)
    }
    fn node_ns(&self, i: usize) -> String {
        format!("rz{i}-{}", self.tag)
    }
    /// The node-side veth name (at most 15 characters).
    fn node_if(&self, i: usize) -> String {
        format!("v{i}-{}", self.tag)
    }
    fn bridge_if(&self, i: usize) -> String {
        format!("b{i}-{}", self.tag)
    }

    fn create() -> Lab {
        let lab = Lab {
            tag: format!("{}", std::process::id() % 100_000),
            children: (0..NODES).map(|_| None).collect(),
        };
        let br = lab.bridge_ns();
        sh(&["ip", "netns", "add", &br]);
        ip(&br, &["link", "add", "br0", "type", "bridge"]);
        ip(&br, &["link", "set", "br0", "up"]);
        ip(&br, &["link", "set", "lo", "up"]);
        for i in 0..NODES {
            let ns = lab.node_ns(i);
            sh(&["ip", "netns", "add", &ns]);
            sh(&[
                "ip",
                "link",
                "add",
                &lab.node_if(i),
                "netns",
                &ns,
                "type",
                "veth",
                "peer",
                "name",
                &lab.bridge_if(i),
                "netns",
                &br,
            ]);
            ip(&br, &["link", "set", &lab.bridge_if(i), "master", "br0"]);
            ip(&br, &["link", "set", &lab.bridge_if(i), "up"]);
            ip(&ns, &["link", "set", "lo", "up"]);
            ip(
                &ns,
                &[
                    "addr",
                    "add",
                    &format!("10.77.0.{}/24", i + 1),
                    "dev",
                    &lab.node_if(i),
                ],
            );
            ip(&ns, &["link", "set", &lab.node_if(i), "up"]);
        }
        lab
    }

    fn start(&mut self, i: usize, dir: &Path) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.node_ns(i)])
            .arg(rhizome_bin())
            .arg("--data-dir")
            .arg(dir)
            .args([
                "start",
                "--listen",
                "0.0.0.0:4860",
                "--http",
                "127.0.0.1:4861",
                "--mdns-interface",
                &self.node_if(i),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.contains("serving"), "node {i} did not start: {line:?}");
        self.children[i] = Some(child);
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.children[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn connected(&self, i: usize, dir: &Path) -> usize {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.node_ns(i)])
            .arg(rhizome_bin())
            .arg("--data-dir")
            .arg(dir)
            .args(["peers", "--json"])
            .output()
            .unwrap();
        if !out.status.success() {
            return 0;
        }
        serde_json::from_slice::<Value>(&out.stdout)
            .ok()
            .and_then(|v| v.as_array().cloned())
            .map_or(0, |peers| {
                peers.iter().filter(|p| p["state"] == "connected").count()
            })
    }

    fn set_link(&self, i: usize, up: bool) {
        ip(
            &self.bridge_ns(),
            &[
                "link",
                "set",
                &self.bridge_if(i),
                if up { "up" } else { "down" },
            ],
        );
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for i in 0..NODES {
            self.kill(i);
        }
        for i in 0..NODES {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.node_ns(i)])
                .status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.bridge_ns()])
            .status();
    }
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ip(ns: &str, args: &[&str]) {
    let mut full = vec!["ip", "-n", ns];
    full.extend_from_slice(args);
    sh(&full);
}

fn can_run() -> bool {
    #[allow(unsafe_code)]
    let root = unsafe { libc::geteuid() } == 0;
    let ip = Command::new("ip")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !root || !ip {
        eprintln!("skipped: network namespaces need root and iproute2 (root: {root}, ip: {ip})");
    }
    root && ip
}

#[test]
fn namespaced_nodes_discover_partition_heal_and_survive_a_kill() {
    if !can_run() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dirs: Vec<PathBuf> = (0..NODES)
        .map(|i| tmp.path().join(format!("n{i}")))
        .collect();
    let mesh = dirs[0].join("mesh");
    for (i, dir) in dirs.iter().enumerate() {
        let mut cmd = Command::new(rhizome_bin());
        cmd.arg("--data-dir")
            .arg(dir)
            .args(["init", "--name", &format!("n{i}")]);
        if i > 0 {
            cmd.arg("--mesh").arg(&mesh);
        }
        assert!(cmd.status().unwrap().success());
    }
    let mut lab = Lab::create();
    for (i, dir) in dirs.iter().enumerate() {
        lab.start(i, dir);
    }
    let took = wait_until("discovery by mDNS alone", Duration::from_secs(20), || {
        (0..NODES).all(|i| lab.connected(i, &dirs[i]) == NODES - 1)
    });
    eprintln!("full mesh by mDNS after {took:?}");

    // Partition: node 2's link to the bridge goes down.
    lab.set_link(2, false);
    let took = wait_until("partition noticed", Duration::from_secs(8), || {
        lab.connected(0, &dirs[0]) == 1 && lab.connected(2, &dirs[2]) == 0
    });
    eprintln!("partition noticed after {took:?}");
    lab.set_link(2, true);
    let took = wait_until("partition healed", Duration::from_secs(10), || {
        (0..NODES).all(|i| lab.connected(i, &dirs[i]) == NODES - 1)
    });
    eprintln!("reconnected {took:?} after the heal");

    // kill -9 and restart.
    lab.kill(1);
    let took = wait_until("kill noticed", Duration::from_secs(8), || {
        lab.connected(0, &dirs[0]) == 1 && lab.connected(2, &dirs[2]) == 1
    });
    eprintln!("kill -9 noticed after {took:?}");
    lab.start(1, &dirs[1]);
    let took = wait_until("restarted node rejoins", Duration::from_secs(15), || {
        (0..NODES).all(|i| lab.connected(i, &dirs[i]) == NODES - 1)
    });
    eprintln!("restarted node rejoined after {took:?}");
}
