//! `warden`: the agent's command line.

mod bundle_cli;
mod release_cli;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use warden_agent::{config::Config, demo, serve};

#[derive(Parser)]
#[command(name = "warden", version, about = "Secure edge inference agent")]
struct Cli {
    /// Log format on standard error.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Plain)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Plain,
    Json,
}

#[derive(Subcommand)]
enum Command {
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
    Bundle(bundle_cli::BundleCommand),
    /// Enrol the key store: device key, trust anchors per role, the device's CSR (run as the
    /// key service's user while keyd is stopped).
    Provision(warden_agent::trust_cli::ProvisionArgs),
    /// Measured boot: quote the TPM's PCRs over a nonce, or verify a quote.
    #[command(subcommand)]
    Attest(warden_agent::trust_cli::AttestCommand),
    /// Run the key service: the only process that holds the TPM/HSM, on a Unix socket that
    /// authorizes callers by peer UID.
    Keyd {
        #[arg(long, short, default_value = "/etc/warden/keyd.toml")]
        config: PathBuf,
    },
    /// Show the key store (development-only flags loudly), anchors per role, counters and the
    /// policy set's digest.
    Status(warden_agent::trust_cli::StatusArgs),
}

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

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    #[cfg(feature = "insecure-bench-baseline")]
    tracing::error!(
        "INSECURE BUILD: compiled with the insecure-bench-baseline feature, whose switch turns the \
         whole gateway chain off; benchmarks only, never serve with this binary"
    );
    match cli.command {
        Command::Serve { config } => {
            let config = Config::load(&config)?;
            runtime()?.block_on(async {
                let prepared = serve::prepare(&config).await?;
                tracing::info!(addr = %prepared.local_addr, "serving");
                prepared.run_until_signalled().await?;
                Ok(())
            })
        }
        Command::Check { config } => check(&config),
        Command::Demo { dir, port } => {
            let (files, config) = demo::prepare_admitted(&dir, port)?;
            runtime()?.block_on(async {
                let prepared = serve::prepare(&config).await?;
                print!("{}", demo::banner(&files, prepared.local_addr));
                use std::io::Write;
                std::io::stdout().flush().ok();
                prepared.run_until_signalled().await?;
                Ok(())
            })
        }
        Command::Bundle(cmd) => bundle_cli::run(cmd),
        Command::Provision(args) => warden_agent::trust_cli::provision(&args),
        Command::Attest(cmd) => warden_agent::trust_cli::attest(cmd),
        Command::Keyd { config } => warden_agent::trust_cli::keyd(&config),
        Command::Status(args) => warden_agent::trust_cli::status(&args),
    }
}

/// Loads everything `serve` would load, short of starting workers and binding, and says what is
/// wrong with a hint.
fn check(path: &std::path::Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    println!(
        "config {}: schema {} ok",
        path.display(),
        config.schema_version
    );
    if config.keystore.is_some() {
        return check_with_key_store(&config);
    }
    warden_agent::tls::server_config(&config.tls).context("TLS")?;
    println!(
        "tls: server certificate and key ok; client certificates {}",
        if config.tls.insecure_allow_anonymous_clients {
            "OPTIONAL (insecure_allow_anonymous_clients)"
        } else {
            "required"
        }
    );
    let anchors = warden_agent::models::trust_anchors(&config)?;
    println!("trust: {} model signer anchor(s)", anchors.len());
    let mut failed = 0;
    for m in &config.models {
        let mut reasons = Vec::new();
        let ok = anchors.iter().any(|(anchor, v)| {
            match warden_attest::bundle::verify_model(
                &m.directory,
                &m.signature_path(),
                v,
                &Default::default(),
            ) {
                Ok(verified) => {
                    println!(
                        "model {} version {}: signature ok (root digest {}, signer {})",
                        m.name, m.version, verified.root_digest, verified.signer
                    );
                    true
                }
                Err(e) => {
                    reasons.push(format!("{}: {e}", anchor.display()));
                    false
                }
            }
        });
        if !ok {
            failed += 1;
            println!(
                "model {} version {}: REFUSED: {}",
                m.name,
                m.version,
                reasons.join("; ")
            );
            println!(
                "  hint: re-sign the directory with `warden bundle sign`, or trust its signer in [trust]"
            );
        }
    }
    let gateway_problems = check_gateway(&config)?;
    if failed > 0 {
        anyhow::bail!("{failed} model(s) would not be served");
    }
    if gateway_problems > 0 {
        anyhow::bail!("{gateway_problems} gateway problem(s): see the hints above");
    }
    println!("ok");
    Ok(())
}

/// The gateway: its policy and JWKS load (as `warden serve` would), and some identity source
/// is configured — without one, every request is refused with 401.
fn check_gateway(config: &Config) -> anyhow::Result<usize> {
    let g = &config.gateway;
    warden_agent::gateway::Gateway::new(g).context("gateway")?;
    let mut sources = Vec::new();
    if !g.identity.trust_domains.is_empty() {
        sources.push(format!(
            "SPIFFE IDs of trust domain(s) {}",
            g.identity.trust_domains.join(", ")
        ));
    }
    if let Some(m) = &g.identity.subject_mapping {
        sources.push(format!(
            "certificate subjects (tenant from {}, app from {})",
            m.tenant, m.app
        ));
    }
    if let Some(j) = &g.jwt {
        sources.push(format!(
            "bearer JWTs from {} for audience {} ({})",
            j.issuer,
            j.audience,
            j.algorithms.join(", ")
        ));
    }
    println!(
        "gateway: authorization by {}",
        g.authz
            .policy
            .as_ref()
            .map_or("the shipped routes.rego".to_string(), |p| p
                .display()
                .to_string())
    );
    if sources.is_empty() {
        println!(
            "gateway: NO IDENTITY SOURCE: every request would be refused (401)\n  hint: set \
             gateway.identity.trust_domains, gateway.identity.subject_mapping or [gateway.jwt]"
        );
        return Ok(1);
    }
    println!("gateway: identities from {}", sources.join("; "));
    Ok(0)
}

/// `warden check` with a `[keystore]`: the key store opens, the listener's identity is the
/// device key (or the key file), the admission policy compiles. Models are decided by the
/// startup policy when `warden serve` stages them (accepting a revocation list advances the
/// key store's counter, so `check` does not evaluate them).
fn check_with_key_store(config: &Config) -> anyhow::Result<()> {
    let trust = warden_agent::models::TrustContext::open(config)
        .context("key store and admission")?
        .context("[keystore] and [admission] are both required")?;
    let info = trust.store.describe();
    println!("keystore: {info}");
    warden_agent::serve::tls_config(config, Some(&trust.store)).context("TLS")?;
    println!(
        "tls: server certificate ok; handshakes signed by {}",
        if config.tls.private_key.is_some() {
            "the key file"
        } else {
            "the key store's device key"
        }
    );
    // The set in force: a policy set pushed by the fleet authority, else the configured one.
    println!(
        "admission: policy set {} digest {}; {} model(s) decided at load",
        trust.policy_dir().display(),
        trust.admission().policy_digest(),
        config.models.len()
    );
    if check_gateway(config)? > 0 {
        anyhow::bail!("gateway problem: see the hint above");
    }
    println!("ok");
    Ok(())
}
