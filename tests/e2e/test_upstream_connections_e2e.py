"""Upstream connections through the real gateway on real SPIRE identities,
with real MCP SDK clients: timeouts, clear errors when the upstream is down
or slow, and the upstream-health metric.

- The upstream stops: a call gets -32061 (upstream unavailable) with a
  correlation id naming an `upstream_error` audit record, and
  `mcp_gateway_upstream_up` turns 0. It starts again on the same port: calls
  work and the gauge turns 1.
- A call slower than `request_timeout_seconds` (a JSON-answering upstream
  sends no response head until the tool is done) gets -32067 (upstream
  timeout); a call in parallel and the next call still work.
- An SSE reply that sends nothing for longer than
  `stream_idle_timeout_seconds` is ended by the gateway and counted.
"""

from __future__ import annotations

import threading
import time

import pytest

from conftest import SERVER_ID
from gateway_fixtures import start_gateway
from mcp_fixtures import run_py_agent, run_ts_agent, start_upstream
from helpers import call, tool_calls
from polling import wait_for

ECHO = 'echo:{"text":"hi"}'
UP = 'mcp_gateway_upstream_up'


def tuned(*, request: int = 60, idle: int = 300, probe: int = 1) -> list[str]:
    return [
        "  connect_timeout_seconds: 2",
        f"  request_timeout_seconds: {request}",
        f"  stream_idle_timeout_seconds: {idle}",
        f"  health_check_interval_seconds: {probe}",
    ]


def up(gw, name: str = "demo") -> float:
    return gw.metric(UP, f'{{upstream="{name}"}}')


def upstream_error_record(gw, correlation: str) -> dict:
    records = gw.wait_audit(lambda r: r["correlation_id"] == correlation)
    record = next(r for r in records if r["correlation_id"] == correlation)
    assert record["decision"] == "upstream_error", record
    assert record["upstream"] == "demo" and record["upstream_spiffe_id"] == SERVER_ID, record
    return record


def test_upstream_down_is_a_clear_error_and_health_follows(spire, svids, tmp_path):
    s, a = svids["mcp-server"], svids["agent"]
    upstream = start_upstream(cert=s.cert, key=s.key, ca=s.bundle, request_log=tmp_path / "up.jsonl")
    port = upstream.port
    gw = start_gateway(tmp_path / "gw", spire.endpoint, upstream.url, SERVER_ID, upstream_extra=tuned())
    try:
        gw.wait_ready()
        run = run_py_agent(gw.url, a.cert, a.key, a.bundle, calls=[ECHO])
        assert call(run, ECHO)["ok"] is True, run.stdout + run.stderr
        wait_for("upstream_up 1", lambda: up(gw) == 1)

        upstream.stop()
        # The probe notices before any caller does.
        wait_for("upstream_up 0 from the probe", lambda: up(gw) == 0)
        # The SDK's initialize is answered under its own id with the
        # unavailable code (HTTP 200), so it surfaces as an MCP error.
        run = run_ts_agent(gw.url, a.cert, a.key, a.bundle, calls=[ECHO])
        assert run.negotiated is None, run.stdout
        err = run.connect_error
        assert err["code"] == -32061, err
        assert "upstream unavailable" in err["message"], err
        assert "refused" not in str(err).lower() and "127.0.0.1" not in str(err), err
        record = upstream_error_record(gw, err["data"]["correlation_id"])
        assert record["reason"] == "upstream_unavailable"
        assert gw.metric("mcp_gateway_upstream_errors_total", '{kind="upstream_unavailable"}') >= 1

        upstream = start_upstream(cert=s.cert, key=s.key, ca=s.bundle, port=port)
        wait_for("upstream_up 1 again", lambda: up(gw) == 1)
        run = run_py_agent(gw.url, a.cert, a.key, a.bundle, calls=[ECHO])
        assert call(run, ECHO)["ok"] is True, run.stdout + run.stderr
    finally:
        gw.stop()
        upstream.stop()


def test_upstream_presenting_another_identity_is_refused_and_down(spire, svids, tmp_path):
    """The upstream serves the agent's SVID instead of the server's: every
    connection fails the exact SPIFFE ID check, -32062, and the gauge is 0."""
    a = svids["agent"]
    upstream = start_upstream(cert=a.cert, key=a.key, ca=a.bundle)
    gw = start_gateway(tmp_path / "gw", spire.endpoint, upstream.url, SERVER_ID, upstream_extra=tuned())
    try:
        gw.wait_ready()
        run = run_py_agent(gw.url, a.cert, a.key, a.bundle, calls=[ECHO])
        err = run.connect_error
        assert err["code"] == -32062, err
        record = upstream_error_record(gw, err["data"]["correlation_id"])
        assert record["reason"] == "upstream_identity"
        assert up(gw) == 0
    finally:
        gw.stop()
        upstream.stop()


def test_slow_call_times_out_and_other_calls_still_work(spire, svids, tmp_path):
    s, a = svids["mcp-server"], svids["agent"]
    upstream = start_upstream(
        cert=s.cert, key=s.key, ca=s.bundle, request_log=tmp_path / "up.jsonl", json_response=True
    )
    gw = start_gateway(tmp_path / "gw", spire.endpoint, upstream.url, SERVER_ID, upstream_extra=tuned(request=3))
    try:
        gw.wait_ready()
        slow = 'get_slowly:{"seconds":8}'
        out: dict = {}
        t = threading.Thread(
            target=lambda: out.setdefault("run", run_ts_agent(gw.url, a.cert, a.key, a.bundle, calls=[slow])),
            daemon=True,
        )
        started = time.monotonic()
        t.start()
        wait_for("the slow call at the upstream", lambda: len(tool_calls(upstream, "get_slowly")) == 1)
        # While the slow call waits, another caller's call goes through.
        other = run_py_agent(gw.url, a.cert, a.key, a.bundle, calls=[ECHO])
        assert call(other, ECHO)["ok"] is True, other.stdout + other.stderr
        t.join(timeout=60)
        elapsed = time.monotonic() - started
        result = call(out["run"], slow)
        assert result["ok"] is False, result
        err = result["error"]
        assert err["code"] == -32067 and err["message"] == "upstream timed out", err
        # Answered by the gateway at its timeout (the upstream would have
        # answered with a result after 8 s).
        assert elapsed >= 3, f"answered after {elapsed:.1f}s, before the timeout"
        record = upstream_error_record(gw, err["data"]["correlation_id"])
        assert record["reason"] == "upstream_timeout"
        assert gw.metric("mcp_gateway_upstream_errors_total", '{kind="upstream_timeout"}') == 1
        # Slow is not down.
        assert up(gw) == 1
        after = run_py_agent(gw.url, a.cert, a.key, a.bundle, calls=[ECHO])
        assert call(after, ECHO)["ok"] is True, after.stdout + after.stderr
    finally:
        gw.stop()
        upstream.stop()


@pytest.mark.parametrize("sdk", ["python", "typescript"])
def test_idle_sse_reply_is_ended_with_a_timeout_error(sdk, spire, svids, tmp_path):
    """An SSE reply to tools/call that stays silent past the idle timeout is
    ended by the gateway, counted and audited; the pending call gets -32067
    under its own id (the SDK would otherwise wait on a stream that is gone),
    long before the tool would have answered; the next call works."""
    s, a = svids["mcp-server"], svids["agent"]
    upstream = start_upstream(cert=s.cert, key=s.key, ca=s.bundle, request_log=tmp_path / "up.jsonl")
    gw = start_gateway(tmp_path / "gw", spire.endpoint, upstream.url, SERVER_ID, upstream_extra=tuned(idle=2))
    try:
        gw.wait_ready()
        # 40 s: the 2026-07-28 handler of the Python SDK server sends its SSE
        # head with its first chunk, a keep-alive ping 15 s in, and the idle
        # clock runs from the head; the 2025 handler sends it at once.
        slow = 'get_slowly:{"seconds":40}'
        runner = run_py_agent if sdk == "python" else run_ts_agent
        run = runner(gw.url, a.cert, a.key, a.bundle, calls=[slow, ECHO], timeout=60)
        result = call(run, slow)
        assert result["ok"] is False, result
        err = result["error"]
        assert err["code"] == -32067 and err["message"] == "upstream stream idle too long", err
        # The call itself (not the agent process) is answered long before the
        # tool would be.
        assert result["seconds"] < 25, f"{result['seconds']}s: the stream was not ended before the tool answered"
        record = upstream_error_record(gw, err["data"]["correlation_id"])
        assert record["reason"] == "upstream_stream_idle"
        # (The TypeScript SDK's quiet GET stream is ended too: >= 1.)
        assert gw.metric("mcp_gateway_upstream_errors_total", '{kind="upstream_stream_idle"}') >= 1
        gw.wait_log("idle too long")
        assert call(run, ECHO)["ok"] is True, run.stdout + run.stderr
    finally:
        gw.stop()
        upstream.stop()


def test_an_agent_leaving_a_quiet_stream_ends_the_upstream_stream(gateway, upstream, svids):
    """The agent opens its session's GET stream (the server has nothing to
    say) and closes the connection. The gateway notices the agent leave and
    ends the upstream stream at once, not after
    `stream_idle_timeout_seconds` (300 s here)."""
    import json

    from raw_http import connect, post

    a = svids["agent"]
    init = {
        "jsonrpc": "2.0", "id": "init", "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "leaver", "version": "1"}},
    }  # fmt: skip
    r = post(gateway.port, a, json.dumps(init).encode())
    assert r.status == 200, r
    sid = r.header("mcp-session-id")
    headers = f"Mcp-Session-Id: {sid}\r\nMCP-Protocol-Version: 2025-11-25\r\n"
    done = post(gateway.port, a, b'{"jsonrpc":"2.0","method":"notifications/initialized"}',
                [("Mcp-Session-Id", sid), ("MCP-Protocol-Version", "2025-11-25")])  # fmt: skip
    assert done.status == 202, done

    def gets_ended() -> int:
        return sum(e["http_method"] == "GET" for e in upstream.ended())

    def gets_seen() -> int:
        return sum(r["http_method"] == "GET" and bool(r["headers"].get("mcp-session-id")) for r in upstream.requests())

    ended, seen = gets_ended(), gets_seen()
    tls = connect(gateway.port, a)
    try:
        tls.sendall(
            f"GET /mcp HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n{headers}\r\n".encode()
        )
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = tls.recv(65536)
            assert chunk, buf
            buf += chunk
        assert buf.startswith(b"HTTP/1.1 200") and b"text/event-stream" in buf.lower(), buf
        wait_for("the stream at the upstream", lambda: gets_seen() > seen)
        assert gets_ended() == ended, "the upstream stream ended on its own"
    finally:
        tls.close()
    # The stream is quiet: only the agent leaving can end it.
    wait_for("the upstream stream to end", lambda: gets_ended() > ended, timeout=10)
