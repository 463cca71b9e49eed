//! The one Rego engine wrapper every policy the agent evaluates goes through (the route policy
//! of the gateway, the startup policy of admission, and those to come): regorus, Rego v1,
//! strict builtin errors, an execution time limit on every evaluation, and a pool of prepared
//! engines so that a request pays for one evaluation, not for a clone of the engine.
//!
//! Fail closed is the callers' rule, kept simple by this one: a policy that does not compile,
//! data that does not load, or a decision rule that does not evaluate on an empty input is
//! refused when it is compiled ([`CompiledPolicy::compile`]); an evaluation that errs or runs
//! past its limit is an [`EvalError`], which every caller turns into a denial.
//!
//! [`set::PolicySetFiles`] is the policy set those policies come from, read once with its
//! digest.

mod engine;
pub mod set;

pub use engine::{CompiledPolicy, EvalError, PolicyError, Source, field, is_rule_path, strings};
