//! Why a model version is not served, why a default cannot change, and why the key store or
//! admission cannot be set up.

use std::path::PathBuf;

use crate::audit::AuditError;

use super::admission::AdmissionError;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model {name} version {version}: cannot stage {path}: {source}")]
    Stage {
        name: String,
        version: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "model {name} version {version}: {path} is not a regular file or directory (symlinks and devices are refused)"
    )]
    NotRegular {
        name: String,
        version: String,
        path: PathBuf,
    },
    #[error("model {name} version {version}: signature refused: {reasons}")]
    Signature {
        name: String,
        version: String,
        reasons: String,
    },
    #[error("model {name} version {version}: admission refused: {}", reasons.join("; "))]
    Refused {
        name: String,
        version: String,
        /// The startup policy's reasons, `<clause>: <detail>`.
        reasons: Vec<String>,
    },
    #[error("model {name} version {version}: the key store's anchors: {source}")]
    Anchors {
        name: String,
        version: String,
        source: warden_attest::anchors::AnchorError,
    },
    #[error("model {name} version {version}: measuring the load: {source}")]
    Measure {
        name: String,
        version: String,
        source: MeasureError,
    },
    #[error(
        "model {name} version {version}: a value range names {input:?}, which is not an input of the model (inputs: {declared:?})"
    )]
    RangeInput {
        name: String,
        version: String,
        input: String,
        declared: Vec<String>,
    },
    #[error("model {name} version {version} is already loaded")]
    AlreadyLoaded { name: String, version: String },
    #[error("trust anchor {path}: {message}")]
    Anchor { path: PathBuf, message: String },
    #[error("model {name} version {version}: {message}")]
    Format {
        name: String,
        version: String,
        message: String,
    },
    #[error("model {name} version {version}: {message}")]
    Device {
        name: String,
        version: String,
        message: String,
    },
    #[error("model {name} version {version}: worker failed to start: {message}")]
    Worker {
        name: String,
        version: String,
        message: String,
    },
    #[error(
        "model {name} version {version} is an ONNX model but the ONNX Runtime library is not configured: set runtime.onnxruntime_library or ORT_DYLIB_PATH (scripts/setup.sh fetches it)"
    )]
    NoOnnxRuntime { name: String, version: String },
    #[error("cannot find the worker binary {path}: set runtime.worker_binary")]
    NoWorkerBinary { path: PathBuf },
    #[error("worker events: {0}")]
    Audit(#[from] AuditError),
    #[error("a blocking task failed: {0}")]
    Join(String),
}

/// Why a default could not be changed.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("model {name} version {version} is not loaded")]
    NotLoaded { name: String, version: String },
    #[error("model {name} has no previously active version")]
    NoPrevious { name: String },
}

/// Why the key store or the admission policy could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("keystore: {0}")]
    KeyStore(#[from] warden_keystore::KeyStoreError),
    #[error("the policy set: {0}")]
    Policy(#[from] AdmissionError),
    #[error("the application event log: {0}")]
    AppLog(warden_attest::boot::BootError),
    #[error("{0}")]
    PushedPolicy(#[from] super::policy_set::KeptSetError),
    #[error(transparent)]
    SignerCrlFile(#[from] crate::crl::CrlFileError),
    #[error("trust.model_signer_crls: {0}")]
    SignerCrl(String),
}

/// Why a load could not be measured (the load is then refused: a quote must name exactly
/// what can answer).
#[derive(Debug, thiserror::Error)]
pub enum MeasureError {
    #[error("the application event log: {0}")]
    Log(#[from] warden_attest::boot::BootError),
    #[error("extending the application PCR: {0}")]
    Extend(warden_keystore::KeyStoreError),
}
