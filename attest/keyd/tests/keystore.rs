//! One key-store suite, run against every backend: software (files), TPM (a fresh swtpm per
//! test, or `WARDEN_TEST_TCTI`) and PKCS#11 (a fresh SoftHSM2 token per test in a child
//! process, or `WARDEN_TEST_PKCS11_*`). Each check is a plain function over a [`Backend`]; the
//! macro at the end instantiates it once per backend, so `cargo test keystore` lists
//! `software::…`, `tpm::…` and `pkcs11::…` for each check.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod devices;

use std::sync::Arc;

use p256::ecdsa::signature::Verifier as _;
use p256::pkcs8::EncodePublicKey as _;
use rustls::pki_types::{CertificateDer, ServerName};
use warden_keyd::pkcs11::Pkcs11KeyStore;
use warden_keyd::tpm::keystore::TpmKeyStore;
use warden_keyd::tpm::nv::ANCHOR_NV_BASE;
use warden_keystore::config::{Pkcs11Config, TpmConfig};
use warden_keystore::software::SoftwareKeyStore;
use warden_keystore::tls::KeyStoreSigningKey;
use warden_keystore::{Counter, KeyStore, KeyStoreError, MAX_COUNTER_STEP, Role};

/// The PCR the TPM suite seals to: 16, the debug PCR, resettable at locality 0 and used by
/// nothing else, so the suite can move it even on a real TPM.
const SEAL_PCR: u32 = 16;

enum Backend {
    Software(tempfile::TempDir),
    Tpm(devices::Swtpm),
    Pkcs11(devices::Token),
}

impl Backend {
    fn software() -> Self {
        Backend::Software(tempfile::tempdir().unwrap())
    }

    fn tpm() -> Self {
        let tpm = devices::Swtpm::start();
        if tpm.external {
            // A real TPM keeps PCR 16 from earlier runs.
            warden_keyd::tpm::Tpm::open(&tpm.tcti)
                .unwrap()
                .reset_pcr(SEAL_PCR)
                .unwrap();
        }
        Backend::Tpm(tpm)
    }

    fn kind(&self) -> &'static str {
        match self {
            Backend::Software(_) => "software",
            Backend::Tpm(_) => "tpm",
            Backend::Pkcs11(_) => "pkcs11",
        }
    }

    /// Opens the key store; callable again (after dropping the previous one) to check that
    /// state persists.
    fn open(&self) -> Arc<dyn KeyStore> {
        match self {
            Backend::Software(dir) => Arc::new(SoftwareKeyStore::open(dir.path()).unwrap()),
            Backend::Tpm(tpm) => Arc::new(
                TpmKeyStore::open(&TpmConfig {
                    tcti: tpm.tcti.clone(),
                    seal_pcrs: vec![SEAL_PCR],
                })
                .unwrap(),
            ),
            Backend::Pkcs11(token) => Arc::new(
                Pkcs11KeyStore::open(&Pkcs11Config {
                    module: token.module.clone(),
                    token_label: token.label.clone(),
                    pin_file: token.pin_file.clone(),
                })
                .unwrap(),
            ),
        }
    }
}

// ---- the checks ----------------------------------------------------------------------------

fn describes_itself(b: &Backend) {
    let store = b.open();
    let info = store.describe();
    assert_eq!(info.kind, b.kind());
    let caps = store.capabilities();
    assert!(caps.anchors && caps.device_key && caps.seal && caps.counters);
    match b {
        Backend::Software(_) => {
            assert!(info.development_only);
            assert!(info.to_string().contains("DEVELOPMENT ONLY"), "{info}");
            assert!(!caps.anchors_hardware_locked && !caps.device_key_non_exportable);
        }
        Backend::Tpm(_) => {
            assert!(!info.development_only);
            assert!(caps.anchors_hardware_locked && caps.device_key_non_exportable);
            assert!(caps.seal_bound_to_pcrs && caps.counters_hardware_monotonic);
        }
        Backend::Pkcs11(_) => {
            assert!(!info.development_only);
            assert!(caps.anchors_hardware_locked && caps.device_key_non_exportable);
            assert!(!caps.seal_bound_to_pcrs);
        }
    }
}

fn anchors_install_once_and_stay_locked(b: &Backend) {
    let store = b.open();
    for role in Role::ALL {
        assert_eq!(store.anchors(role).unwrap(), None, "{role} before install");
    }
    let release = b"-----BEGIN PUBLIC KEY-----\nrelease authority\n-----END PUBLIC KEY-----\n";
    let fleet = b"-----BEGIN PUBLIC KEY-----\nfleet authority\n-----END PUBLIC KEY-----\n";
    store
        .install_anchors(Role::ReleaseAuthority, release)
        .unwrap();
    store.install_anchors(Role::FleetAuthority, fleet).unwrap();
    // A second install, with other bytes or the same, is refused.
    let err = store
        .install_anchors(Role::ReleaseAuthority, b"attacker key")
        .unwrap_err();
    assert!(
        matches!(
            err,
            KeyStoreError::AnchorsLocked {
                role: Role::ReleaseAuthority
            }
        ),
        "{err}"
    );
    assert!(matches!(
        store.install_anchors(Role::FleetAuthority, fleet),
        Err(KeyStoreError::AnchorsLocked { .. })
    ));
    drop(store);

    // After reopening: still there, still locked, others still empty.
    let store = b.open();
    assert_eq!(
        store.anchors(Role::ReleaseAuthority).unwrap().unwrap(),
        release
    );
    assert_eq!(store.anchors(Role::FleetAuthority).unwrap().unwrap(), fleet);
    assert_eq!(store.anchors(Role::ModelSigners).unwrap(), None);
    assert!(matches!(
        store.install_anchors(Role::ReleaseAuthority, b"attacker key"),
        Err(KeyStoreError::AnchorsLocked { .. })
    ));
    drop(store);

    // Below the trait: the device itself refuses to overwrite them.
    match b {
        Backend::Tpm(tpm) => tpm_owner_cannot_overwrite_anchor(&tpm.tcti, Role::ReleaseAuthority),
        Backend::Pkcs11(token) => pkcs11_token_refuses_anchor_change(token),
        Backend::Software(_) => {} // development only: file permissions, no hardware lock
    }
    let store = b.open();
    assert_eq!(
        store.anchors(Role::ReleaseAuthority).unwrap().unwrap(),
        release
    );
}

fn device_key_signs_verifiably(b: &Backend) {
    let store = b.open();
    assert!(matches!(
        store.device_public_key(),
        Err(KeyStoreError::NotProvisioned { .. })
    ));
    assert!(matches!(
        store.sign(b"x"),
        Err(KeyStoreError::NotProvisioned { .. })
    ));
    let pk = store.ensure_device_key().unwrap();
    assert_eq!(
        store.ensure_device_key().unwrap(),
        pk,
        "ensure is idempotent"
    );
    assert_eq!(store.device_public_key().unwrap(), pk);
    let vk = p256::ecdsa::VerifyingKey::from(&pk);
    for msg in [&b""[..], b"audit checkpoint 42", &[0xa5; 5000][..]] {
        let sig = store.sign(msg).unwrap();
        vk.verify(msg, &sig).unwrap();
        let der = p256::ecdsa::DerSignature::from(sig);
        vk.verify(msg, &der).unwrap();
        assert!(vk.verify(b"another message", &sig).is_err());
    }
    drop(store);
    // The same key after reopening.
    let store = b.open();
    assert_eq!(store.device_public_key().unwrap(), pk);
    if let Backend::Pkcs11(token) = b {
        drop(store);
        pkcs11_device_key_is_not_extractable(token);
    }
}

fn tls_handshake_is_signed_by_the_key_store(b: &Backend) {
    let store = b.open();
    let device = store.ensure_device_key().unwrap();
    let (ca_der, issuer) = test_ca();
    let spki = device.to_public_key_der().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["device.warden.test".to_owned()])
        .unwrap()
        .signed_by(
            &rcgen::SubjectPublicKeyInfo::from_der(spki.as_bytes()).unwrap(),
            &issuer,
        )
        .unwrap();
    let signing = Arc::new(KeyStoreSigningKey::new(Arc::clone(&store)).unwrap());
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let echoed = handshake_and_echo(
            vec![leaf.der().clone()],
            signing.clone(),
            ca_der.clone(),
            version,
        )
        .unwrap_or_else(|e| {
            panic!(
                "{:?} handshake through the {} key store: {e}",
                version.version,
                b.kind()
            )
        });
        assert_eq!(echoed, b"ping");
    }
    // A certificate for another key: the client must refuse the key store's signature, which
    // shows that the handshake signature really comes from the key store's device key.
    let other = rcgen::KeyPair::generate().unwrap();
    let wrong_leaf = rcgen::CertificateParams::new(vec!["device.warden.test".to_owned()])
        .unwrap()
        .signed_by(&other, &issuer)
        .unwrap();
    let err = handshake_and_echo(
        vec![wrong_leaf.der().clone()],
        signing,
        ca_der,
        &rustls::version::TLS13,
    )
    .unwrap_err();
    assert!(err.contains("ecrypt") || err.contains("ignature"), "{err}");
}

fn sealed_key_round_trips_and_resists_tampering(b: &Backend) {
    let store = b.open();
    let secret = [0x42u8; 32];
    let blob = store.seal(&secret).unwrap();
    assert!(
        !blob.windows(32).any(|w| w == secret),
        "the blob holds the secret in clear"
    );
    assert_eq!(store.unseal(&blob).unwrap().as_slice(), secret);
    // Two seals of the same secret differ (fresh IV / fresh sealed object).
    assert_ne!(store.seal(&secret).unwrap(), blob);
    drop(store);
    let store = b.open();
    assert_eq!(
        store.unseal(&blob).unwrap().as_slice(),
        secret,
        "after reopening"
    );

    let mut tampered = blob.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    assert!(store.unseal(&tampered).is_err(), "tampered blob unsealed");
    let mut foreign = blob.clone();
    foreign[4] = foreign[4].wrapping_add(1);
    assert!(matches!(
        store.unseal(&foreign),
        Err(KeyStoreError::MalformedSealedBlob { .. })
    ));
    assert!(store.seal(&[]).is_err());
    assert!(store.seal(&[0u8; 129]).is_err());
}

fn counters_never_go_back(b: &Backend) {
    let store = b.open();
    for c in [Counter::RevocationSerial, Counter::PolicySetSerial] {
        assert_eq!(store.counter(c).unwrap(), 0, "{c} starts at 0");
    }
    assert_eq!(
        store.advance_counter(Counter::RevocationSerial, 1).unwrap(),
        1
    );
    assert_eq!(
        store.advance_counter(Counter::RevocationSerial, 3).unwrap(),
        3
    );
    assert_eq!(
        store.advance_counter(Counter::RevocationSerial, 3).unwrap(),
        3
    );
    let err = store
        .advance_counter(Counter::RevocationSerial, 2)
        .unwrap_err();
    assert!(
        matches!(
            err,
            KeyStoreError::CounterRollback {
                current: 3,
                requested: 2,
                ..
            }
        ),
        "{err}"
    );
    assert!(matches!(
        store.advance_counter(Counter::RevocationSerial, 3 + MAX_COUNTER_STEP + 1),
        Err(KeyStoreError::CounterStepTooLarge { .. })
    ));
    assert_eq!(store.counter(Counter::RevocationSerial).unwrap(), 3);
    assert_eq!(
        store.counter(Counter::PolicySetSerial).unwrap(),
        0,
        "independent"
    );
    drop(store);
    let store = b.open();
    assert_eq!(
        store.counter(Counter::RevocationSerial).unwrap(),
        3,
        "persists"
    );
    assert!(store.advance_counter(Counter::RevocationSerial, 0).is_err());
    assert_eq!(
        store
            .advance_counter(Counter::RevocationSerial, 10)
            .unwrap(),
        10
    );
}

// ---- backend-specific: below the trait -----------------------------------------------------

/// The owner, with its (empty, on swtpm) authorization, still cannot write the anchor index:
/// it has no OWNERWRITE, and its policy (PolicyNvWritten NO) fails once written.
fn tpm_owner_cannot_overwrite_anchor(tcti: &str, role: Role) {
    use tss_esapi::handles::{NvIndexHandle, NvIndexTpmHandle, TpmHandle};
    use tss_esapi::interface_types::resource_handles::NvAuth;
    use tss_esapi::interface_types::session_handles::AuthSession;
    use tss_esapi::structures::MaxNvBuffer;
    let index = ANCHOR_NV_BASE
        + match role {
            Role::ModelSigners => 0,
            Role::ReleaseAuthority => 1,
            Role::FleetAuthority => 2,
            Role::TenantCas => 3,
        };
    let tpm = warden_keyd::tpm::Tpm::open(tcti).unwrap();
    let result = tpm
        .run(move |ctx| {
            let h = ctx
                .execute_without_session(|c| {
                    c.tr_from_tpm_public(TpmHandle::NvIndex(NvIndexTpmHandle::new(index).unwrap()))
                })
                .unwrap();
            let h = NvIndexHandle::from(h);
            ctx.execute_with_session(Some(AuthSession::Password), |c| {
                c.nv_write(
                    NvAuth::Owner,
                    h,
                    MaxNvBuffer::try_from(b"attacker".to_vec()).unwrap(),
                    0,
                )
            })
        })
        .unwrap();
    assert!(
        result.is_err(),
        "the TPM let the owner overwrite the anchors"
    );
}

fn pkcs11_session(
    token: &devices::Token,
) -> (cryptoki::context::Pkcs11, cryptoki::session::Session) {
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    use cryptoki::session::UserType;
    let p = Pkcs11::new(&token.module).unwrap();
    p.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    let slot = p
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| p.get_token_info(*s).unwrap().label().trim_end() == token.label)
        .unwrap();
    let s = p.open_rw_session(slot).unwrap();
    let pin = std::fs::read_to_string(&token.pin_file).unwrap();
    s.login(
        UserType::User,
        Some(&secrecy::SecretString::from(pin.trim_end().to_owned())),
    )
    .unwrap();
    (p, s)
}

/// The token refuses to modify or destroy the anchor object.
fn pkcs11_token_refuses_anchor_change(token: &devices::Token) {
    use cryptoki::object::{Attribute, ObjectClass};
    let (_p, s) = pkcs11_session(token);
    let found = s
        .find_objects(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Label(b"warden-anchor-release-authority".to_vec()),
        ])
        .unwrap();
    assert_eq!(found.len(), 1);
    assert!(
        s.update_attributes(found[0], &[Attribute::Value(b"attacker".to_vec())])
            .is_err(),
        "the token let the anchors be modified"
    );
    assert!(
        s.destroy_object(found[0]).is_err(),
        "the token let the anchors be destroyed"
    );
}

/// The device key's private half is sensitive and not extractable: its value cannot be read.
fn pkcs11_device_key_is_not_extractable(token: &devices::Token) {
    use cryptoki::object::{Attribute, AttributeType, ObjectClass};
    let (_p, s) = pkcs11_session(token);
    let key = s
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Label(b"warden-device-key".to_vec()),
        ])
        .unwrap();
    assert_eq!(key.len(), 1);
    let attrs = s
        .get_attributes(
            key[0],
            &[
                AttributeType::Sensitive,
                AttributeType::Extractable,
                AttributeType::Value,
            ],
        )
        .unwrap();
    assert!(attrs.contains(&Attribute::Sensitive(true)), "{attrs:?}");
    assert!(attrs.contains(&Attribute::Extractable(false)), "{attrs:?}");
    assert!(
        !attrs.iter().any(|a| matches!(a, Attribute::Value(_))),
        "the private value was readable"
    );
}

// ---- TPM only ------------------------------------------------------------------------------

/// The sealed data key unseals only while the sealing PCR holds its value: one extend and the
/// TPM refuses; a reset back to the sealed value (PCR 16 is resettable) and it unseals again.
#[test]
fn tpm_sealed_key_unseals_only_under_the_expected_pcrs() {
    let b = Backend::tpm();
    let store = b.open();
    let blob = store.seal(b"data key").unwrap();
    assert_eq!(store.unseal(&blob).unwrap().as_slice(), b"data key");
    let Backend::Tpm(tpm) = &b else {
        unreachable!()
    };
    drop(store);
    let raw = warden_keyd::tpm::Tpm::open(&tpm.tcti).unwrap();
    raw.extend_pcr(SEAL_PCR, [7u8; 32]).unwrap();
    drop(raw);
    let store = b.open();
    let err = store.unseal(&blob).unwrap_err();
    assert!(
        matches!(err, KeyStoreError::UnsealRefused { backend: "tpm", .. }),
        "{err}"
    );
    // Many refusals in a row: sessions are flushed (swtpm has three slots, 0x903 otherwise).
    for _ in 0..5 {
        assert!(store.unseal(&blob).is_err());
    }
    drop(store);
    let raw = warden_keyd::tpm::Tpm::open(&tpm.tcti).unwrap();
    raw.reset_pcr(SEAL_PCR).unwrap();
    drop(raw);
    let store = b.open();
    assert_eq!(store.unseal(&blob).unwrap().as_slice(), b"data key");
}

/// Many signatures in a row do not exhaust the TPM's session or object slots.
#[test]
fn tpm_many_operations_do_not_leak_sessions() {
    let b = Backend::tpm();
    let store = b.open();
    store.ensure_device_key().unwrap();
    for i in 0..20u32 {
        store.sign(&i.to_be_bytes()).unwrap();
        let blob = store.seal(b"k").unwrap();
        store.unseal(&blob).unwrap();
    }
    store.anchors(Role::TenantCas).unwrap();
}

/// Anchors larger than one NV write are refused, not truncated.
#[test]
fn tpm_refuses_anchors_larger_than_an_nv_write() {
    let b = Backend::tpm();
    let store = b.open();
    let err = store
        .install_anchors(Role::TenantCas, &vec![b'x'; 4096])
        .unwrap_err();
    assert!(
        matches!(err, KeyStoreError::AnchorsTooLarge { .. }),
        "{err}"
    );
    assert_eq!(store.anchors(Role::TenantCas).unwrap(), None);
}

// ---- helpers -------------------------------------------------------------------------------

fn test_ca() -> (
    CertificateDer<'static>,
    rcgen::Issuer<'static, rcgen::KeyPair>,
) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Warden test CA");
    let cert = params.self_signed(&key).unwrap();
    (cert.der().clone(), rcgen::Issuer::new(params, key))
}

/// A full handshake in memory, then "ping" from the client to the server.
fn handshake_and_echo(
    chain: Vec<CertificateDer<'static>>,
    key: Arc<KeyStoreSigningKey>,
    ca: CertificateDer<'static>,
    version: &'static rustls::SupportedProtocolVersion,
) -> Result<Vec<u8>, String> {
    use std::io::{Read as _, Write as _};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certified = rustls::sign::CertifiedKey::new(chain, key);
    let server_cfg = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[version])
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(certified)));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).unwrap();
    let client_cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut server = rustls::ServerConnection::new(Arc::new(server_cfg)).unwrap();
    let mut client = rustls::ClientConnection::new(
        Arc::new(client_cfg),
        ServerName::try_from("device.warden.test").unwrap(),
    )
    .unwrap();
    client.writer().write_all(b"ping").unwrap();
    for _ in 0..20 {
        let mut buf = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut buf).unwrap();
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            server.read_tls(&mut rd).unwrap();
            server
                .process_new_packets()
                .map_err(|e| format!("server: {e}"))?;
        }
        let mut buf = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut buf).unwrap();
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            client.read_tls(&mut rd).unwrap();
            client
                .process_new_packets()
                .map_err(|e| format!("client: {e}"))?;
        }
        if !client.is_handshaking() && !server.is_handshaking() && !client.wants_write() {
            let mut got = [0u8; 4];
            return match server.reader().read_exact(&mut got) {
                Ok(()) => Ok(got.to_vec()),
                Err(_) => continue,
            };
        }
    }
    Err("handshake did not finish".to_owned())
}

// ---- one test per check and backend --------------------------------------------------------

macro_rules! suite {
    ($($check:ident),* $(,)?) => {
        mod software {
            $( #[test] fn $check() { super::$check(&super::Backend::software()); } )*
        }
        mod tpm {
            $( #[test] fn $check() { super::$check(&super::Backend::tpm()); } )*
        }
        mod pkcs11 {
            $(
                #[test]
                fn $check() {
                    let name = concat!("pkcs11::", stringify!($check));
                    if let Some(token) = super::devices::run_pkcs11_in_child(name) {
                        super::$check(&super::Backend::Pkcs11(token));
                    }
                }
            )*
        }
    };
}

suite!(
    describes_itself,
    anchors_install_once_and_stay_locked,
    device_key_signs_verifiably,
    tls_handshake_is_signed_by_the_key_store,
    sealed_key_round_trips_and_resists_tampering,
    counters_never_go_back,
);
