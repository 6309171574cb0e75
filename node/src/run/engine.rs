//! Runs one workflow run: each step starts as soon as all its inputs have finished (steps that
//! do not depend on each other run concurrently), each with its timeout, retries with doubling
//! back-off and optional condition, and produces the run record that the store keeps.
//!
//! This is the run itself; triggers, the bounded run queue and cancellation on shutdown belong
//! to the [scheduler](crate::run::scheduler) that calls it.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agents::{Agent, AgentError, Registry, RunContext};
use anyhow::{Context, Result};
use crdt_store::{RunRecord, RunStatus, StepRecord, WorkflowDoc};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use serde_json::Value;

use crate::run::workflow::{Condition, RUN_INPUT};

/// Step timeout when the workflow gives none.
pub const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// Run timeout when the workflow gives none.
pub const DEFAULT_RUN_TIMEOUT: Duration = Duration::from_secs(300);

/// Builds the agent of a step from its kind and configuration. Production uses the agents
/// crate's [`Registry`]; tests of what surrounds the agents may give their own.
pub type AgentFactory =
    Arc<dyn Fn(&str, &Value) -> Result<Box<dyn Agent>, AgentError> + Send + Sync>;

/// The agents crate's registry as an [`AgentFactory`].
pub fn registry() -> AgentFactory {
    Arc::new(|kind, config| Registry.create(kind, config))
}

/// What a run reports while it goes, for status queries.
#[derive(Debug)]
pub enum StepEvent<'a> {
    /// A step started (its first attempt), at this wall-clock time.
    Started { step: &'a str, at_ms: i64 },
    /// A step finished, was skipped, or was cut short by the run's end.
    Finished(&'a StepRecord),
}

/// One step, with its inputs resolved to step indices.
#[derive(Debug)]
struct Node {
    id: String,
    /// Indices of the steps whose outputs it takes (the run input is not a step).
    after: Vec<usize>,
    /// Indices of the steps that take its output.
    before: Vec<usize>,
}

/// A workflow ready to run: its definition pinned at one version, and its agents.
#[derive(Debug)]
pub struct Prepared {
    workflow: WorkflowDoc,
    agents: BTreeMap<String, Box<dyn Agent>>,
    conditions: BTreeMap<String, Condition>,
    /// The steps in order of depth (a step is one deeper than its deepest input), ties by id:
    /// the order in which steps start when ready and the run's output is chosen, not a barrier.
    nodes: Vec<Node>,
}

impl Prepared {
    /// Builds the agents of every step from the agents crate's registry and orders the steps.
    pub fn new(workflow: WorkflowDoc) -> Result<Prepared> {
        Prepared::with_agents(workflow, &registry())
    }

    /// Builds the agents of every step with `agents` and orders the steps.
    pub fn with_agents(workflow: WorkflowDoc, agents_of: &AgentFactory) -> Result<Prepared> {
        let mut agents = BTreeMap::new();
        let mut conditions = BTreeMap::new();
        for (id, step) in &workflow.steps {
            // A definition replicated from a peer skipped this node's validation: parse again.
            if let Some(when) = &step.when {
                let condition = Condition::parse(when).with_context(|| format!("step `{id}`"))?;
                conditions.insert(id.clone(), condition);
            }
            let config: Value = serde_json::from_str(&step.config)
                .with_context(|| format!("step `{id}`: stored configuration is not JSON"))?;
            let agent = agents_of(&step.agent, &config).with_context(|| format!("step `{id}`"))?;
            agents.insert(id.clone(), agent);
        }
        let mut wave_of: BTreeMap<&str, usize> = BTreeMap::new();
        // Steps are few (bounded by the format); repeat until every step has a wave.
        while wave_of.len() < workflow.steps.len() {
            let before = wave_of.len();
            for (id, step) in &workflow.steps {
                if wave_of.contains_key(id.as_str()) {
                    continue;
                }
                let inputs: Option<Vec<usize>> = step
                    .inputs
                    .iter()
                    .filter(|i| *i != RUN_INPUT)
                    .map(|i| wave_of.get(i.as_str()).copied())
                    .collect();
                if let Some(inputs) = inputs {
                    wave_of.insert(id, inputs.into_iter().max().map_or(0, |w| w + 1));
                }
            }
            anyhow::ensure!(
                wave_of.len() > before,
                "workflow {}: its steps form a cycle or name missing inputs",
                workflow.id
            );
        }
        let mut waves = vec![Vec::new(); wave_of.values().max().map_or(0, |w| w + 1)];
        for (id, wave) in wave_of {
            waves[wave].push(id.to_owned());
        }
        let order: Vec<&String> = waves.iter().flatten().collect();
        let index: BTreeMap<&str, usize> = order
            .iter()
            .enumerate()
            .map(|(i, id)| (id.as_str(), i))
            .collect();
        let mut nodes: Vec<Node> = order
            .iter()
            .map(|id| Node {
                id: (*id).clone(),
                after: workflow.steps[*id]
                    .inputs
                    .iter()
                    .filter_map(|i| index.get(i.as_str()).copied())
                    .collect(),
                before: Vec::new(),
            })
            .collect();
        for i in 0..nodes.len() {
            for a in nodes[i].after.clone() {
                nodes[a].before.push(i);
            }
        }
        Ok(Prepared {
            workflow,
            agents,
            conditions,
            nodes,
        })
    }

    /// The definition this run pins.
    pub fn workflow(&self) -> &WorkflowDoc {
        &self.workflow
    }

    /// Runs once. `now_ms` gives wall-clock timestamps for the record.
    pub async fn run(
        &self,
        run_id: String,
        node: &str,
        input: Value,
        now_ms: impl Fn() -> i64,
    ) -> RunRecord {
        self.run_until(run_id, node, input, now_ms, std::future::pending())
            .await
    }

    /// Runs once, or until `cancel` completes: then the run ends `interrupted`, with the records
    /// of the steps that finished and the steps that were in flight marked interrupted.
    pub async fn run_until(
        &self,
        run_id: String,
        node: &str,
        input: Value,
        now_ms: impl Fn() -> i64,
        cancel: impl Future<Output = ()>,
    ) -> RunRecord {
        self.run_observed(run_id, node, input, now_ms, cancel, |_| {})
            .await
    }

    /// [`run_until`](Self::run_until), telling `observe` when each step starts and finishes.
    ///
    /// A step starts once every step it takes as input has finished. A failed or timed-out step
    /// stops new steps from starting; those already in flight finish and are recorded. When the
    /// run's timeout passes or `cancel` completes, steps in flight are cut short and recorded
    /// `timed_out` or `interrupted`; steps that never started have no record.
    pub async fn run_observed(
        &self,
        run_id: String,
        node: &str,
        input: Value,
        now_ms: impl Fn() -> i64,
        cancel: impl Future<Output = ()>,
        mut observe: impl FnMut(StepEvent<'_>),
    ) -> RunRecord {
        let mut cancel = std::pin::pin!(cancel);
        let started_ms = now_ms();
        let run_timeout = match self.workflow.timeout_ms {
            0 => DEFAULT_RUN_TIMEOUT,
            ms => Duration::from_millis(ms),
        };
        let deadline = tokio::time::sleep(run_timeout);
        let mut deadline = std::pin::pin!(deadline);
        let count = self.nodes.len();
        let mut outputs: Vec<Option<Value>> = vec![None; count];
        // Inputs of each step that have not finished yet.
        let mut waiting: Vec<usize> = self.nodes.iter().map(|n| n.after.len()).collect();
        let mut in_flight_since: BTreeMap<usize, (i64, Instant)> = BTreeMap::new();
        let mut in_flight = FuturesUnordered::new();
        let mut steps = Vec::with_capacity(count);
        let mut status = RunStatus::Succeeded;
        let mut error = None;
        let now = &now_ms;
        let input = &input;
        let start = |i: usize,
                     outputs: &[Option<Value>],
                     in_flight_since: &mut BTreeMap<usize, (i64, Instant)>,
                     observe: &mut dyn FnMut(StepEvent<'_>)| {
            let at_ms = now();
            in_flight_since.insert(i, (at_ms, Instant::now()));
            observe(StepEvent::Started {
                step: &self.nodes[i].id,
                at_ms,
            });
            let step_input = self.step_input(i, outputs, input);
            async move { (i, self.run_step(i, step_input, at_ms, now).await) }
        };
        for (i, _) in self
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.after.is_empty())
        {
            in_flight.push(start(i, &outputs, &mut in_flight_since, &mut observe));
        }
        let mut starting = true;
        while !in_flight.is_empty() {
            let cut_short = tokio::select! {
                biased;
                () = &mut cancel => {
                    status = RunStatus::Interrupted;
                    error = Some("the node shut down while the run was in flight".into());
                    RunStatus::Interrupted
                }
                () = &mut deadline => {
                    status = RunStatus::TimedOut;
                    error = Some(format!("the run exceeded its timeout of {run_timeout:?}"));
                    RunStatus::TimedOut
                }
                Some((i, (record, output))) = in_flight.next() => {
                    in_flight_since.remove(&i);
                    observe(StepEvent::Finished(&record));
                    let failed = matches!(record.status, RunStatus::Failed | RunStatus::TimedOut);
                    if failed && status == RunStatus::Succeeded {
                        status = record.status;
                        error = Some(format!(
                            "step `{}`: {}",
                            record.step,
                            record.error.clone().unwrap_or_default()
                        ));
                        starting = false;
                    }
                    steps.push(record);
                    outputs[i] = output;
                    if starting {
                        for &next in &self.nodes[i].before {
                            waiting[next] -= 1;
                            if waiting[next] == 0 {
                                in_flight.push(start(next, &outputs, &mut in_flight_since, &mut observe));
                            }
                        }
                    }
                    continue;
                }
            };
            for (&i, &(started_ms, clock)) in &in_flight_since {
                let record = StepRecord {
                    step: self.nodes[i].id.clone(),
                    status: cut_short,
                    started_ms,
                    duration_us: clock.elapsed().as_micros() as u64,
                    ..StepRecord::default()
                };
                observe(StepEvent::Finished(&record));
                steps.push(record);
            }
            break;
        }
        drop(in_flight);
        // The run's output is that of the last step (in wave order) that produced one: a skipped
        // alert does not blank the score before it.
        let output = outputs
            .iter()
            .rev()
            .find_map(Option::as_ref)
            .map_or_else(|| "null".to_owned(), Value::to_string);
        RunRecord {
            run_id,
            workflow: self.workflow.id.clone(),
            workflow_version: self.workflow.version,
            node: node.to_owned(),
            started_ms,
            finished_ms: now_ms().max(started_ms),
            status,
            steps,
            output,
            error,
        }
    }

    /// The inputs of step `i` by name, the outputs of its finished inputs (a skipped input is
    /// absent), and the run input if the step names it.
    fn step_input(&self, i: usize, outputs: &[Option<Value>], run_input: &Value) -> StepInput {
        let step = &self.workflow.steps[&self.nodes[i].id];
        let mut inputs = BTreeMap::new();
        for name in &step.inputs {
            if name == RUN_INPUT {
                inputs.insert(name.clone(), run_input.clone());
            }
        }
        for &a in &self.nodes[i].after {
            if let Some(output) = &outputs[a] {
                inputs.insert(self.nodes[a].id.clone(), output.clone());
            }
        }
        StepInput {
            inputs,
            run_input: run_input.clone(),
        }
    }

    async fn run_step(
        &self,
        i: usize,
        given: StepInput,
        started_ms: i64,
        now_ms: &impl Fn() -> i64,
    ) -> (StepRecord, Option<Value>) {
        let id = &self.nodes[i].id;
        let step = &self.workflow.steps[id];
        let agent = &self.agents[id];
        let clock = Instant::now();
        let mut record = StepRecord {
            step: id.clone(),
            status: RunStatus::Succeeded,
            started_ms,
            ..StepRecord::default()
        };
        let StepInput { inputs, run_input } = given;
        if let Some(condition) = self.conditions.get(id)
            && !condition.holds(&inputs)
        {
            record.status = RunStatus::Skipped;
            return (record, None);
        }
        let input = if inputs.is_empty() {
            run_input
        } else {
            agents::merge_inputs(inputs)
        };
        let timeout = match step.timeout_ms {
            0 => DEFAULT_STEP_TIMEOUT,
            ms => Duration::from_millis(ms),
        };
        let mut backoff = Duration::from_millis(step.backoff_ms);
        let mut result = None;
        let mut input = Some(input);
        for attempt in 0..=step.retries {
            record.attempts = attempt + 1;
            let context = RunContext { now_ms: now_ms() };
            // The last attempt takes the input itself: no copy for the common single attempt.
            let attempt_input = if attempt == step.retries {
                input.take().unwrap_or_default()
            } else {
                input.clone().unwrap_or_default()
            };
            match tokio::time::timeout(timeout, agent.run(attempt_input, context)).await {
                Ok(Ok(output)) => {
                    record.status = RunStatus::Succeeded;
                    record.error = None;
                    result = Some(output);
                    break;
                }
                Ok(Err(e)) => {
                    record.status = RunStatus::Failed;
                    record.error = Some(e.to_string());
                }
                Err(_) => {
                    record.status = RunStatus::TimedOut;
                    record.error = Some(format!("no answer within {timeout:?}"));
                }
            }
            if attempt < step.retries {
                tokio::time::sleep(backoff).await;
                backoff = backoff.saturating_mul(2);
            }
        }
        record.duration_us = clock.elapsed().as_micros() as u64;
        if let Some(output) = &result {
            record.output = output.to_string();
        }
        (record, result)
    }
}

/// What a step is handed when it starts.
#[derive(Debug)]
struct StepInput {
    inputs: BTreeMap<String, Value>,
    run_input: Value,
}

/// Agents for tests of what surrounds the agents (the engine's ordering, the scheduler): a step
/// whose configuration names a gate waits until the test lets one run through it.
#[cfg(test)]
pub(crate) mod testing {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    use agents::{Agent, AgentFuture, Registry, RunContext};
    use serde_json::Value;
    use tokio::sync::Semaphore;

    use super::AgentFactory;

    /// Named gates, closed until opened.
    #[derive(Debug, Default, Clone)]
    pub struct Gates(Arc<Mutex<BTreeMap<String, Arc<Semaphore>>>>);

    impl Gates {
        fn gate(&self, name: &str) -> Arc<Semaphore> {
            self.0
                .lock()
                .unwrap()
                .entry(name.to_owned())
                .or_insert_with(|| Arc::new(Semaphore::new(0)))
                .clone()
        }

        /// Lets `runs` more steps through the gate `name`.
        pub fn open(&self, name: &str, runs: usize) {
            self.gate(name).add_permits(runs);
        }

        /// Builds a `noop` step configured `{gate: <name>}` as a gated step, every other step
        /// from the registry.
        pub fn factory(&self) -> AgentFactory {
            let gates = self.clone();
            Arc::new(
                move |kind, config| match config.get("gate").and_then(Value::as_str) {
                    Some(name) if kind == "noop" => Ok(Box::new(Gated(gates.gate(name)))),
                    _ => Registry.create(kind, config),
                },
            )
        }
    }

    #[derive(Debug)]
    struct Gated(Arc<Semaphore>);

    impl Agent for Gated {
        fn kind(&self) -> &'static str {
            "noop"
        }
        fn run<'a>(&'a self, input: Value, _: RunContext) -> AgentFuture<'a> {
            Box::pin(async move {
                self.0
                    .acquire()
                    .await
                    .expect("gates are never closed")
                    .forget();
                Ok(input)
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prepared(yaml: &str) -> Prepared {
        Prepared::new(crate::run::workflow::parse(yaml).unwrap()).unwrap()
    }

    fn run(p: &Prepared, input: Value) -> RunRecord {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(p.run("r1".into(), "n", input, || 1_000))
    }

    #[test]
    fn steps_run_in_dependency_order_and_conditions_skip() {
        let p = prepared(
            "id: w\nsteps:\n  - id: pick\n    agent: select\n    inputs: [input]\n    config: {fields: [v]}\n  - id: check\n    agent: threshold\n    inputs: [pick]\n    config: {field: v, above: 10}\n  - id: alert\n    agent: noop\n    inputs: [check]\n    when: check.triggered\n",
        );
        let order: Vec<&str> = p.nodes.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(order, vec!["pick", "check", "alert"]);
        let high = run(&p, serde_json::json!({"v": 12, "other": 1}));
        assert_eq!(high.status, RunStatus::Succeeded);
        let order: Vec<&str> = high.steps.iter().map(|s| s.step.as_str()).collect();
        assert_eq!(order, vec!["pick", "check", "alert"]);
        assert_eq!(high.steps[2].status, RunStatus::Succeeded);
        let low = run(&p, serde_json::json!({"v": 3}));
        assert_eq!(low.steps[2].status, RunStatus::Skipped);
    }

    #[test]
    fn a_failing_step_is_retried_then_fails_the_run() {
        let p = prepared(
            "id: w\nsteps:\n  - id: check\n    agent: threshold\n    inputs: [input]\n    retries: 2\n    backoff: 1ms\n    config: {field: v, above: 1}\n",
        );
        let record = run(&p, serde_json::json!({"w": 1}));
        assert_eq!(record.status, RunStatus::Failed);
        assert_eq!(record.steps[0].attempts, 3);
        assert!(record.error.unwrap().contains("no field `v`"));
    }

    #[tokio::test]
    async fn a_step_starts_when_its_own_inputs_are_done() {
        // `slow` and `fast` are independent; `after-fast` needs only `fast`. It must finish
        // while `slow` is still held, which a wave-by-wave engine would not allow.
        let gates = testing::Gates::default();
        let workflow = crate::run::workflow::parse(
            "id: w\nsteps:\n  - id: slow\n    agent: noop\n    config: {gate: g}\n  - id: fast\n    agent: noop\n  - id: after-fast\n    agent: noop\n    inputs: [fast]\n  - id: last\n    agent: noop\n    inputs: [slow, after-fast]\n",
        )
        .unwrap();
        let p = Prepared::with_agents(workflow, &gates.factory()).unwrap();
        let finished = std::sync::Mutex::new(Vec::new());
        let opened = std::sync::atomic::AtomicBool::new(false);
        let record = p
            .run_observed(
                "r".into(),
                "n",
                serde_json::json!({"v": 1}),
                || 1_000,
                std::future::pending(),
                |event| {
                    if let StepEvent::Finished(step) = event {
                        finished.lock().unwrap().push(step.step.clone());
                        if step.step == "after-fast" {
                            opened.store(true, std::sync::atomic::Ordering::SeqCst);
                            gates.open("g", 1);
                        }
                    }
                },
            )
            .await;
        assert!(opened.load(std::sync::atomic::Ordering::SeqCst));
        assert_eq!(record.status, RunStatus::Succeeded);
        let order = finished.into_inner().unwrap();
        assert_eq!(order, vec!["fast", "after-fast", "slow", "last"]);
        let recorded: Vec<&str> = record.steps.iter().map(|s| s.step.as_str()).collect();
        assert_eq!(recorded, order, "records in the order steps finished");
        assert_eq!(record.output, r#"{"after-fast":{"v":1},"slow":{"v":1}}"#);
    }

    #[tokio::test]
    async fn cancel_records_finished_steps_and_interrupts_those_in_flight() {
        let gates = testing::Gates::default();
        let workflow = crate::run::workflow::parse(
            "id: w\nsteps:\n  - id: first\n    agent: noop\n  - id: held\n    agent: noop\n    inputs: [first]\n    config: {gate: g}\n  - id: never\n    agent: noop\n    inputs: [held]\n",
        )
        .unwrap();
        let p = Prepared::with_agents(workflow, &gates.factory()).unwrap();
        let (cancel, cancelled) = tokio::sync::oneshot::channel::<()>();
        let mut cancel = Some(cancel);
        let record = p
            .run_observed(
                "r".into(),
                "n",
                Value::Null,
                || 1_000,
                async {
                    let _ = cancelled.await;
                },
                |event| {
                    if let StepEvent::Started { step: "held", .. } = event {
                        let _ = cancel.take().unwrap().send(());
                    }
                },
            )
            .await;
        assert_eq!(record.status, RunStatus::Interrupted);
        let steps: Vec<(&str, RunStatus)> = record
            .steps
            .iter()
            .map(|s| (s.step.as_str(), s.status))
            .collect();
        assert_eq!(
            steps,
            vec![
                ("first", RunStatus::Succeeded),
                ("held", RunStatus::Interrupted)
            ]
        );
    }

    #[tokio::test]
    async fn the_run_timeout_cuts_steps_in_flight_short() {
        let gates = testing::Gates::default();
        let workflow = crate::run::workflow::parse(
            "id: w\ntimeout: 200ms\nsteps:\n  - id: quick\n    agent: noop\n  - id: held\n    agent: noop\n    config: {gate: g}\n",
        )
        .unwrap();
        let p = Prepared::with_agents(workflow, &gates.factory()).unwrap();
        let record = p.run("r".into(), "n", Value::Null, || 1_000).await;
        assert_eq!(record.status, RunStatus::TimedOut);
        assert!(record.error.unwrap().contains("timeout of 200ms"));
        let steps: Vec<(&str, RunStatus)> = record
            .steps
            .iter()
            .map(|s| (s.step.as_str(), s.status))
            .collect();
        assert_eq!(
            steps,
            vec![
                ("quick", RunStatus::Succeeded),
                ("held", RunStatus::TimedOut)
            ]
        );
    }

    #[test]
    fn conditions() {
        let condition_holds = |when: &str, inputs: &BTreeMap<String, Value>| {
            Condition::parse(when).unwrap().holds(inputs)
        };
        let inputs: BTreeMap<String, Value> = [(
            "s".to_owned(),
            serde_json::json!({"z": 3.5, "ok": true, "off": 0}),
        )]
        .into();
        assert!(condition_holds("s.ok", &inputs));
        assert!(!condition_holds("s.off", &inputs));
        assert!(condition_holds("s.z > 3", &inputs));
        assert!(!condition_holds("s.z <= 3", &inputs));
        assert!(!condition_holds("s.missing", &inputs));
        assert!(!condition_holds("t.z > 1", &inputs));
    }
}
