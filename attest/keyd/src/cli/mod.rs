//! The `warden-keyd` commands. `serve` is the service; the others open the backend themselves
//! and are run by an operator as the key service's user while the service is stopped (it is
//! the only process that holds the hardware at run time). The agent's CLI (`warden keyd`,
//! `warden provision`, `warden attest quote --tcti …`) hands these commands to this binary.

mod device;
mod provision;
mod serve;
mod status;

use std::path::PathBuf;

use crate::config::DEFAULT_PATH;
use clap::{Parser, Subcommand};

pub use device::DeviceCommand;
pub use provision::{AnchorArg, ProvisionArgs, device_csr};

/// `warden-keyd`'s command line.
#[derive(Debug, Parser)]
#[command(
    name = "warden-keyd",
    version,
    about = "Warden's key service: the only process that holds the TPM or the HSM"
)]
pub struct Cli {
    /// Log format on standard error.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Plain)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    Plain,
    Json,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the key store API on the configured Unix socket until SIGTERM or SIGINT.
    Serve {
        #[arg(long, short, default_value = DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Enrol the key store: device key, trust anchors per role, the device's CSR, the TPM's
    /// attestation key (keyd stopped).
    Provision(ProvisionArgs),
    /// Measured boot on the TPM itself (keyd stopped; through a running keyd, use `warden
    /// attest … --keyd-socket`).
    #[command(subcommand)]
    Attest(DeviceCommand),
    /// Show the key store: backend (development-only said loudly), capabilities, device key,
    /// anchors per role, counters (keyd stopped; through a running keyd, use `warden status
    /// --keyd-socket`).
    Status {
        #[arg(long, short, alias = "keyd-config", default_value = DEFAULT_PATH)]
        config: PathBuf,
    },
}

/// Runs one command.
pub fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve { config } => serve::run(&config),
        Command::Provision(args) => provision::run(&args),
        Command::Attest(cmd) => device::run(cmd),
        Command::Status { config } => status::run(&config),
    }
}
