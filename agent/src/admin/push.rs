//! `PUT /admin/v1/models/{name}/versions/{version}`: one tar archive (`application/x-tar`)
//! holding `model/`, `model.sig`, and in key-store mode `release.json` and
//! `attestations/*.json`, spooled under `admin.max_upload_bytes`, then loaded like a
//! configured version ([`super::load`]).

use http::Request;
use hyper::body::Incoming;

use super::archive::{is_tar, spool};
use super::context::Context;
use super::load::{new_version, staged};
use super::refusal::Refusal;
use crate::config::valid_name;

pub async fn push(
    cx: &Context,
    name: &str,
    version: &str,
    req: Request<Incoming>,
) -> Result<serde_json::Value, Refusal> {
    if !valid_name(name) || !valid_name(version) {
        return Err(Refusal::InvalidName);
    }
    if !is_tar(&req) {
        return Err(Refusal::NotTar);
    }
    let template = new_version(cx, name, version)?;
    let limit = cx.config.max_upload_bytes;
    staged(cx, template, version, |archive| async move {
        Ok(spool(req.into_body(), &archive, limit).await?)
    })
    .await
}
