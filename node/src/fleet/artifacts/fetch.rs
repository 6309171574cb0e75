//! Fetching an artifact from the mesh: its manifest (asked for by the artifact's id, which is
//! its hash), then every chunk this node lacks, through the sync actor's transfer machine.
//!
//! Only what is missing is asked for, so a fetch cut short (a lost connection, a restart)
//! resumes where it stopped, and a new version moves only the chunks the old one lacks.

use std::time::Instant;

use anyhow::{Result, bail};
use mesh::proto::wire::BlobHash;
use serde::{Deserialize, Serialize};

use super::{Artifacts, Refusal};
use crate::fleet::sync::SyncHandle;

/// `POST /artifacts/{id}/fetch`, `artifact fetch`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fetched {
    pub id: String,
    pub size: u64,
    pub chunks: usize,
    /// Chunks (and the manifest) this fetch moved; 0 when the artifact was whole here.
    pub blobs_fetched: usize,
    pub bytes_fetched: u64,
    pub seconds: f64,
}

fn blob_hash(hex_hash: &str) -> Option<BlobHash> {
    let bytes = hex::decode(hex_hash).ok()?;
    bytes.try_into().ok()
}

/// Makes the artifact `id` whole on this node, fetching what it lacks from peers.
pub async fn fetch(sync: &SyncHandle, artifacts: &Artifacts, id: &str) -> Result<Fetched> {
    let started = Instant::now();
    let Some(manifest_hash) = blob_hash(id).filter(|_| id.bytes().all(|b| !b.is_ascii_uppercase()))
    else {
        return Err(Refusal::BadInput(format!(
            "{id:?} is not an artifact id: a node that does not hold an artifact fetches it by its \
             whole id (64 hex digits, as `rhizome artifact add` or `artifact list` on a node \
             that holds it prints)"
        ))
        .into());
    };
    let mut blobs_fetched = 0;
    let mut bytes_fetched = 0u64;
    // A manifest this node passed on for a member is held as a blob already: installed from
    // there, not asked of peers again.
    let owned = id.to_owned();
    let known = artifacts
        .with(move |s| {
            if s.manifest(&owned).is_ok() {
                return Ok(true);
            }
            match s.read_chunk(&owned)? {
                Some(bytes) => {
                    s.put_received_manifest(&owned, &bytes, crate::node::now_ms())?;
                    Ok(true)
                }
                None => Ok(false),
            }
        })
        .await?;
    if !known {
        let mut outcomes = sync.want_blobs(vec![manifest_hash]).await;
        match outcomes.recv().await {
            Some((_, Ok(()))) => {}
            Some((_, Err(reason))) => {
                return Err(Refusal::NotFound(format!(
                    "cannot fetch artifact {id}: no peer gave its manifest ({reason})"
                ))
                .into());
            }
            None => bail!("cannot fetch artifact {id}: the node is stopping"),
        }
        let owned = id.to_owned();
        bytes_fetched += artifacts
            .with(move |s| {
                let bytes = s.read_chunk(&owned)?.ok_or_else(|| {
                    anyhow::anyhow!("the manifest of artifact {owned} was fetched but is gone")
                })?;
                s.put_received_manifest(&owned, &bytes, crate::node::now_ms())?;
                Ok(bytes.len() as u64)
            })
            .await?;
        blobs_fetched += 1;
    }
    let owned = id.to_owned();
    let (manifest, missing) = artifacts
        .with(move |s| Ok((s.manifest(&owned)?, s.missing_chunks(&owned)?)))
        .await?;
    let mut wanted: Vec<BlobHash> = missing.iter().filter_map(|c| blob_hash(&c.hash)).collect();
    wanted.sort_unstable();
    wanted.dedup();
    let size_of: std::collections::HashMap<BlobHash, u32> = missing
        .iter()
        .filter_map(|c| Some((blob_hash(&c.hash)?, c.size)))
        .collect();
    let mut failures = Vec::new();
    if !wanted.is_empty() {
        let count = wanted.len();
        let mut outcomes = sync.want_blobs(wanted).await;
        for _ in 0..count {
            match outcomes.recv().await {
                Some((hash, Ok(()))) => {
                    blobs_fetched += 1;
                    bytes_fetched += u64::from(size_of.get(&hash).copied().unwrap_or(0));
                }
                Some((hash, Err(reason))) => failures.push((hex::encode(hash), reason)),
                None => bail!("cannot fetch artifact {id}: the node is stopping"),
            }
        }
    }
    // Chunks are written unsynced as they arrive; one flush makes all of them durable before
    // the fetch is answered (or its failure: what was fetched is kept).
    artifacts.sync().await?;
    if let Some((first, reason)) = failures.first() {
        return Err(Refusal::NotFound(format!(
            "artifact {id} is incomplete here: {} of its chunks could not be fetched (chunk \
             {first}: {reason}); the chunks fetched are kept, and another fetch asks only for \
             the rest",
            failures.len()
        ))
        .into());
    }
    let owned = id.to_owned();
    artifacts
        .with(move |s| s.touch(&owned, crate::node::now_ms()))
        .await?;
    // Over the cap now: the least recently used unpinned artifacts go, never this one.
    if let Some(cap) = artifacts.cap {
        let held = artifacts.with(|s| s.held_bytes()).await?;
        if held > cap {
            let collected = artifacts.collect(Some(id)).await?;
            if !collected.evicted.is_empty() {
                tracing::info!(evicted = ?collected.evicted, held = collected.bytes_held, cap, "artifact cache over its cap: evicted the least recently used");
            }
        }
    }
    Ok(Fetched {
        id: id.to_owned(),
        size: manifest.size,
        chunks: manifest.chunks.len(),
        blobs_fetched,
        bytes_fetched,
        seconds: started.elapsed().as_secs_f64(),
    })
}
