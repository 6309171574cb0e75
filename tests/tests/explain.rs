//! `rhizome explain` against real nodes: a workflow shared and in sync with every member; a
//! node's results not shared with the cloud (its zone's aggregator takes them); a document
//! whose peer went silent (killed) and a peer down since when and why; a node of another mesh
//! whose connections are refused; a revoked node.

use std::path::Path;
use std::time::Duration;

use rhizome_e2e::process::{
    LogsOnPanic, connected, init, init_in, ok, run, start, start_with, status,
};
use rhizome_e2e::wait_until;
use serde_json::Value;

fn explain(dir: &Path, args: &[&str]) -> Value {
    let mut all = vec!["explain"];
    all.extend(args);
    all.push("--json");
    ok(run(dir, &all))
}

#[test]
fn explain_says_why_documents_and_peers_are_where_they_are() {
    let tmp = tempfile::tempdir().unwrap();
    let [cloud_dir, e1_dir, e2_dir, other_dir] =
        ["cloud", "e1", "e2", "other"].map(|n| tmp.path().join(n));
    let _logs = LogsOnPanic(vec![cloud_dir.clone(), e1_dir.clone(), e2_dir.clone()]);
    init(&cloud_dir, "cloud", None);
    let mesh = cloud_dir.join("mesh");
    let edge = ["--zone", "site-a", "--tag", "sensor"];
    init_in(&e1_dir, "e1", Some(&mesh), &edge);
    init_in(&e2_dir, "e2", Some(&mesh), &edge);
    init(&other_dir, "other", None);

    let cloud = start_with(&cloud_dir, &[], &["--role", "cloud"]);
    let e1 = start(&e1_dir, &[&cloud.quic]);
    let mut e2 = start(&e2_dir, &[&cloud.quic, &e1.quic]);
    for node in [&cloud, &e1, &e2] {
        wait_until("all connected", Duration::from_secs(15), || {
            connected(node) == 2
        });
    }
    let e1_id = status(&e1)["node_id"].as_str().unwrap().to_owned();
    let e2_id = status(&e2)["node_id"].as_str().unwrap().to_owned();
    let file = tmp.path().join("probe.yaml");
    std::fs::write(
        &file,
        "id: probe\ntrigger: manual\ntarget: {tags: [sensor]}\nsteps:\n  - id: s\n    agent: noop\n",
    )
    .unwrap();
    ok(run(
        &cloud_dir,
        &["workflow", "apply", file.to_str().unwrap()],
    ));

    // Shared with every member, and in sync once it has spread.
    wait_until(
        "the workflow is in sync everywhere",
        Duration::from_secs(20),
        || {
            let doc = explain(&cloud_dir, &["doc", "workflow/probe"]);
            let peers = doc["peers"].as_array().unwrap().clone();
            peers.len() == 2 && peers.iter().all(|p| p["in_sync"] == true)
        },
    );
    let doc = explain(&cloud_dir, &["doc", "workflow/probe", "--peer", "e1"]);
    assert!(
        doc["peers"][0]["rule"]
            .as_str()
            .unwrap()
            .contains("every member"),
        "{doc}"
    );

    // e1's results are not the cloud's: its zone's aggregator takes them.
    let record = ok(run(&e1_dir, &["run", "probe", "--json"]));
    assert_eq!(record["status"], "succeeded");
    // Acknowledged once durable in the result log; folded into its window's document a moment
    // later.
    let mut window = None;
    let took = wait_until("e1's results document", Duration::from_secs(10), || {
        window = ok(run(&e1_dir, &["doc", "list", "--json"]))
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|d| d["name"].as_str())
            .find(|n| n.starts_with(&format!("results/{e1_id}/")))
            .map(str::to_owned);
        window.is_some()
    });
    eprintln!("explain: the run was folded {took:?} after it was acknowledged");
    let window = window.unwrap();
    let doc = explain(&e1_dir, &["doc", &window, "--peer", "cloud"]);
    let with_cloud = &doc["peers"][0];
    assert_eq!(with_cloud["shared"], false, "{doc}");
    assert!(
        with_cloud["verdict"]
            .as_str()
            .unwrap()
            .contains("aggregator of its zone"),
        "{doc}"
    );

    // e2 killed: silent, then down; its documents wait for it.
    e2.kill();
    wait_until("the cloud sees e2 down", Duration::from_secs(15), || {
        explain(&cloud_dir, &["peer", &e2_id])["state"] != "connected"
    });
    let peer = explain(&cloud_dir, &["peer", "e2"]);
    assert_eq!(peer["node"], e2_id.as_str());
    assert!(
        peer["verdict"].as_str().unwrap().starts_with("down since"),
        "{peer}"
    );
    let doc = explain(&cloud_dir, &["doc", "workflow/probe", "--peer", &e2_id]);
    assert!(
        doc["peers"][0]["verdict"]
            .as_str()
            .unwrap()
            .contains("not connected"),
        "{doc}"
    );

    // A node of another mesh dialling the cloud: refused, and said so.
    let other = start(&other_dir, &[&cloud.quic]);
    let other_id = status(&other)["node_id"].as_str().unwrap().to_owned();
    wait_until("the stranger is refused", Duration::from_secs(15), || {
        explain(&cloud_dir, &["peer", &other_id])["verdict"]
            .as_str()
            .unwrap()
            .contains("refused as of another mesh")
    });
    let peer = explain(&cloud_dir, &["peer", &other_id]);
    assert_eq!(peer["state"], "unknown", "{peer}");

    // Revoked by the CA.
    ok(run(&cloud_dir, &["mesh", "revoke", &e2_id]));
    let peer = explain(&cloud_dir, &["peer", &e2_id]);
    assert!(
        peer["verdict"]
            .as_str()
            .unwrap()
            .contains("revoked by the mesh CA"),
        "{peer}"
    );
    // A name no node has.
    let peer = explain(&cloud_dir, &["peer", "nobody"]);
    assert!(
        peer["verdict"]
            .as_str()
            .unwrap()
            .contains("has ever been a member"),
        "{peer}"
    );
    // The human form says the same.
    let text = String::from_utf8(run(&cloud_dir, &["explain", "peer", "e1"]).stdout).unwrap();
    assert!(text.contains("connected"), "{text}");
    drop((cloud, e1, other));
}
