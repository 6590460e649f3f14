//! Why an audit record was written: the `reason` field, and the `reason`
//! label of the refusal and upstream-error metrics.
//!
//! One table: each variant with its label (the public SIEM contract) and
//! what it means. The README's table of reasons is this table, checked by a
//! test, so a new reason cannot ship undocumented.
//!
//! This module must never hand out a label that is not in the table: every
//! writer of a record names a `Reason`, never a string.

use serde::{Serialize, Serializer};

use crate::policy::DecisionReason;

macro_rules! reasons {
    ($($variant:ident => $label:literal, $meaning:literal;)*) => {
        /// Why a record was written (see the module doc).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Reason {
            $(#[doc = $meaning] $variant,)*
        }

        impl Reason {
            /// Every reason, in table order.
            pub const ALL: &'static [Reason] = &[$(Reason::$variant),*];

            /// The stable label written in records and metrics.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Reason::$variant => $label,)*
                }
            }

            /// What the reason means, for the documentation.
            pub fn meaning(self) -> &'static str {
                match self {
                    $(Reason::$variant => $meaning,)*
                }
            }
        }
    };
}

reasons! {
    Permit => "permit", "a permit policy allowed the message, and no forbid applied";
    Forbid => "forbid", "a forbid policy denied the message";
    DefaultDeny => "default_deny", "no policy permitted the message";
    PolicyError => "error", "a policy failed to evaluate: denied (fail closed)";
    CallerResponse => "caller_response", "the caller's answer to a request of the server's, passed on";
    ParseError => "parse_error", "the body is not one strict JSON-RPC message or batch";
    Denied => "denied", "a call the policies denied, answered without a record of its own (aggregated discovery)";
    BodyTooLarge => "body_too_large", "the body exceeds `limits.max_body_bytes`";
    BodyReadError => "body_read_error", "the body could not be read to its end";
    BodyReadTimeout => "body_read_timeout", "the body did not arrive within `connections.body_read_timeout_seconds`";
    ContentEncoding => "content_encoding", "a `Content-Encoding` other than identity";
    ContentType => "content_type", "a POST that is not `application/json`";
    TransferEncoding => "transfer_encoding", "a transfer coding other than chunked";
    BadRequest => "bad_request", "a request the transport rules refuse (framing, a batch that cannot be split)";
    MethodNotAllowed => "method_not_allowed", "an HTTP method the endpoint does not serve";
    NotFound => "not_found", "a path that names no endpoint";
    UnknownUpstream => "unknown_upstream", "`<path>/<name>` names no configured upstream";
    UnsupportedProtocolVersion => "unsupported_protocol_version", "an `MCP-Protocol-Version` the gateway does not speak";
    HeaderMismatch => "header_mismatch", "a 2026-07-28 header that disagrees with the body";
    DuplicateHeader => "duplicate_header", "a protocol or session header sent twice";
    BatchNotAllowed => "batch_not_allowed", "a batch where the protocol version forbids one";
    UserToken => "user_token", "the end-user token is missing or fails verification";
    CallerToken => "caller_token", "the caller's JWT-SVID is missing or fails verification";
    ForeignHost => "foreign_host", "on the loopback listener: a `Host` that is not a loopback name or IP (DNS rebinding)";
    ForeignOrigin => "foreign_origin", "on the loopback listener: a browser `Origin` that is not loopback";
    AuditUnavailable => "audit_unavailable", "audit records cannot be written (`audit.on_failure: refuse`)";
    SessionUnknown => "session_unknown", "the session id is not one the gateway issued, or it ended";
    SessionNotOwned => "session_not_owned", "the session belongs to another identity";
    SessionExpired => "session_expired", "the session is past `sessions.max_lifetime_seconds` or its key was removed, or (without `sessions.keys_file`) was idle longer than `limits.session_idle_timeout_seconds`";
    SessionTableFull => "session_table_full", "no new session: `limits.max_sessions` reached";
    SessionIdentityLimit => "session_identity_limit", "no new session: the caller holds `limits.max_sessions_per_identity`";
    SessionIdCollision => "session_id_collision", "the upstream issued a session id already bound to another identity";
    SessionIdUnsealable => "session_id_unsealable", "the upstream issued a session id too long to seal into one the caller can present (over about 6 KB): the session is ended at the upstream, 502";
    AggregateUnknownTool => "aggregate_unknown_tool", "the aggregated endpoint has no tool of that name";
    AggregateMethod => "aggregate_method", "a method the aggregated endpoint does not serve";
    AggregateUnknownPrompt => "aggregate_unknown_prompt", "the aggregated endpoint has no prompt of that name";
    AggregateUnknownResource => "aggregate_unknown_resource", "the aggregated endpoint has no resource at that URI";
    UpstreamUnavailable => "upstream_unavailable", "the upstream could not be reached";
    UpstreamIdentity => "upstream_identity", "the upstream presented another SPIFFE ID";
    UpstreamTimeout => "upstream_timeout", "no connection within `connect_timeout_seconds` or no response head within `request_timeout_seconds`";
    UpstreamStreamIdle => "upstream_stream_idle", "the upstream's reply was silent longer than `stream_idle_timeout_seconds`";
    ListFiltered => "list_filtered", "entries the caller may not use were removed from a list reply";
    PinMismatch => "pin_mismatch", "a tool, prompt or resource template unpinned or listed with another definition than its pin: seen in a list (`audit` mode: passed on; `enforce`: removed), or a call to it refused (`enforce`)";
    RateLimited => "rate_limited", "the caller's request rate (`limits.per_identity`, of the identity or of the tool) is used up: 429 with `Retry-After`, nothing forwarded";
    ConcurrencyLimited => "concurrency_limited", "the caller holds its `max_in_flight` requests or `max_streams` GET streams (`limits.per_identity`): 429, nothing forwarded";
    SessionLimit => "session_limit", "no new session: the caller holds its rule's `max_sessions` (`limits.per_identity`) on this replica: 429 with `Retry-After`, nothing forwarded";
    LimitIdentitiesFull => "limit_identities_full", "`limits.per_identity.max_identities` identities hold limit state and none is idle: a new identity is refused (503) until one is";
    UpstreamSseError => "upstream_sse_error", "the upstream's event stream broke the SSE or JSON-RPC rules";
    UpstreamBatchRefused => "upstream_batch_refused", "the upstream answered with a batch where none is allowed";
    UpstreamParseError => "upstream_parse_error", "the upstream's reply is not strict JSON-RPC";
}

impl Reason {
    /// The reasons of per-identity limits (`mcp_gateway_limited_total`).
    pub const LIMITED: &'static [Reason] = &[
        Reason::RateLimited,
        Reason::ConcurrencyLimited,
        Reason::SessionLimit,
        Reason::LimitIdentitiesFull,
    ];
}

impl From<DecisionReason> for Reason {
    fn from(reason: DecisionReason) -> Reason {
        match reason {
            DecisionReason::Permitted => Reason::Permit,
            DecisionReason::Forbidden => Reason::Forbid,
            DecisionReason::NoPermit => Reason::DefaultDeny,
            DecisionReason::Error => Reason::PolicyError,
        }
    }
}

impl Serialize for Reason {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn labels_are_unique_snake_case_and_match_the_policy_labels() {
        let mut seen = HashSet::new();
        for reason in Reason::ALL {
            let label = reason.as_str();
            assert!(seen.insert(label), "{label} twice");
            assert!(
                label.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{label}"
            );
        }
        for d in [
            DecisionReason::Permitted,
            DecisionReason::Forbidden,
            DecisionReason::NoPermit,
            DecisionReason::Error,
        ] {
            assert_eq!(Reason::from(d).as_str(), d.as_str());
        }
    }

    /// The README's table is this table, row for row.
    #[test]
    fn the_readme_documents_every_reason() {
        let readme = include_str!("../../README.md");
        let rows: String = Reason::ALL
            .iter()
            .map(|r| format!("| `{}` | {} |\n", r.as_str(), r.meaning()))
            .collect();
        assert!(
            readme.contains(&rows),
            "README.md's audit reason table must be exactly:\n{rows}"
        );
    }
}
