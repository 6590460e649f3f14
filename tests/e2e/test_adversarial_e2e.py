"""Adversarial end-to-end tests: an attacker holding a real SPIRE SVID (the
demo agent, which may call only `echo` and `get_*`) tries to get something
past the gateway that it did not decide, or decided differently from what
the upstream executes.

Every refusal is checked in full (`raw_http.assert_refused`): the HTTP
status and JSON-RPC error with `error.data.correlation_id`, a deny audit
record with that correlation id and the expected reason, NOTHING new in the
upstream's own request log, and the gateway still serving afterwards.

Where the HTTP parser (hyper) refuses a request before the gateway sees it
(smuggling), there is no JSON-RPC error to check; there the test proves the
invariant directly: every request the upstream received was allowed by an
audit record, the smuggled `delete_repository` never reached it, and no
audit record allows it.
"""

from __future__ import annotations

import gzip
import json
import uuid

import pytest

from conftest import AGENT_ID
from raw_http import (
    ACCEPT,
    JSON,
    PROBE,
    PROBE_HEADERS,
    assert_refused,
    assert_serving,
    chunked,
    connect,
    curl,
    exchange,
    head,
    parse_responses,
    post,
    read_response,
    request,
    send_growing_chunked,
)

LIMIT = 1 << 20  # the default limits.max_body_bytes
MODERN = "2026-07-28"
META = {"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {}}


def rid(prefix: str) -> str:
    """A request id no other test uses, to find this request's records."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def tools_call(name: str, args: dict | None = None, *, id_: object = 7, modern: bool = False) -> bytes:
    params: dict = {"name": name, "arguments": args if args is not None else {}}
    if modern:
        params["_meta"] = META
    return json.dumps({"jsonrpc": "2.0", "id": id_, "method": "tools/call", "params": params}).encode()


def modern_headers(method: str = "tools/call", name: str | None = None) -> list[tuple[str, str]]:
    h = [("MCP-Protocol-Version", MODERN), ("Mcp-Method", method)]
    if name is not None:
        h.append(("Mcp-Name", name))
    return h


def upstream_mentions(upstream, seen: int, needle: str) -> list[dict]:
    return [r for r in upstream.requests()[seen:] if needle in json.dumps(r)]


def assert_only_decided_requests_reached_upstream(gateway, upstream, seen: int, audit_seen: int) -> None:
    """Every request the upstream logged since `seen` carries only messages
    the gateway allowed (an allow record with the same method and id since
    `audit_seen`), `delete_repository` never reached it, and no record allows
    it. Call after a barrier (`assert_serving(..., gw=gateway)`)."""
    records = gateway.audit()[audit_seen:]
    allows = [r for r in records if r["decision"] == "allow"]
    for req in upstream.requests()[seen:]:
        body = req.get("body")
        if req["http_method"] != "POST":
            continue
        assert isinstance(body, (dict, list)), f"undecidable body reached the upstream: {req}"
        for msg in body if isinstance(body, list) else [body]:
            assert any(
                a.get("method") == msg.get("method") and a.get("request_id") == msg.get("id") for a in allows
            ), f"the upstream received a message the gateway did not allow: {msg}\nallows: {allows}"
    assert not upstream_mentions(upstream, seen, "delete_repository"), upstream.requests()[seen:]
    bad = [r for r in records if r["decision"] == "allow" and r.get("target") == "delete_repository"]
    assert not bad, bad


# Strict parsing (duplicate keys, escapes, bad UTF-8, depth, trailing data,
# loose JSON-RPC) and the 64-deep control moved to the in-process floor:
# tests/parsing.rs, the same table.


# ---------------------------------------------------------------------------
# JSON escapes are decoded before deciding; no case folding
# ---------------------------------------------------------------------------

ESCAPED_DELETES = [
    rb'{"jsonrpc":"2.0","id":"esc","method":"tools\/call","params":{"name":"delete\u005frepository","arguments":{"repo":"acme/prod"}}}',
    rb'{"jsonrpc":"2.0","id":"esc","method":"tools\u002fcall","params":{"name":"\u0064\u0065\u006c\u0065\u0074\u0065_repository","arguments":{"repo":"acme/prod"}}}',
    rb'{"jsonrpc":"2.0","id":"esc","method":"\u0074ools/call","params":{"name":"delete_rep\u006fsitory","arguments":{"repo":"acme/prod"}}}',
]


@pytest.mark.parametrize("body", ESCAPED_DELETES, ids=["slash-and-underscore", "all-letters", "method-and-name"])
def test_escaped_delete_is_denied_by_policy(gateway, upstream, svids, body):
    """An attacker spells delete_repository with JSON escapes, hoping a
    gateway that matches raw bytes misses it while the upstream's JSON parser
    decodes it to the real tool. The gateway decodes first: HTTP 200, -32060
    under the request's id, audited as a forbid of target
    "delete_repository" by nobody-deletes-repos, nothing forwarded."""
    s = svids["agent"]
    seen = len(upstream.requests())
    resp = post(gateway.port, s, body)
    record = assert_refused(gateway, upstream, resp, status=200, code=-32060, reason="forbid", seen=seen, reply_id="esc")
    assert record["method"] == "tools/call" and record["target_kind"] == "tool"
    assert record["target"] == "delete_repository"
    assert record["policy_ids"] == ["nobody-deletes-repos"]
    assert_serving(gateway.port, s)


def test_escaped_name_with_modern_headers_is_compared_decoded(gateway, upstream, svids):
    """2026-07-28: the Mcp-Name header says delete_repository and the body
    spells it with an escape. They are the same name once decoded, so this is
    not a header mismatch: the request is decided, and denied by policy."""
    s = svids["agent"]
    seen = len(upstream.requests())
    body = tools_call("delete_repository", {"repo": "acme/prod"}, id_="esc-modern", modern=True)
    body = body.replace(b'"delete_repository"', rb'"delete\u005frepository"')
    resp = post(gateway.port, s, body, modern_headers("tools/call", "delete_repository"))
    record = assert_refused(
        gateway, upstream, resp, status=200, code=-32060, reason="forbid", seen=seen, reply_id="esc-modern"
    )
    assert record["target"] == "delete_repository" and record["policy_ids"] == ["nobody-deletes-repos"]
    assert_serving(gateway.port, s)


@pytest.mark.parametrize("name", ["Delete_Repository", "DELETE_REPOSITORY", "delete_repositorY"])
def test_case_variant_is_another_tool_denied_by_default(gateway, upstream, svids, name):
    """Strings are compared exactly: "Delete_Repository" is not the forbidden
    tool (no case folding), and it is not echo or get_*, so the default deny
    refuses it: -32060, reason default_deny, no policy ids, nothing forwarded.
    (A gateway that case-folded would report the forbid; one that matched
    only the exact forbidden name would let it through.)"""
    s = svids["agent"]
    seen = len(upstream.requests())
    resp = post(gateway.port, s, tools_call(name, {"repo": "acme/prod"}, id_="case"))
    record = assert_refused(
        gateway, upstream, resp, status=200, code=-32060, reason="default_deny", seen=seen, reply_id="case"
    )
    assert record["target"] == name and record["policy_ids"] == []
    assert_serving(gateway.port, s)


def test_tools_call_as_notification_is_still_decided(gateway, upstream, svids):
    """A tools/call without an id is a notification: there is nothing to
    answer, but it is still a call. An attacker hopes notifications pass
    undecided. The gateway decides it like any call: forbidden, answered with
    HTTP 403 and -32060 (no id to answer under), nothing forwarded."""
    s = svids["agent"]
    seen = len(upstream.requests())
    body = b'{"jsonrpc":"2.0","method":"tools/call","params":{"name":"delete_repository","arguments":{"repo":"acme/prod"}}}'
    resp = post(gateway.port, s, body)
    record = assert_refused(gateway, upstream, resp, status=403, code=-32060, reason="forbid", seen=seen)
    assert record["target"] == "delete_repository" and record["policy_ids"] == ["nobody-deletes-repos"]
    assert_serving(gateway.port, s)


# ---------------------------------------------------------------------------
# Entity headers: the gateway must see the bytes it decides on
# ---------------------------------------------------------------------------

DELETE_CALL = tools_call("delete_repository", {"repo": "acme/prod"})

ENCODING_CASES = [
    ("gzip (body: a gzipped delete_repository call)", [("Content-Encoding", "gzip")], gzip.compress(DELETE_CALL)),
    ("gzip, identity", [("Content-Encoding", "gzip, identity")], PROBE),
    ("br", [("Content-Encoding", "br")], PROBE),
    ("identity then gzip as two headers", [("Content-Encoding", "identity"), ("Content-Encoding", "gzip")], PROBE),
    ("deflate", [("Content-Encoding", "deflate")], PROBE),
]


@pytest.mark.parametrize("case,headers,body", ENCODING_CASES, ids=[c[0] for c in ENCODING_CASES])
def test_content_encoding_is_refused(gateway, upstream, svids, case, headers, body):
    """A compressed body cannot be decided on as sent: the gateway would judge
    compressed bytes while the upstream (or a later hop) decompresses and
    executes something else, e.g. a gzipped delete_repository. Any coding
    other than identity is refused: 415, -32064, reason content_encoding."""
    s = svids["agent"]
    seen = len(upstream.requests())
    resp = post(gateway.port, s, body, [*PROBE_HEADERS, *headers])
    assert_refused(gateway, upstream, resp, status=415, code=-32064, reason="content_encoding", seen=seen)
    assert_serving(gateway.port, s)


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "application/jsonx", "text/json", "multipart/form-data"],
    ids=lambda c: str(c),
)
def test_content_type_other_than_json_is_refused(gateway, upstream, svids, content_type):
    """The body (a valid, allowed probe) is labelled as something other than
    application/json: another hop could parse it differently (a form, a
    multipart), so it is refused with 415, -32064, reason content_type."""
    s = svids["agent"]
    seen = len(upstream.requests())
    resp = request(gateway.port, s, PROBE, PROBE_HEADERS, content_type=content_type)
    assert_refused(gateway, upstream, resp, status=415, code=-32064, reason="content_type", seen=seen)
    assert_serving(gateway.port, s)


def test_unknown_transfer_coding_is_refused(gateway, upstream, svids):
    """`Transfer-Encoding: gzip, chunked` says the body is gzip-coded under the
    chunking. The gateway may not decode gzip (it refuses Content-Encoding
    gzip for exactly that reason), so it must refuse the request (RFC 9112
    6.1: a server that receives a transfer coding it does not understand
    responds 501; 400/415 are acceptable refusals too) rather than drop the
    gzip label and treat the bytes as identity. Here the bytes are a plain,
    allowed probe: forwarding it means the gateway silently re-interpreted
    the sender's framing (invariant 4: never fix input silently)."""
    s = svids["agent"]
    seen = len(upstream.requests())
    data = head([JSON, ACCEPT, *PROBE_HEADERS, ("Transfer-Encoding", "gzip, chunked"), ("Connection", "close")])
    raw = exchange(gateway.port, s, [data + chunked(PROBE)])
    responses = parse_responses(raw)
    assert responses, raw
    assert responses[0].status in (400, 415, 501), responses[0]
    assert not upstream.requests()[seen:], f"forwarded: {upstream.requests()[seen:]}"
    assert_serving(gateway.port, s)


# ---------------------------------------------------------------------------
# Request smuggling over HTTP/1.1
# ---------------------------------------------------------------------------

SMUGGLED_BODY = tools_call("delete_repository", {"repo": "acme/prod"}, id_="smuggled")
SMUGGLED = head([JSON, ACCEPT, ("Content-Length", str(len(SMUGGLED_BODY)))]) + SMUGGLED_BODY
FIRST = [JSON, ACCEPT, *PROBE_HEADERS]
ADMIN = "spiffe://example.org/ns/demo/sa/admin"


def _cl_te() -> bytes:
    body = chunked(PROBE) + SMUGGLED
    return head([*FIRST, ("Content-Length", str(len(body))), ("Transfer-Encoding", "chunked")]) + body


def _te_cl() -> bytes:
    body = f"{len(SMUGGLED):x}\r\n".encode() + SMUGGLED + b"\r\n0\r\n\r\n"
    return head([*FIRST, ("Content-Length", "4"), ("Transfer-Encoding", "chunked")]) + body


def _two_cl() -> bytes:
    return (
        head([*FIRST, ("Content-Length", str(len(PROBE))), ("Content-Length", str(len(PROBE) + len(SMUGGLED)))])
        + PROBE
        + SMUGGLED
    )


def _te_gzip_chunked() -> bytes:
    return head([*FIRST, ("Transfer-Encoding", "gzip, chunked")]) + chunked(gzip.compress(SMUGGLED_BODY))


def _te_chunked_gzip() -> bytes:
    body = chunked(PROBE) + SMUGGLED
    return head([*FIRST, ("Transfer-Encoding", "chunked, gzip"), ("Content-Length", str(len(body)))]) + body


def _te_obfuscated() -> bytes:
    body = chunked(PROBE) + SMUGGLED
    return head([*FIRST, ("Transfer-Encoding", " chunked"), ("Transfer-Encoding", "x"), ("Content-Length", str(len(body)))]) + body


def _obs_fold() -> bytes:
    return head([*FIRST, ("X-Note", f"hi\r\n X-Spiffe-Id: {ADMIN}"), ("Content-Length", str(len(PROBE)))]) + PROBE


def _obs_fold_te() -> bytes:
    body = chunked(PROBE) + SMUGGLED
    return head([*FIRST, ("X-Note", "hi\r\n Transfer-Encoding: chunked"), ("Content-Length", str(len(body)))]) + body


def _bare_lf_header() -> bytes:
    return head([*FIRST, ("X-Note", f"hi\nX-Spiffe-Id: {ADMIN}"), ("Content-Length", str(len(PROBE)))]) + PROBE


def _bare_lf_te() -> bytes:
    body = chunked(PROBE) + SMUGGLED
    return head([*FIRST, ("X-Note", "hi\nTransfer-Encoding: chunked"), ("Content-Length", str(len(body)))]) + body


def _bare_lf_everywhere() -> bytes:
    return head([*FIRST, ("Content-Length", str(len(PROBE)))], eol=b"\n") + PROBE + SMUGGLED


def _chunk_size_overflow() -> bytes:
    return head([*FIRST, ("Transfer-Encoding", "chunked")]) + b"1" + b"0" * 16 + b"\r\n" + PROBE + b"\r\n0\r\n\r\n" + SMUGGLED


def _pipelined_control() -> bytes:
    return head([*FIRST, ("Content-Length", str(len(PROBE)))]) + PROBE + SMUGGLED


SMUGGLING = [
    ("CL.TE: Content-Length and Transfer-Encoding chunked", _cl_te),
    ("TE.CL: chunked body, Content-Length 4", _te_cl),
    ("two different Content-Length headers", _two_cl),
    ("Transfer-Encoding: gzip, chunked (gzipped delete)", _te_gzip_chunked),
    ("Transfer-Encoding: chunked, gzip", _te_chunked_gzip),
    ("Transfer-Encoding twice, ' chunked' and 'x'", _te_obfuscated),
    ("obs-fold hides X-Spiffe-Id", _obs_fold),
    ("obs-fold hides Transfer-Encoding", _obs_fold_te),
    ("bare LF splits a header into X-Spiffe-Id", _bare_lf_header),
    ("bare LF hides Transfer-Encoding", _bare_lf_te),
    ("bare LF line endings throughout", _bare_lf_everywhere),
    ("chunk size overflow", _chunk_size_overflow),
    ("plain pipelining (control: the second request is decided)", _pipelined_control),
]

CANARY_BODY = PROBE.replace(b'"id":1', b'"id":"canary"')
CANARY = head([*FIRST, ("Content-Length", str(len(CANARY_BODY))), ("Connection", "close")]) + CANARY_BODY


@pytest.mark.parametrize("case,build", SMUGGLING, ids=[c[0] for c in SMUGGLING])
def test_request_smuggling_never_reaches_upstream_undecided(gateway, upstream, svids, case, build):
    """Classic HTTP/1.1 desync attacks on one mTLS connection with the agent's
    SVID: framing the gateway might read one way while something else reads
    it another, hiding a second request (a tools/call of delete_repository)
    in the body. Then a canary request on the same connection shows where the
    stream resumes. Whatever the gateway answers (hyper refusing with 400 is
    expected), the upstream must have received only requests the gateway
    allowed, never the smuggled delete, no spoofed X-Spiffe-Id, and no audit
    record may allow delete_repository. If the smuggled request is read as a
    request of its own, it must be answered as a denial."""
    s = svids["agent"]
    seen = len(upstream.requests())
    audit_seen = len(gateway.audit())
    raw = exchange(gateway.port, s, [build(), CANARY])
    responses = parse_responses(raw)
    assert responses, f"no HTTP answer at all: {raw[:300]!r}"
    for r in responses:
        body = r.body
        if b'"smuggled"' in body:
            reply = json.loads(body)
            assert reply["error"]["code"] == -32060, r
    assert_serving(gateway.port, s, gw=gateway)
    assert_only_decided_requests_reached_upstream(gateway, upstream, seen, audit_seen)
    for req in upstream.requests()[seen:]:
        assert "x-spiffe-id" not in req["headers"], req
    if case.startswith("plain pipelining"):
        # The control: the smuggled request was a request of its own, decided and denied.
        assert any(b'"smuggled"' in r.body for r in responses), responses
        records = gateway.audit()[audit_seen:]
        assert any(r.get("request_id") == "smuggled" and r["reason"] == "forbid" for r in records), records


# ---------------------------------------------------------------------------
# Body limits
# ---------------------------------------------------------------------------


def test_chunked_body_growing_past_the_limit_is_refused(gateway, upstream, svids):
    """No Content-Length: the attacker streams a chunked body that keeps
    growing and never ends (memory exhaustion, or a body too big to inspect).
    Once past limits.max_body_bytes the gateway answers 413, -32063,
    body_too_large, without waiting for the end of the body; nothing reaches
    the upstream."""
    s = svids["agent"]
    seen = len(upstream.requests())
    resp = send_growing_chunked(gateway.port, s, [JSON, ACCEPT], total=LIMIT + 256 * 1024)
    assert resp is not None, "no answer to a body past the limit that never ends"
    assert_refused(gateway, upstream, resp, status=413, code=-32063, reason="body_too_large", seen=seen)
    assert_serving(gateway.port, s)


def test_declared_length_over_the_limit_is_refused_before_the_body(gateway, upstream, svids):
    """Content-Length announces 1 MiB + 1 and only the first bytes are sent:
    the gateway refuses (413, -32063) from the declared length, without
    waiting for a body it would refuse anyway (slowloris on the limit)."""
    s = svids["agent"]
    seen = len(upstream.requests())
    with connect(gateway.port, s) as tls:
        tls.sendall(head([JSON, ACCEPT, ("Content-Length", str(LIMIT + 1))]) + b'{"jsonrpc":"2.0",')
        resp = read_response(tls, timeout=5)
    assert resp is not None, "no answer while the body was still outstanding"
    assert_refused(gateway, upstream, resp, status=413, code=-32063, reason="body_too_large", seen=seen)
    assert_serving(gateway.port, s)


# ---------------------------------------------------------------------------
# Identity headers from the caller never reach the upstream
# ---------------------------------------------------------------------------

SPOOFED = [
    ("X-Forwarded-Client-Cert", f"By=spiffe://example.org/ns/demo/sa/mcp-server;URI={ADMIN}"),
    ("X-Spiffe-Id", ADMIN),
    ("Forwarded", "for=10.0.0.1;by=10.0.0.2"),
    ("X-Forwarded-For", "10.0.0.1"),
    ("X-Real-IP", "10.0.0.1"),
    ("X-Forwarded-Proto", "https"),
    ("X-Client-Cert", "MIIB..."),
]


def _assert_no_spoofed_headers(upstream, seen: int, marker: str) -> None:
    new = [r for r in upstream.requests()[seen:] if isinstance(r.get("body"), dict) and r["body"].get("id") == marker]
    assert new, "the allowed request did not reach the upstream"
    for req in new:
        names = set(req["headers"])
        assert not names & {k.lower() for k, _ in SPOOFED}, req["headers"]
        assert ADMIN not in json.dumps(req["headers"]), req["headers"]


def test_identity_headers_are_stripped_http1(gateway, upstream, svids):
    """An allowed request over HTTP/1.1 carrying every header an upstream or
    a proxy behind it might read as the caller's identity or address, and a
    Host naming another server: the upstream sees none of them, and its own
    authority as Host."""
    s = svids["agent"]
    seen = len(upstream.requests())
    marker = rid("spoof-h1")
    body = PROBE.replace(b'"id":1', f'"id":"{marker}"'.encode())
    lines = [b"POST /mcp HTTP/1.1", b"Host: evil.example", b"Content-Type: application/json",
             b"Accept: application/json, text/event-stream", b"MCP-Protocol-Version: 2026-07-28",
             b"Mcp-Method: server/discover"]  # fmt: skip
    lines += [f"{k}: {v}".encode() for k, v in SPOOFED]
    lines += [f"Content-Length: {len(body)}".encode(), b"Connection: close"]
    raw = exchange(gateway.port, s, [b"\r\n".join(lines) + b"\r\n\r\n" + body])
    resp = parse_responses(raw)[0]
    assert resp.status == 200 and resp.json()["id"] == marker, resp
    _assert_no_spoofed_headers(upstream, seen, marker)
    req = upstream.requests()[-1]
    assert req["headers"]["host"] == f"localhost:{upstream.port}", req["headers"]


def test_identity_headers_are_stripped_http2(gateway, upstream, svids):
    """The same spoofed identity headers over HTTP/2 (curl, ALPN h2): header
    handling must not depend on the HTTP version the caller picked."""
    s = svids["agent"]
    seen = len(upstream.requests())
    marker = rid("spoof-h2")
    body = PROBE.replace(b'"id":1', f'"id":"{marker}"'.encode())
    resp = curl(gateway.url, s, body, [*PROBE_HEADERS, *SPOOFED], http2=True)
    assert resp.http_version == "2", resp
    assert resp.status == 200 and resp.json()["id"] == marker, resp
    _assert_no_spoofed_headers(upstream, seen, marker)


def test_identity_headers_named_in_connection_are_not_resurrected(gateway, upstream, svids):
    """`Connection: keep-alive, X-Spiffe-Id` asks hops to drop X-Spiffe-Id;
    an attacker hopes a gateway that strips identity headers but honours
    Connection in some other order ends up forwarding it. Neither path may
    let it through."""
    s = svids["agent"]
    seen = len(upstream.requests())
    marker = rid("spoof-conn")
    body = PROBE.replace(b'"id":1', f'"id":"{marker}"'.encode())
    resp = post(gateway.port, s, body, [*PROBE_HEADERS, ("Connection", "keep-alive, X-Spiffe-Id"), ("X-Spiffe-Id", ADMIN)])
    assert resp.status == 200 and resp.json()["id"] == marker, resp
    new = [r for r in upstream.requests()[seen:] if r["body"].get("id") == marker]
    assert new and all("x-spiffe-id" not in r["headers"] for r in new), new


# ---------------------------------------------------------------------------
# Routing: only the MCP path and POST/GET/DELETE
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/mcp/", "/MCP", "/mcp/../mcp", "/%6dcp", "//mcp", "/mcp;a=b", "/admin"])
def test_other_paths_are_refused(gateway, upstream, svids, path):
    """Path confusion: a path another hop might normalise to /mcp. The
    gateway serves exactly its configured path: 404, -32064, not_found."""
    s = svids["agent"]
    seen = len(upstream.requests())
    resp = request(gateway.port, s, PROBE, PROBE_HEADERS, path=path)
    assert_refused(gateway, upstream, resp, status=404, code=-32064, reason="not_found", seen=seen)


@pytest.mark.parametrize("method", ["PUT", "PATCH", "OPTIONS"])
def test_other_http_methods_are_refused(gateway, upstream, svids, method):
    """MCP's transport is POST (plus GET and DELETE before 2026-07-28). A body
    sent with another method is not decided and not forwarded: 405."""
    s = svids["agent"]
    seen = len(upstream.requests())
    resp = request(gateway.port, s, DELETE_CALL, method=method)
    assert_refused(gateway, upstream, resp, status=405, code=-32064, reason="method_not_allowed", seen=seen)


# ---------------------------------------------------------------------------
# 2026-07-28: headers must agree with the body
# ---------------------------------------------------------------------------

MODERN_DELETE_HEADERS = [
    # (case, headers for a body calling delete_repository, code, reason)
    ("Mcp-Name: echo", modern_headers("tools/call", "echo"), -32020, "header_mismatch"),
    ("Mcp-Name: base64 of echo", modern_headers("tools/call", "=?base64?ZWNobw==?="), -32020, "header_mismatch"),
    ("Mcp-Name missing", modern_headers("tools/call"), -32020, "header_mismatch"),
    ("Mcp-Name with different case", modern_headers("tools/call", "Delete_Repository"), -32020, "header_mismatch"),
    ("Mcp-Method: tools/list", modern_headers("tools/list", "delete_repository"), -32020, "header_mismatch"),
    ("Mcp-Method missing", [("MCP-Protocol-Version", MODERN), ("Mcp-Name", "delete_repository")], -32020, "header_mismatch"),
    (
        "MCP-Protocol-Version: 2025-11-25 while _meta says 2026-07-28",
        [("MCP-Protocol-Version", "2025-11-25"), ("Mcp-Method", "tools/call"), ("Mcp-Name", "delete_repository")],
        -32020,
        "header_mismatch",
    ),
    (
        "MCP-Protocol-Version missing while _meta says 2026-07-28",
        [("Mcp-Method", "tools/call"), ("Mcp-Name", "delete_repository")],
        -32020,
        "header_mismatch",
    ),
    (
        "Mcp-Name twice: echo, delete_repository",
        [*modern_headers("tools/call", "echo"), ("Mcp-Name", "delete_repository")],
        -32064,
        "duplicate_header",
    ),
]


@pytest.mark.parametrize("case,headers,code,reason", MODERN_DELETE_HEADERS, ids=[c[0] for c in MODERN_DELETE_HEADERS])
def test_modern_headers_disagreeing_with_body_are_refused(gateway, upstream, svids, case, headers, code, reason):
    """2026-07-28 mirrors method and tool name into Mcp-Method / Mcp-Name so
    intermediaries can route on headers. An attacker sends Mcp-Name: echo
    with a body calling delete_repository, hoping the gateway decides the
    header while the upstream executes the body. A mismatch is refused before
    any decision (400, -32020, header_mismatch): nothing is decided as echo,
    nothing reaches the upstream."""
    s = svids["agent"]
    seen = len(upstream.requests())
    marker = rid("mismatch")
    body = tools_call("delete_repository", {"repo": "acme/prod"}, id_=marker, modern=True)
    resp = post(gateway.port, s, body, headers)
    assert_refused(gateway, upstream, resp, status=400, code=code, reason=reason, seen=seen)
    assert_serving(gateway.port, s, gw=gateway)
    decided = [r for r in gateway.audit() if r.get("request_id") == marker]
    assert not decided, f"the mismatched request was decided: {decided}"


def test_modern_header_on_a_body_without_meta_is_refused(gateway, upstream, svids):
    """The headers claim 2026-07-28 and name echo, while the body is a
    2025-style call (no _meta) of delete_repository. The version disagrees
    with the body, so it is a mismatch, whatever the body's era."""
    s = svids["agent"]
    seen = len(upstream.requests())
    resp = post(gateway.port, s, tools_call("delete_repository", {"repo": "x"}, id_=rid("nometa")), modern_headers("tools/call", "echo"))
    assert_refused(gateway, upstream, resp, status=400, code=-32020, reason="header_mismatch", seen=seen)
    assert_serving(gateway.port, s)


def test_matching_modern_headers_reach_the_upstream(gateway, upstream, svids):
    """Control for the mismatch cases: the same shape with headers that agree
    (an echo call, Mcp-Name: echo) is allowed and answered by the upstream."""
    s = svids["agent"]
    marker = rid("modern-echo")
    resp = post(gateway.port, s, tools_call("echo", {"text": "hi"}, id_=marker, modern=True), modern_headers("tools/call", "echo"))
    assert resp.status == 200, resp
    reply = resp.json()
    assert reply["id"] == marker and "result" in reply, resp


@pytest.mark.parametrize("version", ["2024-01-01", "2024-11-05", "2026-07-28, 2025-11-25", "2026-07-29", "latest"])
def test_unsupported_protocol_version_is_refused(gateway, upstream, svids, version):
    """An MCP-Protocol-Version the gateway does not implement (or a list that
    a lenient hop might read as its first element) cannot be decided by the
    rules of any version: 400, -32022, unsupported_protocol_version."""
    s = svids["agent"]
    seen = len(upstream.requests())
    resp = post(gateway.port, s, tools_call("echo", {"text": "hi"}), [("MCP-Protocol-Version", version)])
    assert_refused(gateway, upstream, resp, status=400, code=-32022, reason="unsupported_protocol_version", seen=seen)
    assert_serving(gateway.port, s)


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_get_and_delete_are_not_part_of_2026_07_28(gateway, upstream, svids, method):
    """2026-07-28 is stateless POST only: a GET stream or a DELETE claiming
    that version has no session to belong to and is refused with 405."""
    s = svids["agent"]
    seen = len(upstream.requests())
    resp = request(gateway.port, s, method=method, headers=[("MCP-Protocol-Version", MODERN)], accept="text/event-stream")
    assert_refused(gateway, upstream, resp, status=405, code=-32064, reason="method_not_allowed", seen=seen)
    assert_serving(gateway.port, s)


# ---------------------------------------------------------------------------
# Batches exist only in 2025-03-26
# ---------------------------------------------------------------------------


def batch_body(modern: bool) -> bytes:
    meta = {"_meta": META} if modern else {}
    return json.dumps(
        [
            {"jsonrpc": "2.0", "id": "b-list", "method": "tools/list", "params": {**meta}},
            {"jsonrpc": "2.0", "id": "b-echo", "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "hi"}, **meta}},
        ]
    ).encode()


@pytest.mark.parametrize(
    "version,headers",
    [
        ("2025-11-25", [("MCP-Protocol-Version", "2025-11-25")]),
        ("2025-06-18", [("MCP-Protocol-Version", "2025-06-18")]),
        ("2026-07-28", [("MCP-Protocol-Version", MODERN)]),
        ("no header, elements carry 2026-07-28 _meta", []),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_batch_outside_2025_03_26_is_refused(gateway, upstream, svids, version, headers):
    """Batches were removed after 2025-03-26. A batch under a later version
    would reach an upstream that does not expect one (the SDK may hand it on
    unchecked). Even with every element allowed (tools/list, echo), it is
    refused whole: 400, -32600, batch_not_allowed, nothing forwarded."""
    s = svids["agent"]
    seen = len(upstream.requests())
    resp = post(gateway.port, s, batch_body(modern=version != "2025-11-25" and version != "2025-06-18"), headers)
    assert_refused(gateway, upstream, resp, status=400, code=-32600, reason="batch_not_allowed", seen=seen)
    assert_serving(gateway.port, s)
