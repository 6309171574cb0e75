//! Deterministic simulation of a Rhizome mesh: many `mesh::proto` nodes with in-memory stores on
//! a virtual network and clock, faults and workloads from one seed, invariants checked as it runs.
//!
//! The simulator is a second driver of the protocol: it feeds the real membership and
//! replication state machines the events the network driver would, and carries out their
//! actions against simulated connections and real (in-memory) `crdt_store::Store`s. There is no
//! second implementation of the protocol here.
//!
//! It must never read the wall clock, use unseeded randomness or iterate a `HashMap` into its
//! results: the same seed and scenario give the same report, byte for byte. (The command line
//! measures wall time around a run and prints it apart from the report.)
#![deny(clippy::disallowed_methods, clippy::disallowed_types)]

pub mod cli;
pub mod net;
pub mod report;
pub mod scenario;
pub mod world;

pub use report::Report;
pub use scenario::{Scenario, ScenarioError};
pub use world::{Options, Plant};

/// Runs one simulation to its end.
pub fn run(options: Options) -> Report {
    world::World::new(options).run()
}

/// Runs one simulation, calling `progress` with the simulated time and the events processed
/// each time another `every` of simulated time has passed.
pub fn run_with_progress(
    options: Options,
    every: std::time::Duration,
    progress: &mut dyn FnMut(std::time::Duration, u64),
) -> Report {
    world::World::new(options).run_with_progress(every, progress)
}
