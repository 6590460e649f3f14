//! The hash chain of the audit log, as the writer builds it: every line
//! carries its position (`seq`) and the hash of the line before it
//! (`prev`); a segment (one process's writing to one file) opens with a
//! genesis line and is sealed, every few records or seconds, by a
//! checkpoint line signed with the gateway's current X.509-SVID
//! ([`super::checkpoint`]). The format is described in `docs/audit.md`.
//!
//! Everything here runs on the writer thread, over lines already
//! serialised there: the request path pays nothing for the chain. The chain
//! moves on only when a batch was written ([`Chain::commit`]): a batch that
//! failed is chained again, from the same place, when it is retried.
//!
//! Must never: chain a line it did not write, sign on the request path, or
//! call a checkpoint signed when it is not.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::checkpoint::{self, KeySource, Payload};

/// `chain` of a genesis line.
pub(crate) const GENESIS: &str = "genesis";
/// `chain` of a checkpoint line.
pub(crate) const CHECKPOINT: &str = "checkpoint";

/// The hash of one line (its bytes without the newline): `sha256:<hex>`.
pub(crate) fn line_hash(line: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, line);
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for byte in digest.as_ref() {
        // Writing to a String cannot fail.
        let _ = write!(out, "{byte:02x}");
    }
    out
}

/// When checkpoints are written (`audit.checkpoint_every_records`,
/// `audit.checkpoint_interval_seconds`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointPolicy {
    pub every_records: u64,
    pub interval: Duration,
}

impl Default for CheckpointPolicy {
    fn default() -> CheckpointPolicy {
        CheckpointPolicy {
            every_records: 1000,
            interval: Duration::from_secs(5),
        }
    }
}

/// The end of what is in the file: the next `seq` and the last line's hash.
#[derive(Debug, Clone, Default)]
struct Tip {
    next_seq: u64,
    last: String,
    /// Records (and genesis) written since the last checkpoint.
    uncovered: u64,
}

#[derive(Serialize)]
struct GenesisLine<'a> {
    seq: u64,
    prev: Option<&'a str>,
    chain: &'static str,
    time: String,
    gateway: Option<&'a str>,
    policy_version: &'a str,
}

#[derive(Serialize)]
struct CheckpointLine<'a> {
    seq: u64,
    prev: &'a str,
    chain: &'static str,
    time: &'a str,
    gateway: Option<&'a str>,
    /// Lines since the previous checkpoint that this one seals.
    records: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    jws: Option<&'a str>,
    /// Why the checkpoint is not signed (then it proves nothing).
    #[serde(skip_serializing_if = "Option::is_none")]
    unsigned: Option<&'a str>,
}

/// The exact text (without its newline) of the line a signed checkpoint
/// is written as: every member is the signed payload's, but for `records`.
/// `audit verify` holds a checkpoint line to it, so nothing of the line is
/// outside what the chain or the signature covers.
pub(crate) fn signed_checkpoint_line(payload: &Payload, records: u64, jws: &str) -> Vec<u8> {
    let line = CheckpointLine {
        seq: payload.seq,
        prev: &payload.prev,
        chain: CHECKPOINT,
        time: &payload.time,
        gateway: Some(&payload.spiffe_id),
        records,
        jws: Some(jws),
        unsigned: None,
    };
    serde_json::to_vec(&line).unwrap_or_default()
}

/// The writer's chain: where the file's segment stands and when the next
/// checkpoint is due.
pub(crate) struct Chain {
    /// `None` until the segment's genesis is written.
    tip: Option<Tip>,
    /// The last hash of the segment before this one, for the genesis.
    previous: Option<String>,
    policy: CheckpointPolicy,
    last_checkpoint: Instant,
    keys: Box<dyn KeySource>,
    /// Whether the last checkpoint could not be signed (logged once per
    /// stretch, not per checkpoint).
    unsigned_logged: bool,
}

/// A batch as it will be written, and the tip it leaves if it is.
pub(crate) struct Draft {
    pub(crate) lines: Vec<u8>,
    tip: Tip,
    checkpointed: bool,
}

impl Chain {
    pub(crate) fn new(policy: CheckpointPolicy, keys: Box<dyn KeySource>) -> Chain {
        Chain {
            tip: None,
            previous: None,
            policy,
            last_checkpoint: Instant::now(),
            keys,
            unsigned_logged: false,
        }
    }

    /// The file was replaced (rotation, SIGHUP, a failed open): the next
    /// batch opens a new segment naming this one's last hash, or `found`,
    /// the last line of the file when this process has written none.
    pub(crate) fn new_segment(&mut self, found: Option<String>) {
        if let Some(tip) = self.tip.take() {
            self.previous = Some(tip.last);
        } else if self.previous.is_none() {
            self.previous = found;
        }
    }

    /// Whether records are written that no checkpoint covers yet.
    pub(crate) fn uncovered(&self) -> bool {
        self.tip.as_ref().is_some_and(|t| t.uncovered > 0)
    }

    /// When the next checkpoint is due by time, if records wait for one.
    pub(crate) fn checkpoint_deadline(&self) -> Option<Instant> {
        self.uncovered()
            .then(|| self.last_checkpoint + self.policy.interval)
    }

    /// The lines to write: a genesis if the segment has none yet, every
    /// body of `bodies` (serialised records, one per line) chained, and a
    /// checkpoint when one is due (or `seal`: at shutdown).
    pub(crate) fn draft(&mut self, bodies: &[u8], policy_version: &str, seal: bool) -> Draft {
        let mut out = Vec::with_capacity(bodies.len() + bodies.len() / 4 + 256);
        let mut tip = match &self.tip {
            Some(tip) => tip.clone(),
            None => self.genesis(&mut out, policy_version),
        };
        for body in bodies.split(|b| *b == b'\n').filter(|b| !b.is_empty()) {
            let start = out.len();
            let _ = write!(
                Cursor(&mut out),
                "{{\"seq\":{},\"prev\":\"{}\",",
                tip.next_seq,
                tip.last
            );
            // A serialised record is a JSON object: `{` then its fields.
            out.extend_from_slice(body.get(1..).unwrap_or_default());
            tip.advance(&out[start..]);
            out.push(b'\n');
        }
        let due = tip.uncovered >= self.policy.every_records
            || self.last_checkpoint.elapsed() >= self.policy.interval
            || seal;
        let checkpointed = due && tip.uncovered > 0;
        if checkpointed {
            self.checkpoint(&mut out, &mut tip);
        }
        Draft {
            lines: out,
            tip,
            checkpointed,
        }
    }

    /// The draft was written: the chain moves on.
    pub(crate) fn commit(&mut self, draft: Draft) {
        if draft.checkpointed {
            self.last_checkpoint = Instant::now();
        }
        self.previous = None;
        self.tip = Some(draft.tip);
    }

    fn genesis(&self, out: &mut Vec<u8>, policy_version: &str) -> Tip {
        let gateway = self.keys.spiffe_id();
        let line = GenesisLine {
            seq: 0,
            prev: self.previous.as_deref(),
            chain: GENESIS,
            time: super::now_rfc3339(),
            gateway: gateway.as_deref(),
            policy_version,
        };
        let mut tip = Tip::default();
        push_line(out, &line, &mut tip);
        tip
    }

    fn checkpoint(&mut self, out: &mut Vec<u8>, tip: &mut Tip) {
        let unix_ms = crate::clock::unix_ms();
        let time = super::rfc3339_ms(unix_ms);
        let signed = self
            .keys
            .signing_key()
            .map_err(|e| e.to_string())
            .and_then(|key| {
                let payload = Payload {
                    seq: tip.next_seq,
                    prev: tip.last.clone(),
                    spiffe_id: key.spiffe_id.clone(),
                    time: time.clone(),
                    iat: unix_ms.div_euclid(1000),
                };
                checkpoint::sign(&key, &payload)
                    .map(|jws| (jws, key.spiffe_id))
                    .map_err(|e| e.to_string())
            });
        let (jws, gateway, unsigned) = match &signed {
            Ok((jws, id)) => (Some(jws.as_str()), Some(id.clone()), None),
            Err(reason) => (None, self.keys.spiffe_id(), Some(reason.as_str())),
        };
        self.log_signing(unsigned);
        let line = CheckpointLine {
            seq: tip.next_seq,
            prev: &tip.last,
            chain: CHECKPOINT,
            time: &time,
            gateway: gateway.as_deref(),
            records: tip.uncovered,
            jws,
            unsigned,
        };
        let mut next = tip.clone();
        push_line(out, &line, &mut next);
        next.uncovered = 0;
        *tip = next;
    }

    fn log_signing(&mut self, unsigned: Option<&str>) {
        match (unsigned, self.unsigned_logged) {
            (Some(reason), false) => {
                tracing::error!(
                    reason,
                    "an audit checkpoint could not be signed; written unsigned (the records it covers stay unproven until a signed checkpoint follows)"
                );
                self.unsigned_logged = true;
            }
            (None, true) => {
                tracing::warn!("audit checkpoints are signed again");
                self.unsigned_logged = false;
            }
            _ => {}
        }
    }
}

impl Tip {
    /// `line` (without its newline) was appended.
    fn advance(&mut self, line: &[u8]) {
        self.last = line_hash(line);
        self.next_seq += 1;
        self.uncovered += 1;
    }
}

/// Serialises `line` into `out` as one chained line.
fn push_line(out: &mut Vec<u8>, line: &impl Serialize, tip: &mut Tip) {
    let start = out.len();
    // The chain's own structs hold strings and numbers only: serialising
    // them cannot fail.
    let _ = serde_json::to_writer(&mut *out, line);
    tip.advance(&out[start..]);
    out.push(b'\n');
}

/// `fmt::Write` into a byte buffer.
struct Cursor<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Cursor<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}
