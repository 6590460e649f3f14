//! Every way a request can be refused, mapped to one HTTP status and one
//! JSON-RPC error code in a single exhaustive `match`.
//!
//! The codes are a public contract (README): clients and SIEM rules key on
//! them. They sit in -32060..-32071, clear of the codes MCP and its SDKs
//! already use (-32000 connection closed, -32001 request timeout, -32002
//! resource not found, -32020..-32022, -32042). Messages are short and
//! generic; they never carry policy text.

use hyper::StatusCode;

use crate::audit::Reason;
use crate::limits::Limited;
use crate::proxy::session::SessionRefusal;

/// JSON-RPC code for a message refused by policy.
pub const CODE_DENIED: i32 = -32060;
/// JSON-RPC code for an upstream that could not be reached or failed.
pub const CODE_UPSTREAM_UNAVAILABLE: i32 = -32061;
/// JSON-RPC code for an upstream that presented the wrong identity.
pub const CODE_UPSTREAM_IDENTITY: i32 = -32062;
/// JSON-RPC code for a request body over the configured limit.
pub const CODE_TOO_LARGE: i32 = -32063;
/// JSON-RPC code for a transport-level refusal (bad headers, encoding).
pub const CODE_BAD_TRANSPORT: i32 = -32064;
/// JSON-RPC code for a session id this caller may not use (HTTP 404).
pub const CODE_SESSION: i32 = -32065;
/// JSON-RPC code for a bearer token that is missing or fails verification
/// (HTTP 401): an end-user token, or a JWT-SVID caller credential.
pub const CODE_USER_TOKEN: i32 = -32066;
/// JSON-RPC code for an upstream that did not answer in time: no
/// connection within `connect_timeout_seconds` or no response head within
/// `request_timeout_seconds` (HTTP 504).
pub const CODE_UPSTREAM_TIMEOUT: i32 = -32067;
/// JSON-RPC code for a call refused because its audit record cannot be
/// written (`audit.on_failure: refuse`, HTTP 503); served again once audit
/// writes succeed.
pub const CODE_AUDIT_UNAVAILABLE: i32 = -32068;
/// JSON-RPC code for an `initialize` refused because no new session can
/// start: the session table is full (HTTP 503) or the caller already holds
/// `limits.max_sessions_per_identity` sessions (HTTP 429). Nothing reaches
/// the upstream.
pub const CODE_SESSION_LIMIT: i32 = -32069;
/// JSON-RPC code for a call to a tool or prompt whose definition is
/// unpinned or differs from its pin, on an upstream with `pins: enforce`
/// (HTTP 403 alone, 200 as the answer to a request). Nothing reaches the
/// upstream.
pub const CODE_PIN_MISMATCH: i32 = -32070;
/// JSON-RPC code for a request or tool call refused by a per-identity
/// limit (`limits.per_identity`): its rate used up, or too many requests
/// in flight or streams open (HTTP 429 with `Retry-After`); or too many
/// identities limited at once (HTTP 503). Nothing reaches the upstream.
pub const CODE_LIMITED: i32 = -32071;
/// MCP 2026-07-28: an `Mcp-*` header disagrees with the body.
pub const CODE_HEADER_MISMATCH: i32 = -32020;
/// MCP 2026-07-28: unsupported protocol version.
pub const CODE_UNSUPPORTED_VERSION: i32 = -32022;
/// JSON-RPC 2.0: invalid request.
pub const CODE_INVALID_REQUEST: i32 = -32600;
/// JSON-RPC "method not found": a method the aggregated endpoint does not offer.
pub const CODE_METHOD_NOT_FOUND: i32 = -32601;
/// JSON-RPC "invalid params": a tool name on the aggregated endpoint that
/// names no aggregated upstream.
pub const CODE_INVALID_PARAMS: i32 = -32602;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("parse error: {0}")]
    Parse(String, i32),
    #[error("forbidden by gateway policy")]
    Denied,
    /// `pins: enforce`: the definition called is unpinned or changed.
    #[error("refused: the definition is not the one pinned for this upstream")]
    PinMismatch,
    #[error("request body exceeds {0} bytes")]
    TooLarge(usize),
    #[error("reading the request body failed")]
    BodyRead,
    #[error("the request body did not arrive in time")]
    BodyTimeout,
    #[error("unsupported content encoding {0:?}")]
    ContentEncoding(String),
    #[error("unsupported transfer coding {0:?}")]
    TransferEncoding(String),
    #[error("unsupported content type; expected application/json")]
    ContentType,
    #[error("malformed request: {0}")]
    BadRequest(&'static str),
    #[error("upstream unavailable")]
    UpstreamUnavailable,
    #[error("upstream identity rejected")]
    UpstreamIdentity,
    #[error("upstream timed out")]
    UpstreamTimeout,
    #[error("upstream stream idle too long")]
    UpstreamStreamIdle,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("not found")]
    NotFound,
    #[error("no such upstream")]
    UnknownUpstream,
    #[error("unsupported MCP protocol version {0:?}")]
    UnsupportedVersion(String),
    #[error("{0} header does not match the request body")]
    HeaderMismatch(&'static str),
    #[error("{0} header appears more than once")]
    DuplicateHeader(&'static str),
    #[error("{}", .0.message())]
    Session(SessionRefusal),
    #[error("JSON-RPC batches are not allowed in this protocol version")]
    BatchNotAllowed,
    #[error("user token refused: {0}")]
    UserToken(String),
    /// Loopback listener: a `Host` that is not a loopback name or IP (DNS
    /// rebinding).
    #[error("Host is not a loopback name or IP; this listener serves local clients only")]
    ForeignHost,
    /// Loopback listener: a browser `Origin` that is not loopback.
    #[error("Origin is not a loopback origin; cross-origin requests are refused")]
    ForeignOrigin,
    /// A connection without a client certificate whose request carries no
    /// valid JWT-SVID (`listener.jwt_svid_callers`).
    #[error("caller token refused: {0}")]
    CallerToken(String),
    #[error("unknown tool: the aggregated endpoint names tools <upstream>__<tool>")]
    AggregateUnknownTool,
    #[error("method not offered on the aggregated endpoint")]
    AggregateMethod,
    #[error("unknown prompt: the aggregated endpoint names prompts <upstream>__<prompt>")]
    AggregateUnknownPrompt,
    #[error(
        "unknown resource: the aggregated endpoint names resources mcp-gateway://<upstream>/<percent-encoded uri>"
    )]
    AggregateUnknownResource,
    /// A per-identity limit (`limits.per_identity`).
    #[error("{0}")]
    Limited(Limited),
    /// `audit.on_failure: refuse` while audit writes fail.
    #[error("audit log unavailable: the call cannot be audited, so it is not served; retry later")]
    AuditUnavailable,
}

impl ProxyError {
    /// The HTTP status and JSON-RPC code for this refusal.
    pub fn status_and_code(&self) -> (StatusCode, i32) {
        match self {
            ProxyError::Parse(_, code) => (StatusCode::BAD_REQUEST, *code),
            ProxyError::Denied => (StatusCode::FORBIDDEN, CODE_DENIED),
            ProxyError::PinMismatch => (StatusCode::FORBIDDEN, CODE_PIN_MISMATCH),
            ProxyError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, CODE_TOO_LARGE),
            ProxyError::BodyRead => (StatusCode::BAD_REQUEST, CODE_BAD_TRANSPORT),
            ProxyError::BodyTimeout => (StatusCode::REQUEST_TIMEOUT, CODE_BAD_TRANSPORT),
            ProxyError::ContentEncoding(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, CODE_BAD_TRANSPORT)
            }
            ProxyError::ContentType => (StatusCode::UNSUPPORTED_MEDIA_TYPE, CODE_BAD_TRANSPORT),
            ProxyError::TransferEncoding(_) => (StatusCode::NOT_IMPLEMENTED, CODE_BAD_TRANSPORT),
            ProxyError::BadRequest(_) => (StatusCode::BAD_REQUEST, CODE_BAD_TRANSPORT),
            ProxyError::UpstreamUnavailable => (StatusCode::BAD_GATEWAY, CODE_UPSTREAM_UNAVAILABLE),
            ProxyError::UpstreamIdentity => (StatusCode::BAD_GATEWAY, CODE_UPSTREAM_IDENTITY),
            ProxyError::UpstreamTimeout | ProxyError::UpstreamStreamIdle => {
                (StatusCode::GATEWAY_TIMEOUT, CODE_UPSTREAM_TIMEOUT)
            }
            ProxyError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, CODE_BAD_TRANSPORT),
            ProxyError::NotFound => (StatusCode::NOT_FOUND, CODE_BAD_TRANSPORT),
            ProxyError::UnknownUpstream => (StatusCode::NOT_FOUND, CODE_BAD_TRANSPORT),
            ProxyError::UnsupportedVersion(_) => {
                (StatusCode::BAD_REQUEST, CODE_UNSUPPORTED_VERSION)
            }
            ProxyError::HeaderMismatch(_) => (StatusCode::BAD_REQUEST, CODE_HEADER_MISMATCH),
            ProxyError::DuplicateHeader(_) => (StatusCode::BAD_REQUEST, CODE_BAD_TRANSPORT),
            ProxyError::Session(SessionRefusal::Full) => {
                (StatusCode::SERVICE_UNAVAILABLE, CODE_SESSION_LIMIT)
            }
            ProxyError::Session(SessionRefusal::IdentityLimit) => {
                (StatusCode::TOO_MANY_REQUESTS, CODE_SESSION_LIMIT)
            }
            ProxyError::Session(SessionRefusal::RuleLimit) => {
                (StatusCode::TOO_MANY_REQUESTS, CODE_LIMITED)
            }
            ProxyError::Session(SessionRefusal::Collision | SessionRefusal::Unsealable) => {
                (StatusCode::BAD_GATEWAY, CODE_SESSION)
            }
            ProxyError::Session(_) => (StatusCode::NOT_FOUND, CODE_SESSION),
            ProxyError::BatchNotAllowed => (StatusCode::BAD_REQUEST, CODE_INVALID_REQUEST),
            ProxyError::UserToken(_) => (StatusCode::UNAUTHORIZED, CODE_USER_TOKEN),
            ProxyError::ForeignHost | ProxyError::ForeignOrigin => {
                (StatusCode::FORBIDDEN, CODE_BAD_TRANSPORT)
            }
            ProxyError::CallerToken(_) => (StatusCode::UNAUTHORIZED, CODE_USER_TOKEN),
            ProxyError::AggregateUnknownTool => (StatusCode::BAD_REQUEST, CODE_INVALID_PARAMS),
            ProxyError::AggregateMethod => (StatusCode::BAD_REQUEST, CODE_METHOD_NOT_FOUND),
            ProxyError::AggregateUnknownPrompt => (StatusCode::BAD_REQUEST, CODE_INVALID_PARAMS),
            ProxyError::AggregateUnknownResource => (StatusCode::BAD_REQUEST, CODE_INVALID_PARAMS),
            ProxyError::AuditUnavailable => {
                (StatusCode::SERVICE_UNAVAILABLE, CODE_AUDIT_UNAVAILABLE)
            }
            ProxyError::Limited(Limited::Identities) => {
                (StatusCode::SERVICE_UNAVAILABLE, CODE_LIMITED)
            }
            ProxyError::Limited(_) => (StatusCode::TOO_MANY_REQUESTS, CODE_LIMITED),
        }
    }

    /// The audit `reason` for a refusal before or after a decision.
    pub fn audit_reason(&self) -> Reason {
        match self {
            ProxyError::Parse(..) => Reason::ParseError,
            ProxyError::Denied => Reason::Denied,
            ProxyError::PinMismatch => Reason::PinMismatch,
            ProxyError::TooLarge(_) => Reason::BodyTooLarge,
            ProxyError::BodyRead => Reason::BodyReadError,
            ProxyError::BodyTimeout => Reason::BodyReadTimeout,
            ProxyError::ContentEncoding(_) => Reason::ContentEncoding,
            ProxyError::ContentType => Reason::ContentType,
            ProxyError::TransferEncoding(_) => Reason::TransferEncoding,
            ProxyError::BadRequest(_) => Reason::BadRequest,
            ProxyError::UpstreamUnavailable => Reason::UpstreamUnavailable,
            ProxyError::UpstreamIdentity => Reason::UpstreamIdentity,
            ProxyError::UpstreamTimeout => Reason::UpstreamTimeout,
            ProxyError::UpstreamStreamIdle => Reason::UpstreamStreamIdle,
            ProxyError::MethodNotAllowed => Reason::MethodNotAllowed,
            ProxyError::NotFound => Reason::NotFound,
            ProxyError::UnknownUpstream => Reason::UnknownUpstream,
            ProxyError::UnsupportedVersion(_) => Reason::UnsupportedProtocolVersion,
            ProxyError::HeaderMismatch(_) => Reason::HeaderMismatch,
            ProxyError::DuplicateHeader(_) => Reason::DuplicateHeader,
            ProxyError::Session(r) => r.audit_reason(),
            ProxyError::BatchNotAllowed => Reason::BatchNotAllowed,
            ProxyError::UserToken(_) => Reason::UserToken,
            ProxyError::ForeignHost => Reason::ForeignHost,
            ProxyError::ForeignOrigin => Reason::ForeignOrigin,
            ProxyError::CallerToken(_) => Reason::CallerToken,
            ProxyError::AggregateUnknownTool => Reason::AggregateUnknownTool,
            ProxyError::AggregateMethod => Reason::AggregateMethod,
            ProxyError::AggregateUnknownPrompt => Reason::AggregateUnknownPrompt,
            ProxyError::AggregateUnknownResource => Reason::AggregateUnknownResource,
            ProxyError::AuditUnavailable => Reason::AuditUnavailable,
            ProxyError::Limited(Limited::Rate { .. }) => Reason::RateLimited,
            ProxyError::Limited(Limited::InFlight | Limited::Streams) => Reason::ConcurrencyLimited,
            ProxyError::Limited(Limited::Sessions) => Reason::SessionLimit,
            ProxyError::Limited(Limited::Identities) => Reason::LimitIdentitiesFull,
        }
    }

    /// The `Retry-After` a refusal carries, in seconds.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            ProxyError::Limited(limited) => Some(limited.retry_after()),
            ProxyError::Session(SessionRefusal::RuleLimit) => Some(1),
            _ => None,
        }
    }

    /// Call-level failures a client should see as the answer to its request
    /// (HTTP 200 with the JSON-RPC error under the request's id); every
    /// other refusal keeps its HTTP status, as the MCP transport requires.
    pub fn answers_the_call(&self) -> bool {
        matches!(
            self,
            ProxyError::Denied
                | ProxyError::PinMismatch
                | ProxyError::UpstreamUnavailable
                | ProxyError::UpstreamIdentity
                | ProxyError::UpstreamTimeout
                | ProxyError::UpstreamStreamIdle
                | ProxyError::AggregateUnknownTool
                | ProxyError::AggregateMethod
                | ProxyError::AggregateUnknownPrompt
                | ProxyError::AggregateUnknownResource
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_failures_have_distinct_codes_statuses_and_reasons() {
        let cases = [
            (
                ProxyError::UpstreamUnavailable,
                StatusCode::BAD_GATEWAY,
                CODE_UPSTREAM_UNAVAILABLE,
                "upstream_unavailable",
            ),
            (
                ProxyError::UpstreamIdentity,
                StatusCode::BAD_GATEWAY,
                CODE_UPSTREAM_IDENTITY,
                "upstream_identity",
            ),
            (
                ProxyError::UpstreamTimeout,
                StatusCode::GATEWAY_TIMEOUT,
                CODE_UPSTREAM_TIMEOUT,
                "upstream_timeout",
            ),
            (
                ProxyError::UpstreamStreamIdle,
                StatusCode::GATEWAY_TIMEOUT,
                CODE_UPSTREAM_TIMEOUT,
                "upstream_stream_idle",
            ),
        ];
        for (refusal, status, code, reason) in cases {
            assert_eq!(refusal.status_and_code(), (status, code), "{refusal}");
            assert_eq!(refusal.audit_reason().as_str(), reason);
            // A call-level failure: answered under the request's id.
            assert!(refusal.answers_the_call(), "{refusal}");
        }
        assert_ne!(CODE_UPSTREAM_TIMEOUT, CODE_UPSTREAM_UNAVAILABLE);
    }

    #[test]
    fn a_session_that_cannot_start_is_not_called_not_found() {
        let cases = [
            (
                SessionRefusal::Full,
                StatusCode::SERVICE_UNAVAILABLE,
                "session_table_full",
                "session table full",
            ),
            (
                SessionRefusal::IdentityLimit,
                StatusCode::TOO_MANY_REQUESTS,
                "session_identity_limit",
                "too many sessions for this identity",
            ),
        ];
        for (refusal, status, reason, message) in cases {
            let refusal = ProxyError::Session(refusal);
            assert_eq!(refusal.status_and_code(), (status, CODE_SESSION_LIMIT));
            assert_eq!(refusal.audit_reason().as_str(), reason);
            assert!(refusal.to_string().starts_with(message), "{refusal}");
            assert!(!refusal.answers_the_call());
        }
        assert_eq!(CODE_SESSION_LIMIT, -32069);
        let unknown = ProxyError::Session(SessionRefusal::NotOwner);
        assert_eq!(
            unknown.status_and_code(),
            (StatusCode::NOT_FOUND, CODE_SESSION)
        );
        assert_eq!(unknown.to_string(), "session not found");
    }

    #[test]
    fn a_pin_mismatch_is_its_own_code_answering_the_call() {
        let refusal = ProxyError::PinMismatch;
        assert_eq!(
            refusal.status_and_code(),
            (StatusCode::FORBIDDEN, CODE_PIN_MISMATCH)
        );
        assert_eq!(CODE_PIN_MISMATCH, -32070);
        assert_eq!(refusal.audit_reason().as_str(), "pin_mismatch");
        assert!(refusal.answers_the_call());
    }

    #[test]
    fn a_limit_is_its_own_code_a_429_and_says_when_to_retry() {
        let cases = [
            (Limited::Rate { retry_after: 3 }, 429, "rate_limited", 3),
            (Limited::InFlight, 429, "concurrency_limited", 1),
            (Limited::Streams, 429, "concurrency_limited", 1),
            (Limited::Sessions, 429, "session_limit", 1),
            (Limited::Identities, 503, "limit_identities_full", 1),
        ];
        for (limited, status, reason, retry_after) in cases {
            let refusal = ProxyError::Limited(limited);
            let (got_status, code) = refusal.status_and_code();
            assert_eq!((got_status.as_u16(), code), (status, CODE_LIMITED));
            assert_eq!(refusal.audit_reason().as_str(), reason);
            assert_eq!(refusal.retry_after(), Some(retry_after));
            // Refused at the transport level, the id in the body.
            assert!(!refusal.answers_the_call());
        }
        assert_eq!(CODE_LIMITED, -32071);
        assert_eq!(ProxyError::Denied.retry_after(), None);
    }

    #[test]
    fn audit_unavailable_is_its_own_code_and_a_503() {
        let refusal = ProxyError::AuditUnavailable;
        assert_eq!(
            refusal.status_and_code(),
            (StatusCode::SERVICE_UNAVAILABLE, CODE_AUDIT_UNAVAILABLE)
        );
        assert_eq!(CODE_AUDIT_UNAVAILABLE, -32068);
        assert_eq!(refusal.audit_reason().as_str(), "audit_unavailable");
        // Refused at the transport level: the client retries the request.
        assert!(!refusal.answers_the_call());
    }
}
