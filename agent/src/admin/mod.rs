//! The fleet-push admin listener (`[admin]`): its own port, HTTPS with client certificates that
//! must chain to the fleet authority's CA (the key store's fleet-authority anchors when they are
//! certificates, else `admin.client_ca`). Every action is audited (kind `admin`; the route
//! pattern names the action).
//!
//! - `PUT /admin/v1/models/{name}/versions/{version}`: one tar archive (`application/x-tar`)
//!   holding `model/` (the model directory), `model.sig`, and in key-store mode `release.json`
//!   and `attestations/*.json`. It is unpacked into the state directory (regular files and
//!   directories only; no absolute paths, `..`, links or devices; size and entry count capped),
//!   then loaded by [`ModelRegistry::add`] exactly like a configured version (the same
//!   verification and admission). The new version serves under `/versions/{version}`; the
//!   default stays where it was until `activate`. Any refusal changes nothing.
//! - `POST /admin/v1/models/{name}/versions/{version}/pull` `{"reference":
//!   "registry/repo@sha256:…", "insecure_http": false}`: the same archive, pulled from an OCI
//!   registry as a bundle artifact pinned by digest ([`oci`]), then unpacked and loaded by the
//!   same function as a `PUT`. Tag-only references are refused; plain HTTP only on request.
//! - `POST /admin/v1/models/{name}/activate` `{"version": "…"}`: the default version.
//! - `POST /admin/v1/models/{name}/rollback`: back to the previously active version.
//! - `PUT /admin/v1/revocations`: a signed revocation list (fleet authority; an older serial
//!   is refused), stored at `admission.revocation_list`, then every loaded version is
//!   re-decided at once and the revoked ones are unloaded.
//! - `PUT /admin/v1/policies`: a tar of `policies/` (`.rego` only) and `statement.json`, the
//!   fleet authority's signed statement over the set's digest and a serial above the accepted
//!   one (`warden_attest::policyset`; anti-rollback in the key store's counter). Compiled,
//!   kept in the state directory, put in force, then every loaded version is decided again:
//!   releases pin the policy-set digest, so versions released for the old set are unloaded
//!   (`crate::models::policy_set`).
//! - `GET /admin/v1/models`: what is loaded, active and withdrawn.
//!
//! Pushed versions belong to a configured model name (its `file`, input ranges, batching and
//! device are the template), or, with `admin.accept_new_models`, to a new name: the defaults,
//! and the bundle's one model file. Errors are `{"error": "<class>: <short text>"}`, every
//! class mapped in one place ([`refusal`]); the detail goes to the log and the audit trail.
//!
//! One file per action ([`push`], [`pull`], [`activate`], [`rollback`], [`revocations`],
//! [`policies`]); [`load`] is the one path from an archive to a loaded version, [`archive`]
//! spools and unpacks, [`router`] routes and audits, [`oci`] pulls from a registry.

mod activate;
pub mod archive;
mod context;
mod load;
pub mod oci;
mod policies;
mod pull;
mod push;
mod refusal;
mod revocations;
mod rollback;
mod router;

use crate::audit::AuditLog;
use crate::config::{AdminConfig, Config, ServerConfig};
use crate::listener::accept::{ListenerLimits, TlsApp, audit_tls_refused, serve_tls};
use crate::listener::tls::CertNames;
use crate::models::ModelRegistry;
use bytes::Bytes;
use context::Context;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::net::TcpListener;
use warden_keystore::{KeyStore, Role};

/// Admin connections at once (operators and fleet controllers, not clients).
const MAX_ADMIN_CONNECTIONS: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(
        "admin.client_ca: no CA for admin client certificates (set admin.client_ca, or install certificates as the key store's fleet-authority anchors)"
    )]
    NoClientCa,
    #[error("admin: reading the key store's fleet-authority anchors: {0}")]
    Anchors(warden_keystore::KeyStoreError),
    #[error("admin: cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("admin TLS: {0}")]
    Tls(String),
    #[error("admin: cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A bound admin listener, ready to run.
pub struct AdminServer {
    pub local_addr: SocketAddr,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    client_verifier: Option<Arc<crate::listener::client_verifier::ClientVerifier>>,
    admin: Arc<Admin>,
    server: ServerConfig,
}

/// The listener: the admin actions on the shared accept loop.
struct Admin(Context);

impl AdminServer {
    /// The handle that reloads the admin listener's client CRLs (SIGHUP).
    pub fn client_verifier(&self) -> Option<Arc<crate::listener::client_verifier::ClientVerifier>> {
        self.client_verifier.clone()
    }
}

/// The CA file admin client certificates must chain to: the key store's fleet-authority
/// anchors when they are certificates (copied into the state directory for rustls), else
/// `admin.client_ca`.
fn client_ca(
    config: &Config,
    admin: &AdminConfig,
    store: Option<&Arc<dyn KeyStore>>,
) -> Result<PathBuf, AdminError> {
    if let Some(store) = store
        && let Some(pem) = store
            .anchors(Role::FleetAuthority)
            .map_err(AdminError::Anchors)?
        && String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----")
    {
        let path = config.state.directory.join("admin-fleet-ca.pem");
        std::fs::write(&path, &pem).map_err(|source| AdminError::Write {
            path: path.clone(),
            source,
        })?;
        return Ok(path);
    }
    admin.client_ca.clone().ok_or(AdminError::NoClientCa)
}

impl AdminServer {
    /// Builds the TLS configuration (the inference listener's server identity, the fleet CA
    /// for clients, no anonymous clients) and binds the port. `None` without `[admin]`.
    pub async fn prepare(
        config: &Config,
        models: Arc<ModelRegistry>,
        policies: Arc<crate::policy_in_force::PolicyInForce>,
        audit: Arc<AuditLog>,
    ) -> Result<Option<AdminServer>, AdminError> {
        let Some(admin) = &config.admin else {
            return Ok(None);
        };
        let store = models.trust().map(|t| t.store.clone());
        let mut tls_cfg = config.tls.clone();
        tls_cfg.client_ca = Some(client_ca(config, admin, store.as_ref())?);
        tls_cfg.client_crls = admin.client_crls.clone();
        tls_cfg.insecure_allow_anonymous_clients = false;
        let tls = crate::listener::keystore_tls::listener_config(&tls_cfg, store.as_ref())
            .map_err(|e| AdminError::Tls(e.to_string()))?;
        let listener =
            TcpListener::bind(admin.listen)
                .await
                .map_err(|source| AdminError::Bind {
                    addr: admin.listen,
                    source,
                })?;
        let local_addr = listener.local_addr().map_err(|source| AdminError::Bind {
            addr: admin.listen,
            source,
        })?;
        tracing::info!(listen = %local_addr, "admin listener bound");
        Ok(Some(AdminServer {
            local_addr,
            listener,
            tls: tls.config,
            client_verifier: tls.client_verifier,
            admin: Arc::new(Admin(Context {
                models,
                policies,
                audit,
                config: admin.clone(),
            })),
            server: config.server.clone(),
        }))
    }

    /// Serves until `shutdown` completes, then drains for up to the server's grace period.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let limits = ListenerLimits {
            max_connections: MAX_ADMIN_CONNECTIONS,
            max_concurrent_streams: 8,
        };
        serve_tls(
            "admin",
            self.listener,
            self.tls,
            self.admin,
            &self.server,
            limits,
            shutdown,
        )
        .await;
    }
}

/// The admin listener names a connection by its certificate and its address.
impl TlsApp for Admin {
    type Peer = (String, SocketAddr);

    fn peer(&self, tls: &rustls::ServerConnection, addr: SocketAddr) -> (String, SocketAddr) {
        let names = CertNames::from_peer_certificates(tls.peer_certificates());
        (CertNames::audit_name(names.as_ref()), addr)
    }

    fn refused(&self, addr: SocketAddr, reason: &str) {
        audit_tls_refused(&self.0.audit, "admin", addr, reason);
    }

    async fn handle(
        &self,
        req: Request<Incoming>,
        (identity, addr): &(String, SocketAddr),
    ) -> Response<Full<Bytes>> {
        router::answer(&self.0, req, identity, *addr).await
    }
}
