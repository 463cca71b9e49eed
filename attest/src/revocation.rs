//! Revocation lists: the fleet authority names model digests and versions that must not be
//! served, under a monotonic serial. The highest serial accepted is kept in the key store's
//! [`Counter::RevocationSerial`] (a TPM NV counter, an HSM object, or a file in development),
//! so an older list cannot be replayed to un-revoke a model.
//!
//! Format: an in-toto Statement v1 (DSSE, Sigstore bundle, signed like OMS bundles) whose
//! subjects are the revoked digests:
//!
//! ```json
//! { "_type": "https://in-toto.io/Statement/v1",
//!   "subject": [{"name": "fraud", "digest": {"sha256": "<hex>"}}],
//!   "predicateType": "https://warden.dev/revocation/v1",
//!   "predicate": {
//!     "serial": 7,
//!     "revokedDigests": [{"digest": "sha256:<hex>", "reason": "key compromise"}],
//!     "revokedVersions": [{"name": "fraud", "version": "2", "reason": "bias found"}] } }
//! ```
//!
//! The subjects must list exactly the revoked digests, so that generic in-toto tooling sees
//! what the list is about.

use serde::{Deserialize, Serialize};

use crate::bundle::{Signer, Verifier};
use crate::release::{
    DigestError, ReleaseError, Subject, sha256_hex, sign_predicate, verify_statement,
};
use warden_keystore::{Counter, KeyStore, KeyStoreError};

/// The predicate type of a revocation list.
pub const REVOCATION_PREDICATE_TYPE: &str = "https://warden.dev/revocation/v1";

/// Why a revocation list was refused, or why a model is refused by one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RevocationError {
    /// The envelope, signer or statement.
    #[error("revocation list refused: {0}")]
    Statement(#[from] Box<ReleaseError>),
    /// A list with a lower serial than one already accepted (a replay or rollback).
    #[error("revocation list serial {serial} is older than the accepted serial {current}")]
    OlderSerial {
        /// The list's serial.
        serial: u64,
        /// The highest serial accepted (from the key store's counter).
        current: u64,
    },
    /// A list whose subjects disagree with its predicate.
    #[error("malformed revocation list: {detail}")]
    Malformed {
        /// Why.
        detail: String,
    },
    /// The model digest is revoked.
    #[error("model digest {digest} is revoked by list {serial}: {reason}")]
    RevokedDigest {
        /// The digest.
        digest: String,
        /// The list's serial.
        serial: u64,
        /// The reason given.
        reason: String,
    },
    /// The model version is revoked.
    #[error("model {name} version {version} is revoked by list {serial}: {reason}")]
    RevokedVersion {
        /// Model name.
        name: String,
        /// Version.
        version: String,
        /// The list's serial.
        serial: u64,
        /// The reason given.
        reason: String,
    },
    /// The key store's counter.
    #[error("revocation counter: {0}")]
    Counter(#[from] KeyStoreError),
}

/// A revoked digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RevokedDigest {
    /// `sha256:<hex>`.
    pub digest: String,
    /// Why (shown to operators).
    #[serde(default)]
    pub reason: String,
}

/// A revoked model version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RevokedVersion {
    /// Model name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Why.
    #[serde(default)]
    pub reason: String,
}

/// The predicate of a revocation list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RevocationList {
    /// Monotonic serial; each published list has a higher one.
    pub serial: u64,
    /// Revoked model digests.
    #[serde(default)]
    pub revoked_digests: Vec<RevokedDigest>,
    /// Revoked model versions.
    #[serde(default)]
    pub revoked_versions: Vec<RevokedVersion>,
}

impl RevocationList {
    /// Refuses a model that this list revokes, by digest or by name and version.
    pub fn check(
        &self,
        name: &str,
        version: &str,
        root_digest: &str,
    ) -> Result<(), RevocationError> {
        if let Some(r) = self
            .revoked_digests
            .iter()
            .find(|r| r.digest == root_digest)
        {
            return Err(RevocationError::RevokedDigest {
                digest: r.digest.clone(),
                serial: self.serial,
                reason: r.reason.clone(),
            });
        }
        if let Some(r) = self
            .revoked_versions
            .iter()
            .find(|r| r.name == name && r.version == version)
        {
            return Err(RevocationError::RevokedVersion {
                name: r.name.clone(),
                version: r.version.clone(),
                serial: self.serial,
                reason: r.reason.clone(),
            });
        }
        Ok(())
    }

    fn subjects(&self) -> Result<Vec<Subject>, DigestError> {
        self.revoked_digests
            .iter()
            .map(|r| Subject::for_digest("revoked", &r.digest))
            .collect()
    }
}

/// Signs a revocation list as the fleet authority.
pub fn sign_revocation_list(
    list: &RevocationList,
    signer: &Signer,
) -> Result<Vec<u8>, RevocationError> {
    let subject = list.subjects().map_err(|e| RevocationError::Malformed {
        detail: e.to_string(),
    })?;
    sign_predicate(
        "revocation list",
        subject,
        REVOCATION_PREDICATE_TYPE,
        list,
        signer,
    )
    .map_err(|e| RevocationError::Statement(Box::new(e)))
}

/// Verifies a revocation list's signature and content, and that its serial is not below
/// `current` (the highest accepted). Does not record it: see [`accept_revocation_list`].
pub fn verify_revocation_list(
    bundle_json: &[u8],
    fleet_authority: &Verifier,
    current: u64,
) -> Result<RevocationList, RevocationError> {
    let (statement, _signer) = verify_statement::<RevocationList>(
        "revocation list",
        bundle_json,
        fleet_authority,
        REVOCATION_PREDICATE_TYPE,
    )
    .map_err(Box::new)?;
    let list = statement.predicate;
    for r in &list.revoked_digests {
        sha256_hex(&r.digest).map_err(|e| RevocationError::Malformed {
            detail: e.to_string(),
        })?;
    }
    let mut listed: Vec<String> = list
        .revoked_digests
        .iter()
        .map(|r| r.digest.clone())
        .collect();
    let mut subjects: Vec<String> = statement
        .subject
        .iter()
        .filter_map(Subject::sha256)
        .collect();
    listed.sort();
    subjects.sort();
    if listed != subjects || subjects.len() != statement.subject.len() {
        return Err(RevocationError::Malformed {
            detail: "the statement's subjects are not exactly the revoked digests".to_owned(),
        });
    }
    if list.serial < current {
        return Err(RevocationError::OlderSerial {
            serial: list.serial,
            current,
        });
    }
    Ok(list)
}

/// Verifies a list against the key store's counter, then advances the counter to its serial
/// (anti-rollback: from then on no list with a lower serial is accepted, across restarts).
/// A list with the serial already accepted verifies again (re-reading it after a restart).
pub fn accept_revocation_list(
    bundle_json: &[u8],
    fleet_authority: &Verifier,
    store: &dyn KeyStore,
) -> Result<RevocationList, RevocationError> {
    let current = store.counter(Counter::RevocationSerial)?;
    let list = verify_revocation_list(bundle_json, fleet_authority, current)?;
    store.advance_counter(Counter::RevocationSerial, list.serial)?;
    Ok(list)
}
