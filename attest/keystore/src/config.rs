//! Which key store backend to open, as configured. These are data only: opening a TPM or a
//! PKCS#11 token is the key service's (`warden-keyd`); the development-only software backend
//! is opened by this crate ([`crate::software::SoftwareKeyStore`]).

use std::path::PathBuf;

/// The configuration of a key store backend, as in the agent's TOML:
///
/// ```toml
/// [keystore]
/// backend = "tpm"                 # or "pkcs11", or "software-development-only"
/// tcti = "device:/dev/tpmrm0"
/// seal_pcrs = [0, 2, 4, 7]
/// ```
///
/// The software backend's name says what it is: choosing it is an explicit opt-in.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(tag = "backend")]
pub enum BackendConfig {
    /// A TPM 2.0.
    #[serde(rename = "tpm")]
    Tpm(TpmConfig),
    /// A PKCS#11 token.
    #[serde(rename = "pkcs11")]
    Pkcs11(Pkcs11Config),
    /// Files in `dir`: development only.
    #[serde(rename = "software-development-only")]
    Software(SoftwareConfig),
}

/// Configuration of the development-only software backend.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct SoftwareConfig {
    /// The directory of the key files (created 0700 if absent).
    pub dir: PathBuf,
}

/// Configuration of the TPM backend.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct TpmConfig {
    /// TCTI: `device:/dev/tpmrm0` in production, `swtpm:host=…,port=…` for tests.
    pub tcti: String,
    /// SHA-256 PCRs a sealed data key is bound to. Default 0, 2, 4, 7: firmware, option ROMs,
    /// boot loader and Secure Boot state.
    #[serde(default = "default_seal_pcrs")]
    pub seal_pcrs: Vec<u32>,
}

fn default_seal_pcrs() -> Vec<u32> {
    vec![0, 2, 4, 7]
}

/// Configuration of the PKCS#11 backend. There is no PIN field: the PIN is read from
/// `pin_file` only.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Pkcs11Config {
    /// The module (`/usr/lib/softhsm/libsofthsm2.so`, a vendor library).
    pub module: PathBuf,
    /// The token's label.
    pub token_label: String,
    /// A file holding the user PIN (trailing newline ignored); e.g. a systemd credential.
    pub pin_file: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_names_each_backend_and_refuses_unknown_fields() {
        let tpm: BackendConfig =
            serde_json::from_str(r#"{"backend": "tpm", "tcti": "device:/dev/tpmrm0"}"#).unwrap();
        assert_eq!(
            tpm,
            BackendConfig::Tpm(TpmConfig {
                tcti: "device:/dev/tpmrm0".to_owned(),
                seal_pcrs: vec![0, 2, 4, 7],
            })
        );
        let p11: BackendConfig = serde_json::from_str(
            r#"{"backend": "pkcs11", "module": "/m.so", "token_label": "t", "pin_file": "/p"}"#,
        )
        .unwrap();
        assert!(matches!(p11, BackendConfig::Pkcs11(_)));
        // A PIN inline is an unknown field, refused.
        assert!(
            serde_json::from_str::<BackendConfig>(
                r#"{"backend": "pkcs11", "module": "/m.so", "token_label": "t", "pin_file": "/p", "pin": "1234"}"#
            )
            .is_err()
        );
        // The development backend is only chosen by its full name.
        assert!(
            serde_json::from_str::<BackendConfig>(r#"{"backend": "software", "dir": "/d"}"#)
                .is_err()
        );
    }
}
