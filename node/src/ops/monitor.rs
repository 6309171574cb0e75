//! The node's resource monitor: a [`Sample`] of the host and of this process every few seconds,
//! an hour of them at full resolution and a day of them downsampled, and a [`Coarse`] summary
//! small and stable enough to go into the replicated registry entry.
//!
//! Monitoring must not become the load it measures: an idle node should spend well under half a
//! percent of a core on it at the default 5 s interval. So a sample refreshes only the global
//! CPU times and the memory table through sysinfo (kept between samples, which is also what makes
//! CPU% a rate), reads this process's figures from `/proc/self` rather than refreshing the host's
//! process list, and reads the rest (load, network counters, sensors, power supplies) straight
//! from small `/proc` and `/sys` files.
//!
//! Disk figures are those of the data dir's own filesystem by statvfs
//! ([`crdt_store::headroom::filesystem_space`]): a data dir on a small tmpfs or a bind mount
//! reports that filesystem, not the host's largest disk.
//!
//! Figures the host may not have (a temperature sensor, a battery) are `None` when absent, never
//! a made-up zero: a zero would read as a very cold node or an empty battery.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sysinfo::{MemoryRefreshKind, System};

/// How often to sample and how much history to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MonitorConfig {
    /// Time between samples (at least [`MIN_INTERVAL`] when spawned).
    pub interval: Duration,
    /// How far back full-resolution samples are kept.
    pub recent_window: Duration,
    /// The width of one downsampled entry.
    pub day_step: Duration,
    /// How far back downsampled entries are kept.
    pub day_window: Duration,
}

impl Default for MonitorConfig {
    fn default() -> MonitorConfig {
        MonitorConfig {
            interval: Duration::from_secs(5),
            recent_window: Duration::from_secs(3600),
            day_step: Duration::from_secs(300),
            day_window: Duration::from_secs(24 * 3600),
        }
    }
}

/// The shortest interval a spawned monitor samples at: shorter would make monitoring the load.
pub const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// The window the coarse CPU figure is averaged over: a single 5 s sample swings too much for
/// a figure that should only change on real change.
const COARSE_CPU_WINDOW_MS: i64 = 60_000;

/// One reading of the host and of this process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Unix time of the reading in milliseconds (of a downsampled entry: the start of its step).
    pub at_ms: i64,
    /// Busy share of the whole host's CPU time since the previous sample, 0–100.
    pub cpu_percent: f32,
    pub load1: f64,
    pub load5: f64,
    pub load15: f64,
    pub memory_total_bytes: u64,
    /// Total minus available: what the host could not hand out without swapping.
    pub memory_used_bytes: u64,
    pub memory_available_bytes: u64,
    /// Size of the filesystem that holds the data dir.
    pub disk_total_bytes: u64,
    /// Bytes this user may still write on the data dir's filesystem.
    pub disk_free_bytes: u64,
    /// Bytes received over all interfaces but loopback since boot.
    pub net_received_bytes: u64,
    /// Bytes sent over all interfaces but loopback since boot.
    pub net_sent_bytes: u64,
    /// Since the previous sample; 0 for the first one and after a counter went backwards.
    pub net_received_per_sec: f64,
    pub net_sent_per_sec: f64,
    /// The hottest of the host's sensors; `None` when it has none.
    pub temperature_celsius: Option<f32>,
    /// Charge of the host's batteries (their mean); `None` without a battery.
    pub battery_percent: Option<f32>,
    /// Whether the host runs from its battery now; `None` when the kernel lists no supply that
    /// tells.
    pub on_battery: Option<bool>,
    pub process_resident_bytes: u64,
    /// User plus system CPU time of this process since it started.
    pub process_cpu_seconds: f64,
    pub process_open_fds: u64,
    pub process_threads: u64,
    /// Unix time this process started, in seconds.
    pub process_start_time_seconds: f64,
}

/// A summary of a [`Sample`] for the node's registry entry. The registry replicates to every
/// node, so the figures are rounded to steps that ordinary jitter does not cross, and
/// [`Coarse::differs_enough`] tells when a rewrite is worth it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coarse {
    /// Rounded to 5 %.
    pub cpu_percent: u8,
    /// Rounded to 5 %.
    pub memory_used_percent: u8,
    /// Rounded to 1 %.
    pub disk_free_percent: u8,
    /// Rounded to 1 °C.
    pub temperature_celsius: Option<i16>,
    /// Rounded to 5 %.
    pub battery_percent: Option<u8>,
    /// The 1-minute load average times 100, rounded to 5 (0.05).
    pub load1_x100: u32,
}

const CPU_STEP: u8 = 5;
const MEMORY_STEP: u8 = 5;
const DISK_STEP: u8 = 1;
const TEMPERATURE_STEP: i16 = 1;
const BATTERY_STEP: u8 = 5;
const LOAD_STEP: u32 = 5;

impl Coarse {
    /// The summary of one sample.
    pub fn from_sample(sample: &Sample) -> Coarse {
        Coarse {
            cpu_percent: round_percent(f64::from(sample.cpu_percent), CPU_STEP),
            memory_used_percent: round_percent(
                share(sample.memory_used_bytes, sample.memory_total_bytes),
                MEMORY_STEP,
            ),
            disk_free_percent: round_percent(
                share(sample.disk_free_bytes, sample.disk_total_bytes),
                DISK_STEP,
            ),
            temperature_celsius: sample
                .temperature_celsius
                .map(|t| t.round().clamp(f32::from(i16::MIN), f32::from(i16::MAX)) as i16),
            battery_percent: sample
                .battery_percent
                .map(|b| round_percent(f64::from(b), BATTERY_STEP)),
            load1_x100: round_load(sample.load1),
        }
    }

    /// Whether `other` is far enough from `self` to rewrite the registry entry: a field moved by
    /// at least twice its rounding step, or a sensor or battery appeared or went away. Two steps
    /// because a figure sitting on a rounding boundary flips one step back and forth on noise.
    ///
    /// Load is the exception: it wanders by more than 0.1 a minute on any busy host, so it
    /// must also move by a fifth of its larger value.
    pub fn differs_enough(&self, other: &Coarse) -> bool {
        fn moved(a: i64, b: i64, step: i64) -> bool {
            (a - b).abs() >= 2 * step
        }
        fn optional(a: Option<i64>, b: Option<i64>, step: i64) -> bool {
            match (a, b) {
                (Some(a), Some(b)) => moved(a, b, step),
                (None, None) => false,
                _ => true,
            }
        }
        let load_threshold =
            (2 * i64::from(LOAD_STEP)).max(i64::from(self.load1_x100.max(other.load1_x100)) / 5);
        moved(
            self.cpu_percent.into(),
            other.cpu_percent.into(),
            CPU_STEP.into(),
        ) || moved(
            self.memory_used_percent.into(),
            other.memory_used_percent.into(),
            MEMORY_STEP.into(),
        ) || moved(
            self.disk_free_percent.into(),
            other.disk_free_percent.into(),
            DISK_STEP.into(),
        ) || optional(
            self.temperature_celsius.map(i64::from),
            other.temperature_celsius.map(i64::from),
            TEMPERATURE_STEP.into(),
        ) || optional(
            self.battery_percent.map(i64::from),
            other.battery_percent.map(i64::from),
            BATTERY_STEP.into(),
        ) || (i64::from(self.load1_x100) - i64::from(other.load1_x100)).abs() >= load_threshold
    }
}

/// `part` as a percentage of `whole`; 0 when `whole` is unknown.
fn share(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

fn round_percent(value: f64, step: u8) -> u8 {
    if !value.is_finite() {
        return 0;
    }
    let step = f64::from(step);
    ((value / step).round() * step).clamp(0.0, 100.0) as u8
}

fn round_load(load: f64) -> u32 {
    if !load.is_finite() {
        return 0;
    }
    let step = f64::from(LOAD_STEP);
    ((load * 100.0 / step).round() * step).clamp(0.0, f64::from(u32::MAX)) as u32
}

/// Samples the host and keeps their history. For the async node, see [`MonitorHandle`].
#[derive(Debug)]
pub struct Monitor {
    sampler: Sampler,
    history: History,
}

impl Monitor {
    /// A monitor of the host and of the filesystem that holds `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>, config: MonitorConfig) -> Result<Monitor> {
        Ok(Monitor {
            sampler: Sampler::new(data_dir.into(), Sources::host())?,
            history: History::new(&config),
        })
    }

    /// Takes a sample and records it. CPU% is measured since the previous call (or since
    /// [`Monitor::new`]); a call within 200 ms of the previous one repeats its CPU figure (and
    /// one within 200 ms of `new` gives the mean since boot), as the kernel's CPU times are too
    /// coarse to measure less.
    pub fn sample(&mut self) -> Sample {
        let sample = self.sampler.read();
        self.history.record(sample.clone());
        sample
    }

    pub fn latest(&self) -> Option<&Sample> {
        self.history.recent.back()
    }

    /// Samples taken at or after `since_ms` (all of them if `None`), oldest first: at full
    /// resolution, or one entry per `day_step` when `downsampled` (see [`History`] for how an
    /// entry aggregates its samples; the last entry is the step still in progress).
    pub fn history(&self, since_ms: Option<i64>, downsampled: bool) -> Vec<Sample> {
        self.history.since(since_ms, downsampled)
    }

    /// The registry summary of the latest sample, CPU averaged over the last minute.
    pub fn coarse(&self) -> Option<Coarse> {
        self.history.coarse()
    }
}

/// A [`Monitor`] sampling on its own for the async node; clones share it. Sampling stops when
/// the last clone is dropped.
#[derive(Debug, Clone)]
pub struct MonitorHandle {
    history: Arc<Mutex<History>>,
}

impl MonitorHandle {
    /// Starts sampling the host and the filesystem that holds `data_dir` every
    /// `config.interval` on a tokio task, each sample on the blocking pool (the reads are file
    /// reads and a statvfs, which can stall on a slow disk). The first sample comes after
    /// 200 ms, the least over which CPU% means anything. Must be called within a tokio runtime.
    pub fn spawn(data_dir: impl Into<PathBuf>, config: MonitorConfig) -> Result<MonitorHandle> {
        let sampler = Sampler::new(data_dir.into(), Sources::host())?;
        let history = Arc::new(Mutex::new(History::new(&config)));
        let interval = config.interval.max(MIN_INTERVAL);
        tokio::spawn(run(sampler, Arc::downgrade(&history), interval));
        Ok(MonitorHandle { history })
    }

    pub fn latest(&self) -> Option<Sample> {
        self.lock().recent.back().cloned()
    }

    /// As [`Monitor::history`].
    pub fn history(&self, since_ms: Option<i64>, downsampled: bool) -> Vec<Sample> {
        self.lock().since(since_ms, downsampled)
    }

    /// As [`Monitor::coarse`].
    pub fn coarse(&self) -> Option<Coarse> {
        self.lock().coarse()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, History> {
        // Recording cannot leave the history half-updated in a way readers would mind.
        self.history.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

async fn run(mut sampler: Sampler, history: Weak<Mutex<History>>, interval: Duration) {
    let first = tokio::time::Instant::now() + sysinfo::MINIMUM_CPU_UPDATE_INTERVAL.min(interval);
    let mut ticks = tokio::time::interval_at(first, interval);
    // After a stall, sample once and go on at the interval rather than catching up in a burst.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if history.strong_count() == 0 {
            return;
        }
        let read = tokio::task::spawn_blocking(move || {
            let sample = sampler.read();
            (sampler, sample)
        })
        .await;
        let sample = match read {
            Ok((back, sample)) => {
                sampler = back;
                sample
            }
            Err(error) => {
                tracing::error!("the resource monitor stopped: {error}");
                return;
            }
        };
        let Some(history) = history.upgrade() else {
            return;
        };
        history
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .record(sample);
    }
}

/// Where the kernel's files are; tests point these at fakes.
#[derive(Debug, Clone)]
struct Sources {
    proc: PathBuf,
    sys: PathBuf,
}

impl Sources {
    fn host() -> Sources {
        Sources {
            proc: PathBuf::from("/proc"),
            sys: PathBuf::from("/sys"),
        }
    }
}

/// What a sample is read with, kept between samples.
struct Sampler {
    data_dir: PathBuf,
    sources: Sources,
    /// Only the global CPU times and the memory table are ever refreshed.
    system: System,
    clock_ticks: f64,
    boot_time: Option<u64>,
    /// The previous (`at_ms`, received, sent), for the rates.
    previous_net: Option<(i64, u64, u64)>,
    /// The last figures statvfs gave, should it fail later (the data dir being moved).
    last_disk: (u64, u64),
}

impl std::fmt::Debug for Sampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sampler")
            .field("data_dir", &self.data_dir)
            .field("sources", &self.sources)
            .finish_non_exhaustive()
    }
}

impl Sampler {
    fn new(data_dir: PathBuf, sources: Sources) -> Result<Sampler> {
        let mut system = System::new().context("cannot read this machine's CPUs and memory")?;
        // The baseline the first sample's CPU% is measured against.
        system.refresh_cpu_usage();
        let boot_time = read_boot_time(&sources.proc);
        Ok(Sampler {
            data_dir,
            sources,
            system,
            clock_ticks: clock_ticks_per_second(),
            boot_time,
            previous_net: None,
            last_disk: (0, 0),
        })
    }

    fn read(&mut self) -> Sample {
        let at_ms = now_ms();
        self.system.refresh_cpu_usage();
        self.system
            .refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
        let cpu_percent = self.system.global_cpu_usage();
        let cpu_percent = if cpu_percent.is_finite() {
            cpu_percent.clamp(0.0, 100.0)
        } else {
            0.0
        };
        let memory_total_bytes = self.system.total_memory();
        let memory_available_bytes = self.system.available_memory();
        let (load1, load5, load15) = read_load(&self.sources.proc);
        match crdt_store::headroom::filesystem_space(&self.data_dir) {
            Ok(space) => self.last_disk = space,
            Err(error) => tracing::debug!(
                "cannot read the free space of {}: {error}",
                self.data_dir.display()
            ),
        }
        let (disk_free_bytes, disk_total_bytes) = self.last_disk;
        let (net_received_bytes, net_sent_bytes) = read_net(&self.sources.proc);
        let (battery_percent, on_battery) = read_power(&self.sources.sys);
        let process = read_process(&self.sources.proc, self.clock_ticks, self.boot_time);
        let mut sample = Sample {
            at_ms,
            cpu_percent,
            load1,
            load5,
            load15,
            memory_total_bytes,
            memory_used_bytes: memory_total_bytes.saturating_sub(memory_available_bytes),
            memory_available_bytes,
            disk_total_bytes,
            disk_free_bytes,
            net_received_bytes,
            net_sent_bytes,
            net_received_per_sec: 0.0,
            net_sent_per_sec: 0.0,
            temperature_celsius: read_temperature(&self.sources.sys),
            battery_percent,
            on_battery,
            process_resident_bytes: process.resident_bytes,
            process_cpu_seconds: process.cpu_seconds,
            process_open_fds: process.open_fds,
            process_threads: process.threads,
            process_start_time_seconds: process.start_time_seconds,
        };
        if let Some((previous_ms, received, sent)) = self.previous_net {
            (sample.net_received_per_sec, sample.net_sent_per_sec) =
                net_rates(previous_ms, received, sent, &sample);
        }
        self.previous_net = Some((at_ms, net_received_bytes, net_sent_bytes));
        sample
    }
}

/// Bytes per second received and sent between a previous reading and `sample`. A counter that
/// went backwards (an interface gone, a counter wrapped) gives 0 rather than a huge rate.
fn net_rates(previous_ms: i64, received: u64, sent: u64, sample: &Sample) -> (f64, f64) {
    let elapsed = (sample.at_ms - previous_ms) as f64 / 1000.0;
    if elapsed <= 0.0 {
        return (0.0, 0.0);
    }
    let rate = |now: u64, before: u64| now.saturating_sub(before) as f64 / elapsed;
    (
        rate(sample.net_received_bytes, received),
        rate(sample.net_sent_bytes, sent),
    )
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Ticks per second of the times in `/proc/*/stat` (USER_HZ).
#[allow(unsafe_code)]
fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a configuration value; it has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    // 100 is USER_HZ on every architecture but alpha.
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

fn read_text(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

fn read_trimmed(path: &Path) -> Option<String> {
    read_text(path).map(|s| s.trim().to_owned())
}

/// `btime` of `/proc/stat`: the unix second the host booted.
fn read_boot_time(proc: &Path) -> Option<u64> {
    read_text(&proc.join("stat"))?
        .lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|value| value.trim().parse().ok())
}

fn read_load(proc: &Path) -> (f64, f64, f64) {
    let text = read_text(&proc.join("loadavg")).unwrap_or_default();
    let mut values = text
        .split_ascii_whitespace()
        .map(|v| v.parse::<f64>().unwrap_or(0.0));
    let mut next = || values.next().unwrap_or(0.0);
    (next(), next(), next())
}

/// Received and sent bytes over every interface but loopback, from `/proc/net/dev`. Bridges
/// and virtual pairs count as interfaces too, so a host routing container traffic counts that
/// traffic more than once.
fn read_net(proc: &Path) -> (u64, u64) {
    let Some(text) = read_text(&proc.join("net/dev")) else {
        return (0, 0);
    };
    let mut received = 0u64;
    let mut sent = 0u64;
    // Older kernels print `eth0:123` with no space after the colon: split on the colon.
    for (name, counters) in text.lines().filter_map(|line| line.split_once(':')) {
        if name.trim() == "lo" {
            continue;
        }
        let counters: Vec<u64> = counters
            .split_ascii_whitespace()
            .map(|v| v.parse().unwrap_or(0))
            .collect();
        if counters.len() >= 9 {
            received = received.saturating_add(counters[0]);
            sent = sent.saturating_add(counters[8]);
        }
    }
    (received, sent)
}

/// The hottest of the thermal zones and hwmon sensors under `sys`, in °C. Readings outside
/// -50..=150 °C are left out: some drivers report a missing probe as -273 °C or as an absurd
/// value.
fn read_temperature(sys: &Path) -> Option<f32> {
    let mut paths = Vec::new();
    if let Ok(zones) = std::fs::read_dir(sys.join("class/thermal")) {
        for zone in zones.flatten() {
            if zone
                .file_name()
                .to_string_lossy()
                .starts_with("thermal_zone")
            {
                paths.push(zone.path().join("temp"));
            }
        }
    }
    if let Ok(chips) = std::fs::read_dir(sys.join("class/hwmon")) {
        for chip in chips.flatten() {
            let Ok(files) = std::fs::read_dir(chip.path()) else {
                continue;
            };
            for file in files.flatten() {
                let name = file.file_name();
                let name = name.to_string_lossy();
                if name.starts_with("temp") && name.ends_with("_input") {
                    paths.push(file.path());
                }
            }
        }
    }
    paths
        .iter()
        .filter_map(|path| read_trimmed(path)?.parse::<i64>().ok())
        .map(|millidegrees| millidegrees as f32 / 1000.0)
        .filter(|celsius| (-50.0..=150.0).contains(celsius))
        .reduce(f32::max)
}

/// Battery charge and whether the host runs from it, from the power supplies under `sys`.
/// Batteries of peripherals (`scope` Device: a mouse, a headset) are not the host's.
fn read_power(sys: &Path) -> (Option<f32>, Option<bool>) {
    let Ok(entries) = std::fs::read_dir(sys.join("class/power_supply")) else {
        return (None, None);
    };
    let mut charges = Vec::new();
    let mut mains_listed = false;
    let mut mains_online = false;
    let mut discharging = false;
    let mut charging = false;
    for entry in entries.flatten() {
        let path = entry.path();
        let read = |file: &str| read_trimmed(&path.join(file)).unwrap_or_default();
        match read("type").as_str() {
            "Mains" | "USB" => {
                mains_listed = true;
                mains_online |= read("online") == "1";
            }
            "Battery" if read("scope") != "Device" => {
                if let Ok(capacity) = read("capacity").parse::<f32>() {
                    charges.push(capacity.clamp(0.0, 100.0));
                }
                match read("status").as_str() {
                    "Discharging" => discharging = true,
                    "Charging" | "Full" | "Not charging" => charging = true,
                    _ => {}
                }
            }
            _ => {}
        }
    }
    let battery_percent =
        (!charges.is_empty()).then(|| charges.iter().sum::<f32>() / charges.len() as f32);
    let on_battery = if discharging {
        Some(true)
    } else if mains_online || charging {
        Some(false)
    } else if !charges.is_empty() && mains_listed {
        Some(true)
    } else {
        None
    };
    (battery_percent, on_battery)
}

#[derive(Debug, Default, PartialEq)]
struct ProcessFigures {
    resident_bytes: u64,
    cpu_seconds: f64,
    open_fds: u64,
    threads: u64,
    start_time_seconds: f64,
}

/// This process's figures from `/proc/self`: reading them costs a few small files, where
/// refreshing through sysinfo would also walk every thread's directory.
fn read_process(proc: &Path, clock_ticks: f64, boot_time: Option<u64>) -> ProcessFigures {
    let mut figures = ProcessFigures::default();
    let own = proc.join("self");
    if let Some(stat) = read_text(&own.join("stat")) {
        // The command name (field 2) may hold spaces and parentheses: count fields after the
        // last `)`, where field 3 (the state) has index 0.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_ascii_whitespace().collect())
            .unwrap_or_default();
        let field = |n: usize| -> Option<u64> { fields.get(n - 3)?.parse().ok() };
        if let (Some(utime), Some(stime)) = (field(14), field(15)) {
            figures.cpu_seconds = (utime + stime) as f64 / clock_ticks;
        }
        if let (Some(start), Some(boot)) = (field(22), boot_time) {
            figures.start_time_seconds = boot as f64 + start as f64 / clock_ticks;
        }
    }
    if let Some(status) = read_text(&own.join("status")) {
        for line in status.lines() {
            if let Some(value) = line.strip_prefix("VmRSS:") {
                let kib: u64 = value
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse()
                    .unwrap_or(0);
                figures.resident_bytes = kib.saturating_mul(1024);
            } else if let Some(value) = line.strip_prefix("Threads:") {
                figures.threads = value.trim().parse().unwrap_or(0);
            }
        }
    }
    if let Ok(fds) = std::fs::read_dir(own.join("fd")) {
        // The listing holds the descriptor that reads it, which is not the process's own.
        figures.open_fds = (fds.count() as u64).saturating_sub(1);
    }
    figures
}

/// The recent samples and the downsampled day, both bounded.
///
/// A downsampled entry stands for the samples of one `day_step` (aligned to the unix epoch,
/// `at_ms` is the step's start) and aggregates them by what the figure is for:
/// - the worst case where a short excursion matters for planning: the least free disk (so the
///   most used), the least available battery charge, the highest temperature, on battery if it
///   was at any time, the largest process resident size, descriptors and threads;
/// - the mean for the figures that swing from one sample to the next and whose level is what
///   counts: CPU%, load, memory used and available (means of both, so they still add up to the
///   total), network rates;
/// - the last value for counters and constants: network totals, process CPU seconds and start
///   time, memory and disk totals.
#[derive(Debug)]
struct History {
    recent: VecDeque<Sample>,
    recent_capacity: usize,
    day: VecDeque<Sample>,
    day_capacity: usize,
    day_step_ms: i64,
    bucket: Option<Bucket>,
}

impl History {
    fn new(config: &MonitorConfig) -> History {
        let slots = |window: Duration, step: Duration| {
            let step = step.as_millis().max(1);
            usize::try_from(window.as_millis().div_ceil(step))
                .unwrap_or(usize::MAX)
                .max(1)
        };
        History {
            recent: VecDeque::new(),
            recent_capacity: slots(config.recent_window, config.interval),
            day: VecDeque::new(),
            day_capacity: slots(config.day_window, config.day_step),
            day_step_ms: i64::try_from(config.day_step.as_millis())
                .unwrap_or(i64::MAX)
                .max(1),
            bucket: None,
        }
    }

    fn record(&mut self, sample: Sample) {
        let step = sample.at_ms.div_euclid(self.day_step_ms);
        match &mut self.bucket {
            // A clock stepped back folds into the current step rather than reopening an old one.
            Some(bucket) if step <= bucket.step => bucket.add(&sample),
            _ => {
                if let Some(done) = self.bucket.take() {
                    push_bounded(&mut self.day, done.finish(), self.day_capacity);
                }
                self.bucket = Some(Bucket::new(step, self.day_step_ms, &sample));
            }
        }
        push_bounded(&mut self.recent, sample, self.recent_capacity);
    }

    fn since(&self, since_ms: Option<i64>, downsampled: bool) -> Vec<Sample> {
        let keep = |s: &&Sample| since_ms.is_none_or(|since| s.at_ms >= since);
        if !downsampled {
            return self.recent.iter().filter(keep).cloned().collect();
        }
        let current = self.bucket.as_ref().map(Bucket::finish);
        // With the step in progress, one finished step fewer keeps the span to `day_window`.
        let skip = self.day.len() + usize::from(current.is_some());
        let skip = skip.saturating_sub(self.day_capacity);
        self.day
            .iter()
            .skip(skip)
            .chain(current.as_ref())
            .filter(keep)
            .cloned()
            .collect()
    }

    fn coarse(&self) -> Option<Coarse> {
        let latest = self.recent.back()?;
        let since = latest.at_ms - COARSE_CPU_WINDOW_MS;
        let (sum, count) = self
            .recent
            .iter()
            .rev()
            .take_while(|s| s.at_ms > since)
            .fold((0.0, 0u32), |(sum, n), s| {
                (sum + f64::from(s.cpu_percent), n + 1)
            });
        let mut coarse = Coarse::from_sample(latest);
        coarse.cpu_percent = round_percent(sum / f64::from(count.max(1)), CPU_STEP);
        Some(coarse)
    }
}

fn push_bounded(ring: &mut VecDeque<Sample>, sample: Sample, capacity: usize) {
    while ring.len() >= capacity {
        ring.pop_front();
    }
    ring.push_back(sample);
}

/// The samples of the `day_step` in progress: sums for the means, and a running sample holding
/// the extremes and last values (see [`History`]).
#[derive(Debug)]
struct Bucket {
    step: i64,
    count: u32,
    cpu_percent: f64,
    load: [f64; 3],
    memory_used: u128,
    memory_available: u128,
    net_rates: [f64; 2],
    running: Sample,
}

impl Bucket {
    fn new(step: i64, step_ms: i64, sample: &Sample) -> Bucket {
        let mut running = sample.clone();
        running.at_ms = step.saturating_mul(step_ms);
        Bucket {
            step,
            count: 1,
            cpu_percent: f64::from(sample.cpu_percent),
            load: [sample.load1, sample.load5, sample.load15],
            memory_used: sample.memory_used_bytes.into(),
            memory_available: sample.memory_available_bytes.into(),
            net_rates: [sample.net_received_per_sec, sample.net_sent_per_sec],
            running,
        }
    }

    fn add(&mut self, s: &Sample) {
        self.count += 1;
        self.cpu_percent += f64::from(s.cpu_percent);
        self.load[0] += s.load1;
        self.load[1] += s.load5;
        self.load[2] += s.load15;
        self.memory_used += u128::from(s.memory_used_bytes);
        self.memory_available += u128::from(s.memory_available_bytes);
        self.net_rates[0] += s.net_received_per_sec;
        self.net_rates[1] += s.net_sent_per_sec;

        let r = &mut self.running;
        r.memory_total_bytes = s.memory_total_bytes;
        r.disk_total_bytes = s.disk_total_bytes;
        r.disk_free_bytes = r.disk_free_bytes.min(s.disk_free_bytes);
        r.net_received_bytes = s.net_received_bytes;
        r.net_sent_bytes = s.net_sent_bytes;
        r.temperature_celsius = combine(r.temperature_celsius, s.temperature_celsius, f32::max);
        r.battery_percent = combine(r.battery_percent, s.battery_percent, f32::min);
        r.on_battery = combine(r.on_battery, s.on_battery, |a, b| a || b);
        r.process_resident_bytes = r.process_resident_bytes.max(s.process_resident_bytes);
        r.process_cpu_seconds = s.process_cpu_seconds;
        r.process_open_fds = r.process_open_fds.max(s.process_open_fds);
        r.process_threads = r.process_threads.max(s.process_threads);
        r.process_start_time_seconds = s.process_start_time_seconds;
    }

    fn finish(&self) -> Sample {
        let n = f64::from(self.count);
        let count = u128::from(self.count);
        let mut s = self.running.clone();
        s.cpu_percent = (self.cpu_percent / n) as f32;
        s.load1 = self.load[0] / n;
        s.load5 = self.load[1] / n;
        s.load15 = self.load[2] / n;
        s.memory_used_bytes = u64::try_from(self.memory_used / count).unwrap_or(u64::MAX);
        s.memory_available_bytes = u64::try_from(self.memory_available / count).unwrap_or(u64::MAX);
        s.net_received_per_sec = self.net_rates[0] / n;
        s.net_sent_per_sec = self.net_rates[1] / n;
        s
    }
}

/// Folds two optional readings: one present wins, two are merged by `merge`.
fn combine<T>(a: Option<T>, b: Option<T>, merge: impl FnOnce(T, T) -> T) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(merge(a, b)),
        (a, None) => a,
        (None, b) => b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn synthetic(at_ms: i64) -> Sample {
        Sample {
            at_ms,
            cpu_percent: 10.0,
            load1: 0.5,
            load5: 0.4,
            load15: 0.3,
            memory_total_bytes: 1000 * MIB,
            memory_used_bytes: 400 * MIB,
            memory_available_bytes: 600 * MIB,
            disk_total_bytes: 100 * MIB,
            disk_free_bytes: 50 * MIB,
            net_received_bytes: 0,
            net_sent_bytes: 0,
            net_received_per_sec: 0.0,
            net_sent_per_sec: 0.0,
            temperature_celsius: Some(40.0),
            battery_percent: Some(80.0),
            on_battery: Some(false),
            process_resident_bytes: 20 * MIB,
            process_cpu_seconds: 1.0,
            process_open_fds: 10,
            process_threads: 4,
            process_start_time_seconds: 1_700_000_000.0,
        }
    }

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn a_sample_reports_the_data_dirs_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        let mut monitor = Monitor::new(dir.path(), MonitorConfig::default()).unwrap();
        let (free_before, total) = crdt_store::headroom::filesystem_space(dir.path()).unwrap();
        let sample = monitor.sample();
        let (free_after, _) = crdt_store::headroom::filesystem_space(dir.path()).unwrap();
        assert_eq!(sample.disk_total_bytes, total);
        // Other processes write to the same filesystem meanwhile.
        let slack = 256 * MIB;
        let low = free_before.min(free_after).saturating_sub(slack);
        let high = free_before.max(free_after) + slack;
        assert!(
            (low..=high).contains(&sample.disk_free_bytes),
            "{} free, statvfs said {free_before} then {free_after}",
            sample.disk_free_bytes
        );
        assert!(sample.memory_total_bytes > 0);
        assert_eq!(
            sample.memory_used_bytes + sample.memory_available_bytes,
            sample.memory_total_bytes
        );
        assert!((0.0..=100.0).contains(&sample.cpu_percent));
        assert!(sample.process_resident_bytes > 0);
        assert!(sample.process_threads >= 1);
        assert!(sample.process_open_fds >= 3, "{sample:?}");
        let now = now_ms() as f64 / 1000.0;
        assert!(
            sample.process_start_time_seconds > now - 86_400.0
                && sample.process_start_time_seconds <= now + 1.0,
            "{sample:?}"
        );
        assert_eq!(monitor.latest(), Some(&sample));
        let second = monitor.sample();
        assert!(second.net_received_bytes >= sample.net_received_bytes);
        assert_eq!(monitor.history(None, false), vec![sample, second]);
    }

    #[test]
    fn coarse_figures_round_and_change_only_on_real_change() {
        let mut s = synthetic(0);
        s.cpu_percent = 12.6;
        s.memory_used_bytes = 333 * MIB;
        s.disk_free_bytes = 25 * MIB + MIB / 3;
        s.temperature_celsius = Some(48.5);
        s.battery_percent = Some(57.0);
        s.load1 = 1.234;
        let c = Coarse::from_sample(&s);
        assert_eq!(
            c,
            Coarse {
                cpu_percent: 15,
                memory_used_percent: 35,
                disk_free_percent: 25,
                temperature_celsius: Some(49),
                battery_percent: Some(55),
                load1_x100: 125,
            }
        );
        // No battery, no sensor, an unknown filesystem: absent or 0, not invented.
        s.temperature_celsius = None;
        s.battery_percent = None;
        s.disk_total_bytes = 0;
        let bare = Coarse::from_sample(&s);
        assert_eq!(
            (
                bare.temperature_celsius,
                bare.battery_percent,
                bare.disk_free_percent
            ),
            (None, None, 0)
        );

        assert!(!c.differs_enough(&c));
        let one_step = Coarse {
            cpu_percent: 20,
            memory_used_percent: 40,
            disk_free_percent: 26,
            temperature_celsius: Some(50),
            battery_percent: Some(60),
            load1_x100: 130,
        };
        assert!(!c.differs_enough(&one_step) && !one_step.differs_enough(&c));
        let changes = [
            Coarse {
                cpu_percent: 25,
                ..c
            },
            Coarse {
                memory_used_percent: 25,
                ..c
            },
            Coarse {
                disk_free_percent: 23,
                ..c
            },
            Coarse {
                temperature_celsius: Some(51),
                ..c
            },
            Coarse {
                battery_percent: Some(45),
                ..c
            },
            Coarse {
                temperature_celsius: None,
                ..c
            },
            Coarse {
                battery_percent: None,
                ..c
            },
            Coarse {
                load1_x100: 100,
                ..c
            },
        ];
        for changed in changes {
            assert!(c.differs_enough(&changed), "{changed:?}");
            assert!(changed.differs_enough(&c), "{changed:?}");
        }
        // Load moves by a fifth of its value once that exceeds 0.1.
        let busy = Coarse {
            load1_x100: 800,
            ..c
        };
        assert!(!busy.differs_enough(&Coarse {
            load1_x100: 700,
            ..c
        }));
        assert!(busy.differs_enough(&Coarse {
            load1_x100: 600,
            ..c
        }));
        let json = serde_json::to_string(&c).unwrap();
        assert!(json.len() < 160, "{json}");
    }

    #[test]
    fn coarse_cpu_is_the_mean_of_the_last_minute() {
        let config = MonitorConfig::default();
        let mut history = History::new(&config);
        assert_eq!(history.coarse(), None);
        for (i, cpu) in [90.0, 0.0, 10.0, 20.0].into_iter().enumerate() {
            let mut s = synthetic(i as i64 * 25_000);
            s.cpu_percent = cpu;
            history.record(s);
        }
        // 90 % was 75 s before the latest sample: outside the minute.
        assert_eq!(history.coarse().unwrap().cpu_percent, 10);
    }

    #[test]
    fn history_stays_bounded_and_downsamples_as_documented() {
        let config = MonitorConfig {
            interval: Duration::from_secs(5),
            recent_window: Duration::from_secs(60),
            day_step: Duration::from_secs(60),
            day_window: Duration::from_secs(600),
        };
        let mut history = History::new(&config);
        assert_eq!((history.recent_capacity, history.day_capacity), (12, 10));
        let base = 1_700_000_040_000; // a multiple of 60 s
        for i in 0..1000i64 {
            let mut s = synthetic(base + i * 5_000);
            // Within each minute (12 samples): CPU 0..=55, disk free dips, temperature peaks.
            let k = i % 12;
            s.cpu_percent = (k * 5) as f32;
            s.load1 = k as f64;
            s.memory_used_bytes = (400 + k as u64) * MIB;
            s.memory_available_bytes = (600 - k as u64) * MIB;
            s.disk_free_bytes = (50 - k as u64) * MIB;
            s.temperature_celsius = Some(40.0 + k as f32);
            s.battery_percent = if k == 3 { None } else { Some(90.0 - k as f32) };
            s.on_battery = Some(k == 7);
            s.net_received_bytes = i as u64 * 1000;
            s.process_cpu_seconds = i as f64;
            history.record(s);
            assert!(history.recent.len() <= 12 && history.day.len() <= 10);
            assert!(history.since(None, true).len() <= 10);
        }
        let recent = history.since(None, false);
        assert_eq!(recent.len(), 12);
        assert_eq!(recent.last().unwrap().at_ms, base + 999 * 5_000);
        assert!(recent.windows(2).all(|w| w[0].at_ms < w[1].at_ms));

        let day = history.since(None, true);
        assert_eq!(day.len(), 10);
        assert!(day.windows(2).all(|w| w[1].at_ms - w[0].at_ms == 60_000));
        let full = &day[day.len() - 2];
        assert_eq!(full.at_ms % 60_000, 0);
        assert_eq!(full.cpu_percent, 27.5); // mean of 0, 5, ..., 55
        assert_eq!(full.load1, 5.5);
        assert_eq!(full.memory_used_bytes, 400 * MIB + 5 * MIB + MIB / 2);
        assert_eq!(
            full.memory_used_bytes + full.memory_available_bytes,
            full.memory_total_bytes
        );
        assert_eq!(full.disk_free_bytes, 39 * MIB); // least free
        assert_eq!(full.temperature_celsius, Some(51.0)); // hottest
        assert_eq!(full.battery_percent, Some(79.0)); // least charge, absent samples ignored
        assert_eq!(full.on_battery, Some(true)); // at any time
        // The last entry is the minute in progress: 1000 samples = 83 minutes and 4 samples.
        let current = day.last().unwrap();
        assert_eq!(current.cpu_percent, 7.5); // mean of 0, 5, 10, 15
        assert_eq!(current.process_cpu_seconds, 999.0); // last
        assert_eq!(current.net_received_bytes, 999_000);

        let since = day[5].at_ms;
        assert_eq!(history.since(Some(since), true), day[5..].to_vec());
        let since = recent[8].at_ms;
        assert_eq!(history.since(Some(since), false), recent[8..].to_vec());
    }

    #[test]
    fn rates_come_from_the_previous_sample() {
        let mut now = synthetic(10_000);
        now.net_received_bytes = 5_000;
        now.net_sent_bytes = 1_000;
        assert_eq!(net_rates(8_000, 1_000, 0, &now), (2_000.0, 500.0));
        // A counter going backwards or a clock stepping back gives no rate, not a huge one.
        assert_eq!(net_rates(8_000, 9_000, 0, &now), (0.0, 500.0));
        assert_eq!(net_rates(10_000, 0, 0, &now), (0.0, 0.0));
    }

    #[test]
    fn fake_kernel_files_are_read() {
        let tmp = tempfile::tempdir().unwrap();
        let proc = tmp.path().join("proc");
        let sys = tmp.path().join("sys");
        write(&sys.join("class/power_supply/BAT0/capacity"), "57\n");
        write(&sys.join("class/power_supply/BAT0/type"), "Battery\n");
        write(&sys.join("class/power_supply/BAT0/status"), "Discharging\n");
        write(
            &sys.join("class/power_supply/hidpp_battery_0/type"),
            "Battery\n",
        );
        write(
            &sys.join("class/power_supply/hidpp_battery_0/scope"),
            "Device\n",
        );
        write(
            &sys.join("class/power_supply/hidpp_battery_0/capacity"),
            "5\n",
        );
        write(&sys.join("class/power_supply/AC/type"), "Mains\n");
        write(&sys.join("class/power_supply/AC/online"), "0\n");
        write(&sys.join("class/thermal/thermal_zone0/temp"), "48500\n");
        write(&sys.join("class/thermal/thermal_zone1/temp"), "-273000\n");
        write(&sys.join("class/hwmon/hwmon0/temp1_input"), "45000\n");
        write(&sys.join("class/hwmon/hwmon0/temp1_label"), "Core 0\n");
        write(&proc.join("loadavg"), "0.52 0.41 0.30 1/123 4567\n");
        write(
            &proc.join("net/dev"),
            "Inter-|   Receive                                                |  Transmit\n \
             face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
             lo: 9999 1 0 0 0 0 0 0 9999 1 0 0 0 0 0 0\n  \
             eth0: 1000 10 0 0 0 0 0 0 200 2 0 0 0 0 0 0\n  \
             wlan0:30 1 0 0 0 0 0 0 4 1 0 0 0 0 0 0\n",
        );
        write(
            &proc.join("stat"),
            "cpu  1 2 3 4\nbtime 1700000000\nprocesses 9\n",
        );
        write(
            &proc.join("self/stat"),
            "4242 (rhizome (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 7 0 12345 1000 300 18446744073709551615\n",
        );
        write(
            &proc.join("self/status"),
            "Name:\trhizome\nVmRSS:\t   20480 kB\nThreads:\t7\n",
        );
        // As in /proc, the listing includes the descriptor that reads it.
        for fd in ["0", "1", "2", "9"] {
            write(&proc.join("self/fd").join(fd), "");
        }

        assert_eq!(read_power(&sys), (Some(57.0), Some(true)));
        assert_eq!(read_temperature(&sys), Some(48.5));
        assert_eq!(read_load(&proc), (0.52, 0.41, 0.30));
        assert_eq!(read_net(&proc), (1030, 204));
        assert_eq!(read_boot_time(&proc), Some(1_700_000_000));
        let process = read_process(&proc, 100.0, Some(1_700_000_000));
        assert_eq!(
            (
                process.resident_bytes,
                process.cpu_seconds,
                process.open_fds,
                process.threads
            ),
            (20 * MIB, 3.0, 3, 7)
        );
        assert!((process.start_time_seconds - 1_700_000_123.45).abs() < 1e-3);
        write(&sys.join("class/power_supply/AC/online"), "1\n");
        write(&sys.join("class/power_supply/BAT0/status"), "Charging\n");
        assert_eq!(read_power(&sys), (Some(57.0), Some(false)));

        let mut sampler = Sampler::new(
            tmp.path().to_owned(),
            Sources {
                proc: proc.clone(),
                sys: sys.clone(),
            },
        )
        .unwrap();
        let first = sampler.read();
        assert_eq!(first.temperature_celsius, Some(48.5));
        assert_eq!(first.battery_percent, Some(57.0));
        assert_eq!(
            (first.net_received_per_sec, first.net_sent_per_sec),
            (0.0, 0.0)
        );
        assert_eq!(first.process_threads, 7);
    }

    #[test]
    fn absent_sources_give_none_not_zero() {
        let tmp = tempfile::tempdir().unwrap();
        let empty = tmp.path().join("nothing");
        std::fs::create_dir_all(empty.join("class/thermal")).unwrap();
        std::fs::create_dir_all(empty.join("class/power_supply")).unwrap();
        assert_eq!(read_temperature(&empty), None);
        assert_eq!(read_power(&empty), (None, None));
        let missing = tmp.path().join("missing");
        assert_eq!(read_temperature(&missing), None);
        assert_eq!(read_power(&missing), (None, None));
        assert_eq!(read_net(&missing), (0, 0));
        assert_eq!(read_boot_time(&missing), None);
        assert_eq!(
            read_process(&missing, 100.0, None),
            ProcessFigures::default()
        );
        // A mains adapter alone (a server's ACPI adapter) still says the host is not on battery.
        write(&empty.join("class/power_supply/AC/type"), "Mains\n");
        write(&empty.join("class/power_supply/AC/online"), "1\n");
        assert_eq!(read_power(&empty), (None, Some(false)));

        let mut sampler = Sampler::new(
            tmp.path().to_owned(),
            Sources {
                proc: missing.clone(),
                sys: missing,
            },
        )
        .unwrap();
        let sample = sampler.read();
        assert_eq!(
            (
                sample.temperature_celsius,
                sample.battery_percent,
                sample.on_battery
            ),
            (None, None, None)
        );
        // The data dir's filesystem still comes from statvfs, not from /proc.
        assert!(sample.disk_total_bytes > 0);
    }

    #[tokio::test]
    async fn a_spawned_monitor_samples_on_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let config = MonitorConfig {
            interval: Duration::from_millis(20),
            ..MonitorConfig::default()
        };
        let handle = MonitorHandle::spawn(dir.path(), config).unwrap();
        let clone = handle.clone();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while clone.history(None, false).len() < 3 {
            assert!(tokio::time::Instant::now() < deadline, "no samples");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let latest = handle.latest().unwrap();
        assert!(latest.disk_total_bytes > 0);
        assert!(!handle.history(None, true).is_empty());
        assert!(handle.coarse().is_some());
        // The task holds the history only while recording: once the handles are gone it stops.
        let weak = Arc::downgrade(&handle.history);
        drop((handle, clone));
        while weak.upgrade().is_some() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the task kept running"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn is_root() -> bool {
        read_text(Path::new("/proc/self/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|line| line.strip_prefix("Uid:"))
            .and_then(|uids| uids.split_ascii_whitespace().nth(1).map(|e| e == "0"))
            .unwrap_or(false)
    }

    /// Unmounts on drop, so a failed assertion does not leave the mount behind.
    struct Mounted<'a>(&'a Path);

    impl Drop for Mounted<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }

    #[test]
    fn a_data_dir_on_a_small_tmpfs_reports_that_tmpfs() {
        if !is_root() {
            eprintln!("skipped: mounting a tmpfs needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"])
            .arg(dir.path())
            .output();
        match mounted {
            Ok(output) if output.status.success() => {}
            Ok(output) => {
                eprintln!(
                    "skipped: mount failed: {}",
                    String::from_utf8_lossy(&output.stderr).trim()
                );
                return;
            }
            Err(error) => {
                eprintln!("skipped: cannot run mount: {error}");
                return;
            }
        }
        let _mounted = Mounted(dir.path());
        let mut monitor = Monitor::new(dir.path(), MonitorConfig::default()).unwrap();
        let sample = monitor.sample();
        assert!(
            (7 * MIB..=9 * MIB).contains(&sample.disk_total_bytes),
            "{} total on an 8 MiB tmpfs",
            crdt_store::headroom::human_bytes(sample.disk_total_bytes)
        );
        assert!(sample.disk_free_bytes <= sample.disk_total_bytes);
    }
}
