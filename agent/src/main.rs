//! `warden`: the agent's command line (see `cli`).

mod cli;

use clap::Parser as _;
use cli::{Cli, LogFormat};

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WARDEN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Plain => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    #[cfg(feature = "insecure-bench-baseline")]
    tracing::error!(
        "INSECURE BUILD: compiled with the insecure-bench-baseline feature, whose switch turns the \
         whole gateway chain off; benchmarks only, never serve with this binary"
    );
    cli::run(cli.command)
}
