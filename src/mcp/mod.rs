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

pub use jsonrpc::{Body, Id, Invalid, Kind, MAX_DEPTH, Message, ParseError, RawJson, parse_body};

#[cfg(test)]
mod jsonrpc_tests;
#[cfg(test)]
mod sse_tests;
