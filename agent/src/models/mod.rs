//! The models being served. Loading one version is: copy its directory into the agent's private
//! state directory, verify the copy's signature against the trusted signers, start a worker on
//! the verified copy (the worker checks the model file against the digest the verified
//! signature lists for it, so nothing can be swapped between verification and load), and only then make it visible to the API. A version that
//! fails any step is not served.
//!
//! With a `[keystore]`, the verification step is admission ([`admission`]): the startup policy
//! decides on facts verified against the key store's anchors, the load is measured into
//! the application PCR (TPM) or the application event log, and [`ModelRegistry::refresh`]
//! re-decides every loaded version on an interval and on SIGHUP, unloading what is refused.
//!
//! - [`registry`]: the served versions, defaults, refresh ([`ModelRegistry`]), and the
//!   inference stack's catalog.
//! - [`loader`]: loading one version; [`staging`]: its private copy and, without a key store,
//!   its signature check; [`placement`]: its device.
//! - [`trust`]: the key store and the admission policy in force ([`TrustContext`]), the
//!   measured load; [`admission`]: the facts and the startup policy's decision.
//! - [`loaded`]: one served version ([`LoadedModel`]); [`report`]: what `warden status` and the
//!   admin API see of them.
//! - [`kept`]: pushed bundles kept across restarts; [`policy_set`]: the pushed policy set.
//! - [`error`]: why a version is not served.

pub mod admission;
pub mod error;
pub mod kept;
pub mod loaded;
mod loader;
mod placement;
pub mod policy_set;
pub mod registry;
pub mod report;
mod staging;
pub mod trust;

pub use error::{ActivateError, ModelError, TrustError};
pub use loaded::{HeldEvidence, LoadedModel, Unloaded};
pub use loader::default_worker_binary;
pub use registry::ModelRegistry;
pub use staging::trust_anchors;
pub use trust::{APP_EVENT_LOG, TrustContext, open_key_store};
