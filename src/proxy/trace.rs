//! W3C Trace Context (`traceparent`) for one request.
//!
//! The gateway is a hop in the caller's trace: a valid incoming `traceparent`
//! keeps its trace id and flags and gets the gateway's own span id as the new
//! parent for the upstream; `tracestate` passes through unchanged. Without a
//! valid `traceparent` the gateway starts a trace (flags `00`, not sampled)
//! and drops any `tracestate` (the spec forbids reading it then). The trace id
//! and the gateway's span id go into every audit record of the request, so an
//! audit line can be joined with the traces of both sides.
//!
//! With `traces:` on, the gateway also samples the trace (the caller's
//! sampled flag, or the trace id against the ratio) and sends its decision
//! upstream in the flags; a sampled request records a `RequestSpan` whose
//! id is the gateway's span id here, the parent the upstream sees (each
//! upstream call is a child span of it). Off, nothing of that runs: one
//! branch per request.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use hyper::header::{HeaderMap, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Method, Response};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ring::rand::{SecureRandom, SystemRandom};

use super::ProxyError;
use super::decide::Verdict;
use super::listener::Peer;
use crate::mcp::Message;
use crate::telemetry::{Decided, RequestSpan, Tracer, UpstreamCall};

pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

#[derive(Debug, Clone)]
pub struct Trace {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// The gateway's span: 16 lowercase hex digits.
    pub span_id: String,
    /// The caller's span, when it sent a valid `traceparent`.
    pub parent_span_id: Option<String>,
    flags: String,
    /// The span being recorded: only with traces on and the trace sampled.
    span: Option<Arc<RequestSpan>>,
}

impl Trace {
    /// From the request's headers: continue a valid trace or start one.
    /// No span is recorded (traces off).
    pub fn from_headers(headers: &HeaderMap) -> Trace {
        let mut values = headers.get_all(TRACEPARENT).iter();
        let incoming = match (values.next(), values.next()) {
            (Some(v), None) => v.to_str().ok().and_then(parse),
            _ => None,
        };
        let span_id = hex(&random::<8>());
        match incoming {
            Some((trace_id, parent, flags)) => Trace {
                trace_id: trace_id.to_owned(),
                span_id,
                parent_span_id: Some(parent.to_owned()),
                flags: flags.to_owned(),
                span: None,
            },
            None => Trace {
                trace_id: hex(&random::<16>()),
                span_id,
                parent_span_id: None,
                flags: "00".to_owned(),
                span: None,
            },
        }
    }

    /// As [`Trace::from_headers`], and with traces on (`tracer`) the
    /// gateway's sampling decision: in the flags sent upstream, and a span
    /// recorded for a sampled request (of `peer`).
    pub fn begin(request: &Parts, tracer: Option<&Tracer>, peer: &Peer) -> Trace {
        let headers = &request.headers;
        let mut trace = Trace::from_headers(headers);
        let Some(tracer) = tracer else {
            return trace;
        };
        // Both were written or checked as lowercase hex just above.
        let trace_id = u128::from_str_radix(&trace.trace_id, 16).unwrap_or_default();
        let caller_flags = u8::from_str_radix(&trace.flags, 16).unwrap_or_default();
        let honoured = trace.continued().then_some(caller_flags);
        let sampled = tracer.sampled(trace_id, honoured);
        trace.flags = format!("{:02x}", (caller_flags & !1) | u8::from(sampled));
        if sampled {
            let span_id = u64::from_str_radix(&trace.span_id, 16).unwrap_or_default();
            let parent = trace
                .parent_span_id
                .as_deref()
                .and_then(|p| u64::from_str_radix(p, 16).ok());
            let ids = (trace_id, span_id, parent);
            let method = http_method(&request.method);
            let span = RequestSpan::start(tracer, ids, &peer.spiffe_id, method);
            trace.span = Some(Arc::new(span));
        }
        trace
    }

    /// Records a message decided for `upstream` in the request's span.
    pub(super) fn decided(&self, message: &Message<'_>, upstream: &str, verdict: &Verdict) {
        let Some(span) = &self.span else {
            return;
        };
        let method = message.method.as_deref().unwrap_or("response");
        let target = message
            .target
            .as_deref()
            .filter(|_| crate::mcp::method::target_kind(method).is_some());
        span.decided(&Decided {
            method,
            target,
            upstream,
            allowed: verdict.allowed,
            policy_ids: &verdict.policy_ids,
            reason: verdict.reason.as_str(),
        });
    }

    /// Records a refusal without a decided message (`reason`: its audit
    /// reason).
    pub fn refused(&self, reason: &'static str, upstream: Option<&str>) {
        if let Some(span) = &self.span {
            span.refused(reason, upstream);
        }
    }

    /// Records the HTTP status of the reply.
    pub fn responded(&self, status: u16) {
        if let Some(span) = &self.span {
            span.responded(status);
        }
    }

    /// An upstream call begins (a child span of the request's).
    pub fn upstream_call(&self) -> Option<UpstreamCall> {
        let span = self.span.as_ref()?;
        Some(span.upstream_call(u64::from_be_bytes(random::<8>())))
    }

    /// An upstream call ended: its response head's status, or the reason
    /// it failed.
    pub(super) fn upstream_done<T>(
        &self,
        call: Option<UpstreamCall>,
        upstream: &str,
        sent: &Result<Response<T>, ProxyError>,
    ) {
        if let (Some(span), Some(call)) = (&self.span, call) {
            let outcome = match sent {
                Ok(resp) => Ok(resp.status().as_u16()),
                Err(refusal) => Err(refusal.audit_reason().as_str()),
            };
            span.upstream_done(call, upstream, outcome);
        }
    }

    /// Whether the caller's trace is continued (its `tracestate` may pass).
    pub fn continued(&self) -> bool {
        self.parent_span_id.is_some()
    }

    /// The `traceparent` the upstream gets.
    pub fn header(&self) -> HeaderValue {
        let text = format!("00-{}-{}-{}", self.trace_id, self.span_id, self.flags);
        HeaderValue::from_str(&text).expect("hex digits and dashes are a valid header value")
    }
}

/// The request's HTTP method as a static label (bounded: others are `_OTHER`,
/// as OpenTelemetry's HTTP conventions say).
fn http_method(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::PUT => "PUT",
        Method::OPTIONS => "OPTIONS",
        Method::HEAD => "HEAD",
        Method::PATCH => "PATCH",
        _ => "_OTHER",
    }
}

/// `version-traceid-parentid-flags`, per W3C Trace Context level 1. Version
/// `00` must have exactly four fields; a higher version may have more (only
/// the first four are read); version `ff` is invalid, as are all-zero ids
/// and uppercase hex.
fn parse(value: &str) -> Option<(&str, &str, &str)> {
    let value = value.trim_matches(|c| c == ' ' || c == '\t');
    let mut parts = value.split('-');
    let version = parts.next()?;
    let trace_id = parts.next()?;
    let parent = parts.next()?;
    let flags = parts.next()?;
    let rest = parts.next();
    let is_hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let all_zero = |s: &str| s.bytes().all(|b| b == b'0');
    let ok = is_hex(version, 2)
        && version != "ff"
        && (version != "00" || rest.is_none())
        && is_hex(trace_id, 32)
        && !all_zero(trace_id)
        && is_hex(parent, 16)
        && !all_zero(parent)
        && is_hex(flags, 2);
    ok.then_some((trace_id, parent, flags))
}

thread_local! {
    /// Trace and span ids come from a ChaCha12 generator per thread, seeded
    /// once from the OS random source: no system call per request. They
    /// need to be unpredictable enough not to collide or be guessed, not
    /// secret; session ids are drawn from the OS source itself.
    static IDS: RefCell<StdRng> = RefCell::new(StdRng::from_seed(os_seed()));
}

fn os_seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    // The OS random source failing at a thread's start leaves ids seeded
    // by the clock and a thread count: still valid ids, never a reason to
    // fail requests.
    if SystemRandom::new().fill(&mut seed).is_err() {
        static THREADS: AtomicU64 = AtomicU64::new(0);
        seed[..16].copy_from_slice(&(crate::clock::unix_ms() as u128).to_le_bytes());
        seed[16..24].copy_from_slice(&THREADS.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    }
    seed
}

fn random<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    IDS.with(|rng| rng.borrow_mut().fill_bytes(&mut out));
    // All zeros is not a valid id.
    if out.iter().all(|b| *b == 0) {
        out[N - 1] = 1;
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(TRACEPARENT, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_is_continued_with_a_new_span() {
        let t = Trace::from_headers(&headers(&[GOOD]));
        assert_eq!(t.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.parent_span_id.as_deref(), Some("00f067aa0ba902b7"));
        assert_ne!(t.span_id, "00f067aa0ba902b7");
        assert!(t.continued());
        let sent = t.header();
        let sent = sent.to_str().unwrap();
        assert!(sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && sent.ends_with("-01"));
        assert_eq!(parse(sent).unwrap().1, t.span_id);
        // A future version with extra fields is read by its first four.
        let t = Trace::from_headers(&headers(&[&format!("cc-{}-{}", &GOOD[3..], "extra")]));
        assert!(t.continued());
    }

    #[test]
    fn an_invalid_or_missing_traceparent_starts_a_trace() {
        for bad in [
            "",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            let t = Trace::from_headers(&headers(&[bad]));
            assert!(!t.continued(), "{bad:?} accepted");
            assert!(parse(t.header().to_str().unwrap()).is_some());
        }
        let t = Trace::from_headers(&headers(&[GOOD, GOOD]));
        assert!(!t.continued(), "two traceparent headers are ambiguous");
        let a = Trace::from_headers(&HeaderMap::new());
        let b = Trace::from_headers(&HeaderMap::new());
        assert_ne!(a.trace_id, b.trace_id);
    }

    #[test]
    fn ids_differ_between_requests_and_between_threads() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let t = Trace::from_headers(&HeaderMap::new());
            assert!(seen.insert(t.trace_id), "a trace id repeated");
            assert!(seen.insert(t.span_id), "a span id repeated");
        }
        // Every thread seeds its own generator: a fresh thread does not
        // repeat this one's ids (nor another fresh thread's).
        let here = Trace::from_headers(&HeaderMap::new());
        let there: Vec<Trace> = (0..2)
            .map(|_| std::thread::spawn(|| Trace::from_headers(&HeaderMap::new())))
            .map(|t| t.join().unwrap())
            .collect();
        assert_ne!(there[0].trace_id, there[1].trace_id);
        for t in &there {
            assert_ne!(t.trace_id, here.trace_id);
            assert!(!seen.contains(&t.trace_id));
        }
    }

    fn tracer(ratio: f64, parent_based: bool) -> (Tracer, crate::telemetry::Exporter) {
        let config = crate::config::TracesConfig {
            otlp_endpoint: "http://127.0.0.1:1".to_owned(),
            service_name: "test".to_owned(),
            sampling: crate::config::SamplingConfig {
                ratio,
                parent_based,
            },
            queue_size: 8,
            batch_size: 8,
            export_timeout: std::time::Duration::from_secs(1),
        };
        Tracer::new(&config, crate::metrics::Metrics::new().traces)
    }

    fn begin(headers: HeaderMap, tracer: Option<&Tracer>) -> Trace {
        let (mut parts, ()) = hyper::Request::post("/mcp").body(()).unwrap().into_parts();
        parts.headers = headers;
        let peer = Peer {
            spiffe_id: Arc::from("spiffe://example.org/agent"),
            not_after: 0,
        };
        Trace::begin(&parts, tracer, &peer)
    }

    fn flags(t: &Trace) -> String {
        let sent = t.header();
        sent.to_str().unwrap()[53..].to_owned()
    }

    #[test]
    fn the_flags_sent_upstream_carry_the_gateways_sampling_decision() {
        let unsampled = GOOD.replace("-01", "-00");
        // Off: exactly as before, whatever the caller sent.
        let off = begin(headers(&[&unsampled]), None);
        assert_eq!((flags(&off), off.span.is_none()), ("00".to_owned(), true));
        let off = begin(HeaderMap::new(), None);
        assert_eq!(flags(&off), "00");
        // A trace the gateway starts: sampled by the ratio.
        let (all, _q1) = tracer(1.0, true);
        let (none, _q2) = tracer(0.0, true);
        let t = begin(HeaderMap::new(), Some(&all));
        assert_eq!((flags(&t), t.span.is_some()), ("01".to_owned(), true));
        let t = begin(HeaderMap::new(), Some(&none));
        assert_eq!((flags(&t), t.span.is_some()), ("00".to_owned(), false));
        // A caller's flag is honoured (parent based), both ways.
        let t = begin(headers(&[GOOD]), Some(&none));
        assert_eq!((flags(&t), t.span.is_some()), ("01".to_owned(), true));
        let t = begin(headers(&[&unsampled]), Some(&all));
        assert_eq!((flags(&t), t.span.is_some()), ("00".to_owned(), false));
        // ... or overridden, other flag bits kept.
        let (ratio_only, _q3) = tracer(0.0, false);
        let t = begin(headers(&[&GOOD.replace("-01", "-03")]), Some(&ratio_only));
        assert_eq!((flags(&t), t.span.is_some()), ("02".to_owned(), false));
        // The continued trace keeps its id and the caller's span as parent.
        let t = begin(headers(&[GOOD]), Some(&all));
        assert_eq!(t.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.parent_span_id.as_deref(), Some("00f067aa0ba902b7"));
    }
}
