//! What the store's side-by-side benchmarks share in generating records and writing their
//! tables: a run's output as the demo workflow writes it, medians, rates, numbers as people
//! read them, and the kind of filesystem a figure was taken on.

use std::path::Path;
use std::time::Duration;

use rand::Rng;
use rand::rngs::StdRng;

/// A run's output, shaped like the demo workflow's (a reading and its z-score).
pub fn json_output(rng: &mut StdRng) -> String {
    format!(
        r#"{{"value":{:.1},"z":{:.1}}}"#,
        rng.gen_range(-20.0..45.0),
        rng.gen_range(-3.0..3.0)
    )
}

/// A figure as the tables print it: thousands separated, fewer decimals as it grows.
pub fn format_value(v: f64) -> String {
    if v.abs() >= 1000.0 {
        let digits = format!("{:.0}", v.abs());
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        if v < 0.0 { format!("-{out}") } else { out }
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// The median; NaN of nothing.
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// Records per second.
pub fn rate(records: usize, elapsed: Duration) -> f64 {
    records as f64 / elapsed.as_secs_f64()
}

/// The type of the filesystem that holds `dir` (ext4, tmpfs, ...), from the mount table.
pub fn fs_type(dir: &Path) -> Option<String> {
    let dir = dir.canonicalize().ok()?;
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_, mount, kind) = (fields.next()?, fields.next()?, fields.next()?);
            dir.starts_with(mount)
                .then(|| (mount.len(), kind.to_owned()))
        })
        .max()
        .map(|(_, kind)| kind)
}
