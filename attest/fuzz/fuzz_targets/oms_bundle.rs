//! Signed documents as they arrive (a pushed or pulled model bundle's `model.sig`, release
//! statement, attestations, revocation list, policy set): raw Sigstore bundle bytes against a
//! fixed verifier. Reaches the bundle JSON, the DSSE envelope, base64, the verification
//! material and, with the certificate method, the X.509 chain (x509-parser, webpki) before any
//! signature check; the seeds are correctly signed, so mutations of their payload reach the
//! statement parsers only where they keep the signature (rarely: see oms_statement).
//!
//! Input: one mode byte, then the bundle. Mode bit 0: the certificate method (chain to the
//! fixtures/root.pem root) instead of the fixed key. Bits 1-3 pick the consumer: the model
//! (`verify_model_bytes` against a tiny model), a release (`verify_release`), a revocation list
//! (`verify_revocation_list`), a policy set (`verify_policy_set`), attestations
//! (`verify_attestations`), re-admission (`reverify_model_bytes`).
//!
//! Properties: no panic; a verified model lists only files of the model directory, with the
//! root digest over the listed digests; a verified release, list or set is well-formed (see
//! each check).
#![no_main]

#[path = "common.rs"]
mod common;

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sha2::Digest as _;
use warden_attest::bundle::{
    VerifiedModel, Verifier, VerifyOptions, reverify_model_bytes, verify_model_bytes,
};
use warden_attest::policyset::verify_policy_set;
use warden_attest::release::{verify_attestations, verify_release};
use warden_attest::revocation::verify_revocation_list;

/// The certificate-method verifier: the root in fixtures/ (see the seed generator).
fn cert_verifier() -> &'static Verifier {
    static V: OnceLock<Verifier> = OnceLock::new();
    V.get_or_init(|| {
        Verifier::from_certificate_roots_pem(include_str!("../fixtures/root.pem"))
            .unwrap_or_else(|e| panic!("{e:?}"))
    })
}

fuzz_target!(|data: &[u8]| run(data));

fn run(data: &[u8]) {
    common::one_thread();
    let Some((&mode, bundle)) = data.split_first() else {
        return;
    };
    let verifier = if mode & 1 == 0 {
        common::verifier()
    } else {
        cert_verifier()
    };
    let loaded = &common::loaded().1;
    match (mode >> 1) & 7 {
        0 | 6 => {
            if let Ok(v) = verify_model_bytes(
                common::model_dir(),
                bundle,
                None,
                verifier,
                &VerifyOptions::default(),
            ) {
                check_model(&v);
            }
        }
        1 => {
            if let Ok(r) = verify_release(bundle, verifier, &loaded.root_digest) {
                assert_eq!(r.root_digest, loaded.root_digest);
                check_digest(&r.release.policy_set_digest);
            }
        }
        2 => {
            if let Ok(list) = verify_revocation_list(bundle, verifier, 1) {
                assert!(list.serial >= 1);
                for d in &list.revoked_digests {
                    check_digest(&d.digest);
                    assert!(list.check("any", "any", &d.digest).is_err());
                }
            }
        }
        3 => {
            let digest = common::policy_digest();
            if let Ok(set) = verify_policy_set(bundle, verifier, &digest, 1) {
                assert_eq!(set.policy_set_digest, digest);
                assert!(set.serial >= 1);
            }
        }
        4 => {
            let required = ["https://warden.dev/attestation/test/v1".to_owned()];
            if let Ok(v) = verify_attestations(
                &[bundle.to_vec()],
                &required,
                &loaded.root_digest,
                std::slice::from_ref(verifier),
            ) {
                assert!(v.iter().any(|a| a.predicate_type == required[0]));
            }
        }
        _ => {
            if let Ok(v) = reverify_model_bytes(bundle, verifier, loaded) {
                assert_eq!(v.root_digest, loaded.root_digest);
            }
        }
    }
}

fn check_digest(d: &str) {
    let hex = d.strip_prefix("sha256:").unwrap_or_else(|| panic!("{d:?}"));
    assert!(
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    );
}

/// A verified model: its files are the model directory's, and the root digest is the SHA-256
/// over the listed digests in order.
pub fn check_model(v: &VerifiedModel) {
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
}
