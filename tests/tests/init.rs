//! `rhizome init` is atomic: the data dir appears whole or not at all.

use rhizome_e2e::process::{ok, run};

fn leftovers(parent: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(parent)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".init-"))
        .collect()
}

#[test]
fn a_failed_init_leaves_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    let bogus = tmp.path().join("no-such-mesh");
    let out = run(
        &dir,
        &["init", "--name", "a", "--mesh", bogus.to_str().unwrap()],
    );
    assert!(!out.status.success());
    assert!(!dir.exists(), "a failed init left a data dir behind");
    assert!(
        leftovers(tmp.path()).is_empty(),
        "{:?}",
        leftovers(tmp.path())
    );
    // The same command with a good mesh then succeeds.
    ok(run(&dir, &["init", "--name", "a"]));
    assert!(dir.join("rhizome.toml").exists());
    assert!(leftovers(tmp.path()).is_empty());
}

#[test]
fn init_into_a_dir_with_a_written_config_keeps_its_settings() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("rhizome.toml"),
        "[node]\nzone = \"site-a/line-1\"\n",
    )
    .unwrap();
    let made = ok(run(&dir, &["init", "--name", "b", "--json"]));
    assert_eq!(made["zone"], "site-a/line-1");
    let status = ok(run(&dir, &["status", "--json"]));
    assert_eq!(status["name"], "b");
    assert!(leftovers(tmp.path()).is_empty());
    let again = run(&dir, &["init", "--name", "b"]);
    assert!(
        !again.status.success(),
        "a second init must not replace the node"
    );
}
