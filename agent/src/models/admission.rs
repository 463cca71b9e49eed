//! Model admission: whether a model version may be served, decided by
//! `policies/serving/startup.rego` (regorus, Rego v1, in-process) on facts this agent
//! established itself.
//!
//! Two steps, kept apart so each is testable alone:
//! 1. [`establish_facts`] verifies the evidence (the model directory against its OMS signature
//!    and the model-signer anchors; the release statement against the release authority; the
//!    carried attestations; the revocation list against the fleet authority and the key
//!    store's anti-rollback counter) and records what held as [`AdmissionFacts`]. It never
//!    fails: whatever does not verify becomes a fact that the policy refuses.
//! 2. [`Admission::decide`] evaluates the policy on those facts. Fail closed: a policy that
//!    errs, runs past its execution limit or answers in the wrong shape denies, and the
//!    decision allows only when the policy says `allow` with no reason against.
//!
//! The policy set is read once, as `warden_attest::policyset::files` digests it, so the
//! policy evaluated is exactly the bytes whose digest releases pin.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::policy::{CompiledPolicy, PolicyError, Source, field, strings};
use warden_attest::anchors::{AnchorError, TrustAnchors};
use warden_attest::bundle::{self, BundleError, Verifier, VerifyOptions};
use warden_attest::policyset::files::{PolicyFilesError, policy_set_files};
use warden_attest::release::{ReleaseError, Stage, verify_attestations, verify_release};
use warden_attest::revocation::{RevocationError, accept_revocation_list};
use warden_keystore::{Counter, KeyStore};

/// The rule the agent reads.
pub const DECISION_RULE: &str = "data.warden.serving.startup.decision";
/// The startup policy, relative to the policy directory.
pub const STARTUP_POLICY: &str = "serving/startup.rego";
/// Default execution limit of one evaluation.
pub const DEFAULT_LIMIT: Duration = Duration::from_millis(100);

/// Why the admission policy could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum AdmissionError {
    /// The policy set's files.
    #[error(transparent)]
    Files(#[from] PolicyFilesError),
    /// The startup policy is not in the set, or not text.
    #[error("policy set {path}: {detail}")]
    Tree {
        /// The offending path.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The startup policy does not compile or cannot produce a decision.
    #[error("policy {path}: {message}")]
    Compile {
        /// The policy file.
        path: PathBuf,
        /// The compiler's or evaluator's message.
        message: String,
    },
    /// The admission data (allowed stages).
    #[error("admission data: {message}")]
    Data {
        /// Why.
        message: String,
    },
}

/// The startup policy, compiled, with the running policy set's digest.
pub struct Admission {
    policy: CompiledPolicy,
    digest: String,
    policy_path: PathBuf,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("policy", &self.policy_path)
            .field("digest", &self.digest)
            .finish_non_exhaustive()
    }
}

/// The policy's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Serve it.
    pub allowed: bool,
    /// Each clause that failed, `<clause>: <detail>` (sorted); empty when allowed.
    pub reasons: Vec<String>,
}

impl Decision {
    fn deny(reason: impl Into<String>) -> Self {
        Self {
            allowed: false,
            reasons: vec![reason.into()],
        }
    }

    /// True when a reason names `clause` (the text before the first `:`).
    pub fn refused_for(&self, clause: &str) -> bool {
        self.reasons
            .iter()
            .any(|r| r.split(':').next() == Some(clause))
    }
}

impl Admission {
    /// Loads `policy_dir/serving/startup.rego` and digests the whole policy set, with the
    /// default allowed stages (`Approved` only) and execution limit.
    pub fn new(policy_dir: &Path) -> Result<Self, AdmissionError> {
        Self::with_options(policy_dir, &[Stage::Approved], DEFAULT_LIMIT)
    }

    /// Like [`Admission::new`] with the stages this appliance serves (a staging appliance
    /// adds `Staging`) and the execution limit of one evaluation.
    pub fn with_options(
        policy_dir: &Path,
        allowed_stages: &[Stage],
        limit: Duration,
    ) -> Result<Self, AdmissionError> {
        // Evaluate exactly the bytes that were digested: read the set once.
        let (set, digest) = policy_set_files(policy_dir)?;
        let path = policy_dir.join(STARTUP_POLICY);
        let text = set
            .get(STARTUP_POLICY)
            .cloned()
            .ok_or_else(|| AdmissionError::Tree {
                path: path.clone(),
                detail: format!(
                    "{STARTUP_POLICY} is not in the policy set (missing, or behind a symbolic link)"
                ),
            })?;
        let text = String::from_utf8(text).map_err(|_| AdmissionError::Tree {
            path: path.clone(),
            detail: "not UTF-8".to_owned(),
        })?;
        let stages: Vec<&str> = allowed_stages.iter().map(|s| s.as_str()).collect();
        let data = serde_json::json!({ "startup": { "allowed_stages": stages } });
        let (policy, probe) = CompiledPolicy::compile(
            &[Source {
                name: path.display().to_string(),
                text,
            }],
            Some(("admission data", data)),
            DECISION_RULE,
            limit,
        )
        .map_err(|e| match e {
            PolicyError::Data { message, .. } => AdmissionError::Data { message },
            other => AdmissionError::Compile {
                path: path.clone(),
                message: other.to_string(),
            },
        })?;
        // A policy that cannot produce a decision is refused at load, not at the first model.
        match read_decision(&probe) {
            Some(d) if !d.allowed => Ok(Self {
                policy,
                digest,
                policy_path: path,
            }),
            Some(_) => Err(AdmissionError::Compile {
                path,
                message: "the policy allows an empty input: it must deny by default".to_owned(),
            }),
            None => Err(AdmissionError::Compile {
                path,
                message: format!("{DECISION_RULE} is not {{allow: bool, reasons: set}}"),
            }),
        }
    }

    /// The running policy set's canonical digest, `sha256:<hex>`.
    pub fn policy_digest(&self) -> &str {
        &self.digest
    }

    /// Decides on facts established by [`establish_facts`].
    pub fn decide(&self, facts: &AdmissionFacts) -> Decision {
        match serde_json::to_value(facts) {
            Ok(v) => self.evaluate_json(v),
            Err(e) => Decision::deny(format!("evaluation_error: facts do not serialize: {e}")),
        }
    }

    /// Evaluates the policy on a raw input (case files; tests). Fail closed.
    pub fn evaluate_json(&self, input: serde_json::Value) -> Decision {
        match self.policy.evaluate(regorus::Value::from(input)) {
            Ok(v) => read_decision(&v).unwrap_or_else(|| {
                Decision::deny("evaluation_error: the policy's decision has the wrong shape")
            }),
            Err(e) => {
                tracing::warn!(error = %e, "startup policy evaluation failed: denied");
                Decision::deny("evaluation_error: the startup policy did not evaluate")
            }
        }
    }
}

/// `{"allow": bool, "reasons": set|array of strings}`; allowed only with no reason against.
fn read_decision(v: &regorus::Value) -> Option<Decision> {
    let allow = *field(v, "allow")?.as_bool().ok()?;
    let mut reasons = strings(field(v, "reasons")?)?;
    reasons.sort();
    if !allow && reasons.is_empty() {
        reasons.push("denied: the policy gave no reason".to_owned());
    }
    Some(Decision {
        allowed: allow && reasons.is_empty(),
        reasons,
    })
}

// ---- facts ----------------------------------------------------------------------------------

/// Everything the startup policy decides on; each part established by this agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AdmissionFacts {
    /// Which model version.
    pub model: ModelFacts,
    /// The OMS signature of the model directory.
    pub signature: SignatureFacts,
    /// The release statement.
    pub release: ReleaseFacts,
    /// The attestations the release requires.
    pub attestations: AttestationFacts,
    /// The revocation list.
    pub revocation: RevocationFacts,
    /// The digest of the policy set the agent runs.
    pub running_policy_digest: String,
}

impl AdmissionFacts {
    /// The event to measure into the application PCR once the model is loaded (the verified
    /// root digest and the running policy set's digest); `None` without a verified signature.
    pub fn load_event(&self) -> Option<warden_attest::boot::measure::ModelLoadEvent> {
        Some(warden_attest::boot::measure::ModelLoadEvent {
            model: self.model.name.clone(),
            version: self.model.version.clone(),
            root_digest: self.model.root_digest.clone()?,
            policy_digest: self.running_policy_digest.clone(),
        })
    }
}

/// Verifies the evidence against the key store's anchors and decides: the one call a loader
/// makes on load and on every refresh. Returns the facts too (for the audit trail and for
/// [`AdmissionFacts::load_event`]).
pub fn admit(
    admission: &Admission,
    evidence: &Evidence<'_>,
    store: &dyn KeyStore,
) -> Result<(AdmissionFacts, Decision), AnchorError> {
    let anchors = TrustAnchors::from_key_store(store)?;
    let facts = establish_facts(evidence, &anchors, store, admission.policy_digest());
    let decision = admission.decide(&facts);
    Ok((facts, decision))
}

/// Which model version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelFacts {
    /// Model name (from the agent's config or the push).
    pub name: String,
    /// Version.
    pub version: String,
    /// The verified root digest; `None` unless the signature verified.
    pub root_digest: Option<String>,
}

/// What the signature check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SignatureStatus {
    /// Verified against a model-signer anchor; the files match.
    Valid,
    /// No signature.
    Unsigned,
    /// A trusted signer signed it, but the files differ from what was signed.
    Tampered,
    /// Signed by a key or chain that no model-signer anchor trusts.
    UnknownSigner,
    /// Malformed, or a signature that does not verify.
    Invalid,
}

/// The signature facts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SignatureFacts {
    /// The outcome.
    pub status: SignatureStatus,
    /// Who signed it, when valid.
    pub signer: Option<String>,
    /// Why not, for operators.
    pub detail: String,
    /// The files the signature covers, when valid (the loader checks that the file the engine
    /// loads is one of them). Not part of the policy's input.
    #[serde(skip)]
    pub files: Vec<String>,
    /// The verified model, when valid (kept with a loaded version for later refreshes). Not
    /// part of the policy's input.
    #[serde(skip)]
    pub verified: Option<bundle::VerifiedModel>,
}

/// Whether a signed document was found valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DocumentStatus {
    /// Present and verified.
    Valid,
    /// Not present.
    Missing,
    /// Present, but refused.
    Invalid,
}

/// The release statement facts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReleaseFacts {
    /// The outcome.
    pub status: DocumentStatus,
    /// Stage, when valid.
    pub stage: Option<String>,
    /// The policy set the release expects, when valid.
    pub policy_set_digest: Option<String>,
    /// Who signed it, when valid.
    pub signer: Option<String>,
    /// Why not.
    pub detail: String,
}

/// The attestation facts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AttestationFacts {
    /// The outcome.
    pub status: DocumentStatus,
    /// Predicate types the release requires.
    pub required: Vec<String>,
    /// Predicate types of the verified attestations.
    pub present: Vec<String>,
    /// Why not.
    pub detail: String,
}

/// What the revocation check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RevocationStatus {
    /// A list verified and at least as new as the key store's counter.
    Current,
    /// No list offered.
    None,
    /// A list older than one already accepted.
    Replayed,
    /// A list that does not verify (signer, format), or a counter that cannot be read.
    Invalid,
}

/// The revocation facts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RevocationFacts {
    /// The outcome.
    pub status: RevocationStatus,
    /// The offered list's serial, when it verified.
    pub serial: Option<u64>,
    /// The highest serial accepted before (the key store's counter).
    pub accepted_serial: u64,
    /// The list revokes this model (digest or version).
    pub revoked: bool,
    /// Why (revocation reason, or why the list was refused).
    pub reason: String,
}

/// The signed documents offered for one model version.
#[derive(Debug, Clone, Copy)]
pub struct Evidence<'a> {
    /// Model name.
    pub name: &'a str,
    /// Version.
    pub version: &'a str,
    /// The staged model directory (only the agent can write it).
    pub model_dir: &'a Path,
    /// The OMS signature bundle.
    pub signature: Option<&'a [u8]>,
    /// The release statement bundle.
    pub release: Option<&'a [u8]>,
    /// Carried attestation bundles.
    pub attestations: &'a [Vec<u8>],
    /// The newest revocation list the agent holds.
    pub revocation_list: Option<&'a [u8]>,
    /// For a version already loaded: what its signature verified at load. The signature is
    /// then checked again without re-reading the model (see `bundle::reverify_model_bytes`).
    pub loaded: Option<&'a bundle::VerifiedModel>,
}

/// How much a signature refusal says about the bundle: a refusal by a signer that verified
/// (tampered files) outranks a bad signature, which outranks an unknown signer.
fn classify(e: &BundleError) -> (u8, SignatureStatus) {
    match e {
        BundleError::FileChanged { .. }
        | BundleError::FileAdded { .. }
        | BundleError::FileRemoved { .. }
        | BundleError::FileRenamed { .. }
        | BundleError::InconsistentRootDigest { .. }
        | BundleError::NotAsLoaded { .. } => (3, SignatureStatus::Tampered),
        BundleError::BadSignature { .. } => (2, SignatureStatus::Invalid),
        BundleError::WrongKey { .. }
        | BundleError::UntrustedChain { .. }
        | BundleError::WrongVerificationMaterial { .. }
        | BundleError::NoRoots { .. } => (1, SignatureStatus::UnknownSigner),
        _ => (0, SignatureStatus::Invalid),
    }
}

fn check_signature(
    evidence: &Evidence<'_>,
    signers: &[Verifier],
) -> (SignatureFacts, Option<String>) {
    let Some(sig) = evidence.signature else {
        return (
            SignatureFacts {
                status: SignatureStatus::Unsigned,
                signer: None,
                detail: "the model has no signature".to_owned(),
                files: Vec::new(),
                verified: None,
            },
            None,
        );
    };
    if signers.is_empty() {
        return (
            SignatureFacts {
                status: SignatureStatus::UnknownSigner,
                signer: None,
                detail: "no model-signer anchors are installed".to_owned(),
                files: Vec::new(),
                verified: None,
            },
            None,
        );
    }
    let mut worst: Option<(u8, SignatureStatus, String)> = None;
    for v in signers {
        let verified = match evidence.loaded {
            Some(loaded) => bundle::reverify_model_bytes(sig, v, loaded),
            None => bundle::verify_model_bytes(
                evidence.model_dir,
                sig,
                None,
                v,
                &VerifyOptions::default(),
            ),
        };
        match verified {
            Ok(m) => {
                return (
                    SignatureFacts {
                        status: SignatureStatus::Valid,
                        signer: Some(m.signer.clone()),
                        detail: String::new(),
                        files: m.files.iter().map(|f| f.name.clone()).collect(),
                        verified: Some(m.clone()),
                    },
                    Some(m.root_digest),
                );
            }
            Err(e) => {
                let (rank, status) = classify(&e);
                if worst.as_ref().is_none_or(|(r, _, _)| rank > *r) {
                    worst = Some((rank, status, e.to_string()));
                }
            }
        }
    }
    let (_, status, detail) =
        worst.unwrap_or((0, SignatureStatus::Invalid, "not verified".to_owned()));
    (
        SignatureFacts {
            status,
            signer: None,
            detail,
            files: Vec::new(),
            verified: None,
        },
        None,
    )
}

fn check_release(
    evidence: &Evidence<'_>,
    root_digest: Option<&str>,
    authority: &[Verifier],
) -> (ReleaseFacts, Vec<String>) {
    let invalid = |detail: String| ReleaseFacts {
        status: DocumentStatus::Invalid,
        stage: None,
        policy_set_digest: None,
        signer: None,
        detail,
    };
    let Some(bundle) = evidence.release else {
        return (
            ReleaseFacts {
                status: DocumentStatus::Missing,
                stage: None,
                policy_set_digest: None,
                signer: None,
                detail: "no release statement".to_owned(),
            },
            Vec::new(),
        );
    };
    let Some(root) = root_digest else {
        return (
            invalid("not checked: the model's signature did not verify".to_owned()),
            Vec::new(),
        );
    };
    if authority.is_empty() {
        return (
            invalid("no release-authority anchors are installed".to_owned()),
            Vec::new(),
        );
    }
    let mut last = String::new();
    for v in authority {
        match verify_release(bundle, v, root) {
            Ok(r) => {
                // The release must be about this name and version, not only this digest.
                if r.release.name != evidence.name || r.release.version != evidence.version {
                    return (
                        invalid(format!(
                            "the release is for {} {}, not {} {}",
                            r.release.name, r.release.version, evidence.name, evidence.version
                        )),
                        Vec::new(),
                    );
                }
                let required = r.release.required_attestations.clone();
                return (
                    ReleaseFacts {
                        status: DocumentStatus::Valid,
                        stage: Some(r.release.stage.as_str().to_owned()),
                        policy_set_digest: Some(r.release.policy_set_digest),
                        signer: Some(r.signer),
                        detail: String::new(),
                    },
                    required,
                );
            }
            Err(e) => last = e.to_string(),
        }
    }
    (invalid(last), Vec::new())
}

fn check_attestations(
    evidence: &Evidence<'_>,
    root_digest: Option<&str>,
    release_valid: bool,
    required: Vec<String>,
    signers: &[Verifier],
) -> AttestationFacts {
    let facts = |status, present, detail: String| AttestationFacts {
        status,
        required: required.clone(),
        present,
        detail,
    };
    let (Some(root), true) = (root_digest, release_valid) else {
        return facts(
            DocumentStatus::Invalid,
            Vec::new(),
            "not checked: no verified model and release".to_owned(),
        );
    };
    match verify_attestations(evidence.attestations, &required, root, signers) {
        Ok(v) => facts(
            DocumentStatus::Valid,
            v.into_iter().map(|a| a.predicate_type).collect(),
            String::new(),
        ),
        Err(e @ ReleaseError::AttestationMissing { .. }) => {
            facts(DocumentStatus::Missing, Vec::new(), e.to_string())
        }
        Err(e) => facts(DocumentStatus::Invalid, Vec::new(), e.to_string()),
    }
}

fn check_revocation(
    evidence: &Evidence<'_>,
    root_digest: Option<&str>,
    fleet: &[Verifier],
    store: &dyn KeyStore,
) -> RevocationFacts {
    let accepted = match store.counter(Counter::RevocationSerial) {
        Ok(c) => c,
        Err(e) => {
            return RevocationFacts {
                status: RevocationStatus::Invalid,
                serial: None,
                accepted_serial: 0,
                revoked: false,
                reason: format!("the revocation counter cannot be read: {e}"),
            };
        }
    };
    let facts = |status, serial, revoked, reason: String| RevocationFacts {
        status,
        serial,
        accepted_serial: accepted,
        revoked,
        reason,
    };
    let Some(list) = evidence.revocation_list else {
        return facts(RevocationStatus::None, None, false, String::new());
    };
    if fleet.is_empty() {
        return facts(
            RevocationStatus::Invalid,
            None,
            false,
            "no fleet-authority anchors are installed".to_owned(),
        );
    }
    let mut last = String::new();
    for v in fleet {
        match accept_revocation_list(list, v, store) {
            Ok(l) => {
                let digest = root_digest.unwrap_or("");
                return match l.check(evidence.name, evidence.version, digest) {
                    Ok(()) => facts(
                        RevocationStatus::Current,
                        Some(l.serial),
                        false,
                        String::new(),
                    ),
                    Err(e) => facts(
                        RevocationStatus::Current,
                        Some(l.serial),
                        true,
                        e.to_string(),
                    ),
                };
            }
            Err(RevocationError::OlderSerial { serial, .. }) => {
                return facts(
                    RevocationStatus::Replayed,
                    Some(serial),
                    false,
                    format!("list serial {serial} is older than the accepted serial {accepted}"),
                );
            }
            Err(e) => last = e.to_string(),
        }
    }
    facts(RevocationStatus::Invalid, None, false, last)
}

/// Verifies the evidence and records what held. Accepting a newer revocation list advances
/// the key store's counter (anti-rollback), as [`accept_revocation_list`] does.
pub fn establish_facts(
    evidence: &Evidence<'_>,
    anchors: &TrustAnchors,
    store: &dyn KeyStore,
    running_policy_digest: &str,
) -> AdmissionFacts {
    let (signature, root_digest) = check_signature(evidence, &anchors.model_signers);
    let (release, required) =
        check_release(evidence, root_digest.as_deref(), &anchors.release_authority);
    let attestations = check_attestations(
        evidence,
        root_digest.as_deref(),
        release.status == DocumentStatus::Valid,
        required,
        &anchors.attestation_signers,
    );
    let revocation = check_revocation(
        evidence,
        root_digest.as_deref(),
        &anchors.fleet_authority,
        store,
    );
    AdmissionFacts {
        model: ModelFacts {
            name: evidence.name.to_owned(),
            version: evidence.version.to_owned(),
            root_digest,
        },
        signature,
        release,
        attestations,
        revocation,
        running_policy_digest: running_policy_digest.to_owned(),
    }
}
