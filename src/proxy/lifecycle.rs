//! A session's life at the gateway: bound to its caller when the upstream
//! issues it in answer to `initialize` (in the place reserved before the
//! initialize was sent), used by GET (the server stream) and ended by
//! DELETE only by its owner, and swept when idle, here and at the upstream.

use std::sync::Arc;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Method, Response};

use crate::proxy::facts::RequestFacts;
use crate::proxy::reply::ReplyBody;
use crate::proxy::session::Reservation;
use crate::proxy::upstream::Upstream;
use crate::proxy::way_back::ReplyContext;
use crate::proxy::{Gateway, ProxyError, protocol};

impl Gateway {
    /// Binds the session the upstream issued in answer to `initialize` to
    /// the caller, in the place reserved for it. A session that cannot be
    /// bound is not handed out. No session issued: the place is given back.
    pub(super) async fn bind_session(
        self: &Arc<Self>,
        resp: Response<Incoming>,
        mut ctx: ReplyContext,
        reservation: Reservation<()>,
    ) -> Response<ReplyBody> {
        let issued = protocol::single_header(resp.headers(), protocol::SESSION_HEADER)
            .ok()
            .flatten()
            .map(str::to_owned);
        let Some(id) = issued else {
            return self.way_back.inspect_reply(resp, ctx).await;
        };
        let up = Arc::clone(&ctx.upstream);
        match reservation.bind(&id, ()) {
            Ok(()) => {
                ctx.session_id = Some(id);
                self.way_back.inspect_reply(resp, ctx).await
            }
            Err(refusal) => {
                up.end_session(&id).await;
                let facts = RequestFacts {
                    peer: &ctx.peer,
                    session_id: Some(&id),
                    protocol_version: ctx.protocol_version.as_deref(),
                    user: ctx.user.as_ref(),
                    policies: &ctx.policies,
                    trace: &ctx.trace,
                    upstream: Some(&up),
                };
                self.refuse_unparsed(ProxyError::Session(refusal), &facts)
                    .await
            }
        }
    }

    /// GET (server stream) and DELETE (end session) carry no JSON-RPC message;
    /// they pass to the upstream for an authenticated caller, within the
    /// caller's own session (checked in `route`).
    pub(super) async fn stream_or_delete(
        self: &Arc<Self>,
        parts: &hyper::http::request::Parts,
        facts: &RequestFacts<'_>,
        up: &Arc<Upstream>,
    ) -> Response<ReplyBody> {
        let upstream = self
            .call_upstream(
                up,
                &parts.headers,
                parts.method.clone(),
                Bytes::new(),
                facts,
                None,
            )
            .await;
        match upstream {
            Ok(resp) => {
                if parts.method == Method::DELETE {
                    if resp.status().is_success()
                        && let Some(id) = facts.session_id
                    {
                        up.sessions.remove(id);
                    }
                    return up.reply(resp);
                }
                // The GET stream carries server-to-client requests: inspect it.
                self.way_back
                    .inspect_reply(resp, facts.reply_context(up, Vec::new()))
                    .await
            }
            Err(refusal) => refusal,
        }
    }

    /// Ends idle and expired sessions, here and at the upstream. The
    /// sessions are gone from the gateway at once; telling each upstream
    /// runs in its own task, so a slow upstream delays no other.
    pub async fn sweep_sessions(self: &Arc<Self>) {
        if let Some(agg) = &self.router.aggregate {
            let ended: Vec<_> = agg
                .sessions
                .sweep()
                .into_iter()
                .map(|(_, links)| links)
                .collect();
            if !ended.is_empty() {
                let gateway = Arc::clone(self);
                tokio::spawn(async move {
                    if let Some(agg) = &gateway.router.aggregate {
                        for links in &ended {
                            agg.end_links(links).await;
                        }
                    }
                });
            }
        }
        for up in &self.router.upstreams {
            let ended = up.sessions.sweep();
            if ended.is_empty() {
                continue;
            }
            let up = Arc::clone(up);
            tokio::spawn(async move {
                for (id, ()) in ended {
                    up.end_session(&id).await;
                }
            });
        }
    }
}
