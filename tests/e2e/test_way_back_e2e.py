"""The way back, end to end: list results are filtered to what the caller
may use, and server-to-client requests (roots/list, elicitation/create) are
decided with the upstream server as principal and the agent as resource."""

from __future__ import annotations

import json

import pytest

from conftest import AGENT_B_ID, AGENT_ID, SERVER_ID
from mcp_fixtures import run_py_agent, run_ts_agent
from helpers import call


def listed_tools(run) -> list[str]:
    result = call(run, "list")
    assert result["ok"] is True, result
    return sorted(t["name"] for t in result["result"]["tools"])


@pytest.mark.parametrize("sdk", ["python", "typescript"])
def test_tools_list_shows_only_callable_tools(sdk, gateway, svids):
    """agent sees the tools it may call, not delete_repository; agent-b, which
    may call none, sees an empty list. The upstream offers all five."""
    runner = run_py_agent if sdk == "python" else run_ts_agent
    a, b = svids["agent"], svids["agent-b"]
    run = runner(gateway.url, a.cert, a.key, a.bundle, calls=["list"])
    assert listed_tools(run) == ["ask_confirm", "ask_roots", "confirm", "count_roots", "echo", "get_slowly", "get_weather"]
    run_b = runner(gateway.url, b.cert, b.key, b.bundle, calls=["list"])
    assert listed_tools(run_b) == []
    records = gateway.wait_audit(
        lambda r: r["reason"] == "list_filtered" and r["caller"] == AGENT_B_ID
    )
    hidden = [r for r in records if r["reason"] == "list_filtered" and r["caller"] == AGENT_B_ID]
    record = hidden[-1]
    assert record["detail"] == "hid 8 of 8 tools the caller may not use"
    # The real method, an allowed (trimmed) reply, and the policy version
    # the list request itself was decided by.
    assert record["method"] == "tools/list" and record["decision"] == "allow", record
    decided = [
        r
        for r in records
        if r["caller"] == AGENT_B_ID and r["method"] == "tools/list" and r["reason"] != "list_filtered"
        and r["session_id"] == record["session_id"]
    ]
    assert decided and decided[-1]["decision"] == "allow", records[-5:]
    assert decided[-1]["policy_version"] == record["policy_version"], (decided[-1], record)


def test_denied_server_request_never_reaches_the_agent(gateway, upstream, svids):
    """roots/list from the server is denied: the server's tool gets the
    gateway's error, the agent never sees the request; elicitation/create is
    permitted and reaches the agent. Both decisions are audited with the
    server as caller and the agent as target."""
    a = svids["agent"]
    run = run_ts_agent(gateway.url, a.cert, a.key, a.bundle, calls=["count_roots", "confirm"])
    roots = call(run, "count_roots")
    assert roots["ok"] is True, roots
    text = json.dumps(roots["result"])
    assert "roots refused" in text and "forbidden by gateway policy" in text, text
    confirm = call(run, "confirm")
    assert "elicitation: accept" in json.dumps(confirm["result"]), confirm
    seen = [line["server_request"] for line in run.lines if "server_request" in line]
    assert seen == ["elicitation/create"], run.stdout

    records = gateway.audit()
    by_method = {r["method"]: r for r in records if r["caller"] == SERVER_ID}
    roots_rec, elicit_rec = by_method["roots/list"], by_method["elicitation/create"]
    assert roots_rec["decision"] == "deny" and roots_rec["reason"] == "default_deny"
    assert roots_rec["target_kind"] == "workload" and roots_rec["target"] == AGENT_ID
    assert elicit_rec["decision"] == "allow"
    assert elicit_rec["policy_ids"] == ["mcp-server-may-elicit-from-agent"]
    # The upstream received the gateway's refusal as the answer to roots/list.
    answers = [
        r["body"]
        for r in upstream.requests()
        if isinstance(r.get("body"), dict)
        and "error" in r["body"]
        and r["body"]["error"].get("data", {}).get("correlation_id") == roots_rec["correlation_id"]
    ]
    assert len(answers) == 1 and answers[0]["error"]["code"] == -32060


def test_input_required_round_trip_is_decided(gateway, upstream, svids):
    """2026-07-28 has no server-to-client requests on streams: the server
    answers tools/call with an InputRequiredResult embedding them, and the
    client retries with the answers. The gateway decides the embedded
    requests: roots/list (denied) turns the result into -32060 and the agent
    never sees the request; elicitation/create (permitted) goes through and
    the retry, a new tools/call, is decided again."""
    a = svids["agent"]
    before = len([r for r in gateway.audit() if r["method"] == "tools/call" and r["target"] == "ask_confirm"])
    run = run_py_agent(gateway.url, a.cert, a.key, a.bundle, calls=["ask_roots", "ask_confirm"])
    assert run.protocol_version == "2026-07-28"
    roots = call(run, "ask_roots")
    assert roots["ok"] is False and roots["error"]["code"] == -32060, roots
    confirm = call(run, "ask_confirm")
    assert "elicitation: accept" in json.dumps(confirm["result"]), confirm
    seen = [line["server_request"] for line in run.lines if "server_request" in line]
    assert seen == ["elicitation/create"], run.stdout
    correlation = roots["error"]["data"]["correlation_id"]
    records = gateway.wait_audit(lambda r: r["correlation_id"] == correlation)
    record = next(r for r in records if r["correlation_id"] == correlation)
    assert record["method"] == "roots/list" and record["caller"] == SERVER_ID
    assert record["decision"] == "deny" and record["target"] == AGENT_ID
    # The first confirm and its retry are two tools/call decisions.
    calls = [r for r in gateway.audit() if r["method"] == "tools/call" and r["target"] == "ask_confirm"]
    assert len(calls) - before >= 2 and all(r["decision"] == "allow" for r in calls)
