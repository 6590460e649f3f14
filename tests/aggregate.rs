//! The aggregated endpoint in process: two stub upstreams under different
//! SPIFFE IDs behind `/mcp/all`, tools named `<upstream>__<tool>`, each
//! call decided as the upstream's own tool and sent to that upstream only.

mod support;

use serde_json::{Value, json};

use support::gateway::{AGENT, Harness, Options, assert_refused};
use support::upstream;

const MODERN: &str = "2026-07-28";
const V2025: &str = "2025-11-25";
const JIRA: &str = "spiffe://example.org/ns/tools/sa/jira-mcp";

const POLICIES: &str = r#"
@id("lifecycle")
permit (principal, action in [Mcp::Action::"initialize", Mcp::Action::"tools/list",
    Mcp::Action::"notifications/initialized", Mcp::Action::"server/discover"], resource);
@id("demo-echo")
permit (principal, action == Mcp::Action::"tools/call", resource == Mcp::Tool::"demo/echo");
@id("jira-getters")
permit (principal, action == Mcp::Action::"tools/call", resource in Mcp::Server::"jira")
when { resource.name like "get_*" };
"#;

async fn start() -> Harness {
    start_with_jira(upstream::mcp()).await
}

/// `/mcp/all` over the demo stub and a `jira` member answering with `jira`.
async fn start_with_jira(jira: upstream::Handler) -> Harness {
    Harness::start_with(Options {
        policies: Some(POLICIES.into()),
        more_upstreams: vec![("jira", JIRA, jira)],
        aggregate: true,
        ..Options::default()
    })
    .await
}

fn modern(method: &'static str, name: &'static str) -> (Value, Vec<(&'static str, &'static str)>) {
    let mut params = json!({"_meta": {"io.modelcontextprotocol/protocolVersion": MODERN}});
    let mut headers = vec![("mcp-protocol-version", MODERN), ("mcp-method", method)];
    if !name.is_empty() {
        params["name"] = json!(name);
        params["arguments"] = json!({});
        headers.push(("mcp-name", name));
    }
    (
        json!({"jsonrpc": "2.0", "id": 9, "method": method, "params": params}),
        headers,
    )
}

#[tokio::test]
async fn the_union_of_tools_is_listed_under_prefixed_names_and_filtered_by_policy() {
    let gw = start().await;
    let (list, headers) = modern("tools/list", "");
    let answer = gw
        .agent(AGENT)
        .post("/mcp/all", &headers, &list)
        .await
        .json();
    let mut names: Vec<&str> = answer["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["demo__echo", "jira__get_weather"]);
}

#[tokio::test]
async fn a_prefixed_call_reaches_only_its_upstream_under_its_own_name() {
    let gw = start().await;
    let (call, headers) = modern("tools/call", "jira__get_weather");
    let answer = gw
        .agent(AGENT)
        .post("/mcp/all", &headers, &call)
        .await
        .json();
    assert_eq!(answer["id"], 9);
    assert_eq!(answer["result"]["content"][0]["text"], "get_weather");
    assert!(
        gw.upstream.received().is_empty(),
        "demo was sent a jira call"
    );
    let received = &gw.others[0].received()[0];
    assert_eq!(received.json()["params"]["name"], "get_weather");
    assert_eq!(received.headers["mcp-name"], "get_weather");
    let record = &gw.audit(1).await[0];
    assert_eq!(record["upstream"], "jira");
    assert_eq!(record["upstream_spiffe_id"], JIRA);
    assert_eq!(record["target"], "get_weather");
    assert_eq!(record["policy_ids"], json!(["jira-getters"]));

    // The same tool on the other upstream is denied: policies see the
    // upstream's own tool, not the prefixed name.
    let (call, headers) = modern("tools/call", "demo__get_weather");
    let denied = gw.agent(AGENT).post("/mcp/all", &headers, &call).await;
    assert_refused(&denied, 200, -32060);
    assert!(gw.upstream.received().is_empty());
}

#[tokio::test]
async fn names_and_methods_the_endpoint_does_not_offer_are_refused_and_forward_nothing() {
    let gw = start().await;
    let agent = gw.agent(AGENT);
    let (call, headers) = modern("tools/call", "nosuch__echo");
    assert_refused(&agent.post("/mcp/all", &headers, &call).await, 200, -32602);
    let (call, headers) = modern("tools/call", "echo");
    assert_refused(&agent.post("/mcp/all", &headers, &call).await, 200, -32602);
    let (templates, headers) = modern("resources/templates/list", "");
    assert_refused(
        &agent.post("/mcp/all", &headers, &templates).await,
        200,
        -32601,
    );
    assert!(gw.upstream.received().is_empty());
    assert!(gw.others[0].received().is_empty());
}

#[tokio::test]
async fn a_2025_session_on_the_aggregate_opens_one_member_session_each_and_is_the_callers() {
    let gw = start().await;
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": V2025, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
    let opened = gw
        .agent(AGENT)
        .post("/mcp/all", &[("mcp-protocol-version", V2025)], &init)
        .await;
    assert_eq!(opened.status, 200, "{:?}", opened.body);
    let session = opened.header("mcp-session-id").unwrap().to_owned();
    assert!(
        !session.starts_with("stub-session"),
        "the gateway issues its own session"
    );
    assert_eq!(gw.upstream.rpc_methods(), ["initialize"]);
    assert_eq!(gw.others[0].rpc_methods(), ["initialize"]);
    let headers = [
        ("mcp-protocol-version", V2025),
        ("mcp-session-id", session.as_str()),
    ];
    let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "demo__echo", "arguments": {}}});
    let answer = gw
        .agent(AGENT)
        .post("/mcp/all", &headers, &call)
        .await
        .json();
    assert_eq!(answer["result"]["content"][0]["text"], "echo");
    let member = &gw.upstream.received()[1];
    assert!(
        member.headers["mcp-session-id"]
            .to_str()
            .unwrap()
            .starts_with("stub-session")
    );
    let stolen = gw
        .agent("spiffe://example.org/ns/demo/sa/agent-b")
        .post("/mcp/all", &headers, &call)
        .await;
    assert_refused(&stolen, 404, -32065);
    assert_eq!(gw.upstream.received().len(), 2);
}

/// jira lists its tools with a result given twice: serde_json alone would
/// read the last one.
fn duplicate_keys() -> upstream::Handler {
    std::sync::Arc::new(|req: &upstream::Received| {
        let message = req.json();
        if message["method"] != "tools/list" {
            return upstream::Reply::json(&upstream::answer(&message).unwrap());
        }
        let id = &message["id"];
        upstream::Reply::raw_json(&format!(
            r#"{{"jsonrpc":"2.0","id":{id},"result":{{"tools":[]}},"result":{{"tools":[{{"name":"get_smuggled","inputSchema":{{"type":"object"}}}}]}}}}"#
        ))
    })
}

#[tokio::test]
async fn a_member_reply_the_strict_parser_refuses_contributes_nothing() {
    let gw = start_with_jira(duplicate_keys()).await;
    let (list, headers) = modern("tools/list", "");
    let answer = gw
        .agent(AGENT)
        .post("/mcp/all", &headers, &list)
        .await
        .json();
    let names: Vec<&str> = answer["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["demo__echo"]);
    assert_eq!(gw.others[0].rpc_methods(), ["tools/list"]);
}

/// jira fails every POST with HTTP 500; its `initialize` failure still
/// issues a session id (which the gateway must end).
fn failing() -> upstream::Handler {
    std::sync::Arc::new(|req: &upstream::Received| {
        let reply = upstream::Reply::empty(500);
        if req.json()["method"] == "initialize" {
            return reply.with_header("mcp-session-id", "jira-orphan");
        }
        reply
    })
}

#[tokio::test]
async fn a_failing_member_is_left_out_audited_and_its_orphan_session_ended() {
    let gw = start_with_jira(failing()).await;
    let agent = gw.agent(AGENT);
    // 2025: the session opens on the member that answered.
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": V2025, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
    let opened = agent
        .post("/mcp/all", &[("mcp-protocol-version", V2025)], &init)
        .await;
    assert_eq!(opened.status, 200, "{:?}", opened.body);
    assert_eq!(opened.json()["result"]["protocolVersion"], V2025);
    let jira = gw.others[0].received();
    assert_eq!(jira.len(), 2, "initialize, then the orphan session ended");
    assert_eq!(jira[1].method, "DELETE");
    assert_eq!(jira[1].headers["mcp-session-id"], "jira-orphan");
    // 2026: discovery answers with what the answering member supports.
    let (discover, headers) = modern("server/discover", "");
    let found = agent.post("/mcp/all", &headers, &discover).await.json();
    assert!(
        found["result"]["supportedVersions"]
            .as_array()
            .is_some_and(|v| v.contains(&json!(MODERN))),
        "{found}"
    );
    let records = gw.audit(6).await;
    let failures: Vec<_> = records
        .iter()
        .filter(|r| r["decision"] == "upstream_error")
        .map(|r| (r["upstream"].as_str(), r["reason"].as_str()))
        .collect();
    assert_eq!(
        failures,
        [
            (Some("jira"), Some("upstream_unavailable")),
            (Some("jira"), Some("upstream_unavailable"))
        ]
    );
}
