//! `GET /metrics` (monitor): the node's state and counts in the Prometheus text format (see
//! [`crate::ops::metrics`] for what is counted where, and how labels stay bounded).

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use mesh::proto::membership::PeerState;

use crate::api::AppState;
use crate::ops::metrics::{Exposition, events};

/// The content type of the text exposition format.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub async fn get_metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let mut out = Exposition::default();
    out.gauge(
        "rhizome_build_info",
        "The running build: always 1, its version as a label.",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1.0,
    );
    out.gauge(
        "rhizome_start_time_seconds",
        "When the node started, in seconds since the epoch.",
        &[],
        (crate::node::now_ms() as f64 - state.started.elapsed().as_millis() as f64) / 1000.0,
    );
    store(&state, &mut out).await;
    mesh(&state, &mut out).await;
    workflows(&state, &mut out).await;
    for (kind, count) in state.audit.view().counts {
        out.counter(
            "rhizome_security_events_total",
            "Security events since the node started, by kind (see `status --security`).",
            &[("kind", &kind)],
            count as f64,
        );
    }
    if let Some(sample) = state.monitor.as_ref().and_then(|m| m.latest()) {
        host(&sample, &mut out);
    }
    // Rules are few and named by people, and the family is bounded like the others.
    for (rule, firing) in state
        .alerts
        .firing_by_rule()
        .into_iter()
        .take(crate::ops::metrics::MAX_SERIES)
    {
        out.gauge(
            "rhizome_alerts_firing",
            "Alerts firing on this node now, by rule (every rule in force, 0 when quiet).",
            &[("rule", &rule)],
            firing as f64,
        );
    }
    crate::export::expose(&state.export.status(), &mut out);
    events().expose(&mut out);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        out.render(),
    )
}

/// The process and host figures of the resource monitor's latest sample. A figure the host
/// lacks (a temperature sensor, a battery) is left out, not written as zero.
fn host(s: &crate::ops::monitor::Sample, out: &mut Exposition) {
    out.gauge(
        "process_resident_memory_bytes",
        "Resident memory size in bytes.",
        &[],
        s.process_resident_bytes as f64,
    );
    out.counter(
        "process_cpu_seconds_total",
        "Total user and system CPU time spent in seconds.",
        &[],
        s.process_cpu_seconds,
    );
    out.gauge(
        "process_open_fds",
        "Number of open file descriptors.",
        &[],
        s.process_open_fds as f64,
    );
    out.gauge(
        "process_threads",
        "Number of OS threads in the process.",
        &[],
        s.process_threads as f64,
    );
    out.gauge(
        "process_start_time_seconds",
        "Start time of the process since unix epoch in seconds.",
        &[],
        s.process_start_time_seconds,
    );
    out.gauge(
        "rhizome_host_cpu_usage_ratio",
        "Share of the host's CPU time in use (0 to 1), over the monitor's last interval.",
        &[],
        f64::from(s.cpu_percent) / 100.0,
    );
    for (window, load) in [("1m", s.load1), ("5m", s.load5), ("15m", s.load15)] {
        out.gauge(
            "rhizome_host_load",
            "The host's load average, by window.",
            &[("window", window)],
            load,
        );
    }
    for (name, help, v) in [
        (
            "rhizome_host_memory_total_bytes",
            "The host's memory.",
            s.memory_total_bytes,
        ),
        (
            "rhizome_host_memory_used_bytes",
            "The host's memory in use (total less available).",
            s.memory_used_bytes,
        ),
        (
            "rhizome_host_memory_available_bytes",
            "The host's memory available to new work.",
            s.memory_available_bytes,
        ),
        (
            "rhizome_host_filesystem_size_bytes",
            "Size of the filesystem the data dir is on.",
            s.disk_total_bytes,
        ),
        (
            "rhizome_host_filesystem_free_bytes",
            "Free space on the filesystem the data dir is on.",
            s.disk_free_bytes,
        ),
    ] {
        out.gauge(name, help, &[], v as f64);
    }
    out.counter(
        "rhizome_host_network_received_bytes_total",
        "Bytes received on the host's interfaces other than loopback, since boot.",
        &[],
        s.net_received_bytes as f64,
    );
    out.counter(
        "rhizome_host_network_sent_bytes_total",
        "Bytes sent on the host's interfaces other than loopback, since boot.",
        &[],
        s.net_sent_bytes as f64,
    );
    if let Some(t) = s.temperature_celsius {
        out.gauge(
            "rhizome_host_temperature_celsius",
            "The host's hottest temperature sensor.",
            &[],
            f64::from(t),
        );
    }
    if let Some(b) = s.battery_percent {
        out.gauge(
            "rhizome_host_battery_ratio",
            "The host's battery charge (0 to 1).",
            &[],
            f64::from(b) / 100.0,
        );
    }
    if let Some(on) = s.on_battery {
        out.gauge(
            "rhizome_host_on_battery",
            "1 while the host runs on its battery.",
            &[],
            if on { 1.0 } else { 0.0 },
        );
    }
}

async fn store(state: &AppState, out: &mut Exposition) {
    let answer = state
        .store
        .call_even_if_broken(|s, refusal| {
            // A recovering store's file is not read: its size and counts wait.
            let stats = refusal.is_none().then(|| s.stats().ok()).flatten();
            (stats, s.metrics(), refusal.is_some())
        })
        .recv()
        .await;
    let Ok((stats, m, broken)) = answer else {
        return;
    };
    out.gauge(
        "rhizome_store_healthy",
        "1 while the store takes writes, 0 while it recovers from a failed commit.",
        &[],
        if broken { 0.0 } else { 1.0 },
    );
    if let Some(stats) = stats {
        out.gauge(
            "rhizome_store_file_bytes",
            "Size of the store file on disk.",
            &[],
            stats.file_bytes as f64,
        );
        out.gauge(
            "rhizome_store_documents",
            "Documents in the store.",
            &[],
            stats.documents as f64,
        );
        out.gauge(
            "rhizome_store_chunk_bytes",
            "Bytes of the stored document chunks.",
            &[],
            stats.chunk_bytes as f64,
        );
        out.gauge(
            "rhizome_store_result_log_backlog",
            "Acknowledged results not yet folded into their documents.",
            &[],
            stats.pending_results as f64,
        );
    }
    out.histogram(
        "rhizome_store_commit_seconds",
        "Store commits: durable ones are fsynced before they return, deferred ones by a later flush.",
        &[("kind", "durable")],
        &m.durable_commit_seconds,
    );
    out.histogram(
        "rhizome_store_commit_seconds",
        "Store commits: durable ones are fsynced before they return, deferred ones by a later flush.",
        &[("kind", "deferred")],
        &m.deferred_commit_seconds,
    );
    out.histogram(
        "rhizome_sync_lag_seconds",
        "From a change's commit on its writer to its arrival here (writers' clocks).",
        &[],
        &m.sync_lag_seconds,
    );
    for reason in ["low_space", "recovering"] {
        out.counter(
            "rhizome_store_write_refusals_total",
            "Writes the store refused, by reason.",
            &[("reason", reason)],
            m.refused.get(reason).copied().unwrap_or(0) as f64,
        );
    }
    for (name, help, value) in [
        (
            "rhizome_store_failures_total",
            "Commits that failed under the store (a full or failing disk).",
            m.failures,
        ),
        (
            "rhizome_store_reopens_total",
            "Times the store reopened itself after a failed commit.",
            m.reopens,
        ),
        (
            "rhizome_store_compactions_total",
            "Documents compacted into one snapshot.",
            m.compactions,
        ),
        (
            "rhizome_store_windows_retired_total",
            "Result and rollup windows retired (retention, low disk).",
            m.windows_retired,
        ),
    ] {
        out.counter(name, help, &[], value as f64);
    }
}

async fn mesh(state: &AppState, out: &mut Exposition) {
    let hierarchy = state.mesh.hierarchy().await.ok();
    let chain: BTreeSet<String> = hierarchy
        .as_ref()
        .map(|h| h.chain.iter().filter_map(|(_, a)| a.clone()).collect())
        .unwrap_or_default();
    let class = |peer: &str| {
        if chain.contains(peer) {
            "aggregator"
        } else {
            "member"
        }
    };
    if let Ok(peers) = state.mesh.peers().await {
        let mut by_state = [("connected", 0), ("dialling", 0), ("disconnected", 0)];
        for p in &peers {
            let i = match p.state {
                PeerState::Connected => 0,
                PeerState::Dialling => 1,
                PeerState::Idle => 2,
            };
            by_state[i].1 += 1;
        }
        for (name, n) in by_state {
            out.gauge(
                "rhizome_mesh_peers",
                "Peers this node knows, by state.",
                &[("state", name)],
                n as f64,
            );
        }
    }
    let statuses = state.sync.status().await;
    out.gauge(
        "rhizome_sync_sessions",
        "Peers this node replicates documents with now.",
        &[],
        statuses.len() as f64,
    );
    for peer_class in ["aggregator", "member"] {
        let of_class = || statuses.iter().filter(|s| class(&s.peer) == peer_class);
        out.gauge(
            "rhizome_sync_pending_documents",
            "Shared documents not yet known to be identical with connected peers, by peer class.",
            &[("peer_class", peer_class)],
            of_class().map(|s| s.pending.len()).sum::<usize>() as f64,
        );
        out.gauge(
            "rhizome_sync_shared_documents",
            "Documents shared with connected peers, by peer class.",
            &[("peer_class", peer_class)],
            of_class().map(|s| s.shared).sum::<usize>() as f64,
        );
        for (direction, bytes) in [
            (
                "sent",
                of_class().map(|s| s.traffic.bytes_sent).sum::<u64>(),
            ),
            (
                "received",
                of_class().map(|s| s.traffic.bytes_received).sum::<u64>(),
            ),
        ] {
            out.gauge(
                "rhizome_sync_connection_bytes",
                "Replication bytes exchanged with the peers connected now, since each connected.",
                &[("peer_class", peer_class), ("direction", direction)],
                bytes as f64,
            );
        }
    }
    if let Some(h) = hierarchy {
        for (level, (zone, aggregator)) in h.chain.iter().enumerate() {
            let level = level.to_string();
            out.gauge(
                "rhizome_mesh_aggregator_info",
                "This node's aggregator chain: one series per zone from its own up to the root.",
                &[
                    ("level", &level),
                    ("zone", crate::fleet::hierarchy::zone_label(zone)),
                    ("aggregator", aggregator.as_deref().unwrap_or("")),
                ],
                1.0,
            );
        }
        out.gauge(
            "rhizome_mesh_aggregated_zones",
            "Zones this node aggregates.",
            &[],
            h.aggregates.len() as f64,
        );
    }
}

async fn workflows(state: &AppState, out: &mut Exposition) {
    // Bounded like the counted families: the first MAX_SERIES workflows by name, the rest
    // added up under `workflow="other"`.
    let mut shown: Vec<(String, [f64; 4])> = Vec::new();
    for wf in state.scheduler.workflows().await {
        let figures = [
            wf.running as f64,
            wf.queued as f64,
            wf.refused as f64,
            wf.skipped as f64,
        ];
        if shown.len() < crate::ops::metrics::MAX_SERIES {
            shown.push((wf.workflow.clone(), figures));
        } else {
            match shown.iter_mut().find(|(name, _)| name == "other") {
                Some((_, sum)) => sum.iter_mut().zip(figures).for_each(|(s, f)| *s += f),
                None => shown.push(("other".into(), figures)),
            }
        }
    }
    for (workflow, [running, queued, refused, skipped]) in shown {
        let labels = [("workflow", workflow.as_str())];
        out.gauge(
            "rhizome_workflow_runs_running",
            "Runs in progress, by workflow.",
            &labels,
            running,
        );
        out.gauge(
            "rhizome_workflow_queue_depth",
            "Runs waiting for a free slot, by workflow.",
            &labels,
            queued,
        );
        out.counter(
            "rhizome_workflow_runs_refused_total",
            "Requested runs refused (queue full, not targeted, invalid), by workflow.",
            &labels,
            refused,
        );
        out.counter(
            "rhizome_workflow_runs_skipped_total",
            "Periodic or chained runs skipped (queue full, chain too deep), by workflow.",
            &labels,
            skipped,
        );
    }
}
