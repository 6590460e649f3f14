//! List results filtered to what the caller may use, page by page, with
//! the request's own policy snapshot: on an upstream that pins, each entry
//! is first checked against its pin (`crate::pins`; under `enforce` an
//! unpinned or changed one is taken out for every caller, and each new
//! mismatch is counted and audited once), then decided like a call of it
//! (with `context.pin`).

use serde_json::Value;

use super::{Event, ReplyContext, WayBack};
use crate::audit::Record;
use crate::mcp::method::ListKind;
use crate::pins::{PinKind, PinMode, PinStatus};
use crate::policy::Target;
use crate::proxy::pinning;

impl WayBack {
    /// Filters one JSON-RPC response if it answers a pending list request.
    /// Returns whether it changed.
    pub(in crate::proxy) async fn filter_list_value(
        &self,
        value: &mut Value,
        ctx: &ReplyContext,
    ) -> bool {
        let Some(kind) = value
            .get("id")
            .and_then(|id| ctx.lists.iter().find(|p| p.id == *id))
            .map(|p| p.kind)
        else {
            return false;
        };
        let (field, action) = (kind.field(), kind.use_method());
        let now_unix_ms = crate::clock::unix_ms();
        let pin_kind = PinKind::of_list(kind).filter(|_| ctx.upstream.pin_mode != PinMode::Off);
        let mut seen: Vec<Record> = Vec::new();
        let mut unpinned_hidden = 0;
        // Lists are filtered by the enforced set the request was decided by
        // (shadow mode decides messages, not list entries).
        let subject = ctx.subject(&ctx.peer.spiffe_id);
        let filtered = filter_entries(value, kind, |name, entry| {
            let mut input = subject.input(action, Target::named(kind.entry_kind(), name), None);
            if let Some(pin_kind) = pin_kind {
                let status = self.pin_entry(ctx, pin_kind, name, entry, &mut seen);
                if ctx.upstream.pin_mode == PinMode::Enforce && status != PinStatus::Pinned {
                    unpinned_hidden += 1;
                    return false;
                }
                input.pin = Some(status.as_str());
            }
            input.now_unix_ms = now_unix_ms;
            ctx.policies.enforced.decide(&input).allowed
        });
        for record in seen {
            self.audit.record(record).await;
        }
        let Some((hidden, before)) = filtered.filter(|(hidden, _)| *hidden > 0) else {
            return false;
        };
        let detail = match unpinned_hidden {
            0 => format!("hid {hidden} of {before} {field} the caller may not use"),
            n => format!(
                "hid {hidden} of {before} {field}: {n} not matching their pins, {} the caller may not use",
                hidden - n
            ),
        };
        self.audit_way_back(ctx, Event::ListFiltered(kind), Some(detail))
            .await;
        true
    }
}

impl WayBack {
    /// Checks one listed entry against its pin; a new mismatch is counted,
    /// and its record added to `seen`.
    fn pin_entry(
        &self,
        ctx: &ReplyContext,
        kind: PinKind,
        name: &str,
        entry: &Value,
        seen: &mut Vec<Record>,
    ) -> PinStatus {
        let up = &ctx.upstream;
        let pins = ctx.policies.pins.of(&up.name);
        let (check, new) = up.observed.listed(pins, kind, name, entry);
        if new && check.status != PinStatus::Pinned {
            pinning::count(&up.metrics, check.status);
            let (id, mode) = (self.ids.next(), up.pin_mode);
            seen.push(pinning::mismatch_seen(
                &ctx.exchange(),
                id,
                mode,
                kind,
                name,
                &check,
            ));
        }
        check.status
    }
}

/// Keeps the entries of one list result page that `allowed` admits (given
/// each entry's name and the entry); every other member of the result
/// (`nextCursor` above all) is left as it is, so the caller can page on.
/// An entry without its name is dropped: it cannot be authorized. Returns
/// (hidden, before), or `None` when the value is not a list result of that
/// kind.
pub(super) fn filter_entries(
    value: &mut Value,
    kind: ListKind,
    mut allowed: impl FnMut(&str, &Value) -> bool,
) -> Option<(usize, usize)> {
    let (field, key) = (kind.field(), kind.entry_key());
    let Some(Value::Array(entries)) = value.get_mut("result").and_then(|r| r.get_mut(field)) else {
        return None;
    };
    let before = entries.len();
    entries.retain(|entry| {
        entry
            .get(key)
            .and_then(Value::as_str)
            .is_some_and(|name| allowed(name, entry))
    });
    Some((before - entries.len(), before))
}
