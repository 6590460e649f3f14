//! The per-identity limits (`crate::limits`) on the request path.
//!
//! When each check runs:
//! - `admit`, in `route` once the endpoint and headers are known and
//!   before the body is read: one token of the caller's rate per HTTP
//!   request (a 2025-03-26 batch is one request), and a place: a POST or
//!   DELETE holds one of `max_in_flight` until its reply ends (JSON, or
//!   the last event of an SSE reply), a GET holds one of `max_streams`
//!   until its stream closes. The place is a guard inside the response
//!   body, so it is given back however the body ends, the client going
//!   away included.
//! - `limit_tool`, in `decide_message` before the pin check and the
//!   policies: a `tools/call` of a tool a tool rule names takes a token of
//!   that rule's bucket (on the aggregated endpoint: the real upstream and
//!   tool, as the call is decided).
//!
//! A limited request is answered 429 with `Retry-After` and -32071 under
//! its id (the body is read, within the usual bounds, only to find the
//! id), counted in `mcp_gateway_limited_total` and audited; nothing
//! reaches the upstream. Must never: forward a limited request, or hold a
//! place past the end of its response.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::{Method, Response};

use crate::audit::{Outcome, Record};
use crate::limits::{Hold, Limited, Slot};
use crate::mcp::{self, Message, method};
use crate::policy::Target;
use crate::proxy::decide::{self, Verdict};
use crate::proxy::facts::RequestFacts;
use crate::proxy::reply::{self, Denial, ReplyBody};
use crate::proxy::upstream::Upstream;
use crate::proxy::{Gateway, ProxyError};

impl Gateway {
    /// The caller's token and place for this request (see the module doc).
    pub(super) fn admit(
        &self,
        method: &Method,
        facts: &RequestFacts<'_>,
    ) -> Result<Option<Slot>, Limited> {
        let hold = if *method == Method::GET {
            Hold::Stream
        } else {
            Hold::Request
        };
        self.limits.admit(&facts.peer.spiffe_id, hold)
    }

    /// A `tools/call` against its tool rule, if one names the tool.
    pub(super) fn limit_tool(
        &self,
        message: &Message<'_>,
        facts: &RequestFacts<'_>,
        up: &Upstream,
    ) -> Result<(), Limited> {
        match (message.method.as_deref(), message.target.as_deref()) {
            (Some(method::TOOLS_CALL), Some(tool)) => {
                self.limits
                    .admit_tool(&facts.peer.spiffe_id, &up.name, tool)
            }
            _ => Ok(()),
        }
    }

    /// A `tools/call` its tool rule refused: decided as refused (counted
    /// like a decision, and by the limit), audited with the limit's reason.
    pub(super) async fn refuse_tool_call(
        &self,
        message: &Message<'_>,
        facts: &RequestFacts<'_>,
        up: &Upstream,
        limited: Limited,
        correlation_id: String,
    ) -> Denial {
        let refusal = ProxyError::Limited(limited);
        let verdict = Verdict::refused(refusal.audit_reason());
        let caller = &facts.peer.spiffe_id;
        decide::count(
            &self.metrics,
            facts.policies,
            &verdict,
            method::TOOLS_CALL,
            caller,
        );
        self.metrics.limited(verdict.reason);
        let detail = Some(refusal.to_string());
        self.audit_decision(message, facts, up, verdict, &correlation_id, detail)
            .await;
        Denial {
            index: 0,
            correlation_id,
            refusal,
        }
    }

    /// A request `admit` refused: its body read only to answer under its
    /// id(s), counted, audited, never forwarded.
    pub(super) async fn refuse_limited(
        &self,
        parts: &hyper::http::request::Parts,
        body: Incoming,
        facts: &RequestFacts<'_>,
        limited: Limited,
    ) -> Response<ReplyBody> {
        let refusal = ProxyError::Limited(limited);
        let reason = refusal.audit_reason();
        self.metrics.limited(reason);
        self.metrics.refused(reason);
        let bytes = if parts.method == Method::POST {
            self.ingress.read(&parts.headers, body).await.ok()
        } else {
            super::linger(body);
            None
        };
        let parsed = bytes.as_deref().and_then(|b| mcp::parse_body(b).ok());
        let correlation_id = self.ids.next();
        let mut record = Record::new(
            &facts.exchange(),
            correlation_id.clone(),
            Outcome::Deny,
            reason,
        )
        .with_detail(Some(refusal.to_string()));
        match parsed {
            Some(mcp::Body::Single(message)) => {
                let id = message.id.as_ref().map(|id| id.raw_json());
                let method = message.method.as_deref();
                let target = method.map(|m| Target::of_method(m, message.target.as_deref()));
                record = record.about(id, method, target);
                self.audit.record(record).await;
                reply::error_response(&refusal, id, &correlation_id)
            }
            Some(mcp::Body::Batch(messages)) => {
                self.audit.record(record).await;
                let ids: Vec<&str> = messages
                    .iter()
                    .filter(|m| m.kind == mcp::Kind::Request)
                    .filter_map(|m| Some(m.id.as_ref()?.raw_json()))
                    .collect();
                if ids.is_empty() {
                    return reply::error_response(&refusal, None, &correlation_id);
                }
                reply::batch_refused(&refusal, &ids, &correlation_id)
            }
            None => {
                self.audit.record(record).await;
                reply::error_response(&refusal, None, &correlation_id)
            }
        }
    }
}

/// The response, holding `slot` until its body ends (or is dropped).
pub(super) fn hold_until_done(
    resp: Response<ReplyBody>,
    slot: Option<Slot>,
) -> Response<ReplyBody> {
    let Some(slot) = slot else {
        return resp;
    };
    resp.map(|inner| {
        http_body_util::BodyExt::boxed_unsync(SlotBody {
            inner,
            slot: Some(slot),
        })
    })
}

/// A reply body that gives its request's place back when it ends.
struct SlotBody {
    inner: ReplyBody,
    slot: Option<Slot>,
}

impl Body for SlotBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            // Ended: the place is free now, not when hyper drops the body.
            self.slot = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
