//! The Open Inference Protocol v2 (KServe v2 / Triton REST) over HTTP: health, server and
//! model metadata, readiness and inference, behind the gateway ([`crate::gateway`]). Every
//! infer request is decoded strictly and validated against the model's declared signature
//! before anything reaches its worker.
//!
//! # The order of one request
//!
//! Numbered here once; [`stack`] follows it step by step, and each step refuses early:
//!
//! 1. **Admit**: the global concurrency limit; over it, a quick 503 (load shedding, no queue).
//! 2. **Deadline**: steps 3 to 10 run under the request deadline (504).
//! 3. **Route and method** (404, 405), from the fixed route table, before the body is read.
//! 4. **Authenticate** (401): a bearer JWT, or the client certificate's identity.
//! 5. **Resolve** the model version the route names (or the model's default version), once
//!    (404; a withdrawn version says so).
//! 6. **Authorize** that version: `routes.rego` on {identity, tenant, method, route, model,
//!    version} (403, default deny).
//! 7. **Rate limits** per identity and per tenant (429 with `Retry-After` and `RateLimit-*`).
//! 8. **Read and validate** (413, 415, 400): body size and type, strict decoding, the model's
//!    signature and declared value ranges.
//! 9. **Abuse signals** of the identity: throttle (429), deny (403), or answer with labels only.
//! 10. **Circuit breaker** (503 while open), then the worker of the version resolved in step 5
//!     (503 when it is down).
//! 11. **Respond**: the answer or the error class, security headers, one audit event and the
//!     metrics, whatever step ended the request; never the payload.
//!
//! Server-wide routes and model metadata and readiness end after step 7 with their answer.
//!
//! # Files
//!
//! - [`stack`]: the steps above ([`Api`]).
//! - [`catalog`]: the seam to what serves models ([`Catalog`], [`ServedModel`]), so that each
//!   step can be tested in process without workers.
//! - [`routes`]: the route table. [`body`]: reading the request. [`codec`]: the
//!   JSON and binary tensor encodings. [`validate`]: signature and value ranges.
//!   [`respond`]: answers and headers. [`error`]: the public error classes.

mod body;
pub mod catalog;
pub mod codec;
pub mod error;
mod respond;
pub mod routes;
pub mod stack;
pub mod validate;

#[cfg(test)]
mod tests;

pub use catalog::{Catalog, Missing, ServedModel};
pub use stack::{Api, Limits, Peer};

/// The binary tensor extension's header.
pub const INFERENCE_HEADER_CONTENT_LENGTH: &str = "inference-header-content-length";
