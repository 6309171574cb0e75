//! `rhizome release publish|rollout|status|pause|resume|abort`: releases of the `rhizome` binary itself, rolled
//! out over the fleet in stages (see [`crate::fleet::releases`]). Through the running node's
//! API when one runs on the data dir, else on its store.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use crdt_store::docs::release::Release;
use crdt_store::docs::rollout::{Action, Control};

use crate::api::releases::PublishRequest;
use crate::cli::output;
use crate::cli::rollout::{state_word, status_words};
use crate::fleet::artifacts::store::SHA256_CHUNKS_FORMAT;
use crate::fleet::releases::{ReleaseStatus, RolloutRequest};
use crate::node::Node;
use crate::run::rollout::StageArgs;
use crate::run::rollout::action_word;

#[derive(Debug, Subcommand)]
pub enum ReleaseCommand {
    /// Publish a `rhizome` binary as release X.Y.Z (on a control node): it is added as an
    /// artifact and named by a record this node signs, which every node verifies before it
    /// fetches or runs anything.
    #[command(disable_version_flag = true)]
    Publish {
        binary: PathBuf,
        /// The release's version, X.Y.Z.
        #[arg(long)]
        version: String,
        #[arg(long)]
        json: bool,
    },
    /// Roll a published release out in stages (on a control node). Each node admitted fetches
    /// it, checks it against the signed SHA-256, tries it beside its installed binary and
    /// keeps it only if it comes up healthy within `--trial`; otherwise it returns to the
    /// binary it ran and reports the release failed, which aborts the rollout by its
    /// criteria. The gate is health over `--gate-soak` (default 30s here, not 1m), and with
    /// `--gate-alerts` no alert of that severity since the switch; `--gate-runs` defaults to 0
    /// here (a binary has no runs of its own).
    #[command(disable_version_flag = true)]
    Rollout {
        version: String,
        #[command(flatten)]
        stages: StageArgs,
        /// How long a new binary has to come up healthy (its store open, a peer reached when
        /// it had one, `/health` ok) [default: 60s].
        #[arg(long)]
        trial: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// The releases published, and where the release rolling out stands node by node.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Hold the rollout of release VERSION at the stage it reached (on a control node).
    #[command(disable_version_flag = true)]
    Pause { version: String },
    /// Lift the pauses of the rollout of release VERSION this node has seen (on a control
    /// node).
    #[command(disable_version_flag = true)]
    Resume { version: String },
    /// Stop the rollout of release VERSION: every node that took it goes back to the binary
    /// it ran before (on a control node).
    #[command(disable_version_flag = true)]
    Abort { version: String },
}

pub fn release(node: &Node, cmd: ReleaseCommand) -> Result<()> {
    let api = crate::cli::client::running_node(&node.dir);
    match cmd {
        ReleaseCommand::Publish {
            binary,
            version,
            json,
        } => {
            let name = format!("rhizome-{version}");
            let release: Release = match &api {
                Some(api) => {
                    let bytes = std::fs::read(&binary)
                        .with_context(|| format!("cannot read {}", binary.display()))?;
                    let added: crate::fleet::artifacts::store::Added = api.post_bytes(
                        &format!("/artifacts?name={name}&format={SHA256_CHUNKS_FORMAT}"),
                        &bytes,
                        std::time::Duration::from_secs(60 + bytes.len() as u64 / 10_000_000),
                    )?;
                    let request = PublishRequest {
                        version,
                        artifact: added.id,
                    };
                    api.post("/releases", &serde_json::to_string(&request)?)?
                }
                None => {
                    let mut artifacts =
                        crate::fleet::artifacts::ArtifactStore::open(&node.dir.artifacts())?;
                    let added = artifacts.add_in_format(
                        &binary,
                        &name,
                        crate::node::now_ms(),
                        SHA256_CHUNKS_FORMAT,
                    )?;
                    let manifest = artifacts.manifest(&added.id)?;
                    crate::fleet::releases::publish(
                        &mut node.open_store()?,
                        &version,
                        &manifest,
                        &added.id,
                        &node.writer()?,
                    )?
                }
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&release)?);
            } else {
                println!(
                    "published release {} ({}, sha256 {}) as artifact {}; `rhizome release \
                     rollout {}` rolls it out",
                    release.version,
                    output::bytes(release.size),
                    release.sha256,
                    output::short_id(&release.artifact),
                    release.version
                );
            }
            Ok(())
        }
        ReleaseCommand::Rollout {
            version,
            stages,
            trial,
            json,
        } => {
            let request = RolloutRequest {
                version: version.clone(),
                stages,
                trial,
            };
            let release: Release = match &api {
                Some(api) => api.post(
                    &format!(
                        "/releases/{}/rollout",
                        crate::cli::client::encode_query(&version)
                    ),
                    &serde_json::to_string(&request)?,
                )?,
                None => crate::fleet::releases::start_rollout(
                    &mut node.open_store()?,
                    &request,
                    &node.writer()?,
                )?,
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&release)?);
            } else {
                println!(
                    "rolling out release {} in {} stage(s); `rhizome release status` follows it",
                    release.version,
                    release.rollout.as_ref().map_or(0, |p| p.stages.len())
                );
            }
            Ok(())
        }
        ReleaseCommand::Pause { version } => control(node, api, &version, Action::Pause),
        ReleaseCommand::Resume { version } => control(node, api, &version, Action::Resume),
        ReleaseCommand::Abort { version } => control(node, api, &version, Action::Abort),
        ReleaseCommand::Status { json } => {
            let status: ReleaseStatus = match &api {
                Some(api) => api.get("/releases")?,
                None => {
                    let writer = node.writer()?;
                    let registry = node.open_store()?.registry()?;
                    crate::fleet::releases::status(&registry, &writer.mesh_id, &writer.trust.all())
                }
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print_status(&status);
            }
            Ok(())
        }
    }
}

fn control(
    node: &Node,
    api: Option<crate::cli::client::Api>,
    version: &str,
    action: Action,
) -> Result<()> {
    let control: Control = match api {
        Some(api) => api.post(
            &format!(
                "/releases/{}/{}",
                crate::cli::client::encode_query(version),
                action_word(action)
            ),
            "",
        )?,
        None => crate::fleet::releases::control(
            &mut node.open_store()?,
            version,
            action,
            &node.writer()?,
        )?,
    };
    crate::cli::rollout::print_control(
        &format!("{} release {version}", action_word(action)),
        &control,
    );
    Ok(())
}

fn print_status(status: &ReleaseStatus) {
    if status.published.is_empty() {
        println!("no release is published");
    }
    for p in &status.published {
        println!(
            "release {}: {}, sha256 {}, published by {} at {}",
            p.version,
            output::bytes(p.size),
            output::short_id(&p.sha256),
            output::short_id(&p.published_by),
            crdt_store::format_timestamp(p.published_ms)
        );
    }
    if let Some(rollout) = &status.rollout {
        println!(
            "rollout of release {}: {}",
            rollout.version,
            status_words(&rollout.status, rollout.stage_sizes.len())
        );
        let rows: Vec<Vec<String>> = rollout
            .nodes
            .iter()
            .map(|n| {
                let (state, reason) = match &n.report {
                    Some(r) => (
                        state_word(r.state).to_owned(),
                        r.reason.clone().unwrap_or_default(),
                    ),
                    None => ("no report".into(), String::new()),
                };
                vec![
                    if n.name.is_empty() {
                        n.node.clone()
                    } else {
                        n.name.clone()
                    },
                    (n.stage + 1).to_string(),
                    n.admitted.to_string(),
                    state,
                    reason,
                ]
            })
            .collect();
        print!(
            "{}",
            output::table(&["NODE", "STAGE", "ADMITTED", "STATE", "REASON"], &rows)
        );
    }
    for ignored in &status.ignored {
        println!("ignored {ignored}");
    }
}
