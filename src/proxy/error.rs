//! Every way a request can be refused, mapped to one HTTP status and one
//! JSON-RPC error code in a single exhaustive `match`.
//!
//! The codes are a public contract (README): clients and SIEM rules key on
//! them. Messages are short and generic; they never carry policy text.

use hyper::StatusCode;

/// JSON-RPC code for a message refused by policy.
pub const CODE_DENIED: i32 = -32001;
/// JSON-RPC code for an upstream that could not be reached or failed.
pub const CODE_UPSTREAM_UNAVAILABLE: i32 = -32002;
/// JSON-RPC code for an upstream that presented the wrong identity.
pub const CODE_UPSTREAM_IDENTITY: i32 = -32003;
/// JSON-RPC code for a request body over the configured limit.
pub const CODE_TOO_LARGE: i32 = -32004;
/// JSON-RPC code for a transport-level refusal (bad headers, encoding).
pub const CODE_BAD_TRANSPORT: i32 = -32005;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("parse error: {0}")]
    Parse(String, i32),
    #[error("forbidden by gateway policy")]
    Denied,
    #[error("request body exceeds {0} bytes")]
    TooLarge(usize),
    #[error("reading the request body failed")]
    BodyRead,
    #[error("unsupported content encoding {0:?}")]
    ContentEncoding(String),
    #[error("unsupported content type; expected application/json")]
    ContentType,
    #[error("malformed request: {0}")]
    BadRequest(&'static str),
    #[error("upstream unavailable")]
    UpstreamUnavailable,
    #[error("upstream identity rejected")]
    UpstreamIdentity,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("not found")]
    NotFound,
}

impl ProxyError {
    /// The HTTP status and JSON-RPC code for this refusal.
    pub fn status_and_code(&self) -> (StatusCode, i32) {
        match self {
            ProxyError::Parse(_, code) => (StatusCode::BAD_REQUEST, *code),
            ProxyError::Denied => (StatusCode::FORBIDDEN, CODE_DENIED),
            ProxyError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, CODE_TOO_LARGE),
            ProxyError::BodyRead => (StatusCode::BAD_REQUEST, CODE_BAD_TRANSPORT),
            ProxyError::ContentEncoding(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, CODE_BAD_TRANSPORT)
            }
            ProxyError::ContentType => (StatusCode::UNSUPPORTED_MEDIA_TYPE, CODE_BAD_TRANSPORT),
            ProxyError::BadRequest(_) => (StatusCode::BAD_REQUEST, CODE_BAD_TRANSPORT),
            ProxyError::UpstreamUnavailable => (StatusCode::BAD_GATEWAY, CODE_UPSTREAM_UNAVAILABLE),
            ProxyError::UpstreamIdentity => (StatusCode::BAD_GATEWAY, CODE_UPSTREAM_IDENTITY),
            ProxyError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, CODE_BAD_TRANSPORT),
            ProxyError::NotFound => (StatusCode::NOT_FOUND, CODE_BAD_TRANSPORT),
        }
    }

    /// The audit `reason` for a refusal before or after a decision.
    pub fn audit_reason(&self) -> &'static str {
        match self {
            ProxyError::Parse(..) => "parse_error",
            ProxyError::Denied => "denied",
            ProxyError::TooLarge(_) => "body_too_large",
            ProxyError::BodyRead => "body_read_error",
            ProxyError::ContentEncoding(_) => "content_encoding",
            ProxyError::ContentType => "content_type",
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::UpstreamUnavailable => "upstream_unavailable",
            ProxyError::UpstreamIdentity => "upstream_identity",
            ProxyError::MethodNotAllowed => "method_not_allowed",
            ProxyError::NotFound => "not_found",
        }
    }
}
