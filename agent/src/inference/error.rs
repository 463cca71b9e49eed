//! Errors at the network edge, collapsed into a few public classes. The body is the protocol's
//! `{"error": "..."}` shape; the detail goes to the client only where it describes the client's
//! own request (a wrong tensor shape), never for internal failures, which the log records.

use http::StatusCode;
use http::header::{HeaderName, HeaderValue};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The request is malformed or does not fit the model (400).
    Invalid,
    /// No such model, version or route (404).
    NotFound,
    /// The route exists, the method does not (405).
    MethodNotAllowed,
    /// Body larger than the configured limit (413).
    TooLarge,
    /// Content type not accepted (415).
    UnsupportedMediaType,
    /// No identity: no usable certificate identity and no valid bearer token (401).
    Unauthenticated,
    /// The route policy denies (403).
    Forbidden,
    /// A rate limit or quota refuses (429, with `Retry-After`).
    TooManyRequests,
    /// The model's worker cannot serve now, its circuit is open, or the gateway sheds load
    /// (503).
    Unavailable,
    /// The request took longer than its deadline (504).
    Timeout,
    /// Anything else; details in the log only (500).
    Internal,
}

impl ErrorClass {
    pub fn status(self) -> StatusCode {
        match self {
            ErrorClass::Invalid => StatusCode::BAD_REQUEST,
            ErrorClass::NotFound => StatusCode::NOT_FOUND,
            ErrorClass::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorClass::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorClass::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorClass::Unauthenticated => StatusCode::UNAUTHORIZED,
            ErrorClass::Forbidden => StatusCode::FORBIDDEN,
            ErrorClass::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            ErrorClass::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorClass::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorClass::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The audit trail's outcome word.
    pub fn outcome(self) -> &'static str {
        match self {
            ErrorClass::Invalid => "invalid",
            ErrorClass::NotFound => "not_found",
            ErrorClass::MethodNotAllowed => "method_not_allowed",
            ErrorClass::TooLarge => "too_large",
            ErrorClass::UnsupportedMediaType => "unsupported_media_type",
            ErrorClass::Unauthenticated => "unauthenticated",
            ErrorClass::Forbidden => "forbidden",
            ErrorClass::TooManyRequests => "too_many_requests",
            ErrorClass::Unavailable => "unavailable",
            ErrorClass::Timeout => "timeout",
            ErrorClass::Internal => "internal",
        }
    }
}

/// A refused request.
#[derive(Debug)]
pub struct ApiError {
    pub class: ErrorClass,
    /// Safe to show the client.
    pub public: String,
    /// For the operator's log only (may name files, worker pids, engine messages).
    pub detail: Option<String>,
    /// Headers the class carries (`WWW-Authenticate`, `Retry-After`, `RateLimit-*`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl ApiError {
    pub fn new(class: ErrorClass, public: impl Into<String>) -> ApiError {
        ApiError {
            class,
            public: public.into(),
            detail: None,
            headers: Vec::new(),
        }
    }

    /// The fixed answers of the gateway's classes: the same text whatever the cause, so that
    /// nothing about keys, policies or limits leaks; `detail` is for the log and the audit.
    pub fn unauthenticated(detail: impl Into<String>) -> ApiError {
        ApiError {
            class: ErrorClass::Unauthenticated,
            public: "authentication required".into(),
            detail: Some(detail.into()),
            headers: vec![(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"warden\""),
            )],
        }
    }

    pub fn forbidden(rule: impl Into<String>) -> ApiError {
        ApiError {
            class: ErrorClass::Forbidden,
            public: "forbidden".into(),
            detail: Some(rule.into()),
            headers: Vec::new(),
        }
    }

    pub fn too_many_requests(by: &str, headers: Vec<(HeaderName, HeaderValue)>) -> ApiError {
        ApiError {
            class: ErrorClass::TooManyRequests,
            public: "too many requests, retry later".into(),
            detail: Some(format!("{by} rate limit")),
            headers,
        }
    }

    /// Load shedding: too many requests in flight.
    pub fn overloaded() -> ApiError {
        ApiError {
            class: ErrorClass::Unavailable,
            public: "the server is busy, try again later".into(),
            detail: Some("load shed: in-flight limit reached".into()),
            headers: vec![(http::header::RETRY_AFTER, HeaderValue::from_static("1"))],
        }
    }

    /// An internal failure: the client sees a generic message, the log sees `detail`.
    pub fn internal(detail: impl Into<String>) -> ApiError {
        ApiError {
            class: ErrorClass::Internal,
            public: "internal error".into(),
            detail: Some(detail.into()),
            headers: Vec::new(),
        }
    }

    pub fn unavailable(detail: impl Into<String>) -> ApiError {
        ApiError {
            class: ErrorClass::Unavailable,
            public: "the model is unavailable, try again later".into(),
            detail: Some(detail.into()),
            headers: Vec::new(),
        }
    }

    /// The JSON body: `{"error": "<message> (request <id>)"}`.
    pub fn body(&self, request_id: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "error": format!("{} (request {request_id})", self.public)
        }))
        .unwrap_or_else(|_| b"{\"error\":\"internal error\"}".to_vec())
    }
}
