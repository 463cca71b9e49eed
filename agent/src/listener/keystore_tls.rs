//! The HTTPS listener's TLS configuration with the server key in the key store: handshakes are
//! signed by the TPM/HSM (in-process or through keyd) via
//! [`warden_keystore::tls::KeyStoreSigningKey`], so no private key file exists on
//! disk. Same protocol versions, ALPN and client-certificate verification as
//! [`crate::listener::tls::server_config`]; only the source of the server key differs.
//!
//! The certificate chain (leaf first) is the device CA's answer to the CSR that
//! `warden provision --csr` wrote; its public key must be the device key, which is checked
//! here so that a mismatched certificate fails at start, not at the first handshake.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::sign::CertifiedKey;
use warden_keystore::KeyStore;
use warden_keystore::tls::KeyStoreSigningKey;

use crate::config::TlsConfig;
use crate::listener::tls::{ListenerTls, TlsError, builder_with_client_auth, load_certificates};

/// Why the TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsKeyStoreError {
    /// Certificates (chain or client CAs) and the protocol setup.
    #[error(transparent)]
    Pem(#[from] TlsError),
    /// The key store has no usable device key.
    #[error("the key store's device key: {0}")]
    KeyStore(#[from] warden_keystore::KeyStoreError),
    /// The leaf certificate does not certify the device key.
    #[error("{path}: the leaf certificate's key is not the key store's device key")]
    KeyMismatch {
        /// The chain file.
        path: PathBuf,
    },
}

/// rustls signs synchronously inside the handshake future, and a key store signature is a
/// TPM/HSM command or a round trip to keyd (milliseconds, up to a second on a slow TPM). On a
/// multi-threaded tokio runtime the call is wrapped in `block_in_place`, so the worker's other
/// tasks move to another worker instead of waiting behind the signature (without it, a task
/// parked in the worker's LIFO slot, e.g. an in-process keyd's connection, waits until the
/// signature returns: a deadlock when that task is the one that signs).
#[derive(Debug)]
struct OffTheReactor(Arc<dyn KeyStore>);

impl KeyStore for OffTheReactor {
    fn describe(&self) -> warden_keystore::BackendInfo {
        self.0.describe()
    }

    fn capabilities(&self) -> warden_keystore::Capabilities {
        self.0.capabilities()
    }

    fn device_public_key(&self) -> Result<p256::PublicKey, warden_keystore::KeyStoreError> {
        self.0.device_public_key()
    }

    fn sign(
        &self,
        message: &[u8],
    ) -> Result<p256::ecdsa::Signature, warden_keystore::KeyStoreError> {
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if multi_thread {
            tokio::task::block_in_place(|| self.0.sign(message))
        } else {
            self.0.sign(message)
        }
    }
}

/// Where the listener's identity comes from.
#[derive(Debug, Clone)]
pub struct KeyStoreTlsConfig<'a> {
    /// PEM chain for the device key, leaf first.
    pub certificate: &'a Path,
    /// PEM CAs that client certificates must chain to; `None` only with the insecure opt-in.
    pub client_ca: Option<&'a Path>,
    /// Revocation lists for client certificates (`tls.client_crls`).
    pub client_crls: &'a [PathBuf],
    /// Accept clients without a certificate (the same opt-in as
    /// `tls.insecure_allow_anonymous_clients`).
    pub insecure_allow_anonymous_clients: bool,
}

/// A rustls server configuration whose handshake signatures come from `store`'s device key.
pub fn server_config(
    cfg: &KeyStoreTlsConfig<'_>,
    store: Arc<dyn KeyStore>,
) -> Result<ListenerTls, TlsKeyStoreError> {
    let (builder, client_verifier) = builder_with_client_auth(
        cfg.client_ca,
        cfg.client_crls,
        cfg.insecure_allow_anonymous_clients,
    )?;
    let chain = load_certificates(cfg.certificate)?;
    let key = KeyStoreSigningKey::new(Arc::new(OffTheReactor(store)))?;
    let certified = CertifiedKey::new(chain, Arc::new(key));
    // The leaf must certify the device key (rustls compares the SPKIs).
    certified
        .keys_match()
        .map_err(|_| TlsKeyStoreError::KeyMismatch {
            path: cfg.certificate.to_path_buf(),
        })?;
    let mut config = builder.with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(
        Arc::new(certified),
    )));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(ListenerTls {
        config: Arc::new(config),
        client_verifier,
    })
}

/// The listener's TLS configuration: the key file when `tls.private_key` names one, else the
/// key store's device key (the TPM/HSM signs every handshake). Every HTTPS listener of the
/// agent builds its configuration here.
pub fn listener_config(
    tls: &TlsConfig,
    store: Option<&Arc<dyn KeyStore>>,
) -> Result<ListenerTls, TlsKeyStoreError> {
    match (&tls.private_key, store) {
        (None, Some(store)) => server_config(
            &KeyStoreTlsConfig {
                certificate: &tls.certificate,
                client_ca: tls.client_ca.as_deref(),
                client_crls: &tls.client_crls,
                insecure_allow_anonymous_clients: tls.insecure_allow_anonymous_clients,
            },
            store.clone(),
        ),
        _ => Ok(crate::listener::tls::server_config(tls)?),
    }
}
