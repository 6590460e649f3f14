//! Sessions belong to identities.
//!
//! An `Mcp-Session-Id` issued by the upstream in answer to an `initialize`
//! is bound to the SPIFFE ID that sent the initialize. Any use of it by
//! another identity, or of an id the gateway never saw issued, is refused
//! before anything is forwarded. A session ends on DELETE, after the idle
//! timeout, and when the owner's credential expires: each use by the owner
//! extends the session's credential deadline to the notAfter of the
//! certificate presented on that use, so an owner that rotates its SVID keeps
//! its session, and one that stops presenting valid certificates loses it.
//!
//! The table is read on every request (a read lock and two atomic stores);
//! writes happen only when a session starts or ends. It is bounded: when
//! full, new sessions are refused rather than old ones evicted silently.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::identity::unix_now;
use crate::proxy::listener::Peer;

/// Why a session id was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionRefusal {
    /// Never issued through this gateway, or already ended.
    Unknown,
    /// Issued to another identity.
    NotOwner,
    /// Idle too long, or the owner's credential expired.
    Expired,
    /// The table is full; no new session is started.
    Full,
    /// The upstream issued an id that is already bound.
    Collision,
}

impl SessionRefusal {
    pub fn audit_reason(self) -> &'static str {
        match self {
            SessionRefusal::Unknown => "session_unknown",
            SessionRefusal::NotOwner => "session_not_owned",
            SessionRefusal::Expired => "session_expired",
            SessionRefusal::Full => "session_table_full",
            SessionRefusal::Collision => "session_id_collision",
        }
    }
}

struct Session {
    owner: Arc<str>,
    /// The latest notAfter the owner presented, Unix seconds.
    credential_expiry: AtomicI64,
    /// Unix seconds of the last use.
    last_seen: AtomicI64,
}

/// The session table.
pub struct Sessions {
    table: RwLock<HashMap<Box<str>, Session>>,
    idle: i64,
    max: usize,
}

impl Sessions {
    pub fn new(idle: Duration, max: usize) -> Sessions {
        Sessions {
            table: RwLock::new(HashMap::new()),
            idle: i64::try_from(idle.as_secs()).unwrap_or(i64::MAX),
            max,
        }
    }

    /// Checks that `peer` may use session `id` now, and records the use.
    pub fn check(&self, id: &str, peer: &Peer) -> Result<(), SessionRefusal> {
        let now = unix_now();
        let expired = {
            let table = self.table.read().unwrap_or_else(|e| e.into_inner());
            let session = table.get(id).ok_or(SessionRefusal::Unknown)?;
            if *session.owner != *peer.spiffe_id {
                return Err(SessionRefusal::NotOwner);
            }
            let live = now - session.last_seen.load(Ordering::Relaxed) <= self.idle
                && session.credential_expiry.load(Ordering::Relaxed) > now;
            if live {
                session.last_seen.store(now, Ordering::Relaxed);
                session
                    .credential_expiry
                    .fetch_max(peer.not_after, Ordering::Relaxed);
                return Ok(());
            }
            true
        };
        if expired {
            self.remove(id);
        }
        Err(SessionRefusal::Expired)
    }

    /// Binds a session the upstream just issued to the peer that opened it.
    pub fn insert(&self, id: &str, peer: &Peer) -> Result<(), SessionRefusal> {
        let mut table = self.table.write().unwrap_or_else(|e| e.into_inner());
        if let Some(existing) = table.get(id) {
            return if *existing.owner == *peer.spiffe_id {
                Ok(())
            } else {
                Err(SessionRefusal::Collision)
            };
        }
        if table.len() >= self.max {
            return Err(SessionRefusal::Full);
        }
        table.insert(
            Box::from(id),
            Session {
                owner: Arc::clone(&peer.spiffe_id),
                credential_expiry: AtomicI64::new(peer.not_after),
                last_seen: AtomicI64::new(unix_now()),
            },
        );
        Ok(())
    }

    pub fn remove(&self, id: &str) {
        self.table
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    /// Removes every session past its idle timeout or credential expiry and
    /// returns their ids (so the upstream can be told).
    pub fn sweep(&self) -> Vec<String> {
        let now = unix_now();
        let mut table = self.table.write().unwrap_or_else(|e| e.into_inner());
        let mut ended = Vec::new();
        table.retain(|id, s| {
            let live = now - s.last_seen.load(Ordering::Relaxed) <= self.idle
                && s.credential_expiry.load(Ordering::Relaxed) > now;
            if !live {
                ended.push(id.to_string());
            }
            live
        });
        ended
    }

    pub fn len(&self) -> usize {
        self.table.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: &str, not_after: i64) -> Peer {
        Peer {
            spiffe_id: Arc::from(id),
            not_after,
        }
    }

    const A: &str = "spiffe://example.org/ns/demo/sa/agent";
    const B: &str = "spiffe://example.org/ns/demo/sa/agent-b";

    #[test]
    fn a_session_is_usable_only_by_its_owner() {
        let s = Sessions::new(Duration::from_secs(60), 10);
        let later = unix_now() + 3600;
        s.insert("s1", &peer(A, later)).unwrap();
        assert_eq!(s.check("s1", &peer(A, later)), Ok(()));
        assert_eq!(
            s.check("s1", &peer(B, later)),
            Err(SessionRefusal::NotOwner)
        );
        // A refused hijack does not end the owner's session.
        assert_eq!(s.check("s1", &peer(A, later)), Ok(()));
        assert_eq!(s.check("s2", &peer(A, later)), Err(SessionRefusal::Unknown));
        s.remove("s1");
        assert_eq!(s.check("s1", &peer(A, later)), Err(SessionRefusal::Unknown));
    }

    #[test]
    fn a_session_ends_with_its_owners_credential() {
        let s = Sessions::new(Duration::from_secs(60), 10);
        s.insert("s1", &peer(A, unix_now() - 1)).unwrap();
        assert_eq!(
            s.check("s1", &peer(A, unix_now() + 60)),
            Err(SessionRefusal::Expired)
        );
        assert_eq!(
            s.check("s1", &peer(A, unix_now() + 60)),
            Err(SessionRefusal::Unknown)
        );
    }

    #[test]
    fn a_rotated_owner_certificate_extends_the_session() {
        let s = Sessions::new(Duration::from_secs(60), 10);
        let soon = unix_now() + 2;
        s.insert("s1", &peer(A, soon)).unwrap();
        s.check("s1", &peer(A, unix_now() + 3600)).unwrap();
        let table = s.table.read().unwrap();
        assert!(table["s1"].credential_expiry.load(Ordering::Relaxed) > soon);
    }

    #[test]
    fn idle_sessions_are_swept() {
        let s = Sessions::new(Duration::from_secs(0), 10);
        s.insert("s1", &peer(A, unix_now() + 3600)).unwrap();
        s.table.read().unwrap()["s1"]
            .last_seen
            .store(unix_now() - 5, Ordering::Relaxed);
        assert_eq!(s.sweep(), vec!["s1".to_owned()]);
        assert!(s.is_empty());
    }

    #[test]
    fn the_table_is_bounded_and_ids_do_not_change_hands() {
        let s = Sessions::new(Duration::from_secs(60), 1);
        let later = unix_now() + 3600;
        s.insert("s1", &peer(A, later)).unwrap();
        assert_eq!(
            s.insert("s1", &peer(B, later)),
            Err(SessionRefusal::Collision)
        );
        assert_eq!(s.insert("s2", &peer(A, later)), Err(SessionRefusal::Full));
        assert_eq!(s.len(), 1);
    }
}
