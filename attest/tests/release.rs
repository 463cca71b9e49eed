//! Release statements, attestations and revocation lists: signed and verified with the same
//! DSSE/Sigstore code as OMS bundles; each refusal is precise.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod anti_rollback;

use anti_rollback::{
    digest, keypair, list, policy_set_anti_rollback, revocation_anti_rollback, tamper_payload,
};
use warden_attest::bundle::BundleError;
use warden_attest::release::{
    RELEASE_PREDICATE_TYPE, Release, ReleaseError, Stage, sign_attestation, sign_release,
    verify_attestations, verify_release,
};
use warden_attest::revocation::{RevocationError, sign_revocation_list, verify_revocation_list};
use warden_keystore::software::SoftwareKeyStore;

const SLSA: &str = "https://slsa.dev/provenance/v1";
const EVAL: &str = "https://warden.dev/evaluation/v1";

fn release() -> Release {
    Release {
        name: "fraud".into(),
        version: "3".into(),
        stage: Stage::Approved,
        policy_set_digest: digest("cd"),
        required_attestations: vec![SLSA.into(), EVAL.into()],
    }
}

#[test]
fn release_statement_round_trips() {
    let (signer, verifier) = keypair();
    let bundle = sign_release(&release(), &digest("ab"), &signer).unwrap();
    let v = verify_release(&bundle, &verifier, &digest("ab")).unwrap();
    assert_eq!(v.release, release());
    assert_eq!(v.root_digest, digest("ab"));
    assert!(v.signer.starts_with("key "));
    v.check_policy_digest(&digest("cd")).unwrap();
    // The statement is a standard in-toto statement in a Sigstore bundle.
    let json: serde_json::Value = serde_json::from_slice(&bundle).unwrap();
    assert_eq!(
        json["mediaType"],
        "application/vnd.dev.sigstore.bundle.v0.3+json"
    );
}

#[test]
fn release_refusals_are_precise() {
    let (signer, verifier) = keypair();
    let (_, stranger) = keypair();
    let bundle = sign_release(&release(), &digest("ab"), &signer).unwrap();

    // Wrong signer.
    let err = verify_release(&bundle, &stranger, &digest("ab")).unwrap_err();
    assert!(
        matches!(&err, ReleaseError::Signature { source, .. } if matches!(**source, BundleError::WrongKey { .. })),
        "{err}"
    );
    // Tampered: stage, version or required attestations changed.
    for f in [
        (|s: &mut serde_json::Value| s["predicate"]["stage"] = "Development".into())
            as fn(&mut serde_json::Value),
        |s| s["predicate"]["version"] = "4".into(),
        |s| s["predicate"]["requiredAttestations"] = serde_json::json!([]),
    ] {
        let t = tamper_payload(&bundle, f);
        let err = verify_release(&t, &verifier, &digest("ab")).unwrap_err();
        assert!(
            matches!(&err, ReleaseError::Signature { source, .. } if matches!(**source, BundleError::BadSignature { .. })),
            "{err}"
        );
    }
    // For another model.
    let err = verify_release(&bundle, &verifier, &digest("ee")).unwrap_err();
    assert!(matches!(err, ReleaseError::DigestMismatch { .. }), "{err}");
    // Expects another policy set.
    let v = verify_release(&bundle, &verifier, &digest("ab")).unwrap();
    assert!(matches!(
        v.check_policy_digest(&digest("00")),
        Err(ReleaseError::PolicyDigestMismatch { .. })
    ));
    // A signed statement of another type is not a release.
    let other = sign_attestation(
        SLSA,
        &serde_json::json!({}),
        "fraud",
        &digest("ab"),
        &signer,
    )
    .unwrap();
    assert!(matches!(
        verify_release(&other, &verifier, &digest("ab")),
        Err(ReleaseError::Malformed { .. })
    ));
    // An unknown stage, even when properly signed.
    let bogus = sign_attestation(
        RELEASE_PREDICATE_TYPE,
        &serde_json::json!({"name": "fraud", "version": "3", "stage": "Golden",
                             "policySetDigest": digest("cd")}),
        "fraud",
        &digest("ab"),
        &signer,
    )
    .unwrap();
    assert!(matches!(
        verify_release(&bogus, &verifier, &digest("ab")),
        Err(ReleaseError::Malformed { .. })
    ));
    // Not even JSON.
    assert!(verify_release(b"garbage", &verifier, &digest("ab")).is_err());
}

#[test]
fn attestations_required_present_and_valid() {
    let (builder, builder_v) = keypair();
    let (evaluator, evaluator_v) = keypair();
    let (stranger, _) = keypair();
    let root = digest("ab");
    let slsa = sign_attestation(
        SLSA,
        &serde_json::json!({"builder": "ci"}),
        "fraud",
        &root,
        &builder,
    )
    .unwrap();
    let eval = sign_attestation(
        EVAL,
        &serde_json::json!({"auc": 0.93}),
        "fraud",
        &root,
        &evaluator,
    )
    .unwrap();
    let signers = [builder_v, evaluator_v];
    let required = release().required_attestations;

    let ok =
        verify_attestations(&[slsa.clone(), eval.clone()], &required, &root, &signers).unwrap();
    assert_eq!(ok.len(), 2);
    assert_eq!(ok[1].predicate["auc"], 0.93);

    // Missing one.
    let err =
        verify_attestations(std::slice::from_ref(&slsa), &required, &root, &signers).unwrap_err();
    assert!(
        matches!(&err, ReleaseError::AttestationMissing { predicate_type } if predicate_type == EVAL),
        "{err}"
    );
    // Signed by nobody we trust.
    let forged = sign_attestation(
        EVAL,
        &serde_json::json!({"auc": 0.99}),
        "fraud",
        &root,
        &stranger,
    )
    .unwrap();
    let err = verify_attestations(&[slsa.clone(), forged], &required, &root, &signers).unwrap_err();
    assert!(
        matches!(err, ReleaseError::AttestationInvalid { index: 1, .. }),
        "{err}"
    );
    // About another model.
    let elsewhere = sign_attestation(
        EVAL,
        &serde_json::json!({}),
        "fraud",
        &digest("ee"),
        &evaluator,
    )
    .unwrap();
    let err =
        verify_attestations(&[slsa.clone(), elsewhere], &required, &root, &signers).unwrap_err();
    assert!(
        matches!(err, ReleaseError::AttestationInvalid { index: 1, .. }),
        "{err}"
    );
    // Tampered.
    let tampered = tamper_payload(&eval, |s| s["predicate"]["auc"] = 0.99.into());
    let err = verify_attestations(&[slsa, tampered], &required, &root, &signers).unwrap_err();
    assert!(
        matches!(err, ReleaseError::AttestationInvalid { index: 1, .. }),
        "{err}"
    );
}

#[test]
fn revocation_list_refuses_revoked_and_older_lists_software() {
    let dir = tempfile::tempdir().unwrap();
    let store = SoftwareKeyStore::open(dir.path()).unwrap();
    revocation_anti_rollback(&store);
}

#[test]
fn revoked_digest_and_version_are_refused() {
    let (fleet, fleet_v) = keypair();
    let l = sign_revocation_list(&list(1), &fleet).unwrap();
    let l = verify_revocation_list(&l, &fleet_v, 0).unwrap();
    let err = l.check("fraud", "3", &digest("ab")).unwrap_err();
    assert!(
        matches!(err, RevocationError::RevokedDigest { serial: 1, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("signing key compromised"));
    let err = l.check("fraud", "2", &digest("cc")).unwrap_err();
    assert!(
        matches!(err, RevocationError::RevokedVersion { .. }),
        "{err}"
    );
    l.check("fraud", "3", &digest("cc")).unwrap();
    l.check("other", "2", &digest("cc")).unwrap();
    // Subjects that disagree with the predicate are refused even when signed.
    let mixed = tamper_payload(&sign_revocation_list(&list(1), &fleet).unwrap(), |s| {
        s["subject"] = serde_json::json!([])
    });
    assert!(verify_revocation_list(&mixed, &fleet_v, 0).is_err());
}

#[test]
fn policy_sets_refuse_strangers_other_files_and_older_serials_software() {
    let dir = tempfile::tempdir().unwrap();
    let store = SoftwareKeyStore::open(dir.path()).unwrap();
    policy_set_anti_rollback(&store);
}
