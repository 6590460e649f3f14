//! An in-process SPIFFE Workload API on a temporary Unix socket: the
//! `FetchX509SVID` stream, served over HTTP/2 as gRPC, with SVIDs from a
//! test CA. The gateway's real `X509Source` connects to it as it would to a
//! SPIRE agent; `set` pushes a new SVID or bundle to every open stream (a
//! rotation). Other methods answer UNIMPLEMENTED.

use std::convert::Infallible;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::Full;
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, watch};

use super::ca::Leaf;

/// What the Workload API hands the workload: its SVID and the bundles.
#[derive(Clone)]
pub struct Svid {
    pub leaf: Leaf,
    /// The CA certificates of the workload's own trust domain.
    pub bundle: Vec<Vec<u8>>,
    /// Federated trust domains and their CA certificates.
    pub federated: Vec<(String, Vec<Vec<u8>>)>,
}

pub struct WorkloadApi {
    pub endpoint: String,
    state: watch::Sender<Option<Svid>>,
    _dir: tempfile::TempDir,
}

impl WorkloadApi {
    /// Starts serving; streams send `svid` at once (or wait for `set` if
    /// `None`: no SVID yet).
    pub async fn start(svid: Option<Svid>) -> WorkloadApi {
        let dir = tempfile::tempdir().unwrap();
        let path: PathBuf = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let (state, _) = watch::channel(svid);
        let serving = state.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let rx = serving.subscribe();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let rx = rx.clone();
                        async move { Ok::<_, Infallible>(route(req, rx)) }
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        WorkloadApi {
            endpoint: format!("unix://{}", path.display()),
            state,
            _dir: dir,
        }
    }

    /// Replaces the SVID and bundles on every open stream.
    pub fn set(&self, svid: Svid) {
        self.state.send_replace(Some(svid));
    }
}

type Body = Pin<Box<dyn hyper::body::Body<Data = Bytes, Error = Infallible> + Send>>;

fn route(req: Request<Incoming>, state: watch::Receiver<Option<Svid>>) -> Response<Body> {
    // SPIRE refuses a call without this metadata; so does this server.
    let marked = req
        .headers()
        .get("workload.spiffe.io")
        .is_some_and(|v| v == "true");
    if !marked {
        return status_only(3, "security header missing");
    }
    if req.uri().path() != "/SpiffeWorkloadAPI/FetchX509SVID" {
        return status_only(12, "not served by the test Workload API");
    }
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(stream_svids(state, tx));
    Response::builder()
        .header("content-type", "application/grpc")
        .body(Box::pin(Frames(rx)) as Body)
        .unwrap()
}

/// Sends the current state, then every change, until the caller goes.
async fn stream_svids(mut state: watch::Receiver<Option<Svid>>, tx: mpsc::Sender<Frame<Bytes>>) {
    loop {
        let current = state.borrow_and_update().clone();
        if let Some(svid) = current
            && tx
                .send(Frame::data(grpc_message(&encode(&svid))))
                .await
                .is_err()
        {
            return;
        }
        tokio::select! {
            changed = state.changed() => if changed.is_err() { return },
            () = tx.closed() => return,
        }
    }
}

/// A response body fed by a channel: the stream stays open while the
/// server holds the sender.
struct Frames(mpsc::Receiver<Frame<Bytes>>);

impl hyper::body::Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|f| f.map(Ok))
    }
}

fn status_only(code: u32, message: &str) -> Response<Body> {
    Response::builder()
        .header("content-type", "application/grpc")
        .header("grpc-status", code.to_string())
        .header("grpc-message", message)
        .body(Box::pin(Full::new(Bytes::new())) as Body)
        .unwrap()
}

/// gRPC length-prefixed message: no compression, 4-byte big-endian length.
fn grpc_message(message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + message.len());
    out.put_u8(0);
    out.put_u32(message.len() as u32);
    out.put_slice(message);
    out.freeze()
}

/// `X509SVIDResponse` (workload.proto), encoded by hand: every field is
/// length-delimited.
fn encode(svid: &Svid) -> Vec<u8> {
    let mut entry = Vec::new();
    field(&mut entry, 1, svid.leaf.spiffe_id.as_bytes());
    field(&mut entry, 2, &svid.leaf.cert);
    field(&mut entry, 3, &svid.leaf.key_pkcs8);
    field(&mut entry, 4, &svid.bundle.concat());
    let mut response = Vec::new();
    field(&mut response, 1, &entry);
    for (trust_domain, certs) in &svid.federated {
        let mut pair = Vec::new();
        field(&mut pair, 1, trust_domain.as_bytes());
        field(&mut pair, 2, &certs.concat());
        field(&mut response, 3, &pair);
    }
    response
}

fn field(out: &mut Vec<u8>, number: u64, bytes: &[u8]) {
    varint(out, number << 3 | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}
