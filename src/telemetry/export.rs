//! The export task: takes finished spans from the queue in batches (what is
//! there when it looks, up to `traces.batch_size`: one span at a time when
//! idle, full batches under load, no timer) and sends them with
//! opentelemetry-otlp's gRPC exporter, each call bounded by
//! `traces.export_timeout_seconds`. At shutdown it exports what is queued
//! until the deadline it is given and counts the rest.
//!
//! Must never hold up the request path (it only reads the queue), retry a
//! batch past its timeout, or outlive its shutdown deadline.

use std::time::Duration;

use opentelemetry::InstrumentationScope;
use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
use opentelemetry_otlp::{RetryPolicy, WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter, SpanLinks};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{info, warn};

use super::SpanRecord;
use crate::config::TracesConfig;
use crate::metrics::TraceMetrics;

/// At most one log line about failed exports per this long.
const LOG_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("traces.otlp_endpoint: cannot build the OTLP exporter: {0}")]
    Build(String),
}

/// The queue's receiving end and what the export task needs, until started.
pub struct Exporter {
    pub(super) spans: mpsc::Receiver<SpanRecord>,
    endpoint: String,
    service_name: String,
    batch_size: usize,
    timeout: Duration,
    metrics: TraceMetrics,
}

/// The running export task.
pub struct ExportHandle {
    stop: oneshot::Sender<Instant>,
    task: JoinHandle<()>,
}

/// One batch's way out: the OTLP exporter, the scope every span names, and
/// the counters.
struct Sink {
    otlp: opentelemetry_otlp::SpanExporter,
    scope: InstrumentationScope,
    timeout: Duration,
    metrics: TraceMetrics,
    /// Spans lost to failed exports since the last log line, and when it was.
    unlogged: u64,
    logged: Option<Instant>,
}

impl Exporter {
    pub(super) fn new(
        config: &TracesConfig,
        spans: mpsc::Receiver<SpanRecord>,
        metrics: TraceMetrics,
    ) -> Exporter {
        Exporter {
            spans,
            endpoint: config.otlp_endpoint.clone(),
            service_name: config.service_name.clone(),
            batch_size: config.batch_size,
            timeout: config.export_timeout,
            metrics,
        }
    }

    /// Builds the OTLP exporter (it connects on the first export, so a
    /// receiver that is down at start costs nothing but counted spans) and
    /// spawns the export task. Inside the runtime.
    pub fn start(self) -> Result<ExportHandle, ExportError> {
        let mut otlp = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(self.endpoint.clone())
            .with_timeout(self.timeout)
            // One attempt per batch: a retry would hold up the batches
            // behind it while the queue fills.
            .with_retry_policy(RetryPolicy::disabled())
            .build()
            .map_err(|e| ExportError::Build(e.to_string()))?;
        let resource = Resource::builder_empty()
            .with_service_name(self.service_name.clone())
            .build();
        otlp.set_resource(&resource);
        let sink = Sink {
            otlp,
            scope: InstrumentationScope::builder("spiffe-mcp-gateway")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
            timeout: self.timeout,
            metrics: self.metrics,
            unlogged: 0,
            logged: None,
        };
        info!(endpoint = %self.endpoint, "exporting traces over OTLP/gRPC");
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(run(self.spans, self.batch_size, sink, stopped));
        Ok(ExportHandle { stop, task })
    }
}

impl ExportHandle {
    /// Exports what is queued within `budget`, counts what is left as
    /// dropped, and stops. Returns after `budget` at the latest.
    pub async fn flush(self, budget: Duration) {
        let deadline = Instant::now() + budget;
        let _ = self.stop.send(deadline);
        let mut task = self.task;
        // The task keeps its own deadline; this only guards against a
        // hung export call past it.
        let grace = deadline + Duration::from_millis(200);
        if tokio::time::timeout_at(grace, &mut task).await.is_err() {
            task.abort();
            warn!("trace export did not stop by the shutdown deadline; abandoned");
        }
    }
}

/// Exports batches until stopped (or until every `Tracer` is gone).
async fn run(
    mut spans: mpsc::Receiver<SpanRecord>,
    batch_size: usize,
    mut sink: Sink,
    mut stop: oneshot::Receiver<Instant>,
) {
    let mut batch = Vec::with_capacity(batch_size);
    loop {
        let got = tokio::select! {
            biased;
            deadline = &mut stop => return drain(spans, batch_size, sink, deadline).await,
            got = spans.recv_many(&mut batch, batch_size) => got,
        };
        if got == 0 {
            return;
        }
        let records = std::mem::take(&mut batch);
        let count = records.len() as u64;
        let stopped = {
            let export = sink.export(records);
            tokio::pin!(export);
            tokio::select! {
                () = &mut export => None,
                deadline = &mut stop => {
                    // Shutdown during an export: it may finish by the deadline.
                    let deadline = deadline.unwrap_or_else(|_| Instant::now());
                    let done = tokio::time::timeout_at(deadline, &mut export).await.is_ok();
                    Some((deadline, done))
                }
            }
        };
        if let Some((deadline, done)) = stopped {
            if !done {
                sink.metrics.dropped_shutdown.inc_by(count);
            }
            return drain(spans, batch_size, sink, Ok(deadline)).await;
        }
    }
}

/// Shutdown: no more spans are taken; those queued go out in batches
/// until the deadline (none without one: the handle was dropped), the rest
/// are counted as dropped.
async fn drain(
    mut spans: mpsc::Receiver<SpanRecord>,
    batch_size: usize,
    mut sink: Sink,
    deadline: Result<Instant, oneshot::error::RecvError>,
) {
    spans.close();
    let deadline = deadline.unwrap_or_else(|_| Instant::now());
    let mut left = Vec::new();
    while let Ok(span) = spans.try_recv() {
        left.push(span);
    }
    let mut left = left.into_iter().peekable();
    while left.peek().is_some() {
        let records: Vec<SpanRecord> = left.by_ref().take(batch_size).collect();
        let count = records.len() as u64;
        if Instant::now() >= deadline
            || tokio::time::timeout_at(deadline, sink.export(records))
                .await
                .is_err()
        {
            sink.metrics.dropped_shutdown.inc_by(count);
        }
    }
}

impl Sink {
    /// One export call, counted: exported, or dropped as failed.
    async fn export(&mut self, records: Vec<SpanRecord>) {
        let count = records.len() as u64;
        let batch = records
            .into_iter()
            .map(|r| span_data(r, &self.scope))
            .collect();
        let failure = match tokio::time::timeout(self.timeout, self.otlp.export(batch)).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!("no answer within {:?}", self.timeout)),
        };
        match failure {
            None => self.metrics.exported.inc_by(count),
            Some(error) => {
                self.metrics.dropped_export_failed.inc_by(count);
                self.log_failure(count, &error);
            }
        }
    }

    /// At most one line per `LOG_EVERY`, with the spans lost since.
    fn log_failure(&mut self, count: u64, error: &str) {
        self.unlogged += count;
        let now = Instant::now();
        if self.logged.is_some_and(|at| now < at + LOG_EVERY) {
            return;
        }
        warn!(spans = self.unlogged, %error, "trace export failed; spans dropped");
        self.unlogged = 0;
        self.logged = Some(now);
    }
}

/// A finished span as the OpenTelemetry SDK's exporters take it.
fn span_data(r: SpanRecord, scope: &InstrumentationScope) -> SpanData {
    let mut events = SpanEvents::default();
    events.events = r.events;
    events.dropped_count = r.dropped_events;
    SpanData {
        span_context: SpanContext::new(
            TraceId::from(r.trace_id),
            SpanId::from(r.span_id),
            TraceFlags::SAMPLED,
            false,
            TraceState::NONE,
        ),
        // 0 is `SpanId::INVALID`: a root span.
        parent_span_id: SpanId::from(r.parent_span_id),
        parent_span_is_remote: r.parent_remote,
        span_kind: r.kind,
        name: r.name,
        start_time: r.start,
        end_time: r.end,
        attributes: r.attributes,
        dropped_attributes_count: 0,
        events,
        links: SpanLinks::default(),
        status: r.status,
        instrumentation_scope: scope.clone(),
    }
}
