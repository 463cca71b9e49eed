//! NV indices of the TPM key store: write-once indices (the anchors, the counters'
//! baselines), checked again on every read, and the monotonic counters reported from 0.

use tss_esapi::Context;
use tss_esapi::attributes::NvIndexAttributesBuilder;
use tss_esapi::handles::{NvIndexHandle, NvIndexTpmHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::resource_handles::{NvAuth, Provision};
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{Digest, MaxNvBuffer, NvPublicBuilder};

use warden_keystore::backend::counter_step;
use warden_keystore::{Counter, KeyStoreError};

use super::objects::{close, flush_session, handle_exists, pw, start_policy, trial_digest};

/// First NV index of the anchors (plus [`warden_keystore::Role`] order: model signers, release
/// authority, fleet authority, tenant CAs).
pub const ANCHOR_NV_BASE: u32 = 0x0157_0000;
/// First NV index of the counters.
pub const COUNTER_NV_BASE: u32 = 0x0157_0100;
/// First NV index of the counters' baselines.
pub const COUNTER_BASELINE_NV_BASE: u32 = 0x0157_0180;

pub(super) fn nv_tpm_handle(index: u32) -> Result<NvIndexTpmHandle, KeyStoreError> {
    NvIndexTpmHandle::new(index).map_err(|e| KeyStoreError::tpm("NV index", e))
}

/// The NV index's handle and public area, if it is defined.
pub(super) fn nv_lookup(
    ctx: &mut Context,
    index: u32,
) -> Result<Option<(NvIndexHandle, tss_esapi::structures::NvPublic)>, KeyStoreError> {
    let tpm_handle = nv_tpm_handle(index)?;
    if !handle_exists(ctx, index)? {
        return Ok(None);
    }
    let obj = ctx
        .execute_without_session(|c| c.tr_from_tpm_public(TpmHandle::NvIndex(tpm_handle)))
        .map_err(|e| KeyStoreError::tpm("TR_FromTPMPublic", e))?;
    let handle = NvIndexHandle::from(obj);
    let (public, _) = ctx
        .execute_without_session(|c| c.nv_read_public(handle))
        .map_err(|e| KeyStoreError::tpm("NV_ReadPublic", e))?;
    Ok(Some((handle, public)))
}

pub(super) fn write_once_policy(ctx: &mut Context) -> Result<Digest, KeyStoreError> {
    trial_digest(ctx, |c, s| c.policy_nv_written(s, false))
}

/// Defines a write-once index of exactly `data.len()` bytes and writes it, which locks it.
pub(super) fn nv_write_once(
    ctx: &mut Context,
    index: u32,
    data: &[u8],
) -> Result<(), KeyStoreError> {
    let policy = write_once_policy(ctx)?;
    let attrs = NvIndexAttributesBuilder::new()
        .with_policy_write(true)
        .with_write_all(true)
        .with_owner_read(true)
        .with_no_da(true)
        .build()
        .map_err(|e| KeyStoreError::tpm("NV attributes", e))?;
    let public = NvPublicBuilder::new()
        .with_nv_index(nv_tpm_handle(index)?)
        .with_index_name_algorithm(HashingAlgorithm::Sha256)
        .with_index_attributes(attrs)
        .with_index_auth_policy(policy)
        .with_data_area_size(data.len())
        .build()
        .map_err(|e| KeyStoreError::tpm("NV public area", e))?;
    let handle = pw(ctx, |c| c.nv_define_space(Provision::Owner, None, public))
        .map_err(|e| KeyStoreError::tpm("NV_DefineSpace", e))?;
    let buffer =
        MaxNvBuffer::try_from(data.to_vec()).map_err(|e| KeyStoreError::tpm("NV_Write", e))?;
    let session = start_policy(ctx, false)?;
    let result = ctx
        .execute_without_session(|c| c.policy_nv_written(session, false))
        .and_then(|()| {
            ctx.execute_with_session(Some(AuthSession::from(session)), |c| {
                c.nv_write(NvAuth::NvIndex(handle), handle, buffer, 0)
            })
        })
        .map_err(|e| KeyStoreError::tpm("NV_Write", e));
    flush_session(ctx, session);
    close(ctx, handle);
    result
}

/// Reads a write-once index after checking that it still is one, written.
pub(super) fn nv_read_once(
    ctx: &mut Context,
    index: u32,
) -> Result<Option<Vec<u8>>, KeyStoreError> {
    let Some((handle, public)) = nv_lookup(ctx, index)? else {
        return Ok(None);
    };
    let result = read_written_once(ctx, index, handle, &public);
    close(ctx, handle);
    result
}

pub(super) fn read_written_once(
    ctx: &mut Context,
    index: u32,
    handle: NvIndexHandle,
    public: &tss_esapi::structures::NvPublic,
) -> Result<Option<Vec<u8>>, KeyStoreError> {
    let attrs = public.attributes();
    if !attrs.written() {
        return Ok(None);
    }
    let policy = write_once_policy(ctx)?;
    if attrs.owner_write()
        || attrs.auth_write()
        || attrs.pp_write()
        || !attrs.policy_write()
        || public.authorization_policy().value() != policy.value()
    {
        return Err(KeyStoreError::InvalidInput {
            detail: format!(
                "NV index {index:#010x} is writable: it is not the write-once index Warden defines; \
                 someone replaced it"
            ),
        });
    }
    let size = public.data_size();
    let mut out = Vec::with_capacity(size);
    while out.len() < size {
        let chunk = (size - out.len()).min(512);
        let offset = u16::try_from(out.len()).map_err(|e| KeyStoreError::tpm("NV_Read", e))?;
        let chunk_u16 = u16::try_from(chunk).map_err(|e| KeyStoreError::tpm("NV_Read", e))?;
        let data = pw(ctx, |c| c.nv_read(NvAuth::Owner, handle, chunk_u16, offset))
            .map_err(|e| KeyStoreError::tpm("NV_Read", e))?;
        out.extend_from_slice(data.value());
    }
    Ok(Some(out))
}

pub(super) fn max_nv_write(ctx: &mut Context) -> usize {
    ctx.execute_without_session(tss_esapi::abstraction::nv::max_nv_buffer_size)
        .unwrap_or(512)
        .min(1024)
}

pub(super) fn counter_raw(
    ctx: &mut Context,
    counter: Counter,
) -> Result<Option<(NvIndexHandle, u64)>, KeyStoreError> {
    let Some((handle, public)) = nv_lookup(ctx, COUNTER_NV_BASE + counter.index())? else {
        return Ok(None);
    };
    if !public.attributes().written() {
        return Ok(Some((handle, u64::MAX)));
    }
    match read_counter_at(ctx, handle) {
        Ok(v) => Ok(Some((handle, v))),
        Err(e) => {
            close(ctx, handle);
            Err(e)
        }
    }
}

/// The raw value of a written NV counter.
pub(super) fn read_counter_at(
    ctx: &mut Context,
    handle: NvIndexHandle,
) -> Result<u64, KeyStoreError> {
    let data = pw(ctx, |c| c.nv_read(NvAuth::Owner, handle, 8, 0))
        .map_err(|e| KeyStoreError::tpm("NV_Read (counter)", e))?;
    let bytes: [u8; 8] = data
        .value()
        .try_into()
        .map_err(|_| KeyStoreError::tpm("NV_Read (counter)", "not 8 bytes"))?;
    Ok(u64::from_be_bytes(bytes))
}

pub(super) fn counter_baseline(
    ctx: &mut Context,
    counter: Counter,
) -> Result<Option<u64>, KeyStoreError> {
    match nv_read_once(ctx, COUNTER_BASELINE_NV_BASE + counter.index())? {
        None => Ok(None),
        Some(v) => {
            let bytes: [u8; 8] =
                v.as_slice()
                    .try_into()
                    .map_err(|_| KeyStoreError::InvalidInput {
                        detail: format!("baseline of counter {counter} is not 8 bytes"),
                    })?;
            Ok(Some(u64::from_be_bytes(bytes)))
        }
    }
}

/// The logical counter value (0 before first use).
pub(super) fn counter_value(ctx: &mut Context, counter: Counter) -> Result<u64, KeyStoreError> {
    let found = counter_raw(ctx, counter)?;
    if let Some((handle, _)) = found {
        close(ctx, handle);
    }
    match found {
        None | Some((_, u64::MAX)) => Ok(0),
        Some((_, raw)) => {
            let base = counter_baseline(ctx, counter)?.ok_or_else(|| KeyStoreError::InvalidInput {
                detail: format!(
                    "counter {counter} has no baseline index; it cannot be trusted (re-provision)"
                ),
            })?;
            raw.checked_sub(base)
                .ok_or_else(|| KeyStoreError::InvalidInput {
                    detail: format!("counter {counter} is below its baseline"),
                })
        }
    }
}

pub(super) fn nv_increment(ctx: &mut Context, handle: NvIndexHandle) -> Result<(), KeyStoreError> {
    pw(ctx, |c| c.nv_increment(NvAuth::Owner, handle))
        .map_err(|e| KeyStoreError::tpm("NV_Increment", e))
}

pub(super) fn advance(ctx: &mut Context, counter: Counter, to: u64) -> Result<u64, KeyStoreError> {
    let current = counter_value(ctx, counter)?;
    let mut steps = counter_step(counter, current, to)?;
    if steps == 0 {
        return Ok(to);
    }
    let handle = match counter_raw(ctx, counter)? {
        Some((h, raw)) if raw != u64::MAX => h,
        found => {
            // First use: define (if needed), increment once to initialize, record the baseline.
            let handle = match found {
                Some((h, _)) => h,
                None => {
                    let attrs = NvIndexAttributesBuilder::new()
                        .with_nv_index_type(tss_esapi::constants::NvIndexType::Counter)
                        .with_owner_write(true)
                        .with_owner_read(true)
                        .with_no_da(true)
                        .build()
                        .map_err(|e| KeyStoreError::tpm("NV attributes", e))?;
                    let public = NvPublicBuilder::new()
                        .with_nv_index(nv_tpm_handle(COUNTER_NV_BASE + counter.index())?)
                        .with_index_name_algorithm(HashingAlgorithm::Sha256)
                        .with_index_attributes(attrs)
                        .with_data_area_size(8)
                        .build()
                        .map_err(|e| KeyStoreError::tpm("NV public area", e))?;
                    pw(ctx, |c| c.nv_define_space(Provision::Owner, None, public))
                        .map_err(|e| KeyStoreError::tpm("NV_DefineSpace (counter)", e))?
                }
            };
            nv_increment(ctx, handle)?;
            let raw = read_counter_at(ctx, handle)?;
            if counter_baseline(ctx, counter)?.is_none() {
                nv_write_once(
                    ctx,
                    COUNTER_BASELINE_NV_BASE + counter.index(),
                    &raw.to_be_bytes(),
                )?;
            }
            handle
        }
    };
    // The first increment above does not count: the logical value is still `current` (0).
    let mut incremented = Ok(());
    while steps > 0 && incremented.is_ok() {
        incremented = nv_increment(ctx, handle);
        steps -= 1;
    }
    close(ctx, handle);
    incremented?;
    let now = counter_value(ctx, counter)?;
    if now != to {
        return Err(KeyStoreError::InvalidInput {
            detail: format!("counter {counter} reads {now} after advancing to {to}"),
        });
    }
    Ok(now)
}
