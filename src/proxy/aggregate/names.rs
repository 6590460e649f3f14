//! Names on the aggregated endpoint: `<upstream>__<name>` for tools and
//! prompts, `mcp-gateway://<upstream>/<percent-encoded uri>` for resources,
//! with exactly one spelling accepted back.

use serde_json::Value;

use super::GATEWAY_URI_PREFIX;
use crate::config::AGGREGATE_SEPARATOR;

/// `<upstream>__<tool>` split on the first `__`; both parts non-empty.
pub fn split_tool(name: &str) -> Option<(&str, &str)> {
    name.split_once(AGGREGATE_SEPARATOR)
        .filter(|(server, tool)| !server.is_empty() && !tool.is_empty())
}

/// The name a member's tool is listed under.
pub fn prefixed(server: &str, tool: &str) -> String {
    format!("{server}{AGGREGATE_SEPARATOR}{tool}")
}

/// Prefixes the names of the entries in one list result's `field` array
/// (`tools`, `prompts`); entries without a string name are dropped (they
/// could not be called).
pub fn prefix_names(server: &str, result: &mut Value, field: &str) -> Vec<Value> {
    let Some(Value::Array(tools)) = result.get_mut(field).map(Value::take) else {
        return Vec::new();
    };
    tools
        .into_iter()
        .filter_map(|mut tool| {
            let name = prefixed(server, tool.get("name")?.as_str()?);
            tool["name"] = Value::String(name);
            Some(tool)
        })
        .collect()
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// `mcp-gateway://<upstream>/<percent-encoded uri>`: how a member's
/// resource URI is listed on the aggregated endpoint.
pub fn wrap_uri(server: &str, uri: &str) -> String {
    let mut out = String::with_capacity(GATEWAY_URI_PREFIX.len() + server.len() + 1 + uri.len());
    out.push_str(GATEWAY_URI_PREFIX);
    out.push_str(server);
    out.push('/');
    for b in uri.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
    out
}

/// The upstream and original URI of a gateway URI; `None` unless `uri` is
/// exactly what [`wrap_uri`] makes (one encoding only: no aliases).
pub fn unwrap_uri(uri: &str) -> Option<(&str, String)> {
    let rest = uri.strip_prefix(GATEWAY_URI_PREFIX)?;
    let (server, encoded) = rest.split_once('/')?;
    if server.is_empty() || encoded.is_empty() {
        return None;
    }
    let mut bytes = Vec::with_capacity(encoded.len());
    let mut input = encoded.bytes();
    while let Some(b) = input.next() {
        if b != b'%' {
            bytes.push(b);
            continue;
        }
        let hi = hex_value(input.next()?)?;
        let lo = hex_value(input.next()?)?;
        bytes.push(hi << 4 | lo);
    }
    let original = String::from_utf8(bytes).ok()?;
    (wrap_uri(server, &original) == uri).then_some((server, original))
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Wraps the `uri` of each entry of one `resources/list` result; entries
/// without a string `uri` are dropped (they could not be read).
pub fn wrap_resources(server: &str, result: &mut Value) -> Vec<Value> {
    let Some(Value::Array(resources)) = result.get_mut("resources").map(Value::take) else {
        return Vec::new();
    };
    resources
        .into_iter()
        .filter_map(|mut resource| {
            let uri = wrap_uri(server, resource.get("uri")?.as_str()?);
            resource["uri"] = Value::String(uri);
            Some(resource)
        })
        .collect()
}
