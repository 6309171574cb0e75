//! The store's encryption through the HTTP API: `GET /store/keys` and
//! `POST /store/rotate-key` (admin), done by the running node, which holds the store.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;

use crate::api::{ApiError, AppState, operation_failed};
use crate::security::store_key::{self, KeysView, Rotation};

#[derive(Debug, Default, Deserialize)]
struct RotateRequest {
    /// Retire the old key (a rotation whose key the node does not keep in a file).
    #[serde(default)]
    finish: bool,
}

pub async fn get_keys(State(state): State<Arc<AppState>>) -> Result<Json<KeysView>, ApiError> {
    let source = state.store_key.clone();
    state
        .store
        .call(move |s| {
            store_key::view(s, source.as_ref()).map_err(|e| crdt_store::StoreError::Sealed {
                key: "the key table".into(),
                reason: format!("{e:#}"),
            })
        })
        .recv()
        .await
        .map(Json)
        .map_err(crate::api::store_failed(&state))
}

/// Rotates the store key (or finishes a rotation), then wakes the background re-seal.
pub async fn post_rotate_key(
    State(state): State<Arc<AppState>>,
    body: String,
) -> Result<Json<Rotation>, ApiError> {
    let request: RotateRequest = if body.trim().is_empty() {
        RotateRequest::default()
    } else {
        serde_json::from_str(&body).map_err(|e| {
            (
                StatusCode::BAD_REQUEST,
                format!("the body must be {{\"finish\": true|false}}: {e}"),
            )
        })?
    };
    let Some(source) = state.store_key.clone() else {
        return Err((
            StatusCode::CONFLICT,
            format!(
                "the store of {} is not encrypted (store.encryption is off): there is no key to \
                 rotate",
                state.data_dir.display()
            ),
        ));
    };
    let data_dir = state.data_dir.clone();
    // Errors other than the store's (a key file that cannot be written, a finish before the
    // new key is installed) travel back as text.
    let outcome = state
        .store
        .call(move |s| {
            Ok(if request.finish {
                store_key::finish(s, &source, &data_dir)
            } else {
                store_key::rotate(s, &source, &data_dir)
            }
            .map_err(|e| format!("{e:#}")))
        })
        .recv()
        .await
        .map_err(crate::api::store_failed(&state))?;
    match outcome {
        Ok(rotation) => {
            state.reseal.notify_one();
            Ok(Json(rotation))
        }
        Err(why) => Err(operation_failed(&state)(anyhow::anyhow!(why))),
    }
}
