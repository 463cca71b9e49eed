//! The gateway: who is calling (authn), whether they may (authz), how much (limits and abuse
//! signals), whether the model's worker is trusted with more (circuit breaker), and what is
//! counted (metrics). Each is one stage method of [`Gateway`], testable alone; the order in
//! which a request meets them is the inference stack's, numbered once in
//! [`crate::inference`].
//!
//! - [`Gateway::admit`]: the global concurrency limit with load shedding (a quick 503).
//! - [`Gateway::authenticate`]: client certificate or bearer JWT → [`Identity`] (401).
//! - [`Gateway::authorize`]: `routes.rego` on {identity, tenant, method, route, model, version}
//!   (403, default deny).
//! - [`Gateway::rate`]: per-identity and per-tenant GCRA (429 with `Retry-After`).
//! - [`Gateway::observe_abuse`]: sweep and near-duplicate signals (throttle, label only, deny).
//! - [`Gateway::circuit_admit`] / [`Gateway::circuit_record`]: the per-version circuit breaker.
//! - [`Gateway::record`]: the metrics of one finished request.

pub mod abuse;
pub mod authz;
pub mod config;
pub mod identity;
pub mod jwt;
pub mod limits;
pub mod metrics;

use crate::listener::tls::CertNames;
use authz::{Decision, PolicyInput, RoutePolicy};
use config::GatewayConfig;
use http::HeaderMap;
use identity::Identity;
use jwt::{JwksError, JwtVerifier, TokenError};
use limits::{Circuits, InFlight, RateLimiter, RateVerdict};
use metrics::Metrics;
use std::sync::Arc;
use std::time::Instant;
use warden_runtime_client::tensor::Tensor;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Jwks(#[from] JwksError),
}

/// Why a request is unauthenticated; goes to the log and the audit reason, never the client.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthnError {
    #[error("no client certificate identity and no bearer token")]
    Missing,
    #[error("the client certificate names no configured identity")]
    UnmappedCertificate,
    #[error("malformed Authorization header")]
    Header,
    #[error("bearer tokens are not accepted here")]
    BearerDisabled,
    #[error("bearer token refused: {0}")]
    Token(#[from] TokenError),
}

pub struct Gateway {
    cfg: GatewayConfig,
    jwt: Option<JwtVerifier>,
    policy: RoutePolicy,
    rates: RateLimiter,
    in_flight: InFlight,
    circuits: Circuits,
    abuse: abuse::AbuseDetector,
    metrics: Arc<Metrics>,
}

impl Gateway {
    /// Loads the JWKS (failing stops `warden serve`). The route policy comes from the policy
    /// set put in force through [`Gateway::routes`]; until then every request is denied.
    pub fn new(cfg: &GatewayConfig) -> Result<Gateway, GatewayError> {
        let jwt = cfg.jwt.clone().map(JwtVerifier::new).transpose()?;
        let policy = RoutePolicy::new(cfg.eval_limit(), &cfg.authz.rule);
        Ok(Gateway {
            cfg: cfg.clone(),
            jwt,
            policy,
            rates: RateLimiter::new(&cfg.limits),
            in_flight: InFlight::new(cfg.limits.max_in_flight),
            circuits: Circuits::new(&cfg.circuit),
            abuse: abuse::AbuseDetector::new(&cfg.abuse),
            metrics: Arc::new(Metrics::default()),
        })
    }

    /// SIGHUP: re-read the JWKS; on failure the previous keys stay. (The route policy is part
    /// of the policy set, reloaded with it: `crate::policy_in_force`.)
    pub fn reload_keys(&self) -> Result<(), GatewayError> {
        if let Some(j) = &self.jwt {
            j.reload()?;
        }
        Ok(())
    }

    /// The route policy, for putting a policy set's in force.
    pub fn routes(&self) -> &RoutePolicy {
        &self.policy
    }

    /// The counters `/metrics` renders.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// A permit for one request, or `None` to shed it.
    pub fn admit(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let p = self.in_flight.try_acquire();
        if p.is_none() {
            self.metrics.shed();
        }
        p
    }

    /// A bearer token, when the request carries one, decides alone (a bad token is
    /// refused even on a connection with a good certificate); otherwise the certificate.
    pub fn authenticate(
        &self,
        cert: Option<&CertNames>,
        headers: &HeaderMap,
    ) -> Result<Identity, AuthnError> {
        let mut auth = headers.get_all(http::header::AUTHORIZATION).iter();
        if let Some(value) = auth.next() {
            if auth.next().is_some() {
                return Err(AuthnError::Header);
            }
            let jwt = self.jwt.as_ref().ok_or(AuthnError::BearerDisabled)?;
            let value = value.to_str().map_err(|_| AuthnError::Header)?;
            let (scheme, token) = value.split_once(' ').ok_or(AuthnError::Header)?;
            if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
                return Err(AuthnError::Header);
            }
            return Ok(jwt.verify(token.trim())?);
        }
        let cert = cert.ok_or(AuthnError::Missing)?;
        identity::from_certificate(cert, &self.cfg.identity).ok_or(AuthnError::UnmappedCertificate)
    }

    /// The route policy's decision; counted when it denies.
    pub fn authorize(
        &self,
        identity: &Identity,
        method: &str,
        route: &str,
        model: Option<&str>,
        version: Option<&str>,
    ) -> Decision {
        let d = self.policy.decide(&PolicyInput {
            identity,
            tenant: &identity.tenant,
            method,
            route,
            model,
            version,
        });
        if !d.allow {
            self.metrics.denied(&d.rule);
        }
        d
    }

    /// Rate limits for this identity and its tenant; counted when they refuse.
    pub fn rate(&self, identity: &Identity) -> RateVerdict {
        let v = self
            .rates
            .check(&identity.id, &identity.tenant, Instant::now());
        if let Some(by) = v.limited_by {
            self.metrics.limited(by);
        }
        v
    }

    /// The abuse signals of one inference request of `identity`: `Some` when the identity is
    /// flagged (counted and logged once, when it is first flagged).
    pub fn observe_abuse(&self, identity: &str, inputs: &[Tensor]) -> Option<abuse::AbuseVerdict> {
        let verdict = self.abuse.observe(identity, inputs, Instant::now())?;
        if verdict.newly_flagged {
            self.metrics.abuse(verdict.signal);
            tracing::warn!(
                identity,
                signal = verdict.signal,
                "abuse signal: identity flagged"
            );
        }
        Some(verdict)
    }

    /// The outputs a flagged identity still gets under `label_only`.
    pub fn label_outputs(&self) -> &[String] {
        self.abuse.label_outputs()
    }

    /// Whether the version's circuit lets a request through; counted when it is open.
    pub fn circuit_admit(&self, model: &str, version: &str) -> bool {
        let admitted = self.circuits.admit(model, version, Instant::now());
        if !admitted {
            self.metrics.circuit_open();
        }
        admitted
    }

    /// How the version's worker answered (a refused input is the caller's fault, not the
    /// worker's).
    pub fn circuit_record(&self, model: &str, version: &str, worker_failed: bool) {
        self.circuits
            .record(model, version, worker_failed, Instant::now());
    }

    /// The metrics of one finished request.
    pub fn record(&self, route: &str, model: &str, outcome: &str, latency: std::time::Duration) {
        self.metrics.request(route, model, outcome, latency);
    }
}
