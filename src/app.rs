//! The composition root: wires identity, policy, audit, metrics, the admin
//! listener and the gateway listener from a validated [`Config`], and returns
//! the bound addresses and a shutdown handle. `main` and the tests call the
//! same function (tests bind port 0).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::admin::{self, Admin};
use crate::audit::AuditLog;
use crate::config::{Config, ProcessEnv};
use crate::identity::{ClientCerts, Identity};
use crate::limits::reload::{self, Reloader};
use crate::metrics::Metrics;
use crate::policy_store::PolicyStore;
use crate::proxy::upstream::Upstream;
use crate::proxy::{Gateway, Lifecycle, listener, loopback};
use crate::telemetry::{ExportHandle, Tracer};

/// A running gateway.
pub struct App {
    pub listen_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub identity: Identity,
    /// Asks the gateway's connections to close (`Connection: close`,
    /// GOAWAY) once in-flight requests finish.
    start_draining: watch::Sender<bool>,
    /// After `shutdown.not_ready_delay_seconds`: closes the listening socket.
    stop_accepting: watch::Sender<bool>,
    not_ready_delay: Duration,
    /// Stops the admin listener and background tasks, after the drain.
    shutdown: watch::Sender<bool>,
    draining: Arc<AtomicBool>,
    connections: TaskTracker,
    listener_task: JoinHandle<()>,
    tasks: Vec<JoinHandle<()>>,
    /// The trace export task (`traces:` on), flushed at shutdown.
    traces: Option<ExportHandle>,
}

/// Loads policies, opens the audit sink, binds both listeners and starts
/// serving. Fails (before serving anything) if policies do not load.
pub async fn build(config: Config) -> anyhow::Result<App> {
    let metrics = Metrics::with_caller_labels(config.metrics_caller_labels);
    let policies = Arc::new(PolicyStore::load(&config.policy, metrics.clone())?);
    let identity = spawn_identity(&config, &metrics);
    // The writer signs checkpoints with the current SVID, read on its own
    // thread when one is due.
    let audit = AuditLog::start(&config.audit, metrics.clone(), Box::new(identity.clone()))
        .context("opening the audit sink")?;

    let (listener, admin_listener) = bind(&config).await?;
    let listen_addr = listener.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;

    let (gateway, traces) = gateway(&config, &identity, &policies, &audit, &metrics)?;
    let draining = Arc::new(AtomicBool::new(false));
    let admin = admin_state(&identity, metrics, &draining, &audit);
    let (shutdown, watcher) = watch::channel(false);
    let (stop_accepting, stop) = watch::channel(false);
    let (start_draining, drain) = watch::channel(false);
    let lifecycle = Lifecycle { drain, stop };
    let connections = TaskTracker::new();
    let listener_task = tokio::spawn(serve(
        config.listener.plaintext_loopback,
        listener,
        Arc::clone(&gateway),
        lifecycle,
        connections.clone(),
    ));
    let mut tasks = background(&config, &gateway, &policies, audit, &watcher);
    tasks.push(tokio::spawn(admin::serve(admin_listener, admin, watcher)));
    info!(
        %listen_addr,
        %admin_addr,
        upstreams = config.upstreams.len(),
        plaintext_loopback = config.listener.plaintext_loopback,
        "gateway listening"
    );
    Ok(App {
        listen_addr,
        admin_addr,
        identity,
        stop_accepting,
        start_draining,
        not_ready_delay: config.not_ready_delay,
        shutdown,
        draining,
        connections,
        listener_task,
        tasks,
        traces,
    })
}

/// The request path over every upstream; with `traces:` on, its tracer and
/// the running export task.
fn gateway(
    config: &Config,
    identity: &Identity,
    policies: &Arc<PolicyStore>,
    audit: &AuditLog,
    metrics: &Metrics,
) -> anyhow::Result<(Arc<Gateway>, Option<ExportHandle>)> {
    let gateway = Gateway::new(
        config,
        identity.clone(),
        Arc::clone(policies),
        audit.clone(),
        metrics.clone(),
    )?;
    let Some(traces) = &config.traces else {
        return Ok((Arc::new(gateway), None));
    };
    let (tracer, exporter) = Tracer::new(traces, metrics.traces.clone());
    let gateway = Arc::new(gateway.with_tracer(tracer));
    Ok((gateway, Some(exporter.start()?)))
}

/// What the admin listener reads: readiness, metrics, draining, audit health.
fn admin_state(
    identity: &Identity,
    metrics: Metrics,
    draining: &Arc<AtomicBool>,
    audit: &AuditLog,
) -> Arc<Admin> {
    Arc::new(Admin {
        identity: identity.clone(),
        metrics,
        draining: Arc::clone(draining),
        audit: audit.clone(),
    })
}

/// The tasks that run beside the listeners until `shutdown`: the session
/// sweep, the policy watch, audit reopening on SIGHUP, upstream probes,
/// the per-identity limits' sweep and their reload with the config file.
fn background(
    config: &Config,
    gateway: &Arc<Gateway>,
    policies: &Arc<PolicyStore>,
    audit: AuditLog,
    shutdown: &watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    let mut tasks = vec![
        tokio::spawn(sweep_sessions(Arc::clone(gateway), shutdown.clone())),
        tokio::spawn(Arc::clone(policies).watch(config.policy.watch_interval, shutdown.clone())),
        tokio::spawn(reopen_audit_on_sighup(audit, shutdown.clone())),
        tokio::spawn(Arc::clone(&gateway.session_keys).watch(
            config.sessions.keys_watch_interval,
            gateway.metrics.clone(),
            shutdown.clone(),
        )),
        tokio::spawn(reload::sweep(Arc::clone(&gateway.limits), shutdown.clone())),
    ];
    if let Some(path) = &config.source {
        // The config file as `main` read it, environment included.
        let limits = Arc::clone(&gateway.limits);
        let reloader = Reloader::new(
            limits,
            gateway.metrics.clone(),
            path.clone(),
            Box::new(ProcessEnv),
        );
        let watch = reloader.watch(config.policy.watch_interval, shutdown.clone());
        tasks.push(tokio::spawn(watch));
    }
    for up in gateway.upstreams() {
        let probe = probe_upstream(Arc::clone(up), shutdown.clone());
        tasks.push(tokio::spawn(probe));
    }
    tasks
}

/// The gateway's own identity, fetched in the background; a client
/// certificate is optional only with `listener.jwt_svid_callers`.
fn spawn_identity(config: &Config, metrics: &Metrics) -> Identity {
    let client_certs = match config.listener.jwt_svid_callers {
        Some(_) => ClientCerts::Optional,
        None => ClientCerts::Required,
    };
    Identity::spawn(config.workload_api.clone(), metrics.clone(), client_certs)
}

/// Binds the gateway's listener and the admin listener. Checked in config
/// already, and again on the bound socket: a plain listener anywhere but
/// loopback would hand out the SVID to anyone.
async fn bind(config: &Config) -> anyhow::Result<(TcpListener, TcpListener)> {
    let listener = TcpListener::bind(config.listener.address)
        .await
        .with_context(|| format!("binding listener.address {}", config.listener.address))?;
    let admin = TcpListener::bind(config.admin.address)
        .await
        .with_context(|| format!("binding admin.address {}", config.admin.address))?;
    let bound = listener.local_addr()?;
    if config.listener.plaintext_loopback && !bound.ip().is_loopback() {
        anyhow::bail!("listener.address: plain HTTP bound {bound}, which is not loopback");
    }
    Ok((listener, admin))
}

/// Serves the gateway's listener: the client sidecar's plain loopback one,
/// or mTLS.
async fn serve(
    plaintext_loopback: bool,
    listener: TcpListener,
    gateway: Arc<Gateway>,
    lifecycle: Lifecycle,
    connections: TaskTracker,
) {
    if plaintext_loopback {
        loopback::serve(listener, gateway, lifecycle, connections).await;
    } else {
        listener::serve(listener, gateway, lifecycle, connections).await;
    }
}

/// How often idle and expired sessions are looked for.
const SESSION_SWEEP: Duration = Duration::from_secs(10);

async fn sweep_sessions(gateway: Arc<Gateway>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(SESSION_SWEEP);
    loop {
        tokio::select! {
            _ = tick.tick() => gateway.sweep_sessions().await,
            _ = shutdown.changed() => return,
        }
    }
}

/// SIGHUP (also a policy reload, see `PolicyStore::watch`): the audit
/// file is reopened before the next write, for logrotate's `postrotate`.
async fn reopen_audit_on_sighup(audit: AuditLog, mut shutdown: watch::Receiver<bool>) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot listen for SIGHUP; the audit file is reopened only when its path changes");
            return;
        }
    };
    loop {
        tokio::select! {
            Some(()) = hangup.recv() => {
                info!("SIGHUP: reopening the audit file before its next write");
                audit.reopen();
            }
            _ = shutdown.changed() => return,
        }
    }
}

/// Probes an upstream's health until shutdown (at once, then every
/// `upstream.health_check_interval_seconds`); returns at once when off.
async fn probe_upstream(upstream: Arc<Upstream>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let Some(every) = upstream.probe().await else {
            return;
        };
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
    }
}

impl App {
    /// Graceful shutdown: `/readyz` turns 503 and connections are asked to
    /// close; after `shutdown.not_ready_delay_seconds` the listening socket
    /// closes (new connections are refused); in-flight requests and streams
    /// finish up to `deadline`; then the admin listener and background
    /// tasks stop.
    /// Returns whether every connection finished in time.
    pub async fn shutdown(self, deadline: Duration) -> bool {
        self.draining.store(true, Ordering::Relaxed);
        let _ = self.start_draining.send(true);
        if !self.not_ready_delay.is_zero() {
            // Load balancers still sending here have time to see the 503;
            // what they send meanwhile is served, one request a connection.
            info!(
                delay_seconds = self.not_ready_delay.as_secs(),
                "not ready; the listener closes after the delay"
            );
            tokio::time::sleep(self.not_ready_delay).await;
        }
        let _ = self.stop_accepting.send(true);
        let _ = self.listener_task.await;
        self.connections.close();
        let in_flight = self.connections.len();
        info!(
            connections = in_flight,
            deadline_seconds = deadline.as_secs(),
            "draining"
        );
        let drain_started = tokio::time::Instant::now();
        let drained = tokio::time::timeout(deadline, self.connections.wait())
            .await
            .is_ok();
        if drained {
            info!("drained");
        } else {
            warn!(
                connections = self.connections.len(),
                "drain deadline passed; closing the remaining connections"
            );
        }
        if let Some(traces) = self.traces {
            // The spans of the drained requests: what remains of the drain
            // deadline, at least the second background tasks get.
            let left = deadline.saturating_sub(drain_started.elapsed());
            traces.flush(left.max(Duration::from_secs(1))).await;
        }
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(1), task).await;
        }
        drained
    }
}
