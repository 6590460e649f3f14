//! The way back: what the upstream sends the agent is inspected too.
//!
//! - Server-to-client requests (`sampling/createMessage`,
//!   `elicitation/create`, `roots/list`, and any other request but `ping`)
//!   arriving on an SSE stream are decided with the upstream's workload as
//!   principal and the agent's workload as resource. A denied one is answered
//!   to the upstream with a JSON-RPC error and never shown to the agent.
//! - `tools/list`, `prompts/list`, `resources/list` and
//!   `resources/templates/list` results are filtered to what the caller may
//!   use (the `tools/call`, `prompts/get` or `resources/read` decision for
//!   each entry). Each page is filtered on its own and `nextCursor` is kept,
//!   so pagination stays correct (a page may come back shorter).
//! - An SSE event the strict parser refuses is dropped and audited: what the
//!   agent's SDK would read must be what the gateway read.
//!
//! SSE streams are never buffered whole: a task reads the upstream body,
//! passes each event on as soon as it is complete, and waits when the agent
//! reads slowly (a bounded channel). A JSON reply is read whole only when it
//! may have to be rewritten: it answers a list request, a partly forwarded
//! batch, or a 2026-07-28 `tools/call`/`prompts/get`/`resources/read` whose
//! `InputRequiredResult` embeds server-to-client requests to decide.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Response};
use serde_json::Value;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::audit::{Exchange, Outcome, Record};
use crate::mcp::method::{self, ListKind};
use crate::mcp::sse::{SseEvent, SseParser};
use crate::mcp::{self, Kind, Message};
use crate::policy::{self, Target, User};
use crate::policy_store::Policies;
use crate::proxy::decide::{self, Subject};
use crate::proxy::error::CODE_DENIED;
use crate::proxy::listener::Peer;
use crate::proxy::reply::{self, ReplyBody, jsonrpc_error};
use crate::proxy::upstream::Upstream;
use crate::proxy::{Gateway, ProxyError, forward, protocol};

/// Largest SSE event the gateway will hold while deciding on it.
const MAX_EVENT_BYTES: usize = 4 << 20;
/// Largest JSON list reply the gateway will read to filter it.
pub(super) const MAX_LIST_REPLY_BYTES: usize = 16 << 20;
/// Events in flight between the upstream reader and the agent.
const CHANNEL: usize = 16;

/// A list request of the caller's whose reply must be filtered.
pub struct PendingList {
    id: Value,
    kind: ListKind,
}

/// What the gateway did to a reply on its way back, as audited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WayBack {
    /// Entries the caller may not use were taken out of a list result: the
    /// reply was allowed, trimmed.
    ListFiltered(ListKind),
    /// The upstream's SSE stream broke the event grammar: closed.
    SseError,
    /// The upstream sent a batch in an SSE event: withheld.
    BatchRefused,
    /// The upstream sent an event that is not one JSON-RPC message: withheld.
    ParseError,
}

impl WayBack {
    fn reason(self) -> &'static str {
        match self {
            WayBack::ListFiltered(_) => "list_filtered",
            WayBack::SseError => "upstream_sse_error",
            WayBack::BatchRefused => "upstream_batch_refused",
            WayBack::ParseError => "upstream_parse_error",
        }
    }

    fn outcome(self) -> Outcome {
        match self {
            WayBack::ListFiltered(_) => Outcome::Allow,
            WayBack::SseError | WayBack::BatchRefused | WayBack::ParseError => Outcome::Deny,
        }
    }

    /// The method the record names: the list method that was filtered.
    fn method(self) -> Option<&'static str> {
        match self {
            WayBack::ListFiltered(kind) => Some(kind.method()),
            WayBack::SseError | WayBack::BatchRefused | WayBack::ParseError => None,
        }
    }
}

impl PendingList {
    /// A list request the gateway itself sent (the aggregated endpoint),
    /// whose reply is filtered like a caller's.
    pub(super) fn new(kind: ListKind, id: Value) -> PendingList {
        PendingList { id, kind }
    }
}

/// Everything the way back needs to know about the request it answers.
pub struct ReplyContext {
    /// The upstream the reply comes from.
    pub upstream: Arc<Upstream>,
    pub peer: Peer,
    pub session_id: Option<String>,
    pub protocol_version: Option<String>,
    pub user: Option<Arc<User>>,
    pub trace: super::trace::Trace,
    /// The policies the request was decided by: list entries are filtered
    /// and way-back records cite the same set, so one exchange never cites
    /// two policy versions across a reload. (A server-to-client request is
    /// a message of its own, decided by the set in force when it arrives.)
    pub policies: Arc<Policies>,
    pub lists: Vec<PendingList>,
    /// A 2026-07-28 request whose result may be an `InputRequiredResult`
    /// carrying server-to-client requests to decide.
    pub input_requests_possible: bool,
    /// Answers the gateway adds to the upstream's reply: the errors for the
    /// denied elements of a partly forwarded batch.
    pub extra_answers: Vec<Vec<u8>>,
    /// The id (raw JSON) of the one request this reply answers, if any: an
    /// SSE reply that goes idle before answering it gets an error for it.
    pub awaiting: Option<String>,
}

impl ReplyContext {
    /// The policy input's shared part, with `principal` asking.
    fn subject<'a>(&'a self, principal: &'a str) -> Subject<'a> {
        Subject {
            principal,
            server: &self.upstream,
            session_id: self.session_id.as_deref(),
            protocol_version: self.protocol_version.as_deref(),
            user: self.user.as_deref(),
        }
    }

    /// What every audit record of the exchange repeats, citing the policy
    /// set the request was decided by.
    fn exchange(&self) -> Exchange<'_> {
        Exchange {
            caller: &self.peer.spiffe_id,
            upstream: &self.upstream.name,
            upstream_spiffe_id: &self.upstream.spiffe_id,
            session_id: self.session_id.as_deref(),
            protocol_version: self.protocol_version.as_deref(),
            user: self.user.as_deref(),
            trace_id: &self.trace.trace_id,
            span_id: &self.trace.span_id,
            policy_version: self.policies.enforced.version(),
        }
    }
}

/// Whether a reply to these messages may carry 2026-07-28 input requests.
pub fn input_requests_possible(messages: &[Message<'_>], header: Option<&str>) -> bool {
    messages.iter().any(|m| {
        protocol::is_modern(m, header) && m.method.as_deref().is_some_and(method::is_named_call)
    })
}

impl ReplyContext {
    fn rewrites_responses(&self) -> bool {
        !self.lists.is_empty() || self.input_requests_possible
    }
}

/// The list requests among the caller's messages.
pub fn pending_lists(messages: &[Message<'_>]) -> Vec<PendingList> {
    messages
        .iter()
        .filter(|m| m.kind == Kind::Request)
        .filter_map(|m| {
            let kind = method::list_kind(m.method.as_deref()?)?;
            let id = serde_json::from_str(m.id.as_ref()?.raw_json()).ok()?;
            Some(PendingList { id, kind })
        })
        .collect()
}

fn is_event_stream(resp: &Response<Incoming>) -> bool {
    resp.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("text/event-stream")
        })
}

impl Gateway {
    /// The upstream's reply as the agent may see it.
    pub(super) async fn inspect_reply(
        self: &Arc<Self>,
        resp: Response<Incoming>,
        ctx: ReplyContext,
    ) -> Response<ReplyBody> {
        if is_event_stream(&resp) {
            return self.inspect_stream(resp, ctx);
        }
        if resp.status() == hyper::StatusCode::ACCEPTED && !ctx.extra_answers.is_empty() {
            // Only notifications were forwarded; the caller still gets the
            // answers for its denied requests.
            return reply::json_ok(reply::json_array(&ctx.extra_answers));
        }
        // A refused batch still owes the caller the answers for its denied
        // elements; list filtering applies to successful replies only.
        let rewrite = (resp.status().is_success() && ctx.rewrites_responses())
            || !ctx.extra_answers.is_empty();
        if !rewrite {
            return ctx.upstream.reply(resp);
        }
        self.filter_json_reply(resp, &ctx).await
    }

    /// Streams SSE through a task that decides each event.
    fn inspect_stream(
        self: &Arc<Self>,
        resp: Response<Incoming>,
        ctx: ReplyContext,
    ) -> Response<ReplyBody> {
        // The pump bounds the silences itself, so it can answer the
        // awaited request when the upstream goes quiet.
        let (mut parts, body) = reply::from_upstream(resp).into_parts();
        // Events may be dropped or rewritten: the upstream's length no
        // longer holds (the agent's connection would break mid-reply).
        parts.headers.remove(header::CONTENT_LENGTH);
        let (tx, rx) = mpsc::channel(CHANNEL);
        let gateway = Arc::clone(self);
        tokio::spawn(async move { gateway.pump_events(body, tx, ctx).await });
        Response::from_parts(parts, ChannelBody { rx }.boxed_unsync())
    }

    async fn pump_events(
        &self,
        mut body: ReplyBody,
        tx: mpsc::Sender<Result<Frame<Bytes>, hyper::Error>>,
        ctx: ReplyContext,
    ) {
        for answer in &ctx.extra_answers {
            let mut event = Vec::with_capacity(answer.len() + 24);
            event.extend_from_slice(b"event: message\ndata: ");
            event.extend_from_slice(answer);
            event.extend_from_slice(b"\n\n");
            if tx.send(Ok(Frame::data(Bytes::from(event)))).await.is_err() {
                return;
            }
        }
        let mut parser = SseParser::new(MAX_EVENT_BYTES);
        let mut events = Vec::new();
        let mut answered = ctx.awaiting.is_none();
        loop {
            let read = tokio::time::timeout(ctx.upstream.stream_idle_timeout, body.frame());
            let read = tokio::select! {
                biased;
                // The agent went away (its connection closed and hyper
                // dropped the body): returning drops `body`, which ends the
                // upstream stream now rather than at its idle timeout.
                () = tx.closed() => return,
                read = read => read,
            };
            let Ok(frame) = read else {
                self.end_idle_stream(&tx, &ctx, answered).await;
                return;
            };
            let Some(frame) = frame else {
                return;
            };
            let data = match frame {
                Ok(frame) => match frame.into_data() {
                    Ok(data) => data,
                    Err(_) => continue, // trailers: nothing to pass on
                },
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            if let Err(e) = parser.push(&data, &mut events) {
                warn!(error = %e, "upstream SSE stream refused; closing it");
                self.audit_way_back(&ctx, WayBack::SseError, Some(e.to_string()))
                    .await;
                return;
            }
            for event in events.drain(..) {
                if let Some(bytes) = self.inspect_event(event, &ctx, &mut answered).await
                    && tx.send(Ok(Frame::data(bytes))).await.is_err()
                {
                    return; // the agent went away; dropping the body ends the upstream stream
                }
            }
        }
    }

    /// The upstream's SSE stream sent nothing for `stream_idle_timeout`: it
    /// is ended (dropping it closes the upstream stream). A request still
    /// unanswered gets a timeout error first, so the agent's SDK does not
    /// wait on a stream that is gone.
    async fn end_idle_stream(
        &self,
        tx: &mpsc::Sender<Result<Frame<Bytes>, hyper::Error>>,
        ctx: &ReplyContext,
        answered: bool,
    ) {
        warn!(
            upstream = %ctx.upstream.name,
            idle_seconds = ctx.upstream.stream_idle_timeout.as_secs(),
            "upstream SSE stream idle too long; ending it"
        );
        ctx.upstream.metrics.stream_idle.inc();
        let refusal = ProxyError::UpstreamStreamIdle;
        let correlation_id = self.ids.next();
        let reason = refusal.audit_reason();
        self.audit_way_back_as(ctx, &correlation_id, reason, Outcome::UpstreamError)
            .await;
        if answered {
            return;
        }
        let (_, code) = refusal.status_and_code();
        let error = jsonrpc_error(
            ctx.awaiting.as_deref(),
            code,
            &refusal.to_string(),
            &correlation_id,
        );
        let mut event = Vec::with_capacity(error.len() + 24);
        event.extend_from_slice(b"event: message\ndata: ");
        event.extend_from_slice(&error);
        event.extend_from_slice(b"\n\n");
        let _ = tx.send(Ok(Frame::data(Bytes::from(event)))).await;
    }

    /// One SSE event: the bytes to pass on, or `None` to withhold it.
    /// Sets `answered` when the event answers the request the reply is for.
    async fn inspect_event(
        &self,
        event: SseEvent,
        ctx: &ReplyContext,
        answered: &mut bool,
    ) -> Option<Bytes> {
        // Keep-alives, id-only blocks and the empty priming event of a
        // resumable stream carry no message.
        if !event.has_data || event.data.trim().is_empty() {
            return Some(event.raw);
        }
        let message = match mcp::parse_body(event.data.as_bytes()) {
            Ok(mcp::Body::Single(m)) => m,
            Ok(mcp::Body::Batch(_)) => {
                self.audit_way_back(ctx, WayBack::BatchRefused, None).await;
                return None;
            }
            Err(e) => {
                self.audit_way_back(ctx, WayBack::ParseError, Some(e.to_string()))
                    .await;
                return None;
            }
        };
        if message.kind == Kind::Response
            && let (Some(id), Some(awaiting)) = (&message.id, ctx.awaiting.as_deref())
            && id.raw_json() == awaiting
        {
            *answered = true;
        }
        match (message.kind, message.method.as_deref()) {
            (Kind::Request, Some(method)) if method != "ping" => {
                if self.decide_server_request(&message, method, ctx).await {
                    Some(event.raw)
                } else {
                    None
                }
            }
            (Kind::Response, _) if ctx.rewrites_responses() => {
                let mut value: Value = serde_json::from_str(&event.data).ok()?;
                if self.rewrite_response(&mut value, ctx).await {
                    Some(rebuild_event(&event, &value))
                } else {
                    Some(event.raw)
                }
            }
            _ => Some(event.raw),
        }
    }

    /// Decides a server-to-client request; a denied one is answered to the
    /// upstream with an error. Returns whether the agent may see it.
    async fn decide_server_request(
        &self,
        message: &Message<'_>,
        method: &str,
        ctx: &ReplyContext,
    ) -> bool {
        let id = message.id.as_ref().map(|id| id.raw_json());
        let (allowed, correlation_id) = self
            .decide_for_agent(method, id, "server-to-client request", ctx)
            .await;
        if !allowed && let Some(id) = id {
            self.answer_upstream(id, &correlation_id, ctx).await;
        }
        allowed
    }

    /// Tells the upstream its request to the agent was refused.
    async fn answer_upstream(&self, id: &str, correlation_id: &str, ctx: &ReplyContext) {
        let body = jsonrpc_error(
            Some(id),
            CODE_DENIED,
            "forbidden by gateway policy",
            correlation_id,
        );
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/json, text/event-stream"),
        );
        for (name, value) in [
            (protocol::SESSION_HEADER, ctx.session_id.as_deref()),
            (
                protocol::PROTOCOL_VERSION_HEADER,
                ctx.protocol_version.as_deref(),
            ),
        ] {
            if let Some(v) = value.and_then(|v| HeaderValue::from_str(v).ok()) {
                h.insert(name, v);
            }
        }
        let req = forward::request(&ctx.upstream, Method::POST, Bytes::from(body), h);
        let sent = ctx.upstream.client.request(req);
        match tokio::time::timeout(ctx.upstream.request_timeout, sent).await {
            Ok(Ok(resp)) => debug!(status = %resp.status(), "refusal sent to the upstream"),
            Ok(Err(e)) => warn!(error = %e, "sending a refusal to the upstream failed"),
            Err(_) => warn!("sending a refusal to the upstream timed out"),
        }
    }

    /// Reads a JSON reply to list requests whole and filters it.
    async fn filter_json_reply(
        &self,
        resp: Response<Incoming>,
        ctx: &ReplyContext,
    ) -> Response<ReplyBody> {
        let (mut parts, body) = resp.into_parts();
        let limit = MAX_LIST_REPLY_BYTES;
        let bytes = match read_reply(body, limit, ctx.upstream.stream_idle_timeout).await {
            Ok(bytes) => bytes,
            Err(refusal) => {
                warn!(upstream = %ctx.upstream.name, error = %refusal, "reading a reply to rewrite failed");
                self.metrics.upstream_error(refusal.audit_reason());
                let correlation_id = self.ids.next();
                let reason = refusal.audit_reason();
                self.audit_way_back_as(ctx, &correlation_id, reason, Outcome::UpstreamError)
                    .await;
                return reply::error_response(&refusal, ctx.awaiting.as_deref(), &correlation_id);
            }
        };
        let body = match serde_json::from_slice::<Value>(&bytes) {
            Ok(mut value) => {
                let added = merge_answers(&mut value, &ctx.extra_answers);
                let changed = added
                    | match &mut value {
                        Value::Array(items) => {
                            let mut any = false;
                            for item in items {
                                any |= self.rewrite_response(item, ctx).await;
                            }
                            any
                        }
                        single => self.rewrite_response(single, ctx).await,
                    };
                if changed {
                    Bytes::from(serde_json::to_vec(&value).unwrap_or_default())
                } else {
                    bytes
                }
            }
            // Not JSON: the gateway's own answers are all the caller can use.
            Err(_) if !ctx.extra_answers.is_empty() => {
                Bytes::from(reply::json_array(&ctx.extra_answers))
            }
            Err(_) => bytes,
        };
        parts.headers.remove(header::CONTENT_LENGTH);
        Response::from_parts(
            parts,
            Full::new(body)
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
    }

    /// Applies the way-back rules to one JSON-RPC response; returns whether
    /// it changed.
    async fn rewrite_response(&self, value: &mut Value, ctx: &ReplyContext) -> bool {
        if self.filter_list_value(value, ctx).await {
            return true;
        }
        ctx.input_requests_possible && self.decide_input_requests(value, ctx).await
    }

    /// 2026-07-28: the server-to-client requests an `InputRequiredResult`
    /// embeds are decided like standalone ones. If any is denied, the whole
    /// result becomes a -32060 error for the caller's request, so the agent
    /// never sees the denied request (and cannot loop on retries).
    async fn decide_input_requests(&self, value: &mut Value, ctx: &ReplyContext) -> bool {
        let Some(requests) = value
            .get("result")
            .filter(|r| r.get("resultType").and_then(Value::as_str) == Some("input_required"))
            .and_then(|r| r.get("inputRequests"))
            .and_then(Value::as_object)
        else {
            return false;
        };
        let mut refused = None;
        for request in requests.values() {
            let method = request.get("method").and_then(Value::as_str).unwrap_or("");
            let (allowed, correlation_id) = self
                .decide_for_agent(method, None, "input request in an InputRequiredResult", ctx)
                .await;
            if !allowed {
                refused = Some(correlation_id);
                break;
            }
        }
        let Some(correlation_id) = refused else {
            return false;
        };
        let id = value.get("id").cloned().unwrap_or(Value::Null);
        *value = serde_json::json!({
            "jsonrpc": "2.0",
            "id": id,
            "error": {
                "code": CODE_DENIED,
                "message": "forbidden by gateway policy",
                "data": { "correlation_id": correlation_id },
            },
        });
        true
    }

    /// Decides a request of the upstream's to the agent (the upstream's
    /// workload as principal, the agent's as resource) and audits it.
    /// Returns whether it is allowed, and the audit record's correlation id.
    async fn decide_for_agent(
        &self,
        method: &str,
        request_id: Option<&str>,
        detail: &'static str,
        ctx: &ReplyContext,
    ) -> (bool, String) {
        let policies = self.policies.current();
        let subject = ctx.subject(&ctx.upstream.spiffe_id);
        let input = subject.input(method, Target::Workload(&ctx.peer.spiffe_id), None);
        let (decision, shadow) = decide::with_shadow(&policies, &input, &self.metrics);
        self.metrics
            .decision(decision.allowed, method, &ctx.upstream.spiffe_id);
        let correlation_id = self.ids.next();
        let exchange = Exchange {
            caller: &ctx.upstream.spiffe_id,
            policy_version: policies.enforced.version(),
            ..ctx.exchange()
        };
        let outcome = if decision.allowed {
            Outcome::Allow
        } else {
            Outcome::Deny
        };
        let target = Target::Workload(&ctx.peer.spiffe_id);
        let reason = decision.reason.as_str();
        let record = Record::new(&exchange, correlation_id.clone(), outcome, reason)
            .about(request_id, Some(method), Some(target))
            .decided_by(decision.policy_ids, shadow)
            .with_detail(Some(detail.to_owned()));
        self.audit.record(record).await;
        (decision.allowed, correlation_id)
    }

    /// Filters one JSON-RPC response if it answers a pending list request.
    /// Returns whether it changed.
    pub(super) async fn filter_list_value(&self, value: &mut Value, ctx: &ReplyContext) -> bool {
        let Some(kind) = value
            .get("id")
            .and_then(|id| ctx.lists.iter().find(|p| p.id == *id))
            .map(|p| p.kind)
        else {
            return false;
        };
        let (field, action) = (kind.field(), kind.use_method());
        let now_unix_ms = policy::now_unix_ms();
        // Lists are filtered by the enforced set the request was decided by
        // (shadow mode decides messages, not list entries).
        let subject = ctx.subject(&ctx.peer.spiffe_id);
        let filtered = filter_entries(value, kind, |name| {
            let mut input = subject.input(action, Target::named(kind.entry_kind(), name), None);
            input.now_unix_ms = now_unix_ms;
            ctx.policies.enforced.decide(&input).allowed
        });
        let Some((hidden, before)) = filtered.filter(|(hidden, _)| *hidden > 0) else {
            return false;
        };
        let detail = format!("hid {hidden} of {before} {field} the caller may not use");
        self.audit_way_back(ctx, WayBack::ListFiltered(kind), Some(detail))
            .await;
        true
    }

    /// The audit record of an upstream failure on the way back.
    pub(super) async fn audit_way_back_as(
        &self,
        ctx: &ReplyContext,
        correlation_id: &str,
        reason: &'static str,
        decision: Outcome,
    ) {
        let record = Record::new(&ctx.exchange(), correlation_id.to_owned(), decision, reason);
        self.audit.record(record).await;
    }

    /// An audit record for something done on the way back.
    async fn audit_way_back(&self, ctx: &ReplyContext, event: WayBack, detail: Option<String>) {
        let record = Record::new(
            &ctx.exchange(),
            self.ids.next(),
            event.outcome(),
            event.reason(),
        )
        .about(None, event.method(), None)
        .with_detail(detail);
        self.audit.record(record).await;
    }
}

/// Keeps the entries of one list result page that `allowed` admits; every
/// other member of the result (`nextCursor` above all) is left as it is, so
/// the caller can page on. An entry without its name is dropped: it cannot be
/// authorized. Returns (hidden, before), or `None` when the value is not a
/// list result of that kind.
fn filter_entries(
    value: &mut Value,
    kind: ListKind,
    mut allowed: impl FnMut(&str) -> bool,
) -> Option<(usize, usize)> {
    let (field, key) = (kind.field(), kind.entry_key());
    let Some(Value::Array(entries)) = value.get_mut("result").and_then(|r| r.get_mut(field)) else {
        return None;
    };
    let before = entries.len();
    entries.retain(|entry| {
        entry
            .get(key)
            .and_then(Value::as_str)
            .is_some_and(&mut allowed)
    });
    Some((before - entries.len(), before))
}

/// Adds the gateway's own answers to a JSON reply (turning a single
/// response into a batch reply). Returns whether anything was added.
fn merge_answers(value: &mut Value, answers: &[Vec<u8>]) -> bool {
    let extra: Vec<Value> = answers
        .iter()
        .filter_map(|a| serde_json::from_slice(a).ok())
        .collect();
    if extra.is_empty() {
        return false;
    }
    match value {
        Value::Array(items) => items.extend(extra),
        single => {
            let first = single.take();
            *single = Value::Array(std::iter::once(first).chain(extra).collect());
        }
    }
    true
}

/// The event with its data replaced (event type and id kept).
fn rebuild_event(event: &SseEvent, value: &Value) -> Bytes {
    let mut out = String::with_capacity(event.data.len() + 64);
    if let Some(ev) = &event.event {
        out.push_str("event: ");
        out.push_str(ev);
        out.push('\n');
    }
    if let Some(id) = &event.id {
        out.push_str("id: ");
        out.push_str(id);
        out.push('\n');
    }
    out.push_str("data: ");
    out.push_str(&serde_json::to_string(value).unwrap_or_default());
    out.push_str("\n\n");
    Bytes::from(out)
}

/// Reads an upstream reply whole: at most `limit` bytes, and no silence
/// longer than `idle` (a reply cut short is an error, never passed on).
pub(super) async fn read_reply<B>(
    mut body: B,
    limit: usize,
    idle: Duration,
) -> Result<Bytes, ProxyError>
where
    B: Body<Data = Bytes> + Unpin,
{
    let mut out = Vec::new();
    loop {
        let frame = match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => return Err(ProxyError::UpstreamStreamIdle),
            Ok(None) => return Ok(Bytes::from(out)),
            Ok(Some(Err(_))) => return Err(ProxyError::UpstreamUnavailable),
            Ok(Some(Ok(frame))) => frame,
        };
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > limit {
                return Err(ProxyError::UpstreamUnavailable);
            }
            out.extend_from_slice(&data);
        }
    }
}

/// A response body fed by the event task.
struct ChannelBody {
    rx: mpsc::Receiver<Result<Frame<Bytes>, hyper::Error>>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        self.rx.poll_recv(cx)
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// One frame, then silence forever.
    struct Stall(Option<&'static str>);

    impl Body for Stall {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            match self.0.take() {
                Some(s) => Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(s.as_bytes()))))),
                None => Poll::Pending,
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_reply_that_stalls_is_an_error_not_a_truncated_body() {
        let started = tokio::time::Instant::now();
        let err = read_reply(Stall(Some("{\"jsonrpc\":")), 1024, Duration::from_secs(3))
            .await
            .unwrap_err();
        assert!(matches!(err, ProxyError::UpstreamStreamIdle), "{err}");
        assert_eq!(started.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test]
    async fn a_reply_is_read_whole_within_its_limit() {
        let body = Full::new(Bytes::from_static(b"{\"a\":1}"));
        let got = read_reply(body, 7, Duration::from_secs(1)).await.unwrap();
        assert_eq!(&got[..], b"{\"a\":1}");
        let body = Full::new(Bytes::from_static(b"{\"a\":1}"));
        let err = read_reply(body, 6, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(err, ProxyError::UpstreamUnavailable), "{err}");
    }

    #[test]
    fn a_filtered_page_keeps_its_cursor_and_everything_else() {
        let mut page = json!({"jsonrpc": "2.0", "id": 7, "result": {
            "tools": [{"name": "echo"}, {"name": "delete_repository"}, {"title": "no name"}],
            "nextCursor": "page-2",
            "_meta": {"k": 1},
        }});
        let got = filter_entries(&mut page, ListKind::Tools, |n| n == "echo");
        assert_eq!(got, Some((2, 3)));
        assert_eq!(page["result"]["tools"], json!([{"name": "echo"}]));
        assert_eq!(page["result"]["nextCursor"], "page-2");
        assert_eq!(page["result"]["_meta"], json!({"k": 1}));
        assert_eq!(page["id"], 7);
    }

    #[test]
    fn an_emptied_page_still_pages_on() {
        let mut page =
            json!({"id": 1, "result": {"resources": [{"uri": "file:///a"}], "nextCursor": "c"}});
        assert_eq!(
            filter_entries(&mut page, ListKind::Resources, |_| false),
            Some((1, 1))
        );
        assert_eq!(page["result"], json!({"resources": [], "nextCursor": "c"}));
    }

    #[test]
    fn each_list_kind_reads_its_own_field() {
        let cases = [
            (ListKind::Tools, json!({"tools": [{"name": "x"}]})),
            (ListKind::Prompts, json!({"prompts": [{"name": "x"}]})),
            (ListKind::Resources, json!({"resources": [{"uri": "x"}]})),
            (
                ListKind::Templates,
                json!({"resourceTemplates": [{"uriTemplate": "x"}]}),
            ),
        ];
        for (kind, result) in cases {
            let mut seen = Vec::new();
            let mut value = json!({"id": 1, "result": result});
            filter_entries(&mut value, kind, |n| {
                seen.push(n.to_owned());
                true
            });
            assert_eq!(seen, ["x"]);
        }
    }

    #[test]
    fn errors_and_other_results_are_not_lists() {
        let mut error = json!({"id": 1, "error": {"code": -1, "message": "m"}});
        assert_eq!(filter_entries(&mut error, ListKind::Tools, |_| false), None);
        let mut other = json!({"id": 1, "result": {"content": []}});
        assert_eq!(filter_entries(&mut other, ListKind::Tools, |_| false), None);
    }
}
