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
//! and the bundle's one model file. Errors are `{"error": "<class>: <short text>"}`; the detail goes to the log
//! and the audit trail.

pub mod oci;

// The OCI pull (crate::admin::oci): it hands its archive to the same unpack-and-load path.

use crate::audit::{AuditEvent, AuditLog};
use crate::config::{AdminConfig, Config, ModelConfig, ServerConfig, valid_name};
use crate::listener::accept::{ListenerLimits, TlsApp, audit_tls_refused, serve_tls};
use crate::listener::tls::CertNames;
use crate::models::{ModelError, ModelRegistry};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use tokio::net::TcpListener;
use warden_attest::revocation::{RevocationError, verify_revocation_list};
use warden_keystore::{Counter, KeyStore, Role};

/// Admin connections at once (operators and fleet controllers, not clients).
const MAX_ADMIN_CONNECTIONS: usize = 16;
/// Largest revocation list or JSON body accepted.
const MAX_DOCUMENT_BYTES: usize = 16 * 1024 * 1024;
/// Where uploads are unpacked, inside the state directory.
const UPLOADS: &str = "uploads";

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
    admin: Arc<Admin>,
    server: ServerConfig,
}

struct Admin {
    models: Arc<ModelRegistry>,
    audit: Arc<AuditLog>,
    config: AdminConfig,
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
        audit: Arc<AuditLog>,
    ) -> Result<Option<AdminServer>, AdminError> {
        let Some(admin) = &config.admin else {
            return Ok(None);
        };
        let store = models.trust().map(|t| t.store.clone());
        let mut tls_cfg = config.tls.clone();
        tls_cfg.client_ca = Some(client_ca(config, admin, store.as_ref())?);
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
            tls,
            admin: Arc::new(Admin {
                models,
                audit,
                config: admin.clone(),
            }),
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

/// The result of one admin action: the reply, and what the audit trail records.
struct Done {
    status: StatusCode,
    body: serde_json::Value,
    outcome: &'static str,
    /// The precise reason (log and audit only).
    reason: Option<String>,
}

impl Done {
    fn ok(body: serde_json::Value) -> Done {
        Done {
            status: StatusCode::OK,
            body,
            outcome: "ok",
            reason: None,
        }
    }

    /// A refusal: `class` and `public` go to the client, `reason` to the log and audit.
    fn refuse(status: StatusCode, class: &'static str, public: &str, reason: String) -> Done {
        Done {
            status,
            body: serde_json::json!({ "error": format!("{class}: {public}") }),
            outcome: class,
            reason: Some(reason),
        }
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
        audit_tls_refused(&self.audit, "admin", addr, reason);
    }

    async fn handle(
        &self,
        req: Request<Incoming>,
        (identity, addr): &(String, SocketAddr),
    ) -> Response<Full<Bytes>> {
        self.answer(req, identity, *addr).await
    }
}

impl Admin {
    async fn answer(
        &self,
        req: Request<Incoming>,
        identity: &str,
        addr: SocketAddr,
    ) -> Response<Full<Bytes>> {
        let started = std::time::Instant::now();
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let (route, model, version, done): (&str, Option<&str>, Option<String>, Done) =
            match (&method, segments.as_slice()) {
                (&Method::GET, ["admin", "v1", "models"]) => (
                    "GET /admin/v1/models",
                    None,
                    None,
                    Done::ok(self.models.status()),
                ),
                (&Method::PUT, ["admin", "v1", "models", name, "versions", version]) => (
                    "PUT /admin/v1/models/{name}/versions/{version}",
                    Some(*name),
                    Some((*version).to_owned()),
                    self.push(name, version, req).await,
                ),
                (&Method::POST, ["admin", "v1", "models", name, "versions", version, "pull"]) => (
                    "POST /admin/v1/models/{name}/versions/{version}/pull",
                    Some(*name),
                    Some((*version).to_owned()),
                    self.pull(name, version, req).await,
                ),
                (&Method::POST, ["admin", "v1", "models", name, "activate"]) => {
                    let (version, done) = self.activate(name, req).await;
                    (
                        "POST /admin/v1/models/{name}/activate",
                        Some(*name),
                        version,
                        done,
                    )
                }
                (&Method::POST, ["admin", "v1", "models", name, "rollback"]) => {
                    let (version, done) = self.rollback(name);
                    (
                        "POST /admin/v1/models/{name}/rollback",
                        Some(*name),
                        version,
                        done,
                    )
                }
                (&Method::PUT, ["admin", "v1", "policies"]) => (
                    "PUT /admin/v1/policies",
                    None,
                    None,
                    self.policies(req).await,
                ),
                (&Method::PUT, ["admin", "v1", "revocations"]) => (
                    "PUT /admin/v1/revocations",
                    None,
                    None,
                    self.revocations(req).await,
                ),
                _ => (
                    "unknown",
                    None,
                    None,
                    Done::refuse(
                        StatusCode::NOT_FOUND,
                        "not_found",
                        "no such admin endpoint",
                        format!("{method} on an unknown admin path"),
                    ),
                ),
            };
        // Names that are not valid model names are not written to the audit trail verbatim.
        let model = model.filter(|m| valid_name(m));
        let version = version.filter(|v| valid_name(v));
        if let Some(reason) = &done.reason {
            tracing::warn!(identity, route, model, version = version.as_deref(), outcome = done.outcome, reason = %reason, "admin action refused");
        } else {
            tracing::info!(
                identity,
                route,
                model,
                version = version.as_deref(),
                "admin action done"
            );
        }
        self.audit.record(&AuditEvent {
            kind: "admin",
            request_id: None,
            identity: Some(identity),
            tenant: None,
            peer: Some(addr.to_string()),
            method: Some(method.as_str()),
            route: Some(route),
            model,
            version: version.as_deref(),
            outcome: done.outcome,
            status: Some(done.status.as_u16()),
            reason: done.reason.as_deref(),
            rule: None,
            latency_us: Some(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX)),
        });
        let mut resp = Response::new(Full::new(Bytes::from(done.body.to_string())));
        *resp.status_mut() = done.status;
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        resp
    }

    async fn push(&self, name: &str, version: &str, req: Request<Incoming>) -> Done {
        if !valid_name(name) || !valid_name(version) {
            return Done::refuse(
                StatusCode::BAD_REQUEST,
                "invalid_name",
                "model names and versions are 1-64 of [A-Za-z0-9._-]",
                "invalid model name or version".into(),
            );
        }
        if !is_tar(&req) {
            return not_tar();
        }
        let template = match self.new_version(name, version) {
            Ok(t) => t,
            Err(done) => return done,
        };
        let limit = self.config.max_upload_bytes;
        self.staged(template, version, |archive| async move {
            spool_archive(req.into_body(), &archive, limit).await
        })
        .await
    }

    /// `POST …/versions/{version}/pull` `{"reference": "registry/repo@sha256:…",
    /// "insecure_http": false}`: the bundle's tar layer, pulled by digest, then the same
    /// unpacking and loading as a `PUT`.
    async fn pull(&self, name: &str, version: &str, req: Request<Incoming>) -> Done {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Pull {
            reference: String,
            #[serde(default)]
            insecure_http: bool,
        }
        let body = match Limited::new(req.into_body(), MAX_DOCUMENT_BYTES)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                return Done::refuse(
                    StatusCode::BAD_REQUEST,
                    "upload_failed",
                    "the body could not be read",
                    e.to_string(),
                );
            }
        };
        let p: Pull = match serde_json::from_slice(&body) {
            Ok(p) => p,
            Err(e) => {
                return Done::refuse(
                    StatusCode::BAD_REQUEST,
                    "invalid_body",
                    "expected {\"reference\": \"registry/repo@sha256:…\"}",
                    e.to_string(),
                );
            }
        };
        let reference = match crate::admin::oci::pinned_reference(&p.reference) {
            Ok(r) => r,
            Err(e) => {
                return Done::refuse(
                    StatusCode::BAD_REQUEST,
                    "reference_refused",
                    "the reference must be pinned by digest (registry/repo@sha256:…)",
                    e.to_string(),
                );
            }
        };
        let template = match self.new_version(name, version) {
            Ok(t) => t,
            Err(done) => return done,
        };
        let limit = self.config.max_upload_bytes;
        let insecure = p.insecure_http;
        self.staged(template, version, |archive| async move {
            crate::admin::oci::pull_bundle(&reference, insecure, &archive, limit)
                .await
                .map_err(|e| {
                    let reason = e.to_string();
                    match e {
                        crate::admin::oci::OciError::TooLarge { .. } => Done::refuse(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            "too_large",
                            "the bundle is larger than admin.max_upload_bytes",
                            reason,
                        ),
                        crate::admin::oci::OciError::DigestMismatch { .. } => Done::refuse(
                            StatusCode::UNPROCESSABLE_ENTITY,
                            "digest_mismatch",
                            "the registry's content does not match the pinned digest",
                            reason,
                        ),
                        crate::admin::oci::OciError::NotABundle { .. } => Done::refuse(
                            StatusCode::UNPROCESSABLE_ENTITY,
                            "not_a_bundle",
                            "the artifact is not a Warden bundle",
                            reason,
                        ),
                        crate::admin::oci::OciError::Write { .. } => Done::refuse(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "internal",
                            "the upload could not be staged",
                            reason,
                        ),
                        crate::admin::oci::OciError::Reference { .. }
                        | crate::admin::oci::OciError::NotPinned { .. }
                        | crate::admin::oci::OciError::Registry { .. }
                        | crate::admin::oci::OciError::Transfer { .. } => Done::refuse(
                            StatusCode::BAD_GATEWAY,
                            "registry_failed",
                            "the bundle could not be pulled from the registry",
                            reason,
                        ),
                    }
                })
        })
        .await
    }

    /// The configured template for a new `version` of `name`, or the refusal.
    fn new_version(&self, name: &str, version: &str) -> Result<ModelConfig, Done> {
        let template = match self.models.configured(name) {
            Some(template) => template,
            // A model pushed before (and kept) is no longer new, but its template is the same.
            None if self.config.accept_new_models => crate::models::kept::new_model_template(name),
            None => {
                return Err(Done::refuse(
                    StatusCode::NOT_FOUND,
                    "unknown_model",
                    "pushed versions must belong to a configured model",
                    format!("model {name} is not configured (admin.accept_new_models is off)"),
                ));
            }
        };
        if self.models.resolve(name, Some(version)).is_some() {
            return Err(Done::refuse(
                StatusCode::CONFLICT,
                "already_loaded",
                "this version is already loaded",
                format!("model {name} version {version} is already loaded"),
            ));
        }
        Ok(template)
    }

    /// Runs `fetch` (which writes the archive to the path it is given) in a fresh upload
    /// directory, then [`Admin::unpack_and_load`]; the directory is removed afterwards.
    async fn staged<F, Fut>(&self, template: ModelConfig, version: &str, fetch: F) -> Done
    where
        F: FnOnce(PathBuf) -> Fut,
        Fut: std::future::Future<Output = Result<(), Done>>,
    {
        self.in_upload_dir(|upload| async move {
            let archive = upload.join("archive.tar");
            match fetch(archive.clone()).await {
                Ok(()) => {
                    self.unpack_and_load(&upload, &archive, template, version)
                        .await
                }
                Err(done) => done,
            }
        })
        .await
    }

    /// Runs `work` in a fresh private directory under the state directory's uploads, and
    /// removes the directory afterwards, whatever the outcome.
    async fn in_upload_dir<F, Fut>(&self, work: F) -> Done
    where
        F: FnOnce(PathBuf) -> Fut,
        Fut: std::future::Future<Output = Done>,
    {
        let upload = self
            .models
            .state_dir()
            .join(UPLOADS)
            .join(uuid::Uuid::new_v4().to_string());
        let done = match crate::state_files::create_private_dir(&upload) {
            Err(e) => internal("creating the upload directory", &e),
            Ok(()) => work(upload.clone()).await,
        };
        if let Err(e) = std::fs::remove_dir_all(&upload)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %upload.display(), error = %e, "admin: cannot remove an upload");
        }
        done
    }

    /// The one path from an archive (a pushed body or a pulled OCI layer) to a loaded
    /// version: unpack `archive` into `upload`/bundle, then [`ModelRegistry::add`].
    async fn unpack_and_load(
        &self,
        upload: &Path,
        archive: &Path,
        template: ModelConfig,
        version: &str,
    ) -> Done {
        let limit = self.config.max_upload_bytes;
        let bundle = upload.join("bundle");
        let limits = (limit, self.config.max_entries);
        let unpacked = {
            let (archive, bundle) = (archive.to_owned(), bundle.clone());
            tokio::task::spawn_blocking(move || {
                unpack(&archive, &bundle, limits.0, limits.1, &BUNDLE_LAYOUT)
            })
            .await
        };
        match unpacked {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return unpack_refused(e, "the archive is malformed or holds a refused entry");
            }
            Err(e) => return internal("unpacking", &e),
        }
        let _ = std::fs::remove_file(archive);
        let directory = bundle.join("model");
        if !directory.is_dir() {
            return Done::refuse(
                StatusCode::BAD_REQUEST,
                "archive_invalid",
                "the archive holds no model/ directory",
                "no model/ directory in the archive".into(),
            );
        }
        let signature = bundle.join("model.sig");
        if !signature.is_file() && self.models.trust().is_none() {
            // With a key store the policy decides on "unsigned"; without, the loader needs one.
            return Done::refuse(
                StatusCode::UNPROCESSABLE_ENTITY,
                "signature_refused",
                "the model is not signed",
                "no model.sig in the archive".into(),
            );
        }
        let m = match crate::models::kept::bundle_config(&bundle, template, version) {
            Ok(m) => m,
            Err(reason) => {
                return Done::refuse(
                    StatusCode::BAD_REQUEST,
                    "archive_invalid",
                    "a new model's bundle must hold exactly one model file",
                    reason,
                );
            }
        };
        // The current default stays the default until `activate`.
        self.models.pin_default(&m.name);
        match self.models.add(&m).await {
            Ok(()) => {
                // Kept for restarts: the bundle (re-verified and re-admitted at each start)
                // and the defaults.
                let state_dir = self.models.state_dir();
                let kept = crate::models::kept::keep(state_dir, &m.name, &m.version, &bundle)
                    .and_then(|_| crate::models::kept::save_active(state_dir, &self.models));
                if let Err(e) = &kept {
                    tracing::error!(model = %m.name, version = %m.version, error = %e, "admin: the version serves but is not kept across restarts");
                }
                Done::ok(serde_json::json!({
                    "name": m.name,
                    "version": m.version,
                    "loaded": true,
                    "kept_across_restarts": kept.is_ok(),
                    "active": self.models.resolve(&m.name, None).map(|l| l.version.clone()),
                }))
            }
            Err(e) => {
                let (status, class, public) = classify(&e);
                Done::refuse(status, class, public, e.to_string())
            }
        }
    }

    /// Records the chosen defaults after `activate` or `rollback`; a failure is logged (the
    /// change holds until the next restart).
    fn save_defaults(&self) {
        if let Err(e) = crate::models::kept::save_active(self.models.state_dir(), &self.models) {
            tracing::error!(error = %e, "admin: the chosen default is not kept across restarts");
        }
    }

    async fn activate(&self, name: &str, req: Request<Incoming>) -> (Option<String>, Done) {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Activate {
            version: String,
        }
        let body = match Limited::new(req.into_body(), MAX_DOCUMENT_BYTES)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                return (
                    None,
                    Done::refuse(
                        StatusCode::BAD_REQUEST,
                        "upload_failed",
                        "the body could not be read",
                        e.to_string(),
                    ),
                );
            }
        };
        let a: Activate = match serde_json::from_slice(&body) {
            Ok(a) => a,
            Err(e) => {
                return (
                    None,
                    Done::refuse(
                        StatusCode::BAD_REQUEST,
                        "invalid_body",
                        "expected {\"version\": \"…\"}",
                        e.to_string(),
                    ),
                );
            }
        };
        match self.models.activate(name, &a.version) {
            Ok(previous) => (
                {
                    self.save_defaults();
                    Some(a.version.clone())
                },
                Done::ok(serde_json::json!({
                    "name": name, "active": a.version, "previous": previous,
                })),
            ),
            Err(e) => (
                Some(a.version),
                Done::refuse(
                    StatusCode::NOT_FOUND,
                    "not_loaded",
                    "that version is not loaded",
                    e.to_string(),
                ),
            ),
        }
    }

    fn rollback(&self, name: &str) -> (Option<String>, Done) {
        match self.models.rollback(name) {
            Ok(v) => (
                {
                    self.save_defaults();
                    Some(v.clone())
                },
                Done::ok(serde_json::json!({"name": name, "active": v})),
            ),
            Err(e) => (
                None,
                Done::refuse(
                    StatusCode::CONFLICT,
                    "no_previous",
                    "there is no previously active version to go back to",
                    e.to_string(),
                ),
            ),
        }
    }

    async fn revocations(&self, req: Request<Incoming>) -> Done {
        let Some(trust) = self.models.trust().cloned() else {
            return Done::refuse(
                StatusCode::CONFLICT,
                "no_key_store",
                "revocation lists need a key store and admission",
                "no [keystore] configured".into(),
            );
        };
        let Some(path) = trust.config.revocation_list.clone() else {
            return Done::refuse(
                StatusCode::CONFLICT,
                "no_revocation_list",
                "admission.revocation_list is not configured",
                "admission.revocation_list is not set".into(),
            );
        };
        let body = match Limited::new(req.into_body(), MAX_DOCUMENT_BYTES)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                return Done::refuse(
                    StatusCode::BAD_REQUEST,
                    "upload_failed",
                    "the body could not be read (at most 16 MiB)",
                    e.to_string(),
                );
            }
        };
        let store = trust.store.clone();
        let checked = tokio::task::spawn_blocking(move || {
            check_list(&body, store.as_ref()).map(|s| (s, body))
        })
        .await;
        let (serial, body) = match checked {
            Ok(Ok(v)) => v,
            Ok(Err(ListRefused::Older(reason))) => {
                return Done::refuse(
                    StatusCode::CONFLICT,
                    "revocation_list_replayed",
                    "the list's serial is older than the accepted one",
                    reason,
                );
            }
            Ok(Err(ListRefused::Invalid(reason))) => {
                return Done::refuse(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "revocation_list_invalid",
                    "the list does not verify against the fleet authority",
                    reason,
                );
            }
            Ok(Err(ListRefused::Internal(reason))) => {
                return Done::refuse(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the key store could not be read",
                    reason,
                );
            }
            Err(e) => {
                return Done::refuse(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the list could not be checked",
                    e.to_string(),
                );
            }
        };
        // 0644: what File::create gave it before (the list is signed, public data).
        if let Err(e) = crate::state_files::write_atomically(
            &path,
            &body,
            0o644,
            crate::state_files::Durability::Synced,
        ) {
            return Done::refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the list could not be stored",
                format!("{}: {e}", path.display()),
            );
        }
        // Admission accepts the list (advancing the key store's counter) and re-decides.
        let unloaded = self.models.refresh().await;
        Done::ok(serde_json::json!({
            "serial": serial,
            "unloaded": unloaded.iter().map(|u| serde_json::json!({
                "name": u.name, "version": u.version,
            })).collect::<Vec<_>>(),
        }))
    }
}

impl Admin {
    /// `PUT /admin/v1/policies`: a tar of `policies/` (`.rego` files) and `statement.json`,
    /// the fleet authority's signed statement over the set's digest and a serial above the
    /// accepted one. Verified and compiled first; then kept, made the policy in force, the
    /// key store's counter advanced, and every loaded version decided again under it.
    async fn policies(&self, req: Request<Incoming>) -> Done {
        let Some(trust) = self.models.trust().cloned() else {
            return Done::refuse(
                StatusCode::CONFLICT,
                "no_key_store",
                "policy sets need a key store and admission",
                "no [keystore] configured".into(),
            );
        };
        if !is_tar(&req) {
            return not_tar();
        }
        self.in_upload_dir(
            |upload| async move { self.install_policies(&upload, req, &trust).await },
        )
        .await
    }

    async fn install_policies(
        &self,
        upload: &Path,
        req: Request<Incoming>,
        trust: &Arc<crate::models::TrustContext>,
    ) -> Done {
        let archive = upload.join("archive.tar");
        let limit = MAX_DOCUMENT_BYTES as u64;
        if let Err(done) = spool_archive(req.into_body(), &archive, limit).await {
            return done;
        }
        let set_dir = upload.join("set");
        let unpacked = {
            let (archive, set_dir) = (archive.clone(), set_dir.clone());
            let entries = self.config.max_entries;
            tokio::task::spawn_blocking(move || {
                unpack(&archive, &set_dir, limit, entries, &POLICY_LAYOUT)?;
                only_rego_files(&set_dir.join(crate::models::policy_set::POLICIES))
            })
            .await
        };
        match unpacked {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return unpack_refused(
                    e,
                    "the archive must hold policies/ (.rego files only) and statement.json",
                );
            }
            Err(e) => return internal("unpacking", &e),
        }
        // Verified against the fleet authority and the accepted serial; an equal serial only
        // for the set already in force (a retried push).
        let store = trust.store.clone();
        let running = trust.admission().policy_digest().to_owned();
        let checked = {
            let set_dir = set_dir.clone();
            tokio::task::spawn_blocking(move || {
                let current = store.counter(Counter::PolicySetSerial).map_err(|e| {
                    crate::models::policy_set::PolicyPushError::Internal(e.to_string())
                })?;
                let (set, digest) =
                    crate::models::policy_set::verify_set(&set_dir, store.as_ref(), current)?;
                if set.serial == current && current > 0 && digest != running {
                    return Err(crate::models::policy_set::PolicyPushError::Replayed(
                        format!(
                            "policy set serial {} is already accepted for other policies",
                            set.serial
                        ),
                    ));
                }
                Ok((set, digest))
            })
            .await
        };
        let (set, digest) = match checked {
            Ok(Ok(v)) => v,
            Ok(Err(crate::models::policy_set::PolicyPushError::Replayed(reason))) => {
                return Done::refuse(
                    StatusCode::CONFLICT,
                    "policy_set_replayed",
                    "the set's serial is not above the accepted one",
                    reason,
                );
            }
            Ok(Err(crate::models::policy_set::PolicyPushError::Invalid(reason))) => {
                return Done::refuse(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "policy_set_invalid",
                    "the set does not verify against the fleet authority",
                    reason,
                );
            }
            Ok(Err(crate::models::policy_set::PolicyPushError::Internal(reason))) => {
                return internal("checking the policy set", &reason);
            }
            Err(e) => return internal("checking the policy set", &e),
        };
        // It must compile and pass the same checks as a configured set before it is kept.
        let policies = set_dir.join(crate::models::policy_set::POLICIES);
        let compiled = match trust.compile_policy(&policies) {
            Ok(a) => a,
            Err(e) => {
                return Done::refuse(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "policy_set_invalid",
                    "the set does not compile as an admission policy",
                    e.to_string(),
                );
            }
        };
        let state_dir = self.models.state_dir().to_path_buf();
        let kept =
            match crate::models::policy_set::keep_and_activate(&state_dir, &set_dir, set.serial) {
                Ok(kept) => kept,
                Err(e) => return internal("keeping the policy set", &e),
            };
        // The pointer is written before the counter moves: a crash in between leaves a set
        // whose serial the next start records.
        if let Err(e) = trust
            .store
            .advance_counter(Counter::PolicySetSerial, set.serial)
        {
            return internal("advancing the policy-set counter", &e);
        }
        trust.set_admission(
            Arc::new(compiled),
            kept.join(crate::models::policy_set::POLICIES),
        );
        tracing::info!(serial = set.serial, policy_digest = %digest, "admin: policy set in force");
        let unloaded = self.models.refresh().await;
        Done::ok(serde_json::json!({
            "serial": set.serial,
            "policy_set_digest": digest,
            "unloaded": unloaded.iter().map(|u| serde_json::json!({
                "name": u.name, "version": u.version,
            })).collect::<Vec<_>>(),
        }))
    }
}

/// Refuses anything under a pushed `policies/` but directories and `.rego` files: every file
/// of the set must be one its digest covers.
fn only_rego_files(dir: &Path) -> Result<(), UnpackError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| UnpackError::Invalid(format!("{}: {e}", dir.display())))?;
    for e in entries {
        let e = e.map_err(|e| UnpackError::Invalid(e.to_string()))?;
        let path = e.path();
        let kind = e
            .file_type()
            .map_err(|e| UnpackError::Invalid(e.to_string()))?;
        if kind.is_dir() {
            only_rego_files(&path)?;
        } else if path.extension().is_none_or(|x| x != "rego") {
            return Err(UnpackError::Invalid(format!(
                "{}: only .rego files belong in a policy set",
                path.file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
            )));
        }
    }
    Ok(())
}

enum ListRefused {
    Older(String),
    Invalid(String),
    Internal(String),
}

/// Verifies a revocation list against the fleet authority's anchors and the accepted serial
/// (the same functions admission uses); records nothing.
fn check_list(body: &[u8], store: &dyn KeyStore) -> Result<u64, ListRefused> {
    let anchors = warden_attest::anchors::TrustAnchors::from_key_store(store)
        .map_err(|e| ListRefused::Internal(e.to_string()))?;
    let current = store
        .counter(Counter::RevocationSerial)
        .map_err(|e| ListRefused::Internal(e.to_string()))?;
    if anchors.fleet_authority.is_empty() {
        return Err(ListRefused::Invalid(
            "no fleet-authority anchors are installed".into(),
        ));
    }
    let mut last = String::new();
    for v in &anchors.fleet_authority {
        match verify_revocation_list(body, v, current) {
            Ok(list) => return Ok(list.serial),
            Err(e @ RevocationError::OlderSerial { .. }) => {
                return Err(ListRefused::Older(e.to_string()));
            }
            Err(e) => last = e.to_string(),
        }
    }
    Err(ListRefused::Invalid(last))
}

/// The status, class and public text for a refused load.
fn classify(e: &ModelError) -> (StatusCode, &'static str, &'static str) {
    match e {
        ModelError::Signature { .. } => (
            StatusCode::UNPROCESSABLE_ENTITY,
            "signature_refused",
            "the model's signature does not verify against the trusted signers",
        ),
        ModelError::Refused { .. } => (
            StatusCode::UNPROCESSABLE_ENTITY,
            "admission_refused",
            "the startup policy refused this version",
        ),
        ModelError::NotRegular { .. } | ModelError::Stage { .. } => (
            StatusCode::BAD_REQUEST,
            "archive_invalid",
            "the model could not be staged",
        ),
        ModelError::AlreadyLoaded { .. } => (
            StatusCode::CONFLICT,
            "already_loaded",
            "this version is already loaded",
        ),
        ModelError::Device { .. } => (
            StatusCode::CONFLICT,
            "device_unavailable",
            "the version's configured device cannot take it",
        ),
        _ => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "load_failed",
            "the version could not be started",
        ),
    }
}

/// A refusal for a local failure while staging.
fn internal(what: &str, e: &dyn std::fmt::Display) -> Done {
    Done::refuse(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "the upload could not be staged",
        format!("{what}: {e}"),
    )
}

/// The refusal of a body that is not declared a tar archive.
fn not_tar() -> Done {
    Done::refuse(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        "send one application/x-tar archive",
        "content-type is not application/x-tar".into(),
    )
}

/// The refusal of an archive that could not be unpacked; `what` says what it must hold.
fn unpack_refused(e: UnpackError, what: &'static str) -> Done {
    match e {
        UnpackError::TooLarge(reason) => Done::refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "the archive exceeds the size or entry limits",
            reason,
        ),
        UnpackError::Invalid(reason) => {
            Done::refuse(StatusCode::BAD_REQUEST, "archive_invalid", what, reason)
        }
    }
}

/// Whether the request says it carries a tar archive.
fn is_tar(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim() == "application/x-tar")
}

/// [`spool`] with its refusals.
async fn spool_archive(body: Incoming, to: &Path, limit: u64) -> Result<(), Done> {
    match spool(body, to, limit).await {
        Ok(()) => Ok(()),
        Err(SpoolError::TooLarge) => Err(Done::refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "the archive is larger than admin.max_upload_bytes",
            format!("archive larger than {limit} bytes"),
        )),
        Err(SpoolError::Body(e)) => Err(Done::refuse(
            StatusCode::BAD_REQUEST,
            "upload_failed",
            "the body could not be read",
            e,
        )),
        Err(SpoolError::Io(e)) => Err(internal("writing the upload", &e)),
    }
}

enum SpoolError {
    TooLarge,
    Body(String),
    Io(std::io::Error),
}

/// Streams the body into `to`, refusing more than `limit` bytes.
async fn spool(mut body: Incoming, to: &Path, limit: u64) -> Result<(), SpoolError> {
    let mut file = std::fs::File::create(to).map_err(SpoolError::Io)?;
    let mut written: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| SpoolError::Body(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            written = written.saturating_add(data.len() as u64);
            if written > limit {
                return Err(SpoolError::TooLarge);
            }
            file.write_all(&data).map_err(SpoolError::Io)?;
        }
    }
    file.sync_all().map_err(SpoolError::Io)
}

enum UnpackError {
    TooLarge(String),
    Invalid(String),
}

/// The top-level names an archive may hold: directories and single files.
struct Layout {
    dirs: &'static [&'static str],
    files: &'static [&'static str],
}

/// A model bundle (`PUT …/versions/{version}`, an OCI pull).
const BUNDLE_LAYOUT: Layout = Layout {
    dirs: &["model", "attestations"],
    files: &["model.sig", "release.json"],
};

/// A policy set (`PUT /admin/v1/policies`).
const POLICY_LAYOUT: Layout = Layout {
    dirs: &[crate::models::policy_set::POLICIES],
    files: &[crate::models::policy_set::STATEMENT],
};

/// Unpacks `archive` into `into`: regular files and directories only, relative paths without
/// `..`, under the top-level names `layout` allows; at most `max_bytes` unpacked and
/// `max_entries` entries.
fn unpack(
    archive: &Path,
    into: &Path,
    max_bytes: u64,
    max_entries: usize,
    layout: &Layout,
) -> Result<(), UnpackError> {
    use std::os::unix::fs::OpenOptionsExt;
    let invalid = |e: &dyn std::fmt::Display| UnpackError::Invalid(e.to_string());
    let file = std::fs::File::open(archive).map_err(|e| invalid(&e))?;
    let mut tar = tar::Archive::new(file);
    let mut total: u64 = 0;
    let mut count: usize = 0;
    std::fs::create_dir_all(into).map_err(|e| invalid(&e))?;
    for entry in tar.entries().map_err(|e| invalid(&e))? {
        let mut entry = entry.map_err(|e| invalid(&e))?;
        count += 1;
        if count > max_entries {
            return Err(UnpackError::TooLarge(format!(
                "more than {max_entries} entries"
            )));
        }
        let path = entry.path().map_err(|e| invalid(&e))?.into_owned();
        let mut rel = PathBuf::new();
        for c in path.components() {
            match c {
                Component::Normal(p) => rel.push(p),
                Component::CurDir => {}
                _ => {
                    return Err(UnpackError::Invalid(format!(
                        "{}: absolute paths and '..' are refused",
                        path.display()
                    )));
                }
            }
        }
        let Some(top) = rel.components().next() else {
            continue;
        };
        let top = top.as_os_str();
        let is_file_top = layout.files.iter().any(|f| top == *f);
        let is_dir_top = layout.dirs.iter().any(|d| top == *d);
        if !(is_dir_top || is_file_top) {
            return Err(UnpackError::Invalid(format!(
                "{}: unexpected entry (only {} and {})",
                path.display(),
                layout
                    .dirs
                    .iter()
                    .map(|d| format!("{d}/"))
                    .collect::<Vec<_>>()
                    .join(", "),
                layout.files.join(", ")
            )));
        }
        // The directories are never files themselves, and the files never directories.
        let dir_only = is_dir_top && rel.components().count() == 1;
        let target = into.join(&rel);
        match entry.header().entry_type() {
            tar::EntryType::Directory if !is_file_top => {
                std::fs::create_dir_all(&target).map_err(|e| invalid(&e))?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous if !dir_only => {
                let size = entry.header().size().map_err(|e| invalid(&e))?;
                total = total.saturating_add(size);
                if total > max_bytes {
                    return Err(UnpackError::TooLarge(format!(
                        "more than {max_bytes} bytes unpacked"
                    )));
                }
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| invalid(&e))?;
                }
                let mut out = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&target)
                    .map_err(|e| UnpackError::Invalid(format!("{}: {e}", path.display())))?;
                let copied = std::io::copy(&mut (&mut entry).take(size), &mut out)
                    .map_err(|e| invalid(&e))?;
                if copied != size {
                    return Err(UnpackError::Invalid(format!(
                        "{}: truncated",
                        path.display()
                    )));
                }
            }
            other => {
                return Err(UnpackError::Invalid(format!(
                    "{}: {other:?} entries are refused here (regular files and directories only)",
                    path.display()
                )));
            }
        }
    }
    Ok(())
}
