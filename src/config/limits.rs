//! `limits:`: how large a request may be and how many MCP sessions the
//! gateway holds, in all and per identity. A full table refuses new
//! sessions; it never evicts a live one, and one identity may hold only a
//! share of it, so one agent cannot lock the others out. `per_identity`
//! (`limit_rules`): request rate, requests in flight and streams per caller.

use std::time::Duration;

use anyhow::bail;
use serde::Deserialize;

use super::limit_rules::{PerIdentityLimits, RawPerIdentity};

/// Default request body limit: 1 MiB.
const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;
/// Largest accepted `max_body_bytes`: 64 MiB.
const MAX_MAX_BODY_BYTES: usize = 64 << 20;
/// Default idle timeout of an MCP session: 30 minutes.
const DEFAULT_SESSION_IDLE: Duration = Duration::from_secs(30 * 60);
/// Default bound on concurrent sessions (per table).
const DEFAULT_MAX_SESSIONS: usize = 100_000;
/// Unless configured, one identity may hold this share of a table.
const DEFAULT_IDENTITY_SHARE: usize = 4;

/// The validated `limits:` section.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitsConfig {
    pub max_body_bytes: usize,
    /// A session unused this long ends.
    pub session_idle_timeout: Duration,
    /// At most this many sessions at once in each session table (one per
    /// upstream, one for the aggregated endpoint); further `initialize`s
    /// are refused before they reach an upstream.
    pub max_sessions: usize,
    /// At most this many of them held by one SPIFFE ID. Default: a quarter
    /// of `max_sessions` (at least 1).
    pub max_sessions_per_identity: usize,
    /// Rate, in-flight and stream limits per caller (`per_identity`);
    /// the only part of the config file that reloads without a restart.
    pub per_identity: PerIdentityLimits,
}

impl Default for LimitsConfig {
    fn default() -> LimitsConfig {
        LimitsConfig {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            session_idle_timeout: DEFAULT_SESSION_IDLE,
            max_sessions: DEFAULT_MAX_SESSIONS,
            max_sessions_per_identity: identity_share(DEFAULT_MAX_SESSIONS),
            per_identity: PerIdentityLimits::default(),
        }
    }
}

fn identity_share(max_sessions: usize) -> usize {
    (max_sessions / DEFAULT_IDENTITY_SHARE).max(1)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    max_body_bytes: Option<usize>,
    session_idle_timeout_seconds: Option<u64>,
    max_sessions: Option<usize>,
    max_sessions_per_identity: Option<usize>,
    per_identity: Option<RawPerIdentity>,
}

impl RawLimits {
    /// `upstreams`: the configured upstream names (tool rules name them).
    pub(super) fn validate(&self, upstreams: &[&str]) -> anyhow::Result<LimitsConfig> {
        let max_body_bytes = match self.max_body_bytes {
            None => DEFAULT_MAX_BODY_BYTES,
            Some(0) => bail!("limits.max_body_bytes: must be greater than 0"),
            Some(n) if n > MAX_MAX_BODY_BYTES => {
                bail!("limits.max_body_bytes: at most {MAX_MAX_BODY_BYTES} (64 MiB)")
            }
            Some(n) => n,
        };
        let session_idle_timeout = match self.session_idle_timeout_seconds {
            None => DEFAULT_SESSION_IDLE,
            Some(0) => bail!("limits.session_idle_timeout_seconds: must be greater than 0"),
            Some(n) => Duration::from_secs(n),
        };
        let max_sessions = match self.max_sessions {
            None => DEFAULT_MAX_SESSIONS,
            Some(0) => bail!("limits.max_sessions: must be greater than 0"),
            Some(n) => n,
        };
        let max_sessions_per_identity = match self.max_sessions_per_identity {
            None => identity_share(max_sessions),
            Some(0) => bail!("limits.max_sessions_per_identity: must be greater than 0"),
            Some(n) if n > max_sessions => bail!(
                "limits.max_sessions_per_identity: {n} is more than limits.max_sessions ({max_sessions})"
            ),
            Some(n) => n,
        };
        let per_identity = match &self.per_identity {
            None => PerIdentityLimits::default(),
            Some(raw) => raw.validate(upstreams)?,
        };
        Ok(LimitsConfig {
            max_body_bytes,
            session_idle_timeout,
            max_sessions,
            max_sessions_per_identity,
            per_identity,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(max_sessions: Option<usize>, per_identity: Option<usize>) -> RawLimits {
        RawLimits {
            max_sessions,
            max_sessions_per_identity: per_identity,
            ..RawLimits::default()
        }
    }

    #[test]
    fn one_identity_gets_a_quarter_of_the_table_unless_configured() {
        assert_eq!(
            raw(None, None).validate(&[]).unwrap(),
            LimitsConfig::default()
        );
        assert_eq!(
            LimitsConfig::default().max_sessions_per_identity,
            DEFAULT_MAX_SESSIONS / 4
        );
        let limits = raw(Some(100), None).validate(&[]).unwrap();
        assert_eq!(limits.max_sessions_per_identity, 25);
        assert_eq!(
            raw(Some(3), None)
                .validate(&[])
                .unwrap()
                .max_sessions_per_identity,
            1
        );
        let limits = raw(Some(100), Some(100)).validate(&[]).unwrap();
        assert_eq!(limits.max_sessions_per_identity, 100);
    }

    #[test]
    fn bad_session_limits_are_refused_by_name() {
        for (max, per, field) in [
            (Some(0), None, "limits.max_sessions:"),
            (None, Some(0), "limits.max_sessions_per_identity:"),
            (Some(10), Some(11), "limits.max_sessions_per_identity:"),
        ] {
            let error = raw(max, per).validate(&[]).unwrap_err().to_string();
            assert!(error.starts_with(field), "{error}");
        }
    }
}
