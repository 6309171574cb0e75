//! The `rhizome` binary as an operator uses it: init, demo, reading documents and results, and
//! clear errors for bad input.

use std::path::Path;
use std::process::Command;

use rhizome_e2e::oneshot::{fails, json, ok, rhizome};
use rhizome_e2e::rhizome_bin;
use serde_json::Value;

#[test]
fn init_creates_a_node_once() {
    let dir = tempfile::tempdir().unwrap();
    let node = dir.path().join("n1");
    let out = json(&ok(rhizome(
        &node,
        &[
            "init",
            "--name",
            "press-7",
            "--zone",
            "site-a/line-3",
            "--json",
        ],
    )));
    let id = out["node_id"].as_str().unwrap();
    assert_eq!(id.len(), 32);
    assert_eq!(out["zone"], "site-a/line-3");
    for file in ["node.key", "rhizome.toml", "store.redb"] {
        assert!(node.join(file).exists(), "{file} missing");
    }
    let err = fails(rhizome(&node, &["init"]));
    assert!(
        err.contains("already holds node") && err.contains(id),
        "{err}"
    );

    let mesh = json(&ok(rhizome(&node, &["doc", "show", "mesh", "--json"])));
    assert_eq!(mesh["kind"], "mesh");
    assert_eq!(mesh["content"]["nodes"][id]["name"], "press-7");
}

#[test]
fn flags_override_environment_override_file() {
    let dir = tempfile::tempdir().unwrap();
    let node = dir.path().join("n");
    std::fs::create_dir_all(&node).unwrap();
    std::fs::write(
        node.join("rhizome.toml"),
        "[node]\nname = \"from-file\"\nzone = \"file-zone\"\n",
    )
    .unwrap();
    let out = Command::new(rhizome_bin())
        .args(["--data-dir"])
        .arg(&node)
        .args(["init", "--name", "from-flag", "--json"])
        .env("RHIZOME_NODE_NAME", "from-env")
        .env("RHIZOME_NODE_ZONE", "env-zone")
        .output()
        .unwrap();
    let out = json(&ok(out));
    assert_eq!(out["name"], "from-flag");
    assert_eq!(out["zone"], "env-zone");
    let saved = std::fs::read_to_string(node.join("rhizome.toml")).unwrap();
    assert!(saved.contains("from-flag"), "{saved}");
}

#[test]
fn demo_results_and_documents_are_readable() {
    let dir = tempfile::tempdir().unwrap();
    let node = dir.path().join("demo");
    let out = ok(rhizome(&node, &["demo", "--runs", "150"]));
    assert!(out.contains("ran it 150 times"), "{out}");

    let results = json(&ok(rhizome(&node, &["results", "--json"])));
    let runs = results.as_array().unwrap();
    assert_eq!(runs.len(), 150);
    assert!(runs.iter().all(|r| r["workflow"] == "sensor-zscore"));
    assert!(
        runs.windows(2)
            .all(|w| w[0]["finished_ms"].as_i64() <= w[1]["finished_ms"].as_i64()),
        "oldest first"
    );
    let limited = json(&ok(rhizome(&node, &["results", "--limit", "5", "--json"])));
    assert_eq!(limited.as_array().unwrap().len(), 5);
    let none = json(&ok(rhizome(
        &node,
        &["results", "--workflow", "other", "--json"],
    )));
    assert_eq!(none.as_array().unwrap().len(), 0);
    let recent = json(&ok(rhizome(
        &node,
        &["results", "--since", "30m", "--json"],
    )));
    let recent = recent.as_array().unwrap().len();
    assert!(
        (55..=65).contains(&recent),
        "30 minutes of 30 s runs: {recent}"
    );

    let docs = json(&ok(rhizome(&node, &["doc", "list", "--json"])));
    let names: Vec<&str> = docs
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["name"].as_str())
        .collect();
    assert!(names.contains(&"mesh"));
    let window = names
        .iter()
        .find(|n| n.starts_with("results/"))
        .expect("a results window");
    let shown = json(&ok(rhizome(&node, &["doc", "show", window, "--json"])));
    assert_eq!(shown["kind"], "results");
    assert!(!shown["content"]["runs"].as_object().unwrap().is_empty());

    let compacted = json(&ok(rhizome(&node, &["doc", "compact", "--json"])));
    assert!(!compacted.as_array().unwrap().is_empty());
    let again = json(&ok(rhizome(&node, &["results", "--json"])));
    assert_eq!(
        again.as_array().unwrap().len(),
        150,
        "compaction keeps every run"
    );

    let text = ok(rhizome(&node, &["results", "--limit", "3"]));
    assert!(text.starts_with("FINISHED"), "{text}");
    assert!(text.contains("3 runs"), "{text}");
}

#[test]
fn bad_input_gets_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let node = dir.path().join("n");

    let err = fails(rhizome(&node, &["results"]));
    assert!(
        err.contains("holds no rhizome node") && err.contains("rhizome init"),
        "{err}"
    );

    ok(rhizome(&node, &["init"]));
    let err = fails(rhizome(&node, &["doc", "show", "workflow/nope"]));
    assert!(err.contains("workflow/nope"), "{err}");
    let err = fails(rhizome(&node, &["doc", "show", "workflow/a/b"]));
    assert!(err.contains("workflow/<id>"), "{err}");
    let err = fails(rhizome(&node, &["results", "--since", "yesterday"]));
    assert!(err.contains("--since `yesterday`"), "{err}");

    let config = node.join("rhizome.toml");
    let original = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        original.replace("compact_after_chunks", "compact_after_chunk"),
    )
    .unwrap();
    let err = fails(rhizome(&node, &["results"]));
    assert!(
        err.contains("rhizome.toml") && err.contains("compact_after_chunk"),
        "{err}"
    );
    std::fs::write(&config, &original).unwrap();

    std::fs::write(node.join("store.redb"), vec![0x5a; 40_000]).unwrap();
    let err = fails(rhizome(&node, &["results"]));
    assert!(
        err.contains("store.redb") && err.contains("corrupt"),
        "{err}"
    );

    std::fs::write(node.join("node.key"), "not hex").unwrap();
    let err = fails(rhizome(&node, &["doc", "list"]));
    assert!(err.contains("node.key") && err.contains("corrupt"), "{err}");
}

#[test]
fn nodes_join_a_mesh_by_its_certificate_authority() {
    let dir = tempfile::tempdir().unwrap();
    let mesh_dir = dir.path().join("mesh");
    let created = json(&ok(rhizome(
        dir.path(),
        &[
            "mesh",
            "create",
            "--dir",
            mesh_dir.to_str().unwrap(),
            "--json",
        ],
    )));
    let mesh_id = created["mesh_id"].as_str().unwrap().to_owned();
    let err = fails(rhizome(
        dir.path(),
        &["mesh", "create", "--dir", mesh_dir.to_str().unwrap()],
    ));
    assert!(err.contains("already holds a mesh CA"), "{err}");

    let mut ids = Vec::new();
    for name in ["a", "b"] {
        let out = json(&ok(rhizome(
            &dir.path().join(name),
            &["init", "--mesh", mesh_dir.to_str().unwrap(), "--json"],
        )));
        assert_eq!(out["mesh_id"], mesh_id.as_str());
        assert!(dir.path().join(name).join("node.crt").exists());
        ids.push(out["node_id"].as_str().unwrap().to_owned());
    }
    let alone = json(&ok(rhizome(&dir.path().join("alone"), &["init", "--json"])));
    assert_ne!(
        alone["mesh_id"],
        mesh_id.as_str(),
        "a node without --mesh starts its own"
    );
    assert!(dir.path().join("alone/mesh/ca.key").exists());

    let err = fails(rhizome(
        &dir.path().join("c"),
        &[
            "init",
            "--mesh",
            dir.path().join("nowhere").to_str().unwrap(),
        ],
    ));
    assert!(
        err.contains("nowhere") && err.contains("mesh create"),
        "{err}"
    );

    // A plain member cannot revoke: the decision must be signed by the mesh CA.
    let err = fails(rhizome(&dir.path().join("a"), &["mesh", "revoke", &ids[1]]));
    assert!(err.contains("needs the mesh CA's key"), "{err}");
    let mesh_arg = mesh_dir.to_str().unwrap();
    ok(rhizome(
        &dir.path().join("a"),
        &["mesh", "revoke", &ids[1], "--mesh", mesh_arg],
    ));
    let mesh = json(&ok(rhizome(
        &dir.path().join("a"),
        &["doc", "show", "mesh", "--json"],
    )));
    let decision = &mesh["content"]["revoked"][&ids[1]];
    assert_eq!(decision["withdrawn"], false, "{mesh}");
    assert_eq!(
        decision["signature"].as_str().map(str::len),
        Some(128),
        "{mesh}"
    );
    ok(rhizome(
        &dir.path().join("a"),
        &["mesh", "unrevoke", &ids[1], "--mesh", mesh_arg],
    ));
    let mesh = json(&ok(rhizome(
        &dir.path().join("a"),
        &["doc", "show", "mesh", "--json"],
    )));
    assert_eq!(
        mesh["content"]["revoked"][&ids[1]]["withdrawn"], true,
        "{mesh}"
    );
    // Another mesh's CA signs nothing here.
    let err = fails(rhizome(
        &dir.path().join("a"),
        &[
            "mesh",
            "revoke",
            &ids[1],
            "--mesh",
            dir.path().join("alone/mesh").to_str().unwrap(),
        ],
    ));
    assert!(err.contains("is of mesh"), "{err}");
    let err = fails(rhizome(&dir.path().join("a"), &["mesh", "revoke", "bob"]));
    assert!(err.contains("not a node id"), "{err}");
}

#[test]
fn workflows_are_validated_applied_and_versioned() {
    let dir = tempfile::tempdir().unwrap();
    let node = dir.path().join("n");
    // The example targets nodes tagged `sensor`.
    ok(rhizome(&node, &["init", "--tag", "sensor"]));
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples/sensor-zscore.yaml");
    let applied = json(&ok(rhizome(
        &node,
        &["workflow", "apply", example.to_str().unwrap(), "--json"],
    )));
    assert_eq!(applied["id"], "sensor-zscore");
    assert_eq!(applied["version"], 1);
    assert_eq!(applied["steps"].as_object().unwrap().len(), 3);
    let again = json(&ok(rhizome(
        &node,
        &["workflow", "apply", example.to_str().unwrap(), "--json"],
    )));
    assert_eq!(again["version"], 2, "every apply is a new version");
    let listed = json(&ok(rhizome(&node, &["workflow", "list", "--json"])));
    assert_eq!(listed.as_array().unwrap().len(), 1);
    let shown = json(&ok(rhizome(
        &node,
        &["workflow", "show", "sensor-zscore", "--json"],
    )));
    assert_eq!(shown["trigger"], "every 30s");

    let bad = dir.path().join("bad.yaml");
    let text = std::fs::read_to_string(&example).unwrap();
    std::fs::write(&bad, text.replace("agent: zscore", "agent: zscroe")).unwrap();
    let err = fails(rhizome(
        &node,
        &["workflow", "apply", bad.to_str().unwrap()],
    ));
    assert!(
        err.contains("bad.yaml") && err.contains("step `score`") && err.contains("zscroe"),
        "{err}"
    );
    std::fs::write(&bad, text.replace("retries: 2", "retrys: 2")).unwrap();
    let err = fails(rhizome(
        &node,
        &["workflow", "apply", bad.to_str().unwrap()],
    ));
    assert!(err.contains("retrys") && err.contains("line"), "{err}");
    let err = fails(rhizome(&node, &["workflow", "show", "nope"]));
    assert!(err.contains("workflow/nope"), "{err}");

    // Run it once: every step recorded, the run stored durably and listed.
    let record = json(&ok(rhizome(&node, &["run", "sensor-zscore", "--json"])));
    assert_eq!(record["status"], "succeeded");
    assert_eq!(record["workflow_version"], 2);
    let steps: Vec<&str> = record["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(steps, vec!["read", "score", "alert"]);
    assert_eq!(
        record["steps"][2]["status"], "skipped",
        "no anomaly on a first reading"
    );
    assert!(record["output"].as_str().unwrap().contains("\"z\""));
    let results = json(&ok(rhizome(
        &node,
        &["results", "--workflow", "sensor-zscore", "--json"],
    )));
    assert_eq!(results[0]["run_id"], record["run_id"]);

    // A run that fails is recorded as failed, with the step's error, and exits non-zero.
    let failing = dir.path().join("failing.yaml");
    std::fs::write(
        &failing,
        "id: failing\nsteps:\n  - id: check\n    agent: threshold\n    inputs: [input]\n    config: {field: v, above: 1}\n",
    )
    .unwrap();
    ok(rhizome(
        &node,
        &["workflow", "apply", failing.to_str().unwrap()],
    ));
    let input = dir.path().join("input.json");
    std::fs::write(&input, "{\"w\": 3}").unwrap();
    let err = fails(rhizome(
        &node,
        &["run", "failing", "--input", input.to_str().unwrap()],
    ));
    assert!(
        err.contains("failed") && err.contains("no field `v`"),
        "{err}"
    );
    let stored = json(&ok(rhizome(
        &node,
        &["results", "--workflow", "failing", "--json"],
    )));
    assert_eq!(stored[0]["status"], "failed");
    let err = fails(rhizome(&node, &["run", "nope"]));
    assert!(err.contains("no workflow `nope`"), "{err}");

    // The selector decides where a workflow runs, on request too.
    let elsewhere = dir.path().join("elsewhere.yaml");
    std::fs::write(
        &elsewhere,
        "id: elsewhere\ntarget: {zones: [site-b]}\nsteps:\n  - id: a\n    agent: noop\n",
    )
    .unwrap();
    ok(rhizome(
        &node,
        &["workflow", "apply", elsewhere.to_str().unwrap()],
    ));
    let err = fails(rhizome(&node, &["run", "elsewhere"]));
    assert!(
        err.contains("zones=site-b") && err.contains("does not select this node"),
        "{err}"
    );
    let listed = ok(rhizome(&node, &["workflow", "list"]));
    assert!(
        listed.contains("TARGET") && listed.contains("zones=site-b"),
        "{listed}"
    );
}

/// A data dir the user may not write: as root file modes do not apply, so the binary runs as
/// `nobody` through setpriv.
#[test]
fn a_data_dir_without_permission_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let locked = dir.path().join("locked");
    std::fs::create_dir(&locked).unwrap();
    let target = locked.join("node");
    let mut cmd;
    #[allow(unsafe_code)]
    let is_root = unsafe { libc::geteuid() } == 0;
    if is_root {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o700)).unwrap();
        cmd = Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(rhizome_bin());
    } else {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o500)).unwrap();
        cmd = Command::new(rhizome_bin());
    }
    let output = cmd
        .arg("--data-dir")
        .arg(&target)
        .arg("init")
        .output()
        .expect("running rhizome (setpriv is in util-linux, installed by scripts/setup.sh)");
    let err = fails(output);
    assert!(
        err.contains(target.to_str().unwrap()) && err.contains("ermission denied"),
        "{err}"
    );
}

#[test]
fn logs_can_be_written_as_one_json_object_per_line() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let node = dir.path().join("n");
    ok(rhizome(&node, &["init", "--name", "logs"]));
    let mut child = Command::new(rhizome_bin())
        .arg("--data-dir")
        .arg(&node)
        .args([
            "start",
            "--no-mdns",
            "--listen",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
        ])
        .env("RHIZOME_LOG_FORMAT", "json")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut serving = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut serving)
        .unwrap();
    assert!(serving.contains("serving"), "{serving}");
    #[allow(unsafe_code)]
    // SAFETY: kill(2) on the pid of a child this test spawned and has not reaped.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{}: {stderr}", out.status);
    let mut messages = Vec::new();
    for line in stderr.lines() {
        let event: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            event["level"].is_string() && event["timestamp"].is_string(),
            "{event}"
        );
        messages.push(
            event["fields"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    assert!(
        messages.iter().any(|m| m.contains("shutting down")),
        "{messages:?}"
    );
    let out = rhizome(&node, &["--log-format", "xml", "doc", "list"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("xml") && err.contains("json"),
        "{err}"
    );
}

#[test]
fn quiet_leaves_notes_out_and_errors_in() {
    let dir = tempfile::tempdir().unwrap();
    let node = dir.path().join("n");
    ok(rhizome(&node, &["init", "--name", "quiet"]));
    let token = |extra: &[&str]| {
        let out = rhizome(
            &node,
            &[
                extra,
                &["token", "create", "--role", "monitor", "--name", "t"],
            ]
            .concat(),
        );
        assert!(out.status.success(), "{out:?}");
        (
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let (printed, noted) = token(&[]);
    assert!(!printed.trim().is_empty());
    assert!(noted.contains("shown this once"), "{noted}");
    let (printed, noted) = token(&["-q"]);
    assert!(
        !printed.trim().is_empty(),
        "-q keeps what the command answers"
    );
    assert_eq!(noted, "", "-q leaves only errors on stderr");
    let err = fails(rhizome(&node, &["-q", "artifact", "show", "nothing-here"]));
    assert!(err.contains("nothing-here"), "{err}");
}
