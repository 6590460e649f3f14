"""Resource exhaustion and slow clients on real SPIRE: the gateway keeps
serving normal clients, spends no CPU spinning, and says what happened in a
metric and a bounded number of log lines.

- At the open-files limit `accept()` fails with EMFILE; the accept loop
  backs off (5 ms doubling to 1 s) instead of retrying at once.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from conftest import SERVER_ID
from gateway_fixtures import gateway_bin, start_gateway
from raw_http import assert_serving

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
            time.sleep(0.005)
        for _ in range(20):  # more, which accept() cannot take
            held.append(socket.create_connection(("127.0.0.1", gw.port)))
        deadline = time.monotonic() + 5
        while not any(ACCEPT_FAILED in line for line in gw.log_lines):
            assert time.monotonic() < deadline, "accept never failed:\n" + gw.log()
            time.sleep(0.05)
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
    try:
        # Descriptors come back; the gateway serves normal clients again and
        # counted the failures.
        assert_serving(gw.port, svids["agent"], gw)
        errors = gw.metric("mcp_gateway_accept_errors_total")
        assert 1 <= errors < 100, errors
    finally:
        gw.stop()
