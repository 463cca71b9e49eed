//! What the registry says about each served version and each withdrawn one: the records of
//! `status.json` (`crate::status`) and of the admin listener's model list.

use serde::{Deserialize, Serialize};

/// One served version.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelStatus {
    pub name: String,
    pub version: String,
    /// The version requests without a version get.
    pub active: bool,
    pub root_digest: String,
    /// A worker is up and its connection usable.
    pub ready: bool,
    /// Why the model is no longer restarted, when it is not.
    pub quarantined: Option<String>,
    /// Dynamic batching is on (configured, and the model can batch).
    pub batching: bool,
    /// Where the worker runs it (absent in a status file of an older agent).
    #[serde(default)]
    pub placement: Option<warden_runtime_client::device::Placement>,
    /// Requests handed to the worker since the load.
    pub forwarded: u64,
}

/// A version a refresh stopped serving, and why.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Withdrawn {
    pub name: String,
    pub version: String,
    pub reason: String,
}
