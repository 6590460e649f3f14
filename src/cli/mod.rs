//! Policy tooling on the command line: `policy test` runs declarative test
//! cases against a policy directory, `explain` decides one request and says
//! why, `policy matrix` tabulates who may call what (or what changed between
//! two policy directories). `audit verify` checks the hash chain and the
//! signed checkpoints of audit files ([`audit_verify`], exit codes there).
//!
//! Every command decides with the same [`PolicyEngine`] and the same
//! [`PolicyInput`](crate::policy::PolicyInput) the gateway uses, through the
//! policy module's public API only: what these commands print is what the
//! gateway would decide. They never serve, never contact a Workload API and
//! never write anywhere but stdout and stderr; `pin record` and `pin diff`
//! ([`pin`]) are the exception: they read upstreams with the gateway's own
//! SVID, and `record` writes pin files.
//!
//! Exit codes, for all three: 0 success, 1 the check failed (a test case
//! failed, no case ran, or `--fail-on-change` saw a change), 2 unusable
//! input ([`CliError`]).

pub mod audit_verify;
mod engine_log;
pub mod explain;
mod inventory;
pub mod matrix;
pub mod pin;
pub mod policy_test;
mod query;

use std::path::Path;

use crate::policy::{PolicyEngine, PolicyError};

/// Output format of `explain` and `policy matrix`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    #[default]
    Text,
    Json,
}

/// What a command prints on stdout, and how the process exits.
#[derive(Debug)]
pub struct Outcome {
    pub text: String,
    pub exit_code: u8,
}

/// Exit code when the check ran and failed.
pub const EXIT_FAILED: u8 = 1;
/// Exit code for unusable input: bad flags, files, or policies that do not load.
pub const EXIT_BAD_INPUT: u8 = 2;

/// Unusable input; the process exits with [`EXIT_BAD_INPUT`].
#[derive(thiserror::Error, Debug)]
pub enum CliError {
    #[error("policies in {dir}: {source}")]
    Policies { dir: String, source: PolicyError },
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// A file that does not parse or validate: names the file, and the case
    /// or entry when there is one.
    #[error("{file}: {message}")]
    File { file: String, message: String },
    /// A bad command-line value: names the flag.
    #[error("{flag}: {message}")]
    Flag { flag: &'static str, message: String },
    #[error("config: {0}")]
    Config(String),
    /// Several problems at once (all bad test files are reported together).
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Many(Vec<CliError>),
}

impl Outcome {
    fn new(text: String, exit_code: u8) -> Outcome {
        Outcome { text, exit_code }
    }
}

/// Loads a policy directory; the error names the directory and, through
/// the policy error, the file (and line and column where Cedar gives one).
fn load_policies(dir: &Path) -> Result<PolicyEngine, CliError> {
    PolicyEngine::load_dir(dir).map_err(|source| CliError::Policies {
        dir: dir.display().to_string(),
        source,
    })
}

fn read_file(path: &Path) -> Result<String, CliError> {
    std::fs::read_to_string(path).map_err(|source| CliError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// `[a, b]`, or `[]`.
fn id_list(ids: &[String]) -> String {
    format!("[{}]", ids.join(", "))
}

/// `1 policy`, `2 policies`.
fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}
