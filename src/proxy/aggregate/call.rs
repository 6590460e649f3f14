//! The aggregated endpoint's routed calls: `tools/call`, `prompts/get` and
//! `resources/read` under a prefixed name or a gateway URI, re-serialised with
//! the member's own name, decided, and sent to that member only.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use hyper::header::HeaderValue;
use hyper::{Method, Response};
use serde_json::Value;

use super::{Asked, member_headers};
use crate::mcp::{self, Message};
use crate::proxy::reply::{self, ReplyBody};
use crate::proxy::way_back;
use crate::proxy::{Gateway, ProxyError, protocol};

impl Gateway {
    /// `tools/call <upstream>__<tool>` (or `prompts/get
    /// <upstream>__<prompt>`): decided and forwarded as `<tool>` on that
    /// upstream only.
    pub(super) async fn aggregate_call(
        self: &Arc<Self>,
        asked: &Asked<'_, '_>,
        bytes: &Bytes,
        message: &Message<'_>,
        id: &str,
    ) -> Response<ReplyBody> {
        let Asked {
            agg,
            parts,
            links,
            facts,
        } = *asked;
        let method = message.method.as_deref();
        let resource = method == Some("resources/read");
        let target = message.target.as_deref();
        let routed = if resource {
            target
                .and_then(|uri| agg.route_uri(uri))
                .map(|(i, uri)| (i, Cow::Owned(uri)))
        } else {
            target
                .and_then(|name| agg.route(name))
                .map(|(i, name)| (i, Cow::Borrowed(name)))
        };
        let routed = routed.and_then(|(i, tool)| Some((i, tool, links.get(i)?.as_ref()?)));
        let Some((index, tool, link)) = routed else {
            let refusal = match method {
                Some("prompts/get") => ProxyError::AggregateUnknownPrompt,
                Some("resources/read") => ProxyError::AggregateUnknownResource,
                _ => ProxyError::AggregateUnknownTool,
            };
            return self.refuse_message(refusal, facts, Some(id)).await;
        };
        let tool: &str = &tool;
        let member = &agg.members[index];
        let field = if resource { "uri" } else { "name" };
        let Some(rewritten) = rename_target(bytes, field, tool) else {
            let refusal = ProxyError::BadRequest("the request could not be rewritten");
            return self.refuse_message(refusal, facts, Some(id)).await;
        };
        let message = match mcp::parse_body(&rewritten) {
            Ok(mcp::Body::Single(m))
                if m.target.as_deref() == Some(tool) && m.method == message.method =>
            {
                m
            }
            _ => {
                let refusal = ProxyError::BadRequest("the request could not be rewritten");
                return self.refuse_message(refusal, facts, Some(id)).await;
            }
        };
        let f = facts.on(member);
        let (allowed, correlation_id) = self.decide_message(&message, &f, member).await;
        if !allowed {
            let answers = reply::denial_answers(
                std::slice::from_ref(&message),
                &[(0, correlation_id.clone())],
            );
            return reply::denied(answers, false, &correlation_id);
        }
        let input_requests_possible =
            way_back::input_requests_possible(std::slice::from_ref(&message), f.protocol_version);
        drop(message);
        let mut headers = member_headers(&parts.headers, Some(link));
        if link.version == protocol::MODERN {
            // Header and body name the same target at the member too.
            let Some(name) = protocol::encode_header_value(tool) else {
                let refusal = ProxyError::BadRequest("the request could not be rewritten");
                return self.refuse_message(refusal, facts, Some(id)).await;
            };
            headers.insert(protocol::NAME_HEADER, name);
        }
        let sent = self
            .call_upstream(member, &headers, Method::POST, rewritten, &f, Some(id))
            .await;
        match sent {
            Ok(resp) => {
                let mut ctx = f.reply_context(member, Vec::new());
                ctx.session_id = link.session.clone();
                ctx.protocol_version = Some(link.version.clone());
                ctx.awaiting = Some(id.to_owned());
                ctx.input_requests_possible = input_requests_possible;
                let mut reply = self.inspect_reply(resp, ctx).await;
                // The member's session id is the gateway's to hold: the
                // caller only ever sees the aggregated one.
                let headers = reply.headers_mut();
                headers.remove(protocol::SESSION_HEADER);
                if let Some(v) = facts.session_id.and_then(|s| HeaderValue::from_str(s).ok()) {
                    headers.insert(protocol::SESSION_HEADER, v);
                }
                reply
            }
            Err(refusal) => refusal,
        }
    }
}

/// The message with `params.<field>` (`name`, or `uri` for
/// `resources/read`) replaced, re-serialised: these bytes are then parsed,
/// decided and forwarded.
pub(super) fn rename_target(bytes: &[u8], field: &str, target: &str) -> Option<Bytes> {
    let mut value: Value = serde_json::from_slice(bytes).ok()?;
    let name = value.get_mut("params")?.get_mut(field)?;
    *name = Value::String(target.to_owned());
    serde_json::to_vec(&value).ok().map(Bytes::from)
}
