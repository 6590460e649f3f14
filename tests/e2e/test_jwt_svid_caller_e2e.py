"""JWT-SVID as the caller credential (`listener.jwt_svid_callers`), end to
end with tokens fetched from the real SPIRE Workload API.

The client has a TLS config that trusts the example.org bundle and has no
client certificate: the handshake authenticates the gateway only, and every
request carries `Authorization: Bearer <JWT-SVID>`. The caller is the
token's subject, decided by the same policies (`Mcp::Workload::"<sub>"`).

- The demo agent's JWT-SVID on the real Python and TypeScript MCP SDKs: `echo` allowed,
  `delete_repository` denied; the token never reaches the upstream.
- A session opened with one identity's token is refused to another's.
- No token, garbage, a wrong audience, an expired token: 401 with the
  JSON-RPC error -32066, an audit record (reason `caller_token`), nothing
  forwarded.
- Certificate callers on the same listener are unchanged: every bad leaf is
  still refused at the handshake, and a valid certificate is the identity
  even when a bearer token of another workload comes along.
- Off by default: without the option, no client certificate, no handshake.
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl
import time

import pytest

from conftest import AGENT_B_ID, AGENT_ID, GATEWAY_ID, SERVER_ID
from gateway_fixtures import start_gateway
from mcp_fixtures import run_py_agent, run_ts_agent
from raw_http import PROBE, PROBE_HEADERS, Resp
from test_federation_e2e import refused_at_handshake
from helpers import DELETE, ECHO, assert_denied, bad_leaves, call, tool_calls
from polling import wait_for
from test_sessions_e2e import INITIALIZED, V, init_body, session_headers

SHORT_ID = "spiffe://example.org/ns/jwt/sa/short-lived"


def token_post(port: int, ca, token: str | None, body: bytes, headers=()) -> Resp:
    """One HTTP/1.1 POST over TLS without a client certificate, with the
    token as `Authorization: Bearer` (none if token is None)."""
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.check_hostname = False
    ctx.set_alpn_protocols(["http/1.1"])
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=15)
    try:
        conn.putrequest("POST", "/mcp", skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", "localhost")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Accept", "application/json, text/event-stream")
        if token is not None:
            conn.putheader("Authorization", f"Bearer {token}")
        for k, v in headers:
            conn.putheader(k, v)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        r = conn.getresponse()
        return Resp(r.status, list(r.getheaders()), r.read())
    finally:
        conn.close()


def claims(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


@pytest.fixture(scope="module")
def jwt_gateway(spire, upstream, tmp_path_factory):
    gw = start_gateway(
        tmp_path_factory.mktemp("jwt-gateway"),
        spire.endpoint,
        upstream.url,
        SERVER_ID,
        hint="gateway",
        listener_extra=["  jwt_svid_callers: {}"],
    )
    try:
        gw.wait_ready()
        yield gw
    finally:
        gw.stop()


@pytest.fixture(scope="module")
def ca(svids):
    return svids["agent"].bundle


@pytest.fixture(scope="module")
def agent_token(spire, jwt_gateway, ca):
    """The demo agent's JWT-SVID for the gateway's SPIFFE ID (the default
    audience), once the gateway has its JWT bundles: it loads them in the
    background and refuses (401) every token until then, never allows early."""
    token = spire.fetch_jwt(AGENT_ID, GATEWAY_ID)
    wait_for(
        "the gateway to accept a valid JWT-SVID",
        lambda: token_post(jwt_gateway.port, ca, token, PROBE, PROBE_HEADERS).status != 401,
        30,
        every=0.2,
    )
    return token


def test_off_by_default_no_certificate_no_handshake(gateway, ca):
    assert refused_at_handshake(gateway.port, ca, None, None)


@pytest.mark.parametrize("sdk", ["python", "typescript"])
def test_sdk_client_without_certificate_allowed_and_denied(sdk, jwt_gateway, agent_token, upstream, ca):
    gw = jwt_gateway
    before = len(tool_calls(upstream, "echo"))
    run_agent = run_py_agent if sdk == "python" else run_ts_agent
    run = run_agent(gw.url, None, None, ca, calls=[ECHO, DELETE], headers=[f"Authorization: Bearer {agent_token}"])
    assert not run.connect_error, run.stdout + run.stderr
    assert call(run, ECHO)["ok"] is True, run.stdout
    denied = assert_denied(call(run, DELETE), gw)
    assert denied["caller"] == AGENT_ID and denied["policy_ids"] == ["nobody-deletes-repos"], denied
    assert len(tool_calls(upstream, "echo")) == before + 1
    assert not tool_calls(upstream, "delete_repository")
    if sdk == "typescript":  # 2025-11-25: a session, owned by the token's subject
        assert run.negotiated["session_id"], run.stdout
    records = gw.wait_audit(lambda r: r.get("target") == "echo" and r["caller"] == AGENT_ID)
    assert [r for r in records if r.get("target") == "echo"][-1]["decision"] == "allow"
    # The token is for the gateway: never passed on.
    assert not any("authorization" in r["headers"] for r in upstream.requests())


def test_a_session_belongs_to_the_token_identity(spire, jwt_gateway, agent_token, ca):
    gw = jwt_gateway
    opened = token_post(gw.port, ca, agent_token, init_body(V))
    assert opened.status == 200, opened
    sid = opened.header("mcp-session-id")
    assert sid, opened
    done = token_post(gw.port, ca, agent_token, INITIALIZED, session_headers(sid))
    assert done.status == 202, done

    other = spire.fetch_jwt(AGENT_B_ID, GATEWAY_ID)
    ping = json.dumps({"jsonrpc": "2.0", "id": "p1", "method": "ping"}).encode()
    stolen = token_post(gw.port, ca, other, ping, session_headers(sid))
    assert stolen.status == 404, stolen
    owner = token_post(gw.port, ca, agent_token, ping, session_headers(sid))
    assert owner.status == 200 and owner.json()["result"] == {}, owner


def test_bad_or_missing_tokens_are_refused_with_401_and_audited(spire, jwt_gateway, agent_token, upstream, ca):
    gw = jwt_gateway
    entry = spire.register(SHORT_ID, "jwt-short", jwt_ttl=8)
    try:
        short = spire.fetch_jwt(SHORT_ID, GATEWAY_ID)
    finally:
        spire.delete_entry(entry)  # the token stays valid until its exp
    expires = claims(short)["exp"]
    # Control: accepted while valid (the policies permit this workload
    # nothing, so it is denied, not refused: a 403, never a 401).
    assert token_post(gw.port, ca, short, PROBE, PROBE_HEADERS).status != 401
    # Idles past the token's exp (wall-clock time, no event to wait on).
    time.sleep(max(0.0, expires + 1 - time.time()))

    wrong_audience = spire.fetch_jwt(AGENT_ID, "spiffe://example.org/ns/demo/sa/someone-else")
    header, payload, _sig = agent_token.split(".")
    cases = {
        "no token": None,
        "garbage": "not.a.jwt",
        "wrong audience": wrong_audience,
        "expired": short,
        "bad signature": f"{header}.{payload}.{'A' * 86}",
    }
    seen = len(upstream.requests())
    for n, (case, token) in enumerate(cases.items(), start=1):
        r = token_post(gw.port, ca, token, PROBE, PROBE_HEADERS)
        assert r.status == 401, (case, r)
        err = r.json()["error"]
        assert err["code"] == -32066 and "caller token" in err["message"], (case, err)
        correlation = err["data"]["correlation_id"]
        records = gw.wait_audit(lambda rec: rec["correlation_id"] == correlation)
        record = next(rec for rec in records if rec["correlation_id"] == correlation)
        assert record["decision"] == "deny" and record["reason"] == "caller_token", (case, record)
        assert record["caller"] == "", (case, record)
    assert len(upstream.requests()) == seen, "a refused request reached the upstream"

    # The real SDK sees the refusal as an HTTP 401 too.
    run = run_py_agent(gw.url, None, None, ca, calls=[ECHO], headers=["Authorization: Bearer not.a.jwt"])
    err = run.connect_error or call(run, ECHO)["error"]
    assert err.get("http_status") == 401, run.stdout


def test_certificate_callers_are_unchanged(spire, jwt_gateway, agent_token, svids, tmp_path, ca):
    """With the option on, a certificate still authenticates the connection
    on its own: every bad leaf the mTLS-only listener refuses is refused, and
    a valid certificate is the caller even with another workload's token."""
    gw = jwt_gateway
    s = svids["agent"]
    assert not refused_at_handshake(gw.port, ca, s.cert, s.key)
    for case, (cert, key) in bad_leaves(spire, tmp_path).items():
        assert refused_at_handshake(gw.port, ca, cert, key), case

    b_token = spire.fetch_jwt(AGENT_B_ID, GATEWAY_ID)
    run = run_py_agent(gw.url, s.cert, s.key, ca, calls=[ECHO], headers=[f"Authorization: Bearer {b_token}"])
    assert call(run, ECHO)["ok"] is True, run.stdout  # agent-b may call no tool: the cert decided
    records = gw.wait_audit(lambda r: r.get("target") == "echo" and r["caller"] == AGENT_ID)
    assert not any(r["caller"] == AGENT_B_ID and r.get("target") == "echo" for r in records)
