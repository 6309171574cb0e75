//! `GET /metrics` of real nodes: a three-node mesh running a periodic workflow is scraped twice
//! with a monitor token, each answer checked by Prometheus' own parser (`promtool check
//! metrics`), and the counters move as the runs go on; a node whose data dir is a small tmpfs
//! reports that filesystem's size; a real Prometheus server scrapes a node on loopback.
//! promtool and prometheus come from Debian's `prometheus` package (scripts/setup.sh); without
//! them those parts are skipped with a message.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use rhizome_e2e::process::{LogsOnPanic, Running, connected, init, init_in, ok, run, start};
use rhizome_e2e::wait_until;

fn token(dir: &Path) -> String {
    rhizome_e2e::process::api_token(dir, "monitor", "scraper")
}

fn http_addr(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("node.http"))
        .unwrap()
        .trim()
        .to_owned()
}

/// `GET /metrics` with a token: the status code and the body.
fn scrape(dir: &Path, token: Option<&str>) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(http_addr(dir)).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, body.to_owned())
}

/// Sample values by series (`name{labels}` as written).
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn sum(samples: &BTreeMap<String, f64>, prefix: &str) -> f64 {
    samples
        .iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(_, v)| v)
        .sum()
}

/// Whether promtool accepts the text; `None` when promtool is missing.
fn promtool_accepts(text: &str) -> Option<Result<(), String>> {
    let mut child = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(_) => {
            eprintln!("skipped: promtool is missing (Debian package prometheus; scripts/setup.sh)");
            return None;
        }
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(if out.status.success() && said.trim().is_empty() {
        Ok(())
    } else {
        Err(said)
    })
}

const PROBE: &str = "id: probe\ntrigger: {every: 200ms}\ntarget: {tags: [sensor]}\nsteps:\n  - id: read\n    agent: sensor\n    config: {seed: 3}\n";

#[test]
fn three_nodes_expose_metrics_that_parse_and_move() {
    let tmp = tempfile::tempdir().unwrap();
    let dirs: Vec<_> = ["a", "b", "c"].iter().map(|n| tmp.path().join(n)).collect();
    let _logs = LogsOnPanic(dirs.clone());
    init(&dirs[0], "a", None);
    let mesh = dirs[0].join("mesh");
    for (dir, name) in dirs[1..].iter().zip(["b", "c"]) {
        init_in(dir, name, Some(&mesh), &["--tag", "sensor"]);
    }
    let a = start(&dirs[0], &[]);
    let b = start(&dirs[1], &[&a.quic]);
    let c = start(&dirs[2], &[&a.quic, &b.quic]);
    let nodes: Vec<&Running> = vec![&a, &b, &c];
    for node in &nodes {
        wait_until("full mesh", Duration::from_secs(15), || {
            connected(node) == 2
        });
    }
    let file = tmp.path().join("probe.yaml");
    std::fs::write(&file, PROBE).unwrap();
    ok(run(
        &dirs[0],
        &["workflow", "apply", file.to_str().unwrap()],
    ));

    // No token, no metrics.
    assert_eq!(scrape(&dirs[1], None).0, 401);
    let tokens: Vec<String> = dirs.iter().map(|d| token(d)).collect();
    wait_until("b has run the workflow", Duration::from_secs(20), || {
        sum(
            &samples(&scrape(&dirs[1], Some(&tokens[1])).1),
            "rhizome_workflow_runs_total{workflow=\"probe\",status=\"succeeded\"}",
        ) >= 2.0
    });
    let mut first = Vec::new();
    for (dir, token) in dirs.iter().zip(&tokens) {
        let (code, text) = scrape(dir, Some(token));
        assert_eq!(code, 200, "{text}");
        if let Some(verdict) = promtool_accepts(&text) {
            verdict.unwrap_or_else(|said| panic!("promtool refused {dir:?}: {said}\n{text}"));
        }
        first.push(samples(&text));
    }
    std::thread::sleep(Duration::from_secs(2));
    for ((dir, token), before) in dirs.iter().zip(&tokens).zip(&first) {
        let after = samples(&scrape(dir, Some(token)).1);
        assert_eq!(
            after["rhizome_mesh_peers{state=\"connected\"}"], 2.0,
            "{dir:?}"
        );
        assert_eq!(after["rhizome_build_info{version=\"0.1.0\"}"], 1.0);
        assert!(after["process_resident_memory_bytes"] > 1e6, "{dir:?}");
        assert!(after["rhizome_host_filesystem_size_bytes"] > 0.0);
        assert!(after["rhizome_store_documents"] >= 2.0);
        let runs = |s: &BTreeMap<String, f64>| sum(s, "rhizome_workflow_runs_total{");
        let is_edge = dir.ends_with("b") || dir.ends_with("c");
        if is_edge {
            assert!(runs(&after) > runs(before), "runs did not move on {dir:?}");
            assert!(
                sum(&after, "rhizome_workflow_run_duration_seconds_count") >= runs(&after),
                "{dir:?}"
            );
        } else {
            assert_eq!(runs(&after), 0.0, "the cloud is not targeted");
        }
        assert!(
            sum(&after, "rhizome_store_commit_seconds_count") > 0.0,
            "{dir:?}"
        );
    }
}

#[test]
fn a_tmpfs_data_dir_reports_its_own_size() {
    let tmp = tempfile::tempdir().unwrap();
    let mount = tmp.path().join("small");
    std::fs::create_dir(&mount).unwrap();
    let Some(_tmpfs) = rhizome_e2e::disk::Tmpfs::mount(&mount, "32m") else {
        return;
    };
    let dir = mount.join("n");
    init(&dir, "small", None);
    let _node = start(&dir, &[]);
    let token = token(&dir);
    wait_until("a sample", Duration::from_secs(10), || {
        samples(&scrape(&dir, Some(&token)).1).contains_key("rhizome_host_filesystem_size_bytes")
    });
    let s = samples(&scrape(&dir, Some(&token)).1);
    let size = s["rhizome_host_filesystem_size_bytes"];
    assert!(
        (31.0 * 1048576.0..=33.0 * 1048576.0).contains(&size),
        "the data dir's tmpfs is 32 MiB, reported {size}"
    );
    let status = ok(run(&dir, &["status", "--json"]));
    let total = status["resources"]["disk_total_bytes"].as_f64().unwrap();
    assert!(
        (31.0 * 1048576.0..=33.0 * 1048576.0).contains(&total),
        "{status}"
    );
}

#[test]
fn a_prometheus_server_scrapes_a_node() {
    if Command::new("prometheus")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: prometheus is missing (Debian package prometheus; scripts/setup.sh)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("n");
    let _logs = LogsOnPanic(vec![dir.clone()]);
    init(&dir, "scraped", None);
    let _node = start(&dir, &[]);
    let token = token(&dir);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = tmp.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: rhizome\n    \
             authorization:\n      credentials: {token}\n    static_configs:\n      - targets: \
             ['{}']\n",
            http_addr(&dir)
        ),
    )
    .unwrap();
    let log = std::fs::File::create(tmp.path().join("prometheus.log")).unwrap();
    let mut prometheus = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            tmp.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let query = |expr: &str| -> String {
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
            return String::new();
        };
        let path = format!("/api/v1/query?query={}", rhizome_e2e::encode_query(expr));
        let _ = write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        );
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer
    };
    let scraped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_until(
            "prometheus scrapes the node",
            Duration::from_secs(30),
            || {
                let answer = query("up{job=\"rhizome\"}");
                answer.contains("\"status\":\"success\"") && answer.contains("\"1\"]")
            },
        );
        let answer = query("rhizome_store_documents");
        assert!(answer.contains("rhizome_store_documents"), "{answer}");
    }));
    let _ = prometheus.kill();
    let _ = prometheus.wait();
    if let Err(panic) = scraped {
        eprintln!(
            "{}",
            std::fs::read_to_string(tmp.path().join("prometheus.log")).unwrap_or_default()
        );
        std::panic::resume_unwind(panic);
    }
}
