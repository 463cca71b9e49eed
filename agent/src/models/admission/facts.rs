//! What the startup policy decides on: the facts this agent established about one version
//! (model, signature, release, attestations, revocation, the running policy set), and the
//! evidence they are established from. Serialized as the policy's input.

use std::path::Path;

use serde::Serialize;
use warden_attest::bundle;

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

/// The input the startup policy sees: the facts, and beside them the fields of the
/// specification's startup policy (6.1), derived from the same facts, so that its example runs
/// as written: `stage` (the release's stage, when the release verified), `signatures.model_valid`,
/// `attestation.present` (every attestation the release requires verified), `revoke` (not
/// cleared by a current revocation list, or by having no list while none was ever accepted),
/// `policy_digest` (the set the release pins) and `runtime.policy_digest` (the set running).
#[derive(Serialize)]
struct StartupInput<'a> {
    #[serde(flatten)]
    facts: &'a AdmissionFacts,
    stage: Option<&'a str>,
    signatures: SignaturesView,
    attestation: AttestationView,
    revoke: bool,
    policy_digest: Option<&'a str>,
    runtime: RuntimeView<'a>,
}

#[derive(Serialize)]
struct SignaturesView {
    model_valid: bool,
}

#[derive(Serialize)]
struct AttestationView {
    present: bool,
}

#[derive(Serialize)]
struct RuntimeView<'a> {
    policy_digest: &'a str,
}

impl AdmissionFacts {
    /// The startup policy's input (see `StartupInput`).
    pub fn policy_input(&self) -> Result<serde_json::Value, serde_json::Error> {
        let release_valid = self.release.status == DocumentStatus::Valid;
        let not_revoked = match self.revocation.status {
            RevocationStatus::Current => !self.revocation.revoked,
            RevocationStatus::None => self.revocation.accepted_serial == 0,
            RevocationStatus::Replayed | RevocationStatus::Invalid => false,
        };
        serde_json::to_value(StartupInput {
            facts: self,
            stage: self.release.stage.as_deref().filter(|_| release_valid),
            signatures: SignaturesView {
                model_valid: self.signature.status == SignatureStatus::Valid,
            },
            attestation: AttestationView {
                present: self.attestations.status == DocumentStatus::Valid
                    && self
                        .attestations
                        .required
                        .iter()
                        .all(|r| self.attestations.present.contains(r)),
            },
            revoke: !not_revoked,
            policy_digest: self
                .release
                .policy_set_digest
                .as_deref()
                .filter(|_| release_valid),
            runtime: RuntimeView {
                policy_digest: &self.running_policy_digest,
            },
        })
    }

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
    /// The file the engine loads, relative to `model_dir`: what a single-file signature
    /// (model_signing signing a file: its one resource named `.`) is checked against.
    pub model_file: Option<&'a Path>,
    /// The OMS signature bundle.
    pub signature: Option<&'a [u8]>,
    /// The release statement bundle.
    pub release: Option<&'a [u8]>,
    /// Carried attestation bundles.
    pub attestations: &'a [Vec<u8>],
    /// The newest revocation list the agent holds.
    pub revocation_list: Option<&'a [u8]>,
    /// Revocation lists (DER) for model signers' certificates (`trust.model_signer_crls`).
    pub signer_crls: &'a [Vec<u8>],
    /// For a version already loaded: what its signature verified at load. The signature is
    /// then checked again without re-reading the model (see `bundle::reverify_model_bytes`).
    pub loaded: Option<&'a bundle::VerifiedModel>,
}
