"""Sessions belong to the identity that opened them (invariant 5), attacked
end to end on real SPIRE identities.

The victim is the demo agent; the attacker is agent-b, with its own valid
SVID (it may open sessions and list tools). A session is opened either by
the real TypeScript SDK agent (2025-11-25) or by raw POSTs (initialize, then
notifications/initialized). Every refusal is checked in full: HTTP 404,
JSON-RPC -32065 with a correlation id, a deny audit record with the reason,
nothing in the upstream's request log, and the victim's session still
usable afterwards.

The 2025-03-26 batch tests live here too: batches exist only in that
version, which needs a session opened at that version.
"""

from __future__ import annotations

import json
import uuid

import pytest

from conftest import AGENT_B_ID, AGENT_ID
from mcp_fixtures import run_ts_agent
from raw_http import Resp, assert_refused, assert_serving, curl, post, request

V = "2025-11-25"
INITIALIZED = b'{"jsonrpc":"2.0","method":"notifications/initialized"}'


def init_body(version: str) -> bytes:
    return json.dumps(
        {
            "jsonrpc": "2.0",
            "id": f"init-{uuid.uuid4().hex[:8]}",
            "method": "initialize",
            "params": {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "raw-e2e", "version": "1"}},
        }
    ).encode()


def session_headers(sid: str, version: str = V) -> list[tuple[str, str]]:
    """Follow-up headers: the session, and the version header from 2025-06-18 on."""
    h = [("Mcp-Session-Id", sid)]
    if version != "2025-03-26":
        h.append(("MCP-Protocol-Version", version))
    return h


def open_session(port: int, svid, version: str = V) -> str:
    """initialize + notifications/initialized with raw POSTs; returns the session id."""
    r = post(port, svid, init_body(version))
    assert r.status == 200, r
    sid = r.header("mcp-session-id")
    assert sid, r
    assert r.json()["result"]["protocolVersion"] == version, r
    done = post(port, svid, INITIALIZED, session_headers(sid, version))
    assert done.status == 202, done
    return sid


def list_tools(port: int, svid, sid: str, version: str = V, **kw) -> Resp:
    body = json.dumps({"jsonrpc": "2.0", "id": f"list-{uuid.uuid4().hex[:8]}", "method": "tools/list"}).encode()
    return post(port, svid, body, session_headers(sid, version), **kw)


def assert_session_works(port: int, svid, sid: str, version: str = V, *, lists_echo: bool = True) -> None:
    """The owner can still use the session: tools/list is answered with a
    result (for the demo agent, one listing echo; agent-b may call no tool,
    so its filtered list may be empty)."""
    r = list_tools(port, svid, sid, version)
    assert r.status == 200, r
    reply = r.json()
    tools = reply["result"]["tools"]
    if lists_echo:
        assert "echo" in {t["name"] for t in tools}, reply


@pytest.fixture(scope="module")
def ts_session(gateway, svids):
    """A session opened by the real TypeScript SDK agent (2025-11-25) as the
    demo agent. The agent exits without ending it, so it stays open."""
    s = svids["agent"]
    run = run_ts_agent(gateway.url, s.cert, s.key, s.bundle, calls=["list"])
    assert run.negotiated and run.protocol_version == V, run.stdout + run.stderr
    sid = run.negotiated["session_id"]
    assert sid, run.stdout
    assert run.calls and run.calls[0]["ok"] is True, run.stdout
    return sid


def _post(body: bytes):
    def send(gw, svid, sid):
        return post(gw.port, svid, body, session_headers(sid), timeout=5)

    return send


def _bare(method: str):
    def send(gw, svid, sid):
        return request(gw.port, svid, method=method, headers=session_headers(sid), accept="text/event-stream", timeout=5)

    return send


def _h2(method: str):
    def send(gw, svid, sid):
        r = curl(gw.url, svid, None, [*session_headers(sid), ("Accept", "text/event-stream")], method=method, http2=True, timeout=10)
        assert r.http_version == "2", r
        return r

    return send


HIJACKS = [
    ("POST tools/list", _post(b'{"jsonrpc":"2.0","id":"hj","method":"tools/list"}')),
    ("POST tools/call echo", _post(b'{"jsonrpc":"2.0","id":"hj","method":"tools/call","params":{"name":"echo","arguments":{"text":"x"}}}')),
    ("POST notifications/initialized", _post(INITIALIZED)),
    ("POST initialize (re-bind attempt)", _post(init_body(V))),
    ("POST a response to a server request", _post(b'{"jsonrpc":"2.0","id":0,"result":{}}')),
    ("GET stream", _bare("GET")),
    ("DELETE", _bare("DELETE")),
    ("GET stream over HTTP/2", _h2("GET")),
    ("DELETE over HTTP/2", _h2("DELETE")),
]


@pytest.mark.parametrize("case,send", HIJACKS, ids=[c[0] for c in HIJACKS])
def test_session_hijack_by_another_identity_is_refused(gateway, upstream, svids, ts_session, case, send):
    """agent-b learned the agent's Mcp-Session-Id (a log, a proxy, a shared
    cache) and presents it with its own valid SVID: to read the agent's
    server stream, to act inside its session, or to end it (DELETE). Sessions
    are bound to the SPIFFE ID that opened them: 404, -32065,
    session_not_owned, audited with agent-b as caller and the session id,
    nothing reaches the upstream, and the agent's session is untouched."""
    b = svids["agent-b"]
    seen = len(upstream.requests())
    resp = send(gateway, b, ts_session)
    record = assert_refused(
        gateway, upstream, resp, status=404, code=-32065, reason="session_not_owned", seen=seen, caller=AGENT_B_ID
    )
    assert record["session_id"] == ts_session, record
    assert_session_works(gateway.port, svids["agent"], ts_session)


@pytest.fixture(scope="module")
def own_session(gateway, svids):
    """A raw 2025-11-25 session of the demo agent."""
    return open_session(gateway.port, svids["agent"])


SESSION_FORGERIES = [
    ("random id", lambda sid: uuid.uuid4().hex),
    ("owner's id upper-cased", lambda sid: sid.upper()),
    ("owner's id plus a character", lambda sid: sid + "0"),
    ("owner's id minus its last character", lambda sid: sid[:-1]),
    ("owner's id with an inner space", lambda sid: sid[:8] + " " + sid[8:]),
    ("owner's id twice, comma-joined", lambda sid: f"{sid}, {sid}"),
]


@pytest.mark.parametrize("method", ["POST", "GET", "DELETE"])
@pytest.mark.parametrize("case,forge", SESSION_FORGERIES, ids=[c[0] for c in SESSION_FORGERIES])
def test_invented_session_id_is_unknown(gateway, upstream, svids, own_session, case, forge, method):
    """A session id the gateway never saw issued (guessed, or a near miss of a
    real one: ids are compared exactly, no case folding, no trimming of the
    value's inside) is refused before anything is forwarded: 404, -32065,
    session_unknown. Forwarding it would let the upstream decide what an
    unknown session may do."""
    s = svids["agent"]
    forged = forge(own_session)
    assert forged != own_session
    seen = len(upstream.requests())
    if method == "POST":
        resp = list_tools(gateway.port, s, forged, timeout=5)
    else:
        resp = request(gateway.port, s, method=method, headers=session_headers(forged), accept="text/event-stream", timeout=5)
    record = assert_refused(
        gateway, upstream, resp, status=404, code=-32065, reason="session_unknown", seen=seen, caller=AGENT_ID
    )
    assert record["session_id"] == forged, record
    assert_session_works(gateway.port, s, own_session)


def test_session_is_unknown_after_the_owner_deletes_it(gateway, upstream, svids):
    """After the owner ends its session with DELETE, the id is dead: the
    owner's own reuse (POST and GET) and agent-b's are refused as
    session_unknown, and nothing more reaches the upstream for it (a gateway
    that kept the binding, or forwarded and let the upstream answer, would
    keep a dead session reachable)."""
    a, b = svids["agent"], svids["agent-b"]
    sid = open_session(gateway.port, a)
    assert_session_works(gateway.port, a, sid)
    ended = request(gateway.port, a, method="DELETE", headers=session_headers(sid), accept=None)
    assert ended.status in (200, 202, 204), ended
    seen = len(upstream.requests())
    assert upstream.requests()[-1]["http_method"] == "DELETE"

    for who, svid, caller in (("owner", a, AGENT_ID), ("agent-b", b, AGENT_B_ID)):
        r = list_tools(gateway.port, svid, sid, timeout=5)
        assert_refused(gateway, upstream, r, status=404, code=-32065, reason="session_unknown", seen=seen, caller=caller)
        g = request(gateway.port, svid, method="GET", headers=session_headers(sid), accept="text/event-stream", timeout=5)
        assert_refused(gateway, upstream, g, status=404, code=-32065, reason="session_unknown", seen=seen, caller=caller)
    assert_serving(gateway.port, a)


@pytest.mark.parametrize("method", ["POST", "DELETE"])
@pytest.mark.parametrize("pair", ["own twice", "own then victim's", "victim's then own"])
def test_two_session_headers_are_refused(gateway, upstream, svids, own_session, ts_session, pair, method):
    """Two Mcp-Session-Id headers: the attacker hopes the gateway checks one
    (its own) while the upstream uses the other (the victim's), or joins them.
    Any repeat is refused before the session check: 400, -32064,
    duplicate_header, nothing forwarded."""
    s = svids["agent-b"]
    mine, victim = open_session(gateway.port, s), ts_session
    ids = {
        "own twice": [mine, mine],
        "own then victim's": [mine, victim],
        "victim's then own": [victim, mine],
    }[pair]
    headers = [("Mcp-Session-Id", i) for i in ids] + [("MCP-Protocol-Version", V)]
    seen = len(upstream.requests())
    if method == "POST":
        resp = post(gateway.port, s, b'{"jsonrpc":"2.0","id":"dup","method":"tools/list"}', headers, timeout=5)
    else:
        resp = request(gateway.port, s, method="DELETE", headers=headers, accept=None, timeout=5)
    assert_refused(gateway, upstream, resp, status=400, code=-32064, reason="duplicate_header", seen=seen, caller=AGENT_B_ID)
    assert_session_works(gateway.port, svids["agent"], victim)
    assert_session_works(gateway.port, s, mine, lists_echo=False)


def test_sessions_are_bound_both_ways(gateway, upstream, svids):
    """Control: agent-b's own session works for agent-b, and the agent is
    refused in it exactly as agent-b is refused in the agent's. The refusals
    are about ownership, not about who is the more privileged identity."""
    a, b = svids["agent"], svids["agent-b"]
    sid_b = open_session(gateway.port, b)
    assert_session_works(gateway.port, b, sid_b, lists_echo=False)
    seen = len(upstream.requests())
    resp = list_tools(gateway.port, a, sid_b, timeout=5)
    record = assert_refused(
        gateway, upstream, resp, status=404, code=-32065, reason="session_not_owned", seen=seen, caller=AGENT_ID
    )
    assert record["session_id"] == sid_b
    assert_session_works(gateway.port, b, sid_b, lists_echo=False)


# ---------------------------------------------------------------------------
# 2025-03-26 batches: each element decided; only allowed elements forwarded
# ---------------------------------------------------------------------------


def batch_0326() -> tuple[bytes, dict[str, bytes]]:
    u = uuid.uuid4().hex[:8]
    elems = {
        "list": f'{{"jsonrpc":"2.0","id":"list-{u}","method":"tools/list"}}'.encode(),
        "del": (
            f'{{"jsonrpc":"2.0","id":"del-{u}","method":"tools/call",'
            f'"params":{{"name":"delete_repository","arguments":{{"repo":"acme/prod"}}}}}}'
        ).encode(),
        "echo": (
            f'{{"jsonrpc":"2.0","id":"echo-{u}","method":"tools/call",'
            f'"params":{{"name":"echo","arguments":{{"text":"batched"}}}}}}'
        ).encode(),
    }
    return b"[" + b", ".join(elems.values()) + b"]", elems


def _id(elem: bytes) -> str:
    return json.loads(elem)["id"]


VERSION_HEADER = pytest.mark.parametrize("send_version_header", [True, False], ids=["with-header", "no-header"])


def _send_batch(gateway, svid, send_version_header: bool):
    sid = open_session(gateway.port, svid, "2025-03-26")
    body, elems = batch_0326()
    headers = [("Mcp-Session-Id", sid)]
    if send_version_header:
        headers.append(("MCP-Protocol-Version", "2025-03-26"))
    return post(gateway.port, svid, body, headers, timeout=15), elems


@VERSION_HEADER
def test_2025_03_26_batch_forwards_only_allowed_elements(gateway, upstream, svids, send_version_header):
    """A 2025-03-26 batch of [tools/list (allowed), tools/call
    delete_repository (forbidden), tools/call echo (allowed)]: an attacker
    hides the forbidden call between two allowed ones. Each element is
    decided on its own: the delete is answered with -32060 under its own id
    (audited as a forbid by nobody-deletes-repos) and never forwarded; the
    upstream receives one batch of exactly the two allowed elements, as sent."""
    a = svids["agent"]
    seen = len(upstream.requests())
    resp, elems = _send_batch(gateway, a, send_version_header)
    new = [r for r in upstream.requests()[seen:] if r["http_method"] == "POST"]
    batches = [r for r in new if isinstance(r.get("body"), list)]
    assert not [r for r in new if "delete_repository" in json.dumps(r)], new
    assert len(batches) == 1, f"expected one forwarded batch, upstream got: {new}\nreply: {resp!r}"
    assert batches[0]["body"] == [json.loads(elems["list"]), json.loads(elems["echo"])], batches[0]

    answers = {m.get("id"): m for m in resp.messages() if isinstance(m, dict)}
    deny = answers.get(_id(elems["del"]))
    assert deny and deny["error"]["code"] == -32060, resp
    correlation = deny["error"]["data"]["correlation_id"]
    records = gateway.wait_audit(lambda r: r["correlation_id"] == correlation)
    record = next(r for r in records if r["correlation_id"] == correlation)
    assert record["decision"] == "deny" and record["reason"] == "forbid", record
    assert record["target"] == "delete_repository" and record["policy_ids"] == ["nobody-deletes-repos"]
    for key in ("list", "echo"):
        gateway.wait_audit(lambda r, k=key: r.get("request_id") == _id(elems[k]) and r["decision"] == "allow")


# That every id of a partly forwarded batch is answered exactly once is shown
# in test_batch_e2e.py against a server that accepts batches: this upstream
# (Python SDK 2.x) refuses every batch with HTTP 400.
