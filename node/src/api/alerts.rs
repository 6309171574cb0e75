//! `GET /alerts` (monitor): the rules in force and the alerts held here, this node's or, with
//! `fleet=true`, every node's below it; `POST /alerts/rules` (admin, on a control node):
//! apply or withdraw fleet-wide rules.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use crdt_store::{DocName, MeshRegistry};
use serde::{Deserialize, Serialize};

use crate::api::{ApiError, AppState, read_failed};
use crate::ops::alerts::{AlertsView, RuleConfig, driver};

/// How far back resolved alerts are listed unless asked otherwise.
const RECENT_MS: i64 = 24 * 3_600_000;

#[derive(Debug, Deserialize)]
pub struct AlertsQuery {
    #[serde(default)]
    fleet: bool,
    /// Resolved alerts since (ms since the epoch); a day back by default.
    since: Option<i64>,
}

pub async fn get_alerts(
    State(state): State<Arc<AppState>>,
    Query(query): Query<AlertsQuery>,
) -> Result<Json<AlertsView>, ApiError> {
    let (rules, refused_rules) = state.alerts.rules();
    let me = state.health.node_id.clone();
    let since = query
        .since
        .unwrap_or_else(|| crate::node::now_ms() - RECENT_MS);
    let fleet = query.fleet;
    let alerts = state
        .store
        .call(move |s| driver::held_alerts(s, &me, fleet, since))
        .recv()
        .await
        .map_err(read_failed)?;
    Ok(Json(AlertsView {
        node: state.health.node_id.clone(),
        fleet,
        rules,
        refused_rules,
        alerts,
    }))
}

/// `POST /alerts/rules`: rules to apply (replacing those of the same name) and names to
/// withdraw.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct RulesRequest {
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    #[serde(default)]
    pub withdraw: Vec<String>,
}

/// What was written.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct RulesApplied {
    pub applied: Vec<String>,
    pub withdrawn: Vec<String>,
}

pub async fn post_rules(
    State(state): State<Arc<AppState>>,
    body: String,
) -> Result<Json<RulesApplied>, ApiError> {
    let request: RulesRequest = serde_json::from_str(&body).map_err(|e| {
        (
            StatusCode::BAD_REQUEST,
            format!("the body must be {{\"rules\": [...], \"withdraw\": [names]}}: {e}"),
        )
    })?;
    let applied = apply(&state, request).await?;
    Ok(Json(applied))
}

async fn apply(state: &AppState, request: RulesRequest) -> Result<RulesApplied, ApiError> {
    let bad = |e: anyhow::Error| (StatusCode::BAD_REQUEST, format!("{e:#}"));
    if request.rules.is_empty() && request.withdraw.is_empty() {
        return Err((
            StatusCode::BAD_REQUEST,
            "no rule to apply or withdraw".into(),
        ));
    }
    crate::ops::alerts::rules::check_all(
        &request.rules,
        &crate::ops::alerts::rules::Origin::Config,
    )
    .map_err(bad)?;
    let mut changes: Vec<(String, Option<RuleConfig>)> = request
        .rules
        .iter()
        .map(|r| (r.name.trim().to_owned(), Some(r.clone())))
        .collect();
    changes.extend(request.withdraw.iter().map(|n| (n.clone(), None)));
    let signed = driver::sign_fleet_rules(&state.writer, &changes, crate::node::now_ms())
        .map_err(|e| (StatusCode::FORBIDDEN, format!("{e:#}")))?;
    let withdraw = request.withdraw.clone();
    let unknown = state
        .store
        .call(move |s| {
            s.update::<MeshRegistry, _>(&DocName::Mesh, |m| {
                let unknown: Vec<String> = withdraw
                    .iter()
                    .filter(|n| !m.alert_rules.contains_key(*n))
                    .cloned()
                    .collect();
                if unknown.is_empty() {
                    for (name, text) in signed {
                        m.alert_rules.insert(name, text);
                    }
                }
                unknown
            })
        })
        .recv()
        .await
        .map_err(crate::api::store_failed(state))?;
    if !unknown.is_empty() {
        return Err((
            StatusCode::NOT_FOUND,
            format!(
                "no fleet alert rule is named {}: nothing was changed",
                unknown.join(", ")
            ),
        ));
    }
    Ok(RulesApplied {
        applied: request
            .rules
            .iter()
            .map(|r| r.name.trim().to_owned())
            .collect(),
        withdrawn: request.withdraw,
    })
}
