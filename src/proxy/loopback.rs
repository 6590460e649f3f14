//! The plain-HTTP loopback listener of the client-sidecar role
//! (`listener.plaintext_loopback: true`).
//!
//! An agent that cannot do mTLS runs beside the sidecar and talks plain HTTP
//! to it on a loopback IP; the sidecar fetches the agent's SVID from the
//! Workload API (its `svid_hint` picks it) and forwards over mTLS with that
//! SVID as its client certificate. There is no peer certificate here, so the
//! caller identity is the sidecar's own SVID: the SPIFFE ID of the SVID held
//! when the connection was accepted (rotations apply to new connections), and
//! the connection is closed when that SVID expires, as on the mTLS listener.
//! The same pipeline follows: policies, audit, sessions, identity headers
//! stripped.
//!
//! Anything that can open a loopback connection acts as the agent, so the
//! listener must only ever bind a loopback IP (checked in `config` and again
//! after binding) and must refuse what a web browser can be made to send:
//! a `Host` that is not a loopback name or IP (DNS rebinding: a page on
//! `evil.example` whose name resolves to 127.0.0.1) and an `Origin` that is
//! not loopback (a cross-origin page). Both are refused before routing, with
//! 403 and an audit record. While the process holds no SVID, connections are
//! closed before any request is read.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use hyper::header::{self, HeaderMap};
use hyper::{Request, Uri};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::clock::unix_seconds;
use crate::proxy::accept::{self, Lifecycle};
use crate::proxy::http_conn::{self, Served};
use crate::proxy::listener::{Peer, peer_from_leaf};
use crate::proxy::{Gateway, ProxyError};

/// Accepts connections until `lifecycle.stop` flips to true (same contract as
/// `listener::serve`).
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    lifecycle: Lifecycle,
    connections: TaskTracker,
) {
    accept::serve(listener, gateway, lifecycle, connections, connection).await;
}

/// The caller identity of a new connection: this process's current SVID.
fn own_peer(gateway: &Gateway) -> Result<Peer, String> {
    // Fail closed: no usable SVID, no caller identity, no request.
    let configs = gateway
        .identity
        .current()
        .filter(|c| c.is_usable())
        .ok_or("the sidecar has no usable SVID yet")?;
    let svid = configs.svid().ok_or("the sidecar has no SVID yet")?;
    peer_from_leaf(svid.leaf().as_ref()).map_err(|e| format!("own SVID: {e}"))
}

/// One connection: HTTP/1.1 or HTTP/2 (prior knowledge) until the client
/// leaves, the SVID it is served with expires, or the sidecar shuts down.
async fn connection(
    tcp: TcpStream,
    gateway: Arc<Gateway>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    let _slot = gateway
        .admission
        .connection()
        .ok_or("connections.max_connections reached")?;
    let peer = own_peer(&gateway)?;
    let _ = tcp.set_nodelay(true);
    let remaining =
        Duration::from_secs(u64::try_from(peer.not_after - unix_seconds()).unwrap_or(0));
    // As on the mTLS listener: no connection outlives the SVID it is
    // served with, and clients are asked to reconnect before it expires.
    // Plain HTTP has no ALPN: HTTP/2 (prior knowledge) is closed at expiry.
    let served = Served::new(&gateway, remaining, false);
    let handler = {
        let gateway = Arc::clone(&gateway);
        move |req: Request<hyper::body::Incoming>| {
            let gateway = Arc::clone(&gateway);
            let peer = peer.clone();
            async move {
                match check_local_request(req.headers(), req.uri()) {
                    Ok(()) => gateway.handle(req, &peer).await,
                    Err(refusal) => gateway.refuse_request(req, &peer, refusal).await,
                }
            }
        }
    };
    http_conn::serve(tcp, handler, served, shutdown).await
}

/// The guard against browsers: the request must name a loopback host, and
/// an `Origin`, if sent, must be a loopback origin. Headers sent more than
/// once are refused rather than picked from.
pub fn check_local_request(headers: &HeaderMap, uri: &Uri) -> Result<(), ProxyError> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(ProxyError::DuplicateHeader("Host"));
    }
    let host_ok = host
        .and_then(|h| h.to_str().ok())
        .map(is_loopback_authority);
    // HTTP/2 carries the authority in the URI (`:authority`); HTTP/1.1 in Host.
    let authority_ok = uri.authority().map(|a| is_loopback_authority(a.as_str()));
    match (host_ok, authority_ok) {
        (None, None) | (Some(false), _) | (_, Some(false)) => return Err(ProxyError::ForeignHost),
        _ => {}
    }
    let mut origins = headers.get_all(header::ORIGIN).iter();
    let origin = origins.next();
    if origins.next().is_some() {
        return Err(ProxyError::DuplicateHeader("Origin"));
    }
    match origin {
        None => Ok(()),
        Some(o) if o.to_str().is_ok_and(is_loopback_origin) => Ok(()),
        Some(_) => Err(ProxyError::ForeignOrigin),
    }
}

/// `host[:port]` where host is `localhost`, an IPv4 address in 127.0.0.0/8
/// or `[::1]`. No user info, no trailing dot, nothing else.
fn is_loopback_authority(authority: &str) -> bool {
    let (host_ok, port) = match authority.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((v6, port)) => (
                v6.parse::<Ipv6Addr>().is_ok_and(|ip| ip.is_loopback()),
                port,
            ),
            None => return false,
        },
        None => {
            let (host, port) = authority.split_at(authority.find(':').unwrap_or(authority.len()));
            let ok = host.eq_ignore_ascii_case("localhost")
                || host.parse::<Ipv4Addr>().is_ok_and(|ip| ip.is_loopback());
            (ok, port)
        }
    };
    let port_ok = port.is_empty()
        || port.strip_prefix(':').is_some_and(|p| {
            !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok()
        });
    host_ok && port_ok
}

/// `http://` or `https://` followed by a loopback authority, as browsers
/// serialize an origin (lowercase scheme, no path). `null` is refused.
fn is_loopback_origin(origin: &str) -> bool {
    origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .is_some_and(is_loopback_authority)
}

#[cfg(test)]
mod tests;
