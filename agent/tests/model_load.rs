//! Loading: only a model whose copy verifies against a trusted signer is served, and the file
//! the engine loads must be one the signature covers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use warden_agent::{config::Config, demo, serve};
use warden_attest::bundle::{self, SignOptions, Signer};

fn setup() -> (tempfile::TempDir, demo::DemoFiles, Config) {
    let dir = tempfile::tempdir().unwrap();
    let (files, config) = support::serving::demo_world(dir.path());
    (dir, files, config)
}

async fn refusal(config: &Config) -> String {
    match serve::prepare(config).await {
        Ok(_) => panic!("the model was served"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn signature_inside_the_model_directory_is_found_and_left_out() {
    let (_d, files, mut config) = setup();
    std::fs::rename(
        files.dir.join("models/demo.sig"),
        files.dir.join("models/demo/model.sig"),
    )
    .unwrap();
    config.models[0].signature = None;
    let prepared = serve::prepare(&config).await.unwrap();
    let model = prepared.models.resolve("demo", None).unwrap();
    assert_eq!(model.root_digest, files.root_digest);
    prepared.models.shutdown().await;
}

#[tokio::test]
async fn tampered_model_is_not_served() {
    let (_d, files, config) = setup();
    let path = files.dir.join("models/demo/model.onnx");
    let mut bytes = std::fs::read(&path).unwrap();
    let i = bytes.len() / 2;
    bytes[i] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let e = refusal(&config).await;
    assert!(e.contains("model demo version 1: signature refused"), "{e}");
    assert!(e.contains("model.onnx"), "{e}");
    // Nothing half-verified is left in the state directory.
    assert!(!config.state.directory.join("models/demo/1").exists());
}

#[tokio::test]
async fn added_file_is_not_served() {
    let (_d, files, config) = setup();
    std::fs::write(files.dir.join("models/demo/extra.onnx"), b"x").unwrap();
    let e = refusal(&config).await;
    assert!(e.contains("extra.onnx"), "{e}");
}

#[tokio::test]
async fn model_from_an_untrusted_signer_is_not_served() {
    let (_d, files, config) = setup();
    let (other_key, _) = bundle::generate_private_key_pem(bundle::Curve::P256).unwrap();
    let signed = bundle::sign_model(
        &files.dir.join("models/demo"),
        &Signer::from_private_key_pem(&other_key).unwrap(),
        &SignOptions::default(),
    )
    .unwrap();
    signed.write_to(&files.dir.join("models/demo.sig")).unwrap();
    let e = refusal(&config).await;
    assert!(e.contains("signature refused"), "{e}");
}

#[tokio::test]
async fn a_loaded_file_left_out_of_the_signature_is_not_served() {
    let (_d, files, config) = setup();
    let key = std::fs::read_to_string(files.dir.join("trust/model-signer.key")).unwrap();
    std::fs::write(files.dir.join("models/demo/README.txt"), b"the signed part").unwrap();
    let signed = bundle::sign_model(
        &files.dir.join("models/demo"),
        &Signer::from_private_key_pem(&key).unwrap(),
        &SignOptions {
            ignore_paths: vec![files.dir.join("models/demo/model.onnx")],
            ..SignOptions::default()
        },
    )
    .unwrap();
    signed.write_to(&files.dir.join("models/demo.sig")).unwrap();
    let e = refusal(&config).await;
    assert!(e.contains("not covered by the signature"), "{e}");
}

#[tokio::test]
async fn symlinked_model_file_is_not_served() {
    let (_d, files, config) = setup();
    let path = files.dir.join("models/demo/model.onnx");
    let real = files.dir.join("elsewhere.onnx");
    std::fs::rename(&path, &real).unwrap();
    std::os::unix::fs::symlink(&real, &path).unwrap();
    let e = refusal(&config).await;
    assert!(e.contains("symlinks"), "{e}");
}

/// The interpreter with model_signing (`scripts/setup.sh --test` sets `WARDEN_PYTHON`).
fn python() -> String {
    std::env::var("WARDEN_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn run_python(cwd: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new(python())
        .current_dir(cwd)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// model_signing 1.1.1 signing the model *file* (`model_signing sign key model.onnx`): its
/// manifest names the one resource `.`. Served, with the file as the model.
#[tokio::test]
async fn a_single_file_signed_by_model_signing_is_served() {
    let (_d, files, mut config) = setup();
    let dir = files.dir.join("models/demo");
    run_python(
        &dir,
        &[
            "-m",
            "model_signing",
            "sign",
            "key",
            "model.onnx",
            "--private_key",
            files.dir.join("trust/model-signer.key").to_str().unwrap(),
            "--signature",
            files.dir.join("models/single.sig").to_str().unwrap(),
        ],
    );
    let payload = statement_of(&files.dir.join("models/single.sig"));
    assert_eq!(payload["predicate"]["resources"][0]["name"], ".");
    config.models[0].signature = Some(files.dir.join("models/single.sig"));
    let prepared = serve::prepare(&config).await.unwrap();
    let model = prepared.models.resolve("demo", None).unwrap();
    assert_eq!(
        model.root_digest,
        format!(
            "sha256:{}",
            payload["subject"][0]["digest"]["sha256"].as_str().unwrap()
        )
    );
    prepared.models.shutdown().await;

    // A single-file signature binds the bytes of the file the config names: another file
    // beside it, one byte apart, is refused.
    let mut bytes = std::fs::read(dir.join("model.onnx")).unwrap();
    bytes[100] ^= 1;
    std::fs::write(dir.join("other.onnx"), bytes).unwrap();
    config.models[0].file = "other.onnx".into();
    let e = refusal(&config).await;
    assert!(e.contains("signature refused"), "{e}");
}

/// The same file signed as shards through model_signing's API: also served.
#[tokio::test]
async fn a_single_file_signed_as_shards_by_model_signing_is_served() {
    let (_d, files, mut config) = setup();
    let script = r#"
import sys
import model_signing as ms
h = ms.hashing.Config().use_shard_serialization(shard_size=4096)
ms.signing.Config().use_elliptic_key_signer(private_key=sys.argv[1]).set_hashing_config(h).sign("model.onnx", sys.argv[2])
"#;
    let sig = files.dir.join("models/shards.sig");
    run_python(
        &files.dir.join("models/demo"),
        &[
            "-c",
            script,
            files.dir.join("trust/model-signer.key").to_str().unwrap(),
            sig.to_str().unwrap(),
        ],
    );
    assert_eq!(
        statement_of(&sig)["predicate"]["resources"][0]["name"],
        ".:0:4096"
    );
    config.models[0].signature = Some(sig);
    let prepared = serve::prepare(&config).await.unwrap();
    assert!(prepared.models.resolve("demo", None).is_some());
    prepared.models.shutdown().await;
}

/// The signed statement inside a bundle file.
fn statement_of(path: &std::path::Path) -> serde_json::Value {
    use base64::Engine as _;
    let bundle: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let payload = base64::engine::general_purpose::STANDARD
        .decode(bundle["dsseEnvelope"]["payload"].as_str().unwrap())
        .unwrap();
    serde_json::from_slice(&payload).unwrap()
}

/// A worker binary that runs `before` (a shell snippet; `$model` is the model file it was
/// given) and then the real worker.
fn wrapped_worker(dir: &std::path::Path, before: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join("worker-wrapper.sh");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\nmodel=''\nprev=''\nfor a in \"$@\"; do\n  [ \"$prev\" = --model ] && model=$a\n  prev=$a\ndone\n{before}\nexec {} \"$@\"\n",
            support::serving::worker_binary().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// The worker checks the model file against the digest the verified signature lists, in the
/// signature's own form (here BLAKE2b over shards of 4096 bytes), not against a digest the
/// agent computed by reading the staged file again.
#[tokio::test]
async fn the_worker_checks_the_digest_the_signature_lists() {
    use sha2::Digest as _;
    let (d, files, mut config) = setup();
    let key = std::fs::read_to_string(files.dir.join("trust/model-signer.key")).unwrap();
    let signed = bundle::sign_model(
        &files.dir.join("models/demo"),
        &Signer::from_private_key_pem(&key).unwrap(),
        &SignOptions {
            serialization: bundle::Serialization::Shards { shard_size: 4096 },
            hash: bundle::HashAlgorithm::Blake2b,
            ..SignOptions::default()
        },
    )
    .unwrap();
    signed.write_to(&files.dir.join("models/demo.sig")).unwrap();
    let args = d.path().join("worker-args");
    config.runtime.worker_binary = Some(wrapped_worker(
        d.path(),
        &format!("printf '%s\\n' \"$@\" > {}", args.display()),
    ));
    let prepared = serve::prepare(&config).await.unwrap();
    prepared.models.shutdown().await;

    // What the signature lists for model.onnx, shard by shard, in file order.
    let statement = statement_of(&files.dir.join("models/demo.sig"));
    let mut shards: Vec<(u64, Vec<u8>)> = statement["predicate"]["resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| {
            let name = r["name"].as_str().unwrap();
            let range = name.strip_prefix("model.onnx:")?;
            let start = range.split(':').next().unwrap().parse().unwrap();
            Some((start, hex::decode(r["digest"].as_str().unwrap()).unwrap()))
        })
        .collect();
    assert!(shards.len() > 1, "the demo model spans several shards");
    shards.sort();
    let mut all = sha2::Sha256::new();
    for (_, digest) in &shards {
        all.update(digest);
    }
    let expected = format!("blake2b-sharded-4096:{}", hex::encode(all.finalize()));
    let given = std::fs::read_to_string(&args).unwrap();
    let given: Vec<&str> = given.lines().collect();
    let at = given.iter().position(|a| *a == "--digest").unwrap();
    assert_eq!(given[at + 1], expected);
}

/// The staged copy changed after verification (here: just before the worker reads it) is
/// refused by the worker, named, and nothing is served.
#[tokio::test]
async fn a_model_swapped_after_verification_is_refused_by_the_worker() {
    let (d, _files, mut config) = setup();
    config.runtime.worker_binary = Some(wrapped_worker(d.path(), "printf x >> \"$model\""));
    let e = refusal(&config).await;
    assert!(e.contains("digest mismatch"), "{e}");
}
