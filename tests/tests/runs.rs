//! Workflow runs on a real `rhizome start` process: `POST /run` and `GET /status`, `rhizome run`
//! through the running node, an `every` workflow whose results `rhizome results` lists, the
//! queue bound over HTTP, and SIGTERM in the middle of a run, which is recorded `interrupted`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rhizome_e2e::oneshot::{json, ok, rhizome};
use rhizome_e2e::{rhizome_bin, wait_until};
use serde_json::Value;

/// `scheduler::RUN_QUEUE_CAP` of the node: runs of one workflow that may wait for a slot.
const RUN_QUEUE_CAP: usize = 16;

struct Running {
    child: Child,
    dir: PathBuf,
    http: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    fn token(&self) -> String {
        std::fs::read_to_string(self.dir.join("api.token"))
            .unwrap()
            .trim()
            .to_owned()
    }

    /// An HTTP request to the node's API: status code and body.
    fn request(&self, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
        let mut stream = TcpStream::connect(&self.http).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n{auth}Content-Length: {}\r\n\r\n{body}",
            self.http,
            body.len()
        )
        .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        (code, body.to_owned())
    }

    fn post_run(&self, workflow: &str, input: &str) -> (u16, String) {
        self.request(
            "POST",
            &format!("/run/{workflow}"),
            Some(&self.token()),
            input,
        )
    }

    fn status(&self, run_id: &str) -> Value {
        let (code, body) =
            self.request("GET", &format!("/status/{run_id}"), Some(&self.token()), "");
        assert_eq!(code, 200, "GET /status/{run_id}: {body}");
        json(&body)
    }

    /// SIGTERM, then the exit status.
    fn terminate(mut self) -> std::process::ExitStatus {
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the node did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Writes a workflow file and applies it (through the node's API when one runs).
fn apply(dir: &Path, id: &str, yaml: &str) {
    let file = dir.join(format!("{id}.yaml"));
    std::fs::write(&file, yaml).unwrap();
    ok(rhizome(dir, &["workflow", "apply", file.to_str().unwrap()]));
}

/// Starts a node and waits for its "serving" line, which names the HTTP address.
fn start(dir: &Path) -> Running {
    let mut child = Command::new(rhizome_bin())
        .arg("--data-dir")
        .arg(dir)
        .args([
            "start",
            "--listen",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--no-mdns",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let http = line
        .split("http ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .unwrap_or_else(|| panic!("no serving line: {line:?}"))
        .to_owned();
    Running {
        child,
        dir: dir.to_owned(),
        http,
    }
}

fn init(dir: &Path) {
    ok(rhizome(
        dir,
        &[
            "init",
            "--name",
            "press-7",
            "--zone",
            "site-a/line-3",
            "--tag",
            "sensor",
        ],
    ));
}

fn finished(node: &Running, run_id: &str) -> Value {
    let mut record = Value::Null;
    wait_until(
        &format!("run {run_id} finishes"),
        Duration::from_secs(20),
        || {
            let status = node.status(run_id);
            record = status["record"].clone();
            status["state"] == "finished"
        },
    );
    record
}

#[test]
fn runs_through_a_running_node() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("n");
    init(&dir);
    apply(
        &dir,
        "hello",
        "id: hello\nsteps:\n  - id: pick\n    agent: select\n    inputs: [input]\n    config: {fields: [v]}\n  - id: check\n    agent: threshold\n    inputs: [pick]\n    config: {field: v, above: 10}\n",
    );
    apply(
        &dir,
        "elsewhere",
        "id: elsewhere\ntarget: {zones: [site-b]}\nsteps:\n  - id: a\n    agent: noop\n",
    );
    let node = start(&dir);

    // POST /run answers the run id at once; GET /status follows it to its record.
    let (code, body) = node.request("POST", "/run/hello", None, "{}");
    assert_eq!(code, 401, "{body}");
    let (code, body) = node.post_run("hello", r#"{"v": 12, "x": 1}"#);
    assert_eq!(code, 202, "{body}");
    let run_id = json(&body)["run_id"].as_str().unwrap().to_owned();
    let record = finished(&node, &run_id);
    assert_eq!(record["status"], "succeeded", "{record}");
    assert_eq!(record["workflow"], "hello");
    let output = json(record["output"].as_str().unwrap());
    assert_eq!(output["triggered"], true, "{output}");

    // Refusals name what is wrong.
    let (code, body) = node.post_run("nope", "");
    assert!(
        code == 404 && body.contains("no workflow `nope`"),
        "{code} {body}"
    );
    let (code, body) = node.post_run("elsewhere", "");
    assert!(
        code == 409 && body.contains("does not select this node"),
        "{code} {body}"
    );
    let (code, body) = node.post_run("hello", "{not json");
    assert!(code == 400 && body.contains("not JSON"), "{code} {body}");
    // Inputs are bounded before they are parsed: a run whose record could not be stored is
    // never accepted.
    let large = format!(r#"{{"v": 1, "pad": "{}"}}"#, "x".repeat(300 << 10));
    let (code, body) = node.post_run("hello", &large);
    assert!(
        code == 413 && body.contains("more than 262144 bytes"),
        "{code} {body}"
    );
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let (code, body) = node.post_run("hello", &deep);
    assert!(
        code == 400 && body.contains("nesting exceeds the limit of 64 levels"),
        "{code} {body}"
    );
    let large_file = tmp.path().join("large.json");
    std::fs::write(&large_file, &large).unwrap();
    let out = rhizome(
        &dir,
        &["run", "hello", "--input", large_file.to_str().unwrap()],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("more than 262144 bytes"),
        "{stderr}"
    );
    let (code, body) = node.request("GET", "/status/nope-1-1", Some(&node.token()), "");
    assert!(
        code == 404 && body.contains("no run `nope-1-1`"),
        "{code} {body}"
    );

    // `rhizome run` goes through the node and prints the record.
    let input = tmp.path().join("input.json");
    std::fs::write(&input, r#"{"v": 3}"#).unwrap();
    let record = json(&ok(rhizome(
        &dir,
        &["run", "hello", "--input", input.to_str().unwrap(), "--json"],
    )));
    assert_eq!(record["status"], "succeeded", "{record}");
    let through_node = node.status(record["run_id"].as_str().unwrap());
    assert_eq!(through_node["state"], "finished", "the node ran it");
    assert_eq!(through_node["record"], record);

    // A periodic workflow applied through the running node runs by itself.
    apply(
        &dir,
        "tick",
        "id: tick\ntrigger: {every: 200ms}\ntarget: {zones: [site-a]}\nsteps:\n  - id: a\n    agent: noop\n",
    );
    let mut ticks = 0;
    wait_until("three tick runs", Duration::from_secs(20), || {
        let results = json(&ok(rhizome(
            &dir,
            &["results", "--workflow", "tick", "--json"],
        )));
        ticks = results.as_array().unwrap().len();
        ticks >= 3
    });
    let (code, body) = node.request("GET", "/schedule", Some(&node.token()), "");
    assert_eq!(code, 200);
    let schedule = json(&body);
    let tick = schedule
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["workflow"] == "tick")
        .unwrap_or_else(|| panic!("{schedule}"));
    assert!(tick["started"].as_u64().unwrap() >= 3, "{tick}");
    assert_eq!(tick["targeted"], true);

    let status = node.terminate();
    assert!(status.success(), "{status}");
}

#[test]
fn sigterm_mid_run_records_the_run_interrupted() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("n");
    init(&dir);
    // `wait` fails at once and retries with a long back-off: a run that stays in flight.
    apply(
        &dir,
        "slow",
        "id: slow\nsteps:\n  - id: first\n    agent: noop\n  - id: wait\n    agent: threshold\n    inputs: [first]\n    retries: 10\n    backoff: 1s\n    config: {field: v, above: 1}\n",
    );
    let node = start(&dir);
    let (code, body) = node.post_run("slow", "{}");
    assert_eq!(code, 202, "{body}");
    let in_flight = json(&body)["run_id"].as_str().unwrap().to_owned();
    wait_until(
        "the run is in its second step",
        Duration::from_secs(20),
        || {
            let status = node.status(&in_flight);
            status["state"] == "running"
                && status["steps"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|s| s["step"] == "wait" && s["status"] == "running")
        },
    );

    // One run in flight (max_concurrent 1), then the queue fills, then refusals.
    let mut queued = Vec::new();
    for _ in 0..RUN_QUEUE_CAP {
        let (code, body) = node.post_run("slow", "{}");
        assert_eq!(code, 202, "{body}");
        queued.push(json(&body)["run_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(node.status(&queued[0])["state"], "queued");
    let (code, body) = node.post_run("slow", "{}");
    assert!(code == 429 && body.contains("busy"), "{code} {body}");

    let status = node.terminate();
    assert!(status.success(), "{status}");

    // Recorded durably: the run in flight with what finished, the queued ones as never started.
    let results = json(&ok(rhizome(
        &dir,
        &["results", "--workflow", "slow", "--json"],
    )));
    let results = results.as_array().unwrap();
    assert_eq!(results.len(), 1 + RUN_QUEUE_CAP);
    assert!(results.iter().all(|r| r["status"] == "interrupted"));
    let record = results.iter().find(|r| r["run_id"] == in_flight).unwrap();
    let steps: Vec<(&str, &str)> = record["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["step"].as_str().unwrap(), s["status"].as_str().unwrap()))
        .collect();
    assert_eq!(steps, vec![("first", "succeeded"), ("wait", "interrupted")]);
    for run in &queued {
        let record = results.iter().find(|r| r["run_id"] == *run).unwrap();
        assert!(record["steps"].as_array().unwrap().is_empty());
        assert!(
            record["error"]
                .as_str()
                .unwrap()
                .contains("before the run started"),
            "{record}"
        );
    }

    // After a restart, GET /status reads the record from the store.
    let node = start(&dir);
    let status = node.status(&in_flight);
    assert_eq!(status["state"], "finished");
    assert_eq!(status["record"]["status"], "interrupted");
    assert!(node.terminate().success());
}
