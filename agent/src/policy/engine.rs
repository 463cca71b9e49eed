//! The regorus engine wrapper: compile once (refusing what cannot decide), evaluate under a
//! time limit from a pool of prepared engines.

use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use regorus::utils::limits::ExecutionTimerConfig;

/// How often the execution timer is consulted, in evaluation steps.
const TIMER_CHECK_INTERVAL: u32 = 64;
/// Idle engines kept per compiled policy.
const POOL_MAX: usize = 64;

/// A Rego source: its name (the file it came from, for messages) and its text.
#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    pub text: String,
}

/// Why a policy was refused when it was compiled.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A source that does not parse or compile.
    #[error("policy {name}: {message}")]
    Compile { name: String, message: String },
    /// A data document that does not load.
    #[error("policy data {name}: {message}")]
    Data { name: String, message: String },
    /// The decision rule cannot be evaluated at all.
    #[error("policy {name}: {rule} does not evaluate: {message}")]
    Rule {
        name: String,
        rule: String,
        message: String,
    },
}

/// An evaluation that produced no decision (an error, or the time limit): the caller denies.
#[derive(Debug, thiserror::Error)]
#[error("policy evaluation failed: {message}")]
pub struct EvalError {
    pub message: String,
}

/// A compiled policy set with its data, answering one decision rule.
pub struct CompiledPolicy {
    /// Prepared once (rules analysed on an empty input); evaluations run on its clones.
    engine: regorus::Engine,
    rule: String,
    pool: Mutex<Vec<regorus::Engine>>,
}

impl std::fmt::Debug for CompiledPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledPolicy")
            .field("rule", &self.rule)
            .finish_non_exhaustive()
    }
}

impl CompiledPolicy {
    /// Compiles `sources` with `data` (named for messages) under an execution `limit`, and
    /// evaluates `rule` once on an empty input, so that a policy that cannot produce a decision
    /// is refused now rather than denying everything later. Returns the policy and what the
    /// rule answered on that empty input (a caller checks that it denies by default).
    pub fn compile(
        sources: &[Source],
        data: Option<(&str, serde_json::Value)>,
        rule: &str,
        limit: Duration,
    ) -> Result<(CompiledPolicy, regorus::Value), PolicyError> {
        let mut engine = regorus::Engine::new();
        engine.set_rego_v0(false);
        engine.set_strict_builtin_errors(true);
        engine.set_execution_timer_config(ExecutionTimerConfig {
            limit,
            check_interval: NonZeroU32::new(TIMER_CHECK_INTERVAL).unwrap_or(NonZeroU32::MIN),
        });
        for source in sources {
            add_policy(&mut engine, source)?;
        }
        if let Some((name, value)) = data {
            engine
                .add_data(regorus::Value::from(value))
                .map_err(|e| PolicyError::Data {
                    name: name.to_owned(),
                    message: e.to_string(),
                })?;
        }
        engine.set_input(regorus::Value::new_object());
        let probe = engine
            .eval_rule(rule.to_owned())
            .map_err(|e| PolicyError::Rule {
                name: sources.first().map_or_else(String::new, |s| s.name.clone()),
                rule: rule.to_owned(),
                message: e.to_string(),
            })?;
        Ok((
            CompiledPolicy {
                engine,
                rule: rule.to_owned(),
                pool: Mutex::new(Vec::new()),
            },
            probe,
        ))
    }

    /// Evaluates the decision rule on `input`. An engine that failed (a time limit mid-way,
    /// say) is not put back into the pool.
    pub fn evaluate(&self, input: regorus::Value) -> Result<regorus::Value, EvalError> {
        let pooled = self.pool.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut engine = pooled.unwrap_or_else(|| self.engine.clone());
        engine.set_input(input);
        let value = engine.eval_rule(self.rule.clone()).map_err(|e| EvalError {
            message: e.to_string(),
        })?;
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < POOL_MAX {
            pool.push(engine);
        }
        Ok(value)
    }

    /// Evaluates on a serializable input (see [`CompiledPolicy::evaluate`]).
    pub fn evaluate_json(
        &self,
        input: &impl serde::Serialize,
    ) -> Result<regorus::Value, EvalError> {
        let value = serde_json::to_value(input).map_err(|e| EvalError {
            message: format!("the input does not serialize: {e}"),
        })?;
        self.evaluate(regorus::Value::from(value))
    }
}

/// Adds one policy, read as Rego v1. A file that is not v1 is read as Rego v0 (the syntax
/// before OPA 1.0, in which the specification's examples are written: `allow { … }` without
/// `if`), and if that fails too, as v0 with the future keywords (`in`, `every`, `contains`,
/// `if`) imported, which those examples use without importing them (`some p in input.tokens`).
/// Which version a file is stays a property of the file, so a policy dropped in runs as
/// written; the version used is logged. When no reading works, every error is reported.
fn add_policy(engine: &mut regorus::Engine, source: &Source) -> Result<(), PolicyError> {
    engine.set_rego_v0(false);
    let v1 = match engine.add_policy(source.name.clone(), source.text.clone()) {
        Ok(_) => return Ok(()),
        Err(e) => e,
    };
    engine.set_rego_v0(true);
    let v0 = engine.add_policy(source.name.clone(), source.text.clone());
    let with_keywords = match &v0 {
        Ok(_) => None,
        Err(_) => with_future_keywords(&source.text)
            .map(|text| engine.add_policy(source.name.clone(), text)),
    };
    engine.set_rego_v0(false);
    match (v0, with_keywords) {
        (Ok(package), _) => {
            tracing::info!(policy = %source.name, package = %package, "policy read as Rego v0");
            Ok(())
        }
        (Err(_), Some(Ok(package))) => {
            tracing::info!(
                policy = %source.name,
                package = %package,
                "policy read as Rego v0 with the future keywords"
            );
            Ok(())
        }
        (Err(v0), with_keywords) => Err(PolicyError::Compile {
            name: source.name.clone(),
            message: match with_keywords {
                Some(Err(k)) => format!(
                    "as Rego v1: {v1}\nas Rego v0: {v0}\nas Rego v0 with the future keywords: {k}"
                ),
                _ => format!("as Rego v1: {v1}\nas Rego v0: {v0}"),
            },
        }),
    }
}

/// `text` with `import future.keywords` after its package line (`None` without one).
fn with_future_keywords(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len() + 32);
    let mut inserted = false;
    for line in text.split_inclusive('\n') {
        out.push_str(line);
        if !inserted && line.trim_start().starts_with("package ") {
            if !line.ends_with('\n') {
                out.push('\n');
            }
            out.push_str("import future.keywords\n");
            inserted = true;
        }
    }
    inserted.then_some(out)
}

/// Whether `rule` names a rule of the data tree: `data.` then dot-separated identifiers
/// (`data.serving.routes.allow`).
pub fn is_rule_path(rule: &str) -> bool {
    let Some(path) = rule.strip_prefix("data.") else {
        return false;
    };
    rule.len() <= 256
        && path.split('.').all(|segment| {
            let mut chars = segment.chars();
            chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

/// A set of strings in a decision (`{"a", "b"}` or `["a", "b"]`), in order; `None` when the
/// value is neither or holds something else.
pub fn strings(v: &regorus::Value) -> Option<Vec<String>> {
    let items: Vec<&regorus::Value> = match (v.as_set(), v.as_array()) {
        (Ok(set), _) => set.iter().collect(),
        (_, Ok(array)) => array.iter().collect(),
        _ => return None,
    };
    items
        .into_iter()
        .map(|s| s.as_string().ok().map(|s| s.to_string()))
        .collect()
}

/// The field `key` of an object value.
pub fn field<'a>(v: &'a regorus::Value, key: &str) -> Option<&'a regorus::Value> {
    v.as_object().ok()?.get(&regorus::Value::from(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULE: &str = "data.t.decision";

    fn source(text: &str) -> Vec<Source> {
        vec![Source {
            name: "t.rego".into(),
            text: format!("package t\n{text}"),
        }]
    }

    #[test]
    fn compiles_evaluates_and_reads_data() {
        let (p, probe) = CompiledPolicy::compile(
            &source("decision := {\"allow\": input.x == data.want}"),
            Some(("data.json", serde_json::json!({"want": 3}))),
            RULE,
            Duration::from_millis(100),
        )
        .unwrap();
        assert_eq!(field(&probe, "allow"), None, "undefined on an empty input");
        for (x, allow) in [(3, true), (4, false), (3, true)] {
            let v = p.evaluate_json(&serde_json::json!({ "x": x })).unwrap();
            assert_eq!(field(&v, "allow").unwrap().as_bool().unwrap(), &allow);
        }
    }

    #[test]
    fn refuses_what_cannot_decide() {
        let compile = |text: &str| {
            CompiledPolicy::compile(&source(text), None, RULE, Duration::from_millis(100))
        };
        assert!(matches!(
            compile("decision := {"),
            Err(PolicyError::Compile { .. })
        ));
        // Two complete definitions that conflict: the rule errs even on an empty input.
        assert!(matches!(
            compile("decision := 1\ndecision := 2"),
            Err(PolicyError::Rule { .. })
        ));
        let bad_data = CompiledPolicy::compile(
            &source("decision := 1"),
            Some(("d", serde_json::json!([1]))),
            RULE,
            Duration::from_millis(100),
        );
        assert!(
            matches!(bad_data, Err(PolicyError::Data { .. })),
            "{bad_data:?}"
        );
    }

    #[test]
    fn an_evaluation_past_its_limit_fails_and_the_next_one_works() {
        let (p, _) = CompiledPolicy::compile(
            &source(
                "decision := count([x | some a in numbers.range(1, input.n); some b in \
                 numbers.range(1, input.n); x := a * b]) if input.n",
            ),
            None,
            RULE,
            Duration::from_millis(5),
        )
        .unwrap();
        let started = std::time::Instant::now();
        assert!(p.evaluate_json(&serde_json::json!({"n": 3000})).is_err());
        assert!(started.elapsed() < Duration::from_secs(2));
        let v = p.evaluate_json(&serde_json::json!({"n": 3})).unwrap();
        assert_eq!(v, regorus::Value::from(9u64));
    }

    #[test]
    fn string_sets_and_arrays_read_alike() {
        let (p, _) = CompiledPolicy::compile(
            &source("decision := {\"s\": {\"b\", \"a\"}, \"a\": [\"x\"], \"n\": [1]}"),
            None,
            RULE,
            Duration::from_millis(100),
        )
        .unwrap();
        let v = p.evaluate_json(&serde_json::json!({})).unwrap();
        assert_eq!(strings(field(&v, "s").unwrap()).unwrap(), vec!["a", "b"]);
        assert_eq!(strings(field(&v, "a").unwrap()).unwrap(), vec!["x"]);
        assert_eq!(strings(field(&v, "n").unwrap()), None);
    }
}
