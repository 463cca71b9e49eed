//! Limits: the global in-flight cap (load shedding), per-identity and per-tenant rate limits
//! (GCRA, one theoretical arrival time per key), per-tenant quotas over longer fixed windows,
//! and the circuit breaker toward failing workers. All are in-memory and bounded (quota
//! windows start again when the agent restarts); none queues a request.

use super::config::{CircuitConfig, LimitsConfig, QuotaConfig};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Keys kept per rate-limit table before stale ones are swept.
const MAX_KEYS: usize = 100_000;

/// The global concurrency limit: a permit or an immediate refusal.
pub struct InFlight {
    permits: Arc<Semaphore>,
}

impl InFlight {
    pub fn new(max: usize) -> InFlight {
        InFlight {
            permits: Arc::new(Semaphore::new(max)),
        }
    }

    /// `None` means shed: the caller answers 503 at once.
    pub fn try_acquire(&self) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_owned().ok()
    }
}

/// One GCRA limit: `rate` per second sustained, `burst` at once.
#[derive(Debug, Clone, Copy)]
struct Gcra {
    interval: Duration,
    burst: u32,
}

impl Gcra {
    fn new(rate: f64, burst: u32) -> Gcra {
        Gcra {
            interval: Duration::from_secs_f64(1.0 / rate),
            burst,
        }
    }

    fn tolerance(&self) -> Duration {
        self.interval * self.burst
    }

    /// The new arrival time if admitted, else how long to wait.
    fn check(&self, tat: Option<Instant>, now: Instant) -> Result<Instant, Duration> {
        let tat = tat.map_or(now, |t| t.max(now));
        let new_tat = tat + self.interval;
        let ahead = new_tat - now;
        if ahead > self.tolerance() {
            Err(ahead - self.tolerance())
        } else {
            Ok(new_tat)
        }
    }

    fn remaining(&self, tat: Instant, now: Instant) -> u32 {
        let used = tat.saturating_duration_since(now);
        let free = self.tolerance().saturating_sub(used);
        (free.as_nanos() / self.interval.as_nanos().max(1)) as u32
    }
}

/// What the limiter says, with what the `RateLimit`/`Retry-After` headers carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateVerdict {
    pub allowed: bool,
    /// `identity` or `tenant`: the limit that refused.
    pub limited_by: Option<&'static str>,
    /// The tighter of the two bursts, what is left of it, and seconds until it is full again.
    pub limit: u32,
    pub remaining: u32,
    pub reset_s: u64,
    pub retry_after_s: u64,
}

pub struct RateLimiter {
    identity: Gcra,
    tenant: Gcra,
    quotas: HashMap<String, QuotaConfig>,
    state: Mutex<Tables>,
}

#[derive(Default)]
struct Tables {
    identity: HashMap<String, Instant>,
    tenant: HashMap<String, Instant>,
    /// Per configured tenant: the current window's start and what it has used.
    quota: HashMap<String, (Instant, u64)>,
}

impl RateLimiter {
    pub fn new(cfg: &LimitsConfig) -> RateLimiter {
        RateLimiter {
            identity: Gcra::new(cfg.identity_rate_per_s, cfg.identity_burst),
            tenant: Gcra::new(cfg.tenant_rate_per_s, cfg.tenant_burst),
            quotas: cfg
                .quotas
                .iter()
                .map(|(t, q)| (t.clone(), q.clone()))
                .collect(),
            state: Mutex::new(Tables::default()),
        }
    }

    /// The tenant's quota window after this request: `Ok((start, used))` to store if admitted,
    /// `Err(wait)` until the window ends. `None`: the tenant has no quota.
    fn quota(
        &self,
        t: &Tables,
        tenant: &str,
        now: Instant,
    ) -> Option<Result<(Instant, u64), Duration>> {
        let q = self.quotas.get(tenant)?;
        let window = Duration::from_secs(q.window_s);
        let (start, used) = match t.quota.get(tenant) {
            Some(&(start, used)) if now < start + window => (start, used),
            _ => (now, 0),
        };
        Some(if used < q.requests {
            Ok((start, used + 1))
        } else {
            Err((start + window).saturating_duration_since(now))
        })
    }

    /// Admits one request of `identity` in `tenant`; both rate limits and the tenant's quota
    /// must admit it, and none is charged when one refuses.
    pub fn check(&self, identity: &str, tenant: &str, now: Instant) -> RateVerdict {
        let mut t = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let id_res = self.identity.check(t.identity.get(identity).copied(), now);
        let tn_res = self.tenant.check(t.tenant.get(tenant).copied(), now);
        let quota = self.quota(&t, tenant, now);
        if let Some(Err(wait)) = quota {
            return RateVerdict {
                allowed: false,
                limited_by: Some("tenant_quota"),
                limit: self
                    .quotas
                    .get(tenant)
                    .map_or(0, |q| u32::try_from(q.requests).unwrap_or(u32::MAX)),
                remaining: 0,
                reset_s: ceil_s(wait),
                retry_after_s: ceil_s(wait).max(1),
            };
        }
        let limit = self.identity.burst.min(self.tenant.burst);
        match (id_res, tn_res) {
            (Ok(id_tat), Ok(tn_tat)) => {
                sweep(&mut t.identity, now);
                sweep(&mut t.tenant, now);
                t.identity.insert(identity.to_string(), id_tat);
                t.tenant.insert(tenant.to_string(), tn_tat);
                if let Some(Ok(window)) = quota {
                    t.quota.insert(tenant.to_string(), window);
                }
                let remaining = self
                    .identity
                    .remaining(id_tat, now)
                    .min(self.tenant.remaining(tn_tat, now));
                let reset = id_tat.max(tn_tat).saturating_duration_since(now);
                RateVerdict {
                    allowed: true,
                    limited_by: None,
                    limit,
                    remaining,
                    reset_s: ceil_s(reset),
                    retry_after_s: 0,
                }
            }
            (id, tn) => {
                let (by, wait) = match (id, tn) {
                    (Err(w), _) => ("identity", w),
                    (_, Err(w)) => ("tenant", w),
                    _ => ("identity", Duration::ZERO),
                };
                RateVerdict {
                    allowed: false,
                    limited_by: Some(by),
                    limit,
                    remaining: 0,
                    reset_s: ceil_s(wait),
                    retry_after_s: ceil_s(wait).max(1),
                }
            }
        }
    }
}

fn ceil_s(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Keys whose arrival time has passed hold no state worth keeping.
fn sweep(map: &mut HashMap<String, Instant>, now: Instant) {
    if map.len() >= MAX_KEYS {
        map.retain(|_, tat| *tat > now);
    }
}

/// Circuit breaking per model version: after `failures` consecutive worker failures the
/// circuit opens and requests get a quick 503 without reaching the worker; after `open_ms`
/// one trial request goes through (half open) and its outcome closes or reopens it.
pub struct Circuits {
    cfg: CircuitConfig,
    state: Mutex<HashMap<(String, String), Circuit>>,
}

#[derive(Default)]
struct Circuit {
    failures: u32,
    open_until: Option<Instant>,
    /// When the trial request in flight was let through. A trial whose request never comes
    /// back to `record` (cancelled by its deadline, or its connection dropped) must not hold
    /// the circuit open for ever: after another `open_ms` a new trial is allowed.
    trial_since: Option<Instant>,
}

impl Circuits {
    pub fn new(cfg: &CircuitConfig) -> Circuits {
        Circuits {
            cfg: cfg.clone(),
            state: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a request may go to the worker now.
    pub fn admit(&self, model: &str, version: &str, now: Instant) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let Some(c) = s.get_mut(&(model.to_string(), version.to_string())) else {
            return true;
        };
        let open_for = Duration::from_millis(self.cfg.open_ms);
        match c.open_until {
            None => true,
            Some(until) if now < until => false,
            Some(_) if c.trial_since.is_some_and(|t| now < t + open_for) => false,
            Some(_) => {
                c.trial_since = Some(now);
                true
            }
        }
    }

    pub fn record(&self, model: &str, version: &str, worker_failed: bool, now: Instant) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let c = s
            .entry((model.to_string(), version.to_string()))
            .or_default();
        if worker_failed {
            c.failures = c.failures.saturating_add(1);
            let trial = c.trial_since.is_some();
            if trial || c.failures >= self.cfg.failures {
                if c.open_until.is_none() || trial {
                    tracing::warn!(model, version, "circuit open: the worker keeps failing");
                }
                c.open_until = Some(now + Duration::from_millis(self.cfg.open_ms));
            }
        } else {
            *c = Circuit::default();
        }
        c.trial_since = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(rate: f64, burst: u32, trate: f64, tburst: u32) -> LimitsConfig {
        LimitsConfig {
            max_in_flight: 4,
            identity_rate_per_s: rate,
            identity_burst: burst,
            tenant_rate_per_s: trate,
            tenant_burst: tburst,
            quotas: Default::default(),
        }
    }

    #[test]
    fn gcra_admits_the_burst_then_refuses_with_retry_after() {
        let l = RateLimiter::new(&cfg(1.0, 3, 100.0, 100));
        let t0 = Instant::now();
        for i in 0..3 {
            let v = l.check("a", "t", t0);
            assert!(v.allowed, "request {i}");
            assert_eq!(v.remaining, 2 - i);
        }
        let v = l.check("a", "t", t0);
        assert!(!v.allowed);
        assert_eq!(v.limited_by, Some("identity"));
        assert_eq!(v.retry_after_s, 1);
        // Another identity of the same tenant is not affected.
        assert!(l.check("b", "t", t0).allowed);
        // One interval later one more is admitted.
        assert!(l.check("a", "t", t0 + Duration::from_millis(1001)).allowed);
    }

    #[test]
    fn tenant_limit_covers_all_its_identities_and_charges_nothing_on_refusal() {
        let l = RateLimiter::new(&cfg(100.0, 100, 1.0, 2));
        let t0 = Instant::now();
        assert!(l.check("a", "t", t0).allowed);
        assert!(l.check("b", "t", t0).allowed);
        let v = l.check("c", "t", t0);
        assert_eq!(v.limited_by, Some("tenant"));
        assert!(l.check("c", "other", t0).allowed);
    }

    #[test]
    fn a_tenant_quota_refuses_until_its_window_ends_and_charges_nothing_on_refusal() {
        let mut c = cfg(1000.0, 1000, 1000.0, 1000);
        c.quotas.insert(
            "t".into(),
            QuotaConfig {
                requests: 3,
                window_s: 3600,
            },
        );
        let l = RateLimiter::new(&c);
        let t0 = Instant::now();
        for i in 0..3 {
            assert!(l.check(&format!("a{i}"), "t", t0).allowed, "request {i}");
        }
        let v = l.check("a9", "t", t0 + Duration::from_secs(1));
        assert!(!v.allowed);
        assert_eq!(v.limited_by, Some("tenant_quota"));
        assert_eq!(v.retry_after_s, 3599);
        assert_eq!(v.limit, 3);
        assert!(
            l.check("a0", "u", t0).allowed,
            "other tenants have no quota"
        );
        // A refusal by the identity's rate limit does not use up quota.
        let mut tight = cfg(1.0, 1, 1000.0, 1000);
        tight.quotas = c.quotas.clone();
        let l = RateLimiter::new(&tight);
        assert!(l.check("a", "t", t0).allowed);
        assert!(!l.check("a", "t", t0).allowed);
        assert!(!l.check("a", "t", t0).allowed);
        assert!(l.check("b", "t", t0).allowed);
        assert!(l.check("c", "t", t0).allowed);
        assert_eq!(l.check("d", "t", t0).limited_by, Some("tenant_quota"));
        // The next window admits again.
        assert!(l.check("d", "t", t0 + Duration::from_secs(3600)).allowed);
    }

    #[test]
    fn in_flight_sheds_beyond_the_cap() {
        let f = InFlight::new(2);
        let a = f.try_acquire().unwrap();
        let _b = f.try_acquire().unwrap();
        assert!(f.try_acquire().is_none());
        drop(a);
        assert!(f.try_acquire().is_some());
    }

    #[test]
    fn circuit_opens_half_opens_and_closes() {
        let c = Circuits::new(&CircuitConfig {
            failures: 2,
            open_ms: 100,
        });
        let t0 = Instant::now();
        assert!(c.admit("m", "1", t0));
        c.record("m", "1", true, t0);
        assert!(c.admit("m", "1", t0));
        c.record("m", "1", true, t0);
        assert!(!c.admit("m", "1", t0), "open after two failures");
        assert!(c.admit("m", "2", t0), "other versions are not affected");
        let later = t0 + Duration::from_millis(150);
        assert!(c.admit("m", "1", later), "one trial");
        assert!(!c.admit("m", "1", later), "only one trial at a time");
        c.record("m", "1", true, later);
        assert!(!c.admit("m", "1", later), "a failed trial reopens");
        let much_later = later + Duration::from_millis(150);
        assert!(c.admit("m", "1", much_later));
        c.record("m", "1", false, much_later);
        assert!(c.admit("m", "1", much_later) && c.admit("m", "1", much_later));
    }

    #[test]
    fn a_trial_that_never_reports_back_does_not_hold_the_circuit_open() {
        let c = Circuits::new(&CircuitConfig {
            failures: 1,
            open_ms: 100,
        });
        let t0 = Instant::now();
        c.record("m", "1", true, t0);
        let t1 = t0 + Duration::from_millis(150);
        assert!(c.admit("m", "1", t1), "the trial");
        // Its request is cancelled: `record` never runs.
        assert!(!c.admit("m", "1", t1 + Duration::from_millis(50)));
        assert!(
            c.admit("m", "1", t1 + Duration::from_millis(150)),
            "a new trial once the lost one is older than open_ms"
        );
        c.record("m", "1", false, t1 + Duration::from_millis(160));
        assert!(c.admit("m", "1", t1 + Duration::from_millis(160)));
    }
}
