//! Rollups: what a zone's aggregator writes from the results documents of the zone's nodes, one
//! `rollup/<zone>/<window>` document per window, one summary per (workflow, node). Raw results
//! stay at the site; rollups travel up the aggregator chain to the cloud.

use std::collections::{BTreeMap, BTreeSet};

use super::Store;
use crate::docs::{ResultsDoc, RollupDoc, RunRecord, RunStatus, RunSummary};
use crate::error::Result;
use crate::names::{DocKind, DocName, Window};

/// The summary of a set of runs of one workflow by one node.
pub fn summarize<'a>(records: impl IntoIterator<Item = &'a RunRecord>) -> Option<RunSummary> {
    let mut summary: Option<RunSummary> = None;
    for record in records {
        let s = summary.get_or_insert_with(|| RunSummary {
            workflow: record.workflow.clone(),
            source: record.node.clone(),
            ..RunSummary::default()
        });
        let took = (record.finished_ms - record.started_ms).max(0) as u64;
        s.runs += 1;
        if record.status != RunStatus::Succeeded {
            s.failures += 1;
        }
        s.total_ms += took;
        s.max_ms = s.max_ms.max(took);
        // The latest run by end time; ties go to the larger run id so every node agrees.
        let later = (record.finished_ms, &record.run_id) > (s.last_finished_ms, &s.last_run_id);
        if s.runs == 1 || later {
            s.last_status = record.status;
            s.last_finished_ms = record.finished_ms;
            s.last_output = record.output.clone();
            s.last_run_id = record.run_id.clone();
        }
    }
    summary
}

/// The fleet as the rollups held here describe it: per zone, per workflow.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FleetView {
    /// Zones with rollups, by zone path.
    pub zones: Vec<ZoneView>,
    /// Runs over every zone.
    pub runs: u64,
    /// Failed runs over every zone.
    pub failures: u64,
    /// Nodes that ran something.
    pub nodes: usize,
}

/// One zone of the fleet view.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ZoneView {
    /// The zone path (`` is the root).
    pub zone: String,
    /// Windows covered, oldest first.
    pub windows: Vec<String>,
    /// Nodes of the zone that ran something.
    pub nodes: Vec<String>,
    /// Per workflow.
    pub workflows: Vec<WorkflowView>,
    /// The node answering no longer receives this zone's rollups: it aggregated the zone
    /// before a hand-over, and the figures are as they were then. Set by a running node,
    /// which knows what it aggregates; the store alone cannot tell.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stale: bool,
    /// The zone is split (its members do not reach each other): the nodes, by id, that each
    /// aggregate a part of it. The figures cover every part. Set by a running node from its
    /// election, like `stale`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub split: Vec<String>,
}

/// One workflow within a zone.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WorkflowView {
    /// The workflow.
    pub workflow: String,
    /// Nodes that ran it.
    pub nodes: usize,
    /// Runs.
    pub runs: u64,
    /// Runs that did not succeed.
    pub failures: u64,
    /// Mean run duration, milliseconds.
    pub mean_ms: u64,
    /// Longest run, milliseconds.
    pub max_ms: u64,
    /// Status of the latest run.
    pub last_status: RunStatus,
    /// End of the latest run.
    pub last_finished_ms: i64,
    /// The node of the latest run.
    pub last_node: String,
    /// Output of the latest run, JSON text.
    pub last_output: String,
}

impl Store {
    /// The fleet view from every rollup held here whose window ends after `since_ms`.
    pub fn fleet(&mut self, since_ms: Option<i64>) -> Result<FleetView> {
        // Per zone: the windows seen, and every summary by workflow.
        type Gathered = (BTreeSet<String>, BTreeMap<String, Vec<RunSummary>>);
        let mut zones: BTreeMap<String, Gathered> = BTreeMap::new();
        for (name, _) in self.windowed_docs(DocKind::Rollup)? {
            let Some(window) = name.window() else {
                continue;
            };
            if since_ms.is_some_and(|since| window.end_ms() <= since) {
                continue;
            }
            let rollup: RollupDoc = self.read(&name)?;
            let zone = name.rollup_zone().unwrap_or_default();
            let (windows, workflows) = zones.entry(zone).or_default();
            windows.insert(window.to_string());
            for summary in rollup.summaries.into_values() {
                workflows
                    .entry(summary.workflow.clone())
                    .or_default()
                    .push(summary);
            }
        }
        let mut view = FleetView::default();
        let mut all_nodes = BTreeSet::new();
        for (zone, (windows, workflows)) in zones {
            let mut zone_view = ZoneView {
                zone,
                windows: windows.into_iter().collect(),
                ..ZoneView::default()
            };
            let mut zone_nodes = BTreeSet::new();
            for (workflow, summaries) in workflows {
                let mut w = WorkflowView {
                    workflow,
                    ..WorkflowView::default()
                };
                let mut nodes = BTreeSet::new();
                let mut total_ms = 0;
                let mut latest: (i64, &str) = (i64::MIN, "");
                for s in &summaries {
                    nodes.insert(s.source.clone());
                    w.runs += s.runs;
                    w.failures += s.failures;
                    total_ms += s.total_ms;
                    w.max_ms = w.max_ms.max(s.max_ms);
                    if (s.last_finished_ms, s.last_run_id.as_str()) > latest {
                        latest = (s.last_finished_ms, s.last_run_id.as_str());
                        w.last_status = s.last_status;
                        w.last_finished_ms = s.last_finished_ms;
                        w.last_output = s.last_output.clone();
                        w.last_node = s.source.clone();
                    }
                }
                w.mean_ms = total_ms.checked_div(w.runs).unwrap_or(0);
                w.nodes = nodes.len();
                view.runs += w.runs;
                view.failures += w.failures;
                zone_nodes.extend(nodes);
                zone_view.workflows.push(w);
            }
            all_nodes.extend(zone_nodes.iter().cloned());
            zone_view.nodes = zone_nodes.into_iter().collect();
            view.zones.push(zone_view);
        }
        view.nodes = all_nodes.len();
        Ok(view)
    }

    /// Writes the rollups of `zone` from the results documents held here of the nodes in
    /// `members`: every window when `windows` is `None`, else only those. A window without any
    /// results gets no rollup. Returns the rollup documents that changed.
    pub fn roll_up(
        &mut self,
        zone: &str,
        members: &BTreeSet<String>,
        windows: Option<&BTreeSet<Window>>,
    ) -> Result<Vec<DocName>> {
        // Acknowledged results still in the log count too.
        self.apply_pending(usize::MAX)?;
        let mut by_window: BTreeMap<Window, BTreeMap<String, RunSummary>> = BTreeMap::new();
        for (name, _) in self.windowed_docs(DocKind::Results)? {
            let DocName::Results { node, window } = &name else {
                continue;
            };
            if !members.contains(node) || windows.is_some_and(|w| !w.contains(window)) {
                continue;
            }
            let results: ResultsDoc = self.read(&name)?;
            let mut by_workflow: BTreeMap<&str, Vec<&RunRecord>> = BTreeMap::new();
            for record in results.runs.values() {
                by_workflow
                    .entry(&record.workflow)
                    .or_default()
                    .push(record);
            }
            let summaries = by_window.entry(*window).or_default();
            for (workflow, records) in by_workflow {
                if let Some(summary) = summarize(records) {
                    summaries.insert(format!("{workflow}/{node}"), summary);
                }
            }
        }
        let mut changed = Vec::new();
        for (window, summaries) in by_window {
            if summaries.is_empty() {
                continue;
            }
            let name = DocName::rollup(zone, window)?;
            let id = self.document_id(&name);
            let before = self.heads(&id)?;
            self.update::<RollupDoc, _>(&name, |rollup| {
                // Summaries of nodes that left the zone stay: they describe runs that happened
                // in it. Each summary is recomputed whole from its node's results.
                rollup.summaries.extend(summaries);
            })?;
            if self.heads(&id)? != before {
                changed.push(name);
            }
        }
        Ok(changed)
    }
}
