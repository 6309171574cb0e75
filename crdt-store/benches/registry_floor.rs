//! The least CPU a fleet's start-up can cost with real Automerge documents, whatever the
//! protocol or the simulator do: every node writes its own entry into the one `mesh` registry
//! (DESIGN.md), and every node must end up holding every entry, so each of N nodes applies at
//! least N - 1 changes from N - 1 actors. This measures that work alone (no sync messages, no
//! store, no network), best case (all changes in one `apply_changes`) and as they arrive (one
//! change per call), and divides the simulated duration of a scenario by N times it: the
//! fastest any simulator of this design could run that fleet.
//!
//! A plain `main` rather than a harness: one run prints the table. Environment variables
//! (defaults in brackets):
//!
//! - `RHIZOME_FLOOR_NODES` fleet sizes [100,200,500,1000]
//! - `RHIZOME_FLOOR_RECEIVERS` receiving nodes timed per size, the median reported [5]
//! - `RHIZOME_FLOOR_SIMULATED_S` simulated seconds the ceiling is computed for [180, fleet-1000's]

mod common;

use std::time::{Duration, Instant};

use common::{env_list, env_usize};
use crdt_store::DocName;
use crdt_store::automerge::patches::PatchLog;
use crdt_store::automerge::{ActorId, AutoCommit, Automerge, Change, transaction::CommitOptions};
use crdt_store::docs::{self, MeshRegistry, NodeEntry};

/// Sixteen hex digits, as the simulator's node ids, scattered so that actor order is not
/// creation order.
fn node_id(i: usize) -> String {
    format!(
        "{:016x}",
        (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)
    )
}

/// A node's registry right after `rhizome start`: the genesis plus its own entry, written by
/// its own actor, as `Store::update` writes it.
fn own_registry(i: usize) -> AutoCommit {
    let name = DocName::Mesh;
    let mut doc = docs::genesis_doc::<MeshRegistry>(&name).expect("genesis");
    let id = node_id(i);
    doc.set_actor(ActorId::from(id.as_bytes()));
    let mut registry: MeshRegistry = docs::hydrate(&name, &doc).expect("hydrate");
    registry.write_entry(
        &id,
        NodeEntry {
            name: format!("edge-{i:04}"),
            zone: format!("site-{:02}", i / 50),
            addresses: vec![format!(
                "10.{}.{}.{}:4860",
                i / 65536,
                (i / 256) % 256,
                i % 256
            )],
            version: env!("CARGO_PKG_VERSION").into(),
            ..NodeEntry::default()
        },
        1_767_225_600_000,
    );
    docs::reconcile(&name, &mut doc, &registry).expect("reconcile");
    doc.commit_with(CommitOptions::default().with_time(1_767_225_600));
    doc
}

/// A node's registry as the store holds it, ready to apply what arrives the way the store
/// applies a sync message: without a patch log (Automerge 0.12's inactive one grows per change).
fn receiver(i: usize) -> Automerge {
    Automerge::load(&own_registry(i).save()).expect("load")
}

/// The one change each node's start-up adds to the registry.
fn entry_change(doc: &mut AutoCommit) -> Change {
    let heads = docs::genesis_doc::<MeshRegistry>(&DocName::Mesh)
        .expect("genesis")
        .get_heads();
    let changes = doc.get_changes(&heads);
    assert_eq!(changes.len(), 1, "start-up writes one change");
    changes[0].clone()
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// Time for one node to apply every other node's entry: in one call, and one call per change
/// in an order that differs per receiver (as changes arrive from many peers).
fn receive_all(n: usize, receivers: usize, changes: &[Change]) -> (Duration, Duration) {
    let mut batch = Vec::new();
    let mut single = Vec::new();
    for r in 0..receivers.min(n) {
        let me = r * (n / receivers.min(n));
        let others: Vec<Change> = changes
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != me)
            .map(|(_, c)| c.clone())
            .collect();

        let mut doc = receiver(me);
        let started = Instant::now();
        doc.apply_changes_log_patches(others.iter().cloned(), &mut PatchLog::null())
            .expect("apply");
        batch.push(started.elapsed());
        assert_eq!(doc.get_heads().len(), n, "every entry is a head of its own");

        let mut doc = receiver(me);
        let mut order = others;
        // A fixed rotation per receiver: each hears the others in its own order.
        let shift = (me * 7919) % order.len().max(1);
        order.rotate_left(shift);
        let started = Instant::now();
        for change in order {
            doc.apply_changes_log_patches([change], &mut PatchLog::null())
                .expect("apply");
        }
        single.push(started.elapsed());
        assert_eq!(doc.get_heads().len(), n);
    }
    (median(batch), median(single))
}

fn main() {
    let sizes = env_list("RHIZOME_FLOOR_NODES", &[100, 200, 500, 1000]);
    let receivers = env_usize("RHIZOME_FLOOR_RECEIVERS", 5).max(1);
    let simulated_s = env_usize("RHIZOME_FLOOR_SIMULATED_S", 180) as f64;

    println!(
        "registry start-up floor: each of N nodes applies the other N-1 nodes' entries \
         (median of {receivers} receivers); ceiling = {simulated_s} simulated s / fleet CPU"
    );
    println!(
        "{:>6} | {:>12} {:>12} | {:>12} {:>12} | {:>10} {:>10}",
        "nodes", "node: batch", "one-by-one", "fleet: batch", "one-by-one", "ceiling", "one-by-one"
    );
    for n in sizes {
        let changes: Vec<Change> = (0..n).map(|i| entry_change(&mut own_registry(i))).collect();
        let (batch, single) = receive_all(n, receivers, &changes);
        let fleet_batch = batch.as_secs_f64() * n as f64;
        let fleet_single = single.as_secs_f64() * n as f64;
        println!(
            "{n:>6} | {:>10.2}ms {:>10.2}ms | {:>11.2}s {:>11.2}s | {:>9.1}x {:>9.2}x",
            batch.as_secs_f64() * 1e3,
            single.as_secs_f64() * 1e3,
            fleet_batch,
            fleet_single,
            simulated_s / fleet_batch,
            simulated_s / fleet_single,
        );
    }
}
