//! What an engine is loaded with, and where its outputs may be written as it produces them.

use bytes::Bytes;
use warden_runtime_client::device::DeviceRequest;

/// Where an output's bytes may go as the engine produces them: given the bytes (little-endian),
/// it copies them to where they will be sent from and returns a view of that copy, or `None`
/// to leave them to the engine (which then copies them into a buffer of their own). The
/// worker passes its reply region in the tensor arena, so that a large output is copied once.
pub type OutputSink<'a> = &'a mut dyn FnMut(&[u8]) -> Option<Bytes>;

/// Engine settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineOptions {
    /// Threads ONNX Runtime may use inside one operator, per session (0 = ONNX Runtime's default,
    /// one per core).
    pub intra_op_threads: usize,
    /// Sessions in the pool, i.e. how many `run` calls execute at the same time (at least 1).
    pub sessions: usize,
    /// The device to run on (default: the CPU).
    pub device: DeviceRequest,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            intra_op_threads: 1,
            sessions: 1,
            device: DeviceRequest::default(),
        }
    }
}
