//! `GET /resources` (monitor): the resource monitor's latest sample and its history, the last
//! hour at full resolution and the day downsampled.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use serde::{Deserialize, Serialize};

use crate::api::{ApiError, AppState};
use crate::ops::monitor::Sample;

#[derive(Debug, Deserialize)]
pub struct ResourcesQuery {
    /// Only samples taken at or after this (ms since the epoch).
    since_ms: Option<i64>,
}

/// What `GET /resources` answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResourcesView {
    pub latest: Option<Sample>,
    /// The last hour, one sample per interval.
    pub recent: Vec<Sample>,
    /// The day, one aggregated sample per step.
    pub day: Vec<Sample>,
}

pub async fn get_resources(
    State(state): State<Arc<AppState>>,
    Query(query): Query<ResourcesQuery>,
) -> Result<Json<ResourcesView>, ApiError> {
    let Some(monitor) = &state.monitor else {
        return Err((
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "the resource monitor does not run on this node".into(),
        ));
    };
    Ok(Json(ResourcesView {
        latest: monitor.latest(),
        recent: monitor.history(query.since_ms, false),
        day: monitor.history(query.since_ms, true),
    }))
}
