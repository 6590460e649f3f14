//! `policy test DIR`: runs the declarative cases of the `*.test.yaml` files
//! in a policy directory against the policies of that directory.
//!
//! The policy loader reads only `*.cedar` and `*.cedarschema` files, so test
//! files can live next to the policies they test (and do not change the
//! policy-set version). A case names a request (principal, action, target,
//! arguments, user claims, session, time) and the expected decision, and
//! optionally the reason and the exact determining policy ids.
//!
//! Must never report success when nothing ran, nor run a half-read test
//! file: every file and case is parsed and checked before any case runs,
//! and unknown fields are errors.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};
use serde_yaml_ng::Value as Yaml;

use super::query::{
    OwnedTarget, Query, check_server_name, check_spiffe_id, parse_time, user_from_json,
    yaml_to_json,
};
use super::{CliError, EXIT_FAILED, Outcome, id_list, load_policies, read_file};
use crate::clock;
use crate::pins::PinStatus;
use crate::policy::{Decision, PolicyEngine};

/// Test files are the files of the policy directory ending in this.
const TEST_SUFFIX: &str = ".test.yaml";

#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// Policy directory: one *.cedarschema, the *.cedar policies and the
    /// *.test.yaml cases to run against them.
    pub dir: PathBuf,
    /// Also list the cases that pass.
    #[arg(long, short)]
    pub verbose: bool,
}

/// A test file as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSpec {
    /// Default upstream name of the cases.
    server: Option<String>,
    /// Default upstream SPIFFE ID of the cases (`context.upstream_spiffe_id`).
    server_spiffe_id: Option<String>,
    /// Default decision time (RFC 3339); the time of the run if unset.
    time: Option<String>,
    cases: Vec<CaseSpec>,
}

/// The same file, read loosely, only to name the case a parse error is in.
#[derive(Deserialize)]
struct LooseFile {
    #[serde(default)]
    cases: Vec<Yaml>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseSpec {
    name: String,
    principal: String,
    action: String,
    server: Option<String>,
    server_spiffe_id: Option<String>,
    tool: Option<String>,
    prompt: Option<String>,
    resource: Option<String>,
    workload: Option<String>,
    /// Any YAML with a JSON form; `arguments: null` is sent as JSON null.
    #[serde(default, deserialize_with = "present")]
    arguments: Option<Yaml>,
    /// Claims of the end user's verified token.
    user: Option<Yaml>,
    session_id: Option<String>,
    protocol_version: Option<String>,
    /// `context.pin`: pinned, changed or unpinned.
    pin: Option<String>,
    time: Option<String>,
    expect: Expect,
    reason: Option<ReasonSpec>,
    policies: Option<Vec<String>>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Expect {
    Allow,
    Deny,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum ReasonSpec {
    Permit,
    Forbid,
    DefaultDeny,
    Error,
}

/// File-level defaults for the cases.
struct Defaults {
    server: Option<String>,
    server_spiffe_id: Option<String>,
    now_unix_ms: i64,
}

/// One test file, checked and ready to run.
struct Suite {
    file: String,
    cases: Vec<Case>,
}

struct Case {
    name: String,
    query: Query,
    expect: Expected,
}

/// What a case expects; unset parts are not compared.
struct Expected {
    allowed: bool,
    reason: Option<ReasonSpec>,
    /// Sorted, like [`Decision::policy_ids`].
    policies: Option<Vec<String>>,
}

/// A present field, even when its value is `null` (`Option` would read
/// null as absent, but arguments of `null` are a different call).
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Yaml>, D::Error> {
    Yaml::deserialize(deserializer).map(Some)
}

/// Runs every case of every test file in `args.dir`.
pub fn run(args: &TestArgs) -> Result<Outcome, CliError> {
    let engine = load_policies(&args.dir)?;
    let now = clock::unix_ms();
    let mut suites = Vec::new();
    let mut errors = Vec::new();
    for path in test_files(&args.dir)? {
        match load_suite(&path, now) {
            Ok(suite) => suites.push(suite),
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        return Err(CliError::Many(errors));
    }
    Ok(run_suites(&engine, &suites, &args.dir, args.verbose))
}

fn run_suites(engine: &PolicyEngine, suites: &[Suite], dir: &Path, verbose: bool) -> Outcome {
    let (mut passed, mut failed) = (0, 0);
    let mut text = String::new();
    for suite in suites {
        for case in &suite.cases {
            let got = case.query.decide(engine);
            if case.expect.matches(&got) {
                passed += 1;
                if verbose {
                    text += &format!("ok   {}: {}: {}\n", suite.file, case.name, describe(&got));
                }
            } else {
                failed += 1;
                text += &format!(
                    "FAIL {}: {}: expected {}; got {}\n",
                    suite.file,
                    case.name,
                    case.expect.describe(),
                    describe(&got)
                );
            }
        }
    }
    if passed + failed == 0 {
        text += &format!(
            "no test cases: no *{TEST_SUFFIX} file in {} has any\n",
            dir.display()
        );
        return Outcome::new(text, EXIT_FAILED);
    }
    text += &format!(
        "{passed} passed, {failed} failed ({}, policy set {})\n",
        super::count(suites.len(), "test file", "test files"),
        engine.version()
    );
    Outcome::new(text, if failed == 0 { 0 } else { EXIT_FAILED })
}

/// `allow, reason permit, policies [a]`.
fn describe(decision: &Decision) -> String {
    format!(
        "{}, reason {}, policies {}",
        allow_deny(decision.allowed),
        decision.reason.as_str(),
        id_list(&decision.policy_ids)
    )
}

fn allow_deny(allowed: bool) -> &'static str {
    if allowed { "allow" } else { "deny" }
}

/// The `*.test.yaml` files of `dir`, sorted; hidden ones are skipped, as
/// the policy loader skips them.
fn test_files(dir: &Path) -> Result<Vec<PathBuf>, CliError> {
    let read_error = |source| CliError::Read {
        path: dir.display().to_string(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_error)? {
        let path = entry.map_err(read_error)?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.ends_with(TEST_SUFFIX) && !name.starts_with('.') && !path.is_dir() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn load_suite(path: &Path, now: i64) -> Result<Suite, CliError> {
    let file = path.display().to_string();
    let text = read_file(path)?;
    let file_error = |message| CliError::File {
        file: file.clone(),
        message,
    };
    let spec: FileSpec = serde_yaml_ng::from_str(&text).map_err(|e| {
        file_error(match failing_case(&text) {
            Some(case) => format!("{case}: {e}"),
            None => e.to_string(),
        })
    })?;
    let defaults = Defaults::from_spec(&spec, now).map_err(file_error)?;
    let mut cases = Vec::with_capacity(spec.cases.len());
    let mut errors = Vec::new();
    for (index, case) in spec.cases.into_iter().enumerate() {
        let label = case_label(index, Some(&case.name));
        match build_case(case, &defaults) {
            Ok(case) => cases.push(case),
            Err(message) => errors.push(file_error(format!("{label}: {message}"))),
        }
    }
    match errors.len() {
        0 => Ok(Suite { file, cases }),
        1 => Err(errors.remove(0)),
        _ => Err(CliError::Many(errors)),
    }
}

/// `case #3 "name"`: the first case that does not parse on its own.
fn failing_case(text: &str) -> Option<String> {
    let loose: LooseFile = serde_yaml_ng::from_str(text).ok()?;
    loose
        .cases
        .into_iter()
        .enumerate()
        .find_map(|(index, value)| {
            let name = value.get("name").and_then(Yaml::as_str).map(str::to_owned);
            serde_yaml_ng::from_value::<CaseSpec>(value)
                .err()
                .map(|_| case_label(index, name.as_deref()))
        })
}

fn case_label(index: usize, name: Option<&str>) -> String {
    match name {
        Some(name) => format!("case #{} {name:?}", index + 1),
        None => format!("case #{}", index + 1),
    }
}

impl Defaults {
    fn from_spec(spec: &FileSpec, now: i64) -> Result<Defaults, String> {
        if let Some(server) = &spec.server {
            check_server_name(server).map_err(|e| format!("server: {e}"))?;
        }
        if let Some(id) = &spec.server_spiffe_id {
            check_spiffe_id(id).map_err(|e| format!("server_spiffe_id: {e}"))?;
        }
        let now_unix_ms = match &spec.time {
            Some(time) => parse_time(time).map_err(|e| format!("time: {e}"))?,
            None => now,
        };
        Ok(Defaults {
            server: spec.server.clone(),
            server_spiffe_id: spec.server_spiffe_id.clone(),
            now_unix_ms,
        })
    }
}

/// Checks one case and turns it into a query; the error names the field.
fn build_case(spec: CaseSpec, defaults: &Defaults) -> Result<Case, String> {
    let expect = Expected::from_spec(&spec)?;
    let server = spec
        .server
        .or_else(|| defaults.server.clone())
        .ok_or("no server: set `server` in the file or in the case")?;
    check_server_name(&server).map_err(|e| format!("server: {e}"))?;
    let server_spiffe_id = spec
        .server_spiffe_id
        .or_else(|| defaults.server_spiffe_id.clone())
        .ok_or("no server_spiffe_id: set it in the file or in the case")?;
    check_spiffe_id(&server_spiffe_id).map_err(|e| format!("server_spiffe_id: {e}"))?;
    check_spiffe_id(&spec.principal).map_err(|e| format!("principal: {e}"))?;
    if spec.action.is_empty() {
        return Err("action: must not be empty".to_owned());
    }
    let target = OwnedTarget::from_parts(
        spec.tool.as_deref(),
        spec.prompt.as_deref(),
        spec.resource.as_deref(),
        spec.workload.as_deref(),
    )?;
    let arguments = match &spec.arguments {
        Some(value) => Some(yaml_to_json(value).map_err(|e| format!("arguments: {e}"))?),
        None => None,
    };
    let user = match &spec.user {
        Some(value) => {
            let json = yaml_to_json(value).map_err(|e| format!("user: {e}"))?;
            Some(user_from_json(&json).map_err(|e| format!("user: {e}"))?)
        }
        None => None,
    };
    let pin = spec.pin.as_deref().map(PinStatus::parse).transpose();
    let pin = pin.map_err(|e| format!("pin: {e}"))?;
    let now_unix_ms = match &spec.time {
        Some(time) => parse_time(time).map_err(|e| format!("time: {e}"))?,
        None => defaults.now_unix_ms,
    };
    Ok(Case {
        name: spec.name,
        query: Query {
            principal: spec.principal,
            action: spec.action,
            server,
            server_spiffe_id,
            target,
            arguments,
            session_id: spec.session_id,
            protocol_version: spec.protocol_version,
            user,
            now_unix_ms,
            pin,
        },
        expect,
    })
}

impl Expected {
    /// Refuses expectations no decision can meet.
    fn from_spec(spec: &CaseSpec) -> Result<Expected, String> {
        let allowed = spec.expect == Expect::Allow;
        if let Some(reason) = spec.reason
            && (reason == ReasonSpec::Permit) != allowed
        {
            return Err(format!(
                "reason: {} contradicts expect: {}",
                reason.as_str(),
                allow_deny(allowed)
            ));
        }
        let policies = spec.policies.clone().map(|mut ids| {
            ids.sort_unstable();
            ids
        });
        if spec.reason == Some(ReasonSpec::DefaultDeny)
            && policies.as_ref().is_some_and(|p| !p.is_empty())
        {
            return Err("policies: a default_deny is determined by no policy; use []".to_owned());
        }
        Ok(Expected {
            allowed,
            reason: spec.reason,
            policies,
        })
    }

    fn matches(&self, got: &Decision) -> bool {
        got.allowed == self.allowed
            && self
                .reason
                .is_none_or(|r| r.as_str() == got.reason.as_str())
            && self
                .policies
                .as_ref()
                .is_none_or(|ids| *ids == got.policy_ids)
    }

    /// Only what the case states.
    fn describe(&self) -> String {
        let mut text = allow_deny(self.allowed).to_owned();
        if let Some(reason) = self.reason {
            text += &format!(", reason {}", reason.as_str());
        }
        if let Some(ids) = &self.policies {
            text += &format!(", policies {}", id_list(ids));
        }
        text
    }
}

impl ReasonSpec {
    fn as_str(self) -> &'static str {
        match self {
            ReasonSpec::Permit => "permit",
            ReasonSpec::Forbid => "forbid",
            ReasonSpec::DefaultDeny => "default_deny",
            ReasonSpec::Error => "error",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(yaml: &str) -> Result<Case, String> {
        let spec: CaseSpec = serde_yaml_ng::from_str(yaml).map_err(|e| e.to_string())?;
        let defaults = Defaults {
            server: Some("demo".to_owned()),
            server_spiffe_id: Some("spiffe://example.org/ns/demo/sa/mcp-server".to_owned()),
            now_unix_ms: 7,
        };
        build_case(spec, &defaults)
    }

    const BASE: &str =
        "{name: n, principal: 'spiffe://example.org/a', action: tools/call, tool: t, ";

    #[test]
    fn arguments_null_is_sent_and_absent_is_not() {
        let null = case(&format!("{BASE}arguments: null, expect: deny}}")).unwrap();
        assert_eq!(null.query.arguments.as_deref(), Some("null"));
        let absent = case(&format!("{BASE}expect: deny}}")).unwrap();
        assert_eq!(absent.query.arguments, None);
        assert_eq!(absent.query.now_unix_ms, 7);
        let timed = case(&format!(
            "{BASE}time: '1970-01-01T00:00:01Z', expect: deny}}"
        ))
        .unwrap();
        assert_eq!(timed.query.now_unix_ms, 1000);
    }

    #[test]
    fn impossible_expectations_are_refused() {
        for (rest, says) in [
            ("expect: allow, reason: forbid}", "contradicts"),
            ("expect: deny, reason: permit}", "contradicts"),
            (
                "expect: deny, reason: default_deny, policies: [x]}",
                "default_deny",
            ),
            ("expect: maybe}", "unknown variant"),
            (
                "expect: deny, server_spiffe_id: nope}",
                "server_spiffe_id: \"nope\" is not a SPIFFE ID",
            ),
            ("expect: deny, user: {sub: a}}", "iss"),
        ] {
            let err = case(&format!("{BASE}{rest}")).err().unwrap();
            assert!(err.contains(says), "{rest}: {err}");
        }
    }

    #[test]
    fn expectations_compare_only_what_they_state() {
        let got = Decision {
            allowed: false,
            policy_ids: vec!["a".to_owned(), "b".to_owned()],
            reason: crate::policy::DecisionReason::Forbidden,
        };
        let c = case(&format!("{BASE}expect: deny, policies: [b, a]}}")).unwrap();
        assert!(c.expect.matches(&got));
        let c = case(&format!("{BASE}expect: deny, reason: error}}")).unwrap();
        assert!(!c.expect.matches(&got));
        assert_eq!(c.expect.describe(), "deny, reason error");
    }
}
