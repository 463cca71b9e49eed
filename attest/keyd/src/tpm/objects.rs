//! TPM objects every part of the key service uses: the key templates (device key, storage
//! key, attestation key), persistent keys found or created at their handles, policy sessions,
//! and the closing and flushing that keeps ESYS's handle table and the TPM's session slots
//! from filling up.

use tss_esapi::Context;
use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::constants::SessionType;
use tss_esapi::constants::tss::{TPM2_RH_NULL, TPM2_ST_HASHCHECK};
use tss_esapi::handles::{KeyHandle, ObjectHandle, PersistentTpmHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::dynamic_handles::Persistent;
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::{Hierarchy, Provision};
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    Digest, EccPoint, EccScheme, HashScheme, Public, PublicBuilder, PublicEccParametersBuilder,
    Signature, SignatureScheme, SymmetricDefinition, SymmetricDefinitionObject,
};
use tss_esapi::tss2_esys::TPMT_TK_HASHCHECK;

use warden_keystore::KeyStoreError;
use warden_keystore::backend::{p256_from_xy, p256_sig_from_rs};

use super::flush;

/// Runs `f` with the password session (empty authorization) as session 1.
pub(super) fn pw<T>(ctx: &mut Context, f: impl FnOnce(&mut Context) -> T) -> T {
    ctx.execute_with_session(Some(AuthSession::Password), f)
}

pub(super) fn ecc_signing_template(restricted: bool) -> Result<Public, KeyStoreError> {
    let attrs = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_sign_encrypt(true)
        .with_restricted(restricted)
        .build()
        .map_err(|e| KeyStoreError::tpm("building a key template", e))?;
    let params = PublicEccParametersBuilder::new()
        .with_ecc_scheme(EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256)))
        .with_curve(EccCurve::NistP256)
        .with_is_signing_key(true)
        .with_is_decryption_key(false)
        .with_restricted(restricted)
        .with_symmetric(SymmetricDefinitionObject::Null)
        .with_key_derivation_function_scheme(
            tss_esapi::structures::KeyDerivationFunctionScheme::Null,
        )
        .build()
        .map_err(|e| KeyStoreError::tpm("building a key template", e))?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attrs)
        .with_ecc_parameters(params)
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
        .map_err(|e| KeyStoreError::tpm("building a key template", e))
}

pub(super) fn srk_template() -> Result<Public, KeyStoreError> {
    let attrs = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_decrypt(true)
        .with_restricted(true)
        .build()
        .map_err(|e| KeyStoreError::tpm("building the storage key template", e))?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attrs)
        .with_ecc_parameters(
            PublicEccParametersBuilder::new_restricted_decryption_key(
                SymmetricDefinitionObject::AES_128_CFB,
                EccCurve::NistP256,
            )
            .build()
            .map_err(|e| KeyStoreError::tpm("building the storage key template", e))?,
        )
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
        .map_err(|e| KeyStoreError::tpm("building the storage key template", e))
}

/// Whether a persistent object or NV index exists at `handle`, asked without an error when it
/// does not (TR_FromTPMPublic on a missing handle logs TSS errors).
pub(super) fn handle_exists(ctx: &mut Context, handle: u32) -> Result<bool, KeyStoreError> {
    let (data, _) = ctx
        .execute_without_session(|c| {
            c.get_capability(tss_esapi::constants::CapabilityType::Handles, handle, 1)
        })
        .map_err(|e| KeyStoreError::tpm("GetCapability (handles)", e))?;
    Ok(match data {
        tss_esapi::structures::CapabilityData::Handles(list) => list
            .as_ref()
            .first()
            .is_some_and(|h| u32::from(*h) == handle),
        _ => false,
    })
}

/// The persistent object at `handle`, if any.
pub(super) fn persistent_key(
    ctx: &mut Context,
    handle: u32,
) -> Result<Option<KeyHandle>, KeyStoreError> {
    let tpm_handle =
        PersistentTpmHandle::new(handle).map_err(|e| KeyStoreError::tpm("persistent handle", e))?;
    if !handle_exists(ctx, handle)? {
        return Ok(None);
    }
    ctx.execute_without_session(|c| c.tr_from_tpm_public(TpmHandle::Persistent(tpm_handle)))
        .map(|h| Some(KeyHandle::from(h)))
        .map_err(|e| KeyStoreError::tpm("TR_FromTPMPublic", e))
}

/// The persistent object at `handle`, created from `template` as an owner primary if absent.
pub(super) fn ensure_persistent_key(
    ctx: &mut Context,
    handle: u32,
    template: Public,
) -> Result<KeyHandle, KeyStoreError> {
    if let Some(k) = persistent_key(ctx, handle)? {
        return Ok(k);
    }
    let tpm_handle =
        PersistentTpmHandle::new(handle).map_err(|e| KeyStoreError::tpm("persistent handle", e))?;
    let created = pw(ctx, |c| {
        c.create_primary(Hierarchy::Owner, template, None, None, None, None)
    })
    .map_err(|e| KeyStoreError::tpm("CreatePrimary", e))?;
    let persisted = pw(ctx, |c| {
        c.evict_control(
            Provision::Owner,
            ObjectHandle::from(created.key_handle),
            Persistent::Persistent(tpm_handle),
        )
    });
    flush(ctx, created.key_handle);
    persisted
        .map(KeyHandle::from)
        .map_err(|e| KeyStoreError::tpm("EvictControl", e))
}

/// The P-256 public key of a loaded or persistent key.
pub(super) fn ecc_public(
    ctx: &mut Context,
    key: KeyHandle,
) -> Result<p256::PublicKey, KeyStoreError> {
    let (public, _, _) = ctx
        .execute_without_session(|c| c.read_public(key))
        .map_err(|e| KeyStoreError::tpm("ReadPublic", e))?;
    match public {
        Public::Ecc { unique, .. } => p256_from_xy(unique.x().value(), unique.y().value()),
        _ => Err(KeyStoreError::InvalidInput {
            detail: "the key is not an ECC key".to_owned(),
        }),
    }
}

/// Signs a SHA-256 digest with an unrestricted ECDSA key.
pub(super) fn sign_digest(
    ctx: &mut Context,
    key: KeyHandle,
    digest: &[u8],
) -> Result<p256::ecdsa::Signature, KeyStoreError> {
    let digest = Digest::try_from(digest.to_vec()).map_err(|e| KeyStoreError::tpm("Sign", e))?;
    let validation = TPMT_TK_HASHCHECK {
        tag: TPM2_ST_HASHCHECK,
        hierarchy: TPM2_RH_NULL,
        digest: Default::default(),
    }
    .try_into()
    .map_err(|e| KeyStoreError::tpm("Sign", e))?;
    let sig = pw(ctx, |c| {
        c.sign(key, digest, SignatureScheme::Null, validation)
    })
    .map_err(|e| KeyStoreError::tpm("Sign", e))?;
    match sig {
        Signature::EcDsa(s) => p256_sig_from_rs(s.signature_r().value(), s.signature_s().value()),
        _ => Err(KeyStoreError::tpm(
            "Sign",
            "the TPM returned a non-ECDSA signature",
        )),
    }
}

/// Starts a policy (or trial) session; the caller must flush it.
pub(super) fn start_policy(ctx: &mut Context, trial: bool) -> Result<PolicySession, KeyStoreError> {
    let session = ctx
        .execute_without_session(|c| {
            c.start_auth_session(
                None,
                None,
                None,
                if trial {
                    SessionType::Trial
                } else {
                    SessionType::Policy
                },
                SymmetricDefinition::AES_128_CFB,
                HashingAlgorithm::Sha256,
            )
        })
        .map_err(|e| KeyStoreError::tpm("StartAuthSession", e))?
        .ok_or_else(|| KeyStoreError::tpm("StartAuthSession", "no session returned"))?;
    PolicySession::try_from(session).map_err(|e| KeyStoreError::tpm("StartAuthSession", e))
}

/// Releases the ESYS metadata of a handle obtained with TR_FromTPMPublic (persistent keys, NV
/// indices); the TPM object itself stays. Without this every operation would grow ESYS's
/// handle table (one per TLS handshake for the device key).
pub(super) fn close(ctx: &mut Context, handle: impl Into<ObjectHandle>) {
    let mut handle = handle.into();
    let _ = ctx.tr_close(&mut handle);
}

pub(super) fn flush_session(ctx: &mut Context, session: PolicySession) {
    let handle = tss_esapi::handles::SessionHandle::from(session);
    let _ = ctx.flush_context(ObjectHandle::from(handle));
}

/// Runs policy commands on a trial session and returns the digest.
pub(super) fn trial_digest(
    ctx: &mut Context,
    f: impl FnOnce(&mut Context, PolicySession) -> tss_esapi::Result<()>,
) -> Result<Digest, KeyStoreError> {
    let session = start_policy(ctx, true)?;
    let result = ctx
        .execute_without_session(|c| f(c, session).and_then(|()| c.policy_get_digest(session)))
        .map_err(|e| KeyStoreError::tpm("computing a policy digest", e));
    flush_session(ctx, session);
    result
}

/// The template of an attestation key: a restricted ECDSA P-256 signing key (for quotes).
pub(super) fn attestation_key_template() -> Result<Public, KeyStoreError> {
    ecc_signing_template(true)
}
