//! The aggregated endpoint's fan-out: `initialize`, `notifications/initialized`,
//! `server/discover` and the lists, asked of every member and answered by the
//! gateway (see the parent module).

use std::sync::Arc;

use bytes::Bytes;
use hyper::header::HeaderValue;
use hyper::{Method, Response};
use serde_json::Value;
use tracing::warn;

use super::names::{prefix_names, wrap_resources};
use super::{
    Aggregate, Asked, DEFAULT_VERSION, Link, Links, MAX_PAGES, member_headers, read_answer,
    result_response,
};
use crate::mcp::method::ListKind;
use crate::mcp::{self, Message};
use crate::proxy::reply::{ReplyBody, error_response};
use crate::proxy::upstream::Upstream;
use crate::proxy::way_back::PendingList;
use crate::proxy::{Gateway, ProxyError, RequestFacts, protocol};

impl Gateway {
    /// `server/discover` (2026-07-28): sent to every member policy allows;
    /// the gateway answers with the versions every answering member
    /// supports. A member that is denied or fails is left out.
    pub(super) async fn aggregate_discover(
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
        let id_value: Value = serde_json::from_str(id).unwrap_or(Value::Null);
        let mut versions: Option<Vec<&'static str>> = None;
        let mut last_denial = None;
        for (member, link) in agg.members.iter().zip(links.iter()) {
            let f = facts.on(member);
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

    /// `initialize`: sent to every member policy allows; the gateway answers.
    pub(super) async fn aggregate_initialize(
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
            let f = facts.on(member);
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

    /// `notifications/initialized` to each opened member policy allows.
    pub(super) async fn aggregate_initialized(
        self: &Arc<Self>,
        asked: &Asked<'_, '_>,
        bytes: &Bytes,
        message: &Message<'_>,
    ) {
        let Asked {
            agg,
            parts,
            links,
            facts,
        } = *asked;
        for (member, link) in agg.members.iter().zip(links.iter()) {
            let Some(link) = link else { continue };
            let f = facts.on(member);
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
    pub(super) async fn aggregate_list(
        self: &Arc<Self>,
        asked: &Asked<'_, '_>,
        kind: ListKind,
        id: &str,
        meta: Option<&Value>,
    ) -> Response<ReplyBody> {
        let id_value: Value = serde_json::from_str(id).unwrap_or(Value::Null);
        let field = kind.field();
        let mut merged = Vec::new();
        for (member, link) in asked.agg.members.iter().zip(asked.links.iter()) {
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

    /// One member's list (`method`), every page, filtered and prefixed;
    /// `None` if it was denied or failed (then it contributes nothing).
    pub(super) async fn member_list(
        self: &Arc<Self>,
        asked: &Asked<'_, '_>,
        member: &Arc<Upstream>,
        link: &Link,
        kind: ListKind,
        id: &Value,
        meta: Option<&Value>,
    ) -> Option<Vec<Value>> {
        let parts = asked.parts;
        let facts = &asked.facts.on(member);
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
            let mut ctx = facts.reply_context(member, vec![pending]);
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
}

/// Narrows the versions a discover answer offers to those a member also
/// lists; the first member's answer starts from what the gateway supports.
pub(super) fn keep_common_versions(kept: &mut Option<Vec<&'static str>>, supported: &[&str]) {
    kept.get_or_insert_with(|| protocol::SUPPORTED.to_vec())
        .retain(|v| supported.contains(v));
}
