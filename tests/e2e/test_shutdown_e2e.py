"""Graceful shutdown and trace context, through the real gateway on real
SPIRE identities.

SIGTERM: /readyz turns 503 at once, new connections are refused, a call in
flight (an SSE reply to a real TypeScript SDK client) completes, and the
process exits 0; a call that outlasts shutdown.drain_timeout_seconds is cut
at the deadline and the process still exits 0.

traceparent: the caller's trace is continued to the upstream with the
gateway's span as parent; without one the gateway starts a trace; the audit
record names both ids."""

from __future__ import annotations

import signal
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request

from conftest import SERVER_ID
from gateway_fixtures import start_gateway
from mcp_fixtures import run_py_agent, run_ts_agent
from helpers import call, tool_calls
from polling import wait_for


def readyz(gw) -> int | None:
    try:
        with urllib.request.urlopen(gw.admin_url + "/readyz", timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def connect_refused(gw, s) -> bool:
    ctx = ssl.create_default_context(cafile=str(s.bundle))
    ctx.check_hostname = False
    ctx.load_cert_chain(str(s.cert), str(s.key))
    try:
        with socket.create_connection(("127.0.0.1", gw.port), timeout=2) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost"):
                return False
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:
        # Queued in the listening socket's backlog as it closed, the
        # connection is reset by the kernel before any TLS byte. Not
        # counted: the wait goes on until a connection is refused outright.
        return False


def start_call_in_background(fn):
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("run", fn()), daemon=True)
    t.start()
    return t, out


def test_sigterm_drains_in_flight_calls_and_refuses_new_connections(spire, upstream, svids, tmp_path):
    gw = start_gateway(
        tmp_path / "gw", spire.endpoint, upstream.url, SERVER_ID, hint="gateway",
        extra_yaml="shutdown:\n  drain_timeout_seconds: 20\n",
    )  # fmt: skip
    s = svids["agent"]
    try:
        gw.wait_ready()
        slow = 'get_slowly:{"seconds":3}'
        before = len(tool_calls(upstream, "get_slowly"))
        thread, out = start_call_in_background(lambda: run_ts_agent(gw.url, s.cert, s.key, s.bundle, calls=[slow]))
        wait_for("the slow call at the upstream", lambda: len(tool_calls(upstream, "get_slowly")) > before)
        gw.proc.send_signal(signal.SIGTERM)
        wait_for("/readyz 503", lambda: readyz(gw) == 503)
        wait_for("new connections refused", lambda: connect_refused(gw, s))
        thread.join(timeout=30)
        run = out["run"]
        result = call(run, slow)
        assert result["ok"] is True, run.stdout
        assert "done after 3" in str(result["result"]), result
        assert gw.proc.wait(timeout=30) == 0, gw.log()
        assert any("drained" in line for line in gw.log_lines), gw.log()
    finally:
        gw.stop()


def test_drain_deadline_cuts_what_outlasts_it(spire, upstream, svids, tmp_path):
    gw = start_gateway(
        tmp_path / "gw", spire.endpoint, upstream.url, SERVER_ID, hint="gateway",
        extra_yaml="shutdown:\n  drain_timeout_seconds: 1\n",
    )  # fmt: skip
    s = svids["agent"]
    try:
        gw.wait_ready()
        slow = 'get_slowly:{"seconds":30}'
        before = len(tool_calls(upstream, "get_slowly"))
        thread, out = start_call_in_background(lambda: run_py_agent(gw.url, s.cert, s.key, s.bundle, calls=[slow]))
        wait_for("the slow call at the upstream", lambda: len(tool_calls(upstream, "get_slowly")) > before)
        started = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        assert gw.proc.wait(timeout=15) == 0, gw.log()
        assert time.monotonic() - started < 10
        assert any("drain deadline passed" in line for line in gw.log_lines), gw.log()
        thread.join(timeout=60)
        # The client connected and made the call (it reached the upstream),
        # and never got a result: the Python SDK either reports the call
        # failed or, its connection cut mid-call, ends with its task group
        # cancelled.
        run = out["run"]
        assert run.negotiated, run.stdout + run.stderr
        calls = [c for c in run.calls if c["call"] == slow]
        if calls:
            assert len(calls) == 1 and calls[0]["ok"] is False, run.stdout
        else:
            assert run.returncode != 0 and "CancelledError" in run.stderr, run.stdout + run.stderr
    finally:
        gw.stop()


def test_traceparent_is_continued_or_started_and_audited(gateway, upstream, svids):
    s = svids["agent"]
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    sent = f"00-{trace_id}-00f067aa0ba902b7-01"
    weather = 'get_weather:{"city":"Trace"}'
    seen = len(upstream.requests())
    run = run_py_agent(gateway.url, s.cert, s.key, s.bundle, calls=[weather], headers=[f"traceparent: {sent}", "tracestate: vendor=x"])
    assert call(run, weather)["ok"] is True, run.stdout
    reached = [r for r in upstream.requests()[seen:] if (r.get("body") or {}).get("method") == "tools/call"]
    assert reached, "the call did not reach the upstream"
    got = reached[-1]["headers"]["traceparent"]
    version, got_trace, got_parent, flags = got.split("-")
    assert (version, got_trace, flags) == ("00", trace_id, "01")
    assert got_parent != "00f067aa0ba902b7", "the gateway is a hop: its own span is the parent"
    assert reached[-1]["headers"].get("tracestate") == "vendor=x"
    record = gateway.wait_audit(lambda r: r.get("span_id") == got_parent)
    record = next(r for r in record if r.get("span_id") == got_parent)
    assert record["trace_id"] == trace_id and record["target"] == "get_weather"

    seen = len(upstream.requests())
    run = run_py_agent(gateway.url, s.cert, s.key, s.bundle, calls=[weather], headers=["tracestate: vendor=y"])
    assert call(run, weather)["ok"] is True
    reached = [r for r in upstream.requests()[seen:] if (r.get("body") or {}).get("method") == "tools/call"]
    _, new_trace, new_parent, new_flags = reached[-1]["headers"]["traceparent"].split("-")
    assert new_trace != trace_id and new_flags == "00"
    assert "tracestate" not in reached[-1]["headers"], "tracestate without a valid traceparent is dropped"
    records = gateway.wait_audit(lambda r: r.get("span_id") == new_parent)
    assert next(r for r in records if r.get("span_id") == new_parent)["trace_id"] == new_trace


def test_logs_are_json_lines_with_levels_and_apart_from_audit(gateway):
    """Default log.format: one JSON object per line on stderr, with a level;
    the audit stream (here a file) holds only audit records."""
    import json

    lines = [line for line in gateway.log_lines if line.strip()]
    assert lines, "the gateway logged nothing"
    events = [json.loads(line) for line in lines]
    assert all(e.get("level") in {"TRACE", "DEBUG", "INFO", "WARN", "ERROR"} for e in events), lines[:3]
    assert any(e.get("message") == "gateway listening" for e in events)
    for record in gateway.audit():
        assert "level" not in record and "correlation_id" in record
