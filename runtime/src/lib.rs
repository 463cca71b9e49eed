//! `warden-runtime`: the inference engines and the worker process that runs one model version.
//! The agent does not link this crate: what it needs of a worker (protocol, tensor arena,
//! tensor and device types, the supervisor) is `warden-runtime-client`'s, which this crate
//! links for the same wire contract.
//!
//! - `sys`: the crate's only `unsafe` code (the `fork` a PID namespace needs), with its reason.
//! - [`engine`]: the engines behind one API ([`engine::Engine`], chosen by the model file),
//!   their options, errors and device placement.
//! - [`onnx`]: ONNX Runtime through `ort` ([`onnx::OrtEngine`]): the library, loaded once and
//!   checked, a pool of sessions, tensor conversion.
//! - [`candle`]: safetensors models on `candle-core` + `candle-nn` (a BERT classifier,
//!   [`candle::CandleEngine`]).
//! - [`server`]: the worker side of the socket (used by the `warden-runtime` binary).
//! - [`sandbox`]: the sandbox every worker enters at start-up (namespaces, read-only root,
//!   seccomp, rlimits, cgroups, no capabilities).
//! - [`boot`]: how a worker process comes up (privileged loads, then the sandbox, then serve).

pub mod boot;
pub mod candle;
pub mod engine;
pub mod onnx;
pub mod sandbox;
pub mod server;
mod sys;
