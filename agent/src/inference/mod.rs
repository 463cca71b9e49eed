//! The Open Inference Protocol v2 (KServe v2 / Triton REST) over HTTP: health, server and
//! model metadata, readiness and inference, behind the gateway (`crate::gateway`). Every infer
//! request is decoded strictly and validated against the model's declared signature before
//! anything reaches its worker.
//!
//! The order for one request, each step refusing early (the layer order of the gateway):
//! 1. concurrency limit and load shedding: a permit or a quick 503, never a queue;
//! 2. the request deadline (504) around everything below;
//! 3. route and method (404 / 405) from the fixed route table, before the body is read;
//! 4. authn: bearer JWT or client certificate → identity (401);
//! 5. authz: `routes.rego` on {identity, tenant, method, route, model, version} (403);
//! 6. rate limits per identity and per tenant (429 with `Retry-After` and `RateLimit-*`);
//! 7. validation: body size (413), content type (415), strict decoding and the model signature
//!    and declared value ranges (400);
//! 8. the handler: the circuit breaker (503 while open), then the worker (503 when it is down);
//! 9. the response, security headers, one audit event and the metrics — never the payload.

pub mod codec;
pub mod error;
pub mod validate;

use crate::audit::{AuditEvent, AuditLog};
use crate::gateway::Gateway;
use crate::gateway::identity::Identity;
use crate::gateway::limits::RateVerdict;
use crate::listener::tls::CertNames;
use crate::models::{LoadedModel, ModelRegistry};
use bytes::Bytes;
use error::{ApiError, ErrorClass};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use warden_runtime_client::worker::WorkerError;

/// The binary tensor extension's header.
pub const INFERENCE_HEADER_CONTENT_LENGTH: &str = "inference-header-content-length";
const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Per-connection facts the handler needs.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The certificate's name for the audit trail (before authentication).
    pub identity: String,
    /// The verified client certificate's names; `None` without one.
    pub cert: Option<CertNames>,
    pub addr: SocketAddr,
}

/// Limits applied to every request.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    /// Declared value ranges per (model, version), per input.
    pub input_ranges: InputRanges,
}

/// `(model, version)` → input name → bounds.
pub type InputRanges = std::collections::HashMap<
    (String, String),
    std::collections::BTreeMap<String, crate::config::InputRange>,
>;

/// The application behind the listener.
pub struct Api {
    models: Arc<ModelRegistry>,
    audit: Arc<AuditLog>,
    limits: Limits,
    gateway: Arc<Gateway>,
    /// Benchmarks only: while set, requests skip the gateway chain (see [`Api::baseline`]).
    #[cfg(feature = "insecure-bench-baseline")]
    chain_off: Arc<std::sync::atomic::AtomicBool>,
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
    /// The model name is a configured one (safe as a metrics label).
    known_model: bool,
    identity: Option<Identity>,
    rule: Option<String>,
    rate: Option<RateVerdict>,
    /// An abuse signal that applied to this request, for the audit.
    abuse: Option<String>,
}

impl Api {
    pub fn new(
        models: Arc<ModelRegistry>,
        audit: Arc<AuditLog>,
        limits: Limits,
        gateway: Arc<Gateway>,
    ) -> Api {
        Api {
            models,
            audit,
            limits,
            gateway,
            #[cfg(feature = "insecure-bench-baseline")]
            chain_off: Arc::default(),
        }
    }

    /// Benchmarks only: the switch that turns the gateway chain off for later requests.
    #[cfg(feature = "insecure-bench-baseline")]
    pub fn insecure_bench_chain_switch(&self) -> Arc<std::sync::atomic::AtomicBool> {
        self.chain_off.clone()
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
        #[cfg(feature = "insecure-bench-baseline")]
        if self.chain_off.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(self.baseline(req).await);
        }
        let started = Instant::now();
        let request_id = uuid::Uuid::new_v4().simple().to_string();
        let method = req.method().clone();
        let mut trace = Trace::default();
        // 1. Concurrency limit and load shedding.
        let result = match self.gateway.admit() {
            None => Err(ApiError::overloaded()),
            // 2. The deadline, around every later stage.
            Some(_permit) => match tokio::time::timeout(
                self.limits.request_timeout,
                self.chain(req, peer, &mut trace),
            )
            .await
            {
                Ok(r) => r,
                Err(_) => Err(ApiError::new(
                    ErrorClass::Timeout,
                    "the request took longer than its deadline",
                )),
            },
        };
        // 9. Response, headers, audit and metrics.
        let (mut response, outcome, reason, extra) = match result {
            Ok(resp) => (resp, "ok", None, Vec::new()),
            Err(e) => {
                if let Some(detail) = &e.detail {
                    tracing::info!(request_id = %request_id, class = e.class.outcome(), detail = %detail, "request refused");
                }
                let body = e.body(&request_id);
                let resp = json_response(e.class.status(), body);
                let reason = match e.class {
                    // The fixed public text says nothing; the audit keeps the (payload-free)
                    // cause.
                    ErrorClass::Unauthenticated
                    | ErrorClass::Forbidden
                    | ErrorClass::TooManyRequests
                    | ErrorClass::Unavailable => {
                        e.detail.clone().or_else(|| Some(e.public.clone()))
                    }
                    _ => Some(e.public.clone()),
                };
                (resp, e.class.outcome(), reason, e.headers)
            }
        };
        let headers = response.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&request_id) {
            headers.insert(REQUEST_ID, v);
        }
        if let Some(rate) = &trace.rate {
            rate_headers(headers, rate);
        }
        for (k, v) in extra {
            headers.insert(k, v);
        }
        security_headers(headers);
        let latency = started.elapsed();
        let identity = trace.identity.as_ref();
        self.audit.record(&AuditEvent {
            kind: "request",
            request_id: Some(&request_id),
            identity: Some(identity.map_or(peer.identity.as_str(), |i| i.id.as_str())),
            tenant: identity.map(|i| i.tenant.as_str()),
            peer: Some(peer.addr.to_string()),
            method: Some(method.as_str()),
            route: trace.route,
            model: trace.model.as_deref(),
            version: trace.version.as_deref(),
            outcome,
            status: Some(response.status().as_u16()),
            reason: trace.abuse.as_deref().or(reason.as_deref()),
            rule: trace.rule.as_deref(),
            latency_us: Some(latency.as_micros().min(u64::MAX as u128) as u64),
        });
        self.gateway.metrics.request(
            trace.route.unwrap_or("-"),
            if trace.known_model {
                trace.model.as_deref().unwrap_or("-")
            } else {
                "-"
            },
            outcome,
            latency,
        );
        Ok(response)
    }

    /// Stages 3 to 8.
    async fn chain<B>(
        &self,
        req: Request<B>,
        peer: &Peer,
        trace: &mut Trace,
    ) -> Result<Response<Full<Bytes>>, ApiError>
    where
        B: hyper::body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        // 3. Route and method.
        let path = req.uri().path().to_string();
        let route =
            route(&path).ok_or_else(|| ApiError::new(ErrorClass::NotFound, "no such route"))?;
        let pattern = route.pattern();
        trace.route = Some(pattern);
        if req.method() != route.method()
            && !(req.method() == Method::HEAD && route.method() == Method::GET)
        {
            return Err(ApiError::new(
                ErrorClass::MethodNotAllowed,
                format!("use {} on this route", route.method()),
            ));
        }
        // 4. Authn.
        let identity = self
            .gateway
            .authenticate(peer.cert.as_ref(), req.headers())
            .map_err(|e| ApiError::unauthenticated(e.to_string()))?;
        // The model version that would serve the request, for the policy and the audit. A model
        // or version that does not exist is a 404 for any authenticated caller (model names
        // are not secrets; grants are); the policy always decides on a concrete version.
        let target = match route.model() {
            None => None,
            Some((name, version)) => {
                trace.model = Some(name.to_string());
                trace.version = version.map(str::to_string);
                let model = self.resolve(name, version, trace)?;
                trace.known_model = true;
                Some(model)
            }
        };
        // 5. Authz.
        let method = if req.method() == Method::HEAD {
            "GET"
        } else {
            req.method().as_str()
        };
        let decision = self.gateway.authorize(
            &identity,
            method,
            pattern,
            target.as_ref().map(|m| m.name.as_str()),
            target.as_ref().map(|m| m.version.as_str()),
        );
        trace.identity = Some(identity);
        trace.rule = Some(decision.rule.clone());
        if !decision.allow {
            return Err(ApiError::forbidden(format!(
                "policy rule {}",
                decision.rule
            )));
        }
        // 6. Rate limits.
        if let Some(identity) = &trace.identity {
            let verdict = self.gateway.rate(identity);
            let refused = !verdict.allowed;
            let by = verdict.limited_by.unwrap_or("rate");
            trace.rate = Some(verdict);
            if refused {
                return Err(ApiError::too_many_requests(by, Vec::new()));
            }
        }
        // 7 and 8. Validation and the handler.
        self.dispatch(req, route, trace).await
    }

    async fn dispatch<B>(
        &self,
        req: Request<B>,
        route: Route<'_>,
        trace: &mut Trace,
    ) -> Result<Response<Full<Bytes>>, ApiError>
    where
        B: hyper::body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
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
                self.infer(req, &model, trace).await
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
                // Unloaded by a refresh (revoked, policy changed): say so; the reasons are
                // for the operator's log.
                Some(v) => match self.models.withdrawn(name, v) {
                    Some(reasons) => {
                        let mut e = ApiError::new(
                            ErrorClass::NotFound,
                            "model version withdrawn: it no longer passes admission and is not served",
                        );
                        e.detail = Some(reasons);
                        e
                    }
                    None => ApiError::new(ErrorClass::NotFound, "no such model version"),
                },
                None => ApiError::new(ErrorClass::NotFound, "no such model"),
            })?;
        trace.version = Some(model.version.clone());
        Ok(model)
    }

    async fn infer<B>(
        &self,
        req: Request<B>,
        model: &LoadedModel,
        trace: &mut Trace,
    ) -> Result<Response<Full<Bytes>>, ApiError>
    where
        B: hyper::body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let request = self.read_request(req).await?;
        validate::inputs(&model.signature, &request.inputs)
            .map_err(|e| ApiError::new(ErrorClass::Invalid, e.to_string()))?;
        validate::requested_outputs(&model.signature, &request.outputs)
            .map_err(|e| ApiError::new(ErrorClass::Invalid, e.to_string()))?;
        // Configured versions' ranges, else those the loaded version carries (pushed ones).
        let ranges = self
            .limits
            .input_ranges
            .get(&(model.name.clone(), model.version.clone()))
            .or(Some(&model.input_ranges).filter(|r| !r.is_empty()));
        if let Some(ranges) = ranges {
            validate::ranges(ranges, &request.inputs)
                .map_err(|e| ApiError::new(ErrorClass::Invalid, e.to_string()))?;
        }

        // Abuse signals for this identity: throttle, reduce the answer to labels, or deny.
        let mut label_only = false;
        if let Some(identity) = &trace.identity
            && let Some(v) =
                self.gateway
                    .abuse
                    .observe(&identity.id, &request.inputs, Instant::now())
        {
            if v.newly_flagged {
                self.gateway.metrics.abuse(v.signal);
                tracing::warn!(identity = %identity.id, signal = v.signal, "abuse signal: identity flagged");
            }
            use crate::gateway::abuse::AbuseAction;
            let action = match v.action {
                AbuseAction::Throttle => "throttle",
                AbuseAction::LabelOnly => "label_only",
                AbuseAction::Deny => "deny",
            };
            trace.abuse = Some(format!("abuse signal {} ({action})", v.signal));
            match v.action {
                AbuseAction::Throttle => {
                    return Err(ApiError::too_many_requests(
                        &format!("abuse signal {}", v.signal),
                        vec![(http::header::RETRY_AFTER, HeaderValue::from_static("60"))],
                    ));
                }
                AbuseAction::Deny => {
                    return Err(ApiError::forbidden(format!("abuse signal {}", v.signal)));
                }
                AbuseAction::LabelOnly => label_only = true,
            }
        }
        let mut names: Vec<String> = request.outputs.iter().map(|o| o.name.clone()).collect();
        if label_only {
            let keep = self.gateway.abuse.label_outputs();
            names = if names.is_empty() {
                keep.to_vec()
            } else {
                names.into_iter().filter(|n| keep.contains(n)).collect()
            };
            names.retain(|n| model.signature.outputs.iter().any(|o| &o.name == n));
            if names.is_empty() {
                return Err(ApiError::forbidden(
                    "abuse signal: no label output to return",
                ));
            }
        }
        // 8. The circuit breaker, then the worker.
        let circuits = &self.gateway.circuits;
        if !circuits.admit(&model.name, &model.version, Instant::now()) {
            self.gateway.metrics.circuit_open();
            let mut e = ApiError::unavailable("circuit open");
            e.headers
                .push((http::header::RETRY_AFTER, HeaderValue::from_static("1")));
            return Err(e);
        }
        model
            .forwarded
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let result = model.worker.infer(request.inputs, names).await;
        let worker_failed =
            matches!(&result, Err(e) if !matches!(e, WorkerError::InvalidInput { .. }));
        circuits.record(&model.name, &model.version, worker_failed, Instant::now());
        respond(
            model,
            &request.outputs,
            request.id.as_deref(),
            request.binary_output_default,
            result,
        )
    }

    /// Stage 7's first half, which every server must do: content type, size, the body, strict
    /// decoding.
    async fn read_request<B>(&self, req: Request<B>) -> Result<codec::InferRequest, ApiError>
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

        codec::decode_request(&body, json_len).map_err(|e| ApiError::new(ErrorClass::Invalid, e.0))
    }

    /// The benchmark baseline: the same listener, connection handling, routing, body reading,
    /// decoding, worker hop and encoding, with the whole gateway chain left out (no load
    /// shedding, deadline, authn, authz, rate limits, signature and range validation, abuse
    /// signals, circuit breaker, audit or metrics). Only built with the
    /// `insecure-bench-baseline` feature, which nothing that serves enables.
    #[cfg(feature = "insecure-bench-baseline")]
    async fn baseline<B>(&self, req: Request<B>) -> Response<Full<Bytes>>
    where
        B: hyper::body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let path = req.uri().path().to_string();
        let result = async {
            let Some(Route::Infer(name, version)) = route(&path) else {
                return Err(ApiError::new(ErrorClass::NotFound, "no such route"));
            };
            let model = self
                .models
                .resolve(name, version)
                .ok_or_else(|| ApiError::new(ErrorClass::NotFound, "no such model"))?;
            let request = self.read_request(req).await?;
            let names = request.outputs.iter().map(|o| o.name.clone()).collect();
            let result = model.worker.infer(request.inputs, names).await;
            respond(
                &model,
                &request.outputs,
                request.id.as_deref(),
                request.binary_output_default,
                result,
            )
        }
        .await;
        result.unwrap_or_else(|e| json_response(e.class.status(), e.body("-")))
    }
}

/// The worker's answer as an HTTP response.
fn respond(
    model: &LoadedModel,
    asked: &[codec::RequestedOutput],
    id: Option<&str>,
    binary_default: bool,
    result: Result<Vec<warden_runtime_client::tensor::Tensor>, WorkerError>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let outputs = result.map_err(|e| match e {
        WorkerError::InvalidInput { .. } => {
            ApiError::new(ErrorClass::Invalid, "the model refused the input")
        }
        WorkerError::Unavailable { .. } => ApiError::unavailable(e.to_string()),
        other => ApiError::internal(other.to_string()),
    })?;

    let response_outputs: Vec<codec::ResponseOutput<'_>> = outputs
        .iter()
        .map(|tensor| {
            let asked = asked.iter().find(|o| o.name == tensor.name);
            codec::ResponseOutput {
                tensor,
                binary: asked.and_then(|o| o.binary).unwrap_or(binary_default),
            }
        })
        .collect();
    let encoded = codec::encode_response(&model.name, &model.version, id, &response_outputs)
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
        "platform": model.platform,
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

/// `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` on every rate-checked answer,
/// and `Retry-After` on a refusal.
fn rate_headers(h: &mut http::HeaderMap, v: &RateVerdict) {
    h.insert(
        HeaderName::from_static("ratelimit-limit"),
        HeaderValue::from(v.limit),
    );
    h.insert(
        HeaderName::from_static("ratelimit-remaining"),
        HeaderValue::from(v.remaining),
    );
    h.insert(
        HeaderName::from_static("ratelimit-reset"),
        HeaderValue::from(v.reset_s),
    );
    if !v.allowed {
        h.insert(
            http::header::RETRY_AFTER,
            HeaderValue::from(v.retry_after_s),
        );
    }
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
