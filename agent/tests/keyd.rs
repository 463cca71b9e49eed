//! The key service on a real Unix socket: authorization by peer UID and per operation, the
//! client as a `KeyStore`, bounded and malformed frames, with the software backend and on a
//! fresh swtpm; and the `warden keyd` binary end to end.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support_devices;

use std::io::{Read as _, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use p256::ecdsa::signature::Verifier as _;
use support_devices::{Swtpm, current_uid};
use warden_agent::keyd::{self, KeydClient, KeydConfig, Operation, Principal};
use warden_attest::keystore::software::SoftwareKeyStore;
use warden_attest::keystore::tpm::{TpmConfig, TpmKeyStore};
use warden_attest::keystore::{
    BackendConfig, Counter, KeyStore, KeyStoreError, Role, SoftwareConfig,
};

const ALL: [Operation; 7] = [
    Operation::Describe,
    Operation::DevicePublicKey,
    Operation::Sign,
    Operation::Anchors,
    Operation::Unseal,
    Operation::Counter,
    Operation::AdvanceCounter,
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
