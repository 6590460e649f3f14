//! The audit log: one JSON line per decision, allow and deny.
//!
//! Records go through a bounded channel to one writer task, so the request
//! path never does file I/O. When the channel is full the request waits
//! (back-pressure) rather than dropping a record: no record is ever dropped
//! silently. A write failure is logged and counted. The audit stream is its
//! own output, never mixed with debug logs.

use std::io::Write;
use std::path::PathBuf;

use serde::Serialize;
use tokio::sync::mpsc;
use tracing::error;

use crate::config::AuditSink;
use crate::metrics::Metrics;

/// Records buffered between the request path and the writer.
const QUEUE: usize = 8192;

/// What was decided for one message (or why it never reached a decision).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Allow,
    Deny,
    /// Allowed by policy, but the upstream call failed (a second record).
    UpstreamError,
}

/// One audit line. Field names are the public SIEM contract (README).
#[derive(Debug, Serialize)]
pub struct Record {
    /// RFC 3339, UTC, milliseconds.
    pub time: String,
    pub correlation_id: String,
    /// The JSON-RPC id as sent by the caller (raw JSON), if any.
    pub request_id: Option<Box<serde_json::value::RawValue>>,
    pub caller: String,
    pub upstream: String,
    pub upstream_spiffe_id: String,
    pub session_id: Option<String>,
    pub method: Option<String>,
    /// `tool`, `prompt`, `resource` or `server`.
    pub target_kind: Option<&'static str>,
    pub target: Option<String>,
    pub decision: Outcome,
    /// Why: `permit`, `forbid`, `default_deny`, `error`, `parse_error`, ...
    pub reason: &'static str,
    pub policy_ids: Vec<String>,
    pub policy_version: String,
    pub protocol_version: Option<String>,
    /// Free text for refusals before a decision (never policy text).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Shadow mode: the candidate set's decision, only when it differs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowRecord>,
    /// The verified end user, when the request carried a token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<AuditUser>,
    /// W3C trace id of the request (the caller's, or one the gateway began).
    pub trace_id: Option<String>,
    /// The gateway's span id: the parent id the upstream received.
    pub span_id: Option<String>,
}

/// What the shadow (candidate) policy set would have decided.
#[derive(Debug, Serialize, Clone, PartialEq, Eq)]
pub struct ShadowRecord {
    pub decision: Outcome,
    pub reason: &'static str,
    pub policy_ids: Vec<String>,
    pub policy_version: String,
}

/// The end user of a request: the verified token's `sub` and `iss`.
#[derive(Debug, Serialize, Clone, PartialEq, Eq)]
pub struct AuditUser {
    pub sub: String,
    pub iss: String,
}

impl From<&crate::policy::User> for AuditUser {
    fn from(user: &crate::policy::User) -> AuditUser {
        AuditUser {
            sub: user.subject().to_owned(),
            iss: user.issuer().to_owned(),
        }
    }
}

/// Sends records to the writer task. Cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Record>,
}

impl AuditLog {
    /// Opens the sink and starts the writer task.
    pub fn start(sink: &AuditSink, metrics: Metrics) -> std::io::Result<AuditLog> {
        let out: Box<dyn Write + Send> = match sink {
            AuditSink::Stdout => Box::new(std::io::stdout()),
            AuditSink::File(path) => Box::new(open_append(path)?),
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::task::spawn_blocking(move || write_loop(rx, out, metrics));
        Ok(AuditLog { tx })
    }

    /// Queues a record; waits if the writer is behind, never drops.
    pub async fn record(&self, record: Record) {
        if self.tx.send(record).await.is_err() {
            error!("audit writer has stopped; record lost");
        }
    }
}

fn open_append(path: &PathBuf) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

/// Writes records in arrival order, flushing whenever the queue runs empty.
fn write_loop(mut rx: mpsc::Receiver<Record>, out: Box<dyn Write + Send>, metrics: Metrics) {
    let mut out = std::io::BufWriter::new(out);
    while let Some(first) = rx.blocking_recv() {
        let mut next = Some(first);
        while let Some(record) = next {
            write_one(&mut out, &record, &metrics);
            next = rx.try_recv().ok();
        }
        if let Err(e) = out.flush() {
            metrics.audit_write_errors.inc();
            error!(error = %e, "flushing the audit log failed");
        }
    }
    let _ = out.flush();
}

fn write_one(out: &mut impl Write, record: &Record, metrics: &Metrics) {
    let result = serde_json::to_writer(&mut *out, record)
        .map_err(std::io::Error::from)
        .and_then(|()| out.write_all(b"\n"));
    match result {
        Ok(()) => metrics.audit_records.inc(),
        Err(e) => {
            metrics.audit_write_errors.inc();
            error!(error = %e, correlation_id = %record.correlation_id, "writing an audit record failed");
        }
    }
}

/// The current time as RFC 3339 with milliseconds, UTC.
pub fn now_rfc3339() -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time::OffsetDateTime::now_utc()
        .format(&format)
        .unwrap_or_default()
}
