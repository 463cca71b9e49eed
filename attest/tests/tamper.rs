//! One test per refusal reason, each asserting the specific `BundleError` variant.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use common::*;
use p256::ecdsa::signature::Signer as _;
use warden_attest::bundle::{
    BundleError, Curve, Serialization, SignOptions, Signer, Verifier, VerifyOptions,
    generate_private_key_pem, sign_model, verify_model,
};

struct Fixture {
    _dir: tempfile::TempDir,
    model: PathBuf,
    sig: PathBuf,
    private: String,
    verifier: Verifier,
}

fn signed(opts: SignOptions) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let model = make_model(&root);
    let (private, public) = generate_private_key_pem(Curve::P256).unwrap();
    let sig = root.join("model.sig");
    sign_model(
        &model,
        &Signer::from_private_key_pem(&private).unwrap(),
        &opts,
    )
    .unwrap()
    .write_to(&sig)
    .unwrap();
    let verifier = Verifier::from_public_key_pem(&public).unwrap();
    Fixture {
        _dir: dir,
        model,
        sig,
        private,
        verifier,
    }
}

impl Fixture {
    fn verify(&self) -> Result<warden_attest::bundle::VerifiedModel, BundleError> {
        verify_model(
            &self.model,
            &self.sig,
            &self.verifier,
            &VerifyOptions::default(),
        )
    }

    fn bundle(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(&self.sig).unwrap()).unwrap()
    }

    fn write_bundle(&self, b: &serde_json::Value) {
        std::fs::write(&self.sig, serde_json::to_vec(b).unwrap()).unwrap();
    }

    fn payload(&self) -> serde_json::Value {
        let b = self.bundle();
        let p = STANDARD
            .decode(b["dsseEnvelope"]["payload"].as_str().unwrap())
            .unwrap();
        serde_json::from_slice(&p).unwrap()
    }

    /// Replaces the payload and signs it again with the real key: the signature is valid, so
    /// what is tested is the check that comes after it.
    fn resign(&self, payload: &serde_json::Value) {
        let bytes = serde_json::to_vec_pretty(payload).unwrap();
        let pae = [
            format!("DSSEv1 28 application/vnd.in-toto+json {} ", bytes.len()).as_bytes(),
            &bytes,
        ]
        .concat();
        use p256::pkcs8::DecodePrivateKey as _;
        let key = p256::ecdsa::SigningKey::from_pkcs8_pem(&self.private).unwrap();
        let sig: p256::ecdsa::Signature = key.sign(&pae);
        let mut b = self.bundle();
        b["dsseEnvelope"]["payload"] = STANDARD.encode(&bytes).into();
        b["dsseEnvelope"]["signatures"][0]["sig"] = STANDARD.encode(sig.to_der().as_bytes()).into();
        self.write_bundle(&b);
    }
}

fn default_signed() -> Fixture {
    signed(SignOptions {
        ignore_paths: vec!["README.md".into()],
        ..Default::default()
    })
}

#[test]
fn untouched_model_verifies() {
    let f = default_signed();
    let v = f.verify().unwrap();
    assert_eq!(v.files.len(), 6);
}

// ---- model content ---------------------------------------------------------------------------

#[test]
fn byte_changed() {
    let f = default_signed();
    std::fs::write(f.model.join("sub/a"), b"b").unwrap();
    match f.verify().unwrap_err() {
        BundleError::FileChanged {
            name,
            algorithm,
            expected,
            actual,
            ..
        } => {
            assert_eq!(name, "sub/a");
            assert_eq!(algorithm, "sha256");
            assert_eq!(
                expected,
                "ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb"
            );
            assert_eq!(
                actual,
                "3e23e8160039594a33894f6564e1b1348bbd7a0088d42c4acb73eeaed59c009d"
            );
        }
        e => panic!("expected FileChanged, got {e:?}"),
    }
}

#[test]
fn empty_file_filled() {
    let f = default_signed();
    std::fs::write(f.model.join("empty"), b"x").unwrap();
    assert!(matches!(f.verify(), Err(BundleError::FileChanged { name, .. }) if name == "empty"));
}

#[test]
fn file_added() {
    let f = default_signed();
    std::fs::write(f.model.join("sub/deep/extra.bin"), b"new").unwrap();
    assert!(
        matches!(f.verify(), Err(BundleError::FileAdded { name }) if name == "sub/deep/extra.bin")
    );
}

#[test]
fn empty_file_added() {
    let f = default_signed();
    std::fs::write(f.model.join("new-empty"), b"").unwrap();
    assert!(matches!(f.verify(), Err(BundleError::FileAdded { name }) if name == "new-empty"));
}

#[test]
fn file_removed() {
    let f = default_signed();
    std::fs::remove_file(f.model.join("config.json")).unwrap();
    assert!(matches!(f.verify(), Err(BundleError::FileRemoved { name }) if name == "config.json"));
}

#[test]
fn file_renamed() {
    let f = default_signed();
    std::fs::rename(f.model.join("sub.txt"), f.model.join("sub/moved.txt")).unwrap();
    assert!(matches!(
        f.verify(),
        Err(BundleError::FileRenamed { from, to }) if from == "sub.txt" && to == "sub/moved.txt"
    ));
}

#[test]
fn shard_changed_and_file_grown() {
    let f = signed(SignOptions {
        serialization: Serialization::Shards { shard_size: 4096 },
        ignore_paths: vec!["README.md".into()],
        ..Default::default()
    });
    let w = f.model.join("sub/deep/weights.bin");
    let original = std::fs::read(&w).unwrap();
    let mut bytes = original.clone();
    bytes[9000] ^= 0xff;
    std::fs::write(&w, &bytes).unwrap();
    assert!(matches!(
        f.verify(),
        Err(BundleError::FileChanged { resource, .. }) if resource == "sub/deep/weights.bin:8192:10000"
    ));
    let mut grown = original;
    grown.push(0);
    std::fs::write(&w, &grown).unwrap();
    assert!(
        matches!(f.verify(), Err(BundleError::FileChanged { name, .. }) if name == "sub/deep/weights.bin")
    );
}

#[test]
fn ignored_paths_are_honoured_and_reported() {
    let f = default_signed();
    std::fs::write(f.model.join("README.md"), b"changed docs").unwrap();
    let v = f.verify().unwrap();
    assert!(v.ignored_paths.contains(&"README.md".to_owned()));
    assert!(v.files.iter().all(|r| r.name != "README.md"));
    // A caller-supplied ignore path also holds.
    std::fs::write(f.model.join("local.log"), b"x").unwrap();
    assert!(matches!(f.verify(), Err(BundleError::FileAdded { .. })));
    verify_model(
        &f.model,
        &f.sig,
        &f.verifier,
        &VerifyOptions {
            ignore_paths: vec!["local.log".into()],
            ..Default::default()
        },
    )
    .unwrap();
}

#[cfg(unix)]
#[test]
fn symlink_in_model() {
    let f = default_signed();
    std::os::unix::fs::symlink("/etc/hostname", f.model.join("sub/link")).unwrap();
    assert!(matches!(f.verify(), Err(BundleError::Symlink { path }) if path.ends_with("sub/link")));
    // Signing refuses it too.
    let err = sign_model(
        &f.model,
        &Signer::from_private_key_pem(&f.private).unwrap(),
        &SignOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(err, BundleError::Symlink { .. }));
}

// ---- signer and envelope -----------------------------------------------------------------

#[test]
fn wrong_key() {
    let f = default_signed();
    let (_, other_public) = generate_private_key_pem(Curve::P256).unwrap();
    let other = Verifier::from_public_key_pem(&other_public).unwrap();
    assert!(matches!(
        verify_model(&f.model, &f.sig, &other, &VerifyOptions::default()),
        Err(BundleError::WrongKey { .. })
    ));
}

#[test]
fn wrong_key_without_hint_fails_on_signature() {
    let f = default_signed();
    let mut b = f.bundle();
    b["verificationMaterial"]["publicKey"] = serde_json::json!({});
    f.write_bundle(&b);
    let (_, other_public) = generate_private_key_pem(Curve::P256).unwrap();
    let other = Verifier::from_public_key_pem(&other_public).unwrap();
    assert!(matches!(
        verify_model(&f.model, &f.sig, &other, &VerifyOptions::default()),
        Err(BundleError::BadSignature { .. })
    ));
    // The right key still verifies a hint-less (pre-1.0) bundle.
    f.verify().unwrap();
}

#[test]
fn signature_altered() {
    let f = default_signed();
    let mut b = f.bundle();
    let mut sig = STANDARD
        .decode(b["dsseEnvelope"]["signatures"][0]["sig"].as_str().unwrap())
        .unwrap();
    let last = sig.len() - 1;
    sig[last] ^= 1;
    b["dsseEnvelope"]["signatures"][0]["sig"] = STANDARD.encode(sig).into();
    f.write_bundle(&b);
    assert!(matches!(f.verify(), Err(BundleError::BadSignature { .. })));
}

#[test]
fn payload_altered() {
    let f = default_signed();
    let mut b = f.bundle();
    let p = STANDARD
        .decode(b["dsseEnvelope"]["payload"].as_str().unwrap())
        .unwrap();
    // Same JSON value, different bytes (one more space): the signature is over the bytes.
    let text = String::from_utf8(p).unwrap().replacen("{", "{ ", 1);
    b["dsseEnvelope"]["payload"] = STANDARD.encode(text).into();
    f.write_bundle(&b);
    assert!(matches!(f.verify(), Err(BundleError::BadSignature { .. })));
}

#[test]
fn inconsistent_root_digest() {
    let f = default_signed();
    let mut p = f.payload();
    p["subject"][0]["digest"]["sha256"] = "00".repeat(32).into();
    f.resign(&p);
    assert!(
        matches!(f.verify(), Err(BundleError::InconsistentRootDigest { expected, .. }) if expected == "00".repeat(32))
    );
}

#[test]
fn resource_digest_swapped_in_signed_payload_is_caught_by_root_digest() {
    let f = default_signed();
    let mut p = f.payload();
    p["predicate"]["resources"][0]["digest"] = "11".repeat(32).into();
    f.resign(&p);
    assert!(matches!(
        f.verify(),
        Err(BundleError::InconsistentRootDigest { .. })
    ));
}

#[test]
fn wrong_predicate_type() {
    let f = default_signed();
    let mut p = f.payload();
    p["predicateType"] = "https://model_signing/Digests/v0.1".into();
    f.resign(&p);
    assert!(
        matches!(f.verify(), Err(BundleError::WrongPredicateType { actual, .. }) if actual.ends_with("v0.1"))
    );
}

#[test]
fn wrong_statement_type() {
    let f = default_signed();
    let mut p = f.payload();
    p["_type"] = "https://in-toto.io/Statement/v0.1".into();
    f.resign(&p);
    assert!(matches!(
        f.verify(),
        Err(BundleError::WrongStatementType { .. })
    ));
}

#[test]
fn wrong_payload_type() {
    let f = default_signed();
    let mut b = f.bundle();
    b["dsseEnvelope"]["payloadType"] = "application/json".into();
    f.write_bundle(&b);
    assert!(
        matches!(f.verify(), Err(BundleError::WrongPayloadType { actual, .. }) if actual == "application/json")
    );
}

#[test]
fn wrong_media_type() {
    let f = default_signed();
    let mut b = f.bundle();
    b["mediaType"] = "application/vnd.dev.sigstore.bundle+json;version=0.1".into();
    f.write_bundle(&b);
    assert!(matches!(
        f.verify(),
        Err(BundleError::WrongMediaType { .. })
    ));
}

#[test]
fn two_signatures_refused() {
    let f = default_signed();
    let mut b = f.bundle();
    let s = b["dsseEnvelope"]["signatures"][0].clone();
    b["dsseEnvelope"]["signatures"] = serde_json::json!([s.clone(), s]);
    f.write_bundle(&b);
    assert!(matches!(
        f.verify(),
        Err(BundleError::SignatureCount { count: 2 })
    ));
}

#[test]
fn malformed_json_base64_pem() {
    let f = default_signed();
    std::fs::write(&f.sig, b"{not json").unwrap();
    assert!(matches!(f.verify(), Err(BundleError::MalformedJson { .. })));

    let f = default_signed();
    let mut b = f.bundle();
    b["dsseEnvelope"]["payload"] = "***".into();
    f.write_bundle(&b);
    assert!(matches!(
        f.verify(),
        Err(BundleError::MalformedBase64 { .. })
    ));

    assert!(matches!(
        Verifier::from_public_key_pem("-----BEGIN PUBLIC KEY-----\n!!\n-----END PUBLIC KEY-----\n"),
        Err(BundleError::MalformedPem { .. })
    ));
    assert!(matches!(
        Signer::from_private_key_pem("garbage"),
        Err(BundleError::MalformedPem { .. })
    ));
    assert!(matches!(
        Verifier::from_certificate_roots_pem("no pem here"),
        Err(BundleError::NoRoots { .. })
    ));
}

#[test]
fn oversized_signature_file() {
    let f = default_signed();
    let big = vec![b' '; (warden_attest::bundle::MAX_SIGNATURE_BYTES + 1) as usize];
    std::fs::write(&f.sig, big).unwrap();
    assert!(matches!(f.verify(), Err(BundleError::TooLarge { .. })));
}

// ---- certificate method ----------------------------------------------------------------------

fn cert_signed(pki: &Pki, chain_pem: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let model = make_model(dir.path());
    let sig = dir.path().join("cert.sig");
    let signer = Signer::from_private_key_pem(&pki.leaf_key_pem)
        .unwrap()
        .with_certificate_chain(&pki.leaf_cert_pem, chain_pem)
        .unwrap();
    sign_model(&model, &signer, &SignOptions::default())
        .unwrap()
        .write_to(&sig)
        .unwrap();
    (dir, model, sig)
}

fn cert_verify(
    model: &Path,
    sig: &Path,
    roots_pem: &str,
) -> Result<warden_attest::bundle::VerifiedModel, BundleError> {
    verify_model(
        model,
        sig,
        &Verifier::from_certificate_roots_pem(roots_pem).unwrap(),
        &VerifyOptions::default(),
    )
}

#[test]
fn certificate_chain_verifies() {
    let pki = Pki::new(LeafSpec::default());
    let (_d, model, sig) = cert_signed(&pki, &pki.intermediate_pem);
    let v = cert_verify(&model, &sig, &pki.root_pem).unwrap();
    assert!(v.signer.contains("CN=model-signer"), "{}", v.signer);
}

#[test]
fn untrusted_chain() {
    let pki = Pki::new(LeafSpec::default());
    let other = Pki::new(LeafSpec::default());
    let (_d, model, sig) = cert_signed(&pki, &pki.intermediate_pem);
    assert!(matches!(
        cert_verify(&model, &sig, &other.root_pem),
        Err(BundleError::UntrustedChain { .. })
    ));
}

#[test]
fn incomplete_chain() {
    let pki = Pki::new(LeafSpec::default());
    let (_d, model, sig) = cert_signed(&pki, "");
    assert!(matches!(
        cert_verify(&model, &sig, &pki.root_pem),
        Err(BundleError::UntrustedChain { .. })
    ));
}

#[test]
fn leaf_without_code_signing_eku() {
    let pki = Pki::new(LeafSpec {
        code_signing_eku: false,
        ..Default::default()
    });
    let (_d, model, sig) = cert_signed(&pki, &pki.intermediate_pem);
    assert!(matches!(
        cert_verify(&model, &sig, &pki.root_pem),
        Err(BundleError::LeafNotAllowedToSign { reason, .. }) if reason.contains("codeSigning")
    ));
}

#[test]
fn leaf_without_digital_signature() {
    let pki = Pki::new(LeafSpec {
        digital_signature: false,
        ..Default::default()
    });
    let (_d, model, sig) = cert_signed(&pki, &pki.intermediate_pem);
    assert!(matches!(
        cert_verify(&model, &sig, &pki.root_pem),
        Err(BundleError::LeafNotAllowedToSign { reason, .. }) if reason.contains("digitalSignature")
    ));
}

#[test]
fn expired_leaf() {
    let pki = Pki::new(LeafSpec {
        expired: true,
        ..Default::default()
    });
    let (_d, model, sig) = cert_signed(&pki, &pki.intermediate_pem);
    assert!(matches!(
        cert_verify(&model, &sig, &pki.root_pem),
        Err(BundleError::LeafExpired { .. })
    ));
}

#[test]
fn certificate_signature_altered() {
    let pki = Pki::new(LeafSpec::default());
    let (_d, model, sig) = cert_signed(&pki, &pki.intermediate_pem);
    let mut b: serde_json::Value = serde_json::from_slice(&std::fs::read(&sig).unwrap()).unwrap();
    let p = STANDARD
        .decode(b["dsseEnvelope"]["payload"].as_str().unwrap())
        .unwrap();
    let text = String::from_utf8(p).unwrap().replacen("model", "m0del", 1);
    b["dsseEnvelope"]["payload"] = STANDARD.encode(text).into();
    std::fs::write(&sig, serde_json::to_vec(&b).unwrap()).unwrap();
    assert!(matches!(
        cert_verify(&model, &sig, &pki.root_pem),
        Err(BundleError::BadSignature { .. })
    ));
}

#[test]
fn method_mismatch() {
    let pki = Pki::new(LeafSpec::default());
    let (_d, model, sig) = cert_signed(&pki, &pki.intermediate_pem);
    let (_, public) = generate_private_key_pem(Curve::P256).unwrap();
    let key_verifier = Verifier::from_public_key_pem(&public).unwrap();
    assert!(matches!(
        verify_model(&model, &sig, &key_verifier, &VerifyOptions::default()),
        Err(BundleError::WrongVerificationMaterial {
            expected: "key",
            found: "certificate"
        })
    ));
    let f = default_signed();
    assert!(matches!(
        cert_verify(&f.model, &f.sig, &pki.root_pem),
        Err(BundleError::WrongVerificationMaterial {
            expected: "certificate",
            ..
        })
    ));
}

#[test]
fn certificate_must_match_private_key() {
    let pki = Pki::new(LeafSpec::default());
    let (other_private, _) = generate_private_key_pem(Curve::P256).unwrap();
    let err = Signer::from_private_key_pem(&other_private)
        .unwrap()
        .with_certificate_chain(&pki.leaf_cert_pem, &pki.intermediate_pem)
        .unwrap_err();
    assert!(matches!(err, BundleError::CertificateKeyMismatch));
}

/// A re-check of a loaded model verifies the envelope again without reading the model: it
/// holds with the files gone, and refuses another key or a statement other than the one loaded.
#[test]
fn reverify_checks_the_signature_against_what_was_loaded_without_the_files() {
    use warden_attest::bundle::reverify_model_bytes;
    let f = signed(SignOptions::default());
    let loaded = f.verify().unwrap();
    let raw = std::fs::read(&f.sig).unwrap();
    std::fs::remove_dir_all(&f.model).unwrap();
    assert_eq!(
        reverify_model_bytes(&raw, &f.verifier, &loaded).unwrap(),
        loaded
    );

    let (_, other) = generate_private_key_pem(Curve::P256).unwrap();
    let other = Verifier::from_public_key_pem(&other).unwrap();
    assert!(matches!(
        reverify_model_bytes(&raw, &other, &loaded),
        Err(BundleError::WrongKey { .. })
    ));

    let mut changed = loaded.clone();
    changed.files[0].digest_hex = "00".repeat(32);
    assert!(matches!(
        reverify_model_bytes(&raw, &f.verifier, &changed),
        Err(BundleError::NotAsLoaded { .. })
    ));
    let mut changed = loaded.clone();
    changed.root_digest = format!("sha256:{}", "11".repeat(32));
    assert!(matches!(
        reverify_model_bytes(&raw, &f.verifier, &changed),
        Err(BundleError::NotAsLoaded { .. })
    ));
}
