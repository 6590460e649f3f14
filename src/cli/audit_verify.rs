//! `audit verify FILE... --bundle BUNDLE`: checks the hash chain and the
//! signed checkpoints of audit files (one log split by rotation, oldest
//! first) with [`crate::audit::verify`], the function the tests use, and
//! prints what it found.
//!
//! Exit codes: 0 verified (every line sealed by a verified checkpoint),
//! 1 tampered or invalid (the first problem, with its file and line; or
//! a segment by another workload than `--spiffe-id`),
//! 2 unusable input (a file or the bundle cannot be read), 3 the chain is
//! intact but part of it is unproven (lines after the last signed
//! checkpoint, an unsigned checkpoint, files missing before the first).
//! Must never: exit 0 for a log any line of which no signature covers.

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::Args;

use super::{CliError, EXIT_FAILED, Outcome, read_file};
use crate::audit::checkpoint::Bundle;
use crate::audit::verify::{self, Report};
use crate::identity::spiffe_id;

/// Exit code when the chain is intact but part of it is unproven.
pub const EXIT_UNPROVEN: u8 = 3;

#[derive(Args, Debug)]
#[command(
    after_help = "Exit codes: 0 verified; 1 tampered or invalid (the first problem, \
with file and line), or written by another workload than --spiffe-id; 2 a file or the bundle cannot be read; 3 intact but partly unproven \
(lines after the last signed checkpoint, unsigned checkpoints, earlier files not given)."
)]
pub struct VerifyArgs {
    /// Audit files of one log, oldest first (rotated files before the
    /// current one).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// PEM file of the CA certificates the gateway's SVIDs chain to (the
    /// trust bundle).
    #[arg(long)]
    pub bundle: PathBuf,
    /// The gateway's SPIFFE ID: every segment must be this workload's
    /// (otherwise any workload with an SVID from the bundle's CAs could
    /// have written a log of its own).
    #[arg(long)]
    pub spiffe_id: Option<String>,
}

pub fn run(args: &VerifyArgs) -> Result<Outcome, CliError> {
    if let Some(id) = &args.spiffe_id {
        spiffe_id::workload(id).map_err(|e| CliError::Flag {
            flag: "--spiffe-id",
            message: e.to_string(),
        })?;
    }
    let pem = read_file(&args.bundle)?;
    let bundle = Bundle::from_pem(pem.as_bytes()).map_err(|e| CliError::File {
        file: args.bundle.display().to_string(),
        message: e.to_string(),
    })?;
    let report = verify::verify_files(&args.files, &bundle).map_err(|e| match e {
        verify::VerifyError::Read { file, source } => CliError::Read { path: file, source },
    })?;
    Ok(outcome(&report, args.spiffe_id.as_deref()))
}

/// The report as text, and its exit code; `expected`: the SPIFFE ID every
/// segment must have been written by.
pub fn outcome(report: &Report, expected: Option<&str>) -> Outcome {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "{} line(s), {} segment(s), {} signed checkpoint(s) by {} certificate(s); gateway: {}",
        report.lines,
        report.segments,
        report.signed_checkpoints,
        report.signers.len(),
        report.gateways.first().map_or("unknown", String::as_str),
    );
    if let Some((at, problem)) = &report.tampered {
        let _ = writeln!(
            text,
            "TAMPERED at {at}: {problem}\nverification stopped there"
        );
        return Outcome::new(text, EXIT_FAILED);
    }
    if let Some(want) = expected
        && let Some(other) = report.gateways.iter().find(|id| *id != want)
    {
        let _ = writeln!(
            text,
            "WRONG WORKLOAD: a segment was written by {other}, not {want}"
        );
        return Outcome::new(text, EXIT_FAILED);
    }
    for note in &report.unproven {
        let _ = writeln!(text, "unproven: {note}");
    }
    if report.unproven.is_empty() {
        text.push_str("verified\n");
        Outcome::new(text, 0)
    } else {
        text.push_str("intact, partly unproven\n");
        Outcome::new(text, EXIT_UNPROVEN)
    }
}
