//! Traces in process: the real gateway (`app::build`) with `traces:` on,
//! pointed at an OTLP receiver that accepts connections and never answers.
//! Requests are served as fast and as correctly as without traces, the
//! sampling decision reaches the upstream, and the spans that cannot be
//! exported are counted, never waited for.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::net::TcpListener;

use support::gateway::{AGENT, Harness, Options};

/// A "receiver" that takes connections and says nothing: every export
/// hangs until its timeout.
async fn silent_receiver() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    (addr, task)
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{series} not in:\n{text}"))
}

#[tokio::test]
async fn a_receiver_that_never_answers_neither_fails_nor_slows_requests() {
    let (receiver, _task) = silent_receiver().await;
    let gw = Harness::start_with(Options {
        extra_config: format!(
            "traces: {{otlp_endpoint: 'http://{receiver}', queue_size: 1, batch_size: 1, \
             export_timeout_seconds: 30}}\n"
        ),
        ..Options::default()
    })
    .await;
    let agent = gw.agent(AGENT);
    let headers = [("mcp-protocol-version", "2025-11-25")];
    let started = Instant::now();
    for id in 0..6 {
        let call = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                          "params": {"name": "echo", "arguments": {}}});
        let answer = agent.post("/mcp", &headers, &call).await;
        assert_eq!(answer.status, 200, "{:?}", answer.body);
        assert_eq!(answer.json()["result"]["content"][0]["text"], "echo");
    }
    // The first export hangs for 30 s; six requests took nowhere near it.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    // Twelve spans (a request and an upstream span each): one is being
    // exported, one queued, the rest dropped on the request path.
    let text = gw.metrics().await;
    let dropped = metric(
        &text,
        r#"mcp_gateway_trace_spans_dropped_total{reason="queue_full"}"#,
    );
    assert!(dropped >= 9.0, "dropped {dropped}");
    assert_eq!(metric(&text, "mcp_gateway_trace_spans_exported_total"), 0.0);
    // The upstream saw sampled traces (the gateway started them, ratio 1).
    for received in gw.upstream.received() {
        let tp = received.headers["traceparent"].to_str().unwrap().to_owned();
        assert!(tp.starts_with("00-") && tp.ends_with("-01"), "{tp}");
    }
}
