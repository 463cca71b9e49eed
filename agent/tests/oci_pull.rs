//! Pulling a bundle from a real OCI registry (Debian's `docker-registry`, started here on
//! loopback with a temp config and storage) through the admin API of a real agent (software key
//! store, admission): a bundle pushed with `oci-client` and pulled by digest is loaded and
//! serves; a tag-only reference, a digest the registry does not hold, a layer or a manifest
//! tampered with in the registry's storage and a bundle from an unknown signer are refused and
//! change nothing; without the explicit opt-in the agent does not speak plain HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::{Path, PathBuf};

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::{Client as OciClient, Reference};
use sha2::{Digest, Sha256};
use warden_agent::config::{
    AdminConfig, AdmissionConfig, Config, InputRange, KeystoreConfig, ModelConfig,
};
use warden_agent::oci::{CONFIG_MEDIA_TYPE, LAYER_MEDIA_TYPE};
use warden_agent::{demo, pki::DevCa, serve};
use warden_attest::bundle::{self, Curve, SignOptions, Signer};
use warden_attest::keystore::software::SoftwareKeyStore;
use warden_attest::keystore::{BackendConfig, KeyStore, Role, SoftwareConfig};
use warden_attest::release::{Release, Stage, sign_attestation, sign_release};

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
    policy_dir: PathBuf,
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
        let (_fleet, fleet_pub) = key();
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
            policy_dir,
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

const REGISTRY: &str = "/usr/bin/docker-registry";

/// A `docker-registry` on 127.0.0.1 with its own config and storage; killed on drop.
struct Registry {
    child: std::process::Child,
    port: u16,
    storage: PathBuf,
    _dir: tempfile::TempDir,
}

impl Registry {
    fn start() -> Registry {
        assert!(
            Path::new(REGISTRY).is_file(),
            "{REGISTRY} is missing: run scripts/setup.sh --test"
        );
        let dir = tempfile::tempdir().unwrap();
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  maintenance:\n    uploadpurging:\n      enabled: false\nhttp:\n  addr: 127.0.0.1:{port}\n",
                storage.display()
            ),
        )
        .unwrap();
        let child = std::process::Command::new(REGISTRY)
            .arg("serve")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap();
        let mut reg = Registry {
            child,
            port,
            storage,
            _dir: dir,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            assert!(
                reg.child.try_wait().unwrap().is_none(),
                "docker-registry exited at start"
            );
            assert!(
                std::time::Instant::now() < deadline,
                "docker-registry did not listen"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        reg
    }

    fn client() -> OciClient {
        let _ = rustls::crypto::ring::default_provider().install_default();
        OciClient::new(ClientConfig {
            protocol: ClientProtocol::Http,
            ..ClientConfig::default()
        })
    }

    fn blob_data(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.storage
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Pushes `tar` as a bundle artifact under `repo:tag`; the manifest's and layer's digests.
    async fn push(&self, repo: &str, tag: &str, tar: Vec<u8>) -> (String, String) {
        let client = Registry::client();
        let reference: Reference = format!("127.0.0.1:{}/{repo}:{tag}", self.port)
            .parse()
            .unwrap();
        let sha = |b: &[u8]| format!("sha256:{}", hex::encode(Sha256::digest(b)));
        let config = b"{}".to_vec();
        let config_digest = sha(&config);
        let layer_digest = sha(&tar);
        let layer_size = tar.len();
        client
            .push_blob(&reference, config, &config_digest)
            .await
            .unwrap();
        client
            .push_blob(&reference, tar, &layer_digest)
            .await
            .unwrap();
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": config_digest, "size": 2},
            "layers": [{"mediaType": LAYER_MEDIA_TYPE, "digest": layer_digest, "size": layer_size}],
        }))
        .unwrap();
        let manifest_digest = sha(&manifest);
        client
            .push_manifest_raw(
                &reference,
                manifest,
                http::HeaderValue::from_static("application/vnd.oci.image.manifest.v1+json"),
            )
            .await
            .unwrap();
        (manifest_digest, layer_digest)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    async fn pull(&self, version: &str, reference: &str) -> Reply {
        self.post(
            &format!("/admin/v1/models/demo/versions/{version}/pull"),
            &serde_json::json!({"reference": reference, "insecure_http": true}).to_string(),
        )
        .await
    }
}

fn uploads_empty(state: &Path) -> bool {
    match std::fs::read_dir(state.join("uploads")) {
        Ok(mut d) => d.next().is_none(),
        Err(_) => true,
    }
}

fn class(reply: &Reply) -> String {
    reply.json()["error"]
        .as_str()
        .unwrap_or("")
        .split(':')
        .next()
        .unwrap_or("")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bundle_pulled_by_digest_serves_and_bad_pulls_change_nothing() {
    let registry = Registry::start();
    let w = World::new();
    let good = w.bundle("2", None);
    let tampered = w.bundle("3", None);
    let (rogue, _) = key();
    let wrong_signer = w.bundle("4", Some(&rogue));
    let manifest_tampered = w.bundle("5", None);
    let (good_digest, _) = registry.push("warden/demo", "v2", tar_of(&good)).await;
    let (tampered_digest, tampered_layer) =
        registry.push("warden/demo", "v3", tar_of(&tampered)).await;
    let (wrong_digest, _) = registry
        .push("warden/demo", "v4", tar_of(&wrong_signer))
        .await;
    // Flip one byte of the v3 layer in the registry's storage: same length, other content.
    let data = registry.blob_data(&tampered_layer);
    let mut bytes = std::fs::read(&data).unwrap();
    bytes[600] ^= 0x20;
    std::fs::write(&data, bytes).unwrap();

    // And one byte of the v5 manifest (inside its config media type, so it still parses).
    let (manifest_digest, _) = registry
        .push("warden/demo", "v5", tar_of(&manifest_tampered))
        .await;
    let data = registry.blob_data(&manifest_digest);
    let text = std::fs::read_to_string(&data)
        .unwrap()
        .replace("vnd.warden.bundle.config", "vnd.warden.bundle.cOnfig");
    std::fs::write(&data, text).unwrap();

    let r = Running::start(w).await;
    let base = format!("127.0.0.1:{}/warden/demo", registry.port);
    let other = format!("sha256:{}", "ab".repeat(32));
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("2", format!("{base}:v2"), 400, "reference_refused"),
        ("2", base.clone(), 400, "reference_refused"),
        ("2", format!("{base}@{other}"), 502, "registry_failed"),
        (
            "3",
            format!("{base}@{tampered_digest}"),
            422,
            "digest_mismatch",
        ),
        (
            "4",
            format!("{base}@{wrong_digest}"),
            422,
            "admission_refused",
        ),
    ];
    for (version, reference, status, want) in &cases {
        let reply = r.pull(version, reference).await;
        assert_eq!(
            (reply.status.as_u16(), class(&reply).as_str()),
            (*status, *want),
            "{reference}: {} ({:?})",
            String::from_utf8_lossy(&reply.body),
            r.audit().last().map(|e| e["reason"].clone())
        );
        assert_ne!(
            r.infer(&format!("/v2/models/demo/versions/{version}/infer"))
                .await
                .0,
            200,
            "{reference}: a refused pull loaded a version"
        );
        assert_eq!(active(&r.status().await), "1");
        assert_eq!(r.infer("/v2/models/demo/infer").await, (200, "1".into()));
        assert!(
            uploads_empty(&r.state_dir()),
            "{reference}: upload left behind"
        );
    }
    // The registry's content for the tampered digest is refused before anything is unpacked.
    let audit = r.audit();
    assert!(audit.iter().any(|e| e["outcome"] == "digest_mismatch"
        && e["route"] == "POST /admin/v1/models/{name}/versions/{version}/pull"));

    // Without the opt-in the agent speaks HTTPS, which a plain-HTTP registry does not answer.
    let reply = r
        .post(
            "/admin/v1/models/demo/versions/2/pull",
            &serde_json::json!({"reference": format!("{base}@{good_digest}")}).to_string(),
        )
        .await;
    assert_eq!(
        reply.status,
        502,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );

    let reply = r.pull("2", &format!("{base}@{good_digest}")).await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(reply.json()["version"], "2");
    assert_eq!(
        r.infer("/v2/models/demo/versions/2/infer").await,
        (200, "2".into())
    );
    // Loaded, not the default until activated (as with a push).
    assert_eq!(active(&r.status().await), "1");
    let reply = r
        .post("/admin/v1/models/demo/activate", r#"{"version":"2"}"#)
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(r.infer("/v2/models/demo/infer").await, (200, "2".into()));
    // The same version again is refused.
    let reply = r.pull("2", &format!("{base}@{good_digest}")).await;
    assert_eq!(reply.status, 409);
    assert!(uploads_empty(&r.state_dir()));
    r.stop().await;
}
