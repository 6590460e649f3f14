//! `sessions:`: the keys that seal session ids, so that any replica holding
//! them serves any session, and a session's absolute lifetime.
//!
//! Without `keys_file` the gateway seals with a key of its own, drawn at
//! start and said so in the log: sessions are then valid on this process
//! only. A configured file is read at start (missing or malformed: the
//! start fails) and again on SIGHUP and when it changes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::bail;
use serde::Deserialize;

/// Default absolute lifetime of a session: 24 hours.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Longest absolute lifetime: 30 days.
const MAX_LIFETIME_SECONDS: u64 = 30 * 24 * 3600;
/// Default interval between looks at the key file.
const DEFAULT_KEYS_WATCH: Duration = Duration::from_secs(5);

/// The validated `sessions:` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionsConfig {
    /// Keys shared by the replicas; `None`: a key of the process's own.
    pub keys_file: Option<PathBuf>,
    /// A session ends this long after it was issued, on every replica.
    pub max_lifetime: Duration,
    /// How often the key file is looked at for a change (also on SIGHUP).
    pub keys_watch_interval: Duration,
}

impl Default for SessionsConfig {
    fn default() -> SessionsConfig {
        SessionsConfig {
            keys_file: None,
            max_lifetime: DEFAULT_LIFETIME,
            keys_watch_interval: DEFAULT_KEYS_WATCH,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSessions {
    keys_file: Option<String>,
    max_lifetime_seconds: Option<u64>,
    keys_watch_interval_ms: Option<u64>,
}

impl RawSessions {
    pub(super) fn validate(self, base: &Path) -> anyhow::Result<SessionsConfig> {
        let keys_file = match self.keys_file {
            Some(f) if f.trim().is_empty() => bail!("sessions.keys_file: must name a file"),
            f => f.map(|f| base.join(f)),
        };
        let max_lifetime = match self.max_lifetime_seconds {
            None => DEFAULT_LIFETIME,
            Some(0) => bail!("sessions.max_lifetime_seconds: must be greater than 0"),
            Some(n) if n > MAX_LIFETIME_SECONDS => bail!(
                "sessions.max_lifetime_seconds: {n} is more than 30 days ({MAX_LIFETIME_SECONDS})"
            ),
            Some(n) => Duration::from_secs(n),
        };
        let keys_watch_interval = match self.keys_watch_interval_ms {
            None => DEFAULT_KEYS_WATCH,
            Some(n) if !(100..=3_600_000).contains(&n) => {
                bail!("sessions.keys_watch_interval_ms: between 100 and 3600000")
            }
            Some(n) => Duration::from_millis(n),
        };
        Ok(SessionsConfig {
            keys_file,
            max_lifetime,
            keys_watch_interval,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> anyhow::Result<SessionsConfig> {
        let raw: RawSessions = serde_yaml_ng::from_str(yaml)?;
        raw.validate(Path::new("/etc/gw"))
    }

    #[test]
    fn defaults_and_a_relative_key_file() {
        assert_eq!(parse("{}").unwrap(), SessionsConfig::default());
        let c = parse("{keys_file: keys/session, max_lifetime_seconds: 3600}").unwrap();
        assert_eq!(c.keys_file, Some(PathBuf::from("/etc/gw/keys/session")));
        assert_eq!(c.max_lifetime, Duration::from_secs(3600));
    }

    #[test]
    fn settings_that_cannot_work_name_the_field() {
        for (yaml, field) in [
            ("{keys_file: ''}", "sessions.keys_file"),
            ("{max_lifetime_seconds: 0}", "sessions.max_lifetime_seconds"),
            (
                "{max_lifetime_seconds: 2592001}",
                "sessions.max_lifetime_seconds",
            ),
            ("{max_lifetime_seconds: -1}", "max_lifetime_seconds"),
            (
                "{keys_watch_interval_ms: 10}",
                "sessions.keys_watch_interval_ms",
            ),
            (
                "{keys_watch_interval_ms: 3600001}",
                "sessions.keys_watch_interval_ms",
            ),
            ("{key_file: x}", "key_file"),
        ] {
            let err = format!("{:#}", parse(yaml).expect_err(yaml));
            assert!(err.contains(field), "{yaml}: {err}");
        }
    }
}
