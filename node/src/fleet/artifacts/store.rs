//! The artifacts a node holds, on disk under `<data-dir>/artifacts/`:
//!
//! ```text
//! chunks/, packs/                 chunks' bytes by their hash (see [`super::chunks`])
//! manifests/<artifact id>.json   what an artifact is made of; the id is the hash of this file
//! index.json                     names, sizes, when each artifact was added and last used
//! incoming/                      uploads being received, before they are added
//! lock                           held by the one process that owns the directory
//! ```
//!
//! Every file but a pack is written through a temporary file that is synced and renamed, so
//! a kill at any moment leaves whole chunks, whole manifests and a whole index (at worst a
//! chunk that no manifest names yet, which `gc` removes). Every chunk is checked against its
//! name when it is read: a chunk damaged on disk is dropped and counted as missing, never
//! served.
//! Chunks are shared between artifacts: a new version of a file stores only the chunks the
//! old one lacks.

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::chunking;
use super::chunks::{Chunks, is_hash};

/// The manifest format this build writes: chunks keyed by BLAKE3.
pub const MANIFEST_FORMAT: u32 = 2;
/// The first manifest format, which this build still reads and writes on request: chunks keyed
/// by SHA-256. Builds before format 2 read only this one; a release is published in it, so
/// that every node, however old its build, can fetch the binary that updates it.
pub const SHA256_CHUNKS_FORMAT: u32 = 1;
/// Shortest id prefix accepted where an artifact is named by id.
pub const MIN_ID_PREFIX: usize = 8;
/// Longest artifact name.
pub const MAX_NAME: usize = 200;

/// A request the store refuses for what it asked, as opposed to a failure of the disk: the
/// API answers these 404 and 400.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadInput(String),
}

/// What an artifact is made of. Its id is the SHA-256 of its JSON encoding, so a manifest
/// received from any peer is checked by its id, and each chunk by its hash in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// Length of the whole file.
    pub size: u64,
    /// SHA-256 of the whole file, hex.
    pub sha256: String,
    pub chunks: Vec<ChunkRef>,
}

/// One chunk of a manifest: its key (the BLAKE3 of its bytes in format 2, their SHA-256 in
/// format 1, hex) and length.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChunkRef {
    pub hash: String,
    pub size: u32,
}

impl Manifest {
    /// The manifest's bytes as stored and sent; the id is their hash.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a manifest encodes")
    }

    /// The artifact id: SHA-256 of [`Manifest::encode`], hex.
    pub fn id(&self) -> String {
        hex::encode(Sha256::digest(self.encode()))
    }

    /// Decodes a manifest that must have the id `id`, checking that it is one this build
    /// reads and that its sizes add up.
    pub fn decode(id: &str, bytes: &[u8]) -> Result<Manifest> {
        let found = hex::encode(Sha256::digest(bytes));
        if found != id {
            bail!("the manifest of artifact {id} has the hash {found}: it is not that artifact's");
        }
        let manifest: Manifest = serde_json::from_slice(bytes)
            .with_context(|| format!("the manifest of artifact {id} is not a manifest"))?;
        if !(SHA256_CHUNKS_FORMAT..=MANIFEST_FORMAT).contains(&manifest.format) {
            bail!(
                "the manifest of artifact {id} has format {}; this build reads formats \
                 {SHA256_CHUNKS_FORMAT} to {MANIFEST_FORMAT}",
                manifest.format
            );
        }
        let sum: u64 = manifest.chunks.iter().map(|c| u64::from(c.size)).sum();
        if sum != manifest.size
            || manifest.chunks.iter().any(|c| !is_hash(&c.hash))
            || !is_hash(&manifest.sha256)
        {
            bail!("the manifest of artifact {id} is inconsistent (chunk sizes or hashes)");
        }
        // Stored and served as encoded here: other bytes for the same manifest would be
        // served under an id they do not hash to.
        if manifest.encode() != bytes {
            bail!("the manifest of artifact {id} is not in its canonical encoding");
        }
        Ok(manifest)
    }

    /// Distinct chunks and their total length: what the artifact costs on disk.
    pub fn distinct_chunks(&self) -> (usize, u64) {
        let mut seen = HashSet::new();
        let mut bytes = 0;
        for chunk in &self.chunks {
            if seen.insert(&chunk.hash) {
                bytes += u64::from(chunk.size);
            }
        }
        (seen.len(), bytes)
    }
}

/// What the index keeps per artifact.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub size: u64,
    pub added_ms: i64,
    pub last_used_ms: i64,
}

/// `index.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Index {
    artifacts: BTreeMap<String, Entry>,
    /// Name → the id it stands for now (the artifact last added under it).
    names: BTreeMap<String, String>,
}

/// An artifact as `artifact list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listed {
    pub id: String,
    pub names: Vec<String>,
    pub size: u64,
    pub sha256: String,
    pub chunks: usize,
    /// Chunks of it this node holds (all of them once it is complete).
    pub chunks_here: usize,
    pub complete: bool,
    pub added_ms: i64,
    pub last_used_ms: i64,
}

/// What `add` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Added {
    pub id: String,
    pub name: String,
    pub size: u64,
    pub sha256: String,
    pub chunks: usize,
    /// Chunks this node did not hold before, and their bytes: what a peer holding the
    /// previous version would fetch.
    pub new_chunks: usize,
    pub new_bytes: u64,
}

/// What `gc` did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Collected {
    /// Artifacts evicted to bring the cache under its cap, least recently used first.
    pub evicted: Vec<String>,
    pub chunks_removed: usize,
    pub bytes_removed: u64,
    /// Bytes of chunks still held.
    pub bytes_held: u64,
}

/// The artifacts directory of one node, owned by one process at a time.
#[derive(Debug)]
pub struct ArtifactStore {
    root: PathBuf,
    index: Index,
    chunks: Chunks,
    /// The open lock file; the lock lasts as long as it is open.
    _lock: std::fs::File,
}

impl ArtifactStore {
    /// Opens (creating) `root`, taking its lock; fails naming the holder's kind when another
    /// process holds it.
    pub fn open(root: &Path) -> Result<ArtifactStore> {
        // `chunks/` and `packs/` are the chunks' to make (see [`Chunks::open`]).
        for dir in [root.to_path_buf(), root.join("manifests")] {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let lock_path = root.join("lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("cannot open {}", lock_path.display()))?;
        #[allow(unsafe_code)]
        // SAFETY: flock(2) on a descriptor this function owns; it has no memory effects.
        let locked = unsafe {
            libc::flock(
                std::os::fd::AsRawFd::as_raw_fd(&lock),
                libc::LOCK_EX | libc::LOCK_NB,
            )
        };
        if locked != 0 {
            bail!(
                "{} is in use by another process (the running node): go through it",
                root.display()
            );
        }
        let index_path = root.join("index.json");
        let index = match std::fs::read(&index_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "{} is damaged; its manifests and chunks are intact, move it aside to \
                     rebuild it from them",
                    index_path.display()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Index::default(),
            Err(e) => return Err(e).context(format!("cannot read {}", index_path.display())),
        };
        let mut store = ArtifactStore {
            root: root.to_owned(),
            index,
            chunks: Chunks::open(root)?,
            _lock: lock,
        };
        store.adopt_orphan_manifests()?;
        // The lock is ours: no upload is in flight.
        let _ = std::fs::remove_dir_all(root.join("incoming"));
        Ok(store)
    }

    /// Manifests on disk that the index lacks (an add killed between the two writes) are
    /// listed again, by id.
    fn adopt_orphan_manifests(&mut self) -> Result<()> {
        let mut adopted = false;
        for item in std::fs::read_dir(self.root.join("manifests"))? {
            let path = item?.path();
            let Some(id) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
            else {
                continue;
            };
            if is_hash(id) && !self.index.artifacts.contains_key(id) {
                let Ok(manifest) = std::fs::read(&path)
                    .map_err(anyhow::Error::from)
                    .and_then(|b| Manifest::decode(id, &b))
                else {
                    continue;
                };
                self.index.artifacts.insert(
                    id.to_owned(),
                    Entry {
                        size: manifest.size,
                        ..Entry::default()
                    },
                );
                adopted = true;
            }
        }
        if adopted {
            self.save_index()?;
        }
        Ok(())
    }

    fn save_index(&self) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(&self.index).expect("the index encodes");
        let path = self.root.join("index.json");
        crate::durable_file::replace(&path, &bytes, 0o600)
            .with_context(|| format!("cannot write {}", path.display()))
    }

    fn manifest_path(&self, id: &str) -> PathBuf {
        self.root.join("manifests").join(format!("{id}.json"))
    }

    /// Stores a file as an artifact under `name`; the name then stands for it.
    pub fn add(&mut self, file: &Path, name: &str, now_ms: i64) -> Result<Added> {
        self.add_in_format(file, name, now_ms, MANIFEST_FORMAT)
    }

    /// [`ArtifactStore::add`] with a manifest of `format` (see [`SHA256_CHUNKS_FORMAT`]).
    pub fn add_in_format(
        &mut self,
        file: &Path,
        name: &str,
        now_ms: i64,
        format: u32,
    ) -> Result<Added> {
        check_name(name)?;
        let chunk_key: fn(&[u8]) -> String = match format {
            SHA256_CHUNKS_FORMAT => |bytes| hex::encode(Sha256::digest(bytes)),
            MANIFEST_FORMAT => |bytes| blake3::hash(bytes).to_hex().to_string(),
            other => bail!(Refusal::BadInput(format!(
                "manifest format {other} is not one this build writes ({SHA256_CHUNKS_FORMAT} or \
                 {MANIFEST_FORMAT})"
            ))),
        };
        let reader =
            std::fs::File::open(file).with_context(|| format!("cannot read {}", file.display()))?;
        let mut whole = Sha256::new();
        let mut chunks = Vec::new();
        let mut new_chunks = 0;
        let mut new_bytes = 0;
        let size = chunking::chunk_stream(std::io::BufReader::new(reader), |chunk| {
            whole.update(chunk);
            let hash = chunk_key(chunk);
            if self
                .chunks
                .put_local(&hash, chunk)
                .map_err(|e| std::io::Error::other(format!("{e:#}")))?
            {
                new_chunks += 1;
                new_bytes += chunk.len() as u64;
            }
            chunks.push(ChunkRef {
                hash,
                size: chunk.len() as u32,
            });
            Ok(())
        })
        .with_context(|| format!("cannot store {} as an artifact", file.display()))?;
        // The chunks are durable before the manifest that names them is: one flush for all.
        self.chunks.sync()?;
        let manifest = Manifest {
            format,
            size,
            sha256: hex::encode(whole.finalize()),
            chunks,
        };
        let id = self.put_manifest(&manifest)?;
        let entry = self.index.artifacts.entry(id.clone()).or_default();
        entry.size = size;
        if entry.added_ms == 0 {
            entry.added_ms = now_ms;
        }
        entry.last_used_ms = now_ms;
        self.index.names.insert(name.to_owned(), id.clone());
        self.save_index()?;
        Ok(Added {
            id,
            name: name.to_owned(),
            size,
            sha256: manifest.sha256.clone(),
            chunks: manifest.chunks.len(),
            new_chunks,
            new_bytes,
        })
    }

    /// A chunk's bytes, checked against its hash; `None` when it is not here (or was
    /// damaged, in which case it is dropped so that it is fetched again).
    pub fn read_chunk(&self, hash: &str) -> std::io::Result<Option<Bytes>> {
        self.chunks.read(hash)
    }

    /// The chunks, for readers and writers that need not hold the store.
    pub fn chunks(&self) -> &Chunks {
        &self.chunks
    }

    /// Where uploads are written before they are added: beside the chunks, on the same
    /// filesystem. Left-overs of an upload cut short are removed when the store opens.
    pub fn incoming_dir(&self) -> std::io::Result<PathBuf> {
        let dir = self.root.join("incoming");
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// The directory the store lives in.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// A blob a peer asks for by hash: a chunk (sent as stored: see [`Chunks::read_unchecked`]),
/// or a manifest (whose hash is the artifact's id); `None` when neither is here.
pub fn read_blob_in(chunks: &Chunks, hash: &str) -> std::io::Result<Option<Bytes>> {
    if !is_hash(hash) {
        return Ok(None);
    }
    if let Some(bytes) = chunks.read_unchecked(hash)? {
        return Ok(Some(bytes));
    }
    let path = chunks.root().join("manifests").join(format!("{hash}.json"));
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok((hex::encode(Sha256::digest(&bytes)) == hash).then(|| bytes.into()))
}

impl ArtifactStore {
    /// Stores a chunk received from elsewhere, refusing bytes that are not the chunk named;
    /// durable when it returns.
    pub fn put_chunk(&self, hash: &str, bytes: &[u8]) -> Result<()> {
        self.chunks.put_received(hash, bytes)?;
        self.chunks.sync()
    }

    /// Stores a manifest (checked by its id when it came from elsewhere); returns its id.
    fn put_manifest(&self, manifest: &Manifest) -> Result<String> {
        let id = manifest.id();
        let path = self.manifest_path(&id);
        if !path.exists() {
            crate::durable_file::replace(&path, &manifest.encode(), 0o644)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        Ok(id)
    }

    /// Records a manifest received from a peer (its bytes must hash to `id`) so that its
    /// chunks can be fetched; the artifact is listed from then on, incomplete until they are.
    pub fn put_received_manifest(&mut self, id: &str, bytes: &[u8], now_ms: i64) -> Result<()> {
        let manifest = Manifest::decode(id, bytes)?;
        self.put_manifest(&manifest)?;
        let entry = self.index.artifacts.entry(id.to_owned()).or_default();
        if entry.added_ms == 0 {
            entry.added_ms = now_ms;
            entry.last_used_ms = now_ms;
        }
        entry.size = manifest.size;
        self.save_index()
    }

    /// The id that `what` names: a name, an id, or an id prefix of at least
    /// [`MIN_ID_PREFIX`] characters that only one artifact has.
    pub fn resolve(&self, what: &str) -> Result<String> {
        if let Some(id) = self.index.names.get(what) {
            return Ok(id.clone());
        }
        if is_hash(what) && self.index.artifacts.contains_key(what) {
            return Ok(what.to_owned());
        }
        let lower = what.to_ascii_lowercase();
        if lower.len() >= MIN_ID_PREFIX && lower.bytes().all(|b| b.is_ascii_hexdigit()) {
            let found: Vec<&String> = self
                .index
                .artifacts
                .keys()
                .filter(|id| id.starts_with(&lower))
                .collect();
            match found.as_slice() {
                [one] => return Ok((*one).clone()),
                [] => {}
                many => bail!(Refusal::BadInput(format!(
                    "`{what}` is the start of {} artifact ids; give more of it",
                    many.len()
                ))),
            }
        }
        bail!(Refusal::NotFound(format!(
            "no artifact named `{what}` here (`rhizome artifact list` shows what there is)"
        )))
    }

    /// The manifest of a listed artifact.
    pub fn manifest(&self, id: &str) -> Result<Manifest> {
        let path = self.manifest_path(id);
        let bytes =
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        Manifest::decode(id, &bytes)
    }

    /// The chunks of an artifact this node lacks, in file order, each once.
    pub fn missing_chunks(&self, id: &str) -> Result<Vec<ChunkRef>> {
        Ok(self.missing_in(&self.manifest(id)?))
    }

    fn missing_in(&self, manifest: &Manifest) -> Vec<ChunkRef> {
        let mut seen = HashSet::new();
        manifest
            .chunks
            .iter()
            .filter(|c| seen.insert(&c.hash) && !self.chunks.has(&c.hash))
            .cloned()
            .collect()
    }

    /// Every listed artifact, most recently used first.
    pub fn list(&self) -> Result<Vec<Listed>> {
        let mut out = Vec::new();
        for id in self.index.artifacts.keys() {
            out.push(self.one(id)?.0);
        }
        out.sort_by(|a, b| b.last_used_ms.cmp(&a.last_used_ms).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// One listed artifact as `list` shows it, with its manifest and the chunks missing here
    /// (its manifest read once).
    pub fn one(&self, id: &str) -> Result<(Listed, Manifest, Vec<ChunkRef>)> {
        let entry = self
            .index
            .artifacts
            .get(id)
            .ok_or_else(|| Refusal::NotFound(format!("no artifact {id} here")))?;
        let manifest = self.manifest(id)?;
        let missing = self.missing_in(&manifest);
        let (distinct, _) = manifest.distinct_chunks();
        let listed = Listed {
            id: id.to_owned(),
            names: self.names_of(id),
            size: entry.size,
            sha256: manifest.sha256.clone(),
            chunks: manifest.chunks.len(),
            chunks_here: distinct - missing.len(),
            complete: missing.is_empty(),
            added_ms: entry.added_ms,
            last_used_ms: entry.last_used_ms,
        };
        Ok((listed, manifest, missing))
    }

    fn names_of(&self, id: &str) -> Vec<String> {
        self.index
            .names
            .iter()
            .filter(|(_, named)| *named == id)
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Writes an artifact's bytes to `output` (through a synced temporary file renamed over
    /// it), checking every chunk and the whole file's hash; marks it used.
    pub fn write_out(&mut self, id: &str, output: &Path, now_ms: i64) -> Result<u64> {
        let manifest = self.manifest(id)?;
        let missing = self.missing_chunks(id)?;
        if !missing.is_empty() {
            bail!(
                "artifact {id} is not complete here: {} of its {} chunks are missing",
                missing.len(),
                manifest.chunks.len()
            );
        }
        let dir = match output.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        let tmp = dir.join(format!(
            ".{}.{}.tmp",
            output.file_name().unwrap_or_default().to_string_lossy(),
            std::process::id()
        ));
        let write = || -> Result<()> {
            let mut file = std::fs::File::create(&tmp)
                .with_context(|| format!("cannot create {}", tmp.display()))?;
            let mut whole = Sha256::new();
            for chunk in &manifest.chunks {
                let Some(bytes) = self.read_chunk(&chunk.hash)? else {
                    bail!(
                        "chunk {} of artifact {id} was damaged on disk and is removed; fetch \
                         the artifact again",
                        chunk.hash
                    );
                };
                whole.update(&bytes);
                file.write_all(&bytes)?;
            }
            if hex::encode(whole.finalize()) != manifest.sha256 {
                bail!("artifact {id} does not hash to its manifest's sha256");
            }
            file.sync_all()?;
            std::fs::rename(&tmp, output)?;
            sync_dir(&dir)?;
            Ok(())
        };
        write().inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })?;
        self.touch(id, now_ms)?;
        Ok(manifest.size)
    }

    /// Marks an artifact used now, for least-recently-used eviction.
    pub fn touch(&mut self, id: &str, now_ms: i64) -> Result<()> {
        if let Some(entry) = self.index.artifacts.get_mut(id) {
            entry.last_used_ms = entry.last_used_ms.max(now_ms);
            self.save_index()?;
        }
        Ok(())
    }

    /// Stops listing an artifact (and every name that stands for it); its chunks go at the
    /// next `gc` unless another artifact shares them.
    pub fn remove(&mut self, id: &str) -> Result<()> {
        if self.index.artifacts.remove(id).is_none() {
            bail!(Refusal::NotFound(format!("no artifact {id} here")));
        }
        self.index.names.retain(|_, named| named != id);
        self.save_index()?;
        let _ = std::fs::remove_file(self.manifest_path(id));
        let _ = std::fs::remove_file(self.file_path(id));
        Ok(())
    }

    /// Where an artifact's whole bytes are written for a program that needs a file (an ONNX
    /// model): `files/<id>`, written once, checked against the manifest's hash as it is
    /// written, removed with the artifact.
    fn file_path(&self, id: &str) -> PathBuf {
        self.root.join("files").join(id)
    }

    /// The artifact as one file, written out first if it is not yet (it must be whole here).
    pub fn materialize(&mut self, id: &str, now_ms: i64) -> Result<PathBuf> {
        let path = self.file_path(id);
        let manifest = self.manifest(id)?;
        if std::fs::metadata(&path).is_ok_and(|m| m.len() == manifest.size) {
            self.touch(id, now_ms)?;
            return Ok(path);
        }
        std::fs::create_dir_all(self.root.join("files"))?;
        self.write_out(id, &path, now_ms)?;
        Ok(path)
    }

    /// Evicts the least recently used artifacts not in `pinned` until the chunks of those left
    /// take at most `cap` bytes (`None`: no cap), then removes every chunk no listed artifact
    /// has. Pinned artifacts are never evicted, even when they alone exceed the cap.
    pub fn gc(&mut self, cap: Option<u64>, pinned: &HashSet<String>) -> Result<Collected> {
        let mut collected = Collected::default();
        if let Some(cap) = cap {
            let mut by_age: Vec<(i64, String)> = self
                .index
                .artifacts
                .iter()
                .filter(|(id, _)| !pinned.contains(*id))
                .map(|(id, e)| (e.last_used_ms, id.clone()))
                .collect();
            by_age.sort();
            for (_, id) in by_age {
                if self.held_bytes()? <= cap {
                    break;
                }
                self.remove(&id)?;
                collected.evicted.push(id);
            }
        }
        let mut wanted = HashSet::new();
        for id in self.index.artifacts.keys() {
            for chunk in self.manifest(id)?.chunks {
                wanted.insert(chunk.hash);
            }
        }
        let removed = self.chunks.collect(&wanted)?;
        collected.chunks_removed = removed.chunks;
        collected.bytes_removed = removed.bytes;
        collected.bytes_held = self.held_bytes()?;
        Ok(collected)
    }

    /// Bytes of the distinct chunks that listed artifacts have here.
    pub fn held_bytes(&self) -> Result<u64> {
        let mut seen = HashSet::new();
        let mut bytes = 0;
        for id in self.index.artifacts.keys() {
            for chunk in self.manifest(id)?.chunks {
                if seen.insert(chunk.hash.clone()) && self.chunks.has(&chunk.hash) {
                    bytes += u64::from(chunk.size);
                }
            }
        }
        Ok(bytes)
    }
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_NAME {
        bail!(Refusal::BadInput(format!(
            "an artifact name has 1 to {MAX_NAME} characters"
        )));
    }
    if name.chars().any(|c| c.is_control() || c == '/') {
        bail!(Refusal::BadInput(format!(
            "an artifact name has no `/` and no control characters: `{name}`"
        )));
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Hashes a whole file, for callers that compare a written artifact with its source.
pub fn sha256_of(path: &Path) -> Result<String> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut hash = Sha256::new();
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            return Ok(hex::encode(hash.finalize()));
        }
        hash.update(&buffer[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::artifacts::chunking::tests::noise;

    fn file_with(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn an_added_file_comes_back_byte_for_byte_and_survives_a_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let data = noise(1, 3 * 1024 * 1024 + 17);
        let file = file_with(tmp.path(), "model.onnx", &data);
        let root = tmp.path().join("artifacts");
        let added = {
            let mut store = ArtifactStore::open(&root).unwrap();
            store.add(&file, "model", 1).unwrap()
        };
        assert_eq!(added.size, data.len() as u64);
        assert_eq!(added.new_chunks, added.chunks);
        let mut store = ArtifactStore::open(&root).unwrap();
        assert_eq!(store.resolve("model").unwrap(), added.id);
        assert_eq!(store.resolve(&added.id[..10]).unwrap(), added.id);
        let out = tmp.path().join("out.bin");
        store.write_out(&added.id, &out, 2).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), data);
        assert_eq!(sha256_of(&out).unwrap(), added.sha256);
        let listed = store.list().unwrap();
        assert_eq!(listed.len(), 1);
        assert!(listed[0].complete);
        assert_eq!(listed[0].names, vec!["model".to_string()]);
        assert_eq!(listed[0].last_used_ms, 2);
    }

    #[test]
    fn a_second_process_is_refused_the_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let _first = ArtifactStore::open(tmp.path()).unwrap();
        let err = ArtifactStore::open(tmp.path()).unwrap_err().to_string();
        assert!(err.contains("in use"), "{err}");
    }

    #[test]
    fn a_new_version_stores_only_the_chunks_that_changed() {
        let tmp = tempfile::tempdir().unwrap();
        let old = noise(2, 8 * 1024 * 1024);
        let mut new = old.clone();
        new[4_000_000..4_100_000].copy_from_slice(&noise(3, 100_000));
        let mut store = ArtifactStore::open(&tmp.path().join("store")).unwrap();
        let v1 = store
            .add(&file_with(tmp.path(), "v1", &old), "m", 1)
            .unwrap();
        let v2 = store
            .add(&file_with(tmp.path(), "v2", &new), "m", 2)
            .unwrap();
        assert_ne!(v1.id, v2.id);
        assert_eq!(
            store.resolve("m").unwrap(),
            v2.id,
            "the name follows the last add"
        );
        assert!(
            v2.new_bytes <= 100_000 + 2 * chunking::MAX_CHUNK as u64,
            "{} new bytes for a 100 kB change",
            v2.new_bytes
        );
        // Adding the same bytes again stores nothing.
        let again = store
            .add(&file_with(tmp.path(), "v2b", &new), "m2", 3)
            .unwrap();
        assert_eq!((again.id, again.new_chunks), (v2.id, 0));
    }

    #[test]
    fn received_chunks_are_checked_and_a_damaged_one_is_fetched_again() {
        let tmp = tempfile::tempdir().unwrap();
        let data = noise(4, 2 * 1024 * 1024);
        let mut source = ArtifactStore::open(&tmp.path().join("src")).unwrap();
        let added = source
            .add(&file_with(tmp.path(), "f", &data), "f", 1)
            .unwrap();
        let manifest_bytes = source.manifest(&added.id).unwrap().encode();

        let mut sink = ArtifactStore::open(&tmp.path().join("sink")).unwrap();
        let err = sink
            .put_received_manifest(&added.id, b"{\"format\":1}", 5)
            .unwrap_err();
        assert!(err.to_string().contains("not that artifact"), "{err}");
        sink.put_received_manifest(&added.id, &manifest_bytes, 5)
            .unwrap();
        let missing = sink.missing_chunks(&added.id).unwrap();
        assert_eq!(missing.len(), added.chunks);
        assert!(!sink.list().unwrap()[0].complete);
        let first = &missing[0];
        let mut bytes = source.read_chunk(&first.hash).unwrap().unwrap().to_vec();
        bytes[0] ^= 1;
        let err = sink.put_chunk(&first.hash, &bytes).unwrap_err();
        assert!(err.to_string().contains("refused"), "{err}");
        for chunk in &missing {
            let bytes = source.read_chunk(&chunk.hash).unwrap().unwrap();
            sink.put_chunk(&chunk.hash, &bytes).unwrap();
        }
        assert!(sink.missing_chunks(&added.id).unwrap().is_empty());

        // Damage on disk: the chunk is dropped when read, and counted missing again.
        let pack = tmp.path().join("sink/packs/1.pack");
        let mut on_disk = std::fs::read(&pack).unwrap();
        let good = source.read_chunk(&first.hash).unwrap().unwrap();
        let at = on_disk
            .windows(64)
            .position(|w| w == &good[..64])
            .expect("the chunk is in the pack");
        on_disk[at + 10] ^= 0xff;
        std::fs::write(&pack, on_disk).unwrap();
        let err = sink
            .write_out(&added.id, &tmp.path().join("out"), 6)
            .unwrap_err();
        assert!(err.to_string().contains("damaged"), "{err}");
        assert_eq!(sink.missing_chunks(&added.id).unwrap().len(), 1);
        assert!(!tmp.path().join("out").exists());
    }

    #[test]
    fn gc_evicts_the_least_recently_used_unpinned_artifacts_down_to_the_cap() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = ArtifactStore::open(&tmp.path().join("store")).unwrap();
        let mb = 1024 * 1024;
        let a = store
            .add(&file_with(tmp.path(), "a", &noise(5, mb)), "a", 1)
            .unwrap();
        let b = store
            .add(&file_with(tmp.path(), "b", &noise(6, mb)), "b", 2)
            .unwrap();
        let c = store
            .add(&file_with(tmp.path(), "c", &noise(7, mb)), "c", 3)
            .unwrap();
        store.touch(&a.id, 10).unwrap();
        // b is the oldest, c the next; a was used last. c is pinned (an active workflow
        // needs it), so b and then a go.
        let pinned: HashSet<String> = [c.id.clone()].into();
        let collected = store.gc(Some(mb as u64 + 1), &pinned).unwrap();
        assert_eq!(collected.evicted, vec![b.id.clone(), a.id.clone()]);
        assert_eq!(collected.bytes_held, mb as u64);
        assert!(collected.chunks_removed > 0);
        assert!(store.resolve("b").is_err());
        assert_eq!(store.resolve("c").unwrap(), c.id);
        // Nothing more to do: a second gc removes nothing.
        let again = store.gc(Some(mb as u64 + 1), &pinned).unwrap();
        assert_eq!(
            again,
            Collected {
                bytes_held: mb as u64,
                ..Collected::default()
            }
        );
    }

    #[test]
    fn bad_names_and_unknown_artifacts_are_named_in_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = ArtifactStore::open(&tmp.path().join("store")).unwrap();
        let file = file_with(tmp.path(), "f", b"hello");
        assert!(store.add(&file, "", 1).is_err());
        assert!(store.add(&file, "a/b", 1).is_err());
        let err = store
            .add(&tmp.path().join("absent"), "x", 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("absent"), "{err}");
        let err = store.resolve("nothing").unwrap_err().to_string();
        assert!(err.contains("no artifact named `nothing`"), "{err}");
        // An empty file is an artifact of no chunks.
        let empty = store
            .add(&file_with(tmp.path(), "e", b""), "empty", 1)
            .unwrap();
        assert_eq!((empty.size, empty.chunks), (0, 0));
        store
            .write_out(&empty.id, &tmp.path().join("e.out"), 2)
            .unwrap();
        assert_eq!(std::fs::read(tmp.path().join("e.out")).unwrap(), b"");
    }

    #[test]
    fn both_manifest_formats_are_written_and_read_and_others_are_refused_by_name() {
        let tmp = tempfile::tempdir().unwrap();
        let data = noise(9, 600 * 1024);
        let file = file_with(tmp.path(), "f", &data);
        let mut store = ArtifactStore::open(&tmp.path().join("store")).unwrap();
        let sha = store
            .add_in_format(&file, "sha", 1, SHA256_CHUNKS_FORMAT)
            .unwrap();
        let b3 = store.add(&file, "b3", 2).unwrap();
        assert_ne!(sha.id, b3.id);
        assert_eq!(
            sha.sha256, b3.sha256,
            "the whole file's hash is SHA-256 in both"
        );
        // Each chunk is keyed by its format's hash of the chunk's bytes.
        for (id, key) in [
            (
                &sha.id,
                (|b: &[u8]| hex::encode(Sha256::digest(b))) as fn(&[u8]) -> String,
            ),
            (&b3.id, |b: &[u8]| blake3::hash(b).to_hex().to_string()),
        ] {
            let manifest = store.manifest(id).unwrap();
            let mut at = 0usize;
            for chunk in &manifest.chunks {
                let bytes = &data[at..at + chunk.size as usize];
                assert_eq!(chunk.hash, key(bytes));
                assert_eq!(store.read_chunk(&chunk.hash).unwrap().unwrap(), bytes);
                at += chunk.size as usize;
            }
            let out = tmp.path().join(format!("{id}.out"));
            store.write_out(id, &out, 3).unwrap();
            assert_eq!(std::fs::read(&out).unwrap(), data);
        }
        let err = store
            .add_in_format(&file, "x", 4, 3)
            .unwrap_err()
            .to_string();
        assert!(err.contains("format 3"), "{err}");
        let future = Manifest {
            format: MANIFEST_FORMAT + 1,
            ..store.manifest(&b3.id).unwrap()
        };
        let err = Manifest::decode(&future.id(), &future.encode())
            .unwrap_err()
            .to_string();
        assert!(err.contains("has format 3"), "{err}");
    }

    #[test]
    fn a_manifest_that_lies_about_its_sizes_is_refused() {
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            size: 10,
            sha256: "0".repeat(64),
            chunks: vec![ChunkRef {
                hash: "1".repeat(64),
                size: 9,
            }],
        };
        let err = Manifest::decode(&manifest.id(), &manifest.encode())
            .unwrap_err()
            .to_string();
        assert!(err.contains("inconsistent"), "{err}");
    }
}
