//! `rhizome config list|get|set` on a data dir made by `rhizome init`, as an operator runs it.

use rhizome_e2e::oneshot::{fails, json, ok, rhizome};

#[test]
fn config_set_get_list_on_an_initialised_node() {
    let tmp = tempfile::tempdir().unwrap();
    let node = tmp.path().join("n");
    ok(rhizome(&node, &["init", "--name", "n"]));
    let file = node.join("rhizome.toml");
    // An operator's comment, which `set` must keep.
    let with_comment = std::fs::read_to_string(&file).unwrap().replace(
        "min_free = \"default\"",
        "min_free = \"default\" # small SD card",
    );
    std::fs::write(&file, &with_comment).unwrap();

    let listed = ok(rhizome(&node, &["config", "list"]));
    assert!(listed.contains("node.name = \"n\"\n"), "{listed}");
    assert!(
        listed.contains("store.min_free = \"default\"\n"),
        "{listed}"
    );
    assert!(
        listed.contains("health.checks = [] (default)\n"),
        "{listed}"
    );

    let out = ok(rhizome(
        &node,
        &["config", "set", "store.min_free", "128MB"],
    ));
    assert!(out.contains("store.min_free: default -> 128MB"), "{out}");
    assert!(out.contains("next start"), "{out}");
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(
        text,
        with_comment.replace("\"default\" # small", "\"128MB\" # small")
    );
    assert_eq!(
        ok(rhizome(&node, &["config", "get", "store.min_free"])),
        "128MB\n"
    );
    let got = json(&ok(rhizome(
        &node,
        &["config", "get", "store.min_free", "--json"],
    )));
    assert_eq!(got["value"], "128MB");
    assert_eq!(got["source"], "file");

    // Lists, comma-separated; a key the file leaves out shows its default.
    ok(rhizome(
        &node,
        &["config", "set", "node.tags", "camera,line-3"],
    ));
    let all = json(&ok(rhizome(&node, &["config", "list", "--json"])));
    let entry = |key: &str| {
        all.as_array()
            .unwrap()
            .iter()
            .find(|e| e["key"] == key)
            .unwrap_or_else(|| panic!("{key} not listed: {all}"))
            .clone()
    };
    assert_eq!(
        entry("node.tags")["value"],
        serde_json::json!(["camera", "line-3"])
    );
    assert_eq!(entry("alerts.rules")["source"], "default");
    assert_eq!(entry("network.listen")["value"], "0.0.0.0:4860");

    // Refused: the file stays byte for byte.
    let before = std::fs::read(&file).unwrap();
    for (args, named) in [
        (
            &["config", "set", "store.min_free", "lots"][..],
            "store.min_free",
        ),
        (
            &["config", "set", "network.listen", "nope"],
            "network.listen",
        ),
        (&["config", "set", "store.min_fre", "1GB"], "min_free"),
        (&["config", "get", "node.nmae"], "name, zone, tags"),
        (&["config", "set", "health.checks", "[]"], "edit"),
    ] {
        let err = fails(rhizome(&node, args));
        assert!(err.contains(named), "{args:?}: {err}");
        if args[1] == "get" {
            assert!(
                err.contains("node.nmae") && err.contains("name, zone"),
                "{err}"
            );
        }
        assert_eq!(
            std::fs::read(&file).unwrap(),
            before,
            "{args:?} changed the file"
        );
    }

    // With a node running on the data dir (anything answering at its `node.http`), `set` says
    // to restart it.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std::fs::write(
        node.join("node.http"),
        listener.local_addr().unwrap().to_string(),
    )
    .unwrap();
    let out = ok(rhizome(&node, &["config", "set", "node.cpus", "2"]));
    assert!(out.contains("restart the node to apply"), "{out}");
    let out = json(&ok(rhizome(
        &node,
        &["config", "set", "node.cpus", "4", "--json"],
    )));
    assert_eq!(out["restart_needed"], true);
    assert_eq!(
        (out["old"].clone(), out["new"].clone()),
        (2.into(), 4.into())
    );
}
