//! The trust anchors of each role, as verifiers: read from the key store (which holds them
//! locked) and parsed from their PEM (public keys for the key method, certificates for the
//! certificate method of OMS and DSSE signatures).

use warden_keystore::{KeyStore, KeyStoreError, Role};

use crate::bundle::Verifier;

/// The verifiers built from the key store's anchors.
#[derive(Debug, Clone, Default)]
pub struct TrustAnchors {
    /// Model signers (OMS).
    pub model_signers: Vec<Verifier>,
    /// The release authority.
    pub release_authority: Vec<Verifier>,
    /// Who may sign attestations (default: the release authority's and the model signers'
    /// anchors).
    pub attestation_signers: Vec<Verifier>,
    /// The fleet authority (revocation lists).
    pub fleet_authority: Vec<Verifier>,
}

/// Why anchors could not be read.
#[derive(Debug, thiserror::Error)]
pub enum AnchorError {
    /// The key store.
    #[error("reading the {role} anchors: {source}")]
    KeyStore {
        /// The role.
        role: Role,
        /// The key store's error.
        source: KeyStoreError,
    },
    /// Anchors that are not PEM public keys or certificates.
    #[error("the {role} anchors: {detail}")]
    Malformed {
        /// The role.
        role: Role,
        /// Why.
        detail: String,
    },
}

impl TrustAnchors {
    /// Reads every role's anchors from the key store (absent roles trust nobody).
    pub fn from_key_store(store: &dyn KeyStore) -> Result<Self, AnchorError> {
        let read = |role: Role| -> Result<Vec<Verifier>, AnchorError> {
            match store
                .anchors(role)
                .map_err(|source| AnchorError::KeyStore { role, source })?
            {
                Some(pem) => verifiers_from_pem(role, &pem),
                None => Ok(Vec::new()),
            }
        };
        let model_signers = read(Role::ModelSigners)?;
        let release_authority = read(Role::ReleaseAuthority)?;
        let fleet_authority = read(Role::FleetAuthority)?;
        let attestation_signers = release_authority
            .iter()
            .chain(model_signers.iter())
            .cloned()
            .collect();
        Ok(Self {
            model_signers,
            release_authority,
            attestation_signers,
            fleet_authority,
        })
    }
}

/// Verifiers from anchor PEM: each `PUBLIC KEY` block is a key-method signer; all
/// `CERTIFICATE` blocks together are the roots of one certificate-method verifier.
pub fn verifiers_from_pem(role: Role, pem: &[u8]) -> Result<Vec<Verifier>, AnchorError> {
    let malformed = |detail: String| AnchorError::Malformed { role, detail };
    let text = std::str::from_utf8(pem).map_err(|_| malformed("not PEM text".to_owned()))?;
    let mut out = Vec::new();
    let mut certs = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN ") {
        let after = &rest[start + 11..];
        let label_end = after
            .find("-----")
            .ok_or_else(|| malformed("unterminated PEM header".to_owned()))?;
        let label = &after[..label_end];
        let end_marker = format!("-----END {label}-----");
        let end = rest[start..]
            .find(&end_marker)
            .ok_or_else(|| malformed(format!("no END line for {label}")))?;
        let block = &rest[start..start + end + end_marker.len()];
        match label {
            "PUBLIC KEY" => out
                .push(Verifier::from_public_key_pem(block).map_err(|e| malformed(e.to_string()))?),
            "CERTIFICATE" => {
                certs.push_str(block);
                certs.push('\n');
            }
            other => return Err(malformed(format!("unexpected PEM block {other}"))),
        }
        rest = &rest[start + end + end_marker.len()..];
    }
    if !certs.is_empty() {
        out.push(
            Verifier::from_certificate_roots_pem(&certs).map_err(|e| malformed(e.to_string()))?,
        );
    }
    if out.is_empty() {
        return Err(malformed("no public key or certificate".to_owned()));
    }
    Ok(out)
}
