//! `warden-keystore`: key custody behind one trait, [`KeyStore`], and the only way the agent
//! reaches a key. This crate holds no hardware backend: the TPM 2.0 (`tss-esapi`) and PKCS#11
//! (`cryptoki`) backends live in the key service, `warden-keyd`, the one process allowed to
//! open them; the agent talks to it through [`keyd::KeydClient`], a [`KeyStore`] like any
//! other.
//!
//! - [`config`]: the backend configuration, as in keyd's (and the development agent's) TOML.
//! - [`attestation`]: what a TPM key store hands out for measured boot (quotes, the device's
//!   identity for enrolment, an enrolment challenge).
//! - [`software::SoftwareKeyStore`]: files in a directory. **Development only**: its
//!   [`KeyStore::describe`] says so, and so must every status line built on it. The demo and
//!   tests run it in process, behind the same trait.
//! - [`tls`]: the device key as a rustls signing key.
//! - [`keyd`]: the key service's wire protocol and its client.
//! - [`backend`]: checks and encodings every backend shares.
//! - [`report`]: what a key store says about itself to an operator.
//!
//! What a key store holds:
//! - the **trust anchors** of each [`Role`], installed once and then locked where they cannot be
//!   swapped silently (a write-once TPM NV index; a non-modifiable, non-destroyable token
//!   object; a read-only file for development);
//! - a non-exportable **device key** (ECDSA P-256) that signs, e.g. TLS handshakes through
//!   [`tls::KeyStoreSigningKey`] and audit checkpoints;
//! - **sealing** of a data key (TPM: bound to a PCR policy; HSM: AES-GCM under a token key;
//!   development: AES-GCM under a key file);
//! - **monotonic counters** for anti-rollback (a TPM NV counter; a token object; a file);
//! - on a TPM, the **PCRs**: extending and reading them for Warden's own measurements
//!   (`warden_attest::boot::measure`) and **quotes** over a verifier's nonce with the
//!   attestation key ([`attestation::Quote`], checked by `warden_attest::boot::quote`).
//!
//! As in Parsec's providers, every operation defaults to [`KeyStoreError::NotSupported`] and each
//! backend reports its [`Capabilities`].

pub mod attestation;
pub mod backend;
pub mod config;
mod error;
pub mod keyd;
pub mod report;
mod roles;
pub mod software;
pub mod tls;

pub use error::KeyStoreError;
pub use roles::{Counter, Role};
use zeroize::Zeroizing;

use attestation::{Challenge, DeviceIdentity, Quote};

/// The largest step one [`KeyStore::advance_counter`] call may take. A TPM NV counter only
/// counts by one (and wears NV), so a serial that jumps further is refused rather than
/// spinning the TPM; serials are expected to grow by one per published list.
pub const MAX_COUNTER_STEP: u64 = 1024;

/// What a backend is and how far it can be trusted, for `warden status` and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendInfo {
    /// `tpm`, `pkcs11` or `software`.
    pub kind: &'static str,
    /// Where: the TCTI, the module and token label, the directory.
    pub location: String,
    /// True for the software backend: never for production.
    pub development_only: bool,
}

impl std::fmt::Display for BackendInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.development_only {
            write!(
                f,
                "{} key store at {} -- DEVELOPMENT ONLY: keys are plain files, nothing is hardware-protected",
                self.kind, self.location
            )
        } else {
            write!(f, "{} key store at {}", self.kind, self.location)
        }
    }
}

/// What a backend can do, and with which protection. Serialized as is on keyd's socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[allow(clippy::struct_excessive_bools)]
pub struct Capabilities {
    /// Trust anchors can be installed and read back.
    pub anchors: bool,
    /// Once installed, anchors are locked by the hardware (not by file permissions).
    pub anchors_hardware_locked: bool,
    /// An ECDSA P-256 device key that signs.
    pub device_key: bool,
    /// The device key's private half cannot leave the hardware.
    pub device_key_non_exportable: bool,
    /// Data keys can be sealed and unsealed.
    pub seal: bool,
    /// Sealed data unseals only under the expected PCR values.
    pub seal_bound_to_pcrs: bool,
    /// Monotonic counters.
    pub counters: bool,
    /// The counter cannot be decreased, even by someone holding the credentials.
    pub counters_hardware_monotonic: bool,
    /// PCRs that can be extended and read, and quotes signed by an attestation key.
    #[serde(default)]
    pub pcrs: bool,
}

/// Key custody behind one interface. Implementations are thread-safe; each operation is
/// short but may take milliseconds (TPM, HSM): keep them off the per-request path except the
/// TLS handshake signature.
pub trait KeyStore: Send + Sync + std::fmt::Debug {
    /// What this backend is; says loudly when it is development-only.
    fn describe(&self) -> BackendInfo;

    /// What this backend supports.
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }

    /// Installs the anchors of `role` (opaque bytes, typically PEM) and locks them. A role's
    /// anchors are installed once: a second call is refused with
    /// [`KeyStoreError::AnchorsLocked`], whatever the bytes.
    fn install_anchors(&self, role: Role, anchors: &[u8]) -> Result<(), KeyStoreError> {
        let _ = (role, anchors);
        Err(self.not_supported("install_anchors"))
    }

    /// The anchors of `role`, or `None` when none were installed.
    fn anchors(&self, role: Role) -> Result<Option<Vec<u8>>, KeyStoreError> {
        let _ = role;
        Err(self.not_supported("anchors"))
    }

    /// Creates the device key if it does not exist yet; returns its public key.
    fn ensure_device_key(&self) -> Result<p256::PublicKey, KeyStoreError> {
        Err(self.not_supported("ensure_device_key"))
    }

    /// The device key's public key; [`KeyStoreError::NotProvisioned`] when there is none.
    fn device_public_key(&self) -> Result<p256::PublicKey, KeyStoreError> {
        Err(self.not_supported("device_public_key"))
    }

    /// Signs `message` with the device key: ECDSA P-256 over SHA-256(`message`), the hash
    /// taken on the host. The signature verifies with `p256`.
    fn sign(&self, message: &[u8]) -> Result<p256::ecdsa::Signature, KeyStoreError> {
        let _ = message;
        Err(self.not_supported("sign"))
    }

    /// Seals `secret` (at most [`MAX_SEALED_BYTES`]); the blob is safe to store anywhere.
    fn seal(&self, secret: &[u8]) -> Result<Vec<u8>, KeyStoreError> {
        let _ = secret;
        Err(self.not_supported("seal"))
    }

    /// Unseals a blob made by [`KeyStore::seal`] on this key store.
    fn unseal(&self, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyStoreError> {
        let _ = blob;
        Err(self.not_supported("unseal"))
    }

    /// The counter's value (0 before its first advance).
    fn counter(&self, counter: Counter) -> Result<u64, KeyStoreError> {
        let _ = counter;
        Err(self.not_supported("counter"))
    }

    /// Moves the counter forward to `to` and returns it. Equal is a no-op; lower is refused
    /// with [`KeyStoreError::CounterRollback`]; more than [`MAX_COUNTER_STEP`] ahead is refused.
    fn advance_counter(&self, counter: Counter, to: u64) -> Result<u64, KeyStoreError> {
        let _ = (counter, to);
        Err(self.not_supported("advance_counter"))
    }

    /// Extends PCR `pcr` with a SHA-256 `digest` (the application measurements of
    /// `warden_attest::boot::measure`). Only a TPM backend measures; the others answer
    /// [`KeyStoreError::NotSupported`], and a caller then records the event in its log only.
    fn extend_pcr(&self, pcr: u32, digest: [u8; 32]) -> Result<(), KeyStoreError> {
        let _ = (pcr, digest);
        Err(self.not_supported("extend_pcr"))
    }

    /// The SHA-256 bank value of PCR `pcr` (to tell a fresh boot, where the application PCR
    /// is zero, from a restart of the agent). Only a TPM backend has PCRs.
    fn read_pcr(&self, pcr: u32) -> Result<[u8; 32], KeyStoreError> {
        let _ = pcr;
        Err(self.not_supported("read_pcr"))
    }

    /// Quotes the SHA-256 `pcrs` over a verifier's `nonce` (1 to [`attestation::MAX_NONCE`]
    /// bytes) with the attestation key that provisioning created. The result is what
    /// `warden_attest::boot::quote::verify_quote` checks. Only a TPM backend quotes.
    fn quote(&self, nonce: &[u8], pcrs: &[u32]) -> Result<Quote, KeyStoreError> {
        let _ = (nonce, pcrs);
        Err(self.not_supported("quote"))
    }

    /// The device's identity for enrolling its attestation key. Only a TPM backend has one.
    fn attestation_identity(&self) -> Result<DeviceIdentity, KeyStoreError> {
        Err(self.not_supported("attestation_identity"))
    }

    /// Answers an enrolment challenge (made by `warden_attest::boot::credential`) with the
    /// TPM. Only a TPM backend answers.
    fn activate_credential(&self, challenge: &Challenge) -> Result<Vec<u8>, KeyStoreError> {
        let _ = challenge;
        Err(self.not_supported("activate_credential"))
    }

    /// The error of an operation this backend does not support.
    fn not_supported(&self, operation: &'static str) -> KeyStoreError {
        KeyStoreError::NotSupported {
            backend: self.describe().kind,
            operation,
        }
    }
}

/// The most bytes [`KeyStore::seal`] accepts: a data key, not a payload (a TPM sealed object
/// holds at most 128 bytes).
pub const MAX_SEALED_BYTES: usize = 128;

#[cfg(test)]
mod tests {
    use super::*;

    /// A backend that implements nothing but `describe`.
    #[derive(Debug)]
    struct Bare;

    impl KeyStore for Bare {
        fn describe(&self) -> BackendInfo {
            BackendInfo {
                kind: "bare",
                location: "nowhere".to_owned(),
                development_only: false,
            }
        }
    }

    #[test]
    fn every_operation_defaults_to_not_supported() {
        let b = Bare;
        assert_eq!(b.capabilities(), Capabilities::default());
        let results = [
            b.install_anchors(Role::TenantCas, b"x").err(),
            b.anchors(Role::TenantCas).err(),
            b.ensure_device_key().err(),
            b.device_public_key().err(),
            b.sign(b"m").err(),
            b.seal(b"k").err(),
            b.unseal(b"k").err(),
            b.counter(Counter::RevocationSerial).err(),
            b.advance_counter(Counter::RevocationSerial, 1).err(),
            b.extend_pcr(23, [0u8; 32]).err(),
            b.read_pcr(23).err(),
            b.quote(b"nonce", &[23]).err(),
        ];
        for r in results {
            assert!(
                matches!(
                    r,
                    Some(KeyStoreError::NotSupported {
                        backend: "bare",
                        ..
                    })
                ),
                "{r:?}"
            );
        }
    }
}
