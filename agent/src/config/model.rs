//! `[[model]]`: one served model version — its directory and file, signature and release
//! documents, declared value ranges, batching and device.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::error::{Invalid, invalid};
use super::paths::{relative, relative_opt, relative_vec};

/// The largest GPU memory budget one model may ask for, in MiB.
const MAX_GPU_BUDGET_MIB: u64 = 1 << 20;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Name in the API (`/v2/models/{name}`).
    pub name: String,
    /// Version in the API (`/v2/models/{name}/versions/{version}`).
    pub version: String,
    /// The signed model directory.
    #[serde(deserialize_with = "relative")]
    pub directory: PathBuf,
    /// The ONNX file inside `directory` that the engine loads.
    pub file: PathBuf,
    /// The OMS signature. Absent: `model.sig` inside `directory`.
    #[serde(default, deserialize_with = "relative_opt")]
    pub signature: Option<PathBuf>,
    /// The release authority's signed release statement (with `[keystore]`).
    #[serde(default, deserialize_with = "relative_opt")]
    pub release: Option<PathBuf>,
    /// Signed attestations the release requires (with `[keystore]`).
    #[serde(default, deserialize_with = "relative_vec")]
    pub attestations: Vec<PathBuf>,
    /// Declared value ranges per input tensor (`[model.inputs.<name>] min/max`): every element
    /// must lie within them, or the request is refused before it reaches the worker.
    #[serde(default)]
    pub inputs: std::collections::BTreeMap<String, InputRange>,
    /// Dynamic batching (`[model.batching]`). Absent: off.
    pub batching: Option<BatchingConfig>,
    /// The device the model runs on (`[model.accelerator]`). Absent: the CPU.
    pub accelerator: Option<AcceleratorConfig>,
}

impl ModelConfig {
    /// What the worker is asked for: the configured device, or the CPU.
    pub fn device_request(&self) -> warden_runtime_client::device::DeviceRequest {
        match &self.accelerator {
            None => warden_runtime_client::device::DeviceRequest::default(),
            Some(a) => warden_runtime_client::device::DeviceRequest {
                device: a.device,
                memory_budget_bytes: a.memory_budget_mib.map(|mib| mib.saturating_mul(1 << 20)),
                cpu_fallback: a.cpu_fallback,
            },
        }
    }
}

/// `[model.accelerator]`: where the model runs. A GPU needs a memory budget; a GPU that cannot
/// be used (absent, its ONNX Runtime provider or CUDA libraries missing) refuses the load
/// unless `cpu_fallback` is set, and then the fallback is reported by `warden status`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcceleratorConfig {
    /// `"cpu"`, `"cuda:N"` or `"tensorrt:N"` (N: the GPU's ordinal, as `warden status` lists).
    pub device: warden_runtime_client::device::Device,
    /// GPU memory the model may hold, in MiB; the budgets of the models on one GPU must fit in
    /// its memory.
    pub memory_budget_mib: Option<u64>,
    /// Run on the CPU when the GPU cannot be used, instead of refusing to load.
    #[serde(default)]
    pub cpu_fallback: bool,
}

/// Inclusive bounds on the elements of one input tensor.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputRange {
    pub min: Option<f64>,
    pub max: Option<f64>,
}

impl ModelConfig {
    pub fn signature_path(&self) -> PathBuf {
        self.signature
            .clone()
            .unwrap_or_else(|| self.directory.join("model.sig"))
    }
}

impl ModelConfig {
    /// The rules of one model (`i`: its place in the file); names unique across models are
    /// checked with the whole config.
    pub(super) fn validate(&self, i: usize) -> Result<(), Invalid> {
        let field = |f: &str| format!("model[{i}].{f}");
        if !valid_name(&self.name) {
            return Err(invalid(
                field("name"),
                format!(
                    "{:?} must be 1-64 characters of letters, digits, '-', '_' or '.'",
                    self.name
                ),
            ));
        }
        if !valid_name(&self.version) {
            return Err(invalid(
                field("version"),
                format!(
                    "{:?} must be 1-64 characters of letters, digits, '-', '_' or '.'",
                    self.version
                ),
            ));
        }
        if let Some(a) = &self.accelerator {
            let f = format!("model.{}.accelerator", self.name);
            self.device_request()
                .validate()
                .map_err(|e| invalid(f.clone(), e.to_string()))?;
            if a.memory_budget_mib
                .is_some_and(|mib| mib > MAX_GPU_BUDGET_MIB)
            {
                return Err(invalid(
                    format!("{f}.memory_budget_mib"),
                    format!("must be at most {MAX_GPU_BUDGET_MIB} (1 TiB)"),
                ));
            }
        }
        if let Some(b) = &self.batching {
            if b.window_us > 100_000 {
                return Err(invalid(
                    format!("model.{}.batching.window_us", self.name),
                    "must be at most 100000 (100 ms): the window is latency every request pays",
                ));
            }
            if !(2..=4096).contains(&b.max_rows) {
                return Err(invalid(
                    format!("model.{}.batching.max_rows", self.name),
                    "must be between 2 and 4096",
                ));
            }
        }
        for (input, r) in &self.inputs {
            let f = field(&format!("inputs.{input}"));
            if r.min.is_none() && r.max.is_none() {
                return Err(invalid(f, "name min, max or both"));
            }
            if r.min.is_some_and(|v| !v.is_finite()) || r.max.is_some_and(|v| !v.is_finite()) {
                return Err(invalid(f, "min and max must be finite numbers"));
            }
            if let (Some(lo), Some(hi)) = (r.min, r.max)
                && lo > hi
            {
                return Err(invalid(f, format!("min {lo} is above max {hi}")));
            }
        }
        if self.file.is_absolute()
            || self
                .file
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(invalid(
                field("file"),
                "must be a plain relative path inside the model directory",
            ));
        }
        Ok(())
    }
}

/// `[model.batching]`: dynamic batching for a model whose inputs have a dynamic first
/// dimension (others are served one request at a time, and the load says so in the log).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchingConfig {
    /// Extra time to wait for more requests once a session is free, in microseconds (0: a
    /// batch holds what queued while the sessions were busy, and adds no latency).
    #[serde(default)]
    pub window_us: u64,
    /// A batch runs as soon as it holds this many rows.
    #[serde(default = "default_batch_rows")]
    pub max_rows: usize,
}

impl BatchingConfig {
    pub fn policy(&self) -> warden_runtime_client::worker::BatchPolicy {
        warden_runtime_client::worker::BatchPolicy {
            window: Duration::from_micros(self.window_us),
            max_rows: self.max_rows,
        }
    }
}

fn default_batch_rows() -> usize {
    64
}

/// Names that are safe in URLs, logs and file names.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s != "."
        && s != ".."
}
