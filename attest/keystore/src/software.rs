//! The software key store: files in a directory. **Development only.** Nothing here is
//! protected by hardware: anyone who can write the directory can replace an anchor, read the
//! device key, decrypt sealed data and reset a counter. [`KeyStore::describe`] says so, and
//! [`SoftwareKeyStore::open`] logs a warning.
//!
//! Layout: `device-key.pem` (PKCS#8, 0600), `anchors/<role>` (created once, 0444),
//! `seal.key` (32 random bytes, 0600), `counters/<name>` (decimal, replaced atomically).

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use aes_gcm::aead::{Aead as _, KeyInit as _};
use p256::ecdsa::signature::hazmat::PrehashSigner as _;
use p256::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _, LineEnding};
use rand_core::RngCore as _;
use sha2::Digest as _;
use zeroize::Zeroizing;

use crate::backend::{check_seal_size, counter_step, seal_body, seal_header};
use crate::{BackendInfo, Capabilities, Counter, KeyStore, KeyStoreError, Role};

const SEAL_TAG: u8 = 3;
/// The largest anchor file read back.
const MAX_ANCHOR_BYTES: u64 = 1024 * 1024;

/// Files in a directory; development only.
#[derive(Debug)]
pub struct SoftwareKeyStore {
    dir: PathBuf,
    /// Serializes read-modify-write of counters and key creation within this process.
    lock: Mutex<()>,
}

impl SoftwareKeyStore {
    /// Opens (creating 0700 if needed) the key store directory.
    pub fn open(dir: &Path) -> Result<Self, KeyStoreError> {
        for d in [dir.to_path_buf(), dir.join("anchors"), dir.join("counters")] {
            std::fs::create_dir_all(&d).map_err(|e| KeyStoreError::io(&d, e))?;
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| KeyStoreError::io(&d, e))?;
        }
        tracing::warn!(
            dir = %dir.display(),
            "software key store: DEVELOPMENT ONLY, keys are plain files and nothing is hardware-protected"
        );
        Ok(Self {
            dir: dir.to_path_buf(),
            lock: Mutex::new(()),
        })
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, ()> {
        // A panic while holding the lock leaves no partial state (writes are atomic renames).
        self.lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn device_key_path(&self) -> PathBuf {
        self.dir.join("device-key.pem")
    }

    fn load_device_key(&self) -> Result<Option<p256::SecretKey>, KeyStoreError> {
        let path = self.device_key_path();
        let pem = match std::fs::read_to_string(&path) {
            Ok(p) => Zeroizing::new(p),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(KeyStoreError::io(&path, e)),
        };
        p256::SecretKey::from_pkcs8_pem(&pem)
            .map(Some)
            .map_err(|e| KeyStoreError::InvalidInput {
                detail: format!("{}: {e}", path.display()),
            })
    }

    fn seal_key(&self) -> Result<Zeroizing<[u8; 32]>, KeyStoreError> {
        let path = self.dir.join("seal.key");
        match std::fs::read(&path) {
            Ok(bytes) => {
                let bytes = Zeroizing::new(bytes);
                let mut key = Zeroizing::new([0u8; 32]);
                if bytes.len() != 32 {
                    return Err(KeyStoreError::InvalidInput {
                        detail: format!("{} is not a 32-byte key", path.display()),
                    });
                }
                key.copy_from_slice(&bytes);
                Ok(key)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = Zeroizing::new([0u8; 32]);
                rand_core::OsRng.fill_bytes(key.as_mut());
                write_new(&path, key.as_ref(), 0o600)?;
                Ok(key)
            }
            Err(e) => Err(KeyStoreError::io(&path, e)),
        }
    }

    fn counter_path(&self, counter: Counter) -> PathBuf {
        self.dir.join("counters").join(counter.name())
    }

    fn read_counter(&self, counter: Counter) -> Result<u64, KeyStoreError> {
        let path = self.counter_path(counter);
        match std::fs::read_to_string(&path) {
            Ok(s) => s.trim().parse().map_err(|_| KeyStoreError::InvalidInput {
                detail: format!("{} does not hold a counter value", path.display()),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(KeyStoreError::io(&path, e)),
        }
    }
}

/// Creates `path` exclusively with `mode` and writes `data`, synced.
fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<(), KeyStoreError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| KeyStoreError::io(path, e))?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .map_err(|e| KeyStoreError::io(path, e))
}

/// Replaces `path` atomically (temporary file, fsync, rename, fsync of the directory).
fn replace_atomically(path: &Path, data: &[u8]) -> Result<(), KeyStoreError> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    write_new(&tmp, data, 0o600)?;
    std::fs::rename(&tmp, path).map_err(|e| KeyStoreError::io(path, e))?;
    if let Some(parent) = path.parent() {
        std::fs::File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(|e| KeyStoreError::io(parent, e))?;
    }
    Ok(())
}

impl KeyStore for SoftwareKeyStore {
    fn describe(&self) -> BackendInfo {
        BackendInfo {
            kind: "software",
            location: self.dir.display().to_string(),
            development_only: true,
        }
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            anchors: true,
            device_key: true,
            seal: true,
            counters: true,
            ..Capabilities::default()
        }
    }

    fn install_anchors(&self, role: Role, anchors: &[u8]) -> Result<(), KeyStoreError> {
        let path = self.dir.join("anchors").join(role.name());
        match write_new(&path, anchors, 0o444) {
            Err(KeyStoreError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::AlreadyExists =>
            {
                Err(KeyStoreError::AnchorsLocked { role })
            }
            other => other,
        }
    }

    fn anchors(&self, role: Role) -> Result<Option<Vec<u8>>, KeyStoreError> {
        let path = self.dir.join("anchors").join(role.name());
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(KeyStoreError::io(&path, e)),
        };
        let mut buf = Vec::new();
        std::io::Read::read_to_end(
            &mut std::io::Read::take(file, MAX_ANCHOR_BYTES + 1),
            &mut buf,
        )
        .map_err(|e| KeyStoreError::io(&path, e))?;
        if buf.len() as u64 > MAX_ANCHOR_BYTES {
            return Err(KeyStoreError::AnchorsTooLarge {
                role,
                size: buf.len(),
                limit: MAX_ANCHOR_BYTES as usize,
            });
        }
        Ok(Some(buf))
    }

    fn ensure_device_key(&self) -> Result<p256::PublicKey, KeyStoreError> {
        let _g = self.guard();
        if let Some(k) = self.load_device_key()? {
            return Ok(k.public_key());
        }
        let key = p256::SecretKey::random(&mut rand_core::OsRng);
        let pem = key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| KeyStoreError::Crypto {
                operation: "encoding the device key",
                detail: e.to_string(),
            })?;
        write_new(&self.device_key_path(), pem.as_bytes(), 0o600)?;
        Ok(key.public_key())
    }

    fn device_public_key(&self) -> Result<p256::PublicKey, KeyStoreError> {
        self.load_device_key()?
            .map(|k| k.public_key())
            .ok_or(KeyStoreError::NotProvisioned { what: "device key" })
    }

    fn sign(&self, message: &[u8]) -> Result<p256::ecdsa::Signature, KeyStoreError> {
        let key = self
            .load_device_key()?
            .ok_or(KeyStoreError::NotProvisioned { what: "device key" })?;
        p256::ecdsa::SigningKey::from(&key)
            .sign_prehash(&sha2::Sha256::digest(message))
            .map_err(|e| KeyStoreError::Crypto {
                operation: "signing",
                detail: e.to_string(),
            })
    }

    fn seal(&self, secret: &[u8]) -> Result<Vec<u8>, KeyStoreError> {
        check_seal_size(secret)?;
        let key = {
            let _g = self.guard();
            self.seal_key()?
        };
        let cipher = aes_gcm::Aes256Gcm::new_from_slice(key.as_ref()).map_err(|e| {
            KeyStoreError::Crypto {
                operation: "sealing",
                detail: e.to_string(),
            }
        })?;
        let mut nonce = [0u8; 12];
        rand_core::OsRng.fill_bytes(&mut nonce);
        let ct = cipher
            .encrypt(&aes_gcm::Nonce::from(nonce), secret)
            .map_err(|e| KeyStoreError::Crypto {
                operation: "sealing",
                detail: e.to_string(),
            })?;
        let mut out = seal_header(SEAL_TAG);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    fn unseal(&self, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyStoreError> {
        let body = seal_body(blob, SEAL_TAG, "software")?;
        if body.len() < 12 + 16 {
            return Err(KeyStoreError::MalformedSealedBlob {
                detail: "too short".to_owned(),
            });
        }
        let (nonce, ct) = body.split_at(12);
        let nonce: [u8; 12] = nonce
            .try_into()
            .map_err(|_| KeyStoreError::MalformedSealedBlob {
                detail: "bad nonce".to_owned(),
            })?;
        let key = {
            let _g = self.guard();
            self.seal_key()?
        };
        let cipher = aes_gcm::Aes256Gcm::new_from_slice(key.as_ref()).map_err(|e| {
            KeyStoreError::Crypto {
                operation: "unsealing",
                detail: e.to_string(),
            }
        })?;
        cipher
            .decrypt(&aes_gcm::Nonce::from(nonce), ct)
            .map(Zeroizing::new)
            .map_err(|_| KeyStoreError::UnsealRefused {
                backend: "software",
                detail: "authentication failed (other key or altered blob)".to_owned(),
            })
    }

    fn counter(&self, counter: Counter) -> Result<u64, KeyStoreError> {
        self.read_counter(counter)
    }

    fn advance_counter(&self, counter: Counter, to: u64) -> Result<u64, KeyStoreError> {
        let _g = self.guard();
        let current = self.read_counter(counter)?;
        if counter_step(counter, current, to)? > 0 {
            replace_atomically(&self.counter_path(counter), to.to_string().as_bytes())?;
        }
        Ok(to)
    }
}
