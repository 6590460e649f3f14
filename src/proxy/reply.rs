//! Replies the gateway writes itself (JSON-RPC errors) and the pass-through
//! of upstream replies.
//!
//! A refused request with an id gets HTTP 200 and a JSON-RPC error carrying
//! that id, so SDK clients hand the error to the pending call (an HTTP error
//! status would surface as a transport failure instead). Everything else
//! refused gets the status from [`ProxyError::status_and_code`]. Every error
//! carries the correlation id of its audit record in `error.data`, and never
//! policy text. Upstream bodies are streamed, never collected.

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};

use crate::mcp::Message;
use crate::proxy::error::ProxyError;

pub type ReplyBody = UnsyncBoxBody<Bytes, hyper::Error>;

fn full(bytes: impl Into<Bytes>) -> ReplyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// One JSON-RPC error object as bytes. `id` is raw JSON (`null` when absent).
pub fn jsonrpc_error(id: Option<&str>, code: i32, message: &str, correlation_id: &str) -> Vec<u8> {
    let body = serde_json::json!({
        "jsonrpc": "2.0",
        "id": serde_json::value::RawValue::from_string(id.unwrap_or("null").to_owned())
            .unwrap_or_else(|_| null_raw()),
        "error": {
            "code": code,
            "message": message,
            "data": { "correlation_id": correlation_id },
        },
    });
    // Serializing a Value built from strings and numbers cannot fail.
    serde_json::to_vec(&body).unwrap_or_default()
}

fn null_raw() -> Box<serde_json::value::RawValue> {
    serde_json::value::RawValue::from_string("null".to_owned()).expect("null is valid JSON")
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response<ReplyBody> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// A refusal as an HTTP response with a JSON-RPC error body.
pub fn error_response(
    refusal: &ProxyError,
    id: Option<&str>,
    correlation_id: &str,
) -> Response<ReplyBody> {
    let (status, code) = refusal.status_and_code();
    let status = if id.is_some() && refusal.answers_the_call() {
        StatusCode::OK
    } else {
        status
    };
    let body = jsonrpc_error(id, code, &refusal.to_string(), correlation_id);
    with_retry_after(json_response(status, body), refusal)
}

/// A refusal of a whole batch: each request in it (`ids`, raw JSON)
/// answered with the error, under the refusal's own HTTP status.
pub fn batch_refused(
    refusal: &ProxyError,
    ids: &[&str],
    correlation_id: &str,
) -> Response<ReplyBody> {
    let (status, code) = refusal.status_and_code();
    let message = refusal.to_string();
    let answers: Vec<Vec<u8>> = ids
        .iter()
        .map(|id| jsonrpc_error(Some(id), code, &message, correlation_id))
        .collect();
    with_retry_after(json_response(status, json_array(&answers)), refusal)
}

/// `Retry-After` (seconds) on a refusal that says when to come back (a
/// per-identity limit).
fn with_retry_after(mut resp: Response<ReplyBody>, refusal: &ProxyError) -> Response<ReplyBody> {
    if let Some(seconds) = refusal.retry_after() {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    resp
}

/// One message of a body refused at its decision: its index in the body,
/// its record's correlation id, and the refusal its answer carries (policy
/// or pin).
pub struct Denial {
    pub index: usize,
    pub correlation_id: String,
    pub refusal: ProxyError,
}

impl Denial {
    /// The same denial, of the message at `index` of its body.
    pub fn at(self, index: usize) -> Denial {
        Denial { index, ..self }
    }
}

/// The JSON-RPC errors answering the denied messages that have an id.
pub fn denial_answers(messages: &[Message<'_>], denied: &[Denial]) -> Vec<Vec<u8>> {
    denied
        .iter()
        .filter_map(|d| {
            let id = messages.get(d.index)?.id.as_ref()?.raw_json();
            let (_, code) = d.refusal.status_and_code();
            Some(jsonrpc_error(
                Some(id),
                code,
                &d.refusal.to_string(),
                &d.correlation_id,
            ))
        })
        .collect()
}

/// The reply when every message of the body was denied: nothing was
/// forwarded, and every message with an id gets its error answer.
pub fn denied(mut answers: Vec<Vec<u8>>, batch: bool, first: &Denial) -> Response<ReplyBody> {
    if answers.is_empty() {
        // Only notifications (or responses): no id to answer, so an HTTP error.
        let (status, code) = first.refusal.status_and_code();
        let message = first.refusal.to_string();
        let body = jsonrpc_error(None, code, &message, &first.correlation_id);
        return with_retry_after(json_response(status, body), &first.refusal);
    }
    if !batch {
        // A call refused by a limit keeps its 429 (and `Retry-After`), so
        // clients back off; a policy's refusal answers the call.
        let status = if first.refusal.retry_after().is_some() {
            first.refusal.status_and_code().0
        } else {
            StatusCode::OK
        };
        let resp = json_response(status, answers.swap_remove(0));
        return with_retry_after(resp, &first.refusal);
    }
    json_response(StatusCode::OK, json_array(&answers))
}

/// `[a,b,...]` from JSON texts.
pub fn json_array(items: &[Vec<u8>]) -> Vec<u8> {
    let mut body = Vec::with_capacity(items.iter().map(Vec::len).sum::<usize>() + items.len() + 1);
    body.push(b'[');
    for (i, a) in items.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(a);
    }
    body.push(b']');
    body
}

/// An HTTP 200 JSON response (the gateway's own answers).
pub fn json_ok(body: Vec<u8>) -> Response<ReplyBody> {
    json_response(StatusCode::OK, body)
}

/// The upstream's reply, streamed through with hop-by-hop headers removed.
pub fn from_upstream<B>(resp: Response<B>) -> Response<ReplyBody>
where
    B: hyper::body::Body<Data = Bytes, Error = hyper::Error> + Send + 'static,
{
    let (mut parts, body) = resp.into_parts();
    super::forward::strip_hop_headers(&mut parts.headers);
    Response::from_parts(parts, body.boxed_unsync())
}
