//! An agent: an HTTPS client presenting an SVID from the test CA, trusting
//! the CA for the gateway's certificate (whose DNS SAN is `localhost`).
//! One connection per request unless a test holds a `Connection`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{HeaderMap, Request};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::ca::{Ca, Leaf};

/// What came back.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `data:` payloads of an SSE body, parsed.
    pub fn sse_messages(&self) -> Vec<Value> {
        String::from_utf8_lossy(&self.body)
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(|d| serde_json::from_str(d.trim()).unwrap())
            .collect()
    }

    /// The JSON-RPC error code of a single-message answer.
    pub fn error_code(&self) -> Option<i64> {
        self.json()["error"]["code"].as_i64()
    }
}

pub struct Agent {
    pub spiffe_id: String,
    addr: SocketAddr,
    tls: TlsConnector,
}

impl Agent {
    pub fn new(ca: &Ca, leaf: &Leaf, addr: SocketAddr) -> Agent {
        let mut roots = RootCertStore::empty();
        roots.add(ca.der.clone()).unwrap();
        let mut config = ClientConfig::builder()
            .with_root_certificates(roots)
            .with_client_auth_cert(vec![leaf.cert.clone()], leaf.key())
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Agent {
            spiffe_id: leaf.spiffe_id.clone(),
            addr,
            tls: TlsConnector::from(Arc::new(config)),
        }
    }

    /// The leaf certificate the gateway presents on a new handshake.
    pub async fn server_certificate(&self) -> Vec<u8> {
        let tcp = TcpStream::connect(self.addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let tls = self.tls.connect(name, tcp).await.expect("TLS handshake");
        let (_, conn) = tls.get_ref();
        conn.peer_certificates().unwrap()[0].to_vec()
    }

    /// Writes `head` (an HTTP/1.1 request head, CRLF line ends) and then
    /// each of `body` with `pause` between them, on a new connection, and
    /// reads until the server closes it: for requests no client library
    /// would send. Returns the status and the JSON-RPC error code.
    pub async fn raw(&self, head: &str, body: &[&[u8]], pause: Duration) -> (u16, Option<i64>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let tcp = TcpStream::connect(self.addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let mut tls = self.tls.connect(name, tcp).await.expect("TLS handshake");
        tls.write_all(head.as_bytes()).await.unwrap();
        for chunk in body {
            tokio::time::sleep(pause).await;
            if tls.write_all(chunk).await.is_err() {
                break;
            }
        }
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut out)).await;
        let text = String::from_utf8_lossy(&out);
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let code = text
            .find("{\"")
            .zip(text.rfind('}'))
            .and_then(|(a, b)| serde_json::from_str::<Value>(&text[a..=b]).ok())
            .and_then(|v| v["error"]["code"].as_i64());
        (status, code)
    }

    /// Sends one request on a new connection.
    pub async fn send(&self, req: Request<Full<Bytes>>) -> Answer {
        self.try_send(req).await.expect("an answer")
    }

    /// The same, giving back what failed (the handshake, the connection)
    /// instead of panicking: for tests that count failures.
    pub async fn try_send(&self, req: Request<Full<Bytes>>) -> anyhow::Result<Answer> {
        let tcp = TcpStream::connect(self.addr).await?;
        let name = ServerName::try_from("localhost")?;
        let tls = self.tls.connect(name, tcp).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        let resp = sender.send_request(req).await?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Answer {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        })
    }

    /// POSTs `body` to `path` with the MCP headers a client sends, plus
    /// `headers`.
    pub async fn post(&self, path: &str, headers: &[(&str, &str)], body: &Value) -> Answer {
        self.post_bytes(path, headers, Bytes::from(body.to_string()))
            .await
    }

    pub async fn post_bytes(&self, path: &str, headers: &[(&str, &str)], body: Bytes) -> Answer {
        self.send(post_request(path, headers, body)).await
    }
}

/// A POST of `body` to `path` with the MCP headers a client sends, plus
/// `headers`.
pub fn post_request(path: &str, headers: &[(&str, &str)], body: Bytes) -> Request<Full<Bytes>> {
    let mut req = Request::post(path)
        .header("host", "localhost")
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req.body(Full::new(body)).unwrap()
}
