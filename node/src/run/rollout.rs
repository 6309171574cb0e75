//! Staged rollouts in a node: starting one (a new version that carries its plan, signed with
//! it), its controls (pause, resume, abort: signed by control nodes, append-only in the
//! workflow's document), the facts every node decides from, and which version this node runs.
//!
//! The decision itself is [`crdt_store::docs::rollout::decide`], a pure function of the plan,
//! the controls and the nodes' reports (each node's own registry entry): nodes on both sides of
//! a partition that hold the same facts run the same versions.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result, bail};
use crdt_store::docs::history::DefinitionHistory;
use crdt_store::docs::rollout::{
    self as core, Action, AlertGate, Control, Decision, Gate, Plan, Report, RolloutControls,
    SignedControl, Stage,
};
use crdt_store::{DocName, Resolution, Store, WorkflowDoc, WorkflowVersions};
use serde::{Deserialize, Serialize};

use crate::run::workflow::{NodeTraits, StoredWorkflow, Writer, selects};

/// How a rollout is staged and gated: the flags of `rollout start`, and the `rollout:` section
/// of a workflow file (same names, `gate_runs` for `--gate-runs`). Each one left out takes the
/// file's value on the command line, else its default.
#[derive(Debug, Clone, Default, clap::Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StageArgs {
    /// Cumulative stage sizes: node counts or percentages of the targeted nodes
    /// [default: 1,10%,100%].
    #[arg(long)]
    pub stages: Option<String>,
    /// Runs of the new version each node of a stage must finish before the next stage
    /// [default: 3].
    #[arg(long)]
    pub gate_runs: Option<u32>,
    /// Success rate of those runs each node must reach, percent [default: 95].
    #[arg(long)]
    pub gate_success: Option<u8>,
    /// How long each node of a stage must run the new version first [default: 1m].
    #[arg(long)]
    pub gate_soak: Option<String>,
    /// Share of the nodes that took the new version whose failure aborts the rollout, percent
    /// (every node that took it goes back) [default: 50].
    #[arg(long)]
    pub abort_failures: Option<u8>,
    /// Nodes of a stage switching at once, at most, until they pass the gate (0: no limit)
    /// [default: 0].
    #[arg(long)]
    pub max_concurrent: Option<u32>,
    /// Alerts that fail a node once it took the new version: `warning` (and critical),
    /// `critical`, or `off` [default: off]. A failed node counts toward `--abort-failures`.
    #[arg(long)]
    pub gate_alerts: Option<String>,
}

/// `--stages 1,10%,100%`.
pub fn parse_stages(text: &str) -> Result<Vec<Stage>> {
    let mut stages = Vec::new();
    for part in text.split(',').map(str::trim) {
        let stage = match part.strip_suffix('%') {
            Some(p) => {
                let p: u8 = p
                    .parse()
                    .ok()
                    .filter(|p| (1..=100).contains(p))
                    .with_context(|| format!("stage `{part}`: a percentage is 1% to 100%"))?;
                Stage::Percent(p)
            }
            None => Stage::Nodes(part.parse().ok().filter(|n| *n >= 1).with_context(|| {
                format!("stage `{part}`: a node count (1 or more) or a percentage like 10%")
            })?),
        };
        stages.push(stage);
    }
    if stages.len() > 16 {
        bail!("--stages: {} stages; at most 16", stages.len());
    }
    Ok(stages)
}

impl StageArgs {
    /// The plan, without the version numbers (set when the version is written): each value
    /// given here, else `declared`'s (a workflow file's `rollout:`), else the default.
    pub fn plan_over(&self, declared: Option<&Plan>) -> Result<Plan> {
        let mut plan = declared.cloned().unwrap_or_else(default_plan);
        if let Some(stages) = &self.stages {
            plan.stages = parse_stages(stages)?;
        }
        if let Some(runs) = self.gate_runs {
            plan.gate.min_runs = runs;
        }
        if let Some(pct) = self.gate_success {
            plan.gate.min_success_pct = percent("gate success", pct)?;
        }
        if let Some(soak) = &self.gate_soak {
            plan.gate.soak_ms = crate::config::parse_duration(soak)
                .context("gate soak")?
                .as_millis() as u64;
        }
        if let Some(pct) = self.abort_failures {
            plan.abort_failure_pct = percent("abort failures", pct)?;
        }
        if let Some(n) = self.max_concurrent {
            plan.max_concurrent = n;
        }
        if let Some(alerts) = &self.gate_alerts {
            plan.gate.alerts = match alerts.as_str() {
                "off" => AlertGate::Off,
                "warning" => AlertGate::Warning,
                "critical" => AlertGate::Critical,
                other => bail!("gate alerts: `{other}` is not off, warning or critical"),
            };
        }
        Ok(plan)
    }
}

/// What a rollout does where neither the command line nor the file says: one canary, then
/// 10 %, then all.
pub(crate) fn default_plan() -> Plan {
    Plan {
        id: String::new(),
        version: 0,
        baseline: 0,
        stages: vec![Stage::Nodes(1), Stage::Percent(10), Stage::Percent(100)],
        gate: Gate::default(),
        abort_failure_pct: 50,
        max_concurrent: 0,
    }
}

fn percent(what: &str, pct: u8) -> Result<u8> {
    if !(1..=100).contains(&pct) {
        bail!("{what}: {pct} is not a percentage from 1 to 100");
    }
    Ok(pct)
}

/// Writes `definition` as the next version of its workflow, rolled out by `plan` from the
/// version in effect now (its baseline). Same rights, validation and signature as an apply.
pub fn start(
    store: &mut Store,
    definition: WorkflowDoc,
    plan: Plan,
    writer: &Writer,
) -> Result<WorkflowDoc> {
    if let Err(refused) = crate::security::workflow_rights::may_apply(store, writer)? {
        return Err(refused.into());
    }
    let standing: WorkflowVersions = store.read(&DocName::workflow(&definition.id)?)?;
    let Some(baseline) = version_in_effect(&standing) else {
        bail!(
            "workflow `{}` has no version in effect to roll out from: apply a first version \
             (`rhizome workflow apply`), then roll out the next one",
            definition.id
        );
    };
    write_rollout(store, &standing, definition, plan, baseline, writer)
}

/// The version a rollout would start from: the one in effect, if any (none before a first
/// version, after a delete, or while versions compete unresolved).
pub fn version_in_effect(standing: &WorkflowVersions) -> Option<u64> {
    match standing.resolve() {
        Resolution::Resolved(current) if !current.deleted && current.version > 0 => {
            Some(current.version)
        }
        _ => None,
    }
}

/// [`start`] once the caller checked the writer's rights and read the workflow's versions.
pub fn write_rollout(
    store: &mut Store,
    standing: &WorkflowVersions,
    definition: WorkflowDoc,
    mut plan: Plan,
    baseline: u64,
    writer: &Writer,
) -> Result<WorkflowDoc> {
    let version = standing
        .versions
        .iter()
        .map(|v| v.version)
        .max()
        .unwrap_or(0)
        + 1;
    plan.id = format!("{}@{version}", definition.id);
    plan.version = version;
    plan.baseline = baseline;
    let definition = WorkflowDoc {
        version,
        rollout: Some(plan),
        ..definition
    };
    let stored = writer.next_version(definition, &standing.versions)?;
    store.update::<WorkflowDoc, _>(&DocName::workflow(&stored.id)?, |doc| *doc = stored.clone())?;
    Ok(stored)
}

/// `rollout start` as the API takes it: the new definition (YAML) or an earlier version to
/// roll out again, and the stages.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StartRequest {
    pub workflow: String,
    pub yaml: Option<String>,
    pub version: Option<u64>,
    pub stages: StageArgs,
}

/// Carries out a [`StartRequest`] on the store thread.
pub fn start_request(
    store: &mut Store,
    request: StartRequest,
    writer: &Writer,
) -> Result<WorkflowDoc> {
    let (definition, declared) = match (&request.yaml, request.version) {
        (Some(yaml), None) => {
            let mut definition = crate::run::workflow::parse(yaml)?;
            let declared = definition.rollout.take();
            if definition.id != request.workflow {
                bail!(
                    "the file defines workflow `{}`, not `{}`",
                    definition.id,
                    request.workflow
                );
            }
            (definition, declared)
        }
        (None, Some(version)) => {
            let name = DocName::workflow(&request.workflow)?;
            let current: WorkflowDoc = store.read(&name)?;
            let definition = baseline_of(store, &current, version)
                .with_context(|| {
                    format!(
                        "workflow `{}` has no version {version} here",
                        request.workflow
                    )
                })?
                .content();
            (definition, None)
        }
        _ => bail!("give either a workflow file (--file) or an earlier version (--version)"),
    };
    let plan = request.stages.plan_over(declared.as_ref())?;
    start(store, definition, plan, writer)
}

/// `rollout status`: the decision and every targeted node's part in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutStatus {
    pub workflow: String,
    pub rollout: String,
    pub version: u64,
    pub baseline: u64,
    pub status: core::Status,
    /// Cumulative node counts of the stages.
    pub stage_sizes: Vec<usize>,
    pub nodes: Vec<NodeRow>,
    pub controls: Vec<Control>,
    /// Controls stored that do not verify (ignored by every node).
    pub ignored: Vec<String>,
}

/// One targeted node in a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRow {
    pub node: String,
    pub name: String,
    pub stage: usize,
    /// The version the decision gives it.
    pub assigned: u64,
    /// Its own report, if it gave one.
    pub report: Option<Report>,
}

/// The status of the rollout of workflow `workflow`'s version in effect.
pub fn status(
    store: &mut Store,
    workflow: &str,
    mesh_id: &str,
    trust_pem: &str,
) -> Result<RolloutStatus> {
    let name = DocName::workflow(workflow)?;
    let doc: WorkflowDoc = store.read(&name)?;
    if doc.version == 0 {
        bail!(crate::run::history::Refused::UnknownWorkflow(
            workflow.to_owned()
        ));
    }
    let Some(facts) = facts(store, &doc, mesh_id, trust_pem)? else {
        bail!(
            "version {} of workflow `{workflow}` was applied everywhere at once, not rolled out \
             in stages (`rhizome rollout start`)",
            doc.version
        );
    };
    let registry = store.registry()?;
    let nodes = facts
        .decision
        .order
        .iter()
        .map(|(node, stage)| NodeRow {
            node: node.clone(),
            name: registry
                .nodes
                .get(node)
                .map(|e| e.name.clone())
                .unwrap_or_default(),
            stage: *stage,
            assigned: facts.decision.version_for(&facts.plan, node),
            report: facts.reports.get(node).cloned(),
        })
        .collect();
    Ok(RolloutStatus {
        workflow: workflow.to_owned(),
        rollout: facts.plan.id.clone(),
        version: facts.plan.version,
        baseline: facts.plan.baseline,
        stage_sizes: core::stage_sizes(&facts.plan, facts.targets.len()),
        status: facts.decision.status,
        nodes,
        controls: facts.controls,
        ignored: facts.ignored,
    })
}

/// What every node decides a rollout from, as this node holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Facts {
    pub workflow: String,
    pub plan: Plan,
    pub controls: Vec<Control>,
    /// Controls stored that do not verify (ignored), with the reason.
    pub ignored: Vec<String>,
    pub targets: BTreeSet<String>,
    pub reports: BTreeMap<String, Report>,
    pub decision: Decision,
}

/// The facts of the rollout of the version in effect of workflow `doc`, if it has one.
pub fn facts(
    store: &mut Store,
    doc: &WorkflowDoc,
    mesh_id: &str,
    trust_pem: &str,
) -> Result<Option<Facts>> {
    let Some(plan) = doc.rollout.clone().filter(|p| p.version == doc.version) else {
        return Ok(None);
    };
    let name = DocName::workflow(&doc.id)?;
    let registry = store.registry()?;
    let mut targets = BTreeSet::new();
    let mut reports = BTreeMap::new();
    for (id, entry) in &registry.nodes {
        let traits = NodeTraits {
            id: id.clone(),
            name: entry.name.clone(),
            zone: entry.zone.clone(),
            tags: entry.tags.clone(),
        };
        if selects(&doc.target, &traits) {
            targets.insert(id.clone());
        }
        if let Some(report) = entry
            .rollouts
            .get(&doc.id)
            .and_then(|text| serde_json::from_str::<Report>(text).ok())
            .filter(|r| r.rollout == plan.id)
        {
            reports.insert(id.clone(), report);
        }
    }
    let stored: RolloutControls = store.read(&name)?;
    let mut controls = Vec::new();
    let mut ignored = Vec::new();
    for (id, text) in &stored.controls {
        match obey(&doc.id, id, text, &plan.id, mesh_id, trust_pem) {
            Ok(Some(control)) => controls.push(control),
            Ok(None) => {}
            Err(e) => ignored.push(format!("{id}: {e:#}")),
        }
    }
    let decision = core::decide(&plan, &controls, &targets, &reports);
    Ok(Some(Facts {
        workflow: doc.id.clone(),
        plan,
        controls,
        ignored,
        targets,
        reports,
        decision,
    }))
}

/// A stored control, once its signature and its author's `control` role check out; `None`
/// when it is about another rollout of the workflow.
pub(crate) fn obey(
    workflow: &str,
    id: &str,
    text: &str,
    rollout: &str,
    mesh_id: &str,
    trust_pem: &str,
) -> Result<Option<Control>> {
    let signed: SignedControl = serde_json::from_str(text).context("it is not a signed control")?;
    if signed.rollout != rollout {
        return Ok(None);
    }
    let signer = mesh::net::identity::verify_node_signature(
        trust_pem,
        &signed.author_cert,
        &signed.signed_text(mesh_id, workflow),
        &signed.signature,
    )
    .context("its signature does not verify")?;
    if signer.role != mesh::net::identity::NodeRole::Control {
        bail!(
            "its author, node {}, does not hold the `control` role",
            signer.node_id
        );
    }
    if signed.control.id != id || signed.control.by != signer.node_id {
        bail!(
            "it is filed as {id} but names itself {} by {}",
            signed.control.id,
            signed.control.by
        );
    }
    Ok(Some(signed.control))
}

/// Pauses, resumes or aborts the rollout of the version in effect of `workflow`, as this
/// node (a control node): the control is signed and added to the workflow's document.
pub fn control(
    store: &mut Store,
    workflow: &str,
    action: Action,
    writer: &Writer,
) -> Result<Control> {
    if !writer.control {
        bail!(
            "this node's certificate does not hold the `control` role: rollouts are paused, \
             resumed and aborted on a control node (the cloud peer, the node that created the \
             mesh), and every node ignores controls signed elsewhere"
        );
    }
    let signer = writer
        .signer
        .as_ref()
        .context("this node has no credentials to sign with")?;
    let name = DocName::workflow(workflow)?;
    let standing: WorkflowVersions = store.read(&name)?;
    let Resolution::Resolved(doc) = standing.resolve() else {
        bail!("workflow `{workflow}` has no version in effect here");
    };
    let trust = writer.trust.all();
    let Some(facts) = facts(store, doc, &writer.mesh_id, &trust)? else {
        bail!(
            "version {} of workflow `{workflow}` is not rolled out in stages: nothing to {}",
            doc.version,
            action_word(action)
        );
    };
    if let core::Status::Aborted { reason } = &facts.decision.status {
        bail!(
            "the rollout {} is aborted already ({reason})",
            facts.plan.id
        );
    }
    let (control, text) = sign_control(
        action,
        &facts.plan,
        &facts.decision.status,
        &facts.controls,
        workflow,
        writer,
        signer,
    )?;
    let id = control.id.clone();
    store.update::<RolloutControls, _>(&name, |c| {
        c.controls.insert(id.clone(), text.clone());
    })?;
    Ok(control)
}

/// A control of `plan` by this node, and its signed text as stored: about the stage the
/// rollout stands at, having seen every control known here. `subject` is what the signature
/// names (the workflow, or [`crdt_store::docs::release::REPORT_KEY`] for releases).
pub(crate) fn sign_control(
    action: Action,
    plan: &Plan,
    status: &core::Status,
    known: &[Control],
    subject: &str,
    writer: &Writer,
    signer: &mesh::net::identity::NodeCredentials,
) -> Result<(Control, String)> {
    let stage = match status {
        core::Status::Running { stage } | core::Status::Paused { stage } => *stage,
        _ => plan.stages.len().saturating_sub(1),
    };
    let now = crate::node::now_ms();
    let control = Control {
        id: format!("{}-{now}", writer.node),
        action,
        stage,
        seen: known.iter().map(|c| c.id.clone()).collect(),
        by: writer.node.clone(),
        at_ms: now,
    };
    let mut signed = SignedControl {
        rollout: plan.id.clone(),
        control: control.clone(),
        author_cert: signer.cert_pem(),
        signature: String::new(),
    };
    signed.signature = signer.sign(&signed.signed_text(&writer.mesh_id, subject));
    let text = serde_json::to_string(&signed)?;
    Ok((control, text))
}

/// The action an API path names.
pub(crate) fn action_named(word: &str) -> Option<Action> {
    match word {
        "pause" => Some(Action::Pause),
        "resume" => Some(Action::Resume),
        "abort" => Some(Action::Abort),
        _ => None,
    }
}

pub(crate) fn action_word(action: Action) -> &'static str {
    match action {
        Action::Pause => "pause",
        Action::Resume => "resume",
        Action::Abort => "abort",
    }
}

/// The version this node runs of a workflow whose version in effect is rolled out in stages:
/// the new one once admitted (or the rollout completed), else the baseline, read from the
/// workflow's history. `stored` is returned as it is for workflows without a rollout.
pub fn effective(
    store: &mut Store,
    stored: StoredWorkflow,
    me: &NodeTraits,
    mesh_id: &str,
    trust_pem: &str,
) -> StoredWorkflow {
    if stored.blocked.is_some() || !selects(&stored.doc.target, me) {
        return stored;
    }
    let facts = match facts(store, &stored.doc, mesh_id, trust_pem) {
        Ok(Some(facts)) => facts,
        Ok(None) => return stored,
        Err(e) => {
            tracing::warn!(workflow = %stored.doc.id, error = %format!("{e:#}"), "cannot read a rollout's facts; running the version in effect");
            return stored;
        }
    };
    if facts.decision.admitted.contains(&me.id) || facts.decision.status == core::Status::Completed
    {
        return stored;
    }
    match baseline_of(store, &stored.doc, facts.plan.baseline) {
        Some(baseline) => StoredWorkflow {
            doc: WorkflowDoc {
                // The baseline's definition, known to the scheduler as the rollout's.
                rollout: stored.doc.rollout.clone(),
                ..baseline
            },
            blocked: None,
        },
        None => StoredWorkflow {
            blocked: Some(format!(
                "rolled out in stages from version {}, which this node does not hold",
                facts.plan.baseline
            )),
            ..stored
        },
    }
}

/// Version `version` of a workflow, from its document's history (the latest write of that
/// number when versions were written concurrently).
fn baseline_of(store: &mut Store, doc: &WorkflowDoc, version: u64) -> Option<WorkflowDoc> {
    let name = DocName::workflow(&doc.id).ok()?;
    let id = store.document_id(&name);
    let mut automerge = store.automerge(&id).ok()?;
    let history = DefinitionHistory::read(&mut automerge);
    history
        .writes
        .iter()
        .filter_map(|w| w.definition.as_ref().ok())
        .filter(|d| d.version == version && !d.deleted)
        .max_by(|a, b| {
            a.updated_ms
                .cmp(&b.updated_ms)
                .then(a.encode().cmp(&b.encode()))
        })
        .cloned()
}

/// What the scheduler knows of a rolled-out workflow on this node.
#[derive(Debug, Clone)]
pub struct Standing {
    pub workflow: String,
    pub plan: Plan,
    /// The version it runs here.
    pub version: u64,
    /// Why that version cannot run here, if it cannot.
    pub cannot_run: Option<String>,
    /// Runs of that version finished here, and those that did not succeed.
    pub runs: u32,
    pub failures: u32,
    /// When it took that version up.
    pub since_ms: i64,
    /// Whether a version's artifacts are being fetched.
    pub fetching: bool,
    /// Alerts the plan's gate counts that fired here since it took that version up, by rule.
    pub alerts: Vec<String>,
}

/// The report this node gives of a rollout, from what it runs and its previous report (a
/// `failed` report is final: the node's failure stays counted after it went back).
pub fn next_report(
    standing: &Standing,
    previous: Option<&Report>,
    aborted: bool,
    now_ms: i64,
) -> Report {
    use core::NodeState::*;
    let plan = &standing.plan;
    let on_new = standing.version == plan.version;
    let since_ms = if on_new {
        standing.since_ms
    } else {
        previous.map_or(0, |r| r.since_ms)
    };
    let (state, reason) = match previous.filter(|r| r.state == Failed) {
        Some(failed) => (Failed, failed.reason.clone()),
        None if on_new => match &standing.cannot_run {
            Some(why) => (Failed, Some(why.clone())),
            None if !plan.gate.alerts.is_off() && !standing.alerts.is_empty() => (
                Failed,
                Some(format!(
                    "alert {} fired after it switched to version {}",
                    standing.alerts.join(", "),
                    plan.version
                )),
            ),
            None if standing.runs >= plan.gate.min_runs.max(1)
                && (standing.runs - standing.failures.min(standing.runs)) * 100
                    < standing.runs * u32::from(plan.gate.min_success_pct) =>
            {
                (
                    Failed,
                    Some(format!(
                        "{} of {} runs of version {} failed",
                        standing.failures, standing.runs, plan.version
                    )),
                )
            }
            None => (Active, None),
        },
        None if aborted && since_ms > 0 => (RolledBack, None),
        None if standing.fetching => (Fetching, None),
        None => (Pending, None),
    };
    Report {
        rollout: plan.id.clone(),
        version: standing.version,
        state,
        runs: if on_new {
            standing.runs
        } else {
            previous.map_or(0, |r| r.runs)
        },
        failures: if on_new {
            standing.failures
        } else {
            previous.map_or(0, |r| r.failures)
        },
        since_ms,
        at_ms: now_ms,
        reason,
        alerts: if on_new {
            standing.alerts.len() as u32
        } else {
            previous.map_or(0, |r| r.alerts)
        },
    }
}

/// Writes this node's reports of the rollouts it takes part in into its registry entry, those
/// that say something new.
pub fn report(
    store: &mut Store,
    me: &str,
    standing: Vec<Standing>,
    trust: Option<&(String, String)>,
) -> Result<()> {
    let registry = store.registry()?;
    let Some(entry) = registry.nodes.get(me) else {
        return Ok(());
    };
    let (mesh_id, trust_pem) = trust.cloned().unwrap_or_default();
    let now = crate::node::now_ms();
    let mut updates = BTreeMap::new();
    for st in standing {
        let previous: Option<Report> = entry
            .rollouts
            .get(&st.workflow)
            .and_then(|t| serde_json::from_str(t).ok())
            .filter(|r: &Report| r.rollout == st.plan.id);
        let name = DocName::workflow(&st.workflow)?;
        let latest: WorkflowDoc = store.read(&name)?;
        let aborted = facts(store, &latest, &mesh_id, &trust_pem)?
            .is_some_and(|f| matches!(f.decision.status, core::Status::Aborted { .. }));
        let next = next_report(&st, previous.as_ref(), aborted, now);
        if core::news(&st.plan, previous.as_ref(), &next) {
            updates.insert(st.workflow.clone(), serde_json::to_string(&next)?);
        }
    }
    if updates.is_empty() {
        return Ok(());
    }
    store.update::<crdt_store::MeshRegistry, _>(&DocName::Mesh, |m| {
        if let Some(entry) = m.nodes.get_mut(me) {
            entry.rollouts.extend(updates.clone());
        }
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_parse_and_bad_ones_are_named() {
        assert_eq!(
            parse_stages("1, 10%,100%").unwrap(),
            vec![Stage::Nodes(1), Stage::Percent(10), Stage::Percent(100)]
        );
        let err = format!("{:#}", parse_stages("1,0%").unwrap_err());
        assert!(err.contains("stage `0%`"), "{err}");
        let err = format!("{:#}", parse_stages("canary").unwrap_err());
        assert!(err.contains("stage `canary`"), "{err}");
    }

    const PROBE: &str = "id: probe\ntrigger:\n  every: 1s\nsteps:\n  - id: pass\n    agent: noop\n";

    #[test]
    fn a_declared_rollout_fills_what_the_command_line_leaves_out() {
        let yaml = format!("{PROBE}rollout:\n  stages: 1,50%,100%\n  gate_soak: 5m\n");
        let declared = crate::run::workflow::parse(&yaml).unwrap().rollout.unwrap();
        assert_eq!(declared.stages.len(), 3);
        assert_eq!(declared.gate.soak_ms, 300_000);
        assert_eq!(
            declared.gate.min_runs, 3,
            "the default where the file is silent"
        );
        let flags = StageArgs {
            gate_soak: Some("10s".into()),
            abort_failures: Some(20),
            ..StageArgs::default()
        };
        let plan = flags.plan_over(Some(&declared)).unwrap();
        assert_eq!(plan.stages, declared.stages);
        assert_eq!(plan.gate.soak_ms, 10_000);
        assert_eq!(plan.abort_failure_pct, 20);
        assert_eq!(
            StageArgs::default().plan_over(None).unwrap(),
            default_plan()
        );
    }

    #[test]
    fn an_alert_the_gate_counts_fails_a_node_on_the_new_version() {
        let flags = StageArgs {
            gate_alerts: Some("critical".into()),
            ..StageArgs::default()
        };
        let mut plan = flags.plan_over(None).unwrap();
        plan.id = "probe@2".into();
        plan.version = 2;
        plan.baseline = 1;
        assert_eq!(plan.gate.alerts, AlertGate::Critical);
        let standing = Standing {
            workflow: "probe".into(),
            plan: plan.clone(),
            version: 2,
            cannot_run: None,
            runs: 5,
            failures: 0,
            since_ms: 1_000,
            fetching: false,
            alerts: vec!["disk-full".into()],
        };
        let report = next_report(&standing, None, false, 2_000);
        assert_eq!(report.state, core::NodeState::Failed);
        assert_eq!(report.alerts, 1);
        assert!(report.reason.unwrap().contains("disk-full"));
        let quiet = next_report(
            &Standing {
                alerts: Vec::new(),
                ..standing
            },
            None,
            false,
            2_000,
        );
        assert_eq!(quiet.state, core::NodeState::Active);
        let err = format!(
            "{:#}",
            StageArgs {
                gate_alerts: Some("loud".into()),
                ..StageArgs::default()
            }
            .plan_over(None)
            .unwrap_err()
        );
        assert!(err.contains("gate alerts"), "{err}");
    }

    #[test]
    fn a_bad_declared_rollout_is_refused_by_name() {
        for (section, named) in [
            ("rollout:\n  stages: 1,0%\n", "stage `0%`"),
            ("rollout:\n  gate_success: 0\n", "gate success"),
            ("rollout:\n  canary: yes\n", "canary"),
            ("rollout:\n  gate_soak: soon\n", "gate soak"),
        ] {
            let err = format!(
                "{:#}",
                crate::run::workflow::parse(&format!("{PROBE}{section}")).unwrap_err()
            );
            assert!(err.contains(named), "{section}: {err}");
        }
    }
}
