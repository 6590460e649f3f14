//! The end of an audit file at open: a torn last line (a crash during a
//! write) cut back to the last whole line, and the hash of the last line,
//! which a new chain segment names as its predecessor.
//!
//! Must never cut a whole line, or read more than [`MAX_TORN_TAIL`] bytes.

use std::io;
use std::path::Path;

use tracing::warn;

use super::writer::LogFile;

/// How far back a torn tail is looked for at open.
const MAX_TORN_TAIL: u64 = 1 << 20;

/// A file that does not end in a newline ends in a torn line (a crash
/// during a write): cut it back to the last complete line. Without a
/// newline in the last [`MAX_TORN_TAIL`] bytes this is not a torn record
/// but something else: left as it is, ended with a newline so that the
/// records that follow are whole lines.
pub(super) fn repair_tail(file: &mut dyn LogFile, len: u64, path: &Path) -> io::Result<()> {
    let mut end = len;
    let mut chunk = [0u8; 4096];
    while end > 0 && len - end < MAX_TORN_TAIL {
        let start = end.saturating_sub(chunk.len() as u64);
        let buf = &mut chunk[..(end - start) as usize];
        file.read_exact_at(buf, start)?;
        if end == len && buf.last() == Some(&b'\n') {
            return Ok(());
        }
        if let Some(at) = buf.iter().rposition(|b| *b == b'\n') {
            let cut = start + at as u64 + 1;
            warn!(path = %path.display(), removed_bytes = len - cut, "the audit file ended in a torn line; cut back to the last complete line");
            return file.set_len(cut);
        }
        end = start;
    }
    if len == 0 {
        return Ok(());
    }
    warn!(path = %path.display(), "the audit file does not end in a newline and has no record boundary near its end; left as it is, a newline appended");
    match file.write(b"\n")? {
        1 => Ok(()),
        _ => Err(io::ErrorKind::WriteZero.into()),
    }
}

/// The hash of the last line of a file that ends in a newline (after
/// [`repair_tail`]), if one starts within [`MAX_TORN_TAIL`] of its end: the
/// previous segment a new one names.
pub(super) fn last_line_hash(file: &dyn LogFile) -> io::Result<Option<String>> {
    let len = file.metadata()?.len();
    let start = len.saturating_sub(MAX_TORN_TAIL);
    let mut tail = vec![0u8; (len - start) as usize];
    file.read_exact_at(&mut tail, start)?;
    if tail.pop() != Some(b'\n') {
        return Ok(None);
    }
    let line = match tail.iter().rposition(|b| *b == b'\n') {
        Some(at) => &tail[at + 1..],
        None if start == 0 => &tail[..],
        None => return Ok(None),
    };
    Ok((!line.is_empty()).then(|| super::chain::line_hash(line)))
}
