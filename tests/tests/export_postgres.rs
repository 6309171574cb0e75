//! The export into PostgreSQL between real processes and a real server (a private cluster of
//! Debian's `postgresql`, see `rhizome_e2e::postgres`):
//!
//! - a cloud peer exports what an edge runs (raw results with `sync.results_to = "cloud"`, and
//!   the rollups): `runs` holds exactly the cloud's run ids, `rollups` the figures of the
//!   cloud's rollup documents, `nodes` both nodes;
//! - a node killed with SIGKILL at random moments of a large export, again and again, ends with
//!   every run exactly once; a replay from scratch (checkpoints deleted) during which the
//!   server crashes and restarts changes nothing;
//! - a database at an older schema version is migrated; a newer one, and a user without the
//!   permissions the export needs, are refused with a clear sentence in `export status`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::Rng;
use rhizome_e2e::postgres::Postgres;
use rhizome_e2e::process::{
    LogsOnPanic, Running, doc_names, init, init_in, json_if_ok, ok, run, start, start_with, status,
    stop,
};
use rhizome_e2e::wait_until;
use rhizome_e2e::workflows::probe;
use serde_json::Value;

fn set(dir: &Path, key: &str, value: &str) {
    ok(run(dir, &["config", "set", key, value]));
}

/// `rhizome export status --json` of a running node.
fn export_status(node: &Running) -> Value {
    ok(run(&node.dir, &["export", "status", "--json"]))
}

/// Documents at their checkpoint in the database (0 before the schema exists).
fn checkpoints(pg: &Postgres, db: &str) -> usize {
    pg.try_sql(db, "SELECT count(*) FROM rhizome.export_checkpoint")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Run ids (node/run_id) in the `runs` table, with how often each appears.
fn db_runs(pg: &Postgres, db: &str) -> BTreeMap<String, u64> {
    pg.sql(
        db,
        "SELECT node || '/' || run_id, count(*) FROM rhizome.runs GROUP BY 1",
    )
    .lines()
    .filter(|l| !l.is_empty())
    .map(|l| {
        let (id, n) = l.rsplit_once('|').unwrap();
        (id.to_owned(), n.parse().unwrap())
    })
    .collect()
}

/// Run ids (node/run_id) a node holds, as `rhizome results --json` lists them.
fn held_runs(dir: &Path) -> BTreeSet<String> {
    ok(run(dir, &["results", "--json"]))
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            format!(
                "{}/{}",
                r["node"].as_str().unwrap(),
                r["run_id"].as_str().unwrap()
            )
        })
        .collect()
}

/// Every run exactly once: the table's ids are the node's, none twice.
fn assert_exactly_once(pg: &Postgres, db: &str, held: &BTreeSet<String>) {
    let rows = db_runs(pg, db);
    let twice: Vec<_> = rows.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        twice.is_empty(),
        "runs in the table more than once: {twice:?}"
    );
    let in_db: BTreeSet<String> = rows.into_keys().collect();
    let missing: Vec<_> = held.difference(&in_db).take(5).collect();
    let extra: Vec<_> = in_db.difference(held).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{} runs held, {} in the table; missing {missing:?}, extra {extra:?}",
        held.len(),
        in_db.len()
    );
}

/// Waits until the node says its export is up to date and the table holds the node's run ids,
/// then checks that it holds each once. Polls gently: listing every run loads the store.
fn wait_exactly_once(pg: &Postgres, db: &str, node: &Running, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let status = export_status(node);
        if status["state"] == "up to date" && status["documents_pending"] == 0 {
            let held = held_runs(&node.dir);
            if db_runs(pg, db).into_keys().collect::<BTreeSet<_>>() == held
                || start.elapsed() > within
            {
                assert_exactly_once(pg, db, &held);
                return start.elapsed();
            }
        }
        assert!(
            start.elapsed() < within,
            "the export did not finish within {within:?}: {status}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The rollup figures of the cloud's rollup documents: (zone, window, workflow, node) →
/// (runs, failures, total_ms, max_ms, last_run_id).
fn doc_rollups(dir: &Path) -> BTreeMap<String, String> {
    let names = doc_names(&ok(run(dir, &["doc", "list", "--json"])));
    let mut out = BTreeMap::new();
    for name in names.iter().filter(|n| n.starts_with("rollup/")) {
        let doc = ok(run(dir, &["doc", "show", name, "--json"]));
        let content = &doc["content"];
        for s in content["summaries"].as_object().unwrap().values() {
            out.insert(
                format!(
                    "{}|{}|{}|{}",
                    content["zone"].as_str().unwrap(),
                    content["window"].as_str().unwrap(),
                    s["workflow"].as_str().unwrap(),
                    s["source"].as_str().unwrap()
                ),
                format!(
                    "{}|{}|{}|{}|{}",
                    s["runs"],
                    s["failures"],
                    s["total_ms"],
                    s["max_ms"],
                    s["last_run_id"].as_str().unwrap()
                ),
            );
        }
    }
    out
}

/// The same figures from the `rollups` table.
fn db_rollups(pg: &Postgres, db: &str) -> BTreeMap<String, String> {
    pg.sql(
        db,
        "SELECT zone, to_char(window_start AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI\"Z\"') \
         || '+' || window_minutes || 'm', workflow, node, runs, failures, total_ms, max_ms, \
         last_run_id FROM rhizome.rollups",
    )
    .lines()
    .filter(|l| !l.is_empty())
    .map(|l| {
        let parts: Vec<&str> = l.split('|').collect();
        (parts[..4].join("|"), parts[4..].join("|"))
    })
    .collect()
}

#[test]
fn a_cloud_peer_exports_the_runs_rollups_and_nodes_it_holds() {
    let pg = Postgres::start();
    pg.create_database("fleet");
    let tmp = tempfile::tempdir().unwrap();
    let (c_dir, e_dir) = (tmp.path().join("cloud"), tmp.path().join("edge"));
    init(&c_dir, "cloud", None);
    init_in(
        &e_dir,
        "edge",
        Some(&c_dir.join("mesh")),
        &["--zone", "site-a", "--tag", "sensor"],
    );
    for dir in [&c_dir, &e_dir] {
        set(dir, "sync.results_to", "cloud");
    }
    set(&c_dir, "export.postgres", &pg.url("fleet"));
    set(&c_dir, "export.interval", "200ms");
    let _logs = LogsOnPanic(vec![c_dir.clone(), e_dir.clone()]);
    let cloud = start_with(&c_dir, &[], &["--role", "cloud"]);
    let edge = start(&e_dir, &[&cloud.quic]);
    let ids = [&cloud, &edge].map(|n| status(n)["node_id"].as_str().unwrap().to_owned());

    let workflow = tmp.path().join("probe.yaml");
    std::fs::write(&workflow, probe("{every: 200ms}")).unwrap();
    ok(run(
        &c_dir,
        &["workflow", "apply", workflow.to_str().unwrap()],
    ));
    wait_until(
        "the edge's runs reach the cloud",
        Duration::from_secs(30),
        || held_runs(&c_dir).len() >= 15,
    );
    std::fs::write(&workflow, probe("manual")).unwrap();
    ok(run(
        &c_dir,
        &["workflow", "apply", workflow.to_str().unwrap()],
    ));
    let took = wait_until(
        "the cloud holds every run the edge recorded",
        Duration::from_secs(30),
        || {
            let at_edge = held_runs(&e_dir);
            !at_edge.is_empty() && held_runs(&c_dir) == at_edge
        },
    );
    eprintln!("runs stopped; the cloud held all of them after {took:?}");

    let took = wait_until(
        "the table holds the cloud's runs",
        Duration::from_secs(30),
        || db_runs(&pg, "fleet").into_keys().collect::<BTreeSet<_>>() == held_runs(&c_dir),
    );
    eprintln!("runs exported {took:?} later");
    let held = held_runs(&c_dir);
    assert_exactly_once(&pg, "fleet", &held);
    // The exported rows are the records, not a summary of them.
    let row = pg.sql(
        "fleet",
        "SELECT workflow, status, duration_ms >= 0, jsonb_typeof(steps) FROM rhizome.runs LIMIT 1",
    );
    assert_eq!(row, "probe|succeeded|t|array");

    let took = wait_until(
        "the rollups table holds the cloud's rollup figures",
        Duration::from_secs(30),
        || {
            let docs = doc_rollups(&c_dir);
            !docs.is_empty() && docs == db_rollups(&pg, "fleet")
        },
    );
    eprintln!("rollups exported {took:?} later");

    let nodes = pg.sql(
        "fleet",
        "SELECT id, name, role FROM rhizome.nodes ORDER BY name",
    );
    assert_eq!(
        nodes,
        format!("{}|cloud|cloud\n{}|edge|edge", ids[0], ids[1]),
        "both nodes are listed, each with its role"
    );

    let status = export_status(&cloud);
    assert_eq!(status["configured"], true);
    assert_eq!(status["connected"], true);
    assert_eq!(status["schema_version"], 2);
    assert!(status["rows_exported"].as_u64().unwrap() >= held.len() as u64);
    let text = String::from_utf8(run(&c_dir, &["export", "status"]).stdout).unwrap();
    assert!(text.contains("connected   yes"), "{text}");
    // `status` carries the export's state and lag too.
    let overall: Value =
        serde_json::from_slice(&run(&c_dir, &["status", "--json"]).stdout).unwrap();
    assert_eq!(overall["export"]["configured"], true, "{overall}");
    assert!(overall["export"]["lag_seconds"].is_number(), "{overall}");
    let text = String::from_utf8(run(&c_dir, &["status"]).stdout).unwrap();
    assert!(text.contains("\nexport   "), "{text}");
    // The edge exports nothing and says so.
    let text = String::from_utf8(run(&e_dir, &["export", "status"]).stdout).unwrap();
    assert!(text.contains("the export is off"), "{text}");
    drop(edge);
    stop(cloud);
    let out = run(&c_dir, &["export", "status"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no node is running"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn kills_and_a_database_crash_during_a_large_export_lose_and_duplicate_nothing() {
    let pg = Postgres::start();
    pg.create_database("fleet");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    // `bench/export-kill-soak.sh` asks for more kills (and records enough runs for them).
    let kills: usize = std::env::var("EXPORT_SOAK_KILLS")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(24);
    // A run every 30 s: 80,000 runs reach back 28 days, inside the default retention (30 d),
    // which would otherwise retire the oldest windows while the test counts them.
    let runs = 40_000.max(kills * 600).min(80_000);
    let started = Instant::now();
    ok(run(&dir, &["demo", "--runs", &runs.to_string()]));
    eprintln!("{runs} runs recorded in {:?}", started.elapsed());
    let _logs = LogsOnPanic(vec![dir.clone()]);
    // A first start writes the rollups of every window (the node aggregates its zone), so that
    // the kills below land in the export rather than in that.
    let node = start(&dir, &[]);
    let rollups_written = Duration::from_secs(60.max(runs as u64 / 600));
    wait_until("the rollups are written", rollups_written, || {
        // A node writing thousands of rollups may not answer within the CLI's timeout.
        let list = json_if_ok(run(&dir, &["doc", "list", "--json"]));
        list.is_array()
            && doc_names(&list)
                .iter()
                .filter(|n| n.starts_with("rollup/"))
                .count()
                >= runs / 120 // a window is an hour, a run every 30 s
    });
    stop(node);
    set(&dir, "export.postgres", &pg.url("fleet"));
    // Small transactions: many commits for a kill to land between or inside.
    set(&dir, "export.batch", "200");
    set(&dir, "export.interval", "100ms");

    // Documents at their checkpoint after each kill.
    let exported = || checkpoints(&pg, "fleet");
    let mut rng = rand::thread_rng();
    let mut after_kills = Vec::new();
    for round in 0..kills {
        let before = exported();
        let mut node = start(&dir, &[]);
        // Killed at a random moment once the export is under way again (a start takes a
        // second or so of the node's own work on the store first). A soak of many kills may
        // outlast the export: then it ends here.
        let mut finished = false;
        wait_until("the export resumes", Duration::from_secs(30), || {
            finished = exported() == before
                && json_if_ok(run(&dir, &["export", "status", "--json"]))["state"] == "up to date";
            finished || exported() > before
        });
        if finished {
            eprintln!("the export finished before kill {round}");
            stop(node);
            break;
        }
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..100)));
        node.kill();
        after_kills.push(exported());
        eprintln!(
            "kill {round}: {} documents exported, {} runs in the table",
            after_kills[round],
            db_runs(&pg, "fleet").len()
        );
    }

    let node = start(&dir, &[]);
    let took = wait_exactly_once(&pg, "fleet", &node, Duration::from_secs(60));
    eprintln!("after the last kill, the export finished in {took:?}");
    wait_until(
        "every document is exported",
        Duration::from_secs(20),
        || export_status(&node)["documents_pending"] == 0,
    );
    let total = exported();
    let mid_export = after_kills.iter().filter(|n| **n < total).count();
    eprintln!("{mid_export} kills landed during the export");
    assert!(
        mid_export >= kills.min(24) * 5 / 6,
        "kills must land during the export: {mid_export} of them left documents pending \
         ({after_kills:?} of {total}): record more runs"
    );
    stop(node);

    // A replay from scratch of two results documents in five: their checkpoints deleted and
    // half of their rows too; the node exports them again (filling the gap, duplicating
    // nothing), and the server crashes in the middle of it.
    let replayed = pg.sql(
        "fleet",
        "WITH replay AS (DELETE FROM rhizome.export_checkpoint \
             WHERE document LIKE 'results/%' AND abs(hashtext(document)) % 5 < 2 \
             RETURNING (replace(left(split_part(document, '/', 3), 16), 'T', ' ') \
                 || ':00+00')::timestamptz AS start), \
         gone AS (DELETE FROM rhizome.runs r USING replay \
             WHERE r.finished_at >= replay.start \
             AND r.finished_at < replay.start + interval '60 minutes' \
             AND abs(hashtext(r.run_id)) % 2 = 0 RETURNING 1) \
         SELECT (SELECT count(*) FROM replay) || ' documents, ' || (SELECT count(*) FROM gone)",
    );
    eprintln!("replaying {replayed} runs deleted");
    let node = start(&dir, &[]);
    wait_until("the replay started", Duration::from_secs(20), || {
        export_status(&node)["rows_exported"].as_u64().unwrap() > 0
    });
    let mut pg = pg;
    pg.crash_and_restart(Duration::from_millis(1500));
    wait_until(
        "the export says it lost the database",
        Duration::from_secs(20),
        || export_status(&node)["last_error_reason"] == "connect",
    );
    let took = wait_exactly_once(&pg, "fleet", &node, Duration::from_secs(60));
    eprintln!("the replay finished {took:?} after the database came back");
    let held = held_runs(&dir);
    let checkpoints: usize = pg
        .sql(
            "fleet",
            "SELECT count(*) FROM rhizome.export_checkpoint WHERE document LIKE 'results/%'",
        )
        .parse()
        .unwrap();
    let windows = doc_names(&ok(run(&dir, &["doc", "list", "--json"])))
        .iter()
        .filter(|n| n.starts_with("results/"))
        .count();
    assert_eq!(checkpoints, windows, "a checkpoint per results document");
    let deleted: u64 = replayed.rsplit(' ').next().unwrap().parse().unwrap();
    let status = export_status(&node);
    assert!(
        status["rows_exported"].as_u64().unwrap() >= deleted,
        "{status} after {replayed} runs deleted"
    );
    assert!(held.len() >= runs);
    stop(node);
}

/// Whether a running node aggregates the root zone (the active cloud peer).
fn aggregates_root(node: &Running) -> bool {
    status(node)["hierarchy"]["aggregates"]
        .as_array()
        .is_some_and(|zones| zones.iter().any(|z| z == ""))
}

/// Runs in a node's fleet view.
fn fleet_runs(node: &Running) -> u64 {
    ok(run(&node.dir, &["status", "--fleet", "--json"]))["runs"]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn two_cloud_peers_hold_the_fleet_and_export_it_once_when_the_active_one_dies() {
    let pg = Postgres::start();
    pg.create_database("fleet");
    let tmp = tempfile::tempdir().unwrap();
    let names = ["cloud1", "cloud2", "e1", "e2"];
    let dirs: Vec<PathBuf> = names.iter().map(|n| tmp.path().join(n)).collect();
    let _logs = LogsOnPanic(dirs.clone());
    let mesh = dirs[0].join("mesh");
    init(&dirs[0], names[0], None);
    init_in(&dirs[1], names[1], Some(&mesh), &["--control"]);
    for (dir, name) in dirs[2..].iter().zip(&names[2..]) {
        init_in(
            dir,
            name,
            Some(&mesh),
            &["--zone", "site-a", "--tag", "sensor"],
        );
    }
    for dir in &dirs {
        set(dir, "sync.results_to", "cloud");
    }
    // Both cloud peers export into the same database.
    for dir in &dirs[..2] {
        set(dir, "export.postgres", &pg.url("fleet"));
        set(dir, "export.interval", "200ms");
    }
    let cloud1 = start_with(&dirs[0], &[], &["--role", "cloud"]);
    let cloud2 = start_with(&dirs[1], &[&cloud1.quic], &["--role", "cloud"]);
    let addresses = [cloud1.quic.clone(), cloud2.quic.clone()];
    let edges: Vec<Running> = dirs[2..]
        .iter()
        .map(|dir| start(dir, &[&addresses[0], &addresses[1]]))
        .collect();
    let mut clouds = [Some(cloud1), Some(cloud2)];

    let workflow = tmp.path().join("probe.yaml");
    std::fs::write(&workflow, probe("{every: 200ms}")).unwrap();
    ok(run(
        &dirs[0],
        &["workflow", "apply", workflow.to_str().unwrap()],
    ));
    // Both cloud peers hold the fleet's figures, not only the one the root zone elected.
    for cloud in clouds.iter().flatten() {
        wait_until(
            "runs in both clouds' fleet views",
            Duration::from_secs(30),
            || fleet_runs(cloud) >= 20,
        );
    }
    let active = wait_until_some("one cloud peer aggregates the root", || {
        clouds
            .iter()
            .position(|c| c.as_ref().is_some_and(aggregates_root))
    });
    let survivor = 1 - active;
    let mut dead = clouds[active].take().unwrap();
    let dead_quic = dead.quic.clone();
    dead.kill();
    eprintln!("killed {} (the active cloud peer)", names[active]);
    let survivor_node = clouds[survivor].as_ref().unwrap();
    let before = fleet_runs(survivor_node);
    let took = wait_until(
        "the survivor takes over the root",
        Duration::from_secs(30),
        || aggregates_root(survivor_node),
    );
    eprintln!(
        "{} aggregates the root {took:?} after the kill",
        names[survivor]
    );
    wait_until(
        "the fleet view goes on at the survivor",
        Duration::from_secs(30),
        || fleet_runs(survivor_node) > before + 10,
    );

    // The edges stop; the survivor holds every run they recorded, and the table holds each
    // exactly once, although two exporters wrote it.
    std::fs::write(&workflow, probe("manual")).unwrap();
    ok(run(
        &dirs[survivor],
        &["workflow", "apply", workflow.to_str().unwrap()],
    ));
    let at_edges = || -> BTreeSet<String> { dirs[2..].iter().flat_map(|d| held_runs(d)).collect() };
    wait_until(
        "the survivor holds every run",
        Duration::from_secs(60),
        || {
            let edges_hold = at_edges();
            !edges_hold.is_empty() && held_runs(&dirs[survivor]) == edges_hold
        },
    );
    let took = wait_exactly_once(&pg, "fleet", survivor_node, Duration::from_secs(60));
    eprintln!("the survivor's export finished {took:?} later");
    assert_exactly_once(&pg, "fleet", &at_edges());

    // The dead one returns, catches up, and duplicates nothing.
    let back = rhizome_e2e::process::start_on_with(
        &dirs[active],
        &dead_quic,
        &[&addresses[survivor]],
        &["--role", "cloud"],
    );
    let took = wait_until(
        "the returning cloud catches up",
        Duration::from_secs(60),
        || held_runs(&dirs[active]) == at_edges(),
    );
    eprintln!(
        "{} held every run again {took:?} after its return",
        names[active]
    );
    wait_exactly_once(&pg, "fleet", &back, Duration::from_secs(60));
    assert_exactly_once(&pg, "fleet", &at_edges());
    drop(edges);
}

/// Polls until `find` gives a value (at most 30 s).
fn wait_until_some<T>(what: &str, mut find: impl FnMut() -> Option<T>) -> T {
    let mut found = None;
    wait_until(what, Duration::from_secs(30), || {
        found = find();
        found.is_some()
    });
    found.unwrap()
}

#[test]
fn network_cuts_to_the_database_lose_and_duplicate_nothing() {
    let pg = Postgres::start();
    pg.create_database("fleet");
    let cable = rhizome_e2e::cable::Cable::to(([127, 0, 0, 1], pg.port).into());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    let runs = 12_000;
    ok(run(&dir, &["demo", "--runs", &runs.to_string()]));
    let _logs = LogsOnPanic(vec![dir.clone()]);
    set(
        &dir,
        "export.postgres",
        &format!("postgres://postgres@{}/fleet", cable.addr),
    );
    set(&dir, "export.batch", "200");
    set(&dir, "export.interval", "100ms");
    // A cut leaves the connection silent: this is how soon the node gives up on it.
    set(&dir, "export.timeout", "2s");
    let node = start(&dir, &[]);
    let exported = || checkpoints(&pg, "fleet");
    let mut rng = rand::thread_rng();
    for cut in 0..3 {
        let before = exported();
        wait_until("the export moves", Duration::from_secs(60), || {
            exported() > before
        });
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..200)));
        cable.cut();
        let cut_at = Instant::now();
        wait_until(
            "the export notices the silence",
            Duration::from_secs(30),
            || export_status(&node)["state"] == "failing",
        );
        let status = export_status(&node);
        eprintln!(
            "cut {cut}: noticed after {:?} ({}), {} documents exported",
            cut_at.elapsed(),
            status["last_error_reason"],
            exported()
        );
        // The node goes on serving while its database is away.
        let health = ok(run(&dir, &["status", "--json"]));
        assert_eq!(health["running"], true);
        std::thread::sleep(Duration::from_millis(500));
        cable.plug();
    }
    let took = wait_exactly_once(&pg, "fleet", &node, Duration::from_secs(120));
    eprintln!("after the last cut the export finished in {took:?}");
    wait_until("nothing pending", Duration::from_secs(30), || {
        export_status(&node)["documents_pending"] == 0
    });
    assert_exactly_once(&pg, "fleet", &held_runs(&dir));
    stop(node);
}

#[test]
fn older_schemas_are_migrated_and_newer_ones_refused() {
    let pg = Postgres::start();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    init(&dir, "n1", None);
    let _logs = LogsOnPanic(vec![dir.clone()]);

    // Version 1, as an earlier build left it, with a row in it.
    pg.create_database("old");
    let v1 = tmp.path().join("v1.sql");
    std::fs::write(
        &v1,
        format!(
            "CREATE SCHEMA rhizome;
             CREATE TABLE rhizome.schema_version (version integer PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now(), applied_by text NOT NULL);
             {}
             INSERT INTO rhizome.schema_version (version, applied_by) VALUES (1, 'test');
             INSERT INTO rhizome.runs (node, run_id, workflow, workflow_version, status,
                 started_at, finished_at, duration_ms, output, steps)
                 VALUES ('old-node', 'r1', 'w', 1, 'succeeded', now(), now(), 0, '1', '[]');",
            include_str!("../../node/src/export/migrations/0001_tables.sql")
                .replace("{schema}", "\"rhizome\"")
        ),
    )
    .unwrap();
    pg.sql_file("old", &v1);
    set(&dir, "export.postgres", &pg.url("old"));
    set(&dir, "export.interval", "100ms");
    let node = start(&dir, &[]);
    let id = status(&node)["node_id"].as_str().unwrap().to_owned();
    wait_until("the node is exported", Duration::from_secs(20), || {
        pg.sql("old", "SELECT count(*) FROM rhizome.nodes") == "1"
    });
    assert_eq!(
        pg.sql(
            "old",
            "SELECT string_agg(version::text, ',' ORDER BY version) FROM rhizome.schema_version"
        ),
        "1,2"
    );
    assert_eq!(
        pg.sql("old", "SELECT to_regclass('rhizome.alerts') IS NOT NULL"),
        "t"
    );
    assert_eq!(
        pg.sql("old", "SELECT run_id FROM rhizome.runs"),
        "r1",
        "rows stay"
    );
    assert_eq!(pg.sql("old", "SELECT id FROM rhizome.nodes"), id);
    let status = export_status(&node);
    assert_eq!(status["schema_version_found"], 1);
    stop(node);

    // Version 99, from a newer build: refused, nothing written.
    pg.create_database("newer");
    pg.sql(
        "newer",
        "CREATE SCHEMA rhizome; CREATE TABLE rhizome.schema_version (version integer PRIMARY KEY, \
         applied_at timestamptz NOT NULL DEFAULT now(), applied_by text NOT NULL); \
         INSERT INTO rhizome.schema_version (version, applied_by) VALUES (99, 'the future')",
    );
    set(&dir, "export.postgres", &pg.url("newer"));
    let node = start(&dir, &[]);
    wait_until(
        "the newer schema is refused",
        Duration::from_secs(20),
        || export_status(&node)["last_error_reason"] == "schema",
    );
    let text = String::from_utf8(run(&dir, &["export", "status"]).stdout).unwrap();
    assert!(
        text.contains("is at version 99, newer than this build of rhizome knows (version 2)"),
        "{text}"
    );
    assert!(text.contains("connected   no"), "{text}");
    assert_eq!(
        pg.sql(
            "newer",
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'rhizome'"
        ),
        "1",
        "nothing but schema_version"
    );
    stop(node);

    // A user who may not create the schema: refused, saying which permission is missing.
    pg.create_database("locked");
    pg.sql("postgres", "CREATE ROLE weak LOGIN");
    set(
        &dir,
        "export.postgres",
        &format!("postgres://weak@127.0.0.1:{}/locked", pg.port),
    );
    let node = start(&dir, &[]);
    wait_until(
        "the missing permission is named",
        Duration::from_secs(20),
        || export_status(&node)["last_error_reason"] == "permission",
    );
    let text = String::from_utf8(run(&dir, &["export", "status"]).stdout).unwrap();
    assert!(
        text.contains("the database user `weak` lacks a permission the export needs"),
        "{text}"
    );
    stop(node);
}
