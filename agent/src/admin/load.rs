//! The one path from an archive (a pushed body or a pulled OCI layer) to a loaded version:
//! the template of the version's model, the archive unpacked into a fresh upload directory,
//! then [`ModelRegistry::add`](crate::models::ModelRegistry::add) — the same verification and
//! admission as a configured version — and the bundle kept for restarts.

use std::future::Future;
use std::path::{Path, PathBuf};

use super::archive::{BUNDLE_LAYOUT, unpack};
use super::context::Context;
use super::refusal::Refusal;
use crate::config::ModelConfig;

/// The configured template for a new `version` of `name`, or the refusal.
pub fn new_version(cx: &Context, name: &str, version: &str) -> Result<ModelConfig, Refusal> {
    let template = match cx.models.configured(name) {
        Some(template) => template,
        // A model pushed before (and kept) is no longer new, but its template is the same.
        None if cx.config.accept_new_models => crate::models::kept::new_model_template(name),
        None => {
            return Err(Refusal::UnknownModel(format!(
                "model {name} is not configured (admin.accept_new_models is off)"
            )));
        }
    };
    if cx.models.resolve(name, Some(version)).is_some() {
        return Err(Refusal::AlreadyLoaded(format!(
            "model {name} version {version} is already loaded"
        )));
    }
    Ok(template)
}

/// Runs `fetch` (which writes the archive to the path it is given) in a fresh upload
/// directory, then [`unpack_and_load`]; the directory is removed afterwards.
pub async fn staged<F, Fut>(
    cx: &Context,
    template: ModelConfig,
    version: &str,
    fetch: F,
) -> Result<serde_json::Value, Refusal>
where
    F: FnOnce(PathBuf) -> Fut,
    Fut: Future<Output = Result<(), Refusal>>,
{
    cx.in_upload_dir(|upload| async move {
        let archive = upload.join("archive.tar");
        fetch(archive.clone()).await?;
        unpack_and_load(cx, &upload, &archive, template, version).await
    })
    .await
}

/// Unpacks `archive` into `upload`/bundle, then loads it as `version` of `template`'s model.
async fn unpack_and_load(
    cx: &Context,
    upload: &Path,
    archive: &Path,
    template: ModelConfig,
    version: &str,
) -> Result<serde_json::Value, Refusal> {
    let bundle = upload.join("bundle");
    let (max_bytes, max_entries) = (cx.config.max_upload_bytes, cx.config.max_entries);
    let unpacked = {
        let (archive, bundle) = (archive.to_owned(), bundle.clone());
        tokio::task::spawn_blocking(move || {
            unpack(&archive, &bundle, max_bytes, max_entries, &BUNDLE_LAYOUT)
        })
        .await
    };
    unpacked
        .map_err(|e| Refusal::internal("unpacking", e))?
        .map_err(|e| Refusal::unpack(e, "the archive is malformed or holds a refused entry"))?;
    let _ = std::fs::remove_file(archive);
    if !bundle.join("model").is_dir() {
        return Err(Refusal::ArchiveInvalid {
            what: "the archive holds no model/ directory",
            reason: "no model/ directory in the archive".into(),
        });
    }
    if !bundle.join("model.sig").is_file() && cx.models.trust().is_none() {
        // With a key store the policy decides on "unsigned"; without, the loader needs one.
        return Err(Refusal::SignatureRefused {
            what: "the model is not signed",
            reason: "no model.sig in the archive".into(),
        });
    }
    let m = crate::models::kept::bundle_config(&bundle, template, version).map_err(|e| {
        Refusal::ArchiveInvalid {
            what: "a new model's bundle must hold exactly one model file",
            reason: e.to_string(),
        }
    })?;
    // The current default stays the default until `activate`.
    cx.models.pin_default(&m.name);
    cx.models.add(&m).await?;
    // Kept for restarts: the bundle (re-verified and re-admitted at each start) and the
    // defaults.
    let state_dir = cx.models.state_dir();
    let kept = crate::models::kept::keep(state_dir, &m.name, &m.version, &bundle)
        .and_then(|_| crate::models::kept::save_active(state_dir, &cx.models));
    if let Err(e) = &kept {
        tracing::error!(model = %m.name, version = %m.version, error = %e, "admin: the version serves but is not kept across restarts");
    }
    Ok(serde_json::json!({
        "name": m.name,
        "version": m.version,
        "loaded": true,
        "kept_across_restarts": kept.is_ok(),
        "active": cx.models.resolve(&m.name, None).map(|l| l.version.clone()),
    }))
}
