//! Routing: which endpoint a request path names, before its body is read.
//!
//! The single `upstream:` is served on the listener path itself; with
//! `upstreams:` upstream `<name>` is served on `<path>/<name>`, and the
//! aggregated endpoint on `<path>/<aggregate name>`. A path that names
//! nothing is refused (404, -32064) and never forwarded.

use std::sync::Arc;

use crate::config::{Config, Routing};
use crate::proxy::ProxyError;
use crate::proxy::aggregate::Aggregate;
use crate::proxy::upstream::Upstream;

/// Where a request goes.
pub enum Route<'a> {
    Upstream(&'a Arc<Upstream>),
    Aggregate(&'a Aggregate),
}

impl<'a> Route<'a> {
    /// The upstream the audit record names; none for the aggregated
    /// endpoint (each member's records name the member).
    pub fn upstream(&self) -> Option<&'a Upstream> {
        match self {
            Route::Upstream(up) => Some(up),
            Route::Aggregate(_) => None,
        }
    }
}

/// The endpoints of one listener.
pub struct Router {
    path: String,
    /// Every configured upstream, in config order.
    pub upstreams: Vec<Arc<Upstream>>,
    routing: Routing,
    /// The aggregated endpoint (`aggregate:`), on `<path>/<name>`.
    pub aggregate: Option<Aggregate>,
}

impl Router {
    pub fn new(
        config: &Config,
        upstreams: Vec<Arc<Upstream>>,
        aggregate: Option<Aggregate>,
    ) -> Router {
        Router {
            path: config.listener.path.clone(),
            upstreams,
            routing: config.routing,
            aggregate,
        }
    }

    /// The endpoint `path` names.
    pub fn route(&self, path: &str) -> Result<Route<'_>, ProxyError> {
        if self.routing == Routing::OnePath {
            return match self.upstreams.as_slice() {
                [up] if path == self.path => Ok(Route::Upstream(up)),
                _ => Err(ProxyError::NotFound),
            };
        }
        let name = routed_name(&self.path, path).ok_or(ProxyError::NotFound)?;
        if let Some(agg) = &self.aggregate
            && agg.name == name
        {
            return Ok(Route::Aggregate(agg));
        }
        self.upstreams
            .iter()
            .find(|up| up.name == name)
            .map(Route::Upstream)
            .ok_or(ProxyError::UnknownUpstream)
    }
}

/// The upstream name in `<prefix>/<name>` (a listener path ending in `/`
/// takes no second one). Only the form: whether the name exists is the
/// caller's question.
fn routed_name<'a>(prefix: &str, path: &'a str) -> Option<&'a str> {
    path.strip_prefix(prefix.trim_end_matches('/'))?
        .strip_prefix('/')
        .filter(|name| !name.is_empty())
}

#[cfg(test)]
mod tests {
    use super::routed_name;

    #[test]
    fn the_upstream_name_is_the_one_segment_after_the_listener_path() {
        let cases = [
            ("/mcp", "/mcp/github", Some("github")),
            ("/mcp", "/mcp/a.b-c_d", Some("a.b-c_d")),
            ("/mcp/", "/mcp/github", Some("github")),
            ("/", "/github", Some("github")),
            // Not a name: the bare path, an empty name, another prefix.
            ("/mcp", "/mcp", None),
            ("/mcp", "/mcp/", None),
            ("/mcp", "/mcpx/github", None),
            ("/mcp", "/other/github", None),
            // More than one segment is a name no upstream has (they hold no '/').
            ("/mcp", "/mcp/github/x", Some("github/x")),
        ];
        for (prefix, path, want) in cases {
            assert_eq!(routed_name(prefix, path), want, "{prefix} {path}");
        }
    }
}
