//! The admin listener: plain HTTP on its own port for `/metrics` (Prometheus
//! text format), `/healthz` (the process is alive) and `/readyz` (an SVID is
//! held, policies are loaded, and, with `audit.on_failure: refuse`, audit
//! records are being written).
//!
//! It serves no MCP traffic and must never expose secrets or policy text.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::debug;

use crate::audit::AuditLog;
use crate::identity::Identity;
use crate::metrics::Metrics;

/// What the admin endpoints report on.
pub struct Admin {
    pub identity: Identity,
    pub metrics: Metrics,
    /// Set on SIGTERM: `/readyz` answers 503 while in-flight work drains.
    pub draining: Arc<AtomicBool>,
    /// With `audit.on_failure: refuse`, `/readyz` answers 503 while audit
    /// writes fail.
    pub audit: AuditLog,
}

impl Admin {
    fn respond(&self, req: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET {
            return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        }
        match req.uri().path() {
            "/metrics" => {
                let ready = self.identity.is_ready();
                self.metrics.ready.set(i64::from(ready));
                let mut resp = Response::new(Full::new(Bytes::from(self.metrics.render())));
                resp.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                resp
            }
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" if self.draining.load(Ordering::Relaxed) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: shutting down\n",
            ),
            "/readyz" if !self.audit.accepting() => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: audit log writes are failing\n",
            ),
            "/readyz" if self.identity.is_ready() => text(StatusCode::OK, "ready\n"),
            "/readyz" => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: no usable X.509-SVID\n",
            ),
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Serves the admin endpoints until `shutdown` flips to true.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => { debug!(error = %e, "admin accept failed"); continue; }
            },
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let admin = Arc::clone(&admin);
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let resp = admin.respond(&req);
                async move { Ok::<_, Infallible>(resp) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service);
            if let Err(e) = conn.await {
                debug!(error = %e, "admin connection error");
            }
        });
    }
}
