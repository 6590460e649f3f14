"""No connection outlives its credential: an SSE stream opened with a
certificate that expires is closed by the gateway at expiry. The session
that certificate opened does not end with it: a session belongs to the
SPIFFE ID, and its owner goes on with its next valid SVID."""

from __future__ import annotations

import datetime as dt
import json
import socket
import ssl
import time

from conftest import AGENT_ID

INIT = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "expiry-test", "version": "1"},
        },
    }
).encode()
INITIALIZED = b'{"jsonrpc":"2.0","method":"notifications/initialized"}'
LIST = b'{"jsonrpc":"2.0","id":2,"method":"tools/list","params":{}}'


def connect(port: int, ca, cert, key) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.check_hostname = False
    ctx.load_cert_chain(cert, key)
    raw = socket.create_connection(("127.0.0.1", port), timeout=30)
    return ctx.wrap_socket(raw, server_hostname="localhost")


def request(tls, method: str, body: bytes = b"", headers=()) -> None:
    head = f"{method} /mcp HTTP/1.1\r\nHost: localhost\r\nAccept: application/json, text/event-stream\r\n"
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    head += "".join(f"{h}\r\n" for h in headers) + "\r\n"
    tls.sendall(head.encode() + body)


def read_head(tls) -> tuple[int, dict[str, str], bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = tls.recv(65536)
        assert chunk, f"connection closed before a response head: {buf!r}"
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    return int(lines[0].split()[1]), headers, rest


def one_shot(port, ca, cert, key, body, headers=()) -> tuple[int, dict[str, str], bytes]:
    with connect(port, ca, cert, key) as tls:
        request(tls, "POST", body, [*headers, "Connection: close"])
        status, head, rest = read_head(tls)
        while chunk := tls.recv(65536):
            rest += chunk
        return status, head, rest


def test_the_stream_ends_with_the_certificate_and_the_session_does_not(gateway, spire, svids, tmp_path):
    s = svids["agent"]
    lifetime = 12
    not_after = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=lifetime)
    cert, key = spire.mint_leaf(tmp_path, [AGENT_ID], not_after=not_after, name="short")
    # The minted chain is leaf-only; the gateway chains it to the bundle root.
    status, head, _ = one_shot(gateway.port, s.bundle, cert, key, INIT)
    assert status == 200, head
    session = head["mcp-session-id"]
    common = [f"Mcp-Session-Id: {session}", "MCP-Protocol-Version: 2025-11-25"]
    status, _, _ = one_shot(gateway.port, s.bundle, cert, key, INITIALIZED, common)
    assert status == 202
    # Records name the session by the upstream's own id, not the sealed one.
    opened = gateway.wait_audit(lambda r: r["method"] == "notifications/initialized" and r["caller"] == AGENT_ID)
    upstream_sid = [r for r in opened if r["method"] == "notifications/initialized" and r["caller"] == AGENT_ID][-1]["session_id"]
    assert upstream_sid and upstream_sid != session

    with connect(gateway.port, s.bundle, cert, key) as tls:
        request(tls, "GET", headers=common)
        status, head, _ = read_head(tls)
        assert status == 200 and head["content-type"].startswith("text/event-stream"), head
        # The stream stays open (the server has nothing to say) until the
        # gateway closes it because the certificate expired.
        while tls.recv(65536):
            pass
        closed_at = time.time()
    expiry = not_after.timestamp()
    assert expiry - 1 <= closed_at <= expiry + 15, (closed_at - expiry)

    # The session outlived the certificate that opened it: the same
    # identity, with its current SVID, goes on in it.
    status, _, body = one_shot(gateway.port, s.bundle, s.cert, s.key, LIST, common)
    assert status == 200, body
    # (JSON or SSE, maybe chunked: look for the result, not at the framing.)
    assert b'"result"' in body and b'"tools"' in body and b'"error"' not in body, body
    records = gateway.wait_audit(
        lambda r: r["session_id"] == upstream_sid and r["method"] == "tools/list" and r["decision"] == "allow"
    )
    assert [r for r in records if r["session_id"] == upstream_sid and r["method"] == "tools/list"], records[-3:]
    # Another identity still cannot use it.
    b = svids["agent-b"]
    status, _, body = one_shot(gateway.port, b.bundle, b.cert, b.key, LIST, common)
    assert status == 404 and json.loads(body)["error"]["code"] == -32065, body


def test_idle_session_ends(spire, upstream, svids, tmp_path):
    """A session unused for longer than the idle timeout ends: its owner gets
    404 and must initialize again. (The wait is the condition under test.)"""
    from conftest import SERVER_ID
    from gateway_fixtures import start_gateway

    gw = start_gateway(tmp_path, spire.endpoint, upstream.url, SERVER_ID, hint="gateway", session_idle_timeout=1)
    try:
        gw.wait_ready()
        s = svids["agent"]
        status, head, _ = one_shot(gw.port, s.bundle, s.cert, s.key, INIT)
        assert status == 200
        common = [f"Mcp-Session-Id: {head['mcp-session-id']}", "MCP-Protocol-Version: 2025-11-25"]
        assert one_shot(gw.port, s.bundle, s.cert, s.key, INITIALIZED, common)[0] == 202
        time.sleep(2.5)  # idles past the 1 s idle timeout: the behaviour under test
        status, _, body = one_shot(gw.port, s.bundle, s.cert, s.key, LIST, common)
        assert status == 404, body
        err = json.loads(body)["error"]
        assert err["code"] == -32065
        records = gw.wait_audit(lambda r: r["correlation_id"] == err["data"]["correlation_id"])
        record = next(r for r in records if r["correlation_id"] == err["data"]["correlation_id"])
        assert record["reason"] in ("session_expired", "session_unknown")
    finally:
        gw.stop()
