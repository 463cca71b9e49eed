//! The key service on a real Unix socket: authorization by peer UID and per operation, the
//! client as a `KeyStore`, bounded and malformed frames, with the software backend and on a
//! fresh swtpm; and the `warden keyd` binary end to end.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../attest/keyd/tests/devices/mod.rs"]
mod support_devices;

use std::io::{Read as _, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use p256::ecdsa::signature::Verifier as _;
use support_devices::{Swtpm, current_uid};
use warden_attest::boot::measure::{DEFAULT_APP_PCR, ModelLoadEvent, predict};
use warden_attest::boot::quote::verify_quote;
use warden_keyd::config::{KeydConfig, Principal};
use warden_keyd::server as keyd;
use warden_keyd::tpm::attestation::ensure_attestation_key;
use warden_keyd::tpm::keystore::TpmKeyStore;
use warden_keystore::attestation::{MAX_NONCE, Quote};
use warden_keystore::config::TpmConfig;
use warden_keystore::config::{BackendConfig, SoftwareConfig};
use warden_keystore::keyd::{KeydClient, Operation};
use warden_keystore::software::SoftwareKeyStore;
use warden_keystore::{Counter, KeyStore, KeyStoreError, Role};

const ALL: [Operation; 10] = [
    Operation::Describe,
    Operation::DevicePublicKey,
    Operation::Sign,
    Operation::Anchors,
    Operation::Unseal,
    Operation::Counter,
    Operation::AdvanceCounter,
    Operation::ExtendPcr,
    Operation::ReadPcr,
    Operation::Quote,
];

/// A keyd serving `store` on a temp socket, in this process, until dropped.
struct Running {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    _rt: tokio::runtime::Runtime,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn start(store: Arc<dyn KeyStore>, principals: Vec<Principal>) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("keyd.sock");
    let config = KeydConfig {
        schema_version: 1,
        socket: socket.clone(),
        socket_group: None,
        keystore: BackendConfig::Software(SoftwareConfig {
            dir: dir.path().join("unused"),
        }),
        principals,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let listener = {
        let _guard = rt.enter();
        keyd::bind(&socket).unwrap()
    };
    rt.spawn(keyd::serve(listener, Arc::new(config), store, async {
        let _ = rx.await;
    }));
    Running {
        _dir: dir,
        socket,
        _rt: rt,
        stop: Some(tx),
    }
}

fn me(operations: &[Operation]) -> Vec<Principal> {
    vec![Principal {
        name: "test".into(),
        uid: current_uid(),
        user: None,
        operations: operations.to_vec(),
    }]
}

fn software_store(dir: &Path) -> Arc<dyn KeyStore> {
    Arc::new(SoftwareKeyStore::open(dir).unwrap())
}

/// The whole API through the client, checked against the store itself.
fn exercise(store: &Arc<dyn KeyStore>, socket: &Path) {
    let direct_key = store.ensure_device_key().unwrap();
    let client = KeydClient::connect(socket).unwrap();
    assert_eq!(client.describe().kind, store.describe().kind);
    assert_eq!(
        client.describe().development_only,
        store.describe().development_only
    );
    assert!(client.describe().location.contains("through keyd"));
    assert_eq!(client.capabilities(), store.capabilities());

    // The key the client reports is the store's, and its signatures verify with it.
    assert_eq!(client.device_public_key().unwrap(), direct_key);
    let vk = p256::ecdsa::VerifyingKey::from(&direct_key);
    for msg in [
        &b"tls 1.3 handshake transcript"[..],
        &[0u8; 0],
        &[7u8; 4000],
    ] {
        let sig = client.sign(msg).unwrap();
        vk.verify(msg, &sig).unwrap();
        assert!(vk.verify(b"another message", &sig).is_err());
    }
    // Oversized messages are refused by keyd, not signed.
    assert!(matches!(
        client.sign(&vec![0u8; 17 * 1024]),
        Err(KeyStoreError::InvalidInput { .. })
    ));

    // Anchors (installed directly, as provisioning does) read back through keyd.
    assert_eq!(client.anchors(Role::FleetAuthority).unwrap(), None);
    store
        .install_anchors(Role::FleetAuthority, b"-----BEGIN PUBLIC KEY-----\nfleet\n")
        .unwrap();
    assert_eq!(
        client.anchors(Role::FleetAuthority).unwrap().unwrap(),
        b"-----BEGIN PUBLIC KEY-----\nfleet\n"
    );

    // Counters: forward only; the rollback error keeps its fields across the socket.
    let c = Counter::RevocationSerial;
    assert_eq!(client.counter(c).unwrap(), 0);
    assert_eq!(client.advance_counter(c, 2).unwrap(), 2);
    assert_eq!(store.counter(c).unwrap(), 2);
    match client.advance_counter(c, 1) {
        Err(KeyStoreError::CounterRollback {
            current: 2,
            requested: 1,
            ..
        }) => {}
        other => panic!("expected a rollback refusal, got {other:?}"),
    }

    // Unseal through keyd what the store sealed.
    let blob = store.seal(b"data key 32 bytes of secret....!").unwrap();
    assert_eq!(
        client.unseal(&blob).unwrap().as_slice(),
        b"data key 32 bytes of secret....!"
    );
    let mut bad = blob.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert!(client.unseal(&bad).is_err());

    // PCRs and quotes: forwarded to a TPM; any other backend says it has none.
    if !store.capabilities().pcrs {
        for r in [
            client.extend_pcr(23, [1; 32]).err(),
            client.read_pcr(23).err(),
            client.quote(b"nonce", &[23]).map(|_| ()).err(),
        ] {
            assert!(
                matches!(r, Some(KeyStoreError::NotSupported { .. })),
                "{r:?}"
            );
        }
    }
}

#[test]
fn software_backend_serves_an_allowed_uid() {
    let dir = tempfile::tempdir().unwrap();
    let store = software_store(dir.path());
    let keyd = start(Arc::clone(&store), me(&ALL));
    // The socket is 0660.
    let mode = std::fs::metadata(&keyd.socket)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o660);
    exercise(&store, &keyd.socket);
}

#[test]
fn tpm_backend_on_swtpm_serves_an_allowed_uid() {
    let tpm = Swtpm::start();
    let store: Arc<dyn KeyStore> = Arc::new(
        TpmKeyStore::open(&TpmConfig {
            tcti: tpm.tcti.clone(),
            seal_pcrs: vec![0, 2, 4, 7],
        })
        .unwrap(),
    );
    assert_eq!(store.describe().kind, "tpm");
    let keyd = start(Arc::clone(&store), me(&ALL));
    exercise(&store, &keyd.socket);
}

#[test]
fn a_uid_that_is_no_principal_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = software_store(dir.path());
    store.ensure_device_key().unwrap();
    let others = vec![Principal {
        name: "someone-else".into(),
        uid: current_uid().wrapping_add(1),
        user: None,
        operations: ALL.to_vec(),
    }];
    let keyd = start(store, others);
    let e = KeydClient::connect(&keyd.socket).unwrap_err().to_string();
    assert!(e.contains("not a principal"), "{e}");
    assert!(e.contains(&format!("uid {}", current_uid())), "{e}");

    // On the wire: one error frame, then the connection closes without reading a request.
    let mut s = UnixStream::connect(&keyd.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let reply = read_frame(&mut s).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&reply).unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["kind"], "unauthorized");
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
}

#[test]
fn an_operation_outside_the_principals_list_is_forbidden() {
    let dir = tempfile::tempdir().unwrap();
    let store = software_store(dir.path());
    store.ensure_device_key().unwrap();
    let keyd = start(
        store,
        me(&[
            Operation::Describe,
            Operation::DevicePublicKey,
            Operation::Counter,
        ]),
    );
    let client = KeydClient::connect(&keyd.socket).unwrap();
    client.device_public_key().unwrap();
    let e = client.sign(b"m").unwrap_err().to_string();
    assert!(e.contains("may not call sign"), "{e}");
    assert_eq!(client.counter(Counter::PolicySetSerial).unwrap(), 0);
    let e = client
        .advance_counter(Counter::PolicySetSerial, 1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("may not call advance_counter"), "{e}");
}

fn write_raw(s: &mut UnixStream, len: u32, body: &[u8]) {
    s.write_all(&len.to_be_bytes()).unwrap();
    s.write_all(body).unwrap();
}

fn read_frame(s: &mut UnixStream) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body)?;
    Ok(body)
}

fn kind_of(frame: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(frame).unwrap();
    if v["type"] == "error" {
        v["kind"].as_str().unwrap().to_owned()
    } else {
        v["type"].as_str().unwrap().to_owned()
    }
}

#[test]
fn malformed_and_oversized_frames_are_refused_without_crashing() {
    let dir = tempfile::tempdir().unwrap();
    let store = software_store(dir.path());
    store.ensure_device_key().unwrap();
    let keyd = start(store, me(&ALL));
    let mut s = UnixStream::connect(&keyd.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();

    // Not JSON, unknown op, unknown field, bad base64: each refused, the connection lives on.
    for body in [
        &b"\x00\xffnot json"[..],
        br#"{"op":"export_private_key"}"#,
        br#"{"op":"describe","also":"this"}"#,
        br#"{"op":"sign","message":"***"}"#,
        br#"{"op":"advance_counter","counter":"revocation-serial","to":-1}"#,
        b"",
    ] {
        write_raw(&mut s, body.len() as u32, body);
        let reply = read_frame(&mut s).unwrap();
        assert_eq!(kind_of(&reply), "malformed_request", "{body:?}");
    }
    let ok = br#"{"op":"describe"}"#;
    write_raw(&mut s, ok.len() as u32, ok);
    assert_eq!(kind_of(&read_frame(&mut s).unwrap()), "describe");

    // A frame announcing 4 GiB: refused before reading it, then the connection closes.
    write_raw(&mut s, u32::MAX, b"");
    assert_eq!(kind_of(&read_frame(&mut s).unwrap()), "frame_too_large");
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty());

    // Just over the limit, with the bytes actually sent.
    let mut s = UnixStream::connect(&keyd.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let big = vec![b' '; 64 * 1024 + 1];
    s.write_all(&(big.len() as u32).to_be_bytes()).unwrap();
    let _ = s.write_all(&big);
    assert_eq!(kind_of(&read_frame(&mut s).unwrap()), "frame_too_large");

    // A truncated frame (the peer hangs up mid-frame) does not disturb the service.
    let mut s = UnixStream::connect(&keyd.socket).unwrap();
    write_raw(&mut s, 100, b"{\"op\":");
    drop(s);

    // keyd still serves.
    let client = KeydClient::connect(&keyd.socket).unwrap();
    client.sign(b"still alive").unwrap();
}

#[test]
fn the_warden_keyd_binary_serves_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("keyd.sock");
    let store_dir = dir.path().join("store");
    // Provision first (as `warden provision` would), while keyd is not running.
    let store = SoftwareKeyStore::open(&store_dir).unwrap();
    let key = store.ensure_device_key().unwrap();
    drop(store);
    let config = dir.path().join("keyd.toml");
    std::fs::write(
        &config,
        format!(
            "schema_version = 1\nsocket = \"{}\"\n\n[keystore]\nbackend = \"software-development-only\"\ndir = \"{}\"\n\n[[principal]]\nname = \"agent\"\nuid = {}\noperations = [\"describe\", \"device_public_key\", \"sign\"]\n",
            socket.display(),
            store_dir.display(),
            current_uid()
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["keyd", "--config"])
        .arg(&config)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "keyd did not create its socket");
        assert!(child.try_wait().unwrap().is_none(), "keyd exited early");
        std::thread::sleep(Duration::from_millis(20));
    }
    let client = KeydClient::connect(&socket).unwrap();
    assert!(client.describe().development_only);
    let sig = client.sign(b"hello").unwrap();
    p256::ecdsa::VerifyingKey::from(&key)
        .verify(b"hello", &sig)
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("DEVELOPMENT-ONLY"), "{stderr}");
    assert!(!socket.exists(), "the socket is removed on shutdown");

    // A config with an unknown field is refused, naming it.
    std::fs::write(
        &config,
        std::fs::read_to_string(&config).unwrap() + "\nlisten = \"0.0.0.0\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["keyd", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("listen"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---- PCRs and quotes through keyd, on a fresh swtpm per test ----------------------------------

/// A swtpm with its attestation key provisioned (directly, as `warden provision --ak` does),
/// served by an in-process keyd to this process's uid with `operations`.
struct TpmKeyd {
    store: Arc<dyn KeyStore>,
    ak: p256::PublicKey,
    keyd: Running,
    _tpm: Swtpm,
}

fn tpm_keyd(operations: &[Operation]) -> TpmKeyd {
    let tpm = Swtpm::start();
    let store = TpmKeyStore::open(&TpmConfig {
        tcti: tpm.tcti.clone(),
        seal_pcrs: vec![0, 2, 4, 7],
    })
    .unwrap();
    let ak = ensure_attestation_key(store.tpm()).unwrap();
    let store: Arc<dyn KeyStore> = Arc::new(store);
    let keyd = start(Arc::clone(&store), me(operations));
    TpmKeyd {
        store,
        ak,
        keyd,
        _tpm: tpm,
    }
}

fn load_event(version: &str) -> ModelLoadEvent {
    ModelLoadEvent {
        model: "fraud".into(),
        version: version.into(),
        root_digest: format!("sha256:{}", "11".repeat(32)),
        policy_digest: format!("sha256:{}", "22".repeat(32)),
    }
}

#[test]
fn extending_the_application_pcr_through_keyd_moves_it_to_the_prediction() {
    let t = tpm_keyd(&[
        Operation::Describe,
        Operation::ExtendPcr,
        Operation::ReadPcr,
    ]);
    let client = KeydClient::connect(&t.keyd.socket).unwrap();
    assert!(client.capabilities().pcrs);
    assert_eq!(client.read_pcr(DEFAULT_APP_PCR).unwrap(), [0u8; 32]);
    let events = [load_event("1"), load_event("2")];
    for (i, e) in events.iter().enumerate() {
        client.extend_pcr(DEFAULT_APP_PCR, e.digest()).unwrap();
        let predicted = predict(&events[..=i]);
        // Through keyd and on the TPM itself.
        assert_eq!(client.read_pcr(DEFAULT_APP_PCR).unwrap(), predicted);
        assert_eq!(t.store.read_pcr(DEFAULT_APP_PCR).unwrap(), predicted);
    }
    // Reads are bounded too: a PCR that does not exist is refused by keyd.
    assert!(matches!(
        client.read_pcr(24),
        Err(KeyStoreError::InvalidInput { .. })
    ));
}

#[test]
fn a_quote_through_keyd_verifies_with_the_verifier() {
    let t = tpm_keyd(&[Operation::Describe, Operation::ExtendPcr, Operation::Quote]);
    let client = KeydClient::connect(&t.keyd.socket).unwrap();
    let event = load_event("3");
    client.extend_pcr(DEFAULT_APP_PCR, event.digest()).unwrap();
    let nonce: [u8; 32] = rand_nonce();
    let q = client.quote(&nonce, &[0, 7, DEFAULT_APP_PCR]).unwrap();
    let golden = std::collections::BTreeMap::from([(DEFAULT_APP_PCR, predict(&[event]))]);
    let verified = verify_quote(&q, &t.ak, &nonce, &golden).unwrap();
    assert_eq!(
        verified.pcrs.keys().copied().collect::<Vec<_>>(),
        vec![0, 7, DEFAULT_APP_PCR]
    );
    // The same quote under another nonce (a replay) or another golden value is refused.
    let mut other = nonce;
    other[0] ^= 1;
    assert!(verify_quote(&q, &t.ak, &other, &golden).is_err());
    let wrong = std::collections::BTreeMap::from([(DEFAULT_APP_PCR, [0u8; 32])]);
    assert!(verify_quote(&q, &t.ak, &nonce, &wrong).is_err());
}

/// `warden attest quote --keyd-socket` and `--config` (an agent config whose key store is
/// keyd) quote through the socket; `warden attest verify` accepts the result.
#[test]
fn warden_attest_quote_goes_through_keyd() {
    let t = tpm_keyd(&[Operation::Describe, Operation::ExtendPcr, Operation::Quote]);
    let client = KeydClient::connect(&t.keyd.socket).unwrap();
    let event = load_event("4");
    client.extend_pcr(DEFAULT_APP_PCR, event.digest()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ak = dir.path().join("ak.pem");
    std::fs::write(
        &ak,
        p256::pkcs8::EncodePublicKey::to_public_key_pem(&t.ak, p256::pkcs8::LineEnding::LF)
            .unwrap(),
    )
    .unwrap();
    let golden = dir.path().join("golden.json");
    std::fs::write(
        &golden,
        serde_json::json!({ "23": hex::encode(predict(&[event])) }).to_string(),
    )
    .unwrap();
    // An agent config that names keyd's socket (the demo's, with a key store and admission).
    let (files, _) = warden_agent::demo::prepare(&dir.path().join("demo"), 0).unwrap();
    let demo_text = std::fs::read_to_string(&files.config).unwrap();
    let anchors = "[trust]\nmodel_signer_keys = [\"trust/model-signer.pub\"]\n";
    assert!(demo_text.contains(anchors), "the demo config changed");
    let agent_config = dir.path().join("warden.toml");
    std::fs::write(
        &agent_config,
        demo_text.replace(
            anchors,
            &format!("[keystore]\nkeyd_socket = {:?}\n", t.keyd.socket,),
        ),
    )
    .unwrap();
    // The demo's policy set with the shipped startup policy.
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/serving/startup.rego"),
        files.dir.join("policies/serving/startup.rego"),
    )
    .unwrap();
    // The demo's relative paths are relative to its own directory.
    std::fs::rename(
        &agent_config,
        files.config.with_file_name("warden-keyd.toml"),
    )
    .unwrap();
    let agent_config = files.config.with_file_name("warden-keyd.toml");

    let nonce = "0123456789abcdef0123456789abcdef";
    for (i, how) in [
        vec![
            "--keyd-socket".to_owned(),
            t.keyd.socket.display().to_string(),
        ],
        vec!["--config".to_owned(), agent_config.display().to_string()],
    ]
    .into_iter()
    .enumerate()
    {
        let out_file = dir.path().join(format!("quote-{i}.json"));
        let mut args = vec!["attest", "quote", "--nonce", nonce, "--pcrs", "23"];
        args.extend(how.iter().map(String::as_str));
        args.extend(["--output", out_file.to_str().unwrap()]);
        let out = warden_cmd(&args);
        assert!(out.status.success(), "{args:?}: {}", out_text(&out));
        let verify = warden_cmd(&[
            "attest",
            "verify",
            "--quote",
            out_file.to_str().unwrap(),
            "--ak",
            ak.to_str().unwrap(),
            "--nonce",
            nonce,
            "--golden",
            golden.to_str().unwrap(),
        ]);
        assert!(verify.status.success(), "{}", out_text(&verify));
        assert!(
            out_text(&verify).contains("quote verifies"),
            "{}",
            out_text(&verify)
        );
    }
    // Both sources at once is a usage error.
    let out = warden_cmd(&[
        "attest",
        "quote",
        "--nonce",
        nonce,
        "--tcti",
        "device:/dev/null",
        "--keyd-socket",
        t.keyd.socket.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
}

#[test]
fn a_principal_without_the_pcr_operations_is_refused() {
    let t = tpm_keyd(&[Operation::Describe, Operation::ReadPcr]);
    let client = KeydClient::connect(&t.keyd.socket).unwrap();
    let e = client
        .extend_pcr(DEFAULT_APP_PCR, [7; 32])
        .unwrap_err()
        .to_string();
    assert!(e.contains("may not call extend_pcr"), "{e}");
    let e = client
        .quote(b"nonce", &[DEFAULT_APP_PCR])
        .unwrap_err()
        .to_string();
    assert!(e.contains("may not call quote"), "{e}");
    // Nothing moved; the allowed read works.
    assert_eq!(client.read_pcr(DEFAULT_APP_PCR).unwrap(), [0u8; 32]);
    assert_eq!(t.store.read_pcr(DEFAULT_APP_PCR).unwrap(), [0u8; 32]);

    // And one with only extend_pcr may not read.
    let t = tpm_keyd(&[Operation::Describe, Operation::ExtendPcr]);
    let client = KeydClient::connect(&t.keyd.socket).unwrap();
    let e = client.read_pcr(DEFAULT_APP_PCR).unwrap_err().to_string();
    assert!(e.contains("may not call read_pcr"), "{e}");
}

#[test]
fn extending_a_boot_pcr_is_refused() {
    let t = tpm_keyd(&ALL);
    let client = KeydClient::connect(&t.keyd.socket).unwrap();
    let before: Vec<[u8; 32]> = (0..16).map(|p| t.store.read_pcr(p).unwrap()).collect();
    for pcr in [0, 4, 7, 8, 11, 14, 15] {
        match client.extend_pcr(pcr, [9; 32]) {
            Err(KeyStoreError::InvalidInput { detail }) => {
                assert!(detail.contains("boot chain"), "{detail}");
            }
            other => panic!("PCR {pcr}: expected a refusal, got {other:?}"),
        }
    }
    assert!(matches!(
        client.extend_pcr(24, [9; 32]),
        Err(KeyStoreError::InvalidInput { .. })
    ));
    let after: Vec<[u8; 32]> = (0..16).map(|p| t.store.read_pcr(p).unwrap()).collect();
    assert_eq!(before, after, "a boot PCR moved");
    // The application range is open: PCR 16 (debug) moves.
    client.extend_pcr(16, [9; 32]).unwrap();
    assert_ne!(t.store.read_pcr(16).unwrap(), [0u8; 32]);
}

#[test]
fn malformed_pcr_and_quote_requests_are_refused() {
    let t = tpm_keyd(&ALL);
    let client = KeydClient::connect(&t.keyd.socket).unwrap();
    // Through the client: an empty and an overlong nonce.
    for nonce in [&[][..], &[5u8; MAX_NONCE + 1][..]] {
        assert!(
            matches!(
                client.quote(nonce, &[DEFAULT_APP_PCR]),
                Err(KeyStoreError::InvalidInput { .. })
            ),
            "nonce of {} bytes",
            nonce.len()
        );
    }
    // On the wire.
    let mut s = UnixStream::connect(&t.keyd.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let long_nonce = format!(
        r#"{{"op":"quote","nonce":"{}","pcrs":[23]}}"#,
        "QUFB".repeat(22)
    );
    let cases: [(&[u8], &str); 10] = [
        (br#"{"op":"quote","nonce":"***","pcrs":[23]}"#, "malformed_request"),
        (br#"{"op":"quote","nonce":"","pcrs":[23]}"#, "invalid_input"),
        (long_nonce.as_bytes(), "invalid_input"),
        (br#"{"op":"quote","nonce":"AAE=","pcrs":[]}"#, "invalid_input"),
        (br#"{"op":"quote","nonce":"AAE=","pcrs":[23,23]}"#, "invalid_input"),
        (br#"{"op":"quote","nonce":"AAE=","pcrs":[24]}"#, "invalid_input"),
        (br#"{"op":"quote","nonce":"AAE=","pcrs":"23"}"#, "malformed_request"),
        (
            br#"{"op":"extend_pcr","pcr":23,"digest":"AAE="}"#,
            "invalid_input",
        ),
        (
            br#"{"op":"extend_pcr","pcr":0,"digest":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}"#,
            "invalid_input",
        ),
        (br#"{"op":"read_pcr","pcr":4294967296}"#, "malformed_request"),
    ];
    for (body, want) in cases {
        write_raw(&mut s, body.len() as u32, body);
        let reply = read_frame(&mut s).unwrap();
        assert_eq!(kind_of(&reply), want, "{}", String::from_utf8_lossy(body));
    }
    assert_eq!(t.store.read_pcr(DEFAULT_APP_PCR).unwrap(), [0u8; 32]);
    assert_eq!(t.store.read_pcr(0).unwrap(), [0u8; 32]);
    // A well-formed quote on the same connection is answered (the refusals were not the
    // only thing keyd can say).
    let ok = br#"{"op":"quote","nonce":"AAE=","pcrs":[23]}"#;
    write_raw(&mut s, ok.len() as u32, ok);
    assert_eq!(kind_of(&read_frame(&mut s).unwrap()), "quote");
}

fn rand_nonce() -> [u8; 32] {
    let mut n = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut n);
    n
}

fn warden_cmd(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(args)
        .output()
        .unwrap()
}

fn out_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

// ---- the binary as its own unprivileged user ---------------------------------------------------

/// Users of the privilege test: none of them exists in /etc/passwd, which the kernel does not
/// need (and keyd resolves numeric groups without NSS).
const KEYD_UID: u32 = 64_801;
const SOCKET_GID: u32 = 64_802;
const AGENT_UID: u32 = 64_803;
const OTHER_UID: u32 = 64_804;
const OUTSIDER_UID: u32 = 64_805;

/// `cmd` run as `uid` (gid the same) with `groups` as its supplementary groups, through
/// util-linux's `setpriv`: a real uid change, as systemd's `User=` does.
fn as_user(uid: u32, groups: &[u32], program: &Path) -> std::process::Command {
    let mut c = std::process::Command::new("setpriv");
    c.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"));
    if groups.is_empty() {
        c.arg("--clear-groups");
    } else {
        let list: Vec<String> = groups.iter().map(u32::to_string).collect();
        c.arg(format!("--groups={}", list.join(",")));
    }
    c.arg("--").arg(program);
    c
}

/// A `/proc/<pid>/status` field, e.g. `Uid` or `CapEff`.
fn proc_status(pid: u32, field: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{field}:"))
                .map(|v| v.trim().to_owned())
        })
        .unwrap()
}

/// The real `warden keyd` started as a non-root user (its own uid, member of the socket's
/// group only), holding a swtpm: the socket is 0660 with the configured group; a principal's
/// uid in that group quotes through it; a uid in the group that is no principal is refused by
/// keyd; a uid outside the group cannot even connect.
#[test]
fn the_keyd_binary_as_an_unprivileged_user_authorizes_by_uid() {
    use std::os::unix::fs::MetadataExt as _;
    support_devices::require("setpriv", "util-linux");
    assert_eq!(
        current_uid(),
        0,
        "this test switches to other uids with setpriv: run the tests as root (CI does)"
    );
    let tpm = Swtpm::start();
    // Provisioning, directly and before keyd starts (swtpm serves one connection at a time).
    let ak = {
        let store = TpmKeyStore::open(&TpmConfig {
            tcti: tpm.tcti.clone(),
            seal_pcrs: vec![0, 2, 4, 7],
        })
        .unwrap();
        ensure_attestation_key(store.tpm()).unwrap()
    };

    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // keyd's runtime directory, as systemd's RuntimeDirectory= makes it: owned by its user.
    let run = dir.path().join("run");
    std::fs::create_dir(&run).unwrap();
    std::os::unix::fs::chown(&run, Some(KEYD_UID), Some(KEYD_UID)).unwrap();
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = run.join("keyd.sock");
    let config = dir.path().join("keyd.toml");
    std::fs::write(
        &config,
        format!(
            "schema_version = 1\nsocket = \"{}\"\nsocket_group = \"{SOCKET_GID}\"\n\n\
             [keystore]\nbackend = \"tpm\"\ntcti = \"{}\"\n\n\
             [[principal]]\nname = \"agent\"\nuid = {AGENT_UID}\noperations = [\"describe\", \"quote\"]\n",
            socket.display(),
            tpm.tcti
        ),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();

    let warden = Path::new(env!("CARGO_BIN_EXE_warden"));
    let mut keyd = as_user(KEYD_UID, &[SOCKET_GID], warden)
        .args(["keyd", "--config"])
        .arg(&config)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !socket.exists() {
        if let Some(status) = keyd.try_wait().unwrap() {
            let mut err = String::new();
            keyd.stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            panic!("keyd exited early ({status}): {err}");
        }
        assert!(Instant::now() < deadline, "keyd did not create its socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    // setpriv exec'd keyd: the child is keyd itself, running unprivileged.
    let uids = proc_status(keyd.id(), "Uid");
    assert!(
        uids.split_whitespace().all(|u| u == KEYD_UID.to_string()),
        "keyd runs as {uids}"
    );
    assert_eq!(proc_status(keyd.id(), "CapEff"), "0000000000000000");

    let meta = std::fs::symlink_metadata(&socket).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o660, "the socket's mode");
    assert_eq!(meta.uid(), KEYD_UID, "the socket's owner");
    assert_eq!(meta.gid(), SOCKET_GID, "the socket's group");

    let nonce = "a1b2c3d4e5f60718293a4b5c6d7e8f90";
    let attest_quote = |uid: u32, groups: &[u32]| {
        as_user(uid, groups, warden)
            .args(["attest", "quote", "--keyd-socket"])
            .arg(&socket)
            .args(["--nonce", nonce, "--pcrs", "0,23"])
            .output()
            .unwrap()
    };
    // The principal, in the socket's group: quotes, and the quote verifies.
    let ok = attest_quote(AGENT_UID, &[SOCKET_GID]);
    assert!(ok.status.success(), "{}", out_text(&ok));
    let q: Quote = serde_json::from_slice(&ok.stdout).unwrap();
    verify_quote(
        &q,
        &ak,
        &hex::decode(nonce).unwrap(),
        &std::collections::BTreeMap::from([(DEFAULT_APP_PCR, [0u8; 32])]),
    )
    .unwrap();
    // In the group but no principal: keyd refuses the uid.
    let other = attest_quote(OTHER_UID, &[SOCKET_GID]);
    assert!(!other.status.success());
    let t = out_text(&other);
    assert!(
        t.contains(&format!("uid {OTHER_UID} is not a principal")),
        "{t}"
    );
    // Outside the group: the kernel refuses the connection (mode 0660).
    let outsider = attest_quote(OUTSIDER_UID, &[]);
    assert!(!outsider.status.success());
    let t = out_text(&outsider);
    assert!(t.contains("Permission denied"), "{t}");
    assert!(!t.contains("not a principal"), "{t}");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(keyd.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = keyd.wait().unwrap();
    let mut stderr = String::new();
    keyd.stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "{stderr}");
    // keyd's log names the refused uid, never a key or a nonce.
    assert!(stderr.contains(&OTHER_UID.to_string()), "{stderr}");
    assert!(!stderr.contains(nonce), "{stderr}");
    assert!(!socket.exists(), "the socket is removed on shutdown");
}
