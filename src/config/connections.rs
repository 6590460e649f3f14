//! `connections:`: how long a client may take and how many connections it
//! may hold. Slow or idle clients must not hold the gateway's connections
//! for as long as their certificate lives, and one identity must not take
//! every connection.
//!
//! Defaults follow nginx and Envoy where they agree: header and body reads
//! bounded (nginx: 60 s each; here 30 s for headers, hyper's own default),
//! keep-alive idle 75 s (nginx), HTTP/2 pings every 60 s with 20 s to
//! answer, at most 10,000 connections and 1,000 per identity.

use std::time::Duration;

use anyhow::bail;
use serde::Deserialize;

/// The validated `connections:` section.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionsConfig {
    /// A request head must arrive whole within this. On HTTP/1.1 hyper
    /// starts the clock when it starts waiting for a head, so it also ends
    /// an idle keep-alive connection.
    pub header_read_timeout: Duration,
    /// A request body must arrive whole within this (408 beyond it).
    pub body_read_timeout: Duration,
    /// A connection with no bytes either way for this long is asked to
    /// close (HTTP/1.1: closed when idle; HTTP/2: GOAWAY).
    pub idle_timeout: Duration,
    /// HTTP/2 PING interval, and how long the client has to answer.
    pub http2_keepalive_interval: Duration,
    pub http2_keepalive_timeout: Duration,
    /// Connections at once (TLS handshakes in progress included).
    pub max_connections: usize,
    /// Connections at once of one SPIFFE ID (after the handshake).
    pub max_connections_per_identity: usize,
    /// When, as a fraction of the peer certificate's remaining lifetime at
    /// the handshake, the client is asked to reconnect (HTTP/1.1
    /// `Connection: close`, HTTP/2 GOAWAY), so it comes back with its
    /// rotated SVID before the old one expires.
    pub reconnect_after_fraction: f64,
    /// The largest request head (request line and headers) accepted, in
    /// bytes; 431 beyond it. It also bounds an HTTP/1.1 connection's read
    /// buffer, most of what an idle connection holds.
    pub max_request_head_bytes: usize,
}

/// hyper's floor for its HTTP/1.1 read buffer.
const MIN_REQUEST_HEAD_BYTES: usize = 8 * 1024;
const MAX_REQUEST_HEAD_BYTES: usize = 1024 * 1024;

impl Default for ConnectionsConfig {
    fn default() -> ConnectionsConfig {
        ConnectionsConfig {
            header_read_timeout: Duration::from_secs(30),
            body_read_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(75),
            http2_keepalive_interval: Duration::from_secs(60),
            http2_keepalive_timeout: Duration::from_secs(20),
            max_connections: 10_000,
            max_connections_per_identity: 1_000,
            reconnect_after_fraction: 0.8,
            max_request_head_bytes: MIN_REQUEST_HEAD_BYTES,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConnections {
    header_read_timeout_seconds: Option<u64>,
    body_read_timeout_seconds: Option<u64>,
    idle_timeout_seconds: Option<u64>,
    http2_keepalive_interval_seconds: Option<u64>,
    http2_keepalive_timeout_seconds: Option<u64>,
    max_connections: Option<usize>,
    max_connections_per_identity: Option<usize>,
    reconnect_after_fraction: Option<f64>,
    max_request_head_bytes: Option<usize>,
}

impl RawConnections {
    pub(super) fn validate(self) -> anyhow::Result<ConnectionsConfig> {
        let d = ConnectionsConfig::default();
        let seconds = |field: &str, value: Option<u64>, default: Duration| match value {
            None => Ok(default),
            Some(0) => bail!("connections.{field}: must be greater than 0"),
            Some(n) if n > 86_400 => bail!("connections.{field}: at most 86400 (one day)"),
            Some(n) => Ok(Duration::from_secs(n)),
        };
        let max_connections = match self.max_connections {
            None => d.max_connections,
            Some(0) => bail!("connections.max_connections: must be greater than 0"),
            Some(n) => n,
        };
        let max_connections_per_identity = match self.max_connections_per_identity {
            None => d.max_connections_per_identity.min(max_connections),
            Some(0) => bail!("connections.max_connections_per_identity: must be greater than 0"),
            Some(n) if n > max_connections => bail!(
                "connections.max_connections_per_identity: {n} is more than connections.max_connections ({max_connections})"
            ),
            Some(n) => n,
        };
        let reconnect_after_fraction = match self.reconnect_after_fraction {
            None => d.reconnect_after_fraction,
            Some(f) if f > 0.0 && f <= 1.0 => f,
            Some(f) => bail!("connections.reconnect_after_fraction: {f} is not in (0, 1]"),
        };
        Ok(ConnectionsConfig {
            header_read_timeout: seconds(
                "header_read_timeout_seconds",
                self.header_read_timeout_seconds,
                d.header_read_timeout,
            )?,
            body_read_timeout: seconds(
                "body_read_timeout_seconds",
                self.body_read_timeout_seconds,
                d.body_read_timeout,
            )?,
            idle_timeout: seconds(
                "idle_timeout_seconds",
                self.idle_timeout_seconds,
                d.idle_timeout,
            )?,
            http2_keepalive_interval: seconds(
                "http2_keepalive_interval_seconds",
                self.http2_keepalive_interval_seconds,
                d.http2_keepalive_interval,
            )?,
            http2_keepalive_timeout: seconds(
                "http2_keepalive_timeout_seconds",
                self.http2_keepalive_timeout_seconds,
                d.http2_keepalive_timeout,
            )?,
            max_connections,
            max_connections_per_identity,
            reconnect_after_fraction,
            max_request_head_bytes: request_head_bytes(self.max_request_head_bytes)?,
        })
    }
}

fn request_head_bytes(value: Option<usize>) -> anyhow::Result<usize> {
    match value {
        None => Ok(ConnectionsConfig::default().max_request_head_bytes),
        Some(n) if (MIN_REQUEST_HEAD_BYTES..=MAX_REQUEST_HEAD_BYTES).contains(&n) => Ok(n),
        Some(n) => bail!(
            "connections.max_request_head_bytes: {n} is not in [{MIN_REQUEST_HEAD_BYTES}, {MAX_REQUEST_HEAD_BYTES}]"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> anyhow::Result<ConnectionsConfig> {
        let raw: RawConnections = serde_yaml_ng::from_str(yaml)?;
        raw.validate()
    }

    #[test]
    fn defaults_and_overrides() {
        assert_eq!(parse("{}").unwrap(), ConnectionsConfig::default());
        let c = parse(
            "header_read_timeout_seconds: 5\nbody_read_timeout_seconds: 6\nidle_timeout_seconds: 7\n\
             http2_keepalive_interval_seconds: 8\nhttp2_keepalive_timeout_seconds: 9\n\
             max_connections: 100\nmax_connections_per_identity: 10\nreconnect_after_fraction: 0.5\n\
             max_request_head_bytes: 65536\n",
        )
        .unwrap();
        assert_eq!(c.header_read_timeout, Duration::from_secs(5));
        assert_eq!(c.body_read_timeout, Duration::from_secs(6));
        assert_eq!(c.idle_timeout, Duration::from_secs(7));
        assert_eq!(c.http2_keepalive_interval, Duration::from_secs(8));
        assert_eq!(c.http2_keepalive_timeout, Duration::from_secs(9));
        assert_eq!(
            (c.max_connections, c.max_connections_per_identity),
            (100, 10)
        );
        assert_eq!(c.reconnect_after_fraction, 0.5);
        assert_eq!(c.max_request_head_bytes, 65536);
        // The per-identity default never exceeds a smaller total.
        assert_eq!(
            parse("max_connections: 50")
                .unwrap()
                .max_connections_per_identity,
            50
        );
    }

    #[test]
    fn bad_values_name_the_field() {
        let cases = [
            (
                "header_read_timeout_seconds: 0",
                "connections.header_read_timeout_seconds",
            ),
            (
                "idle_timeout_seconds: 100000",
                "connections.idle_timeout_seconds",
            ),
            ("max_connections: 0", "connections.max_connections"),
            (
                "max_connections: 10\nmax_connections_per_identity: 11",
                "connections.max_connections_per_identity",
            ),
            (
                "reconnect_after_fraction: 0",
                "connections.reconnect_after_fraction",
            ),
            (
                "reconnect_after_fraction: 1.5",
                "connections.reconnect_after_fraction",
            ),
            (
                "max_request_head_bytes: 8191",
                "connections.max_request_head_bytes: 8191 is not in [8192, 1048576]",
            ),
            (
                "max_request_head_bytes: 1048577",
                "connections.max_request_head_bytes",
            ),
            ("max_request_head_bytes: -1", "invalid type"),
            ("max_conections: 1", "unknown field"),
        ];
        for (yaml, want) in cases {
            let err = parse(yaml).unwrap_err().to_string();
            assert!(err.contains(want), "{yaml}: {err}");
        }
    }
}
