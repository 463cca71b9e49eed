//! `warden check`: loads everything `serve` would load, short of starting workers and
//! binding, and says what is wrong with a hint.

use std::path::Path;

use anyhow::Context as _;
use warden_agent::config::Config;

/// Loads everything `serve` would load, short of starting workers and binding, and says what is
/// wrong with a hint.
pub fn run(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    println!(
        "config {}: schema {} ok",
        path.display(),
        config.schema_version
    );
    if config.keystore.is_some() {
        return check_with_key_store(&config);
    }
    warden_agent::listener::tls::server_config(&config.tls).context("TLS")?;
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
                &warden_attest::bundle::VerifyOptions {
                    model_file: Some(m.file.clone()),
                    ..Default::default()
                },
            ) {
                Ok(verified) => {
                    println!(
                        "model {} version {}: signature ok (root digest {}, signer {})",
                        m.name, m.version, verified.root_digest, verified.signer
                    );
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs());
                    if let Some(warning) = verified.signer_valid_until.and_then(|until| {
                        warden_agent::models::report::signer_expiry_warning(
                            until,
                            now,
                            config.trust.signer_expiry_warning(),
                        )
                    }) {
                        println!("WARNING: model {} version {}: {warning}", m.name, m.version);
                    }
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
    let gateway_problems = check_gateway(&config, None)?;
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
/// The gateway's identities and route policy; `in_force` is the policy set the agent would
/// run when it differs from the configured one (a set pushed by the fleet authority).
fn check_gateway(
    config: &Config,
    in_force: Option<&warden_agent::policy::set::PolicySetFiles>,
) -> anyhow::Result<usize> {
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
    let configured = match (in_force, &config.policy) {
        (Some(_), _) | (None, None) => None,
        (None, Some(p)) => Some(
            warden_agent::policy::set::PolicySetFiles::read(&p.directory)
                .context("the policy set")?,
        ),
    };
    match in_force.or(configured.as_ref()) {
        Some(set) => {
            // The set as `serve` would run it, its route policy compiled with its data.
            warden_agent::gateway::authz::RoutePolicy::from_set_with_rule(
                set,
                g.eval_limit(),
                &g.authz.rule,
            )
            .context("the route policy")?;
            println!(
                "gateway: authorization by {} (policy set digest {})",
                set.directory()
                    .join(warden_agent::gateway::authz::ROUTES_POLICY)
                    .display(),
                set.digest()
            );
        }
        None => {
            println!(
                "gateway: NO POLICY SET: every request would be refused (403)\n  hint: set \
                 [policy] directory"
            );
            return Ok(1);
        }
    }
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
    warden_agent::listener::keystore_tls::listener_config(&config.tls, Some(&trust.store))
        .context("TLS")?;
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
    if check_gateway(config, Some(&trust.policy_set()))? > 0 {
        anyhow::bail!("gateway problem: see the hint above");
    }
    println!("ok");
    Ok(())
}
