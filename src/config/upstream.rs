//! `upstream:`, `upstreams:` and `aggregate:`: the upstreams a gateway
//! forwards to, each with its exact SPIFFE ID, URL and connection settings,
//! and the aggregated endpoint over some of them. Names unique and plain,
//! SPIFFE IDs unique, plain HTTP only to a declared loopback address.

use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use hyper::header::HeaderName;
use serde::Deserialize;
use spiffe::SpiffeId;

use super::{Routing, parse_spiffe_id};
use crate::pins::PinMode;

/// `aggregate:`: one endpoint, `<listener.path>/<name>`, presenting the
/// tools of several upstreams as `<upstream>__<tool>`.
#[derive(Debug, Clone)]
pub struct AggregateConfig {
    pub name: String,
    /// Names of `upstreams:` entries, in the order given.
    pub upstreams: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// The name policies use: `Mcp::Server::"<name>"`.
    pub name: String,
    pub url: url::Url,
    /// The exact SPIFFE ID the upstream must present.
    pub spiffe_id: SpiffeId,
    /// Plain HTTP to a loopback address (a server sidecar in the same pod).
    pub plaintext: bool,
    /// If set, the gateway sends the verified caller SPIFFE ID to the
    /// upstream in this header (a caller-sent header of that name is dropped).
    pub caller_id_header: Option<HeaderName>,
    /// Timeouts, pooling and the health probe of the connection.
    pub connection: UpstreamConnection,
    /// Tool-definition pinning: off, audit or enforce (`crate::pins`).
    pub pins: PinMode,
}

/// How the gateway connects to an upstream: timeouts, pool, health probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamConnection {
    /// TCP connect plus TLS handshake.
    pub connect_timeout: Duration,
    /// From sending a request until the upstream's response head (this
    /// includes connecting).
    pub request_timeout: Duration,
    /// A response body (SSE stream or JSON) that sends no byte this long
    /// is ended.
    pub stream_idle_timeout: Duration,
    /// An idle pooled connection is closed after this long.
    pub pool_idle_timeout: Duration,
    /// Idle connections kept per upstream (0: no reuse).
    pub pool_max_idle: usize,
    /// How often a connection (TCP + mTLS with the identity check) is tried
    /// to export `mcp_gateway_upstream_up`; `None`: only real calls count.
    pub health_check_interval: Option<Duration>,
}

impl Default for UpstreamConnection {
    fn default() -> Self {
        UpstreamConnection {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            stream_idle_timeout: Duration::from_secs(300),
            pool_idle_timeout: Duration::from_secs(60),
            pool_max_idle: 64,
            health_check_interval: Some(Duration::from_secs(10)),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAggregate {
    name: String,
    upstreams: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    name: String,
    url: String,
    spiffe_id: Option<String>,
    #[serde(default)]
    plaintext_loopback: bool,
    caller_id_header: Option<String>,
    connect_timeout_seconds: Option<u64>,
    request_timeout_seconds: Option<u64>,
    stream_idle_timeout_seconds: Option<u64>,
    pool_idle_timeout_seconds: Option<u64>,
    pool_max_idle_connections: Option<usize>,
    health_check_interval_seconds: Option<u64>,
    #[serde(default)]
    pins: PinMode,
}

impl RawUpstream {
    pub(super) fn validate(self) -> anyhow::Result<UpstreamConfig> {
        let connection = self.connection()?;
        if self.name.is_empty() || self.name.contains('/') || self.name.contains('"') {
            bail!("upstream.name: must be non-empty and contain no '/' or '\"'");
        }
        let url = url::Url::parse(&self.url).map_err(|e| anyhow!("upstream.url: {e}"))?;
        if url.host_str().is_none() || !url.username().is_empty() || url.password().is_some() {
            bail!("upstream.url: needs a host and no user info");
        }
        if url.query().is_some() || url.fragment().is_some() {
            bail!("upstream.url: must not have a query or fragment");
        }
        let plaintext = match (url.scheme(), self.plaintext_loopback) {
            ("https", false) => false,
            ("https", true) => bail!("upstream.plaintext_loopback: set, but the url is https"),
            ("http", true) if is_loopback(&url) => true,
            ("http", true) => bail!("upstream.url: plain http is only allowed to a loopback IP"),
            ("http", false) => bail!(
                "upstream.url: plain http needs `plaintext_loopback: true` (a sidecar on loopback)"
            ),
            (s, _) => bail!("upstream.url: scheme {s:?} is not https or http"),
        };
        let spiffe_id = match (self.spiffe_id, plaintext) {
            (Some(id), _) => parse_spiffe_id("upstream.spiffe_id", &id)?,
            (None, true) => bail!(
                "upstream.spiffe_id: required (it names the local server in audit and policy)"
            ),
            (None, false) => bail!("upstream.spiffe_id: required for an mTLS upstream"),
        };
        let caller_id_header = match self.caller_id_header {
            None => None,
            Some(h) => Some(parse_caller_header(&h)?),
        };
        Ok(UpstreamConfig {
            name: self.name,
            url,
            spiffe_id,
            plaintext,
            caller_id_header,
            connection,
            pins: self.pins,
        })
    }

    /// Timeouts, pool and probe: each within bounds, and a request timeout
    /// no shorter than the connect timeout it includes.
    fn connection(&self) -> anyhow::Result<UpstreamConnection> {
        let d = UpstreamConnection::default();
        let secs = |field: &str, value: Option<u64>, default: Duration, max: u64| match value {
            None => Ok(default),
            Some(0) => Err(anyhow!("upstream.{field}: must be greater than 0")),
            Some(n) if n > max => Err(anyhow!("upstream.{field}: at most {max}")),
            Some(n) => Ok(Duration::from_secs(n)),
        };
        let connect_timeout = secs(
            "connect_timeout_seconds",
            self.connect_timeout_seconds,
            d.connect_timeout,
            300,
        )?;
        let request_timeout = secs(
            "request_timeout_seconds",
            self.request_timeout_seconds,
            d.request_timeout,
            3600,
        )?;
        if request_timeout < connect_timeout {
            bail!(
                "upstream.request_timeout_seconds: must be at least connect_timeout_seconds \
                 (the request timeout includes connecting)"
            );
        }
        let stream_idle_timeout = secs(
            "stream_idle_timeout_seconds",
            self.stream_idle_timeout_seconds,
            d.stream_idle_timeout,
            86_400,
        )?;
        let pool_idle_timeout = secs(
            "pool_idle_timeout_seconds",
            self.pool_idle_timeout_seconds,
            d.pool_idle_timeout,
            3600,
        )?;
        let pool_max_idle = match self.pool_max_idle_connections {
            None => d.pool_max_idle,
            Some(n) if n > 10_000 => bail!("upstream.pool_max_idle_connections: at most 10000"),
            Some(n) => n,
        };
        let health_check_interval = match self.health_check_interval_seconds {
            None => d.health_check_interval,
            Some(0) => None,
            Some(n) if n > 3600 => bail!("upstream.health_check_interval_seconds: at most 3600"),
            Some(n) => Some(Duration::from_secs(n)),
        };
        Ok(UpstreamConnection {
            connect_timeout,
            request_timeout,
            stream_idle_timeout,
            pool_idle_timeout,
            pool_max_idle,
            health_check_interval,
        })
    }
}

/// Exactly one of `upstream:` and `upstreams:`. In the list, each name is
/// unique and fits a URL path segment and a Cedar entity id, each SPIFFE ID
/// is unique (an upstream is told apart by it: as the principal of the
/// requests it sends the agent, and in audit), and at most one upstream is
/// plain HTTP on loopback (it has no SPIFFE ID check to tell it apart).
pub(super) fn validate_upstreams(
    one: Option<RawUpstream>,
    list: Option<Vec<RawUpstream>>,
) -> anyhow::Result<(Vec<UpstreamConfig>, Routing)> {
    let raw = match (one, list) {
        (Some(u), None) => return Ok((vec![u.validate()?], Routing::OnePath)),
        (Some(_), Some(_)) => bail!("upstream, upstreams: set one of the two, not both"),
        (None, None) => bail!("upstreams: required (or a single `upstream:`)"),
        (None, Some(list)) if list.is_empty() => bail!("upstreams: must not be empty"),
        (None, Some(list)) if list.len() > MAX_UPSTREAMS => {
            bail!("upstreams: at most {MAX_UPSTREAMS}")
        }
        (None, Some(list)) => list,
    };
    let mut out: Vec<UpstreamConfig> = Vec::with_capacity(raw.len());
    for (i, r) in raw.into_iter().enumerate() {
        let name = r.name.clone();
        let at = || format!("upstreams[{i}] ({name:?})");
        let valid_name = !name.is_empty()
            && name.len() <= 64
            && name != "."
            && name != ".."
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !valid_name {
            bail!(
                "{}.name: 1-64 of [A-Za-z0-9._-] (it is a URL path segment)",
                at()
            );
        }
        let u = r.validate().with_context(at)?;
        if out.iter().any(|o| o.name == u.name) {
            bail!("{}.name: another upstream has this name", at());
        }
        if out.iter().any(|o| o.spiffe_id == u.spiffe_id) {
            bail!("{}.spiffe_id: another upstream has this SPIFFE ID", at());
        }
        if u.plaintext && out.iter().any(|o| o.plaintext) {
            bail!(
                "{}.plaintext_loopback: at most one plain-HTTP upstream",
                at()
            );
        }
        out.push(u);
    }
    Ok((out, Routing::ByName))
}

/// Checks `aggregate:`: only with the `upstreams:` list; its name is a path
/// segment no upstream uses; its members are distinct upstream names, none
/// containing `__` (the separator of `<upstream>__<tool>`: a name with it
/// would make a prefixed tool name ambiguous).
pub(super) fn validate_aggregate(
    raw: Option<RawAggregate>,
    upstreams: &[UpstreamConfig],
    routing: Routing,
) -> anyhow::Result<Option<AggregateConfig>> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    if routing != Routing::ByName {
        bail!("aggregate: only with the `upstreams:` list (each upstream has a name)");
    }
    let valid_name = !raw.name.is_empty()
        && raw.name.len() <= 64
        && raw.name != "."
        && raw.name != ".."
        && raw
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !valid_name {
        bail!("aggregate.name: 1-64 of [A-Za-z0-9._-] (it is a URL path segment)");
    }
    if upstreams.iter().any(|u| u.name == raw.name) {
        bail!(
            "aggregate.name: {:?} is also an upstream's name; each path names one thing",
            raw.name
        );
    }
    if raw.upstreams.is_empty() {
        bail!("aggregate.upstreams: must name at least one upstream");
    }
    for (i, name) in raw.upstreams.iter().enumerate() {
        if !upstreams.iter().any(|u| u.name == *name) {
            bail!("aggregate.upstreams[{i}]: {name:?} is not in `upstreams:`");
        }
        if raw.upstreams[..i].contains(name) {
            bail!("aggregate.upstreams[{i}]: {name:?} is listed twice");
        }
        if name.contains(AGGREGATE_SEPARATOR) {
            bail!(
                "aggregate.upstreams[{i}]: {name:?} contains \"__\", the separator of \
                 <upstream>__<tool>; rename the upstream"
            );
        }
    }
    Ok(Some(AggregateConfig {
        name: raw.name,
        upstreams: raw.upstreams,
    }))
}

/// Separates the upstream name from the tool name on the aggregated endpoint.
pub const AGGREGATE_SEPARATOR: &str = "__";

/// Upper bound on `upstreams:` entries (each has a pool, a session table
/// and a probe task).
const MAX_UPSTREAMS: usize = 256;

fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        _ => false,
    }
}

fn parse_caller_header(name: &str) -> anyhow::Result<HeaderName> {
    let header = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| anyhow!("upstream.caller_id_header: {name:?} is not a valid header name"))?;
    let reserved = [
        "host",
        "content-length",
        "content-type",
        "transfer-encoding",
        "connection",
    ];
    if reserved.contains(&header.as_str()) || header.as_str().starts_with("mcp-") {
        bail!("upstream.caller_id_header: {name:?} is a header the transport itself uses");
    }
    Ok(header)
}
