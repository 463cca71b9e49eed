//! `warden`'s commands, one file each. The daemon and its parts are the library's
//! (`warden_agent`); this is the command line on top of it, the only place besides `main` that
//! uses `anyhow`. The key service's commands (`keyd`, `provision`, the device-side `attest`
//! commands on the TPM itself) are handed to the `warden-keyd` binary ([`keyd`]): this binary
//! links no TPM or PKCS#11 code.

mod attest;
mod bundle;
mod check;
mod keyd;
mod release;
mod serve;
mod status;

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// The command line.
#[derive(Parser)]
#[command(name = "warden", version, about = "Secure edge inference agent")]
pub struct Cli {
    /// Log format on standard error.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Plain)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// How logs are written.
#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Plain,
    Json,
}

/// What to do.
#[derive(Subcommand)]
pub enum Command {
    /// Serve the configured models over HTTPS (Open Inference Protocol v2).
    Serve {
        #[arg(long, short, default_value = "/etc/warden/warden.toml")]
        config: PathBuf,
    },
    /// Check a config, its TLS material, trust anchors and model signatures, without serving.
    Check {
        #[arg(long, short, default_value = "/etc/warden/warden.toml")]
        config: PathBuf,
    },
    /// Set up a development PKI, sign the shipped demo model and serve it on 127.0.0.1.
    Demo {
        /// Where the demo writes its PKI, keys, signed model, config and audit trail.
        #[arg(long, default_value = ".warden-demo")]
        dir: PathBuf,
        /// Port on 127.0.0.1 (0 picks a free one).
        #[arg(long, default_value_t = 8443)]
        port: u16,
    },
    /// Sign and verify model bundles (OpenSSF Model Signing format).
    #[command(subcommand)]
    Bundle(bundle::BundleCommand),
    /// Enrol the key store: device key, trust anchors per role, the device's CSR (runs
    /// `warden-keyd provision`, as the key service's user while keyd is stopped; see
    /// `warden-keyd provision --help`).
    #[command(disable_help_flag = true)]
    Provision {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Measured boot: quote the TPM's PCRs over a nonce, verify a quote, enrol an
    /// attestation key.
    #[command(subcommand)]
    Attest(attest::AttestCommand),
    /// Run the key service (runs `warden-keyd serve`): the only process that holds the
    /// TPM/HSM, on a Unix socket that authorizes callers by peer UID.
    Keyd {
        #[arg(long, short, default_value = "/etc/warden/keyd.toml")]
        config: PathBuf,
    },
    /// Show the running agent's models and, through keyd, the key store (development-only
    /// flagged loudly), anchors per role, counters and the policy set's digest.
    Status(status::StatusArgs),
}

/// Runs one command.
pub fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve { config } => serve::serve(&config),
        Command::Check { config } => check::run(&config),
        Command::Demo { dir, port } => serve::demo(&dir, port),
        Command::Bundle(cmd) => bundle::run(cmd),
        Command::Provision { args } => {
            keyd::exec(std::iter::once(OsString::from("provision")).chain(args))
        }
        Command::Attest(cmd) => attest::run(cmd),
        Command::Keyd { config } => {
            keyd::exec([OsString::from("serve"), "--config".into(), config.into()])
        }
        Command::Status(args) => status::run(&args),
    }
}
