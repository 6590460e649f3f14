//! Forwarding: the one way a request to an upstream is built (a caller's
//! call, the gateway's answer to a server-to-client request, the end of a
//! session), and the one list of headers that never cross a hop.
//!
//! Must never: pass on a header by which a caller claims an identity or a
//! hop (identity comes from the verified certificate only), a hop-by-hop
//! header, or `Accept-Encoding` (the gateway must read the bytes it
//! decides on, so replies come uncompressed).

use std::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response};
use tracing::warn;

use crate::proxy::ProxyError;
use crate::proxy::protocol::SESSION_HEADER;
use crate::proxy::trace::{self, Trace};
use crate::proxy::upstream::{ConnectError, Upstream};

/// Headers a caller may use to claim an identity or a hop; never forwarded.
const IDENTITY_HEADER_PREFIXES: &[&str] = &[
    "x-forwarded-",
    "x-spiffe",
    "x-client-cert",
    "x-ssl-client",
    "ssl-client",
    "x-real-ip",
    "forwarded",
    "x-envoy-",
    "x-amzn-mtls",
];

/// Hop-by-hop headers (RFC 9110 7.6.1), both ways; with the names a
/// `Connection` header lists.
const HOP_HEADERS: &[HeaderName] = &[
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
];

/// Request headers the gateway sets itself (or must not pass on).
const REQUEST_OWN_HEADERS: &[HeaderName] = &[
    header::HOST,
    header::CONTENT_LENGTH,
    // The gateway must see the bytes it decides on; no compressed replies.
    header::ACCEPT_ENCODING,
];

/// A request to `up`: its URI and `Host`, with `headers` as given.
pub fn request(
    up: &Upstream,
    method: Method,
    body: Bytes,
    headers: HeaderMap,
) -> Request<Full<Bytes>> {
    let mut req = Request::new(Full::new(body));
    *req.method_mut() = method;
    *req.uri_mut() = up.uri.clone();
    *req.headers_mut() = headers;
    req.headers_mut().insert(header::HOST, up.authority.clone());
    req
}

/// The headers of a JSON-RPC POST the gateway makes itself: a JSON body,
/// and a reply as JSON or an SSE stream.
pub fn own_post_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        header::ACCEPT,
        HeaderValue::from_static("application/json, text/event-stream"),
    );
    headers
}

/// A caller's call as the upstream receives it.
pub struct Call<'a> {
    /// The verified caller, for `upstream.caller_id_header`.
    pub caller: &'a str,
    pub trace: &'a Trace,
    /// Drop `Authorization` (a token whose audience is the gateway).
    pub strip_authorization: bool,
    /// The upstream's own session id, in place of the caller's sealed one.
    pub session: Option<&'a str>,
}

impl Call<'_> {
    /// The request to `up`: the caller's headers as the upstream may see
    /// them, the gateway's trace span, and the verified caller where
    /// configured.
    pub fn request(
        &self,
        up: &Upstream,
        method: Method,
        body: Bytes,
        headers: &HeaderMap,
    ) -> Request<Full<Bytes>> {
        let mut req = request(up, method, body, upstream_headers(headers));
        let h = req.headers_mut();
        if self.strip_authorization {
            h.remove(header::AUTHORIZATION);
        }
        if let Some(session) = self.session {
            // The sealed id is the gateway's: never passed on.
            h.remove(SESSION_HEADER);
            if let Ok(v) = HeaderValue::from_str(session) {
                h.insert(SESSION_HEADER, v);
            }
        }
        h.insert(trace::TRACEPARENT, self.trace.header());
        if !self.trace.continued() {
            h.remove(trace::TRACESTATE);
        }
        if let Some(name) = &up.caller_id_header
            && let Ok(value) = HeaderValue::from_str(self.caller)
        {
            h.insert(name.clone(), value);
        }
        req
    }
}

/// Sends `req` to `up` within its request timeout and keeps its metrics
/// (up or down, time to the response head). A failure comes back as the
/// refusal the caller gets.
pub async fn send(
    up: &Upstream,
    req: Request<Full<Bytes>>,
) -> Result<Response<Incoming>, ProxyError> {
    let started = Instant::now();
    match tokio::time::timeout(up.request_timeout, up.client.request(req)).await {
        Ok(Ok(resp)) => {
            let m = &up.metrics;
            m.request_duration.observe(started.elapsed().as_secs_f64());
            m.up.set(1);
            Ok(resp)
        }
        Ok(Err(e)) => {
            warn!(error = %e, upstream = %up.name, "upstream call failed");
            // Could not connect, or the connection failed: down until a
            // call or the probe gets through again.
            up.metrics.up.set(0);
            Err(classify(&e))
        }
        Err(_) => {
            // The upstream accepted the call but is slow: it stays up.
            warn!(
                upstream = %up.name,
                timeout_seconds = up.request_timeout.as_secs(),
                "upstream gave no response head in time"
            );
            Err(ProxyError::UpstreamTimeout)
        }
    }
}

/// What a failed upstream call means for the caller.
fn classify(e: &hyper_util::client::legacy::Error) -> ProxyError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(err) = source {
        if let Some(connect) = err.downcast_ref::<ConnectError>() {
            return if connect.is_identity() {
                ProxyError::UpstreamIdentity
            } else if matches!(connect, ConnectError::Timeout) {
                ProxyError::UpstreamTimeout
            } else {
                ProxyError::UpstreamUnavailable
            };
        }
        source = err.source();
    }
    ProxyError::UpstreamUnavailable
}

/// The caller's headers as the upstream may see them: no hop-by-hop
/// headers, none the gateway sets itself, no identity claims.
pub fn upstream_headers(headers: &HeaderMap) -> HeaderMap {
    let named = named_by_connection(headers);
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        let drop = is_hop(name, &named)
            || REQUEST_OWN_HEADERS.contains(name)
            || is_identity_header(name.as_str());
        if !drop {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// Removes the hop-by-hop headers of an upstream's reply. No allocation
/// unless a `Connection` header names more.
pub fn strip_hop_headers(headers: &mut HeaderMap) {
    let named = named_by_connection(headers);
    for name in HOP_HEADERS {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
    for name in named {
        headers.remove(name);
    }
}

fn is_hop(name: &HeaderName, named: &[HeaderName]) -> bool {
    HOP_HEADERS.contains(name)
        || matches!(name.as_str(), "keep-alive" | "proxy-connection")
        || named.contains(name)
}

fn named_by_connection(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect()
}

fn is_identity_header(name: &str) -> bool {
    IDENTITY_HEADER_PREFIXES.iter().any(|p| name.starts_with(p))
}

#[cfg(test)]
mod tests {
    use hyper::header::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(*n, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn a_request_keeps_only_what_the_upstream_may_see() {
        let h = headers(&[
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("host", "gateway"),
            ("content-length", "10"),
            ("accept-encoding", "gzip"),
            ("x-forwarded-for", "10.0.0.1"),
            ("forwarded", "for=x"),
            ("x-spiffe-id", "spiffe://example.org/admin"),
            ("mcp-session-id", "s"),
            ("content-type", "application/json"),
        ]);
        let out = upstream_headers(&h);
        let mut kept: Vec<&str> = out.keys().map(HeaderName::as_str).collect();
        kept.sort_unstable();
        assert_eq!(kept, ["content-type", "mcp-session-id"]);
    }

    #[test]
    fn a_reply_loses_its_hop_headers_and_keeps_its_length() {
        let mut h = headers(&[
            ("connection", "close, x-hop"),
            ("x-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("content-length", "10"),
            ("mcp-session-id", "s"),
        ]);
        strip_hop_headers(&mut h);
        let mut kept: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        kept.sort_unstable();
        assert_eq!(kept, ["content-length", "mcp-session-id"]);
    }
}
