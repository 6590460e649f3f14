//! The way back for a JSON reply that may have to be rewritten: read whole
//! within its limit, list results filtered, input requests decided, the
//! gateway's own answers for denied batch elements added.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Response;
use hyper::body::Incoming;
use hyper::header::{self};
use serde_json::Value;
use tracing::warn;

use super::{MAX_LIST_REPLY_BYTES, ReplyContext, WayBack, read_reply};
use crate::audit::Outcome;
use crate::proxy::reply::{self, ReplyBody};

impl WayBack {
    /// Reads a JSON reply to list requests whole and filters it.
    pub(super) async fn filter_json_reply(
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
        // Nothing to filter, answer or decide: passed on unparsed.
        let untouched =
            ctx.lists.is_empty() && ctx.extra_answers.is_empty() && !may_ask_for_input(&bytes);
        let body = match untouched {
            true => bytes,
            false => self.rewrite_reply(bytes, ctx).await,
        };
        parts.headers.remove(header::CONTENT_LENGTH);
        Response::from_parts(
            parts,
            Full::new(body)
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
    }

    /// The reply with the way-back rules applied to each response in it,
    /// and the gateway's own answers added.
    async fn rewrite_reply(&self, bytes: Bytes, ctx: &ReplyContext) -> Bytes {
        match serde_json::from_slice::<Value>(&bytes) {
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
        }
    }

    /// Applies the way-back rules to one JSON-RPC response; returns whether
    /// it changed.
    pub(super) async fn rewrite_response(&self, value: &mut Value, ctx: &ReplyContext) -> bool {
        if self.filter_list_value(value, ctx).await {
            return true;
        }
        ctx.input_requests_possible && self.decide_input_requests(value, ctx).await
    }
}

/// Whether a reply may hold an `InputRequiredResult`: its `resultType`
/// value `input_required` written out, or a `\u` escape (which could spell
/// it). Without either, no JSON value in it is that string.
pub(super) fn may_ask_for_input(reply: &[u8]) -> bool {
    let has = |needle: &[u8]| reply.windows(needle.len()).any(|w| w == needle);
    has(b"input_required") || has(b"\\u")
}

/// Adds the gateway's own answers to a JSON reply (turning a single
/// response into a batch reply). Returns whether anything was added.
pub(super) fn merge_answers(value: &mut Value, answers: &[Vec<u8>]) -> bool {
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
