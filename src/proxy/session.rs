//! Sessions belong to identities.
//!
//! A session id (issued by the upstream in answer to an `initialize`, or by
//! the gateway on the aggregated endpoint) is bound to the SPIFFE ID that
//! sent the initialize. Any use of it by another identity, or of an id the
//! gateway never saw issued, is refused before anything is forwarded.
//!
//! A session belongs to the SPIFFE ID, not to one certificate: it stays
//! valid while its owner keeps using it within the idle timeout, whichever
//! of its SVIDs it presents. Every request already proves a currently valid
//! credential (the handshake checks the certificate and the listener closes
//! a connection before its certificate expires; a JWT-SVID is verified per
//! request), so the table keeps no credential deadline of its own: one
//! would end the session of an owner that rotates its SVID. A session ends
//! on DELETE and after the idle timeout.
//!
//! The table is bounded twice: in all, and per owner. A new session takes a
//! [`Reservation`] before its `initialize` goes to the upstream, so an
//! `initialize` that would be refused is never sent; the reservation turns
//! into the session when the upstream issues its id, or is given back when
//! it is dropped. Neither bound evicts a live session.
//!
//! The table is read on every request (a read lock and one atomic store);
//! writes happen only when a session is reserved, starts or ends.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock, RwLockWriteGuard};
use std::time::Duration;

use crate::audit::Reason;
use crate::clock::unix_seconds;

/// Why a session id was refused, or no new session was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionRefusal {
    /// Never issued through this gateway, or already ended.
    Unknown,
    /// Issued to another identity.
    NotOwner,
    /// Unused for longer than the idle timeout.
    Expired,
    /// The table is full; no new session is started.
    Full,
    /// The caller already holds `limits.max_sessions_per_identity`.
    IdentityLimit,
    /// The upstream issued an id that is already bound to another identity.
    Collision,
}

impl SessionRefusal {
    pub fn audit_reason(self) -> Reason {
        match self {
            SessionRefusal::Unknown => Reason::SessionUnknown,
            SessionRefusal::NotOwner => Reason::SessionNotOwned,
            SessionRefusal::Expired => Reason::SessionExpired,
            SessionRefusal::Full => Reason::SessionTableFull,
            SessionRefusal::IdentityLimit => Reason::SessionIdentityLimit,
            SessionRefusal::Collision => Reason::SessionIdCollision,
        }
    }

    /// What the caller is told. A session id is never confirmed or denied
    /// to exist beyond "not found".
    pub fn message(self) -> &'static str {
        match self {
            SessionRefusal::Unknown | SessionRefusal::NotOwner | SessionRefusal::Expired => {
                "session not found"
            }
            SessionRefusal::Full => "session table full: no new session can start; retry later",
            SessionRefusal::IdentityLimit => {
                "too many sessions for this identity: end one (DELETE) or let it expire"
            }
            SessionRefusal::Collision => "the upstream issued a session id already in use",
        }
    }
}

struct Session<V> {
    owner: Arc<str>,
    /// Unix seconds of the last use.
    last_seen: AtomicI64,
    value: V,
}

struct Table<V> {
    sessions: HashMap<Box<str>, Session<V>>,
    /// Per owner: its sessions plus its outstanding reservations.
    held: HashMap<Arc<str>, usize>,
    /// Reservations not yet bound or given back.
    reserved: usize,
}

impl<V> Table<V> {
    fn release(&mut self, owner: &str) {
        if let Some(n) = self.held.get_mut(owner) {
            *n -= 1;
            if *n == 0 {
                self.held.remove(owner);
            }
        }
    }
}

struct Inner<V> {
    table: RwLock<Table<V>>,
    idle: i64,
    max: usize,
    max_per_identity: usize,
}

impl<V> Inner<V> {
    fn write(&self) -> RwLockWriteGuard<'_, Table<V>> {
        self.table.write().unwrap_or_else(|e| e.into_inner())
    }

    fn live(&self, session: &Session<V>, now: i64) -> bool {
        now - session.last_seen.load(Ordering::Relaxed) <= self.idle
    }
}

/// A session table. `V` is what a session carries besides its owner (the
/// member sessions on the aggregated endpoint; nothing for an upstream's).
pub struct Sessions<V = ()> {
    inner: Arc<Inner<V>>,
}

/// A place in the table held for one owner while its `initialize` is under
/// way. Dropped unbound, it is given back.
pub struct Reservation<V> {
    inner: Arc<Inner<V>>,
    owner: Arc<str>,
    bound: bool,
}

impl<V: Clone> Sessions<V> {
    pub fn new(idle: Duration, max: usize, max_per_identity: usize) -> Sessions<V> {
        Sessions {
            inner: Arc::new(Inner {
                table: RwLock::new(Table {
                    sessions: HashMap::new(),
                    held: HashMap::new(),
                    reserved: 0,
                }),
                idle: i64::try_from(idle.as_secs()).unwrap_or(i64::MAX),
                max,
                max_per_identity,
            }),
        }
    }

    /// Holds a place for a new session of `owner`, or says why there is
    /// none. Call before anything is sent upstream.
    pub fn reserve(&self, owner: &Arc<str>) -> Result<Reservation<V>, SessionRefusal> {
        let mut table = self.inner.write();
        if table.sessions.len() + table.reserved >= self.inner.max {
            return Err(SessionRefusal::Full);
        }
        let held = table.held.get(&**owner).copied().unwrap_or(0);
        if held >= self.inner.max_per_identity {
            return Err(SessionRefusal::IdentityLimit);
        }
        table.held.insert(Arc::clone(owner), held + 1);
        table.reserved += 1;
        Ok(Reservation {
            inner: Arc::clone(&self.inner),
            owner: Arc::clone(owner),
            bound: false,
        })
    }

    /// Checks that `owner` may use session `id` now, records the use and
    /// returns what the session carries.
    pub fn check(&self, id: &str, owner: &str) -> Result<V, SessionRefusal> {
        let now = unix_seconds();
        {
            let table = self.inner.table.read().unwrap_or_else(|e| e.into_inner());
            let session = table.sessions.get(id).ok_or(SessionRefusal::Unknown)?;
            if *session.owner != *owner {
                return Err(SessionRefusal::NotOwner);
            }
            if self.inner.live(session, now) {
                session.last_seen.store(now, Ordering::Relaxed);
                return Ok(session.value.clone());
            }
        }
        self.remove(id);
        Err(SessionRefusal::Expired)
    }

    /// Ends session `id`; returns what it carried.
    pub fn remove(&self, id: &str) -> Option<V> {
        let mut table = self.inner.write();
        let session = table.sessions.remove(id)?;
        table.release(&session.owner);
        Some(session.value)
    }

    /// Removes every session past its idle timeout and returns their ids
    /// and values (so the upstreams can be told).
    pub fn sweep(&self) -> Vec<(Box<str>, V)> {
        let now = unix_seconds();
        let mut table = self.inner.write();
        let idle: Vec<Box<str>> = table
            .sessions
            .iter()
            .filter(|(_, s)| !self.inner.live(s, now))
            .map(|(id, _)| id.clone())
            .collect();
        let mut ended = Vec::with_capacity(idle.len());
        for id in idle {
            if let Some(session) = table.sessions.remove(&id) {
                table.release(&session.owner);
                ended.push((id, session.value));
            }
        }
        ended
    }

    /// Sessions in the table (reservations not counted).
    pub fn len(&self) -> usize {
        self.inner
            .table
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .sessions
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<V> Reservation<V> {
    /// Turns the reservation into session `id`. An id already bound to the
    /// same owner is that owner's session already (the reservation is given
    /// back); one bound to another owner is refused.
    pub fn bind(mut self, id: &str, value: V) -> Result<(), SessionRefusal> {
        let mut table = self.inner.write();
        if let Some(existing) = table.sessions.get(id) {
            return if existing.owner == self.owner {
                Ok(())
            } else {
                Err(SessionRefusal::Collision)
            };
        }
        table.sessions.insert(
            Box::from(id),
            Session {
                owner: Arc::clone(&self.owner),
                last_seen: AtomicI64::new(unix_seconds()),
                value,
            },
        );
        table.reserved -= 1;
        self.bound = true;
        Ok(())
    }
}

impl<V> Drop for Reservation<V> {
    fn drop(&mut self) {
        if self.bound {
            return;
        }
        let mut table = self.inner.write();
        table.reserved -= 1;
        table.release(&self.owner);
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
