//! The TPM 2.0 key store (`tss-esapi` 7.7 over Debian's tss2 3.2).
//!
//! - **Device key**: an ECDSA P-256 signing key (fixedTPM, fixedParent, sensitiveDataOrigin)
//!   created in the owner hierarchy and made persistent at [`DEVICE_KEY_HANDLE`]. Its private
//!   half never leaves the TPM; the message is hashed on the host and the TPM signs the digest.
//! - **Anchors**: one NV index per role at [`ANCHOR_NV_BASE`] + role, *write-once*: its only
//!   write authorization is the policy `PolicyNvWritten(NO)` (with `TPMA_NV_WRITEALL`), so the
//!   single write that installs the anchors also locks them; the owner can read but not write
//!   (no `OWNERWRITE`). On read the index's attributes and policy are checked again, so an
//!   index redefined with looser attributes is refused. (tss-esapi 7.7 has no `NV_WriteLock`;
//!   this needs none.) Deleting the index takes owner authorization: provisioning must set an
//!   owner password (`tpm2_changeauth -c o`) on production devices.
//! - **Seal**: a keyed-hash sealed object under a persistent ECC storage key
//!   ([`SRK_HANDLE`]) whose only authorization is `PolicyPCR` over the configured SHA-256 PCRs
//!   at sealing time; unsealing runs the policy again, so it fails once any of those PCRs moves.
//! - **Counters**: an NV counter index per [`Counter`] at [`COUNTER_NV_BASE`]; a TPM counter
//!   starts at an arbitrary value (the highest any counter reached), so its first value is kept
//!   in a write-once index at [`COUNTER_BASELINE_NV_BASE`] and values are reported from 0.

use sha2::Digest as _;
use tss_esapi::Context;
use tss_esapi::attributes::{NvIndexAttributesBuilder, ObjectAttributesBuilder};
use tss_esapi::constants::SessionType;
use tss_esapi::constants::tss::{TPM2_RH_NULL, TPM2_ST_HASHCHECK};
use tss_esapi::handles::{
    KeyHandle, NvIndexHandle, NvIndexTpmHandle, ObjectHandle, PersistentTpmHandle, TpmHandle,
};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::dynamic_handles::Persistent;
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::{Hierarchy, NvAuth, Provision};
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    Digest, EccPoint, EccScheme, HashScheme, KeyedHashScheme, MaxNvBuffer, NvPublicBuilder,
    Private, Public, PublicBuilder, PublicEccParametersBuilder, PublicKeyedHashParameters,
    SensitiveData, Signature, SignatureScheme, SymmetricDefinition, SymmetricDefinitionObject,
};
use tss_esapi::traits::{Marshall as _, UnMarshall as _};
use tss_esapi::tss2_esys::TPMT_TK_HASHCHECK;
use zeroize::Zeroizing;

use super::{
    BackendInfo, Capabilities, Counter, KeyStore, KeyStoreError, Role, check_seal_size,
    counter_step, p256_from_xy, p256_sig_from_rs, seal_body, seal_header,
};
use crate::boot::BootError;
use crate::boot::quote::{self, Quote};
use crate::tpm::{Tpm, TpmError, flush, pcr_selection};

/// Persistent handle of the device key.
pub const DEVICE_KEY_HANDLE: u32 = 0x8101_5701;
/// Persistent handle of the storage key that parents sealed objects.
pub const SRK_HANDLE: u32 = 0x8101_5702;
/// First NV index of the anchors (plus [`Role`] order: model signers, release authority,
/// fleet authority, tenant CAs).
pub const ANCHOR_NV_BASE: u32 = 0x0157_0000;
/// First NV index of the counters.
pub const COUNTER_NV_BASE: u32 = 0x0157_0100;
/// First NV index of the counters' baselines.
pub const COUNTER_BASELINE_NV_BASE: u32 = 0x0157_0180;

const SEAL_TAG: u8 = 1;

/// Configuration of the TPM backend.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct TpmConfig {
    /// TCTI: `device:/dev/tpmrm0` in production, `swtpm:host=…,port=…` for tests.
    pub tcti: String,
    /// SHA-256 PCRs a sealed data key is bound to. Default 0, 2, 4, 7: firmware, option ROMs,
    /// boot loader and Secure Boot state.
    #[serde(default = "default_seal_pcrs")]
    pub seal_pcrs: Vec<u32>,
}

fn default_seal_pcrs() -> Vec<u32> {
    vec![0, 2, 4, 7]
}

/// A TPM 2.0.
#[derive(Debug, Clone)]
pub struct TpmKeyStore {
    tpm: Tpm,
    seal_pcrs: Vec<u32>,
}

fn tpm_err(e: TpmError) -> KeyStoreError {
    match e {
        TpmError::Command { operation, detail } => KeyStoreError::Tpm { operation, detail },
        TpmError::BadPcr(pcr) => KeyStoreError::InvalidInput {
            detail: format!("PCR {pcr} does not exist (0 to 23)"),
        },
        other => KeyStoreError::Tpm {
            operation: "connection",
            detail: other.to_string(),
        },
    }
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

/// Runs `f` with the password session (empty authorization) as session 1.
pub(crate) fn pw<T>(ctx: &mut Context, f: impl FnOnce(&mut Context) -> T) -> T {
    ctx.execute_with_session(Some(AuthSession::Password), f)
}

fn ecc_signing_template(restricted: bool) -> Result<Public, KeyStoreError> {
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

fn srk_template() -> Result<Public, KeyStoreError> {
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
fn handle_exists(ctx: &mut Context, handle: u32) -> Result<bool, KeyStoreError> {
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
pub(crate) fn persistent_key(
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
pub(crate) fn ensure_persistent_key(
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
pub(crate) fn ecc_public(
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
fn sign_digest(
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
pub(crate) fn start_policy(ctx: &mut Context, trial: bool) -> Result<PolicySession, KeyStoreError> {
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
pub(crate) fn close(ctx: &mut Context, handle: impl Into<ObjectHandle>) {
    let mut handle = handle.into();
    let _ = ctx.tr_close(&mut handle);
}

pub(crate) fn flush_session(ctx: &mut Context, session: PolicySession) {
    let handle = tss_esapi::handles::SessionHandle::from(session);
    let _ = ctx.flush_context(ObjectHandle::from(handle));
}

/// Runs policy commands on a trial session and returns the digest.
fn trial_digest(
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

// ---- NV helpers ----------------------------------------------------------------------------

fn nv_tpm_handle(index: u32) -> Result<NvIndexTpmHandle, KeyStoreError> {
    NvIndexTpmHandle::new(index).map_err(|e| KeyStoreError::tpm("NV index", e))
}

/// The NV index's handle and public area, if it is defined.
fn nv_lookup(
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

fn write_once_policy(ctx: &mut Context) -> Result<Digest, KeyStoreError> {
    trial_digest(ctx, |c, s| c.policy_nv_written(s, false))
}

/// Defines a write-once index of exactly `data.len()` bytes and writes it, which locks it.
fn nv_write_once(ctx: &mut Context, index: u32, data: &[u8]) -> Result<(), KeyStoreError> {
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
fn nv_read_once(ctx: &mut Context, index: u32) -> Result<Option<Vec<u8>>, KeyStoreError> {
    let Some((handle, public)) = nv_lookup(ctx, index)? else {
        return Ok(None);
    };
    let result = read_written_once(ctx, index, handle, &public);
    close(ctx, handle);
    result
}

fn read_written_once(
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

fn max_nv_write(ctx: &mut Context) -> usize {
    ctx.execute_without_session(tss_esapi::abstraction::nv::max_nv_buffer_size)
        .unwrap_or(512)
        .min(1024)
}

fn counter_raw(
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
fn read_counter_at(ctx: &mut Context, handle: NvIndexHandle) -> Result<u64, KeyStoreError> {
    let data = pw(ctx, |c| c.nv_read(NvAuth::Owner, handle, 8, 0))
        .map_err(|e| KeyStoreError::tpm("NV_Read (counter)", e))?;
    let bytes: [u8; 8] = data
        .value()
        .try_into()
        .map_err(|_| KeyStoreError::tpm("NV_Read (counter)", "not 8 bytes"))?;
    Ok(u64::from_be_bytes(bytes))
}

fn counter_baseline(ctx: &mut Context, counter: Counter) -> Result<Option<u64>, KeyStoreError> {
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
fn counter_value(ctx: &mut Context, counter: Counter) -> Result<u64, KeyStoreError> {
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

fn nv_increment(ctx: &mut Context, handle: NvIndexHandle) -> Result<(), KeyStoreError> {
    pw(ctx, |c| c.nv_increment(NvAuth::Owner, handle))
        .map_err(|e| KeyStoreError::tpm("NV_Increment", e))
}

fn advance(ctx: &mut Context, counter: Counter, to: u64) -> Result<u64, KeyStoreError> {
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

// ---- seal ----------------------------------------------------------------------------------

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

fn seal(ctx: &mut Context, pcrs: &[u32], secret: &[u8]) -> Result<Vec<u8>, KeyStoreError> {
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

fn unseal(ctx: &mut Context, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyStoreError> {
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
        quote::quote(&self.tpm, nonce, pcrs).map_err(boot_err)
    }

    fn attestation_identity(
        &self,
    ) -> Result<crate::boot::credential::DeviceIdentity, KeyStoreError> {
        crate::boot::credential::device_identity(&self.tpm).map_err(boot_err)
    }

    fn activate_credential(
        &self,
        challenge: &crate::boot::credential::Challenge,
    ) -> Result<Vec<u8>, KeyStoreError> {
        crate::boot::credential::activate_credential(&self.tpm, challenge).map_err(boot_err)
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
        self.run(move |ctx| seal(ctx, &pcrs, &secret))
    }

    fn unseal(&self, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyStoreError> {
        let blob = blob.to_vec();
        self.run(move |ctx| unseal(ctx, &blob))
    }

    fn counter(&self, counter: Counter) -> Result<u64, KeyStoreError> {
        self.run(move |ctx| counter_value(ctx, counter))
    }

    fn advance_counter(&self, counter: Counter, to: u64) -> Result<u64, KeyStoreError> {
        self.run(move |ctx| advance(ctx, counter, to))
    }
}

/// The template of an attestation key: a restricted ECDSA P-256 signing key (for quotes).
/// A measured-boot error as the key store reports it: refusals are invalid input.
fn boot_err(e: BootError) -> KeyStoreError {
    match e {
        BootError::QuoteRefused { detail } | BootError::CredentialRefused { detail } => {
            KeyStoreError::InvalidInput { detail }
        }
        BootError::Tpm(e) => tpm_err(e),
        BootError::KeyStore(e) => e,
        other => KeyStoreError::tpm("attestation", other),
    }
}

pub(crate) fn attestation_key_template() -> Result<Public, KeyStoreError> {
    ecc_signing_template(true)
}
