//! One artifact moving from one node to another on loopback, beside the same bytes over the
//! same QUIC transport with nothing on top.
//!
//! - `plain`: two mesh drivers of this build (quinn, mutual TLS, the node's transport settings)
//!   in this process; one sends the file's bytes as 256 KiB frames on the bulk stream, the
//!   other writes them to a file and syncs it at the end: a file copy over QUIC with nothing
//!   else, no requests, no hashing.
//! - `node`: two `rhizome start` processes (release build, `--no-mdns`); the file is added on
//!   the first, and `rhizome artifact fetch <id>` on the second is timed: the manifest, every
//!   chunk asked for, read and checked on the sender, checked, written and fsynced on the
//!   receiver.
//!
//! Beside the wall time, the CPU time both sides spent (user and system, every thread): the two
//! share this machine's cores, so their CPU per byte bounds the throughput either can reach.
//!
//! Each repeat uses new data dirs and new drivers; the two alternate. Environment (defaults in
//! brackets): `RHIZOME_BENCH_MB` the file's size [200], `RHIZOME_BENCH_REPEATS` [3],
//! `RHIZOME_BENCH_DIR`, `RHIZOME_BENCH_OUT` [`<target>/bench/artifact-transfer.jsonl`].

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mesh::net::driver::{MeshConfig, MeshEvent};
use mesh::net::identity::{MeshCa, NodeCredentials, NodeRole, Revocations};
use mesh::proto::membership::Timing;
use mesh::proto::wire::{Capabilities, Message, Power, Role};
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

const RHIZOME: &str = env!("CARGO_BIN_EXE_rhizome");
const FRAME: usize = 256 * 1024;

fn main() {
    let mb = common::number("RHIZOME_BENCH_MB", 200);
    let repeats = common::number("RHIZOME_BENCH_REPEATS", 3);
    let (dir, out) = common::places(
        Path::new(env!("CARGO_TARGET_TMPDIR")),
        "artifact-transfer.jsonl",
    );
    std::fs::create_dir_all(&dir).unwrap();
    let mut report = common::Report::create(&out);
    let mut bytes = vec![0u8; mb * 1024 * 1024];
    rand::rngs::StdRng::seed_from_u64(5).fill(&mut bytes[..]);
    let file = dir.join("artifact-transfer.bin");
    std::fs::write(&file, &bytes).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut plain = Vec::new();
    let mut node = Vec::new();
    for repeat in 0..repeats {
        settle_disk();
        let cpu_before = own_cpu_seconds();
        let p = runtime.block_on(plain_quic(&bytes, &dir.join("plain-copy.bin")));
        let plain_cpu = own_cpu_seconds() - cpu_before;
        let (n, sender_cpu, receiver_cpu) =
            through_nodes(&dir.join(format!("nodes-{repeat}")), &file);
        let _ = std::fs::remove_file(dir.join("plain-copy.bin"));
        println!(
            "repeat {}: plain QUIC {:.0} MB/s, node to node {:.0} MB/s ({:.2}x); CPU seconds: plain {plain_cpu:.2}, node {:.2} (sender {sender_cpu:.2}, receiver {receiver_cpu:.2})",
            repeat + 1,
            mb as f64 / p,
            mb as f64 / n,
            p / n,
            sender_cpu + receiver_cpu,
        );
        report.record(json!({
            "bench": "artifact_transfer", "mb": mb, "plain_s": p, "node_s": n,
            "plain_cpu_s": plain_cpu, "sender_cpu_s": sender_cpu, "receiver_cpu_s": receiver_cpu,
        }));
        plain.push(p);
        node.push(n);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    // Each repeat's two copies ran a moment apart, under the same state of the machine: the
    // median of their ratios is steadier than the ratio of the two medians.
    let mut ratios: Vec<f64> = plain.iter().zip(&node).map(|(p, n)| p / n).collect();
    let (p, n) = (median(&mut plain), median(&mut node));
    println!(
        "median of {repeats}: plain QUIC {:.2} s ({:.0} MB/s), node to node {:.2} s ({:.0} MB/s): {:.2}x the plain throughput; median of the repeats' ratios {:.2}x",
        p,
        mb as f64 / p,
        n,
        mb as f64 / n,
        p / n,
        median(&mut ratios),
    );
    let _ = std::fs::remove_file(&file);
}

fn credentials(ca: &MeshCa, seed: u8) -> NodeCredentials {
    let secret = [seed; 32];
    let public = ed25519_dalek::SigningKey::from_bytes(&secret)
        .verifying_key()
        .to_bytes();
    let cert = ca.issue(&public, NodeRole::Member).unwrap();
    NodeCredentials::new(&cert, ca.cert_pem(), secret).unwrap()
}

fn config(ca: &MeshCa, seed: u8, bootstrap: Vec<String>) -> MeshConfig {
    MeshConfig {
        credentials: credentials(ca, seed),
        revoked: Revocations::default(),
        mesh_id: ca.mesh_id().to_owned(),
        zone: String::new(),
        role: Role::Edge,
        capabilities: Capabilities {
            power: Power::Mains,
            cpus: 2,
            memory_mb: 1024,
            disk_free_mb: 1024,
        },
        listen: "127.0.0.1:0".parse().unwrap(),
        bootstrap,
        discovery: None,
        timing: Timing::default(),
        seed: u64::from(seed),
        enrolment: None,
    }
}

/// Seconds for `bytes` to cross from one driver to the other as bulk frames and be durable in
/// the file `copy`.
async fn plain_quic(bytes: &[u8], copy: &Path) -> f64 {
    let ca = MeshCa::create().unwrap();
    let (a, mut a_events) = mesh::net::driver::spawn(config(&ca, 1, Vec::new()))
        .await
        .unwrap();
    let (b, mut b_events) =
        mesh::net::driver::spawn(config(&ca, 2, vec![a.local_addr().to_string()]))
            .await
            .unwrap();
    let b_id = credentials(&ca, 2).node_id().unwrap();
    loop {
        if let Some(MeshEvent::PeerUp(peer)) = a_events.recv().await
            && peer == b_id
        {
            break;
        }
    }
    let total = bytes.len();
    let mut file = std::fs::File::create(copy).unwrap();
    let receiver = tokio::spawn(async move {
        use std::io::Write as _;
        let mut got = 0;
        while got < total {
            match b_events.recv().await {
                Some(MeshEvent::Received(_, Message::ChunkData { bytes, .. })) => {
                    file.write_all(&bytes).unwrap();
                    got += bytes.len();
                }
                Some(_) => {}
                None => break,
            }
        }
        file.sync_all().unwrap();
        Instant::now()
    });
    let outbox = a.bulk_outbox(&b_id).await.unwrap().unwrap();
    let started = Instant::now();
    for frame in bytes.chunks(FRAME) {
        outbox
            .send(Message::ChunkData {
                hash: [0; 32],
                bytes: bytes::Bytes::copy_from_slice(frame),
            })
            .await
            .unwrap();
    }
    let done = tokio::time::timeout(Duration::from_secs(600), receiver)
        .await
        .unwrap()
        .unwrap();
    a.shutdown().await;
    b.shutdown().await;
    (done - started).as_secs_f64()
}

fn rhizome(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(RHIZOME)
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .output()
        .expect("running rhizome");
    assert!(
        out.status.success(),
        "rhizome {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn start(dir: &Path, peers: &[&str]) -> (Child, String) {
    let mut args = vec![
        "start",
        "--listen",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
        "--no-mdns",
    ];
    for peer in peers {
        args.extend(["--peer", peer]);
    }
    let mut child = Command::new(RHIZOME)
        .arg("--data-dir")
        .arg(dir)
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting rhizome");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let quic = line
        .split(" quic ")
        .nth(1)
        .and_then(|rest| rest.split([',', ' ']).next())
        .unwrap_or_else(|| panic!("the node did not start: {line:?}"))
        .to_owned();
    (child, quic)
}

fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

/// User and system CPU seconds of every thread of this process so far (the plain copy's two
/// drivers and the runtime they run on; nothing else runs meanwhile).
#[allow(unsafe_code)]
fn own_cpu_seconds() -> f64 {
    // SAFETY: getrusage writes one rusage into the zeroed struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

fn cpu_seconds(pid: u32) -> f64 {
    common::process_cpu(pid).as_secs_f64()
}

/// Seconds for `rhizome artifact fetch` of `file` on a node that lacks it, from a peer that
/// holds it, and the CPU seconds the sending and the receiving node spent meanwhile.
fn through_nodes(root: &Path, file: &Path) -> (f64, f64, f64) {
    let _ = std::fs::remove_dir_all(root);
    let (a_dir, b_dir) = (root.join("a"), root.join("b"));
    rhizome(&a_dir, &["init", "--name", "a"]);
    let mesh = a_dir.join("mesh");
    rhizome(
        &b_dir,
        &["init", "--name", "b", "--mesh", mesh.to_str().unwrap()],
    );
    let added: Value = serde_json::from_str(&rhizome(
        &a_dir,
        &["artifact", "add", file.to_str().unwrap(), "--json"],
    ))
    .unwrap();
    let id = added["id"].as_str().unwrap().to_owned();
    let (a, a_quic) = start(&a_dir, &[]);
    let (b, _) = start(&b_dir, &[&a_quic]);
    settle_disk();
    // Until b is connected to a, a fetch fails at once (no peer to ask): the successful one
    // is timed.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (sender_before, receiver_before) = (cpu_seconds(a.id()), cpu_seconds(b.id()));
    let seconds = loop {
        let started = Instant::now();
        let out = Command::new(RHIZOME)
            .arg("--data-dir")
            .arg(&b_dir)
            .args(["artifact", "fetch", &id, "--json"])
            .output()
            .expect("running rhizome");
        if out.status.success() {
            break started.elapsed().as_secs_f64();
        }
        assert!(
            Instant::now() < deadline,
            "the fetch kept failing: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let sender_cpu = cpu_seconds(a.id()) - sender_before;
    let receiver_cpu = cpu_seconds(b.id()) - receiver_before;
    stop(b);
    stop(a);
    let _ = std::fs::remove_dir_all(root);
    (seconds, sender_cpu, receiver_cpu)
}

/// Writes out what setting up left dirty (the source file, the sender's chunks, the previous
/// run's files), so that each timed transfer flushes its own bytes only: two machines would
/// not share one disk's backlog.
#[allow(unsafe_code)]
fn settle_disk() {
    // SAFETY: sync(2) takes no arguments and touches no memory of ours.
    unsafe { libc::sync() };
}
