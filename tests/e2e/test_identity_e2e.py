"""Identity lifecycle on real SPIRE: fail closed before the first SVID,
rotation without restart or failed calls, and upstream SPIFFE ID pinning."""

from __future__ import annotations

import json
import time

from conftest import AGENT_B_ID, SERVER_ID
from gateway_fixtures import start_gateway
from mcp_fixtures import finish_agent, run_py_agent, start_py_agent_loop
from helpers import ECHO, PROBE, https_post
from polling import wait_for

import pytest
import ssl

TD = "spiffe://example.org"


def test_fail_closed_until_svid_is_issued(spire, upstream, svids, tmp_path):
    """A gateway whose SVID does not exist yet is not ready and refuses
    connections; once SPIRE issues the SVID it becomes ready and serves."""
    spiffe_id = f"{TD}/ns/demo/sa/gateway-late"
    gw = start_gateway(tmp_path, spire.endpoint, upstream.url, SERVER_ID, hint="gateway-late")
    try:
        s = svids["agent"]
        status, body = gw.get("/readyz")
        assert status == 503, body
        assert gw.get("/healthz")[0] == 200
        assert gw.metric("mcp_gateway_ready") == 0
        with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError, OSError)):
            reply = https_post(gw.port, s.bundle, s.cert, s.key, PROBE)
            if reply == b"":
                raise ConnectionResetError("closed")
            pytest.fail(f"answered before its SVID existed: {reply[:100]!r}")
        assert not gw.is_ready()

        entry = spire.register(spiffe_id, "gateway-late", dns="localhost")
        try:
            gw.wait_ready(timeout=90)
            assert https_post(gw.port, s.bundle, s.cert, s.key, PROBE).startswith(b"HTTP/1.1 ")
            assert gw.metric("mcp_gateway_ready") == 1
        finally:
            spire.delete_entry(entry)
    finally:
        gw.stop()


def test_rotation_without_failed_calls(spire, upstream, svids, tmp_path):
    """With a ~1 minute SVID TTL, an agent keeps calling through at least two
    rotations of the gateway's SVID (a new TLS connection per call) with zero
    failed calls, and the rotation metric counts them."""
    spiffe_id = f"{TD}/ns/demo/sa/gateway-rotating"
    entry = spire.register(spiffe_id, "gateway-rotating", ttl=60, dns="localhost")
    gw = start_gateway(tmp_path / "gw", spire.endpoint, upstream.url, SERVER_ID, hint="gateway-rotating")
    try:
        gw.wait_ready()
        stop_file = tmp_path / "stop"
        s = svids["agent"]
        proc = start_py_agent_loop(
            gw.url, s.cert, s.key, s.bundle, calls=[ECHO], repeat_until=stop_file, interval_ms=250
        )
        try:
            # Rotations are events in the gateway; wait for two of them.
            def rotated_twice() -> bool:
                assert proc.poll() is None, "agent loop stopped early"
                return gw.metric("mcp_gateway_svid_rotations_total") >= 2

            wait_for("2 rotations", rotated_twice, 150, every=0.5)
        finally:
            stop_file.write_text("stop")
            run = finish_agent(proc, timeout=60)
        summary = run.loop
        assert summary, run.stdout + run.stderr
        assert summary["failed"] == 0, json.dumps(summary)  # whole: pytest cuts a dict short
        assert summary["ok"] >= 20, summary
        assert gw.metric("mcp_gateway_svid_rotations_total") >= 2
        assert gw.metric("mcp_gateway_svid_expiry_timestamp_seconds") > time.time()
    finally:
        gw.stop()
        spire.delete_entry(entry)


def test_upstream_presenting_another_id_is_refused(spire, upstream, svids, tmp_path):
    """The gateway expects agent-b's ID from the upstream; the real upstream
    presents mcp-server's, so the call fails with -32062 and an audit record,
    and the upstream never sees an HTTP request."""
    gw = start_gateway(tmp_path, spire.endpoint, upstream.url, AGENT_B_ID, hint="gateway")
    try:
        gw.wait_ready()
        seen = len(upstream.requests())
        s = svids["agent"]
        raw = https_post(gw.port, s.bundle, s.cert, s.key, PROBE)
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        err = json.loads(body)["error"]
        assert err["code"] == -32062 and err["message"] == "upstream identity rejected"
        correlation = err["data"]["correlation_id"]
        records = gw.wait_audit(lambda r: r["correlation_id"] == correlation)
        record = next(r for r in records if r["correlation_id"] == correlation)
        assert record["decision"] == "upstream_error"
        assert record["reason"] == "upstream_identity"
        assert record["upstream_spiffe_id"] == AGENT_B_ID
        assert len(upstream.requests()) == seen
        assert gw.metric("mcp_gateway_upstream_errors_total", '{kind="upstream_identity"}') == 1
        # And the SDK sees this refusal as a JSON-RPC error, not a crash or
        # a dropped connection: its first request (the discovery probe) is
        # answered -32062 with a correlation id, so it cannot connect.
        run = run_py_agent(gw.url, s.cert, s.key, s.bundle, calls=[ECHO])
        error = run.connect_error
        assert error and error["code"] == -32062, run.stdout + run.stderr
        assert error["message"] == "upstream identity rejected" and error["data"]["correlation_id"], error
        assert not run.calls, run.stdout
    finally:
        gw.stop()
