//! One request through the stack, top to bottom, in the order numbered in [`super`]: each
//! numbered step below is that step, and nothing runs out of order. The version resolved in
//! step 5 is carried by value through authorization, validation and the worker, so the
//! version the route policy decided on is the one that answers, whatever `activate` or a
//! refresh does meanwhile.

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{Method, Request, Response};
use http_body_util::Full;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use warden_runtime_client::worker::WorkerError;

use super::body::read_request;
use super::catalog::{Catalog, Missing, ServedModel};
use super::error::{ApiError, ErrorClass};
use super::respond::{
    json_response, json_value, model_metadata, rate_headers, respond, security_headers,
};
use super::routes::{Route, route};
use super::validate;
use crate::audit::{AuditEvent, AuditLog};
use crate::gateway::Gateway;
use crate::gateway::abuse::AbuseAction;
use crate::gateway::identity::Identity;
use crate::gateway::limits::RateVerdict;
use crate::listener::tls::CertNames;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Per-connection facts the stack needs.
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
}

/// The inference API over a catalog of model versions.
pub struct Api<C: Catalog> {
    catalog: Arc<C>,
    audit: Arc<AuditLog>,
    limits: Limits,
    gateway: Arc<Gateway>,
    /// Benchmarks only: while set, requests skip the gateway chain (see [`Api::baseline`]).
    #[cfg(feature = "insecure-bench-baseline")]
    chain_off: Arc<std::sync::atomic::AtomicBool>,
}

/// What the audit line says about a request beyond its outcome, filled in as the stack goes.
#[derive(Default)]
struct Trace {
    route: Option<&'static str>,
    model: Option<String>,
    version: Option<String>,
    /// The model name is a loaded one (safe as a metrics label).
    known_model: bool,
    identity: Option<Identity>,
    rule: Option<String>,
    rate: Option<RateVerdict>,
    /// An abuse signal that applied to this request.
    abuse: Option<String>,
}

impl<C: Catalog> Api<C> {
    pub fn new(
        catalog: Arc<C>,
        audit: Arc<AuditLog>,
        limits: Limits,
        gateway: Arc<Gateway>,
    ) -> Self {
        Api {
            catalog,
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

    /// Serves one request. Every error becomes a response; every request leaves one audit
    /// line and its metrics.
    pub async fn handle<B>(&self, req: Request<B>, peer: &Peer) -> Response<Full<Bytes>>
    where
        B: hyper::body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        #[cfg(feature = "insecure-bench-baseline")]
        if self.chain_off.load(std::sync::atomic::Ordering::Relaxed) {
            return self.baseline(req).await;
        }
        let started = Instant::now();
        let request_id = uuid::Uuid::new_v4().simple().to_string();
        let method = req.method().clone();
        let mut trace = Trace::default();
        // 1. Admit: the global concurrency limit, shedding load at once (503).
        let result = match self.gateway.admit() {
            None => Err(ApiError::overloaded()),
            // 2. The deadline (504), around steps 3 to 10.
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
        // 11. The response, its headers, one audit event and the metrics.
        self.finish(result, &request_id, &method, peer, &trace, started)
    }

    /// Steps 3 to 10.
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
        // 3. Route and method (404, 405), before the body is read.
        let path = req.uri().path().to_owned();
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
        // 4. Authenticate (401): a bearer JWT or the client certificate.
        let identity = self
            .gateway
            .authenticate(peer.cert.as_ref(), req.headers())
            .map_err(|e| ApiError::unauthenticated(e.to_string()))?;
        // 5. Resolve the model version, once (404 for any authenticated caller: model names
        //    are not secrets, grants are).
        let target = match route.model() {
            None => None,
            Some((name, version)) => {
                trace.model = Some(name.to_owned());
                trace.version = version.map(str::to_owned);
                let model = self.resolve(name, version)?;
                trace.version = Some(model.version().to_owned());
                trace.known_model = true;
                Some(model)
            }
        };
        // 6. Authorize that very version (403).
        let method = if req.method() == Method::HEAD {
            "GET"
        } else {
            req.method().as_str()
        };
        let decision = self.gateway.authorize(
            &identity,
            method,
            pattern,
            target.as_ref().map(|m| m.name()),
            target.as_ref().map(|m| m.version()),
        );
        trace.rule = Some(decision.rule.clone());
        let identity = trace.identity.insert(identity);
        if !decision.allow {
            return Err(ApiError::forbidden(format!(
                "policy rule {}",
                decision.rule
            )));
        }
        // 7. Rate limits per identity and per tenant (429).
        let verdict = self.gateway.rate(identity);
        let refused = (!verdict.allowed).then(|| verdict.limited_by.unwrap_or("rate"));
        trace.rate = Some(verdict);
        if let Some(by) = refused {
            return Err(ApiError::too_many_requests(by, Vec::new()));
        }
        match (route, target) {
            (Route::ServerMetadata, _) => Ok(json_value(&serde_json::json!({
                "name": "warden",
                "version": env!("CARGO_PKG_VERSION"),
                "extensions": ["binary_tensor_data"],
            }))),
            (Route::Live, _) => Ok(json_value(&serde_json::json!({"live": true}))),
            (Route::Ready, _) => {
                if self.catalog.all_ready() {
                    Ok(json_value(&serde_json::json!({"ready": true})))
                } else {
                    Err(ApiError::new(ErrorClass::Unavailable, "not ready"))
                }
            }
            (Route::ModelMetadata(..), Some(model)) => Ok(json_value(&model_metadata(
                model.as_ref(),
                &self.catalog.versions(model.name()),
            ))),
            (Route::ModelReady(..), Some(model)) => {
                if model.is_alive() {
                    Ok(json_value(&serde_json::json!({
                        "name": model.name(), "version": model.version(), "ready": true
                    })))
                } else {
                    Err(ApiError::new(ErrorClass::Unavailable, "model not ready"))
                }
            }
            (Route::Infer(..), Some(model)) => self.infer(req, model.as_ref(), trace).await,
            (Route::ModelMetadata(..) | Route::ModelReady(..) | Route::Infer(..), None) => Err(
                ApiError::internal("a model route without its resolved version"),
            ),
        }
    }

    /// Steps 8 to 10 of an inference, on the version resolved in step 5.
    async fn infer<B>(
        &self,
        req: Request<B>,
        model: &C::Model,
        trace: &mut Trace,
    ) -> Result<Response<Full<Bytes>>, ApiError>
    where
        B: hyper::body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        // 8. Read and validate (413, 415, 400): the body, strict decoding, the model's
        //    signature, its declared value ranges.
        let request = read_request(req, self.limits.max_body_bytes).await?;
        let invalid =
            |e: validate::ValidationError| ApiError::new(ErrorClass::Invalid, e.to_string());
        validate::inputs(model.signature(), &request.inputs).map_err(invalid)?;
        validate::requested_outputs(model.signature(), &request.outputs).map_err(invalid)?;
        if !model.input_ranges().is_empty() {
            validate::ranges(model.input_ranges(), &request.inputs).map_err(invalid)?;
        }
        // 9. Abuse signals of this identity: throttle (429), deny (403), or labels only.
        let mut names: Vec<String> = request.outputs.iter().map(|o| o.name.clone()).collect();
        if let Some(identity) = &trace.identity
            && let Some(v) = self.gateway.observe_abuse(&identity.id, &request.inputs)
        {
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
                AbuseAction::LabelOnly => {
                    names = label_only(names, self.gateway.label_outputs(), model)?;
                }
            }
        }
        // 10. The circuit breaker (503 while open), then this version's worker.
        if !self.gateway.circuit_admit(model.name(), model.version()) {
            let mut e = ApiError::unavailable("circuit open");
            e.headers
                .push((http::header::RETRY_AFTER, HeaderValue::from_static("1")));
            return Err(e);
        }
        let result = model.infer(request.inputs, names).await;
        let worker_failed =
            matches!(&result, Err(e) if !matches!(e, WorkerError::InvalidInput { .. }));
        self.gateway
            .circuit_record(model.name(), model.version(), worker_failed);
        respond(
            model,
            &request.outputs,
            request.id.as_deref(),
            request.binary_output_default,
            result,
        )
    }

    /// Step 5: the version the request names, or the default one.
    fn resolve(&self, name: &str, version: Option<&str>) -> Result<Arc<C::Model>, ApiError> {
        self.catalog
            .resolve(name, version)
            .map_err(|missing| match missing {
                Missing::Model => ApiError::new(ErrorClass::NotFound, "no such model"),
                Missing::Version => ApiError::new(ErrorClass::NotFound, "no such model version"),
                // Unloaded by a refresh (revoked, policy changed): say so; the reasons are for the
                // operator's log.
                Missing::Withdrawn { reasons } => {
                    let mut e = ApiError::new(
                        ErrorClass::NotFound,
                        "model version withdrawn: it no longer passes admission and is not served",
                    );
                    e.detail = Some(reasons);
                    e
                }
            })
    }

    /// Step 11.
    fn finish(
        &self,
        result: Result<Response<Full<Bytes>>, ApiError>,
        request_id: &str,
        method: &Method,
        peer: &Peer,
        trace: &Trace,
        started: Instant,
    ) -> Response<Full<Bytes>> {
        let (mut response, outcome, reason, extra) = match result {
            Ok(resp) => (resp, "ok", None, Vec::new()),
            Err(e) => {
                if let Some(detail) = &e.detail {
                    tracing::info!(request_id = %request_id, class = e.class.outcome(), detail = %detail, "request refused");
                }
                let resp = json_response(e.class.status(), e.body(request_id));
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
        if let Ok(v) = HeaderValue::from_str(request_id) {
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
            request_id: Some(request_id),
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
        self.gateway.record(
            trace.route.unwrap_or("-"),
            if trace.known_model {
                trace.model.as_deref().unwrap_or("-")
            } else {
                "-"
            },
            outcome,
            latency,
        );
        response
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
        let path = req.uri().path().to_owned();
        let result = async {
            let Some(Route::Infer(name, version)) = route(&path) else {
                return Err(ApiError::new(ErrorClass::NotFound, "no such route"));
            };
            let model = self.resolve(name, version)?;
            let request = read_request(req, self.limits.max_body_bytes).await?;
            let names = request.outputs.iter().map(|o| o.name.clone()).collect();
            let result = model.infer(request.inputs, names).await;
            respond(
                model.as_ref(),
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

/// The outputs a flagged identity still gets: the label outputs among those asked for (all
/// of them when none were asked for) that the model has; refused when none is left.
fn label_only<M: ServedModel>(
    asked: Vec<String>,
    labels: &[String],
    model: &M,
) -> Result<Vec<String>, ApiError> {
    let mut names = if asked.is_empty() {
        labels.to_vec()
    } else {
        asked.into_iter().filter(|n| labels.contains(n)).collect()
    };
    names.retain(|n| model.signature().outputs.iter().any(|o| &o.name == n));
    if names.is_empty() {
        return Err(ApiError::forbidden(
            "abuse signal: no label output to return",
        ));
    }
    Ok(names)
}
