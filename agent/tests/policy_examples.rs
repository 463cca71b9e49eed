//! The specification's example policies (`policies/examples/`, its section 6) run as written,
//! through the agent's own consumers, with the shipped policy set they sit in: the startup
//! example through admission with `rule = data.serving.startup.permit` on the input fields the
//! agent provides, the route example through the gateway's route policy with
//! `rule = data.serving.routes.allow` on the route input the agent builds, the LLM output
//! filter through the policy engine. Each case file is run case by case.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use warden_agent::gateway::authz::{PolicyInput, RoutePolicy};
use warden_agent::gateway::identity::{Identity, IdentityKind};
use warden_agent::models::admission::Admission;
use warden_agent::policy::CompiledPolicy;
use warden_agent::policy::set::PolicySetFiles;
use warden_attest::release::Stage;

fn policies() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

fn case_file(relative: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(policies().join(relative)).unwrap()).unwrap()
}

/// The shipped set, examples included, read once as the agent reads it.
fn shipped_set() -> PolicySetFiles {
    let set = PolicySetFiles::read(&policies()).unwrap();
    let names: Vec<String> = set
        .policies()
        .unwrap()
        .iter()
        .map(|s| s.name.clone())
        .collect();
    for example in [
        "examples/serving/startup.rego",
        "examples/serving/routes.rego",
        "examples/llm/output.rego",
    ] {
        assert!(
            names.iter().any(|n| n.ends_with(example)),
            "{example} is not in the shipped set: {names:?}"
        );
    }
    set
}

/// The example files are the specification's snippets, byte for byte.
#[test]
fn the_examples_are_the_specifications_snippets_as_written() {
    let spec = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/spec/z6-model-serving.md");
    let Ok(text) = std::fs::read_to_string(&spec) else {
        panic!("the specification is not at {}", spec.display());
    };
    for (package, file) in [
        ("package serving.startup", "examples/serving/startup.rego"),
        ("package serving.routes", "examples/serving/routes.rego"),
        ("package llm.output", "examples/llm/output.rego"),
    ] {
        let snippet = text
            .split("```rego\n")
            .skip(1)
            .filter_map(|b| b.split("```").next())
            .find(|b| b.starts_with(package))
            .unwrap_or_else(|| panic!("{package} is not in the specification"));
        assert_eq!(
            std::fs::read_to_string(policies().join(file)).unwrap(),
            snippet,
            "{file}"
        );
    }
}

#[test]
fn the_startup_example_decides_admission_on_the_agents_input_fields() {
    let table = case_file("examples/serving/startup_test.json");
    let rule = table["rule"].as_str().unwrap();
    let admission = Admission::from_set(
        &shipped_set(),
        &[Stage::Approved],
        rule,
        Duration::from_millis(100),
    )
    .unwrap();
    let mut failures = Vec::new();
    for case in table["cases"].as_array().unwrap() {
        let d = admission.evaluate_json(case["input"].clone());
        let want = case["permit"].as_bool().unwrap();
        if d.allowed != want {
            failures.push(format!("{}: got {d:?}, want {want}", case["name"]));
        }
        if !want && !d.reasons.iter().any(|r| r.contains(rule)) {
            failures.push(format!(
                "{}: the refusal does not name {rule}: {d:?}",
                case["name"]
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn the_route_example_decides_on_the_agents_route_input() {
    let table = case_file("examples/serving/routes_test.json");
    let rule = table["rule"].as_str().unwrap();
    let policy =
        RoutePolicy::from_set_with_rule(&shipped_set(), Duration::from_millis(50), rule).unwrap();
    let mut failures = Vec::new();
    for case in table["cases"].as_array().unwrap() {
        let i = &case["input"];
        // The certificate's app is the input's `app`.
        let identity = Identity {
            kind: IdentityKind::MtlsUri,
            id: "x".into(),
            tenant: "bank".into(),
            subject: i["app"].as_str().unwrap().into(),
            scopes: vec![],
        };
        let d = policy.decide(&PolicyInput {
            identity: &identity,
            tenant: "bank",
            method: "POST",
            route: i["route"].as_str().unwrap(),
            model: i["model"].as_str(),
            version: i["version"].as_str(),
        });
        let want = case["allow"].as_bool().unwrap();
        if d.allow != want || d.rule != "serving.routes.allow" {
            failures.push(format!("{}: got {d:?}, want {want}", case["name"]));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn the_llm_output_example_names_each_pii_token() {
    let table = case_file("examples/llm/output_test.json");
    let set = shipped_set();
    let (policy, _) = CompiledPolicy::compile(
        &set.policies().unwrap(),
        Some(("the policy set's data", set.data().unwrap())),
        table["rule"].as_str().unwrap(),
        Duration::from_millis(100),
    )
    .unwrap();
    for case in table["cases"].as_array().unwrap() {
        let v = policy.evaluate_json(&case["input"]).unwrap();
        let mut got = warden_agent::policy::strings(&v).unwrap();
        got.sort();
        let mut want: Vec<String> = case["deny_reason"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect();
        want.sort();
        assert_eq!(got, want, "{}", case["name"]);
    }
}
