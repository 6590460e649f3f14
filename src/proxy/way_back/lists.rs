//! List results filtered to what the caller may use, page by page, with
//! the request's own policy snapshot.

use serde_json::Value;

use super::{Event, ReplyContext, WayBack};
use crate::mcp::method::ListKind;
use crate::policy::Target;

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
        // Lists are filtered by the enforced set the request was decided by
        // (shadow mode decides messages, not list entries).
        let subject = ctx.subject(&ctx.peer.spiffe_id);
        let filtered = filter_entries(value, kind, |name| {
            let mut input = subject.input(action, Target::named(kind.entry_kind(), name), None);
            input.now_unix_ms = now_unix_ms;
            ctx.policies.enforced.decide(&input).allowed
        });
        let Some((hidden, before)) = filtered.filter(|(hidden, _)| *hidden > 0) else {
            return false;
        };
        let detail = format!("hid {hidden} of {before} {field} the caller may not use");
        self.audit_way_back(ctx, Event::ListFiltered(kind), Some(detail))
            .await;
        true
    }
}

/// Keeps the entries of one list result page that `allowed` admits; every
/// other member of the result (`nextCursor` above all) is left as it is, so
/// the caller can page on. An entry without its name is dropped: it cannot be
/// authorized. Returns (hidden, before), or `None` when the value is not a
/// list result of that kind.
pub(super) fn filter_entries(
    value: &mut Value,
    kind: ListKind,
    mut allowed: impl FnMut(&str) -> bool,
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
            .is_some_and(&mut allowed)
    });
    Some((before - entries.len(), before))
}
