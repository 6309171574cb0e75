//! A workflow's versions over time, and the two writes that act on them: `workflow rollback`
//! (a version's definition made current again) and `workflow delete` (a tombstone version).
//!
//! The history is read from the workflow document's own changes
//! ([`crdt_store::docs::history`]): every apply is a change that puts the definition, so the
//! document already holds every version and which ones each replaced. Rollback and delete are
//! versions like any other, written through the same path as an apply (rights, validation,
//! the next version number over everything standing, signed): every replica orders, resolves
//! and checks them as it does applied versions, and the history shows them in line.

use anyhow::{Context, Result};
use crdt_store::docs::history::DefinitionHistory;
use crdt_store::{DocName, MeshRegistry, Resolution, Store, WorkflowDoc, WorkflowVersions};
use serde::{Deserialize, Serialize};

use crate::run::workflow::{Writer, describe_target, validate};

/// How many versions `workflow history` lists unless told otherwise (the newest).
pub const DEFAULT_HISTORY_LIMIT: usize = 100;

/// Most step changes one summary names; the rest are counted.
const MAX_STEPS_NAMED: usize = 8;

/// Why a rollback, a deletion or a history was refused; each names the workflow and what is
/// wrong with the request.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// No version of the workflow was ever applied, or none has reached this node.
    #[error(
        "no workflow `{0}` on this node: none was applied, or none has reached this node yet \
         (`rhizome workflow list --all` lists the workflows it knows)"
    )]
    UnknownWorkflow(String),
    /// The workflow never had the version asked for.
    #[error(
        "workflow `{workflow}` has no version {version}{by}: its versions are {known} \
         (`rhizome workflow history {workflow}` lists them)"
    )]
    UnknownVersion {
        workflow: String,
        version: u64,
        /// ` written by <node>` when the request named a writer.
        by: String,
        known: String,
    },
    /// The version asked for is what runs already.
    #[error(
        "version {version} of workflow `{workflow}` is already current{}",
        if current == version { String::new() } else { format!(" (as version {current})") }
    )]
    AlreadyCurrent {
        workflow: String,
        version: u64,
        current: u64,
    },
    /// Nodes applied different definitions under the same number while apart.
    #[error(
        "version {version} of workflow `{workflow}` was written concurrently by {writers}: \
         name one with --by NODE"
    )]
    Ambiguous {
        workflow: String,
        version: u64,
        writers: String,
    },
    /// The version asked for is a deletion.
    #[error(
        "version {version} of workflow `{workflow}` is its deletion: roll back to a version \
         before it (`rhizome workflow delete {workflow}` deletes it again)"
    )]
    IsDeletion { workflow: String, version: u64 },
    /// The workflow is deleted already.
    #[error("workflow `{workflow}` is already deleted ({reason})")]
    AlreadyDeleted { workflow: String, reason: String },
}

impl Refused {
    /// Whether the request named something that does not exist (404), rather than asked for
    /// something the workflow's state does not allow (409).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            Refused::UnknownWorkflow(_) | Refused::UnknownVersion { .. }
        )
    }
}

/// `workflow history`: versions newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryView {
    /// The workflow id.
    pub workflow: String,
    /// How many versions the document holds in all.
    pub total: usize,
    /// The most versions listed; when `total` is larger, the oldest were left out.
    pub limit: usize,
    /// Newest first.
    pub versions: Vec<HistoryEntry>,
}

/// One version in a workflow's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// The version number (0 for a value that is not a readable definition).
    pub version: u64,
    /// The node that wrote it (id).
    pub author: String,
    /// That node's name, when the registry knows it.
    pub author_name: Option<String>,
    /// When it was written (the version's own time), ms since the epoch.
    pub at_ms: i64,
    /// What changed against the version it replaced, in one line.
    pub summary: String,
    /// It is the version in effect (resolved by the conflict policy).
    pub current: bool,
    /// It stands unreplaced beside other versions that compete under `conflict: manual`.
    pub competing: bool,
    /// It deleted the workflow.
    pub deleted: bool,
    /// The version whose definition it made current again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_of: Option<u64>,
    /// Versions written concurrently with it (neither replaced the other).
    pub concurrent_with: Vec<VersionRef>,
    /// Why the value is not a definition this node can read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreadable: Option<String>,
    /// Why this node's write rules refuse the version (not signed by a node with the right to
    /// write workflows): it never stands where it is checked, and its author is only a claim.
    /// Versions that were replaced before they reached a node were never checked there, so
    /// the history checks each one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    /// The Automerge change that wrote it (hex).
    pub change: String,
}

/// A version named in another's entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRef {
    pub version: u64,
    pub author: String,
}

/// A workflow's history and what stands now; `UnknownWorkflow` if no version was ever
/// written here.
fn load(store: &mut Store, name: &DocName) -> Result<(DefinitionHistory, WorkflowVersions)> {
    let id = store.document_id(name);
    let unknown = || Refused::UnknownWorkflow(workflow_id(name));
    if store.heads(&id)?.is_none() {
        return Err(unknown().into());
    }
    let mut doc = store.automerge(&id)?;
    let history = DefinitionHistory::read(&mut doc);
    let standing: WorkflowVersions = store.read(name)?;
    if history.writes.is_empty() && standing.versions.is_empty() {
        return Err(unknown().into());
    }
    Ok((history, standing))
}

fn workflow_id(name: &DocName) -> String {
    match name {
        DocName::Workflow { id } => id.clone(),
        other => other.to_string(),
    }
}

/// The newest `limit` versions of a workflow, with their authors named from the registry.
pub fn history(store: &mut Store, name: &DocName, limit: usize) -> Result<HistoryView> {
    let (history, standing) = load(store, name)?;
    let registry = store.registry()?;
    let rules = store.config().write_rules.clone();
    Ok(view_of(
        &history,
        &standing,
        &registry,
        rules.as_deref(),
        &workflow_id(name),
        limit,
    ))
}

/// [`history`] over what was read: pure, so that tests can build any history.
pub fn view_of(
    history: &DefinitionHistory,
    standing: &WorkflowVersions,
    registry: &MeshRegistry,
    rules: Option<&dyn crdt_store::WriteRules>,
    workflow: &str,
    limit: usize,
) -> HistoryView {
    let resolution = standing.resolve();
    let stands = history.standing();
    let refer = |i: usize| {
        let w = &history.writes[i];
        VersionRef {
            version: w.version(),
            author: w
                .definition
                .as_ref()
                .map(|d| d.updated_by.clone())
                .unwrap_or_default(),
        }
    };
    let versions = history
        .newest_first()
        .into_iter()
        .take(limit)
        .map(|i| {
            let write = &history.writes[i];
            let (current, competing) = match (&write.definition, resolution) {
                (Ok(d), Resolution::Resolved(r)) => (stands.contains(&i) && d == r, false),
                (Ok(d), Resolution::Competing(all)) => (false, all.contains(d)),
                _ => (false, false),
            };
            let definition = write.definition.as_ref().ok();
            let author = definition.map(|d| d.updated_by.clone()).unwrap_or_default();
            HistoryEntry {
                version: write.version(),
                author_name: registry.nodes.get(&author).map(|e| e.name.clone()),
                author,
                at_ms: definition.map_or(write.time_ms, |d| d.updated_ms),
                summary: entry_summary(history, i),
                current,
                competing,
                deleted: definition.is_some_and(|d| d.deleted),
                rollback_of: definition.map(|d| d.rollback_of).filter(|v| *v > 0),
                concurrent_with: history.concurrent_with(i).into_iter().map(refer).collect(),
                unreadable: write.definition.as_ref().err().cloned(),
                refused: rules
                    .zip(definition)
                    .and_then(|(rules, d)| rules.check_workflow_version(d, registry).err()),
                change: write.change.to_string(),
            }
        })
        .collect();
    HistoryView {
        workflow: workflow.to_owned(),
        total: history.writes.len(),
        limit,
        versions,
    }
}

/// The one-line summary of write `i` against the version it replaced.
fn entry_summary(history: &DefinitionHistory, i: usize) -> String {
    let write = &history.writes[i];
    let definition = match &write.definition {
        Ok(d) => d,
        Err(reason) => return format!("unreadable: {reason}"),
    };
    let mut replaced: Vec<&WorkflowDoc> = write
        .replaces
        .iter()
        .filter_map(|&r| history.writes[r].definition.as_ref().ok())
        .collect();
    replaced.sort_by(|a, b| {
        (b.version, b.updated_ms, &b.updated_by).cmp(&(a.version, a.updated_ms, &a.updated_by))
    });
    let mut summary = describe_version(replaced.first().copied(), definition);
    if replaced.len() > 1 {
        let names: Vec<String> = replaced
            .iter()
            .map(|v| format!("v{} by {}", v.version, short_id(&v.updated_by)))
            .collect();
        summary = format!(
            "{summary} (replaces concurrent {}; compared with the first)",
            names.join(", ")
        );
    }
    summary
}

/// What `next` is against `previous` (the version it replaced; `None` for the first).
pub fn describe_version(previous: Option<&WorkflowDoc>, next: &WorkflowDoc) -> String {
    if next.deleted {
        return "deleted".into();
    }
    let head = match (next.rollback_of, previous) {
        (0, None) => return "first version".into(),
        (0, Some(p)) if p.deleted => {
            return format!("applied after the deletion in v{}", p.version);
        }
        (0, Some(_)) => None,
        (to, Some(p)) if p.deleted => {
            return format!("rolled back to v{to} after the deletion in v{}", p.version);
        }
        (to, _) => Some(format!("rolled back to v{to}")),
    };
    let changes = previous.map(|p| changes(p, next)).unwrap_or_default();
    match (head, changes.is_empty()) {
        (Some(head), true) => head,
        (Some(head), false) => format!("{head}: {}", changes.join("; ")),
        (None, true) => "no change to the definition".into(),
        (None, false) => changes.join("; "),
    }
}

/// What differs between two definitions, one phrase per difference, in the order of the file.
pub fn changes(before: &WorkflowDoc, after: &WorkflowDoc) -> Vec<String> {
    let mut out = Vec::new();
    if before.description != after.description {
        out.push("description changed".to_owned());
    }
    let mut from_to = |what: &str, a: String, b: String| {
        if a != b {
            out.push(format!("{what} {a} → {b}"));
        }
    };
    from_to("trigger", before.trigger.clone(), after.trigger.clone());
    from_to(
        "target",
        describe_target(&before.target),
        describe_target(&after.target),
    );
    from_to(
        "timeout",
        duration(before.timeout_ms),
        duration(after.timeout_ms),
    );
    from_to(
        "max_concurrent",
        before.max_concurrent.to_string(),
        after.max_concurrent.to_string(),
    );
    from_to(
        "conflict",
        before.conflict.as_str().to_owned(),
        after.conflict.as_str().to_owned(),
    );
    let mut steps = Vec::new();
    let names: std::collections::BTreeSet<&String> =
        before.steps.keys().chain(after.steps.keys()).collect();
    for name in names {
        match (before.steps.get(name), after.steps.get(name)) {
            (None, Some(_)) => steps.push(format!("step `{name}` added")),
            (Some(_), None) => steps.push(format!("step `{name}` removed")),
            (Some(a), Some(b)) if a != b => {
                if a.agent != b.agent {
                    steps.push(format!("step `{name}` agent {} → {}", a.agent, b.agent));
                }
                let fields: Vec<&str> = [
                    ("config", a.config != b.config),
                    ("inputs", a.inputs != b.inputs),
                    ("when", a.when != b.when),
                    ("timeout", a.timeout_ms != b.timeout_ms),
                    ("retries", a.retries != b.retries),
                    ("backoff", a.backoff_ms != b.backoff_ms),
                ]
                .into_iter()
                .filter_map(|(field, differs)| differs.then_some(field))
                .collect();
                if !fields.is_empty() {
                    steps.push(format!("step `{name}` {} changed", fields.join(", ")));
                }
            }
            _ => {}
        }
    }
    if steps.len() > MAX_STEPS_NAMED {
        let more = steps.len() - MAX_STEPS_NAMED;
        steps.truncate(MAX_STEPS_NAMED);
        steps.push(format!("{more} more step changes"));
    }
    out.extend(steps);
    out
}

/// A duration as files write them; 0 is the engine's default.
fn duration(ms: u64) -> String {
    match ms {
        0 => "default".into(),
        ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms => format!("{ms}ms"),
    }
}

/// A node id shortened for one line (ids are 32 hex characters).
fn short_id(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// Why a deleted workflow does not run: who deleted it and when.
pub fn deletion_reason(tombstone: &WorkflowDoc) -> String {
    format!(
        "workflow `{}` was deleted (version {}, by {} at {})",
        tombstone.id,
        tombstone.version,
        tombstone.updated_by,
        crdt_store::format_timestamp(tombstone.updated_ms)
    )
}

/// Makes version `to` (written by `by`, a node id or name, when nodes wrote that number
/// concurrently) current again, as a new version written by `writer`: the same rights and
/// validation as an apply, one more than the highest version standing.
pub fn rollback(
    store: &mut Store,
    workflow: &str,
    to: u64,
    by: Option<&str>,
    writer: &Writer,
) -> Result<WorkflowDoc> {
    if let Err(refused) = crate::security::workflow_rights::may_apply(store, writer)? {
        return Err(refused.into());
    }
    let name = DocName::workflow(workflow)?;
    let (history, standing) = load(store, &name)?;
    let registry = store.registry()?;
    let written_by = |d: &WorkflowDoc| {
        by.is_none_or(|by| {
            d.updated_by == by
                || registry
                    .nodes
                    .get(&d.updated_by)
                    .is_some_and(|e| e.name == by)
        })
    };
    let mut candidates: Vec<&WorkflowDoc> = history
        .writes
        .iter()
        .filter_map(|w| w.definition.as_ref().ok())
        .filter(|d| d.version == to && written_by(d))
        .collect();
    candidates.dedup_by(|a, b| a.content() == b.content());
    let target = match candidates.as_slice() {
        [] => {
            return Err(Refused::UnknownVersion {
                workflow: workflow.to_owned(),
                version: to,
                by: by.map(|b| format!(" written by {b}")).unwrap_or_default(),
                known: known_versions(&history),
            }
            .into());
        }
        [one] => (*one).clone(),
        several => {
            let writers: Vec<String> = several.iter().map(|d| d.updated_by.clone()).collect();
            return Err(Refused::Ambiguous {
                workflow: workflow.to_owned(),
                version: to,
                writers: writers.join(" and "),
            }
            .into());
        }
    };
    if target.deleted {
        return Err(Refused::IsDeletion {
            workflow: workflow.to_owned(),
            version: to,
        }
        .into());
    }
    if let Resolution::Resolved(current) = standing.resolve()
        && current.content() == target.content()
    {
        return Err(Refused::AlreadyCurrent {
            workflow: workflow.to_owned(),
            version: to,
            current: current.version,
        }
        .into());
    }
    validate(&target)
        .with_context(|| format!("version {to} of workflow `{workflow}` cannot run again"))?;
    let definition = WorkflowDoc {
        rollback_of: to,
        ..target.content()
    };
    write(
        store,
        &name,
        writer.next_version(definition, &standing.versions)?,
    )
}

/// The version numbers of a history, as a short phrase (`1 to 7`, or `1, 2 and 5`).
fn known_versions(history: &DefinitionHistory) -> String {
    let mut numbers: Vec<u64> = history
        .writes
        .iter()
        .filter(|w| w.definition.is_ok())
        .map(|w| w.version())
        .collect();
    numbers.sort_unstable();
    numbers.dedup();
    match numbers.as_slice() {
        [] => "none readable".into(),
        [only] => only.to_string(),
        [first, .., last] if (last - first) as usize + 1 == numbers.len() => {
            format!("{first} to {last}")
        }
        [rest @ .., last] => {
            let rest: Vec<String> = rest.iter().map(u64::to_string).collect();
            format!("{} and {last}", rest.join(", "))
        }
    }
}

/// Retires a workflow on every node: a tombstone version written by `writer` over every
/// version standing, with the same rights as an apply. Its results stay.
pub fn delete(store: &mut Store, workflow: &str, writer: &Writer) -> Result<WorkflowDoc> {
    if let Err(refused) = crate::security::workflow_rights::may_apply(store, writer)? {
        return Err(refused.into());
    }
    let name = DocName::workflow(workflow)?;
    let (_, standing) = load(store, &name)?;
    if let Resolution::Resolved(current) = standing.resolve()
        && current.deleted
    {
        return Err(Refused::AlreadyDeleted {
            workflow: workflow.to_owned(),
            reason: deletion_reason(current),
        }
        .into());
    }
    let tombstone = WorkflowDoc {
        id: workflow.to_owned(),
        deleted: true,
        // The policy stays the workflow's, so that a deletion meets concurrent versions as
        // any version of this workflow would.
        conflict: standing.policy(),
        max_concurrent: 1,
        ..WorkflowDoc::default()
    };
    write(
        store,
        &name,
        writer.next_version(tombstone, &standing.versions)?,
    )
}

fn write(store: &mut Store, name: &DocName, version: WorkflowDoc) -> Result<WorkflowDoc> {
    store.update::<WorkflowDoc, _>(name, |doc| *doc = version.clone())?;
    Ok(version)
}

/// The version a deleted workflow had before its deletion (the one `workflow rollback` would
/// bring back), read from the history.
pub fn before_deletion(store: &mut Store, name: &DocName) -> Option<u64> {
    let (history, _) = load(store, name).ok()?;
    let tombstone = history.standing().into_iter().find(|&i| {
        history.writes[i]
            .definition
            .as_ref()
            .is_ok_and(|d| d.deleted)
    })?;
    history.writes[tombstone]
        .replaces
        .iter()
        .filter_map(|&r| history.writes[r].definition.as_ref().ok())
        .filter(|d| !d.deleted)
        .map(|d| d.version)
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::workflow::parse;

    fn definition(yaml: &str) -> WorkflowDoc {
        parse(yaml).unwrap()
    }

    const BASE: &str = "
id: w
description: first
trigger: {every: 1s}
steps:
  - id: read
    agent: sensor
    config: {seed: 1}
  - id: score
    agent: zscore
    inputs: [read]
    config: {field: value, last: 20}
";

    #[test]
    fn a_summary_names_each_change_in_one_line() {
        let before = definition(BASE);
        let after = definition(
            &BASE
                .replace("every: 1s", "every: 5s")
                .replace("seed: 1", "seed: 2")
                .replace("description: first", "description: second"),
        );
        assert_eq!(
            describe_version(Some(&before), &after),
            "description changed; trigger every 1s → every 5s; step `read` config changed"
        );
        let retargeted = definition(&format!(
            "{}target: {{tags: [sensor]}}\nmax_concurrent: 2\ntimeout: 1500ms\nconflict: manual\n",
            BASE
        ));
        assert_eq!(
            changes(&before, &retargeted),
            [
                "target all nodes → tags=sensor",
                "timeout default → 1500ms",
                "max_concurrent 1 → 2",
                "conflict last_write → manual",
            ]
        );
        let restepped = definition(&format!(
            "{}  - id: extra\n    agent: noop\n",
            BASE.replace("agent: zscore", "agent: threshold")
                .replace("inputs: [read]", "inputs: [read, input]")
                .replace(
                    "config: {field: value, last: 20}",
                    "config: {field: value, above: 3}"
                )
                .replace("    agent: sensor\n", "    agent: sensor\n    retries: 2\n")
        ));
        assert_eq!(
            changes(&before, &restepped),
            [
                "step `extra` added",
                "step `read` retries changed",
                "step `score` agent zscore → threshold",
                "step `score` config, inputs changed",
            ]
        );
        assert_eq!(
            changes(&restepped, &before)[0],
            "step `extra` removed",
            "and back"
        );
    }

    #[test]
    fn first_versions_rollbacks_and_deletions_say_what_they_are() {
        let one = WorkflowDoc {
            version: 1,
            ..definition(BASE)
        };
        assert_eq!(describe_version(None, &one), "first version");
        let two = WorkflowDoc {
            version: 2,
            updated_ms: 5,
            ..one.clone()
        };
        assert_eq!(
            describe_version(Some(&one), &two),
            "no change to the definition",
            "a new time or number is no change"
        );
        let changed = definition(&BASE.replace("every: 1s", "every: 5s"));
        let back = WorkflowDoc {
            version: 3,
            rollback_of: 1,
            ..one.clone()
        };
        assert_eq!(
            describe_version(Some(&changed), &back),
            "rolled back to v1: trigger every 5s → every 1s"
        );
        let tombstone = WorkflowDoc {
            id: "w".into(),
            version: 4,
            deleted: true,
            ..WorkflowDoc::default()
        };
        assert_eq!(describe_version(Some(&back), &tombstone), "deleted");
        assert_eq!(
            describe_version(Some(&tombstone), &two),
            "applied after the deletion in v4"
        );
        assert_eq!(
            describe_version(Some(&tombstone), &back),
            "rolled back to v1 after the deletion in v4"
        );
    }

    #[test]
    fn a_summary_of_many_step_changes_stays_bounded() {
        let mut before = definition(BASE);
        let mut after = before.clone();
        for i in 0..100 {
            before
                .steps
                .insert(format!("s{i:03}"), before.steps["read"].clone());
        }
        after.description = "other".into();
        let summary = describe_version(Some(&before), &after);
        assert!(
            summary.starts_with("description changed; step `s000` removed"),
            "{summary}"
        );
        assert!(summary.ends_with("92 more step changes"), "{summary}");
        assert!(summary.len() < 300, "{summary}");
    }

    fn writer(node: &str) -> Writer {
        Writer {
            node: node.into(),
            control: true,
            signer: None,
            mesh_id: String::new(),
            trust: crate::security::trust::Trust::empty(),
        }
    }

    fn store(node: &str) -> Store {
        Store::open_in_memory(crdt_store::StoreConfig::new("mesh", node)).unwrap()
    }

    fn apply(store: &mut Store, yaml: &str, node: &str) -> WorkflowDoc {
        crate::cli::commands::apply_workflow(store, definition(yaml), &writer(node)).unwrap()
    }

    fn refusal(result: Result<WorkflowDoc>) -> String {
        let err = result.unwrap_err();
        assert!(
            err.chain().any(|c| c.is::<Refused>()),
            "not a refusal: {err:#}"
        );
        format!("{err:#}")
    }

    #[test]
    fn rollback_and_delete_write_new_versions_and_refuse_by_name() {
        let mut s = store("node-a");
        let name = DocName::workflow("w").unwrap();
        let one = apply(&mut s, BASE, "node-a");
        apply(&mut s, &BASE.replace("every: 1s", "every: 5s"), "node-a");
        let w = writer("node-a");

        let back = rollback(&mut s, "w", 1, None, &w).unwrap();
        assert_eq!((back.version, back.rollback_of), (3, 1));
        assert_eq!(back.content(), one.content());
        assert!(
            refusal(rollback(&mut s, "w", 1, None, &w)).contains("already current (as version 3)")
        );
        assert!(refusal(rollback(&mut s, "w", 3, None, &w)).ends_with("is already current"));
        assert!(
            refusal(rollback(&mut s, "w", 7, None, &w))
                .contains("has no version 7: its versions are 1 to 3")
        );
        assert!(
            refusal(rollback(&mut s, "w", 2, Some("node-b"), &w))
                .contains("no version 2 written by node-b")
        );
        assert!(refusal(rollback(&mut s, "nope", 1, None, &w)).contains("no workflow `nope`"));
        assert!(refusal(delete(&mut s, "nope", &w)).contains("no workflow `nope`"));

        let tombstone = delete(&mut s, "w", &w).unwrap();
        assert!(tombstone.deleted && tombstone.steps.is_empty());
        assert_eq!(tombstone.version, 4);
        assert!(
            refusal(delete(&mut s, "w", &w))
                .contains("already deleted (workflow `w` was deleted (version 4, by node-a")
        );
        assert!(refusal(rollback(&mut s, "w", 4, None, &w)).contains("is its deletion"));
        // Deleted: not listed, not run, shown as deleted with the version to bring back.
        assert!(
            crate::run::workflow::list(&mut s, false)
                .unwrap()
                .is_empty()
        );
        let all = crate::run::workflow::list(&mut s, true).unwrap();
        assert_eq!(all[0].state, "deleted");
        let stored = crate::run::workflow::stored_one(&mut s, &name)
            .unwrap()
            .unwrap();
        assert!(
            stored
                .blocked
                .unwrap()
                .contains("was deleted (version 4, by node-a")
        );
        let shown = crate::run::workflow::view(&mut s, &name).unwrap();
        assert_eq!(
            (shown.state.as_str(), shown.restorable),
            ("deleted", Some(3))
        );

        // A rollback brings it back, above the tombstone.
        let again = rollback(&mut s, "w", 2, None, &w).unwrap();
        assert_eq!(again.version, 5);
        assert_eq!(
            crate::run::workflow::list(&mut s, false).unwrap()[0].state,
            "ok"
        );
        let listed = history(&mut s, &name, 100).unwrap();
        let summaries: Vec<(u64, &str)> = listed
            .versions
            .iter()
            .map(|v| (v.version, v.summary.as_str()))
            .collect();
        assert_eq!(
            summaries,
            [
                (5, "rolled back to v2 after the deletion in v4"),
                (4, "deleted"),
                (3, "rolled back to v1: trigger every 5s → every 1s"),
                (2, "trigger every 1s → every 5s"),
                (1, "first version"),
            ]
        );
        assert!(listed.versions[0].current && listed.versions.iter().skip(1).all(|v| !v.current));
        assert_eq!(listed.versions[2].rollback_of, Some(1));
        let newest_two = history(&mut s, &name, 2).unwrap();
        assert_eq!((newest_two.total, newest_two.versions.len()), (5, 2));
    }

    /// Write rules that take versions by `node-a` only.
    #[derive(Debug)]
    struct OnlyNodeA;

    impl crdt_store::WriteRules for OnlyNodeA {
        fn check_workflow_version(
            &self,
            version: &WorkflowDoc,
            _: &MeshRegistry,
        ) -> Result<(), String> {
            if version.updated_by == "node-a" {
                Ok(())
            } else {
                Err("only node-a writes here".into())
            }
        }
    }

    #[test]
    fn versions_applied_apart_are_listed_as_concurrent_and_a_rollback_names_its_writer() {
        use crdt_store::automerge::AutoCommit;
        let (mut a, mut b) = (store("node-a"), store("node-b"));
        let name = DocName::workflow("w").unwrap();
        // Copies every change of the workflow document from one store into the other.
        let copy = |from: &mut Store, to: &mut Store| {
            let id = from.document_id(&name);
            let mut doc: AutoCommit = from.automerge(&id).unwrap();
            let tasks = doc
                .get_changes(&[])
                .into_iter()
                .map(|c| crdt_store::samod_core::io::StorageTask::Put {
                    key: crdt_store::samod_core::StorageKey::incremental_path(&id, c.hash()),
                    value: c.raw_bytes().to_vec(),
                })
                .collect();
            to.execute(tasks).unwrap();
            to.remember_name(&id, &name).unwrap();
        };
        apply(&mut a, BASE, "node-a");
        copy(&mut a, &mut b);
        apply(&mut a, &BASE.replace("seed: 1", "seed: 2"), "node-a");
        apply(&mut b, &BASE.replace("every: 1s", "every: 9s"), "node-b");
        copy(&mut b, &mut a);
        let mut registry = MeshRegistry::default();
        registry.nodes.insert(
            "node-b".into(),
            crdt_store::NodeEntry {
                name: "bee".into(),
                ..crdt_store::NodeEntry::default()
            },
        );
        let id = a.document_id(&name);
        let mut doc = a.automerge(&id).unwrap();
        let read = DefinitionHistory::read(&mut doc);
        let standing: WorkflowVersions = a.read(&name).unwrap();
        let listed = view_of(&read, &standing, &registry, None, "w", 10);
        let rows: Vec<(u64, &str, Vec<u64>)> = listed
            .versions
            .iter()
            .map(|v| {
                (
                    v.version,
                    v.author.as_str(),
                    v.concurrent_with.iter().map(|c| c.version).collect(),
                )
            })
            .collect();
        let both = [rows[0].1, rows[1].1];
        assert!(
            both.contains(&"node-a") && both.contains(&"node-b"),
            "{rows:?}"
        );
        assert_eq!(rows[0].2, [2]);
        assert_eq!(rows[1].2, [2]);
        assert_eq!(rows[2], (1, "node-a", vec![]));
        let by_b = listed
            .versions
            .iter()
            .find(|v| v.author == "node-b")
            .unwrap();
        assert_eq!(by_b.author_name.as_deref(), Some("bee"));
        assert_eq!(by_b.summary, "trigger every 1s → every 9s");
        // last_write: one of the two is current, the other not.
        assert_eq!(listed.versions.iter().filter(|v| v.current).count(), 1);
        assert!(listed.versions.iter().all(|v| v.refused.is_none()));
        // Each version is checked by the write rules, whether it ever stood here or not.
        let checked = view_of(&read, &standing, &registry, Some(&OnlyNodeA), "w", 10);
        let refused: Vec<(&str, Option<&str>)> = checked
            .versions
            .iter()
            .map(|v| (v.author.as_str(), v.refused.as_deref()))
            .filter(|(_, why)| why.is_some())
            .collect();
        assert_eq!(refused, [("node-b", Some("only node-a writes here"))]);

        // Version 2 means two definitions: the writer must be named.
        let w = writer("node-a");
        assert!(refusal(rollback(&mut a, "w", 2, None, &w)).contains("written concurrently by"));
        let current = match standing.resolve() {
            Resolution::Resolved(v) => v.updated_by.clone(),
            _ => unreachable!("last_write resolves"),
        };
        let other = if current == "node-a" {
            "node-b"
        } else {
            "node-a"
        };
        let back = rollback(&mut a, "w", 2, Some(other), &w).unwrap();
        assert_eq!(back.version, 3);
        let newest = &history(&mut a, &name, 1).unwrap().versions[0];
        assert!(
            newest.summary.starts_with("rolled back to v2")
                && newest.summary.contains("replaces concurrent v2 by node-"),
            "{}",
            newest.summary
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]

        /// Whatever is edited, the summary says "no change" exactly when the content is the
        /// same, and names every step that changed and no other.
        #[test]
        fn a_summary_names_exactly_what_was_edited(
            edits in proptest::collection::vec((0usize..12, 0u8..6), 0..10)
        ) {
            let before = definition(BASE);
            let mut after = before.clone();
            for (step, edit) in &edits {
                let name = format!("s{step}");
                match edit {
                    0 => after.description = format!("edited {step}"),
                    1 => after.trigger = format!("every {}s", step + 1),
                    2 => { after.steps.remove(&name); }
                    _ => {
                        let def = after.steps.entry(name).or_insert_with(|| before.steps["read"].clone());
                        match edit {
                            3 => def.config = format!("{{\"seed\": {step}}}"),
                            4 => def.retries = u32::from(*edit),
                            _ => def.agent = "noop".into(),
                        }
                    }
                }
            }
            let summary = describe_version(Some(&before), &after);
            proptest::prop_assert_eq!(
                summary == "no change to the definition",
                before.content() == after.content(),
                "{}", summary
            );
            let names: std::collections::BTreeSet<&String> =
                before.steps.keys().chain(after.steps.keys()).collect();
            let changed = names
                .iter()
                .filter(|n| before.steps.get(**n) != after.steps.get(**n))
                .count();
            if changed <= MAX_STEPS_NAMED {
                for name in names {
                    let named = summary.contains(&format!("step `{name}` "));
                    let differs = before.steps.get(name) != after.steps.get(name);
                    proptest::prop_assert_eq!(named, differs, "{}: {}", name, summary);
                }
            }
        }
    }

    #[test]
    fn known_versions_read_as_a_range_or_a_list() {
        let history = |numbers: &[u64]| DefinitionHistory {
            writes: numbers
                .iter()
                .map(|&v| crdt_store::docs::history::DefinitionWrite {
                    change: crdt_store::automerge::ChangeHash([v as u8; 32]),
                    time_ms: 0,
                    definition: Ok(WorkflowDoc {
                        version: v,
                        ..WorkflowDoc::default()
                    }),
                    replaces: Vec::new(),
                })
                .collect(),
        };
        assert_eq!(known_versions(&history(&[1, 2, 3, 3])), "1 to 3");
        assert_eq!(known_versions(&history(&[5, 1, 2])), "1, 2 and 5");
        assert_eq!(known_versions(&history(&[4])), "4");
    }
}
