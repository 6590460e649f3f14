"""Draining with `shutdown.not_ready_delay_seconds`: after SIGTERM `/readyz`
turns 503 at once, but the listener keeps accepting for the delay (a load
balancer that has not yet seen the 503 still reaches a gateway), each such
connection serves its request with `Connection: close`, and a keep-alive
connection that was open is told to close too; after the delay new
connections are refused and the process exits 0."""

from __future__ import annotations

import signal
import socket
import time

from conftest import SERVER_ID
from gateway_fixtures import start_gateway
from raw_http import PROBE, PROBE_HEADERS, connect, head, read_response
from polling import wait_for
from test_shutdown_e2e import readyz

DELAY = 4
REQUEST = head(
    [
        ("Content-Type", "application/json"),
        ("Accept", "application/json, text/event-stream"),
        ("Content-Length", str(len(PROBE))),
        *PROBE_HEADERS,
    ]
) + PROBE


def test_the_listener_stays_open_for_the_not_ready_delay(spire, upstream, svids, tmp_path):
    agent = svids["agent"]
    gw = start_gateway(
        tmp_path,
        spire.endpoint,
        upstream.url,
        SERVER_ID,
        extra_yaml=f"shutdown:\n  not_ready_delay_seconds: {DELAY}\n",
    )
    try:
        gw.wait_ready()
        kept = connect(gw.port, agent)
        kept.sendall(REQUEST)
        first = read_response(kept)
        assert first is not None and first.status == 200 and first.header("connection") is None, first

        gw.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        wait_for("/readyz 503 after SIGTERM", lambda: readyz(gw) == 503, DELAY / 2)

        # Within the delay: a new connection is still served, once.
        with connect(gw.port, agent) as late:
            late.sendall(REQUEST)
            resp = read_response(late)
        assert time.monotonic() - signalled < DELAY, "too slow to test inside the delay"
        assert resp is not None and resp.status == 200, resp
        assert resp.header("connection") == "close", resp

        # The connection open before SIGTERM (idle when it came) is closed.
        kept.settimeout(DELAY + 5)
        assert kept.recv(1) == b""
        kept.close()

        # After the delay the listening socket is closed.
        gw.proc.wait(timeout=DELAY + 20)
        assert gw.proc.returncode == 0
        assert time.monotonic() - signalled >= DELAY
        try:
            socket.create_connection(("127.0.0.1", gw.port), timeout=2).close()
            refused = False
        except ConnectionRefusedError:
            refused = True
        assert refused
    finally:
        gw.stop()
