//! `limits.per_identity:`: fair limits per caller SPIFFE ID. A default for
//! every identity no rule names, rules by exact SPIFFE ID, trust domain or
//! trust domain + path prefix (segment-wise), and tool rules that rate a
//! `tools/call` of one tool. Only the shape and the bounds are checked
//! here; which rule applies to whom is `limits::rules`.
//!
//! Must never: accept a limit that cannot work (zero, negative, not a
//! number, absurdly large) or two rules for the same selector; every error
//! names the field.

use anyhow::{anyhow, bail};
use serde::Deserialize;

use crate::identity::spiffe_id;

/// Bounds of the settings (inclusive): below them a limit cannot work,
/// above them it is no limit at all and more likely a typo.
const RATE_MIN: f64 = 0.001;
const RATE_MAX: f64 = 1_000_000.0;
const BURST_MAX: i64 = 1_000_000;
const IN_FLIGHT_MAX: i64 = 1_000_000;
const STREAMS_MAX: i64 = 100_000;
/// Most sessions one rule may allow an identity.
const SESSIONS_MAX: i64 = 1_000_000;
const IDENTITIES_MAX: i64 = 10_000_000;
/// Default `limits.per_identity.max_identities`.
const DEFAULT_MAX_IDENTITIES: usize = 100_000;

/// The validated `limits.per_identity` section. Empty (the default): no
/// per-identity limits.
#[derive(Debug, Clone, PartialEq)]
pub struct PerIdentityLimits {
    /// Identities whose state (buckets, counters) is held at once.
    pub max_identities: usize,
    /// What an identity no rule matches gets; also the value of each field
    /// a matching rule leaves unset.
    pub default: Option<LimitSpec>,
    /// Rules for identities (no `tool`), in config order.
    pub rules: Vec<IdentityRule>,
    /// Rules for `tools/call` of one tool, in config order.
    pub tool_rules: Vec<ToolRule>,
}

impl Default for PerIdentityLimits {
    fn default() -> PerIdentityLimits {
        PerIdentityLimits {
            max_identities: DEFAULT_MAX_IDENTITIES,
            default: None,
            rules: Vec::new(),
            tool_rules: Vec::new(),
        }
    }
}

/// The limits one rule sets; `None`: not limited by this rule.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LimitSpec {
    pub rate: Option<RateSpec>,
    /// POST and DELETE requests at once, each until its reply (JSON or an
    /// SSE stream) ends.
    pub max_in_flight: Option<u32>,
    /// GET (server) streams open at once.
    pub max_streams: Option<u32>,
    /// MCP sessions held at once, across every session table of this
    /// replica (opened here or first seen here).
    pub max_sessions: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateSpec {
    pub per_second: f64,
    pub burst: u32,
}

/// Whom a rule is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// Every identity (tool rules only).
    Any,
    /// Every identity of a trust domain.
    TrustDomain(String),
    /// Identities of a trust domain whose path starts with these segments.
    PathPrefix {
        trust_domain: String,
        /// Without a trailing `/`, e.g. `/ns/prod`.
        prefix: String,
    },
    /// One identity, exactly.
    SpiffeId(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct IdentityRule {
    pub selector: Selector,
    pub spec: LimitSpec,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ToolRule {
    pub selector: Selector,
    /// The upstream the tool is on; `None`: any.
    pub upstream: Option<String>,
    /// The tool's name on its upstream (on the aggregated endpoint, the
    /// name after `<upstream>__`).
    pub tool: String,
    pub rate: RateSpec,
}

#[derive(Deserialize, Default, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPerIdentity {
    max_identities: Option<i64>,
    default: Option<RawSpec>,
    #[serde(default)]
    rules: Vec<RawRule>,
}

#[derive(Deserialize, Default, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    requests_per_second: Option<f64>,
    burst: Option<i64>,
    max_in_flight: Option<i64>,
    max_streams: Option<i64>,
    max_sessions: Option<i64>,
}

#[derive(Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
struct RawRule {
    spiffe_id: Option<String>,
    trust_domain: Option<String>,
    path_prefix: Option<String>,
    tool: Option<String>,
    upstream: Option<String>,
    requests_per_second: Option<f64>,
    burst: Option<i64>,
    max_in_flight: Option<i64>,
    max_streams: Option<i64>,
    max_sessions: Option<i64>,
}

impl RawPerIdentity {
    /// `upstreams`: the configured upstream names (a tool rule's
    /// `upstream` must be one).
    pub(super) fn validate(&self, upstreams: &[&str]) -> anyhow::Result<PerIdentityLimits> {
        const FIELD: &str = "limits.per_identity";
        let max_identities = match self.max_identities {
            None => DEFAULT_MAX_IDENTITIES,
            Some(n) => bounded(&format!("{FIELD}.max_identities"), n, IDENTITIES_MAX)? as usize,
        };
        let default = match &self.default {
            None => None,
            Some(spec) => Some(spec.validate(&format!("{FIELD}.default"))?),
        };
        let mut limits = PerIdentityLimits {
            max_identities,
            default,
            ..PerIdentityLimits::default()
        };
        for (i, rule) in self.rules.iter().enumerate() {
            let field = format!("{FIELD}.rules[{i}]");
            let selector = rule.selector(&field)?;
            match &rule.tool {
                None => limits.add_identity_rule(&field, rule, selector)?,
                Some(tool) => limits.add_tool_rule(&field, rule, selector, tool, upstreams)?,
            }
        }
        Ok(limits)
    }
}

impl PerIdentityLimits {
    fn add_identity_rule(
        &mut self,
        field: &str,
        rule: &RawRule,
        selector: Selector,
    ) -> anyhow::Result<()> {
        if selector == Selector::Any {
            bail!(
                "{field}: names no identity (spiffe_id, trust_domain or trust_domain + path_prefix); \
                 limits for every identity go in limits.per_identity.default"
            );
        }
        if rule.upstream.is_some() {
            bail!("{field}.upstream: only with `tool` (a rule for a tool on that upstream)");
        }
        if self.rules.iter().any(|r| r.selector == selector) {
            bail!("{field}: a rule for the same identities comes earlier");
        }
        let spec = rule.spec().validate(field)?;
        self.rules.push(IdentityRule { selector, spec });
        Ok(())
    }

    fn add_tool_rule(
        &mut self,
        field: &str,
        rule: &RawRule,
        selector: Selector,
        tool: &str,
        upstreams: &[&str],
    ) -> anyhow::Result<()> {
        if tool.is_empty() || tool.trim() != tool {
            bail!("{field}.tool: must be a tool name, non-empty, without surrounding spaces");
        }
        if let Some(up) = &rule.upstream
            && !upstreams.contains(&up.as_str())
        {
            bail!("{field}.upstream: {up:?} is not a configured upstream");
        }
        for (name, set) in [
            ("max_in_flight", rule.max_in_flight.is_some()),
            ("max_streams", rule.max_streams.is_some()),
            ("max_sessions", rule.max_sessions.is_some()),
        ] {
            if set {
                bail!("{field}.{name}: a tool rule limits the rate of its calls only");
            }
        }
        let Some(rate) = rule.spec().validate(field)?.rate else {
            bail!("{field}.requests_per_second: required in a tool rule");
        };
        let duplicate = self.tool_rules.iter().any(|r| {
            r.selector == selector
                && r.tool == tool
                && r.upstream.as_deref() == rule.upstream.as_deref()
        });
        if duplicate {
            bail!("{field}: a rule for the same identities and tool comes earlier");
        }
        self.tool_rules.push(ToolRule {
            selector,
            upstream: rule.upstream.clone(),
            tool: tool.to_owned(),
            rate,
        });
        Ok(())
    }
}

impl RawRule {
    fn spec(&self) -> RawSpec {
        RawSpec {
            requests_per_second: self.requests_per_second,
            burst: self.burst,
            max_in_flight: self.max_in_flight,
            max_streams: self.max_streams,
            max_sessions: self.max_sessions,
        }
    }

    fn selector(&self, field: &str) -> anyhow::Result<Selector> {
        match (&self.spiffe_id, &self.trust_domain, &self.path_prefix) {
            (None, None, None) => Ok(Selector::Any),
            (Some(id), None, None) => {
                spiffe_id::workload(id).map_err(|e| anyhow!("{field}.spiffe_id: {e}"))?;
                Ok(Selector::SpiffeId(id.clone()))
            }
            (None, Some(td), None) => Ok(Selector::TrustDomain(trust_domain(field, td)?)),
            (None, Some(td), Some(prefix)) => {
                let trust_domain = trust_domain(field, td)?;
                path_prefix(field, &trust_domain, prefix)?;
                Ok(Selector::PathPrefix {
                    trust_domain,
                    prefix: prefix.clone(),
                })
            }
            (None, None, Some(_)) => {
                bail!(
                    "{field}.path_prefix: needs trust_domain (a path is only a path in its trust domain)"
                )
            }
            (Some(_), _, _) => {
                bail!("{field}.spiffe_id: names one identity; not with trust_domain or path_prefix")
            }
        }
    }
}

impl RawSpec {
    fn validate(&self, field: &str) -> anyhow::Result<LimitSpec> {
        let rate = match (self.requests_per_second, self.burst) {
            (None, None) => None,
            (None, Some(_)) => bail!("{field}.burst: only with requests_per_second"),
            (Some(per_second), burst) => {
                if !(RATE_MIN..=RATE_MAX).contains(&per_second) {
                    bail!(
                        "{field}.requests_per_second: {per_second} is not between {RATE_MIN} and {RATE_MAX}"
                    );
                }
                let burst = match burst {
                    // One second's worth, at least one request.
                    None => per_second.ceil().max(1.0) as u32,
                    Some(n) => bounded(&format!("{field}.burst"), n, BURST_MAX)?,
                };
                Some(RateSpec { per_second, burst })
            }
        };
        let max_in_flight = self
            .max_in_flight
            .map(|n| bounded(&format!("{field}.max_in_flight"), n, IN_FLIGHT_MAX))
            .transpose()?;
        let max_streams = self
            .max_streams
            .map(|n| bounded(&format!("{field}.max_streams"), n, STREAMS_MAX))
            .transpose()?;
        let max_sessions = self
            .max_sessions
            .map(|n| bounded(&format!("{field}.max_sessions"), n, SESSIONS_MAX))
            .transpose()?;
        let spec = LimitSpec {
            rate,
            max_in_flight,
            max_streams,
            max_sessions,
        };
        if spec == LimitSpec::default() {
            bail!(
                "{field}: sets no limit (requests_per_second, max_in_flight, max_streams or max_sessions)"
            );
        }
        Ok(spec)
    }
}

/// A count between 1 and `max`.
fn bounded(field: &str, n: i64, max: i64) -> anyhow::Result<u32> {
    if !(1..=max).contains(&n) {
        bail!("{field}: {n} is not between 1 and {max}");
    }
    // `max` is below u32::MAX for every caller.
    u32::try_from(n).map_err(|_| anyhow!("{field}: {n} is too large"))
}

/// A trust domain name, as it appears in SPIFFE IDs (lower case).
fn trust_domain(field: &str, td: &str) -> anyhow::Result<String> {
    let id = format!("spiffe://{td}");
    match spiffe_id::canonical(&id) {
        Ok(parsed) if parsed.path().is_empty() && !td.is_empty() => Ok(td.to_owned()),
        _ => bail!(
            "{field}.trust_domain: {td:?} is not a trust domain name (lower case, [a-z0-9.-_])"
        ),
    }
}

/// `/seg/seg`: the path of a workload ID in that trust domain, so the
/// segments follow the SPIFFE ID rules (no empty, `.` or `..` segment, no
/// trailing `/`).
fn path_prefix(field: &str, trust_domain: &str, prefix: &str) -> anyhow::Result<()> {
    if !prefix.starts_with('/') {
        bail!("{field}.path_prefix: {prefix:?} must start with '/'");
    }
    spiffe_id::workload(&format!("spiffe://{trust_domain}{prefix}"))
        .map(|_| ())
        .map_err(|_| {
            anyhow!(
                "{field}.path_prefix: {prefix:?} is not a SPIFFE ID path (segments [a-zA-Z0-9.-_], \
                 no empty, '.' or '..' segment, no trailing '/')"
            )
        })
}

#[cfg(test)]
#[path = "limit_rules_tests.rs"]
mod tests;
