"""Helpers the end-to-end modules share: the demo calls, what the upstream
received, denials as a client sees them, one raw HTTPS POST, leaves SPIRE
would never issue. (Polling: `polling.wait_for`; certificates: `certs`.)"""

from __future__ import annotations

import json
import socket
import ssl

from conftest import AGENT_ID
from polling import wait_for  # noqa: F401 - the one polling helper, also reachable from here

ECHO = 'echo:{"text":"hello through the gateway"}'
DELETE = 'delete_repository:{"repo":"acme/prod"}'
WEATHER = 'get_weather:{"city":"Lisbon"}'


def tool_calls(upstream, name: str) -> list[dict]:
    """tools/call requests for `name` the upstream received."""
    out = []
    for req in upstream.requests():
        body = req.get("body")
        for msg in body if isinstance(body, list) else [body]:
            if (
                isinstance(msg, dict)
                and msg.get("method") == "tools/call"
                and msg.get("params", {}).get("name") == name
            ):
                out.append(msg)
    return out


def call(run, spec: str) -> dict:
    matches = [c for c in run.calls if c["call"] == spec]
    assert len(matches) == 1, f"{spec} not run once: {run.stdout}\n{run.stderr}"
    return matches[0]


def assert_denied(result: dict, gateway) -> dict:
    """A denial the client understands: code -32060 and a correlation id that
    names a deny record in the audit log. Returns that record."""
    assert result["ok"] is False, result
    err = result["error"]
    assert err["code"] == -32060, err
    assert "policy" in err["message"] and "forbid" not in json.dumps(err).lower().replace(
        "forbidden", ""
    ), err
    record = record_of(gateway, err)
    assert record["decision"] == "deny"
    return record


def record_of(gw, err: dict) -> dict:
    """The audit record an error reply's correlation id names."""
    correlation = err["data"]["correlation_id"]
    records = gw.wait_audit(lambda r: r["correlation_id"] == correlation)
    return next(r for r in records if r["correlation_id"] == correlation)


def retry_until_allowed(attempt, spec: str = ECHO, timeout: float = 30.0):
    """Runs `attempt()` (an agent run) until its `spec` call is allowed; for a
    gateway that loads JWT bundles in the background and refuses such
    callers until then. Returns that run."""
    last = []

    def allowed():
        run = attempt()
        last[:] = [run]
        return run if not run.connect_error and call(run, spec)["ok"] else None

    return wait_for(f"{spec} to be allowed", allowed, timeout, every=0.2, detail=lambda: last[0].stdout + last[0].stderr)


def https_post(port: int, ca: str, cert=None, key=None, body: bytes = b"{}", headers=None) -> bytes:
    """One raw HTTPS POST; returns the raw response bytes (raises on TLS failure).

    `headers` are extra header lines; the PROBE body gets its 2026-07-28
    headers by default."""
    if headers is None:
        headers = MODERN_PROBE_HEADERS if body == PROBE else []
    ctx = ssl.create_default_context(cafile=ca)
    ctx.check_hostname = False
    if cert:
        ctx.load_cert_chain(cert, key)
    head = "".join(f"{h}\r\n" for h in headers).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(
                b"POST /mcp HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                b"Accept: application/json, text/event-stream\r\n"
                + head
                + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            out = b""
            while chunk := tls.recv(65536):
                out += chunk
            return out


# A complete stateless 2026-07-28 request: version and capabilities in _meta.
PROBE = (
    b'{"jsonrpc":"2.0","id":1,"method":"server/discover","params":{"_meta":{'
    b'"io.modelcontextprotocol/protocolVersion":"2026-07-28",'
    b'"io.modelcontextprotocol/clientCapabilities":{}}}}'
)
MODERN_PROBE_HEADERS = ["MCP-Protocol-Version: 2026-07-28", "Mcp-Method: server/discover"]


def bad_leaves(spire, tmp_path):
    import datetime as dt

    now = dt.datetime.now(dt.timezone.utc)
    return {
        "foreign CA, valid-looking SPIFFE ID": spire.mint_leaf(
            tmp_path, [AGENT_ID], signer="foreign", name="foreign"
        ),
        "two URI SANs": spire.mint_leaf(
            tmp_path, [AGENT_ID, "spiffe://example.org/ns/demo/sa/other"], name="two-uris"
        ),
        "spiffe URI plus https URI": spire.mint_leaf(
            tmp_path, [AGENT_ID, "https://example.org/"], name="mixed-uris"
        ),
        "CA certificate as leaf": spire.mint_leaf(tmp_path, [AGENT_ID], is_ca=True, name="ca-leaf"),
        "expired leaf": spire.mint_leaf(
            tmp_path,
            [AGENT_ID],
            not_before=now - dt.timedelta(hours=2),
            not_after=now - dt.timedelta(hours=1),
            name="expired",
        ),
        "no digitalSignature": spire.mint_leaf(
            tmp_path, [AGENT_ID], key_usage_digital_signature=False, name="no-ds"
        ),
        "no URI SAN": spire.mint_leaf(tmp_path, [], name="no-uri"),
    }
