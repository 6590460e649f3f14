"""Many upstreams behind one gateway, on real SPIRE identities, with real MCP
SDK clients.

Two real upstream MCP servers with different SPIFFE IDs (`alpha`: the demo
server's ID, `beta`: a second ID registered for this module) are configured
as an `upstreams:` list and served on `/mcp/alpha` and `/mcp/beta`.

- Policies see `Mcp::Server::"<name>"` and `Mcp::Tool::"<name>/<tool>"`:
  the same tool name is allowed on alpha and denied on beta; the audit names
  the upstream and its SPIFFE ID.
- An unknown name is a 404 with a clear error; nothing is forwarded.
- A session opened on alpha is refused on beta (and still works on alpha).
- Each upstream's SPIFFE ID is checked on its own connections: beta serving
  alpha's SVID is refused (-32062), though alpha's ID is a valid upstream ID
  of this very gateway.
"""

from __future__ import annotations

import json
import uuid

import pytest

from conftest import SERVER_ID, TD
from gateway_fixtures import start_gateway
from mcp_fixtures import run_py_agent, run_ts_agent, start_upstream
from raw_http import post
from helpers import call, record_of, tool_calls
from policy_texts import LIFECYCLE, schema_with, two_upstreams
from polling import wait_for

BETA_ID = f"{TD}/ns/demo/sa/mcp-server-beta"
ECHO = 'echo:{"text":"hi"}'
WEATHER = 'get_weather:{"city":"Oslo"}'

POLICY = two_upstreams(LIFECYCLE)


@pytest.fixture(scope="module")
def beta_svid(spire, tmp_path_factory):
    entry = spire.register(BETA_ID, "mcp-server-beta", dns="localhost")
    try:
        yield spire.fetch_svid(BETA_ID, tmp_path_factory.mktemp("beta-svid"))
    finally:
        spire.delete_entry(entry)


@pytest.fixture(scope="module")
def policies(tmp_path_factory):
    return schema_with(tmp_path_factory.mktemp("upstreams-policies"), upstreams=POLICY)


def entries(alpha_url: str, beta_url: str) -> list[dict]:
    return [
        {"name": "alpha", "url": alpha_url, "spiffe_id": SERVER_ID},
        {"name": "beta", "url": beta_url, "spiffe_id": BETA_ID},
    ]


@pytest.fixture(scope="module")
def two(spire, svids, beta_svid, policies, tmp_path_factory):
    """alpha and beta upstreams (each its own SVID) and the gateway."""
    s = svids["mcp-server"]
    logs = tmp_path_factory.mktemp("upstream-logs")
    alpha = start_upstream(cert=s.cert, key=s.key, ca=s.bundle, request_log=logs / "alpha.jsonl")
    b = beta_svid
    beta = start_upstream(cert=b.cert, key=b.key, ca=b.bundle, request_log=logs / "beta.jsonl")
    gw = start_gateway(
        tmp_path_factory.mktemp("gw-two"), spire.endpoint, "", "",
        policy_dir=policies, upstreams=entries(alpha.url, beta.url),
    )  # fmt: skip
    try:
        gw.wait_ready()
        yield gw, alpha, beta
    finally:
        gw.stop()
        alpha.stop()
        beta.stop()


@pytest.mark.parametrize("sdk", ["python", "typescript"])
def test_same_tool_allowed_on_one_upstream_denied_on_the_other(sdk, two, svids):
    gw, alpha, beta = two
    a = svids["agent"]
    runner = run_py_agent if sdk == "python" else run_ts_agent
    alpha_before, beta_before = len(tool_calls(alpha, "echo")), len(tool_calls(beta, "echo"))

    on_alpha = runner(gw.url + "/alpha", a.cert, a.key, a.bundle, calls=[ECHO])
    echo = call(on_alpha, ECHO)
    assert echo["ok"] is True and "hi" in json.dumps(echo["result"]), on_alpha.stdout + on_alpha.stderr
    assert len(tool_calls(alpha, "echo")) == alpha_before + 1

    on_beta = runner(gw.url + "/beta", a.cert, a.key, a.bundle, calls=[ECHO, WEATHER])
    denied = call(on_beta, ECHO)
    assert denied["ok"] is False and denied["error"]["code"] == -32060, denied
    weather = call(on_beta, WEATHER)
    assert weather["ok"] is True and "Oslo" in json.dumps(weather["result"]), weather
    assert len(tool_calls(beta, "echo")) == beta_before, "the denied call reached beta"
    assert len(tool_calls(alpha, "get_weather")) == 0, "beta's call went to alpha"

    record = record_of(gw, denied["error"])
    assert record["decision"] == "deny", record
    assert record["upstream"] == "beta" and record["upstream_spiffe_id"] == BETA_ID, record
    assert record["target"] == "echo" and record["policy_ids"] == ["no-echo-on-beta"], record
    allowed = gw.wait_audit(
        lambda r: r["upstream"] == "alpha" and r.get("target") == "echo" and r["decision"] == "allow"
    )
    rec = next(r for r in allowed if r["upstream"] == "alpha" and r.get("target") == "echo")
    assert rec["upstream_spiffe_id"] == SERVER_ID and rec["policy_ids"] == ["echo-on-alpha"], rec


def test_unknown_upstream_is_404_and_nothing_is_forwarded(two, svids):
    gw, alpha, beta = two
    a = svids["agent"]
    seen = len(alpha.requests()) + len(beta.requests())
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping"}).encode()
    for path in ["/mcp/gamma", "/mcp/alpha/x", "/mcp", "/mcp/"]:
        r = post(gw.port, a, body, path=path)
        assert r.status == 404, (path, r)
        err = r.json()["error"]
        assert err["code"] == -32064, (path, err)
        if path == "/mcp/gamma":
            assert err["message"] == "no such upstream" and "gamma" not in json.dumps(err), err
            record = record_of(gw, err)
            assert record["reason"] == "unknown_upstream" and record["upstream"] == "", record
    # A real SDK client pointed at an unknown upstream gets the error too.
    run = run_py_agent(gw.url + "/gamma", a.cert, a.key, a.bundle, calls=[ECHO])
    assert run.negotiated is None and run.connect_error is not None, run.stdout
    assert len(alpha.requests()) + len(beta.requests()) == seen


def test_a_session_is_bound_to_its_upstream(two, svids):
    gw, alpha, beta = two
    a = svids["agent"]
    run = run_ts_agent(gw.url + "/alpha", a.cert, a.key, a.bundle, calls=[ECHO])
    sid = run.negotiated["session_id"]
    assert sid, run.stdout
    # The run ended its session with DELETE; open one that stays, raw.
    init = {
        "jsonrpc": "2.0", "id": f"init-{uuid.uuid4().hex[:8]}", "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}},
    }  # fmt: skip
    r = post(gw.port, a, json.dumps(init).encode(), path="/mcp/alpha")
    assert r.status == 200, r
    sid = r.header("mcp-session-id")
    assert sid, r
    headers = [("Mcp-Session-Id", sid), ("MCP-Protocol-Version", "2025-11-25")]
    ping = json.dumps({"jsonrpc": "2.0", "id": 7, "method": "ping"}).encode()
    beta_seen = len(beta.requests())
    on_beta = post(gw.port, a, ping, headers, path="/mcp/beta")
    assert on_beta.status == 404, on_beta
    err = on_beta.json()["error"]
    assert err["code"] == -32065, err
    record = record_of(gw, err)
    assert record["reason"] == "session_unknown" and record["upstream"] == "beta", record
    assert len(beta.requests()) == beta_seen, "the session's request reached beta"
    on_alpha = post(gw.port, a, ping, headers, path="/mcp/alpha")
    assert on_alpha.status == 200, on_alpha


def test_each_upstream_must_present_its_own_spiffe_id(spire, svids, beta_svid, policies, tmp_path):
    """beta's process serves alpha's SVID: alpha's ID is valid for alpha, but
    never for beta's connections."""
    s = svids["mcp-server"]
    alpha = start_upstream(cert=s.cert, key=s.key, ca=s.bundle, request_log=tmp_path / "alpha.jsonl")
    impostor = start_upstream(cert=s.cert, key=s.key, ca=s.bundle, request_log=tmp_path / "impostor.jsonl")
    gw = start_gateway(
        tmp_path / "gw", spire.endpoint, "", "", policy_dir=policies,
        upstreams=entries(alpha.url, impostor.url),
    )  # fmt: skip
    a = svids["agent"]
    try:
        gw.wait_ready()
        run = run_py_agent(gw.url + "/beta", a.cert, a.key, a.bundle, calls=[WEATHER])
        err = run.connect_error
        assert err is not None and err["code"] == -32062, run.stdout
        record = record_of(gw, err)
        assert record["reason"] == "upstream_identity", record
        assert record["upstream"] == "beta" and record["upstream_spiffe_id"] == BETA_ID, record
        assert impostor.requests() == [], "a request reached the impostor"
        assert gw.metric("mcp_gateway_upstream_up", '{upstream="beta"}') == 0
        # alpha, with the same certificate, is fine on its own route.
        ok = run_py_agent(gw.url + "/alpha", a.cert, a.key, a.bundle, calls=[ECHO])
        assert call(ok, ECHO)["ok"] is True, ok.stdout + ok.stderr
    finally:
        gw.stop()
        alpha.stop()
        impostor.stop()


def test_an_idle_session_is_ended_at_its_own_upstream(spire, svids, beta_svid, policies, tmp_path):
    """Sessions on alpha and beta go idle: each upstream gets the DELETE for
    its own session id only (the sweep runs every 10 s)."""
    s, b, a = svids["mcp-server"], beta_svid, svids["agent"]
    alpha = start_upstream(cert=s.cert, key=s.key, ca=s.bundle, request_log=tmp_path / "alpha.jsonl")
    beta = start_upstream(cert=b.cert, key=b.key, ca=b.bundle, request_log=tmp_path / "beta.jsonl")
    gw = start_gateway(
        tmp_path / "gw", spire.endpoint, "", "", policy_dir=policies,
        upstreams=entries(alpha.url, beta.url), session_idle_timeout=1,
    )  # fmt: skip
    try:
        gw.wait_ready()
        sids = {}
        for name in ("alpha", "beta"):
            init = {
                "jsonrpc": "2.0", "id": 1, "method": "initialize",
                "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}},
            }  # fmt: skip
            r = post(gw.port, a, json.dumps(init).encode(), path=f"/mcp/{name}")
            assert r.status == 200 and r.header("mcp-session-id"), r
            sealed = r.header("mcp-session-id")
            # The upstream knows the session by its own id: the gateway
            # sends that one in place of the sealed id the caller holds.
            note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
            headers = [("mcp-session-id", sealed), ("mcp-protocol-version", "2025-11-25")]
            r = post(gw.port, a, json.dumps(note).encode(), path=f"/mcp/{name}", headers=headers)
            assert r.status == 202, r
            up = {"alpha": alpha, "beta": beta}[name]
            sids[name] = up.requests()[-1]["headers"]["mcp-session-id"]
            assert sids[name] != sealed

        def deletes(up) -> list[str]:
            return [q["headers"].get("mcp-session-id") for q in up.requests() if q["http_method"] == "DELETE"]

        wait_for("DELETEs at both upstreams", lambda: deletes(alpha) and deletes(beta), timeout=30)
        assert deletes(alpha) == [sids["alpha"]], deletes(alpha)
        assert deletes(beta) == [sids["beta"]], deletes(beta)
    finally:
        gw.stop()
        alpha.stop()
        beta.stop()
