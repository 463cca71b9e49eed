//! Measured boot: PCRs, the firmware event log, quotes, and Warden's own measurements.
//!
//! - [`eventlog`]: parse the TCG crypto-agile event log and replay it against the PCRs.
//! - [`quote`]: a TPM2_Quote over a nonce with an attestation key, and its verification off the
//!   TPM (p256 and SHA-256 only) against the AK's public key and a golden PCR set.
//! - [`measure`]: the application PCR ([`measure::APP_PCR`]) extended on every model load with
//!   the model's root digest and the policy-set digest, an application event log beside it,
//!   and the function that predicts the PCR from that log.

pub mod credential;
pub mod eventlog;
pub mod measure;
pub mod quote;

/// Why a measurement, log or quote was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BootError {
    /// No event log at all (empty file).
    #[error("the event log is empty: the firmware measured nothing, or the log was truncated")]
    EmptyEventLog,
    /// An event log that does not parse.
    #[error("malformed event log at byte {offset}: {detail}")]
    MalformedEventLog {
        /// Where parsing stopped.
        offset: usize,
        /// Why.
        detail: String,
    },
    /// A PCR differs from what the log (or the golden set) says.
    #[error("PCR {pcr}: expected {expected}, the TPM holds {actual}")]
    PcrMismatch {
        /// The PCR.
        pcr: u32,
        /// The value from the log or the golden set (hex).
        expected: String,
        /// The TPM's value (hex).
        actual: String,
    },
    /// A quote that fails verification.
    #[error("quote refused: {detail}")]
    QuoteRefused {
        /// Why.
        detail: String,
    },
    /// The application event log.
    #[error("application event log {path}: {detail}")]
    AppLog {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A credential (AK-to-EK binding) that cannot be made or opened.
    #[error("credential refused: {detail}")]
    CredentialRefused {
        /// Why.
        detail: String,
    },
    /// The TPM.
    #[error(transparent)]
    Tpm(#[from] crate::tpm::TpmError),
    /// The key store (attestation key creation).
    #[error(transparent)]
    KeyStore(#[from] crate::keystore::KeyStoreError),
}
