//! What the node's benchmarks share: their settings from `RHIZOME_BENCH_*` variables, and the
//! figures written as JSON lines as they come.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

/// A `RHIZOME_BENCH_*` variable, when set and not empty.
pub fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// A numeric variable, `default` when unset.
pub fn number(name: &str, default: usize) -> usize {
    var(name).map_or(default, |v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, not {v:?}"))
    })
}

/// Where a benchmark keeps its data dirs unless told (`RHIZOME_BENCH_DIR`), and where its
/// figures go unless told (`RHIZOME_BENCH_OUT`): `<target>/bench/<file>`.
pub fn places(tmp: &Path, file: &str) -> (PathBuf, PathBuf) {
    let dir = var("RHIZOME_BENCH_DIR").map_or_else(|| tmp.to_owned(), PathBuf::from);
    let out = var("RHIZOME_BENCH_OUT").map_or_else(
        || tmp.parent().unwrap_or(tmp).join("bench").join(file),
        PathBuf::from,
    );
    (dir, out)
}

/// Figures as JSON lines, each stamped with when it was taken.
pub struct Report {
    out: BufWriter<File>,
}

impl Report {
    pub fn create(path: &Path) -> Report {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        Report {
            out: BufWriter::new(File::create(path).unwrap()),
        }
    }

    pub fn record(&mut self, mut figure: Value) {
        figure["at"] = json!(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs()
        );
        writeln!(self.out, "{figure}").unwrap();
        self.out.flush().unwrap();
    }
}

/// CPU time (user + system, every thread) a process has used so far.
#[allow(dead_code)] // not every benchmark times other processes
pub fn process_cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    Duration::from_millis(ticks * 1000 / clock_ticks())
}

/// Clock ticks per second, the unit of /proc's CPU times.
#[allow(dead_code)] // see process_cpu
fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok()?.trim().parse().ok())
            .filter(|&t| t > 0)
            .unwrap_or(100)
    })
}
