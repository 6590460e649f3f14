//! One request to decide, owned, built from command-line flags or a test
//! case, and the checks its parts get before they reach the engine.
//!
//! The engine treats an ID that is not a SPIFFE ID as an error (denied),
//! which in a test case or an `explain` query is almost always a typo, so
//! IDs are checked here as the gateway's identity layer would have checked
//! them, and a bad one is bad input rather than a decision.

use serde_yaml_ng::Value as Yaml;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::pins::PinStatus;
use crate::policy::{Decision, PolicyEngine, PolicyInput, Target, User};

/// An owned [`PolicyInput`].
pub(super) struct Query {
    pub(super) principal: String,
    pub(super) action: String,
    pub(super) server: String,
    pub(super) server_spiffe_id: String,
    pub(super) target: OwnedTarget,
    /// JSON text, passed to the engine as a tools/call would carry it.
    pub(super) arguments: Option<String>,
    pub(super) session_id: Option<String>,
    pub(super) protocol_version: Option<String>,
    pub(super) user: Option<User>,
    pub(super) now_unix_ms: i64,
    /// `context.pin`, as on an upstream that pins.
    pub(super) pin: Option<PinStatus>,
}

/// An owned [`Target`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum OwnedTarget {
    Server,
    Tool(String),
    Prompt(String),
    Resource(String),
    Workload(String),
}

impl Query {
    pub(super) fn input(&self) -> PolicyInput<'_> {
        PolicyInput {
            principal: &self.principal,
            action: &self.action,
            server: &self.server,
            server_spiffe_id: &self.server_spiffe_id,
            target: self.target.as_target(),
            arguments: self.arguments.as_deref(),
            session_id: self.session_id.as_deref(),
            protocol_version: self.protocol_version.as_deref(),
            user: self.user.as_ref(),
            now_unix_ms: self.now_unix_ms,
            pin: self.pin.map(PinStatus::as_str),
        }
    }

    pub(super) fn decide(&self, engine: &PolicyEngine) -> Decision {
        engine.decide(&self.input())
    }

    /// The Cedar resource this query names, e.g. `Mcp::Tool::"demo/echo"`.
    pub(super) fn resource_entity(&self) -> String {
        let server = &self.server;
        match &self.target {
            OwnedTarget::Server => format!("Mcp::Server::{server:?}"),
            OwnedTarget::Tool(name) => format!("Mcp::Tool::{:?}", format!("{server}/{name}")),
            OwnedTarget::Prompt(name) => format!("Mcp::Prompt::{:?}", format!("{server}/{name}")),
            OwnedTarget::Resource(uri) => {
                format!("Mcp::Resource::{:?}", format!("{server}/{uri}"))
            }
            OwnedTarget::Workload(id) => format!("Mcp::Workload::{id:?}"),
        }
    }
}

impl OwnedTarget {
    /// At most one of the four is given; none means the server itself.
    pub(super) fn from_parts(
        tool: Option<&str>,
        prompt: Option<&str>,
        resource: Option<&str>,
        workload: Option<&str>,
    ) -> Result<OwnedTarget, String> {
        let given = [
            tool.map(|t| OwnedTarget::Tool(t.to_owned())),
            prompt.map(|p| OwnedTarget::Prompt(p.to_owned())),
            resource.map(|r| OwnedTarget::Resource(r.to_owned())),
            workload.map(|w| OwnedTarget::Workload(w.to_owned())),
        ];
        let mut given = given.into_iter().flatten();
        match (given.next(), given.next()) {
            (None, _) => Ok(OwnedTarget::Server),
            (Some(OwnedTarget::Workload(id)), None) => {
                check_spiffe_id(&id)?;
                Ok(OwnedTarget::Workload(id))
            }
            (Some(one), None) => Ok(one),
            (Some(_), Some(_)) => {
                Err("give at most one of tool, prompt, resource and workload".to_owned())
            }
        }
    }

    fn as_target(&self) -> Target<'_> {
        match self {
            OwnedTarget::Server => Target::Server,
            OwnedTarget::Tool(name) => Target::Tool(name),
            OwnedTarget::Prompt(name) => Target::Prompt(name),
            OwnedTarget::Resource(uri) => Target::Resource(uri),
            OwnedTarget::Workload(id) => Target::Workload(id),
        }
    }
}

/// A SPIFFE ID as the gateway would see it: valid and canonical
/// (`identity::spiffe_id`).
pub(super) fn check_spiffe_id(id: &str) -> Result<(), String> {
    crate::identity::spiffe_id::canonical(id)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// An upstream name as the config accepts it.
pub(super) fn check_server_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.contains(['/', '"']) {
        return Err(format!(
            "server name {name:?} must be non-empty and contain no '/' or '\"'"
        ));
    }
    Ok(())
}

/// RFC 3339 time (e.g. `2026-01-01T10:00:00Z`) to Unix milliseconds.
pub(super) fn parse_time(text: &str) -> Result<i64, String> {
    let at = OffsetDateTime::parse(text, &Rfc3339)
        .map_err(|e| format!("{text:?} is not an RFC 3339 time: {e}"))?;
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000)
        .map_err(|_| format!("{text:?} is out of range"))
}

/// Unix milliseconds as RFC 3339 UTC, for output.
pub(super) fn format_time(unix_ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000)
        .ok()
        .and_then(|at| at.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("{unix_ms} ms"))
}

/// A YAML value as JSON text, or why it has no JSON form. Mapping order is
/// kept. Refused rather than coerced: non-string keys (JSON would turn `1:`
/// into `"1"`), tags, and NaN or infinite numbers (JSON would write null).
pub(super) fn yaml_to_json(value: &Yaml) -> Result<String, String> {
    check_json_compatible(value)?;
    serde_json::to_string(value).map_err(|e| e.to_string())
}

fn check_json_compatible(value: &Yaml) -> Result<(), String> {
    match value {
        Yaml::Null | Yaml::Bool(_) | Yaml::String(_) => Ok(()),
        Yaml::Number(n) if n.is_nan() || n.is_infinite() => {
            Err(format!("the number {n} has no JSON form"))
        }
        Yaml::Number(_) => Ok(()),
        Yaml::Sequence(items) => items.iter().try_for_each(check_json_compatible),
        Yaml::Mapping(map) => map.iter().try_for_each(|(key, value)| match key {
            Yaml::String(_) => check_json_compatible(value),
            other => Err(format!(
                "the mapping key {} is not a string (JSON keys are strings; quote it)",
                serde_yaml_ng::to_string(other)
                    .map_or_else(|_| "?".to_owned(), |s| s.trim().to_owned())
            )),
        }),
        Yaml::Tagged(tagged) => Err(format!("the tagged value {} has no JSON form", tagged.tag)),
    }
}

/// The verified-token claims a decision should see, from JSON text.
pub(super) fn user_from_json(json: &str) -> Result<User, String> {
    User::from_claims_json(json, None).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(text: &str) -> Yaml {
        serde_yaml_ng::from_str(text).unwrap()
    }

    #[test]
    fn yaml_becomes_json_text_in_order() {
        let json = yaml_to_json(&yaml("{b: hi, a: [1, -2, 1.5, true, null], c: {d: x}}")).unwrap();
        assert_eq!(json, r#"{"b":"hi","a":[1,-2,1.5,true,null],"c":{"d":"x"}}"#);
        let big = yaml_to_json(&yaml("{n: 18446744073709551615}")).unwrap();
        assert_eq!(big, r#"{"n":18446744073709551615}"#);
    }

    #[test]
    fn yaml_without_a_json_form_is_refused() {
        for (text, says) in [
            ("{1: a}", "mapping key 1"),
            ("{a: {[x]: 1}}", "mapping key"),
            ("{a: .nan}", "no JSON form"),
            ("{a: [.inf]}", "no JSON form"),
            ("{a: !thing 1}", "tagged value !thing"),
        ] {
            let err = yaml_to_json(&yaml(text)).unwrap_err();
            assert!(err.contains(says), "{text}: {err}");
        }
    }

    #[test]
    fn times_and_ids_are_checked() {
        assert_eq!(
            parse_time("2025-11-24T16:00:00Z").unwrap(),
            1_764_000_000_000
        );
        assert_eq!(
            parse_time("2025-11-24T17:00:00.5+01:00").unwrap(),
            1_764_000_000_500
        );
        assert!(parse_time("2025-11-24").is_err());
        assert_eq!(format_time(1_764_000_000_000), "2025-11-24T16:00:00Z");
        assert!(check_spiffe_id("spiffe://example.org/ns/demo/sa/agent").is_ok());
        for bad in [
            "alice",
            "spiffe://Example.org/a",
            "spiffe://example.org/a/",
            "",
        ] {
            assert!(check_spiffe_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn one_target_at_most() {
        assert_eq!(
            OwnedTarget::from_parts(None, None, None, None).unwrap(),
            OwnedTarget::Server
        );
        assert_eq!(
            OwnedTarget::from_parts(Some("echo"), None, None, None).unwrap(),
            OwnedTarget::Tool("echo".into())
        );
        assert!(OwnedTarget::from_parts(Some("echo"), Some("p"), None, None).is_err());
        assert!(OwnedTarget::from_parts(None, None, None, Some("agent")).is_err());
    }
}
