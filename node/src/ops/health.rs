//! Health checks: what `/health` and `status` report, check by check.
//!
//! Built-in checks are read from state the node keeps anyway (the store, the clock, the
//! aggregator chain, sync progress, the certificate); user checks come from `[[health.checks]]`
//! in `rhizome.toml`, each a command or an HTTP probe run on its own interval with a timeout.
//! A failing check makes the node `degraded` (503), a failing critical one (the store takes no
//! writes) `failing` (503); warnings are reported and leave it `ok` (200).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    Ok,
    Warning,
    Failing,
}

/// One check's latest outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    pub name: String,
    pub status: CheckStatus,
    /// Why it is not ok; what it saw when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A failing critical check makes the node `failing` rather than `degraded`.
    #[serde(default)]
    pub critical: bool,
    /// When it last ran (ms since the epoch).
    pub checked_ms: i64,
}

impl CheckResult {
    pub fn ok(name: &str) -> CheckResult {
        CheckResult {
            name: name.into(),
            status: CheckStatus::Ok,
            reason: None,
            critical: false,
            checked_ms: crate::node::now_ms(),
        }
    }

    pub fn warning(name: &str, reason: String) -> CheckResult {
        CheckResult {
            status: CheckStatus::Warning,
            reason: Some(reason),
            ..CheckResult::ok(name)
        }
    }

    /// A check that has not run yet: a warning with no time (`checked_ms` 0), which rules over
    /// the check do not read as an outcome.
    pub fn pending(name: &str) -> CheckResult {
        CheckResult {
            checked_ms: 0,
            ..CheckResult::warning(name, "has not run yet".into())
        }
    }

    pub fn failing(name: &str, reason: String) -> CheckResult {
        CheckResult {
            status: CheckStatus::Failing,
            reason: Some(reason),
            ..CheckResult::ok(name)
        }
    }

    pub fn critical(mut self) -> CheckResult {
        self.critical = true;
        self
    }
}

/// The node's state from its checks: `ok`, `degraded` or `failing`.
pub fn overall(checks: &[CheckResult]) -> &'static str {
    if checks
        .iter()
        .any(|c| c.status == CheckStatus::Failing && c.critical)
    {
        "failing"
    } else if checks.iter().any(|c| c.status == CheckStatus::Failing) {
        "degraded"
    } else {
        "ok"
    }
}

/// A user check as `rhizome.toml` gives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckConfig {
    /// Its name in `/health` and alerts.
    pub name: String,
    /// A shell command: exit 0 is ok, anything else failing (its output is the reason).
    #[serde(default)]
    pub command: String,
    /// An HTTP URL (`http://host:port/path`): a 2xx answer is ok.
    #[serde(default)]
    pub http: String,
    /// How often it runs.
    #[serde(default = "default_interval")]
    pub interval: String,
    /// How long one run may take before it counts as failing.
    #[serde(default = "default_timeout")]
    pub timeout: String,
    /// Whether its failure makes the node `failing` rather than `degraded`.
    #[serde(default)]
    pub critical: bool,
}

fn default_interval() -> String {
    "30s".into()
}

fn default_timeout() -> String {
    "5s".into()
}

impl CheckConfig {
    /// The interval and timeout, once the check is known to be well formed.
    pub fn validate(&self) -> Result<(Duration, Duration)> {
        let what = || format!("health check `{}`", self.name);
        if self.name.trim().is_empty() {
            bail!("a health check has no name");
        }
        match (self.command.is_empty(), self.http.is_empty()) {
            (true, true) => bail!("{}: give a `command` or an `http` URL", what()),
            (false, false) => bail!("{}: give a `command` or an `http` URL, not both", what()),
            _ => {}
        }
        if !self.http.is_empty() {
            parse_http(&self.http).with_context(what)?;
        }
        let interval = crate::config::parse_duration(&self.interval)
            .with_context(|| format!("{}: interval", what()))?;
        let timeout = crate::config::parse_duration(&self.timeout)
            .with_context(|| format!("{}: timeout", what()))?;
        if interval.is_zero() || timeout.is_zero() {
            bail!("{}: interval and timeout must be more than zero", what());
        }
        Ok((interval, timeout))
    }
}

/// Host, port and path of an `http://` URL.
pub(crate) fn parse_http(url: &str) -> Result<(String, u16, String)> {
    let rest = url
        .strip_prefix("http://")
        .context("an http check takes an http:// URL")?;
    let (authority, path) = match rest.find('/') {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) => (host, port.parse::<u16>().context("its port")?),
        None => (authority, 80),
    };
    if host.is_empty() {
        bail!("the URL {url} has no host");
    }
    Ok((host.to_owned(), port, path.to_owned()))
}

/// The latest outcome of every user check, by name.
#[derive(Debug, Clone, Default)]
pub struct UserChecks(Arc<Mutex<BTreeMap<String, CheckResult>>>);

impl UserChecks {
    /// The latest outcomes.
    pub fn results(&self) -> Vec<CheckResult> {
        self.0.lock().expect("checks").values().cloned().collect()
    }

    fn set(&self, result: CheckResult) {
        self.0
            .lock()
            .expect("checks")
            .insert(result.name.clone(), result);
    }
}

/// Runs every user check on its interval until the node stops.
pub fn spawn_user_checks(
    configs: &[CheckConfig],
) -> Result<(UserChecks, Vec<tokio::task::JoinHandle<()>>)> {
    let checks = UserChecks::default();
    let mut tasks = Vec::new();
    for config in configs {
        let (interval, timeout) = config.validate()?;
        // Until its first run ends, a check says so rather than pass.
        checks.set(CheckResult::pending(&config.name));
        let (config, checks) = (config.clone(), checks.clone());
        tasks.push(tokio::spawn(async move {
            let mut every = tokio::time::interval(interval);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let outcome = run_check(&config, timeout).await;
                let mut result = match outcome {
                    Ok(()) => CheckResult::ok(&config.name),
                    Err(why) => CheckResult::failing(&config.name, why),
                };
                result.critical = config.critical;
                checks.set(result);
            }
        }));
    }
    Ok((checks, tasks))
}

/// One run of a user check; the reason it failed.
async fn run_check(config: &CheckConfig, timeout: Duration) -> Result<(), String> {
    let run = async {
        if !config.command.is_empty() {
            let output = tokio::process::Command::new("sh")
                .arg("-c")
                .arg(&config.command)
                .kill_on_drop(true)
                .output()
                .await
                .map_err(|e| format!("cannot run `{}`: {e}", config.command))?;
            if output.status.success() {
                return Ok(());
            }
            let said = String::from_utf8_lossy(if output.stderr.is_empty() {
                &output.stdout
            } else {
                &output.stderr
            })
            .trim()
            .chars()
            .take(200)
            .collect::<String>();
            Err(format!(
                "`{}` exited with {}{}",
                config.command,
                output.status,
                if said.is_empty() {
                    String::new()
                } else {
                    format!(": {said}")
                }
            ))
        } else {
            probe(&config.http).await
        }
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(outcome) => outcome,
        Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
    }
}

/// An HTTP POST of a JSON body (an alert's webhook); ok on a 2xx status.
pub(crate) async fn post_json(url: &str, body: &str) -> Result<(), String> {
    request(url, |host, path| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    })
    .await
}

/// An HTTP GET; ok on a 2xx status.
async fn probe(url: &str) -> Result<(), String> {
    request(url, |host, path| {
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
    })
    .await
}

/// One HTTP/1.1 exchange over a fresh connection: `head` writes the request for a host and
/// path; ok on a 2xx status.
async fn request(url: &str, head: impl FnOnce(&str, &str) -> String) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (host, port, path) = parse_http(url).map_err(|e| format!("{e:#}"))?;
    let mut stream = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
    stream
        .write_all(head(&host, &path).as_bytes())
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let mut answer = vec![0u8; 64];
    let n = stream
        .read(&mut answer)
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let line = String::from_utf8_lossy(&answer[..n]);
    let status = line.split_whitespace().nth(1).unwrap_or("?");
    if status.starts_with('2') && status.len() == 3 {
        Ok(())
    } else {
        Err(format!("{url} answered {status}"))
    }
}

/// Since when each peer has had documents pending, sampled in the background: "sync keeping
/// up" fails for a peer whose documents stay pending longer than [`SYNC_BEHIND_AFTER`].
#[derive(Debug, Clone, Default)]
pub struct SyncWatch(Arc<Mutex<Watched>>);

#[derive(Debug, Default)]
struct Watched {
    /// Per peer: since when some document has been pending, and how many are.
    peers: BTreeMap<String, (Instant, usize)>,
    /// Per (peer, document name): since when it has been pending (ms since the epoch).
    docs: BTreeMap<(String, String), i64>,
}

/// How long documents may stay pending with a connected peer before the node counts as not
/// keeping up.
pub const SYNC_BEHIND_AFTER: Duration = Duration::from_secs(120);

impl SyncWatch {
    /// Samples the sync state every few seconds until the node stops.
    pub fn spawn(sync: crate::fleet::sync::SyncHandle) -> (SyncWatch, tokio::task::JoinHandle<()>) {
        let watch = SyncWatch::default();
        let kept = watch.clone();
        let task = tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(5));
            loop {
                every.tick().await;
                let statuses = sync.status().await;
                let mut watched = kept.0.lock().expect("sync watch");
                let now = Instant::now();
                let wall = crate::node::now_ms();
                let docs: std::collections::BTreeSet<(String, String)> = statuses
                    .iter()
                    .flat_map(|s| s.pending.iter().map(|d| (s.peer.clone(), d.clone())))
                    .collect();
                watched.docs.retain(|key, _| docs.contains(key));
                for key in docs {
                    watched.docs.entry(key).or_insert(wall);
                }
                let pending: BTreeMap<String, usize> = statuses
                    .into_iter()
                    .filter(|s| !s.pending.is_empty())
                    .map(|s| (s.peer, s.pending.len()))
                    .collect();
                watched.peers.retain(|peer, _| pending.contains_key(peer));
                for (peer, n) in pending {
                    watched
                        .peers
                        .entry(peer)
                        .and_modify(|(_, count)| *count = n)
                        .or_insert((now, n));
                }
            }
        });
        (watch, task)
    }

    /// Peers whose documents have stayed pending longer than `after`: how many, for how long.
    pub fn behind(&self, after: Duration) -> Vec<(String, usize, Duration)> {
        let now = Instant::now();
        self.0
            .lock()
            .expect("sync watch")
            .peers
            .iter()
            .filter(|(_, (since, _))| now.duration_since(*since) >= after)
            .map(|(peer, (since, n))| (peer.clone(), *n, now.duration_since(*since)))
            .collect()
    }
}

impl SyncWatch {
    /// Since when (ms since the epoch) a document has been seen pending with a peer, as far as
    /// the sampling (every 5 s) saw.
    pub fn pending_since(&self, peer: &str, doc: &str) -> Option<i64> {
        self.0
            .lock()
            .expect("sync watch")
            .docs
            .get(&(peer.to_owned(), doc.to_owned()))
            .copied()
    }
}

/// The earliest wall-clock time a node can be running at: a clock before it was never set.
const EARLIEST_PLAUSIBLE_MS: i64 = 1_767_225_600_000; // 2026-01-01

/// How far the wall clock may drift from the monotonic clock since start before it counts as
/// having jumped.
const CLOCK_JUMP: Duration = Duration::from_secs(60);

/// The clock check: set at all, and not jumped since the node started (`started` is the same
/// moment on both clocks).
pub fn clock(started: Instant, started_wall_ms: i64) -> CheckResult {
    let now = crate::node::now_ms();
    if now < EARLIEST_PLAUSIBLE_MS {
        return CheckResult::failing(
            "clock",
            format!(
                "the wall clock reads {}, before this software existed: set the time (NTP); \
                 certificates and windows depend on it",
                crdt_store::format_timestamp(now)
            ),
        );
    }
    let wall = now - started_wall_ms;
    let mono = started.elapsed().as_millis() as i64;
    let drift = (wall - mono).abs();
    if drift > CLOCK_JUMP.as_millis() as i64 {
        return CheckResult::warning(
            "clock",
            format!(
                "the wall clock moved {} s {} the monotonic clock since the node started",
                drift / 1000,
                if wall > mono { "ahead of" } else { "behind" }
            ),
        );
    }
    CheckResult::ok("clock")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_configs_are_refused_with_what_is_wrong() {
        let check = |command: &str, http: &str, interval: &str| CheckConfig {
            name: "c".into(),
            command: command.into(),
            http: http.into(),
            interval: interval.into(),
            timeout: "1s".into(),
            critical: false,
        };
        assert!(check("true", "", "10s").validate().is_ok());
        assert!(
            check("", "http://127.0.0.1:9/ready", "10s")
                .validate()
                .is_ok()
        );
        for (bad, says) in [
            (check("", "", "10s"), "give a `command`"),
            (check("true", "http://x/", "10s"), "not both"),
            (check("", "https://x/", "10s"), "http://"),
            (check("true", "", "soon"), "interval"),
        ] {
            let err = format!("{:#}", bad.validate().unwrap_err());
            assert!(err.contains(says), "{err}");
        }
    }

    #[test]
    fn the_worst_check_decides_and_only_critical_ones_fail_the_node() {
        let ok = CheckResult::ok("a");
        let warn = CheckResult::warning("b", "x".into());
        let bad = CheckResult::failing("c", "y".into());
        assert_eq!(overall(&[ok.clone(), warn.clone()]), "ok");
        assert_eq!(overall(&[ok.clone(), bad.clone()]), "degraded");
        assert_eq!(overall(&[ok, bad.critical()]), "failing");
    }

    #[tokio::test]
    async fn user_checks_run_commands_and_probes_with_a_timeout() {
        let config = |name: &str, command: &str, http: &str| CheckConfig {
            name: name.into(),
            command: command.into(),
            http: http.into(),
            interval: "100ms".into(),
            timeout: "500ms".into(),
            critical: false,
        };
        let timeout = Duration::from_millis(500);
        assert!(run_check(&config("t", "true", ""), timeout).await.is_ok());
        let err = run_check(&config("f", "echo broken >&2; exit 3", ""), timeout)
            .await
            .unwrap_err();
        assert!(err.contains("broken") && err.contains('3'), "{err}");
        let err = run_check(&config("s", "sleep 5", ""), timeout)
            .await
            .unwrap_err();
        assert!(err.contains("no answer"), "{err}");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            while let Ok((mut s, _)) = listener.accept().await {
                let _ = s
                    .write_all(b"HTTP/1.1 503 Service Unavailable\r\n\r\n")
                    .await;
            }
        });
        let err = run_check(
            &config("h", "", &format!("http://127.0.0.1:{port}/ready")),
            timeout,
        )
        .await
        .unwrap_err();
        assert!(err.contains("503"), "{err}");
    }
}
