//! `GET /explain/doc` and `GET /explain/peer` (monitor): why a document is or is not in sync
//! with a peer, and why a node is or is not connected, answered from what the node holds and
//! saw (the share policy, sync state, the mesh's view of its peers, refusals), not guessed.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use crdt_store::{DocName, MeshRegistry};
use mesh::proto::membership::PeerState;
use mesh::proto::sync::DocClass;
use serde::{Deserialize, Serialize};

use crate::api::{ApiError, AppState, registry};
use crate::fleet::diagnostics::Seen;

#[derive(Debug, Deserialize)]
pub struct DocQuery {
    name: String,
    peer: Option<String>,
}

/// A document as it stands with each peer asked about.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DocExplanation {
    pub name: String,
    pub id: String,
    /// Whether this node holds it.
    pub held: bool,
    pub peers: Vec<DocWithPeer>,
}

/// A document and one peer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DocWithPeer {
    pub peer: String,
    pub peer_name: Option<String>,
    pub connected: bool,
    /// Whether the share policy lets the two nodes exchange it.
    pub shared: bool,
    /// The rule that decides it, in a sentence.
    pub rule: String,
    /// While connected and shared: whether it is known to be identical on both sides.
    pub in_sync: Option<bool>,
    /// Since when it has been pending with the peer (ms since the epoch), as sampled.
    pub pending_since_ms: Option<i64>,
    /// The last sync message about it from this peer that was refused, and why.
    pub last_error: Option<Seen>,
    /// The whole answer in a sentence.
    pub verdict: String,
}

/// Resolves a node named by id, id prefix or name.
fn resolve_node(registry: &MeshRegistry, peers: &[String], given: &str) -> Option<String> {
    if registry.nodes.contains_key(given) || peers.iter().any(|p| p == given) {
        return Some(given.to_owned());
    }
    let by_name: Vec<&String> = registry
        .nodes
        .iter()
        .filter(|(_, e)| e.name == given)
        .map(|(id, _)| id)
        .collect();
    if let [one] = by_name.as_slice() {
        return Some((*one).clone());
    }
    let by_prefix: Vec<&String> = registry
        .nodes
        .keys()
        .chain(peers.iter())
        .filter(|id| given.len() >= 4 && id.starts_with(given))
        .collect();
    match by_prefix.as_slice() {
        [one] => Some((*one).clone()),
        _ => None,
    }
}

pub async fn get_doc(
    State(state): State<Arc<AppState>>,
    Query(query): Query<DocQuery>,
) -> Result<Json<DocExplanation>, ApiError> {
    let name: DocName = query.name.parse().map_err(|e| {
        (
            StatusCode::BAD_REQUEST,
            format!("`{}` is not a document name: {e}", query.name),
        )
    })?;
    let label = name.to_string();
    let class = DocClass::of(&label).ok_or_else(|| {
        (
            StatusCode::BAD_REQUEST,
            format!("`{label}` is not a document this node replicates"),
        )
    })?;
    let named = name.clone();
    let (id, held) = state
        .store
        .call(move |s| {
            let id = s.document_id(&named);
            let held = s.resolve(&named.to_string()).is_ok();
            Ok((id, held))
        })
        .recv()
        .await
        .map_err(crate::api::read_failed)?;
    let registry = registry(&state).await;
    let policy = state.sync.share_policy().await;
    let statuses = state.sync.status().await;
    let mesh_peers = state.mesh.peers().await.unwrap_or_default();
    let connected: Vec<String> = mesh_peers
        .iter()
        .filter(|p| p.state == PeerState::Connected)
        .map(|p| p.node.clone())
        .collect();
    let known: Vec<String> = mesh_peers.iter().map(|p| p.node.clone()).collect();
    let peers: Vec<String> = match &query.peer {
        Some(given) => vec![resolve_node(&registry, &known, given).ok_or_else(|| {
            (
                StatusCode::NOT_FOUND,
                format!("no node `{given}` in this mesh's registry or among its peers"),
            )
        })?],
        None => connected.clone(),
    };
    let me = state.health.node_id.clone();
    let refusals = state.sync.diagnostics.sync_refusals(&id.to_string());
    let (me_admitted, my_rule) = policy.explain(&class, &me);
    let explained = peers
        .into_iter()
        .map(|peer| {
            let (admitted, rule) = policy.explain(&class, &peer);
            let shared = admitted && me_admitted;
            let rule = if admitted && !me_admitted {
                format!("{my_rule} (this node is not among them)")
            } else {
                rule
            };
            let is_connected = connected.contains(&peer);
            let status = statuses.iter().find(|s| s.peer == peer);
            let in_sync = (is_connected && shared)
                .then(|| status.is_some_and(|s| !s.pending.contains(&label)));
            let pending_since_ms = state.sync_watch.pending_since(&peer, &label);
            let last_error = refusals.get(&peer).cloned();
            let verdict = match (is_connected, shared, in_sync) {
                (_, false, _) => format!("not shared: {rule}"),
                (false, true, _) => "shared, but the peer is not connected: `rhizome explain \
                                     peer` says why"
                    .to_owned(),
                (true, true, Some(true)) => "in sync".to_owned(),
                (true, true, _) => format!(
                    "pending{}{}",
                    pending_since_ms
                        .map(|at| format!(" since {}", crdt_store::format_timestamp(at)))
                        .unwrap_or_default(),
                    last_error
                        .as_ref()
                        .map(|e| format!("; its last message was refused: {}", e.what))
                        .unwrap_or_default()
                ),
            };
            DocWithPeer {
                peer_name: registry.nodes.get(&peer).map(|e| e.name.clone()),
                peer,
                connected: is_connected,
                shared,
                rule,
                in_sync,
                pending_since_ms,
                last_error,
                verdict,
            }
        })
        .collect();
    Ok(Json(DocExplanation {
        name: label,
        id: id.to_string(),
        held,
        peers: explained,
    }))
}

#[derive(Debug, Deserialize)]
pub struct PeerQuery {
    node: String,
}

/// Why a node is or is not connected to this one.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerExplanation {
    /// As asked, resolved to a node id when it could be.
    pub node: String,
    pub name: Option<String>,
    /// `connected`, `dialling`, `disconnected`, or `unknown` (never met, not in the registry).
    pub state: String,
    pub addr: Option<String>,
    pub silent_ms: Option<u64>,
    /// Whether the mesh's registry holds an entry of it (it was a member at some point).
    pub registered: bool,
    pub zone: Option<String>,
    pub registered_addresses: Vec<String>,
    /// A valid revocation by the mesh CA, if any.
    pub revoked: Option<String>,
    pub last_up_ms: Option<i64>,
    pub last_down: Option<Seen>,
    /// Handshakes refused from its registered addresses, most recent last.
    pub refused: Vec<(String, Seen)>,
    /// Dials to its registered addresses that failed, most recent last.
    pub dials_failed: Vec<(String, Seen)>,
    /// How this node finds peers: mDNS interfaces (or off) and addresses it dials.
    pub discovery: String,
    /// The whole answer in a sentence.
    pub verdict: String,
}

pub async fn get_peer(
    State(state): State<Arc<AppState>>,
    Query(query): Query<PeerQuery>,
) -> Result<Json<PeerExplanation>, ApiError> {
    let registry = registry(&state).await;
    let mesh_peers = state.mesh.peers().await.unwrap_or_default();
    let known: Vec<String> = mesh_peers.iter().map(|p| p.node.clone()).collect();
    let resolved = resolve_node(&registry, &known, &query.node);
    let node = resolved.clone().unwrap_or_else(|| query.node.clone());
    let entry = registry.nodes.get(&node);
    let peer = mesh_peers.iter().find(|p| p.node == node);
    let state_name = match peer.map(|p| p.state) {
        Some(PeerState::Connected) => "connected",
        Some(PeerState::Dialling) => "dialling",
        Some(PeerState::Idle) => "disconnected",
        None if entry.is_some() => "disconnected",
        None => "unknown",
    };
    let revoked = crate::security::revocations::verdicts(
        &registry,
        &state.health.mesh_id,
        &state.writer.trust.all(),
    )
    .revoked
    .contains(&node)
    .then(|| {
        registry
            .revoked
            .get(&node)
            .map(|d| {
                format!(
                    "revoked by the mesh CA at {}: {}",
                    crdt_store::format_timestamp(d.revoked_ms),
                    d.reason
                )
            })
            .unwrap_or_else(|| "revoked by the mesh CA".into())
    });
    let addresses: Vec<String> = entry.map(|e| e.addresses.clone()).unwrap_or_default();
    let (refused, dials_failed) = state.sync.diagnostics.about_addresses(&addresses);
    let (last_up_ms, last_down) = state.sync.diagnostics.peer(&node);
    let at = |ms: i64| crdt_store::format_timestamp(ms);
    let verdict = if node == state.health.node_id {
        "this is the node answering".to_owned()
    } else if let Some(revoked) = &revoked {
        format!("{revoked}: every node refuses it at the handshake")
    } else if state_name == "connected" {
        format!(
            "connected{}",
            last_up_ms
                .map(|ms| format!(" since {}", at(ms)))
                .unwrap_or_default()
        )
    } else if let Some((addr, seen)) = refused.last() {
        format!(
            "its connection from {addr} was refused at the handshake at {}: {}",
            at(seen.at_ms),
            seen.what
        )
    } else if let Some((addr, seen)) = dials_failed.last() {
        format!(
            "dialling it at {addr} failed at {}: {}",
            at(seen.at_ms),
            seen.what
        )
    } else if let Some(down) = &last_down {
        format!("down since {}: {}", at(down.at_ms), down.what)
    } else if entry.is_some() {
        format!(
            "a member of this mesh (registered at {}) that this node has not met since it \
             started: it is not found by mDNS ({}) and none of its addresses answers",
            if addresses.is_empty() {
                "no address".to_owned()
            } else {
                addresses.join(", ")
            },
            state.discovery
        )
    } else {
        let strangers = state
            .sync
            .diagnostics
            .refusals()
            .into_iter()
            .filter(|(_, seen)| seen.what.contains("UnknownIssuer"))
            .map(|(addr, _)| addr)
            .collect::<Vec<_>>();
        format!(
            "no node `{}` has ever been a member of this mesh ({}) as this node knows it: it \
             never wrote its registry entry here, and mDNS ({}) has not found it{}",
            query.node,
            state.health.mesh_id,
            state.discovery,
            if strangers.is_empty() {
                String::new()
            } else {
                format!(
                    "; connections from {} were refused as of another mesh (their \
                     certificates are not of this mesh's CA)",
                    strangers.join(", ")
                )
            }
        )
    };
    Ok(Json(PeerExplanation {
        name: entry.map(|e| e.name.clone()),
        state: state_name.into(),
        addr: peer.and_then(|p| p.addr.clone()),
        silent_ms: peer.map(|p| p.silent_for.as_millis() as u64),
        registered: entry.is_some(),
        zone: entry.map(|e| e.zone.clone()),
        registered_addresses: addresses,
        revoked,
        last_up_ms,
        last_down,
        refused,
        dials_failed,
        discovery: state.discovery.clone(),
        verdict,
        node,
    }))
}
