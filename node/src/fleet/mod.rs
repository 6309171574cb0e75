//! The node's place in the fleet: the aggregator hierarchy and who receives what
//! ([`hierarchy`]), document replication between running nodes ([`sync`]) and the rollups an
//! aggregator writes for the zones above it ([`rollup`]), and what replication saw, for
//! `rhizome explain` ([`diagnostics`]), the artifacts a node holds ([`artifacts`]) and their
//! blobs moving between nodes ([`transfer`]).

pub mod artifacts;
pub mod diagnostics;
pub mod hierarchy;
pub mod releases;
pub mod rollup;
pub mod sync;
pub mod transfer;
