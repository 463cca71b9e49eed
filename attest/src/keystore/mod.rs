//! Key custody: one trait, [`KeyStore`], with a backend per hardware family, chosen by config.
//!
//! - [`tpm::TpmKeyStore`]: a TPM 2.0 through `tss-esapi` (a TCTI string: `device:/dev/tpmrm0`,
//!   `swtpm:host=127.0.0.1,port=2321`, …).
//! - [`pkcs11::Pkcs11KeyStore`]: a PKCS#11 token through `cryptoki` (module path, token label,
//!   the user PIN read from a file or a systemd credential, never from config or a URI).
//! - [`software::SoftwareKeyStore`]: files in a directory. **Development only**: its
//!   [`KeyStore::describe`] says so, and so must every status line built on it.
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
//!   ([`crate::boot::measure`]) and **quotes** over a verifier's nonce with the attestation key
//!   ([`crate::boot::quote`]), so that a key service holding the TPM can serve them too.
//!
//! As in Parsec's providers, every operation defaults to [`KeyStoreError::NotSupported`] and each
//! backend reports its [`Capabilities`].

mod error;
pub mod pkcs11;
pub mod software;
pub mod tls;
pub mod tpm;

use std::path::PathBuf;
use std::sync::Arc;

pub use error::KeyStoreError;
use zeroize::Zeroizing;

use crate::boot::quote::Quote;

/// A role whose public trust anchors the key store holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Keys or roots that may sign model bundles (OMS).
    ModelSigners,
    /// The registry's release authority: signs release statements.
    ReleaseAuthority,
    /// The fleet authority: pushes bundles, signs revocation lists and policy sets.
    FleetAuthority,
    /// Certificate authorities of the tenants' client certificates (mTLS).
    TenantCas,
}

impl Role {
    /// Every role, in a fixed order.
    pub const ALL: [Role; 4] = [
        Role::ModelSigners,
        Role::ReleaseAuthority,
        Role::FleetAuthority,
        Role::TenantCas,
    ];

    /// A stable short name (file names, token labels, messages).
    pub fn name(self) -> &'static str {
        match self {
            Role::ModelSigners => "model-signers",
            Role::ReleaseAuthority => "release-authority",
            Role::FleetAuthority => "fleet-authority",
            Role::TenantCas => "tenant-cas",
        }
    }

    pub(crate) fn index(self) -> u32 {
        match self {
            Role::ModelSigners => 0,
            Role::ReleaseAuthority => 1,
            Role::FleetAuthority => 2,
            Role::TenantCas => 3,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A monotonic counter held by the key store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Counter {
    /// The highest revocation-list serial accepted.
    RevocationSerial,
    /// The highest policy-set serial accepted.
    PolicySetSerial,
}

impl Counter {
    /// A stable short name.
    pub fn name(self) -> &'static str {
        match self {
            Counter::RevocationSerial => "revocation-serial",
            Counter::PolicySetSerial => "policy-set-serial",
        }
    }

    pub(crate) fn index(self) -> u32 {
        match self {
            Counter::RevocationSerial => 0,
            Counter::PolicySetSerial => 1,
        }
    }
}

impl std::fmt::Display for Counter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

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
    /// [`crate::boot::measure`]). Only a TPM backend measures; the others answer
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

    /// Quotes the SHA-256 `pcrs` over a verifier's `nonce` (1 to
    /// [`crate::boot::quote::MAX_NONCE`] bytes) with the attestation key that provisioning
    /// created ([`crate::boot::quote::ensure_attestation_key`]). The result is what
    /// [`crate::boot::quote::verify_quote`] checks. Only a TPM backend quotes.
    fn quote(&self, nonce: &[u8], pcrs: &[u32]) -> Result<Quote, KeyStoreError> {
        let _ = (nonce, pcrs);
        Err(self.not_supported("quote"))
    }

    /// The device's identity for enrolling its attestation key
    /// ([`crate::boot::credential::device_identity`]). Only a TPM backend has one.
    fn attestation_identity(
        &self,
    ) -> Result<crate::boot::credential::DeviceIdentity, KeyStoreError> {
        Err(self.not_supported("attestation_identity"))
    }

    /// Answers an enrolment challenge with the TPM
    /// ([`crate::boot::credential::activate_credential`]). Only a TPM backend answers.
    fn activate_credential(
        &self,
        challenge: &crate::boot::credential::Challenge,
    ) -> Result<Vec<u8>, KeyStoreError> {
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

/// The configuration of a key store backend, as in the agent's TOML:
///
/// ```toml
/// [keystore]
/// backend = "tpm"                 # or "pkcs11", or "software-development-only"
/// tcti = "device:/dev/tpmrm0"
/// seal_pcrs = [0, 2, 4, 7]
/// ```
///
/// The software backend's name says what it is: choosing it is an explicit opt-in.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(tag = "backend")]
pub enum BackendConfig {
    /// A TPM 2.0.
    #[serde(rename = "tpm")]
    Tpm(tpm::TpmConfig),
    /// A PKCS#11 token.
    #[serde(rename = "pkcs11")]
    Pkcs11(pkcs11::Pkcs11Config),
    /// Files in `dir`: development only.
    #[serde(rename = "software-development-only")]
    Software(SoftwareConfig),
}

/// Configuration of the development-only software backend.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct SoftwareConfig {
    /// The directory of the key files (created 0700 if absent).
    pub dir: PathBuf,
}

/// Opens the configured backend.
pub fn open(config: &BackendConfig) -> Result<Arc<dyn KeyStore>, KeyStoreError> {
    Ok(match config {
        BackendConfig::Tpm(c) => Arc::new(tpm::TpmKeyStore::open(c)?),
        BackendConfig::Pkcs11(c) => Arc::new(pkcs11::Pkcs11KeyStore::open(c)?),
        BackendConfig::Software(c) => Arc::new(software::SoftwareKeyStore::open(&c.dir)?),
    })
}

/// Checks a counter move common to every backend; returns how many steps to take.
pub(crate) fn counter_step(counter: Counter, current: u64, to: u64) -> Result<u64, KeyStoreError> {
    if to < current {
        return Err(KeyStoreError::CounterRollback {
            counter,
            current,
            requested: to,
        });
    }
    let step = to - current;
    if step > MAX_COUNTER_STEP {
        return Err(KeyStoreError::CounterStepTooLarge {
            counter,
            current,
            requested: to,
            limit: MAX_COUNTER_STEP,
        });
    }
    Ok(step)
}

/// Checks a secret's size before sealing.
pub(crate) fn check_seal_size(secret: &[u8]) -> Result<(), KeyStoreError> {
    if secret.is_empty() || secret.len() > MAX_SEALED_BYTES {
        return Err(KeyStoreError::InvalidInput {
            detail: format!(
                "a sealed secret must hold 1 to {MAX_SEALED_BYTES} bytes, not {}",
                secret.len()
            ),
        });
    }
    Ok(())
}

/// Header of sealed blobs: magic, version, backend tag; a blob from another backend is refused
/// by name instead of failing to decrypt.
pub(crate) const SEAL_MAGIC: &[u8; 4] = b"WSL1";

pub(crate) fn seal_header(backend_tag: u8) -> Vec<u8> {
    let mut v = SEAL_MAGIC.to_vec();
    v.push(backend_tag);
    v
}

/// Splits a sealed blob's header off; refuses blobs of another backend.
pub(crate) fn seal_body<'a>(
    blob: &'a [u8],
    backend_tag: u8,
    backend: &'static str,
) -> Result<&'a [u8], KeyStoreError> {
    let Some(rest) = blob.strip_prefix(SEAL_MAGIC.as_slice()) else {
        return Err(KeyStoreError::MalformedSealedBlob {
            detail: "not a Warden sealed blob".to_owned(),
        });
    };
    match rest.split_first() {
        Some((tag, body)) if *tag == backend_tag => Ok(body),
        Some((tag, _)) => Err(KeyStoreError::MalformedSealedBlob {
            detail: format!(
                "sealed by another backend (tag {tag}), not by this {backend} key store"
            ),
        }),
        None => Err(KeyStoreError::MalformedSealedBlob {
            detail: "truncated".to_owned(),
        }),
    }
}

/// A P-256 public key from its uncompressed coordinates.
pub(crate) fn p256_from_xy(x: &[u8], y: &[u8]) -> Result<p256::PublicKey, KeyStoreError> {
    if x.len() > 32 || y.len() > 32 {
        return Err(KeyStoreError::InvalidInput {
            detail: "EC point coordinate longer than 32 bytes".to_owned(),
        });
    }
    let mut sec1 = vec![0x04];
    sec1.extend(std::iter::repeat_n(0, 32 - x.len()));
    sec1.extend_from_slice(x);
    sec1.extend(std::iter::repeat_n(0, 32 - y.len()));
    sec1.extend_from_slice(y);
    p256::PublicKey::from_sec1_bytes(&sec1).map_err(|e| KeyStoreError::InvalidInput {
        detail: format!("device public key is not a P-256 point: {e}"),
    })
}

/// A P-256 signature from its scalars, each possibly shorter than 32 bytes.
pub(crate) fn p256_sig_from_rs(
    r: &[u8],
    s: &[u8],
) -> Result<p256::ecdsa::Signature, KeyStoreError> {
    let pad = |v: &[u8]| -> Result<[u8; 32], KeyStoreError> {
        let v = match v.iter().position(|b| *b != 0) {
            Some(i) => &v[i..],
            None => &[][..],
        };
        if v.len() > 32 {
            return Err(KeyStoreError::InvalidInput {
                detail: "ECDSA scalar longer than 32 bytes".to_owned(),
            });
        }
        let mut out = [0u8; 32];
        out[32 - v.len()..].copy_from_slice(v);
        Ok(out)
    };
    p256::ecdsa::Signature::from_scalars(pad(r)?, pad(s)?).map_err(|e| {
        KeyStoreError::InvalidInput {
            detail: format!("ECDSA signature out of range: {e}"),
        }
    })
}

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

    #[test]
    fn signature_scalars_are_left_padded() {
        let key = p256::ecdsa::SigningKey::random(&mut rand_core::OsRng);
        let sig: p256::ecdsa::Signature = p256::ecdsa::signature::Signer::sign(&key, b"message");
        let (r, s) = sig.split_bytes();
        // A TPM may drop leading zero bytes, or add one.
        let trimmed: Vec<u8> = r.iter().copied().skip_while(|b| *b == 0).collect();
        let mut padded = vec![0u8];
        padded.extend_from_slice(&s);
        assert_eq!(p256_sig_from_rs(&trimmed, &padded).unwrap(), sig);
        assert!(p256_sig_from_rs(&[1u8; 33], &s).is_err());
    }

    #[test]
    fn config_names_each_backend_and_refuses_unknown_fields() {
        let tpm: BackendConfig =
            serde_json::from_str(r#"{"backend": "tpm", "tcti": "device:/dev/tpmrm0"}"#).unwrap();
        assert_eq!(
            tpm,
            BackendConfig::Tpm(tpm::TpmConfig {
                tcti: "device:/dev/tpmrm0".to_owned(),
                seal_pcrs: vec![0, 2, 4, 7],
            })
        );
        let p11: BackendConfig = serde_json::from_str(
            r#"{"backend": "pkcs11", "module": "/m.so", "token_label": "t", "pin_file": "/p"}"#,
        )
        .unwrap();
        assert!(matches!(p11, BackendConfig::Pkcs11(_)));
        // A PIN inline is an unknown field, refused.
        assert!(
            serde_json::from_str::<BackendConfig>(
                r#"{"backend": "pkcs11", "module": "/m.so", "token_label": "t", "pin_file": "/p", "pin": "1234"}"#
            )
            .is_err()
        );
        // The development backend is only chosen by its full name.
        assert!(
            serde_json::from_str::<BackendConfig>(r#"{"backend": "software", "dir": "/d"}"#)
                .is_err()
        );
        let dir = tempfile::tempdir().unwrap();
        let sw = open(&BackendConfig::Software(SoftwareConfig {
            dir: dir.path().to_path_buf(),
        }))
        .unwrap();
        assert!(sw.describe().development_only);
    }

    #[test]
    fn counter_steps_are_checked() {
        let c = Counter::RevocationSerial;
        assert_eq!(counter_step(c, 3, 3).unwrap(), 0);
        assert_eq!(counter_step(c, 3, 4).unwrap(), 1);
        assert!(matches!(
            counter_step(c, 3, 2),
            Err(KeyStoreError::CounterRollback { .. })
        ));
        assert!(matches!(
            counter_step(c, 0, MAX_COUNTER_STEP + 1),
            Err(KeyStoreError::CounterStepTooLarge { .. })
        ));
    }
}
