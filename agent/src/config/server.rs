//! `[server]`, `[tls]`, `[audit]` and `[state]`: the inference listener, its TLS, where the
//! audit trail and the agent's state go.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::error::{Invalid, invalid};
use super::paths::{relative, relative_opt, relative_vec};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address of the inference listener.
    pub listen: SocketAddr,
    /// Largest request body accepted, in bytes.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Largest request head (request line and headers) accepted, in bytes.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Time allowed for one request from its first byte to its response.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Time a client gets to complete the TLS handshake.
    #[serde(default = "default_handshake_timeout_ms")]
    pub handshake_timeout_ms: u64,
    /// On SIGTERM, how long in-flight requests may take before connections are closed.
    #[serde(default = "default_shutdown_grace_ms")]
    pub shutdown_grace_ms: u64,
    /// Concurrent HTTP/2 streams per connection.
    #[serde(default = "default_max_concurrent_streams")]
    pub max_concurrent_streams: u32,
    /// Open connections at once; further ones wait in the kernel backlog.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

impl ServerConfig {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
}

impl ServerConfig {
    pub(super) fn validate(&self) -> Result<(), Invalid> {
        if !(1024..=1024 * 1024 * 1024).contains(&self.max_body_bytes) {
            return Err(invalid(
                "server.max_body_bytes",
                "must be between 1 KiB and 1 GiB",
            ));
        }
        if !(1024..=1024 * 1024).contains(&self.max_header_bytes) {
            return Err(invalid(
                "server.max_header_bytes",
                "must be between 1 KiB and 1 MiB",
            ));
        }
        for (field, ms) in [
            ("server.request_timeout_ms", self.request_timeout_ms),
            ("server.handshake_timeout_ms", self.handshake_timeout_ms),
            ("server.shutdown_grace_ms", self.shutdown_grace_ms),
        ] {
            if !(1..=3_600_000).contains(&ms) {
                return Err(invalid(field, "must be between 1 ms and one hour"));
            }
        }
        if self.max_concurrent_streams == 0 {
            return Err(invalid(
                "server.max_concurrent_streams",
                "must be at least 1",
            ));
        }
        if self.max_connections == 0 {
            return Err(invalid("server.max_connections", "must be at least 1"));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain of the server, leaf first.
    #[serde(deserialize_with = "relative")]
    pub certificate: PathBuf,
    /// PEM private key of the server (PKCS#8, SEC1 or PKCS#1). Absent: the handshake is
    /// signed by the key store's device key (requires `[keystore]`; the certificate must
    /// certify that key).
    #[serde(default, deserialize_with = "relative_opt")]
    pub private_key: Option<PathBuf>,
    /// PEM CA certificates that client certificates must chain to.
    #[serde(default, deserialize_with = "relative_opt")]
    pub client_ca: Option<PathBuf>,
    /// Certificate revocation lists (PEM or DER) for client certificates: a client whose
    /// issuing CA has no CRL here is refused once any is configured. Re-read on SIGHUP; a list
    /// that does not read keeps the ones in force.
    #[serde(default, deserialize_with = "relative_vec")]
    pub client_crls: Vec<PathBuf>,
    /// Serve clients that present no certificate. Only for local experiments: every request
    /// is then anonymous. Off by default; `client_ca` is then still used when a client offers
    /// a certificate.
    #[serde(default)]
    pub insecure_allow_anonymous_clients: bool,
}

impl TlsConfig {
    pub(super) fn validate(&self) -> Result<(), Invalid> {
        if self.client_ca.is_none() && !self.insecure_allow_anonymous_clients {
            return Err(invalid(
                "tls.client_ca",
                "mutual TLS is required: name the CA that client certificates chain to \
                 (or set tls.insecure_allow_anonymous_clients = true for a local experiment)",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// File the audit trail is appended to, one JSON object per line. Absent: standard output.
    #[serde(default, deserialize_with = "relative_opt")]
    pub path: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// The agent's private state: verified model copies. Created with mode 0700.
    #[serde(default = "default_state_directory", deserialize_with = "relative")]
    pub directory: PathBuf,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            directory: default_state_directory(),
        }
    }
}

fn default_state_directory() -> PathBuf {
    PathBuf::from("/var/lib/warden")
}

fn default_max_body_bytes() -> usize {
    4 * 1024 * 1024
}
fn default_max_header_bytes() -> usize {
    16 * 1024
}
fn default_request_timeout_ms() -> u64 {
    30_000
}
fn default_handshake_timeout_ms() -> u64 {
    10_000
}
fn default_shutdown_grace_ms() -> u64 {
    10_000
}
fn default_max_concurrent_streams() -> u32 {
    128
}
fn default_max_connections() -> usize {
    1024
}
