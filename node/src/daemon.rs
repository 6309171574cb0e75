//! `rhizome start`: the node process. It owns the store thread, the mesh and the local HTTP API,
//! and shuts them down in order on SIGINT or SIGTERM (mesh goodbyes first, store last).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use crdt_store::{DocName, MeshRegistry, NodeEntry, StoreHandle};
use mesh::net::discovery::Interfaces;
use mesh::net::driver::{MeshConfig, MeshEvent, MeshHandle};
use mesh::net::identity::{NodeCredentials, Revocations};
use mesh::proto::membership::{PeerState, Timing};
use mesh::proto::wire::Role;
use serde::Serialize;

use crate::cli::StartArgs;
use crate::node::{Node, now_ms};

/// How often a running node applies its retention settings (and once at start).
const RETENTION_INTERVAL: std::time::Duration = std::time::Duration::from_secs(600);

/// What `GET /health` answers.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Health {
    pub status: String,
    pub node_id: String,
    pub name: String,
    pub zone: String,
    pub mesh_id: String,
    pub quic: String,
    pub http: String,
    pub uptime_ms: u64,
    pub version: String,
}

/// One entry of `GET /peers`.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct PeerView {
    pub node_id: String,
    pub name: Option<String>,
    pub addr: Option<String>,
    pub state: String,
    pub silent_ms: u64,
}

struct AppState {
    /// Bearer token that every write request must carry.
    token: String,
    health: Health,
    started: Instant,
    mesh: MeshHandle,
    store: StoreHandle,
}

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
    let health = Health {
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
    let state = Arc::new(AppState {
        token,
        health,
        started,
        mesh: mesh.clone(),
        store: store.clone(),
    });
    let app = Router::new()
        .route("/health", get(get_health))
        .route("/peers", get(get_peers))
        .route("/docs", get(get_docs))
        .route("/doc", get(get_doc))
        .route("/results", get(get_results))
        .route("/workflows", get(get_workflows).post(post_workflow))
        .with_state(state);
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

async fn get_health(State(state): State<Arc<AppState>>) -> Json<Health> {
    let mut health = state.health.clone();
    health.uptime_ms = state.started.elapsed().as_millis() as u64;
    Json(health)
}

async fn get_peers(
    State(state): State<Arc<AppState>>,
) -> Result<Json<Vec<PeerView>>, (axum::http::StatusCode, String)> {
    let unavailable = |e: String| (axum::http::StatusCode::SERVICE_UNAVAILABLE, e);
    let peers = state
        .mesh
        .peers()
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let registry = state
        .store
        .call(|s| s.read::<MeshRegistry>(&DocName::Mesh))
        .recv()
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    Ok(Json(
        peers
            .into_iter()
            .map(|p| PeerView {
                name: registry.nodes.get(&p.node).map(|e| e.name.clone()),
                node_id: p.node,
                addr: p.addr,
                state: match p.state {
                    PeerState::Connected => "connected",
                    PeerState::Dialling => "dialling",
                    PeerState::Idle => "disconnected",
                }
                .into(),
                silent_ms: p.silent_for.as_millis() as u64,
            })
            .collect(),
    ))
}

type ApiError = (axum::http::StatusCode, String);

fn api_error(e: impl std::fmt::Display) -> ApiError {
    (axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

async fn get_docs(
    State(state): State<Arc<AppState>>,
) -> Result<Json<Vec<crdt_store::DocInfo>>, ApiError> {
    let docs = state
        .store
        .call(|s| s.list_docs())
        .recv()
        .await
        .map_err(api_error)?;
    Ok(Json(docs))
}

#[derive(Debug, serde::Deserialize)]
struct DocQuery {
    id: String,
}

async fn get_doc(
    State(state): State<Arc<AppState>>,
    axum::extract::Query(query): axum::extract::Query<DocQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let shown = state
        .store
        .call(move |s| Ok(crate::commands::show_doc(s, &query.id)))
        .recv()
        .await
        .map_err(api_error)?;
    shown
        .map(Json)
        .map_err(|e| (axum::http::StatusCode::NOT_FOUND, format!("{e:#}")))
}

#[derive(Debug, serde::Deserialize)]
struct ResultsParams {
    workflow: Option<String>,
    node: Option<String>,
    since_ms: Option<i64>,
}

async fn get_results(
    State(state): State<Arc<AppState>>,
    axum::extract::Query(params): axum::extract::Query<ResultsParams>,
) -> Result<Json<Vec<crdt_store::RunRecord>>, ApiError> {
    let query = crdt_store::ResultsQuery {
        workflow: params.workflow,
        node: params.node,
        since_ms: params.since_ms,
    };
    let records = state
        .store
        .call(move |s| s.results(&query))
        .recv()
        .await
        .map_err(api_error)?;
    Ok(Json(records))
}

async fn get_workflows(
    State(state): State<Arc<AppState>>,
) -> Result<Json<Vec<crdt_store::WorkflowDoc>>, ApiError> {
    let workflows = state
        .store
        .call(|s| Ok(crate::commands::list_workflows(s)))
        .recv()
        .await
        .map_err(api_error)?
        .map_err(|e| api_error(format!("{e:#}")))?;
    Ok(Json(workflows))
}

async fn post_workflow(
    State(state): State<Arc<AppState>>,
    headers: axum::http::HeaderMap,
    yaml: String,
) -> Result<Json<crdt_store::WorkflowDoc>, ApiError> {
    let presented = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if presented != Some(state.token.as_str()) {
        return Err((
            axum::http::StatusCode::UNAUTHORIZED,
            "writes need the node's API token (Authorization: Bearer <data-dir>/api.token)".into(),
        ));
    }
    let definition = crate::workflow::parse(&yaml)
        .map_err(|e| (axum::http::StatusCode::BAD_REQUEST, format!("{e:#}")))?;
    let node_id = state.health.node_id.clone();
    let stored = state
        .store
        .call(move |s| Ok(crate::commands::apply_workflow(s, definition, &node_id)))
        .recv()
        .await
        .map_err(api_error)?
        .map_err(|e| api_error(format!("{e:#}")))?;
    Ok(Json(stored))
}
