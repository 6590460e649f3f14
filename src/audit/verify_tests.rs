//! `audit verify` against logs built by the writer's own chain, signed
//! with test CAs: a clean log verifies, each kind of tampering is named
//! with its line.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use super::super::chain::{Chain, CheckpointPolicy};
use super::super::checkpoint::{self, Bundle, CheckpointError, KeySource, SigningKey};
use super::*;

pub(crate) const GATEWAY: &str = "spiffe://example.org/ns/mcp/sa/gateway";

pub(crate) struct TestCa {
    pub(crate) pem: String,
    issuer: Issuer<'static, KeyPair>,
}

pub(crate) fn ca(name: &str) -> TestCa {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().unwrap();
    let pem = params.self_signed(&key).unwrap().pem();
    TestCa {
        pem,
        issuer: Issuer::new(params, key),
    }
}

pub(crate) fn svid(ca: &TestCa, id: &str) -> SigningKey {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = vec![SanType::URI(id.try_into().unwrap())];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(1);
    params.not_after = now + time::Duration::hours(1);
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    SigningKey {
        spiffe_id: id.to_owned(),
        chain: vec![cert.der().to_vec()],
        key_pkcs8: key.serialize_der(),
    }
}

/// The SVID the test hands the chain; replaced to rotate.
#[derive(Clone)]
pub(crate) struct Keys(pub(crate) Arc<Mutex<Option<SigningKey>>>);

impl KeySource for Keys {
    fn signing_key(&self) -> Result<SigningKey, CheckpointError> {
        self.0
            .lock()
            .unwrap()
            .clone()
            .ok_or(CheckpointError::NoSvid)
    }
    fn spiffe_id(&self) -> Option<String> {
        self.0.lock().unwrap().as_ref().map(|k| k.spiffe_id.clone())
    }
}

fn body(n: usize) -> String {
    format!("{{\"time\":\"t\",\"correlation_id\":\"c{n}\",\"decision\":\"allow\"}}\n")
}

/// A log as the writer writes it: `records` records one per batch, a
/// checkpoint every 3 lines and after the last, then `tail` records no
/// checkpoint covers; the SVID rotates halfway through.
struct Built {
    text: Vec<u8>,
    bundle: Bundle,
    ca: TestCa,
}

fn build(records: usize, tail: usize) -> Built {
    let ca = ca("example.org CA");
    let keys = Keys(Arc::new(Mutex::new(Some(svid(&ca, GATEWAY)))));
    let policy = CheckpointPolicy {
        every_records: 3,
        interval: Duration::from_secs(3600),
    };
    let mut chain = Chain::new(policy, Box::new(keys.clone()));
    let mut text = Vec::new();
    for n in 0..records + tail {
        if n == records / 2 {
            *keys.0.lock().unwrap() = Some(svid(&ca, GATEWAY));
        }
        let seal = n + 1 == records;
        let draft = chain.draft(body(n).as_bytes(), "sha256:v", seal);
        text.extend_from_slice(&draft.lines);
        chain.commit(draft);
    }
    let bundle = Bundle::from_pem(ca.pem.as_bytes()).unwrap();
    Built { text, bundle, ca }
}

fn lines(text: &[u8]) -> Vec<String> {
    String::from_utf8(text.to_vec())
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn joined(lines: &[String]) -> Vec<u8> {
    let mut out = lines.join("\n").into_bytes();
    out.push(b'\n');
    out
}

fn verify_one(text: &[u8], bundle: &Bundle) -> Report {
    verify_texts(&[("audit.log", text)], bundle)
}

/// The 1-based line of the first line whose `chain` is `kind`, from `from`.
fn find(lines: &[String], kind: &str, from: usize) -> usize {
    (from..lines.len())
        .find(|i| lines[*i].contains(&format!("\"chain\":\"{kind}\"")))
        .unwrap()
        + 1
}

/// A checkpoint line re-signed with `key` and written exactly as the
/// writer would write it (as a careful forger would).
fn forged(line: &str, key: &SigningKey) -> String {
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    let payload = checkpoint::Payload {
        seq: v["seq"].as_u64().unwrap(),
        prev: v["prev"].as_str().unwrap().to_owned(),
        spiffe_id: key.spiffe_id.clone(),
        time: "2026-01-01T00:00:00.000Z".into(),
        iat: crate::clock::unix_seconds(),
    };
    let jws = checkpoint::sign(key, &payload).unwrap();
    let records = v["records"].as_u64().unwrap();
    String::from_utf8(crate::audit::chain::signed_checkpoint_line(
        &payload, records, &jws,
    ))
    .unwrap()
}

#[test]
fn a_clean_log_across_a_rotation_verifies() {
    let built = build(9, 0);
    let report = verify_one(&built.text, &built.bundle);
    assert!(report.verified(), "{report:?}");
    assert_eq!(report.segments, 1);
    assert_eq!(report.signed_checkpoints, 4);
    assert_eq!(
        report.signers.len(),
        2,
        "the rotation changes the signing leaf"
    );
    assert_eq!(report.gateways, [GATEWAY]);
    let out = crate::cli::audit_verify::outcome(&report, None);
    assert_eq!(out.exit_code, 0, "{}", out.text);
    let out = crate::cli::audit_verify::outcome(&report, Some(GATEWAY));
    assert_eq!(out.exit_code, 0, "{}", out.text);
    let other = "spiffe://example.org/ns/mcp/sa/other";
    let out = crate::cli::audit_verify::outcome(&report, Some(other));
    assert_eq!(out.exit_code, 1, "{}", out.text);
    assert!(out.text.contains("WRONG WORKLOAD"), "{}", out.text);
}

/// Each tampering, and the verdict: where it stopped and what it says.
#[test]
fn each_kind_of_tampering_is_named_with_its_line() {
    let built = build(9, 0);
    let base = lines(&built.text);
    let other_ca = ca("other CA");
    let outsider = svid(&other_ca, GATEWAY);
    let sibling = svid(&built.ca, "spiffe://example.org/ns/mcp/sa/not-the-gateway");
    let first_cp = find(&base, "checkpoint", 0);
    type Tamper = Box<dyn Fn(&mut Vec<String>)>;
    let cases: Vec<(&str, Tamper, usize, &str)> = vec![
        (
            "edited",
            Box::new(|l| l[2] = l[2].replace("allow", "deny")),
            4,
            "line audit.log:3 was changed",
        ),
        (
            "deleted",
            Box::new(|l| {
                l.remove(2);
            }),
            3,
            "records deleted: seq 2 to 2",
        ),
        (
            "inserted",
            Box::new(|l| {
                let x = l[2].replace("c1", "c99");
                l.insert(3, x);
            }),
            4,
            "a line was inserted here",
        ),
        (
            "swapped",
            Box::new(|l| l.swap(5, 6)),
            6,
            "reordered: seq 6 stands where seq 5 belongs",
        ),
        (
            "last before a checkpoint edited",
            Box::new(move |l| l[first_cp - 2] = l[first_cp - 2].replace("allow", "deny")),
            first_cp,
            "was changed",
        ),
        (
            "garbage",
            Box::new(|l| l[4] = "{not json".into()),
            5,
            "not a JSON object",
        ),
        (
            "not chained",
            Box::new(|l| l[4] = "{\"decision\":\"allow\"}".into()),
            5,
            "no `seq`",
        ),
        (
            "another CA",
            Box::new(move |l| l[first_cp - 1] = forged(&l[first_cp - 1], &outsider)),
            first_cp,
            "does not verify against the bundle",
        ),
        (
            "another SPIFFE ID",
            Box::new(move |l| l[first_cp - 1] = forged(&l[first_cp - 1], &sibling)),
            first_cp,
            "signed by spiffe://example.org/ns/mcp/sa/not-the-gateway, but the segment's gateway is spiffe://example.org/ns/mcp/sa/gateway",
        ),
    ];
    for (name, tamper, line, says) in cases {
        let mut l = base.clone();
        tamper(&mut l);
        let report = verify_one(&joined(&l), &built.bundle);
        let Some((at, problem)) = &report.tampered else {
            panic!("{name}: not caught: {report:?}");
        };
        assert_eq!(at.line, line as u64, "{name}: {problem}");
        assert!(problem.to_string().contains(says), "{name}: {problem}");
        let out = crate::cli::audit_verify::outcome(&report, None);
        assert_eq!(out.exit_code, 1, "{name}");
        assert!(
            out.text.contains(&format!("TAMPERED at audit.log:{line}")),
            "{name}: {}",
            out.text
        );
    }
}

#[test]
fn a_tail_after_the_last_checkpoint_is_unproven_not_tampered() {
    let built = build(6, 2);
    let all = lines(&built.text);
    for keep in [all.len(), all.len() - 1] {
        let report = verify_one(&joined(&all[..keep]), &built.bundle);
        assert!(report.tampered.is_none(), "{report:?}");
        assert_eq!(report.unproven.len(), 1, "{report:?}");
        assert!(report.unproven[0].contains("after the last signed checkpoint"));
        assert_eq!(
            crate::cli::audit_verify::outcome(&report, None).exit_code,
            3
        );
    }
    // Cut back to the last checkpoint: all proven.
    let last_cp = (0..all.len())
        .rev()
        .find(|i| all[*i].contains("\"checkpoint\""))
        .unwrap();
    let report = verify_one(&joined(&all[..=last_cp]), &built.bundle);
    assert!(report.verified(), "{report:?}");
}

/// Found by the `audit_verify` fuzz target: the members of the last
/// checkpoint's line outside its signature (its `time`, `records`, a member
/// added or renamed) could be changed and the log still verified. The line
/// must be exactly the one its signature and the count of lines make.
#[test]
fn the_last_checkpoints_own_line_is_held_to_its_signature() {
    let built = build(6, 2);
    let all = lines(&built.text);
    let last_cp = (0..all.len())
        .rev()
        .find(|i| all[*i].contains("\"checkpoint\""))
        .unwrap();
    let sealed = &all[..=last_cp];
    assert!(verify_one(&joined(sealed), &built.bundle).verified());
    let line = &sealed[last_cp];
    let records = format!(
        "\"records\":{}",
        line.split("\"records\":")
            .nth(1)
            .unwrap()
            .split(',')
            .next()
            .unwrap()
    );
    let cases = [
        (
            "time changed",
            line.replacen("\"time\":\"2", "\"time\":\"1", 1),
        ),
        ("time renamed", line.replacen("\"time\"", "\"|ime\"", 1)),
        (
            "records changed",
            line.replacen(&records, "\"records\":999", 1),
        ),
        ("member added", line.replacen("{", "{\"note\":\"x\",", 1)),
        ("space added", line.replacen(",", ", ", 1)),
    ];
    for (name, changed) in cases {
        assert_ne!(&changed, line, "{name}: the case changes nothing");
        let mut l = sealed.to_vec();
        l[last_cp] = changed;
        let report = verify_one(&joined(&l), &built.bundle);
        let Some((at, problem)) = &report.tampered else {
            panic!("{name}: not caught: {report:?}");
        };
        assert_eq!(at.line, last_cp as u64 + 1, "{name}: {problem}");
        assert!(
            problem
                .to_string()
                .contains("not the one its signature seals"),
            "{name}: {problem}"
        );
    }
}

#[test]
fn an_unsigned_checkpoint_is_reported_and_the_next_signed_one_seals_what_it_could_not() {
    let ca = ca("example.org CA");
    let keys = Keys(Arc::new(Mutex::new(None)));
    let policy = CheckpointPolicy {
        every_records: 2,
        interval: Duration::from_secs(3600),
    };
    let mut chain = Chain::new(policy, Box::new(keys.clone()));
    let mut text = Vec::new();
    for n in 0..3 {
        if n == 2 {
            *keys.0.lock().unwrap() = Some(svid(&ca, GATEWAY));
        }
        let draft = chain.draft(body(n).as_bytes(), "v", false);
        text.extend_from_slice(&draft.lines);
        chain.commit(draft);
    }
    let bundle = Bundle::from_pem(ca.pem.as_bytes()).unwrap();
    let report = verify_one(&text, &bundle);
    assert!(report.tampered.is_none(), "{report:?}");
    assert_eq!(report.signed_checkpoints, 1);
    assert_eq!(report.unproven.len(), 1, "{report:?}");
    assert!(report.unproven[0].contains("unsigned checkpoint (no X.509-SVID is held)"));
}

#[test]
fn a_log_split_by_rotation_verifies_across_its_files_and_links_them() {
    let ca = ca("example.org CA");
    let keys = Keys(Arc::new(Mutex::new(Some(svid(&ca, GATEWAY)))));
    let mut chain = Chain::new(CheckpointPolicy::default(), Box::new(keys));
    let mut files = [Vec::new(), Vec::new()];
    for (i, file) in files.iter_mut().enumerate() {
        if i == 1 {
            chain.new_segment(None);
        }
        for n in 0..3 {
            let draft = chain.draft(body(n).as_bytes(), "v", n == 2);
            file.extend_from_slice(&draft.lines);
            chain.commit(draft);
        }
    }
    let bundle = Bundle::from_pem(ca.pem.as_bytes()).unwrap();
    let both = [("a.log", &files[0][..]), ("b.log", &files[1][..])];
    let report = verify_texts(&both, &bundle);
    assert!(report.verified(), "{report:?}");
    assert_eq!(report.segments, 2);
    // The second file alone: intact, but its predecessor is missing.
    let report = verify_texts(&both[1..], &bundle);
    assert!(
        report.tampered.is_none() && report.unproven.len() == 1,
        "{report:?}"
    );
    // The first file cut short: the second one's genesis says so.
    let mut first = lines(&files[0]);
    first.pop();
    let cut = joined(&first);
    let report = verify_texts(&[("a.log", &cut), both[1]], &bundle);
    let (at, problem) = report.tampered.expect("caught");
    assert_eq!(at.to_string(), "b.log:1");
    assert!(matches!(problem, Problem::SegmentLink { .. }), "{problem}");
}

#[test]
fn an_empty_log_is_not_verified() {
    let built = build(3, 0);
    let report = verify_one(b"", &built.bundle);
    assert!(!report.verified());
    assert_eq!(
        crate::cli::audit_verify::outcome(&report, None).exit_code,
        3
    );
}

#[test]
fn a_segment_that_does_not_name_the_one_before_is_unproven() {
    let first = build(3, 0);
    let keys = Keys(Arc::new(Mutex::new(Some(svid(&first.ca, GATEWAY)))));
    let mut fresh = Chain::new(CheckpointPolicy::default(), Box::new(keys));
    let draft = fresh.draft(body(9).as_bytes(), "v", true);
    let mut text = first.text.clone();
    text.extend_from_slice(&draft.lines);
    let report = verify_one(&text, &first.bundle);
    assert!(report.tampered.is_none(), "{report:?}");
    assert_eq!(report.segments, 2);
    assert_eq!(report.unproven.len(), 1, "{report:?}");
    assert!(report.unproven[0].contains("does not name the one before"));
}
