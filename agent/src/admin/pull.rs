//! `POST /admin/v1/models/{name}/versions/{version}/pull` `{"reference":
//! "registry/repo@sha256:…", "insecure_http": false}`: the bundle's tar layer pulled from an
//! OCI registry by digest ([`super::oci`]), then the same unpacking and loading as a `PUT`.

use http::Request;
use hyper::body::Incoming;

use super::context::{Context, json_body};
use super::load::{new_version, staged};
use super::oci::{pinned_reference, pull_bundle};
use super::refusal::Refusal;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Pull {
    reference: String,
    #[serde(default)]
    insecure_http: bool,
}

pub async fn pull(
    cx: &Context,
    name: &str,
    version: &str,
    req: Request<Incoming>,
) -> Result<serde_json::Value, Refusal> {
    let p: Pull = json_body(req, "expected {\"reference\": \"registry/repo@sha256:…\"}").await?;
    let reference =
        pinned_reference(&p.reference).map_err(|e| Refusal::ReferenceRefused(e.to_string()))?;
    let template = new_version(cx, name, version)?;
    let limit = cx.config.max_upload_bytes;
    let insecure = p.insecure_http;
    staged(cx, template, version, |archive| async move {
        Ok(pull_bundle(&reference, insecure, &archive, limit).await?)
    })
    .await
}
