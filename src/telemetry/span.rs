//! One request's span while it is served ([`RequestSpan`]), the child span
//! of each upstream call, and the owned record both become ([`SpanRecord`]).
//!
//! A `RequestSpan` is shared by the request's stages and its way back
//! (behind an `Arc`); it ends when the last of them lets go of it (the
//! reply head sent, or an inspected reply stream ended), and is then handed
//! to the exporter. Recording takes a short, uncontended lock, never held
//! across an await; nothing here may fail a request.

use std::borrow::Cow;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use opentelemetry::trace::{Event, SpanKind, Status};
use opentelemetry::{Array, KeyValue, StringValue, Value};

use super::Tracer;

/// Events kept per span at most (one per decided message); more are
/// counted as dropped in the span itself.
const MAX_EVENTS: usize = 64;

/// A finished span, owned: what the queue carries to the exporter.
#[derive(Debug)]
pub struct SpanRecord {
    pub trace_id: u128,
    pub span_id: u64,
    /// 0: none (a root span).
    pub parent_span_id: u64,
    /// The parent is the caller's span (from its `traceparent`).
    pub parent_remote: bool,
    pub kind: SpanKind,
    pub name: Cow<'static, str>,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<KeyValue>,
    pub events: Vec<Event>,
    pub dropped_events: u32,
    pub status: Status,
}

/// One decided message, as the span records it.
pub struct Decided<'a> {
    pub method: &'a str,
    /// The tool, prompt or resource URI, when the method names one.
    pub target: Option<&'a str>,
    pub upstream: &'a str,
    pub allowed: bool,
    pub policy_ids: &'a [String],
    /// The audit reason (`policy_deny`, `pin_mismatch`, ...).
    pub reason: &'static str,
}

/// A call to an upstream in flight: started by [`RequestSpan::upstream_call`].
pub struct UpstreamCall {
    span_id: u64,
    start: SystemTime,
    began: Instant,
}

/// The span of one request while it is served.
pub struct RequestSpan {
    tracer: Tracer,
    trace_id: u128,
    span_id: u64,
    /// The caller's span, when its `traceparent` was continued.
    parent: Option<u64>,
    start: SystemTime,
    began: Instant,
    caller: Arc<str>,
    http_method: &'static str,
    state: Mutex<State>,
}

/// What the request's stages add while it is served.
#[derive(Default)]
struct State {
    /// The first decided message's method (bounded label) and target.
    name: Option<&'static str>,
    method: Option<String>,
    target: Option<String>,
    upstream: Option<String>,
    allowed: u32,
    denied: u32,
    policy_ids: Vec<String>,
    /// The first refusal's audit reason.
    reason: Option<&'static str>,
    events: Vec<Event>,
    dropped_events: u32,
    status_code: Option<u16>,
}

impl RequestSpan {
    /// Starts the span of a sampled request.
    pub fn start(
        tracer: &Tracer,
        (trace_id, span_id, parent): (u128, u64, Option<u64>),
        caller: &Arc<str>,
        http_method: &'static str,
    ) -> RequestSpan {
        RequestSpan {
            tracer: tracer.clone(),
            trace_id,
            span_id,
            parent,
            start: SystemTime::now(),
            began: Instant::now(),
            caller: Arc::clone(caller),
            http_method,
            state: Mutex::new(State::default()),
        }
    }

    /// A poisoned lock only means another stage panicked mid-record: the
    /// span is still worth what it holds.
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A message decided by policy (or refused by its pin).
    pub fn decided(&self, d: &Decided<'_>) {
        let mut s = self.state();
        if s.name.is_none() {
            s.name = Some(crate::mcp::method::metric_label(d.method));
            s.method = Some(d.method.to_owned());
            s.target = d.target.map(str::to_owned);
        }
        s.upstream.get_or_insert_with(|| d.upstream.to_owned());
        for id in d.policy_ids {
            if !s.policy_ids.contains(id) {
                s.policy_ids.push(id.clone());
            }
        }
        if d.allowed {
            s.allowed += 1;
        } else {
            s.denied += 1;
            s.reason.get_or_insert(d.reason);
        }
        if s.events.len() < MAX_EVENTS {
            s.events.push(decision_event(d));
        } else {
            s.dropped_events += 1;
        }
    }

    /// The request was refused without a decision of a message (before or
    /// while parsing, a session or transport rule).
    pub fn refused(&self, reason: &'static str, upstream: Option<&str>) {
        let mut s = self.state();
        s.denied += 1;
        s.reason.get_or_insert(reason);
        if let Some(up) = upstream {
            s.upstream.get_or_insert_with(|| up.to_owned());
        }
    }

    /// The HTTP status of the reply to the caller.
    pub fn responded(&self, status: u16) {
        self.state().status_code = Some(status);
    }

    /// An upstream call begins: its span (`span_id`) is a child of this one.
    pub fn upstream_call(&self, span_id: u64) -> UpstreamCall {
        UpstreamCall {
            span_id,
            start: SystemTime::now(),
            began: Instant::now(),
        }
    }

    /// An upstream call ended: its response head's status, or the audit
    /// reason it failed with. Its span is handed to the exporter now.
    pub fn upstream_done(&self, call: UpstreamCall, upstream: &str, outcome: Result<u16, &str>) {
        let mut attributes = vec![
            KeyValue::new("mcp.upstream", upstream.to_owned()),
            KeyValue::new("http.request.method", self.http_method),
        ];
        let status = match outcome {
            Ok(code) => {
                attributes.push(KeyValue::new("http.response.status_code", i64::from(code)));
                error_status(code)
            }
            Err(reason) => {
                attributes.push(KeyValue::new("error.type", reason.to_owned()));
                Status::error(reason.to_owned())
            }
        };
        self.tracer.submit(SpanRecord {
            trace_id: self.trace_id,
            span_id: call.span_id,
            parent_span_id: self.span_id,
            parent_remote: false,
            kind: SpanKind::Client,
            name: Cow::Borrowed("upstream"),
            start: call.start,
            end: call.start + call.began.elapsed(),
            attributes,
            events: Vec::new(),
            dropped_events: 0,
            status,
        });
    }

    fn record(&self) -> SpanRecord {
        let mut s = self.state();
        let mut attributes = vec![
            KeyValue::new("spiffe.caller_id", self.caller.to_string()),
            KeyValue::new("http.request.method", self.http_method),
        ];
        let strings = [
            ("mcp.method", s.method.take()),
            ("mcp.target", s.target.take()),
            ("mcp.upstream", s.upstream.take()),
        ];
        for (key, value) in strings {
            if let Some(value) = value {
                attributes.push(KeyValue::new(key, value));
            }
        }
        if let Some(decision) = decision(s.allowed, s.denied) {
            attributes.push(KeyValue::new("mcp.decision", decision));
        }
        if !s.policy_ids.is_empty() {
            attributes.push(KeyValue::new(
                "mcp.policy_ids",
                strings_value(&s.policy_ids),
            ));
        }
        if let Some(reason) = s.reason {
            attributes.push(KeyValue::new("mcp.reason", reason));
        }
        if s.allowed + s.denied > 1 {
            attributes.push(KeyValue::new(
                "mcp.messages",
                i64::from(s.allowed + s.denied),
            ));
        }
        let status = match s.status_code {
            Some(code) => {
                attributes.push(KeyValue::new("http.response.status_code", i64::from(code)));
                error_status(code)
            }
            None => Status::Unset,
        };
        SpanRecord {
            trace_id: self.trace_id,
            span_id: self.span_id,
            parent_span_id: self.parent.unwrap_or(0),
            parent_remote: self.parent.is_some(),
            kind: SpanKind::Server,
            name: Cow::Borrowed(s.name.unwrap_or(self.http_method)),
            start: self.start,
            end: self.start + self.began.elapsed(),
            attributes,
            events: std::mem::take(&mut s.events),
            dropped_events: s.dropped_events,
            status,
        }
    }
}

impl Drop for RequestSpan {
    /// The request is done (its last holder let go): the span is exported.
    fn drop(&mut self) {
        let record = self.record();
        self.tracer.submit(record);
    }
}

impl std::fmt::Debug for RequestSpan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestSpan")
            .field("trace_id", &format_args!("{:032x}", self.trace_id))
            .field("span_id", &format_args!("{:016x}", self.span_id))
            .finish_non_exhaustive()
    }
}

/// `allow` when every message was allowed, `deny` when none was,
/// `partial` when a batch was split; nothing when nothing was decided.
fn decision(allowed: u32, denied: u32) -> Option<&'static str> {
    match (allowed, denied) {
        (0, 0) => None,
        (_, 0) => Some("allow"),
        (0, _) => Some("deny"),
        _ => Some("partial"),
    }
}

/// 5xx is the gateway's or the upstream's failure; 4xx is the caller's
/// (OpenTelemetry's HTTP server convention).
fn error_status(code: u16) -> Status {
    if code >= 500 {
        Status::error(format!("HTTP {code}"))
    } else {
        Status::Unset
    }
}

fn strings_value(values: &[String]) -> Value {
    let values = values.iter().cloned().map(StringValue::from).collect();
    Value::Array(Array::String(values))
}

fn decision_event(d: &Decided<'_>) -> Event {
    let mut attributes = vec![
        KeyValue::new("mcp.method", d.method.to_owned()),
        KeyValue::new("mcp.upstream", d.upstream.to_owned()),
        KeyValue::new("mcp.decision", if d.allowed { "allow" } else { "deny" }),
        KeyValue::new("mcp.reason", d.reason),
    ];
    if let Some(target) = d.target {
        attributes.push(KeyValue::new("mcp.target", target.to_owned()));
    }
    if !d.policy_ids.is_empty() {
        attributes.push(KeyValue::new("mcp.policy_ids", strings_value(d.policy_ids)));
    }
    Event::new("mcp.decision", SystemTime::now(), attributes, 0)
}
