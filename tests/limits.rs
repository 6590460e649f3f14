//! Fair limits per identity (`limits.per_identity`), in process: the real
//! gateway between two agents and a stub upstream. One identity hammering,
//! or holding requests and streams open, is refused (429, `Retry-After`,
//! -32071 under the request's id, audited, counted) while the other's
//! calls all pass, and nothing refused reaches the stub.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use serde_json::{Value, json};

use support::agent::{Agent, Answer};
use support::gateway::{AGENT, AGENT_B, Harness, Options, assert_refused};
use support::upstream::{self, Handler, Received, Reply};

const MODERN: &str = "2026-07-28";
const V2025: &str = "2025-11-25";
const LIMITED: i64 = -32071;
/// How long the holding stub keeps a `slow` call or a GET stream.
const HOLD: Duration = Duration::from_secs(2);

/// Everything is permitted: only the limits refuse.
const PERMIT_ALL: &str = "@id(\"all\") permit (principal, action, resource);\n";

async fn start(limits: &str, handler: Handler) -> Harness {
    Harness::start_with(Options {
        policies: Some(PERMIT_ALL.into()),
        extra_config: format!("limits: {{per_identity: {limits}}}\n"),
        handler,
        ..Options::default()
    })
    .await
}

/// A 2026-07-28 `tools/call` (stateless: no session to open first).
async fn call(agent: &Agent, id: u64, tool: &str) -> Answer {
    call_at(agent, "/mcp", id, tool).await
}

async fn call_at(agent: &Agent, path: &str, id: u64, tool: &str) -> Answer {
    let body = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {
        "name": tool, "arguments": {},
        "_meta": {"io.modelcontextprotocol/protocolVersion": MODERN}}});
    let headers = [
        ("mcp-protocol-version", MODERN),
        ("mcp-method", "tools/call"),
        ("mcp-name", tool),
    ];
    agent.post(path, &headers, &body).await
}

/// A GET (server) stream, 2025 era.
async fn get_stream(agent: &Agent) -> Answer {
    let req = hyper::Request::get("/mcp")
        .header("host", "localhost")
        .header("accept", "text/event-stream")
        .header("mcp-protocol-version", V2025)
        .body(Full::new(Bytes::new()))
        .unwrap();
    agent.send(req).await
}

/// The stub MCP server, but a `slow` call and every GET stream are held
/// for `HOLD` before they are answered.
fn holding() -> Handler {
    let mcp = upstream::mcp();
    Arc::new(move |req: &Received| {
        if req.method == "GET" {
            let ping = json!({"jsonrpc": "2.0", "method": "notifications/message",
                              "params": {"level": "info", "data": "hi"}});
            return Reply::sse(&[ping]).after(HOLD);
        }
        let slow = req.json()["params"]["name"] == "slow";
        let reply = mcp(req);
        if slow { reply.after(HOLD) } else { reply }
    })
}

fn limited(answer: &Answer, id: u64) {
    assert_refused(answer, 429, LIMITED);
    assert_eq!(answer.json()["id"], id, "under the request's id");
    let retry: u64 = answer
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("a Retry-After in whole seconds");
    assert!(retry >= 1, "{retry}");
}

fn tool_calls(gw: &Harness) -> usize {
    gw.upstream
        .rpc_methods()
        .iter()
        .filter(|m| *m == "tools/call")
        .count()
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn one_identity_hammering_is_limited_while_another_passes_in_the_same_second() {
    // One token per 100 s: no refill while the test runs.
    let gw = start(
        "{default: {requests_per_second: 0.01, burst: 5}}",
        upstream::mcp(),
    )
    .await;
    let (a, b) = (gw.agent(AGENT), gw.agent(AGENT_B));
    let mut refused = 0;
    for id in 1..=20 {
        let answer = call(&a, id, "echo").await;
        if id <= 5 {
            assert_eq!(answer.status, 200, "{:?}", answer.body);
        } else {
            limited(&answer, id);
            // A token is back in 100 s at most.
            let retry: u64 = answer.header("retry-after").unwrap().parse().unwrap();
            assert!(retry <= 100, "{retry}");
            refused += 1;
        }
    }
    for id in 1..=5 {
        let answer = call(&b, id, "echo").await;
        assert_eq!(answer.status, 200, "agent-b: {:?}", answer.body);
        assert!(answer.json()["result"].is_object());
    }
    assert_eq!(tool_calls(&gw), 10, "nothing refused reached the upstream");
    let records = gw.audit(25).await;
    let limited: Vec<&Value> = records
        .iter()
        .filter(|r| r["reason"] == "rate_limited")
        .collect();
    assert_eq!(limited.len(), refused);
    for r in &limited {
        assert_eq!(r["caller"], AGENT);
        assert_eq!(r["decision"], "deny");
        assert_eq!(r["method"], "tools/call");
        assert_eq!(r["target"], "echo");
    }
    let text = gw.metrics().await;
    assert_eq!(
        metric(&text, "mcp_gateway_limited_total{reason=\"rate_limited\"}"),
        refused as f64
    );
}

#[tokio::test]
async fn a_batch_is_one_request_and_a_limited_batch_answers_each_id() {
    let gw = start(
        "{default: {requests_per_second: 0.01, burst: 1}}",
        upstream::mcp(),
    )
    .await;
    let a = gw.agent(AGENT);
    let batch = |first: u64| {
        let call = |id: u64| {
            json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                                    "params": {"name": "echo", "arguments": {}}})
        };
        json!([call(first), call(first + 1), call(first + 2)])
    };
    let headers = [("mcp-protocol-version", "2025-03-26")];
    let passed = a.post("/mcp", &headers, &batch(1)).await;
    assert_eq!(passed.status, 200, "{:?}", passed.body);
    assert_eq!(passed.json().as_array().unwrap().len(), 3);
    let refused = a.post("/mcp", &headers, &batch(4)).await;
    assert_eq!(refused.status, 429);
    assert!(refused.header("retry-after").is_some());
    let answers = refused.json();
    let ids: Vec<&Value> = answers
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["id"])
        .collect();
    assert_eq!(ids, [&json!(4), &json!(5), &json!(6)]);
    assert!(
        answers
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["error"]["code"] == LIMITED)
    );
    assert_eq!(tool_calls(&gw), 3);
}

#[tokio::test]
async fn requests_in_flight_are_capped_per_identity_and_come_back_when_answered() {
    let gw = start("{default: {max_in_flight: 2}}", holding()).await;
    let (a, b) = (gw.agent(AGENT), gw.agent(AGENT_B));
    let (first, second, during) = tokio::join!(call(&a, 1, "slow"), call(&a, 2, "slow"), async {
        gw.upstream.wait_for(2).await;
        let third = call(&a, 3, "echo").await;
        // Another identity is not held back by `a`'s requests.
        let other = call(&b, 4, "echo").await;
        (third, other)
    });
    assert_eq!(first.status, 200);
    assert_eq!(second.status, 200);
    let (third, other) = during;
    limited(&third, 3);
    assert_eq!(other.status, 200, "{:?}", other.body);
    assert_eq!(
        tool_calls(&gw),
        3,
        "the third call never reached the upstream"
    );
    // Both answered: their places are free again.
    assert_eq!(call(&a, 5, "echo").await.status, 200);
    let records = gw.audit(5).await;
    assert!(
        records
            .iter()
            .any(|r| r["reason"] == "concurrency_limited" && r["caller"] == AGENT)
    );
}

#[tokio::test]
async fn get_streams_are_capped_per_identity_apart_from_requests() {
    let gw = start("{default: {max_streams: 1, max_in_flight: 5}}", holding()).await;
    let (a, b) = (gw.agent(AGENT), gw.agent(AGENT_B));
    let (open, during) = tokio::join!(get_stream(&a), async {
        gw.upstream.wait_for(1).await;
        let second = get_stream(&a).await;
        // Requests are not streams: `a` still calls tools.
        let request = call(&a, 1, "echo").await;
        let other = get_stream(&b).await;
        (second, request, other)
    });
    assert_eq!(open.status, 200);
    assert_eq!(open.sse_messages().len(), 1);
    let (second, request, other) = during;
    assert_refused(&second, 429, LIMITED);
    assert!(second.header("retry-after").is_some());
    assert_eq!(request.status, 200, "{:?}", request.body);
    assert_eq!(other.status, 200, "agent-b's stream: {:?}", other.body);
    let gets = gw
        .upstream
        .received()
        .iter()
        .filter(|r| r.method == "GET")
        .count();
    assert_eq!(gets, 2, "a's second stream never reached the upstream");
    // The first stream ended: `a` may open one again.
    assert_eq!(get_stream(&a).await.status, 200);
}

#[tokio::test]
async fn a_stream_whose_client_goes_away_gives_its_place_back() {
    let gw = start("{default: {max_streams: 1}}", holding()).await;
    let a = gw.agent(AGENT);
    let head = format!(
        "GET /mcp HTTP/1.1\r\nhost: localhost\r\naccept: text/event-stream\r\n\
         mcp-protocol-version: {V2025}\r\n\r\n"
    );
    // The client sends its GET and goes away while the stub holds it.
    tokio::select! {
        _ = a.raw(&head, &[], Duration::ZERO) => panic!("the stub held the stream"),
        _ = gw.upstream.wait_for(1) => {}
    }
    // Well before the stub would have answered the first, a new stream
    // of the same identity is admitted.
    let deadline = tokio::time::Instant::now() + HOLD / 2;
    loop {
        let started = tokio::time::Instant::now();
        let again = get_stream(&a).await;
        if again.status == 200 {
            assert!(
                started < deadline,
                "the place came back only when the stub answered"
            );
            break;
        }
        assert_refused(&again, 429, LIMITED);
        assert!(
            tokio::time::Instant::now() < deadline,
            "the place was not given back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_tool_rule_rates_that_tool_only_for_each_caller() {
    let gw = start(
        "{rules: [{tool: echo, upstream: demo, requests_per_second: 0.01, burst: 1}]}",
        upstream::mcp(),
    )
    .await;
    let (a, b) = (gw.agent(AGENT), gw.agent(AGENT_B));
    assert_eq!(call(&a, 1, "echo").await.status, 200);
    let second = call(&a, 2, "echo").await;
    limited(&second, 2);
    // Other tools, and other callers of the same tool, pass.
    assert_eq!(call(&a, 3, "get_weather").await.status, 200);
    assert_eq!(call(&b, 4, "echo").await.status, 200);
    assert_eq!(tool_calls(&gw), 3);
    let records = gw.audit(4).await;
    let refused = records
        .iter()
        .find(|r| r["reason"] == "rate_limited")
        .unwrap();
    assert_eq!(refused["target"], "echo");
    assert_eq!(refused["caller"], AGENT);
    assert_eq!(refused["decision"], "deny");
}

#[tokio::test]
async fn a_tool_rule_applies_to_the_real_upstream_and_tool_on_the_aggregated_endpoint() {
    const JIRA: &str = "spiffe://example.org/ns/tools/sa/jira-mcp";
    let gw = Harness::start_with(Options {
        policies: Some(PERMIT_ALL.into()),
        extra_config: "limits: {per_identity: {rules: [\
            {tool: echo, upstream: demo, requests_per_second: 0.01, burst: 1}]}}\n"
            .into(),
        more_upstreams: vec![("jira", JIRA, upstream::mcp())],
        aggregate: true,
        ..Options::default()
    })
    .await;
    let a = gw.agent(AGENT);
    assert_eq!(call_at(&a, "/mcp/all", 1, "demo__echo").await.status, 200);
    limited(&call_at(&a, "/mcp/all", 2, "demo__echo").await, 2);
    // The same tool name on another upstream is another tool.
    assert_eq!(call_at(&a, "/mcp/all", 3, "jira__echo").await.status, 200);
    // And the call on demo's own path shares the caller's budget for it.
    limited(&call_at(&a, "/mcp/demo", 4, "echo").await, 4);
    assert_eq!(tool_calls(&gw), 1);
}

#[tokio::test]
async fn limits_reload_with_the_config_file_and_a_bad_file_keeps_the_last_good() {
    let gw = Harness::start_with(Options {
        policies: Some(PERMIT_ALL.into()),
        extra_config: "limits: {per_identity: {default: {requests_per_second: 0.01, burst: 1}}}\n"
            .into(),
        config_file: true,
        ..Options::default()
    })
    .await;
    let a = gw.agent(AGENT);
    assert_eq!(call(&a, 1, "echo").await.status, 200);
    limited(&call(&a, 2, "echo").await, 2);
    let path = gw.config_path();
    let text = std::fs::read_to_string(&path).unwrap();
    // A bad file: refused as a whole, the old limits stay.
    std::fs::write(&path, text.replace("burst: 1", "burst: 0")).unwrap();
    wait_for_metric(&gw, "mcp_gateway_config_reload_failing", 1.0).await;
    limited(&call(&a, 3, "echo").await, 3);
    // A good one: a burst of 3 gives `a` two more calls now (its bucket,
    // one call spent, carries over).
    std::fs::write(&path, text.replace("burst: 1", "burst: 3")).unwrap();
    wait_for_metric(&gw, "mcp_gateway_config_reload_failing", 0.0).await;
    assert_eq!(call(&a, 4, "echo").await.status, 200);
    assert_eq!(call(&a, 5, "echo").await.status, 200);
    limited(&call(&a, 6, "echo").await, 6);
    let text = gw.metrics().await;
    assert!(
        metric(
            &text,
            "mcp_gateway_config_reloads_total{result=\"success\"}"
        ) >= 1.0
    );
    assert!(
        metric(
            &text,
            "mcp_gateway_config_reloads_total{result=\"failure\"}"
        ) >= 1.0
    );
    assert_eq!(tool_calls(&gw), 3);
}

/// Polls `/metrics` until `series` has `value` (the watcher reads the
/// file every second).
async fn wait_for_metric(gw: &Harness, series: &str, value: f64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if metric(&gw.metrics().await, series) == value {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series} never became {value}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn initialize(agent: &Agent, path: &str) -> Answer {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": V2025, "capabilities": {},
        "clientInfo": {"name": "limits-test", "version": "1"}}});
    agent
        .post(path, &[("mcp-protocol-version", V2025)], &body)
        .await
}

#[tokio::test]
async fn a_rules_session_cap_counts_across_endpoints_and_a_delete_gives_the_place_back() {
    let gw = Harness::start_with(Options {
        policies: Some(PERMIT_ALL.into()),
        extra_config: format!(
            "limits: {{per_identity: {{rules: [{{spiffe_id: \"{AGENT}\", max_sessions: 2}}]}}}}\n"
        ),
        more_upstreams: vec![(
            "beta",
            "spiffe://example.org/ns/demo/sa/beta",
            upstream::mcp(),
        )],
        aggregate: true,
        ..Options::default()
    })
    .await;
    let (a, b) = (gw.agent(AGENT), gw.agent(AGENT_B));
    let first = initialize(&a, "/mcp/demo").await;
    assert_eq!(first.status, 200, "{:?}", first.body);
    assert_eq!(initialize(&a, "/mcp/all").await.status, 200);
    let seen = gw.upstream.received().len();
    // A third session of the agent, on any endpoint, is refused before it
    // is sent anywhere; agent-b, under no rule, opens as many as it likes.
    let third = initialize(&a, "/mcp/demo").await;
    assert_refused(&third, 429, LIMITED);
    assert_eq!(third.header("retry-after"), Some("1"));
    assert_eq!(
        gw.upstream.received().len(),
        seen,
        "nothing reached the upstream"
    );
    for _ in 0..3 {
        assert_eq!(initialize(&b, "/mcp/demo").await.status, 200);
    }
    let records = gw.audit(1).await;
    assert!(
        records
            .iter()
            .any(|r| r["caller"] == AGENT && r["reason"] == "session_limit"),
        "{records:#?}"
    );
    assert!(
        gw.metrics()
            .await
            .contains(r#"mcp_gateway_limited_total{reason="session_limit"} 1"#)
    );
    // Ending one gives its place back.
    let sealed = first.header("mcp-session-id").unwrap().to_owned();
    let delete = hyper::Request::delete("/mcp/demo")
        .header("host", "localhost")
        .header("mcp-protocol-version", V2025)
        .header("mcp-session-id", sealed)
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(a.send(delete).await.status, 200);
    assert_eq!(initialize(&a, "/mcp/demo").await.status, 200);
}
