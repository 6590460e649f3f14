//! Every refusal class of the README's error table, in process: the HTTP
//! status, the JSON-RPC code, the audit record, and that the stub upstream
//! received nothing.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use serde_json::{Value, json};

use support::gateway::{AGENT, AGENT_B, Harness, Options, admin_get, assert_refused};
use support::upstream::{self, Reply};

const V2025: &str = "2025-11-25";
const MODERN: &str = "2026-07-28";

/// A 2026-07-28 tools/call of `tool`.
fn modern_call(tool: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {
        "name": tool, "arguments": {},
        "_meta": {"io.modelcontextprotocol/protocolVersion": MODERN}}})
}

fn modern_headers(method: &'static str, name: &'static str) -> Vec<(&'static str, &'static str)> {
    vec![
        ("mcp-protocol-version", MODERN),
        ("mcp-method", method),
        ("mcp-name", name),
    ]
}

struct Case {
    name: &'static str,
    method: &'static str,
    path: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    body: Vec<u8>,
    status: u16,
    code: i64,
    reason: &'static str,
}

fn case(
    name: &'static str,
    body: impl Into<Vec<u8>>,
    status: u16,
    code: i64,
    reason: &'static str,
) -> Case {
    Case {
        name,
        method: "POST",
        path: "/mcp",
        headers: vec![("mcp-protocol-version", V2025)],
        body: body.into(),
        status,
        code,
        reason,
    }
}

fn cases() -> Vec<Case> {
    let ping = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
    let deep = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"echo","arguments":{{"a":{}{}}}}}}}"#,
        "[".repeat(70),
        "]".repeat(70)
    );
    vec![
        case(
            "duplicate key",
            r#"{"jsonrpc":"2.0","id":1,"method":"ping","id":2}"#,
            400,
            -32700,
            "parse_error",
        ),
        case(
            "invalid UTF-8",
            b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"p\xffing\"}".to_vec(),
            400,
            -32700,
            "parse_error",
        ),
        case("nesting past 64", deep, 400, -32700, "parse_error"),
        case(
            "trailing data",
            format!("{ping} {{}}"),
            400,
            -32700,
            "parse_error",
        ),
        case(
            "jsonrpc 1.0",
            r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#,
            400,
            -32600,
            "parse_error",
        ),
        case(
            "batch in 2025-11-25",
            format!("[{ping}]"),
            400,
            -32600,
            "batch_not_allowed",
        ),
        case(
            "body over the limit",
            vec![b' '; 1_048_577],
            413,
            -32063,
            "body_too_large",
        ),
        Case {
            headers: vec![
                ("mcp-protocol-version", V2025),
                ("content-type", "text/plain"),
            ],
            ..case("content type", ping, 415, -32064, "content_type")
        },
        Case {
            headers: vec![
                ("mcp-protocol-version", V2025),
                ("content-encoding", "gzip"),
            ],
            ..case("content encoding", ping, 415, -32064, "content_encoding")
        },
        Case {
            path: "/other",
            ..case("another path", ping, 404, -32064, "not_found")
        },
        Case {
            method: "PUT",
            ..case("PUT", ping, 405, -32064, "method_not_allowed")
        },
        Case {
            method: "GET",
            headers: vec![("mcp-protocol-version", MODERN)],
            ..case("GET in 2026-07-28", "", 405, -32064, "method_not_allowed")
        },
        Case {
            headers: vec![
                ("mcp-protocol-version", V2025),
                ("mcp-session-id", "no-such-session"),
            ],
            ..case("unknown session", ping, 404, -32065, "session_unknown")
        },
        Case {
            headers: vec![("mcp-protocol-version", "1999-01-01")],
            ..case(
                "unsupported version",
                ping,
                400,
                -32022,
                "unsupported_protocol_version",
            )
        },
        Case {
            headers: modern_headers("tools/list", "echo"),
            ..case(
                "Mcp-Method disagrees",
                modern_call("echo").to_string(),
                400,
                -32020,
                "header_mismatch",
            )
        },
        Case {
            headers: modern_headers("tools/call", "get_weather"),
            ..case(
                "Mcp-Name disagrees",
                modern_call("echo").to_string(),
                400,
                -32020,
                "header_mismatch",
            )
        },
        Case {
            headers: vec![
                ("mcp-protocol-version", V2025),
                ("mcp-session-id", "a"),
                ("mcp-session-id", "b"),
            ],
            ..case("two session headers", ping, 400, -32064, "duplicate_header")
        },
        case(
            "a notification no policy permits",
            r#"{"jsonrpc":"2.0","method":"notifications/roots/list_changed"}"#,
            403,
            -32060,
            "default_deny",
        ),
    ]
}

#[tokio::test]
async fn each_refusal_has_its_status_code_and_audit_reason_and_forwards_nothing() {
    let gw = Harness::start().await;
    let agent = gw.agent(AGENT);
    let cases = cases();
    for (i, c) in cases.iter().enumerate() {
        let mut req = hyper::Request::builder()
            .method(c.method)
            .uri(c.path)
            .header("host", "localhost")
            .header("accept", "application/json, text/event-stream");
        if !c.headers.iter().any(|(n, _)| *n == "content-type") {
            req = req.header("content-type", "application/json");
        }
        for (name, value) in &c.headers {
            req = req.header(*name, *value);
        }
        let answer = agent
            .send(req.body(Full::new(Bytes::from(c.body.clone()))).unwrap())
            .await;
        assert_eq!(answer.status, c.status, "{}: {:?}", c.name, answer.body);
        assert_eq!(
            answer.error_code(),
            Some(c.code),
            "{}: {:?}",
            c.name,
            answer.body
        );
        let records = gw.audit(i + 1).await;
        let record = &records[i];
        assert_eq!(record["decision"], "deny", "{}: {record}", c.name);
        assert_eq!(record["reason"], c.reason, "{}: {record}", c.name);
        assert_eq!(record["caller"], AGENT, "{}", c.name);
        assert!(
            record["correlation_id"]
                .as_str()
                .is_some_and(|id| !id.is_empty())
        );
        assert!(gw.upstream.received().is_empty(), "{}: forwarded", c.name);
    }
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("mcp_gateway_refused_requests_total{reason=\"parse_error\"} 5"),
        "{metrics}"
    );
}

/// A permissive set for the tests about what happens after a decision.
const PERMIT_ALL: &str = "@id(\"all\") permit (principal, action, resource);";

fn permissive() -> Options {
    Options {
        policies: Some(PERMIT_ALL.into()),
        ..Options::default()
    }
}

#[tokio::test]
async fn an_upstream_that_cannot_be_reached_answers_32061_under_the_request_id() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://{}/mcp", closed.local_addr().unwrap());
    drop(closed);
    let gw = Harness::start_with(Options {
        upstream_url: Some(url),
        ..permissive()
    })
    .await;
    let answer = gw
        .agent(AGENT)
        .post(
            "/mcp",
            &modern_headers("tools/call", "echo"),
            &modern_call("echo"),
        )
        .await;
    assert_refused(&answer, 200, -32061);
    assert_eq!(answer.json()["id"], 7);
    let records = gw.audit(2).await;
    assert_eq!(records[0]["decision"], "allow");
    assert_eq!(records[1]["reason"], "upstream_unavailable");
}

#[tokio::test]
async fn an_upstream_presenting_another_spiffe_id_is_sent_nothing() {
    let gw = Harness::start_with(Options {
        upstream_presents: Some("spiffe://example.org/ns/demo/sa/impostor"),
        ..permissive()
    })
    .await;
    let answer = gw
        .agent(AGENT)
        .post(
            "/mcp",
            &modern_headers("tools/call", "echo"),
            &modern_call("echo"),
        )
        .await;
    assert_refused(&answer, 200, -32062);
    assert!(gw.upstream.received().is_empty());
    let records = gw.audit(2).await;
    assert_eq!(records[1]["reason"], "upstream_identity");
}

#[tokio::test]
async fn an_upstream_that_does_not_answer_in_time_is_32067() {
    let slow: upstream::Handler = std::sync::Arc::new(|req: &upstream::Received| {
        let answer = upstream::answer(&req.json()).unwrap();
        Reply::json(&answer).after(Duration::from_secs(5))
    });
    let gw = Harness::start_with(Options {
        handler: slow,
        upstream_fields: "connect_timeout_seconds: 1, request_timeout_seconds: 1".into(),
        ..permissive()
    })
    .await;
    let answer = gw
        .agent(AGENT)
        .post(
            "/mcp",
            &modern_headers("tools/call", "echo"),
            &modern_call("echo"),
        )
        .await;
    assert_refused(&answer, 200, -32067);
    assert_eq!(answer.json()["id"], 7);
    let records = gw.audit(2).await;
    assert_eq!(records[1]["reason"], "upstream_timeout");
}

#[tokio::test]
async fn while_audit_writes_fail_calls_are_refused_with_32068_and_readyz_is_503() {
    let gw = Harness::start_with(Options {
        audit_path: Some("/dev/full".into()),
        ..permissive()
    })
    .await;
    let agent = gw.agent(AGENT);
    // The first record fails to write; the gateway then refuses and says so.
    let _ = agent
        .post(
            "/mcp",
            &modern_headers("tools/call", "echo"),
            &modern_call("echo"),
        )
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while admin_get(gw.app.admin_addr, "/readyz").await.0 != 503 {
        assert!(tokio::time::Instant::now() < deadline, "/readyz stayed 200");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let before = gw.upstream.received().len();
    let answer = agent
        .post(
            "/mcp",
            &modern_headers("tools/call", "echo"),
            &modern_call("echo"),
        )
        .await;
    assert_refused(&answer, 503, -32068);
    assert_eq!(
        gw.upstream.received().len(),
        before,
        "forwarded while auditing fails"
    );
}

#[tokio::test]
async fn session_caps_refuse_initialize_before_the_upstream_sees_it() {
    let gw = Harness::start_with(Options {
        extra_config: "limits: {max_sessions: 2, max_sessions_per_identity: 1}\n".into(),
        ..permissive()
    })
    .await;
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": V2025, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
    let headers = [("mcp-protocol-version", V2025)];
    assert_eq!(
        gw.agent(AGENT).post("/mcp", &headers, &init).await.status,
        200
    );
    let again = gw.agent(AGENT).post("/mcp", &headers, &init).await;
    assert_refused(&again, 429, -32069);
    assert_eq!(
        gw.agent(AGENT_B).post("/mcp", &headers, &init).await.status,
        200
    );
    let third = gw
        .agent("spiffe://example.org/ns/demo/sa/agent-c")
        .post("/mcp", &headers, &init)
        .await;
    assert_refused(&third, 503, -32069);
    assert_eq!(gw.upstream.rpc_methods(), ["initialize", "initialize"]);
    let records = gw.audit(4).await;
    let reasons: Vec<&str> = records
        .iter()
        .map(|r| r["reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        reasons,
        [
            "permit",
            "session_identity_limit",
            "permit",
            "session_table_full"
        ]
    );
}

/// A raw request head for `/mcp`, 2025-11-25, with `extra` header lines.
fn head(extra: &str) -> String {
    format!(
        "POST /mcp HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Accept: application/json, text/event-stream\r\nMCP-Protocol-Version: 2025-11-25\r\n\
         Connection: close\r\n{extra}\r\n"
    )
}

#[tokio::test]
async fn a_transfer_coding_other_than_chunked_is_501_and_a_slow_body_408() {
    let gw = Harness::start_with(Options {
        extra_config: "connections: {body_read_timeout_seconds: 1}\n".into(),
        ..Options::default()
    })
    .await;
    let agent = gw.agent(AGENT);
    let ping = br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
    let coded = head("Transfer-Encoding: gzip, chunked\r\n");
    let (status, code) = agent.raw(&coded, &[b"0\r\n\r\n"], Duration::ZERO).await;
    assert_eq!((status, code), (501, Some(-32064)));
    // Half the body, then nothing: refused at the body timeout.
    let slow = head(&format!("Content-Length: {}\r\n", ping.len()));
    let (status, code) = agent.raw(&slow, &[&ping[..10]], Duration::ZERO).await;
    assert_eq!((status, code), (408, Some(-32064)));
    let records = gw.audit(2).await;
    let reasons: Vec<&str> = records
        .iter()
        .map(|r| r["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons, ["transfer_encoding", "body_read_timeout"]);
    assert!(gw.upstream.received().is_empty());
}

/// A JWKS with one P-256 key the test never signs with.
fn jwks() -> String {
    use base64::Engine;
    let key = rcgen::KeyPair::generate().unwrap();
    let point = key.public_key_raw();
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256", "use": "sig",
        "x": b64(&point[1..33]), "y": b64(&point[33..65])}]})
    .to_string()
}

#[tokio::test]
async fn a_missing_or_bad_user_token_is_401_and_32066_when_required() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, jwks()).unwrap();
    let gw = Harness::start_with(Options {
        extra_config: format!(
            "user_auth: {{jwks_file: \"{}\", issuer: \"https://idp.test\", audience: gw, required: true}}\n",
            path.display()
        ),
        ..Options::default()
    })
    .await;
    let agent = gw.agent(AGENT);
    let call = modern_call("echo");
    let missing = agent
        .post("/mcp", &modern_headers("tools/call", "echo"), &call)
        .await;
    assert_refused(&missing, 401, -32066);
    let mut forged = modern_headers("tools/call", "echo");
    forged.push(("authorization", "Bearer e30.e30.c2ln"));
    assert_refused(&agent.post("/mcp", &forged, &call).await, 401, -32066);
    let records = gw.audit(2).await;
    assert!(
        records
            .iter()
            .all(|r| r["reason"] == "user_token" && r["decision"] == "deny")
    );
    assert!(gw.upstream.received().is_empty());
}
