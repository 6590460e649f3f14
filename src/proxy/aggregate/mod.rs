//! The aggregated endpoint (`aggregate:`): one path, `<path>/<name>`,
//! presenting the tools and prompts of several upstreams as
//! `<upstream>__<tool>` and `<upstream>__<prompt>`, and their resources as
//! `mcp-gateway://<upstream>/<percent-encoded uri>`.
//!
//! Resource URIs are not prefixed like names: a client may interpret a URI
//! (scheme, path), and `<upstream>__file:///x` would be no URI at all. The
//! gateway URI names the upstream as its authority and carries the original
//! URI whole, percent-encoded (every byte but `A-Za-z0-9-._~`, upper-case
//! hex), so any URI round-trips. Only that exact encoding is accepted back
//! ([`names::unwrap_uri`]): one URI per resource, no aliases.
//!
//! Protocol 2026-07-28 is stateless (POST only, no session id; one that
//! names a session is refused): its headers must match the body as on the
//! per-upstream path (-32020, nothing forwarded), and every member is asked
//! at 2026-07-28 with no session id.
//!
//! - `server/discover` fans out, each member decided as `server/discover`
//!   on its own `Mcp::Server`; the gateway answers with the versions every
//!   answering member supports (members denied or failing left out).
//! - The lists, calls, reads and prompts take the same code as below, the
//!   caller's `_meta` kept on each member's list request and a routed call's
//!   `Mcp-Name` rewritten to the real name (header and body agree at the
//!   member too). `InputRequiredResult` replies are inspected as on the
//!   per-upstream path; the retry carries the same prefixed name.
//!
//! Protocol 2025-11-25 (and earlier session-based versions): the gateway
//! issues its own session id (random, bound to the caller's SPIFFE ID like
//! every session) and holds one upstream session per member:
//!
//! - `initialize` fans out, each member decided as `initialize` on its own
//!   `Mcp::Server`; the gateway answers itself (tools, prompts and
//!   resources, without subscriptions or list-changed notifications).
//! - `notifications/initialized` fans out to the members that were opened.
//! - `tools/list` (and `prompts/list`, `resources/list` alike, entries kept
//!   where policy permits `prompts/get` / `resources/read`) asks every
//!   opened member (decided as the list method on it),
//!   follows `nextCursor` up to [`MAX_PAGES`], filters each page exactly as
//!   the per-upstream path does, prefixes each name and answers one merged
//!   list. A member that fails, times out or answers an error contributes
//!   nothing; the failure is logged, counted and audited.
//! - `tools/call <upstream>__<tool>` splits on the first `__`; an unknown
//!   upstream or no prefix is answered -32602 and nothing is forwarded. The
//!   message is re-serialised with the real tool name, and the re-serialised
//!   bytes are what is decided (`Mcp::Tool::"<upstream>/<tool>"`), audited
//!   and forwarded, only ever to that upstream, over its own connection
//!   (whose SPIFFE ID is checked) and with its own session id.
//! - `prompts/get <upstream>__<prompt>` is routed the same way, decided on
//!   `Mcp::Prompt::"<upstream>/<prompt>"`; an unroutable name is -32602.
//! - `resources/read mcp-gateway://<upstream>/<enc>` likewise, re-serialised
//!   with the original URI and decided on
//!   `Mcp::Resource::"<upstream>/<uri>"`; any other URI is -32602.
//! - `resources/templates/list` and `resources/subscribe` are -32601: a
//!   template's expansion would put unencoded values into the gateway URI
//!   (so it would not round-trip), and subscriptions need the server stream
//!   this endpoint does not offer.
//! - `ping` is answered by the gateway; other notifications are accepted and
//!   not forwarded; every other method is answered -32601.
//! - DELETE fans out; GET (the server stream) is 405.
//!
//! No tool shadowing: a name is only ever routed by its own prefix, so a
//! tool `github__x` offered by jira is listed as `jira__github__x` and a
//! call to `github__x` can only reach github.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue};
use hyper::{Method, Response, StatusCode};
use serde_json::Value;
use tracing::warn;

use super::ingress::{self, linger};
use super::reply::{self, ReplyBody};
use super::session::{Reservation, SessionRefusal, Sessions, Tables};
use super::upstream::Upstream;
use super::way_back::{self};
use super::{Gateway, ProxyError, RequestFacts, protocol};
use crate::audit::Outcome;
use crate::config::AggregateConfig;
use crate::mcp::method::ListKind;
use crate::mcp::{self, Message};
use names::{split_tool, unwrap_uri};

/// Most `tools/list` pages read from one member per list.
pub const MAX_PAGES: usize = 16;
/// The start of a resource URI on the aggregated endpoint.
pub const GATEWAY_URI_PREFIX: &str = "mcp-gateway://";
/// The version answered when the caller asks for one the endpoint lacks.
const DEFAULT_VERSION: &str = "2025-11-25";

/// A member's side of an aggregated session.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Link {
    /// The upstream's own session id, if it issued one.
    pub session: Option<String>,
    /// The protocol version the upstream answered `initialize` with.
    pub version: String,
}

/// Per member, in member order: `None` when it was not opened (denied or
/// failed) for this session.
pub type Links = Arc<[Option<Link>]>;

/// The aggregated endpoint: its members and its session table.
pub struct Aggregate {
    pub name: String,
    pub members: Vec<Arc<Upstream>>,
    pub sessions: Sessions<Links>,
}

impl Aggregate {
    pub fn new(
        config: &AggregateConfig,
        upstreams: &[Arc<Upstream>],
        tables: &Tables,
    ) -> anyhow::Result<Aggregate> {
        let members = config
            .upstreams
            .iter()
            .map(|name| {
                upstreams
                    .iter()
                    .find(|u| u.name == *name)
                    .cloned()
                    .ok_or_else(|| anyhow::anyhow!("aggregate.upstreams: no upstream {name:?}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Aggregate {
            name: config.name.clone(),
            members,
            sessions: tables.table(format!("a:{}", config.name)),
        })
    }

    /// The member a gateway resource URI routes to, and the original URI.
    pub fn route_uri(&self, uri: &str) -> Option<(usize, String)> {
        let (server, original) = unwrap_uri(uri)?;
        let index = self.members.iter().position(|m| m.name == server)?;
        Some((index, original))
    }

    /// The member a prefixed tool name routes to, and the real tool name.
    pub fn route<'n>(&self, name: &'n str) -> Option<(usize, &'n str)> {
        let (server, tool) = split_tool(name)?;
        let index = self.members.iter().position(|m| m.name == server)?;
        Some((index, tool))
    }

    /// Binds a new session, in its reserved place; returns its sealed id.
    /// Its handle (what audit records and policies name) is random.
    fn open_session(
        reservation: Reservation<Links>,
        links: Links,
    ) -> Result<String, SessionRefusal> {
        let handle = new_session_id().ok_or(SessionRefusal::Full)?;
        reservation.bind(&handle, None, links)
    }

    /// Tells each member its session is over (best effort).
    pub async fn end_links(&self, links: &Links) {
        for (member, link) in self.members.iter().zip(links.iter()) {
            if let Some(sid) = link.as_ref().and_then(|l| l.session.as_deref()) {
                member.end_session(sid).await;
            }
        }
    }
}

/// The lists the aggregated endpoint merges (not resource templates).
fn offered_list(method: &str) -> Option<ListKind> {
    mcp::method::list_kind(method).filter(|kind| *kind != ListKind::Templates)
}

/// 128 random bits, hex: unguessable.
fn new_session_id() -> Option<String> {
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).ok()?;
    Some(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The caller's headers with the member's session and version in place of
/// the aggregated ones.
fn member_headers(headers: &HeaderMap, link: Option<&Link>) -> HeaderMap {
    let mut out = headers.clone();
    out.remove(protocol::SESSION_HEADER);
    let Some(link) = link else {
        return out;
    };
    if let Some(v) = link
        .session
        .as_deref()
        .and_then(|s| HeaderValue::from_str(s).ok())
    {
        out.insert(protocol::SESSION_HEADER, v);
    }
    if let Ok(v) = HeaderValue::from_str(&link.version) {
        out.insert(protocol::PROTOCOL_VERSION_HEADER, v);
    }
    out
}

fn empty(status: StatusCode) -> Response<ReplyBody> {
    let mut resp = Response::new(
        http_body_util::Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *resp.status_mut() = status;
    resp
}

fn result_response(id: &str, result: Value, session: Option<&str>) -> Response<ReplyBody> {
    let id: Value = serde_json::from_str(id).unwrap_or(Value::Null);
    let body = serde_json::json!({ "jsonrpc": "2.0", "id": id, "result": result });
    let mut resp = reply::json_ok(serde_json::to_vec(&body).unwrap_or_default());
    if let Some(v) = session.and_then(|s| HeaderValue::from_str(s).ok()) {
        resp.headers_mut().insert(protocol::SESSION_HEADER, v);
    }
    resp
}

/// The request's `params._meta`, if any.
fn caller_meta(bytes: &[u8]) -> Option<Value> {
    let mut value: Value = serde_json::from_slice(bytes).ok()?;
    value.pointer_mut("/params/_meta").map(Value::take)
}

/// A member's reply as a JSON value, only if the strict parser reads it as
/// one JSON-RPC message: a reply the gateway would read differently from
/// the agent (duplicate keys, bad UTF-8, a batch) is no answer.
fn strict_answer(bytes: &[u8]) -> Option<Value> {
    match mcp::parse_body(bytes) {
        Ok(mcp::Body::Single(_)) => serde_json::from_slice(bytes).ok(),
        _ => None,
    }
}

/// Reads the answer to request `id` from an upstream reply (JSON, or the
/// first matching event of an SSE stream), bounded in size and by the
/// upstream's timeouts.
pub(in crate::proxy) async fn read_answer(
    up: &Upstream,
    resp: Response<Incoming>,
    id: &Value,
) -> Result<Value, ProxyError> {
    let sse = way_back::is_event_stream(&resp);
    let mut body = resp.into_body();
    let limit = way_back::MAX_LIST_REPLY_BYTES;
    if !sse {
        let bytes = way_back::read_reply(body, limit, up.stream_idle_timeout).await?;
        return strict_answer(&bytes).ok_or(ProxyError::UpstreamUnavailable);
    }
    let mut parser = mcp::sse::SseParser::new(limit);
    let mut events = Vec::new();
    let read = async {
        loop {
            let frame = match tokio::time::timeout(up.stream_idle_timeout, body.frame()).await {
                Err(_) => return Err(ProxyError::UpstreamStreamIdle),
                Ok(None) | Ok(Some(Err(_))) => return Err(ProxyError::UpstreamUnavailable),
                Ok(Some(Ok(frame))) => frame,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            parser
                .push(&data, &mut events)
                .map_err(|_| ProxyError::UpstreamUnavailable)?;
            for event in events.drain(..) {
                let Some(value) = strict_answer(event.data.as_bytes()) else {
                    continue;
                };
                let answers = value.get("id") == Some(id)
                    && (value.get("result").is_some() || value.get("error").is_some());
                if answers {
                    return Ok(value);
                }
            }
        }
    };
    tokio::time::timeout(up.request_timeout, read)
        .await
        .unwrap_or(Err(ProxyError::UpstreamTimeout))
}

/// One request on the aggregated endpoint, as its handlers read it.
#[derive(Clone, Copy)]
struct Asked<'r, 'f> {
    /// The pipeline the endpoint's stages run on.
    gw: &'r Arc<Gateway>,
    parts: &'r hyper::http::request::Parts,
    /// The member sessions (in 2026-07-28: every member, stateless).
    links: &'r Links,
    facts: &'r RequestFacts<'f>,
}

impl Aggregate {
    /// A request on the aggregated path. Protocol, session and user headers
    /// were read by `route`; here they are checked, then the method decides
    /// the way.
    pub(super) async fn serve(
        &self,
        gw: &Arc<Gateway>,
        parts: &hyper::http::request::Parts,
        body: Incoming,
        facts: &RequestFacts<'_>,
    ) -> Response<ReplyBody> {
        if facts.protocol_version == Some(protocol::MODERN) {
            // 2026-07-28 is stateless POST only: no session to name.
            let refusal = match (&parts.method, facts.session_id) {
                (&Method::POST, None) => {
                    return self.post(gw, parts, body, facts, None).await;
                }
                (&Method::POST, Some(_)) => ProxyError::Session(SessionRefusal::Unknown),
                _ => ProxyError::MethodNotAllowed,
            };
            linger(body);
            return gw.refuse_unparsed(refusal, facts).await;
        }
        let session = match facts.session_id {
            None => None,
            Some(sealed) => match self.sessions.check(sealed, &facts.peer.spiffe_id) {
                Ok(session) => Some(session),
                Err(refusal) => {
                    linger(body);
                    return gw
                        .refuse_unparsed(ProxyError::Session(refusal), facts)
                        .await;
                }
            },
        };
        // From here on the session is named by its handle, never its
        // sealed id.
        let handle = session.as_ref().map(|s| Arc::clone(&s.handle));
        let facts = &RequestFacts {
            session_id: handle.as_deref(),
            ..*facts
        };
        match (&parts.method, session) {
            (&Method::POST, session) => {
                let links = session.map(|s| s.value);
                self.post(gw, parts, body, facts, links).await
            }
            (&Method::DELETE, Some(_)) => self.end(parts).await,
            (&Method::DELETE, None) => {
                let refusal = ProxyError::Session(SessionRefusal::Unknown);
                gw.refuse_unparsed(refusal, facts).await
            }
            _ => {
                linger(body);
                gw.refuse_unparsed(ProxyError::MethodNotAllowed, facts)
                    .await
            }
        }
    }

    /// DELETE of a session checked as the caller's: it ends here (its
    /// sealed id refused here until its end) and at each member.
    async fn end(&self, parts: &hyper::http::request::Parts) -> Response<ReplyBody> {
        let sealed = protocol::single_header(&parts.headers, protocol::SESSION_HEADER);
        if let Some(ended) = sealed.ok().flatten().and_then(|s| self.sessions.remove(s)) {
            self.end_links(&ended.value).await;
        }
        empty(StatusCode::OK)
    }

    async fn post(
        &self,
        gw: &Arc<Gateway>,
        parts: &hyper::http::request::Parts,
        body: Incoming,
        facts: &RequestFacts<'_>,
        links: Option<Links>,
    ) -> Response<ReplyBody> {
        let bytes = match gw.read_post_body(parts, body, facts).await {
            Ok(bytes) => bytes,
            Err(refused) => return refused,
        };
        // The same strict parse and framing rules as every endpoint (a
        // 2026-07-28 message's headers checked against it); no batches here.
        let parsed = match ingress::parse(&bytes, &parts.headers, facts.protocol_version) {
            Ok(parsed) if !parsed.batch => parsed,
            Ok(_) => {
                return gw.refuse_unparsed(ProxyError::BatchNotAllowed, facts).await;
            }
            Err(refusal) => return gw.refuse_unparsed(refusal, facts).await,
        };
        let message = &parsed.messages[0];
        let id = message.id.as_ref().map(|id| id.raw_json().to_owned());
        let method = message.method.as_deref().unwrap_or("");
        if protocol::is_modern(message, facts.protocol_version) {
            // The headers matched, so the version header is 2026-07-28 and
            // `aggregate_route` let no session id through.
            return self.stateless(gw, parts, &bytes, message, id, facts).await;
        }
        let Some(links) = links else {
            if method == mcp::method::INITIALIZE
                && let Some(id) = id
            {
                return self
                    .initialize(gw, parts, &bytes, message, &id, facts)
                    .await;
            }
            let refusal = ProxyError::Session(SessionRefusal::Unknown);
            return gw.refuse_unparsed(refusal, facts).await;
        };
        let asked = Asked {
            gw,
            parts,
            links: &links,
            facts,
        };
        self.dispatch(&asked, &bytes, message, id, false).await
    }

    /// A 2026-07-28 request (headers already checked against the body): no
    /// session; every member is asked at 2026-07-28, with no session id.
    async fn stateless(
        &self,
        gw: &Arc<Gateway>,
        parts: &hyper::http::request::Parts,
        bytes: &Bytes,
        message: &Message<'_>,
        id: Option<String>,
        facts: &RequestFacts<'_>,
    ) -> Response<ReplyBody> {
        let links: Links = self
            .members
            .iter()
            .map(|_| {
                Some(Link {
                    session: None,
                    version: protocol::MODERN.to_owned(),
                })
            })
            .collect();
        let asked = Asked {
            gw,
            parts,
            links: &links,
            facts,
        };
        self.dispatch(&asked, bytes, message, id, true).await
    }

    /// One message on the aggregated endpoint, past `initialize` (2025
    /// era, in a session) or stateless (`modern`, 2026-07-28): answered by
    /// the gateway, fanned out to the members, routed to one, or refused.
    async fn dispatch(
        &self,
        asked: &Asked<'_, '_>,
        bytes: &Bytes,
        message: &Message<'_>,
        id: Option<String>,
        modern: bool,
    ) -> Response<ReplyBody> {
        let gw = asked.gw;
        let method = message.method.as_deref().unwrap_or("");
        let list = offered_list(method);
        match (method, id) {
            (mcp::method::SERVER_DISCOVER, Some(id)) if modern => {
                self.discover(asked, bytes, message, &id).await
            }
            (mcp::method::PING, Some(id)) => result_response(&id, serde_json::json!({}), None),
            (_, Some(id)) if let Some(kind) = list => {
                // 2026-07-28: the caller's `_meta` (version, client info
                // and capabilities) goes with every member's request.
                let meta = modern.then(|| caller_meta(bytes)).flatten();
                self.list(asked, kind, &id, meta.as_ref()).await
            }
            (m, Some(id)) if mcp::method::is_named_call(m) => {
                self.call(asked, bytes, message, &id).await
            }
            (mcp::method::INITIALIZED, None) if !modern => {
                self.initialized(asked, bytes, message).await;
                empty(StatusCode::ACCEPTED)
            }
            // Other notifications (cancellation, progress) concern requests
            // the gateway answered or forwarded whole: accepted, not sent on.
            (m, None) if !m.is_empty() => empty(StatusCode::ACCEPTED),
            (_, id) => {
                let refusal = ProxyError::AggregateMethod;
                gw.refuse_message(refusal, asked.facts, id.as_deref()).await
            }
        }
    }

    /// A member failed on the way back: logged, counted and audited.
    async fn member_failed(
        &self,
        gw: &Gateway,
        member: &Arc<Upstream>,
        facts: &RequestFacts<'_>,
        refusal: ProxyError,
        what: &'static str,
    ) {
        warn!(upstream = %member.name, error = %refusal, what, "aggregated upstream left out");
        gw.metrics.upstream_error(refusal.audit_reason());
        let ctx = facts.reply_context(member, Vec::new());
        let correlation_id = gw.ids.next();
        gw.way_back
            .audit_way_back_as(
                &ctx,
                &correlation_id,
                refusal.audit_reason(),
                Outcome::UpstreamError,
            )
            .await;
    }
}

mod call;
mod fanout;
mod names;
#[cfg(test)]
mod tests;
