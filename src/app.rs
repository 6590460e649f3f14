//! The composition root: wires identity, policy, audit, metrics, the admin
//! listener and the gateway listener from a validated [`Config`], and returns
//! the bound addresses and a shutdown handle. `main` and the tests call the
//! same function (tests bind port 0).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::info;

use crate::admin::{self, Admin};
use crate::audit::AuditLog;
use crate::config::Config;
use crate::identity::Identity;
use crate::metrics::Metrics;
use crate::policy_store::PolicyStore;
use crate::proxy::{Gateway, listener};

/// A running gateway.
pub struct App {
    pub listen_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub identity: Identity,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// Loads policies, opens the audit sink, binds both listeners and starts
/// serving. Fails (before serving anything) if policies do not load.
pub async fn build(config: Config) -> anyhow::Result<App> {
    let metrics = Metrics::new();
    let policies = Arc::new(PolicyStore::load(&config.policy, metrics.clone())?);
    let audit =
        AuditLog::start(&config.audit, metrics.clone()).context("opening the audit sink")?;
    let identity = Identity::spawn(
        config.workload_api.clone(),
        &config.upstream,
        metrics.clone(),
    );

    let listener = TcpListener::bind(config.listener.address)
        .await
        .with_context(|| format!("binding listener.address {}", config.listener.address))?;
    let admin_listener = TcpListener::bind(config.admin.address)
        .await
        .with_context(|| format!("binding admin.address {}", config.admin.address))?;
    let listen_addr = listener.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;

    let gateway = Arc::new(Gateway::new(
        &config,
        identity.clone(),
        Arc::clone(&policies),
        audit,
        metrics.clone(),
    )?);
    let admin = Arc::new(Admin {
        identity: identity.clone(),
        metrics,
    });
    let (shutdown, watcher) = watch::channel(false);
    let tasks = vec![
        tokio::spawn(sweep_sessions(Arc::clone(&gateway), watcher.clone())),
        tokio::spawn(policies.watch(config.policy.watch_interval, watcher.clone())),
        tokio::spawn(listener::serve(listener, gateway, watcher.clone())),
        tokio::spawn(admin::serve(admin_listener, admin, watcher)),
    ];
    info!(%listen_addr, %admin_addr, upstream = %config.upstream.url, "gateway listening");
    Ok(App {
        listen_addr,
        admin_addr,
        identity,
        shutdown,
        tasks,
    })
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

impl App {
    /// Stops accepting, lets connections drain up to `deadline`, then returns.
    pub async fn shutdown(self, deadline: Duration) {
        let _ = self.shutdown.send(true);
        let _ = tokio::time::timeout(deadline, async {
            for task in self.tasks {
                let _ = task.await;
            }
        })
        .await;
    }
}
