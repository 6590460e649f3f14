//! Reloading `limits.per_identity` with the config file: on SIGHUP, and
//! when the file's bytes change (read every `policy.watch_interval_ms`;
//! a config file is small, and reading it whole also sees a Kubernetes
//! ConfigMap's symlink swap).
//!
//! The whole file is validated as at start; a bad file changes nothing:
//! the last good limits stay in force, it is logged, and
//! `mcp_gateway_config_reload_failing` says so until a good file comes.
//! A good file swaps the new rules in (`Limits::replace`, one pointer; the
//! identities' state carries over). Every other section needs a restart:
//! a change to one is logged as such and not applied.
//!
//! Must never: apply part of an invalid file, or stall a request (the
//! request path only ever loads the rules pointer).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_yaml_ng::Value;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::watch;
use tracing::{error, info, warn};

use super::Limits;
use crate::config::{Config, Env};
use crate::metrics::Metrics;

/// How often idle identities are forgotten.
const SWEEP: Duration = Duration::from_secs(10);

/// Forgets idle identities every few seconds until `shutdown`.
pub async fn sweep(limits: Arc<Limits>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(SWEEP);
    loop {
        tokio::select! {
            _ = tick.tick() => limits.sweep(),
            _ = shutdown.changed() => return,
        }
    }
}

/// What the watcher keeps between looks.
pub struct Reloader {
    pub limits: Arc<Limits>,
    pub metrics: Metrics,
    pub path: PathBuf,
    pub env: Box<dyn Env + Send + Sync>,
    /// The bytes last read (good or bad): unchanged bytes are not reloaded.
    seen: Option<Vec<u8>>,
    /// The sections of the last good file, to tell what changed.
    good: Option<Value>,
}

impl Reloader {
    pub fn new(
        limits: Arc<Limits>,
        metrics: Metrics,
        path: PathBuf,
        env: Box<dyn Env + Send + Sync>,
    ) -> Reloader {
        Reloader {
            limits,
            metrics,
            path,
            env,
            seen: None,
            good: None,
        }
    }

    /// Watches until `shutdown`: at once (the file may have changed since
    /// it was read at start), then every `interval` (`None`: only on
    /// SIGHUP) and on SIGHUP.
    pub async fn watch(mut self, interval: Option<Duration>, mut shutdown: watch::Receiver<bool>) {
        let mut hangup = hangup();
        let mut tick = interval.map(tokio::time::interval);
        self.look(false).await;
        loop {
            let forced = tokio::select! {
                _ = async { tick.as_mut()?.tick().await; Some(()) }, if tick.is_some() => false,
                Some(()) = async { hangup.as_mut()?.recv().await }, if hangup.is_some() => true,
                _ = shutdown.changed() => return,
            };
            self.look(forced).await;
        }
    }

    /// Reads the file; reloads if its bytes changed (or `forced`).
    /// Returns whether limits were swapped in.
    pub async fn look(&mut self, forced: bool) -> bool {
        let bytes = match tokio::fs::read(&self.path).await {
            Ok(bytes) => bytes,
            Err(e) => {
                if forced || self.seen.is_some() {
                    error!(path = %self.path.display(), error = %e, "config file unreadable; the last good limits stay in force");
                    self.metrics.config_reload(false);
                }
                self.seen = None;
                return false;
            }
        };
        if !forced && self.seen.as_deref() == Some(&bytes[..]) {
            return false;
        }
        self.seen = Some(bytes.clone());
        self.reload(&bytes)
    }

    fn reload(&mut self, bytes: &[u8]) -> bool {
        let text = String::from_utf8_lossy(bytes);
        let base = self
            .path
            .parent()
            .unwrap_or_else(|| std::path::Path::new("."));
        let config = match Config::parse(&text, base, &*self.env) {
            Ok(config) => config,
            Err(e) => {
                error!(path = %self.path.display(), error = format!("{e:#}"), "config reload rejected; the last good limits stay in force");
                self.metrics.config_reload(false);
                return false;
            }
        };
        let sections: Value = serde_yaml_ng::from_str(&text).unwrap_or(Value::Null);
        if let Some(good) = &self.good {
            for section in needing_restart(good, &sections) {
                warn!(
                    section,
                    "config section changed; it takes effect after a restart"
                );
            }
        }
        self.limits.replace(&config.limits.per_identity);
        self.metrics.config_reload(true);
        info!(
            rules = config.limits.per_identity.rules.len()
                + config.limits.per_identity.tool_rules.len(),
            "limits.per_identity reloaded"
        );
        self.good = Some(sections);
        true
    }
}

fn hangup() -> Option<Signal> {
    match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            error!(error = %e, "cannot listen for SIGHUP; limits reload only when the config file changes");
            None
        }
    }
}

/// The top-level sections (and `limits.*` fields other than
/// `per_identity`) that differ between two files.
pub fn needing_restart(old: &Value, new: &Value) -> Vec<String> {
    let mut changed = Vec::new();
    for key in keys(old, new) {
        let (a, b) = (old.get(&key), new.get(&key));
        if key == "limits" {
            for field in keys(a.unwrap_or(&Value::Null), b.unwrap_or(&Value::Null)) {
                let a = a.and_then(|v| v.get(&field));
                let b = b.and_then(|v| v.get(&field));
                if field != "per_identity" && a != b {
                    changed.push(format!("limits.{field}"));
                }
            }
        } else if a != b {
            changed.push(key);
        }
    }
    changed
}

/// The string keys of two mappings, each once, sorted.
fn keys(a: &Value, b: &Value) -> Vec<String> {
    let mut keys: Vec<String> = [a, b]
        .into_iter()
        .filter_map(Value::as_mapping)
        .flat_map(|m| m.keys().filter_map(|k| k.as_str().map(str::to_owned)))
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sections_other_than_per_identity_need_a_restart() {
        let parse = |s: &str| serde_yaml_ng::from_str::<Value>(s).unwrap();
        let old = parse(
            "listener: {address: a}\nlimits: {max_body_bytes: 1, per_identity: {default: {max_streams: 1}}}\n",
        );
        let same_but_limits = parse(
            "listener: {address: a}\nlimits: {max_body_bytes: 1, per_identity: {default: {max_streams: 9}}}\n",
        );
        assert!(needing_restart(&old, &same_but_limits).is_empty());
        let other =
            parse("listener: {address: b}\nlimits: {max_body_bytes: 2}\nlog: {level: debug}\n");
        assert_eq!(
            needing_restart(&old, &other),
            ["limits.max_body_bytes", "listener", "log"]
        );
    }
}
