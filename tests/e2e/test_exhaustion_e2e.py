"""Resource exhaustion and slow clients on real SPIRE: the gateway keeps
serving normal clients, spends no CPU spinning, and says what happened in a
metric and a bounded number of log lines.

- At the open-files limit `accept()` fails with EMFILE; the accept loop
  backs off (5 ms doubling to 1 s) instead of retrying at once.
- Slow headers, slow bodies and idle keep-alive connections are closed
  after their timeouts (`connections:`), each counted in
  `mcp_gateway_connection_refusals_total{reason}`.
- Connections are capped in total and per SPIFFE ID: one identity cannot
  take every connection.

Waits on the gateway's own actions (a closed socket, an answer), bounded
by a generous deadline; the timeouts under test are a few seconds.
"""

from __future__ import annotations

import os
import socket
import ssl
import time
from pathlib import Path

import pytest

from conftest import SERVER_ID
from gateway_fixtures import gateway_bin, start_gateway
from polling import wait_for
from raw_http import PROBE, PROBE_HEADERS, assert_serving, connect, head, read_response

ACCEPT_FAILED = "accepting a connection failed"


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_accept_backs_off_at_the_open_files_limit(spire, svids, upstream, tmp_path):
    # Soft limit 48, hard 96: the gateway raises the soft limit to the hard
    # one at start and says so; then connections exhaust the 96.
    gw = start_gateway(
        tmp_path / "gw",
        spire.endpoint,
        upstream.url,
        SERVER_ID,
        command=["prlimit", "--nofile=48:96", "--", str(gateway_bin())],
    )
    try:
        exhaust_descriptors(gw, svids)
        # Descriptors came back; the gateway serves normal clients again and
        # counted the failures.
        assert_serving(gw.port, svids["agent"], gw)
        errors = gw.metric("mcp_gateway_accept_errors_total")
        assert 1 <= errors < 100, errors
    finally:
        gw.stop()


def exhaust_descriptors(gw, svids) -> None:
    """Holds connections until accept() fails; checks the gateway neither
    spins nor floods its log meanwhile; then lets them go."""
    held: list[socket.socket] = []
    try:
        gw.wait_ready()
        assert any(
            "raised the soft limit on open files" in line and '"after":96' in line.replace(" ", "")
            for line in gw.log_lines
        ), gw.log()
        assert_serving(gw.port, svids["agent"], gw)
        # Plain TCP connections that never start TLS: each holds one of the
        # gateway's descriptors for the handshake timeout (10 s).
        while open_fds(gw.proc.pid) < 96 and len(held) < 200:
            held.append(socket.create_connection(("127.0.0.1", gw.port)))
            time.sleep(0.005)  # pacing: the gateway accepts each before the descriptors are counted
        for _ in range(20):  # more, which accept() cannot take
            held.append(socket.create_connection(("127.0.0.1", gw.port)))
        wait_for("accept to fail", lambda: any(ACCEPT_FAILED in line for line in gw.log_lines), 5, detail=gw.log)
        # While accept keeps failing: no busy loop, a bounded log.
        lines_before = sum(ACCEPT_FAILED in line for line in gw.log_lines)
        cpu_before = cpu_seconds(gw.proc.pid)
        time.sleep(2.0)  # the window measured, not a synchronisation
        spent = cpu_seconds(gw.proc.pid) - cpu_before
        lines = sum(ACCEPT_FAILED in line for line in gw.log_lines) - lines_before
        assert spent < 0.5, f"{spent:.2f} s of CPU in 2 s at the open-files limit"
        assert lines <= 1, f"{lines} accept-failure log lines in 2 s"
    finally:
        for s in held:
            s.close()


CONNECTIONS = """connections:
  header_read_timeout_seconds: 2
  body_read_timeout_seconds: 2
  idle_timeout_seconds: 2
  max_connections: 40
  max_connections_per_identity: 3
"""


@pytest.fixture
def tight(spire, upstream, tmp_path):
    """A gateway with timeouts of 2 s and caps of 40 connections, 3 per identity."""
    gw = start_gateway(tmp_path / "gw", spire.endpoint, upstream.url, SERVER_ID, extra_yaml=CONNECTIONS)
    try:
        gw.wait_ready()
        yield gw
    finally:
        gw.stop()


def refusals(gw, reason: str) -> float:
    return gw.metric("mcp_gateway_connection_refusals_total", f'{{reason="{reason}"}}')


def closed_within(tls: ssl.SSLSocket, seconds: float) -> bool:
    """Whether the gateway closes the connection within `seconds` (reading
    and discarding whatever it sends)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        tls.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            if not tls.recv(65536):
                return True
        except (socket.timeout, TimeoutError):
            return False
        except (ConnectionResetError, BrokenPipeError, ssl.SSLError, OSError):
            return True
    return False


def test_slow_headers_are_cut_after_the_header_timeout(tight, svids):
    agent = svids["agent-b"]
    before = refusals(tight, "header_read_timeout")
    started = time.monotonic()
    slow = [connect(tight.port, agent) for _ in range(2)]
    request = head([("Content-Type", "application/json"), ("Content-Length", str(len(PROBE)))])
    # One byte a second: the head never completes within 2 s.
    for i in range(3):
        for tls in slow:
            try:
                tls.sendall(request[i : i + 1])
            except OSError:
                pass
        time.sleep(1)  # the pace under test: one byte a second
    for tls in slow:
        assert closed_within(tls, 10), "a slow-header connection is still open"
        tls.close()
    assert time.monotonic() - started < 15
    assert refusals(tight, "header_read_timeout") >= before + 2
    assert_serving(tight.port, svids["agent"], tight)


def test_a_slow_body_is_answered_408_and_audited(tight, svids):
    agent = svids["agent"]
    before = refusals(tight, "body_read_timeout")
    with connect(tight.port, agent) as tls:
        tls.sendall(
            head(
                [
                    ("Content-Type", "application/json"),
                    ("Accept", "application/json, text/event-stream"),
                    ("Content-Length", str(len(PROBE))),
                    *PROBE_HEADERS,
                ]
            )
            + PROBE[:10]
        )
        resp = read_response(tls, timeout=15)
    assert resp is not None and resp.status == 408, resp
    err = resp.json()["error"]
    assert err["code"] == -32064
    cid = err["data"]["correlation_id"]
    records = tight.wait_audit(lambda r: r["correlation_id"] == cid)
    record = next(r for r in records if r["correlation_id"] == cid)
    assert (record["decision"], record["reason"]) == ("deny", "body_read_timeout")
    assert refusals(tight, "body_read_timeout") == before + 1
    assert_serving(tight.port, agent, tight)


def test_an_idle_keepalive_connection_is_closed(tight, svids):
    agent = svids["agent"]
    with connect(tight.port, agent) as tls:
        tls.sendall(
            head(
                [
                    ("Content-Type", "application/json"),
                    ("Accept", "application/json, text/event-stream"),
                    ("Content-Length", str(len(PROBE))),
                    *PROBE_HEADERS,
                ]
            )
            + PROBE
        )
        resp = read_response(tls)
        assert resp is not None and resp.status == 200, resp
        # Then nothing: the gateway closes it after the idle timeout.
        assert closed_within(tls, 10)
    assert refusals(tight, "idle_timeout") + refusals(tight, "header_read_timeout") >= 1
    assert_serving(tight.port, agent, tight)


def test_one_identity_cannot_take_every_connection(tight, svids):
    greedy, other = svids["agent-b"], svids["agent"]
    before = refusals(tight, "max_connections_per_identity")
    held = [connect(tight.port, greedy) for _ in range(3)]
    try:
        for tls in held:  # each completed its handshake and stays open
            assert not closed_within(tls, 0.2)
        extra = connect(tight.port, greedy)
        assert closed_within(extra, 10), "a 4th connection of one identity stayed open"
        extra.close()
        assert refusals(tight, "max_connections_per_identity") == before + 1
        # Another identity is served meanwhile.
        assert_serving(tight.port, other, tight)
    finally:
        for tls in held:
            tls.close()


def test_the_connection_cap_counts_unauthenticated_connections(tight, svids):
    before = refusals(tight, "max_connections")
    held = [socket.create_connection(("127.0.0.1", tight.port)) for _ in range(40)]
    try:
        # Each accepted connection takes its place in its own task, so the
        # 41st must wait until the 40 hold theirs; otherwise it may take a
        # place first and one of the 40 is the one refused.
        wait_for(
            "the 40 held connections to take their places",
            lambda: tight.metric("mcp_gateway_connections_open") == 40,
            10,
            detail=lambda: f'{tight.metric("mcp_gateway_connections_open")} open',
        )
        over = socket.create_connection(("127.0.0.1", tight.port))
        over.settimeout(10)
        assert over.recv(1) == b"", "a connection over the cap was kept"
        over.close()
        assert refusals(tight, "max_connections") >= before + 1
    finally:
        for s in held:
            s.close()
    # The held connections end (closed by us); normal clients are served.
    wait_for(
        "the held connections to end",
        lambda: tight.metric("mcp_gateway_connections_open") <= 1,
        10,
        detail=lambda: f'{tight.metric("mcp_gateway_connections_open")} open',
    )
    assert_serving(tight.port, svids["agent"], tight)
