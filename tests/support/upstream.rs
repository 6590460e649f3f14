//! A stub MCP server behind mTLS: it presents an SVID from the test CA,
//! requires a client certificate chaining to the same CA, records every
//! request it receives (method, path, headers, body, the client's SPIFFE
//! ID), and answers with a handler the test chooses (`mcp` by default: a
//! small 2025/2026-era server with three tools).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{HeaderMap, Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_rustls::TlsAcceptor;

use super::ca::{Ca, Leaf};

/// One request as the stub received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The JSON-RPC methods in the body (one, or each of a batch).
    pub fn rpc_methods(&self) -> Vec<String> {
        let one = |v: &Value| v["method"].as_str().unwrap_or("").to_owned();
        match self.json() {
            Value::Array(items) => items.iter().map(one).collect(),
            Value::Null => Vec::new(),
            v => vec![one(&v)],
        }
    }
}

/// What the stub answers.
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
    /// How long the stub waits before answering.
    pub delay: Duration,
}

impl Reply {
    pub fn json(value: &Value) -> Reply {
        Reply {
            status: 200,
            headers: vec![("content-type", "application/json".into())],
            body: Bytes::from(value.to_string()),
            delay: Duration::ZERO,
        }
    }

    /// A JSON body exactly as given (for replies no serializer writes).
    pub fn raw_json(body: &str) -> Reply {
        Reply {
            body: Bytes::from(body.to_owned()),
            ..Reply::json(&Value::Null)
        }
    }

    /// One SSE event per message, each `data:` a JSON-RPC message.
    pub fn sse(messages: &[Value]) -> Reply {
        let mut body = String::new();
        for (i, m) in messages.iter().enumerate() {
            body.push_str(&format!("id: {i}\nevent: message\ndata: {m}\n\n"));
        }
        Reply {
            status: 200,
            headers: vec![("content-type", "text/event-stream".into())],
            body: Bytes::from(body),
            delay: Duration::ZERO,
        }
    }

    pub fn empty(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Bytes::new(),
            delay: Duration::ZERO,
        }
    }

    pub fn after(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }

    pub fn with_header(mut self, name: &'static str, value: &str) -> Reply {
        self.headers.push((name, value.to_owned()));
        self
    }
}

pub type Handler = Arc<dyn Fn(&Received) -> Reply + Send + Sync>;

pub struct StubUpstream {
    pub addr: SocketAddr,
    pub leaf: Leaf,
    received: Arc<Mutex<Vec<Received>>>,
    arrived: Arc<Notify>,
}

impl StubUpstream {
    /// Serves `handler` on 127.0.0.1:0 as `spiffe_id`.
    pub async fn start(ca: &Ca, spiffe_id: &str, handler: Handler) -> StubUpstream {
        let leaf = ca.leaf(spiffe_id);
        let mut roots = RootCertStore::empty();
        roots.add(ca.der.clone()).unwrap();
        let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
            .build()
            .unwrap();
        let mut config = rustls::ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![leaf.cert.clone()], leaf.key())
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let arrived = Arc::new(Notify::new());
        let (log, notify) = (Arc::clone(&received), Arc::clone(&arrived));
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let (handler, log, notify) =
                    (Arc::clone(&handler), Arc::clone(&log), Arc::clone(&notify));
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |req| {
                        let (handler, log, notify) =
                            (Arc::clone(&handler), Arc::clone(&log), Arc::clone(&notify));
                        async move { Ok::<_, Infallible>(serve(req, &handler, &log, &notify).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        StubUpstream {
            addr,
            leaf,
            received,
            arrived,
        }
    }

    pub fn url(&self) -> String {
        format!("https://{}/mcp", self.addr)
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// The JSON-RPC methods received so far, in order, batches flattened.
    pub fn rpc_methods(&self) -> Vec<String> {
        self.received()
            .iter()
            .flat_map(Received::rpc_methods)
            .collect()
    }

    /// Waits until at least `n` requests have arrived.
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        loop {
            let notified = self.arrived.notified();
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            tokio::time::timeout(Duration::from_secs(10), notified)
                .await
                .expect("the stub upstream received nothing more");
        }
    }
}

async fn serve(
    req: Request<Incoming>,
    handler: &Handler,
    log: &Mutex<Vec<Received>>,
    arrived: &Notify,
) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let received = Received {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        headers: parts.headers,
        body,
    };
    let reply = handler(&received);
    log.lock().unwrap().push(received);
    arrived.notify_waiters();
    tokio::time::sleep(reply.delay).await;
    let mut resp = Response::builder().status(reply.status);
    for (name, value) in &reply.headers {
        resp = resp.header(*name, value);
    }
    resp.body(Full::new(reply.body)).unwrap()
}

/// A small MCP server: `initialize` opens session `stub-session-<n>` (2025
/// era), `tools/list` lists `echo`, `get_weather` and `delete_repository`,
/// `tools/call` answers the tool's name; notifications and responses get
/// 202; DELETE 200.
pub fn mcp() -> Handler {
    let sessions = AtomicU64::new(0);
    Arc::new(move |req: &Received| {
        if req.method != "POST" {
            return Reply::empty(if req.method == "DELETE" { 200 } else { 405 });
        }
        match req.json() {
            Value::Array(items) => {
                let answers: Vec<Value> = items.iter().filter_map(answer).collect();
                if answers.is_empty() {
                    Reply::empty(202)
                } else {
                    Reply::json(&Value::Array(answers))
                }
            }
            message => match answer(&message) {
                Some(a) if message["method"] == "initialize" => {
                    let n = sessions.fetch_add(1, Ordering::Relaxed);
                    Reply::json(&a).with_header("mcp-session-id", &format!("stub-session-{n}"))
                }
                Some(a) => Reply::json(&a),
                None => Reply::empty(202),
            },
        }
    })
}

/// The answer to one message, `None` for a notification or a response.
pub fn answer(message: &Value) -> Option<Value> {
    let id = message.get("id")?.clone();
    let method = message["method"].as_str()?;
    let result = match method {
        "initialize" => json!({
            "protocolVersion": message["params"]["protocolVersion"],
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "stub", "version": "1"}
        }),
        "tools/list" => json!({"tools": [
            tool("echo"), tool("get_weather"), tool("delete_repository")
        ]}),
        "server/discover" => json!({
            "supportedVersions": ["2025-11-25", "2026-07-28"],
            "capabilities": {"tools": {}}
        }),
        "tools/call" => json!({
            "content": [{"type": "text", "text": message["params"]["name"]}]
        }),
        _ => json!({}),
    };
    Some(json!({"jsonrpc": "2.0", "id": id, "result": result}))
}

pub fn tool(name: &str) -> Value {
    json!({"name": name, "inputSchema": {"type": "object"}})
}
