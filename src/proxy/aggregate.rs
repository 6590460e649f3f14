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
//! ([`unwrap_uri`]): one URI per resource, no aliases.
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

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Response, StatusCode};
use serde_json::Value;
use tracing::warn;

use super::ingress::linger;
use super::inspect::{self, PendingList};
use super::reply::{self, ReplyBody, error_response};
use super::session::{Reservation, SessionRefusal, Sessions};
use super::upstream::Upstream;
use super::{Gateway, ProxyError, RequestFacts, protocol};
use crate::audit::Outcome;
use crate::config::{AGGREGATE_SEPARATOR, AggregateConfig, LimitsConfig};
use crate::mcp::method::ListKind;
use crate::mcp::{self, Message};

/// Most `tools/list` pages read from one member per list.
pub const MAX_PAGES: usize = 16;
/// The start of a resource URI on the aggregated endpoint.
pub const GATEWAY_URI_PREFIX: &str = "mcp-gateway://";
/// The version answered when the caller asks for one the endpoint lacks.
const DEFAULT_VERSION: &str = "2025-11-25";

/// A member's side of an aggregated session.
#[derive(Debug, Clone, PartialEq, Eq)]
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
        limits: &LimitsConfig,
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
            sessions: Sessions::new(
                limits.session_idle_timeout,
                limits.max_sessions,
                limits.max_sessions_per_identity,
            ),
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

    /// Binds a new session, in its reserved place; returns its id.
    fn open_session(
        reservation: Reservation<Links>,
        links: Links,
    ) -> Result<String, SessionRefusal> {
        let id = new_session_id().ok_or(SessionRefusal::Full)?;
        reservation.bind(&id, links)?;
        Ok(id)
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

/// Narrows the versions a discover answer offers to those a member also
/// lists; the first member's answer starts from what the gateway supports.
fn keep_common_versions(kept: &mut Option<Vec<&'static str>>, supported: &[&str]) {
    kept.get_or_insert_with(|| protocol::SUPPORTED.to_vec())
        .retain(|v| supported.contains(v));
}

/// `<upstream>__<tool>` split on the first `__`; both parts non-empty.
pub fn split_tool(name: &str) -> Option<(&str, &str)> {
    name.split_once(AGGREGATE_SEPARATOR)
        .filter(|(server, tool)| !server.is_empty() && !tool.is_empty())
}

/// The lists the aggregated endpoint merges (not resource templates).
fn offered_list(method: &str) -> Option<ListKind> {
    mcp::method::list_kind(method).filter(|kind| *kind != ListKind::Templates)
}

/// The name a member's tool is listed under.
pub fn prefixed(server: &str, tool: &str) -> String {
    format!("{server}{AGGREGATE_SEPARATOR}{tool}")
}

/// Prefixes the names of the entries in one list result's `field` array
/// (`tools`, `prompts`); entries without a string name are dropped (they
/// could not be called).
pub fn prefix_names(server: &str, result: &mut Value, field: &str) -> Vec<Value> {
    let Some(Value::Array(tools)) = result.get_mut(field).map(Value::take) else {
        return Vec::new();
    };
    tools
        .into_iter()
        .filter_map(|mut tool| {
            let name = prefixed(server, tool.get("name")?.as_str()?);
            tool["name"] = Value::String(name);
            Some(tool)
        })
        .collect()
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
async fn read_answer(
    up: &Upstream,
    resp: Response<Incoming>,
    id: &Value,
) -> Result<Value, ProxyError> {
    let sse = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("text/event-stream")
        });
    let mut body = resp.into_body();
    let limit = inspect::MAX_LIST_REPLY_BYTES;
    if !sse {
        let bytes = inspect::read_reply(body, limit, up.stream_idle_timeout).await?;
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

impl Gateway {
    /// A request on the aggregated path. Protocol, session and user headers
    /// were read by `route`; here they are checked, then the method decides
    /// the way.
    pub(super) async fn aggregate_route(
        self: &Arc<Self>,
        agg: &Aggregate,
        parts: &hyper::http::request::Parts,
        body: Incoming,
        facts: &RequestFacts<'_>,
    ) -> Response<ReplyBody> {
        if facts.protocol_version == Some(protocol::MODERN) {
            // 2026-07-28 is stateless POST only: no session to name.
            let refusal = match (&parts.method, facts.session_id) {
                (&Method::POST, None) => {
                    return self.aggregate_post(agg, parts, body, facts, None).await;
                }
                (&Method::POST, Some(_)) => ProxyError::Session(SessionRefusal::Unknown),
                _ => ProxyError::MethodNotAllowed,
            };
            linger(body);
            return self.refuse_unparsed(refusal, facts).await;
        }
        let links = match facts.session_id {
            None => None,
            Some(id) => match agg.sessions.check(id, &facts.peer.spiffe_id) {
                Ok(links) => Some(links),
                Err(refusal) => {
                    linger(body);
                    return self
                        .refuse_unparsed(ProxyError::Session(refusal), facts)
                        .await;
                }
            },
        };
        match (&parts.method, links) {
            (&Method::POST, links) => self.aggregate_post(agg, parts, body, facts, links).await,
            (&Method::DELETE, Some(_)) => {
                if let Some(links) = facts.session_id.and_then(|id| agg.sessions.remove(id)) {
                    agg.end_links(&links).await;
                }
                empty(StatusCode::OK)
            }
            (&Method::DELETE, None) => {
                let refusal = ProxyError::Session(SessionRefusal::Unknown);
                self.refuse_unparsed(refusal, facts).await
            }
            _ => {
                linger(body);
                self.refuse_unparsed(ProxyError::MethodNotAllowed, facts)
                    .await
            }
        }
    }

    async fn aggregate_post(
        self: &Arc<Self>,
        agg: &Aggregate,
        parts: &hyper::http::request::Parts,
        body: Incoming,
        facts: &RequestFacts<'_>,
        links: Option<Links>,
    ) -> Response<ReplyBody> {
        let bytes = match self.read_post_body(parts, body, facts).await {
            Ok(bytes) => bytes,
            Err(refused) => return refused,
        };
        let message = match mcp::parse_body(&bytes) {
            Ok(mcp::Body::Single(m)) => m,
            Ok(mcp::Body::Batch(_)) => {
                return self
                    .refuse_unparsed(ProxyError::BatchNotAllowed, facts)
                    .await;
            }
            Err(e) => {
                let refusal = ProxyError::Parse(e.to_string(), e.jsonrpc_code());
                return self.refuse_unparsed(refusal, facts).await;
            }
        };
        let id = message.id.as_ref().map(|id| id.raw_json().to_owned());
        let method = message.method.as_deref().unwrap_or("");
        if protocol::is_modern(&message, facts.protocol_version) {
            if let Err(refusal) = protocol::check_modern_headers(&parts.headers, &message) {
                return self.refuse_unparsed(refusal, facts).await;
            }
            // The headers matched, so the version header is 2026-07-28 and
            // `aggregate_route` let no session id through.
            return self
                .aggregate_modern(agg, parts, &bytes, &message, id, facts)
                .await;
        }
        let Some(links) = links else {
            if method == "initialize"
                && let Some(id) = id
            {
                return self
                    .aggregate_initialize(agg, parts, &bytes, &message, &id, facts)
                    .await;
            }
            let refusal = ProxyError::Session(SessionRefusal::Unknown);
            return self.refuse_unparsed(refusal, facts).await;
        };
        let list = offered_list(method);
        match (method, id) {
            ("ping", Some(id)) => result_response(&id, serde_json::json!({}), None),
            (_, Some(id)) if let Some(kind) = list => {
                self.aggregate_list(agg, parts, kind, &id, &links, None, facts)
                    .await
            }
            (m, Some(id)) if mcp::method::is_named_call(m) => {
                self.aggregate_call(agg, parts, &bytes, &message, &id, &links, facts)
                    .await
            }
            ("notifications/initialized", None) => {
                self.aggregate_initialized(agg, parts, &bytes, &message, &links, facts)
                    .await;
                empty(StatusCode::ACCEPTED)
            }
            // Other notifications (cancellation, progress) concern requests
            // the gateway answered or forwarded whole: accepted, not sent on.
            (m, None) if !m.is_empty() => empty(StatusCode::ACCEPTED),
            (_, id) => {
                self.refuse_message(ProxyError::AggregateMethod, facts, id.as_deref())
                    .await
            }
        }
    }

    /// A 2026-07-28 request (headers already checked against the body): no
    /// session; every member is asked at 2026-07-28, with no session id.
    async fn aggregate_modern(
        self: &Arc<Self>,
        agg: &Aggregate,
        parts: &hyper::http::request::Parts,
        bytes: &Bytes,
        message: &Message<'_>,
        id: Option<String>,
        facts: &RequestFacts<'_>,
    ) -> Response<ReplyBody> {
        let links: Links = agg
            .members
            .iter()
            .map(|_| {
                Some(Link {
                    session: None,
                    version: protocol::MODERN.to_owned(),
                })
            })
            .collect();
        let method = message.method.as_deref().unwrap_or("");
        let list = offered_list(method);
        match (method, id) {
            ("server/discover", Some(id)) => {
                self.aggregate_discover(agg, parts, bytes, message, &id, &links, facts)
                    .await
            }
            ("ping", Some(id)) => result_response(&id, serde_json::json!({}), None),
            (_, Some(id)) if let Some(kind) = list => {
                // The caller's `_meta` (version, client info and
                // capabilities) goes with every member's request.
                let meta = serde_json::from_slice::<Value>(bytes)
                    .ok()
                    .and_then(|mut v| v.pointer_mut("/params/_meta").map(Value::take));
                self.aggregate_list(agg, parts, kind, &id, &links, meta.as_ref(), facts)
                    .await
            }
            (m, Some(id)) if mcp::method::is_named_call(m) => {
                self.aggregate_call(agg, parts, bytes, message, &id, &links, facts)
                    .await
            }
            (m, None) if !m.is_empty() => empty(StatusCode::ACCEPTED),
            (_, id) => {
                self.refuse_message(ProxyError::AggregateMethod, facts, id.as_deref())
                    .await
            }
        }
    }

    /// `server/discover` (2026-07-28): sent to every member policy allows;
    /// the gateway answers with the versions every answering member
    /// supports. A member that is denied or fails is left out.
    #[allow(clippy::too_many_arguments)]
    async fn aggregate_discover(
        self: &Arc<Self>,
        agg: &Aggregate,
        parts: &hyper::http::request::Parts,
        bytes: &Bytes,
        message: &Message<'_>,
        id: &str,
        links: &Links,
        facts: &RequestFacts<'_>,
    ) -> Response<ReplyBody> {
        let id_value: Value = serde_json::from_str(id).unwrap_or(Value::Null);
        let mut versions: Option<Vec<&'static str>> = None;
        let mut last_denial = None;
        for (member, link) in agg.members.iter().zip(links.iter()) {
            let mut f = *facts;
            f.upstream = Some(member);
            let (allowed, correlation_id) = self.decide_message(message, &f, member).await;
            if !allowed {
                last_denial = Some(correlation_id);
                continue;
            }
            let headers = member_headers(&parts.headers, link.as_ref());
            let sent = self
                .call_upstream(member, &headers, Method::POST, bytes.clone(), &f, Some(id))
                .await;
            let Ok(resp) = sent else { continue };
            let ok = resp.status().is_success();
            let answer = read_answer(member, resp, &id_value).await;
            let supported = match &answer {
                Ok(v) if ok => v
                    .pointer("/result/supportedVersions")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>()),
                _ => None,
            };
            let Some(supported) = supported else {
                let refusal = answer.err().unwrap_or(ProxyError::UpstreamUnavailable);
                self.member_failed(member, &f, refusal, "server/discover")
                    .await;
                continue;
            };
            keep_common_versions(&mut versions, &supported);
        }
        let versions = match versions {
            Some(v) if !v.is_empty() => v,
            answered => {
                let refusal = if answered.is_none() && last_denial.is_some() {
                    ProxyError::Denied
                } else {
                    ProxyError::UpstreamUnavailable
                };
                let correlation_id = last_denial.unwrap_or_else(|| self.ids.next());
                return error_response(&refusal, Some(id), &correlation_id);
            }
        };
        let result = serde_json::json!({
            "supportedVersions": versions,
            "capabilities": { "tools": {}, "prompts": {}, "resources": {} },
            "resultType": "complete",
            "ttlMs": 0,
            "cacheScope": "private",
            "_meta": { "io.modelcontextprotocol/serverInfo": {
                "name": "spiffe-mcp-gateway", "version": env!("CARGO_PKG_VERSION"),
            } },
        });
        result_response(id, result, None)
    }

    /// A refusal answered under the request's id; audited, nothing forwarded.
    async fn refuse_message(
        &self,
        refusal: ProxyError,
        facts: &RequestFacts<'_>,
        id: Option<&str>,
    ) -> Response<ReplyBody> {
        let correlation_id = self.ids.next();
        self.metrics.refused(refusal.audit_reason());
        let record = self.bare_record(&refusal, facts, Outcome::Deny, &correlation_id);
        self.audit.record(record).await;
        error_response(&refusal, id, &correlation_id)
    }

    /// `initialize`: sent to every member policy allows; the gateway answers.
    async fn aggregate_initialize(
        self: &Arc<Self>,
        agg: &Aggregate,
        parts: &hyper::http::request::Parts,
        bytes: &Bytes,
        message: &Message<'_>,
        id: &str,
        facts: &RequestFacts<'_>,
    ) -> Response<ReplyBody> {
        // The session's place is taken before any member is asked.
        let reservation = match agg.sessions.reserve(&facts.peer.spiffe_id) {
            Ok(reservation) => reservation,
            Err(refusal) => {
                return self
                    .refuse_unparsed(ProxyError::Session(refusal), facts)
                    .await;
            }
        };
        let requested = message.protocol_version.as_deref().unwrap_or("");
        let version = if requested != protocol::MODERN && protocol::SUPPORTED.contains(&requested) {
            requested
        } else {
            DEFAULT_VERSION
        };
        let id_value: Value = serde_json::from_str(id).unwrap_or(Value::Null);
        let mut links = Vec::with_capacity(agg.members.len());
        let mut last_denial = None;
        for member in &agg.members {
            let mut f = *facts;
            f.upstream = Some(member);
            let (allowed, correlation_id) = self.decide_message(message, &f, member).await;
            if !allowed {
                last_denial = Some(correlation_id);
                links.push(None);
                continue;
            }
            let headers = member_headers(&parts.headers, None);
            let sent = self
                .call_upstream(member, &headers, Method::POST, bytes.clone(), &f, Some(id))
                .await;
            let Ok(resp) = sent else {
                links.push(None);
                continue;
            };
            let session = protocol::single_header(resp.headers(), protocol::SESSION_HEADER)
                .ok()
                .flatten()
                .map(str::to_owned);
            let ok = resp.status().is_success();
            let answer = read_answer(member, resp, &id_value).await;
            let answered = match &answer {
                Ok(v) if ok => v
                    .pointer("/result/protocolVersion")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                _ => None,
            };
            match answered {
                Some(v) => links.push(Some(Link {
                    session,
                    version: v,
                })),
                None => {
                    let refusal = answer.err().unwrap_or(ProxyError::UpstreamUnavailable);
                    self.member_failed(member, &f, refusal, "initialize").await;
                    if let Some(sid) = session {
                        member.end_session(&sid).await;
                    }
                    links.push(None);
                }
            }
        }
        if links.iter().all(Option::is_none) {
            let refusal = if last_denial.is_some() {
                ProxyError::Denied
            } else {
                ProxyError::UpstreamUnavailable
            };
            let correlation_id = last_denial.unwrap_or_else(|| self.ids.next());
            return error_response(&refusal, Some(id), &correlation_id);
        }
        let links: Links = links.into();
        let session = match Aggregate::open_session(reservation, Arc::clone(&links)) {
            Ok(session) => session,
            Err(refusal) => {
                agg.end_links(&links).await;
                return self
                    .refuse_unparsed(ProxyError::Session(refusal), facts)
                    .await;
            }
        };
        let result = serde_json::json!({
            "protocolVersion": version,
            "capabilities": { "tools": {}, "prompts": {}, "resources": {} },
            "serverInfo": { "name": "spiffe-mcp-gateway", "version": env!("CARGO_PKG_VERSION") },
        });
        result_response(id, result, Some(&session))
    }

    /// A member failed on the way back: logged, counted and audited.
    async fn member_failed(
        &self,
        member: &Arc<Upstream>,
        facts: &RequestFacts<'_>,
        refusal: ProxyError,
        what: &'static str,
    ) {
        warn!(upstream = %member.name, error = %refusal, what, "aggregated upstream left out");
        self.metrics.upstream_error(refusal.audit_reason());
        let ctx = self.reply_context(facts, member, Vec::new());
        let correlation_id = self.ids.next();
        self.audit_way_back_as(
            &ctx,
            &correlation_id,
            refusal.audit_reason(),
            Outcome::UpstreamError,
        )
        .await;
    }

    /// `notifications/initialized` to each opened member policy allows.
    async fn aggregate_initialized(
        self: &Arc<Self>,
        agg: &Aggregate,
        parts: &hyper::http::request::Parts,
        bytes: &Bytes,
        message: &Message<'_>,
        links: &Links,
        facts: &RequestFacts<'_>,
    ) {
        for (member, link) in agg.members.iter().zip(links.iter()) {
            let Some(link) = link else { continue };
            let mut f = *facts;
            f.upstream = Some(member);
            if !self.decide_message(message, &f, member).await.0 {
                continue;
            }
            let headers = member_headers(&parts.headers, Some(link));
            let _ = self
                .call_upstream(member, &headers, Method::POST, bytes.clone(), &f, None)
                .await;
        }
    }

    /// `tools/list` or `prompts/list`: every opened member's allowed
    /// entries, prefixed, merged.
    #[allow(clippy::too_many_arguments)]
    async fn aggregate_list(
        self: &Arc<Self>,
        agg: &Aggregate,
        parts: &hyper::http::request::Parts,
        kind: ListKind,
        id: &str,
        links: &Links,
        meta: Option<&Value>,
        facts: &RequestFacts<'_>,
    ) -> Response<ReplyBody> {
        let id_value: Value = serde_json::from_str(id).unwrap_or(Value::Null);
        let field = kind.field();
        let mut merged = Vec::new();
        for (member, link) in agg.members.iter().zip(links.iter()) {
            let Some(link) = link else { continue };
            let mut f = *facts;
            f.upstream = Some(member);
            let listed = self
                .member_list(member, link, parts, kind, &id_value, meta, &f)
                .await;
            if let Some(entries) = listed {
                merged.extend(entries);
            }
        }
        let mut result = serde_json::Map::new();
        result.insert(field.to_owned(), Value::Array(merged));
        if meta.is_some() {
            // 2026-07-28 results carry caching directives: this list is the
            // caller's own (filtered by its policy), stale at once.
            result.insert("resultType".to_owned(), "complete".into());
            result.insert("ttlMs".to_owned(), 0.into());
            result.insert("cacheScope".to_owned(), "private".into());
        }
        result_response(id, Value::Object(result), None)
    }

    /// One member's list (`method`), every page, filtered and prefixed;
    /// `None` if it was denied or failed (then it contributes nothing).
    #[allow(clippy::too_many_arguments)]
    async fn member_list(
        self: &Arc<Self>,
        member: &Arc<Upstream>,
        link: &Link,
        parts: &hyper::http::request::Parts,
        kind: ListKind,
        id: &Value,
        meta: Option<&Value>,
        facts: &RequestFacts<'_>,
    ) -> Option<Vec<Value>> {
        let method = kind.method();
        let mut headers = member_headers(&parts.headers, Some(link));
        if link.version == protocol::MODERN {
            headers.insert(protocol::METHOD_HEADER, HeaderValue::from_static(method));
        }
        let field = kind.field();
        let mut tools = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut request = serde_json::json!({ "jsonrpc": "2.0", "id": id, "method": method });
            let mut params = serde_json::Map::new();
            if let Some(c) = cursor.take() {
                params.insert("cursor".to_owned(), Value::String(c));
            }
            if let Some(meta) = meta {
                params.insert("_meta".to_owned(), meta.clone());
            }
            if !params.is_empty() {
                request["params"] = Value::Object(params);
            }
            let bytes = Bytes::from(serde_json::to_vec(&request).ok()?);
            let Ok(mcp::Body::Single(message)) = mcp::parse_body(&bytes) else {
                return None;
            };
            if !self.decide_message(&message, facts, member).await.0 {
                return None;
            }
            let resp = self
                .call_upstream(member, &headers, Method::POST, bytes.clone(), facts, None)
                .await
                .ok()?;
            if !resp.status().is_success() {
                self.member_failed(member, facts, ProxyError::UpstreamUnavailable, method)
                    .await;
                return None;
            }
            let mut answer = match read_answer(member, resp, id).await {
                Ok(answer) if answer.get("result").is_some() => answer,
                Ok(_) => {
                    let refusal = ProxyError::UpstreamUnavailable;
                    self.member_failed(member, facts, refusal, method).await;
                    return None;
                }
                Err(refusal) => {
                    self.member_failed(member, facts, refusal, method).await;
                    return None;
                }
            };
            let pending = PendingList::new(kind, id.clone());
            let mut ctx = self.reply_context(facts, member, vec![pending]);
            ctx.session_id = link.session.clone();
            ctx.protocol_version = Some(link.version.clone());
            self.filter_list_value(&mut answer, &ctx).await;
            let result = answer.get_mut("result")?;
            if kind == ListKind::Resources {
                tools.extend(wrap_resources(&member.name, result));
            } else {
                tools.extend(prefix_names(&member.name, result, field));
            }
            match result.get("nextCursor").and_then(Value::as_str) {
                Some(next) => cursor = Some(next.to_owned()),
                None => return Some(tools),
            }
        }
        warn!(upstream = %member.name, pages = MAX_PAGES, method, "more pages than read; the rest left out");
        Some(tools)
    }

    /// `tools/call <upstream>__<tool>` (or `prompts/get
    /// <upstream>__<prompt>`): decided and forwarded as `<tool>` on that
    /// upstream only.
    #[allow(clippy::too_many_arguments)]
    async fn aggregate_call(
        self: &Arc<Self>,
        agg: &Aggregate,
        parts: &hyper::http::request::Parts,
        bytes: &Bytes,
        message: &Message<'_>,
        id: &str,
        links: &Links,
        facts: &RequestFacts<'_>,
    ) -> Response<ReplyBody> {
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
        let mut f = *facts;
        f.upstream = Some(member);
        let (allowed, correlation_id) = self.decide_message(&message, &f, member).await;
        if !allowed {
            let answers = reply::denial_answers(
                std::slice::from_ref(&message),
                &[(0, correlation_id.clone())],
            );
            return reply::denied(answers, false, &correlation_id);
        }
        let input_requests_possible =
            inspect::input_requests_possible(std::slice::from_ref(&message), f.protocol_version);
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
                let mut ctx = self.reply_context(&f, member, Vec::new());
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
fn rename_target(bytes: &[u8], field: &str, target: &str) -> Option<Bytes> {
    let mut value: Value = serde_json::from_slice(bytes).ok()?;
    let name = value.get_mut("params")?.get_mut(field)?;
    *name = Value::String(target.to_owned());
    serde_json::to_vec(&value).ok().map(Bytes::from)
}

/// `mcp-gateway://<upstream>/<percent-encoded uri>`: how a member's
/// resource URI is listed on the aggregated endpoint.
pub fn wrap_uri(server: &str, uri: &str) -> String {
    let mut out = String::with_capacity(GATEWAY_URI_PREFIX.len() + server.len() + 1 + uri.len());
    out.push_str(GATEWAY_URI_PREFIX);
    out.push_str(server);
    out.push('/');
    for b in uri.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
    out
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// The upstream and original URI of a gateway URI; `None` unless `uri` is
/// exactly what [`wrap_uri`] makes (one encoding only: no aliases).
pub fn unwrap_uri(uri: &str) -> Option<(&str, String)> {
    let rest = uri.strip_prefix(GATEWAY_URI_PREFIX)?;
    let (server, encoded) = rest.split_once('/')?;
    if server.is_empty() || encoded.is_empty() {
        return None;
    }
    let mut bytes = Vec::with_capacity(encoded.len());
    let mut input = encoded.bytes();
    while let Some(b) = input.next() {
        if b != b'%' {
            bytes.push(b);
            continue;
        }
        let hi = hex_value(input.next()?)?;
        let lo = hex_value(input.next()?)?;
        bytes.push(hi << 4 | lo);
    }
    let original = String::from_utf8(bytes).ok()?;
    (wrap_uri(server, &original) == uri).then_some((server, original))
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Wraps the `uri` of each entry of one `resources/list` result; entries
/// without a string `uri` are dropped (they could not be read).
pub fn wrap_resources(server: &str, result: &mut Value) -> Vec<Value> {
    let Some(Value::Array(resources)) = result.get_mut("resources").map(Value::take) else {
        return Vec::new();
    };
    resources
        .into_iter()
        .filter_map(|mut resource| {
            let uri = wrap_uri(server, resource.get("uri")?.as_str()?);
            resource["uri"] = Value::String(uri);
            Some(resource)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_split_on_the_first_separator() {
        assert_eq!(split_tool("github__echo"), Some(("github", "echo")));
        assert_eq!(split_tool("jira__github__x"), Some(("jira", "github__x")));
        assert_eq!(split_tool("echo"), None);
        assert_eq!(split_tool("__echo"), None);
        assert_eq!(split_tool("github__"), None);
        assert_eq!(split_tool(""), None);
    }

    #[test]
    fn tools_are_prefixed_and_nameless_ones_dropped() {
        let mut result = serde_json::json!({
            "tools": [
                { "name": "echo", "inputSchema": { "type": "object" } },
                { "name": "github__x" },
                { "description": "no name" },
                { "name": 7 },
            ],
            "nextCursor": "p2",
        });
        let tools = prefix_names("jira", &mut result, "tools");
        let names: Vec<&str> = tools.iter().map(|t| t["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["jira__echo", "jira__github__x"]);
        assert_eq!(tools[0]["inputSchema"]["type"], "object");
        assert_eq!(result["nextCursor"], "p2");
        // A jira tool named like a github one routes back to jira only.
        let (server, tool) = split_tool(names[1]).unwrap();
        assert_eq!((server, tool), ("jira", "github__x"));
    }

    #[test]
    fn prompts_are_prefixed_under_their_own_field() {
        assert_eq!(offered_list("prompts/list").unwrap().field(), "prompts");
        assert_eq!(offered_list("tools/list").unwrap().field(), "tools");
        assert_eq!(offered_list("resources/templates/list"), None);
        let mut result = serde_json::json!({
            "prompts": [
                { "name": "review", "arguments": [{ "name": "topic" }] },
                { "name": "alpha__review" },
                { "title": "no name" },
            ],
            "tools": [{ "name": "echo" }],
        });
        let prompts = prefix_names("beta", &mut result, "prompts");
        let names: Vec<&str> = prompts
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["beta__review", "beta__alpha__review"]);
        assert_eq!(prompts[0]["arguments"][0]["name"], "topic");
        // Only the named field is taken.
        assert_eq!(result["tools"][0]["name"], "echo");
        assert!(prefix_names("beta", &mut result, "prompts").is_empty());
    }

    #[test]
    fn a_prompts_get_is_renamed_like_a_tools_call() {
        let body = br#"{"jsonrpc":"2.0","id":"p","method":"prompts/get","params":{"name":"alpha__review","arguments":{"topic":"alpha__review"}}}"#;
        let out = rename_target(body, "name", "review").unwrap();
        let Ok(mcp::Body::Single(m)) = mcp::parse_body(&out) else {
            panic!("not a single message");
        };
        assert_eq!(m.method.as_deref(), Some("prompts/get"));
        assert_eq!(m.target.as_deref(), Some("review"));
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["params"]["arguments"]["topic"], "alpha__review");
        assert_eq!(v["id"], "p");
    }

    #[test]
    fn resource_uris_are_wrapped_and_unwrapped_exactly() {
        let original = "note://beta/hello?x=1&y=2#f";
        let wrapped = wrap_uri("beta", original);
        assert_eq!(
            wrapped,
            "mcp-gateway://beta/note%3A%2F%2Fbeta%2Fhello%3Fx%3D1%26y%3D2%23f"
        );
        assert_eq!(unwrap_uri(&wrapped), Some(("beta", original.to_owned())));
        let unicode = wrap_uri("a", "file:///d\u{e9}j\u{e0} vu");
        assert_eq!(
            unicode,
            "mcp-gateway://a/file%3A%2F%2F%2Fd%C3%A9j%C3%A0%20vu"
        );
        assert_eq!(unwrap_uri(&unicode).unwrap().1, "file:///d\u{e9}j\u{e0} vu");
        // Anything but the one encoding wrap_uri makes is refused.
        for bad in [
            "file:///etc/hosts",
            "mcp-gateway://beta",
            "mcp-gateway://beta/",
            "mcp-gateway:///note%3A",
            "mcp-gateway://beta/note%3a%2F%2Fx",
            "mcp-gateway://beta/note:%2F%2Fx",
            "mcp-gateway://beta/note%3",
            "mcp-gateway://beta/note%ZZ",
            "mcp-gateway://beta/%FF",
            "MCP-GATEWAY://beta/x",
        ] {
            assert_eq!(unwrap_uri(bad), None, "{bad}");
        }
        // The upstream is the segment before the first `/`, not a lookalike
        // inside the encoded URI.
        let inner = wrap_uri("alpha", "mcp-gateway://beta/x");
        assert_eq!(unwrap_uri(&inner).unwrap().0, "alpha");
    }

    #[test]
    fn listed_resources_are_wrapped_and_uriless_ones_dropped() {
        let mut result = serde_json::json!({
            "resources": [
                { "uri": "file:///docs/readme.md", "name": "readme" },
                { "name": "no uri" },
                { "uri": 7 },
            ],
        });
        let resources = wrap_resources("alpha", &mut result);
        assert_eq!(resources.len(), 1);
        assert_eq!(
            resources[0]["uri"],
            "mcp-gateway://alpha/file%3A%2F%2F%2Fdocs%2Freadme.md"
        );
        assert_eq!(resources[0]["name"], "readme");
        assert_eq!(offered_list("resources/list").unwrap().field(), "resources");
    }

    #[test]
    fn a_resources_read_is_rewritten_to_the_original_uri() {
        let wrapped = wrap_uri("alpha", "file:///docs/readme.md");
        let body = serde_json::to_vec(&serde_json::json!({
            "jsonrpc": "2.0", "id": 1, "method": "resources/read", "params": { "uri": wrapped },
        }))
        .unwrap();
        let (_, original) = unwrap_uri(&wrapped).unwrap();
        let out = rename_target(&body, "uri", &original).unwrap();
        let Ok(mcp::Body::Single(m)) = mcp::parse_body(&out) else {
            panic!("not a single message");
        };
        assert_eq!(m.method.as_deref(), Some("resources/read"));
        assert_eq!(m.target.as_deref(), Some("file:///docs/readme.md"));
    }

    #[test]
    fn rename_rewrites_only_the_name() {
        let body = br#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"github__echo","arguments":{"text":"github__echo"}}}"#;
        let out = rename_target(body, "name", "echo").unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["params"]["name"], "echo");
        assert_eq!(v["params"]["arguments"]["text"], "github__echo");
        assert_eq!(v["id"], 3);
        assert!(
            rename_target(
                br#"{"jsonrpc":"2.0","id":3,"method":"tools/call"}"#,
                "name",
                "x"
            )
            .is_none()
        );
    }

    #[test]
    fn discover_offers_only_versions_every_answering_member_lists() {
        let mut kept = None;
        keep_common_versions(&mut kept, &["2026-07-28", "2099-01-01"]);
        assert_eq!(kept.as_deref(), Some(&["2026-07-28"][..]));
        keep_common_versions(&mut kept, &["2025-11-25", "2026-07-28"]);
        assert_eq!(kept.as_deref(), Some(&["2026-07-28"][..]));
        keep_common_versions(&mut kept, &["2025-11-25"]);
        assert_eq!(kept.as_deref(), Some(&[][..]));
        let mut none = None;
        keep_common_versions(&mut none, &[]);
        assert_eq!(none.as_deref(), Some(&[][..]));
    }

    #[test]
    fn member_headers_carry_the_members_session_not_the_callers() {
        let mut h = HeaderMap::new();
        h.insert(protocol::SESSION_HEADER, HeaderValue::from_static("agg"));
        h.insert(
            protocol::PROTOCOL_VERSION_HEADER,
            HeaderValue::from_static("2025-11-25"),
        );
        let link = Link {
            session: Some("up-1".into()),
            version: "2025-06-18".into(),
        };
        let out = member_headers(&h, Some(&link));
        assert_eq!(out[protocol::SESSION_HEADER], "up-1");
        assert_eq!(out[protocol::PROTOCOL_VERSION_HEADER], "2025-06-18");
        let none = member_headers(&h, None);
        assert!(none.get(protocol::SESSION_HEADER).is_none());
        let stateless = Link {
            session: None,
            version: "2025-11-25".into(),
        };
        assert!(
            member_headers(&h, Some(&stateless))
                .get(protocol::SESSION_HEADER)
                .is_none()
        );
    }

    fn table(max: usize) -> Aggregate {
        Aggregate {
            name: "all".into(),
            members: Vec::new(),
            sessions: Sessions::new(std::time::Duration::from_secs(60), max, max),
        }
    }

    #[test]
    fn aggregated_sessions_are_random_owned_and_bounded() {
        let agg = table(2);
        let links: Links = vec![Some(Link {
            session: Some("u".into()),
            version: "2025-11-25".into(),
        })]
        .into();
        let owner: Arc<str> = Arc::from("spiffe://t/a");
        let open = |agg: &Aggregate| {
            let reservation = agg.sessions.reserve(&owner)?;
            Aggregate::open_session(reservation, Arc::clone(&links))
        };
        let a = open(&agg).unwrap();
        let b = open(&agg).unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(agg.sessions.check(&a, "spiffe://t/a").unwrap(), links);
        assert_eq!(
            agg.sessions.check(&a, "spiffe://t/b"),
            Err(SessionRefusal::NotOwner)
        );
        assert!(agg.sessions.check(&a, "spiffe://t/a").is_ok());
        assert_eq!(open(&agg), Err(SessionRefusal::Full));
        assert_eq!(agg.sessions.remove(&a), Some(links.clone()));
        assert_eq!(
            agg.sessions.check(&a, "spiffe://t/a"),
            Err(SessionRefusal::Unknown)
        );
    }
}
