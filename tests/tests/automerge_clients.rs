//! automerge-repo clients as peers: a JavaScript `Repo` in Node.js, with
//! `@automerge/automerge-repo-network-websocket` 2.5 from npm (`tests/js`, installed by
//! `scripts/setup.sh`), connects to `GET /automerge` of one node of a three-node mesh of real
//! processes. It finds a workflow by the URL `doc show` prints and edits it; the edit reaches
//! the other nodes over QUIC, and an edit made on another node reaches the client. A monitor
//! token reads but its edit is refused and goes nowhere; a wrong token is refused at the
//! upgrade; a document the node lacks is `doc-unavailable` at once; a definition written as
//! Automerge Text is refused; kill -9 after the node acknowledged an edit loses nothing.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use rhizome_e2e::process::{
    LogsOnPanic, Running, api_token, apply_on, connected, doc_url, init, init_in, ok, run, run_on,
    start, start_on,
};
use rhizome_e2e::wait_until;
use rhizome_e2e::workflows::LINE;
use serde_json::{Value, json};

/// A document id no node holds (16 bytes, bs58check).
const UNKNOWN_DOC: &str = "automerge:2j9knpCseyhnK8izDmLpGP5WMdZQ";

/// `tests/js/client.mjs` in Node.js, driven one JSON command per line.
struct JsClient {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl JsClient {
    fn connect(node: &Running, token: &str) -> JsClient {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("js/client.mjs");
        assert!(
            script.with_file_name("node_modules").is_dir(),
            "tests/js/node_modules is missing: run scripts/setup.sh (it runs npm ci there)"
        );
        let mut child = Command::new("node")
            .arg(&script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("node (Node.js) runs");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut client = JsClient {
            child,
            stdin,
            stdout,
        };
        let url = format!("ws://{}/automerge?token={token}", node.http);
        let answer = client.send(json!({"op": "connect", "url": url}));
        assert_eq!(answer["ok"], true, "{answer}");
        client
    }

    fn send(&mut self, command: Value) -> Value {
        writeln!(self.stdin, "{command}").unwrap();
        self.stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("the client answered {line:?} to {command}: {e}"))
    }

    /// The workflow definition the client holds, parsed.
    fn definition(&mut self, url: &str) -> Value {
        let found = self.send(json!({"op": "find", "url": url}));
        assert_eq!(found["ok"], true, "{found}");
        serde_json::from_str(found["doc"]["definition"].as_str().unwrap()).unwrap()
    }

    /// Writes a new version of the definition: the next version number, this description.
    fn edit(&mut self, url: &str, description: &str, immutable: bool) -> Value {
        let mut definition = self.definition(url);
        definition["version"] = json!(definition["version"].as_u64().unwrap() + 1);
        definition["description"] = json!(description);
        self.send(json!({
            "op": "change",
            "url": url,
            "key": "definition",
            "value": definition.to_string(),
            "immutable": immutable,
        }))
    }
}

impl Drop for JsClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The description of the workflow version a node runs, if it has a readable one.
fn description(dir: &Path) -> Option<String> {
    let out = run(dir, &["workflow", "show", "line", "--json"]);
    if !out.status.success() {
        return None;
    }
    let shown: Value = serde_json::from_slice(&out.stdout).ok()?;
    shown["description"].as_str().map(str::to_owned)
}

fn token(node: &Running, role: &str) -> String {
    api_token(&node.dir, role, role)
}

/// The status line a WebSocket upgrade of `GET /automerge` gets with this query.
fn upgrade_status(node: &Running, query: &str) -> String {
    let mut tcp = std::net::TcpStream::connect(&node.http).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        tcp,
        "GET /automerge{query} HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        node.http
    )
    .unwrap();
    let mut head = [0u8; 64];
    let n = tcp.read(&mut head).unwrap();
    String::from_utf8_lossy(&head[..n])
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn automerge_repo_clients_read_edit_and_are_held_to_their_token() {
    let tmp = tempfile::tempdir().unwrap();
    let dirs: Vec<PathBuf> = ["a", "b", "c"].iter().map(|n| tmp.path().join(n)).collect();
    let _logs = LogsOnPanic(dirs.clone());
    let (a_dir, b_dir, c_dir) = (&dirs[0], &dirs[1], &dirs[2]);
    init(a_dir, "a", None);
    let mesh = a_dir.join("mesh");
    init_in(b_dir, "b", Some(&mesh), &["--control"]);
    init(c_dir, "c", Some(&mesh));
    let mut a = start(a_dir, &[]);
    let b = start(b_dir, &[&a.quic]);
    let c = start(c_dir, &[&a.quic, &b.quic]);
    for node in [&a, &b, &c] {
        wait_until("full mesh", Duration::from_secs(10), || {
            connected(node) == 2
        });
    }
    apply_on(&a, LINE);
    wait_until("the workflow reaches c", Duration::from_secs(10), || {
        description(c_dir).as_deref() == Some("base")
    });
    let url = doc_url(&a, "workflow/line");
    assert!(url.starts_with("automerge:"), "{url}");

    // A token is checked at the upgrade, before any message.
    let admin = token(&a, "admin");
    let operator = token(&a, "operator");
    let monitor = token(&a, "monitor");
    assert!(
        upgrade_status(&a, "").contains(" 401 "),
        "no token: {}",
        upgrade_status(&a, "")
    );
    let wrong = upgrade_status(&a, "?token=rzt_00000000_0000");
    assert!(wrong.contains(" 401 "), "a wrong token: {wrong}");
    let right = upgrade_status(&a, &format!("?token={monitor}"));
    assert!(right.contains(" 101 "), "a monitor's token: {right}");

    // Found by its URL, read, edited: the node validates the edit and writes it over the
    // client's as its own signed version, which reaches the two other nodes over QUIC.
    let mut client = JsClient::connect(&a, &admin);
    assert_eq!(client.definition(&url)["description"], "base");
    let edited = client.edit(&url, "edited by an automerge-repo client", true);
    assert_eq!(edited["ok"], true, "{edited}");
    for dir in [a_dir, b_dir, c_dir] {
        let took = wait_until(
            "the client's edit on every node",
            Duration::from_secs(15),
            || description(dir).as_deref() == Some("edited by an automerge-repo client"),
        );
        eprintln!(
            "automerge clients: the edit was on {} after {took:?}",
            dir.display()
        );
    }

    // A version applied on another node reaches the client as it arrives.
    let from_b = LINE.replace("description: base", "description: applied on b");
    apply_on(&b, &from_b);
    let seen = client.send(json!({
        "op": "wait", "url": url, "key": "definition", "contains": "applied on b",
        "timeout_ms": 15000,
    }));
    assert_eq!(seen["ok"], true, "b's version at the client: {seen}");
    eprintln!(
        "automerge clients: b's version reached the client in {} ms",
        seen["ms"]
    );

    // A document the node does not hold: `doc-unavailable`, not the client's own timeout.
    let missing = client.send(json!({"op": "find", "url": UNKNOWN_DOC, "timeout_ms": 20000}));
    assert_eq!(missing["ok"], false, "{missing}");
    let error = missing["error"].as_str().unwrap();
    assert!(error.contains("unavailable"), "{missing}");

    // A monitor reads, and its edit is refused: it reaches no node.
    let mut watcher = JsClient::connect(&a, &monitor);
    assert!(
        watcher.definition(&url)["description"]
            .as_str()
            .unwrap()
            .contains("applied on b")
    );
    let refused = watcher.edit(&url, "edited with a monitor token", true);
    assert_eq!(
        refused["ok"], true,
        "the change is local to the client: {refused}"
    );
    // An operator runs workflows but does not apply them, here as through the API.
    let mut runner = JsClient::connect(&a, &operator);
    let refused = runner.edit(&url, "edited with an operator token", true);
    assert_eq!(refused["ok"], true, "{refused}");
    // A definition written as Automerge Text (a plain JavaScript string) would merge
    // character by character: refused even for an admin.
    let mut careless = JsClient::connect(&a, &admin);
    let text = careless.edit(&url, "edited as text", false);
    assert_eq!(text["ok"], true, "{text}");
    wait_until(
        "the three refusals in a's log",
        Duration::from_secs(10),
        || {
            let log = std::fs::read_to_string(rhizome_e2e::process::log_file(a_dir)).unwrap();
            log.contains("token monitor (monitor): refused a change to workflow/line")
                && log.contains("token operator (operator): refused a change to workflow/line")
                && log.contains("applying a workflow needs an admin token")
                && log.contains("the definition written is not readable")
        },
    );
    let report = ok(run_on(&a, &["sync", "--timeout", "20s", "--json"]));
    assert_eq!(report["converged"], true, "{report}");
    for dir in [a_dir, b_dir, c_dir] {
        let now = description(dir);
        assert_eq!(now.as_deref(), Some("applied on b"), "{}", dir.display());
    }
    drop(watcher);
    drop(runner);
    drop(careless);

    // Acknowledged, then kill -9: the edit is there after the restart and on the others.
    let last = client.edit(&url, "just before a kill", true);
    assert_eq!(last["ok"], true, "{last}");
    wait_until("a holds the edit", Duration::from_secs(10), || {
        description(a_dir).as_deref() == Some("just before a kill")
    });
    let quic = a.quic.clone();
    a.kill();
    drop(client);
    let a = start_on(a_dir, &quic, &[&b.quic, &c.quic]);
    assert_eq!(description(a_dir).as_deref(), Some("just before a kill"));
    for dir in [b_dir, c_dir] {
        wait_until("the edit on the others", Duration::from_secs(15), || {
            description(dir).as_deref() == Some("just before a kill")
        });
    }
    // The restarted node serves clients again.
    let mut again = JsClient::connect(&a, &monitor);
    assert_eq!(again.definition(&url)["description"], "just before a kill");
}

/// A raw WebSocket to `GET /automerge`, for what no library client sends.
type RawSocket = tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>;

fn raw_socket(node: &Running, token: &str) -> RawSocket {
    let (socket, _) =
        tungstenite::connect(format!("ws://{}/automerge?token={token}", node.http)).unwrap();
    if let tungstenite::stream::MaybeTlsStream::Plain(tcp) = socket.get_ref() {
        tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    }
    socket
}

/// What the node says before it closes a socket: its `error` message (if any) and the close
/// frame's code.
fn closing_words(socket: &mut RawSocket) -> (Option<String>, Option<u16>) {
    use mesh::proto::amrepo::Message;
    let mut error = None;
    loop {
        match socket.read() {
            Ok(tungstenite::Message::Binary(bytes)) => {
                if let Ok(Message::Error { message }) = Message::decode(&bytes) {
                    error = Some(message);
                }
            }
            Ok(tungstenite::Message::Close(frame)) => {
                return (error, frame.map(|f| u16::from(f.code)));
            }
            Ok(_) => {}
            Err(_) => return (error, None),
        }
    }
}

/// A raw socket that has joined as `peer` and had the node's answer.
fn joined_socket(node: &Running, token: &str, peer: &str) -> RawSocket {
    let mut socket = raw_socket(node, token);
    socket
        .send(tungstenite::Message::Binary(join(peer).into()))
        .unwrap();
    let answer = socket.read().unwrap();
    assert!(
        matches!(answer, tungstenite::Message::Binary(_)),
        "the peer answer: {answer:?}"
    );
    socket
}

fn join(peer: &str) -> Vec<u8> {
    mesh::proto::amrepo::Message::Join {
        sender_id: peer.into(),
        peer_metadata: Default::default(),
        supported_protocol_versions: Some(vec!["1".into()]),
    }
    .encode()
}

#[test]
fn misbehaving_clients_are_disconnected_with_a_reason_and_others_go_on() {
    use tungstenite::Message as Frame;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a");
    let _logs = LogsOnPanic(vec![dir.clone()]);
    init(&dir, "a", None);
    let a = start(&dir, &[]);
    let monitor = token(&a, "monitor");
    let url = doc_url(&a, "mesh");
    let mut good = JsClient::connect(&a, &monitor);
    let found = good.send(json!({"op": "find", "url": url}));
    assert_eq!(found["ok"], true, "{found}");

    // Bytes that are no CBOR message.
    let mut socket = raw_socket(&a, &monitor);
    socket
        .send(Frame::Binary(vec![0xff, 0x00, 0x13, 0x37].into()))
        .unwrap();
    let (error, code) = closing_words(&mut socket);
    assert!(
        error
            .as_deref()
            .unwrap_or_default()
            .contains("invalid message"),
        "{error:?}"
    );
    assert_eq!(code, Some(1002));

    // A message in another peer's name after joining.
    let mut socket = joined_socket(&a, &monitor, "honest");
    let forged = mesh::proto::amrepo::Message::Request {
        sender_id: "someone-else".into(),
        target_id: String::new(),
        document_id: url.trim_start_matches("automerge:").into(),
        data: Vec::new(),
    };
    socket.send(Frame::Binary(forged.encode().into())).unwrap();
    let (error, code) = closing_words(&mut socket);
    assert!(
        error
            .as_deref()
            .unwrap_or_default()
            .contains("someone-else"),
        "{error:?}"
    );
    assert_eq!(code, Some(1002));

    // Text instead of binary CBOR.
    let mut socket = raw_socket(&a, &monitor);
    socket
        .send(Frame::Text("{\"type\":\"join\"}".into()))
        .unwrap();
    let (error, code) = closing_words(&mut socket);
    assert!(
        error.as_deref().unwrap_or_default().contains("text frame"),
        "{error:?}"
    );
    assert_eq!(code, Some(1003));

    // A message over the size limit: the socket is dropped before it is read whole.
    let mut socket = raw_socket(&a, &monitor);
    let oversized = vec![0u8; mesh::proto::amrepo::MAX_MESSAGE_BYTES + 1];
    // The node may cut the socket while the frame is still being written.
    let _ = socket.send(Frame::Binary(oversized.into()));
    let (_, code) = closing_words(&mut socket);
    assert_ne!(
        code,
        Some(1000),
        "an oversized message is not a normal close"
    );

    // A token revoked while its socket is open loses the socket at the next ping.
    let doomed = api_token(&a.dir, "monitor", "doomed");
    let mut socket = joined_socket(&a, &doomed, "soon-gone");
    ok(run_on(&a, &["token", "revoke", "doomed"]));
    let revoked_at = std::time::Instant::now();
    let (error, code) = closing_words(&mut socket);
    assert!(
        error
            .as_deref()
            .unwrap_or_default()
            .contains("no longer accepted"),
        "{error:?}"
    );
    assert_eq!(code, Some(1008));
    eprintln!(
        "automerge clients: a revoked token's socket closed {:?} after the revocation",
        revoked_at.elapsed()
    );

    // Each was logged with its reason, and the well-behaved client is still served.
    let log = std::fs::read_to_string(rhizome_e2e::process::log_file(&dir)).unwrap();
    for reason in [
        "invalid message",
        "someone-else",
        "text frame",
        "no longer accepted",
    ] {
        assert!(log.contains(reason), "{reason} is not in the log");
    }
    let again = good.send(json!({"op": "find", "url": url}));
    assert_eq!(again["ok"], true, "{again}");
    let missing = good.send(json!({"op": "find", "url": UNKNOWN_DOC}));
    assert!(
        missing["error"]
            .as_str()
            .unwrap_or_default()
            .contains("unavailable"),
        "{missing}"
    );
}
