//! Establishing the facts: each piece of evidence verified against the key store's anchors
//! (the model directory against its OMS signature, the release statement against the release
//! authority, the attestations, the revocation list against the fleet authority and the key
//! store's anti-rollback counter). Never fails: whatever does not verify becomes a fact that
//! the policy refuses.

use std::path::Path;

use warden_attest::anchors::TrustAnchors;
use warden_attest::bundle::{self, BundleError, Verifier, VerifyOptions};
use warden_attest::release::{ReleaseError, verify_attestations, verify_release};
use warden_attest::revocation::{RevocationError, accept_revocation_list};
use warden_keystore::{Counter, KeyStore};

use super::facts::{
    AdmissionFacts, AttestationFacts, DocumentStatus, Evidence, ModelFacts, ReleaseFacts,
    RevocationFacts, RevocationStatus, SignatureFacts, SignatureStatus,
};

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
                &VerifyOptions {
                    model_file: evidence.model_file.map(Path::to_path_buf),
                    ..VerifyOptions::default()
                },
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
