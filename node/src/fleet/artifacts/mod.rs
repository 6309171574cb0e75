//! Artifacts: files a workflow or a release needs (ONNX models, binaries), stored by content.
//!
//! A file is cut into content-defined chunks ([`chunking`]), each stored under its SHA-256;
//! a manifest lists the chunks, and the artifact's id is the manifest's hash ([`store`]).
//! Anything received is checked against a hash the receiver already trusts: the manifest
//! against the id, each chunk against the manifest. Artifacts are not Automerge documents:
//! their bytes would bloat every document's history and every sync with them.

pub mod chunking;
pub mod store;

pub use store::{Added, ArtifactStore, ChunkRef, Collected, Listed, Manifest};
