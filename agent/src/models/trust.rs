//! The key store and the admission policy in force, when `[keystore]` is configured: opening
//! them, deciding a version off the async threads, measuring a load into the application PCR
//! and its event log, and auditing each decision.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use warden_attest::boot::measure::{AppEventLog, DEFAULT_APP_PCR};
use warden_keystore::software::SoftwareKeyStore;
use warden_keystore::{KeyStore, KeyStoreError};

use super::admission::{self, Admission, AdmissionError, Decision, Evidence};
use super::error::{MeasureError, TrustError};
use super::loaded::HeldEvidence;
use super::staging::read_document;
use crate::audit::{AuditEvent, AuditLog};
use crate::config::{AdmissionConfig, Config, KeystoreConfig};
use crate::policy::set::PolicySetFiles;

/// The application event log, in the state directory.
pub const APP_EVENT_LOG: &str = "app-events.jsonl";

/// The key store and the admission policy, when `[keystore]` is configured.
pub struct TrustContext {
    pub store: Arc<dyn KeyStore>,
    pub config: AdmissionConfig,
    /// The admission policy and the policy set it was compiled from (a pushed set, or the
    /// configured one), swapped together so that no reader sees one without the other;
    /// evaluations clone the `Arc` and never hold the lock.
    in_force: RwLock<(Arc<Admission>, Arc<PolicySetFiles>)>,
    app_log: AppEventLog,
    /// `trust.model_signer_crls`, and the lists as last read (DER).
    signer_crl_paths: Vec<PathBuf>,
    signer_crls: RwLock<Arc<Vec<Vec<u8>>>>,
}

impl std::fmt::Debug for TrustContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustContext")
            .field("store", &self.store.describe())
            .field("policy_set", &self.policy_dir())
            .finish_non_exhaustive()
    }
}

/// Opens the configured key store: the key service's socket, or (development) key files in
/// this process.
pub fn open_key_store(config: &KeystoreConfig) -> Result<Arc<dyn KeyStore>, KeyStoreError> {
    match config {
        KeystoreConfig::Development(c) => Ok(Arc::new(SoftwareKeyStore::open(&c.dir)?)),
        KeystoreConfig::Keyd { socket } => Ok(Arc::new(
            warden_keystore::keyd::KeydClient::connect(socket)?,
        )),
    }
}

impl TrustContext {
    /// `None` without `[keystore]` (development mode: file anchors, no admission).
    pub fn open(config: &Config) -> Result<Option<Arc<TrustContext>>, TrustError> {
        let (Some(ks), Some(policy)) = (&config.keystore, &config.policy) else {
            return Ok(None);
        };
        let store = open_key_store(ks)?;
        tracing::info!(keystore = %store.describe(), "key store opened");
        let mut trust = Self::new(
            store,
            config.admission.clone().unwrap_or_default(),
            &config.state.directory,
            &policy.directory,
        )?;
        trust.signer_crl_paths = config.trust.model_signer_crls.clone();
        trust.reload_signer_crls()?;
        Ok(Some(Arc::new(trust)))
    }

    /// With an already opened key store (tests, the demo); `configured` is the policy set's
    /// directory of the config.
    pub fn new(
        store: Arc<dyn KeyStore>,
        config: AdmissionConfig,
        state_dir: &Path,
        configured: &Path,
    ) -> Result<Self, TrustError> {
        // A policy set pushed by the fleet authority replaces the configured one, once it
        // verifies again.
        let pushed = crate::models::policy_set::verify_active(state_dir, store.as_ref())?;
        let (pushed, policy_dir) = match pushed {
            Some((set, dir)) => (Some(set), dir),
            None => (None, configured.to_path_buf()),
        };
        let files = PolicySetFiles::read(&policy_dir).map_err(AdmissionError::from)?;
        let admission = Admission::from_set(
            &files,
            &config.allowed_stages,
            &config.rule,
            admission::DEFAULT_LIMIT,
        )?;
        tracing::info!(
            policy_digest = %admission.policy_digest(),
            pushed_serial = pushed.as_ref().map(|s| s.serial),
            directory = %policy_dir.display(),
            "admission policy loaded"
        );
        let app_log = AppEventLog::new(&state_dir.join(APP_EVENT_LOG));
        start_app_log(store.as_ref(), &app_log)?;
        Ok(Self {
            store,
            config,
            in_force: RwLock::new((Arc::new(admission), Arc::new(files))),
            signer_crl_paths: Vec::new(),
            signer_crls: RwLock::new(Arc::new(Vec::new())),
            app_log,
        })
    }

    /// The running admission policy.
    pub fn admission(&self) -> Arc<Admission> {
        self.in_force
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .clone()
    }

    /// Re-reads the model signers' CRLs (start, SIGHUP); on error the lists in force stay.
    /// Returns how many are in force.
    pub fn reload_signer_crls(&self) -> Result<usize, TrustError> {
        let crls = crate::crl::read_crl_files(&self.signer_crl_paths)?;
        // Parsed now, so that a list that does not parse is refused here, not at a decision.
        for der in &crls {
            warden_attest::bundle::check_revocation_list(der)
                .map_err(|e| TrustError::SignerCrl(e.to_string()))?;
        }
        let n = crls.len();
        *self
            .signer_crls
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(crls);
        Ok(n)
    }

    /// The model signers' CRLs in force.
    pub(super) fn signer_crls(&self) -> Arc<Vec<Vec<u8>>> {
        self.signer_crls
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The policy set the admission policy in force was compiled from (a pushed set, or the
    /// configured one).
    pub fn policy_set(&self) -> Arc<PolicySetFiles> {
        self.in_force
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .1
            .clone()
    }

    /// The directory of the policy set in force.
    pub fn policy_dir(&self) -> PathBuf {
        self.policy_set().directory().to_path_buf()
    }

    /// Compiles the startup policy of `set` as admission would run it (refusing what
    /// [`Admission::from_set`] refuses), without putting it in force.
    pub fn compile_policy(&self, set: &PolicySetFiles) -> Result<Admission, AdmissionError> {
        Admission::from_set(
            set,
            &self.config.allowed_stages,
            &self.config.rule,
            admission::DEFAULT_LIMIT,
        )
    }

    /// Puts `admission`, compiled from `set`, in force.
    pub fn set_admission(&self, admission: Arc<Admission>, set: Arc<PolicySetFiles>) {
        *self
            .in_force
            .write()
            .unwrap_or_else(PoisonError::into_inner) = (admission, set);
    }

    /// The revocation list as it is now. An unreadable or absent file is offered as no list:
    /// admission then refuses once a list was accepted (`revocation_list_missing`).
    pub(super) fn revocation_list(&self) -> Option<Arc<Vec<u8>>> {
        let path = self.config.revocation_list.as_ref()?;
        match read_document(path) {
            Ok(bytes) => Some(Arc::new(bytes)),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "revocation list not readable: offered as absent");
                None
            }
        }
    }

    /// The application event log (model loads measured into the application PCR).
    pub fn app_log(&self) -> &AppEventLog {
        &self.app_log
    }
}

/// The application PCR is reset at every boot (PCR 23): a zero PCR means a fresh boot, and the
/// log, which must replay to the PCR, starts empty again. After a restart of the agent alone
/// the PCR and the log go on together. A log that no longer matches is reported, not hidden:
/// quotes will not verify until the next boot.
fn start_app_log(store: &dyn KeyStore, log: &AppEventLog) -> Result<(), TrustError> {
    if !store.capabilities().pcrs {
        // No PCRs: nothing to ask (keyd may rightly not grant read_pcr for such a backend).
        return Ok(());
    }
    let pcr = match store.read_pcr(DEFAULT_APP_PCR) {
        Ok(v) => v,
        // No PCRs (software, PKCS#11, or keyd on one of those): the log is a plain record.
        Err(KeyStoreError::NotSupported { .. }) => return Ok(()),
        Err(e) => return Err(TrustError::KeyStore(e)),
    };
    if pcr == [0u8; 32] {
        log.truncate().map_err(TrustError::AppLog)?;
        return Ok(());
    }
    let events = log.read().map_err(TrustError::AppLog)?;
    if warden_attest::boot::measure::predict(&events) != pcr {
        tracing::error!(
            pcr = DEFAULT_APP_PCR,
            events = events.len(),
            "the application event log does not replay to the application PCR: quotes will not verify until the next boot"
        );
    }
    Ok(())
}

/// Appends the load to the application event log, then extends the application PCR (in
/// process, or through keyd's `extend_pcr`). A key store without PCRs (software, PKCS#11)
/// records the log only, and says so.
pub(super) fn measure(
    trust: &TrustContext,
    event: &warden_attest::boot::measure::ModelLoadEvent,
) -> Result<(), MeasureError> {
    trust.app_log.append(event)?;
    let extended = if trust.store.capabilities().pcrs {
        trust.store.extend_pcr(DEFAULT_APP_PCR, event.digest())
    } else {
        Err(trust.store.not_supported("extend_pcr"))
    };
    match extended {
        Ok(()) => {
            tracing::info!(model = %event.model, version = %event.version, pcr = DEFAULT_APP_PCR, "load measured into the application PCR");
            Ok(())
        }
        Err(KeyStoreError::NotSupported { backend, .. }) => {
            tracing::warn!(model = %event.model, version = %event.version, backend, "this key store has no PCRs: the load is recorded in the application event log only, not measured");
            Ok(())
        }
        Err(e) => Err(MeasureError::Extend(e)),
    }
}

/// Runs admission off the async threads (it hashes the whole model).
pub(super) async fn decide_blocking(
    trust: Arc<TrustContext>,
    name: String,
    version: String,
    dir: PathBuf,
    file: Option<PathBuf>,
    evidence: Arc<HeldEvidence>,
    list: Option<Arc<Vec<u8>>>,
) -> Result<(admission::AdmissionFacts, Decision), DecideError> {
    let joined = tokio::task::spawn_blocking(move || {
        let admission = trust.admission();
        let crls = trust.signer_crls();
        admission::admit(
            &admission,
            &Evidence {
                name: &name,
                version: &version,
                model_dir: &dir,
                model_file: file.as_deref(),
                signer_crls: &crls,
                signature: evidence.signature.as_deref(),
                release: evidence.release.as_deref(),
                attestations: &evidence.attestations,
                revocation_list: list.as_deref().map(|l| l.as_slice()),
                loaded: evidence.verified.as_ref(),
            },
            trust.store.as_ref(),
        )
    })
    .await;
    match joined {
        Ok(r) => r.map_err(DecideError::Anchors),
        Err(e) => Err(DecideError::Panicked(e.to_string())),
    }
}

/// Admission made no decision.
#[derive(Debug, thiserror::Error)]
pub(super) enum DecideError {
    #[error(transparent)]
    Anchors(warden_attest::anchors::AnchorError),
    #[error("admission did not complete: {0}")]
    Panicked(String),
}

/// One admission decision in the audit trail: which version, the outcome, the reasons (the
/// policy's clause texts: digests and signer names, never key material).
pub(super) fn audit_admission(
    audit: &AuditLog,
    name: &str,
    version: &str,
    d: &Decision,
    outcome: &str,
) {
    let reasons = d.reasons.join("; ");
    audit.record(&AuditEvent {
        kind: "admission",
        request_id: None,
        identity: None,
        tenant: None,
        peer: None,
        method: None,
        route: None,
        model: Some(name),
        version: Some(version),
        outcome,
        status: None,
        reason: if reasons.is_empty() {
            None
        } else {
            Some(&reasons)
        },
        rule: Some(admission::DECISION_RULE),
        latency_us: None,
    });
}
