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
