//! MCP message framing: the strict JSON-RPC parser every message goes through
//! before a decision, and the SSE event parser for streamed responses.
//!
//! Both refuse input they cannot read unambiguously rather than guess; both
//! borrow from or slice the received bytes so that what is forwarded is
//! exactly what was decided on.

mod json;
pub mod jsonrpc;
pub mod method;
pub mod sse;

pub use json::is_reserved_key;
pub use jsonrpc::{Body, Id, Invalid, Kind, MAX_DEPTH, Message, ParseError, RawJson, parse_body};

#[cfg(test)]
mod jsonrpc_tests;
#[cfg(test)]
mod sse_tests;

/// Checks that `text` is exactly one JSON value under the strict rules the
/// parser applies to messages (no duplicate keys at any depth, no lone
/// surrogates, depth at most [`MAX_DEPTH`], nothing after the value): for
/// files the gateway reads whose meaning must be unambiguous (pin files).
pub fn check_json(text: &str) -> Result<(), ParseError> {
    let mut scanner = json::Scanner::new(text);
    scanner.value(0)?;
    if !scanner.at_end() {
        return Err(ParseError::TrailingData {
            offset: scanner.pos(),
        });
    }
    Ok(())
}
