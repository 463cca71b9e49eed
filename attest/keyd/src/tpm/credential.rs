//! The device's side of enrolling its attestation key (AK) by credential activation (TPM 2.0
//! Part 1, "Credential Protection"): the endorsement key (EK), the identity a verifier
//! enrols, and the answer to its challenge. The verifier's side (checking the EK and the AK's
//! public area, making the challenge) needs no TPM: `warden_attest::boot::credential`.
//!
//! The EK is the TCG default ECC P-256 EK (template L-2: restricted decryption key,
//! AES-128-CFB, SHA-256, policy `PolicySecret(TPM_RH_ENDORSEMENT)`), recreated from the
//! endorsement seed when needed and flushed after use. Activation succeeds only for the TPM
//! holding that EK and only for a loaded object with exactly the name the challenge was made
//! for: a returned secret proves the AK is that TPM's.

use tss_esapi::Context;
use tss_esapi::abstraction::AsymmetricAlgorithmSelection;
use tss_esapi::abstraction::ek::{create_ek_object_2, retrieve_ek_pubcert};
use tss_esapi::handles::{AuthHandle, KeyHandle, ObjectHandle};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{Digest, EncryptedSecret, IdObject, Nonce};
use tss_esapi::traits::Marshall as _;
use warden_keystore::KeyStoreError;
use warden_keystore::attestation::{Challenge, DeviceIdentity};

use super::attestation::AK_HANDLE;
use super::objects::{close, ecc_public, flush_session, persistent_key, start_policy};
use super::{Tpm, tpm_err};

/// Where the TCG EK Credential Profile puts the certificate of the default ECC P-256 EK.
pub const EK_CERTIFICATE_NV_INDEX: u32 = 0x01c0_000a;

/// The EK's public key (recreated from the endorsement seed; the same on every call for one
/// TPM).
pub fn endorsement_key(tpm: &Tpm) -> Result<p256::PublicKey, KeyStoreError> {
    tpm.run(|ctx| {
        let ek = create_ek(ctx)?;
        let public = ecc_public(ctx, ek);
        flush(ctx, ek);
        public
    })
    .map_err(tpm_err)?
}

/// The AK's TPM name (`nameAlg || H(TPMT_PUBLIC)`), which a challenge is bound to.
pub fn attestation_key_name(tpm: &Tpm) -> Result<Vec<u8>, KeyStoreError> {
    Ok(ak_public(tpm)?.1)
}

/// The AK's public area (`TPMT_PUBLIC`, marshalled) and its name, as the TPM reports them.
fn ak_public(tpm: &Tpm) -> Result<(Vec<u8>, Vec<u8>), KeyStoreError> {
    tpm.run(|ctx| {
        let ak = persistent_key(ctx, AK_HANDLE)?.ok_or(KeyStoreError::NotProvisioned {
            what: "the attestation key",
        })?;
        let read = ctx.execute_without_session(|c| c.read_public(ak));
        close(ctx, ak);
        let (public, name, _) = read.map_err(|e| KeyStoreError::tpm("ReadPublic", e))?;
        let area = public
            .marshall()
            .map_err(|e| KeyStoreError::tpm("marshalling the AK's public area", e))?;
        Ok((area, name.value().to_vec()))
    })
    .map_err(tpm_err)?
}

/// The device's identity for enrolment (the AK must exist: `warden-keyd provision --ak`).
pub fn device_identity(tpm: &Tpm) -> Result<DeviceIdentity, KeyStoreError> {
    let (ak_public_area, _) = ak_public(tpm)?;
    Ok(DeviceIdentity {
        endorsement_key: endorsement_key(tpm)?,
        ak_public_area,
        ek_certificate: ek_certificate(tpm)?,
    })
}

/// The EK certificate in NV, if the index exists. Any other failure is an error: a verifier
/// that needs the certificate must not be told there is none because a read failed.
fn ek_certificate(tpm: &Tpm) -> Result<Option<Vec<u8>>, KeyStoreError> {
    use tss_esapi::constants::response_code::Tss2ResponseCodeKind;
    tpm.run(|ctx| {
        match retrieve_ek_pubcert(ctx, AsymmetricAlgorithmSelection::Ecc(EccCurve::NistP256)) {
            Ok(der) => Ok(Some(der)),
            Err(tss_esapi::Error::Tss2Error(code))
                if code.kind() == Some(Tss2ResponseCodeKind::Handle) =>
            {
                Ok(None)
            }
            Err(e) => Err(KeyStoreError::tpm("reading the EK certificate", e)),
        }
    })
    .map_err(tpm_err)?
}

/// Recovers the secret of `challenge` with the EK, for the AK. Fails unless the challenge was
/// made for this TPM's EK and this AK's name.
pub fn activate_credential(tpm: &Tpm, challenge: &Challenge) -> Result<Vec<u8>, KeyStoreError> {
    let refused = |what: &str, e: tss_esapi::Error| KeyStoreError::InvalidInput {
        detail: format!("{what}: {e}"),
    };
    let blob = IdObject::try_from(challenge.credential_blob.clone())
        .map_err(|e| refused("credential blob", e))?;
    let seed = EncryptedSecret::try_from(challenge.encrypted_seed.clone())
        .map_err(|e| refused("encrypted seed", e))?;
    tpm.run(move |ctx| {
        let ak = persistent_key(ctx, AK_HANDLE)?.ok_or(KeyStoreError::NotProvisioned {
            what: "the attestation key",
        })?;
        let ek = match create_ek(ctx) {
            Ok(ek) => ek,
            Err(e) => {
                close(ctx, ak);
                return Err(e);
            }
        };
        // The EK's use is authorized by its policy: PolicySecret on the endorsement
        // hierarchy (whose authorization is empty on an appliance's TPM).
        let result = start_policy(ctx, false).and_then(|session| {
            let done = ctx
                .execute_with_session(Some(AuthSession::Password), |c| {
                    c.policy_secret(
                        session,
                        AuthHandle::Endorsement,
                        Nonce::default(),
                        Digest::default(),
                        Nonce::default(),
                        None,
                    )
                })
                .and_then(|_| {
                    ctx.execute_with_sessions(
                        (
                            Some(AuthSession::Password),
                            Some(AuthSession::from(session)),
                            None,
                        ),
                        |c| c.activate_credential(ak, ek, blob, seed),
                    )
                })
                .map_err(|e| KeyStoreError::tpm("ActivateCredential", e));
            flush_session(ctx, session);
            done
        });
        flush(ctx, ek);
        close(ctx, ak);
        result.map(|secret| secret.value().to_vec())
    })
    .map_err(tpm_err)?
}

fn create_ek(ctx: &mut Context) -> Result<KeyHandle, KeyStoreError> {
    create_ek_object_2(
        ctx,
        AsymmetricAlgorithmSelection::Ecc(EccCurve::NistP256),
        None,
    )
    .map_err(|e| KeyStoreError::tpm("CreatePrimary (endorsement key)", e))
}

fn flush(ctx: &mut Context, key: KeyHandle) {
    let _ = ctx.flush_context(ObjectHandle::from(key));
}
