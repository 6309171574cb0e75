//! Real `rhizome start` processes on loopback: they connect by `--peer`, `rhizome peers` and
//! `rhizome status` read the running node, a node killed with SIGKILL is noticed by the others
//! within the failure-detection deadline, and SIGTERM shuts a node down cleanly. A cloud node and
//! a site elect their aggregators, and the site re-elects when its aggregator is killed.

use std::path::Path;
use std::time::{Duration, Instant};

use rhizome_e2e::process::{chain, connected, init, init_in, run, start, start_with, status};
use rhizome_e2e::wait_until;
use serde_json::Value;

#[test]
fn three_processes_connect_notice_a_kill_and_stop_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let (a_dir, b_dir, c_dir) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("c"),
    );
    init(&a_dir, "a", None);
    let mesh = a_dir.join("mesh");
    init(&b_dir, "b", Some(&mesh));
    init(&c_dir, "c", Some(&mesh));

    let a = start(&a_dir, &[]);
    let b = start(&b_dir, &[&a.quic]);
    let mut c = start(&c_dir, &[&a.quic, &b.quic]);
    for node in [&a, &b, &c] {
        wait_until("full mesh", Duration::from_secs(10), || {
            connected(node) == 2
        });
    }

    let status = run(&b_dir, &["status", "--json"]);
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["running"], true);
    assert_eq!(status["health"]["quic"], b.quic.as_str());

    // While b runs it holds the store; read commands go through its HTTP API.
    let docs = run(&b_dir, &["doc", "list", "--json"]);
    assert!(
        docs.status.success(),
        "{}",
        String::from_utf8_lossy(&docs.stderr)
    );
    let docs: Value = serde_json::from_slice(&docs.stdout).unwrap();
    assert!(docs.as_array().unwrap().iter().any(|d| d["name"] == "mesh"));
    let mesh = run(&b_dir, &["doc", "show", "mesh", "--json"]);
    let mesh: Value = serde_json::from_slice(&mesh.stdout).unwrap();
    assert_eq!(mesh["kind"], "mesh");
    let missing = run(&b_dir, &["doc", "show", "results/x/2026-11-24T04:00Z+60m"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("results/x/2026-11-24T04:00Z+60m"));
    let results = run(
        &b_dir,
        &["results", "--workflow", "w", "--since", "1h", "--json"],
    );
    assert!(
        results.status.success(),
        "{}",
        String::from_utf8_lossy(&results.stderr)
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&results.stdout).unwrap(),
        Value::Array(vec![])
    );

    // A write through the API: the CLI sends the file with the node's token. b is a member:
    // it may not change what runs where, and is told why.
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples/sensor-zscore.yaml");
    let refused = run(
        &b_dir,
        &["workflow", "apply", example.to_str().unwrap(), "--json"],
    );
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && why.contains("403") && why.contains("`control` role"),
        "{why}"
    );
    // a started the mesh and holds `control`: its version reaches b.
    let applied = run(
        &a_dir,
        &["workflow", "apply", example.to_str().unwrap(), "--json"],
    );
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    rhizome_e2e::wait_until("the workflow reaches b", Duration::from_secs(10), || {
        let listed = run(&b_dir, &["workflow", "list", "--json"]);
        serde_json::from_slice::<Value>(&listed.stdout).is_ok_and(|l| l[0]["id"] == "sensor-zscore")
    });
    assert!(b_dir.join("api.token").exists());
    // Without the token a write is refused.
    let http = std::fs::read_to_string(b_dir.join("node.http")).unwrap();
    let mut stream = std::net::TcpStream::connect(http.trim()).unwrap();
    use std::io::{Read, Write};
    let body = std::fs::read_to_string(&example).unwrap();
    write!(
        stream,
        "POST /workflows HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");

    // SIGKILL: no goodbye, so the others must detect the silence themselves.
    c.child.kill().unwrap();
    c.child.wait().unwrap();
    let took = wait_until("c declared down", Duration::from_secs(6), || {
        connected(&a) == 1 && connected(&b) == 1
    });
    eprintln!("a killed node was declared down after {took:?}");

    // Commands fall back to the store once the node is gone, even though c left its address
    // file behind.
    let offline = run(&c_dir, &["status", "--json"]);
    let offline: Value = serde_json::from_slice(&offline.stdout).unwrap();
    assert_eq!(offline["running"], false);
    let err = run(&c_dir, &["peers"]);
    assert!(String::from_utf8_lossy(&err.stderr).contains("no node is running"));

    // SIGTERM: a clean stop, the address file removed, and the peer told at once.
    #[allow(unsafe_code)]
    let pid = a.child.id() as i32;
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let mut a = a;
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(status) = a.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "a did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    assert!(!a_dir.join("node.http").exists());
    wait_until("b sees a leave", Duration::from_secs(2), || {
        connected(&b) == 0
    });
}

#[test]
fn a_cloud_and_a_site_elect_aggregators_and_the_site_re_elects_after_a_kill() {
    let tmp = tempfile::tempdir().unwrap();
    let (c_dir, e1_dir, e2_dir) = (
        tmp.path().join("cloud"),
        tmp.path().join("e1"),
        tmp.path().join("e2"),
    );
    init(&c_dir, "cloud", None);
    let mesh = c_dir.join("mesh");
    init_in(&e1_dir, "e1", Some(&mesh), &["--zone", "site-a"]);
    init_in(&e2_dir, "e2", Some(&mesh), &["--zone", "site-a"]);

    let cloud = start_with(&c_dir, &[], &["--role", "cloud"]);
    let e1 = start(&e1_dir, &[&cloud.quic]);
    let e2 = start(&e2_dir, &[&cloud.quic, &e1.quic]);
    let cloud_id = status(&cloud)["node_id"].as_str().unwrap().to_owned();
    let ids = [&e1, &e2].map(|n| status(n)["node_id"].as_str().unwrap().to_owned());

    // One aggregator for site-a, the same in both members' chains; the cloud has the root.
    let mut site_aggregator = String::new();
    wait_until(
        "site-a and the root elected",
        Duration::from_secs(15),
        || {
            let chains = [chain(&status(&e1)), chain(&status(&e2))];
            let agreed = chains[0] == chains[1]
                && chains[0].len() == 2
                && ids.contains(&chains[0][0].1)
                && chains[0][1] == (String::new(), cloud_id.clone());
            if agreed {
                site_aggregator = chains[0][0].1.clone();
            }
            agreed
        },
    );
    let cloud_status = status(&cloud);
    assert_eq!(cloud_status["zone"], "");
    assert_eq!(cloud_status["role"], "cloud");
    assert_eq!(
        cloud_status["hierarchy"]["aggregates"],
        serde_json::json!([""])
    );
    let (aggregator, other) = if site_aggregator == ids[0] {
        (e1, e2)
    } else {
        (e2, e1)
    };
    assert_eq!(
        status(&aggregator)["hierarchy"]["aggregates"],
        serde_json::json!(["site-a"])
    );
    let text = run(&other.dir, &["status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("AGGREGATOR") && text.contains("(root)") && text.contains(&cloud_id[..12]),
        "{text}"
    );

    // SIGKILL the site's aggregator: the other member takes over once the loss is detected.
    let mut aggregator = aggregator;
    aggregator.child.kill().unwrap();
    aggregator.child.wait().unwrap();
    let other_id = status(&other)["node_id"].as_str().unwrap().to_owned();
    let took = wait_until("site-a re-elected", Duration::from_secs(10), || {
        chain(&status(&other))
            == vec![
                ("site-a".to_owned(), other_id.clone()),
                (String::new(), cloud_id.clone()),
            ]
    });
    eprintln!(
        "after a kill -9 of site-a's aggregator, the site re-elected within {took:?} (loss detection included)"
    );
}
