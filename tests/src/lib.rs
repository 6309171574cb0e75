//! Helpers for end-to-end tests that start real processes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Path of the workspace's `rhizome` binary, of the tests' own profile; built first if missing.
///
/// It is not rebuilt when present: a workspace test run (`scripts/test.sh`, `cargo nextest run
/// --workspace`) builds it with the tests, and a build from here would unify dependency features
/// differently and flip-flop with the runner's build. When running only this package's tests
/// (`cargo test -p rhizome-e2e`) after changing the node, run `cargo build -p rhizome` first.
pub fn rhizome_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let (target_dir, profile) = target_dir_and_profile();
        let bin = target_dir
            .join(&profile)
            .join(format!("rhizome{}", std::env::consts::EXE_SUFFIX));
        if !bin.exists() {
            build_rhizome(&target_dir, &profile);
            assert!(
                bin.exists(),
                "`cargo build -p rhizome` succeeded but {} does not exist",
                bin.display()
            );
        }
        bin
    })
    .clone()
}

/// Polls `check` until it holds and returns how long that took; panics naming `what` if it does
/// not hold `within`.
pub fn wait_until(what: &str, within: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests package lives inside the workspace")
}

/// The target directory and the profile directory name (`debug`, `release`, ...) of the running
/// executable, which sits in `<target>/<profile>/` (binaries) or `<target>/<profile>/deps/`
/// (test harnesses).
fn target_dir_and_profile() -> (PathBuf, String) {
    let exe = std::env::current_exe().expect("locating the running executable");
    let mut dir = exe.parent().expect("an executable has a parent directory");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent().expect("deps has a parent directory");
    }
    let profile = dir
        .file_name()
        .and_then(|n| n.to_str())
        .expect("the profile directory has a UTF-8 name")
        .to_owned();
    let target_dir = match std::env::var_os("CARGO_TARGET_DIR") {
        // A relative one is taken from where cargo runs, normally the workspace root.
        Some(t) => workspace_root().join(t),
        None => dir
            .parent()
            .expect("the profile directory sits in a target directory")
            .to_owned(),
    };
    (target_dir, profile)
}

fn build_rhizome(target_dir: &Path, profile: &str) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root())
        .args(["build", "-p", "rhizome", "--bin", "rhizome", "--target-dir"])
        .arg(target_dir);
    match profile {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("could not run `{cmd:?}` to build the rhizome binary: {e}"));
    assert!(
        status.success(),
        "building the rhizome binary failed ({status}); cargo's errors are above. Command: {cmd:?}"
    );
}

/// The workload of the crash test: what `crash-writer` appends and what the test expects back.
pub mod cable;

pub mod crash {
    use crdt_store::{RunRecord, RunStatus, StepRecord, StoreConfig};

    /// The mesh id of the crash test's store.
    pub const MESH: &str = "crash-test";

    /// 2026-01-01T00:00Z: run `n` finishes `n` seconds after this.
    const BASE_MS: i64 = 1_767_225_600_000;

    /// The store configuration the writer and the checker share. Short windows make a few
    /// thousand records spread over many results documents, so kills also land while documents
    /// are created and compacted.
    pub fn config(node: &str) -> StoreConfig {
        let mut config = StoreConfig::new(MESH, node);
        config.results_window_minutes = 1;
        config
    }

    /// The run id of run `n` of `node`.
    pub fn run_id(node: &str, n: u64) -> String {
        format!("{node}-{n}")
    }

    /// The record of run `n` of `node`, identical every time, so a reader can check that a
    /// record came back whole.
    pub fn record(node: &str, n: u64) -> RunRecord {
        let finished_ms = BASE_MS + n as i64 * 1000;
        let started_ms = finished_ms - 400;
        let failed = n.is_multiple_of(7);
        let mut steps = vec![StepRecord {
            step: "read".into(),
            status: RunStatus::Succeeded,
            started_ms,
            duration_us: 150_000 + n % 1000,
            attempts: 1,
            output: serde_json::json!({ "temperature": 20.0 + (n % 50) as f64 / 10.0 }).to_string(),
            error: None,
        }];
        if !n.is_multiple_of(3) {
            steps.push(StepRecord {
                step: "score".into(),
                status: if failed {
                    RunStatus::Failed
                } else {
                    RunStatus::Succeeded
                },
                started_ms: started_ms + 160,
                duration_us: 200_000,
                attempts: if failed { 3 } else { 1 },
                output: serde_json::json!({ "anomaly": n.is_multiple_of(11) }).to_string(),
                error: failed.then(|| "model server refused the connection".into()),
            });
        }
        let status = if failed && steps.len() > 1 {
            RunStatus::Failed
        } else {
            RunStatus::Succeeded
        };
        RunRecord {
            run_id: run_id(node, n),
            workflow: "w".into(),
            workflow_version: 1 + n / 5000,
            node: node.into(),
            started_ms,
            finished_ms,
            status,
            output: steps.last().map(|s| s.output.clone()).unwrap_or_default(),
            error: (status == RunStatus::Failed)
                .then(|| "step `score` failed after 3 attempts".into()),
            steps,
        }
    }
}

pub mod netns;

/// One-shot `rhizome` commands, run without the test's own `RHIZOME_*` environment (which
/// would override what a test sets), and what they print.
pub mod oneshot {
    use std::path::Path;
    use std::process::{Command, Output};

    use serde_json::Value;

    /// `rhizome --data-dir DIR ARGS...`.
    pub fn rhizome(data_dir: &Path, args: &[&str]) -> Output {
        let mut cmd = Command::new(super::rhizome_bin());
        cmd.arg("--data-dir").arg(data_dir).args(args);
        without_own_environment(&mut cmd);
        cmd.output().expect("running rhizome")
    }

    /// `rhizome ARGS...`, for commands that take no data dir or name it themselves.
    pub fn rhizome_without_data_dir(args: &[&str]) -> Output {
        let mut cmd = Command::new(super::rhizome_bin());
        cmd.args(args);
        without_own_environment(&mut cmd);
        cmd.output().expect("running rhizome")
    }

    fn without_own_environment(cmd: &mut Command) {
        for (var, _) in std::env::vars() {
            if var.starts_with("RHIZOME_") {
                cmd.env_remove(var);
            }
        }
    }

    /// The stdout of a command that must have succeeded.
    pub fn ok(output: Output) -> String {
        assert!(
            output.status.success(),
            "rhizome failed: {}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// A clean failure: exit code 1 (not a panic's 101) and the error text.
    pub fn fails(output: Output) -> String {
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert_eq!(
            output.status.code(),
            Some(1),
            "expected a clean error: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        stderr
    }

    /// Text that must be JSON.
    pub fn json(text: &str) -> Value {
        serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    }
}
pub mod postgres;

/// What the release tests share: hashes of installed binaries and the release status.
pub mod releases {
    use std::path::Path;

    use serde_json::Value;

    use crate::process::{Running, json_if_ok, run_on};

    /// The SHA-256 of a file, hex; empty when it cannot be read.
    pub fn sha256(path: &Path) -> String {
        let out = std::process::Command::new("sha256sum")
            .arg(path)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned()
    }

    /// A loopback address with a UDP port free a moment ago, for a node's `--listen`.
    pub fn free_listen_addr() -> String {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.local_addr().unwrap().to_string()
    }

    /// `bytes` written to `path` (and its directory made) as an executable.
    pub fn install(path: &Path, bytes: &[u8]) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// `release status --json`, or `null` while the node is between binaries.
    pub fn status(node: &Running) -> Value {
        json_if_ok(run_on(node, &["release", "status", "--json"]))
    }

    /// One node's report in a release status, `null` when it has none.
    pub fn report_of<'a>(status: &'a Value, node: &str) -> &'a Value {
        status["rollout"]["nodes"]
            .as_array()
            .and_then(|nodes| nodes.iter().find(|n| n["name"] == node))
            .map_or(&Value::Null, |n| &n["report"])
    }
}

/// Workflow files the tests apply.
pub mod workflows {
    /// A manual workflow `line`: simulated readings scored by z-score. Tests derive their
    /// concurrent edits from it by replacing the seed or the threshold.
    pub const LINE: &str = "
id: line
description: base
trigger: manual
steps:
  - id: read
    agent: sensor
    config: {seed: 1}
  - id: score
    agent: zscore
    inputs: [read]
    config: {field: value, last: 20, threshold: 3}
";

    /// A workflow `probe` on `trigger` for nodes tagged `sensor`: one simulated reading.
    pub fn probe(trigger: &str) -> String {
        format!(
            "
id: probe
trigger: {trigger}
target: {{tags: [sensor]}}
steps:
  - id: read
    agent: sensor
    config: {{seed: 3}}
"
        )
    }
}

/// Real `rhizome` processes: on loopback (`--no-mdns`, ports picked by the system), or in a
/// network namespace of a [`netns::Lab`].
///
/// Each node's stderr goes to `<data dir>.log` (appended across restarts; `RHIZOME_LOG` sets
/// its level), so that a failing test can show what the nodes said.
pub mod process {
    use std::io::{BufRead, BufReader};
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};

    use serde_json::Value;

    use super::rhizome_bin;

    /// A running `rhizome start`; killed when dropped.
    #[derive(Debug)]
    pub struct Running {
        pub child: Child,
        pub dir: PathBuf,
        /// The QUIC address it bound.
        pub quic: String,
        /// The HTTP API's address it bound.
        pub http: String,
        /// The network namespace it runs in; `None` for the test's own.
        pub netns: Option<String>,
    }

    impl Running {
        /// Kills the node with SIGKILL (no goodbye, nothing flushed) and reaps it.
        pub fn kill(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    impl Drop for Running {
        fn drop(&mut self) {
            self.kill();
        }
    }

    /// A `rhizome` command, run inside `netns` when one is given.
    pub fn command(netns: Option<&str>) -> Command {
        match netns {
            None => Command::new(rhizome_bin()),
            Some(ns) => {
                // `ip netns exec` execs the command: the child's pid is rhizome's own.
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns]).arg(rhizome_bin());
                cmd
            }
        }
    }

    /// Runs a `rhizome` command on a data dir.
    pub fn run(dir: &Path, args: &[&str]) -> std::process::Output {
        run_in(None, dir, args)
    }

    /// Runs a `rhizome` command on a data dir inside a network namespace (or the test's own):
    /// a running node's local API is reachable only from its namespace.
    pub fn run_in(netns: Option<&str>, dir: &Path, args: &[&str]) -> std::process::Output {
        command(netns)
            .arg("--data-dir")
            .arg(dir)
            .args(args)
            .output()
            .unwrap()
    }

    /// Applies a workflow on a running node (in its namespace), from a file beside its data dir.
    pub fn apply_on(node: &Running, yaml: &str) {
        let file = node.dir.with_extension("workflow.yaml");
        std::fs::write(&file, yaml).unwrap();
        ok(run_on(node, &["workflow", "apply", file.to_str().unwrap()]));
    }

    /// A new API token of `role` for a node (running or not), named `name`.
    pub fn api_token(dir: &Path, role: &str, name: &str) -> String {
        ok(run(
            dir,
            &["token", "create", "--role", role, "--name", name, "--json"],
        ))["token"]
            .as_str()
            .expect("token create --json names the token")
            .to_owned()
    }

    /// The `automerge:` URL of a document a running node holds, as automerge-repo clients
    /// `find` it.
    pub fn doc_url(node: &Running, name: &str) -> String {
        ok(run_on(node, &["doc", "show", name, "--json"]))["url"]
            .as_str()
            .expect("doc show --json names the URL")
            .to_owned()
    }

    /// Runs of `workflow` that node `id` recorded, as the node lists them.
    pub fn own_runs(node: &Running, workflow: &str, id: &str) -> u64 {
        ok(run_on(
            node,
            &["results", "--workflow", workflow, "--node", id, "--json"],
        ))
        .as_array()
        .unwrap()
        .len() as u64
    }

    /// Runs a `rhizome` command on a node's data dir, in the node's namespace.
    pub fn run_on(node: &Running, args: &[&str]) -> std::process::Output {
        run_in(node.netns.as_deref(), &node.dir, args)
    }

    /// `rhizome init`, in a mesh (its CA directory) or a new one.
    pub fn init(dir: &Path, name: &str, mesh: Option<&Path>) {
        init_in(dir, name, mesh, &[]);
    }

    /// [`init`] with more arguments (`--zone`, `--tag`, ...).
    pub fn init_in(dir: &Path, name: &str, mesh: Option<&Path>, extra: &[&str]) {
        let mut args = vec!["init", "--name", name];
        args.extend(extra);
        let mesh_arg;
        if let Some(m) = mesh {
            mesh_arg = m.to_str().unwrap().to_owned();
            args.extend(["--mesh", mesh_arg.as_str()]);
        }
        let out = run(dir, &args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `rhizome artifact add FILE [--name NAME] --json` on a node: what it printed.
    pub fn add_artifact(node: &Running, file: &Path, name: Option<&str>) -> Value {
        let mut args = vec!["artifact", "add", file.to_str().unwrap(), "--json"];
        if let Some(name) = name {
            args.extend(["--name", name]);
        }
        ok(run_on(node, &args))
    }

    /// A cloud peer and edges of zone `site-a` in one mesh, made under `root` (edges with
    /// `edge_args` to `init` too) and started on loopback: each edge dials the cloud and the
    /// edges before it. The cloud comes first.
    pub fn cloud_and_site(root: &Path, edges: &[&str], edge_args: &[&str]) -> Vec<Running> {
        let cloud_dir = root.join("cloud");
        init(&cloud_dir, "cloud", None);
        let mesh = cloud_dir.join("mesh");
        let mut args = vec!["--zone", "site-a"];
        args.extend_from_slice(edge_args);
        for name in edges {
            init_in(&root.join(name), name, Some(&mesh), &args);
        }
        let mut nodes = vec![start_with(&cloud_dir, &[], &["--role", "cloud"])];
        for name in edges {
            let peers: Vec<String> = nodes.iter().map(|n| n.quic.clone()).collect();
            let peers: Vec<&str> = peers.iter().map(String::as_str).collect();
            nodes.push(start(&root.join(name), &peers));
        }
        nodes
    }

    /// Starts a node and waits for its "serving" line, which names the bound QUIC address.
    pub fn start(dir: &Path, peers: &[&str]) -> Running {
        launch(None, dir, "127.0.0.1:0", None, peers, &[])
    }

    /// [`start`] with more arguments (`--role cloud`, ...).
    pub fn start_with(dir: &Path, peers: &[&str], extra: &[&str]) -> Running {
        launch(None, dir, "127.0.0.1:0", None, peers, extra)
    }

    /// [`start`] with a QUIC listen address of the caller's choice.
    pub fn start_on(dir: &Path, listen: &str, peers: &[&str]) -> Running {
        launch(None, dir, listen, None, peers, &[])
    }

    /// [`start_on`] with more arguments: a node restarted on the address its peers know.
    pub fn start_on_with(dir: &Path, listen: &str, peers: &[&str], extra: &[&str]) -> Running {
        launch(None, dir, listen, None, peers, extra)
    }

    /// Starts a node inside network namespace `netns`, listening on `listen`, with mDNS on
    /// `mdns_interface` only (`None`: `--no-mdns`).
    pub fn start_in(
        netns: &str,
        dir: &Path,
        listen: &str,
        mdns_interface: Option<&str>,
        peers: &[&str],
        extra: &[&str],
    ) -> Running {
        launch(Some(netns), dir, listen, mdns_interface, peers, extra)
    }

    /// The file a node's stderr goes to.
    pub fn log_file(dir: &Path) -> PathBuf {
        dir.with_extension("log")
    }

    /// The last `lines` lines of a node's log.
    pub fn log_tail(dir: &Path, lines: usize) -> String {
        let text = std::fs::read_to_string(log_file(dir)).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Starts a node from `binary` (a copy of `rhizome` installed where a release may replace
    /// it) instead of the build's.
    pub fn start_installed(
        binary: &Path,
        dir: &Path,
        listen: &str,
        peers: &[&str],
        extra: &[&str],
    ) -> Running {
        start_command(Command::new(binary), dir, listen, peers, extra)
    }

    /// Starts a node with `command`: a `rhizome` binary, or a command that sets something up
    /// and then executes one (as `sh -c '…; exec "$@"' sh BINARY` does), so that the child's
    /// pid is the node's. The node's arguments follow the command's own.
    pub fn start_command(
        command: Command,
        dir: &Path,
        listen: &str,
        peers: &[&str],
        extra: &[&str],
    ) -> Running {
        spawn_node(command, None, dir, listen, None, peers, extra)
    }

    fn launch(
        netns: Option<&str>,
        dir: &Path,
        listen: &str,
        mdns_interface: Option<&str>,
        peers: &[&str],
        extra: &[&str],
    ) -> Running {
        spawn_node(
            command(netns),
            netns,
            dir,
            listen,
            mdns_interface,
            peers,
            extra,
        )
    }

    fn spawn_node(
        mut cmd: Command,
        netns: Option<&str>,
        dir: &Path,
        listen: &str,
        mdns_interface: Option<&str>,
        peers: &[&str],
        extra: &[&str],
    ) -> Running {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_file(dir))
            .unwrap();
        cmd.arg("--data-dir")
            .arg(dir)
            .args(["start", "--listen", listen, "--http", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(log);
        match mdns_interface {
            Some(interface) => cmd.args(["--mdns-interface", interface]),
            None => cmd.arg("--no-mdns"),
        };
        for p in peers {
            cmd.args(["--peer", p]);
        }
        cmd.args(extra);
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let Some(quic) = line
            .split("quic ")
            .nth(1)
            .and_then(|rest| rest.split(',').next())
        else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{} did not start: {line:?}\n{}",
                dir.display(),
                log_tail(dir, 20)
            );
        };
        let http = line
            .split("http ")
            .nth(1)
            .and_then(|rest| rest.split([',', ' ']).next())
            .unwrap_or_default()
            .to_owned();
        Running {
            quic: quic.to_owned(),
            http,
            child,
            dir: dir.to_owned(),
            netns: netns.map(str::to_owned),
        }
    }

    /// Prints the end of each node's log if the test panics while it is alive: declare it
    /// after the nodes' data dirs are known.
    #[derive(Debug)]
    pub struct LogsOnPanic(pub Vec<PathBuf>);

    impl Drop for LogsOnPanic {
        fn drop(&mut self) {
            if std::thread::panicking() {
                for dir in &self.0 {
                    eprintln!(
                        "--- end of {}:\n{}",
                        log_file(dir).display(),
                        log_tail(dir, 30)
                    );
                }
            }
        }
    }

    /// Stops a node with SIGTERM and waits for it to exit; panics unless it exits cleanly.
    pub fn stop(mut node: Running) {
        #[allow(unsafe_code)]
        // SAFETY: kill(2) on the pid of a child this process spawned and has not reaped.
        unsafe {
            libc::kill(node.child.id() as i32, libc::SIGTERM);
        }
        let status = node.child.wait().unwrap();
        assert!(status.success(), "the node exited with {status}");
    }

    /// The output of a command that must have succeeded: its stdout as JSON, or `null` when it
    /// printed something else.
    pub fn ok(out: std::process::Output) -> Value {
        assert!(
            out.status.success(),
            "rhizome failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    /// For polls of something that may not exist yet: the command's stdout as JSON when it
    /// succeeded, `null` when it failed (a document not yet synced answers 404).
    pub fn json_if_ok(out: std::process::Output) -> Value {
        if !out.status.success() {
            return Value::Null;
        }
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    /// The document names of a `rhizome doc list --json` output.
    pub fn doc_names(list: &Value) -> Vec<String> {
        list.as_array()
            .expect("`doc list --json` prints an array")
            .iter()
            .filter_map(|d| d["name"].as_str().map(str::to_owned))
            .collect()
    }

    /// `rhizome peers --json`.
    pub fn peers(node: &Running) -> Vec<Value> {
        let out = run_on(node, &["peers", "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }

    /// How many peers are connected.
    pub fn connected(node: &Running) -> usize {
        peers(node)
            .iter()
            .filter(|p| p["state"] == "connected")
            .count()
    }

    /// `rhizome status --json`.
    pub fn status(node: &Running) -> Value {
        let out = run_on(node, &["status", "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The aggregator of `zone` when every one of `members` answers, is in `zone`, and names
    /// the same one of `member_ids` for it with `cloud_id` at the root above; `None` while
    /// they disagree, one cannot answer, or there are no members.
    pub fn agreed_aggregator<'a>(
        members: impl IntoIterator<Item = &'a Running>,
        zone: &str,
        member_ids: &[String],
        cloud_id: &str,
    ) -> Option<String> {
        let mut agreed: Option<String> = None;
        for node in members {
            let out = run_on(node, &["status", "--json"]);
            if !out.status.success() {
                return None;
            }
            let status: Value = serde_json::from_slice(&out.stdout).ok()?;
            let [(own_zone, aggregator), (root, top)]: [(String, String); 2] =
                chain(&status).try_into().ok()?;
            if status["zone"] != zone
                || own_zone != zone
                || !member_ids.contains(&aggregator)
                || !root.is_empty()
                || top != cloud_id
                || agreed.as_ref().is_some_and(|a| *a != aggregator)
            {
                return None;
            }
            agreed = Some(aggregator);
        }
        agreed
    }

    /// The aggregator chain of a `status --json`: (zone, aggregator) from the node's zone up.
    pub fn chain(status: &Value) -> Vec<(String, String)> {
        status["hierarchy"]["chain"]
            .as_array()
            .map(|links| {
                links
                    .iter()
                    .map(|l| {
                        (
                            l["zone"].as_str().unwrap_or_default().to_owned(),
                            l["aggregator"].as_str().unwrap_or("?").to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Small filesystems made by a test (root only), to fill up under a running node.
pub mod disk {
    use std::path::Path;
    use std::process::Command;

    /// A tmpfs of `size` mounted on `dir`, unmounted when dropped; `None` (saying why) without root.
    #[derive(Debug)]
    pub struct Tmpfs(std::path::PathBuf);

    impl Tmpfs {
        pub fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
            std::fs::create_dir_all(dir).unwrap();
            let out = Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(dir)
                .output()
                .ok()?;
            if !out.status.success() {
                eprintln!(
                    "skipped: mounting a tmpfs needs root ({})",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                return None;
            }
            Some(Tmpfs(dir.to_owned()))
        }
    }

    /// An ext4 filesystem in a loop-mounted image file (no blocks reserved for root, so that this
    /// root-run test meets ENOSPC where a user would).
    pub fn mount_ext4(dir: &Path, size_mib: u64) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let image = dir.with_extension("img");
        let file = std::fs::File::create(&image).unwrap();
        file.set_len(size_mib << 20).unwrap();
        let made = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0"])
            .arg(&image)
            .output()
            .ok()?;
        if !made.status.success() {
            eprintln!(
                "skipped: mkfs.ext4 failed ({})",
                String::from_utf8_lossy(&made.stderr).trim()
            );
            return None;
        }
        let out = Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(dir)
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!(
                "skipped: loop-mounting ext4 needs root and loop devices ({})",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Some(Tmpfs(dir.to_owned()))
    }

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }

    /// Fills the filesystem of `dir` with a file until writes fail, leaving `keep` bytes free.
    pub fn fill(dir: &Path, keep: u64) -> std::path::PathBuf {
        let path = dir.join("filler");
        let (free, _) = free_space(dir);
        // Nothing to keep means full: write until the filesystem refuses, not up to what df
        // said, which on ext4 understates what is free while blocks are held back for data
        // not yet written out (delayed allocation).
        let size = if keep == 0 {
            u64::MAX
        } else {
            free.saturating_sub(keep)
        };
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![0x5a_u8; 64 << 10];
        let mut written = 0u64;
        use std::io::Write;
        while written < size {
            let n = chunk.len().min((size - written) as usize);
            if file.write_all(&chunk[..n]).is_err() {
                break;
            }
            written += n as u64;
        }
        let _ = file.sync_all();
        if keep == 0 {
            // The write-out releases what was held back: take that too, in blocks.
            for _ in 0..3 {
                while file.write_all(&chunk[..4096]).is_ok() {}
                let _ = file.sync_all();
            }
        }
        path
    }

    /// `(available, size)` bytes of the filesystem holding `dir`, as df reports them.
    pub fn free_space(dir: &Path) -> (u64, u64) {
        let out = Command::new("df")
            .args(["-B1", "--output=avail,size"])
            .arg(dir)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().nth(1).unwrap();
        let mut parts = line.split_whitespace().map(|p| p.parse::<u64>().unwrap());
        (parts.next().unwrap(), parts.next().unwrap())
    }
}

/// Percent-encodes a query value (everything but unreserved characters).
pub fn encode_query(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
