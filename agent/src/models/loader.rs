//! Loading one version: staged and verified (development mode) or admitted by the startup
//! policy (with a key store), its worker started on the verified copy (the worker checks the
//! model file against the digest the verified signature lists for it, so nothing can be
//! swapped between verification and load), its
//! value ranges checked against its signature, the load measured, and its worker's events
//! audited. Only then does the registry make it visible.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;
use warden_attest::bundle::Verifier;
use warden_runtime_client::model_format::ModelFormat;
use warden_runtime_client::worker::{Worker, WorkerOptions};

use super::error::ModelError;
use super::loaded::{HeldEvidence, LoadedModel};
use super::placement::GpuPlacer;
use super::staging::{
    Staged, copy_tree, optional_document, read_document, signed_digest, stage_and_verify,
};
use super::trust::{DecideError, TrustContext, audit_admission, decide_blocking, measure};
use crate::audit::{AuditEvent, AuditLog};
use crate::config::{Config, ModelConfig};

/// What a loader needs beyond one model's config.
pub(super) struct Loader {
    pub(super) config: Config,
    pub(super) state_dir: PathBuf,
    pub(super) onnxruntime: Option<PathBuf>,
    pub(super) worker_binary: PathBuf,
    pub(super) worker_audit: Arc<AuditLog>,
    /// File anchors with `trust.model_signer_crls` (development mode, no key store), swapped
    /// whole when SIGHUP reads them again.
    pub(super) verifiers: std::sync::RwLock<Arc<Vec<(PathBuf, Verifier)>>>,
    pub(super) trust: Option<Arc<TrustContext>>,
    /// Where workers run (GPUs discovered once, their memory budgets granted).
    pub(super) placer: GpuPlacer,
}

impl Loader {
    pub(super) async fn load_one(&self, m: &ModelConfig) -> Result<LoadedModel, ModelError> {
        let config = &self.config;
        let (staged, evidence) = match &self.trust {
            None => {
                let verifiers = self
                    .verifiers
                    .read()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone();
                (stage_and_verify(m, &verifiers, &self.state_dir)?, None)
            }
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
        let granted = self.placer.place(m)?;
        let worker = Worker::start(WorkerOptions {
            worker_binary: self.worker_binary.clone(),
            onnxruntime_library: self.onnxruntime.clone(),
            model_file,
            // From the verified manifest: what the worker loads is what was signed.
            model_digest: staged.model_digest.clone(),
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
            && let Err(source) = measure(trust, event)
        {
            worker.shutdown().await;
            return Err(ModelError::Measure {
                name: m.name.clone(),
                version: m.version.clone(),
                source,
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
            signer_valid_until: staged.signer_valid_until,
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
                Some(m.file.clone()),
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
            // The policy admitted a valid signature, so there is a verified model.
            let Some(verified) = facts.signature.verified.clone() else {
                return Err(ModelError::Signature {
                    name: m.name.clone(),
                    version: m.version.clone(),
                    reasons: "admitted without a verified signature".to_owned(),
                });
            };
            let model_digest = signed_digest(m, &verified)?;
            let load_event = facts.load_event();
            let signer_valid_until = verified.signer_valid_until;
            evidence.verified = Some(verified);
            Ok((
                Staged {
                    directory: model_copy.clone(),
                    root_digest: facts.model.root_digest.unwrap_or_default(),
                    signer: facts.signature.signer.unwrap_or_default(),
                    signer_valid_until,
                    load_event,
                    model_digest,
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

/// `warden-runtime` beside the running executable.
pub fn default_worker_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("warden-runtime")))
        .unwrap_or_else(|| PathBuf::from("warden-runtime"))
}
