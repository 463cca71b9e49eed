//! `warden-keyd serve`: the service, until SIGTERM or SIGINT.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;

use crate::config::KeydConfig;
use crate::server;

/// Serves until SIGTERM or SIGINT; removes the socket on the way out.
pub fn run(config_path: &Path) -> anyhow::Result<()> {
    let config = KeydConfig::load(config_path)?;
    let store = crate::backend::open(&config.keystore).with_context(|| {
        format!(
            "{}: opening the key store (`keystore`)",
            config_path.display()
        )
    })?;
    let socket_gid = config.socket_gid(config_path)?;
    let info = store.describe();
    if info.development_only {
        tracing::warn!(backend = %info, "keyd: DEVELOPMENT-ONLY key store: nothing is hardware-protected");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let listener = server::bind_with_group(&config.socket, socket_gid).with_context(|| {
            format!(
                "{}: binding `socket` {}",
                config_path.display(),
                config.socket.display()
            )
        })?;
        tracing::info!(
            socket = %config.socket.display(),
            backend = info.kind,
            principals = config.principals.len(),
            "keyd: serving"
        );
        let socket = config.socket.clone();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => {},
                _ = tokio::signal::ctrl_c() => {},
            }
        };
        server::serve(listener, Arc::new(config), store, shutdown).await;
        let _ = std::fs::remove_file(&socket);
        tracing::info!("keyd: stopped");
        Ok(())
    })
}
