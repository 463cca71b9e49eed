//! The fleet-push admin listener against a real agent (software key store, admission, workers)
//! and a real mTLS admin client holding a certificate from the fleet CA: a push while a client
//! loops inferences fails no request; bad pushes change nothing; foreign certificates are
//! refused at the handshake; activate and rollback move the default; a pushed revocation list
//! unloads what it revokes and an older one is refused.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use warden_agent::config::{
    AdminConfig, AdmissionConfig, Config, InputRange, KeystoreConfig, ModelConfig,
};
use warden_agent::{demo, pki::DevCa, serve};
use warden_attest::bundle::{self, Curve, SignOptions, Signer};
use warden_attest::keystore::software::SoftwareKeyStore;
use warden_attest::keystore::{BackendConfig, KeyStore, Role, SoftwareConfig};
use warden_attest::release::{Release, Stage, sign_attestation, sign_release};
use warden_attest::revocation::{RevocationList, RevokedVersion, sign_revocation_list};

use support::{Client, Reply, tls_config};

const SLSA: &str = "https://slsa.dev/provenance/v1";
const MAX_UPLOAD: u64 = 16 * 1024 * 1024;

fn key() -> (Signer, String) {
    let (private_pem, public_pem) = bundle::generate_private_key_pem(Curve::P256).unwrap();
    (
        Signer::from_private_key_pem(&private_pem).unwrap(),
        public_pem,
    )
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// One pushable version: the files a tar is built from.
struct Bundle {
    model: PathBuf,
    sig: Option<PathBuf>,
    release: PathBuf,
    attestation: PathBuf,
}

struct World {
    _dir: tempfile::TempDir,
    files: demo::DemoFiles,
    config: Config,
    model_signer: Signer,
    release_authority: Signer,
    fleet: Signer,
    policy_dir: PathBuf,
    revocations: PathBuf,
    /// Admin client certificate and key (fleet CA).
    admin_cert: PathBuf,
    admin_key: PathBuf,
}

impl World {
    fn new() -> World {
        assert!(
            std::env::var_os("ORT_DYLIB_PATH").is_some(),
            "ORT_DYLIB_PATH is not set: run `scripts/setup.sh --test` and `source .cache/env`"
        );
        let dir = tempfile::tempdir().unwrap();
        let (files, mut config) = demo::prepare(dir.path(), 0).unwrap();
        config.runtime.worker_binary =
            Some(Path::new(env!("CARGO_BIN_EXE_warden")).with_file_name("warden-runtime"));
        // Clients loop at full speed: the gateway's rate limits are not what is tested here.
        let limits = &mut config.gateway.limits;
        limits.identity_rate_per_s = 1e6;
        limits.identity_burst = 1_000_000;
        limits.tenant_rate_per_s = 1e6;
        limits.tenant_burst = 1_000_000;
        // A value range, which pushed versions inherit.
        config.models[0].inputs.insert(
            "input".into(),
            InputRange {
                min: Some(-1e6),
                max: Some(1e6),
            },
        );
        let model_signer = Signer::from_private_key_pem(
            &std::fs::read_to_string(files.dir.join("trust/model-signer.key")).unwrap(),
        )
        .unwrap();
        let signer_pub = std::fs::read(files.dir.join("trust/model-signer.pub")).unwrap();
        let (release_authority, release_pub) = key();
        let (fleet, fleet_pub) = key();
        let policy_dir = files.dir.join("admission-policies");
        copy_dir(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies"),
            &policy_dir,
        );
        let ks_dir = files.dir.join("keystore");
        config.keystore = Some(KeystoreConfig::InProcess(BackendConfig::Software(
            SoftwareConfig {
                dir: ks_dir.clone(),
            },
        )));
        let store = SoftwareKeyStore::open(&ks_dir).unwrap();
        store
            .install_anchors(Role::ModelSigners, &signer_pub)
            .unwrap();
        store
            .install_anchors(Role::ReleaseAuthority, release_pub.as_bytes())
            .unwrap();
        store
            .install_anchors(Role::FleetAuthority, fleet_pub.as_bytes())
            .unwrap();
        drop(store);
        config.trust = Default::default();
        let revocations = files.dir.join("revocations.json");
        config.admission = Some(AdmissionConfig {
            policy_directory: policy_dir.clone(),
            allowed_stages: vec![Stage::Approved],
            revocation_list: Some(revocations.clone()),
            refresh_interval_s: 3600,
        });

        // The fleet CA and the controller's client certificate.
        let fleet_ca = DevCa::new("Warden fleet CA (test)").unwrap();
        let controller = fleet_ca
            .issue_client(Some("spiffe://warden.fleet/controller"), "controller")
            .unwrap();
        let ca_path = files.dir.join("pki/fleet-ca.pem");
        let admin_cert = files.dir.join("pki/admin.pem");
        let admin_key = files.dir.join("pki/admin.key");
        std::fs::write(&ca_path, fleet_ca.cert_pem()).unwrap();
        std::fs::write(&admin_cert, controller.cert_pem).unwrap();
        std::fs::write(&admin_key, controller.key_pem).unwrap();
        config.admin = Some(AdminConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            client_ca: Some(ca_path),
            max_upload_bytes: MAX_UPLOAD,
            max_entries: 64,
        });

        let mut w = World {
            _dir: dir,
            files,
            config,
            model_signer,
            release_authority,
            fleet,
            policy_dir,
            revocations,
            admin_cert,
            admin_key,
        };
        let v1 = w.config.models[0].clone();
        let release = w.write_release(&v1, &v1.signature_path(), "1");
        let att = w.write_attestation(&v1, &v1.signature_path(), "1");
        w.config.models[0].release = Some(release);
        w.config.models[0].attestations = vec![att];
        w
    }

    fn root_digest(&self, dir: &Path, sig: &Path) -> String {
        let sig = std::fs::read(sig).unwrap();
        let anchors = bundle::Verifier::from_public_key_pem(
            &std::fs::read_to_string(self.files.dir.join("trust/model-signer.pub")).unwrap(),
        )
        .unwrap();
        bundle::verify_model_bytes(dir, &sig, None, &anchors, &Default::default())
            .map(|v| v.root_digest)
            .unwrap_or_else(|_| format!("sha256:{}", "00".repeat(32)))
    }

    fn write_release(&self, m: &ModelConfig, sig: &Path, version: &str) -> PathBuf {
        let bytes = sign_release(
            &Release {
                name: m.name.clone(),
                version: version.to_owned(),
                stage: Stage::Approved,
                policy_set_digest: warden_agent::admission::policy_set_digest(&self.policy_dir)
                    .unwrap(),
                required_attestations: vec![SLSA.to_owned()],
            },
            &self.root_digest(&m.directory, sig),
            &self.release_authority,
        )
        .unwrap();
        let path = self
            .files
            .dir
            .join(format!("models/demo-{version}.release.json"));
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn write_attestation(&self, m: &ModelConfig, sig: &Path, version: &str) -> PathBuf {
        let bytes = sign_attestation(
            SLSA,
            &serde_json::json!({"builder": {"id": "ci"}}),
            &m.name,
            &self.root_digest(&m.directory, sig),
            &self.release_authority,
        )
        .unwrap();
        let path = self
            .files
            .dir
            .join(format!("models/demo-{version}.slsa.json"));
        std::fs::write(&path, bytes).unwrap();
        path
    }

    /// A signed copy of the demo model as `version`, with release and attestation.
    fn bundle(&self, version: &str, signer: Option<&Signer>) -> Bundle {
        let mut m = self.config.models[0].clone();
        m.directory = self.files.dir.join(format!("models/demo-v{version}"));
        copy_dir(&self.config.models[0].directory, &m.directory);
        // The copy may hold the demo's own signature; the pushed one travels as model.sig.
        let _ = std::fs::remove_file(m.directory.join("model.sig"));
        let signed = bundle::sign_model(
            &m.directory,
            signer.unwrap_or(&self.model_signer),
            &SignOptions {
                model_name: Some("demo".into()),
                ..SignOptions::default()
            },
        )
        .unwrap();
        let sig = self.files.dir.join(format!("models/demo-v{version}.sig"));
        signed.write_to(&sig).unwrap();
        Bundle {
            release: self.write_release(&m, &sig, version),
            attestation: self.write_attestation(&m, &sig, version),
            model: m.directory,
            sig: Some(sig),
        }
    }

    fn revocations(&self, serial: u64, revoked: &[&str]) -> Vec<u8> {
        sign_revocation_list(
            &RevocationList {
                serial,
                revoked_digests: vec![],
                revoked_versions: revoked
                    .iter()
                    .map(|v| RevokedVersion {
                        name: "demo".into(),
                        version: (*v).into(),
                        reason: format!("withdrawn by test (version {v})"),
                    })
                    .collect(),
            },
            &self.fleet,
        )
        .unwrap()
    }
}

fn tar_of(b: &Bundle) -> Vec<u8> {
    let mut t = tar::Builder::new(Vec::new());
    t.append_dir_all("model", &b.model).unwrap();
    if let Some(sig) = &b.sig {
        t.append_path_with_name(sig, "model.sig").unwrap();
    }
    t.append_path_with_name(&b.release, "release.json").unwrap();
    t.append_path_with_name(&b.attestation, "attestations/slsa.json")
        .unwrap();
    t.into_inner().unwrap()
}

/// A tar holding one entry under a raw name (bypassing the builder's own path checks).
fn tar_with_raw(name: &[u8], kind: tar::EntryType, link: Option<&str>) -> Vec<u8> {
    let mut h = tar::Header::new_old();
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_size(if link.is_some() { 0 } else { 4 });
    if let Some(l) = link {
        h.set_link_name(l).unwrap();
    }
    h.set_cksum();
    let mut t = tar::Builder::new(Vec::new());
    let data: &[u8] = if link.is_some() { b"" } else { b"evil" };
    t.append(&h, data).unwrap();
    t.into_inner().unwrap()
}

struct Running {
    world: World,
    addr: std::net::SocketAddr,
    admin_addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    async fn start(world: World) -> Running {
        let prepared = serve::prepare(&world.config).await.unwrap();
        let addr = prepared.local_addr;
        let admin_addr = prepared.admin_addr.expect("the admin listener is bound");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(prepared.run(async move {
            let _ = rx.await;
        }));
        Running {
            world,
            addr,
            admin_addr,
            stop: Some(tx),
            task: Some(task),
        }
    }

    async fn admin(&self) -> Client {
        let tls = tls_config(
            &self.world.files.ca,
            Some((&self.world.admin_cert, &self.world.admin_key)),
            false,
        );
        Client::connect(self.admin_addr, tls, false).await.unwrap()
    }

    async fn client(&self) -> Client {
        let f = &self.world.files;
        let tls = tls_config(&f.ca, Some((&f.client_cert, &f.client_key)), false);
        Client::connect(self.addr, tls, false).await.unwrap()
    }

    async fn push(&self, version: &str, tar: Vec<u8>) -> Reply {
        let mut c = self.admin().await;
        let req = c.build(
            "PUT",
            &format!("/admin/v1/models/demo/versions/{version}"),
            tar,
            Some("application/x-tar"),
        );
        c.send(req).await.unwrap()
    }

    async fn post(&self, path: &str, body: &str) -> Reply {
        self.admin()
            .await
            .post_json(path, body.to_owned())
            .await
            .unwrap()
    }

    async fn status(&self) -> serde_json::Value {
        let r = self.admin().await.get("/admin/v1/models").await.unwrap();
        assert_eq!(r.status, 200);
        r.json()
    }

    /// One inference on `path`; the version that answered.
    async fn infer(&self, path: &str) -> (u16, String) {
        let mut c = self.client().await;
        let r = c
            .post_json(path, std::fs::read(&self.world.files.request).unwrap())
            .await
            .unwrap();
        let v = if r.status == 200 {
            r.json()["model_version"].as_str().unwrap_or("").to_owned()
        } else {
            String::new()
        };
        (r.status.as_u16(), v)
    }

    fn audit(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.world.files.dir.join("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn state_dir(&self) -> PathBuf {
        self.world.config.state.directory.clone()
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }
}

fn active(status: &serde_json::Value) -> String {
    status["models"][0]["active"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

fn uploads_empty(state: &Path) -> bool {
    match std::fs::read_dir(state.join("uploads")) {
        Ok(mut d) => d.next().is_none(),
        Err(_) => true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn push_under_load_fails_no_request_then_activate_and_rollback_move_the_default() {
    let w = World::new();
    let v2 = w.bundle("2", None);
    let r = Running::start(w).await;
    assert_eq!(r.infer("/v2/models/demo/infer").await, (200, "1".into()));

    // Clients loop inferences on the default route at full speed.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let served_v2 = Arc::new(AtomicU64::new(0));
    let body = std::fs::read(&r.world.files.request).unwrap();
    let mut loops = Vec::new();
    for _ in 0..3 {
        let mut c = r.client().await;
        let (stop, ok, failed, served_v2, body) = (
            stop.clone(),
            ok.clone(),
            failed.clone(),
            served_v2.clone(),
            body.clone(),
        );
        loops.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match c.post_json("/v2/models/demo/infer", body.clone()).await {
                    Ok(reply) if reply.status == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        if reply.json()["model_version"] == "2" {
                            served_v2.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    other => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        eprintln!(
                            "failed: {:?}",
                            other
                                .map(|r| (r.status, String::from_utf8_lossy(&r.body).into_owned()))
                        );
                    }
                }
            }
        }));
    }

    let pushed = r.push("2", tar_of(&v2)).await;
    assert_eq!(
        pushed.status,
        200,
        "{}",
        String::from_utf8_lossy(&pushed.body)
    );
    // Loaded, reachable by version, but not the default until activated.
    assert_eq!(r.infer("/v2/models/demo/versions/2/infer").await.0, 200);
    // The configured value range applies to the pushed version too.
    let mut out_of_range: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&r.world.files.request).unwrap()).unwrap();
    out_of_range["inputs"][0]["data"][0] = serde_json::json!(1e9);
    let refused = r
        .client()
        .await
        .post_json("/v2/models/demo/versions/2/infer", out_of_range.to_string())
        .await
        .unwrap();
    assert_eq!(
        refused.status,
        400,
        "{}",
        String::from_utf8_lossy(&refused.body)
    );
    assert_eq!(active(&r.status().await), "1");
    assert_eq!(served_v2.load(Ordering::Relaxed), 0);
    let before_activate = ok.load(Ordering::Relaxed);

    let a = r
        .post("/admin/v1/models/demo/activate", r#"{"version":"2"}"#)
        .await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.json()["previous"], "1");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while served_v2.load(Ordering::Relaxed) < 20 {
        assert!(std::time::Instant::now() < deadline, "v2 never served");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for l in loops {
        l.await.unwrap();
    }
    eprintln!(
        "inferences: {} ok ({} before activate, {} by v2)",
        ok.load(Ordering::Relaxed),
        before_activate,
        served_v2.load(Ordering::Relaxed)
    );
    assert_eq!(failed.load(Ordering::Relaxed), 0, "requests failed");
    assert!(
        before_activate > 0,
        "the load loop did not run during the push"
    );
    assert_eq!(r.infer("/v2/models/demo/infer").await, (200, "2".into()));
    assert_eq!(active(&r.status().await), "2");

    // Rollback: back to 1; both still loaded.
    let rb = r.post("/admin/v1/models/demo/rollback", "").await;
    assert_eq!(rb.status, 200, "{}", String::from_utf8_lossy(&rb.body));
    assert_eq!(r.infer("/v2/models/demo/infer").await, (200, "1".into()));
    let s = r.status().await;
    assert_eq!(active(&s), "1");
    assert_eq!(s["models"][0]["versions"].as_array().unwrap().len(), 2);
    // Activating a version that is not loaded changes nothing.
    let bad = r
        .post("/admin/v1/models/demo/activate", r#"{"version":"9"}"#)
        .await;
    assert_eq!(bad.status, 404);
    assert_eq!(r.infer("/v2/models/demo/infer").await, (200, "1".into()));

    // Every action is audited with the controller's identity.
    let audit = r.audit();
    for route in [
        "PUT /admin/v1/models/{name}/versions/{version}",
        "POST /admin/v1/models/{name}/activate",
        "POST /admin/v1/models/{name}/rollback",
    ] {
        assert!(
            audit.iter().any(|e| e["kind"] == "admin"
                && e["route"] == route
                && e["identity"] == "spiffe://warden.fleet/controller"
                && e["outcome"] == "ok"),
            "{route} not audited"
        );
    }
    assert!(uploads_empty(&r.state_dir()));
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_pushes_change_nothing_and_foreign_certificates_are_refused() {
    let w = World::new();
    let tampered = w.bundle("2", None);
    std::fs::write(
        tampered.model.join(&w.config.models[0].file),
        b"not the signed model",
    )
    .unwrap();
    let (rogue, _) = key();
    let wrong_signer = w.bundle("3", Some(&rogue));
    let mut unsigned = w.bundle("4", None);
    unsigned.sig = None;
    let r = Running::start(w).await;

    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("2", tar_of(&tampered), 422, "admission_refused"),
        ("3", tar_of(&wrong_signer), 422, "admission_refused"),
        ("4", tar_of(&unsigned), 422, "admission_refused"),
        (
            "5",
            tar_with_raw(b"../escape", tar::EntryType::Regular, None),
            400,
            "archive_invalid",
        ),
        (
            "5",
            tar_with_raw(b"/model/abs", tar::EntryType::Regular, None),
            400,
            "archive_invalid",
        ),
        (
            "5",
            tar_with_raw(b"model/link", tar::EntryType::Symlink, Some("/etc/passwd")),
            400,
            "archive_invalid",
        ),
        (
            "5",
            tar_with_raw(b"model/hard", tar::EntryType::Link, Some("model.sig")),
            400,
            "archive_invalid",
        ),
        (
            "5",
            tar_with_raw(b"model/dev", tar::EntryType::Char, None),
            400,
            "archive_invalid",
        ),
        (
            "5",
            vec![0u8; usize::try_from(MAX_UPLOAD).unwrap() + 1],
            413,
            "too_large",
        ),
    ];
    for (version, tar, status, class) in cases {
        let reply = r.push(version, tar).await;
        let text = String::from_utf8_lossy(&reply.body).into_owned();
        assert_eq!(reply.status.as_u16(), status, "{class}: {text}");
        assert!(
            text.starts_with(&format!("{{\"error\":\"{class}:")),
            "{text}"
        );
        // Nothing changed: v1 alone, default, serving; nothing staged.
        let s = r.status().await;
        assert_eq!(active(&s), "1", "{class}");
        assert_eq!(s["models"][0]["versions"].as_array().unwrap().len(), 1);
        assert_eq!(r.infer("/v2/models/demo/infer").await, (200, "1".into()));
        assert!(uploads_empty(&r.state_dir()), "{class}: upload left behind");
        assert!(
            !r.state_dir().join("models/demo").join(version).exists(),
            "{class}: staged copy left behind"
        );
        assert!(!r.state_dir().join("escape").exists());
    }
    // The refusal is precise in the audit trail.
    assert!(r.audit().iter().any(|e| e["kind"] == "admin"
        && e["outcome"] == "admission_refused"
        && e["reason"].as_str().unwrap_or("").contains("version 2")));

    // A client certificate not from the fleet CA: refused at the handshake (the inference
    // client's certificate too).
    let foreign_ca = DevCa::new("not the fleet").unwrap();
    let foreign = foreign_ca.issue_client(None, "intruder").unwrap();
    let dir = r.world.files.dir.clone();
    std::fs::write(dir.join("pki/foreign.pem"), foreign.cert_pem).unwrap();
    std::fs::write(dir.join("pki/foreign.key"), foreign.key_pem).unwrap();
    let f = &r.world.files;
    for (cert, key) in [
        (dir.join("pki/foreign.pem"), dir.join("pki/foreign.key")),
        (f.client_cert.clone(), f.client_key.clone()),
    ] {
        let tls = tls_config(&f.ca, Some((&cert, &key)), false);
        let refused = match Client::connect(r.admin_addr, tls, false).await {
            Err(_) => true,
            Ok(mut c) => c.get("/admin/v1/models").await.is_err(),
        };
        assert!(refused, "{} was accepted", cert.display());
    }
    let tls = tls_config(&f.ca, None, false);
    let refused = match Client::connect(r.admin_addr, tls, false).await {
        Err(_) => true,
        Ok(mut c) => c.get("/admin/v1/models").await.is_err(),
    };
    assert!(refused, "a client without a certificate was accepted");
    assert!(
        r.audit()
            .iter()
            .any(|e| e["kind"] == "admin" && e["outcome"] == "tls_refused")
    );
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pushed_revocation_list_unloads_what_it_revokes_and_an_older_one_is_refused() {
    let w = World::new();
    let v2 = w.bundle("2", None);
    let (list1, list2) = (w.revocations(1, &[]), w.revocations(2, &["2"]));
    let (rogue, _) = key();
    let forged = sign_revocation_list(
        &RevocationList {
            serial: 9,
            revoked_digests: vec![],
            revoked_versions: vec![],
        },
        &rogue,
    )
    .unwrap();
    let r = Running::start(w).await;
    let pushed = r.push("2", tar_of(&v2)).await;
    assert_eq!(
        pushed.status,
        200,
        "{}",
        String::from_utf8_lossy(&pushed.body)
    );
    assert_eq!(
        r.post("/admin/v1/models/demo/activate", r#"{"version":"2"}"#)
            .await
            .status,
        200
    );

    let put = |body: Vec<u8>| {
        let r = &r;
        async move {
            let mut c = r.admin().await;
            let req = c.build("PUT", "/admin/v1/revocations", body, None);
            c.send(req).await.unwrap()
        }
    };
    let first = put(list1.clone()).await;
    assert_eq!(
        first.status,
        200,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    assert_eq!(first.json()["unloaded"].as_array().unwrap().len(), 0);

    let second = put(list2.clone()).await;
    assert_eq!(
        second.status,
        200,
        "{}",
        String::from_utf8_lossy(&second.body)
    );
    assert_eq!(second.json()["unloaded"][0]["version"], "2");
    assert_eq!(std::fs::read(&r.world.revocations).unwrap(), list2);
    // v2 is gone; the default falls back to v1, which serves.
    assert_ne!(r.infer("/v2/models/demo/versions/2/infer").await.0, 200);
    assert_eq!(r.infer("/v2/models/demo/infer").await, (200, "1".into()));
    let s = r.status().await;
    assert_eq!(s["withdrawn"][0]["version"], "2");
    assert_eq!(s["models"][0]["versions"].as_array().unwrap().len(), 1);

    // An older list is refused and the stored one stays.
    let older = put(list1).await;
    assert_eq!(
        older.status,
        409,
        "{}",
        String::from_utf8_lossy(&older.body)
    );
    assert!(String::from_utf8_lossy(&older.body).contains("revocation_list_replayed"));
    // One not signed by the fleet authority is refused too.
    let bad = put(forged).await;
    assert_eq!(bad.status, 422, "{}", String::from_utf8_lossy(&bad.body));
    assert_eq!(std::fs::read(&r.world.revocations).unwrap(), list2);
    assert_eq!(r.infer("/v2/models/demo/infer").await, (200, "1".into()));
    assert!(r.audit().iter().any(|e| e["kind"] == "admin"
        && e["route"] == "PUT /admin/v1/revocations"
        && e["outcome"] == "revocation_list_replayed"));
    r.stop().await;
}
