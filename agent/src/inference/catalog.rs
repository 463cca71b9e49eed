//! The seam between the request stack and what serves models: the stack asks a [`Catalog`]
//! for a version once, and hands that very [`ServedModel`] to authorization, validation and
//! its worker. The registry of loaded versions (`crate::models::ModelRegistry`) is the
//! production catalog; the stack's unit tests use their own, in process.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use warden_runtime_client::tensor::{ModelSignature, Tensor};
use warden_runtime_client::worker::WorkerError;

use crate::config::InputRange;

/// Why a route's model version cannot be served. Model names are not secrets (grants are), so
/// each is a 404 for any authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Missing {
    /// No model of that name.
    Model,
    /// The model has no such version.
    Version,
    /// A refresh unloaded that version: it no longer passes admission. `reasons` is for the
    /// operator's log only.
    Withdrawn { reasons: String },
}

/// One servable model version.
pub trait ServedModel: Send + Sync + 'static {
    fn name(&self) -> &str;
    fn version(&self) -> &str;
    /// Its inputs and outputs, as its engine read them from the model.
    fn signature(&self) -> &ModelSignature;
    /// The engine platform (`onnxruntime_onnx`, `candle_safetensors`), for metadata.
    fn platform(&self) -> &str;
    /// Declared value ranges per input; empty when none are declared.
    fn input_ranges(&self) -> &BTreeMap<String, InputRange>;
    /// Whether its worker can answer now.
    fn is_alive(&self) -> bool;
    /// Runs the model; `outputs` selects outputs by name (empty: all).
    fn infer(
        &self,
        inputs: Vec<Tensor>,
        outputs: Vec<String>,
    ) -> impl Future<Output = Result<Vec<Tensor>, WorkerError>> + Send;
}

/// Where the stack finds model versions.
pub trait Catalog: Send + Sync + 'static {
    type Model: ServedModel;
    /// The version a request names, or the model's default version; resolved once per
    /// request.
    fn resolve(&self, name: &str, version: Option<&str>) -> Result<Arc<Self::Model>, Missing>;
    /// Every loaded version of `name`, for its metadata.
    fn versions(&self, name: &str) -> Vec<String>;
    /// Whether every loaded model can answer (server readiness).
    fn all_ready(&self) -> bool;
}
