//! The registry of served versions: every loaded version by model name, the defaults the
//! admin API chose, what a refresh withdrew and why. The map is swapped whole (copy on write):
//! a request clones an `Arc` under a short read lock and never holds it across an await.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use super::error::{ActivateError, ModelError};
use super::loaded::{LoadedModel, Unloaded};
use super::loader::{Loader, default_worker_binary};
use super::placement::GpuPlacer;
use super::report::{ModelStatus, Withdrawn};
use super::staging::trust_anchors;
use super::trust::{TrustContext, audit_admission, decide_blocking};
use crate::audit::AuditLog;
use crate::config::{Config, ModelConfig};
use crate::inference::{Catalog, Missing};

type Map = BTreeMap<String, Vec<Arc<LoadedModel>>>;

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
                verifiers: std::sync::RwLock::new(Arc::new(verifiers)),
                trust,
                placer: GpuPlacer::default(),
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
        self.map
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn swap(&self, f: impl FnOnce(&mut Map)) {
        let mut guard = self.map.write().unwrap_or_else(PoisonError::into_inner);
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
        // Decided under the policy set in force: a refresh never reads policies from disk
        // (another set is put in force by a signed push or SIGHUP: `crate::policy_in_force`).
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
                // A loaded version is re-decided on what its signature verified at load
                // (`HeldEvidence::verified`): nothing is hashed again, so no file is named.
                None,
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

    /// Development mode (no key store): reads the file anchors and the model signers' CRLs
    /// again (SIGHUP), for the loads and pushes that follow; on error those in force stay.
    /// Returns how many anchors are in force; with a key store, `None` (its CRLs are the
    /// trust context's).
    pub fn reload_file_anchors(&self) -> Option<Result<usize, ModelError>> {
        if self.loader.trust.is_some() {
            return None;
        }
        Some(trust_anchors(&self.loader.config).map(|fresh| {
            let n = fresh.len();
            *self
                .loader
                .verifiers
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(fresh);
            n
        }))
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
        self.active
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .map(|(v, _)| v.clone())
    }

    fn with_active<T>(
        &self,
        f: impl FnOnce(&mut BTreeMap<String, (String, Option<String>)>) -> T,
    ) -> T {
        f(&mut self.active.write().unwrap_or_else(PoisonError::into_inner))
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
    pub fn report(&self) -> (Vec<ModelStatus>, Vec<Withdrawn>) {
        let map = self.snapshot();
        let mut models = Vec::new();
        for (name, versions) in map.iter() {
            let active = self.resolve(name, None).map(|m| m.version.clone());
            for m in versions.iter() {
                models.push(ModelStatus {
                    name: name.clone(),
                    version: m.version.clone(),
                    active: active.as_deref() == Some(m.version.as_str()),
                    root_digest: m.root_digest.clone(),
                    ready: m.worker.is_alive(),
                    quarantined: m.worker.quarantined(),
                    batching: m.worker.batching(),
                    placement: Some(m.placement()),
                    forwarded: m.forwarded.load(std::sync::atomic::Ordering::Relaxed),
                    signer_valid_until: m.signer_valid_until,
                });
            }
        }
        let withdrawn = self
            .withdrawn
            .read()
            .map(|w| {
                w.iter()
                    .map(|((n, v), why)| Withdrawn {
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

impl Catalog for ModelRegistry {
    type Model = LoadedModel;

    fn resolve(&self, name: &str, version: Option<&str>) -> Result<Arc<LoadedModel>, Missing> {
        if let Some(model) = ModelRegistry::resolve(self, name, version) {
            return Ok(model);
        }
        Err(match version {
            None => Missing::Model,
            Some(v) => match self.withdrawn(name, v) {
                Some(reasons) => Missing::Withdrawn { reasons },
                None => Missing::Version,
            },
        })
    }

    fn versions(&self, name: &str) -> Vec<String> {
        ModelRegistry::versions(self, name)
    }

    fn all_ready(&self) -> bool {
        ModelRegistry::all_ready(self)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_order_numerically() {
        let mut v = vec!["10", "2", "b", "1", "a"];
        v.sort_by(|a, b| version_order(a, b));
        assert_eq!(v, vec!["1", "2", "10", "a", "b"]);
    }
}
