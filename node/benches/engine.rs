//! The workflow engine and scheduler: what the engine adds per step beyond the agent's own work,
//! and how many runs per second a node completes, records included.
//!
//! - `engine_overhead/{direct,engine}/{chain,wide}/N`: N `noop` agents called one after the
//!   other (`direct`), against a workflow of the same N `noop` steps run by the engine. `chain`
//!   makes each step the input of the next; `wide` makes all N independent. The engine's cost
//!   per step is (engine − direct) / N.
//! - `scheduler_runs/{memory,disk}/max_concurrent_{1,4}`: runs of a 3-step `noop` workflow
//!   submitted to the scheduler as fast as its queue takes them, each run finished only when its
//!   record is durable (`StoreHandle::append`): `memory` on an in-memory store (scheduling
//!   alone), `disk` on a redb file (each group of records fsynced). Throughput is in runs.
//!
//! `cargo bench -p rhizome --bench engine`; BENCHMARKS.md has the figures.

use std::time::{Duration, Instant};

use agents::{Agent, Noop, RunContext};
use crdt_store::{Store, StoreConfig, StoreHandle};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rhizome::run::engine::Prepared;
use rhizome::run::scheduler::{self, Refusal, SchedulerConfig, SchedulerHandle};
use rhizome::run::workflow::NodeTraits;
use serde_json::{Value, json};

const NODE: &str = "0123456789abcdef0123456789abcdef";

fn workflow(steps: usize, chain: bool, max_concurrent: u32) -> String {
    let mut yaml = format!("id: bench\nmax_concurrent: {max_concurrent}\nsteps:\n");
    for i in 0..steps {
        yaml += &format!("  - id: s{i:03}\n    agent: noop\n");
        if chain && i > 0 {
            yaml += &format!("    inputs: [s{:03}]\n", i - 1);
        } else {
            yaml += "    inputs: [input]\n";
        }
    }
    yaml
}

fn input() -> Value {
    json!({"value": 21.5, "unit": "C", "sensor": "t-7"})
}

fn engine_overhead(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("engine_overhead");
    group
        .sample_size(30)
        .measurement_time(Duration::from_secs(3));
    for steps in [1usize, 10, 100] {
        group.throughput(Throughput::Elements(steps as u64));
        let agents: Vec<Noop> = vec![Noop; steps];
        let context = RunContext { now_ms: 1_000 };
        group.bench_with_input(BenchmarkId::new("direct/chain", steps), &steps, |b, _| {
            b.iter(|| {
                rt.block_on(async {
                    let mut value = input();
                    for agent in &agents {
                        value = agent.run(value, context).await.unwrap();
                    }
                    value
                })
            })
        });
        group.bench_with_input(BenchmarkId::new("direct/wide", steps), &steps, |b, _| {
            b.iter(|| {
                rt.block_on(async {
                    let input = input();
                    let mut outputs = Vec::with_capacity(steps);
                    for agent in &agents {
                        outputs.push(agent.run(input.clone(), context).await.unwrap());
                    }
                    outputs
                })
            })
        });
        for (shape, chain) in [("chain", true), ("wide", false)] {
            let definition = rhizome::run::workflow::parse(&workflow(steps, chain, 1)).unwrap();
            let prepared = Prepared::new(definition).unwrap();
            group.bench_with_input(
                BenchmarkId::new(format!("engine/{shape}"), steps),
                &steps,
                |b, _| b.iter(|| rt.block_on(prepared.run("r".into(), NODE, input(), || 1_000))),
            );
        }
    }
    group.finish();
}

/// A scheduler with the 3-step workflow applied, on the given store.
fn scheduler_on(
    rt: &tokio::runtime::Runtime,
    store: Store,
    max_concurrent: u32,
) -> SchedulerHandle {
    let store = StoreHandle::spawn(store);
    rt.block_on(async {
        let handle = scheduler::spawn(
            store.clone(),
            SchedulerConfig {
                node: NodeTraits {
                    id: NODE.into(),
                    ..NodeTraits::default()
                },
                agents: rhizome::run::engine::registry(),
                reload_every: scheduler::RELOAD_EVERY,
                artifacts: None,
                rollout_trust: None,
                alerts: None,
            },
        );
        let definition = rhizome::run::workflow::parse(&workflow(3, true, max_concurrent)).unwrap();
        store
            .call(move |s| {
                let writer = rhizome::run::workflow::Writer {
                    node: NODE.into(),
                    control: true,
                    signer: None,
                    mesh_id: String::new(),
                    trust: rhizome::security::trust::Trust::empty(),
                };
                Ok(rhizome::cli::commands::apply_workflow(
                    s, definition, &writer,
                ))
            })
            .recv()
            .await
            .unwrap()
            .unwrap();
        handle.reload().await;
        handle
    })
}

/// Submits `runs` runs, waiting for a free queue place whenever it is full, and returns the
/// time until the last one is recorded.
async fn drive(handle: &SchedulerHandle, runs: u64) -> Duration {
    let start = Instant::now();
    let base = handle.finished_count();
    let mut submitted = 0;
    while submitted < runs {
        // Read before submitting: a refusal means runs are pending, and one finishing after
        // this point frees a place.
        let seen = handle.finished_count();
        match handle.submit("bench", input()).await {
            Ok(_) => submitted += 1,
            Err(Refusal::QueueFull { .. }) => handle.wait_finished_count(seen + 1).await,
            Err(e) => panic!("{e}"),
        }
    }
    handle.wait_finished_count(base + runs).await;
    start.elapsed()
}

fn scheduler_runs(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut group = c.benchmark_group("scheduler_runs");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Elements(1));
    for (store_kind, max_concurrent) in [("memory", 1), ("memory", 4), ("disk", 1), ("disk", 4)] {
        let config = StoreConfig::new("bench-mesh", NODE);
        let store = match store_kind {
            "memory" => Store::open_in_memory(config).unwrap(),
            _ => Store::open(
                &dir.path().join(format!("store-{max_concurrent}.redb")),
                config,
            )
            .unwrap(),
        };
        let handle = scheduler_on(&rt, store, max_concurrent);
        group.bench_function(
            format!("{store_kind}/max_concurrent_{max_concurrent}"),
            |b| b.iter_custom(|runs| rt.block_on(drive(&handle, runs))),
        );
        rt.block_on(handle.shutdown());
    }
    group.finish();
}

criterion_group!(benches, engine_overhead, scheduler_runs);
criterion_main!(benches);
