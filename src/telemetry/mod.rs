//! Traces: OpenTelemetry spans of the gateway's requests, exported over
//! OTLP/gRPC (`traces:`, off by default; [docs/traces.md]).
//!
//! The request path holds a [`Tracer`] (only when traces are on): it samples
//! a trace, fills a [`RequestSpan`] as the request is decided, and hands the
//! finished span, a small owned record, to a bounded queue with `try_send`.
//! One exporter task ([`export`]) takes what is queued, in batches, and calls
//! the OTLP exporter. A full queue drops the span and counts it
//! (`mcp_gateway_trace_spans_dropped_total{reason="queue_full"}`); a failed
//! export is counted and logged at most once per 10 s.
//!
//! This module must never block, slow or fail a request: no await, no lock
//! held across one, no error that reaches the caller.
//!
//! [docs/traces.md]: ../../docs/traces.md

mod export;
mod span;

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use crate::config::{SamplingConfig, TracesConfig};
use crate::metrics::TraceMetrics;
pub use export::{ExportError, ExportHandle, Exporter};
pub use span::{Decided, RequestSpan, SpanRecord, UpstreamCall};

/// The request path's handle on the trace pipeline. Clones share one queue.
#[derive(Clone)]
pub struct Tracer {
    inner: Arc<Shared>,
}

struct Shared {
    queue: mpsc::Sender<SpanRecord>,
    sampler: Sampler,
    metrics: TraceMetrics,
}

/// Which traces get spans: the caller's sampled flag (when honoured), else
/// the trace id against the ratio, as OpenTelemetry's `TraceIdRatioBased`
/// does (so every gateway and SDK with the same ratio agrees on a trace).
#[derive(Debug, Clone, Copy)]
struct Sampler {
    /// Sampled when the trace id's low 63 bits are below this.
    threshold: u64,
    parent_based: bool,
}

impl Sampler {
    fn new(config: &SamplingConfig) -> Sampler {
        // 1.0 -> 2^63 (every 63-bit value is below it); 0.0 -> 0 (none is).
        let threshold = (config.ratio * (1u64 << 63) as f64) as u64;
        Sampler {
            threshold,
            parent_based: config.parent_based,
        }
    }

    /// `caller_flags`: the flags of a valid incoming `traceparent`.
    fn sampled(&self, trace_id: u128, caller_flags: Option<u8>) -> bool {
        match caller_flags {
            Some(flags) if self.parent_based => flags & 1 == 1,
            _ => ((trace_id as u64) >> 1) < self.threshold,
        }
    }
}

impl Tracer {
    /// The request path's end and the exporter's end of one queue of
    /// `config.queue_size` spans. The exporter must be started
    /// ([`Exporter::start`]) inside the runtime.
    pub fn new(config: &TracesConfig, metrics: TraceMetrics) -> (Tracer, Exporter) {
        let (queue, spans) = mpsc::channel(config.queue_size);
        let tracer = Tracer {
            inner: Arc::new(Shared {
                queue,
                sampler: Sampler::new(&config.sampling),
                metrics: metrics.clone(),
            }),
        };
        (tracer, Exporter::new(config, spans, metrics))
    }

    /// Whether the trace `trace_id` is sampled (see [`Sampler`]).
    pub fn sampled(&self, trace_id: u128, caller_flags: Option<u8>) -> bool {
        self.inner.sampler.sampled(trace_id, caller_flags)
    }

    /// Hands a finished span to the exporter; never waits. A full queue
    /// drops it (counted); a closed one (after shutdown) too.
    pub(crate) fn submit(&self, span: SpanRecord) {
        match self.inner.queue.try_send(span) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.inner.metrics.dropped_queue_full.inc(),
            Err(TrySendError::Closed(_)) => self.inner.metrics.dropped_shutdown.inc(),
        }
    }
}

#[cfg(test)]
mod tests;
