use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::{SpanKind, Status};
use opentelemetry::{Array, KeyValue, Value};

use super::*;
use crate::config::TracesConfig;
use crate::metrics::Metrics;

fn config(ratio: f64, parent_based: bool, queue_size: usize) -> TracesConfig {
    TracesConfig {
        // Nothing listens on port 1: every export fails at once.
        otlp_endpoint: "http://127.0.0.1:1".to_owned(),
        service_name: "test".to_owned(),
        sampling: SamplingConfig {
            ratio,
            parent_based,
        },
        queue_size,
        batch_size: queue_size,
        export_timeout: Duration::from_secs(2),
    }
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attrs
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

fn text(attrs: &[KeyValue], key: &str) -> Option<String> {
    attr(attrs, key).map(|v| v.as_str().into_owned())
}

#[test]
fn the_ratio_decides_by_trace_id_and_a_caller_flag_when_honoured() {
    let all = Sampler::new(&SamplingConfig {
        ratio: 1.0,
        parent_based: true,
    });
    let none = Sampler::new(&SamplingConfig {
        ratio: 0.0,
        parent_based: true,
    });
    let half = Sampler::new(&SamplingConfig {
        ratio: 0.5,
        parent_based: false,
    });
    let ids: Vec<u128> = (0..4000u128)
        .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835))
        .collect();
    assert!(ids.iter().all(|id| all.sampled(*id, None)));
    assert!(ids.iter().all(|id| !none.sampled(*id, None)));
    let kept = ids.iter().filter(|id| half.sampled(**id, None)).count();
    assert!((1600..2400).contains(&kept), "{kept} of 4000 at ratio 0.5");
    // The same trace id, the same decision.
    assert!(
        ids.iter()
            .all(|id| half.sampled(*id, None) == half.sampled(*id, None))
    );
    // A caller's flag decides when honoured, in both directions...
    assert!(none.sampled(ids[0], Some(0x01)));
    assert!(!all.sampled(ids[0], Some(0x00)));
    // ... and is ignored when not.
    assert_eq!(half.sampled(ids[1], Some(0x01)), half.sampled(ids[1], None));
}

#[tokio::test]
async fn a_full_queue_drops_and_counts_without_waiting() {
    let metrics = Metrics::new();
    let (tracer, _exporter) = Tracer::new(&config(1.0, true, 2), metrics.traces.clone());
    let caller: Arc<str> = Arc::from("spiffe://example.org/agent");
    for i in 0..5u64 {
        // Each span ends (is submitted) when dropped.
        drop(RequestSpan::start(
            &tracer,
            (1, i + 1, None),
            &caller,
            "POST",
        ));
    }
    assert_eq!(metrics.traces.dropped_queue_full.get(), 3);
}

#[tokio::test]
async fn a_request_span_carries_its_decisions_and_its_upstream_call() {
    let metrics = Metrics::new();
    let (tracer, mut exporter) = Tracer::new(&config(1.0, true, 16), metrics.traces.clone());
    let caller: Arc<str> = Arc::from("spiffe://example.org/agent");
    let span = RequestSpan::start(&tracer, (7, 8, Some(9)), &caller, "POST");
    let ids = ["permit-reads".to_owned()];
    span.decided(&Decided {
        method: "tools/call",
        target: Some("get_issue"),
        upstream: "github",
        allowed: true,
        policy_ids: &ids,
        reason: "policy_permit",
    });
    let call = span.upstream_call(10);
    span.upstream_done(call, "github", Ok(200));
    span.responded(200);
    drop(span);
    let child = exporter.spans.try_recv().unwrap();
    assert_eq!(
        (child.trace_id, child.span_id, child.parent_span_id),
        (7, 10, 8)
    );
    assert_eq!(child.kind, SpanKind::Client);
    assert_eq!(
        text(&child.attributes, "mcp.upstream").as_deref(),
        Some("github")
    );
    assert_eq!(
        attr(&child.attributes, "http.response.status_code"),
        Some(&Value::I64(200))
    );
    let parent = exporter.spans.try_recv().unwrap();
    assert_eq!(
        (parent.trace_id, parent.span_id, parent.parent_span_id),
        (7, 8, 9)
    );
    assert!(parent.parent_remote);
    assert_eq!(
        (parent.kind.clone(), parent.name.as_ref()),
        (SpanKind::Server, "tools/call")
    );
    let a = &parent.attributes;
    for (key, want) in [
        ("spiffe.caller_id", "spiffe://example.org/agent"),
        ("mcp.method", "tools/call"),
        ("mcp.target", "get_issue"),
        ("mcp.upstream", "github"),
        ("mcp.decision", "allow"),
    ] {
        assert_eq!(text(a, key).as_deref(), Some(want), "{key}");
    }
    assert_eq!(
        attr(a, "mcp.policy_ids"),
        Some(&Value::Array(Array::String(vec!["permit-reads".into()])))
    );
    assert!(attr(a, "mcp.reason").is_none());
    assert_eq!(parent.events.len(), 1);
    assert_eq!(parent.status, Status::Unset);
}

#[tokio::test]
async fn a_split_batch_is_partial_and_a_refusal_names_its_reason() {
    let metrics = Metrics::new();
    let (tracer, mut exporter) = Tracer::new(&config(1.0, true, 16), metrics.traces.clone());
    let caller: Arc<str> = Arc::from("spiffe://example.org/agent");
    let span = RequestSpan::start(&tracer, (1, 2, None), &caller, "POST");
    for (allowed, reason) in [(true, "policy_permit"), (false, "policy_deny")] {
        span.decided(&Decided {
            method: "tools/call",
            target: Some("t"),
            upstream: "up",
            allowed,
            policy_ids: &[],
            reason,
        });
    }
    drop(span);
    let batch = exporter.spans.try_recv().unwrap();
    assert_eq!(
        text(&batch.attributes, "mcp.decision").as_deref(),
        Some("partial")
    );
    assert_eq!(
        text(&batch.attributes, "mcp.reason").as_deref(),
        Some("policy_deny")
    );
    assert_eq!(
        attr(&batch.attributes, "mcp.messages"),
        Some(&Value::I64(2))
    );
    assert!(!batch.parent_remote && batch.parent_span_id == 0);

    let span = RequestSpan::start(&tracer, (1, 3, None), &caller, "GET");
    span.refused("session_unknown", Some("up"));
    span.responded(404);
    drop(span);
    let refused = exporter.spans.try_recv().unwrap();
    assert_eq!(
        refused.name.as_ref(),
        "GET",
        "no message: named by its HTTP method"
    );
    assert_eq!(
        text(&refused.attributes, "mcp.decision").as_deref(),
        Some("deny")
    );
    assert_eq!(
        text(&refused.attributes, "mcp.reason").as_deref(),
        Some("session_unknown")
    );
    assert!(attr(&refused.attributes, "mcp.method").is_none());
}

#[tokio::test]
async fn a_dead_receiver_costs_counted_spans_and_flush_keeps_its_deadline() {
    let metrics = Metrics::new();
    let (tracer, exporter) = Tracer::new(&config(1.0, true, 64), metrics.traces.clone());
    let handle = exporter.start().unwrap();
    let caller: Arc<str> = Arc::from("spiffe://example.org/agent");
    drop(RequestSpan::start(&tracer, (1, 2, None), &caller, "POST"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while metrics.traces.dropped_export_failed.get() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the failed export was not counted"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(metrics.traces.exported.get(), 0);
    // Queued at shutdown with no time left: counted, and flush returns.
    for i in 0..3u64 {
        drop(RequestSpan::start(
            &tracer,
            (1, 10 + i, None),
            &caller,
            "POST",
        ));
    }
    let started = std::time::Instant::now();
    handle.flush(Duration::ZERO).await;
    assert!(started.elapsed() < Duration::from_secs(1));
    let lost = metrics.traces.dropped_export_failed.get() + metrics.traces.dropped_shutdown.get();
    assert_eq!(lost, 4, "every span is exported or counted");
    // After shutdown a span is counted, not queued.
    drop(RequestSpan::start(&tracer, (1, 20, None), &caller, "POST"));
    assert_eq!(
        metrics.traces.dropped_shutdown.get() + metrics.traces.dropped_export_failed.get(),
        5
    );
}
