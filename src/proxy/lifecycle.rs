//! A session's life at the gateway: bound to its caller when the upstream
//! issues it in answer to `initialize` (in the place reserved before the
//! initialize was sent), used by GET (the server stream) and ended by
//! DELETE only by its owner, and swept when idle, here and at the upstream.

use std::sync::Arc;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue};
use hyper::{Method, Response};

use crate::config::Config;
use crate::proxy::facts::RequestFacts;
use crate::proxy::reply::ReplyBody;
use crate::proxy::session::keys::SessionKeys;
use crate::proxy::session::{Bounds, Reservation};
use crate::proxy::upstream::Upstream;
use crate::proxy::way_back::ReplyContext;
use crate::proxy::{Gateway, ProxyError, protocol};

impl Gateway {
    /// Binds the session the upstream issued in answer to `initialize` to
    /// the caller, in the place reserved for it. A session that cannot be
    /// bound is not handed out. No session issued: the place is given back.
    pub(super) async fn bind_session(
        self: &Arc<Self>,
        mut resp: Response<Incoming>,
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
        let version = ctx.protocol_version.clone();
        match reservation.bind(&id, version.as_deref(), ()) {
            Ok(sealed) => {
                let issued = HeaderValue::try_from(sealed).ok();
                show_session(resp.headers_mut(), issued.as_ref());
                ctx.session_id = Some(id);
                self.way_back.inspect_reply(resp, ctx).await
            }
            Err(refusal) => {
                up.end_session(&id).await;
                let facts = RequestFacts {
                    peer: &ctx.peer,
                    session_id: Some(&id),
                    upstream_session: None,
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
        let sealed = sealed(&parts.headers);
        match upstream {
            Ok(mut resp) => {
                show_session(resp.headers_mut(), sealed_value(&parts.headers));
                if parts.method == Method::DELETE {
                    if resp.status().is_success()
                        && let Some(sealed) = sealed
                    {
                        up.sessions.remove(sealed);
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
                .map(|session| session.value)
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
                for session in ended {
                    up.end_session(&session.handle).await;
                }
            });
        }
    }
}

/// The sealed session id the caller sent, if one.
pub(super) fn sealed(headers: &HeaderMap) -> Option<&str> {
    protocol::single_header(headers, protocol::SESSION_HEADER)
        .ok()
        .flatten()
}

/// The caller sees its sealed session id, never the upstream's own: the
/// upstream's `Mcp-Session-Id` on a reply is replaced by `sealed` (the
/// caller's own header value, shared, not copied), or removed.
pub(super) fn show_session(headers: &mut HeaderMap, sealed: Option<&HeaderValue>) {
    headers.remove(protocol::SESSION_HEADER);
    if let Some(v) = sealed {
        headers.insert(protocol::SESSION_HEADER, v.clone());
    }
}

/// The caller's `Mcp-Session-Id` value, as `route` checked it (one).
pub(super) fn sealed_value(headers: &HeaderMap) -> Option<&HeaderValue> {
    headers.get(protocol::SESSION_HEADER)
}

/// The session tables' bounds, from `limits:` and `sessions:`.
pub(super) fn session_bounds(config: &Config) -> Bounds {
    Bounds {
        idle: config.limits.session_idle_timeout,
        lifetime: config.sessions.max_lifetime,
        max: config.limits.max_sessions,
        max_per_identity: config.limits.max_sessions_per_identity,
    }
}

/// The keys of `sessions.keys_file`, or (said in the log) one of the
/// process's own. A configured file that cannot be used stops the start.
pub(super) fn session_keys(config: &Config) -> anyhow::Result<SessionKeys> {
    let file = config.sessions.keys_file.as_deref();
    let keys = SessionKeys::load(file).map_err(|e| anyhow::anyhow!("sessions.keys_file: {e}"))?;
    if keys.shared() {
        tracing::info!(keys = ?keys.current().ids(), "sessions: sealed with the keys file; valid on every replica that holds it");
    } else {
        tracing::warn!(
            "sessions: no sessions.keys_file, so session ids are sealed with a key of this \
             process's own: valid on this replica only, and ended by its restart"
        );
    }
    Ok(keys)
}
