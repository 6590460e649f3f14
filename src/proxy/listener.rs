//! The mTLS listener: accept, handshake, authenticate, serve HTTP/1.1 or
//! HTTP/2 (by ALPN).
//!
//! The caller's identity is the SPIFFE ID of its verified X.509-SVID, taken
//! once per connection from the certificate rustls verified (spiffe-rustls:
//! chain to the bundle of the peer's trust domain, exactly one URI SAN that is
//! a valid SPIFFE ID, leaf not a CA, digitalSignature, within validity).
//! Never from headers. While the gateway has no SVID, connections are closed
//! before any handshake. A connection is closed when the peer certificate it
//! was authenticated with expires: no connection outlives its credential.

use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::identity::unix_now;
use crate::proxy::Gateway;

/// Time allowed for a client to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The authenticated peer of one connection.
#[derive(Debug, Clone)]
pub struct Peer {
    pub spiffe_id: Arc<str>,
    /// The peer certificate's notAfter, Unix seconds.
    pub not_after: i64,
}

/// Why a peer certificate yields no identity (after rustls verified it).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PeerError {
    #[error("no client certificate")]
    NoCertificate,
    #[error("certificate does not parse: {0}")]
    Parse(String),
    #[error("certificate carries no valid SPIFFE ID: {0}")]
    SpiffeId(String),
}

/// Extracts the peer identity from a leaf certificate's DER.
pub fn peer_from_leaf(der: &[u8]) -> Result<Peer, PeerError> {
    let id = spiffe::cert::spiffe_id_from_der(der).map_err(|e| PeerError::SpiffeId(e.to_string()))?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| PeerError::Parse(e.to_string()))?;
    Ok(Peer {
        spiffe_id: Arc::from(id.to_string()),
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// Accepts connections until `shutdown` flips to true.
pub async fn serve(listener: TcpListener, gateway: Arc<Gateway>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let (tcp, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    continue;
                }
            },
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let gateway = Arc::clone(&gateway);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            if let Err(reason) = connection(tcp, gateway.clone(), shutdown).await {
                gateway.metrics.tls_handshake_failures.inc();
                debug!(%addr, %reason, "connection refused");
            }
        });
    }
}

/// One connection: handshake, identity, then HTTP until the peer leaves, the
/// certificate expires, or the gateway shuts down.
async fn connection(
    tcp: TcpStream,
    gateway: Arc<Gateway>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    // Fail closed: without an SVID there is no config, so no handshake.
    let configs = gateway.identity.current().ok_or("gateway has no SVID yet")?;
    let _ = tcp.set_nodelay(true);
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&configs.server));
    let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
        .await
        .map_err(|_| "handshake timed out".to_owned())?
        .map_err(|e| format!("handshake failed: {e}"))?;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or_else(|| PeerError::NoCertificate.to_string())?;
    let peer = peer_from_leaf(leaf.as_ref()).map_err(|e| e.to_string())?;
    let expires_in = Duration::from_secs(u64::try_from(peer.not_after - unix_now()).unwrap_or(0));

    let service = {
        let peer = peer.clone();
        service_fn(move |req| {
            let gateway = Arc::clone(&gateway);
            let peer = peer.clone();
            async move { Ok::<_, std::convert::Infallible>(gateway.handle(req, &peer).await) }
        })
    };
    let builder = auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(TokioIo::new(tls), service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => return result.map_err(|e| format!("connection error: {e}")),
        _ = tokio::time::sleep(expires_in) => {
            debug!(spiffe_id = %peer.spiffe_id, "peer certificate expired; closing connection");
        }
        _ = shutdown.wait_for(|stop| *stop) => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
    Ok(())
}
