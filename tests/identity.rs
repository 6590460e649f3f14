//! Identity and what crosses the gateway in process: the SVID rotating
//! under a running gateway, identity headers stripped, the verified caller
//! passed on only where configured, trace context, metrics (by decision
//! and method, by determining policy).

mod support;

use std::time::Duration;

use serde_json::{Value, json};

use support::gateway::{AGENT, GATEWAY, Harness, Options};
use support::workload_api::Svid;

const MODERN: &str = "2026-07-28";
const V2025: &str = "2025-11-25";

fn call(tool: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": tool, "arguments": {},
        "_meta": {"io.modelcontextprotocol/protocolVersion": MODERN}}})
}

fn headers(tool: &'static str) -> Vec<(&'static str, &'static str)> {
    vec![
        ("mcp-protocol-version", MODERN),
        ("mcp-method", "tools/call"),
        ("mcp-name", tool),
    ]
}

#[tokio::test]
async fn a_rotated_svid_is_presented_on_the_next_handshake_without_restart() {
    let gw = Harness::start().await;
    let agent = gw.agent(AGENT);
    let first = agent.server_certificate().await;
    assert_eq!(gw.app.identity.svid_generation(), 1);
    let rotated = gw
        .ca
        .leaf_with(GATEWAY, &["localhost"], time::Duration::hours(1));
    gw.workload_api.set(Svid {
        leaf: rotated.clone(),
        bundle: vec![gw.ca.der.to_vec()],
        federated: Vec::new(),
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while gw.app.identity.svid_generation() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rotation was not seen"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let second = agent.server_certificate().await;
    assert_ne!(first, second);
    assert_eq!(second, rotated.cert.to_vec());
    // Calls go on, upstream connections re-made with the new SVID.
    let answer = agent.post("/mcp", &headers("echo"), &call("echo")).await;
    assert_eq!(answer.json()["result"]["content"][0]["text"], "echo");
    assert!(
        gw.metrics()
            .await
            .contains("mcp_gateway_svid_rotations_total 1")
    );
}

/// Invariant 6: a rotation drops no traffic. Callers open a connection per
/// call (a handshake each, and upstream connections re-made after each
/// rotation) while the SVID rotates again and again, each rotation only
/// after calls have passed since the one before; every call is answered.
/// The handshakes that fall between the Workload API's update and the next
/// use of the SVID are the ones at stake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_during_repeated_rotations_all_succeed() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    const ROTATIONS: u64 = 40;
    let gw = Harness::start().await;
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let mut callers = Vec::new();
    for _ in 0..4 {
        let agent = gw.agent(AGENT);
        let (stop, answered) = (Arc::clone(&stop), Arc::clone(&answered));
        callers.push(tokio::spawn(async move {
            let mut failed = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let body = bytes::Bytes::from(call("echo").to_string());
                let req = support::agent::post_request("/mcp", &headers("echo"), body);
                match agent.try_send(req).await {
                    Ok(a) if a.status == 200 && a.json()["result"].is_object() => {
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(a) => failed.push(format!("{} {}", a.status, a.json())),
                    Err(e) => failed.push(format!("{e:#}")),
                }
            }
            failed
        }));
    }
    for n in 0..ROTATIONS {
        let before = answered.load(Ordering::Relaxed);
        gw.workload_api.set(Svid {
            leaf: gw
                .ca
                .leaf_with(GATEWAY, &["localhost"], time::Duration::hours(1)),
            bundle: vec![gw.ca.der.to_vec()],
            federated: Vec::new(),
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while gw.app.identity.svid_generation() < n + 2
            || answered.load(Ordering::Relaxed) < before + 2
        {
            let at = format!(
                "rotation {n}: {} calls answered",
                answered.load(Ordering::Relaxed)
            );
            assert!(tokio::time::Instant::now() < deadline, "{at}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut failed = Vec::new();
    for caller in callers {
        failed.extend(caller.await.unwrap());
    }
    let answered = answered.load(Ordering::Relaxed);
    assert!(
        failed.is_empty(),
        "{} of {} calls failed: {failed:?}",
        failed.len(),
        answered as usize + failed.len()
    );
    assert!(answered >= 2 * ROTATIONS);
}

#[tokio::test]
async fn identity_and_hop_headers_from_the_caller_never_reach_the_upstream() {
    let gw = Harness::start_with(Options {
        upstream_fields: "caller_id_header: x-mcp-caller".into(),
        ..Options::default()
    })
    .await;
    let mut sent = headers("echo");
    sent.extend([
        ("x-forwarded-for", "10.0.0.1"),
        ("x-forwarded-client-cert", "By=spiffe://example.org/admin"),
        ("x-spiffe-id", "spiffe://example.org/ns/demo/sa/admin"),
        ("x-client-cert", "forged"),
        ("x-ssl-client-s-dn", "CN=admin"),
        ("forwarded", "for=10.0.0.1"),
        ("x-real-ip", "10.0.0.1"),
        ("x-envoy-peer-metadata", "forged"),
        ("x-mcp-caller", "spiffe://example.org/ns/demo/sa/admin"),
        ("accept-encoding", "gzip"),
        ("proxy-authorization", "Basic Zm9vOmJhcg=="),
        (
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ),
        ("x-custom", "kept"),
    ]);
    let answer = gw.agent(AGENT).post("/mcp", &sent, &call("echo")).await;
    assert_eq!(answer.status, 200);
    let received = &gw.upstream.received()[0];
    for name in [
        "x-forwarded-for",
        "x-forwarded-client-cert",
        "x-spiffe-id",
        "x-client-cert",
        "x-ssl-client-s-dn",
        "forwarded",
        "x-real-ip",
        "x-envoy-peer-metadata",
        "accept-encoding",
        "proxy-authorization",
    ] {
        assert!(!received.headers.contains_key(name), "{name} was forwarded");
    }
    let callers: Vec<_> = received.headers.get_all("x-mcp-caller").iter().collect();
    assert_eq!(callers, [AGENT], "only the verified caller");
    assert_eq!(received.headers["x-custom"], "kept");
    let trace = received.headers["traceparent"].to_str().unwrap();
    assert!(
        trace.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
        "{trace}"
    );
    assert!(
        !trace.contains("b7ad6b7169203331"),
        "the gateway is a hop: its own span"
    );
    let record = &gw.audit(1).await[0];
    assert_eq!(record["trace_id"], "0af7651916cd43dd8448eb211c80319c");
}

#[tokio::test]
async fn decisions_are_counted_by_decision_and_method() {
    let gw = Harness::start().await;
    let agent = gw.agent(AGENT);
    agent.post("/mcp", &headers("echo"), &call("echo")).await;
    agent
        .post("/mcp", &headers("get_weather"), &call("get_weather"))
        .await;
    agent
        .post(
            "/mcp",
            &headers("delete_repository"),
            &call("delete_repository"),
        )
        .await;
    let metrics = gw.metrics().await;
    for line in [
        "mcp_gateway_decisions_total{decision=\"allow\",method=\"tools/call\"} 2",
        "mcp_gateway_decisions_total{decision=\"deny\",method=\"tools/call\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }
}

/// The exposition line of one `mcp_gateway_policy_decisions_total` series.
fn by_policy(policy_id: &str, effect: &str, count: u64) -> String {
    format!(
        "mcp_gateway_policy_decisions_total{{effect=\"{effect}\",policy_id=\"{policy_id}\"}} {count}"
    )
}

fn rpc(id: u64, method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
}

#[tokio::test]
async fn decisions_are_counted_by_determining_policy_and_list_entries_are_not() {
    let gw = Harness::start().await;
    let agent = gw.agent(AGENT);
    let init = rpc(
        1,
        "initialize",
        json!({"protocolVersion": V2025, "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"}}),
    );
    let opened = agent
        .post("/mcp", &[("mcp-protocol-version", V2025)], &init)
        .await;
    let session = opened.header("mcp-session-id").unwrap().to_owned();
    let headers = [
        ("mcp-protocol-version", V2025),
        ("mcp-session-id", session.as_str()),
    ];
    let tool = |id, name| rpc(id, "tools/call", json!({"name": name, "arguments": {}}));
    let permitted = agent.post("/mcp", &headers, &tool(2, "echo")).await;
    assert_eq!(permitted.json()["result"]["content"][0]["text"], "echo");
    let forbidden = agent
        .post("/mcp", &headers, &tool(3, "delete_repository"))
        .await;
    assert_eq!(forbidden.json()["error"]["code"], -32060);
    // Denied by default: no policy determined it.
    let unpermitted = agent.post("/mcp", &headers, &tool(4, "rm_rf")).await;
    assert_eq!(unpermitted.json()["error"]["code"], -32060);
    // Its three entries are decided by the two tool policies above, and
    // are not counted: only the list request is.
    let list = agent
        .post("/mcp", &headers, &rpc(5, "tools/list", json!({})))
        .await;
    assert_eq!(list.json()["result"]["tools"].as_array().unwrap().len(), 2);

    let metrics = gw.metrics().await;
    for line in [
        by_policy("agent-calls-echo-and-getters", "permit", 1),
        by_policy("nobody-deletes-repos", "forbid", 1),
        by_policy("agent-lifecycle", "permit", 2),
        by_policy("agent-b-lifecycle", "permit", 0),
        by_policy("other", "permit", 0),
        by_policy("other", "forbid", 0),
        by_policy("other", "error", 0),
        "mcp_gateway_decisions_total{decision=\"deny\",method=\"tools/call\"} 2".to_owned(),
    ] {
        assert!(metrics.contains(&line), "{line} missing:\n{metrics}");
    }
    assert!(!metrics.contains("rm_rf"), "{metrics}");
}
