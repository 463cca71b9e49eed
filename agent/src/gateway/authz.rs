//! Authorization: `serving/routes.rego` of the policy set in force, with the set's data
//! documents (the grants), evaluated through the agent's one policy engine ([`crate::policy`]).
//!
//! Fail closed everywhere: no policy set, a set without the route policy, a policy that does
//! not compile, an evaluation error, a result of the wrong shape or an evaluation past its
//! execution limit all deny. The compiled policy (policy + data) sits behind an `Arc` that is
//! swapped atomically when another set is put in force (`crate::policy_in_force`); a request
//! evaluates on its own engine, so a swap never disturbs a request in flight.

use super::identity::Identity;
use crate::policy::set::{PolicySetError, PolicySetFiles};
use crate::policy::{CompiledPolicy, field};
use serde::Serialize;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// `policies/serving/routes.rego` as shipped with this build (the demo writes it out).
pub const SHIPPED_ROUTES_REGO: &str = include_str!("../../../policies/serving/routes.rego");

/// Warden's entry point (the default of `[gateway.authz] rule`).
pub const DECISION_RULE: &str = super::config::DEFAULT_ROUTES_RULE;
/// The route policy, relative to the policy set's directory.
pub const ROUTES_POLICY: &str = "serving/routes.rego";

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The set has no route policy: every request would be denied.
    #[error("the policy set {directory} has no {ROUTES_POLICY}: every request would be denied")]
    Missing { directory: std::path::PathBuf },
    #[error(transparent)]
    Set(#[from] PolicySetError),
    #[error(transparent)]
    Compile(#[from] crate::policy::PolicyError),
}

/// What the policy decides on. The policy sees `{identity, tenant, app, method, route,
/// model: {name, version}}` (`model` null on server-wide routes), the field names of the
/// specification's route policy (6.2) among them: `app` is the calling application (the
/// certificate's app, or the token's subject).
#[derive(Debug)]
pub struct PolicyInput<'a> {
    pub identity: &'a Identity,
    pub tenant: &'a str,
    pub method: &'a str,
    pub route: &'a str,
    pub model: Option<&'a str>,
    /// The version that will serve the request.
    pub version: Option<&'a str>,
}

impl Serialize for PolicyInput<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Model<'a> {
            name: &'a str,
            version: Option<&'a str>,
        }
        #[derive(Serialize)]
        struct Input<'a> {
            identity: &'a Identity,
            tenant: &'a str,
            app: &'a str,
            method: &'a str,
            route: &'a str,
            model: Option<Model<'a>>,
        }
        Input {
            identity: self.identity,
            tenant: self.tenant,
            app: &self.identity.subject,
            method: self.method,
            route: self.route,
            model: self.model.map(|name| Model {
                name,
                version: self.version,
            }),
        }
        .serialize(s)
    }
}

/// A decision and the rule that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allow: bool,
    /// The first deny rule that matched, else the first grant, else `default_deny`; or
    /// `no_policy` / `evaluation_error`.
    pub rule: String,
}

impl Decision {
    fn deny(rule: &str) -> Decision {
        Decision {
            allow: false,
            rule: rule.to_string(),
        }
    }
}

/// A compiled route policy and the decisions it made, ready to be put in force.
pub struct Prepared {
    policy: CompiledPolicy,
    /// The entry point's name as a decision names it (`serving.routes.allow`), for a boolean
    /// entry point; `None` for Warden's own, which must answer a decision object.
    rule_name: Option<String>,
    /// Decisions by input. A decision is a function of the input and of this policy and data
    /// only (a reload builds a new `Prepared`, so the cache never outlives them); a policy that
    /// calls a builtin whose answer can change between calls is not cached at all.
    cache: Option<std::sync::Mutex<std::collections::HashMap<String, Decision>>>,
}

/// Distinct inputs whose decisions are kept; when full the cache starts over.
const CACHE_MAX: usize = 4096;
/// Builtins whose answer can differ between two evaluations of the same input.
const NONDETERMINISTIC_BUILTINS: [&str; 5] =
    ["time.", "rand.", "uuid.", "http.send", "opa.runtime"];

/// The route policy in force (none: every request is denied).
pub struct RoutePolicy {
    limit: Duration,
    /// The entry point (`[gateway.authz] rule`): Warden's `decision` object, or a boolean rule
    /// such as the specification's `data.serving.routes.allow`.
    rule: String,
    current: RwLock<Option<Arc<Prepared>>>,
}

impl RoutePolicy {
    /// No policy yet: every request is denied until one is put in force.
    pub fn new(limit: Duration, rule: &str) -> RoutePolicy {
        RoutePolicy {
            limit,
            rule: rule.to_owned(),
            current: RwLock::new(None),
        }
    }

    /// Compiles the policies of `set` with its data, to answer the entry point, without
    /// putting them in force. With Warden's entry point the set must hold its route policy.
    pub fn compile(&self, set: &PolicySetFiles) -> Result<Prepared, PolicyError> {
        if self.rule == DECISION_RULE && set.policy(ROUTES_POLICY).is_none() {
            return Err(PolicyError::Missing {
                directory: set.directory().to_path_buf(),
            });
        }
        let sources = set.policies()?;
        let data = set.data()?;
        // The probe on an empty input also leaves the engine prepared (rules analysed and
        // scheduled), so the per-request engines skip that work.
        let (policy, _) = CompiledPolicy::compile(
            &sources,
            Some(("the policy set's data", data)),
            &self.rule,
            self.limit,
        )?;
        let cacheable = !sources
            .iter()
            .any(|s| NONDETERMINISTIC_BUILTINS.iter().any(|b| s.text.contains(b)));
        Ok(Prepared {
            policy,
            rule_name: (self.rule != DECISION_RULE).then(|| {
                self.rule
                    .strip_prefix("data.")
                    .unwrap_or(&self.rule)
                    .to_owned()
            }),
            cache: cacheable.then(|| std::sync::Mutex::new(std::collections::HashMap::new())),
        })
    }

    /// Puts a compiled policy in force, at once.
    pub fn install(&self, prepared: Prepared) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(prepared));
    }

    /// The route policy of `set`, in force (tests, benchmarks).
    pub fn from_set(set: &PolicySetFiles, limit: Duration) -> Result<RoutePolicy, PolicyError> {
        Self::from_set_with_rule(set, limit, DECISION_RULE)
    }

    /// [`RoutePolicy::from_set`] answering another entry point.
    pub fn from_set_with_rule(
        set: &PolicySetFiles,
        limit: Duration,
        rule: &str,
    ) -> Result<RoutePolicy, PolicyError> {
        let p = RoutePolicy::new(limit, rule);
        let prepared = p.compile(set)?;
        p.install(prepared);
        Ok(p)
    }

    pub fn decide(&self, input: &PolicyInput<'_>) -> Decision {
        let current = self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match current {
            None => Decision::deny("no_policy"),
            Some(p) => evaluate(&p, input),
        }
    }
}

fn evaluate(p: &Prepared, input: &PolicyInput<'_>) -> Decision {
    let Some(cache) = &p.cache else {
        return evaluate_uncached(p, input);
    };
    let Ok(key) = serde_json::to_string(input) else {
        return Decision::deny("evaluation_error");
    };
    if let Some(d) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return d.clone();
    }
    let decision = evaluate_uncached(p, input);
    // Evaluation errors (a time limit hit under load, say) are not remembered.
    if decision.rule != "evaluation_error" {
        let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(key, decision.clone());
    }
    decision
}

fn evaluate_uncached(p: &Prepared, input: &PolicyInput<'_>) -> Decision {
    match p.policy.evaluate_json(input) {
        Ok(v) => read_decision(&v, p.rule_name.as_deref())
            .unwrap_or_else(|| Decision::deny("evaluation_error")),
        Err(e) => {
            tracing::warn!(error = %e, "route policy evaluation failed: denied");
            Decision::deny("evaluation_error")
        }
    }
}

/// `{"allow": bool, "grants": set, "denies": set}` → a decision naming its rule; a boolean
/// from a configured boolean entry point (`allow`) → a decision named after it. Anything else
/// (a boolean from Warden's own decision rule included) is the wrong shape: `None`.
fn read_decision(v: &regorus::Value, rule_name: Option<&str>) -> Option<Decision> {
    if let (Ok(allow), Some(rule)) = (v.as_bool(), rule_name) {
        return Some(Decision {
            allow: *allow,
            rule: rule.to_owned(),
        });
    }
    let allow = *field(v, "allow")?.as_bool().ok()?;
    let first = |k: &str| -> Option<String> {
        field(v, k)?
            .as_set()
            .ok()?
            .iter()
            .next()
            .and_then(|r| r.as_string().ok().map(|s| s.to_string()))
    };
    let rule = if allow {
        first("grants")?
    } else {
        first("denies").unwrap_or_else(|| "default_deny".to_string())
    };
    Some(Decision { allow, rule })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::identity::IdentityKind;

    use std::path::Path;

    fn repo_policy() -> String {
        std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/serving/routes.rego"),
        )
        .unwrap()
    }

    /// A policy set holding `routes` as its route policy and `data` as its data document.
    fn set_of(routes: &str, data: Option<&str>) -> (tempfile::TempDir, PolicySetFiles) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("serving")).unwrap();
        std::fs::write(dir.path().join(ROUTES_POLICY), routes).unwrap();
        if let Some(data) = data {
            std::fs::write(dir.path().join("data.json"), data).unwrap();
        }
        let set = PolicySetFiles::read(dir.path()).unwrap();
        (dir, set)
    }

    fn load(routes: &str, data: Option<&str>, limit_ms: u64) -> Result<RoutePolicy, PolicyError> {
        let (_dir, set) = set_of(routes, data);
        RoutePolicy::from_set(&set, Duration::from_millis(limit_ms))
    }

    /// The policy's case file (`policies/serving/routes_test.json`), every case.
    #[test]
    fn route_policy_case_table() {
        let cases_path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/serving/routes_test.json");
        let table: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&cases_path).unwrap()).unwrap();
        let policy = load(&repo_policy(), Some(&table["data"].to_string()), 50).unwrap();
        let cases = table["cases"].as_array().unwrap();
        assert!(cases.len() >= 10);
        let mut failures = Vec::new();
        for case in cases {
            let i = &case["input"];
            let identity: Identity = Identity {
                kind: match i["identity"]["kind"].as_str().unwrap() {
                    "jwt" => IdentityKind::Jwt,
                    "mtls_subject" => IdentityKind::MtlsSubject,
                    _ => IdentityKind::MtlsUri,
                },
                id: "x".into(),
                tenant: i["identity"]["tenant"].as_str().unwrap().into(),
                subject: i["identity"]["subject"].as_str().unwrap().into(),
                scopes: serde_json::from_value(i["identity"]["scopes"].clone()).unwrap(),
            };
            let d = policy.decide(&PolicyInput {
                identity: &identity,
                tenant: i["tenant"].as_str().unwrap(),
                method: i["method"].as_str().unwrap(),
                route: i["route"].as_str().unwrap(),
                model: i["model"].as_str(),
                version: i["version"].as_str(),
            });
            let want = (
                case["allow"].as_bool().unwrap(),
                case["rule"].as_str().unwrap(),
            );
            if (d.allow, d.rule.as_str()) != want {
                failures.push(format!("{}: got {d:?}, want {want:?}", case["name"]));
            }
        }
        assert!(failures.is_empty(), "{failures:#?}");
    }

    fn id() -> Identity {
        Identity {
            kind: IdentityKind::MtlsUri,
            id: "x".into(),
            tenant: "acme".into(),
            subject: "app".into(),
            scopes: vec![],
        }
    }

    fn health(p: &RoutePolicy) -> Decision {
        let identity = id();
        p.decide(&PolicyInput {
            identity: &identity,
            tenant: "acme",
            method: "GET",
            route: "/v2/health/live",
            model: None,
            version: None,
        })
    }

    #[test]
    fn fails_closed() {
        // No policy set.
        let none = RoutePolicy::new(Duration::from_millis(50), DECISION_RULE);
        assert_eq!(health(&none), Decision::deny("no_policy"));
        // A set without the route policy, and a policy that does not compile, are refused.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("other.rego"), "package other\n").unwrap();
        let set = PolicySetFiles::read(dir.path()).unwrap();
        assert!(matches!(
            RoutePolicy::from_set(&set, Duration::from_millis(50)),
            Err(PolicyError::Missing { .. })
        ));
        assert!(load("package warden.serving.routes\ndecision := {", None, 50).is_err());
        // Data that is not JSON is refused.
        assert!(load(&repo_policy(), Some("{"), 50).is_err());
        // A policy whose decision errors at run time (a conflict) denies.
        let conflict = "package warden.serving.routes\n\
             decision := {\"allow\": true, \"grants\": {\"a\"}, \"denies\": set()} if input.method == \"GET\"\n\
             decision := {\"allow\": false, \"grants\": set(), \"denies\": {\"b\"}} if input.route != \"\"\n";
        let p = load(conflict, None, 50).unwrap();
        assert_eq!(health(&p), Decision::deny("evaluation_error"));
        // A policy that runs past its execution limit denies.
        let slow = "package warden.serving.routes\n\
             decision := {\"allow\": true, \"grants\": {\"slow\"}, \"denies\": set()} if {\n\
               input.route != \"\"\n\
               count([x | some a in numbers.range(1, 2000); some b in numbers.range(1, 2000); x := a * b]) > 0\n\
             }\n";
        let p = load(slow, None, 5).unwrap();
        let started = std::time::Instant::now();
        assert_eq!(health(&p), Decision::deny("evaluation_error"));
        assert!(started.elapsed() < Duration::from_secs(2));
        // A wrong shape denies.
        let p = load(
            "package warden.serving.routes\ndecision := true\n",
            None,
            50,
        )
        .unwrap();
        assert_eq!(health(&p), Decision::deny("evaluation_error"));
    }

    #[test]
    fn a_compiled_policy_is_put_in_force_at_once_and_a_broken_one_never() {
        let p = load(&repo_policy(), None, 50).unwrap();
        assert!(health(&p).allow);
        let (_d, broken) = set_of("package warden.serving.routes\ndecision := {", None);
        assert!(p.compile(&broken).is_err());
        assert!(
            health(&p).allow,
            "a broken policy must not replace the running one"
        );
        let (_d, lockdown) = set_of(
            "package warden.serving.routes\ndecision := {\"allow\": false, \"grants\": set(), \"denies\": {\"lockdown\"}}\n",
            None,
        );
        let prepared = p.compile(&lockdown).unwrap();
        assert!(health(&p).allow, "compiled is not yet in force");
        p.install(prepared);
        assert_eq!(health(&p), Decision::deny("lockdown"));
    }

    #[test]
    fn decisions_are_cached_only_for_deterministic_policies() {
        let cached = load(&repo_policy(), None, 50).unwrap();
        let first = health(&cached);
        assert_eq!(health(&cached), first);
        let current = cached.current.read().unwrap().clone().unwrap();
        assert_eq!(current.cache.as_ref().unwrap().lock().unwrap().len(), 1);

        let clock = load(
            "package warden.serving.routes\n# office hours come later: time.now_ns()\ndecision := {\"allow\": true, \"grants\": {\"clock\"}, \"denies\": set()}\n",
            None,
            50,
        )
        .unwrap();
        assert!(health(&clock).allow);
        let current = clock.current.read().unwrap().clone().unwrap();
        assert!(
            current.cache.is_none(),
            "a policy reading the clock must not be cached"
        );
    }
}
