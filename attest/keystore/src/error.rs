//! Why a key store operation failed. Messages name the backend, role, counter or file; they
//! never carry key material or PINs.

use std::path::PathBuf;

use crate::roles::{Counter, Role};

/// Everything that can go wrong in a key store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyStoreError {
    /// The backend does not implement this operation.
    #[error("the {backend} key store does not support {operation}")]
    NotSupported {
        /// `tpm`, `pkcs11` or `software`.
        backend: &'static str,
        /// The operation asked for.
        operation: &'static str,
    },
    /// The anchors of a role are already installed and locked.
    #[error("the {role} anchors are already installed and locked; they cannot be replaced")]
    AnchorsLocked {
        /// The role.
        role: Role,
    },
    /// Anchors larger than the backend can hold.
    #[error("the {role} anchors take {size} bytes; this key store holds at most {limit}")]
    AnchorsTooLarge {
        /// The role.
        role: Role,
        /// Their size.
        size: usize,
        /// What fits.
        limit: usize,
    },
    /// Nothing provisioned yet (device key, seal key).
    #[error("{what} is not provisioned; run `warden provision`")]
    NotProvisioned {
        /// What is missing.
        what: &'static str,
    },
    /// A counter may not go back.
    #[error("counter {counter} is at {current}; refusing to go back to {requested}")]
    CounterRollback {
        /// The counter.
        counter: Counter,
        /// Its value.
        current: u64,
        /// The value asked for.
        requested: u64,
    },
    /// A counter may only move a bounded step at a time.
    #[error("counter {counter} is at {current}; {requested} is more than {limit} ahead")]
    CounterStepTooLarge {
        /// The counter.
        counter: Counter,
        /// Its value.
        current: u64,
        /// The value asked for.
        requested: u64,
        /// The largest step.
        limit: u64,
    },
    /// The key store refused to unseal (PCRs differ from the sealing policy, wrong key, or the
    /// blob was altered).
    #[error("unseal refused by the {backend} key store: {detail}")]
    UnsealRefused {
        /// The backend.
        backend: &'static str,
        /// Why, as the backend reports it.
        detail: String,
    },
    /// A sealed blob that cannot be parsed.
    #[error("malformed sealed blob: {detail}")]
    MalformedSealedBlob {
        /// Why.
        detail: String,
    },
    /// Bad input from the caller or bad data read back from the device.
    #[error("invalid key store data: {detail}")]
    InvalidInput {
        /// What.
        detail: String,
    },
    /// Bad configuration (TCTI, module path, token label, PIN file).
    #[error("key store configuration: {detail}")]
    Config {
        /// What is wrong and how to fix it.
        detail: String,
    },
    /// A TPM command failed.
    #[error("TPM {operation} failed: {detail}")]
    Tpm {
        /// The command or step.
        operation: &'static str,
        /// The TSS error.
        detail: String,
    },
    /// A PKCS#11 call failed.
    #[error("PKCS#11 {operation} failed: {detail}")]
    Pkcs11 {
        /// The call or step.
        operation: &'static str,
        /// The module's error.
        detail: String,
    },
    /// A file of the software backend.
    #[error("cannot access {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Local cryptography (software backend, host-side AES-GCM).
    #[error("{operation} failed: {detail}")]
    Crypto {
        /// The operation.
        operation: &'static str,
        /// Why.
        detail: String,
    },
}

impl KeyStoreError {
    /// A file of a backend.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// A TPM command that failed.
    pub fn tpm(operation: &'static str, e: impl std::fmt::Display) -> Self {
        Self::Tpm {
            operation,
            detail: e.to_string(),
        }
    }

    /// A PKCS#11 call that failed.
    pub fn pkcs11(operation: &'static str, e: impl std::fmt::Display) -> Self {
        Self::Pkcs11 {
            operation,
            detail: e.to_string(),
        }
    }
}
