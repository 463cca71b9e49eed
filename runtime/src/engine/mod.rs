//! The engines behind one tensor-in/tensor-out API ([`Engine`]), chosen by the model file
//! ([`ModelFormat`]): ONNX Runtime for `.onnx` ([`OrtEngine`], in [`crate::onnx`]), candle for
//! `.safetensors` ([`crate::candle::CandleEngine`]). The worker protocol, sandbox, batching
//! and supervision are the same for both.
//!
//! - [`options`]: what an engine is loaded with, and where its outputs may be written.
//! - [`error`]: what goes wrong, in the engine-neutral terms the worker reports.
//! - [`placement`]: where a model ended up (the GPU asked for, or the CPU by an allowed
//!   fallback, said loudly), shared by both engines.

pub mod error;
pub mod options;
pub mod placement;

use std::path::Path;

use warden_runtime_client::device::Placement;
pub use warden_runtime_client::model_format::ModelFormat;
use warden_runtime_client::tensor::{ModelSignature, Tensor};

use crate::candle::CandleEngine;
use crate::onnx::OrtEngine;
pub use error::EngineError;
pub use options::{EngineOptions, OutputSink};
use placement::candle_device;

/// One loaded model, on whichever engine its format needs.
#[derive(Debug)]
pub enum Engine {
    Ort(OrtEngine),
    Candle(CandleEngine, Placement),
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
