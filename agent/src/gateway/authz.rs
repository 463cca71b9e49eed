//! Authorization: `policies/serving/routes.rego`, evaluated through the agent's one policy
//! engine ([`crate::policy`]).
//!
//! Fail closed everywhere: no policy configured, a policy that does not load, an evaluation
//! error, a result of the wrong shape or an evaluation past its execution limit all deny. The
//! compiled policy (policy + data) sits behind an `Arc` that a reload swaps atomically; a
//! request evaluates on its own engine, so a reload never disturbs a request in flight.

use super::identity::Identity;
use crate::policy::{CompiledPolicy, Source, field};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// `policies/serving/routes.rego` as shipped with this build (the demo writes it out).
pub const SHIPPED_ROUTES_REGO: &str = include_str!("../../../policies/serving/routes.rego");

/// The rule the agent reads.
pub const DECISION_RULE: &str = "data.warden.serving.routes.decision";

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("policy data {path}: {message}")]
    Data { path: PathBuf, message: String },
    #[error(transparent)]
    Compile(#[from] crate::policy::PolicyError),
}

/// What the policy decides on.
#[derive(Debug, Serialize)]
pub struct PolicyInput<'a> {
    pub identity: &'a Identity,
    pub tenant: &'a str,
    pub method: &'a str,
    pub route: &'a str,
    pub model: Option<&'a str>,
    pub version: Option<&'a str>,
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

/// A loaded policy and the decisions it made.
struct Prepared {
    policy: CompiledPolicy,
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

/// The route policy, reloadable.
pub struct RoutePolicy {
    policy: Option<PathBuf>,
    data: Option<PathBuf>,
    limit: Duration,
    current: RwLock<Option<Arc<Prepared>>>,
}

impl RoutePolicy {
    /// Loads the policy now; a config naming a broken policy does not start.
    pub fn load(
        policy: Option<&Path>,
        data: Option<&Path>,
        limit: Duration,
    ) -> Result<RoutePolicy, PolicyError> {
        let p = RoutePolicy {
            policy: policy.map(Path::to_path_buf),
            data: data.map(Path::to_path_buf),
            limit,
            current: RwLock::new(None),
        };
        p.reload()?;
        Ok(p)
    }

    /// Re-reads policy and data and swaps them in at once; on error the running policy stays.
    pub fn reload(&self) -> Result<(), PolicyError> {
        let Some(path) = &self.policy else {
            return Ok(());
        };
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.clone(),
            source,
        })?;
        let data = match &self.data {
            Some(d) => Some(
                std::fs::read_to_string(d).map_err(|source| PolicyError::Read {
                    path: d.clone(),
                    source,
                })?,
            ),
            None => None,
        };
        let prepared = prepare(
            path,
            &text,
            data.as_deref(),
            self.data.as_deref(),
            self.limit,
        )?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(prepared));
        Ok(())
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

fn prepare(
    path: &Path,
    text: &str,
    data: Option<&str>,
    data_path: Option<&Path>,
    limit: Duration,
) -> Result<Prepared, PolicyError> {
    let data = match data {
        Some(d) => {
            let dpath = data_path.unwrap_or(path);
            let value: serde_json::Value =
                serde_json::from_str(d).map_err(|e| PolicyError::Data {
                    path: dpath.to_path_buf(),
                    message: e.to_string(),
                })?;
            Some((dpath.display().to_string(), value))
        }
        None => None,
    };
    let source = Source {
        name: path.display().to_string(),
        text: text.to_owned(),
    };
    // The probe on an empty input also leaves the engine prepared (rules analysed and
    // scheduled), so the per-request engines skip that work.
    let (policy, _) = CompiledPolicy::compile(
        std::slice::from_ref(&source),
        data.as_ref().map(|(n, v)| (n.as_str(), v.clone())),
        DECISION_RULE,
        limit,
    )?;
    let cacheable = !NONDETERMINISTIC_BUILTINS.iter().any(|b| text.contains(b));
    Ok(Prepared {
        policy,
        cache: cacheable.then(|| std::sync::Mutex::new(std::collections::HashMap::new())),
    })
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
        Ok(v) => read_decision(&v).unwrap_or_else(|| Decision::deny("evaluation_error")),
        Err(e) => {
            tracing::warn!(error = %e, "route policy evaluation failed: denied");
            Decision::deny("evaluation_error")
        }
    }
}

/// `{"allow": bool, "grants": set, "denies": set}` → a decision naming its rule.
fn read_decision(v: &regorus::Value) -> Option<Decision> {
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

    fn repo_policy() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/serving/routes.rego")
    }

    /// The policy's case file (`policies/serving/routes_test.json`), every case.
    #[test]
    fn route_policy_case_table() {
        let cases_path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/serving/routes_test.json");
        let table: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&cases_path).unwrap()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data.json");
        std::fs::write(&data, table["data"].to_string()).unwrap();
        let policy =
            RoutePolicy::load(Some(&repo_policy()), Some(&data), Duration::from_millis(50))
                .unwrap();
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
        let dir = tempfile::tempdir().unwrap();
        // No policy configured.
        let none = RoutePolicy::load(None, None, Duration::from_millis(50)).unwrap();
        assert_eq!(health(&none), Decision::deny("no_policy"));
        // A policy that does not compile is refused at load.
        let bad = dir.path().join("bad.rego");
        std::fs::write(&bad, "package warden.serving.routes\ndecision := {").unwrap();
        assert!(RoutePolicy::load(Some(&bad), None, Duration::from_millis(50)).is_err());
        // A policy whose decision errors at run time (a conflict) denies.
        let conflict = dir.path().join("conflict.rego");
        std::fs::write(
            &conflict,
            "package warden.serving.routes\n\
             decision := {\"allow\": true, \"grants\": {\"a\"}, \"denies\": set()} if input.method == \"GET\"\n\
             decision := {\"allow\": false, \"grants\": set(), \"denies\": {\"b\"}} if input.route != \"\"\n",
        )
        .unwrap();
        let p = RoutePolicy::load(Some(&conflict), None, Duration::from_millis(50)).unwrap();
        assert_eq!(health(&p), Decision::deny("evaluation_error"));
        // A policy that runs past its execution limit denies.
        let slow = dir.path().join("slow.rego");
        std::fs::write(
            &slow,
            "package warden.serving.routes\n\
             decision := {\"allow\": true, \"grants\": {\"slow\"}, \"denies\": set()} if {\n\
               input.route != \"\"\n\
               count([x | some a in numbers.range(1, 2000); some b in numbers.range(1, 2000); x := a * b]) > 0\n\
             }\n",
        )
        .unwrap();
        let p = RoutePolicy::load(Some(&slow), None, Duration::from_millis(5)).unwrap();
        let started = std::time::Instant::now();
        assert_eq!(health(&p), Decision::deny("evaluation_error"));
        assert!(started.elapsed() < Duration::from_secs(2));
        // A wrong shape denies.
        let shape = dir.path().join("shape.rego");
        std::fs::write(&shape, "package warden.serving.routes\ndecision := true\n").unwrap();
        let p = RoutePolicy::load(Some(&shape), None, Duration::from_millis(50)).unwrap();
        assert_eq!(health(&p), Decision::deny("evaluation_error"));
    }

    #[test]
    fn reload_swaps_atomically_and_keeps_the_old_policy_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routes.rego");
        std::fs::copy(repo_policy(), &path).unwrap();
        let p = RoutePolicy::load(Some(&path), None, Duration::from_millis(50)).unwrap();
        assert!(health(&p).allow);
        std::fs::write(&path, "package warden.serving.routes\ndecision := {").unwrap();
        assert!(p.reload().is_err());
        assert!(
            health(&p).allow,
            "a broken policy must not replace the running one"
        );
        std::fs::write(
            &path,
            "package warden.serving.routes\ndecision := {\"allow\": false, \"grants\": set(), \"denies\": {\"lockdown\"}}\n",
        )
        .unwrap();
        p.reload().unwrap();
        assert_eq!(health(&p), Decision::deny("lockdown"));
    }

    #[test]
    fn decisions_are_cached_only_for_deterministic_policies() {
        let dir = tempfile::tempdir().unwrap();
        let cached =
            RoutePolicy::load(Some(&repo_policy()), None, Duration::from_millis(50)).unwrap();
        let first = health(&cached);
        assert_eq!(health(&cached), first);
        let current = cached.current.read().unwrap().clone().unwrap();
        assert_eq!(current.cache.as_ref().unwrap().lock().unwrap().len(), 1);

        let path = dir.path().join("clock.rego");
        std::fs::write(
            &path,
            "package warden.serving.routes\n# office hours come later: time.now_ns()\ndecision := {\"allow\": true, \"grants\": {\"clock\"}, \"denies\": set()}\n",
        )
        .unwrap();
        let clock = RoutePolicy::load(Some(&path), None, Duration::from_millis(50)).unwrap();
        assert!(health(&clock).allow);
        let current = clock.current.read().unwrap().clone().unwrap();
        assert!(
            current.cache.is_none(),
            "a policy reading the clock must not be cached"
        );
    }
}
