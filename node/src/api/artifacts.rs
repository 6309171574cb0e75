//! The artifact routes (see [`crate::fleet::artifacts`]):
//! `GET /artifacts` and `GET /artifacts/{artifact}` (monitor), `GET /artifacts/{artifact}/content`
//! (monitor: the bytes, each chunk checked as it is read), `POST /artifacts?name=N` (admin: the
//! body is the file), `DELETE /artifacts/{artifact}` and `POST /artifacts/gc` (admin),
//! `POST /artifacts/{artifact}/fetch` (operator: make it whole here, from peers; answers when
//! it is).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use crate::api::{ApiError, AppState};
use crate::fleet::artifacts::{self, Added, Collected, Inventory, Refusal, Shown};

/// The status an artifact operation's error answers: what was asked for (404, 400), the disk
/// (507 when full), anything else 500.
fn status_of(e: &anyhow::Error) -> StatusCode {
    for cause in e.chain() {
        if let Some(refusal) = cause.downcast_ref::<Refusal>() {
            return match refusal {
                Refusal::NotFound(_) => StatusCode::NOT_FOUND,
                Refusal::BadInput(_) => StatusCode::BAD_REQUEST,
            };
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::StorageFull
        {
            return StatusCode::INSUFFICIENT_STORAGE;
        }
    }
    StatusCode::INTERNAL_SERVER_ERROR
}

fn failed(e: anyhow::Error) -> ApiError {
    (status_of(&e), format!("{e:#}"))
}

/// Fetches what this node lacks of an artifact from its peers. An artifact known here is named
/// as usual; one not known at all by its whole id.
pub async fn post_fetch(
    State(state): State<Arc<AppState>>,
    Path(what): Path<String>,
) -> Result<Json<artifacts::fetch::Fetched>, ApiError> {
    let asked = what.clone();
    let id = state
        .artifacts
        .with(move |s| Ok(s.resolve(&asked).ok()))
        .await
        .map_err(failed)?
        .unwrap_or(what);
    artifacts::fetch::fetch(&state.sync, &state.artifacts, &id)
        .await
        .map(Json)
        .map_err(failed)
}

pub async fn get_artifacts(
    State(state): State<Arc<AppState>>,
) -> Result<Json<Inventory>, ApiError> {
    let cap = state.artifacts.cap;
    let mut inventory = state
        .artifacts
        .with(move |s| artifacts::inventory(s, cap))
        .await
        .map_err(failed)?;
    let moved = state.sync.transfer_stats().await;
    inventory.transfer = Some(artifacts::Moved {
        blobs_received: moved.blobs_received,
        bytes_received: moved.bytes_received,
        blobs_served: moved.blobs_served,
        bytes_served: moved.bytes_served,
        blobs_refused: moved.blobs_refused,
    });
    Ok(Json(inventory))
}

pub async fn get_artifact(
    State(state): State<Arc<AppState>>,
    Path(what): Path<String>,
) -> Result<Json<Shown>, ApiError> {
    state
        .artifacts
        .with(move |s| artifacts::show(s, &what))
        .await
        .map(Json)
        .map_err(failed)
}

#[derive(Debug, serde::Deserialize)]
pub struct AddQuery {
    name: String,
    /// The manifest format (`artifacts::store::MANIFEST_FORMAT` when absent).
    format: Option<u32>,
}

/// The body is written to a file beside the store as it arrives (an artifact may be larger
/// than the node's memory), then added from there; the answer comes once it is durable.
pub async fn post_artifact(
    State(state): State<Arc<AppState>>,
    Query(AddQuery { name, format }): Query<AddQuery>,
    body: axum::body::Body,
) -> Result<Json<Added>, ApiError> {
    let incoming = state
        .artifacts
        .with(|s| Ok(s.incoming_dir()?))
        .await
        .map_err(failed)?;
    let upload = incoming.join(format!(
        "upload-{}-{}",
        std::process::id(),
        crate::node::now_ms()
    ));
    let received = async {
        let mut file = tokio::fs::File::create(&upload).await?;
        let mut stream = body.into_data_stream();
        while let Some(frame) = stream.next().await {
            let frame = frame.map_err(std::io::Error::other)?;
            file.write_all(&frame).await?;
        }
        file.flush().await?;
        Ok::<_, std::io::Error>(())
    }
    .await;
    if let Err(e) = received {
        let _ = tokio::fs::remove_file(&upload).await;
        let e = anyhow::Error::from(e).context("receiving the artifact's bytes failed");
        return Err(failed(e));
    }
    let path = upload.clone();
    let added = state
        .artifacts
        .with(move |s| {
            let format = format.unwrap_or(artifacts::store::MANIFEST_FORMAT);
            s.add_in_format(&path, &name, crate::node::now_ms(), format)
        })
        .await;
    let _ = tokio::fs::remove_file(&upload).await;
    added.map(Json).map_err(failed)
}

/// The artifact's bytes, streamed chunk by chunk; its SHA-256 goes in a header so that the
/// receiver checks the whole. A chunk found damaged midway ends the stream early, which the
/// receiver sees as a short body.
pub async fn get_artifact_content(
    State(state): State<Arc<AppState>>,
    Path(what): Path<String>,
) -> Result<Response, ApiError> {
    let now = crate::node::now_ms();
    let (stored, id, manifest) = state
        .artifacts
        .with(move |s| {
            let id = s.resolve(&what)?;
            let (_, manifest, missing) = s.one(&id)?;
            if !missing.is_empty() {
                anyhow::bail!(Refusal::NotFound(format!(
                    "artifact {id} is not complete on this node: {} chunks are missing",
                    missing.len()
                )));
            }
            s.touch(&id, now)?;
            Ok((s.chunks().clone(), id, manifest))
        })
        .await
        .map_err(failed)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(4);
    let chunks = manifest.chunks.clone();
    tokio::task::spawn_blocking(move || {
        for chunk in chunks {
            let read = match stored.read(&chunk.hash) {
                Ok(Some(bytes)) => Ok(bytes),
                Ok(None) => Err(std::io::Error::other(format!(
                    "chunk {} of artifact {id} is gone or damaged",
                    chunk.hash
                ))),
                Err(e) => Err(e),
            };
            let stop = read.is_err();
            if tx.blocking_send(read).is_err() || stop {
                return;
            }
        }
    });
    let stream = tokio_stream_of(rx);
    Ok((
        [
            (
                axum::http::header::CONTENT_TYPE,
                "application/octet-stream".to_owned(),
            ),
            (
                axum::http::header::CONTENT_LENGTH,
                manifest.size.to_string(),
            ),
            (
                axum::http::HeaderName::from_static("x-artifact-sha256"),
                manifest.sha256.clone(),
            ),
        ],
        axum::body::Body::from_stream(stream),
    )
        .into_response())
}

fn tokio_stream_of(
    mut rx: tokio::sync::mpsc::Receiver<std::io::Result<bytes::Bytes>>,
) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

pub async fn delete_artifact(
    State(state): State<Arc<AppState>>,
    Path(what): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    state
        .artifacts
        .with(move |s| {
            let id = s.resolve(&what)?;
            s.remove(&id)?;
            Ok(serde_json::json!({ "removed": id }))
        })
        .await
        .map(Json)
        .map_err(failed)
}

pub async fn post_gc(State(state): State<Arc<AppState>>) -> Result<Json<Collected>, ApiError> {
    state
        .artifacts
        .collect(None)
        .await
        .map(Json)
        .map_err(failed)
}
