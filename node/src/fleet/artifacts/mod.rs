//! Artifacts: files a workflow or a release needs (ONNX models, binaries), stored by content.
//!
//! A file is cut into content-defined chunks ([`chunking`]), each stored under its BLAKE3 (or
//! SHA-256 in manifest format 1, see [`store::SHA256_CHUNKS_FORMAT`]);
//! a manifest lists the chunks, and the artifact's id is the manifest's hash ([`store`]).
//! Anything received is checked against a hash the receiver already trusts: the manifest
//! against the id, each chunk against the manifest. Artifacts are not Automerge documents:
//! their bytes would bloat every document's history and every sync with them.

pub mod chunking;
pub mod chunks;
pub mod fetch;
pub mod provider;
pub mod store;

pub use store::{Added, ArtifactStore, ChunkRef, Collected, Listed, Manifest, Refusal};

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use anyhow::Result;
use serde::{Deserialize, Serialize};

/// The running node's artifact store, shared by its API handlers; every operation runs on a
/// blocking thread (they hash and write files).
#[derive(Debug, Clone)]
pub struct Artifacts {
    store: Arc<Mutex<ArtifactStore>>,
    /// The chunks, for reads and writes that need no lock of the store (chunks never change
    /// once written).
    chunks: chunks::Chunks,
    /// What the workflow versions in use need: never evicted.
    pins: Arc<Mutex<HashSet<String>>>,
    /// `artifacts.cache_size`: what `gc` brings the held chunks under.
    pub cap: Option<u64>,
}

/// `GET /artifacts`, `artifact list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    pub cache_cap: Option<u64>,
    pub held_bytes: u64,
    pub artifacts: Vec<Listed>,
    /// Blobs moved between this node and its peers since it started (a running node only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<Moved>,
}

/// Artifact blobs a running node moved since it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Moved {
    pub blobs_received: u64,
    pub bytes_received: u64,
    pub blobs_served: u64,
    pub bytes_served: u64,
    /// Blobs from peers that did not match their hash (or could not be stored).
    pub blobs_refused: u64,
}

/// `GET /artifacts/{artifact}`, `artifact show`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shown {
    #[serde(flatten)]
    pub listed: Listed,
    /// Chunks this node lacks.
    pub missing_chunks: usize,
    /// Distinct chunks' bytes this node lacks.
    pub missing_bytes: u64,
    pub manifest: Manifest,
}

impl Artifacts {
    pub fn new(store: ArtifactStore, cap: Option<u64>) -> Artifacts {
        Artifacts {
            chunks: store.chunks().clone(),
            pins: Arc::default(),
            store: Arc::new(Mutex::new(store)),
            cap,
        }
    }

    /// Runs `f` on the store on a blocking thread.
    pub async fn with<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut ArtifactStore) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            let mut store = store.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut store)
        })
        .await?
    }

    /// Runs `f` on the store on this thread (one that may block).
    pub fn with_blocking<R>(&self, f: impl FnOnce(&mut ArtifactStore) -> Result<R>) -> Result<R> {
        let mut store = self.store.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut store)
    }

    /// Replaces what the versions in use need.
    pub fn pin(&self, ids: impl IntoIterator<Item = String>) {
        *self.pins.lock().unwrap_or_else(|e| e.into_inner()) = ids.into_iter().collect();
    }

    pub fn pinned(&self) -> HashSet<String> {
        self.pins.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// `gc` under the cap, never evicting what is pinned, nor `keep`.
    pub async fn collect(&self, keep: Option<&str>) -> Result<Collected> {
        let (cap, mut pinned) = (self.cap, self.pinned());
        pinned.extend(keep.map(str::to_owned));
        self.with(move |s| s.gc(cap, &pinned)).await
    }

    /// Makes every blob stored so far durable (one flush of the data dir's filesystem).
    pub async fn sync(&self) -> Result<()> {
        let chunks = self.chunks.clone();
        tokio::task::spawn_blocking(move || chunks.sync()).await?
    }

    /// A chunk (unchecked: see [`chunks::Chunks::read_unchecked`]) or a manifest (checked)
    /// by its hash, to serve to a peer; `None` when not here. Blocks on the disk.
    pub fn read_blob(&self, hash: &str) -> std::io::Result<Option<bytes::Bytes>> {
        store::read_blob_in(&self.chunks, hash)
    }

    /// Stores a blob received from a peer as a chunk, refusing bytes that do not hash to
    /// `hash`; not synced (see [`Artifacts::sync`]). Blocks on hashing and the disk; needs no
    /// lock of the store.
    pub fn store_blob(&self, hash: &str, bytes: &[u8]) -> Result<()> {
        self.chunks.put_received(hash, bytes)
    }
}

/// What the store holds, most recently used first.
pub fn inventory(store: &ArtifactStore, cap: Option<u64>) -> Result<Inventory> {
    Ok(Inventory {
        cache_cap: cap,
        held_bytes: store.held_bytes()?,
        artifacts: store.list()?,
        transfer: None,
    })
}

/// One artifact by name, id or id prefix, with its manifest and what of it is missing here.
pub fn show(store: &ArtifactStore, what: &str) -> Result<Shown> {
    let (listed, manifest, missing) = store.one(&store.resolve(what)?)?;
    Ok(Shown {
        listed,
        missing_chunks: missing.len(),
        missing_bytes: missing.iter().map(|c| u64::from(c.size)).sum(),
        manifest,
    })
}

/// `gc` on a node's data dir while the node is stopped: nothing runs, so nothing is pinned.
pub fn collect(store: &mut ArtifactStore, cap: Option<u64>) -> Result<Collected> {
    store.gc(cap, &HashSet::new())
}
