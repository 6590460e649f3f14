//! `audit:`: the sink, what calls meet while records cannot be written,
//! and whether batches are synced.

use std::path::{Path, PathBuf};

use anyhow::bail;
use serde::Deserialize;

/// `audit:`: where records go and what happens when they cannot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    pub sink: AuditSink,
    /// What a call meets while audit records cannot be written.
    pub on_failure: AuditOnFailure,
    /// `audit.fsync`: every batch of records is synced to disk before it
    /// counts as written.
    pub fsync: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditSink {
    Stdout,
    File(PathBuf),
}

/// `audit.on_failure`: what happens to calls while audit writes fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditOnFailure {
    /// Refuse calls (-32068, HTTP 503) and report not ready until writes
    /// succeed again. The default, for either sink: a call that cannot be
    /// audited is not served.
    Refuse,
    /// Serve calls; records that cannot be kept for a retry are counted in
    /// `mcp_gateway_audit_records_lost_total`.
    Continue,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAudit {
    #[serde(default)]
    sink: RawAuditSink,
    path: Option<PathBuf>,
    on_failure: Option<AuditOnFailure>,
    #[serde(default)]
    fsync: bool,
}

#[derive(Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum RawAuditSink {
    #[default]
    Stdout,
    File,
}

impl RawAudit {
    pub(super) fn validate(self, base: &Path) -> anyhow::Result<AuditConfig> {
        Ok(AuditConfig {
            on_failure: self.on_failure.unwrap_or(AuditOnFailure::Refuse),
            fsync: self.fsync,
            sink: self.sink(base)?,
        })
    }

    /// `audit.sink` and `audit.path`: a path exactly with `sink: file`.
    fn sink(&self, base: &Path) -> anyhow::Result<AuditSink> {
        Ok(match (&self.sink, &self.path) {
            (RawAuditSink::Stdout, None) => AuditSink::Stdout,
            (RawAuditSink::Stdout, Some(_)) => bail!("audit.path: only valid with `sink: file`"),
            (RawAuditSink::File, Some(p)) => AuditSink::File(base.join(p)),
            (RawAuditSink::File, None) => bail!("audit.path: required with `sink: file`"),
        })
    }
}
