//! The agent's configuration: typed TOML, unknown fields refused, every cross-field rule checked
//! at load so that `warden serve` either starts with a coherent config or names what is wrong.
//! The commented reference is `agent/warden.example.toml`.
//!
//! One file per part of the file: [`server`] (`[server]`, `[tls]`, `[audit]`, `[state]`),
//! [`runtime`], [`model`] (`[[model]]`), [`trust`] (`[trust]`, `[keystore]`, `[admission]`),
//! [`admin`]; the gateway's own sections are [`crate::gateway::config`]'s. Each section checks
//! its own rules; the rules between sections are here. Relative paths are anchored to the
//! file's directory by the fields that hold them ([`paths`]).

pub mod admin;
mod error;
pub mod model;
pub mod paths;
pub mod runtime;
pub mod server;
pub mod trust;

use std::path::Path;

use serde::Deserialize;

pub use admin::AdminConfig;
use error::invalid;
pub use error::{ConfigError, Invalid};
pub use model::{AcceleratorConfig, BatchingConfig, InputRange, ModelConfig, valid_name};
pub use runtime::{RestartConfig, RuntimeConfig};
pub use server::{AuditConfig, ServerConfig, StateConfig, TlsConfig};
pub use trust::{AdmissionConfig, KeystoreConfig, PolicyConfig, TrustConfig};

/// The only schema this build reads.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub schema_version: u32,
    pub server: ServerConfig,
    pub tls: TlsConfig,
    #[serde(default)]
    pub audit: AuditConfig,
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// File-based model-signer anchors: only without a `[keystore]` (development mode).
    #[serde(default)]
    pub trust: TrustConfig,
    /// Where keys and trust anchors live. Present: anchors come from the key store's roles and
    /// every load is decided by `[admission]`.
    pub keystore: Option<KeystoreConfig>,
    /// Allowed stages, revocation list and refresh interval of admission (only with
    /// `[keystore]`; defaults when absent).
    pub admission: Option<AdmissionConfig>,
    /// The policy set (required with `[keystore]`; without one, every request is denied).
    pub policy: Option<PolicyConfig>,
    #[serde(default)]
    pub state: StateConfig,
    #[serde(default, rename = "model")]
    pub models: Vec<ModelConfig>,
    /// Identities, authorization, limits and circuit breaking (`crate::gateway`).
    #[serde(default)]
    pub gateway: crate::gateway::config::GatewayConfig,
    /// The Prometheus metrics listener.
    #[serde(default)]
    pub metrics: crate::gateway::config::MetricsConfig,
    /// The sandbox every model worker runs in (secure defaults;
    /// `warden_runtime_client::sandbox_policy`).
    #[serde(default)]
    pub sandbox: warden_runtime_client::sandbox_policy::SandboxPolicy,
    /// The fleet-push admin listener (`crate::admin`); absent: disabled.
    pub admin: Option<AdminConfig>,
}

impl Config {
    /// Reads, parses and validates a config file. Relative paths inside it are taken relative
    /// to the file's directory, so a config and its PKI can move together.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse(&text, path, base)
    }

    /// Parses and validates config text; `origin` names it in errors, `base` anchors relative
    /// paths.
    pub fn parse(text: &str, origin: &Path, base: &Path) -> Result<Config, ConfigError> {
        let config: Config =
            paths::anchored(base, || toml::from_str(text)).map_err(|e| ConfigError::Parse {
                path: origin.to_path_buf(),
                message: e.to_string().trim_end().to_string(),
            })?;
        config.validate().map_err(|e| ConfigError::Invalid {
            path: origin.to_path_buf(),
            field: e.field,
            message: e.message,
        })?;
        Ok(config)
    }

    /// Each section's rules, then the rules between sections.
    fn validate(&self) -> Result<(), Invalid> {
        if self.schema_version != SCHEMA_VERSION {
            return Err(invalid(
                "schema_version",
                format!(
                    "this build reads schema {SCHEMA_VERSION}, the file says {}",
                    self.schema_version
                ),
            ));
        }
        self.sandbox
            .validate()
            .map_err(|e| invalid(format!("sandbox.{}", e.field), e.message))?;
        self.server.validate()?;
        self.tls.validate()?;
        self.runtime.validate()?;
        self.runtime
            .validate_arena(self.sandbox.address_space_bytes)?;
        let mut seen = std::collections::HashSet::new();
        for (i, m) in self.models.iter().enumerate() {
            m.validate(i)?;
            if !seen.insert((&m.name, &m.version)) {
                return Err(invalid(
                    format!("model[{i}].version"),
                    format!("model {} version {} is configured twice", m.name, m.version),
                ));
            }
        }
        self.validate_trust()?;
        if let Some(a) = &self.admin {
            if a.client_ca.is_none() && self.keystore.is_none() {
                return Err(invalid(
                    "admin.client_ca",
                    "the admin listener requires client certificates: name the fleet CA \
                     (or configure a [keystore] whose fleet-authority anchors are certificates)",
                ));
            }
            a.validate()?;
        }
        self.gateway
            .validate()
            .and_then(|()| self.metrics.validate())
            .map_err(|(field, message)| invalid(field, message))
    }

    /// The rules between `[keystore]`, `[admission]`, `[trust]`, `tls.private_key` and the
    /// models' release documents.
    fn validate_trust(&self) -> Result<(), Invalid> {
        if self.keystore.is_some() && self.policy.is_none() {
            return Err(invalid(
                "policy",
                "a [keystore] is configured: name the policy set in [policy] directory, so \
                 every load is decided by serving/startup.rego",
            ));
        }
        if self.keystore.is_none() && self.admission.is_some() {
            return Err(invalid(
                "admission",
                "admission verifies against the key store's anchors and counters: \
                 configure [keystore] too",
            ));
        }
        if self.keystore.is_some() {
            // One source of anchors: files beside a key store would be a silent second root.
            if !self.trust.model_signer_keys.is_empty() {
                return Err(invalid(
                    "trust.model_signer_keys",
                    "with a [keystore] the model signers are the key store's anchors; \
                     remove the file-based anchors",
                ));
            }
            if !self.trust.model_signer_roots.is_empty() {
                return Err(invalid(
                    "trust.model_signer_roots",
                    "with a [keystore] the model signers are the key store's anchors; \
                     remove the file-based anchors",
                ));
            }
        } else {
            if self.tls.private_key.is_none() {
                return Err(invalid(
                    "tls.private_key",
                    "required without a [keystore] (with one, the device key signs handshakes)",
                ));
            }
            for (i, m) in self.models.iter().enumerate() {
                if m.release.is_some() {
                    return Err(invalid(
                        format!("model[{i}].release"),
                        "release statements are checked only with [keystore] and [admission]",
                    ));
                }
                if !m.attestations.is_empty() {
                    return Err(invalid(
                        format!("model[{i}].attestations"),
                        "attestations are checked only with [keystore] and [admission]",
                    ));
                }
            }
        }
        if self.keystore.is_none()
            && !self.models.is_empty()
            && self.trust.model_signer_keys.is_empty()
            && self.trust.model_signer_roots.is_empty()
        {
            return Err(invalid(
                "trust",
                "models are configured but no model signer is trusted: set \
                 trust.model_signer_keys or trust.model_signer_roots",
            ));
        }
        if !(1..=3650).contains(&self.trust.signer_expiry_warning_days) {
            return Err(invalid(
                "trust.signer_expiry_warning_days",
                "must be between 1 and 3650 days",
            ));
        }
        if let Some(a) = &self.admission {
            if !crate::policy::is_rule_path(&a.rule) {
                return Err(invalid(
                    "admission.rule",
                    "must name a rule as data.<package>.<rule> (e.g. data.serving.startup.permit)",
                ));
            }
            if a.allowed_stages.is_empty() {
                return Err(invalid(
                    "admission.allowed_stages",
                    "name at least one stage (e.g. [\"Approved\"])",
                ));
            }
            if !(1..=86_400).contains(&a.refresh_interval_s) {
                return Err(invalid(
                    "admission.refresh_interval_s",
                    "must be between 1 second and one day",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
