//! `warden serve` and `warden demo`: the daemon, on a configured or on the demo's embedded
//! default configuration, until SIGTERM or SIGINT.

use std::io::Write as _;
use std::path::Path;

use anyhow::Context as _;
use warden_agent::config::Config;
use warden_agent::{demo, serve};

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// `warden serve --config FILE`.
pub fn serve(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    runtime()?.block_on(async {
        let prepared = serve::prepare(&config).await?;
        tracing::info!(addr = %prepared.local_addr, "serving");
        prepared.run_until_signalled().await?;
        Ok(())
    })
}

/// `warden demo`: a development PKI and key store, the shipped model signed and admitted, then
/// served on 127.0.0.1.
pub fn demo(dir: &Path, port: u16) -> anyhow::Result<()> {
    let (files, config) = demo::prepare_admitted(dir, port)?;
    runtime()?.block_on(async {
        let prepared = serve::prepare(&config).await?;
        print!("{}", demo::banner(&files, prepared.local_addr));
        std::io::stdout().flush().ok();
        prepared.run_until_signalled().await?;
        Ok(())
    })
}
