//! Interoperability with the reference tool, model_signing 1.1.1, run for real through
//! `$WARDEN_PYTHON -m model_signing` (or its Python API where the CLI cannot express the
//! option: shards, BLAKE2b/BLAKE3). Both directions, key and certificate methods.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;

use common::*;
use warden_attest::bundle::{
    BundleError, Curve, HashAlgorithm, Serialization, SignOptions, Signer, Verifier, VerifyOptions,
    generate_private_key_pem, sign_model, verify_model,
};

fn keypair(dir: &Path, curve: Curve) -> (String, String) {
    let (private, public) = generate_private_key_pem(curve).unwrap();
    write(dir, "key.pem", &private);
    write(dir, "key.pub", &public);
    (private, public)
}

fn names(v: &warden_attest::bundle::VerifiedModel) -> Vec<String> {
    v.files.iter().map(|f| f.name.clone()).collect()
}

// ---- key method, model_signing signs, we verify ----------------------------------------------

fn python_signs_key_we_verify(curve: Curve) {
    let dir = tempfile::tempdir().unwrap();
    let model = make_model(dir.path());
    let (_, public) = keypair(dir.path(), curve);
    let out = model_signing(
        dir.path(),
        &[
            "sign",
            "key",
            "model",
            "--private_key",
            "key.pem",
            "--signature",
            "model.sig",
            "--ignore-paths",
            "model/README.md",
        ],
    );
    assert_ok(&out, "model_signing sign key");

    let v = verify_model(
        &model,
        &dir.path().join("model.sig"),
        &Verifier::from_public_key_pem(&public).unwrap(),
        &VerifyOptions::default(),
    )
    .unwrap();
    assert_eq!(v.model_name, "model");
    // Component-wise order, empty file included, README ignored (recorded by model_signing).
    assert_eq!(
        names(&v),
        [
            ".hidden",
            "config.json",
            "empty",
            "sub/a",
            "sub/deep/weights.bin",
            "sub.txt"
        ]
    );
    assert!(
        v.ignored_paths.contains(&"README.md".to_owned()),
        "{:?}",
        v.ignored_paths
    );
    assert!(v.root_digest.starts_with("sha256:") && v.root_digest.len() == 7 + 64);
    assert!(v.signer.starts_with("key "));

    // The same model signed by us has the same root digest: the manifests agree.
    let ours = sign_model(
        &model,
        &Signer::from_private_key_pem(
            &std::fs::read_to_string(dir.path().join("key.pem")).unwrap(),
        )
        .unwrap(),
        &SignOptions {
            ignore_paths: vec!["README.md".into()],
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(ours.root_digest, v.root_digest);
}

#[test]
fn key_p256_model_signing_signs_warden_verifies() {
    python_signs_key_we_verify(Curve::P256);
}

#[test]
fn key_p384_model_signing_signs_warden_verifies() {
    python_signs_key_we_verify(Curve::P384);
}

#[test]
fn key_p521_model_signing_signs_warden_verifies() {
    python_signs_key_we_verify(Curve::P521);
}

// ---- key method, we sign, model_signing verifies ---------------------------------------------

fn we_sign_key_python_verifies(curve: Curve) {
    let dir = tempfile::tempdir().unwrap();
    let model = make_model(dir.path());
    let (private, _) = keypair(dir.path(), curve);
    let bundle = sign_model(
        &model,
        &Signer::from_private_key_pem(&private).unwrap(),
        &SignOptions {
            ignore_paths: vec!["README.md".into()],
            ..Default::default()
        },
    )
    .unwrap();
    bundle.write_to(&dir.path().join("warden.sig")).unwrap();
    let out = model_signing(
        dir.path(),
        &[
            "verify",
            "key",
            "model",
            "--public_key",
            "key.pub",
            "--signature",
            "warden.sig",
            "--ignore-paths",
            "model/README.md",
        ],
    );
    assert_ok(&out, "model_signing verify key");

    // And it really checks: a changed byte makes model_signing refuse our bundle too.
    std::fs::write(model.join("sub/a"), b"b").unwrap();
    let out = model_signing(
        dir.path(),
        &[
            "verify",
            "key",
            "model",
            "--public_key",
            "key.pub",
            "--signature",
            "warden.sig",
            "--ignore-paths",
            "model/README.md",
        ],
    );
    assert_fails(&out, "model_signing verify of a tampered model");
}

#[test]
fn key_p256_warden_signs_model_signing_verifies() {
    we_sign_key_python_verifies(Curve::P256);
}

#[test]
fn key_p384_warden_signs_model_signing_verifies() {
    we_sign_key_python_verifies(Curve::P384);
}

#[test]
fn key_p521_warden_signs_model_signing_verifies() {
    we_sign_key_python_verifies(Curve::P521);
}

#[test]
fn sec1_private_key_signs_for_model_signing() {
    use p256::pkcs8::LineEnding;
    let dir = tempfile::tempdir().unwrap();
    let model = make_model(dir.path());
    let secret = p256::SecretKey::random(&mut rand_core::OsRng);
    let sec1 = secret.to_sec1_pem(LineEnding::LF).unwrap();
    assert!(sec1.starts_with("-----BEGIN EC PRIVATE KEY-----"));
    use p256::pkcs8::EncodePublicKey as _;
    write(
        dir.path(),
        "key.pub",
        &secret
            .public_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap(),
    );
    sign_model(
        &model,
        &Signer::from_private_key_pem(&sec1).unwrap(),
        &SignOptions::default(),
    )
    .unwrap()
    .write_to(&dir.path().join("s.sig"))
    .unwrap();
    let out = model_signing(
        dir.path(),
        &[
            "verify",
            "key",
            "model",
            "--public_key",
            "key.pub",
            "--signature",
            "s.sig",
        ],
    );
    assert_ok(&out, "model_signing verify of a SEC1-key bundle");
}

// ---- signature inside the model directory ----------------------------------------------------

#[test]
fn signature_inside_model_is_ignored_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let model = make_model(dir.path());
    let (private, public) = keypair(dir.path(), Curve::P256);
    // model_signing's default: model.sig in the current directory, here the model itself.
    let out = model_signing(&model, &["sign", "key", ".", "--private_key", "../key.pem"]);
    assert_ok(&out, "model_signing sign into the model dir");
    let verifier = Verifier::from_public_key_pem(&public).unwrap();
    let v = verify_model(
        &model,
        &model.join("model.sig"),
        &verifier,
        &VerifyOptions::default(),
    )
    .unwrap();
    assert_eq!(v.model_name, "model");
    assert!(!names(&v).contains(&"model.sig".to_owned()));

    // Ours: sign with the signature path ignored, write it into the model, verify both ways.
    let sig = model.join("warden.sig");
    let b = sign_model(
        &model,
        &Signer::from_private_key_pem(&private).unwrap(),
        &SignOptions {
            ignore_paths: vec![sig.clone(), "model.sig".into()],
            ..Default::default()
        },
    )
    .unwrap();
    b.write_to(&sig).unwrap();
    verify_model(&model, &sig, &verifier, &VerifyOptions::default()).unwrap();
    let out = model_signing(
        dir.path(),
        &[
            "verify",
            "key",
            "model",
            "--public_key",
            "key.pub",
            "--signature",
            "model/warden.sig",
            "--ignore-paths",
            "model/model.sig",
        ],
    );
    assert_ok(
        &out,
        "model_signing verify with the signature inside the model",
    );
}

// ---- shards and other hashes (model_signing's Python API) --------------------------------------

const PY_SIGN: &str = r#"
import sys, model_signing as ms
method, alg = sys.argv[1], sys.argv[2]
h = ms.hashing.Config().set_ignored_paths(paths=["README.md"])
if method == "shards":
    h = h.use_shard_serialization(hashing_algorithm=alg, shard_size=4096)
else:
    h = h.use_file_serialization(hashing_algorithm=alg)
ms.signing.Config().use_elliptic_key_signer(private_key="key.pem").set_hashing_config(h).sign("model", "py.sig")
"#;

// Verifies with the serialization stated explicitly: model_signing 1.1.1 cannot guess it for
// shards (it reads shard_size back as a float) nor for BLAKE2b (it records "blake2b" but only
// accepts "blake2"), so these mirror what a careful user would run.
const PY_VERIFY: &str = r#"
import sys, model_signing as ms
method, alg, sig = sys.argv[1], sys.argv[2], sys.argv[3]
h = ms.hashing.Config().set_ignored_paths(paths=["README.md", sig])
if method == "shards":
    h = h.use_shard_serialization(hashing_algorithm=alg, shard_size=4096)
else:
    h = h.use_file_serialization(hashing_algorithm=alg)
ms.verifying.Config().use_elliptic_key_verifier(public_key="key.pub").set_hashing_config(h).verify("model", sig)
print("ok")
"#;

fn py(dir: &Path, script: &str, args: &[&str]) -> std::process::Output {
    // `python -c SCRIPT a b` gives sys.argv == ["-c", a, b].
    python_script_args(dir, script, args)
}

fn both_directions(method: &str, py_alg: &str, ours: SignOptions, expect_alg: &str) {
    let dir = tempfile::tempdir().unwrap();
    let model = make_model(dir.path());
    let (private, public) = keypair(dir.path(), Curve::P256);
    let verifier = Verifier::from_public_key_pem(&public).unwrap();

    assert_ok(
        &py(dir.path(), PY_SIGN, &[method, py_alg]),
        "model_signing API sign",
    );
    let v = verify_model(
        &model,
        &dir.path().join("py.sig"),
        &verifier,
        &VerifyOptions::default(),
    )
    .unwrap();
    assert_eq!(v.serialization, method);
    assert!(
        v.files.iter().all(|f| f.algorithm == expect_alg),
        "{:?}",
        v.files
    );

    let b = sign_model(
        &model,
        &Signer::from_private_key_pem(&private).unwrap(),
        &ours,
    )
    .unwrap();
    assert_eq!(
        b.root_digest, v.root_digest,
        "same model, same serialization, same root digest"
    );
    b.write_to(&dir.path().join("warden.sig")).unwrap();
    let out = py(dir.path(), PY_VERIFY, &[method, py_alg, "warden.sig"]);
    assert_ok(&out, "model_signing API verify");
}

#[test]
fn shards_sha256_both_directions() {
    let v = "shards";
    both_directions(
        v,
        "sha256",
        SignOptions {
            serialization: Serialization::Shards { shard_size: 4096 },
            ignore_paths: vec!["README.md".into()],
            ..Default::default()
        },
        "sha256-sharded-4096",
    );
}

#[test]
fn shards_blake2b_both_directions() {
    both_directions(
        "shards",
        "blake2",
        SignOptions {
            serialization: Serialization::Shards { shard_size: 4096 },
            hash: HashAlgorithm::Blake2b,
            ignore_paths: vec!["README.md".into()],
            ..Default::default()
        },
        "blake2b-sharded-4096",
    );
}

#[test]
fn files_blake2b_both_directions() {
    both_directions(
        "files",
        "blake2",
        SignOptions {
            hash: HashAlgorithm::Blake2b,
            ignore_paths: vec!["README.md".into()],
            ..Default::default()
        },
        "blake2b",
    );
}

#[test]
fn files_blake3_both_directions() {
    both_directions(
        "files",
        "blake3",
        SignOptions {
            hash: HashAlgorithm::Blake3,
            ignore_paths: vec!["README.md".into()],
            ..Default::default()
        },
        "blake3",
    );
}

#[test]
fn shards_blake3_fall_back_to_files_like_model_signing() {
    both_directions(
        "files",
        "blake3",
        SignOptions {
            serialization: Serialization::Shards { shard_size: 4096 },
            hash: HashAlgorithm::Blake3,
            ignore_paths: vec!["README.md".into()],
            ..Default::default()
        },
        "blake3",
    );
}

#[test]
fn shards_from_model_signing_detect_a_changed_byte_in_one_shard() {
    let dir = tempfile::tempdir().unwrap();
    let model = make_model(dir.path());
    let (_, public) = keypair(dir.path(), Curve::P256);
    assert_ok(
        &py(dir.path(), PY_SIGN, &["shards", "sha256"]),
        "model_signing API sign",
    );
    let w = model.join("sub/deep/weights.bin");
    let mut bytes = std::fs::read(&w).unwrap();
    bytes[5000] ^= 1;
    std::fs::write(&w, bytes).unwrap();
    let err = verify_model(
        &model,
        &dir.path().join("py.sig"),
        &Verifier::from_public_key_pem(&public).unwrap(),
        &VerifyOptions::default(),
    )
    .unwrap_err();
    match err {
        BundleError::FileChanged { name, resource, .. } => {
            assert_eq!(name, "sub/deep/weights.bin");
            assert_eq!(resource, "sub/deep/weights.bin:4096:8192");
        }
        other => panic!("expected FileChanged, got {other:?}"),
    }
}

// ---- certificate method ------------------------------------------------------------------

#[test]
fn certificate_model_signing_signs_warden_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let model = make_model(dir.path());
    let pki = Pki::new(LeafSpec::default());
    pki.write(dir.path());
    let out = model_signing(
        dir.path(),
        &[
            "sign",
            "certificate",
            "model",
            "--private_key",
            "leaf.key",
            "--signing_certificate",
            "leaf.pem",
            "--certificate_chain",
            "intermediate.pem",
            "--signature",
            "cert.sig",
        ],
    );
    assert_ok(&out, "model_signing sign certificate");
    let v = verify_model(
        &model,
        &dir.path().join("cert.sig"),
        &Verifier::from_certificate_roots_pem(&pki.root_pem).unwrap(),
        &VerifyOptions::default(),
    )
    .unwrap();
    assert!(v.signer.contains("model-signer"), "{}", v.signer);
    assert!(names(&v).contains(&"README.md".to_owned()));
}

#[test]
fn certificate_warden_signs_model_signing_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let model = make_model(dir.path());
    let pki = Pki::with_alg(LeafSpec::default(), &rcgen::PKCS_ECDSA_P384_SHA384);
    pki.write(dir.path());
    let signer = Signer::from_private_key_pem(&pki.leaf_key_pem)
        .unwrap()
        .with_certificate_chain(&pki.leaf_cert_pem, &pki.intermediate_pem)
        .unwrap();
    let b = sign_model(&model, &signer, &SignOptions::default()).unwrap();
    b.write_to(&dir.path().join("warden.sig")).unwrap();
    // Ours verifies it as well, with the chain carried in the bundle.
    verify_model(
        &model,
        &dir.path().join("warden.sig"),
        &Verifier::from_certificate_roots_pem(&pki.root_pem).unwrap(),
        &VerifyOptions::default(),
    )
    .unwrap();
    let out = model_signing(
        dir.path(),
        &[
            "verify",
            "certificate",
            "model",
            "--certificate_chain",
            "root.pem",
            "--signature",
            "warden.sig",
        ],
    );
    assert_ok(&out, "model_signing verify certificate");

    // model_signing refuses it against another root: the chain in our bundle is what it checks.
    let other = Pki::new(LeafSpec::default());
    write(dir.path(), "other-root.pem", &other.root_pem);
    let out = model_signing(
        dir.path(),
        &[
            "verify",
            "certificate",
            "model",
            "--certificate_chain",
            "other-root.pem",
            "--signature",
            "warden.sig",
        ],
    );
    assert_fails(&out, "model_signing verify against an unrelated root");
}

// ---- a model that is one file (model_signing signs a file: its one resource is `.`) --------

/// A single model file of 10,000 bytes in `dir/model/`, beside an unsigned neighbour.
fn single_file_model(dir: &Path) -> std::path::PathBuf {
    let model = dir.join("model");
    std::fs::create_dir_all(&model).unwrap();
    let bytes: Vec<u8> = (0..10_000u32).map(|i| (i * 13 % 251) as u8).collect();
    std::fs::write(model.join("model.onnx"), bytes).unwrap();
    std::fs::write(model.join("notes.txt"), b"not signed").unwrap();
    model.join("model.onnx")
}

const PY_SIGN_FILE_SHARDS: &str = r#"
import sys, model_signing as ms
h = ms.hashing.Config().use_shard_serialization(shard_size=4096)
ms.signing.Config().use_elliptic_key_signer(private_key="key.pem").set_hashing_config(h).sign("model/model.onnx", sys.argv[1])
"#;

const PY_VERIFY_FILE_SHARDS: &str = r#"
import sys, model_signing as ms
h = ms.hashing.Config().use_shard_serialization(shard_size=4096)
ms.verifying.Config().use_elliptic_key_verifier(public_key="key.pub").set_hashing_config(h).verify("model/model.onnx", sys.argv[1])
print("ok")
"#;

#[test]
fn single_file_model_signing_signs_warden_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let file = single_file_model(dir.path());
    let (_, public) = keypair(dir.path(), Curve::P256);
    let verifier = Verifier::from_public_key_pem(&public).unwrap();
    let out = model_signing(
        dir.path(),
        &[
            "sign",
            "key",
            "model/model.onnx",
            "--private_key",
            "key.pem",
            "--signature",
            "file.sig",
        ],
    );
    assert_ok(&out, "model_signing sign key on a file");
    let sig = dir.path().join("file.sig");

    // The file given as the model.
    let v = verify_model(&file, &sig, &verifier, &VerifyOptions::default()).unwrap();
    assert!(v.single_file);
    assert_eq!(names(&v), ["."]);
    assert_eq!(v.model_name, "model.onnx");
    assert!(v.covers("model.onnx") && v.covers("anything: it is the file verified"));
    let digest = v.file_digest("model.onnx").unwrap();
    assert_eq!(
        (digest.hash, digest.shard_size),
        (HashAlgorithm::Sha256, None)
    );
    assert_eq!(hex::encode(&digest.digests[0]), v.files[0].digest_hex);

    // Its directory with the file named (how the agent loads), the same verdict; the
    // directory alone cannot say which file was signed.
    let in_dir = VerifyOptions {
        model_file: Some("model.onnx".into()),
        ..VerifyOptions::default()
    };
    let model_dir = dir.path().join("model");
    assert_eq!(
        verify_model(&model_dir, &sig, &verifier, &in_dir).unwrap(),
        v
    );
    assert!(matches!(
        verify_model(&model_dir, &sig, &verifier, &VerifyOptions::default()),
        Err(BundleError::SingleFileSignature { .. })
    ));

    // One byte changed: refused, named.
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[5000] ^= 1;
    std::fs::write(&file, bytes).unwrap();
    match verify_model(&model_dir, &sig, &verifier, &in_dir) {
        Err(BundleError::FileChanged { name, .. }) => assert_eq!(name, "."),
        other => panic!("expected FileChanged, got {other:?}"),
    }
}

#[test]
fn single_file_warden_signs_model_signing_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let file = single_file_model(dir.path());
    let (private, _) = keypair(dir.path(), Curve::P256);
    let signed = sign_model(
        &file,
        &Signer::from_private_key_pem(&private).unwrap(),
        &SignOptions::default(),
    )
    .unwrap();
    signed.write_to(&dir.path().join("warden.sig")).unwrap();
    let out = model_signing(
        dir.path(),
        &[
            "verify",
            "key",
            "model/model.onnx",
            "--public_key",
            "key.pub",
            "--signature",
            "warden.sig",
        ],
    );
    assert_ok(&out, "model_signing verify key on a file Warden signed");

    // And model_signing's own signature of the same file has the same root digest.
    let out = model_signing(
        dir.path(),
        &[
            "sign",
            "key",
            "model/model.onnx",
            "--private_key",
            "key.pem",
            "--signature",
            "py.sig",
        ],
    );
    assert_ok(&out, "model_signing sign key on a file");
    let theirs = verify_model(
        &file,
        &dir.path().join("py.sig"),
        &Verifier::from_public_key_pem(
            &std::fs::read_to_string(dir.path().join("key.pub")).unwrap(),
        )
        .unwrap(),
        &VerifyOptions::default(),
    )
    .unwrap();
    assert_eq!(signed.root_digest, theirs.root_digest);
}

#[test]
fn single_file_shards_both_directions() {
    let dir = tempfile::tempdir().unwrap();
    let file = single_file_model(dir.path());
    let (private, public) = keypair(dir.path(), Curve::P256);
    let verifier = Verifier::from_public_key_pem(&public).unwrap();

    assert_ok(
        &py(dir.path(), PY_SIGN_FILE_SHARDS, &["py.sig"]),
        "model_signing API sign a file as shards",
    );
    let v = verify_model(
        &dir.path().join("model"),
        &dir.path().join("py.sig"),
        &verifier,
        &VerifyOptions {
            model_file: Some("model.onnx".into()),
            ..VerifyOptions::default()
        },
    )
    .unwrap();
    assert!(v.single_file);
    assert_eq!(names(&v), [".:0:4096", ".:4096:8192", ".:8192:10000"]);
    let digest = v.file_digest("model.onnx").unwrap();
    assert_eq!(digest.shard_size, Some(4096));
    assert_eq!(digest.digests.len(), 3);

    let signed = sign_model(
        &file,
        &Signer::from_private_key_pem(&private).unwrap(),
        &SignOptions {
            serialization: Serialization::Shards { shard_size: 4096 },
            ..SignOptions::default()
        },
    )
    .unwrap();
    assert_eq!(signed.root_digest, v.root_digest);
    signed.write_to(&dir.path().join("warden.sig")).unwrap();
    assert_ok(
        &py(dir.path(), PY_VERIFY_FILE_SHARDS, &["warden.sig"]),
        "model_signing API verify a file Warden signed as shards",
    );
}
