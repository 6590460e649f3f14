//! The connections to the upstream MCP servers, one [`Upstream`] each.
//!
//! mTLS with the gateway's own SVID; each upstream must present exactly the
//! SPIFFE ID in its own config entry (`identity::upstream_auth` in the
//! handshake, one client config per upstream), otherwise the handshake fails and the call
//! is refused with `UpstreamIdentity`: an upstream presenting another
//! upstream's ID is refused like any other wrong ID. Plain
//! HTTP is possible only to a loopback address declared as such in the config
//! (checked in `config`). Connections are pooled by hyper; ALPN picks HTTP/2
//! or HTTP/1.1. The TLS config is read from [`Identity`] for every new
//! connection, so rotations apply without a restart.
//!
//! Every wait on the upstream is bounded (`upstream.*_timeout_seconds`):
//! connecting, the response head, and each gap between bytes of a response
//! body ([`IdleBody`]). [`Prober`] tries a connection now and then so that
//! `mcp_gateway_upstream_up` tells a down upstream before a caller finds out.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper::{Method, Request, Response, Uri};
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus::IntCounter;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_rustls::client::TlsStream;
use tracing::{debug, warn};

use crate::config::{UpstreamConfig, UpstreamConnection};
use crate::identity::{Identity, spiffe_id};
use crate::metrics::{Metrics, UpstreamMetrics};
use crate::pins::{Observed, PinMode};
use crate::proxy::protocol;
use crate::proxy::reply::{self, ReplyBody};
use crate::proxy::session::Sessions;

pub type UpstreamBody = http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, hyper::Error>;
pub type UpstreamClient = Client<UpstreamConnector, http_body_util::Full<bytes::Bytes>>;

/// Why a connection to the upstream failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("the gateway has no SVID yet")]
    NoIdentity,
    #[error("upstream TLS handshake failed: {0}")]
    Tls(std::io::Error),
    #[error("connecting to the upstream failed: {0}")]
    Io(std::io::Error),
    #[error("connecting to the upstream timed out")]
    Timeout,
    #[error("upstream URI has no host or port")]
    BadUri,
    #[error("upstream identity refused: {0}")]
    Identity(String),
}

impl ConnectError {
    /// A handshake refused because of the peer's certificate or identity.
    pub fn is_identity(&self) -> bool {
        matches!(self, ConnectError::Identity(_))
            || matches!(self, ConnectError::Tls(e) if e.get_ref().is_some_and(|inner| {
                inner.downcast_ref::<rustls::Error>().is_some_and(|r| matches!(
                    r,
                    rustls::Error::InvalidCertificate(_) | rustls::Error::General(_) | rustls::Error::Other(_)
                ))
            }))
    }
}

/// Builds the pooled HTTP client for one upstream (hyper keeps one pool per
/// client, so each upstream has its own).
pub fn client(connector: UpstreamConnector, conn: &UpstreamConnection) -> UpstreamClient {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(conn.pool_idle_timeout)
        .pool_max_idle_per_host(conn.pool_max_idle)
        .build(connector)
}

/// One upstream's connection pool, replaced when the gateway's SVID rotates.
///
/// A pooled connection keeps presenting the client certificate it was opened
/// with. Reused after a rotation, it would carry the previous SVID until the
/// upstream closes it at that certificate's notAfter, and whatever the
/// upstream binds to the certificate (a gateway upstream binds a session's
/// lifetime to it) would end with it. So the first request after a rotation
/// starts a fresh pool, whose connections present the current SVID; requests
/// in flight finish on the old one, which closes its connections when they
/// are done. Per request: one atomic load and one `ArcSwap` load.
pub struct Pool {
    connector: UpstreamConnector,
    settings: UpstreamConnection,
    current: ArcSwap<PoolGeneration>,
}

struct PoolGeneration {
    /// `Identity::svid_generation` when this pool was started.
    svid: u64,
    client: UpstreamClient,
}

impl Pool {
    pub fn new(connector: UpstreamConnector, settings: &UpstreamConnection) -> Pool {
        let current = ArcSwap::from_pointee(PoolGeneration {
            svid: connector.identity.svid_generation(),
            client: client(connector.clone(), settings),
        });
        Pool {
            connector,
            settings: settings.clone(),
            current,
        }
    }

    /// Sends `req` on a connection opened with the current SVID.
    pub fn request(&self, req: Request<http_body_util::Full<Bytes>>) -> ResponseFuture {
        let svid = self.connector.identity.svid_generation();
        let current = self.current.load();
        if current.svid == svid {
            return current.client.request(req);
        }
        // Two requests racing here may each start a pool; the later store
        // wins and the other pool closes after its one request. Harmless.
        let fresh = Arc::new(PoolGeneration {
            svid,
            client: client(self.connector.clone(), &self.settings),
        });
        let response = fresh.client.request(req);
        self.current.store(fresh);
        debug!("the SVID rotated: new upstream connections present the new one");
        response
    }

    /// The SVID generation the current pool was started with (tests).
    #[cfg(test)]
    fn svid(&self) -> u64 {
        self.current.load().svid
    }
}

/// One configured upstream: where it is, who it must be, its pool, its
/// timeouts, its sessions and its metrics. Built once at start.
pub struct Upstream {
    /// The name policies use: `Mcp::Server::"<name>"`.
    pub name: String,
    pub spiffe_id: String,
    pub uri: Uri,
    pub authority: HeaderValue,
    /// Connections to the upstream, opened with the current SVID.
    pub client: Pool,
    /// Header carrying the verified caller ID to the upstream, if configured.
    pub caller_id_header: Option<HeaderName>,
    /// Bound on the wait for the response head.
    pub request_timeout: Duration,
    /// Bound on each silence within a response body.
    pub stream_idle_timeout: Duration,
    pub metrics: UpstreamMetrics,
    /// The name for logs on the response path (cheap to clone).
    pub label: Arc<str>,
    /// The periodic health probe, if configured.
    pub prober: Option<Prober>,
    /// Sessions opened on this upstream: a session id is only ever looked
    /// up in the table of the upstream it was issued by.
    pub sessions: Sessions,
    /// Tool-definition pinning of this upstream: its mode, and what it was
    /// seen to list.
    pub pin_mode: PinMode,
    pub observed: Observed,
}

impl Upstream {
    pub fn new(
        config: &UpstreamConfig,
        identity: Identity,
        metrics: &Metrics,
        sessions: Sessions,
    ) -> anyhow::Result<Upstream> {
        let uri: Uri = config.url.as_str().parse()?;
        let authority = uri
            .authority()
            .ok_or_else(|| anyhow::anyhow!("upstream.url: no authority"))?;
        let conn = &config.connection;
        let spiffe_id = config.spiffe_id.to_string();
        let connector = UpstreamConnector::new(
            identity,
            config.plaintext,
            conn.connect_timeout,
            Arc::from(spiffe_id.as_str()),
        );
        let prober = conn
            .health_check_interval
            .map(|every| Prober::new(connector.clone(), uri.clone(), every));
        Ok(Upstream {
            name: config.name.clone(),
            spiffe_id,
            authority: HeaderValue::from_str(authority.as_str())?,
            uri,
            client: Pool::new(connector, conn),
            caller_id_header: config.caller_id_header.clone(),
            request_timeout: conn.request_timeout,
            stream_idle_timeout: conn.stream_idle_timeout,
            metrics: metrics.upstream(&config.name),
            label: Arc::from(config.name.as_str()),
            prober,
            sessions,
            pin_mode: config.pins,
            observed: Observed::default(),
        })
    }
}

impl Upstream {
    /// The upstream's reply with hop-by-hop headers removed and its body
    /// bounded by `stream_idle_timeout_seconds` between frames.
    pub fn reply(&self, resp: Response<Incoming>) -> Response<ReplyBody> {
        reply::from_upstream(resp.map(|body| self.idle_bounded(body)))
    }

    /// An upstream body that ends if it stays silent too long.
    pub fn idle_bounded(&self, body: Incoming) -> IdleBody<Incoming> {
        IdleBody::new(
            body,
            self.stream_idle_timeout,
            self.metrics.stream_idle.clone(),
            Arc::clone(&self.label),
        )
    }

    /// One health probe, if configured: connects (mTLS, identity checked)
    /// and sets `mcp_gateway_upstream_up`. Returns the probe interval.
    pub async fn probe(&self) -> Option<Duration> {
        let prober = self.prober.as_ref()?;
        let result = prober.probe().await;
        let was = self.metrics.up.get();
        match &result {
            Ok(()) => self.metrics.up.set(1),
            Err(e) => {
                if was != 0 {
                    warn!(error = %e, upstream = %self.name, "upstream health probe failed");
                }
                self.metrics.up.set(0);
            }
        }
        Some(prober.interval)
    }

    /// Tells the upstream a session is over (idle, expired, or refused).
    /// Best effort, bounded by the request timeout: the session is already
    /// gone from the gateway.
    pub async fn end_session(&self, id: &str) {
        let Ok(value) = HeaderValue::from_str(id) else {
            return;
        };
        let mut headers = HeaderMap::new();
        headers.insert(protocol::SESSION_HEADER, value);
        // DELETE is idempotent: tried once more when the first try failed to
        // be delivered (a pooled connection the upstream had just closed as
        // idle), so an idle session is not left open at the upstream.
        for attempt in 1..=2 {
            let req = super::forward::request(self, Method::DELETE, Bytes::new(), headers.clone());
            match tokio::time::timeout(self.request_timeout, self.client.request(req)).await {
                Ok(Ok(_)) => return,
                Ok(Err(e)) => {
                    debug!(error = %e, upstream = %self.name, attempt, "ending an upstream session failed");
                }
                Err(_) => {
                    debug!(upstream = %self.name, "ending an upstream session timed out");
                    return;
                }
            }
        }
    }
}

#[derive(Clone)]
pub struct UpstreamConnector {
    identity: Identity,
    plaintext: bool,
    /// TCP connect plus TLS handshake.
    timeout: Duration,
    /// The SPIFFE ID the upstream must present, byte for byte.
    expected: Arc<str>,
    /// This upstream's rustls client config.
    client_config: Arc<ClientConfigCache>,
}

/// One upstream's client config (accepting only its SPIFFE ID), built on
/// the first connection after the SVID generation moves and reused until
/// it moves again: read on each new connection, never on each request.
/// The pool is replaced on the same move (`Pool::client`), so connections
/// and the config they were opened with rotate together.
#[derive(Default)]
struct ClientConfigCache {
    /// (the SVID generation it was built in, the config)
    built: ArcSwapOption<(u64, Arc<ClientConfig>)>,
}

impl ClientConfigCache {
    fn get(&self, identity: &Identity, expected: &str) -> Result<Arc<ClientConfig>, ConnectError> {
        let generation = identity.svid_generation();
        if let Some(built) = self.built.load_full()
            && built.0 == generation
        {
            return Ok(Arc::clone(&built.1));
        }
        let configs = identity.current().ok_or(ConnectError::NoIdentity)?;
        let client = Arc::new(
            configs
                .client_for(expected)
                .map_err(|_| ConnectError::NoIdentity)?,
        );
        self.built
            .store(Some(Arc::new((generation, Arc::clone(&client)))));
        Ok(client)
    }
}

impl UpstreamConnector {
    pub fn new(
        identity: Identity,
        plaintext: bool,
        timeout: Duration,
        expected: Arc<str>,
    ) -> UpstreamConnector {
        UpstreamConnector {
            identity,
            plaintext,
            timeout,
            expected,
            client_config: Arc::default(),
        }
    }
}

impl tower_service::Service<Uri> for UpstreamConnector {
    type Response = UpstreamStream;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<UpstreamStream, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            tokio::time::timeout(this.timeout, this.connect(uri))
                .await
                .map_err(|_| ConnectError::Timeout)?
        })
    }
}

impl UpstreamConnector {
    async fn connect(self, uri: Uri) -> Result<UpstreamStream, ConnectError> {
        let host = uri.host().ok_or(ConnectError::BadUri)?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().ok_or(ConnectError::BadUri)?;
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(ConnectError::Io)?;
        let _ = tcp.set_nodelay(true);
        if self.plaintext {
            return Ok(UpstreamStream::Plain(TokioIo::new(tcp)));
        }
        let tls_config = self.client_config.get(&self.identity, &self.expected)?;
        // The server name is not used for verification (identity is the
        // SPIFFE ID); it only goes into SNI.
        let name = ServerName::try_from(host).map_err(|_| ConnectError::BadUri)?;
        let tls = tokio_rustls::TlsConnector::from(tls_config)
            .connect(name, tcp)
            .await
            .map_err(ConnectError::Tls)?;
        let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
        check_upstream_id(leaf.map(AsRef::as_ref), &self.expected)?;
        Ok(UpstreamStream::Tls(Box::new(TokioIo::new(tls))))
    }
}

/// The upstream's SPIFFE ID exactly as configured, checked again after the
/// handshake's verifier and before a byte is sent (defence in depth):
/// `SPIFFE://EXAMPLE.ORG/server` is not `spiffe://example.org/server`.
fn check_upstream_id(leaf: Option<&[u8]>, expected: &str) -> Result<(), ConnectError> {
    let leaf = leaf.ok_or_else(|| ConnectError::Identity("no certificate".to_owned()))?;
    let id = spiffe_id::from_leaf(leaf).map_err(|e| ConnectError::Identity(e.to_string()))?;
    if id.to_string() != expected {
        return Err(ConnectError::Identity(format!(
            "presented {id}, expected {expected}"
        )));
    }
    Ok(())
}

/// A connection to the upstream, TLS or (loopback only) plain.
pub enum UpstreamStream {
    Tls(Box<TokioIo<TlsStream<TcpStream>>>),
    Plain(TokioIo<TcpStream>),
}

impl Connection for UpstreamStream {
    fn connected(&self) -> Connected {
        match self {
            UpstreamStream::Tls(s) => {
                let h2 = s.inner().get_ref().1.alpn_protocol() == Some(b"h2");
                if h2 {
                    Connected::new().negotiated_h2()
                } else {
                    Connected::new()
                }
            }
            UpstreamStream::Plain(_) => Connected::new(),
        }
    }
}

impl Read for UpstreamStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            UpstreamStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl Write for UpstreamStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            UpstreamStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            UpstreamStream::Plain(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            UpstreamStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Tries a connection to the upstream, the same way a call would (TCP, then
/// mTLS with the exact SPIFFE ID check), and drops it. Only the outcome is
/// used: it feeds `mcp_gateway_upstream_up` between calls.
pub struct Prober {
    connector: UpstreamConnector,
    uri: Uri,
    pub interval: Duration,
}

impl Prober {
    pub fn new(connector: UpstreamConnector, uri: Uri, interval: Duration) -> Prober {
        Prober {
            connector,
            uri,
            interval,
        }
    }

    /// Whether a connection with a verified upstream identity was made.
    pub async fn probe(&self) -> Result<(), ConnectError> {
        let mut connector = self.connector.clone();
        tower_service::Service::call(&mut connector, self.uri.clone())
            .await
            .map(drop)
    }
}

pin_project_lite::pin_project! {
    /// An upstream response body that ends when no frame arrives for
    /// `idle`: a stalled SSE stream or body must not hold the agent's
    /// request (and a gateway task) forever. The end is counted and logged;
    /// a body cut short of its `Content-Length` is seen as truncated by the
    /// agent's HTTP stack.
    pub struct IdleBody<B> {
        #[pin]
        inner: B,
        #[pin]
        timer: Sleep,
        idle: Duration,
        expired: Option<IntCounter>,
        upstream: Arc<str>,
    }
}

impl<B> IdleBody<B> {
    /// `expired` is counted once if the body goes idle.
    pub fn new(inner: B, idle: Duration, expired: IntCounter, upstream: Arc<str>) -> IdleBody<B> {
        IdleBody {
            inner,
            timer: tokio::time::sleep(idle),
            idle,
            expired: Some(expired),
            upstream,
        }
    }
}

impl<B: Body<Data = Bytes>> Body for IdleBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        if this.expired.is_none() {
            return Poll::Ready(None);
        }
        match this.inner.poll_frame(cx) {
            Poll::Ready(frame) => {
                let deadline = Instant::now() + *this.idle;
                this.timer.as_mut().reset(deadline);
                return Poll::Ready(frame);
            }
            Poll::Pending => {}
        }
        if this.timer.poll(cx).is_ready() {
            if let Some(counter) = this.expired.take() {
                counter.inc();
            }
            warn!(
                upstream = %this.upstream,
                idle_seconds = this.idle.as_secs(),
                "upstream response idle too long; ending it"
            );
            return Poll::Ready(None);
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.expired.is_none() || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        // A cut-short body must not promise its full length.
        let mut hint = SizeHint::new();
        if let Some(upper) = self.inner.size_hint().upper() {
            hint.set_upper(upper);
        }
        hint
    }
}

#[cfg(test)]
#[path = "upstream_tests.rs"]
mod tests;
