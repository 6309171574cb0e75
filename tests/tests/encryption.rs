//! Encryption at rest between real processes: encrypted nodes sync like any others and keep
//! nothing of a workflow, an input or an output readable in their store files (a workflow
//! written on one is stored sealed on the other); a store opens
//! only with its key and says which key it needs; `store rotate-key` on a running node, and
//! killed with SIGKILL at any moment, leaves every record readable with exactly one key; a key
//! kept outside the data dir rotates in two steps.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use rand::Rng;
use rhizome_e2e::process::{LogsOnPanic, command, init_in, ok, run, start, stop};
use rhizome_e2e::wait_until;
use serde_json::Value;

fn run_with_key(dir: &Path, key: &str, args: &[&str]) -> Output {
    command(None)
        .env("RHIZOME_STORE_KEY", key)
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .output()
        .unwrap()
}

fn failed(out: Output) -> String {
    assert!(
        !out.status.success(),
        "succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn file_contains(path: &Path, text: &str) -> bool {
    let bytes = std::fs::read(path).unwrap();
    bytes.windows(text.len()).any(|w| w == text.as_bytes())
}

fn new_key() -> String {
    rand::thread_rng()
        .r#gen::<[u8; 32]>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn result_count(dir: &Path) -> usize {
    ok(run(dir, &["results", "--json"]))
        .as_array()
        .unwrap()
        .len()
}

fn keys(dir: &Path) -> Value {
    ok(run(dir, &["store", "keys", "--json"]))
}

const ECHO: &str = "
id: echo
description: WORKFLOWMARK shows its input
steps:
  - id: pick
    agent: select
    inputs: [input]
    config: {fields: [secret]}
";

#[test]
fn encrypted_nodes_sync_and_keep_nothing_readable_on_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (tmp.path().join("a"), tmp.path().join("b"));
    let _logs = LogsOnPanic(vec![a_dir.clone(), b_dir.clone()]);
    let out = run(&a_dir, &["init", "--name", "a", "--encrypt", "--json"]);
    let made = ok(out);
    let key_file = a_dir.join("store.key");
    assert_eq!(made["encryption"]["key_file"], key_file.to_str().unwrap());
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the key file is its owner's only");
    let mesh = a_dir.join("mesh");
    init_in(&b_dir, "b", Some(&mesh), &["--encrypt"]);

    let a = start(&a_dir, &[]);
    let b = start(&b_dir, &[&a.quic]);
    let workflow = tmp.path().join("echo.yaml");
    std::fs::write(&workflow, ECHO).unwrap();
    ok(run(
        &a_dir,
        &["workflow", "apply", workflow.to_str().unwrap()],
    ));
    let input = tmp.path().join("input.json");
    std::fs::write(&input, r#"{"secret": "OUTPUTMARK-42"}"#).unwrap();
    wait_until("b holds a's workflow", Duration::from_secs(20), || {
        run(&b_dir, &["workflow", "show", "echo", "--json"])
            .status
            .success()
    });
    let record = ok(run(
        &b_dir,
        &["run", "echo", "--input", input.to_str().unwrap(), "--json"],
    ));
    assert!(
        record["output"].as_str().unwrap().contains("OUTPUTMARK-42"),
        "{record}"
    );
    let report = ok(run(&b_dir, &["sync", "--timeout", "20s", "--json"]));
    assert_eq!(report["converged"], true, "{report}");
    assert_eq!(
        ok(run(&a_dir, &["status", "--json"]))["health"]["store"]["encryption"]["store_key"],
        made["encryption"]["store_key"]
    );
    stop(a);
    stop(b);

    for dir in [&a_dir, &b_dir] {
        let file = dir.join("store.redb");
        for mark in [
            "OUTPUTMARK",
            "WORKFLOWMARK",
            "shows its input",
            "\"secret\"",
        ] {
            assert!(
                !file_contains(&file, mark),
                "{mark} is readable in {}",
                file.display()
            );
        }
    }

    // A wrong key: refused with both fingerprints named, at start too.
    let right = std::fs::read_to_string(&key_file).unwrap();
    std::fs::write(&key_file, format!("{}\n", new_key())).unwrap();
    let err = failed(run(&a_dir, &["results"]));
    assert!(err.contains("wrong key"), "{err}");
    assert!(
        err.contains(made["encryption"]["store_key"].as_str().unwrap()),
        "{err}"
    );
    let err = failed(run(
        &a_dir,
        &["start", "--no-mdns", "--listen", "127.0.0.1:0"],
    ));
    assert!(err.contains("wrong key"), "{err}");

    // No key at all: says where it looked.
    std::fs::remove_file(&key_file).unwrap();
    let err = failed(run(&a_dir, &["results"]));
    assert!(
        err.contains("RHIZOME_STORE_KEY") && err.contains(key_file.to_str().unwrap()),
        "{err}"
    );
    // The key from the environment instead of the file.
    let shown = ok(run_with_key(
        &a_dir,
        right.trim(),
        &["workflow", "show", "echo", "--json"],
    ));
    assert!(shown.to_string().contains("WORKFLOWMARK"), "{shown}");
    let err = failed(run_with_key(&a_dir, "not-a-key", &["results"]));
    assert!(err.contains("not 64 hex digits"), "{err}");
}

#[test]
fn rotating_the_key_survives_sigkill_at_any_moment() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("n");
    let _logs = LogsOnPanic(vec![dir.clone()]);
    init_in(&dir, "n", None, &["--encrypt"]);
    ok(run(&dir, &["demo", "--runs", "400"]));
    let runs = result_count(&dir);
    assert!(runs >= 400, "{runs}");
    let first_key = std::fs::read_to_string(dir.join("store.key")).unwrap();

    // On a running node: the rotation answers once the new key is in place, and a kill right
    // after leaves the re-seal to the next start.
    let mut node = start(&dir, &[]);
    let rotation = ok(run(&dir, &["store", "rotate-key", "--json"]));
    node.kill();
    assert_eq!(rotation["finished"], true, "{rotation}");
    let second_key = std::fs::read_to_string(dir.join("store.key")).unwrap();
    assert_ne!(first_key, second_key);
    assert!(!dir.join("store.key.new").exists());
    let err = failed(run_with_key(&dir, first_key.trim(), &["results"]));
    assert!(
        err.contains("wrong key"),
        "the old key still opens the store: {err}"
    );
    let node = start(&dir, &[]);
    wait_until("the re-seal ends", Duration::from_secs(30), || {
        keys(&dir)["keys"]["resealing"] == false
    });
    let status = keys(&dir);
    assert_eq!(
        status["keys"]["store_key"], rotation["store_key"],
        "{status}"
    );
    assert_eq!(status["keys"]["old_data_keys"], serde_json::json!([]));
    assert_eq!(result_count(&dir), runs);
    stop(node);

    // Offline, killed at moments spread over the rotation and its re-seal: every time, the
    // next open finishes or drops what was cut short, and everything reads with the one key
    // in the key file.
    for delay_ms in [0, 2, 5, 10, 20, 40, 80] {
        let mut rotating = command(None)
            .arg("--data-dir")
            .arg(&dir)
            .args(["store", "rotate-key", "--json"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = rotating.kill();
        let _ = rotating.wait();
        assert_eq!(result_count(&dir), runs, "after a kill at {delay_ms} ms");
        assert!(!dir.join("store.key.new").exists());
        let status = keys(&dir);
        assert!(status["keys"]["rotating_to"].is_null(), "{status}");
        assert_eq!(status["keys"]["other_store_keys"], serde_json::json!([]));
    }
    let last = ok(run(&dir, &["store", "rotate-key", "--json"]));
    assert_eq!(last["finished"], true);
    let status = keys(&dir);
    assert_eq!(
        status["keys"]["resealing"], false,
        "re-sealed before returning"
    );
    assert_eq!(result_count(&dir), runs);
}

#[test]
fn a_key_kept_outside_the_data_dir_rotates_in_two_steps() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("n");
    let old = new_key();
    ok(run_with_key(
        &dir,
        &old,
        &["init", "--name", "n", "--encrypt"],
    ));
    assert!(
        !dir.join("store.key").exists(),
        "the given key is not written to disk"
    );
    let workflow = tmp.path().join("echo.yaml");
    std::fs::write(&workflow, ECHO).unwrap();
    ok(run_with_key(
        &dir,
        &old,
        &["workflow", "apply", workflow.to_str().unwrap()],
    ));

    let rotation = ok(run_with_key(&dir, &old, &["store", "rotate-key", "--json"]));
    assert_eq!(rotation["finished"], false, "{rotation}");
    let next_file = dir.join("store.key.next");
    assert_eq!(rotation["new_key_file"], next_file.to_str().unwrap());
    let new = std::fs::read_to_string(&next_file)
        .unwrap()
        .trim()
        .to_owned();
    // The old key opens it until the new one is in use; the old one cannot finish it.
    ok(run_with_key(&dir, &old, &["workflow", "show", "echo"]));
    let err = failed(run_with_key(
        &dir,
        &old,
        &["store", "rotate-key", "--finish"],
    ));
    assert!(err.contains("install the new key"), "{err}");
    let keys = ok(run_with_key(&dir, &old, &["store", "keys", "--json"]));
    assert_eq!(keys["keys"]["rotating_to"], rotation["store_key"], "{keys}");

    // The first open with the new key retires the old one and the copy left in the data dir.
    ok(run_with_key(&dir, &new, &["workflow", "show", "echo"]));
    assert!(!next_file.exists());
    let err = failed(run_with_key(&dir, &old, &["workflow", "show", "echo"]));
    assert!(err.contains("wrong key"), "{err}");
    let finished = ok(run_with_key(
        &dir,
        &new,
        &["store", "rotate-key", "--finish", "--json"],
    ));
    assert_eq!(finished["finished"], true, "{finished}");
    let keys = ok(run_with_key(&dir, &new, &["store", "keys", "--json"]));
    assert!(keys["keys"]["rotating_to"].is_null(), "{keys}");
    assert_eq!(keys["keys"]["other_store_keys"], serde_json::json!([]));
}
