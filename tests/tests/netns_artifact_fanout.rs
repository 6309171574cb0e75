//! Artifacts across two sites and a cloud, with real packets between network namespaces (lab:
//! tests/src/netns.rs, `Lab::two_sites_and_a_cloud`: three edges per site behind a router,
//! the cloud reached by address).
//!
//! A 50 MB artifact added at the cloud is fetched by all six edges at once: every edge writes
//! out the exact file, and each site's uplink (the router's interface into the site) carries
//! about one copy, since each site's aggregator fetches every chunk once and serves its members.
//! A second version differing in 1 MB in the middle moves about 1 MB per uplink. A fetch cut by
//! unplugging its site's uplink resumes after the uplink is back, asking only for what it
//! lacks. Figures are printed; the uplink bounds (1.10 copies, 4 MB) are asserted. Needs root
//! and iproute2; skipped otherwise.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rhizome_e2e::netns::{Host, Lab, start_node};
use rhizome_e2e::process::{
    LogsOnPanic, Running, add_artifact, agreed_aggregator, init, init_in, ok, run_on, status,
};
use rhizome_e2e::wait_until;
use serde_json::Value;

fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill(&mut data[..]);
    data
}

/// Bytes the router has sent into each site so far (its interfaces `to-a`, `to-b`).
fn downlink_bytes(router: &Host) -> [u64; 2] {
    ["to-a", "to-b"].map(|interface| {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &router.ns, "cat"])
            .arg(format!("/sys/class/net/{interface}/statistics/tx_bytes"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    })
}

fn add(cloud: &Running, path: &Path, bytes: &[u8]) -> String {
    std::fs::write(path, bytes).unwrap();
    add_artifact(cloud, path, None)["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Every edge fetches `id` at once and writes it out; each copy must equal `expected`.
fn fetch_everywhere(edges: &[Running], id: &str, out: &Path, expected: &[u8]) -> Duration {
    let started = Instant::now();
    std::thread::scope(|scope| {
        for (i, edge) in edges.iter().enumerate() {
            let file = out.join(format!("{id}-{i}"));
            scope.spawn(move || {
                ok(run_on(
                    edge,
                    &[
                        "artifact",
                        "fetch",
                        id,
                        "--output",
                        file.to_str().unwrap(),
                        "--json",
                    ],
                ));
                assert!(
                    std::fs::read(&file).unwrap() == expected,
                    "edge {i} wrote other bytes"
                );
                let _ = std::fs::remove_file(&file);
            });
        }
    });
    started.elapsed()
}

/// Chunks of `id` that `node` holds (0 until it has the manifest).
fn chunks_here(node: &Running, id: &str) -> u64 {
    let out = run_on(node, &["artifact", "show", id, "--json"]);
    if !out.status.success() {
        return 0;
    }
    serde_json::from_slice::<Value>(&out.stdout).unwrap()["chunks_here"]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn a_site_fetches_each_chunk_across_its_uplink_once() {
    let Some(mut lab) = Lab::new() else { return };
    let net = lab.two_sites_and_a_cloud(3);
    let tmp = tempfile::tempdir().unwrap();
    let cloud_dir = tmp.path().join("cloud");
    init(&cloud_dir, "cloud", None);
    let mesh = cloud_dir.join("mesh");
    let mut dirs: Vec<PathBuf> = vec![cloud_dir.clone()];
    for (site, zone) in ["a", "b"].iter().zip(["site-a", "site-b"]) {
        for i in 0..3 {
            let dir = tmp.path().join(format!("{site}{i}"));
            init_in(&dir, &format!("{site}{i}"), Some(&mesh), &["--zone", zone]);
            dirs.push(dir);
        }
    }
    let _logs = LogsOnPanic(dirs.clone());
    let cloud = start_node(&net.cloud, None, &cloud_dir, &[], &["--role", "cloud"]);
    let cloud_id = status(&cloud)["node_id"].as_str().unwrap().to_owned();
    let cloud_addr = net.cloud_cable.quic();
    let mut edges = Vec::new();
    for (s, site) in net.sites.iter().enumerate() {
        for (i, (host, cable)) in site.hosts.iter().zip(&site.cables).enumerate() {
            edges.push(start_node(
                host,
                Some(cable),
                &dirs[1 + s * 3 + i],
                &[&cloud_addr],
                &[],
            ));
        }
    }
    let ids: Vec<String> = edges
        .iter()
        .map(|e| status(e)["node_id"].as_str().unwrap().to_owned())
        .collect();
    wait_until("both sites elected", Duration::from_secs(30), || {
        (0..2).all(|s| {
            agreed_aggregator(
                &edges[s * 3..s * 3 + 3],
                ["site-a", "site-b"][s],
                &ids[s * 3..s * 3 + 3],
                &cloud_id,
            )
            .is_some()
        })
    });

    // 50 MB to six edges.
    let size = 50 * 1024 * 1024;
    let v1 = noise(1, size);
    let v1_id = add(&cloud, &tmp.path().join("v1.bin"), &v1);
    let served = |node: &Running| {
        ok(run_on(node, &["artifact", "list", "--json"]))["transfer"]["bytes_served"]
            .as_u64()
            .unwrap()
    };
    let cloud_served = served(&cloud);
    let before = downlink_bytes(&net.router);
    let took = fetch_everywhere(&edges, &v1_id, tmp.path(), &v1);
    let after = downlink_bytes(&net.router);
    // What the cloud served, in blob frames: one copy per site, whatever each member asked.
    let copies = (served(&cloud) - cloud_served) as f64 / size as f64;
    eprintln!("the cloud served {copies:.4} copies of the artifact to two sites");
    assert!(
        copies < 2.01,
        "the cloud served {copies:.3} copies to two sites of three edges"
    );
    let per_site: Vec<u64> = (0..2).map(|s| after[s] - before[s]).collect();
    for (s, bytes) in per_site.iter().enumerate() {
        // On the wire: every QUIC packet's headers, AEAD tag, UDP, IP and Ethernet headers.
        eprintln!(
            "50 MB to 3 edges of site {}: {bytes} bytes over its uplink ({:.3} copies on the wire), all six edges in {took:?}",
            ["a", "b"][s],
            *bytes as f64 / size as f64
        );
        assert!(
            (*bytes as f64) < 1.10 * size as f64,
            "site {s}'s uplink carried {bytes} bytes for a {size}-byte artifact"
        );
    }

    // A second version, 1 MB different (2 %).
    let mut v2 = v1.clone();
    v2[size / 2..size / 2 + 1024 * 1024].copy_from_slice(&noise(2, 1024 * 1024));
    let v2_id = add(&cloud, &tmp.path().join("v2.bin"), &v2);
    let before = downlink_bytes(&net.router);
    let took = fetch_everywhere(&edges, &v2_id, tmp.path(), &v2);
    let after = downlink_bytes(&net.router);
    for s in 0..2 {
        let bytes = after[s] - before[s];
        eprintln!(
            "a 1 MB change in 50 MB to site {}: {bytes} bytes over its uplink ({:.1} % of the file), in {took:?}",
            ["a", "b"][s],
            bytes as f64 * 100.0 / size as f64
        );
        assert!(
            bytes < 4 * 1024 * 1024,
            "site {s}'s uplink carried {bytes} bytes for a 1 MB change"
        );
    }

    // Site b's uplink unplugged in the middle of a fetch; it resumes once plugged back.
    let v3 = noise(3, 30 * 1024 * 1024);
    let v3_id = add(&cloud, &tmp.path().join("v3.bin"), &v3);
    let b1 = &edges[4];
    let uplink = net.sites[1].uplink.clone();
    let cut = std::thread::scope(|scope| {
        let fetching = scope.spawn(|| run_on(b1, &["artifact", "fetch", &v3_id, "--json"]));
        wait_until("some chunks of v3 at b1", Duration::from_secs(60), || {
            chunks_here(b1, &v3_id) >= 10 || fetching.is_finished()
        });
        lab.set_plugged(&uplink, false);
        let first = fetching.join().unwrap();
        lab.set_plugged(&uplink, true);
        first
    });
    eprintln!(
        "fetch with the uplink cut: {}",
        if cut.status.success() {
            "finished before the cut"
        } else {
            "cut short"
        }
    );
    let out = tmp.path().join("v3-out");
    let mut resumed = Value::Null;
    wait_until(
        "the fetch completes after the uplink is back",
        Duration::from_secs(120),
        || {
            let again = run_on(
                b1,
                &[
                    "artifact",
                    "fetch",
                    &v3_id,
                    "--output",
                    out.to_str().unwrap(),
                    "--json",
                ],
            );
            if again.status.success() {
                resumed = serde_json::from_slice(&again.stdout).unwrap();
                true
            } else {
                std::thread::sleep(Duration::from_secs(1));
                false
            }
        },
    );
    assert_eq!(std::fs::read(&out).unwrap(), v3);
    eprintln!(
        "resumed after the uplink came back: {} more blobs, {} bytes",
        resumed["blobs_fetched"], resumed["bytes_fetched"]
    );
    assert!(
        resumed["bytes_fetched"].as_u64().unwrap() < v3.len() as u64 || cut.status.success(),
        "the resumed fetch moved the whole artifact again: {resumed}"
    );
    drop(cloud);
}
