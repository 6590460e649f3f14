//! Policy decision cost on the request path (criterion).
//!
//! Run: `cargo bench --bench decision`. Measures one decision over the
//! shipped demo policies for a 189-byte tools/call, allowed and denied,
//! with and without the gateway's strict parse of the message, and one decision among
//! 1,000 per-principal policies (the index keeps it close to the small case).

use std::hint::black_box;
use std::path::{Path, PathBuf};

use criterion::{Criterion, criterion_group, criterion_main};
use spiffe_mcp_gateway::mcp::{self, Body, Message};
use spiffe_mcp_gateway::policy::{PolicyEngine, PolicyInput, Target};

const AGENT: &str = "spiffe://example.org/ns/demo/sa/agent";
const SERVER_ID: &str = "spiffe://example.org/ns/demo/sa/mcp-server";

/// 189 bytes, the size used in the design's performance budget.
const ALLOWED: &str = r#"{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"get_weather","arguments":{"city":"Berlin-Mitte","units":"metric","days":3,"hourly":false},"_meta":{"progressToken":"p-42"}}}"#;
const DENIED: &str = r#"{"jsonrpc":"2.0","id":43,"method":"tools/call","params":{"name":"delete_repository","arguments":{"owner":"acme","repo":"support-bot","confirm":true},"_meta":{"t":"p-43"}}}"#;

/// The gateway's own strict parse of one message.
fn parse(body: &str) -> Message<'_> {
    match mcp::parse_body(body.as_bytes()).expect("bench message parses") {
        Body::Single(m) => m,
        Body::Batch(_) => panic!("bench message is not a batch"),
    }
}

/// The policy input the proxy builds for a tools/call.
fn input<'a>(message: &'a Message<'a>) -> PolicyInput<'a> {
    PolicyInput {
        principal: AGENT,
        action: message.method.as_deref().expect("a request"),
        server: "demo",
        server_spiffe_id: SERVER_ID,
        target: Target::Tool(message.target.as_deref().expect("tools/call names a tool")),
        arguments: message.arguments.map(|a| a.get()),
        session_id: Some("5f1c0e52-8d1c-4f9e-9a53-0c8e8b9f2a11"),
        protocol_version: Some("2025-11-25"),
        user: None,
        now_unix_ms: 1_764_000_000_000,
    }
}

fn shipped() -> PolicyEngine {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    PolicyEngine::load_dir(&dir).expect("shipped policies load")
}

/// The shipped policies plus 1,000 policies for 1,000 other workloads.
fn thousand_policies() -> (PolicyEngine, PathBuf) {
    let dir = std::env::temp_dir().join(format!("decision-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    for file in ["mcp.cedarschema", "demo.cedar"] {
        std::fs::copy(shipped.join(file), dir.join(file)).expect("copy policy file");
    }
    let mut text = String::new();
    for i in 0..1000 {
        text.push_str(&format!(
            "@id(\"w{i}\") permit (principal == Mcp::Workload::\"spiffe://example.org/ns/n{i}/sa/w\", \
             action == Mcp::Action::\"tools/call\", resource in Mcp::Server::\"demo\") \
             when {{ resource.name like \"get_*\" }};\n"
        ));
    }
    std::fs::write(dir.join("many.cedar"), text).expect("write policies");
    let engine = PolicyEngine::load_dir(&dir).expect("generated policies load");
    (engine, dir)
}

fn bench_decisions(c: &mut Criterion) {
    let engine = shipped();
    let allowed = parse(ALLOWED);
    let denied = parse(DENIED);
    assert_eq!(ALLOWED.len(), 189);
    assert!(engine.decide(&input(&allowed)).allowed);
    assert!(!engine.decide(&input(&denied)).allowed);

    let mut group = c.benchmark_group("decision");
    group.bench_function("tools_call_allowed", |b| {
        b.iter(|| engine.decide(black_box(&input(&allowed))))
    });
    group.bench_function("tools_call_denied_forbid", |b| {
        b.iter(|| engine.decide(black_box(&input(&denied))))
    });
    group.bench_function("parse_only", |b| b.iter(|| parse(black_box(ALLOWED)).kind));
    group.bench_function("parse_and_decide_allowed", |b| {
        b.iter(|| {
            let message = parse(black_box(ALLOWED));
            engine.decide(&input(&message)).allowed
        })
    });
    let (many, dir) = thousand_policies();
    assert!(many.decide(&input(&allowed)).allowed);
    group.bench_function("tools_call_allowed_1000_policies", |b| {
        b.iter(|| many.decide(black_box(&input(&allowed))))
    });
    group.finish();
    let _ = std::fs::remove_dir_all(dir);
}

criterion_group!(benches, bench_decisions);
criterion_main!(benches);
