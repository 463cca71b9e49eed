//! A rustls signing key backed by the key store's device key, so the HTTPS listener signs its
//! handshakes through the TPM or HSM and no private key file exists on disk.
//!
//! It offers ECDSA P-256 with SHA-256 (`ecdsa_secp256r1_sha256`), valid in TLS 1.3 and 1.2.
//! Use it with a certificate for the device key (`warden provision` issues the CSR):
//! `rustls::sign::CertifiedKey::new(chain, Arc::new(KeyStoreSigningKey::new(store)?))`.

use std::sync::Arc;

use p256::pkcs8::EncodePublicKey as _;
use rustls::pki_types::SubjectPublicKeyInfoDer;
use rustls::sign::{Signer, SigningKey};
use rustls::{SignatureAlgorithm, SignatureScheme};

use crate::{KeyStore, KeyStoreError};

/// The device key of a key store as a rustls [`SigningKey`].
#[derive(Debug, Clone)]
pub struct KeyStoreSigningKey {
    store: Arc<dyn KeyStore>,
    spki: Vec<u8>,
}

impl KeyStoreSigningKey {
    /// Wraps the store's device key (which must exist: see [`KeyStore::ensure_device_key`]).
    pub fn new(store: Arc<dyn KeyStore>) -> Result<Self, KeyStoreError> {
        let public = store.device_public_key()?;
        let spki = public
            .to_public_key_der()
            .map_err(|e| KeyStoreError::InvalidInput {
                detail: format!("encoding the device public key: {e}"),
            })?
            .into_vec();
        Ok(Self { store, spki })
    }
}

impl SigningKey for KeyStoreSigningKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        offered
            .contains(&SignatureScheme::ECDSA_NISTP256_SHA256)
            .then(|| {
                Box::new(KeyStoreSigner {
                    store: Arc::clone(&self.store),
                }) as Box<dyn Signer>
            })
    }

    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        Some(SubjectPublicKeyInfoDer::from(self.spki.as_slice()))
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::ECDSA
    }
}

#[derive(Debug)]
struct KeyStoreSigner {
    store: Arc<dyn KeyStore>,
}

impl Signer for KeyStoreSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        // TLS carries ECDSA signatures DER-encoded.
        self.store
            .sign(message)
            .map(|sig| sig.to_der().as_bytes().to_vec())
            .map_err(|e| {
                tracing::error!(error = %e, "the key store refused a TLS handshake signature");
                rustls::Error::General(format!("key store signature failed: {e}"))
            })
    }

    fn scheme(&self) -> SignatureScheme {
        SignatureScheme::ECDSA_NISTP256_SHA256
    }
}
