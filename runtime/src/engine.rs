//! The engines behind one tensor-in/tensor-out API ([`Engine`]), chosen by the model file
//! ([`ModelFormat`]): ONNX Runtime for `.onnx` ([`OrtEngine`], in [`crate::onnx`]), candle for
//! `.safetensors` ([`crate::candle::CandleEngine`]). The worker protocol, sandbox, batching
//! and supervision are the same for both.

use std::path::Path;

use bytes::Bytes;
use warden_runtime_client::device::{Device, DeviceRequest, DeviceUnavailable, Placement};
pub use warden_runtime_client::model_format::ModelFormat;
use warden_runtime_client::tensor::{ModelSignature, Tensor};
use warden_runtime_client::worker::TELEMETRY_OPT_OUT;

use crate::candle::{CandleEngine, CandleError};
use crate::onnx::OrtEngine;

/// One loaded model, on whichever engine its format needs.
#[derive(Debug)]
pub enum Engine {
    Ort(OrtEngine),
    Candle(CandleEngine, Placement),
}

/// candle's provider name in a [`Placement`].
const CANDLE_CPU: &str = "candle-cpu";
const CANDLE_CUDA: &str = "candle-cuda";

/// Where candle runs a model: a CUDA device when asked for one and this build has candle's
/// CUDA backend (`candle-cuda`), else the CPU where the request allows it. TensorRT is an ONNX
/// Runtime provider: for candle it is the CUDA device of the same number. The placement names
/// no enforced budget: candle has no allocator limit to hand it to, so the budget is the
/// agent's accounting only.
fn candle_device(request: &DeviceRequest) -> Result<(candle_core::Device, Placement), EngineError> {
    let Some(ordinal) = request.device.gpu() else {
        return Ok((candle_core::Device::Cpu, Placement::cpu(CANDLE_CPU)));
    };
    let reason = match candle_core::Device::new_cuda(ordinal as usize) {
        Ok(device) => {
            return Ok((
                device,
                Placement {
                    device: Device::Cuda(ordinal),
                    provider: CANDLE_CUDA.to_string(),
                    memory_budget_bytes: None,
                    fallback_reason: None,
                },
            ));
        }
        Err(e) if !cfg!(feature = "candle-cuda") => {
            format!("this warden-runtime was built without candle's CUDA backend ({e})")
        }
        Err(e) => format!("candle cannot use cuda:{ordinal}: {e}"),
    };
    request.fall_back(reason.clone())?;
    Ok((
        candle_core::Device::Cpu,
        fell_back_to_cpu(request, CANDLE_CPU, reason),
    ))
}

/// The placement of a model that asked for `requested` and runs on the CPU because of
/// `reason` (said loudly: an operator who asked for a GPU must learn that it is not used).
pub(crate) fn fell_back_to_cpu(
    requested: &DeviceRequest,
    provider: &str,
    reason: String,
) -> Placement {
    tracing::warn!(
        requested = %requested.device,
        %reason,
        "GPU not usable; running on the CPU because the model's configuration allows a CPU fallback"
    );
    Placement {
        fallback_reason: Some(reason),
        ..Placement::cpu(provider)
    }
}

impl Engine {
    /// Loads `model_bytes` as `format`. ONNX needs the ONNX Runtime library. candle serves
    /// concurrent calls from one copy of the weights, in one thread pool of
    /// `intra_op_threads × sessions` threads (0: one per core): the same thread budget as ONNX
    /// Runtime's `sessions` sessions of `intra_op_threads` threads each, so that `sessions`
    /// calls can run side by side (the worker also sets `RAYON_NUM_THREADS` to
    /// `intra_op_threads`, which is how finely candle splits one product).
    pub fn load(
        format: ModelFormat,
        model_bytes: &[u8],
        onnxruntime_library: Option<&Path>,
        opts: EngineOptions,
    ) -> Result<Engine, EngineError> {
        match format {
            ModelFormat::Onnx => {
                let library = onnxruntime_library.ok_or_else(|| EngineError::Library {
                    path: String::new(),
                    message: "an ONNX model needs the ONNX Runtime library (--onnxruntime)".into(),
                })?;
                OrtEngine::load(library, model_bytes, opts).map(Engine::Ort)
            }
            ModelFormat::Safetensors => {
                let threads = opts.intra_op_threads.saturating_mul(opts.sessions.max(1));
                let (device, placement) = candle_device(&opts.device)?;
                let engine = CandleEngine::load_on(model_bytes, threads, &device)?;
                Ok(Engine::Candle(engine, placement))
            }
        }
    }

    /// Where the model runs.
    pub fn placement(&self) -> &Placement {
        match self {
            Engine::Ort(e) => e.placement(),
            Engine::Candle(_, placement) => placement,
        }
    }

    /// The model's inputs and outputs.
    pub fn signature(&self) -> &ModelSignature {
        match self {
            Engine::Ort(e) => e.signature(),
            Engine::Candle(e, _) => e.signature(),
        }
    }

    /// Runs the model (see [`OrtEngine::run`] and [`CandleEngine::run`]).
    pub fn run(&self, inputs: &[Tensor], outputs: &[String]) -> Result<Vec<Tensor>, EngineError> {
        self.run_into(inputs, outputs, &mut |_| None)
    }

    /// [`Engine::run`], offering each output's bytes to `sink` as the engine produces them
    /// (see [`OutputSink`]; candle builds its outputs itself and offers none).
    pub fn run_into(
        &self,
        inputs: &[Tensor],
        outputs: &[String],
        sink: OutputSink<'_>,
    ) -> Result<Vec<Tensor>, EngineError> {
        match self {
            Engine::Ort(e) => e.run_into(inputs, outputs, sink),
            Engine::Candle(e, _) => Ok(e.run(inputs, outputs)?),
        }
    }
}

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
