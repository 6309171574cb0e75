//! What a refused or failed write tells its caller, the same way from the CLI and the HTTP API:
//! a full disk or a watermark refusal answers 507 Insufficient Storage, a failing or
//! recovering store 503, each naming the data dir's filesystem and its free space; and the
//! health of the store (free space against `store.min_free`, a commit that failed) as
//! `/health` and `status` report it.

use std::path::Path;

use axum::http::StatusCode;
use crdt_store::headroom::{Headroom, human_bytes};
use crdt_store::{StoreError, StoreHandle, WriteFault};
use serde::{Deserialize, Serialize};

/// The HTTP status of a store error: 507 when the disk is full or under the watermark, 503
/// when the store failed under a write or is recovering, 500 for anything else.
pub fn status_of(error: &StoreError) -> StatusCode {
    match error.write_fault() {
        Some(WriteFault::NoSpace) => StatusCode::INSUFFICIENT_STORAGE,
        Some(WriteFault::Io) => StatusCode::SERVICE_UNAVAILABLE,
        None if matches!(error, StoreError::Stopped) => StatusCode::SERVICE_UNAVAILABLE,
        None => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The store error under an operation's error, if one is.
pub fn store_error_in(error: &anyhow::Error) -> Option<&StoreError> {
    error.chain().find_map(|c| c.downcast_ref::<StoreError>())
}

/// The status of an operation's error, by the store error under it.
pub fn status_of_any(error: &anyhow::Error) -> StatusCode {
    store_error_in(error).map_or(StatusCode::INTERNAL_SERVER_ERROR, status_of)
}

/// The message of a failed write: the error, and for a fault of the filesystem (whose own
/// message names neither) where the data dir is and how much room it has.
pub fn explain(error: &StoreError, data_dir: &Path) -> String {
    let fault = error.write_fault();
    if fault.is_none() || matches!(error, StoreError::NoHeadroom { .. }) {
        return error.to_string();
    }
    match crdt_store::headroom::filesystem_space(data_dir) {
        Ok((free, total)) => format!(
            "{error} (the filesystem of {} has {} free of {})",
            data_dir.display(),
            human_bytes(free),
            human_bytes(total)
        ),
        Err(_) => format!("{error} (data dir {})", data_dir.display()),
    }
}

/// Adds the data dir's free space to an operation's error when a filesystem fault is under it.
pub fn explain_any(error: anyhow::Error, data_dir: &Path) -> anyhow::Error {
    match store_error_in(&error) {
        Some(store) if store.write_fault().is_some() => {
            let message = explain(store, data_dir);
            error.context(message)
        }
        _ => error,
    }
}

/// The store's part of a node's health.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StoreHealth {
    /// The data dir.
    pub dir: String,
    pub free_bytes: u64,
    pub total_bytes: u64,
    /// The watermark in bytes on this filesystem (`store.min_free`).
    pub min_free_bytes: u64,
    /// Why the store refuses writes now (a failed commit it is recovering from), if it does.
    pub failing: Option<String>,
    /// The keys of an encrypted store.
    #[serde(default)]
    pub encryption: Option<crdt_store::KeyStatus>,
}

impl StoreHealth {
    /// What is wrong, one sentence each; empty when the store is healthy.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(failing) = &self.failing {
            problems.push(format!("the store refuses writes: {failing}"));
        }
        if self.total_bytes > 0 && self.free_bytes == 0 {
            problems.push(format!(
                "disk full: the filesystem of {} has no space left; writes fail",
                self.dir
            ));
        } else if self.free_bytes < self.min_free_bytes {
            problems.push(format!(
                "low disk: the filesystem of {} has {} free of {}, below store.min_free ({}); \
                 runs and writes are refused",
                self.dir,
                human_bytes(self.free_bytes),
                human_bytes(self.total_bytes),
                human_bytes(self.min_free_bytes)
            ));
        }
        problems
    }

    /// What needs an operator's eye without making the node unhealthy.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if let Some(to) = self
            .encryption
            .as_ref()
            .and_then(|k| k.rotating_to.as_ref())
        {
            warnings.push(format!(
                "a store key rotation to key {to} is unfinished: install the new key where the \
                 node reads its key and restart it; the old key opens the store until then"
            ));
        }
        warnings
    }
}

/// Reads the store's health; a store that does not answer within `patience` is reported as
/// such rather than waited for (a health check must answer).
pub async fn store_health(
    store: &StoreHandle,
    data_dir: &Path,
    patience: std::time::Duration,
) -> StoreHealth {
    let asked = store.call(|s| {
        let room: Option<Headroom> = s.headroom().and_then(Result::ok);
        // A broken store cannot read its keys; they are not what is wrong then.
        let keys = s.key_status().ok().flatten();
        Ok((room, s.broken().map(|b| b.cause.clone()), keys))
    });
    let dir = data_dir.display().to_string();
    match tokio::time::timeout(patience, asked.recv()).await {
        Ok(Ok((room, failing, encryption))) => {
            let room = room.unwrap_or(Headroom {
                dir: data_dir.to_owned(),
                free_bytes: 0,
                total_bytes: 0,
                min_free_bytes: 0,
            });
            StoreHealth {
                dir,
                free_bytes: room.free_bytes,
                total_bytes: room.total_bytes,
                min_free_bytes: room.min_free_bytes,
                failing,
                encryption,
            }
        }
        Ok(Err(e)) => StoreHealth {
            dir,
            failing: Some(e.to_string()),
            ..StoreHealth::default()
        },
        Err(_) => StoreHealth {
            dir,
            failing: Some(format!(
                "the store did not answer within {} ms",
                patience.as_millis()
            )),
            ..StoreHealth::default()
        },
    }
}

/// Whether the store would take a write now; the refusal names why not.
pub async fn admit_write(store: &StoreHandle, what: String) -> Result<(), StoreError> {
    store.call(move |s| s.require_headroom(what)).recv().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_disks_answer_507_and_failing_ones_503() {
        let full = StoreError::NoHeadroom {
            refused: "store 1 run result(s)".into(),
            dir: "/data".into(),
            free: 1,
            total: 2,
            min_free: 3,
        };
        assert_eq!(status_of(&full), StatusCode::INSUFFICIENT_STORAGE);
        let failing = StoreError::Recovering {
            cause: "EIO".into(),
            fault: WriteFault::Io,
        };
        assert_eq!(status_of(&failing), StatusCode::SERVICE_UNAVAILABLE);
        let enospc = StoreError::AppendFailed {
            reason: "no space".into(),
            fault: Some(WriteFault::NoSpace),
        };
        assert_eq!(status_of(&enospc), StatusCode::INSUFFICIENT_STORAGE);
        let dir = tempfile::tempdir().unwrap();
        let text = explain(&enospc, dir.path());
        assert!(text.contains("free of") && text.contains(&dir.path().display().to_string()));
        let wrapped = anyhow::Error::new(enospc).context("storing workflow w");
        assert_eq!(status_of_any(&wrapped), StatusCode::INSUFFICIENT_STORAGE);
    }

    #[test]
    fn low_space_and_a_failed_commit_are_problems() {
        let healthy = StoreHealth {
            dir: "/d".into(),
            free_bytes: 10,
            total_bytes: 100,
            min_free_bytes: 5,
            failing: None,
            encryption: None,
        };
        assert!(healthy.problems().is_empty());
        let low = StoreHealth {
            free_bytes: 1,
            ..healthy.clone()
        };
        assert!(low.problems()[0].contains("low disk"));
        let failing = StoreHealth {
            failing: Some("EIO".into()),
            ..healthy
        };
        assert!(failing.problems()[0].contains("refuses writes"));
    }
}
