//! The mTLS listener: accept, handshake, authenticate, serve HTTP/1.1 or
//! HTTP/2 (by ALPN).
//!
//! The caller's identity is the SPIFFE ID of its verified X.509-SVID, taken
//! once per connection from the certificate rustls verified
//! (`identity::client_auth`: chain to the bundle of the peer's trust domain,
//! exactly one URI SAN that is a valid SPIFFE ID in canonical form, leaf not
//! a CA, digitalSignature, within validity).
//! Never from headers. While the gateway has no SVID, connections are closed
//! before any handshake. A connection is closed when the peer certificate it
//! was authenticated with expires: no connection outlives its credential.
//!
//! With `listener.jwt_svid_callers` the client certificate is optional: a
//! connection with one is authenticated by it exactly as above (a bearer
//! token never overrides it); one without must present a JWT-SVID on every
//! request (`Gateway::handle_token_caller`). Off by default: no certificate,
//! no handshake.

use std::sync::Arc;
use std::time::Duration;

use hyper::Request;
use hyper::body::Incoming;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::server::TlsStream;
use tokio_util::task::TaskTracker;
use tracing::warn;

use crate::clock::unix_seconds;
use crate::identity::{id_refusal, spiffe_id};
use crate::proxy::Gateway;
use crate::proxy::accept::{self, Lifecycle};
use crate::proxy::http_conn::{self, Served};

/// Time allowed for a client to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection without a client certificate is closed after this long (its
/// requests are each authenticated by their own JWT-SVID, so this only
/// bounds how long one connection lives).
const TOKEN_CONNECTION_LIFETIME: Duration = Duration::from_secs(3600);

/// How the requests of one connection are authenticated.
#[derive(Clone)]
enum Caller {
    /// By the verified client certificate, once for the connection.
    Certificate(Peer),
    /// By a JWT-SVID on each request; the gateway's own SPIFFE ID (the
    /// default audience).
    Token(Arc<str>),
}

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

/// Extracts the peer identity from a leaf certificate's DER: its one URI
/// SAN, a canonical SPIFFE ID with a path (`identity::spiffe_id`; the
/// handshake's verifier applied the same rule).
pub fn peer_from_leaf(der: &[u8]) -> Result<Peer, PeerError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| PeerError::Parse(e.to_string()))?;
    let id = spiffe_id::from_certificate(&cert).map_err(|e| PeerError::SpiffeId(e.to_string()))?;
    Ok(Peer {
        spiffe_id: Arc::from(id.to_string()),
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// Accepts connections until `lifecycle.stop` flips to true, then drops
/// the listening socket (new connections are refused). Each connection
/// runs on `connections`, so shutdown can wait for them to drain.
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    lifecycle: Lifecycle,
    connections: TaskTracker,
) {
    accept::serve(listener, gateway, lifecycle, connections, connection).await;
}

/// One connection: a place under the connection cap, handshake, identity
/// (and a place under its cap), then HTTP until the peer leaves, the
/// certificate expires, or the gateway drains (`http_conn::serve`).
async fn connection(
    tcp: TcpStream,
    gateway: Arc<Gateway>,
    drain: watch::Receiver<bool>,
) -> Result<(), String> {
    let _slot = gateway
        .admission
        .connection()
        .ok_or("connections.max_connections reached")?;
    let (tls, caller) = authenticate(tcp, &gateway).await.inspect_err(|_| {
        gateway.metrics.tls_handshake_failures.inc();
    })?;
    let (_identity_slot, remaining) = match &caller {
        Caller::Certificate(peer) => {
            let slot = gateway
                .admission
                .identity(&peer.spiffe_id)
                .ok_or("connections.max_connections_per_identity reached")?;
            let left = u64::try_from(peer.not_after - unix_seconds()).unwrap_or(0);
            (Some(slot), Duration::from_secs(left))
        }
        Caller::Token(_) => (None, TOKEN_CONNECTION_LIFETIME),
    };
    let http2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let served = Served::new(&gateway, remaining, http2);
    let handler = {
        let gateway = Arc::clone(&gateway);
        move |req: Request<Incoming>| {
            let gateway = Arc::clone(&gateway);
            let caller = caller.clone();
            async move {
                match &caller {
                    Caller::Certificate(peer) => gateway.handle(req, peer).await,
                    Caller::Token(own_id) => gateway.handle_token_caller(req, own_id).await,
                }
            }
        }
    };
    http_conn::serve(tls, handler, served, drain).await
}

/// The TLS handshake and the caller it authenticated. Fail closed: without
/// an SVID there is no config, so no handshake.
async fn authenticate(
    tcp: TcpStream,
    gateway: &Gateway,
) -> Result<(TlsStream<TcpStream>, Caller), String> {
    let configs = gateway
        .identity
        .current()
        .ok_or("gateway has no SVID yet")?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&configs.server));
    let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(&acceptor, tcp))
        .await
        .map_err(|_| "handshake timed out".to_owned())?
        .map_err(handshake_failed)?;
    let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
    // Without a certificate (only with listener.jwt_svid_callers, whose TLS
    // config makes it optional) each request must carry a JWT-SVID instead.
    let caller = match leaf {
        Some(leaf) => {
            Caller::Certificate(peer_from_leaf(leaf.as_ref()).map_err(|e| e.to_string())?)
        }
        None if gateway.accepts_token_callers() => Caller::Token(Arc::clone(&configs.spiffe_id)),
        None => return Err(PeerError::NoCertificate.to_string()),
    };
    Ok((tls, caller))
}

/// The server side of the TLS handshake on an accepted socket.
///
/// NODELAY: responses go out as soon as they are written. QUICKACK once
/// the handshake is done: the client's Finished is the last handshake
/// message and, with TLS tickets off, nothing answers it, so the kernel
/// would hold its ACK for the delayed-ACK timer (~40 ms); a client with
/// Nagle's algorithm on (a plain Python `ssl` socket) then holds back its
/// first request until that ACK comes. Quick-ack mode sends the pending ACK
/// at once.
async fn handshake(
    acceptor: &tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
) -> std::io::Result<TlsStream<TcpStream>> {
    let _ = tcp.set_nodelay(true);
    let tls = acceptor.accept(tcp).await?;
    let _ = socket2::SockRef::from(tls.get_ref().0).set_tcp_quickack(true);
    Ok(tls)
}

/// A handshake error as the refusal reason. A caller whose certificate
/// chained but whose SPIFFE ID is not exactly as written is worth a warning
/// (someone holding a trust domain's certificate tried to pass as another
/// workload); other failures stay at debug (scanners, wrong CAs).
fn handshake_failed(e: std::io::Error) -> String {
    let refusal = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .and_then(id_refusal);
    if let Some(refusal) = refusal {
        warn!(reason = %refusal, "caller refused at the handshake: SPIFFE ID");
    }
    format!("handshake failed: {e}")
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, KeyPair, SanType};

    use super::*;

    fn leaf(sans: &[&str]) -> Vec<u8> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = sans
            .iter()
            .map(|s| match s.strip_prefix("dns:") {
                Some(dns) => SanType::DnsName(dns.try_into().unwrap()),
                None => SanType::URI((*s).try_into().unwrap()),
            })
            .collect();
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    /// The identity of a (rustls-verified) peer certificate, as a table.
    #[test]
    fn peer_identity_from_leaf() {
        let ok = |id: &str| Some(id.to_owned());
        let cases: &[(&str, &[&str], Option<String>)] = &[
            (
                "one SPIFFE ID",
                &["spiffe://example.org/ns/demo/sa/agent"],
                ok("spiffe://example.org/ns/demo/sa/agent"),
            ),
            (
                "SPIFFE ID plus DNS SAN",
                &["spiffe://example.org/a", "dns:localhost"],
                ok("spiffe://example.org/a"),
            ),
            (
                "two SPIFFE IDs",
                &["spiffe://example.org/a", "spiffe://example.org/b"],
                None,
            ),
            (
                "SPIFFE ID plus https URI",
                &["spiffe://example.org/a", "https://example.org/"],
                None,
            ),
            ("no URI SAN", &["dns:localhost"], None),
            ("no SAN at all", &[], None),
            ("https URI only", &["https://example.org/a"], None),
            ("root ID, no path", &["spiffe://example.org"], None),
            ("empty segment", &["spiffe://example.org/a//b"], None),
            ("dot segment", &["spiffe://example.org/a/./b"], None),
            ("dot-dot segment", &["spiffe://example.org/a/../b"], None),
            ("trailing slash", &["spiffe://example.org/a/"], None),
            ("query", &["spiffe://example.org/a?x=1"], None),
            ("fragment", &["spiffe://example.org/a#f"], None),
            ("port", &["spiffe://example.org:443/a"], None),
            ("user info", &["spiffe://u@example.org/a"], None),
            ("bad trust domain char", &["spiffe://exa$mple.org/a"], None),
            ("bad path char", &["spiffe://example.org/a b"], None),
            // Folded by the spiffe crate into another workload's ID.
            ("upper-case scheme", &["SPIFFE://example.org/agent-a"], None),
            (
                "upper-case trust domain",
                &["spiffe://EXAMPLE.ORG/agent-a"],
                None,
            ),
            (
                "percent-encoded path",
                &["spiffe://example.org/%61gent-a"],
                None,
            ),
        ];
        for (name, sans, want) in cases {
            let got = peer_from_leaf(&leaf(sans))
                .ok()
                .map(|p| p.spiffe_id.to_string());
            assert_eq!(&got, want, "{name}");
        }
    }

    #[test]
    fn long_ids_up_to_2048_bytes_are_supported() {
        let base = "spiffe://example.org/";
        let id = format!("{base}{}", "a".repeat(2048 - base.len()));
        assert_eq!(id.len(), 2048);
        let peer = peer_from_leaf(&leaf(&[&id])).unwrap();
        assert_eq!(&*peer.spiffe_id, id);
        let too_long = format!("{id}b");
        assert!(peer_from_leaf(&leaf(&[&too_long])).is_err());
    }

    #[test]
    fn not_after_comes_from_the_certificate() {
        let der = leaf(&["spiffe://example.org/a"]);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let peer = peer_from_leaf(&der).unwrap();
        assert_eq!(peer.not_after, cert.validity().not_after.timestamp());
    }

    /// After the handshake the accepted socket is in quick-ack mode (the
    /// ACK of the client's Finished is not held for the delayed-ACK timer)
    /// and has NODELAY; read back from the socket the listener serves on.
    #[tokio::test]
    async fn the_handshake_leaves_the_socket_in_quickack_and_nodelay() {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = cert.der().clone();
        let server = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![der.clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).unwrap();
        let client = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connect = async {
            let tcp = TcpStream::connect(addr).await.unwrap();
            tcp.set_nodelay(false).unwrap(); // Nagle on, as the slow client had it
            tokio_rustls::TlsConnector::from(Arc::new(client))
                .connect("localhost".try_into().unwrap(), tcp)
                .await
                .unwrap()
        };
        let accept = async {
            let (tcp, _) = listener.accept().await.unwrap();
            // A fresh socket's state, for contrast.
            assert!(!socket2::SockRef::from(&tcp).tcp_nodelay().unwrap());
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
            handshake(&acceptor, tcp).await.unwrap()
        };
        let (_client, served) = tokio::join!(connect, accept);
        let sock = socket2::SockRef::from(served.get_ref().0);
        assert!(
            sock.tcp_quickack().unwrap(),
            "quick-ack mode after the handshake"
        );
        assert!(sock.tcp_nodelay().unwrap());
    }

    #[test]
    fn garbage_is_refused() {
        assert!(peer_from_leaf(b"not a certificate").is_err());
        assert!(peer_from_leaf(&[]).is_err());
    }
}
