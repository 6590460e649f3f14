//! Sealed sessions in process: two gateways built from one config (two
//! replicas behind a balancer) sharing `sessions.keys_file`. A session
//! opened on one is served by the other; its sealed id is refused for
//! another identity, forged, past its end, or after its key is removed,
//! and each refusal leaves the upstream untouched.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use spiffe_mcp_gateway::clock::unix_seconds;
use spiffe_mcp_gateway::proxy::session::keys::SessionKeys;
use spiffe_mcp_gateway::proxy::session::seal::{self, Claims};

use support::agent::Agent;
use support::gateway::{AGENT, AGENT_B, Harness, Options, Replica, assert_refused};

const V2025: &str = "2025-11-25";
const K1: &str = "k1 AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n";
const K2: &str = "k2 ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=\n";

fn call(id: u64, tool: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
           "params": {"name": tool, "arguments": {}}})
}

fn initialize() -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": V2025, "capabilities": {},
        "clientInfo": {"name": "sessions-test", "version": "1"}}})
}

/// A harness whose config names `keys` (written to a file beside it),
/// looked at every 100 ms; and a second replica of it.
async fn two_replicas(keys: &str) -> (Harness, Replica, tempfile::NamedTempFile) {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), keys).unwrap();
    let gw = Harness::start_with(Options {
        extra_config: format!(
            "sessions: {{keys_file: \"{}\", keys_watch_interval_ms: 100}}\n",
            file.path().display()
        ),
        ..Options::default()
    })
    .await;
    let b = gw.replica("b").await;
    (gw, b, file)
}

fn agent_on(gw: &Harness, replica: &Replica, who: &str) -> Agent {
    Agent::new(&gw.ca, &gw.ca.leaf(who), replica.app.listen_addr)
}

async fn open(agent: &Agent) -> String {
    let opened = agent
        .post("/mcp", &[("mcp-protocol-version", V2025)], &initialize())
        .await;
    assert_eq!(opened.status, 200, "{:?}", opened.body);
    opened.header("mcp-session-id").unwrap().to_owned()
}

async fn echo(agent: &Agent, session: &str) -> support::agent::Answer {
    let headers = [("mcp-protocol-version", V2025), ("mcp-session-id", session)];
    agent.post("/mcp", &headers, &call(2, "echo")).await
}

/// Waits until `/metrics` of the replica shows `n` successful key reloads.
async fn reloaded(metrics: impl AsyncFn() -> String, n: u32) {
    let want = format!("mcp_gateway_session_key_reloads_total{{result=\"success\"}} {n}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !metrics().await.contains(&want) {
        assert!(tokio::time::Instant::now() < deadline, "no reload: {want}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_session_opened_on_one_replica_is_served_by_another() {
    let (gw, b, _keys) = two_replicas(K1).await;
    let session = open(&gw.agent(AGENT)).await;
    let on_b = echo(&agent_on(&gw, &b, AGENT), &session).await;
    assert_eq!(on_b.status, 200, "{:?}", on_b.body);
    assert_eq!(on_b.json()["result"]["content"][0]["text"], "echo");
    assert_eq!(on_b.header("mcp-session-id"), Some(session.as_str()));
    // B sent the upstream its own session id, and records that id.
    let received = gw.upstream.received();
    assert_eq!(received.len(), 2);
    assert_eq!(received[1].headers["mcp-session-id"], "stub-session-0");
    let records = b.audit(1).await;
    assert_eq!(records[0]["session_id"], "stub-session-0");
    assert_eq!(records[0]["decision"], "allow");
}

#[tokio::test]
async fn another_identity_a_forged_id_and_one_past_its_end_are_not_found_on_any_replica() {
    let (gw, b, keys) = two_replicas(K1).await;
    let session = open(&gw.agent(AGENT)).await;
    let mut forged = session.clone().into_bytes();
    let at = forged.len() / 2;
    forged[at] = if forged[at] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    let keys = SessionKeys::load(Some(keys.path())).unwrap();
    let now = unix_seconds();
    let past_its_end = Claims {
        owner: AGENT.to_owned(),
        endpoint: "u:demo".to_owned(),
        handle: "stub-session-0".to_owned(),
        version: None,
        issued: now - 100,
        expires: now - 1,
        value: (),
    };
    let (ended, _) = seal::seal(&keys, &past_its_end).unwrap();
    let cases = [
        (AGENT_B, session.as_str()),
        (AGENT, forged.as_str()),
        (AGENT, ended.as_str()),
        (AGENT, "x"),
        (AGENT, "stub-session-0"),
        (AGENT, &"A".repeat(5000)),
        (AGENT, "!!not base64!!"),
    ];
    for (who, id) in cases {
        let answer = echo(&agent_on(&gw, &b, who), id).await;
        assert_refused(&answer, 404, -32065);
    }
    assert_eq!(gw.upstream.received().len(), 1, "only the initialize");
    let reasons: Vec<Value> = b
        .audit(cases.len())
        .await
        .iter()
        .map(|r| r["reason"].clone())
        .collect();
    assert_eq!(reasons[0], "session_not_owned");
    assert_eq!(reasons[2], "session_expired");
    assert!(
        reasons[3..].iter().all(|r| r == "session_unknown"),
        "{reasons:?}"
    );
}

#[tokio::test]
async fn a_key_rotation_keeps_open_sessions_and_removing_a_key_ends_its_sessions() {
    let (gw, b, keys) = two_replicas(K1).await;
    let agent_a = gw.agent(AGENT);
    let agent_b = agent_on(&gw, &b, AGENT);
    let old = open(&agent_a).await;
    // The new key is appended: it seals from now on, and the old one opens.
    std::fs::write(keys.path(), format!("{K1}{K2}")).unwrap();
    reloaded(async || gw.metrics().await, 1).await;
    reloaded(async || b.metrics().await, 1).await;
    let new = open(&agent_a).await;
    assert_eq!(echo(&agent_b, &old).await.status, 200, "sealed with k1");
    assert_eq!(echo(&agent_b, &new).await.status, 200, "sealed with k2");
    // Once every replica holds k2, k1 is removed: its sessions end.
    std::fs::write(keys.path(), K2).unwrap();
    reloaded(async || gw.metrics().await, 2).await;
    reloaded(async || b.metrics().await, 2).await;
    assert_refused(&echo(&agent_b, &old).await, 404, -32065);
    assert_refused(&echo(&agent_a, &old).await, 404, -32065);
    assert_eq!(echo(&agent_b, &new).await.status, 200);
    assert_eq!(echo(&agent_a, &new).await.status, 200);
}

#[tokio::test]
async fn a_bad_key_file_on_reload_keeps_the_keys_in_use() {
    let (gw, b, keys) = two_replicas(K1).await;
    let session = open(&gw.agent(AGENT)).await;
    std::fs::write(keys.path(), "k1 not-a-key\n").unwrap();
    let failed = "mcp_gateway_session_key_reloads_total{result=\"failure\"} 1";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !b.metrics().await.contains(failed) {
        assert!(tokio::time::Instant::now() < deadline, "no failed reload");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(echo(&agent_on(&gw, &b, AGENT), &session).await.status, 200);
}

#[tokio::test]
async fn without_a_keys_file_a_session_is_this_replicas_alone() {
    let gw = Harness::start().await;
    let b = gw.replica("b").await;
    let session = open(&gw.agent(AGENT)).await;
    assert_eq!(echo(&gw.agent(AGENT), &session).await.status, 200);
    assert_refused(
        &echo(&agent_on(&gw, &b, AGENT), &session).await,
        404,
        -32065,
    );
}

#[tokio::test]
async fn a_missing_or_malformed_key_file_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad");
    std::fs::write(&bad, "k1 AAAA\n").unwrap();
    let missing = dir.path().join("missing");
    for (path, want) in [
        (&bad, "bad:1: the key is 3 bytes"),
        (&missing, "cannot be read"),
    ] {
        let started = Harness::try_start_with(Options {
            extra_config: format!("sessions: {{keys_file: \"{}\"}}\n", path.display()),
            ..Options::default()
        })
        .await;
        let err = format!("{:#}", started.err().expect("refused"));
        assert!(
            err.contains("sessions.keys_file") && err.contains(want),
            "{err}"
        );
    }
}
