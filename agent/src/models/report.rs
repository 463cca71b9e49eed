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
    /// For a certificate-signed model: when its signing chain stops being valid (Unix
    /// seconds); past it the model does not load again.
    #[serde(default)]
    pub signer_valid_until: Option<u64>,
}

/// When a signing chain that stops being valid at `valid_until` (Unix seconds) deserves a
/// warning at `now`: within `warn_within` of it, or past it. The text says when and what
/// follows: a chain is verified at load, so the model will not load again after it.
pub fn signer_expiry_warning(
    valid_until: u64,
    now: u64,
    warn_within: std::time::Duration,
) -> Option<String> {
    let at = httpdate::fmt_http_date(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(valid_until),
    );
    if valid_until <= now {
        return Some(format!(
            "its signing certificate chain EXPIRED on {at}: it serves until the next restart \
             and will not load again; re-sign it with a renewed certificate"
        ));
    }
    let left = valid_until - now;
    (left <= warn_within.as_secs()).then(|| {
        format!(
            "its signing certificate chain expires on {at}, in {} day(s): after that it will \
             not load again (a chain must be valid when the model is verified); re-sign it with \
             a renewed certificate before then",
            left / 86_400
        )
    })
}

/// A version a refresh stopped serving, and why.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Withdrawn {
    pub name: String,
    pub version: String,
    pub reason: String,
}
