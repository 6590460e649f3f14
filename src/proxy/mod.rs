//! The request path: authenticate -> parse -> decide -> audit -> forward.
//!
//! Each phase is a named function over concrete types, in the order a request
//! meets them. A message reaches the upstream only if every JSON-RPC message
//! in the body was permitted by policy; the bytes forwarded are exactly the
//! bytes parsed and decided on. Responses (JSON or SSE) stream back as they
//! arrive; nothing buffers a response body whole.
//!
//! The path picks the upstream (one, or one of `upstreams:` by
//! `<path>/<name>`); policies, audit and the session table are that
//! upstream's.
//!
//! This module must never take identity from a header, forward a message
//! that was not decided, or put policy text in a reply.

mod accept;
pub mod admission;
pub(crate) mod aggregate;
mod credentials;
mod decide;
mod error;
mod facts;
mod forward;
mod http_conn;
mod ingress;
mod lifecycle;
mod limits;
pub mod listener;
pub mod loopback;
pub mod pin_fetch;
mod pinning;
mod protocol;
mod records;
mod reply;
mod route;
pub mod session;
mod trace;
pub mod upstream;
mod way_back;

pub use accept::{Lifecycle, raise_open_files_limit};

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper::{Method, Request, Response};

pub use error::{
    CODE_BAD_TRANSPORT, CODE_DENIED, CODE_LIMITED, CODE_PIN_MISMATCH, CODE_TOO_LARGE,
    CODE_UPSTREAM_IDENTITY, CODE_UPSTREAM_TIMEOUT, CODE_UPSTREAM_UNAVAILABLE, ProxyError,
};
use listener::Peer;
use reply::{Denial, ReplyBody, error_response};
use upstream::Upstream;

use crate::audit::{AuditLog, CorrelationIds, Outcome, Reason};
use crate::config::{Config, ConnectionsConfig};
use crate::identity::Identity;
use crate::limits::Limits;
use crate::mcp::Message;
use crate::metrics::Metrics;
use crate::policy_store::PolicyStore;
use crate::user_auth::TokenError;
use admission::{Admission, Refusal};
use credentials::Credentials;
use decide::{Subject, Verdict};
use facts::RequestFacts;
use ingress::{Ingress, linger};
use route::{Route, Router};
use trace::Trace;
use way_back::WayBack;

/// Everything the request path needs, shared by all connections.
pub struct Gateway {
    pub identity: Identity,
    pub metrics: Metrics,
    policies: Arc<PolicyStore>,
    audit: AuditLog,
    /// Body limits and the body read timeout.
    ingress: Ingress,
    /// Client timeouts and connection caps (`connections:`).
    pub connections: ConnectionsConfig,
    pub admission: Admission,
    ids: Arc<CorrelationIds>,
    /// The reply side: what upstreams send back, inspected and audited.
    way_back: Arc<WayBack>,
    /// Per-request credentials: end-user tokens, JWT-SVID callers.
    credentials: Credentials,
    /// The endpoints: each upstream, and the aggregated one.
    router: Router,
    /// The keys that seal session ids, shared by every session table.
    pub session_keys: Arc<session::keys::SessionKeys>,
    /// Per-identity rate, in-flight and stream limits (`limits.per_identity`).
    pub limits: Arc<Limits>,
    /// Spans of sampled requests (`traces:`); `None`: off.
    tracer: Option<crate::telemetry::Tracer>,
}

impl Gateway {
    pub fn new(
        config: &Config,
        identity: Identity,
        policies: Arc<PolicyStore>,
        audit: AuditLog,
        metrics: Metrics,
    ) -> anyhow::Result<Gateway> {
        let limits = Arc::new(Limits::new(
            &config.limits.per_identity,
            metrics.limit_identities.clone(),
        ));
        let tables = session::Tables {
            bounds: lifecycle::session_bounds(config),
            keys: Arc::new(lifecycle::session_keys(config)?),
            limits: Some(Arc::clone(&limits)),
        };
        let upstreams = upstreams(config, &identity, &metrics, &tables)?;
        let aggregate = config
            .aggregate
            .as_ref()
            .map(|a| aggregate::Aggregate::new(a, &upstreams, &tables))
            .transpose()?;
        let admission = Admission::new(
            config.connections.max_connections,
            config.connections.max_connections_per_identity,
            metrics.connections_open.clone(),
            metrics.connection_refusals.clone(),
        );
        let ids = Arc::new(CorrelationIds::new());
        let way_back = WayBack::new(
            Arc::clone(&policies),
            audit.clone(),
            metrics.clone(),
            Arc::clone(&ids),
        );
        Ok(Gateway {
            router: Router::new(config, upstreams, aggregate),
            identity,
            metrics,
            policies,
            audit,
            ids,
            way_back: Arc::new(way_back),
            ingress: Ingress {
                max_body: config.limits.max_body_bytes,
                body_read_timeout: config.connections.body_read_timeout,
            },
            connections: config.connections.clone(),
            admission,
            credentials: Credentials::new(config)?,
            session_keys: tables.keys,
            limits,
            tracer: None,
        })
    }

    /// With traces on: each sampled request records a span for `tracer`.
    pub fn with_tracer(mut self, tracer: crate::telemetry::Tracer) -> Gateway {
        self.tracer = Some(tracer);
        self
    }

    /// Entry point for every HTTP request on an authenticated connection.
    pub async fn handle(
        self: &Arc<Self>,
        req: Request<Incoming>,
        peer: &Peer,
    ) -> Response<ReplyBody> {
        let started = Instant::now();
        let response = self.route(req, peer).await;
        self.metrics
            .request_duration
            .observe(started.elapsed().as_secs_f64());
        response
    }

    /// Refuses a request before it is routed (the loopback listener's guard
    /// against browsers): audited and counted like every refusal, never
    /// forwarded.
    pub(crate) async fn refuse_request(
        self: &Arc<Self>,
        req: Request<Incoming>,
        peer: &Peer,
        refusal: ProxyError,
    ) -> Response<ReplyBody> {
        let (parts, body) = req.into_parts();
        linger(body);
        let policies = self.policies.current();
        let trace = Trace::begin(&parts, self.tracer.as_ref(), peer);
        let facts = RequestFacts {
            peer,
            session_id: None,
            upstream_session: None,
            protocol_version: None,
            user: None,
            policies: &policies,
            trace: &trace,
            // Refused before routing: no upstream is named yet.
            upstream: None,
        };
        let response = self.refuse_unparsed(refusal, &facts).await;
        trace.responded(response.status().as_u16());
        response
    }

    /// Whether connections without a client certificate are served (each
    /// request then needs a JWT-SVID).
    pub fn accepts_token_callers(&self) -> bool {
        self.credentials.accepts_token_callers()
    }

    /// Entry point for every HTTP request on a connection without a client
    /// certificate (`listener.jwt_svid_callers` only): the caller is the
    /// subject of the request's JWT-SVID, verified before anything else;
    /// then the request takes the same path as on an mTLS connection.
    /// `own_id`: the gateway's SPIFFE ID, the audience unless configured.
    pub async fn handle_token_caller(
        self: &Arc<Self>,
        req: Request<Incoming>,
        own_id: &str,
    ) -> Response<ReplyBody> {
        let started = Instant::now();
        let response = match self.credentials.token_caller(req.headers(), own_id) {
            Ok(peer) => self.route(req, &peer).await,
            Err(refusal) => self.refuse_token_caller(req, refusal).await,
        };
        self.metrics
            .request_duration
            .observe(started.elapsed().as_secs_f64());
        response
    }

    /// No identity could be established: 401, audited with an empty caller.
    async fn refuse_token_caller(
        self: &Arc<Self>,
        req: Request<Incoming>,
        refusal: TokenError,
    ) -> Response<ReplyBody> {
        let anonymous = Peer {
            spiffe_id: Arc::from(""),
            not_after: 0,
        };
        let refusal = ProxyError::CallerToken(refusal.to_string());
        self.refuse_request(req, &anonymous, refusal).await
    }

    /// Routes the request and runs the checks every endpoint shares, in
    /// order, before the body is read: audit available, a path that names
    /// an endpoint, well-formed protocol and session headers, a valid user
    /// token. A refusal is audited and answered, and the body drained.
    async fn route(self: &Arc<Self>, req: Request<Incoming>, peer: &Peer) -> Response<ReplyBody> {
        let (parts, body) = req.into_parts();
        let headers = &parts.headers;
        let version = protocol::version_header(headers);
        let session = protocol::single_header(headers, protocol::SESSION_HEADER);
        let policies = self.policies.current();
        let user = self.credentials.user_of(headers);
        let trace = Trace::begin(&parts, self.tracer.as_ref(), peer);
        let route = self.router.route(parts.uri.path());
        let mut facts = RequestFacts {
            peer,
            session_id: session.as_ref().ok().copied().flatten(),
            upstream_session: None,
            protocol_version: version.as_ref().ok().copied().flatten(),
            user: None,
            policies: &policies,
            trace: &trace,
            upstream: route.as_ref().ok().and_then(Route::upstream),
        };
        let checked = if self.audit.accepting() {
            // `audit.on_failure: refuse`: a call that cannot be audited is
            // not served (one atomic load; the writer sets the flag).
            route.and_then(|route| {
                version.and(session)?;
                facts.user = user
                    .as_ref()
                    .map_err(|e| ProxyError::UserToken(e.to_string()))?
                    .as_ref();
                Ok(route)
            })
        } else {
            Err(ProxyError::AuditUnavailable)
        };
        let response = match checked {
            Ok(route) => self.admitted(route, &parts, body, &facts).await,
            Err(refusal) => {
                linger(body);
                self.refuse_unparsed(refusal, &facts).await
            }
        };
        trace.responded(response.status().as_u16());
        response
    }

    /// A routed request past the shared checks: the per-identity limits
    /// (`proxy::limits`, before the body is read), then its endpoint; the
    /// limit's place is held until the reply ends.
    async fn admitted(
        self: &Arc<Self>,
        route: Route<'_>,
        parts: &hyper::http::request::Parts,
        body: Incoming,
        facts: &RequestFacts<'_>,
    ) -> Response<ReplyBody> {
        let slot = match self.admit(&parts.method, facts) {
            Ok(slot) => slot,
            Err(limited) => return self.refuse_limited(parts, body, facts, limited).await,
        };
        let response = match route {
            Route::Aggregate(agg) => agg.serve(self, parts, body, facts).await,
            Route::Upstream(up) => self.upstream_route(parts, body, facts, up).await,
        };
        limits::hold_until_done(response, slot)
    }

    /// A request to one upstream: the session must be the caller's; POST
    /// carries messages, GET and DELETE (2025 era only) none.
    async fn upstream_route(
        self: &Arc<Self>,
        parts: &hyper::http::request::Parts,
        body: Incoming,
        facts: &RequestFacts<'_>,
        up: &Arc<Upstream>,
    ) -> Response<ReplyBody> {
        let handle = match facts.session_id {
            None => None,
            Some(sealed) => match up.sessions.check(sealed, &facts.peer.spiffe_id) {
                Ok(session) => Some(session.handle),
                Err(refusal) => {
                    linger(body);
                    return self
                        .refuse_unparsed(ProxyError::Session(refusal), facts)
                        .await;
                }
            },
        };
        // From here on the session is the upstream's own id: what records
        // and policies name, and what the upstream is sent.
        let facts = &RequestFacts {
            session_id: handle.as_deref(),
            upstream_session: handle.as_deref(),
            ..*facts
        };
        let modern = facts.protocol_version == Some(protocol::MODERN);
        match parts.method {
            Method::POST => self.post(parts, body, facts, up).await,
            // 2026-07-28 is stateless POST only.
            Method::GET | Method::DELETE if !modern => {
                linger(body);
                self.stream_or_delete(parts, facts, up).await
            }
            _ => {
                linger(body);
                self.refuse_unparsed(ProxyError::MethodNotAllowed, facts)
                    .await
            }
        }
    }

    /// A POST body, its entity headers checked and read up to the limit;
    /// a refusal is audited and answered (the rest of the body drained).
    async fn read_post_body(
        &self,
        parts: &hyper::http::request::Parts,
        body: Incoming,
        facts: &RequestFacts<'_>,
    ) -> Result<Bytes, Response<ReplyBody>> {
        match self.ingress.read(&parts.headers, body).await {
            Ok(bytes) => Ok(bytes),
            Err(refusal) => {
                if matches!(refusal, ProxyError::BodyTimeout) {
                    self.admission.refused(Refusal::BodyReadTimeout);
                }
                Err(self.refuse_unparsed(refusal, facts).await)
            }
        }
    }

    /// POST: one JSON-RPC message or a batch, decided before anything is sent.
    async fn post(
        self: &Arc<Self>,
        parts: &hyper::http::request::Parts,
        body: Incoming,
        facts: &RequestFacts<'_>,
        up: &Arc<Upstream>,
    ) -> Response<ReplyBody> {
        let bytes = match self.read_post_body(parts, body, facts).await {
            Ok(bytes) => bytes,
            Err(refused) => return refused,
        };
        let parsed = match ingress::parse(&bytes, &parts.headers, facts.protocol_version) {
            Ok(parsed) => parsed,
            Err(refusal) => return self.refuse_unparsed(refusal, facts).await,
        };
        let reservation = match reserve_if_opening(up, facts, &parsed) {
            Ok(reservation) => reservation,
            Err(refusal) => {
                return self
                    .refuse_unparsed(ProxyError::Session(refusal), facts)
                    .await;
            }
        };
        let mut denied = Vec::new();
        for (index, message) in parsed.messages.iter().enumerate() {
            if let Err(denial) = self.decide_message(message, facts, up).await {
                denied.push(denial.at(index));
            }
        }
        let answers = reply::denial_answers(&parsed.messages, &denied);
        if denied.len() == parsed.messages.len() {
            return reply::denied(answers, parsed.batch, &denied[0]);
        }
        let Some(forwarded) = ingress::permitted_body(&bytes, &denied) else {
            let refusal = ProxyError::BadRequest("batch could not be split");
            return self.refuse_unparsed(refusal, facts).await;
        };
        let ctx = facts.post_reply_context(up, &parsed.messages, answers);
        let reply_id = ctx.awaiting.clone();
        drop(parsed);
        let sent = self
            .call_upstream(
                up,
                &parts.headers,
                Method::POST,
                forwarded,
                facts,
                reply_id.as_deref(),
            )
            .await;
        match (sent, reservation) {
            (Ok(resp), Some(reservation)) => self.bind_session(resp, ctx, reservation).await,
            (Ok(mut resp), None) => {
                lifecycle::show_session(
                    resp.headers_mut(),
                    lifecycle::sealed_value(&parts.headers),
                );
                self.way_back.inspect_reply(resp, ctx).await
            }
            (Err(refusal), _) => refusal,
        }
    }

    /// Decides one message of the caller's to `up` (its pin, then the
    /// policies), counts and audits it. Returns its record's correlation
    /// id, or the denial its answer carries.
    async fn decide_message(
        &self,
        message: &Message<'_>,
        facts: &RequestFacts<'_>,
        up: &Upstream,
    ) -> Result<String, Denial> {
        let correlation_id = self.ids.next();
        // A tool's own rate limit first: a limited call costs no pin
        // re-read and no policy decision.
        if let Err(limited) = self.limit_tool(message, facts, up) {
            let denial = self.refuse_tool_call(message, facts, up, limited, correlation_id);
            return Err(denial.await);
        }
        let pin = self.check_pin(message, facts, up).await;
        let verdict = match &pin {
            Some(pin) if pin.refused(up.pin_mode) => Verdict::refused(Reason::PinMismatch),
            _ => {
                let subject = Subject {
                    principal: &facts.peer.spiffe_id,
                    server: up,
                    session_id: facts.session_id,
                    protocol_version: facts.protocol_version,
                    user: facts.user.map(|u| &**u),
                };
                let status = pin.as_ref().map(|p| p.check.status);
                decide::message(facts.policies, &self.metrics, &subject, message, status)
            }
        };
        let allowed = verdict.allowed;
        let refusal = match verdict.reason {
            Reason::PinMismatch => ProxyError::PinMismatch,
            _ => ProxyError::Denied,
        };
        let method = message.method.as_deref().unwrap_or("response");
        let caller = &facts.peer.spiffe_id;
        decide::count(&self.metrics, facts.policies, &verdict, method, caller);
        let detail = pin.and_then(|p| p.detail());
        facts.trace.decided(message, &up.name, &verdict);
        self.audit_decision(message, facts, up, verdict, &correlation_id, detail)
            .await;
        if allowed {
            return Ok(correlation_id);
        }
        Err(Denial {
            index: 0,
            correlation_id,
            refusal,
        })
    }

    /// Sends the decided bytes to the upstream. On failure the caller gets a
    /// JSON-RPC error (under `reply_id`) and the failure is audited.
    async fn call_upstream(
        &self,
        up: &Upstream,
        headers: &HeaderMap,
        method: Method,
        body: Bytes,
        facts: &RequestFacts<'_>,
        reply_id: Option<&str>,
    ) -> Result<Response<Incoming>, Response<ReplyBody>> {
        let call = forward::Call {
            caller: &facts.peer.spiffe_id,
            trace: facts.trace,
            // A bearer token's audience is the gateway: never passed on.
            strip_authorization: self.credentials.strip_authorization(),
            session: facts.upstream_session,
        };
        let req = call.request(up, method, body, headers);
        let span = facts.trace.upstream_call();
        let sent = forward::send(up, req).await;
        facts.trace.upstream_done(span, &up.name, &sent);
        let refusal = match sent {
            Ok(resp) => return Ok(resp),
            Err(refusal) => refusal,
        };
        self.metrics.upstream_error(refusal.audit_reason());
        let correlation_id = self.ids.next();
        let record = self.bare_record(&refusal, facts, Outcome::UpstreamError, &correlation_id);
        self.audit.record(record).await;
        Err(error_response(&refusal, reply_id, &correlation_id))
    }

    /// Every configured upstream, in config order.
    pub fn upstreams(&self) -> &[Arc<Upstream>] {
        &self.router.upstreams
    }
}

/// Every configured upstream, each with its own session table.
fn upstreams(
    config: &Config,
    identity: &Identity,
    metrics: &Metrics,
    tables: &session::Tables,
) -> anyhow::Result<Vec<Arc<Upstream>>> {
    let mut upstreams = Vec::with_capacity(config.upstreams.len());
    for u in &config.upstreams {
        let sessions = tables.table(format!("u:{}", u.name));
        let upstream = Upstream::new(u, identity.clone(), metrics, sessions)?;
        upstreams.push(Arc::new(upstream));
    }
    Ok(upstreams)
}

/// A new session's place, taken before anything is decided or sent: an
/// `initialize` the table cannot hold never reaches the upstream.
fn reserve_if_opening(
    up: &Upstream,
    facts: &RequestFacts<'_>,
    parsed: &ingress::Parsed<'_>,
) -> Result<Option<session::Reservation<()>>, session::SessionRefusal> {
    let opens = !parsed.batch
        && facts.session_id.is_none()
        && parsed.messages[0].method.as_deref() == Some(crate::mcp::method::INITIALIZE);
    if !opens {
        return Ok(None);
    }
    up.sessions.reserve(&facts.peer.spiffe_id).map(Some)
}
