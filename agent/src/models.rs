//! The models being served. Loading one version is: copy its directory into the agent's private
//! state directory, verify the copy's signature against the trusted signers, start a worker on
//! the verified copy (the worker re-checks the model file's SHA-256, so nothing can be swapped
//! between verification and load), and only then make it visible to the API. A version that
//! fails any step is not served.

use crate::audit::{AuditError, AuditEvent, AuditLog};
use crate::config::{Config, ModelConfig};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;
use warden_attest::bundle::{self, Verifier, VerifyOptions};
use warden_runtime::tensor::ModelSignature;
use warden_runtime::worker::{RestartPolicy, Worker, WorkerOptions};

/// Largest single file the loader copies into the state directory.
const MAX_MODEL_FILE_BYTES: u64 = 64 * 1024 * 1024 * 1024;

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
    #[error("trust anchor {path}: {message}")]
    Anchor { path: PathBuf, message: String },
    #[error("model {name} version {version}: worker failed to start: {message}")]
    Worker {
        name: String,
        version: String,
        message: String,
    },
    #[error(
        "the ONNX Runtime library is not configured: set runtime.onnxruntime_library or ORT_DYLIB_PATH (scripts/setup.sh fetches it)"
    )]
    NoOnnxRuntime,
    #[error("cannot find the worker binary {path}: set runtime.worker_binary")]
    NoWorkerBinary { path: PathBuf },
    #[error("worker events: {0}")]
    Audit(#[from] AuditError),
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
    pub worker: Worker,
    /// Requests handed to the worker; everything refused before that point never counts.
    pub forwarded: std::sync::atomic::AtomicU64,
}

/// All served versions by model name; versions ordered, the default being the highest.
pub struct ModelRegistry {
    by_name: BTreeMap<String, Vec<Arc<LoadedModel>>>,
}

impl ModelRegistry {
    /// Verifies and starts every configured model. Fails on the first model that cannot be
    /// served: an appliance that silently serves fewer models than configured is worse than
    /// one that refuses to start and says why.
    pub async fn load(config: &Config, state_dir: &Path) -> Result<ModelRegistry, ModelError> {
        let verifiers = trust_anchors(config)?;
        let onnxruntime = config
            .runtime
            .onnxruntime_library
            .clone()
            .or_else(|| std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from))
            .ok_or(ModelError::NoOnnxRuntime)?;
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
        let mut by_name: BTreeMap<String, Vec<Arc<LoadedModel>>> = BTreeMap::new();
        for m in &config.models {
            let staged = stage_and_verify(m, &verifiers, state_dir)?;
            let model_file = staged.directory.join(&m.file);
            let sha256 = sha256_file(&model_file).map_err(|source| ModelError::Stage {
                name: m.name.clone(),
                version: m.version.clone(),
                path: model_file.clone(),
                source,
            })?;
            let worker = Worker::start(WorkerOptions {
                worker_binary: worker_binary.clone(),
                onnxruntime_library: onnxruntime.clone(),
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
                restart: RestartPolicy::default(),
                batching: None,
            })
            .await
            .map_err(|e| ModelError::Worker {
                name: m.name.clone(),
                version: m.version.clone(),
                message: e.to_string(),
            })?;
            tracing::info!(
                model = %m.name, version = %m.version, root_digest = %staged.root_digest,
                signer = %staged.signer, "model verified and loaded"
            );
            audit_worker_events(&worker, &worker_audit, &m.name, &m.version);
            let loaded = LoadedModel {
                name: m.name.clone(),
                version: m.version.clone(),
                root_digest: staged.root_digest,
                signer: staged.signer,
                signature: worker.signature().clone(),
                worker,
                forwarded: std::sync::atomic::AtomicU64::new(0),
            };
            by_name
                .entry(m.name.clone())
                .or_default()
                .push(Arc::new(loaded));
        }
        for versions in by_name.values_mut() {
            versions.sort_by(|a, b| version_order(&a.version, &b.version));
        }
        Ok(ModelRegistry { by_name })
    }

    /// A version, or the default (highest) one.
    pub fn resolve(&self, name: &str, version: Option<&str>) -> Option<Arc<LoadedModel>> {
        let versions = self.by_name.get(name)?;
        match version {
            Some(v) => versions.iter().find(|m| m.version == v).cloned(),
            None => versions.last().cloned(),
        }
    }

    pub fn versions(&self, name: &str) -> Vec<String> {
        self.by_name
            .get(name)
            .map(|v| v.iter().map(|m| m.version.clone()).collect())
            .unwrap_or_default()
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<LoadedModel>> {
        self.by_name.values().flatten()
    }

    /// Whether every configured model has a live worker.
    pub fn all_ready(&self) -> bool {
        self.all().all(|m| m.worker.is_alive())
    }

    /// Stops every worker.
    pub async fn shutdown(&self) {
        for m in self.all() {
            m.worker.shutdown().await;
        }
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
                let loaded = m.file.to_string_lossy();
                let covered = verified.files.iter().any(|f| {
                    f.name == loaded
                        || f.name
                            .strip_prefix(loaded.as_ref())
                            .is_some_and(|rest| rest.starts_with(':'))
                });
                if !covered {
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
    Ok(hex_lower(&h.finalize()))
}

fn hex_lower(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
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
