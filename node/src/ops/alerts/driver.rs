//! The task that evaluates the alert rules on the running node and acts on what fires and
//! resolves; and what `GET /alerts` and `POST /alerts/rules` answer from.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use crdt_store::{AlertRecord, AlertsDoc, DocName, FleetRule, MeshRegistry, StoreHandle, Window};
use mesh::net::identity::{NodeRole, verify_node_signature};
use serde::{Deserialize, Serialize};

use super::engine::{Engine, RuleStatus, Transition};
use super::rules::{
    FAILURE_RATE_SPAN, Origin, Rule, RuleConfig, SYNC_FAILURES_SPAN, Subject, Value,
};
use crate::api::AppState;
use crate::node::now_ms;

/// How often fleet rules are read again from the registry.
const FLEET_RULES_EVERY: Duration = Duration::from_secs(10);
/// Firings one alerts document takes; a rule that flaps faster is logged, not recorded.
pub const MAX_ALERTS_PER_DOC: usize = 1000;
/// Alert document writes kept for a retry while the store refuses them.
const OUTBOX_CAPACITY: usize = 256;
/// How long a command or webhook action may take.
const ACTION_TIMEOUT: Duration = Duration::from_secs(30);
/// How far back `sync_failures` samples are kept (a little beyond its span).
const FAILURE_SAMPLES: usize = 512;

/// The rules in force and their states, shared with the API.
#[derive(Debug, Clone, Default)]
pub struct AlertsHandle(Arc<Mutex<Shared>>);

#[derive(Debug, Default)]
struct Shared {
    rules: Vec<Rule>,
    engine: Engine,
    /// Fleet rules this node does not obey, and why.
    refused: Vec<RefusedRule>,
}

/// A fleet rule this node does not obey.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedRule {
    pub name: String,
    pub reason: String,
}

/// A rule as `rhizome alerts rules` lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RuleView {
    pub name: String,
    /// The condition and its duration.
    pub when: String,
    pub severity: String,
    pub actions: Vec<String>,
    pub origin: Origin,
    #[serde(flatten)]
    pub status: RuleStatus,
}

/// One alert as `rhizome alerts` lists it: the record, with the node that raised it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertView {
    /// The node that raised it.
    pub node: String,
    /// That node's name, as the registry here knows it.
    pub node_name: Option<String>,
    #[serde(flatten)]
    pub record: AlertRecord,
}

/// `GET /alerts`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AlertsView {
    pub node: String,
    /// Whether `alerts` holds every node's alerts held here, not only this node's.
    pub fleet: bool,
    pub rules: Vec<RuleView>,
    #[serde(default)]
    pub refused_rules: Vec<RefusedRule>,
    /// Firing first, then newest first.
    pub alerts: Vec<AlertView>,
}

impl AlertsHandle {
    /// The rules in force with their states.
    pub fn rules(&self) -> (Vec<RuleView>, Vec<RefusedRule>) {
        let shared = self.0.lock().expect("alerts");
        let views = shared
            .rules
            .iter()
            .map(|rule| RuleView {
                name: rule.name.clone(),
                when: rule.describe(),
                severity: rule.severity.clone(),
                actions: actions_of(rule),
                origin: rule.origin.clone(),
                status: shared.engine.status(&rule.name),
            })
            .collect();
        (views, shared.refused.clone())
    }

    /// The rules whose alerts fire now, fired at or after `since_ms`, of a severity `gate`
    /// counts: what fails a node in a rollout gated on alerts.
    pub fn fired_since(
        &self,
        since_ms: i64,
        gate: crdt_store::docs::rollout::AlertGate,
    ) -> Vec<String> {
        if gate.is_off() || since_ms <= 0 {
            return Vec::new();
        }
        let shared = self.0.lock().expect("alerts");
        shared
            .engine
            .firing()
            .into_iter()
            .filter(|(name, fired_ms)| {
                *fired_ms >= since_ms
                    && shared
                        .rules
                        .iter()
                        .any(|r| r.name == *name && gate.counts(&r.severity))
            })
            .map(|(name, _)| name)
            .collect()
    }

    /// How many alerts fire now, by rule (every rule in force, zero included).
    pub fn firing_by_rule(&self) -> Vec<(String, usize)> {
        let shared = self.0.lock().expect("alerts");
        let firing = shared.engine.firing();
        shared
            .rules
            .iter()
            .map(|r| {
                (
                    r.name.clone(),
                    firing.iter().filter(|(n, _)| *n == r.name).count(),
                )
            })
            .collect()
    }
}

fn actions_of(rule: &Rule) -> Vec<String> {
    let a = &rule.actions;
    [
        (a.log, "log"),
        (a.notify, "notify"),
        (a.cleanup, "cleanup"),
        (a.command.is_some(), "command"),
        (a.webhook.is_some(), "webhook"),
    ]
    .into_iter()
    .filter(|(on, _)| *on)
    .map(|(_, name)| name.to_owned())
    .collect()
}

/// The driver's settings.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// How often rules are evaluated.
    pub interval: Duration,
    /// The rules of `rhizome.toml`.
    pub local: Vec<Rule>,
    /// The length of an alerts document's window, in minutes (the results window).
    pub window_minutes: u32,
}

/// The fleet's rules as this node reads them from the registry: those it obeys, and the
/// others with the reason.
pub fn fleet_rules(
    registry: &MeshRegistry,
    mesh_id: &str,
    trust_pem: &str,
) -> (Vec<Rule>, Vec<RefusedRule>) {
    let mut rules = Vec::new();
    let mut refused = Vec::new();
    for (name, text) in &registry.alert_rules {
        match obey(name, text, mesh_id, trust_pem) {
            Ok(Some(rule)) => rules.push(rule),
            Ok(None) => {}
            Err(e) => refused.push(RefusedRule {
                name: name.clone(),
                reason: format!("{e:#}"),
            }),
        }
    }
    (rules, refused)
}

/// A fleet rule, once its signature and its writer's `control` role check out; `None` when
/// withdrawn.
fn obey(name: &str, text: &str, mesh_id: &str, trust_pem: &str) -> Result<Option<Rule>> {
    let signed: FleetRule = serde_json::from_str(text).context("it is not a signed rule")?;
    let signer = verify_node_signature(
        trust_pem,
        &signed.author_cert,
        &signed.signed_text(mesh_id, name),
        &signed.signature,
    )
    .context("its signature does not verify")?;
    if signer.node_id != signed.updated_by {
        bail!(
            "it names {} as its writer but is signed by node {}",
            signed.updated_by,
            signer.node_id
        );
    }
    if signer.role != NodeRole::Control {
        bail!(
            "its writer, node {}, holds the `{}` role, not `control`",
            signer.node_id,
            signer.role
        );
    }
    if signed.rule.is_empty() {
        return Ok(None);
    }
    let config: RuleConfig = serde_json::from_str(&signed.rule).context("its rule")?;
    if config.name != name {
        bail!("it is filed as `{name}` but names itself `{}`", config.name);
    }
    Rule::new(
        &config,
        Origin::Fleet {
            by: signed.updated_by.clone(),
        },
    )
    .map(Some)
}

/// Signs fleet rules (and withdrawals: `None`) for the registry, as this node.
pub fn sign_fleet_rules(
    writer: &crate::run::workflow::Writer,
    rules: &[(String, Option<RuleConfig>)],
    now_ms: i64,
) -> Result<Vec<(String, String)>> {
    if !writer.control {
        bail!(
            "this node's certificate does not hold the `control` role: fleet alert rules are \
             applied on a control node (the cloud peer, the node that created the mesh), and \
             every node ignores rules signed elsewhere"
        );
    }
    let signer = writer
        .signer
        .as_ref()
        .context("this node has no credentials to sign with")?;
    rules
        .iter()
        .map(|(name, config)| {
            let rule = match config {
                Some(config) => {
                    Rule::new(
                        config,
                        Origin::Fleet {
                            by: writer.node.clone(),
                        },
                    )?;
                    serde_json::to_string(config)?
                }
                None => String::new(),
            };
            let mut signed = FleetRule {
                rule,
                updated_ms: now_ms,
                updated_by: writer.node.clone(),
                author_cert: signer.cert_pem(),
                signature: String::new(),
            };
            signed.signature = signer.sign(&signed.signed_text(&writer.mesh_id, name));
            Ok((name.clone(), serde_json::to_string(&signed)?))
        })
        .collect()
}

/// The rules in force: the node's own, and the fleet's under names it does not use.
fn in_force(local: &[Rule], fleet: Vec<Rule>) -> Vec<Rule> {
    let mut rules = local.to_vec();
    rules.extend(
        fleet
            .into_iter()
            .filter(|f| !local.iter().any(|l| l.name == f.name)),
    );
    rules
}

/// What the rules look at, gathered once per evaluation.
#[derive(Debug, Default)]
struct Inputs {
    sample: Option<crate::ops::monitor::Sample>,
    health: Option<crate::api::Health>,
    sync_failures: Option<f64>,
    sync_pending: f64,
    now_ms: i64,
}

impl Inputs {
    fn observe(&self, subject: &Subject) -> Option<Value> {
        let sample = self.sample.as_ref();
        let percent = |part: u64, whole: u64| {
            (whole > 0).then(|| Value::Number(part as f64 * 100.0 / whole as f64))
        };
        match subject {
            Subject::CpuUsage => sample.map(|s| Value::Number(f64::from(s.cpu_percent))),
            Subject::MemoryUsage => {
                sample.and_then(|s| percent(s.memory_used_bytes, s.memory_total_bytes))
            }
            Subject::MemoryAvailable => {
                sample.map(|s| Value::Number(s.memory_available_bytes as f64))
            }
            Subject::DiskFree => sample.map(|s| Value::Number(s.disk_free_bytes as f64)),
            Subject::DiskFreePercent => {
                sample.and_then(|s| percent(s.disk_free_bytes, s.disk_total_bytes))
            }
            Subject::Load => sample.map(|s| Value::Number(s.load1)),
            Subject::Temperature => sample
                .and_then(|s| s.temperature_celsius)
                .map(|t| Value::Number(f64::from(t))),
            Subject::Battery => sample
                .and_then(|s| s.battery_percent)
                .map(|b| Value::Number(f64::from(b))),
            Subject::SyncFailures => self.sync_failures.map(Value::Number),
            Subject::SyncPending => Some(Value::Number(self.sync_pending)),
            Subject::Health => self.health.as_ref().map(|h| Value::Text(h.status.clone())),
            // A check that has not run yet has no outcome to fire on (nor to resolve with).
            Subject::Check(name) => self.health.as_ref().and_then(|h| {
                h.checks
                    .iter()
                    .find(|c| &c.name == name && c.checked_ms > 0)
                    .map(|c| {
                        Value::Text(
                            serde_json::to_value(c.status)
                                .ok()
                                .and_then(|v| v.as_str().map(str::to_owned))
                                .unwrap_or_default(),
                        )
                    })
            }),
            Subject::WorkflowFailureRate(workflow) => crate::ops::metrics::recent_runs()
                .failure_rate(
                    workflow.as_deref(),
                    self.now_ms - FAILURE_RATE_SPAN.as_millis() as i64,
                )
                .map(Value::Number),
            Subject::Output { workflow, path } => {
                let output = crate::ops::metrics::recent_runs().last_output(workflow)?;
                let json: serde_json::Value = serde_json::from_str(&output).ok()?;
                field(&json, path).and_then(|v| match v {
                    serde_json::Value::Bool(b) => Some(Value::Bool(*b)),
                    serde_json::Value::Number(n) => n.as_f64().map(Value::Number),
                    serde_json::Value::String(s) => Some(Value::Text(s.clone())),
                    _ => None,
                })
            }
        }
    }
}

/// A field of a run's output: from its top, or, as a run's output may hold its last steps'
/// outputs by step id, from one of those.
fn field<'a>(json: &'a serde_json::Value, path: &[String]) -> Option<&'a serde_json::Value> {
    let walk = |from: &'a serde_json::Value| {
        path.iter()
            .try_fold(from, |at, key| at.as_object().and_then(|o| o.get(key)))
    };
    walk(json).or_else(|| json.as_object()?.values().find_map(walk))
}

/// The counters `sync_failures` adds up.
fn sync_failure_total() -> f64 {
    let e = crate::ops::metrics::events();
    e.value("rhizome_mesh_dials_failed_total", &[])
        + e.value("rhizome_mesh_handshakes_refused_total", &[])
        + e.value("rhizome_sync_messages_refused_total", &[])
}

/// A write of an alerts document that the store refused, kept to try again.
#[derive(Debug, Clone)]
struct PendingWrite {
    name: DocName,
    key: String,
    record: AlertRecord,
}

/// Runs the rules until the node stops.
pub async fn run(state: Arc<AppState>, handle: AlertsHandle, config: DriverConfig) {
    let me = state.health.node_id.clone();
    match own_firing(&state.store, &me).await {
        Ok(firing) => {
            let mut shared = handle.0.lock().expect("alerts");
            for (rule, fired_ms) in firing {
                shared.engine.restore(&rule, fired_ms);
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read this node's alerts"),
    }
    let mut every = tokio::time::interval(config.interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut fleet: Vec<Rule> = Vec::new();
    let mut fleet_read_at: Option<std::time::Instant> = None;
    let mut failures: VecDeque<(i64, f64)> = VecDeque::new();
    let mut outbox: VecDeque<PendingWrite> = VecDeque::new();
    loop {
        every.tick().await;
        let now = now_ms();
        if fleet_read_at.is_none_or(|at| at.elapsed() >= FLEET_RULES_EVERY) {
            fleet_read_at = Some(std::time::Instant::now());
            let (mesh_id, trust) = (state.writer.mesh_id.clone(), state.writer.trust.all());
            match state
                .store
                .call(move |s| Ok(fleet_rules(&*s.registry()?, &mesh_id, &trust)))
                .recv()
                .await
            {
                Ok((rules, refused)) => {
                    let mut shared = handle.0.lock().expect("alerts");
                    for r in &refused {
                        if !shared.refused.contains(r) {
                            tracing::warn!(rule = %r.name, reason = %r.reason, "a fleet alert rule is ignored");
                        }
                    }
                    shared.refused = refused;
                    fleet = rules;
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the fleet's alert rules"),
            }
        }
        let rules = in_force(&config.local, fleet.clone());

        let total = sync_failure_total();
        failures.push_back((now, total));
        while failures.len() > FAILURE_SAMPLES
            || failures
                .front()
                .is_some_and(|(at, _)| now - at > SYNC_FAILURES_SPAN.as_millis() as i64)
        {
            failures.pop_front();
        }
        let needs_health = rules
            .iter()
            .any(|r| matches!(r.condition.subject, Subject::Health | Subject::Check(_)));
        let inputs = Inputs {
            sample: state.monitor.as_ref().and_then(|m| m.latest()),
            health: if needs_health {
                Some(crate::api::health::assess(&state).await)
            } else {
                None
            },
            sync_failures: failures.front().map(|(_, first)| total - first),
            sync_pending: state
                .sync_watch
                .behind(Duration::from_secs(60))
                .iter()
                .map(|(_, n, _)| *n as f64)
                .sum(),
            now_ms: now,
        };
        let transitions = {
            let mut shared = handle.0.lock().expect("alerts");
            let transitions = shared.engine.step(&rules, now, |s| inputs.observe(s));
            shared.rules = rules.clone();
            transitions
        };
        for transition in transitions {
            let rule = rules.iter().find(|r| match &transition {
                Transition::Fired { rule, .. } | Transition::Resolved { rule, .. } => {
                    &r.name == rule
                }
            });
            act(&state, &me, rule, &transition, &config, &mut outbox).await;
        }
        // What the store refused before, oldest first, while it takes them.
        while let Some(pending) = outbox.front().cloned() {
            if write_record(&state.store, pending.clone()).await.is_err() {
                break;
            }
            outbox.pop_front();
        }
    }
}

/// Does what a rule says for one transition.
async fn act(
    state: &Arc<AppState>,
    me: &str,
    rule: Option<&Rule>,
    transition: &Transition,
    config: &DriverConfig,
    outbox: &mut VecDeque<PendingWrite>,
) {
    let (name, fired_ms, resolved_ms, value, firing) = match transition {
        Transition::Fired {
            rule,
            fired_ms,
            value,
        } => (rule, *fired_ms, 0, value, true),
        Transition::Resolved {
            rule,
            fired_ms,
            resolved_ms,
            value,
        } => (rule, *fired_ms, *resolved_ms, value, false),
    };
    let state_word = if firing { "firing" } else { "resolved" };
    let condition = rule.map(Rule::describe).unwrap_or_default();
    // A rule removed while firing still resolves its alert where it was recorded.
    let actions = rule
        .map(|r| r.actions.clone())
        .unwrap_or(super::rules::Actions {
            log: true,
            notify: true,
            ..Default::default()
        });
    let firing_count = crate::ops::metrics::events();
    if firing {
        firing_count.inc(
            "rhizome_alerts_fired_total",
            "Alerts fired on this node, by rule.",
            crate::ops::metrics::labels([("rule", name)]),
        );
    }
    if actions.log {
        if firing {
            tracing::warn!(rule = %name, condition = %condition, value = %value, "alert firing");
        } else {
            tracing::info!(rule = %name, value = %value, "alert resolved");
        }
    }
    if actions.notify {
        let window = Window::containing(fired_ms, config.window_minutes);
        match DocName::alerts(me, window) {
            Ok(doc) => {
                let pending = PendingWrite {
                    name: doc,
                    key: AlertRecord::key(name, fired_ms),
                    record: AlertRecord {
                        rule: name.clone(),
                        state: state_word.into(),
                        condition: condition.clone(),
                        value: value.clone(),
                        fired_ms,
                        resolved_ms,
                    },
                };
                // Behind older refused writes, so that a resolution never lands before its
                // firing.
                if !outbox.is_empty() {
                    queue(outbox, pending);
                } else if let Err(e) = write_record(&state.store, pending.clone()).await {
                    tracing::warn!(rule = %name, error = %e, "the alert is not recorded yet; trying again");
                    queue(outbox, pending);
                }
            }
            Err(e) => tracing::warn!(error = %e, "no alerts document for this node"),
        }
    }
    if actions.cleanup && firing {
        let now = now_ms();
        match state
            .store
            .call(move |s| s.enforce_retention(now))
            .recv()
            .await
        {
            Ok(retired) => {
                tracing::info!(rule = %name, windows = retired.len(), "alert cleanup: retention ran")
            }
            Err(e) => tracing::warn!(rule = %name, error = %e, "alert cleanup: retention failed"),
        }
    }
    let body = serde_json::json!({
        "node": me,
        "node_name": state.health.name,
        "zone": state.health.zone,
        "rule": name,
        "state": state_word,
        "condition": condition,
        "value": value,
        "fired_ms": fired_ms,
        "resolved_ms": resolved_ms,
    })
    .to_string();
    if let Some(command) = actions.command.clone() {
        let (rule, state_word, value, body) =
            (name.clone(), state_word, value.clone(), body.clone());
        tokio::spawn(async move {
            let run = tokio::process::Command::new("sh")
                .arg("-c")
                .arg(&command)
                .env("RHIZOME_ALERT_RULE", &rule)
                .env("RHIZOME_ALERT_STATE", state_word)
                .env("RHIZOME_ALERT_VALUE", &value)
                .env("RHIZOME_ALERT", &body)
                .kill_on_drop(true)
                .status();
            match tokio::time::timeout(ACTION_TIMEOUT, run).await {
                Ok(Ok(status)) if status.success() => {}
                Ok(Ok(status)) => {
                    tracing::warn!(rule = %rule, %status, "the alert's command failed")
                }
                Ok(Err(e)) => {
                    tracing::warn!(rule = %rule, error = %e, "cannot run the alert's command")
                }
                Err(_) => tracing::warn!(rule = %rule, "the alert's command timed out"),
            }
        });
    }
    if let Some(url) = actions.webhook.clone() {
        let rule = name.clone();
        tokio::spawn(async move {
            let sent =
                tokio::time::timeout(ACTION_TIMEOUT, crate::ops::health::post_json(&url, &body))
                    .await;
            match sent {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(rule = %rule, error = %e, "the alert's webhook failed")
                }
                Err(_) => tracing::warn!(rule = %rule, %url, "the alert's webhook timed out"),
            }
        });
    }
}

fn queue(outbox: &mut VecDeque<PendingWrite>, pending: PendingWrite) {
    if outbox.len() == OUTBOX_CAPACITY {
        let dropped = outbox.pop_front();
        tracing::error!(
            rule = dropped.as_ref().map_or("", |d| d.record.rule.as_str()),
            "the store has refused alerts for long: the oldest waiting one is dropped"
        );
    }
    outbox.push_back(pending);
}

/// Records a firing or its resolution in the node's alerts document, durably.
async fn write_record(
    store: &StoreHandle,
    pending: PendingWrite,
) -> Result<(), crdt_store::StoreError> {
    let PendingWrite { name, key, record } = pending;
    let full = store
        .call(move |s| {
            s.update::<AlertsDoc, _>(&name, |doc| {
                if !doc.alerts.contains_key(&key) && doc.alerts.len() >= MAX_ALERTS_PER_DOC {
                    return true;
                }
                let entry = doc.alerts.entry(key).or_default();
                // A resolution is final: a late copy of the firing does not undo it.
                if entry.state != "resolved" {
                    let condition = std::mem::take(&mut entry.condition);
                    *entry = record;
                    // A rule removed while firing resolves without its text at hand.
                    if entry.condition.is_empty() {
                        entry.condition = condition;
                    }
                }
                false
            })
        })
        .recv()
        .await?;
    if full {
        tracing::warn!(
            "an alerts document holds {MAX_ALERTS_PER_DOC} alerts: a rule fires too often to record"
        );
    }
    Ok(())
}

/// This node's alerts still firing in its documents, as (rule, fired ms).
async fn own_firing(store: &StoreHandle, me: &str) -> crdt_store::Result<Vec<(String, i64)>> {
    let me = me.to_owned();
    // Firing alerts are listed however old, so no resolved one is asked for.
    let held = store
        .call(move |s| held_alerts(s, &me, false, i64::MAX))
        .recv()
        .await?;
    Ok(held
        .into_iter()
        .filter(|a| a.record.state == "firing")
        .map(|a| (a.record.rule, a.record.fired_ms))
        .collect())
}

/// The alerts held here: this node's, or with `fleet` every node's; those firing, and those
/// that fired or resolved since `since_ms`.
pub fn held_alerts(
    store: &mut crdt_store::Store,
    me: &str,
    fleet: bool,
    since_ms: i64,
) -> crdt_store::Result<Vec<AlertView>> {
    let registry = store.registry()?;
    let names: BTreeMap<&String, &String> = registry
        .nodes
        .iter()
        .map(|(id, entry)| (id, &entry.name))
        .collect();
    let mut out = Vec::new();
    for (_, name) in store.names()? {
        // Every alerts document is read: retention bounds them, and an old one may hold an
        // alert that still fires.
        let DocName::Alerts { node, .. } = &name else {
            continue;
        };
        if !fleet && node != me {
            continue;
        }
        let doc: AlertsDoc = store.read(&name)?;
        for record in doc.alerts.into_values() {
            let latest = record.fired_ms.max(record.resolved_ms);
            if record.state == "firing" || latest >= since_ms {
                out.push(AlertView {
                    node: node.clone(),
                    node_name: names.get(node).map(|n| (*n).clone()),
                    record,
                });
            }
        }
    }
    let newest = |a: &AlertView| a.record.fired_ms.max(a.record.resolved_ms);
    out.sort_by(|a, b| {
        (b.record.state == "firing")
            .cmp(&(a.record.state == "firing"))
            .then(newest(b).cmp(&newest(a)))
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh::net::identity::MeshCa;

    fn writer(ca: &MeshCa, seed: u8, role: NodeRole) -> crate::run::workflow::Writer {
        crate::run::workflow::Writer::for_tests(ca, seed, role)
    }

    fn rule(name: &str) -> RuleConfig {
        RuleConfig {
            name: name.into(),
            when: "disk_free < 100MB".into(),
            hold: String::new(),
            actions: vec!["log".into(), "notify".into()],
            command: String::new(),
            webhook: String::new(),
            severity: "warning".into(),
        }
    }

    #[test]
    fn nodes_obey_fleet_rules_signed_on_a_control_node_of_their_mesh_only() {
        let ca = MeshCa::create().unwrap();
        let cloud = writer(&ca, 1, NodeRole::Control);
        let mut registry = MeshRegistry::default();
        for (name, text) in
            sign_fleet_rules(&cloud, &[("low-disk".into(), Some(rule("low-disk")))], 5).unwrap()
        {
            registry.alert_rules.insert(name, text);
        }
        let (rules, refused) = fleet_rules(&registry, ca.mesh_id(), ca.cert_pem());
        assert_eq!(rules.len(), 1, "{refused:?}");
        assert_eq!(
            rules[0].origin,
            Origin::Fleet {
                by: cloud.node.clone()
            }
        );

        // A member cannot sign one; one written anyway, or altered, or filed under another
        // name, is ignored with the reason.
        let edge = writer(&ca, 2, NodeRole::Member);
        assert!(sign_fleet_rules(&edge, &[("x".into(), Some(rule("x")))], 5).is_err());
        let forged = sign_fleet_rules(
            &crate::run::workflow::Writer {
                control: true,
                ..edge
            },
            &[("forged".into(), Some(rule("forged")))],
            5,
        )
        .unwrap();
        registry.alert_rules.extend(forged);
        let mut altered: FleetRule =
            serde_json::from_str(&registry.alert_rules["low-disk"]).unwrap();
        altered.rule = altered.rule.replace("100MB", "1B");
        registry
            .alert_rules
            .insert("altered".into(), serde_json::to_string(&altered).unwrap());
        let elsewhere = MeshCa::create().unwrap();
        let stranger = writer(&elsewhere, 3, NodeRole::Control);
        registry.alert_rules.extend(
            sign_fleet_rules(&stranger, &[("stranger".into(), Some(rule("stranger")))], 5).unwrap(),
        );
        let (rules, refused) = fleet_rules(&registry, ca.mesh_id(), ca.cert_pem());
        assert_eq!(rules.len(), 1);
        let why: BTreeMap<&str, &str> = refused
            .iter()
            .map(|r| (r.name.as_str(), r.reason.as_str()))
            .collect();
        assert!(why["forged"].contains("`member` role"), "{why:?}");
        assert!(why["altered"].contains("signature"), "{why:?}");
        assert!(why["stranger"].contains("signature"), "{why:?}");

        // Withdrawn: signed, and no longer obeyed.
        registry
            .alert_rules
            .extend(sign_fleet_rules(&cloud, &[("low-disk".into(), None)], 6).unwrap());
        let (rules, _) = fleet_rules(&registry, ca.mesh_id(), ca.cert_pem());
        assert!(rules.is_empty());
    }

    #[test]
    fn a_rule_of_the_node_takes_precedence_over_the_fleet_rule_of_its_name() {
        let local = vec![Rule::new(&rule("low-disk"), Origin::Config).unwrap()];
        let fleet = vec![
            Rule::new(&rule("low-disk"), Origin::Fleet { by: "c".into() }).unwrap(),
            Rule::new(&rule("other"), Origin::Fleet { by: "c".into() }).unwrap(),
        ];
        let rules = in_force(&local, fleet);
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].origin, Origin::Config);
    }

    #[test]
    fn an_output_field_is_found_at_the_top_or_in_a_step_output() {
        let path = vec!["anomaly".to_owned()];
        let top = serde_json::json!({"anomaly": true});
        assert_eq!(field(&top, &path), Some(&serde_json::json!(true)));
        let steps = serde_json::json!({"score": {"anomaly": false, "z": 1.2}});
        assert_eq!(field(&steps, &path), Some(&serde_json::json!(false)));
        assert_eq!(field(&steps, &["missing".to_owned()]), None);
    }
}
