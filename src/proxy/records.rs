//! The audit stage of the request path: the record of each decided
//! message, and each refusal before or instead of a decision (counted,
//! audited, answered under the request's id, nothing forwarded). Every
//! record of a caller's request is built here, from the request's facts.

use hyper::Response;

use crate::audit::{Exchange, Outcome, Record};
use crate::mcp::Message;
use crate::policy::Target;
use crate::proxy::decide::Verdict;
use crate::proxy::facts::RequestFacts;
use crate::proxy::reply::{ReplyBody, error_response};
use crate::proxy::session::SessionRefusal;
use crate::proxy::upstream::Upstream;
use crate::proxy::{Gateway, ProxyError};

impl Gateway {
    pub(super) async fn audit_decision(
        &self,
        message: &Message<'_>,
        facts: &RequestFacts<'_>,
        up: &Upstream,
        verdict: Verdict,
        correlation_id: &str,
        detail: Option<String>,
    ) {
        let method = message.method.as_deref();
        let target = method.map(|m| Target::of_method(m, message.target.as_deref()));
        let exchange = Exchange {
            upstream: &up.name,
            upstream_spiffe_id: &up.spiffe_id,
            protocol_version: message
                .protocol_version
                .as_deref()
                .or(facts.protocol_version),
            ..facts.exchange()
        };
        let decision = if verdict.allowed {
            Outcome::Allow
        } else {
            Outcome::Deny
        };
        let record = Record::new(
            &exchange,
            correlation_id.to_owned(),
            decision,
            verdict.reason,
        )
        .about(message.id.as_ref().map(|id| id.raw_json()), method, target)
        .decided_by(verdict.policy_ids, verdict.shadow)
        .with_detail(detail);
        self.audit.record(record).await;
    }

    /// A refusal before any message could be parsed: audited, never forwarded.
    pub(super) async fn refuse_unparsed(
        &self,
        refusal: ProxyError,
        facts: &RequestFacts<'_>,
    ) -> Response<ReplyBody> {
        self.refuse_message(refusal, facts, None).await
    }

    /// A refusal, answered under the request's id if it has one: counted,
    /// audited, nothing forwarded.
    pub(super) async fn refuse_message(
        &self,
        refusal: ProxyError,
        facts: &RequestFacts<'_>,
        id: Option<&str>,
    ) -> Response<ReplyBody> {
        let correlation_id = self.ids.next();
        self.metrics.refused(refusal.audit_reason());
        if matches!(refusal, ProxyError::Session(SessionRefusal::RuleLimit)) {
            // A rule's session cap is a per-identity limit too.
            self.metrics.limited(refusal.audit_reason());
        }
        let upstream = facts.upstream.map(|u| u.name.as_str());
        facts
            .trace
            .refused(refusal.audit_reason().as_str(), upstream);
        let record = self.bare_record(&refusal, facts, Outcome::Deny, &correlation_id);
        self.audit.record(record).await;
        error_response(&refusal, id, &correlation_id)
    }

    pub(super) fn bare_record(
        &self,
        refusal: &ProxyError,
        facts: &RequestFacts<'_>,
        decision: Outcome,
        correlation_id: &str,
    ) -> Record {
        let reason = refusal.audit_reason();
        Record::new(
            &facts.exchange(),
            correlation_id.to_owned(),
            decision,
            reason,
        )
        .with_detail(Some(refusal.to_string()))
    }
}
