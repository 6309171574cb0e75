//! Who may write what, between real processes. A compromised member (b, writing its own store
//! directly) writes a revocation of c, renames another node's registry entry, and writes a
//! workflow version of its own: every other node ignores the revocation and refuses the two
//! changes, which go no further, and records each as a security event. The CA's signed
//! revocation cuts c off everywhere, and its signed withdrawal lets it back in.

use std::time::Duration;

use crdt_store::{DocName, MeshRegistry, Revocation, Store, StoreConfig, WorkflowDoc};
use rhizome_e2e::process::{LogsOnPanic, connected, init, log_file, ok, run, start, status, stop};
use rhizome_e2e::wait_until;

#[test]
fn only_the_ca_revokes_and_withdraws() {
    let tmp = tempfile::tempdir().unwrap();
    let dirs: Vec<_> = ["a", "b", "c"].iter().map(|n| tmp.path().join(n)).collect();
    let (a_dir, b_dir, c_dir) = (&dirs[0], &dirs[1], &dirs[2]);
    let _logs = LogsOnPanic(dirs.clone());
    init(a_dir, "a", None);
    init(b_dir, "b", Some(&a_dir.join("mesh")));
    init(c_dir, "c", Some(&a_dir.join("mesh")));
    let id = |dir: &std::path::Path| {
        ok(run(dir, &["status", "--json"]))["node_id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (b_id, c_id) = (id(b_dir), id(c_dir));
    let mesh_id = ok(run(b_dir, &["status", "--json"]))["mesh_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let a_id = id(a_dir);
    let open_b =
        || Store::open(&b_dir.join("store.redb"), StoreConfig::new(&mesh_id, &b_id)).unwrap();
    // b, compromised, writes "c is revoked" into its own store, unsigned, and a workflow version
    // as if it had the right.
    {
        let mut store = open_b();
        store
            .update::<MeshRegistry, _>(&DocName::Mesh, |m| {
                m.revoked.insert(
                    c_id.clone(),
                    Revocation {
                        revoked_ms: 1,
                        reason: "b says so".into(),
                        ..Revocation::default()
                    },
                );
            })
            .unwrap();
        store
            .update::<WorkflowDoc, _>(&DocName::workflow("rogue").unwrap(), |w| {
                *w = WorkflowDoc {
                    id: "rogue".into(),
                    version: 1,
                    updated_by: b_id.clone(),
                    ..WorkflowDoc::default()
                };
            })
            .unwrap();
    }
    let a = start(a_dir, &[]);
    let mut b = start(b_dir, &[&a.quic]);
    let c = start(c_dir, &[&a.quic, &b.quic]);
    for node in [&a, &b, &c] {
        wait_until("a full mesh, c included", Duration::from_secs(15), || {
            connected(node) == 2
        });
    }
    // The forged decision reached every node, and every node ignores it, saying why.
    for (dir, name) in [(a_dir, "a"), (c_dir, "c")] {
        wait_until(
            &format!("{name} holds and ignores b's decision"),
            Duration::from_secs(15),
            || {
                let log = std::fs::read_to_string(log_file(dir)).unwrap_or_default();
                log.contains("a revocation is ignored") && log.contains("not signed by the mesh CA")
            },
        );
    }
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(connected(&a), 2, "a cut c off on b's word");

    // Then b renames a in the registry. (Once that change is in b's history, nothing b writes to
    // the registry after it is taken by anyone either: a compromised node isolates itself.)
    stop(b);
    open_b()
        .update::<MeshRegistry, _>(&DocName::Mesh, |m| {
            m.nodes.entry(a_id.clone()).or_default().name = "pwned".into();
        })
        .unwrap();
    b = start(b_dir, &[&a.quic]);
    wait_until("b is back", Duration::from_secs(15), || connected(&b) == 2);
    // b's changes went nowhere: a keeps its name and knows no rogue workflow, nor does c.
    for dir in [a_dir, c_dir] {
        let mesh = ok(run(dir, &["doc", "show", "mesh", "--json"]));
        assert_eq!(mesh["content"]["nodes"][&a_id]["name"], "a", "{mesh}");
        let listed = ok(run(dir, &["workflow", "list", "--json"]));
        assert!(!listed.to_string().contains("rogue"), "{listed}");
    }
    // Each refusal is a security event, with the author and the rule.
    wait_until(
        "a records the refused changes",
        Duration::from_secs(15),
        || {
            let events = ok(run(a_dir, &["status", "--security", "--json"]));
            let text = events.to_string();
            events["counts"]["decision_ignored"].as_u64() >= Some(1)
                && events["counts"]["change_refused"].as_u64() >= Some(2)
                && text.contains("each node writes only its own entry")
                && text.contains("not signed")
        },
    );

    // Through the API a member's unsigned decision is refused outright.
    let forged = serde_json::json!({
        "node": c_id,
        "decision": {"revoked_ms": 2, "reason": "again", "withdrawn": false, "signature": ""}
    });
    let out = run(b_dir, &["status", "--json"]);
    assert!(out.status.success());
    let http = std::fs::read_to_string(b_dir.join("node.http")).unwrap();
    let token = std::fs::read_to_string(b_dir.join("api.token")).unwrap();
    let answer = http_post(
        http.trim(),
        "/mesh/revocations",
        token.trim(),
        &forged.to_string(),
    );
    assert!(
        answer.starts_with("HTTP/1.1 403") && answer.contains("not signed"),
        "{answer}"
    );

    // The CA holder revokes c: every node refuses it.
    ok(run(a_dir, &["mesh", "revoke", &c_id, "--reason", "lost"]));
    let took = wait_until("c is cut off everywhere", Duration::from_secs(20), || {
        connected(&a) == 1 && connected(&b) == 1 && connected(&c) == 0
    });
    eprintln!("revoked -> c cut off by every node after {took:?}");
    let b_log = std::fs::read_to_string(log_file(b_dir)).unwrap();
    assert!(b_log.contains("node revoked by the mesh CA"), "{b_log}");
    let events = ok(run(b_dir, &["status", "--security", "--json"]));
    assert!(
        events["counts"]["revocation"].as_u64() >= Some(1),
        "{events}"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(connected(&c), 0, "c got back in");

    // The CA withdraws it: c is admitted again (its redials reach the others).
    ok(run(a_dir, &["mesh", "unrevoke", &c_id]));
    let took = wait_until("c is back", Duration::from_secs(30), || {
        connected(&a) == 2 && connected(&b) == 2 && connected(&c) == 2
    });
    eprintln!("unrevoked -> c connected again after {took:?}");
    assert_eq!(status(&b)["health"]["status"], "ok");
    stop(c);
    drop((a, b));
}

fn http_post(http: &str, path: &str, token: &str, body: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(http).unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}
