//! `rhizome rollout start|status|pause|resume|abort`: staged rollouts of a workflow's versions
//! (see [`crate::run::rollout`]). Through the running node's API when one runs on the data
//! dir, else on its store.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use crdt_store::WorkflowDoc;
use crdt_store::docs::rollout::{Action, Control, NodeState, Status};

use crate::cli::client::encode_query;
use crate::cli::output;
use crate::node::Node;
use crate::run::rollout::{RolloutStatus, StageArgs, StartRequest};

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Roll a new version of a workflow out in stages: it is stored as the next version, and
    /// each targeted node runs it once its stage is reached (one canary, then 10 %, then all,
    /// by default), every stage gated by the runs of the one before; the others run the
    /// version in effect now. Decided by every node from replicated facts, so it goes on
    /// while the cloud is away.
    #[command(disable_version_flag = true)]
    Start {
        workflow: String,
        /// The new definition (YAML).
        #[arg(long, conflicts_with = "version")]
        file: Option<PathBuf>,
        /// Roll an earlier version's definition out again, as the next version.
        #[arg(long)]
        version: Option<u64>,
        #[command(flatten)]
        stages: StageArgs,
        #[arg(long)]
        json: bool,
    },
    /// Where the rollout of a workflow's version in effect stands, node by node: the stage,
    /// the version each runs, its state (pending, fetching, active, failed, rolled-back) and
    /// why.
    Status {
        workflow: String,
        #[arg(long)]
        json: bool,
    },
    /// Hold the rollout at the stage it reached (on a control node).
    Pause { workflow: String },
    /// Lift the pauses this node has seen (on a control node).
    Resume { workflow: String },
    /// Stop the rollout: every node runs the version before it (on a control node).
    Abort { workflow: String },
}

pub fn rollout(node: &Node, cmd: RolloutCommand) -> Result<()> {
    let api = crate::cli::client::running_node(&node.dir);
    match cmd {
        RolloutCommand::Start {
            workflow,
            file,
            version,
            stages,
            json,
        } => {
            let yaml = file
                .as_ref()
                .map(|f| {
                    std::fs::read_to_string(f)
                        .with_context(|| format!("cannot read {}", f.display()))
                })
                .transpose()?;
            let request = StartRequest {
                workflow: workflow.clone(),
                yaml,
                version,
                stages,
            };
            let stored: WorkflowDoc = match &api {
                Some(api) => api.post(
                    &format!("/rollouts/{}", encode_query(&workflow)),
                    &serde_json::to_string(&request)?,
                )?,
                None => crate::run::rollout::start_request(
                    &mut node.open_store()?,
                    request,
                    &node.writer()?,
                )?,
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&stored)?);
            } else {
                print_started(&stored);
            }
            Ok(())
        }
        RolloutCommand::Status { workflow, json } => {
            let status: RolloutStatus = match &api {
                Some(api) => api.get(&format!("/rollouts/{}", encode_query(&workflow)))?,
                None => {
                    let writer = node.writer()?;
                    crate::run::rollout::status(
                        &mut node.open_store()?,
                        &workflow,
                        &writer.mesh_id,
                        &writer.trust.all(),
                    )?
                }
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
                return Ok(());
            }
            print_status(&status);
            Ok(())
        }
        RolloutCommand::Pause { workflow } => control(node, api, &workflow, Action::Pause),
        RolloutCommand::Resume { workflow } => control(node, api, &workflow, Action::Resume),
        RolloutCommand::Abort { workflow } => control(node, api, &workflow, Action::Abort),
    }
}

/// What `rollout start`, and `workflow apply` of a file that declares its rollout, say.
pub fn print_started(stored: &WorkflowDoc) {
    if let Some(plan) = &stored.rollout {
        println!(
            "rolling out version {} of workflow {} from version {} in {} stage(s); \
             `rhizome rollout status {}` follows it",
            stored.version,
            stored.id,
            plan.baseline,
            plan.stages.len(),
            stored.id
        );
    }
}

fn control(
    node: &Node,
    api: Option<crate::cli::client::Api>,
    workflow: &str,
    action: Action,
) -> Result<()> {
    let word = crate::run::rollout::action_word(action);
    let control: Control = match api {
        Some(api) => api.post(&format!("/rollouts/{}/{word}", encode_query(workflow)), "")?,
        None => crate::run::rollout::control(
            &mut node.open_store()?,
            workflow,
            action,
            &node.writer()?,
        )?,
    };
    print_control(word, &control);
    Ok(())
}

/// What `rollout` and `release` print once a control is stored.
pub fn print_control(what: &str, control: &Control) {
    println!(
        "{what}: stored as control {} (at stage {}); every node obeys it once it has it",
        control.id,
        control.stage + 1
    );
}

/// Where a rollout stands, in words: `running, stage 2 of 3`.
pub(crate) fn status_words(status: &Status, stages: usize) -> String {
    match status {
        Status::Running { stage } => format!("running, stage {} of {stages}", stage + 1),
        Status::Paused { stage } => format!("paused at stage {} of {stages}", stage + 1),
        Status::Completed => "completed".to_owned(),
        Status::Aborted { reason } => format!("aborted: {reason}"),
    }
}

fn print_status(status: &RolloutStatus) {
    let state = status_words(&status.status, status.stage_sizes.len());
    println!(
        "rollout {} (version {} from {}): {state}",
        status.rollout, status.version, status.baseline
    );
    let rows: Vec<Vec<String>> = status
        .nodes
        .iter()
        .map(|n| {
            let (running, state, runs, reason) = match &n.report {
                Some(r) => (
                    r.version.to_string(),
                    state_word(r.state).to_owned(),
                    format!("{}/{}", r.runs - r.failures.min(r.runs), r.runs),
                    r.reason.clone().unwrap_or_default(),
                ),
                None => ("?".into(), "no report".into(), String::new(), String::new()),
            };
            vec![
                if n.name.is_empty() {
                    n.node.clone()
                } else {
                    n.name.clone()
                },
                (n.stage + 1).to_string(),
                n.assigned.to_string(),
                running,
                state,
                runs,
                reason,
            ]
        })
        .collect();
    print!(
        "{}",
        output::table(
            &[
                "NODE", "STAGE", "ASSIGNED", "RUNNING", "STATE", "OK/RUNS", "REASON"
            ],
            &rows
        )
    );
    for ignored in &status.ignored {
        println!("ignored control {ignored}");
    }
}

pub(crate) fn state_word(state: NodeState) -> &'static str {
    match state {
        NodeState::Pending => "pending",
        NodeState::Fetching => "fetching",
        NodeState::Active => "active",
        NodeState::Succeeded => "succeeded",
        NodeState::Failed => "failed",
        NodeState::RolledBack => "rolled-back",
    }
}
