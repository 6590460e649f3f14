//! Deciding: the one place a policy input is built, for a caller's message,
//! for a server-to-client request, and for a list entry, and where the
//! shadow set is consulted beside the enforced one. A decision is a value
//! (`Verdict`) carrying the labels its audit record and metrics use.
//!
//! Pure: no I/O, no locks; the caller audits, and counts with [`count`]
//! beside its record. Must never decide a message against a set other than
//! the one its request took, or let a shadow decision change what is
//! enforced.

use crate::audit::{Outcome, Reason, ShadowRecord};
use crate::clock;
use crate::mcp::Message;
use crate::metrics::Metrics;
use crate::pins::PinStatus;
use crate::policy::{Decision, PolicyInput, Target, User};
use crate::policy_store::Policies;
use crate::proxy::upstream::Upstream;

/// The outcome of deciding one message, with the labels audit and metrics use.
pub struct Verdict {
    pub allowed: bool,
    pub reason: Reason,
    pub policy_ids: Vec<String>,
    /// The shadow set's decision, when it disagrees with the enforced one.
    pub shadow: Option<ShadowRecord>,
}

impl From<Decision> for Verdict {
    fn from(d: Decision) -> Verdict {
        Verdict {
            allowed: d.allowed,
            reason: d.reason.into(),
            policy_ids: d.policy_ids,
            shadow: None,
        }
    }
}

impl Verdict {
    /// A message refused before any policy (its pin): no policy decided it.
    pub fn refused(reason: Reason) -> Verdict {
        Verdict {
            allowed: false,
            reason,
            policy_ids: Vec::new(),
            shadow: None,
        }
    }
}

/// Who asks, of which server, in which session: what every policy input of
/// an exchange shares. On the way back the principal is the server's
/// workload.
pub struct Subject<'a> {
    pub principal: &'a str,
    pub server: &'a Upstream,
    pub session_id: Option<&'a str>,
    pub protocol_version: Option<&'a str>,
    pub user: Option<&'a User>,
}

impl<'a> Subject<'a> {
    /// The policy input for `action` on `target`.
    pub fn input(
        &self,
        action: &'a str,
        target: Target<'a>,
        arguments: Option<&'a str>,
    ) -> PolicyInput<'a> {
        PolicyInput {
            principal: self.principal,
            action,
            server: &self.server.name,
            server_spiffe_id: &self.server.spiffe_id,
            target,
            arguments,
            session_id: self.session_id,
            protocol_version: self.protocol_version,
            user: self.user,
            now_unix_ms: clock::unix_ms(),
            pin: None,
        }
    }
}

/// Decides one of the caller's messages. Responses (answers to
/// server-to-client requests) carry no action and are permitted here.
/// `pin` is the called definition's pin status (`context.pin`), when its
/// upstream pins.
pub fn message(
    policies: &Policies,
    metrics: &Metrics,
    subject: &Subject<'_>,
    message: &Message<'_>,
    pin: Option<PinStatus>,
) -> Verdict {
    let Some(method) = message.method.as_deref() else {
        return Verdict {
            allowed: true,
            reason: Reason::CallerResponse,
            policy_ids: Vec::new(),
            shadow: None,
        };
    };
    let mut input = subject.input(
        method,
        Target::of_method(method, message.target.as_deref()),
        message.arguments.map(|a| a.get()),
    );
    if let Some(version) = message.protocol_version.as_deref() {
        input.protocol_version = Some(version);
    }
    input.pin = pin.map(PinStatus::as_str);
    let (decision, shadow) = with_shadow(policies, &input, metrics);
    Verdict {
        shadow,
        ..Verdict::from(decision)
    }
}

/// Counts one enforced decision of a message (a caller's, or a
/// server-to-client request on the way back; never a list entry): by
/// decision and method, by caller when opted in, and by each determining
/// policy of `policies`, the set that decided it.
pub fn count(
    metrics: &Metrics,
    policies: &Policies,
    verdict: &Verdict,
    method: &str,
    caller: &str,
) {
    metrics.decision(verdict.allowed, method, caller);
    policies.counts.count(verdict.reason, &verdict.policy_ids);
}

/// Decides with the enforced set and, in shadow mode, with the candidate
/// set too; a disagreement is counted and returned for the audit record,
/// never enforced.
pub fn with_shadow(
    policies: &Policies,
    input: &PolicyInput<'_>,
    metrics: &Metrics,
) -> (Decision, Option<ShadowRecord>) {
    let decision = policies.enforced.decide(input);
    let Some(shadow) = &policies.shadow else {
        return (decision, None);
    };
    let candidate = shadow.decide(input);
    if candidate.allowed == decision.allowed {
        return (decision, None);
    }
    metrics.shadow_disagreement(decision.allowed, input.action);
    let record = ShadowRecord {
        decision: if candidate.allowed {
            Outcome::Allow
        } else {
            Outcome::Deny
        },
        reason: candidate.reason.into(),
        policy_ids: candidate.policy_ids,
        policy_version: shadow.version().to_owned(),
    };
    (decision, Some(record))
}
