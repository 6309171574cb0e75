//! The store key: where a node reads it, how `init --encrypt` makes one, and how
//! `store rotate-key` moves a store to a new one without stopping the node.
//!
//! The key is looked for in `RHIZOME_STORE_KEY`, then in the systemd credential
//! `rhizome-store-key`, then in a key file (`store.key_file`, by default `store.key` in the data
//! dir). Rotation with a key file is done whole by the node: the new key is written beside the
//! old one (`store.key.new`), added to the store (which then opens with either key), moved over
//! the old file, and the old key is retired. A kill anywhere in between is finished at the next
//! open. A key held elsewhere (variable, credential) cannot be replaced by the node: it writes
//! the new key to `store.key.next` in the data dir; once the operator has installed it and
//! restarted the node, the first open with the new key retires the old one (as does
//! `rotate-key --finish`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use crdt_store::seal::Key;
use crdt_store::{Store, StoreConfig, StoreError};
use serde::{Deserialize, Serialize};

use crate::config::StoreSection;

/// The key file's default name, in the data dir.
pub const KEY_FILE: &str = "store.key";

/// The environment variable a store key may come from.
pub const VARIABLE: &str = "RHIZOME_STORE_KEY";

/// The systemd credential a store key may come from (`LoadCredential=rhizome-store-key:…`).
pub const CREDENTIAL: &str = "rhizome-store-key";

/// Where a rotation leaves the new key when the node does not hold its key in a file.
pub const NEXT_KEY_FILE: &str = "store.key.next";

/// Store values re-sealed per step of the background re-seal.
const RESEAL_BATCH: usize = 256;

/// Pause between re-seal steps, so that the store serves everything else in between.
const RESEAL_PAUSE: std::time::Duration = std::time::Duration::from_millis(20);

/// Where the node reads its store key from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `RHIZOME_STORE_KEY`.
    Variable,
    /// A systemd credential file.
    Credential(PathBuf),
    /// A key file.
    File(PathBuf),
}

impl std::fmt::Display for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::Variable => write!(f, "the variable {VARIABLE}"),
            KeySource::Credential(path) => write!(f, "the systemd credential {}", path.display()),
            KeySource::File(path) => write!(f, "the key file {}", path.display()),
        }
    }
}

/// Where the store key of a node with `section` in `data_dir` is read from.
pub fn source(section: &StoreSection, data_dir: &Path) -> KeySource {
    if std::env::var_os(VARIABLE).is_some() {
        return KeySource::Variable;
    }
    if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
        let path = Path::new(&dir).join(CREDENTIAL);
        if path.exists() {
            return KeySource::Credential(path);
        }
    }
    KeySource::File(key_file(section, data_dir))
}

/// The key file of a node, whether or not it exists.
pub fn key_file(section: &StoreSection, data_dir: &Path) -> PathBuf {
    if section.key_file.is_empty() {
        data_dir.join(KEY_FILE)
    } else {
        data_dir.join(&section.key_file)
    }
}

/// Reads the store key from `source`; a missing or malformed key is an error naming where it
/// was looked for.
pub fn read(source: &KeySource) -> Result<Key> {
    let text = match source {
        KeySource::Variable => std::env::var(VARIABLE).with_context(|| format!("{source}"))?,
        KeySource::Credential(path) | KeySource::File(path) => std::fs::read_to_string(path)
            .with_context(|| {
                format!(
                    "store.encryption is on, but the store key is not in {VARIABLE}, a systemd \
                     credential {CREDENTIAL}, or {}",
                    path.display()
                )
            })?,
    };
    Key::from_hex(&text).with_context(|| format!("the store key in {source} is not 64 hex digits"))
}

/// Makes a new store key in a new file readable by its owner only (`init --encrypt`).
pub fn generate_file(path: &Path) -> Result<Key> {
    let key = Key::generate();
    crate::identity::write_private(path, &format!("{}\n", key.to_hex()))?;
    sync_parent(path)?;
    Ok(key)
}

/// The file a rotation writes the new key to before moving it over `file`.
fn pending(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".new");
    PathBuf::from(name)
}

/// Writes `key` to `path` durably, readable by its owner only, replacing what is there:
/// through a synced temporary file renamed over it, so a kill never leaves a part of a key
/// under `path` (a half-written `store.key.new` would stop the next open).
fn write_replacing(path: &Path, key: &Key) -> Result<()> {
    crate::durable_file::replace(path, format!("{}\n", key.to_hex()).as_bytes(), 0o600)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Makes a file's creation or renaming durable.
fn sync_parent(path: &Path) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync {}", dir.display()))
}

/// Opens the store at `path` with the key `section` says, finishing a rotation that a kill
/// cut short: a new key written beside the key file is used when the store took it, and
/// dropped when it never reached the store.
pub fn open(
    section: &StoreSection,
    data_dir: &Path,
    path: &Path,
    mut config: StoreConfig,
) -> Result<Store> {
    if !section.encryption {
        config.encryption = None;
        return Ok(Store::open(path, config)?);
    }
    let source = source(section, data_dir);
    if let KeySource::File(file) = &source {
        let pending = pending(file);
        if pending.exists() {
            let new = read(&KeySource::File(pending.clone()))?;
            config.encryption = Some(new);
            match Store::open(path, config.clone()) {
                Ok(mut store) => {
                    std::fs::rename(&pending, file).with_context(|| {
                        format!("cannot move {} to {}", pending.display(), file.display())
                    })?;
                    sync_parent(file)?;
                    let retired = store.retire_other_store_keys()?;
                    tracing::info!(?retired, "finished a store key rotation that was cut short");
                    return Ok(store);
                }
                // The rotation never reached the store: the old key stays.
                Err(StoreError::WrongKey { .. }) => {
                    std::fs::remove_file(&pending)
                        .with_context(|| format!("cannot remove {}", pending.display()))?;
                    tracing::info!(
                        "dropped the new key of a store key rotation that never started"
                    );
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    config.encryption = Some(read(&source)?);
    let mut store = Store::open(path, config)?;
    if let Some(status) = store.key_status()?
        && let Some(to) = &status.rotating_to
    {
        if *to == status.store_key {
            // The node reads the key the rotation moved to: the old one has no use left.
            let retired = retire_old(&mut store, data_dir)?;
            tracing::info!(?retired, store_key = %to, "finished a store key rotation");
        } else {
            tracing::warn!(
                rotating_to = %to,
                store_key = %status.store_key,
                "a store key rotation is unfinished: install the new key ({NEXT_KEY_FILE} in the \
                 data dir) where the node reads its key and restart the node"
            );
        }
    }
    Ok(store)
}

/// Retires every store key but the store's own, and the copy of the new key a rotation left
/// in the data dir.
fn retire_old(store: &mut Store, data_dir: &Path) -> Result<Vec<String>> {
    let retired = store.retire_other_store_keys()?;
    let next = data_dir.join(NEXT_KEY_FILE);
    if next.exists() {
        std::fs::remove_file(&next).with_context(|| format!("cannot remove {}", next.display()))?;
        sync_parent(&next)?;
    }
    Ok(retired)
}

/// What `store rotate-key` did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rotation {
    /// Fingerprint of the store key the store is moving to (or has moved to).
    pub store_key: String,
    /// The data key that seals new values; older values are re-sealed in the background.
    pub data_key: u32,
    /// Fingerprints of the store keys that no longer open the store.
    pub retired: Vec<String>,
    /// Where the new key was written, when the node does not keep its key in a file.
    pub new_key_file: Option<PathBuf>,
    /// Whether the old store key is retired (only the new one opens the store).
    pub finished: bool,
    /// Where the node reads its key from.
    pub source: String,
}

/// Rotates the store key of an open store. With a key file, the whole rotation; otherwise its
/// first half (the new key is written to [`NEXT_KEY_FILE`] in `data_dir`).
pub fn rotate(store: &mut Store, source: &KeySource, data_dir: &Path) -> Result<Rotation> {
    let new = Key::generate();
    match source {
        KeySource::File(file) => {
            let pending = pending(file);
            write_replacing(&pending, &new)?;
            let data_key = store.add_store_key(&new)?;
            std::fs::rename(&pending, file).with_context(|| {
                format!("cannot move {} to {}", pending.display(), file.display())
            })?;
            sync_parent(file)?;
            let retired = store.retire_other_store_keys()?;
            Ok(Rotation {
                store_key: new.fingerprint(),
                data_key,
                retired,
                new_key_file: None,
                finished: true,
                source: source.to_string(),
            })
        }
        KeySource::Variable | KeySource::Credential(_) => {
            let next = data_dir.join(NEXT_KEY_FILE);
            write_replacing(&next, &new)?;
            let data_key = store.add_store_key(&new)?;
            Ok(Rotation {
                store_key: new.fingerprint(),
                data_key,
                retired: Vec::new(),
                new_key_file: Some(next),
                finished: false,
                source: source.to_string(),
            })
        }
    }
}

/// Retires the old store key once the node reads the new one from `source`: the second half
/// of a rotation whose key the node does not keep in a file.
pub fn finish(store: &mut Store, source: &KeySource, data_dir: &Path) -> Result<Rotation> {
    let Some(status) = store.key_status()? else {
        bail!("the store is not encrypted: there is no key rotation to finish");
    };
    let reads = read(source)?.fingerprint();
    // Opening the store with the new key finished it already.
    let to = status
        .rotating_to
        .unwrap_or_else(|| status.store_key.clone());
    if reads != to {
        bail!(
            "the node reads store key {reads} from {source}, but the store is moving to key {to}: \
             install the new key ({}) there and restart the node before finishing",
            data_dir.join(NEXT_KEY_FILE).display()
        );
    }
    let retired = retire_old(store, data_dir)?;
    Ok(Rotation {
        store_key: to,
        data_key: status.data_key,
        retired,
        new_key_file: None,
        finished: true,
        source: source.to_string(),
    })
}

/// Re-seals, while the node runs, what older data keys sealed: a batch at a time with pauses
/// between, then waits for `wake` (a rotation). A re-seal cut short by a kill goes on at the
/// next start.
pub async fn reseal(store: crdt_store::StoreHandle, wake: std::sync::Arc<tokio::sync::Notify>) {
    let mut resealed = 0usize;
    loop {
        match store.call(|s| s.reseal_step(RESEAL_BATCH)).recv().await {
            Ok(step) => {
                resealed += step.resealed;
                if step.unreadable > 0 {
                    tracing::warn!(
                        values = step.unreadable,
                        "stored values that do not open were left as they are"
                    );
                }
                if step.done {
                    if resealed > 0 {
                        tracing::info!(resealed, "re-sealed the store with its current data key");
                    }
                    resealed = 0;
                    wake.notified().await;
                } else {
                    tokio::time::sleep(RESEAL_PAUSE).await;
                }
            }
            Err(crdt_store::StoreError::Stopped) => return,
            Err(e) => {
                tracing::warn!(error = %e, "re-sealing the store failed; trying again");
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            }
        }
    }
}

/// The store's encryption as `store keys` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeysView {
    pub encrypted: bool,
    /// Where the node reads its store key from.
    pub source: Option<String>,
    /// The keys, when encrypted.
    pub keys: Option<crdt_store::KeyStatus>,
}

/// The encryption of an open store, for a node whose key comes from `source`.
pub fn view(store: &Store, source: Option<&KeySource>) -> Result<KeysView> {
    let keys = store.key_status()?;
    Ok(KeysView {
        encrypted: keys.is_some(),
        source: source.map(ToString::to_string),
        keys,
    })
}
