//! `mcp_gateway_policy_decisions_total{policy_id,effect}`: which policies
//! determine the enforced decisions of messages, so a dashboard shows which
//! rules fire.
//!
//! Label values come only from bounded sets, never from a caller:
//! `policy_id` is an `@id` of a loaded enforced set, or `other`; `effect` is
//! `permit`, `forbid` or `error`. At most [`POLICY_ID_SERIES_CAP`] distinct
//! ids get their own series over the life of the process, reloads included:
//! an id past the cap (or one not in the loaded set) counts as `other`, so a
//! reload that renames every policy cannot grow the series without bound. A
//! series once made is never removed: a request still deciding on an older
//! snapshot counts into the same series, and a counter never goes back.
//!
//! Each load resolves its ids to counter handles once ([`PolicyCounts`],
//! kept beside the engine in the policy snapshot), so counting a decision
//! is a map read and an atomic add per determining policy: no label
//! hashing, no lock and no allocation on the request path. The one lock
//! here is taken per load.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use prometheus::{IntCounter, IntCounterVec};

use crate::audit::Reason;
use crate::policy::DecisionReason;

/// Most distinct policy ids given their own `policy_id` series over the
/// life of the process (each with up to two series: its effect, and
/// `error`). Past it, ids count as `other` until a restart: a set of more
/// policies than this still counts every decision, only not each of its
/// ids apart.
pub const POLICY_ID_SERIES_CAP: usize = 500;

/// The `policy_id` of every decision not counted under its own id.
const OTHER: &str = "other";

/// The series of `mcp_gateway_policy_decisions_total` and the ids given
/// their own so far; clones (one per `Metrics` clone) share both.
#[derive(Clone)]
pub(super) struct PolicyDecisions {
    series: IntCounterVec,
    labelled: Arc<Mutex<HashSet<Box<str>>>>,
}

/// One loaded enforced set's ids resolved to their series: made once per
/// load, read for every decision made with that set.
pub struct PolicyCounts {
    by_id: HashMap<Box<str>, Series>,
    /// `policy_id="other"`, by [`Effect`].
    other: [IntCounter; 3],
    series: IntCounterVec,
}

/// The series of one policy with its own `policy_id`.
struct Series {
    /// What the policy determines when it applies: permit or forbid.
    effect: Effect,
    applied: IntCounter,
    /// `effect="error"`, made on its first use: errors are rare, and a zero
    /// series for each policy would double the series for nothing.
    errored: OnceLock<IntCounter>,
}

/// The `effect` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effect {
    Permit = 0,
    Forbid = 1,
    Error = 2,
}

impl Effect {
    const ALL: [Effect; 3] = [Effect::Permit, Effect::Forbid, Effect::Error];

    fn label(self) -> &'static str {
        match self {
            Effect::Permit => "permit",
            Effect::Forbid => "forbid",
            Effect::Error => "error",
        }
    }

    /// The effect of a decision's determining policies; `None` when it has
    /// none (a default deny, a caller's response, a refusal).
    fn of_decision(reason: Reason) -> Option<Effect> {
        match reason {
            Reason::Permit => Some(Effect::Permit),
            Reason::Forbid => Some(Effect::Forbid),
            Reason::PolicyError => Some(Effect::Error),
            _ => None,
        }
    }

    /// What a loaded policy determines when it applies.
    fn of_policy(determines: DecisionReason) -> Effect {
        match determines {
            DecisionReason::Forbidden => Effect::Forbid,
            _ => Effect::Permit,
        }
    }
}

impl PolicyDecisions {
    pub(super) fn new(series: IntCounterVec) -> PolicyDecisions {
        for effect in Effect::ALL {
            series.with_label_values(&[OTHER, effect.label()]);
        }
        PolicyDecisions {
            series,
            labelled: Arc::default(),
        }
    }

    /// Resolves a loaded enforced set's policies (`@id`, what each
    /// determines) to their series: an id already labelled keeps its
    /// series, a new one gets one while fewer than `cap` ids have, the
    /// rest count as `other`. An `@id("other")` is counted as `other`.
    pub(super) fn resolve<'a>(
        &self,
        policies: impl IntoIterator<Item = (&'a str, DecisionReason)>,
        cap: usize,
    ) -> PolicyCounts {
        let mut labelled = self.labelled.lock().unwrap_or_else(PoisonError::into_inner);
        let mut by_id = HashMap::new();
        for (id, determines) in policies {
            if id == OTHER || (!labelled.contains(id) && labelled.len() >= cap) {
                continue;
            }
            labelled.insert(id.into());
            let effect = Effect::of_policy(determines);
            let series = Series {
                effect,
                applied: self.series.with_label_values(&[id, effect.label()]),
                errored: OnceLock::new(),
            };
            by_id.insert(Box::from(id), series);
        }
        drop(labelled);
        PolicyCounts {
            by_id,
            other: Effect::ALL.map(|e| self.series.with_label_values(&[OTHER, e.label()])),
            series: self.series.clone(),
        }
    }
}

impl PolicyCounts {
    /// Counts each determining policy of one enforced decision once. A
    /// decision without one (a default deny) counts nothing here.
    pub fn count(&self, reason: Reason, policy_ids: &[String]) {
        let Some(effect) = Effect::of_decision(reason) else {
            return;
        };
        for id in policy_ids {
            self.counter(effect, id).inc();
        }
    }

    fn counter(&self, effect: Effect, id: &str) -> &IntCounter {
        match self.by_id.get_key_value(id) {
            Some((id, series)) if effect == Effect::Error => series
                .errored
                .get_or_init(|| self.series.with_label_values(&[id, effect.label()])),
            Some((_, series)) if series.effect == effect => &series.applied,
            // Past the cap, or not in the set (a permit cannot determine a
            // forbid, nor the reverse): never a label of its own.
            _ => &self.other[effect as usize],
        }
    }
}

#[cfg(test)]
#[path = "policy_counts_tests.rs"]
mod tests;
