//! Free space on the filesystem that holds the store, and the watermark below which the store
//! refuses new writes.
//!
//! The store refuses at a watermark rather than waiting for ENOSPC because a commit that runs
//! out of space mid-way poisons the database until it is reopened, and because the space left
//! under the watermark is what lets retirement, compaction and the registry keep working.

use std::path::{Path, PathBuf};

/// How much space must stay free on the data dir's filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MinFree {
    /// No watermark: writes go on until the filesystem itself refuses them.
    Off,
    /// A fixed number of bytes.
    Bytes(u64),
    /// A share of the filesystem's size, in tenths of a percent (50 = 5%).
    Permille(u16),
    /// The smaller of 5% of the filesystem and 256 MiB: a large disk keeps 256 MiB back, a
    /// small card keeps a proportionate share instead of all of it.
    #[default]
    Default,
}

/// 256 MiB: what [`MinFree::Default`] keeps back on large filesystems.
pub const DEFAULT_MIN_FREE_BYTES: u64 = 256 << 20;

impl MinFree {
    /// The watermark in bytes on a filesystem of `total` bytes.
    pub fn bytes(self, total: u64) -> u64 {
        match self {
            MinFree::Off => 0,
            MinFree::Bytes(b) => b,
            MinFree::Permille(p) => (u128::from(total) * u128::from(p) / 1000) as u64,
            MinFree::Default => (total / 20).min(DEFAULT_MIN_FREE_BYTES),
        }
    }
}

impl std::str::FromStr for MinFree {
    type Err = String;

    /// `5%`, `0.5%`, `256MiB`, `1GB`, `0` (off), or `default`.
    fn from_str(text: &str) -> Result<MinFree, String> {
        let text = text.trim();
        if text.is_empty() || text == "default" {
            return Ok(MinFree::Default);
        }
        if let Some(percent) = text.strip_suffix('%') {
            let value: f64 = percent
                .trim()
                .parse()
                .map_err(|_| format!("`{text}` is not a percentage such as 5%"))?;
            if !(0.0..=50.0).contains(&value) {
                return Err(format!("`{text}` is outside 0%..=50%"));
            }
            return Ok(MinFree::Permille((value * 10.0).round() as u16));
        }
        let bytes = parse_bytes(text)?;
        Ok(if bytes == 0 {
            MinFree::Off
        } else {
            MinFree::Bytes(bytes)
        })
    }
}

/// `512`, `64KiB`, `256MiB`, `1GiB`, `10MB` (decimal units too), case-insensitive.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size such as 256MiB"))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "tib" => 1 << 40,
        other => {
            return Err(format!(
                "`{other}` in `{text}` is not a size unit (B, KiB, MiB, GiB)"
            ));
        }
    };
    Ok((number * scale as f64) as u64)
}

/// Free space on one filesystem, as statvfs reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Headroom {
    /// The directory asked about (the data dir).
    pub dir: PathBuf,
    /// Bytes this user may still write there.
    pub free_bytes: u64,
    /// Size of the filesystem.
    pub total_bytes: u64,
    /// The watermark in bytes on this filesystem.
    pub min_free_bytes: u64,
}

impl Headroom {
    /// Whether free space is under the watermark.
    pub fn is_low(&self) -> bool {
        self.free_bytes < self.min_free_bytes
    }
}

/// Free and total bytes of the filesystem that holds `dir`, by statvfs: the filesystem the
/// kernel actually writes to, bind mounts and tmpfs included.
pub fn filesystem_space(dir: &Path) -> std::io::Result<(u64, u64)> {
    let stat = rustix::fs::statvfs(dir)?;
    let block = stat.f_frsize.max(1);
    Ok((
        stat.f_bavail.saturating_mul(block),
        stat.f_blocks.saturating_mul(block),
    ))
}

/// Reads the headroom of `dir` against `min_free`.
pub fn headroom(dir: &Path, min_free: MinFree) -> std::io::Result<Headroom> {
    let (free_bytes, total_bytes) = filesystem_space(dir)?;
    Ok(Headroom {
        dir: dir.to_owned(),
        free_bytes,
        total_bytes,
        min_free_bytes: min_free.bytes(total_bytes),
    })
}

/// Whether an I/O error means the filesystem is full (or the user's quota is).
pub fn is_no_space(error: &std::io::Error) -> bool {
    error.kind() == std::io::ErrorKind::StorageFull
        || error.kind() == std::io::ErrorKind::QuotaExceeded
        || matches!(error.raw_os_error(), Some(28 | 122))
}

/// `1.5 MiB`, `812 KiB`, `12 B`: sizes as an operator reads them.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermarks_parse_and_scale() {
        assert_eq!("5%".parse::<MinFree>().unwrap(), MinFree::Permille(50));
        assert_eq!(
            "256MiB".parse::<MinFree>().unwrap(),
            MinFree::Bytes(256 << 20)
        );
        assert_eq!("0".parse::<MinFree>().unwrap(), MinFree::Off);
        assert_eq!("".parse::<MinFree>().unwrap(), MinFree::Default);
        assert!("60%".parse::<MinFree>().is_err());
        assert!("12 parsecs".parse::<MinFree>().is_err());
        let gib = 1u64 << 30;
        assert_eq!(MinFree::Permille(50).bytes(100 * gib), 5 * gib);
        // Large disks keep 256 MiB back, small ones 5%.
        assert_eq!(MinFree::Default.bytes(100 * gib), DEFAULT_MIN_FREE_BYTES);
        assert_eq!(MinFree::Default.bytes(8 << 20), (8 << 20) / 20);
    }

    #[test]
    fn statvfs_reads_the_filesystem_of_the_dir() {
        let dir = tempfile::tempdir().unwrap();
        let (free, total) = filesystem_space(dir.path()).unwrap();
        assert!(total > 0 && free <= total);
        assert!(filesystem_space(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn no_space_is_told_from_other_io_errors() {
        assert!(is_no_space(&std::io::Error::from_raw_os_error(28)));
        assert!(!is_no_space(&std::io::Error::from_raw_os_error(5)));
        assert_eq!(human_bytes(3 << 20), "3.0 MiB");
        assert_eq!(human_bytes(12), "12 B");
    }
}
