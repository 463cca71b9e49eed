//! `warden demo`: everything a first look needs, on a machine with nothing set up. It writes a
//! development PKI, a development model-signing key, the shipped demo model (embedded in this
//! binary) signed with that key, and a config; then it serves the model on 127.0.0.1 over
//! mutual TLS exactly as `warden serve` would, verification included. What is development-only
//! is printed as such.
//!
//! `warden demo` runs the appliance's trust path too ([`prepare_admitted`]): a software key
//! store (development only) holding the model-signer, release-authority and fleet-authority
//! anchors, a release statement and an SLSA attestation for the model, a signed revocation
//! list, and the startup policy, so the model is served only because admission allowed it.

pub mod pki;

use crate::config::Config;
use crate::demo::pki::DevCa;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use warden_attest::bundle::{self, SignOptions, Signer};

/// The shipped demo model: gradient boosting on scikit-learn's breast-cancer dataset,
/// trained and exported by `agent/demo-model/train.py`.
pub const DEMO_MODEL_ONNX: &[u8] = include_bytes!("../../demo-model/model/model.onnx");
/// Two held-out rows of that dataset as an infer request.
pub const DEMO_REQUEST_JSON: &str = include_str!("../../demo-model/sample-request.json");

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Pki(#[from] crate::demo::pki::PkiError),
    #[error("signing the demo model: {0}")]
    Sign(#[from] warden_attest::bundle::BundleError),
    #[error("the generated config is invalid: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("the demo key store: {0}")]
    KeyStore(#[from] warden_keystore::KeyStoreError),
    #[error("signing the demo release: {0}")]
    Release(#[from] warden_attest::release::ReleaseError),
    #[error("signing the demo revocation list: {0}")]
    Revocation(#[from] warden_attest::revocation::RevocationError),
    #[error("the demo policy set: {0}")]
    Policy(#[from] crate::models::admission::AdmissionError),
    #[error("the demo policy set: {0}")]
    PolicyFiles(#[from] warden_attest::policyset::files::PolicyFilesError),
}

/// The startup policy as shipped (`policies/serving/startup.rego`), written by the demo.
pub const SHIPPED_STARTUP_REGO: &str = include_str!("../../../policies/serving/startup.rego");
/// The attestation the demo's release requires.
const DEMO_ATTESTATION_TYPE: &str = "https://slsa.dev/provenance/v1";

/// Paths of what the demo wrote.
pub struct DemoFiles {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub ca: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub request: PathBuf,
    pub root_digest: String,
    /// The admission policy set's digest, when the demo runs with a key store.
    pub policy_digest: Option<String>,
}

fn write(path: &Path, contents: &[u8], private: bool) -> Result<(), DemoError> {
    let err = |source| DemoError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    // Private keys are created 0600 and never exist with wider permissions.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(path)
        .map_err(err)?;
    f.write_all(contents).map_err(err)
}

/// The development-mode anchors of the demo config ([`prepare_admitted`] replaces them).
const DEMO_TRUST_SECTION: &str = "[trust]\nmodel_signer_keys = [\"trust/model-signer.pub\"]\n";

/// The demo's grants: tenant `demo` may call every route of every version of model `demo`.
const DEMO_GRANTS_JSON: &str = r#"{"tenants": {"demo": {"models": {"demo": {"versions": ["*"], "routes": ["infer", "metadata", "ready"]}}}}}
"#;

/// Writes the demo's PKI, signer, signed model and config under `dir`; fresh on every run.
pub fn prepare(dir: &Path, port: u16) -> Result<(DemoFiles, Config), DemoError> {
    let dir = if dir.is_absolute() {
        dir.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|source| DemoError::Write {
                path: dir.to_path_buf(),
                source,
            })?
            .join(dir)
    };
    let pki = dir.join("pki");
    let ca = DevCa::new("Warden demo CA (development only)")?;
    let server = ca.issue_server()?;
    let client = ca.issue_client(
        Some("spiffe://warden.demo/tenant/demo/app/curl"),
        "warden demo client (development only)",
    )?;
    write(&pki.join("ca.pem"), ca.cert_pem().as_bytes(), false)?;
    write(&pki.join("server.pem"), server.cert_pem.as_bytes(), false)?;
    write(&pki.join("server.key"), server.key_pem.as_bytes(), true)?;
    write(&pki.join("client.pem"), client.cert_pem.as_bytes(), false)?;
    write(&pki.join("client.key"), client.key_pem.as_bytes(), true)?;

    let (signer_key, signer_pub) = bundle::generate_private_key_pem(bundle::Curve::P256)?;
    write(
        &dir.join("trust/model-signer.key"),
        signer_key.as_bytes(),
        true,
    )?;
    write(
        &dir.join("trust/model-signer.pub"),
        signer_pub.as_bytes(),
        false,
    )?;

    let model_dir = dir.join("models/demo");
    if model_dir.exists() {
        std::fs::remove_dir_all(&model_dir).map_err(|source| DemoError::Write {
            path: model_dir.clone(),
            source,
        })?;
    }
    write(&model_dir.join("model.onnx"), DEMO_MODEL_ONNX, false)?;
    let signer = Signer::from_private_key_pem(&signer_key)?;
    let signed = bundle::sign_model(
        &model_dir,
        &signer,
        &SignOptions {
            model_name: Some("demo".into()),
            ..SignOptions::default()
        },
    )?;
    let signature = dir.join("models/demo.sig");
    write(&signature, &signed.json, false)?;
    write(
        &dir.join("sample-request.json"),
        DEMO_REQUEST_JSON.as_bytes(),
        false,
    )?;
    // The policy set: the route policy as shipped, and its data document with grants for the
    // demo client's tenant only (with a key store, the startup policy joins them below).
    write(
        &dir.join("policies")
            .join(crate::gateway::authz::ROUTES_POLICY),
        crate::gateway::authz::SHIPPED_ROUTES_REGO.as_bytes(),
        false,
    )?;
    write(
        &dir.join("policies/data.json"),
        DEMO_GRANTS_JSON.as_bytes(),
        false,
    )?;
    // Metrics on loopback beside the API: the usual port with the usual API port, a free one
    // when the API port is picked freely (tests).
    let metrics_port = if port == 0 { 0 } else { 9464 };

    let config_text = format!(
        r#"# Written by `warden demo`. DEVELOPMENT ONLY: keys are files, the CA is self-made.
schema_version = 1

[server]
listen = "127.0.0.1:{port}"

[tls]
certificate = "pki/server.pem"
private_key = "pki/server.key"
client_ca = "pki/ca.pem"

[audit]
path = "audit.jsonl"

[state]
directory = "state"

{DEMO_TRUST_SECTION}
# Client certificates name their caller with a SPIFFE ID of this trust domain:
# spiffe://warden.demo/tenant/<tenant>/app/<app>.
[gateway.identity]
trust_domains = ["warden.demo"]

# The policy set: every policy the agent evaluates, with its data. Who may call what:
# serving/routes.rego as shipped, and data.json's grants for tenant `demo` on model `demo`.
[policy]
directory = "policies"

[metrics]
listen = "127.0.0.1:{metrics_port}"

[[model]]
name = "demo"
version = "1"
directory = "models/demo"
file = "model.onnx"
signature = "models/demo.sig"
"#
    );
    let config_path = dir.join("warden.toml");
    write(&config_path, config_text.as_bytes(), false)?;
    let config = Config::load(&config_path)?;
    Ok((
        DemoFiles {
            config: config_path,
            ca: pki.join("ca.pem"),
            client_cert: pki.join("client.pem"),
            client_key: pki.join("client.key"),
            request: dir.join("sample-request.json"),
            root_digest: signed.root_digest,
            policy_digest: None,
            dir,
        },
        config,
    ))
}

/// [`prepare`], then the trust path of an appliance with development keys: a software key store
/// in `keystore/` with the anchors, the startup policy in `policies/` beside the route policy,
/// a release statement and an SLSA attestation signed by a release authority, an empty
/// revocation list signed by a fleet authority; the config names them in `[keystore]`,
/// `[admission]` and the model's `release`/`attestations` instead of `[trust]`. The key store is made afresh on every run
/// (its anchors are write-once).
pub fn prepare_admitted(dir: &Path, port: u16) -> Result<(DemoFiles, Config), DemoError> {
    use warden_attest::release::{Release, Stage, sign_attestation, sign_release};
    use warden_attest::revocation::{RevocationList, sign_revocation_list};
    use warden_keystore::{KeyStore, Role, software::SoftwareKeyStore};
    let (mut files, _) = prepare(dir, port)?;
    let dir = files.dir.clone();
    let werr = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DemoError::Write { path, source }
    };
    let signer_pub = std::fs::read(dir.join("trust/model-signer.pub"))
        .map_err(werr(&dir.join("trust/model-signer.pub")))?;
    let authority = |name: &str| -> Result<(Signer, String), DemoError> {
        let (private, public) = bundle::generate_private_key_pem(bundle::Curve::P256)?;
        write(
            &dir.join(format!("trust/{name}.key")),
            private.as_bytes(),
            true,
        )?;
        write(
            &dir.join(format!("trust/{name}.pub")),
            public.as_bytes(),
            false,
        )?;
        Ok((Signer::from_private_key_pem(&private)?, public))
    };
    let (release_authority, release_pub) = authority("release-authority")?;
    let (fleet, fleet_pub) = authority("fleet-authority")?;

    let ks_dir = dir.join("keystore");
    if ks_dir.exists() {
        std::fs::remove_dir_all(&ks_dir).map_err(werr(&ks_dir))?;
    }
    let store = SoftwareKeyStore::open(&ks_dir)?;
    store.install_anchors(Role::ModelSigners, &signer_pub)?;
    store.install_anchors(Role::ReleaseAuthority, release_pub.as_bytes())?;
    store.install_anchors(Role::FleetAuthority, fleet_pub.as_bytes())?;
    drop(store);

    let policy_dir = dir.join("policies");
    write(
        &policy_dir.join(crate::models::admission::STARTUP_POLICY),
        SHIPPED_STARTUP_REGO.as_bytes(),
        false,
    )?;
    let policy_digest = warden_attest::policyset::files::policy_set_digest(&policy_dir)?;
    let release = sign_release(
        &Release {
            name: "demo".into(),
            version: "1".into(),
            stage: Stage::Approved,
            policy_set_digest: policy_digest.clone(),
            required_attestations: vec![DEMO_ATTESTATION_TYPE.into()],
        },
        &files.root_digest,
        &release_authority,
    )?;
    write(&dir.join("models/demo.release.json"), &release, false)?;
    let attestation = sign_attestation(
        DEMO_ATTESTATION_TYPE,
        &serde_json::json!({"builder": {"id": "warden demo (development only)"}}),
        "demo",
        &files.root_digest,
        &release_authority,
    )?;
    write(&dir.join("models/demo.slsa.json"), &attestation, false)?;
    let revocations = sign_revocation_list(
        &RevocationList {
            serial: 1,
            revoked_digests: vec![],
            revoked_versions: vec![],
        },
        &fleet,
    )?;
    write(&dir.join("revocations.json"), &revocations, false)?;

    let text = std::fs::read_to_string(&files.config).map_err(werr(&files.config))?;
    let text = text.replace(
        DEMO_TRUST_SECTION,
        r#"# Trust anchors in a key store: DEVELOPMENT ONLY (plain files in keystore/).
[keystore]
backend = "software-development-only"
dir = "keystore"

# Every load and every refresh is decided by policies/serving/startup.rego.
[admission]
revocation_list = "revocations.json"
"#,
    ) + "release = \"models/demo.release.json\"\nattestations = [\"models/demo.slsa.json\"]\n";
    write(&files.config, text.as_bytes(), false)?;
    let config = Config::load(&files.config)?;
    files.policy_digest = Some(policy_digest);
    Ok((files, config))
}

/// What the demo prints once it is serving.
pub fn banner(files: &DemoFiles, addr: std::net::SocketAddr) -> String {
    let q = |p: &Path| shell_quote(&p.display().to_string());
    format!(
        r#"Warden demo — serving model "demo" version 1 on https://{addr} (mutual TLS required)

DEVELOPMENT ONLY, do not use on an appliance:
  - software keys: the CA, server, client and signing private keys are plain files in {dir}
  - the CA ({ca}) was made just now by this demo; nothing outside this machine trusts it
  - the model signer key was generated just now; production signers keep theirs in an HSM

{verified}
Config: {config}   Audit trail: {dir}/audit.jsonl

Run an inference (two held-out rows of the breast-cancer dataset):

curl --cacert {ca} --cert {cert} --key {key} -H 'Content-Type: application/json' --data @{req} https://{addr}/v2/models/demo/infer

Stop with Ctrl-C (in-flight requests finish first).
listening on https://{addr}
"#,
        dir = files.dir.display(),
        ca = q(&files.ca),
        cert = q(&files.client_cert),
        key = q(&files.client_key),
        req = q(&files.request),
        config = files.config.display(),
        verified = match &files.policy_digest {
            None => format!(
                "Verified before serving: OMS signature of models/demo (root digest {}) against trust/model-signer.pub",
                files.root_digest
            ),
            Some(policy) => format!(
                "Admitted before serving by policies/serving/startup.rego (policy set {policy}):\n  \
                 OMS signature of models/demo (root digest {}) against the key store's model-signer anchor,\n  \
                 release statement (Approved) and SLSA attestation by the release authority,\n  \
                 revocation list serial 1 by the fleet authority\n  \
                 - the key store is the software backend (keystore/): DEVELOPMENT ONLY",
                files.root_digest
            ),
        },
    )
}

/// Quotes a path for a POSIX shell when it needs it.
fn shell_quote(s: &str) -> String {
    if s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-+:@".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("/a/b.pem"), "/a/b.pem");
        assert_eq!(shell_quote("/a b/it's"), r"'/a b/it'\''s'");
    }

    #[test]
    fn embedded_request_is_valid_for_the_demo_model() {
        let req =
            crate::inference::codec::decode_request(DEMO_REQUEST_JSON.as_bytes(), None).unwrap();
        assert_eq!(req.inputs[0].shape, vec![2, 30]);
    }
}
