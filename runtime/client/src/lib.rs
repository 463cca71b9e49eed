//! `warden-runtime-client`: what the agent needs of a model worker, and nothing that runs a
//! model. The agent links this crate only; the engines (ONNX Runtime, candle), the sandbox and
//! the worker binary are `warden-runtime`'s, which links this crate for the wire contract.
//!
//! - [`tensor`]: tensors and model signatures as they cross between the agent and a worker.
//! - [`device`]: where a model runs (CPU, `cuda:N`, `tensorrt:N`, GPU memory budget, CPU
//!   fallback only where allowed) and where it ended up.
//! - [`accel`]: accelerator discovery (CUDA driver through `cudarc`, loaded at run time).
//! - [`model_format`]: which engine a model file needs, from its extension.
//! - [`model_digest`]: the signed digest a worker checks its model file against.
//! - [`sandbox_policy`]: the sandbox settings a worker is started with.
//! - [`protocol`]: the framed binary protocol on the agent ↔ worker socket (see
//!   `runtime/PROTOCOL.md`).
//! - [`shm`]: the shared-memory tensor arena of one worker (large tensors skip the socket).
//! - [`worker`]: the supervisor: spawns a worker, sends it requests, restarts or quarantines
//!   it ([`worker::Worker`]).
//! - `sys`: the crate's only `unsafe` code (the arena's copies and views, a received
//!   descriptor, two CUDA driver calls), each block with its reason.

pub mod accel;
pub mod device;
pub mod model_digest;
pub mod model_format;
pub mod protocol;
pub mod sandbox_policy;
pub mod shm;
mod sys;
pub mod tensor;
pub mod worker;
