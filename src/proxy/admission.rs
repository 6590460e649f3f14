//! Connection caps: at most `connections.max_connections` at once (counted
//! from accept, so TLS handshakes in progress count too), and at most
//! `connections.max_connections_per_identity` of one SPIFFE ID (counted
//! once the handshake named it). A connection over a cap is closed at once
//! and counted in `mcp_gateway_connection_refusals_total{reason}`.
//!
//! The per-identity table is touched twice per connection (open, close),
//! never per request. Slots are guards: a connection's slot is given back
//! when its task ends, whatever way it ends.
//!
//! Must never: let one identity take every connection, or leak a slot.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use prometheus::{IntCounterVec, IntGauge};

/// Why a connection was closed by a limit (the metric's `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    MaxConnections,
    MaxConnectionsPerIdentity,
    HeaderReadTimeout,
    BodyReadTimeout,
    IdleTimeout,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "max_connections",
            Refusal::MaxConnectionsPerIdentity => "max_connections_per_identity",
            Refusal::HeaderReadTimeout => "header_read_timeout",
            Refusal::BodyReadTimeout => "body_read_timeout",
            Refusal::IdleTimeout => "idle_timeout",
        }
    }
}

/// The caps and their counters. Cheap to share (`Arc`).
pub struct Admission {
    max: usize,
    per_identity: usize,
    open: Arc<AtomicUsize>,
    by_identity: Arc<Mutex<HashMap<Arc<str>, usize>>>,
    gauge: IntGauge,
    refusals: IntCounterVec,
}

/// One connection's place under the total cap.
pub struct Slot {
    open: Arc<AtomicUsize>,
    gauge: IntGauge,
}

/// One connection's place under its identity's cap.
pub struct IdentitySlot {
    id: Arc<str>,
    by_identity: Arc<Mutex<HashMap<Arc<str>, usize>>>,
}

impl Admission {
    pub fn new(
        max: usize,
        per_identity: usize,
        gauge: IntGauge,
        refusals: IntCounterVec,
    ) -> Admission {
        Admission {
            max,
            per_identity,
            open: Arc::new(AtomicUsize::new(0)),
            by_identity: Arc::new(Mutex::new(HashMap::new())),
            gauge,
            refusals,
        }
    }

    /// Counts a refusal.
    pub fn refused(&self, why: Refusal) {
        self.refusals.with_label_values(&[why.label()]).inc();
    }

    /// A place for a newly accepted connection, or `None` (counted) when
    /// `max_connections` are open.
    pub fn connection(&self) -> Option<Slot> {
        let taken = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            });
        if taken.is_err() {
            self.refused(Refusal::MaxConnections);
            return None;
        }
        self.gauge.inc();
        Some(Slot {
            open: Arc::clone(&self.open),
            gauge: self.gauge.clone(),
        })
    }

    /// A place for a connection of `id`, or `None` (counted) when that
    /// identity already holds `max_connections_per_identity`.
    pub fn identity(&self, id: &Arc<str>) -> Option<IdentitySlot> {
        let mut table = self.by_identity.lock().unwrap_or_else(|e| e.into_inner());
        let held = table.entry(Arc::clone(id)).or_insert(0);
        if *held >= self.per_identity {
            drop(table);
            self.refused(Refusal::MaxConnectionsPerIdentity);
            return None;
        }
        *held += 1;
        Some(IdentitySlot {
            id: Arc::clone(id),
            by_identity: Arc::clone(&self.by_identity),
        })
    }

    #[cfg(test)]
    fn held_by(&self, id: &str) -> usize {
        let table = self.by_identity.lock().unwrap_or_else(|e| e.into_inner());
        table.get(id).copied().unwrap_or(0)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        self.gauge.dec();
    }
}

impl Drop for IdentitySlot {
    fn drop(&mut self) {
        let mut table = self.by_identity.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(held) = table.get_mut(&self.id) {
            *held -= 1;
            if *held == 0 {
                table.remove(&self.id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use prometheus::Opts;

    use super::*;

    fn admission(max: usize, per_identity: usize) -> Admission {
        Admission::new(
            max,
            per_identity,
            IntGauge::new("open", "open").unwrap(),
            IntCounterVec::new(Opts::new("refused", "refused"), &["reason"]).unwrap(),
        )
    }

    #[test]
    fn the_total_cap_holds_and_slots_come_back() {
        let a = admission(2, 2);
        let one = a.connection().unwrap();
        let _two = a.connection().unwrap();
        assert!(a.connection().is_none());
        assert_eq!(a.gauge.get(), 2);
        assert_eq!(a.refusals.with_label_values(&["max_connections"]).get(), 1);
        drop(one);
        assert_eq!(a.gauge.get(), 1);
        assert!(a.connection().is_some());
    }

    #[test]
    fn one_identity_cannot_take_every_connection() {
        let a = admission(10, 2);
        let greedy: Arc<str> = Arc::from("spiffe://example.org/greedy");
        let other: Arc<str> = Arc::from("spiffe://example.org/other");
        let first = a.identity(&greedy).unwrap();
        let _second = a.identity(&greedy).unwrap();
        assert!(a.identity(&greedy).is_none());
        assert!(
            a.identity(&other).is_some(),
            "another identity still gets in"
        );
        assert_eq!(
            a.refusals
                .with_label_values(&["max_connections_per_identity"])
                .get(),
            1
        );
        drop(first);
        assert_eq!(a.held_by(&greedy), 1);
        assert!(a.identity(&greedy).is_some());
    }

    #[test]
    fn an_identity_with_no_connection_leaves_no_entry() {
        let a = admission(10, 2);
        let id: Arc<str> = Arc::from("spiffe://example.org/a");
        drop(a.identity(&id).unwrap());
        assert!(a.by_identity.lock().unwrap().is_empty());
    }
}
