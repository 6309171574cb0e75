//! The workflow file format (YAML) and its validation, before anything is stored.
//!
//! ```yaml
//! id: sensor-zscore
//! description: flag temperature spikes
//! trigger: {every: 30s}          # manual | {every: <duration>} | {after: <workflow>}
//! target: {tags: [sensor]}       # nodes, tags, zones; empty = every node
//! timeout: 10s
//! max_concurrent: 1
//! steps:
//!   - id: read
//!     agent: sensor
//!   - id: score
//!     agent: zscore
//!     inputs: [read]
//!     config: {field: value, last: 20}
//!     timeout: 2s
//!     retries: 2
//!     backoff: 200ms
//!   - id: alert
//!     agent: threshold
//!     inputs: [score]
//!     when: score.anomaly
//!     config: {field: z, above: 3}
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use crdt_store::{DocKind, DocName, StepDef, Store, Target, WorkflowDoc};
use serde::Deserialize;

use crate::config::parse_duration;

/// The name a step uses for the run's own input.
pub const RUN_INPUT: &str = "input";
/// Most steps in one workflow.
pub const MAX_STEPS: usize = 256;
/// Most retries of one step.
pub const MAX_RETRIES: u32 = 10;
/// Most concurrent runs of one workflow on one node.
pub const MAX_CONCURRENT: u32 = 64;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkflowFile {
    id: String,
    #[serde(default)]
    version: Option<u64>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    trigger: TriggerSpec,
    #[serde(default)]
    target: TargetSpec,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default = "one")]
    max_concurrent: u32,
    steps: Vec<StepSpec>,
}

fn one() -> u32 {
    1
}

/// `manual`, `{every: 30s}` or `{after: other-workflow}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum TriggerSpec {
    Named(String),
    Keyed(TriggerKeys),
}

impl Default for TriggerSpec {
    fn default() -> Self {
        TriggerSpec::Named("manual".into())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TriggerKeys {
    every: Option<String>,
    after: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetSpec {
    #[serde(default)]
    nodes: Vec<String>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    zones: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StepSpec {
    id: String,
    agent: String,
    #[serde(default)]
    config: serde_json::Value,
    #[serde(default)]
    inputs: Vec<String>,
    #[serde(default)]
    when: Option<String>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    retries: u32,
    #[serde(default)]
    backoff: Option<String>,
}

/// Reads and validates a workflow file.
pub fn load(path: &Path) -> Result<WorkflowDoc> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the workflow file {}", path.display()))?;
    parse(&text).with_context(|| format!("{}", path.display()))
}

/// Parses and validates a workflow definition: every error names the field or step.
pub fn parse(text: &str) -> Result<WorkflowDoc> {
    let file: WorkflowFile = serde_norway::from_str(text)?;
    DocName::workflow(&file.id)?;
    let duration_ms = |what: &str, text: &Option<String>| -> Result<u64> {
        text.as_deref()
            .map(|t| parse_duration(t).map(|d| d.as_millis() as u64))
            .transpose()
            .with_context(|| what.to_owned())
            .map(Option::unwrap_or_default)
    };
    let trigger = match &file.trigger {
        TriggerSpec::Named(name) if name == "manual" => "manual".to_owned(),
        TriggerSpec::Named(other) => {
            bail!(
                "trigger: `{other}` is not `manual`, `{{every: <duration>}}` or `{{after: <workflow>}}`"
            )
        }
        TriggerSpec::Keyed(TriggerKeys {
            every: Some(every),
            after: None,
        }) => {
            let ms = duration_ms("trigger.every", &Some(every.clone()))?;
            if ms < MIN_PERIOD.as_millis() as u64 {
                bail!("trigger.every: `{every}` is shorter than the minimum of 100ms");
            }
            format!("every {every}")
        }
        TriggerSpec::Keyed(TriggerKeys {
            every: None,
            after: Some(other),
        }) => {
            DocName::workflow(other).context("trigger.after")?;
            if *other == file.id {
                bail!("trigger.after: a workflow cannot trigger on its own results");
            }
            format!("after {other}")
        }
        TriggerSpec::Keyed(_) => bail!("trigger: give exactly one of `every` and `after`"),
    };
    check_target(&file.target)?;
    if !(1..=MAX_CONCURRENT).contains(&file.max_concurrent) {
        bail!(
            "max_concurrent: {} is outside 1..={MAX_CONCURRENT}",
            file.max_concurrent
        );
    }
    if file.steps.is_empty() {
        bail!("steps: a workflow needs at least one step");
    }
    if file.steps.len() > MAX_STEPS {
        bail!(
            "steps: {} steps exceed the limit of {MAX_STEPS}",
            file.steps.len()
        );
    }
    let registry = agents::Registry;
    let mut ids: BTreeSet<&str> = BTreeSet::new();
    for step in &file.steps {
        if !ids.insert(step.id.as_str()) {
            bail!("step `{}` is defined twice", step.id);
        }
    }
    let mut steps = BTreeMap::new();
    for step in &file.steps {
        let name = &step.id;
        let context = || format!("step `{name}`");
        DocName::workflow(name)
            .map_err(|_| {
                anyhow::anyhow!("a step id may only contain letters, digits, '-', '_' and '.'")
            })
            .with_context(context)?;
        if name == RUN_INPUT {
            bail!("step `{name}`: `{RUN_INPUT}` is reserved for the run's input");
        }
        registry
            .validate(&step.agent, &step.config)
            .with_context(context)?;
        for input in &step.inputs {
            if input != RUN_INPUT && !ids.contains(input.as_str()) {
                bail!(
                    "step `{name}`: input `{input}` is neither a step of this workflow nor `{RUN_INPUT}`"
                );
            }
            if input == name {
                bail!("step `{name}`: a step cannot take its own output as input");
            }
        }
        if let Some(when) = &step.when {
            check_condition(when, &step.inputs).with_context(context)?;
        }
        if step.retries > MAX_RETRIES {
            bail!(
                "step `{name}`: retries {} exceed the limit of {MAX_RETRIES}",
                step.retries
            );
        }
        let def = StepDef {
            agent: step.agent.clone(),
            config: step.config.to_string(),
            inputs: step.inputs.clone(),
            when: step.when.clone(),
            timeout_ms: duration_ms("timeout", &step.timeout).with_context(context)?,
            retries: step.retries,
            backoff_ms: duration_ms("backoff", &step.backoff).with_context(context)?,
        };
        steps.insert(name.clone(), def);
    }
    if let Some(cycle) = find_cycle(&steps) {
        bail!("steps form a cycle: {}", cycle.join(" -> "));
    }
    Ok(WorkflowDoc {
        id: file.id.clone(),
        version: file.version.unwrap_or(0),
        description: file.description,
        trigger,
        target: Target {
            nodes: file.target.nodes,
            tags: file.target.tags,
            zones: file.target.zones,
        },
        steps,
        timeout_ms: duration_ms("timeout", &file.timeout)?,
        max_concurrent: file.max_concurrent,
        updated_by: String::new(),
        updated_ms: 0,
    })
}

/// Every workflow in the store, by id. A name that was never applied reads as an empty
/// genesis document and is left out.
///
/// Reads the name registry rather than listing every document, so that the scheduler can call
/// it every few seconds on a store full of results windows.
pub fn stored(store: &mut Store) -> Result<Vec<WorkflowDoc>> {
    let mut out = Vec::new();
    for (_, name) in store.names()? {
        if name.kind() == DocKind::Workflow {
            let workflow = store.read::<WorkflowDoc>(&name)?;
            if !workflow.steps.is_empty() {
                out.push(workflow);
            }
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// When a workflow runs, as stored in its document's `trigger`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// Only when asked: `POST /run/{workflow}` or `rhizome run`.
    Manual,
    /// Periodically, the first time as soon as the node knows the workflow.
    Every(Duration),
    /// After each succeeded run of the named workflow on this node, with its output as input.
    After(String),
}

/// The shortest period of an `every` trigger.
pub const MIN_PERIOD: Duration = Duration::from_millis(100);

impl Trigger {
    /// Parses a stored trigger (`manual`, `every 30s`, `after other-workflow`). Definitions
    /// replicated from peers skipped this node's validation, so this checks again.
    pub fn parse(stored: &str) -> Result<Trigger> {
        match stored.split_once(' ') {
            None if stored == "manual" || stored.is_empty() => Ok(Trigger::Manual),
            Some(("every", period)) => {
                let period = parse_duration(period).context("trigger")?;
                if period < MIN_PERIOD {
                    bail!(
                        "trigger: every {period:?} is shorter than the minimum of {MIN_PERIOD:?}"
                    );
                }
                Ok(Trigger::Every(period))
            }
            Some(("after", other)) => {
                DocName::workflow(other).context("trigger")?;
                Ok(Trigger::After(other.to_owned()))
            }
            _ => bail!(
                "trigger: `{stored}` is not `manual`, `every <duration>` or `after <workflow>`"
            ),
        }
    }
}

/// What a target selector is matched against: this node's id, name, zone and tags.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeTraits {
    pub id: String,
    pub name: String,
    pub zone: String,
    pub tags: Vec<String>,
}

/// Whether a target selects this node. Each non-empty list must match, empty lists match every
/// node: `nodes` when it names the node's name or id, `tags` when the node carries every tag
/// listed, `zones` when one of them is the node's zone or an ancestor of it (`site-a` selects
/// `site-a` and `site-a/line-3`, not `site-ab`).
pub fn selects(target: &Target, node: &NodeTraits) -> bool {
    let named = target.nodes.is_empty()
        || target
            .nodes
            .iter()
            .any(|n| *n == node.name || *n == node.id);
    let tagged = target.tags.iter().all(|t| node.tags.contains(t));
    let zoned =
        target.zones.is_empty() || target.zones.iter().any(|z| zone_contains(z, &node.zone));
    named && tagged && zoned
}

/// Whether `zone` is `ancestor` or lies below it, by whole path segments.
pub fn zone_contains(ancestor: &str, zone: &str) -> bool {
    let ancestor = ancestor.trim_end_matches('/');
    let zone = zone.trim_end_matches('/');
    ancestor.is_empty()
        || zone == ancestor
        || zone
            .strip_prefix(ancestor)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// A target in one line, as `workflow list` and refusals show it.
pub fn describe_target(target: &Target) -> String {
    let mut parts = Vec::new();
    for (what, list) in [
        ("nodes", &target.nodes),
        ("tags", &target.tags),
        ("zones", &target.zones),
    ] {
        if !list.is_empty() {
            parts.push(format!("{what}={}", list.join(",")));
        }
    }
    if parts.is_empty() {
        "all nodes".to_owned()
    } else {
        parts.join(" ")
    }
}

/// A step's `when`: `<input>.<field>` (truthy) or `<input>.<field> <op> <number>` with `op`
/// one of `== != > >= < <=`. Parsed once, by validation and by the engine alike.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    input: String,
    field: String,
    compare: Option<(String, f64)>,
}

impl Condition {
    /// Parses the syntax; which inputs exist is checked by the caller.
    pub fn parse(when: &str) -> Result<Condition> {
        let parts: Vec<&str> = when.split_whitespace().collect();
        let (path, rest) = match parts.as_slice() {
            [path] => (*path, None),
            [path, op, value] => (*path, Some((*op, *value))),
            _ => {
                bail!("when: `{when}` is not `<input>.<field>` or `<input>.<field> <op> <number>`")
            }
        };
        let Some((input, field)) = path.split_once('.').filter(|(_, f)| !f.is_empty()) else {
            bail!("when: `{path}` must name an input and a field, as `score.anomaly`");
        };
        let compare = match rest {
            None => None,
            Some((op, value)) => {
                if !matches!(op, "==" | "!=" | ">" | ">=" | "<" | "<=") {
                    bail!("when: unknown comparison `{op}` (use == != > >= < <=)");
                }
                let value = value
                    .parse::<f64>()
                    .map_err(|_| anyhow::anyhow!("when: `{value}` is not a number"))?;
                Some((op.to_owned(), value))
            }
        };
        Ok(Condition {
            input: input.to_owned(),
            field: field.to_owned(),
            compare,
        })
    }

    /// The input the condition reads.
    pub fn input(&self) -> &str {
        &self.input
    }

    /// Whether it holds for these inputs: truthy means true, a non-zero number or a non-empty
    /// string; a missing input or field is false.
    pub fn holds(&self, inputs: &BTreeMap<String, serde_json::Value>) -> bool {
        use serde_json::Value;
        let Some(value) = inputs.get(&self.input).and_then(|v| v.get(&self.field)) else {
            return false;
        };
        match &self.compare {
            None => match value {
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
                Value::String(s) => !s.is_empty(),
                Value::Null => false,
                _ => true,
            },
            Some((op, limit)) => {
                let Some(v) = value.as_f64() else {
                    return false;
                };
                match op.as_str() {
                    "==" => v == *limit,
                    "!=" => v != *limit,
                    ">" => v > *limit,
                    ">=" => v >= *limit,
                    "<" => v < *limit,
                    _ => v <= *limit,
                }
            }
        }
    }
}

fn check_target(target: &TargetSpec) -> Result<()> {
    for (what, list) in [
        ("nodes", &target.nodes),
        ("tags", &target.tags),
        ("zones", &target.zones),
    ] {
        if let Some(bad) = list.iter().find(|v| v.trim().is_empty()) {
            bail!("target.{what}: `{bad}` is empty");
        }
    }
    for zone in &target.zones {
        if zone.trim_end_matches('/').split('/').any(str::is_empty) {
            bail!("target.zones: `{zone}` is not a zone path such as `site-a/line-3`");
        }
    }
    Ok(())
}

fn check_condition(when: &str, inputs: &[String]) -> Result<()> {
    let condition = Condition::parse(when)?;
    if !inputs.iter().any(|i| i == condition.input()) {
        bail!("when: `{}` is not an input of this step", condition.input());
    }
    Ok(())
}

/// A cycle among the steps' inputs, if any, as the step ids along it.
fn find_cycle(steps: &BTreeMap<String, StepDef>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    fn visit(
        id: &str,
        steps: &BTreeMap<String, StepDef>,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match marks.get(id) {
            Some(Mark::Done) => return None,
            Some(Mark::Visiting) => {
                let start = path.iter().position(|p| p == id).unwrap_or(0);
                let mut cycle = path[start..].to_vec();
                cycle.push(id.to_owned());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(id.to_owned(), Mark::Visiting);
        path.push(id.to_owned());
        for input in steps
            .get(id)
            .map(|s| s.inputs.as_slice())
            .unwrap_or_default()
        {
            if steps.contains_key(input)
                && let Some(cycle) = visit(input, steps, marks, path)
            {
                return Some(cycle);
            }
        }
        path.pop();
        marks.insert(id.to_owned(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    steps
        .keys()
        .find_map(|id| visit(id, steps, &mut marks, &mut Vec::new()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
id: sensor-zscore
description: flag temperature spikes
trigger: {every: 30s}
target: {tags: [sensor]}
timeout: 10s
steps:
  - id: read
    agent: sensor
  - id: score
    agent: zscore
    inputs: [read]
    config: {field: value, last: 20}
    timeout: 2s
    retries: 2
    backoff: 200ms
  - id: alert
    agent: threshold
    inputs: [score]
    when: score.anomaly
    config: {field: z, above: 3}
"#;

    fn error(text: &str) -> String {
        format!("{:#}", parse(text).unwrap_err())
    }

    #[test]
    fn the_documented_example_parses() {
        let wf = parse(EXAMPLE).unwrap();
        assert_eq!(wf.id, "sensor-zscore");
        assert_eq!(wf.trigger, "every 30s");
        assert_eq!(wf.timeout_ms, 10_000);
        assert_eq!(wf.target.tags, vec!["sensor"]);
        let score = &wf.steps["score"];
        assert_eq!(
            (score.timeout_ms, score.retries, score.backoff_ms),
            (2000, 2, 200)
        );
        assert_eq!(wf.steps["alert"].when.as_deref(), Some("score.anomaly"));
        let config: serde_json::Value = serde_json::from_str(&score.config).unwrap();
        assert_eq!(config["last"], 20);
    }

    #[test]
    fn bad_definitions_name_what_is_wrong() {
        let cases = [
            (
                EXAMPLE.replace("agent: zscore", "agent: zscroe"),
                "unknown agent `zscroe`",
            ),
            (
                EXAMPLE.replace("retries: 2", "retrys: 2"),
                "unknown field `retrys`",
            ),
            (
                EXAMPLE.replace("inputs: [read]", "inputs: [raed]"),
                "input `raed`",
            ),
            (
                EXAMPLE.replace("timeout: 2s", "timeout: 2 seconds"),
                "step `score`",
            ),
            (
                EXAMPLE.replace("every: 30s", "every: 10ms"),
                "minimum of 100ms",
            ),
            (
                EXAMPLE.replace("last: 20", "last: 0"),
                "`last` must be at least 1",
            ),
            (
                EXAMPLE.replace("when: score.anomaly", "when: read.value"),
                "not an input",
            ),
            (
                EXAMPLE.replace("when: score.anomaly", "when: score.z ~ 3"),
                "unknown comparison",
            ),
            (
                EXAMPLE.replace(
                    "  - id: read\n    agent: sensor\n",
                    "  - id: read\n    agent: sensor\n    inputs: [alert]\n",
                ),
                "cycle",
            ),
            (EXAMPLE.replace("id: alert", "id: score"), "defined twice"),
            ("id: x\nsteps: []\n".to_owned(), "at least one step"),
            ("id: a/b\nsteps: []\n".to_owned(), "workflow id"),
        ];
        for (text, expected) in cases {
            let err = error(&text);
            assert!(err.contains(expected), "expected `{expected}` in: {err}");
        }
    }

    #[test]
    fn selectors_match_names_tags_and_zones() {
        let node = NodeTraits {
            id: "0123456789abcdef0123456789abcdef".into(),
            name: "press-7".into(),
            zone: "site-a/line-3".into(),
            tags: vec!["camera".into(), "sensor".into()],
        };
        let target = |nodes: &[&str], tags: &[&str], zones: &[&str]| Target {
            nodes: nodes.iter().map(|s| s.to_string()).collect(),
            tags: tags.iter().map(|s| s.to_string()).collect(),
            zones: zones.iter().map(|s| s.to_string()).collect(),
        };
        let cases = [
            (target(&[], &[], &[]), true, "empty selects every node"),
            (target(&["press-7"], &[], &[]), true, "by name"),
            (target(&["other", &node.id], &[], &[]), true, "by id"),
            (target(&["other"], &[], &[]), false, "another name"),
            (target(&[], &["sensor"], &[]), true, "a tag it carries"),
            (target(&[], &["sensor", "camera"], &[]), true, "every tag"),
            (
                target(&[], &["sensor", "gpu"], &[]),
                false,
                "one tag missing",
            ),
            (target(&[], &[], &["site-a/line-3"]), true, "its zone"),
            (target(&[], &[], &["site-a"]), true, "a parent zone"),
            (target(&[], &[], &["site-a/"]), true, "a trailing slash"),
            (
                target(&[], &[], &["site-b", "site-a"]),
                true,
                "any of the zones",
            ),
            (
                target(&[], &[], &["site-a/line-3/cell-1"]),
                false,
                "a sub-zone of its zone",
            ),
            (
                target(&[], &[], &["site-ab"]),
                false,
                "a zone that only shares a prefix",
            ),
            (
                target(&[], &[], &["site-a/line"]),
                false,
                "a partial segment",
            ),
            (
                target(&["press-7"], &["sensor"], &["site-b"]),
                false,
                "every list must match",
            ),
            (
                target(&["press-7"], &["sensor"], &["site-a"]),
                true,
                "all lists match",
            ),
        ];
        for (target, expected, what) in cases {
            assert_eq!(selects(&target, &node), expected, "{what}: {target:?}");
        }
        assert_eq!(describe_target(&target(&[], &[], &[])), "all nodes");
        assert_eq!(
            describe_target(&target(&["a"], &["t1", "t2"], &[])),
            "nodes=a tags=t1,t2"
        );
    }

    #[test]
    fn stored_triggers_parse_back() {
        let trigger = |yaml: &str| {
            let wf = parse(&format!(
                "id: w\ntrigger: {yaml}\nsteps:\n  - id: a\n    agent: noop\n"
            ))
            .unwrap();
            Trigger::parse(&wf.trigger).unwrap()
        };
        assert_eq!(trigger("manual"), Trigger::Manual);
        assert_eq!(
            trigger("{every: 30s}"),
            Trigger::Every(Duration::from_secs(30))
        );
        assert_eq!(trigger("{after: other}"), Trigger::After("other".into()));
        for bad in ["every 10ms", "every soon", "after a/b", "hourly", "every"] {
            assert!(Trigger::parse(bad).is_err(), "{bad}");
        }
        let err = error("id: w\ntarget: {zones: [\"a//b\"]}\nsteps:\n  - id: a\n    agent: noop\n");
        assert!(err.contains("target.zones"), "{err}");
        let err = error("id: w\ntarget: {tags: [\"\"]}\nsteps:\n  - id: a\n    agent: noop\n");
        assert!(err.contains("target.tags"), "{err}");
    }

    #[test]
    fn yaml_errors_give_a_line() {
        let err = error("id: x\nsteps:\n  - id: a\n    agent: noop\n    inputs: 3\n");
        assert!(err.contains("line 5"), "{err}");
    }
}
