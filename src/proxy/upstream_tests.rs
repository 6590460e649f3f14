use std::collections::VecDeque;
use std::sync::atomic::Ordering;

use http_body_util::{BodyExt, Full};

use super::*;

/// A self-signed leaf with one URI SAN.
fn leaf(uri: &str) -> Vec<u8> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = vec![rcgen::SanType::URI(uri.try_into().unwrap())];
    let key = rcgen::KeyPair::generate().unwrap();
    params.self_signed(&key).unwrap().der().to_vec()
}

/// The upstream's ID is compared as written, after the handshake too: a
/// folded ID is refused here even if a verifier let it through.
#[test]
fn the_upstream_must_present_exactly_the_configured_id() {
    let want = "spiffe://example.org/ns/demo/sa/mcp-server";
    assert!(check_upstream_id(Some(&leaf(want)), want).is_ok());
    for presented in [
        "spiffe://EXAMPLE.ORG/ns/demo/sa/mcp-server",
        "SPIFFE://example.org/ns/demo/sa/mcp-server",
        "spiffe://example.org/ns/demo/sa/mcp-server/",
        "spiffe://example.org/ns/demo/sa/other",
    ] {
        let err = check_upstream_id(Some(&leaf(presented)), want).unwrap_err();
        assert!(err.is_identity(), "{presented}: {err}");
    }
    assert!(check_upstream_id(None, want).unwrap_err().is_identity());
}

/// After a rotation, requests move to connections opened with the new
/// SVID; until then, the pool's connection is reused. A loopback HTTP
/// server answers each request with the client port of its connection.
#[tokio::test]
async fn a_rotation_moves_requests_to_new_connections() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = listener.accept().await.unwrap();
            let port = peer.port().to_string();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req| {
                    let port = port.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(
                            port,
                        ))))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    let (identity, generation) = Identity::without_source();
    let connector = UpstreamConnector::new(
        identity,
        true,
        Duration::from_secs(5),
        Arc::from("spiffe://example.org/up"),
    );
    let pool = Pool::new(connector, &UpstreamConnection::default());
    let uri: Uri = format!("http://{addr}/mcp").parse().unwrap();
    let client_port = async |pool: &Pool| {
        let mut req = Request::new(Full::new(Bytes::new()));
        *req.uri_mut() = uri.clone();
        let resp = pool.request(req).await.unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(body.to_vec()).unwrap()
    };

    let first = client_port(&pool).await;
    assert_eq!(
        client_port(&pool).await,
        first,
        "same SVID: connection reused"
    );
    assert_eq!(pool.svid(), 1);

    generation.fetch_add(1, Ordering::AcqRel);
    let after = client_port(&pool).await;
    assert_ne!(after, first, "a rotation must not reuse the old connection");
    assert_eq!(pool.svid(), 2);
    assert_eq!(client_port(&pool).await, after, "the new pool is reused");
}

/// A body that yields each frame after its delay, then ends, or (with
/// `hang`) never ends.
struct Paced {
    frames: VecDeque<(Duration, &'static str)>,
    timer: Pin<Box<Sleep>>,
    hang: bool,
}

impl Paced {
    fn new(frames: &[(u64, &'static str)], hang: bool) -> Paced {
        let frames: VecDeque<_> = frames
            .iter()
            .map(|(ms, s)| (Duration::from_millis(*ms), *s))
            .collect();
        let first = frames.front().map_or(Duration::from_secs(3600), |f| f.0);
        Paced {
            frames,
            timer: Box::pin(tokio::time::sleep(first)),
            hang,
        }
    }
}

impl Body for Paced {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.frames.is_empty() && !self.hang {
            return Poll::Ready(None);
        }
        if self.frames.is_empty() || self.timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        let (_, data) = self.frames.pop_front().expect("checked non-empty");
        let next = self
            .frames
            .front()
            .map_or(Duration::from_secs(3600), |f| f.0);
        self.timer.as_mut().reset(Instant::now() + next);
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(data.as_bytes())))))
    }
}

fn counter() -> IntCounter {
    IntCounter::new("t", "t").unwrap()
}

async fn read_all<B: Body<Data = Bytes>>(body: B) -> Vec<u8>
where
    B::Error: std::fmt::Debug,
{
    body.collect().await.unwrap().to_bytes().to_vec()
}

#[tokio::test(start_paused = true)]
async fn a_body_that_keeps_sending_is_not_cut_even_past_the_idle_time() {
    // 10 frames 300 ms apart: 3 s in all, with a 1 s idle limit.
    let frames: Vec<_> = (0..10).map(|_| (300, "x")).collect();
    let idle = counter();
    let body = IdleBody::new(
        Paced::new(&frames, false),
        Duration::from_secs(1),
        idle.clone(),
        Arc::from("demo"),
    );
    assert_eq!(read_all(body).await, b"xxxxxxxxxx");
    assert_eq!(idle.get(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_body_that_goes_quiet_is_ended_after_the_idle_time_and_counted() {
    let idle = counter();
    let started = Instant::now();
    let body = IdleBody::new(
        Paced::new(&[(100, "a"), (200, "b")], true),
        Duration::from_secs(2),
        idle.clone(),
        Arc::from("demo"),
    );
    assert_eq!(read_all(body).await, b"ab");
    // Ended 2 s after the last frame (at 300 ms), not before.
    assert_eq!(started.elapsed(), Duration::from_millis(2300));
    assert_eq!(idle.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_silent_body_is_ended_after_the_idle_time() {
    let idle = counter();
    let started = Instant::now();
    let body = IdleBody::new(
        Paced::new(&[], true),
        Duration::from_secs(5),
        idle.clone(),
        Arc::from("demo"),
    );
    assert!(read_all(body).await.is_empty());
    assert_eq!(started.elapsed(), Duration::from_secs(5));
    assert_eq!(idle.get(), 1);
}
