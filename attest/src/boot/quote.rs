//! Quotes: the TPM signs the selected SHA-256 PCRs and a verifier's nonce with a restricted
//! attestation key (AK); anyone with the AK's public key verifies the quote without a TPM.
//!
//! The AK is a restricted ECDSA P-256 signing key (fixedTPM), created as an owner-hierarchy
//! primary and made persistent at [`AK_HANDLE`]. A verifier enrols it by credential
//! activation against the TPM's endorsement key ([`super::credential`]); checking the EK
//! itself against the manufacturer's EK certificate is the verifier's part and not built
//! yet.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use p256::ecdsa::signature::Verifier as _;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use tss_esapi::structures::{Data, SignatureScheme};
use tss_esapi::traits::Marshall as _;

use super::BootError;
use crate::keystore::KeyStoreError;
use crate::keystore::tpm::{
    attestation_key_template, close, ecc_public, ensure_persistent_key, persistent_key, pw,
};
use crate::tpm::{Tpm, TpmError, pcr_selection, read_pcrs};

/// Persistent handle of the attestation key.
pub const AK_HANDLE: u32 = 0x8101_5703;
/// The longest nonce a quote carries (TPM2B_DATA).
pub const MAX_NONCE: usize = 64;

const TPM_GENERATED_VALUE: u32 = 0xff54_4347;
const TPM_ST_ATTEST_QUOTE: u16 = 0x8018;
const TPM_ALG_SHA256: u16 = 0x000b;

/// A quote as produced on the device and carried to a verifier (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quote {
    /// The signed `TPMS_ATTEST` structure, base64.
    pub attest: String,
    /// The AK's ECDSA signature over it (SHA-256), DER, base64.
    pub signature: String,
    /// The quoted SHA-256 PCR values, hex, read right after quoting. The verifier recomputes
    /// their digest and compares it with the signed one.
    pub pcrs: BTreeMap<u32, String>,
}

/// What a successfully verified quote attests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedQuote {
    /// The quoted PCRs.
    pub pcrs: BTreeMap<u32, [u8; 32]>,
    /// The TPM's reset count (boots since the TPM was cleared), from the clock info.
    pub reset_count: u32,
}

/// Creates the attestation key if absent; returns its public key (to enrol with a verifier).
pub fn ensure_attestation_key(tpm: &Tpm) -> Result<p256::PublicKey, BootError> {
    Ok(tpm.run(|ctx| {
        let ak = ensure_persistent_key(ctx, AK_HANDLE, attestation_key_template()?)?;
        let public = ecc_public(ctx, ak);
        close(ctx, ak);
        public
    })??)
}

/// Quotes the SHA-256 `pcrs` over `nonce` (at most [`MAX_NONCE`] bytes).
pub fn quote(tpm: &Tpm, nonce: &[u8], pcrs: &[u32]) -> Result<Quote, BootError> {
    if nonce.is_empty() || nonce.len() > MAX_NONCE {
        return Err(BootError::QuoteRefused {
            detail: format!("a nonce holds 1 to {MAX_NONCE} bytes, not {}", nonce.len()),
        });
    }
    if pcrs.is_empty() {
        return Err(BootError::QuoteRefused {
            detail: "a quote selects at least one PCR".to_owned(),
        });
    }
    let mut pcrs = pcrs.to_vec();
    pcrs.sort_unstable();
    pcrs.dedup();
    let selection = pcr_selection(&pcrs)?;
    let nonce = Data::try_from(nonce.to_vec()).map_err(|e| TpmError::command("Quote", e))?;
    let (attest, signature, values) = tpm.run(move |ctx| {
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
        let sig = crate::keystore::p256_sig_from_rs(
            sig.signature_r().value(),
            sig.signature_s().value(),
        )?;
        let values = read_pcrs(ctx, &pcrs).map_err(|e| KeyStoreError::tpm("PCR_Read", e))?;
        Ok((attest, sig, values))
    })??;
    Ok(Quote {
        attest: STANDARD.encode(attest),
        signature: STANDARD.encode(signature.to_der().as_bytes()),
        pcrs: values
            .into_iter()
            .map(|(p, v)| (p, hex::encode(v)))
            .collect(),
    })
}

fn refused(detail: impl Into<String>) -> BootError {
    BootError::QuoteRefused {
        detail: detail.into(),
    }
}

struct Be<'a>(&'a [u8]);

impl<'a> Be<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], BootError> {
        if self.0.len() < n {
            return Err(refused("truncated TPMS_ATTEST"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, BootError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, BootError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, BootError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn tpm2b(&mut self) -> Result<&'a [u8], BootError> {
        let n = usize::from(self.u16()?);
        self.take(n)
    }
}

/// Verifies a quote off the TPM: the AK's signature over the attest structure, its type, the
/// nonce, the PCR selection and digest against the carried values, and every PCR of `golden`
/// (which must all be quoted) against its expected value.
pub fn verify_quote(
    quote: &Quote,
    ak: &p256::PublicKey,
    nonce: &[u8],
    golden: &BTreeMap<u32, [u8; 32]>,
) -> Result<VerifiedQuote, BootError> {
    let attest = STANDARD
        .decode(&quote.attest)
        .map_err(|e| refused(format!("attest is not base64: {e}")))?;
    let sig = STANDARD
        .decode(&quote.signature)
        .map_err(|e| refused(format!("signature is not base64: {e}")))?;
    let sig = p256::ecdsa::DerSignature::try_from(sig.as_slice())
        .map_err(|e| refused(format!("signature is not DER ECDSA: {e}")))?;
    p256::ecdsa::VerifyingKey::from(ak)
        .verify(&attest, &sig)
        .map_err(|_| refused("the signature does not verify with the attestation key"))?;

    // Signed: now parse TPMS_ATTEST.
    let mut r = Be(&attest);
    if r.u32()? != TPM_GENERATED_VALUE {
        return Err(refused("not generated by a TPM (magic)"));
    }
    if r.u16()? != TPM_ST_ATTEST_QUOTE {
        return Err(refused("not a quote (attestation type)"));
    }
    let _qualified_signer = r.tpm2b()?;
    let extra = r.tpm2b()?;
    if extra != nonce {
        return Err(refused("the nonce differs (a replayed or foreign quote)"));
    }
    let _clock = r.take(8)?;
    let reset_count = r.u32()?;
    let _restart_count = r.u32()?;
    let _safe = r.u8()?;
    let _firmware = r.take(8)?;
    let count = r.u32()?;
    if count != 1 {
        return Err(refused(format!(
            "{count} PCR banks quoted (expected SHA-256 only)"
        )));
    }
    if r.u16()? != TPM_ALG_SHA256 {
        return Err(refused("the quoted bank is not SHA-256"));
    }
    let size = usize::from(r.u8()?);
    let bitmap = r.take(size)?;
    let mut selected = Vec::new();
    for (i, byte) in bitmap.iter().enumerate() {
        for bit in 0..8 {
            if byte & (1 << bit) != 0 {
                selected.push((i * 8 + bit) as u32);
            }
        }
    }
    let signed_digest = r.tpm2b()?;
    if !r.0.is_empty() {
        return Err(refused("trailing bytes after the quote"));
    }

    let mut values = BTreeMap::new();
    for (pcr, v) in &quote.pcrs {
        let bytes: [u8; 32] = hex::decode(v)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| refused(format!("PCR {pcr} value is not 32 bytes of hex")))?;
        values.insert(*pcr, bytes);
    }
    if values.keys().copied().collect::<Vec<_>>() != selected {
        return Err(refused(format!(
            "the signed selection is PCRs {selected:?}, the carried values are for {:?}",
            values.keys().collect::<Vec<_>>()
        )));
    }
    let mut h = sha2::Sha256::new();
    for v in values.values() {
        h.update(v);
    }
    let digest: [u8; 32] = h.finalize().into();
    if digest[..] != *signed_digest {
        return Err(refused(
            "the carried PCR values do not match the signed PCR digest",
        ));
    }
    for (pcr, want) in golden {
        let got = values
            .get(pcr)
            .ok_or_else(|| refused(format!("golden PCR {pcr} was not quoted")))?;
        if got != want {
            return Err(BootError::PcrMismatch {
                pcr: *pcr,
                expected: hex::encode(want),
                actual: hex::encode(got),
            });
        }
    }
    Ok(VerifiedQuote {
        pcrs: values,
        reset_count,
    })
}
