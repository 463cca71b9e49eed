//! The Warden agent (`warden serve`): the HTTPS gateway in front of sandboxed model workers,
//! the fleet's admin listener, and what they share. One folder per concern, each with its
//! own documentation:
//!
//! - [`config`]: the typed, validated TOML configuration.
//! - [`listener`]: TLS (certificates from files or the key store's device key) and the accept
//!   loop every HTTPS listener shares.
//! - [`inference`]: the Open Inference Protocol v2 API: the ordered request stack, the codec,
//!   validation, the error classes.
//! - [`gateway`]: the stages of that stack that decide who may do what: identity, JWTs,
//!   route authorization, rate limits, abuse signals, circuit breaking, metrics.
//! - [`policy`]: the one Rego engine wrapper every policy of the set is evaluated with.
//! - [`models`]: the registry of served versions: loading, verification, admission by the
//!   startup policy, GPU placement, kept (pushed) bundles, the pushed policy set.
//! - [`admin`]: the fleet-push listener, one file per action.
//! - [`audit`]: the audit trail.
//! - [`status`]: `status.json` and what `warden status` reports from it.
//! - [`serve`]: wiring all of it together and running it until a signal.
//! - [`demo`]: the embedded default: a development PKI and key store and the signed demo
//!   model.
//! - [`state_files`]: crash-safe files in the state directory.
//!
//! The binary `warden` (`src/main.rs`, `src/cli/`) is a thin command line over these.

pub mod admin;
pub mod audit;
pub mod config;
pub mod crl;
pub mod demo;
pub mod gateway;
pub mod inference;
pub mod listener;
pub mod models;
pub mod policy;
pub mod policy_in_force;
pub mod serve;
pub mod state_files;
pub mod status;
