//! Whole lines to the audit file: a batch is written completely (and,
//! when asked, synced), or a regular file is cut back to its length before
//! the batch, so a failed write never leaves a torn line.

use std::io;

use super::writer::LogFile;

/// An open file written in whole batches of lines.
pub(crate) struct Lines {
    file: Box<dyn LogFile>,
    /// Set when a failed batch could not be cut back: the length of the
    /// good data, to restore before anything else is written.
    cut_to: Option<u64>,
}

impl Lines {
    pub(crate) fn new(file: Box<dyn LogFile>) -> Lines {
        Lines { file, cut_to: None }
    }

    /// Writes all of `lines` (and with `sync`, syncs a regular file), or
    /// fails with a regular file cut back to its length before the batch
    /// (now, or before the next write if cutting fails too).
    pub(super) fn write_whole(&mut self, lines: &[u8], sync: bool) -> io::Result<()> {
        let meta = self.file.metadata()?;
        let regular = meta.is_file();
        let mut base = meta.len();
        if let Some(good) = self.cut_to.filter(|_| regular) {
            if base > good {
                self.file.set_len(good)?;
            }
            base = good.min(base);
            self.cut_to = None;
        }
        let written = self.write_all(lines).and_then(|()| match sync && regular {
            true => self.file.sync_data(),
            false => Ok(()),
        });
        if written.is_err() && regular && self.file.set_len(base).is_err() {
            self.cut_to = Some(base);
        }
        written
    }

    fn write_all(&mut self, lines: &[u8]) -> io::Result<()> {
        let mut written = 0;
        while written < lines.len() {
            match self.file.write(&lines[written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
