//! The accept loop of every listener, and what it does when accepting
//! fails.
//!
//! `accept()` fails when the process or the system is out of file
//! descriptors (EMFILE, ENFILE), out of memory for sockets, or when a
//! connection was reset before it was taken. Retrying at once would turn
//! that into a busy loop writing a log line per try (the gateway once wrote
//! ~222,000 a second at the open-files limit). So: back off (5 ms, doubling
//! to 1 s, as Go's `net/http` server does), count every failure in
//! `mcp_gateway_accept_errors_total`, and log at most one line per
//! [`LOG_EVERY`] with the number held back. A success resets the backoff.
//!
//! Must never: spin on a failing `accept`, or stop accepting for good
//! because of one.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus::IntCounter;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::proxy::Gateway;

/// First pause after a failed accept.
const FIRST_BACKOFF: Duration = Duration::from_millis(5);
/// Longest pause between two accepts while they keep failing.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// At most one log line per this long about failing accepts.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// The signals a listener follows.
#[derive(Clone)]
pub struct Lifecycle {
    /// Flips to true when the gateway starts draining: connections are
    /// asked to close (`proxy::http_conn`), new ones serve one request.
    pub drain: watch::Receiver<bool>,
    /// Flips to true when the listening socket is to close (after
    /// `shutdown.not_ready_delay_seconds`).
    pub stop: watch::Receiver<bool>,
}

/// Serves a listener until `lifecycle.stop` flips to true: each accepted
/// connection runs `connection` (the listener's own: handshake or not,
/// identity, then HTTP until it ends or drains) on `connections`, so
/// shutdown can wait for them to drain. Why a connection ended early is
/// logged at debug level.
pub(crate) async fn serve<F, Fut>(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    lifecycle: Lifecycle,
    connections: TaskTracker,
    connection: F,
) where
    F: Fn(TcpStream, Arc<Gateway>, watch::Receiver<bool>) -> Fut + Copy + Send + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let errors = gateway.metrics.accept_errors.clone();
    accept_loop(
        listener,
        lifecycle,
        connections,
        errors,
        move |tcp, addr, drain| {
            let gateway = Arc::clone(&gateway);
            // The connection's future is made inside the task's: made
            // outside and moved in, it would take its size twice in every
            // connection's task.
            async move {
                if let Err(reason) = connection(tcp, gateway, drain).await {
                    debug!(%addr, %reason, "connection ended");
                }
            }
        },
    )
    .await;
}

/// Accepts connections until `stop` flips to true, then drops the
/// listening socket (new connections are refused). Each accepted
/// connection runs `serve_one` (given the drain signal) on `connections`.
async fn accept_loop<F, Fut>(
    listener: TcpListener,
    lifecycle: Lifecycle,
    connections: TaskTracker,
    errors: IntCounter,
    serve_one: F,
) where
    F: Fn(TcpStream, SocketAddr, watch::Receiver<bool>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Lifecycle { drain, mut stop } = lifecycle;
    let mut failing = Failing::default();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stop| *stop) => return,
        };
        match accepted {
            Ok((tcp, addr)) => {
                failing.recovered();
                connections.spawn(serve_one(tcp, addr, drain.clone()));
            }
            Err(e) => {
                errors.inc();
                let pause = failing.failed(&e, Instant::now());
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = stop.wait_for(|stop| *stop) => return,
                }
            }
        }
    }
}

/// The state of a run of failed accepts: the next pause and the log limit.
#[derive(Debug, Default)]
struct Failing {
    /// The pause after the last failure; zero when the last accept worked.
    backoff: Duration,
    /// When a line was last logged, and how many failures since then were
    /// not logged.
    logged: Option<Instant>,
    held_back: u64,
}

impl Failing {
    /// Records a failure at `now`; returns how long to pause.
    fn failed(&mut self, e: &std::io::Error, now: Instant) -> Duration {
        self.backoff = if self.backoff.is_zero() {
            FIRST_BACKOFF
        } else {
            (self.backoff * 2).min(MAX_BACKOFF)
        };
        let due = self
            .logged
            .is_none_or(|at| now.duration_since(at) >= LOG_EVERY);
        if due {
            warn!(
                error = %e,
                not_logged_since_last = self.held_back,
                retry_in_ms = self.backoff.as_millis() as u64,
                "accepting a connection failed; backing off (counted in mcp_gateway_accept_errors_total)"
            );
            self.logged = Some(now);
            self.held_back = 0;
        } else {
            self.held_back += 1;
        }
        self.backoff
    }

    /// An accept worked: the next failure starts a new run.
    fn recovered(&mut self) {
        if !self.backoff.is_zero() {
            info!("accepting connections again");
            self.backoff = Duration::ZERO;
        }
    }
}

/// Raises this process's soft limit on open files to its hard limit, so a
/// gateway serving many connections does not stop at a low default
/// (often 1024). Returns the (before, after) soft limits when it changed.
pub fn raise_open_files_limit() -> std::io::Result<Option<(u64, u64)>> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let (Some(current), hard) = (limit.current, limit.maximum) else {
        return Ok(None); // unlimited already
    };
    let target = hard.unwrap_or(u64::MAX);
    if current >= target {
        return Ok(None);
    }
    let mut raised = limit;
    raised.current = hard;
    setrlimit(Resource::Nofile, raised)?;
    Ok(Some((current, target)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emfile() -> std::io::Error {
        std::io::Error::from_raw_os_error(24)
    }

    #[test]
    fn failures_back_off_from_5ms_doubling_to_1s_and_reset_on_success() {
        let mut failing = Failing::default();
        let now = Instant::now();
        let pauses: Vec<u64> = (0..12)
            .map(|_| failing.failed(&emfile(), now).as_millis() as u64)
            .collect();
        assert_eq!(
            pauses,
            [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000, 1000]
        );
        failing.recovered();
        assert_eq!(failing.failed(&emfile(), now), FIRST_BACKOFF);
    }

    #[test]
    fn at_most_one_log_line_per_interval() {
        let mut failing = Failing::default();
        let start = Instant::now();
        failing.failed(&emfile(), start);
        assert_eq!((failing.logged, failing.held_back), (Some(start), 0));
        for _ in 0..1000 {
            failing.failed(&emfile(), start + Duration::from_secs(1));
        }
        assert_eq!((failing.logged, failing.held_back), (Some(start), 1000));
        let later = start + LOG_EVERY;
        failing.failed(&emfile(), later);
        assert_eq!((failing.logged, failing.held_back), (Some(later), 0));
    }
}
