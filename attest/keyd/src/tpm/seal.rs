//! Sealing a data key to the boot state: a keyed-hash object under the storage key whose only
//! authorization is `PolicyPCR` over the configured PCRs, so it unseals only while those PCRs
//! hold the values they held when it was sealed.

use tss_esapi::Context;
use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::handles::ObjectHandle;
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{
    Digest, KeyedHashScheme, Private, Public, PublicBuilder, PublicKeyedHashParameters,
    SensitiveData,
};
use tss_esapi::traits::{Marshall as _, UnMarshall as _};
use warden_keystore::KeyStoreError;
use warden_keystore::backend::{seal_body, seal_header};
use zeroize::Zeroizing;

use super::objects::{
    close, ensure_persistent_key, flush_session, persistent_key, pw, srk_template, start_policy,
    trial_digest,
};
use super::{flush, pcr_selection};

/// Persistent handle of the storage key that parents sealed objects.
pub const SRK_HANDLE: u32 = 0x8101_5702;
/// The tag of this backend's sealed blobs.
const SEAL_TAG: u8 = 1;

fn put_u16_prefixed(out: &mut Vec<u8>, data: &[u8]) -> Result<(), KeyStoreError> {
    let len = u16::try_from(data.len()).map_err(|_| KeyStoreError::InvalidInput {
        detail: "sealed object part too large".to_owned(),
    })?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(data);
    Ok(())
}

fn take_u16_prefixed<'a>(input: &mut &'a [u8]) -> Result<&'a [u8], KeyStoreError> {
    let bad = || KeyStoreError::MalformedSealedBlob {
        detail: "truncated TPM sealed object".to_owned(),
    };
    let (len, rest) = input.split_first_chunk::<2>().ok_or_else(bad)?;
    let len = usize::from(u16::from_be_bytes(*len));
    if rest.len() < len {
        return Err(bad());
    }
    let (data, rest) = rest.split_at(len);
    *input = rest;
    Ok(data)
}

pub(super) fn seal(
    ctx: &mut Context,
    pcrs: &[u32],
    secret: &[u8],
) -> Result<Vec<u8>, KeyStoreError> {
    let selection = pcr_selection(pcrs).map_err(|e| KeyStoreError::Config {
        detail: e.to_string(),
    })?;
    let srk = ensure_persistent_key(ctx, SRK_HANDLE, srk_template()?)?;
    let sel = selection.clone();
    let policy = trial_digest(ctx, move |c, s| c.policy_pcr(s, Digest::default(), sel))?;
    let attrs = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_no_da(true)
        .build()
        .map_err(|e| KeyStoreError::tpm("sealed object attributes", e))?;
    let public = PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::KeyedHash)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attrs)
        .with_auth_policy(policy)
        .with_keyed_hash_parameters(PublicKeyedHashParameters::new(KeyedHashScheme::Null))
        .with_keyed_hash_unique_identifier(Digest::default())
        .build()
        .map_err(|e| KeyStoreError::tpm("sealed object template", e))?;
    let data =
        SensitiveData::try_from(secret.to_vec()).map_err(|e| KeyStoreError::tpm("Create", e))?;
    let created = pw(ctx, |c| c.create(srk, public, None, Some(data), None, None));
    close(ctx, srk);
    let created = created.map_err(|e| KeyStoreError::tpm("Create (sealed object)", e))?;
    let public_bytes = created
        .out_public
        .marshall()
        .map_err(|e| KeyStoreError::tpm("marshalling the sealed object", e))?;
    let mut out = seal_header(SEAL_TAG);
    let pcr_bytes = pcrs
        .iter()
        .map(|p| u8::try_from(*p))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| KeyStoreError::InvalidInput {
            detail: "PCR index above 255".to_owned(),
        })?;
    put_u16_prefixed(&mut out, &pcr_bytes)?;
    put_u16_prefixed(&mut out, created.out_private.value())?;
    put_u16_prefixed(&mut out, &public_bytes)?;
    Ok(out)
}

pub(super) fn unseal(ctx: &mut Context, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyStoreError> {
    let mut body = seal_body(blob, SEAL_TAG, "tpm")?;
    let pcrs: Vec<u32> = take_u16_prefixed(&mut body)?
        .iter()
        .map(|p| u32::from(*p))
        .collect();
    let private = Private::try_from(take_u16_prefixed(&mut body)?.to_vec()).map_err(|e| {
        KeyStoreError::MalformedSealedBlob {
            detail: format!("private area: {e}"),
        }
    })?;
    let public = Public::unmarshall(take_u16_prefixed(&mut body)?).map_err(|e| {
        KeyStoreError::MalformedSealedBlob {
            detail: format!("public area: {e}"),
        }
    })?;
    let selection = pcr_selection(&pcrs).map_err(|e| KeyStoreError::MalformedSealedBlob {
        detail: e.to_string(),
    })?;
    let srk = persistent_key(ctx, SRK_HANDLE)?.ok_or(KeyStoreError::NotProvisioned {
        what: "the TPM storage key",
    })?;
    let object = pw(ctx, |c| c.load(srk, private, public));
    close(ctx, srk);
    let object = object.map_err(|e| KeyStoreError::UnsealRefused {
        backend: "tpm",
        detail: format!("the TPM refused to load the sealed object: {e}"),
    })?;
    let session = match start_policy(ctx, false) {
        Ok(s) => s,
        Err(e) => {
            flush(ctx, object);
            return Err(e);
        }
    };
    let result = ctx
        .execute_without_session(|c| c.policy_pcr(session, Digest::default(), selection))
        .and_then(|()| {
            ctx.execute_with_session(Some(AuthSession::from(session)), |c| {
                c.unseal(ObjectHandle::from(object))
            })
        });
    flush_session(ctx, session);
    flush(ctx, object);
    match result {
        Ok(data) => Ok(Zeroizing::new(data.value().to_vec())),
        Err(e) => Err(KeyStoreError::UnsealRefused {
            backend: "tpm",
            detail: format!("PCRs {pcrs:?} differ from the sealing policy ({e})"),
        }),
    }
}
