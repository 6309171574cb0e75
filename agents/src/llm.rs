//! `llm`: asks a language model through an OpenAI-compatible chat-completions API, as served by
//! Ollama and llama.cpp's server: `POST {url}/v1/chat/completions`.
//!
//! Local models are the point, so the agent speaks plain HTTP/1.1 over a TCP connection of its
//! own (no TLS, no connection reuse: one request per run) and refuses `https://` urls. An
//! unreachable server is the normal state of an offline node: the step fails with a message
//! saying so, and the workflow's retries and conditions decide what follows.
//!
//! Bounds: the connection must open within [`CONNECT_TIMEOUT`] (or the step's `timeout`, if
//! shorter); the whole exchange must end within `timeout`; an answer over
//! [`MAX_RESPONSE_BYTES`] (or with headers over [`MAX_HEADER_BYTES`]) is refused.
//!
//! The prompt is a template: `{field}` inserts a field of the input (`{score.z}` a nested one,
//! `{input}` the whole input as JSON), `{{` and `}}` write braces. A placeholder that is not a
//! field name is a configuration error; a field the input lacks fails the run, naming it.
//! Strings are inserted as they are, anything else as JSON.
//!
//! Output: `{"text", "model", "usage", "finish_reason"}`, from the first choice of the answer;
//! `usage` is the server's token counts as it gives them (null if it gives none).

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::transforms::{Named, parse_duration_ms};
use crate::{Agent, AgentError, AgentFuture, AgentResult, RunContext};

const AGENT: &str = "llm";

/// Largest answer body accepted, after de-chunking.
pub const MAX_RESPONSE_BYTES: usize = 4 << 20;
/// Largest status line and headers accepted.
pub const MAX_HEADER_BYTES: usize = 64 << 10;
/// Longest wait for the connection to open.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest `timeout` a step may give.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// Most tokens a step may ask for.
pub const MAX_TOKENS: u32 = 1 << 20;

/// `llm` configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmConfig {
    /// The server's base url, `http://host:port` (a trailing `/v1` is allowed).
    pub url: String,
    /// The model the server should use.
    pub model: String,
    /// An optional system prompt.
    #[serde(default)]
    pub system: Option<String>,
    /// The user prompt, a template over the input's fields.
    pub prompt: String,
    /// Most tokens to generate.
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u32,
    /// Sampling temperature, 0..=2; the server's default when absent.
    #[serde(default)]
    pub temperature: Option<f64>,
    /// The whole request's limit (`30s`, `2m`).
    #[serde(default = "default_timeout")]
    pub timeout: String,
    /// The name of an environment variable holding an API key, sent as a bearer token.
    #[serde(default)]
    pub api_key_env: Option<String>,
}

fn default_max_tokens() -> u32 {
    256
}

fn default_timeout() -> String {
    "30s".into()
}

impl Named for LlmConfig {
    const AGENT: &'static str = AGENT;
}

fn config_error(reason: impl Into<String>) -> AgentError {
    AgentError::Config {
        agent: AGENT,
        reason: reason.into(),
    }
}

fn failed(reason: impl Into<String>) -> AgentError {
    AgentError::Failed {
        agent: AGENT,
        reason: reason.into(),
    }
}

// ---------------------------------------------------------------------------------------------
// The prompt template.

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Field(String),
    WholeInput,
}

#[derive(Debug, Clone)]
struct Template(Vec<Piece>);

impl Template {
    fn parse(text: &str) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut chars = text.char_indices().peekable();
        while let Some((at, c)) = chars.next() {
            match c {
                '{' if chars.peek().is_some_and(|(_, n)| *n == '{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek().is_some_and(|(_, n)| *n == '}') => {
                    chars.next();
                    literal.push('}');
                }
                '}' => {
                    return Err(format!(
                        "a lone `}}` at byte {at} (write `}}}}` for a brace)"
                    ));
                }
                '{' => {
                    let rest = &text[at + 1..];
                    let Some(end) = rest.find('}') else {
                        return Err(format!(
                            "the placeholder opened at byte {at} is not closed (write `{{{{` for a brace)"
                        ));
                    };
                    let name = &rest[..end];
                    if !is_field_path(name) {
                        return Err(format!(
                            "`{{{name}}}` is not a placeholder: use `{{field}}`, `{{step.field}}` \
                             or `{{input}}` (write `{{{{` for a brace)"
                        ));
                    }
                    if !literal.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut literal)));
                    }
                    pieces.push(if name == "input" {
                        Piece::WholeInput
                    } else {
                        Piece::Field(name.to_owned())
                    });
                    for _ in 0..=name.chars().count() {
                        chars.next();
                    }
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            pieces.push(Piece::Text(literal));
        }
        Ok(Template(pieces))
    }

    fn render(&self, input: &Value) -> Result<String, AgentError> {
        let mut out = String::new();
        for piece in &self.0 {
            match piece {
                Piece::Text(text) => out.push_str(text),
                Piece::WholeInput => out.push_str(&input.to_string()),
                Piece::Field(name) => {
                    let value = lookup(input, name).ok_or_else(|| AgentError::Input {
                        agent: AGENT,
                        reason: format!(
                            "the prompt's placeholder `{{{name}}}` has no field in the input (it has: {})",
                            crate::fields_of(input)
                        ),
                    })?;
                    match value {
                        Value::String(s) => out.push_str(s),
                        other => out.push_str(&other.to_string()),
                    }
                }
            }
        }
        Ok(out)
    }
}

/// `name` or `a.b.c`, each part letters, digits, `_` or `-`, not starting with a digit or `-`.
fn is_field_path(text: &str) -> bool {
    !text.is_empty()
        && text.split('.').all(|part| {
            part.chars()
                .next()
                .is_some_and(|c| c.is_alphabetic() || c == '_')
                && part
                    .chars()
                    .all(|c| c.is_alphanumeric() || c == '_' || c == '-')
        })
}

fn lookup<'v>(input: &'v Value, name: &str) -> Option<&'v Value> {
    if let Some(value) = input.get(name) {
        return Some(value);
    }
    name.split('.').try_fold(input, |value, key| value.get(key))
}

// ---------------------------------------------------------------------------------------------
// The endpoint.

#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoint {
    /// `host:port`, as connected to and sent in `Host`.
    authority: String,
    /// The request path.
    path: String,
}

fn parse_url(url: &str) -> Result<Endpoint, String> {
    let rest = match url.strip_prefix("http://") {
        Some(rest) => rest,
        None if url.starts_with("https://") => {
            return Err(
                "https is not supported: the llm agent talks plain HTTP to a model \
                 server on the node or its local network (Ollama, llama.cpp); use an http:// \
                 url, or a local TLS proxy for a remote server"
                    .into(),
            );
        }
        None => return Err(format!("`{url}` must start with http://")),
    };
    let (authority, path) = match rest.find('/') {
        Some(slash) => rest.split_at(slash),
        None => (rest, ""),
    };
    if authority.is_empty() {
        return Err(format!("`{url}` has no host"));
    }
    if authority.contains('@') {
        return Err("credentials in the url are not supported: use `api_key_env`".into());
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let Some((host, after)) = v6.split_once(']') else {
            return Err(format!("`{url}`: unclosed `[` in the host"));
        };
        (format!("[{host}]"), after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host.to_owned(), Some(port)),
            None => (authority.to_owned(), None),
        }
    };
    if host.is_empty()
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._:[]%".contains(c))
    {
        return Err(format!("`{url}`: `{host}` is not a host name or address"));
    }
    let port: u16 = match port {
        None => 80,
        Some(p) => p
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("`{url}`: `{p}` is not a port"))?,
    };
    if path.contains(['?', '#']) || !path.chars().all(|c| c.is_ascii_graphic()) {
        return Err(format!(
            "`{url}`: the path may not hold a query, a fragment, spaces or non-ASCII characters"
        ));
    }
    let base = path.trim_end_matches('/');
    // OpenAI clients take base urls that end in /v1; accept both spellings.
    let path = if base.ends_with("/v1") {
        format!("{base}/chat/completions")
    } else {
        format!("{base}/v1/chat/completions")
    };
    Ok(Endpoint {
        authority: format!("{host}:{port}"),
        path,
    })
}

// ---------------------------------------------------------------------------------------------
// The agent.

/// The `llm` agent.
#[derive(Debug)]
pub struct Llm {
    config: LlmConfig,
    endpoint: Endpoint,
    template: Template,
    timeout: Duration,
}

impl Llm {
    /// Checks the configuration; nothing is sent until a run.
    pub fn new(config: LlmConfig) -> Result<Llm, AgentError> {
        let endpoint = parse_url(&config.url).map_err(config_error)?;
        if config.model.trim().is_empty() {
            return Err(config_error("`model` must not be empty"));
        }
        if config.prompt.trim().is_empty() {
            return Err(config_error("`prompt` must not be empty"));
        }
        let template =
            Template::parse(&config.prompt).map_err(|e| config_error(format!("`prompt`: {e}")))?;
        if !(1..=MAX_TOKENS).contains(&config.max_tokens) {
            return Err(config_error(format!(
                "`max_tokens` must be within 1..={MAX_TOKENS}"
            )));
        }
        if let Some(t) = config.temperature
            && !(0.0..=2.0).contains(&t)
        {
            return Err(config_error(format!("`temperature` {t} is outside 0..=2")));
        }
        let timeout = parse_duration_ms(&config.timeout)
            .map(|ms| Duration::from_millis(ms as u64))
            .ok_or_else(|| {
                config_error(format!(
                    "`timeout`: `{}` is not a duration (500ms, 30s, 2m)",
                    config.timeout
                ))
            })?;
        if timeout > MAX_TIMEOUT {
            return Err(config_error(format!(
                "`timeout` {} exceeds the limit of {}s",
                config.timeout,
                MAX_TIMEOUT.as_secs()
            )));
        }
        if let Some(name) = &config.api_key_env
            && (name.is_empty() || name.contains(['=', '\0']))
        {
            return Err(config_error(format!(
                "`api_key_env`: `{name}` is not an environment variable name"
            )));
        }
        Ok(Llm {
            config,
            endpoint,
            template,
            timeout,
        })
    }

    /// The request body for `input`: what the server is sent.
    pub fn request_body(&self, input: &Value) -> Result<Value, AgentError> {
        let prompt = self.template.render(input)?;
        let mut messages = Vec::new();
        if let Some(system) = &self.config.system {
            messages.push(json!({"role": "system", "content": system}));
        }
        messages.push(json!({"role": "user", "content": prompt}));
        let mut body = json!({
            "model": self.config.model,
            "messages": messages,
            "max_tokens": self.config.max_tokens,
            "stream": false,
        });
        if let Some(t) = self.config.temperature {
            body["temperature"] = json!(t);
        }
        Ok(body)
    }

    fn api_key(&self) -> Result<Option<String>, AgentError> {
        let Some(name) = &self.config.api_key_env else {
            return Ok(None);
        };
        match std::env::var(name) {
            Ok(key) if key.contains(['\r', '\n']) => Err(failed(format!(
                "the API key in `{name}` holds a line break"
            ))),
            Ok(key) => Ok(Some(key)),
            Err(_) => Err(failed(format!(
                "the environment variable `{name}` named by `api_key_env` is not set"
            ))),
        }
    }

    async fn ask(&self, input: Value) -> AgentResult {
        let body = self.request_body(&input)?.to_string();
        let key = self.api_key()?;
        let url = &self.config.url;
        let (status, reason, answer) = tokio::time::timeout(
            self.timeout,
            exchange(&self.endpoint, &body, key.as_deref(), self.timeout),
        )
        .await
        .map_err(|_| {
            failed(format!(
                "no complete answer from the LLM server at {url} within {}",
                self.config.timeout
            ))
        })?
        .map_err(|e| failed(format!("LLM server at {url}: {e}")))?;
        if status != 200 {
            return Err(failed(format!(
                "the LLM server at {url} answered {status} {reason}: {}",
                error_message(&answer)
            )));
        }
        let answer: Value = serde_json::from_slice(&answer).map_err(|e| {
            failed(format!(
                "the LLM server at {url} answered with malformed JSON ({e}): {}",
                snippet(&answer)
            ))
        })?;
        let choice = &answer["choices"][0];
        let Some(text) = choice["message"]["content"].as_str() else {
            return Err(failed(format!(
                "the answer of the LLM server at {url} has no `choices[0].message.content`: {}",
                snippet(answer.to_string().as_bytes())
            )));
        };
        Ok(json!({
            "text": text,
            "model": answer.get("model").cloned().unwrap_or_else(|| json!(self.config.model)),
            "usage": answer.get("usage").cloned().unwrap_or(Value::Null),
            "finish_reason": choice.get("finish_reason").cloned().unwrap_or(Value::Null),
        }))
    }
}

impl Agent for Llm {
    fn kind(&self) -> &'static str {
        AGENT
    }

    fn run<'a>(&'a self, input: Value, _: RunContext) -> AgentFuture<'a> {
        Box::pin(async move {
            if tokio::runtime::Handle::try_current().is_err() {
                return Err(failed("the llm agent runs inside a tokio runtime"));
            }
            self.ask(input).await
        })
    }
}

/// The server's own words from an error answer: OpenAI's `error.message`, Ollama's and
/// llama.cpp's `error`, or the body itself.
fn error_message(body: &[u8]) -> String {
    if let Ok(json) = serde_json::from_slice::<Value>(body) {
        let message = json["error"]["message"]
            .as_str()
            .or_else(|| json["error"].as_str())
            .or_else(|| json["message"].as_str());
        if let Some(message) = message {
            return message.to_owned();
        }
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        "(no body)".into()
    } else {
        snippet(body)
    }
}

/// The start of a body, for error messages.
fn snippet(body: &[u8]) -> String {
    const LIMIT: usize = 300;
    let text = String::from_utf8_lossy(&body[..body.len().min(LIMIT)]);
    let text = text.trim();
    if body.len() > LIMIT {
        format!("{text}... ({} bytes)", body.len())
    } else {
        text.to_owned()
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP/1.1, one request per connection.

/// Sends the request and reads the answer: (status, reason, body).
async fn exchange(
    endpoint: &Endpoint,
    body: &str,
    api_key: Option<&str>,
    timeout: Duration,
) -> Result<(u16, String, Vec<u8>), String> {
    let authority = &endpoint.authority;
    let connect_timeout = CONNECT_TIMEOUT.min(timeout);
    let mut stream = match tokio::time::timeout(connect_timeout, TcpStream::connect(authority))
        .await
    {
        Err(_) => {
            return Err(format!(
                "no connection to {authority} within {connect_timeout:?}: the server is offline or unreachable"
            ));
        }
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            return Err(format!(
                "nothing listens at {authority} (connection refused): the server is offline or not started"
            ));
        }
        Ok(Err(e)) => {
            return Err(format!(
                "cannot reach {authority} ({e}): the server is offline or unreachable"
            ));
        }
        Ok(Ok(stream)) => stream,
    };
    // One small request: Nagle would only delay it.
    let _ = stream.set_nodelay(true);
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\n\
         Accept: application/json\r\nContent-Length: {length}\r\nConnection: close\r\n\
         User-Agent: rhizome\r\n",
        path = endpoint.path,
        length = body.len()
    );
    if let Some(key) = api_key {
        request.push_str(&format!("Authorization: Bearer {key}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("the connection failed while sending the request: {e}"))?;
    read_response(&mut stream).await
}

struct Reader<'s> {
    stream: &'s mut TcpStream,
    buf: Vec<u8>,
    pos: usize,
}

impl Reader<'_> {
    /// Reads more; false at the end of the stream. `limit` bounds the unread bytes held.
    async fn more(&mut self, limit: usize, what: &str) -> Result<bool, String> {
        if self.buf.len() - self.pos > limit {
            return Err(format!("{what} exceed the limit of {limit} bytes"));
        }
        if self.pos > 0 && self.pos >= self.buf.len() / 2 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.reserve(16 << 10);
        let n = self
            .stream
            .read_buf(&mut self.buf)
            .await
            .map_err(|e| format!("the connection failed while reading the answer: {e}"))?;
        Ok(n > 0)
    }

    fn unread(&self) -> &[u8] {
        &self.buf[self.pos..]
    }
}

enum Head {
    Interim(usize),
    Final {
        length: usize,
        status: u16,
        reason: String,
        chunked: bool,
        content_length: Option<usize>,
    },
}

async fn read_response(stream: &mut TcpStream) -> Result<(u16, String, Vec<u8>), String> {
    let mut reader = Reader {
        stream,
        buf: Vec::new(),
        pos: 0,
    };
    let (status, reason, chunked, content_length) = loop {
        let head = {
            let mut headers = [httparse::EMPTY_HEADER; 100];
            let mut response = httparse::Response::new(&mut headers);
            match response.parse(reader.unread()) {
                Err(e) => {
                    return Err(format!(
                        "the answer is not HTTP ({e}): {}",
                        snippet(reader.unread())
                    ));
                }
                Ok(httparse::Status::Partial) => None,
                Ok(httparse::Status::Complete(length)) => {
                    let status = response.code.unwrap_or_default();
                    Some(if (100..200).contains(&status) {
                        Head::Interim(length)
                    } else {
                        let header = |name: &str| {
                            response
                                .headers
                                .iter()
                                .find(|h| h.name.eq_ignore_ascii_case(name))
                                .map(|h| String::from_utf8_lossy(h.value).trim().to_owned())
                        };
                        let chunked = header("transfer-encoding")
                            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
                        let content_length = match header("content-length") {
                            Some(v) => Some(
                                v.parse::<usize>()
                                    .map_err(|_| format!("bad Content-Length `{v}`"))?,
                            ),
                            None => None,
                        };
                        Head::Final {
                            length,
                            status,
                            reason: response.reason.unwrap_or_default().to_owned(),
                            chunked,
                            content_length,
                        }
                    })
                }
            }
        };
        match head {
            None => {
                if !reader
                    .more(MAX_HEADER_BYTES, "the answer's headers")
                    .await?
                {
                    return Err(if reader.unread().is_empty() {
                        "the server closed the connection without answering".into()
                    } else {
                        format!(
                            "the server closed the connection in the middle of the headers: {}",
                            snippet(reader.unread())
                        )
                    });
                }
            }
            Some(Head::Interim(length)) => reader.pos += length,
            Some(Head::Final {
                length,
                status,
                reason,
                chunked,
                content_length,
            }) => {
                reader.pos += length;
                break (status, reason, chunked, content_length);
            }
        }
    };
    let body = if status == 204 || status == 304 {
        Vec::new()
    } else if chunked {
        read_chunked(&mut reader).await?
    } else if let Some(length) = content_length {
        if length > MAX_RESPONSE_BYTES {
            return Err(format!(
                "the answer of {length} bytes exceeds the limit of {MAX_RESPONSE_BYTES} bytes"
            ));
        }
        while reader.unread().len() < length {
            if !reader
                .more(MAX_RESPONSE_BYTES, "the answer's bytes")
                .await?
            {
                return Err(format!(
                    "the server closed the connection after {} of {length} bytes",
                    reader.unread().len()
                ));
            }
        }
        reader.unread()[..length].to_vec()
    } else {
        // No length given: the body ends with the connection.
        while reader
            .more(MAX_RESPONSE_BYTES, "the answer's bytes")
            .await?
        {}
        reader.unread().to_vec()
    };
    Ok((status, reason, body))
}

async fn read_chunked(reader: &mut Reader<'_>) -> Result<Vec<u8>, String> {
    const MAX_SIZE_LINE: usize = 1024;
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(end) = reader.unread().windows(2).position(|w| w == b"\r\n") {
                break end;
            }
            if reader.unread().len() > MAX_SIZE_LINE {
                return Err(
                    "a chunk size line is too long: the chunked answer is malformed".into(),
                );
            }
            if !reader.more(MAX_SIZE_LINE, "a chunk size line").await? {
                return Err(
                    "the server closed the connection in the middle of a chunked answer".into(),
                );
            }
        };
        let line = String::from_utf8_lossy(&reader.unread()[..line_end]).into_owned();
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| {
            format!("`{line}` is not a chunk size: the chunked answer is malformed")
        })?;
        reader.pos += line_end + 2;
        if size == 0 {
            // Trailers, if any, are not needed.
            return Ok(body);
        }
        if body.len() + size > MAX_RESPONSE_BYTES {
            return Err(format!(
                "the answer exceeds the limit of {MAX_RESPONSE_BYTES} bytes"
            ));
        }
        while reader.unread().len() < size + 2 {
            if !reader
                .more(MAX_RESPONSE_BYTES, "the answer's bytes")
                .await?
            {
                return Err("the server closed the connection in the middle of a chunk".into());
            }
        }
        body.extend_from_slice(&reader.unread()[..size]);
        if &reader.unread()[size..size + 2] != b"\r\n" {
            return Err("a chunk does not end with CRLF: the chunked answer is malformed".into());
        }
        reader.pos += size + 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let e = parse_url("http://127.0.0.1:11434").unwrap();
        assert_eq!(e.authority, "127.0.0.1:11434");
        assert_eq!(e.path, "/v1/chat/completions");
        assert_eq!(
            parse_url("http://localhost:8080/v1/").unwrap().path,
            "/v1/chat/completions"
        );
        assert_eq!(
            parse_url("http://gpu-box/llm").unwrap(),
            Endpoint {
                authority: "gpu-box:80".into(),
                path: "/llm/v1/chat/completions".into()
            }
        );
        assert_eq!(
            parse_url("http://[::1]:9000").unwrap().authority,
            "[::1]:9000"
        );
        assert!(
            parse_url("https://api.example")
                .unwrap_err()
                .contains("https")
        );
        assert!(parse_url("ftp://x").unwrap_err().contains("http://"));
        assert!(parse_url("http://:80").unwrap_err().contains("not a host"));
        assert!(parse_url("http://h:0").unwrap_err().contains("not a port"));
        assert!(
            parse_url("http://h:99999")
                .unwrap_err()
                .contains("not a port")
        );
        assert!(
            parse_url("http://u:p@h")
                .unwrap_err()
                .contains("api_key_env")
        );
        assert!(parse_url("http://h/x?y=1").unwrap_err().contains("query"));
        assert!(
            parse_url("http://h\r\nX: y")
                .unwrap_err()
                .contains("not a host")
        );
    }

    #[test]
    fn templates() {
        let t = Template::parse("Reading {value} (z {score.z}) {{raw}} {input}").unwrap();
        let input = json!({"value": 21.5, "score": {"z": 3.2}, "s": "x"});
        assert_eq!(
            t.render(&input).unwrap(),
            format!("Reading 21.5 (z 3.2) {{raw}} {input}")
        );
        let t = Template::parse("site {s}").unwrap();
        assert_eq!(t.render(&json!({"s": "north"})).unwrap(), "site north");
        let err = t.render(&json!({"t": 1})).unwrap_err().to_string();
        assert!(err.contains("`{s}`") && err.contains("it has: t"), "{err}");
        for bad in [
            "{}",
            "{ value }",
            "{1x}",
            "{a+b}",
            "open {value",
            "close }",
            "{a..b}",
        ] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Template::parse("ünï {é}").unwrap().0.len(), 2);
    }

    #[test]
    fn error_messages_come_from_the_server() {
        assert_eq!(
            error_message(br#"{"error":{"message":"model `x` not found","type":"invalid"}}"#),
            "model `x` not found"
        );
        assert_eq!(
            error_message(br#"{"error":"no such model"}"#),
            "no such model"
        );
        assert_eq!(error_message(b"bad gateway"), "bad gateway");
        assert_eq!(error_message(b""), "(no body)");
    }
}
