//! The PKCS#11 key store (`cryptoki` 0.12), tested on SoftHSM2.
//!
//! - **Device key**: an EC P-256 key pair generated on the token (`CKA_SENSITIVE`, not
//!   `CKA_EXTRACTABLE`), label `warden-device-key`. Messages are hashed on the host and signed
//!   with `CKM_ECDSA` (SoftHSM has no `CKM_ECDSA_SHA256`).
//! - **Anchors**: `CKO_DATA` token objects labelled `warden-anchor-<role>`, created with
//!   `CKA_MODIFIABLE=false` and `CKA_DESTROYABLE=false`: the token refuses to change or delete
//!   them through the API once created.
//! - **Seal**: AES-256-GCM (`CKM_AES_GCM`) under a non-extractable AES key on the token,
//!   label `warden-seal-key`; the IV is drawn on the host and kept in the blob.
//! - **Counters**: `CKO_DATA` objects `warden-counter-<name>` holding 8 big-endian bytes
//!   (replaced by create-then-destroy; the highest value wins). A
//!   holder of the user PIN could rewrite one: this is anti-rollback against replayed input,
//!   not against the PIN holder (the TPM backend's NV counters are hardware-monotonic).
//!
//! The user PIN is read from a file (or a systemd credential, which is a file under
//! `$CREDENTIALS_DIRECTORY`), kept in a zeroizing secret, and never logged.

use std::path::Path;
use std::sync::Mutex;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use rand_core::RngCore as _;
use secrecy::SecretString;
use sha2::Digest as _;
use zeroize::Zeroizing;

use warden_keystore::backend::{check_seal_size, counter_step, seal_body, seal_header};
use warden_keystore::config::Pkcs11Config;
use warden_keystore::{BackendInfo, Capabilities, Counter, KeyStore, KeyStoreError, Role};

const SEAL_TAG: u8 = 2;
const DEVICE_KEY_LABEL: &str = "warden-device-key";
const SEAL_KEY_LABEL: &str = "warden-seal-key";
/// DER of the P-256 curve OID, for `CKA_EC_PARAMS`.
const P256_OID_DER: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// The largest anchor object accepted.
const MAX_ANCHOR_BYTES: usize = 64 * 1024;

/// A PKCS#11 token. A module is a process-wide singleton (`C_Initialize` once, `C_Finalize`
/// on drop): open one `Pkcs11KeyStore` per process (the key service) and share it.
pub struct Pkcs11KeyStore {
    location: String,
    /// Declared before `_pkcs11` so the session closes before the library is finalized.
    session: Mutex<Session>,
    _pkcs11: Pkcs11,
}

impl std::fmt::Debug for Pkcs11KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11KeyStore")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

/// Reads a PIN file: the first line, without its line ending.
pub fn read_pin_file(path: &Path) -> Result<SecretString, KeyStoreError> {
    let raw =
        Zeroizing::new(std::fs::read_to_string(path).map_err(|e| KeyStoreError::io(path, e))?);
    let pin = raw.lines().next().unwrap_or_default();
    if pin.is_empty() {
        return Err(KeyStoreError::Config {
            detail: format!("PIN file {} is empty", path.display()),
        });
    }
    Ok(SecretString::from(pin.to_owned()))
}

fn p11(operation: &'static str) -> impl Fn(cryptoki::error::Error) -> KeyStoreError {
    move |e| KeyStoreError::pkcs11(operation, e)
}

impl Pkcs11KeyStore {
    /// Loads the module, finds the token by label and logs in as the user.
    pub fn open(config: &Pkcs11Config) -> Result<Self, KeyStoreError> {
        let pin: AuthPin = read_pin_file(&config.pin_file)?;
        let pkcs11 = Pkcs11::new(&config.module).map_err(|e| KeyStoreError::Config {
            detail: format!(
                "cannot load PKCS#11 module {}: {e}",
                config.module.display()
            ),
        })?;
        pkcs11
            .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
            .map_err(p11("C_Initialize"))?;
        let mut found = None;
        for slot in pkcs11
            .get_slots_with_token()
            .map_err(p11("C_GetSlotList"))?
        {
            let info = pkcs11.get_token_info(slot).map_err(p11("C_GetTokenInfo"))?;
            if info.label().trim_end() == config.token_label {
                found = Some(slot);
                break;
            }
        }
        let slot = found.ok_or_else(|| KeyStoreError::Config {
            detail: format!(
                "no token labelled {:?} in {}",
                config.token_label,
                config.module.display()
            ),
        })?;
        let session = pkcs11.open_rw_session(slot).map_err(p11("C_OpenSession"))?;
        session
            .login(UserType::User, Some(&pin))
            .map_err(p11("C_Login"))?;
        Ok(Self {
            location: format!("{} token {:?}", config.module.display(), config.token_label),
            session: Mutex::new(session),
            _pkcs11: pkcs11,
        })
    }

    fn with_session<T>(
        &self,
        f: impl FnOnce(&Session) -> Result<T, KeyStoreError>,
    ) -> Result<T, KeyStoreError> {
        let session = self
            .session
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&session)
    }
}

fn find_one(
    session: &Session,
    class: ObjectClass,
    label: &str,
) -> Result<Option<ObjectHandle>, KeyStoreError> {
    let found = session
        .find_objects(&[
            Attribute::Token(true),
            Attribute::Class(class),
            Attribute::Label(label.as_bytes().to_vec()),
        ])
        .map_err(p11("C_FindObjects"))?;
    match found.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(*one)),
        _ => Err(KeyStoreError::InvalidInput {
            detail: format!("{} objects labelled {label:?} on the token", found.len()),
        }),
    }
}

fn read_value(session: &Session, object: ObjectHandle) -> Result<Vec<u8>, KeyStoreError> {
    let attrs = session
        .get_attributes(object, &[AttributeType::Value])
        .map_err(p11("C_GetAttributeValue"))?;
    attrs
        .into_iter()
        .find_map(|a| match a {
            Attribute::Value(v) => Some(v),
            _ => None,
        })
        .ok_or_else(|| KeyStoreError::pkcs11("C_GetAttributeValue", "no CKA_VALUE"))
}

fn device_public(session: &Session) -> Result<Option<p256::PublicKey>, KeyStoreError> {
    let Some(public) = find_one(session, ObjectClass::PUBLIC_KEY, DEVICE_KEY_LABEL)? else {
        return Ok(None);
    };
    let attrs = session
        .get_attributes(public, &[AttributeType::EcPoint])
        .map_err(p11("C_GetAttributeValue"))?;
    let point = attrs
        .into_iter()
        .find_map(|a| match a {
            Attribute::EcPoint(v) => Some(v),
            _ => None,
        })
        .ok_or_else(|| KeyStoreError::pkcs11("C_GetAttributeValue", "no CKA_EC_POINT"))?;
    // CKA_EC_POINT is a DER OCTET STRING around the SEC1 point (some tokens give it bare).
    let sec1 = match point.as_slice() {
        [0x04, len, rest @ ..] if usize::from(*len) == rest.len() => rest,
        other => other,
    };
    p256::PublicKey::from_sec1_bytes(sec1)
        .map(Some)
        .map_err(|e| KeyStoreError::InvalidInput {
            detail: format!("device public key on the token is not a P-256 point: {e}"),
        })
}

fn seal_key(session: &Session, create: bool) -> Result<ObjectHandle, KeyStoreError> {
    if let Some(k) = find_one(session, ObjectClass::SECRET_KEY, SEAL_KEY_LABEL)? {
        return Ok(k);
    }
    if !create {
        return Err(KeyStoreError::NotProvisioned {
            what: "the token's seal key",
        });
    }
    session
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Encrypt(true),
                Attribute::Decrypt(true),
                Attribute::ValueLen(32.into()),
                Attribute::Label(SEAL_KEY_LABEL.as_bytes().to_vec()),
            ],
        )
        .map_err(p11("C_GenerateKey (seal key)"))
}

fn counter_label(counter: Counter) -> String {
    format!("warden-counter-{}", counter.name())
}

fn anchor_label(role: Role) -> String {
    format!("warden-anchor-{}", role.name())
}

impl KeyStore for Pkcs11KeyStore {
    fn describe(&self) -> BackendInfo {
        BackendInfo {
            kind: "pkcs11",
            location: self.location.clone(),
            development_only: false,
        }
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            anchors: true,
            anchors_hardware_locked: true,
            device_key: true,
            device_key_non_exportable: true,
            seal: true,
            seal_bound_to_pcrs: false,
            counters: true,
            counters_hardware_monotonic: false,
            pcrs: false,
        }
    }

    fn install_anchors(&self, role: Role, anchors: &[u8]) -> Result<(), KeyStoreError> {
        if anchors.is_empty() || anchors.len() > MAX_ANCHOR_BYTES {
            return Err(KeyStoreError::AnchorsTooLarge {
                role,
                size: anchors.len(),
                limit: MAX_ANCHOR_BYTES,
            });
        }
        let label = anchor_label(role);
        self.with_session(|s| {
            if find_one(s, ObjectClass::DATA, &label)?.is_some() {
                return Err(KeyStoreError::AnchorsLocked { role });
            }
            s.create_object(&[
                Attribute::Class(ObjectClass::DATA),
                Attribute::Token(true),
                Attribute::Private(false),
                Attribute::Modifiable(false),
                Attribute::Destroyable(false),
                Attribute::Label(label.as_bytes().to_vec()),
                Attribute::Application(b"warden".to_vec()),
                Attribute::Value(anchors.to_vec()),
            ])
            .map_err(p11("C_CreateObject (anchors)"))?;
            Ok(())
        })
    }

    fn anchors(&self, role: Role) -> Result<Option<Vec<u8>>, KeyStoreError> {
        let label = anchor_label(role);
        self.with_session(|s| {
            let Some(obj) = find_one(s, ObjectClass::DATA, &label)? else {
                return Ok(None);
            };
            let attrs = s
                .get_attributes(obj, &[AttributeType::Modifiable])
                .map_err(p11("C_GetAttributeValue"))?;
            if attrs
                .iter()
                .any(|a| matches!(a, Attribute::Modifiable(true)))
            {
                return Err(KeyStoreError::InvalidInput {
                    detail: format!(
                        "the {role} anchors object on the token is modifiable: it is not the one \
                         Warden installed"
                    ),
                });
            }
            read_value(s, obj).map(Some)
        })
    }

    fn ensure_device_key(&self) -> Result<p256::PublicKey, KeyStoreError> {
        self.with_session(|s| {
            if let Some(pk) = device_public(s)? {
                return Ok(pk);
            }
            let label = DEVICE_KEY_LABEL.as_bytes().to_vec();
            s.generate_key_pair(
                &Mechanism::EccKeyPairGen,
                &[
                    Attribute::Token(true),
                    Attribute::Private(false),
                    Attribute::KeyType(KeyType::EC),
                    Attribute::EcParams(P256_OID_DER.to_vec()),
                    Attribute::Verify(true),
                    Attribute::Label(label.clone()),
                ],
                &[
                    Attribute::Token(true),
                    Attribute::Private(true),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(false),
                    Attribute::Sign(true),
                    Attribute::Label(label),
                ],
            )
            .map_err(p11("C_GenerateKeyPair (device key)"))?;
            device_public(s)?.ok_or_else(|| {
                KeyStoreError::pkcs11("C_GenerateKeyPair", "the new public key is not found")
            })
        })
    }

    fn device_public_key(&self) -> Result<p256::PublicKey, KeyStoreError> {
        self.with_session(|s| {
            device_public(s)?.ok_or(KeyStoreError::NotProvisioned { what: "device key" })
        })
    }

    fn sign(&self, message: &[u8]) -> Result<p256::ecdsa::Signature, KeyStoreError> {
        let digest = sha2::Sha256::digest(message);
        self.with_session(|s| {
            let key = find_one(s, ObjectClass::PRIVATE_KEY, DEVICE_KEY_LABEL)?
                .ok_or(KeyStoreError::NotProvisioned { what: "device key" })?;
            let raw = s
                .sign(&Mechanism::Ecdsa, key, &digest)
                .map_err(p11("C_Sign"))?;
            p256::ecdsa::Signature::from_slice(&raw).map_err(|e| KeyStoreError::InvalidInput {
                detail: format!("the token returned a malformed ECDSA signature: {e}"),
            })
        })
    }

    fn seal(&self, secret: &[u8]) -> Result<Vec<u8>, KeyStoreError> {
        check_seal_size(secret)?;
        self.with_session(|s| {
            let key = seal_key(s, true)?;
            let mut iv = [0u8; 12];
            rand_core::OsRng.fill_bytes(&mut iv);
            let mut iv_param = iv;
            let params = GcmParams::new(&mut iv_param, b"warden-seal-v1", 128.into())
                .map_err(p11("CKM_AES_GCM parameters"))?;
            let ct = s
                .encrypt(&Mechanism::AesGcm(params), key, secret)
                .map_err(p11("C_Encrypt (seal)"))?;
            let mut out = seal_header(SEAL_TAG);
            out.extend_from_slice(&iv);
            out.extend_from_slice(&ct);
            Ok(out)
        })
    }

    fn unseal(&self, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyStoreError> {
        let body = seal_body(blob, SEAL_TAG, "pkcs11")?;
        if body.len() < 12 + 16 {
            return Err(KeyStoreError::MalformedSealedBlob {
                detail: "too short".to_owned(),
            });
        }
        let (iv, ct) = body.split_at(12);
        self.with_session(|s| {
            let key = seal_key(s, false)?;
            let mut iv_param = [0u8; 12];
            iv_param.copy_from_slice(iv);
            let params = GcmParams::new(&mut iv_param, b"warden-seal-v1", 128.into())
                .map_err(p11("CKM_AES_GCM parameters"))?;
            s.decrypt(&Mechanism::AesGcm(params), key, ct)
                .map(Zeroizing::new)
                .map_err(|e| KeyStoreError::UnsealRefused {
                    backend: "pkcs11",
                    detail: format!("the token refused to decrypt ({e})"),
                })
        })
    }

    fn counter(&self, counter: Counter) -> Result<u64, KeyStoreError> {
        let label = counter_label(counter);
        self.with_session(|s| counter_read(s, &label, counter).map(|(_, v)| v))
    }

    fn advance_counter(&self, counter: Counter, to: u64) -> Result<u64, KeyStoreError> {
        let label = counter_label(counter);
        self.with_session(|s| {
            let (obj, current) = counter_read(s, &label, counter)?;
            if counter_step(counter, current, to)? == 0 {
                return Ok(to);
            }
            // Tokens may refuse to change CKA_VALUE (SoftHSM does): write a new object first,
            // then destroy the older ones. A crash in between leaves two, and reads take the
            // highest, so the counter never goes back.
            s.create_object(&[
                Attribute::Class(ObjectClass::DATA),
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Label(label.as_bytes().to_vec()),
                Attribute::Application(b"warden".to_vec()),
                Attribute::Value(to.to_be_bytes().to_vec()),
            ])
            .map_err(p11("C_CreateObject (counter)"))?;
            for old in obj {
                s.destroy_object(old)
                    .map_err(p11("C_DestroyObject (old counter)"))?;
            }
            Ok(to)
        })
    }
}

/// The counter's objects and the highest value among them (0 when there is none).
fn counter_read(
    s: &Session,
    label: &str,
    counter: Counter,
) -> Result<(Vec<ObjectHandle>, u64), KeyStoreError> {
    let objects = s
        .find_objects(&[
            Attribute::Token(true),
            Attribute::Class(ObjectClass::DATA),
            Attribute::Label(label.as_bytes().to_vec()),
        ])
        .map_err(p11("C_FindObjects"))?;
    let mut highest = 0;
    for obj in &objects {
        let v = read_value(s, *obj)?;
        let bytes: [u8; 8] = v
            .as_slice()
            .try_into()
            .map_err(|_| KeyStoreError::InvalidInput {
                detail: format!("counter {counter} on the token is not 8 bytes"),
            })?;
        highest = highest.max(u64::from_be_bytes(bytes));
    }
    Ok((objects, highest))
}
