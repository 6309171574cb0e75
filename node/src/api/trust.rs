//! `POST /mesh/cas` (admin): CA records that `mesh rotate-ca` signed, stored through the
//! running node once it has checked that its peers would take them.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use crdt_store::{CaRecord, DocName, MeshRegistry};
use serde::Deserialize;

use crate::api::{ApiError, AppState, read_failed, store_failed};

#[derive(Debug, Deserialize)]
struct CaRecords {
    records: BTreeMap<String, CaRecord>,
}

pub async fn post_cas(
    State(state): State<Arc<AppState>>,
    body: String,
) -> Result<Json<serde_json::Value>, ApiError> {
    let request: CaRecords = serde_json::from_str(&body).map_err(|e| {
        (
            StatusCode::BAD_REQUEST,
            format!("the body must be {{\"records\": {{<fingerprint>: <record>}}}}: {e}"),
        )
    })?;
    let mut registry: MeshRegistry = state
        .store
        .call(|s| s.read::<MeshRegistry>(&DocName::Mesh))
        .recv()
        .await
        .map_err(read_failed)?;
    registry.cas.extend(request.records.clone());
    let view = crate::security::trust::evaluate(
        &registry,
        &state.health.mesh_id,
        &state.writer.trust.all(),
    )
    .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")))?;
    // Refused here rather than spread: every peer would ignore it.
    for fp in request.records.keys() {
        if let Some(why) = view.ignored.get(fp) {
            return Err((
                StatusCode::FORBIDDEN,
                format!("refused: the record of CA {fp} is {why}"),
            ));
        }
    }
    let records = request.records;
    let stored = records.len();
    state
        .store
        .call(move |s| s.update::<MeshRegistry, _>(&DocName::Mesh, |mesh| mesh.cas.extend(records)))
        .recv()
        .await
        .map_err(store_failed(&state))?;
    Ok(Json(serde_json::json!({ "stored": stored })))
}
