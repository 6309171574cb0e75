//! Talking to the node running on a data dir, through its local HTTP API.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::de::DeserializeOwned;

use crate::config::DataDir;

/// The API of the node running on a data dir, with the node's local credential.
#[derive(Clone)]
pub struct Api {
    pub addr: SocketAddr,
    /// `<data-dir>/api.token`; `None` when this user cannot read it (the node then refuses
    /// everything but `/health`, and says why).
    token: Option<String>,
    /// When the node serves its API over TLS: verifying it against the mesh CAs.
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("addr", &self.addr)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// The node running on this data dir, if one answers.
pub fn running_node(dir: &DataDir) -> Option<Api> {
    let written = std::fs::read_to_string(dir.http_addr()).ok()?;
    let (addr, tls) = match written.trim().strip_prefix("https://") {
        Some(addr) => {
            let ca = std::fs::read_to_string(dir.ca_cert()).ok()?;
            (addr, Some(crate::api::tls::client_config(&ca).ok()?))
        }
        None => (written.trim(), None),
    };
    let addr: SocketAddr = addr.parse().ok()?;
    // A node killed with SIGKILL leaves its address file behind; only an answer counts.
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    let token = std::fs::read_to_string(dir.api_token())
        .ok()
        .map(|t| t.trim().to_owned());
    Some(Api { addr, token, tls })
}

impl Api {
    /// `GET path`, decoded from JSON.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        request(
            self,
            "GET",
            path,
            self.token.as_deref(),
            None,
            DEFAULT_TIMEOUT,
        )
    }

    /// `GET /health`: its answer is read whether the node is `ok` (200) or `degraded` (503).
    pub fn health(&self) -> Result<crate::api::Health> {
        let (_, body) = exchange(self, "GET", "/health", None, None, DEFAULT_TIMEOUT)?;
        serde_json::from_str(&body).context("decoding the answer to GET /health")
    }

    /// `POST path` with a text body, the answer decoded from JSON.
    pub fn post<T: DeserializeOwned>(&self, path: &str, body: &str) -> Result<T> {
        self.post_with_timeout(path, body, DEFAULT_TIMEOUT)
    }

    /// `POST path` with a binary body, the answer decoded from JSON.
    pub fn post_bytes<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &[u8],
        timeout: Duration,
    ) -> Result<T> {
        let (status, answer) = exchange_bytes(
            self,
            "POST",
            path,
            self.token.as_deref(),
            Some(("application/octet-stream", body)),
            timeout,
        )?;
        decode_answer("POST", path, &status, &answer)
    }

    /// `GET path` whose answer is bytes, not JSON.
    pub fn get_bytes(&self, path: &str, timeout: Duration) -> Result<Vec<u8>> {
        let (status, answer) =
            exchange_bytes(self, "GET", path, self.token.as_deref(), None, timeout)?;
        if !status.starts_with('2') || status.len() != 3 {
            bail!(
                "GET {path} answered {status}: {}",
                String::from_utf8_lossy(&answer).trim()
            );
        }
        Ok(answer)
    }

    /// `DELETE path`, the answer decoded from JSON.
    pub fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        request(
            self,
            "DELETE",
            path,
            self.token.as_deref(),
            None,
            DEFAULT_TIMEOUT,
        )
    }

    /// `POST` for a request that takes long on the node's side (waits up to `timeout`).
    pub fn post_with_timeout<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &str,
        timeout: Duration,
    ) -> Result<T> {
        request(
            self,
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
    api: &Api,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
    timeout: Duration,
) -> Result<T> {
    let (status, body) = exchange(api, method, path, token, body, timeout)?;
    decode_answer(method, path, &status, body.as_bytes())
}

/// A JSON answer decoded, or the error the node answered.
fn decode_answer<T: DeserializeOwned>(
    method: &str,
    path: &str,
    status: &str,
    body: &[u8],
) -> Result<T> {
    if !status.starts_with('2') || status.len() != 3 {
        bail!(
            "{method} {path} answered {status}: {}",
            String::from_utf8_lossy(body).trim()
        );
    }
    serde_json::from_slice(body).with_context(|| format!("decoding the answer to {method} {path}"))
}

/// One request with a text body; the status code and the body of the answer as text.
fn exchange(
    api: &Api,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
    timeout: Duration,
) -> Result<(String, String)> {
    let body = body.map(|b| ("text/plain; charset=utf-8", b.as_bytes()));
    let (status, answer) = exchange_bytes(api, method, path, token, body, timeout)?;
    Ok((status, String::from_utf8_lossy(&answer).into_owned()))
}

/// One request, its body given with its content type; the status code and the answer's bytes.
fn exchange_bytes(
    api: &Api,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<(&str, &[u8])>,
    timeout: Duration,
) -> Result<(String, Vec<u8>)> {
    let addr = api.addr;
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .with_context(|| format!("cannot reach the node's HTTP API at {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    let (content_type, body) = body.unwrap_or(("text/plain; charset=utf-8", &[]));
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let mut sent = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: application/json\r\n{auth}Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    sent.extend_from_slice(body);
    let mut response = Vec::new();
    let read = match &api.tls {
        Some(tls) => {
            let name =
                rustls::pki_types::ServerName::try_from(mesh::net::identity::MESH_SERVER_NAME)
                    .expect("a DNS name");
            let connection = rustls::ClientConnection::new(tls.clone(), name)
                .context("starting TLS with the node's API")?;
            let mut tls = rustls::StreamOwned::new(connection, stream);
            tls.write_all(&sent)
                .with_context(|| format!("TLS with the node's HTTP API at {addr}"))?;
            read_answer(&mut tls, &mut response)
        }
        None => {
            let mut stream = stream;
            stream.write_all(&sent)?;
            stream.read_to_end(&mut response).map(drop)
        }
    };
    if let Err(e) = &read
        && matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        )
    {
        bail!(
            "the node did not answer {method} {path} within {timeout:?}: it may be overloaded \
             (its log says what it is doing); the request may still take effect"
        );
    }
    read.with_context(|| format!("reading the answer to {method} {path}"))?;
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .with_context(|| format!("malformed answer to {method} {path}"))?;
    let head = String::from_utf8_lossy(&response[..split]);
    let status = head.split_whitespace().nth(1).unwrap_or("?").to_owned();
    response.drain(..split + 4);
    Ok((status, response))
}

/// Reads a TLS stream to its end: a server that closes without close_notify after a whole
/// answer (`Connection: close`) has still answered.
fn read_answer(stream: &mut impl Read, into: &mut Vec<u8>) -> std::io::Result<()> {
    match stream.read_to_end(into) {
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !into.is_empty() => Ok(()),
        other => other.map(drop),
    }
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
