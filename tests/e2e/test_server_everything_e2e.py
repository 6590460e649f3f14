"""The server-sidecar role with a real third-party MCP server: the unmodified
`@modelcontextprotocol/server-everything` (npm) speaks plain HTTP on
127.0.0.1, a server sidecar (a second gateway process with its own SVID)
terminates mTLS in front of it, and the central gateway reaches it over mTLS
by that SVID's SPIFFE ID (topology in everything_fixtures.py).

The real SDK agents, in one session, get `echo` through and are refused
`get-env` (the tool that prints the server's environment) by the central
gateway's forbid policy; the refused call never reaches the sidecar or the
server; the audit records at both hops say why. An agent that tries to go
around the gateway, straight to the sidecar, is denied by the sidecar's
own deny-by-default policy.
"""

from __future__ import annotations

import json

import pytest

from conftest import AGENT_ID, GATEWAY_ID
from everything_fixtures import (  # noqa: F401 (fixtures)
    EVERYTHING_ID,
    central,
    everything,
    everything_entry,
    server_sidecar,
    tool_records,
)
from mcp_fixtures import run_py_agent, run_ts_agent
from helpers import assert_denied, call

ECHO = 'echo:{"message":"hello through two gateways"}'
GET_ENV = "get-env"

# The Python SDK 2.x starts with a 2026-07-28 `server/discover` probe; the
# gateways pass it on, server-everything (TypeScript SDK 1.x) answers it as
# a 2025-era server, and the SDK falls back to `initialize` at 2025-11-25.
EXPECTED_VERSION = {"typescript": "2025-11-25", "python": "2025-11-25"}


@pytest.mark.parametrize("sdk", ["typescript", "python"])
def test_echo_allowed_get_env_refused_in_one_session(sdk, central, server_sidecar, svids):
    """agent --mTLS--> gateway --mTLS--> server sidecar --plain--> server-everything:
    the real server answers echo; get-env is refused by the central gateway
    with the forbid policy's id, in the same session, and neither the sidecar
    nor the server ever sees it."""
    s = svids["agent"]
    seen_at_sidecar = len(tool_records(server_sidecar, GET_ENV))
    runner = run_py_agent if sdk == "python" else run_ts_agent
    run = runner(central.url, s.cert, s.key, s.bundle, calls=[ECHO, GET_ENV, ECHO + " "])
    assert run.negotiated, run.stdout + run.stderr
    assert run.protocol_version == EXPECTED_VERSION[sdk], run.negotiated
    assert run.negotiated["server_info"]["name"] == "mcp-servers/everything", run.negotiated

    echo = call(run, ECHO)
    assert echo["ok"] is True, echo
    assert "Echo: hello through two gateways" in json.dumps(echo["result"]), echo

    env = call(run, GET_ENV)
    deny = assert_denied(env, central)
    assert deny["caller"] == AGENT_ID and deny["target"] == GET_ENV, deny
    assert deny["reason"] == "forbid" and deny["policy_ids"] == ["nobody-reads-the-environment"], deny
    assert deny["upstream"] == "everything" and deny["upstream_spiffe_id"] == EVERYTHING_ID, deny
    assert "PATH" not in json.dumps(env), "the environment leaked into the refusal"
    # The adjacent call after the refusal still works, in the same session.
    assert call(run, ECHO + " ")["ok"] is True

    allows = [r for r in tool_records(central, "echo") if r["decision"] == "allow"]
    assert allows and allows[-1]["caller"] == AGENT_ID
    if run.negotiated.get("session_id"):
        # One session; records name it by the upstream's own id, never by
        # the sealed id the agent holds.
        assert allows[-1]["session_id"] == deny["session_id"], (allows[-1], deny)
        assert deny["session_id"] and deny["session_id"] != run.negotiated["session_id"]

    # The sidecar saw the echo from the central gateway, and never get-env.
    server_sidecar.wait_audit(
        lambda r: r.get("target") == "echo" and r["decision"] == "allow" and r["caller"] == GATEWAY_ID
    )
    assert len(tool_records(server_sidecar, GET_ENV)) == seen_at_sidecar, "get-env reached the server sidecar"
    for r in tool_records(server_sidecar, "echo"):
        assert r["policy_ids"] == ["only-the-gateway-reaches-everything"], r


def test_agent_going_around_the_gateway_is_refused(server_sidecar, svids):
    """The agent's own SVID, straight to the server sidecar: the sidecar's
    policy admits only the central gateway, so the session never opens and
    the audit names the agent and default_deny."""
    s = svids["agent"]
    run = run_ts_agent(f"https://localhost:{server_sidecar.port}/mcp", s.cert, s.key, s.bundle, calls=[ECHO])
    assert run.negotiated is None and run.connect_error, run.stdout + run.stderr
    assert run.connect_error["code"] == -32060, run.connect_error
    records = server_sidecar.wait_audit(
        lambda r: r["caller"] == AGENT_ID and r.get("method") == "initialize" and r["decision"] == "deny"
    )
    deny = [r for r in records if r["caller"] == AGENT_ID and r.get("method") == "initialize"][-1]
    assert deny["reason"] == "default_deny" and deny["policy_ids"] == [], deny
    assert not [r for r in records if r["caller"] == AGENT_ID and r["decision"] == "allow"]
