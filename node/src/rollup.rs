//! The rollup writer of a running node: while the node aggregates zones, it keeps their
//! `rollup/<zone>/<window>` documents up to date from the results documents of the zones' nodes
//! (which reach it through sync), and sync carries the rollups up the aggregator chain.
//!
//! A window is redone when a results document of it changes, and also when its rollup changes
//! by sync: after a re-election the new aggregator's summaries and the old one's meet at the
//! parent, and a concurrent write of the same summary may keep the old value; redoing the
//! window writes the current one again, causally after, so it wins. Summaries of nodes whose
//! results this node does not hold are left as they are.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use crdt_store::{DocName, MeshRegistry, StoreHandle, Window};
use mesh::proto::election::Hierarchy;
use tokio::sync::watch;

use crate::sync::ChangeFeed;

/// Least time between two passes: results fold into documents in batches, and one pass covers
/// every window that changed meanwhile.
const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// Runs until the node stops. `view` is the election's view at start.
pub async fn run(
    me: String,
    store: StoreHandle,
    changes: Arc<ChangeFeed>,
    mut view: Hierarchy,
    mut hierarchy: watch::Receiver<Option<Hierarchy>>,
) {
    // Windows to redo per zone; `None` means every window (a zone newly aggregated here).
    let mut todo: BTreeMap<String, Option<BTreeSet<Window>>> = view
        .aggregates
        .iter()
        .map(|zone| (zone.clone(), None))
        .collect();
    loop {
        if !todo.is_empty() {
            let me = me.clone();
            let work = std::mem::take(&mut todo);
            let outcome = store
                .call(move |s| {
                    let registry: MeshRegistry = s.read(&DocName::Mesh)?;
                    let mut written = 0;
                    for (zone, windows) in work {
                        let mut members: BTreeSet<String> = registry
                            .nodes
                            .iter()
                            .filter(|(_, entry)| entry.zone == zone)
                            .map(|(node, _)| node.clone())
                            .collect();
                        if registry.nodes.get(&me).is_none_or(|e| e.zone == zone) {
                            members.insert(me.clone());
                        }
                        written += s.roll_up(&zone, &members, windows.as_ref())?.len();
                    }
                    Ok(written)
                })
                .recv()
                .await;
            match outcome {
                Ok(0) => {}
                Ok(written) => tracing::debug!(written, "rollups updated"),
                Err(e) => tracing::warn!(error = %e, "writing rollups failed"),
            }
            tokio::time::sleep(MIN_INTERVAL).await;
        }
        tokio::select! {
            names = changes.results_changed() => {
                let windows: BTreeSet<Window> = names
                    .iter()
                    .filter_map(|n| n.parse::<DocName>().ok())
                    .filter_map(|n| n.window())
                    .collect();
                for zone in &view.aggregates {
                    if let Some(Some(pending)) = todo.get_mut(zone) {
                        pending.extend(windows.iter().copied());
                    } else if !todo.contains_key(zone) {
                        todo.insert(zone.clone(), Some(windows.clone()));
                    }
                }
            }
            changed = hierarchy.changed() => {
                if changed.is_err() {
                    return;
                }
                let Some(latest) = hierarchy.borrow_and_update().clone() else {
                    continue;
                };
                for zone in &latest.aggregates {
                    if !view.aggregates.contains(zone) {
                        todo.insert(zone.clone(), None);
                    }
                }
                view = latest;
            }
        }
    }
}
