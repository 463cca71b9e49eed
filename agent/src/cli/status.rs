//! `warden status`: the running agent's models (ready, restarting, quarantined, withdrawn)
//! and the policy set in force, from its state directory; the machine's accelerators; and,
//! through the running key service, the key store. With keyd stopped the key store's own
//! report is `warden-keyd status`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use warden_agent::config::Config;
use warden_attest::policyset::files::policy_set_digest;
use warden_keystore::KeyStore;
use warden_keystore::keyd::KeydClient;
use warden_keystore::report::{Line, print_lines, status_lines};

/// Options of `warden status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The agent's config: report the running agent's models (ready, restarting, quarantined,
    /// withdrawn) from its state directory, and the machine's accelerators.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Ask the running key service on this socket.
    #[arg(long)]
    pub keyd_socket: Option<PathBuf>,
    /// The policy directory whose digest releases must pin (reported with the key store).
    #[arg(long, default_value = "/etc/warden/policies")]
    pub policies: PathBuf,
}

/// Runs `warden status`; fails when something is wrong.
pub fn run(args: &StatusArgs) -> anyhow::Result<()> {
    let mut lines = Vec::new();
    if let Some(config) = &args.config {
        let config = Config::load(config)?;
        lines.extend(warden_agent::status::report_lines(
            &config.state.directory,
            config.trust.signer_expiry_warning(),
        ));
        match warden_agent::models::policy_set::active_set(&config.state.directory) {
            Ok(None) => {}
            Ok(Some(set)) => {
                let policies = set.join(warden_agent::models::policy_set::POLICIES);
                lines.push(match policy_set_digest(&policies) {
                    Ok(d) => Line::Fine(format!(
                        "policy set in force: pushed by the fleet authority, {d} ({})",
                        set.display()
                    )),
                    Err(e) => Line::Problem(format!("pushed policy set {}: {e}", set.display())),
                });
            }
            Err(e) => lines.push(Line::Problem(format!("pushed policy set: {e}"))),
        }
    }
    match &args.keyd_socket {
        Some(socket) => {
            let store: Arc<dyn KeyStore> = Arc::new(
                KeydClient::connect(socket)
                    .with_context(|| format!("connecting to keyd at {}", socket.display()))?,
            );
            lines.extend(status_lines(store.as_ref()));
            lines.push(match policy_set_digest(&args.policies) {
                Ok(d) => Line::Fine(format!(
                    "policy set {}: {d} (releases must pin this digest)",
                    args.policies.display()
                )),
                Err(e) => Line::Problem(format!(
                    "policy set: {e}\n  hint: pass --policies DIR (the directory holding serving/startup.rego)"
                )),
            });
        }
        None if args.config.is_some() => {}
        None => bail!(
            "name the agent (--config FILE) and/or the key service (--keyd-socket PATH; with keyd \
             stopped, `warden-keyd status --config FILE`)"
        ),
    }
    let problems = print_lines(lines);
    if problems > 0 {
        bail!("{problems} problem(s): see the hints above");
    }
    println!("ok");
    Ok(())
}
