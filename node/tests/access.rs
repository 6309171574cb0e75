//! Every endpoint of a real `rhizome start` against every kind of caller: no token, a token of
//! each role, an expired one, a revoked one, a forged one, and the node's own credential. The
//! endpoints come from the router's own table (`rhizome::api::access_rules`), where a route
//! cannot be added without its rule, so a new endpoint is covered here the moment it exists.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rhizome::api::auth::Role;

fn rhizome(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_rhizome"))
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the node of `dir` on loopback QUIC, mDNS off, with its HTTP API as `http` asks.
fn start(dir: &std::path::Path, http: &[&str]) -> Node {
    let child = Command::new(env!("CARGO_BIN_EXE_rhizome"))
        .arg("--data-dir")
        .arg(dir)
        .args(["start", "--listen", "127.0.0.1:0", "--no-mdns"])
        .args(http)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Node(child)
}

fn request(http: &str, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(http).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    // Read to the end, except for an event stream, which has none: its head is the answer.
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).unwrap();
        bytes.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&bytes);
        let streaming = text
            .split_once("\r\n\r\n")
            .is_some_and(|(head, _)| head.contains("text/event-stream"));
        if n == 0 || streaming {
            break;
        }
    }
    let answer = String::from_utf8_lossy(&bytes).into_owned();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    (
        head.split_whitespace().nth(1).unwrap().parse().unwrap(),
        body.to_owned(),
    )
}

const WORKFLOW: &str = "id: probe\ntrigger: manual\nsteps:\n  - id: s\n    agent: noop\n";

#[test]
fn every_endpoint_admits_exactly_the_roles_its_rule_names() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    ok(rhizome(&dir, &["init", "--name", "access"]));
    let token = |role: &str, ttl: Option<&str>| {
        let mut args = vec!["token", "create", "--role", role, "--name", role, "--json"];
        if let Some(ttl) = ttl {
            args.extend(["--ttl", ttl]);
        }
        let created: serde_json::Value = serde_json::from_str(&ok(rhizome(&dir, &args))).unwrap();
        created["token"].as_str().unwrap().to_owned()
    };
    let monitor = token("monitor", None);
    let operator = token("operator", None);
    let admin = token("admin", None);
    let expiring = token("admin", Some("1s"));
    let revoked = token("admin", None);
    let listed = ok(rhizome(&dir, &["token", "list", "--json"]));
    let id_of = |t: &str| t[4..12].to_owned();
    assert!(listed.contains(&id_of(&revoked)) && !listed.contains(&revoked[13..]));
    ok(rhizome(&dir, &["token", "revoke", &id_of(&revoked)]));
    let forged = format!("{}{}", &admin[..13], "0".repeat(64));

    let _node = start(&dir, &["--http", "127.0.0.1:0"]);
    let started = Instant::now();
    let http = loop {
        if let Ok(addr) = std::fs::read_to_string(dir.join("node.http"))
            && TcpStream::connect(addr.trim()).is_ok()
        {
            break addr.trim().to_owned();
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the node did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let local = std::fs::read_to_string(dir.join("api.token"))
        .unwrap()
        .trim()
        .to_owned();
    // Past the expiring token's life.
    std::thread::sleep(Duration::from_millis(1200));

    let callers: Vec<(&str, Option<&str>, Option<Role>)> = vec![
        ("no token", None, None),
        ("forged", Some(forged.as_str()), None),
        ("expired", Some(expiring.as_str()), None),
        ("revoked", Some(revoked.as_str()), None),
        ("monitor", Some(monitor.as_str()), Some(Role::Monitor)),
        ("operator", Some(operator.as_str()), Some(Role::Operator)),
        ("admin", Some(admin.as_str()), Some(Role::Admin)),
        ("local", Some(local.as_str()), Some(Role::Admin)),
    ];
    let rules = rhizome::api::access_rules();
    assert!(rules.len() >= 13, "{rules:?}");
    assert_eq!(
        rules
            .iter()
            .filter(|r| r.needs.is_none())
            .map(|r| r.path)
            .collect::<Vec<_>>(),
        vec!["/health", "/", "/assets/app.js", "/assets/style.css"],
        "only /health and the web page's assets (which hold no data) are open"
    );
    let mut checked = 0;
    for rule in &rules {
        let path = rule
            .path
            .replace("{workflow}", "probe")
            .replace("{run}", "none-1-1");
        let body = match (rule.method.as_str(), rule.path) {
            ("POST", "/workflows") => WORKFLOW,
            ("POST", "/sync") => "{\"timeout_ms\": 100}",
            _ => "",
        };
        for (who, bearer, role) in &callers {
            let (code, answer) = request(&http, rule.method.as_str(), &path, *bearer, body);
            let allowed = match rule.needs {
                None => true,
                Some(needs) => role.is_some_and(|r| r >= needs),
            };
            let refused = code == 401 || code == 403;
            assert_eq!(
                !refused, allowed,
                "{who} on {} {}: {code} {answer}",
                rule.method, rule.path
            );
            if refused {
                // The refusal says why, by name.
                let why = match *who {
                    "no token" => "needs a token",
                    "expired" => "expired",
                    "revoked" => "revoked",
                    "forged" => "not one of this node's",
                    _ => "needs",
                };
                assert!(answer.contains(why), "{who} on {}: {answer}", rule.path);
                let expected = if role.is_some() { 403 } else { 401 };
                assert_eq!(code, expected, "{who} on {}: {answer}", rule.path);
            }
            checked += 1;
        }
    }
    assert_eq!(checked, rules.len() * callers.len());
    // Writes and refusals are security events, naming the token.
    let (code, body) = request(&http, "GET", "/security", Some(&local), "");
    assert_eq!(code, 200, "{body}");
    let events: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        events["counts"]["api_refused"].as_u64() >= Some(20),
        "{events}"
    );
    assert!(
        events["counts"]["api_write"].as_u64() >= Some(4),
        "{events}"
    );
    assert!(body.contains("\"subject\":\"operator\""), "{body}");
    // The CLI on the node's own machine needs no setup: it reads the local credential.
    ok(rhizome(&dir, &["peers", "--json"]));
    ok(rhizome(&dir, &["workflow", "list", "--json"]));
}

#[test]
fn the_api_is_kept_off_the_network_unless_asked_for_plainly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    ok(rhizome(&dir, &["init", "--name", "exposed"]));
    let out = rhizome(
        &dir,
        &[
            "start",
            "--listen",
            "127.0.0.1:0",
            "--http",
            "0.0.0.0:0",
            "--no-mdns",
        ],
    );
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("not a loopback address") && text.contains("--http-insecure"),
        "{text}"
    );
}

#[test]
fn the_api_served_over_tls_with_the_nodes_certificate_is_reached_only_through_tls() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    ok(rhizome(&dir, &["init", "--name", "tls"]));
    // A non-loopback address is accepted with TLS, without --http-insecure.
    let _node = start(&dir, &["--http", "0.0.0.0:0", "--http-tls"]);
    let started = Instant::now();
    let addr = loop {
        if let Ok(text) = std::fs::read_to_string(dir.join("node.http"))
            && let Some(addr) = text.trim().strip_prefix("https://")
        {
            break addr.replace("0.0.0.0", "127.0.0.1");
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the node did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    wait_for(|| TcpStream::connect(&addr).is_ok());

    // The CLI on the node's machine speaks TLS to it, verifying it against the mesh CA.
    let status: serde_json::Value =
        serde_json::from_str(&ok(rhizome(&dir, &["status", "--json"]))).unwrap();
    assert_eq!(status["running"], true, "{status}");
    assert_eq!(status["health"]["status"], "ok", "{status}");

    // Plain HTTP gets no answer.
    let mut plain = TcpStream::connect(&addr).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = write!(
        plain,
        "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    let mut answer = String::new();
    let _ = plain.read_to_string(&mut answer);
    assert!(!answer.contains("HTTP/1.1 200"), "{answer}");

    // A client that trusts another mesh's CA refuses the node's certificate.
    let other = tmp.path().join("other");
    ok(rhizome(&other, &["init", "--name", "other"]));
    let config =
        rhizome::api::tls::client_config(&std::fs::read_to_string(other.join("ca.crt")).unwrap())
            .unwrap();
    let name = rustls::pki_types::ServerName::try_from("node.rhizome.invalid").unwrap();
    let connection = rustls::ClientConnection::new(config, name).unwrap();
    let mut tls = rustls::StreamOwned::new(connection, TcpStream::connect(&addr).unwrap());
    let refused = write!(tls, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .and_then(|()| tls.flush())
        .and_then(|()| tls.read_to_string(&mut String::new()).map(drop));
    assert!(
        refused.is_err(),
        "a client of another mesh accepted the node"
    );
}

fn wait_for(mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < Duration::from_secs(20), "not in time");
        std::thread::sleep(Duration::from_millis(50));
    }
}
