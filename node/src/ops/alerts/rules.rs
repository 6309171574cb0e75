//! Alert rules: what `[[alerts.rules]]` and fleet rules say, parsed into conditions over the
//! node's figures, checks and workflow runs.
//!
//! A condition reads `SUBJECT OP VALUE [for DURATION]` (`cpu_usage > 90% for 5m`,
//! `disk_free < 100MB`, `sync_failures > 3`, `workflow_failure_rate:ingest > 20% for 10m`,
//! `output:sensor-zscore.anomaly == true`), or a check alone (`check:store`, which holds while
//! that check is not ok).

use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// A rule as `rhizome.toml` (`[[alerts.rules]]`) or `rhizome alerts apply` gives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Its name: in alerts, metrics and logs.
    pub name: String,
    /// The condition, e.g. `cpu_usage > 90%` or `disk_free < 100MB for 1m`.
    pub when: String,
    /// How long the condition must hold before the alert fires (`5m`); also writable as
    /// `... for 5m` at the end of `when`.
    #[serde(default, rename = "for", skip_serializing_if = "String::is_empty")]
    pub hold: String,
    /// What firing does: `log`, `notify` (an alert document that travels up the aggregator
    /// chain to the cloud), `cleanup` (run retention now); `command` and `webhook` run when
    /// those fields are set.
    #[serde(default = "default_actions")]
    pub actions: Vec<String>,
    /// A shell command run when the alert fires and when it resolves, with
    /// `RHIZOME_ALERT_RULE`, `RHIZOME_ALERT_STATE`, `RHIZOME_ALERT_VALUE` in its environment.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub command: String,
    /// An `http://` URL that receives the alert as JSON (POST) when it fires and resolves.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub webhook: String,
    /// `warning` (the default) or `critical`.
    #[serde(default = "default_severity")]
    pub severity: String,
}

fn default_actions() -> Vec<String> {
    vec!["log".into(), "notify".into()]
}

fn default_severity() -> String {
    "warning".into()
}

/// What a condition looks at.
#[derive(Debug, Clone, PartialEq)]
pub enum Subject {
    /// Busy share of the host's CPUs, percent.
    CpuUsage,
    /// Memory in use, percent of the total.
    MemoryUsage,
    /// Memory available, bytes.
    MemoryAvailable,
    /// Free space on the data dir's filesystem, bytes.
    DiskFree,
    /// Free space on the data dir's filesystem, percent.
    DiskFreePercent,
    /// The 1-minute load average.
    Load,
    /// The hottest sensor, °C; absent on hosts without one.
    Temperature,
    /// Battery charge, percent; absent without a battery.
    Battery,
    /// Failed dials, handshakes refused and sync messages refused in the last five minutes.
    SyncFailures,
    /// Documents pending with a connected peer for more than a minute.
    SyncPending,
    /// The node's health: `ok`, `degraded` or `failing`.
    Health,
    /// One health check's status: `ok`, `warning` or `failing`.
    Check(String),
    /// Share of a workflow's runs (or every workflow's) that failed in the last ten minutes,
    /// percent; absent while none ran.
    WorkflowFailureRate(Option<String>),
    /// A field of the output of a workflow's latest run here.
    Output { workflow: String, path: Vec<String> },
}

/// The span `sync_failures` counts over.
pub const SYNC_FAILURES_SPAN: Duration = Duration::from_secs(5 * 60);
/// The span `workflow_failure_rate` is computed over.
pub const FAILURE_RATE_SPAN: Duration = Duration::from_secs(10 * 60);

/// The names a condition may start with, for error messages.
const SUBJECTS: &str = "cpu_usage, memory_usage, memory_available, disk_free (free_storage), \
     disk_free_percent, load, temperature, battery, sync_failures, sync_pending, health, \
     check:NAME, workflow_failure_rate[:WORKFLOW], output:WORKFLOW.FIELD";

impl Subject {
    fn parse(text: &str) -> Result<Subject> {
        if let Some(name) = text.strip_prefix("check:") {
            if name.is_empty() {
                bail!("`check:` needs a check's name (`check:store`)");
            }
            return Ok(Subject::Check(name.to_owned()));
        }
        if let Some(rest) = text.strip_prefix("output:") {
            let mut parts = rest.split('.');
            let workflow = parts.next().unwrap_or_default().to_owned();
            let path: Vec<String> = parts.map(str::to_owned).collect();
            if workflow.is_empty() || path.is_empty() || path.iter().any(String::is_empty) {
                bail!("`{text}`: write output:WORKFLOW.FIELD (`output:sensor-zscore.anomaly`)");
            }
            return Ok(Subject::Output { workflow, path });
        }
        if let Some(rest) = text.strip_prefix("workflow_failure_rate") {
            return match rest.strip_prefix(':') {
                Some("") => bail!("`{text}`: name the workflow after the colon, or leave both out"),
                Some(workflow) => Ok(Subject::WorkflowFailureRate(Some(workflow.to_owned()))),
                None if rest.is_empty() => Ok(Subject::WorkflowFailureRate(None)),
                None => bail!("`{text}` is nothing to watch; these are: {SUBJECTS}"),
            };
        }
        Ok(match text {
            "cpu_usage" | "cpu" => Subject::CpuUsage,
            "memory_usage" => Subject::MemoryUsage,
            "memory_available" => Subject::MemoryAvailable,
            "disk_free" | "free_storage" => Subject::DiskFree,
            "disk_free_percent" => Subject::DiskFreePercent,
            "load" | "load1" => Subject::Load,
            "temperature" => Subject::Temperature,
            "battery" => Subject::Battery,
            "sync_failures" => Subject::SyncFailures,
            "sync_pending" => Subject::SyncPending,
            "health" => Subject::Health,
            other => bail!("`{other}` is nothing to watch; these are: {SUBJECTS}"),
        })
    }

    /// Whether its values are words (`ok`, `failing`) rather than numbers.
    fn is_text(&self) -> bool {
        matches!(self, Subject::Health | Subject::Check(_))
    }

    /// Whether a threshold of it is a size (`100MB`).
    fn is_bytes(&self) -> bool {
        matches!(self, Subject::DiskFree | Subject::MemoryAvailable)
    }
}

/// A comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Gt,
    Ge,
    Lt,
    Le,
    Eq,
    Ne,
}

impl Op {
    /// Longest first, so `>=` is not read as `>`.
    const ALL: [(&'static str, Op); 6] = [
        (">=", Op::Ge),
        ("<=", Op::Le),
        ("==", Op::Eq),
        ("!=", Op::Ne),
        (">", Op::Gt),
        ("<", Op::Lt),
    ];

    fn holds<T: PartialOrd>(self, left: &T, right: &T) -> bool {
        match self {
            Op::Gt => left > right,
            Op::Ge => left >= right,
            Op::Lt => left < right,
            Op::Le => left <= right,
            Op::Eq => left == right,
            Op::Ne => left != right,
        }
    }
}

/// What a subject is compared with, or what it was seen to be.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Number(f64),
    Text(String),
    Bool(bool),
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Number(n) if n.fract() == 0.0 && n.abs() < 1e15 => write!(f, "{n:.0}"),
            Value::Number(n) => write!(f, "{n:.2}"),
            Value::Text(t) => f.write_str(t),
            Value::Bool(b) => write!(f, "{b}"),
        }
    }
}

/// A parsed condition.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub subject: Subject,
    pub op: Op,
    pub threshold: Value,
}

impl Condition {
    /// Whether `seen` meets it; a value of another kind never does.
    pub fn holds(&self, seen: &Value) -> bool {
        match (seen, &self.threshold) {
            (Value::Number(a), Value::Number(b)) => self.op.holds(a, b),
            (Value::Text(a), Value::Text(b)) => self.op.holds(a, b),
            (Value::Bool(a), Value::Bool(b)) => self.op.holds(a, b),
            _ => false,
        }
    }
}

/// Parses `SUBJECT OP VALUE [for DURATION]`; the duration, when written.
pub fn parse_condition(when: &str) -> Result<(Condition, Option<Duration>)> {
    let text = when.trim();
    let (text, hold) = match text.rsplit_once(" for ") {
        Some((condition, duration)) => (
            condition.trim(),
            Some(
                crate::config::parse_duration(duration)
                    .with_context(|| format!("`for {}` in `{when}`", duration.trim()))?,
            ),
        ),
        None => (text, None),
    };
    let found = Op::ALL
        .iter()
        .filter_map(|(sign, op)| text.find(sign).map(|at| (at, *sign, *op)))
        .min_by_key(|(at, sign, _)| (*at, std::cmp::Reverse(sign.len())));
    let Some((at, sign, op)) = found else {
        // A check alone holds while it is not ok.
        let subject = Subject::parse(text)?;
        if !matches!(subject, Subject::Check(_)) {
            bail!(
                "`{when}` compares nothing: write SUBJECT OP VALUE, e.g. `cpu_usage > 90%` \
                 (OP one of > >= < <= == !=)"
            );
        }
        return Ok((
            Condition {
                subject,
                op: Op::Ne,
                threshold: Value::Text("ok".into()),
            },
            hold,
        ));
    };
    let subject = Subject::parse(text[..at].trim())?;
    let written = text[at + sign.len()..].trim();
    if written.is_empty() {
        bail!("`{when}`: nothing to compare with after `{sign}`");
    }
    let threshold = parse_threshold(&subject, written).with_context(|| format!("`{when}`"))?;
    if subject.is_text() && !matches!(op, Op::Eq | Op::Ne) {
        bail!("`{when}`: a status is compared with == or != only");
    }
    Ok((
        Condition {
            subject,
            op,
            threshold,
        },
        hold,
    ))
}

fn parse_threshold(subject: &Subject, written: &str) -> Result<Value> {
    if subject.is_text() {
        let word = written.trim_matches('"');
        let allowed: &[&str] = match subject {
            Subject::Health => &["ok", "degraded", "failing"],
            _ => &["ok", "warning", "failing"],
        };
        if !allowed.contains(&word) {
            bail!(
                "`{word}` is no status here; compare with {}",
                allowed.join(", ")
            );
        }
        return Ok(Value::Text(word.to_owned()));
    }
    if let Subject::Output { .. } = subject {
        return Ok(match written {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => match written.trim_end_matches('%').parse::<f64>() {
                Ok(n) => Value::Number(n),
                Err(_) => Value::Text(written.trim_matches('"').to_owned()),
            },
        });
    }
    if subject.is_bytes() {
        return Ok(Value::Number(crate::config::parse_size(written)? as f64));
    }
    let number = written.strip_suffix('%').unwrap_or(written).trim();
    number
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite())
        .map(Value::Number)
        .with_context(|| format!("`{written}` is not a number"))
}

/// What firing does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Actions {
    pub log: bool,
    pub notify: bool,
    pub cleanup: bool,
    pub command: Option<String>,
    pub webhook: Option<String>,
}

/// Where a rule comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// `[[alerts.rules]]` in this node's `rhizome.toml`.
    Config,
    /// The fleet's rules, applied on a control node; with who applied it.
    Fleet { by: String },
}

/// A rule ready to evaluate.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: String,
    /// As written, for people.
    pub when: String,
    pub condition: Condition,
    pub hold: Duration,
    pub actions: Actions,
    pub severity: String,
    pub origin: Origin,
    /// As given, for listing.
    pub config: RuleConfig,
}

impl Rule {
    /// Checks and parses a rule.
    pub fn new(config: &RuleConfig, origin: Origin) -> Result<Rule> {
        let name = config.name.trim();
        let what = || format!("alert rule `{name}`");
        if name.is_empty() {
            bail!("an alert rule has no name");
        }
        if name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            bail!(
                "alert rule name `{name}`: use at most 64 letters, digits, `-`, `_` or `.` \
                 (it names the alert in documents and metrics)"
            );
        }
        let (condition, written_hold) = parse_condition(&config.when).with_context(what)?;
        let hold = match (written_hold, config.hold.trim()) {
            (Some(_), h) if !h.is_empty() => {
                bail!(
                    "{}: give the duration in `when` or in `for`, not both",
                    what()
                )
            }
            (Some(hold), _) => hold,
            (None, "") => Duration::ZERO,
            (None, h) => {
                crate::config::parse_duration(h).with_context(|| format!("{}: for", what()))?
            }
        };
        let mut actions = Actions::default();
        for action in &config.actions {
            match action.as_str() {
                "log" => actions.log = true,
                "notify" => actions.notify = true,
                "cleanup" => actions.cleanup = true,
                "command" | "webhook" => {}
                other => bail!(
                    "{}: unknown action `{other}` (log, notify, cleanup; set `command` or \
                     `webhook` to run one)",
                    what()
                ),
            }
        }
        if !config.command.trim().is_empty() {
            actions.command = Some(config.command.clone());
        }
        if !config.webhook.trim().is_empty() {
            crate::ops::health::parse_http(&config.webhook)
                .with_context(|| format!("{}: webhook", what()))?;
            actions.webhook = Some(config.webhook.clone());
        }
        if !matches!(config.severity.as_str(), "warning" | "critical") {
            bail!(
                "{}: severity `{}` (warning or critical)",
                what(),
                config.severity
            );
        }
        Ok(Rule {
            name: name.to_owned(),
            when: config.when.trim().to_owned(),
            condition,
            hold,
            actions,
            severity: config.severity.clone(),
            origin,
            config: config.clone(),
        })
    }

    /// The condition with its duration, as people read it.
    pub fn describe(&self) -> String {
        if self.hold.is_zero() || self.when.contains(" for ") {
            self.when.clone()
        } else {
            format!("{} for {}", self.when, self.config.hold.trim())
        }
    }

    /// How a seen value is shown: sizes in bytes as sizes.
    pub fn show(&self, seen: &Value) -> String {
        match seen {
            Value::Number(n) if self.condition.subject.is_bytes() => format!("{:.1} MB", n / 1e6),
            Value::Number(_)
                if matches!(
                    self.condition.subject,
                    Subject::CpuUsage
                        | Subject::MemoryUsage
                        | Subject::DiskFreePercent
                        | Subject::Battery
                        | Subject::WorkflowFailureRate(_)
                ) =>
            {
                format!("{seen}%")
            }
            _ => seen.to_string(),
        }
    }
}

/// Checks a list of rules: each valid, no name twice.
pub fn check_all(configs: &[RuleConfig], origin: &Origin) -> Result<Vec<Rule>> {
    let mut names = std::collections::BTreeSet::new();
    let mut rules = Vec::with_capacity(configs.len());
    for config in configs {
        let rule = Rule::new(config, origin.clone())?;
        if !names.insert(rule.name.clone()) {
            bail!("two alert rules are named `{}`", rule.name);
        }
        rules.push(rule);
    }
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(when: &str) -> Result<Rule> {
        Rule::new(
            &RuleConfig {
                name: "r".into(),
                when: when.into(),
                hold: String::new(),
                actions: default_actions(),
                command: String::new(),
                webhook: String::new(),
                severity: default_severity(),
            },
            Origin::Config,
        )
    }

    #[test]
    fn conditions_of_the_usual_kinds_parse() {
        let r = rule("cpu_usage > 90% for 5m").unwrap();
        assert_eq!(r.condition.subject, Subject::CpuUsage);
        assert_eq!(r.condition.op, Op::Gt);
        assert_eq!(r.condition.threshold, Value::Number(90.0));
        assert_eq!(r.hold, Duration::from_secs(300));

        let r = rule("disk_free<100MB").unwrap();
        assert_eq!(r.condition.op, Op::Lt);
        assert_eq!(r.condition.threshold, Value::Number(100e6));

        let r = rule("sync_failures >= 3").unwrap();
        assert_eq!(r.condition.op, Op::Ge);

        let r = rule("workflow_failure_rate:ingest > 20% for 10m").unwrap();
        assert_eq!(
            r.condition.subject,
            Subject::WorkflowFailureRate(Some("ingest".into()))
        );

        let r = rule("output:sensor-zscore.anomaly == true").unwrap();
        assert_eq!(r.condition.threshold, Value::Bool(true));
        assert!(r.condition.holds(&Value::Bool(true)));
        assert!(!r.condition.holds(&Value::Number(1.0)));

        let r = rule("check:store").unwrap();
        assert!(r.condition.holds(&Value::Text("failing".into())));
        assert!(!r.condition.holds(&Value::Text("ok".into())));

        let r = rule("health != ok").unwrap();
        assert!(r.condition.holds(&Value::Text("degraded".into())));
    }

    #[test]
    fn bad_rules_are_refused_naming_what_is_wrong() {
        let said = |when: &str| format!("{:#}", rule(when).unwrap_err());
        assert!(said("cpu_usage").contains("compares nothing"));
        assert!(said("fan_speed > 3").contains("nothing to watch"));
        assert!(said("cpu_usage > lots").contains("not a number"));
        assert!(said("disk_free < 100 parsecs").contains("size"));
        assert!(said("health > ok").contains("== or != only"));
        assert!(said("health == sad").contains("no status"));
        assert!(said("cpu_usage > 1 for ever").contains("duration"));
        assert!(said("cpu_usage >").contains("nothing to compare"));
        let mut config = rule("cpu_usage > 1").unwrap().config;
        config.actions = vec!["explode".into()];
        assert!(
            format!("{:#}", Rule::new(&config, Origin::Config).unwrap_err())
                .contains("unknown action `explode`")
        );
        config.actions = default_actions();
        config.name = "a b".into();
        assert!(Rule::new(&config, Origin::Config).is_err());
    }
}
