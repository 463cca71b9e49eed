//! Warden's own measurements: on every model load the agent appends a [`ModelLoadEvent`] to
//! an application event log and extends the application PCR with the event's digest, which
//! commits to the model's name, version, root digest and the policy-set digest. A quote over
//! that PCR plus the log then proves what is being served; [`predict`] recomputes the PCR.
//!
//! Order: the log line is written (and synced) before the PCR is extended, so a crash leaves a
//! log one event ahead of the PCR, which [`verify_app_log`] refuses: it fails closed.
//!
//! [`DEFAULT_APP_PCR`] is 23, the application PCR that TPM2_Startup(CLEAR) resets at every
//! boot, so the log starts empty at boot ([`AppEventLog::truncate`]). PCR 23 can also be reset
//! by any process with TPM access at locality 0: the device's TPM must be reachable only by the
//! key service, which extends only PCRs 16 to 23 for its callers (never the boot PCRs 0 to
//! 15) and resets none.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use super::BootError;
use super::eventlog::extend;

/// The application PCR.
pub const DEFAULT_APP_PCR: u32 = 23;
/// Domain separation of the event digest.
const EVENT_DOMAIN: &[u8] = b"warden/model-load/v1";
/// The largest application log read back.
const MAX_APP_LOG_BYTES: u64 = 64 * 1024 * 1024;

/// One model load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelLoadEvent {
    /// Model name.
    pub model: String,
    /// Model version.
    pub version: String,
    /// The model's root digest, `sha256:<hex>`.
    pub root_digest: String,
    /// The policy set's digest, `sha256:<hex>`.
    pub policy_digest: String,
}

impl ModelLoadEvent {
    /// SHA-256 over a domain tag and each field, length-prefixed (no ambiguity between
    /// fields).
    pub fn digest(&self) -> [u8; 32] {
        let mut h = sha2::Sha256::new();
        h.update(EVENT_DOMAIN);
        for field in [
            &self.model,
            &self.version,
            &self.root_digest,
            &self.policy_digest,
        ] {
            h.update((field.len() as u64).to_be_bytes());
            h.update(field.as_bytes());
        }
        h.finalize().into()
    }
}

/// The application PCR's value after `events`, from its reset value (zeros).
pub fn predict(events: &[ModelLoadEvent]) -> [u8; 32] {
    events
        .iter()
        .fold([0u8; 32], |pcr, e| extend(&pcr, &e.digest()))
}

/// Checks the log against the PCR value (e.g. from a verified quote).
pub fn verify_app_log(
    events: &[ModelLoadEvent],
    pcr: u32,
    actual: &[u8; 32],
) -> Result<(), BootError> {
    let expected = predict(events);
    if expected != *actual {
        return Err(BootError::PcrMismatch {
            pcr,
            expected: hex::encode(expected),
            actual: hex::encode(actual),
        });
    }
    Ok(())
}

/// The application event log: one JSON [`ModelLoadEvent`] per line.
#[derive(Debug, Clone)]
pub struct AppEventLog {
    path: PathBuf,
}

impl AppEventLog {
    /// The log at `path` (created on first append).
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
        }
    }

    fn err(&self, detail: impl std::fmt::Display) -> BootError {
        BootError::AppLog {
            path: self.path.clone(),
            detail: detail.to_string(),
        }
    }

    /// Appends one event and syncs it.
    pub fn append(&self, event: &ModelLoadEvent) -> Result<(), BootError> {
        let mut line = serde_json::to_vec(event).map_err(|e| self.err(e))?;
        line.push(b'\n');
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o640)
            .open(&self.path)
            .map_err(|e| self.err(e))?;
        f.write_all(&line)
            .and_then(|()| f.sync_data())
            .map_err(|e| self.err(e))
    }

    /// Every event, in order (none when the file does not exist).
    pub fn read(&self) -> Result<Vec<ModelLoadEvent>, BootError> {
        let file = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.err(e)),
        };
        let mut text = String::new();
        std::io::Read::read_to_string(
            &mut std::io::Read::take(file, MAX_APP_LOG_BYTES + 1),
            &mut text,
        )
        .map_err(|e| self.err(e))?;
        if text.len() as u64 > MAX_APP_LOG_BYTES {
            return Err(self.err(format!("larger than {MAX_APP_LOG_BYTES} bytes")));
        }
        text.lines()
            .enumerate()
            .map(|(i, l)| {
                serde_json::from_str(l).map_err(|e| self.err(format!("line {}: {e}", i + 1)))
            })
            .collect()
    }

    /// Empties the log (at boot, when the application PCR was reset).
    pub fn truncate(&self) -> Result<(), BootError> {
        std::fs::write(&self.path, b"").map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(v: &str) -> ModelLoadEvent {
        ModelLoadEvent {
            model: "fraud".into(),
            version: v.into(),
            root_digest: format!("sha256:{}", "ab".repeat(32)),
            policy_digest: format!("sha256:{}", "cd".repeat(32)),
        }
    }

    #[test]
    fn digest_commits_to_every_field_without_ambiguity() {
        let a = ev("1");
        let mut b = a.clone();
        b.policy_digest = format!("sha256:{}", "ce".repeat(32));
        assert_ne!(a.digest(), b.digest());
        let mut c = a.clone();
        c.model = "fraud1".into();
        c.version = String::new();
        assert_ne!(
            a.digest(),
            c.digest(),
            "moving bytes between fields changes the digest"
        );
    }

    #[test]
    fn prediction_is_order_sensitive() {
        assert_eq!(predict(&[]), [0u8; 32]);
        assert_ne!(predict(&[ev("1"), ev("2")]), predict(&[ev("2"), ev("1")]));
        let p = predict(&[ev("1")]);
        verify_app_log(&[ev("1")], 23, &p).unwrap();
        assert!(verify_app_log(&[ev("2")], 23, &p).is_err());
    }
}
