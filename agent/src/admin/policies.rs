//! `PUT /admin/v1/policies`: a tar of `policies/` (`.rego` files only) and `statement.json`,
//! the fleet authority's signed statement over the set's digest and a serial above the
//! accepted one (`warden_attest::policyset`; anti-rollback in the key store's counter).
//! Verified and compiled first; then kept, put in force, the counter advanced, and every
//! loaded version decided again under it: releases pin the policy-set digest, so versions
//! released for the old set are unloaded ([`crate::models::policy_set`]).

use std::path::Path;
use std::sync::Arc;

use http::Request;
use hyper::body::Incoming;
use warden_keystore::Counter;

use super::archive::{POLICY_LAYOUT, is_tar, only_rego_files, spool, unpack};
use super::context::{Context, MAX_DOCUMENT_BYTES};
use super::refusal::Refusal;
use crate::models::TrustContext;
use crate::models::policy_set::{self, POLICIES, PolicyPushError};

pub async fn policies(cx: &Context, req: Request<Incoming>) -> Result<serde_json::Value, Refusal> {
    let trust = cx.models.trust().cloned().ok_or(Refusal::NoKeyStore(
        "policy sets need a key store and admission",
    ))?;
    if !is_tar(&req) {
        return Err(Refusal::NotTar);
    }
    cx.in_upload_dir(|upload| async move { install(cx, &upload, req, &trust).await })
        .await
}

async fn install(
    cx: &Context,
    upload: &Path,
    req: Request<Incoming>,
    trust: &Arc<TrustContext>,
) -> Result<serde_json::Value, Refusal> {
    let archive = upload.join("archive.tar");
    let limit = MAX_DOCUMENT_BYTES as u64;
    spool(req.into_body(), &archive, limit).await?;
    let set_dir = upload.join("set");
    let unpacked = {
        let (archive, set_dir) = (archive.clone(), set_dir.clone());
        let entries = cx.config.max_entries;
        tokio::task::spawn_blocking(move || {
            unpack(&archive, &set_dir, limit, entries, &POLICY_LAYOUT)?;
            only_rego_files(&set_dir.join(POLICIES))
        })
        .await
    };
    unpacked
        .map_err(|e| Refusal::internal("unpacking", e))?
        .map_err(|e| {
            Refusal::unpack(
                e,
                "the archive must hold policies/ (.rego files only) and statement.json",
            )
        })?;
    // Verified against the fleet authority and the accepted serial; an equal serial only for
    // the set already in force (a retried push).
    let store = trust.store.clone();
    let running = trust.admission().policy_digest().to_owned();
    let checked = {
        let set_dir = set_dir.clone();
        tokio::task::spawn_blocking(move || {
            let current = store
                .counter(Counter::PolicySetSerial)
                .map_err(|e| PolicyPushError::Internal(e.to_string()))?;
            let (set, digest) = policy_set::verify_set(&set_dir, store.as_ref(), current)?;
            if set.serial == current && current > 0 && digest != running {
                return Err(PolicyPushError::Replayed(format!(
                    "policy set serial {} is already accepted for other policies",
                    set.serial
                )));
            }
            Ok((set, digest))
        })
        .await
    };
    let (set, digest) = checked.map_err(|e| Refusal::internal("checking the policy set", e))??;
    // It must compile and pass the same checks as a configured set before it is kept.
    let compiled =
        trust
            .compile_policy(&set_dir.join(POLICIES))
            .map_err(|e| Refusal::PolicySetInvalid {
                what: "the set does not compile as an admission policy",
                reason: e.to_string(),
            })?;
    let state_dir = cx.models.state_dir().to_path_buf();
    let kept = policy_set::keep_and_activate(&state_dir, &set_dir, set.serial)
        .map_err(|e| Refusal::internal("keeping the policy set", e))?;
    // The pointer is written before the counter moves: a crash in between leaves a set whose
    // serial the next start records.
    trust
        .store
        .advance_counter(Counter::PolicySetSerial, set.serial)
        .map_err(|e| Refusal::internal("advancing the policy-set counter", e))?;
    trust.set_admission(Arc::new(compiled), kept.join(POLICIES));
    tracing::info!(serial = set.serial, policy_digest = %digest, "admin: policy set in force");
    let unloaded = cx.models.refresh().await;
    Ok(serde_json::json!({
        "serial": set.serial,
        "policy_set_digest": digest,
        "unloaded": unloaded.iter().map(|u| serde_json::json!({
            "name": u.name, "version": u.version,
        })).collect::<Vec<_>>(),
    }))
}
