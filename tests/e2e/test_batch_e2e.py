"""Batches (2025-03-26 only), end to end through the gateway to a real MCP
server that accepts them (server-everything, TypeScript SDK, as a plain-HTTP
sidecar upstream): each element is decided on its own, the permitted ones are
forwarded as the exact bytes they arrived as, the denied one never reaches
the server, and every element with an id is answered exactly once."""

from __future__ import annotations

import json

import pytest

from conftest import SERVER_ID
from gateway_fixtures import start_gateway
from policy_texts import schema_with
from everything_fixtures import everything  # noqa: F401 - pytest fixture
from test_credential_expiry_e2e import one_shot

AGENT = "spiffe://example.org/ns/demo/sa/agent"

POLICY = f"""
@id("agent-lifecycle")
permit (principal == Mcp::Workload::"{AGENT}",
        action in [Mcp::Action::"initialize", Mcp::Action::"notifications/initialized",
                   Mcp::Action::"tools/list"],
        resource == Mcp::Server::"everything");

@id("agent-may-echo")
permit (principal == Mcp::Workload::"{AGENT}", action == Mcp::Action::"tools/call",
        resource == Mcp::Tool::"everything/echo");
"""


def dechunk(body: bytes) -> bytes:
    out, rest = b"", body
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out, rest = out + rest[:size], rest[size + 2 :]
    return out


def messages_of(headers: dict[str, str], body: bytes) -> list[dict]:
    """JSON-RPC messages of a reply, JSON or SSE."""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = dechunk(body)
    if headers.get("content-type", "").startswith("text/event-stream"):
        items = [
            json.loads(line[5:].strip())
            for line in body.decode().splitlines()
            if line.startswith("data:") and line[5:].strip()
        ]
    else:
        items = [json.loads(body)]
    return [m for item in items for m in (item if isinstance(item, list) else [item])]


@pytest.fixture()
def batch_gateway(spire, everything, tmp_path):  # noqa: F811
    policies = schema_with(tmp_path / "policies", batch=POLICY)
    gw = start_gateway(
        tmp_path / "gw", spire.endpoint, everything.url, SERVER_ID,
        hint="gateway", policy_dir=policies, plaintext=True, name="everything",
    )  # fmt: skip
    gw.wait_ready()
    yield gw
    gw.stop()


def test_batch_elements_are_decided_one_by_one(batch_gateway, svids):
    gw, s = batch_gateway, svids["agent"]
    init = {
        "jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": {"protocolVersion": "2025-03-26", "capabilities": {},
                   "clientInfo": {"name": "batch-test", "version": "1"}},
    }  # fmt: skip
    status, head, body = one_shot(gw.port, s.bundle, s.cert, s.key, json.dumps(init).encode())
    assert status == 200, body
    session = head["mcp-session-id"]
    common = [f"Mcp-Session-Id: {session}"]
    status, _, _ = one_shot(
        gw.port, s.bundle, s.cert, s.key, b'{"jsonrpc":"2.0","method":"notifications/initialized"}', common
    )
    assert status == 202

    batch = (
        b'[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"message":"one"}}},'
        b' {"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"add","arguments":{"a":1,"b":2}}},'
        b'{"jsonrpc":"2.0","id":3,"method":"tools/list","params":{}}]'
    )
    status, head, body = one_shot(gw.port, s.bundle, s.cert, s.key, batch, common)
    assert status == 200, body
    answers = messages_of(head, body)
    by_id: dict[int, list[dict]] = {}
    for a in answers:
        by_id.setdefault(a.get("id"), []).append(a)
    assert sorted(by_id) == [1, 2, 3], answers
    assert all(len(v) == 1 for v in by_id.values()), "an element was answered twice"
    assert "one" in json.dumps(by_id[1][0]["result"])
    denied = by_id[2][0]["error"]
    assert denied["code"] == -32060
    # Element 2 was answered by the gateway, not the server: its correlation
    # id names the deny record, and the server answered only 1 and 3.
    records = gw.wait_audit(lambda r: r["correlation_id"] == denied["data"]["correlation_id"])
    record = next(r for r in records if r["correlation_id"] == denied["data"]["correlation_id"])
    assert record["decision"] == "deny" and record["target"] == "add"
    # tools/list inside the batch is filtered too: only echo is callable.
    assert [t["name"] for t in by_id[3][0]["result"]["tools"]] == ["echo"]
