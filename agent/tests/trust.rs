//! The operator's trust commands against a fresh swtpm (`warden provision`, `status`,
//! `attest quote|verify`), and the HTTPS listener's TLS signed by the key store: a real
//! handshake whose server signature comes from the TPM, with no private key file anywhere.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../attest/keyd/tests/devices/mod.rs"]
mod support_devices;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use support_devices::{Swtpm, current_uid};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use warden_agent::listener::keystore_tls::{KeyStoreTlsConfig, TlsKeyStoreError, server_config};
use warden_attest::boot::measure::{AppEventLog, ModelLoadEvent};
use warden_keyd::config::{KeydConfig, Principal};
use warden_keyd::server as keyd;
use warden_keyd::tpm::keystore::TpmKeyStore;
use warden_keystore::KeyStore;
use warden_keystore::config::TpmConfig;
use warden_keystore::config::{BackendConfig, SoftwareConfig};
use warden_keystore::keyd::{KeydClient, Operation};
use warden_keystore::software::SoftwareKeyStore;

fn warden(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(args)
        .output()
        .unwrap()
}

/// The key service's own binary, beside `warden` (the workspace builds every binary).
fn warden_keyd(args: &[&str]) -> Output {
    let bin = Path::new(env!("CARGO_BIN_EXE_warden")).with_file_name("warden-keyd");
    assert!(
        bin.is_file(),
        "{} is not built: cargo build --workspace --bins",
        bin.display()
    );
    Command::new(bin).args(args).output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn policies() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

struct Pki {
    ca_pem: String,
    ca: rcgen::Issuer<'static, rcgen::KeyPair>,
    client_chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    client_key: rustls::pki_types::PrivateKeyDer<'static>,
}

fn pki() -> Pki {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test device CA");
    let key = rcgen::KeyPair::generate().unwrap();
    let ca_cert = params.self_signed(&key).unwrap();
    let ca = rcgen::Issuer::new(params, key);
    let ckey = rcgen::KeyPair::generate().unwrap();
    let mut cparams = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    cparams.subject_alt_names = vec![rcgen::SanType::URI(
        "spiffe://test/tenant/demo/app/a".try_into().unwrap(),
    )];
    cparams.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let client = cparams.signed_by(&ckey, &ca).unwrap();
    Pki {
        ca_pem: ca_cert.pem(),
        ca,
        client_chain: vec![client.der().clone()],
        client_key: rustls::pki_types::PrivateKeyDer::Pkcs8(ckey.serialize_der().into()),
    }
}

fn keyd_toml(dir: &Path, backend: &str) -> PathBuf {
    let path = dir.join("keyd.toml");
    std::fs::write(
        &path,
        format!(
            "schema_version = 1\nsocket = \"{}\"\n\n[keystore]\n{backend}\n\n[[principal]]\nname = \"agent\"\nuid = {}\noperations = [\"describe\", \"device_public_key\", \"sign\", \"anchors\", \"counter\"]\n",
            dir.join("keyd.sock").display(),
            current_uid()
        ),
    )
    .unwrap();
    path
}

/// A TLS handshake plus one echo through `config`; the client trusts `ca_pem`.
async fn handshake(
    config: Arc<rustls::ServerConfig>,
    pki: &Pki,
    with_client_cert: bool,
    version: &'static rustls::SupportedProtocolVersion,
) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        tls.write_all(&buf).await.map_err(|e| e.to_string())?;
        tls.shutdown().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(())
    });
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(pki.ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[version])
    .unwrap()
    .with_root_certificates(roots);
    let client = if with_client_cert {
        builder
            .with_client_auth_cert(pki.client_chain.clone(), pki.client_key.clone_key())
            .unwrap()
    } else {
        builder.with_no_client_auth()
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let result = async {
        let mut tls = connector
            .connect("warden-device".try_into().unwrap(), tcp)
            .await
            .map_err(|e| e.to_string())?;
        assert_eq!(tls.get_ref().1.protocol_version(), Some(version.version));
        tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        assert_eq!(&buf, b"ping");
        Ok::<_, String>(())
    }
    .await;
    let server = server.await.unwrap();
    result.and(server)
}

use rustls::pki_types::pem::PemObject as _;

fn no_private_key_files(dir: &Path) {
    for entry in walk(dir) {
        let data = std::fs::read(&entry).unwrap_or_default();
        let text = String::from_utf8_lossy(&data);
        assert!(
            !text.contains("PRIVATE KEY"),
            "{} holds a private key",
            entry.display()
        );
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn provision_on_swtpm_then_tls_is_signed_by_the_tpm() {
    let tpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    let pki = pki();
    let config = keyd_toml(
        dir.path(),
        &format!("backend = \"tpm\"\ntcti = \"{}\"", tpm.tcti),
    );
    let (_, signer_pub) =
        warden_attest::bundle::generate_private_key_pem(warden_attest::bundle::Curve::P256)
            .unwrap();
    let signers = dir.path().join("signers.pem");
    std::fs::write(&signers, &signer_pub).unwrap();
    let tenants = dir.path().join("tenants.pem");
    std::fs::write(&tenants, &pki.ca_pem).unwrap();
    let csr = dir.path().join("device.csr");
    let ak = dir.path().join("ak.pem");
    let cfg = config.to_str().unwrap();
    let out = warden(&[
        "provision",
        "--keyd-config",
        cfg,
        "--anchor",
        &format!("model-signers={}", signers.display()),
        "--anchor",
        &format!("tenant-cas={}", tenants.display()),
        "--csr",
        csr.to_str().unwrap(),
        "--device-name",
        "warden-device",
        "--ak",
        ak.to_str().unwrap(),
    ]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("tpm key store"), "{t}");
    assert!(!t.contains("DEVELOPMENT"), "{t}");
    assert!(
        t.contains("anchors model-signers: installed and locked"),
        "{t}"
    );
    assert!(t.contains("BEGIN PUBLIC KEY"), "{t}");

    // Again with the same anchors: accepted; with other anchors: refused (locked).
    let same = warden(&[
        "provision",
        "--keyd-config",
        cfg,
        "--anchor",
        &format!("model-signers={}", signers.display()),
    ]);
    assert!(same.status.success(), "{}", text(&same));
    assert!(text(&same).contains("already installed"));
    let (_, other_pub) =
        warden_attest::bundle::generate_private_key_pem(warden_attest::bundle::Curve::P256)
            .unwrap();
    let other = dir.path().join("other.pem");
    std::fs::write(&other, other_pub).unwrap();
    let swap = warden(&[
        "provision",
        "--keyd-config",
        cfg,
        "--anchor",
        &format!("model-signers={}", other.display()),
    ]);
    assert!(!swap.status.success());
    assert!(text(&swap).contains("locked"), "{}", text(&swap));
    // Anchors that do not parse are never locked in.
    std::fs::write(&other, "not a key").unwrap();
    let junk = warden(&[
        "provision",
        "--keyd-config",
        cfg,
        "--anchor",
        &format!("release-authority={}", other.display()),
    ]);
    assert!(!junk.status.success());

    // Status with keyd stopped: backend, anchors per role; absent roles are problems.
    let status = warden_keyd(&["status", "--config", cfg]);
    let t = text(&status);
    assert!(!status.status.success(), "absent anchors are problems: {t}");
    assert!(t.contains("anchors model-signers: present"), "{t}");
    assert!(t.contains("anchors tenant-cas: present"), "{t}");
    assert!(t.contains("anchors release-authority: ABSENT"), "{t}");
    assert!(t.contains("device key: present"), "{t}");
    // `warden` links no TPM code: its status reaches a key store only through keyd.
    let direct = warden(&["status", "--keyd-config", cfg]);
    assert!(!direct.status.success());
    assert!(text(&direct).contains("--keyd-config"), "{}", text(&direct));

    // The CSR is signed by the TPM's device key (rcgen checks its signature on parse).
    let csr_pem = std::fs::read_to_string(&csr).unwrap();
    let csr = rcgen::CertificateSigningRequestParams::from_pem(&csr_pem).unwrap();
    let server_cert = csr.signed_by(&pki.ca).unwrap();
    let chain = dir.path().join("device.pem");
    std::fs::write(&chain, server_cert.pem()).unwrap();
    let ca = dir.path().join("client-ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();

    // The listener's TLS through the TPM, no key file.
    let store: Arc<dyn KeyStore> = Arc::new(
        TpmKeyStore::open(&TpmConfig {
            tcti: tpm.tcti.clone(),
            seal_pcrs: vec![0, 2, 4, 7],
        })
        .unwrap(),
    );
    let tls = server_config(
        &KeyStoreTlsConfig {
            certificate: &chain,
            client_ca: Some(&ca),
            client_crls: &[],
            insecure_allow_anonymous_clients: false,
        },
        Arc::clone(&store),
    )
    .unwrap()
    .config;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        handshake(Arc::clone(&tls), &pki, true, &rustls::version::TLS13)
            .await
            .unwrap();
        handshake(Arc::clone(&tls), &pki, true, &rustls::version::TLS12)
            .await
            .unwrap();
        // Without a client certificate: refused.
        assert!(
            handshake(Arc::clone(&tls), &pki, false, &rustls::version::TLS13)
                .await
                .is_err()
        );
    });
    no_private_key_files(dir.path());

    // A certificate for another key is refused at start.
    let other_key = rcgen::KeyPair::generate().unwrap();
    let other_cert = rcgen::CertificateParams::new(vec!["warden-device".to_owned()])
        .unwrap()
        .signed_by(&other_key, &pki.ca)
        .unwrap();
    let wrong = dir.path().join("wrong.pem");
    std::fs::write(&wrong, other_cert.pem()).unwrap();
    let e = server_config(
        &KeyStoreTlsConfig {
            certificate: &wrong,
            client_ca: Some(&ca),
            client_crls: &[],
            insecure_allow_anonymous_clients: false,
        },
        store,
    )
    .unwrap_err();
    assert!(matches!(e, TlsKeyStoreError::KeyMismatch { .. }), "{e}");
}

#[test]
fn tls_signed_through_keyd() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki();
    let store: Arc<dyn KeyStore> =
        Arc::new(SoftwareKeyStore::open(&dir.path().join("store")).unwrap());
    store.ensure_device_key().unwrap();
    let csr_pem = warden_keyd::cli::device_csr(store.as_ref(), "warden-device").unwrap();
    let cert = rcgen::CertificateSigningRequestParams::from_pem(&csr_pem)
        .unwrap()
        .signed_by(&pki.ca)
        .unwrap();
    let chain = dir.path().join("device.pem");
    std::fs::write(&chain, cert.pem()).unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();

    let socket = dir.path().join("keyd.sock");
    let config = KeydConfig {
        schema_version: 1,
        socket: socket.clone(),
        socket_group: None,
        keystore: BackendConfig::Software(SoftwareConfig {
            dir: dir.path().join("store"),
        }),
        principals: vec![Principal {
            name: "agent".into(),
            uid: current_uid(),
            user: None,
            operations: vec![
                Operation::Describe,
                Operation::DevicePublicKey,
                Operation::Sign,
            ],
        }],
    };
    // keyd on the same runtime as the TLS listener (as a demo running it in-process would):
    // the listener's blocking signature must not hold up keyd's connection task. Two workers,
    // so that a worker blocked in a signature leaves one to run keyd.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let keyd_rt = &rt;
    let listener = {
        let _g = keyd_rt.enter();
        keyd::bind(&socket).unwrap()
    };
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    keyd_rt.spawn(keyd::serve(listener, Arc::new(config), store, async {
        let _ = rx.await;
    }));
    let remote: Arc<dyn KeyStore> = Arc::new(KeydClient::connect(&socket).unwrap());
    let tls = server_config(
        &KeyStoreTlsConfig {
            certificate: &chain,
            client_ca: Some(&ca),
            client_crls: &[],
            insecure_allow_anonymous_clients: false,
        },
        remote,
    )
    .unwrap()
    .config;
    rt.block_on(async {
        tokio::time::timeout(
            std::time::Duration::from_secs(15),
            handshake(Arc::clone(&tls), &pki, true, &rustls::version::TLS13),
        )
        .await
        .expect("the handshake stalled: a blocking signature starved keyd's connection task")
        .unwrap();
    });
    let _ = tx.send(());
}

#[test]
fn status_of_a_software_store_is_loudly_development_only() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = keyd_toml(
        dir.path(),
        &format!(
            "backend = \"software-development-only\"\ndir = \"{}\"",
            dir.path().join("store").display()
        ),
    );
    let cfg = cfg.to_str().unwrap();
    let out = warden(&["provision", "--keyd-config", cfg]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("DEVELOPMENT-ONLY"), "{}", text(&out));
    let out = warden_keyd(&["status", "--config", cfg]);
    let t = text(&out);
    assert!(!out.status.success());
    assert!(t.contains("DEVELOPMENT ONLY"), "{t}");
    assert!(t.contains("hint:"), "{t}");
    // --ak is for the TPM only.
    let out = warden(&["provision", "--keyd-config", cfg, "--ak", "/dev/null"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("tpm backend"), "{}", text(&out));
}

#[test]
fn quote_and_verify_on_swtpm_with_the_application_log() {
    let dir = tempfile::tempdir().unwrap();
    let tpm = provisioned_tpm(dir.path());
    let ak = dir.path().join("provisioned-ak.pem");

    // A model load measured into the application PCR.
    let log = dir.path().join("app-events.log");
    {
        let t = warden_keyd::tpm::Tpm::open(&tpm.tcti).unwrap();
        // As the agent measures a load: the log line first, then the PCR.
        let event = ModelLoadEvent {
            model: "fraud".into(),
            version: "3".into(),
            root_digest: format!("sha256:{}", "11".repeat(32)),
            policy_digest: warden_attest::policyset::files::policy_set_digest(&policies()).unwrap(),
        };
        AppEventLog::new(&log).append(&event).unwrap();
        t.extend_pcr(23, event.digest()).unwrap();
    }

    let nonce = "00112233445566778899aabbccddeeff";
    let quote = dir.path().join("quote.json");
    write_quote(&tpm.tcti, nonce, "0,7,23", quote.to_str().unwrap());
    let q: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&quote).unwrap()).unwrap();
    let golden = dir.path().join("golden.json");
    std::fs::write(
        &golden,
        serde_json::json!({"0": q["pcrs"]["0"], "7": q["pcrs"]["7"]}).to_string(),
    )
    .unwrap();
    let verify = |nonce: &str, golden: &Path, log: Option<&Path>| {
        let mut args = vec![
            "attest".to_owned(),
            "verify".into(),
            "--quote".into(),
            quote.display().to_string(),
            "--ak".into(),
            ak.display().to_string(),
            "--nonce".into(),
            nonce.into(),
            "--golden".into(),
            golden.display().to_string(),
        ];
        if let Some(l) = log {
            args.push("--app-log".into());
            args.push(l.display().to_string());
        }
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        warden(&a)
    };
    let ok = verify(nonce, &golden, Some(&log));
    assert!(ok.status.success(), "{}", text(&ok));
    assert!(
        text(&ok).contains("1 model load(s) replay to PCR 23"),
        "{}",
        text(&ok)
    );

    // Another nonce (a replayed quote): refused.
    let replay = verify("ffff", &golden, None);
    assert!(!replay.status.success());
    assert!(text(&replay).contains("nonce"), "{}", text(&replay));
    // A golden value that differs: refused, naming the PCR.
    let bad_golden = dir.path().join("bad.json");
    std::fs::write(
        &bad_golden,
        serde_json::json!({"7": "ab".repeat(32)}).to_string(),
    )
    .unwrap();
    let bad = verify(nonce, &bad_golden, None);
    assert!(!bad.status.success());
    assert!(text(&bad).contains("PCR 7"), "{}", text(&bad));
    // A log that claims another model: refused.
    let forged = std::fs::read_to_string(&log)
        .unwrap()
        .replace("fraud", "other");
    let forged_log = dir.path().join("forged.log");
    std::fs::write(&forged_log, forged).unwrap();
    let f = verify(nonce, &golden, Some(&forged_log));
    assert!(!f.status.success());
    assert!(text(&f).contains("PCR 23"), "{}", text(&f));
}

/// The PKCS#11 backend on a fresh SoftHSM2 token, all through the binaries: `warden
/// provision` creates the device key on the token and a CSR, `warden keyd` (its own process,
/// the only one loading the module) serves it, and this process signs through the socket.
#[test]
fn pkcs11_on_softhsm_through_provision_and_the_keyd_binary() {
    let token = support_devices::Token::create();
    let dir = tempfile::tempdir().unwrap();
    let softhsm = |c: &mut Command| {
        if let Some(conf) = &token.softhsm_conf {
            c.env("SOFTHSM2_CONF", conf);
        }
    };
    let cfg = keyd_toml(
        dir.path(),
        &format!(
            "backend = \"pkcs11\"\nmodule = \"{}\"\ntoken_label = \"{}\"\npin_file = \"{}\"",
            token.module.display(),
            token.label,
            token.pin_file.display()
        ),
    );
    let csr = dir.path().join("device.csr");
    let mut provision = Command::new(env!("CARGO_BIN_EXE_warden"));
    softhsm(&mut provision);
    let out = provision
        .args(["provision", "--keyd-config"])
        .arg(&cfg)
        .arg("--csr")
        .arg(&csr)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("pkcs11 key store"), "{}", text(&out));
    let csr_params =
        rcgen::CertificateSigningRequestParams::from_pem(&std::fs::read_to_string(&csr).unwrap())
            .unwrap();

    let socket = dir.path().join("keyd.sock");
    let mut keyd = Command::new(env!("CARGO_BIN_EXE_warden"));
    softhsm(&mut keyd);
    let mut child = keyd
        .args(["keyd", "--config"])
        .arg(&cfg)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !socket.exists() {
        assert!(std::time::Instant::now() < deadline, "keyd did not start");
        assert!(child.try_wait().unwrap().is_none(), "keyd exited early");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let client = KeydClient::connect(&socket).unwrap();
    assert_eq!(client.describe().kind, "pkcs11");
    assert!(!client.describe().development_only);
    let public = client.device_public_key().unwrap();
    // The CSR names the token's key.
    use p256::pkcs8::EncodePublicKey as _;
    use rcgen::PublicKeyData as _;
    assert_eq!(
        csr_params.public_key.der_bytes(),
        p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(&public, false).as_bytes()
    );
    let _ = public.to_public_key_der().unwrap();
    let sig = client.sign(b"handshake").unwrap();
    p256::ecdsa::signature::Verifier::verify(
        &p256::ecdsa::VerifyingKey::from(&public),
        b"handshake",
        &sig,
    )
    .unwrap();
    let _ = child.kill();
    let _ = child.wait();
}

/// `warden status --keyd-socket` asks the running key service, as the agent's user would.
#[test]
fn status_through_a_running_keyd() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn KeyStore> =
        Arc::new(SoftwareKeyStore::open(&dir.path().join("store")).unwrap());
    store.ensure_device_key().unwrap();
    for role in warden_keystore::Role::ALL {
        store
            .install_anchors(role, b"-----BEGIN PUBLIC KEY-----\n")
            .unwrap();
    }
    let socket = dir.path().join("keyd.sock");
    let config = KeydConfig {
        schema_version: 1,
        socket: socket.clone(),
        socket_group: None,
        keystore: BackendConfig::Software(SoftwareConfig {
            dir: dir.path().join("store"),
        }),
        principals: vec![Principal {
            name: "operator".into(),
            uid: current_uid(),
            user: None,
            operations: vec![
                Operation::Describe,
                Operation::DevicePublicKey,
                Operation::Anchors,
                Operation::Counter,
            ],
        }],
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = {
        let _g = rt.enter();
        keyd::bind(&socket).unwrap()
    };
    rt.spawn(keyd::serve(
        listener,
        Arc::new(config),
        store,
        std::future::pending(),
    ));
    let pol = policies();
    let out = warden(&[
        "status",
        "--keyd-socket",
        socket.to_str().unwrap(),
        "--policies",
        pol.to_str().unwrap(),
    ]);
    let t = text(&out);
    assert!(t.contains("through keyd"), "{t}");
    assert!(t.contains("DEVELOPMENT ONLY"), "{t}");
    assert!(t.contains("anchors fleet-authority: present"), "{t}");
    assert!(t.contains("counter revocation-serial: 0"), "{t}");
    assert!(
        t.contains(&warden_attest::policyset::files::policy_set_digest(&pol).unwrap()),
        "{t}"
    );
    // The only problem is the development-only backend.
    assert!(!out.status.success());
    assert!(t.contains("1 problem(s)"), "{t}");
}

/// A swtpm whose attestation key `warden provision` created (its public key in
/// `<dir>/provisioned-ak.pem`, its keyd config `<dir>/keyd.toml`), and its EK in `<dir>/ek.pem`,
/// where a verifier keeps the EKs it trusts (as a manufacturer's EK certificate would give
/// them).
fn provisioned_tpm(dir: &Path) -> Swtpm {
    let tpm = Swtpm::start();
    let cfg = keyd_toml(dir, &format!("backend = \"tpm\"\ntcti = \"{}\"", tpm.tcti));
    let ak = dir.join("provisioned-ak.pem");
    let out = warden(&[
        "provision",
        "--keyd-config",
        cfg.to_str().unwrap(),
        "--ak",
        ak.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    write_endorsement_key(&tpm.tcti, &dir.join("ek.pem"));
    tpm
}

/// `warden attest challenge` for `<dir>/identity.json` against the trusted `<dir>/ek.pem`:
/// `<dir>/challenge.json` for the device, `<dir>/expected.json` kept.
fn make_challenge(dir: &Path) {
    let file = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    let out = warden(&[
        "attest",
        "challenge",
        "--identity",
        &file("identity.json"),
        "--ek",
        &file("ek.pem"),
        "--output",
        &file("challenge.json"),
        "--expected",
        &file("expected.json"),
    ]);
    assert!(out.status.success(), "{}", text(&out));
}

/// `warden attest enrol` with the device's `answer` to `<dir>/expected.json`; the enrolled
/// key (`<dir>/ak.pem`) must be the one `provision` created.
fn enrol_and_compare(dir: &Path, answer: &str) {
    let expected = dir.join("expected.json");
    let ak = dir.join("ak.pem");
    let out = warden(&[
        "attest",
        "enrol",
        "--expected",
        expected.to_str().unwrap(),
        "--answer",
        answer,
        "--ak-output",
        ak.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read_to_string(&ak).unwrap(),
        std::fs::read_to_string(dir.join("provisioned-ak.pem")).unwrap()
    );
}

/// The EK of the TPM at `tcti`.
fn endorsement_key_of(tcti: &str) -> p256::PublicKey {
    let t = warden_keyd::tpm::Tpm::open(tcti).unwrap();
    warden_keyd::tpm::credential::endorsement_key(&t).unwrap()
}

/// The EK of the TPM at `tcti`, as PEM in `to`.
fn write_endorsement_key(tcti: &str, to: &Path) {
    use p256::pkcs8::{EncodePublicKey as _, LineEnding};
    let ek = endorsement_key_of(tcti);
    std::fs::write(to, ek.to_public_key_pem(LineEnding::LF).unwrap()).unwrap();
}

/// As the TPM's manufacturer: certify its EK and write the certificate into its NV.
fn certify_endorsement_key(tcti: &str) -> support_devices::EkManufacturer {
    let maker =
        support_devices::EkManufacturer::issue(&endorsement_key_of(tcti), Default::default());
    support_devices::write_ek_certificate(tcti, &maker.ek_certificate);
    maker
}

/// `warden attest quote` of `pcrs` with `nonce` on the TPM at `tcti`, into `output`.
fn write_quote(tcti: &str, nonce: &str, pcrs: &str, output: &str) {
    let out = warden(&[
        "attest", "quote", "--tcti", tcti, "--nonce", nonce, "--pcrs", pcrs, "--output", output,
    ]);
    assert!(out.status.success(), "{}", text(&out));
}

/// `warden attest activate` of `challenge` on the TPM at `tcti`: its answer (hex).
fn activate(tcti: &str, challenge: &str) -> String {
    let out = warden(&[
        "attest",
        "activate",
        "--tcti",
        tcti,
        "--challenge",
        challenge,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// `warden attest identity` straight from the TPM at `tcti`, into `output`.
fn write_identity(tcti: &str, output: &str) {
    let out = warden(&["attest", "identity", "--tcti", tcti, "--output", output]);
    assert!(out.status.success(), "{}", text(&out));
}

/// The attestation key's enrolment through the binary, on swtpm: the device writes its
/// identity; the verifier, trusting the TPM's endorsement key, makes a challenge; only that
/// TPM answers it; the answer enrols the AK, whose quotes then verify. A device presenting
/// another EK, or a wrong answer, is not enrolled.
#[test]
fn attestation_key_enrolment_by_credential_activation() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let tpm = provisioned_tpm(dir.path());
    let other = Swtpm::start();
    write_endorsement_key(&other.tcti, &dir.path().join("other-ek.pem"));

    let run = |args: &[&str]| {
        let out = warden(args);
        (out.status.success(), text(&out))
    };
    write_identity(&tpm.tcti, &path("identity.json"));
    // Another device's EK: no challenge.
    let (ok, t) = run(&[
        "attest",
        "challenge",
        "--identity",
        &path("identity.json"),
        "--ek",
        &path("other-ek.pem"),
        "--output",
        &path("c0.json"),
        "--expected",
        &path("e0.json"),
    ]);
    assert!(!ok && t.contains("is not the one in"), "{t}");
    make_challenge(dir.path());
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(path("expected.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // Another TPM cannot answer.
    let (ok, t) = run(&[
        "attest",
        "activate",
        "--tcti",
        &other.tcti,
        "--challenge",
        &path("challenge.json"),
    ]);
    assert!(!ok, "{t}");
    let answer = activate(&tpm.tcti, &path("challenge.json"));
    assert_eq!(answer.len(), 64);
    let mut wrong = answer.clone().into_bytes();
    wrong[0] = if wrong[0] == b'0' { b'1' } else { b'0' };
    let (ok, t) = run(&[
        "attest",
        "enrol",
        "--expected",
        &path("expected.json"),
        "--answer",
        std::str::from_utf8(&wrong).unwrap(),
        "--ak-output",
        &path("bad-ak.pem"),
    ]);
    assert!(!ok && t.contains("does not match"), "{t}");
    assert!(!dir.path().join("bad-ak.pem").exists());
    // The enrolled key is the AK `provision` created, and its quotes verify.
    enrol_and_compare(dir.path(), &answer);
    let nonce = "a1a2a3a4a5a6a7a8";
    write_quote(&tpm.tcti, nonce, "16", &path("quote.json"));
    let pcr16 = {
        let t = warden_keyd::tpm::Tpm::open(&tpm.tcti).unwrap();
        hex::encode(t.read_pcrs(&[16]).unwrap()[0].1)
    };
    std::fs::write(path("golden.json"), format!("{{\"16\": \"{pcr16}\"}}")).unwrap();
    let (ok, t) = run(&[
        "attest",
        "verify",
        "--quote",
        &path("quote.json"),
        "--ak",
        &path("ak.pem"),
        "--nonce",
        nonce,
        "--golden",
        &path("golden.json"),
    ]);
    assert!(ok && t.contains("quote verifies"), "{t}");
}

/// Enrolment on a TPM whose manufacturer certified its EK: the identity carries the EK
/// certificate from NV, and a verifier that trusts the manufacturer's CA makes the challenge
/// without knowing the EK beforehand. Another CA, or a missing intermediate, makes none; one
/// of `--ek` and `--ek-ca` must be named, not both.
#[test]
fn attestation_key_enrolment_by_the_manufacturers_ek_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let tpm = provisioned_tpm(dir.path());
    let maker = certify_endorsement_key(&tpm.tcti);
    std::fs::write(path("maker-root.pem"), &maker.root_pem).unwrap();
    std::fs::write(path("maker-intermediate.pem"), &maker.intermediate_pem).unwrap();
    let stranger =
        support_devices::EkManufacturer::issue(&endorsement_key_of(&tpm.tcti), Default::default());
    std::fs::write(path("stranger-root.pem"), &stranger.root_pem).unwrap();

    let run = |args: &[&str]| {
        let out = warden(args);
        (out.status.success(), text(&out))
    };
    write_identity(&tpm.tcti, &path("identity.json"));
    let identity: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path("identity.json")).unwrap()).unwrap();
    assert!(identity["ek_certificate"].is_string(), "{identity}");

    let challenge = |trust: &[&str]| {
        let (id, out, exp) = (
            path("identity.json"),
            path("challenge.json"),
            path("expected.json"),
        );
        let mut args = vec!["attest", "challenge", "--identity", &id];
        args.extend_from_slice(trust);
        args.extend(["--output", &out, "--expected", &exp]);
        run(&args)
    };
    let (root, int, other) = (
        path("maker-root.pem"),
        path("maker-intermediate.pem"),
        path("stranger-root.pem"),
    );
    let (ok, t) = challenge(&["--ek-ca", &other, "--ek-intermediates", &int]);
    assert!(!ok && t.contains("not trusted"), "{t}");
    let (ok, t) = challenge(&["--ek-ca", &root]);
    assert!(!ok && t.contains("not trusted"), "{t}");
    let (ok, t) = challenge(&[]);
    assert!(!ok && t.contains("--ek"), "{t}");
    let (ok, t) = challenge(&["--ek", &path("ek.pem"), "--ek-ca", &root]);
    assert!(!ok && t.contains("cannot be used with"), "{t}");
    assert!(!dir.path().join("challenge.json").exists());

    let (ok, t) = challenge(&["--ek-ca", &root, "--ek-intermediates", &int]);
    assert!(ok && t.contains("certified by its manufacturer"), "{t}");
    let answer = activate(&tpm.tcti, &path("challenge.json"));
    enrol_and_compare(dir.path(), &answer);
}

/// The same enrolment while keyd owns the TPM: `identity` and `activate` go through its
/// socket, each only for a principal allowed that operation.
#[test]
fn attestation_key_enrolment_through_keyd() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let tpm = provisioned_tpm(dir.path());
    // The TPM's EK certificate must come through keyd too.
    let maker = certify_endorsement_key(&tpm.tcti);
    let rt = tokio::runtime::Runtime::new().unwrap();
    // One keyd at a time owns the TPM: first one whose principal may only read the identity.
    let start_keyd = |socket: &Path, operations: Vec<Operation>| {
        let config = KeydConfig {
            schema_version: 1,
            socket: socket.to_path_buf(),
            socket_group: None,
            keystore: BackendConfig::Tpm(TpmConfig {
                tcti: tpm.tcti.clone(),
                seal_pcrs: vec![16],
            }),
            principals: vec![Principal {
                name: "operator".into(),
                uid: current_uid(),
                user: None,
                operations,
            }],
        };
        let store: Arc<dyn KeyStore> = Arc::new(
            TpmKeyStore::open(&TpmConfig {
                tcti: tpm.tcti.clone(),
                seal_pcrs: vec![16],
            })
            .unwrap(),
        );
        let listener = {
            let _g = rt.enter();
            keyd::bind(socket).unwrap()
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = rt.spawn(keyd::serve(listener, Arc::new(config), store, async {
            let _ = rx.await;
        }));
        (tx, task)
    };
    let run = |args: &[&str]| {
        let out = warden(args);
        (out.status.success(), text(&out), out.stdout)
    };
    let first = dir.path().join("keyd-1.sock");
    let (stop, task) = start_keyd(
        &first,
        vec![Operation::Describe, Operation::AttestationIdentity],
    );
    let s1 = first.to_str().unwrap();
    let (ok, t, _) = run(&[
        "attest",
        "identity",
        "--keyd-socket",
        s1,
        "--output",
        &path("identity.json"),
    ]);
    assert!(ok, "{t}");
    let identity: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path("identity.json")).unwrap()).unwrap();
    use base64::Engine as _;
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(identity["ek_certificate"].as_str().unwrap())
            .unwrap(),
        maker.ek_certificate
    );
    make_challenge(dir.path());
    let (ok, t, _) = run(&[
        "attest",
        "activate",
        "--keyd-socket",
        s1,
        "--challenge",
        &path("challenge.json"),
    ]);
    assert!(!ok && t.contains("may not call activate_credential"), "{t}");
    let _ = stop.send(());
    rt.block_on(task).unwrap();

    let second = dir.path().join("keyd-2.sock");
    let (stop, task) = start_keyd(
        &second,
        vec![Operation::Describe, Operation::ActivateCredential],
    );
    let (ok, t, stdout) = run(&[
        "attest",
        "activate",
        "--keyd-socket",
        second.to_str().unwrap(),
        "--challenge",
        &path("challenge.json"),
    ]);
    assert!(ok, "{t}");
    let answer = String::from_utf8(stdout).unwrap().trim().to_owned();
    enrol_and_compare(dir.path(), &answer);
    let _ = stop.send(());
    rt.block_on(task).unwrap();
}
