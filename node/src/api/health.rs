//! What `GET /health` answers: every check, built-in and configured, and what they amount to.

use crate::api::{AppState, HEALTH_PATIENCE, Health, registry};
use crate::ops::health::{CheckResult, CheckStatus, SYNC_BEHIND_AFTER, overall};

/// Runs the built-in checks, takes the latest outcome of the configured ones, and sums them up.
pub async fn assess(state: &AppState) -> Health {
    let mut health = state.health.clone();
    health.uptime_ms = state.started.elapsed().as_millis() as u64;
    let mut checks = Vec::new();

    let store =
        crate::ops::durability::store_health(&state.store, &state.data_dir, HEALTH_PATIENCE).await;
    let problems = store.problems();
    checks.push(match &store.failing {
        Some(_) => CheckResult::failing("store", problems.join("; ")).critical(),
        None if !problems.is_empty() => CheckResult::failing("store", problems.join("; ")),
        None => CheckResult::ok("store"),
    });
    for warning in store.warnings() {
        checks.push(CheckResult::warning("store_key", warning));
    }
    health.store = Some(store);

    let renewal = state.renewal.lock().expect("renewal state").clone();
    let ends = crdt_store::format_timestamp(renewal.not_after * 1000);
    checks.push(
        if renewal.not_after != 0 && renewal.not_after <= crate::node::now_ms() / 1000 {
            CheckResult::failing(
                "certificate",
                format!(
                    "this node's certificate expired at {ends}: its peers refuse it; join again \
                     with a token (`rhizome join`)"
                ),
            )
        } else if let Some(why) = &renewal.failing {
            CheckResult::warning(
                "certificate",
                format!("this node's certificate ends at {ends} and renewing it failed: {why}"),
            )
        } else {
            CheckResult::ok("certificate")
        },
    );

    checks.push(crate::ops::health::clock(
        state.started,
        state.started_wall_ms,
    ));

    if let Ok(hierarchy) = state.mesh.hierarchy().await {
        let registry = registry(state).await;
        let name_of = |id: &str| registry.nodes.get(id).map(|e| e.name.clone());
        let named = |id: &str| match name_of(id) {
            Some(name) => format!("{name} ({})", &id[..12.min(id.len())]),
            None => id.to_owned(),
        };
        let zone = crate::fleet::hierarchy::zone_label(&hierarchy.zone);
        let aggregator = hierarchy
            .chain
            .first()
            .and_then(|(_, aggregator)| aggregator.clone());
        checks.push(match aggregator {
            None => {
                CheckResult::warning("aggregator", format!("zone {zone} has no aggregator yet"))
            }
            Some(id) if id == state.health.node_id => CheckResult::ok("aggregator"),
            Some(id) => {
                let connected = state.mesh.peers().await.is_ok_and(|peers| {
                    peers.iter().any(|p| {
                        p.node == id && p.state == mesh::proto::membership::PeerState::Connected
                    })
                });
                if connected {
                    CheckResult::ok("aggregator")
                } else {
                    CheckResult::failing(
                        "aggregator",
                        format!(
                            "the aggregator of zone {zone}, {}, is not connected: results wait \
                             here until it or another is",
                            named(&id)
                        ),
                    )
                }
            }
        });
        for (zone, claimants) in &hierarchy.split {
            checks.push(CheckResult::warning(
                "zones",
                crate::fleet::hierarchy::describe_split(zone, claimants, name_of),
            ));
        }
        let behind = state.sync_watch.behind(SYNC_BEHIND_AFTER);
        checks.push(if behind.is_empty() {
            CheckResult::ok("sync")
        } else {
            CheckResult::failing(
                "sync",
                behind
                    .iter()
                    .map(|(peer, n, since)| {
                        format!(
                            "{n} document(s) pending with {} for {} s (`rhizome explain peer` \
                             says why)",
                            named(peer),
                            since.as_secs()
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        });
    }
    checks.extend(state.user_checks.results());

    health.problems = reasons(&checks, CheckStatus::Failing);
    health.warnings = reasons(&checks, CheckStatus::Warning);
    health.status = overall(&checks).into();
    health.checks = checks;
    health
}

fn reasons(checks: &[CheckResult], status: CheckStatus) -> Vec<String> {
    checks
        .iter()
        .filter(|c| c.status == status)
        .map(|c| match &c.reason {
            Some(reason) if c.name.starts_with("store") || is_builtin(&c.name) => reason.clone(),
            Some(reason) => format!("check {}: {reason}", c.name),
            None => format!("check {}", c.name),
        })
        .collect()
}

/// Built-in checks speak in whole sentences; a configured one is named.
fn is_builtin(name: &str) -> bool {
    matches!(
        name,
        "store" | "store_key" | "certificate" | "clock" | "aggregator" | "zones" | "sync"
    )
}
