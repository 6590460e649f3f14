"""The e2e MCP programs work on their own, without the gateway.

A throwaway CA signs a server certificate (URI SAN
spiffe://example.org/ns/demo/sa/mcp-server, DNS localhost) and a client
certificate (URI SAN spiffe://example.org/ns/demo/sa/agent). The upstream
server runs with mutual TLS; the Python SDK 2.x agent and the TypeScript SDK
1.x agent call it directly.
"""

from __future__ import annotations

import http.client
import socket
import ssl
from pathlib import Path

import pytest

from polling import wait_for
from mcp_fixtures import (
    finish_agent,
    make_test_pki,
    run_py_agent,
    run_ts_agent,
    start_py_agent_loop,
    start_upstream,
)

AGENT_ID = "spiffe://example.org/ns/demo/sa/agent"
CALLS = ["list", 'echo:{"text":"hello e2e"}', 'delete_repository:{"repo":"acme/widgets"}']
TOOLS = {"echo", "get_weather", "get_slowly", "delete_repository", "count_roots", "confirm", "ask_roots", "ask_confirm"}


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def upstream(pki, tmp_path_factory):
    log = tmp_path_factory.mktemp("upstream") / "requests.jsonl"
    up = start_upstream(pki.server_cert, pki.server_key, pki.ca, request_log=log)
    yield up
    up.stop()


@pytest.fixture
def up(upstream):
    """The shared upstream with an empty request log."""
    upstream.clear_requests()
    return upstream


def client_args(pki):
    return dict(cert=pki.client_cert, key=pki.client_key, ca=pki.ca)


def check_call_results(run):
    calls = run.calls
    assert [c["call"] for c in calls] == CALLS, run.stdout + run.stderr
    assert all(c["ok"] for c in calls), run.stdout
    listed = {t["name"] for t in calls[0]["result"]["tools"]}
    assert listed == TOOLS
    assert calls[1]["result"]["content"][0]["text"] == "hello e2e"
    assert calls[1]["result"]["isError"] is False
    assert calls[2]["result"]["content"][0]["text"] == "deleted acme/widgets"


def mcp_posts(up):
    return [r for r in up.requests() if r["http_method"] == "POST"]


def body_methods(reqs):
    return [r["body"]["method"] for r in reqs if isinstance(r["body"], dict) and "method" in r["body"]]


# ---------------------------------------------------------------------------
# Python SDK 2.x agent
# ---------------------------------------------------------------------------


def test_py_agent_mtls_2026(up, pki):
    run = run_py_agent(up.url, calls=CALLS, **client_args(pki))
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.protocol_version == "2026-07-28"
    assert run.negotiated["session_id"] is None
    check_call_results(run)

    reqs = up.requests()
    # 2026-07-28: stateless POSTs only, no GET stream, no DELETE, no session id.
    assert {r["http_method"] for r in reqs} == {"POST"}
    assert body_methods(reqs) == ["server/discover", "tools/list", "tools/call", "tools/call"]
    for r in reqs:
        h = r["headers"]
        assert r["path"] == "/mcp"
        assert r["peer_cert_uri_sans"] == [AGENT_ID]
        assert "mcp-session-id" not in h
        assert h["mcp-protocol-version"] == "2026-07-28"
        assert h["mcp-method"] == r["body"]["method"]
        assert h["accept"] == "application/json, text/event-stream"
        assert r["body"]["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"] == "2026-07-28"
    calls = [r for r in reqs if r["body"]["method"] == "tools/call"]
    assert [r["headers"]["mcp-name"] for r in calls] == ["echo", "delete_repository"]
    assert calls[1]["body"]["params"]["arguments"] == {"repo": "acme/widgets"}


def test_py_agent_legacy_mode(up, pki):
    run = run_py_agent(up.url, calls=CALLS, mode="legacy", **client_args(pki))
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.protocol_version == "2025-11-25"
    sid = run.negotiated["session_id"]
    assert sid
    check_call_results(run)
    reqs = up.requests()
    methods = {r["http_method"] for r in reqs}
    assert methods == {"POST", "GET", "DELETE"}
    assert body_methods(reqs)[:2] == ["initialize", "notifications/initialized"]
    for r in reqs:
        assert r["peer_cert_uri_sans"] == [AGENT_ID]
        if r["body"] is None or r["body"].get("method") != "initialize":
            assert r["headers"]["mcp-session-id"] == sid
            assert r["headers"]["mcp-protocol-version"] == "2025-11-25"


def test_py_agent_reports_jsonrpc_error(up, pki):
    run = run_py_agent(up.url, calls=["read:file:///nope", 'echo:{"text":"after"}'], **client_args(pki))
    err, after = run.calls
    assert err["ok"] is False
    assert err["error"]["code"] == -32602
    assert err["error"]["data"] == {"uri": "file:///nope"}
    assert after["ok"] is True and after["result"]["content"][0]["text"] == "after"


def test_py_agent_unknown_tool_is_tool_error(up, pki):
    run = run_py_agent(up.url, calls=["nosuch:{}"], **client_args(pki))
    (c,) = run.calls
    assert c["ok"] is True and c["result"]["isError"] is True


# ---------------------------------------------------------------------------
# TypeScript SDK 1.x agent
# ---------------------------------------------------------------------------


def test_ts_agent_mtls_2025(up, pki):
    run = run_ts_agent(up.url, calls=CALLS, extra_args=["--terminate-session"], **client_args(pki))
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.protocol_version == "2025-11-25"
    sid = run.negotiated["session_id"]
    assert sid
    check_call_results(run)

    reqs = up.requests()
    assert body_methods(reqs) == [
        "initialize",
        "notifications/initialized",
        "tools/list",
        "tools/call",
        "tools/call",
    ]
    assert sorted({r["http_method"] for r in reqs}) == ["DELETE", "GET", "POST"]
    for r in reqs:
        h = r["headers"]
        assert r["peer_cert_uri_sans"] == [AGENT_ID]
        assert "mcp-method" not in h and "mcp-name" not in h
        if isinstance(r["body"], dict) and r["body"].get("method") == "initialize":
            assert "mcp-session-id" not in h
            assert r["body"]["params"]["protocolVersion"] == "2025-11-25"
        else:
            assert h["mcp-session-id"] == sid
            assert h["mcp-protocol-version"] == "2025-11-25"
    get = next(r for r in reqs if r["http_method"] == "GET")
    assert get["headers"]["accept"] == "text/event-stream"


def test_ts_agent_reports_jsonrpc_error(up, pki):
    run = run_ts_agent(up.url, calls=["read:file:///nope", 'echo:{"text":"after"}'], **client_args(pki))
    err, after = run.calls
    assert err["ok"] is False
    assert err["error"]["code"] == -32602
    assert err["error"]["message"] == "Unknown resource: file:///nope"
    assert err["error"]["data"] == {"uri": "file:///nope"}
    assert after["ok"] is True


def test_ts_agent_reports_http_error_body(up, pki):
    # An unknown session id is answered 404 with a JSON-RPC error body.
    run = run_ts_agent(up.url, calls=["list"], headers=["mcp-session-id: bogus"], **client_args(pki))
    assert run.returncode == 2
    assert run.connect_error["http_status"] == 404
    assert run.connect_error["code"] == -32600


# ---------------------------------------------------------------------------
# mTLS enforcement and Host header handling
# ---------------------------------------------------------------------------


def test_client_without_cert_is_refused(up, pki):
    for run in (
        run_py_agent(up.url, ca=pki.ca, calls=["list"]),
        run_ts_agent(up.url, ca=pki.ca, calls=["list"]),
    ):
        assert run.returncode == 2, run.stdout + run.stderr
        assert run.connect_error is not None
        assert run.calls == []

    # Raw TLS: the handshake (or the first read, with TLS 1.3) fails.
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        with socket.create_connection(("127.0.0.1", up.port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"GET /mcp HTTP/1.1\r\nHost: localhost\r\n\r\n")
                if not tls.recv(1):
                    raise ConnectionError("closed")
    assert up.requests() == []


def test_client_cert_from_other_ca_is_refused(up, pki):
    run = run_py_agent(
        up.url, cert=pki.rogue_client_cert, key=pki.rogue_client_key, ca=pki.ca, calls=["list"]
    )
    assert run.returncode == 2 and run.calls == []
    assert up.requests() == []


def _post_with_host(up, pki, host: str) -> int:
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    ctx.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    conn = http.client.HTTPSConnection("localhost", up.port, context=ctx, timeout=10)
    body = (
        '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25",'
        '"capabilities":{},"clientInfo":{"name":"raw","version":"0"}}}'
    )
    conn.putrequest("POST", "/mcp", skip_host=True)
    conn.putheader("Host", host)
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Accept", "application/json, text/event-stream")
    conn.putheader("Content-Length", str(len(body)))
    conn.endheaders(body.encode())
    status = conn.getresponse().status
    conn.close()
    return status


def test_host_header_localhost_and_loopback_ip_accepted(up, pki):
    assert _post_with_host(up, pki, f"localhost:{up.port}") == 200
    assert _post_with_host(up, pki, f"127.0.0.1:{up.port}") == 200
    assert _post_with_host(up, pki, "evil.example:443") == 421


def test_py_agent_by_ip_without_hostname_check(up, pki):
    url = f"https://127.0.0.1:{up.port}/mcp"
    run = run_py_agent(url, calls=["list"], **client_args(pki))
    assert run.returncode == 2  # the server certificate names localhost only
    run = run_py_agent(url, calls=["list"], no_check_hostname=True, **client_args(pki))
    assert run.returncode == 0 and run.calls[0]["ok"]
    assert up.requests()[-1]["headers"]["host"] == f"127.0.0.1:{up.port}"


# ---------------------------------------------------------------------------
# Rotation mode and plain HTTP
# ---------------------------------------------------------------------------


def test_loop_mode_reconnects_each_iteration(up, pki):
    py = start_py_agent_loop(up.url, loop=3, interval_ms=20, **client_args(pki))
    ts = run_ts_agent(up.url, loop=3, interval_ms=20, **client_args(pki))
    py = finish_agent(py)
    for run in (py, ts):
        assert run.loop == {**run.loop, "iterations": 3, "ok": 3, "failed": 0}, run.stdout + run.stderr
        assert [i["ok"] for i in run.iterations] == [True, True, True]
    # 3 x (discover + call + list) for Python, 3 x initialize for TS.
    methods = body_methods(mcp_posts(up))
    assert methods.count("server/discover") == 3
    assert methods.count("initialize") == 3
    assert methods.count("tools/call") == 6


def test_repeat_until_file(up, pki, tmp_path):
    stop = tmp_path / "stop"
    proc = start_py_agent_loop(up.url, repeat_until=stop, interval_ms=50, **client_args(pki))
    try:
        wait_for("2 tools/call at the upstream", lambda: body_methods(mcp_posts(up)).count("tools/call") >= 2, 30)
    finally:
        stop.write_text("")
    run = finish_agent(proc)
    assert run.loop["ok"] >= 2 and run.loop["failed"] == 0


def test_plain_http_mode(pki, tmp_path):
    log = tmp_path / "plain.jsonl"
    with start_upstream(plain=True, request_log=log) as up:
        assert up.url.startswith("http://")
        run = run_py_agent(up.url, calls=['echo:{"text":"plain"}'])
        assert run.calls[0]["ok"], run.stdout + run.stderr
        run = run_ts_agent(up.url, calls=['echo:{"text":"plain"}'])
        assert run.calls[0]["ok"], run.stdout + run.stderr
        assert all(r["peer_cert_uri_sans"] is None for r in up.requests())
        assert Path(log).exists()
