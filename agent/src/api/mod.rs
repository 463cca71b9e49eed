//! The Open Inference Protocol v2 (KServe v2 / Triton REST) over HTTP: health, server and
//! model metadata, readiness and inference. Every infer request is decoded strictly and
//! validated against the model's declared signature before anything reaches its worker.
//!
//! The order for one request, each step refusing early:
//! 1. route and method (404 / 405), before the body is read;
//! 2. body size (413, from Content-Length before reading, then while reading) and content type
//!    (415);
//! 3. decoding (400) and validation against the model signature (400);
//! 4. the worker (503 when it is down), under the request deadline (504);
//! 5. the response, security headers, and one audit line — never the payload.

pub mod codec;
pub mod error;

use crate::audit::{AuditEvent, AuditLog};
use crate::models::{LoadedModel, ModelRegistry};
use crate::validate;
use bytes::Bytes;
use error::{ApiError, ErrorClass};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use warden_runtime::worker::WorkerError;

/// The binary tensor extension's header.
pub const INFERENCE_HEADER_CONTENT_LENGTH: &str = "inference-header-content-length";
const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Per-connection facts the handler needs.
#[derive(Debug, Clone)]
pub struct Peer {
    pub identity: String,
    pub addr: SocketAddr,
}

/// Limits applied to every request.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
}

/// The application behind the listener.
pub struct Api {
    models: Arc<ModelRegistry>,
    audit: Arc<AuditLog>,
    limits: Limits,
}

/// What a route names.
#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    ServerMetadata,
    Live,
    Ready,
    ModelMetadata(&'a str, Option<&'a str>),
    ModelReady(&'a str, Option<&'a str>),
    Infer(&'a str, Option<&'a str>),
}

impl Route<'_> {
    /// The pattern recorded in the audit trail.
    fn pattern(&self) -> &'static str {
        match self {
            Route::ServerMetadata => "/v2",
            Route::Live => "/v2/health/live",
            Route::Ready => "/v2/health/ready",
            Route::ModelMetadata(_, None) => "/v2/models/{name}",
            Route::ModelMetadata(_, Some(_)) => "/v2/models/{name}/versions/{version}",
            Route::ModelReady(_, None) => "/v2/models/{name}/ready",
            Route::ModelReady(_, Some(_)) => "/v2/models/{name}/versions/{version}/ready",
            Route::Infer(_, None) => "/v2/models/{name}/infer",
            Route::Infer(_, Some(_)) => "/v2/models/{name}/versions/{version}/infer",
        }
    }

    fn method(&self) -> Method {
        match self {
            Route::Infer(..) => Method::POST,
            _ => Method::GET,
        }
    }

    fn model(&self) -> Option<(&str, Option<&str>)> {
        match *self {
            Route::ModelMetadata(n, v) | Route::ModelReady(n, v) | Route::Infer(n, v) => {
                Some((n, v))
            }
            _ => None,
        }
    }
}

fn route(path: &str) -> Option<Route<'_>> {
    let path = path.strip_suffix('/').unwrap_or(path);
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    Some(match segments.as_slice() {
        ["v2"] => Route::ServerMetadata,
        ["v2", "health", "live"] => Route::Live,
        ["v2", "health", "ready"] => Route::Ready,
        ["v2", "models", name] => Route::ModelMetadata(name, None),
        ["v2", "models", name, "ready"] => Route::ModelReady(name, None),
        ["v2", "models", name, "infer"] => Route::Infer(name, None),
        ["v2", "models", name, "versions", v] => Route::ModelMetadata(name, Some(v)),
        ["v2", "models", name, "versions", v, "ready"] => Route::ModelReady(name, Some(v)),
        ["v2", "models", name, "versions", v, "infer"] => Route::Infer(name, Some(v)),
        _ => return None,
    })
}

/// What the audit line says about a request beyond its outcome.
#[derive(Default)]
struct Trace {
    route: Option<&'static str>,
    model: Option<String>,
    version: Option<String>,
}

impl Api {
    pub fn new(models: Arc<ModelRegistry>, audit: Arc<AuditLog>, limits: Limits) -> Api {
        Api {
            models,
            audit,
            limits,
        }
    }

    /// Serves one request. Never fails: every error becomes a response.
    pub async fn handle<B>(
        &self,
        req: Request<B>,
        peer: &Peer,
    ) -> Result<Response<Full<Bytes>>, Infallible>
    where
        B: hyper::body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let started = Instant::now();
        let request_id = uuid::Uuid::new_v4().simple().to_string();
        let method = req.method().clone();
        let mut trace = Trace::default();
        let result =
            match tokio::time::timeout(self.limits.request_timeout, self.dispatch(req, &mut trace))
                .await
            {
                Ok(r) => r,
                Err(_) => Err(ApiError::new(
                    ErrorClass::Timeout,
                    "the request took longer than its deadline",
                )),
            };
        let (mut response, outcome, reason) = match result {
            Ok(resp) => (resp, "ok", None),
            Err(e) => {
                if let Some(detail) = &e.detail {
                    tracing::warn!(request_id = %request_id, class = e.class.outcome(), detail = %detail, "request failed");
                }
                let body = e.body(&request_id);
                let resp = json_response(e.class.status(), body);
                (resp, e.class.outcome(), Some(e.public))
            }
        };
        let headers = response.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&request_id) {
            headers.insert(REQUEST_ID, v);
        }
        security_headers(headers);
        self.audit.record(&AuditEvent {
            kind: "request",
            request_id: Some(&request_id),
            identity: Some(&peer.identity),
            peer: Some(peer.addr.to_string()),
            method: Some(method.as_str()),
            route: trace.route,
            model: trace.model.as_deref(),
            version: trace.version.as_deref(),
            outcome,
            status: Some(response.status().as_u16()),
            reason: reason.as_deref(),
            latency_us: Some(started.elapsed().as_micros().min(u64::MAX as u128) as u64),
        });
        Ok(response)
    }

    async fn dispatch<B>(
        &self,
        req: Request<B>,
        trace: &mut Trace,
    ) -> Result<Response<Full<Bytes>>, ApiError>
    where
        B: hyper::body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let path = req.uri().path().to_string();
        let route =
            route(&path).ok_or_else(|| ApiError::new(ErrorClass::NotFound, "no such route"))?;
        trace.route = Some(route.pattern());
        if let Some((name, version)) = route.model() {
            trace.model = Some(name.to_string());
            trace.version = version.map(str::to_string);
        }
        if req.method() != route.method()
            && !(req.method() == Method::HEAD && route.method() == Method::GET)
        {
            return Err(ApiError::new(
                ErrorClass::MethodNotAllowed,
                format!("use {} on this route", route.method()),
            ));
        }
        match route {
            Route::ServerMetadata => Ok(json_value(&serde_json::json!({
                "name": "warden",
                "version": env!("CARGO_PKG_VERSION"),
                "extensions": ["binary_tensor_data"],
            }))),
            Route::Live => Ok(json_value(&serde_json::json!({"live": true}))),
            Route::Ready => {
                if self.models.all_ready() {
                    Ok(json_value(&serde_json::json!({"ready": true})))
                } else {
                    Err(ApiError::new(ErrorClass::Unavailable, "not ready"))
                }
            }
            Route::ModelMetadata(name, version) => {
                let model = self.resolve(name, version, trace)?;
                Ok(json_value(&model_metadata(
                    &model,
                    &self.models.versions(name),
                )))
            }
            Route::ModelReady(name, version) => {
                let model = self.resolve(name, version, trace)?;
                if model.worker.is_alive() {
                    Ok(json_value(&serde_json::json!({
                        "name": model.name, "version": model.version, "ready": true
                    })))
                } else {
                    Err(ApiError::new(ErrorClass::Unavailable, "model not ready"))
                }
            }
            Route::Infer(name, version) => {
                let model = self.resolve(name, version, trace)?;
                self.infer(req, &model).await
            }
        }
    }

    fn resolve(
        &self,
        name: &str,
        version: Option<&str>,
        trace: &mut Trace,
    ) -> Result<Arc<LoadedModel>, ApiError> {
        let model = self
            .models
            .resolve(name, version)
            .ok_or_else(|| match version {
                Some(_) => ApiError::new(ErrorClass::NotFound, "no such model version"),
                None => ApiError::new(ErrorClass::NotFound, "no such model"),
            })?;
        trace.version = Some(model.version.clone());
        Ok(model)
    }

    async fn infer<B>(
        &self,
        req: Request<B>,
        model: &LoadedModel,
    ) -> Result<Response<Full<Bytes>>, ApiError>
    where
        B: hyper::body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let headers = req.headers();
        if let Some(ct) = headers.get(CONTENT_TYPE) {
            let ct = ct
                .to_str()
                .unwrap_or("")
                .split(';')
                .next()
                .unwrap_or("")
                .trim();
            if !ct.eq_ignore_ascii_case("application/json")
                && !ct.eq_ignore_ascii_case("application/octet-stream")
            {
                return Err(ApiError::new(
                    ErrorClass::UnsupportedMediaType,
                    "send application/json, or application/octet-stream with Inference-Header-Content-Length",
                ));
            }
        }
        if let Some(len) = headers.get(CONTENT_LENGTH) {
            let len: u64 = len
                .to_str()
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| ApiError::new(ErrorClass::Invalid, "bad Content-Length"))?;
            if len > self.limits.max_body_bytes as u64 {
                return Err(too_large(self.limits.max_body_bytes));
            }
        }
        let json_len = match headers.get(INFERENCE_HEADER_CONTENT_LENGTH) {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .ok()
                    .and_then(|s| s.parse::<usize>().ok())
                    .ok_or_else(|| {
                        ApiError::new(ErrorClass::Invalid, "bad Inference-Header-Content-Length")
                    })?,
            ),
        };
        let body = Limited::new(req.into_body(), self.limits.max_body_bytes)
            .collect()
            .await
            .map_err(|e| {
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
                {
                    too_large(self.limits.max_body_bytes)
                } else {
                    ApiError::new(ErrorClass::Invalid, "the request body could not be read")
                }
            })?
            .to_bytes();

        let request = codec::decode_request(&body, json_len)
            .map_err(|e| ApiError::new(ErrorClass::Invalid, e.0))?;
        validate::inputs(&model.signature, &request.inputs)
            .map_err(|e| ApiError::new(ErrorClass::Invalid, e.to_string()))?;
        validate::requested_outputs(&model.signature, &request.outputs)
            .map_err(|e| ApiError::new(ErrorClass::Invalid, e.to_string()))?;

        let names: Vec<String> = request.outputs.iter().map(|o| o.name.clone()).collect();
        model
            .forwarded
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let outputs = model
            .worker
            .infer(request.inputs, names)
            .await
            .map_err(|e| match e {
                WorkerError::InvalidInput { .. } => {
                    ApiError::new(ErrorClass::Invalid, "the model refused the input")
                }
                WorkerError::Unavailable { .. } => ApiError::unavailable(e.to_string()),
                other => ApiError::internal(other.to_string()),
            })?;

        let response_outputs: Vec<codec::ResponseOutput<'_>> = outputs
            .iter()
            .map(|tensor| {
                let asked = request.outputs.iter().find(|o| o.name == tensor.name);
                codec::ResponseOutput {
                    tensor,
                    binary: asked
                        .and_then(|o| o.binary)
                        .unwrap_or(request.binary_output_default),
                }
            })
            .collect();
        let encoded = codec::encode_response(
            &model.name,
            &model.version,
            request.id.as_deref(),
            &response_outputs,
        )
        .map_err(|e| ApiError::internal(format!("encoding the response: {e}")))?;
        let mut resp = Response::new(Full::new(Bytes::from(encoded.body)));
        let h = resp.headers_mut();
        match encoded.json_len {
            Some(n) => {
                h.insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
                h.insert(
                    HeaderName::from_static(INFERENCE_HEADER_CONTENT_LENGTH),
                    HeaderValue::from(n),
                );
            }
            None => {
                h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            }
        }
        Ok(resp)
    }
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        ErrorClass::TooLarge,
        format!("the request body exceeds {limit} bytes"),
    )
}

fn model_metadata(model: &LoadedModel, versions: &[String]) -> serde_json::Value {
    serde_json::json!({
        "name": model.name,
        "versions": versions,
        "platform": "onnxruntime_onnx",
        "inputs": model.signature.inputs,
        "outputs": model.signature.outputs,
    })
}

fn json_value(v: &serde_json::Value) -> Response<Full<Bytes>> {
    match serde_json::to_vec(v) {
        Ok(body) => json_response(StatusCode::OK, body),
        Err(_) => json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            b"{\"error\":\"internal error\"}".to_vec(),
        ),
    }
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn security_headers(h: &mut http::HeaderMap) {
    h.insert(
        http::header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000"),
    );
    h.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    h.insert(
        http::header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route("/v2"), Some(Route::ServerMetadata));
        assert_eq!(route("/v2/"), Some(Route::ServerMetadata));
        assert_eq!(route("/v2/health/live"), Some(Route::Live));
        assert_eq!(
            route("/v2/models/demo/versions/1/infer"),
            Some(Route::Infer("demo", Some("1")))
        );
        assert_eq!(
            route("/v2/models/demo/infer"),
            Some(Route::Infer("demo", None))
        );
        assert_eq!(
            route("/v2/models/demo/ready"),
            Some(Route::ModelReady("demo", None))
        );
        assert_eq!(route("/v2/models"), None);
        assert_eq!(route("/v1/models/demo"), None);
        assert_eq!(route("/v2/models/demo/versions/1/infer/x"), None);
    }
}
