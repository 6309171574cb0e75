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
    },
    /// The store thread has stopped, so the request could not be served.
    #[error("the store thread has stopped")]
    Stopped,
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
