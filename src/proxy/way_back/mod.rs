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

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::Response;
use hyper::body::{Body, Incoming};
use hyper::header::{self};
use serde_json::Value;

use crate::audit::{AuditLog, CorrelationIds, Exchange, Outcome, Reason, Record};
use crate::mcp::method::{self, ListKind};
use crate::mcp::{Kind, Message};
use crate::metrics::Metrics;
use crate::policy::User;
use crate::policy_store::{Policies, PolicyStore};
use crate::proxy::decide::Subject;
use crate::proxy::listener::Peer;
use crate::proxy::reply::{self, ReplyBody};
use crate::proxy::upstream::Upstream;
use crate::proxy::{ProxyError, protocol};

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
enum Event {
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

impl Event {
    fn reason(self) -> Reason {
        match self {
            Event::ListFiltered(_) => Reason::ListFiltered,
            Event::SseError => Reason::UpstreamSseError,
            Event::BatchRefused => Reason::UpstreamBatchRefused,
            Event::ParseError => Reason::UpstreamParseError,
        }
    }

    fn outcome(self) -> Outcome {
        match self {
            Event::ListFiltered(_) => Outcome::Allow,
            Event::SseError | Event::BatchRefused | Event::ParseError => Outcome::Deny,
        }
    }

    /// The method the record names: the list method that was filtered.
    fn method(self) -> Option<&'static str> {
        match self {
            Event::ListFiltered(kind) => Some(kind.method()),
            Event::SseError | Event::BatchRefused | Event::ParseError => None,
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

/// The reply side of the pipeline: inspects what upstreams send back and
/// counts and audits what it does. A list reply is filtered by the policy
/// snapshot its request was decided on (carried in its [`ReplyContext`]);
/// a server-to-client request, which may arrive long after on a stream, by
/// the policies current when it arrives (a revoked permission applies to
/// streams already open).
pub struct WayBack {
    policies: Arc<PolicyStore>,
    audit: AuditLog,
    metrics: Metrics,
    ids: Arc<CorrelationIds>,
}

impl WayBack {
    pub fn new(
        policies: Arc<PolicyStore>,
        audit: AuditLog,
        metrics: Metrics,
        ids: Arc<CorrelationIds>,
    ) -> WayBack {
        WayBack {
            policies,
            audit,
            metrics,
            ids,
        }
    }
}

/// Whether an upstream reply is an SSE stream (by its content type).
pub(in crate::proxy) fn is_event_stream(resp: &Response<Incoming>) -> bool {
    resp.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("text/event-stream")
        })
}

impl WayBack {
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

    /// The audit record of an upstream failure on the way back.
    pub(super) async fn audit_way_back_as(
        &self,
        ctx: &ReplyContext,
        correlation_id: &str,
        reason: Reason,
        decision: Outcome,
    ) {
        let record = Record::new(&ctx.exchange(), correlation_id.to_owned(), decision, reason);
        self.audit.record(record).await;
    }

    /// An audit record for something done on the way back.
    async fn audit_way_back(&self, ctx: &ReplyContext, event: Event, detail: Option<String>) {
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
    // A reply that comes in one frame is kept as it came, not copied.
    let mut whole = Bytes::new();
    let mut out = Vec::new();
    loop {
        let frame = match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => return Err(ProxyError::UpstreamStreamIdle),
            Ok(None) if out.is_empty() => return Ok(whole),
            Ok(None) => return Ok(Bytes::from(out)),
            Ok(Some(Err(_))) => return Err(ProxyError::UpstreamUnavailable),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if whole.len() + out.len() + data.len() > limit {
            return Err(ProxyError::UpstreamUnavailable);
        }
        if whole.is_empty() && out.is_empty() {
            whole = data;
        } else {
            out.extend_from_slice(&std::mem::take(&mut whole));
            out.extend_from_slice(&data);
        }
    }
}

mod json;
mod lists;
mod server_requests;
mod stream;
#[cfg(test)]
mod tests;
