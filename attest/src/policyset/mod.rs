//! Signed policy sets: the fleet authority vouches for a set of admission policies by its
//! canonical digest ([`files::policy_set_digest`]: SHA-256 over the sorted listing of every
//! `.rego` file), under a monotonic serial. The highest serial accepted is kept in the key
//! store's [`Counter::PolicySetSerial`], so an older set cannot be pushed again to bring back a
//! weaker policy.
//!
//! Format: an in-toto Statement v1 (DSSE, Sigstore bundle, signed like OMS bundles):
//!
//! ```json
//! { "_type": "https://in-toto.io/Statement/v1",
//!   "subject": [{"name": "policy-set", "digest": {"sha256": "<hex>"}}],
//!   "predicateType": "https://warden.dev/policy-set/v1",
//!   "predicate": {"serial": 3, "policySetDigest": "sha256:<hex>"} }
//! ```
//!
//! The one subject is the policy set's digest, so generic in-toto tooling sees what the
//! statement is about; the predicate repeats it and must agree.

pub mod files;

use serde::{Deserialize, Serialize};

use crate::bundle::{Signer, Verifier};
use crate::release::{ReleaseError, Subject, sha256_hex, sign_predicate, verify_statement};
use warden_keystore::{Counter, KeyStore, KeyStoreError};

/// The predicate type of a signed policy set.
pub const POLICY_SET_PREDICATE_TYPE: &str = "https://warden.dev/policy-set/v1";

/// What the fleet authority signs about a policy set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicySet {
    /// Monotonic: a set with a lower serial than one accepted is refused.
    pub serial: u64,
    /// The canonical digest of the set, `sha256:<hex>`.
    pub policy_set_digest: String,
}

/// Why a signed policy set was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicySetError {
    /// The envelope, signer or statement.
    #[error("policy set refused: {0}")]
    Statement(#[from] Box<ReleaseError>),
    /// A set with a lower serial than one already accepted (a replay or rollback).
    #[error("policy set serial {serial} is older than the accepted serial {current}")]
    OlderSerial {
        /// The set's serial.
        serial: u64,
        /// The highest serial accepted (from the key store's counter).
        current: u64,
    },
    /// The statement disagrees with itself.
    #[error("malformed policy-set statement: {detail}")]
    Malformed {
        /// Why.
        detail: String,
    },
    /// The files are not the set that was signed.
    #[error("the policy files have digest {actual}, the signed set is {signed}")]
    DigestMismatch {
        /// What the statement names.
        signed: String,
        /// What the files hash to.
        actual: String,
    },
    /// The key store's counter.
    #[error("policy-set counter: {0}")]
    Counter(#[from] KeyStoreError),
}

/// Signs a policy set as the fleet authority.
pub fn sign_policy_set(set: &PolicySet, signer: &Signer) -> Result<Vec<u8>, PolicySetError> {
    let subject = Subject::for_digest("policy-set", &set.policy_set_digest).map_err(|e| {
        PolicySetError::Malformed {
            detail: e.to_string(),
        }
    })?;
    sign_predicate(
        "policy set",
        vec![subject],
        POLICY_SET_PREDICATE_TYPE,
        set,
        signer,
    )
    .map_err(|e| PolicySetError::Statement(Box::new(e)))
}

/// Verifies a signed policy set: the fleet authority's signature, a well-formed statement,
/// the files' digest `actual` equal to the signed one, and a serial not below `current`.
/// Does not record it: see [`accept_policy_set`].
pub fn verify_policy_set(
    bundle_json: &[u8],
    fleet_authority: &Verifier,
    actual: &str,
    current: u64,
) -> Result<PolicySet, PolicySetError> {
    let (statement, _signer) = verify_statement::<PolicySet>(
        "policy set",
        bundle_json,
        fleet_authority,
        POLICY_SET_PREDICATE_TYPE,
    )
    .map_err(Box::new)?;
    let set = statement.predicate;
    sha256_hex(&set.policy_set_digest).map_err(|e| PolicySetError::Malformed {
        detail: e.to_string(),
    })?;
    let subjects: Vec<String> = statement
        .subject
        .iter()
        .filter_map(Subject::sha256)
        .collect();
    if statement.subject.len() != 1 || subjects != [set.policy_set_digest.clone()] {
        return Err(PolicySetError::Malformed {
            detail: "the statement's one subject must be the policy set's digest".to_owned(),
        });
    }
    if set.policy_set_digest != actual {
        return Err(PolicySetError::DigestMismatch {
            signed: set.policy_set_digest,
            actual: actual.to_owned(),
        });
    }
    if set.serial < current {
        return Err(PolicySetError::OlderSerial {
            serial: set.serial,
            current,
        });
    }
    Ok(set)
}

/// Verifies a set against the key store's counter, then advances the counter to its serial
/// (from then on no set with a lower serial is accepted, across restarts). The set with the
/// serial already accepted verifies again (re-reading it after a restart).
pub fn accept_policy_set(
    bundle_json: &[u8],
    fleet_authority: &Verifier,
    actual: &str,
    store: &dyn KeyStore,
) -> Result<PolicySet, PolicySetError> {
    let current = store.counter(Counter::PolicySetSerial)?;
    let set = verify_policy_set(bundle_json, fleet_authority, actual, current)?;
    store.advance_counter(Counter::PolicySetSerial, set.serial)?;
    Ok(set)
}
