//! The network driver: QUIC connections with mutual TLS, discovery, and the loop that feeds
//! `proto`'s state machines with what happens on the wire.

pub mod blob_buffers;
pub mod discovery;
pub mod driver;
pub mod enrolment;
pub mod identity;
