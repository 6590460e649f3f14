//! Which limits apply to whom: `limits.per_identity` compiled for lookup.
//!
//! The most specific rule wins, whatever the order in the file: an exact
//! `spiffe_id`, then the longest matching `path_prefix` (segment-wise: the
//! prefix `/ns/prod` matches `/ns/prod` and `/ns/prod/sa/x`, never
//! `/ns/production`), then the `trust_domain`, then `default`. A field the
//! winning rule leaves unset takes the default's value. Tool rules are
//! looked up the same way among the rules for that tool (an identity
//! selector first, then a rule naming the upstream over one that does not),
//! and apply on top of the identity's own limits.
//!
//! Must never: match an identity by a string prefix that is not a whole
//! path segment, or by another trust domain's rule.

use std::collections::{HashMap, HashSet};

use super::bucket::Rate;
use crate::config::{LimitSpec, PerIdentityLimits, RateSpec, Selector, ToolRule};

/// The limits one identity gets (what its rule and the default say).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    pub rate: Option<Rate>,
    pub max_in_flight: Option<u32>,
    pub max_streams: Option<u32>,
    pub max_sessions: Option<u32>,
}

impl Applied {
    fn of(spec: &LimitSpec, default: &LimitSpec) -> Applied {
        Applied {
            rate: spec.rate.or(default.rate).map(rate),
            max_in_flight: spec.max_in_flight.or(default.max_in_flight),
            max_streams: spec.max_streams.or(default.max_streams),
            max_sessions: spec.max_sessions.or(default.max_sessions),
        }
    }
}

fn rate(spec: RateSpec) -> Rate {
    Rate::new(spec.per_second, spec.burst)
}

/// A path prefix rule of one trust domain.
#[derive(Debug)]
struct Prefix {
    prefix: Box<str>,
    applied: Applied,
}

/// A tool rule, compiled.
#[derive(Debug)]
struct Tool {
    selector: Selector,
    upstream: Option<Box<str>>,
    tool: Box<str>,
    /// The bucket's name within an identity's state: kept across reloads
    /// while a rule for the same upstream and tool applies.
    key: Box<str>,
    rate: Rate,
}

/// The compiled rules; a new value on every reload (`generation` + 1).
#[derive(Debug, Default)]
pub struct Rules {
    pub generation: u64,
    pub max_identities: usize,
    default: Applied,
    exact: HashMap<Box<str>, Applied>,
    /// Per trust domain, longest prefix first.
    prefixes: HashMap<Box<str>, Vec<Prefix>>,
    domains: HashMap<Box<str>, Applied>,
    tools: Vec<Tool>,
    tool_names: HashSet<Box<str>>,
}

impl Rules {
    pub fn new(config: &PerIdentityLimits, generation: u64) -> Rules {
        let default_spec = config.default.unwrap_or_default();
        let mut rules = Rules {
            generation,
            max_identities: config.max_identities,
            default: Applied::of(&default_spec, &default_spec),
            ..Rules::default()
        };
        for rule in &config.rules {
            let applied = Applied::of(&rule.spec, &default_spec);
            match &rule.selector {
                Selector::SpiffeId(id) => {
                    rules.exact.insert(id.as_str().into(), applied);
                }
                Selector::TrustDomain(td) => {
                    rules.domains.insert(td.as_str().into(), applied);
                }
                Selector::PathPrefix {
                    trust_domain,
                    prefix,
                } => {
                    let list = rules
                        .prefixes
                        .entry(trust_domain.as_str().into())
                        .or_default();
                    list.push(Prefix {
                        prefix: prefix.as_str().into(),
                        applied,
                    });
                    list.sort_by_key(|p| std::cmp::Reverse(p.prefix.len()));
                }
                // Refused by the config for identity rules.
                Selector::Any => {}
            }
        }
        rules.tools = config.tool_rules.iter().map(compile_tool).collect();
        rules.tool_names = config
            .tool_rules
            .iter()
            .map(|t| t.tool.as_str().into())
            .collect();
        rules
    }

    /// Whether no identity has a limit of its own (tool rules aside): the
    /// request path then skips the per-identity state.
    pub fn identities_unlimited(&self) -> bool {
        self.default == Applied::default()
            && self.exact.is_empty()
            && self.prefixes.is_empty()
            && self.domains.is_empty()
    }

    /// The limits of `id` (a canonical SPIFFE ID).
    pub fn for_identity(&self, id: &str) -> Applied {
        if let Some(applied) = self.exact.get(id) {
            return *applied;
        }
        let Some((td, path)) = split(id) else {
            return self.default;
        };
        if let Some(prefixes) = self.prefixes.get(td)
            && let Some(p) = prefixes.iter().find(|p| segment_prefix(path, &p.prefix))
        {
            return p.applied;
        }
        self.domains.get(td).copied().unwrap_or(self.default)
    }

    /// Whether some tool rule names `tool` (a set lookup: calls of other
    /// tools cost nothing more).
    pub fn limits_tool(&self, tool: &str) -> bool {
        self.tool_names.contains(tool)
    }

    /// The tool rule for `id` calling `tool` on `upstream`: its bucket's
    /// key and rate; `None`: the call has no tool limit.
    pub fn for_tool(&self, id: &str, upstream: &str, tool: &str) -> Option<(&str, Rate)> {
        self.tools
            .iter()
            .filter(|t| &*t.tool == tool && t.upstream.as_deref().is_none_or(|u| u == upstream))
            .filter_map(|t| Some((specificity(&t.selector, id)?, t.upstream.is_some(), t)))
            .max_by_key(|(rank, named, _)| (*rank, *named))
            .map(|(_, _, t)| (&*t.key, t.rate))
    }
}

fn compile_tool(rule: &ToolRule) -> Tool {
    let upstream = rule.upstream.as_deref();
    Tool {
        selector: rule.selector.clone(),
        upstream: upstream.map(Into::into),
        tool: rule.tool.as_str().into(),
        key: format!("{}/{}", upstream.unwrap_or("*"), rule.tool).into(),
        rate: rate(rule.rate),
    }
}

/// How specifically `selector` names `id`; `None`: not at all.
fn specificity(selector: &Selector, id: &str) -> Option<usize> {
    match selector {
        Selector::Any => Some(0),
        Selector::TrustDomain(td) => (split(id)?.0 == td).then_some(1),
        Selector::PathPrefix {
            trust_domain,
            prefix,
        } => {
            let (td, path) = split(id)?;
            // Longer prefixes are more specific; all below an exact ID.
            (td == trust_domain && segment_prefix(path, prefix)).then_some(2 + prefix.len())
        }
        Selector::SpiffeId(exact) => (exact == id).then_some(usize::MAX),
    }
}

/// (trust domain, path) of a SPIFFE ID.
fn split(id: &str) -> Option<(&str, &str)> {
    let rest = id.strip_prefix("spiffe://")?;
    let slash = rest.find('/').unwrap_or(rest.len());
    Some(rest.split_at(slash))
}

/// Whether `path` begins with the whole segments of `prefix`.
pub fn segment_prefix(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

#[cfg(test)]
#[path = "rules_tests.rs"]
mod tests;
