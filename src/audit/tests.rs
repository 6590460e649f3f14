use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::writer::{FileSink, LogFile, Opener, Sink, Writer, open_append};
use super::*;

fn record(n: usize) -> Record {
    Record {
        time: now_rfc3339(),
        correlation_id: format!("c{n}"),
        request_id: None,
        caller: "spiffe://example.org/agent".into(),
        upstream: "demo".into(),
        upstream_spiffe_id: "spiffe://example.org/server".into(),
        session_id: None,
        method: Some("tools/call".into()),
        target_kind: Some("tool"),
        target: Some("echo".into()),
        decision: Outcome::Allow,
        reason: Reason::Permit,
        policy_ids: vec!["p".into()],
        policy_version: "v".into(),
        protocol_version: None,
        detail: None,
        shadow: None,
        user: None,
        trace_id: None,
        span_id: None,
    }
}

/// The correlation ids in the file, in order; panics on a torn or
/// unparsable line.
fn ids(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "torn last line: {text:?}"
    );
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a whole JSON line"))
        // The chain's own lines (genesis, checkpoints) are not records.
        .filter(|v| v.get("chain").is_none())
        .map(|v| v["correlation_id"].as_str().unwrap().to_owned())
        .collect()
}

fn expect(ids_: &[usize]) -> Vec<String> {
    ids_.iter().map(|n| format!("c{n}")).collect()
}

/// Bytes the next writes may still put on disk; `None`: no limit. Past
/// it a write fails with ENOSPC, after writing what fits (a torn write).
type Budget = Arc<Mutex<Option<usize>>>;

/// What the writer did to its file: `write` and `sync_data` calls, and
/// whether syncs fail.
#[derive(Default)]
struct Calls {
    writes: AtomicUsize,
    syncs: AtomicUsize,
    fail_sync: AtomicBool,
}

struct Flaky {
    file: File,
    budget: Budget,
    calls: Arc<Calls>,
}

impl LogFile for Flaky {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.calls.writes.fetch_add(1, Ordering::Relaxed);
        let mut budget = self.budget.lock().unwrap();
        let n = match *budget {
            None => buf.len(),
            Some(0) => return Err(io::Error::from_raw_os_error(28)),
            Some(left) => left.min(buf.len()),
        };
        let n = io::Write::write(&mut self.file, &buf[..n])?;
        if let Some(left) = budget.as_mut() {
            *left -= n;
        }
        Ok(n)
    }
    fn metadata(&self) -> io::Result<std::fs::Metadata> {
        self.file.metadata()
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(&self.file, buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.calls.syncs.fetch_add(1, Ordering::Relaxed);
        match self.calls.fail_sync.load(Ordering::Relaxed) {
            true => Err(io::Error::from_raw_os_error(5)),
            false => self.file.sync_data(),
        }
    }
}

/// An opener whose files obey `budget`, counting the opens in `opens`.
fn flaky(budget: &Budget, opens: &Arc<AtomicUsize>, calls: &Arc<Calls>) -> Opener {
    let budget = Arc::clone(budget);
    let opens = Arc::clone(opens);
    let calls = Arc::clone(calls);
    Box::new(move |path: &Path| {
        opens.fetch_add(1, Ordering::Relaxed);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(path)?;
        Ok(Box::new(Flaky {
            file,
            budget: Arc::clone(&budget),
            calls: Arc::clone(&calls),
        }) as Box<dyn LogFile>)
    })
}

struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
    budget: Budget,
    opens: Arc<AtomicUsize>,
    calls: Arc<Calls>,
    metrics: Metrics,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    Fixture {
        _dir: dir,
        path,
        budget: Arc::new(Mutex::new(None)),
        opens: Arc::new(AtomicUsize::new(0)),
        calls: Arc::default(),
        metrics: Metrics::with_caller_labels(false),
    }
}

impl Fixture {
    fn sink(&self) -> Sink {
        let open = flaky(&self.budget, &self.opens, &self.calls);
        Sink::File(FileSink::open(self.path.clone(), open).unwrap())
    }
    fn writer(&self) -> (Writer, Arc<Shared>) {
        let shared = Arc::new(Shared::default());
        let w = Writer::new(self.sink(), Arc::clone(&shared), self.metrics.clone());
        (w, shared)
    }
    fn limit(&self, bytes: Option<usize>) {
        *self.budget.lock().unwrap() = bytes;
    }
    fn write(&self, w: &mut Writer, range: std::ops::RangeInclusive<usize>) {
        for n in range {
            w.push(&record(n));
        }
        w.flush();
    }
}

#[test]
fn a_failed_write_leaves_no_torn_line_and_its_records_are_written_on_retry() {
    let f = fixture();
    let (mut w, shared) = f.writer();
    f.write(&mut w, 1..=1);
    assert_eq!(ids(&f.path), expect(&[1]));
    // Room for part of the next batch only: the write tears, then fails.
    f.limit(Some(40));
    f.write(&mut w, 2..=3);
    assert_eq!(
        ids(&f.path),
        expect(&[1]),
        "cut back to the last whole line"
    );
    assert!(shared.failing.load(Ordering::Relaxed));
    assert_eq!(f.metrics.audit_failing.get(), 1);
    assert_eq!(f.metrics.audit_write_errors.get(), 1);
    // Space again: the kept records are written in order, nothing lost.
    f.limit(None);
    f.write(&mut w, 4..=4);
    assert_eq!(ids(&f.path), expect(&[1, 2, 3, 4]));
    assert!(!shared.failing.load(Ordering::Relaxed));
    assert_eq!(f.metrics.audit_failing.get(), 0);
    assert_eq!(f.metrics.audit_records.get(), 4);
    assert_eq!(f.metrics.audit_records_lost.get(), 0);
}

#[test]
fn a_renamed_file_is_replaced_at_the_next_batch() {
    let f = fixture();
    let (mut w, _) = f.writer();
    f.write(&mut w, 1..=2);
    let rotated = f.path.with_extension("jsonl.1");
    std::fs::rename(&f.path, &rotated).unwrap();
    f.write(&mut w, 3..=4);
    assert_eq!(ids(&rotated), expect(&[1, 2]));
    assert_eq!(ids(&f.path), expect(&[3, 4]));
}

#[test]
fn a_deleted_file_is_recreated_at_the_next_batch() {
    let f = fixture();
    let (mut w, _) = f.writer();
    f.write(&mut w, 1..=1);
    std::fs::remove_file(&f.path).unwrap();
    f.write(&mut w, 2..=2);
    assert_eq!(ids(&f.path), expect(&[2]));
    assert_eq!(f.metrics.audit_records_lost.get(), 0);
}

#[test]
fn sighup_reopens_the_file_before_the_next_write() {
    let f = fixture();
    let (mut w, shared) = f.writer();
    f.write(&mut w, 1..=1);
    assert_eq!(f.opens.load(Ordering::Relaxed), 1);
    f.write(&mut w, 2..=2);
    assert_eq!(f.opens.load(Ordering::Relaxed), 1, "same file: no reopen");
    shared.reopen.store(true, Ordering::Relaxed);
    f.write(&mut w, 3..=3);
    assert_eq!(f.opens.load(Ordering::Relaxed), 2);
    assert_eq!(ids(&f.path), expect(&[1, 2, 3]));
}

#[test]
fn a_torn_tail_left_by_a_crash_is_cut_back_at_open() {
    let f = fixture();
    let whole = serde_json::to_string(&record(1)).unwrap();
    std::fs::write(&f.path, format!("{whole}\n{{\"time\":\"20")).unwrap();
    let (mut w, _) = f.writer();
    f.write(&mut w, 2..=2);
    assert_eq!(ids(&f.path), expect(&[1, 2]));
}

#[test]
fn a_file_without_a_record_boundary_is_kept_and_records_start_on_a_new_line() {
    let f = fixture();
    std::fs::write(&f.path, "not an audit record").unwrap();
    let (mut w, _) = f.writer();
    f.write(&mut w, 1..=1);
    let text = std::fs::read_to_string(&f.path).unwrap();
    let (first, rest) = text.split_once('\n').unwrap();
    assert_eq!(first, "not an audit record");
    let records: Vec<serde_json::Value> = rest
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("chain").is_none())
        .collect();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["correlation_id"], "c1");
}

#[test]
fn when_the_retry_buffer_is_full_further_records_are_counted_lost() {
    let f = fixture();
    let (mut w, shared) = f.writer();
    w.max_pending = 1;
    f.limit(Some(0));
    f.write(&mut w, 1..=1);
    assert!(shared.failing.load(Ordering::Relaxed));
    // One record is always kept; the next ones do not fit.
    f.write(&mut w, 2..=4);
    assert_eq!(f.metrics.audit_records_lost.get(), 3);
    f.limit(None);
    w.flush();
    assert_eq!(ids(&f.path), expect(&[1]));
    assert!(!shared.failing.load(Ordering::Relaxed));
}

#[test]
fn failures_and_lost_records_are_logged_once_not_per_record() {
    let f = fixture();
    let (mut w, _) = f.writer();
    w.max_pending = 1;
    f.limit(Some(0));
    for n in 1..=200 {
        f.write(&mut w, n..=n);
    }
    // A disk that flaps between full and not.
    for n in 201..=220 {
        f.limit(None);
        f.write(&mut w, n..=n);
        f.limit(Some(0));
        f.write(&mut w, n..=n);
    }
    assert_eq!(f.metrics.audit_records_lost.get(), 199 + 20);
    // One failure logged, and its one recovery; the flaps that follow
    // within 10 s are counted, not logged.
    assert_eq!(w.failure_logs, 2);
}

/// Waits (bounded) for a condition the writer thread makes true.
async fn until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuse_mode_stops_accepting_while_writes_fail_and_recovers_by_itself() {
    let f = fixture();
    let log = AuditLog::with_writer(f.sink(), AuditOnFailure::Refuse, f.metrics.clone(), |_| {});
    log.record(record(1)).await;
    until("the first record", || ids(&f.path).len() == 1).await;
    assert!(log.accepting());
    f.limit(Some(0));
    log.record(record(2)).await;
    until("the failure", || log.failing()).await;
    assert!(!log.accepting(), "refuse: calls are refused while failing");
    // No new record arrives: the writer retries on its own.
    f.limit(None);
    until("the recovery", || log.accepting()).await;
    assert_eq!(ids(&f.path), expect(&[1, 2]));
    assert_eq!(f.metrics.audit_records_lost.get(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continue_mode_keeps_accepting_and_counts_lost_records() {
    let f = fixture();
    let log = AuditLog::with_writer(f.sink(), AuditOnFailure::Continue, f.metrics.clone(), |w| {
        w.max_pending = 1
    });
    f.limit(Some(0));
    log.record(record(1)).await;
    until("the failure", || log.failing()).await;
    for n in 2..=5 {
        log.record(record(n)).await;
    }
    until("four lost records", || {
        f.metrics.audit_records_lost.get() == 4
    })
    .await;
    assert!(log.failing());
    assert!(log.accepting(), "continue: calls are served while failing");
    f.limit(None);
    until("the recovery", || !log.failing()).await;
    // The one record kept for the retry is written; the others are counted.
    assert_eq!(ids(&f.path), expect(&[1]));
    assert_eq!(f.metrics.audit_records.get(), 1);
}

#[test]
fn the_real_opener_appends_to_an_existing_file() {
    let f = fixture();
    let whole = serde_json::to_string(&record(1)).unwrap();
    std::fs::write(&f.path, format!("{whole}\n")).unwrap();
    let sink = Sink::File(FileSink::open(f.path.clone(), Box::new(open_append)).unwrap());
    let mut w = Writer::new(sink, Arc::new(Shared::default()), f.metrics.clone());
    f.write(&mut w, 2..=2);
    assert_eq!(ids(&f.path), expect(&[1, 2]));
}

#[test]
fn stdout_redirected_to_a_file_is_cut_back_like_a_file() {
    let f = fixture();
    let open = flaky(&f.budget, &f.opens, &f.calls);
    let sink = Sink::Stdout(super::writer::Lines::new(open(&f.path).unwrap()));
    let mut w = Writer::new(sink, Arc::new(Shared::default()), f.metrics.clone());
    f.write(&mut w, 1..=1);
    f.limit(Some(10));
    f.write(&mut w, 2..=2);
    assert_eq!(ids(&f.path), expect(&[1]));
    f.limit(None);
    w.flush();
    assert_eq!(ids(&f.path), expect(&[1, 2]));
    // The real standard output opens (its own descriptor, unbuffered).
    let mut out = Sink::stdout().unwrap();
    out.write_lines(b"", false).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_writer_writes_at_once_a_busy_one_in_one_batch_and_all_at_shutdown() {
    let f = fixture();
    // An interval no test outlasts: only shutdown ends the second batch.
    let log = AuditLog::with_writer(f.sink(), AuditOnFailure::Refuse, f.metrics.clone(), |w| {
        w.group_commit = Duration::from_secs(3600)
    });
    log.record(record(1)).await;
    until("the first record, written at once", || {
        ids(&f.path).len() == 1
    })
    .await;
    for n in 2..=40 {
        log.record(record(n)).await;
    }
    assert_eq!(f.metrics.audit_queued.get(), 39, "held for the next batch");
    assert_eq!(ids(&f.path), expect(&[1]));
    drop(log);
    until("the held batch, written at shutdown", || {
        f.metrics.audit_queued.get() == 0
    })
    .await;
    assert_eq!(ids(&f.path), expect(&(1..=40).collect::<Vec<_>>()));
    assert_eq!(
        f.calls.writes.load(Ordering::Relaxed),
        2,
        "one write per batch"
    );
    assert_eq!(f.metrics.audit_records.get(), 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_record_is_written_when_the_interval_ends_without_more_records() {
    let f = fixture();
    let log = AuditLog::with_writer(f.sink(), AuditOnFailure::Refuse, f.metrics.clone(), |w| {
        w.group_commit = Duration::from_millis(50)
    });
    log.record(record(1)).await;
    log.record(record(2)).await;
    until("both records", || ids(&f.path).len() == 2).await;
    assert_eq!(f.metrics.audit_queued.get(), 0);
    drop(log);
}

#[test]
fn fsync_syncs_every_batch_and_a_failed_sync_is_a_failed_write() {
    let f = fixture();
    let (mut w, shared) = f.writer();
    w.fsync = true;
    f.write(&mut w, 1..=2);
    assert_eq!(f.calls.syncs.load(Ordering::Relaxed), 1);
    f.calls.fail_sync.store(true, Ordering::Relaxed);
    f.write(&mut w, 3..=3);
    // Not known to be on the disk: cut back, kept, retried.
    assert_eq!(ids(&f.path), expect(&[1, 2]));
    assert!(shared.failing.load(Ordering::Relaxed));
    f.calls.fail_sync.store(false, Ordering::Relaxed);
    w.flush();
    assert_eq!(ids(&f.path), expect(&[1, 2, 3]));
    assert_eq!(f.calls.syncs.load(Ordering::Relaxed), 3);
    assert!(!shared.failing.load(Ordering::Relaxed));
    assert_eq!(f.metrics.audit_records.get(), 3);
    // Without the option nothing is synced.
    w.fsync = false;
    f.write(&mut w, 4..=4);
    assert_eq!(f.calls.syncs.load(Ordering::Relaxed), 3);
}

#[test]
fn times_are_rfc3339_with_milliseconds_across_second_boundaries() {
    let reference = |ms: i64| {
        let format = time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
        );
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
            .unwrap()
            .format(&format)
            .unwrap()
    };
    // Same second (cached), the next one, back again, and far apart.
    for ms in [
        1_764_806_400_000,
        1_764_806_400_007,
        1_764_806_400_999,
        1_764_806_401_000,
        1_764_806_400_050,
        0,
        951_782_400_123,
        4_102_444_799_999,
    ] {
        assert_eq!(super::rfc3339_ms(ms), reference(ms), "{ms}");
    }
    assert_eq!(
        super::rfc3339_ms(1_764_806_401_020),
        "2025-12-04T00:00:01.020Z"
    );
}

#[test]
fn correlation_ids_are_32_hex_digits_prefix_then_counter() {
    let ids = CorrelationIds::new();
    let (a, b) = (ids.next(), ids.next());
    for id in [&a, &b] {
        assert_eq!(id.len(), 32);
        assert!(
            id.bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)),
            "{id}"
        );
    }
    assert_eq!(a[..16], b[..16], "one prefix per process");
    assert_eq!(&a[16..], "0000000000000000");
    assert_eq!(&b[16..], "0000000000000001");
    assert_eq!(a[..16], format!("{:016x}", ids.prefix));
}

#[path = "chain_tests.rs"]
mod chain;
