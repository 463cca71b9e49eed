//! One served version: what was verified about it, its worker, and what it answers.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use warden_runtime_client::tensor::{ModelSignature, Tensor};
use warden_runtime_client::worker::{Worker, WorkerError};

use crate::inference::ServedModel;

/// The signed documents of one loaded version, read from the agent's private copies.
#[derive(Debug, Clone, Default)]
pub struct HeldEvidence {
    pub(super) signature: Option<Vec<u8>>,
    pub(super) release: Option<Vec<u8>>,
    pub(super) attestations: Vec<Vec<u8>>,
    /// What the signature verified when the version was loaded: refreshes re-check the
    /// signature against it instead of re-hashing the model.
    pub(super) verified: Option<warden_attest::bundle::VerifiedModel>,
}

/// One verified, running model version.
pub struct LoadedModel {
    pub name: String,
    pub version: String,
    /// The OMS root digest of the verified bundle.
    pub root_digest: String,
    /// Who signed it (key hint or certificate subject).
    pub signer: String,
    /// When the signing certificate chain stops being valid (certificate method; Unix
    /// seconds).
    pub signer_valid_until: Option<u64>,
    pub signature: ModelSignature,
    /// The engine platform, from the model file (`onnxruntime_onnx`, `candle_safetensors`).
    pub platform: &'static str,
    pub worker: Worker,
    /// Requests handed to the worker; everything refused before that point never counts.
    pub forwarded: std::sync::atomic::AtomicU64,
    /// Declared value ranges per input (`[model.inputs]`; pushed versions inherit the
    /// configured model's).
    pub input_ranges: BTreeMap<String, crate::config::InputRange>,
    /// Why the agent started the worker on the CPU though a GPU was configured.
    pub(super) fallback_reason: Option<String>,
    /// The verified copy, re-checked on every refresh.
    pub(super) staged_dir: PathBuf,
    /// Present when admitted by the startup policy.
    pub(super) evidence: Option<Arc<HeldEvidence>>,
}

impl LoadedModel {
    /// Where the model runs: the worker's report, with the agent's reason when the agent
    /// itself moved a GPU model to the CPU (its GPU does not exist).
    pub fn placement(&self) -> warden_runtime_client::device::Placement {
        let mut placement = self.worker.placement();
        if placement.fallback_reason.is_none() {
            placement.fallback_reason.clone_from(&self.fallback_reason);
        }
        placement
    }
}

impl ServedModel for LoadedModel {
    fn name(&self) -> &str {
        &self.name
    }

    fn version(&self) -> &str {
        &self.version
    }

    fn signature(&self) -> &ModelSignature {
        &self.signature
    }

    fn platform(&self) -> &str {
        self.platform
    }

    fn input_ranges(&self) -> &BTreeMap<String, crate::config::InputRange> {
        &self.input_ranges
    }

    fn is_alive(&self) -> bool {
        self.worker.is_alive()
    }

    /// Counts the request as handed to the worker, then runs it there.
    async fn infer(
        &self,
        inputs: Vec<Tensor>,
        outputs: Vec<String>,
    ) -> Result<Vec<Tensor>, WorkerError> {
        self.forwarded
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.worker.infer(inputs, outputs).await
    }
}

/// A version a refresh stopped serving.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unloaded {
    pub name: String,
    pub version: String,
    pub reasons: Vec<String>,
}
