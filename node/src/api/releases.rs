//! The release routes (see [`crate::fleet::releases`]): `POST /releases` (admin, on a control
//! node: a binary already added as an artifact, published as a signed release),
//! `POST /releases/{version}/rollout` (admin: rolled out in stages),
//! `POST /releases/{version}/{pause|resume|abort}` (admin, on a control node: its rollout),
//! `GET /releases` (monitor: what is published and where the rollout stands, node by node).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use crdt_store::docs::release::Release;
use serde::{Deserialize, Serialize};

use crate::api::rollouts::on_store;
use crate::api::{ApiError, AppState};
use crate::fleet::releases::{self, ReleaseStatus, RolloutRequest};

/// `POST /releases`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PublishRequest {
    pub version: String,
    /// The artifact holding the binary, on this node.
    pub artifact: String,
}

fn bad_request(what: &str) -> impl Fn(serde_json::Error) -> ApiError + '_ {
    move |e| (StatusCode::BAD_REQUEST, format!("not a {what}: {e}"))
}

pub async fn post_release(
    State(state): State<Arc<AppState>>,
    body: axum::body::Bytes,
) -> Result<Json<Release>, ApiError> {
    let request: PublishRequest =
        serde_json::from_slice(&body).map_err(bad_request("release request"))?;
    let artifact = request.artifact.clone();
    let (id, manifest) = state
        .artifacts
        .with(move |s| {
            let id = s.resolve(&artifact)?;
            let manifest = s.manifest(&id)?;
            Ok((id, manifest))
        })
        .await
        .map_err(|e| (StatusCode::NOT_FOUND, format!("{e:#}")))?;
    on_store(&state, move |s, w| {
        releases::publish(s, &request.version, &manifest, &id, w)
    })
    .await
    .map(Json)
}

/// `POST /releases/{version}/{rollout|pause|resume|abort}`.
pub async fn post_release_action(
    State(state): State<Arc<AppState>>,
    Path((version, action)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    if action == "rollout" {
        return post_release_rollout(state, version, body)
            .await
            .map(IntoResponse::into_response);
    }
    let Some(action) = crate::run::rollout::action_named(&action) else {
        return Err((
            StatusCode::NOT_FOUND,
            format!("no release action `{action}`: rollout, pause, resume or abort"),
        ));
    };
    on_store(&state, move |s, w| {
        releases::control(s, &version, action, w)
    })
    .await
    .map(|c| Json(c).into_response())
}

async fn post_release_rollout(
    state: Arc<AppState>,
    version: String,
    body: axum::body::Bytes,
) -> Result<Json<Release>, ApiError> {
    let request: RolloutRequest =
        serde_json::from_slice(&body).map_err(bad_request("release rollout request"))?;
    if request.version != version {
        return Err((
            StatusCode::BAD_REQUEST,
            format!(
                "the request is for release {}, the path names {version}",
                request.version
            ),
        ));
    }
    on_store(&state, move |s, w| releases::start_rollout(s, &request, w))
        .await
        .map(Json)
}

pub async fn get_releases(
    State(state): State<Arc<AppState>>,
) -> Result<Json<ReleaseStatus>, ApiError> {
    on_store(&state, |s, w| {
        let registry = s.registry()?;
        Ok(releases::status(&registry, &w.mesh_id, &w.trust.all()))
    })
    .await
    .map(Json)
}
