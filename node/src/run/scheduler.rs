//! The scheduler of a running node: which stored workflows run here (their target selector),
//! when (their trigger), how many at once (`max_concurrent` and a bounded queue), and what
//! becomes of runs in flight when the node stops.
//!
//! One actor task owns the table of workflows; a cheap, cloneable [`SchedulerHandle`] talks to
//! it over a bounded channel. Each run is a task of its own that runs the engine on the
//! [`Prepared`] workflow it was started with (so an edit never changes a run in flight), then
//! appends the run's record through [`StoreHandle::append`] (fsynced) exactly once. A run holds
//! its `max_concurrent` slot until its record is durable, so the bound also bounds records
//! waiting for the disk.
//!
//! Rules, as the README states them:
//! - **Selector**: see [`selects`]. A workflow that does not select
//!   this node never runs here, whatever its trigger, and `POST /run` is refused (409).
//! - **Triggers**: `manual` runs only on request; `every` fires as soon as the node learns the
//!   workflow (start, or a new trigger), then once per period; missed periods are skipped, not
//!   caught up; `after <workflow>` runs after each *succeeded* run of that workflow on this node,
//!   with that run's output as input, at most [`MAX_CHAIN_DEPTH`] triggers deep.
//! - **Queue**: beyond `max_concurrent` runs wait in a per-workflow FIFO of [`RUN_QUEUE_CAP`];
//!   beyond that a request is refused (429) and a periodic or chained run is skipped, logged
//!   and counted (`GET /schedule`).
//! - **Shutdown**: no new runs; runs in flight are cancelled and recorded `interrupted` with
//!   the steps that finished; queued runs, which were promised a run id, are recorded
//!   `interrupted` with no steps and an error saying they never started.
//! - **Changes**: [`SchedulerHandle::reload`] re-reads the stored workflows and rebuilds only
//!   those whose definition changed; it runs after every local apply, every [`RELOAD_EVERY`],
//!   and whenever the sync layer asks ([`SchedulerHandle::request_reload`]). It reads only the
//!   workflow documents whose heads moved since the last reload.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crdt_store::{DocName, RunRecord, RunStatus, StoreHandle, WorkflowDoc};
use futures_util::FutureExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::node::now_ms;
use crate::run::engine::{AgentFactory, Prepared, StepEvent};
use crate::run::workflow::{
    MAX_CONCURRENT, NodeTraits, StoredWorkflow, Trigger, describe_target, selects,
};

/// Runs of one workflow that may wait for a free slot; one more is refused (or skipped).
pub const RUN_QUEUE_CAP: usize = 16;
/// How often the scheduler re-reads the stored workflows even when nobody asked.
pub const RELOAD_EVERY: Duration = Duration::from_secs(2);
/// Requests waiting for the scheduler; a full queue makes callers wait.
pub const COMMAND_QUEUE_CAP: usize = 64;
/// Finished runs whose records `status` answers from memory; older ones come from the store.
pub const RECENT_RUNS_CAP: usize = 1024;
/// How many `after` triggers may follow one another from one run; deeper ones are skipped, so
/// workflows that trigger each other in a circle cannot run forever.
pub const MAX_CHAIN_DEPTH: u32 = 8;

/// Why a run was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No workflow of this id is stored on this node.
    UnknownWorkflow(String),
    /// The workflow's target selector does not select this node.
    NotTargeted {
        workflow: String,
        target: String,
        node: String,
    },
    /// The stored definition cannot run on this node (e.g. an agent this build lacks).
    Invalid { workflow: String, reason: String },
    /// `max_concurrent` runs are in flight and the queue is full.
    QueueFull {
        workflow: String,
        running: u32,
        queued: usize,
    },
    /// The node is shutting down.
    ShuttingDown,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::UnknownWorkflow(id) => write!(
                f,
                "no workflow `{id}` on this node: apply it first with `rhizome workflow apply FILE`"
            ),
            Refusal::NotTargeted {
                workflow,
                target,
                node,
            } => write!(
                f,
                "workflow `{workflow}` targets {target}, which does not select this node ({node})"
            ),
            Refusal::Invalid { workflow, reason } => {
                write!(f, "workflow `{workflow}` cannot run on this node: {reason}")
            }
            Refusal::QueueFull {
                workflow,
                running,
                queued,
            } => write!(
                f,
                "workflow `{workflow}` is busy: {running} runs in flight (its max_concurrent) and \
                 {queued} waiting, the most the queue holds; try again later"
            ),
            Refusal::ShuttingDown => write!(f, "the node is shutting down"),
        }
    }
}

impl std::error::Error for Refusal {}

/// Where a run stands, as `GET /status/{run}` answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RunView {
    /// Waiting for a free slot of its workflow.
    Queued {
        run_id: String,
        workflow: String,
        queued_ms: i64,
    },
    /// In flight on the version it started with.
    Running {
        run_id: String,
        workflow: String,
        workflow_version: u64,
        queued_ms: i64,
        started_ms: i64,
        /// Steps that started, in the order they started.
        steps: Vec<StepView>,
    },
    /// Over; `recorded` says whether the record reached the store (it is `false` only if the
    /// durable append failed, which the node's log explains).
    Finished {
        run_id: String,
        recorded: bool,
        record: RunRecord,
    },
}

/// A step of a run in flight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepView {
    pub step: String,
    /// `running`, or how it ended (`succeeded`, `failed`, ...).
    pub status: String,
    pub started_ms: i64,
    /// Set once the step ended.
    pub duration_us: Option<u64>,
}

/// One workflow as this node schedules it, as `GET /schedule` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduledView {
    pub workflow: String,
    pub version: u64,
    pub trigger: String,
    pub target: String,
    /// Whether the selector selects this node.
    pub targeted: bool,
    pub max_concurrent: u32,
    pub running: u32,
    pub queued: usize,
    /// Runs started since the node started (all versions).
    pub started: u64,
    /// Requests refused because the queue was full.
    pub refused: u64,
    /// Periodic or chained runs skipped because the queue was full or the chain too deep.
    pub skipped: u64,
    /// Why the definition cannot run here, if it cannot.
    pub error: Option<String>,
    /// A newer version whose artifacts are being fetched before this node switches to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fetching: Option<FetchingView>,
}

/// A version waiting for its artifacts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchingView {
    pub version: u64,
    pub artifacts: Vec<String>,
    /// Why the last attempt failed, if it did (it is tried again).
    pub error: Option<String>,
}

/// Where a node's workflows get the artifacts they reference ([`crate::run::artifact_refs`]).
pub trait ArtifactProvider: Send + Sync {
    /// Those of `ids` that are not whole on this node. Called on a blocking thread.
    fn missing(&self, ids: &BTreeSet<String>) -> BTreeSet<String>;
    /// Fetches `ids` from peers, then calls `done` with the outcome.
    fn fetch(&self, ids: BTreeSet<String>, done: Box<dyn FnOnce(Result<(), String>) + Send>);
    /// What the versions in use, and those being fetched for, need: never evicted.
    fn pin(&self, ids: BTreeSet<String>);
}

/// How long after a failed fetch of a version's artifacts it is tried again.
pub const FETCH_RETRY: Duration = Duration::from_secs(15);

/// What the store thread needs to decide which version of a rolled-out workflow runs here.
#[derive(Debug, Clone)]
struct RolloutView {
    me: crate::run::workflow::NodeTraits,
    /// The mesh id and every CA's PEM, for the controls' signatures.
    trust: Option<(String, String)>,
}

impl RolloutView {
    fn apply(
        &self,
        store: &mut crdt_store::Store,
        stored: Vec<StoredWorkflow>,
    ) -> Vec<StoredWorkflow> {
        let (mesh, trust) = self.trust.clone().unwrap_or_default();
        stored
            .into_iter()
            .map(|w| crate::run::rollout::effective(store, w, &self.me, &mesh, &trust))
            .collect()
    }
}

/// A version whose artifacts are being fetched (or failed to be, until a retry).
#[derive(Debug, Clone)]
struct Fetching {
    version: u64,
    ids: BTreeSet<String>,
    failed: Option<(Instant, String)>,
}

/// What the scheduler needs to know about its node.
#[derive(Clone)]
pub struct SchedulerConfig {
    /// What target selectors are matched against.
    pub node: NodeTraits,
    /// How step agents are built.
    pub agents: AgentFactory,
    /// How often workflows are re-read without being asked ([`RELOAD_EVERY`]).
    pub reload_every: Duration,
    /// Where referenced artifacts come from; `None`: a version that references one cannot run.
    pub artifacts: Option<Arc<dyn ArtifactProvider>>,
    /// The mesh id and the CAs that rollout controls are verified against; `None`: controls
    /// are ignored (and rollouts decided from plans and reports alone).
    pub rollout_trust: Option<(String, crate::security::trust::Trust)>,
    /// The node's alerts, for rollouts gated on them; `None`: no alert counts.
    pub alerts: Option<crate::ops::alerts::AlertsHandle>,
}

impl std::fmt::Debug for SchedulerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchedulerConfig")
            .field("node", &self.node)
            .field("reload_every", &self.reload_every)
            .finish_non_exhaustive()
    }
}

enum Command {
    Submit {
        workflow: String,
        input: Value,
        reply: oneshot::Sender<Result<String, Refusal>>,
    },
    Reload {
        reply: oneshot::Sender<()>,
    },
    Views {
        reply: oneshot::Sender<Vec<ScheduledView>>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// A cheap, cloneable handle to the scheduler.
#[derive(Clone)]
pub struct SchedulerHandle {
    commands: mpsc::Sender<Command>,
    reload: Arc<Notify>,
    requested: Arc<Mutex<Requested>>,
    live: Arc<Mutex<Live>>,
    finished: watch::Receiver<u64>,
}

impl std::fmt::Debug for SchedulerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchedulerHandle").finish_non_exhaustive()
    }
}

/// The reloads asked for since the scheduler last reloaded.
#[derive(Debug, Default)]
struct Requested {
    /// A reload of every workflow.
    all: bool,
    /// Workflow documents that changed.
    docs: BTreeSet<DocName>,
}

/// Starts the scheduler on the current tokio runtime. It reads the stored workflows at once.
pub fn spawn(store: StoreHandle, config: SchedulerConfig) -> SchedulerHandle {
    let (commands, inbox) = mpsc::channel(COMMAND_QUEUE_CAP);
    let reload = Arc::new(Notify::new());
    let requested = Arc::new(Mutex::new(Requested::default()));
    let live = Arc::new(Mutex::new(Live::default()));
    let (finished_tx, finished) = watch::channel(0);
    let (cancel, _) = watch::channel(false);
    let actor = Actor {
        store,
        config,
        fetching: Arc::default(),
        reload_requests: (reload.clone(), requested.clone()),
        workflows: BTreeMap::new(),
        tasks: JoinSet::new(),
        cancel,
        live: live.clone(),
        finished: finished_tx,
        next_seq: 0,
        known: crate::run::workflow::KnownWorkflows::new(),
    };
    tokio::spawn(actor.run(inbox, reload.clone(), requested.clone()));
    SchedulerHandle {
        commands,
        reload,
        requested,
        live,
        finished,
    }
}

impl SchedulerHandle {
    /// Accepts a run of `workflow` with `input` and answers its run id at once: the run starts
    /// now if a slot is free, or waits in the queue.
    pub async fn submit(&self, workflow: &str, input: Value) -> Result<String, Refusal> {
        let (reply, answer) = oneshot::channel();
        let command = Command::Submit {
            workflow: workflow.to_owned(),
            input,
            reply,
        };
        if self.commands.send(command).await.is_err() {
            return Err(Refusal::ShuttingDown);
        }
        answer.await.unwrap_or(Err(Refusal::ShuttingDown))
    }

    /// Re-reads the stored workflows and returns once the scheduler uses them.
    pub async fn reload(&self) {
        let (reply, done) = oneshot::channel();
        if self.commands.send(Command::Reload { reply }).await.is_ok() {
            let _ = done.await;
        }
    }

    /// Asks for a reload without waiting; requests made before it happens are served by one.
    /// Never blocks, so it may be called from any thread (e.g. the store's change listener).
    pub fn request_reload(&self) {
        self.requested.lock().expect("reload requests lock").all = true;
        self.reload.notify_one();
    }

    /// Asks for a reload of these workflow documents only (they changed), without waiting.
    pub fn request_reload_of(&self, docs: impl IntoIterator<Item = DocName>) {
        self.requested
            .lock()
            .expect("reload requests lock")
            .docs
            .extend(docs);
        self.reload.notify_one();
    }

    /// A queued, running or recently finished run; `None` if this scheduler does not hold it
    /// (older runs are in the store).
    pub fn status(&self, run_id: &str) -> Option<RunView> {
        self.live.lock().expect("live runs lock").view(run_id)
    }

    /// Waits until the run is finished and its record durable. `None` if the scheduler does
    /// not know the run or stops first.
    pub async fn wait_finished(&self, run_id: &str) -> Option<RunRecord> {
        let mut finished = self.finished.clone();
        loop {
            finished.borrow_and_update();
            match self.status(run_id)? {
                RunView::Finished { record, .. } => return Some(record),
                RunView::Queued { .. } | RunView::Running { .. } => {}
            }
            finished.changed().await.ok()?;
        }
    }

    /// How many runs have finished (and been recorded, or failed to) since the start.
    pub fn finished_count(&self) -> u64 {
        *self.finished.borrow()
    }

    /// Waits until at least `count` runs have finished since the start (or the scheduler
    /// stops).
    pub async fn wait_finished_count(&self, count: u64) {
        let mut finished = self.finished.clone();
        let _ = finished.wait_for(|n| *n >= count).await;
    }

    /// Every workflow this node knows, with how it is scheduled here.
    pub async fn workflows(&self) -> Vec<ScheduledView> {
        let (reply, answer) = oneshot::channel();
        if self.commands.send(Command::Views { reply }).await.is_err() {
            return Vec::new();
        }
        answer.await.unwrap_or_default()
    }

    /// Stops accepting runs, cancels those in flight, records them and the queued ones as
    /// `interrupted`, and returns once every record is durable.
    pub async fn shutdown(&self) {
        let (reply, done) = oneshot::channel();
        if self
            .commands
            .send(Command::Shutdown { reply })
            .await
            .is_ok()
        {
            let _ = done.await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// what status queries read

#[derive(Debug, Default)]
struct Live {
    /// Queued and running runs.
    runs: BTreeMap<String, LiveRun>,
    /// Finished runs, newest last, at most RECENT_RUNS_CAP.
    recent: BTreeMap<String, (RunRecord, bool)>,
    recent_order: VecDeque<String>,
}

#[derive(Debug)]
struct LiveRun {
    workflow: String,
    queued_ms: i64,
    /// Version and start time once running.
    running: Option<(u64, i64)>,
    steps: Vec<StepView>,
}

impl Live {
    fn view(&self, run_id: &str) -> Option<RunView> {
        if let Some(run) = self.runs.get(run_id) {
            return Some(match run.running {
                None => RunView::Queued {
                    run_id: run_id.to_owned(),
                    workflow: run.workflow.clone(),
                    queued_ms: run.queued_ms,
                },
                Some((workflow_version, started_ms)) => RunView::Running {
                    run_id: run_id.to_owned(),
                    workflow: run.workflow.clone(),
                    workflow_version,
                    queued_ms: run.queued_ms,
                    started_ms,
                    steps: run.steps.clone(),
                },
            });
        }
        self.recent
            .get(run_id)
            .map(|(record, recorded)| RunView::Finished {
                run_id: run_id.to_owned(),
                recorded: *recorded,
                record: record.clone(),
            })
    }

    fn on_step(&mut self, run_id: &str, event: StepEvent<'_>) {
        let Some(run) = self.runs.get_mut(run_id) else {
            return;
        };
        match event {
            StepEvent::Started { step, at_ms } => run.steps.push(StepView {
                step: step.to_owned(),
                status: "running".into(),
                started_ms: at_ms,
                duration_us: None,
            }),
            StepEvent::Finished(record) => {
                if let Some(view) = run
                    .steps
                    .iter_mut()
                    .find(|s| s.step == record.step && s.duration_us.is_none())
                {
                    view.status = record.status.as_str().to_owned();
                    view.duration_us = Some(record.duration_us);
                }
            }
        }
    }

    fn finish(&mut self, record: RunRecord, recorded: bool) {
        self.runs.remove(&record.run_id);
        self.recent_order.push_back(record.run_id.clone());
        self.recent
            .insert(record.run_id.clone(), (record, recorded));
        while self.recent_order.len() > RECENT_RUNS_CAP {
            if let Some(old) = self.recent_order.pop_front() {
                self.recent.remove(&old);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// the actor

/// A run accepted but not started.
#[derive(Debug)]
struct Pending {
    run_id: String,
    input: Value,
    queued_ms: i64,
    depth: u32,
}

/// What a run task hands back.
#[derive(Debug)]
struct Done {
    workflow: String,
    record: RunRecord,
    recorded: bool,
    depth: u32,
}

struct Scheduled {
    doc: WorkflowDoc,
    /// Why the stored workflow does not run here before any agent is built (it failed this
    /// node's validation, or its versions compete), as the store's reading said.
    blocked: Option<String>,
    prepared: Result<Arc<Prepared>, String>,
    trigger: Result<Trigger, String>,
    targeted: bool,
    next_due: Option<Instant>,
    running: u32,
    queue: VecDeque<Pending>,
    started: u64,
    refused: u64,
    skipped: u64,
    /// Runs of this version finished here since it was taken up, and how many did not
    /// succeed: what a rollout's gate reads from this node's report.
    version_runs: u32,
    version_failures: u32,
    /// When this version was taken up, ms since the epoch.
    since_ms: i64,
}

impl Scheduled {
    fn max_concurrent(&self) -> u32 {
        self.doc.max_concurrent.clamp(1, MAX_CONCURRENT)
    }

    fn error(&self) -> Option<String> {
        self.trigger
            .as_ref()
            .err()
            .or(self.prepared.as_ref().err())
            .cloned()
    }

    fn view(&self) -> ScheduledView {
        ScheduledView {
            workflow: self.doc.id.clone(),
            version: self.doc.version,
            trigger: self.doc.trigger.clone(),
            target: describe_target(&self.doc.target),
            targeted: self.targeted,
            max_concurrent: self.max_concurrent(),
            running: self.running,
            queued: self.queue.len(),
            started: self.started,
            refused: self.refused,
            skipped: self.skipped,
            error: self.error(),
            fetching: None,
        }
    }
}

struct Actor {
    store: StoreHandle,
    config: SchedulerConfig,
    workflows: BTreeMap<String, Scheduled>,
    tasks: JoinSet<Done>,
    cancel: watch::Sender<bool>,
    live: Arc<Mutex<Live>>,
    finished: watch::Sender<u64>,
    next_seq: u64,
    /// The stored workflows as of the last reload, so that a reload reads only what changed.
    known: crate::run::workflow::KnownWorkflows,
    /// Versions waiting for their artifacts, by workflow.
    fetching: Arc<Mutex<BTreeMap<String, Fetching>>>,
    /// How a finished fetch asks for a reload.
    reload_requests: (Arc<Notify>, Arc<Mutex<Requested>>),
}

impl Actor {
    async fn run(
        mut self,
        mut inbox: mpsc::Receiver<Command>,
        reload: Arc<Notify>,
        requested: Arc<Mutex<Requested>>,
    ) {
        self.reload().await;
        let mut tick = tokio::time::interval(self.config.reload_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.reset();
        loop {
            let due = self.workflows.values().filter_map(|w| w.next_due).min();
            tokio::select! {
                biased;
                command = inbox.recv() => match command {
                    Some(Command::Submit { workflow, input, reply }) => {
                        if !self.workflows.contains_key(&workflow) {
                            // Applied a moment ago, or just replicated: look before refusing.
                            self.reload().await;
                        }
                        let answer = self.offer(&workflow, input, 0);
                        if let (Err(Refusal::QueueFull { .. }), Some(wf)) =
                            (&answer, self.workflows.get_mut(&workflow))
                        {
                            wf.refused += 1;
                        }
                        let _ = reply.send(answer);
                    }
                    Some(Command::Reload { reply }) => {
                        self.reload().await;
                        let _ = reply.send(());
                    }
                    Some(Command::Views { reply }) => {
                        let fetching = self.fetching.lock().expect("fetching lock").clone();
                        let views = self
                            .workflows
                            .values()
                            .map(|w| {
                                let mut view = w.view();
                                view.fetching = fetching
                                    .get(&w.doc.id)
                                    .filter(|f| f.version != w.doc.version)
                                    .map(|f| FetchingView {
                                        version: f.version,
                                        artifacts: f.ids.iter().cloned().collect(),
                                        error: f.failed.as_ref().map(|(_, e)| e.clone()),
                                    });
                                view
                            })
                            .collect();
                        let _ = reply.send(views);
                    }
                    Some(Command::Shutdown { reply }) => {
                        self.shutdown().await;
                        let _ = reply.send(());
                        return;
                    }
                    None => {
                        self.shutdown().await;
                        return;
                    }
                },
                Some(done) = self.tasks.join_next(), if !self.tasks.is_empty() => match done {
                    Ok(done) => self.on_done(done, true),
                    // Run tasks catch panics themselves; a join error means the runtime is
                    // going away.
                    Err(e) => tracing::error!(error = %e, "a run task ended abnormally"),
                },
                () = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                    self.fire_due();
                }
                () = reload.notified() => {
                    let asked = std::mem::take(&mut *requested.lock().expect("reload requests lock"));
                    if asked.all || asked.docs.is_empty() {
                        self.reload().await;
                    } else {
                        self.reload_of(asked.docs).await;
                    }
                }
                _ = tick.tick() => {
                    self.reload().await;
                    self.report_rollouts().await;
                }
            }
        }
    }

    fn next_run_id(&mut self, at_ms: i64) -> String {
        self.next_seq += 1;
        run_id(&self.config.node.id, at_ms, self.next_seq)
    }

    /// Accepts a run: starts it if a slot is free, queues it if the queue has room.
    fn offer(&mut self, workflow: &str, input: Value, depth: u32) -> Result<String, Refusal> {
        let node = &self.config.node;
        let Some(wf) = self.workflows.get_mut(workflow) else {
            return Err(Refusal::UnknownWorkflow(workflow.to_owned()));
        };
        if !wf.targeted {
            return Err(Refusal::NotTargeted {
                workflow: workflow.to_owned(),
                target: describe_target(&wf.doc.target),
                node: format!(
                    "name {}, zone {}, tags [{}]",
                    node.name,
                    node.zone,
                    node.tags.join(", ")
                ),
            });
        }
        if let Some(reason) = wf.error() {
            return Err(Refusal::Invalid {
                workflow: workflow.to_owned(),
                reason,
            });
        }
        let free = wf.running < wf.max_concurrent();
        if !free && wf.queue.len() >= RUN_QUEUE_CAP {
            return Err(Refusal::QueueFull {
                workflow: workflow.to_owned(),
                running: wf.running,
                queued: wf.queue.len(),
            });
        }
        let queued_ms = now_ms();
        let run_id = self.next_run_id(queued_ms);
        let pending = Pending {
            run_id: run_id.clone(),
            input,
            queued_ms,
            depth,
        };
        self.live.lock().expect("live runs lock").runs.insert(
            run_id.clone(),
            LiveRun {
                workflow: workflow.to_owned(),
                queued_ms,
                running: None,
                steps: Vec::new(),
            },
        );
        let wf = self.workflows.get_mut(workflow).expect("looked up above");
        wf.queue.push_back(pending);
        self.pump(workflow);
        Ok(run_id)
    }

    /// Starts queued runs of `workflow` while it has free slots.
    fn pump(&mut self, workflow: &str) {
        let Some(wf) = self.workflows.get_mut(workflow) else {
            return;
        };
        let Ok(prepared) = &wf.prepared else {
            // Queued runs wait for a version that can run; shutdown records them.
            return;
        };
        while wf.running < wf.max_concurrent() {
            let Some(pending) = wf.queue.pop_front() else {
                break;
            };
            wf.running += 1;
            wf.started += 1;
            let prepared = Arc::clone(prepared);
            let started_ms = now_ms();
            if let Some(run) = self
                .live
                .lock()
                .expect("live runs lock")
                .runs
                .get_mut(&pending.run_id)
            {
                run.running = Some((prepared.workflow().version, started_ms));
            }
            let mut cancel = self.cancel.subscribe();
            let cancelled = async move {
                // A dropped sender also ends the wait: nobody is left to record a longer run.
                let _ = cancel.wait_for(|stop| *stop).await;
            };
            let task = RunTask {
                prepared,
                node: self.config.node.id.clone(),
                live: self.live.clone(),
                store: self.store.clone(),
                pending,
            };
            self.tasks.spawn(task.run(cancelled));
        }
    }

    fn on_done(&mut self, done: Done, triggers: bool) {
        let Done {
            workflow,
            record,
            recorded,
            depth,
        } = done;
        if let Some(wf) = self.workflows.get_mut(&workflow) {
            wf.running = wf.running.saturating_sub(1);
            if record.workflow_version == wf.doc.version {
                wf.version_runs = wf.version_runs.saturating_add(1);
                if record.status != RunStatus::Succeeded {
                    wf.version_failures = wf.version_failures.saturating_add(1);
                }
            }
        }
        crate::ops::metrics::record_run(&record);
        let chained_input = (triggers && record.status == RunStatus::Succeeded)
            .then(|| serde_json::from_str::<Value>(&record.output).unwrap_or(Value::Null));
        self.live
            .lock()
            .expect("live runs lock")
            .finish(record, recorded);
        self.finished.send_modify(|n| *n += 1);
        if let Some(input) = chained_input {
            self.trigger_after(&workflow, input, depth + 1);
        }
        self.pump(&workflow);
    }

    fn trigger_after(&mut self, finished: &str, input: Value, depth: u32) {
        let followers: Vec<String> = self
            .workflows
            .values()
            .filter(|w| {
                w.targeted && w.trigger.as_ref().ok() == Some(&Trigger::After(finished.into()))
            })
            .map(|w| w.doc.id.clone())
            .collect();
        for follower in followers {
            if depth > MAX_CHAIN_DEPTH {
                tracing::warn!(workflow = %follower, after = %finished, depth,
                    "chained run skipped: more than {MAX_CHAIN_DEPTH} `after` triggers in a row");
                if let Some(wf) = self.workflows.get_mut(&follower) {
                    wf.skipped += 1;
                }
                continue;
            }
            if let Err(refusal) = self.offer(&follower, input.clone(), depth) {
                self.skipped(&follower, &refusal);
            }
        }
    }

    fn fire_due(&mut self) {
        let now = Instant::now();
        let due: Vec<String> = self
            .workflows
            .values()
            .filter(|w| w.next_due.is_some_and(|d| d <= now))
            .map(|w| w.doc.id.clone())
            .collect();
        for id in due {
            let wf = self.workflows.get_mut(&id).expect("collected above");
            if let (Some(at), Ok(Trigger::Every(period))) = (wf.next_due, &wf.trigger) {
                let mut next = at + *period;
                if next <= now {
                    // Late by a whole period or more (a busy or suspended node): skip what was
                    // missed instead of running a burst.
                    next = now + *period;
                }
                wf.next_due = Some(next);
            }
            if let Err(refusal) = self.offer(&id, Value::Null, 0) {
                self.skipped(&id, &refusal);
            }
        }
    }

    fn skipped(&mut self, workflow: &str, refusal: &Refusal) {
        if let Some(wf) = self.workflows.get_mut(workflow) {
            wf.skipped += 1;
        }
        tracing::warn!(%workflow, reason = %refusal, "triggered run skipped");
    }

    /// Re-reads the stored workflows; rebuilds only those whose definition changed.
    /// Reads every stored workflow again (those whose heads moved), and forgets those gone.
    async fn reload(&mut self) {
        let rollouts = self.rollout_view();
        let Some(stored) = self
            .read_known(move |s, known| {
                let stored = crate::run::workflow::stored_since(s, known)?;
                Ok(rollouts.apply(s, stored))
            })
            .await
        else {
            return;
        };
        let ids: std::collections::BTreeSet<&str> =
            stored.iter().map(|s| s.doc.id.as_str()).collect();
        self.workflows
            .retain(|id, w| ids.contains(id.as_str()) || w.running > 0 || !w.queue.is_empty());
        self.take_up(stored).await;
    }

    /// Reads the named workflow documents again: one edit costs one document, not every
    /// workflow the node holds (a fleet's cloud may hold thousands). Workflows retired are
    /// forgotten by the periodic whole reload.
    async fn reload_of(&mut self, docs: BTreeSet<DocName>) {
        let rollouts = self.rollout_view();
        let Some(changed) = self
            .read_known(move |s, known| {
                let changed = crate::run::workflow::changed_among(s, known, &docs)?;
                Ok(rollouts.apply(s, changed))
            })
            .await
        else {
            return;
        };
        self.take_up(changed).await;
    }

    /// Runs `read` on the store thread with what is known of the stored workflows.
    async fn read_known(
        &mut self,
        read: impl FnOnce(
            &mut crdt_store::Store,
            &mut crate::run::workflow::KnownWorkflows,
        ) -> anyhow::Result<Vec<StoredWorkflow>>
        + Send
        + 'static,
    ) -> Option<Vec<StoredWorkflow>> {
        // A failed read forgets what was known: the next reload reads every workflow.
        let mut known = std::mem::take(&mut self.known);
        match self
            .store
            .call(move |s| Ok(read(s, &mut known).map(|w| (w, known))))
            .recv()
            .await
        {
            Ok(Ok((stored, known))) => {
                self.known = known;
                Some(stored)
            }
            Ok(Err(e)) => {
                tracing::error!(error = %format!("{e:#}"), "reading the stored workflows failed");
                None
            }
            Err(e) => {
                tracing::error!(error = %e, "reading the stored workflows failed");
                None
            }
        }
    }

    /// Schedules the versions in `stored` that differ from what is scheduled now.
    async fn take_up(&mut self, stored: Vec<StoredWorkflow>) {
        let changed: Vec<StoredWorkflow> = stored
            .iter()
            .filter(|s| {
                self.workflows
                    .get(&s.doc.id)
                    .is_none_or(|w| w.doc != s.doc || w.blocked != s.blocked)
            })
            .cloned()
            .collect();
        let changed = self.hold_for_artifacts(changed).await;
        self.pin_artifacts();
        if changed.is_empty() {
            return;
        }
        // Building agents may load models from disk: off the async executor.
        let agents = self.config.agents.clone();
        let built = tokio::task::spawn_blocking(move || {
            changed
                .into_iter()
                .map(|StoredWorkflow { doc, blocked }| {
                    // Only a definition this node validated gets agents built, and runs.
                    let prepared = match &blocked {
                        Some(reason) => Err(reason.clone()),
                        None => Prepared::with_agents(doc.clone(), &agents)
                            .map(Arc::new)
                            .map_err(|e| format!("{e:#}")),
                    };
                    (doc, blocked, prepared)
                })
                .collect::<Vec<_>>()
        })
        .await;
        let built = match built {
            Ok(built) => built,
            Err(e) => {
                tracing::error!(error = %e, "preparing changed workflows failed");
                return;
            }
        };
        let now = Instant::now();
        for (doc, blocked, prepared) in built {
            let trigger = Trigger::parse(&doc.trigger).map_err(|e| format!("{e:#}"));
            let targeted = selects(&doc.target, &self.config.node);
            let id = doc.id.clone();
            let previous = self.workflows.remove(&id);
            let same_trigger = previous.as_ref().is_some_and(|p| p.trigger == trigger);
            // A definition that cannot run here is reported once, not refused every period.
            let next_due = match (&trigger, targeted && prepared.is_ok()) {
                (Ok(Trigger::Every(_)), true) => previous
                    .as_ref()
                    .and_then(|p| p.next_due)
                    .filter(|_| same_trigger)
                    .or(Some(now)),
                _ => None,
            };
            match (&prepared, targeted) {
                (Err(_), _) if doc.deleted => {
                    tracing::info!(workflow = %id, version = doc.version, by = %doc.updated_by, "workflow deleted: no new runs here");
                }
                (Err(e), _) => {
                    tracing::error!(workflow = %id, version = doc.version, error = %e, "workflow cannot run on this node");
                }
                (Ok(_), true) => {
                    tracing::info!(workflow = %id, version = doc.version, trigger = %doc.trigger, "workflow scheduled");
                }
                (Ok(_), false) => {
                    tracing::info!(workflow = %id, version = doc.version, target = %describe_target(&doc.target), "workflow does not target this node");
                }
            }
            let mut scheduled = Scheduled {
                doc,
                blocked,
                prepared,
                trigger,
                targeted,
                next_due,
                running: 0,
                queue: VecDeque::new(),
                started: 0,
                refused: 0,
                skipped: 0,
                version_runs: 0,
                version_failures: 0,
                since_ms: now_ms(),
            };
            if let Some(p) = previous {
                // Runs in flight keep the version they started with; queued ones take this one.
                scheduled.running = p.running;
                scheduled.queue = p.queue;
                scheduled.started = p.started;
                scheduled.refused = p.refused;
                scheduled.skipped = p.skipped;
                if p.doc.version == scheduled.doc.version {
                    scheduled.version_runs = p.version_runs;
                    scheduled.version_failures = p.version_failures;
                    scheduled.since_ms = p.since_ms;
                }
            }
            self.workflows.insert(id.clone(), scheduled);
            self.pump(&id);
        }
        self.pin_artifacts();
    }

    /// Holds back each version that references artifacts this node lacks, and fetches them:
    /// the version in use keeps running meanwhile (a workflow with none waits), and the fetch's
    /// end asks for a reload, which takes the version up once all of it is here. So a node
    /// never switches to a version it cannot run, and one cut off keeps the version it has.
    async fn hold_for_artifacts(&mut self, changed: Vec<StoredWorkflow>) -> Vec<StoredWorkflow> {
        let Some(provider) = self.config.artifacts.clone() else {
            return changed;
        };
        let wants: Vec<(usize, BTreeSet<String>)> = changed
            .iter()
            .enumerate()
            .filter(|(_, s)| {
                s.blocked.is_none() && !s.doc.deleted && selects(&s.doc.target, &self.config.node)
            })
            .map(|(i, s)| (i, crate::run::artifact_refs::referenced(&s.doc)))
            .filter(|(_, ids)| !ids.is_empty())
            .collect();
        if wants.is_empty() {
            return changed;
        }
        let asked = provider.clone();
        let missing = tokio::task::spawn_blocking(move || {
            wants
                .into_iter()
                .map(|(i, ids)| (i, asked.missing(&ids)))
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        let mut held = BTreeMap::new();
        let now = Instant::now();
        for (i, missing) in missing {
            let doc = &changed[i].doc;
            let mut fetching = self.fetching.lock().expect("fetching lock");
            if missing.is_empty() {
                fetching.remove(&doc.id);
                continue;
            }
            held.insert(i, missing.len());
            let start = match fetching.get(&doc.id) {
                Some(f) if f.version == doc.version => f
                    .failed
                    .as_ref()
                    .is_some_and(|(at, _)| now.duration_since(*at) >= FETCH_RETRY),
                _ => true,
            };
            if !start {
                continue;
            }
            fetching.insert(
                doc.id.clone(),
                Fetching {
                    version: doc.version,
                    ids: missing.clone(),
                    failed: None,
                },
            );
            drop(fetching);
            tracing::info!(workflow = %doc.id, version = doc.version, artifacts = ?missing, "fetching the artifacts of a version before switching to it");
            let fetching = self.fetching.clone();
            let (reload, requested) = self.reload_requests.clone();
            let (id, version) = (doc.id.clone(), doc.version);
            provider.fetch(
                missing,
                Box::new(move |outcome| {
                    let mut fetching = fetching.lock().expect("fetching lock");
                    match outcome {
                        Ok(()) => {
                            tracing::info!(workflow = %id, version, "the artifacts of a version are here");
                            if fetching.get(&id).is_some_and(|f| f.version == version) {
                                fetching.remove(&id);
                            }
                            requested.lock().expect("reload requests lock").all = true;
                            reload.notify_one();
                        }
                        Err(reason) => {
                            tracing::warn!(workflow = %id, version, %reason, "fetching the artifacts of a version failed; trying again later");
                            if let Some(f) = fetching.get_mut(&id).filter(|f| f.version == version) {
                                f.failed = Some((Instant::now(), reason));
                            }
                        }
                    }
                }),
            );
        }
        changed
            .into_iter()
            .enumerate()
            .filter_map(|(i, stored)| match held.get(&i) {
                None => Some(stored),
                // The version in use goes on.
                Some(_) if self.workflows.contains_key(&stored.doc.id) => None,
                Some(count) => Some(StoredWorkflow {
                    blocked: Some(format!(
                        "waiting for {count} artifact(s) of version {} to be fetched",
                        stored.doc.version
                    )),
                    ..stored
                }),
            })
            .collect()
    }

    /// What the store thread needs to decide which version of a rolled-out workflow runs here.
    fn rollout_view(&self) -> RolloutView {
        RolloutView {
            me: self.config.node.clone(),
            trust: self
                .config
                .rollout_trust
                .as_ref()
                .map(|(mesh, trust)| (mesh.clone(), trust.all())),
        }
    }

    /// Writes this node's report of each rollout it takes part in into its registry entry,
    /// when it says something new (see [`crate::run::rollout::report`]).
    async fn report_rollouts(&mut self) {
        let fetching = self.fetching.lock().expect("fetching lock").clone();
        let standing: Vec<crate::run::rollout::Standing> = self
            .workflows
            .values()
            .filter(|w| w.targeted && w.doc.rollout.is_some())
            .map(|w| crate::run::rollout::Standing {
                workflow: w.doc.id.clone(),
                plan: w.doc.rollout.clone().expect("filtered"),
                version: w.doc.version,
                cannot_run: w.error(),
                runs: w.version_runs,
                failures: w.version_failures,
                since_ms: w.since_ms,
                fetching: fetching.contains_key(&w.doc.id),
                alerts: self.config.alerts.as_ref().map_or_else(Vec::new, |a| {
                    let gate = w.doc.rollout.as_ref().map(|p| p.gate.alerts);
                    a.fired_since(w.since_ms, gate.unwrap_or_default())
                }),
            })
            .collect();
        if standing.is_empty() {
            return;
        }
        let view = self.rollout_view();
        let written = self
            .store
            .call(move |s| {
                Ok(crate::run::rollout::report(
                    s,
                    &view.me.id,
                    standing,
                    view.trust.as_ref(),
                ))
            })
            .recv()
            .await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot write this node's rollout reports")
            }
            Err(e) => tracing::warn!(error = %e, "cannot write this node's rollout reports"),
        }
    }

    /// Tells the artifact store what the versions in use and those being fetched need.
    fn pin_artifacts(&self) {
        let Some(provider) = &self.config.artifacts else {
            return;
        };
        let mut pinned: BTreeSet<String> = self
            .workflows
            .values()
            .flat_map(|w| crate::run::artifact_refs::referenced(&w.doc))
            .collect();
        for f in self.fetching.lock().expect("fetching lock").values() {
            pinned.extend(f.ids.iter().cloned());
        }
        provider.pin(pinned);
    }

    async fn shutdown(&mut self) {
        let _ = self.cancel.send(true);
        let at_ms = now_ms();
        let mut never_started = Vec::new();
        for wf in self.workflows.values_mut() {
            for pending in wf.queue.drain(..) {
                never_started.push((
                    pending.depth,
                    RunRecord {
                        run_id: pending.run_id,
                        workflow: wf.doc.id.clone(),
                        workflow_version: wf.doc.version,
                        node: self.config.node.id.clone(),
                        started_ms: at_ms,
                        finished_ms: at_ms,
                        status: RunStatus::Interrupted,
                        steps: Vec::new(),
                        output: "null".into(),
                        error: Some(format!(
                            "the node shut down before the run started (queued at {})",
                            crdt_store::format_timestamp(pending.queued_ms)
                        )),
                    },
                ));
            }
        }
        if !never_started.is_empty() {
            let records: Vec<RunRecord> = never_started.iter().map(|(_, r)| r.clone()).collect();
            let recorded = match self.store.append(records).recv().await {
                Ok(_) => true,
                Err(e) => {
                    tracing::error!(error = %e, runs = never_started.len(), "recording the queued runs as interrupted failed");
                    false
                }
            };
            for (depth, record) in never_started {
                let workflow = record.workflow.clone();
                self.on_done(
                    Done {
                        workflow,
                        record,
                        recorded,
                        depth,
                    },
                    false,
                );
            }
        }
        while let Some(done) = self.tasks.join_next().await {
            match done {
                Ok(done) => self.on_done(done, false),
                Err(e) => tracing::error!(error = %e, "a run task ended abnormally"),
            }
        }
    }
}

/// One run: the engine on its pinned version, then the durable append.
struct RunTask {
    prepared: Arc<Prepared>,
    node: String,
    live: Arc<Mutex<Live>>,
    store: StoreHandle,
    pending: Pending,
}

impl RunTask {
    async fn run(self, cancelled: impl std::future::Future<Output = ()>) -> Done {
        let RunTask {
            prepared,
            node,
            live,
            store,
            pending,
        } = self;
        let run_id = pending.run_id.clone();
        let observe = |event: StepEvent<'_>| {
            live.lock().expect("live runs lock").on_step(&run_id, event);
        };
        let started_ms = now_ms();
        let run = prepared.run_observed(
            run_id.clone(),
            &node,
            pending.input,
            now_ms,
            cancelled,
            observe,
        );
        let record = match std::panic::AssertUnwindSafe(run).catch_unwind().await {
            Ok(record) => record,
            Err(panic) => {
                let reason = crate::node::panic_message(&*panic);
                tracing::error!(run = %run_id, %reason, "a run panicked");
                RunRecord {
                    run_id: run_id.clone(),
                    workflow: prepared.workflow().id.clone(),
                    workflow_version: prepared.workflow().version,
                    node: node.clone(),
                    started_ms,
                    finished_ms: now_ms().max(started_ms),
                    status: RunStatus::Failed,
                    steps: Vec::new(),
                    output: "null".into(),
                    error: Some(format!("the run panicked: {reason}")),
                }
            }
        };
        let recorded = match store.append(vec![record.clone()]).recv().await {
            Ok(_) => true,
            Err(e) => {
                tracing::error!(run = %run_id, error = %e, "recording a run failed");
                false
            }
        };
        Done {
            workflow: prepared.workflow().id.clone(),
            record,
            recorded,
            depth: pending.depth,
        }
    }
}

/// A run id: this node's short id, the time the run was accepted, and a sequence number.
pub fn run_id(node_id: &str, accepted_ms: i64, seq: u64) -> String {
    format!(
        "{}-{accepted_ms}-{seq}",
        crate::cli::output::short_id(node_id)
    )
}

/// The time a run id says its run was accepted, if it has the shape [`run_id`] gives: a lower
/// bound on when the run finished, so a lookup reads only the results windows after it.
pub fn accepted_ms(run_id: &str) -> Option<i64> {
    run_id.split('-').nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crdt_store::{ResultsQuery, Store, StoreConfig};

    use super::*;
    use crate::run::engine::testing::Gates;

    const NODE: &str = "0123456789abcdef0123456789abcdef";

    fn writer() -> crate::run::workflow::Writer {
        crate::run::workflow::Writer {
            node: NODE.into(),
            control: true,
            signer: None,
            mesh_id: String::new(),
            trust: crate::security::trust::Trust::empty(),
        }
    }

    struct Rig {
        store: StoreHandle,
        scheduler: SchedulerHandle,
        gates: Gates,
    }

    fn traits() -> NodeTraits {
        NodeTraits {
            id: NODE.into(),
            name: "press-7".into(),
            zone: "site-a/line-3".into(),
            tags: vec!["camera".into(), "sensor".into()],
        }
    }

    /// A scheduler on an in-memory store, with gated agents, re-reading workflows every
    /// `reload_every`.
    fn rig(reload_every: Duration) -> Rig {
        let store = StoreHandle::spawn(
            Store::open_in_memory(StoreConfig::new("scheduler-test", NODE)).unwrap(),
        );
        let gates = Gates::default();
        let scheduler = spawn(
            store.clone(),
            SchedulerConfig {
                node: traits(),
                agents: gates.factory(),
                reload_every,
                artifacts: None,
                rollout_trust: None,
                alerts: None,
            },
        );
        Rig {
            store,
            scheduler,
            gates,
        }
    }

    impl Rig {
        /// Stores a workflow as a peer or the API would, without telling the scheduler.
        async fn store_workflow(&self, yaml: &str) -> WorkflowDoc {
            let definition = crate::run::workflow::parse(yaml).unwrap();
            self.store
                .call(move |s| {
                    Ok(crate::cli::commands::apply_workflow(
                        s,
                        definition,
                        &writer(),
                    ))
                })
                .recv()
                .await
                .unwrap()
                .unwrap()
        }

        /// Stores a workflow and waits until the scheduler uses it, as `POST /workflows` does.
        async fn apply(&self, yaml: &str) -> WorkflowDoc {
            let stored = self.store_workflow(yaml).await;
            self.scheduler.reload().await;
            stored
        }

        async fn records(&self, workflow: &str) -> Vec<RunRecord> {
            let query = ResultsQuery {
                workflow: Some(workflow.into()),
                ..ResultsQuery::default()
            };
            self.store
                .call(move |s| s.results(&query))
                .recv()
                .await
                .unwrap()
        }

        async fn view(&self, workflow: &str) -> ScheduledView {
            self.scheduler
                .workflows()
                .await
                .into_iter()
                .find(|w| w.workflow == workflow)
                .unwrap_or_else(|| panic!("workflow {workflow} is not scheduled"))
        }

        async fn submit(&self, workflow: &str) -> String {
            self.scheduler
                .submit(workflow, Value::Null)
                .await
                .unwrap_or_else(|e| panic!("{workflow}: {e}"))
        }

        /// Waits until the run is running with `step` started and not finished.
        async fn wait_in_step(&self, run_id: &str, step: &str) {
            wait_for(&format!("run {run_id} in step {step}"), || {
                matches!(self.scheduler.status(run_id),
                    Some(RunView::Running { steps, .. })
                        if steps.iter().any(|s| s.step == step && s.status == "running"))
            })
            .await;
        }
    }

    /// Polls `check` until it holds; fails the test after a generous bound (never a timing
    /// assertion: only a guard against hanging).
    async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
        let give_up = Instant::now() + Duration::from_secs(20);
        while !check() {
            assert!(Instant::now() < give_up, "{what}: not within 20 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn wait_for_records(rig: &Rig, workflow: &str, at_least: usize) -> Vec<RunRecord> {
        let give_up = Instant::now() + Duration::from_secs(20);
        loop {
            let records = rig.records(workflow).await;
            if records.len() >= at_least {
                return records;
            }
            assert!(
                Instant::now() < give_up,
                "{workflow}: {} records, not {at_least}, within 20 s",
                records.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    const GATED: &str = "id: gated\nsteps:\n  - id: hold\n    agent: noop\n    config: {gate: g}\n";

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_trigger_fires_repeatedly_and_selectors_decide_where() {
        let rig = rig(RELOAD_EVERY);
        rig.apply("id: tick\ntrigger: {every: 100ms}\ntarget: {zones: [site-a]}\nsteps:\n  - id: a\n    agent: noop\n")
            .await;
        rig.apply("id: elsewhere\ntrigger: {every: 100ms}\ntarget: {zones: [site-b]}\nsteps:\n  - id: a\n    agent: noop\n")
            .await;
        let records = wait_for_records(&rig, "tick", 3).await;
        assert!(records.iter().all(|r| r.status == RunStatus::Succeeded));
        assert!(
            records
                .windows(2)
                .all(|w| w[0].started_ms <= w[1].started_ms),
            "one run per period, in order"
        );
        let ids: std::collections::BTreeSet<&str> =
            records.iter().map(|r| r.run_id.as_str()).collect();
        assert_eq!(ids.len(), records.len(), "run ids are unique");
        assert!(rig.records("elsewhere").await.is_empty());
        let elsewhere = rig.view("elsewhere").await;
        assert!(!elsewhere.targeted);
        assert_eq!(elsewhere.started, 0);
        let refusal = rig
            .scheduler
            .submit("elsewhere", Value::Null)
            .await
            .unwrap_err();
        assert!(matches!(refusal, Refusal::NotTargeted { .. }), "{refusal}");
        assert!(refusal.to_string().contains("zones=site-b"), "{refusal}");
        rig.scheduler.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_refuses_with_a_reason() {
        let rig = rig(RELOAD_EVERY);
        rig.apply(GATED).await;
        let first = rig.submit("gated").await;
        rig.wait_in_step(&first, "hold").await;
        let mut queued = Vec::new();
        for _ in 0..RUN_QUEUE_CAP {
            queued.push(rig.submit("gated").await);
        }
        let refusal = rig
            .scheduler
            .submit("gated", Value::Null)
            .await
            .unwrap_err();
        assert_eq!(
            refusal,
            Refusal::QueueFull {
                workflow: "gated".into(),
                running: 1,
                queued: RUN_QUEUE_CAP
            }
        );
        assert!(refusal.to_string().contains("max_concurrent"), "{refusal}");
        assert!(matches!(
            rig.scheduler.status(&queued[0]),
            Some(RunView::Queued { .. })
        ));
        let view = rig.view("gated").await;
        assert_eq!(
            (view.running, view.queued, view.refused),
            (1, RUN_QUEUE_CAP, 1)
        );

        rig.gates.open("g", RUN_QUEUE_CAP + 1);
        for run in std::iter::once(&first).chain(&queued) {
            let record = rig.scheduler.wait_finished(run).await.unwrap();
            assert_eq!(record.status, RunStatus::Succeeded);
        }
        assert_eq!(rig.records("gated").await.len(), RUN_QUEUE_CAP + 1);
        assert!(matches!(
            rig.scheduler.status(&first),
            Some(RunView::Finished { recorded: true, .. })
        ));
        rig.scheduler.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn max_concurrent_decides_whether_runs_overlap() {
        let rig = rig(RELOAD_EVERY);
        for max in [1, 4] {
            rig.apply(&format!(
                "id: w{max}\nmax_concurrent: {max}\nsteps:\n  - id: hold\n    agent: noop\n    config: {{gate: g{max}}}\n"
            ))
            .await;
            let mut runs = Vec::new();
            for _ in 0..4 {
                runs.push(rig.submit(&format!("w{max}")).await);
            }
            for run in &runs[..max] {
                rig.wait_in_step(run, "hold").await;
            }
            for run in &runs[max..] {
                assert!(
                    matches!(rig.scheduler.status(run), Some(RunView::Queued { .. })),
                    "max_concurrent {max}: run beyond the limit waits"
                );
            }
            rig.gates.open(&format!("g{max}"), 4);
            let mut records = Vec::new();
            for run in &runs {
                records.push(rig.scheduler.wait_finished(run).await.unwrap());
            }
            records.sort_by_key(|r| r.started_ms);
            if max == 1 {
                for pair in records.windows(2) {
                    assert!(
                        pair[1].started_ms >= pair[0].finished_ms,
                        "max_concurrent 1: runs one after the other: {pair:?}"
                    );
                }
            } else {
                let last_start = records.iter().map(|r| r.started_ms).max().unwrap();
                let first_end = records.iter().map(|r| r.finished_ms).min().unwrap();
                assert!(
                    last_start <= first_end,
                    "max_concurrent 4: all four in flight together"
                );
            }
        }
        rig.scheduler.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_run_finishes_on_the_version_it_started_with() {
        let rig = rig(RELOAD_EVERY);
        let v1 = rig
            .apply("id: edit\nsteps:\n  - id: hold\n    agent: noop\n    config: {gate: g}\n  - id: one\n    agent: noop\n    inputs: [hold]\n")
            .await;
        let before = rig.submit("edit").await;
        rig.wait_in_step(&before, "hold").await;
        let v2 = rig
            .apply("id: edit\nsteps:\n  - id: hold\n    agent: noop\n    config: {gate: g}\n  - id: two\n    agent: noop\n    inputs: [hold]\n")
            .await;
        assert_eq!((v1.version, v2.version), (1, 2));
        let after = rig.submit("edit").await;
        rig.gates.open("g", 2);
        let old = rig.scheduler.wait_finished(&before).await.unwrap();
        let new = rig.scheduler.wait_finished(&after).await.unwrap();
        let steps = |r: &RunRecord| r.steps.iter().map(|s| s.step.clone()).collect::<Vec<_>>();
        assert_eq!(
            (old.workflow_version, steps(&old)),
            (1, vec!["hold".into(), "one".into()])
        );
        assert_eq!(
            (new.workflow_version, steps(&new)),
            (2, vec!["hold".into(), "two".into()])
        );
        rig.scheduler.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_records_runs_in_flight_and_queued_as_interrupted() {
        let rig = rig(RELOAD_EVERY);
        rig.apply("id: long\nsteps:\n  - id: first\n    agent: noop\n  - id: hold\n    agent: noop\n    inputs: [first]\n    config: {gate: g}\n")
            .await;
        let in_flight = rig.submit("long").await;
        let queued = rig.submit("long").await;
        rig.wait_in_step(&in_flight, "hold").await;
        rig.scheduler.shutdown().await;

        let records = rig.records("long").await;
        assert_eq!(records.len(), 2);
        let find = |id: &str| records.iter().find(|r| r.run_id == id).unwrap();
        let interrupted = find(&in_flight);
        assert_eq!(interrupted.status, RunStatus::Interrupted);
        let steps: Vec<(&str, RunStatus)> = interrupted
            .steps
            .iter()
            .map(|s| (s.step.as_str(), s.status))
            .collect();
        assert_eq!(
            steps,
            vec![
                ("first", RunStatus::Succeeded),
                ("hold", RunStatus::Interrupted)
            ]
        );
        let never = find(&queued);
        assert_eq!(never.status, RunStatus::Interrupted);
        assert!(never.steps.is_empty());
        assert!(
            never
                .error
                .as_deref()
                .unwrap()
                .contains("before the run started")
        );
        assert_eq!(
            rig.scheduler.submit("long", Value::Null).await,
            Err(Refusal::ShuttingDown)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn after_triggers_chain_on_success_with_the_output_as_input() {
        let rig = rig(RELOAD_EVERY);
        rig.apply("id: source\nsteps:\n  - id: pick\n    agent: select\n    inputs: [input]\n    config: {fields: [v]}\n")
            .await;
        rig.apply("id: sink\ntrigger: {after: source}\nsteps:\n  - id: check\n    agent: threshold\n    inputs: [input]\n    config: {field: v, above: 10}\n")
            .await;
        // A failed source run triggers nothing; the succeeded one after it does.
        let failed = rig
            .scheduler
            .submit("source", serde_json::json!({"w": 1}))
            .await
            .unwrap();
        let ok = rig
            .scheduler
            .submit("source", serde_json::json!({"v": 12, "other": 1}))
            .await
            .unwrap();
        assert_eq!(
            rig.scheduler.wait_finished(&failed).await.unwrap().status,
            RunStatus::Failed
        );
        assert_eq!(
            rig.scheduler.wait_finished(&ok).await.unwrap().status,
            RunStatus::Succeeded
        );
        let sink = wait_for_records(&rig, "sink", 1).await;
        let output: Value = serde_json::from_str(&sink[0].output).unwrap();
        assert_eq!(output["triggered"], true, "{output}");
        assert_eq!(output["v"], 12, "the source's output was the input");

        // Two workflows that trigger each other stop after MAX_CHAIN_DEPTH chained runs.
        rig.apply("id: ping\ntrigger: {after: pong}\nsteps:\n  - id: a\n    agent: noop\n")
            .await;
        rig.apply("id: pong\ntrigger: {after: ping}\nsteps:\n  - id: a\n    agent: noop\n")
            .await;
        rig.submit("ping").await;
        wait_for_records(&rig, "ping", 1).await;
        let give_up = Instant::now() + Duration::from_secs(20);
        while rig.view("ping").await.skipped + rig.view("pong").await.skipped == 0 {
            assert!(Instant::now() < give_up, "the chain never stopped");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let runs = rig.records("ping").await.len() + rig.records("pong").await.len();
        assert_eq!(runs, 1 + MAX_CHAIN_DEPTH as usize);
        rig.scheduler.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn workflows_written_under_the_scheduler_are_picked_up() {
        // As the sync layer will: written into the store, the scheduler not told.
        let rig = rig(Duration::from_millis(50));
        rig.store_workflow(
            "id: synced\ntrigger: {every: 100ms}\nsteps:\n  - id: a\n    agent: noop\n",
        )
        .await;
        let records = wait_for_records(&rig, "synced", 1).await;
        assert_eq!(records[0].workflow_version, 1);
        // An edit that keeps the trigger keeps the timer; new runs use the new version.
        rig.store_workflow("id: synced\ndescription: v2\ntrigger: {every: 100ms}\nsteps:\n  - id: b\n    agent: noop\n")
            .await;
        rig.scheduler.request_reload();
        let give_up = Instant::now() + Duration::from_secs(20);
        while !rig
            .records("synced")
            .await
            .iter()
            .any(|r| r.workflow_version == 2 && r.steps[0].step == "b")
        {
            assert!(Instant::now() < give_up, "version 2 never ran");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        rig.scheduler.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reload_of_named_documents_takes_up_those_and_keeps_the_others() {
        // No periodic reload within the test: only the asked-for one can pick anything up.
        let rig = rig(Duration::from_secs(3600));
        rig.apply("id: one\ntrigger: manual\nsteps:\n  - id: a\n    agent: noop\n")
            .await;
        rig.apply("id: two\ntrigger: manual\nsteps:\n  - id: a\n    agent: noop\n")
            .await;
        // Both changed under the scheduler; it is told of `one` only.
        rig.store_workflow(
            "id: one\ndescription: v2\ntrigger: manual\nsteps:\n  - id: a\n    agent: noop\n",
        )
        .await;
        rig.store_workflow(
            "id: two\ndescription: v2\ntrigger: manual\nsteps:\n  - id: a\n    agent: noop\n",
        )
        .await;
        rig.scheduler
            .request_reload_of([DocName::workflow("one").unwrap()]);
        let give_up = Instant::now() + Duration::from_secs(20);
        while rig.view("one").await.version != 2 {
            assert!(Instant::now() < give_up, "one's version 2 never taken up");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(rig.view("two").await.version, 1, "two was not asked for");
        // A whole reload takes up the rest.
        rig.scheduler.reload().await;
        assert_eq!(rig.view("two").await.version, 2);
        rig.scheduler.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unknown_workflows_and_bad_definitions_are_refused() {
        let rig = rig(RELOAD_EVERY);
        assert_eq!(
            rig.scheduler.submit("nope", Value::Null).await,
            Err(Refusal::UnknownWorkflow("nope".into()))
        );
        // Stored by a peer whose build knows an agent this one does not.
        let mut foreign = crate::run::workflow::parse(GATED).unwrap();
        foreign.id = "foreign".into();
        foreign.steps.get_mut("hold").unwrap().agent = "quantum".into();
        rig.store
            .call(move |s| Ok(crate::cli::commands::apply_workflow(s, foreign, &writer())))
            .recv()
            .await
            .unwrap()
            .unwrap();
        let refusal = rig
            .scheduler
            .submit("foreign", Value::Null)
            .await
            .unwrap_err();
        assert!(
            matches!(&refusal, Refusal::Invalid { reason, .. } if reason.contains("quantum")),
            "{refusal}"
        );
        assert!(rig.view("foreign").await.error.is_some());
        rig.scheduler.shutdown().await;
    }
}
