//! `PUT /admin/v1/policies`: a tar of `policies/` (the whole policy set: `.rego` files and
//! `data.json` documents) and `statement.json`, the fleet authority's signed statement over
//! the set's digest and a serial above the accepted one (`warden_attest::policyset`;
//! anti-rollback in the key store's counter). Verified and compiled for every consumer first
//! (the startup and the route policy); then kept, put in force at once
//! ([`crate::policy_in_force`]), the counter advanced, and every loaded version decided again
//! under it: releases pin the policy-set digest, so versions released for the old set are
//! unloaded ([`crate::models::policy_set`]).

use std::path::Path;
use std::sync::Arc;

use http::Request;
use hyper::body::Incoming;
use warden_keystore::Counter;

use super::archive::{POLICY_LAYOUT, is_tar, only_policy_set_files, spool, unpack};
use super::context::{Context, MAX_DOCUMENT_BYTES};
use super::refusal::Refusal;
use crate::models::TrustContext;
use crate::models::policy_set::{self, POLICIES, PolicyPushError};
use crate::policy::set::PolicySetFiles;

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
            only_policy_set_files(&set_dir.join(POLICIES))
        })
        .await
    };
    unpacked
        .map_err(|e| Refusal::internal("unpacking", e))?
        .map_err(|e| {
            Refusal::unpack(
                e,
                "the archive must hold policies/ (.rego files and data.json documents only) and \
                 statement.json",
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
    // Every policy of the set must compile, as a configured set must, before it is kept.
    let staged =
        PolicySetFiles::read(&set_dir.join(POLICIES)).map_err(|e| Refusal::PolicySetInvalid {
            what: "the set cannot be read",
            reason: e.to_string(),
        })?;
    cx.policies
        .check(&staged)
        .map_err(|e| Refusal::PolicySetInvalid {
            what: "the set does not compile",
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
    // Read again from where it is kept (only this agent writes there), and put in force only
    // if it is still the set that verified.
    let kept_set = PolicySetFiles::read(&kept.join(POLICIES))
        .map_err(|e| Refusal::internal("reading the kept policy set", e))?;
    if kept_set.digest() != digest {
        return Err(Refusal::internal(
            "keeping the policy set",
            format!(
                "the kept set has digest {}, not {digest}",
                kept_set.digest()
            ),
        ));
    }
    cx.policies
        .install_pushed(kept_set)
        .map_err(|e| Refusal::internal("putting the policy set in force", e))?;
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
