//! A key-store-mode agent (software key store, admission, real workers) with a fleet-push
//! admin listener, and an mTLS admin client holding a certificate from the fleet CA: the world
//! the admin and OCI-pull tests run in.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use warden_agent::config::{
    AdminConfig, AdmissionConfig, Config, InputRange, KeystoreConfig, ModelConfig, PolicyConfig,
};
use warden_agent::demo::pki::DevCa;
use warden_agent::{demo, serve};
use warden_attest::bundle::{self, Curve, SignOptions, Signer};
use warden_attest::release::{Release, Stage, sign_attestation, sign_release};
use warden_attest::revocation::{RevocationList, RevokedVersion, sign_revocation_list};
use warden_keystore::config::SoftwareConfig;
use warden_keystore::software::SoftwareKeyStore;
use warden_keystore::{KeyStore, Role};

use crate::support::{Client, Reply, tls_config};

pub const SLSA: &str = "https://slsa.dev/provenance/v1";
pub const MAX_UPLOAD: u64 = 16 * 1024 * 1024;

pub fn key() -> (Signer, String) {
    let (private_pem, public_pem) = bundle::generate_private_key_pem(Curve::P256).unwrap();
    (
        Signer::from_private_key_pem(&private_pem).unwrap(),
        public_pem,
    )
}

/// The root digest of the model in `dir` signed by `sig`, verified with the demo's model
/// signer (`files`); a zero digest when it does not verify (a release for it then fails).
pub fn root_digest(files: &demo::DemoFiles, dir: &Path, sig: &Path) -> String {
    let sig = std::fs::read(sig).unwrap();
    let anchors = bundle::Verifier::from_public_key_pem(
        &std::fs::read_to_string(files.dir.join("trust/model-signer.pub")).unwrap(),
    )
    .unwrap();
    bundle::verify_model_bytes(dir, &sig, None, &anchors, &Default::default())
        .map(|v| v.root_digest)
        .unwrap_or_else(|_| format!("sha256:{}", "00".repeat(32)))
}

/// A release statement requiring the SLSA attestation, signed by `authority`.
pub fn signed_release(
    name: &str,
    version: &str,
    stage: Stage,
    policy_set_digest: String,
    root_digest: &str,
    authority: &Signer,
) -> Vec<u8> {
    sign_release(
        &Release {
            name: name.to_owned(),
            version: version.to_owned(),
            stage,
            policy_set_digest,
            required_attestations: vec![SLSA.to_owned()],
        },
        root_digest,
        authority,
    )
    .unwrap()
}

/// The SLSA attestation the releases require, signed by `signer`.
pub fn signed_slsa(name: &str, root_digest: &str, signer: &Signer) -> Vec<u8> {
    sign_attestation(
        SLSA,
        &serde_json::json!({"builder": {"id": "ci"}}),
        name,
        root_digest,
        signer,
    )
    .unwrap()
}

/// A revocation list withdrawing versions of model `demo`, signed by `fleet`.
pub fn signed_revocations(serial: u64, revoked: &[&str], fleet: &Signer) -> Vec<u8> {
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
        fleet,
    )
    .unwrap()
}

pub fn copy_dir(from: &Path, to: &Path) {
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

/// The role anchors every key-store test world installs: the demo's model signer, a release
/// authority and a fleet authority (PEM public keys).
pub fn install_role_anchors(store: &dyn KeyStore, signer: &[u8], release: &str, fleet: &str) {
    store.install_anchors(Role::ModelSigners, signer).unwrap();
    store
        .install_anchors(Role::ReleaseAuthority, release.as_bytes())
        .unwrap();
    store
        .install_anchors(Role::FleetAuthority, fleet.as_bytes())
        .unwrap();
}

/// Admission for stage Approved, with `revocations` as the list.
pub fn admission(revocations: &Path, refresh_interval_s: u64) -> AdmissionConfig {
    AdmissionConfig {
        allowed_stages: vec![Stage::Approved],
        revocation_list: Some(revocations.to_path_buf()),
        refresh_interval_s,
        ..AdmissionConfig::default()
    }
}

/// One pushable version: the files a tar is built from.
pub struct Bundle {
    pub model: PathBuf,
    pub sig: Option<PathBuf>,
    pub release: PathBuf,
    pub attestation: PathBuf,
}

pub struct World {
    pub _dir: tempfile::TempDir,
    pub files: demo::DemoFiles,
    pub config: Config,
    pub model_signer: Signer,
    pub release_authority: Signer,
    pub fleet: Signer,
    pub policy_dir: PathBuf,
    pub revocations: PathBuf,
    /// Admin client certificate and key (fleet CA).
    pub admin_cert: PathBuf,
    pub admin_key: PathBuf,
    /// The policy-set digest releases pin; `None`: the configured policy directory's.
    pub pinned_policy_digest: std::sync::Mutex<Option<String>>,
}

impl World {
    pub fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let (files, mut config) = crate::support::serving::demo_world(dir.path());
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
        // The demo's policy set (the route policy and its grants) with the startup policy.
        let policy_dir = files.dir.join("policies");
        copy_dir(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies"),
            &policy_dir,
        );
        config.policy = Some(PolicyConfig {
            directory: policy_dir.clone(),
        });
        let ks_dir = files.dir.join("keystore");
        config.keystore = Some(KeystoreConfig::Development(SoftwareConfig {
            dir: ks_dir.clone(),
        }));
        let store = SoftwareKeyStore::open(&ks_dir).unwrap();
        install_role_anchors(&store, &signer_pub, &release_pub, &fleet_pub);
        drop(store);
        config.trust = Default::default();
        let revocations = files.dir.join("revocations.json");
        config.admission = Some(admission(&revocations, 3600));

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
            client_crls: Vec::new(),
            max_upload_bytes: MAX_UPLOAD,
            max_entries: 64,
            accept_new_models: false,
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
            pinned_policy_digest: std::sync::Mutex::new(None),
        };
        let v1 = w.config.models[0].clone();
        let release = w.write_release(&v1, &v1.signature_path(), "1");
        let att = w.write_attestation(&v1, &v1.signature_path(), "1");
        w.config.models[0].release = Some(release);
        w.config.models[0].attestations = vec![att];
        w
    }

    /// Replaces the grants of the policy set (its `data.json`) before the agent starts, and
    /// signs version 1's release again for the set's new digest.
    pub fn set_grants(&mut self, data: &str) {
        std::fs::write(self.policy_dir.join("data.json"), data).unwrap();
        let v1 = self.config.models[0].clone();
        let release = self.write_release(&v1, &v1.signature_path(), "1");
        self.config.models[0].release = Some(release);
    }

    pub fn root_digest(&self, dir: &Path, sig: &Path) -> String {
        root_digest(&self.files, dir, sig)
    }

    pub fn write_release(&self, m: &ModelConfig, sig: &Path, version: &str) -> PathBuf {
        let policy = self
            .pinned_policy_digest
            .lock()
            .unwrap()
            .clone()
            .unwrap_or_else(|| {
                warden_attest::policyset::files::policy_set_digest(&self.policy_dir).unwrap()
            });
        let bytes = signed_release(
            &m.name,
            version,
            Stage::Approved,
            policy,
            &self.root_digest(&m.directory, sig),
            &self.release_authority,
        );
        let path = self
            .files
            .dir
            .join(format!("models/{}-{version}.release.json", m.name));
        std::fs::write(&path, bytes).unwrap();
        path
    }

    pub fn write_attestation(&self, m: &ModelConfig, sig: &Path, version: &str) -> PathBuf {
        let bytes = signed_slsa(
            &m.name,
            &self.root_digest(&m.directory, sig),
            &self.release_authority,
        );
        let path = self
            .files
            .dir
            .join(format!("models/{}-{version}.slsa.json", m.name));
        std::fs::write(&path, bytes).unwrap();
        path
    }

    /// A signed copy of the demo model as `version`, with release and attestation.
    pub fn bundle(&self, version: &str, signer: Option<&Signer>) -> Bundle {
        self.bundle_of("demo", version, signer)
    }

    /// A signed copy of the demo model as `version` of model `name`, with release and
    /// attestation for that name.
    pub fn bundle_of(&self, name: &str, version: &str, signer: Option<&Signer>) -> Bundle {
        let mut m = self.config.models[0].clone();
        m.name = name.to_owned();
        m.directory = self.files.dir.join(format!("models/{name}-v{version}"));
        copy_dir(&self.config.models[0].directory, &m.directory);
        // The copy may hold the demo's own signature; the pushed one travels as model.sig.
        let _ = std::fs::remove_file(m.directory.join("model.sig"));
        let signed = bundle::sign_model(
            &m.directory,
            signer.unwrap_or(&self.model_signer),
            &SignOptions {
                model_name: Some(name.into()),
                ..SignOptions::default()
            },
        )
        .unwrap();
        let sig = self.files.dir.join(format!("models/{name}-v{version}.sig"));
        signed.write_to(&sig).unwrap();
        Bundle {
            release: self.write_release(&m, &sig, version),
            attestation: self.write_attestation(&m, &sig, version),
            model: m.directory,
            sig: Some(sig),
        }
    }

    pub fn revocations(&self, serial: u64, revoked: &[&str]) -> Vec<u8> {
        signed_revocations(serial, revoked, &self.fleet)
    }
}

pub fn tar_of(b: &Bundle) -> Vec<u8> {
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

/// A policy-set push: the `.rego` files of `dir` under `policies/`, `extra` files beside them
/// (`policies/<name>`), and the signed statement as `statement.json`.
pub fn policy_tar_with(dir: &Path, statement: &[u8], extra: &[(&str, &[u8])]) -> Vec<u8> {
    fn rego_files(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        for e in std::fs::read_dir(dir).unwrap().filter_map(Result::ok) {
            let path = e.path();
            if path.is_dir() {
                rego_files(root, &path, out);
            } else if path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(warden_attest::policyset::files::is_policy_set_file)
            {
                let rel = path.strip_prefix(root).unwrap().display().to_string();
                out.push((rel, std::fs::read(&path).unwrap()));
            }
        }
    }
    let mut files = Vec::new();
    rego_files(dir, dir, &mut files);
    files.extend(extra.iter().map(|(n, b)| (n.to_string(), b.to_vec())));
    files.push(("../statement.json".into(), statement.to_vec()));
    let mut t = tar::Builder::new(Vec::new());
    for (rel, bytes) in files {
        let name = match rel.strip_prefix("../") {
            Some(top) => top.to_owned(),
            None => format!("policies/{rel}"),
        };
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        t.append_data(&mut header, name, bytes.as_slice()).unwrap();
    }
    t.into_inner().unwrap()
}

/// [`policy_tar_with`] and nothing extra.
pub fn policy_tar(dir: &Path, statement: &[u8]) -> Vec<u8> {
    policy_tar_with(dir, statement, &[])
}

pub struct Running {
    pub world: World,
    pub addr: std::net::SocketAddr,
    pub admin_addr: std::net::SocketAddr,
    pub stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub task: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    pub async fn start(world: World) -> Running {
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

    pub async fn admin(&self) -> Client {
        let tls = tls_config(
            &self.world.files.ca,
            Some((&self.world.admin_cert, &self.world.admin_key)),
            false,
        );
        Client::connect(self.admin_addr, tls, false).await.unwrap()
    }

    pub async fn client(&self) -> Client {
        let f = &self.world.files;
        let tls = tls_config(&f.ca, Some((&f.client_cert, &f.client_key)), false);
        Client::connect(self.addr, tls, false).await.unwrap()
    }

    pub async fn push(&self, version: &str, tar: Vec<u8>) -> Reply {
        self.push_to("demo", version, tar).await
    }

    pub async fn put_policies(&self, tar: Vec<u8>) -> Reply {
        let mut c = self.admin().await;
        let req = c.build("PUT", "/admin/v1/policies", tar, Some("application/x-tar"));
        c.send(req).await.unwrap()
    }

    /// Stops the agent and hands back its world (to change it before starting again).
    pub async fn into_world(mut self) -> World {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
        self.world
    }

    pub async fn push_to(&self, name: &str, version: &str, tar: Vec<u8>) -> Reply {
        let mut c = self.admin().await;
        let req = c.build(
            "PUT",
            &format!("/admin/v1/models/{name}/versions/{version}"),
            tar,
            Some("application/x-tar"),
        );
        c.send(req).await.unwrap()
    }

    pub async fn post(&self, path: &str, body: &str) -> Reply {
        self.admin()
            .await
            .post_json(path, body.to_owned())
            .await
            .unwrap()
    }

    pub async fn status(&self) -> serde_json::Value {
        let r = self.admin().await.get("/admin/v1/models").await.unwrap();
        assert_eq!(r.status, 200);
        r.json()
    }

    /// One inference on `path`; the version that answered.
    pub async fn infer(&self, path: &str) -> (u16, String) {
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

    pub fn audit(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.world.files.dir.join("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    pub fn state_dir(&self) -> PathBuf {
        self.world.config.state.directory.clone()
    }

    /// Stops the agent (draining, workers stopped) and starts it again on the same config and
    /// state directory, as a reboot would.
    pub async fn restart(self) -> Running {
        let Running {
            world, stop, task, ..
        } = self;
        if let Some(tx) = stop {
            let _ = tx.send(());
        }
        if let Some(task) = task {
            task.await.unwrap();
        }
        Running::start(world).await
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }
}

pub fn active(status: &serde_json::Value) -> String {
    status["models"][0]["active"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

pub fn uploads_empty(state: &Path) -> bool {
    match std::fs::read_dir(state.join("uploads")) {
        Ok(mut d) => d.next().is_none(),
        Err(_) => true,
    }
}
