//! Server-to-client requests on the way back (on a stream, or embedded in
//! a 2026-07-28 `InputRequiredResult`): decided with the upstream's
//! workload as principal and the agent's as resource; a denied one is
//! answered to the upstream and never shown to the agent.

use bytes::Bytes;
use hyper::Method;
use hyper::header::HeaderValue;
use serde_json::Value;
use tracing::{debug, warn};

use super::{ReplyContext, WayBack};
use crate::audit::{Exchange, Outcome, Record};
use crate::mcp::Message;
use crate::policy::Target;
use crate::proxy::decide::{self, Verdict};
use crate::proxy::error::CODE_DENIED;
use crate::proxy::reply::jsonrpc_error;
use crate::proxy::{forward, protocol};

impl WayBack {
    /// Decides a server-to-client request; a denied one is answered to the
    /// upstream with an error. Returns whether the agent may see it.
    pub(super) async fn decide_server_request(
        &self,
        message: &Message<'_>,
        method: &str,
        ctx: &ReplyContext,
    ) -> bool {
        let id = message.id.as_ref().map(|id| id.raw_json());
        let (allowed, correlation_id) = self
            .decide_for_agent(method, id, "server-to-client request", ctx)
            .await;
        if !allowed && let Some(id) = id {
            self.answer_upstream(id, &correlation_id, ctx).await;
        }
        allowed
    }

    /// Tells the upstream its request to the agent was refused.
    pub(super) async fn answer_upstream(&self, id: &str, correlation_id: &str, ctx: &ReplyContext) {
        let body = jsonrpc_error(
            Some(id),
            CODE_DENIED,
            "forbidden by gateway policy",
            correlation_id,
        );
        let mut h = forward::own_post_headers();
        for (name, value) in [
            (protocol::SESSION_HEADER, ctx.session_id.as_deref()),
            (
                protocol::PROTOCOL_VERSION_HEADER,
                ctx.protocol_version.as_deref(),
            ),
        ] {
            if let Some(v) = value.and_then(|v| HeaderValue::from_str(v).ok()) {
                h.insert(name, v);
            }
        }
        let req = forward::request(&ctx.upstream, Method::POST, Bytes::from(body), h);
        let sent = ctx.upstream.client.request(req);
        match tokio::time::timeout(ctx.upstream.request_timeout, sent).await {
            Ok(Ok(resp)) => debug!(status = %resp.status(), "refusal sent to the upstream"),
            Ok(Err(e)) => warn!(error = %e, "sending a refusal to the upstream failed"),
            Err(_) => warn!("sending a refusal to the upstream timed out"),
        }
    }

    /// 2026-07-28: the server-to-client requests an `InputRequiredResult`
    /// embeds are decided like standalone ones. If any is denied, the whole
    /// result becomes a -32060 error for the caller's request, so the agent
    /// never sees the denied request (and cannot loop on retries).
    pub(super) async fn decide_input_requests(
        &self,
        value: &mut Value,
        ctx: &ReplyContext,
    ) -> bool {
        let Some(requests) = value
            .get("result")
            .filter(|r| r.get("resultType").and_then(Value::as_str) == Some("input_required"))
            .and_then(|r| r.get("inputRequests"))
            .and_then(Value::as_object)
        else {
            return false;
        };
        let mut refused = None;
        for request in requests.values() {
            let method = request.get("method").and_then(Value::as_str).unwrap_or("");
            let (allowed, correlation_id) = self
                .decide_for_agent(method, None, "input request in an InputRequiredResult", ctx)
                .await;
            if !allowed {
                refused = Some(correlation_id);
                break;
            }
        }
        let Some(correlation_id) = refused else {
            return false;
        };
        let id = value.get("id").cloned().unwrap_or(Value::Null);
        *value = serde_json::json!({
            "jsonrpc": "2.0",
            "id": id,
            "error": {
                "code": CODE_DENIED,
                "message": "forbidden by gateway policy",
                "data": { "correlation_id": correlation_id },
            },
        });
        true
    }

    /// Decides a request of the upstream's to the agent (the upstream's
    /// workload as principal, the agent's as resource) and audits it.
    /// Returns whether it is allowed, and the audit record's correlation id.
    pub(super) async fn decide_for_agent(
        &self,
        method: &str,
        request_id: Option<&str>,
        detail: &'static str,
        ctx: &ReplyContext,
    ) -> (bool, String) {
        let policies = self.policies.current();
        let subject = ctx.subject(&ctx.upstream.spiffe_id);
        let input = subject.input(method, Target::Workload(&ctx.peer.spiffe_id), None);
        let (decision, shadow) = decide::with_shadow(&policies, &input, &self.metrics);
        let verdict = Verdict {
            shadow,
            ..Verdict::from(decision)
        };
        let server = &ctx.upstream.spiffe_id;
        decide::count(&self.metrics, &policies, &verdict, method, server);
        let correlation_id = self.ids.next();
        let exchange = Exchange {
            caller: &ctx.upstream.spiffe_id,
            policy_version: policies.enforced.version(),
            ..ctx.exchange()
        };
        let outcome = if verdict.allowed {
            Outcome::Allow
        } else {
            Outcome::Deny
        };
        let target = Target::Workload(&ctx.peer.spiffe_id);
        let record = Record::new(&exchange, correlation_id.clone(), outcome, verdict.reason)
            .about(request_id, Some(method), Some(target))
            .decided_by(verdict.policy_ids, verdict.shadow)
            .with_detail(Some(detail.to_owned()));
        self.audit.record(record).await;
        (verdict.allowed, correlation_id)
    }
}
