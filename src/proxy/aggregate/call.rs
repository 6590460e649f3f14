//! The aggregated endpoint's routed calls: `tools/call`, `prompts/get` and
//! `resources/read` under a prefixed name or a gateway URI, re-serialised with
//! the member's own name, decided, and sent to that member only.

use std::borrow::Cow;

use bytes::Bytes;
use hyper::header::{HeaderMap, HeaderValue};
use hyper::{Method, Response};
use serde_json::Value;

use super::{Aggregate, Asked, Link, Links, member_headers};
use crate::mcp::{self, Message, method};
use crate::proxy::reply::{self, ReplyBody};
use crate::proxy::way_back;
use crate::proxy::{ProxyError, protocol};

impl Aggregate {
    /// `tools/call <upstream>__<tool>` (or `prompts/get
    /// <upstream>__<prompt>`): decided and forwarded as `<tool>` on that
    /// upstream only.
    pub(super) async fn call(
        &self,
        asked: &Asked<'_, '_>,
        bytes: &Bytes,
        message: &Message<'_>,
        id: &str,
    ) -> Response<ReplyBody> {
        let gw = asked.gw;
        let facts = asked.facts;
        let Some((index, tool, link)) = self.route_call(asked.links, message) else {
            let refusal = unknown_target(message.method.as_deref());
            return gw.refuse_message(refusal, facts, Some(id)).await;
        };
        let tool: &str = &tool;
        let member = &self.members[index];
        let not_rewritten = ProxyError::BadRequest("the request could not be rewritten");
        let field = if is_resource_read(message) {
            "uri"
        } else {
            "name"
        };
        let Some(rewritten) = rename_target(bytes, field, tool) else {
            return gw.refuse_message(not_rewritten, facts, Some(id)).await;
        };
        let message = match mcp::parse_body(&rewritten) {
            Ok(mcp::Body::Single(m))
                if m.target.as_deref() == Some(tool) && m.method == message.method =>
            {
                m
            }
            _ => return gw.refuse_message(not_rewritten, facts, Some(id)).await,
        };
        let f = facts.on(member);
        if let Err(denial) = gw.decide_message(&message, &f, member).await {
            let denied = [denial];
            let answers = reply::denial_answers(std::slice::from_ref(&message), &denied);
            return reply::denied(answers, false, &denied[0]);
        }
        let input_requests_possible =
            way_back::input_requests_possible(std::slice::from_ref(&message), f.protocol_version);
        drop(message);
        let Some(headers) = call_headers(&asked.parts.headers, link, tool) else {
            return gw.refuse_message(not_rewritten, facts, Some(id)).await;
        };
        let sent = gw
            .call_upstream(member, &headers, Method::POST, rewritten, &f, Some(id))
            .await;
        let resp = match sent {
            Ok(resp) => resp,
            Err(refusal) => return refusal,
        };
        let mut ctx = f.member_reply_context(member, link);
        ctx.awaiting = Some(id.to_owned());
        ctx.input_requests_possible = input_requests_possible;
        let mut reply = gw.way_back.inspect_reply(resp, ctx).await;
        let sealed = asked.parts.headers.get(protocol::SESSION_HEADER);
        show_aggregated_session(reply.headers_mut(), sealed);
        reply
    }
}

/// The member's session id is the gateway's to hold: the caller only ever
/// sees the aggregated one, sealed, as it sent it.
fn show_aggregated_session(headers: &mut HeaderMap, aggregated: Option<&HeaderValue>) {
    headers.remove(protocol::SESSION_HEADER);
    if let Some(v) = aggregated {
        headers.insert(protocol::SESSION_HEADER, v.clone());
    }
}

fn is_resource_read(message: &Message<'_>) -> bool {
    message.method.as_deref() == Some(method::RESOURCES_READ)
}

impl Aggregate {
    /// The member a call names (by prefixed name, or gateway URI for
    /// `resources/read`), the member's own name for the target, and the
    /// member's link; `None` if it names no member opened in this session.
    fn route_call<'a, 'm>(
        &self,
        links: &'a Links,
        message: &'m Message<'_>,
    ) -> Option<(usize, Cow<'m, str>, &'a Link)> {
        let target = message.target.as_deref()?;
        let (index, tool) = if is_resource_read(message) {
            let (i, uri) = self.route_uri(target)?;
            (i, Cow::Owned(uri))
        } else {
            let (i, name) = self.route(target)?;
            (i, Cow::Borrowed(name))
        };
        let link = links.get(index)?.as_ref()?;
        Some((index, tool, link))
    }
}

/// The refusal of a call that names no member's tool, prompt or resource.
fn unknown_target(method: Option<&str>) -> ProxyError {
    match method {
        Some(method::PROMPTS_GET) => ProxyError::AggregateUnknownPrompt,
        Some(method::RESOURCES_READ) => ProxyError::AggregateUnknownResource,
        _ => ProxyError::AggregateUnknownTool,
    }
}

/// The headers of a call to a member: its session, and in 2026-07-28 the
/// `Mcp-Name` header naming the member's own target, as the body does.
/// `None` if the name cannot be a header value.
fn call_headers(headers: &HeaderMap, link: &Link, tool: &str) -> Option<HeaderMap> {
    let mut headers = member_headers(headers, Some(link));
    if link.version == protocol::MODERN {
        headers.insert(protocol::NAME_HEADER, protocol::encode_header_value(tool)?);
    }
    Some(headers)
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
