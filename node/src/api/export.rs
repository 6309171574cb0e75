//! `GET /export` (monitor): where the export into PostgreSQL stands (see [`crate::export`]).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;

use crate::api::AppState;
use crate::export::ExportStatus;

pub async fn get_export(State(state): State<Arc<AppState>>) -> Json<ExportStatus> {
    Json(state.export.status())
}
