//! Artifacts moving between real nodes on loopback: added at the cloud, fetched by the edges of
//! a site through their aggregator, so the cloud serves each blob once for the whole site; a
//! second version moves only its new chunks; a fetch cut by kill -9 of the fetching node
//! resumes without asking again for what it stored; a node that has never seen an artifact is
//! told so by name.

use std::path::Path;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rhizome_e2e::oneshot::fails;
use rhizome_e2e::process::{
    LogsOnPanic, Running, add_artifact, chain, cloud_and_site, init, init_in, ok, run, run_on,
    start, start_on_with, start_with, status, stop,
};
use rhizome_e2e::wait_until;
use serde_json::Value;

fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut data = vec![0u8; len];
    rng.fill(&mut data[..]);
    data
}

fn moved(node: &Running) -> Value {
    ok(run_on(node, &["artifact", "list", "--json"]))["transfer"].clone()
}

fn fetch_to(node: &Running, id: &str, out: &Path) -> Value {
    ok(run_on(
        node,
        &[
            "artifact",
            "fetch",
            id,
            "--output",
            out.to_str().unwrap(),
            "--json",
        ],
    ))
}

#[test]
fn a_site_fetches_each_blob_from_the_cloud_once() {
    let tmp = tempfile::tempdir().unwrap();
    let _logs = LogsOnPanic(
        ["cloud", "e1", "e2", "e3"]
            .iter()
            .map(|n| tmp.path().join(n))
            .collect(),
    );
    let [cloud, e1, e2, e3]: [Running; 4] = cloud_and_site(tmp.path(), &["e1", "e2", "e3"], &[])
        .try_into()
        .unwrap_or_else(|_| unreachable!());
    let edges = [&e1, &e2, &e3];
    wait_until("the site elected", Duration::from_secs(20), || {
        let chains: Vec<_> = edges.iter().map(|e| chain(&status(e))).collect();
        chains
            .iter()
            .all(|c| *c == chains[0] && c.len() == 2 && !c[0].1.is_empty())
    });
    let aggregator_id = chain(&status(&e1))[0].1.clone();
    let aggregator = *edges
        .iter()
        .find(|e| status(e)["node_id"] == aggregator_id.as_str())
        .unwrap();

    let v1 = noise(7, 6 * 1024 * 1024);
    let v1_path = tmp.path().join("model-v1.onnx");
    std::fs::write(&v1_path, &v1).unwrap();
    let added = add_artifact(&cloud, &v1_path, Some("model"));
    let v1_id = added["id"].as_str().unwrap().to_owned();

    // An edge that has never seen it: by name it is unknown, by id it is fetched.
    let err = fails(run_on(&e1, &["artifact", "fetch", "model"]));
    assert!(err.contains("whole id"), "{err}");
    for (i, edge) in edges.iter().enumerate() {
        let out = tmp.path().join(format!("out-{i}"));
        let fetched = fetch_to(edge, &v1_id, &out);
        assert_eq!(std::fs::read(&out).unwrap(), v1, "edge {i}");
        assert_eq!(fetched["id"], v1_id.as_str());
    }
    // The cloud served the manifest and each distinct chunk once: to the aggregator, which
    // served its members from its own copy.
    let served = moved(&cloud)["bytes_served"].as_u64().unwrap();
    let distinct: u64 = added["bytes"].as_u64().unwrap_or(v1.len() as u64);
    assert!(
        served >= distinct && served <= distinct + distinct / 20,
        "the cloud served {served} bytes for an artifact of {distinct}"
    );
    let by_aggregator = moved(aggregator)["bytes_served"].as_u64().unwrap();
    eprintln!(
        "artifact {distinct} bytes: the cloud served {served}, the aggregator {by_aggregator}"
    );
    assert!(
        by_aggregator >= 2 * distinct,
        "the aggregator served {by_aggregator} bytes to its two members"
    );

    // A second version differing in 200 kB moves about that, not the whole file.
    let mut v2 = v1.clone();
    v2[3_000_000..3_200_000].copy_from_slice(&noise(8, 200_000));
    let v2_path = tmp.path().join("model-v2.onnx");
    std::fs::write(&v2_path, &v2).unwrap();
    let added = add_artifact(&cloud, &v2_path, Some("model"));
    let v2_id = added["id"].as_str().unwrap().to_owned();
    let out = tmp.path().join("out-v2");
    let fetched = fetch_to(&e3, &v2_id, &out);
    assert_eq!(std::fs::read(&out).unwrap(), v2);
    let moved_bytes = fetched["bytes_fetched"].as_u64().unwrap();
    assert!(
        moved_bytes < 200_000 + 3 * 1024 * 1024,
        "{moved_bytes} bytes moved for a 200 kB change"
    );
    assert!(moved_bytes < v2.len() as u64 / 2, "{moved_bytes}");

    stop(e3);
    stop(e2);
    stop(e1);
    stop(cloud);
}

#[test]
fn a_fetch_cut_by_kill_resumes_with_what_it_stored() {
    let tmp = tempfile::tempdir().unwrap();
    let (c_dir, e_dir) = (tmp.path().join("cloud"), tmp.path().join("edge"));
    let _logs = LogsOnPanic(vec![c_dir.clone(), e_dir.clone()]);
    init(&c_dir, "cloud", None);
    init_in(
        &e_dir,
        "edge",
        Some(&c_dir.join("mesh")),
        &["--zone", "site-a"],
    );
    // The cloud's traffic capped, so that the kill lands mid-fetch.
    ok(run(&c_dir, &["config", "set", "sync.max_rate", "4MB"]));
    let cloud = start_with(&c_dir, &[], &["--role", "cloud"]);
    let data = noise(9, 24 * 1024 * 1024);
    let path = tmp.path().join("big.bin");
    std::fs::write(&path, &data).unwrap();
    let added = add_artifact(&cloud, &path, None);
    let id = added["id"].as_str().unwrap().to_owned();
    let chunks = added["chunks"].as_u64().unwrap();

    let mut edge = start(&e_dir, &[&cloud.quic]);
    let edge_addr = edge.quic.clone();
    let api = edge.dir.clone();
    let fetching = std::thread::spawn({
        let id = id.clone();
        move || {
            // Fails once the node is killed under it.
            let _ = rhizome_e2e::process::command(None)
                .arg("--data-dir")
                .arg(&api)
                .args(["artifact", "fetch", &id, "--json"])
                .output();
        }
    });
    // Kill as soon as some chunks are stored and not all. Through the node while it runs,
    // then on its data dir (what a restart finds in its packs).
    let count = || {
        let out = run(&e_dir, &["artifact", "show", &id, "--json"]);
        if !out.status.success() {
            return 0;
        }
        ok(out)["chunks_here"].as_u64().unwrap_or(0)
    };
    wait_until("some chunks stored", Duration::from_secs(60), || {
        count() >= 3
    });
    edge.kill();
    let _ = fetching.join();
    let stored_before = count();
    assert!(
        stored_before >= 3 && stored_before < chunks,
        "{stored_before} of {chunks} chunks found after the kill"
    );

    let edge = start_on_with(&e_dir, &edge_addr, &[&cloud.quic], &[]);
    let out = tmp.path().join("out");
    let fetched = fetch_to(&edge, &id, &out);
    assert_eq!(std::fs::read(&out).unwrap(), data);
    let refetched = fetched["blobs_fetched"].as_u64().unwrap();
    eprintln!(
        "{stored_before} blobs stored before the kill, {refetched} fetched after, {chunks} chunks"
    );
    assert!(
        refetched + stored_before <= chunks + 2,
        "fetched {refetched} blobs again with {stored_before} already stored of {chunks}"
    );
    stop(edge);
    stop(cloud);
}
