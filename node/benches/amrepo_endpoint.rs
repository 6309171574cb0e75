//! A node's `GET /automerge` (a real `rhizome start` process) side by side with the
//! automerge-repo sync server (`bench/js/server.mjs`: `@automerge/automerge-repo` behind its
//! Node.js WebSocket server adapter), both serving the same clients, on loopback.
//!
//! Clients (`RHIZOME_BENCH_CLIENT`): the JavaScript clients of `bench/js` (`js`, the default),
//! or `samod` repos in this process (`samod`, `amrepo/samod_client.rs`), or one after the other
//! (`both`). The JavaScript client costs milliseconds of its own per document and per edit,
//! enough to hide the difference between the servers; samod costs several times less. Each
//! client's runs start their servers anew like the others, so no client meets a server another
//! warmed.
//!
//! Sections (`RHIZOME_BENCH_SECTIONS`, default both):
//!
//! - `fetch`: a fresh client (`bench/js/client.mjs`: a `Repo` with nodefs storage, given the
//!   documents' URLs and heads) fetches every document the server holds: 1,000 documents × 10
//!   changes, 1 document × 10,000 changes. Timed from the client's `new Repo` until every
//!   document has the server's heads. Each run starts its server anew (the node from a copy of
//!   its data dir, once it is idle after start-up), alternating node and JavaScript server;
//!   the CPU time each server and the client spent meanwhile is recorded beside it.
//! - `lag`: client A changes a workflow document, client B (a second `Repo`) sees the change
//!   (`bench/js/lag.mjs`, both clients in one process, one clock). On the node A holds an admin
//!   token and B a monitor token; each of A's edits is a whole new definition, which the node
//!   validates, writes over with its own signed version and fsyncs before B hears of it.
//!   Runs after the first fetch run of the lag workload, on the same server processes.
//!
//! Documents are workflow documents as a node holds them. The node's store is written before
//! it starts, through the library as `rhizome workflow apply` writes on a stopped node
//! (`apply_workflow`: each version validated, the next version number, signed with the node's
//! key, one Automerge change, durable): the genesis and `changes - 1` versions. The JavaScript
//! server makes documents of the same number of changes, each version the node's definition
//! with its own id, version, description, time and a random signature of the same length
//! (`workflowVersion` in `bench/js/content.mjs`); raw change bytes of both are recorded.
//!
//! Environment (defaults in brackets):
//! - `RHIZOME_BENCH_JS` the `bench/js` directory with its `node_modules` (required)
//! - `RHIZOME_BENCH_SECTIONS` any of `fetch,lag` [both]
//! - `RHIZOME_BENCH_CLIENT` `js`, `samod` or `both` [js]
//! - `RHIZOME_BENCH_REPEATS` fetch runs per workload and server, median reported [3]
//! - `RHIZOME_BENCH_WORKLOADS` documents × changes of the fetch section [1000x10,1x10000]
//! - `RHIZOME_BENCH_LAG_WORKLOAD` the store the lag section runs against [1000x10]
//! - `RHIZOME_BENCH_LAG_EDITS` edits per lag series [200]
//! - `RHIZOME_BENCH_LAG_DOCS` documents edited in turn [20]
//! - `RHIZOME_BENCH_PACE_MS` time between edits [20]
//! - `RHIZOME_BENCH_DIR` where data dirs are created [`<target>/tmp`]
//! - `RHIZOME_BENCH_OUT` the JSON-lines file of figures [`<target>/bench/amrepo-endpoint.jsonl`]
//! - `RHIZOME_BENCH_KEEP` set: the data dirs, URL lists and node logs are kept (for profiling
//!   a node by hand) [unset]
//!
//! The node inherits the environment (`RHIZOME_LOG` included); its log is
//! `<dir>/amrepo-bench/node-*.log`. `bench/amrepo-endpoint.sh` installs the JavaScript side and
//! runs this; BENCHMARKS.md has the figures.

mod common;
#[path = "amrepo/samod_client.rs"]
mod samod_client;

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use crdt_store::{DocName, WorkflowDoc};
use serde_json::{Value, json};

/// The node binary, built with this benchmark's profile.
const RHIZOME: &str = env!("CARGO_BIN_EXE_rhizome");
/// How long a server may take to start and settle before the run is declared failed.
const PATIENCE: Duration = Duration::from_secs(60);

/// A manual workflow of two steps, as the end-to-end tests apply: the definition every version
/// of every document carries (with its own id and description).
fn workflow_yaml(id: &str) -> String {
    format!(
        "
id: {id}
description: genesis
trigger: manual
steps:
  - id: read
    agent: sensor
    config: {{seed: 1}}
  - id: score
    agent: zscore
    inputs: [read]
    config: {{field: value, last: 20, threshold: 3}}
"
    )
}

fn workflow_id(i: usize) -> String {
    format!("bench-{i:04}")
}

/// Which automerge-repo implementation the clients are.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Client {
    Js,
    Samod,
}

impl Client {
    fn name(self) -> &'static str {
        match self {
            Client::Js => "js",
            Client::Samod => "samod",
        }
    }

    /// How the tables name it.
    fn title(self) -> &'static str {
        match self {
            Client::Js => "JavaScript client",
            Client::Samod => "samod client",
        }
    }
}

struct Params {
    sections: Vec<String>,
    clients: Vec<Client>,
    repeats: usize,
    workloads: Vec<(usize, usize)>,
    lag_workload: (usize, usize),
    lag_edits: usize,
    lag_docs: usize,
    pace_ms: u64,
    js: PathBuf,
    dir: PathBuf,
    out: PathBuf,
}

fn workload(text: &str, what: &str) -> (usize, usize) {
    text.split_once('x')
        .and_then(|(d, c)| Some((d.parse().ok()?, c.parse().ok()?)))
        .filter(|&(d, c): &(usize, usize)| d > 0 && c > 1)
        .unwrap_or_else(|| panic!("{what}: {text:?} is not DOCSxCHANGES (changes ≥ 2)"))
}

impl Params {
    fn from_env() -> Params {
        use common::{number, var};
        let (dir, out) = common::places(
            Path::new(env!("CARGO_TARGET_TMPDIR")),
            "amrepo-endpoint.jsonl",
        );
        let js = var("RHIZOME_BENCH_JS")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                panic!(
                    "RHIZOME_BENCH_JS is not set: both servers are measured with the JavaScript \
                 clients of bench/js (bench/amrepo-endpoint.sh installs them)"
                )
            });
        Params {
            sections: var("RHIZOME_BENCH_SECTIONS")
                .unwrap_or_else(|| "fetch,lag".into())
                .split(',')
                .map(str::to_owned)
                .collect(),
            clients: match var("RHIZOME_BENCH_CLIENT").as_deref() {
                None | Some("js") => vec![Client::Js],
                Some("samod") => vec![Client::Samod],
                Some("both") => vec![Client::Js, Client::Samod],
                Some(other) => panic!("RHIZOME_BENCH_CLIENT: {other:?} is not js, samod or both"),
            },
            repeats: number("RHIZOME_BENCH_REPEATS", 3).max(1),
            workloads: var("RHIZOME_BENCH_WORKLOADS")
                .unwrap_or_else(|| "1000x10,1x10000".into())
                .split(',')
                .map(|w| workload(w, "RHIZOME_BENCH_WORKLOADS"))
                .collect(),
            lag_workload: workload(
                &var("RHIZOME_BENCH_LAG_WORKLOAD").unwrap_or_else(|| "1000x10".into()),
                "RHIZOME_BENCH_LAG_WORKLOAD",
            ),
            lag_edits: number("RHIZOME_BENCH_LAG_EDITS", 200).max(1),
            lag_docs: number("RHIZOME_BENCH_LAG_DOCS", 20).max(1),
            pace_ms: number("RHIZOME_BENCH_PACE_MS", 20) as u64,
            js,
            dir,
            out,
        }
    }

    fn runs(&self, section: &str) -> bool {
        self.sections.iter().any(|s| s == section)
    }
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
    sorted[sorted.len() / 2]
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A percentile of a stage, which a client may not have timed for any edit: NaN then.
fn stage_percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        f64::NAN
    } else {
        percentile(sorted, p)
    }
}

/// Waits until a freshly started server has finished its start-up work: less than 10 ms of CPU
/// in 250 ms, so that no run measures a server still busy starting.
fn settle(pid: u32) {
    let deadline = Instant::now() + PATIENCE;
    let mut last = common::process_cpu(pid);
    loop {
        std::thread::sleep(Duration::from_millis(250));
        let now = common::process_cpu(pid);
        if now.saturating_sub(last) < Duration::from_millis(10) {
            return;
        }
        last = now;
        assert!(Instant::now() < deadline, "server {pid} never became idle");
    }
}

fn copy_dir(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A CLI command on a node's data dir; its stdout.
fn rhizome(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(RHIZOME)
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .output()
        .expect("running rhizome");
    assert!(
        out.status.success(),
        "rhizome {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn token(dir: &Path, role: &str) -> String {
    let out: Value = serde_json::from_str(&rhizome(
        dir,
        &["token", "create", "--role", role, "--name", role, "--json"],
    ))
    .unwrap();
    out["token"].as_str().unwrap().to_owned()
}

/// A node's data dir holding `docs` workflows of `changes` changes each, built once and copied
/// for each run, with what the clients need: the documents' URLs and heads, tokens, and the
/// definition the JavaScript server models its versions on.
struct Template {
    docs: usize,
    changes: usize,
    dir: PathBuf,
    urls: PathBuf,
    definition: PathBuf,
    admin: String,
    monitor: String,
    raw_change_bytes: u64,
    change_count: u64,
    definition_bytes: usize,
}

impl Template {
    fn build(root: &Path, docs: usize, changes: usize) -> Template {
        let dir = root.join(format!("node-{docs}x{changes}"));
        let _ = std::fs::remove_dir_all(&dir);
        rhizome(&dir, &["init", "--name", "a", "-q"]);
        let admin = token(&dir, "admin");
        let monitor = token(&dir, "monitor");
        let started = Instant::now();
        let node = rhizome::node::Node::load(&dir).unwrap();
        let writer = node.writer().unwrap();
        let mut store = node.open_store().unwrap();
        let mut entries = Vec::with_capacity(docs);
        let mut raw_change_bytes = 0;
        let mut change_count = 0;
        let mut last: Option<WorkflowDoc> = None;
        for i in 0..docs {
            let id = workflow_id(i);
            let mut definition = rhizome::run::workflow::parse(&workflow_yaml(&id)).unwrap();
            for j in 1..changes {
                definition.description = format!("edit {j} of document {i}");
                last = Some(
                    rhizome::cli::commands::apply_workflow(&mut store, definition.clone(), &writer)
                        .unwrap(),
                );
            }
            let name = DocName::workflow(&id).unwrap();
            let doc = store.document_id(&name);
            let all = store.changes_since(&doc, &[]).unwrap();
            assert_eq!(all.len(), changes, "{name} has the changes asked for");
            change_count += all.len() as u64;
            raw_change_bytes += all.iter().map(|c| c.len() as u64).sum::<u64>();
            let heads: Vec<String> = store
                .heads(&doc)
                .unwrap()
                .unwrap()
                .iter()
                .map(|h| h.to_string())
                .collect();
            entries.push(json!({
                "url": mesh::proto::amrepo::automerge_url(doc.as_bytes()),
                "heads": heads,
            }));
        }
        drop(store);
        let last = last.expect("at least one version");
        let urls = root.join(format!("urls-{docs}x{changes}.json"));
        std::fs::write(&urls, Value::Array(entries).to_string()).unwrap();
        let definition = root.join(format!("definition-{docs}x{changes}.json"));
        std::fs::write(&definition, last.encode()).unwrap();
        eprintln!(
            "  built {docs} × {changes} changes for the node in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        Template {
            docs,
            changes,
            dir,
            urls,
            definition,
            admin,
            monitor,
            raw_change_bytes,
            change_count,
            definition_bytes: last.encode().len(),
        }
    }
}

/// A server under test: a node or `server.mjs`, with the WebSocket URLs its clients use.
struct Server {
    child: Child,
    /// Kept open: the server may write more, and a closed pipe would fail its writes.
    stdout: BufReader<ChildStdout>,
    stdin: Option<ChildStdin>,
    /// What client A (the writer) and B (the reader) connect to.
    url_a: String,
    url_b: String,
    /// What server.mjs printed when ready.
    ready: Value,
}

impl Server {
    fn node(template: &Template, run_dir: &Path, run: &str) -> Server {
        let dir = run_dir.join(format!("node-{run}"));
        copy_dir(&template.dir, &dir);
        let log = File::create(run_dir.join(format!("node-{run}.log"))).unwrap();
        let mut child = Command::new(RHIZOME)
            .arg("--data-dir")
            .arg(&dir)
            .args([
                "start",
                "--listen",
                "127.0.0.1:0",
                "--http",
                "127.0.0.1:0",
                "--no-mdns",
            ])
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("starting rhizome");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let http = line
            .split(" http ")
            .nth(1)
            .and_then(|rest| rest.split([',', ' ']).next())
            .unwrap_or_else(|| panic!("the node did not start: {line:?}"))
            .to_owned();
        settle(child.id());
        let url = |token: &str| format!("ws://{http}/automerge?token={token}");
        Server {
            url_a: url(&template.admin),
            url_b: url(&template.monitor),
            child,
            stdout,
            stdin: None,
            ready: Value::Null,
        }
    }

    fn js(params: &Params, template: &Template, run_dir: &Path, run: &str) -> Server {
        let mut child = Command::new("node")
            .arg(params.js.join("server.mjs"))
            .arg(template.docs.to_string())
            .arg(template.changes.to_string())
            .arg(run_dir.join(format!("js-{run}")))
            .arg(run_dir.join(format!("js-urls-{run}.json")))
            .arg(&template.definition)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("running node bench/js/server.mjs");
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let ready: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("server.mjs answered {line:?}: {e}"));
        settle(child.id());
        let url = format!("ws://127.0.0.1:{}", ready["port"]);
        Server {
            url_a: url.clone(),
            url_b: url,
            child,
            stdout,
            stdin,
            ready,
        }
    }

    fn urls(&self, template: &Template, run_dir: &Path, run: &str) -> PathBuf {
        if self.stdin.is_some() {
            run_dir.join(format!("js-urls-{run}.json"))
        } else {
            template.urls.clone()
        }
    }

    fn stop(mut self) {
        match self.stdin.take() {
            // server.mjs stops once it has printed its byte counts.
            Some(mut stdin) => {
                writeln!(stdin, "stats").unwrap();
                let mut line = String::new();
                self.stdout.read_line(&mut line).unwrap();
            }
            // The node stops as it does under systemd: SIGTERM, a graceful shutdown.
            None => {
                let _ = Command::new("kill")
                    .arg("-TERM")
                    .arg(self.child.id().to_string())
                    .status();
            }
        }
        let deadline = Instant::now() + PATIENCE;
        while self.child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.wait();
    }
}

/// Runs a JavaScript client of bench/js to its end; its JSON line.
fn js_client(params: &Params, script: &str, args: &[String]) -> Value {
    let output = Command::new("node")
        .arg(params.js.join(script))
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("running node bench/js/{script}: {e}"));
    assert!(output.status.success(), "bench/js/{script} failed");
    let line = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(line.trim())
        .unwrap_or_else(|e| panic!("bench/js/{script} answered {line:?}: {e}"))
}

#[derive(Debug, Clone, Copy)]
struct Fetch {
    ms: f64,
    server_cpu_ms: f64,
    client_cpu_ms: f64,
}

fn fetch(
    params: &Params,
    client: Client,
    server: &Server,
    urls: &Path,
    run_dir: &Path,
    run: &str,
) -> Fetch {
    if client == Client::Samod {
        let before = common::process_cpu(server.child.id());
        let f = samod_client::fetch(&server.url_b, urls);
        let server_cpu = common::process_cpu(server.child.id()).saturating_sub(before);
        assert!(f.complete, "the client got every document");
        return Fetch {
            ms: f.ms,
            server_cpu_ms: server_cpu.as_secs_f64() * 1e3,
            client_cpu_ms: f.client_cpu_ms,
        };
    }
    let storage = run_dir.join(format!("client-{run}"));
    let _ = std::fs::remove_dir_all(&storage);
    let before = common::process_cpu(server.child.id());
    let out = js_client(
        params,
        "client.mjs",
        &[
            server.url_b.clone(),
            storage.display().to_string(),
            urls.display().to_string(),
        ],
    );
    let server_cpu = common::process_cpu(server.child.id()).saturating_sub(before);
    assert_eq!(
        out["complete"],
        json!(true),
        "the client got every document"
    );
    Fetch {
        ms: out["ms"].as_f64().unwrap(),
        server_cpu_ms: server_cpu.as_secs_f64() * 1e3,
        client_cpu_ms: out["cpu_ms"].as_f64().unwrap_or(f64::NAN),
    }
}

#[derive(Debug, Clone)]
struct Lag {
    sorted_ms: Vec<f64>,
    /// Client A's share, the server's (A's adapter to B's), client B's; each sorted.
    stages: [Vec<f64>; 3],
    not_seen: u64,
    series_ms: f64,
    server_cpu_ms: f64,
}

fn lag(params: &Params, client: Client, server: &Server, urls: &Path) -> Lag {
    if client == Client::Samod {
        let before = common::process_cpu(server.child.id());
        let l = samod_client::lag(
            &server.url_a,
            &server.url_b,
            urls,
            params.lag_edits,
            params.pace_ms,
            params.lag_docs,
        );
        let server_cpu = common::process_cpu(server.child.id()).saturating_sub(before);
        let sorted = |mut values: Vec<f64>| {
            values.sort_by(|a, b| a.partial_cmp(b).unwrap());
            values
        };
        let sorted_ms = sorted(l.lags_ms);
        assert!(!sorted_ms.is_empty(), "B saw no edit at all");
        return Lag {
            sorted_ms,
            stages: [sorted(l.a_ms), sorted(l.server_ms), sorted(l.b_ms)],
            not_seen: l.not_seen,
            series_ms: l.series_ms,
            server_cpu_ms: server_cpu.as_secs_f64() * 1e3,
        };
    }
    let before = common::process_cpu(server.child.id());
    let out = js_client(
        params,
        "lag.mjs",
        &[
            server.url_a.clone(),
            server.url_b.clone(),
            urls.display().to_string(),
            params.lag_edits.to_string(),
            params.pace_ms.to_string(),
            params.lag_docs.to_string(),
        ],
    );
    let server_cpu = common::process_cpu(server.child.id()).saturating_sub(before);
    let sorted = |key: &str| {
        let mut values: Vec<f64> = out[key]
            .as_array()
            .unwrap_or_else(|| panic!("lag.mjs gave no {key}"))
            .iter()
            .filter_map(Value::as_f64)
            .collect();
        values.sort_by(|a, b| a.partial_cmp(b).unwrap());
        values
    };
    let sorted_ms = sorted("lags_ms");
    assert!(!sorted_ms.is_empty(), "B saw no edit at all");
    Lag {
        sorted_ms,
        stages: [sorted("a_ms"), sorted("server_ms"), sorted("b_ms")],
        not_seen: out["not_seen"].as_u64().unwrap_or(0),
        series_ms: out["series_ms"].as_f64().unwrap_or(f64::NAN),
        server_cpu_ms: server_cpu.as_secs_f64() * 1e3,
    }
}

struct WorkloadFigures {
    client: Client,
    docs: usize,
    changes: usize,
    node: Vec<Fetch>,
    js: Vec<Fetch>,
    node_raw: (u64, u64),
    js_raw: (u64, u64),
}

fn main() {
    let params = Params::from_env();
    let root = params.dir.join("amrepo-bench");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(params.out.parent().unwrap()).unwrap();
    let mut report = common::Report::create(&params.out);
    eprintln!(
        "data dirs in {}, figures to {}",
        root.display(),
        params.out.display()
    );

    let mut workloads = params.workloads.clone();
    if params.runs("lag") && !workloads.contains(&params.lag_workload) {
        workloads.push(params.lag_workload);
    }
    let mut figures = Vec::new();
    let mut lags: Vec<(Client, Lag, Lag)> = Vec::new();
    for (docs, changes) in workloads {
        let fetches = params.runs("fetch") && params.workloads.contains(&(docs, changes));
        let lag_here = params.runs("lag") && (docs, changes) == params.lag_workload;
        if !fetches && !lag_here {
            continue;
        }
        let template = Template::build(&root, docs, changes);
        let repeats = if fetches { params.repeats } else { 1 };
        let mut node_runs = vec![Vec::new(); params.clients.len()];
        let mut js_runs = vec![Vec::new(); params.clients.len()];
        let mut js_raw = (0, 0);
        for r in 0..repeats {
            for (c, &client) in params.clients.iter().enumerate() {
                // Alternate the two servers, so that load on the shared machine falls on both.
                let run = format!("{docs}x{changes}-{r}-{}", client.name());
                let node = Server::node(&template, &root, &run);
                if fetches {
                    let f = fetch(
                        &params,
                        client,
                        &node,
                        &template.urls,
                        &root,
                        &format!("node-{run}"),
                    );
                    eprintln!(
                        "  node {docs} × {changes}, {}: {:.0} ms (server CPU {:.0} ms, client CPU {:.0} ms)",
                        client.title(),
                        f.ms,
                        f.server_cpu_ms,
                        f.client_cpu_ms
                    );
                    node_runs[c].push(f);
                }
                let node_lag =
                    (lag_here && r == 0).then(|| lag(&params, client, &node, &template.urls));
                node.stop();

                let js = Server::js(&params, &template, &root, &run);
                let js_urls = js.urls(&template, &root, &run);
                js_raw = (
                    js.ready["raw_change_bytes"].as_u64().unwrap_or(0),
                    js.ready["change_count"].as_u64().unwrap_or(0),
                );
                if fetches {
                    let f = fetch(&params, client, &js, &js_urls, &root, &format!("js-{run}"));
                    eprintln!(
                        "  automerge-repo {docs} × {changes}, {}: {:.0} ms (server CPU {:.0} ms, client CPU {:.0} ms)",
                        client.title(),
                        f.ms,
                        f.server_cpu_ms,
                        f.client_cpu_ms
                    );
                    js_runs[c].push(f);
                }
                let js_lag = (lag_here && r == 0).then(|| lag(&params, client, &js, &js_urls));
                js.stop();
                if let (Some(n), Some(j)) = (node_lag, js_lag) {
                    for (side, l) in [("rhizome", &n), ("automerge-repo", &j)] {
                        report.record(json!({
                            "section": "lag", "side": side, "client": client.name(),
                            "docs": params.lag_docs,
                            "changes_per_doc": changes, "edits": params.lag_edits,
                            "pace_ms": params.pace_ms,
                            "p50_ms": percentile(&l.sorted_ms, 50.0),
                            "p90_ms": percentile(&l.sorted_ms, 90.0),
                            "p99_ms": percentile(&l.sorted_ms, 99.0),
                            "max_ms": l.sorted_ms.last(), "not_seen": l.not_seen,
                            "series_ms": l.series_ms, "server_cpu_ms": l.server_cpu_ms,
                            "stages_p50_ms": l.stages.iter().map(|v| stage_percentile(v, 50.0)).collect::<Vec<_>>(),
                            "stages_p99_ms": l.stages.iter().map(|v| stage_percentile(v, 99.0)).collect::<Vec<_>>(),
                            "lags_ms": l.sorted_ms,
                        }));
                    }
                    lags.push((client, n, j));
                }
            }
        }
        if fetches {
            for (c, &client) in params.clients.iter().enumerate() {
                for (side, runs, raw) in [
                    (
                        "rhizome",
                        &node_runs[c],
                        (template.raw_change_bytes, template.change_count),
                    ),
                    ("automerge-repo", &js_runs[c], js_raw),
                ] {
                    report.record(json!({
                        "section": "fetch", "side": side, "client": client.name(),
                        "docs": docs, "changes_per_doc": changes,
                        "runs_ms": runs.iter().map(|f| f.ms).collect::<Vec<_>>(),
                        "median_ms": median(&runs.iter().map(|f| f.ms).collect::<Vec<_>>()),
                        "server_cpu_ms": runs.iter().map(|f| f.server_cpu_ms).collect::<Vec<_>>(),
                        "client_cpu_ms": runs.iter().map(|f| f.client_cpu_ms).collect::<Vec<_>>(),
                        "raw_change_bytes": raw.0, "change_count": raw.1,
                        "definition_bytes": template.definition_bytes,
                    }));
                }
            }
            for (c, &client) in params.clients.iter().enumerate() {
                figures.push(WorkloadFigures {
                    client,
                    docs,
                    changes,
                    node: std::mem::take(&mut node_runs[c]),
                    js: std::mem::take(&mut js_runs[c]),
                    node_raw: (template.raw_change_bytes, template.change_count),
                    js_raw,
                });
            }
        }
    }

    for &client in &params.clients {
        let figures: Vec<&WorkloadFigures> =
            figures.iter().filter(|f| f.client == client).collect();
        if figures.is_empty() {
            continue;
        }
        println!(
            "\n## Fetch: a fresh client fetches every document the server holds ({})\n",
            client.title()
        );
        println!(
            "| work | Rhizome endpoint | automerge-repo server | speed-up (goal ≥ 5×) | server CPU Rhizome / JS | client CPU Rhizome / JS | raw change bytes Rhizome / JS |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|");
        for f in figures {
            let pick = |runs: &[Fetch], of: fn(&Fetch) -> f64| {
                median(&runs.iter().map(of).collect::<Vec<_>>())
            };
            let range = |runs: &[Fetch]| {
                let ms: Vec<f64> = runs.iter().map(|f| f.ms).collect();
                let lo = ms.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = ms.iter().copied().fold(0.0, f64::max);
                format!("{:.0} ms ({lo:.0}–{hi:.0})", median(&ms))
            };
            let node_ms = pick(&f.node, |r| r.ms);
            let js_ms = pick(&f.js, |r| r.ms);
            println!(
                "| {} × {} changes | {} | {} | {:.1}× | {:.0} / {:.0} ms | {:.0} / {:.0} ms | {} / {} |",
                f.docs,
                f.changes,
                range(&f.node),
                range(&f.js),
                js_ms / node_ms,
                pick(&f.node, |r| r.server_cpu_ms),
                pick(&f.js, |r| r.server_cpu_ms),
                pick(&f.node, |r| r.client_cpu_ms),
                pick(&f.js, |r| r.client_cpu_ms),
                f.node_raw.0,
                f.js_raw.0,
            );
        }
    }
    for (client, node, js) in &lags {
        println!(
            "\n## Lag: an edit by client A visible at client B ({} edits over {} documents of ~{} changes, {} ms apart; {})\n",
            params.lag_edits,
            params.lag_docs,
            params.lag_workload.1,
            params.pace_ms,
            client.title()
        );
        println!(
            "| server | p50 ms | p90 ms | p99 ms (goal ≤ 5) | max ms | not seen | A's client p50 / p99 | server and sockets p50 / p99 | B's client p50 / p99 | server CPU | server CPU per edit |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for (side, l) in [("Rhizome endpoint", node), ("automerge-repo server", js)] {
            let stage = |v: &Vec<f64>| {
                format!(
                    "{:.2} / {:.2}",
                    stage_percentile(v, 50.0),
                    stage_percentile(v, 99.0)
                )
            };
            let edits = l.sorted_ms.len() as f64 + l.not_seen as f64;
            println!(
                "| {side} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {} | {:.0} ms | {:.2} ms |",
                percentile(&l.sorted_ms, 50.0),
                percentile(&l.sorted_ms, 90.0),
                percentile(&l.sorted_ms, 99.0),
                l.sorted_ms.last().unwrap(),
                l.not_seen,
                stage(&l.stages[0]),
                stage(&l.stages[1]),
                stage(&l.stages[2]),
                l.server_cpu_ms,
                l.server_cpu_ms / edits
            );
        }
        println!(
            "\np99 ratio (automerge-repo ÷ Rhizome): {:.2}×",
            percentile(&js.sorted_ms, 99.0) / percentile(&node.sorted_ms, 99.0)
        );
    }
    if std::env::var_os("RHIZOME_BENCH_KEEP").is_some() {
        eprintln!("data dirs kept in {}", root.display());
    } else {
        let _ = std::fs::remove_dir_all(&root);
    }
}
