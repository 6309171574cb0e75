//! Alerts between real processes: a cloud peer and two edges of one site. A rule of an edge's
//! `rhizome.toml` fires on a condition the test controls (a health check over a flag file);
//! the alert reaches the site's aggregator and the cloud, stays one alert while the condition
//! holds (across a restart of the edge), resolves there when the condition goes; an edge cut
//! off from everyone records what fires meanwhile and delivers it when the others return; a
//! fleet rule applied at the cloud reaches an edge that was down when it was applied, and an
//! edge cannot apply one.

use std::path::Path;
use std::time::Duration;

use rhizome_e2e::process::{
    LogsOnPanic, Running, chain, init, init_in, ok, run, start, start_on_with, status, stop,
};
use rhizome_e2e::wait_until;
use serde_json::Value;

/// The alerts a node holds of `node_id` for `rule`.
fn alerts_of(node: &Running, fleet: bool, node_id: &str, rule: &str) -> Vec<Value> {
    let mut args = vec!["alerts", "--json", "--since", "1d"];
    if fleet {
        args.push("--fleet");
    }
    let view = ok(run(&node.dir, &args));
    view["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["node"] == node_id && a["rule"] == rule)
        .cloned()
        .collect()
}

fn states(alerts: &[Value]) -> Vec<(i64, String)> {
    let mut out: Vec<(i64, String)> = alerts
        .iter()
        .map(|a| {
            (
                a["fired_ms"].as_i64().unwrap(),
                a["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

/// Appends to a node's `rhizome.toml`, with rules evaluated every 200 ms.
fn add_to_config(dir: &Path, text: &str) {
    let path = dir.join("rhizome.toml");
    let config = std::fs::read_to_string(&path).unwrap();
    let every = "[alerts]\ninterval = \"5s\"";
    assert!(config.contains(every), "{config}");
    let mut config = config.replace(every, "[alerts]\ninterval = \"200ms\"");
    config.push_str(text);
    std::fs::write(&path, config).unwrap();
}

#[test]
fn alerts_travel_up_to_the_cloud_resolve_there_and_survive_partitions() {
    let tmp = tempfile::tempdir().unwrap();
    let (c_dir, e1_dir, e2_dir) = (
        tmp.path().join("cloud"),
        tmp.path().join("e1"),
        tmp.path().join("e2"),
    );
    let _logs = LogsOnPanic(vec![c_dir.clone(), e1_dir.clone(), e2_dir.clone()]);
    init(&c_dir, "cloud", None);
    let mesh = c_dir.join("mesh");
    init_in(&e1_dir, "e1", Some(&mesh), &["--zone", "site-a"]);
    init_in(&e2_dir, "e2", Some(&mesh), &["--zone", "site-a"]);
    add_to_config(&e2_dir, "");
    let flag = tmp.path().join("pump-stalled");
    add_to_config(
        &e1_dir,
        &format!(
            "\n[[alerts.rules]]\nname = \"pump\"\n\
             when = \"check:pump\"\n\n[[health.checks]]\nname = \"pump\"\n\
             command = \"test ! -e {}\"\ninterval = \"200ms\"\n",
            flag.display()
        ),
    );

    let cloud = start_with_role(&c_dir, "127.0.0.1:0", &[]);
    let cloud_addr = cloud.quic.clone();
    let e1 = start(&e1_dir, &[&cloud_addr]);
    let e2 = start(&e2_dir, &[&cloud_addr, &e1.quic]);
    let (e1_addr, e2_addr) = (e1.quic.clone(), e2.quic.clone());
    let e1_id = status(&e1)["node_id"].as_str().unwrap().to_owned();
    let e2_id = status(&e2)["node_id"].as_str().unwrap().to_owned();
    wait_until("the site elected", Duration::from_secs(15), || {
        let chains = [chain(&status(&e1)), chain(&status(&e2))];
        chains[0] == chains[1] && chains[0].len() == 2
    });
    let aggregator_id = chain(&status(&e1))[0].1.clone();
    let aggregator = if aggregator_id == e1_id { &e1 } else { &e2 };

    // Fires on e1, and reaches the aggregator and the cloud.
    assert!(alerts_of(&e1, false, &e1_id, "pump").is_empty());
    std::fs::write(&flag, "").unwrap();
    let took = wait_until(
        "the alert reaches the cloud",
        Duration::from_secs(20),
        || {
            states(&alerts_of(&cloud, true, &e1_id, "pump"))
                .iter()
                .any(|(_, s)| s == "firing")
        },
    );
    eprintln!("condition to alert at the cloud: {took:?}");
    let at_edge = alerts_of(&e1, false, &e1_id, "pump");
    assert_eq!(at_edge.len(), 1, "{at_edge:?}");
    assert_eq!(at_edge[0]["condition"], "check:pump");
    assert_eq!(at_edge[0]["value"], "failing");
    let fired_ms = at_edge[0]["fired_ms"].as_i64().unwrap();
    wait_until("the aggregator holds it", Duration::from_secs(10), || {
        !alerts_of(aggregator, true, &e1_id, "pump").is_empty()
    });
    let rules = ok(run(&e1.dir, &["alerts", "rules", "--json"]));
    assert_eq!(rules["rules"][0]["name"], "pump", "{rules}");
    assert_eq!(rules["rules"][0]["state"], "firing", "{rules}");
    assert_eq!(status(&e1)["alerts_firing"], serde_json::json!(["pump"]));

    // Holding on, and a restart of e1, leave one alert.
    stop(e1);
    let e1 = start_on_with(&e1_dir, &e1_addr, &[&cloud_addr, &e2_addr], &[]);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        states(&alerts_of(&e1, false, &e1_id, "pump")),
        vec![(fired_ms, "firing".to_owned())],
        "the condition that held across the restart fired a second alert"
    );

    // Resolved on e1, resolved at the cloud: the same alert.
    std::fs::remove_file(&flag).unwrap();
    wait_until(
        "the cloud sees it resolved",
        Duration::from_secs(20),
        || {
            states(&alerts_of(&cloud, true, &e1_id, "pump"))
                == vec![(fired_ms, "resolved".to_owned())]
        },
    );

    // e1 alone: everyone else is down while its alert fires, resolves and fires again.
    let (cloud_dir, e2_dir) = (cloud.dir.clone(), e2.dir.clone());
    drop(cloud);
    drop(e2);
    std::fs::write(&flag, "").unwrap();
    wait_until("e1 fires while alone", Duration::from_secs(10), || {
        alerts_of(&e1, false, &e1_id, "pump").len() == 2
    });
    std::fs::remove_file(&flag).unwrap();
    wait_until("and resolves", Duration::from_secs(10), || {
        states(&alerts_of(&e1, false, &e1_id, "pump"))
            .iter()
            .all(|(_, s)| s == "resolved")
    });
    std::fs::write(&flag, "").unwrap();
    wait_until("and fires again", Duration::from_secs(10), || {
        alerts_of(&e1, false, &e1_id, "pump").len() == 3
    });
    let offline = states(&alerts_of(&e1, false, &e1_id, "pump"));

    // The others return on their addresses; the cloud gets what e1 recorded while alone.
    let cloud = start_with_role(&cloud_dir, &cloud_addr, &[]);
    let e2 = start_on_with(&e2_dir, &e2_addr, &[&cloud_addr, &e1_addr], &[]);
    wait_until(
        "the cloud gets what fired while e1 was alone",
        Duration::from_secs(30),
        || states(&alerts_of(&cloud, true, &e1_id, "pump")) == offline,
    );

    // An edge cannot apply fleet rules.
    let rules_file = tmp.path().join("fleet-rules.toml");
    std::fs::write(
        &rules_file,
        "[[rules]]\nname = \"everywhere\"\nwhen = \"disk_free > 1B\"\n",
    )
    .unwrap();
    let refused = run(&e1.dir, &["alerts", "apply", rules_file.to_str().unwrap()]);
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("`control` role"), "{said}");

    // A fleet rule applied at the cloud while e2 is down reaches e2 when it returns.
    drop(e2);
    ok(run(
        &cloud.dir,
        &["alerts", "apply", rules_file.to_str().unwrap()],
    ));
    let e2 = start_on_with(&e2_dir, &e2_addr, &[&cloud_addr, &e1_addr], &[]);
    wait_until("e2 takes the fleet rule", Duration::from_secs(30), || {
        let rules = ok(run(&e2.dir, &["alerts", "rules", "--json"]));
        rules["rules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "everywhere" && r["origin"]["fleet"].is_object())
    });
    wait_until(
        "its alert from e2 reaches the cloud",
        Duration::from_secs(30),
        || !alerts_of(&cloud, true, &e2_id, "everywhere").is_empty(),
    );

    // Withdrawn at the cloud: the rule goes everywhere and its alerts resolve.
    ok(run(&cloud.dir, &["alerts", "withdraw", "everywhere"]));
    wait_until(
        "the withdrawn rule's alert resolves",
        Duration::from_secs(30),
        || {
            let at_cloud = alerts_of(&cloud, true, &e2_id, "everywhere");
            !at_cloud.is_empty() && at_cloud.iter().all(|a| a["state"] == "resolved")
        },
    );
    let listed = String::from_utf8(run(&e1.dir, &["alerts", "rules"]).stdout).unwrap();
    assert!(!listed.contains("everywhere"), "{listed}");
}

fn start_with_role(dir: &Path, listen: &str, peers: &[&str]) -> Running {
    start_on_with(dir, listen, peers, &["--role", "cloud"])
}

#[test]
fn a_firing_alert_runs_its_command_calls_its_webhook_and_shows_in_metrics() {
    use std::io::{Read, Write};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("n");
    let _logs = LogsOnPanic(vec![dir.clone()]);
    init(&dir, "n", None);
    let hook = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let said = tmp.path().join("said");

    // A rule that does not parse stops the node at start, naming the rule and the fault.
    add_to_config(
        &dir,
        "\n[[alerts.rules]]\nname = \"broken\"\nwhen = \"fan_speed > 3\"\n",
    );
    let refused = run(&dir, &["start", "--no-mdns", "--listen", "127.0.0.1:0"]);
    assert!(!refused.status.success());
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(why.contains("broken") && why.contains("fan_speed"), "{why}");
    let config = std::fs::read_to_string(dir.join("rhizome.toml")).unwrap();
    let fixed = config.replace(
        "name = \"broken\"\nwhen = \"fan_speed > 3\"\n",
        &format!(
            "name = \"always\"\nwhen = \"disk_free > 1B\"\nactions = [\"log\", \"notify\", \
             \"cleanup\"]\ncommand = \"echo $RHIZOME_ALERT_RULE $RHIZOME_ALERT_STATE >> {}\"\n\
             webhook = \"http://{}/hook\"\nseverity = \"critical\"\n",
            said.display(),
            hook.local_addr().unwrap()
        ),
    );
    std::fs::write(dir.join("rhizome.toml"), fixed).unwrap();
    let node = start(&dir, &[]);

    let (mut call, _) = hook.accept().unwrap();
    call.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&request).contains("\"resolved_ms\"") {
        let n = call.read(&mut buf).unwrap();
        assert!(n > 0, "{}", String::from_utf8_lossy(&request));
        request.extend_from_slice(&buf[..n]);
    }
    call.write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
        .unwrap();
    let request = String::from_utf8_lossy(&request);
    assert!(request.starts_with("POST /hook HTTP/1.1"), "{request}");
    let body: Value =
        serde_json::from_str(request.split_once("\r\n\r\n").unwrap().1.trim()).unwrap();
    assert_eq!(body["rule"], "always");
    assert_eq!(body["state"], "firing");
    assert_eq!(body["node_name"], "n");

    wait_until("the command ran", Duration::from_secs(10), || {
        std::fs::read_to_string(&said).is_ok_and(|t| t.trim() == "always firing")
    });
    let rules = ok(run(&dir, &["alerts", "rules", "--json"]));
    assert_eq!(
        rules["rules"][0]["actions"],
        serde_json::json!(["log", "notify", "cleanup", "command", "webhook"])
    );
    let log = std::fs::read_to_string(rhizome_e2e::process::log_file(&dir)).unwrap();
    assert!(log.contains("alert firing"), "{log}");
    assert!(log.contains("alert cleanup: retention ran"), "{log}");

    let token = rhizome_e2e::process::api_token(&dir, "monitor", "m");
    let http = std::fs::read_to_string(dir.join("node.http")).unwrap();
    let mut scrape = std::net::TcpStream::connect(http.trim()).unwrap();
    write!(
        scrape,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n\r\n"
    )
    .unwrap();
    let mut metrics = String::new();
    scrape.read_to_string(&mut metrics).unwrap();
    assert!(
        metrics.contains("rhizome_alerts_firing{rule=\"always\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("rhizome_alerts_fired_total{rule=\"always\"} 1"),
        "{metrics}"
    );
    stop(node);
}
