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

mod establish;
mod facts;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::policy::set::{PolicySetError, PolicySetFiles};
use crate::policy::{CompiledPolicy, PolicyError, field, strings};
use warden_attest::anchors::{AnchorError, TrustAnchors};
use warden_attest::release::Stage;
use warden_keystore::KeyStore;

pub use establish::establish_facts;
pub use facts::{
    AdmissionFacts, AttestationFacts, DocumentStatus, Evidence, ModelFacts, ReleaseFacts,
    RevocationFacts, RevocationStatus, SignatureFacts, SignatureStatus,
};

/// The rule the agent reads.
pub const DECISION_RULE: &str = "data.warden.serving.startup.decision";
/// The startup policy, relative to the policy directory.
pub const STARTUP_POLICY: &str = "serving/startup.rego";
/// Default execution limit of one evaluation.
pub const DEFAULT_LIMIT: Duration = Duration::from_millis(100);

/// Why the admission policy could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum AdmissionError {
    /// The policy set's files or data documents.
    #[error(transparent)]
    Files(#[from] PolicySetError),
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
    /// The entry point read.
    rule: String,
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
        Self::from_set(
            &PolicySetFiles::read(policy_dir)?,
            allowed_stages,
            DECISION_RULE,
            limit,
        )
    }

    /// The policies of a set already read (so that every consumer of the set compiles the
    /// same bytes, those its digest names), with the set's data documents and the stages this
    /// appliance serves at `data.startup.allowed_stages`, answering the entry point `rule`:
    /// Warden's `decision` object, or a boolean rule such as the specification's
    /// `data.serving.startup.permit`.
    pub fn from_set(
        set: &PolicySetFiles,
        allowed_stages: &[Stage],
        rule: &str,
        limit: Duration,
    ) -> Result<Self, AdmissionError> {
        let digest = set.digest().to_owned();
        let path = set.directory().join(STARTUP_POLICY);
        if rule == DECISION_RULE && set.policy(STARTUP_POLICY).is_none() {
            return Err(AdmissionError::Tree {
                path,
                detail: format!(
                    "{STARTUP_POLICY} is not in the policy set (missing, or behind a symbolic link)"
                ),
            });
        }
        let sources = set.policies()?;
        let stages: Vec<&str> = allowed_stages.iter().map(|s| s.as_str()).collect();
        let data = set.data_with(serde_json::json!({ "startup": { "allowed_stages": stages } }))?;
        let (policy, probe) =
            CompiledPolicy::compile(&sources, Some(("the policy set's data", data)), rule, limit)
                .map_err(|e| match e {
                PolicyError::Data { message, .. } => AdmissionError::Data { message },
                other => AdmissionError::Compile {
                    path: path.clone(),
                    message: other.to_string(),
                },
            })?;
        // A policy that cannot produce a decision is refused at load, not at the first model.
        match read_decision(&probe, rule) {
            Some(d) if !d.allowed => Ok(Self {
                policy,
                digest,
                policy_path: path,
                rule: rule.to_owned(),
            }),
            Some(_) => Err(AdmissionError::Compile {
                path,
                message: "the policy allows an empty input: it must deny by default".to_owned(),
            }),
            None => Err(AdmissionError::Compile {
                path,
                message: format!("{rule} is neither a boolean nor {{allow: bool, reasons: set}}"),
            }),
        }
    }

    /// The running policy set's canonical digest, `sha256:<hex>`.
    pub fn policy_digest(&self) -> &str {
        &self.digest
    }

    /// Decides on facts established by [`establish_facts`].
    pub fn decide(&self, facts: &AdmissionFacts) -> Decision {
        match facts.policy_input() {
            Ok(v) => self.evaluate_json(v),
            Err(e) => Decision::deny(format!("evaluation_error: facts do not serialize: {e}")),
        }
    }

    /// Evaluates the policy on a raw input (case files; tests). Fail closed.
    pub fn evaluate_json(&self, input: serde_json::Value) -> Decision {
        match self.policy.evaluate(regorus::Value::from(input)) {
            Ok(v) => read_decision(&v, &self.rule).unwrap_or_else(|| {
                Decision::deny("evaluation_error: the policy's decision has the wrong shape")
            }),
            Err(e) => {
                tracing::warn!(error = %e, "startup policy evaluation failed: denied");
                Decision::deny("evaluation_error: the startup policy did not evaluate")
            }
        }
    }
}

/// `{"allow": bool, "reasons": set|array of strings}`; allowed only with no reason against. A
/// configured boolean entry point allows when true, its refusal naming the rule; Warden's own
/// decision rule must answer the object.
fn read_decision(v: &regorus::Value, rule: &str) -> Option<Decision> {
    if let Ok(allow) = v.as_bool()
        && rule != DECISION_RULE
    {
        return Some(if *allow {
            Decision {
                allowed: true,
                reasons: Vec::new(),
            }
        } else {
            Decision::deny(format!("denied: {rule} is false"))
        });
    }
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

/// Verifies the evidence against the key store's anchors and decides: the one call a loader
/// makes on load and on every refresh. Returns the facts too (for the audit trail and for
/// [`AdmissionFacts::load_event`]).
pub fn admit(
    admission: &Admission,
    evidence: &Evidence<'_>,
    store: &dyn KeyStore,
) -> Result<(AdmissionFacts, Decision), AnchorError> {
    let mut anchors = TrustAnchors::from_key_store(store)?;
    if !evidence.signer_crls.is_empty() {
        anchors.model_signers = anchors
            .model_signers
            .into_iter()
            .map(|v| v.with_revocation_lists(evidence.signer_crls))
            .collect::<Result<_, _>>()
            .map_err(|e| AnchorError::Malformed {
                role: warden_keystore::Role::ModelSigners,
                detail: e.to_string(),
            })?;
    }
    let facts = establish_facts(evidence, &anchors, store, admission.policy_digest());
    let decision = admission.decide(&facts);
    Ok((facts, decision))
}
