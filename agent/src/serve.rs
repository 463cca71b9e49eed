//! `warden serve`: load and check the config, verify and start every model, then serve the
//! inference API until SIGTERM or SIGINT, draining in-flight requests before exit.

use crate::api::{Api, Limits};
use crate::audit::{AuditError, AuditLog};
use crate::config::Config;
use crate::models::{ModelError, ModelRegistry};
use crate::server::Server;
use crate::tls::TlsError;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error(transparent)]
    Model(#[from] ModelError),
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
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// A server that has verified its models and bound its port, ready to run.
pub struct Prepared {
    pub local_addr: SocketAddr,
    pub models: Arc<ModelRegistry>,
    server: Server,
}

/// Everything that can fail before the first request: TLS material, the audit file, the state
/// directory, model verification and worker start, and the bind.
pub async fn prepare(config: &Config) -> Result<Prepared, ServeError> {
    let tls = crate::tls::server_config(&config.tls)?;
    let audit = Arc::new(AuditLog::open(config.audit.path.as_deref())?);
    create_private_dir(&config.state.directory)?;
    let models = Arc::new(ModelRegistry::load(config, &config.state.directory).await?);
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
    let api = Arc::new(Api::new(
        models.clone(),
        audit.clone(),
        Limits {
            max_body_bytes: config.server.max_body_bytes,
            request_timeout: config.server.request_timeout(),
        },
    ));
    Ok(Prepared {
        local_addr,
        models,
        server: Server {
            listener,
            tls,
            api,
            audit,
            config: config.server.clone(),
        },
    })
}

impl Prepared {
    /// Serves until SIGTERM or SIGINT, then drains and stops the workers.
    pub async fn run_until_signalled(self) -> Result<(), ServeError> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).map_err(ServeError::Signals)?;
        let mut int = signal(SignalKind::interrupt()).map_err(ServeError::Signals)?;
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
        };
        let models = self.models.clone();
        self.server.run(shutdown).await;
        models.shutdown().await;
        tracing::info!("stopped");
        Ok(())
    }

    /// Serves until `shutdown` completes (tests drive this directly).
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let models = self.models.clone();
        self.server.run(shutdown).await;
        models.shutdown().await;
    }
}

fn create_private_dir(path: &std::path::Path) -> Result<(), ServeError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let err = |source| ServeError::State {
        path: path.to_path_buf(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).map_err(err)
}
