//! Runs one workflow run: steps in dependency order, independent steps of a wave concurrently,
//! each with its timeout, retries with doubling back-off and optional condition, and produces the
//! run record that the store keeps.
//!
//! This is the run itself; triggers, the bounded run queue and cancellation on shutdown belong
//! to the scheduler that calls it.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use agents::{Agent, Registry, RunContext};
use anyhow::{Context, Result};
use crdt_store::{RunRecord, RunStatus, StepRecord, WorkflowDoc};
use serde_json::Value;

use crate::workflow::{Condition, RUN_INPUT};

/// Step timeout when the workflow gives none.
pub const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// Run timeout when the workflow gives none.
pub const DEFAULT_RUN_TIMEOUT: Duration = Duration::from_secs(300);

/// A workflow ready to run: its definition pinned at one version, and its agents.
#[derive(Debug)]
pub struct Prepared {
    workflow: WorkflowDoc,
    agents: BTreeMap<String, Box<dyn Agent>>,
    conditions: BTreeMap<String, Condition>,
    waves: Vec<Vec<String>>,
}

impl Prepared {
    /// Builds the agents of every step and orders the steps into waves (a step runs in the
    /// wave after the last of its inputs).
    pub fn new(workflow: WorkflowDoc) -> Result<Prepared> {
        let registry = Registry;
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
            let agent = registry
                .create(&step.agent, &config)
                .with_context(|| format!("step `{id}`"))?;
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
        Ok(Prepared {
            workflow,
            agents,
            conditions,
            waves,
        })
    }

    /// The definition this run pins.
    #[allow(dead_code)] // for the scheduler
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
    /// of the waves that finished and the steps that were in flight marked interrupted.
    pub async fn run_until(
        &self,
        run_id: String,
        node: &str,
        input: Value,
        now_ms: impl Fn() -> i64,
        cancel: impl Future<Output = ()>,
    ) -> RunRecord {
        let mut cancel = std::pin::pin!(cancel);
        let started_ms = now_ms();
        let run_timeout = match self.workflow.timeout_ms {
            0 => DEFAULT_RUN_TIMEOUT,
            ms => Duration::from_millis(ms),
        };
        let mut outputs: BTreeMap<String, Value> = BTreeMap::new();
        outputs.insert(RUN_INPUT.to_owned(), input);
        let mut steps = Vec::new();
        let mut status = RunStatus::Succeeded;
        let mut error = None;
        let deadline = tokio::time::Instant::now() + run_timeout;
        'waves: for wave in &self.waves {
            let wave_started_ms = now_ms();
            let wave_clock = Instant::now();
            let runs = wave.iter().map(|id| self.run_step(id, &outputs, &now_ms));
            let all = tokio::time::timeout_at(deadline, futures_util::future::join_all(runs));
            let finished = tokio::select! {
                biased;
                () = &mut cancel => {
                    status = RunStatus::Interrupted;
                    error = Some("the node shut down while the run was in flight".into());
                    steps.extend(wave.iter().map(|id| StepRecord {
                        step: id.clone(),
                        status: RunStatus::Interrupted,
                        started_ms: wave_started_ms,
                        duration_us: wave_clock.elapsed().as_micros() as u64,
                        ..StepRecord::default()
                    }));
                    break 'waves;
                }
                finished = all => match finished {
                    Ok(finished) => finished,
                    Err(_) => {
                        status = RunStatus::TimedOut;
                        error = Some(format!("the run exceeded its timeout of {run_timeout:?}"));
                        break 'waves;
                    }
                },
            };
            for (id, (record, output)) in wave.iter().zip(finished) {
                if let Some(output) = output {
                    outputs.insert(id.clone(), output);
                }
                let failed = matches!(record.status, RunStatus::Failed | RunStatus::TimedOut);
                if failed && status == RunStatus::Succeeded {
                    status = record.status;
                    error = Some(format!(
                        "step `{id}`: {}",
                        record.error.clone().unwrap_or_default()
                    ));
                }
                steps.push(record);
            }
            if status != RunStatus::Succeeded {
                break;
            }
        }
        // The run's output is that of the last step that produced one (a skipped alert does not
        // blank the score before it).
        let output = self
            .waves
            .iter()
            .rev()
            .flat_map(|wave| wave.iter().rev())
            .find_map(|id| outputs.get(id))
            .cloned()
            .unwrap_or(Value::Null);
        RunRecord {
            run_id,
            workflow: self.workflow.id.clone(),
            workflow_version: self.workflow.version,
            node: node.to_owned(),
            started_ms,
            finished_ms: now_ms().max(started_ms),
            status,
            steps,
            output: output.to_string(),
            error,
        }
    }

    async fn run_step(
        &self,
        id: &str,
        outputs: &BTreeMap<String, Value>,
        now_ms: &impl Fn() -> i64,
    ) -> (StepRecord, Option<Value>) {
        let step = &self.workflow.steps[id];
        let agent = &self.agents[id];
        let started_ms = now_ms();
        let clock = Instant::now();
        let mut record = StepRecord {
            step: id.to_owned(),
            status: RunStatus::Succeeded,
            started_ms,
            ..StepRecord::default()
        };
        let inputs: BTreeMap<String, Value> = step
            .inputs
            .iter()
            .filter_map(|i| outputs.get(i).map(|v| (i.clone(), v.clone())))
            .collect();
        if let Some(condition) = self.conditions.get(id)
            && !condition.holds(&inputs)
        {
            record.status = RunStatus::Skipped;
            return (record, None);
        }
        let input = if inputs.is_empty() {
            outputs.get(RUN_INPUT).cloned().unwrap_or(Value::Null)
        } else {
            agents::merge_inputs(inputs)
        };
        let timeout = match step.timeout_ms {
            0 => DEFAULT_STEP_TIMEOUT,
            ms => Duration::from_millis(ms),
        };
        let mut backoff = Duration::from_millis(step.backoff_ms);
        let mut result = None;
        for attempt in 0..=step.retries {
            record.attempts = attempt + 1;
            let context = RunContext { now_ms: now_ms() };
            match tokio::time::timeout(timeout, agent.run(input.clone(), context)).await {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn prepared(yaml: &str) -> Prepared {
        Prepared::new(crate::workflow::parse(yaml).unwrap()).unwrap()
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
        assert_eq!(p.waves, vec![vec!["pick"], vec!["check"], vec!["alert"]]);
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
