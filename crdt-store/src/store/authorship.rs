//! Who wrote what a peer sent: every change is attributed to the node whose id is its actor
//! (each node writes with its own id as actor), and a change to what its author has no right to
//! is refused before anything of the message is stored. Actors can be forged by whoever builds
//! changes by hand; the documents where that matters most, workflows, carry signatures on top
//! ([`crate::WriteRules`]).
//!
//! - `results/<node>/...` and `alerts/<node>/...`: changes by `<node>` only.
//! - `mesh`: an entry `nodes/<node>` and everything in it by `<node>` only; revocation, policy
//!   and CA decisions, and fleet-wide alert rules, by anyone (each is signed, by the mesh CA or
//!   a control node, and nodes obey only valid ones).
//! - `workflow/<id>`: every version new here must pass the node's write rules.
//! - rollups: not checked here (who aggregates a zone is the election's view, which a receiver
//!   may not share yet).
//!
//! The genesis change of a document (the same bytes on every node, by a fixed actor) is
//! recognised by its hash, so the genesis actor lends no right to anything else.

use std::collections::BTreeSet;

use automerge::{ActorId, AutoCommit, ChangeHash, Prop, ReadDoc};
use samod_core::DocumentId;

use super::Store;
use crate::docs::{self, MeshRegistry, ResultsDoc, RollupDoc, WorkflowDoc, WorkflowVersions};
use crate::names::DocName;

impl Store {
    /// Whether the changes that came after `before` into document `doc` (named `name`) were
    /// written by authors with the right to them; the error names the author and the rule.
    pub(super) fn check_authorship(
        &mut self,
        doc: &DocumentId,
        name: &str,
        before: &[ChangeHash],
    ) -> Result<(), String> {
        let Ok(parsed) = name.parse::<DocName>() else {
            return Ok(());
        };
        let rules = self.config.write_rules.clone();
        // The registry, for the rules to read the mesh's settings from; only for workflows.
        let registry = match (&parsed, &rules) {
            (DocName::Workflow { .. }, Some(_)) => self
                .registry()
                .map_err(|e| format!("the registry, which the rules need, is unreadable: {e}"))?,
            _ => std::sync::Arc::new(MeshRegistry::default()),
        };
        let cached = &mut self
            .cache
            .get_mut(doc)
            .expect("the applied document is cached")
            .doc;
        let genesis = genesis_hashes(&parsed);
        let new: Vec<automerge::Change> = cached
            .get_changes(before)
            .into_iter()
            .filter(|c| !genesis.contains(&c.hash()))
            .collect();
        let cached = &mut *cached;
        match &parsed {
            DocName::Results { node, .. } | DocName::Alerts { node, .. } => {
                let owner = ActorId::from(node.as_bytes());
                if let Some(c) = new.iter().find(|c| *c.actor_id() != owner) {
                    return Err(format!(
                        "{} wrote to the {} of node {node}, which only {node} writes",
                        author(c.actor_id()),
                        parsed.kind()
                    ));
                }
            }
            DocName::Mesh => check_registry(cached, &new)?,
            DocName::Workflow { .. } => {
                if let Some(rules) = rules {
                    let standing = |d: &AutoCommit| -> BTreeSet<String> {
                        docs::hydrate::<WorkflowVersions>(&parsed, d)
                            .map(|v| v.versions.iter().map(WorkflowDoc::encode).collect())
                            .unwrap_or_default()
                    };
                    let earlier = standing(&cached.fork_at(before).unwrap_or_default());
                    let now = docs::hydrate::<WorkflowVersions>(&parsed, cached)
                        .map(|v| v.versions)
                        .unwrap_or_default();
                    for version in now.iter().filter(|v| !earlier.contains(&v.encode())) {
                        rules
                            .check_workflow_version(version, &registry)
                            .map_err(|why| {
                                format!(
                                    "version {} by {} is refused: {why}",
                                    version.version, version.updated_by
                                )
                            })?;
                    }
                }
            }
            DocName::Rollup { .. } => {}
        }
        Ok(())
    }
}

impl Store {
    /// What a client of the WebSocket endpoint may not write even with the right to write:
    /// any document but a workflow, and a workflow value that is not a readable definition (a JavaScript string becomes an
    /// Automerge Text, which would merge character by character). A peer's such value is kept
    /// and shown as rejected, since the peer holds it anyway; a client's is refused before
    /// it is stored, so it never reaches the mesh.
    pub(super) fn check_client_change(
        &mut self,
        doc: &DocumentId,
        name: &str,
        before: &[ChangeHash],
    ) -> Result<(), String> {
        let parsed = match name.parse::<DocName>() {
            Ok(parsed @ DocName::Workflow { .. }) => parsed,
            // Results, rollups, alerts and the registry are what nodes write as they run,
            // elect and join; a client's change to one would speak for a node.
            Ok(other) => {
                return Err(format!(
                    "{} documents are written by nodes only; a client may change workflows",
                    other.kind()
                ));
            }
            Err(_) => return Err(format!("{name} is not a document a client may change")),
        };
        let cached = &mut self
            .cache
            .get_mut(doc)
            .expect("the applied document is cached")
            .doc;
        let rejected = |d: &AutoCommit| {
            docs::hydrate::<WorkflowVersions>(&parsed, d)
                .map(|v| v.rejected)
                .unwrap_or_default()
        };
        let earlier = rejected(&cached.fork_at(before).unwrap_or_default());
        let now = rejected(cached);
        match now.iter().find(|r| !earlier.contains(r)) {
            Some(new) => Err(format!(
                "the definition written is not readable ({}): write the JSON of a whole \
                 definition as one string value (an ImmutableString in JavaScript)",
                new.reason
            )),
            None => Ok(()),
        }
    }

    /// Hands the newest workflow version a client wrote to `vouch`, and writes the version it
    /// gives over the client's (by this node, into the cached document, so that the
    /// transaction stores both and nothing of the client's alone ever stands).
    pub(super) fn vouch_for_client(
        &mut self,
        doc: &DocumentId,
        name: &str,
        before: &[ChangeHash],
        vouch: &super::sync::Vouch,
    ) -> Result<(), String> {
        let Ok(parsed @ DocName::Workflow { .. }) = name.parse::<DocName>() else {
            return Ok(());
        };
        let cached = &mut self
            .cache
            .get_mut(doc)
            .expect("the applied document is cached")
            .doc;
        let earlier =
            docs::hydrate::<WorkflowVersions>(&parsed, &cached.fork_at(before).unwrap_or_default())
                .map(|v| v.versions)
                .unwrap_or_default();
        let known: BTreeSet<String> = earlier.iter().map(WorkflowDoc::encode).collect();
        let now = docs::hydrate::<WorkflowVersions>(&parsed, cached)
            .map(|v| v.versions)
            .unwrap_or_default();
        // Newest first: the client's latest intent is the one to stand.
        let Some(written) = now.iter().find(|v| !known.contains(&v.encode())) else {
            return Ok(());
        };
        let signed = vouch(written, &earlier)?;
        use crate::docs::TypedDoc;
        signed
            .write_to(cached)
            .map_err(|e| format!("writing the vouched version failed: {e}"))?;
        cached.commit();
        Ok(())
    }
}

/// A change's author as people read it: the node id its actor spells, or the actor in hex.
fn author(actor: &ActorId) -> String {
    match std::str::from_utf8(actor.to_bytes()) {
        Ok(id) if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) => {
            format!("node {id}")
        }
        _ => format!("actor {actor}"),
    }
}

/// The hashes of a document's genesis change(s) under `name`.
fn genesis_hashes(name: &DocName) -> BTreeSet<ChangeHash> {
    let genesis = match name {
        DocName::Mesh => docs::genesis_doc::<MeshRegistry>(name),
        DocName::Workflow { .. } => docs::genesis_doc::<WorkflowDoc>(name),
        DocName::Results { .. } => docs::genesis_doc::<ResultsDoc>(name),
        DocName::Rollup { .. } => docs::genesis_doc::<RollupDoc>(name),
        DocName::Alerts { .. } => docs::genesis_doc::<docs::AlertsDoc>(name),
    };
    genesis
        .map(|mut d| d.get_heads().into_iter().collect())
        .unwrap_or_default()
}

/// In the registry each change touches only its author's own entry, or revocation decisions.
fn check_registry(doc: &AutoCommit, new: &[automerge::Change]) -> Result<(), String> {
    for change in new {
        let actor = change.actor_id();
        for op in change.decode().operations {
            let target = match &op.obj {
                automerge::legacy::ObjectId::Root => None,
                automerge::legacy::ObjectId::Id(id) => Some(id.to_string()),
            };
            // The path from the root to the key the op writes.
            let mut path: Vec<String> = match &target {
                None => Vec::new(),
                Some(id) => {
                    let obj = doc
                        .import_obj(id)
                        .map_err(|e| format!("an op on an unknown object {id}: {e}"))?;
                    doc.parents(&obj)
                        .map_err(|e| format!("an op on object {id} of no known place: {e}"))?
                        .path()
                        .into_iter()
                        .map(|(_, prop)| prop_text(&prop))
                        .collect()
                }
            };
            if let automerge::legacy::Key::Map(key) = &op.key {
                path.push(key.to_string());
            }
            let allowed = match path.first().map(String::as_str) {
                Some("revoked" | "policy" | "cas" | "alert_rules" | "releases") => true,
                Some("nodes") => path
                    .get(1)
                    .is_some_and(|entry| *actor == ActorId::from(entry.as_bytes())),
                _ => false,
            };
            if !allowed {
                return Err(format!(
                    "{} wrote `{}` of the registry, where each node writes only its own entry",
                    author(actor),
                    path.join("/")
                ));
            }
        }
    }
    Ok(())
}

fn prop_text(prop: &Prop) -> String {
    match prop {
        Prop::Map(key) => key.clone(),
        Prop::Seq(index) => index.to_string(),
    }
}
