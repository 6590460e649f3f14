//! The policy sets in force, and how they change at run time.
//!
//! [`PolicyStore`] holds the enforced [`PolicyEngine`] and, in shadow mode, a
//! candidate one, behind one atomic pointer: a request takes a snapshot with
//! [`PolicyStore::current`] (no lock, one reference-count increment) and
//! decides all its messages on that snapshot, so a reload never changes the
//! policy under a request halfway and never stalls one.
//!
//! A reload (the directories changed, or SIGHUP) builds new engines on a
//! blocking thread, off the request path, and swaps them in whole. A set that
//! fails to load is rejected: the last good set stays in force, the error is
//! logged, and `mcp_gateway_policy_reloads_total{result="failure"}` and
//! `mcp_gateway_policy_reload_failing` say so. Each directory (enforced,
//! shadow) is reloaded on its own.
//!
//! Watching is by polling: every `policy.watch_interval_ms` the directories
//! are listed and each file's size, modification time and inode compared
//! with the last look (symlinks followed). This sees ordinary edits and the
//! atomic `..data` symlink swap Kubernetes does for ConfigMap volumes alike,
//! with no platform-specific notification API; a changed fingerprint triggers
//! a full load, and a load whose content hash equals the set in force changes
//! nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::{Mutex, watch};
use tracing::{error, info};

use crate::config::PolicyConfig;
use crate::metrics::{Metrics, PolicyCounts};
use crate::pins::PinSet;
use crate::pins::file::PinFileError;
use crate::policy::{PolicyEngine, PolicyError};

/// The sets one request decides with.
pub struct Policies {
    pub enforced: Arc<PolicyEngine>,
    /// The series of the enforced set's policies, resolved when it loaded:
    /// what its decisions are counted by.
    pub counts: Arc<PolicyCounts>,
    /// The candidate set of shadow mode: evaluated, never enforced.
    pub shadow: Option<Arc<PolicyEngine>>,
    /// The tool-definition pins (`policy.pins_dir`; empty without one).
    pub pins: Arc<PinSet>,
}

pub struct PolicyStore {
    current: ArcSwap<Policies>,
    dir: PathBuf,
    shadow_dir: Option<PathBuf>,
    pins_dir: Option<PathBuf>,
    /// (name, SPIFFE ID) of each upstream, that pin files must name.
    pin_upstreams: Arc<[(String, String)]>,
    metrics: Metrics,
    /// One reload at a time; holds the fingerprints of the last look.
    reloading: Mutex<Fingerprints>,
}

/// What a reload loaded: the enforced set, the shadow set and the pins,
/// `None` for one not loaded.
struct Loaded {
    enforced: Option<Result<PolicyEngine, PolicyError>>,
    shadow: Option<Result<PolicyEngine, PolicyError>>,
    pins: Option<Result<PinSet, PinFileError>>,
}

#[derive(Default, PartialEq, Eq, Clone)]
struct Fingerprints {
    enforced: Vec<FileStamp>,
    shadow: Vec<FileStamp>,
    pins: Vec<FileStamp>,
}

/// What tells a changed file from an unchanged one without reading it.
#[derive(PartialEq, Eq, Clone, Debug)]
struct FileStamp {
    name: String,
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

/// Why a reload ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The directory's files changed.
    Changed,
    /// SIGHUP (or an explicit request): reload even if nothing looks changed.
    Forced,
}

impl PolicyStore {
    /// Loads both sets; an invalid set (enforced or shadow) is an error, so
    /// the gateway refuses to start on it.
    pub fn load(config: &PolicyConfig, metrics: Metrics) -> anyhow::Result<PolicyStore> {
        let fingerprints = Fingerprints {
            enforced: fingerprint(&config.dir),
            shadow: config
                .shadow_dir
                .as_deref()
                .map(fingerprint)
                .unwrap_or_default(),
            pins: config
                .pins_dir
                .as_deref()
                .map(fingerprint)
                .unwrap_or_default(),
        };
        let enforced = Arc::new(load_named(&config.dir, "policies")?);
        let shadow = match &config.shadow_dir {
            Some(dir) => Some(Arc::new(load_named(dir, "shadow policies")?)),
            None => None,
        };
        let pin_upstreams: Arc<[(String, String)]> = config.pin_upstreams.clone().into();
        let pins = match &config.pins_dir {
            Some(dir) => Arc::new(load_pins(dir, &pin_upstreams)?),
            None => Arc::default(),
        };
        let counts = Arc::new(metrics.policy_counts(enforced.determining()));
        let store = PolicyStore {
            current: ArcSwap::from_pointee(Policies {
                enforced,
                counts,
                shadow,
                pins,
            }),
            dir: config.dir.clone(),
            shadow_dir: config.shadow_dir.clone(),
            pins_dir: config.pins_dir.clone(),
            pin_upstreams,
            metrics,
            reloading: Mutex::new(fingerprints),
        };
        store.publish_gauges();
        store
            .metrics
            .policy_last_reload_success
            .set(crate::clock::unix_ms() as f64 / 1000.0);
        Ok(store)
    }

    /// The sets in force now. Cheap; take it once per request.
    pub fn current(&self) -> Arc<Policies> {
        self.current.load_full()
    }

    /// Reloads what changed (or everything, when forced). Returns whether
    /// every attempted load succeeded.
    pub async fn reload(&self, trigger: Trigger) -> bool {
        let mut last = self.reloading.lock().await;
        let Some(now) = self.fingerprints().await else {
            return false;
        };
        let forced = trigger == Trigger::Forced;
        let enforced_changed = forced || now.enforced != last.enforced;
        let shadow_changed = self.shadow_dir.is_some() && (forced || now.shadow != last.shadow);
        let pins_changed = self.pins_dir.is_some() && (forced || now.pins != last.pins);
        *last = now;
        if !enforced_changed && !shadow_changed && !pins_changed {
            return true;
        }
        let changed = [enforced_changed, shadow_changed, pins_changed];
        let Some(loaded) = self.load_changed(changed).await else {
            return false;
        };
        let (successes, failures) = self.install(loaded);
        self.count_reloads(successes, failures)
    }

    /// The directories' fingerprints, read on a blocking thread.
    async fn fingerprints(&self) -> Option<Fingerprints> {
        let dir = self.dir.clone();
        let shadow_dir = self.shadow_dir.clone();
        let pins_dir = self.pins_dir.clone();
        tokio::task::spawn_blocking(move || Fingerprints {
            enforced: fingerprint(&dir),
            shadow: shadow_dir.as_deref().map(fingerprint).unwrap_or_default(),
            pins: pins_dir.as_deref().map(fingerprint).unwrap_or_default(),
        })
        .await
        .ok()
    }

    /// Loads what changed ([enforced, shadow, pins]) on a blocking thread.
    async fn load_changed(&self, [enforced, shadow, pins]: [bool; 3]) -> Option<Loaded> {
        let dir = enforced.then(|| self.dir.clone());
        let shadow_dir = self.shadow_dir.clone().filter(|_| shadow);
        let pins_dir = self.pins_dir.clone().filter(|_| pins);
        let upstreams = Arc::clone(&self.pin_upstreams);
        tokio::task::spawn_blocking(move || Loaded {
            enforced: dir.map(|d| PolicyEngine::load_dir(&d)),
            shadow: shadow_dir.map(|d| PolicyEngine::load_dir(&d)),
            pins: pins_dir.map(|d| PinSet::load_dir(&d, &upstreams)),
        })
        .await
        .ok()
    }

    /// Puts what loaded in force, keeping the last good set where a load
    /// failed; returns (successes, failures).
    fn install(&self, loaded: Loaded) -> (u32, u32) {
        let old = self.current();
        let mut failures = 0;
        let mut successes = 0;
        let mut enforced = Arc::clone(&old.enforced);
        let mut shadow = old.shadow.clone();
        let mut take = |result: Option<Result<PolicyEngine, PolicyError>>,
                        which: &str,
                        slot: &mut Arc<PolicyEngine>| match result {
            None => {}
            Some(Ok(engine)) => {
                successes += 1;
                if engine.version() != slot.version() {
                    *slot = Arc::new(engine);
                }
            }
            Some(Err(e)) => {
                failures += 1;
                error!(which, error = %e, "policy reload rejected; the last good set stays in force");
            }
        };
        take(loaded.enforced, "policies", &mut enforced);
        if let Some(slot) = shadow.as_mut() {
            take(loaded.shadow, "shadow policies", slot);
        }
        let pins = match loaded.pins.map(|result| take_pins(result, &old.pins)) {
            None => Arc::clone(&old.pins),
            Some((pins, true)) => {
                successes += 1;
                pins
            }
            Some((pins, false)) => {
                failures += 1;
                pins
            }
        };
        self.put_in_force(&old, enforced, shadow, pins);
        (successes, failures)
    }

    /// Puts the sets in force unless none changed; the enforced set's
    /// series are resolved again only for a new enforced set.
    fn put_in_force(
        &self,
        old: &Policies,
        enforced: Arc<PolicyEngine>,
        shadow: Option<Arc<PolicyEngine>>,
        pins: Arc<PinSet>,
    ) {
        let shadow_same = match (&shadow, &old.shadow) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => true,
        };
        let enforced_same = Arc::ptr_eq(&enforced, &old.enforced);
        if !enforced_same || !shadow_same {
            info!(
                version = enforced.version(),
                policies = enforced.policy_count(),
                shadow_version = shadow.as_ref().map(|s| s.version()),
                "policies reloaded"
            );
        } else if Arc::ptr_eq(&pins, &old.pins) {
            return;
        }
        let counts = if enforced_same {
            Arc::clone(&old.counts)
        } else {
            Arc::new(self.metrics.policy_counts(enforced.determining()))
        };
        self.current.store(Arc::new(Policies {
            enforced,
            counts,
            shadow,
            pins,
        }));
        self.publish_gauges();
    }

    /// The reload metrics, after the new set is in force (whoever sees the
    /// count move sees the new set); returns whether every load succeeded.
    fn count_reloads(&self, successes: u32, failures: u32) -> bool {
        for _ in 0..successes {
            self.metrics.policy_reload(true);
        }
        for _ in 0..failures {
            self.metrics.policy_reload(false);
        }
        let ok = failures == 0;
        self.metrics.policy_reload_failing.set(i64::from(!ok));
        if ok {
            self.metrics
                .policy_last_reload_success
                .set(crate::clock::unix_ms() as f64 / 1000.0);
        }
        ok
    }

    /// Reloads on directory changes every `interval` (if any) and on SIGHUP,
    /// until shutdown.
    pub async fn watch(
        self: Arc<Self>,
        interval: Option<Duration>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(s) => Some(s),
            Err(e) => {
                error!(error = %e, "cannot listen for SIGHUP; policy reload on SIGHUP is off");
                None
            }
        };
        let mut tick = interval.map(|i| {
            let mut t = tokio::time::interval(i);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        loop {
            let trigger = tokio::select! {
                _ = async { tick.as_mut().unwrap().tick().await }, if tick.is_some() => Trigger::Changed,
                Some(()) = async { hangup.as_mut().unwrap().recv().await }, if hangup.is_some() => {
                    info!("SIGHUP: reloading policies");
                    Trigger::Forced
                }
                _ = shutdown.changed() => return,
            };
            self.reload(trigger).await;
        }
    }

    fn publish_gauges(&self) {
        let current = self.current();
        self.metrics
            .policy_count
            .set(current.enforced.policy_count() as i64);
        self.metrics.shadow_policy_count.set(
            current
                .shadow
                .as_ref()
                .map_or(0, |s| s.policy_count() as i64),
        );
    }
}

/// The pins a reload loaded, or the last good ones if the load failed
/// (logged); and whether it succeeded.
fn take_pins(result: Result<PinSet, PinFileError>, old: &Arc<PinSet>) -> (Arc<PinSet>, bool) {
    match result {
        Ok(pins) => {
            info!(pins = pins.len(), "pins reloaded");
            (Arc::new(pins), true)
        }
        Err(e) => {
            error!(error = %e, "pin reload rejected; the last good pins stay in force");
            (Arc::clone(old), false)
        }
    }
}

fn load_pins(dir: &Path, upstreams: &[(String, String)]) -> anyhow::Result<PinSet> {
    let pins = PinSet::load_dir(dir, upstreams)
        .map_err(|e| anyhow::anyhow!("loading pins from {}: {e}", dir.display()))?;
    info!(pins = pins.len(), "pins loaded");
    Ok(pins)
}

fn load_named(dir: &Path, which: &str) -> anyhow::Result<PolicyEngine> {
    let engine = PolicyEngine::load_dir(dir)
        .map_err(|e: PolicyError| anyhow::anyhow!("loading {which} from {}: {e}", dir.display()))?;
    info!(
        which,
        version = engine.version(),
        policies = engine.policy_count(),
        "policies loaded"
    );
    Ok(engine)
}

/// Size, modification time and inode of every visible entry of `dir`,
/// symlinks followed; an unreadable directory is an empty fingerprint (the
/// load that follows reports the error).
fn fingerprint(dir: &Path) -> Vec<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut stamps: Vec<FileStamp> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            if name.starts_with('.') {
                return None;
            }
            let meta = std::fs::metadata(entry.path()).ok();
            Some(FileStamp {
                name,
                len: meta.as_ref().map_or(0, |m| m.len()),
                modified: meta.as_ref().and_then(|m| m.modified().ok()),
                inode: meta.as_ref().map_or(0, |m| m.ino()),
            })
        })
        .collect();
    stamps.sort_by(|a, b| a.name.cmp(&b.name));
    stamps
}

#[cfg(test)]
mod tests;
