use rcgen::{CertificateParams, KeyPair, SanType};

use super::*;

/// The SPIFFE ID grammar, as a table: each input is accepted exactly as
/// written, or refused; nothing is ever folded into another ID.
#[test]
fn only_valid_canonical_ids_are_accepted() {
    let cases: &[(&str, &str, bool)] = &[
        ("workload", "spiffe://example.org/ns/demo/sa/agent", true),
        ("trust domain only", "spiffe://example.org", true),
        ("path keeps its case", "spiffe://example.org/Agent-A", true),
        (
            "all path characters",
            "spiffe://example.org/a.b-c_d/0Z9",
            true,
        ),
        ("trust domain characters", "spiffe://ex-am_ple.0rg/a", true),
        // Case: the spiffe crate folds these; go-spiffe and SPIRE refuse them.
        ("upper-case scheme", "SPIFFE://example.org/agent-a", false),
        ("mixed-case scheme", "Spiffe://example.org/agent-a", false),
        (
            "upper-case trust domain",
            "spiffe://EXAMPLE.ORG/agent-a",
            false,
        ),
        (
            "one upper-case letter",
            "spiffe://example.Org/agent-a",
            false,
        ),
        // Percent-encoding is not decoded: '%' is not a path character.
        (
            "percent-encoded letter",
            "spiffe://example.org/%61gent",
            false,
        ),
        ("percent-encoded slash", "spiffe://example.org/a%2Fb", false),
        ("percent in trust domain", "spiffe://exa%6Dple.org/a", false),
        ("dot segment", "spiffe://example.org/a/./b", false),
        ("dot-dot segment", "spiffe://example.org/a/../b", false),
        ("lone dot", "spiffe://example.org/.", false),
        ("empty segment", "spiffe://example.org/a//b", false),
        ("trailing slash", "spiffe://example.org/a/", false),
        ("root slash", "spiffe://example.org/", false),
        ("port", "spiffe://example.org:443/a", false),
        ("userinfo", "spiffe://user@example.org/a", false),
        ("query", "spiffe://example.org/a?x=1", false),
        ("fragment", "spiffe://example.org/a#f", false),
        ("non-ASCII path", "spiffe://example.org/agént", false),
        ("non-ASCII trust domain", "spiffe://exämple.org/a", false),
        (
            "look-alike letter",
            "spiffe://example.org/\u{0430}gent",
            false,
        ),
        ("space", "spiffe://example.org/a b", false),
        ("wrong scheme", "https://example.org/a", false),
        ("no scheme", "example.org/a", false),
        ("empty trust domain", "spiffe:///a", false),
        ("empty", "", false),
    ];
    for (name, id, ok) in cases {
        let got = canonical(id);
        assert_eq!(got.is_ok(), *ok, "{name}: {id:?} -> {got:?}");
        if let Ok(parsed) = got {
            assert_eq!(parsed.to_string(), *id, "{name}: accepted means unchanged");
        }
    }
}

#[test]
fn a_folded_id_is_refused_as_not_canonical() {
    for id in [
        "SPIFFE://example.org/agent-a",
        "spiffe://EXAMPLE.ORG/agent-a",
    ] {
        assert_eq!(
            canonical(id),
            Err(IdError::NotCanonical { id: id.to_owned() })
        );
    }
}

#[test]
fn a_workload_id_needs_a_path() {
    assert!(workload("spiffe://example.org/a").is_ok());
    assert!(matches!(
        workload("spiffe://example.org"),
        Err(IdError::NoPath { .. })
    ));
    assert!(matches!(
        workload("spiffe://EXAMPLE.org/a"),
        Err(IdError::NotCanonical { .. })
    ));
}

#[test]
fn ids_up_to_2048_bytes() {
    let base = "spiffe://example.org/";
    let id = format!("{base}{}", "a".repeat(MAX_LEN - base.len()));
    assert_eq!(workload(&id).unwrap().to_string(), id);
    let too_long = format!("{id}b");
    assert_eq!(workload(&too_long), Err(IdError::TooLong(MAX_LEN + 1)));
}

#[test]
fn errors_show_a_bounded_id() {
    let long = format!("spiffe://EXAMPLE.org/{}", "a".repeat(1500));
    let message = canonical(&long).unwrap_err().to_string();
    assert!(message.len() < 400, "{}", message.len());
    assert!(message.contains("canonical"));
}

/// A leaf certificate with these URI SANs (and a DNS SAN), self-signed.
fn leaf(uris: &[&str]) -> Vec<u8> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = uris
        .iter()
        .map(|u| SanType::URI((*u).try_into().unwrap()))
        .chain([SanType::DnsName("localhost".try_into().unwrap())])
        .collect();
    params
        .self_signed(&KeyPair::generate().unwrap())
        .unwrap()
        .der()
        .to_vec()
}

/// The same grammar read from certificates: a leaf's one URI SAN is taken
/// only if it is a canonical workload ID.
#[test]
fn certificates_carry_exactly_one_canonical_workload_id() {
    let cases: &[(&str, &[&str], Option<&str>)] = &[
        (
            "canonical",
            &["spiffe://example.org/agent-a"],
            Some("spiffe://example.org/agent-a"),
        ),
        ("upper-case scheme", &["SPIFFE://example.org/agent-a"], None),
        (
            "upper-case trust domain",
            &["spiffe://EXAMPLE.ORG/agent-a"],
            None,
        ),
        ("percent-encoded", &["spiffe://example.org/%61gent-a"], None),
        ("dot segment", &["spiffe://example.org/./agent-a"], None),
        ("trailing slash", &["spiffe://example.org/agent-a/"], None),
        ("port", &["spiffe://example.org:8443/agent-a"], None),
        ("userinfo", &["spiffe://u@example.org/agent-a"], None),
        ("query", &["spiffe://example.org/agent-a?x"], None),
        ("no path", &["spiffe://example.org"], None),
        (
            "two IDs",
            &["spiffe://example.org/a", "spiffe://example.org/b"],
            None,
        ),
        (
            "ID and https URI",
            &["spiffe://example.org/a", "https://example.org/a"],
            None,
        ),
        ("no URI SAN", &[], None),
    ];
    for (name, uris, want) in cases {
        let got = from_leaf(&leaf(uris)).ok().map(|id| id.to_string());
        assert_eq!(got.as_deref(), *want, "{name}");
    }
    assert!(matches!(
        from_leaf(b"garbage"),
        Err(IdError::Certificate(_))
    ));
}
