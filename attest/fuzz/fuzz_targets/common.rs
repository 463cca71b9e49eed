//! What the targets (and the seed generator) share: fixed keys, a tiny model directory, and a
//! signer that wraps any payload in a Sigstore bundle with a DSSE envelope exactly as
//! `warden_attest::bundle` makes them (attest/src/bundle/dsse.rs: PAE over the in-toto payload
//! type, ECDSA P-256 over SHA-256, DER, base64; the key method's hint is the SHA-256 of the
//! public key's PEM). Included with `#[path]` by each target that needs it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use p256::ecdsa::signature::hazmat::PrehashSigner as _;
use p256::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _, LineEnding};
use sha2::Digest as _;
use warden_attest::bundle::{Signer, VerifiedModel, Verifier, VerifyOptions};

/// The signing key's scalar: a fixed, public test value (never a real key), so that every
/// run and every committed seed agree on it.
pub const KEY_SCALAR: [u8; 32] = [0x5a; 32];
/// The attestation key's scalar for quotes (fixed and public likewise).
pub const AK_SCALAR: [u8; 32] = [0x3c; 32];
/// The certificate method's root CA key scalar (fixed and public likewise): fixtures/root.pem
/// is self-signed with it, and the seed generator issues the chains of the certificate seeds
/// under it.
pub const ROOT_SCALAR: [u8; 32] = [0x21; 32];

pub const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
pub const BUNDLE_MEDIA_TYPE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";

/// The files of the model every OMS target verifies against.
pub const MODEL_FILES: [(&str, &[u8]); 3] = [
    ("config.json", br#"{"layers": 2}"#),
    (
        "model.onnx",
        b"\x08\x07\x12\x04demo:\x00 a tiny stand-in model",
    ),
    ("sub/empty", b""),
];

/// The policy-set digest the policy-set target expects.
pub fn policy_digest() -> String {
    format!(
        "sha256:{}",
        hex::encode(sha2::Sha256::digest(b"warden fuzz policy set"))
    )
}

pub fn secret_key() -> p256::SecretKey {
    p256::SecretKey::from_slice(&KEY_SCALAR).unwrap_or_else(|e| panic!("{e}"))
}

pub fn ak_key() -> p256::SecretKey {
    p256::SecretKey::from_slice(&AK_SCALAR).unwrap_or_else(|e| panic!("{e}"))
}

pub fn public_pem() -> String {
    secret_key()
        .public_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The project's own signer for the fixed key (for seeds and the model's reference bundle).
pub fn signer() -> Signer {
    let pem = secret_key()
        .to_pkcs8_pem(LineEnding::LF)
        .unwrap_or_else(|e| panic!("{e}"));
    Signer::from_private_key_pem(&pem).unwrap_or_else(|e| panic!("{e:?}"))
}

/// The key-method verifier of the fixed key.
pub fn verifier() -> &'static Verifier {
    static V: OnceLock<Verifier> = OnceLock::new();
    V.get_or_init(|| {
        Verifier::from_public_key_pem(&public_pem()).unwrap_or_else(|e| panic!("{e:?}"))
    })
}

/// `DSSEv1 <len> <type> <len> <payload>`.
pub fn pae(payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {} {} ",
        PAYLOAD_TYPE.len(),
        PAYLOAD_TYPE,
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

/// The key's hint as the key method writes it.
pub fn hint() -> String {
    hex::encode(sha2::Sha256::digest(public_pem().as_bytes()))
}

/// A bundle carrying `payload`, correctly signed by the fixed key.
pub fn sign_bundle(payload: &[u8]) -> Vec<u8> {
    let key = p256::ecdsa::SigningKey::from(&secret_key());
    let sig: p256::ecdsa::Signature = key
        .sign_prehash(&sha2::Sha256::digest(pae(payload)))
        .unwrap_or_else(|e| panic!("{e}"));
    let bundle = serde_json::json!({
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {"publicKey": {"hint": hint()}, "tlogEntries": []},
        "dsseEnvelope": {
            "payload": STANDARD.encode(payload),
            "payloadType": PAYLOAD_TYPE,
            "signatures": [{"sig": STANDARD.encode(sig.to_der().as_bytes()), "keyid": ""}],
        },
    });
    serde_json::to_vec(&bundle).unwrap_or_else(|e| panic!("{e}"))
}

/// This process's copy of the model (made once).
pub fn model_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let tmp = std::env::temp_dir();
        remove_stale(&tmp, "warden-fuzz-model-");
        let base = tmp.join(format!("warden-fuzz-model-{}", std::process::id()));
        let dir = base.join("model");
        let _ = std::fs::remove_dir_all(&base);
        for (name, bytes) in MODEL_FILES {
            let path = dir.join(name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).unwrap_or_else(|e| panic!("{e}"));
            }
            std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("{e}"));
        }
        dir
    })
}

/// Removes the model directories of earlier runs whose process is gone (statics are never
/// dropped: a run leaves its directory behind).
fn remove_stale(tmp: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(prefix)) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// The model signed with the project's own signer, and verified: what a loaded version holds.
pub fn loaded() -> &'static (Vec<u8>, VerifiedModel) {
    static L: OnceLock<(Vec<u8>, VerifiedModel)> = OnceLock::new();
    L.get_or_init(|| {
        let signed = warden_attest::bundle::sign_model(model_dir(), &signer(), &Default::default())
            .unwrap_or_else(|e| panic!("{e:?}"));
        let v = warden_attest::bundle::verify_model_bytes(
            model_dir(),
            &signed.json,
            None,
            verifier(),
            &VerifyOptions::default(),
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        (signed.json, v)
    })
}

/// One rayon thread: fuzzing runs one input at a time, on a machine shared with builds.
pub fn one_thread() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build_global();
    });
}
