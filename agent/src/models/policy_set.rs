//! Admission policy sets pushed by the fleet authority (`PUT /admin/v1/policies`).
//!
//! A pushed set is a tree of `.rego` files and the fleet authority's signed statement over
//! its canonical digest and a monotonic serial (`warden_attest::policyset`). Accepted sets are
//! kept in `<state>/policy-set/<serial>-<id>/` (`policies/`, `statement.json`); the file
//! `<state>/policy-set/active` names the one in force. From then on that set, not
//! `admission.policy_directory`, is the running policy, at every start and refresh. At start
//! it is verified again (signature, digest of the files as they are now, serial against the
//! key store's counter); a set that no longer verifies stops the agent from starting rather
//! than silently falling back to an older policy.

use std::path::{Path, PathBuf};

use warden_attest::bundle::Verifier;
use warden_attest::policyset::{PolicySet, PolicySetError, verify_policy_set};
use warden_keystore::{Counter, KeyStore};

use crate::state_files::{Durability, write_atomically};
use warden_attest::anchors::TrustAnchors;
use warden_attest::policyset::files::policy_set_digest;

/// Below the state directory: kept sets and the pointer to the active one.
pub const POLICY_SET_DIR: &str = "policy-set";
const ACTIVE_FILE: &str = "active";
/// Inside a kept set.
pub const POLICIES: &str = "policies";
pub const STATEMENT: &str = "statement.json";

/// Why a pushed policy set was refused or cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyPushError {
    /// Older than (or, with other files, equal to) the accepted serial.
    #[error("{0}")]
    Replayed(String),
    /// Signature, statement, digest, or the files themselves.
    #[error("{0}")]
    Invalid(String),
    /// The key store or the state directory.
    #[error("{0}")]
    Internal(String),
}

/// Why the kept policy set cannot be used at start.
#[derive(Debug, thiserror::Error)]
pub enum KeptSetError {
    /// The pointer file cannot be read, or names no kept set.
    #[error("{}: {detail}", path.display())]
    Pointer { path: PathBuf, detail: String },
    /// The kept set no longer verifies (changed on disk, or the anchors changed).
    #[error(
        "the pushed policy set {} does not verify: {source}; remove {} to fall back to \
         admission.policy_directory",
        set.display(),
        pointer.display()
    )]
    Refused {
        set: PathBuf,
        pointer: PathBuf,
        source: PolicyPushError,
    },
    /// The key store's counter.
    #[error("the policy-set counter: {0}")]
    Counter(#[from] warden_keystore::KeyStoreError),
}

/// The kept set named by the pointer file, if any.
pub fn active_set(state_dir: &Path) -> Result<Option<PathBuf>, KeptSetError> {
    let root = state_dir.join(POLICY_SET_DIR);
    let pointer = root.join(ACTIVE_FILE);
    let name = match std::fs::read_to_string(&pointer) {
        Ok(name) => name.trim().to_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(KeptSetError::Pointer {
                path: pointer,
                detail: e.to_string(),
            });
        }
    };
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(KeptSetError::Pointer {
            path: pointer,
            detail: "not a kept set's name".to_owned(),
        });
    }
    Ok(Some(root.join(name)))
}

/// Verifies the set in `set_dir` (`policies/` and `statement.json`) against the fleet
/// authority's anchors in `store` and the serial `current`. Returns the statement and the
/// digest of the files. Records nothing.
pub fn verify_set(
    set_dir: &Path,
    store: &dyn KeyStore,
    current: u64,
) -> Result<(PolicySet, String), PolicyPushError> {
    let digest = policy_set_digest(&set_dir.join(POLICIES))
        .map_err(|e| PolicyPushError::Invalid(format!("the policy files: {e}")))?;
    let statement_path = set_dir.join(STATEMENT);
    let statement = std::fs::read(&statement_path)
        .map_err(|e| PolicyPushError::Invalid(format!("{}: {e}", statement_path.display())))?;
    let anchors = TrustAnchors::from_key_store(store)
        .map_err(|e| PolicyPushError::Internal(e.to_string()))?;
    let set = verify_with_any(&statement, &anchors.fleet_authority, &digest, current)?;
    Ok((set, digest))
}

fn verify_with_any(
    statement: &[u8],
    fleet_authority: &[Verifier],
    digest: &str,
    current: u64,
) -> Result<PolicySet, PolicyPushError> {
    if fleet_authority.is_empty() {
        return Err(PolicyPushError::Invalid(
            "no fleet-authority anchors are installed".into(),
        ));
    }
    let mut last = String::new();
    for v in fleet_authority {
        match verify_policy_set(statement, v, digest, current) {
            Ok(set) => return Ok(set),
            Err(e @ PolicySetError::OlderSerial { .. }) => {
                return Err(PolicyPushError::Replayed(e.to_string()));
            }
            Err(e) => last = e.to_string(),
        }
    }
    Err(PolicyPushError::Invalid(last))
}

/// At start: the active pushed set verified again, and the key store's counter brought up to
/// its serial (a set written just before a crash, whose counter had not advanced yet).
/// Returns the set and its policy directory, which replaces `admission.policy_directory`;
/// `None` when no set was pushed. An unreadable pointer is an error, not a fallback.
pub fn verify_active(
    state_dir: &Path,
    store: &dyn KeyStore,
) -> Result<Option<(PolicySet, PathBuf)>, KeptSetError> {
    let Some(set_dir) = active_set(state_dir)? else {
        return Ok(None);
    };
    let current = store.counter(Counter::PolicySetSerial)?;
    let (set, _) =
        verify_set(&set_dir, store, current).map_err(|source| KeptSetError::Refused {
            set: set_dir.clone(),
            pointer: state_dir.join(POLICY_SET_DIR).join(ACTIVE_FILE),
            source,
        })?;
    store.advance_counter(Counter::PolicySetSerial, set.serial)?;
    Ok(Some((set, set_dir.join(POLICIES))))
}

/// Moves an accepted set (`staged`, holding `policies/` and `statement.json`) to where it is
/// kept, makes it the active one (the pointer is replaced atomically), and removes the sets
/// it replaces. Returns its kept directory.
pub fn keep_and_activate(
    state_dir: &Path,
    staged: &Path,
    serial: u64,
) -> Result<PathBuf, PolicyPushError> {
    let internal =
        |what: &str, e: &dyn std::fmt::Display| PolicyPushError::Internal(format!("{what}: {e}"));
    let root = state_dir.join(POLICY_SET_DIR);
    crate::state_files::create_private_dir(&root).map_err(|e| internal("creating", &e))?;
    let name = format!("{serial}-{}", uuid::Uuid::new_v4().simple());
    let kept = root.join(&name);
    std::fs::rename(staged, &kept).map_err(|e| internal("keeping the set", &e))?;
    write_atomically(
        &root.join(ACTIVE_FILE),
        format!("{name}\n").as_bytes(),
        0o600,
        Durability::Synced,
    )
    .map_err(|e| internal("activating the set", &e))?;
    if let Ok(entries) = std::fs::read_dir(&root) {
        for e in entries.filter_map(Result::ok) {
            let path = e.path();
            if path != kept
                && path.is_dir()
                && let Err(err) = std::fs::remove_dir_all(&path)
            {
                tracing::warn!(path = %path.display(), error = %err, "cannot remove a replaced policy set");
            }
        }
    }
    Ok(kept)
}
