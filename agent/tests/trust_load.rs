//! Model loading through the key store and the startup policy: a running agent (software key
//! store in a temp dir; a swtpm for the PCR and TLS case) serves version 1, then a version 2
//! that breaks one clause of `policies/serving/startup.rego` is offered; it is refused with
//! that clause's reason while version 1 keeps answering inferences. Refresh re-decides what
//! is loaded and unloads what is now refused (revoked, policy changed, list replayed).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod fleet;
mod support;
#[path = "../../attest/keyd/tests/devices/mod.rs"]
mod support_devices;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use warden_agent::config::{Config, KeystoreConfig, ModelConfig};
use warden_agent::models::{ModelError, ModelRegistry};
use warden_agent::{demo, serve};
use warden_attest::bundle::{self, SignOptions, Signer};
use warden_attest::release::Stage;
use warden_keyd::config::{KeydConfig, Principal};
use warden_keyd::server as keyd;
use warden_keystore::KeyStore;
use warden_keystore::config::{BackendConfig, SoftwareConfig, TpmConfig};
use warden_keystore::keyd::Operation;
use warden_keystore::software::SoftwareKeyStore;

use support::{Client, tls_config};

use fleet::{copy_dir, key};

/// The demo's files, with anchors in a key store and everything signed for admission.
struct World {
    _dir: tempfile::TempDir,
    files: demo::DemoFiles,
    config: Config,
    model_signer: Signer,
    /// What verifies the model signer's bundles (its public key, or the root certificate).
    model_signer_anchor: bundle::Verifier,
    release_authority: Signer,
    fleet: Signer,
    policy_dir: PathBuf,
    revocations: PathBuf,
    /// The TPM key store, opened: the agent reaches it through keyd (`keyd_socket`).
    tpm: Option<Arc<dyn KeyStore>>,
}

/// The key store a world uses.
enum Backend {
    /// The development store, in the agent's process.
    Software,
    /// A TCTI: the world holds the TPM key store, for a keyd the test starts on
    /// [`World::keyd_socket`].
    Tpm(String),
}

impl World {
    fn new(backend: Backend, refresh_interval_s: u64) -> World {
        Self::with_signer(backend, refresh_interval_s, None)
    }

    /// A world whose model signer is `certificate` (a certificate-method signer and the root
    /// anchoring it, PEM) instead of the demo's key; the demo model is signed by it again.
    fn with_signer(
        backend: Backend,
        refresh_interval_s: u64,
        certificate: Option<(Signer, String)>,
    ) -> World {
        let dir = tempfile::tempdir().unwrap();
        let (files, mut config) = support::serving::demo_world(dir.path());
        let (model_signer, signer_pub) = match certificate {
            None => (
                Signer::from_private_key_pem(
                    &std::fs::read_to_string(files.dir.join("trust/model-signer.key")).unwrap(),
                )
                .unwrap(),
                std::fs::read(files.dir.join("trust/model-signer.pub")).unwrap(),
            ),
            Some((signer, root_pem)) => {
                bundle::sign_model(
                    &files.dir.join("models/demo"),
                    &signer,
                    &SignOptions::default(),
                )
                .unwrap()
                .write_to(&files.dir.join("models/demo.sig"))
                .unwrap();
                (signer, root_pem.into_bytes())
            }
        };
        let (release_authority, release_pub) = key();
        let (fleet, fleet_pub) = key();

        // The demo's policy set (route policy, grants) with the shipped startup policy: our
        // own copy, so a test can change it.
        let policy_dir = files.dir.join("policies");
        copy_dir(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies"),
            &policy_dir,
        );
        config.policy = Some(warden_agent::config::PolicyConfig {
            directory: policy_dir.clone(),
        });

        let (store, tpm): (Arc<dyn KeyStore>, _) = match &backend {
            Backend::Software => {
                let ks_dir = files.dir.join("keystore");
                config.keystore = Some(KeystoreConfig::Development(SoftwareConfig {
                    dir: ks_dir.clone(),
                }));
                (Arc::new(SoftwareKeyStore::open(&ks_dir).unwrap()), None)
            }
            Backend::Tpm(tcti) => {
                let store = warden_keyd::backend::open(&BackendConfig::Tpm(TpmConfig {
                    tcti: tcti.clone(),
                    seal_pcrs: vec![0, 2, 4, 7],
                }))
                .unwrap();
                config.keystore = Some(KeystoreConfig::Keyd {
                    socket: files.dir.join("keyd.sock"),
                });
                (Arc::clone(&store), Some(store))
            }
        };
        fleet::install_role_anchors(store.as_ref(), &signer_pub, &release_pub, &fleet_pub);
        drop(store);

        // Key-store mode: no file anchors.
        config.trust = Default::default();
        let revocations = files.dir.join("revocations.json");
        config.admission = Some(fleet::admission(&revocations, refresh_interval_s));
        let model_signer_anchor = match std::str::from_utf8(&signer_pub).unwrap() {
            pem if pem.contains("BEGIN CERTIFICATE") => {
                bundle::Verifier::from_certificate_roots_pem(pem).unwrap()
            }
            pem => bundle::Verifier::from_public_key_pem(pem).unwrap(),
        };
        let mut w = World {
            _dir: dir,
            files,
            config,
            model_signer,
            model_signer_anchor,
            release_authority,
            fleet,
            policy_dir,
            revocations,
            tpm,
        };
        let v1 = w.config.models[0].clone();
        let release = w.write_release(&v1, Stage::Approved, None);
        let att = w.write_attestation(&v1, &w.release_authority);
        w.config.models[0].release = Some(release);
        w.config.models[0].attestations = vec![att];
        w
    }

    /// Where a TPM world's agent expects keyd.
    fn keyd_socket(&self) -> PathBuf {
        match &self.config.keystore {
            Some(KeystoreConfig::Keyd { socket }) => socket.clone(),
            _ => panic!("not a TPM world"),
        }
    }

    fn policy_digest(&self) -> String {
        warden_attest::policyset::files::policy_set_digest(&self.policy_dir).unwrap()
    }

    /// The model's root digest as its signer's anchor verifies it (zeros when it does not).
    fn root_digest(&self, m: &ModelConfig) -> String {
        let sig = std::fs::read(m.signature_path()).unwrap();
        bundle::verify_model_bytes(
            &m.directory,
            &sig,
            None,
            &self.model_signer_anchor,
            &Default::default(),
        )
        .map(|v| v.root_digest)
        .unwrap_or_else(|_| format!("sha256:{}", "00".repeat(32)))
    }

    /// A release statement for `m`, written beside its directory.
    fn write_release(&self, m: &ModelConfig, stage: Stage, policy: Option<&str>) -> PathBuf {
        let bytes = fleet::signed_release(
            &m.name,
            &m.version,
            stage,
            policy.map_or_else(|| self.policy_digest(), str::to_owned),
            &self.root_digest(m),
            &self.release_authority,
        );
        let path = self
            .files
            .dir
            .join(format!("models/{}-{}.release.json", m.name, m.version));
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn write_attestation(&self, m: &ModelConfig, signer: &Signer) -> PathBuf {
        let bytes = fleet::signed_slsa(&m.name, &self.root_digest(m), signer);
        let path = self
            .files
            .dir
            .join(format!("models/{}-{}.slsa.json", m.name, m.version));
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn write_revocations(&self, serial: u64, revoked: &[&str]) -> Vec<u8> {
        let bytes = fleet::signed_revocations(serial, revoked, &self.fleet);
        std::fs::write(&self.revocations, &bytes).unwrap();
        bytes
    }

    /// Version 2 of the demo model: a copy of the directory signed by `signer` (the demo's
    /// model signer unless given), with a good release and attestation.
    fn v2(&self, signer: Option<&Signer>) -> ModelConfig {
        let mut m = self.config.models[0].clone();
        m.version = "2".into();
        m.directory = self.files.dir.join("models/demo-v2");
        copy_dir(&self.config.models[0].directory, &m.directory);
        let signed = bundle::sign_model(
            &m.directory,
            signer.unwrap_or(&self.model_signer),
            &SignOptions {
                model_name: Some("demo".into()),
                ..SignOptions::default()
            },
        )
        .unwrap();
        let sig = self.files.dir.join("models/demo-v2.sig");
        signed.write_to(&sig).unwrap();
        m.signature = Some(sig);
        m.release = Some(self.write_release(&m, Stage::Approved, None));
        m.attestations = vec![self.write_attestation(&m, &self.release_authority)];
        m
    }

    async fn start(self) -> Running {
        let prepared = serve::prepare(&self.config).await.unwrap();
        let addr = prepared.local_addr;
        let models = prepared.models.clone();
        let policies = prepared.policies.clone();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(prepared.run(async move {
            let _ = rx.await;
        }));
        Running {
            addr,
            models,
            policies,
            stop: Some(tx),
            task: Some(task),
            server_ca: self.files.ca.clone(),
            world: self,
        }
    }
}

struct Running {
    addr: std::net::SocketAddr,
    models: Arc<ModelRegistry>,
    policies: Arc<warden_agent::policy_in_force::PolicyInForce>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    /// The CA the client trusts for the server's certificate.
    server_ca: PathBuf,
    world: World,
}

impl Running {
    async fn infer(&self, version: &str) -> support::Reply {
        let f = &self.world.files;
        let tls = tls_config(
            &self.server_ca,
            Some((&f.client_cert, &f.client_key)),
            false,
        );
        let mut c = Client::connect(self.addr, tls, false).await.unwrap();
        c.post_json(
            &format!("/v2/models/demo/versions/{version}/infer"),
            std::fs::read(&f.request).unwrap(),
        )
        .await
        .unwrap()
    }

    async fn assert_serves(&self, version: &str) {
        let r = self.infer(version).await;
        assert_eq!(
            r.status,
            200,
            "version {version}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert!(r.json()["outputs"].is_array(), "{:?}", r.json());
    }

    /// Offers `m` for loading; returns the refusal.
    async fn refused(&self, m: &ModelConfig) -> ModelError {
        match self.models.add(m).await {
            Ok(()) => panic!("version {} was loaded", m.version),
            Err(e) => e,
        }
    }

    fn audit(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.world.files.dir.join("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            // A request's line may be half-written by the server while we read.
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    async fn stop(self) {
        self.into_world().await;
    }

    /// Stops the agent and hands its world back (for a restart).
    async fn into_world(mut self) -> World {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
        self.world
    }
}

/// The refusal names `clause` (the policy's reason prefix) and v1 still answers.
async fn refused_for(r: &Running, m: &ModelConfig, clause: &str) -> String {
    let e = r.refused(m).await;
    let reasons = match &e {
        ModelError::Refused { reasons, .. } => reasons.clone(),
        other => panic!("expected an admission refusal for {clause}, got {other}"),
    };
    assert!(
        reasons.iter().any(|x| x.split(':').next() == Some(clause)),
        "expected a `{clause}` reason, got {reasons:?}"
    );
    let text = e.to_string();
    assert!(
        text.contains("model demo version 2: admission refused"),
        "{text}"
    );
    // Nothing half-verified is served or left behind; the previous version keeps serving.
    assert!(r.models.resolve("demo", Some("2")).is_none());
    assert!(
        !r.world
            .config
            .state
            .directory
            .join("models/demo/2")
            .exists()
    );
    r.assert_serves("1").await;
    // The decision is in the audit trail, with its reasons.
    assert!(
        r.audit().iter().any(|e| e["kind"] == "admission"
            && e["version"] == "2"
            && e["outcome"] == "refused"
            && e["reason"].as_str().is_some_and(|x| x.contains(clause))),
        "no audited refusal for {clause}"
    );
    text
}

#[tokio::test]
async fn a_good_version_is_admitted_audited_and_served_beside_the_first() {
    let w = World::new(Backend::Software, 60);
    let r = w.start().await;
    r.assert_serves("1").await;
    let v2 = r.world.v2(None);
    r.models.add(&v2).await.unwrap();
    r.assert_serves("2").await;
    r.assert_serves("1").await;
    let admitted: Vec<_> = r
        .audit()
        .into_iter()
        .filter(|e| e["kind"] == "admission" && e["outcome"] == "admitted")
        .collect();
    assert_eq!(admitted.len(), 2, "{admitted:?}");
    // The software key store has no PCR: the loads are in the application event log.
    let log = warden_attest::boot::measure::AppEventLog::new(
        &r.world
            .config
            .state
            .directory
            .join(warden_agent::models::APP_EVENT_LOG),
    );
    let events = log.read().unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[1].version, "2");
    assert_eq!(events[1].policy_digest, r.world.policy_digest());
    r.stop().await;
}

#[tokio::test]
async fn wrong_stage_is_refused_while_v1_serves() {
    let r = World::new(Backend::Software, 60).start().await;
    let mut v2 = r.world.v2(None);
    v2.release = Some(r.world.write_release(&v2, Stage::Staging, None));
    let text = refused_for(&r, &v2, "wrong_stage").await;
    assert!(text.contains("Staging"), "{text}");
    r.stop().await;
}

#[tokio::test]
async fn unsigned_model_is_refused_while_v1_serves() {
    let r = World::new(Backend::Software, 60).start().await;
    let mut v2 = r.world.v2(None);
    std::fs::remove_file(v2.signature_path()).unwrap();
    v2.signature = Some(r.world.files.dir.join("models/absent.sig"));
    refused_for(&r, &v2, "unsigned").await;
    r.stop().await;
}

#[tokio::test]
async fn tampered_model_is_refused_while_v1_serves() {
    let r = World::new(Backend::Software, 60).start().await;
    let v2 = r.world.v2(None);
    let path = v2.directory.join("model.onnx");
    let mut bytes = std::fs::read(&path).unwrap();
    let i = bytes.len() / 2;
    bytes[i] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let text = refused_for(&r, &v2, "tampered").await;
    assert!(text.contains("model.onnx"), "{text}");
    r.stop().await;
}

#[tokio::test]
async fn missing_or_invalid_attestation_is_refused_while_v1_serves() {
    let r = World::new(Backend::Software, 60).start().await;
    let mut v2 = r.world.v2(None);
    v2.attestations.clear();
    refused_for(&r, &v2, "attestation_missing").await;
    // Signed by a key nobody trusts.
    let (stranger, _) = key();
    v2.attestations = vec![r.world.write_attestation(&v2, &stranger)];
    refused_for(&r, &v2, "attestation_invalid").await;
    r.stop().await;
}

#[tokio::test]
async fn policy_digest_mismatch_is_refused_while_v1_serves() {
    let r = World::new(Backend::Software, 60).start().await;
    let mut v2 = r.world.v2(None);
    let other = format!("sha256:{}", "ab".repeat(32));
    v2.release = Some(r.world.write_release(&v2, Stage::Approved, Some(&other)));
    let text = refused_for(&r, &v2, "policy_digest_mismatch").await;
    assert!(text.contains(&other), "{text}");
    r.stop().await;
}

#[tokio::test]
async fn unknown_signer_is_refused_while_v1_serves() {
    let r = World::new(Backend::Software, 60).start().await;
    let (stranger, _) = key();
    let v2 = r.world.v2(Some(&stranger));
    refused_for(&r, &v2, "unknown_signer").await;
    r.stop().await;
}

#[tokio::test]
async fn revoked_version_is_refused_and_a_serving_one_is_unloaded_on_refresh() {
    let r = World::new(Backend::Software, 60).start().await;
    let v2 = r.world.v2(None);
    r.world.write_revocations(1, &["2"]);
    let text = refused_for(&r, &v2, "revoked").await;
    assert!(text.contains("withdrawn by test (version 2)"), "{text}");
    // A refresh with that list keeps v1 (not revoked).
    assert!(r.models.refresh().await.is_empty());
    r.assert_serves("1").await;

    // Revoking v1 while it serves: the next refresh unloads it and stops its worker.
    r.world.write_revocations(2, &["1", "2"]);
    let v1 = r.models.resolve("demo", Some("1")).unwrap();
    let unloaded = r.models.refresh().await;
    assert_eq!(unloaded.len(), 1, "{unloaded:?}");
    assert!(
        unloaded[0]
            .reasons
            .iter()
            .any(|x| x.starts_with("revoked:"))
    );
    assert!(r.models.resolve("demo", Some("1")).is_none());
    assert!(!v1.worker.is_alive(), "the worker was not shut down");
    assert!(
        !r.world
            .config
            .state
            .directory
            .join("models/demo/1")
            .exists(),
        "the unloaded copy is left in the state directory"
    );
    let reply = r.infer("1").await;
    assert_eq!(reply.status, 404);
    assert!(
        String::from_utf8_lossy(&reply.body).contains("withdrawn"),
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert!(
        r.audit()
            .iter()
            .any(|e| e["kind"] == "admission" && e["version"] == "1" && e["outcome"] == "unloaded")
    );
    r.stop().await;
}

/// A refresh re-checks the signature against what was verified at load rather than re-hashing
/// the model: with the staged files gone it still keeps v1 (whose worker holds the model it
/// verified), and a revocation still unloads it.
#[tokio::test]
async fn a_refresh_does_not_re_read_the_model_and_still_enforces_revocation() {
    let r = World::new(Backend::Software, 60).start().await;
    let staged = r.world.config.state.directory.join("models/demo/1");
    let model_dir = std::fs::read_dir(&staged)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.is_dir())
        .unwrap();
    std::fs::remove_dir_all(&model_dir).unwrap();
    assert!(r.models.refresh().await.is_empty(), "v1 was re-read");
    r.assert_serves("1").await;
    assert!(
        r.audit()
            .iter()
            .any(|e| e["kind"] == "admission" && e["version"] == "1" && e["outcome"] == "kept")
    );
    r.world.write_revocations(1, &["1"]);
    let unloaded = r.models.refresh().await;
    assert_eq!(unloaded.len(), 1, "{unloaded:?}");
    r.stop().await;
}

#[tokio::test]
async fn revocation_is_enforced_within_the_refresh_interval() {
    let r = World::new(Backend::Software, 1).start().await;
    r.assert_serves("1").await;
    r.world.write_revocations(1, &["1"]);
    let deadline = Instant::now() + Duration::from_secs(15);
    while r.models.resolve("demo", Some("1")).is_some() {
        assert!(
            Instant::now() < deadline,
            "a revoked version still serves after 15 s (interval 1 s)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(r.infer("1").await.status, 404);
    r.stop().await;
}

#[tokio::test]
async fn older_revocation_list_replayed_is_refused_and_unloads_on_refresh() {
    let r = World::new(Backend::Software, 60).start().await;
    let old = r.world.write_revocations(1, &[]);
    assert!(r.models.refresh().await.is_empty());
    r.world.write_revocations(2, &[]);
    assert!(r.models.refresh().await.is_empty());
    // Replaying list 1.
    std::fs::write(&r.world.revocations, &old).unwrap();
    let v2 = r.world.v2(None);
    let text = refused_for(&r, &v2, "revocation_list_replayed").await;
    assert!(
        text.contains("serial 1") && text.contains("serial 2"),
        "{text}"
    );
    // Admission refuses every version under a replayed list: the next refresh unloads v1.
    let unloaded = r.models.refresh().await;
    assert_eq!(unloaded.len(), 1);
    assert!(
        unloaded[0]
            .reasons
            .iter()
            .any(|x| x.starts_with("revocation_list_replayed:"))
    );
    // So does removing the list once one was accepted.
    std::fs::remove_file(&r.world.revocations).unwrap();
    let text = r.refused(&v2).await.to_string();
    assert!(text.contains("revocation_list_missing"), "{text}");
    r.stop().await;
}

/// With a key store the policy set changes only by a signed push: files changed on disk (a
/// new policy, the grants emptied) are refused at SIGHUP, each named, and the set in force —
/// its route policy and grants, its startup policy, its digest — stays; a refresh does not
/// read them either. At the next start the changed set is what the configuration names, and
/// the releases, which pin the set's digest, refuse every version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_set_changed_on_disk_is_refused_named_and_the_set_in_force_stays() {
    use warden_agent::policy_in_force::PolicyInForceError;
    let r = World::new(Backend::Software, 60).start().await;
    let digest = r.world.policy_digest();
    std::fs::write(
        r.world.policy_dir.join("serving/extra.rego"),
        "package warden.extra\n\nx := 1\n",
    )
    .unwrap();
    std::fs::write(r.world.policy_dir.join("data.json"), r#"{"tenants": {}}"#).unwrap();
    match r.policies.reload() {
        Err(e @ PolicyInForceError::ChangedOutsideSignedSet { .. }) => {
            let text = e.to_string();
            assert!(text.contains("changed: data.json"), "{text}");
            assert!(text.contains("added: serving/extra.rego"), "{text}");
            assert!(text.contains(&digest), "{text}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(r.models.refresh().await.is_empty());
    assert_eq!(
        r.models.trust().unwrap().admission().policy_digest(),
        digest
    );
    assert_eq!(r.policies.current().unwrap().digest(), digest);
    // The grants in force still admit the demo tenant.
    r.assert_serves("1").await;

    let w = r.into_world().await;
    let restarted = match serve::prepare(&w.config).await {
        Ok(_) => panic!("a version was served under a policy set its release does not pin"),
        Err(e) => e.to_string(),
    };
    assert!(restarted.contains("policy_digest_mismatch"), "{restarted}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_tpm_through_keyd_the_load_is_measured_and_tls_is_signed_by_the_tpm_key() {
    use warden_attest::boot::measure::{DEFAULT_APP_PCR, ModelLoadEvent, predict};
    let tpm = support_devices::Swtpm::start();
    let mut w = World::new(Backend::Tpm(tpm.tcti.clone()), 60);
    let store = w.tpm.clone().unwrap();
    // The device key in the TPM; a certificate for it from a CA the client trusts.
    let device_cert = {
        store.ensure_device_key().unwrap();
        let csr = warden_keyd::cli::device_csr(store.as_ref(), "localhost").unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca_cert = params.self_signed(&ca_key).unwrap();
        let ca = rcgen::Issuer::new(params, ca_key);
        let cert = rcgen::CertificateSigningRequestParams::from_pem(&csr)
            .unwrap()
            .signed_by(&ca)
            .unwrap();
        std::fs::write(w.files.dir.join("pki/device.pem"), cert.pem()).unwrap();
        std::fs::write(w.files.dir.join("pki/device-ca.pem"), ca_cert.pem()).unwrap();
        // rcgen checked the CSR's signature: this certificate is for the TPM's device key.
        cert.der().to_vec()
    };
    // No key file anywhere: the TPM signs.
    std::fs::remove_file(w.files.dir.join("pki/server.key")).unwrap();
    w.config.tls.private_key = None;
    w.config.tls.certificate = w.files.dir.join("pki/device.pem");
    let device_ca = w.files.dir.join("pki/device-ca.pem");
    // A log left from a previous boot (the PCR is zero again): the agent starts it afresh.
    let app_log = w
        .config
        .state
        .directory
        .join(warden_agent::models::APP_EVENT_LOG);
    std::fs::create_dir_all(&w.config.state.directory).unwrap();
    let stale = warden_attest::boot::measure::AppEventLog::new(&app_log);
    stale
        .append(&ModelLoadEvent {
            model: "old".into(),
            version: "9".into(),
            root_digest: format!("sha256:{}", "aa".repeat(32)),
            policy_digest: format!("sha256:{}", "bb".repeat(32)),
        })
        .unwrap();
    // keyd is the only holder of the TPM; the agent signs its handshakes through it.
    let keyd = KeydThread::start(
        Arc::clone(&store),
        &w.keyd_socket(),
        vec![
            Operation::Describe,
            Operation::DevicePublicKey,
            Operation::Sign,
            Operation::Anchors,
            Operation::Counter,
            Operation::AdvanceCounter,
            Operation::ReadPcr,
            Operation::ExtendPcr,
        ],
    );
    let mut r = w.start().await;
    r.server_ca = device_ca;

    // The handshake verified against a certificate for the TPM's key, and the API answers.
    r.assert_serves("1").await;
    let leaf = {
        let tls = tls_config(
            &r.server_ca,
            Some((&r.world.files.client_cert, &r.world.files.client_key)),
            false,
        );
        let tcp = tokio::net::TcpStream::connect(r.addr).await.unwrap();
        let conn = tokio_rustls::TlsConnector::from(tls)
            .connect("localhost".try_into().unwrap(), tcp)
            .await
            .unwrap();
        conn.get_ref().1.peer_certificates().unwrap()[0].clone()
    };
    // The handshake completed with this certificate, so its key signed it: the TPM's.
    assert_eq!(
        leaf.as_ref(),
        device_cert.as_slice(),
        "the server did not present the device key's certificate"
    );
    assert!(!r.world.files.dir.join("pki/server.key").exists());

    // The application PCR has the predicted value after the load.
    let v1 = r.models.resolve("demo", Some("1")).unwrap();
    let expected = ModelLoadEvent {
        model: "demo".into(),
        version: "1".into(),
        root_digest: v1.root_digest.clone(),
        policy_digest: r.world.policy_digest(),
    };
    drop(v1);
    assert_eq!(stale.read().unwrap(), vec![expected.clone()]);
    r.stop().await;
    drop(keyd);
    // Read on the TPM itself, behind keyd's back.
    assert_eq!(
        store.read_pcr(DEFAULT_APP_PCR).unwrap(),
        predict(&[expected]),
        "the application PCR is not the prediction"
    );
}

/// A keyd serving `store` on `socket` on its own thread and runtime (so that the agent's
/// blocking calls on the socket never wait on their own runtime), until dropped.
struct KeydThread {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl KeydThread {
    fn start(store: Arc<dyn KeyStore>, socket: &Path, operations: Vec<Operation>) -> KeydThread {
        let config = KeydConfig {
            schema_version: 1,
            socket: socket.to_path_buf(),
            socket_group: None,
            keystore: BackendConfig::Software(SoftwareConfig {
                dir: socket.with_file_name("unused"),
            }),
            principals: vec![Principal {
                name: "agent".into(),
                uid: support_devices::current_uid(),
                user: None,
                operations,
            }],
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = keyd::bind(&config.socket).unwrap();
                ready_tx.send(()).unwrap();
                keyd::serve(listener, Arc::new(config), store, async {
                    let _ = stopped.await;
                })
                .await;
            });
        });
        ready.recv().unwrap();
        KeydThread {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for KeydThread {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The agent with `keystore.keyd_socket`: keyd (the only holder of the swtpm) serves the
/// anchors, the counter and the PCRs; the model load is measured into PCR 23 through keyd and
/// the PCR ends at the value the application log predicts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_keyd_the_load_is_measured_into_the_tpm() {
    use warden_attest::boot::measure::{DEFAULT_APP_PCR, ModelLoadEvent, predict};
    let tpm = support_devices::Swtpm::start();
    let w = World::new(Backend::Tpm(tpm.tcti.clone()), 60);
    let store = w.tpm.clone().unwrap();
    let keyd = KeydThread::start(
        Arc::clone(&store),
        &w.keyd_socket(),
        vec![
            Operation::Describe,
            Operation::Anchors,
            Operation::Counter,
            Operation::AdvanceCounter,
            Operation::ReadPcr,
            Operation::ExtendPcr,
        ],
    );
    let r = w.start().await;
    r.assert_serves("1").await;
    let v1 = r.models.resolve("demo", Some("1")).unwrap();
    let expected = ModelLoadEvent {
        model: "demo".into(),
        version: "1".into(),
        root_digest: v1.root_digest.clone(),
        policy_digest: r.world.policy_digest(),
    };
    drop(v1);
    let app_log = warden_attest::boot::measure::AppEventLog::new(
        &r.world
            .config
            .state
            .directory
            .join(warden_agent::models::APP_EVENT_LOG),
    );
    assert_eq!(app_log.read().unwrap(), vec![expected.clone()]);
    r.stop().await;
    // Read on the TPM itself, behind keyd's back.
    assert_eq!(
        store.read_pcr(DEFAULT_APP_PCR).unwrap(),
        predict(&[expected]),
        "the load was not measured into the TPM through keyd"
    );
    drop(keyd);
}

/// Kills the child on drop.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The real binary with a `[keystore]` config file: `warden check` accepts it, `warden serve`
/// admits v1, and SIGHUP (interval 1 h, so only the signal can do it) re-runs admission and
/// unloads the version a new revocation list revokes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_re_runs_admission_in_the_real_binary() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let w = World::new(Backend::Software, 60);
    let f = &w.files;
    let m = &w.config.models[0];
    let demo_text = std::fs::read_to_string(&f.config).unwrap();
    let anchors = "[trust]\nmodel_signer_keys = [\"trust/model-signer.pub\"]\n";
    assert!(
        demo_text.contains(anchors),
        "the demo config changed: {demo_text}"
    );
    let text = format!(
        "{}release = {:?}\nattestations = [{:?}]\n",
        demo_text.replace(
            anchors,
            &format!(
                "[keystore]\nbackend = \"software-development-only\"\ndir = \"keystore\"\n\n\
                 [admission]\nrevocation_list = {:?}\nrefresh_interval_s = 3600\n",
                w.revocations
            ),
        ),
        m.release.as_ref().unwrap(),
        m.attestations[0],
    );
    let config = f.dir.join("warden-keystore.toml");
    std::fs::write(&config, text).unwrap();

    let check = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(out.contains("DEVELOPMENT ONLY"), "{out}");
    assert!(out.contains(&w.policy_digest()), "{out}");

    let mut child = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let child = Child(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let line = strip_ansi(&line);
            if line.contains("serving")
                && let Some(addr) = line.split("addr=").nth(1)
            {
                let _ = tx.send(addr.split_whitespace().next().unwrap_or("").to_string());
            }
        }
    });
    let addr: std::net::SocketAddr = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("`warden serve` did not log `serving` within 60 s")
        .parse()
        .unwrap();
    let tls = tls_config(&f.ca, Some((&f.client_cert, &f.client_key)), false);
    let mut c = Client::connect(addr, tls, false).await.unwrap();
    let body = std::fs::read(&f.request).unwrap();
    let infer = "/v2/models/demo/versions/1/infer";
    assert_eq!(c.post_json(infer, body.clone()).await.unwrap().status, 200);

    w.write_revocations(1, &["1"]);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.0.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let reply = c.post_json(infer, body.clone()).await.unwrap();
        if reply.status == 404 {
            assert!(
                String::from_utf8_lossy(&reply.body).contains("withdrawn"),
                "{}",
                String::from_utf8_lossy(&reply.body)
            );
            break;
        }
        assert_eq!(reply.status, 200);
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not unload the revoked version"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Still running: health answers.
    assert_eq!(c.get("/v2/health/live").await.unwrap().status, 200);
}

/// The log line without terminal colour sequences.
fn strip_ansi(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The specification's startup policy (6.1), dropped in as written beside Warden's own
/// (`policies/examples/serving/startup.rego`, part of the set) and named as admission's entry
/// point, decides real loads on the fields the agent provides: the demo version is admitted;
/// one released for another policy set is refused, naming the rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_specifications_startup_example_decides_real_loads() {
    let mut w = World::new(Backend::Software, 60);
    w.config.admission.as_mut().unwrap().rule = "data.serving.startup.permit".into();
    assert!(w.policy_dir.join("examples/serving/startup.rego").is_file());
    let r = w.start().await;
    r.assert_serves("1").await;
    let mut v2 = r.world.v2(None);
    let other = format!("sha256:{}", "ab".repeat(32));
    v2.release = Some(r.world.write_release(&v2, Stage::Approved, Some(&other)));
    let text = r.refused(&v2).await.to_string();
    assert!(
        text.contains("denied: data.serving.startup.permit is false"),
        "{text}"
    );
    r.assert_serves("1").await;
    r.stop().await;
}

/// With a key store and a certificate-method model signer, the signers' CRLs re-read (what
/// SIGHUP does before its refresh) decide the refresh: a version whose signing certificate the
/// new list revokes is unloaded, and a list that does not read keeps those in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signer_revoked_by_a_reloaded_crl_is_unloaded_at_the_refresh() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let pki = support::pki::pki(now + 365 * 86_400, now + 365 * 86_400);
    let mut w = World::with_signer(
        Backend::Software,
        3600,
        Some((pki.signer(), pki.root.clone())),
    );
    let crl = w.files.dir.join("trust/signers.crl");
    std::fs::write(&crl, pki.crl(false, false)).unwrap();
    w.config.trust.model_signer_crls = vec![crl.clone()];
    let r = w.start().await;
    r.assert_serves("1").await;
    let trust = r.models.trust().unwrap().clone();

    std::fs::write(&crl, b"not a list").unwrap();
    assert!(trust.reload_signer_crls().is_err());
    assert!(r.models.refresh().await.is_empty());
    r.assert_serves("1").await;

    std::fs::write(&crl, pki.crl(false, true)).unwrap();
    assert_eq!(trust.reload_signer_crls().unwrap(), 1);
    let unloaded = r.models.refresh().await;
    assert_eq!(unloaded.len(), 1, "{unloaded:?}");
    assert_eq!(r.infer("1").await.status, 404);
    r.stop().await;
}
