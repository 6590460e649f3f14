//! Fuzzes what opens a caller's `Mcp-Session-Id` and what reads a session
//! key file: both take untrusted text and must never panic.
//!
//! Input: a first byte choosing the case, then the rest.
//! - 0: the rest, as text, is presented as a sealed id. Under a key the
//!   fuzzer does not hold, nothing opens.
//! - 1: the rest is a key file. A file that reads names at most 16 keys, each
//!   listed, and the last one seals.
//! - 2: claims built from the rest are sealed, then the id is changed at a
//!   position and in a way the input chooses. An id is sealed only if it
//!   fits `MAX_SEALED_LEN`; as sealed it opens to the same claims; changed,
//!   it never opens.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use spiffe_mcp_gateway::proxy::session::keys::{SessionKeys, parse};
use spiffe_mcp_gateway::proxy::session::seal::{Claims, MAX_SEALED_LEN, SealError, open, seal};

/// A key of this process's own, drawn once: the fuzzer never sees it.
fn keys() -> &'static SessionKeys {
    static KEYS: OnceLock<SessionKeys> = OnceLock::new();
    KEYS.get_or_init(|| SessionKeys::load(None).expect("a process key"))
}

fuzz_target!(|data: &[u8]| {
    let [case, rest @ ..] = data else {
        return;
    };
    match case % 3 {
        0 => {
            if let Ok(text) = std::str::from_utf8(rest) {
                let opened = open::<serde_json::Value>(&keys().current(), text);
                assert!(opened.is_none(), "an id the fuzzer made opened");
            }
        }
        1 => {
            if let Ok(text) = std::str::from_utf8(rest) {
                if let Ok(ring) = parse("fuzz", text) {
                    let ids = ring.ids();
                    assert!(!ids.is_empty() && ids.len() <= 16, "{ids:?}");
                    assert_eq!(Some(&*ring.sealing().id), ids.last().copied());
                }
            }
        }
        _ => sealed_then_changed(rest),
    }
});

fn sealed_then_changed(data: &[u8]) {
    let [at_a, at_b, how, text @ ..] = data else {
        return;
    };
    let text = String::from_utf8_lossy(text).into_owned();
    let claims = Claims {
        owner: text.clone(),
        endpoint: "u:fuzz".into(),
        handle: text.chars().rev().collect(),
        version: Some(text),
        issued: i64::from(*at_a),
        expires: i64::from(*at_b),
        value: (),
    };
    let id = match seal(keys(), &claims) {
        Ok((id, _)) => id,
        // Claims whose id `open` would refuse are not sealed at all.
        Err(SealError::TooLong) => return,
        Err(SealError::Failed) => panic!("sealing failed"),
    };
    assert!(id.len() <= MAX_SEALED_LEN, "{}", id.len());
    let ring = keys().current();
    let opened = open::<()>(&ring, &id).expect("the id as sealed opens");
    assert_eq!(opened.claims, claims);
    let at = usize::from(u16::from_le_bytes([*at_a, *at_b])) % id.len();
    let mut changed = id.clone().into_bytes();
    match how % 3 {
        0 => changed[at] = if changed[at] == b'A' { b'B' } else { b'A' },
        1 => changed.truncate(at),
        _ => changed.insert(at, b'A'),
    }
    let changed = String::from_utf8(changed).expect("base64url is ASCII");
    assert!(
        open::<()>(&ring, &changed).is_none(),
        "changed at {at}, {how}"
    );
}
