//! Serving HTTP/1.1 or HTTP/2 on one accepted connection, until the client
//! leaves, its credential expires, it stays idle or slow too long, or the
//! gateway drains. Both listeners (mTLS and the client sidecar's loopback)
//! end their connections here.
//!
//! - Header reads are bounded by hyper's timer (`header_read_timeout`; on
//!   HTTP/1.1 it runs from when hyper starts waiting for a request head,
//!   so it also ends an idle keep-alive connection); body reads by the
//!   request path (`body_read_timeout`).
//! - A connection with no bytes either way for `idle_timeout` is asked to
//!   close; HTTP/2 clients are pinged and dropped if they do not answer.
//! - Before the peer certificate expires (at `reconnect_after_fraction` of
//!   its remaining lifetime) the client is asked to reconnect, so a pooled
//!   client comes back with its rotated SVID and never meets a connection
//!   cut under it. At expiry the connection is closed: no connection
//!   outlives its credential.
//! - When the gateway drains, the same ask (HTTP/1.1 `Connection: close`
//!   on the response in flight, or close when idle; HTTP/2 GOAWAY);
//!   connections accepted while draining serve one request each.
//!
//! Must never: keep a connection past its peer's certificate, or cut a
//! request in flight because the connection is old or idle.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use std::convert::Infallible;

use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, Version};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::ConnectionsConfig;
use crate::proxy::Gateway;
use crate::proxy::admission::{Admission, Refusal};
use crate::proxy::reply::ReplyBody;

/// How long requests in flight get once the peer certificate has expired.
const AFTER_EXPIRY: Duration = Duration::from_secs(5);

/// When a connection's credential ends, and when to ask the client to
/// come back with a fresh one.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lifetime {
    pub expiry: Instant,
    pub reconnect_at: Instant,
}

impl Lifetime {
    /// A credential valid for `remaining` from now; the client is asked to
    /// reconnect after `fraction` of it.
    pub fn new(remaining: Duration, fraction: f64) -> Lifetime {
        let now = Instant::now();
        Lifetime {
            expiry: now + remaining,
            reconnect_at: now + remaining.mul_f64(fraction),
        }
    }
}

/// Set once the client should reconnect: every HTTP/1.1 response from then
/// on carries `Connection: close` (hyper then closes after it). HTTP/2 is
/// told by GOAWAY instead. Shared by a connection and its service.
#[derive(Clone, Default)]
struct Reconnect(Arc<AtomicBool>);

impl Reconnect {
    /// Adds `Connection: close` to an HTTP/1.x response once asked to.
    fn mark(&self, version: Version, response: &mut Response<ReplyBody>) {
        if version < Version::HTTP_2 && self.0.load(Ordering::Relaxed) {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
    }

    fn ask(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Already asked if the connection arrives while the gateway drains.
    fn asked_if(asked: bool) -> Reconnect {
        Reconnect(Arc::new(AtomicBool::new(asked)))
    }
}

/// What `serve` needs to know about a connection besides its IO.
pub(crate) struct Served<'a> {
    pub config: &'a ConnectionsConfig,
    pub admission: &'a Admission,
    pub lifetime: Lifetime,
    /// ALPN chose HTTP/2 (GOAWAY asks it to reconnect).
    pub http2: bool,
}

impl<'a> Served<'a> {
    /// A connection of `gateway` whose credential is valid for `remaining`.
    pub fn new(gateway: &'a Gateway, remaining: Duration, http2: bool) -> Served<'a> {
        Served {
            config: &gateway.connections,
            admission: &gateway.admission,
            lifetime: Lifetime::new(remaining, gateway.connections.reconnect_after_fraction),
            http2,
        }
    }
}

/// Serves `io` with `handler` until it ends; the error (if any) is the
/// refusal reason for the log. `drain` flips to true when the gateway
/// drains.
pub(crate) async fn serve<I, H, F>(
    io: I,
    handler: H,
    served: Served<'_>,
    mut drain: watch::Receiver<bool>,
) -> Result<(), String>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<ReplyBody>> + Send + 'static,
{
    let config = served.config;
    let born_draining = *drain.borrow();
    let reconnect = Reconnect::asked_if(born_draining);
    let service = marking(handler, reconnect.clone());
    let activity = Activity::new();
    let io = TokioIo::new(Tracked {
        inner: io,
        activity: activity.clone(),
    });
    let builder = builder(config, !born_draining);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    // Once asked to close, the connection finishes what is in flight.
    let mut asked = born_draining;
    let mut told_to_reconnect = born_draining;
    loop {
        let idle_at = activity.last() + config.idle_timeout;
        tokio::select! {
            result = conn.as_mut() => return ended(result, served.admission, &activity, config),
            _ = tokio::time::sleep_until(served.lifetime.expiry) => {
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(AFTER_EXPIRY, conn).await;
                return Ok(());
            }
            _ = tokio::time::sleep_until(served.lifetime.reconnect_at), if !told_to_reconnect => {
                // HTTP/1.1: the next response says `Connection: close`; an
                // idle connection is left open for it until expiry.
                reconnect.ask();
                told_to_reconnect = true;
                if served.http2 && !asked {
                    conn.as_mut().graceful_shutdown();
                    asked = true;
                }
            }
            _ = drained(&mut drain), if !asked => {
                reconnect.ask();
                conn.as_mut().graceful_shutdown();
                asked = true;
            }
            _ = tokio::time::sleep_until(idle_at), if !asked => {
                if activity.last() + config.idle_timeout <= Instant::now() {
                    served.admission.refused(Refusal::IdleTimeout);
                    conn.as_mut().graceful_shutdown();
                    asked = true;
                }
            }
        }
    }
}

/// HTTP/1.1 (with the header read timeout; `keep_alive` off for a
/// connection accepted while draining) and HTTP/2 (with pings), each
/// refusing a request head over `max_request_head_bytes` (431). hyper's
/// HTTP/1.1 read buffer grows to twice the head size it may hold when a
/// head arrives in two reads, and then stays: at 8 KiB it stays at 8.
fn builder(config: &ConnectionsConfig, keep_alive: bool) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .keep_alive(keep_alive)
        .max_buf_size(config.max_request_head_bytes);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(config.max_request_head_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(config.http2_keepalive_interval)
        .keep_alive_timeout(config.http2_keepalive_timeout);
    builder
}

/// `handler` as a hyper service whose HTTP/1.x responses say
/// `Connection: close` once `reconnect` is asked.
fn marking<H, F>(
    handler: H,
    reconnect: Reconnect,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<ReplyBody>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<ReplyBody>, Infallible>> + Send + 'static,
> + Send
+ 'static
where
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<ReplyBody>> + Send + 'static,
{
    let handler = Arc::new(handler);
    service_fn(move |req: Request<Incoming>| {
        let version = req.version();
        // Boxed per request: hyper keeps room for the service's future in
        // every connection, busy or idle, and the gateway's is kilobytes.
        let answer = Box::pin(handler(req));
        let reconnect = reconnect.clone();
        async move {
            let mut response = answer.await;
            reconnect.mark(version, &mut response);
            Ok::<_, Infallible>(response)
        }
    })
}

/// Resolves when the gateway drains (or can no longer say it does not).
async fn drained(drain: &mut watch::Receiver<bool>) {
    let _ = drain.wait_for(|d| *d).await;
}

/// The connection's end as the refusal reason; a header read that timed
/// out is counted. hyper's header clock also runs while an HTTP/1.1
/// connection waits idle for its next request: if no byte moved during
/// (about) the whole wait, the client was idle, not slow.
fn ended(
    result: Result<(), Box<dyn std::error::Error + Send + Sync>>,
    admission: &Admission,
    activity: &Activity,
    config: &ConnectionsConfig,
) -> Result<(), String> {
    let Err(e) = result else {
        return Ok(());
    };
    let timed_out = e
        .downcast_ref::<hyper::Error>()
        .is_some_and(hyper::Error::is_timeout);
    if !timed_out {
        return Err(format!("connection error: {e}"));
    }
    if activity.last().elapsed() >= config.header_read_timeout.mul_f64(0.9) {
        admission.refused(Refusal::IdleTimeout);
        return Err("idle keep-alive connection closed".to_owned());
    }
    admission.refused(Refusal::HeaderReadTimeout);
    Err("request head not received in time".to_owned())
}

/// When bytes last moved on a connection, in milliseconds since it began.
#[derive(Clone)]
struct Activity {
    start: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// An IO stream that records when bytes moved.
struct Tracked<I> {
    inner: I,
    activity: Activity,
}

impl<I: AsyncRead + Unpin> AsyncRead for Tracked<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Tracked<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[path = "http_conn_tests.rs"]
mod tests;
