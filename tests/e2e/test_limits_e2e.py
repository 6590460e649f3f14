"""Fair limits per identity (issue 14, point 3), on real SPIRE identities
with the real Python MCP SDK 2.x client.

One identity that spends its request rate (or a tool's rate) gets HTTP 429
with `Retry-After` and -32071, which the SDK hands to the pending call as
an error at once (bounded: no call waits), audited with reason
`rate_limited`; the limited calls never reach the upstream; another
identity's calls in the same window all pass.
"""

from __future__ import annotations

import pytest

from conftest import AGENT_ID, SERVER_ID
from gateway_fixtures import start_gateway
from helpers import record_of, tool_calls
from mcp_fixtures import run_py_agent

CODE_LIMITED = -32071
# A limited call is answered at once; anything near the client's own
# timeout would be a hang.
PROMPT_SECONDS = 5.0


def limited_gateway(tmp_path_factory, spire, upstream, name: str, per_identity: str):
    gw = start_gateway(
        tmp_path_factory.mktemp(name),
        spire.endpoint,
        upstream.url,
        SERVER_ID,
        limits_extra=[f"  per_identity: {per_identity}"],
    )
    gw.wait_ready()
    return gw


@pytest.fixture(scope="module")
def rate_limited(spire, upstream, tmp_path_factory):
    # One token per 50 s after a burst of 6: nothing refills during the test.
    gw = limited_gateway(
        tmp_path_factory, spire, upstream, "gw-limits-rate", "{default: {requests_per_second: 0.02, burst: 6}}"
    )
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture(scope="module")
def tool_limited(spire, upstream, tmp_path_factory):
    gw = limited_gateway(
        tmp_path_factory,
        spire,
        upstream,
        "gw-limits-tool",
        "{rules: [{tool: echo, requests_per_second: 0.01, burst: 1}]}",
    )
    try:
        yield gw
    finally:
        gw.stop()


def echo(i: int) -> str:
    return f'echo:{{"text":"limit-{i}"}}'


def assert_limited(gw, result: dict) -> dict:
    """An SDK error carrying the gateway's limit, promptly, naming its
    audit record."""
    assert result["ok"] is False, result
    err = result["error"]
    assert err["code"] == CODE_LIMITED, err
    assert err.get("http_status") == 429, err
    assert result["seconds"] < PROMPT_SECONDS, result
    record = record_of(gw, err)
    assert record["reason"] == "rate_limited" and record["decision"] == "deny", record
    assert record["caller"] == AGENT_ID, record
    return record


def test_an_identity_past_its_rate_gets_429_as_an_sdk_error_while_another_passes(rate_limited, upstream, svids):
    gw = rate_limited
    a, b = svids["agent"], svids["agent-b"]
    before = len(tool_calls(upstream, "echo"))
    run = run_py_agent(gw.url, a.cert, a.key, a.bundle, calls=[echo(i) for i in range(12)], timeout=60)
    assert run.connect_error is None, run.stdout + run.stderr
    results = run.calls
    assert len(results) == 12, run.stdout + run.stderr
    passed = [r for r in results if r["ok"]]
    # Connecting took some of the burst; the calls that fit passed, every
    # one after them is refused: none hangs.
    assert 1 <= len(passed) < 6, results
    assert all(r["ok"] for r in results[: len(passed)]), results
    for refused in results[len(passed) :]:
        assert_limited(gw, refused)
    assert len(tool_calls(upstream, "echo")) == before + len(passed), "a limited call reached the upstream"

    # Another identity, in the same window: all its calls pass.
    other = run_py_agent(gw.url, b.cert, b.key, b.bundle, calls=["list", "list"], timeout=60)
    assert other.connect_error is None, other.stdout + other.stderr
    assert [r["ok"] for r in other.calls] == [True, True], other.calls

    limited = gw.metric("mcp_gateway_limited_total", '{reason="rate_limited"}')
    assert limited >= len(results) - len(passed)


def test_a_tool_rule_limits_that_tool_and_the_sdk_sees_an_error(tool_limited, upstream, svids):
    gw = tool_limited
    a = svids["agent"]
    before = len(tool_calls(upstream, "echo"))
    run = run_py_agent(gw.url, a.cert, a.key, a.bundle, calls=[echo(1), echo(2), "list"], timeout=60)
    assert run.connect_error is None, run.stdout + run.stderr
    first, second, listing = run.calls
    assert first["ok"] is True, first
    record = assert_limited(gw, second)
    assert record["target"] == "echo", record
    assert listing["ok"] is True, listing
    assert len(tool_calls(upstream, "echo")) == before + 1
