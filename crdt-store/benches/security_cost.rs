//! What the two security features of the store cost, each measured side by side with it off in
//! one run: encryption at rest ([`StoreConfig::encryption`]) on durable ingest and on document
//! sync, and the authorization of received changes ([`StoreConfig::write_rules`]) on sync.
//!
//! Every workload runs with the feature off and on in turn (off/on, then on/off in the next
//! repeat, so a drift in machine load does not always favour the same side), after one warm-up
//! of each that is not counted. The table gives the median of each side, the ratio of the
//! medians as time (`on/off` 1.10 = the feature costs 10 % more time), and the median of the
//! ratios of the two runs of each repeat, which a load that changes between repeats disturbs
//! less. Beside wall time, workloads give the CPU time of the thread doing all their work
//! (`CPU` rows): on a shared machine it tells the work done from the wait for a core or for
//! the disk. Each figure is also one JSON line in `RHIZOME_BENCH_OUT`, with its samples;
//! `bench/security-cost.sh` runs it.
//!
//! - `ingest`: `Store::append_results` of N records in calls of `per_call` records on the
//!   calling thread, then `apply_pending(usize::MAX)`: records/s until the last append
//!   returned (fsynced) and until every record is folded into its results document.
//! - `sync`: a source store A holding a results document per window, signed workflows and a
//!   registry with an entry per node (each written by its node), and a fresh store B that
//!   pulls everything from A through the replication machine (`mesh::proto::sync`: summaries,
//!   catalogues, sync messages, applies in batches) over an in-process link, until both
//!   catalogues hold the same heads and B has flushed. Then A takes `increment` more records
//!   and B gets them. Encryption: off on both stores, then on both (A is built twice, alike).
//!   Authorization: B without write rules, then with rules that verify the signatures of
//!   workflow versions.
//!
//! With `write_rules: None` the store still checks the authors of results documents and of
//! registry entries by actor: only workflow versions go unchecked. The `off` side of the
//! authorization workload therefore includes those checks. Its table ends with the parts of
//! the checks, replayed one at a time on B's documents after a run.
//!
//! Environment variables (defaults in brackets):
//!
//! - `RHIZOME_BENCH_REPEATS` off/on pairs per workload, medians reported [5]
//! - `RHIZOME_BENCH_WARMUP` uncounted off/on pairs before them [1]
//! - `RHIZOME_BENCH_PER_CALL` records per `append_results` of the ingest workloads [100,1]
//! - `RHIZOME_BENCH_RECORDS` records per ingest run of more than one record per call [20000]
//! - `RHIZOME_BENCH_SINGLE_RECORDS` records per ingest run of one record per call [2000]
//! - `RHIZOME_BENCH_WINDOWS` one-hour results windows (documents) on the sync source [6]
//! - `RHIZOME_BENCH_WINDOW_RECORDS` records per window [3000]
//! - `RHIZOME_BENCH_BUILD_BATCH` records per append and fold when building the source [100]
//! - `RHIZOME_BENCH_WORKFLOWS` workflow documents on the source [20]
//! - `RHIZOME_BENCH_VERSIONS` versions applied to each workflow [3]
//! - `RHIZOME_BENCH_REGISTRY_NODES` registry entries, the source's own included [50]
//! - `RHIZOME_BENCH_INCREMENT` records of the incremental sync [100]
//! - `RHIZOME_BENCH_SECTIONS` any of `ingest,sync` [all]
//! - `RHIZOME_BENCH_DIR` where the stores are created [`<target>/tmp`]
//! - `RHIZOME_BENCH_OUT` the JSON-lines file [`<target>/bench/security_cost.jsonl`]

mod common;
mod figures;

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{env_list, env_usize};
use crdt_store::seal::Key;
use crdt_store::{
    CatalogueItem, ChangeTime, DocName, MeshRegistry, NodeEntry, RunRecord, RunStatus, StepDef,
    StepRecord, Store, StoreConfig, SyncApply, SyncRejected, Target, Window, WorkflowDoc,
    WriteRules,
};
use figures::{format_value, fs_type, json_output, median, rate};
use mesh::proto::sync::{Replicator, SharePolicy, SyncConfig, SyncIn, SyncOut, serve};
use mesh::proto::wire::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

const MESH: &str = "bench-mesh";
/// 2026-01-01T00:00Z. Fixed so that every run produces the same windows and records.
const BASE_MS: i64 = 1_767_225_600_000;
const HOUR_MS: i64 = 3_600_000;
const WORKFLOWS: [&str; 3] = ["temp-anomaly", "vibration-check", "door-events"];
const STEPS: [&str; 3] = ["read", "score", "publish"];
const ZONE: &str = "site-00";

struct Params {
    repeats: usize,
    warmup: usize,
    per_call: Vec<usize>,
    records: usize,
    single_records: usize,
    windows: usize,
    window_records: usize,
    build_batch: usize,
    workflows: usize,
    versions: usize,
    registry_nodes: usize,
    increment: usize,
    sections: Vec<String>,
    /// Must be a real disk: on tmpfs an fsync costs nothing.
    dir: PathBuf,
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
            .join("security_cost.jsonl");
        Params {
            repeats: env_usize("RHIZOME_BENCH_REPEATS", 5).max(1),
            warmup: env_usize("RHIZOME_BENCH_WARMUP", 1),
            per_call: env_list("RHIZOME_BENCH_PER_CALL", &[100, 1]),
            records: env_usize("RHIZOME_BENCH_RECORDS", 20_000),
            single_records: env_usize("RHIZOME_BENCH_SINGLE_RECORDS", 2_000),
            windows: env_usize("RHIZOME_BENCH_WINDOWS", 6).max(1),
            window_records: env_usize("RHIZOME_BENCH_WINDOW_RECORDS", 3_000),
            build_batch: env_usize("RHIZOME_BENCH_BUILD_BATCH", 100).max(1),
            workflows: env_usize("RHIZOME_BENCH_WORKFLOWS", 20),
            versions: env_usize("RHIZOME_BENCH_VERSIONS", 3).max(1),
            registry_nodes: env_usize("RHIZOME_BENCH_REGISTRY_NODES", 50).max(1),
            increment: env_usize("RHIZOME_BENCH_INCREMENT", 100).max(1),
            sections: std::env::var("RHIZOME_BENCH_SECTIONS")
                .unwrap_or_else(|_| "ingest,sync".into())
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

    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "repeats": self.repeats,
            "warmup": self.warmup,
            "per_call": self.per_call,
            "records": self.records,
            "single_records": self.single_records,
            "windows": self.windows,
            "window_records": self.window_records,
            "build_batch": self.build_batch,
            "workflows": self.workflows,
            "versions": self.versions,
            "registry_nodes": self.registry_nodes,
            "increment": self.increment,
            "sections": self.sections,
            "dir": self.dir,
        })
    }
}

/// A node id as nodes have them (32 hex digits), scattered so that actor order is not
/// creation order.
fn node_id(i: u64) -> String {
    let x = (i + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    format!("{x:016x}{:016x}", x.rotate_left(29) ^ 0x5bd1_e995)
}

// ---------------------------------------------------------------------------------------------
// records

/// Realistic run records of one node (the generator of `benches/ingest.rs`): 2–3 steps with
/// small JSON outputs, a few failures, `finished_ms` rising evenly from `start_ms` over
/// `span_ms`.
struct Records {
    rng: StdRng,
    node: String,
    next: usize,
    total: usize,
    start_ms: i64,
    span_ms: i64,
}

impl Records {
    fn new(seed: u64, node: &str, total: usize, start_ms: i64, span_ms: i64) -> Records {
        Records {
            rng: StdRng::seed_from_u64(seed),
            node: node.to_owned(),
            next: 0,
            total,
            start_ms,
            span_ms,
        }
    }

    fn all(self) -> Vec<RunRecord> {
        self.collect()
    }
}

impl Iterator for Records {
    type Item = RunRecord;

    fn next(&mut self) -> Option<RunRecord> {
        if self.next >= self.total {
            return None;
        }
        let finished_ms = self.start_ms + (self.next as i64 * self.span_ms) / self.total as i64;
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
            node: self.node.clone(),
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

/// One workload measured with the feature off and on, a sample per run.
struct Row {
    section: &'static str,
    id: String,
    label: String,
    unit: &'static str,
    /// Rates get faster with a smaller time; the ratio is always given as time on / time off.
    rate: bool,
    off: Vec<f64>,
    on: Vec<f64>,
}

impl Row {
    fn new(section: &'static str, id: String, label: String, unit: &'static str) -> Row {
        Row {
            section,
            id,
            label,
            unit,
            rate: unit.ends_with("/s"),
            off: Vec::new(),
            on: Vec::new(),
        }
    }

    fn push(&mut self, on: bool, value: f64) {
        if on {
            self.on.push(value);
        } else {
            self.off.push(value);
        }
    }

    fn time_ratio(&self, off: f64, on: f64) -> f64 {
        if self.rate { off / on } else { on / off }
    }

    fn ratio_of_medians(&self) -> f64 {
        self.time_ratio(median(self.off.clone()), median(self.on.clone()))
    }

    /// The median of the ratios of the two runs of each repeat.
    fn paired_ratio(&self) -> f64 {
        median(
            self.off
                .iter()
                .zip(&self.on)
                .map(|(off, on)| self.time_ratio(*off, *on))
                .collect(),
        )
    }
}

struct Report {
    rows: Vec<Row>,
    /// Per section, what it measured, printed above its table.
    notes: Vec<(&'static str, String)>,
    /// Per section, single figures printed below its table.
    details: Vec<(&'static str, Detail)>,
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
            rows: Vec::new(),
            notes: Vec::new(),
            details: Vec::new(),
            json: BufWriter::new(file),
            run,
        };
        let header = serde_json::json!({
            "bench": "security_cost",
            "run": run,
            "kind": "params",
            "params": params.to_json(),
            "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        });
        report.write_line(&header);
        report
    }

    fn note(&mut self, section: &'static str, text: String) {
        self.notes.push((section, text));
    }

    fn detail(&mut self, section: &'static str, detail: Detail) {
        let line = serde_json::json!({
            "bench": "security_cost",
            "run": self.run,
            "kind": "detail",
            "id": detail.id,
            "label": detail.label,
            "value": detail.value,
            "unit": detail.unit,
        });
        self.write_line(&line);
        self.details.push((section, detail));
    }

    /// Records a finished workload; the JSON line is written at once so an interrupted run
    /// keeps what it measured.
    fn add(&mut self, row: Row) {
        let (off, on) = (median(row.off.clone()), median(row.on.clone()));
        eprintln!(
            "  {}: off {} {unit}, on {} {unit}, time on/off {:.3} (paired {:.3})",
            row.label,
            format_value(off),
            format_value(on),
            row.ratio_of_medians(),
            row.paired_ratio(),
            unit = row.unit,
        );
        let line = serde_json::json!({
            "bench": "security_cost",
            "run": self.run,
            "id": row.id,
            "label": row.label,
            "unit": row.unit,
            "off": off,
            "on": on,
            "time_ratio": row.ratio_of_medians(),
            "paired_time_ratio": row.paired_ratio(),
            "off_samples": row.off,
            "on_samples": row.on,
        });
        self.write_line(&line);
        self.rows.push(row);
    }

    fn write_line(&mut self, line: &serde_json::Value) {
        writeln!(self.json, "{line}")
            .and_then(|()| self.json.flush())
            .expect("writing a figure");
    }

    fn print_tables(&self) {
        let width = self
            .rows
            .iter()
            .map(|r| r.label.chars().count())
            .chain(self.details.iter().map(|(_, d)| d.label.chars().count()))
            .max()
            .unwrap_or(0)
            .max("workload".len());
        let mut sections: Vec<&str> = self.rows.iter().map(|r| r.section).collect();
        sections.dedup();
        for section in sections {
            println!("\n{section}");
            for (_, note) in self.notes.iter().filter(|(s, _)| *s == section) {
                println!("  {note}");
            }
            println!(
                "  {:<width$}  {:>12}  {:>12}  {:<10}  {:>7}  {:>7}",
                "workload", "off", "on", "unit", "on/off", "paired"
            );
            for row in self.rows.iter().filter(|r| r.section == section) {
                println!(
                    "  {:<width$}  {:>12}  {:>12}  {:<10}  {:>6.3}x  {:>6.3}x",
                    row.label,
                    format_value(median(row.off.clone())),
                    format_value(median(row.on.clone())),
                    row.unit,
                    row.ratio_of_medians(),
                    row.paired_ratio(),
                );
            }
            let details: Vec<&Detail> = self
                .details
                .iter()
                .filter(|(s, _)| *s == section)
                .map(|(_, d)| d)
                .collect();
            if !details.is_empty() {
                println!(
                    "  parts of the checks, replayed on B after a run (wall time, median of 5 each):"
                );
            }
            for d in details {
                println!(
                    "  {:<width$}  {:>12}  {:>12}  {}",
                    d.label,
                    "",
                    format_value(d.value),
                    d.unit
                );
            }
        }
    }
}

/// One figure measured once, not off and on.
struct Detail {
    id: String,
    label: String,
    value: f64,
    unit: &'static str,
}

fn ms(elapsed: Duration) -> f64 {
    elapsed.as_secs_f64() * 1000.0
}

/// Wall time and the CPU time of this thread, which does all the work of a run (the store,
/// or both stores and both replicators): on a shared machine the CPU time tells the work done
/// from the time spent waiting for a core or for the disk.
#[derive(Clone, Copy)]
struct Stopwatch {
    wall: Instant,
    cpu: Duration,
}

#[derive(Clone, Copy)]
struct Span {
    wall: Duration,
    cpu: Duration,
}

impl Stopwatch {
    fn start() -> Stopwatch {
        let cpu = thread_cpu();
        Stopwatch {
            wall: Instant::now(),
            cpu,
        }
    }

    fn elapsed(&self) -> Span {
        let wall = self.wall.elapsed();
        Span {
            wall,
            cpu: thread_cpu().saturating_sub(self.cpu),
        }
    }
}

/// The CPU time this thread has had, from the scheduler's accounting (Linux only; zero
/// elsewhere). Yielding first brings the running thread's account up to date: otherwise it
/// lags by up to a scheduler tick.
fn thread_cpu() -> Duration {
    std::thread::yield_now();
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .map_or(Duration::ZERO, Duration::from_nanos)
}

/// The median time of a 4 KiB write followed by `fdatasync` in `dir`: what one durable
/// commit waits for at least, at this moment, on this disk.
fn fsync_probe(dir: &Path) -> Duration {
    let probe = tempfile::NamedTempFile::new_in(dir).expect("a probe file");
    let mut file = probe.as_file();
    let block = [0x5au8; 4096];
    let mut times = Vec::new();
    for _ in 0..64 {
        let start = Instant::now();
        file.write_all(&block).expect("probe write");
        file.sync_data().expect("probe fdatasync");
        times.push(start.elapsed().as_secs_f64());
    }
    Duration::from_secs_f64(median(times))
}

/// Runs `run(rep, on, counted)` for the warm-up pairs (`counted` false: the first runs pay for
/// cold caches), then for `repeats` pairs, the feature off first in even repeats and on first
/// in odd ones.
fn alternate(params: &Params, mut run: impl FnMut(usize, bool, bool)) {
    for rep in 0..params.warmup {
        for on in [rep % 2 == 1, rep % 2 == 0] {
            run(rep, on, false);
        }
    }
    for rep in 0..params.repeats {
        for on in [rep % 2 == 1, rep % 2 == 0] {
            run(rep, on, true);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// ingest

fn ingest(params: &Params, report: &mut Report) {
    const SECTION: &str = "Durable ingest, encryption at rest off vs on";
    report.note(
        SECTION,
        format!(
            "Store::append_results on the calling thread (each call fsynced), then \
             apply_pending; median of {} pair(s); on/off = time ratio",
            params.repeats
        ),
    );
    let node = node_id(0);
    for &per_call in &params.per_call {
        let per_call = per_call.max(1);
        let n = if per_call == 1 {
            params.single_records
        } else {
            params.records
        };
        let records = Records::new(1, &node, n, BASE_MS, 6 * HOUR_MS).all();
        let plural = if per_call == 1 { "" } else { "s" };
        let name = format!("{per_call} record{plural}/call, {n} records");
        eprintln!("ingest: {name}, {} pair(s)", params.repeats);
        let mut acked = Row::new(
            SECTION,
            format!("ingest.b{per_call}.acked"),
            format!("{name}: acknowledged"),
            "records/s",
        );
        let mut applied = Row::new(
            SECTION,
            format!("ingest.b{per_call}.applied"),
            format!("{name}: acknowledged + applied"),
            "records/s",
        );
        let mut append_cpu = Row::new(
            SECTION,
            format!("ingest.b{per_call}.append_cpu_us"),
            format!("{name}: CPU per record, append"),
            "us",
        );
        let mut total_cpu = Row::new(
            SECTION,
            format!("ingest.b{per_call}.total_cpu_us"),
            format!("{name}: CPU per record, append + apply"),
            "us",
        );
        let per_record = |cpu: Duration| cpu.as_secs_f64() * 1e6 / n as f64;
        alternate(params, |_, on, counted| {
            let dir = tempfile::tempdir_in(&params.dir).expect("temp dir");
            let mut config = StoreConfig::new(MESH, &node);
            config.encryption = on.then(Key::generate);
            let mut store = Store::open(&dir.path().join("store.redb"), config).expect("open");
            assert_eq!(store.encrypted(), on, "encryption is as asked");
            let clock = Stopwatch::start();
            for call in records.chunks(per_call) {
                store.append_results(call).expect("durable append");
            }
            let ack = clock.elapsed();
            let folded = store.apply_pending(usize::MAX).expect("apply");
            let all = clock.elapsed();
            assert_eq!(folded, n, "every record folded");
            if counted {
                acked.push(on, rate(n, ack.wall));
                applied.push(on, rate(n, all.wall));
                append_cpu.push(on, per_record(ack.cpu));
                total_cpu.push(on, per_record(all.cpu));
            }
        });
        report.add(acked);
        report.add(applied);
        report.add(append_cpu);
        report.add(total_cpu);
    }
}

// ---------------------------------------------------------------------------------------------
// signatures: what the node's write rules verify, with the crypto of the real rules

/// A stand-in for a node certificate issued by the mesh CA: the node id, its role and its
/// public key, signed by the CA key. The node's rules (`rhizome::security::workflow_rights`)
/// verify an X.509 certificate's Ed25519 signature by the CA, then the version's Ed25519
/// signature by the node key: the same two verifications, without the X.509 parsing.
struct Signer {
    node: String,
    role: &'static str,
    key: Ed25519KeyPair,
    cert: String,
}

impl Signer {
    fn new(ca: &Ed25519KeyPair, node: &str, role: &'static str, seed: u8) -> Signer {
        let key = Ed25519KeyPair::from_seed_unchecked(&[seed; 32]).expect("an ed25519 seed");
        let body = format!(
            "rhizome bench certificate v1\nnode {node}\nrole {role}\nkey {}\n",
            hex::encode(key.public_key().as_ref())
        );
        let signature = hex::encode(ca.sign(body.as_bytes()).as_ref());
        Signer {
            node: node.to_owned(),
            role,
            key,
            cert: format!("{body}ca-signature {signature}"),
        }
    }

    /// Signs a version as the node's API does before applying it.
    fn sign(&self, version: &mut WorkflowDoc) {
        version.updated_by = self.node.clone();
        version.by_control = self.role == "control";
        version.author_cert = self.cert.clone();
        version.signature = String::new();
        version.signature = hex::encode(self.key.sign(version.signed_text().as_bytes()).as_ref());
    }
}

/// Takes a workflow version only when signed by a `control` node of this mesh's CA.
#[derive(Debug)]
struct ControlSigned {
    ca_public: Vec<u8>,
}

impl WriteRules for ControlSigned {
    fn check_workflow_version(
        &self,
        version: &WorkflowDoc,
        _registry: &MeshRegistry,
    ) -> Result<(), String> {
        if version.signature.is_empty() || version.author_cert.is_empty() {
            return Err("it is not signed".into());
        }
        let (body, ca_signature) = version
            .author_cert
            .rsplit_once("ca-signature ")
            .ok_or("the certificate carries no CA signature")?;
        let ca_signature = hex::decode(ca_signature).map_err(|_| "the CA signature is not hex")?;
        UnparsedPublicKey::new(&ED25519, &self.ca_public)
            .verify(body.as_bytes(), &ca_signature)
            .map_err(|_| "the certificate was not issued by this mesh's CA")?;
        let field = |name: &str| {
            body.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
                .ok_or_else(|| format!("the certificate has no {name}"))
        };
        let (node, role) = (field("node")?, field("role")?);
        let key = hex::decode(field("key")?).map_err(|_| "the key is not hex")?;
        let signature = hex::decode(&version.signature).map_err(|_| "the signature is not hex")?;
        UnparsedPublicKey::new(&ED25519, &key)
            .verify(version.signed_text().as_bytes(), &signature)
            .map_err(|_| "the signature is not the certificate key's over this content")?;
        if node != version.updated_by {
            return Err(format!(
                "it names {} as its writer but is signed by {node}",
                version.updated_by
            ));
        }
        if role != "control" || !version.by_control {
            return Err(format!("its writer holds the `{role}` role, not `control`"));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// sync: the source's documents

/// What the source store A holds, built the same way into each copy of it.
struct Dataset {
    /// A's node id: the owner of its results.
    node: String,
    records: Vec<RunRecord>,
    /// Each workflow's versions, in the order they were applied.
    workflows: Vec<Vec<WorkflowDoc>>,
    /// The registry as every other node wrote its own entry; merged into each copy of A.
    registry: Store,
    /// A's own registry entry.
    own_entry: NodeEntry,
    ca_public: Vec<u8>,
    /// A member node that writes a workflow version, which the rules must refuse.
    rogue: Signer,
}

fn entry(i: usize) -> NodeEntry {
    NodeEntry {
        name: format!("edge-{i:04}"),
        zone: format!("{ZONE}/line-{}", i % 5),
        tags: vec!["sensor".into(), format!("line-{}", i % 5)],
        capabilities: if i.is_multiple_of(4) {
            vec!["onnx".into()]
        } else {
            Vec::new()
        },
        addresses: vec![
            format!("10.0.{}.{}:4860", i / 256, i % 256),
            format!("[fd00::{i:x}]:4860"),
        ],
        version: env!("CARGO_PKG_VERSION").into(),
        ca: "5f1c0e7a9b3d2c41".into(),
        ..NodeEntry::default()
    }
}

fn workflow_version(i: usize, version: u64) -> WorkflowDoc {
    let step = |agent: &str, config: &str, inputs: &[&str], when: Option<&str>| StepDef {
        agent: agent.into(),
        config: config.into(),
        inputs: inputs.iter().map(|s| (*s).to_owned()).collect(),
        when: when.map(str::to_owned),
        timeout_ms: 5_000,
        retries: 2,
        backoff_ms: 500,
    };
    WorkflowDoc {
        id: format!("wf-{i:02}"),
        version,
        description: format!(
            "reads the sensors of line {}, scores them and publishes anomalies (v{version})",
            i % 5
        ),
        trigger: "every 30s".into(),
        target: Target {
            nodes: Vec::new(),
            tags: vec!["sensor".into()],
            zones: vec![format!("{ZONE}/line-{}", i % 5)],
        },
        steps: BTreeMap::from([
            (
                "read".into(),
                step(
                    "modbus",
                    r#"{"host":"10.1.0.7","register":40001,"count":4}"#,
                    &[],
                    None,
                ),
            ),
            (
                "score".into(),
                step(
                    "onnx",
                    r#"{"model":"anomaly-v3.onnx","threshold":3.0}"#,
                    &["read"],
                    None,
                ),
            ),
            (
                "publish".into(),
                step(
                    "mqtt",
                    r#"{"topic":"plant/anomalies","qos":1}"#,
                    &["score"],
                    Some("score.z > 3"),
                ),
            ),
        ]),
        timeout_ms: 30_000,
        max_concurrent: 1,
        updated_ms: BASE_MS + version as i64 * 60_000,
        ..WorkflowDoc::default()
    }
}

fn bench_config(node: &str, key: Option<Key>) -> StoreConfig {
    let mut config = StoreConfig::new(MESH, node);
    // Both copies of A then hold the same changes, byte for byte.
    config.change_time = ChangeTime::Zero;
    config.encryption = key;
    config
}

impl Dataset {
    fn new(params: &Params) -> Dataset {
        let node = node_id(0);
        let total = params.windows * params.window_records;
        let records = Records::new(2, &node, total, BASE_MS, params.windows as i64 * HOUR_MS).all();
        let ca = Ed25519KeyPair::from_seed_unchecked(&[0xca; 32]).expect("an ed25519 seed");
        let control = Signer::new(&ca, &node_id(10_000), "control", 1);
        let rogue = Signer::new(&ca, &node_id(10_001), "member", 2);
        let workflows = (0..params.workflows)
            .map(|i| {
                (1..=params.versions as u64)
                    .map(|v| {
                        let mut version = workflow_version(i, v);
                        control.sign(&mut version);
                        version
                    })
                    .collect()
            })
            .collect();
        let mut registry =
            Store::open_in_memory(bench_config(&node_id(20_000), None)).expect("open");
        for i in 1..params.registry_nodes {
            let id = node_id(i as u64);
            let mut writer = Store::open_in_memory(bench_config(&id, None)).expect("open");
            writer
                .update::<MeshRegistry, _>(&DocName::Mesh, |m| {
                    m.write_entry(&id, entry(i), BASE_MS);
                })
                .expect("a registry entry");
            if let Some(refused) = sync_doc(
                (&mut writer, &id),
                (&mut registry, "registry"),
                &DocName::Mesh,
            ) {
                panic!("an entry by its own node refused: {refused}");
            }
        }
        Dataset {
            node,
            records,
            workflows,
            registry,
            own_entry: entry(0),
            ca_public: ca.public_key().as_ref().to_vec(),
            rogue,
        }
    }

    /// A copy of the source store, built as a node builds it: results appended and folded in
    /// batches, workflow versions applied one after the other, the registry as it arrives from
    /// the other nodes plus A's own entry.
    fn build(&mut self, params: &Params, path: &Path, key: Option<Key>) -> Store {
        let mut store = Store::open(path, bench_config(&self.node, key)).expect("open");
        for batch in self.records.chunks(params.build_batch) {
            store.append_results(batch).expect("durable append");
            store.apply_pending(usize::MAX).expect("apply");
        }
        for versions in &self.workflows {
            let name = DocName::workflow(&versions[0].id).expect("a workflow name");
            for version in versions {
                store
                    .update::<WorkflowDoc, _>(&name, |w| *w = version.clone())
                    .expect("a workflow version");
            }
        }
        let node = self.node.clone();
        if let Some(refused) = sync_doc(
            (&mut self.registry, "registry"),
            (&mut store, &node),
            &DocName::Mesh,
        ) {
            panic!("the registry refused: {refused}");
        }
        store
            .update::<MeshRegistry, _>(&DocName::Mesh, |m| {
                m.write_entry(&node, self.own_entry.clone(), BASE_MS);
            })
            .expect("A's own entry");
        store
            .merge_heads::<MeshRegistry>(&DocName::Mesh)
            .expect("merging the registry's heads");
        store.flush().expect("flush");
        store
    }
}

/// Runs sync sessions between two stores over one document, generate and apply directly,
/// until neither has anything to say; the first refusal, if any.
fn sync_doc(
    from: (&mut Store, &str),
    to: (&mut Store, &str),
    name: &DocName,
) -> Option<SyncRejected> {
    let ((from, from_id), (to, to_id)) = (from, to);
    let doc = from.document_id(name);
    for _ in 0..16 {
        let there = match send_one((&mut *from, from_id), (&mut *to, to_id), &doc, name) {
            Ok(sent) => sent,
            Err(refused) => return Some(refused),
        };
        let back = match send_one((&mut *to, to_id), (&mut *from, from_id), &doc, name) {
            Ok(sent) => sent,
            Err(refused) => return Some(refused),
        };
        if !there && !back {
            return None;
        }
    }
    panic!("sync of {name} did not settle");
}

/// One sync message about `doc` from `from` applied by `to`; whether there was one to send.
fn send_one(
    from: (&mut Store, &str),
    to: (&mut Store, &str),
    doc: &crdt_store::samod_core::DocumentId,
    name: &DocName,
) -> Result<bool, SyncRejected> {
    let ((from, from_id), (to, to_id)) = (from, to);
    let Some(payload) = from.sync_generate(doc, to_id).expect("generate") else {
        return Ok(false);
    };
    let outcome = to
        .sync_apply(vec![SyncApply {
            doc: doc.clone(),
            peer: from_id.into(),
            name: Some(name.to_string()),
            payload,
            sender: crdt_store::Sender::Peer,
        }])
        .expect("apply");
    match outcome.into_iter().next() {
        Some(Err(refused)) => Err(refused),
        _ => Ok(true),
    }
}

// ---------------------------------------------------------------------------------------------
// sync: two replicators and an in-process link

/// Two stores, each with its replication machine, and a FIFO link between them. Index 0 is
/// the source A, 1 the receiver B.
struct Pair<'s> {
    ids: [String; 2],
    stores: [&'s mut Store; 2],
    syncs: [Replicator; 2],
    /// Frames on their way to each side.
    inbox: [VecDeque<Message>; 2],
    /// Virtual time: it moves only when the link is quiet, to the next replicator timer.
    now: Duration,
}

impl<'s> Pair<'s> {
    /// The replicators know their stores' documents and that B aggregates A's zone (so A's
    /// results are shared with B); nothing is connected yet.
    fn new(a: (&'s mut Store, &str), b: (&'s mut Store, &str)) -> Pair<'s> {
        let ids = [a.1.to_owned(), b.1.to_owned()];
        let mut policy = SharePolicy::default();
        for id in &ids {
            policy.zone_of.insert(id.clone(), ZONE.into());
        }
        policy.aggregator_of.insert(ZONE.into(), ids[1].clone());
        let mut pair = Pair {
            syncs: ids
                .clone()
                .map(|id| Replicator::new(id, SyncConfig::default())),
            ids,
            stores: [a.0, b.0],
            inbox: [VecDeque::new(), VecDeque::new()],
            now: Duration::ZERO,
        };
        for side in 0..2 {
            let entries = pair.stores[side]
                .sync_catalogue()
                .expect("catalogue")
                .iter()
                .map(CatalogueItem::to_entry)
                .collect();
            pair.input(side, SyncIn::LocalDocs(entries));
            pair.input(side, SyncIn::Policy(policy.clone()));
        }
        pair
    }

    fn connect(&mut self) {
        for side in 0..2 {
            let peer = self.ids[1 - side].clone();
            self.input(side, SyncIn::PeerUp(peer));
        }
    }

    fn input(&mut self, side: usize, event: SyncIn) {
        self.syncs[side].handle(event, self.now);
        self.settle(side);
    }

    /// Carries out what a side's replicator asks for until it asks for nothing more: store
    /// work now, frames onto the link.
    fn settle(&mut self, side: usize) {
        loop {
            let ops = self.syncs[side].drain();
            if ops.is_empty() {
                return;
            }
            let (served, failure) = serve(&mut *self.stores[side], ops);
            if let Some(e) = failure {
                panic!("the store of {} failed: {e}", self.ids[side]);
            }
            for answer in served.answers {
                if let SyncIn::Applied {
                    outcome: Err(e), ..
                } = &answer
                {
                    panic!("{} refused a message: {}", self.ids[side], e.reason);
                }
                self.syncs[side].handle(answer, self.now);
            }
            for out in served.network {
                match out {
                    SyncOut::Send(_, message) => self.inbox[1 - side].push_back(message),
                    SyncOut::Close(peer, why) => panic!("{} closed {peer}: {why}", self.ids[side]),
                    _ => unreachable!("serve leaves only network outputs"),
                }
            }
        }
    }

    /// Delivers frames until the link is quiet and both stores hold the same heads of every
    /// document. Each side takes everything that has arrived for it at once, as a driver
    /// that reads its connection between two store batches.
    fn run(&mut self) {
        for _ in 0..100_000 {
            let busy = (0..2).find(|side| !self.inbox[*side].is_empty());
            let Some(side) = busy else {
                if self.converged() {
                    return;
                }
                let next = (0..2)
                    .filter_map(|side| Some((self.syncs[side].poll_timeout(self.now)?, side)))
                    .min();
                let Some((at, side)) = next else {
                    panic!("the link is quiet, no timer is set, and the stores differ");
                };
                self.now = self.now.max(at);
                self.syncs[side].handle_timeout(self.now);
                self.settle(side);
                continue;
            };
            let from = self.ids[1 - side].clone();
            let frames: Vec<Message> = self.inbox[side].drain(..).collect();
            for message in frames {
                self.syncs[side].handle(SyncIn::Received(from.clone(), message), self.now);
            }
            self.settle(side);
        }
        panic!("the link did not go quiet");
    }

    fn converged(&mut self) -> bool {
        let [a, b] = &self.stores;
        a.sync_catalogue().expect("catalogue") == b.sync_catalogue().expect("catalogue")
    }
}

// ---------------------------------------------------------------------------------------------
// sync: workloads

struct SyncRows {
    full: Row,
    full_cpu: Row,
    /// Only where the feature is A's too.
    append: Option<Row>,
    incremental: Row,
    incremental_cpu: Row,
}

impl SyncRows {
    fn new(section: &'static str, key: &str, params: &Params, a_differs: bool) -> SyncRows {
        let inc = params.increment;
        let row = |id: &str, label: String, unit| {
            Row::new(section, format!("sync.{key}.{id}"), label, unit)
        };
        let full = "fresh B pulls everything, until identical and flushed";
        let incremental = format!("then B gets {inc} new records of A, until identical");
        SyncRows {
            full: row("full_ms", full.into(), "ms"),
            full_cpu: row("full_cpu_ms", format!("{full}: CPU"), "ms"),
            append: a_differs.then(|| {
                row(
                    "increment_append_ms",
                    format!("A appends and folds those {inc} records"),
                    "ms",
                )
            }),
            incremental: row("increment_sync_ms", incremental.clone(), "ms"),
            incremental_cpu: row("increment_sync_cpu_ms", format!("{incremental}: CPU"), "ms"),
        }
    }

    fn push(&mut self, on: bool, run: &SyncRun) {
        self.full.push(on, ms(run.full.wall));
        self.full_cpu.push(on, ms(run.full.cpu));
        if let Some(append) = &mut self.append {
            append.push(on, ms(run.append.wall));
        }
        self.incremental.push(on, ms(run.incremental.wall));
        self.incremental_cpu.push(on, ms(run.incremental.cpu));
    }

    fn add_to(self, report: &mut Report) {
        report.add(self.full);
        report.add(self.full_cpu);
        if let Some(append) = self.append {
            report.add(append);
        }
        report.add(self.incremental);
        report.add(self.incremental_cpu);
    }
}

/// What B is, for one run.
struct Receiver {
    id: String,
    key: Option<Key>,
    rules: Option<Arc<dyn WriteRules>>,
}

/// One run: a fresh B on disk pulls everything from A, then the increment.
struct SyncRun {
    full: Span,
    append: Span,
    incremental: Span,
}

fn sync_run(
    params: &Params,
    a: &mut Store,
    a_id: &str,
    b_path: &Path,
    receiver: Receiver,
    seed: u64,
    check: impl FnOnce(&mut Store),
) -> SyncRun {
    let encrypted = receiver.key.is_some();
    let b_id = receiver.id.as_str();
    let mut config = bench_config(b_id, receiver.key);
    config.write_rules = receiver.rules;
    let mut b = Store::open(b_path, config).expect("open B");
    assert_eq!(b.encrypted(), encrypted, "B's encryption is as asked");
    assert_eq!(
        b.key_status().expect("key status").is_some(),
        encrypted,
        "B holds a data key when encrypted"
    );

    let clock = Stopwatch::start();
    let mut pair = Pair::new((&mut *a, a_id), (&mut b, b_id));
    pair.connect();
    pair.run();
    pair.stores[1].flush().expect("flush B");
    let full = clock.elapsed();

    // All in the last window, as the newest results of a node are.
    let last_window = BASE_MS + params.windows as i64 * HOUR_MS;
    let records = Records::new(
        seed,
        a_id,
        params.increment,
        last_window - 10 * 60_000,
        5 * 60_000,
    )
    .all();
    // A node's change listener feeds its replicator what changed.
    let heard = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&heard);
    pair.stores[0].set_change_listener(move |entry| sink.lock().expect("listener").push(entry));
    let clock = Stopwatch::start();
    pair.stores[0]
        .append_results(&records)
        .expect("durable append");
    pair.stores[0].apply_pending(usize::MAX).expect("apply");
    let append = clock.elapsed();
    let clock = Stopwatch::start();
    let changed = std::mem::take(&mut *heard.lock().expect("listener"));
    assert!(!changed.is_empty(), "A's listener heard of the new records");
    for entry in changed {
        pair.input(0, SyncIn::LocalChanged(entry));
    }
    pair.run();
    pair.stores[1].flush().expect("flush B");
    let incremental = clock.elapsed();
    drop(pair);
    check(&mut b);
    SyncRun {
        full,
        append,
        incremental,
    }
}

/// The median time of 5 calls of `f`.
fn median_ms(f: &mut dyn FnMut()) -> f64 {
    let mut times = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        f();
        times.push(ms(start.elapsed()));
    }
    median(times)
}

/// The parts of the receiver's checks, replayed one at a time on B's documents after a run
/// (median of 5 each), to tell where the time of the `on` side goes.
fn check_parts(b: &mut Store, params: &Params, a_id: &str, rules: &dyn WriteRules) -> Vec<Detail> {
    let registry_read = median_ms(&mut || {
        b.read::<MeshRegistry>(&DocName::Mesh)
            .expect("the registry");
    });
    let registry = b
        .read::<MeshRegistry>(&DocName::Mesh)
        .expect("the registry");
    let mut versions = Vec::new();
    for i in 0..params.workflows {
        let name = DocName::workflow(&format!("wf-{i:02}")).expect("a workflow name");
        versions.push(b.read::<WorkflowDoc>(&name).expect("a workflow"));
    }
    let verify = median_ms(&mut || {
        for version in &versions {
            rules
                .check_workflow_version(version, &registry)
                .expect("a version signed by the control node");
        }
    }) / versions.len().max(1) as f64;
    let window = Window::containing(BASE_MS, 60);
    let results = b.document_id(&DocName::results(a_id, window).expect("a results name"));
    let mut doc = b.automerge(&results).expect("a results document");
    let changes = median_ms(&mut || {
        doc.get_changes(&[]);
    });
    let (n, w, r) = (
        registry.nodes.len(),
        params.workflows,
        params.window_records,
    );
    vec![
        Detail {
            id: "sync.rules.part.registry_read_ms".into(),
            label: format!("on: registry read ({n} entries), x {w} workflow docs"),
            value: registry_read * w as f64,
            unit: "ms",
        },
        Detail {
            id: "sync.rules.part.verify_ms".into(),
            label: format!("on: signatures verified, x {w} versions"),
            value: verify * w as f64,
            unit: "ms",
        },
        Detail {
            id: "sync.rules.part.results_changes_ms".into(),
            label: format!(
                "always: changes listed, x {} results docs of {r}",
                params.windows
            ),
            value: changes * params.windows as f64,
            unit: "ms",
        },
    ]
}

fn sync(params: &Params, report: &mut Report) {
    const ENCRYPTION: &str = "Sync A -> fresh B, encryption at rest off vs on (both stores)";
    const RULES: &str = "Sync A -> fresh B, write rules on B None vs Some";
    let total = params.windows * params.window_records;
    let shape = format!(
        "A: {} results document(s) x {} records ({total} records), {} workflow(s) x {} signed \
         version(s), a registry of {} entries; median of {} pair(s); on/off = time ratio",
        params.windows,
        params.window_records,
        params.workflows,
        params.versions,
        params.registry_nodes,
        params.repeats
    );
    report.note(ENCRYPTION, shape.clone());
    report.note(RULES, shape);
    report.note(
        RULES,
        "off still checks results and registry authors by actor (always on); on adds the \
         signature check of every workflow version (2 Ed25519 verifications each)"
            .into(),
    );

    eprintln!("sync: building the documents");
    let mut data = Dataset::new(params);
    let dir = tempfile::tempdir_in(&params.dir).expect("temp dir");
    eprintln!("sync: building A twice ({total} records each), plain and encrypted");
    let start = Instant::now();
    let mut a_plain = data.build(params, &dir.path().join("a-plain.redb"), None);
    let mut a_sealed = data.build(
        params,
        &dir.path().join("a-sealed.redb"),
        Some(Key::generate()),
    );
    assert!(!a_plain.encrypted() && a_sealed.encrypted());
    assert_eq!(
        a_plain.sync_catalogue().expect("catalogue"),
        a_sealed.sync_catalogue().expect("catalogue"),
        "both copies of A hold the same changes"
    );
    eprintln!(
        "  built in {:.1}s: {} documents",
        start.elapsed().as_secs_f64(),
        a_plain.sync_catalogue().expect("catalogue").len()
    );
    let a_id = data.node.clone();

    // The rogue member's version of the first workflow, to offer to B once per rules setting.
    let mut rogue = Store::open_in_memory(bench_config(&data.rogue.node, None)).expect("open");
    let workflow = DocName::workflow(&data.workflows[0][0].id).expect("a workflow name");
    assert!(sync_doc((&mut a_plain, &a_id), (&mut rogue, "rogue"), &workflow).is_none());
    let mut forged = data.workflows[0].last().expect("a version").clone();
    forged.version += 1;
    forged.trigger = "every 1s".into();
    data.rogue.sign(&mut forged);
    rogue
        .update::<WorkflowDoc, _>(&workflow, |w| *w = forged.clone())
        .expect("the rogue's version");
    let rogue_id = data.rogue.node.clone();
    let mut offer_forged = |b: &mut Store, b_id: &str| -> Option<SyncRejected> {
        sync_doc((&mut rogue, &rogue_id), (b, b_id), &workflow)
    };

    let rules: Arc<dyn WriteRules> = Arc::new(ControlSigned {
        ca_public: data.ca_public.clone(),
    });
    let mut runs = 0u64;
    let mut next_b = || {
        runs += 1;
        (node_id(30_000 + runs), 1_000 + runs)
    };

    eprintln!(
        "sync: encryption off vs on, {} pair(s) after {} warm-up pair(s)",
        params.repeats, params.warmup
    );
    let mut rows = SyncRows::new(ENCRYPTION, "encryption", params, true);
    alternate(params, |_, on, counted| {
        let (b_id, seed) = next_b();
        let b_dir = tempfile::tempdir_in(&params.dir).expect("temp dir");
        let a = if on { &mut a_sealed } else { &mut a_plain };
        let receiver = Receiver {
            id: b_id,
            key: on.then(Key::generate),
            rules: None,
        };
        let run = sync_run(
            params,
            a,
            &a_id,
            &b_dir.path().join("b.redb"),
            receiver,
            seed,
            |_| {},
        );
        if counted {
            rows.push(on, &run);
        }
    });
    rows.add_to(report);

    eprintln!(
        "sync: write rules off vs on, {} pair(s) after {} warm-up pair(s)",
        params.repeats, params.warmup
    );
    let mut rows = SyncRows::new(RULES, "rules", params, false);
    let mut checked = [false, false];
    let mut parts = Vec::new();
    alternate(params, |_, on, counted| {
        let (b_id, seed) = next_b();
        let b_dir = tempfile::tempdir_in(&params.dir).expect("temp dir");
        let receiver = Receiver {
            id: b_id.clone(),
            key: None,
            rules: on.then(|| rules.clone()),
        };
        let check = |b: &mut Store| {
            if std::mem::replace(&mut checked[on as usize], true) {
                return;
            }
            if on {
                parts = check_parts(b, params, &a_id, rules.as_ref());
            }
            // Outside the timed part: the rules really run (a member's version is refused),
            // and without them the same version is taken.
            match offer_forged(b, &b_id) {
                Some(SyncRejected::Unauthorized { reason, .. }) if on => {
                    eprintln!("  with rules, a member's workflow version is refused: {reason}");
                }
                None if !on => {
                    eprintln!("  without rules, the same version is taken");
                }
                other => panic!("rules {on}: the forged version gave {other:?}"),
            }
        };
        let run = sync_run(
            params,
            &mut a_plain,
            &a_id,
            &b_dir.path().join("b.redb"),
            receiver,
            seed,
            check,
        );
        if counted {
            rows.push(on, &run);
        }
    });
    assert_eq!(checked, [true, true], "both settings were checked");
    rows.add_to(report);
    for part in parts {
        report.detail(RULES, part);
    }
}

fn main() {
    let params = Params::from_env();
    std::fs::create_dir_all(&params.dir).expect("creating the data directory");
    let mut report = Report::create(&params);
    let fs = fs_type(&params.dir).unwrap_or_else(|| "unknown file system".into());
    eprintln!(
        "security cost bench: data in {} ({fs}), figures to {}",
        params.dir.display(),
        params.out.display()
    );
    if fs == "tmpfs" || fs == "ramfs" {
        eprintln!("warning: the data directory is in memory, so fsync costs nothing here");
    }
    let start = Instant::now();
    let before = fsync_probe(&params.dir);
    eprintln!("4 KiB write + fdatasync: {:.3} ms", ms(before));
    if params.runs("ingest") {
        ingest(&params, &mut report);
    }
    if params.runs("sync") {
        sync(&params, &mut report);
    }
    let after = fsync_probe(&params.dir);
    eprintln!("done in {:.0}s", start.elapsed().as_secs_f64());
    let disk = format!(
        "4 KiB write + fdatasync in the data directory, median of 64: {:.3} ms before the run, \
         {:.3} ms after",
        ms(before),
        ms(after)
    );
    report.write_line(&serde_json::json!({
        "bench": "security_cost",
        "run": report.run,
        "kind": "disk",
        "fsync_ms_before": ms(before),
        "fsync_ms_after": ms(after),
    }));
    println!("{disk}");
    report.print_tables();
}
