"""Session table fairness (issue 10, point 7), on real SPIRE identities.

`limits.max_sessions: 3` and `limits.max_sessions_per_identity: 2`, on one
upstream (`/mcp/demo`) and on the aggregated endpoint over it (`/mcp/all`),
each with its own table. An identity at its cap, or a full table, gets its
own code (-32069) and a truthful message, never "session not found"; the
refused `initialize` is audited and counted and never reaches the upstream
(no initialize, no DELETE); the sessions already open keep working; and a
place freed by DELETE is taken by the next identity.
"""

from __future__ import annotations

import json
import uuid

import pytest

from conftest import AGENT_B_ID, AGENT_ID, SERVER_ID
from gateway_fixtures import start_gateway
from raw_http import assert_refused, post, request

V = "2025-11-25"
INITIALIZED = b'{"jsonrpc":"2.0","method":"notifications/initialized"}'
CODE_SESSION_LIMIT = -32069


@pytest.fixture(scope="module")
def limited(spire, upstream, tmp_path_factory):
    gw = start_gateway(
        tmp_path_factory.mktemp("gw-session-limits"),
        spire.endpoint,
        "",
        "",
        upstreams=[{"name": "demo", "url": upstream.url, "spiffe_id": SERVER_ID}],
        extra_yaml="aggregate: { name: all, upstreams: [demo] }\n",
        limits_extra=["  max_sessions: 3", "  max_sessions_per_identity: 2"],
    )
    try:
        gw.wait_ready()
        yield gw
    finally:
        gw.stop()


def initialize(gw, svid, path: str):
    body = {
        "jsonrpc": "2.0",
        "id": f"init-{uuid.uuid4().hex[:8]}",
        "method": "initialize",
        "params": {"protocolVersion": V, "capabilities": {}, "clientInfo": {"name": "limits-e2e", "version": "1"}},
    }
    return post(gw.port, svid, json.dumps(body).encode(), path=path)


def open_session(gw, svid, path: str) -> str:
    r = initialize(gw, svid, path)
    assert r.status == 200 and "result" in r.json(), r
    sid = r.header("mcp-session-id")
    assert sid, r
    done = post(gw.port, svid, INITIALIZED, headers(sid), path=path)
    assert done.status == 202, done
    return sid


def headers(sid: str) -> list[tuple[str, str]]:
    return [("Mcp-Session-Id", sid), ("MCP-Protocol-Version", V)]


def lists_tools(gw, svid, sid: str, path: str) -> bool:
    body = json.dumps({"jsonrpc": "2.0", "id": "l", "method": "tools/list"}).encode()
    r = post(gw.port, svid, body, headers(sid), path=path)
    return r.status == 200 and "tools" in r.json().get("result", {})


def refused_count(gw, reason: str) -> float:
    return gw.metric("mcp_gateway_refused_requests_total", f'{{reason="{reason}"}}')


def delete(gw, svid, sid: str, path: str) -> None:
    r = request(gw.port, svid, method="DELETE", headers=headers(sid), path=path)
    assert r.status == 200, r


def test_one_identity_cannot_lock_the_others_out_of_an_upstream(limited, upstream, svids):
    gw, path = limited, "/mcp/demo"
    a, b = svids["agent"], svids["agent-b"]
    mine = [open_session(gw, a, path), open_session(gw, a, path)]

    # A third session of the same identity: refused before the upstream.
    seen = len(upstream.requests())
    before = refused_count(gw, "session_identity_limit")
    r = initialize(gw, a, path)
    record = assert_refused(
        gw, upstream, r, status=429, code=CODE_SESSION_LIMIT, reason="session_identity_limit", seen=seen, caller=AGENT_ID
    )
    assert r.json()["error"]["message"].startswith("too many sessions for this identity"), r
    assert record["upstream"] == "demo"
    assert refused_count(gw, "session_identity_limit") == before + 1

    # Another identity still gets in, and fills the table.
    theirs = open_session(gw, b, path)
    seen = len(upstream.requests())
    before = refused_count(gw, "session_table_full")
    r = initialize(gw, b, path)
    assert_refused(
        gw, upstream, r, status=503, code=CODE_SESSION_LIMIT, reason="session_table_full", seen=seen, caller=AGENT_B_ID
    )
    assert r.json()["error"]["message"].startswith("session table full"), r
    assert "not found" not in r.json()["error"]["message"]
    assert refused_count(gw, "session_table_full") == before + 1

    # Nothing open was disturbed; a DELETE frees a place for the next caller.
    assert all(lists_tools(gw, a, sid, path) for sid in mine)
    assert lists_tools(gw, b, theirs, path)
    delete(gw, a, mine.pop(), path)
    theirs2 = open_session(gw, b, path)
    assert lists_tools(gw, b, theirs2, path)
    for sid in mine:
        delete(gw, a, sid, path)
    for sid in (theirs, theirs2):
        delete(gw, b, sid, path)
    # Every place given back: the identity at its cap before opens again.
    delete(gw, a, open_session(gw, a, path), path)


def test_the_aggregated_endpoint_has_the_same_caps(limited, upstream, svids):
    gw, path = limited, "/mcp/all"
    a = svids["agent"]
    mine = [open_session(gw, a, path), open_session(gw, a, path)]
    # The member was asked for two sessions; the third initialize never
    # fans out.
    seen = len(upstream.requests())
    r = initialize(gw, a, path)
    assert_refused(
        gw, upstream, r, status=429, code=CODE_SESSION_LIMIT, reason="session_identity_limit", seen=seen, caller=AGENT_ID
    )
    assert all(lists_tools(gw, a, sid, path) for sid in mine)
    delete(gw, a, mine.pop(), path)
    mine.append(open_session(gw, a, path))
    for sid in mine:
        delete(gw, a, sid, path)
