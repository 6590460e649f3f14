//! The request path in process: the real gateway (`app::build`) between an
//! agent and a stub upstream, identities from a test CA through a fake
//! Workload API. Each test proves one behaviour of the pipeline and, for a
//! refusal, that nothing reached the upstream.

mod support;

use serde_json::json;

use support::gateway::{AGENT, AGENT_B, Harness, SERVER, assert_refused};

const V2025: &str = "2025-11-25";

fn call(id: u64, tool: &str) -> serde_json::Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
           "params": {"name": tool, "arguments": {}}})
}

fn initialize(id: u64) -> serde_json::Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "initialize", "params": {
        "protocolVersion": V2025, "capabilities": {},
        "clientInfo": {"name": "pipeline-test", "version": "1"}}})
}

#[tokio::test]
async fn one_session_allows_the_low_risk_call_and_denies_the_sensitive_one() {
    let gw = Harness::start().await;
    let agent = gw.agent(AGENT);
    let opened = agent
        .post("/mcp", &[("mcp-protocol-version", V2025)], &initialize(1))
        .await;
    assert_eq!(opened.status, 200, "{:?}", opened.body);
    let session = opened.header("mcp-session-id").unwrap().to_owned();
    let headers = [
        ("mcp-protocol-version", V2025),
        ("mcp-session-id", &session),
    ];

    let echo = agent.post("/mcp", &headers, &call(2, "echo")).await;
    assert_eq!(echo.status, 200);
    assert_eq!(echo.json()["result"]["content"][0]["text"], "echo");

    let delete = agent
        .post("/mcp", &headers, &call(3, "delete_repository"))
        .await;
    assert_eq!(
        delete.status, 200,
        "a denied request is answered, not failed"
    );
    assert_eq!(delete.error_code(), Some(-32060));
    assert_eq!(delete.json()["id"], 3);

    assert_eq!(gw.upstream.rpc_methods(), ["initialize", "tools/call"]);
    // The agent holds a sealed id; the upstream is sent, and the records
    // name, the upstream's own.
    assert_ne!(session, "stub-session-0");
    let sent = &gw.upstream.received()[1];
    assert_eq!(sent.headers["mcp-session-id"], "stub-session-0");
    assert_eq!(echo.header("mcp-session-id"), Some(session.as_str()));
    let records = gw.audit(3).await;
    let allowed = &records[1];
    assert_record_shape(allowed);
    assert_eq!(allowed["decision"], "allow");
    assert_eq!(allowed["caller"], AGENT);
    assert_eq!(allowed["target"], "echo");
    assert_eq!(allowed["session_id"], "stub-session-0");
    assert_eq!(
        allowed["policy_ids"],
        json!(["agent-calls-echo-and-getters"])
    );
    let denied = &records[2];
    assert_eq!(denied["decision"], "deny");
    assert_eq!(denied["reason"], "forbid");
    assert_eq!(denied["target"], "delete_repository");
    assert_eq!(denied["session_id"], "stub-session-0");
    assert_eq!(denied["policy_ids"], json!(["nobody-deletes-repos"]));
    assert_eq!(denied["policy_version"], allowed["policy_version"]);
}

#[tokio::test]
async fn a_session_opened_by_one_identity_is_not_found_for_another() {
    let gw = Harness::start().await;
    let opened = gw
        .agent(AGENT)
        .post("/mcp", &[("mcp-protocol-version", V2025)], &initialize(1))
        .await;
    let session = opened.header("mcp-session-id").unwrap().to_owned();
    let headers = [
        ("mcp-protocol-version", V2025),
        ("mcp-session-id", &session),
    ];
    let stolen = gw
        .agent(AGENT_B)
        .post("/mcp", &headers, &call(2, "echo"))
        .await;
    assert_refused(&stolen, 404, -32065);
    assert_eq!(gw.upstream.rpc_methods(), ["initialize"]);
    let records = gw.audit(2).await;
    assert_eq!(records[1]["caller"], AGENT_B);
    assert_eq!(records[1]["decision"], "deny");
}

/// Every field of an allowed tools/call's record: the SIEM contract.
fn assert_record_shape(record: &serde_json::Value) {
    let mut keys: Vec<&str> = record
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "caller",
            "correlation_id",
            "decision",
            "method",
            "policy_ids",
            "policy_version",
            "prev",
            "protocol_version",
            "reason",
            "request_id",
            "seq",
            "session_id",
            "span_id",
            "target",
            "target_kind",
            "time",
            "trace_id",
            "upstream",
            "upstream_spiffe_id",
        ]
    );
    assert_eq!(record["request_id"], 2);
    assert_eq!(record["upstream"], "demo");
    assert_eq!(record["upstream_spiffe_id"], SERVER);
    assert_eq!(record["method"], "tools/call");
    assert_eq!(record["target_kind"], "tool");
    assert_eq!(record["reason"], "permit");
    assert_eq!(record["protocol_version"], V2025);
    let hex = |v: &serde_json::Value, n: usize| {
        v.as_str()
            .is_some_and(|s| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit()))
    };
    assert!(
        hex(&record["trace_id"], 32) && hex(&record["span_id"], 16),
        "{record}"
    );
    assert!(hex(&record["correlation_id"], 32), "{record}");
    let time = record["time"].as_str().unwrap();
    assert!(
        time.ends_with('Z') && time.len() == "2026-12-03T23:41:34.123Z".len(),
        "{time}"
    );
    assert!(!record["policy_version"].as_str().unwrap().is_empty());
}
