//! Health checks of a real node: a check configured in `rhizome.toml` turns `/health` to 503
//! with its reason when it fails, `failing` rather than `degraded` when it is critical, and
//! back to 200 when it passes again; `status` shows the checks.

use std::path::Path;
use std::time::Duration;

use rhizome_e2e::process::{LogsOnPanic, init, ok, run, start};
use rhizome_e2e::wait_until;
use serde_json::Value;

fn health(dir: &Path) -> Value {
    ok(run(dir, &["status", "--json"]))["health"].clone()
}

#[test]
fn a_failing_check_degrades_the_node_until_it_passes_again() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("n");
    let _logs = LogsOnPanic(vec![dir.clone()]);
    init(&dir, "n", None);
    let flag = tmp.path().join("camera-present");
    let power = tmp.path().join("power-ok");
    std::fs::write(&flag, "").unwrap();
    std::fs::write(&power, "").unwrap();
    let config = dir.join("rhizome.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "\n[[health.checks]]\nname = \"camera\"\ncommand = \"test -e {}\"\ninterval = \"200ms\"\n\
         timeout = \"2s\"\n\n[[health.checks]]\nname = \"power\"\ncommand = \"test -e {} || \
         (echo no mains >&2; exit 1)\"\ninterval = \"200ms\"\ncritical = true\n",
        flag.display(),
        power.display()
    ));
    std::fs::write(&config, text).unwrap();
    let _node = start(&dir, &[]);
    wait_until("the checks pass", Duration::from_secs(10), || {
        health(&dir)["status"] == "ok"
    });
    let checks = health(&dir)["checks"].clone();
    for name in [
        "store",
        "clock",
        "certificate",
        "aggregator",
        "sync",
        "camera",
        "power",
    ] {
        assert!(
            checks
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["name"] == name && c["status"] == "ok"),
            "{name}: {checks}"
        );
    }

    std::fs::remove_file(&flag).unwrap();
    wait_until("the camera check fails", Duration::from_secs(10), || {
        health(&dir)["status"] == "degraded"
    });
    let h = health(&dir);
    assert!(h["problems"].to_string().contains("check camera"), "{h}");
    let text = String::from_utf8(run(&dir, &["status"]).stdout).unwrap();
    assert!(text.contains("camera failing"), "{text}");
    // The HTTP answer is 503, read without a token.
    let addr = std::fs::read_to_string(dir.join("node.http")).unwrap();
    let answer = http_get(addr.trim(), "/health");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");

    std::fs::remove_file(&power).unwrap();
    wait_until(
        "the critical check fails the node",
        Duration::from_secs(10),
        || health(&dir)["status"] == "failing",
    );
    assert!(health(&dir)["problems"].to_string().contains("no mains"));

    std::fs::write(&flag, "").unwrap();
    std::fs::write(&power, "").unwrap();
    wait_until("healthy again", Duration::from_secs(10), || {
        health(&dir)["status"] == "ok"
    });
    assert!(http_get(addr.trim(), "/health").starts_with("HTTP/1.1 200"));
}

#[test]
fn a_malformed_check_is_refused_at_start_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("n");
    init(&dir, "n", None);
    let config = dir.join("rhizome.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("\n[[health.checks]]\nname = \"web\"\nhttp = \"https://x/\"\n");
    std::fs::write(&config, text).unwrap();
    let out = run(&dir, &["start", "--no-mdns", "--listen", "127.0.0.1:0"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("health check `web`") && err.contains("http://"),
        "{err}"
    );
}

fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}
