//! `serve` driven in process over an in-memory pipe with hyper's own
//! clients, on tokio's paused clock: the lifetime and idle deadlines pass
//! as soon as nothing else can happen, so no test sleeps for real.

use http_body_util::{BodyExt, Empty};
use hyper::StatusCode;
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus::{IntCounterVec, IntGauge, Opts};

use super::*;
use crate::proxy::reply::json_ok;

fn admission() -> Admission {
    Admission::new(
        10,
        10,
        IntGauge::new("open", "open").unwrap(),
        IntCounterVec::new(Opts::new("refused", "refused"), &["reason"]).unwrap(),
    )
}

/// Serves one end of a pipe with `serve`; the handler answers `ok`.
/// Returns the other end.
fn start(
    config: ConnectionsConfig,
    lifetime: Lifetime,
    http2: bool,
    drain: watch::Receiver<bool>,
) -> tokio::io::DuplexStream {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let handler = |_req: Request<Incoming>| async { json_ok(b"ok".to_vec()) };
    tokio::spawn(async move {
        let admission = admission();
        let served = Served {
            config: &config,
            admission: &admission,
            lifetime,
            http2,
        };
        let _ = serve(server, handler, served, drain).await;
    });
    client
}

fn get() -> Request<Empty<Bytes>> {
    Request::builder()
        .uri("/mcp")
        .header("host", "localhost")
        .body(Empty::new())
        .unwrap()
}

fn lifetime_of(seconds: u64) -> Lifetime {
    Lifetime::new(Duration::from_secs(seconds), 0.5)
}

fn not_draining() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    std::mem::forget(tx);
    rx
}

/// HTTP/1.1: before half the lifetime responses keep the connection; after
/// it they say `Connection: close`, and the connection is not cut before.
#[tokio::test(start_paused = true)]
async fn http1_is_told_to_reconnect_by_connection_close() {
    let config = ConnectionsConfig {
        header_read_timeout: Duration::from_secs(3600),
        idle_timeout: Duration::from_secs(3600),
        ..ConnectionsConfig::default()
    };
    let io = start(config, lifetime_of(100), false, not_draining());
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let early = sender.send_request(get()).await.unwrap();
    assert!(early.headers().get(header::CONNECTION).is_none());
    early.into_body().collect().await.unwrap();
    tokio::time::sleep(Duration::from_secs(51)).await;
    sender.ready().await.unwrap();
    let late = sender.send_request(get()).await.unwrap();
    assert_eq!(late.headers()[header::CONNECTION], "close");
    late.into_body().collect().await.unwrap();
    // The client then closes as asked; the connection ends cleanly.
    conn.await.unwrap().unwrap();
}

/// HTTP/2: at half the lifetime the server sends GOAWAY; the client's
/// connection then ends without the credential having expired.
#[tokio::test(start_paused = true)]
async fn http2_is_told_to_reconnect_by_goaway() {
    let config = ConnectionsConfig {
        idle_timeout: Duration::from_secs(3600),
        ..ConnectionsConfig::default()
    };
    let io = start(config, lifetime_of(100), true, not_draining());
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .unwrap();
    let started = Instant::now();
    let conn = tokio::spawn(conn);
    let response = sender.send_request(get()).await.unwrap();
    response.into_body().collect().await.unwrap();
    // The client keeps its handle: only the server's GOAWAY ends this.
    conn.await.unwrap().unwrap();
    drop(sender);
    let ended = started.elapsed();
    assert!(
        ended >= Duration::from_secs(50) && ended < Duration::from_secs(100),
        "{ended:?}"
    );
}

/// A connection with no bytes for the idle timeout is closed; a request in
/// flight is never cut by it.
#[tokio::test(start_paused = true)]
async fn an_idle_connection_is_closed_after_the_idle_timeout() {
    let config = ConnectionsConfig {
        idle_timeout: Duration::from_secs(5),
        header_read_timeout: Duration::from_secs(3600),
        ..ConnectionsConfig::default()
    };
    let io = start(config, lifetime_of(3600), false, not_draining());
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .unwrap();
    let started = Instant::now();
    let conn = tokio::spawn(conn);
    let response = sender.send_request(get()).await.unwrap();
    response.into_body().collect().await.unwrap();
    conn.await.unwrap().unwrap();
    let ended = started.elapsed();
    assert!(
        ended >= Duration::from_secs(5) && ended < Duration::from_secs(7),
        "{ended:?}"
    );
}

/// When the gateway drains, an HTTP/1.1 connection in use gets
/// `Connection: close`; one accepted while draining serves one request.
#[tokio::test(start_paused = true)]
async fn draining_asks_connections_to_close() {
    let (drain_tx, drain) = watch::channel(false);
    let io = start(
        ConnectionsConfig::default(),
        lifetime_of(3600),
        false,
        drain.clone(),
    );
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let served = sender.send_request(get()).await.unwrap();
    assert!(served.headers().get(header::CONNECTION).is_none());
    served.into_body().collect().await.unwrap();
    let drained_at = Instant::now();
    drain_tx.send(true).unwrap();
    // Idle when the drain began: closed at once, without another request.
    conn.await.unwrap().unwrap();
    assert_eq!(drained_at.elapsed(), Duration::ZERO);

    let born_draining = start(
        ConnectionsConfig::default(),
        lifetime_of(3600),
        false,
        drain,
    );
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(born_draining))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let response = sender.send_request(get()).await.unwrap();
    assert_eq!(response.headers()[header::CONNECTION], "close");
    response.into_body().collect().await.unwrap();
    conn.await.unwrap().unwrap();
}

#[test]
fn the_client_is_asked_to_reconnect_before_expiry() {
    let lifetime = Lifetime::new(Duration::from_secs(100), 0.8);
    let ask = lifetime.reconnect_at - Instant::now();
    assert!(ask <= Duration::from_secs(80) && ask > Duration::from_secs(79));
    assert!(lifetime.reconnect_at < lifetime.expiry);
    let whole = Lifetime::new(Duration::from_secs(10), 1.0);
    assert_eq!(whole.reconnect_at, whole.expiry);
}

#[test]
fn once_asked_http1_responses_say_connection_close() {
    let reconnect = Reconnect::default();
    let mut r = json_ok(Vec::new());
    reconnect.mark(Version::HTTP_11, &mut r);
    assert!(r.headers().get(header::CONNECTION).is_none());
    reconnect.ask();
    for version in [Version::HTTP_10, Version::HTTP_11] {
        let mut r = json_ok(Vec::new());
        reconnect.mark(version, &mut r);
        assert_eq!(r.headers()[header::CONNECTION], "close");
    }
    // HTTP/2 has no Connection header; it is told by GOAWAY.
    let mut r = json_ok(Vec::new());
    reconnect.mark(Version::HTTP_2, &mut r);
    assert!(r.headers().get(header::CONNECTION).is_none());
}

/// One HTTP/1.1 request with a header of `size` bytes, on its own
/// connection; its status.
async fn status_with_header_of(config: ConnectionsConfig, size: usize) -> StatusCode {
    let io = start(config, lifetime_of(3600), false, not_draining());
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut request = get();
    let value = "a".repeat(size);
    request
        .headers_mut()
        .insert("x-big", value.parse().unwrap());
    sender.send_request(request).await.unwrap().status()
}

/// A request head over `max_request_head_bytes` is refused with 431
/// before the handler sees it; one under it, or under a larger setting,
/// is served.
#[tokio::test]
async fn a_request_head_over_the_limit_is_refused_with_431() {
    let default = ConnectionsConfig::default();
    assert_eq!(default.max_request_head_bytes, 8192);
    assert_eq!(
        status_with_header_of(default.clone(), 7 * 1024).await,
        StatusCode::OK
    );
    assert_eq!(
        status_with_header_of(default.clone(), 9 * 1024).await,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
    let larger = ConnectionsConfig {
        max_request_head_bytes: 32 * 1024,
        ..default
    };
    assert_eq!(
        status_with_header_of(larger.clone(), 9 * 1024).await,
        StatusCode::OK
    );
    assert_eq!(
        status_with_header_of(larger, 33 * 1024).await,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
}
