//! Appends result records to a store from several threads until it is killed, printing `open`
//! once the store is open and then `ack <run_id>` for every record whose append was acknowledged.
//!
//! Usage: `crash-writer --store PATH --node NODE --start N`. Runs are numbered from `N`; the
//! records are `rhizome_e2e::crash::record(NODE, n)`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crdt_store::{Store, StoreHandle};
use rhizome_e2e::crash;

const USAGE: &str = "usage: crash-writer --store PATH --node NODE --start N";

/// Concurrent appenders, so that the store thread groups appends into shared commits.
const THREADS: usize = 4;

/// Records per append, cycled through by each thread from a different offset: mostly single
/// records, as runs finish one at a time, with some small batches.
const BATCH_SIZES: [u64; 7] = [1, 1, 3, 1, 2, 1, 5];

struct Args {
    store: PathBuf,
    node: String,
    start: u64,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let (mut store, mut node, mut start) = (None, None, None);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--store" => store = Some(PathBuf::from(value)),
            "--node" => node = Some(value),
            "--start" => start = Some(value.parse().map_err(|e| format!("--start {value}: {e}"))?),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(Args {
        store: store.ok_or("--store is required")?,
        node: node.ok_or("--node is required")?,
        start: start.ok_or("--start is required")?,
    })
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("crash-writer: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let store = match Store::open(&args.store, crash::config(&args.node)) {
        Ok(store) => store,
        Err(e) => {
            eprintln!("crash-writer: opening {}: {e}", args.store.display());
            return ExitCode::FAILURE;
        }
    };
    // Tells the test whether a kill landed before or after opening (and recovering) the store.
    if writeln!(std::io::stdout().lock(), "open").is_err() {
        return ExitCode::FAILURE;
    }
    let handle = StoreHandle::spawn(store);
    let args = Arc::new(args);
    let next = Arc::new(AtomicU64::new(args.start));
    let writers: Vec<_> = (0..THREADS)
        .map(|t| {
            let (handle, args, next) = (handle.clone(), args.clone(), next.clone());
            std::thread::spawn(move || {
                let error = append_forever(t, &handle, &args.node, &next);
                // Exit at once: a writer that keeps going with fewer threads would hide this.
                eprintln!("crash-writer: {error}");
                std::process::exit(1);
            })
        })
        .collect();
    for writer in writers {
        if writer.join().is_err() {
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

/// Appends until an append or the output fails, and returns why.
fn append_forever(thread: usize, handle: &StoreHandle, node: &str, next: &AtomicU64) -> String {
    for size in BATCH_SIZES.iter().cycle().skip(thread) {
        let first = next.fetch_add(*size, Ordering::Relaxed);
        let records: Vec<_> = (first..first + size)
            .map(|n| crash::record(node, n))
            .collect();
        let mut acks = String::new();
        for record in &records {
            acks.push_str("ack ");
            acks.push_str(&record.run_id);
            acks.push('\n');
        }
        if let Err(e) = handle.append(records).wait() {
            return format!("appending runs {first}..{}: {e}", first + size);
        }
        // One write per batch under the lock: lines from different threads never interleave.
        let mut out = std::io::stdout().lock();
        if let Err(e) = out.write_all(acks.as_bytes()).and_then(|()| out.flush()) {
            return format!("writing acks: {e}");
        }
    }
    unreachable!("the batch sizes cycle forever")
}
