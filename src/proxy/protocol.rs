//! MCP protocol-version rules the gateway enforces at the HTTP layer.
//!
//! - `MCP-Protocol-Version`, when present, must be a version the gateway
//!   supports (400 otherwise), and may appear only once.
//! - 2026-07-28 requests mirror the method and the target name into the
//!   `Mcp-Method` and `Mcp-Name` headers; the gateway checks them against
//!   the body and refuses a mismatch (400, -32020). Decisions are always made
//!   on the body, so a mismatch cannot steer a decision; refusing it keeps
//!   intermediaries that route on headers from seeing a different request
//!   than the upstream executes.
//! - Batches exist only in 2025-03-26 (the version a request without the
//!   header is assumed to speak).

use std::borrow::Cow;

use base64::Engine;
use hyper::header::{HeaderMap, HeaderValue};

use crate::mcp::Message;
use crate::mcp::method;
use crate::proxy::error::ProxyError;

pub const MODERN: &str = "2026-07-28";
/// The only version with JSON-RPC batches; also the default when a request
/// carries no `MCP-Protocol-Version` header (spec, 2025-06-18 transports).
pub const BATCH_VERSION: &str = "2025-03-26";
pub const SUPPORTED: &[&str] = &["2025-03-26", "2025-06-18", "2025-11-25", MODERN];

pub const PROTOCOL_VERSION_HEADER: &str = "mcp-protocol-version";
pub const SESSION_HEADER: &str = "mcp-session-id";
pub const METHOD_HEADER: &str = "mcp-method";
pub const NAME_HEADER: &str = "mcp-name";

/// The one value of a header that must not repeat, if present.
pub fn single_header<'a>(
    headers: &'a HeaderMap,
    name: &'static str,
) -> Result<Option<&'a str>, ProxyError> {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ProxyError::DuplicateHeader(name));
    }
    first
        .to_str()
        .map(Some)
        .map_err(|_| ProxyError::BadRequest("a MCP header is not visible ASCII"))
}

/// The request's protocol version header, checked against what is supported.
pub fn version_header(headers: &HeaderMap) -> Result<Option<&str>, ProxyError> {
    match single_header(headers, PROTOCOL_VERSION_HEADER)? {
        Some(v) if !SUPPORTED.contains(&v) => Err(ProxyError::UnsupportedVersion(v.to_owned())),
        other => Ok(other),
    }
}

/// Whether a message speaks 2026-07-28 (its `_meta` says so; `initialize`
/// carries a requested version, not the message's own).
pub fn is_modern(message: &Message<'_>, header: Option<&str>) -> bool {
    header == Some(MODERN)
        || (message.method.as_deref() != Some(method::INITIALIZE)
            && message.protocol_version.as_deref() == Some(MODERN))
}

/// The 2026-07-28 header checks for one message.
pub fn check_modern_headers(headers: &HeaderMap, message: &Message<'_>) -> Result<(), ProxyError> {
    let version = single_header(headers, PROTOCOL_VERSION_HEADER)?;
    if version != message.protocol_version.as_deref() {
        return Err(ProxyError::HeaderMismatch(PROTOCOL_VERSION_HEADER));
    }
    let method = single_header(headers, METHOD_HEADER)?;
    if method != message.method.as_deref() {
        return Err(ProxyError::HeaderMismatch(METHOD_HEADER));
    }
    let name_bearing = message.method.as_deref().is_some_and(method::is_named_call);
    let name = single_header(headers, NAME_HEADER)?;
    match (name_bearing, name, message.target.as_deref()) {
        (true, Some(raw), Some(target)) if decode_header_value(raw).as_deref() == Some(target) => {
            Ok(())
        }
        (true, None, None) | (false, None, _) => Ok(()),
        _ => Err(ProxyError::HeaderMismatch(NAME_HEADER)),
    }
}

/// The `Mcp-Name` value for `name`: the name itself when it is visible
/// ASCII (and does not look like the sentinel form), otherwise
/// `=?base64?…?=`; [`check_modern_headers`] decodes it back to `name`.
pub fn encode_header_value(name: &str) -> Option<HeaderValue> {
    let plain = !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_graphic())
        && !(name.starts_with("=?base64?") && name.ends_with("?="));
    if plain {
        return HeaderValue::from_str(name).ok();
    }
    let encoded = base64::engine::general_purpose::STANDARD.encode(name);
    HeaderValue::from_str(&format!("=?base64?{encoded}?=")).ok()
}

/// A header value, with the `=?base64?…?=` form (used for names that are not
/// visible ASCII) decoded. `None` when the sentinel form is malformed.
fn decode_header_value(raw: &str) -> Option<Cow<'_, str>> {
    let Some(payload) = raw
        .strip_prefix("=?base64?")
        .and_then(|r| r.strip_suffix("?="))
    else {
        return Some(Cow::Borrowed(raw));
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(payload)
        .ok()?;
    String::from_utf8(bytes).ok().map(Cow::Owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mcp::{Body, parse_body};

    fn one(body: &str) -> Message<'_> {
        match parse_body(body.as_bytes()).unwrap() {
            Body::Single(m) => m,
            Body::Batch(_) => panic!("batch"),
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    const CALL: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}"#;

    #[test]
    fn modern_headers_must_match_the_body() {
        let m = one(CALL);
        assert!(is_modern(&m, None));
        let ok = [
            ("mcp-protocol-version", MODERN),
            ("mcp-method", "tools/call"),
            ("mcp-name", "echo"),
        ];
        assert!(check_modern_headers(&headers(&ok), &m).is_ok());
        let b64 = [
            ("mcp-protocol-version", MODERN),
            ("mcp-method", "tools/call"),
            ("mcp-name", "=?base64?ZWNobw==?="),
        ];
        assert!(check_modern_headers(&headers(&b64), &m).is_ok());
        let cases: &[(&str, &[(&'static str, &str)])] = &[
            ("no headers", &[]),
            (
                "version differs",
                &[
                    ("mcp-protocol-version", "2025-11-25"),
                    ("mcp-method", "tools/call"),
                    ("mcp-name", "echo"),
                ],
            ),
            (
                "method differs",
                &[
                    ("mcp-protocol-version", MODERN),
                    ("mcp-method", "tools/list"),
                    ("mcp-name", "echo"),
                ],
            ),
            (
                "name differs",
                &[
                    ("mcp-protocol-version", MODERN),
                    ("mcp-method", "tools/call"),
                    ("mcp-name", "delete_repository"),
                ],
            ),
            (
                "name missing",
                &[
                    ("mcp-protocol-version", MODERN),
                    ("mcp-method", "tools/call"),
                ],
            ),
            (
                "name case differs",
                &[
                    ("mcp-protocol-version", MODERN),
                    ("mcp-method", "tools/call"),
                    ("mcp-name", "Echo"),
                ],
            ),
            (
                "bad base64",
                &[
                    ("mcp-protocol-version", MODERN),
                    ("mcp-method", "tools/call"),
                    ("mcp-name", "=?base64?!!?="),
                ],
            ),
            (
                "method twice",
                &[
                    ("mcp-protocol-version", MODERN),
                    ("mcp-method", "tools/call"),
                    ("mcp-method", "tools/call"),
                    ("mcp-name", "echo"),
                ],
            ),
        ];
        for (name, pairs) in cases {
            assert!(check_modern_headers(&headers(pairs), &m).is_err(), "{name}");
        }
    }

    #[test]
    fn encoded_names_decode_to_themselves() {
        for name in [
            "echo",
            "file:///docs/readme.md",
            "a b",
            "café",
            "=?base64?ZWNobw==?=",
            "",
        ] {
            let value = encode_header_value(name).unwrap();
            let raw = value.to_str().unwrap();
            assert_eq!(decode_header_value(raw).as_deref(), Some(name), "{name:?}");
        }
        assert_eq!(encode_header_value("echo").unwrap(), "echo");
        assert_eq!(encode_header_value("a b").unwrap(), "=?base64?YSBi?=");
    }

    #[test]
    fn versions_are_checked() {
        assert_eq!(version_header(&headers(&[])).unwrap(), None);
        assert_eq!(
            version_header(&headers(&[("mcp-protocol-version", "2025-06-18")])).unwrap(),
            Some("2025-06-18")
        );
        assert!(matches!(
            version_header(&headers(&[("mcp-protocol-version", "2024-11-05")])),
            Err(ProxyError::UnsupportedVersion(_))
        ));
        assert!(matches!(
            version_header(&headers(&[
                ("mcp-protocol-version", "2025-06-18"),
                ("mcp-protocol-version", "2026-07-28")
            ])),
            Err(ProxyError::DuplicateHeader(_))
        ));
    }

    #[test]
    fn initialize_is_not_modern_by_its_requested_version() {
        let init = one(
            r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2026-07-28","capabilities":{},"clientInfo":{"name":"x","version":"1"}}}"#,
        );
        assert!(!is_modern(&init, None));
    }
}
