//! The writer's chain on real files: segments across rotation and
//! restarts, checkpoints by count, by time and at shutdown, all verified
//! with `audit verify`'s own function.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::super::chain::{Chain, CheckpointPolicy};
use super::super::checkpoint::Bundle;
use super::super::verify::tests::{GATEWAY, Keys, TestCa, ca, svid};
use super::super::verify::{Report, verify_files};
use super::*;

fn signed(f: &Fixture, w: &mut Writer, ca: &TestCa, policy: CheckpointPolicy) {
    let _ = f;
    let keys = Keys(Arc::new(Mutex::new(Some(svid(ca, GATEWAY)))));
    w.chain = Chain::new(policy, Box::new(keys));
}

fn every(records: u64) -> CheckpointPolicy {
    CheckpointPolicy {
        every_records: records,
        interval: Duration::from_secs(3600),
    }
}

fn verify(files: &[PathBuf], ca: &TestCa) -> Report {
    let bundle = Bundle::from_pem(ca.pem.as_bytes()).unwrap();
    verify_files(files, &bundle).unwrap()
}

/// The lines of a file whose `chain` is `kind`.
fn chain_lines(path: &Path, kind: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["chain"] == kind)
        .collect()
}

#[test]
fn a_rotated_file_starts_a_segment_that_names_the_last_line_of_the_one_before() {
    let (f, ca) = (fixture(), ca("example.org CA"));
    let (mut w, _) = f.writer();
    signed(&f, &mut w, &ca, every(2));
    f.write(&mut w, 1..=2);
    let rotated = f.path.with_extension("jsonl.1");
    std::fs::rename(&f.path, &rotated).unwrap();
    f.write(&mut w, 3..=4);
    assert_eq!(ids(&rotated), expect(&[1, 2]));
    let genesis = &chain_lines(&f.path, "genesis")[0];
    let old = std::fs::read_to_string(&rotated).unwrap();
    let last = old.lines().last().unwrap();
    assert_eq!(
        genesis["prev"],
        super::super::chain::line_hash(last.as_bytes())
    );
    assert_eq!(genesis["gateway"], GATEWAY);
    assert_eq!(genesis["policy_version"], "v");
    let report = verify(&[rotated.clone(), f.path.clone()], &ca);
    assert!(report.verified(), "{report:?}");
    assert_eq!(report.segments, 2);
    // In the wrong order the segments do not link: not verified.
    let report = verify(&[f.path.clone(), rotated], &ca);
    assert!(!report.verified(), "{report:?}");
    assert!(
        report.unproven[0].contains("links to an earlier one"),
        "{report:?}"
    );
}

#[test]
fn a_restarted_writer_links_its_segment_to_the_files_last_line() {
    let (f, ca) = (fixture(), ca("example.org CA"));
    {
        let (mut w, _) = f.writer();
        signed(&f, &mut w, &ca, every(1));
        f.write(&mut w, 1..=1);
    }
    let (mut w, _) = f.writer();
    signed(&f, &mut w, &ca, every(1));
    f.write(&mut w, 2..=2);
    let geneses = chain_lines(&f.path, "genesis");
    assert_eq!(geneses.len(), 2);
    assert!(geneses[0]["prev"].is_null());
    assert!(geneses[1]["prev"].is_string());
    let report = verify(std::slice::from_ref(&f.path), &ca);
    assert!(report.verified(), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_writer_seals_its_records_when_the_interval_ends_and_at_shutdown() {
    let (f, ca) = (fixture(), ca("example.org CA"));
    let keys = Keys(Arc::new(Mutex::new(Some(svid(&ca, GATEWAY)))));
    let policy = CheckpointPolicy {
        every_records: 1000,
        interval: Duration::from_millis(200),
    };
    let log = AuditLog::with_writer(f.sink(), AuditOnFailure::Refuse, f.metrics.clone(), |w| {
        w.chain = Chain::new(policy, Box::new(keys));
    });
    log.record(record(1)).await;
    until("a checkpoint written while idle", || {
        std::fs::read_to_string(&f.path).is_ok_and(|t| t.contains("\"checkpoint\""))
    })
    .await;
    assert!(verify(std::slice::from_ref(&f.path), &ca).verified());
    log.record(record(2)).await;
    drop(log);
    until("the shutdown checkpoint", || {
        chain_lines(&f.path, "checkpoint").len() == 2
    })
    .await;
    let report = verify(std::slice::from_ref(&f.path), &ca);
    assert!(report.verified(), "{report:?}");
    assert_eq!(ids(&f.path), expect(&[1, 2]));
}

#[test]
fn without_an_svid_checkpoints_are_written_unsigned_and_verify_says_unproven() {
    let (f, ca) = (fixture(), ca("example.org CA"));
    let (mut w, _) = f.writer();
    w.chain = Chain::new(every(1), Box::new(Keys(Arc::new(Mutex::new(None)))));
    f.write(&mut w, 1..=1);
    let checkpoint = &chain_lines(&f.path, "checkpoint")[0];
    assert_eq!(checkpoint["unsigned"], "no X.509-SVID is held");
    assert!(checkpoint.get("jws").is_none());
    let report = verify(std::slice::from_ref(&f.path), &ca);
    assert!(
        report.tampered.is_none() && !report.verified(),
        "{report:?}"
    );
}
