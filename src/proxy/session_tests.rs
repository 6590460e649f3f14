use super::*;

const A: &str = "spiffe://example.org/ns/demo/sa/agent";
const B: &str = "spiffe://example.org/ns/demo/sa/agent-b";

fn owner(id: &str) -> Arc<str> {
    Arc::from(id)
}

fn table(max: usize, per_identity: usize) -> Sessions {
    Sessions::new(Duration::from_secs(60), max, per_identity)
}

fn open(s: &Sessions, id: &str, who: &str) -> Result<(), SessionRefusal> {
    s.reserve(&owner(who))?.bind(id, ())
}

fn age(s: &Sessions, id: &str, seconds: i64) {
    let table = s.inner.table.read().unwrap();
    table.sessions[id]
        .last_seen
        .store(unix_seconds() - seconds, Ordering::Relaxed);
}

#[test]
fn a_session_is_usable_only_by_its_owner() {
    let s = table(10, 10);
    open(&s, "s1", A).unwrap();
    assert_eq!(s.check("s1", A), Ok(()));
    assert_eq!(s.check("s1", B), Err(SessionRefusal::NotOwner));
    // A refused hijack does not end the owner's session.
    assert_eq!(s.check("s1", A), Ok(()));
    assert_eq!(s.check("s2", A), Err(SessionRefusal::Unknown));
    s.remove("s1");
    assert_eq!(s.check("s1", A), Err(SessionRefusal::Unknown));
}

#[test]
fn a_session_outlives_any_one_certificate_and_ends_only_when_idle() {
    // Nothing about the certificate the session was opened with is kept:
    // the owner's later requests (any SVID, any connection) keep it alive.
    let s = table(10, 10);
    open(&s, "s1", A).unwrap();
    age(&s, "s1", 59);
    assert_eq!(s.check("s1", A), Ok(()), "used within the idle timeout");
    age(&s, "s1", 61);
    assert_eq!(s.check("s1", A), Err(SessionRefusal::Expired));
    assert_eq!(s.check("s1", A), Err(SessionRefusal::Unknown));
}

#[test]
fn idle_sessions_are_swept_and_give_their_place_back() {
    let s = table(1, 1);
    open(&s, "s1", A).unwrap();
    age(&s, "s1", 61);
    let ended: Vec<_> = s.sweep().into_iter().map(|(id, ())| id).collect();
    assert_eq!(ended, vec![Box::from("s1")]);
    assert!(s.is_empty());
    open(&s, "s2", A).unwrap();
}

#[test]
fn the_table_is_bounded_and_ids_do_not_change_hands() {
    let s = table(1, 1);
    open(&s, "s1", A).unwrap();
    assert_eq!(open(&s, "s1", B), Err(SessionRefusal::Full));
    assert_eq!(s.reserve(&owner(B)).err(), Some(SessionRefusal::Full));
    assert_eq!(s.len(), 1);

    let s = table(10, 10);
    open(&s, "s1", A).unwrap();
    assert_eq!(open(&s, "s1", B), Err(SessionRefusal::Collision));
    // The refused binding gave its place back; the same owner's repeat of
    // an id it holds is its session already.
    assert_eq!(open(&s, "s1", A), Ok(()));
    let table = s.inner.table.read().unwrap();
    assert_eq!(
        (table.reserved, table.held.get(A), table.held.get(B)),
        (0, Some(&1), None)
    );
}

#[test]
fn one_identity_cannot_take_the_whole_table() {
    let s = table(4, 2);
    open(&s, "a1", A).unwrap();
    open(&s, "a2", A).unwrap();
    assert_eq!(
        s.reserve(&owner(A)).err(),
        Some(SessionRefusal::IdentityLimit)
    );
    // Another identity still gets in.
    open(&s, "b1", B).unwrap();
    // Ending one of A's sessions lets A open another.
    s.remove("a1");
    open(&s, "a3", A).unwrap();
    assert_eq!(s.len(), 3);
}

#[test]
fn a_reservation_counts_until_it_is_bound_or_dropped() {
    let s = table(2, 2);
    let first = s.reserve(&owner(A)).unwrap();
    let second = s.reserve(&owner(B)).unwrap();
    // Two initializes under way fill a table of two: a third is refused
    // before it is sent anywhere.
    assert_eq!(s.reserve(&owner(B)).err(), Some(SessionRefusal::Full));
    drop(first); // the upstream issued no session, or failed
    second.bind("b1", ()).unwrap();
    open(&s, "a1", A).unwrap();
    assert_eq!(s.len(), 2);
    let table = s.inner.table.read().unwrap();
    assert_eq!(table.reserved, 0);
}

#[test]
fn ended_sessions_give_their_owners_place_back() {
    let s = table(10, 1);
    open(&s, "a1", A).unwrap();
    assert_eq!(s.remove("a1"), Some(()));
    assert_eq!(s.remove("a1"), None, "a second DELETE releases nothing");
    open(&s, "a2", A).unwrap();
    assert_eq!(
        s.reserve(&owner(A)).err(),
        Some(SessionRefusal::IdentityLimit)
    );
}
