//! Ingress: what a POST body must be before anything in it is decided.
//! Entity headers first (no transfer or content coding the gateway would
//! not see through, JSON only, a declared length within the limit), then
//! the body read whole within the limit and the read timeout, then the
//! strict parse and the framing rules of the protocol version.
//!
//! Must never: hand on bytes other than those parsed, accept a body it
//! could read differently from the upstream, or leave a refused body
//! unread where draining it lets the refusal reach the caller.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};
use hyper::header::{self, HeaderMap};

use crate::mcp::{self, Message};
use crate::proxy::reply::Denial;
use crate::proxy::{ProxyError, protocol, reply};

/// The body limits of one listener.
pub struct Ingress {
    pub max_body: usize,
    pub body_read_timeout: Duration,
}

/// A parsed POST body: its messages, and whether it was a batch.
pub struct Parsed<'a> {
    pub messages: Vec<Message<'a>>,
    pub batch: bool,
}

impl Ingress {
    /// The body of a POST, its entity headers checked, read whole within
    /// the limit and the timeout. On a refusal the rest is drained.
    pub async fn read(&self, headers: &HeaderMap, body: Incoming) -> Result<Bytes, ProxyError> {
        if let Err(refusal) = check_entity_headers(headers, self.max_body) {
            linger(body);
            return Err(refusal);
        }
        let read = tokio::time::timeout(self.body_read_timeout, read_body(body, self.max_body));
        match read.await {
            Err(_) => Err(ProxyError::BodyTimeout),
            Ok(Ok(bytes)) => Ok(bytes),
            Ok(Err((refusal, rest))) => {
                if let Some(rest) = rest {
                    linger(rest);
                }
                Err(refusal)
            }
        }
    }
}

/// Parses a body strictly and checks it against the protocol's framing:
/// 2026-07-28 headers match the body, batches only where the version has
/// them.
pub fn parse<'a>(
    bytes: &'a [u8],
    headers: &HeaderMap,
    protocol_version: Option<&str>,
) -> Result<Parsed<'a>, ProxyError> {
    let parsed = match mcp::parse_body(bytes) {
        Ok(mcp::Body::Single(m)) => Parsed {
            messages: vec![m],
            batch: false,
        },
        Ok(mcp::Body::Batch(messages)) => Parsed {
            messages,
            batch: true,
        },
        Err(e) => return Err(ProxyError::Parse(e.to_string(), e.jsonrpc_code())),
    };
    check_framing(headers, &parsed, protocol_version)?;
    Ok(parsed)
}

fn check_framing(
    headers: &HeaderMap,
    parsed: &Parsed<'_>,
    protocol_version: Option<&str>,
) -> Result<(), ProxyError> {
    let modern = parsed
        .messages
        .iter()
        .any(|m| protocol::is_modern(m, protocol_version));
    if parsed.batch {
        let version = protocol_version.unwrap_or(protocol::BATCH_VERSION);
        return if modern || version != protocol::BATCH_VERSION {
            Err(ProxyError::BatchNotAllowed)
        } else {
            Ok(())
        };
    }
    if modern {
        protocol::check_modern_headers(headers, &parsed.messages[0])?;
    }
    Ok(())
}

/// What goes to the upstream: the body as it came, or, for a batch with
/// denied elements, its permitted elements as their exact bytes (the denied
/// ones are answered by the gateway).
pub fn permitted_body(body: &Bytes, denied: &[Denial]) -> Option<Bytes> {
    if denied.is_empty() {
        return Some(body.clone());
    }
    permitted_elements(body, denied)
}

/// The elements of a batch not in `denied`, as a new batch of their original
/// bytes. The body was already parsed strictly; this pass only slices it.
fn permitted_elements(body: &[u8], denied: &[Denial]) -> Option<Bytes> {
    let elements: Vec<&serde_json::value::RawValue> = serde_json::from_slice(body).ok()?;
    let kept: Vec<Vec<u8>> = elements
        .iter()
        .enumerate()
        .filter(|(i, _)| !denied.iter().any(|d| d.index == *i))
        .map(|(_, raw)| raw.get().as_bytes().to_vec())
        .collect();
    Some(Bytes::from(reply::json_array(&kept)))
}

/// Refuses bodies the gateway would not see as the upstream does.
fn check_entity_headers(headers: &HeaderMap, max_body: usize) -> Result<(), ProxyError> {
    // hyper decodes `chunked` only; any other transfer coding would be
    // passed on as if it were identity.
    for value in headers.get_all(header::TRANSFER_ENCODING) {
        let v = value.to_str().unwrap_or("?");
        if v.split(',')
            .any(|c| !c.trim().eq_ignore_ascii_case("chunked"))
        {
            return Err(ProxyError::TransferEncoding(v.to_owned()));
        }
    }
    // Refuse a declared over-limit body at once, without reading it.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_body as u64) {
        return Err(ProxyError::TooLarge(max_body));
    }
    for value in headers.get_all(header::CONTENT_ENCODING) {
        let v = value.to_str().unwrap_or("?").trim();
        if !v.eq_ignore_ascii_case("identity") {
            return Err(ProxyError::ContentEncoding(v.to_owned()));
        }
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .ok_or(ProxyError::ContentType)?;
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case("application/json") {
        return Err(ProxyError::ContentType);
    }
    if headers.get_all(header::CONTENT_TYPE).iter().count() > 1 {
        return Err(ProxyError::BadRequest("more than one Content-Type header"));
    }
    Ok(())
}

/// Reads a request body of at most `limit` bytes. On overflow the rest of the
/// body comes back with the refusal so that it can be drained ([`linger`]).
async fn read_body(
    mut body: Incoming,
    limit: usize,
) -> Result<Bytes, (ProxyError, Option<Incoming>)> {
    let mut first: Option<Bytes> = None;
    let mut joined: Vec<u8> = Vec::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Err((ProxyError::BodyRead, None));
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers carry nothing the gateway forwards
        };
        total = total.saturating_add(data.len());
        if total > limit {
            return Err((ProxyError::TooLarge(limit), Some(body)));
        }
        // The common case, a body in one frame, is kept without copying.
        match first.take() {
            None if joined.is_empty() => first = Some(data),
            None => joined.extend_from_slice(&data),
            Some(f) => {
                joined.reserve(f.len() + data.len());
                joined.extend_from_slice(&f);
                joined.extend_from_slice(&data);
            }
        }
    }
    Ok(first.unwrap_or_else(|| Bytes::from(joined)))
}

/// The most of a refused body the gateway reads and discards, and for how
/// long, so that its early refusal (413) reaches a caller that is still
/// sending instead of being lost to a TCP reset when the connection closes
/// with unread data. Beyond either bound the connection is simply closed.
const LINGER_BYTES: usize = 4 << 20;
const LINGER_TIME: std::time::Duration = std::time::Duration::from_secs(2);

pub fn linger(mut body: Incoming) {
    if body.is_end_stream() {
        return;
    }
    tokio::spawn(async move {
        let drain = async {
            let mut seen = 0usize;
            while let Some(Ok(frame)) = body.frame().await {
                seen += frame.data_ref().map_or(0, Bytes::len);
                if seen > LINGER_BYTES {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(LINGER_TIME, drain).await;
    });
}
