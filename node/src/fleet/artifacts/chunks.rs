//! Where chunk bytes live, under `<data-dir>/artifacts/`:
//!
//! ```text
//! packs/<n>.pack                 chunks, appended one after another (added here or received)
//! packs/<n>.idx                  where each chunk of a pack that is no longer appended to is
//! chunks/<2 hex>/<key hex>       a chunk `gc` kept out of a pack it removed, one file each
//! ```
//!
//! Chunks go into pack files because a file per chunk made the receiver the slowest part of a
//! transfer: creating, filling and renaming a 256 KiB file costs about ten times what
//! appending the same bytes to one file does (1,600 chunk files against one file of 400 MB:
//! 1.1–1.5 s against 0.1 s on the benchmark machine), more than the network and the SHA-256 of
//! every chunk together; and `artifact add` synced every chunk file. Git and restic pack small
//! objects for the same reason.
//!
//! A chunk's key is the hash of its bytes: BLAKE3 for chunks of manifest format 2, SHA-256 for
//! those of format 1 (and for manifests, held here as blobs too). Which one a key is need not
//! be known to check bytes against it: they must hash to it under either ([`key_matches`]);
//! finding bytes that hash to a given key under either is as hard as under each.
//!
//! A pack record is `RZC1`, the length (u32 LE), the chunk's key, then the bytes.
//! Records are appended without a sync; whoever needs them durable calls [`Chunks::sync`]
//! (a fetch and `artifact add` do, once, before they answer). A pack is only ever appended to by the process
//! that created it; when the store opens, packs without a whole `.idx` are scanned (stopping
//! at the first record that is not whole: the tail a crash cut) and given one. Every chunk
//! is checked against its hash when it is read, wherever it lives: a damaged one is
//! forgotten (and fetched again), never served. `gc` rewrites a pack that holds chunks no
//! artifact needs: the ones still needed become chunk files, and the pack goes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use mesh::net::blob_buffers::POOL;
use sha2::{Digest, Sha256};

const RECORD_MAGIC: &[u8; 4] = b"RZC1";
const RECORD_HEADER: u64 = 4 + 4 + 32;
const INDEX_MAGIC: &[u8; 8] = b"RZPIDX1\n";
/// A pack is closed and a new one started once it is this long.
const PACK_LIMIT: u64 = 1 << 30;
/// No chunk is longer (the chunker's maximum is 1 MiB; manifests are far smaller).
const MAX_RECORD: u32 = 8 << 20;

/// Where a packed chunk is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Location {
    pack: u32,
    offset: u64,
    len: u32,
}

#[derive(Debug, Default)]
struct Packed {
    /// Hash (hex) → where its bytes are.
    at: HashMap<String, Location>,
    /// Open packs by number.
    files: BTreeMap<u32, Arc<File>>,
}

/// The pack being appended to.
#[derive(Debug)]
struct Appender {
    pack: u32,
    file: Arc<File>,
    len: u64,
}

/// The chunks of one artifacts directory; cloned handles share it. Reads and writes need no
/// lock of the artifact store: chunks never change once written.
#[derive(Debug, Clone)]
pub struct Chunks {
    root: PathBuf,
    packed: Arc<RwLock<Packed>>,
    appender: Arc<Mutex<Option<Appender>>>,
}

/// What [`Chunks::collect`] removed.
#[derive(Debug, Default, Clone, Copy)]
pub struct Removed {
    pub chunks: usize,
    pub bytes: u64,
}

impl Chunks {
    /// The chunks under `root`; the caller holds the directory's lock (one process appends).
    pub fn open(root: &Path) -> Result<Chunks> {
        let packs = root.join("packs");
        for dir in [root.join("chunks"), packs.clone()] {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let mut packed = Packed::default();
        let mut numbers = Vec::new();
        for item in std::fs::read_dir(&packs)? {
            let name = item?.file_name().to_string_lossy().into_owned();
            if let Some(n) = name
                .strip_suffix(".pack")
                .and_then(|n| n.parse::<u32>().ok())
            {
                numbers.push(n);
            }
        }
        numbers.sort_unstable();
        for n in numbers {
            let path = pack_path(root, n);
            let file =
                File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
            let records = match read_index(root, n, file.metadata()?.len()) {
                Some(records) => records,
                None => {
                    let records =
                        scan(&file).with_context(|| format!("cannot read {}", path.display()))?;
                    write_index(root, n, file.metadata()?.len(), &records)?;
                    records
                }
            };
            // A later pack's copy of a chunk wins: it exists because the earlier was damaged.
            for (hash, location) in records {
                packed.at.insert(
                    hash,
                    Location {
                        pack: n,
                        ..location
                    },
                );
            }
            packed.files.insert(n, Arc::new(file));
        }
        Ok(Chunks {
            root: root.to_owned(),
            packed: Arc::new(RwLock::new(packed)),
            appender: Arc::default(),
        })
    }

    /// The artifacts directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn packed(&self) -> std::sync::RwLockReadGuard<'_, Packed> {
        self.packed.read().unwrap_or_else(|e| e.into_inner())
    }

    fn packed_mut(&self) -> std::sync::RwLockWriteGuard<'_, Packed> {
        self.packed.write().unwrap_or_else(|e| e.into_inner())
    }

    fn loose_path(&self, hash: &str) -> PathBuf {
        self.root.join("chunks").join(&hash[..2]).join(hash)
    }

    /// Whether the chunk is here (unchecked: reading it checks it).
    pub fn has(&self, hash: &str) -> bool {
        is_hash(hash) && (self.packed().at.contains_key(hash) || self.loose_path(hash).exists())
    }

    /// A packed chunk's bytes, read into a pooled buffer: a peer's fetch reads thousands.
    fn read_packed(&self, hash: &str) -> std::io::Result<Option<(Location, Bytes)>> {
        let found = {
            let packed = self.packed();
            packed
                .at
                .get(hash)
                .and_then(|at| Some((*at, packed.files.get(&at.pack)?.clone())))
        };
        let Some((at, file)) = found else {
            return Ok(None);
        };
        let mut buffer = POOL.buffer(at.len as usize);
        file.read_exact_at(buffer.as_mut_slice(), at.offset)?;
        Ok(Some((at, buffer.freeze())))
    }

    /// A chunk's bytes, checked against its hash; `None` when it is not here, or was damaged
    /// (then it is forgotten, so that it counts as missing and is fetched again).
    pub fn read(&self, hash: &str) -> std::io::Result<Option<Bytes>> {
        if !is_hash(hash) {
            return Ok(None);
        }
        if let Some((at, bytes)) = self.read_packed(hash)? {
            if key_matches(hash, &bytes) {
                return Ok(Some(bytes));
            }
            tracing::warn!(
                chunk = hash,
                pack = at.pack,
                "a packed chunk does not match its hash; forgetting it"
            );
            let mut packed = self.packed_mut();
            if packed.at.get(hash) == Some(&at) {
                packed.at.remove(hash);
            }
            return Ok(None);
        }
        let path = self.loose_path(hash);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        if !key_matches(hash, &bytes) {
            tracing::warn!(
                chunk = hash,
                "a stored chunk does not match its hash; removing it"
            );
            let _ = std::fs::remove_file(&path);
            return Ok(None);
        }
        Ok(Some(bytes.into()))
    }

    /// A chunk as stored, unchecked: for serving to a peer, which checks every blob against
    /// its hash before it keeps it, so checking here too would only spend the sender's CPU a
    /// second time on every byte.
    pub fn read_unchecked(&self, hash: &str) -> std::io::Result<Option<Bytes>> {
        if !is_hash(hash) {
            return Ok(None);
        }
        if let Some((_, bytes)) = self.read_packed(hash)? {
            return Ok(Some(bytes));
        }
        match std::fs::read(self.loose_path(hash)) {
            Ok(bytes) => Ok(Some(bytes.into())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Stores a chunk of a file being added here, whose hash the caller computed from these
    /// very bytes, unless it is here and whole; true when stored. Appended to the open pack,
    /// not synced: see [`Chunks::sync`].
    pub fn put_local(&self, hash: &str, bytes: &[u8]) -> Result<bool> {
        if self.read(hash)?.is_some() {
            return Ok(false);
        }
        self.append(hash, bytes)?;
        Ok(true)
    }

    fn write_loose_file(&self, hash: &str, bytes: &[u8]) -> std::io::Result<()> {
        let dir = self.root.join("chunks").join(&hash[..2]);
        std::fs::create_dir_all(&dir)?;
        let tmp = dir.join(format!(".{hash}.{}.tmp", std::process::id()));
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, dir.join(hash)).inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
    }

    /// Makes the renames of chunk files written in the directories of `hashes` durable.
    pub fn sync_loose_dirs<'a>(&self, hashes: impl IntoIterator<Item = &'a str>) -> Result<()> {
        let dirs: HashSet<&str> = hashes.into_iter().map(|h| &h[..2]).collect();
        for dir in dirs {
            let path = self.root.join("chunks").join(dir);
            File::open(&path)
                .and_then(|d| d.sync_all())
                .with_context(|| format!("cannot sync {}", path.display()))?;
        }
        Ok(())
    }

    /// Stores a chunk received from elsewhere, refusing bytes that are not the chunk named.
    /// Appended to the open pack, not synced: see [`Chunks::sync`]. A chunk a crash cut
    /// short is not found at the next start, or fails its hash when read, and is fetched
    /// again.
    pub fn put_received(&self, hash: &str, bytes: &[u8]) -> Result<()> {
        if !is_hash(hash) || !key_matches(hash, bytes) {
            bail!(
                "a chunk sent as {hash} does not hash to it (its {} bytes hash to BLAKE3 {}, \
                 SHA-256 {}): refused",
                bytes.len(),
                blake3::hash(bytes).to_hex(),
                hex::encode(Sha256::digest(bytes))
            );
        }
        if bytes.len() > MAX_RECORD as usize {
            bail!(
                "a chunk of {} bytes is longer than any chunk: refused",
                bytes.len()
            );
        }
        // Here already, in a pack or (after `gc`) in a file of its own: not stored twice.
        if self.has(hash) {
            return Ok(());
        }
        self.append(hash, bytes)
    }

    fn append(&self, hash: &str, bytes: &[u8]) -> Result<()> {
        let mut appender = self.appender.lock().unwrap_or_else(|e| e.into_inner());
        if appender.as_ref().is_none_or(|a| a.len >= PACK_LIMIT) {
            if let Some(full) = appender.take() {
                self.close(&full)?;
            }
            *appender = Some(self.new_pack()?);
        }
        let open = appender.as_mut().expect("a pack is open");
        let mut header = Vec::with_capacity(RECORD_HEADER as usize);
        header.extend_from_slice(RECORD_MAGIC);
        header.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        header.extend_from_slice(&hex::decode(hash).expect("checked above"));
        let offset = open.len;
        let written = (|| {
            (&*open.file).write_all(&header)?;
            (&*open.file).write_all(bytes)
        })();
        if let Err(e) = written {
            // What was half written is a torn record: start the next record after it would
            // misplace every later one, so the pack is closed as it is.
            *appender = None;
            return Err(e).context("cannot append a chunk to its pack");
        }
        open.len += RECORD_HEADER + bytes.len() as u64;
        start_writeback(&open.file, offset, open.len - offset);
        let at = Location {
            pack: open.pack,
            offset: offset + RECORD_HEADER,
            len: bytes.len() as u32,
        };
        let mut packed = self.packed_mut();
        packed
            .files
            .entry(open.pack)
            .or_insert_with(|| open.file.clone());
        packed.at.insert(hash.to_owned(), at);
        Ok(())
    }

    fn new_pack(&self) -> Result<Appender> {
        let pack = {
            let packed = self.packed();
            packed.files.keys().next_back().map_or(1, |n| n + 1)
        };
        let path = pack_path(&self.root, pack);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .open(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        let file = Arc::new(file);
        self.packed_mut().files.insert(pack, file.clone());
        Ok(Appender { pack, file, len: 0 })
    }

    /// Gives a full pack its index, so that no later start scans it.
    fn close(&self, full: &Appender) -> Result<()> {
        full.file.sync_all()?;
        let records: Vec<(String, Location)> = self
            .packed()
            .at
            .iter()
            .filter(|(_, at)| at.pack == full.pack)
            .map(|(h, at)| (h.clone(), *at))
            .collect();
        write_index(&self.root, full.pack, full.len, &records)
    }

    /// Makes everything written under the directory durable: one flush of its filesystem
    /// (`syncfs`) instead of one per chunk.
    pub fn sync(&self) -> Result<()> {
        let dir = File::open(&self.root)
            .with_context(|| format!("cannot open {}", self.root.display()))?;
        rustix::fs::syncfs(&dir)
            .with_context(|| format!("cannot sync the filesystem of {}", self.root.display()))
    }

    /// Removes every chunk not in `wanted`: chunk files, and packs holding any such chunk
    /// (what they hold that is wanted is written out as chunk files first).
    pub fn collect(&self, wanted: &HashSet<String>) -> Result<Removed> {
        let mut removed = Removed::default();
        let loose = self.root.join("chunks");
        for dir in std::fs::read_dir(&loose)? {
            let dir = dir?.path();
            if !dir.is_dir() {
                continue;
            }
            for item in std::fs::read_dir(&dir)? {
                let item = item?;
                let name = item.file_name().to_string_lossy().into_owned();
                if !wanted.contains(&name) {
                    removed.bytes += item.metadata().map(|m| m.len()).unwrap_or(0);
                    std::fs::remove_file(item.path())?;
                    removed.chunks += 1;
                }
            }
        }
        // The open pack is closed first, so that what it holds can go too: appends wait for
        // the collection and start a new pack.
        let mut appender = self.appender.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(open) = appender.take() {
            self.close(&open)?;
        }
        let packs: Vec<u32> = self.packed().files.keys().copied().collect();
        for pack in packs {
            let held: Vec<(String, Location)> = self
                .packed()
                .at
                .iter()
                .filter(|(_, at)| at.pack == pack)
                .map(|(h, at)| (h.clone(), *at))
                .collect();
            let (keep, drop): (Vec<_>, Vec<_>) =
                held.into_iter().partition(|(h, _)| wanted.contains(h));
            let file_len = std::fs::metadata(pack_path(&self.root, pack))
                .map(|m| m.len())
                .unwrap_or(0);
            let kept_len: u64 = keep
                .iter()
                .map(|(_, at)| RECORD_HEADER + u64::from(at.len))
                .sum();
            if kept_len == file_len && !keep.is_empty() {
                continue;
            }
            for (hash, _) in &keep {
                let Some(bytes) = self.read(hash)? else {
                    continue;
                };
                self.write_loose_file(hash, &bytes)?;
            }
            self.sync_loose_dirs(keep.iter().map(|(h, _)| h.as_str()))?;
            {
                let mut packed = self.packed_mut();
                packed.at.retain(|_, at| at.pack != pack);
                packed.files.remove(&pack);
            }
            std::fs::remove_file(index_path(&self.root, pack)).or_else(not_found_is_fine)?;
            std::fs::remove_file(pack_path(&self.root, pack))?;
            removed.chunks += drop.len();
            removed.bytes += drop.iter().map(|(_, at)| u64::from(at.len)).sum::<u64>();
        }
        Ok(removed)
    }
}

fn not_found_is_fine(e: std::io::Error) -> std::io::Result<()> {
    if e.kind() == std::io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}

fn pack_path(root: &Path, pack: u32) -> PathBuf {
    root.join("packs").join(format!("{pack}.pack"))
}

fn index_path(root: &Path, pack: u32) -> PathBuf {
    root.join("packs").join(format!("{pack}.idx"))
}

/// The records of a pack, read from its start up to the first that is not whole.
fn scan(file: &File) -> std::io::Result<Vec<(String, Location)>> {
    let len = file.metadata()?.len();
    let mut records = Vec::new();
    let mut offset = 0u64;
    let mut header = [0u8; RECORD_HEADER as usize];
    while offset + RECORD_HEADER <= len {
        file.read_exact_at(&mut header, offset)?;
        let size = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
        let end = offset + RECORD_HEADER + u64::from(size);
        if &header[..4] != RECORD_MAGIC || size > MAX_RECORD || end > len {
            break;
        }
        records.push((
            hex::encode(&header[8..]),
            Location {
                pack: 0,
                offset: offset + RECORD_HEADER,
                len: size,
            },
        ));
        offset = end;
    }
    Ok(records)
}

/// A pack's index when it is whole and describes the pack as long as it is now.
fn read_index(root: &Path, pack: u32, pack_len: u64) -> Option<Vec<(String, Location)>> {
    let mut bytes = Vec::new();
    File::open(index_path(root, pack))
        .ok()?
        .read_to_end(&mut bytes)
        .ok()?;
    let body = bytes.strip_prefix(INDEX_MAGIC)?;
    let (len, entries) = body.split_at_checked(8)?;
    if u64::from_le_bytes(len.try_into().ok()?) != pack_len || entries.len() % 44 != 0 {
        return None;
    }
    entries
        .chunks_exact(44)
        .map(|e| {
            let offset = u64::from_le_bytes(e[32..40].try_into().ok()?);
            let len = u32::from_le_bytes(e[40..44].try_into().ok()?);
            (offset + u64::from(len) <= pack_len && len <= MAX_RECORD).then(|| {
                (
                    hex::encode(&e[..32]),
                    Location {
                        pack: 0,
                        offset,
                        len,
                    },
                )
            })
        })
        .collect()
}

fn write_index(
    root: &Path,
    pack: u32,
    pack_len: u64,
    records: &[(String, Location)],
) -> Result<()> {
    let mut bytes = Vec::with_capacity(16 + records.len() * 44);
    bytes.extend_from_slice(INDEX_MAGIC);
    bytes.extend_from_slice(&pack_len.to_le_bytes());
    for (hash, at) in records {
        bytes.extend_from_slice(&hex::decode(hash).expect("a hash"));
        bytes.extend_from_slice(&at.offset.to_le_bytes());
        bytes.extend_from_slice(&at.len.to_le_bytes());
    }
    let path = index_path(root, pack);
    crate::durable_file::replace(&path, &bytes, 0o644)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Starts writing a range of a file to disk without waiting: the flush that follows a fetch
/// then finds little left to write, instead of the whole artifact, so the disk works while
/// the network does. Only a hint: the flush is what makes the chunk durable.
#[allow(unsafe_code)]
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: sync_file_range(2) on a file descriptor this function borrows for the call; it
    // reads no memory of ours.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// Whether `bytes` hash to `key` (hex) under BLAKE3 or SHA-256. BLAKE3 is tried first: it is
/// the key of every chunk of a new artifact, and about four times faster.
pub(super) fn key_matches(key: &str, bytes: &[u8]) -> bool {
    let mut wanted = [0u8; 32];
    if hex::decode_to_slice(key, &mut wanted).is_err() {
        return false;
    }
    blake3::hash(bytes).as_bytes() == &wanted || Sha256::digest(bytes).as_slice() == wanted
}

pub(super) fn is_hash(text: &str) -> bool {
    text.len() == 64
        && text
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(seed: u8, len: usize) -> (String, Vec<u8>) {
        let bytes: Vec<u8> = (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect();
        (hex::encode(Sha256::digest(&bytes)), bytes)
    }

    #[test]
    fn received_chunks_survive_a_restart_through_a_scan_then_through_the_index() {
        let tmp = tempfile::tempdir().unwrap();
        let received: Vec<_> = (0..5).map(|i| chunk(i, 1000 + usize::from(i))).collect();
        {
            let chunks = Chunks::open(tmp.path()).unwrap();
            for (hash, bytes) in &received {
                chunks.put_received(hash, bytes).unwrap();
            }
            chunks.sync().unwrap();
            assert!(
                !index_path(tmp.path(), 1).exists(),
                "an open pack has no index"
            );
        }
        for _ in 0..2 {
            let chunks = Chunks::open(tmp.path()).unwrap();
            assert!(index_path(tmp.path(), 1).exists());
            for (hash, bytes) in &received {
                assert_eq!(
                    chunks.read(hash).unwrap().map(Vec::from).as_ref(),
                    Some(bytes)
                );
            }
        }
    }

    #[test]
    fn a_torn_tail_loses_only_the_chunk_it_cut_and_appends_go_to_a_new_pack() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (chunk(1, 3000), chunk(2, 3000));
        {
            let chunks = Chunks::open(tmp.path()).unwrap();
            chunks.put_received(&a.0, &a.1).unwrap();
            chunks.put_received(&b.0, &b.1).unwrap();
        }
        let pack = pack_path(tmp.path(), 1);
        let len = std::fs::metadata(&pack).unwrap().len();
        File::options()
            .write(true)
            .open(&pack)
            .unwrap()
            .set_len(len - 100)
            .unwrap();
        let chunks = Chunks::open(tmp.path()).unwrap();
        assert_eq!(chunks.read(&a.0).unwrap().map(Vec::from), Some(a.1.clone()));
        assert!(!chunks.has(&b.0));
        chunks.put_received(&b.0, &b.1).unwrap();
        assert!(pack_path(tmp.path(), 2).exists());
        drop(chunks);
        let chunks = Chunks::open(tmp.path()).unwrap();
        assert_eq!(chunks.read(&b.0).unwrap().map(Vec::from), Some(b.1));
    }

    #[test]
    fn a_damaged_packed_chunk_is_forgotten_and_its_new_copy_wins_after_a_restart() {
        let tmp = tempfile::tempdir().unwrap();
        let (hash, bytes) = chunk(3, 5000);
        {
            let chunks = Chunks::open(tmp.path()).unwrap();
            chunks.put_received(&hash, &bytes).unwrap();
        }
        let pack = pack_path(tmp.path(), 1);
        let mut on_disk = std::fs::read(&pack).unwrap();
        on_disk[RECORD_HEADER as usize + 7] ^= 0xff;
        std::fs::write(&pack, on_disk).unwrap();
        {
            let chunks = Chunks::open(tmp.path()).unwrap();
            assert!(chunks.has(&hash));
            assert_eq!(chunks.read(&hash).unwrap().map(Vec::from), None);
            assert!(!chunks.has(&hash), "a damaged chunk counts as missing");
            chunks.put_received(&hash, &bytes).unwrap();
        }
        let chunks = Chunks::open(tmp.path()).unwrap();
        assert_eq!(chunks.read(&hash).unwrap().map(Vec::from), Some(bytes));
    }

    #[test]
    fn collecting_rewrites_a_pack_with_unwanted_chunks_and_keeps_the_wanted_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let received: Vec<_> = (0..6).map(|i| chunk(i, 2000)).collect();
        {
            let chunks = Chunks::open(tmp.path()).unwrap();
            for (hash, bytes) in &received {
                chunks.put_received(hash, bytes).unwrap();
            }
        }
        let chunks = Chunks::open(tmp.path()).unwrap();
        let wanted: HashSet<String> = received[..2].iter().map(|(h, _)| h.clone()).collect();
        let removed = chunks.collect(&wanted).unwrap();
        assert_eq!((removed.chunks, removed.bytes), (4, 4 * 2000));
        assert!(!pack_path(tmp.path(), 1).exists());
        for (i, (hash, bytes)) in received.iter().enumerate() {
            let expected = (i < 2).then(|| bytes.clone());
            assert_eq!(
                chunks.read(hash).unwrap().map(Vec::from),
                expected,
                "chunk {i}"
            );
        }
        // A kept chunk, now a file of its own, received again: not appended to a pack too.
        chunks.put_received(&received[0].0, &received[0].1).unwrap();
        assert!(!chunks.packed().at.contains_key(&received[0].0));
        // The pack being appended to is closed and collected too; appends go on in a new one.
        chunks.put_received(&received[3].0, &received[3].1).unwrap();
        chunks.put_received(&received[4].0, &received[4].1).unwrap();
        let mut keep_three = wanted.clone();
        keep_three.insert(received[3].0.clone());
        assert_eq!(chunks.collect(&keep_three).unwrap().chunks, 1);
        chunks.put_received(&received[5].0, &received[5].1).unwrap();
        assert!(!chunks.has(&received[4].0));
        let everything: HashSet<String> = received.iter().map(|(h, _)| h.clone()).collect();
        assert_eq!(chunks.collect(&everything).unwrap().chunks, 0);
        drop(chunks);
        let chunks = Chunks::open(tmp.path()).unwrap();
        for (i, (hash, bytes)) in received.iter().enumerate() {
            let expected = [0, 1, 3, 5].contains(&i).then(|| bytes.clone());
            assert_eq!(
                chunks.read(hash).unwrap().map(Vec::from),
                expected,
                "chunk {i}"
            );
        }
    }

    #[test]
    fn a_chunk_that_is_not_what_it_claims_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let chunks = Chunks::open(tmp.path()).unwrap();
        let (hash, mut bytes) = chunk(9, 100);
        bytes[0] ^= 1;
        let err = chunks.put_received(&hash, &bytes).unwrap_err();
        assert!(err.to_string().contains("refused"), "{err}");
        assert!(!chunks.has(&hash));
        assert!(chunks.put_received("not a hash", &bytes).is_err());
    }
}
