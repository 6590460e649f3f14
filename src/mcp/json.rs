//! A strict, single-pass JSON (RFC 8259) scanner over text already checked to
//! be UTF-8.
//!
//! It exists so that the gateway decides on exactly what an upstream will
//! read: it refuses, instead of resolving, everything on which JSON parsers
//! disagree. Duplicate object keys (compared after unescaping, at every
//! depth), unpaired UTF-16 surrogate escapes, nesting deeper than
//! [`MAX_DEPTH`], and anything outside the RFC grammar (comments, trailing
//! commas, leading zeros, `NaN`, control characters in strings, a byte order
//! mark) are errors. It never builds a tree: callers walk objects with a
//! callback per member and keep only what they need, as borrowed slices of the
//! input; strings are copied only when they contain escapes.
//!
//! It must never panic on any input and never recurse deeper than
//! [`MAX_DEPTH`] levels.

use std::borrow::Cow;

use super::jsonrpc::{MAX_DEPTH, ParseError};

/// Objects with more members than this are checked for duplicate keys by
/// sorting once at the closing brace, instead of comparing each new key with
/// every earlier one (which would be quadratic in the member count).
const LINEAR_KEY_CHECK: usize = 16;

/// serde_json, with its `raw_value` or `arbitrary_precision` feature, reads an
/// object whose key is `$serde_json::private::RawValue` (or `::Number`) as the
/// JSON held in its string value: a Rust upstream would see other arguments
/// than the gateway. Such keys are refused.
const SERDE_PRIVATE_KEY: &str = "$serde_json::private::";

/// Whether an object key is one the strict parser refuses: serde_json reads
/// keys under this prefix specially.
pub fn is_reserved_key(key: &str) -> bool {
    key.starts_with(SERDE_PRIVATE_KEY)
}

/// Bytes that end a run of plain string content: the closing quote, a
/// backslash, and the control characters JSON forbids unescaped.
const STRING_STOP: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = true;
        b += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

/// The JSON type of a value the scanner walked over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum JsonType {
    Object,
    Array,
    String,
    /// `integer` is true when the number has neither a fraction nor an exponent.
    Number {
        integer: bool,
    },
    Bool,
    Null,
}

/// A cursor over the input plus the keys of the objects currently open.
pub(super) struct Scanner<'a> {
    src: &'a str,
    pos: usize,
    /// Keys of every object on the current path, outermost first; each open
    /// object owns the tail starting where it began.
    keys: Vec<Cow<'a, str>>,
}

impl<'a> Scanner<'a> {
    pub(super) fn new(src: &'a str) -> Self {
        Scanner {
            src,
            pos: 0,
            // Enough for the members on the path of a usual message: one
            // allocation per body.
            keys: Vec::with_capacity(32),
        }
    }

    /// Byte offset of the cursor.
    pub(super) fn pos(&self) -> usize {
        self.pos
    }

    /// True once only whitespace is left.
    pub(super) fn at_end(&mut self) -> bool {
        self.skip_ws();
        self.pos >= self.src.len()
    }

    /// The next byte after whitespace, without consuming it.
    pub(super) fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.src.as_bytes().get(self.pos).copied()
    }

    /// The input from `start` to the cursor.
    pub(super) fn since(&self, start: usize) -> Result<&'a str, ParseError> {
        self.src
            .get(start..self.pos)
            .ok_or_else(|| self.syntax("value does not end on a character boundary"))
    }

    pub(super) fn syntax(&self, what: &'static str) -> ParseError {
        ParseError::Syntax {
            offset: self.pos,
            what,
        }
    }

    fn skip_ws(&mut self) {
        let bytes = self.src.as_bytes();
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = bytes.get(self.pos) {
            self.pos += 1;
        }
    }

    /// Walks any value, checking it fully, and reports its type.
    pub(super) fn value(&mut self, depth: usize) -> Result<JsonType, ParseError> {
        match self.peek() {
            Some(b'{') => {
                self.object(depth, |s, _, d| s.value(d).map(drop))?;
                Ok(JsonType::Object)
            }
            Some(b'[') => {
                self.array(depth, |s, d| s.value(d).map(drop))?;
                Ok(JsonType::Array)
            }
            Some(b'"') => {
                self.skip_string()?;
                Ok(JsonType::String)
            }
            Some(b'-' | b'0'..=b'9') => Ok(JsonType::Number {
                integer: self.number()?,
            }),
            Some(b't') => self.literal("true", JsonType::Bool),
            Some(b'f') => self.literal("false", JsonType::Bool),
            Some(b'n') => self.literal("null", JsonType::Null),
            Some(_) => Err(self.syntax("expected a JSON value")),
            None => Err(self.syntax("unexpected end of input")),
        }
    }

    /// Walks any value and returns its exact text with its type.
    pub(super) fn raw_value(&mut self, depth: usize) -> Result<(&'a str, JsonType), ParseError> {
        self.skip_ws();
        let start = self.pos;
        let ty = self.value(depth)?;
        Ok((self.since(start)?, ty))
    }

    /// Walks the object at the cursor, which `depth` containers enclose.
    /// `member` is called with each key (unescaped) and the depth to pass
    /// down, and must consume exactly the member's value.
    pub(super) fn object<F>(&mut self, depth: usize, mut member: F) -> Result<(), ParseError>
    where
        F: FnMut(&mut Self, &str, usize) -> Result<(), ParseError>,
    {
        let depth = self.enter(depth, b'{')?;
        let open_at = self.pos - 1;
        let base = self.keys.len();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            if self.peek() != Some(b'"') {
                return Err(self.syntax("expected a string object key"));
            }
            let key_at = self.pos;
            let key = self.string()?;
            if is_reserved_key(&key) {
                return Err(ParseError::ReservedKey {
                    offset: key_at,
                    key: shown(&key),
                });
            }
            self.check_new_key(base, &key, key_at)?;
            self.expect(b':', "expected ':' after an object key")?;
            member(self, &key, depth)?;
            self.keys.push(key);
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    break;
                }
                _ => return Err(self.syntax("expected ',' or '}' in an object")),
            }
        }
        let result = self.check_all_keys(base, open_at);
        self.keys.truncate(base);
        result
    }

    /// Walks the array at the cursor; `element` must consume one element.
    pub(super) fn array<F>(&mut self, depth: usize, mut element: F) -> Result<(), ParseError>
    where
        F: FnMut(&mut Self, usize) -> Result<(), ParseError>,
    {
        let depth = self.enter(depth, b'[')?;
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            element(self, depth)?;
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err(self.syntax("expected ',' or ']' in an array")),
            }
        }
    }

    /// Consumes the opening bracket of a container, enforcing the depth limit
    /// before any recursion happens.
    fn enter(&mut self, depth: usize, open: u8) -> Result<usize, ParseError> {
        let depth = depth + 1;
        if depth > MAX_DEPTH {
            return Err(ParseError::TooDeep { offset: self.pos });
        }
        self.expect(open, "expected a container")?;
        Ok(depth)
    }

    fn expect(&mut self, byte: u8, what: &'static str) -> Result<(), ParseError> {
        if self.peek() != Some(byte) {
            return Err(self.syntax(what));
        }
        self.pos += 1;
        Ok(())
    }

    /// Small objects: compare the new key with the earlier ones right away.
    fn check_new_key(&self, base: usize, key: &str, at: usize) -> Result<(), ParseError> {
        let earlier = &self.keys[base..];
        if earlier.len() < LINEAR_KEY_CHECK && earlier.iter().any(|k| k == key) {
            return Err(duplicate(key, at));
        }
        Ok(())
    }

    /// Large objects: sort their keys once and look for neighbours.
    fn check_all_keys(&mut self, base: usize, open_at: usize) -> Result<(), ParseError> {
        let keys = &mut self.keys[base..];
        if keys.len() <= LINEAR_KEY_CHECK {
            return Ok(());
        }
        keys.sort_unstable();
        match keys.windows(2).find(|pair| pair[0] == pair[1]) {
            Some(pair) => Err(duplicate(&pair[0], open_at)),
            None => Ok(()),
        }
    }

    fn literal(&mut self, word: &'static str, ty: JsonType) -> Result<JsonType, ParseError> {
        let rest = self.src.as_bytes().get(self.pos..).unwrap_or_default();
        if !rest.starts_with(word.as_bytes()) {
            return Err(self.syntax("invalid literal"));
        }
        self.pos += word.len();
        Ok(ty)
    }

    /// Checks a number against the RFC grammar; true if it is an integer.
    /// The cursor must be on its first character.
    fn number(&mut self) -> Result<bool, ParseError> {
        if self.byte() == Some(b'-') {
            self.pos += 1;
        }
        match self.byte() {
            Some(b'0') => {
                self.pos += 1;
                if matches!(self.byte(), Some(b'0'..=b'9')) {
                    return Err(self.syntax("leading zero in a number"));
                }
            }
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(self.syntax("expected a digit")),
        }
        let mut integer = true;
        if self.byte() == Some(b'.') {
            self.pos += 1;
            self.require_digits()?;
            integer = false;
        }
        if let Some(b'e' | b'E') = self.byte() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.byte() {
                self.pos += 1;
            }
            self.require_digits()?;
            integer = false;
        }
        Ok(integer)
    }

    fn byte(&self) -> Option<u8> {
        self.src.as_bytes().get(self.pos).copied()
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.byte() {
            self.pos += 1;
        }
    }

    fn require_digits(&mut self) -> Result<(), ParseError> {
        if !matches!(self.byte(), Some(b'0'..=b'9')) {
            return Err(self.syntax("expected a digit"));
        }
        self.digits();
        Ok(())
    }

    /// Reads the string at the cursor (on its opening quote), unescaped;
    /// borrowed unless it holds escapes.
    pub(super) fn string(&mut self) -> Result<Cow<'a, str>, ParseError> {
        self.scan_string(true)
            .map(|s| s.unwrap_or(Cow::Borrowed("")))
    }

    /// Checks the string at the cursor without keeping it.
    fn skip_string(&mut self) -> Result<(), ParseError> {
        self.scan_string(false).map(drop)
    }

    /// One loop for both reading and checking a string, so the two can never
    /// disagree; `keep` says whether to build the unescaped value.
    /// The cursor must be on the opening quote (callers have peeked).
    fn scan_string(&mut self, keep: bool) -> Result<Option<Cow<'a, str>>, ParseError> {
        if self.byte() != Some(b'"') {
            return Err(self.syntax("expected a string"));
        }
        self.pos += 1;
        let bytes = self.src.as_bytes();
        let mut run = self.pos;
        let mut owned: Option<String> = None;
        loop {
            self.pos += plain_run(bytes.get(self.pos..).unwrap_or_default());
            match bytes.get(self.pos) {
                Some(b'"') => {
                    let tail = self.slice(run, self.pos)?;
                    self.pos += 1;
                    if !keep {
                        return Ok(None);
                    }
                    return Ok(Some(match owned {
                        None => Cow::Borrowed(tail),
                        Some(mut s) => {
                            s.push_str(tail);
                            Cow::Owned(s)
                        }
                    }));
                }
                Some(b'\\') => {
                    let escape_at = self.pos;
                    let c = self.escape()?;
                    if keep {
                        let s = owned.get_or_insert_with(String::new);
                        s.push_str(self.slice(run, escape_at)?);
                        s.push(c);
                    }
                    run = self.pos;
                }
                Some(_) => return Err(self.syntax("control character in a string")),
                None => return Err(self.syntax("unterminated string")),
            }
        }
    }

    fn slice(&self, start: usize, end: usize) -> Result<&'a str, ParseError> {
        self.src
            .get(start..end)
            .ok_or_else(|| self.syntax("string does not end on a character boundary"))
    }

    /// Decodes one escape sequence at the cursor (the backslash).
    fn escape(&mut self) -> Result<char, ParseError> {
        let at = self.pos;
        self.pos += 1;
        let c = match self.byte() {
            Some(b'"') => '"',
            Some(b'\\') => '\\',
            Some(b'/') => '/',
            Some(b'b') => '\u{8}',
            Some(b'f') => '\u{c}',
            Some(b'n') => '\n',
            Some(b'r') => '\r',
            Some(b't') => '\t',
            Some(b'u') => {
                self.pos += 1;
                return self.unicode_escape(at);
            }
            _ => return Err(self.syntax("invalid escape in a string")),
        };
        self.pos += 1;
        Ok(c)
    }

    /// `\uXXXX`, or a surrogate pair `\uD8xx\uDCxx`; the cursor is after the
    /// first `u`. An unpaired surrogate cannot be UTF-8, and parsers differ
    /// on what they make of it (replace, keep, refuse), so it is refused.
    fn unicode_escape(&mut self, at: usize) -> Result<char, ParseError> {
        let unit = self.hex4()?;
        let code = match unit {
            0xD800..=0xDBFF => {
                let bytes = self.src.as_bytes();
                if bytes.get(self.pos) != Some(&b'\\') || bytes.get(self.pos + 1) != Some(&b'u') {
                    return Err(ParseError::LoneSurrogate { offset: at });
                }
                self.pos += 2;
                let low = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&low) {
                    return Err(ParseError::LoneSurrogate { offset: at });
                }
                0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00)
            }
            0xDC00..=0xDFFF => return Err(ParseError::LoneSurrogate { offset: at }),
            _ => unit,
        };
        char::from_u32(code).ok_or_else(|| self.syntax("invalid \\u escape"))
    }

    fn hex4(&mut self) -> Result<u32, ParseError> {
        let mut value = 0;
        for _ in 0..4 {
            let digit = match self.byte() {
                Some(b @ b'0'..=b'9') => b - b'0',
                Some(b @ b'a'..=b'f') => b - b'a' + 10,
                Some(b @ b'A'..=b'F') => b - b'A' + 10,
                _ => return Err(self.syntax("expected four hex digits after \\u")),
            };
            value = value * 16 + u32::from(digit);
            self.pos += 1;
        }
        Ok(value)
    }
}

/// Length of the run of plain string content at the start of `bytes`: up to
/// the first quote, backslash or control character. Eight bytes at a time
/// (this loop is most of the parse); within a word, the lowest flagged byte
/// is always a real stop byte, as a borrow only runs upwards from one.
pub(super) fn plain_run(bytes: &[u8]) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut run = 0;
    for chunk in bytes.chunks_exact(8) {
        let Ok(word) = <[u8; 8]>::try_from(chunk).map(u64::from_le_bytes) else {
            break;
        };
        let quote = word ^ (ONES * u64::from(b'"'));
        let backslash = word ^ (ONES * u64::from(b'\\'));
        let stop = (quote.wrapping_sub(ONES) & !quote)
            | (backslash.wrapping_sub(ONES) & !backslash)
            | (word.wrapping_sub(ONES * 0x20) & !word);
        if stop & HIGH != 0 {
            return run + (stop & HIGH).trailing_zeros() as usize / 8;
        }
        run += 8;
    }
    let tail = bytes.get(run..).unwrap_or_default();
    run + tail
        .iter()
        .position(|&b| STRING_STOP[usize::from(b)])
        .unwrap_or(tail.len())
}

fn duplicate(key: &str, offset: usize) -> ParseError {
    ParseError::DuplicateKey {
        offset,
        key: shown(key),
    }
}

/// Keys come from the peer: keep at most 64 bytes of one in an error.
fn shown(key: &str) -> String {
    const SHOWN: usize = 64;
    let end = key
        .char_indices()
        .map(|(i, c)| i + c.len_utf8())
        .take_while(|&end| end <= SHOWN)
        .last()
        .unwrap_or(0);
    key[..end].to_owned()
}
