//! The facts of one request that every stage reads: who asked (the
//! verified peer), in which session and protocol version, as which end
//! user, under which policy snapshot and trace, to which upstream. Taken
//! once when the request is routed; borrowed by the stages, and copied into
//! an owned `ReplyContext` for the way back.

use std::sync::Arc;

use crate::audit::Exchange;
use crate::mcp::Message;
use crate::policy::User;
use crate::policy_store::Policies;
use crate::proxy::listener::Peer;
use crate::proxy::trace::Trace;
use crate::proxy::upstream::Upstream;
use crate::proxy::way_back::{self, PendingList, ReplyContext};

/// The facts of one HTTP request that every audit record repeats.
#[derive(Clone, Copy)]
pub(super) struct RequestFacts<'a> {
    pub(super) peer: &'a Peer,
    /// The session as audit records and policies name it: the upstream's
    /// own id (on the aggregated endpoint, its handle); before the session
    /// is checked, the id as the caller sent it.
    pub(super) session_id: Option<&'a str>,
    /// The upstream's own session id, sent in place of the caller's sealed
    /// `Mcp-Session-Id`; `None` where the headers already carry the right
    /// one (no session, or a member of the aggregated endpoint).
    pub(super) upstream_session: Option<&'a str>,
    pub(super) protocol_version: Option<&'a str>,
    /// The verified end user (`context.user`), when a token was presented.
    pub(super) user: Option<&'a Arc<User>>,
    /// The policy sets this request is decided with, taken once.
    pub(super) policies: &'a Arc<Policies>,
    /// W3C trace context: the caller's trace continued, or a new one.
    pub(super) trace: &'a Trace,
    /// The upstream the request's path names; `None` only for a path that
    /// names none (refused).
    pub(super) upstream: Option<&'a Upstream>,
}

impl<'a> RequestFacts<'a> {
    /// What every audit record of this request repeats.
    pub(super) fn exchange(&self) -> Exchange<'a> {
        Exchange {
            caller: &self.peer.spiffe_id,
            // Empty only for a path that names no upstream.
            upstream: self.upstream.map_or("", |u| u.name.as_str()),
            upstream_spiffe_id: self.upstream.map_or("", |u| u.spiffe_id.as_str()),
            session_id: self.session_id,
            protocol_version: self.protocol_version,
            user: self.user.map(|u| &**u),
            trace_id: &self.trace.trace_id,
            span_id: &self.trace.span_id,
            policy_version: self.policies.enforced.version(),
        }
    }

    /// The same request as one to `up` (a member of the aggregated
    /// endpoint): its decisions and records name that upstream.
    pub(super) fn on<'b>(&self, up: &'b Upstream) -> RequestFacts<'b>
    where
        'a: 'b,
    {
        RequestFacts {
            upstream: Some(up),
            upstream_session: None,
            ..*self
        }
    }

    /// What the way back needs to know about this request, owned: it
    /// outlives the request's borrow while the reply streams.
    pub(super) fn reply_context(
        &self,
        up: &Arc<Upstream>,
        lists: Vec<PendingList>,
    ) -> ReplyContext {
        ReplyContext {
            upstream: Arc::clone(up),
            peer: self.peer.clone(),
            session_id: self.session_id.map(str::to_owned),
            protocol_version: self.protocol_version.map(str::to_owned),
            user: self.user.cloned(),
            trace: self.trace.clone(),
            policies: Arc::clone(self.policies),
            lists,
            extra_answers: Vec::new(),
            input_requests_possible: false,
            awaiting: None,
        }
    }

    /// The way back of a message the aggregated endpoint sent `member` in
    /// the member's own session (`link`): its session id and version, not
    /// the caller's.
    pub(super) fn member_reply_context(
        &self,
        member: &Arc<Upstream>,
        link: &crate::proxy::aggregate::Link,
    ) -> ReplyContext {
        let mut ctx = self.reply_context(member, Vec::new());
        ctx.session_id = link.session.clone();
        ctx.protocol_version = Some(link.version.clone());
        ctx
    }

    /// The way back of a POST of `messages`: its list requests, whether
    /// the reply may embed input requests, the gateway's answers for denied
    /// batch elements, and the one request it answers (whose upstream
    /// failure is answered under its id).
    pub(super) fn post_reply_context(
        &self,
        up: &Arc<Upstream>,
        messages: &[Message<'_>],
        answers: Vec<Vec<u8>>,
    ) -> ReplyContext {
        let mut ctx = self.reply_context(up, way_back::pending_lists(messages));
        ctx.extra_answers = answers;
        ctx.awaiting = match messages {
            [only] => only.id.as_ref().map(|id| id.raw_json().to_owned()),
            _ => None,
        };
        ctx.input_requests_possible =
            way_back::input_requests_possible(messages, self.protocol_version);
        ctx
    }
}
