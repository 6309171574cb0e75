//! What this node offers as a zone aggregator: CPU count and total memory (sysinfo), free space
//! on the filesystem of its data dir (statvfs), and its power source (Linux
//! `/sys/class/power_supply`), each overridable in `[node]` (`cpus`, `memory`, `power`).
//! Reading them must stay cheap: a running node reads them again every minute.

use std::path::Path;

use anyhow::{Context, Result, bail};
use mesh::proto::wire::{Capabilities, Power};
use sysinfo::{CpuRefreshKind, MemoryRefreshKind, RefreshKind, System};

use crate::config::{NodeSection, parse_size};

/// Where Linux lists power supplies.
const POWER_SUPPLY_DIR: &str = "/sys/class/power_supply";

const MIB: u64 = 1 << 20;

/// The node's capabilities now, with the configured overrides applied.
pub fn capabilities(data_dir: &Path, node: &NodeSection) -> Result<Capabilities> {
    let power = match parse_power(&node.power)? {
        Some(power) => power,
        None => detect_power(Path::new(POWER_SUPPLY_DIR)),
    };
    let system = System::new_with_specifics(
        RefreshKind::nothing()
            .with_cpu(CpuRefreshKind::nothing())
            .with_memory(MemoryRefreshKind::nothing().with_ram()),
    )
    .context("cannot read this machine's CPUs and memory")?;
    let cpus = if node.cpus > 0 {
        node.cpus
    } else {
        u32::try_from(system.cpus().len())
            .unwrap_or(u32::MAX)
            .max(1)
    };
    let memory_mb = if node.memory.is_empty() {
        system.total_memory() / MIB
    } else {
        parse_size(&node.memory).context("node.memory (RHIZOME_NODE_MEMORY)")? / MIB
    };
    let disk_free_mb = free_disk(data_dir)? / MIB;
    Ok(Capabilities {
        power,
        cpus,
        memory_mb,
        disk_free_mb,
    })
}

/// `auto` (detect), `mains`, `battery` or `unknown`.
pub fn parse_power(text: &str) -> Result<Option<Power>> {
    Ok(match text {
        "auto" | "" => None,
        "mains" => Some(Power::Mains),
        "battery" => Some(Power::Battery),
        "unknown" => Some(Power::Unknown),
        other => bail!("node.power is `{other}`: use auto, mains, battery or unknown"),
    })
}

/// Bytes free for this user on the filesystem that holds `dir`, by statvfs: the filesystem
/// the kernel writes to (a list of mounted disks misses tmpfs and bind mounts, and reported
/// the root disk's space for a small tmpfs data dir).
pub fn free_disk(dir: &Path) -> Result<u64> {
    let (free, _) = crdt_store::headroom::filesystem_space(dir)
        .with_context(|| format!("cannot read the free space of {}", dir.display()))?;
    Ok(free)
}

/// The power source from the kernel's power supply list in `dir`: mains when a mains supply is
/// online, battery when there is a battery and no mains online, unknown when the kernel lists
/// neither (most servers, virtual machines and single-board computers: configure `power`).
pub fn detect_power(dir: &Path) -> Power {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Power::Unknown;
    };
    let read = |path: &Path, file: &str| {
        std::fs::read_to_string(path.join(file))
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    };
    let mut battery = false;
    for entry in entries.flatten() {
        let path = entry.path();
        match read(&path, "type").as_str() {
            "Mains" | "USB" if read(&path, "online") == "1" => return Power::Mains,
            "Battery" => battery = true,
            _ => {}
        }
    }
    if battery {
        Power::Battery
    } else {
        Power::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn supply(dir: &Path, name: &str, kind: &str, online: Option<&str>) {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("type"), format!("{kind}\n")).unwrap();
        if let Some(online) = online {
            std::fs::write(d.join("online"), format!("{online}\n")).unwrap();
        }
    }

    #[test]
    fn power_comes_from_the_supply_list() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(detect_power(&tmp.path().join("absent")), Power::Unknown);
        assert_eq!(detect_power(tmp.path()), Power::Unknown);
        supply(tmp.path(), "BAT0", "Battery", None);
        assert_eq!(detect_power(tmp.path()), Power::Battery);
        supply(tmp.path(), "AC", "Mains", Some("0"));
        assert_eq!(detect_power(tmp.path()), Power::Battery);
        supply(tmp.path(), "AC", "Mains", Some("1"));
        assert_eq!(detect_power(tmp.path()), Power::Mains);
    }

    #[test]
    fn capabilities_are_read_and_overridden() {
        let tmp = tempfile::tempdir().unwrap();
        let detected = capabilities(tmp.path(), &NodeSection::default()).unwrap();
        assert!(detected.cpus >= 1);
        assert!(detected.memory_mb > 0);
        assert!(detected.disk_free_mb > 0);
        let node = NodeSection {
            power: "battery".into(),
            cpus: 3,
            memory: "2GiB".into(),
            ..NodeSection::default()
        };
        let c = capabilities(tmp.path(), &node).unwrap();
        assert_eq!((c.power, c.cpus, c.memory_mb), (Power::Battery, 3, 2048));
        let err = parse_power("solar").unwrap_err().to_string();
        assert!(err.contains("node.power") && err.contains("solar"), "{err}");
    }
}
