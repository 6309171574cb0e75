//! Untrusted workflow text on a real `rhizome` process: a file nested 100,000 deep or larger
//! than 1 MiB is refused at once, naming the limit, offline and through a running node
//! (`POST /workflows` answers 413 for the size); an empty node name is refused at init.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rhizome_e2e::oneshot::{fails, rhizome};
use rhizome_e2e::process::{start, stop};
use rhizome_e2e::rhizome_bin;

fn hostile_files(dir: &Path) -> Vec<(&'static str, std::path::PathBuf, &'static str)> {
    let n = 100_000;
    let cases = [
        (
            "flow",
            format!("id: x\nsteps: {}", "[".repeat(n)),
            "limit of 64 levels at line 2",
        ),
        (
            "block",
            format!("id: x\nsteps:\n{}x\n", "- ".repeat(n)),
            "limit of 64 levels at line 3",
        ),
        (
            "large",
            format!(
                "id: x\ndescription: {}\nsteps:\n  - id: a\n    agent: noop\n",
                "x".repeat(1 << 20)
            ),
            "over the limit of 1048576 bytes",
        ),
    ];
    cases
        .into_iter()
        .map(|(what, text, expected)| {
            let path = dir.join(format!("{what}.yaml"));
            std::fs::write(&path, text).unwrap();
            (what, path, expected)
        })
        .collect()
}

#[test]
fn deep_or_large_workflow_files_are_refused_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let node = tmp.path().join("n");
    assert!(rhizome(&node, &["init", "--name", "n"]).status.success());
    for (what, path, expected) in hostile_files(tmp.path()) {
        let started = Instant::now();
        let err = fails(rhizome(
            &node,
            &["workflow", "apply", path.to_str().unwrap()],
        ));
        let took = started.elapsed();
        assert!(
            err.contains(path.file_name().unwrap().to_str().unwrap()) && err.contains(expected),
            "{what}: {err}"
        );
        assert!(took < Duration::from_secs(5), "{what} took {took:?}");
    }
    let listed = rhizome(&node, &["workflow", "list", "--json"]);
    assert_eq!(String::from_utf8_lossy(&listed.stdout).trim(), "[]");
}

#[test]
fn a_running_node_refuses_them_too() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("n");
    assert!(rhizome(&dir, &["init", "--name", "n"]).status.success());
    let node = start(&dir, &[]);
    let http = std::fs::read_to_string(dir.join("node.http")).unwrap();
    let token = std::fs::read_to_string(dir.join("api.token")).unwrap();
    let post = |body: &str| -> (u16, String) {
        let mut stream = TcpStream::connect(http.trim()).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        // The node may answer before reading the whole body: the write can then fail.
        let _ = write!(
            stream,
            "POST /workflows HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {}\r\nContent-Length: {}\r\n\r\n{body}",
            token.trim(),
            body.len()
        );
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
        let code = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (code, body.to_owned())
    };
    for (what, path, expected) in hostile_files(tmp.path()) {
        // Through the CLI: refused before anything is sent.
        let err = fails(rhizome(
            &dir,
            &["workflow", "apply", path.to_str().unwrap()],
        ));
        assert!(err.contains(expected), "{what}: {err}");
        let text = std::fs::read_to_string(&path).unwrap();
        let (code, body) = post(&text);
        let status = if what == "large" { 413 } else { 400 };
        assert_eq!(code, status, "{what}: {body}");
        assert!(body.contains("limit of"), "{what}: {body}");
    }
    let (code, body) = post(&"#".repeat(3 << 20));
    assert_eq!(code, 413, "{body}");
    assert!(body.contains("over the limit of 1048576 bytes"), "{body}");
    stop(node);
}

#[test]
fn an_empty_node_name_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let node = tmp.path().join("n");
    let err = fails(rhizome(&node, &["init", "--name", ""]));
    assert!(err.contains("--name") && err.contains("empty"), "{err}");
    assert!(!node.join("node.key").exists());
    let err = fails(
        Command::new(rhizome_bin())
            .arg("--data-dir")
            .arg(&node)
            .arg("init")
            .env("RHIZOME_NODE_NAME", " ")
            .output()
            .unwrap(),
    );
    assert!(
        err.contains("RHIZOME_NODE_NAME") && err.contains("empty"),
        "{err}"
    );
}
