//! `[trust]`, `[keystore]` and `[admission]`: who may sign models (files, in development),
//! where the key store is, and the startup policy that decides every load.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use warden_keystore::config::BackendConfig;

use super::paths::{anchor, relative, relative_opt, relative_vec};

/// Who may sign the models this appliance serves. A model loads when its signature verifies
/// against any one anchor.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustConfig {
    /// PEM public keys of model signers (OMS key method).
    #[serde(default, deserialize_with = "relative_vec")]
    pub model_signer_keys: Vec<PathBuf>,
    /// PEM root certificates for model signers (OMS certificate method).
    #[serde(default, deserialize_with = "relative_vec")]
    pub model_signer_roots: Vec<PathBuf>,
    /// Certificate revocation lists (PEM or DER) for model signers' certificates (certificate
    /// method, with file roots or the key store's): once any is configured, a signing
    /// certificate whose issuer has no CRL here is refused. Re-read on SIGHUP: with a key store
    /// the refresh that follows unloads a version whose signer is revoked; in development mode
    /// they decide the loads and pushes that follow.
    #[serde(default, deserialize_with = "relative_vec")]
    pub model_signer_crls: Vec<PathBuf>,
    /// Days before a loaded model's signing certificate chain expires from which `warden
    /// check`, `warden status` and the metrics warn (a chain must be valid when a model is
    /// verified, so past it the model does not load again). Applies with a key store too.
    #[serde(default = "default_signer_expiry_warning_days")]
    pub signer_expiry_warning_days: u32,
}

impl Default for TrustConfig {
    fn default() -> Self {
        TrustConfig {
            model_signer_keys: Vec::new(),
            model_signer_roots: Vec::new(),
            model_signer_crls: Vec::new(),
            signer_expiry_warning_days: default_signer_expiry_warning_days(),
        }
    }
}

fn default_signer_expiry_warning_days() -> u32 {
    30
}

impl TrustConfig {
    /// How long before a signing chain's expiry the operator is warned.
    pub fn signer_expiry_warning(&self) -> Duration {
        Duration::from_secs(u64::from(self.signer_expiry_warning_days) * 86_400)
    }
}

/// Where the key store is: in this process (a backend of `warden_keystore`) or behind
/// the key service's socket (`warden keyd`). Exactly one of `backend` and `keyd_socket`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "toml::Table")]
pub enum KeystoreConfig {
    /// `backend = "software-development-only"`, `dir = …`: key files in this process, for the
    /// demo and development. A TPM or an HSM is reached only through the key service.
    Development(warden_keystore::config::SoftwareConfig),
    /// `keyd_socket = "/run/warden/keyd.sock"`.
    Keyd { socket: PathBuf },
}

/// Why a `[keystore]` section was refused.
#[derive(Debug, thiserror::Error)]
pub enum KeystoreConfigError {
    #[error(
        "set either keystore.backend = \"software-development-only\" (development) or \
         keystore.keyd_socket (the key service), not both"
    )]
    Both,
    #[error(
        "name keystore.keyd_socket (the key service, which holds the TPM or HSM) or, for \
         development, keystore.backend = \"software-development-only\""
    )]
    Neither,
    #[error(
        "unknown field keystore.{0}: with keyd_socket the key service holds the backend's settings"
    )]
    BesideSocket(String),
    #[error("keystore.keyd_socket must be a path string")]
    SocketNotAPath,
    #[error("keystore: {0}")]
    Backend(String),
    #[error(
        "keystore.backend: the agent reaches a TPM or an HSM only through the key service: give \
         this backend to warden-keyd (keyd.toml) and set keystore.keyd_socket here"
    )]
    HardwareInProcess,
}

impl TryFrom<toml::Table> for KeystoreConfig {
    type Error = KeystoreConfigError;

    fn try_from(table: toml::Table) -> Result<Self, KeystoreConfigError> {
        match (table.contains_key("backend"), table.get("keyd_socket")) {
            (true, Some(_)) => Err(KeystoreConfigError::Both),
            (false, None) => Err(KeystoreConfigError::Neither),
            (false, Some(socket)) => {
                if let Some(other) = table.keys().find(|k| *k != "keyd_socket") {
                    return Err(KeystoreConfigError::BesideSocket(other.clone()));
                }
                let socket = socket.as_str().ok_or(KeystoreConfigError::SocketNotAPath)?;
                Ok(KeystoreConfig::Keyd {
                    socket: anchor(PathBuf::from(socket)),
                })
            }
            (true, None) => {
                let backend: BackendConfig =
                    toml::Value::Table(table)
                        .try_into()
                        .map_err(|e: toml::de::Error| {
                            // The message alone: the span points into a table rebuilt here, not
                            // into the operator's file.
                            KeystoreConfigError::Backend(e.message().trim_end().to_owned())
                        })?;
                match backend {
                    BackendConfig::Software(mut c) => {
                        c.dir = anchor(c.dir);
                        Ok(KeystoreConfig::Development(c))
                    }
                    BackendConfig::Tpm(_) | BackendConfig::Pkcs11(_) => {
                        Err(KeystoreConfigError::HardwareInProcess)
                    }
                }
            }
        }
    }
}

/// The policy set: every policy the agent evaluates (`serving/startup.rego`,
/// `serving/routes.rego`, those to come) with its data documents (`data.json`), one digest
/// over them all (what releases pin and loads measure).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// The set's directory. With a `[keystore]` it is the set at first start; from then on
    /// only a signed push replaces it.
    #[serde(deserialize_with = "relative")]
    pub directory: PathBuf,
}

/// Model admission: `serving/startup.rego` of the policy set decides every load and every
/// refresh (with a `[keystore]`; every field has a default).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdmissionConfig {
    /// The entry point admission reads: Warden's `decision` object (`{allow, reasons}`, the
    /// default) or a boolean rule such as the specification's `data.serving.startup.permit`.
    #[serde(default = "default_admission_rule")]
    pub rule: String,
    /// Release stages this appliance serves.
    #[serde(default = "default_allowed_stages")]
    pub allowed_stages: Vec<warden_attest::release::Stage>,
    /// The fleet authority's signed revocation list. Once one was accepted, its absence is
    /// refused (`revocation_list_missing`).
    #[serde(default, deserialize_with = "relative_opt")]
    pub revocation_list: Option<PathBuf>,
    /// Seconds between re-runs of admission on every loaded version (also on SIGHUP).
    #[serde(default = "default_refresh_interval_s")]
    pub refresh_interval_s: u64,
}

fn default_admission_rule() -> String {
    crate::models::admission::DECISION_RULE.to_owned()
}
fn default_allowed_stages() -> Vec<warden_attest::release::Stage> {
    vec![warden_attest::release::Stage::Approved]
}
fn default_refresh_interval_s() -> u64 {
    60
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            rule: default_admission_rule(),
            allowed_stages: default_allowed_stages(),
            revocation_list: None,
            refresh_interval_s: default_refresh_interval_s(),
        }
    }
}

impl AdmissionConfig {
    pub fn refresh_interval(&self) -> Duration {
        Duration::from_secs(self.refresh_interval_s)
    }
}
