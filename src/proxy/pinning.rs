//! The pin stage of the request path (`crate::pins`): a call of a tool or
//! prompt on an upstream that pins is checked against its pin before it is
//! decided. With `pins: enforce` an unpinned or changed definition is
//! refused here (-32070, audit reason `pin_mismatch`, nothing sent); with
//! `audit` the call goes on to the policies, which see `context.pin`.
//!
//! After the upstream announced a list change, the list is re-read (with
//! the gateway's own identity, `pin_fetch`) before the next call of that
//! kind is checked; calls wait for the re-read, and while it fails the
//! definitions count as changed.
//!
//! Must never: let a call through on what was listed before an announced
//! change, or count a definition as pinned that its upstream lists
//! otherwise.

use crate::audit::{Exchange, Outcome, Reason, Record};
use crate::mcp::Message;
use crate::metrics::UpstreamMetrics;
use crate::pins::{Check, PinKind, PinMode, PinStatus};
use crate::policy::Target;
use crate::proxy::Gateway;
use crate::proxy::facts::RequestFacts;
use crate::proxy::pin_fetch;
use crate::proxy::upstream::Upstream;

/// One call checked against its pin.
pub(super) struct PinCall {
    pub(super) kind: PinKind,
    pub(super) name: String,
    pub(super) check: Check,
}

impl PinCall {
    /// Whether `mode` refuses this call before any policy.
    pub(super) fn refused(&self, mode: PinMode) -> bool {
        mode == PinMode::Enforce && self.check.status != PinStatus::Pinned
    }

    /// The audit detail of a call that is not of a pinned definition.
    pub(super) fn detail(&self) -> Option<String> {
        (self.check.status != PinStatus::Pinned).then(|| self.check.detail(self.kind, &self.name))
    }
}

impl Gateway {
    /// The pin check of one message to `up`: `None` when `up` does not pin
    /// or the message calls no tool or prompt.
    pub(super) async fn check_pin(
        &self,
        message: &Message<'_>,
        facts: &RequestFacts<'_>,
        up: &Upstream,
    ) -> Option<PinCall> {
        if up.pin_mode == PinMode::Off {
            return None;
        }
        let kind = PinKind::of_call(message.method.as_deref()?)?;
        let name = message.target.as_deref()?.to_owned();
        let pins = facts.policies.pins.of(&up.name);
        if up.observed.is_stale(kind) {
            self.reread(up, facts, kind).await;
        }
        let check = if up.observed.is_stale(kind) {
            // The announced change could not be read: not what was pinned.
            let pinned = pins
                .and_then(|p| p.get(kind, &name))
                .map(|p| p.hash.clone());
            let status = if pinned.is_some() {
                PinStatus::Changed
            } else {
                PinStatus::Unpinned
            };
            Check {
                status,
                pinned,
                listed: None,
            }
        } else {
            up.observed.called(pins, kind, &name)
        };
        count(&up.metrics, check.status);
        Some(PinCall { kind, name, check })
    }

    /// Re-reads one list of `up` after it announced a change, once for all
    /// the calls waiting; each new mismatch is counted and audited.
    async fn reread(&self, up: &Upstream, facts: &RequestFacts<'_>, kind: PinKind) {
        let _one = up.observed.rereading().await;
        if !up.observed.is_stale(kind) {
            return;
        }
        let live = match pin_fetch::fetch(up, &[kind]).await {
            Ok(live) => live,
            Err(e) => {
                tracing::warn!(upstream = %up.name, list = kind.list().method(), error = %e,
                    "re-reading a changed list failed; its entries count as changed");
                return;
            }
        };
        let pins = facts.policies.pins.of(&up.name);
        let exchange = Exchange {
            upstream: &up.name,
            upstream_spiffe_id: &up.spiffe_id,
            ..facts.exchange()
        };
        for (name, pin) in live.entries(kind) {
            let (check, new) = up.observed.listed(pins, kind, name, &pin.definition);
            if new && check.status != PinStatus::Pinned {
                count(&up.metrics, check.status);
                let record =
                    mismatch_seen(&exchange, self.ids.next(), up.pin_mode, kind, name, &check);
                self.audit.record(record).await;
            }
        }
        up.observed.clear_stale(kind);
    }
}

/// Counts a definition that is not the pinned one.
pub(super) fn count(metrics: &UpstreamMetrics, status: PinStatus) {
    match status {
        PinStatus::Pinned => {}
        PinStatus::Changed => metrics.pin_changed.inc(),
        PinStatus::Unpinned => metrics.pin_unpinned.inc(),
    }
}

/// The record of a mismatch seen in a list: denied (taken out) under
/// `enforce`, allowed (passed on) under `audit`; names the entry and both
/// hashes.
pub(super) fn mismatch_seen(
    exchange: &Exchange<'_>,
    correlation_id: String,
    mode: PinMode,
    kind: PinKind,
    name: &str,
    check: &Check,
) -> Record {
    let outcome = if mode == PinMode::Enforce {
        Outcome::Deny
    } else {
        Outcome::Allow
    };
    Record::new(exchange, correlation_id, outcome, Reason::PinMismatch)
        .about(
            None,
            Some(kind.list().method()),
            Some(Target::named(kind.list().entry_kind(), name)),
        )
        .with_detail(Some(check.detail(kind, name)))
}
