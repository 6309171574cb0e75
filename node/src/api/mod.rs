//! The local HTTP API: one router, its shared state, and the read handlers. Every endpoint but
//! `GET /health` needs a token whose role allows it ([`auth`]); each route is added together
//! with that rule, so none can be added without one.
//!
//! The room of the HTTP API: routes and access here, tokens in [`auth`], run routes in
//! [`runs`].

pub mod alerts;
pub mod artifacts;
pub mod auth;
pub mod automerge;
pub mod explain;
pub mod export;
pub mod health;
pub mod keys;
pub mod metrics;
pub mod releases;
pub mod resources;
pub mod rollouts;
pub mod runs;
pub mod tls;
pub mod trust;
pub mod web;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::{Json, Router};
use crdt_store::{DocName, MeshRegistry, StoreHandle};
use mesh::net::driver::MeshHandle;
use mesh::proto::membership::PeerState;
use serde::Serialize;

use crate::run::scheduler::SchedulerHandle;

/// What `GET /health` answers.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Health {
    pub status: String,
    pub node_id: String,
    pub name: String,
    pub zone: String,
    /// `edge` or `cloud`.
    #[serde(default)]
    pub role: String,
    pub mesh_id: String,
    pub quic: String,
    pub http: String,
    pub uptime_ms: u64,
    pub version: String,
    /// Why the node is `degraded`, one sentence each; empty when `ok`.
    #[serde(default)]
    pub problems: Vec<String>,
    /// Free space and the state of the store.
    #[serde(default)]
    pub store: Option<crate::ops::durability::StoreHealth>,
    /// What an operator should know that does not make this node unhealthy: a zone below it
    /// split in parts that do not reach each other (each part keeps working, and this node
    /// takes every part's rollups).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Every check, built-in and configured, with its outcome.
    #[serde(default)]
    pub checks: Vec<crate::ops::health::CheckResult>,
}

/// One entry of `GET /peers`.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct PeerView {
    pub node_id: String,
    pub name: Option<String>,
    pub addr: Option<String>,
    pub state: String,
    pub silent_ms: u64,
    /// Replication with this peer, while connected.
    #[serde(default)]
    pub sync: Option<PeerSync>,
}

/// Where document sync with one peer stands.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct PeerSync {
    pub peer: String,
    /// Documents this node and the peer may share.
    pub shared: usize,
    /// Shared documents not yet known to be identical on both sides.
    pub pending: Vec<String>,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub messages_sent: u64,
    pub messages_received: u64,
}

impl From<mesh::proto::sync::PeerSyncStatus> for PeerSync {
    fn from(s: mesh::proto::sync::PeerSyncStatus) -> Self {
        PeerSync {
            peer: s.peer,
            shared: s.shared,
            pending: s.pending,
            bytes_sent: s.traffic.bytes_sent,
            bytes_received: s.traffic.bytes_received,
            messages_sent: s.traffic.messages_sent,
            messages_received: s.traffic.messages_received,
        }
    }
}

/// What `POST /sync` answers.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct SyncReport {
    /// Every shared document is identical with every peer asked about.
    pub converged: bool,
    pub waited_ms: u64,
    pub peers: Vec<PeerSync>,
}

/// What `POST /sync` takes (all optional).
#[derive(Debug, Default, serde::Deserialize)]
struct SyncRequest {
    /// Only this peer (node id).
    peer: Option<String>,
    /// How long to wait for convergence; default 10 s, at most 10 minutes.
    timeout_ms: Option<u64>,
}

#[derive(Debug)]
pub struct AppState {
    /// The tokens this node accepts, its own local credential among them.
    pub tokens: auth::Tokens,
    pub health: Health,
    pub started: Instant,
    pub mesh: MeshHandle,
    pub store: StoreHandle,
    pub sync: crate::fleet::sync::SyncHandle,
    pub role: mesh::proto::wire::Role,
    /// Who workflow versions applied through this node are written as.
    pub writer: crate::run::workflow::Writer,
    /// The capabilities announced last (refreshed every minute).
    pub capabilities: Arc<std::sync::Mutex<mesh::proto::wire::Capabilities>>,
    pub scheduler: SchedulerHandle,
    /// The data dir, whose filesystem refusals and health name.
    pub data_dir: std::path::PathBuf,
    /// Where the node's certificate stands: when it ends, whether renewing it fails.
    pub renewal: Arc<std::sync::Mutex<crate::security::renewal::RenewalState>>,
    /// Security events: API writes and refusals are recorded here.
    pub audit: Arc<crate::security::audit::Audit>,
    /// Where the store key is read from; `None` when the store is not encrypted.
    pub store_key: Option<crate::security::store_key::KeySource>,
    /// Wakes the background re-seal after a key rotation.
    pub reseal: Arc<tokio::sync::Notify>,
    /// The latest outcome of the checks configured in `[[health.checks]]`.
    pub user_checks: crate::ops::health::UserChecks,
    /// Since when documents have been pending with each peer.
    pub sync_watch: crate::ops::health::SyncWatch,
    /// The wall clock when the node started (`started` on the monotonic clock).
    pub started_wall_ms: i64,
    /// The host's figures over time.
    pub monitor: Option<crate::ops::monitor::MonitorHandle>,
    /// The alert rules in force and where each stands.
    pub alerts: crate::ops::alerts::AlertsHandle,
    /// Where the export into PostgreSQL stands (`GET /export`).
    pub export: crate::export::ExportHandle,
    /// How the node finds peers, as `explain` tells it: mDNS interfaces (or off) and the
    /// addresses it dials.
    pub discovery: String,
    /// Every committed change of the store, for the WebSocket endpoint's clients.
    pub changes: Arc<crate::fleet::sync::ChangeFeed>,
    /// The artifacts this node holds (the directory is the node's while it runs).
    pub artifacts: crate::fleet::artifacts::Artifacts,
    /// The WebSocket endpoint's clients.
    pub clients: Arc<automerge::Clients>,
}

/// Who may call one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub method: axum::http::Method,
    /// The route, as written in the router (`/run/{workflow}`).
    pub path: &'static str,
    /// The least role a token needs; `None`: anyone (`/health` only).
    pub needs: Option<auth::Role>,
}

/// The router being built, and the access rule of every route in it.
struct Routes {
    router: Router<Arc<AppState>>,
    rules: Vec<Access>,
}

impl Routes {
    fn add<H, T>(
        mut self,
        method: axum::http::Method,
        path: &'static str,
        needs: Option<auth::Role>,
        handler: H,
    ) -> Routes
    where
        H: axum::handler::Handler<T, Arc<AppState>>,
        T: 'static,
    {
        let filter = axum::routing::MethodFilter::try_from(method.clone())
            .expect("routes use standard methods");
        self.router = self.router.route(path, axum::routing::on(filter, handler));
        self.rules.push(Access {
            method,
            path,
            needs,
        });
        self
    }
}

fn routes() -> Routes {
    use auth::Role::{Admin, Monitor, Operator};
    use axum::http::Method;
    Routes {
        router: Router::new(),
        rules: Vec::new(),
    }
    .add(Method::GET, "/health", None, get_health)
    // The page and its assets hold no data: a token is asked for by the page itself.
    .add(Method::GET, "/", None, web::get_index)
    .add(Method::GET, "/assets/app.js", None, web::get_app_js)
    .add(Method::GET, "/assets/style.css", None, web::get_style_css)
    .add(Method::GET, "/session", Some(Monitor), web::get_session)
    .add(Method::GET, "/events", Some(Monitor), web::get_events)
    .add(Method::GET, "/peers", Some(Monitor), get_peers)
    .add(Method::GET, "/hierarchy", Some(Monitor), get_hierarchy)
    .add(Method::GET, "/docs", Some(Monitor), get_docs)
    .add(Method::GET, "/doc", Some(Monitor), get_doc)
    .add(Method::GET, "/results", Some(Monitor), get_results)
    .add(Method::GET, "/workflows", Some(Monitor), get_workflows)
    .add(Method::POST, "/workflows", Some(Admin), post_workflow)
    .add(
        Method::GET,
        "/workflows/{workflow}/history",
        Some(Monitor),
        get_workflow_history,
    )
    .add(
        Method::POST,
        "/workflows/{workflow}/rollback",
        Some(Admin),
        post_workflow_rollback,
    )
    .add(
        Method::POST,
        "/rollouts/{workflow}",
        Some(Admin),
        rollouts::post_rollout,
    )
    .add(
        Method::GET,
        "/rollouts/{workflow}",
        Some(Monitor),
        rollouts::get_rollout,
    )
    .add(
        Method::POST,
        "/rollouts/{workflow}/{action}",
        Some(Admin),
        rollouts::post_control,
    )
    .add(
        Method::POST,
        "/releases",
        Some(Admin),
        releases::post_release,
    )
    .add(
        Method::GET,
        "/releases",
        Some(Monitor),
        releases::get_releases,
    )
    .add(
        Method::POST,
        "/releases/{version}/{action}",
        Some(Admin),
        releases::post_release_action,
    )
    .add(
        Method::DELETE,
        "/workflows/{workflow}",
        Some(Admin),
        delete_workflow,
    )
    .add(Method::POST, "/sync", Some(Operator), post_sync)
    .add(Method::GET, "/fleet", Some(Monitor), get_fleet)
    .add(
        Method::POST,
        "/run/{workflow}",
        Some(Operator),
        runs::post_run,
    )
    .add(
        Method::GET,
        "/status/{run}",
        Some(Monitor),
        runs::get_status,
    )
    .add(Method::GET, "/schedule", Some(Monitor), runs::get_schedule)
    .add(
        Method::POST,
        "/mesh/revocations",
        Some(Admin),
        post_revocation,
    )
    .add(Method::POST, "/mesh/policy", Some(Admin), post_policy)
    .add(Method::POST, "/mesh/cas", Some(Admin), trust::post_cas)
    .add(Method::GET, "/security", Some(Admin), get_security)
    .add(Method::GET, "/metrics", Some(Monitor), metrics::get_metrics)
    .add(Method::GET, "/explain/doc", Some(Monitor), explain::get_doc)
    .add(
        Method::GET,
        "/explain/peer",
        Some(Monitor),
        explain::get_peer,
    )
    .add(
        Method::GET,
        "/resources",
        Some(Monitor),
        resources::get_resources,
    )
    .add(Method::GET, "/alerts", Some(Monitor), alerts::get_alerts)
    .add(Method::GET, "/export", Some(Monitor), export::get_export)
    .add(
        Method::GET,
        "/artifacts",
        Some(Monitor),
        artifacts::get_artifacts,
    )
    .add(
        Method::POST,
        "/artifacts",
        Some(Admin),
        artifacts::post_artifact,
    )
    .add(
        Method::POST,
        "/artifacts/gc",
        Some(Admin),
        artifacts::post_gc,
    )
    .add(
        Method::GET,
        "/artifacts/{artifact}",
        Some(Monitor),
        artifacts::get_artifact,
    )
    .add(
        Method::GET,
        "/artifacts/{artifact}/content",
        Some(Monitor),
        artifacts::get_artifact_content,
    )
    .add(
        Method::DELETE,
        "/artifacts/{artifact}",
        Some(Admin),
        artifacts::delete_artifact,
    )
    .add(
        Method::POST,
        "/artifacts/{artifact}/fetch",
        Some(Operator),
        artifacts::post_fetch,
    )
    .add(
        Method::POST,
        "/alerts/rules",
        Some(Admin),
        alerts::post_rules,
    )
    .add(
        Method::GET,
        "/automerge",
        Some(Monitor),
        automerge::get_automerge,
    )
    .add(Method::GET, "/store/keys", Some(Monitor), keys::get_keys)
    .add(
        Method::POST,
        "/store/rotate-key",
        Some(Admin),
        keys::post_rotate_key,
    )
}

/// Every route with its access rule, as the router enforces them.
pub fn access_rules() -> Vec<Access> {
    routes().rules
}

/// The API's routes, each behind its access rule.
pub fn router(state: Arc<AppState>) -> Router {
    let Routes { router, rules } = routes();
    let rules = Arc::new(rules);
    router
        .route_layer(axum::middleware::from_fn_with_state(
            (state.clone(), rules),
            check_access,
        ))
        .with_state(state)
}

/// Routes that also take the token from the URL query (`?token=…`): browsers cannot set
/// headers on a WebSocket upgrade, nor on an `EventSource`. Elsewhere a token in a URL would end up in logs and
/// browser histories for nothing.
const QUERY_TOKEN_PATHS: &[&str] = &["/automerge", "/events"];

/// The `token` parameter of a query string, percent-decoded.
fn query_token(query: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Query {
        token: Option<String>,
    }
    axum::extract::Query::<Query>::try_from_uri(&format!("/?{query}").parse().ok()?)
        .ok()?
        .0
        .token
}

/// Lets a request through when its token's role is enough for the route it matched; the
/// caller goes with the request, for handlers that act on the role.
async fn check_access(
    State((state, rules)): State<(Arc<AppState>, Arc<Vec<Access>>)>,
    matched: Option<axum::extract::MatchedPath>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let rule = matched.as_ref().and_then(|m| {
        rules
            .iter()
            .find(|r| r.path == m.as_str() && r.method == *request.method())
    });
    // A matched route always has its rule; anything else is refused rather than let through.
    let Some(rule) = rule else {
        return (
            axum::http::StatusCode::FORBIDDEN,
            "no access rule for this endpoint",
        )
            .into_response();
    };
    let Some(needs) = rule.needs else {
        return next.run(request).await;
    };
    let header = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let bearer = header.or_else(|| {
        QUERY_TOKEN_PATHS
            .contains(&rule.path)
            .then(|| query_token(request.uri().query()?))
            .flatten()
    });
    let bearer = bearer.as_deref();
    let what = format!("{} {}", rule.method, rule.path);
    let refused = match state.tokens.check(bearer, crate::node::now_ms()) {
        Ok(caller) if caller.role >= needs => {
            let writes = rule.method != axum::http::Method::GET;
            let mut request = request;
            let name = caller.name.clone();
            request.extensions_mut().insert(caller);
            let answer = next.run(request).await;
            if writes {
                state.audit.record(
                    crate::security::audit::Kind::ApiWrite,
                    name,
                    format!("{what}: {}", answer.status()),
                );
            }
            return answer;
        }
        Ok(caller) => auth::Refused::Insufficient {
            name: caller.name,
            has: caller.role,
            needs,
            what: what.clone(),
        },
        Err(refused) => refused,
    };
    state.audit.record(
        crate::security::audit::Kind::ApiRefused,
        bearer.map_or("no token".into(), |b| b.get(..12).unwrap_or(b).to_owned()),
        format!("{what}: {refused}"),
    );
    let status = match refused {
        auth::Refused::Insufficient { .. } => axum::http::StatusCode::FORBIDDEN,
        _ => axum::http::StatusCode::UNAUTHORIZED,
    };
    (status, refused.to_string()).into_response()
}

/// How long `/health` waits for the store before it reports the store as not answering.
const HEALTH_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);

/// `ok` (200) only while no check fails; otherwise `degraded`, or `failing` when the store
/// takes no writes (503), with every failing check and its reason, so a load balancer or
/// supervisor never takes a node that refuses writes for a healthy one.
async fn get_health(State(state): State<Arc<AppState>>) -> (axum::http::StatusCode, Json<Health>) {
    let health = health::assess(&state).await;
    let code = if health.status == "ok" {
        axum::http::StatusCode::OK
    } else {
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(health))
}

/// A store error as the API answers it: 507 for a full disk, 503 for a failing store, with
/// the data dir's free space named.
pub fn store_failed(state: &AppState) -> impl Fn(crdt_store::StoreError) -> ApiError + '_ {
    |e| {
        (
            crate::ops::durability::status_of(&e),
            crate::ops::durability::explain(&e, &state.data_dir),
        )
    }
}

/// An operation's error, answered by the store error under it when there is one.
pub fn operation_failed(state: &AppState) -> impl Fn(anyhow::Error) -> ApiError + '_ {
    |e| {
        if e.chain()
            .any(|c| c.is::<crate::security::workflow_rights::NotPermitted>())
        {
            return (axum::http::StatusCode::FORBIDDEN, format!("{e:#}"));
        }
        if let Some(refused) = e
            .chain()
            .find_map(|c| c.downcast_ref::<crate::run::history::Refused>())
        {
            let status = if refused.is_not_found() {
                axum::http::StatusCode::NOT_FOUND
            } else {
                axum::http::StatusCode::CONFLICT
            };
            return (status, format!("{e:#}"));
        }
        let status = crate::ops::durability::status_of_any(&e);
        let e = crate::ops::durability::explain_any(e, &state.data_dir);
        (status, format!("{e:#}"))
    }
}

/// A part of the node that cannot answer now (stopping, or its store failed).
fn unavailable(e: impl std::fmt::Display) -> ApiError {
    (axum::http::StatusCode::SERVICE_UNAVAILABLE, e.to_string())
}

/// The mesh registry, for names of node ids; empty (ids without names) while the store cannot
/// serve, since who is connected is worth answering even then.
async fn registry(state: &AppState) -> MeshRegistry {
    state
        .store
        .call(|s| s.read::<MeshRegistry>(&DocName::Mesh))
        .recv()
        .await
        .unwrap_or_default()
}

async fn get_peers(State(state): State<Arc<AppState>>) -> Result<Json<Vec<PeerView>>, ApiError> {
    let peers = state.mesh.peers().await.map_err(unavailable)?;
    let registry = registry(&state).await;
    let mut sync: std::collections::BTreeMap<String, PeerSync> = state
        .sync
        .status()
        .await
        .into_iter()
        .map(|s| (s.peer.clone(), s.into()))
        .collect();
    Ok(Json(
        peers
            .into_iter()
            .map(|p| PeerView {
                sync: sync.remove(&p.node),
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

/// The zone, role, capabilities, aggregator chain (with names from the mesh document) and
/// aggregated zones of this node.
async fn get_hierarchy(
    State(state): State<Arc<AppState>>,
) -> Result<Json<crate::fleet::hierarchy::HierarchyView>, ApiError> {
    let hierarchy = state.mesh.hierarchy().await.map_err(unavailable)?;
    let registry = registry(&state).await;
    let capabilities = *state.capabilities.lock().expect("not poisoned");
    Ok(Json(crate::fleet::hierarchy::HierarchyView::new(
        &state.health.node_id,
        state.role,
        &capabilities,
        hierarchy,
        |id| registry.nodes.get(id).map(|e| e.name.clone()),
    )))
}

pub type ApiError = (axum::http::StatusCode, String);

/// A store read that failed: 503 while the store cannot serve (it is reopening after a failed
/// write, or stopping), so that a client retries; 500 for anything else.
pub fn read_failed(e: crdt_store::StoreError) -> ApiError {
    let status = if e.write_fault().is_some() || matches!(e, crdt_store::StoreError::Stopped) {
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    } else {
        axum::http::StatusCode::INTERNAL_SERVER_ERROR
    };
    (status, e.to_string())
}

async fn get_docs(
    State(state): State<Arc<AppState>>,
) -> Result<Json<Vec<crdt_store::DocInfo>>, ApiError> {
    let docs = state
        .store
        .call(|s| s.list_docs())
        .recv()
        .await
        .map_err(read_failed)?;
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
        .call(move |s| Ok(crate::cli::commands::show_doc(s, &query.id)))
        .recv()
        .await
        .map_err(read_failed)?;
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
        .map_err(read_failed)?;
    Ok(Json(records))
}

#[derive(Debug, Default, serde::Deserialize)]
struct WorkflowsParams {
    /// Also deleted workflows.
    #[serde(default)]
    all: bool,
}

/// The workflows this node knows, each with its state here; deleted ones only with
/// `?all=true`.
async fn get_workflows(
    State(state): State<Arc<AppState>>,
    axum::extract::Query(params): axum::extract::Query<WorkflowsParams>,
) -> Result<Json<Vec<crate::run::workflow::ListedWorkflow>>, ApiError> {
    let workflows = state
        .store
        .call(move |s| Ok(crate::run::workflow::list(s, params.all)))
        .recv()
        .await
        .map_err(read_failed)?
        .map_err(|e| {
            (
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                format!("{e:#}"),
            )
        })?;
    Ok(Json(workflows))
}

#[derive(Debug, serde::Deserialize)]
struct HistoryParams {
    /// Most versions listed, the newest ([`crate::run::history::DEFAULT_HISTORY_LIMIT`]).
    limit: Option<usize>,
}

/// Every version of a workflow, newest first, from its document's changes.
async fn get_workflow_history(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(workflow): axum::extract::Path<String>,
    axum::extract::Query(params): axum::extract::Query<HistoryParams>,
) -> Result<Json<crate::run::history::HistoryView>, ApiError> {
    let name = DocName::workflow(&workflow)
        .map_err(|e| (axum::http::StatusCode::BAD_REQUEST, e.to_string()))?;
    let limit = params
        .limit
        .unwrap_or(crate::run::history::DEFAULT_HISTORY_LIMIT);
    let history = state
        .store
        .call(move |s| Ok(crate::run::history::history(s, &name, limit)))
        .recv()
        .await
        .map_err(read_failed)?
        .map_err(operation_failed(&state))?;
    Ok(Json(history))
}

/// What `POST /workflows/{workflow}/rollback` takes.
#[derive(Debug, serde::Deserialize)]
struct RollbackRequest {
    /// The version to make current again.
    to: u64,
    /// The node (id or name) that wrote it, when nodes wrote that number concurrently.
    #[serde(default)]
    by: Option<String>,
}

/// Makes an earlier version's definition current again as a new version, with the checks of
/// an apply; answers the stored version.
async fn post_workflow_rollback(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(workflow): axum::extract::Path<String>,
    body: String,
) -> Result<Json<crdt_store::WorkflowDoc>, ApiError> {
    let request: RollbackRequest = serde_json::from_str(&body).map_err(|e| {
        (
            axum::http::StatusCode::BAD_REQUEST,
            format!("the body must be JSON like {{\"to\": 3}} (and \"by\": \"<node>\" if two nodes wrote that version): {e}"),
        )
    })?;
    write_version(&state, &workflow, move |s, workflow, writer| {
        crate::run::history::rollback(s, workflow, request.to, request.by.as_deref(), writer)
    })
    .await
}

/// Writes a new version of `workflow` by `write` on the store thread, then reloads the
/// scheduler before answering, so that no run of the old version starts here afterwards.
async fn write_version(
    state: &Arc<AppState>,
    workflow: &str,
    write: impl FnOnce(
        &mut crdt_store::Store,
        &str,
        &crate::run::workflow::Writer,
    ) -> anyhow::Result<crdt_store::WorkflowDoc>
    + Send
    + 'static,
) -> Result<Json<crdt_store::WorkflowDoc>, ApiError> {
    DocName::workflow(workflow)
        .map_err(|e| (axum::http::StatusCode::BAD_REQUEST, e.to_string()))?;
    let writer = state.writer.clone();
    let workflow = workflow.to_owned();
    let stored = state
        .store
        .call(move |s| Ok(write(s, &workflow, &writer)))
        .recv()
        .await
        .map_err(store_failed(state))?
        .map_err(operation_failed(state))?;
    state.scheduler.reload().await;
    Ok(Json(stored))
}

/// Deletes a workflow on every node: stores its tombstone version, answered.
async fn delete_workflow(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(workflow): axum::extract::Path<String>,
) -> Result<Json<crdt_store::WorkflowDoc>, ApiError> {
    write_version(&state, &workflow, crate::run::history::delete).await
}

/// Stores a workflow definition (YAML) as its next version. The body is read only up to the
/// size a definition may have (axum's own body limit would answer larger ones without saying
/// which limit), and bounded in nesting before it is parsed.
async fn post_workflow(
    State(state): State<Arc<AppState>>,
    body: axum::body::Body,
) -> Result<Json<crdt_store::WorkflowDoc>, ApiError> {
    use axum::http::StatusCode;
    let limit = crdt_store::MAX_DEFINITION_BYTES;
    let too_large = |what: String| {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("{what}, over the limit of {limit} bytes (1 MiB) for a workflow definition"),
        )
    };
    let bytes = axum::body::to_bytes(body, limit + 1).await.map_err(|_| {
        too_large(format!(
            "the workflow definition is more than {limit} bytes"
        ))
    })?;
    if bytes.len() > limit {
        return Err(too_large(format!(
            "the workflow definition is {} bytes",
            bytes.len()
        )));
    }
    let yaml = std::str::from_utf8(&bytes).map_err(|e| {
        (
            StatusCode::BAD_REQUEST,
            format!("the workflow definition is not UTF-8 text: {e}"),
        )
    })?;
    let definition = crate::run::workflow::parse(yaml).map_err(|e| {
        let status = match e
            .chain()
            .find_map(|c| c.downcast_ref::<crdt_store::BoundsError>())
        {
            Some(crdt_store::BoundsError::TooLarge { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        };
        (status, format!("{e:#}"))
    })?;
    // A version pins the artifacts its names stand for here.
    let definition = if crate::run::artifact_refs::referenced_by_name(&definition) {
        state
            .artifacts
            .with(move |s| crate::run::artifact_refs::pin(definition, |name| s.resolve(name)))
            .await
            .map_err(|e| (StatusCode::BAD_REQUEST, format!("{e:#}")))?
    } else {
        definition
    };
    let writer = state.writer.clone();
    let stored = state
        .store
        .call(move |s| Ok(crate::cli::commands::apply_workflow(s, definition, &writer)))
        .recv()
        .await
        .map_err(store_failed(&state))?
        .map_err(operation_failed(&state))?;
    // New runs use the new version from the moment this answers.
    state.scheduler.reload().await;
    Ok(Json(stored))
}

#[derive(Debug, serde::Deserialize)]
struct RevocationRequest {
    node: String,
    decision: crdt_store::Revocation,
}

/// Stores a revocation decision the mesh CA signed (`rhizome mesh revoke|unrevoke` signs it
/// where the CA key is). One this node cannot verify is refused here rather than spread.
async fn post_revocation(
    State(state): State<Arc<AppState>>,
    body: String,
) -> Result<Json<serde_json::Value>, ApiError> {
    let request: RevocationRequest = serde_json::from_str(&body).map_err(|e| {
        (
            axum::http::StatusCode::BAD_REQUEST,
            format!("the body must be {{\"node\": ..., \"decision\": ...}}: {e}"),
        )
    })?;
    let bad_request = |e: anyhow::Error| (axum::http::StatusCode::BAD_REQUEST, format!("{e:#}"));
    crate::security::revocations::check_node_id(&request.node).map_err(bad_request)?;
    let ca_pem = std::fs::read_to_string(state.data_dir.join(crate::config::CA_CERT_FILE))
        .map_err(|e| (axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let mut check = MeshRegistry::default();
    check
        .revoked
        .insert(request.node.clone(), request.decision.clone());
    let verdict = crate::security::revocations::verdicts(&check, &state.health.mesh_id, &ca_pem);
    if let Some(why) = verdict.ignored.get(&request.node) {
        return Err((
            axum::http::StatusCode::FORBIDDEN,
            format!("refused: the decision about {} is {why}", request.node),
        ));
    }
    let (node, decision) = (request.node.clone(), request.decision);
    state
        .store
        .call(move |s| {
            s.update::<MeshRegistry, _>(&DocName::Mesh, |mesh| {
                mesh.revoked.insert(node, decision);
            })
        })
        .recv()
        .await
        .map_err(store_failed(&state))?;
    Ok(Json(
        serde_json::json!({ "node": request.node, "stored": true }),
    ))
}

/// Security events since the node started: counts by kind and the most recent.
async fn get_security(
    State(state): State<Arc<AppState>>,
) -> Json<crate::security::audit::AuditView> {
    Json(state.audit.view())
}

#[derive(Debug, serde::Deserialize)]
struct PolicyRequest {
    setting: String,
    decision: crdt_store::PolicyDecision,
}

/// Stores a mesh-wide setting the mesh CA signed (`rhizome mesh policy set`); one this node
/// cannot verify is refused here rather than spread.
async fn post_policy(
    State(state): State<Arc<AppState>>,
    body: String,
) -> Result<Json<serde_json::Value>, ApiError> {
    let request: PolicyRequest = serde_json::from_str(&body).map_err(|e| {
        (
            axum::http::StatusCode::BAD_REQUEST,
            format!("the body must be {{\"setting\": ..., \"decision\": ...}}: {e}"),
        )
    })?;
    let ca_pem = std::fs::read_to_string(state.data_dir.join(crate::config::CA_CERT_FILE))
        .map_err(|e| (axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let mut check = MeshRegistry::default();
    check
        .policy
        .insert(request.setting.clone(), request.decision.clone());
    let (_, ignored) = crate::security::policy::read(&check, &state.health.mesh_id, &ca_pem);
    if let Some(why) = ignored.get(&request.setting) {
        return Err((
            axum::http::StatusCode::FORBIDDEN,
            format!("refused: the decision about {} is {why}", request.setting),
        ));
    }
    let (setting, decision) = (request.setting.clone(), request.decision);
    state
        .store
        .call(move |s| {
            s.update::<MeshRegistry, _>(&DocName::Mesh, |mesh| {
                mesh.policy.insert(setting, decision);
            })
        })
        .recv()
        .await
        .map_err(store_failed(&state))?;
    Ok(Json(
        serde_json::json!({ "setting": request.setting, "stored": true }),
    ))
}

/// Compares documents with the peers again and waits until they are identical or the timeout
/// passes. The body is optional JSON: `{"peer": "<node id>", "timeout_ms": 10000}`.
async fn post_sync(
    State(state): State<Arc<AppState>>,
    body: String,
) -> Result<Json<SyncReport>, ApiError> {
    let request: SyncRequest = if body.trim().is_empty() {
        SyncRequest::default()
    } else {
        serde_json::from_str(&body).map_err(|e| {
            (
                axum::http::StatusCode::BAD_REQUEST,
                format!("the body must be JSON like {{\"peer\": \"<node id>\", \"timeout_ms\": 10000}}: {e}"),
            )
        })?
    };
    let timeout =
        std::time::Duration::from_millis(request.timeout_ms.unwrap_or(10_000).min(600_000));
    if let Some(peer) = &request.peer {
        let connected = state.sync.status().await.iter().any(|s| &s.peer == peer);
        if !connected {
            return Err((
                axum::http::StatusCode::NOT_FOUND,
                format!("not connected to {peer} (see GET /peers)"),
            ));
        }
    }
    // A store that cannot serve holds nothing for sure: what it took in since its last durable
    // commit is rolled back when it reopens.
    let store_serves = || async {
        state.store.call(|s| s.flush()).recv().await.map_err(|e| {
            let why = crate::ops::durability::explain(&e, &state.data_dir);
            (
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                format!("not in sync: the store cannot make what it holds durable: {why}"),
            )
        })
    };
    store_serves().await?;
    let started = Instant::now();
    let (converged, peers) = state.sync.sync(request.peer, timeout).await;
    // In step with every peer, and durable: what sync applied is committed lazily.
    if converged {
        store_serves().await?;
    }
    Ok(Json(SyncReport {
        converged,
        waited_ms: started.elapsed().as_millis() as u64,
        peers: peers.into_iter().map(PeerSync::from).collect(),
    }))
}

#[derive(Debug, serde::Deserialize)]
struct FleetParams {
    since_ms: Option<i64>,
}

/// The fleet as this node's rollups describe it (on the cloud: every zone).
async fn get_fleet(
    State(state): State<Arc<AppState>>,
    axum::extract::Query(params): axum::extract::Query<FleetParams>,
) -> Result<Json<crdt_store::FleetView>, ApiError> {
    let mut view = state
        .store
        .call(move |s| s.fleet(params.since_ms))
        .recv()
        .await
        .map_err(read_failed)?;
    // Without the mesh's view (stopping) the figures are still worth answering, unmarked.
    if let Ok(hierarchy) = state.mesh.hierarchy().await {
        crate::fleet::hierarchy::mark_stale_zones(&mut view, &hierarchy.aggregates, state.role);
        crate::fleet::hierarchy::mark_split_zones(&mut view, &hierarchy.split);
    }
    Ok(Json(view))
}
