//! Reading an inference request: the content type, the declared and the actual size, and the
//! body, decoded strictly (JSON, or JSON plus binary tensors).

use bytes::Bytes;
use http::Request;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http_body_util::{BodyExt, Limited};

use super::INFERENCE_HEADER_CONTENT_LENGTH;
use super::codec;
use super::error::{ApiError, ErrorClass};
use super::respond::too_large;

/// Content type, size, the body (never more than `max_body_bytes` of it), strict decoding.
pub(super) async fn read_request<B>(
    req: Request<B>,
    max_body_bytes: usize,
) -> Result<codec::InferRequest, ApiError>
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
        if len > max_body_bytes as u64 {
            return Err(too_large(max_body_bytes));
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
    let body = Limited::new(req.into_body(), max_body_bytes)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                too_large(max_body_bytes)
            } else {
                ApiError::new(ErrorClass::Invalid, "the request body could not be read")
            }
        })?
        .to_bytes();

    codec::decode_request(&body, json_len).map_err(|e| ApiError::new(ErrorClass::Invalid, e.0))
}
