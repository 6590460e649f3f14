//! Policy decision cost on the request path.
//!
//! Run: `cargo bench --bench decision`. Criterion measures:
//! - `decision/*`: the shipped demo policies, a 189-byte tools/call,
//!   allowed and denied, with and without the gateway's strict parse of the
//!   message, and with one more policy that reads `context.time`;
//! - `policies/<n>/*`: 10, 1,000 and 100,000 policies (one permit per agent
//!   identity, plus wildcard, `like` and forbid policies), a request one
//!   agent's policy matches and one that no policy matches.
//!
//! Criterion reports means and medians; the budget is a p99. So each case
//! is then also measured by timing single decisions (ten rounds of 20,000,
//! the cases taking turns), printed as p50/p99/p99.9/max of all of them
//! and the p99 of the quietest round, which shows what the code costs when
//! the machine is not busy elsewhere; then the time each set took to load.
//! Under `cargo test --all-targets` (no `--bench` argument) everything runs
//! once, on the small sets only.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::Criterion;
use spiffe_mcp_gateway::mcp::{self, Body, Message};
use spiffe_mcp_gateway::policy::{DecisionReason, PolicyEngine, PolicyInput, Target};

const AGENT: &str = "spiffe://example.org/ns/demo/sa/agent";
const SERVER_ID: &str = "spiffe://example.org/ns/demo/sa/mcp-server";
/// An identity no generated policy names.
const STRANGER: &str = "spiffe://example.org/ns/nobody/sa/agent";

/// 189 bytes, the size used in the design's performance budget.
const ALLOWED: &str = r#"{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"get_weather","arguments":{"city":"Berlin-Mitte","units":"metric","days":3,"hourly":false},"_meta":{"progressToken":"p-42"}}}"#;
const DENIED: &str = r#"{"jsonrpc":"2.0","id":43,"method":"tools/call","params":{"name":"delete_repository","arguments":{"owner":"acme","repo":"support-bot","confirm":true},"_meta":{"t":"p-43"}}}"#;

/// Policies for any agent, written before the per-agent ones: wildcard
/// permits, a `like` permit, and forbids (one reads the tool arguments).
const GENERAL: &str = r#"
@id("anyone-pings") permit (principal, action == Mcp::Action::"ping", resource);
@id("anyone-lists-tools") permit (
  principal,
  action in [Mcp::Action::"initialize", Mcp::Action::"tools/list"],
  resource == Mcp::Server::"demo"
);
@id("anyone-echoes") permit (
  principal is Mcp::Workload,
  action == Mcp::Action::"tools/call",
  resource == Mcp::Tool::"demo/echo"
);
@id("public-readers") permit (principal, action == Mcp::Action::"tools/call", resource in Mcp::Server::"demo")
when { principal.path like "/ns/public/*" && resource.name like "read_*" };
@id("nobody-deletes-repos") forbid (principal, action == Mcp::Action::"tools/call", resource)
when { resource.name == "delete_repository" };
@id("arguments-must-be-representable") forbid (principal, action == Mcp::Action::"tools/call", resource)
unless { context.arguments_representable };
@id("nobody-touches-prod") forbid (principal, action, resource in Mcp::Server::"prod");
"#;
const GENERAL_COUNT: usize = 7;

/// A policy that makes every tools/call decision build `context.time`.
const READS_TIME: &str = r#"
@id("no-calls-in-the-first-minute-of-the-day") forbid (principal, action == Mcp::Action::"tools/call", resource)
when { context.time.toTime() < duration("1m") };
"#;

/// The sizes measured; under `cargo test` only the first.
const SIZES: [usize; 3] = [10, 1_000, 100_000];

/// A loaded policy set and the agent one of its policies permits.
struct Sized {
    size: usize,
    engine: PolicyEngine,
    agent: String,
    load: Duration,
}

/// A policy directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    /// The shipped schema, plus `files`.
    fn new(name: &str, files: &[(&str, &str)]) -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("decision-bench-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/mcp.cedarschema");
        std::fs::copy(schema, dir.join("mcp.cedarschema")).expect("copy schema");
        for (file, text) in files {
            std::fs::write(dir.join(file), text).expect("write policies");
        }
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// True under `cargo bench`, false under `cargo test`.
fn full_run() -> bool {
    std::env::args().any(|arg| arg == "--bench")
}

/// The gateway's own strict parse of one message.
fn parse(body: &str) -> Message<'_> {
    match mcp::parse_body(body.as_bytes()).expect("bench message parses") {
        Body::Single(m) => m,
        Body::Batch(_) => panic!("bench message is not a batch"),
    }
}

/// The policy input the proxy builds for a tools/call, at the current time.
fn input<'a>(principal: &'a str, message: &'a Message<'a>) -> PolicyInput<'a> {
    PolicyInput {
        principal,
        action: message.method.as_deref().expect("a request"),
        server: "demo",
        server_spiffe_id: SERVER_ID,
        target: Target::Tool(message.target.as_deref().expect("tools/call names a tool")),
        arguments: message.arguments.map(|a| a.get()),
        session_id: Some("5f1c0e52-8d1c-4f9e-9a53-0c8e8b9f2a11"),
        protocol_version: Some("2025-11-25"),
        user: None,
        now_unix_ms: spiffe_mcp_gateway::clock::unix_ms(),
        pin: None,
    }
}

fn agent(i: usize) -> String {
    format!("spiffe://example.org/ns/team-{i}/sa/agent")
}

/// `size` policies: [`GENERAL`] and one permit per agent identity, every
/// other one with a `like` condition.
fn generated(size: usize) -> String {
    let mut text = String::from(GENERAL);
    for i in 0..size - GENERAL_COUNT {
        let (actions, condition) = if i % 2 == 0 {
            (
                r#"action == Mcp::Action::"tools/call""#,
                r#" when { resource.name like "get_*" }"#,
            )
        } else {
            (
                r#"action in [Mcp::Action::"tools/call", Mcp::Action::"tools/list"]"#,
                "",
            )
        };
        text.push_str(&format!(
            "@id(\"agent-{i}\") permit (principal == Mcp::Workload::\"{}\", {actions}, \
             resource in Mcp::Server::\"demo\"){condition};\n",
            agent(i)
        ));
    }
    text
}

fn load_sized(size: usize) -> Sized {
    let dir = TempDir::new(&size.to_string(), &[("generated.cedar", &generated(size))]);
    let start = Instant::now();
    let engine = PolicyEngine::load_dir(&dir.0).expect("generated policies load");
    let load = start.elapsed();
    assert_eq!(engine.policy_count(), size);
    // An agent with a `like` permit, from the middle of the file.
    let agents = size - GENERAL_COUNT;
    Sized {
        size,
        engine,
        agent: agent(agents / 2 / 2 * 2),
        load,
    }
}

fn shipped() -> PolicyEngine {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    PolicyEngine::load_dir(&dir).expect("shipped policies load")
}

/// The shipped policies plus [`READS_TIME`].
fn shipped_reading_time() -> PolicyEngine {
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/demo.cedar");
    let demo = std::fs::read_to_string(demo).expect("read demo policies");
    let dir = TempDir::new("time", &[("demo.cedar", &demo), ("time.cedar", READS_TIME)]);
    PolicyEngine::load_dir(&dir.0).expect("demo and time policies load")
}

fn bench_demo(c: &mut Criterion, engine: &PolicyEngine, reading_time: &PolicyEngine) {
    let allowed = parse(ALLOWED);
    let denied = parse(DENIED);
    assert_eq!(ALLOWED.len(), 189);
    assert!(engine.decide(&input(AGENT, &allowed)).allowed);
    assert!(!engine.decide(&input(AGENT, &denied)).allowed);

    let mut group = c.benchmark_group("decision");
    group.bench_function("tools_call_allowed", |b| {
        b.iter(|| engine.decide(black_box(&input(AGENT, &allowed))))
    });
    group.bench_function("tools_call_denied_forbid", |b| {
        b.iter(|| engine.decide(black_box(&input(AGENT, &denied))))
    });
    group.bench_function("parse_only", |b| b.iter(|| parse(black_box(ALLOWED)).kind));
    group.bench_function("parse_and_decide_allowed", |b| {
        b.iter(|| {
            let message = parse(black_box(ALLOWED));
            engine.decide(&input(AGENT, &message)).allowed
        })
    });
    group.bench_function("tools_call_allowed_reading_time", |b| {
        b.iter(|| reading_time.decide(black_box(&input(AGENT, &allowed))))
    });
    group.finish();
}

fn bench_sized(c: &mut Criterion, set: &Sized) {
    let message = parse(ALLOWED);
    let matching = set.engine.decide(&input(&set.agent, &message));
    assert!(matching.allowed, "{matching:?}");
    let other = set.engine.decide(&input(STRANGER, &message));
    assert_eq!(other.reason, DecisionReason::NoPermit);

    let mut group = c.benchmark_group(format!("policies/{}", set.size));
    group.bench_function("matching", |b| {
        b.iter(|| set.engine.decide(black_box(&input(&set.agent, &message))))
    });
    group.bench_function("non_matching", |b| {
        b.iter(|| set.engine.decide(black_box(&input(STRANGER, &message))))
    });
    group.finish();
}

/// One line of the percentile table: a policy set and a caller.
struct Case<'a> {
    label: String,
    engine: &'a PolicyEngine,
    principal: &'a str,
    /// Every sample, and the p99 of each round.
    samples: Vec<Duration>,
    round_p99: Vec<Duration>,
}

/// Times single decisions, `rounds` rounds of `per_round` per case (after
/// one unmeasured round), the cases taking turns so that a burst of load
/// from elsewhere on the machine does not land on one case only. Prints
/// the percentiles of all samples and the lowest p99 of a round, which is
/// what the code costs when nothing else runs.
fn percentiles(cases: &mut [Case<'_>], rounds: usize, per_round: usize) {
    let message = parse(ALLOWED);
    let p = |samples: &mut Vec<Duration>, q: f64| {
        samples.sort_unstable();
        samples[((samples.len() - 1) as f64 * q) as usize]
    };
    for round in 0..=rounds {
        for case in cases.iter_mut() {
            let mut samples = Vec::with_capacity(per_round);
            for _ in 0..per_round {
                let input = input(case.principal, &message);
                let start = Instant::now();
                black_box(case.engine.decide(black_box(&input)));
                samples.push(start.elapsed());
            }
            if round > 0 {
                case.round_p99.push(p(&mut samples, 0.99));
                case.samples.append(&mut samples);
            }
        }
    }
    for case in cases.iter_mut() {
        let quiet = case.round_p99.iter().min().copied().unwrap_or_default();
        let all = &mut case.samples;
        println!(
            "{:<30} p50 {:>8.2?}  p99 {:>8.2?}  p99.9 {:>8.2?}  max {:>8.2?}  quietest round p99 {:>8.2?}",
            case.label,
            p(all, 0.50),
            p(all, 0.99),
            p(all, 0.999),
            p(all, 1.0),
            quiet,
        );
    }
}

fn main() {
    let full = full_run();
    let sizes = if full { &SIZES[..] } else { &SIZES[..1] };
    let demo = shipped();
    let reading_time = shipped_reading_time();
    let sets: Vec<Sized> = sizes.iter().map(|&size| load_sized(size)).collect();

    let mut c = Criterion::default().configure_from_args();
    bench_demo(&mut c, &demo, &reading_time);
    for set in &sets {
        bench_sized(&mut c, set);
    }
    c.final_summary();

    println!("\nSingle decisions, timed one by one (the p99 budget is 5 us):");
    if !full {
        println!("(a test run: a few decisions, no figures; see `cargo bench --bench decision`)");
    }
    let case = |label: String, engine, principal| Case {
        label,
        engine,
        principal,
        samples: Vec::new(),
        round_p99: Vec::new(),
    };
    let mut cases = vec![
        case("decision/tools_call_allowed".into(), &demo, AGENT),
        case("decision/..._reading_time".into(), &reading_time, AGENT),
    ];
    for set in &sets {
        let size = set.size;
        let engine = &set.engine;
        cases.push(case(
            format!("policies/{size}/matching"),
            engine,
            &set.agent,
        ));
        cases.push(case(
            format!("policies/{size}/non_matching"),
            engine,
            STRANGER,
        ));
    }
    let (rounds, per_round) = if full { (10, 20_000) } else { (1, 10) };
    println!("({rounds} rounds of {per_round} decisions per line)");
    percentiles(&mut cases, rounds, per_round);
    println!("\nLoad time (read, parse, validate, index):");
    for set in &sets {
        println!("policies/{:<8} {:>10.2?}", set.size, set.load);
    }
}
