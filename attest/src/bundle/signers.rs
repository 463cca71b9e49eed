//! Who signs and who verifies: a [`Signer`] (a private key, with its certificate chain for
//! the certificate method) and a [`Verifier`] (a public key, or certificate roots).

use rustls_pki_types::CertificateDer;

use super::error::BundleError;
use super::key::{self, Curve};
use base64::Engine as _;

use super::{certificate, dsse};

/// Signature files larger than this are refused before parsing. A manifest entry takes about
/// 200 bytes, so this allows models of well over 100 000 files or shards.
pub const MAX_SIGNATURE_BYTES: u64 = 32 * 1024 * 1024;

/// A signing identity: a private key, optionally with its certificate chain.
pub struct Signer {
    pub(super) key: key::PrivateKey,
    /// Signing certificate first, then the chain; empty for the key method.
    chain: Vec<CertificateDer<'static>>,
}

impl std::fmt::Debug for Signer {
    // Never print key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field(
                "method",
                &if self.chain.is_empty() {
                    "key"
                } else {
                    "certificate"
                },
            )
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// A signer for the key method, from a PEM ECDSA private key (PKCS#8 `PRIVATE KEY` or
    /// SEC1 `EC PRIVATE KEY`) on P-256, P-384 or P-521. Encrypted keys are refused.
    pub fn from_private_key_pem(pem: &str) -> Result<Self, BundleError> {
        Ok(Self {
            key: key::PrivateKey::from_pem(pem)?,
            chain: Vec::new(),
        })
    }

    /// Switches to the certificate method: `signing_cert_pem` must certify this signer's key;
    /// `chain_pem` holds the intermediates (and optionally the root), in any number,
    /// possibly none. They are embedded in the bundle in that order.
    pub fn with_certificate_chain(
        mut self,
        signing_cert_pem: &str,
        chain_pem: &str,
    ) -> Result<Self, BundleError> {
        let leaf = certificate::parse_pem_certs(signing_cert_pem, "signing certificate")?;
        let [leaf] = <[CertificateDer<'static>; 1]>::try_from(leaf).map_err(|v| {
            BundleError::MalformedPem {
                what: "signing certificate",
                detail: format!("expected exactly one certificate, found {}", v.len()),
            }
        })?;
        if certificate::leaf_public_key(&leaf)? != self.key.public_key() {
            return Err(BundleError::CertificateKeyMismatch);
        }
        let chain = certificate::parse_pem_certs(chain_pem, "certificate chain")?;
        if chain.len() + 1 > certificate::MAX_CHAIN_LEN {
            return Err(BundleError::TooLarge {
                what: "certificate chain (certificates)".to_owned(),
                size: (chain.len() + 1) as u64,
                limit: certificate::MAX_CHAIN_LEN as u64,
            });
        }
        self.chain = std::iter::once(leaf).chain(chain).collect();
        Ok(self)
    }

    /// Signs any in-toto statement into a Sigstore bundle with a DSSE envelope, exactly as a
    /// model's statement is signed (release statements, revocation lists, attestations).
    pub(crate) fn sign_statement(&self, payload: &[u8]) -> Result<Vec<u8>, BundleError> {
        let signature = self.key.sign(&dsse::pae(dsse::PAYLOAD_TYPE, payload))?;
        dsse::assemble(payload, &signature, self.verification_material()?)
    }

    pub(super) fn verification_material(&self) -> Result<dsse::VerificationMaterial, BundleError> {
        let b64 = base64::engine::general_purpose::STANDARD;
        Ok(if self.chain.is_empty() {
            dsse::VerificationMaterial {
                public_key: Some(dsse::PublicKeyIdentifier {
                    hint: Some(self.key.public_key().hint()?),
                }),
                ..Default::default()
            }
        } else {
            dsse::VerificationMaterial {
                x509_certificate_chain: Some(dsse::CertificateChain {
                    certificates: self
                        .chain
                        .iter()
                        .map(|c| dsse::RawCertificate {
                            raw_bytes: b64.encode(c.as_ref()),
                        })
                        .collect(),
                }),
                ..Default::default()
            }
        })
    }
}

/// What a bundle must be signed by.
#[derive(Debug, Clone)]
pub enum Verifier {
    /// The key method: this public key.
    PublicKey(PublicKeyVerifier),
    /// The certificate method: a chain to one of these roots.
    Certificate(CertificateVerifier),
}

/// Configuration of [`Verifier::PublicKey`].
#[derive(Debug, Clone)]
pub struct PublicKeyVerifier {
    key: key::PublicKey,
    hint: String,
}

/// Configuration of [`Verifier::Certificate`].
#[derive(Debug, Clone)]
pub struct CertificateVerifier {
    roots: certificate::Roots,
}

impl Verifier {
    /// The same verifier, checking signing certificates against these revocation lists (DER)
    /// for the certificate method; a key verifier has no certificate to revoke and is
    /// unchanged.
    pub fn with_revocation_lists(self, crls_der: &[Vec<u8>]) -> Result<Self, BundleError> {
        match self {
            Self::Certificate(v) if !crls_der.is_empty() => {
                Ok(Self::Certificate(CertificateVerifier {
                    roots: v.roots.with_crls(crls_der)?,
                }))
            }
            other => Ok(other),
        }
    }

    /// A verifier for the key method, from a PEM public key (`PUBLIC KEY`) on P-256, P-384 or
    /// P-521.
    pub fn from_public_key_pem(pem: &str) -> Result<Self, BundleError> {
        let key = key::PublicKey::from_pem(pem)?;
        let hint = key.hint()?;
        Ok(Self::PublicKey(PublicKeyVerifier { key, hint }))
    }

    /// A verifier for the certificate method: every certificate in `pem` is a root of trust.
    pub fn from_certificate_roots_pem(pem: &str) -> Result<Self, BundleError> {
        Ok(Self::Certificate(CertificateVerifier {
            roots: certificate::Roots::from_pem(pem)?,
        }))
    }

    /// Checks a Sigstore bundle carrying any in-toto statement: the envelope, the signer and
    /// the signature over the payload bytes as received. Returns the payload and the signer;
    /// the payload is trusted only after this returns.
    pub(crate) fn verify_statement(
        &self,
        bundle_json: &[u8],
    ) -> Result<(Vec<u8>, String), BundleError> {
        self.verify_bounded(bundle_json, "signed statement")
            .map(|(payload, signer)| (payload, signer.name))
    }

    /// The size bound (`what` names the document in the error), the envelope parsed and its
    /// signature verified over the exact bytes: the payload, not yet parsed, and the signer.
    pub(super) fn verify_bounded(
        &self,
        bundle_json: &[u8],
        what: &str,
    ) -> Result<(Vec<u8>, SignedBy), BundleError> {
        if bundle_json.len() as u64 > MAX_SIGNATURE_BYTES {
            return Err(BundleError::TooLarge {
                what: what.to_owned(),
                size: bundle_json.len() as u64,
                limit: MAX_SIGNATURE_BYTES,
            });
        }
        let bundle = dsse::parse(bundle_json)?;
        let signer = self.verify_envelope(&bundle)?;
        Ok((bundle.payload, signer))
    }

    /// Checks the signer and the signature over the payload; returns who signed it.
    fn verify_envelope(&self, bundle: &dsse::ParsedBundle) -> Result<SignedBy, BundleError> {
        let m = &bundle.material;
        let found = if m.x509_certificate_chain.is_some() {
            "certificate"
        } else if m.public_key.is_some() {
            "key"
        } else if m.certificate.is_some() {
            "sigstore (single certificate)"
        } else {
            "unknown"
        };
        let message = dsse::pae(dsse::PAYLOAD_TYPE, &bundle.payload);
        match self {
            Self::PublicKey(v) => {
                let Some(pk) = &m.public_key else {
                    return Err(BundleError::WrongVerificationMaterial {
                        expected: "key",
                        found,
                    });
                };
                if m.x509_certificate_chain.is_some() {
                    return Err(BundleError::WrongVerificationMaterial {
                        expected: "key",
                        found,
                    });
                }
                // Bundles from model_signing < 1.0 carry no hint; the signature still decides.
                if let Some(hint) = &pk.hint
                    && *hint != v.hint
                {
                    return Err(BundleError::WrongKey {
                        bundle_hint: hint.clone(),
                        verifier_hint: v.hint.clone(),
                    });
                }
                let signer = format!("key {}", v.hint);
                if !v.key.verify(&message, &bundle.signature) {
                    return Err(BundleError::BadSignature { signer });
                }
                Ok(SignedBy {
                    name: signer,
                    valid_until: None,
                })
            }
            Self::Certificate(v) => {
                let Some(chain) = &m.x509_certificate_chain else {
                    return Err(BundleError::WrongVerificationMaterial {
                        expected: "certificate",
                        found,
                    });
                };
                if chain.certificates.len() > certificate::MAX_CHAIN_LEN {
                    return Err(BundleError::TooLarge {
                        what: "certificate chain (certificates)".to_owned(),
                        size: chain.certificates.len() as u64,
                        limit: certificate::MAX_CHAIN_LEN as u64,
                    });
                }
                let ders = chain
                    .certificates
                    .iter()
                    .map(|c| {
                        dsse::decode_b64("x509CertificateChain.certificates.rawBytes", &c.raw_bytes)
                            .map(CertificateDer::from)
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let (key, subject, valid_until) = certificate::verify_chain(&v.roots, &ders)?;
                if !key.verify(&message, &bundle.signature) {
                    return Err(BundleError::BadSignature { signer: subject });
                }
                Ok(SignedBy {
                    name: subject,
                    valid_until: Some(valid_until),
                })
            }
        }
    }
}

/// Checks that `der` is a certificate revocation list that verification can use (its
/// signature is checked against the issuing CA when a certificate is verified).
pub fn check_revocation_list(der: &[u8]) -> Result<(), BundleError> {
    webpki::OwnedCertRevocationList::from_der(der)
        .map(|_| ())
        .map_err(|e| BundleError::MalformedCrl {
            detail: e.to_string(),
        })
}

/// Who signed a verified envelope.
pub(crate) struct SignedBy {
    /// `key <hint>`, or the signing certificate's subject.
    pub(crate) name: String,
    /// For a certificate: when its verified chain stops being valid (Unix seconds).
    pub(crate) valid_until: Option<u64>,
}

/// Generates an ECDSA key pair: (PKCS#8 PEM private key, PEM public key). For development
/// signers (`warden demo`); production keys live in the key store.
pub fn generate_private_key_pem(curve: Curve) -> Result<(String, String), BundleError> {
    let k = key::PrivateKey::generate(curve);
    Ok((k.to_pkcs8_pem()?, k.public_key().to_pem()?))
}
