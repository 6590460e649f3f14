//! The trace exporter's series: spans exported, and spans dropped by
//! reason (a full queue, a failed export, shutdown). Registered with every
//! other metric, exported at 0 whether traces are on or not, so an alert on
//! them needs no special case. Counting must never block.

use prometheus::IntCounter;

use super::{Def, Defs};

const TRACE_SPANS_EXPORTED: Def = (
    "mcp_gateway_trace_spans_exported_total",
    "Spans the OTLP receiver accepted (traces: on).",
    &[],
);
const TRACE_SPANS_DROPPED: Def = (
    "mcp_gateway_trace_spans_dropped_total",
    "Spans never exported, by reason: queue_full (the request went on without its span), export_failed, shutdown.",
    &["reason"],
);

/// The trace exporter's counters, resolved once.
#[derive(Clone)]
pub struct TraceMetrics {
    pub exported: IntCounter,
    /// The export queue was full: the span was dropped on the request path.
    pub dropped_queue_full: IntCounter,
    /// The receiver refused the batch, or could not be reached in time.
    pub dropped_export_failed: IntCounter,
    /// Still queued (or ended after the exporter stopped) at shutdown.
    pub dropped_shutdown: IntCounter,
}

impl TraceMetrics {
    pub(super) fn register(d: &Defs<'_>) -> TraceMetrics {
        let dropped = d.counters(TRACE_SPANS_DROPPED);
        TraceMetrics {
            exported: d.counter(TRACE_SPANS_EXPORTED),
            dropped_queue_full: dropped.with_label_values(&["queue_full"]),
            dropped_export_failed: dropped.with_label_values(&["export_failed"]),
            dropped_shutdown: dropped.with_label_values(&["shutdown"]),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::metrics::Metrics;

    #[test]
    fn trace_series_exist_from_the_start() {
        let m = Metrics::new();
        m.traces.dropped_queue_full.inc();
        let text = String::from_utf8(m.render()).unwrap();
        for series in [
            "mcp_gateway_trace_spans_exported_total 0",
            r#"mcp_gateway_trace_spans_dropped_total{reason="queue_full"} 1"#,
            r#"mcp_gateway_trace_spans_dropped_total{reason="export_failed"} 0"#,
            r#"mcp_gateway_trace_spans_dropped_total{reason="shutdown"} 0"#,
        ] {
            assert!(text.contains(series), "{series} missing");
        }
    }
}
