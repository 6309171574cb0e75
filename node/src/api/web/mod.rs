//! The web view: `GET /` serves a page (embedded in the binary: sites run offline, with no CDN)
//! that logs in with a token, reads the same endpoints the CLI reads, and redraws when
//! `GET /events` (server-sent events) says something changed. The page holds no data of its
//! own; every figure on it comes through a token-checked endpoint.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use tokio::sync::broadcast::error::RecvError;

use super::AppState;
use super::auth::Caller;

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");

/// How often the page is told to look again when no document changed: peers' states and the
/// host's figures change without a document changing.
const TICK: Duration = Duration::from_secs(2);
/// Changes arriving this close together make one event: a busy node changes documents many
/// times a second, and the page redraws from a handful of requests each time.
const COALESCE: Duration = Duration::from_millis(250);

/// Static assets change only with the binary: a browser may keep them for a while, and
/// revalidate after.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

pub async fn get_index() -> Response {
    let mut response = asset("text/html; charset=utf-8", INDEX_HTML);
    // The page loads nothing from elsewhere and is not to be framed by another site.
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        axum::http::HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; style-src 'self'; frame-ancestors 'none'",
        ),
    );
    response
}

pub async fn get_app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

pub async fn get_style_css() -> Response {
    asset("text/css; charset=utf-8", STYLE_CSS)
}

/// Who the token is: the page shows its role and the actions the role allows.
#[derive(Debug, serde::Serialize)]
pub struct Session {
    pub name: String,
    pub role: String,
    pub node_id: String,
    pub node: String,
}

pub async fn get_session(
    State(state): State<Arc<AppState>>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> Json<Session> {
    Json(Session {
        name: caller.name,
        role: caller.role.to_string(),
        node_id: state.health.node_id.clone(),
        node: state.health.name.clone(),
    })
}

/// `GET /events`: `change` when documents changed (coalesced), `tick` every two seconds
/// otherwise. The token comes in the query: `EventSource` cannot set headers.
pub async fn get_events(
    State(state): State<Arc<AppState>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let changes = state.changes.doc_changes();
    let stream = futures_util::stream::unfold(changes, |mut changes| async move {
        let event = tokio::select! {
            changed = changes.recv() => match changed {
                Ok(_) | Err(RecvError::Lagged(_)) => {
                    let until = tokio::time::Instant::now() + COALESCE;
                    while let Ok(Ok(_) | Err(RecvError::Lagged(_))) =
                        tokio::time::timeout_at(until, changes.recv()).await
                    {}
                    Event::default().event("change").data("docs")
                }
                // The node is stopping.
                Err(RecvError::Closed) => return None,
            },
            _ = tokio::time::sleep(TICK) => Event::default().event("tick").data(""),
        };
        Some((Ok(event), changes))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
