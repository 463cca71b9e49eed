//! Pulling a bundle from a real OCI registry (Debian's `docker-registry`, started here on
//! loopback with a temp config and storage) through the admin API of a real agent (software key
//! store, admission): a bundle pushed with `oci-client` and pulled by digest is loaded and
//! serves; a tag-only reference, a digest the registry does not hold, a layer or a manifest
//! tampered with in the registry's storage and a bundle from an unknown signer are refused and
//! change nothing; without the explicit opt-in the agent does not speak plain HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod fleet;
mod support;

use std::path::{Path, PathBuf};

use fleet::*;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::{Client as OciClient, Reference};
use sha2::{Digest, Sha256};
use warden_agent::admin::oci::{CONFIG_MEDIA_TYPE, LAYER_MEDIA_TYPE};

use support::Reply;

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
