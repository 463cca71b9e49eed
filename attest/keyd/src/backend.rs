//! Opening the configured key store backend: the hardware ones live here, in the key service;
//! the development-only software backend is `warden_keystore`'s.

use std::sync::Arc;

use warden_keystore::config::BackendConfig;
use warden_keystore::software::SoftwareKeyStore;
use warden_keystore::{KeyStore, KeyStoreError};

use crate::pkcs11::Pkcs11KeyStore;
use crate::tpm::keystore::TpmKeyStore;

/// Opens the configured backend.
pub fn open(config: &BackendConfig) -> Result<Arc<dyn KeyStore>, KeyStoreError> {
    Ok(match config {
        BackendConfig::Tpm(c) => Arc::new(TpmKeyStore::open(c)?),
        BackendConfig::Pkcs11(c) => Arc::new(Pkcs11KeyStore::open(c)?),
        BackendConfig::Software(c) => Arc::new(SoftwareKeyStore::open(&c.dir)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use warden_keystore::config::SoftwareConfig;

    #[test]
    fn the_software_backend_opens_and_says_what_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let sw = open(&BackendConfig::Software(SoftwareConfig {
            dir: dir.path().to_path_buf(),
        }))
        .unwrap();
        assert!(sw.describe().development_only);
    }
}
