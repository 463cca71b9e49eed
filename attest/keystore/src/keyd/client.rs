//! [`KeydClient`]: the key store as seen from the agent when keyd holds the hardware. It
//! implements [`KeyStore`], so `KeyStoreSigningKey`, revocation's counter and admission work
//! unchanged over the socket.
//!
//! Calls are blocking (the trait is), one at a time over one connection, reconnecting once
//! when the connection broke (signing twice, reading, quoting, or advancing a counter to the
//! same value are idempotent). `extend_pcr` is not: extending twice moves the PCR away from
//! the event log for good. It is sent once, on a fresh connection (never one that keyd may
//! have closed while idle), and a broken connection is reported, not retried. Each call has
//! [`CALL_TIMEOUT`].

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use crate::attestation::Quote;
use crate::{BackendInfo, Capabilities, Counter, KeyStore, KeyStoreError, Role};
use p256::pkcs8::DecodePublicKey as _;
use zeroize::{Zeroize as _, Zeroizing};

use super::protocol::{
    ErrorKind, FrameError, MAX_RESPONSE_BYTES, Request, Response, b64, quote_from_wire,
    read_frame_blocking, unb64, write_frame_blocking,
};

/// The longest one call may take (a hardware TPM is slow, but not this slow).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A key store behind `warden keyd`.
pub struct KeydClient {
    socket: PathBuf,
    info: BackendInfo,
    capabilities: Capabilities,
    conn: Mutex<Option<UnixStream>>,
}

impl std::fmt::Debug for KeydClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeydClient")
            .field("socket", &self.socket)
            .field("backend", &self.info.kind)
            .finish_non_exhaustive()
    }
}

fn remote(socket: &Path, detail: impl std::fmt::Display) -> KeyStoreError {
    KeyStoreError::Config {
        detail: format!("key service at {}: {detail}", socket.display()),
    }
}

/// A backend kind from the wire as the trait's `&'static str`.
fn static_kind(kind: &str) -> &'static str {
    match kind {
        "tpm" => "tpm",
        "pkcs11" => "pkcs11",
        "software" => "software",
        _ => "unknown",
    }
}

impl KeydClient {
    /// Connects and asks keyd what it serves. Fails when keyd is not running or refuses this
    /// process's UID.
    pub fn connect(socket: &Path) -> Result<Self, KeyStoreError> {
        let mut client = Self {
            socket: socket.to_path_buf(),
            info: BackendInfo {
                kind: "unknown",
                location: String::new(),
                development_only: false,
            },
            capabilities: Capabilities::default(),
            conn: Mutex::new(None),
        };
        match client.call(&Request::Describe {})? {
            Response::Describe {
                kind,
                location,
                development_only,
                capabilities,
            } => {
                client.info = BackendInfo {
                    kind: static_kind(&kind),
                    location: format!("{location} (through keyd at {})", socket.display()),
                    development_only,
                };
                client.capabilities = capabilities;
                Ok(client)
            }
            other => Err(client.unexpected(&other)),
        }
    }

    fn open(&self) -> Result<UnixStream, KeyStoreError> {
        let s = UnixStream::connect(&self.socket).map_err(|e| remote(&self.socket, e))?;
        s.set_read_timeout(Some(CALL_TIMEOUT))
            .and_then(|()| s.set_write_timeout(Some(CALL_TIMEOUT)))
            .map_err(|e| remote(&self.socket, e))?;
        Ok(s)
    }

    fn round_trip(stream: &mut UnixStream, body: &[u8]) -> Result<Vec<u8>, FrameError> {
        match write_frame_blocking(stream, body) {
            Ok(()) => {}
            // keyd refuses a caller that is no principal with one frame and closes the
            // connection without reading: the write may fail after that frame arrived. Read
            // it (the peer is gone, so this does not wait); without it, report the write.
            Err(FrameError::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
                ) =>
            {
                return read_frame_blocking(stream, MAX_RESPONSE_BYTES)
                    .map_err(|_| FrameError::Io(e));
            }
            Err(e) => return Err(e),
        }
        read_frame_blocking(stream, MAX_RESPONSE_BYTES)
    }

    /// One request, one response; a response of type `error` becomes a [`KeyStoreError`].
    fn call(&self, request: &Request) -> Result<Response, KeyStoreError> {
        let body = serde_json::to_vec(request).map_err(|e| remote(&self.socket, e))?;
        let mut guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let once = matches!(request, Request::ExtendPcr { .. });
        if once {
            *guard = None;
        }
        let mut reply = None;
        let mut last = String::new();
        for _attempt in 0..(if once { 1 } else { 2 }) {
            let mut stream = match guard.take() {
                Some(s) => s,
                None => self.open()?,
            };
            match Self::round_trip(&mut stream, &body) {
                Ok(r) => {
                    *guard = Some(stream);
                    reply = Some(Zeroizing::new(r));
                    break;
                }
                Err(e) => last = e.to_string(),
            }
        }
        drop(guard);
        let reply = reply.ok_or_else(|| remote(&self.socket, last))?;
        let response: Response = serde_json::from_slice(&reply)
            .map_err(|e| remote(&self.socket, format!("malformed response: {e}")))?;
        match response {
            Response::Error {
                kind,
                message,
                current,
                requested,
            } => Err(self.error(request, kind, message, current, requested)),
            ok => Ok(ok),
        }
    }

    fn error(
        &self,
        request: &Request,
        kind: ErrorKind,
        message: String,
        current: Option<u64>,
        requested: Option<u64>,
    ) -> KeyStoreError {
        let counter = match request {
            Request::Counter { counter } | Request::AdvanceCounter { counter, .. } => {
                Some(Counter::from(*counter))
            }
            _ => None,
        };
        match (kind, counter, current, requested) {
            (ErrorKind::NotSupported, ..) => KeyStoreError::NotSupported {
                backend: self.info.kind,
                operation: request.operation().name(),
            },
            (ErrorKind::NotProvisioned, ..) => KeyStoreError::NotProvisioned {
                what: match request {
                    Request::Unseal { .. } => "the seal key",
                    Request::Quote { .. }
                    | Request::AttestationIdentity {}
                    | Request::ActivateCredential { .. } => "the attestation key",
                    _ => "device key",
                },
            },
            (ErrorKind::CounterRollback, Some(counter), Some(current), Some(requested)) => {
                KeyStoreError::CounterRollback {
                    counter,
                    current,
                    requested,
                }
            }
            (ErrorKind::CounterStepTooLarge, Some(counter), Some(current), Some(requested)) => {
                KeyStoreError::CounterStepTooLarge {
                    counter,
                    current,
                    requested,
                    limit: crate::MAX_COUNTER_STEP,
                }
            }
            (ErrorKind::UnsealRefused, ..) => KeyStoreError::UnsealRefused {
                backend: self.info.kind,
                detail: message,
            },
            (ErrorKind::InvalidInput, ..) => KeyStoreError::InvalidInput { detail: message },
            (ErrorKind::Unauthorized | ErrorKind::Forbidden, ..) => remote(
                &self.socket,
                format!(
                    "{message}; add this process's uid and the operation to a [[principal]] of keyd.toml"
                ),
            ),
            _ => remote(&self.socket, message),
        }
    }

    fn unexpected(&self, r: &Response) -> KeyStoreError {
        remote(&self.socket, format!("unexpected response {r:?}"))
    }
}

impl KeyStore for KeydClient {
    fn describe(&self) -> BackendInfo {
        self.info.clone()
    }

    fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    fn anchors(&self, role: Role) -> Result<Option<Vec<u8>>, KeyStoreError> {
        match self.call(&Request::Anchors { role: role.into() })? {
            Response::Anchors { pem: None } => Ok(None),
            Response::Anchors { pem: Some(p) } => unb64("pem", &p)
                .map(Some)
                .map_err(|e| remote(&self.socket, e)),
            other => Err(self.unexpected(&other)),
        }
    }

    fn device_public_key(&self) -> Result<p256::PublicKey, KeyStoreError> {
        match self.call(&Request::DevicePublicKey {})? {
            Response::PublicKey { spki } => {
                let der = unb64("spki", &spki).map_err(|e| remote(&self.socket, e))?;
                p256::PublicKey::from_public_key_der(&der).map_err(|e| {
                    KeyStoreError::InvalidInput {
                        detail: format!("keyd sent a device key that is not P-256: {e}"),
                    }
                })
            }
            other => Err(self.unexpected(&other)),
        }
    }

    fn sign(&self, message: &[u8]) -> Result<p256::ecdsa::Signature, KeyStoreError> {
        match self.call(&Request::Sign {
            message: b64(message),
        })? {
            Response::Signature { der } => {
                let der = unb64("der", &der).map_err(|e| remote(&self.socket, e))?;
                p256::ecdsa::Signature::from_der(&der).map_err(|e| KeyStoreError::InvalidInput {
                    detail: format!("keyd sent a signature that is not DER ECDSA: {e}"),
                })
            }
            other => Err(self.unexpected(&other)),
        }
    }

    fn unseal(&self, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyStoreError> {
        match self.call(&Request::Unseal { blob: b64(blob) })? {
            Response::Unsealed { mut secret } => {
                let decoded = unb64("secret", &secret).map(Zeroizing::new);
                secret.zeroize();
                decoded.map_err(|e| remote(&self.socket, e))
            }
            other => Err(self.unexpected(&other)),
        }
    }

    fn counter(&self, counter: Counter) -> Result<u64, KeyStoreError> {
        match self.call(&Request::Counter {
            counter: counter.into(),
        })? {
            Response::Counter { value } => Ok(value),
            other => Err(self.unexpected(&other)),
        }
    }

    fn advance_counter(&self, counter: Counter, to: u64) -> Result<u64, KeyStoreError> {
        match self.call(&Request::AdvanceCounter {
            counter: counter.into(),
            to,
        })? {
            Response::Counter { value } => Ok(value),
            other => Err(self.unexpected(&other)),
        }
    }

    fn extend_pcr(&self, pcr: u32, digest: [u8; 32]) -> Result<(), KeyStoreError> {
        match self.call(&Request::ExtendPcr {
            pcr,
            digest: b64(&digest),
        })? {
            Response::Extended {} => Ok(()),
            other => Err(self.unexpected(&other)),
        }
    }

    fn read_pcr(&self, pcr: u32) -> Result<[u8; 32], KeyStoreError> {
        match self.call(&Request::ReadPcr { pcr })? {
            Response::Pcr { value } => {
                let bytes = unb64("value", &value).map_err(|e| remote(&self.socket, e))?;
                <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| KeyStoreError::InvalidInput {
                    detail: format!("keyd sent a PCR value of {} bytes, not 32", bytes.len()),
                })
            }
            other => Err(self.unexpected(&other)),
        }
    }

    fn quote(&self, nonce: &[u8], pcrs: &[u32]) -> Result<Quote, KeyStoreError> {
        match self.call(&Request::Quote {
            nonce: b64(nonce),
            pcrs: pcrs.to_vec(),
        })? {
            Response::Quote {
                attest,
                signature,
                pcrs,
            } => quote_from_wire(attest, signature, pcrs).map_err(|e| remote(&self.socket, e)),
            other => Err(self.unexpected(&other)),
        }
    }

    fn attestation_identity(&self) -> Result<crate::attestation::DeviceIdentity, KeyStoreError> {
        use p256::pkcs8::DecodePublicKey as _;
        match self.call(&Request::AttestationIdentity {})? {
            Response::Identity {
                endorsement_key,
                ak_public_area,
                ek_certificate,
            } => {
                let der = unb64("endorsement_key", &endorsement_key)
                    .map_err(|e| remote(&self.socket, e))?;
                let endorsement_key = p256::PublicKey::from_public_key_der(&der)
                    .map_err(|e| remote(&self.socket, format!("endorsement key: {e}")))?;
                let ak_public_area = unb64("ak_public_area", &ak_public_area)
                    .map_err(|e| remote(&self.socket, e))?;
                let ek_certificate = ek_certificate
                    .map(|c| unb64("ek_certificate", &c))
                    .transpose()
                    .map_err(|e| remote(&self.socket, e))?;
                Ok(crate::attestation::DeviceIdentity {
                    endorsement_key,
                    ak_public_area,
                    ek_certificate,
                })
            }
            other => Err(self.unexpected(&other)),
        }
    }

    fn activate_credential(
        &self,
        challenge: &crate::attestation::Challenge,
    ) -> Result<Vec<u8>, KeyStoreError> {
        match self.call(&Request::ActivateCredential {
            credential_blob: b64(&challenge.credential_blob),
            encrypted_seed: b64(&challenge.encrypted_seed),
        })? {
            Response::Credential { secret } => {
                unb64("secret", &secret).map_err(|e| remote(&self.socket, e))
            }
            other => Err(self.unexpected(&other)),
        }
    }
}
