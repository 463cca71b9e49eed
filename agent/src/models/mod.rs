//! The models being served. Loading one version is: copy its directory into the agent's private
//! state directory, verify the copy's signature against the trusted signers, start a worker on
//! the verified copy (the worker re-checks the model file's SHA-256, so nothing can be swapped
//! between verification and load), and only then make it visible to the API. A version that
//! fails any step is not served.
//!
//! With a `[keystore]`, the verification step is admission (`crate::models::admission`): the startup
//! policy decides on facts verified against the key store's anchors, the load is measured into
//! the application PCR (TPM) or the application event log, and [`ModelRegistry::refresh`]
//! re-decides every loaded version on an interval and on SIGHUP, unloading what is refused.

pub mod admission;
pub mod kept;
pub mod policy_set;
pub mod report;

use crate::audit::{AuditError, AuditEvent, AuditLog};
use crate::config::{AdmissionConfig, Config, KeystoreConfig, ModelConfig};
use admission::{Admission, AdmissionError, Decision, Evidence};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::broadcast;
use warden_attest::boot::measure::{AppEventLog, DEFAULT_APP_PCR};
use warden_attest::bundle::{self, Verifier, VerifyOptions};
use warden_keystore::software::SoftwareKeyStore;
use warden_keystore::{KeyStore, KeyStoreError};
use warden_runtime_client::device::DeviceRequest;
use warden_runtime_client::model_format::ModelFormat;
use warden_runtime_client::tensor::ModelSignature;
use warden_runtime_client::worker::{Worker, WorkerOptions};

/// Largest single file the loader copies into the state directory.
const MAX_MODEL_FILE_BYTES: u64 = 64 * 1024 * 1024 * 1024;
/// Largest release statement, attestation or revocation list read.
const MAX_DOCUMENT_BYTES: u64 = 16 * 1024 * 1024;
/// The application event log, in the state directory.
pub const APP_EVENT_LOG: &str = "app-events.jsonl";

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model {name} version {version}: cannot stage {path}: {source}")]
    Stage {
        name: String,
        version: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "model {name} version {version}: {path} is not a regular file or directory (symlinks and devices are refused)"
    )]
    NotRegular {
        name: String,
        version: String,
        path: PathBuf,
    },
    #[error("model {name} version {version}: signature refused: {reasons}")]
    Signature {
        name: String,
        version: String,
        reasons: String,
    },
    #[error("model {name} version {version}: admission refused: {}", reasons.join("; "))]
    Refused {
        name: String,
        version: String,
        /// The startup policy's reasons, `<clause>: <detail>`.
        reasons: Vec<String>,
    },
    #[error("model {name} version {version}: the key store's anchors: {source}")]
    Anchors {
        name: String,
        version: String,
        source: warden_attest::anchors::AnchorError,
    },
    #[error("model {name} version {version}: measuring the load: {message}")]
    Measure {
        name: String,
        version: String,
        message: String,
    },
    #[error(
        "model {name} version {version}: a value range names {input:?}, which is not an input of the model (inputs: {declared:?})"
    )]
    RangeInput {
        name: String,
        version: String,
        input: String,
        declared: Vec<String>,
    },
    #[error("model {name} version {version} is already loaded")]
    AlreadyLoaded { name: String, version: String },
    #[error("trust anchor {path}: {message}")]
    Anchor { path: PathBuf, message: String },
    #[error("model {name} version {version}: {message}")]
    Format {
        name: String,
        version: String,
        message: String,
    },
    #[error("model {name} version {version}: {message}")]
    Device {
        name: String,
        version: String,
        message: String,
    },
    #[error("model {name} version {version}: worker failed to start: {message}")]
    Worker {
        name: String,
        version: String,
        message: String,
    },
    #[error(
        "model {name} version {version} is an ONNX model but the ONNX Runtime library is not configured: set runtime.onnxruntime_library or ORT_DYLIB_PATH (scripts/setup.sh fetches it)"
    )]
    NoOnnxRuntime { name: String, version: String },
    #[error("cannot find the worker binary {path}: set runtime.worker_binary")]
    NoWorkerBinary { path: PathBuf },
    #[error("worker events: {0}")]
    Audit(#[from] AuditError),
    #[error("a blocking task failed: {0}")]
    Join(String),
}

/// Why a default could not be changed.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("model {name} version {version} is not loaded")]
    NotLoaded { name: String, version: String },
    #[error("model {name} has no previously active version")]
    NoPrevious { name: String },
}

/// Why the key store or the admission policy could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("keystore: {0}")]
    KeyStore(#[from] KeyStoreError),
    #[error("admission.policy_directory: {0}")]
    Policy(#[from] AdmissionError),
    #[error("the application event log: {0}")]
    AppLog(warden_attest::boot::BootError),
    #[error("{0}")]
    PushedPolicy(String),
}

/// The key store and the admission policy, when `[keystore]` is configured.
pub struct TrustContext {
    pub store: Arc<dyn KeyStore>,
    pub config: AdmissionConfig,
    /// Swapped whole on refresh; evaluations clone the `Arc` and never hold the lock.
    admission: RwLock<Arc<Admission>>,
    /// Where the policy set in force was read from (a pushed set, or the configured one).
    policy_dir: RwLock<PathBuf>,
    app_log: AppEventLog,
}

impl std::fmt::Debug for TrustContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustContext")
            .field("store", &self.store.describe())
            .field("policy_directory", &self.config.policy_directory)
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
        let (Some(ks), Some(adm)) = (&config.keystore, &config.admission) else {
            return Ok(None);
        };
        let store = open_key_store(ks)?;
        tracing::info!(keystore = %store.describe(), "key store opened");
        Ok(Some(Arc::new(Self::new(
            store,
            adm.clone(),
            &config.state.directory,
        )?)))
    }

    /// With an already opened key store (tests, the demo).
    pub fn new(
        store: Arc<dyn KeyStore>,
        config: AdmissionConfig,
        state_dir: &Path,
    ) -> Result<Self, TrustError> {
        // A policy set pushed by the fleet authority replaces the configured one, once it
        // verifies again.
        let pushed = crate::models::policy_set::verify_active(state_dir, store.as_ref())
            .map_err(TrustError::PushedPolicy)?;
        let (pushed, policy_dir) = match pushed {
            Some((set, dir)) => (Some(set), dir),
            None => (None, config.policy_directory.clone()),
        };
        let admission = Admission::with_options(
            &policy_dir,
            &config.allowed_stages,
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
            admission: RwLock::new(Arc::new(admission)),
            policy_dir: RwLock::new(policy_dir),
            app_log,
        })
    }

    /// The running admission policy.
    pub fn admission(&self) -> Arc<Admission> {
        match self.admission.read() {
            Ok(a) => a.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Re-reads the policy set in force (the pushed one, or `admission.policy_directory`). A
    /// set that no longer compiles leaves the previous one running (its digest is what
    /// releases are compared with), and says so.
    fn reload_policy(&self) -> Result<(), AdmissionError> {
        let dir = self.policy_dir();
        let fresh =
            Admission::with_options(&dir, &self.config.allowed_stages, admission::DEFAULT_LIMIT)?;
        self.set_admission(Arc::new(fresh), dir);
        Ok(())
    }

    /// The directory of the policy set in force.
    pub fn policy_dir(&self) -> PathBuf {
        match self.policy_dir.read() {
            Ok(d) => d.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Compiles the policy set in `dir` as admission would run it (refusing what
    /// [`Admission::with_options`] refuses), without putting it in force.
    pub fn compile_policy(&self, dir: &Path) -> Result<Admission, AdmissionError> {
        Admission::with_options(dir, &self.config.allowed_stages, admission::DEFAULT_LIMIT)
    }

    /// Puts `admission`, compiled from `dir`, in force.
    pub fn set_admission(&self, admission: Arc<Admission>, dir: PathBuf) {
        match self.admission.write() {
            Ok(mut a) => *a = admission,
            Err(poisoned) => *poisoned.into_inner() = admission,
        }
        match self.policy_dir.write() {
            Ok(mut d) => *d = dir,
            Err(poisoned) => *poisoned.into_inner() = dir,
        }
    }

    /// The revocation list as it is now. An unreadable or absent file is offered as no list:
    /// admission then refuses once a list was accepted (`revocation_list_missing`).
    fn revocation_list(&self) -> Option<Arc<Vec<u8>>> {
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

/// The signed documents of one loaded version, read from the agent's private copies.
#[derive(Debug, Clone, Default)]
pub struct HeldEvidence {
    signature: Option<Vec<u8>>,
    release: Option<Vec<u8>>,
    attestations: Vec<Vec<u8>>,
    /// What the signature verified when the version was loaded: refreshes re-check the
    /// signature against it instead of re-hashing the model.
    verified: Option<warden_attest::bundle::VerifiedModel>,
}

/// One verified, running model version.
pub struct LoadedModel {
    pub name: String,
    pub version: String,
    /// The OMS root digest of the verified bundle.
    pub root_digest: String,
    /// Who signed it (key hint or certificate subject).
    pub signer: String,
    pub signature: ModelSignature,
    /// The engine platform, from the model file (`onnxruntime_onnx`, `candle_safetensors`).
    pub platform: &'static str,
    pub worker: Worker,
    /// Requests handed to the worker; everything refused before that point never counts.
    pub forwarded: std::sync::atomic::AtomicU64,
    /// Declared value ranges per input (`[model.inputs]`; pushed versions inherit the
    /// configured model's).
    pub input_ranges: BTreeMap<String, crate::config::InputRange>,
    /// Why the agent started the worker on the CPU though a GPU was configured.
    fallback_reason: Option<String>,
    /// The verified copy, re-checked on every refresh.
    staged_dir: PathBuf,
    /// Present when admitted by the startup policy.
    evidence: Option<Arc<HeldEvidence>>,
}

type Map = BTreeMap<String, Vec<Arc<LoadedModel>>>;

/// What a loader needs beyond one model's config.
struct Loader {
    config: Config,
    state_dir: PathBuf,
    onnxruntime: Option<PathBuf>,
    worker_binary: PathBuf,
    worker_audit: Arc<AuditLog>,
    /// File anchors (development mode, no key store).
    verifiers: Vec<(PathBuf, Verifier)>,
    trust: Option<Arc<TrustContext>>,
    /// The machine's GPUs, discovered when the first model asks for one.
    gpus: std::sync::OnceLock<warden_runtime_client::accel::Inventory>,
    /// GPU memory budgets granted, per GPU ordinal, per model name (the versions of one model
    /// share its budget). Never given back while the agent runs: conservative.
    gpu_budgets: std::sync::Mutex<BTreeMap<u32, BTreeMap<String, u64>>>,
}

impl LoadedModel {
    /// Where the model runs: the worker's report, with the agent's reason when the agent
    /// itself moved a GPU model to the CPU (its GPU does not exist).
    pub fn placement(&self) -> warden_runtime_client::device::Placement {
        let mut placement = self.worker.placement();
        if placement.fallback_reason.is_none() {
            placement.fallback_reason.clone_from(&self.fallback_reason);
        }
        placement
    }
}

/// A version a refresh stopped serving.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unloaded {
    pub name: String,
    pub version: String,
    pub reasons: Vec<String>,
}

/// All served versions by model name; versions ordered, the default being the highest.
/// The map is swapped whole (copy on write): a request clones an `Arc` under a short read
/// lock and never holds it across an await.
pub struct ModelRegistry {
    map: RwLock<Arc<Map>>,
    /// Versions a refresh unloaded, with why (for the API's message).
    withdrawn: RwLock<BTreeMap<(String, String), String>>,
    /// Defaults chosen by the admin API: name → (active version, the one before). A name
    /// without an entry (or whose active version is gone) defaults to its highest version.
    active: RwLock<BTreeMap<String, (String, Option<String>)>>,
    /// One change at a time: loads and refreshes (the interval and SIGHUP may coincide; two
    /// loads of one version would stage into the same directory).
    changing: tokio::sync::Mutex<()>,
    loader: Loader,
}

impl ModelRegistry {
    /// Verifies and starts every configured model. Fails on the first model that cannot be
    /// served: an appliance that silently serves fewer models than configured is worse than
    /// one that refuses to start and says why. With `trust`, every model must be admitted by
    /// the startup policy against the key store's anchors.
    pub async fn load(
        config: &Config,
        state_dir: &Path,
        trust: Option<Arc<TrustContext>>,
    ) -> Result<ModelRegistry, ModelError> {
        let verifiers = if trust.is_some() {
            Vec::new()
        } else {
            trust_anchors(config)?
        };
        // Needed only by ONNX models (checked per model at load): a deployment that serves
        // only safetensors models on candle needs no ONNX Runtime.
        let onnxruntime = config
            .runtime
            .onnxruntime_library
            .clone()
            .or_else(|| std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from));
        let worker_binary = match &config.runtime.worker_binary {
            Some(p) => p.clone(),
            None => default_worker_binary(),
        };
        if !worker_binary.is_file() {
            return Err(ModelError::NoWorkerBinary {
                path: worker_binary,
            });
        }
        // Worker deaths, hangs, restarts and quarantines go to the audit trail. A second
        // append-only handle on the same file: each line is one `write`, so lines never mix.
        let worker_audit = Arc::new(AuditLog::open(config.audit.path.as_deref())?);
        let registry = ModelRegistry {
            map: RwLock::new(Arc::new(Map::new())),
            withdrawn: RwLock::new(BTreeMap::new()),
            active: RwLock::new(BTreeMap::new()),
            changing: tokio::sync::Mutex::new(()),
            loader: Loader {
                config: config.clone(),
                state_dir: state_dir.to_path_buf(),
                onnxruntime,
                worker_binary,
                worker_audit,
                verifiers,
                trust,
                gpus: std::sync::OnceLock::new(),
                gpu_budgets: std::sync::Mutex::new(BTreeMap::new()),
            },
        };
        for m in &config.models {
            if let Err(e) = registry.add(m).await {
                registry.shutdown().await;
                return Err(e);
            }
        }
        Ok(registry)
    }

    fn snapshot(&self) -> Arc<Map> {
        match self.map.read() {
            Ok(m) => m.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn swap(&self, f: impl FnOnce(&mut Map)) {
        let mut guard = match self.map.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut next = (**guard).clone();
        f(&mut next);
        *guard = Arc::new(next);
    }

    /// Verifies (and, with a key store, admits) one more version and starts serving it. On
    /// any refusal nothing changes: the versions already loaded keep serving.
    pub async fn add(&self, m: &ModelConfig) -> Result<(), ModelError> {
        let _one_at_a_time = self.changing.lock().await;
        if self.resolve(&m.name, Some(&m.version)).is_some() {
            return Err(ModelError::AlreadyLoaded {
                name: m.name.clone(),
                version: m.version.clone(),
            });
        }
        let loaded = Arc::new(self.loader.load_one(m).await?);
        self.swap(|map| {
            let versions = map.entry(m.name.clone()).or_default();
            versions.push(loaded);
            versions.sort_by(|a, b| version_order(&a.version, &b.version));
        });
        if let Ok(mut w) = self.withdrawn.write() {
            w.remove(&(m.name.clone(), m.version.clone()));
        }
        Ok(())
    }

    /// Re-reads the policy set and the revocation list and re-runs admission for every
    /// loaded version; unloads each one now refused (revoked, policy digest mismatch, an
    /// older list replayed, …) and stops its worker. Returns what was unloaded. Without a
    /// key store there is nothing to re-decide.
    pub async fn refresh(&self) -> Vec<Unloaded> {
        let Some(trust) = self.loader.trust.clone() else {
            return Vec::new();
        };
        let _one_at_a_time = self.changing.lock().await;
        if let Err(e) = trust.reload_policy() {
            tracing::error!(error = %e, "refresh: the policy set does not load; the previous one stays in force");
        }
        let list = trust.revocation_list();
        let mut unloaded = Vec::new();
        for model in self.all() {
            let Some(evidence) = model.evidence.clone() else {
                continue;
            };
            let decided = decide_blocking(
                trust.clone(),
                model.name.clone(),
                model.version.clone(),
                model.staged_dir.clone(),
                evidence,
                list.clone(),
            )
            .await;
            let decision = match decided {
                Ok((_, d)) => d,
                // The anchors could not be read (a key service restart), or evaluation
                // crashed: no decision was made, so nothing is unloaded for it; the next
                // refresh decides (a policy's denial, including a missing list, unloads).
                Err(e) => {
                    tracing::error!(model = %model.name, version = %model.version, error = %e, "refresh: admission not evaluated");
                    continue;
                }
            };
            audit_admission(
                &self.loader.worker_audit,
                &model.name,
                &model.version,
                &decision,
                if decision.allowed { "kept" } else { "unloaded" },
            );
            if decision.allowed {
                continue;
            }
            tracing::error!(model = %model.name, version = %model.version, reasons = ?decision.reasons, "refresh: admission refused a serving version: unloading it");
            self.swap(|map| {
                if let Some(versions) = map.get_mut(&model.name) {
                    versions.retain(|v| !Arc::ptr_eq(v, &model));
                    if versions.is_empty() {
                        map.remove(&model.name);
                    }
                }
            });
            if let Ok(mut w) = self.withdrawn.write() {
                w.insert(
                    (model.name.clone(), model.version.clone()),
                    decision.reasons.join("; "),
                );
            }
            model.worker.shutdown().await;
            // The refused copy is not kept: a later load stages and decides afresh.
            if let Some(version_dir) = model.staged_dir.parent()
                && let Err(e) = std::fs::remove_dir_all(version_dir)
            {
                tracing::warn!(path = %version_dir.display(), error = %e, "refresh: cannot remove an unloaded version's copy");
            }
            unloaded.push(Unloaded {
                name: model.name.clone(),
                version: model.version.clone(),
                reasons: decision.reasons,
            });
        }
        unloaded
    }

    /// Why a version is no longer served, when a refresh unloaded it.
    pub fn withdrawn(&self, name: &str, version: &str) -> Option<String> {
        self.withdrawn
            .read()
            .ok()?
            .get(&(name.to_owned(), version.to_owned()))
            .cloned()
    }

    /// The refresh interval, when admission is configured.
    pub fn refresh_interval(&self) -> Option<Duration> {
        self.loader
            .trust
            .as_ref()
            .map(|t| t.config.refresh_interval())
    }

    /// The key store and admission policy, when configured.
    pub fn trust(&self) -> Option<&Arc<TrustContext>> {
        self.loader.trust.as_ref()
    }

    /// A version, or the default one: the version activated through the admin API while it
    /// is loaded, else the highest.
    pub fn resolve(&self, name: &str, version: Option<&str>) -> Option<Arc<LoadedModel>> {
        let map = self.snapshot();
        let versions = map.get(name)?;
        match version {
            Some(v) => versions.iter().find(|m| m.version == v).cloned(),
            None => self
                .active_version(name)
                .and_then(|a| versions.iter().find(|m| m.version == a).cloned())
                .or_else(|| versions.last().cloned()),
        }
    }

    fn active_version(&self, name: &str) -> Option<String> {
        match self.active.read() {
            Ok(a) => a.get(name).map(|(v, _)| v.clone()),
            Err(poisoned) => poisoned.into_inner().get(name).map(|(v, _)| v.clone()),
        }
    }

    fn with_active<T>(
        &self,
        f: impl FnOnce(&mut BTreeMap<String, (String, Option<String>)>) -> T,
    ) -> T {
        match self.active.write() {
            Ok(mut a) => f(&mut a),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    /// Pins the current default of `name` (when it has none pinned yet), so that a version
    /// added next does not become the default before it is activated.
    pub fn pin_default(&self, name: &str) {
        let Some(current) = self.resolve(name, None) else {
            return;
        };
        self.with_active(|a| {
            a.entry(name.to_owned())
                .or_insert_with(|| (current.version.clone(), None));
        });
    }

    /// The defaults chosen through the admin API: name → (active, the one before).
    pub fn pinned_defaults(&self) -> BTreeMap<String, (String, Option<String>)> {
        self.with_active(|a| a.clone())
    }

    /// At start, a default chosen before the restart; false when that version is not loaded.
    pub fn restore_default(&self, name: &str, version: &str, previous: Option<String>) -> bool {
        if self.resolve(name, Some(version)).is_none() {
            return false;
        }
        self.with_active(|a| {
            a.insert(name.to_owned(), (version.to_owned(), previous));
        });
        true
    }

    /// Makes a loaded version the default; returns the previous default.
    pub fn activate(&self, name: &str, version: &str) -> Result<Option<String>, ActivateError> {
        if self.resolve(name, Some(version)).is_none() {
            return Err(ActivateError::NotLoaded {
                name: name.to_owned(),
                version: version.to_owned(),
            });
        }
        let previous = self.resolve(name, None).map(|m| m.version.clone());
        self.with_active(|a| {
            a.insert(name.to_owned(), (version.to_owned(), previous.clone()));
        });
        Ok(previous)
    }

    /// Makes the previously active version the default again; returns it.
    pub fn rollback(&self, name: &str) -> Result<String, ActivateError> {
        let previous = self
            .with_active(|a| a.get(name).and_then(|(_, p)| p.clone()))
            .ok_or_else(|| ActivateError::NoPrevious {
                name: name.to_owned(),
            })?;
        self.activate(name, &previous)?;
        Ok(previous)
    }

    /// Every loaded version's state and what was withdrawn, for `warden status`.
    pub fn report(&self) -> (Vec<report::ModelStatus>, Vec<report::Withdrawn>) {
        let map = self.snapshot();
        let mut models = Vec::new();
        for (name, versions) in map.iter() {
            let active = self.resolve(name, None).map(|m| m.version.clone());
            for m in versions.iter() {
                models.push(report::ModelStatus {
                    name: name.clone(),
                    version: m.version.clone(),
                    active: active.as_deref() == Some(m.version.as_str()),
                    root_digest: m.root_digest.clone(),
                    ready: m.worker.is_alive(),
                    quarantined: m.worker.quarantined(),
                    batching: m.worker.batching(),
                    placement: Some(m.placement()),
                    forwarded: m.forwarded.load(std::sync::atomic::Ordering::Relaxed),
                });
            }
        }
        let withdrawn = self
            .withdrawn
            .read()
            .map(|w| {
                w.iter()
                    .map(|((n, v), why)| report::Withdrawn {
                        name: n.clone(),
                        version: v.clone(),
                        reason: why.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        (models, withdrawn)
    }

    /// What is loaded, which version is the default, and what was withdrawn (admin API).
    pub fn status(&self) -> serde_json::Value {
        let map = self.snapshot();
        let models: Vec<serde_json::Value> = map
            .iter()
            .map(|(name, versions)| {
                serde_json::json!({
                    "name": name,
                    "active": self.resolve(name, None).map(|m| m.version.clone()),
                    "versions": versions.iter().map(|m| serde_json::json!({
                        "version": m.version,
                        "root_digest": m.root_digest,
                        "signer": m.signer,
                        "ready": m.worker.is_alive(),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        let withdrawn: Vec<serde_json::Value> = self
            .withdrawn
            .read()
            .map(|w| {
                w.iter()
                    .map(
                        |((n, v), why)| serde_json::json!({"name": n, "version": v, "reason": why}),
                    )
                    .collect()
            })
            .unwrap_or_default();
        serde_json::json!({"models": models, "withdrawn": withdrawn})
    }

    /// Whether pushed versions of models the configuration does not name are accepted.
    pub fn accepts_new_models(&self) -> bool {
        self.loader
            .config
            .admin
            .as_ref()
            .is_some_and(|a| a.accept_new_models)
    }

    /// The configured model of that name (its file and input ranges serve as the template
    /// for pushed versions).
    pub fn configured(&self, name: &str) -> Option<ModelConfig> {
        self.loader
            .config
            .models
            .iter()
            .find(|m| m.name == name)
            .cloned()
    }

    /// The agent's private state directory.
    pub fn state_dir(&self) -> &Path {
        &self.loader.state_dir
    }

    pub fn versions(&self, name: &str) -> Vec<String> {
        self.snapshot()
            .get(name)
            .map(|v| v.iter().map(|m| m.version.clone()).collect())
            .unwrap_or_default()
    }

    pub fn all(&self) -> Vec<Arc<LoadedModel>> {
        self.snapshot().values().flatten().cloned().collect()
    }

    /// Whether every loaded model has a live worker.
    pub fn all_ready(&self) -> bool {
        self.all().iter().all(|m| m.worker.is_alive())
    }

    /// Stops every worker.
    pub async fn shutdown(&self) {
        for m in self.all() {
            m.worker.shutdown().await;
        }
    }
}

/// The device model `name` gets for `request` on a machine with `inventory`, where `granted`
/// holds the GPU memory budgets already given, per GPU, per model. A GPU must exist and hold
/// the model's budget beside the others' (the versions of one model share its budget); a GPU
/// that does not exist falls back to the CPU only where the request allows it. A budget that
/// does not fit is a configuration error and always refuses: a fallback would hide it.
fn grant_device(
    inventory: &warden_runtime_client::accel::Inventory,
    granted: &mut BTreeMap<u32, BTreeMap<String, u64>>,
    name: &str,
    request: DeviceRequest,
) -> Result<Granted, String> {
    let Some(ordinal) = request.device.gpu() else {
        return Ok(Granted {
            request,
            fallback_reason: None,
        });
    };
    let Some(gpu) = inventory
        .gpus
        .iter()
        .find(|g| u32::try_from(g.ordinal).ok() == Some(ordinal))
    else {
        let why = match &inventory.none_because {
            Some(why) => format!("no GPU {ordinal} on this machine: {why}"),
            None => format!(
                "no GPU {ordinal} on this machine ({} GPU(s) found)",
                inventory.gpus.len()
            ),
        };
        return match request.fall_back(why.clone()) {
            Ok(request) => Ok(Granted {
                request,
                fallback_reason: Some(why),
            }),
            Err(e) => Err(e.to_string()),
        };
    };
    let budget = request.memory_budget_bytes.unwrap_or(0);
    let on_gpu = granted.entry(ordinal).or_default();
    let others: Vec<(&String, &u64)> = on_gpu.iter().filter(|(n, _)| *n != name).collect();
    let held: u64 = others.iter().map(|(_, b)| **b).sum();
    if held.saturating_add(budget) > gpu.total_memory_bytes {
        let listed = others
            .iter()
            .map(|(n, b)| format!("{n} {} MiB", **b >> 20))
            .collect::<Vec<_>>();
        return Err(format!(
            "a GPU memory budget of {} MiB does not fit on {} ({} MiB in all{}); lower \
             model.accelerator.memory_budget_mib or move a model to another GPU",
            budget >> 20,
            request.device,
            gpu.total_memory_bytes >> 20,
            if listed.is_empty() {
                String::new()
            } else {
                format!(", already granted: {}", listed.join(", "))
            }
        ));
    }
    on_gpu.insert(name.to_string(), budget);
    Ok(Granted {
        request,
        fallback_reason: None,
    })
}

/// What [`grant_device`] gives a model: the request for its worker, and why it is the CPU
/// when the configuration asked for a GPU that does not exist.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Granted {
    request: DeviceRequest,
    fallback_reason: Option<String>,
}

impl Loader {
    /// Decides the device a model's worker is asked for ([`grant_device`]), discovering the
    /// GPUs when the first model asks for one.
    fn place(&self, m: &ModelConfig) -> Result<Granted, ModelError> {
        let request = m.device_request();
        if request.device.gpu().is_none() {
            return Ok(Granted {
                request,
                fallback_reason: None,
            });
        }
        let inventory = self
            .gpus
            .get_or_init(warden_runtime_client::accel::discover);
        let mut granted = self.gpu_budgets.lock().unwrap_or_else(|p| p.into_inner());
        grant_device(inventory, &mut granted, &m.name, request).map_err(|message| {
            ModelError::Device {
                name: m.name.clone(),
                version: m.version.clone(),
                message,
            }
        })
    }

    async fn load_one(&self, m: &ModelConfig) -> Result<LoadedModel, ModelError> {
        let config = &self.config;
        let (staged, evidence) = match &self.trust {
            None => (stage_and_verify(m, &self.verifiers, &self.state_dir)?, None),
            Some(trust) => {
                let (staged, evidence) = self.stage_and_admit(m, trust).await?;
                (staged, Some(evidence))
            }
        };
        let model_file = staged.directory.join(&m.file);
        // The worker picks its engine by the same rule; refusing here names the model.
        let format = ModelFormat::of(&model_file).map_err(|e| ModelError::Format {
            name: m.name.clone(),
            version: m.version.clone(),
            message: e.to_string(),
        })?;
        if format == ModelFormat::Onnx && self.onnxruntime.is_none() {
            return Err(ModelError::NoOnnxRuntime {
                name: m.name.clone(),
                version: m.version.clone(),
            });
        }
        let platform = format.platform();
        let sha256 = sha256_file(&model_file).map_err(|source| ModelError::Stage {
            name: m.name.clone(),
            version: m.version.clone(),
            path: model_file.clone(),
            source,
        })?;
        let granted = self.place(m)?;
        let worker = Worker::start(WorkerOptions {
            worker_binary: self.worker_binary.clone(),
            onnxruntime_library: self.onnxruntime.clone(),
            model_file,
            model_sha256: sha256,
            intra_op_threads: config.runtime.intra_op_threads,
            concurrency: config.runtime.worker_concurrency,
            startup_timeout: Duration::from_millis(config.runtime.worker_startup_timeout_ms),
            max_frame_bytes: config.server.max_body_bytes.saturating_mul(2).max(1 << 20),
            sandbox: config.sandbox.clone(),
            // The worker's watchdog: no answer within the request deadline means a hung
            // worker, which is killed and restarted.
            request_timeout: Some(Duration::from_millis(config.server.request_timeout_ms)),
            restart: config.runtime.restart.policy(),
            batching: m.batching.as_ref().map(|b| b.policy()),
            device: granted.request,
            cuda_library_dirs: config.runtime.cuda_library_dirs.clone(),
            poll_window: Duration::from_micros(config.runtime.worker_poll_us),
            shared_memory_bytes: usize::try_from(config.runtime.shared_memory_mib << 20)
                .unwrap_or(usize::MAX),
        })
        .await
        .map_err(|e| ModelError::Worker {
            name: m.name.clone(),
            version: m.version.clone(),
            message: e.to_string(),
        })?;
        if m.batching.is_some() && !worker.batching() {
            tracing::warn!(
                model = %m.name,
                version = %m.version,
                "batching is configured but the model has no dynamic first dimension: serving one request at a time"
            );
        }
        // A value range must name an input of the model (else it would never apply).
        if let Some(input) = m
            .inputs
            .keys()
            .find(|k| !worker.signature().inputs.iter().any(|i| &i.name == *k))
        {
            let input = input.clone();
            let declared = worker
                .signature()
                .inputs
                .iter()
                .map(|i| i.name.clone())
                .collect();
            worker.shutdown().await;
            return Err(ModelError::RangeInput {
                name: m.name.clone(),
                version: m.version.clone(),
                input,
                declared,
            });
        }
        // Measured once the worker serves it, before the API can see it: a quote then names
        // exactly what can answer.
        if let (Some(trust), Some(event)) = (&self.trust, &staged.load_event)
            && let Err(message) = measure(trust, event)
        {
            worker.shutdown().await;
            return Err(ModelError::Measure {
                name: m.name.clone(),
                version: m.version.clone(),
                message,
            });
        }
        tracing::info!(
            model = %m.name, version = %m.version, root_digest = %staged.root_digest,
            signer = %staged.signer, "model verified and loaded"
        );
        audit_worker_events(&worker, &self.worker_audit, &m.name, &m.version);
        Ok(LoadedModel {
            name: m.name.clone(),
            version: m.version.clone(),
            root_digest: staged.root_digest,
            signer: staged.signer,
            signature: worker.signature().clone(),
            platform,
            worker,
            forwarded: std::sync::atomic::AtomicU64::new(0),
            input_ranges: m.inputs.clone(),
            fallback_reason: granted.fallback_reason,
            staged_dir: staged.directory,
            evidence: evidence.map(Arc::new),
        })
    }

    /// Stages the model and its documents, then lets the startup policy decide on the copy.
    async fn stage_and_admit(
        &self,
        m: &ModelConfig,
        trust: &Arc<TrustContext>,
    ) -> Result<(Staged, HeldEvidence), ModelError> {
        let stage_err = |path: &Path, source: std::io::Error| ModelError::Stage {
            name: m.name.clone(),
            version: m.version.clone(),
            path: path.to_path_buf(),
            source,
        };
        let version_dir = self.state_dir.join("models").join(&m.name).join(&m.version);
        if version_dir.exists() {
            std::fs::remove_dir_all(&version_dir).map_err(|e| stage_err(&version_dir, e))?;
        }
        let model_copy = version_dir.join("model");
        let result = async {
            copy_tree(m, &m.directory, &model_copy)?;
            // An absent signature is a fact for the policy (`unsigned`), not an I/O error.
            let signature_path = m.signature_path();
            let signature = match signature_path.strip_prefix(&m.directory) {
                Ok(inside) => optional_document(&model_copy.join(inside)),
                Err(_) => optional_document(&signature_path),
            }
            .map_err(|e| stage_err(&signature_path, e))?;
            // The documents are read once; refreshes re-decide on these bytes.
            let release = match &m.release {
                Some(p) => Some(read_document(p).map_err(|e| stage_err(p, e))?),
                None => None,
            };
            let attestations = m
                .attestations
                .iter()
                .map(|p| read_document(p).map_err(|e| stage_err(p, e)))
                .collect::<Result<Vec<_>, _>>()?;
            let mut evidence = HeldEvidence {
                signature,
                release,
                attestations,
                verified: None,
            };
            let (facts, decision) = decide_blocking(
                trust.clone(),
                m.name.clone(),
                m.version.clone(),
                model_copy.clone(),
                Arc::new(evidence.clone()),
                trust.revocation_list(),
            )
            .await
            .map_err(|e| match e {
                DecideError::Anchors(source) => ModelError::Anchors {
                    name: m.name.clone(),
                    version: m.version.clone(),
                    source,
                },
                DecideError::Panicked(message) => ModelError::Join(message),
            })?;
            audit_admission(
                &self.worker_audit,
                &m.name,
                &m.version,
                &decision,
                if decision.allowed {
                    "admitted"
                } else {
                    "refused"
                },
            );
            if !decision.allowed {
                return Err(ModelError::Refused {
                    name: m.name.clone(),
                    version: m.version.clone(),
                    reasons: decision.reasons,
                });
            }
            let loaded = m.file.to_string_lossy();
            if !covers(&facts.signature.files, &loaded) {
                return Err(ModelError::Signature {
                    name: m.name.clone(),
                    version: m.version.clone(),
                    reasons: format!(
                        "{} is not covered by the signature (it is ignored or absent)",
                        m.file.display()
                    ),
                });
            }
            let load_event = facts.load_event();
            evidence.verified = facts.signature.verified.clone();
            Ok((
                Staged {
                    directory: model_copy.clone(),
                    root_digest: facts.model.root_digest.unwrap_or_default(),
                    signer: facts.signature.signer.unwrap_or_default(),
                    load_event,
                },
                evidence,
            ))
        }
        .await;
        if result.is_err() {
            // Leave nothing half-verified behind.
            let _ = std::fs::remove_dir_all(&version_dir);
        }
        result
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
fn measure(
    trust: &TrustContext,
    event: &warden_attest::boot::measure::ModelLoadEvent,
) -> Result<(), String> {
    trust.app_log.append(event).map_err(|e| e.to_string())?;
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
        Err(e) => Err(e.to_string()),
    }
}

/// Runs admission off the async threads (it hashes the whole model).
async fn decide_blocking(
    trust: Arc<TrustContext>,
    name: String,
    version: String,
    dir: PathBuf,
    evidence: Arc<HeldEvidence>,
    list: Option<Arc<Vec<u8>>>,
) -> Result<(admission::AdmissionFacts, Decision), DecideError> {
    let joined = tokio::task::spawn_blocking(move || {
        let admission = trust.admission();
        admission::admit(
            &admission,
            &Evidence {
                name: &name,
                version: &version,
                model_dir: &dir,
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
enum DecideError {
    #[error(transparent)]
    Anchors(warden_attest::anchors::AnchorError),
    #[error("admission did not complete: {0}")]
    Panicked(String),
}

/// One admission decision in the audit trail: which version, the outcome, the reasons (the
/// policy's clause texts: digests and signer names, never key material).
fn audit_admission(audit: &AuditLog, name: &str, version: &str, d: &Decision, outcome: &str) {
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

/// Whether the signature covers the file the engine loads (whole, or as shards).
fn covers(files: &[String], loaded: &str) -> bool {
    files.iter().any(|f| {
        f == loaded
            || f.strip_prefix(loaded)
                .is_some_and(|rest| rest.starts_with(':'))
    })
}

/// A bounded document read (release statements, attestations, revocation lists).
fn read_document(path: &Path) -> std::io::Result<Vec<u8>> {
    let f = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    f.take(MAX_DOCUMENT_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_DOCUMENT_BYTES {
        return Err(std::io::Error::other(format!(
            "larger than {MAX_DOCUMENT_BYTES} bytes"
        )));
    }
    Ok(bytes)
}

/// `None` when the file does not exist.
fn optional_document(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    match read_document(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes every event of `worker` into the audit trail (kind `worker`), until the worker is
/// gone. A quarantined model stays quarantined until the agent restarts; its requests get 503.
fn audit_worker_events(worker: &Worker, audit: &Arc<AuditLog>, name: &str, version: &str) {
    let mut events = worker.events();
    let audit = Arc::clone(audit);
    let (name, version) = (name.to_string(), version.to_string());
    tokio::spawn(async move {
        loop {
            let event = match events.recv().await {
                Ok(event) => event,
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::error!(model = %name, version = %version, missed, "worker events lost");
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            let reason = event.to_string();
            audit.record(&AuditEvent {
                kind: "worker",
                request_id: None,
                identity: None,
                tenant: None,
                peer: None,
                method: None,
                route: None,
                model: Some(&name),
                version: Some(&version),
                outcome: event.kind(),
                status: None,
                reason: Some(&reason),
                rule: None,
                latency_us: None,
            });
        }
    });
}

/// Numeric versions compare as numbers, others as text; numbers sort before text.
fn version_order(a: &str, b: &str) -> std::cmp::Ordering {
    match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        (Ok(_), Err(_)) => std::cmp::Ordering::Less,
        (Err(_), Ok(_)) => std::cmp::Ordering::Greater,
        (Err(_), Err(_)) => a.cmp(b),
    }
}

/// `warden-runtime` beside the running executable.
pub fn default_worker_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("warden-runtime")))
        .unwrap_or_else(|| PathBuf::from("warden-runtime"))
}

pub fn trust_anchors(config: &Config) -> Result<Vec<(PathBuf, Verifier)>, ModelError> {
    let mut out = Vec::new();
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|e| ModelError::Anchor {
            path: p.to_path_buf(),
            message: e.to_string(),
        })
    };
    for p in &config.trust.model_signer_keys {
        let v = Verifier::from_public_key_pem(&read(p)?).map_err(|e| ModelError::Anchor {
            path: p.clone(),
            message: e.to_string(),
        })?;
        out.push((p.clone(), v));
    }
    for p in &config.trust.model_signer_roots {
        let v =
            Verifier::from_certificate_roots_pem(&read(p)?).map_err(|e| ModelError::Anchor {
                path: p.clone(),
                message: e.to_string(),
            })?;
        out.push((p.clone(), v));
    }
    Ok(out)
}

struct Staged {
    directory: PathBuf,
    root_digest: String,
    signer: String,
    /// What to measure (with a key store).
    load_event: Option<warden_attest::boot::measure::ModelLoadEvent>,
}

/// Copies the model directory and its signature into `state_dir/models/NAME/VERSION/`, then
/// verifies the copy — which only this agent can write — against each trusted signer.
fn stage_and_verify(
    m: &ModelConfig,
    verifiers: &[(PathBuf, Verifier)],
    state_dir: &Path,
) -> Result<Staged, ModelError> {
    let stage_err = |path: &Path, source: std::io::Error| ModelError::Stage {
        name: m.name.clone(),
        version: m.version.clone(),
        path: path.to_path_buf(),
        source,
    };
    let version_dir = state_dir.join("models").join(&m.name).join(&m.version);
    if version_dir.exists() {
        std::fs::remove_dir_all(&version_dir).map_err(|e| stage_err(&version_dir, e))?;
    }
    let model_copy = version_dir.join("model");
    copy_tree(m, &m.directory, &model_copy)?;
    // A signature kept inside the model directory travels with the copy (and the verifier
    // leaves it out of the manifest); one kept outside is copied beside it.
    let signature_path = m.signature_path();
    let signature_copy = match signature_path.strip_prefix(&m.directory) {
        Ok(inside) => model_copy.join(inside),
        Err(_) => {
            let copy = version_dir.join("model.sig");
            std::fs::copy(&signature_path, &copy).map_err(|e| stage_err(&signature_path, e))?;
            copy
        }
    };

    let mut reasons = Vec::new();
    for (anchor, verifier) in verifiers {
        match bundle::verify_model(
            &model_copy,
            &signature_copy,
            verifier,
            &VerifyOptions::default(),
        ) {
            Ok(verified) => {
                // The signature may leave paths out (ignore paths); the file the engine loads
                // must be one it covers.
                let names: Vec<String> = verified.files.iter().map(|f| f.name.clone()).collect();
                if !covers(&names, &m.file.to_string_lossy()) {
                    let _ = std::fs::remove_dir_all(&version_dir);
                    return Err(ModelError::Signature {
                        name: m.name.clone(),
                        version: m.version.clone(),
                        reasons: format!(
                            "{} is not covered by the signature (it is ignored or absent)",
                            m.file.display()
                        ),
                    });
                }
                return Ok(Staged {
                    directory: model_copy,
                    root_digest: verified.root_digest,
                    signer: verified.signer,
                    load_event: None,
                });
            }
            Err(e) => reasons.push(format!("{}: {e}", anchor.display())),
        }
    }
    // Leave nothing half-verified behind.
    let _ = std::fs::remove_dir_all(&version_dir);
    Err(ModelError::Signature {
        name: m.name.clone(),
        version: m.version.clone(),
        reasons: reasons.join("; "),
    })
}

fn copy_tree(m: &ModelConfig, from: &Path, to: &Path) -> Result<(), ModelError> {
    let stage_err = |path: &Path, source: std::io::Error| ModelError::Stage {
        name: m.name.clone(),
        version: m.version.clone(),
        path: path.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(to).map_err(|e| stage_err(to, e))?;
    let entries = std::fs::read_dir(from).map_err(|e| stage_err(from, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| stage_err(from, e))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(|e| stage_err(&path, e))?;
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            copy_tree(m, &path, &target)?;
        } else if kind.is_file() {
            let len = entry.metadata().map_err(|e| stage_err(&path, e))?.len();
            if len > MAX_MODEL_FILE_BYTES {
                return Err(stage_err(
                    &path,
                    std::io::Error::other("file larger than 64 GiB"),
                ));
            }
            std::fs::copy(&path, &target).map_err(|e| stage_err(&path, e))?;
        } else {
            return Err(ModelError::NotRegular {
                name: m.name.clone(),
                version: m.version.clone(),
                path,
            });
        }
    }
    Ok(())
}

/// Hex SHA-256 of a file, streamed.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_order_numerically() {
        let mut v = vec!["10", "2", "b", "1", "a"];
        v.sort_by(|a, b| version_order(a, b));
        assert_eq!(v, vec!["1", "2", "10", "a", "b"]);
    }

    /// The budget arithmetic, on an inventory written down here (the real discovery runs in
    /// `runtime/tests/accel.rs` and, with models on a GPU, in `hw-tests/gpu.sh`).
    #[test]
    fn gpu_budgets_must_fit_and_a_missing_gpu_falls_back_only_when_allowed() {
        use warden_runtime_client::accel::{Gpu, Inventory};
        use warden_runtime_client::device::Device;
        let gib = 1u64 << 30;
        let inventory = Inventory {
            driver_version: Some("13.0".into()),
            gpus: vec![Gpu {
                ordinal: 0,
                name: "test".into(),
                compute_capability: "9.0".into(),
                total_memory_bytes: 16 * gib,
                free_memory_bytes: 16 * gib,
            }],
            none_because: None,
        };
        let ask = |device, gib_budget: u64, cpu_fallback| DeviceRequest {
            device,
            memory_budget_bytes: Some(gib_budget * gib),
            cpu_fallback,
        };
        let mut granted = BTreeMap::new();
        assert_eq!(
            grant_device(
                &inventory,
                &mut granted,
                "a",
                ask(Device::Cuda(0), 10, false)
            ),
            Ok(Granted {
                request: ask(Device::Cuda(0), 10, false),
                fallback_reason: None
            })
        );
        // Another model does not fit beside it; the refusal names what holds the GPU.
        let err =
            grant_device(&inventory, &mut granted, "b", ask(Device::Cuda(0), 8, true)).unwrap_err();
        assert!(err.contains("8192 MiB does not fit on cuda:0"), "{err}");
        assert!(err.contains("already granted: a 10240 MiB"), "{err}");
        // A new version of the same model shares its budget.
        assert!(
            grant_device(
                &inventory,
                &mut granted,
                "a",
                ask(Device::Cuda(0), 12, false)
            )
            .is_ok()
        );
        assert!(
            grant_device(
                &inventory,
                &mut granted,
                "b",
                ask(Device::TensorRt(0), 4, false)
            )
            .is_ok()
        );
        // A budget larger than the GPU never fits.
        assert!(
            grant_device(
                &inventory,
                &mut BTreeMap::new(),
                "c",
                ask(Device::Cuda(0), 17, false)
            )
            .is_err()
        );
        // GPU 1 does not exist: refused, or the CPU where allowed.
        let err = grant_device(
            &inventory,
            &mut granted,
            "c",
            ask(Device::Cuda(1), 1, false),
        )
        .unwrap_err();
        assert!(
            err.contains("no GPU 1 on this machine (1 GPU(s) found)"),
            "{err}"
        );
        assert!(err.contains("allows no CPU fallback"), "{err}");
        assert_eq!(
            grant_device(&inventory, &mut granted, "c", ask(Device::Cuda(1), 1, true)),
            Ok(Granted {
                request: DeviceRequest::default(),
                fallback_reason: Some("no GPU 1 on this machine (1 GPU(s) found)".into())
            })
        );
        // The CPU needs nothing.
        assert_eq!(
            grant_device(&inventory, &mut granted, "d", DeviceRequest::default()),
            Ok(Granted {
                request: DeviceRequest::default(),
                fallback_reason: None
            })
        );
    }
}
