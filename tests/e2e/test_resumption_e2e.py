"""SSE resumption (2025 era) through the gateway: after a dropped stream the
session's owner resumes with Last-Event-ID and gets the missed events, each
inspected again on the way back; another identity cannot resume it."""

from __future__ import annotations

import json

from conftest import SERVER_ID
from gateway_fixtures import start_gateway
from mcp_fixtures import start_upstream
from test_credential_expiry_e2e import INIT, INITIALIZED, connect, one_shot, read_head, request


def sse_events(text: str) -> list[dict[str, str]]:
    events, current = [], {}
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line:
            if current:
                events.append(current)
            current = {}
        elif ":" in line and not line.startswith(":"):
            field, _, value = line.partition(":")
            current[field] = current.get(field, "") + value.lstrip()
    return events


def test_owner_resumes_a_stream_with_last_event_id(spire, svids, tmp_path):
    server = svids["mcp-server"]
    up = start_upstream(
        server.cert, server.key, server.bundle, request_log=tmp_path / "req.jsonl", extra_args=["--resumable"]
    )
    gw = start_gateway(tmp_path / "gw", spire.endpoint, up.url, SERVER_ID, hint="gateway")
    try:
        gw.wait_ready()
        a, b = svids["agent"], svids["agent-b"]
        status, head, _ = one_shot(gw.port, a.bundle, a.cert, a.key, INIT)
        assert status == 200
        session = head["mcp-session-id"]
        common = [f"Mcp-Session-Id: {session}", "MCP-Protocol-Version: 2025-11-25"]
        assert one_shot(gw.port, a.bundle, a.cert, a.key, INITIALIZED, common)[0] == 202

        call = b'{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"echo","arguments":{"text":"missed"}}}'
        status, head, body = one_shot(gw.port, a.bundle, a.cert, a.key, call, common)
        assert status == 200 and head["content-type"].startswith("text/event-stream"), head
        events = sse_events(body.decode(errors="replace"))
        ids = [e["id"] for e in events if "id" in e]
        assert len(ids) >= 2, events  # the priming event, then the answer
        priming = ids[0]

        # Resume after the priming event: the answer is replayed.
        with connect(gw.port, a.bundle, a.cert, a.key) as tls:
            request(tls, "GET", headers=[*common, f"Last-Event-ID: {priming}"])
            status, head, rest = read_head(tls)
            assert status == 200, head
            seen = rest
            while b"missed" not in seen:
                chunk = tls.recv(65536)
                assert chunk, f"stream ended before the replay: {seen!r}"
                seen += chunk
        replayed = [e for e in sse_events(seen.decode(errors="replace")) if "missed" in e.get("data", "")]
        assert json.loads(replayed[0]["data"])["id"] == 5
        gets = [r for r in up.requests() if r["http_method"] == "GET"]
        assert gets and gets[-1]["headers"].get("last-event-id") == priming

        # Another identity cannot resume the owner's stream.
        before = len(up.requests())
        with connect(gw.port, b.bundle, b.cert, b.key) as tls:
            request(tls, "GET", headers=[*common, f"Last-Event-ID: {priming}", "Connection: close"])
            status, _, _ = read_head(tls)
        assert status == 404
        assert len(up.requests()) == before
    finally:
        gw.stop()
        up.stop()
