//! Why a call to a worker failed.

use crate::tensor::Tensor;

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkerError {
    /// The worker cannot answer: not started, refused to start, crashed, socket closed, shut
    /// down, timed out. Maps to 503.
    #[error("model worker unavailable: {reason}")]
    Unavailable { reason: String },
    /// The engine refused the input (name, datatype, shape, size). Maps to 400.
    #[error("invalid input: {message}")]
    InvalidInput { message: String },
    /// The engine failed on a valid input. Maps to 500.
    #[error("inference failed: {message}")]
    Engine { message: String },
    /// A request could not be encoded (too large for a frame, too many tensors) or the worker
    /// broke the protocol.
    #[error("worker protocol: {message}")]
    Protocol { message: String },
}

pub(crate) fn unavailable(reason: impl Into<String>) -> WorkerError {
    WorkerError::Unavailable {
        reason: reason.into(),
    }
}

/// What a call answers.
pub(crate) type Reply = Result<Vec<Tensor>, WorkerError>;
