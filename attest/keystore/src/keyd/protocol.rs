//! The key service's wire format.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of JSON. A request is at
//! most [`MAX_REQUEST_BYTES`], a response at most [`MAX_RESPONSE_BYTES`]; a frame announcing
//! more is refused before anything is allocated for it, and the connection is closed (the
//! stream can no longer be trusted to be in step). Binary fields are standard base64.
//!
//! Requests (`op` names the operation, unknown fields are refused):
//!
//! ```json
//! {"op": "describe"}
//! {"op": "device_public_key"}
//! {"op": "sign", "message": "<base64, at most 16 KiB>"}
//! {"op": "anchors", "role": "model-signers" | "release-authority" | "fleet-authority" | "tenant-cas"}
//! {"op": "unseal", "blob": "<base64>"}
//! {"op": "counter", "counter": "revocation-serial" | "policy-set-serial"}
//! {"op": "advance_counter", "counter": "...", "to": 7}
//! {"op": "extend_pcr", "pcr": 23, "digest": "<base64, exactly 32 bytes: a SHA-256 digest>"}
//! {"op": "read_pcr", "pcr": 23}
//! {"op": "quote", "nonce": "<base64, 1 to 64 bytes>", "pcrs": [0, 2, 4, 7, 23]}
//! {"op": "attestation_identity"}
//! {"op": "activate_credential", "credential_blob": "<base64>", "encrypted_seed": "<base64>"}
//! ```
//!
//! Bounds checked by keyd before the key store sees a request: a PCR index is 0 to 23; only
//! the PCRs of [`EXTENDABLE_PCRS`] (16 to 23) may be extended, so no caller can extend the
//! boot PCRs 0 to 15 (firmware, boot loader, kernel, OS) and forge a boot state; a quote names
//! 1 to 24 distinct PCRs and a nonce of 1 to [`attestation::MAX_NONCE`] bytes.
//!
//! Responses (`type`):
//!
//! ```json
//! {"type": "describe", "kind": "tpm", "location": "...", "development_only": false, "capabilities": {...}}
//! {"type": "public_key", "spki": "<base64 DER SubjectPublicKeyInfo>"}
//! {"type": "signature", "der": "<base64 DER ECDSA-Sig-Value>"}
//! {"type": "anchors", "pem": "<base64>" | null}
//! {"type": "unsealed", "secret": "<base64>"}
//! {"type": "counter", "value": 7}
//! {"type": "extended"}
//! {"type": "pcr", "value": "<base64, 32 bytes>"}
//! {"type": "quote", "attest": "<base64>", "signature": "<base64>", "pcrs": {"23": "<hex>"}}
//! {"type": "identity", "endorsement_key": "<base64 DER SubjectPublicKeyInfo>", "ak_public_area": "<base64>",
//!  "ek_certificate": "<base64 DER, absent when the TPM has none>"}
//! {"type": "credential", "secret": "<base64>"}
//! {"type": "error", "kind": "unauthorized" | "forbidden" | "malformed_request" | "frame_too_large" | ..., "message": "..."}
//! ```

use crate::attestation::{self, Quote};
use crate::{Capabilities, Counter, KeyStoreError, Role};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::operation::Operation;

/// The largest request frame.
pub const MAX_REQUEST_BYTES: u32 = 64 * 1024;
/// The largest response frame (anchors may hold a few certificate chains).
pub const MAX_RESPONSE_BYTES: u32 = 1024 * 1024;
/// The largest message `sign` accepts (a TLS handshake signs about 130 bytes).
pub const MAX_SIGN_MESSAGE: usize = 16 * 1024;
/// The PCRs a caller may extend: 16 (debug), 17 to 22 (the dynamic root of trust's, which a
/// TPM refuses to extend at locality 0 anyway) and 23 (application support, Warden's
/// `warden_attest::boot::measure::DEFAULT_APP_PCR`). PCRs 0 to 15 record the static boot
/// chain (firmware, option ROMs, boot loader, Secure Boot state, kernel and OS): extending
/// one from user space would let a caller make a tampered boot look measured, or a good one
/// unverifiable, so keyd refuses it whatever the principal's operations.
pub const EXTENDABLE_PCRS: std::ops::RangeInclusive<u32> = 16..=23;
/// The highest PCR index of a TPM 2.0 PC client (24 PCRs).
pub const MAX_PCR: u32 = 23;

/// A request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Backend and capabilities.
    Describe {},
    /// The device public key.
    DevicePublicKey {},
    /// Sign `message` with the device key.
    Sign {
        /// Base64.
        message: String,
    },
    /// Read a role's anchors.
    Anchors {
        /// The role's name.
        role: WireRole,
    },
    /// Unseal a blob.
    Unseal {
        /// Base64.
        blob: String,
    },
    /// Read a counter.
    Counter {
        /// Which.
        counter: WireCounter,
    },
    /// Advance a counter.
    AdvanceCounter {
        /// Which.
        counter: WireCounter,
        /// To what.
        to: u64,
    },
    /// Extend an application PCR.
    ExtendPcr {
        /// Which, in [`EXTENDABLE_PCRS`].
        pcr: u32,
        /// Base64 of a 32-byte SHA-256 digest.
        digest: String,
    },
    /// Read a PCR (SHA-256 bank).
    ReadPcr {
        /// Which, 0 to [`MAX_PCR`].
        pcr: u32,
    },
    /// Quote PCRs over a verifier's nonce.
    Quote {
        /// Base64, 1 to [`attestation::MAX_NONCE`] bytes.
        nonce: String,
        /// The PCRs, each 0 to [`MAX_PCR`], at most 24, no duplicates.
        pcrs: Vec<u32>,
    },
    /// The device's identity for enrolling its attestation key (EK and the AK's public area).
    AttestationIdentity {},
    /// Answer an enrolment challenge with the TPM.
    ActivateCredential {
        /// Base64 `TPM2B_ID_OBJECT` contents.
        credential_blob: String,
        /// Base64 `TPMS_ECC_POINT`.
        encrypted_seed: String,
    },
}

impl Request {
    /// The operation, for authorization.
    pub fn operation(&self) -> Operation {
        match self {
            Request::Describe {} => Operation::Describe,
            Request::DevicePublicKey {} => Operation::DevicePublicKey,
            Request::Sign { .. } => Operation::Sign,
            Request::Anchors { .. } => Operation::Anchors,
            Request::Unseal { .. } => Operation::Unseal,
            Request::Counter { .. } => Operation::Counter,
            Request::AdvanceCounter { .. } => Operation::AdvanceCounter,
            Request::ExtendPcr { .. } => Operation::ExtendPcr,
            Request::ReadPcr { .. } => Operation::ReadPcr,
            Request::Quote { .. } => Operation::Quote,
            Request::AttestationIdentity {} => Operation::AttestationIdentity,
            Request::ActivateCredential { .. } => Operation::ActivateCredential,
        }
    }
}

/// A request whose fields break the API's bounds (answered `invalid_input`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestRefused {
    #[error("PCR {0} does not exist (0 to {MAX_PCR})")]
    NoSuchPcr(u32),
    #[error(
        "PCR {pcr} records the boot chain; keyd extends only PCRs {first} to {last}",
        first = EXTENDABLE_PCRS.start(),
        last = EXTENDABLE_PCRS.end()
    )]
    BootPcr { pcr: u32 },
    #[error("a nonce holds 1 to {max} bytes, not {len}", max = attestation::MAX_NONCE)]
    NonceLength { len: usize },
    #[error("a quote selects 1 to {max} PCRs, not {len}", max = MAX_PCR + 1)]
    SelectionSize { len: usize },
    #[error("PCR {0} is selected twice")]
    SelectedTwice(u32),
}

/// Checks a PCR index.
pub fn check_pcr(pcr: u32) -> Result<(), RequestRefused> {
    if pcr > MAX_PCR {
        return Err(RequestRefused::NoSuchPcr(pcr));
    }
    Ok(())
}

/// Checks a PCR that a caller asks to extend.
pub fn check_extendable_pcr(pcr: u32) -> Result<(), RequestRefused> {
    check_pcr(pcr)?;
    if !EXTENDABLE_PCRS.contains(&pcr) {
        return Err(RequestRefused::BootPcr { pcr });
    }
    Ok(())
}

/// Checks a quote's nonce and PCR selection.
pub fn check_quote_request(nonce: &[u8], pcrs: &[u32]) -> Result<(), RequestRefused> {
    if nonce.is_empty() || nonce.len() > attestation::MAX_NONCE {
        return Err(RequestRefused::NonceLength { len: nonce.len() });
    }
    if pcrs.is_empty() || pcrs.len() > (MAX_PCR as usize + 1) {
        return Err(RequestRefused::SelectionSize { len: pcrs.len() });
    }
    let mut seen = std::collections::BTreeSet::new();
    for &pcr in pcrs {
        check_pcr(pcr)?;
        if !seen.insert(pcr) {
            return Err(RequestRefused::SelectedTwice(pcr));
        }
    }
    Ok(())
}

/// A field of a frame that does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("{field} is not base64: {detail}")]
    Base64 { field: String, detail: String },
    #[error("{0:?} is not a PCR number")]
    PcrNumber(String),
}

/// A role on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WireRole {
    /// [`Role::ModelSigners`].
    ModelSigners,
    /// [`Role::ReleaseAuthority`].
    ReleaseAuthority,
    /// [`Role::FleetAuthority`].
    FleetAuthority,
    /// [`Role::TenantCas`].
    TenantCas,
}

impl From<Role> for WireRole {
    fn from(r: Role) -> Self {
        match r {
            Role::ModelSigners => WireRole::ModelSigners,
            Role::ReleaseAuthority => WireRole::ReleaseAuthority,
            Role::FleetAuthority => WireRole::FleetAuthority,
            Role::TenantCas => WireRole::TenantCas,
        }
    }
}

impl From<WireRole> for Role {
    fn from(r: WireRole) -> Self {
        match r {
            WireRole::ModelSigners => Role::ModelSigners,
            WireRole::ReleaseAuthority => Role::ReleaseAuthority,
            WireRole::FleetAuthority => Role::FleetAuthority,
            WireRole::TenantCas => Role::TenantCas,
        }
    }
}

/// A counter on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WireCounter {
    /// [`Counter::RevocationSerial`].
    RevocationSerial,
    /// [`Counter::PolicySetSerial`].
    PolicySetSerial,
}

impl From<Counter> for WireCounter {
    fn from(c: Counter) -> Self {
        match c {
            Counter::RevocationSerial => WireCounter::RevocationSerial,
            Counter::PolicySetSerial => WireCounter::PolicySetSerial,
        }
    }
}

impl From<WireCounter> for Counter {
    fn from(c: WireCounter) -> Self {
        match c {
            WireCounter::RevocationSerial => Counter::RevocationSerial,
            WireCounter::PolicySetSerial => Counter::PolicySetSerial,
        }
    }
}

/// Why keyd refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The peer UID is not a principal.
    Unauthorized,
    /// The principal may not call this operation.
    Forbidden,
    /// The request does not parse.
    MalformedRequest,
    /// The frame announces more than the limit.
    FrameTooLarge,
    /// The backend does not support the operation.
    NotSupported,
    /// A key or object is not provisioned.
    NotProvisioned,
    /// A counter may not go back.
    CounterRollback,
    /// A counter step is too large.
    CounterStepTooLarge,
    /// Unseal refused (PCRs, wrong key, altered blob).
    UnsealRefused,
    /// Bad input.
    InvalidInput,
    /// Anything else in the key store.
    Internal,
}

/// A response.
#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Response {
    /// Backend and capabilities.
    Describe {
        /// `tpm`, `pkcs11`, `software`.
        kind: String,
        /// Where.
        location: String,
        /// Development only.
        development_only: bool,
        /// What it can do.
        capabilities: Capabilities,
    },
    /// The device public key.
    PublicKey {
        /// Base64 DER SubjectPublicKeyInfo.
        spki: String,
    },
    /// A signature.
    Signature {
        /// Base64 DER ECDSA signature.
        der: String,
    },
    /// A role's anchors.
    Anchors {
        /// Base64, or none installed.
        pem: Option<String>,
    },
    /// An unsealed secret.
    Unsealed {
        /// Base64. Zeroize it after decoding (the client does).
        secret: String,
    },
    /// A counter value.
    Counter {
        /// The value.
        value: u64,
    },
    /// A PCR was extended.
    Extended {},
    /// A PCR's SHA-256 value.
    Pcr {
        /// Base64, 32 bytes.
        value: String,
    },
    /// A quote: the fields of [`Quote`] (what `warden attest verify` checks). The PCR
    /// numbers are the JSON object's keys, strings on the wire ([`quote_to_wire`]).
    Quote {
        /// The signed `TPMS_ATTEST`, base64.
        attest: String,
        /// The attestation key's DER signature, base64.
        signature: String,
        /// PCR number (decimal) to its SHA-256 value (hex).
        pcrs: std::collections::BTreeMap<String, String>,
    },
    /// The device's identity.
    Identity {
        /// The EK, base64 DER SubjectPublicKeyInfo.
        endorsement_key: String,
        /// The AK's `TPMT_PUBLIC`, base64.
        ak_public_area: String,
        /// The EK's certificate from the TPM's NV, base64 DER; absent when it has none.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ek_certificate: Option<String>,
    },
    /// The secret an enrolment challenge carried (for the verifier; not a key).
    Credential {
        /// Base64.
        secret: String,
    },
    /// A refusal.
    Error {
        /// Its class.
        kind: ErrorKind,
        /// For the caller's logs; never holds key material.
        message: String,
        /// Counter errors: the current value.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        current: Option<u64>,
        /// Counter errors: the value asked for.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        requested: Option<u64>,
    },
}

impl std::fmt::Debug for Response {
    // Never print an unsealed secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Response::Unsealed { .. } => f.write_str("Unsealed { .. }"),
            Response::Describe { kind, .. } => write!(f, "Describe {{ kind: {kind:?}, .. }}"),
            Response::PublicKey { .. } => f.write_str("PublicKey { .. }"),
            Response::Signature { .. } => f.write_str("Signature { .. }"),
            Response::Anchors { pem } => write!(f, "Anchors {{ present: {} }}", pem.is_some()),
            Response::Counter { value } => write!(f, "Counter {{ value: {value} }}"),
            Response::Extended {} => f.write_str("Extended"),
            Response::Pcr { .. } => f.write_str("Pcr { .. }"),
            Response::Quote { .. } => f.write_str("Quote { .. }"),
            Response::Identity { .. } => f.write_str("Identity { .. }"),
            Response::Credential { .. } => f.write_str("Credential { .. }"),
            Response::Error { kind, message, .. } => {
                write!(f, "Error {{ kind: {kind:?}, message: {message:?} }}")
            }
        }
    }
}

impl Response {
    /// A refusal without counter details.
    pub fn error(kind: ErrorKind, message: impl std::fmt::Display) -> Self {
        Response::Error {
            kind,
            message: message.to_string(),
            current: None,
            requested: None,
        }
    }

    /// A key store error as a response.
    pub fn from_keystore(e: &KeyStoreError) -> Self {
        let (kind, current, requested) = match e {
            KeyStoreError::NotSupported { .. } => (ErrorKind::NotSupported, None, None),
            KeyStoreError::NotProvisioned { .. } => (ErrorKind::NotProvisioned, None, None),
            KeyStoreError::CounterRollback {
                current, requested, ..
            } => (ErrorKind::CounterRollback, Some(*current), Some(*requested)),
            KeyStoreError::CounterStepTooLarge {
                current, requested, ..
            } => (
                ErrorKind::CounterStepTooLarge,
                Some(*current),
                Some(*requested),
            ),
            KeyStoreError::UnsealRefused { .. } | KeyStoreError::MalformedSealedBlob { .. } => {
                (ErrorKind::UnsealRefused, None, None)
            }
            KeyStoreError::InvalidInput { .. } => (ErrorKind::InvalidInput, None, None),
            _ => (ErrorKind::Internal, None, None),
        };
        Response::Error {
            kind,
            message: e.to_string(),
            current,
            requested,
        }
    }
}

/// A quote's fields for [`Response::Quote`]. (An internally tagged enum cannot carry a map
/// with integer keys through serde, so the PCR numbers travel as strings.)
pub fn quote_to_wire(q: Quote) -> Response {
    Response::Quote {
        attest: q.attest,
        signature: q.signature,
        pcrs: q
            .pcrs
            .into_iter()
            .map(|(pcr, value)| (pcr.to_string(), value))
            .collect(),
    }
}

/// The quote in a [`Response::Quote`]'s fields.
pub fn quote_from_wire(
    attest: String,
    signature: String,
    pcrs: std::collections::BTreeMap<String, String>,
) -> Result<Quote, WireError> {
    let pcrs = pcrs
        .into_iter()
        // Only the canonical decimal (`7`, not `07` or `+7`): two keys naming one PCR would
        // silently drop a carried value.
        .map(|(pcr, value)| match pcr.parse::<u32>() {
            Ok(p) if p.to_string() == pcr => Ok((p, value)),
            _ => Err(WireError::PcrNumber(pcr)),
        })
        .collect::<Result<_, _>>()?;
    Ok(Quote {
        attest,
        signature,
        pcrs,
    })
}

/// Base64-encodes.
pub fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// Base64-decodes `field`.
pub fn unb64(field: &str, s: &str) -> Result<Vec<u8>, WireError> {
    STANDARD.decode(s).map_err(|e| WireError::Base64 {
        field: field.to_owned(),
        detail: e.to_string(),
    })
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer closed the connection between frames.
    #[error("connection closed")]
    Closed,
    /// The announced length is over the limit.
    #[error("frame of {size} bytes announced; the limit is {limit}")]
    TooLarge {
        /// Announced.
        size: u32,
        /// Limit.
        limit: u32,
    },
    /// I/O.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads one frame (async).
pub async fn read_frame<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
    limit: u32,
) -> Result<Vec<u8>, FrameError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    }
    let size = u32::from_be_bytes(len);
    if size > limit {
        return Err(FrameError::TooLarge { size, limit });
    }
    let mut buf = vec![0u8; size as usize];
    r.read_exact(&mut buf).await?;
    Ok(buf)
}

/// Writes one frame (async).
pub async fn write_frame<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    body: &[u8],
) -> Result<(), FrameError> {
    let len = u32::try_from(body.len()).map_err(|_| FrameError::TooLarge {
        size: u32::MAX,
        limit: MAX_RESPONSE_BYTES,
    })?;
    w.write_all(&len.to_be_bytes()).await?;
    w.write_all(body).await?;
    w.flush().await?;
    Ok(())
}

/// Reads one frame (blocking).
pub fn read_frame_blocking<R: std::io::Read>(r: &mut R, limit: u32) -> Result<Vec<u8>, FrameError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    }
    let size = u32::from_be_bytes(len);
    if size > limit {
        return Err(FrameError::TooLarge { size, limit });
    }
    let mut buf = vec![0u8; size as usize];
    r.read_exact(&mut buf)?;
    Ok(buf)
}

/// Writes one frame (blocking).
pub fn write_frame_blocking<W: std::io::Write>(w: &mut W, body: &[u8]) -> Result<(), FrameError> {
    let len = u32::try_from(body.len()).map_err(|_| FrameError::TooLarge {
        size: u32::MAX,
        limit: MAX_REQUEST_BYTES,
    })?;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(body);
    w.write_all(&frame)?;
    w.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_refuse_unknown_fields() {
        let r: Request = serde_json::from_str(
            r#"{"op":"advance_counter","counter":"revocation-serial","to":3}"#,
        )
        .unwrap();
        assert_eq!(r.operation(), Operation::AdvanceCounter);
        assert!(serde_json::from_str::<Request>(r#"{"op":"describe","x":1}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"op":"export_private_key"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"op":"anchors","role":"everyone"}"#).is_err());
        let q: Request =
            serde_json::from_str(r#"{"op":"quote","nonce":"AAE=","pcrs":[0,23]}"#).unwrap();
        assert_eq!(q.operation(), Operation::Quote);
        assert!(serde_json::from_str::<Request>(r#"{"op":"read_pcr","pcr":-1}"#).is_err());
    }

    #[test]
    fn pcr_bounds() {
        for pcr in 0..16 {
            assert!(check_extendable_pcr(pcr).is_err(), "boot PCR {pcr}");
        }
        for pcr in 16..=23 {
            check_extendable_pcr(pcr).unwrap();
        }
        assert!(check_extendable_pcr(24).is_err());
        assert!(check_pcr(24).is_err());
        check_pcr(0).unwrap();
        check_quote_request(&[1; 64], &[0, 7, 23]).unwrap();
        assert!(check_quote_request(&[], &[23]).is_err());
        assert!(check_quote_request(&[1; 65], &[23]).is_err());
        assert!(check_quote_request(&[1], &[]).is_err());
        assert!(check_quote_request(&[1], &[23, 23]).is_err());
        assert!(check_quote_request(&[1], &[24]).is_err());
        assert!(check_quote_request(&[1], &[0; 25]).is_err());
    }

    /// Found by attest/fuzz's keyd_protocol: `{"07": a, "7": b}` parsed to one PCR 7,
    /// dropping a carried value.
    #[test]
    fn quote_pcr_numbers_are_canonical() {
        let zero = "00".repeat(32);
        let wire = |keys: &[&str]| {
            let pcrs = keys.iter().map(|k| (k.to_string(), zero.clone())).collect();
            quote_from_wire("AA==".into(), "AA==".into(), pcrs)
        };
        for keys in [&["07", "7"][..], &["07"], &["+7"], &[" 7"], &["4294967296"]] {
            assert!(wire(keys).is_err(), "{keys:?}");
        }
        let q = wire(&["0", "7", "23"]).unwrap();
        assert_eq!(q.pcrs.keys().copied().collect::<Vec<_>>(), vec![0, 7, 23]);
        let Response::Quote { pcrs, .. } = quote_to_wire(q) else {
            panic!("not a quote");
        };
        assert_eq!(pcrs.keys().collect::<Vec<_>>(), vec!["0", "23", "7"]);
    }

    #[tokio::test]
    async fn oversized_frames_are_refused_before_allocation() {
        let mut data: &[u8] = &[0xff, 0xff, 0xff, 0xff];
        assert!(matches!(
            read_frame(&mut data, MAX_REQUEST_BYTES).await,
            Err(FrameError::TooLarge { .. })
        ));
        let mut empty: &[u8] = &[];
        assert!(matches!(
            read_frame(&mut empty, MAX_REQUEST_BYTES).await,
            Err(FrameError::Closed)
        ));
    }
}
