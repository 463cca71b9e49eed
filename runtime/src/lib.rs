//! `warden-runtime`: the inference engines and the worker process that runs one model version.
//!
//! - [`accel`]: accelerator discovery (CUDA driver through `cudarc`, loaded at run time).
//! - `sys`: the crate's only `unsafe` code (a `fork`, two CUDA driver calls), each block with
//!   its reason.
//! - [`tensor`]: tensors and model signatures as they cross between the agent and a worker.
//! - [`device`]: where a model runs (CPU, `cuda:N`, `tensorrt:N`, GPU memory budget, CPU
//!   fallback only where allowed) and where it ended up.
//! - [`engine`]: the engines behind one API ([`engine::Engine`], chosen by the model file):
//!   ONNX Runtime through `ort` ([`engine::OrtEngine`]) and candle ([`candle::CandleEngine`]).
//! - [`candle`]: safetensors models on `candle-core` + `candle-nn` (a BERT classifier).
//! - [`protocol`]: the framed binary protocol on the agent ↔ worker socket (see `PROTOCOL.md`).
//! - [`shm`]: the shared-memory tensor arena of one worker (large tensors skip the socket).
//! - [`server`]: the worker side of that socket (used by the `warden-runtime` binary).
//! - [`sandbox`]: the sandbox every worker enters at start-up (namespaces, read-only root,
//!   seccomp, rlimits, cgroups, no capabilities).
//! - [`boot`]: how a worker process comes up (privileged loads, then the sandbox, then serve).
//! - [`worker`]: the agent side: spawns a worker and sends it requests ([`worker::Worker`]).

pub mod accel;
pub mod boot;
pub mod candle;
pub mod device;
pub mod engine;
pub mod protocol;
pub mod sandbox;
pub mod server;
pub mod shm;
mod sys;
pub mod tensor;
pub mod worker;
