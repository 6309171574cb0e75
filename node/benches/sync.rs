//! Document sync between two nodes on loopback, wired as `rhizome start` wires them
//! ([`rhizome::fleet::sync::start`]: a redb store on its own thread, the mesh driver with QUIC and
//! mutual TLS, the sync actor; each node on its own two-worker runtime, as the daemon runs), side
//! by side with JavaScript automerge-repo doing the same work (`bench/js`).
//!
//! Sections (`RHIZOME_BENCH_SECTIONS`, default all of them):
//!
//! - `lag`: an edit committed on A until B's store reports the new heads, both taken from the
//!   stores' change listeners on one clock. Documents of ~10, 1,000 and 10,000 changes; edits
//!   paced (`RHIZOME_BENCH_PACE_MS` apart) and back to back (each edit as soon as the previous
//!   commit returned, B not waited for). When B's next heads cover several edits, each of them
//!   became visible then.
//! - `throughput`: a fresh B connects to A, which holds 1,000 documents × 10 changes, or 1
//!   document × 10,000 changes, or 10 documents × 10 changes; time from starting B until B's store
//!   holds every document with A's heads, replication frame bytes (the sync counters of both
//!   sides, summaries, catalogues and sync messages as framed) and UDP payload bytes (quinn's
//!   counters of the connection: handshake, hello, status and heartbeats included) once
//!   replication is quiet. Each run alternates with a run of `bench/js/run.mjs` (an
//!   automerge-repo sync server and a fresh client, WebSocket on loopback, nodefs storage).
//! - `reconnect`: after a throughput run, B stops and starts again from its store: what the
//!   reconnection exchanges while both hold identical documents.
//!
//! Every document is a workflow document: the genesis change, then edits of its description and
//! version, one change each; the JavaScript side writes the same fields (`bench/js/content.mjs`).
//! Raw change bytes are the sum of the sizes of every Automerge change of every document (the
//! changes' own encoding, as `get_changes` returns them), on each side for its own documents.
//!
//! Environment (defaults in brackets):
//! - `RHIZOME_BENCH_SECTIONS` any of `lag,throughput,reconnect` [all]
//! - `RHIZOME_BENCH_REPEATS` runs per throughput workload, median reported [3]
//! - `RHIZOME_BENCH_LAG_EDITS` edits per lag series [200]
//! - `RHIZOME_BENCH_LAG_SIZES` document sizes of the lag section [10,1000,10000]
//! - `RHIZOME_BENCH_PACE_MS` time between paced edits [20]
//! - `RHIZOME_BENCH_WORKLOADS` documents × changes of the throughput section
//!   [1000x10,1x10000,10x10]; reconnect figures come from the workloads of 10 changes
//! - `RHIZOME_BENCH_JS` the `bench/js` directory with its `node_modules`; unset: no JS side
//! - `RHIZOME_BENCH_DIR` where stores are created [`<target>/tmp`]
//! - `RHIZOME_BENCH_OUT` the JSON-lines file of figures [`<target>/bench/sync.jsonl`]
//!
//! `bench/sync.sh` installs the JavaScript side and runs this; BENCHMARKS.md has the figures.

mod common;
use common::Report;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crdt_store::{DocName, HeadsDigest, Store, StoreConfig, WorkflowDoc};
use mesh::net::driver::{LinkStats, MeshConfig};
use mesh::net::identity::{MeshCa, NodeCredentials, Revocations};
use mesh::proto::membership::{NodeId, Timing};
use mesh::proto::sync::PeerTraffic;
use mesh::proto::sync::SyncConfig;
use mesh::proto::wire::{Capabilities, CatalogueEntry, DocIdBytes, Power, Role};
use rhizome::fleet::sync::Replication;
use serde_json::{Value, json};
use tokio::sync::Notify;

const SEED_A: u8 = 1;
const SEED_B: u8 = 2;
/// How long replication counters must stay unchanged to call the exchange finished.
const QUIET: Duration = Duration::from_millis(300);
/// How long any one wait may take before the run is declared failed.
const PATIENCE: Duration = Duration::from_secs(120);

struct Params {
    sections: Vec<String>,
    repeats: usize,
    lag_edits: usize,
    lag_sizes: Vec<usize>,
    pace: Duration,
    workloads: Vec<(usize, usize)>,
    js: Option<PathBuf>,
    dir: PathBuf,
    out: PathBuf,
}

impl Params {
    fn from_env() -> Params {
        use common::{number, var};
        let (dir, out) = common::places(Path::new(env!("CARGO_TARGET_TMPDIR")), "sync.jsonl");
        Params {
            sections: var("RHIZOME_BENCH_SECTIONS")
                .unwrap_or_else(|| "lag,throughput,reconnect".into())
                .split(',')
                .map(str::to_owned)
                .collect(),
            repeats: number("RHIZOME_BENCH_REPEATS", 3).max(1),
            lag_edits: number("RHIZOME_BENCH_LAG_EDITS", 200).max(1),
            lag_sizes: var("RHIZOME_BENCH_LAG_SIZES")
                .unwrap_or_else(|| "10,1000,10000".into())
                .split(',')
                .map(|v| {
                    v.parse()
                        .unwrap_or_else(|_| panic!("RHIZOME_BENCH_LAG_SIZES: {v:?} is no number"))
                })
                .collect(),
            pace: Duration::from_millis(number("RHIZOME_BENCH_PACE_MS", 20) as u64),
            workloads: var("RHIZOME_BENCH_WORKLOADS")
                .unwrap_or_else(|| "1000x10,1x10000,10x10".into())
                .split(',')
                .map(|w| {
                    w.split_once('x')
                        .and_then(|(d, c)| Some((d.parse().ok()?, c.parse().ok()?)))
                        .filter(|&(d, c): &(usize, usize)| d > 0 && c > 0)
                        .unwrap_or_else(|| {
                            panic!("RHIZOME_BENCH_WORKLOADS: {w:?} is not DOCSxCHANGES")
                        })
                })
                .collect(),
            js: var("RHIZOME_BENCH_JS").map(PathBuf::from),
            dir,
            out,
        }
    }

    fn runs(&self, section: &str) -> bool {
        self.sections.iter().any(|s| s == section)
    }
}

/// Every change a store reported, with when (on the store thread, as it committed).
#[derive(Default)]
struct ChangeLog {
    entries: Mutex<Vec<(DocIdBytes, HeadsDigest, Instant)>>,
    notify: Notify,
}

impl ChangeLog {
    fn record(&self, entry: &CatalogueEntry) {
        let now = Instant::now();
        self.entries
            .lock()
            .unwrap()
            .push((entry.doc, entry.digest, now));
        self.notify.notify_one();
    }

    fn len(&self) -> usize {
        self.entries.lock().unwrap().len()
    }

    /// Feeds entries from `from` on to `done` as they come, until it says so (true) or the
    /// deadline passes (false).
    async fn wait(
        &self,
        mut from: usize,
        deadline: Instant,
        mut done: impl FnMut(&(DocIdBytes, HeadsDigest, Instant)) -> bool,
    ) -> bool {
        loop {
            {
                let entries = self.entries.lock().unwrap();
                for entry in &entries[from..] {
                    if done(entry) {
                        return true;
                    }
                }
                from = entries.len();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, self.notify.notified())
                .await
                .is_err()
            {
                return false;
            }
        }
    }
}

/// The mesh CA and the identities of the two nodes.
struct Mesh {
    ca: MeshCa,
}

impl Mesh {
    fn credentials(&self, seed: u8) -> NodeCredentials {
        let secret = [seed; 32];
        let public = ed25519_dalek::SigningKey::from_bytes(&secret)
            .verifying_key()
            .to_bytes();
        NodeCredentials::new(
            &self
                .ca
                .issue(&public, mesh::net::identity::NodeRole::Member)
                .unwrap(),
            self.ca.cert_pem(),
            secret,
        )
        .unwrap()
    }

    fn node_id(&self, seed: u8) -> NodeId {
        self.credentials(seed).node_id().unwrap()
    }

    fn store_config(&self, seed: u8) -> StoreConfig {
        StoreConfig::new(self.ca.mesh_id(), &self.node_id(seed))
    }
}

/// A running node: its own runtime, its replication, and the log of its store's changes.
struct Node {
    id: NodeId,
    runtime: tokio::runtime::Runtime,
    replication: Replication,
    log: Arc<ChangeLog>,
}

impl Node {
    fn start(mesh: &Mesh, seed: u8, dir: &Path, bootstrap: Vec<String>) -> Node {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let credentials = mesh.credentials(seed);
        let id = credentials.node_id().unwrap();
        let store = Store::open(&dir.join("store.redb"), mesh.store_config(seed)).unwrap();
        let log = Arc::new(ChangeLog::default());
        let observed = log.clone();
        let config = MeshConfig {
            credentials,
            revoked: Revocations::default(),
            mesh_id: mesh.ca.mesh_id().to_owned(),
            zone: "bench".into(),
            role: Role::Edge,
            capabilities: Capabilities {
                power: Power::Mains,
                cpus: 2,
                memory_mb: 4096,
                disk_free_mb: 10_000,
            },
            listen: "127.0.0.1:0".parse().unwrap(),
            bootstrap,
            discovery: None,
            timing: Timing::default(),
            seed: u64::from(seed),
            enrolment: None,
        };
        let replication = runtime
            .block_on(rhizome::fleet::sync::start(
                id.clone(),
                SyncConfig::default(),
                store,
                config,
                std::sync::Arc::new(rhizome::security::audit::Audit::default()),
                move |e| observed.record(e),
            ))
            .unwrap();
        Node {
            id,
            runtime,
            replication,
            log,
        }
    }

    fn addr(&self) -> String {
        self.replication.mesh.local_addr().to_string()
    }

    /// Replication traffic with a peer, as this node counts it.
    async fn traffic(&self, peer: &str) -> PeerTraffic {
        self.replication
            .sync
            .status()
            .await
            .into_iter()
            .find(|s| s.peer == peer)
            .map(|s| s.traffic)
            .unwrap_or_default()
    }

    async fn link(&self, peer: &str) -> LinkStats {
        self.replication
            .mesh
            .link_stats(peer)
            .await
            .unwrap()
            .unwrap_or_default()
    }

    /// Every document with its heads digest.
    async fn catalogue(&self) -> BTreeMap<DocIdBytes, HeadsDigest> {
        self.replication
            .store
            .call(|s| s.sync_catalogue())
            .recv()
            .await
            .unwrap()
            .iter()
            .map(|item| {
                let entry = item.to_entry();
                (entry.doc, entry.digest)
            })
            .collect()
    }

    /// Stops as the daemon does: mesh goodbyes, then the store once sync has let go of it.
    async fn stop(self) {
        let Node {
            runtime,
            replication,
            ..
        } = self;
        replication.mesh.shutdown().await;
        let Replication { store, sync, .. } = replication;
        drop(sync);
        std::thread::spawn(move || store.shutdown()).join().unwrap();
        runtime.shutdown_background();
    }
}

/// Edit `j` of document `i`, as the JavaScript side makes it.
fn edit(w: &mut WorkflowDoc, i: usize, j: usize) {
    w.description = format!("edit {j} of document {i}");
    w.version = j as u64;
}

fn doc_name(prefix: &str, i: usize) -> DocName {
    DocName::workflow(&format!("{prefix}-{i:04}")).unwrap()
}

/// A store of A's holding `docs` documents of `changes` changes each (the genesis and
/// `changes - 1` edits through `Store::update`, as a node writes them), built once and copied
/// for each run. Returns the raw change bytes of all of them.
struct Template {
    dir: PathBuf,
    docs: usize,
    raw_change_bytes: u64,
    change_count: u64,
}

impl Template {
    fn build(mesh: &Mesh, root: &Path, prefix: &str, docs: usize, changes: usize) -> Template {
        let dir = root.join(format!("template-{prefix}-{docs}x{changes}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let started = Instant::now();
        let mut store = Store::open(&dir.join("store.redb"), mesh.store_config(SEED_A)).unwrap();
        let mut raw_change_bytes = 0;
        let mut change_count = 0;
        for i in 0..docs {
            let name = doc_name(prefix, i);
            for j in 1..changes {
                store
                    .update::<WorkflowDoc, _>(&name, |w| edit(w, i, j))
                    .unwrap();
            }
            let id = store.document_id(&name);
            let all = store.changes_since(&id, &[]).unwrap();
            assert_eq!(all.len(), changes, "{name} has the changes asked for");
            change_count += all.len() as u64;
            raw_change_bytes += all.iter().map(|c| c.len() as u64).sum::<u64>();
        }
        drop(store);
        eprintln!(
            "  built {docs} × {changes} changes for A in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        Template {
            dir,
            docs,
            raw_change_bytes,
            change_count,
        }
    }

    /// A fresh copy of the template store for one run.
    fn copy_to(&self, dir: &Path) {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).unwrap();
        std::fs::copy(self.dir.join("store.redb"), dir.join("store.redb")).unwrap();
    }
}

/// Replication counters of both sides and the UDP counters of their connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Wire {
    /// Frame bytes A→B and B→A, each as its receiver counted them.
    frames_ab: u64,
    frames_ba: u64,
    messages: u64,
    /// UDP payload bytes A→B and B→A as B's connection counted them.
    udp_ab: u64,
    udp_ba: u64,
    /// UDP datagrams A→B and B→A.
    datagrams_ab: u64,
    datagrams_ba: u64,
}

impl Wire {
    fn frames(&self) -> u64 {
        self.frames_ab + self.frames_ba
    }

    fn udp(&self) -> u64 {
        self.udp_ab + self.udp_ba
    }
}

/// Waits until the replication counters of both sides stop moving (and at least one frame went
/// each way), then reads the wire figures.
async fn quiet_wire(a: &Node, b: &Node) -> Wire {
    let deadline = Instant::now() + PATIENCE;
    let mut last = None;
    let mut since = Instant::now();
    loop {
        let from_b = a.traffic(&b.id).await;
        let from_a = b.traffic(&a.id).await;
        let now = (
            from_a.bytes_received,
            from_b.bytes_received,
            from_a.messages_received + from_b.messages_received,
        );
        if Some(now) != last || now.0 == 0 || now.1 == 0 {
            last = Some(now);
            since = Instant::now();
        } else if since.elapsed() >= QUIET {
            let link = b.link(&a.id).await;
            return Wire {
                frames_ab: now.0,
                frames_ba: now.1,
                messages: now.2,
                udp_ab: link.udp_bytes_received,
                udp_ba: link.udp_bytes_sent,
                datagrams_ab: link.datagrams_received,
                datagrams_ba: link.datagrams_sent,
            };
        }
        assert!(Instant::now() < deadline, "replication did not settle");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until B holds every document of `targets` with those heads; the time B's store
/// committed the last of them.
async fn holds_all(
    b: &Node,
    targets: &BTreeMap<DocIdBytes, HeadsDigest>,
    from: usize,
) -> Option<Instant> {
    let mut missing: HashMap<DocIdBytes, HeadsDigest> =
        targets.iter().map(|(d, h)| (*d, *h)).collect();
    let mut last = None;
    let held = b
        .log
        .wait(from, Instant::now() + PATIENCE, |(doc, digest, at)| {
            if missing.get(doc) == Some(digest) {
                missing.remove(doc);
                last = Some(*at);
            }
            missing.is_empty()
        })
        .await;
    if held { last } else { None }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    values[values.len() / 2]
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

// ---------------------------------------------------------------------------------------------
// lag

/// One lag series: `edits` edits on A spread over the template's documents, paced or back to
/// back; returns the lag of each edit in milliseconds (and how many were never seen on B).
async fn lag_series(
    a: &Node,
    b: &Node,
    prefix: &str,
    docs: usize,
    first_edit: usize,
    edits: usize,
    pace: Option<Duration>,
) -> (Vec<f64>, usize, Duration) {
    // A's commits of this series, in order, per document.
    let a_from = a.log.len();
    let b_from = b.log.len();
    let started = Instant::now();
    for k in 0..edits {
        let i = k % docs;
        let j = first_edit + k / docs;
        let name = doc_name(prefix, i);
        let b_before = b.log.len();
        a.replication
            .store
            .call(move |s| s.update::<WorkflowDoc, _>(&name, |w| edit(w, i, j)))
            .recv()
            .await
            .unwrap();
        if let Some(pace) = pace {
            // Wait until B shows this edit (or give up on it), then until the next slot.
            let (doc, digest, _) = *a.log.entries.lock().unwrap().last().unwrap();
            b.log
                .wait(
                    b_before,
                    Instant::now() + Duration::from_secs(2),
                    |(d, h, _)| *d == doc && *h == digest,
                )
                .await;
            let next = started + pace * (k as u32 + 1);
            tokio::time::sleep_until(tokio::time::Instant::from_std(next)).await;
        }
    }
    // Everything A committed in the series reaches B in the end.
    let a_entries: Vec<(DocIdBytes, HeadsDigest, Instant)> =
        a.log.entries.lock().unwrap()[a_from..].to_vec();
    let mut finals: BTreeMap<DocIdBytes, HeadsDigest> = BTreeMap::new();
    for (doc, digest, _) in &a_entries {
        finals.insert(*doc, *digest);
    }
    holds_all(b, &finals, b_from).await;
    let b_entries: Vec<(DocIdBytes, HeadsDigest, Instant)> =
        b.log.entries.lock().unwrap()[b_from..].to_vec();

    // Per document, A's commits are a line: B's heads equal to the n-th of them mean edits
    // 1..=n are visible, from that moment on.
    let mut position: HashMap<(DocIdBytes, HeadsDigest), usize> = HashMap::new();
    let mut per_doc: HashMap<DocIdBytes, Vec<Instant>> = HashMap::new();
    for (doc, digest, at) in &a_entries {
        let line = per_doc.entry(*doc).or_default();
        position.insert((*doc, *digest), line.len());
        line.push(*at);
    }
    let mut seen: HashMap<DocIdBytes, usize> = HashMap::new();
    let mut lags = Vec::with_capacity(a_entries.len());
    for (doc, digest, at) in &b_entries {
        let Some(&n) = position.get(&(*doc, *digest)) else {
            continue;
        };
        let covered = seen.entry(*doc).or_insert(0);
        for committed in per_doc[doc].iter().take(n + 1).skip(*covered) {
            lags.push(at.duration_since(*committed).as_secs_f64() * 1e3);
        }
        *covered = (*covered).max(n + 1);
    }
    let lost = a_entries.len() - lags.len();
    let series = match (a_entries.first(), a_entries.last()) {
        (Some(first), Some(last)) => last.2.duration_since(first.2),
        _ => Duration::ZERO,
    };
    (lags, lost, series)
}

fn lag(params: &Params, mesh: &Mesh, driver: &tokio::runtime::Runtime, report: &mut Report) {
    println!("\n## Sync lag: an edit committed on A until B's store has it\n");
    println!(
        "| document | edits | mode | edits took | p50 ms | p90 ms | p99 ms | max ms | not seen |\n|---|---:|---|---:|---:|---:|---:|---:|---:|"
    );
    for &size in &params.lag_sizes {
        // Small documents: several of them, edited in turn, so that each stays near its size.
        let docs = if size < 100 {
            (params.lag_edits * 2 / size).max(1)
        } else {
            1
        };
        let prefix = format!("lag{size}");
        let template = Template::build(mesh, &params.dir, &prefix, docs, size);
        let a_dir = params.dir.join("lag-a");
        let b_dir = params.dir.join("lag-b");
        template.copy_to(&a_dir);
        let _ = std::fs::remove_dir_all(&b_dir);
        let a = Node::start(mesh, SEED_A, &a_dir, Vec::new());
        let b = Node::start(mesh, SEED_B, &b_dir, vec![a.addr()]);
        let next_edit = driver.block_on(async {
            let targets = a.catalogue().await;
            holds_all(&b, &targets, 0)
                .await
                .expect("B fetches the documents");
            quiet_wire(&a, &b).await;
            size
        });
        let mut first_edit = next_edit;
        for (mode, pace) in [("paced", Some(params.pace)), ("back to back", None)] {
            let (mut lags, lost, series) = driver.block_on(lag_series(
                &a,
                &b,
                &prefix,
                docs,
                first_edit,
                params.lag_edits,
                pace,
            ));
            first_edit += params.lag_edits.div_ceil(docs);
            lags.sort_by(|x, y| x.partial_cmp(y).unwrap());
            let (p50, p90, p99, max) = (
                percentile(&lags, 50.0),
                percentile(&lags, 90.0),
                percentile(&lags, 99.0),
                *lags.last().unwrap(),
            );
            let label = if docs > 1 {
                format!("{docs} docs of ~{size} changes")
            } else {
                format!("1 doc of ~{size} changes")
            };
            let mode_label = match pace {
                Some(p) => format!("{mode} ({} ms)", p.as_millis()),
                None => mode.to_owned(),
            };
            println!(
                "| {label} | {} | {mode_label} | {:.0} ms | {p50:.2} | {p90:.2} | {p99:.2} | {max:.2} | {lost} |",
                params.lag_edits,
                series.as_secs_f64() * 1e3
            );
            report.record(json!({
                "section": "lag", "doc_changes": size, "docs": docs, "mode": mode,
                "pace_ms": pace.map(|p| p.as_millis() as u64), "edits": params.lag_edits,
                "p50_ms": p50, "p90_ms": p90, "p99_ms": p99, "max_ms": max, "not_seen": lost,
                "series_ms": series.as_secs_f64() * 1e3,
            }));
        }
        driver.block_on(async {
            b.stop().await;
            a.stop().await;
        });
    }
}

// ---------------------------------------------------------------------------------------------
// throughput and reconnect

struct RhizomeRun {
    held: Duration,
    wire: Wire,
    reconnect: Option<(Wire, Duration)>,
}

/// A fresh B fetches everything from A; then, if asked, B restarts and reconnects.
fn rhizome_run(
    params: &Params,
    mesh: &Mesh,
    driver: &tokio::runtime::Runtime,
    template: &Template,
    reconnect: bool,
) -> RhizomeRun {
    let a_dir = params.dir.join("sync-a");
    let b_dir = params.dir.join("sync-b");
    template.copy_to(&a_dir);
    let _ = std::fs::remove_dir_all(&b_dir);
    std::fs::create_dir_all(&b_dir).unwrap();
    let a = Node::start(mesh, SEED_A, &a_dir, Vec::new());
    let targets = driver.block_on(a.catalogue());
    assert_eq!(targets.len(), template.docs, "A holds the template");
    let started = Instant::now();
    let b = Node::start(mesh, SEED_B, &b_dir, vec![a.addr()]);
    let (held, wire) = driver.block_on(async {
        let Some(last) = holds_all(&b, &targets, 0).await else {
            let held = b.catalogue().await;
            let same = targets.iter().filter(|(d, h)| held.get(*d) == Some(*h)).count();
            let a_status = a.replication.sync.status().await;
            let b_status = b.replication.sync.status().await;
            panic!(
                "B holds {} documents, {same} of {} as A does; A: {:?} pending {:?}; B: {:?} pending {:?}",
                held.len(),
                targets.len(),
                a_status.first().map(|s| s.traffic),
                a_status.first().map(|s| s.pending.len()),
                b_status.first().map(|s| s.traffic),
                b_status.first().map(|s| s.pending.len()),
            );
        };
        (last.duration_since(started), quiet_wire(&a, &b).await)
    });
    let mut run = RhizomeRun {
        held,
        wire,
        reconnect: None,
    };
    if reconnect {
        driver.block_on(b.stop());
        let started = Instant::now();
        let b = Node::start(mesh, SEED_B, &b_dir, vec![a.addr()]);
        let wire = driver.block_on(async {
            let wire = quiet_wire(&a, &b).await;
            // Identical documents: nothing may have changed on either side.
            assert_eq!(b.log.len(), 0, "the reconnect changed no document");
            assert_eq!(b.catalogue().await, targets, "B still holds everything");
            wire
        });
        // The settle time (QUIET) is part of the measurement loop, not of the exchange.
        run.reconnect = Some((wire, started.elapsed().saturating_sub(QUIET)));
        driver.block_on(b.stop());
    } else {
        driver.block_on(b.stop());
    }
    driver.block_on(a.stop());
    run
}

#[derive(Debug, Default, Clone)]
struct JsRun {
    ms: f64,
    ws_down: u64,
    ws_up: u64,
    tcp_down: u64,
    tcp_up: u64,
    raw_change_bytes: u64,
    change_count: u64,
}

fn js_run(js: &Path, docs: usize, changes: usize) -> JsRun {
    let output = std::process::Command::new("node")
        .arg(js.join("run.mjs"))
        .arg(docs.to_string())
        .arg(changes.to_string())
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("running node bench/js/run.mjs");
    assert!(output.status.success(), "bench/js/run.mjs failed");
    let line = String::from_utf8_lossy(&output.stdout);
    let v: Value = serde_json::from_str(line.trim()).expect("run.mjs prints one JSON line");
    assert_eq!(
        v["complete"],
        json!(true),
        "the JS client got every document"
    );
    let n = |k: &str| {
        v[k].as_f64()
            .unwrap_or_else(|| panic!("run.mjs gave no {k}"))
    };
    JsRun {
        ms: n("ms"),
        ws_down: n("ws_tx") as u64,
        ws_up: n("ws_rx") as u64,
        tcp_down: n("tcp_tx") as u64,
        tcp_up: n("tcp_rx") as u64,
        raw_change_bytes: n("raw_change_bytes") as u64,
        change_count: n("change_count") as u64,
    }
}

fn throughput(params: &Params, mesh: &Mesh, driver: &tokio::runtime::Runtime, report: &mut Report) {
    let with_throughput = params.runs("throughput");
    let with_reconnect = params.runs("reconnect");
    let workloads = params.workloads.clone();
    let mut table = Vec::new();
    let mut reconnects = Vec::new();
    for (docs, changes) in workloads {
        let template = Template::build(mesh, &params.dir, "sync", docs, changes);
        // The reconnect figures need documents of the sizes the goal names: 1,000 and 10.
        let reconnect = with_reconnect && changes == 10;
        if !with_throughput && !reconnect {
            continue;
        }
        let repeats = if with_throughput { params.repeats } else { 1 };
        let mut rhizome: Vec<RhizomeRun> = Vec::new();
        let mut js: Vec<JsRun> = Vec::new();
        for r in 0..repeats {
            // Alternate the two sides, so that load on the shared machine falls on both.
            let run = rhizome_run(params, mesh, driver, &template, reconnect && r == 0);
            eprintln!(
                "  rhizome {docs} × {changes}: {:.0} ms, {} frame bytes, {} UDP bytes",
                run.held.as_secs_f64() * 1e3,
                run.wire.frames(),
                run.wire.udp()
            );
            rhizome.push(run);
            if with_throughput && let Some(dir) = &params.js {
                let run = js_run(dir, docs, changes);
                eprintln!(
                    "  automerge-repo {docs} × {changes}: {:.0} ms, {} WebSocket bytes",
                    run.ms,
                    run.ws_down + run.ws_up
                );
                js.push(run);
            }
        }
        if let Some((wire, took)) = rhizome.iter().find_map(|r| r.reconnect) {
            reconnects.push((docs, changes, wire, took));
            report.record(json!({
                "section": "reconnect", "docs": docs, "changes_per_doc": changes,
                "frame_bytes_ab": wire.frames_ab, "frame_bytes_ba": wire.frames_ba,
                "frames": wire.messages, "udp_bytes_ab": wire.udp_ab, "udp_bytes_ba": wire.udp_ba,
                "datagrams_ab": wire.datagrams_ab, "datagrams_ba": wire.datagrams_ba,
                "settled_ms": took.as_secs_f64() * 1e3,
            }));
        }
        if !with_throughput {
            continue;
        }
        let mut held: Vec<f64> = rhizome.iter().map(|r| r.held.as_secs_f64() * 1e3).collect();
        let held_ms = median(&mut held);
        // Byte counts of a workload are near-identical between runs, except when a whole
        // document crosses twice (each run's total is recorded): the table shows the first.
        let wire = rhizome[0].wire;
        let runs_frame_bytes: Vec<u64> = rhizome.iter().map(|r| r.wire.frames()).collect();
        report.record(json!({
            "section": "throughput", "side": "rhizome", "docs": docs, "changes_per_doc": changes,
            "runs_ms": held, "median_ms": held_ms, "runs_frame_bytes": runs_frame_bytes,
            "frame_bytes_ab": wire.frames_ab,
            "frame_bytes_ba": wire.frames_ba, "frames": wire.messages, "udp_bytes_ab": wire.udp_ab,
            "udp_bytes_ba": wire.udp_ba, "raw_change_bytes": template.raw_change_bytes,
            "change_count": template.change_count,
        }));
        let js_summary = (!js.is_empty()).then(|| {
            let mut ms: Vec<f64> = js.iter().map(|r| r.ms).collect();
            let median_ms = median(&mut ms);
            let first = js[0].clone();
            report.record(json!({
                "section": "throughput", "side": "automerge-repo", "docs": docs,
                "changes_per_doc": changes, "runs_ms": ms, "median_ms": median_ms,
                "ws_bytes_down": first.ws_down, "ws_bytes_up": first.ws_up,
                "tcp_bytes_down": first.tcp_down, "tcp_bytes_up": first.tcp_up,
                "raw_change_bytes": first.raw_change_bytes, "change_count": first.change_count,
            }));
            (median_ms, first)
        });
        table.push((docs, changes, held_ms, wire, template, js_summary));
    }

    if with_throughput {
        println!("\n## Throughput: a fresh B fetches everything A holds\n");
        println!(
            "| work | rhizome | automerge-repo | speed-up | rhizome frames ↓/↑ (÷ raw) | automerge-repo WebSocket ↓/↑ (÷ raw) | rhizome UDP ↓/↑ | automerge-repo TCP ↓/↑ | raw change bytes rhizome / automerge-repo |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for (docs, changes, held_ms, wire, template, js) in &table {
            let raw = template.raw_change_bytes as f64;
            let (js_ms, speedup, js_ws, js_tcp, js_raw) = match js {
                Some((ms, run)) => {
                    let js_raw = run.raw_change_bytes as f64;
                    (
                        format!("{ms:.0} ms"),
                        format!("{:.1}×", ms / held_ms),
                        format!(
                            "{} / {} ({:.2}×)",
                            run.ws_down,
                            run.ws_up,
                            (run.ws_down + run.ws_up) as f64 / js_raw
                        ),
                        format!("{} / {}", run.tcp_down, run.tcp_up),
                        format!("{}", run.raw_change_bytes),
                    )
                }
                None => ("–".into(), "–".into(), "–".into(), "–".into(), "–".into()),
            };
            println!(
                "| {} × {changes} changes | {held_ms:.0} ms | {js_ms} | {speedup} | {} / {} ({:.2}×) | {js_ws} | {} / {} | {js_tcp} | {} / {js_raw} |",
                if *docs == 1 {
                    "1 doc".to_owned()
                } else {
                    format!("{docs} docs")
                },
                wire.frames_ab,
                wire.frames_ba,
                wire.frames() as f64 / raw,
                wire.udp_ab,
                wire.udp_ba,
                template.raw_change_bytes,
            );
        }
    }
    if with_reconnect {
        println!("\n## Reconnect after B restarts, documents identical on both\n");
        println!(
            "| store | frames | frame bytes A→B / B→A | UDP bytes A→B / B→A (handshake included) | datagrams A→B / B→A | until quiet |"
        );
        println!("|---|---:|---:|---:|---:|---:|");
        for (docs, changes, wire, took) in reconnects {
            println!(
                "| {docs} docs × {changes} changes | {} | {} / {} | {} / {} | {} / {} | {:.0} ms |",
                wire.messages,
                wire.frames_ab,
                wire.frames_ba,
                wire.udp_ab,
                wire.udp_ba,
                wire.datagrams_ab,
                wire.datagrams_ba,
                took.as_secs_f64() * 1e3
            );
        }
    }
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
        )
        .with_writer(std::io::stderr)
        .init();
    let params = Params::from_env();
    std::fs::create_dir_all(&params.dir).unwrap();
    std::fs::create_dir_all(params.out.parent().unwrap()).unwrap();
    let mut report = common::Report::create(&params.out);
    let root = params.dir.join("sync-bench");
    let params = Params {
        dir: root,
        ..params
    };
    let _ = std::fs::remove_dir_all(&params.dir);
    std::fs::create_dir_all(&params.dir).unwrap();
    eprintln!(
        "stores in {}, figures to {}",
        params.dir.display(),
        params.out.display()
    );
    if params.js.is_none() && params.runs("throughput") {
        eprintln!("RHIZOME_BENCH_JS is not set: the JavaScript side is skipped");
    }
    let mesh = Mesh {
        ca: MeshCa::create().unwrap(),
    };
    // The bench's own waiting runs here; each node runs on a runtime of its own.
    let driver = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    if params.runs("lag") {
        lag(&params, &mesh, &driver, &mut report);
    }
    if params.runs("throughput") || params.runs("reconnect") {
        throughput(&params, &mesh, &driver, &mut report);
    }
    let _ = std::fs::remove_dir_all(&params.dir);
}
