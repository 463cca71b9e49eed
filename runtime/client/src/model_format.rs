//! Which engine runs a model file: decided by its extension, on both sides of the worker
//! socket (the agent refuses an unknown format before it starts a worker).

use std::path::{Path, PathBuf};

/// A model file whose extension names no engine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{}: unknown model format; a model file ends in .onnx (ONNX Runtime) or .safetensors (candle)",
    path.display()
)]
pub struct UnknownModelFormat {
    /// The file.
    pub path: PathBuf,
}

/// How a model file is run, decided by its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelFormat {
    /// `.onnx`: ONNX Runtime.
    Onnx,
    /// `.safetensors`: candle.
    Safetensors,
}

impl ModelFormat {
    /// The format of `path`, from its extension (`.onnx` or `.safetensors`, any case).
    pub fn of(path: &Path) -> Result<ModelFormat, UnknownModelFormat> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("onnx") => Ok(ModelFormat::Onnx),
            Some("safetensors") => Ok(ModelFormat::Safetensors),
            _ => Err(UnknownModelFormat {
                path: path.to_path_buf(),
            }),
        }
    }

    /// The platform as model metadata names it (KServe v2 / Triton style):
    /// `"onnxruntime_onnx"`, `"candle_safetensors"`.
    pub fn platform(self) -> &'static str {
        match self {
            ModelFormat::Onnx => "onnxruntime_onnx",
            ModelFormat::Safetensors => "candle_safetensors",
        }
    }

    /// The engine's name, for logs (`"onnxruntime"`, `"candle"`).
    pub fn engine_name(self) -> &'static str {
        match self {
            ModelFormat::Onnx => "onnxruntime",
            ModelFormat::Safetensors => "candle",
        }
    }
}
