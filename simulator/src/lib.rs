//! Deterministic simulation of a Rhizome mesh: many `mesh::proto` nodes with in-memory stores on
//! a virtual network and clock, faults and workloads from one seed, invariants checked as it runs.
//!
//! It must never read the wall clock, use unseeded randomness or iterate a `HashMap` into its
//! results: the same seed and scenario give the same report, byte for byte.
