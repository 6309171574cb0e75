//! `rhizome artifact` on a real node: offline on the data dir, then through the running node's
//! API (which owns the directory while it runs); a new version stores only the chunks that
//! changed; bytes come back identical; a chunk damaged on disk is never served; bad requests
//! get errors naming what was wrong.

use std::path::Path;

use rand::{Rng, SeedableRng};
use rhizome_e2e::oneshot::fails;
use rhizome_e2e::process::{LogsOnPanic, init, ok, run, run_on, start, stop};

fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut data = vec![0u8; len];
    rng.fill(&mut data[..]);
    data
}

/// Flips a byte of chunk `hash` where a pack holds it: a record is `RZC1`, the length (4 bytes),
/// the SHA-256 (32 bytes), then the chunk.
fn damage_packed_chunk(packs: &Path, hash: &str) {
    let raw: Vec<u8> = (0..hash.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hash[i..i + 2], 16).unwrap())
        .collect();
    for entry in std::fs::read_dir(packs).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "pack") {
            continue;
        }
        let mut bytes = std::fs::read(&path).unwrap();
        if let Some(at) = bytes.windows(raw.len()).position(|w| w == raw) {
            bytes[at + raw.len() + 100] ^= 0xff;
            std::fs::write(&path, bytes).unwrap();
            return;
        }
    }
    panic!("no pack in {} holds chunk {hash}", packs.display());
}

fn write(path: &Path, bytes: &[u8]) -> String {
    std::fs::write(path, bytes).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn artifacts_are_added_fetched_versioned_and_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a");
    let _logs = LogsOnPanic(vec![dir.clone()]);
    init(&dir, "a", None);

    // Offline: the CLI works on the data dir itself.
    let v1 = noise(1, 3 * 1024 * 1024 + 5);
    let v1_path = write(&tmp.path().join("model-v1.onnx"), &v1);
    let added = ok(run(
        &dir,
        &["artifact", "add", &v1_path, "--name", "model", "--json"],
    ));
    let v1_id = added["id"].as_str().unwrap().to_owned();
    assert_eq!(added["size"], v1.len());
    assert_eq!(added["new_chunks"], added["chunks"]);
    let out = tmp.path().join("out-offline");
    ok(run(
        &dir,
        &[
            "artifact",
            "fetch",
            "model",
            "--output",
            out.to_str().unwrap(),
        ],
    ));
    assert_eq!(std::fs::read(&out).unwrap(), v1);

    // Through the running node.
    let node = start(&dir, &[]);
    let listed = ok(run_on(&node, &["artifact", "list", "--json"]));
    assert_eq!(listed["artifacts"][0]["id"], v1_id.as_str());
    assert_eq!(listed["artifacts"][0]["complete"], true);

    // A second version sharing most bytes: only the chunks around the change are new.
    let mut v2 = v1.clone();
    v2[1_500_000..1_600_000].copy_from_slice(&noise(2, 100_000));
    let v2_path = write(&tmp.path().join("model-v2.onnx"), &v2);
    let added = ok(run_on(
        &node,
        &["artifact", "add", &v2_path, "--name", "model", "--json"],
    ));
    let v2_id = added["id"].as_str().unwrap().to_owned();
    assert_ne!(v2_id, v1_id);
    let new_bytes = added["new_bytes"].as_u64().unwrap();
    assert!(
        new_bytes < 2 * 1024 * 1024 + 100_000,
        "{new_bytes} new bytes for a 100 kB change in 3 MB"
    );
    let shown = ok(run_on(&node, &["artifact", "show", "model", "--json"]));
    assert_eq!(shown["id"], v2_id.as_str(), "the name follows the last add");
    assert_eq!(shown["missing_chunks"], 0);
    let out = tmp.path().join("out-v2");
    ok(run_on(
        &node,
        &[
            "artifact",
            "fetch",
            "model",
            "--output",
            out.to_str().unwrap(),
        ],
    ));
    assert_eq!(std::fs::read(&out).unwrap(), v2);
    // The old version by an id prefix.
    let out = tmp.path().join("out-v1");
    ok(run_on(
        &node,
        &[
            "artifact",
            "fetch",
            &v1_id[..12],
            "--output",
            out.to_str().unwrap(),
        ],
    ));
    assert_eq!(std::fs::read(&out).unwrap(), v1);

    // A chunk damaged on disk is not served: the fetch fails, nothing is written, and the
    // chunk is counted missing from then on.
    let manifest = &shown["manifest"]["chunks"];
    let first = manifest[0]["hash"].as_str().unwrap();
    damage_packed_chunk(&dir.join("artifacts/packs"), first);
    let broken = tmp.path().join("out-broken");
    let err = fails(run_on(
        &node,
        &[
            "artifact",
            "fetch",
            &v2_id,
            "--output",
            broken.to_str().unwrap(),
        ],
    ));
    assert!(err.contains(&v2_id), "{err}");
    assert!(!broken.exists(), "a damaged artifact was written out");
    let shown = ok(run_on(&node, &["artifact", "show", &v2_id, "--json"]));
    assert_eq!(shown["missing_chunks"], 1);
    let err = fails(run_on(&node, &["artifact", "fetch", &v2_id]));
    assert!(err.contains("1 of its chunks"), "{err}");

    // Bad requests, each named.
    let err = fails(run_on(&node, &["artifact", "show", "nothing-here"]));
    assert!(err.contains("no artifact named `nothing-here`"), "{err}");
    let err = fails(run_on(
        &node,
        &["artifact", "add", &v1_path, "--name", "a/b"],
    ));
    assert!(err.contains("no `/`"), "{err}");
    let err = fails(run_on(&node, &["artifact", "add", "/no/such/file"]));
    assert!(err.contains("/no/such/file"), "{err}");

    // Removing v1 and collecting frees the chunks only v1 had.
    ok(run_on(&node, &["artifact", "remove", &v1_id]));
    let collected = ok(run_on(&node, &["artifact", "gc", "--json"]));
    assert!(
        collected["chunks_removed"].as_u64().unwrap() >= 1,
        "{collected}"
    );
    let listed = ok(run_on(&node, &["artifact", "list", "--json"]));
    assert_eq!(listed["artifacts"].as_array().unwrap().len(), 1);
    stop(node);
}
