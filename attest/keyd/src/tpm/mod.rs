//! The TPM 2.0: one connection ([`Tpm`]), shared by the key store and measured boot, and
//! everything the key service does with it.
//!
//! - [`keystore::TpmKeyStore`]: the [`warden_keystore::KeyStore`] on a TPM (device key,
//!   write-once anchors, PCR-bound sealing, NV counters), with `objects`, `nv` and `seal`.
//! - [`attestation`]: the attestation key and quotes over PCRs.
//! - [`credential`]: the endorsement key, the device's identity for enrolment, and the answer
//!   to a verifier's challenge.
//!
//! A `tss_esapi::Context` is neither `Send` nor `Sync`, and a TPM runs one command at a time
//! anyway, so the context lives on its own thread and callers send it closures ([`Tpm::run`]):
//! the same shape as a key service that owns the hardware. Every command runs with a password
//! session (empty authorization); policy sessions are started per operation and always
//! flushed, so a TPM with three session slots (swtpm) never runs out (TPM error 0x903).

pub mod attestation;
pub mod credential;
pub mod keystore;
pub mod nv;
mod objects;
pub mod seal;

use std::str::FromStr as _;
use std::sync::mpsc;

use tss_esapi::Context;
use tss_esapi::handles::{ObjectHandle, PcrHandle};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{
    Digest, DigestValues, PcrSelectionList, PcrSelectionListBuilder, PcrSlot,
};
use tss_esapi::tcti_ldr::TctiNameConf;
use warden_keystore::KeyStoreError;

/// Why the TPM connection failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TpmError {
    /// The TCTI string does not parse.
    #[error("invalid TCTI {tcti:?}: {detail}")]
    BadTcti {
        /// The string given.
        tcti: String,
        /// Why.
        detail: String,
    },
    /// The TPM could not be opened.
    #[error("cannot open the TPM at {tcti:?}: {detail}")]
    Open {
        /// The TCTI.
        tcti: String,
        /// The TSS error.
        detail: String,
    },
    /// A command failed.
    #[error("TPM {operation} failed: {detail}")]
    Command {
        /// Which command or step.
        operation: &'static str,
        /// The TSS error.
        detail: String,
    },
    /// A PCR index outside 0..=23.
    #[error("PCR {0} does not exist (0 to 23)")]
    BadPcr(u32),
    /// The TPM thread is gone (a command panicked or the TPM was closed).
    #[error("the TPM connection is closed")]
    Closed,
}

impl TpmError {
    pub(crate) fn command(operation: &'static str, e: impl std::fmt::Display) -> Self {
        Self::Command {
            operation,
            detail: e.to_string(),
        }
    }
}

type Job = Box<dyn FnOnce(&mut Context) + Send>;

/// A handle on the TPM thread; cheap to clone. The connection closes when the last handle is
/// dropped.
#[derive(Clone)]
pub struct Tpm {
    tx: mpsc::Sender<Job>,
    tcti: String,
}

impl std::fmt::Debug for Tpm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tpm").field("tcti", &self.tcti).finish()
    }
}

impl Tpm {
    /// Opens the TPM named by a TCTI string (`device:/dev/tpmrm0`,
    /// `swtpm:host=127.0.0.1,port=2321`, `mssim:…`, `tabrmd:…`).
    pub fn open(tcti: &str) -> Result<Self, TpmError> {
        let conf = TctiNameConf::from_str(tcti).map_err(|e| TpmError::BadTcti {
            tcti: tcti.to_owned(),
            detail: e.to_string(),
        })?;
        let (tx, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), tss_esapi::Error>>();
        std::thread::Builder::new()
            .name("warden-tpm".to_owned())
            .spawn(move || match Context::new(conf) {
                Ok(mut ctx) => {
                    let _ = ready_tx.send(Ok(()));
                    while let Ok(job) = rx.recv() {
                        job(&mut ctx);
                    }
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            })
            .map_err(|e| TpmError::Open {
                tcti: tcti.to_owned(),
                detail: e.to_string(),
            })?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Self {
                tx,
                tcti: tcti.to_owned(),
            }),
            Ok(Err(e)) => Err(TpmError::Open {
                tcti: tcti.to_owned(),
                detail: e.to_string(),
            }),
            Err(_) => Err(TpmError::Closed),
        }
    }

    /// The TCTI this handle was opened with.
    pub fn tcti(&self) -> &str {
        &self.tcti
    }

    /// Runs `f` on the TPM thread and waits for its result.
    pub fn run<T, F>(&self, f: F) -> Result<T, TpmError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Context) -> T + Send + 'static,
    {
        let (rtx, rrx) = mpsc::sync_channel(1);
        self.tx
            .send(Box::new(move |ctx: &mut Context| {
                let _ = rtx.send(f(ctx));
            }))
            .map_err(|_| TpmError::Closed)?;
        rrx.recv().map_err(|_| TpmError::Closed)
    }

    /// Reads SHA-256 PCRs; returns `(index, value)` in the order asked.
    pub fn read_pcrs(&self, pcrs: &[u32]) -> Result<Vec<(u32, [u8; 32])>, TpmError> {
        let pcrs = pcrs.to_vec();
        self.run(move |ctx| read_pcrs(ctx, &pcrs))?
    }

    /// Extends a SHA-256 PCR with `digest`.
    pub fn extend_pcr(&self, pcr: u32, digest: [u8; 32]) -> Result<(), TpmError> {
        let handle = pcr_handle(pcr)?;
        let digest =
            Digest::try_from(digest.to_vec()).map_err(|e| TpmError::command("PCR_Extend", e))?;
        self.run(move |ctx| {
            let mut values = DigestValues::new();
            values.set(HashingAlgorithm::Sha256, digest);
            ctx.execute_with_session(Some(AuthSession::Password), |c| {
                c.pcr_extend(handle, values)
            })
            .map_err(|e| TpmError::command("PCR_Extend", e))
        })?
    }

    /// Resets a resettable PCR (16 and 23 at locality 0).
    pub fn reset_pcr(&self, pcr: u32) -> Result<(), TpmError> {
        let handle = pcr_handle(pcr)?;
        self.run(move |ctx| {
            ctx.execute_with_session(Some(AuthSession::Password), |c| c.pcr_reset(handle))
                .map_err(|e| TpmError::command("PCR_Reset", e))
        })?
    }
}

pub(crate) fn pcr_slot(pcr: u32) -> Result<PcrSlot, TpmError> {
    if pcr > 23 {
        return Err(TpmError::BadPcr(pcr));
    }
    PcrSlot::try_from(1u32 << pcr).map_err(|_| TpmError::BadPcr(pcr))
}

fn pcr_handle(pcr: u32) -> Result<PcrHandle, TpmError> {
    if pcr > 23 {
        return Err(TpmError::BadPcr(pcr));
    }
    PcrHandle::try_from(pcr).map_err(|_| TpmError::BadPcr(pcr))
}

/// A SHA-256 selection of `pcrs`.
pub(crate) fn pcr_selection(pcrs: &[u32]) -> Result<PcrSelectionList, TpmError> {
    let slots = pcrs
        .iter()
        .map(|p| pcr_slot(*p))
        .collect::<Result<Vec<_>, _>>()?;
    PcrSelectionListBuilder::new()
        .with_selection(HashingAlgorithm::Sha256, &slots)
        .build()
        .map_err(|e| TpmError::command("building a PCR selection", e))
}

/// Reads SHA-256 PCRs in the order asked (the TPM answers at most 8 per command).
pub(crate) fn read_pcrs(ctx: &mut Context, pcrs: &[u32]) -> Result<Vec<(u32, [u8; 32])>, TpmError> {
    let mut out = Vec::with_capacity(pcrs.len());
    for &pcr in pcrs {
        let selection = pcr_selection(&[pcr])?;
        let (_, _, digests) = ctx
            .execute_without_session(|c| c.pcr_read(selection))
            .map_err(|e| TpmError::command("PCR_Read", e))?;
        let value = digests
            .value()
            .first()
            .ok_or_else(|| TpmError::command("PCR_Read", "the TPM returned no digest"))?;
        let value: [u8; 32] = value
            .value()
            .try_into()
            .map_err(|_| TpmError::command("PCR_Read", "not a SHA-256 digest"))?;
        out.push((pcr, value));
    }
    Ok(out)
}

/// Flushes a transient object or session, ignoring failures (best effort cleanup).
pub(crate) fn flush(ctx: &mut Context, handle: impl Into<ObjectHandle>) {
    let _ = ctx.flush_context(handle.into());
}

/// A TPM error as the key store reports it: a PCR that does not exist is the caller's input.
pub(crate) fn tpm_err(e: TpmError) -> KeyStoreError {
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
