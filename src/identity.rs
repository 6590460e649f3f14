//! The gateway's own identity: X.509-SVIDs and trust bundles from the SPIFFE
//! Workload API, turned into rustls configs for the listener and the upstream.
//!
//! `spiffe::X509Source` owns the Workload API stream. The configs' resolver
//! (`own_svid`) and verifiers (`client_auth` for callers, `upstream_auth`
//! for upstreams) read the source's current SVID and bundles on each
//! handshake, so a rotated SVID or bundle is used by the next handshake,
//! without a restart and without a window in which handshakes fail. Until
//! the first SVID arrives there are no configs: the listener refuses every
//! handshake and `/readyz` says not ready (fail closed). TLS session
//! resumption and tickets stay off: every handshake re-checks the peer
//! against the current bundle.
//!
//! Federation: the Workload API delivers the bundles of federated trust
//! domains beside the gateway's own; each peer is verified against
//! the bundle of the caller's own trust domain (taken from its SPIFFE ID,
//! then proved by the chain), so a partner's certificate never validates
//! against another domain's roots, and a trust domain without a bundle is
//! refused at the handshake. Which federated callers may do what is policy
//! (`principal.trust_domain`). The number of bundles held is exported.
//!
//! This module must never hand out a config built without an SVID, and never
//! report ready while the source has no usable SVID.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, ServerConfig};
use spiffe::x509_source::SvidPicker;
use spiffe::{X509BundleSet, X509Source, X509Svid};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::clock;
use crate::config::WorkloadApiConfig;
use crate::metrics::Metrics;

mod client_auth;
mod own_svid;
pub mod spiffe_id;
#[cfg(test)]
mod test_pki;
mod upstream_auth;

pub use client_auth::id_refusal;
pub(crate) use client_auth::verify_chain;

/// ALPN protocols offered by the listener: HTTP/2 preferred, HTTP/1.1 otherwise.
const LISTENER_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];
/// ALPN offered to the upstream.
const UPSTREAM_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// TLS configs built from a live source. Cheap to clone.
#[derive(Clone)]
pub struct TlsConfigs {
    pub server: Arc<ServerConfig>,
    source: X509Source,
    /// The gateway's certificate, shared by the listener and every upstream.
    own: Arc<own_svid::OwnSvid>,
    provider: Arc<CryptoProvider>,
    /// The gateway's own SPIFFE ID (the default JWT-SVID caller audience).
    pub spiffe_id: Arc<str>,
}

impl TlsConfigs {
    /// A client config from the same source that presents the current SVID
    /// and accepts exactly `spiffe_id` (an upstream's). Its resolver reads
    /// the source on each handshake, so it follows rotations.
    pub fn client_for(&self, spiffe_id: &str) -> Result<ClientConfig, ConfigError> {
        let expected = spiffe_id::canonical(spiffe_id)?;
        let verifier = upstream_auth::UpstreamVerifier::new(
            self.source.clone(),
            expected,
            Arc::clone(&self.provider),
        );
        let mut config = ClientConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_cert_resolver(Arc::clone(&self.own) as _);
        config.alpn_protocols = UPSTREAM_ALPN.iter().map(|p| p.to_vec()).collect();
        // No resumption: a resumed handshake skips the verifier, so every
        // connection is checked against the current bundle.
        config.resumption = rustls::client::Resumption::disabled();
        Ok(config)
    }

    /// Whether the source currently holds a usable SVID that has not expired.
    pub fn is_usable(&self) -> bool {
        self.source.is_healthy()
            && self
                .source
                .try_svid()
                .and_then(|svid| leaf_not_after(&svid))
                .is_some_and(|not_after| not_after > clock::unix_seconds())
    }
}

impl TlsConfigs {
    /// The SVID this process holds now (the one its listener and upstream
    /// connections present), or `None` while the source has none.
    pub fn svid(&self) -> Option<Arc<X509Svid>> {
        self.source.try_svid()
    }
}

/// Readiness and TLS configs, published once the first SVID has arrived.
#[derive(Clone)]
pub struct Identity {
    rx: watch::Receiver<Option<TlsConfigs>>,
    /// Counts the SVIDs this process has held: 0 before the first, +1 on
    /// each rotation. Pools of connections opened with an older SVID are
    /// replaced when it moves (`proxy::upstream::Pool`).
    svid_generation: Arc<AtomicU64>,
}

impl Identity {
    /// Starts fetching the SVID in the background and returns at once.
    /// `client_certs`: the listener's client-certificate mode (`Optional`
    /// only for `listener.jwt_svid_callers`).
    pub fn spawn(
        workload: WorkloadApiConfig,
        metrics: Metrics,
        client_certs: ClientCerts,
    ) -> Identity {
        let (tx, rx) = watch::channel(None);
        let svid_generation = Arc::new(AtomicU64::new(0));
        let generation = Arc::clone(&svid_generation);
        tokio::spawn(async move {
            let source = connect(&workload).await;
            match build_configs(source, client_certs) {
                Ok(configs) => {
                    watch_rotations(configs.source.clone(), metrics, generation);
                    let _ = tx.send(Some(configs));
                }
                // Only a missing crypto provider or a dead source reach here; the
                // gateway stays not ready, which is the fail-closed answer.
                Err(e) => warn!(error = %e, "building TLS configs from the SVID failed"),
            }
        });
        Identity {
            rx,
            svid_generation,
        }
    }

    /// An identity that never receives an SVID, with its generation counter
    /// in the test's hands (for code that only reads the generation).
    #[cfg(test)]
    pub(crate) fn without_source() -> (Identity, Arc<AtomicU64>) {
        let (_tx, rx) = watch::channel(None);
        let svid_generation = Arc::new(AtomicU64::new(1));
        let identity = Identity {
            rx,
            svid_generation: Arc::clone(&svid_generation),
        };
        (identity, svid_generation)
    }

    /// Which SVID this process holds: changes on every rotation. One atomic
    /// load, for the request path.
    pub fn svid_generation(&self) -> u64 {
        self.svid_generation.load(Ordering::Acquire)
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

/// Why TLS configs could not be built from the source.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("the Workload API has not issued an X.509-SVID")]
    NoSvid,
    #[error("upstream SPIFFE ID: {0}")]
    Id(#[from] spiffe_id::IdError),
    #[error("TLS config: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Whether the listener requires a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCerts {
    /// mTLS only: a handshake without a client certificate fails.
    Required,
    /// A handshake without a client certificate succeeds (the caller must
    /// then present a JWT-SVID per request); a certificate that is sent is
    /// verified exactly as with `Required`.
    Optional,
}

fn build_configs(source: X509Source, client_certs: ClientCerts) -> Result<TlsConfigs, ConfigError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let own = Arc::new(own_svid::OwnSvid::new(
        source.clone(),
        Arc::clone(&provider),
    ));
    let mandatory = client_certs == ClientCerts::Required;
    let mut server = client_auth::server_config(
        Arc::clone(&own) as _,
        source.clone(),
        Arc::clone(&provider),
        mandatory,
    )?;
    server.alpn_protocols = LISTENER_ALPN.iter().map(|p| p.to_vec()).collect();
    let spiffe_id = source
        .try_svid()
        .map(|svid| Arc::from(svid.spiffe_id().to_string()))
        .ok_or(ConfigError::NoSvid)?;
    Ok(TlsConfigs {
        server: Arc::new(server),
        source,
        own,
        provider,
        spiffe_id,
    })
}

/// Exports SVID expiry and counts rotations (a new leaf certificate) in
/// the metrics and in `generation`.
fn watch_rotations(source: X509Source, metrics: Metrics, generation: Arc<AtomicU64>) {
    tokio::spawn(async move {
        let mut updates = source.updated();
        let mut current = source.try_svid();
        if let Some(svid) = &current {
            record_svid(svid, &metrics);
            generation.store(1, Ordering::Release);
        }
        let mut domains = record_bundles(&source, &metrics, Vec::new());
        while updates.changed().await.is_ok() {
            metrics.identity_updates.inc();
            domains = record_bundles(&source, &metrics, domains);
            let Some(svid) = source.try_svid() else {
                warn!("the Workload API withdrew the SVID; handshakes now fail");
                continue;
            };
            let rotated = current
                .as_ref()
                .is_none_or(|old| leaf_der(old) != leaf_der(&svid));
            if rotated {
                generation.fetch_add(1, Ordering::AcqRel);
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

/// Exports the number of trust bundles and logs the trust domains when the
/// set changes; returns the sorted set for the next comparison.
fn record_bundles(source: &X509Source, metrics: &Metrics, before: Vec<String>) -> Vec<String> {
    let Ok(set) = source.bundle_set() else {
        return before;
    };
    let domains = trust_domains(&set);
    metrics.trust_bundles.set(domains.len() as i64);
    if domains != before {
        info!(trust_domains = ?domains, "trust bundles from the Workload API");
    }
    domains
}

/// The trust domains of a bundle set, sorted.
fn trust_domains(set: &X509BundleSet) -> Vec<String> {
    let mut domains: Vec<String> = set.iter().map(|(td, _)| td.to_string()).collect();
    domains.sort_unstable();
    domains
}

fn leaf_der(svid: &X509Svid) -> &[u8] {
    svid.leaf().as_ref()
}

/// The leaf's notAfter as Unix seconds.
fn leaf_not_after(svid: &X509Svid) -> Option<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf_der(svid)).ok()?;
    Some(cert.validity().not_after.timestamp())
}

#[cfg(test)]
mod tests {
    use spiffe::{TrustDomain, X509Bundle};

    use super::*;

    #[test]
    fn trust_domains_lists_own_and_federated_bundles_sorted() {
        let mut set = X509BundleSet::new();
        assert!(trust_domains(&set).is_empty());
        for td in ["partner.test", "example.org", "partner.test"] {
            set.add_bundle(X509Bundle::new(TrustDomain::new(td).unwrap()));
        }
        assert_eq!(trust_domains(&set), ["example.org", "partner.test"]);
    }
}
