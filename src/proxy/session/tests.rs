use std::io::Write;

use super::*;

const A: &str = "spiffe://example.org/ns/demo/sa/agent";
const B: &str = "spiffe://example.org/ns/demo/sa/agent-b";
const K1: &str = "k1 AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n";
const K2: &str = "k2 ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=\n";

fn owner(id: &str) -> Arc<str> {
    Arc::from(id)
}

fn bounds(max: usize, per_identity: usize) -> Bounds {
    Bounds {
        idle: Duration::from_secs(60),
        lifetime: Duration::from_secs(3600),
        max,
        max_per_identity: per_identity,
    }
}

/// A table with a key of the process's own.
fn table(max: usize, per_identity: usize) -> Sessions {
    let keys = Arc::new(SessionKeys::load(None).unwrap());
    Sessions::new(bounds(max, per_identity), keys, "u:up".into())
}

/// Keys from a file, as replicas share them.
fn key_file(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file
}

fn replica(file: &tempfile::NamedTempFile) -> Sessions {
    let keys = Arc::new(SessionKeys::load(Some(file.path())).unwrap());
    Sessions::new(bounds(10, 10), keys, "u:up".into())
}

fn open(s: &Sessions, handle: &str, who: &str) -> Result<String, SessionRefusal> {
    s.reserve(&owner(who))?.bind(handle, Some("2025-11-25"), ())
}

fn age(s: &Sessions, sealed: &str, seconds: i64) {
    let table = s.inner.table.read().unwrap();
    table.live[sealed]
        .last_seen
        .store(unix_seconds() - seconds, Ordering::Relaxed);
}

fn handle(s: &Sessions, sealed: &str, who: &str) -> Result<String, SessionRefusal> {
    s.check(sealed, who)
        .map(|session| session.handle.to_string())
}

#[test]
fn a_session_is_usable_only_by_its_owner_and_shows_the_upstream_its_own_id() {
    let s = table(10, 10);
    let sealed = open(&s, "s1", A).unwrap();
    assert!(
        !sealed.contains("s1"),
        "the caller never sees the upstream's id"
    );
    assert_eq!(handle(&s, &sealed, A), Ok("s1".into()));
    assert_eq!(handle(&s, &sealed, B), Err(SessionRefusal::NotOwner));
    // A refused hijack does not end the owner's session.
    assert_eq!(handle(&s, &sealed, A), Ok("s1".into()));
    assert_eq!(handle(&s, "s1", A), Err(SessionRefusal::Unknown));
    s.remove(&sealed);
    assert_eq!(handle(&s, &sealed, A), Err(SessionRefusal::Unknown));
}

#[test]
fn with_its_own_key_a_session_ends_when_idle_here_and_at_the_upstream() {
    let s = table(1, 1);
    let sealed = open(&s, "s1", A).unwrap();
    age(&s, &sealed, 59);
    assert!(s.check(&sealed, A).is_ok(), "used within the idle timeout");
    age(&s, &sealed, 61);
    assert_eq!(handle(&s, &sealed, A), Err(SessionRefusal::Expired));
    let ended: Vec<_> = s.sweep().into_iter().map(|e| e.handle).collect();
    assert_eq!(ended, vec![Arc::from("s1")], "told to the upstream");
    assert_eq!(handle(&s, &sealed, A), Err(SessionRefusal::Unknown));
    assert!(s.is_empty());
    open(&s, "s2", A).expect("the idle session gave its place back");
}

#[test]
fn a_session_sealed_on_one_replica_is_served_on_another() {
    let file = key_file(K1);
    let (a, b) = (replica(&file), replica(&file));
    let sealed = open(&a, "up-1", A).unwrap();
    assert_eq!(handle(&b, &sealed, A), Ok("up-1".into()));
    assert_eq!(handle(&b, &sealed, B), Err(SessionRefusal::NotOwner));
    // Counted under b's bounds once seen there.
    assert_eq!(b.len(), 1);
}

#[test]
fn forged_tampered_truncated_and_foreign_ids_are_not_found() {
    let file = key_file(K1);
    let a = replica(&file);
    let sealed = open(&a, "up-1", A).unwrap();
    let b = replica(&file);
    let mut bytes = sealed.clone().into_bytes();
    let middle = bytes.len() / 2;
    bytes[middle] = if bytes[middle] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(bytes).unwrap();
    let other_key = replica(&key_file(K2));
    let foreign = open(&other_key, "up-1", A).unwrap();
    let keys = Arc::new(SessionKeys::load(Some(file.path())).unwrap());
    let other_endpoint: Sessions = Sessions::new(bounds(10, 10), keys, "u:other".into());
    let cases = [
        flipped.as_str(),
        &sealed[..sealed.len() - 1],
        &sealed[..10],
        "",
        "not base64 !",
        "AA",
        &foreign,
        &"A".repeat(seal::MAX_SEALED_LEN + 4),
    ];
    for case in cases {
        assert_eq!(
            handle(&b, case, A),
            Err(SessionRefusal::Unknown),
            "{case:.40}"
        );
    }
    assert_eq!(
        handle(&other_endpoint, &sealed, A),
        Err(SessionRefusal::Unknown)
    );
    assert!(b.is_empty(), "nothing refused takes a place");
}

#[test]
fn a_session_past_its_absolute_end_is_refused_on_every_replica() {
    let file = key_file(K1);
    let b = replica(&file);
    let keys = SessionKeys::load(Some(file.path())).unwrap();
    let now = unix_seconds();
    let claims = Claims {
        owner: A.to_owned(),
        endpoint: "u:up".to_owned(),
        handle: "old".to_owned(),
        version: None,
        issued: now - 7200,
        expires: now - 1,
        value: (),
    };
    let (sealed, _) = seal::seal(&keys, &claims).unwrap();
    assert_eq!(handle(&b, &sealed, A), Err(SessionRefusal::Expired));
    // One that is live here ends at its end too, and the sweep tells the
    // upstream.
    let a = replica(&file);
    let live = open(&a, "s1", A).unwrap();
    a.inner.write().live.get_mut(live.as_str()).unwrap().expires = now - 1;
    assert_eq!(handle(&a, &live, A), Err(SessionRefusal::Expired));
    assert_eq!(a.sweep().len(), 1);
}

#[test]
fn with_shared_keys_idle_here_only_frees_the_place_here() {
    let file = key_file(K1);
    let a = replica(&file);
    let sealed = open(&a, "s1", A).unwrap();
    age(&a, &sealed, 61);
    assert!(a.sweep().is_empty(), "not ended at the upstream");
    assert!(a.is_empty(), "its place here is free");
    assert_eq!(handle(&a, &sealed, A), Ok("s1".into()), "in use elsewhere");
}

#[test]
fn a_delete_on_one_replica_refuses_the_id_there_until_its_end() {
    let file = key_file(K1);
    let (a, b) = (replica(&file), replica(&file));
    let sealed = open(&a, "s1", A).unwrap();
    assert!(b.check(&sealed, A).is_ok());
    assert_eq!(b.remove(&sealed).map(|e| e.handle), Some(Arc::from("s1")));
    assert_eq!(handle(&b, &sealed, A), Err(SessionRefusal::Unknown));
    b.sweep();
    assert_eq!(handle(&b, &sealed, A), Err(SessionRefusal::Unknown));
}

#[test]
fn a_key_rotation_keeps_open_sessions_and_a_removed_key_ends_its_sessions() {
    let mut file = key_file(K1);
    let a = replica(&file);
    let old = open(&a, "s1", A).unwrap();
    file.write_all(K2.as_bytes()).unwrap();
    assert_eq!(a.inner.keys.reload().unwrap(), vec!["k1", "k2"]);
    let new = open(&a, "s2", A).unwrap();
    let b = replica(&file);
    assert_eq!(handle(&b, &old, A), Ok("s1".into()), "sealed with k1");
    assert_eq!(handle(&b, &new, A), Ok("s2".into()), "sealed with k2");
    let only_k2 = key_file(K2);
    let c = replica(&only_k2);
    assert_eq!(handle(&c, &old, A), Err(SessionRefusal::Unknown));
    assert_eq!(handle(&c, &new, A), Ok("s2".into()));
    // A replica that drops k1 ends the sessions it sealed, live or not.
    std::fs::write(file.path(), K2).unwrap();
    a.inner.keys.reload().unwrap();
    assert_eq!(handle(&a, &old, A), Err(SessionRefusal::Expired));
    assert_eq!(a.sweep().len(), 1);
    assert_eq!(handle(&a, &new, A), Ok("s2".into()));
}

#[test]
fn a_bad_reload_keeps_the_keys_in_use() {
    let file = key_file(K1);
    let a = replica(&file);
    let sealed = open(&a, "s1", A).unwrap();
    std::fs::write(file.path(), "k1 short\n").unwrap();
    assert!(a.inner.keys.reload().is_err());
    assert_eq!(a.inner.keys.current().ids(), vec!["k1"]);
    let b = replica(&key_file(K1));
    assert_eq!(handle(&b, &sealed, A), Ok("s1".into()));
}

#[test]
fn the_table_is_bounded_and_upstream_ids_do_not_change_hands() {
    let s = table(1, 1);
    open(&s, "s1", A).unwrap();
    assert_eq!(open(&s, "s1", B), Err(SessionRefusal::Full));
    assert_eq!(s.reserve(&owner(B)).err(), Some(SessionRefusal::Full));
    assert_eq!(s.len(), 1);

    let s = table(10, 10);
    open(&s, "s1", A).unwrap();
    assert_eq!(open(&s, "s1", B), Err(SessionRefusal::Collision));
    let table = s.inner.table.read().unwrap();
    assert_eq!(
        (table.reserved, table.held.get(A), table.held.get(B)),
        (0, Some(&1), None),
        "the refused binding gave its place back"
    );
}

#[test]
fn an_upstream_id_too_long_to_seal_is_refused_and_every_sealed_id_opens() {
    let s = table(10, 10);
    // The longest id that seals opens again, on this table.
    let longest = (1..=seal::MAX_SEALED_LEN)
        .rev()
        .find(|len| open(&s, &"x".repeat(*len), A).is_ok())
        .expect("some length seals");
    assert!(longest > 5_000, "{longest}");
    let sealed = open(&s, &"y".repeat(longest), A).unwrap();
    assert!(sealed.len() <= seal::MAX_SEALED_LEN);
    assert_eq!(handle(&s, &sealed, A), Ok("y".repeat(longest)));
    // One byte more is refused, and gives its place back.
    let before = s.len();
    let too_long = "z".repeat(longest + 1);
    assert_eq!(open(&s, &too_long, A), Err(SessionRefusal::Unsealable));
    assert_eq!(s.len(), before);
    let table = s.inner.table.read().unwrap();
    assert_eq!((table.reserved, table.held.get(A)), (0, Some(&before)));
}

#[test]
fn one_identity_cannot_take_the_whole_table_here_or_by_sessions_from_elsewhere() {
    let s = table(4, 2);
    let a1 = open(&s, "a1", A).unwrap();
    open(&s, "a2", A).unwrap();
    assert_eq!(
        s.reserve(&owner(A)).err(),
        Some(SessionRefusal::IdentityLimit)
    );
    open(&s, "b1", B).expect("another identity still gets in");
    s.remove(&a1);
    open(&s, "a3", A).expect("ending one lets A open another");
    assert_eq!(s.len(), 3);

    // Sessions opened on other replicas count when first seen here.
    let file = key_file(K1);
    let keys = Arc::new(SessionKeys::load(Some(file.path())).unwrap());
    let here: Sessions = Sessions::new(bounds(4, 1), Arc::clone(&keys), "u:up".into());
    let elsewhere = replica(&file);
    let first = open(&elsewhere, "e1", A).unwrap();
    let second = open(&elsewhere, "e2", A).unwrap();
    assert!(here.check(&first, A).is_ok());
    assert_eq!(
        handle(&here, &second, A),
        Err(SessionRefusal::IdentityLimit)
    );
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
    second.bind("b1", None, ()).unwrap();
    open(&s, "a1", A).unwrap();
    assert_eq!(s.len(), 2);
    let table = s.inner.table.read().unwrap();
    assert_eq!(table.reserved, 0);
}

#[test]
fn ended_sessions_give_their_owners_place_back() {
    let s = table(10, 1);
    let a1 = open(&s, "a1", A).unwrap();
    assert!(s.remove(&a1).is_some());
    assert!(s.remove(&a1).is_none(), "a second DELETE releases nothing");
    open(&s, "a2", A).unwrap();
    assert_eq!(
        s.reserve(&owner(A)).err(),
        Some(SessionRefusal::IdentityLimit)
    );
}

#[test]
fn key_files_are_strict_and_name_file_and_line() {
    let cases = [
        ("", "f: no key"),
        ("# only a comment\n", "f: no key"),
        ("k1\n", "f:1: expected"),
        ("k1 a b\n", "f:1: expected"),
        ("bad/id AAAA\n", "f:1: key id \"bad/id\""),
        (&format!("{K1}{K1}"), "f:2: key id \"k1\" is listed twice"),
        ("k1 !!!\n", "f:1: the key is not base64"),
        ("\nk1 AAAA\n", "f:2: the key is 3 bytes"),
    ];
    for (text, want) in cases {
        let err = keys::parse("f", text).err().expect(text).to_string();
        assert!(err.starts_with(want), "{text:?}: {err}");
    }
    let ring = keys::parse("f", &format!("# rotation\n{K1}\n{K2}")).unwrap();
    assert_eq!(ring.ids(), vec!["k1", "k2"]);
    assert_eq!(&*ring.sealing().id, "k2", "the last key seals");
}

#[test]
fn a_missing_key_file_is_an_error_not_a_random_key() {
    let err = SessionKeys::load(Some(std::path::Path::new("/nonexistent/keys")))
        .err()
        .expect("refused");
    assert!(err.to_string().contains("cannot be read"), "{err}");
}
