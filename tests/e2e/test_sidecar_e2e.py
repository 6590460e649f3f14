"""The server-sidecar role, attacked end to end: the gateway terminates mTLS
(real SPIRE SVIDs) in front of an MCP server that speaks plain HTTP on
127.0.0.1 and has no identity of its own. The gateway is then the server's
only defence, so the same guarantees must hold: the real Python and
TypeScript SDK agents get echo and are refused delete_repository in one
session, a session cannot be used by another identity, identity headers do
not reach the server, and nothing refused reaches the server's request log.
"""

from __future__ import annotations

import json

import pytest

from conftest import AGENT_B_ID, AGENT_ID, SERVER_ID
from gateway_fixtures import start_gateway
from mcp_fixtures import run_py_agent, run_ts_agent, start_upstream
from raw_http import PROBE, PROBE_HEADERS, assert_refused, assert_serving, curl, post, request
from helpers import DELETE, ECHO, WEATHER, assert_denied, call, tool_calls
from test_sessions_e2e import INITIALIZED, assert_session_works, session_headers


@pytest.fixture(scope="module")
def plain_upstream(tmp_path_factory):
    """The MCP server on plain HTTP, loopback only (no TLS, no client certificate)."""
    log = tmp_path_factory.mktemp("sidecar-upstream") / "requests.jsonl"
    up = start_upstream(host="127.0.0.1", plain=True, request_log=log)
    yield up
    up.stop()


@pytest.fixture(scope="module")
def sidecar(spire, plain_upstream, tmp_path_factory):
    """The gateway as the server's sidecar: plaintext_loopback to the server,
    which is configured with the server's SPIFFE ID (the workload it stands for)."""
    gw = start_gateway(
        tmp_path_factory.mktemp("sidecar"),
        spire.endpoint,
        f"http://127.0.0.1:{plain_upstream.port}/mcp",
        SERVER_ID,
        hint="gateway",
        plaintext=True,
    )
    try:
        gw.wait_ready()
        yield gw
    finally:
        gw.stop()


@pytest.mark.parametrize("sdk", ["python", "typescript"])
def test_sidecar_sdk_allowed_and_denied_in_one_session(sdk, sidecar, plain_upstream, svids):
    """The seed test through the sidecar: the same identity, in one session,
    gets echo and get_weather through to the plain-HTTP server and is refused
    delete_repository, which never reaches it; the audit log names the
    forbid policy and the server's SPIFFE ID."""
    s = svids["agent"]
    before = len(tool_calls(plain_upstream, "delete_repository"))
    runner = run_py_agent if sdk == "python" else run_ts_agent
    run = runner(sidecar.url, s.cert, s.key, s.bundle, calls=[ECHO, DELETE, WEATHER])
    assert run.negotiated, run.stdout + run.stderr
    assert run.protocol_version == ("2026-07-28" if sdk == "python" else "2025-11-25")

    echo = call(run, ECHO)
    assert echo["ok"] is True, echo
    assert "hello through the gateway" in json.dumps(echo["result"])
    assert call(run, WEATHER)["ok"] is True

    deny = assert_denied(call(run, DELETE), sidecar)
    assert deny["caller"] == AGENT_ID and deny["target"] == "delete_repository"
    assert deny["policy_ids"] == ["nobody-deletes-repos"]
    assert deny["upstream_spiffe_id"] == SERVER_ID

    assert len(tool_calls(plain_upstream, "delete_repository")) == before, "denied call reached the server"
    assert tool_calls(plain_upstream, "echo"), "the allowed echo did not reach the server"
    # The server was reached over plain HTTP on loopback, by the gateway only.
    last = plain_upstream.requests()[-1]
    assert last["scheme"] == "http" and last["tls"] is None, last
    if sdk == "typescript":
        allows = [r for r in sidecar.audit() if r["decision"] == "allow" and r["target"] == "echo"]
        assert allows and allows[-1]["session_id"] == deny["session_id"] and deny["session_id"]


@pytest.fixture(scope="module")
def sidecar_session(sidecar, svids):
    """A session opened through the sidecar by the real TypeScript SDK agent."""
    s = svids["agent"]
    run = run_ts_agent(sidecar.url, s.cert, s.key, s.bundle, calls=["list"])
    assert run.negotiated and run.negotiated["session_id"], run.stdout + run.stderr
    return run.negotiated["session_id"]


HIJACKS = [
    ("POST tools/list", "POST", b'{"jsonrpc":"2.0","id":"hj","method":"tools/list"}'),
    ("POST notification", "POST", INITIALIZED),
    ("GET stream", "GET", None),
    ("DELETE", "DELETE", None),
]


@pytest.mark.parametrize("case,method,body", HIJACKS, ids=[c[0] for c in HIJACKS])
def test_sidecar_session_hijack_is_refused(sidecar, plain_upstream, svids, sidecar_session, case, method, body):
    """agent-b presents the agent's session id through the sidecar. A plain
    server cannot tell callers apart (it sees only the gateway), so the
    binding is the gateway's alone: 404, -32065, session_not_owned, nothing
    reaches the server, and the agent's session still works."""
    b = svids["agent-b"]
    seen = len(plain_upstream.requests())
    if method == "POST":
        resp = post(sidecar.port, b, body, session_headers(sidecar_session), timeout=5)
    else:
        resp = request(sidecar.port, b, method=method, headers=session_headers(sidecar_session), accept="text/event-stream", timeout=5)
    record = assert_refused(
        sidecar, plain_upstream, resp, status=404, code=-32065, reason="session_not_owned", seen=seen, caller=AGENT_B_ID
    )
    assert record["session_id"] == sidecar_session
    assert_session_works(sidecar.port, svids["agent"], sidecar_session)


def test_sidecar_unknown_session_is_refused(sidecar, plain_upstream, svids):
    """An invented session id through the sidecar: 404, session_unknown,
    nothing reaches the plain server (which would otherwise answer it)."""
    s = svids["agent"]
    seen = len(plain_upstream.requests())
    resp = post(sidecar.port, s, b'{"jsonrpc":"2.0","id":"u","method":"tools/list"}', session_headers("0" * 32), timeout=5)
    assert_refused(sidecar, plain_upstream, resp, status=404, code=-32065, reason="session_unknown", seen=seen)


@pytest.mark.parametrize("http2", [False, True], ids=["http1", "http2"])
def test_sidecar_strips_identity_headers(sidecar, plain_upstream, svids, http2):
    """A plain server behind a sidecar is exactly the kind that trusts
    X-Forwarded-Client-Cert or X-Spiffe-Id from "its" proxy. None of them,
    sent by the caller, may reach it, over HTTP/1.1 or HTTP/2."""
    s = svids["agent"]
    seen = len(plain_upstream.requests())
    spoofed = [
        ("X-Forwarded-Client-Cert", "URI=spiffe://example.org/ns/demo/sa/admin"),
        ("X-Spiffe-Id", "spiffe://example.org/ns/demo/sa/admin"),
        ("Forwarded", "for=10.0.0.1"),
        ("X-Forwarded-For", "10.0.0.1"),
        ("X-Real-IP", "10.0.0.1"),
    ]
    if http2:
        resp = curl(sidecar.url, s, PROBE, [*PROBE_HEADERS, *spoofed], http2=True)
        assert resp.http_version == "2"
    else:
        resp = post(sidecar.port, s, PROBE, [*PROBE_HEADERS, *spoofed])
    assert resp.status == 200 and "result" in resp.json(), resp
    new = plain_upstream.requests()[seen:]
    assert new, "the allowed probe did not reach the server"
    for req in new:
        assert not set(req["headers"]) & {k.lower() for k, _ in spoofed}, req["headers"]


def test_sidecar_refuses_a_smuggled_delete(sidecar, plain_upstream, svids):
    """The escaped and the header-mismatched delete through the sidecar: both
    refused (forbid after unescaping; 400 header_mismatch), neither reaches
    the plain server, and the sidecar keeps serving."""
    s = svids["agent"]
    seen = len(plain_upstream.requests())
    escaped = rb'{"jsonrpc":"2.0","id":"esc","method":"tools\/call","params":{"name":"delete\u005frepository","arguments":{"repo":"acme/prod"}}}'
    r = post(sidecar.port, s, escaped)
    rec = assert_refused(sidecar, plain_upstream, r, status=200, code=-32060, reason="forbid", seen=seen, reply_id="esc")
    assert rec["target"] == "delete_repository" and rec["policy_ids"] == ["nobody-deletes-repos"]
    modern = (
        b'{"jsonrpc":"2.0","id":"mm","method":"tools/call","params":{"name":"delete_repository","arguments":{"repo":"x"},'
        b'"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}'
    )
    r = post(sidecar.port, s, modern, [("MCP-Protocol-Version", "2026-07-28"), ("Mcp-Method", "tools/call"), ("Mcp-Name", "echo")])
    assert_refused(sidecar, plain_upstream, r, status=400, code=-32020, reason="header_mismatch", seen=seen)
    assert_serving(sidecar.port, s)
