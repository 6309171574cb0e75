//! Reading what changed in a results document since earlier heads.
//!
//! A results window grows by every run its node records (an hour at a run every 200 ms is
//! 18,000 records), and a reader that follows it (the export) would otherwise decode the
//! whole window at every change: the cost of one pass then grows with the window, not with
//! what is new. Automerge keeps the history, so the records touched between two sets of heads
//! are found by a diff of the `runs` map, and only those are decoded.

use automerge::{AutoCommit, ChangeHash, ObjType, Prop, ReadDoc, Value};

use super::Store;
use crate::docs::{self, ResultsDoc, RunRecord};
use crate::error::{Result, StoreError};
use crate::names::DocName;

/// The records of a results document that changed between two sets of heads.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultsSince {
    /// The document's heads the records were read at.
    pub heads: Vec<ChangeHash>,
    /// Every record of the document (the earlier heads were empty or not all in its history),
    /// or only those added or changed since them.
    pub whole: bool,
    /// The records read, in run-id order.
    pub runs: Vec<RunRecord>,
    /// How many records the document holds at `heads`.
    pub total: usize,
}

impl Store {
    /// The records of the results document `name` added or changed since `since` (heads
    /// this store gave earlier), or all of them when `since` is empty or names a change
    /// the document does not have (it was retired and begun again, or the heads came from
    /// elsewhere). A document never written reads as empty.
    pub fn results_since(&mut self, name: &DocName, since: &[ChangeHash]) -> Result<ResultsSince> {
        let id = self.document_id(name);
        let label = name.to_string();
        let read = self.with_stored_mut(&id, &label, |doc| changed_runs(name, doc, since))?;
        read.unwrap_or_else(|| {
            Ok(ResultsSince {
                heads: Vec::new(),
                whole: true,
                runs: Vec::new(),
                total: 0,
            })
        })
    }
}

fn changed_runs(
    name: &DocName,
    doc: &mut AutoCommit,
    since: &[ChangeHash],
) -> Result<ResultsSince> {
    let heads = doc.get_heads();
    let known = !since.is_empty() && since.iter().all(|h| doc.get_change_by_hash(h).is_some());
    if !known {
        let whole: ResultsDoc = docs::hydrate(name, doc)?;
        return Ok(ResultsSince {
            heads,
            whole: true,
            total: whole.runs.len(),
            runs: whole.runs.into_values().collect(),
        });
    }
    let shape = |reason: String| StoreError::Shape {
        doc: name.to_string(),
        kind: "results",
        reason,
    };
    let runs_map = match doc.get(automerge::ROOT, "runs") {
        Ok(Some((Value::Object(ObjType::Map), runs))) => runs,
        _ => return Err(shape("the root has no `runs` map".into())),
    };
    let total = doc.length(&runs_map);
    if since == heads.as_slice() {
        return Ok(ResultsSince {
            heads,
            whole: false,
            runs: Vec::new(),
            total,
        });
    }
    // Recursive: a record rewritten in place (the same run folded again) changes below its
    // key, not at it.
    let patches = doc
        .diff_obj(&runs_map, since, &heads, true)
        .map_err(|e| shape(e.to_string()))?;
    let mut touched: Vec<String> = patches
        .iter()
        .filter_map(|patch| {
            if patch.obj == runs_map {
                return match &patch.action {
                    automerge::PatchAction::PutMap { key, .. } => Some(key.clone()),
                    _ => None,
                };
            }
            // Below a record: the path runs root → `runs` → the record's key → ...
            patch
                .path
                .iter()
                .position(|(obj, _)| *obj == runs_map)
                .and_then(|at| match &patch.path[at].1 {
                    Prop::Map(key) => Some(key.clone()),
                    Prop::Seq(_) => None,
                })
        })
        .collect();
    touched.sort();
    touched.dedup();
    let mut runs = Vec::with_capacity(touched.len());
    for key in touched {
        // A key deleted since (records are never deleted, but a peer may send anything)
        // has nothing to read.
        let record: Option<RunRecord> = autosurgeon::hydrate_prop(doc, &runs_map, key.as_str())
            .map_err(|e| shape(format!("run `{key}`: {e}")))?;
        runs.extend(record);
    }
    Ok(ResultsSince {
        heads,
        whole: false,
        runs,
        total,
    })
}
