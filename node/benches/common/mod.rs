//! What the node's benchmarks share: their settings from `RHIZOME_BENCH_*` variables, and the
//! figures written as JSON lines as they come.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

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
