//! The statements inside signed bundles, past the signature: the target wraps the fuzzed
//! payload (an in-toto statement) in a correctly signed Sigstore bundle (DSSE, the fixed key:
//! see common.rs), so that every input reaches the statement and predicate parsers of OMS
//! model manifests, release statements, revocation lists, policy sets and attestations.
//!
//! Input: one mode byte, then the payload. Mode bits 0-2 pick the consumer, as in oms_bundle:
//! model (`verify_model_bytes` against a tiny model directory), release, revocation list,
//! policy set, attestations, re-admission (`reverify_model_bytes`). Mode bit 3, for the
//! model: before signing, set the statement's subject digest to the SHA-256 over its
//! resources' digests (JSON re-serialized), which the fuzzer cannot compute, so that the
//! manifest comparison with the files on disk is reached.
//!
//! Properties: no panic; a verified model lists only files of the model directory with the
//! root digest over the listed digests; a release covers the model's digest and names a
//! well-formed policy-set digest; a revocation list's digests are well-formed, each revokes,
//! and its serial is not below the current one; a policy set is the expected digest; a
//! re-admitted model keeps its root digest and resources.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use sha2::Digest as _;
use warden_attest::bundle::{VerifyOptions, reverify_model_bytes, verify_model_bytes};
use warden_attest::policyset::verify_policy_set;
use warden_attest::release::{verify_attestations, verify_release};
use warden_attest::revocation::verify_revocation_list;

fuzz_target!(|data: &[u8]| run(data));

/// The subject digest an OMS statement needs: SHA-256 over its resources' digests.
fn fix_root(payload: &[u8]) -> Option<Vec<u8>> {
    let mut v: Value = serde_json::from_slice(payload).ok()?;
    let mut h = sha2::Sha256::new();
    for r in v.get("predicate")?.get("resources")?.as_array()? {
        h.update(hex::decode(r.get("digest")?.as_str()?).ok()?);
    }
    let root = hex::encode(h.finalize());
    *v.get_mut("subject")?
        .get_mut(0)?
        .get_mut("digest")?
        .get_mut("sha256")? = Value::String(root);
    serde_json::to_vec(&v).ok()
}

fn check_digest(d: &str) {
    let hex = d.strip_prefix("sha256:").unwrap_or_else(|| panic!("{d:?}"));
    assert!(
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "{d:?}"
    );
}

fn run(data: &[u8]) {
    common::one_thread();
    let Some((&mode, payload)) = data.split_first() else {
        return;
    };
    let fixed;
    let payload = if mode & 8 != 0 {
        match fix_root(payload) {
            Some(p) => {
                fixed = p;
                &fixed[..]
            }
            None => payload,
        }
    } else {
        payload
    };
    let bundle = common::sign_bundle(payload);
    let verifier = common::verifier();
    let loaded = &common::loaded().1;
    match mode & 7 {
        0 | 6 => {
            if let Ok(v) = verify_model_bytes(
                common::model_dir(),
                &bundle,
                None,
                verifier,
                &VerifyOptions::default(),
            ) {
                check_digest(&v.root_digest);
                let mut h = sha2::Sha256::new();
                for f in &v.files {
                    let path = f.name.split(':').next().unwrap_or_default();
                    assert!(
                        common::MODEL_FILES.iter().any(|(n, _)| *n == path),
                        "verified a resource {:?} that is not in the model",
                        f.name
                    );
                    h.update(hex::decode(&f.digest_hex).unwrap_or_else(|e| panic!("{e}")));
                }
                assert_eq!(
                    v.root_digest,
                    format!("sha256:{}", hex::encode(h.finalize()))
                );
                assert_eq!(v.signer, format!("key {}", common::hint()));
            }
        }
        1 => {
            if let Ok(r) = verify_release(&bundle, verifier, &loaded.root_digest) {
                assert_eq!(r.root_digest, loaded.root_digest);
                check_digest(&r.release.policy_set_digest);
                let running = r.release.policy_set_digest.clone();
                assert!(r.check_policy_digest(&running).is_ok());
                assert!(r.check_policy_digest("sha256:0").is_err());
            }
        }
        2 => {
            if let Ok(list) = verify_revocation_list(&bundle, verifier, 1) {
                assert!(list.serial >= 1);
                for d in &list.revoked_digests {
                    check_digest(&d.digest);
                    assert!(list.check("any", "any", &d.digest).is_err());
                }
                for r in &list.revoked_versions {
                    assert!(list.check(&r.name, &r.version, "sha256:none").is_err());
                }
                // The same list is refused once a higher serial was accepted.
                if let Some(next) = list.serial.checked_add(1) {
                    assert!(verify_revocation_list(&bundle, verifier, next).is_err());
                }
            }
        }
        3 => {
            let digest = common::policy_digest();
            if let Ok(set) = verify_policy_set(&bundle, verifier, &digest, 1) {
                assert_eq!(set.policy_set_digest, digest);
                assert!(set.serial >= 1);
            }
        }
        4 => {
            let required = ["https://warden.dev/attestation/test/v1".to_owned()];
            if let Ok(v) = verify_attestations(
                std::slice::from_ref(&bundle),
                &required,
                &loaded.root_digest,
                std::slice::from_ref(verifier),
            ) {
                assert!(v.iter().any(|a| a.predicate_type == required[0]));
            }
        }
        _ => {
            if let Ok(v) = reverify_model_bytes(&bundle, verifier, loaded) {
                assert_eq!(v.root_digest, loaded.root_digest);
                let (mut a, mut b) = (v.files.clone(), loaded.files.clone());
                a.sort_by(|x, y| x.name.cmp(&y.name));
                b.sort_by(|x, y| x.name.cmp(&y.name));
                assert_eq!(a, b);
            }
        }
    }
}
