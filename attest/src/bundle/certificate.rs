//! The certificate method: a signing certificate plus its chain in the bundle, validated to
//! configured roots.
//!
//! model_signing 1.1.1 checks the chain with OpenSSL at the leaf's *notBefore* time (so an
//! expired leaf passes) and accepts the leaf if its KeyUsage has digitalSignature *or* its
//! EKU has codeSigning. We are stricter on purpose, since a bundle is verified on every load:
//! - the whole chain must be valid now;
//! - the leaf must carry KeyUsage with digitalSignature *and* EKU with codeSigning;
//! - an intermediate that carries an EKU must include codeSigning (EKU chaining);
//! - chain path building, signatures and basic constraints are rustls-webpki's.
//!
//! Like model_signing's `X509Store`, every configured certificate is a trust anchor.

use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{
    AlgorithmIdentifier, CertificateDer, InvalidSignature, SignatureVerificationAlgorithm,
    TrustAnchor, UnixTime, alg_id,
};
use sha2::Digest as _;
use webpki::{EndEntityCert, KeyUsage};
use x509_parser::prelude::{FromDer as _, X509Certificate};
use x509_parser::time::ASN1Time;

use super::error::BundleError;
use super::key::PublicKey;

/// id-kp-codeSigning (1.3.6.1.5.5.7.3.3), DER content octets.
const EKU_CODE_SIGNING: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x03];

/// Bound on the chain carried in a bundle: path building is exponential in the worst case.
pub(crate) const MAX_CHAIN_LEN: usize = 8;

/// CA signature algorithms accepted in a chain. ring has no P-521, so that one is ours.
pub(crate) static ALGORITHMS: &[&dyn SignatureVerificationAlgorithm] = &[
    webpki::ring::ECDSA_P256_SHA256,
    webpki::ring::ECDSA_P256_SHA384,
    webpki::ring::ECDSA_P384_SHA256,
    webpki::ring::ECDSA_P384_SHA384,
    &EcdsaP521Sha512,
    webpki::ring::ED25519,
    webpki::ring::RSA_PKCS1_2048_8192_SHA256,
    webpki::ring::RSA_PKCS1_2048_8192_SHA384,
    webpki::ring::RSA_PKCS1_2048_8192_SHA512,
    webpki::ring::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
    webpki::ring::RSA_PSS_2048_8192_SHA384_LEGACY_KEY,
    webpki::ring::RSA_PSS_2048_8192_SHA512_LEGACY_KEY,
];

/// ECDSA P-521 with SHA-512 on RustCrypto, for CAs with P-521 keys.
#[derive(Debug)]
struct EcdsaP521Sha512;

impl SignatureVerificationAlgorithm for EcdsaP521Sha512 {
    fn verify_signature(
        &self,
        public_key: &[u8],
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), InvalidSignature> {
        use p256::ecdsa::signature::hazmat::PrehashVerifier as _;
        let key =
            p521::ecdsa::VerifyingKey::from_sec1_bytes(public_key).map_err(|_| InvalidSignature)?;
        let sig = p521::ecdsa::Signature::from_der(signature).map_err(|_| InvalidSignature)?;
        key.verify_prehash(&sha2::Sha512::digest(message), &sig)
            .map_err(|_| InvalidSignature)
    }
    fn public_key_alg_id(&self) -> AlgorithmIdentifier {
        alg_id::ECDSA_P521
    }
    fn signature_alg_id(&self) -> AlgorithmIdentifier {
        alg_id::ECDSA_SHA512
    }
}

/// Parses every `CERTIFICATE` block in PEM text.
pub(crate) fn parse_pem_certs(
    pem: &str,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, BundleError> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| BundleError::MalformedPem {
            what,
            detail: e.to_string(),
        })
}

/// Configured roots of trust, and the revocation lists of the CAs that issue signing
/// certificates.
#[derive(Debug, Clone)]
pub(crate) struct Roots {
    anchors: Vec<TrustAnchor<'static>>,
    crls: std::sync::Arc<Vec<webpki::CertRevocationList<'static>>>,
}

impl Roots {
    pub(crate) fn anchors(&self) -> &[TrustAnchor<'static>] {
        &self.anchors
    }

    pub(crate) fn from_pem(pem: &str) -> Result<Self, BundleError> {
        let certs = parse_pem_certs(pem, "root certificate")?;
        if certs.is_empty() {
            return Err(BundleError::NoRoots {
                detail: "no CERTIFICATE block in the PEM text".to_owned(),
            });
        }
        let anchors = certs
            .iter()
            .map(|c| {
                webpki::anchor_from_trusted_cert(c)
                    .map(|a| a.to_owned())
                    .map_err(|e| BundleError::NoRoots {
                        detail: e.to_string(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            anchors,
            crls: std::sync::Arc::new(Vec::new()),
        })
    }

    /// The same roots, with these CRLs (DER) checked for every signing certificate: a
    /// certificate whose issuer has no CRL among them is then refused (its revocation status
    /// cannot be known).
    pub(crate) fn with_crls(mut self, crls_der: &[Vec<u8>]) -> Result<Self, BundleError> {
        let crls = crls_der
            .iter()
            .map(|der| {
                webpki::OwnedCertRevocationList::from_der(der)
                    .map(webpki::CertRevocationList::from)
                    .map_err(|e| BundleError::MalformedCrl {
                        detail: e.to_string(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.crls = std::sync::Arc::new(crls);
        Ok(self)
    }
}

fn subject_of(cert: &X509Certificate<'_>) -> String {
    cert.subject().to_string()
}

/// Public key and subject of the signing certificate of a parsed leaf, for the signer.
pub(crate) fn leaf_public_key(der: &[u8]) -> Result<PublicKey, BundleError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| BundleError::MalformedPem {
        what: "signing certificate",
        detail: e.to_string(),
    })?;
    PublicKey::from_spki_der(cert.public_key().raw)
}

/// Validates `chain` (leaf first) to `roots` now, and returns the leaf's key, its subject, and
/// when the verified path stops being valid (the earliest notAfter of the leaf and the
/// intermediates on the path, Unix seconds).
pub(crate) fn verify_chain(
    roots: &Roots,
    chain: &[CertificateDer<'_>],
) -> Result<(PublicKey, String, u64), BundleError> {
    let Some(leaf_der) = chain.first() else {
        return Err(BundleError::UntrustedChain {
            subject: "(none)".to_owned(),
            reason: "the bundle's certificate chain is empty".to_owned(),
        });
    };
    if chain.len() > MAX_CHAIN_LEN {
        return Err(BundleError::TooLarge {
            what: "certificate chain (certificates)".to_owned(),
            size: chain.len() as u64,
            limit: MAX_CHAIN_LEN as u64,
        });
    }
    let (_, leaf) =
        X509Certificate::from_der(leaf_der).map_err(|e| BundleError::MalformedCertificate {
            index: 0,
            detail: e.to_string(),
        })?;
    let subject = subject_of(&leaf);

    // Validity first, so that an expired leaf is reported as such rather than as a chain
    // failure.
    let validity = leaf.validity();
    if !validity.is_valid_at(ASN1Time::now()) {
        return Err(BundleError::LeafExpired {
            subject,
            reason: format!(
                "valid from {} to {}, now is {}",
                validity.not_before,
                validity.not_after,
                ASN1Time::now()
            ),
        });
    }

    let not_allowed = |reason: &str| BundleError::LeafNotAllowedToSign {
        subject: subject.clone(),
        reason: reason.to_owned(),
    };
    let malformed = |e: x509_parser::error::X509Error| BundleError::MalformedCertificate {
        index: 0,
        detail: e.to_string(),
    };
    match leaf.key_usage().map_err(malformed)? {
        Some(ku) if ku.value.digital_signature() => {}
        Some(_) => return Err(not_allowed("KeyUsage lacks digitalSignature")),
        None => {
            return Err(not_allowed(
                "no KeyUsage extension (digitalSignature required)",
            ));
        }
    }
    match leaf.extended_key_usage().map_err(malformed)? {
        Some(eku) if eku.value.code_signing => {}
        Some(_) => {
            return Err(not_allowed(
                "ExtendedKeyUsage lacks codeSigning (1.3.6.1.5.5.7.3.3)",
            ));
        }
        None => {
            return Err(not_allowed(
                "no ExtendedKeyUsage extension (codeSigning required)",
            ));
        }
    }
    if leaf.is_ca() {
        return Err(not_allowed("it is a CA certificate"));
    }

    let ee = EndEntityCert::try_from(leaf_der).map_err(|e| BundleError::MalformedCertificate {
        index: 0,
        detail: e.to_string(),
    })?;
    // With CRLs configured, the signing certificate is checked against its issuer's CRL, and
    // refused when its issuer has none among them.
    let crls: Vec<&webpki::CertRevocationList<'static>> = roots.crls.iter().collect();
    let revocation = webpki::RevocationOptionsBuilder::new(&crls).ok().map(|b| {
        b.with_depth(webpki::RevocationCheckDepth::EndEntity)
            .with_status_policy(webpki::UnknownStatusPolicy::Deny)
            .build()
    });
    let path = ee
        .verify_for_usage(
            ALGORITHMS,
            &roots.anchors,
            &chain[1..],
            UnixTime::now(),
            KeyUsage::required_if_present(EKU_CODE_SIGNING),
            revocation,
            None,
        )
        .map_err(|e| BundleError::UntrustedChain {
            subject: subject.clone(),
            reason: match e {
                webpki::Error::UnknownIssuer => {
                    "no path to a configured root (untrusted issuer or incomplete chain)".to_owned()
                }
                webpki::Error::CertRevoked => {
                    "the signing certificate is revoked (its issuer's CRL lists it)".to_owned()
                }
                webpki::Error::UnknownRevocationStatus => {
                    "no CRL of the signing certificate's issuer is configured, so its \
                     revocation status is unknown"
                        .to_owned()
                }
                other => other.to_string(),
            },
        })?;
    // Every certificate on the path was parsed by webpki already; a second parse here that
    // fails cannot happen, and would only leave the leaf's date.
    let valid_until = path
        .intermediate_certificates()
        .filter_map(|c| {
            X509Certificate::from_der(c.der().as_ref())
                .ok()
                .map(|(_, cert)| cert.validity().not_after.timestamp())
        })
        .fold(validity.not_after.timestamp(), i64::min);

    let key = PublicKey::from_spki_der(leaf.public_key().raw)?;
    Ok((key, subject, u64::try_from(valid_until).unwrap_or(0)))
}
