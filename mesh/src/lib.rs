//! The mesh protocol of Rhizome.
//!
//! `proto` holds the sans-IO state machines (membership and failure detection, zone aggregator
//! election, wire encoding; sync scheduling to come): no sockets, no clock reads, no unseeded
//! randomness; time and randomness come in as arguments, timers go out as events. `net`
//! (feature `net`, on by default) drives them over QUIC and mDNS. The simulator drives `proto` directly, so the
//! code it tests is the code production runs.
//!
//! Without default features this crate must build without tokio; CI checks it.

#[cfg(feature = "net")]
pub mod net;
pub mod proto;
