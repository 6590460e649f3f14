//! The way back for SSE: a task reads the upstream's stream, decides each
//! event as it completes, and passes it on through a bounded channel.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::Response;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{self};
use serde_json::Value;
use tokio::sync::mpsc;
use tracing::warn;

use super::{CHANNEL, Event, MAX_EVENT_BYTES, ReplyContext, WayBack};
use crate::audit::Outcome;
use crate::mcp::sse::{SseEvent, SseParser};
use crate::mcp::{self, Kind};
use crate::proxy::ProxyError;
use crate::proxy::reply::{self, ReplyBody, jsonrpc_error};

impl WayBack {
    /// Streams SSE through a task that decides each event.
    pub(super) fn inspect_stream(
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
        let way_back = Arc::clone(self);
        tokio::spawn(async move { way_back.pump_events(body, tx, ctx).await });
        Response::from_parts(parts, ChannelBody { rx }.boxed_unsync())
    }

    pub(super) async fn pump_events(
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
                self.audit_way_back(&ctx, Event::SseError, Some(e.to_string()))
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
    pub(super) async fn end_idle_stream(
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
    pub(super) async fn inspect_event(
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
                self.audit_way_back(ctx, Event::BatchRefused, None).await;
                return None;
            }
            Err(e) => {
                self.audit_way_back(ctx, Event::ParseError, Some(e.to_string()))
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
            (Kind::Notification, Some(method)) => {
                if let Some(kind) = crate::pins::list_changed(method) {
                    // Checked before the next call (`proxy::pinning`).
                    ctx.upstream.observed.mark_stale(kind);
                }
                Some(event.raw)
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
}

/// The event with its data replaced (event type and id kept).
pub(super) fn rebuild_event(event: &SseEvent, value: &Value) -> Bytes {
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

/// A response body fed by the event task.
pub(super) struct ChannelBody {
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
