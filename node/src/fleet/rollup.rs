//! The rollup writer of a running node: while the node aggregates zones, it keeps their
//! `rollup/<zone>/<window>` documents up to date from the results documents of the zones' nodes
//! (which reach it through sync), and sync carries the rollups up the aggregator chain.
//!
//! A window is redone when a results document of it changes, and also when its rollup changes
//! by sync: after a re-election the new aggregator's summaries and the old one's meet at the
//! parent, and a concurrent write of the same summary may keep the old value; redoing the
//! window writes the current one again, causally after, so it wins. Summaries of nodes whose
//! results this node does not hold are left as they are.
//!
//! With `sync.results_to = "cloud"` raw results go straight to the root's aggregator, so that
//! node writes the rollups of every zone and the other aggregators write none.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use crdt_store::{DocName, MeshRegistry, Store, StoreHandle, Window};
use mesh::proto::election::Hierarchy;
use tokio::sync::watch;

use crate::fleet::sync::ChangeFeed;

/// Least time between two passes: results fold into documents in batches, and one pass covers
/// every window that changed meanwhile.
const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// What the next pass must redo.
#[derive(Debug, Default)]
struct Pending {
    /// Windows whose results or rollups changed.
    windows: BTreeSet<Window>,
    /// Zones this node has just started to aggregate: every window of theirs.
    new_zones: BTreeSet<String>,
}

/// Runs until the node stops. `view` is the election's view at start.
pub async fn run(
    me: String,
    results_to_cloud: bool,
    store: StoreHandle,
    changes: Arc<ChangeFeed>,
    mut view: Hierarchy,
    mut hierarchy: watch::Receiver<Option<Hierarchy>>,
) {
    let mut pending = Pending {
        new_zones: view.aggregates.iter().cloned().collect(),
        ..Pending::default()
    };
    loop {
        if !pending.windows.is_empty() || !pending.new_zones.is_empty() {
            let (me, aggregates) = (me.clone(), view.aggregates.clone());
            let work = std::mem::take(&mut pending);
            let outcome = store
                .call(move |s| pass(s, &me, &aggregates, results_to_cloud, &work))
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
                pending.windows.extend(
                    names
                        .iter()
                        .filter_map(|n| n.parse::<DocName>().ok())
                        .filter_map(|n| n.window()),
                );
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
                        pending.new_zones.insert(zone.clone());
                    }
                }
                view = latest;
            }
        }
    }
}

/// One pass on the store thread; returns how many rollups changed.
fn pass(
    store: &mut Store,
    me: &str,
    aggregates: &[String],
    results_to_cloud: bool,
    work: &Pending,
) -> crdt_store::Result<usize> {
    let registry: MeshRegistry = store.read(&DocName::Mesh)?;
    let zone_of = |node: &str| registry.nodes.get(node).map(|e| e.zone.as_str());
    let zones: BTreeSet<String> = if results_to_cloud {
        if aggregates.iter().any(|z| z.is_empty()) {
            registry.nodes.values().map(|e| e.zone.clone()).collect()
        } else {
            BTreeSet::new()
        }
    } else {
        aggregates.iter().cloned().collect()
    };
    let mut written = 0;
    for zone in zones {
        let mut members: BTreeSet<String> = registry
            .nodes
            .iter()
            .filter(|(_, entry)| entry.zone == zone)
            .map(|(node, _)| node.clone())
            .collect();
        // Before its registry entry has arrived, this node is a member of its own zone, the
        // first it aggregates.
        if zone_of(me).is_none() && aggregates.first() == Some(&zone) {
            members.insert(me.to_owned());
        }
        let everything = work.new_zones.contains(&zone)
            || (results_to_cloud && work.new_zones.iter().any(|z| z.is_empty()));
        let windows = (!everything).then_some(&work.windows);
        written += store.roll_up(&zone, &members, windows)?.len();
    }
    Ok(written)
}
