//! Errors at the network edge, collapsed into a few public classes. The body is the protocol's
//! `{"error": "..."}` shape; the detail goes to the client only where it describes the client's
//! own request (a wrong tensor shape), never for internal failures, which the log records.

use http::StatusCode;

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
    /// The model's worker cannot serve now (503).
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
}

impl ApiError {
    pub fn new(class: ErrorClass, public: impl Into<String>) -> ApiError {
        ApiError {
            class,
            public: public.into(),
            detail: None,
        }
    }

    /// An internal failure: the client sees a generic message, the log sees `detail`.
    pub fn internal(detail: impl Into<String>) -> ApiError {
        ApiError {
            class: ErrorClass::Internal,
            public: "internal error".into(),
            detail: Some(detail.into()),
        }
    }

    pub fn unavailable(detail: impl Into<String>) -> ApiError {
        ApiError {
            class: ErrorClass::Unavailable,
            public: "the model is unavailable, try again later".into(),
            detail: Some(detail.into()),
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
