//! The `[gateway]` and `[metrics]` tables: identities, authorization, limits, circuit breaking
//! and the metrics listener. Typed, unknown fields refused, checked at load by
//! [`GatewayConfig::validate`] with errors naming the field.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A field and what is wrong with it; `config.rs` adds the file.
pub type FieldError = (String, String);

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    #[serde(default)]
    pub identity: IdentityConfig,
    /// OIDC bearer tokens. Absent: bearer tokens are refused.
    pub jwt: Option<JwtConfig>,
    #[serde(default)]
    pub authz: AuthzConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub circuit: CircuitConfig,
    /// Model-extraction and abuse signals per identity (`gateway::abuse`).
    #[serde(default)]
    pub abuse: super::abuse::AbuseConfig,
}

/// Identities from client certificates.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// SPIFFE trust domains whose `spiffe://<domain>/tenant/<t>/app/<a>` URI SANs name an
    /// identity. Empty: URI SANs name no one.
    #[serde(default)]
    pub trust_domains: Vec<String>,
    /// For certificates without such a URI SAN: which subject attributes give the tenant and
    /// the app. Absent: such certificates are unauthenticated.
    pub subject_mapping: Option<SubjectMapping>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubjectMapping {
    /// Subject attribute holding the tenant: `O`, `OU` or `CN`.
    pub tenant: String,
    /// Subject attribute holding the app: `O`, `OU` or `CN`.
    pub app: String,
}

/// Offline verification of OIDC bearer JWTs against a JWKS file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// The JWKS file (`{"keys": [...]}`); reloaded on SIGHUP and when a token names an unknown
    /// `kid` and the file has changed.
    #[serde(deserialize_with = "crate::config::paths::relative")]
    pub jwks: PathBuf,
    /// Required `iss`.
    pub issuer: String,
    /// Required member of `aud`.
    pub audience: String,
    /// Accepted `alg` values: `RS256`, `ES256`. `none` and HMAC algorithms are never accepted.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds (at most 300).
    #[serde(default = "default_leeway_s")]
    pub leeway_s: u64,
    /// Longest token accepted, in bytes.
    #[serde(default = "default_max_token_bytes")]
    pub max_token_bytes: usize,
    /// Claim naming the tenant.
    #[serde(default = "default_tenant_claim")]
    pub tenant_claim: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthzConfig {
    /// The entry point the agent reads: Warden's `decision` object (`{allow, grants, denies}`,
    /// the default) or a boolean rule such as the specification's
    /// `data.serving.routes.allow`.
    #[serde(default = "default_authz_rule")]
    pub rule: String,
    /// Execution limit of one evaluation; past it the request is denied.
    #[serde(default = "default_eval_limit_ms")]
    pub eval_limit_ms: u64,
}

impl Default for AuthzConfig {
    fn default() -> Self {
        AuthzConfig {
            rule: default_authz_rule(),
            eval_limit_ms: default_eval_limit_ms(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Requests handled at once; beyond that, a quick 503 (load shedding), never a queue.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Sustained requests per second per identity, and the burst above it.
    #[serde(default = "default_identity_rate")]
    pub identity_rate_per_s: f64,
    #[serde(default = "default_identity_burst")]
    pub identity_burst: u32,
    /// Sustained requests per second per tenant (all its identities), and the burst.
    #[serde(default = "default_tenant_rate")]
    pub tenant_rate_per_s: f64,
    #[serde(default = "default_tenant_burst")]
    pub tenant_burst: u32,
    /// Quotas per tenant over a longer window (`[gateway.limits.quotas.<tenant>]`): at most
    /// `requests` admitted per fixed window of `window_s`. Tenants without one have none.
    #[serde(default)]
    pub quotas: std::collections::BTreeMap<String, QuotaConfig>,
}

/// One tenant's quota.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    pub requests: u64,
    pub window_s: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_in_flight: default_max_in_flight(),
            identity_rate_per_s: default_identity_rate(),
            identity_burst: default_identity_burst(),
            tenant_rate_per_s: default_tenant_rate(),
            tenant_burst: default_tenant_burst(),
            quotas: std::collections::BTreeMap::new(),
        }
    }
}

/// Circuit breaking toward a failing worker.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitConfig {
    /// Consecutive worker failures that open the circuit of a model version.
    #[serde(default = "default_circuit_failures")]
    pub failures: u32,
    /// How long an open circuit answers 503 at once before one trial request goes through.
    #[serde(default = "default_circuit_open_ms")]
    pub open_ms: u64,
}

impl Default for CircuitConfig {
    fn default() -> Self {
        CircuitConfig {
            failures: default_circuit_failures(),
            open_ms: default_circuit_open_ms(),
        }
    }
}

/// The Prometheus metrics listener: plain HTTP, loopback only unless opted out by name.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve `/metrics`.
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "default_metrics_listen")]
    pub listen: SocketAddr,
    /// Allow a non-loopback `listen` address (metrics are unauthenticated plain HTTP).
    #[serde(default)]
    pub insecure_allow_remote: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            listen: default_metrics_listen(),
            insecure_allow_remote: false,
        }
    }
}

fn yes() -> bool {
    true
}
fn default_metrics_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9464))
}
fn default_algorithms() -> Vec<String> {
    vec!["RS256".into(), "ES256".into()]
}
fn default_leeway_s() -> u64 {
    60
}
fn default_max_token_bytes() -> usize {
    8 * 1024
}
fn default_tenant_claim() -> String {
    "tenant".into()
}
fn default_eval_limit_ms() -> u64 {
    50
}
/// Warden's route decision (`policies/serving/routes.rego`), the default entry point.
pub const DEFAULT_ROUTES_RULE: &str = "data.warden.serving.routes.decision";

fn default_authz_rule() -> String {
    DEFAULT_ROUTES_RULE.to_owned()
}
fn default_max_in_flight() -> usize {
    512
}
fn default_identity_rate() -> f64 {
    100.0
}
fn default_identity_burst() -> u32 {
    200
}
fn default_tenant_rate() -> f64 {
    500.0
}
fn default_tenant_burst() -> u32 {
    1000
}
fn default_circuit_failures() -> u32 {
    5
}
fn default_circuit_open_ms() -> u64 {
    5_000
}

/// The JWT algorithms this build verifies.
pub const SUPPORTED_ALGORITHMS: &[&str] = &["RS256", "ES256"];

impl GatewayConfig {
    pub fn eval_limit(&self) -> Duration {
        Duration::from_millis(self.authz.eval_limit_ms)
    }

    pub fn validate(&self) -> Result<(), FieldError> {
        let bad = |f: &str, m: &str| Err((f.to_string(), m.to_string()));
        for d in &self.identity.trust_domains {
            if d.is_empty()
                || d.len() > 255
                || !d
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
            {
                return bad(
                    "gateway.identity.trust_domains",
                    "each must be a lowercase SPIFFE trust domain name",
                );
            }
        }
        if let Some(m) = &self.identity.subject_mapping {
            for (f, v) in [("tenant", &m.tenant), ("app", &m.app)] {
                if !matches!(v.as_str(), "O" | "OU" | "CN") {
                    return bad(
                        &format!("gateway.identity.subject_mapping.{f}"),
                        "must be one of O, OU, CN",
                    );
                }
            }
        }
        if let Some(j) = &self.jwt {
            if j.algorithms.is_empty() {
                return bad("gateway.jwt.algorithms", "name at least one algorithm");
            }
            for a in &j.algorithms {
                if !SUPPORTED_ALGORITHMS.contains(&a.as_str()) {
                    return bad(
                        "gateway.jwt.algorithms",
                        "only RS256 and ES256 are accepted (never none or HMAC)",
                    );
                }
            }
            if j.issuer.is_empty() {
                return bad("gateway.jwt.issuer", "must not be empty");
            }
            if j.audience.is_empty() {
                return bad("gateway.jwt.audience", "must not be empty");
            }
            if j.leeway_s > 300 {
                return bad("gateway.jwt.leeway_s", "must be at most 300 seconds");
            }
            if !(256..=65_536).contains(&j.max_token_bytes) {
                return bad(
                    "gateway.jwt.max_token_bytes",
                    "must be between 256 and 65536",
                );
            }
            if j.tenant_claim.is_empty() {
                return bad("gateway.jwt.tenant_claim", "must not be empty");
            }
        }
        if !(1..=10_000).contains(&self.authz.eval_limit_ms) {
            return bad(
                "gateway.authz.eval_limit_ms",
                "must be between 1 ms and 10 s",
            );
        }
        if !crate::policy::is_rule_path(&self.authz.rule) {
            return bad(
                "gateway.authz.rule",
                "must name a rule as data.<package>.<rule> (e.g. data.serving.routes.allow)",
            );
        }
        let l = &self.limits;
        if !(1..=1_000_000).contains(&l.max_in_flight) {
            return bad(
                "gateway.limits.max_in_flight",
                "must be between 1 and 1000000",
            );
        }
        for (tenant, q) in &l.quotas {
            if q.requests == 0 {
                return bad(
                    &format!("gateway.limits.quotas.{tenant}.requests"),
                    "must be at least 1 (deny a tenant in the route policy instead)",
                );
            }
            if !(1..=31 * 86_400).contains(&q.window_s) {
                return bad(
                    &format!("gateway.limits.quotas.{tenant}.window_s"),
                    "must be between 1 s and 31 days",
                );
            }
        }
        for (f, r) in [
            ("gateway.limits.identity_rate_per_s", l.identity_rate_per_s),
            ("gateway.limits.tenant_rate_per_s", l.tenant_rate_per_s),
        ] {
            if !(r.is_finite() && r > 0.0 && r <= 1_000_000.0) {
                return bad(f, "must be above 0 and at most 1000000");
            }
        }
        for (f, b) in [
            ("gateway.limits.identity_burst", l.identity_burst),
            ("gateway.limits.tenant_burst", l.tenant_burst),
        ] {
            if !(1..=1_000_000).contains(&b) {
                return bad(f, "must be between 1 and 1000000");
            }
        }
        self.abuse.validate()?;
        if self.circuit.failures == 0 {
            return bad("gateway.circuit.failures", "must be at least 1");
        }
        if !(1..=3_600_000).contains(&self.circuit.open_ms) {
            return bad(
                "gateway.circuit.open_ms",
                "must be between 1 ms and one hour",
            );
        }
        Ok(())
    }
}

impl MetricsConfig {
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.enabled && !self.listen.ip().is_loopback() && !self.insecure_allow_remote {
            return Err((
                "metrics.listen".into(),
                "metrics are plain, unauthenticated HTTP: use a loopback address (or set \
                 metrics.insecure_allow_remote = true)"
                    .into(),
            ));
        }
        Ok(())
    }
}
