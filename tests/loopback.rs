//! The client sidecar's plain-HTTP loopback listener in process: the caller
//! is the sidecar's own SVID, and what a web browser can be made to send
//! (a foreign `Host`, a foreign `Origin`) is refused with 403 before
//! routing, audited, and never forwarded.

mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use support::gateway::{GATEWAY, Harness, Options};

const PERMIT_ALL: &str = "@id(\"all\") permit (principal, action, resource);";

async fn sidecar() -> Harness {
    Harness::start_with(Options {
        policies: Some(PERMIT_ALL.into()),
        listener_fields: "plaintext_loopback: true".into(),
        ..Options::default()
    })
    .await
}

/// A 2026-07-28 `tools/call` of `echo` over plain HTTP/1.1 with these
/// `Host` and `Origin` headers: the status and the JSON body.
async fn call(gw: &Harness, host: &str, origin: Option<&str>) -> (u16, Value) {
    let tcp = tokio::net::TcpStream::connect(gw.app.listen_addr)
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": "echo", "arguments": {"text": "hi"},
        "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}}});
    let mut req = hyper::Request::post("/mcp")
        .header("host", host)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", "echo");
    if let Some(origin) = origin {
        req = req.header("origin", origin);
    }
    let req = req.body(Full::new(Bytes::from(body.to_string()))).unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn a_loopback_caller_is_served_as_the_sidecars_own_identity() {
    let gw = sidecar().await;
    let port = gw.app.listen_addr.port();
    let (status, body) = call(&gw, &format!("127.0.0.1:{port}"), None).await;
    assert_eq!(status, 200, "{body}");
    let received = gw.upstream.received();
    assert_eq!(received.len(), 1, "forwarded once");
    let records = gw.audit(1).await;
    assert_eq!(records[0]["decision"], "allow");
    assert_eq!(records[0]["caller"], GATEWAY);
    // A loopback page's origin is accepted, as is `localhost`.
    let (status, _) = call(&gw, "localhost", Some(&format!("http://localhost:{port}"))).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_foreign_host_or_origin_is_refused_403_audited_and_not_forwarded() {
    let gw = sidecar().await;
    let port = gw.app.listen_addr.port();
    let local = format!("127.0.0.1:{port}");
    let cases = [
        // DNS rebinding: a page on a name that resolves to 127.0.0.1.
        ("evil.example", None, "foreign_host"),
        ("localhost.evil.example", None, "foreign_host"),
        ("127.0.0.1.", None, "foreign_host"),
        // A cross-origin page posting to the loopback port.
        (
            local.as_str(),
            Some("https://evil.example"),
            "foreign_origin",
        ),
        (local.as_str(), Some("null"), "foreign_origin"),
    ];
    for (i, (host, origin, reason)) in cases.iter().enumerate() {
        let (status, body) = call(&gw, host, *origin).await;
        assert_eq!(status, 403, "{host} {origin:?}: {body}");
        assert_eq!(body["error"]["code"], -32064, "{host} {origin:?}: {body}");
        let records = gw.audit(i + 1).await;
        assert_eq!(records[i]["decision"], "deny");
        assert_eq!(records[i]["reason"], *reason, "{host} {origin:?}");
        assert_eq!(records[i]["caller"], GATEWAY);
    }
    assert!(gw.upstream.received().is_empty(), "nothing forwarded");
}
