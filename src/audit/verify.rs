//! `audit verify`: walks audit files in order, checks the hash chain line
//! by line and every signed checkpoint against a trust bundle, and says
//! exactly what is wrong and where (file and line): a changed, deleted,
//! inserted or reordered line, a line that is not a chained audit record, a
//! checkpoint whose certificate does not chain to the bundle or names
//! another SPIFFE ID than its segment. Lines after the last signed
//! checkpoint are reported as unproven, not as tampered: a crash leaves
//! such a tail too.
//!
//! It reads the files and nothing else, and stops at the first thing that
//! is wrong. Must never: call a line proven that no verified signature
//! covers, or report tampering it cannot point at.

use std::collections::VecDeque;
use std::fmt;
use std::io::BufRead;

use serde::Deserialize;

use super::chain::{CHECKPOINT, GENESIS, line_hash, signed_checkpoint_line};
use super::checkpoint::{self, Bundle, CheckpointError};

/// How many lines after a break are read to tell a reordering from an
/// insertion or a deletion.
const LOOKAHEAD: usize = 10_000;

/// A line of an input file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: String,
    /// 1-based.
    pub line: u64,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// What is wrong at a location.
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    #[error("not a chained audit line: {0}")]
    Garbage(String),
    #[error("line {changed} was changed: it hashes to {actual}, the next line names {named}")]
    Changed {
        changed: Location,
        actual: String,
        named: String,
    },
    #[error(
        "the line itself was changed (its seq is {found}, {expected} expected, and it links to the line before)"
    )]
    ChangedSeq { found: u64, expected: u64 },
    #[error("records deleted: seq {from} to {to} are missing before this line")]
    Deleted { from: u64, to: u64 },
    #[error("a line was inserted here (seq {found}); the chain goes on without it")]
    Inserted { found: u64 },
    #[error("reordered: seq {found} stands where seq {expected} belongs")]
    Reordered { found: u64, expected: u64 },
    #[error(
        "the genesis names {named} as the previous segment's last line, which hashes to {actual}: lines at the end of the previous segment were deleted or changed"
    )]
    SegmentLink { named: String, actual: String },
    #[error("checkpoint: {0}")]
    Checkpoint(CheckpointError),
    #[error("checkpoint signed by {signer}, but the segment's gateway is {segment}")]
    OtherIdentity { signer: String, segment: String },
    #[error("checkpoint: its signed payload disagrees with the line ({0})")]
    Payload(String),
}

/// Why verification could not run (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("cannot read {file}: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
}

/// The outcome of a verification.
#[derive(Debug, Default)]
pub struct Report {
    /// The first thing wrong, where it was found (verification stopped).
    pub tampered: Option<(Location, Problem)>,
    /// Parts the chain holds together but no verified signature covers.
    pub unproven: Vec<String>,
    pub lines: u64,
    pub segments: u64,
    pub signed_checkpoints: u64,
    /// The distinct leaf certificates (DER) that signed, in order.
    pub signers: Vec<Vec<u8>>,
    /// The SPIFFE IDs of the segments, in order.
    pub gateways: Vec<String>,
}

impl Report {
    pub fn verified(&self) -> bool {
        self.tampered.is_none() && self.unproven.is_empty()
    }
}

/// The chain fields of a line (the rest of the record is hashed, not read).
#[derive(Deserialize)]
struct Fields {
    seq: Option<u64>,
    #[serde(default)]
    prev: Option<String>,
    #[serde(default)]
    chain: Option<String>,
    #[serde(default)]
    gateway: Option<String>,
    #[serde(default)]
    jws: Option<String>,
    #[serde(default)]
    unsigned: Option<String>,
    #[serde(default)]
    records: Option<u64>,
}

/// A line as the walk needs it.
struct Line {
    at: Location,
    hash: String,
    fields: Fields,
    raw: Vec<u8>,
}

/// The segment being walked.
struct Segment {
    next_seq: u64,
    last: String,
    last_at: Location,
    gateway: Option<String>,
    /// Lines since the segment's last checkpoint (genesis included), as
    /// the checkpoint's `records` counts them; unknown in a segment taken
    /// up without its genesis until its first checkpoint.
    since_checkpoint: Option<u64>,
}

/// Lines no verified checkpoint covers yet, from where.
struct Unsealed {
    from: Location,
    count: u64,
}

/// Verifies `files`, in order, as one log split by rotation.
pub fn verify_files(files: &[std::path::PathBuf], bundle: &Bundle) -> Result<Report, VerifyError> {
    let mut walk = Walk::new(bundle);
    for path in files {
        let name = path.display().to_string();
        let read_err = |source| VerifyError::Read {
            file: name.clone(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read_err)?;
        let mut lines = Lines::new(name.clone(), std::io::BufReader::new(file));
        while let Some(raw) = lines.next_line().map_err(read_err)? {
            if walk.line(raw, &mut lines).map_err(read_err)?.is_break() {
                return Ok(walk.report);
            }
        }
    }
    Ok(walk.finish())
}

/// Verifies lines already in memory: `(file name, contents)` in order.
pub fn verify_texts(files: &[(&str, &[u8])], bundle: &Bundle) -> Report {
    let mut walk = Walk::new(bundle);
    for (name, text) in files {
        let mut lines = Lines::new((*name).to_owned(), *text);
        // Reading from memory cannot fail.
        while let Ok(Some(raw)) = lines.next_line() {
            if matches!(
                walk.line(raw, &mut lines),
                Ok(std::ops::ControlFlow::Break(()))
            ) {
                return walk.report;
            }
        }
    }
    walk.finish()
}

/// One file's lines, numbered, with lookahead.
struct Lines<R> {
    name: String,
    reader: R,
    number: u64,
    ahead: VecDeque<(Location, Vec<u8>)>,
}

impl<R: BufRead> Lines<R> {
    fn new(name: String, reader: R) -> Lines<R> {
        Lines {
            name,
            reader,
            number: 0,
            ahead: VecDeque::new(),
        }
    }

    fn read(&mut self) -> std::io::Result<Option<(Location, Vec<u8>)>> {
        let mut buf = Vec::new();
        if self.reader.read_until(b'\n', &mut buf)? == 0 {
            return Ok(None);
        }
        if buf.last() == Some(&b'\n') {
            buf.pop();
        }
        self.number += 1;
        let at = Location {
            file: self.name.clone(),
            line: self.number,
        };
        Ok(Some((at, buf)))
    }

    fn next_line(&mut self) -> std::io::Result<Option<(Location, Vec<u8>)>> {
        match self.ahead.pop_front() {
            Some(line) => Ok(Some(line)),
            None => self.read(),
        }
    }

    /// Up to [`LOOKAHEAD`] of the lines that follow, parsed where they parse.
    fn peek(&mut self) -> std::io::Result<Vec<(u64, Option<String>, String)>> {
        while self.ahead.len() < LOOKAHEAD {
            match self.read()? {
                Some(line) => self.ahead.push_back(line),
                None => break,
            }
        }
        Ok(self
            .ahead
            .iter()
            .filter_map(|(_, raw)| {
                let fields: Fields = serde_json::from_slice(raw).ok()?;
                Some((fields.seq?, fields.prev, line_hash(raw)))
            })
            .collect())
    }
}

/// The walk over all lines of all files.
struct Walk<'a> {
    bundle: &'a Bundle,
    segment: Option<Segment>,
    unsealed: Option<Unsealed>,
    report: Report,
}

type Flow = std::ops::ControlFlow<()>;

impl<'a> Walk<'a> {
    fn new(bundle: &'a Bundle) -> Walk<'a> {
        Walk {
            bundle,
            segment: None,
            unsealed: None,
            report: Report::default(),
        }
    }

    fn stop(&mut self, at: Location, problem: Problem) -> Flow {
        self.report.tampered = Some((at, problem));
        Flow::Break(())
    }

    fn line<R: BufRead>(
        &mut self,
        (at, raw): (Location, Vec<u8>),
        lines: &mut Lines<R>,
    ) -> std::io::Result<Flow> {
        self.report.lines += 1;
        let fields = match parse(&raw) {
            Ok(fields) => fields,
            Err(why) => return Ok(self.stop(at, Problem::Garbage(why))),
        };
        let line = Line {
            at,
            hash: line_hash(&raw),
            fields,
            raw,
        };
        if line.fields.chain.as_deref() == Some(GENESIS) {
            return Ok(self.genesis(line));
        }
        if self.segment.is_none() && self.headless(&line).is_break() {
            return Ok(Flow::Break(()));
        }
        let Some(segment) = &self.segment else {
            return Ok(Flow::Break(()));
        };
        let seq = line.fields.seq.unwrap_or_default();
        if seq != segment.next_seq || line.fields.prev.as_deref() != Some(&segment.last) {
            let ahead = lines.peek()?;
            let problem = classify(segment, &line, &ahead);
            return Ok(self.stop(line.at, problem));
        }
        if line.fields.chain.as_deref() == Some(CHECKPOINT) {
            if let Flow::Break(()) = self.checkpoint(&line) {
                return Ok(Flow::Break(()));
            }
        } else {
            self.unsealed_line(&line.at);
        }
        self.advance(line);
        Ok(Flow::Continue(()))
    }

    fn advance(&mut self, line: Line) {
        if let Some(segment) = &mut self.segment {
            segment.next_seq += 1;
            segment.last = line.hash;
            segment.last_at = line.at;
            segment.since_checkpoint = if line.fields.chain.as_deref() == Some(CHECKPOINT) {
                Some(0)
            } else {
                segment.since_checkpoint.map(|n| n + 1)
            };
        }
    }

    fn unsealed_line(&mut self, at: &Location) {
        match &mut self.unsealed {
            Some(u) => u.count += 1,
            None => {
                self.unsealed = Some(Unsealed {
                    from: at.clone(),
                    count: 1,
                })
            }
        }
    }

    /// A genesis opens a segment, linked to the one before when it names
    /// that one's last hash.
    fn genesis(&mut self, line: Line) -> Flow {
        if line.fields.seq != Some(0) {
            return self.stop(
                line.at,
                Problem::Garbage("a genesis line must have seq 0".into()),
            );
        }
        match (&self.segment, &line.fields.prev) {
            (Some(before), Some(named)) if *named != before.last => {
                let problem = Problem::SegmentLink {
                    named: named.clone(),
                    actual: before.last.clone(),
                };
                return self.stop(line.at, problem);
            }
            (Some(before), None) => {
                self.report.unproven.push(format!(
                    "{}: a segment that does not name the one before it (a fresh file, or lines between them removed)",
                    line.at
                ));
                if let Some(u) = self.unsealed.take() {
                    self.report.unproven.push(format!(
                        "{} line(s) from {} to {} are sealed by no signed checkpoint, and the next segment does not name them",
                        u.count, u.from, before.last_at
                    ));
                }
            }
            (None, Some(named)) => self.report.unproven.push(format!(
                "{}: the segment links to an earlier one (ending in {named}) that was not given",
                line.at
            )),
            _ => {}
        }
        self.report.segments += 1;
        self.unsealed_line(&line.at);
        self.segment = Some(Segment {
            next_seq: 0,
            last: String::new(),
            last_at: line.at.clone(),
            gateway: line.fields.gateway.clone(),
            since_checkpoint: Some(0),
        });
        if let Some(id) = &line.fields.gateway {
            self.report.gateways.push(id.clone());
        }
        self.advance(line);
        Flow::Continue(())
    }

    /// A first line without its genesis (the files before were not
    /// given): its segment is taken up where the line says it stands.
    fn headless(&mut self, line: &Line) -> Flow {
        let (Some(seq), Some(prev)) = (line.fields.seq, line.fields.prev.clone()) else {
            return self.stop(line.at.clone(), Problem::Garbage("no `prev`".into()));
        };
        self.report.unproven.push(format!(
            "{}: the log starts at seq {seq} without its genesis: the lines before were not given",
            line.at
        ));
        self.report.segments += 1;
        self.segment = Some(Segment {
            next_seq: seq,
            last: prev,
            last_at: line.at.clone(),
            gateway: None,
            since_checkpoint: None,
        });
        Flow::Continue(())
    }

    /// The text a signed checkpoint line must have: its payload's, with
    /// the lines counted since the last checkpoint (or, in a segment taken
    /// up without its genesis, the count the line gives).
    fn expected_checkpoint_line(
        &self,
        line: &Line,
        payload: &checkpoint::Payload,
        jws: &str,
    ) -> Vec<u8> {
        let counted = self.segment.as_ref().and_then(|s| s.since_checkpoint);
        let records = counted.or(line.fields.records).unwrap_or_default();
        signed_checkpoint_line(payload, records, jws)
    }

    /// A checkpoint in its place: its signature, chain and identity.
    fn checkpoint(&mut self, line: &Line) -> Flow {
        let Some(jws) = &line.fields.jws else {
            let reason = line.fields.unsigned.as_deref().unwrap_or("no reason given");
            self.report
                .unproven
                .push(format!("{}: unsigned checkpoint ({reason})", line.at));
            return Flow::Continue(());
        };
        let verified = match checkpoint::verify(jws, self.bundle) {
            Ok(verified) => verified,
            Err(e) => return self.stop(line.at.clone(), Problem::Checkpoint(e)),
        };
        let p = &verified.payload;
        let mismatch = if Some(p.seq) != line.fields.seq {
            Some(format!("signed seq {}", p.seq))
        } else if Some(&p.prev) != line.fields.prev.as_ref() {
            Some(format!("signed prev {}", p.prev))
        } else if p.spiffe_id != verified.spiffe_id {
            Some(format!(
                "signed spiffe_id {} for a certificate of {}",
                p.spiffe_id, verified.spiffe_id
            ))
        } else if line.fields.gateway.as_deref() != Some(verified.spiffe_id.as_str()) {
            Some(format!("gateway {:?}", line.fields.gateway))
        } else if line.raw != self.expected_checkpoint_line(line, p, jws) {
            Some("the line is not the one its signature seals: a member was changed, added or removed, or `records` is not the count of lines it seals".to_owned())
        } else {
            None
        };
        if let Some(what) = mismatch {
            return self.stop(line.at.clone(), Problem::Payload(what));
        }
        let Some(segment) = &mut self.segment else {
            return Flow::Continue(());
        };
        match &segment.gateway {
            Some(id) if *id != verified.spiffe_id => {
                let problem = Problem::OtherIdentity {
                    signer: verified.spiffe_id,
                    segment: id.clone(),
                };
                return self.stop(line.at.clone(), problem);
            }
            Some(_) => {}
            None => {
                self.report.gateways.push(verified.spiffe_id.clone());
                segment.gateway = Some(verified.spiffe_id);
            }
        }
        self.unsealed = None;
        self.report.signed_checkpoints += 1;
        if self.report.signers.last() != Some(&verified.leaf) {
            self.report.signers.push(verified.leaf);
        }
        Flow::Continue(())
    }

    fn finish(mut self) -> Report {
        if self.report.lines == 0 {
            self.report
                .unproven
                .push("the files hold no audit line".to_owned());
        }
        if let (Some(u), Some(segment)) = (self.unsealed.take(), &self.segment) {
            self.report.unproven.push(format!(
                "{} line(s) from {} to {} come after the last signed checkpoint: not proven (a crash leaves such a tail, and so does a truncation)",
                u.count, u.from, segment.last_at
            ));
        }
        self.report
    }
}

/// The chain fields of a line, or why it has none.
fn parse(raw: &[u8]) -> Result<Fields, String> {
    let fields: Fields =
        serde_json::from_slice(raw).map_err(|e| format!("not a JSON object ({e})"))?;
    if fields.seq.is_none() {
        return Err("no `seq`: not written by a chaining gateway".to_owned());
    }
    Ok(fields)
}

/// What a break in the chain at `line` is, from the lines that follow.
fn classify(segment: &Segment, line: &Line, ahead: &[(u64, Option<String>, String)]) -> Problem {
    let (expected, found) = (segment.next_seq, line.fields.seq.unwrap_or_default());
    let prev = line.fields.prev.clone().unwrap_or_default();
    if found == expected {
        return Problem::Changed {
            changed: segment.last_at.clone(),
            actual: segment.last.clone(),
            named: prev,
        };
    }
    let referenced = ahead
        .iter()
        .any(|(_, p, _)| p.as_deref() == Some(&line.hash));
    let expected_later = ahead.iter().any(|(s, _, _)| *s == expected);
    if referenced && expected_later {
        return Problem::Reordered { found, expected };
    }
    let next_continues = ahead
        .first()
        .is_some_and(|(s, p, _)| *s == expected && p.as_deref() == Some(&segment.last));
    if next_continues || (!referenced && expected_later) {
        return Problem::Inserted { found };
    }
    if prev == segment.last {
        return Problem::ChangedSeq { found, expected };
    }
    if found > expected {
        return Problem::Deleted {
            from: expected,
            to: found - 1,
        };
    }
    Problem::Reordered { found, expected }
}

#[cfg(test)]
#[path = "verify_tests.rs"]
pub(crate) mod tests;
