//! What every admin action works with: the registry, the audit trail, `[admin]`, and a fresh
//! upload directory per action.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use http::Request;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::refusal::Refusal;
use crate::audit::AuditLog;
use crate::config::AdminConfig;
use crate::models::ModelRegistry;

/// Largest revocation list or JSON body accepted.
pub const MAX_DOCUMENT_BYTES: usize = 16 * 1024 * 1024;
/// Where uploads are unpacked, inside the state directory.
const UPLOADS: &str = "uploads";

/// The admin listener's state.
pub struct Context {
    pub models: Arc<ModelRegistry>,
    /// The policy set in force, which a signed push replaces.
    pub policies: Arc<crate::policy_in_force::PolicyInForce>,
    pub audit: Arc<AuditLog>,
    pub config: AdminConfig,
}

impl Context {
    /// Runs `work` in a fresh private directory under the state directory's uploads, and
    /// removes the directory afterwards, whatever the outcome.
    pub async fn in_upload_dir<T, F, Fut>(&self, work: F) -> Result<T, Refusal>
    where
        F: FnOnce(PathBuf) -> Fut,
        Fut: Future<Output = Result<T, Refusal>>,
    {
        let upload = self
            .models
            .state_dir()
            .join(UPLOADS)
            .join(uuid::Uuid::new_v4().to_string());
        let done = match crate::state_files::create_private_dir(&upload) {
            Err(e) => Err(Refusal::internal("creating the upload directory", e)),
            Ok(()) => work(upload.clone()).await,
        };
        if let Err(e) = std::fs::remove_dir_all(&upload)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %upload.display(), error = %e, "admin: cannot remove an upload");
        }
        done
    }

    /// Records the chosen defaults after a load, `activate` or `rollback`; a failure is
    /// logged (the change holds until the next restart).
    pub fn save_defaults(&self) {
        if let Err(e) = crate::models::kept::save_active(self.models.state_dir(), &self.models) {
            tracing::error!(error = %e, "admin: the chosen default is not kept across restarts");
        }
    }
}

/// A JSON body of at most [`MAX_DOCUMENT_BYTES`]; `expected` describes its shape.
pub async fn json_body<T: serde::de::DeserializeOwned>(
    req: Request<Incoming>,
    expected: &'static str,
) -> Result<T, Refusal> {
    let body = read_body(req).await?;
    serde_json::from_slice(&body).map_err(|e| Refusal::InvalidBody {
        expected,
        reason: e.to_string(),
    })
}

/// A body of at most [`MAX_DOCUMENT_BYTES`].
pub async fn read_body(req: Request<Incoming>) -> Result<bytes::Bytes, Refusal> {
    Limited::new(req.into_body(), MAX_DOCUMENT_BYTES)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(|e| Refusal::UploadFailed(e.to_string()))
}
