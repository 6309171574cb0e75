//! The keys of an encrypted store: loading them at open, sealing and opening values, and
//! rotation.
//!
//! Rotation has two halves. The store key (held by the operator) is rotated by wrapping every
//! data key under the new store key too, in one commit, and later dropping the wraps under the
//! old one: between the two the store opens with either key, so a process killed anywhere in
//! between loses nothing, and the node never stops. Each rotation also starts a new data key;
//! values sealed with older data keys (or written before the store was encrypted) are re-sealed
//! in small batches ([`Store::reseal_step`]) while the node runs, and the old data keys are
//! dropped once none is left. Whether a re-seal is due is kept in the store, so one cut short by
//! a crash resumes at the next open.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata};

use super::{CHUNKS, KEYS, META, META_DATA_KEY, RESULT_LOG, Store, log_key};
use crate::error::{EngineContext, Result, StoreError};
use crate::seal::{Key, Sealer};

/// Set while values sealed with an older data key (or not sealed) may remain.
const META_RESEAL_PENDING: &str = "reseal-pending";

/// Set while values written before the store was encrypted may remain (they read as they are
/// until then; afterwards a value that is not sealed is refused).
const META_PLAINTEXT: &str = "plaintext-remains";

/// The fingerprint of the store key a rotation moves to, until the old key is retired.
const META_ROTATING_TO: &str = "rotating-to";

/// Values looked at per [`Store::reseal_step`] at most, sealed again or not: bounds how long
/// one step holds the store.
const RESEAL_SCAN: usize = 4096;

/// The keys of an encrypted store.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyStatus {
    /// Fingerprint of the store key this store was opened with.
    pub store_key: String,
    /// Fingerprints of other store keys that still wrap the data keys: a rotation not yet
    /// finished.
    pub other_store_keys: Vec<String>,
    /// The data key that seals new values.
    pub data_key: u32,
    /// The store key a rotation moves to, until the others are retired.
    pub rotating_to: Option<String>,
    /// Older data keys still held, for values not yet sealed again.
    pub old_data_keys: Vec<u32>,
    /// Whether values sealed with an older data key, or not at all, may remain.
    pub resealing: bool,
}

/// What one [`Store::reseal_step`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reseal {
    /// Values sealed again with the current data key.
    pub resealed: usize,
    /// Values that do not open (altered on disk, or sealed with a key the store lacks): left
    /// as they are.
    pub unreadable: usize,
    /// Whether every value is sealed with the current data key now (older ones are dropped).
    pub done: bool,
}

/// Where a re-seal pass has got to.
#[derive(Debug, Clone)]
pub(super) enum ResealCursor {
    /// In the chunk table, after this key (none: from its start).
    Chunks(Option<String>),
    /// In the result log, after this sequence number.
    Log(Option<u64>),
}

impl Store {
    /// The data keys of an encrypted store, unwrapped with the configured store key (the
    /// first one is made when a store is first opened with a key). A store that holds data
    /// keys refuses to open without a key that unwraps them: nothing is read before.
    pub(super) fn load_sealer(
        db: &Database,
        path: Option<&Path>,
        encryption: Option<&Key>,
    ) -> Result<Option<Sealer>> {
        let shown = || path.map(Path::to_owned).unwrap_or_default();
        let (wrapped, current) = read_keys(db)?;
        let Some(store_key) = encryption else {
            if wrapped.is_empty() {
                return Ok(None);
            }
            return Err(StoreError::Encrypted { path: shown() });
        };
        let data_keys = unwrap_all(store_key, &wrapped)?;
        if data_keys.is_empty() && !wrapped.is_empty() {
            let expected: BTreeSet<&str> = wrapped
                .keys()
                .filter_map(|name| name.split('/').next())
                .collect();
            return Err(StoreError::WrongKey {
                path: shown(),
                given: store_key.fingerprint(),
                expected: expected.into_iter().collect::<Vec<_>>().join(", "),
            });
        }
        match current {
            Some(current) if data_keys.contains_key(&current) => {
                let plaintext = plaintext_remains(db)?;
                return Ok(Some(
                    Sealer::new(&data_keys, current).with_plaintext(plaintext),
                ));
            }
            // Every data key is wrapped under every store key at once, so a key that unwraps
            // some but not the current one is a damaged key table: sealing with a new key
            // would hide values sealed with the current one.
            Some(current) if !data_keys.is_empty() => {
                return Err(StoreError::Sealed {
                    key: format!("data key {current}"),
                    reason: format!(
                        "the current data key is not wrapped under store key {}",
                        store_key.fingerprint()
                    ),
                });
            }
            _ => {}
        }
        // First opened with a key (a new store, or one encrypted from now on): a data key,
        // and a re-seal for what was written in plaintext before, if anything was.
        let id = data_keys.keys().max().map_or(1, |max| max + 1);
        let key = Key::generate();
        let txn = db.begin_write().during("make a data key")?;
        {
            let mut keys = txn.open_table(KEYS).during("make a data key")?;
            keys.insert(
                wrap_name(store_key, id).as_str(),
                store_key.wrap(&key, id).as_slice(),
            )
            .during("make a data key")?;
            let written_before = !txn
                .open_table(CHUNKS)
                .during("make a data key")?
                .is_empty()
                .during("make a data key")?
                || !txn
                    .open_table(RESULT_LOG)
                    .during("make a data key")?
                    .is_empty()
                    .during("make a data key")?;
            let mut meta = txn.open_table(META).during("make a data key")?;
            meta.insert(META_DATA_KEY, u64::from(id))
                .during("make a data key")?;
            if written_before {
                meta.insert(META_RESEAL_PENDING, 1)
                    .during("make a data key")?;
                meta.insert(META_PLAINTEXT, 1).during("make a data key")?;
            }
        }
        txn.commit().during("make a data key")?;
        let mut data_keys = data_keys;
        data_keys.insert(id, key);
        let plaintext = plaintext_remains(db)?;
        Ok(Some(Sealer::new(&data_keys, id).with_plaintext(plaintext)))
    }

    /// A value as it goes to disk under table key `key`: sealed in an encrypted store.
    pub(super) fn seal<'a>(&self, key: &str, plain: &'a [u8]) -> Cow<'a, [u8]> {
        match &self.sealer {
            Some(sealer) => Cow::Owned(sealer.seal(key.as_bytes(), plain)),
            None => Cow::Borrowed(plain),
        }
    }

    /// A value as read from disk under table key `key`, opened in an encrypted store.
    pub(super) fn unseal<'a>(&self, key: &str, stored: &'a [u8]) -> Result<Cow<'a, [u8]>> {
        match &self.sealer {
            Some(sealer) => sealer
                .open(key.as_bytes(), stored)
                .map_err(|e| StoreError::Sealed {
                    key: key.to_owned(),
                    reason: e.to_string(),
                }),
            None => Ok(Cow::Borrowed(stored)),
        }
    }

    /// Whether the store seals what it writes.
    pub fn encrypted(&self) -> bool {
        self.sealer.is_some()
    }

    /// The keys of an encrypted store; `None` when it is not encrypted.
    pub fn key_status(&self) -> Result<Option<KeyStatus>> {
        let (Some(sealer), Some(store_key)) = (&self.sealer, &self.config.encryption) else {
            return Ok(None);
        };
        let (wrapped, _) = read_keys(&self.db)?;
        let mine = store_key.fingerprint();
        let mut others = BTreeSet::new();
        let mut data_keys = BTreeSet::new();
        for name in wrapped.keys() {
            let Some((fingerprint, id)) = name.split_once('/') else {
                continue;
            };
            if fingerprint != mine {
                others.insert(fingerprint.to_owned());
            }
            if let Ok(id) = id.parse::<u32>() {
                data_keys.insert(id);
            }
        }
        let (resealing, rotating_to) = {
            let txn = self.db.begin_read().during("read the keys")?;
            let meta = txn.open_table(META).during("read the keys")?;
            let resealing = meta
                .get(META_RESEAL_PENDING)
                .during("read the keys")?
                .is_some();
            let rotating_to = meta
                .get(META_ROTATING_TO)
                .during("read the keys")?
                .map(|v| format!("{:016x}", v.value()));
            (resealing, rotating_to)
        };
        Ok(Some(KeyStatus {
            store_key: mine,
            rotating_to,
            other_store_keys: others.into_iter().collect(),
            data_key: sealer.current(),
            old_data_keys: data_keys
                .into_iter()
                .filter(|id| *id != sealer.current())
                .collect(),
            resealing,
        }))
    }

    /// Makes `new` a store key beside the current one and starts a new data key, in one
    /// durable commit: every data key, the new one too, is wrapped under every store key the
    /// store holds and under `new`, so the store opens with any of them whatever happens next.
    /// This store goes on with `new`; [`Store::retire_other_store_keys`] ends the rotation
    /// once `new` is where the node reads its key from. Returns the new data key's id.
    pub fn add_store_key(&mut self, new: &Key) -> Result<u32> {
        if let Some(refusal) = self.refusal() {
            return Err(refusal);
        }
        let (Some(_), Some(current_key)) = (&self.sealer, self.config.encryption.clone()) else {
            return Err(StoreError::NotEncrypted {
                path: self.path.clone().unwrap_or_default(),
            });
        };
        let (wrapped, _) = read_keys(&self.db)?;
        let mut data_keys = unwrap_all(&current_key, &wrapped)?;
        let id = data_keys.keys().max().map_or(1, |max| max + 1);
        data_keys.insert(id, Key::generate());
        let mut store_keys: Vec<Key> = vec![current_key.clone(), new.clone()];
        store_keys.dedup_by_key(|k| k.fingerprint());
        let txn = self.db.begin_write().during("rotate the store key")?;
        {
            let mut keys = txn.open_table(KEYS).during("rotate the store key")?;
            // A third key left by an earlier rotation that never finished opens nothing new:
            // the store holds the key it runs with and the one it is moving to, no more.
            for name in wrapped.keys() {
                keys.remove(name.as_str()).during("rotate the store key")?;
            }
            for store_key in &store_keys {
                for (data_id, data_key) in &data_keys {
                    keys.insert(
                        wrap_name(store_key, *data_id).as_str(),
                        store_key.wrap(data_key, *data_id).as_slice(),
                    )
                    .during("rotate the store key")?;
                }
            }
            let mut meta = txn.open_table(META).during("rotate the store key")?;
            meta.insert(META_DATA_KEY, u64::from(id))
                .during("rotate the store key")?;
            meta.insert(META_RESEAL_PENDING, 1)
                .during("rotate the store key")?;
            meta.insert(META_ROTATING_TO, fingerprint_number(new))
                .during("rotate the store key")?;
        }
        txn.commit().during("rotate the store key")?;
        let plaintext = plaintext_remains(&self.db)?;
        self.sealer = Some(Sealer::new(&data_keys, id).with_plaintext(plaintext));
        self.config.encryption = Some(new.clone());
        self.reseal_cursor = None;
        tracing::info!(
            store_key = %new.fingerprint(),
            data_key = id,
            "added a store key and started a new data key"
        );
        Ok(id)
    }

    /// Drops the wraps of every store key but the one this store uses, durably: afterwards
    /// only that key opens the store. Returns the fingerprints dropped.
    pub fn retire_other_store_keys(&mut self) -> Result<Vec<String>> {
        if let Some(refusal) = self.refusal() {
            return Err(refusal);
        }
        let Some(store_key) = &self.config.encryption else {
            return Ok(Vec::new());
        };
        if self.sealer.is_none() {
            return Ok(Vec::new());
        }
        let mine = format!("{}/", store_key.fingerprint());
        let (wrapped, _) = read_keys(&self.db)?;
        let others: Vec<&String> = wrapped.keys().filter(|n| !n.starts_with(&mine)).collect();
        if others.is_empty() {
            return Ok(Vec::new());
        }
        let txn = self.db.begin_write().during("retire old store keys")?;
        {
            let mut keys = txn.open_table(KEYS).during("retire old store keys")?;
            for name in &others {
                keys.remove(name.as_str()).during("retire old store keys")?;
            }
            let mut meta = txn.open_table(META).during("retire old store keys")?;
            meta.remove(META_ROTATING_TO)
                .during("retire old store keys")?;
        }
        txn.commit().during("retire old store keys")?;
        let dropped: BTreeSet<String> = others
            .iter()
            .filter_map(|n| n.split('/').next().map(str::to_owned))
            .collect();
        tracing::info!(dropped = ?dropped, "retired old store keys");
        Ok(dropped.into_iter().collect())
    }

    /// Seals again with the current data key up to `budget` values sealed with an older one
    /// (or written before the store was encrypted), going on from where the last step
    /// stopped; after a pass over every value, drops the older data keys. Does nothing in a
    /// store with no re-seal due.
    pub fn reseal_step(&mut self, budget: usize) -> Result<Reseal> {
        let Some(sealer) = self.sealer.clone() else {
            return Ok(Reseal {
                done: true,
                ..Reseal::default()
            });
        };
        if let Some(refusal) = self.refusal() {
            return Err(refusal);
        }
        {
            let txn = self.db.begin_read().during("re-seal values")?;
            let meta = txn.open_table(META).during("re-seal values")?;
            if meta
                .get(META_RESEAL_PENDING)
                .during("re-seal values")?
                .is_none()
            {
                return Ok(Reseal {
                    done: true,
                    ..Reseal::default()
                });
            }
        }
        let current = sealer.current();
        let stale = |stored: &[u8]| crate::seal::key_id(stored) != Some(current);
        let budget = budget.max(1);
        let cursor = self
            .reseal_cursor
            .take()
            .unwrap_or(ResealCursor::Chunks(None));
        let mut step = Reseal::default();
        // Gathered under a read transaction, written under one write transaction.
        let mut chunks: Vec<(String, Vec<u8>)> = Vec::new();
        let mut logged: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut next = None;
        {
            let txn = self.db.begin_read().during("re-seal values")?;
            let mut scanned = 0;
            let mut cursor = cursor;
            loop {
                match cursor {
                    ResealCursor::Chunks(after) => {
                        let table = txn.open_table(CHUNKS).during("re-seal values")?;
                        let range = match &after {
                            Some(after) => table.range::<&str>((
                                std::ops::Bound::Excluded(after.as_str()),
                                std::ops::Bound::Unbounded,
                            )),
                            None => table.range::<&str>(..),
                        }
                        .during("re-seal values")?;
                        let mut last = after.clone();
                        let mut ended = true;
                        for item in range {
                            let (k, v) = item.during("re-seal values")?;
                            let key = k.value().to_owned();
                            if stale(v.value()) {
                                chunks.push((key.clone(), v.value().to_vec()));
                            }
                            last = Some(key);
                            scanned += 1;
                            if chunks.len() >= budget || scanned >= RESEAL_SCAN {
                                ended = false;
                                break;
                            }
                        }
                        if !ended {
                            next = Some(ResealCursor::Chunks(last));
                            break;
                        }
                        cursor = ResealCursor::Log(None);
                    }
                    ResealCursor::Log(after) => {
                        let table = txn.open_table(RESULT_LOG).during("re-seal values")?;
                        let range = match after {
                            Some(after) => table.range((after + 1)..),
                            None => table.range(0..),
                        }
                        .during("re-seal values")?;
                        let mut last = after;
                        let mut ended = true;
                        for item in range {
                            let (k, v) = item.during("re-seal values")?;
                            if stale(v.value()) {
                                logged.push((k.value(), v.value().to_vec()));
                            }
                            last = Some(k.value());
                            scanned += 1;
                            if chunks.len() + logged.len() >= budget || scanned >= RESEAL_SCAN {
                                ended = false;
                                break;
                            }
                        }
                        if !ended {
                            next = Some(ResealCursor::Log(last));
                        }
                        break;
                    }
                }
            }
        }
        let pass_ended = next.is_none();
        let (wrapped, _) = read_keys(&self.db)?;
        let txn = self.db.begin_write().during("re-seal values")?;
        {
            let mut table = txn.open_table(CHUNKS).during("re-seal values")?;
            for (key, stored) in &chunks {
                match sealer.open(key.as_bytes(), stored) {
                    Ok(plain) => {
                        table
                            .insert(key.as_str(), sealer.seal(key.as_bytes(), &plain).as_slice())
                            .during("re-seal values")?;
                        step.resealed += 1;
                    }
                    Err(e) => {
                        tracing::warn!(key = %key, error = %e, "a stored value does not open; left as it is");
                        step.unreadable += 1;
                    }
                }
            }
            let mut log = txn.open_table(RESULT_LOG).during("re-seal values")?;
            for (seq, stored) in &logged {
                let aad = log_key(*seq);
                match sealer.open(aad.as_bytes(), stored) {
                    Ok(plain) => {
                        log.insert(*seq, sealer.seal(aad.as_bytes(), &plain).as_slice())
                            .during("re-seal values")?;
                        step.resealed += 1;
                    }
                    Err(e) => {
                        tracing::warn!(seq, error = %e, "a logged result does not open; left as it is");
                        step.unreadable += 1;
                    }
                }
            }
            if pass_ended {
                // Every value read in this pass is sealed with the current key now, and every
                // value written since was: the older keys seal nothing any more.
                let mut keys = txn.open_table(KEYS).during("re-seal values")?;
                for name in wrapped.keys() {
                    let id = name
                        .rsplit('/')
                        .next()
                        .and_then(|id| id.parse::<u32>().ok());
                    if id != Some(current) {
                        keys.remove(name.as_str()).during("re-seal values")?;
                    }
                }
                let mut meta = txn.open_table(META).during("re-seal values")?;
                meta.remove(META_RESEAL_PENDING).during("re-seal values")?;
                meta.remove(META_PLAINTEXT).during("re-seal values")?;
            }
        }
        txn.commit().during("re-seal values")?;
        if pass_ended {
            let (wrapped, _) = read_keys(&self.db)?;
            let store_key = self
                .config
                .encryption
                .clone()
                .expect("an encrypted store has a store key");
            self.sealer = Some(Sealer::new(&unwrap_all(&store_key, &wrapped)?, current));
            step.done = true;
            tracing::info!(
                data_key = current,
                "every value is sealed with the current data key"
            );
        }
        self.reseal_cursor = next;
        Ok(step)
    }
}

/// The name a data key's wrap is filed under: `<store key fingerprint>/<data key id>`.
fn wrap_name(store_key: &Key, id: u32) -> String {
    format!("{}/{id}", store_key.fingerprint())
}

/// Whether values written before the store was encrypted may remain.
fn plaintext_remains(db: &Database) -> Result<bool> {
    let txn = db.begin_read().during("read the keys")?;
    let meta = match txn.open_table(META) {
        Ok(meta) => meta,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(false),
        Err(e) => return Err(e).during("read the keys"),
    };
    Ok(meta.get(META_PLAINTEXT).during("read the keys")?.is_some())
}

/// A store key's fingerprint (16 hex digits) as a number, for the META table.
fn fingerprint_number(key: &Key) -> u64 {
    u64::from_str_radix(&key.fingerprint(), 16).expect("a fingerprint is 16 hex digits")
}

/// Wrapped data keys by the name they are filed under (`<store key fingerprint>/<id>`).
type Wrapped = BTreeMap<String, Vec<u8>>;

/// Every wrapped data key by name, and the id of the current data key.
fn read_keys(db: &Database) -> Result<(Wrapped, Option<u32>)> {
    let txn = db.begin_read().during("read the keys")?;
    let keys = txn.open_table(KEYS).during("read the keys")?;
    let mut wrapped = BTreeMap::new();
    for item in keys.iter().during("read the keys")? {
        let (k, v) = item.during("read the keys")?;
        wrapped.insert(k.value().to_owned(), v.value().to_vec());
    }
    let meta = txn.open_table(META).during("read the keys")?;
    let current = meta
        .get(META_DATA_KEY)
        .during("read the keys")?
        .map(|v| v.value() as u32);
    Ok((wrapped, current))
}

/// The data keys `store_key` wraps. A wrap filed under its fingerprint that does not unwrap
/// is a damaged key table, not a wrong key.
fn unwrap_all(store_key: &Key, wrapped: &Wrapped) -> Result<BTreeMap<u32, Key>> {
    let mine = format!("{}/", store_key.fingerprint());
    let mut data_keys = BTreeMap::new();
    for (name, bytes) in wrapped {
        let Some(id) = name
            .strip_prefix(&mine)
            .and_then(|id| id.parse::<u32>().ok())
        else {
            continue;
        };
        let key = store_key
            .unwrap_key(id, bytes)
            .ok_or_else(|| StoreError::Sealed {
                key: format!("data key {id}"),
                reason: "it does not unwrap with the store key whose fingerprint it is filed under"
                    .into(),
            })?;
        data_keys.insert(id, key);
    }
    Ok(data_keys)
}
