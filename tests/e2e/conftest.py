"""Shared fixtures for the end-to-end tests: one real SPIRE for the session,
the demo workloads registered, SVIDs fetched from the Workload API, the real
upstream MCP server on its own SVID, and the gateway in front of it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gateway_fixtures import start_gateway  # noqa: E402
from mcp_fixtures import start_upstream  # noqa: E402
from spire_env import Spire  # noqa: E402

TD = "spiffe://example.org"
GATEWAY_ID = f"{TD}/ns/demo/sa/gateway"
AGENT_ID = f"{TD}/ns/demo/sa/agent"
AGENT_B_ID = f"{TD}/ns/demo/sa/agent-b"
SERVER_ID = f"{TD}/ns/demo/sa/mcp-server"


@pytest.fixture(scope="session")
def spire(tmp_path_factory):
    s = Spire.start(tmp_path_factory.mktemp("spire"))
    try:
        s.register_demo()
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="session")
def svids(spire, tmp_path_factory):
    """SVID files of the demo agents and the upstream, fetched from SPIRE."""
    out = tmp_path_factory.mktemp("svids")
    return {
        "agent": spire.fetch_svid(AGENT_ID, out),
        "agent-b": spire.fetch_svid(AGENT_B_ID, out),
        "mcp-server": spire.fetch_svid(SERVER_ID, out),
    }


@pytest.fixture(scope="session")
def upstream(svids, tmp_path_factory):
    s = svids["mcp-server"]
    log = tmp_path_factory.mktemp("upstream") / "requests.jsonl"
    up = start_upstream(cert=s.cert, key=s.key, ca=s.bundle, request_log=log)
    yield up
    up.stop()


@pytest.fixture(scope="session")
def gateway(spire, upstream, tmp_path_factory):
    gw = start_gateway(
        tmp_path_factory.mktemp("gateway"), spire.endpoint, upstream.url, SERVER_ID, hint="gateway"
    )
    try:
        gw.wait_ready()
        yield gw
    finally:
        gw.stop()
