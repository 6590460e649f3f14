"""The aggregated endpoint (`aggregate:`) on real SPIRE identities, with real
MCP SDK clients.

Two real upstream MCP servers with different SPIFFE IDs (`alpha`: the demo
server's ID, `beta`: a second registered ID) are served together on
`/mcp/all`, their tools named `<upstream>__<tool>`. beta also offers a tool
literally named `alpha__echo`, which must appear as `beta__alpha__echo` and
never shadow alpha's `echo`. Prompts likewise: alpha offers `review` and
`secret`, beta `review` and a lookalike `alpha__review`. Resources are
listed as `mcp-gateway://<upstream>/<percent-encoded uri>`: alpha and beta
both offer `file:///docs/readme.md`, which must reach only the upstream the
gateway URI names.

The TypeScript SDK speaks 2025-11-25 (an aggregated session); the Python SDK
2.x speaks 2026-07-28 natively (stateless: `server/discover` answered by the
gateway, every request fanned out or routed without sessions).
"""

from __future__ import annotations

import json
import re
from urllib.parse import quote

import pytest

from conftest import AGENT_ID, SERVER_ID
from gateway_fixtures import start_gateway
from mcp_fixtures import run_py_agent, run_ts_agent, start_upstream
from raw_http import post, request
from helpers import call, record_of
from policy_texts import LIFECYCLE, schema_with, two_upstreams

# The beta upstream's SVID fixture (a module-scoped entry of its own here),
# its ID and the upstreams: list are the many-upstreams test's.
from test_upstreams_e2e import BETA_ID, beta_svid, entries  # noqa: F401

README = "file:///docs/readme.md"
NOTE = "note://beta/hello?x=1&y=2"
AGGREGATE = "aggregate: { name: all, upstreams: [alpha, beta] }\n"
INIT = {
    "jsonrpc": "2.0", "id": 1, "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}},
}  # fmt: skip

POLICY = two_upstreams(
    [*LIFECYCLE, "prompts/list", "resources/list"],
    f"""
@id("lookalike-on-beta")
permit (
  principal == Mcp::Workload::"{AGENT_ID}",
  action == Mcp::Action::"tools/call",
  resource == Mcp::Tool::"beta/alpha__echo"
);

@id("review-on-alpha")
permit (
  principal == Mcp::Workload::"{AGENT_ID}",
  action == Mcp::Action::"prompts/get",
  resource == Mcp::Prompt::"alpha/review"
);

@id("lookalike-prompt-on-beta")
permit (
  principal == Mcp::Workload::"{AGENT_ID}",
  action == Mcp::Action::"prompts/get",
  resource == Mcp::Prompt::"beta/alpha__review"
);

@id("no-review-on-beta")
forbid (
  principal,
  action == Mcp::Action::"prompts/get",
  resource == Mcp::Prompt::"beta/review"
);

@id("readme-on-alpha")
permit (
  principal == Mcp::Workload::"{AGENT_ID}",
  action == Mcp::Action::"resources/read",
  resource == Mcp::Resource::"alpha/file:///docs/readme.md"
);

@id("note-on-beta")
permit (
  principal == Mcp::Workload::"{AGENT_ID}",
  action == Mcp::Action::"resources/read",
  resource == Mcp::Resource::"beta/note://beta/hello?x=1&y=2"
);

@id("no-readme-on-beta")
forbid (
  principal,
  action == Mcp::Action::"resources/read",
  resource == Mcp::Resource::"beta/file:///docs/readme.md"
);

@id("ask-confirm-on-alpha")
permit (
  principal == Mcp::Workload::"{AGENT_ID}",
  action == Mcp::Action::"tools/call",
  resource == Mcp::Tool::"alpha/ask_confirm"
);

@id("ask-roots-on-alpha")
permit (
  principal == Mcp::Workload::"{AGENT_ID}",
  action == Mcp::Action::"tools/call",
  resource == Mcp::Tool::"alpha/ask_roots"
);

@id("alpha-may-elicit-from-agent")
permit (
  principal == Mcp::Workload::"{SERVER_ID}",
  action == Mcp::Action::"elicitation/create",
  resource == Mcp::Workload::"{AGENT_ID}"
);

""",
)


@pytest.fixture(scope="module")
def policies(tmp_path_factory):
    return schema_with(tmp_path_factory.mktemp("aggregate-policies"), aggregate=POLICY)


@pytest.fixture(scope="module")
def agg(spire, svids, beta_svid, policies, tmp_path_factory):
    s, b = svids["mcp-server"], beta_svid
    logs = tmp_path_factory.mktemp("aggregate-logs")
    alpha = start_upstream(
        cert=s.cert, key=s.key, ca=s.bundle, request_log=logs / "alpha.jsonl",
        extra_args=["--prompt", "review", "--prompt", "secret", "--resource", README, "--resource", "file:///etc/secret"],
    )  # fmt: skip
    # beta answers tools/list two tools a page: the gateway follows nextCursor.
    beta = start_upstream(
        cert=b.cert, key=b.key, ca=b.bundle, request_log=logs / "beta.jsonl",
        extra_args=["--echo-alias", "alpha__echo", "--tools-page-size", "2", "--prompt", "review", "--prompt", "alpha__review",
                    "--resource", README, "--resource", NOTE],
    )  # fmt: skip
    gw = start_gateway(
        tmp_path_factory.mktemp("gw-aggregate"), spire.endpoint, "", "",
        policy_dir=policies, upstreams=entries(alpha.url, beta.url), extra_yaml=AGGREGATE,
    )  # fmt: skip
    try:
        gw.wait_ready()
        yield gw, alpha, beta
    finally:
        gw.stop()
        alpha.stop()
        beta.stop()


def calls_of(up) -> list[str]:
    out = []
    for req in up.requests():
        body = req.get("body")
        if isinstance(body, dict) and body.get("method") == "tools/call":
            out.append(body["params"]["name"])
    return out


# The TypeScript SDK opens an aggregated session; the Python SDK 2.x uses
# 2026-07-28 natively on the aggregated path (no fallback).
VERSION = {"typescript": "2025-11-25", "python": "2026-07-28"}
ECHO_A = 'alpha__echo:{"text":"hi-alpha"}'
WEATHER_B = 'beta__get_weather:{"city":"Oslo"}'
ECHO_B = 'beta__echo:{"text":"hi-beta"}'
LOOKALIKE = 'beta__alpha__echo:{"text":"from-beta"}'
NO_PREFIX = 'echo:{"text":"x"}'
UNKNOWN = 'gamma__echo:{"text":"x"}'
NOT_OFFERED = 'alpha__alpha__echo:{"text":"x"}'


@pytest.mark.parametrize("sdk", ["typescript", "python"])
def test_one_endpoint_lists_and_routes_both_upstreams(sdk, agg, svids):
    gw, alpha, beta = agg
    a = svids["agent"]
    runner = run_ts_agent if sdk == "typescript" else run_py_agent
    alpha_before, beta_before = calls_of(alpha), calls_of(beta)
    requests_before = len(alpha.requests()), len(beta.requests())

    def modern_refusals() -> int:
        return sum(1 for r in gw.audit() if r["reason"] == "unsupported_protocol_version")

    refusals_before = modern_refusals()
    run = runner(
        gw.url + "/all", a.cert, a.key, a.bundle,
        calls=["list", ECHO_A, WEATHER_B, ECHO_B, LOOKALIKE, NO_PREFIX, UNKNOWN, NOT_OFFERED],
    )  # fmt: skip
    out = run.stdout + run.stderr
    assert run.negotiated is not None and run.negotiated["protocol_version"] == VERSION[sdk], out

    listed = call(run, "list")
    assert listed["ok"] is True, out
    names = sorted(t["name"] for t in listed["result"]["tools"])
    # Only what policy allows, each under its upstream's prefix; beta's
    # `alpha__echo` is beta's, listed as such.
    assert names == ["alpha__ask_confirm", "alpha__ask_roots", "alpha__echo", "beta__alpha__echo", "beta__get_weather"], names
    # beta's tools came in pages of two: every page was read.
    cursors = [
        q["body"]["params"].get("cursor") for q in beta.requests()
        if isinstance(q.get("body"), dict) and q["body"].get("method") == "tools/list" and q["body"].get("params")
    ]  # fmt: skip
    assert "2" in cursors and "4" in cursors, cursors

    echo = call(run, ECHO_A)
    assert echo["ok"] is True and "hi-alpha" in json.dumps(echo["result"]), out
    weather = call(run, WEATHER_B)
    assert weather["ok"] is True and "Oslo" in json.dumps(weather["result"]), out
    lookalike = call(run, LOOKALIKE)
    assert lookalike["ok"] is True and "from-beta" in json.dumps(lookalike["result"]), out

    denied = call(run, ECHO_B)
    assert denied["ok"] is False and denied["error"]["code"] == -32060, denied
    record = record_of(gw, denied["error"])
    assert record["upstream"] == "beta" and record["upstream_spiffe_id"] == BETA_ID, record
    assert record["target"] == "echo" and record["policy_ids"] == ["no-echo-on-beta"], record
    if sdk == "python":
        # Stateless: no session, and the probe was not refused (records are
        # written in order: a refusal would be on disk by now).
        assert run.negotiated["session_id"] is None, out
        assert modern_refusals() == refusals_before, out
        # Each member was asked at 2026-07-28, with no session id, and the
        # call's Mcp-Name header names the real tool, as its body does.
        checked = []
        for up, n in zip((alpha, beta), requests_before):
            for q in up.requests()[n:]:
                body = q.get("body")
                if not (isinstance(body, dict) and body.get("method") in ("tools/list", "tools/call")):
                    continue
                checked.append(body["method"])
                headers = q["headers"]
                assert headers.get("mcp-protocol-version") == "2026-07-28", q
                assert "mcp-session-id" not in headers, q
                assert headers.get("mcp-method") == body["method"], q
                assert body["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"] == "2026-07-28", q
                if body["method"] == "tools/call":
                    assert headers.get("mcp-name") == body["params"]["name"], q
        assert checked.count("tools/call") == 3 and "tools/list" in checked, checked

    for spec in (NO_PREFIX, UNKNOWN, NOT_OFFERED):
        refused = call(run, spec)
        assert refused["ok"] is False, (spec, refused)
    assert call(run, NO_PREFIX)["error"]["code"] == -32602
    assert call(run, UNKNOWN)["error"]["code"] == -32602
    # `alpha__alpha__echo` names alpha's tool `alpha__echo`, which alpha
    # does not have (and policy does not allow): it is never sent to beta.
    assert call(run, NOT_OFFERED)["error"]["code"] == -32060

    # Each call reached its own upstream, under its real name, and nothing else.
    assert calls_of(alpha)[len(alpha_before) :] == ["echo"], calls_of(alpha)
    assert calls_of(beta)[len(beta_before) :] == ["get_weather", "alpha__echo"], calls_of(beta)

    allowed = gw.wait_audit(lambda r: r["upstream"] == "alpha" and r.get("target") == "echo" and r["decision"] == "allow")
    rec = next(r for r in allowed if r["upstream"] == "alpha" and r.get("target") == "echo")
    assert rec["upstream_spiffe_id"] == SERVER_ID and rec["policy_ids"] == ["echo-on-alpha"], rec


def prompt_gets_of(up) -> list[str]:
    out = []
    for req in up.requests():
        body = req.get("body")
        if isinstance(body, dict) and body.get("method") == "prompts/get":
            out.append(body["params"]["name"])
    return out


REVIEW_A = 'prompt:alpha__review:{"topic":"gateways"}'
REVIEW_B = 'prompt:beta__review:{"topic":"x"}'
SECRET_A = 'prompt:alpha__secret:{"topic":"x"}'
LOOKALIKE_PROMPT = 'prompt:beta__alpha__review:{"topic":"lookalikes"}'
PROMPT_NO_PREFIX = 'prompt:review:{"topic":"x"}'
PROMPT_UNKNOWN = 'prompt:gamma__review:{"topic":"x"}'
PROMPT_NOT_OFFERED = 'prompt:alpha__alpha__review:{"topic":"x"}'


@pytest.mark.parametrize("sdk", ["typescript", "python"])
def test_prompts_are_listed_and_routed_by_prefix(sdk, agg, svids):
    gw, alpha, beta = agg
    a = svids["agent"]
    runner = run_ts_agent if sdk == "typescript" else run_py_agent
    alpha_before, beta_before = prompt_gets_of(alpha), prompt_gets_of(beta)
    specs = [REVIEW_A, LOOKALIKE_PROMPT, REVIEW_B, SECRET_A, PROMPT_NO_PREFIX, PROMPT_UNKNOWN, PROMPT_NOT_OFFERED]
    run = runner(gw.url + "/all", a.cert, a.key, a.bundle, calls=["prompts", *specs])
    out = run.stdout + run.stderr
    assert run.negotiated is not None and run.negotiated["protocol_version"] == VERSION[sdk], out

    listed = call(run, "prompts")
    assert listed["ok"] is True, out
    # Only what policy allows (prompts/get permitted), each under its
    # upstream's prefix; beta's `alpha__review` is beta's.
    names = sorted(p["name"] for p in listed["result"]["prompts"])
    assert names == ["alpha__review", "beta__alpha__review"], names
    review = next(p for p in listed["result"]["prompts"] if p["name"] == "alpha__review")
    assert [arg["name"] for arg in review["arguments"]] == ["topic"], review

    got = call(run, REVIEW_A)
    assert got["ok"] is True, out
    assert "prompt review about gateways" in json.dumps(got["result"]), got
    lookalike = call(run, LOOKALIKE_PROMPT)
    assert lookalike["ok"] is True, out
    assert "prompt alpha__review about lookalikes" in json.dumps(lookalike["result"]), lookalike

    denied = call(run, REVIEW_B)
    assert denied["ok"] is False and denied["error"]["code"] == -32060, denied
    record = record_of(gw, denied["error"])
    assert record["upstream"] == "beta" and record["upstream_spiffe_id"] == BETA_ID, record
    assert record["target"] == "review" and record["policy_ids"] == ["no-review-on-beta"], record
    secret = call(run, SECRET_A)
    assert secret["ok"] is False and secret["error"]["code"] == -32060, secret
    assert record_of(gw, secret["error"])["upstream"] == "alpha"

    assert call(run, PROMPT_NO_PREFIX)["error"]["code"] == -32602, out
    unknown = call(run, PROMPT_UNKNOWN)
    assert unknown["error"]["code"] == -32602, out
    assert record_of(gw, unknown["error"])["reason"] == "aggregate_unknown_prompt"
    # `alpha__alpha__review` names alpha's prompt `alpha__review`, which
    # alpha does not have and policy does not allow: never sent to beta.
    assert call(run, PROMPT_NOT_OFFERED)["error"]["code"] == -32060, out

    # Each prompts/get reached its own upstream, under its real name, and
    # nothing else did.
    assert prompt_gets_of(alpha)[len(alpha_before) :] == ["review"], prompt_gets_of(alpha)
    assert prompt_gets_of(beta)[len(beta_before) :] == ["alpha__review"], prompt_gets_of(beta)
    allowed = gw.wait_audit(lambda r: r["upstream"] == "alpha" and r.get("target") == "review" and r["decision"] == "allow")
    rec = next(r for r in allowed if r["upstream"] == "alpha" and r.get("target") == "review")
    assert rec["upstream_spiffe_id"] == SERVER_ID and rec["policy_ids"] == ["review-on-alpha"], rec


def gateway_uri(upstream: str, uri: str) -> str:
    return f"mcp-gateway://{upstream}/" + quote(uri, safe="-._~")


def reads_of(up) -> list[str]:
    out = []
    for req in up.requests():
        body = req.get("body")
        if isinstance(body, dict) and body.get("method") == "resources/read":
            out.append(body["params"]["uri"])
    return out


@pytest.mark.parametrize("sdk", ["typescript", "python"])
def test_resources_are_listed_under_gateway_uris_and_read_from_their_upstream(sdk, agg, svids):
    gw, alpha, beta = agg
    a = svids["agent"]
    runner = run_ts_agent if sdk == "typescript" else run_py_agent
    alpha_before, beta_before = reads_of(alpha), reads_of(beta)
    readme_a, readme_b, note_b = gateway_uri("alpha", README), gateway_uri("beta", README), gateway_uri("beta", NOTE)
    assert readme_a == "mcp-gateway://alpha/file%3A%2F%2F%2Fdocs%2Freadme.md"
    raw = "read:" + README
    unknown = "read:" + gateway_uri("gamma", README)
    lowercase = "read:mcp-gateway://alpha/file%3a%2f%2f%2fdocs%2freadme.md"
    run = runner(
        gw.url + "/all", a.cert, a.key, a.bundle,
        calls=["resources", "read:" + readme_a, "read:" + note_b, "read:" + readme_b, raw, unknown, lowercase],
    )  # fmt: skip
    out = run.stdout + run.stderr
    assert run.negotiated is not None and run.negotiated["protocol_version"] == VERSION[sdk], out

    listed = call(run, "resources")
    assert listed["ok"] is True, out
    # Only what policy allows to be read, each under its gateway URI.
    uris = sorted(r["uri"] for r in listed["result"]["resources"])
    assert uris == sorted([readme_a, note_b]), uris

    got = call(run, "read:" + readme_a)
    assert got["ok"] is True and f"resource {README}" in json.dumps(got["result"]), out
    note = call(run, "read:" + note_b)
    assert note["ok"] is True and "resource note://beta/hello?x=1&y=2" in json.dumps(note["result"]), out

    denied = call(run, "read:" + readme_b)
    assert denied["ok"] is False and denied["error"]["code"] == -32060, denied
    record = record_of(gw, denied["error"])
    assert record["upstream"] == "beta" and record["upstream_spiffe_id"] == BETA_ID, record
    assert record["target"] == README and record["policy_ids"] == ["no-readme-on-beta"], record

    # A URI not of the gateway's form (a member's own URI, an unknown
    # upstream, another encoding of the same URI) is refused; nothing sent.
    for spec in (raw, unknown, lowercase):
        refused = call(run, spec)
        assert refused["ok"] is False and refused["error"]["code"] == -32602, (spec, refused)
        assert record_of(gw, refused["error"])["reason"] == "aggregate_unknown_resource"

    # Each read reached the upstream its URI names, with the original URI.
    assert reads_of(alpha)[len(alpha_before) :] == [README], reads_of(alpha)
    assert reads_of(beta)[len(beta_before) :] == [NOTE], reads_of(beta)
    allowed = gw.wait_audit(lambda r: r["upstream"] == "alpha" and r.get("target") == README and r["decision"] == "allow")
    rec = next(r for r in allowed if r["upstream"] == "alpha" and r.get("target") == README)
    assert rec["upstream_spiffe_id"] == SERVER_ID and rec["policy_ids"] == ["readme-on-alpha"], rec


def open_session(gw, svid) -> str:
    r = post(gw.port, svid, json.dumps(INIT).encode(), path="/mcp/all")
    assert r.status == 200, r
    body = r.json()
    assert body["result"]["capabilities"] == {"tools": {}, "prompts": {}, "resources": {}}, body
    assert body["result"]["serverInfo"]["name"] == "spiffe-mcp-gateway", body
    sid = r.header("mcp-session-id")
    # Sealed (base64url): the members' own session ids are the gateway's.
    assert sid and re.fullmatch(r"[A-Za-z0-9_-]{40,}", sid), r
    return sid


def test_an_aggregated_session_belongs_to_its_caller(agg, svids):
    gw, alpha, beta = agg
    a, b = svids["agent"], svids["agent-b"]
    sid = open_session(gw, a)
    headers = [("Mcp-Session-Id", sid), ("MCP-Protocol-Version", "2025-11-25")]
    seen = len(alpha.requests()) + len(beta.requests())
    msg = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "alpha__echo", "arguments": {"text": "x"}}}
    hijack = post(gw.port, b, json.dumps(msg).encode(), headers, path="/mcp/all")
    assert hijack.status == 404 and hijack.json()["error"]["code"] == -32065, hijack
    assert record_of(gw, hijack.json()["error"])["reason"] == "session_not_owned"
    listing = post(gw.port, b, json.dumps({"jsonrpc": "2.0", "id": 3, "method": "tools/list"}).encode(), headers, path="/mcp/all")
    assert listing.status == 404, listing
    assert len(alpha.requests()) + len(beta.requests()) == seen, "another identity's request reached an upstream"
    # The owner still can, and ping is the gateway's own answer.
    ping = post(gw.port, a, json.dumps({"jsonrpc": "2.0", "id": 4, "method": "ping"}).encode(), headers, path="/mcp/all")
    assert ping.status == 200 and ping.json()["result"] == {}, ping
    assert len(alpha.requests()) + len(beta.requests()) == seen
    # Other methods are refused on the aggregated path, nothing forwarded.
    other = post(gw.port, a, json.dumps({"jsonrpc": "2.0", "id": 5, "method": "completion/complete"}).encode(), headers, path="/mcp/all")
    assert other.json()["error"]["code"] == -32601, other
    # Subscriptions and resource templates are not offered either.
    for i, method in enumerate(("resources/subscribe", "resources/templates/list")):
        params = {"uri": "mcp-gateway://alpha/file%3A%2F%2F%2Fx"} if method == "resources/subscribe" else {}
        msg = {"jsonrpc": "2.0", "id": 50 + i, "method": method, "params": params}
        r = post(gw.port, a, json.dumps(msg).encode(), headers, path="/mcp/all")
        assert r.json()["error"]["code"] == -32601, (method, r)
    assert len(alpha.requests()) + len(beta.requests()) == seen
    assert len(alpha.requests()) + len(beta.requests()) == seen
    # GET (server stream) is not offered; DELETE ends the member sessions.
    get = request(gw.port, a, b"", headers + [("Accept", "text/event-stream")], method="GET", path="/mcp/all")
    assert get.status == 405, get
    deleted = request(gw.port, a, b"", headers, method="DELETE", path="/mcp/all")
    assert deleted.status == 200, deleted
    for up in (alpha, beta):
        assert any(q["http_method"] == "DELETE" for q in up.requests()), "a member session was not ended"
    gone = post(gw.port, a, json.dumps({"jsonrpc": "2.0", "id": 6, "method": "ping"}).encode(), headers, path="/mcp/all")
    assert gone.status == 404 and gone.json()["error"]["code"] == -32065, gone


MODERN_META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}


def discovers_of(up) -> list[dict]:
    return [q for q in up.requests() if isinstance(q.get("body"), dict) and q["body"].get("method") == "server/discover"]


def test_server_discover_fans_out_and_the_gateway_answers(agg, svids):
    gw, alpha, beta = agg
    a = svids["agent"]
    before = len(discovers_of(alpha)), len(discovers_of(beta))
    discover = {"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {"_meta": MODERN_META}}
    headers = [("MCP-Protocol-Version", "2026-07-28"), ("Mcp-Method", "server/discover")]
    r = post(gw.port, a, json.dumps(discover).encode(), headers, path="/mcp/all")
    assert r.status == 200, r
    assert r.header("mcp-session-id") is None, r
    result = r.json()["result"]
    assert "2026-07-28" in result["supportedVersions"], result
    assert result["capabilities"] == {"tools": {}, "prompts": {}, "resources": {}}, result
    assert result["_meta"]["io.modelcontextprotocol/serverInfo"]["name"] == "spiffe-mcp-gateway", result
    # Each member was asked once, without a session, and each was decided
    # as server/discover on its own server.
    for up, n in zip((alpha, beta), before):
        sent = discovers_of(up)[n:]
        assert len(sent) == 1, sent
        assert "mcp-session-id" not in sent[0]["headers"], sent
        assert sent[0]["headers"].get("mcp-method") == "server/discover", sent
    for name in ("alpha", "beta"):
        assert gw.wait_audit(
            lambda r, name=name: r["upstream"] == name and r.get("method") == "server/discover" and r["decision"] == "allow"
        ), name


def test_a_2026_07_28_header_that_differs_from_the_body_is_refused(agg, svids):
    gw, alpha, beta = agg
    a = svids["agent"]
    seen = len(alpha.requests()) + len(beta.requests())
    msg = {
        "jsonrpc": "2.0", "id": 7, "method": "tools/call",
        "params": {"name": "beta__get_weather", "arguments": {"city": "Oslo"}, "_meta": MODERN_META},
    }  # fmt: skip
    base = [("MCP-Protocol-Version", "2026-07-28"), ("Mcp-Method", "tools/call")]
    for headers in (
        base + [("Mcp-Name", "alpha__echo")],  # another tool than the body's
        base + [("Mcp-Name", "get_weather")],  # the real name, not the one called
        base,  # no name at all
        [("MCP-Protocol-Version", "2026-07-28"), ("Mcp-Method", "tools/list"), ("Mcp-Name", "beta__get_weather")],
    ):
        r = post(gw.port, a, json.dumps(msg).encode(), headers, path="/mcp/all")
        assert r.status == 400 and r.json()["error"]["code"] == -32020, (headers, r)
    # A 2026-07-28 body without the headers is refused the same way.
    r = post(gw.port, a, json.dumps(msg).encode(), [("MCP-Protocol-Version", "2025-11-25")], path="/mcp/all")
    assert r.status == 400 and r.json()["error"]["code"] == -32020, r
    # 2026-07-28 has no sessions: one named is refused, even a live one.
    sid = open_session(gw, a)
    seen = len(alpha.requests()) + len(beta.requests())
    named = base + [("Mcp-Name", "beta__get_weather"), ("Mcp-Session-Id", sid)]
    r = post(gw.port, a, json.dumps(msg).encode(), named, path="/mcp/all")
    assert r.status == 404 and r.json()["error"]["code"] == -32065, r
    assert len(alpha.requests()) + len(beta.requests()) == seen, "a mismatched request reached an upstream"
    # The matching request goes through, to beta only, under the real name
    # in both header and body.
    alpha_seen = len(alpha.requests())
    ok = post(gw.port, a, json.dumps(msg).encode(), base + [("Mcp-Name", "beta__get_weather")], path="/mcp/all")
    assert ok.status == 200 and "Oslo" in json.dumps(ok.json()["result"]), ok
    assert len(alpha.requests()) == alpha_seen, "the call reached alpha"
    last = beta.requests()[-1]
    assert last["body"]["params"]["name"] == "get_weather" and last["headers"]["mcp-name"] == "get_weather", last
    # GET and DELETE are not part of 2026-07-28 here either.
    for method in ("GET", "DELETE"):
        r = request(gw.port, a, b"", [("MCP-Protocol-Version", "2026-07-28")], method=method, path="/mcp/all")
        assert r.status == 405, (method, r)


def test_input_required_results_pass_through_the_aggregated_path(agg, svids):
    """2026-07-28: alpha answers `alpha__ask_confirm` with an
    InputRequiredResult; the embedded requests are decided (roots/list
    denied by default, elicitation/create permitted) and the SDK's retry,
    under the same prefixed name, is routed to alpha again."""
    gw, alpha, beta = agg
    a = svids["agent"]

    def asks(up) -> list[str]:
        return [n for n in calls_of(up) if n.startswith("ask_")]

    alpha_before, beta_before = asks(alpha), len(calls_of(beta))
    run = run_py_agent(gw.url + "/all", a.cert, a.key, a.bundle, calls=["alpha__ask_roots", "alpha__ask_confirm"])
    out = run.stdout + run.stderr
    assert run.negotiated is not None and run.negotiated["protocol_version"] == "2026-07-28", out
    roots = call(run, "alpha__ask_roots")
    assert roots["ok"] is False and roots["error"]["code"] == -32060, roots
    record = record_of(gw, roots["error"])
    assert record["method"] == "roots/list" and record["caller"] == SERVER_ID and record["upstream"] == "alpha", record
    confirm = call(run, "alpha__ask_confirm")
    assert confirm["ok"] is True and "elicitation: accept" in json.dumps(confirm["result"]), confirm
    seen = [line["server_request"] for line in run.lines if "server_request" in line]
    assert seen == ["elicitation/create"], out
    # The first confirm and its retry both reached alpha, under the real name.
    new = asks(alpha)[len(alpha_before) :]
    assert new.count("ask_confirm") >= 2 and new.count("ask_roots") == 1, new
    assert len(calls_of(beta)) == beta_before, "a call reached beta"


ALPHA_TOOLS = ["alpha__ask_confirm", "alpha__ask_roots", "alpha__echo"]


def test_a_failed_upstream_contributes_no_tools(spire, svids, beta_svid, policies, tmp_path):
    """beta goes down after the session opened: the lists (tools, prompts,
    resources) have alpha's entries only and the failure is audited under beta. A session opened while beta
    is down has alpha only; calls to alpha still work."""
    s, a = svids["mcp-server"], svids["agent"]
    alpha = start_upstream(
        cert=s.cert, key=s.key, ca=s.bundle, request_log=tmp_path / "alpha.jsonl",
        extra_args=["--prompt", "review", "--resource", README],
    )  # fmt: skip
    b = beta_svid
    beta = start_upstream(
        cert=b.cert, key=b.key, ca=b.bundle, request_log=tmp_path / "beta.jsonl",
        extra_args=["--prompt", "alpha__review", "--resource", NOTE],
    )  # fmt: skip
    gw = start_gateway(
        tmp_path / "gw", spire.endpoint, "", "", policy_dir=policies,
        upstreams=entries(alpha.url, beta.url), extra_yaml=AGGREGATE,
    )  # fmt: skip
    try:
        gw.wait_ready()
        sid = open_session(gw, a)
        headers = [("Mcp-Session-Id", sid), ("MCP-Protocol-Version", "2025-11-25")]
        listing = json.dumps({"jsonrpc": "2.0", "id": 9, "method": "tools/list"}).encode()
        prompts = json.dumps({"jsonrpc": "2.0", "id": 10, "method": "prompts/list"}).encode()
        resources = json.dumps({"jsonrpc": "2.0", "id": 11, "method": "resources/list"}).encode()
        both = post(gw.port, a, listing, headers, path="/mcp/all")
        assert sorted(t["name"] for t in both.json()["result"]["tools"]) == [
            "alpha__ask_confirm", "alpha__ask_roots", "alpha__echo", "beta__get_weather",
        ], both  # fmt: skip
        both_prompts = post(gw.port, a, prompts, headers, path="/mcp/all").json()["result"]["prompts"]
        assert sorted(p["name"] for p in both_prompts) == ["alpha__review", "beta__alpha__review"], both_prompts
        both_resources = post(gw.port, a, resources, headers, path="/mcp/all").json()["result"]["resources"]
        assert sorted(r["uri"] for r in both_resources) == sorted([gateway_uri("alpha", README), gateway_uri("beta", NOTE)])
        beta.stop()
        one = post(gw.port, a, listing, headers, path="/mcp/all")
        assert one.status == 200, one
        assert sorted(t["name"] for t in one.json()["result"]["tools"]) == ALPHA_TOOLS, one
        one_prompts = post(gw.port, a, prompts, headers, path="/mcp/all")
        assert one_prompts.status == 200, one_prompts
        assert [p["name"] for p in one_prompts.json()["result"]["prompts"]] == ["alpha__review"], one_prompts
        one_resources = post(gw.port, a, resources, headers, path="/mcp/all")
        assert one_resources.status == 200, one_resources
        assert [r["uri"] for r in one_resources.json()["result"]["resources"]] == [gateway_uri("alpha", README)]
        failures = gw.wait_audit(lambda r: r["upstream"] == "beta" and r["reason"] == "upstream_unavailable")
        assert failures, "beta's failure was not audited"

        run = run_ts_agent(gw.url + "/all", a.cert, a.key, a.bundle, calls=["list", ECHO_A, WEATHER_B])
        out = run.stdout + run.stderr
        listed = call(run, "list")
        assert listed["ok"] is True, out
        assert sorted(t["name"] for t in listed["result"]["tools"]) == ALPHA_TOOLS, listed
        assert call(run, ECHO_A)["ok"] is True, out
        # beta has no session here: its tools are unknown on this session.
        assert call(run, WEATHER_B)["error"]["code"] == -32602, out
    finally:
        gw.stop()
        alpha.stop()
        beta.stop()
