//! The admin routes: each request routed to its action, then answered (the action's JSON, or
//! its refusal as `{"error": "<class>: <text>"}`), logged and audited with the route pattern,
//! the model and version it names (when they are valid names) and its outcome.

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use std::net::SocketAddr;

use super::activate::activate;
use super::context::Context;
use super::policies::policies;
use super::pull::pull;
use super::push::push;
use super::refusal::Refusal;
use super::revocations::revocations;
use super::rollback::rollback;
use crate::audit::AuditEvent;
use crate::config::valid_name;

/// One admin request, start to finish.
pub async fn answer(
    cx: &Context,
    req: Request<Incoming>,
    identity: &str,
    addr: SocketAddr,
) -> Response<Full<Bytes>> {
    let started = std::time::Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (route, model, version, done): (&str, Option<&str>, Option<String>, _) =
        match (&method, segments.as_slice()) {
            (&Method::GET, ["admin", "v1", "models"]) => {
                ("GET /admin/v1/models", None, None, Ok(cx.models.status()))
            }
            (&Method::PUT, ["admin", "v1", "models", name, "versions", version]) => (
                "PUT /admin/v1/models/{name}/versions/{version}",
                Some(*name),
                Some((*version).to_owned()),
                push(cx, name, version, req).await,
            ),
            (&Method::POST, ["admin", "v1", "models", name, "versions", version, "pull"]) => (
                "POST /admin/v1/models/{name}/versions/{version}/pull",
                Some(*name),
                Some((*version).to_owned()),
                pull(cx, name, version, req).await,
            ),
            (&Method::POST, ["admin", "v1", "models", name, "activate"]) => {
                let (version, done) = activate(cx, name, req).await;
                (
                    "POST /admin/v1/models/{name}/activate",
                    Some(*name),
                    version,
                    done,
                )
            }
            (&Method::POST, ["admin", "v1", "models", name, "rollback"]) => {
                let (version, done) = rollback(cx, name);
                (
                    "POST /admin/v1/models/{name}/rollback",
                    Some(*name),
                    version,
                    done,
                )
            }
            (&Method::PUT, ["admin", "v1", "policies"]) => (
                "PUT /admin/v1/policies",
                None,
                None,
                policies(cx, req).await,
            ),
            (&Method::PUT, ["admin", "v1", "revocations"]) => (
                "PUT /admin/v1/revocations",
                None,
                None,
                revocations(cx, req).await,
            ),
            _ => (
                "unknown",
                None,
                None,
                Err(Refusal::NotFound(format!(
                    "{method} on an unknown admin path"
                ))),
            ),
        };
    // Names that are not valid model names are not written to the audit trail verbatim.
    let model = model.filter(|m| valid_name(m));
    let version = version.filter(|v| valid_name(v));
    let (status, body, outcome, reason) = match done {
        Ok(body) => {
            tracing::info!(
                identity,
                route,
                model,
                version = version.as_deref(),
                "admin action done"
            );
            (http::StatusCode::OK, body, "ok", None)
        }
        Err(refusal) => {
            let (status, class, public) = refusal.class();
            let reason = refusal.reason();
            tracing::warn!(identity, route, model, version = version.as_deref(), outcome = class, reason = %reason, "admin action refused");
            (
                status,
                serde_json::json!({ "error": format!("{class}: {public}") }),
                class,
                Some(reason),
            )
        }
    };
    cx.audit.record(&AuditEvent {
        kind: "admin",
        request_id: None,
        identity: Some(identity),
        tenant: None,
        peer: Some(addr.to_string()),
        method: Some(method.as_str()),
        route: Some(route),
        model,
        version: version.as_deref(),
        outcome,
        status: Some(status.as_u16()),
        reason: reason.as_deref(),
        rule: None,
        latency_us: Some(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX)),
    });
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}
