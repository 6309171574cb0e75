//! The sans-IO protocol core: state machines that take events and the current time, and return
//! actions. Nothing here performs IO, reads a clock or draws unseeded randomness; the network
//! driver and the simulator feed the same code.
#![deny(clippy::disallowed_methods, clippy::disallowed_types)]

pub mod amrepo;
pub mod election;
pub mod membership;
pub mod sync;
pub mod transfer;
pub mod wire;
