"""The client-sidecar role end to end: an agent with no TLS configuration at
all talks plain HTTP to the sidecar's loopback listener
(`listener.plaintext_loopback: true`); the sidecar holds the agent's SVID
(Workload API, hint "agent"), decides with its own policies, and forwards
over mTLS with that SVID to the central gateway, which reaches the real
server-everything through the server sidecar:

    agent --plain, 127.0.0.1--> client sidecar --mTLS (agent's SVID)--> gateway
          --mTLS--> server sidecar --plain, 127.0.0.1--> server-everything

The central gateway sees the agent's SPIFFE ID and refuses the forbidden tool
by policy. Attacks on the loopback listener: a non-loopback bind is refused
at start; a foreign Host (DNS rebinding) or Origin (a cross-origin page) is
refused with 403 and audited, and reaches nothing.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import os
import subprocess
import time

import pytest

from conftest import AGENT_B_ID, AGENT_ID, GATEWAY_ID, SERVER_ID
from everything_fixtures import (  # noqa: F401 (fixtures)
    EVERYTHING_ID,
    EXAMPLE_POLICIES,
    central,
    everything,
    everything_entry,
    server_sidecar,
    tool_records,
)
from gateway_fixtures import Gateway, gateway_bin, start_gateway, start_ready_gateway, write_config
from mcp_fixtures import run_py_agent, run_ts_agent
from raw_http import PROBE, PROBE_HEADERS, post
from helpers import assert_denied, call
from polling import wait_for
from test_sessions_e2e import session_headers

ECHO = 'echo:{"message":"no TLS on this side"}'
GET_ENV = "get-env"
PLAIN = ["  plaintext_loopback: true"]
INITIALIZE = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "raw", "version": "0"},
        },
    }
).encode()


def start_client_sidecar(run_dir, spire, central: Gateway, policy_dir) -> Gateway:
    return start_ready_gateway(
        run_dir,
        spire.endpoint,
        central.url,
        GATEWAY_ID,
        hint="agent",
        name="gateway",
        policy_dir=policy_dir,
        listener_extra=PLAIN,
    )


@pytest.fixture(scope="module")
def client_sidecar(spire, central, tmp_path_factory):
    """The client sidecar beside the agent: the agent's SVID, the shipped
    client-sidecar policies, the central gateway as its mTLS upstream."""
    gw = start_client_sidecar(
        tmp_path_factory.mktemp("client-sidecar"), spire, central, EXAMPLE_POLICIES / "client-sidecar"
    )
    yield gw
    gw.stop()


def plain_url(gw: Gateway, host: str = "127.0.0.1") -> str:
    return f"http://{host}:{gw.port}/mcp"


def plain_post(gw: Gateway, body: bytes, headers: dict[str, str]) -> tuple[int, dict, dict[str, str]]:
    """A POST on the loopback listener with exactly these headers (Host
    included); returns status, the JSON-RPC answer (JSON or last SSE event)
    and the response headers (lowercase names)."""
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    try:
        conn.putrequest("POST", "/mcp", skip_host=True, skip_accept_encoding=True)
        base = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        for k, v in {**base, **headers}.items():
            conn.putheader(k, v)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        raw = resp.read()
        resp_headers = {k.lower(): v for k, v in resp.getheaders()}
        if "text/event-stream" in resp_headers.get("content-type", ""):
            data = [line[5:].strip() for line in raw.decode().splitlines() if line.startswith("data:")]
            return resp.status, json.loads(data[-1]), resp_headers
        return resp.status, json.loads(raw) if raw else {}, resp_headers
    finally:
        conn.close()


@pytest.mark.parametrize("sdk", ["python", "typescript"])
def test_agent_without_tls_reaches_echo_and_is_refused_get_env(sdk, client_sidecar, central, server_sidecar):
    """The real SDK client, given only an http:// URL (no certificate, key or
    CA): echo is answered by server-everything three hops away; get-env is
    refused by the central gateway's forbid policy, whose audit record names
    the agent's SPIFFE ID, which only the client sidecar's mTLS could have
    given it. The sidecar's own audit shows both calls passed its policy as
    the agent, and the server sidecar never saw get-env."""
    seen_at_server_sidecar = len(tool_records(server_sidecar, GET_ENV))
    runner = run_py_agent if sdk == "python" else run_ts_agent
    run = runner(plain_url(client_sidecar), calls=[ECHO, GET_ENV])
    assert run.negotiated, run.stdout + run.stderr
    assert run.protocol_version == "2025-11-25", run.negotiated
    assert run.negotiated["server_info"]["name"] == "mcp-servers/everything", run.negotiated

    echo = call(run, ECHO)
    assert echo["ok"] is True, echo
    assert "Echo: no TLS on this side" in json.dumps(echo["result"]), echo

    # The refusal comes from the central gateway: its correlation id is there.
    deny = assert_denied(call(run, GET_ENV), central)
    assert deny["caller"] == AGENT_ID, deny
    assert deny["policy_ids"] == ["nobody-reads-the-environment"], deny
    assert deny["upstream_spiffe_id"] == EVERYTHING_ID, deny
    echo_at_central = [r for r in tool_records(central, "echo") if r["decision"] == "allow"]
    assert echo_at_central and echo_at_central[-1]["caller"] == AGENT_ID

    # At the client sidecar the caller is the agent too (its own SVID), and
    # both calls were allowed by the shipped client-sidecar policy.
    for tool in ("echo", GET_ENV):
        local = tool_records(client_sidecar, tool)
        assert local and local[-1]["decision"] == "allow", (tool, local)
        assert local[-1]["caller"] == AGENT_ID and local[-1]["upstream_spiffe_id"] == GATEWAY_ID, local[-1]
        assert local[-1]["policy_ids"] == ["agent-uses-the-gateway"], local[-1]

    server_sidecar.wait_audit(lambda r: r.get("target") == "echo" and r["caller"] == GATEWAY_ID)
    assert len(tool_records(server_sidecar, GET_ENV)) == seen_at_server_sidecar, "get-env reached the server sidecar"


def test_session_opened_through_the_sidecar_belongs_to_the_agent(client_sidecar, central, svids):
    """The client certificate the central gateway verified is the agent's
    SVID: a session opened by a plain request through the sidecar is bound at
    the central gateway to the agent's SPIFFE ID. The agent holds the
    sidecar's sealed id (the sidecar holds the central's, sealed in it), so
    agent-b, presenting that id with its own SVID at the central gateway,
    finds no session there (404, session_unknown) and nothing is forwarded."""
    status, body, headers = plain_post(client_sidecar, INITIALIZE, {"Host": f"127.0.0.1:{client_sidecar.port}"})
    assert status == 200 and body["result"]["serverInfo"]["name"] == "mcp-servers/everything", body
    sid = headers.get("mcp-session-id")
    assert sid, headers
    resp = post(central.port, svids["agent-b"], b'{"jsonrpc":"2.0","id":"hj","method":"tools/list"}', session_headers(sid))
    assert resp.status == 404 and resp.json()["error"]["code"] == -32065, resp
    central.wait_audit(
        lambda r: r["caller"] == AGENT_B_ID and r["reason"] == "session_unknown" and r["session_id"] == sid
    )


REBINDING = [
    ("rebound name", {"Host": "evil.example:{port}"}, "foreign_host"),
    ("rebound name without port", {"Host": "evil.example"}, "foreign_host"),
    ("name under localhost", {"Host": "evil.localhost:{port}"}, "foreign_host"),
    ("any-interface IP", {"Host": "0.0.0.0:{port}"}, "foreign_host"),
    ("cross-origin page", {"Host": "127.0.0.1:{port}", "Origin": "http://evil.example"}, "foreign_origin"),
    ("rebound page, its own origin", {"Host": "evil.example:{port}", "Origin": "http://evil.example:{port}"}, "foreign_host"),
    ("sandboxed page", {"Host": "localhost:{port}", "Origin": "null"}, "foreign_origin"),
]


@pytest.mark.parametrize("case,headers,reason", REBINDING, ids=[c[0] for c in REBINDING])
def test_browser_requests_are_refused(client_sidecar, central, case, headers, reason):
    """What a web page can make a browser send to a loopback port: a Host
    that is not a loopback name (DNS rebinding) or a foreign Origin. 403,
    -32064 with a clear message, an audit record naming the reason, and
    nothing reaches the central gateway."""
    headers = {k: v.format(port=client_sidecar.port) for k, v in headers.items()}
    seen = len(central.audit())
    status, body, _ = plain_post(client_sidecar, INITIALIZE, headers)
    assert status == 403, (status, body)
    assert body["error"]["code"] == -32064, body
    assert ("Host" if reason == "foreign_host" else "Origin") in body["error"]["message"], body
    correlation = body["error"]["data"]["correlation_id"]
    records = client_sidecar.wait_audit(lambda r: r["correlation_id"] == correlation)
    record = next(r for r in records if r["correlation_id"] == correlation)
    assert record["decision"] == "deny" and record["reason"] == reason, record
    assert record["caller"] == AGENT_ID, record
    assert len(central.audit()) == seen, "a refused request reached the central gateway"


def test_local_origin_and_names_are_served(client_sidecar):
    """The guard refuses browsers, not local clients: Host localhost or a
    loopback IP, and a page served from a loopback origin, pass."""
    for headers in (
        {"Host": f"localhost:{client_sidecar.port}"},
        {"Host": f"127.0.0.1:{client_sidecar.port}", "Origin": "http://localhost:3000"},
    ):
        status, body, _ = plain_post(client_sidecar, INITIALIZE, headers)
        assert status == 200 and "result" in body, (headers, status, body)


@pytest.mark.parametrize("address", ["0.0.0.0:0", "[::]:0"])
def test_non_loopback_bind_is_refused_at_start(spire, central, tmp_path, address):
    """`plaintext_loopback` on an address other than a loopback IP: the
    process exits before binding anything, naming the field."""
    config = write_config(tmp_path, spire.endpoint, central.url, GATEWAY_ID, hint="agent", name="gateway")
    text = config.read_text().replace('  address: "127.0.0.1:0"\n', f'  address: "{address}"\n  plaintext_loopback: true\n', 1)
    config.write_text(text)
    proc = subprocess.run(
        [str(gateway_bin()), "serve", "--config", str(config)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode != 0, proc.stderr
    assert "listener.address" in proc.stderr and "loopback" in proc.stderr, proc.stderr
    assert "gateway listening" not in proc.stderr, proc.stderr


def test_deny_by_default_at_the_client_sidecar(spire, central, tmp_path):
    """A client sidecar whose policy directory has the schema and no policy:
    the agent cannot even open a session, and the central gateway hears
    nothing of it."""
    policy_dir = tmp_path / "policies"
    policy_dir.mkdir()
    (policy_dir / "mcp.cedarschema").write_text((EXAMPLE_POLICIES / "client-sidecar" / "mcp.cedarschema").read_text())
    gw = start_client_sidecar(tmp_path / "run", spire, central, policy_dir)
    try:
        seen = len(central.audit())
        run = run_ts_agent(plain_url(gw), calls=[ECHO])
        assert run.negotiated is None and run.connect_error, run.stdout + run.stderr
        assert run.connect_error["code"] == -32060, run.connect_error
        records = gw.wait_audit(lambda r: r.get("method") == "initialize")
        init = next(r for r in records if r.get("method") == "initialize")
        assert init["decision"] == "deny" and init["reason"] == "default_deny", init
        assert init["caller"] == AGENT_ID, init
        assert len(central.audit()) == seen, "a request refused by the sidecar reached the gateway"
    finally:
        gw.stop()


def test_identity_follows_the_sidecars_svid_past_its_first_expiry(spire, central, tmp_path):
    """The caller identity and the client certificate are the sidecar's
    current SVID, not the one it started with: with a 60 s SVID (SPIRE
    rotates at about half of it), an agent without TLS is served before the
    rotation and again after the first SVID's notAfter, without a restart;
    the central gateway, which accepts no expired certificate, sees the
    agent's SPIFFE ID both times; and a session opened after the rotation
    outlives the first SVID (the sidecar's requests moved to connections
    presenting the new SVID; the session belongs to the SPIFFE ID)."""
    # A second entry for the agent's SPIFFE ID (another selector, so SPIRE
    # accepts it), with a short TTL; its hint picks it.
    entry = spire.register(AGENT_ID, "agent-short-lived", ttl=60, selector=f"unix:gid:{os.getgid()}")
    gw = start_gateway(
        tmp_path / "run",
        spire.endpoint,
        central.url,
        GATEWAY_ID,
        hint="agent-short-lived",
        name="gateway",
        policy_dir=EXAMPLE_POLICIES / "client-sidecar",
        listener_extra=PLAIN,
    )
    try:
        gw.wait_ready()
        first_not_after = gw.metric("mcp_gateway_svid_expiry_timestamp_seconds")
        assert 0 < first_not_after - time.time() <= 61, first_not_after
        before = run_py_agent(plain_url(gw), calls=[ECHO])
        assert call(before, ECHO)["ok"] is True, before.stdout + before.stderr

        # Rotation is an event in the sidecar, with no signal: poll for it.
        def rotated() -> bool:
            assert gw.proc.poll() is None, gw.log()
            return gw.metric("mcp_gateway_svid_rotations_total") >= 1

        wait_for("a rotation", rotated, 150, every=0.5)
        # A session opened after the rotation, before the first SVID expires:
        # it must outlive the first SVID (the sidecar's pool moved to
        # connections presenting the new one).
        assert time.time() < first_not_after - 3, "rotated too late to open a session before expiry"
        straddling = open_session(gw)
        # Idles past the first SVID's notAfter (wall-clock time: the expiry is under test).
        time.sleep(max(0.0, first_not_after + 2 - time.time()))
        assert gw.metric("mcp_gateway_svid_expiry_timestamp_seconds") > first_not_after

        after = run_py_agent(plain_url(gw), calls=[ECHO])
        assert call(after, ECHO)["ok"] is True, after.stdout + after.stderr
        late = [
            r
            for r in tool_records(central, "echo")
            if r["decision"] == "allow"
            and dt.datetime.fromisoformat(r["time"].replace("Z", "+00:00")).timestamp() > first_not_after
        ]
        assert late and all(r["caller"] == AGENT_ID for r in late), late[-3:]
        local = [r for r in tool_records(gw, "echo") if r["decision"] == "allow"]
        assert len(local) == 2 and all(r["caller"] == AGENT_ID for r in local), local
        status, body, _ = plain_post(gw, LIST, session_in(gw, straddling))
        assert status == 200 and "result" in body, (status, body)
    finally:
        gw.stop()
        spire.delete_entry(entry)


LIST = b'{"jsonrpc":"2.0","id":"l","method":"tools/list"}'


def session_in(gw: Gateway, sid: str) -> dict[str, str]:
    return {"Host": f"127.0.0.1:{gw.port}", "Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-11-25"}


def open_session(gw: Gateway) -> str:
    """initialize + initialized + one tools/list through the sidecar; the session id."""
    status, body, headers = plain_post(gw, INITIALIZE, {"Host": f"127.0.0.1:{gw.port}"})
    assert status == 200 and "result" in body, (status, body)
    sid = headers["mcp-session-id"]
    status, _, _ = plain_post(gw, b'{"jsonrpc":"2.0","method":"notifications/initialized"}', session_in(gw, sid))
    assert status == 202, status
    status, body, _ = plain_post(gw, LIST, session_in(gw, sid))
    assert status == 200 and "result" in body, (status, body)
    return sid


def h2c_post(gw: Gateway, authority: str, body: bytes) -> tuple[str, int, dict]:
    """curl, HTTP/2 with prior knowledge (h2c), with this `:authority` (curl
    sends a Host header as `:authority` over HTTP/2)."""
    proc = subprocess.run(
        [
            "curl", "-sS", "--http2-prior-knowledge", "--max-time", "10",
            "-H", f"Host: {authority}",
            "-H", "Content-Type: application/json",
            "-H", "Accept: application/json, text/event-stream",
            "--data-binary", "@-",
            "-w", "\\n%{http_version} %{http_code}",
            plain_url(gw),
        ],
        input=body, capture_output=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    text, _, tail = proc.stdout.decode().rpartition("\n")
    version, code = tail.split()
    data = [line[5:].strip() for line in text.splitlines() if line.startswith("data:")]
    return version, int(code), json.loads(data[-1] if data else text)


def test_http2_prior_knowledge_authority_is_checked(client_sidecar, central):
    """Over HTTP/2 (h2c) the host is `:authority`: a loopback one is served,
    a rebound name is refused (403, foreign_host) and reaches nothing."""
    version, status, body = h2c_post(client_sidecar, f"127.0.0.1:{client_sidecar.port}", INITIALIZE)
    assert (version, status) == ("2", 200) and "result" in body, (version, status, body)
    seen = len(central.audit())
    version, status, body = h2c_post(client_sidecar, f"evil.example:{client_sidecar.port}", INITIALIZE)
    assert (version, status) == ("2", 403) and body["error"]["code"] == -32064, (version, status, body)
    correlation = body["error"]["data"]["correlation_id"]
    records = client_sidecar.wait_audit(lambda r: r["correlation_id"] == correlation)
    assert next(r for r in records if r["correlation_id"] == correlation)["reason"] == "foreign_host"
    assert len(central.audit()) == seen


@pytest.fixture(scope="module")
def sidecar_to_recording_upstream(spire, upstream, tmp_path_factory):
    """A client sidecar (agent's SVID, the demo policies) straight in front
    of the recording MCP server of conftest, which logs the client
    certificate and headers of every request it receives."""
    gw = start_gateway(
        tmp_path_factory.mktemp("client-sidecar-recorded"),
        spire.endpoint,
        upstream.url,
        SERVER_ID,
        hint="agent",
        listener_extra=PLAIN,
    )
    try:
        gw.wait_ready()
        yield gw
    finally:
        gw.stop()


def test_upstream_sees_the_agents_certificate_and_no_spoofed_headers(sidecar_to_recording_upstream, upstream):
    """What leaves the sidecar: a TLS connection whose client certificate
    carries the agent's SPIFFE ID (and only it), and none of the identity
    headers the local caller sent."""
    gw = sidecar_to_recording_upstream
    seen = len(upstream.requests())
    spoofed = {
        "X-Forwarded-Client-Cert": "URI=spiffe://example.org/ns/demo/sa/admin",
        "X-Spiffe-Id": "spiffe://example.org/ns/demo/sa/admin",
        "Forwarded": "for=10.0.0.1",
        "X-Forwarded-For": "10.0.0.1",
        "X-Real-IP": "10.0.0.1",
    }
    status, body, _ = plain_post(gw, PROBE, {"Host": f"localhost:{gw.port}", **dict(PROBE_HEADERS), **spoofed})
    assert status == 200 and "result" in body, (status, body)
    new = upstream.requests()[seen:]
    assert new, "the allowed probe did not reach the upstream"
    for req in new:
        assert req["tls"] is not None and req["peer_cert_uri_sans"] == [AGENT_ID], req
        assert not set(req["headers"]) & {k.lower() for k in spoofed}, req["headers"]
