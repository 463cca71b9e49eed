//! The one policy set in force, and the only way another one comes into force.
//!
//! Every policy the agent evaluates comes from one set ([`PolicySetFiles`]: the startup
//! policy of admission, the route policy of the gateway, with the set's data documents), read
//! once, its digest over exactly those bytes. A new set is compiled for every consumer first
//! and swapped in only when all of them compiled, so no request or load ever sees half of two
//! sets.
//!
//! How a set comes into force:
//! - at start: the pushed set the fleet authority signed (verified again), else the set of
//!   `[policy] directory`;
//! - a signed push (`PUT /admin/v1/policies`, [`PolicyInForce::install_pushed`]);
//! - SIGHUP ([`PolicyInForce::reload`]) re-reads the set's directory. With a key store, a
//!   set changed on disk outside a signed push is refused, its changed files named, and the
//!   set in force stays: the digest releases pin, loads measure and quotes report must name
//!   what is evaluated. In development mode (no key store) the changed set is put in force,
//!   with a loud warning.

use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};

use crate::gateway::Gateway;
use crate::gateway::authz::{self, ROUTES_POLICY};
use crate::models::TrustContext;
use crate::models::admission::{Admission, AdmissionError};
use crate::policy::set::{PolicySetError, PolicySetFiles};

/// Why a policy set was not put in force (the one in force stays).
#[derive(Debug, thiserror::Error)]
pub enum PolicyInForceError {
    /// The set's files could not be read.
    #[error(transparent)]
    Read(#[from] PolicySetError),
    /// The route policy does not compile.
    #[error(transparent)]
    Routes(#[from] authz::PolicyError),
    /// The startup policy does not compile.
    #[error(transparent)]
    Admission(#[from] AdmissionError),
    /// With a key store: files changed on disk, outside a signed set.
    #[error(
        "the policy set {} changed on disk outside a signed set ({}); refused: the set in force \
         ({digest}) stays. Put a policy set in force with a signed push (PUT /admin/v1/policies)",
        directory.display(),
        changes.join(", ")
    )]
    ChangedOutsideSignedSet {
        directory: PathBuf,
        changes: Vec<String>,
        digest: String,
    },
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reloaded {
    /// The files are those in force.
    Unchanged { digest: String },
    /// Development mode: the changed set is in force now.
    Replaced {
        digest: String,
        changes: Vec<String>,
    },
    /// No policy set is configured: every request is denied.
    NoSet,
}

/// The policy set in force and its consumers.
pub struct PolicyInForce {
    gateway: Arc<Gateway>,
    /// With a key store: admission, and the rule that only signed sets come into force.
    trust: Option<Arc<TrustContext>>,
    current: RwLock<Option<Arc<PolicySetFiles>>>,
}

impl PolicyInForce {
    /// The set at start: with a key store, the one admission was opened with (the pushed set,
    /// verified again, or the configured one); without, `configured` if any. Its route policy
    /// is put in force; a set that does not compile stops the start.
    pub fn start(
        gateway: Arc<Gateway>,
        trust: Option<Arc<TrustContext>>,
        configured: Option<PathBuf>,
    ) -> Result<PolicyInForce, PolicyInForceError> {
        let set = match (&trust, configured) {
            (Some(trust), _) => Some(trust.policy_set()),
            (None, Some(dir)) => Some(Arc::new(PolicySetFiles::read(&dir)?)),
            (None, None) => None,
        };
        match &set {
            Some(set) => {
                install_routes(&gateway, set)?;
                tracing::info!(
                    directory = %set.directory().display(),
                    policy_digest = %set.digest(),
                    "policy set in force"
                );
            }
            None => tracing::warn!("no [policy] directory: every request is denied"),
        }
        Ok(PolicyInForce {
            gateway,
            trust,
            current: RwLock::new(set),
        })
    }

    /// The set in force, if any.
    pub fn current(&self) -> Option<Arc<PolicySetFiles>> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// SIGHUP: re-reads the directory of the set in force (see the module documentation).
    pub fn reload(&self) -> Result<Reloaded, PolicyInForceError> {
        let Some(current) = self.current() else {
            return Ok(Reloaded::NoSet);
        };
        let fresh = PolicySetFiles::read(current.directory())?;
        if fresh.digest() == current.digest() {
            return Ok(Reloaded::Unchanged {
                digest: current.digest().to_owned(),
            });
        }
        let changes = fresh.changes_from(&current);
        if self.trust.is_some() {
            return Err(PolicyInForceError::ChangedOutsideSignedSet {
                directory: current.directory().to_path_buf(),
                changes,
                digest: current.digest().to_owned(),
            });
        }
        // Development mode: no key store vouches for any set, so the operator's files rule.
        let prepared = self.gateway.routes().compile(&fresh)?;
        self.gateway.routes().install(prepared);
        tracing::warn!(
            directory = %fresh.directory().display(),
            policy_digest = %fresh.digest(),
            changes = %changes.join(", "),
            "DEVELOPMENT MODE (no [keystore]): a policy set changed on disk is in force without any signature"
        );
        let digest = fresh.digest().to_owned();
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(fresh));
        Ok(Reloaded::Replaced { digest, changes })
    }

    /// Compiles every consumer's policy from `set` without putting anything in force: what a
    /// push checks before it keeps a set.
    pub fn check(&self, set: &PolicySetFiles) -> Result<(), PolicyInForceError> {
        self.gateway.routes().compile(set)?;
        if let Some(trust) = &self.trust {
            trust.compile_policy(set)?;
        }
        Ok(())
    }

    /// A pushed set that verified against the fleet authority, read from where it is kept:
    /// compiled for every consumer, then put in force at once.
    pub fn install_pushed(&self, set: PolicySetFiles) -> Result<(), PolicyInForceError> {
        let routes = self.gateway.routes().compile(&set)?;
        let admission: Option<Admission> = match &self.trust {
            Some(trust) => Some(trust.compile_policy(&set)?),
            None => None,
        };
        let set = Arc::new(set);
        if let (Some(trust), Some(admission)) = (&self.trust, admission) {
            trust.set_admission(Arc::new(admission), set.clone());
        }
        self.gateway.routes().install(routes);
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Some(set);
        Ok(())
    }
}

/// The route policy of `set` in force; a set without one denies every request (said loudly).
fn install_routes(gateway: &Gateway, set: &PolicySetFiles) -> Result<(), PolicyInForceError> {
    match gateway.routes().compile(set) {
        Ok(prepared) => {
            gateway.routes().install(prepared);
            Ok(())
        }
        Err(authz::PolicyError::Missing { .. }) => {
            tracing::warn!(
                directory = %set.directory().display(),
                "the policy set has no {ROUTES_POLICY}: every request is denied"
            );
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}
