//! Prometheus metrics, registered once at start and shared by handle.
//!
//! Label values come only from bounded sets: a method name outside the known
//! MCP methods is counted as `other`, so a caller cannot grow the label space;
//! a policy id is one of a loaded set, within a cap (`policy_counts`).
//! Nothing here may block the request path: counters are atomics.

mod policy_counts;
mod traces;

use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::audit::Reason;
use crate::mcp::method::metric_label;
use crate::policy::DecisionReason;
use policy_counts::PolicyDecisions;
pub use policy_counts::{POLICY_ID_SERIES_CAP, PolicyCounts};
pub use traces::TraceMetrics;

/// A metric's name, its help text, and its labels (empty for one series).
type Def = (&'static str, &'static str, &'static [&'static str]);

// Every metric the gateway exports, one row each (README "Metrics").
const DECISIONS: Def = (
    "mcp_gateway_decisions_total",
    "Policy decisions by decision and MCP method.",
    &["decision", "method"],
);
const POLICY_DECISIONS: Def = (
    "mcp_gateway_policy_decisions_total",
    "Enforced decisions of messages by determining policy: its @id (other past the cap of ids) and effect (permit, forbid, error). Default denials, list entries and shadow decisions are not counted.",
    &["policy_id", "effect"],
);
const REQUEST_DURATION: Def = (
    "mcp_gateway_request_duration_seconds",
    "Time from a request's arrival to its response headers.",
    &[],
);
const UPSTREAM_ERRORS: Def = (
    "mcp_gateway_upstream_errors_total",
    "Failed calls to the upstream by kind.",
    &["kind"],
);
const REFUSED: Def = (
    "mcp_gateway_refused_requests_total",
    "HTTP requests refused before any policy decision, by reason.",
    &["reason"],
);
const SVID_EXPIRY: Def = (
    "mcp_gateway_svid_expiry_timestamp_seconds",
    "notAfter of the gateway's current X.509-SVID, Unix seconds.",
    &[],
);
const SVID_ROTATIONS: Def = (
    "mcp_gateway_svid_rotations_total",
    "Times a new X.509-SVID replaced the previous one.",
    &[],
);
const IDENTITY_UPDATES: Def = (
    "mcp_gateway_identity_updates_total",
    "Workload API updates received (SVIDs or bundles).",
    &[],
);
const TLS_HANDSHAKE_FAILURES: Def = (
    "mcp_gateway_tls_handshake_failures_total",
    "Listener handshakes refused or failed.",
    &[],
);
const CONNECTIONS_OPEN: Def = (
    "mcp_gateway_connections_open",
    "Connections open on the listener (TLS handshakes in progress included).",
    &[],
);
const CONNECTION_REFUSALS: Def = (
    "mcp_gateway_connection_refusals_total",
    "Connections closed, or request bodies refused, by a connection limit or timeout.",
    &["reason"],
);
const ACCEPT_ERRORS: Def = (
    "mcp_gateway_accept_errors_total",
    "Failed accepts on a listener (e.g. out of file descriptors); each is followed by a pause.",
    &[],
);
const AUDIT_RECORDS: Def = (
    "mcp_gateway_audit_records_total",
    "Audit records written.",
    &[],
);
const AUDIT_WRITE_ERRORS: Def = (
    "mcp_gateway_audit_write_errors_total",
    "Failed audit write attempts (the records are kept and retried).",
    &[],
);
const AUDIT_RECORDS_LOST: Def = (
    "mcp_gateway_audit_records_lost_total",
    "Audit records never written: the retry buffer was full, or the writer stopped.",
    &[],
);
const AUDIT_FAILING: Def = (
    "mcp_gateway_audit_failing",
    "1 while audit writes fail (with on_failure: refuse, calls are refused).",
    &[],
);
const AUDIT_QUEUED: Def = (
    "mcp_gateway_audit_queued_records",
    "Audit records accepted and not yet written (queued, in a batch, or kept for a retry).",
    &[],
);
const READY: Def = (
    "mcp_gateway_ready",
    "1 when the gateway holds a usable SVID.",
    &[],
);
const POLICY_COUNT: Def = ("mcp_gateway_policies", "Policies in the loaded set.", &[]);
const POLICY_RELOADS: Def = (
    "mcp_gateway_policy_reloads_total",
    "Policy reload attempts by result (success, failure).",
    &["result"],
);
const SESSION_KEY_RELOADS: Def = (
    "mcp_gateway_session_key_reloads_total",
    "Reads of sessions.keys_file after the start, by result (success, failure: the keys in use stay).",
    &["result"],
);
const POLICY_LAST_RELOAD_SUCCESS: Def = (
    "mcp_gateway_policy_last_reload_success_timestamp_seconds",
    "When the policy set in force was loaded, Unix seconds.",
    &[],
);
const POLICY_RELOAD_FAILING: Def = (
    "mcp_gateway_policy_reload_failing",
    "1 when the last policy reload was rejected and an older set is in force.",
    &[],
);
const SHADOW_POLICY_COUNT: Def = (
    "mcp_gateway_shadow_policies",
    "Policies in the shadow (candidate) set; 0 without shadow mode.",
    &[],
);
const SHADOW_DISAGREEMENTS: Def = (
    "mcp_gateway_shadow_disagreements_total",
    "Messages the shadow policy set decided differently, by enforced decision and method.",
    &["decision", "method"],
);
const CALLER_DECISIONS: Def = (
    "mcp_gateway_caller_decisions_total",
    "Policy decisions by caller SPIFFE ID (opt-in: metrics.caller_labels).",
    &["caller", "decision"],
);
const TRUST_BUNDLES: Def = (
    "mcp_gateway_trust_bundles",
    "Trust domains the gateway holds an X.509 bundle for (its own and federated ones).",
    &[],
);
const UPSTREAM_UP: Def = (
    "mcp_gateway_upstream_up",
    "1 when the last connection attempt or call to the upstream succeeded, 0 when it could not connect.",
    &["upstream"],
);
const UPSTREAM_REQUEST_DURATION: Def = (
    "mcp_gateway_upstream_request_duration_seconds",
    "Time from sending a request to the upstream to its response head.",
    &["upstream"],
);
const PIN_MISMATCHES: Def = (
    "mcp_gateway_pin_mismatches_total",
    "Tool, prompt or resource template definitions not matching their pin, by upstream and kind (changed, unpinned): each new definition seen in a list, and each call checked.",
    &["upstream", "kind"],
);
const LIMITED: Def = (
    "mcp_gateway_limited_total",
    "Requests and tool calls refused by a per-identity limit, by reason (rate_limited, concurrency_limited, limit_identities_full).",
    &["reason"],
);
const LIMIT_IDENTITIES: Def = (
    "mcp_gateway_limit_identities",
    "Identities whose per-identity limit state (buckets, counts) is held.",
    &[],
);
const CONFIG_RELOADS: Def = (
    "mcp_gateway_config_reloads_total",
    "Reloads of the config file's limits.per_identity by result (success, failure).",
    &["result"],
);
const CONFIG_RELOAD_FAILING: Def = (
    "mcp_gateway_config_reload_failing",
    "1 when the config file last read is invalid and the last good limits stay in force.",
    &[],
);
const REQUEST_DURATION_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
const UPSTREAM_REQUEST_DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// Defines and registers a metric in one step. The definitions are the
/// constants above: `expect` can only fail on a typo in a name or a name
/// used twice, which `every_metric_is_exported_once` catches.
struct Defs<'a>(&'a Registry);

impl Defs<'_> {
    fn register<C: Collector + Clone + 'static>(&self, metric: prometheus::Result<C>) -> C {
        let metric = metric.expect("static metric definition");
        self.0
            .register(Box::new(metric.clone()))
            .expect("metric names are unique");
        metric
    }

    fn counter(&self, (name, help, _): Def) -> IntCounter {
        self.register(IntCounter::new(name, help))
    }

    fn counters(&self, (name, help, labels): Def) -> IntCounterVec {
        self.register(IntCounterVec::new(Opts::new(name, help), labels))
    }

    fn gauge(&self, (name, help, _): Def) -> IntGauge {
        self.register(IntGauge::new(name, help))
    }

    fn gauges(&self, (name, help, labels): Def) -> IntGaugeVec {
        self.register(IntGaugeVec::new(Opts::new(name, help), labels))
    }

    fn float_gauge(&self, (name, help, _): Def) -> Gauge {
        self.register(Gauge::new(name, help))
    }

    fn histogram(&self, (name, help, _): Def, buckets: &[f64]) -> Histogram {
        let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
        self.register(Histogram::with_opts(opts))
    }

    fn histograms(&self, (name, help, labels): Def, buckets: &[f64]) -> HistogramVec {
        let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
        self.register(HistogramVec::new(opts, labels))
    }
}

/// All gateway metrics. Clones share the same series.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    decisions: IntCounterVec,
    /// By determining policy: resolved per loaded set ([`PolicyCounts`]).
    policy_decisions: PolicyDecisions,
    pub request_duration: Histogram,
    upstream_errors: IntCounterVec,
    refused: IntCounterVec,
    pub svid_expiry: Gauge,
    pub svid_rotations: IntCounter,
    pub identity_updates: IntCounter,
    pub tls_handshake_failures: IntCounter,
    pub accept_errors: IntCounter,
    pub connections_open: IntGauge,
    /// Connections closed or requests refused by a connection limit.
    pub connection_refusals: IntCounterVec,
    pub audit_records: IntCounter,
    pub audit_write_errors: IntCounter,
    pub audit_records_lost: IntCounter,
    pub audit_failing: IntGauge,
    pub audit_queued: IntGauge,
    pub ready: IntGauge,
    pub policy_count: IntGauge,
    policy_reloads: IntCounterVec,
    session_key_reloads: IntCounterVec,
    /// Unix time of the last successful policy load (the start counts).
    pub policy_last_reload_success: Gauge,
    /// 1 while the last reload attempt failed (the previous set is in force).
    pub policy_reload_failing: IntGauge,
    pub shadow_policy_count: IntGauge,
    shadow_disagreements: IntCounterVec,
    /// Decisions by caller SPIFFE ID: only when `metrics.caller_labels` is
    /// set, since every distinct caller is a new series.
    caller_decisions: Option<IntCounterVec>,
    /// Trust domains with an X.509 bundle (own plus federated): a count, not
    /// a label per domain, since the Workload API decides the set.
    pub trust_bundles: IntGauge,
    /// Per upstream (names come from the config: a bounded set).
    upstream_up: IntGaugeVec,
    upstream_request_duration: HistogramVec,
    pin_mismatches: IntCounterVec,
    /// Refusals by a per-identity limit, by reason (`Reason::LIMITED`).
    limited_total: IntCounterVec,
    /// Identities holding per-identity limit state.
    pub limit_identities: IntGauge,
    config_reloads: IntCounterVec,
    /// 1 while the config file last read is invalid.
    pub config_reload_failing: IntGauge,
    /// The trace exporter's spans (`traces:`).
    pub traces: TraceMetrics,
}

/// One upstream's series, resolved once so the request path does no label
/// lookup.
#[derive(Clone)]
pub struct UpstreamMetrics {
    /// 1 after a connection or response, 0 after a failure to connect.
    pub up: IntGauge,
    /// Time from sending a request to the response head.
    pub request_duration: Histogram,
    /// Response bodies ended for going idle.
    pub stream_idle: IntCounter,
    /// Requests that got no response head in time.
    pub timeout: IntCounter,
    /// Definitions seen or called that differ from their pin.
    pub pin_changed: IntCounter,
    /// Definitions seen or called that have no pin.
    pub pin_unpinned: IntCounter,
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::with_caller_labels(false)
    }

    /// With `caller_labels`, also `mcp_gateway_caller_decisions_total{caller,decision}`.
    pub fn with_caller_labels(caller_labels: bool) -> Metrics {
        let registry = Registry::new();
        let d = Defs(&registry);
        let m = Metrics {
            decisions: d.counters(DECISIONS),
            policy_decisions: PolicyDecisions::new(d.counters(POLICY_DECISIONS)),
            request_duration: d.histogram(REQUEST_DURATION, REQUEST_DURATION_BUCKETS),
            upstream_errors: d.counters(UPSTREAM_ERRORS),
            refused: d.counters(REFUSED),
            svid_expiry: d.float_gauge(SVID_EXPIRY),
            svid_rotations: d.counter(SVID_ROTATIONS),
            identity_updates: d.counter(IDENTITY_UPDATES),
            tls_handshake_failures: d.counter(TLS_HANDSHAKE_FAILURES),
            connections_open: d.gauge(CONNECTIONS_OPEN),
            connection_refusals: d.counters(CONNECTION_REFUSALS),
            accept_errors: d.counter(ACCEPT_ERRORS),
            audit_records: d.counter(AUDIT_RECORDS),
            audit_write_errors: d.counter(AUDIT_WRITE_ERRORS),
            audit_records_lost: d.counter(AUDIT_RECORDS_LOST),
            audit_failing: d.gauge(AUDIT_FAILING),
            audit_queued: d.gauge(AUDIT_QUEUED),
            ready: d.gauge(READY),
            policy_count: d.gauge(POLICY_COUNT),
            policy_reloads: d.counters(POLICY_RELOADS),
            session_key_reloads: d.counters(SESSION_KEY_RELOADS),
            policy_last_reload_success: d.float_gauge(POLICY_LAST_RELOAD_SUCCESS),
            policy_reload_failing: d.gauge(POLICY_RELOAD_FAILING),
            shadow_policy_count: d.gauge(SHADOW_POLICY_COUNT),
            shadow_disagreements: d.counters(SHADOW_DISAGREEMENTS),
            caller_decisions: caller_labels.then(|| d.counters(CALLER_DECISIONS)),
            trust_bundles: d.gauge(TRUST_BUNDLES),
            upstream_up: d.gauges(UPSTREAM_UP),
            upstream_request_duration: d
                .histograms(UPSTREAM_REQUEST_DURATION, UPSTREAM_REQUEST_DURATION_BUCKETS),
            pin_mismatches: d.counters(PIN_MISMATCHES),
            limited_total: d.counters(LIMITED),
            limit_identities: d.gauge(LIMIT_IDENTITIES),
            config_reloads: d.counters(CONFIG_RELOADS),
            config_reload_failing: d.gauge(CONFIG_RELOAD_FAILING),
            traces: TraceMetrics::register(&d),
            registry: registry.clone(),
        };
        m.zero_series();
        m
    }

    /// Exports the error series at 0 from the start, so a rate() or an
    /// alert on them works before the first error.
    fn zero_series(&self) {
        for kind in [
            "upstream_unavailable",
            "upstream_identity",
            "upstream_timeout",
            "upstream_stream_idle",
        ] {
            self.upstream_errors.with_label_values(&[kind]);
        }
        for result in ["success", "failure"] {
            self.policy_reloads.with_label_values(&[result]);
            self.session_key_reloads.with_label_values(&[result]);
            self.config_reloads.with_label_values(&[result]);
        }
        for reason in Reason::LIMITED {
            self.limited_total.with_label_values(&[reason.as_str()]);
        }
    }

    pub fn decision(&self, allowed: bool, method: &str, caller: &str) {
        let decision = if allowed { "allow" } else { "deny" };
        self.decisions
            .with_label_values(&[decision, metric_label(method)])
            .inc();
        if let Some(c) = &self.caller_decisions {
            c.with_label_values(&[caller, decision]).inc();
        }
    }

    /// The series of a loaded enforced set's policies (`@id`, and the
    /// decision each determines), made once per load; kept beside the
    /// engine, so counting a decision does no label lookup.
    pub fn policy_counts<'a>(
        &self,
        policies: impl IntoIterator<Item = (&'a str, DecisionReason)>,
    ) -> PolicyCounts {
        self.policy_decisions
            .resolve(policies, POLICY_ID_SERIES_CAP)
    }

    pub fn policy_reload(&self, success: bool) {
        let result = if success { "success" } else { "failure" };
        self.policy_reloads.with_label_values(&[result]).inc();
    }

    pub fn session_key_reload(&self, success: bool) {
        let result = if success { "success" } else { "failure" };
        self.session_key_reloads.with_label_values(&[result]).inc();
    }

    /// A message the shadow set decided differently; `allowed` is the
    /// enforced decision.
    pub fn shadow_disagreement(&self, allowed: bool, method: &str) {
        let decision = if allowed { "allow" } else { "deny" };
        self.shadow_disagreements
            .with_label_values(&[decision, metric_label(method)])
            .inc();
    }

    pub fn upstream_error(&self, kind: Reason) {
        self.upstream_errors
            .with_label_values(&[kind.as_str()])
            .inc();
    }

    /// The series of one configured upstream (created, so exported, now).
    pub fn upstream(&self, name: &str) -> UpstreamMetrics {
        UpstreamMetrics {
            up: self.upstream_up.with_label_values(&[name]),
            request_duration: self.upstream_request_duration.with_label_values(&[name]),
            stream_idle: self
                .upstream_errors
                .with_label_values(&["upstream_stream_idle"]),
            timeout: self
                .upstream_errors
                .with_label_values(&["upstream_timeout"]),
            pin_changed: self.pin_mismatches.with_label_values(&[name, "changed"]),
            pin_unpinned: self.pin_mismatches.with_label_values(&[name, "unpinned"]),
        }
    }

    /// A request or tool call refused by a per-identity limit.
    pub fn limited(&self, reason: Reason) {
        self.limited_total
            .with_label_values(&[reason.as_str()])
            .inc();
    }

    pub fn config_reload(&self, success: bool) {
        let result = if success { "success" } else { "failure" };
        self.config_reloads.with_label_values(&[result]).inc();
        self.config_reload_failing.set(i64::from(!success));
    }

    pub fn refused(&self, reason: Reason) {
        self.refused.with_label_values(&[reason.as_str()]).inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 * 1024);
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_exported_once() {
        let all = [
            DECISIONS,
            POLICY_DECISIONS,
            REQUEST_DURATION,
            UPSTREAM_ERRORS,
            REFUSED,
            SVID_EXPIRY,
            SVID_ROTATIONS,
            IDENTITY_UPDATES,
            TLS_HANDSHAKE_FAILURES,
            CONNECTIONS_OPEN,
            CONNECTION_REFUSALS,
            ACCEPT_ERRORS,
            AUDIT_RECORDS,
            AUDIT_WRITE_ERRORS,
            AUDIT_RECORDS_LOST,
            AUDIT_FAILING,
            READY,
            POLICY_COUNT,
            POLICY_RELOADS,
            POLICY_LAST_RELOAD_SUCCESS,
            POLICY_RELOAD_FAILING,
            SHADOW_POLICY_COUNT,
            SHADOW_DISAGREEMENTS,
            CALLER_DECISIONS,
            TRUST_BUNDLES,
            UPSTREAM_UP,
            UPSTREAM_REQUEST_DURATION,
            LIMITED,
            LIMIT_IDENTITIES,
            CONFIG_RELOADS,
            CONFIG_RELOAD_FAILING,
        ];
        for (i, (name, help, labels)) in all.iter().enumerate() {
            assert!(name.starts_with("mcp_gateway_"), "{name}");
            assert!(
                !help.is_empty() && labels.iter().all(|l| !l.is_empty()),
                "{name}"
            );
            assert!(all[i + 1..].iter().all(|d| d.0 != *name), "{name} twice");
        }
        // Defining and registering every one succeeds (names valid, unique).
        let text = String::from_utf8(Metrics::with_caller_labels(true).render()).unwrap();
        assert!(text.contains("# HELP mcp_gateway_ready "));
    }

    #[test]
    fn unknown_methods_share_one_label() {
        let m = Metrics::new();
        m.decision(false, "tools/call", "spiffe://example.org/a");
        m.decision(false, "x/evil-1", "spiffe://example.org/a");
        m.decision(false, "x/evil-2", "spiffe://example.org/a");
        let text = String::from_utf8(m.render()).unwrap();
        assert!(text.contains(r#"mcp_gateway_decisions_total{decision="deny",method="other"} 2"#));
        assert!(
            text.contains(r#"mcp_gateway_decisions_total{decision="deny",method="tools/call"} 1"#)
        );
        assert!(!text.contains("evil"));
        assert!(
            !text.contains("spiffe://"),
            "no SPIFFE ID labels unless opted in"
        );
    }

    #[test]
    fn upstream_series_exist_from_the_start_and_are_shared() {
        let m = Metrics::new();
        let demo = m.upstream("demo");
        let text = String::from_utf8(m.render()).unwrap();
        assert!(text.contains(r#"mcp_gateway_upstream_up{upstream="demo"} 0"#));
        assert!(text.contains(r#"mcp_gateway_upstream_errors_total{kind="upstream_timeout"} 0"#));
        demo.up.set(1);
        demo.request_duration.observe(0.002);
        demo.stream_idle.inc();
        let text = String::from_utf8(m.render()).unwrap();
        assert!(text.contains(r#"mcp_gateway_upstream_up{upstream="demo"} 1"#));
        assert!(
            text.contains(
                r#"mcp_gateway_upstream_request_duration_seconds_count{upstream="demo"} 1"#
            )
        );
        assert!(
            text.contains(r#"mcp_gateway_upstream_errors_total{kind="upstream_stream_idle"} 1"#)
        );
    }

    #[test]
    fn caller_labels_only_when_opted_in() {
        let m = Metrics::with_caller_labels(true);
        m.decision(true, "tools/call", "spiffe://example.org/a");
        let text = String::from_utf8(m.render()).unwrap();
        assert!(text.contains(
            r#"mcp_gateway_caller_decisions_total{caller="spiffe://example.org/a",decision="allow"} 1"#
        ));
    }
}
