//! `rhizome start`: the node process. It owns the store thread, the mesh, the workflow scheduler
//! and the local HTTP API, and shuts them down in order on SIGINT or SIGTERM: the API stops
//! accepting, runs in flight are cancelled and recorded, then mesh goodbyes, store last.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use crdt_store::{DocName, MeshRegistry, NodeEntry, StoreHandle};
use mesh::net::discovery::Interfaces;
use mesh::net::driver::{MeshConfig, MeshEvent};
use mesh::net::identity::{NodeCredentials, Revocations};
use mesh::proto::membership::Timing;
use mesh::proto::wire::Role;

use crate::cli::StartArgs;
use crate::node::{Node, now_ms};

/// How often a running node applies its retention settings (and once at start).
const RETENTION_INTERVAL: std::time::Duration = std::time::Duration::from_secs(600);

pub fn start(node: Node, args: StartArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run(node, args))
}

async fn run(node: Node, args: StartArgs) -> Result<()> {
    let started = Instant::now();
    let net = &node.config.network;
    let listen: SocketAddr = args
        .listen
        .as_deref()
        .unwrap_or(&net.listen)
        .parse()
        .context("--listen must be an address like 0.0.0.0:4860")?;
    let http: SocketAddr = args
        .http
        .as_deref()
        .unwrap_or(&net.http)
        .parse()
        .context("--http must be an address like 127.0.0.1:4861")?;
    let mut bootstrap = net.peers.clone();
    bootstrap.extend(args.peers.iter().cloned());
    let mdns_names = if args.mdns_interfaces.is_empty() {
        net.mdns_interfaces.clone()
    } else {
        args.mdns_interfaces.clone()
    };
    let discovery = if args.no_mdns || !net.mdns {
        None
    } else if mdns_names.is_empty() {
        Some(Interfaces::All)
    } else if mdns_names.iter().all(|n| n == "lo" || n == "loopback") {
        Some(Interfaces::Loopback)
    } else {
        Some(Interfaces::Named(mdns_names))
    };

    let read = |path: std::path::PathBuf| {
        std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))
    };
    let credentials = NodeCredentials::new(
        &read(node.dir.cert())?,
        &read(node.dir.ca_cert())?,
        node.identity.secret(),
    )
    .with_context(|| format!("the certificates in {}", node.dir.root.display()))?;
    let node_id = node.node_id();

    let store = StoreHandle::spawn(node.open_store()?);
    let registry: MeshRegistry = store
        .call(|s| s.read::<MeshRegistry>(&DocName::Mesh))
        .recv()
        .await?;
    let revoked = Revocations::default();
    revoked.set(registry.revoked.keys().cloned());

    let (mesh, mut mesh_events) = mesh::net::driver::spawn(MeshConfig {
        credentials,
        revoked,
        mesh_id: node.mesh_id.clone(),
        zone: node.config.node.zone.clone(),
        role: Role::Edge,
        listen,
        bootstrap,
        discovery,
        timing: Timing::default(),
        seed: u64::from_le_bytes(node.identity.public_key()[..8].try_into().expect("8 bytes")),
    })
    .await?;
    let quic = mesh.local_addr();

    let entry = NodeEntry {
        name: node.config.node.name.clone(),
        zone: node.config.node.zone.clone(),
        tags: node.config.node.tags.clone(),
        addresses: vec![quic.to_string()],
        version: env!("CARGO_PKG_VERSION").into(),
        updated_ms: now_ms(),
        ..NodeEntry::default()
    };
    let id = node_id.clone();
    store
        .call(move |s| {
            s.update::<MeshRegistry, _>(&DocName::Mesh, |m| {
                let heartbeat = m.nodes.get(&id).map_or(0, |e| e.heartbeat) + 1;
                m.nodes.insert(id, NodeEntry { heartbeat, ..entry });
            })
        })
        .recv()
        .await?;

    let listener = tokio::net::TcpListener::bind(http)
        .await
        .with_context(|| format!("cannot bind the HTTP API on {http}"))?;
    let http = listener.local_addr()?;
    let health = crate::http::Health {
        status: "ok".into(),
        node_id: node_id.clone(),
        name: node.config.node.name.clone(),
        zone: node.config.node.zone.clone(),
        mesh_id: node.mesh_id.clone(),
        quic: quic.to_string(),
        http: http.to_string(),
        uptime_ms: 0,
        version: env!("CARGO_PKG_VERSION").into(),
    };
    // A fresh token per start, readable only by the node's user: local processes of other
    // users cannot write through the API.
    let token = hex::encode(rand::random::<[u8; 32]>());
    let _ = std::fs::remove_file(node.dir.api_token());
    crate::identity::write_private(&node.dir.api_token(), &token)?;
    let scheduler = crate::scheduler::spawn(
        store.clone(),
        crate::scheduler::SchedulerConfig {
            node: node.traits(),
            agents: crate::engine::registry(),
            reload_every: crate::scheduler::RELOAD_EVERY,
        },
    );
    let state = Arc::new(crate::http::AppState {
        token,
        health,
        started,
        mesh: mesh.clone(),
        store: store.clone(),
        scheduler: scheduler.clone(),
    });
    let app = crate::http::router(state);
    std::fs::write(node.dir.http_addr(), http.to_string())
        .with_context(|| format!("cannot write {}", node.dir.http_addr().display()))?;
    say(&format!(
        "rhizome node {} ({node_id}) serving: quic {quic}, http {http}, in {:.0?}",
        node.config.node.name,
        started.elapsed()
    ));

    let retention_store = store.clone();
    let retention = tokio::spawn(async move {
        let mut every = tokio::time::interval(RETENTION_INTERVAL);
        loop {
            every.tick().await;
            let now = now_ms();
            match retention_store
                .call(move |s| s.enforce_retention(now))
                .recv()
                .await
            {
                Ok(retired) if !retired.is_empty() => {
                    tracing::info!(windows = retired.len(), "retention retired old windows");
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "retention failed"),
            }
        }
    });
    let events = tokio::spawn(async move {
        while let Some(event) = mesh_events.recv().await {
            match event {
                MeshEvent::PeerUp(peer) => tracing::info!(%peer, "peer connected"),
                MeshEvent::PeerDown(peer, reason) => tracing::info!(%peer, %reason, "peer lost"),
                MeshEvent::Received(peer, _) => tracing::debug!(%peer, "message"),
            }
        }
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("HTTP API")?;
    tracing::info!("shutting down");
    // Runs in flight end `interrupted` and are recorded before the store stops.
    scheduler.shutdown().await;
    mesh.shutdown().await;
    events.abort();
    retention.abort();
    let _ = std::fs::remove_file(node.dir.http_addr());
    let _ = std::fs::remove_file(node.dir.api_token());
    tokio::task::spawn_blocking(move || store.shutdown())
        .await
        .context("stopping the store")?;
    say(&format!("rhizome node {node_id} stopped"));
    Ok(())
}

/// A line on stdout. A daemon's stdout may be closed by whoever started it; that must not
/// stop the node (println! would panic on a broken pipe).
fn say(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|_| out.flush());
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
