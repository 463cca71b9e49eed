//! Shared fixtures: a model directory, a test PKI, and the reference tool.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A model with nested directories, an empty file, a hidden file, names whose order differs
/// between component-wise and string sorting (`sub/a` vs `sub.txt`), and a file spanning
/// several shards of 4096 bytes.
pub fn make_model(root: &Path) -> PathBuf {
    let m = root.join("model");
    std::fs::create_dir_all(m.join("sub/deep")).unwrap();
    std::fs::write(m.join("config.json"), br#"{"layers": 2}"#).unwrap();
    std::fs::write(m.join("empty"), b"").unwrap();
    std::fs::write(m.join(".hidden"), b"hidden but signed").unwrap();
    std::fs::write(m.join("sub/a"), b"a").unwrap();
    std::fs::write(m.join("sub.txt"), b"sub.txt").unwrap();
    let weights: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(m.join("sub/deep/weights.bin"), weights).unwrap();
    std::fs::write(m.join("README.md"), b"docs, not signed when ignored").unwrap();
    m
}

/// The interpreter with model_signing: `$WARDEN_PYTHON`, else `python3`. Fails (never skips)
/// when model_signing is not importable.
pub fn python() -> String {
    let py = std::env::var("WARDEN_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let ok = Command::new(&py)
        .args(["-c", "import model_signing, OpenSSL"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "the reference tool model_signing (with pyopenssl) is not importable with {py:?}: \
         run scripts/setup.sh --test, then `source .cache/env` (sets WARDEN_PYTHON)"
    );
    py
}

/// Runs `python -m model_signing ARGS` in `cwd`.
pub fn model_signing(cwd: &Path, args: &[&str]) -> Output {
    Command::new(python())
        .current_dir(cwd)
        .arg("-m")
        .arg("model_signing")
        .args(args)
        .output()
        .unwrap()
}

/// Runs a Python snippet (for what model_signing's CLI cannot do: shards, other hashes).
pub fn python_script(cwd: &Path, script: &str) -> Output {
    Command::new(python())
        .current_dir(cwd)
        .args(["-c", script])
        .output()
        .unwrap()
}

pub fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn assert_fails(out: &Output, what: &str) {
    assert!(
        !out.status.success(),
        "{what} unexpectedly succeeded:\nstdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// How the test leaf certificate is issued.
#[derive(Clone, Copy)]
pub struct LeafSpec {
    pub code_signing_eku: bool,
    pub digital_signature: bool,
    pub expired: bool,
}

impl Default for LeafSpec {
    fn default() -> Self {
        Self {
            code_signing_eku: true,
            digital_signature: true,
            expired: false,
        }
    }
}

/// root CA → intermediate CA → signing leaf, all PEM.
pub struct Pki {
    pub root_pem: String,
    pub intermediate_pem: String,
    pub leaf_cert_pem: String,
    pub leaf_key_pem: String,
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p
}

impl Pki {
    pub fn new(leaf: LeafSpec) -> Self {
        Self::with_alg(leaf, &rcgen::PKCS_ECDSA_P256_SHA256)
    }

    /// `alg` is the leaf key's algorithm (the CAs are P-256).
    pub fn with_alg(leaf: LeafSpec, alg: &'static rcgen::SignatureAlgorithm) -> Self {
        let root_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let root_params = ca_params("Warden Test Root");
        let root_cert = root_params.self_signed(&root_key).unwrap();
        let root = Issuer::new(root_params, root_key);

        let int_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let int_params = ca_params("Warden Test Intermediate");
        let int_cert = int_params.signed_by(&int_key, &root).unwrap();
        let intermediate = Issuer::new(int_params, int_key);

        let leaf_key = KeyPair::generate_for(alg).unwrap();
        let mut lp = CertificateParams::new(Vec::<String>::new()).unwrap();
        lp.distinguished_name
            .push(DnType::CommonName, "model-signer");
        lp.distinguished_name
            .push(DnType::OrganizationName, "Warden Tests");
        lp.is_ca = IsCa::ExplicitNoCa;
        lp.key_usages = if leaf.digital_signature {
            vec![KeyUsagePurpose::DigitalSignature]
        } else {
            vec![KeyUsagePurpose::KeyEncipherment]
        };
        lp.extended_key_usages = if leaf.code_signing_eku {
            vec![ExtendedKeyUsagePurpose::CodeSigning]
        } else {
            vec![ExtendedKeyUsagePurpose::ServerAuth]
        };
        if leaf.expired {
            lp.not_before = rcgen::date_time_ymd(2020, 1, 1);
            lp.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let leaf_cert = lp.signed_by(&leaf_key, &intermediate).unwrap();

        Self {
            root_pem: root_cert.pem(),
            intermediate_pem: int_cert.pem(),
            leaf_cert_pem: leaf_cert.pem(),
            leaf_key_pem: leaf_key.serialize_pem(),
        }
    }

    /// Writes root.pem, intermediate.pem, leaf.pem, leaf.key into `dir`.
    pub fn write(&self, dir: &Path) {
        write(dir, "root.pem", &self.root_pem);
        write(dir, "intermediate.pem", &self.intermediate_pem);
        write(dir, "leaf.pem", &self.leaf_cert_pem);
        write(dir, "leaf.key", &self.leaf_key_pem);
    }
}

/// Runs a Python snippet with arguments.
pub fn python_script_args(cwd: &Path, script: &str, args: &[&str]) -> Output {
    Command::new(python())
        .current_dir(cwd)
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap()
}
