//! The key service's listener.
//!
//! Per connection, in this order: the kernel's peer credentials (`SO_PEERCRED`) name the
//! caller's UID; a UID that is no principal gets one `unauthorized` error frame and the
//! connection closes before any request is read. Then, per request: read one bounded frame
//! (an idle connection is closed after [`IDLE_TIMEOUT`]; an oversized frame gets
//! `frame_too_large` and the connection closes); parse it (`malformed_request` and the
//! connection stays usable, the framing being intact); check the operation against the
//! principal's allow-list (`forbidden`); check the request's bounds (`invalid_input`: PCR
//! indices, the extendable PCRs, digest and nonce sizes, the quote's selection; see
//! [`warden_keystore::keyd::protocol`]); run the key store call on the blocking pool.
//! At most [`MAX_CONNECTIONS`] connections are served at once; further ones wait in the
//! kernel's backlog. Logs name the principal, the UID and the operation, never data.

use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use p256::pkcs8::EncodePublicKey as _;
use tokio::net::{UnixListener, UnixStream};
use warden_keystore::KeyStore;
use zeroize::Zeroizing;

use crate::config::{KeydConfig, Principal};
use warden_keystore::keyd::protocol::{
    ErrorKind, FrameError, MAX_REQUEST_BYTES, MAX_SIGN_MESSAGE, Request, Response, b64,
    check_extendable_pcr, check_pcr, check_quote_request, quote_to_wire, read_frame, unb64,
    write_frame,
};

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// An idle connection is closed after this.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The socket's mode: the key service's user and group.
pub const SOCKET_MODE: u32 = 0o660;

/// Binds the socket (replacing a stale socket file, never another kind of file) with mode
/// [`SOCKET_MODE`].
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    bind_with_group(path, None)
}

/// [`bind`], then gives the socket to `group` (keyd's user must be a member), so that the
/// group's members may connect. Nothing is accepted before this returns.
pub fn bind_with_group(path: &Path, group: Option<u32>) -> std::io::Result<UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))?;
    if let Some(gid) = group {
        std::os::unix::fs::chown(path, None, Some(gid)).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!(
                    "giving {} to group {gid} (keyd's user must be a member): {e}",
                    path.display()
                ),
            )
        })?;
    }
    Ok(listener)
}

/// Serves until `shutdown` completes.
pub async fn serve(
    listener: UnixListener,
    config: Arc<KeydConfig>,
    store: Arc<dyn KeyStore>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            p = Arc::clone(&slots).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "keyd: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let config = Arc::clone(&config);
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            connection(stream, &config, store).await;
            drop(permit);
        });
    }
}

async fn send(stream: &mut UnixStream, response: &Response) -> bool {
    let body = match serde_json::to_vec(response) {
        Ok(b) => Zeroizing::new(b),
        Err(e) => {
            tracing::error!(error = %e, "keyd: response does not serialize");
            return false;
        }
    };
    write_frame(stream, &body).await.is_ok()
}

async fn connection(mut stream: UnixStream, config: &KeydConfig, store: Arc<dyn KeyStore>) {
    let uid = match stream.peer_cred() {
        Ok(c) => c.uid(),
        Err(e) => {
            tracing::warn!(error = %e, "keyd: no peer credentials; connection closed");
            return;
        }
    };
    let Some(principal) = config.principal(uid).cloned() else {
        tracing::warn!(uid, "keyd: refused a caller that is no principal");
        send(
            &mut stream,
            &Response::error(
                ErrorKind::Unauthorized,
                format!("uid {uid} is not a principal of this key service"),
            ),
        )
        .await;
        return;
    };
    loop {
        let frame = match tokio::time::timeout(
            IDLE_TIMEOUT,
            read_frame(&mut stream, MAX_REQUEST_BYTES),
        )
        .await
        {
            Err(_) | Ok(Err(FrameError::Closed)) => return,
            Ok(Err(FrameError::TooLarge { size, limit })) => {
                tracing::warn!(principal = %principal.name, uid, size, "keyd: oversized frame; connection closed");
                send(
                    &mut stream,
                    &Response::error(
                        ErrorKind::FrameTooLarge,
                        format!("a request holds at most {limit} bytes, not {size}"),
                    ),
                )
                .await;
                return;
            }
            Ok(Err(FrameError::Io(e))) => {
                tracing::debug!(error = %e, "keyd: connection ended");
                return;
            }
            Ok(Ok(f)) => f,
        };
        let response = match serde_json::from_slice::<Request>(&frame) {
            Err(e) => Response::error(ErrorKind::MalformedRequest, format!("request: {e}")),
            Ok(request) => handle(request, &principal, uid, &store).await,
        };
        if !send(&mut stream, &response).await {
            return;
        }
    }
}

async fn handle(
    request: Request,
    principal: &Principal,
    uid: u32,
    store: &Arc<dyn KeyStore>,
) -> Response {
    let op = request.operation();
    if !principal.operations.contains(&op) {
        tracing::warn!(principal = %principal.name, uid, operation = op.name(), "keyd: operation not allowed");
        return Response::error(
            ErrorKind::Forbidden,
            format!("principal {:?} may not call {}", principal.name, op.name()),
        );
    }
    match &request {
        // The ones that change or attest the device's measured state are worth an info line.
        Request::ExtendPcr { pcr, .. } => {
            tracing::info!(principal = %principal.name, uid, pcr, "keyd: extend_pcr");
        }
        Request::Quote { pcrs, .. } => {
            tracing::info!(principal = %principal.name, uid, ?pcrs, "keyd: quote");
        }
        Request::ActivateCredential { .. } | Request::AttestationIdentity {} => {
            tracing::info!(principal = %principal.name, uid, operation = op.name(), "keyd: enrolment");
        }
        _ => {
            tracing::debug!(principal = %principal.name, uid, operation = op.name(), "keyd: request");
        }
    }
    let store = Arc::clone(store);
    match tokio::task::spawn_blocking(move || execute(request, store.as_ref())).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "keyd: key store task failed");
            Response::error(ErrorKind::Internal, "the key store task failed")
        }
    }
}

fn execute(request: Request, store: &dyn KeyStore) -> Response {
    let ks = |e: warden_keystore::KeyStoreError| Response::from_keystore(&e);
    match request {
        Request::Describe {} => {
            let info = store.describe();
            Response::Describe {
                kind: info.kind.to_owned(),
                location: info.location,
                development_only: info.development_only,
                capabilities: store.capabilities(),
            }
        }
        Request::DevicePublicKey {} => match store.device_public_key() {
            Ok(pk) => match pk.to_public_key_der() {
                Ok(der) => Response::PublicKey {
                    spki: b64(der.as_bytes()),
                },
                Err(e) => Response::error(ErrorKind::Internal, format!("encoding: {e}")),
            },
            Err(e) => ks(e),
        },
        Request::Sign { message } => {
            let message = match unb64("message", &message) {
                Ok(m) => m,
                Err(e) => return Response::error(ErrorKind::MalformedRequest, e),
            };
            if message.len() > MAX_SIGN_MESSAGE {
                return Response::error(
                    ErrorKind::InvalidInput,
                    format!(
                        "a message to sign holds at most {MAX_SIGN_MESSAGE} bytes, not {}",
                        message.len()
                    ),
                );
            }
            match store.sign(&message) {
                Ok(sig) => Response::Signature {
                    der: b64(sig.to_der().as_bytes()),
                },
                Err(e) => ks(e),
            }
        }
        Request::Anchors { role } => match store.anchors(role.into()) {
            Ok(pem) => Response::Anchors {
                pem: pem.map(|p| b64(&p)),
            },
            Err(e) => ks(e),
        },
        Request::Unseal { blob } => {
            let blob = match unb64("blob", &blob) {
                Ok(b) => b,
                Err(e) => return Response::error(ErrorKind::MalformedRequest, e),
            };
            match store.unseal(&blob) {
                Ok(secret) => Response::Unsealed {
                    secret: b64(&secret),
                },
                Err(e) => ks(e),
            }
        }
        Request::Counter { counter } => match store.counter(counter.into()) {
            Ok(value) => Response::Counter { value },
            Err(e) => ks(e),
        },
        Request::AdvanceCounter { counter, to } => {
            match store.advance_counter(counter.into(), to) {
                Ok(value) => Response::Counter { value },
                Err(e) => ks(e),
            }
        }
        Request::ExtendPcr { pcr, digest } => {
            if let Err(e) = check_extendable_pcr(pcr) {
                return Response::error(ErrorKind::InvalidInput, e);
            }
            let digest = match unb64("digest", &digest) {
                Ok(d) => d,
                Err(e) => return Response::error(ErrorKind::MalformedRequest, e),
            };
            let Ok(digest) = <[u8; 32]>::try_from(digest.as_slice()) else {
                return Response::error(
                    ErrorKind::InvalidInput,
                    format!(
                        "a PCR is extended with a 32-byte SHA-256 digest, not {} bytes",
                        digest.len()
                    ),
                );
            };
            match store.extend_pcr(pcr, digest) {
                Ok(()) => Response::Extended {},
                Err(e) => ks(e),
            }
        }
        Request::ReadPcr { pcr } => {
            if let Err(e) = check_pcr(pcr) {
                return Response::error(ErrorKind::InvalidInput, e);
            }
            match store.read_pcr(pcr) {
                Ok(value) => Response::Pcr { value: b64(&value) },
                Err(e) => ks(e),
            }
        }
        Request::Quote { nonce, pcrs } => {
            let nonce = match unb64("nonce", &nonce) {
                Ok(n) => n,
                Err(e) => return Response::error(ErrorKind::MalformedRequest, e),
            };
            if let Err(e) = check_quote_request(&nonce, &pcrs) {
                return Response::error(ErrorKind::InvalidInput, e);
            }
            match store.quote(&nonce, &pcrs) {
                Ok(quote) => quote_to_wire(quote),
                Err(e) => ks(e),
            }
        }
        Request::AttestationIdentity {} => match store.attestation_identity() {
            Ok(id) => match id.endorsement_key.to_public_key_der() {
                Ok(der) => Response::Identity {
                    endorsement_key: b64(der.as_bytes()),
                    ak_public_area: b64(&id.ak_public_area),
                    ek_certificate: id.ek_certificate.as_deref().map(b64),
                },
                Err(e) => Response::error(ErrorKind::Internal, format!("encoding: {e}")),
            },
            Err(e) => ks(e),
        },
        Request::ActivateCredential {
            credential_blob,
            encrypted_seed,
        } => {
            let decoded = unb64("credential_blob", &credential_blob)
                .and_then(|blob| unb64("encrypted_seed", &encrypted_seed).map(|seed| (blob, seed)));
            let (credential_blob, encrypted_seed) = match decoded {
                Ok(v) => v,
                Err(e) => return Response::error(ErrorKind::MalformedRequest, e),
            };
            let challenge = warden_keystore::attestation::Challenge {
                credential_blob,
                encrypted_seed,
            };
            match store.activate_credential(&challenge) {
                Ok(secret) => Response::Credential {
                    secret: b64(&secret),
                },
                Err(e) => ks(e),
            }
        }
    }
}
