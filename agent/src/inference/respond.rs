//! Answers: the worker's tensors as the protocol's response (JSON, or the binary tensor
//! extension), metadata, and the headers every answer carries.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;
use warden_runtime_client::worker::WorkerError;

use super::INFERENCE_HEADER_CONTENT_LENGTH;
use super::catalog::ServedModel;
use super::codec;
use super::error::{ApiError, ErrorClass};
use crate::gateway::limits::RateVerdict;

/// The worker's answer as an HTTP response.
pub(super) fn respond<M: ServedModel>(
    model: &M,
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
    let encoded = codec::encode_response(model.name(), model.version(), id, &response_outputs)
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

pub(super) fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        ErrorClass::TooLarge,
        format!("the request body exceeds {limit} bytes"),
    )
}

pub(super) fn model_metadata<M: ServedModel>(model: &M, versions: &[String]) -> serde_json::Value {
    serde_json::json!({
        "name": model.name(),
        "versions": versions,
        "platform": model.platform(),
        "inputs": model.signature().inputs,
        "outputs": model.signature().outputs,
    })
}

pub(super) fn json_value(v: &serde_json::Value) -> Response<Full<Bytes>> {
    match serde_json::to_vec(v) {
        Ok(body) => json_response(StatusCode::OK, body),
        Err(_) => json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            b"{\"error\":\"internal error\"}".to_vec(),
        ),
    }
}

pub(super) fn json_response(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` on every rate-checked answer,
/// and `Retry-After` on a refusal.
pub(super) fn rate_headers(h: &mut http::HeaderMap, v: &RateVerdict) {
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

pub(super) fn security_headers(h: &mut http::HeaderMap) {
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
