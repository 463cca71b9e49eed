//! Release statements, attestations and revocation lists: signed and verified with the same
//! DSSE/Sigstore code as OMS bundles; each refusal is precise.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod devices;

use base64::Engine as _;
use p256::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _, LineEnding};
use warden_attest::bundle::{BundleError, Signer, Verifier};
use warden_attest::keystore::software::SoftwareKeyStore;
use warden_attest::keystore::tpm::{TpmConfig, TpmKeyStore};
use warden_attest::keystore::{Counter, KeyStore};
use warden_attest::policyset::{
    PolicySet, PolicySetError, accept_policy_set, sign_policy_set, verify_policy_set,
};
use warden_attest::release::{
    RELEASE_PREDICATE_TYPE, Release, ReleaseError, Stage, sign_attestation, sign_release,
    verify_attestations, verify_release,
};
use warden_attest::revocation::{
    RevocationError, RevocationList, RevokedDigest, RevokedVersion, accept_revocation_list,
    sign_revocation_list, verify_revocation_list,
};

fn keypair() -> (Signer, Verifier) {
    let k = p256::SecretKey::random(&mut rand_core::OsRng);
    let pem = k.to_pkcs8_pem(LineEnding::LF).unwrap();
    let public = k.public_key().to_public_key_pem(LineEnding::LF).unwrap();
    (
        Signer::from_private_key_pem(&pem).unwrap(),
        Verifier::from_public_key_pem(&public).unwrap(),
    )
}

fn digest(c: &str) -> String {
    format!("sha256:{}", c.repeat(32))
}

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

/// Re-encodes the bundle with its payload changed by `f` (the signature is left as is).
fn tamper_payload(bundle: &[u8], f: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut v: serde_json::Value = serde_json::from_slice(bundle).unwrap();
    let payload = b64
        .decode(v["dsseEnvelope"]["payload"].as_str().unwrap())
        .unwrap();
    let mut statement: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    f(&mut statement);
    v["dsseEnvelope"]["payload"] =
        serde_json::Value::String(b64.encode(serde_json::to_vec(&statement).unwrap()));
    serde_json::to_vec(&v).unwrap()
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

fn list(serial: u64) -> RevocationList {
    RevocationList {
        serial,
        revoked_digests: vec![RevokedDigest {
            digest: digest("ab"),
            reason: "signing key compromised".into(),
        }],
        revoked_versions: vec![RevokedVersion {
            name: "fraud".into(),
            version: "2".into(),
            reason: "bias found in evaluation".into(),
        }],
    }
}

/// The anti-rollback path on a key store: newer accepted, equal re-accepted, older refused.
fn revocation_anti_rollback(store: &dyn KeyStore) {
    let (fleet, fleet_v) = keypair();
    let (_, stranger) = keypair();
    let l5 = sign_revocation_list(&list(5), &fleet).unwrap();
    let l6 = sign_revocation_list(&list(6), &fleet).unwrap();

    let accepted = accept_revocation_list(&l5, &fleet_v, store).unwrap();
    assert_eq!(store.counter(Counter::RevocationSerial).unwrap(), 5);
    assert_eq!(accepted, list(5));
    accept_revocation_list(&l6, &fleet_v, store).unwrap();
    accept_revocation_list(&l6, &fleet_v, store).unwrap(); // same list after a restart
    let err = accept_revocation_list(&l5, &fleet_v, store).unwrap_err();
    assert!(
        matches!(
            err,
            RevocationError::OlderSerial {
                serial: 5,
                current: 6
            }
        ),
        "{err}"
    );
    assert_eq!(store.counter(Counter::RevocationSerial).unwrap(), 6);

    // Wrong signer and tampering do not move the counter.
    let l9 = sign_revocation_list(&list(9), &fleet).unwrap();
    assert!(matches!(
        accept_revocation_list(&l9, &stranger, store),
        Err(RevocationError::Statement(e)) if matches!(*e, ReleaseError::Signature { .. })
    ));
    let tampered = tamper_payload(&l9, |s| {
        s["predicate"]["revokedDigests"] = serde_json::json!([])
    });
    assert!(accept_revocation_list(&tampered, &fleet_v, store).is_err());
    assert_eq!(store.counter(Counter::RevocationSerial).unwrap(), 6);
}

#[test]
fn revocation_list_refuses_revoked_and_older_lists_software() {
    let dir = tempfile::tempdir().unwrap();
    let store = SoftwareKeyStore::open(dir.path()).unwrap();
    revocation_anti_rollback(&store);
}

#[test]
fn revocation_list_refuses_older_lists_tpm_counter() {
    let tpm = devices::Swtpm::start();
    let cfg = TpmConfig {
        tcti: tpm.tcti.clone(),
        seal_pcrs: vec![16],
    };
    let store = TpmKeyStore::open(&cfg).unwrap();
    revocation_anti_rollback(&store);
    drop(store);
    // The TPM remembers across a restart of the agent.
    let store = TpmKeyStore::open(&cfg).unwrap();
    assert_eq!(store.counter(Counter::RevocationSerial).unwrap(), 6);
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

fn policy_set(serial: u64) -> PolicySet {
    PolicySet {
        serial,
        policy_set_digest: digest("cd"),
    }
}

/// A signed policy set: verifies only against the fleet authority, for the files it names,
/// and never below the serial accepted; every refusal leaves the counter where it was.
fn policy_set_anti_rollback(store: &dyn KeyStore) {
    let (fleet, fleet_v) = keypair();
    let (_, stranger) = keypair();
    let s3 = sign_policy_set(&policy_set(3), &fleet).unwrap();
    let s4 = sign_policy_set(&policy_set(4), &fleet).unwrap();
    assert_eq!(
        accept_policy_set(&s3, &fleet_v, &digest("cd"), store).unwrap(),
        policy_set(3)
    );
    accept_policy_set(&s4, &fleet_v, &digest("cd"), store).unwrap();
    accept_policy_set(&s4, &fleet_v, &digest("cd"), store).unwrap(); // again after a restart
    let err = accept_policy_set(&s3, &fleet_v, &digest("cd"), store).unwrap_err();
    assert!(
        matches!(
            err,
            PolicySetError::OlderSerial {
                serial: 3,
                current: 4
            }
        ),
        "{err}"
    );
    let s9 = sign_policy_set(&policy_set(9), &fleet).unwrap();
    assert!(matches!(
        accept_policy_set(&s9, &fleet_v, &digest("ef"), store),
        Err(PolicySetError::DigestMismatch { .. })
    ));
    assert!(matches!(
        accept_policy_set(&s9, &stranger, &digest("cd"), store),
        Err(PolicySetError::Statement(e)) if matches!(*e, ReleaseError::Signature { .. })
    ));
    // A changed statement no longer verifies.
    let forked = tamper_payload(&s9, |s| {
        s["predicate"]["policySetDigest"] = serde_json::json!(digest("ef"))
    });
    assert!(accept_policy_set(&forked, &fleet_v, &digest("ef"), store).is_err());
    assert_eq!(store.counter(Counter::PolicySetSerial).unwrap(), 4);
    assert!(matches!(
        sign_policy_set(
            &PolicySet {
                serial: 1,
                policy_set_digest: "sha256:xyz".into()
            },
            &fleet
        ),
        Err(PolicySetError::Malformed { .. })
    ));
    // Verification alone records nothing.
    verify_policy_set(&s9, &fleet_v, &digest("cd"), 4).unwrap();
    assert_eq!(store.counter(Counter::PolicySetSerial).unwrap(), 4);
}

#[test]
fn policy_sets_refuse_strangers_other_files_and_older_serials_software() {
    let dir = tempfile::tempdir().unwrap();
    let store = SoftwareKeyStore::open(dir.path()).unwrap();
    policy_set_anti_rollback(&store);
}

#[test]
fn policy_sets_refuse_older_serials_tpm_counter() {
    let tpm = devices::Swtpm::start();
    let cfg = TpmConfig {
        tcti: tpm.tcti.clone(),
        seal_pcrs: vec![16],
    };
    let store = TpmKeyStore::open(&cfg).unwrap();
    policy_set_anti_rollback(&store);
    drop(store);
    let store = TpmKeyStore::open(&cfg).unwrap();
    assert_eq!(store.counter(Counter::PolicySetSerial).unwrap(), 4);
}
