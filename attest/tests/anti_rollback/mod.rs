//! The anti-rollback paths of revocation lists and policy sets, run against any key store's
//! counters: the software store here, a TPM's NV counters in the key service's tests
//! (`attest/keyd/tests/anti_rollback.rs` includes this file).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use base64::Engine as _;
use p256::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _, LineEnding};
use warden_attest::bundle::{Signer, Verifier};
use warden_attest::policyset::{
    PolicySet, PolicySetError, accept_policy_set, sign_policy_set, verify_policy_set,
};
use warden_attest::release::ReleaseError;
use warden_attest::revocation::{
    RevocationError, RevocationList, RevokedDigest, RevokedVersion, accept_revocation_list,
    sign_revocation_list,
};
use warden_keystore::{Counter, KeyStore};

pub fn keypair() -> (Signer, Verifier) {
    let k = p256::SecretKey::random(&mut rand_core::OsRng);
    let pem = k.to_pkcs8_pem(LineEnding::LF).unwrap();
    let public = k.public_key().to_public_key_pem(LineEnding::LF).unwrap();
    (
        Signer::from_private_key_pem(&pem).unwrap(),
        Verifier::from_public_key_pem(&public).unwrap(),
    )
}

pub fn digest(c: &str) -> String {
    format!("sha256:{}", c.repeat(32))
}

/// Re-encodes the bundle with its payload changed by `f` (the signature is left as is).
pub fn tamper_payload(bundle: &[u8], f: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
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

pub fn list(serial: u64) -> RevocationList {
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
pub fn revocation_anti_rollback(store: &dyn KeyStore) {
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

pub fn policy_set(serial: u64) -> PolicySet {
    PolicySet {
        serial,
        policy_set_digest: digest("cd"),
    }
}

/// A signed policy set: verifies only against the fleet authority, for the files it names,
/// and never below the serial accepted; every refusal leaves the counter where it was.
pub fn policy_set_anti_rollback(store: &dyn KeyStore) {
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
