//! Incremental `text/event-stream` parser (WHATWG HTML, "server-sent
//! events"), for streamed MCP responses.
//!
//! The proxy feeds body chunks as they arrive and gets back each event with
//! its fields and its exact bytes, so it can decide on the JSON-RPC message in
//! `data` and forward `raw` untouched, without buffering the stream. Every
//! byte of the stream belongs to exactly one event's `raw` (or to the
//! unterminated tail returned by [`SseParser::finish`]), including comments
//! and blocks with no data, which browsers would drop but a proxy must pass on.
//!
//! The result never depends on how the stream was cut into chunks: a line is
//! read only once its end is certain, which for a line ending in CR means
//! waiting for the next byte (it may be the LF of a CRLF). Invalid UTF-8 is
//! an error (the spec would replace it, which the JSON-RPC parser would then
//! not see), and so is an event larger than the limit, so a peer cannot make
//! the gateway buffer without bound.

use bytes::{Bytes, BytesMut};

/// One event: the fields of one block of lines ended by a blank line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event` field; `None` when absent or empty (the type "message").
    pub event: Option<String>,
    /// The `data` lines joined with `\n`.
    pub data: String,
    /// Whether there was any `data` line: the spec dispatches only those
    /// events; the others (keep-alive comments, `id`/`retry`-only blocks) are
    /// still forwarded.
    pub has_data: bool,
    /// The `id` field of this block, if it had one (without NUL).
    pub id: Option<String>,
    /// The `retry` field of this block, if it had a valid one.
    pub retry: Option<u64>,
    /// The exact bytes of the block, through its terminating blank line.
    pub raw: Bytes,
}

#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum SseError {
    #[error("SSE event larger than {limit} bytes")]
    EventTooLarge { limit: usize },
    #[error("SSE stream is not valid UTF-8")]
    InvalidUtf8,
}

/// Parser state for one stream.
#[derive(Debug)]
pub struct SseParser {
    /// Bytes of the current, unfinished block (finished ones are split off).
    buf: BytesMut,
    /// Start of the first line of `buf` not yet read.
    line_start: usize,
    /// Where to resume looking for a line end (no CR or LF before it).
    search_from: usize,
    max_event_bytes: usize,
    /// Fields of the current block so far.
    block: Block,
    /// No line read yet: a leading byte order mark is skipped.
    at_stream_start: bool,
    /// The spec's "last event ID", which carries over between events.
    last_event_id: String,
    /// After an error the stream is unusable; every call repeats it.
    failed: Option<SseError>,
}

#[derive(Debug, Default)]
struct Block {
    event: Option<String>,
    data: String,
    has_data: bool,
    id: Option<String>,
    retry: Option<u64>,
}

/// How a line ends, once that is known.
enum LineEnd {
    /// The line spans `buf[line_start..end]`, then `len` terminator bytes.
    At { end: usize, len: usize },
    /// No complete line yet.
    Pending,
}

impl SseParser {
    /// `max_event_bytes` bounds one event, terminator included.
    pub fn new(max_event_bytes: usize) -> Self {
        SseParser {
            buf: BytesMut::new(),
            line_start: 0,
            search_from: 0,
            max_event_bytes,
            block: Block::default(),
            at_stream_start: true,
            last_event_id: String::new(),
            failed: None,
        }
    }

    /// Feeds the next chunk; appends every event it completes to `events`.
    /// Events completed before an error in the same chunk are still
    /// appended, so the output is the same however the stream is cut.
    pub fn push(&mut self, chunk: &[u8], events: &mut Vec<SseEvent>) -> Result<(), SseError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        self.buf.extend_from_slice(chunk);
        let result = self.read_lines(events);
        self.fail_on(result)
    }

    /// Ends the stream: a last line ending in CR is now known to be complete.
    /// Returns the bytes after the last complete event (an unterminated
    /// event, which the spec discards; the caller decides whether to forward
    /// them).
    pub fn finish(mut self, events: &mut Vec<SseEvent>) -> Result<Bytes, SseError> {
        if let Some(error) = self.failed.take() {
            return Err(error);
        }
        if self.buf.last() == Some(&b'\r') {
            let end = self.buf.len() - 1;
            let result = self.take_line(end, 1, events);
            self.fail_on(result)?;
        }
        Ok(self.buf.split().freeze())
    }

    /// The spec's last event ID after the events returned so far (what a
    /// client would send as `Last-Event-ID`).
    pub fn last_event_id(&self) -> &str {
        &self.last_event_id
    }

    fn fail_on(&mut self, result: Result<(), SseError>) -> Result<(), SseError> {
        if let Err(error) = &result {
            self.failed = Some(error.clone());
        }
        result
    }

    fn read_lines(&mut self, events: &mut Vec<SseEvent>) -> Result<(), SseError> {
        while let LineEnd::At { end, len } = self.next_line_end() {
            self.take_line(end, len, events)?;
        }
        if self.buf.len() > self.max_event_bytes {
            return Err(self.too_large());
        }
        Ok(())
    }

    fn next_line_end(&mut self) -> LineEnd {
        let from = self.search_from.max(self.line_start);
        let Some(offset) = self.buf[from..]
            .iter()
            .position(|&b| b == b'\n' || b == b'\r')
        else {
            self.search_from = self.buf.len();
            return LineEnd::Pending;
        };
        let end = from + offset;
        let len = match (self.buf[end], self.buf.get(end + 1)) {
            (b'\n', _) => 1,
            (_, Some(b'\n')) => 2,
            (_, Some(_)) => 1,
            // A CR at the end of what we have: CRLF or not, we cannot tell.
            (_, None) => {
                self.search_from = end;
                return LineEnd::Pending;
            }
        };
        LineEnd::At { end, len }
    }

    /// Reads the line `buf[line_start..end]`, followed by `len` terminator
    /// bytes; a blank line completes the block.
    fn take_line(
        &mut self,
        end: usize,
        len: usize,
        events: &mut Vec<SseEvent>,
    ) -> Result<(), SseError> {
        // Checked before the line's content, so that a block both too large
        // and not UTF-8 fails the same way however the stream was cut.
        if end + len > self.max_event_bytes {
            return Err(self.too_large());
        }
        let start = self.line_start;
        self.line_start = end + len;
        self.search_from = self.line_start;
        let mut line =
            std::str::from_utf8(&self.buf[start..end]).map_err(|_| SseError::InvalidUtf8)?;
        if std::mem::take(&mut self.at_stream_start) {
            line = line.strip_prefix('\u{feff}').unwrap_or(line);
        }
        if line.is_empty() {
            return self.dispatch(events);
        }
        self.block.field(line);
        Ok(())
    }

    fn dispatch(&mut self, events: &mut Vec<SseEvent>) -> Result<(), SseError> {
        let raw = self.buf.split_to(self.line_start).freeze();
        self.line_start = 0;
        self.search_from = 0;
        if raw.len() > self.max_event_bytes {
            return Err(self.too_large());
        }
        let mut block = std::mem::take(&mut self.block);
        if let Some(id) = &block.id {
            self.last_event_id.clone_from(id);
        }
        if block.has_data {
            block.data.pop(); // the LF after the last data line
        }
        events.push(SseEvent {
            event: block.event,
            data: block.data,
            has_data: block.has_data,
            id: block.id,
            retry: block.retry,
            raw,
        });
        Ok(())
    }

    fn too_large(&self) -> SseError {
        SseError::EventTooLarge {
            limit: self.max_event_bytes,
        }
    }
}

impl Block {
    /// One non-blank line: a comment or a field, per the spec's rules.
    fn field(&mut self, line: &str) {
        let (name, value) = match line.split_once(':') {
            Some(("", _)) => return, // a comment
            Some((name, value)) => (name, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match name {
            "event" => self.event = (!value.is_empty()).then(|| value.to_owned()),
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
                self.has_data = true;
            }
            "id" if !value.contains('\0') => self.id = Some(value.to_owned()),
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                // Too many digits to be a delay: ignored, like any bad value.
                if let Ok(retry) = value.parse() {
                    self.retry = Some(retry);
                }
            }
            _ => {}
        }
    }
}
