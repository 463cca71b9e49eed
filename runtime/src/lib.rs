//! `warden-runtime`: the inference engines and the worker process that runs one model version.
//!
//! - [`tensor`]: tensors and model signatures as they cross between the agent and a worker.
//! - [`engine`]: ONNX Runtime through `ort` ([`engine::OrtEngine`]).
//! - [`protocol`]: the framed binary protocol on the agent ↔ worker socket (see `PROTOCOL.md`).
//! - [`server`]: the worker side of that socket (used by the `warden-runtime` binary).
//! - [`worker`]: the agent side: spawns a worker and sends it requests ([`worker::Worker`]).

pub mod engine;
pub mod protocol;
pub mod server;
pub mod tensor;
pub mod worker;
