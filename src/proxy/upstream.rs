//! The connection to the one upstream MCP server.
//!
//! mTLS with the gateway's own SVID; the upstream must present exactly the
//! SPIFFE ID in the config (spiffe-rustls `exact` authorizer), otherwise the
//! handshake fails and the call is refused with `UpstreamIdentity`. Plain
//! HTTP is possible only to a loopback address declared as such in the config
//! (checked in `config`). Connections are pooled by hyper; ALPN picks HTTP/2
//! or HTTP/1.1. The TLS config is read from [`Identity`] for every new
//! connection, so rotations apply without a restart.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::identity::Identity;

/// Time allowed for TCP connect plus TLS handshake to the upstream.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

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
}

impl ConnectError {
    /// A handshake refused because of the peer's certificate or identity.
    pub fn is_identity(&self) -> bool {
        matches!(self, ConnectError::Tls(e) if e.get_ref().is_some_and(|inner| {
            inner.downcast_ref::<rustls::Error>().is_some_and(|r| matches!(
                r,
                rustls::Error::InvalidCertificate(_) | rustls::Error::General(_) | rustls::Error::Other(_)
            ))
        }))
    }
}

/// Builds the pooled HTTP client for the upstream.
pub fn client(identity: Identity, plaintext: bool) -> UpstreamClient {
    let connector = UpstreamConnector {
        identity,
        plaintext,
    };
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .build(connector)
}

#[derive(Clone)]
pub struct UpstreamConnector {
    identity: Identity,
    plaintext: bool,
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
            tokio::time::timeout(CONNECT_TIMEOUT, this.connect(uri))
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
        let configs = self.identity.current().ok_or(ConnectError::NoIdentity)?;
        // The server name is not used for verification (identity is the
        // SPIFFE ID); it only goes into SNI.
        let name = ServerName::try_from(host).map_err(|_| ConnectError::BadUri)?;
        let tls = tokio_rustls::TlsConnector::from(Arc::clone(&configs.upstream))
            .connect(name, tcp)
            .await
            .map_err(ConnectError::Tls)?;
        Ok(UpstreamStream::Tls(Box::new(TokioIo::new(tls))))
    }
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
