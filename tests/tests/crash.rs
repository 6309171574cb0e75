//! Crash safety of the result log: a writer process is killed with SIGKILL at random moments
//! (during appends, grouped commits, folding of the log into documents, recovery on open), and
//! every record it acknowledged must be in the store afterwards, exactly once and intact.
//!
//! `RHIZOME_CRASH_ITERATIONS` sets the number of rounds (default 20) and `RHIZOME_CRASH_SEED` the
//! seed of the kill delays; `bench/crash-soak.sh` runs many more.

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Read};
use std::ops::RangeInclusive;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use crdt_store::{ResultsQuery, Store};
use rand::{Rng, SeedableRng, rngs::StdRng};
use rhizome_e2e::crash;

const NODE: &str = "edge-1";
const DEFAULT_ITERATIONS: usize = 20;
const DEFAULT_SEED: u64 = 20_260_101;

/// When the writer of a round is killed: mostly amid appends and the folding of the log.
const KILL_AFTER_MS: RangeInclusive<u64> = 20..=300;

/// The checker recovers the store itself when it opens it, so a kill never lands in that
/// recovery. In some rounds a second writer is therefore started straight on the crashed file and
/// killed early, often while it is still opening the store and folding the log.
const RECOVERY_KILL_CHANCE: f64 = 0.3;
const RECOVERY_KILL_AFTER_MS: RangeInclusive<u64> = 1..=60;

/// Where the second writer of a round starts numbering: far above anything the first can have
/// taken, since its in-flight runs are not known before the store is opened.
const RECOVERY_WRITER_OFFSET: u64 = 1_000_000;

/// Rounds against one store file before the next starts afresh. Every check reads the whole
/// store, so a single file for a long soak would make the run time quadratic in the rounds.
const ROUNDS_PER_STORE: usize = 25;

#[test]
fn acknowledged_results_survive_sigkill() {
    let iterations: usize = env_or("RHIZOME_CRASH_ITERATIONS", DEFAULT_ITERATIONS);
    let seed: u64 = env_or("RHIZOME_CRASH_SEED", DEFAULT_SEED);
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let began = Instant::now();

    let mut path = PathBuf::new();
    // Acknowledged runs of the current store file.
    let mut acked = BTreeSet::new();
    let mut unacked_stored = BTreeSet::<u64>::new();
    let (mut kills, mut kills_while_opening, mut total_acks) = (0, 0, 0);
    let mut start = 0;
    for iteration in 0..iterations {
        if iteration.is_multiple_of(ROUNDS_PER_STORE) {
            path = dir
                .path()
                .join(format!("store-{}.redb", iteration / ROUNDS_PER_STORE));
            acked.clear();
        }
        let mut delays = vec![(start, rng.gen_range(KILL_AFTER_MS))];
        if rng.gen_bool(RECOVERY_KILL_CHANCE) {
            delays.push((
                start + RECOVERY_WRITER_OFFSET,
                rng.gen_range(RECOVERY_KILL_AFTER_MS),
            ));
        }
        for &(first, delay) in &delays {
            let killed = run_writer_until_killed(&path, first, Duration::from_millis(delay));
            kills += 1;
            if !killed.opened {
                kills_while_opening += 1;
            }
            total_acks += killed.acks.len();
            for n in killed.acks {
                assert!(
                    n >= first && acked.insert(n),
                    "round {iteration}: run {n} acknowledged twice or outside its writer's range"
                );
            }
        }

        let delays: Vec<u64> = delays.iter().map(|&(_, delay)| delay).collect();
        let context = format!("round {iteration} (seed {seed}, kills after {delays:?} ms)");
        let checking = Instant::now();
        let stored = check_store(&path, &acked, &context);
        println!(
            "round {iteration}: kills after {delays:?} ms; {} runs acknowledged, {} stored, \
             checked in {:.1?}",
            acked.len(),
            stored.len(),
            checking.elapsed()
        );
        unacked_stored.extend(stored.difference(&acked).copied());
        // Runs in flight at a kill may or may not be stored; numbering past both keeps every
        // run id unique.
        let highest = stored.iter().chain(&acked).max();
        start = highest.map_or(start, |n| n + 1);
    }

    assert!(
        total_acks > 0,
        "no append was acknowledged in {kills} runs; the test proved nothing"
    );
    println!(
        "{kills} kills in {iterations} rounds ({kills_while_opening} before the store was open), \
         {total_acks} acknowledged results all present exactly once, {} unacknowledged ones \
         also stored; seed {seed}, {:.1?}",
        unacked_stored.len(),
        began.elapsed()
    );
}

/// What a writer reported before it was killed.
struct Killed {
    /// It had opened the store, and so finished recovering it.
    opened: bool,
    /// The run numbers it acknowledged.
    acks: Vec<u64>,
}

/// Starts a writer numbering its runs from `start` and kills it with SIGKILL after `delay`.
fn run_writer_until_killed(store: &Path, start: u64, delay: Duration) -> Killed {
    let mut child = Command::new(env!("CARGO_BIN_EXE_crash-writer"))
        .arg("--store")
        .arg(store)
        .args(["--node", NODE, "--start", &start.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting crash-writer");
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let output = std::thread::spawn(move || read_output(stdout));
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });

    std::thread::sleep(delay);
    let exited_early = child.try_wait().expect("polling crash-writer");
    // `Child::kill` sends SIGKILL on Unix: no destructor, flush or shutdown code runs.
    let _ = child.kill();
    let status = child.wait().expect("waiting for crash-writer");
    let killed = output.join().expect("reading crash-writer's output");
    let errors = errors.join().expect("reading crash-writer's errors");
    assert!(
        exited_early.is_none() && status.signal() == Some(libc::SIGKILL),
        "crash-writer ended by itself ({status}) after {} acks:\n{errors}",
        killed.acks.len()
    );
    killed
}

/// Reads the `open` and `ack <run_id>` lines. A line cut short by the kill has no newline and
/// is ignored.
fn read_output(stdout: impl Read) -> Killed {
    let mut reader = BufReader::new(stdout);
    let mut killed = Killed {
        opened: false,
        acks: Vec::new(),
    };
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => return killed,
            Ok(_) if !line.ends_with('\n') => return killed,
            Ok(_) => {}
            Err(e) => panic!("reading crash-writer's output: {e}"),
        }
        if line == "open\n" {
            killed.opened = true;
            continue;
        }
        let n = line
            .trim_end()
            .strip_prefix("ack ")
            .and_then(run_number)
            .unwrap_or_else(|| panic!("unexpected line from crash-writer: {line:?}"));
        killed.acks.push(n);
    }
}

fn run_number(run_id: &str) -> Option<u64> {
    run_id.strip_prefix(NODE)?.strip_prefix('-')?.parse().ok()
}

/// Opens the store as a restarted node would and checks that every acknowledged run is stored
/// exactly once and unaltered. Returns the stored run numbers.
fn check_store(path: &Path, acked: &BTreeSet<u64>, context: &str) -> BTreeSet<u64> {
    let mut store = Store::open(path, crash::config(NODE))
        .unwrap_or_else(|e| panic!("{context}: the store does not open after the kill: {e}"));
    assert_eq!(
        store.pending_results().unwrap(),
        0,
        "{context}: opening the store left logged results unapplied"
    );
    let records = store
        .results(&ResultsQuery::default())
        .unwrap_or_else(|e| panic!("{context}: listing results failed: {e}"));

    let mut copies: HashMap<u64, usize> = HashMap::new();
    for record in &records {
        let n = run_number(&record.run_id)
            .unwrap_or_else(|| panic!("{context}: unexpected run id {:?}", record.run_id));
        assert_eq!(
            *record,
            crash::record(NODE, n),
            "{context}: run {n} came back altered"
        );
        *copies.entry(n).or_default() += 1;
    }
    let duplicated: BTreeSet<u64> = copies
        .iter()
        .filter(|(_, c)| **c > 1)
        .map(|(n, _)| *n)
        .collect();
    assert!(
        duplicated.is_empty(),
        "{context}: {} runs are stored more than once, e.g. {:?}",
        duplicated.len(),
        duplicated.iter().take(10).collect::<Vec<_>>()
    );
    let missing: Vec<u64> = acked
        .iter()
        .filter(|n| !copies.contains_key(n))
        .copied()
        .collect();
    assert!(
        missing.is_empty(),
        "{context}: {} of {} acknowledged runs are lost, e.g. {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(10)]
    );
    copies.into_keys().collect()
}

fn env_or<T: FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a valid value")),
        Err(_) => default,
    }
}
