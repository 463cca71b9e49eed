//! `PUT /admin/v1/revocations`: a revocation list signed by the fleet authority, with a serial
//! no older than the accepted one, stored at `admission.revocation_list`; then every loaded
//! version is decided again at once and the revoked ones are unloaded.

use http::Request;
use hyper::body::Incoming;
use warden_attest::revocation::{RevocationError, verify_revocation_list};
use warden_keystore::{Counter, KeyStore};

use super::context::{Context, read_body};
use super::refusal::Refusal;

pub async fn revocations(
    cx: &Context,
    req: Request<Incoming>,
) -> Result<serde_json::Value, Refusal> {
    let trust = cx.models.trust().cloned().ok_or(Refusal::NoKeyStore(
        "revocation lists need a key store and admission",
    ))?;
    let path = trust
        .config
        .revocation_list
        .clone()
        .ok_or(Refusal::NoRevocationList)?;
    let body = read_body(req).await?;
    let store = trust.store.clone();
    let (serial, body) =
        tokio::task::spawn_blocking(move || check_list(&body, store.as_ref()).map(|s| (s, body)))
            .await
            .map_err(|e| Refusal::internal("checking the list", e))??;
    // 0644: the list is signed, public data.
    crate::state_files::write_atomically(
        &path,
        &body,
        0o644,
        crate::state_files::Durability::Synced,
    )
    .map_err(|e| Refusal::internal("storing the list", format!("{}: {e}", path.display())))?;
    // Admission accepts the list (advancing the key store's counter) and re-decides.
    let unloaded = cx.models.refresh().await;
    Ok(serde_json::json!({
        "serial": serial,
        "unloaded": unloaded.iter().map(|u| serde_json::json!({
            "name": u.name, "version": u.version,
        })).collect::<Vec<_>>(),
    }))
}

/// Verifies a revocation list against the fleet authority's anchors and the accepted serial
/// (the same functions admission uses); records nothing.
fn check_list(body: &[u8], store: &dyn KeyStore) -> Result<u64, Refusal> {
    let anchors = warden_attest::anchors::TrustAnchors::from_key_store(store)
        .map_err(|e| Refusal::internal("reading the fleet authority's anchors", e))?;
    let current = store
        .counter(Counter::RevocationSerial)
        .map_err(|e| Refusal::internal("reading the revocation counter", e))?;
    if anchors.fleet_authority.is_empty() {
        return Err(Refusal::RevocationListInvalid(
            "no fleet-authority anchors are installed".into(),
        ));
    }
    let mut last = String::new();
    for v in &anchors.fleet_authority {
        match verify_revocation_list(body, v, current) {
            Ok(list) => return Ok(list.serial),
            Err(e @ RevocationError::OlderSerial { .. }) => {
                return Err(Refusal::RevocationListReplayed(e.to_string()));
            }
            Err(e) => last = e.to_string(),
        }
    }
    Err(Refusal::RevocationListInvalid(last))
}
