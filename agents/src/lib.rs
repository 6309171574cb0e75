//! The `Agent` trait and the built-in agents that workflow steps run: ONNX models through ONNX
//! Runtime, local LLMs over an OpenAI-compatible HTTP API, and data transforms.
//!
//! Agents never touch the store or the network of the mesh: they take a step's inputs and
//! configuration and return its output.
