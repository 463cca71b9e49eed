//! `[admin]`: the fleet-push listener.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::error::{Invalid, invalid};
use super::paths::{relative_opt, relative_vec};

/// `[admin]`: the fleet-push listener, HTTPS with client certificates from the fleet CA only.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address and port (keep it on loopback or a management network).
    pub listen: SocketAddr,
    /// PEM CA(s) that admin client certificates must chain to. With a key store whose
    /// fleet-authority anchors are certificates, those are used instead.
    #[serde(default, deserialize_with = "relative_opt")]
    pub client_ca: Option<PathBuf>,
    /// Certificate revocation lists (PEM or DER) for admin client certificates; re-read on
    /// SIGHUP (see `tls.client_crls`).
    #[serde(default, deserialize_with = "relative_vec")]
    pub client_crls: Vec<PathBuf>,
    /// Largest pushed archive (bytes, as sent and as unpacked).
    #[serde(default = "default_admin_max_upload_bytes")]
    pub max_upload_bytes: u64,
    /// Most entries in a pushed archive.
    #[serde(default = "default_admin_max_entries")]
    pub max_entries: usize,
    /// Accept pushed versions of models this file does not name (default: refused). Such a
    /// model runs with the defaults — the CPU, no batching, no value ranges — on the one
    /// `.onnx` or `.safetensors` file at the top of the bundle's `model/`; every check a
    /// configured model passes (signature, admission, revocation) applies the same.
    #[serde(default)]
    pub accept_new_models: bool,
}

fn default_admin_max_upload_bytes() -> u64 {
    4 * 1024 * 1024 * 1024
}

fn default_admin_max_entries() -> usize {
    10_000
}

impl AdminConfig {
    /// The rules of the section alone; whether a client CA can be found is checked with the
    /// whole config.
    pub(super) fn validate(&self) -> Result<(), Invalid> {
        if self.max_upload_bytes < 1024 {
            return Err(invalid("admin.max_upload_bytes", "must be at least 1 KiB"));
        }
        if !(1..=1_000_000).contains(&self.max_entries) {
            return Err(invalid(
                "admin.max_entries",
                "must be between 1 and 1000000",
            ));
        }
        Ok(())
    }
}
