//! The aggregated endpoint's fan-out: `initialize`, `notifications/initialized`,
//! `server/discover` and the lists, asked of every member and answered by the
//! gateway (see the parent module).

use std::sync::Arc;

use bytes::Bytes;
use hyper::header::{HeaderMap, HeaderValue};
use hyper::{Method, Response};
use serde_json::Value;
use tracing::warn;

use super::names::{prefix_names, wrap_resources};
use super::{
    Aggregate, Asked, DEFAULT_VERSION, Link, Links, MAX_PAGES, member_headers, read_answer,
    result_response,
};
use crate::mcp::method::{self, ListKind};
use crate::mcp::{self, Message};
use crate::proxy::reply::{ReplyBody, error_response};
use crate::proxy::upstream::Upstream;
use crate::proxy::way_back::PendingList;
use crate::proxy::{Gateway, ProxyError, RequestFacts, protocol};

/// A message the gateway asks each member on the caller's behalf.
struct Question<'q, 'm> {
    message: &'q Message<'m>,
    bytes: &'q Bytes,
    /// The caller's JSON-RPC id: raw JSON, and parsed (a member's answer
    /// must carry it).
    id: &'q str,
    id_value: &'q Value,
    /// The method, for the record of a member's failure.
    method: &'static str,
}

/// What one member made of a [`Question`].
enum MemberAnswer<T> {
    /// Policy denied the message to this member: the denial's correlation id.
    Denied(String),
    /// Not delivered, or answered without what was asked (audited as the
    /// member's failure); the session id it issued, if any.
    Failed(Option<String>),
    /// What was asked, from a successful answer; the session id it issued.
    Answered(T, Option<String>),
}

impl Aggregate {
    /// Asks one member: the message decided for it, sent, and `extract`
    /// applied to its answer (read by the strict parser). A non-2xx status,
    /// an unreadable answer or one `extract` finds nothing in is the
    /// member's failure: logged, counted and audited as `method`'s.
    async fn ask_member<T>(
        &self,
        gw: &Arc<Gateway>,
        member: &Arc<Upstream>,
        facts: &RequestFacts<'_>,
        headers: &HeaderMap,
        question: &Question<'_, '_>,
        extract: impl FnOnce(Value) -> Option<T>,
    ) -> MemberAnswer<T> {
        if let Err(denial) = gw.decide_message(question.message, facts, member).await {
            return MemberAnswer::Denied(denial.correlation_id);
        }
        let bytes = question.bytes.clone();
        let sent = gw
            .call_upstream(
                member,
                headers,
                Method::POST,
                bytes,
                facts,
                Some(question.id),
            )
            .await;
        // A failure to deliver is audited by `call_upstream`.
        let Ok(resp) = sent else {
            return MemberAnswer::Failed(None);
        };
        let session = protocol::single_header(resp.headers(), protocol::SESSION_HEADER)
            .ok()
            .flatten()
            .map(str::to_owned);
        let answer = if resp.status().is_success() {
            read_answer(member, resp, question.id_value).await
        } else {
            Err(ProxyError::UpstreamUnavailable)
        };
        let refusal = match answer.map(extract) {
            Ok(Some(found)) => return MemberAnswer::Answered(found, session),
            Ok(None) => ProxyError::UpstreamUnavailable,
            Err(refusal) => refusal,
        };
        self.member_failed(gw, member, facts, refusal, question.method)
            .await;
        MemberAnswer::Failed(session)
    }

    /// No member could be used: the last denial's refusal if `refusal` is
    /// one, under its correlation id; otherwise a new one.
    fn no_member_answered(
        &self,
        gw: &Gateway,
        refusal: ProxyError,
        last_denial: Option<String>,
        id: &str,
    ) -> Response<ReplyBody> {
        let correlation_id = last_denial.unwrap_or_else(|| gw.ids.next());
        error_response(&refusal, Some(id), &correlation_id)
    }

    /// `initialize` asked of every member: per member, the link it opened
    /// (`None` if denied or failed), and the last denial's correlation id.
    async fn open_links(
        &self,
        gw: &Arc<Gateway>,
        parts: &hyper::http::request::Parts,
        facts: &RequestFacts<'_>,
        question: &Question<'_, '_>,
    ) -> (Vec<Option<Link>>, Option<String>) {
        let mut links = Vec::with_capacity(self.members.len());
        let mut last_denial = None;
        for member in &self.members {
            let f = facts.on(member);
            let headers = member_headers(&parts.headers, None);
            let answer = self
                .ask_member(gw, member, &f, &headers, question, answered_version)
                .await;
            links.push(match answer {
                MemberAnswer::Answered(version, session) => Some(Link { session, version }),
                MemberAnswer::Denied(correlation_id) => {
                    last_denial = Some(correlation_id);
                    None
                }
                MemberAnswer::Failed(session) => {
                    // A session the member opened for nothing is ended.
                    if let Some(sid) = session {
                        member.end_session(&sid).await;
                    }
                    None
                }
            });
        }
        (links, last_denial)
    }

    /// `server/discover` (2026-07-28): sent to every member policy allows;
    /// the gateway answers with the versions every answering member
    /// supports. A member that is denied or fails is left out.
    pub(super) async fn discover(
        &self,
        asked: &Asked<'_, '_>,
        bytes: &Bytes,
        message: &Message<'_>,
        id: &str,
    ) -> Response<ReplyBody> {
        let gw = asked.gw;
        let id_value: Value = serde_json::from_str(id).unwrap_or(Value::Null);
        let question = Question {
            message,
            bytes,
            id,
            id_value: &id_value,
            method: method::SERVER_DISCOVER,
        };
        let mut versions: Option<Vec<&'static str>> = None;
        let mut last_denial = None;
        for (member, link) in self.members.iter().zip(asked.links.iter()) {
            let f = asked.facts.on(member);
            let headers = member_headers(&asked.parts.headers, link.as_ref());
            match self
                .ask_member(gw, member, &f, &headers, &question, supported_versions)
                .await
            {
                MemberAnswer::Answered(supported, _) => {
                    keep_common_versions(&mut versions, &supported);
                }
                MemberAnswer::Denied(correlation_id) => last_denial = Some(correlation_id),
                MemberAnswer::Failed(_) => {}
            }
        }
        match versions {
            Some(v) if !v.is_empty() => result_response(id, discover_result(&v), None),
            answered => {
                let refusal = if answered.is_none() && last_denial.is_some() {
                    ProxyError::Denied
                } else {
                    ProxyError::UpstreamUnavailable
                };
                self.no_member_answered(gw, refusal, last_denial, id)
            }
        }
    }

    /// `initialize`: sent to every member policy allows; the gateway answers.
    pub(super) async fn initialize(
        &self,
        gw: &Arc<Gateway>,
        parts: &hyper::http::request::Parts,
        bytes: &Bytes,
        message: &Message<'_>,
        id: &str,
        facts: &RequestFacts<'_>,
    ) -> Response<ReplyBody> {
        // The session's place is taken before any member is asked.
        let reservation = match self.sessions.reserve(&facts.peer.spiffe_id) {
            Ok(reservation) => reservation,
            Err(refusal) => {
                return gw
                    .refuse_unparsed(ProxyError::Session(refusal), facts)
                    .await;
            }
        };
        let id_value: Value = serde_json::from_str(id).unwrap_or(Value::Null);
        let question = Question {
            message,
            bytes,
            id,
            id_value: &id_value,
            method: method::INITIALIZE,
        };
        let (links, last_denial) = self.open_links(gw, parts, facts, &question).await;
        if links.iter().all(Option::is_none) {
            let refusal = if last_denial.is_some() {
                ProxyError::Denied
            } else {
                ProxyError::UpstreamUnavailable
            };
            return self.no_member_answered(gw, refusal, last_denial, id);
        }
        let links: Links = links.into();
        let session = match Aggregate::open_session(reservation, Arc::clone(&links)) {
            Ok(session) => session,
            Err(refusal) => {
                self.end_links(&links).await;
                return gw
                    .refuse_unparsed(ProxyError::Session(refusal), facts)
                    .await;
            }
        };
        let result = initialize_result(message.protocol_version.as_deref());
        result_response(id, result, Some(&session))
    }

    /// `notifications/initialized` to each opened member policy allows.
    pub(super) async fn initialized(
        &self,
        asked: &Asked<'_, '_>,
        bytes: &Bytes,
        message: &Message<'_>,
    ) {
        let Asked {
            gw,
            parts,
            links,
            facts,
        } = *asked;
        for (member, link) in self.members.iter().zip(links.iter()) {
            let Some(link) = link else { continue };
            let f = facts.on(member);
            if gw.decide_message(message, &f, member).await.is_err() {
                continue;
            }
            let headers = member_headers(&parts.headers, Some(link));
            let _ = gw
                .call_upstream(member, &headers, Method::POST, bytes.clone(), &f, None)
                .await;
        }
    }

    /// `tools/list` or `prompts/list`: every opened member's allowed
    /// entries, prefixed, merged.
    pub(super) async fn list(
        &self,
        asked: &Asked<'_, '_>,
        kind: ListKind,
        id: &str,
        meta: Option<&Value>,
    ) -> Response<ReplyBody> {
        let id_value: Value = serde_json::from_str(id).unwrap_or(Value::Null);
        let field = kind.field();
        let mut merged = Vec::new();
        for (member, link) in self.members.iter().zip(asked.links.iter()) {
            let Some(link) = link else { continue };
            let listed = self
                .member_list(asked, member, link, kind, &id_value, meta)
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

    /// One member's list (`kind`), every page, filtered and prefixed;
    /// `None` if it was denied or failed (then it contributes nothing).
    pub(super) async fn member_list(
        &self,
        asked: &Asked<'_, '_>,
        member: &Arc<Upstream>,
        link: &Link,
        kind: ListKind,
        id: &Value,
        meta: Option<&Value>,
    ) -> Option<Vec<Value>> {
        let gw = asked.gw;
        let facts = &asked.facts.on(member);
        let method = kind.method();
        let mut headers = member_headers(&asked.parts.headers, Some(link));
        if link.version == protocol::MODERN {
            headers.insert(protocol::METHOD_HEADER, HeaderValue::from_static(method));
        }
        let mut entries = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let bytes = list_request(method, id, cursor.take(), meta)?;
            let Ok(mcp::Body::Single(message)) = mcp::parse_body(&bytes) else {
                return None;
            };
            let raw_id = id.to_string();
            let question = Question {
                message: &message,
                bytes: &bytes,
                id: &raw_id,
                id_value: id,
                method,
            };
            let has_result = |answer: Value| answer.get("result").is_some().then_some(answer);
            let mut answer = match self
                .ask_member(gw, member, facts, &headers, &question, has_result)
                .await
            {
                MemberAnswer::Answered(answer, _) => answer,
                MemberAnswer::Denied(_) | MemberAnswer::Failed(_) => return None,
            };
            let pending = PendingList::new(kind, id.clone());
            let mut ctx = facts.member_reply_context(member, link);
            ctx.lists = vec![pending];
            gw.way_back.filter_list_value(&mut answer, &ctx).await;
            let result = answer.get_mut("result")?;
            if kind == ListKind::Resources {
                entries.extend(wrap_resources(&member.name, result));
            } else {
                entries.extend(prefix_names(&member.name, result, kind.field()));
            }
            match result.get("nextCursor").and_then(Value::as_str) {
                Some(next) => cursor = Some(next.to_owned()),
                None => return Some(entries),
            }
        }
        warn!(upstream = %member.name, pages = MAX_PAGES, method, "more pages than read; the rest left out");
        Some(entries)
    }
}

/// One page's request of a member's list: `cursor` and the caller's
/// `_meta` (2026-07-28) as params when there are any.
fn list_request(
    method: &str,
    id: &Value,
    cursor: Option<String>,
    meta: Option<&Value>,
) -> Option<Bytes> {
    let mut request = serde_json::json!({ "jsonrpc": "2.0", "id": id, "method": method });
    let mut params = serde_json::Map::new();
    if let Some(c) = cursor {
        params.insert("cursor".to_owned(), Value::String(c));
    }
    if let Some(meta) = meta {
        params.insert("_meta".to_owned(), meta.clone());
    }
    if !params.is_empty() {
        request["params"] = Value::Object(params);
    }
    serde_json::to_vec(&request).ok().map(Bytes::from)
}

/// The versions a member's `server/discover` answer lists.
fn supported_versions(answer: Value) -> Option<Vec<String>> {
    let listed = answer.pointer("/result/supportedVersions")?.as_array()?;
    Some(
        listed
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
    )
}

/// The version a member's `initialize` answer agreed to.
fn answered_version(answer: Value) -> Option<String> {
    answer
        .pointer("/result/protocolVersion")?
        .as_str()
        .map(str::to_owned)
}

/// The gateway's own `server/discover` result over the common `versions`.
fn discover_result(versions: &[&str]) -> Value {
    serde_json::json!({
        "supportedVersions": versions,
        "capabilities": { "tools": {}, "prompts": {}, "resources": {} },
        "resultType": "complete",
        "ttlMs": 0,
        "cacheScope": "private",
        "_meta": { "io.modelcontextprotocol/serverInfo": {
            "name": "spiffe-mcp-gateway", "version": env!("CARGO_PKG_VERSION"),
        } },
    })
}

/// The gateway's own `initialize` result: the version the caller asked for
/// when the gateway speaks it in the session era, else the default.
fn initialize_result(requested: Option<&str>) -> Value {
    let requested = requested.unwrap_or("");
    let version = if requested != protocol::MODERN && protocol::SUPPORTED.contains(&requested) {
        requested
    } else {
        DEFAULT_VERSION
    };
    serde_json::json!({
        "protocolVersion": version,
        "capabilities": { "tools": {}, "prompts": {}, "resources": {} },
        "serverInfo": { "name": "spiffe-mcp-gateway", "version": env!("CARGO_PKG_VERSION") },
    })
}

/// Narrows the versions a discover answer offers to those a member also
/// lists; the first member's answer starts from what the gateway supports.
pub(super) fn keep_common_versions(
    kept: &mut Option<Vec<&'static str>>,
    supported: &[impl AsRef<str>],
) {
    kept.get_or_insert_with(|| protocol::SUPPORTED.to_vec())
        .retain(|v| supported.iter().any(|s| s.as_ref() == *v));
}
