//! The rollout routes (see [`crate::run::rollout`]): `POST /rollouts/{workflow}` (admin: a new
//! version rolled out in stages), `GET /rollouts/{workflow}` (monitor: where it stands, node by
//! node), `POST /rollouts/{workflow}/{pause|resume|abort}` (admin, on a control node).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use crdt_store::docs::rollout::Control;

use crate::api::{ApiError, AppState, operation_failed};
use crate::run::rollout::{self, RolloutStatus, StartRequest};

/// A refusal for what was asked (409), a store failure by its kind, a right missing (403).
fn refused(state: &AppState) -> impl Fn(anyhow::Error) -> ApiError + '_ {
    move |e| {
        let from_store = e
            .chain()
            .any(|c| c.is::<crdt_store::StoreError>() || c.is::<crate::run::history::Refused>())
            || e.chain()
                .any(|c| c.is::<crate::security::workflow_rights::NotPermitted>());
        if from_store {
            return operation_failed(state)(e);
        }
        (StatusCode::CONFLICT, format!("{e:#}"))
    }
}

pub(crate) async fn on_store<T: Send + 'static>(
    state: &Arc<AppState>,
    f: impl FnOnce(&mut crdt_store::Store, &crate::run::workflow::Writer) -> anyhow::Result<T>
    + Send
    + 'static,
) -> Result<T, ApiError> {
    let writer = state.writer.clone();
    state
        .store
        .call(move |s| Ok(f(s, &writer)))
        .recv()
        .await
        .map_err(crate::api::store_failed(state))?
        .map_err(refused(state))
}

pub async fn post_rollout(
    State(state): State<Arc<AppState>>,
    Path(workflow): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<crdt_store::WorkflowDoc>, ApiError> {
    // The CLI sends its JSON as text, as for every other route.
    let request: StartRequest = serde_json::from_slice(&body).map_err(|e| {
        (
            StatusCode::BAD_REQUEST,
            format!("not a rollout request: {e}"),
        )
    })?;
    if request.workflow != workflow {
        return Err((
            StatusCode::BAD_REQUEST,
            format!(
                "the request is for workflow `{}`, the path names `{workflow}`",
                request.workflow
            ),
        ));
    }
    let stored = on_store(&state, move |s, w| rollout::start_request(s, request, w)).await?;
    state.scheduler.reload().await;
    Ok(Json(stored))
}

pub async fn get_rollout(
    State(state): State<Arc<AppState>>,
    Path(workflow): Path<String>,
) -> Result<Json<RolloutStatus>, ApiError> {
    on_store(&state, move |s, w| {
        rollout::status(s, &workflow, &w.mesh_id, &w.trust.all())
    })
    .await
    .map(Json)
}

pub async fn post_control(
    State(state): State<Arc<AppState>>,
    Path((workflow, action)): Path<(String, String)>,
) -> Result<Json<Control>, ApiError> {
    let Some(action) = rollout::action_named(&action) else {
        return Err((
            StatusCode::NOT_FOUND,
            format!("no rollout action `{action}`: pause, resume or abort"),
        ));
    };
    let control = on_store(&state, move |s, w| {
        rollout::control(s, &workflow, action, w)
    })
    .await?;
    state.scheduler.reload().await;
    Ok(Json(control))
}
