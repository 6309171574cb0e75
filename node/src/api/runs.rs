//! Runs through the HTTP API: `POST /run/{workflow}` (token), `GET /status/{run}` and
//! `GET /schedule`, all answered by the node's [scheduler](crate::run::scheduler).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use crdt_store::ResultsQuery;
use serde::{Deserialize, Serialize};

use crate::api::{ApiError, AppState, read_failed};
use crate::run::scheduler::{Refusal, RunView, ScheduledView, accepted_ms};

/// What `POST /run/{workflow}` answers (202 Accepted).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunAccepted {
    pub run_id: String,
}

/// The HTTP status of a refused run.
pub fn refusal_status(refusal: &Refusal) -> StatusCode {
    match refusal {
        Refusal::UnknownWorkflow(_) => StatusCode::NOT_FOUND,
        Refusal::NotTargeted { .. } => StatusCode::CONFLICT,
        Refusal::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        Refusal::QueueFull { .. } => StatusCode::TOO_MANY_REQUESTS,
        Refusal::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// Accepts a run; the body, if any, is the run's input as JSON. Answers the run id at once.
pub async fn post_run(
    State(state): State<Arc<AppState>>,
    Path(workflow): Path<String>,
    body: axum::body::Body,
) -> Result<(StatusCode, Json<RunAccepted>), ApiError> {
    let limit = crdt_store::MAX_RUN_INPUT_BYTES;
    let too_large = || {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the run input is more than {limit} bytes (256 KiB), the limit for a run's input"
            ),
        )
    };
    let bytes = axum::body::to_bytes(body, limit + 1)
        .await
        .map_err(|_| too_large())?;
    if bytes.len() > limit {
        return Err(too_large());
    }
    let text = std::str::from_utf8(&bytes).map_err(|e| {
        (
            StatusCode::BAD_REQUEST,
            format!("the run input is not UTF-8 text: {e}"),
        )
    })?;
    let input =
        crate::run::prescan::run_input(text).map_err(|reason| (StatusCode::BAD_REQUEST, reason))?;
    // A run is accepted only when its record could be stored: not while the disk is under
    // the watermark or the store is recovering from a failed commit.
    crate::ops::durability::admit_write(&state.store, format!("accept a run of `{workflow}`"))
        .await
        .map_err(crate::api::store_failed(&state))?;
    match state.scheduler.submit(&workflow, input).await {
        Ok(run_id) => Ok((StatusCode::ACCEPTED, Json(RunAccepted { run_id }))),
        Err(refusal) => Err((refusal_status(&refusal), refusal.to_string())),
    }
}

/// A run's state: queued, running (with the steps that started), or finished with its whole
/// record. Finished runs the scheduler no longer holds are read from the store, so a run's
/// record stays reachable across restarts (until retention retires its window).
pub async fn get_status(
    State(state): State<Arc<AppState>>,
    Path(run_id): Path<String>,
) -> Result<Json<RunView>, ApiError> {
    if let Some(view) = state.scheduler.status(&run_id) {
        return Ok(Json(view));
    }
    let query = ResultsQuery {
        workflow: None,
        node: Some(state.health.node_id.clone()),
        since_ms: accepted_ms(&run_id),
    };
    let wanted = run_id.clone();
    let found = state
        .store
        .call(move |s| {
            let records = s.results(&query)?;
            Ok(records.into_iter().find(|r| r.run_id == wanted))
        })
        .recv()
        .await
        .map_err(read_failed)?;
    match found {
        Some(record) => Ok(Json(RunView::Finished {
            run_id,
            recorded: true,
            record,
        })),
        None => Err((
            StatusCode::NOT_FOUND,
            format!("no run `{run_id}` on this node"),
        )),
    }
}

/// Every workflow this node knows, with how it is scheduled here.
pub async fn get_schedule(State(state): State<Arc<AppState>>) -> Json<Vec<ScheduledView>> {
    Json(state.scheduler.workflows().await)
}
