//! The TPM 2.0 key store (`tss-esapi` 7.7 over Debian's tss2 3.2).
//!
//! - **Device key**: an ECDSA P-256 signing key (fixedTPM, fixedParent, sensitiveDataOrigin)
//!   created in the owner hierarchy and made persistent at [`DEVICE_KEY_HANDLE`]. Its private
//!   half never leaves the TPM; the message is hashed on the host and the TPM signs the digest.
//! - **Anchors**: one NV index per role at [`super::nv::ANCHOR_NV_BASE`] + role, *write-once*:
//!   its only write authorization is the policy `PolicyNvWritten(NO)` (with
//!   `TPMA_NV_WRITEALL`), so the single write that installs the anchors also locks them; the
//!   owner can read but not write (no `OWNERWRITE`). On read the index's attributes and policy
//!   are checked again, so an index redefined with looser attributes is refused. (tss-esapi
//!   7.7 has no `NV_WriteLock`; this needs none.) Deleting the index takes owner
//!   authorization: provisioning must set an owner password (`tpm2_changeauth -c o`) on
//!   production devices.
//! - **Seal**: a keyed-hash sealed object under a persistent ECC storage key
//!   ([`super::seal::SRK_HANDLE`]) whose only authorization is `PolicyPCR` over the configured
//!   SHA-256 PCRs at sealing time; unsealing runs the policy again, so it fails once any of those
//!   PCRs moves.
//! - **Counters**: an NV counter index per [`Counter`] at [`super::nv::COUNTER_NV_BASE`]; a TPM
//!   counter starts at an arbitrary value (the highest any counter reached), so its first
//!   value is kept in a write-once index at [`super::nv::COUNTER_BASELINE_NV_BASE`] and values
//!   are reported from 0.

use sha2::Digest as _;
use tss_esapi::Context;
use tss_esapi::interface_types::resource_handles::Provision;
use warden_keystore::attestation::{Challenge, DeviceIdentity, Quote};
use warden_keystore::backend::check_seal_size;
use warden_keystore::config::TpmConfig;
use warden_keystore::{BackendInfo, Capabilities, Counter, KeyStore, KeyStoreError, Role};
use zeroize::Zeroizing;

use super::nv::{
    ANCHOR_NV_BASE, advance, counter_value, max_nv_write, nv_lookup, nv_read_once, nv_write_once,
};
use super::objects::{
    close, ecc_public, ecc_signing_template, ensure_persistent_key, persistent_key, pw, sign_digest,
};
use super::{Tpm, attestation, credential, pcr_selection, seal, tpm_err};

/// Persistent handle of the device key.
pub const DEVICE_KEY_HANDLE: u32 = 0x8101_5701;

/// A TPM 2.0.
#[derive(Debug, Clone)]
pub struct TpmKeyStore {
    tpm: Tpm,
    seal_pcrs: Vec<u32>,
}

impl TpmKeyStore {
    /// Opens the TPM named in `config`.
    pub fn open(config: &TpmConfig) -> Result<Self, KeyStoreError> {
        let tpm = Tpm::open(&config.tcti).map_err(|e| KeyStoreError::Config {
            detail: e.to_string(),
        })?;
        Self::with_tpm(tpm, config.seal_pcrs.clone())
    }

    /// A key store on an already open TPM (shared with measured boot).
    pub fn with_tpm(tpm: Tpm, seal_pcrs: Vec<u32>) -> Result<Self, KeyStoreError> {
        if seal_pcrs.is_empty() {
            return Err(KeyStoreError::Config {
                detail: "tpm.seal_pcrs is empty: a sealed key would not be bound to the boot state"
                    .to_owned(),
            });
        }
        pcr_selection(&seal_pcrs).map_err(|e| KeyStoreError::Config {
            detail: e.to_string(),
        })?;
        Ok(Self { tpm, seal_pcrs })
    }

    /// The shared TPM handle.
    pub fn tpm(&self) -> &Tpm {
        &self.tpm
    }

    fn run<T, F>(&self, f: F) -> Result<T, KeyStoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Context) -> Result<T, KeyStoreError> + Send + 'static,
    {
        self.tpm.run(f).map_err(tpm_err)?
    }
}

impl KeyStore for TpmKeyStore {
    fn extend_pcr(&self, pcr: u32, digest: [u8; 32]) -> Result<(), KeyStoreError> {
        self.tpm.extend_pcr(pcr, digest).map_err(tpm_err)
    }

    fn read_pcr(&self, pcr: u32) -> Result<[u8; 32], KeyStoreError> {
        let values = self.tpm.read_pcrs(&[pcr]).map_err(tpm_err)?;
        values
            .into_iter()
            .find(|(p, _)| *p == pcr)
            .map(|(_, v)| v)
            .ok_or_else(|| KeyStoreError::Tpm {
                operation: "PCR_Read",
                detail: format!("PCR {pcr} was not returned"),
            })
    }

    fn quote(&self, nonce: &[u8], pcrs: &[u32]) -> Result<Quote, KeyStoreError> {
        attestation::quote(&self.tpm, nonce, pcrs)
    }

    fn attestation_identity(&self) -> Result<DeviceIdentity, KeyStoreError> {
        credential::device_identity(&self.tpm)
    }

    fn activate_credential(&self, challenge: &Challenge) -> Result<Vec<u8>, KeyStoreError> {
        credential::activate_credential(&self.tpm, challenge)
    }

    fn describe(&self) -> BackendInfo {
        BackendInfo {
            kind: "tpm",
            location: self.tpm.tcti().to_owned(),
            development_only: false,
        }
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            anchors: true,
            anchors_hardware_locked: true,
            device_key: true,
            device_key_non_exportable: true,
            seal: true,
            seal_bound_to_pcrs: true,
            counters: true,
            counters_hardware_monotonic: true,
            pcrs: true,
        }
    }

    fn install_anchors(&self, role: Role, anchors: &[u8]) -> Result<(), KeyStoreError> {
        if anchors.is_empty() {
            return Err(KeyStoreError::InvalidInput {
                detail: format!("empty {role} anchors"),
            });
        }
        let data = anchors.to_vec();
        self.run(move |ctx| {
            let limit = max_nv_write(ctx);
            if data.len() > limit {
                return Err(KeyStoreError::AnchorsTooLarge {
                    role,
                    size: data.len(),
                    limit,
                });
            }
            let index = ANCHOR_NV_BASE + role.index();
            if let Some((handle, public)) = nv_lookup(ctx, index)? {
                if public.attributes().written() {
                    close(ctx, handle);
                    return Err(KeyStoreError::AnchorsLocked { role });
                }
                // Defined but never written (an interrupted install): start again.
                pw(ctx, |c| c.nv_undefine_space(Provision::Owner, handle))
                    .map_err(|e| KeyStoreError::tpm("NV_UndefineSpace", e))?;
            }
            nv_write_once(ctx, index, &data)
        })
    }

    fn anchors(&self, role: Role) -> Result<Option<Vec<u8>>, KeyStoreError> {
        self.run(move |ctx| nv_read_once(ctx, ANCHOR_NV_BASE + role.index()))
    }

    fn ensure_device_key(&self) -> Result<p256::PublicKey, KeyStoreError> {
        self.run(|ctx| {
            let key = ensure_persistent_key(ctx, DEVICE_KEY_HANDLE, ecc_signing_template(false)?)?;
            let public = ecc_public(ctx, key);
            close(ctx, key);
            public
        })
    }

    fn device_public_key(&self) -> Result<p256::PublicKey, KeyStoreError> {
        self.run(|ctx| {
            let key = persistent_key(ctx, DEVICE_KEY_HANDLE)?
                .ok_or(KeyStoreError::NotProvisioned { what: "device key" })?;
            let public = ecc_public(ctx, key);
            close(ctx, key);
            public
        })
    }

    fn sign(&self, message: &[u8]) -> Result<p256::ecdsa::Signature, KeyStoreError> {
        let digest = sha2::Sha256::digest(message).to_vec();
        self.run(move |ctx| {
            let key = persistent_key(ctx, DEVICE_KEY_HANDLE)?
                .ok_or(KeyStoreError::NotProvisioned { what: "device key" })?;
            let sig = sign_digest(ctx, key, &digest);
            close(ctx, key);
            sig
        })
    }

    fn seal(&self, secret: &[u8]) -> Result<Vec<u8>, KeyStoreError> {
        check_seal_size(secret)?;
        let secret = Zeroizing::new(secret.to_vec());
        let pcrs = self.seal_pcrs.clone();
        self.run(move |ctx| seal::seal(ctx, &pcrs, &secret))
    }

    fn unseal(&self, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyStoreError> {
        let blob = blob.to_vec();
        self.run(move |ctx| seal::unseal(ctx, &blob))
    }

    fn counter(&self, counter: Counter) -> Result<u64, KeyStoreError> {
        self.run(move |ctx| counter_value(ctx, counter))
    }

    fn advance_counter(&self, counter: Counter, to: u64) -> Result<u64, KeyStoreError> {
        self.run(move |ctx| advance(ctx, counter, to))
    }
}
