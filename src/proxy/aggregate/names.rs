//! Names on the aggregated endpoint: `<upstream>__<name>` for tools and
//! prompts, `mcp-gateway://<upstream>/<percent-encoded uri>` for resources,
//! with exactly one spelling accepted back.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
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

/// Every byte but the RFC 3986 unreserved ones (`A-Za-z0-9-._~`) is
/// encoded (upper-case hex, as `percent-encoding` writes it).
const ENCODED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `mcp-gateway://<upstream>/<percent-encoded uri>`: how a member's
/// resource URI is listed on the aggregated endpoint.
pub fn wrap_uri(server: &str, uri: &str) -> String {
    format!(
        "{GATEWAY_URI_PREFIX}{server}/{}",
        utf8_percent_encode(uri, ENCODED)
    )
}

/// The upstream and original URI of a gateway URI; `None` unless `uri` is
/// exactly what [`wrap_uri`] makes. The decoder is lenient (a stray `%`
/// or lower-case hex passes), so the round trip is what makes the one
/// encoding the only one: no aliases.
pub fn unwrap_uri(uri: &str) -> Option<(&str, String)> {
    let rest = uri.strip_prefix(GATEWAY_URI_PREFIX)?;
    let (server, encoded) = rest.split_once('/')?;
    if server.is_empty() || encoded.is_empty() {
        return None;
    }
    let original = percent_decode_str(encoded).decode_utf8().ok()?.into_owned();
    (wrap_uri(server, &original) == uri).then_some((server, original))
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
