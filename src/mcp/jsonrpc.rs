//! Strict JSON-RPC 2.0 / MCP message parsing: bytes in, borrowed messages out.
//!
//! Every body the gateway decides on goes through [`parse_body`] exactly
//! once. It checks the whole body (every byte, every depth) and extracts what
//! policy needs: method, id, the tool/prompt name or resource URI, the tool
//! arguments and the protocol version. Because the gateway forwards the bytes
//! it decided on, anything two JSON parsers could read differently is refused
//! with a clear error, never repaired: invalid UTF-8, duplicate keys (after
//! unescaping), unpaired surrogate escapes, nesting deeper than
//! [`MAX_DEPTH`], trailing data, and the `$serde_json::private::*` keys that
//! serde_json (in some configurations) reads as something else. Strings are
//! compared exactly as unescaped: no case folding, no Unicode normalization.
//!
//! Choices where the specs leave room, all towards refusing:
//! - `params` must be an object when present. MCP defines no positional
//!   (array) params for any method, so an array is an invalid request.
//! - ids are strings or integers (no fraction, no exponent, as MCP says);
//!   numeric ids are kept as their original text, however large, so a reply
//!   echoes them byte for byte.
//! - members other than `jsonrpc`, `id`, `method`, `params`, `result` and
//!   `error` make the message invalid.
//! - one bad element fails the whole batch: the caller answers with a single
//!   error, and no part of a half-valid batch is ever forwarded.
//! - `tools/call` and `prompts/get` need a string `params.name`, the
//!   `resources/read|subscribe|unsubscribe` methods a string `params.uri`:
//!   a call whose target cannot be named cannot be decided.
//! - methods and targets must not contain control characters (U+0000-U+001F,
//!   U+007F-U+009F, which JSON can carry escaped): a NUL may end the name an
//!   upstream uses earlier than the name policy saw.
//!
//! This module never panics on any input; `fuzz/fuzz_targets/jsonrpc.rs`
//! holds it to that.

use std::borrow::Cow;

use serde::ser::{Error as _, Serialize, Serializer};
use serde_json::value::RawValue;

use super::json::{JsonType, Scanner};
use fields::{Fields, IdField, MetaField, ParamsFields, Str};

mod fields;

/// Deepest nesting of objects and arrays accepted anywhere in a body (a batch
/// array counts as one level).
pub const MAX_DEPTH: usize = 64;

/// The `_meta` key that carries the protocol version on every request from
/// revision 2026-07-28 on.
pub const META_PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";

/// A parsed HTTP body: one message or a (non-empty) batch.
#[derive(Debug)]
pub enum Body<'a> {
    Single(Message<'a>),
    Batch(Vec<Message<'a>>),
}

/// What a message is, from which members it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `method` and a non-null `id`.
    Request,
    /// `method` and no `id`.
    Notification,
    /// `result` or `error`, no `method`.
    Response,
}

/// A JSON-RPC id: an integer or a string. Both keep their original text, so
/// a reply can echo the id byte for byte ([`Id::raw_json`]).
#[derive(Debug, Clone)]
pub enum Id<'a> {
    /// An integer of any size (JSON-RPC numbers are not bounded).
    Number(RawJson<'a>),
    /// `value` is unescaped; `raw` is the JSON string, quotes included.
    String {
        value: Cow<'a, str>,
        raw: RawJson<'a>,
    },
}

/// A JSON value exactly as received, already checked by [`parse_body`].
///
/// Not a `&serde_json::value::RawValue`: serde_json can only make one of those
/// by reading the text again, which would cost the hot path about as much as
/// the whole parse. [`RawJson::to_raw_value`] does that on demand.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RawJson<'a>(&'a str);

/// One JSON-RPC message, borrowing from the body it was parsed from.
#[derive(Debug)]
pub struct Message<'a> {
    /// `None` for notifications, and for error responses whose id was null.
    pub id: Option<Id<'a>>,
    pub kind: Kind,
    /// Unescaped, exact. `None` for responses.
    pub method: Option<Cow<'a, str>>,
    /// Always an object when present.
    pub params: Option<RawJson<'a>>,
    /// `params.name` for `tools/call` and `prompts/get`; `params.uri` for
    /// `resources/read`, `resources/subscribe`, `resources/unsubscribe`.
    pub target: Option<Cow<'a, str>>,
    /// `params.arguments` for `tools/call` and `prompts/get`; an object.
    pub arguments: Option<RawJson<'a>>,
    /// `params.protocolVersion` for `initialize`, otherwise (and as a
    /// fallback) `params._meta["io.modelcontextprotocol/protocolVersion"]`.
    pub protocol_version: Option<Cow<'a, str>>,
    /// A response's `result` (any JSON value).
    pub result: Option<RawJson<'a>>,
    /// A response's `error` (an object).
    pub error: Option<RawJson<'a>>,
}

/// Why a body was refused. Each variant maps to one JSON-RPC error code.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    #[error("body is not valid UTF-8 (byte {offset})")]
    InvalidUtf8 { offset: usize },
    #[error("invalid JSON at byte {offset}: {what}")]
    Syntax { offset: usize, what: &'static str },
    #[error("invalid JSON at byte {offset}: \\u escape of an unpaired UTF-16 surrogate")]
    LoneSurrogate { offset: usize },
    #[error("duplicate object key {key:?} at byte {offset}")]
    DuplicateKey { offset: usize, key: String },
    #[error("object key {key:?} at byte {offset} is read specially by some JSON parsers")]
    ReservedKey { offset: usize, key: String },
    #[error("JSON nested deeper than {MAX_DEPTH} levels at byte {offset}")]
    TooDeep { offset: usize },
    #[error("unexpected data after the JSON value at byte {offset}")]
    TrailingData { offset: usize },
    /// Well-formed JSON that is not a valid JSON-RPC/MCP message. `id` is the
    /// message's id as JSON text, when it could be read, for the error reply.
    #[error("invalid request: {reason}")]
    InvalidRequest {
        reason: Invalid,
        id: Option<Box<str>>,
    },
}

/// The ways well-formed JSON fails to be a valid message.
#[derive(thiserror::Error, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    #[error("a message must be a JSON object")]
    NotAnObject,
    #[error("a batch must not be empty")]
    EmptyBatch,
    #[error("\"jsonrpc\" is missing")]
    MissingJsonrpc,
    #[error("\"jsonrpc\" must be exactly \"2.0\"")]
    WrongJsonrpc,
    #[error("a message needs \"method\", \"result\" or \"error\"")]
    MissingMethod,
    #[error("\"method\" must be a string")]
    MethodNotString,
    #[error("\"id\" must be a string or an integer")]
    BadId,
    #[error("\"id\" must not be null here")]
    NullId,
    #[error("a response with \"result\" needs an \"id\"")]
    MissingId,
    #[error("\"params\" must be an object")]
    ParamsNotObject,
    #[error("a message must not have both \"method\" and \"result\"/\"error\"")]
    MethodWithResult,
    #[error("a response must not have both \"result\" and \"error\"")]
    ResultAndError,
    #[error("a response must not have \"params\"")]
    ParamsInResponse,
    #[error("\"error\" must be an object")]
    ErrorNotObject,
    #[error("unknown member in a JSON-RPC message")]
    UnknownMember,
    #[error("this method needs a string \"params.name\" or \"params.uri\"")]
    MissingTarget,
    #[error("\"params.name\" / \"params.uri\" must be a string")]
    TargetNotString,
    #[error("\"params.arguments\" must be an object")]
    ArgumentsNotObject,
    #[error("\"params._meta\" must be an object")]
    MetaNotObject,
    #[error("the protocol version must be a string")]
    ProtocolVersionNotString,
    #[error("\"method\" and \"params.name\" / \"params.uri\" must not contain control characters")]
    ControlCharacter,
}

/// A message, or why its (well-formed) JSON is not one.
type Checked<'a> = Result<Message<'a>, ParseError>;

impl<'a> Body<'a> {
    /// The messages of the body, one for a single message.
    pub fn messages(&self) -> &[Message<'a>] {
        match self {
            Body::Single(message) => std::slice::from_ref(message),
            Body::Batch(messages) => messages,
        }
    }
}

impl<'a> Id<'a> {
    /// The id as it was sent (JSON text), for echoing it in a reply.
    pub fn raw_json(&self) -> &'a str {
        match self {
            Id::Number(raw) | Id::String { raw, .. } => raw.get(),
        }
    }
}

/// Ids are equal when they are the same number (as written) or the same
/// string (however escaped).
impl PartialEq for Id<'_> {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Id::Number(a), Id::Number(b)) => a == b,
            (Id::String { value: a, .. }, Id::String { value: b, .. }) => a == b,
            _ => false,
        }
    }
}

impl Eq for Id<'_> {}

impl<'a> RawJson<'a> {
    /// The JSON text, byte for byte as received.
    pub fn get(&self) -> &'a str {
        self.0
    }

    /// The same text as a serde_json `RawValue` (reads it again).
    pub fn to_raw_value(&self) -> Result<&'a RawValue, serde_json::Error> {
        serde_json::from_str(self.0)
    }
}

impl std::fmt::Debug for RawJson<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::fmt::Display for RawJson<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

/// Serializes as the JSON it holds, unchanged (for building replies).
impl Serialize for RawJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_raw_value()
            .map_err(S::Error::custom)?
            .serialize(serializer)
    }
}

impl ParseError {
    /// The JSON-RPC error code to answer with: -32700 when the body is not
    /// acceptable JSON, -32600 when it is JSON but not a valid message.
    pub fn jsonrpc_code(&self) -> i32 {
        match self {
            ParseError::InvalidRequest { .. } => -32600,
            _ => -32700,
        }
    }

    /// The id of the refused message as JSON text, when it could be read.
    pub fn request_id(&self) -> Option<&str> {
        match self {
            ParseError::InvalidRequest { id, .. } => id.as_deref(),
            _ => None,
        }
    }

    fn invalid(reason: Invalid) -> Self {
        ParseError::InvalidRequest { reason, id: None }
    }
}

/// Parses and checks a whole HTTP body. Errors in the JSON itself (-32700)
/// take precedence over errors in the shape of a message (-32600), wherever
/// they are in the body.
pub fn parse_body(bytes: &[u8]) -> Result<Body<'_>, ParseError> {
    let src = std::str::from_utf8(bytes).map_err(|e| ParseError::InvalidUtf8 {
        offset: e.valid_up_to(),
    })?;
    let mut scanner = Scanner::new(src);
    let body = match scanner.peek() {
        Some(b'[') => batch(&mut scanner)?,
        _ => element(&mut scanner, 0)?.map(Body::Single),
    };
    if !scanner.at_end() {
        return Err(ParseError::TrailingData {
            offset: scanner.pos(),
        });
    }
    body
}

/// A batch: every element is checked for JSON errors even after one is found
/// invalid, so that a JSON error anywhere wins.
fn batch<'a>(s: &mut Scanner<'a>) -> Result<Result<Body<'a>, ParseError>, ParseError> {
    let mut messages = Vec::new();
    let mut refused = None;
    s.array(0, |s, depth| {
        if refused.is_some() {
            return s.value(depth).map(drop);
        }
        match element(s, depth)? {
            Ok(message) => messages.push(message),
            // The batch is answered as a whole: one element's id would
            // mislead.
            Err(ParseError::InvalidRequest { reason, .. }) => {
                refused = Some(ParseError::invalid(reason))
            }
            Err(other) => refused = Some(other),
        }
        Ok(())
    })?;
    Ok(match refused {
        Some(error) => Err(error),
        None if messages.is_empty() => Err(ParseError::invalid(Invalid::EmptyBatch)),
        None => Ok(Body::Batch(messages)),
    })
}

/// One message, or any other value (which is walked, then refused).
fn element<'a>(s: &mut Scanner<'a>, depth: usize) -> Result<Checked<'a>, ParseError> {
    if s.peek() != Some(b'{') {
        s.value(depth)?;
        return Ok(Err(ParseError::invalid(Invalid::NotAnObject)));
    }
    let mut f = Fields::default();
    s.object(depth, |s, key, depth| {
        match key {
            "jsonrpc" => f.jsonrpc = Some(string_member(s, depth)?),
            "method" => f.method = Some(string_member(s, depth)?),
            "id" => f.id = Some(id_member(s, depth)?),
            "params" => f.params = Some(params_member(s, depth, &mut f.params_fields)?),
            "result" => f.result = Some(s.raw_value(depth)?.0),
            "error" => f.error = Some(s.raw_value(depth)?),
            _ => {
                f.unknown_member = true;
                s.value(depth)?;
            }
        }
        Ok(())
    })?;
    Ok(f.take_message())
}

/// A member expected to be a string; anything else is walked and noted.
fn string_member<'a>(s: &mut Scanner<'a>, depth: usize) -> Result<Str<'a>, ParseError> {
    if s.peek() == Some(b'"') {
        return s.string().map(Str::Is);
    }
    s.value(depth)?;
    Ok(Str::Not)
}

fn id_member<'a>(s: &mut Scanner<'a>, depth: usize) -> Result<IdField<'a>, ParseError> {
    if s.peek() == Some(b'"') {
        let start = s.pos();
        let value = s.string()?;
        let raw = RawJson(s.since(start)?);
        return Ok(IdField::Valid(Id::String { value, raw }));
    }
    Ok(match s.raw_value(depth)? {
        (raw, JsonType::Number { integer: true }) => IdField::Valid(Id::Number(RawJson(raw))),
        (_, JsonType::Null) => IdField::Null,
        _ => IdField::Bad,
    })
}

fn params_member<'a>(
    s: &mut Scanner<'a>,
    depth: usize,
    p: &mut ParamsFields<'a>,
) -> Result<(&'a str, JsonType), ParseError> {
    if s.peek() != Some(b'{') {
        return s.raw_value(depth);
    }
    let start = s.pos();
    s.object(depth, |s, key, depth| {
        match key {
            "name" => p.name = Some(string_member(s, depth)?),
            "uri" => p.uri = Some(string_member(s, depth)?),
            "arguments" => p.arguments = Some(s.raw_value(depth)?),
            "protocolVersion" => p.protocol_version = Some(string_member(s, depth)?),
            "_meta" => p.meta = Some(meta_member(s, depth)?),
            _ => drop(s.value(depth)?),
        }
        Ok(())
    })?;
    Ok((s.since(start)?, JsonType::Object))
}

fn meta_member<'a>(s: &mut Scanner<'a>, depth: usize) -> Result<MetaField<'a>, ParseError> {
    let mut meta = MetaField {
        is_object: s.peek() == Some(b'{'),
        protocol_version: None,
    };
    if !meta.is_object {
        s.value(depth)?;
        return Ok(meta);
    }
    s.object(depth, |s, key, depth| {
        if key == META_PROTOCOL_VERSION {
            meta.protocol_version = Some(string_member(s, depth)?);
        } else {
            s.value(depth)?;
        }
        Ok(())
    })?;
    Ok(meta)
}
