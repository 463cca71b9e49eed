//! Measured boot, as a verifier checks it: nothing here talks to a TPM (the key service
//! `warden-keyd` does, on the device); everything here reads what a device sends.
//!
//! - [`eventlog`]: parse the TCG crypto-agile event log and replay it against the PCRs.
//! - [`quote`]: verify a TPM2_Quote off the TPM (p256 and SHA-256 only) against the AK's
//!   public key and a golden PCR set.
//! - [`credential`]: enrol an attestation key: check the device's EK (certificate or
//!   recorded key) and its AK's public area, and make the challenge only that TPM answers.
//! - [`measure`]: the application PCR ([`measure::DEFAULT_APP_PCR`]) extended on every model
//!   load with the model's root digest and the policy-set digest, an application event log
//!   beside it, and the function that predicts the PCR from that log.
//! - `tpm_wire`: the bounds-checked reader of marshalled TPM structures these parse with.

pub mod credential;
pub mod eventlog;
pub mod measure;
pub mod quote;
mod tpm_wire;

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
}
