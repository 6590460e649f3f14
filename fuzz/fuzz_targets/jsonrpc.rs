//! Fuzzes the strict JSON-RPC parser with arbitrary bytes.
//!
//! Beyond "never panics": parsing is deterministic, and the parser is checked
//! against serde_json as a second opinion. Whatever it accepts, serde_json
//! must accept too and read the same method, id, target, arguments and
//! protocol version (there is no duplicate key or lone surrogate for them to
//! resolve differently); whatever serde_json accepts, the parser may refuse
//! only for one of its deliberate strictness rules, never as a syntax error.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use spiffe_mcp_gateway::mcp::{Body, Id, Message, ParseError, RawJson, parse_body};

fuzz_target!(|data: &[u8]| {
    let first = parse_body(data);
    let again = parse_body(data);
    match (&first, &again) {
        (Ok(a), Ok(b)) => assert_eq!(format!("{a:?}"), format!("{b:?}")),
        (Err(a), Err(b)) => assert_eq!(a, b),
        _ => panic!("parse_body is not deterministic"),
    }
    let serde = serde_json::from_slice::<Value>(data);
    match (first, serde) {
        (Ok(body), Ok(value)) => agree(data, &body, &value),
        // serde_json's Value holds numbers as f64 and refuses larger ones;
        // any JSON number is valid, and the parser keeps their text.
        (Ok(_), Err(e)) if e.to_string().starts_with("number out of range") => {}
        (Ok(body), Err(e)) => panic!("accepted what serde_json refuses ({e}): {body:?}"),
        (Err(error), Ok(_)) => assert!(deliberate(&error), "serde_json accepts: {error}"),
        (Err(error), Err(_)) => assert!(matches!(error.jsonrpc_code(), -32700 | -32600)),
    }
});

/// Refusals of JSON that serde_json reads, on purpose.
fn deliberate(error: &ParseError) -> bool {
    matches!(
        error,
        ParseError::DuplicateKey { .. }
            | ParseError::ReservedKey { .. }
            | ParseError::LoneSurrogate { .. }
            | ParseError::TooDeep { .. }
            | ParseError::InvalidRequest { .. }
    )
}

fn agree(data: &[u8], body: &Body<'_>, value: &Value) {
    let values: Vec<&Value> = match (body, value) {
        (Body::Batch(_), Value::Array(items)) => items.iter().collect(),
        (Body::Single(_), Value::Object(_)) => vec![value],
        _ => panic!("body shape differs from serde_json's: {body:?}"),
    };
    assert_eq!(values.len(), body.messages().len());
    for (message, value) in body.messages().iter().zip(values) {
        agree_on_message(data, message, value);
    }
}

fn agree_on_message(data: &[u8], m: &Message<'_>, v: &Value) {
    assert_eq!(v["jsonrpc"], "2.0");
    assert_eq!(m.method.as_deref(), v.get("method").and_then(Value::as_str));
    match &m.id {
        None => assert!(v.get("id").is_none_or(Value::is_null)),
        Some(Id::String { value, raw }) => {
            assert_eq!(v["id"].as_str(), Some(&**value));
            assert_eq!(same_json(data, *raw), v["id"]);
        }
        Some(Id::Number(raw)) => assert_eq!(same_json(data, *raw), v["id"]),
    }
    let params = &v["params"];
    for (ours, name) in [
        (m.params, "params"),
        (m.result, "result"),
        (m.error, "error"),
    ] {
        match ours {
            Some(raw) => assert_eq!(same_json(data, raw), v[name]),
            None => assert!(v.get(name).is_none()),
        }
    }
    if let Some(arguments) = m.arguments {
        assert_eq!(same_json(data, arguments), params["arguments"]);
    }
    let expected_target = match m.method.as_deref() {
        Some("tools/call" | "prompts/get") => params["name"].as_str(),
        Some("resources/read" | "resources/subscribe" | "resources/unsubscribe") => {
            params["uri"].as_str()
        }
        _ => None,
    };
    assert_eq!(m.target.as_deref(), expected_target);
    let meta_version = params["_meta"]["io.modelcontextprotocol/protocolVersion"].as_str();
    let expected_version = match m.method.as_deref() {
        Some("initialize") => params["protocolVersion"].as_str().or(meta_version),
        _ => meta_version,
    };
    assert_eq!(m.protocol_version.as_deref(), expected_version);
}

/// The raw text lies inside the input, and serde_json reads it as `Value`.
fn same_json(data: &[u8], raw: RawJson<'_>) -> Value {
    let text = raw.get();
    let start = (text.as_ptr() as usize).wrapping_sub(data.as_ptr() as usize);
    assert!(
        start <= data.len() && text.len() <= data.len() - start,
        "raw text outside the body"
    );
    serde_json::from_str(text).expect("raw text is not JSON")
}
