//! Reading an upstream's lists (tools, prompts, resource templates) as the
//! gateway itself, with its own SVID, the way it forwards any call: for
//! `pin record` and `pin diff`, and to re-read a list after the upstream
//! announced a change (`notifications/*/list_changed`).
//!
//! 2026-07-28 first (stateless: each request carries the version); an
//! upstream that refuses it is asked in 2025-11-25, in a session of its
//! own (`initialize`, the lists, `DELETE`). Every page is read (up to
//! [`MAX_PAGES`]); a method the upstream does not offer (-32601) is an empty
//! list. Replies are read by the gateway's strict parser, JSON or SSE.
//!
//! Must never: send anything but `initialize`, `notifications/initialized`,
//! the list methods and `DELETE`, or present another identity than the
//! gateway's.

use bytes::Bytes;
use hyper::Method;
use hyper::header::{HeaderMap, HeaderValue};
use serde_json::{Value, json};

use crate::pins::PinKind;
use crate::pins::file::PinFile;
use crate::proxy::aggregate::read_answer;
use crate::proxy::upstream::Upstream;
use crate::proxy::{ProxyError, forward, protocol};

/// Pages read of one list at most.
pub const MAX_PAGES: usize = 100;
/// The 2025-era version the gateway asks in.
const LEGACY: &str = "2025-11-25";
/// JSON-RPC "method not found".
const METHOD_NOT_FOUND: i64 = -32601;

/// Why an upstream's lists could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{method}: {source}")]
    Send {
        method: &'static str,
        source: ProxyError,
    },
    #[error("{method}: the upstream answered HTTP {status}")]
    Status {
        method: &'static str,
        status: hyper::StatusCode,
    },
    #[error("{method}: the upstream answered error {code}: {message}")]
    Refused {
        method: &'static str,
        code: i64,
        message: String,
    },
    #[error("{method}: {what}")]
    Malformed {
        method: &'static str,
        what: &'static str,
    },
    #[error("{0} lists more than {MAX_PAGES} pages")]
    TooManyPages(&'static str),
}

/// One conversation with the upstream, in one protocol era.
struct Speaker<'a> {
    up: &'a Upstream,
    modern: bool,
    session: Option<HeaderValue>,
    next_id: u64,
}

/// The upstream's current definitions of `kinds`, as a pin file of the
/// upstream (every entry hashed).
pub async fn fetch(up: &Upstream, kinds: &[PinKind]) -> Result<PinFile, FetchError> {
    let mut modern = Speaker::new(up, true);
    match read_all(&mut modern, kinds).await {
        Ok(live) => return Ok(live),
        Err(e) => {
            tracing::debug!(upstream = %up.name, error = %e, "2026-07-28 refused; asking in 2025-11-25");
        }
    }
    let mut legacy = Speaker::new(up, false);
    let result = match legacy.open().await {
        Ok(()) => read_all(&mut legacy, kinds).await,
        Err(e) => Err(e),
    };
    legacy.close().await;
    result
}

/// Every list of `kinds`, in one era.
async fn read_all(speaker: &mut Speaker<'_>, kinds: &[PinKind]) -> Result<PinFile, FetchError> {
    let mut live = PinFile {
        upstream: speaker.up.name.clone(),
        spiffe_id: speaker.up.spiffe_id.clone(),
        ..PinFile::default()
    };
    for &kind in kinds {
        let entries = speaker.list(kind).await?;
        add(&mut live, kind, entries)?;
    }
    Ok(live)
}

/// Pins each listed entry in `live` (hashing it); an entry without its
/// name is an error.
fn add(live: &mut PinFile, kind: PinKind, entries: Vec<Value>) -> Result<(), FetchError> {
    for entry in entries {
        live.insert(kind, entry).ok_or(FetchError::Malformed {
            method: kind.list().method(),
            what: "an entry without its name, one that cannot be hashed, or one named with a reserved JSON key",
        })?;
    }
    Ok(())
}

impl<'a> Speaker<'a> {
    fn new(up: &'a Upstream, modern: bool) -> Speaker<'a> {
        Speaker {
            up,
            modern,
            session: None,
            next_id: 1,
        }
    }

    /// 2025-era: `initialize` and `notifications/initialized`.
    async fn open(&mut self) -> Result<(), FetchError> {
        let params = json!({
            "protocolVersion": LEGACY,
            "capabilities": {},
            "clientInfo": { "name": "spiffe-mcp-gateway", "version": env!("CARGO_PKG_VERSION") },
        });
        self.ask("initialize", params).await?;
        self.send("notifications/initialized", None, json!({}))
            .await?;
        Ok(())
    }

    /// Ends a 2025-era session (DELETE).
    async fn close(&mut self) {
        if let Some(session) = self.session.take()
            && let Ok(id) = session.to_str()
        {
            self.up.end_session(id).await;
        }
    }

    /// Every entry of one list, page by page.
    async fn list(&mut self, kind: PinKind) -> Result<Vec<Value>, FetchError> {
        let list = kind.list();
        let method = list.method();
        let mut entries = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let params = match cursor.take() {
                Some(c) => json!({ "cursor": c }),
                None => json!({}),
            };
            let mut result = match self.ask(method, params).await {
                Err(FetchError::Refused { code, .. }) if code == METHOD_NOT_FOUND => {
                    return Ok(entries);
                }
                other => other?,
            };
            let page = result.get_mut(list.field()).map(Value::take);
            let Some(Value::Array(page)) = page else {
                let what = "the result has no list of entries";
                return Err(FetchError::Malformed { method, what });
            };
            entries.extend(page);
            match result.get("nextCursor").and_then(Value::as_str) {
                Some(next) => cursor = Some(next.to_owned()),
                None => return Ok(entries),
            }
        }
        Err(FetchError::TooManyPages(method))
    }

    /// One request; its `result`.
    async fn ask(&mut self, method: &'static str, params: Value) -> Result<Value, FetchError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut answer = self
            .send(method, Some(id), params)
            .await?
            .unwrap_or(Value::Null);
        if let Some(error) = answer.get("error") {
            return Err(FetchError::Refused {
                method,
                code: error.get("code").and_then(Value::as_i64).unwrap_or(0),
                message: error
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .chars()
                    .take(200)
                    .collect(),
            });
        }
        match answer.get_mut("result").map(Value::take) {
            Some(result @ Value::Object(_)) => Ok(result),
            _ => Err(FetchError::Malformed {
                method,
                what: "no result object",
            }),
        }
    }

    /// Sends one message; reads the answer of a request (`id`).
    async fn send(
        &mut self,
        method: &'static str,
        id: Option<u64>,
        mut params: Value,
    ) -> Result<Option<Value>, FetchError> {
        if self.modern {
            params["_meta"] = json!({
                "io.modelcontextprotocol/protocolVersion": protocol::MODERN,
                "io.modelcontextprotocol/clientCapabilities": {},
            });
        }
        let mut message = json!({ "jsonrpc": "2.0", "method": method, "params": params });
        if let Some(id) = id {
            message["id"] = json!(id);
        }
        let body = Bytes::from(serde_json::to_vec(&message).unwrap_or_default());
        let req = forward::request(self.up, Method::POST, body, self.headers(method));
        let resp = forward::send(self.up, req)
            .await
            .map_err(|source| FetchError::Send { method, source })?;
        if !resp.status().is_success() {
            let status = resp.status();
            return Err(FetchError::Status { method, status });
        }
        if method == "initialize" {
            self.session = resp.headers().get(protocol::SESSION_HEADER).cloned();
        }
        let Some(id) = id else {
            return Ok(None);
        };
        read_answer(self.up, resp, &json!(id))
            .await
            .map(Some)
            .map_err(|source| FetchError::Send { method, source })
    }

    fn headers(&self, method: &'static str) -> HeaderMap {
        let mut headers = forward::own_post_headers();
        if self.modern {
            headers.insert(
                protocol::PROTOCOL_VERSION_HEADER,
                HeaderValue::from_static(protocol::MODERN),
            );
            headers.insert(protocol::METHOD_HEADER, HeaderValue::from_static(method));
        } else if method != "initialize" {
            headers.insert(
                protocol::PROTOCOL_VERSION_HEADER,
                HeaderValue::from_static(LEGACY),
            );
        }
        if let Some(session) = &self.session {
            headers.insert(protocol::SESSION_HEADER, session.clone());
        }
        headers
    }
}
