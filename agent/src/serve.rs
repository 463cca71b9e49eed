//! `warden serve`: load and check the config, load the gateway (JWKS, route policy), verify and
//! start every model, then serve the inference API (and the metrics listener) until SIGTERM or
//! SIGINT, draining in-flight requests before exit. SIGHUP reloads the route policy, its data
//! and the JWKS, each atomically, and (with a `[keystore]`) re-runs model admission, as does
//! every `admission.refresh_interval_s`.

use crate::audit::{AuditError, AuditLog};
use crate::config::Config;
use crate::gateway::{Gateway, GatewayError};
use crate::inference::{Api, Limits};
use crate::listener::Server;
use crate::listener::client_verifier::ClientVerifier;
use crate::listener::keystore_tls::{TlsKeyStoreError, listener_config};
use crate::models::{ModelError, ModelRegistry, TrustContext, TrustError};
use crate::policy_in_force::{PolicyInForce, PolicyInForceError};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("tls: {0}")]
    Tls(#[from] TlsKeyStoreError),
    #[error(transparent)]
    Trust(#[from] TrustError),
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("gateway: {0}")]
    Gateway(#[from] GatewayError),
    #[error(transparent)]
    Policy(#[from] PolicyInForceError),
    #[error("cannot create the state directory {path}: {source}")]
    State {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Admin(#[from] crate::admin::AdminError),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// A server that has verified its models and bound its port, ready to run.
pub struct Prepared {
    pub local_addr: SocketAddr,
    pub models: Arc<ModelRegistry>,
    pub gateway: Arc<Gateway>,
    /// The policy set in force (SIGHUP reloads it; a signed push replaces it).
    pub policies: Arc<PolicyInForce>,
    /// The listeners' client verifiers, whose CRLs SIGHUP re-reads (inference, then admin).
    pub client_verifiers: Vec<Arc<ClientVerifier>>,
    /// Where `/metrics` is served, when enabled.
    pub metrics_addr: Option<SocketAddr>,
    metrics_listener: Option<tokio::net::TcpListener>,
    /// Where the fleet-push admin listener is bound, when `[admin]` is configured.
    pub admin_addr: Option<SocketAddr>,
    admin: Option<crate::admin::AdminServer>,
    server: Server,
    /// Where `status.json` is kept for `warden status`.
    state_dir: std::path::PathBuf,
}

#[cfg(feature = "insecure-bench-baseline")]
impl Prepared {
    /// Benchmarks only (feature `insecure-bench-baseline`): a switch that makes this server
    /// skip its whole gateway chain, so a benchmark can measure the chain's cost against the
    /// same server, worker and connections.
    pub fn insecure_bench_chain_switch(&self) -> Arc<std::sync::atomic::AtomicBool> {
        self.server.api.insecure_bench_chain_switch()
    }
}

/// Everything that can fail before the first request: TLS material, the audit file, the state
/// directory, model verification and worker start, and the bind.
pub async fn prepare(config: &Config) -> Result<Prepared, ServeError> {
    // The key store's application event log lives in the state directory.
    create_private_dir(&config.state.directory)?;
    let trust = TrustContext::open(config)?;
    prepare_with(config, trust).await
}

/// [`prepare`] with an already opened key store and admission policy (tests hand in their
/// own software or TPM key store).
pub async fn prepare_with(
    config: &Config,
    trust: Option<Arc<TrustContext>>,
) -> Result<Prepared, ServeError> {
    create_private_dir(&config.state.directory)?;
    let tls = listener_config(&config.tls, trust.as_ref().map(|t| &t.store))?;
    let gateway = Arc::new(Gateway::new(&config.gateway)?);
    let audit = Arc::new(AuditLog::open(config.audit.path.as_deref())?);
    let policies = Arc::new(PolicyInForce::start(
        gateway.clone(),
        trust.clone(),
        config.policy.as_ref().map(|p| p.directory.clone()),
    )?);
    let models = Arc::new(ModelRegistry::load(config, &config.state.directory, trust).await?);
    // Versions pushed before a restart, each re-verified and re-admitted; the chosen defaults.
    let refused = crate::models::kept::restore(&models).await;
    if !refused.is_empty() {
        tracing::error!(
            refused = refused.len(),
            "pushed versions kept from before the restart were refused: see above"
        );
    }
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.server.listen,
            source,
        })?;
    let local_addr = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: config.server.listen,
        source,
    })?;
    let (metrics_listener, metrics_addr) = if config.metrics.enabled {
        let addr = config.metrics.listen;
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })?;
        let bound = l
            .local_addr()
            .map_err(|source| ServeError::Bind { addr, source })?;
        (Some(l), Some(bound))
    } else {
        (None, None)
    };
    let admin =
        crate::admin::AdminServer::prepare(config, models.clone(), policies.clone(), audit.clone())
            .await?;
    let api = Arc::new(Api::new(
        models.clone(),
        audit.clone(),
        Limits {
            max_body_bytes: config.server.max_body_bytes,
            request_timeout: config.server.request_timeout(),
        },
        gateway.clone(),
    ));
    Ok(Prepared {
        local_addr,
        models,
        gateway,
        policies,
        metrics_addr,
        metrics_listener,
        admin_addr: admin.as_ref().map(|a| a.local_addr),
        client_verifiers: tls
            .client_verifier
            .into_iter()
            .chain(admin.as_ref().and_then(|a| a.client_verifier()))
            .collect(),
        admin,
        state_dir: config.state.directory.clone(),
        server: Server {
            listener,
            tls: tls.config,
            api,
            audit,
            config: config.server.clone(),
        },
    })
}

impl Prepared {
    /// Serves until SIGTERM or SIGINT, then drains and stops the workers. SIGHUP reloads the
    /// gateway's keys and the policy set (see [`PolicyInForce::reload`]), then re-runs
    /// admission.
    pub async fn run_until_signalled(self) -> Result<(), ServeError> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).map_err(ServeError::Signals)?;
        let mut int = signal(SignalKind::interrupt()).map_err(ServeError::Signals)?;
        let mut hup = signal(SignalKind::hangup()).map_err(ServeError::Signals)?;
        let gateway = self.gateway.clone();
        let policies = self.policies.clone();
        let client_verifiers = self.client_verifiers.clone();
        let models = self.models.clone();
        let shutdown = async move {
            loop {
                tokio::select! {
                    _ = term.recv() => { tracing::info!("SIGTERM received"); break }
                    _ = int.recv() => { tracing::info!("SIGINT received"); break }
                    _ = hup.recv() => {
                        match gateway.reload_keys() {
                            Ok(()) => tracing::info!("SIGHUP: JWKS reloaded"),
                            Err(e) => tracing::error!(error = %e, "SIGHUP: JWKS reload failed; the previous keys stay in force"),
                        }
                        for v in &client_verifiers {
                            match v.reload_crls() {
                                Ok(n) => tracing::info!(crls = n, "SIGHUP: client certificate revocation lists reloaded"),
                                Err(e) => tracing::error!(error = %e, "SIGHUP: client certificate revocation lists refused; the ones in force stay"),
                            }
                        }
                        match policies.reload() {
                            Ok(reloaded) => tracing::info!(?reloaded, "SIGHUP: policy set checked"),
                            Err(e) => tracing::error!(error = %e, "SIGHUP: policy set refused"),
                        }
                        // Model admission: a refresh that runs inside the signal loop, so a
                        // second SIGHUP waits for this one rather than racing it; the model
                        // signers' CRLs re-read first, so that it decides under them.
                        match models.reload_file_anchors() {
                            Some(Ok(n)) => tracing::info!(anchors = n, "SIGHUP: model signer anchors and their revocation lists reloaded"),
                            Some(Err(e)) => tracing::error!(error = %e, "SIGHUP: model signer anchors or revocation lists refused; those in force stay"),
                            None => {}
                        }
                        if let Some(trust) = models.trust() {
                            match trust.reload_signer_crls() {
                                Ok(n) => tracing::info!(crls = n, "SIGHUP: model signers' revocation lists reloaded"),
                                Err(e) => tracing::error!(error = %e, "SIGHUP: model signers' revocation lists refused; the ones in force stay"),
                            }
                            let unloaded = models.refresh().await;
                            tracing::info!(unloaded = unloaded.len(), "SIGHUP: model admission re-run");
                        }
                    }
                }
            }
        };
        self.run(shutdown).await;
        tracing::info!("stopped");
        Ok(())
    }

    /// Serves until `shutdown` completes (tests drive this directly).
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let models = self.models.clone();
        // Re-decide every loaded version on the admission interval (revocations, policy
        // changes); stopped with the server.
        let refresher = models.refresh_interval().map(|every| {
            let models = models.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    models.refresh().await;
                }
            })
        });
        let listen = self.local_addr.to_string();
        let status_writer = tokio::spawn(crate::status::keep_written(
            self.state_dir.clone(),
            models.clone(),
            listen.clone(),
        ));
        let (stop_metrics, stopped) = tokio::sync::oneshot::channel::<()>();
        let metrics_task = self.metrics_listener.map(|l| {
            let gauges_of = models.clone();
            tokio::spawn(crate::gateway::metrics::serve(
                l,
                self.gateway.metrics().clone(),
                Arc::new(move || model_gauges(&gauges_of)),
                async move {
                    let _ = stopped.await;
                },
            ))
        });
        let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
        let admin_task = self.admin.map(|a| {
            tokio::spawn(a.run(async move {
                let _ = admin_stopped.await;
            }))
        });
        self.server.run(shutdown).await;
        let _ = stop_admin.send(());
        if let Some(t) = admin_task {
            let _ = t.await;
        }
        if let Some(r) = refresher {
            r.abort();
        }
        status_writer.abort();
        let _ = status_writer.await;
        if let Err(e) = crate::status::write(
            &self.state_dir,
            &crate::status::snapshot(&models, &listen, false),
        ) {
            tracing::warn!(error = %e, "cannot write the final status file");
        }
        let _ = stop_metrics.send(());
        if let Some(t) = metrics_task {
            let _ = t.await;
        }
        models.shutdown().await;
    }
}

fn create_private_dir(path: &std::path::Path) -> Result<(), ServeError> {
    crate::state_files::create_private_dir(path).map_err(|source| ServeError::State {
        path: path.to_path_buf(),
        source,
    })
}

/// The models' gauges for `/metrics`: when each loaded model's signing certificate chain stops
/// being valid (certificate-signed models only), so that an alert can fire well before a model
/// would no longer load.
fn model_gauges(models: &ModelRegistry) -> String {
    use crate::gateway::metrics::esc;
    use std::fmt::Write as _;
    let mut o = String::from(
        "# HELP warden_model_signer_valid_until_seconds When a loaded model's signing certificate \
         chain stops being valid (Unix time); past it the model does not load again.\n\
         # TYPE warden_model_signer_valid_until_seconds gauge\n",
    );
    for m in models.report().0 {
        if let Some(until) = m.signer_valid_until {
            let _ = writeln!(
                o,
                "warden_model_signer_valid_until_seconds{{model=\"{}\",version=\"{}\"}} {until}",
                esc(&m.name),
                esc(&m.version)
            );
        }
    }
    o
}
