//! Talking to the node running on a data dir, through its local HTTP API.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::de::DeserializeOwned;

use crate::config::DataDir;

/// The API of the node running on a data dir, with the node's local credential.
#[derive(Debug, Clone)]
pub struct Api {
    pub addr: SocketAddr,
    /// `<data-dir>/api.token`; `None` when this user cannot read it (the node then refuses
    /// everything but `/health`, and says why).
    token: Option<String>,
}

/// The node running on this data dir, if one answers.
pub fn running_node(dir: &DataDir) -> Option<Api> {
    let addr: SocketAddr = std::fs::read_to_string(dir.http_addr())
        .ok()?
        .trim()
        .parse()
        .ok()?;
    // A node killed with SIGKILL leaves its address file behind; only an answer counts.
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    let token = std::fs::read_to_string(dir.api_token())
        .ok()
        .map(|t| t.trim().to_owned());
    Some(Api { addr, token })
}

impl Api {
    /// `GET path`, decoded from JSON.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        request(
            self.addr,
            "GET",
            path,
            self.token.as_deref(),
            None,
            DEFAULT_TIMEOUT,
        )
    }

    /// `GET /health`: its answer is read whether the node is `ok` (200) or `degraded` (503).
    pub fn health(&self) -> Result<crate::api::Health> {
        let (_, body) = exchange(self.addr, "GET", "/health", None, None, DEFAULT_TIMEOUT)?;
        serde_json::from_str(&body).context("decoding the answer to GET /health")
    }

    /// `POST path` with a text body, the answer decoded from JSON.
    pub fn post<T: DeserializeOwned>(&self, path: &str, body: &str) -> Result<T> {
        self.post_with_timeout(path, body, DEFAULT_TIMEOUT)
    }

    /// `POST` for a request that takes long on the node's side (waits up to `timeout`).
    pub fn post_with_timeout<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &str,
        timeout: Duration,
    ) -> Result<T> {
        request(
            self.addr,
            "POST",
            path,
            self.token.as_deref(),
            Some(body),
            timeout,
        )
    }
}

/// How long an answer may take.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

fn request<T: DeserializeOwned>(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
    timeout: Duration,
) -> Result<T> {
    let (status, body) = exchange(addr, method, path, token, body, timeout)?;
    if !status.starts_with('2') || status.len() != 3 {
        bail!("{method} {path} answered {status}: {}", body.trim());
    }
    serde_json::from_str(&body).with_context(|| format!("decoding the answer to {method} {path}"))
}

/// One request; the status code and the body of the answer.
fn exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
    timeout: Duration,
) -> Result<(String, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .with_context(|| format!("cannot reach the node's HTTP API at {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    let body = body.unwrap_or_default();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: application/json\r\n{auth}Content-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .with_context(|| format!("reading the answer to {method} {path}"))?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("malformed answer to {method} {path}"))?;
    let status = head.split_whitespace().nth(1).unwrap_or("?");
    Ok((status.to_owned(), body.to_owned()))
}

/// Percent-encodes a query value (everything but unreserved characters).
pub fn encode_query(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
