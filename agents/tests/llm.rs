//! The `llm` agent against a small server, started by each test on 127.0.0.1, that speaks the
//! chat-completions API the way Ollama and llama.cpp do, and against servers that misbehave.

use std::time::Duration;

use agents::{Agent, AgentError, Registry, RunContext};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// What the test server saw.
#[derive(Debug)]
struct Received {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Value,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// How the test server answers.
enum Reply {
    /// Raw bytes, written in pieces with a pause between them, then the connection closes.
    Pieces(Vec<Vec<u8>>),
    /// Reads the request, writes these bytes, then says nothing for a long time.
    Stall(Vec<u8>),
}

fn response(status: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn answer(text: &str) -> String {
    json!({
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "llama3.2:1b",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": "stop",
        }],
        "usage": {"prompt_tokens": 31, "completion_tokens": 7, "total_tokens": 38},
    })
    .to_string()
}

/// Starts a one-connection server; returns its url and what it will have received.
async fn serve(reply: Reply) -> (String, oneshot::Receiver<Received>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let received = read_request(&mut stream).await;
        let _ = tx.send(received);
        match reply {
            Reply::Pieces(pieces) => {
                for piece in pieces {
                    if stream.write_all(&piece).await.is_err() {
                        return;
                    }
                    let _ = stream.flush().await;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            Reply::Stall(bytes) => {
                let _ = stream.write_all(&bytes).await;
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
        }
    });
    (url, rx)
}

async fn read_request(stream: &mut TcpStream) -> Received {
    let mut buf = Vec::new();
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut headers);
        if let httparse::Status::Complete(head) = request.parse(&buf).unwrap() {
            let headers: Vec<(String, String)> = request
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_owned(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect();
            let length: usize = headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                .map(|(_, v)| v.parse().unwrap())
                .unwrap_or(0);
            let method = request.method.unwrap().to_owned();
            let path = request.path.unwrap().to_owned();
            while buf.len() < head + length {
                assert!(stream.read_buf(&mut buf).await.unwrap() > 0);
            }
            return Received {
                method,
                path,
                headers,
                body: serde_json::from_slice(&buf[head..head + length]).unwrap(),
            };
        }
        assert!(stream.read_buf(&mut buf).await.unwrap() > 0);
    }
}

fn agent(url: &str, extra: Value) -> Box<dyn Agent> {
    let mut config = json!({
        "url": url,
        "model": "llama3.2:1b",
        "prompt": "Is {value} an anomaly?",
        "timeout": "5s",
    });
    for (k, v) in extra.as_object().unwrap() {
        config[k] = v.clone();
    }
    Registry
        .create("llm", &config)
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn ask(agent: &dyn Agent, input: Value) -> Result<Value, AgentError> {
    agent.run(input, RunContext { now_ms: 0 }).await
}

async fn failure(reply: Reply) -> String {
    let (url, _received) = serve(reply).await;
    let err = ask(&*agent(&url, json!({})), json!({"value": 1}))
        .await
        .unwrap_err();
    assert!(matches!(err, AgentError::Failed { .. }), "{err:?}");
    err.to_string()
}

#[tokio::test]
async fn a_normal_answer_and_the_request_the_server_received() {
    let (url, received) = serve(Reply::Pieces(vec![response(
        "200 OK",
        &answer("Yes: 31.5 is far above the usual 21."),
    )]))
    .await;
    let agent = agent(
        &format!("{url}/v1"),
        json!({
            "system": "You watch temperature sensors.",
            "prompt": "Site {site}: reading {value} with z-score {score.z}. Full record: {input}. Anomaly?",
            "max_tokens": 64,
            "temperature": 0.2,
            "api_key_env": "PATH",
        }),
    );
    let input = json!({"site": "north", "value": 31.5, "score": {"z": 4.2}});
    let out = ask(&*agent, input.clone()).await.unwrap();
    assert_eq!(
        out,
        json!({
            "text": "Yes: 31.5 is far above the usual 21.",
            "model": "llama3.2:1b",
            "usage": {"prompt_tokens": 31, "completion_tokens": 7, "total_tokens": 38},
            "finish_reason": "stop",
        })
    );
    let received = received.await.unwrap();
    assert_eq!(received.method, "POST");
    assert_eq!(received.path, "/v1/chat/completions");
    assert_eq!(
        received.header("host"),
        Some(url.trim_start_matches("http://"))
    );
    assert_eq!(received.header("content-type"), Some("application/json"));
    assert_eq!(
        received.header("authorization").map(str::to_owned),
        Some(format!("Bearer {}", std::env::var("PATH").unwrap()))
    );
    assert_eq!(
        received.body,
        json!({
            "model": "llama3.2:1b",
            "messages": [
                {"role": "system", "content": "You watch temperature sensors."},
                {"role": "user", "content": format!(
                    "Site north: reading 31.5 with z-score 4.2. Full record: {input}. Anomaly?"
                )},
            ],
            "max_tokens": 64,
            "temperature": 0.2,
            "stream": false,
        })
    );
}

#[tokio::test]
async fn a_chunked_answer_is_reassembled() {
    let body = answer("Chunked, and whole again.");
    let bytes = body.as_bytes();
    let mut pieces = vec![
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n"
            .to_vec(),
    ];
    // Uneven chunks, one with an extension, each written separately so that reads split them.
    let mut at = 0;
    for (i, size) in [1usize, 7, 30, 2, 500].into_iter().enumerate() {
        let end = (at + size).min(bytes.len());
        if at == end {
            break;
        }
        let extension = if i == 2 { ";note=x" } else { "" };
        let mut chunk = format!("{:x}{extension}\r\n", end - at).into_bytes();
        chunk.extend_from_slice(&bytes[at..end]);
        chunk.extend_from_slice(b"\r\n");
        // The size line and the data arrive apart.
        let split = chunk.len() / 2;
        pieces.push(chunk[..split].to_vec());
        pieces.push(chunk[split..].to_vec());
        at = end;
    }
    assert_eq!(at, bytes.len());
    pieces.push(b"0\r\n\r\n".to_vec());
    let (url, _) = serve(Reply::Pieces(pieces)).await;
    let out = ask(&*agent(&url, json!({})), json!({"value": 1}))
        .await
        .unwrap();
    assert_eq!(out["text"], "Chunked, and whole again.");
    assert_eq!(out["finish_reason"], "stop");
}

#[tokio::test]
async fn an_answer_ended_by_closing_the_connection_is_read() {
    let body = answer("no length given");
    let reply = format!("HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{body}");
    let (url, _) = serve(Reply::Pieces(vec![reply.into_bytes()])).await;
    let out = ask(&*agent(&url, json!({})), json!({"value": 1}))
        .await
        .unwrap();
    assert_eq!(out["text"], "no length given");
}

#[tokio::test]
async fn a_slow_server_times_out() {
    let (url, _received) = serve(Reply::Stall(Vec::new())).await;
    let agent = agent(&url, json!({"timeout": "300ms"}));
    let err = ask(&*agent, json!({"value": 1}))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!(
            "no complete answer from the LLM server at {url} within 300ms"
        )),
        "{err}"
    );
    // Headers, then silence in the middle of the body.
    let (url, _received) = serve(Reply::Stall(
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"cho".to_vec(),
    ))
    .await;
    let agent = self::agent(&url, json!({"timeout": "300ms"}));
    let err = ask(&*agent, json!({"value": 1}))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("within 300ms"), "{err}");
}

#[tokio::test]
async fn an_unreachable_server_is_reported_as_offline() {
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}");
    let err = ask(&*agent(&url, json!({})), json!({"value": 1}))
        .await
        .unwrap_err();
    assert!(matches!(err, AgentError::Failed { .. }), "{err:?}");
    let err = err.to_string();
    assert!(
        err.contains(&format!(
            "nothing listens at 127.0.0.1:{port} (connection refused): the server is offline or not started"
        )),
        "{err}"
    );
}

#[tokio::test]
async fn an_error_status_carries_the_servers_message() {
    let err = failure(Reply::Pieces(vec![response(
        "500 Internal Server Error",
        r#"{"error":{"message":"model 'llama3.2:1b' not found, try pulling it first","type":"api_error"}}"#,
    )]))
    .await;
    assert!(
        err.contains("answered 500 Internal Server Error: model 'llama3.2:1b' not found, try pulling it first"),
        "{err}"
    );
    // Ollama's and llama.cpp's shape, and a body that is not JSON.
    let err = failure(Reply::Pieces(vec![response(
        "404 Not Found",
        r#"{"error":"no such model"}"#,
    )]))
    .await;
    assert!(
        err.contains("answered 404 Not Found: no such model"),
        "{err}"
    );
    let err = failure(Reply::Pieces(vec![response(
        "503 Service Unavailable",
        "loading model",
    )]))
    .await;
    assert!(
        err.contains("503 Service Unavailable: loading model"),
        "{err}"
    );
}

#[tokio::test]
async fn garbage_answers_are_named() {
    let err = failure(Reply::Pieces(vec![b"SSH-2.0-OpenSSH_9.6\r\n\r\n".to_vec()])).await;
    assert!(
        err.contains("the answer is not HTTP") && err.contains("SSH-2.0"),
        "{err}"
    );
    let err = failure(Reply::Pieces(vec![response(
        "200 OK",
        "<html>hello</html>",
    )]))
    .await;
    assert!(
        err.contains("malformed JSON") && err.contains("<html>hello</html>"),
        "{err}"
    );
    let err = failure(Reply::Pieces(vec![response("200 OK", r#"{"choices":[]}"#)])).await;
    assert!(err.contains("no `choices[0].message.content`"), "{err}");
    let err = failure(Reply::Pieces(vec![])).await;
    assert!(
        err.contains("closed the connection without answering"),
        "{err}"
    );
    let err = failure(Reply::Pieces(vec![
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"cho".to_vec(),
    ]))
    .await;
    assert!(
        err.contains("closed the connection after 5 of 100 bytes"),
        "{err}"
    );
    let err = failure(Reply::Pieces(vec![
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(),
    ]))
    .await;
    assert!(err.contains("`zz` is not a chunk size"), "{err}");
    let err = failure(Reply::Pieces(vec![
        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", 5 << 20).into_bytes(),
    ]))
    .await;
    assert!(err.contains("exceeds the limit of 4194304 bytes"), "{err}");
    // An endless body without a length stops at the bound.
    let mut pieces = vec![b"HTTP/1.1 200 OK\r\n\r\n".to_vec()];
    pieces.extend(std::iter::repeat_n(vec![b'x'; 1 << 20], 6));
    let err = failure(Reply::Pieces(pieces)).await;
    assert!(err.contains("exceed the limit of 4194304 bytes"), "{err}");
}

#[tokio::test]
async fn a_missing_field_or_api_key_fails_before_anything_is_sent() {
    let (url, received) = serve(Reply::Stall(Vec::new())).await;
    let agent = agent(&url, json!({}));
    let err = ask(&*agent, json!({"v": 1})).await.unwrap_err();
    assert!(matches!(err, AgentError::Input { .. }), "{err:?}");
    assert!(err.to_string().contains("`{value}`"), "{err}");
    let agent = self::agent(
        &url,
        json!({"api_key_env": "RHIZOME_TEST_NO_SUCH_VARIABLE"}),
    );
    let err = ask(&*agent, json!({"value": 1}))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`RHIZOME_TEST_NO_SUCH_VARIABLE` named by `api_key_env` is not set"),
        "{err}"
    );
    drop(received);
}

#[test]
fn configurations_are_refused_with_the_reason() {
    let base = json!({"url": "http://127.0.0.1:11434", "model": "m", "prompt": "p {x}"});
    Registry.validate("llm", &base).unwrap();
    let cases = [
        (
            json!({"url": "https://api.example.com"}),
            "https is not supported",
        ),
        (json!({"url": "127.0.0.1:11434"}), "must start with http://"),
        (
            json!({"prompt": "value {value!r}"}),
            "`{value!r}` is not a placeholder",
        ),
        (json!({"prompt": "value {value"}), "is not closed"),
        (json!({"prompt": "a } b"}), "lone `}`"),
        (json!({"prompt": " "}), "`prompt` must not be empty"),
        (json!({"model": ""}), "`model` must not be empty"),
        (
            json!({"timeout": "soon"}),
            "`timeout`: `soon` is not a duration",
        ),
        (json!({"timeout": "2h"}), "exceeds the limit"),
        (json!({"temperature": 3.0}), "outside 0..=2"),
        (json!({"max_tokens": 0}), "`max_tokens` must be within"),
        (
            json!({"api_key_env": ""}),
            "not an environment variable name",
        ),
        (json!({"max_token": 5}), "unknown field `max_token`"),
    ];
    for (change, expected) in cases {
        let mut config = base.clone();
        for (k, v) in change.as_object().unwrap() {
            config[k] = v.clone();
        }
        let err = Registry.validate("llm", &config).unwrap_err().to_string();
        assert!(
            err.contains(expected) && err.contains("agent `llm`"),
            "{expected}: {err}"
        );
    }
}
