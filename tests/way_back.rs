//! The way back in process: list results filtered to what the caller may
//! use (JSON and SSE, paged), server-to-client requests decided (on an SSE
//! stream and inside a 2026-07-28 `InputRequiredResult`), batches split.

mod support;

use std::sync::Arc;

use serde_json::{Value, json};

use support::gateway::{AGENT, AGENT_B, Harness, Options, SERVER};
use support::upstream::{self, Received, Reply, tool};

const V2025: &str = "2025-11-25";
const MODERN: &str = "2026-07-28";

fn request(id: u64, method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
}

fn modern(
    id: u64,
    method: &'static str,
    name: &'static str,
) -> (Value, [(&'static str, &'static str); 3]) {
    let mut params = json!({"_meta": {"io.modelcontextprotocol/protocolVersion": MODERN}});
    if !name.is_empty() {
        params["name"] = json!(name);
        params["arguments"] = json!({});
    }
    let headers = [
        ("mcp-protocol-version", MODERN),
        ("mcp-method", method),
        ("mcp-name", name),
    ];
    (request(id, method, params), headers)
}

fn names(list: &Value) -> Vec<&str> {
    list["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn a_json_tool_list_shows_each_caller_only_what_it_may_call() {
    let gw = Harness::start().await;
    let (list, headers) = modern(1, "tools/list", "");
    let headers = &headers[..2];
    let agent = gw.agent(AGENT).post("/mcp", headers, &list).await;
    assert_eq!(names(&agent.json()), ["echo", "get_weather"]);
    let agent_b = gw.agent(AGENT_B).post("/mcp", headers, &list).await;
    assert_eq!(names(&agent_b.json()), Vec::<&str>::new());
    assert_eq!(gw.upstream.rpc_methods(), ["tools/list", "tools/list"]);
    let records = gw.audit(4).await;
    let filtered: Vec<&Value> = records
        .iter()
        .filter(|r| r["reason"] == "list_filtered")
        .collect();
    assert!(!filtered.is_empty(), "{records:#?}");
    assert!(
        filtered.iter().all(|r| r["method"] == "tools/list"),
        "{filtered:#?}"
    );
}

/// Pages of two tools over SSE, the cursor the index of the next.
fn paged_sse() -> upstream::Handler {
    Arc::new(|req: &Received| {
        let message = req.json();
        let all = [
            "delete_repository",
            "echo",
            "get_weather",
            "get_secrets_of_others",
        ];
        let start: usize = message["params"]["cursor"]
            .as_str()
            .map_or(0, |c| c.parse().unwrap());
        let page: Vec<Value> = all.iter().skip(start).take(2).map(|n| tool(n)).collect();
        let mut result = json!({"tools": page});
        if start + 2 < all.len() {
            result["nextCursor"] = json!((start + 2).to_string());
        }
        Reply::sse(&[json!({"jsonrpc": "2.0", "id": message["id"], "result": result})])
    })
}

#[tokio::test]
async fn an_sse_tool_list_is_filtered_page_by_page_and_keeps_its_cursor() {
    let gw = Harness::start_with(Options {
        handler: paged_sse(),
        ..Options::default()
    })
    .await;
    let agent = gw.agent(AGENT);
    let (first, headers) = modern(1, "tools/list", "");
    let page1 = agent.post("/mcp", &headers[..2], &first).await;
    assert_eq!(page1.header("content-type"), Some("text/event-stream"));
    let page1 = &page1.sse_messages()[0];
    assert_eq!(names(page1), ["echo"]);
    assert_eq!(page1["result"]["nextCursor"], "2");
    let mut second = first.clone();
    second["params"]["cursor"] = json!("2");
    let page2 = agent
        .post("/mcp", &headers[..2], &second)
        .await
        .sse_messages();
    // get_secrets_of_others matches `get_*`: the demo policy permits it.
    assert_eq!(names(&page2[0]), ["get_weather", "get_secrets_of_others"]);
    assert!(page2[0]["result"].get("nextCursor").is_none());
}

/// Answers a tools/call on an SSE stream that first asks the agent two
/// things: `elicitation/create` (the demo policy permits it) and
/// `roots/list` (no policy permits it); answers and refusals it receives
/// are 202.
fn asking_server() -> upstream::Handler {
    Arc::new(|req: &Received| {
        let message = req.json();
        if message.get("method").is_none() || message.get("id").is_none() {
            return Reply::empty(202);
        }
        if message["method"] == "initialize" {
            let answer = upstream::answer(&message).unwrap();
            return Reply::json(&answer).with_header("mcp-session-id", "s1");
        }
        Reply::sse(&[
            request(
                100,
                "elicitation/create",
                json!({"message": "sure?", "requestedSchema": {"type": "object"}}),
            ),
            request(101, "roots/list", json!({})),
            json!({"jsonrpc": "2.0", "id": message["id"], "result": {"content": []}}),
        ])
    })
}

#[tokio::test]
async fn server_requests_on_a_stream_are_decided_and_a_denied_one_is_answered_upstream() {
    let gw = Harness::start_with(Options {
        handler: asking_server(),
        ..Options::default()
    })
    .await;
    let agent = gw.agent(AGENT);
    let init = request(
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
    let call = request(
        2,
        "tools/call",
        json!({"name": "ask_user", "arguments": {}}),
    );
    let seen = agent.post("/mcp", &headers, &call).await.sse_messages();
    let methods: Vec<&str> = seen
        .iter()
        .map(|m| m["method"].as_str().unwrap_or("result"))
        .collect();
    assert_eq!(methods, ["elicitation/create", "result"]);

    // The refusal of roots/list reached the upstream, in the session.
    let received = gw.upstream.wait_for(3).await;
    let refusal = received[2].json();
    assert_eq!(refusal["id"], 101);
    assert_eq!(refusal["error"]["code"], -32060);
    // The upstream's own session id, as on the call it answered; never
    // the caller's sealed one.
    let upstreams_id = &received[1].headers["mcp-session-id"];
    assert_eq!(&received[2].headers["mcp-session-id"], upstreams_id);
    assert_ne!(upstreams_id, session.as_str());

    let records = gw.audit(4).await;
    let way_back: Vec<&Value> = records.iter().filter(|r| r["caller"] == SERVER).collect();
    assert_eq!(way_back.len(), 2, "{records:#?}");
    assert_eq!(way_back[0]["method"], "elicitation/create");
    assert_eq!(way_back[0]["decision"], "allow");
    assert_eq!(way_back[0]["target"], AGENT);
    assert_eq!(way_back[1]["method"], "roots/list");
    assert_eq!(way_back[1]["decision"], "deny");

    // The permitted server request counts under its policy, beside the
    // call's; the denied one (no policy permits it) under none.
    let metrics = gw.metrics().await;
    for line in [
        r#"mcp_gateway_policy_decisions_total{effect="permit",policy_id="mcp-server-may-elicit-from-agent"} 1"#,
        r#"mcp_gateway_policy_decisions_total{effect="permit",policy_id="agent-calls-echo-and-getters"} 1"#,
        r#"mcp_gateway_policy_decisions_total{effect="forbid",policy_id="other"} 0"#,
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }
}

/// A 2026-07-28 server: `ask_roots` needs the agent's roots, `confirm` an
/// elicitation, both as an `InputRequiredResult` whose `resultType` is
/// written as `result_type` (a JSON string's text, escapes and all).
fn input_required_as(result_type: &'static str) -> upstream::Handler {
    Arc::new(move |req: &Received| {
        let message = req.json();
        let wants = match message["params"]["name"].as_str() {
            Some("ask_roots") => "roots/list",
            _ => "elicitation/create",
        };
        let id = &message["id"];
        Reply::raw_json(&format!(
            r#"{{"jsonrpc":"2.0","id":{id},"result":{{"resultType":"{result_type}","inputRequests":{{"r1":{{"method":"{wants}","params":{{}}}}}}}}}}"#
        ))
    })
}

#[tokio::test]
async fn an_input_required_result_is_passed_or_refused_by_the_requests_it_embeds() {
    // Plain, and spelt with JSON escapes (which a byte search would miss).
    for spelling in [
        "input_required",
        "input\\u005frequired",
        "\\u0069nput_required",
    ] {
        let gw = Harness::start_with(Options {
            handler: input_required_as(spelling),
            ..Options::default()
        })
        .await;
        let agent = gw.agent(AGENT);
        let (confirm, headers) = modern(1, "tools/call", "confirm");
        let passed = agent.post("/mcp", &headers, &confirm).await.json();
        assert_eq!(passed["result"]["resultType"], "input_required");
        let (roots, headers) = modern(2, "tools/call", "ask_roots");
        let refused = agent.post("/mcp", &headers, &roots).await.json();
        assert_eq!(refused["id"], 2);
        assert_eq!(refused["error"]["code"], -32060, "{spelling}: {refused}");
        assert!(refused.get("result").is_none());
    }
}

#[tokio::test]
async fn a_2025_03_26_batch_forwards_only_its_permitted_elements_as_sent() {
    let gw = Harness::start().await;
    let echo =
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{}}}"#;
    let delete = r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"delete_repository","arguments":{}}}"#;
    let ping = r#"{"jsonrpc":"2.0","id":3,"method":"ping"}"#;
    let body = format!("[{echo}, {delete},{ping}]");
    let answer = gw
        .agent(AGENT)
        .post_bytes(
            "/mcp",
            &[("mcp-protocol-version", "2025-03-26")],
            body.into(),
        )
        .await;
    assert_eq!(answer.status, 200);
    let received = gw.upstream.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].body, format!("[{echo},{ping}]").as_bytes());
    let mut answers = answer.json().as_array().unwrap().clone();
    answers.sort_by_key(|a| a["id"].as_i64());
    assert_eq!(answers.len(), 3);
    assert_eq!(answers[0]["result"]["content"][0]["text"], "echo");
    assert_eq!(answers[1]["error"]["code"], -32060);
    assert_eq!(answers[2]["result"], json!({}));
}
