//! Release statements: the registry's release authority says which model (by root digest) is
//! released under which name, version and stage, which policy set it expects, and which
//! attestations must accompany it.
//!
//! Format: an in-toto Statement v1 in a DSSE envelope inside a Sigstore bundle v0.3, signed
//! exactly as OMS model bundles are (same code, [`crate::bundle::Signer`] and
//! [`crate::bundle::Verifier`]):
//!
//! ```json
//! { "_type": "https://in-toto.io/Statement/v1",
//!   "subject": [{"name": "fraud", "digest": {"sha256": "<model root digest>"}}],
//!   "predicateType": "https://warden.dev/release/v1",
//!   "predicate": {
//!     "name": "fraud", "version": "3", "stage": "Approved",
//!     "policySetDigest": "sha256:<hex>",
//!     "requiredAttestations": ["https://slsa.dev/provenance/v1"] } }
//! ```
//!
//! Attestations (SLSA provenance, an evaluation report, …) are themselves signed in-toto
//! statements over the same root digest, carried in the bundle next to the release statement;
//! [`verify_attestations`] checks that every required one is present and valid.

use serde::{Deserialize, Serialize};

use crate::bundle::{BundleError, Signer, Verifier};

/// The in-toto statement type.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// The predicate type of a release statement.
pub const RELEASE_PREDICATE_TYPE: &str = "https://warden.dev/release/v1";
/// The largest statement payload parsed.
const MAX_STATEMENT_BYTES: usize = 1024 * 1024;

/// Why a release statement or an attestation was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReleaseError {
    /// The envelope or signature (wrong signer, tampered, malformed bundle).
    #[error("{what}: {source}")]
    Signature {
        /// Which document.
        what: &'static str,
        /// The signature check's refusal.
        source: Box<BundleError>,
    },
    /// A statement that does not parse or has the wrong types.
    #[error("malformed {what}: {detail}")]
    Malformed {
        /// Which document.
        what: &'static str,
        /// Why.
        detail: String,
    },
    /// The statement is about another model.
    #[error("{what} is for model {found}, not {expected}")]
    DigestMismatch {
        /// Which document.
        what: &'static str,
        /// The model's root digest.
        expected: String,
        /// The statement's subject digests.
        found: String,
    },
    /// The release expects another policy set than the running one.
    #[error("release {name} {version} expects policy set {expected}, the running set is {running}")]
    PolicyDigestMismatch {
        /// Model name.
        name: String,
        /// Model version.
        version: String,
        /// The release's policy-set digest.
        expected: String,
        /// The running policy set's digest.
        running: String,
    },
    /// A required attestation is not in the bundle.
    #[error("required attestation {predicate_type} is missing")]
    AttestationMissing {
        /// Its predicate type.
        predicate_type: String,
    },
    /// A carried attestation does not verify.
    #[error("attestation #{index} is invalid: {detail}")]
    AttestationInvalid {
        /// Its position in the bundle.
        index: usize,
        /// Why.
        detail: String,
    },
    /// Signing failed.
    #[error("signing the {what}: {source}")]
    Signing {
        /// Which document.
        what: &'static str,
        /// Why.
        source: Box<BundleError>,
    },
}

/// The life-cycle stage of a release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Stage {
    /// Built, not for production.
    Development,
    /// Candidate, for staging appliances.
    Staging,
    /// Released for production.
    Approved,
    /// Still allowed where already serving; replace it.
    Deprecated,
    /// Must not be served.
    Revoked,
}

impl Stage {
    /// Its name as in the statement.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Development => "Development",
            Stage::Staging => "Staging",
            Stage::Approved => "Approved",
            Stage::Deprecated => "Deprecated",
            Stage::Revoked => "Revoked",
        }
    }
}

impl std::str::FromStr for Stage {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "Development" => Stage::Development,
            "Staging" => Stage::Staging,
            "Approved" => Stage::Approved,
            "Deprecated" => Stage::Deprecated,
            "Revoked" => Stage::Revoked,
            other => {
                return Err(format!(
                    "unknown stage {other:?} (Development, Staging, Approved, Deprecated, Revoked)"
                ));
            }
        })
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The predicate of a release statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Release {
    /// Model name.
    pub name: String,
    /// Model version.
    pub version: String,
    /// Stage.
    pub stage: Stage,
    /// The policy set this release was approved under, `sha256:<hex>`.
    pub policy_set_digest: String,
    /// Predicate types of the attestations that must accompany the model.
    #[serde(default)]
    pub required_attestations: Vec<String>,
}

/// A verified release statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedRelease {
    /// What it says.
    pub release: Release,
    /// The model's root digest it covers, `sha256:<hex>`.
    pub root_digest: String,
    /// Who signed it (`key <hint>` or the certificate subject).
    pub signer: String,
}

impl VerifiedRelease {
    /// Refuses the release unless it expects the running policy set.
    pub fn check_policy_digest(&self, running: &str) -> Result<(), ReleaseError> {
        if self.release.policy_set_digest != running {
            return Err(ReleaseError::PolicyDigestMismatch {
                name: self.release.name.clone(),
                version: self.release.version.clone(),
                expected: self.release.policy_set_digest.clone(),
                running: running.to_owned(),
            });
        }
        Ok(())
    }
}

/// An in-toto Statement v1 (the fields Warden uses).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Statement<P> {
    #[serde(rename = "_type")]
    pub(crate) type_: String,
    pub(crate) subject: Vec<Subject>,
    #[serde(rename = "predicateType")]
    pub(crate) predicate_type: String,
    pub(crate) predicate: P,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Subject {
    pub(crate) name: String,
    pub(crate) digest: std::collections::BTreeMap<String, String>,
}

impl Subject {
    /// A subject for a `sha256:<hex>` digest.
    pub(crate) fn for_digest(name: &str, digest: &str) -> Result<Self, DigestError> {
        let hex = sha256_hex(digest)?;
        Ok(Self {
            name: name.to_owned(),
            digest: [("sha256".to_owned(), hex.to_owned())].into(),
        })
    }

    pub(crate) fn sha256(&self) -> Option<String> {
        self.digest.get("sha256").map(|h| format!("sha256:{h}"))
    }
}

/// A digest that is not `sha256:<64 lowercase hex>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("digest {0:?} does not start with sha256:")]
    Prefix(String),
    #[error("digest {0:?} is not 64 lowercase hex digits")]
    Hex(String),
}

/// The hex part of a `sha256:<64 lowercase hex>` digest.
pub(crate) fn sha256_hex(digest: &str) -> Result<&str, DigestError> {
    let hex = digest
        .strip_prefix("sha256:")
        .ok_or_else(|| DigestError::Prefix(digest.to_owned()))?;
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(DigestError::Hex(digest.to_owned()));
    }
    Ok(hex)
}

/// Verifies a signed statement and parses it; the payload is parsed only after the signature
/// verified over its exact bytes.
pub(crate) fn verify_statement<P: serde::de::DeserializeOwned>(
    what: &'static str,
    bundle_json: &[u8],
    verifier: &Verifier,
    predicate_type: &str,
) -> Result<(Statement<P>, String), ReleaseError> {
    let (payload, signer) =
        verifier
            .verify_statement(bundle_json)
            .map_err(|e| ReleaseError::Signature {
                what,
                source: Box::new(e),
            })?;
    if payload.len() > MAX_STATEMENT_BYTES {
        return Err(ReleaseError::Malformed {
            what,
            detail: format!("statement of {} bytes", payload.len()),
        });
    }
    let statement: Statement<P> =
        serde_json::from_slice(&payload).map_err(|e| ReleaseError::Malformed {
            what,
            detail: e.to_string(),
        })?;
    if statement.type_ != STATEMENT_TYPE {
        return Err(ReleaseError::Malformed {
            what,
            detail: format!("statement type {:?}", statement.type_),
        });
    }
    if statement.predicate_type != predicate_type {
        return Err(ReleaseError::Malformed {
            what,
            detail: format!(
                "predicate type {:?}, expected {predicate_type:?}",
                statement.predicate_type
            ),
        });
    }
    Ok((statement, signer))
}

fn check_subject(
    what: &'static str,
    subjects: &[Subject],
    root_digest: &str,
) -> Result<(), ReleaseError> {
    if subjects
        .iter()
        .any(|s| s.sha256().as_deref() == Some(root_digest))
    {
        return Ok(());
    }
    Err(ReleaseError::DigestMismatch {
        what,
        expected: root_digest.to_owned(),
        found: subjects
            .iter()
            .filter_map(Subject::sha256)
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// Signs an in-toto statement about `subject` with `predicate`: the one way every Warden
/// document (release, attestation, revocation list, policy set) is made.
pub(crate) fn sign_predicate<P: Serialize>(
    what: &'static str,
    subject: Vec<Subject>,
    predicate_type: &str,
    predicate: &P,
    signer: &Signer,
) -> Result<Vec<u8>, ReleaseError> {
    let statement = Statement {
        type_: STATEMENT_TYPE.to_owned(),
        subject,
        predicate_type: predicate_type.to_owned(),
        predicate,
    };
    let payload = serde_json::to_vec(&statement).map_err(|e| ReleaseError::Malformed {
        what,
        detail: e.to_string(),
    })?;
    signer
        .sign_statement(&payload)
        .map_err(|e| ReleaseError::Signing {
            what,
            source: Box::new(e),
        })
}

/// Signs a release statement for the model with `root_digest` (`sha256:<hex>`), as the
/// release authority.
pub fn sign_release(
    release: &Release,
    root_digest: &str,
    signer: &Signer,
) -> Result<Vec<u8>, ReleaseError> {
    let malformed = |e: DigestError| ReleaseError::Malformed {
        what: "release statement",
        detail: e.to_string(),
    };
    sha256_hex(&release.policy_set_digest).map_err(malformed)?;
    sign_predicate(
        "release statement",
        vec![Subject::for_digest(&release.name, root_digest).map_err(malformed)?],
        RELEASE_PREDICATE_TYPE,
        release,
        signer,
    )
}

/// Verifies a release statement against the release authority and the model's root digest.
pub fn verify_release(
    bundle_json: &[u8],
    release_authority: &Verifier,
    root_digest: &str,
) -> Result<VerifiedRelease, ReleaseError> {
    const WHAT: &str = "release statement";
    let (statement, signer) =
        verify_statement::<Release>(WHAT, bundle_json, release_authority, RELEASE_PREDICATE_TYPE)?;
    check_subject(WHAT, &statement.subject, root_digest)?;
    sha256_hex(&statement.predicate.policy_set_digest).map_err(|e| ReleaseError::Malformed {
        what: WHAT,
        detail: e.to_string(),
    })?;
    Ok(VerifiedRelease {
        release: statement.predicate,
        root_digest: root_digest.to_owned(),
        signer,
    })
}

/// Signs an attestation (any predicate) about the model with `root_digest`.
pub fn sign_attestation(
    predicate_type: &str,
    predicate: &serde_json::Value,
    model_name: &str,
    root_digest: &str,
    signer: &Signer,
) -> Result<Vec<u8>, ReleaseError> {
    let malformed = |e: DigestError| ReleaseError::Malformed {
        what: "attestation",
        detail: e.to_string(),
    };
    sign_predicate(
        "attestation",
        vec![Subject::for_digest(model_name, root_digest).map_err(malformed)?],
        predicate_type,
        predicate,
        signer,
    )
}

/// A verified attestation.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedAttestation {
    /// Its predicate type.
    pub predicate_type: String,
    /// Its predicate.
    pub predicate: serde_json::Value,
    /// Who signed it.
    pub signer: String,
}

/// Verifies every carried attestation (each must be signed by one of `signers` and be about
/// `root_digest`; an invalid one refuses the whole set), then checks that each of `required`
/// is among them.
pub fn verify_attestations(
    carried: &[Vec<u8>],
    required: &[String],
    root_digest: &str,
    signers: &[Verifier],
) -> Result<Vec<VerifiedAttestation>, ReleaseError> {
    let mut verified = Vec::with_capacity(carried.len());
    for (index, bundle) in carried.iter().enumerate() {
        let mut last = None;
        let mut ok = None;
        for v in signers {
            // Any predicate type: read it from the statement after the signature verifies.
            match v.verify_statement(bundle) {
                Ok((payload, signer)) => {
                    ok = Some((payload, signer));
                    break;
                }
                Err(e) => last = Some(e.to_string()),
            }
        }
        let (payload, signer) = ok.ok_or_else(|| ReleaseError::AttestationInvalid {
            index,
            detail: last.unwrap_or_else(|| "no attestation signer is configured".to_owned()),
        })?;
        let statement: Statement<serde_json::Value> =
            serde_json::from_slice(&payload).map_err(|e| ReleaseError::AttestationInvalid {
                index,
                detail: e.to_string(),
            })?;
        if statement.type_ != STATEMENT_TYPE {
            return Err(ReleaseError::AttestationInvalid {
                index,
                detail: format!("statement type {:?}", statement.type_),
            });
        }
        check_subject("attestation", &statement.subject, root_digest).map_err(|e| {
            ReleaseError::AttestationInvalid {
                index,
                detail: e.to_string(),
            }
        })?;
        verified.push(VerifiedAttestation {
            predicate_type: statement.predicate_type,
            predicate: statement.predicate,
            signer,
        });
    }
    for r in required {
        if !verified.iter().any(|a| &a.predicate_type == r) {
            return Err(ReleaseError::AttestationMissing {
                predicate_type: r.clone(),
            });
        }
    }
    Ok(verified)
}
