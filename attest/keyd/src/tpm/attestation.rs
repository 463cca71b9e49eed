//! The attestation key (AK) and quotes, on the device: the TPM signs the selected SHA-256 PCRs
//! and a verifier's nonce with a restricted ECDSA P-256 signing key (fixedTPM), created as an
//! owner-hierarchy primary and made persistent at [`AK_HANDLE`]. A verifier checks the quote
//! without a TPM (`warden_attest::boot::quote`) once it has enrolled the AK by credential
//! activation ([`super::credential`]).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use tss_esapi::structures::{Data, SignatureScheme};
use tss_esapi::traits::Marshall as _;
use warden_keystore::KeyStoreError;
use warden_keystore::attestation::{MAX_NONCE, Quote};
use warden_keystore::backend::p256_sig_from_rs;

use super::objects::{
    attestation_key_template, close, ecc_public, ensure_persistent_key, persistent_key, pw,
};
use super::{Tpm, pcr_selection, read_pcrs, tpm_err};

/// Persistent handle of the attestation key.
pub const AK_HANDLE: u32 = 0x8101_5703;

/// Creates the attestation key if absent; returns its public key (to enrol with a verifier).
pub fn ensure_attestation_key(tpm: &Tpm) -> Result<p256::PublicKey, KeyStoreError> {
    tpm.run(|ctx| {
        let ak = ensure_persistent_key(ctx, AK_HANDLE, attestation_key_template()?)?;
        let public = ecc_public(ctx, ak);
        close(ctx, ak);
        public
    })
    .map_err(tpm_err)?
}

/// Quotes the SHA-256 `pcrs` over `nonce` (1 to [`MAX_NONCE`] bytes).
pub fn quote(tpm: &Tpm, nonce: &[u8], pcrs: &[u32]) -> Result<Quote, KeyStoreError> {
    if nonce.is_empty() || nonce.len() > MAX_NONCE {
        return Err(KeyStoreError::InvalidInput {
            detail: format!("a nonce holds 1 to {MAX_NONCE} bytes, not {}", nonce.len()),
        });
    }
    if pcrs.is_empty() {
        return Err(KeyStoreError::InvalidInput {
            detail: "a quote selects at least one PCR".to_owned(),
        });
    }
    let mut pcrs = pcrs.to_vec();
    pcrs.sort_unstable();
    pcrs.dedup();
    let selection = pcr_selection(&pcrs).map_err(tpm_err)?;
    let nonce = Data::try_from(nonce.to_vec()).map_err(|e| KeyStoreError::tpm("Quote", e))?;
    let (attest, signature, values) = tpm
        .run(move |ctx| {
            let ak = persistent_key(ctx, AK_HANDLE)?.ok_or(KeyStoreError::NotProvisioned {
                what: "the attestation key",
            })?;
            let quoted = pw(ctx, |c| {
                c.quote(ak, nonce, SignatureScheme::Null, selection)
            });
            close(ctx, ak);
            let (attest, signature) = quoted.map_err(|e| KeyStoreError::tpm("Quote", e))?;
            let attest = attest
                .marshall()
                .map_err(|e| KeyStoreError::tpm("marshalling the quote", e))?;
            let tss_esapi::structures::Signature::EcDsa(sig) = signature else {
                return Err(KeyStoreError::tpm("Quote", "not an ECDSA signature"));
            };
            let sig = p256_sig_from_rs(sig.signature_r().value(), sig.signature_s().value())?;
            let values = read_pcrs(ctx, &pcrs).map_err(|e| KeyStoreError::tpm("PCR_Read", e))?;
            Ok((attest, sig, values))
        })
        .map_err(tpm_err)??;
    Ok(Quote {
        attest: STANDARD.encode(attest),
        signature: STANDARD.encode(signature.to_der().as_bytes()),
        pcrs: values
            .into_iter()
            .map(|(p, v)| (p, hex::encode(v)))
            .collect(),
    })
}
