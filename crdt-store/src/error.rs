use std::path::PathBuf;

/// Everything that can go wrong in the store. Each message names the file or the document
/// concerned and what was wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The data directory or the store file could not be created or opened (permissions, a file
    /// where a directory was expected, a full disk).
    #[error("cannot open store at {path}: {source}")]
    Io {
        /// The path that could not be used.
        path: PathBuf,
        /// The underlying error from the operating system.
        source: std::io::Error,
    },
    /// The store file exists but is not a valid store (truncated, overwritten, or not a redb file).
    #[error("store file {path} is corrupt or not a rhizome store: {reason}")]
    CorruptFile {
        /// The store file.
        path: PathBuf,
        /// What the storage engine reported.
        reason: String,
    },
    /// The store is encrypted and no store key was given.
    #[error(
        "store file {path} is encrypted: give its key (`store.encryption = true` with \
         `store.key_file`, RHIZOME_STORE_KEY, or the systemd credential `rhizome-store-key`)"
    )]
    Encrypted {
        /// The store file.
        path: PathBuf,
    },
    /// The store key given did not wrap any of the store's data keys: a wrong key. Nothing of
    /// the store was read.
    #[error(
        "the store key given (fingerprint {given}) does not open store file {path}, which was \
         encrypted with {expected}: a wrong key"
    )]
    WrongKey {
        /// The store file.
        path: PathBuf,
        /// The fingerprint of the key given.
        given: String,
        /// The fingerprints of the keys that wrapped the store's data keys.
        expected: String,
    },
    /// A key operation on a store that is not encrypted.
    #[error(
        "store file {path} is not encrypted: there is no key to rotate (turn on \
         `store.encryption` first)"
    )]
    NotEncrypted {
        /// The store file.
        path: PathBuf,
    },
    /// A sealed value did not open: altered on disk, or sealed with a data key the store lost.
    #[error("stored value {key} does not open: {reason}")]
    Sealed {
        /// The value's key.
        key: String,
        /// Why.
        reason: String,
    },
    /// Another process holds the store open.
    #[error(
        "store file {path} is in use by another process (is a rhizome node running on this data dir?)"
    )]
    Locked {
        /// The store file.
        path: PathBuf,
    },
    /// The store was written by an incompatible version of the store format.
    #[error("store file {path} has format version {found}, this build reads version {expected}")]
    FormatVersion {
        /// The store file.
        path: PathBuf,
        /// The version found in the file.
        found: u64,
        /// The version this build understands.
        expected: u64,
    },
    /// A storage engine operation failed after the store was opened.
    #[error("store operation `{operation}` failed: {source}")]
    Engine {
        /// What the store was doing.
        operation: &'static str,
        /// The storage engine's error.
        source: Box<redb::Error>,
    },
    /// A stored Automerge chunk of a document could not be decoded.
    #[error("document {doc} has a corrupt chunk {key}: {reason}")]
    CorruptChunk {
        /// The document's name (or id when the name is unknown).
        doc: String,
        /// The storage key of the chunk.
        key: String,
        /// What Automerge reported.
        reason: String,
    },
    /// A document's content does not have the shape its kind requires.
    #[error("document {doc} does not have the shape of a {kind} document: {reason}")]
    Shape {
        /// The document's name.
        doc: String,
        /// The kind it was read as.
        kind: &'static str,
        /// What did not fit.
        reason: String,
    },
    /// No document with this name or id is stored.
    #[error("no document named or identified `{0}` in this store")]
    NoSuchDocument(String),
    /// A document name does not follow the naming scheme (`mesh`, `workflow/<id>`,
    /// `results/<node>/<window>`, `rollup/<zone>/<window>`).
    #[error("invalid document name `{name}`: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// What was wrong with it.
        reason: String,
    },
    /// A result record was rejected before it was stored.
    #[error("invalid result record `{run_id}`: {reason}")]
    InvalidRecord {
        /// The record's run id (possibly empty).
        run_id: String,
        /// What was wrong with it.
        reason: String,
    },
    /// A write to a document could not be turned into Automerge operations.
    #[error("cannot write document {doc}: {reason}")]
    Write {
        /// The document's name.
        doc: String,
        /// What went wrong.
        reason: String,
    },
    /// A grouped durable append failed; none of the group's records were stored.
    #[error("durable append failed, none of these records were stored: {reason}")]
    AppendFailed {
        /// What the storage engine reported.
        reason: String,
        /// What kind of failure it was, when the filesystem failed under it.
        fault: Option<WriteFault>,
    },
    /// The store thread has stopped, so the request could not be served.
    #[error("the store thread has stopped")]
    Stopped,
    /// The filesystem of the data dir has less free space than the configured watermark
    /// (`store.min_free`), so the write was refused before it could half-happen.
    #[error(
        "refused to {refused}: the filesystem of {dir} has {free} free of {total}, below the \
         store.min_free watermark of {min_free}; free space there (or lower store.min_free)",
        free = crate::headroom::human_bytes(*free),
        total = crate::headroom::human_bytes(*total),
        min_free = crate::headroom::human_bytes(*min_free)
    )]
    NoHeadroom {
        /// What was refused.
        refused: String,
        /// The data dir.
        dir: PathBuf,
        /// Bytes available to this user there.
        free: u64,
        /// Size of that filesystem.
        total: u64,
        /// The watermark in bytes.
        min_free: u64,
    },
    /// An earlier commit failed (full disk, I/O error); the store is being reopened and the
    /// request was refused rather than served by a database in an unknown state.
    #[error("the store is recovering from a failed write ({cause}); retry in a moment")]
    Recovering {
        /// What made the write fail.
        cause: String,
        /// What kind of failure it was.
        fault: WriteFault,
    },
}

/// How the filesystem failed under a write: the difference between "free some space" and
/// "check the device".
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WriteFault {
    /// The filesystem is full (ENOSPC, EDQUOT) or below the watermark.
    NoSpace,
    /// Any other I/O failure (EIO, a short write, a vanished device).
    Io,
}

impl StoreError {
    /// The operating system error under a failed storage operation, when there is one: what
    /// tells a full disk or a failing device from a refusal or a bad document.
    pub fn io_error(&self) -> Option<&std::io::Error> {
        match self {
            StoreError::Io { source, .. } => Some(source),
            StoreError::Engine { source, .. } => match source.as_ref() {
                redb::Error::Io(e) => Some(e),
                _ => None,
            },
            _ => None,
        }
    }

    /// Whether the storage engine failed underneath the store (an I/O error, or one that an
    /// earlier I/O error left behind): the database must be reopened before it is trusted.
    pub fn is_storage_failure(&self) -> bool {
        match self {
            StoreError::Engine { source, .. } => {
                matches!(
                    source.as_ref(),
                    redb::Error::Io(_) | redb::Error::PreviousIo
                )
            }
            _ => false,
        }
    }

    /// How the filesystem failed under this error, if it did.
    pub fn write_fault(&self) -> Option<WriteFault> {
        match self {
            StoreError::NoHeadroom { .. } => Some(WriteFault::NoSpace),
            StoreError::AppendFailed { fault, .. } => *fault,
            StoreError::Recovering { fault, .. } => Some(*fault),
            StoreError::Engine { source, .. } if matches!(**source, redb::Error::PreviousIo) => {
                Some(WriteFault::Io)
            }
            _ => self.io_error().map(|e| {
                if crate::headroom::is_no_space(e) {
                    WriteFault::NoSpace
                } else {
                    WriteFault::Io
                }
            }),
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

pub(crate) trait EngineContext<T> {
    fn during(self, operation: &'static str) -> Result<T>;
}

impl<T, E: Into<redb::Error>> EngineContext<T> for std::result::Result<T, E> {
    fn during(self, operation: &'static str) -> Result<T> {
        self.map_err(|e| StoreError::Engine {
            operation,
            source: Box::new(e.into()),
        })
    }
}
