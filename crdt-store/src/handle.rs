//! The store thread: owns the [`Store`], groups concurrent result appends into one fsynced
//! commit, folds logged results into documents when it is idle, and makes commits that were not
//! fsynced (applied sync messages) durable soon after.

use std::thread::JoinHandle;

use crate::docs::RunRecord;
use crate::error::{Result, StoreError};
use crate::store::{APPLY_BATCH, Store};

/// Requests waiting for the store thread; a full queue makes senders wait (backpressure).
pub const STORE_QUEUE_CAP: usize = 1024;

/// Most records acknowledged by one grouped commit.
pub const MAX_GROUP_RECORDS: usize = 8192;

/// How long the queue must stay quiet before logged results are folded into documents.
pub const APPLY_WHEN_IDLE_FOR: std::time::Duration = std::time::Duration::from_millis(20);

/// Logged-but-unapplied results above which the thread applies even when busy, so the log
/// stays bounded under sustained load.
pub const MAX_PENDING_BEFORE_APPLY: usize = 4 * APPLY_BATCH;

/// How long the queue must stay quiet before commits that were not fsynced are made durable.
pub const FLUSH_WHEN_IDLE_FOR: std::time::Duration = std::time::Duration::from_millis(20);

/// The longest a commit that was not fsynced waits for a durable one, even under load.
pub const MAX_UNFLUSHED_FOR: std::time::Duration = std::time::Duration::from_millis(250);

/// A request to run on the store thread; given the refusal instead when the store is broken.
type Call = Box<dyn FnOnce(&mut Store, Option<StoreError>) + Send>;

type AppendReply = flume::Sender<Result<Vec<u64>>>;

enum Request {
    Append {
        records: Vec<RunRecord>,
        reply: AppendReply,
    },
    Call(Call),
}

/// A cheap, cloneable handle to the store thread. The thread stops when the last handle is
/// dropped or [`StoreHandle::shutdown`] is called; it applies every logged result first.
#[derive(Clone)]
pub struct StoreHandle {
    requests: flume::Sender<Request>,
    thread: std::sync::Arc<std::sync::Mutex<Option<JoinHandle<()>>>>,
}

impl std::fmt::Debug for StoreHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreHandle").finish_non_exhaustive()
    }
}

/// The answer to a request, to be waited for (`wait`) or awaited (`.into_future()` via
/// [`Ticket::recv`]).
#[derive(Debug)]
pub struct Ticket<T>(flume::Receiver<Result<T>>);

impl<T> Ticket<T> {
    /// Blocks the calling thread until the answer arrives.
    pub fn wait(self) -> Result<T> {
        self.0.recv().unwrap_or(Err(StoreError::Stopped))
    }

    /// Waits for the answer without blocking an async executor.
    pub async fn recv(self) -> Result<T> {
        self.0
            .recv_async()
            .await
            .unwrap_or(Err(StoreError::Stopped))
    }
}

impl StoreHandle {
    /// Moves the store onto its own thread.
    pub fn spawn(store: Store) -> StoreHandle {
        let (requests, inbox) = flume::bounded(STORE_QUEUE_CAP);
        let thread = std::thread::Builder::new()
            .name("rhizome-store".into())
            .spawn(move || run(store, inbox))
            .expect("spawning the store thread");
        StoreHandle {
            requests,
            thread: std::sync::Arc::new(std::sync::Mutex::new(Some(thread))),
        }
    }

    /// Appends result records durably; the ticket resolves once they are fsynced. Records are
    /// validated here, so one bad record never fails another caller's group.
    pub fn append(&self, records: Vec<RunRecord>) -> Ticket<Vec<u64>> {
        let (reply, answer) = flume::bounded(1);
        if let Err(e) = records.iter().try_for_each(RunRecord::validate) {
            let _ = reply.send(Err(e));
        } else if self
            .requests
            .send(Request::Append {
                records,
                reply: reply.clone(),
            })
            .is_err()
        {
            let _ = reply.send(Err(StoreError::Stopped));
        }
        Ticket(answer)
    }

    /// Runs `f` on the store thread.
    pub fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Store) -> Result<R> + Send + 'static,
    ) -> Ticket<R> {
        let (reply, answer) = flume::bounded(1);
        let reply_err = reply.clone();
        let call: Call = Box::new(move |store, refusal| {
            let result = match refusal {
                Some(refusal) => Err(refusal),
                None => f(store),
            };
            if let Err(e) = &result {
                store.note_failure(e);
            }
            let _ = reply.send(result);
        });
        if self.requests.send(Request::Call(call)).is_err() {
            let _ = reply_err.send(Err(StoreError::Stopped));
        }
        Ticket(answer)
    }

    /// Runs `f` on the store thread even while the store is broken: `f` is given the refusal
    /// that [`StoreHandle::call`] would answer with, and decides what to answer itself (sync
    /// answers every operation it was asked for, carried out or refused). `f` notes storage
    /// failures on the store itself ([`Store::note_failure`]).
    pub fn call_even_if_broken<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Store, Option<StoreError>) -> R + Send + 'static,
    ) -> Ticket<R> {
        let (reply, answer) = flume::bounded(1);
        let reply_err = reply.clone();
        let call: Call = Box::new(move |store, refusal| {
            let _ = reply.send(Ok(f(store, refusal)));
        });
        if self.requests.send(Request::Call(call)).is_err() {
            let _ = reply_err.send(Err(StoreError::Stopped));
        }
        Ticket(answer)
    }

    /// Stops the thread after it has served every queued request and applied the log.
    pub fn shutdown(self) {
        let thread = self.thread.lock().expect("store handle lock").take();
        drop(self.requests);
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

fn run(mut store: Store, inbox: flume::Receiver<Request>) {
    let mut pending: usize = store.pending_results().unwrap_or(0) as usize;
    loop {
        if let Some(due) = store.broken().map(|b| b.retry_at) {
            let now = std::time::Instant::now();
            if now >= due {
                // A failed reopen is logged by the store and tried again when due.
                if store.reopen().is_ok() {
                    pending = store.pending_results().unwrap_or(0) as usize;
                }
                continue;
            }
            // Broken: answer requests with the refusal until the reopen is due.
            match inbox.recv_timeout(due - now) {
                Ok(request) => refuse(&mut store, request),
                Err(flume::RecvTimeoutError::Timeout) => {}
                Err(flume::RecvTimeoutError::Disconnected) => break,
            }
            continue;
        }
        // Folding is deferred until the queue has been quiet for a moment: folding after every
        // commit would put Automerge work between each acknowledgement and the next request,
        // and fold in tiny batches. Flushing waits for quiet for the same reason.
        let idle_work = if pending > 0 {
            Some(APPLY_WHEN_IDLE_FOR)
        } else if store.unflushed_since().is_some() {
            Some(FLUSH_WHEN_IDLE_FOR)
        } else {
            None
        };
        let first = if let Some(quiet) = idle_work {
            match inbox.recv_timeout(quiet) {
                Ok(request) => request,
                Err(flume::RecvTimeoutError::Timeout) => {
                    if pending > 0 {
                        pending = apply_some(&mut store, pending);
                    } else {
                        flush(&mut store);
                    }
                    continue;
                }
                Err(flume::RecvTimeoutError::Disconnected) => break,
            }
        } else {
            match inbox.recv() {
                Ok(request) => request,
                Err(_) => break,
            }
        };
        let mut group: Vec<(Vec<RunRecord>, AppendReply)> = Vec::new();
        let mut group_records = 0;
        let mut calls: Vec<Call> = Vec::new();
        let mut next = Some(first);
        while let Some(request) = next.take() {
            match request {
                Request::Append { records, reply } => {
                    group_records += records.len();
                    group.push((records, reply));
                }
                Request::Call(call) => calls.push(call),
            }
            if group_records < MAX_GROUP_RECORDS && calls.is_empty() {
                next = inbox.try_recv().ok();
            }
        }
        if !group.is_empty() {
            commit_group(&mut store, group);
            pending += group_records;
        }
        if pending >= MAX_PENDING_BEFORE_APPLY {
            pending = apply_some(&mut store, pending);
        }
        for call in calls {
            let refusal = store.refusal();
            call(&mut store, refusal);
            pending = store.pending_results().unwrap_or(0) as usize;
        }
        if store
            .unflushed_since()
            .is_some_and(|since| since.elapsed() >= MAX_UNFLUSHED_FOR)
        {
            flush(&mut store);
        }
    }
    if let Err(e) = store.apply_pending(usize::MAX) {
        tracing::error!(error = %e, "applying logged results at shutdown failed; they stay logged");
    }
}

/// Answers a request with the refusal of a broken store.
fn refuse(store: &mut Store, request: Request) {
    let refusal = store.refusal();
    match request {
        Request::Append { reply, .. } => {
            let _ = reply.send(Err(refusal.unwrap_or(StoreError::Stopped)));
        }
        Request::Call(call) => call(store, refusal),
    }
}

fn commit_group(store: &mut Store, group: Vec<(Vec<RunRecord>, AppendReply)>) {
    if let Some(refusal) = store.refusal() {
        for (_, reply) in group {
            store.note_refusal("recovering");
            let _ = reply.send(Err(refusal_clone(&refusal)));
        }
        return;
    }
    let all: Vec<RunRecord> = group.iter().flat_map(|(r, _)| r.iter().cloned()).collect();
    match store.append_results(&all) {
        Ok(seqs) => {
            let mut seqs = seqs.into_iter();
            for (records, reply) in group {
                let mine: Vec<u64> = seqs.by_ref().take(records.len()).collect();
                let _ = reply.send(Ok(mine));
            }
        }
        Err(StoreError::NoHeadroom {
            refused: _,
            dir,
            free,
            total,
            min_free,
        }) => {
            // Each caller hears of its own records: the refusal is not an engine failure.
            for (records, reply) in group {
                let _ = reply.send(Err(StoreError::NoHeadroom {
                    refused: format!("store {} run result(s)", records.len()),
                    dir: dir.clone(),
                    free,
                    total,
                    min_free,
                }));
            }
        }
        Err(e) => {
            let reason = e.to_string();
            let fault = e.write_fault();
            tracing::error!(error = %reason, records = all.len(), "durable append failed");
            store.note_failure(&e);
            for (_, reply) in group {
                let _ = reply.send(Err(StoreError::AppendFailed {
                    reason: reason.clone(),
                    fault,
                }));
            }
        }
    }
}

/// The refusal again, for another waiting caller.
fn refusal_clone(refusal: &StoreError) -> StoreError {
    match refusal {
        StoreError::Recovering { cause, fault } => StoreError::Recovering {
            cause: cause.clone(),
            fault: *fault,
        },
        other => StoreError::AppendFailed {
            reason: other.to_string(),
            fault: other.write_fault(),
        },
    }
}

fn flush(store: &mut Store) {
    if let Err(e) = store.flush() {
        store.note_failure(&e);
        // What was applied stays in memory and at the peers it came from; the next durable
        // commit or the next session brings it to disk.
        tracing::error!(error = %e, "making applied sync messages durable failed");
    }
}

fn apply_some(store: &mut Store, pending: usize) -> usize {
    match store.apply_pending(APPLY_BATCH) {
        Ok(n) => pending.saturating_sub(n.max(1)),
        Err(e) => {
            store.note_failure(&e);
            // The records stay in the log; retrying at once would spin, so wait for new work.
            tracing::error!(error = %e, "folding logged results into documents failed");
            0
        }
    }
}
