//! A running node's part in the release rollout in effect: it reports what it runs (by the
//! SHA-256 of its own executable), and when the decision admits it, fetches the release,
//! checks it against the signed record, writes it beside the installed binary and asks the
//! daemon to stop for the swap ([`super::swap`]). When the rollout is aborted, a node that runs
//! the release swaps back to the binary it kept.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use crdt_store::docs::release::{REPORT_KEY, Release};
use crdt_store::docs::rollout::{NodeState, Report, Status};
use crdt_store::{DocName, MeshRegistry, StoreHandle};

use super::swap::{self, Outcome, SwapRequest, Trial};
use crate::config::DataDir;
use crate::fleet::artifacts::Artifacts;
use crate::fleet::sync::SyncHandle;
use crate::run::rollout::Standing;

/// How often the node looks again when nothing changed (soak time passes without a change).
const TICK: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub struct Agent {
    pub node_id: String,
    pub dir: DataDir,
    pub mesh_id: String,
    pub trust: crate::security::trust::Trust,
    /// The binary this node runs, as installed (resolved at start).
    pub installed: PathBuf,
    /// When this process started, ms since the epoch: when a node that finds itself on a
    /// release switched to it, if nothing older says.
    pub started_ms: i64,
    pub store: StoreHandle,
    pub sync: SyncHandle,
    pub artifacts: Artifacts,
    pub mesh: mesh::net::driver::MeshHandle,
    /// The node's alerts, for a rollout gated on them (`--gate-alerts`).
    pub alerts: crate::ops::alerts::AlertsHandle,
}

/// Runs until the node should stop for a swap, which the returned request describes; a trial
/// child (see [`swap::TRIAL_ENV`]) takes no part and waits forever.
pub async fn run(agent: Agent, mut changes: tokio::sync::watch::Receiver<u64>) -> SwapRequest {
    if std::env::var_os(swap::TRIAL_ENV).is_some() {
        return std::future::pending().await;
    }
    let mut trial = swap::read_trial(&agent.dir);
    // Hashed when a release rollout first concerns this node, not at every start.
    let mut own_sha = None;
    let mut verified = super::VerifiedReleases::default();
    let mut tick = tokio::time::interval(TICK);
    let mut fetch_failed_at: Option<String> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            changed = changes.changed() => if changed.is_err() { return std::future::pending().await },
        }
        match step(&agent, &mut own_sha, &mut trial, &mut verified).await {
            Ok(Some(request)) => return request,
            Ok(None) => fetch_failed_at = None,
            Err(e) => {
                let text = format!("{e:#}");
                if fetch_failed_at.as_deref() != Some(text.as_str()) {
                    tracing::warn!(error = %text, "release rollout: will try again");
                }
                fetch_failed_at = Some(text);
            }
        }
    }
}

/// The registry as the store last decoded it (decoded again only when it changed).
async fn registry(store: &StoreHandle) -> Result<std::sync::Arc<MeshRegistry>> {
    Ok(store.call(|s| s.registry()).recv().await?)
}

/// One look at the rollout: the report, and a swap when one is due.
async fn step(
    agent: &Agent,
    own_sha: &mut Option<String>,
    trial: &mut Option<Trial>,
    verified: &mut super::VerifiedReleases,
) -> Result<Option<SwapRequest>> {
    let registry = registry(&agent.store).await?;
    let trust = agent.trust.all();
    let releases = verified.update(&registry, &agent.mesh_id, &trust);
    let Some(facts) = super::facts(&registry, &releases, &agent.mesh_id, &trust) else {
        return Ok(None);
    };
    let own_sha: &str = match own_sha {
        Some(sha) => sha,
        None => own_sha.insert(
            tokio::task::spawn_blocking(|| {
                crate::fleet::artifacts::store::sha256_of(std::path::Path::new("/proc/self/exe"))
            })
            .await?
            .context("hashing this node's own binary")?,
        ),
    };
    let plan = &facts.plan;
    let previous: Option<Report> = registry
        .nodes
        .get(&agent.node_id)
        .and_then(|e| e.rollouts.get(REPORT_KEY))
        .and_then(|t| serde_json::from_str(t).ok())
        .filter(|r: &Report| r.rollout == plan.id);
    let on_new = own_sha == facts.release.sha256;
    let aborted = matches!(facts.decision.status, Status::Aborted { .. });
    let ended = trial.as_ref().filter(|t| t.rollout == plan.id);
    let trial_failure = match ended.map(|t| &t.outcome) {
        Some(Some(Outcome::Failed { reason })) => Some(reason.clone()),
        Some(None) if !on_new => Some(format!(
            "the node stopped during the trial of release {} (killed, or its machine went \
             down); it went on with the binary it ran",
            facts.release.version
        )),
        // Installed and healthy, yet what runs is not it: the release starts another binary
        // (a wrapper script). Installing it again would loop.
        Some(Some(Outcome::Installed { .. }))
            if !on_new && ended.is_some_and(|t| t.sha256 == facts.release.sha256) =>
        {
            Some(format!(
                "it was installed at {}, but the process it started runs a binary of another \
                 SHA-256 (a wrapper that starts another binary?)",
                agent.installed.display()
            ))
        }
        _ => None,
    };
    let switched_ms = match ended.and_then(|t| t.outcome.as_ref()) {
        Some(Outcome::Installed { at_ms, .. }) => *at_ms,
        _ => agent.started_ms,
    };
    let admitted = facts.decision.admitted.contains(&agent.node_id)
        || facts.decision.status == Status::Completed;
    let now = crate::node::now_ms();
    let since_ms = previous
        .as_ref()
        .map(|r| r.since_ms)
        .filter(|s| *s > 0 && on_new)
        .unwrap_or(switched_ms);
    let next = match trial_failure {
        Some(reason)
            if previous
                .as_ref()
                .is_none_or(|r| r.state != NodeState::Failed) =>
        {
            Report {
                rollout: plan.id.clone(),
                version: 0,
                state: NodeState::Failed,
                runs: 0,
                failures: 0,
                since_ms: previous.as_ref().map_or(0, |r| r.since_ms),
                at_ms: now,
                reason: Some(format!("release {}: {reason}", facts.release.version)),
                alerts: 0,
            }
        }
        _ => crate::run::rollout::next_report(
            &Standing {
                workflow: REPORT_KEY.into(),
                plan: plan.clone(),
                version: u64::from(on_new),
                cannot_run: None,
                runs: 0,
                failures: 0,
                since_ms,
                fetching: admitted && !aborted && !on_new,
                alerts: if on_new {
                    agent.alerts.fired_since(since_ms, plan.gate.alerts)
                } else {
                    Vec::new()
                },
            },
            previous.as_ref(),
            aborted,
            now,
        ),
    };
    if crdt_store::docs::rollout::news(plan, previous.as_ref(), &next) {
        write_report(&agent.store, &agent.node_id, &next).await?;
    }
    // The trial's outcome is in the fleet's hands now.
    if trial
        .as_ref()
        .is_some_and(|t| t.outcome.is_some() || !on_new)
    {
        let _ = std::fs::remove_file(swap::trial_file(&agent.dir));
        *trial = None;
    }
    if next.state == NodeState::Failed {
        return Ok(None);
    }
    if on_new && aborted {
        return roll_back(agent, &facts.release).await.map(Some);
    }
    if on_new || aborted || !admitted {
        return Ok(None);
    }
    crate::fleet::artifacts::fetch::fetch(&agent.sync, &agent.artifacts, &facts.release.artifact)
        .await
        .with_context(|| format!("fetching release {}", facts.release.version))?;
    match install(agent, &facts.release).await {
        Ok(request) => Ok(Some(request)),
        // Fetched but not installable here (a binary directory the node may not write, bytes
        // that do not match the signed record): no retry would change that.
        Err(e) => {
            let failed = Report {
                state: NodeState::Failed,
                at_ms: crate::node::now_ms(),
                reason: Some(format!("release {}: {e:#}", facts.release.version)),
                ..next
            };
            write_report(&agent.store, &agent.node_id, &failed).await?;
            Ok(None)
        }
    }
}

async fn write_report(store: &StoreHandle, me: &str, report: &Report) -> Result<()> {
    let text = serde_json::to_string(report)?;
    let me = me.to_owned();
    store
        .call(move |s| {
            s.update::<MeshRegistry, _>(&DocName::Mesh, |m| {
                if let Some(entry) = m.nodes.get_mut(&me) {
                    entry.rollouts.insert(REPORT_KEY.into(), text.clone());
                }
            })
        })
        .recv()
        .await?;
    Ok(())
}

async fn had_peers(mesh: &mesh::net::driver::MeshHandle) -> bool {
    mesh.peers().await.is_ok_and(|peers| {
        peers
            .iter()
            .any(|p| p.state == mesh::proto::membership::PeerState::Connected)
    })
}

/// Writes the fetched release beside the installed binary and checks it.
async fn install(agent: &Agent, release: &Release) -> Result<SwapRequest> {
    let candidate = swap::candidate_path(&agent.installed);
    let (id, out, sha) = (
        release.artifact.clone(),
        candidate.clone(),
        release.sha256.clone(),
    );
    agent
        .artifacts
        .with(move |s| {
            let manifest = s.manifest(&id)?;
            if manifest.sha256 != sha {
                bail!(
                    "artifact {id} holds a file of sha256 {}, not the {sha} the release's \
                     signed record names",
                    manifest.sha256
                );
            }
            s.write_out(&id, &out, crate::node::now_ms())?;
            let written = crate::fleet::artifacts::store::sha256_of(&out)?;
            if written != sha {
                let _ = std::fs::remove_file(&out);
                bail!(
                    "the binary written to {} does not hash to {sha}",
                    out.display()
                );
            }
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o755))?;
            Ok(())
        })
        .await
        .with_context(|| {
            format!(
                "writing release {} beside {}",
                release.version,
                agent.installed.display()
            )
        })?;
    tracing::info!(version = %release.version, candidate = %candidate.display(), "release fetched and verified; stopping to try it");
    Ok(SwapRequest {
        version: release.version.clone(),
        rollout: release.rollout_id(),
        sha256: release.sha256.clone(),
        candidate,
        installed: agent.installed.clone(),
        trial: Duration::from_millis(release.trial_ms.max(1_000)),
        had_peers: had_peers(&agent.mesh).await,
    })
}

/// The rollout was aborted and this node runs the release: back to the binary it kept.
async fn roll_back(agent: &Agent, release: &Release) -> Result<SwapRequest> {
    let previous = swap::previous_path(&agent.installed);
    let candidate = swap::candidate_path(&agent.installed);
    let (from, to) = (previous.clone(), candidate.clone());
    let sha = tokio::task::spawn_blocking(move || -> Result<String> {
        std::fs::copy(&from, &to).with_context(|| {
            format!(
                "the rollout was aborted but {} cannot be read",
                from.display()
            )
        })?;
        crate::fleet::artifacts::store::sha256_of(&to)
    })
    .await??;
    if sha == release.sha256 {
        let _ = std::fs::remove_file(&candidate);
        bail!(
            "the rollout was aborted but {} is release {} itself",
            previous.display(),
            release.version
        );
    }
    tracing::warn!(version = %release.version, "release rollout aborted: returning to the binary this node ran before");
    Ok(SwapRequest {
        version: format!("{} (back to the binary before)", release.version),
        rollout: release.rollout_id(),
        sha256: sha,
        candidate,
        installed: agent.installed.clone(),
        trial: Duration::from_millis(release.trial_ms.max(1_000)),
        had_peers: had_peers(&agent.mesh).await,
    })
}
