//! The Rust client of the benchmark (`RHIZOME_BENCH_CLIENT=samod`): `samod` repos in this
//! process, on a tokio runtime, each dialling the server on its own WebSocket. The JavaScript
//! client spends milliseconds of its own per document and per edit, more than the servers it
//! is meant to compare; this one spends several times less. In the fetch it still spends more
//! than either server, which the client CPU column shows (this whole process's CPU from /proc,
//! in 10 ms ticks).
//!
//! The repos keep documents in memory (samod's `InMemoryStorage`), where the JavaScript client
//! of the fetch writes them to disk (nodefs storage): the fetch figures of the two clients
//! differ by that too.
//!
//! The fetch and the lag do what `bench/js/client.mjs` and `bench/js/lag.mjs` do, with the same
//! URL lists, edits and pacing. samod syncs a changed document at once, without
//! automerge-repo's 100 ms throttle; the pacing keeps that throttle out of the JavaScript
//! figures anyway.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use automerge::transaction::Transactable;
use automerge::{Automerge, ReadDoc, ScalarValue, Value as AmValue};
use futures::{SinkExt, Stream, StreamExt, TryStreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite;

/// As long as `lag.mjs` waits for a document or an edit.
const PATIENCE: Duration = Duration::from_secs(5);
/// `client.mjs` waits as long as it takes; this only turns a hang into a failed run.
const FETCH_PATIENCE: Duration = Duration::from_secs(300);
/// The wait before the first edit of `lag.mjs`, there to let the syncs of the fetch pass
/// automerge-repo's throttle; kept so that both clients start their series alike.
const SETTLE: Duration = Duration::from_millis(400);

/// A document of the server's URL list: its id and the heads the server holds.
struct Entry {
    id: samod::DocumentId,
    heads: BTreeSet<String>,
}

fn entries(urls: &Path) -> Vec<Entry> {
    let list: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(urls).unwrap()).unwrap();
    list.iter()
        .map(|e| Entry {
            id: e["url"]
                .as_str()
                .unwrap()
                .trim_start_matches("automerge:")
                .parse()
                .unwrap(),
            heads: e["heads"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| h.as_str().unwrap().to_owned())
                .collect(),
        })
        .collect()
}

fn heads(doc: &Automerge) -> BTreeSet<String> {
    doc.get_heads().iter().map(|h| h.to_string()).collect()
}

/// The workflow definition a document holds, parsed; `None` when it holds none.
fn definition(doc: &Automerge) -> Option<Value> {
    match doc.get(automerge::ROOT, "definition") {
        Ok(Some((AmValue::Scalar(s), _))) => match s.as_ref() {
            ScalarValue::Str(text) => serde_json::from_str(text).ok(),
            _ => None,
        },
        _ => None,
    }
}

/// When each edit's messages passed the clients' sockets, for the share of its lag that is the
/// server's: A's first frame naming the edited document after the edit, and B's latest frame.
#[derive(Default)]
struct Probe {
    watching: Mutex<Vec<u8>>,
    sent_at: Mutex<Option<Instant>>,
    arrived_at: Mutex<Option<Instant>>,
}

#[derive(Clone, Copy, PartialEq)]
enum Side {
    A,
    B,
}

/// Dials the server with tokio-tungstenite, each frame one protocol message.
struct Dialer {
    url: samod::Url,
    probe: Option<(Arc<Probe>, Side)>,
}

impl samod::Dialer for Dialer {
    type Error = std::convert::Infallible;

    fn url(&self) -> samod::Url {
        self.url.clone()
    }

    fn connect(
        &self,
    ) -> futures::future::BoxFuture<'static, Result<samod::Transport, samod::DialError<Self::Error>>>
    {
        let url = self.url.clone();
        let probe = self.probe.clone();
        Box::pin(async move {
            // Without TCP_NODELAY a small frame behind an unacknowledged one waits for the
            // peer's delayed ACK, tens of milliseconds; the JavaScript client's sockets (ws) and
            // the node's set it too.
            let (socket, _) =
                tokio_tungstenite::connect_async_with_config(url.as_str(), None, true)
                    .await
                    .map_err(samod::DialError::transient)?;
            let (sink, stream) = socket.split();
            let arrivals = probe
                .clone()
                .filter(|(_, side)| *side == Side::B)
                .map(|(p, _)| p);
            let stream = stream
                .try_filter_map(move |frame| {
                    let arrivals = arrivals.clone();
                    async move {
                        Ok(match frame {
                            tungstenite::Message::Binary(bytes) => {
                                if let Some(p) = arrivals {
                                    *p.arrived_at.lock().unwrap() = Some(Instant::now());
                                }
                                Some(bytes.to_vec())
                            }
                            _ => None,
                        })
                    }
                })
                .boxed();
            let sends = probe.filter(|(_, side)| *side == Side::A).map(|(p, _)| p);
            let sink =
                sink.with(move |bytes: Vec<u8>| {
                    if let Some(p) = &sends {
                        let mut sent_at = p.sent_at.lock().unwrap();
                        let watching = p.watching.lock().unwrap();
                        // Sync messages name their document as text, so its id among the bytes
                        // tells the edited document's message from the others.
                        if sent_at.is_none()
                            && !watching.is_empty()
                            && bytes.windows(watching.len()).any(|w| w == *watching)
                        {
                            *sent_at = Some(Instant::now());
                        }
                    }
                    async move {
                        Ok::<_, tungstenite::Error>(tungstenite::Message::Binary(bytes.into()))
                    }
                });
            Ok(samod::Transport::new(stream, Box::pin(sink)))
        })
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn repo(url: &str, probe: Option<(Arc<Probe>, Side)>) -> samod::Repo {
    let repo = samod::Repo::build_tokio().load().await;
    let url = samod::Url::parse(url).unwrap();
    repo.dial(
        samod::BackoffConfig::default(),
        Arc::new(Dialer { url, probe }),
    )
    .unwrap();
    repo
}

/// When `test` first held of the handle's document, looked at on each change the stream
/// reports (now, if it holds already); `None` after `within`. The stream is taken before
/// whatever is awaited, so that no change slips between.
async fn until(
    handle: &samod::DocHandle,
    changes: impl Stream,
    mut test: impl FnMut(&Automerge) -> bool,
    within: Duration,
) -> Option<Instant> {
    let mut changes = std::pin::pin!(changes);
    let watch = async {
        loop {
            if handle.with_document(|doc| test(doc)) {
                return Some(Instant::now());
            }
            changes.next().await?;
        }
    };
    tokio::time::timeout(within, watch).await.ok().flatten()
}

/// `Repo::find` without its false "unavailable": samod 0.16 also reports that for a search that
/// has asked no peer yet, which happens to documents searched for once the connection is up
/// and before their actor has been told of it (the peers it asked then number none, "all
/// unavailable"). Only a peer's own answer counts here.
async fn find(repo: &samod::Repo, id: &samod::DocumentId) -> Option<samod::DocHandle> {
    let (mut state, updates) = repo.search(id.clone()).ok()?;
    let mut updates = std::pin::pin!(updates);
    loop {
        match state {
            samod::SearchState::Found(handle) => return Some(handle),
            samod::SearchState::Requesting(ref request)
                if !request.peers().is_empty() && request.is_currently_unavailable() =>
            {
                return None;
            }
            _ => {}
        }
        state = updates.next().await?;
    }
}

/// A document found and holding the server's heads; false, and why, after `FETCH_PATIENCE`.
async fn fetched(repo: &samod::Repo, entry: &Entry) -> bool {
    let handle = match tokio::time::timeout(FETCH_PATIENCE, find(repo, &entry.id)).await {
        Ok(Some(handle)) => handle,
        Ok(None) => {
            eprintln!("    samod: the server has no document {}", entry.id);
            return false;
        }
        Err(_) => {
            eprintln!("    samod: document {} not found in time", entry.id);
            return false;
        }
    };
    let changes = handle.changes();
    let complete = until(
        &handle,
        changes,
        |doc| heads(doc) == entry.heads,
        FETCH_PATIENCE,
    )
    .await
    .is_some();
    if !complete {
        eprintln!(
            "    samod: document {} never had the server's heads",
            entry.id
        );
    }
    complete
}

pub struct Fetched {
    pub ms: f64,
    pub client_cpu_ms: f64,
    pub complete: bool,
}

/// A fresh repo fetches every document of `urls` from `server`: timed from the repo's creation
/// until the last document holds the server's heads, with this process's CPU meanwhile.
pub fn fetch(server: &str, urls: &Path) -> Fetched {
    let entries = entries(urls);
    let runtime = runtime();
    let cpu0 = super::common::process_cpu(std::process::id());
    let started = Instant::now();
    let (repo, complete) = runtime.block_on(async {
        let repo = repo(server, None).await;
        let complete = futures::future::join_all(entries.iter().map(|e| fetched(&repo, e))).await;
        (repo, complete)
    });
    let ms = started.elapsed().as_secs_f64() * 1e3;
    let cpu = super::common::process_cpu(std::process::id()).saturating_sub(cpu0);
    runtime.block_on(repo.stop());
    Fetched {
        ms,
        client_cpu_ms: cpu.as_secs_f64() * 1e3,
        complete: complete.into_iter().all(|c| c),
    }
}

async fn find_all(repo: &samod::Repo, entries: &[Entry]) -> Vec<Option<samod::DocHandle>> {
    futures::future::join_all(entries.iter().map(|e| find(repo, &e.id))).await
}

/// The figures of `lag.mjs`, in its units.
pub struct Lagged {
    pub lags_ms: Vec<f64>,
    pub a_ms: Vec<f64>,
    pub server_ms: Vec<f64>,
    pub b_ms: Vec<f64>,
    pub not_seen: u64,
    pub series_ms: f64,
}

fn ms(from: Instant, to: Instant) -> f64 {
    to.duration_since(from).as_secs_f64() * 1e3
}

/// Client A edits, client B sees the edit: `edits` edits to the first `docs` documents of `urls`
/// in turn, `pace_ms` apart, each a whole new definition (a marker as its description, the next
/// version), as `lag.mjs` makes them.
pub fn lag(
    a_url: &str,
    b_url: &str,
    urls: &Path,
    edits: usize,
    pace_ms: u64,
    docs: usize,
) -> Lagged {
    let mut entries = entries(urls);
    entries.truncate(docs);
    let runtime = runtime();
    let probe = Arc::new(Probe::default());
    runtime.block_on(async {
        let repo_a = repo(a_url, Some((probe.clone(), Side::A))).await;
        let repo_b = repo(b_url, Some((probe.clone(), Side::B))).await;
        let (found_a, found_b) = tokio::time::timeout(
            FETCH_PATIENCE,
            futures::future::join(find_all(&repo_a, &entries), find_all(&repo_b, &entries)),
        )
        .await
        .expect("both clients found the documents in time");
        let handle = |found: Option<samod::DocHandle>, e: &Entry| {
            found.unwrap_or_else(|| panic!("the server has no document {}", e.id))
        };
        let handles_a: Vec<_> = found_a
            .into_iter()
            .zip(&entries)
            .map(|(f, e)| handle(f, e))
            .collect();
        let handles_b: Vec<_> = found_b
            .into_iter()
            .zip(&entries)
            .map(|(f, e)| handle(f, e))
            .collect();
        for (i, e) in entries.iter().enumerate() {
            for h in [&handles_a[i], &handles_b[i]] {
                let has = |doc: &Automerge| heads(doc) == e.heads;
                assert!(
                    until(h, h.changes(), has, PATIENCE).await.is_some(),
                    "document {} did not reach both clients",
                    e.id
                );
            }
        }
        tokio::time::sleep(SETTLE).await;

        let mut out = Lagged {
            lags_ms: Vec::new(),
            a_ms: Vec::new(),
            server_ms: Vec::new(),
            b_ms: Vec::new(),
            not_seen: 0,
            series_ms: 0.0,
        };
        let mut missed_in_a_row = 0;
        let t0 = Instant::now();
        for k in 0..edits {
            let i = k % entries.len();
            let (a, b) = (&handles_a[i], &handles_b[i]);
            let marker = format!("lag edit {k}");
            let mut edited = a
                .with_document(|doc| definition(doc))
                .expect("A holds a definition");
            edited["description"] = json!(marker);
            edited["version"] = json!(edited["version"].as_u64().expect("a version number") + 1);
            let text = edited.to_string();
            let seen = b.changes();
            *probe.watching.lock().unwrap() = a.document_id().to_string().into_bytes();
            *probe.sent_at.lock().unwrap() = None;
            let at = Instant::now();
            a.with_document(|doc| {
                doc.transact::<_, _, automerge::AutomergeError>(|tx| {
                    tx.put(automerge::ROOT, "definition", text)?;
                    Ok(())
                })
                .unwrap();
            });
            let mut carried = None;
            let seen_at = until(
                b,
                seen,
                |doc| {
                    let marked = definition(doc).is_some_and(|d| d["description"] == marker);
                    if marked && carried.is_none() {
                        carried = *probe.arrived_at.lock().unwrap();
                    }
                    marked
                },
                PATIENCE,
            )
            .await;
            match seen_at {
                None => {
                    missed_in_a_row += 1;
                    if missed_in_a_row == 3 {
                        eprintln!(
                            "three edits in a row not seen by B (the last: {marker}); giving up"
                        );
                        break;
                    }
                }
                Some(seen_at) => {
                    missed_in_a_row = 0;
                    out.lags_ms.push(ms(at, seen_at));
                    let sent = *probe.sent_at.lock().unwrap();
                    if let (Some(sent), Some(carried)) = (sent, carried)
                        && carried >= sent
                    {
                        out.a_ms.push(ms(at, sent));
                        out.server_ms.push(ms(sent, carried));
                        out.b_ms.push(ms(carried, seen_at));
                    }
                }
            }
            // Every edit starts from what both hold (on a node, its signed version of A's).
            let deadline = Instant::now() + PATIENCE;
            while a.with_document(|doc| heads(doc)) != b.with_document(|doc| heads(doc))
                && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            tokio::time::sleep_until((t0 + Duration::from_millis(pace_ms * (k as u64 + 1))).into())
                .await;
        }
        out.series_ms = ms(t0, Instant::now());
        out.not_seen = (edits - out.lags_ms.len()) as u64;
        futures::join!(repo_a.stop(), repo_b.stop());
        out
    })
}
