//! The `rhizome` node: CLI, configuration, the local HTTP API, the workflow engine and its
//! scheduler, and the glue between mesh, store and agents.
//!
//! The binary (`src/main.rs`) only parses the command line and sets up logging; everything else
//! lives here so that benchmarks reach the engine and the scheduler. This is the binary's
//! inside, not a stable API for other programs. It must never hold protocol logic of its own:
//! that belongs to `mesh::proto`, documents to `crdt-store`, agents to `agents`.

pub mod api;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod durable_file;
pub mod export;
pub mod fleet;
pub mod identity;
pub mod mesh_admin;
pub mod node;
pub mod ops;
pub mod run;
pub mod security;
