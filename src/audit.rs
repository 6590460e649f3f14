//! The audit log: one JSON line per decision, allow and deny.
//!
//! Records go through a bounded channel to one writer thread
//! ([`writer`]), so the request path never does file I/O. When the channel
//! is full the request waits (back-pressure) rather than dropping a record.
//! When writes fail, the writer keeps the records and retries, and sets a
//! flag the request path reads with one atomic load: with
//! `audit.on_failure: refuse` calls are refused and `/readyz` fails until a
//! write succeeds again; with `continue` they are served. A record that
//! cannot be kept is counted as lost, never dropped silently. The audit
//! stream is its own output, never mixed with debug logs.
//!
//! The log proves itself ([`chain`], [`checkpoint`], [`verify`]): every
//! line carries the hash of the one before, and checkpoints signed with
//! the gateway's X.509-SVID seal the chain every few records or seconds;
//! `audit verify` checks both (docs/audit.md). Chaining and signing happen
//! on the writer thread, never on the request path.

mod chain;
pub mod checkpoint;
mod lines;
mod reason;
mod tail;
pub mod verify;
mod writer;

pub use chain::CheckpointPolicy;
pub use reason::Reason;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use serde::Serialize;
use tokio::sync::mpsc;
use tracing::error;

use crate::config::{AuditConfig, AuditOnFailure, AuditSink};
use crate::metrics::Metrics;
use crate::policy::Target;
use writer::{FileSink, Sink, Writer};

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
    /// Why (`permit`, `forbid`, `default_deny`, `parse_error`, ...).
    pub reason: Reason,
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

/// Correlation ids: a random per-process prefix and a counter. Unique, cheap,
/// and no lock on the request path.
pub struct CorrelationIds {
    prefix: u64,
    counter: AtomicU64,
}

impl Default for CorrelationIds {
    fn default() -> CorrelationIds {
        CorrelationIds::new()
    }
}

impl CorrelationIds {
    pub fn new() -> CorrelationIds {
        let mut seed = [0u8; 8];
        // SystemRandom failing means the OS RNG is broken; a time-based
        // prefix still keeps ids unique within this process.
        let prefix =
            match ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed) {
                Ok(()) => u64::from_le_bytes(seed),
                Err(_) => crate::clock::unix_ms() as u64,
            };
        CorrelationIds {
            prefix,
            counter: AtomicU64::new(0),
        }
    }

    pub fn next(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut id = String::with_capacity(32);
        for word in [self.prefix, n] {
            for shift in (0..16).rev() {
                let digit = (word >> (shift * 4)) & 0xf;
                id.push(char::from_digit(digit as u32, 16).unwrap_or('0'));
            }
        }
        id
    }
}

/// The facts every record of one exchange repeats: who asked, which
/// upstream, which session, which trace, under which policy version.
#[derive(Clone, Copy)]
pub struct Exchange<'a> {
    pub caller: &'a str,
    /// Empty only for a request refused before it named an upstream.
    pub upstream: &'a str,
    pub upstream_spiffe_id: &'a str,
    pub session_id: Option<&'a str>,
    pub protocol_version: Option<&'a str>,
    pub user: Option<&'a crate::policy::User>,
    pub trace_id: &'a str,
    pub span_id: &'a str,
    pub policy_version: &'a str,
}

impl Record {
    /// A record of `exchange` about no message in particular (a refusal
    /// before parsing, an upstream failure, a way-back event); `about`,
    /// `decided_by` and `with_detail` fill in the rest.
    pub fn new(
        exchange: &Exchange<'_>,
        correlation_id: String,
        decision: Outcome,
        reason: Reason,
    ) -> Record {
        Record {
            time: now_rfc3339(),
            correlation_id,
            request_id: None,
            caller: exchange.caller.to_owned(),
            upstream: exchange.upstream.to_owned(),
            upstream_spiffe_id: exchange.upstream_spiffe_id.to_owned(),
            session_id: exchange.session_id.map(str::to_owned),
            method: None,
            target_kind: None,
            target: None,
            decision,
            reason,
            policy_ids: Vec::new(),
            policy_version: exchange.policy_version.to_owned(),
            protocol_version: exchange.protocol_version.map(str::to_owned),
            detail: None,
            shadow: None,
            user: exchange.user.map(AuditUser::from),
            trace_id: Some(exchange.trace_id.to_owned()),
            span_id: Some(exchange.span_id.to_owned()),
        }
    }

    /// The message the record is about: its JSON-RPC id (raw JSON), method
    /// and target.
    pub fn about(
        mut self,
        request_id: Option<&str>,
        method: Option<&str>,
        target: Option<Target<'_>>,
    ) -> Record {
        self.request_id =
            request_id.and_then(|id| serde_json::value::RawValue::from_string(id.to_owned()).ok());
        self.method = method.map(str::to_owned);
        self.target_kind = target.as_ref().map(Target::audit_kind);
        self.target = target.as_ref().and_then(Target::name).map(str::to_owned);
        self
    }

    /// The policies that determined the decision, and the shadow set's
    /// disagreement, if any.
    pub fn decided_by(mut self, policy_ids: Vec<String>, shadow: Option<ShadowRecord>) -> Record {
        self.policy_ids = policy_ids;
        self.shadow = shadow;
        self
    }

    pub fn with_detail(mut self, detail: Option<String>) -> Record {
        self.detail = detail;
        self
    }
}

/// What the shadow (candidate) policy set would have decided.
#[derive(Debug, Serialize, Clone, PartialEq, Eq)]
pub struct ShadowRecord {
    pub decision: Outcome,
    pub reason: Reason,
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

/// State the writer thread shares with the request path and readiness.
#[derive(Default)]
pub(crate) struct Shared {
    /// Set by the writer while writes fail (and once it has stopped).
    failing: AtomicBool,
    /// Set on SIGHUP: the writer reopens the file before its next write.
    reopen: AtomicBool,
    /// Set once a record found the writer gone (logged once, then counted).
    stopped_logged: AtomicBool,
    /// The writer thread, woken when the last sender is gone so that a
    /// batch held for group commit is written at once on shutdown.
    writer: OnceLock<std::thread::Thread>,
}

/// Dropped with the last [`AuditLog`] clone, after its sender: wakes the
/// writer to write what it holds and stop.
struct WakeOnClose(Arc<Shared>);

impl Drop for WakeOnClose {
    fn drop(&mut self) {
        if let Some(writer) = self.0.writer.get() {
            writer.unpark();
        }
    }
}

/// Sends records to the writer thread. Cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    // Dropped before `_wake`: the writer, woken, finds the channel closed.
    tx: mpsc::Sender<Record>,
    _wake: Arc<WakeOnClose>,
    shared: Arc<Shared>,
    on_failure: AuditOnFailure,
    metrics: Metrics,
}

impl AuditLog {
    /// Opens the sink (a file that cannot be opened fails the start) and
    /// starts the writer thread.
    /// `keys`: the SVID checkpoints are signed with (the gateway's
    /// identity).
    pub fn start(
        config: &AuditConfig,
        metrics: Metrics,
        keys: Box<dyn checkpoint::KeySource>,
    ) -> std::io::Result<AuditLog> {
        let sink = match &config.sink {
            AuditSink::Stdout => Sink::stdout()?,
            AuditSink::File(path) => {
                Sink::File(FileSink::open(path.clone(), Box::new(writer::open_append))?)
            }
        };
        Ok(AuditLog::with_writer(
            sink,
            config.on_failure,
            metrics,
            |w| {
                w.fsync = config.fsync;
                w.chain = chain::Chain::new(config.checkpoints, keys);
            },
        ))
    }

    /// Starts the writer thread on `sink`; `adjust` lets tests change the
    /// writer's limits first.
    fn with_writer(
        sink: Sink,
        on_failure: AuditOnFailure,
        metrics: Metrics,
        adjust: impl FnOnce(&mut Writer),
    ) -> AuditLog {
        let shared = Arc::new(Shared::default());
        let (tx, rx) = mpsc::channel(QUEUE);
        let mut writer = Writer::new(sink, Arc::clone(&shared), metrics.clone());
        adjust(&mut writer);
        tokio::task::spawn_blocking(move || writer.run(rx));
        AuditLog {
            tx,
            _wake: Arc::new(WakeOnClose(Arc::clone(&shared))),
            shared,
            on_failure,
            metrics,
        }
    }

    /// Queues a record; waits if the writer is behind, never drops.
    pub async fn record(&self, record: Record) {
        self.metrics.audit_queued.inc();
        if self.tx.send(record).await.is_err() {
            self.metrics.audit_queued.dec();
            self.metrics.audit_records_lost.inc();
            if !self.shared.stopped_logged.swap(true, Ordering::Relaxed) {
                error!(
                    "the audit writer has stopped; records are lost (counted in mcp_gateway_audit_records_lost_total)"
                );
            }
        }
    }

    /// Whether calls may be served: false while audit writes fail with
    /// `on_failure: refuse`. One atomic load; the request path checks it
    /// before forwarding anything.
    pub fn accepting(&self) -> bool {
        self.on_failure == AuditOnFailure::Continue || !self.failing()
    }

    /// Whether the writer's last write failed (or it has stopped).
    pub fn failing(&self) -> bool {
        self.shared.failing.load(Ordering::Relaxed)
    }

    /// Reopens the audit file before the next write (SIGHUP), for log
    /// rotation that renames the file and signals.
    pub fn reopen(&self) {
        self.shared.reopen.store(true, Ordering::Relaxed);
    }
}

/// The current time as RFC 3339 with milliseconds, UTC.
pub fn now_rfc3339() -> String {
    rfc3339_ms(crate::clock::unix_ms())
}

thread_local! {
    /// The second last formatted on this thread and its text up to the
    /// `.`: records come many per second, and only their milliseconds
    /// differ.
    static SECOND: std::cell::RefCell<(i64, String)> = const {
        std::cell::RefCell::new((i64::MIN, String::new()))
    };
}

/// `unix_ms` as RFC 3339 with milliseconds, UTC (empty if out of range).
pub(crate) fn rfc3339_ms(unix_ms: i64) -> String {
    let (second, ms) = (unix_ms.div_euclid(1000), unix_ms.rem_euclid(1000));
    SECOND.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != second {
            let format =
                time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].");
            let text = time::OffsetDateTime::from_unix_timestamp(second)
                .ok()
                .and_then(|at| at.format(&format).ok());
            let Some(text) = text else {
                return String::new();
            };
            *cached = (second, text);
        }
        let mut out = String::with_capacity(cached.1.len() + 4);
        out.push_str(&cached.1);
        for digit in [ms / 100, ms / 10 % 10, ms % 10] {
            out.push(char::from(b'0' + digit as u8));
        }
        out.push('Z');
        out
    })
}

#[cfg(test)]
mod tests;
