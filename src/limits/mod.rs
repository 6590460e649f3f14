//! Fair limits per caller SPIFFE ID (`limits.per_identity`): a request
//! rate (token bucket), requests in flight, GET streams open, and a rate
//! per tool. So one identity hammering the gateway, or holding requests
//! and streams open, cannot take what the others need.
//!
//! State is per identity, per replica, in memory: a bucket and two
//! counters, held in a map of 16 shards (each a `Mutex` held only for a
//! lookup and a few integer operations). An identity's entry is created by
//! its first request (identities are authenticated, so nobody can invent
//! them) and forgotten once it carries no information: its buckets full,
//! nothing in flight, no stream open. At most `max_identities` entries
//! exist; past that, a new identity is refused (fail closed) until the
//! sweep frees entries. The rules sit behind one `ArcSwap`, so a reload is
//! one pointer swap and the state (buckets, counts) carries over.
//!
//! Must never: let an identity past a limit, leak a slot (each is a guard
//! released on drop), or grow without bound.

pub mod bucket;
pub mod reload;
pub mod rules;

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;
use prometheus::IntGauge;
use tokio::time::Instant;

use crate::config::PerIdentityLimits;
use bucket::{Bucket, Rate, retry_after_seconds};
use rules::{Applied, Rules};

/// Shards of the identity map.
const SHARDS: usize = 16;

/// Why a request was limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Limited {
    /// The identity's (or the tool's) bucket is empty; a token is back in
    /// `retry_after` seconds.
    #[error("rate limit reached for this identity; retry after {retry_after} s")]
    Rate { retry_after: u64 },
    #[error("too many requests in flight for this identity")]
    InFlight,
    #[error("too many open streams for this identity")]
    Streams,
    /// The identity holds its rule's `max_sessions`.
    #[error("too many sessions for this identity: end one (DELETE) or let it end")]
    Sessions,
    /// `max_identities` entries are held and none is idle.
    #[error("too many identities are being limited at once; retry later")]
    Identities,
}

impl Limited {
    /// The `Retry-After` to send, in seconds.
    pub fn retry_after(self) -> u64 {
        match self {
            Limited::Rate { retry_after } => retry_after,
            Limited::InFlight | Limited::Streams | Limited::Sessions | Limited::Identities => 1,
        }
    }
}

/// What a request holds while it is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// A POST or DELETE: one of `max_in_flight`, until its reply ends.
    Request,
    /// A GET (server) stream: one of `max_streams`, until it closes.
    Stream,
    /// An MCP session: one of `max_sessions`, until it ends here.
    Session,
}

/// One identity's counters, shared with the slots taken from them.
#[derive(Debug, Default)]
struct Held {
    in_flight: AtomicU32,
    streams: AtomicU32,
    sessions: AtomicU32,
}

/// A taken place (in flight or stream): given back when dropped.
#[derive(Debug)]
pub struct Slot {
    held: Arc<Held>,
    hold: Hold,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let counter = match self.hold {
            Hold::Request => &self.held.in_flight,
            Hold::Stream => &self.held.streams,
            Hold::Session => &self.held.sessions,
        };
        counter.fetch_sub(1, Ordering::Release);
    }
}

/// One identity's state.
#[derive(Debug)]
struct Entry {
    /// The rules generation `applied` was resolved with.
    generation: u64,
    applied: Applied,
    bucket: Bucket,
    /// Tool buckets by their rule's key (few: one per tool rule that
    /// applies to this identity).
    tools: Vec<(Box<str>, Bucket)>,
    held: Arc<Held>,
}

impl Entry {
    fn new(rules: &Rules, id: &str) -> Entry {
        Entry {
            generation: rules.generation,
            applied: rules.for_identity(id),
            bucket: Bucket::default(),
            tools: Vec::new(),
            held: Arc::default(),
        }
    }

    /// Nothing here a new entry would not have: buckets full, no slot out.
    fn idle(&self, now: u64) -> bool {
        self.bucket.is_full(now)
            && self.tools.iter().all(|(_, b)| b.is_full(now))
            && Arc::strong_count(&self.held) == 1
    }
}

type Shard = HashMap<Arc<str>, Entry>;

/// The per-identity limits of one gateway process.
pub struct Limits {
    rules: ArcSwap<Rules>,
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    /// Entries across all shards.
    tracked: AtomicUsize,
    /// The zero of the buckets' clock.
    epoch: Instant,
    /// `mcp_gateway_limit_identities`.
    tracked_gauge: IntGauge,
}

impl Limits {
    pub fn new(config: &PerIdentityLimits, tracked_gauge: IntGauge) -> Limits {
        Limits {
            rules: ArcSwap::from_pointee(Rules::new(config, 1)),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            tracked: AtomicUsize::new(0),
            epoch: Instant::now(),
            tracked_gauge,
        }
    }

    /// Swaps new rules in; every identity's state is kept (its limits are
    /// looked up again on its next request).
    pub fn replace(&self, config: &PerIdentityLimits) {
        let generation = self.rules.load().generation + 1;
        self.rules.store(Arc::new(Rules::new(config, generation)));
    }

    /// Admits one HTTP request of `caller`: takes a token, then a place of
    /// the `hold` kind if that is capped (the slot to keep until the reply
    /// or stream ends). A refusal takes nothing.
    pub fn admit(&self, caller: &Arc<str>, hold: Hold) -> Result<Option<Slot>, Limited> {
        let rules = self.rules.load();
        if rules.identities_unlimited() {
            return Ok(None);
        }
        self.admit_at(&rules, caller, hold, self.now())
    }

    fn admit_at(
        &self,
        rules: &Rules,
        caller: &Arc<str>,
        hold: Hold,
        now: u64,
    ) -> Result<Option<Slot>, Limited> {
        let mut shard = self.shard(caller);
        let entry = self.entry(&mut shard, rules, caller, now)?;
        let (counter, cap, refusal) = match hold {
            Hold::Request => (
                &entry.held.in_flight,
                entry.applied.max_in_flight,
                Limited::InFlight,
            ),
            Hold::Stream => (
                &entry.held.streams,
                entry.applied.max_streams,
                Limited::Streams,
            ),
            Hold::Session => (
                &entry.held.sessions,
                entry.applied.max_sessions,
                Limited::Sessions,
            ),
        };
        if let Some(cap) = cap
            && counter.load(Ordering::Acquire) >= cap
        {
            return Err(refusal);
        }
        // A session's place is taken by a request already charged.
        if let Some(rate) = entry.applied.rate.filter(|_| hold != Hold::Session) {
            take(&mut entry.bucket, rate, now)?;
        }
        let Some(_) = cap else {
            return Ok(None);
        };
        counter.fetch_add(1, Ordering::AcqRel);
        Ok(Some(Slot {
            held: Arc::clone(&entry.held),
            hold,
        }))
    }

    /// A `tools/call` of `tool` on `upstream` by `caller`: a token from
    /// the bucket of the tool rule that applies, if one does.
    pub fn admit_tool(&self, caller: &Arc<str>, upstream: &str, tool: &str) -> Result<(), Limited> {
        let rules = self.rules.load();
        if !rules.limits_tool(tool) {
            return Ok(());
        }
        self.admit_tool_at(&rules, caller, upstream, tool, self.now())
    }

    fn admit_tool_at(
        &self,
        rules: &Rules,
        caller: &Arc<str>,
        upstream: &str,
        tool: &str,
        now: u64,
    ) -> Result<(), Limited> {
        let Some((key, rate)) = rules.for_tool(caller, upstream, tool) else {
            return Ok(());
        };
        let mut shard = self.shard(caller);
        let entry = self.entry(&mut shard, rules, caller, now)?;
        let index = match entry.tools.iter().position(|(k, _)| &**k == key) {
            Some(i) => i,
            None => {
                entry.tools.push((key.into(), Bucket::default()));
                entry.tools.len() - 1
            }
        };
        take(&mut entry.tools[index].1, rate, now)
    }

    /// Forgets every identity whose state carries no information. Runs
    /// every few seconds (`app`), and on a shard when the map is full.
    pub fn sweep(&self) {
        let now = self.now();
        for shard in self.shards.iter() {
            self.sweep_shard(&mut lock(shard), now);
        }
    }

    /// Entries held (for tests and the gauge).
    pub fn tracked(&self) -> usize {
        self.tracked.load(Ordering::Relaxed)
    }

    fn sweep_shard(&self, shard: &mut Shard, now: u64) {
        let before = shard.len();
        shard.retain(|_, entry| !entry.idle(now));
        let removed = before - shard.len();
        if removed > 0 {
            let left = self.tracked.fetch_sub(removed, Ordering::Relaxed) - removed;
            self.tracked_gauge
                .set(i64::try_from(left).unwrap_or(i64::MAX));
        }
    }

    /// The caller's entry, created if there is room (after sweeping its
    /// shard when the map is full), its limits looked up again if the
    /// rules changed since.
    fn entry<'s>(
        &self,
        shard: &'s mut Shard,
        rules: &Rules,
        caller: &Arc<str>,
        now: u64,
    ) -> Result<&'s mut Entry, Limited> {
        if !shard.contains_key(caller) {
            if self.tracked.load(Ordering::Relaxed) >= rules.max_identities {
                self.sweep_shard(shard, now);
            }
            if self.tracked.load(Ordering::Relaxed) >= rules.max_identities {
                return Err(Limited::Identities);
            }
            let left = self.tracked.fetch_add(1, Ordering::Relaxed) + 1;
            self.tracked_gauge
                .set(i64::try_from(left).unwrap_or(i64::MAX));
            shard.insert(Arc::clone(caller), Entry::new(rules, caller));
        }
        // Inserted just above if it was not there.
        let Some(entry) = shard.get_mut(caller) else {
            return Err(Limited::Identities);
        };
        if entry.generation != rules.generation {
            entry.generation = rules.generation;
            entry.applied = rules.for_identity(caller);
        }
        Ok(entry)
    }

    fn shard(&self, caller: &str) -> MutexGuard<'_, Shard> {
        let index = (self.hasher.hash_one(caller) as usize) % SHARDS;
        lock(&self.shards[index])
    }

    /// Nanoseconds on the buckets' monotonic clock.
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// A shard's lock. Nothing panics while holding it (integer operations
/// and a map lookup), so a poisoned lock still holds consistent state.
fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn take(bucket: &mut Bucket, rate: Rate, now: u64) -> Result<(), Limited> {
    bucket.take(rate, now).map_err(|wait| Limited::Rate {
        retry_after: retry_after_seconds(wait),
    })
}

#[cfg(test)]
mod tests;
