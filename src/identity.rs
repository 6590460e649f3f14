//! The gateway's own identity: X.509-SVIDs and trust bundles from the SPIFFE
//! Workload API, turned into rustls configs for the listener and the upstream.
//!
//! `spiffe::X509Source` owns the Workload API stream; `spiffe-rustls` builds
//! configs whose resolvers and verifiers read the source's current material,
//! so a rotated SVID or bundle is used by the next handshake without a
//! restart. Until the first SVID arrives there are no configs: the listener
//! refuses every handshake and `/readyz` says not ready (fail closed). TLS
//! session resumption and tickets stay off (the spiffe-rustls default): every
//! handshake re-checks the peer against the current bundle.
//!
//! This module must never hand out a config built without an SVID, and never
//! report ready while the source has no usable SVID.

use std::sync::Arc;
use std::time::Duration;

use rustls::{ClientConfig, ServerConfig};
use spiffe::x509_source::SvidPicker;
use spiffe::{X509Source, X509Svid};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::{UpstreamConfig, WorkloadApiConfig};
use crate::metrics::Metrics;

/// ALPN protocols offered by the listener: HTTP/2 preferred, HTTP/1.1 otherwise.
const LISTENER_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];
/// ALPN offered to the upstream.
const UPSTREAM_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// TLS configs built from a live source. Cheap to clone.
#[derive(Clone)]
pub struct TlsConfigs {
    pub server: Arc<ServerConfig>,
    pub upstream: Arc<ClientConfig>,
    source: X509Source,
}

impl TlsConfigs {
    /// A client config from the same source that accepts exactly
    /// `spiffe_id`: for an upstream other than the one `upstream` is for.
    pub fn client_for(&self, spiffe_id: &str) -> Result<ClientConfig, spiffe_rustls::Error> {
        spiffe_rustls::mtls_client(self.source.clone())
            .authorize(spiffe_rustls::exact([spiffe_id])?)
            .with_alpn_protocols(UPSTREAM_ALPN)
            .build()
    }

    /// Whether the source currently holds a usable SVID that has not expired.
    pub fn is_usable(&self) -> bool {
        self.source.is_healthy()
            && self
                .source
                .try_svid()
                .and_then(|svid| leaf_not_after(&svid))
                .is_some_and(|not_after| not_after > unix_now())
    }
}

/// Readiness and TLS configs, published once the first SVID has arrived.
#[derive(Clone)]
pub struct Identity {
    rx: watch::Receiver<Option<TlsConfigs>>,
}

impl Identity {
    /// Starts fetching the SVID in the background and returns at once.
    pub fn spawn(
        workload: WorkloadApiConfig,
        upstream: &UpstreamConfig,
        metrics: Metrics,
    ) -> Identity {
        let (tx, rx) = watch::channel(None);
        let expected = upstream.spiffe_id.to_string();
        tokio::spawn(async move {
            let source = connect(&workload).await;
            match build_configs(source, &expected) {
                Ok(configs) => {
                    watch_rotations(configs.source.clone(), metrics);
                    let _ = tx.send(Some(configs));
                }
                // Only a missing crypto provider or a dead source reach here; the
                // gateway stays not ready, which is the fail-closed answer.
                Err(e) => warn!(error = %e, "building TLS configs from the SVID failed"),
            }
        });
        Identity { rx }
    }

    /// The current configs, or `None` while no SVID has arrived.
    pub fn current(&self) -> Option<TlsConfigs> {
        self.rx.borrow().clone()
    }

    /// Ready means an SVID is held and usable now.
    pub fn is_ready(&self) -> bool {
        self.rx.borrow().as_ref().is_some_and(TlsConfigs::is_usable)
    }

    /// Waits until the first SVID has arrived (for tests and startup logs).
    pub async fn wait_ready(&mut self) {
        let _ = self.rx.wait_for(Option::is_some).await;
    }
}

/// Picks the SVID carrying the configured Workload API hint.
#[derive(Debug)]
struct HintPicker(String);

impl SvidPicker for HintPicker {
    fn pick_svid(&self, svids: &[Arc<X509Svid>]) -> Option<usize> {
        svids.iter().position(|s| s.hint() == Some(self.0.as_str()))
    }
}

/// Connects to the Workload API, retrying until an SVID is issued.
async fn connect(workload: &WorkloadApiConfig) -> X509Source {
    let mut backoff = Duration::from_millis(200);
    loop {
        let mut builder = X509Source::builder().endpoint(&workload.endpoint);
        if let Some(hint) = &workload.svid_hint {
            builder = builder.picker(HintPicker(hint.clone()));
        }
        match builder.build().await {
            Ok(source) => {
                info!(endpoint = %workload.endpoint, "X.509-SVID received from the Workload API");
                return source;
            }
            Err(e) => {
                warn!(error = %e, endpoint = %workload.endpoint, "no X.509-SVID yet; not ready");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

fn build_configs(
    source: X509Source,
    upstream_id: &str,
) -> Result<TlsConfigs, spiffe_rustls::Error> {
    let server = spiffe_rustls::mtls_server(source.clone())
        .with_alpn_protocols(LISTENER_ALPN)
        .build()?;
    let upstream = spiffe_rustls::mtls_client(source.clone())
        .authorize(spiffe_rustls::exact([upstream_id])?)
        .with_alpn_protocols(UPSTREAM_ALPN)
        .build()?;
    Ok(TlsConfigs {
        server: Arc::new(server),
        upstream: Arc::new(upstream),
        source,
    })
}

/// Exports SVID expiry and counts rotations (a new leaf certificate).
fn watch_rotations(source: X509Source, metrics: Metrics) {
    tokio::spawn(async move {
        let mut updates = source.updated();
        let mut current = source.try_svid();
        if let Some(svid) = &current {
            record_svid(svid, &metrics);
        }
        while updates.changed().await.is_ok() {
            metrics.identity_updates.inc();
            let Some(svid) = source.try_svid() else {
                warn!("the Workload API withdrew the SVID; handshakes now fail");
                continue;
            };
            let rotated = current
                .as_ref()
                .is_none_or(|old| leaf_der(old) != leaf_der(&svid));
            if rotated {
                metrics.svid_rotations.inc();
                info!(spiffe_id = %svid.spiffe_id(), "X.509-SVID rotated");
            }
            record_svid(&svid, &metrics);
            current = Some(svid);
        }
        warn!("the X.509 source stopped; no further rotations");
    });
}

fn record_svid(svid: &X509Svid, metrics: &Metrics) {
    if let Some(not_after) = leaf_not_after(svid) {
        metrics.svid_expiry.set(not_after as f64);
    }
}

fn leaf_der(svid: &X509Svid) -> &[u8] {
    svid.leaf().as_ref()
}

/// The leaf's notAfter as Unix seconds.
fn leaf_not_after(svid: &X509Svid) -> Option<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf_der(svid)).ok()?;
    Some(cert.validity().not_after.timestamp())
}

pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
