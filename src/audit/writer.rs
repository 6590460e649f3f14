//! The audit writer: one blocking thread that turns queued records into
//! whole JSON lines in the sink, keeps what it could not write and retries.
//!
//! - Group commit: the writer writes at most once per [`GROUP_COMMIT`]. A
//!   record that finds the last write older than that is written at once
//!   (an idle gateway adds no delay); under load the writer sleeps out the
//!   rest of the interval, takes in everything that arrived meanwhile and
//!   writes it with one `write`: one wake-up per batch, not per record, and
//!   no record is held longer than the interval (or a write's duration).
//! - With `audit.fsync` every batch is also `fdatasync`ed before it counts
//!   as written; a failed sync is a failed write (cut back and retried).
//! - A batch is written with plain `write` calls on an unbuffered file; if
//!   the write fails part way, the file is cut back to its length before
//!   the batch, so the file never ends in a torn line.
//! - Records whose write failed stay in memory (up to [`MAX_PENDING_BYTES`])
//!   and are written, in order, when a retry succeeds; a record that does
//!   not fit is counted in `mcp_gateway_audit_records_lost_total`.
//! - While writes fail, the shared `failing` flag is set: the request path
//!   and `/readyz` read it (one atomic load), the writer alone writes it.
//! - Before each batch the path is `stat`ed and compared with the open
//!   file's device and inode: a renamed or deleted file is replaced by a
//!   new one at the path (logrotate without `copytruncate`), as is the file
//!   after SIGHUP.
//! - Each batch is chained as it is written ([`super::chain`]): `seq` and
//!   `prev` added to every line, a genesis first in a newly opened file, a
//!   signed checkpoint when one is due. While written lines wait for a
//!   checkpoint, the writer wakes when it is due even without records, and
//!   at shutdown it seals what it writes last.
//!
//! It must never leave a partial line in the file, lose a record without
//! counting it, or log once per lost record.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::{self, error::TryRecvError};
use tracing::{error, info, warn};

use super::chain::{Chain, CheckpointPolicy};
use super::checkpoint::NoKeys;
pub(crate) use super::lines::Lines;
use super::tail::{last_line_hash, repair_tail};
use super::{Record, Shared};
use crate::metrics::Metrics;

/// Records kept for a retry while writes fail; beyond this they are lost
/// (and counted).
pub(super) const MAX_PENDING_BYTES: usize = 8 << 20;
/// A healthy batch is written once it holds this much.
const BATCH_BYTES: usize = 256 << 10;
/// The shortest time between two healthy writes: how long a record may
/// wait for the records that follow it.
pub(crate) const GROUP_COMMIT: Duration = Duration::from_millis(10);
/// While failing: how often queued records are taken in (so the request
/// path never waits on a full queue) and the first retry delay.
const POLL: Duration = Duration::from_millis(50);
/// While failing: the longest wait between two write attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// While failing: at most one "still failing" log line this often.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// An open audit file as the writer uses it; tests substitute one that
/// fails on demand.
pub(crate) trait LogFile: Send {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize>;
    /// The file's metadata (length, device, inode, kind), from the open
    /// descriptor.
    fn metadata(&self) -> io::Result<std::fs::Metadata>;
    fn set_len(&mut self, len: u64) -> io::Result<()>;
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// `fdatasync`: what was written is on the disk.
    fn sync_data(&self) -> io::Result<()>;
}

impl LogFile for File {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Write::write(self, buf)
    }
    fn metadata(&self) -> io::Result<std::fs::Metadata> {
        File::metadata(self)
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        File::sync_data(self)
    }
}

/// Opens (creating) the audit file for appending.
pub(crate) type Opener = Box<dyn Fn(&Path) -> io::Result<Box<dyn LogFile>> + Send>;

/// The real opener: append, create, and read (to repair a torn tail).
pub(crate) fn open_append(path: &Path) -> io::Result<Box<dyn LogFile>> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(path)?;
    Ok(Box::new(file))
}

/// Where lines go.
pub(crate) enum Sink {
    /// Standard output, written unbuffered through its own descriptor (a
    /// buffered `Stdout` would keep the unwritten part of a failed write
    /// and repeat it). A pipe cannot be cut back; a redirect to a regular
    /// file is, like `File`.
    Stdout(Lines),
    File(FileSink),
}

impl Sink {
    /// Standard output as a sink.
    pub(crate) fn stdout() -> io::Result<Sink> {
        use std::os::fd::AsFd;
        let fd = io::stdout().as_fd().try_clone_to_owned()?;
        Ok(Sink::Stdout(Lines::new(Box::new(File::from(fd)))))
    }

    /// Before a batch: reopens the file when SIGHUP asked for it
    /// (`reopen`) or its path names another file. `Some(last)` when the
    /// batch goes to a file opened since the last batch (a new chain
    /// segment): `last` is the hash of the line it ends with, if any.
    pub(crate) fn prepare(&mut self, reopen: bool) -> io::Result<Option<Option<String>>> {
        match self {
            Sink::Stdout(_) => Ok(None),
            Sink::File(file) => file.prepare(reopen),
        }
    }

    /// Writes `lines` (whole lines) or fails having left no partial line
    /// in a regular file. `sync`: a regular file is synced before this
    /// returns.
    pub(crate) fn write_lines(&mut self, lines: &[u8], sync: bool) -> io::Result<()> {
        match self {
            Sink::Stdout(out) => out.write_whole(lines, sync),
            Sink::File(file) => file.write_lines(lines, sync),
        }
    }
}

/// The audit file at a path, reopened when the path stops naming it.
pub(crate) struct FileSink {
    path: PathBuf,
    open: Opener,
    file: Option<Lines>,
    /// (device, inode) of the open file.
    id: (u64, u64),
    /// Set when a file was opened: the hash of its last line, if any.
    opened: Option<Option<String>>,
}

impl FileSink {
    /// Opens the file now, so that a bad path fails the start.
    pub(crate) fn open(path: PathBuf, open: Opener) -> io::Result<FileSink> {
        let mut sink = FileSink {
            path,
            open,
            file: None,
            id: (0, 0),
            opened: None,
        };
        sink.reopen()?;
        Ok(sink)
    }

    fn reopen(&mut self) -> io::Result<()> {
        self.file = None;
        let mut file = (self.open)(&self.path)?;
        let meta = file.metadata()?;
        let mut last = None;
        if meta.is_file() {
            repair_tail(&mut *file, meta.len(), &self.path)?;
            last = last_line_hash(&*file)?;
        }
        self.opened = Some(last);
        self.id = (meta.dev(), meta.ino());
        self.file = Some(Lines::new(file));
        Ok(())
    }

    /// Whether the path still names the open file (one `stat`).
    fn path_moved(&self) -> bool {
        match std::fs::metadata(&self.path) {
            Ok(meta) => (meta.dev(), meta.ino()) != self.id,
            // Deleted (or unreadable): write to a new file at the path.
            Err(_) => true,
        }
    }

    fn prepare(&mut self, reopen: bool) -> io::Result<Option<Option<String>>> {
        if reopen || self.file.is_none() || self.path_moved() {
            if self.file.is_some() {
                info!(path = %self.path.display(), sighup = reopen, "reopening the audit file");
            }
            self.reopen()?;
        }
        Ok(self.opened.take())
    }

    fn write_lines(&mut self, lines: &[u8], sync: bool) -> io::Result<()> {
        match self.file.as_mut() {
            Some(file) => file.write_whole(lines, sync),
            None => Err(io::Error::other("audit file not open")),
        }
    }
}

/// Serialised records waiting to be written, oldest first.
#[derive(Default)]
struct Pending {
    lines: Vec<u8>,
    records: u64,
}

/// The writer's state across batches.
pub(crate) struct Writer {
    pub(crate) sink: Sink,
    pub(crate) shared: Arc<Shared>,
    pub(crate) metrics: Metrics,
    /// Bytes kept for a retry while failing.
    pub(crate) max_pending: usize,
    /// The shortest time between two healthy writes ([`GROUP_COMMIT`]).
    pub(crate) group_commit: Duration,
    /// `audit.fsync`: sync every batch before counting it written.
    pub(crate) fsync: bool,
    /// When the last write was tried.
    last_write: Option<Instant>,
    pending: Pending,
    failure: Option<Failure>,
    /// When a failure was last logged: a disk that flaps between full and
    /// not logs at most one failure (and its recovery) per [`LOG_EVERY`].
    last_failure_log: Option<Instant>,
    /// Failure and recovery lines logged (what the rate limit bounds).
    pub(crate) failure_logs: u64,
    /// The hash chain and its checkpoints.
    pub(crate) chain: Chain,
    /// The policy version of the first record of the pending batch (what a
    /// genesis names).
    policy_version: String,
}

/// One stretch of failing writes.
struct Failure {
    since: Instant,
    next_try: Instant,
    backoff: Duration,
    last_log: Instant,
    /// Records lost since the last log line.
    lost_unlogged: u64,
    lost: u64,
    /// Whether its start was logged (then its end is too).
    logged: bool,
}

impl Writer {
    pub(crate) fn new(sink: Sink, shared: Arc<Shared>, metrics: Metrics) -> Writer {
        Writer {
            sink,
            shared,
            metrics,
            max_pending: MAX_PENDING_BYTES,
            group_commit: GROUP_COMMIT,
            fsync: false,
            last_write: None,
            pending: Pending::default(),
            failure: None,
            last_failure_log: None,
            failure_logs: 0,
            chain: Chain::new(CheckpointPolicy::default(), Box::new(NoKeys)),
            policy_version: String::new(),
        }
    }

    /// Writes records in arrival order until every sender is gone.
    pub(crate) fn run(mut self, mut rx: mpsc::Receiver<Record>) {
        let _ = self.shared.writer.set(std::thread::current());
        loop {
            let open = if self.failure.is_some() {
                self.wait_while_failing(&mut rx)
            } else {
                self.receive(&mut rx)
            };
            let open = open && self.take_queued(&mut rx) && self.gather(&mut rx);
            if !open {
                break;
            }
            if self.due() {
                self.flush();
            }
        }
        // What is held, and the checkpoint that seals it, in one write.
        self.write(true);
        self.lose_pending();
    }

    /// Waits for the next record and takes it in; while written records
    /// wait for a checkpoint, only until it is due, looking for records
    /// every [`GROUP_COMMIT`] meanwhile (so none waits longer than while
    /// idle). No tokio timer: the writer outlives the runtime's time driver
    /// at shutdown. Returns false once every sender is gone.
    fn receive(&mut self, rx: &mut mpsc::Receiver<Record>) -> bool {
        let Some(deadline) = self.chain.checkpoint_deadline() else {
            return match rx.blocking_recv() {
                Some(record) => {
                    self.push(&record);
                    true
                }
                None => false,
            };
        };
        loop {
            match rx.try_recv() {
                Ok(record) => {
                    self.push(&record);
                    return true;
                }
                Err(TryRecvError::Disconnected) => return false,
                Err(TryRecvError::Empty) => {}
            }
            let now = Instant::now();
            if now >= deadline {
                // The checkpoint is due: `due` says so to the loop.
                return true;
            }
            // Woken early when the last sender is gone (shutdown).
            std::thread::park_timeout((deadline - now).min(GROUP_COMMIT));
        }
    }

    /// While failing: takes queued records in every [`POLL`] until the
    /// next retry is due. Returns false once every sender is gone.
    fn wait_while_failing(&mut self, rx: &mut mpsc::Receiver<Record>) -> bool {
        loop {
            if !self.take_queued(rx) {
                return false;
            }
            let Some(next) = self.failure.as_ref().map(|f| f.next_try) else {
                return true;
            };
            let now = Instant::now();
            if now >= next {
                return true;
            }
            std::thread::sleep(POLL.min(next - now));
        }
    }

    /// Group commit: while healthy, sleeps out what is left of
    /// [`Writer::group_commit`] since the last write, then takes in what
    /// arrived meanwhile. Returns false once every sender is gone.
    fn gather(&mut self, rx: &mut mpsc::Receiver<Record>) -> bool {
        let Some(last) = self.last_write.filter(|_| self.failure.is_none()) else {
            return true;
        };
        if self.pending.lines.len() >= BATCH_BYTES {
            return true;
        }
        let until = last + self.group_commit;
        // Woken early only when the last sender is gone (shutdown).
        while !rx.is_closed() {
            let now = Instant::now();
            if now >= until {
                break;
            }
            std::thread::park_timeout(until - now);
        }
        self.take_queued(rx)
    }

    /// Takes queued records without waiting, up to a batch while healthy.
    /// Returns false once every sender is gone.
    fn take_queued(&mut self, rx: &mut mpsc::Receiver<Record>) -> bool {
        loop {
            if self.failure.is_none() && self.pending.lines.len() >= BATCH_BYTES {
                return true;
            }
            match rx.try_recv() {
                Ok(record) => self.push(&record),
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => return false,
            }
        }
    }

    /// Whether a write should be tried now: records wait, or a
    /// checkpoint is due.
    fn due(&self) -> bool {
        let checkpoint = self
            .chain
            .checkpoint_deadline()
            .is_some_and(|at| Instant::now() >= at);
        (!self.pending.lines.is_empty() || checkpoint)
            && self
                .failure
                .as_ref()
                .is_none_or(|f| Instant::now() >= f.next_try)
    }

    /// Serialises a record into the pending lines, or counts it lost when
    /// the writer is failing and the retry buffer is full.
    pub(crate) fn push(&mut self, record: &Record) {
        if self.pending.records == 0 && self.policy_version != record.policy_version {
            self.policy_version.clone_from(&record.policy_version);
        }
        let before = self.pending.lines.len();
        let ok = serde_json::to_writer(&mut self.pending.lines, record).is_ok();
        self.pending.lines.push(b'\n');
        let over = self.failure.is_some()
            && self.pending.lines.len() > self.max_pending
            && self.pending.records > 0;
        if !ok || over {
            self.pending.lines.truncate(before);
            self.lose(1);
            return;
        }
        self.pending.records += 1;
    }

    /// Tries to write everything pending (chained, with a checkpoint if
    /// one is due).
    pub(crate) fn flush(&mut self) {
        self.write(false);
    }

    /// As [`Writer::flush`]; `seal`: a checkpoint after the last record
    /// whatever the interval (at shutdown).
    fn write(&mut self, seal: bool) {
        let checkpoint = self
            .chain
            .checkpoint_deadline()
            .is_some_and(|at| seal || Instant::now() >= at);
        if self.pending.lines.is_empty() && !checkpoint {
            return;
        }
        let reopen = self.shared.reopen.swap(false, Ordering::Relaxed);
        self.last_write = Some(Instant::now());
        let written = self.sink.prepare(reopen).and_then(|opened| {
            if let Some(last) = opened {
                self.chain.new_segment(last);
            }
            let draft = self
                .chain
                .draft(&self.pending.lines, &self.policy_version, seal);
            self.sink
                .write_lines(&draft.lines, self.fsync)
                .map(|()| draft)
        });
        match written {
            Ok(draft) => {
                self.chain.commit(draft);
                self.metrics.audit_records.inc_by(self.pending.records);
                self.metrics.audit_queued.sub(self.pending.records as i64);
                self.pending = Pending::default();
                self.recovered();
            }
            Err(e) => self.failed(&e),
        }
    }

    fn failed(&mut self, e: &io::Error) {
        self.metrics.audit_write_errors.inc();
        let now = Instant::now();
        let pending = self.pending.records;
        match &mut self.failure {
            None => {
                let logged = self
                    .last_failure_log
                    .is_none_or(|at| now.duration_since(at) >= LOG_EVERY);
                if logged {
                    error!(error = %e, pending_records = pending, "writing the audit log failed; records are kept and retried");
                    self.last_failure_log = Some(now);
                    self.failure_logs += 1;
                }
                self.failure = Some(Failure {
                    since: now,
                    next_try: now + POLL,
                    backoff: POLL,
                    last_log: now,
                    lost_unlogged: 0,
                    lost: 0,
                    logged,
                });
                self.shared.failing.store(true, Ordering::Relaxed);
                self.metrics.audit_failing.set(1);
            }
            Some(f) => {
                f.backoff = (f.backoff * 2).min(MAX_BACKOFF);
                f.next_try = now + f.backoff;
                if now.duration_since(f.last_log) >= LOG_EVERY {
                    error!(error = %e, pending_records = pending, lost_records = f.lost_unlogged, failing_seconds = now.duration_since(f.since).as_secs(), "audit log writes still failing");
                    f.last_log = now;
                    f.lost_unlogged = 0;
                    self.failure_logs += 1;
                }
            }
        }
    }

    fn recovered(&mut self) {
        if let Some(f) = self.failure.take() {
            self.shared.failing.store(false, Ordering::Relaxed);
            self.metrics.audit_failing.set(0);
            if !f.logged {
                return;
            }
            self.failure_logs += 1;
            warn!(
                failed_for_ms = f.since.elapsed().as_millis() as u64,
                lost_records = f.lost,
                "audit log writes succeed again"
            );
        }
    }

    fn lose(&mut self, n: u64) {
        self.metrics.audit_records_lost.inc_by(n);
        self.metrics.audit_queued.sub(n as i64);
        match &mut self.failure {
            Some(f) => {
                f.lost += n;
                f.lost_unlogged += n;
            }
            None => error!(records = n, "audit records could not be serialised; lost"),
        }
    }

    /// At exit: whatever could not be written is lost, and said so.
    fn lose_pending(&mut self) {
        let n = self.pending.records;
        if n > 0 {
            self.metrics.audit_records_lost.inc_by(n);
            self.metrics.audit_queued.sub(n as i64);
            error!(
                records = n,
                "the audit writer stopped with records it could not write; lost"
            );
        }
    }
}

impl Drop for Writer {
    /// A writer that has stopped (or panicked) audits nothing more: in
    /// `refuse` mode every call is refused from now on.
    fn drop(&mut self) {
        self.shared.failing.store(true, Ordering::Relaxed);
    }
}
