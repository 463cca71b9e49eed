//! `POST /admin/v1/models/{name}/activate` `{"version": "…"}`: a loaded version becomes the
//! default, kept across restarts.

use http::Request;
use hyper::body::Incoming;

use super::context::{Context, json_body};
use super::refusal::Refusal;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Activate {
    version: String,
}

/// The version named (for the audit trail, also when refused) and the outcome.
pub async fn activate(
    cx: &Context,
    name: &str,
    req: Request<Incoming>,
) -> (Option<String>, Result<serde_json::Value, Refusal>) {
    let a: Activate = match json_body(req, "expected {\"version\": \"…\"}").await {
        Ok(a) => a,
        Err(refusal) => return (None, Err(refusal)),
    };
    let done = match cx.models.activate(name, &a.version) {
        Ok(previous) => {
            cx.save_defaults();
            Ok(serde_json::json!({"name": name, "active": a.version, "previous": previous}))
        }
        Err(e) => Err(Refusal::NotLoaded(e.to_string())),
    };
    (Some(a.version), done)
}
