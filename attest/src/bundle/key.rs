//! ECDSA keys on the curves OMS allows (P-256, P-384, P-521), each with the hash that
//! model_signing pairs with it (`get_ec_key_hash`: SHA-256, SHA-384, SHA-512). Signatures
//! are DER-encoded, as Python's `cryptography` produces them.

use p256::ecdsa::signature::hazmat::{PrehashSigner as _, PrehashVerifier as _};
use p256::pkcs8::der::{Decode as _, Document, SecretDocument};
use p256::pkcs8::spki::SubjectPublicKeyInfoRef;
use p256::pkcs8::{
    DecodePrivateKey as _, DecodePublicKey as _, EncodePrivateKey as _, EncodePublicKey as _,
    LineEnding, ObjectIdentifier, PrivateKeyInfo,
};
use sha2::Digest as _;

use super::error::BundleError;

const ID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const SECP256R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const SECP384R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const SECP521R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.35");

/// An elliptic curve that model_signing accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    /// NIST P-256 (secp256r1), signed with SHA-256.
    P256,
    /// NIST P-384 (secp384r1), signed with SHA-384.
    P384,
    /// NIST P-521 (secp521r1), signed with SHA-512.
    P521,
}

impl Curve {
    fn from_oid(oid: ObjectIdentifier) -> Result<Self, BundleError> {
        match oid {
            SECP256R1 => Ok(Self::P256),
            SECP384R1 => Ok(Self::P384),
            SECP521R1 => Ok(Self::P521),
            other => Err(BundleError::UnsupportedKey {
                detail: format!("curve {other} (only P-256, P-384 and P-521)"),
            }),
        }
    }
}

/// The curve of a DER SubjectPublicKeyInfo, refusing anything but EC on an allowed curve.
fn spki_curve(der: &[u8]) -> Result<Curve, BundleError> {
    let spki = SubjectPublicKeyInfoRef::try_from(der).map_err(|e| BundleError::MalformedPem {
        what: "public key",
        detail: e.to_string(),
    })?;
    if spki.algorithm.oid != ID_EC_PUBLIC_KEY {
        return Err(BundleError::UnsupportedKey {
            detail: format!(
                "algorithm {} is not an elliptic curve key",
                spki.algorithm.oid
            ),
        });
    }
    let curve = spki
        .algorithm
        .parameters_oid()
        .map_err(|e| BundleError::UnsupportedKey {
            detail: format!("no named curve: {e}"),
        })?;
    Curve::from_oid(curve)
}

fn bad_pem(what: &'static str) -> impl Fn(String) -> BundleError {
    move |detail| BundleError::MalformedPem { what, detail }
}

/// A private signing key.
pub(crate) enum PrivateKey {
    P256(p256::SecretKey),
    P384(p384::SecretKey),
    P521(p521::SecretKey),
}

impl PrivateKey {
    /// Parses a PEM private key: PKCS#8 (`PRIVATE KEY`) or SEC1 (`EC PRIVATE KEY`).
    pub(crate) fn from_pem(pem: &str) -> Result<Self, BundleError> {
        let err = bad_pem("private key");
        let (label, doc) = SecretDocument::from_pem(pem).map_err(|e| err(e.to_string()))?;
        let der = doc.as_bytes();
        match label {
            "PRIVATE KEY" => {
                let info = PrivateKeyInfo::from_der(der).map_err(|e| err(e.to_string()))?;
                if info.algorithm.oid != ID_EC_PUBLIC_KEY {
                    return Err(BundleError::UnsupportedKey {
                        detail: format!(
                            "algorithm {} is not an elliptic curve key",
                            info.algorithm.oid
                        ),
                    });
                }
                let oid =
                    info.algorithm
                        .parameters_oid()
                        .map_err(|e| BundleError::UnsupportedKey {
                            detail: format!("no named curve: {e}"),
                        })?;
                Ok(match Curve::from_oid(oid)? {
                    Curve::P256 => Self::P256(
                        p256::SecretKey::from_pkcs8_der(der).map_err(|e| err(e.to_string()))?,
                    ),
                    Curve::P384 => Self::P384(
                        p384::SecretKey::from_pkcs8_der(der).map_err(|e| err(e.to_string()))?,
                    ),
                    Curve::P521 => Self::P521(
                        p521::SecretKey::from_pkcs8_der(der).map_err(|e| err(e.to_string()))?,
                    ),
                })
            }
            "EC PRIVATE KEY" => {
                // SEC1 keys carry the curve as an optional parameter; the scalar length (32, 48,
                // 66 bytes) tells them apart, and each parser checks the parameter if present.
                if let Ok(k) = p256::SecretKey::from_sec1_der(der) {
                    return Ok(Self::P256(k));
                }
                if let Ok(k) = p384::SecretKey::from_sec1_der(der) {
                    return Ok(Self::P384(k));
                }
                p521::SecretKey::from_sec1_der(der)
                    .map(Self::P521)
                    .map_err(|_| BundleError::UnsupportedKey {
                        detail: "SEC1 key is not on P-256, P-384 or P-521".to_owned(),
                    })
            }
            "ENCRYPTED PRIVATE KEY" => Err(BundleError::UnsupportedKey {
                detail: "encrypted private keys are not supported; decrypt it first".to_owned(),
            }),
            other => Err(err(format!("unexpected PEM label {other:?}"))),
        }
    }

    pub(crate) fn generate(curve: Curve) -> Self {
        let mut rng = rand_core::OsRng;
        match curve {
            Curve::P256 => Self::P256(p256::SecretKey::random(&mut rng)),
            Curve::P384 => Self::P384(p384::SecretKey::random(&mut rng)),
            Curve::P521 => Self::P521(p521::SecretKey::random(&mut rng)),
        }
    }

    pub(crate) fn to_pkcs8_pem(&self) -> Result<String, BundleError> {
        let r = match self {
            Self::P256(k) => k.to_pkcs8_pem(LineEnding::LF),
            Self::P384(k) => k.to_pkcs8_pem(LineEnding::LF),
            Self::P521(k) => k.to_pkcs8_pem(LineEnding::LF),
        };
        r.map(|z| z.as_str().to_owned())
            .map_err(|e| BundleError::Signing {
                detail: e.to_string(),
            })
    }

    pub(crate) fn public_key(&self) -> PublicKey {
        match self {
            Self::P256(k) => PublicKey::P256(k.public_key()),
            Self::P384(k) => PublicKey::P384(k.public_key()),
            Self::P521(k) => PublicKey::P521(k.public_key()),
        }
    }

    /// Signs `message` (the DSSE PAE) with the curve's hash; returns a DER signature.
    pub(crate) fn sign(&self, message: &[u8]) -> Result<Vec<u8>, BundleError> {
        let fail = |e: p256::ecdsa::Error| BundleError::Signing {
            detail: e.to_string(),
        };
        Ok(match self {
            Self::P256(k) => {
                let sig: p256::ecdsa::Signature = p256::ecdsa::SigningKey::from(k)
                    .sign_prehash(&sha2::Sha256::digest(message))
                    .map_err(fail)?;
                sig.to_der().as_bytes().to_vec()
            }
            Self::P384(k) => {
                let sig: p384::ecdsa::Signature = p384::ecdsa::SigningKey::from(k)
                    .sign_prehash(&sha2::Sha384::digest(message))
                    .map_err(fail)?;
                sig.to_der().as_bytes().to_vec()
            }
            Self::P521(k) => {
                let sk = p521::ecdsa::SigningKey::from_bytes(&k.to_bytes()).map_err(fail)?;
                let sig: p521::ecdsa::Signature = sk
                    .sign_prehash(&sha2::Sha512::digest(message))
                    .map_err(fail)?;
                sig.to_der().as_bytes().to_vec()
            }
        })
    }
}

/// A public verification key.
#[derive(Clone, Debug)]
pub(crate) enum PublicKey {
    P256(p256::PublicKey),
    P384(p384::PublicKey),
    P521(p521::PublicKey),
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::P256(a), Self::P256(b)) => a == b,
            (Self::P384(a), Self::P384(b)) => a == b,
            (Self::P521(a), Self::P521(b)) => a == b,
            _ => false,
        }
    }
}

impl PublicKey {
    /// Parses a PEM SubjectPublicKeyInfo (`PUBLIC KEY`).
    pub(crate) fn from_pem(pem: &str) -> Result<Self, BundleError> {
        let err = bad_pem("public key");
        let (label, doc) = Document::from_pem(pem).map_err(|e| err(e.to_string()))?;
        if label != "PUBLIC KEY" {
            return Err(err(format!("unexpected PEM label {label:?}")));
        }
        Self::from_spki_der(doc.as_bytes())
    }

    /// Parses a DER SubjectPublicKeyInfo (e.g. from a certificate).
    pub(crate) fn from_spki_der(der: &[u8]) -> Result<Self, BundleError> {
        let err = bad_pem("public key");
        Ok(match spki_curve(der)? {
            Curve::P256 => Self::P256(
                p256::PublicKey::from_public_key_der(der).map_err(|e| err(e.to_string()))?,
            ),
            Curve::P384 => Self::P384(
                p384::PublicKey::from_public_key_der(der).map_err(|e| err(e.to_string()))?,
            ),
            Curve::P521 => Self::P521(
                p521::PublicKey::from_public_key_der(der).map_err(|e| err(e.to_string()))?,
            ),
        })
    }

    /// The canonical PEM encoding (uncompressed point, 64-column base64, LF), byte for byte
    /// what Python's `cryptography` writes, so that hints agree.
    pub(crate) fn to_pem(&self) -> Result<String, BundleError> {
        let r = match self {
            Self::P256(k) => k.to_public_key_pem(LineEnding::LF),
            Self::P384(k) => k.to_public_key_pem(LineEnding::LF),
            Self::P521(k) => k.to_public_key_pem(LineEnding::LF),
        };
        r.map_err(|e| BundleError::Signing {
            detail: e.to_string(),
        })
    }

    /// model_signing's key hint: SHA-256 (hex) of the PEM text of the public key.
    pub(crate) fn hint(&self) -> Result<String, BundleError> {
        Ok(hex::encode(sha2::Sha256::digest(self.to_pem()?.as_bytes())))
    }

    /// Verifies a DER signature over `message` with the curve's hash.
    pub(crate) fn verify(&self, message: &[u8], signature_der: &[u8]) -> bool {
        match self {
            Self::P256(k) => p256::ecdsa::Signature::from_der(signature_der).is_ok_and(|sig| {
                p256::ecdsa::VerifyingKey::from(k)
                    .verify_prehash(&sha2::Sha256::digest(message), &sig)
                    .is_ok()
            }),
            Self::P384(k) => p384::ecdsa::Signature::from_der(signature_der).is_ok_and(|sig| {
                p384::ecdsa::VerifyingKey::from(k)
                    .verify_prehash(&sha2::Sha384::digest(message), &sig)
                    .is_ok()
            }),
            Self::P521(k) => p521::ecdsa::Signature::from_der(signature_der).is_ok_and(|sig| {
                p521::ecdsa::VerifyingKey::from_affine(*k.as_affine()).is_ok_and(|vk| {
                    vk.verify_prehash(&sha2::Sha512::digest(message), &sig)
                        .is_ok()
                })
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A P-256 key from `openssl ecparam -name prime256v1 -genkey`, given here with CRLF line
    // ends; model_signing 1.1.1 recorded hint 3621f5ad… for it in a bundle it signed.
    const PUB_PEM_WITH_CRLF: &str = "-----BEGIN PUBLIC KEY-----\r\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEeeU8ckT7TchXH+bmvLP5WsDFnQKM\r\nzl1wvqJ1VUWjP8S+npLxnZz07KUBNyvurcG/5Yv+dqIjwpIzolyZ5WtCjw==\r\n-----END PUBLIC KEY-----\r\n";

    #[test]
    fn hint_is_model_signings_over_canonical_pem() {
        let k = PublicKey::from_pem(PUB_PEM_WITH_CRLF).unwrap();
        assert_eq!(
            k.hint().unwrap(),
            "3621f5addb9c8f964866cafda85c0cf0e793919cc7017bf90ac38dfe6d2184d7"
        );
    }

    #[test]
    fn sign_verify_each_curve_and_cross_curve_fails() {
        for curve in [Curve::P256, Curve::P384, Curve::P521] {
            let k = PrivateKey::generate(curve);
            let sig = k.sign(b"msg").unwrap();
            assert!(k.public_key().verify(b"msg", &sig));
            assert!(!k.public_key().verify(b"msh", &sig));
            let pem = k.to_pkcs8_pem().unwrap();
            assert!(PrivateKey::from_pem(&pem).unwrap().public_key() == k.public_key());
        }
    }

    #[test]
    fn refuses_non_ec_and_garbage() {
        assert!(matches!(
            PrivateKey::from_pem("nope"),
            Err(BundleError::MalformedPem { .. })
        ));
        // An Ed25519 PKCS#8 key (RFC 8410 example).
        let ed = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n-----END PRIVATE KEY-----\n";
        assert!(matches!(
            PrivateKey::from_pem(ed),
            Err(BundleError::UnsupportedKey { .. })
        ));
    }
}
