//! What goes wrong in an engine, in the terms the worker reports to the agent.

use warden_runtime_client::device::DeviceUnavailable;
use warden_runtime_client::worker::TELEMETRY_OPT_OUT;

use crate::candle::CandleError;

/// What went wrong in the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The ONNX Runtime library could not be loaded (missing, wrong version, not a library).
    #[error("cannot load ONNX Runtime from {path}: {message}")]
    Library { path: String, message: String },
    /// The model could not be loaded, or declares something this engine cannot serve.
    #[error("cannot load model: {0}")]
    Model(String),
    /// The request does not fit the model's signature; nothing was run.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The engine failed while running the model.
    #[error("inference failed: {0}")]
    Run(String),
    /// The GPU the configuration asked for cannot be used and no CPU fallback is allowed.
    #[error("cannot load model: {0}")]
    Device(#[from] DeviceUnavailable),
    /// ONNX Runtime's telemetry is not switched off in this process's environment.
    #[error(
        "refusing to load ONNX Runtime with its telemetry on: set {TELEMETRY_OPT_OUT}=1 in \
         the environment before starting (found {found}). ONNX Runtime's Linux builds otherwise \
         keep a device identifier and an event cache under ~/.cache/Microsoft and upload usage \
         events; no other switch stops that"
    )]
    TelemetryOn { found: String },
}

impl From<CandleError> for EngineError {
    fn from(e: CandleError) -> Self {
        match e {
            CandleError::InvalidInput(m) => EngineError::InvalidInput(m),
            CandleError::Run(m) => EngineError::Run(m),
            CandleError::Format(e) => EngineError::Model(format!("malformed safetensors: {e}")),
            CandleError::Model(e) => EngineError::Model(e.to_string()),
            CandleError::Threads(m) => {
                EngineError::Model(format!("cannot start the engine's threads: {m}"))
            }
        }
    }
}
