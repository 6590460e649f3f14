//! `audit:`: the sink, what calls meet while records cannot be written,
//! whether batches are synced, and how often signed checkpoints seal the
//! chain.

use std::path::{Path, PathBuf};

use anyhow::bail;
use serde::Deserialize;

use crate::audit::CheckpointPolicy;

/// `audit:`: where records go and what happens when they cannot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    pub sink: AuditSink,
    /// What a call meets while audit records cannot be written.
    pub on_failure: AuditOnFailure,
    /// `audit.fsync`: every batch of records is synced to disk before it
    /// counts as written.
    pub fsync: bool,
    /// `audit.checkpoint_every_records`, `audit.checkpoint_interval_seconds`:
    /// when a signed checkpoint seals the chain.
    pub checkpoints: CheckpointPolicy,
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
    checkpoint_every_records: Option<u64>,
    checkpoint_interval_seconds: Option<u64>,
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
            checkpoints: self.checkpoints()?,
        })
    }

    /// At least one record and one second; at most a million records and
    /// an hour, past which a crash leaves too much unproven.
    fn checkpoints(&self) -> anyhow::Result<CheckpointPolicy> {
        let default = CheckpointPolicy::default();
        let every = self
            .checkpoint_every_records
            .unwrap_or(default.every_records);
        if !(1..=1_000_000).contains(&every) {
            bail!("audit.checkpoint_every_records: {every} is not within 1..=1000000");
        }
        let seconds = match self.checkpoint_interval_seconds {
            Some(s) => s,
            None => default.interval.as_secs(),
        };
        if !(1..=3600).contains(&seconds) {
            bail!("audit.checkpoint_interval_seconds: {seconds} is not within 1..=3600");
        }
        Ok(CheckpointPolicy {
            every_records: every,
            interval: std::time::Duration::from_secs(seconds),
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
