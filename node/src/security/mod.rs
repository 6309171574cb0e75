//! Trust in the mesh beyond admission: decisions only the mesh CA may take (revocations),
//! checked by every node on whatever reaches it, whoever relayed it.
//!
//! The room of mesh-level security: signed revocations ([`revocations`]) and signed workflow
//! versions ([`workflow_rights`]), and the key the store is encrypted with ([`store_key`]). API tokens, which guard one node's HTTP API, live with the
//! API (`api::auth`).

pub mod audit;
pub mod enrolment;
pub mod policy;
pub mod renewal;
pub mod revocations;
pub mod store_key;
pub mod trust;
pub mod workflow_rights;
