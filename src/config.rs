//! The gateway's one YAML configuration file: parsing and validation.
//!
//! Every field is checked here, once, before anything is served: unknown fields
//! and bad values are errors that name the field and the file. Relative paths
//! are resolved against the directory of the config file. This module never
//! reads the process environment directly; overrides come through [`Env`] so
//! tests never mutate the environment.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use serde::Deserialize;
use spiffe::SpiffeId;

use crate::identity::spiffe_id;
use crate::pins::PinMode;

mod audit;
mod connections;
mod limit_rules;
mod limits;
mod sessions;
mod traces;
mod upstream;

use audit::RawAudit;
pub use audit::{AuditConfig, AuditOnFailure, AuditSink};
pub use connections::ConnectionsConfig;
pub use limit_rules::{IdentityRule, LimitSpec, PerIdentityLimits, RateSpec, Selector, ToolRule};
pub use limits::LimitsConfig;
pub use sessions::SessionsConfig;
pub use traces::{SamplingConfig, TracesConfig};
pub use upstream::{AGGREGATE_SEPARATOR, AggregateConfig, UpstreamConfig, UpstreamConnection};
use upstream::{RawAggregate, RawUpstream, validate_aggregate, validate_upstreams};

/// Environment variable naming the Workload API socket when the config does not.
pub const SPIFFE_ENDPOINT_SOCKET: &str = "SPIFFE_ENDPOINT_SOCKET";

/// Where environment overrides come from.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

/// Which path of the listener serves which upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routing {
    /// `upstream:`: the one upstream, on `listener.path`.
    OnePath,
    /// `upstreams:`: each upstream on `<listener.path>/<name>` (and the
    /// aggregated endpoint on `<listener.path>/<aggregate.name>`).
    ByName,
}

/// The validated configuration the gateway runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub listener: ListenerConfig,
    pub admin: AdminConfig,
    pub workload_api: WorkloadApiConfig,
    pub policy_dir: PathBuf,
    pub policy: PolicyConfig,
    /// Every upstream, in config order (at least one).
    pub upstreams: Vec<UpstreamConfig>,
    /// Which path serves which upstream.
    pub routing: Routing,
    /// End-user tokens (`context.user`); `None`: requests have no user.
    pub user_auth: Option<UserAuthConfig>,
    pub audit: AuditConfig,
    /// Body size and session table bounds (`limits:`).
    pub limits: LimitsConfig,
    /// Session id keys and lifetime (`sessions:`).
    pub sessions: SessionsConfig,
    /// After SIGTERM, how long in-flight requests and streams may finish.
    pub drain_timeout: Duration,
    /// After SIGTERM, how long the listener keeps accepting while `/readyz`
    /// says 503 (for load balancers that have not seen it yet).
    pub not_ready_delay: Duration,
    pub log: LogConfig,
    /// Label decisions by caller SPIFFE ID too (unbounded: opt in).
    pub metrics_caller_labels: bool,
    /// The aggregated endpoint (`aggregate:`), if configured.
    pub aggregate: Option<AggregateConfig>,
    /// Client timeouts and connection caps (`connections:`).
    pub connections: ConnectionsConfig,
    /// The file this was read from (`Config::load`), watched for changes
    /// to `limits.per_identity`; `None` for text (`Config::parse`).
    pub source: Option<PathBuf>,
    /// Spans exported over OTLP (`traces:`); `None`: off.
    pub traces: Option<TracesConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter, e.g. `info` or `spiffe_mcp_gateway=debug`;
    /// `RUST_LOG` overrides it.
    pub level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Clone)]
pub struct PolicyConfig {
    /// The enforced policy directory (same as `Config::policy_dir`).
    pub dir: PathBuf,
    /// A candidate set evaluated beside the enforced one, never enforced.
    pub shadow_dir: Option<PathBuf>,
    /// How often the directories are checked for changes; `None`: only on
    /// SIGHUP.
    pub watch_interval: Option<Duration>,
    /// Tool-definition pin files (`<upstream>.pins.json`), loaded and
    /// reloaded with the policies; `None`: no pins.
    pub pins_dir: Option<PathBuf>,
    /// (name, SPIFFE ID) of every upstream: a pin file must name one.
    pub pin_upstreams: Vec<(String, String)>,
}

/// How the end user's `Authorization: Bearer` token is verified.
#[derive(Debug, Clone)]
pub struct UserAuthConfig {
    pub keys: UserKeys,
    /// The `aud` the token must carry.
    pub audience: String,
    /// The `iss` the token must carry (JWKS only: a JWT-SVID's issuer is
    /// not fixed).
    pub issuer: Option<String>,
    /// Refuse requests without a token (otherwise they have no user).
    pub required: bool,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserKeys {
    /// A JWKS file (RFC 7517), read at start.
    JwksFile(PathBuf),
    /// A JWT-SVID, verified against the JWT bundles from the Workload API.
    JwtSvid,
}

#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub address: SocketAddr,
    /// The HTTP path agents POST MCP messages to, e.g. `/mcp`.
    pub path: String,
    /// Client sidecar: plain HTTP on a loopback IP instead of mTLS; the
    /// caller is this process's own SVID (see `proxy::loopback`).
    pub plaintext_loopback: bool,
    /// Callers without a client certificate may authenticate each request
    /// with a JWT-SVID (`Authorization: Bearer`); `None` (the default):
    /// mTLS only.
    pub jwt_svid_callers: Option<JwtSvidCallersConfig>,
}

/// `listener.jwt_svid_callers`: JWT-SVIDs as the caller credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtSvidCallersConfig {
    /// The `aud` a token must carry; `None`: the gateway's own SPIFFE ID.
    pub audience: Option<String>,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub address: SocketAddr,
}

#[derive(Debug, Clone)]
pub struct WorkloadApiConfig {
    /// `unix:///path/to/agent.sock` (or any endpoint the spiffe crate accepts).
    pub endpoint: String,
    /// Selects one of several SVIDs of this workload by its Workload API hint.
    pub svid_hint: Option<String>,
}

// ---- the file format ------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listener: RawListener,
    admin: RawAdmin,
    #[serde(default)]
    workload_api: RawWorkloadApi,
    policy: RawPolicy,
    #[serde(default)]
    upstream: Option<RawUpstream>,
    #[serde(default)]
    upstreams: Option<Vec<RawUpstream>>,
    #[serde(default)]
    user_auth: Option<RawUserAuth>,
    #[serde(default)]
    audit: RawAudit,
    #[serde(default)]
    limits: limits::RawLimits,
    #[serde(default)]
    sessions: sessions::RawSessions,
    #[serde(default)]
    shutdown: RawShutdown,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default)]
    aggregate: Option<RawAggregate>,
    #[serde(default)]
    connections: connections::RawConnections,
    #[serde(default)]
    traces: Option<traces::RawTraces>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawShutdown {
    drain_timeout_seconds: Option<u64>,
    not_ready_delay_seconds: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: Option<LogFormat>,
    level: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    #[serde(default)]
    caller_labels: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    address: String,
    #[serde(default = "default_path")]
    path: String,
    #[serde(default)]
    plaintext_loopback: bool,
    jwt_svid_callers: Option<RawJwtSvidCallers>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJwtSvidCallers {
    #[serde(default)]
    audience: Option<String>,
}

fn default_path() -> String {
    "/mcp".to_owned()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    address: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawWorkloadApi {
    socket: Option<String>,
    svid_hint: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    dir: PathBuf,
    #[serde(default)]
    shadow_dir: Option<PathBuf>,
    #[serde(default)]
    watch_interval_ms: Option<u64>,
    #[serde(default)]
    pins_dir: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUserAuth {
    #[serde(default)]
    jwks_file: Option<PathBuf>,
    #[serde(default)]
    jwt_svid: bool,
    audience: Option<String>,
    #[serde(default)]
    issuer: Option<String>,
    #[serde(default)]
    required: bool,
    #[serde(default)]
    leeway_seconds: Option<u64>,
}

impl Config {
    /// Reads, parses and validates the config file.
    pub fn load(path: &Path, env: &dyn Env) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        let mut config = Self::parse(&text, base, env)
            .with_context(|| format!("in config file {}", path.display()))?;
        config.source = Some(path.to_owned());
        Ok(config)
    }

    /// Parses config text; relative paths resolve against `base`.
    pub fn parse(text: &str, base: &Path, env: &dyn Env) -> anyhow::Result<Config> {
        let raw: RawConfig = serde_yaml_ng::from_str(text).map_err(|e| anyhow!("{e}"))?;
        raw.validate(base, env)
    }
}

impl RawConfig {
    fn validate(self, base: &Path, env: &dyn Env) -> anyhow::Result<Config> {
        let listener = self.listener.validate()?;
        let admin = AdminConfig {
            address: parse_addr("admin.address", &self.admin.address)?,
        };
        if admin.address == listener.address && admin.address.port() != 0 {
            bail!("admin.address: must differ from listener.address");
        }
        let workload_api = self.workload_api.validate(env)?;
        let (upstreams, routing) = validate_upstreams(self.upstream, self.upstreams)?;
        let aggregate = validate_aggregate(self.aggregate, &upstreams, routing)?;
        if listener.plaintext_loopback && upstreams.iter().any(|u| u.plaintext) {
            bail!(
                "listener.plaintext_loopback: a client sidecar forwards over mTLS with its SVID; \
                 it cannot be combined with a plaintext_loopback upstream"
            );
        }
        let audit = self.audit.validate(base)?;
        let limits = self.limits.validate(&upstream_names(&upstreams))?;
        let (drain_timeout, not_ready_delay) = self.shutdown.validate()?;
        let log = self.log.validate()?;
        let mut policy = self.policy.validate(base)?;
        bind_pins(&mut policy, &upstreams)?;
        let user_auth = self.user_auth.map(|u| u.validate(base)).transpose()?;
        if listener.jwt_svid_callers.is_some() && user_auth.is_some() {
            // Both read `Authorization: Bearer`: on a connection without a
            // certificate one header would have to be the caller's identity
            // and the end user's at once. Refused rather than guessed.
            bail!(
                "listener.jwt_svid_callers: cannot be combined with user_auth (both use the Authorization header)"
            );
        }
        Ok(Config {
            listener,
            admin,
            workload_api,
            policy_dir: policy.dir.clone(),
            policy,
            upstreams,
            routing,
            user_auth,
            audit,
            limits,
            sessions: self.sessions.validate(base)?,
            drain_timeout,
            not_ready_delay,
            log,
            metrics_caller_labels: self.metrics.caller_labels,
            aggregate,
            connections: self.connections.validate()?,
            source: None,
            traces: self.traces.map(traces::RawTraces::validate).transpose()?,
        })
    }
}

impl RawShutdown {
    /// (`drain_timeout_seconds`, `not_ready_delay_seconds`), bounded.
    fn validate(self) -> anyhow::Result<(Duration, Duration)> {
        let drain_timeout = match self.drain_timeout_seconds {
            None => DEFAULT_DRAIN,
            Some(n) if n > 3600 => bail!("shutdown.drain_timeout_seconds: at most 3600"),
            Some(n) => Duration::from_secs(n),
        };
        let not_ready_delay = match self.not_ready_delay_seconds {
            None => Duration::ZERO,
            Some(n) if n > 300 => bail!("shutdown.not_ready_delay_seconds: at most 300"),
            Some(n) => Duration::from_secs(n),
        };
        Ok((drain_timeout, not_ready_delay))
    }
}

impl RawLog {
    /// `log.format` (JSON by default) and `log.level`, a level or a
    /// tracing filter.
    fn validate(self) -> anyhow::Result<LogConfig> {
        let level = self.level.unwrap_or_else(|| "info".to_owned());
        if tracing_subscriber::EnvFilter::try_new(&level).is_err() {
            bail!("log.level: {level:?} is not a level or tracing filter (e.g. info, debug)");
        }
        Ok(LogConfig {
            format: self.format.unwrap_or(LogFormat::Json),
            level,
        })
    }
}

/// Pin files name upstreams: the pins know every (name, SPIFFE ID), and an
/// upstream that pins needs the directory the files are in.
fn bind_pins(policy: &mut PolicyConfig, upstreams: &[UpstreamConfig]) -> anyhow::Result<()> {
    if let Some(u) = upstreams.iter().find(|u| u.pins != PinMode::Off)
        && policy.pins_dir.is_none()
    {
        bail!(
            "upstreams[{}].pins: {:?} needs policy.pins_dir (where the pin files are)",
            u.name,
            u.pins
        );
    }
    policy.pin_upstreams = upstreams
        .iter()
        .map(|u| (u.name.clone(), u.spiffe_id.to_string()))
        .collect();
    Ok(())
}

fn upstream_names(upstreams: &[UpstreamConfig]) -> Vec<&str> {
    upstreams.iter().map(|u| u.name.as_str()).collect()
}

/// Default `shutdown.drain_timeout_seconds`.
const DEFAULT_DRAIN: Duration = Duration::from_secs(15);

/// Default `policy.watch_interval_ms`.
const DEFAULT_POLICY_WATCH: Duration = Duration::from_secs(1);

impl RawPolicy {
    fn validate(self, base: &Path) -> anyhow::Result<PolicyConfig> {
        let dir = base.join(self.dir);
        let shadow_dir = self.shadow_dir.map(|d| base.join(d));
        if shadow_dir.as_ref() == Some(&dir) {
            bail!("policy.shadow_dir: must differ from policy.dir");
        }
        let watch_interval = match self.watch_interval_ms {
            None => Some(DEFAULT_POLICY_WATCH),
            Some(0) => None,
            Some(n) if n < 100 => bail!("policy.watch_interval_ms: at least 100 (or 0: off)"),
            Some(n) => Some(Duration::from_millis(n)),
        };
        let pins_dir = self.pins_dir.map(|d| base.join(d));
        if pins_dir.as_ref() == Some(&dir) || pins_dir.is_some() && pins_dir == shadow_dir {
            bail!("policy.pins_dir: must be a directory of its own (pin files are not policies)");
        }
        Ok(PolicyConfig {
            dir,
            shadow_dir,
            watch_interval,
            pins_dir,
            pin_upstreams: Vec::new(),
        })
    }
}

impl RawJwtSvidCallers {
    fn validate(self) -> anyhow::Result<JwtSvidCallersConfig> {
        let audience = match self.audience {
            None => None,
            Some(a) if a.trim().is_empty() || a.trim() != a => {
                bail!(
                    "listener.jwt_svid_callers.audience: must be non-empty, without surrounding spaces"
                )
            }
            Some(a) => Some(a),
        };
        Ok(JwtSvidCallersConfig { audience })
    }
}

impl RawUserAuth {
    fn validate(self, base: &Path) -> anyhow::Result<UserAuthConfig> {
        let keys = match (self.jwks_file, self.jwt_svid) {
            (Some(f), false) => UserKeys::JwksFile(base.join(f)),
            (None, true) => UserKeys::JwtSvid,
            (Some(_), true) => bail!("user_auth: set either jwks_file or jwt_svid, not both"),
            (None, false) => bail!("user_auth: set jwks_file or `jwt_svid: true`"),
        };
        let audience = match self.audience {
            Some(a) if !a.is_empty() => a,
            _ => bail!("user_auth.audience: required (the `aud` tokens must carry)"),
        };
        let issuer = match (self.issuer, &keys) {
            (Some(i), UserKeys::JwksFile(_)) if !i.is_empty() => Some(i),
            (None, UserKeys::JwksFile(_)) | (Some(_), UserKeys::JwksFile(_)) => {
                bail!("user_auth.issuer: required with jwks_file (the `iss` tokens must carry)")
            }
            (Some(_), UserKeys::JwtSvid) => {
                bail!("user_auth.issuer: not used with jwt_svid (the trust domain is the issuer)")
            }
            (None, UserKeys::JwtSvid) => None,
        };
        let leeway = match self.leeway_seconds {
            None => Duration::from_secs(30),
            Some(n) if n > 300 => bail!("user_auth.leeway_seconds: at most 300"),
            Some(n) => Duration::from_secs(n),
        };
        Ok(UserAuthConfig {
            keys,
            audience,
            issuer,
            required: self.required,
            leeway,
        })
    }
}

impl RawListener {
    fn validate(self) -> anyhow::Result<ListenerConfig> {
        let address = parse_addr("listener.address", &self.address)?;
        if self.plaintext_loopback && !address.ip().is_loopback() {
            bail!(
                "listener.address: {address} is not a loopback IP; a plain-HTTP listener \
                 (`plaintext_loopback: true`) may only bind 127.0.0.0/8 or ::1"
            );
        }
        if self.plaintext_loopback && self.jwt_svid_callers.is_some() {
            bail!(
                "listener.jwt_svid_callers: not with `plaintext_loopback: true` (the plain \
                 listener's caller is this process's own SVID, never a token)"
            );
        }
        Ok(ListenerConfig {
            address,
            path: validate_path("listener.path", self.path)?,
            plaintext_loopback: self.plaintext_loopback,
            jwt_svid_callers: self
                .jwt_svid_callers
                .map(RawJwtSvidCallers::validate)
                .transpose()?,
        })
    }
}

impl RawWorkloadApi {
    fn validate(self, env: &dyn Env) -> anyhow::Result<WorkloadApiConfig> {
        let endpoint = match self.socket.or_else(|| env.var(SPIFFE_ENDPOINT_SOCKET)) {
            Some(s) if s.starts_with("unix:") || s.starts_with("tcp:") => s,
            Some(s) if s.starts_with('/') => format!("unix://{s}"),
            Some(s) => {
                bail!("workload_api.socket: {s:?} is not `unix:///path` or an absolute socket path")
            }
            None => bail!(
                "workload_api.socket: not set, and {SPIFFE_ENDPOINT_SOCKET} is not set either"
            ),
        };
        if matches!(self.svid_hint.as_deref(), Some("")) {
            bail!("workload_api.svid_hint: must not be empty");
        }
        Ok(WorkloadApiConfig {
            endpoint,
            svid_hint: self.svid_hint,
        })
    }
}

/// A workload's SPIFFE ID exactly as written (`identity::spiffe_id`): IDs
/// are matched byte for byte in policies and audit.
fn parse_spiffe_id(field: &str, id: &str) -> anyhow::Result<SpiffeId> {
    spiffe_id::workload(id).map_err(|e| anyhow!("{field}: {e}"))
}

fn parse_addr(field: &str, value: &str) -> anyhow::Result<SocketAddr> {
    value
        .parse()
        .map_err(|_| anyhow!("{field}: {value:?} is not an IP:port socket address"))
}

fn validate_path(field: &str, path: String) -> anyhow::Result<String> {
    let ok = path.starts_with('/')
        && !path.contains(['?', '#', ' '])
        && path.split('/').all(|s| s != ".." && s != ".");
    if !ok {
        bail!("{field}: {path:?} must be an absolute URL path without query, '.' or '..'");
    }
    Ok(path)
}

#[cfg(test)]
mod tests;
