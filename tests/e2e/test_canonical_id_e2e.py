"""A SPIFFE ID that is not in canonical form is never taken as another
workload's. Certificates signed by the trust domain's own root (the one in
SPIRE's bundle) whose URI SAN is the agent's ID with a folded scheme or
trust domain are refused at the handshake: counted as a handshake failure,
logged, and nothing is decided, audited as the agent or forwarded."""

from __future__ import annotations

import socket
import ssl

import pytest

from conftest import AGENT_ID
from raw_http import PROBE, PROBE_HEADERS, assert_serving, head, read_all

FOLDED = [
    "SPIFFE://example.org/ns/demo/sa/agent",
    "spiffe://EXAMPLE.ORG/ns/demo/sa/agent",
    "spiffe://Example.org/ns/demo/sa/agent",
]


def attempt(port: int, bundle, cert, key) -> bytes:
    """A handshake and one allowed request; returns what came back (b"" when
    the gateway refused the connection)."""
    ctx = ssl.create_default_context(cafile=str(bundle))
    ctx.check_hostname = False
    ctx.load_cert_chain(str(cert), str(key))
    ctx.set_alpn_protocols(["http/1.1"])
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        tls = ctx.wrap_socket(raw, server_hostname="localhost")
        request = head(
            [
                ("Content-Type", "application/json"),
                ("Accept", "application/json, text/event-stream"),
                ("Content-Length", str(len(PROBE))),
                ("Connection", "close"),
                *PROBE_HEADERS,
            ]
        )
        tls.sendall(request + PROBE)
        return read_all(tls, timeout=10)
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        return b""
    finally:
        raw.close()


@pytest.mark.parametrize("uri", FOLDED)
def test_a_folded_spiffe_id_is_refused_at_the_handshake(gateway, spire, svids, upstream, tmp_path, uri):
    agent = svids["agent"]
    assert_serving(gateway.port, agent, gateway)  # a barrier: earlier records are on disk
    cert, key = spire.mint_leaf(tmp_path, [uri], name="folded")
    failures = gateway.metric("mcp_gateway_tls_handshake_failures_total")
    records = len(gateway.audit())
    upstream.clear_requests()
    got = attempt(gateway.port, agent.bundle, cert, key)
    assert got == b"", got
    assert gateway.metric("mcp_gateway_tls_handshake_failures_total") == failures + 1
    gateway.wait_log("caller refused at the handshake", "canonical")
    # Nothing decided or forwarded under the agent's (or any) name.
    assert_serving(gateway.port, agent, gateway)
    new = gateway.audit()[records:]
    assert len(new) == 1 and new[0]["caller"] == AGENT_ID, new
    assert all(r["method"] != "server/discover" or r["caller"] == AGENT_ID for r in new)
    assert len(upstream.requests()) == 1


def test_the_canonical_id_signed_the_same_way_is_served(gateway, spire, svids, tmp_path):
    cert, key = spire.mint_leaf(tmp_path, [AGENT_ID], name="canonical")
    got = attempt(gateway.port, svids["agent"].bundle, cert, key)
    assert got.startswith(b"HTTP/1.1 200"), got[:200]
