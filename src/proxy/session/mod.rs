//! Sessions belong to identities, and are valid on any replica.
//!
//! The caller never sees an upstream's session id. In answer to an
//! `initialize` the gateway hands out a sealed id ([`seal`]): the upstream's
//! id (or, on the aggregated endpoint, each member's), the SPIFFE ID that
//! sent the initialize, the endpoint, the protocol version, the issue time
//! and an absolute end (`sessions.max_lifetime_seconds`), encrypted and
//! authenticated under the newest key of [`keys`]. Any replica holding the
//! keys opens it; a use by another identity, for another endpoint, past its
//! end, or of anything no listed key sealed, is refused before anything is
//! forwarded, as "session not found".
//!
//! A session belongs to the SPIFFE ID, not to one certificate: every
//! request already proves a currently valid credential, so the table keeps
//! no credential deadline of its own (one would end the session of an owner
//! that rotates its SVID).
//!
//! What each replica keeps for itself: the sessions it has seen (their last
//! use, and their places under the bounds) and the ids ended here (DELETE,
//! or idle), each until its absolute end. With keys from a file other
//! replicas share, a session idle here may be in use on another replica, so
//! going idle here only frees its place here (its next use here opens it
//! again); it ends at its absolute end or on DELETE, and a DELETE on one
//! replica ends it at the upstream, which then refuses it from any replica.
//! With a key of the process's own, no other replica can serve it, and it
//! ends after the idle timeout, here and at the upstream.
//!
//! The table is bounded twice: in all, and per owner, counting sessions
//! opened here and sessions first seen here alike. A new session takes a
//! [`Reservation`] before its `initialize` goes to the upstream, so an
//! `initialize` that would be refused is never sent. Neither bound evicts a
//! live session.
//!
//! The table is read on every request (a read lock, a hash of the id, one
//! atomic store); a session's first use on a replica opens the sealed id
//! (one AEAD open); writes happen only when a session is reserved, starts,
//! is first seen here or ends.

pub mod keys;
pub mod seal;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock, RwLockWriteGuard};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::audit::Reason;
use crate::clock::unix_seconds;
use crate::limits::{Hold, Limited, Limits, Slot};
use keys::SessionKeys;
use seal::Claims;

/// Why a session id was refused, or no new session was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionRefusal {
    /// Not sealed by a listed key, for another endpoint, or ended.
    Unknown,
    /// Issued to another identity.
    NotOwner,
    /// Past its absolute end, or (keys of the process's own) unused for
    /// longer than the idle timeout.
    Expired,
    /// The table is full; no new session is started.
    Full,
    /// The caller already holds `limits.max_sessions_per_identity`.
    IdentityLimit,
    /// The upstream issued an id that is already bound to another identity.
    Collision,
    /// The caller holds its rule's `max_sessions` (`limits.per_identity`).
    RuleLimit,
    /// The upstream issued an id too long to seal into one the caller can
    /// present (the sealed id would pass `seal::MAX_SEALED_LEN`).
    Unsealable,
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
            SessionRefusal::RuleLimit => Reason::SessionLimit,
            SessionRefusal::Unsealable => Reason::SessionIdUnsealable,
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
            SessionRefusal::RuleLimit => {
                "too many sessions for this identity: end one (DELETE) or let it end"
            }
            SessionRefusal::Unsealable => "the upstream issued a session id too long to seal",
        }
    }
}

/// The bounds and lifetimes of one session table.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Unused this long, a session is forgotten here (and, with a key of
    /// the process's own, ended).
    pub idle: Duration,
    /// A session ends this long after it was issued, on every replica.
    pub lifetime: Duration,
    /// Sessions and reservations at once.
    pub max: usize,
    /// Of which one SPIFFE ID may hold.
    pub max_per_identity: usize,
}

/// What every session table of a gateway shares: its bounds, the keys,
/// and the per-identity limits.
#[derive(Clone)]
pub struct Tables {
    pub bounds: Bounds,
    pub keys: Arc<SessionKeys>,
    pub limits: Option<Arc<Limits>>,
}

impl Tables {
    /// A table for `endpoint` (`u:<upstream>` or `a:<aggregate>`).
    pub fn table<V: Clone + Serialize + DeserializeOwned>(&self, endpoint: String) -> Sessions<V> {
        let table = Sessions::new(self.bounds, Arc::clone(&self.keys), endpoint);
        match &self.limits {
            Some(limits) => table.with_limits(Arc::clone(limits)),
            None => table,
        }
    }
}

/// A session as a request sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session<V> {
    /// The upstream's own session id (on the aggregated endpoint, its own):
    /// what audit records and policies name, and what the upstream is sent.
    pub handle: Arc<str>,
    pub value: V,
}

struct Entry<V> {
    owner: Arc<str>,
    handle: Arc<str>,
    /// The key that sealed it: a session outlives no key.
    key_id: Arc<str>,
    /// Unix seconds: the absolute end, and the last use here.
    expires: i64,
    last_seen: AtomicI64,
    value: V,
    /// Its place under the owner's `max_sessions` (`limits.per_identity`),
    /// given back when the entry is dropped.
    _slot: Option<Slot>,
}

struct Table<V> {
    /// By sealed id.
    live: HashMap<Box<str>, Entry<V>>,
    /// Handle -> owner: an upstream id never serves two identities here.
    handles: HashMap<Arc<str>, Arc<str>>,
    /// Per owner: its sessions plus its outstanding reservations.
    held: HashMap<Arc<str>, usize>,
    /// Reservations not yet bound or given back.
    reserved: usize,
    /// Sealed ids ended here, until their absolute end.
    ended: HashMap<Box<str>, i64>,
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

    /// Takes `sealed` out; with `ended`, its id stays refused here until
    /// its end (bounded: past `max` ids, the upstream's own refusal of an
    /// ended session is the only one).
    fn take(&mut self, sealed: &str, ended: Option<usize>) -> Option<Entry<V>> {
        let entry = self.live.remove(sealed)?;
        self.release(&entry.owner);
        if self.handles.get(&entry.handle) == Some(&entry.owner) {
            self.handles.remove(&entry.handle);
        }
        if let Some(max) = ended
            && self.ended.len() < max
        {
            self.ended.insert(Box::from(sealed), entry.expires);
        }
        Some(entry)
    }

    /// Room for one more session of `owner`.
    fn room_for(&self, owner: &str, bounds: &Bounds) -> Result<usize, SessionRefusal> {
        if self.live.len() + self.reserved >= bounds.max {
            return Err(SessionRefusal::Full);
        }
        let held = self.held.get(owner).copied().unwrap_or(0);
        if held >= bounds.max_per_identity {
            return Err(SessionRefusal::IdentityLimit);
        }
        Ok(held)
    }

    /// Whether `handle` is already another identity's here.
    fn collides(&self, handle: &str, owner: &Arc<str>) -> bool {
        self.handles.get(handle).is_some_and(|o| o != owner)
    }

    fn insert(&mut self, sealed: Box<str>, entry: Entry<V>) {
        *self.held.entry(Arc::clone(&entry.owner)).or_insert(0) += 1;
        self.handles
            .entry(Arc::clone(&entry.handle))
            .or_insert_with(|| Arc::clone(&entry.owner));
        self.live.insert(sealed, entry);
    }
}

struct Inner<V> {
    table: RwLock<Table<V>>,
    bounds: Bounds,
    keys: Arc<SessionKeys>,
    /// Per-identity limits: a session takes one of its owner's
    /// `max_sessions`, counted across every table.
    limits: Option<Arc<Limits>>,
    /// `u:<upstream>` or `a:<aggregate>`: a sealed id opens on its own
    /// endpoint only.
    endpoint: String,
}

impl<V> Inner<V> {
    fn write(&self) -> RwLockWriteGuard<'_, Table<V>> {
        self.table.write().unwrap_or_else(|e| e.into_inner())
    }

    /// A place under the owner's `max_sessions`, if its rule sets one.
    fn rule_slot(&self, owner: &Arc<str>) -> Result<Option<Slot>, SessionRefusal> {
        let Some(limits) = &self.limits else {
            return Ok(None);
        };
        limits
            .admit(owner, Hold::Session)
            .map_err(|limited| match limited {
                // No room for the owner's limit state: as a full table.
                Limited::Identities => SessionRefusal::Full,
                _ => SessionRefusal::RuleLimit,
            })
    }

    fn idle(&self, entry: &Entry<V>, now: i64) -> bool {
        let idle = i64::try_from(self.bounds.idle.as_secs()).unwrap_or(i64::MAX);
        now.saturating_sub(entry.last_seen.load(Ordering::Relaxed)) > idle
    }

    /// Ended everywhere: past its end, or its key is no longer listed.
    fn over(&self, entry: &Entry<V>, now: i64) -> bool {
        now > entry.expires || self.keys.current().get(entry.key_id.as_bytes()).is_none()
    }
}

/// A session table: one per upstream, one for the aggregated endpoint. `V`
/// is what a session carries besides its owner (the member sessions on the
/// aggregated endpoint; nothing for an upstream's), sealed into its id.
pub struct Sessions<V = ()> {
    inner: Arc<Inner<V>>,
}

/// A place in the table held for one owner while its `initialize` is under
/// way. Dropped unbound, it is given back.
pub struct Reservation<V> {
    inner: Arc<Inner<V>>,
    owner: Arc<str>,
    bound: bool,
    slot: Option<Slot>,
}

impl<V: Clone + Serialize + DeserializeOwned> Sessions<V> {
    /// A table for `endpoint` (`u:<upstream>` or `a:<aggregate>`).
    pub fn new(bounds: Bounds, keys: Arc<SessionKeys>, endpoint: String) -> Sessions<V> {
        Sessions {
            inner: Arc::new(Inner {
                table: RwLock::new(Table {
                    live: HashMap::new(),
                    handles: HashMap::new(),
                    held: HashMap::new(),
                    reserved: 0,
                    ended: HashMap::new(),
                }),
                bounds,
                keys,
                limits: None,
                endpoint,
            }),
        }
    }

    /// The same table, its sessions counted under `limits`'s per-identity
    /// `max_sessions`. Call before the table is shared.
    pub fn with_limits(mut self, limits: Arc<Limits>) -> Sessions<V> {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.limits = Some(limits);
        }
        self
    }

    /// Holds a place for a new session of `owner`, or says why there is
    /// none. Call before anything is sent upstream.
    pub fn reserve(&self, owner: &Arc<str>) -> Result<Reservation<V>, SessionRefusal> {
        let mut table = self.inner.write();
        let held = table.room_for(owner, &self.inner.bounds)?;
        let slot = self.inner.rule_slot(owner)?;
        table.held.insert(Arc::clone(owner), held + 1);
        table.reserved += 1;
        Ok(Reservation {
            inner: Arc::clone(&self.inner),
            owner: Arc::clone(owner),
            bound: false,
            slot,
        })
    }

    /// Checks that `owner` may use the session `sealed` now, records the
    /// use and returns the session.
    pub fn check(&self, sealed: &str, owner: &str) -> Result<Session<V>, SessionRefusal> {
        let now = unix_seconds();
        {
            let table = self.inner.table.read().unwrap_or_else(|e| e.into_inner());
            if let Some(entry) = table.live.get(sealed) {
                if *entry.owner != *owner {
                    return Err(SessionRefusal::NotOwner);
                }
                if self.inner.over(entry, now)
                    || (!self.inner.keys.shared() && self.inner.idle(entry, now))
                {
                    // The sweep ends it, here and at the upstream.
                    return Err(SessionRefusal::Expired);
                }
                entry.last_seen.store(now, Ordering::Relaxed);
                return Ok(Session {
                    handle: Arc::clone(&entry.handle),
                    value: entry.value.clone(),
                });
            }
            if table.ended.contains_key(sealed) {
                return Err(SessionRefusal::Unknown);
            }
        }
        self.first_seen(sealed, owner, now)
    }

    /// A session sealed by another replica (or forgotten here while idle):
    /// opened, checked, and given a place here.
    fn first_seen(
        &self,
        sealed: &str,
        owner: &str,
        now: i64,
    ) -> Result<Session<V>, SessionRefusal> {
        if !self.inner.keys.shared() {
            // Only this process could have sealed it, and it is not live.
            return Err(SessionRefusal::Unknown);
        }
        let opened = seal::open::<V>(&self.inner.keys.current(), sealed)
            .filter(|o| o.claims.endpoint == self.inner.endpoint)
            .ok_or(SessionRefusal::Unknown)?;
        let claims = opened.claims;
        if claims.owner != owner {
            return Err(SessionRefusal::NotOwner);
        }
        if now > claims.expires {
            return Err(SessionRefusal::Expired);
        }
        let owner: Arc<str> = Arc::from(owner);
        let mut table = self.inner.write();
        if table.ended.contains_key(sealed) {
            return Err(SessionRefusal::Unknown);
        }
        if let Some(entry) = table.live.get(sealed) {
            // Seen by a request that raced this one.
            return Ok(Session {
                handle: Arc::clone(&entry.handle),
                value: entry.value.clone(),
            });
        }
        if table.collides(&claims.handle, &owner) {
            return Err(SessionRefusal::Collision);
        }
        table.room_for(&owner, &self.inner.bounds)?;
        let slot = self.inner.rule_slot(&owner)?;
        let session = Session {
            handle: Arc::from(claims.handle),
            value: claims.value,
        };
        let entry = Entry {
            owner,
            handle: Arc::clone(&session.handle),
            key_id: opened.key_id,
            expires: claims.expires,
            last_seen: AtomicI64::new(now),
            value: session.value.clone(),
            _slot: slot,
        };
        table.insert(Box::from(sealed), entry);
        Ok(session)
    }

    /// Ends the session `sealed` here (DELETE); returns it. Its id stays
    /// refused here until its end.
    pub fn remove(&self, sealed: &str) -> Option<Session<V>> {
        let max = self.inner.bounds.max;
        let entry = self.inner.write().take(sealed, Some(max))?;
        Some(Session {
            handle: entry.handle,
            value: entry.value,
        })
    }

    /// Sessions that are over: past their end or key, or (keys of the
    /// process's own) idle. Returns them, so the upstreams can be told.
    /// With shared keys an idle session is only forgotten here.
    pub fn sweep(&self) -> Vec<Session<V>> {
        let now = unix_seconds();
        let shared = self.inner.keys.shared();
        let max = self.inner.bounds.max;
        let mut table = self.inner.write();
        let mut ended = Vec::new();
        let mut forgotten = Vec::new();
        for (sealed, entry) in &table.live {
            if self.inner.over(entry, now) || (!shared && self.inner.idle(entry, now)) {
                ended.push(sealed.clone());
            } else if self.inner.idle(entry, now) {
                forgotten.push(sealed.clone());
            }
        }
        for sealed in &forgotten {
            table.take(sealed, None);
        }
        let mut over = Vec::with_capacity(ended.len());
        for sealed in &ended {
            if let Some(entry) = table.take(sealed, Some(max)) {
                over.push(Session {
                    handle: entry.handle,
                    value: entry.value,
                });
            }
        }
        table.ended.retain(|_, end| *end >= now);
        over
    }

    /// Sessions in the table (reservations not counted).
    pub fn len(&self) -> usize {
        self.inner
            .table
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .live
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<V: Serialize> Reservation<V> {
    /// Turns the reservation into a session whose upstream id is `handle`
    /// and returns its sealed id, the one the caller is given. A handle
    /// bound here to another owner is refused.
    pub fn bind(
        mut self,
        handle: &str,
        version: Option<&str>,
        value: V,
    ) -> Result<String, SessionRefusal> {
        let now = unix_seconds();
        let lifetime = i64::try_from(self.inner.bounds.lifetime.as_secs()).unwrap_or(i64::MAX);
        let claims = Claims {
            owner: self.owner.to_string(),
            endpoint: self.inner.endpoint.clone(),
            handle: handle.to_owned(),
            version: version.map(str::to_owned),
            issued: now,
            expires: now.saturating_add(lifetime),
            value,
        };
        let mut table = self.inner.write();
        if table.collides(handle, &self.owner) {
            return Err(SessionRefusal::Collision);
        }
        let (sealed, key_id) = seal::seal(&self.inner.keys, &claims).map_err(|e| match e {
            seal::SealError::TooLong => SessionRefusal::Unsealable,
            seal::SealError::Failed => SessionRefusal::Full,
        })?;
        let entry = Entry {
            owner: Arc::clone(&self.owner),
            handle: Arc::from(handle),
            key_id,
            expires: claims.expires,
            last_seen: AtomicI64::new(now),
            value: claims.value,
            _slot: self.slot.take(),
        };
        // The reservation's place becomes the session's.
        table.reserved -= 1;
        table.release(&self.owner);
        table.insert(Box::from(sealed.as_str()), entry);
        self.bound = true;
        Ok(sealed)
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
mod tests;
