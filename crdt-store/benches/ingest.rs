//! Result ingest: durable throughput through [`StoreHandle`] against an SQLite baseline with the
//! same durability, bytes on disk per result, compaction, and the open time of a large store.
//!
//! A plain `main` rather than a harness, so that one run yields every figure. Each figure is
//! printed in a table and written as one JSON line to `RHIZOME_BENCH_OUT`; `bench/ingest.sh`
//! runs it. Environment variables (defaults in brackets):
//!
//! - `RHIZOME_BENCH_RECORDS` records per throughput workload [20000]
//! - `RHIZOME_BENCH_PRODUCERS` producer threads of the one-record workloads [1,16,64]
//! - `RHIZOME_BENCH_BATCH` records per call of the batched workload [100]
//! - `RHIZOME_BENCH_REPEATS` runs per throughput workload, median reported [3]
//! - `RHIZOME_BENCH_SIZE_RECORDS` records of the size and compaction measurement [100000]
//! - `RHIZOME_BENCH_OPEN_RECORDS` results in the store that is reopened [1000000]
//! - `RHIZOME_BENCH_LATE_RECORDS` records appended one by one to that store afterwards [2000]
//! - `RHIZOME_BENCH_BUILD_BATCH` records per `append_results` when building stores [10000]
//! - `RHIZOME_BENCH_SPAN_HOURS` hours the records' finish times cover [6]
//! - `RHIZOME_BENCH_SECTIONS` any of `throughput,size,open` [all]
//! - `RHIZOME_BENCH_DIR` where the stores are created [`<target>/tmp`]
//! - `RHIZOME_BENCH_OUT` the JSON-lines file [`<target>/bench/ingest.jsonl`]

mod common;
mod figures;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Barrier;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{env_list, env_usize};
use crdt_store::{
    DocName, MAX_GROUP_RECORDS, RunRecord, RunStatus, STORE_QUEUE_CAP, StepRecord, Store,
    StoreConfig, StoreHandle, Window,
};
use figures::{format_value, fs_type, json_output, median, rate};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rusqlite::Connection;

const MESH: &str = "bench-mesh";
const NODE: &str = "edge-0001";
/// 2026-01-01T00:00Z. Fixed so that every run produces the same windows and records.
const BASE_MS: i64 = 1_767_225_600_000;
const WORKFLOWS: [&str; 3] = ["temp-anomaly", "vibration-check", "door-events"];
const STEPS: [&str; 3] = ["read", "score", "publish"];

struct Params {
    /// Records per throughput workload.
    records: usize,
    /// Producer thread counts of the one-record-per-call workloads.
    producers: Vec<usize>,
    /// Records per call of the batched workload.
    batch: usize,
    /// Runs of each throughput workload; the median is reported.
    repeats: usize,
    /// Records of the size and compaction measurement.
    size_records: usize,
    /// Results in the store whose open time is measured.
    open_records: usize,
    /// Records appended one per call to the large store once it is built.
    late_records: usize,
    /// Records per `append_results` call when building stores.
    build_batch: usize,
    /// The records' `finished_ms` spread over this many hours, so several windows exist.
    span_hours: i64,
    /// Which of `throughput`, `size`, `open` to run.
    sections: Vec<String>,
    /// Where the stores are created. Must be a real disk: on tmpfs an fsync costs nothing.
    dir: PathBuf,
    /// The JSON-lines file of figures.
    out: PathBuf,
}

impl Params {
    fn from_env() -> Params {
        // CARGO_TARGET_TMPDIR is `<target>/tmp`: on the disk the project builds on, whatever
        // `/tmp` is mounted as.
        let target_tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let default_out = target_tmp
            .parent()
            .unwrap_or(&target_tmp)
            .join("bench")
            .join("ingest.jsonl");
        Params {
            records: env_usize("RHIZOME_BENCH_RECORDS", 20_000),
            producers: env_list("RHIZOME_BENCH_PRODUCERS", &[1, 16, 64]),
            batch: env_usize("RHIZOME_BENCH_BATCH", 100),
            repeats: env_usize("RHIZOME_BENCH_REPEATS", 3).max(1),
            size_records: env_usize("RHIZOME_BENCH_SIZE_RECORDS", 100_000),
            open_records: env_usize("RHIZOME_BENCH_OPEN_RECORDS", 1_000_000),
            late_records: env_usize("RHIZOME_BENCH_LATE_RECORDS", 2_000),
            build_batch: env_usize("RHIZOME_BENCH_BUILD_BATCH", 10_000).max(1),
            span_hours: env_usize("RHIZOME_BENCH_SPAN_HOURS", 6).max(1) as i64,
            sections: std::env::var("RHIZOME_BENCH_SECTIONS")
                .unwrap_or_else(|_| "throughput,size,open".into())
                .split(',')
                .map(|s| s.trim().to_owned())
                .collect(),
            dir: std::env::var_os("RHIZOME_BENCH_DIR").map_or(target_tmp, PathBuf::from),
            out: std::env::var_os("RHIZOME_BENCH_OUT").map_or(default_out, PathBuf::from),
        }
    }

    fn runs(&self, section: &str) -> bool {
        self.sections.iter().any(|s| s == section)
    }

    fn span_ms(&self) -> i64 {
        self.span_hours * 3_600_000
    }

    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "records": self.records,
            "producers": self.producers,
            "batch": self.batch,
            "repeats": self.repeats,
            "size_records": self.size_records,
            "open_records": self.open_records,
            "late_records": self.late_records,
            "build_batch": self.build_batch,
            "span_hours": self.span_hours,
            "sections": self.sections,
            "dir": self.dir,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// records

/// Realistic run records of one node: 2–3 steps with small JSON outputs, a few failures,
/// `finished_ms` rising evenly from `start_ms` over `span_ms`, as runs finish in time order on
/// a real node.
struct Records {
    rng: StdRng,
    next: usize,
    total: usize,
    start_ms: i64,
    span_ms: i64,
}

impl Records {
    fn new(seed: u64, total: usize, start_ms: i64, span_ms: i64) -> Records {
        Records {
            rng: StdRng::seed_from_u64(seed),
            next: 0,
            total,
            start_ms,
            span_ms,
        }
    }

    fn finished_ms(&self, i: usize) -> i64 {
        self.start_ms + (i as i64 * self.span_ms) / self.total.max(1) as i64
    }

    fn take_vec(&mut self, n: usize) -> Vec<RunRecord> {
        self.by_ref().take(n).collect()
    }
}

impl Iterator for Records {
    type Item = RunRecord;

    fn next(&mut self) -> Option<RunRecord> {
        if self.next >= self.total {
            return None;
        }
        let finished_ms = self.finished_ms(self.next);
        self.next += 1;
        let rng = &mut self.rng;
        let failed = rng.gen_bool(0.02);
        let n_steps = rng.gen_range(2..=3);
        let mut started_ms = finished_ms - rng.gen_range(20..400);
        let run_started = started_ms;
        let mut steps = Vec::with_capacity(n_steps);
        for (i, step) in STEPS.iter().take(n_steps).enumerate() {
            let duration_us = rng.gen_range(500..60_000);
            let last_failed = failed && i + 1 == n_steps;
            steps.push(StepRecord {
                step: (*step).to_owned(),
                status: if last_failed {
                    RunStatus::Failed
                } else {
                    RunStatus::Succeeded
                },
                started_ms,
                duration_us,
                attempts: if last_failed { 3 } else { 1 },
                output: json_output(rng),
                error: last_failed.then(|| "sensor did not answer within 2s".to_owned()),
            });
            started_ms += (duration_us / 1000) as i64;
        }
        Some(RunRecord {
            run_id: format!("{:032x}", rng.r#gen::<u128>()),
            workflow: WORKFLOWS[rng.gen_range(0..WORKFLOWS.len())].to_owned(),
            workflow_version: 3,
            node: NODE.to_owned(),
            started_ms: run_started,
            finished_ms: finished_ms.max(started_ms),
            status: if failed {
                RunStatus::Failed
            } else {
                RunStatus::Succeeded
            },
            steps,
            output: json_output(rng),
            error: failed.then(|| "step publish failed after 3 attempts".to_owned()),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// report

struct Figure {
    section: &'static str,
    label: String,
    value: f64,
    unit: &'static str,
}

struct Report {
    figures: Vec<Figure>,
    /// Sections shown as a preformatted table instead of a list of figures.
    summaries: Vec<(&'static str, String)>,
    json: BufWriter<File>,
    run: u64,
}

impl Report {
    fn create(params: &Params) -> Report {
        if let Some(dir) = params.out.parent() {
            std::fs::create_dir_all(dir).expect("creating the results directory");
        }
        let file = File::create(&params.out)
            .unwrap_or_else(|e| panic!("creating {}: {e}", params.out.display()));
        let run = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut report = Report {
            figures: Vec::new(),
            summaries: Vec::new(),
            json: BufWriter::new(file),
            run,
        };
        let header = serde_json::json!({
            "bench": "ingest",
            "run": run,
            "kind": "params",
            "params": params.to_json(),
            "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        });
        report.write_line(&header);
        report
    }

    /// Records a figure; the JSON line is written at once so an interrupted run keeps what it
    /// measured.
    fn figure(
        &mut self,
        section: &'static str,
        id: &str,
        label: String,
        value: f64,
        unit: &'static str,
    ) {
        eprintln!("  {label}: {} {unit}", format_value(value));
        let line = serde_json::json!({
            "bench": "ingest",
            "run": self.run,
            "id": id,
            "label": label,
            "value": value,
            "unit": unit,
        });
        self.write_line(&line);
        self.figures.push(Figure {
            section,
            label,
            value,
            unit,
        });
    }

    fn write_line(&mut self, line: &serde_json::Value) {
        writeln!(self.json, "{line}")
            .and_then(|()| self.json.flush())
            .expect("writing a figure");
    }

    fn summary(&mut self, section: &'static str, table: String) {
        self.summaries.push((section, table));
    }

    fn print_table(&self) {
        let width = self
            .figures
            .iter()
            .map(|f| f.label.chars().count())
            .max()
            .unwrap_or(0);
        let mut section = "";
        for f in &self.figures {
            if f.section == section {
                continue;
            }
            section = f.section;
            println!("\n{section}");
            if let Some((_, table)) = self.summaries.iter().find(|(s, _)| *s == section) {
                print!("{table}");
                continue;
            }
            for f in self.figures.iter().filter(|f| f.section == section) {
                println!(
                    "  {:<width$}  {:>14}  {}",
                    f.label,
                    format_value(f.value),
                    f.unit
                );
            }
        }
    }
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// Peak resident memory of this process, from `/proc` (Linux only).
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

// ---------------------------------------------------------------------------------------------
// sqlite baseline

/// The same durability as the result log: WAL with `synchronous=FULL` fsyncs the WAL on every
/// commit, as `Durability::Immediate` fsyncs the redb file.
fn open_sqlite(path: &Path) -> Connection {
    let conn = Connection::open(path).expect("opening sqlite");
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))
        .expect("setting WAL mode");
    assert_eq!(mode, "wal", "sqlite refused WAL mode");
    conn.pragma_update(None, "synchronous", "FULL")
        .expect("setting synchronous=FULL");
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS results (seq INTEGER PRIMARY KEY, body BLOB NOT NULL)",
    )
    .expect("creating the table");
    conn
}

/// Inserts the records, encoded as the result log encodes them, in one durable transaction.
fn sqlite_insert<'a>(
    conn: &mut Connection,
    records: impl IntoIterator<Item = &'a RunRecord>,
) -> Vec<i64> {
    let txn = conn.transaction().expect("sqlite begin");
    let mut seqs = Vec::new();
    {
        let mut insert = txn
            .prepare_cached("INSERT INTO results (body) VALUES (?1)")
            .expect("sqlite prepare");
        for record in records {
            let body = serde_json::to_vec(record).expect("encoding a record");
            seqs.push(insert.insert([body]).expect("sqlite insert"));
        }
    }
    txn.commit().expect("sqlite commit");
    seqs
}

type SqliteRequest = (Vec<RunRecord>, flume::Sender<Vec<i64>>);

/// The group commit of [`StoreHandle`] rebuilt over SQLite: one writer thread takes whatever is
/// queued (up to the same record cap), commits it in one transaction, then acknowledges each
/// caller. Same queue bound, same channel crate, so only the storage engine differs.
#[derive(Clone)]
struct SqliteSink {
    requests: flume::Sender<SqliteRequest>,
}

impl SqliteSink {
    /// The sink and its writer thread, which returns the number of commits it made.
    fn spawn(conn: Connection) -> (SqliteSink, JoinHandle<usize>) {
        let (requests, inbox) = flume::bounded(STORE_QUEUE_CAP);
        let writer = std::thread::spawn(move || sqlite_writer(conn, inbox));
        (SqliteSink { requests }, writer)
    }

    fn append(&self, records: Vec<RunRecord>) -> flume::Receiver<Vec<i64>> {
        for record in &records {
            record.validate().expect("a valid record");
        }
        let (reply, answer) = flume::bounded(1);
        self.requests
            .send((records, reply))
            .expect("sqlite writer stopped");
        answer
    }
}

fn sqlite_writer(mut conn: Connection, inbox: flume::Receiver<SqliteRequest>) -> usize {
    let mut commits = 0;
    while let Ok(first) = inbox.recv() {
        let mut group_records = first.0.len();
        let mut group = vec![first];
        while group_records < MAX_GROUP_RECORDS {
            let Ok(next) = inbox.try_recv() else { break };
            group_records += next.0.len();
            group.push(next);
        }
        let seqs = sqlite_insert(&mut conn, group.iter().flat_map(|(records, _)| records));
        commits += 1;
        let mut seqs = seqs.into_iter();
        for (records, reply) in group {
            let _ = reply.send(seqs.by_ref().take(records.len()).collect());
        }
    }
    commits
}

// ---------------------------------------------------------------------------------------------
// throughput

/// Per producer, its calls; per call, its records. Built before the clock starts.
type Plan = Vec<Vec<Vec<RunRecord>>>;

fn plan(records: &[RunRecord], producers: usize, per_call: usize) -> Plan {
    let per_producer = records.len().div_ceil(producers.max(1)).max(1);
    records
        .chunks(per_producer)
        .map(|part| part.chunks(per_call).map(<[RunRecord]>::to_vec).collect())
        .collect()
}

/// Runs every producer on its own thread, each waiting for the acknowledgement of one call
/// before making the next; returns the time from the common start until the last ack.
fn drive(plan: Plan, append: impl Fn(Vec<RunRecord>) + Sync) -> Duration {
    let start_line = Barrier::new(plan.len() + 1);
    let append = &append;
    let start_line = &start_line;
    // The scope returns only once every producer has finished.
    let start = std::thread::scope(|s| {
        for calls in plan {
            s.spawn(move || {
                start_line.wait();
                for records in calls {
                    append(records);
                }
            });
        }
        start_line.wait();
        Instant::now()
    });
    start.elapsed()
}

struct RhizomeRun {
    acked: Duration,
    applied: Duration,
}

fn rhizome_throughput(dir: &Path, plan: Plan) -> RhizomeRun {
    let store = Store::open(&dir.join("store.redb"), StoreConfig::new(MESH, NODE))
        .expect("opening the store");
    let handle = StoreHandle::spawn(store);
    let run = through_handle(&handle, plan);
    handle.shutdown();
    run
}

/// Drives the plan through the store thread: time to the last acknowledgement, then to the
/// last record folded into its document.
fn through_handle(handle: &StoreHandle, plan: Plan) -> RhizomeRun {
    let acked = drive(plan, |records| {
        handle.append(records).wait().expect("durable append");
    });
    let start = Instant::now();
    handle
        .call(|store| store.apply_pending(usize::MAX))
        .wait()
        .expect("applying the log");
    RhizomeRun {
        acked,
        applied: acked + start.elapsed(),
    }
}

struct SqliteRun {
    acked: Duration,
    commits: usize,
}

fn sqlite_throughput(dir: &Path, plan: Plan) -> SqliteRun {
    let (sink, writer) = SqliteSink::spawn(open_sqlite(&dir.join("baseline.sqlite")));
    let acked = drive(plan, |records| {
        sink.append(records).recv().expect("sqlite ack");
    });
    drop(sink);
    let commits = writer.join().expect("sqlite writer panicked");
    SqliteRun { acked, commits }
}

/// Durable log commits made directly on the calling thread: no store thread, no folding into
/// documents. Separates the storage engines' commit cost from the rest of the ingest path.
fn rhizome_direct(dir: &Path, records: &[RunRecord], per_call: usize) -> Duration {
    let mut store = Store::open(&dir.join("store.redb"), StoreConfig::new(MESH, NODE))
        .expect("opening the store");
    let start = Instant::now();
    for call in records.chunks(per_call) {
        store.append_results(call).expect("durable append");
    }
    start.elapsed()
}

fn sqlite_direct(dir: &Path, records: &[RunRecord], per_call: usize) -> Duration {
    let mut conn = open_sqlite(&dir.join("baseline.sqlite"));
    let start = Instant::now();
    for call in records.chunks(per_call) {
        sqlite_insert(&mut conn, call);
    }
    start.elapsed()
}

struct ThroughputRow {
    key: String,
    name: String,
    rhizome_acked: f64,
    /// Acknowledged and folded into documents; only the store thread folds.
    rhizome_applied: Option<f64>,
    sqlite: f64,
    sqlite_per_commit: f64,
}

fn throughput(params: &Params, report: &mut Report) {
    const SECTION: &str = "Durable ingest throughput";
    let records =
        Records::new(1, params.records, BASE_MS, params.span_ms()).take_vec(params.records);
    let n = records.len();
    let plural = |n: usize| if n == 1 { "" } else { "s" };
    let mut rows = Vec::new();
    let mut workloads: Vec<(usize, usize)> = params.producers.iter().map(|&p| (p, 1)).collect();
    workloads.push((1, params.batch));
    for (producers, per_call) in workloads {
        let name = format!(
            "{producers} producer{} x {per_call} record{}/call",
            plural(producers),
            plural(per_call)
        );
        eprintln!(
            "throughput: {name}, {n} records, {} repeats",
            params.repeats
        );
        let (mut acked, mut applied, mut sqlite, mut per_commit) = (vec![], vec![], vec![], vec![]);
        for rep in 0..params.repeats {
            // Alternate which engine goes first, so a drift in machine load does not always
            // favour the same one.
            for rhizome_turn in [rep % 2 == 0, rep % 2 == 1] {
                let dir = tempfile::tempdir_in(&params.dir).expect("temp dir");
                let plan = plan(&records, producers, per_call);
                if rhizome_turn {
                    let run = rhizome_throughput(dir.path(), plan);
                    acked.push(rate(n, run.acked));
                    applied.push(rate(n, run.applied));
                } else {
                    let run = sqlite_throughput(dir.path(), plan);
                    sqlite.push(rate(n, run.acked));
                    per_commit.push(n as f64 / run.commits.max(1) as f64);
                }
            }
        }
        rows.push(ThroughputRow {
            key: format!("p{producers}_b{per_call}"),
            name,
            rhizome_acked: median(acked),
            rhizome_applied: Some(median(applied)),
            sqlite: median(sqlite),
            sqlite_per_commit: median(per_commit),
        });
    }
    let mut direct_sizes = vec![1, params.batch];
    direct_sizes.dedup();
    for per_call in direct_sizes {
        let name = format!("direct, {per_call} record{}/commit", plural(per_call));
        eprintln!(
            "throughput: {name}, {n} records, {} repeats",
            params.repeats
        );
        let (mut rhizome, mut sqlite) = (vec![], vec![]);
        for rep in 0..params.repeats {
            for rhizome_turn in [rep % 2 == 0, rep % 2 == 1] {
                let dir = tempfile::tempdir_in(&params.dir).expect("temp dir");
                if rhizome_turn {
                    rhizome.push(rate(n, rhizome_direct(dir.path(), &records, per_call)));
                } else {
                    sqlite.push(rate(n, sqlite_direct(dir.path(), &records, per_call)));
                }
            }
        }
        rows.push(ThroughputRow {
            key: format!("direct_b{per_call}"),
            name,
            rhizome_acked: median(rhizome),
            rhizome_applied: None,
            sqlite: median(sqlite),
            sqlite_per_commit: per_call as f64,
        });
    }

    let mut table = format!(
        "  {n} records per run, median of {} run(s); ratio = rhizome ack/s / sqlite ack/s\n",
        params.repeats
    );
    table.push_str(&format!(
        "  {:<30} {:>14} {:>14} {:>14} {:>13} {:>7}\n",
        "workload", "rhizome ack/s", "+applied/s", "sqlite ack/s", "sqlite rec/tx", "ratio"
    ));
    for row in &rows {
        let ratio = row.rhizome_acked / row.sqlite;
        let key = &row.key;
        let name = &row.name;
        report.figure(
            SECTION,
            &format!("throughput.{key}.rhizome_acked"),
            format!("{name}: rhizome, acknowledged"),
            row.rhizome_acked,
            "records/s",
        );
        if let Some(applied) = row.rhizome_applied {
            report.figure(
                SECTION,
                &format!("throughput.{key}.rhizome_applied"),
                format!("{name}: rhizome, acknowledged and applied"),
                applied,
                "records/s",
            );
        }
        report.figure(
            SECTION,
            &format!("throughput.{key}.sqlite"),
            format!("{name}: sqlite, acknowledged"),
            row.sqlite,
            "records/s",
        );
        report.figure(
            SECTION,
            &format!("throughput.{key}.sqlite_records_per_commit"),
            format!("{name}: sqlite, records per commit"),
            row.sqlite_per_commit,
            "records",
        );
        report.figure(
            SECTION,
            &format!("throughput.{key}.ratio"),
            format!("{name}: rhizome / sqlite (acknowledged)"),
            ratio,
            "x",
        );
        table.push_str(&format!(
            "  {:<30} {:>14} {:>14} {:>14} {:>13} {:>6.2}x\n",
            name,
            format_value(row.rhizome_acked),
            row.rhizome_applied.map_or("-".into(), format_value),
            format_value(row.sqlite),
            format_value(row.sqlite_per_commit),
            ratio
        ));
    }
    report.summary(SECTION, table);
}

// ---------------------------------------------------------------------------------------------
// size and compaction

fn size_and_compaction(params: &Params, report: &mut Report) {
    const SECTION: &str = "Bytes on disk and compaction";
    let n = params.size_records;
    eprintln!("size: {n} records");
    let records = Records::new(2, n, BASE_MS, params.span_ms()).take_vec(n);
    let json_bytes: usize = records
        .iter()
        .map(|r| serde_json::to_vec(r).expect("encoding").len())
        .sum();
    report.figure(
        SECTION,
        "size.records",
        "records".into(),
        n as f64,
        "records",
    );
    report.figure(
        SECTION,
        "size.json_bytes_per_record",
        "JSON encoding per record".into(),
        json_bytes as f64 / n as f64,
        "bytes",
    );

    let dir = tempfile::tempdir_in(&params.dir).expect("temp dir");
    let path = dir.path().join("store.redb");
    let mut config = StoreConfig::new(MESH, NODE);
    // Automatic compaction off, so that the explicit compaction below has the whole history
    // to fold and its before/after sizes mean something.
    config.compact_after_chunks = usize::MAX;
    let mut store = Store::open(&path, config).expect("opening the store");
    let start = Instant::now();
    for batch in records.chunks(params.build_batch) {
        store.append_results(batch).expect("append");
        store.apply_pending(usize::MAX).expect("apply");
    }
    let build = start.elapsed();
    report.figure(
        SECTION,
        "size.rhizome.build_rate",
        format!(
            "rhizome append + apply, {} records/call",
            params.build_batch
        ),
        rate(n, build),
        "records/s",
    );
    let before = store.stats().expect("stats");
    report.figure(
        SECTION,
        "size.rhizome.documents",
        "results documents (windows)".into(),
        before.documents as f64,
        "docs",
    );
    report.figure(
        SECTION,
        "size.rhizome.before.chunk_bytes_per_record",
        "rhizome chunks per record, before compaction".into(),
        before.chunk_bytes as f64 / n as f64,
        "bytes",
    );
    report.figure(
        SECTION,
        "size.rhizome.before.file_bytes_per_record",
        "rhizome file per record, before compaction".into(),
        before.file_bytes as f64 / n as f64,
        "bytes",
    );

    let start = Instant::now();
    let compactions = store.compact_all().expect("compaction");
    let compact_time = start.elapsed();
    let after = store.stats().expect("stats");
    drop(store);
    let file_closed = file_len(&path);
    let chunks_before: usize = compactions.iter().map(|c| c.chunks_before).sum();
    let bytes_before: u64 = compactions.iter().map(|c| c.bytes_before).sum();
    let bytes_after: u64 = compactions.iter().map(|c| c.bytes_after).sum();
    report.figure(
        SECTION,
        "compaction.documents",
        "documents compacted".into(),
        compactions.len() as f64,
        "docs",
    );
    report.figure(
        SECTION,
        "compaction.chunks_before",
        "chunks before compaction".into(),
        chunks_before as f64,
        "chunks",
    );
    report.figure(
        SECTION,
        "compaction.bytes_before",
        "document bytes before compaction".into(),
        bytes_before as f64,
        "bytes",
    );
    report.figure(
        SECTION,
        "compaction.bytes_after",
        "document bytes after compaction".into(),
        bytes_after as f64,
        "bytes",
    );
    report.figure(
        SECTION,
        "compaction.ratio",
        "compaction size ratio (after / before)".into(),
        bytes_after as f64 / bytes_before.max(1) as f64,
        "x",
    );
    report.figure(
        SECTION,
        "compaction.seconds",
        "compact_all time".into(),
        compact_time.as_secs_f64(),
        "s",
    );
    report.figure(
        SECTION,
        "size.rhizome.after.chunk_bytes_per_record",
        "rhizome chunks per record, compacted".into(),
        after.chunk_bytes as f64 / n as f64,
        "bytes",
    );
    report.figure(
        SECTION,
        "size.rhizome.after.file_bytes_per_record",
        "rhizome file per record, compacted and closed".into(),
        file_closed as f64 / n as f64,
        "bytes",
    );

    let sqlite_path = dir.path().join("baseline.sqlite");
    let mut conn = open_sqlite(&sqlite_path);
    for batch in records.chunks(params.build_batch) {
        sqlite_insert(&mut conn, batch);
    }
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .expect("sqlite checkpoint");
    drop(conn);
    let sqlite_bytes = file_len(&sqlite_path) + file_len(&dir.path().join("baseline.sqlite-wal"));
    report.figure(
        SECTION,
        "size.sqlite.file_bytes_per_record",
        "sqlite file per record (checkpointed)".into(),
        sqlite_bytes as f64 / n as f64,
        "bytes",
    );
    report.figure(
        SECTION,
        "size.ratio_file",
        "file per record, rhizome / sqlite".into(),
        file_closed as f64 / sqlite_bytes.max(1) as f64,
        "x",
    );
    report.figure(
        SECTION,
        "size.ratio_chunks",
        "compacted chunks per record, rhizome / sqlite file".into(),
        after.chunk_bytes as f64 / sqlite_bytes.max(1) as f64,
        "x",
    );
}

// ---------------------------------------------------------------------------------------------
// open

fn open_large(params: &Params, report: &mut Report) {
    const SECTION: &str = "Opening a large store";
    let n = params.open_records;
    let dir = tempfile::tempdir_in(&params.dir).expect("temp dir");
    let path = dir.path().join("store.redb");
    let config = StoreConfig::new(MESH, NODE);
    let mut records = Records::new(3, n, BASE_MS, params.span_ms());
    let last_finished = records.finished_ms(n.saturating_sub(1));
    eprintln!("open: building a store of {n} results");
    let mut store = Store::open(&path, config.clone()).expect("opening the store");
    let start = Instant::now();
    let mut done = 0;
    let mut next_progress = n / 10;
    loop {
        let batch = records.take_vec(params.build_batch);
        if batch.is_empty() {
            break;
        }
        store.append_results(&batch).expect("append");
        store.apply_pending(usize::MAX).expect("apply");
        done += batch.len();
        if done >= next_progress {
            eprintln!(
                "  {done} results after {:.0}s",
                start.elapsed().as_secs_f64()
            );
            next_progress += n / 10;
        }
    }
    let stats = store.stats().expect("stats");
    let close = Instant::now();
    drop(store);
    let build = start.elapsed();
    let close = close.elapsed();
    report.figure(
        SECTION,
        "open.records",
        "results in the store".into(),
        n as f64,
        "records",
    );
    report.figure(
        SECTION,
        "open.build_seconds",
        format!(
            "build time (append + apply, {} records/call)",
            params.build_batch
        ),
        build.as_secs_f64(),
        "s",
    );
    report.figure(
        SECTION,
        "open.build_rate",
        "build rate".into(),
        rate(n, build),
        "records/s",
    );
    report.figure(
        SECTION,
        "open.close_seconds",
        "close (final flush)".into(),
        close.as_secs_f64(),
        "s",
    );
    report.figure(
        SECTION,
        "open.documents",
        "results documents".into(),
        stats.documents as f64,
        "docs",
    );
    report.figure(
        SECTION,
        "open.file_bytes_per_record",
        "file per record".into(),
        stats.file_bytes as f64 / n.max(1) as f64,
        "bytes",
    );
    report.figure(
        SECTION,
        "open.chunk_bytes_per_record",
        "chunks per record".into(),
        stats.chunk_bytes as f64 / n.max(1) as f64,
        "bytes",
    );
    if let Some(mib) = peak_rss_mib() {
        report.figure(
            SECTION,
            "open.peak_rss_mib",
            "peak RSS of the bench so far".into(),
            mib,
            "MiB",
        );
    }

    let mut opens = Vec::new();
    for _ in 0..3 {
        let start = Instant::now();
        let store = Store::open(&path, config.clone()).expect("reopening the store");
        opens.push(start.elapsed().as_secs_f64());
        drop(store);
    }
    report.figure(
        SECTION,
        "open.seconds_median",
        "Store::open, median of 3 (page cache warm)".into(),
        median(opens),
        "s",
    );

    // `Store::open` decodes nothing; a restarted node pays when the first result reaches the
    // current window and its document is decoded from its chunks.
    let mut store = Store::open(&path, config.clone()).expect("reopening the store");
    let name = DocName::results(
        NODE,
        Window::containing(last_finished, store.config().results_window_minutes),
    )
    .expect("a results name");
    let id = store.document_id(&name);
    let chunks = store
        .list_docs()
        .expect("listing documents")
        .into_iter()
        .find(|d| d.id == id.to_string())
        .map_or(0, |d| d.chunks);
    report.figure(
        SECTION,
        "open.newest_window_chunks",
        "chunks of the newest window's document".into(),
        chunks as f64,
        "chunks",
    );
    let start = Instant::now();
    store.automerge(&id).expect("decoding the newest window");
    report.figure(
        SECTION,
        "open.decode_newest_window_seconds",
        "first load of the newest window's document, as stored".into(),
        start.elapsed().as_secs_f64(),
        "s",
    );
    let start = Instant::now();
    let compaction = store
        .compact(&name.to_string())
        .expect("compacting the newest window");
    report.figure(
        SECTION,
        "open.compact_newest_window_seconds",
        format!(
            "compacting it ({} chunks, {} bytes -> {} bytes)",
            compaction.chunks_before, compaction.bytes_before, compaction.bytes_after
        ),
        start.elapsed().as_secs_f64(),
        "s",
    );
    drop(store);
    let mut store = Store::open(&path, config.clone()).expect("reopening the store");
    let start = Instant::now();
    store.automerge(&id).expect("decoding the newest window");
    report.figure(
        SECTION,
        "open.decode_newest_window_compacted_seconds",
        "first load of the newest window's document, compacted".into(),
        start.elapsed().as_secs_f64(),
        "s",
    );
    drop(store);

    // Steady-state ingest once the current window is large: each idle fold writes a small
    // change, and every `compact_after_chunks` of them re-save the whole window.
    let late = params.late_records;
    if late == 0 {
        return;
    }
    eprintln!("open: {late} more results, 1 producer x 1 record/call");
    let mut more = Records::new(4, late + 1, last_finished, 1);
    let warm_up = more.take_vec(1);
    let plan = vec![more.take_vec(late).into_iter().map(|r| vec![r]).collect()];
    let handle = StoreHandle::spawn(Store::open(&path, config).expect("reopening the store"));
    handle.append(warm_up).wait().expect("durable append");
    handle
        .call(|store| store.apply_pending(usize::MAX))
        .wait()
        .expect("applying the log");
    let RhizomeRun { acked, applied } = through_handle(&handle, plan);
    handle.shutdown();
    report.figure(
        SECTION,
        "open.late_ingest.rhizome_acked",
        format!("then 1 producer x 1 record/call, {late} records: acknowledged"),
        rate(late, acked),
        "records/s",
    );
    report.figure(
        SECTION,
        "open.late_ingest.rhizome_applied",
        format!("then 1 producer x 1 record/call, {late} records: acknowledged and applied"),
        rate(late, applied),
        "records/s",
    );
}

fn main() {
    let params = Params::from_env();
    std::fs::create_dir_all(&params.dir).expect("creating the data directory");
    let mut report = Report::create(&params);
    let fs = fs_type(&params.dir).unwrap_or_else(|| "unknown file system".into());
    eprintln!(
        "ingest bench: data in {} ({fs}), figures to {}",
        params.dir.display(),
        params.out.display()
    );
    if fs == "tmpfs" || fs == "ramfs" {
        eprintln!("warning: the data directory is in memory, so fsync costs nothing here");
    }
    if params.runs("throughput") {
        throughput(&params, &mut report);
    }
    if params.runs("size") {
        size_and_compaction(&params, &mut report);
    }
    if params.runs("open") {
        open_large(&params, &mut report);
    }
    report.print_table();
}
