//! `explain`: decides one request and says why: the decision, the reason,
//! the policies that determined it, evaluation errors, the request as Cedar
//! sees it and the policy-set version.
//!
//! A query, not a check: it exits 0 whatever the decision, and non-zero only
//! for bad input. Must never decide differently from the gateway: the
//! request goes through the same engine and the same input type.

use std::path::PathBuf;

use serde::Serialize;
use serde_json::value::RawValue;

use super::engine_log;
use super::query::{
    OwnedTarget, Query, check_server_name, check_spiffe_id, format_time, parse_time, user_from_json,
};
use super::{CliError, Format, Outcome, id_list, load_policies};
use crate::clock;
use crate::config::{Config, Env, ProcessEnv, SPIFFE_ENDPOINT_SOCKET};
use crate::pins::PinStatus;
use crate::policy::{Decision, DecisionReason};

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["policies", "config"])))]
#[command(group(clap::ArgGroup::new("target").args(["tool", "prompt", "resource", "workload"])))]
pub struct ExplainArgs {
    /// Policy directory to decide with.
    #[arg(long, value_name = "DIR")]
    pub policies: Option<PathBuf>,
    /// Gateway config file: decide with its policy.dir, upstream.name and
    /// upstream.spiffe_id (with `upstreams:`, the entry --server names, else
    /// the first).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Upstream name, as policies name it (Mcp::Server::"NAME"); overrides
    /// the config's.
    #[arg(long, value_name = "NAME")]
    pub server: Option<String>,
    /// The upstream's SPIFFE ID (context.upstream_spiffe_id); overrides the
    /// config's.
    #[arg(long, value_name = "SPIFFE_ID")]
    pub server_spiffe_id: Option<String>,
    /// Caller SPIFFE ID; for server->client methods, the upstream's.
    #[arg(long, visible_alias = "caller", value_name = "SPIFFE_ID")]
    pub principal: String,
    /// The MCP method, e.g. tools/call.
    #[arg(long, visible_alias = "method", value_name = "METHOD")]
    pub action: String,
    /// Tool name (tools/call).
    #[arg(long, value_name = "NAME")]
    pub tool: Option<String>,
    /// Prompt name (prompts/get).
    #[arg(long, value_name = "NAME")]
    pub prompt: Option<String>,
    /// Resource URI (resources/read, subscribe, unsubscribe).
    #[arg(long, value_name = "URI")]
    pub resource: Option<String>,
    /// The agent's SPIFFE ID, for server->client requests (sampling,
    /// elicitation, roots). Without tool, prompt, resource or workload the
    /// resource is the server.
    #[arg(long, value_name = "SPIFFE_ID")]
    pub workload: Option<String>,
    /// Tool or prompt arguments, JSON text as the call carries it.
    #[arg(long, value_name = "JSON")]
    pub arguments: Option<String>,
    /// Claims of the end user's verified token, a JSON object with `sub`
    /// and `iss`.
    #[arg(long, value_name = "JSON")]
    pub user_claims: Option<String>,
    /// Mcp-Session-Id of the request (context.session_id).
    #[arg(long, value_name = "ID")]
    pub session_id: Option<String>,
    /// Negotiated MCP protocol version (context.protocol_version).
    #[arg(long, value_name = "VERSION")]
    pub protocol_version: Option<String>,
    /// The called definition against its pin (context.pin): pinned,
    /// changed or unpinned, as on an upstream with `pins` on.
    #[arg(long, value_name = "STATUS")]
    pub pin: Option<String>,
    /// Decision time, RFC 3339 (default: now).
    #[arg(long, value_name = "RFC3339")]
    pub time: Option<String>,
    /// Output: aligned text, or one JSON object.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

/// Where the policies and the upstream come from.
struct Source {
    dir: PathBuf,
    server: String,
    server_spiffe_id: String,
}

/// The process environment, but a config's Workload API socket is not
/// needed to explain a decision, so its absence is not an error here.
struct NoSocketNeeded;

#[derive(Serialize)]
struct Report<'a> {
    allowed: bool,
    decision: &'static str,
    reason: &'static str,
    policy_ids: &'a [String],
    /// Present when the reason is `error`.
    errors: Option<Errors<'a>>,
    request: RequestReport<'a>,
    policy_set: PolicySetReport<'a>,
}

#[derive(Serialize)]
struct Errors<'a> {
    /// The policies that failed to evaluate (none: the request could not be built).
    policy_ids: &'a [String],
    /// What the engine logged while deciding, when it logged anything.
    details: &'a [String],
}

#[derive(Serialize)]
struct RequestReport<'a> {
    principal: &'a str,
    action: &'a str,
    resource: String,
    server: &'a str,
    server_spiffe_id: &'a str,
    arguments: Option<&'a RawValue>,
    user: Option<UserReport<'a>>,
    session_id: Option<&'a str>,
    protocol_version: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pin: Option<&'static str>,
    time: String,
}

#[derive(Serialize)]
struct UserReport<'a> {
    sub: &'a str,
    iss: &'a str,
}

#[derive(Serialize)]
struct PolicySetReport<'a> {
    dir: String,
    version: &'a str,
    policies: usize,
}

impl Env for NoSocketNeeded {
    fn var(&self, name: &str) -> Option<String> {
        ProcessEnv.var(name).or_else(|| {
            (name == SPIFFE_ENDPOINT_SOCKET).then(|| "unix:///not/used/by/explain".to_owned())
        })
    }
}

/// Decides the request the flags describe and reports it.
pub fn run(args: &ExplainArgs) -> Result<Outcome, CliError> {
    let source = Source::resolve(args)?;
    let engine = load_policies(&source.dir)?;
    let query = build_query(args, source.server, source.server_spiffe_id)?;
    let (decision, details) = engine_log::capture(|| query.decide(&engine));
    let arguments = match &query.arguments {
        // Checked by `build_query`, so this is always Some.
        Some(text) => serde_json::from_str::<&RawValue>(text).ok(),
        None => None,
    };
    let report = Report {
        allowed: decision.allowed,
        decision: if decision.allowed { "allow" } else { "deny" },
        reason: decision.reason.as_str(),
        policy_ids: &decision.policy_ids,
        errors: (decision.reason == DecisionReason::Error).then_some(Errors {
            policy_ids: &decision.policy_ids,
            details: &details,
        }),
        request: RequestReport::new(&query, arguments),
        policy_set: PolicySetReport {
            dir: source.dir.display().to_string(),
            version: engine.version(),
            policies: engine.policy_count(),
        },
    };
    let text = match args.format {
        Format::Json => {
            let json = serde_json::to_string_pretty(&report).map_err(|e| CliError::Flag {
                flag: "--format",
                message: e.to_string(),
            })?;
            json + "\n"
        }
        Format::Text => render_text(&report, &decision),
    };
    Ok(Outcome::new(text, 0))
}

impl Source {
    fn resolve(args: &ExplainArgs) -> Result<Source, CliError> {
        let (dir, server, server_spiffe_id) = match (&args.policies, &args.config) {
            (Some(dir), _) => (dir.clone(), None, None),
            (None, Some(path)) => {
                let config = Config::load(path, &NoSocketNeeded)
                    .map_err(|e| CliError::Config(format!("{e:#}")))?;
                // --server picks the upstream (and so its SPIFFE ID);
                // without it, the first. A name the config does not have is
                // refused, never replaced by another upstream's identity.
                let chosen = match args.server.as_deref() {
                    None => &config.upstreams[0],
                    Some(name) => config
                        .upstreams
                        .iter()
                        .find(|u| u.name == name)
                        .ok_or_else(|| CliError::Flag {
                            flag: "--server",
                            message: format!("{name:?} is not an upstream in the config"),
                        })?,
                };
                (
                    config.policy_dir.clone(),
                    Some(chosen.name.clone()),
                    Some(chosen.spiffe_id.to_string()),
                )
            }
            // clap requires one of the two.
            (None, None) => {
                return Err(CliError::Flag {
                    flag: "--policies",
                    message: "give --policies DIR or --config FILE".to_owned(),
                });
            }
        };
        let server = args.server.clone().or(server).ok_or(CliError::Flag {
            flag: "--server",
            message: "required with --policies (the upstream name policies use)".to_owned(),
        })?;
        let server_spiffe_id =
            args.server_spiffe_id
                .clone()
                .or(server_spiffe_id)
                .ok_or(CliError::Flag {
                    flag: "--server-spiffe-id",
                    message: "required with --policies (the upstream's SPIFFE ID)".to_owned(),
                })?;
        Ok(Source {
            dir,
            server,
            server_spiffe_id,
        })
    }
}

fn build_query(
    args: &ExplainArgs,
    server: String,
    server_spiffe_id: String,
) -> Result<Query, CliError> {
    let flag = |flag: &'static str| move |message: String| CliError::Flag { flag, message };
    check_server_name(&server).map_err(flag("--server"))?;
    check_spiffe_id(&server_spiffe_id).map_err(flag("--server-spiffe-id"))?;
    check_spiffe_id(&args.principal).map_err(flag("--principal"))?;
    if args.action.is_empty() {
        return Err(flag("--action")("must not be empty".to_owned()));
    }
    let target = OwnedTarget::from_parts(
        args.tool.as_deref(),
        args.prompt.as_deref(),
        args.resource.as_deref(),
        args.workload.as_deref(),
    )
    .map_err(flag("--workload"))?;
    if let Some(text) = &args.arguments {
        serde_json::from_str::<&RawValue>(text)
            .map_err(|e| flag("--arguments")(format!("not JSON: {e}")))?;
    }
    let user = match &args.user_claims {
        Some(json) => Some(user_from_json(json).map_err(flag("--user-claims"))?),
        None => None,
    };
    let pin = args.pin.as_deref().map(PinStatus::parse).transpose();
    let pin = pin.map_err(flag("--pin"))?;
    let now_unix_ms = match &args.time {
        Some(time) => parse_time(time).map_err(flag("--time"))?,
        None => clock::unix_ms(),
    };
    Ok(Query {
        principal: args.principal.clone(),
        action: args.action.clone(),
        server,
        server_spiffe_id,
        target,
        arguments: args.arguments.clone(),
        session_id: args.session_id.clone(),
        protocol_version: args.protocol_version.clone(),
        user,
        now_unix_ms,
        pin,
    })
}

impl<'a> RequestReport<'a> {
    fn new(query: &'a Query, arguments: Option<&'a RawValue>) -> RequestReport<'a> {
        RequestReport {
            principal: &query.principal,
            action: &query.action,
            resource: query.resource_entity(),
            server: &query.server,
            server_spiffe_id: &query.server_spiffe_id,
            arguments,
            user: query.user.as_ref().map(|u| UserReport {
                sub: u.subject(),
                iss: u.issuer(),
            }),
            session_id: query.session_id.as_deref(),
            protocol_version: query.protocol_version.as_deref(),
            pin: query.pin.map(PinStatus::as_str),
            time: format_time(query.now_unix_ms),
        }
    }
}

/// One `key: value` line per fact, keys aligned.
fn render_text(report: &Report<'_>, decision: &Decision) -> String {
    let request = &report.request;
    let mut lines: Vec<(&str, String)> = vec![
        ("decision", report.decision.to_owned()),
        (
            "reason",
            format!("{} ({})", report.reason, reason_text(decision)),
        ),
        ("policies", id_list(report.policy_ids)),
    ];
    if let Some(errors) = &report.errors {
        for detail in errors.details {
            lines.push(("error detail", detail.clone()));
        }
    }
    lines.extend([
        (
            "principal",
            format!("Mcp::Workload::{:?}", request.principal),
        ),
        ("action", format!("Mcp::Action::{:?}", request.action)),
        ("resource", request.resource.clone()),
        ("context.time", request.time.clone()),
        (
            "context.upstream_spiffe_id",
            request.server_spiffe_id.to_owned(),
        ),
    ]);
    lines.extend(optional_context(request));
    lines.push((
        "policy set",
        format!(
            "{} ({} in {})",
            report.policy_set.version,
            super::count(report.policy_set.policies, "policy", "policies"),
            report.policy_set.dir
        ),
    ));
    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    lines
        .iter()
        .map(|(key, value)| format!("{:width$} {value}\n", format!("{key}:")))
        .collect()
}

/// The context fields the request has, as (label, value) lines.
fn optional_context(request: &RequestReport<'_>) -> Vec<(&'static str, String)> {
    let optional = [
        (
            "context.arguments",
            request.arguments.map(|a| a.get().to_owned()),
        ),
        (
            "context.user",
            request
                .user
                .as_ref()
                .map(|u| format!("sub {:?}, iss {:?}", u.sub, u.iss)),
        ),
        ("context.session_id", request.session_id.map(str::to_owned)),
        (
            "context.protocol_version",
            request.protocol_version.map(str::to_owned),
        ),
        ("context.pin", request.pin.map(str::to_owned)),
    ];
    optional
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect()
}

/// What the reason means, for a reader who does not know the labels.
fn reason_text(decision: &Decision) -> &'static str {
    match decision.reason {
        DecisionReason::Permitted => "the listed policies permit it and no forbid matched",
        DecisionReason::Forbidden => "the listed forbid policies match; a forbid beats any permit",
        DecisionReason::NoPermit => {
            "no policy permits it, or the schema does not declare the method: denied by default"
        }
        DecisionReason::Error if decision.policy_ids.is_empty() => {
            "the request could not be built, e.g. the method does not take this kind of \
             resource (tools/call needs --tool, server->client requests --workload): denied"
        }
        DecisionReason::Error => {
            "the listed policies failed to evaluate; an error denies, fail closed"
        }
    }
}
