//! The export's throughput, for `bench/export.sh`: records N run records in a fresh store (not
//! timed), then exports them into PostgreSQL with the node's exporter (timed: store reads,
//! row mapping, upserts and checkpoints, as a running node does it), and writes the same rows
//! as CSV for PostgreSQL's own `COPY`, the ceiling the script times beside it.
//!
//! `export_bench --postgres URL [--runs N] [--method values|copy] [--batch B] [--csv FILE]`
//! prints one line of `key=value` figures.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crdt_store::{RunRecord, RunStatus, StepRecord, Store, StoreConfig, StoreHandle};
use rhizome::export::{ExportHandle, Exporter, Method, Settings};

/// 2026-01-01T00:00Z; run `n` finishes `n` seconds later (one-hour windows of 3,600 runs).
const BASE_MS: i64 = 1_767_225_600_000;

fn record(n: u64) -> RunRecord {
    let finished_ms = BASE_MS + n as i64 * 1000;
    let value = 20.0 + (n % 50) as f64 / 10.0;
    let anomaly = n.is_multiple_of(97);
    let steps = vec![
        StepRecord {
            step: "read".into(),
            status: RunStatus::Succeeded,
            started_ms: finished_ms - 3,
            duration_us: 900,
            attempts: 1,
            output: format!("{{\"value\":{value}}}"),
            error: None,
        },
        StepRecord {
            step: "score".into(),
            status: RunStatus::Succeeded,
            started_ms: finished_ms - 2,
            duration_us: 1200,
            attempts: 1,
            output: format!("{{\"value\":{value},\"z\":0.4,\"anomaly\":{anomaly}}}"),
            error: None,
        },
    ];
    RunRecord {
        run_id: format!("bench-{n}"),
        workflow: "sensor-zscore".into(),
        workflow_version: 1,
        node: "bench-node".into(),
        started_ms: finished_ms - 3,
        finished_ms,
        status: RunStatus::Succeeded,
        output: steps[1].output.clone(),
        error: None,
        steps,
    }
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// A CSV field, quoted (`""` inside); `None` is the empty unquoted field, COPY's NULL.
fn csv(field: Option<&str>) -> String {
    match field {
        None => String::new(),
        Some(text) => format!("\"{}\"", text.replace('"', "\"\"")),
    }
}

fn write_csv(path: &str, records: &[RunRecord]) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for r in records {
        let output = (!r.output.is_empty()).then_some(r.output.as_str());
        let steps = serde_json::to_string(&r.steps).expect("steps encode");
        let line = [
            csv(Some(&r.node)),
            csv(Some(&r.run_id)),
            csv(Some(&r.workflow)),
            r.workflow_version.to_string(),
            csv(Some(r.status.as_str())),
            csv(Some(&crdt_store::format_timestamp(r.started_ms))),
            csv(Some(&crdt_store::format_timestamp(r.finished_ms))),
            (r.finished_ms - r.started_ms).to_string(),
            csv(output),
            csv(r.error.as_deref()),
            csv(Some(&steps)),
        ]
        .join(",");
        writeln!(out, "{line}")?;
    }
    out.flush()
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let postgres = arg(&args, "--postgres").expect("--postgres URL");
    let runs: u64 = arg(&args, "--runs").map_or(200_000, |n| n.parse().expect("--runs N"));
    let batch: usize = arg(&args, "--batch").map_or(1000, |n| n.parse().expect("--batch B"));
    let method = match arg(&args, "--method").as_deref() {
        None | Some("values") => Method::Values,
        Some("copy") => Method::Copy,
        Some(other) => panic!("--method {other}: values or copy"),
    };

    let records: Vec<RunRecord> = (0..runs).map(record).collect();
    if let Some(path) = arg(&args, "--csv") {
        write_csv(&path, &records)?;
    }

    // The store, filled as ingest fills it (not timed).
    let dir = tempfile::tempdir()?;
    let mut config = StoreConfig::new("bench", "bench-node");
    config.results_window_minutes = 60;
    let started = Instant::now();
    let store = StoreHandle::spawn(Store::open(&dir.path().join("store.redb"), config)?);
    for chunk in records.chunks(crdt_store::MAX_GROUP_RECORDS) {
        store.append(chunk.to_vec()).wait()?;
    }
    store.call(|s| s.apply_pending(usize::MAX)).wait()?;
    let recorded = started.elapsed();
    drop(records);

    let section = rhizome::config::ExportSection {
        postgres,
        batch,
        ..rhizome::config::ExportSection::default()
    };
    let mut settings = Settings::from_section(&section)?.expect("configured");
    settings.method = method;
    let handle = ExportHandle::new(Some(&settings), "bench-node");
    let mut exporter = Exporter::new(
        settings,
        "bench-node".into(),
        store.clone(),
        handle.clone(),
        Arc::new(|_: &crdt_store::MeshRegistry| rhizome::export::rows::Facts::default()),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let took = runtime.block_on(async {
        let started = Instant::now();
        let mut db = exporter.connect().await?;
        loop {
            let pass = exporter.pass(&mut db).await?;
            if pass.documents == 0 && pass.left == 0 {
                break;
            }
        }
        anyhow::Ok(started.elapsed())
    })?;
    let status = handle.status();
    // The exporter holds a handle of the store: the store thread stops with the last one.
    drop(exporter);
    store.shutdown();
    let rate = |d: Duration| runs as f64 / d.as_secs_f64();
    println!(
        "method={method:?} runs={runs} batch={batch} recorded_s={:.2} export_s={:.3} \
         rows_per_s={:.0} rows_written={} transactions={}",
        recorded.as_secs_f64(),
        took.as_secs_f64(),
        rate(took),
        status.rows_exported,
        status.transactions
    );
    Ok(())
}
