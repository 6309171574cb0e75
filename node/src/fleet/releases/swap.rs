//! Swapping the running binary for a release, without ever leaving a node that cannot start.
//!
//! After the node stopped (store closed, sockets released), the process that ran it becomes the
//! trial's supervisor: it starts the candidate binary (written beside the installed one and
//! checked against the signed SHA-256) as a child with the node's own arguments, and waits for
//! it to come up healthy: its API answers, `/health` says ok, and it has a peer when the node
//! had one. Then it stops the child, keeps the installed binary as `<binary>.previous`, renames
//! the candidate over the installed path (the rename is the commit) and re-executes the
//! installed path in its own process, so the node keeps its pid (a service manager or a parent
//! that watches it sees one process throughout). If the child exits or is not healthy in time,
//! it is killed, the candidate removed and the installed (old) binary executed again, which
//! reports the release `failed` with the reason.
//!
//! A kill -9 at any point leaves the installed path on a binary that ran: before the rename it
//! is the old one (the child dies with its supervisor: `PR_SET_PDEATHSIG`), after it the new
//! one, which came up healthy. The trial file in the data dir says how the last swap ended;
//! one without an outcome, found by a binary other than the candidate, is a trial cut short
//! and counts as failed (retrying could loop on a binary that takes the machine down).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::DataDir;

/// The trial file, in the data dir.
pub const TRIAL_FILE: &str = "release-trial.json";

/// Set in the environment of a trial child: it runs as a node but takes no part in release
/// rollouts until its supervisor made it the installed binary.
pub const TRIAL_ENV: &str = "RHIZOME_RELEASE_TRIAL";

/// How long a child asked to stop may take before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// The last swap, as the data dir records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trial {
    pub version: String,
    /// The rollout ([`crdt_store::docs::release::Release::rollout_id`]).
    pub rollout: String,
    pub sha256: String,
    pub started_ms: i64,
    /// `None` while the trial runs (or when it was cut short).
    pub outcome: Option<Outcome>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Outcome {
    Installed { at_ms: i64, swap_ms: u64 },
    Failed { reason: String },
}

pub fn trial_file(dir: &DataDir) -> PathBuf {
    dir.root.join(TRIAL_FILE)
}

pub fn read_trial(dir: &DataDir) -> Option<Trial> {
    let bytes = std::fs::read(trial_file(dir)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

pub fn write_trial(dir: &DataDir, trial: &Trial) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(trial).expect("a trial encodes");
    crate::durable_file::replace(&trial_file(dir), &bytes, 0o600)
}

/// Where a release is written before its trial: beside the installed binary, so that the
/// commit is a rename within one directory.
pub fn candidate_path(installed: &Path) -> PathBuf {
    sibling(installed, "candidate")
}

/// Where the binary a release replaced is kept, for rollback.
pub fn previous_path(installed: &Path) -> PathBuf {
    sibling(installed, "previous")
}

fn sibling(installed: &Path, suffix: &str) -> PathBuf {
    let name = installed
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "rhizome".into());
    installed.with_file_name(format!("{name}.{suffix}"))
}

/// What the node asks for when it stops to swap binaries.
#[derive(Debug, Clone)]
pub struct SwapRequest {
    pub version: String,
    pub rollout: String,
    pub sha256: String,
    /// The verified candidate, beside `installed`.
    pub candidate: PathBuf,
    /// The binary the node runs (resolved when it started).
    pub installed: PathBuf,
    pub trial: Duration,
    /// The node had a peer when it stopped: the new binary must reach one too.
    pub had_peers: bool,
}

/// Runs the swap after the node stopped. Returns only if the final exec failed.
pub fn swap(dir: &DataDir, request: &SwapRequest) -> anyhow::Error {
    let started = Instant::now();
    let mut trial = Trial {
        version: request.version.clone(),
        rollout: request.rollout.clone(),
        sha256: request.sha256.clone(),
        started_ms: crate::node::now_ms(),
        outcome: None,
    };
    if let Err(e) = write_trial(dir, &trial) {
        trial.outcome = Some(Outcome::Failed {
            reason: format!("cannot record the trial in the data dir: {e}"),
        });
    } else {
        eprintln!(
            "release {}: trying {} beside {} (up to {:?} to come up healthy)",
            request.version,
            request.candidate.display(),
            request.installed.display(),
            request.trial
        );
        trial.outcome = Some(
            match try_candidate(dir, request).and_then(|()| commit(request)) {
                Ok(()) => Outcome::Installed {
                    at_ms: crate::node::now_ms(),
                    swap_ms: started.elapsed().as_millis() as u64,
                },
                Err(reason) => {
                    let _ = std::fs::remove_file(&request.candidate);
                    Outcome::Failed { reason }
                }
            },
        );
    }
    match &trial.outcome {
        Some(Outcome::Installed { swap_ms, .. }) => eprintln!(
            "release {}: installed at {} in {swap_ms} ms (the binary it replaced is {}); \
             starting it",
            request.version,
            request.installed.display(),
            previous_path(&request.installed).display()
        ),
        Some(Outcome::Failed { reason }) => eprintln!(
            "release {}: not installed ({reason}); starting {} again",
            request.version,
            request.installed.display()
        ),
        None => {}
    }
    if let Err(e) = write_trial(dir, &trial) {
        eprintln!("cannot record how the release trial ended: {e}");
    }
    exec_installed(&request.installed)
}

/// Replaces this process with `installed`, with the arguments this process was given.
pub fn exec_installed(installed: &Path) -> anyhow::Error {
    use std::os::unix::process::CommandExt;
    let err = std::process::Command::new(installed)
        .args(std::env::args_os().skip(1))
        .env_remove(TRIAL_ENV)
        .exec();
    anyhow::Error::new(err).context(format!("cannot execute {}", installed.display()))
}

/// Starts the candidate as a child and waits for it to come up healthy; stops it either way.
fn try_candidate(dir: &DataDir, request: &SwapRequest) -> Result<(), String> {
    let _ = std::fs::remove_file(dir.http_addr());
    let mut command = std::process::Command::new(&request.candidate);
    command
        .args(std::env::args_os().skip(1))
        .env(TRIAL_ENV, &request.version);
    die_with_this_process(&mut command);
    let mut child = command
        .spawn()
        .map_err(|e| format!("it cannot be started: {e}"))?;
    let deadline = Instant::now() + request.trial;
    let mut last = String::from("its API never answered");
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                return Err(format!("it exited with {status} before it came up healthy"));
            }
            Ok(None) => {}
            Err(e) => return Err(format!("cannot watch it: {e}")),
        }
        if let Some(api) = crate::cli::client::running_node(dir) {
            match api.health() {
                Ok(health) if health.status == "ok" => {
                    if !request.had_peers || has_a_peer(&api) {
                        return stop(&mut child);
                    }
                    last = "it reached no peer".into();
                }
                Ok(health) => {
                    last = format!("it says {}: {}", health.status, health.problems.join("; "))
                }
                Err(e) => last = format!("its health does not answer: {e:#}"),
            }
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "it did not come up healthy within {:?} ({last})",
                request.trial
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn has_a_peer(api: &crate::cli::client::Api) -> bool {
    api.get::<Vec<crate::api::PeerView>>("/peers")
        .is_ok_and(|peers| peers.iter().any(|p| p.state == "connected"))
}

/// SIGTERM, then the grace period; a child that does not stop is killed and counts as failed.
fn stop(child: &mut std::process::Child) -> Result<(), String> {
    #[allow(unsafe_code)]
    // SAFETY: kill(2) on the pid of a child spawned here and not yet reaped.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let asked = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => {
                return Err(format!("it came up healthy but stopped with {status}"));
            }
            Ok(None) if asked.elapsed() < STOP_GRACE => {
                std::thread::sleep(Duration::from_millis(50))
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("it did not stop within {STOP_GRACE:?} of SIGTERM"));
            }
        }
    }
}

/// Keeps the installed binary as `.previous` and renames the candidate over it.
fn commit(request: &SwapRequest) -> Result<(), String> {
    let previous = previous_path(&request.installed);
    let kept = sibling(&request.installed, "previous.tmp");
    let step = |what: &str, e: std::io::Error| format!("{what}: {e}");
    std::fs::copy(&request.installed, &kept)
        .map_err(|e| step("cannot keep the installed binary", e))?;
    std::fs::File::open(&kept)
        .and_then(|f| f.sync_all())
        .map_err(|e| step("cannot sync the kept binary", e))?;
    std::fs::rename(&kept, &previous).map_err(|e| step("cannot keep the installed binary", e))?;
    std::fs::rename(&request.candidate, &request.installed)
        .map_err(|e| step("cannot install the new binary", e))?;
    if let Some(parent) = request.installed.parent() {
        std::fs::File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(|e| step("cannot sync the binary's directory", e))?;
    }
    Ok(())
}

/// The child is killed when its supervisor dies, so that a kill -9 during the trial never
/// leaves a stray node holding the store.
fn die_with_this_process(command: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    #[allow(unsafe_code)]
    // SAFETY: the closure runs in the child between fork and exec and calls only prctl(2),
    // which is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kept_and_the_tried_binary_sit_beside_the_installed_one() {
        let installed = Path::new("/usr/local/bin/rhizome");
        assert_eq!(
            candidate_path(installed),
            Path::new("/usr/local/bin/rhizome.candidate")
        );
        assert_eq!(
            previous_path(installed),
            Path::new("/usr/local/bin/rhizome.previous")
        );
    }

    #[test]
    fn a_trial_reads_back_as_written() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path().to_owned());
        let trial = Trial {
            version: "0.2.0".into(),
            rollout: "release@0.2.0".into(),
            sha256: "ab".into(),
            started_ms: 7,
            outcome: Some(Outcome::Failed {
                reason: "it exited".into(),
            }),
        };
        write_trial(&dir, &trial).unwrap();
        assert_eq!(read_trial(&dir), Some(trial));
    }
}
