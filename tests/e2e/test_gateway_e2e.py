"""End to end on real SPIRE: real MCP SDK clients, presenting SVIDs fetched
from the Workload API, call through the gateway to a real MCP server that
serves mTLS with its own SVID. The upstream's own request log proves what
reached it; the gateway's audit log shows why."""

from __future__ import annotations

import json
import ssl
import subprocess

import pytest

from conftest import AGENT_B_ID, AGENT_ID, SERVER_ID
from helpers import DELETE, ECHO, PROBE, WEATHER, assert_denied, bad_leaves, call, https_post, tool_calls
from mcp_fixtures import run_py_agent, run_ts_agent



@pytest.mark.parametrize("sdk", ["python", "typescript"])
def test_sdk_allowed_and_denied_in_one_session(sdk, gateway, upstream, svids):
    """The seed test: the same identity, in the same session, gets echo and
    get_weather through and is refused delete_repository, which never reaches
    the upstream; the audit log shows both decisions and the forbid policy."""
    s = svids["agent"]
    before = len(tool_calls(upstream, "delete_repository"))
    runner = run_py_agent if sdk == "python" else run_ts_agent
    run = runner(gateway.url, s.cert, s.key, s.bundle, calls=[ECHO, DELETE, WEATHER])
    assert run.negotiated, run.stdout + run.stderr
    expected_version = "2026-07-28" if sdk == "python" else "2025-11-25"
    assert run.protocol_version == expected_version

    echo = call(run, ECHO)
    assert echo["ok"] is True, echo
    assert "hello through the gateway" in json.dumps(echo["result"])
    assert call(run, WEATHER)["ok"] is True

    deny = assert_denied(call(run, DELETE), gateway)
    assert deny["caller"] == AGENT_ID
    assert deny["method"] == "tools/call"
    assert deny["target_kind"] == "tool" and deny["target"] == "delete_repository"
    assert deny["policy_ids"] == ["nobody-deletes-repos"]
    assert deny["upstream_spiffe_id"] == SERVER_ID
    assert deny["policy_version"]

    assert len(tool_calls(upstream, "delete_repository")) == before, "denied call reached the upstream"
    records = gateway.audit()
    allows = [
        r
        for r in records
        if r["decision"] == "allow" and r["target"] == "echo" and r["caller"] == AGENT_ID
    ]
    assert allows and all(r["policy_ids"] for r in allows)
    if sdk == "typescript":
        # Same session: the allowed echo and the denied delete carry one session id.
        echo_rec = allows[-1]
        assert echo_rec["session_id"] and echo_rec["session_id"] == deny["session_id"]


def test_other_identity_is_refused_tools_call(gateway, upstream, svids):
    """agent-b may list tools but call none: identity, not session, decides."""
    s = svids["agent-b"]
    before = len(tool_calls(upstream, "echo"))
    run = run_py_agent(gateway.url, s.cert, s.key, s.bundle, calls=["list", ECHO])
    assert call(run, "list")["ok"] is True
    record = assert_denied(call(run, ECHO), gateway)
    assert record["caller"] == AGENT_B_ID and record["reason"] == "default_deny"
    assert record["policy_ids"] == []
    assert len(tool_calls(upstream, "echo")) == before


# ---- handshake -------------------------------------------------------------


def test_handshake_refusals(gateway, upstream, spire, svids, tmp_path):
    """Each bad client credential is refused at the handshake: no HTTP
    response, nothing reaches the upstream. A good SVID on the same code path
    gets an answer, so the refusals are the certificates' doing."""
    s = svids["agent"]
    ok = https_post(gateway.port, s.bundle, s.cert, s.key, PROBE)
    assert ok.startswith(b"HTTP/1.1 200"), ok

    seen = len(upstream.requests())
    failures_before = gateway.metric("mcp_gateway_tls_handshake_failures_total")
    cases = {"no client certificate": (None, None), **bad_leaves(spire, tmp_path)}
    for case, (cert, key) in cases.items():
        with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
            reply = https_post(gateway.port, s.bundle, cert, key, PROBE)
            # TLS 1.3 reports a refused client certificate on the first read;
            # an empty read is a closed connection, which is a refusal too.
            if reply == b"":
                raise ConnectionResetError(case)
            pytest.fail(f"{case}: got an HTTP answer: {reply[:200]!r}")
    assert len(upstream.requests()) == seen
    assert gateway.metric("mcp_gateway_tls_handshake_failures_total") >= failures_before + len(cases)
    # Still serving.
    assert https_post(gateway.port, s.bundle, s.cert, s.key, PROBE).startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize("http2", [False, True])
def test_alpn_http1_and_http2(gateway, svids, http2):
    """The listener speaks HTTP/1.1 and HTTP/2, chosen by ALPN."""
    s = svids["agent"]
    flag = "--http2" if http2 else "--http1.1"
    out = subprocess.run(
        ["curl", "-sS", flag, "--cacert", str(s.bundle), "--cert", str(s.cert), "--key", str(s.key),
         "-H", "content-type: application/json", "-H", "accept: application/json, text/event-stream",
         "-H", "mcp-protocol-version: 2026-07-28", "-H", "mcp-method: server/discover",
         "-w", "\n%{http_version}", "--data-binary", PROBE.decode(), gateway.url],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    body, version = out.stdout.rsplit("\n", 1)
    assert version == ("2" if http2 else "1.1")
    reply = json.loads(body)
    assert reply["id"] == 1 and "result" in reply, reply
