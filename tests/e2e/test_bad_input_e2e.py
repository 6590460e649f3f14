"""Bad input through the real gateway on real SPIRE identities: each gets a
clear HTTP status and JSON-RPC error with a correlation id, an audit record,
nothing reaches the upstream, and the gateway keeps serving."""

from __future__ import annotations

import json

import pytest

from conftest import AGENT_ID, SERVER_ID
from gateway_fixtures import start_gateway
from helpers import MODERN_PROBE_HEADERS, PROBE, https_post

BIG = 1 << 20  # the default body limit

CASES = [
    # (name, body, HTTP status, JSON-RPC code, audit reason)
    ("malformed JSON", b'{"jsonrpc":"2.0","id":1,"method":"tools/call"', 400, -32700, "parse_error"),
    ("not JSON-RPC", b'{"hello":"world"}', 400, -32600, "parse_error"),
    ("trailing data", PROBE + b"{}", 400, -32700, "parse_error"),
    (
        "duplicate key smuggles a tool name",
        b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","name":"delete_repository"}}',
        400,
        -32700,
        "parse_error",
    ),
    (
        "body over the limit",
        b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"pad":"' + b"x" * BIG + b'"}}',
        413,
        -32063,
        "body_too_large",
    ),
]


def split_response(raw: bytes) -> tuple[int, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body)


@pytest.mark.parametrize("name,body,status,code,reason", CASES, ids=[c[0] for c in CASES])
def test_bad_body_is_refused_and_audited(gateway, upstream, svids, name, body, status, code, reason):
    s = svids["agent"]
    seen = len(upstream.requests())
    got_status, reply = split_response(https_post(gateway.port, s.bundle, s.cert, s.key, body))
    assert got_status == status, reply
    assert reply["jsonrpc"] == "2.0" and reply["error"]["code"] == code, reply
    correlation = reply["error"]["data"]["correlation_id"]
    records = gateway.wait_audit(lambda r: r["correlation_id"] == correlation)
    record = next(r for r in records if r["correlation_id"] == correlation)
    assert record["decision"] == "deny" and record["reason"] == reason
    assert record["caller"] == AGENT_ID
    assert len(upstream.requests()) == seen, "refused input reached the upstream"
    # Still serving.
    ok_status, ok = split_response(https_post(gateway.port, s.bundle, s.cert, s.key, PROBE))
    assert ok_status == 200 and "error" not in ok, ok


def test_unknown_method_is_denied(gateway, upstream, svids):
    s = svids["agent"]
    seen = len(upstream.requests())
    body = b'{"jsonrpc":"2.0","id":"u1","method":"admin/shutdown","params":{}}'
    status, reply = split_response(https_post(gateway.port, s.bundle, s.cert, s.key, body))
    assert status == 200 and reply["id"] == "u1"
    assert reply["error"]["code"] == -32060
    correlation = reply["error"]["data"]["correlation_id"]
    records = gateway.wait_audit(lambda r: r["correlation_id"] == correlation)
    record = next(r for r in records if r["correlation_id"] == correlation)
    assert record["method"] == "admin/shutdown" and record["decision"] == "deny"
    assert len(upstream.requests()) == seen


SPOOFED = [
    "X-Forwarded-Client-Cert: URI=spiffe://example.org/ns/demo/sa/admin",
    "X-Spiffe-Id: spiffe://example.org/ns/demo/sa/admin",
    "Forwarded: for=10.0.0.1",
]


def test_identity_headers_are_not_forwarded(gateway, upstream, svids):
    """Headers claiming an identity never reach the upstream."""
    s = svids["agent"]
    seen = len(upstream.requests())
    https_post(gateway.port, s.bundle, s.cert, s.key, PROBE, headers=MODERN_PROBE_HEADERS + SPOOFED)
    new = upstream.requests()[seen:]
    assert new, "the probe did not reach the upstream"
    for req in new:
        headers = {k.lower() for k, v in req["headers"].items() if v is not None}
        assert not headers & {"x-forwarded-client-cert", "x-spiffe-id", "forwarded"}, req["headers"]


def test_gateway_sets_the_verified_caller_header(spire, upstream, svids, tmp_path):
    """With `caller_id_header` set, the upstream gets the verified caller ID in
    that header, and a value the caller sent under that name never arrives."""
    gw = start_gateway(
        tmp_path, spire.endpoint, upstream.url, SERVER_ID, hint="gateway", caller_id_header="x-spiffe-id"
    )
    try:
        gw.wait_ready()
        s = svids["agent"]
        seen = len(upstream.requests())
        https_post(gw.port, s.bundle, s.cert, s.key, PROBE, headers=MODERN_PROBE_HEADERS + SPOOFED)
        new = upstream.requests()[seen:]
        assert len(new) == 1, new
        assert new[0]["headers"]["x-spiffe-id"] == AGENT_ID
    finally:
        gw.stop()


@pytest.mark.parametrize("size", [BIG + 1, 3 * BIG])
def test_oversized_body_refusal_reaches_a_caller_still_sending(gateway, upstream, svids, size):
    """The gateway refuses on Content-Length before reading the body. It then
    reads and discards a bounded amount of the body, so the 413 reaches a
    caller that is still writing instead of being lost to a TCP reset."""
    s = svids["agent"]
    seen = len(upstream.requests())
    body = b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"pad":"' + b"x" * size + b'"}}'
    for _ in range(20):
        status, reply = split_response(https_post(gateway.port, s.bundle, s.cert, s.key, body))
        assert status == 413 and reply["error"]["code"] == -32063, reply
    assert len(upstream.requests()) == seen
