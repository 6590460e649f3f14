"""Shadow mode and end users, through the real gateway with a real SDK client
on real SPIRE identities.

Shadow: a candidate set that forbids `echo` is evaluated beside the enforced
one; the call still goes through (never enforced), the audit record carries
the candidate's decision, and the disagreement is counted.

Users: the same agent workload, with a verified end-user token, is allowed
`echo` for one user and refused it for another, or with no token; a bad token
is refused with 401 before anything is decided, and the token is never passed
on to the upstream."""

from __future__ import annotations

import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from conftest import AGENT_B_ID, AGENT_ID, GATEWAY_ID, SERVER_ID
from gateway_fixtures import start_gateway
from mcp_fixtures import run_py_agent
from helpers import ECHO, WEATHER, assert_denied, call, retry_until_allowed, tool_calls
from policy_texts import FREEZE_ECHO, demo_policies_with
from polling import wait_for

ECHO_FOR_ALICE = """
@id("echo-only-for-alice")
forbid (principal, action == Mcp::Action::"tools/call", resource == Mcp::Tool::"demo/echo")
unless { context has user && context.user.sub == "alice" };
"""

ISSUER = "https://idp.example"
AUDIENCE = "spiffe://example.org/ns/demo/sa/gateway"


def wait_records(gw, pred, n=1, timeout=10.0):
    """The audit records matching pred, once there are at least n."""

    def matching():
        got = [r for r in gw.audit() if pred(r)]
        return got if len(got) >= n else None

    return wait_for(f"{n} matching audit record(s)", matching, timeout, detail=lambda: f"have {gw.audit()}")


def test_shadow_set_is_evaluated_and_never_enforced(spire, upstream, svids, tmp_path):
    candidate = demo_policies_with(tmp_path / "candidate", freeze=FREEZE_ECHO)
    gw = start_gateway(
        tmp_path / "gw",
        spire.endpoint,
        upstream.url,
        SERVER_ID,
        hint="gateway",
        policy_extra=[f'  shadow_dir: "{candidate}"'],
    )
    try:
        gw.wait_ready()
        s = svids["agent"]
        before = len(tool_calls(upstream, "echo"))
        run = run_py_agent(gw.url, s.cert, s.key, s.bundle, calls=[ECHO, WEATHER])
        assert call(run, ECHO)["ok"] is True, run.stdout
        assert call(run, WEATHER)["ok"] is True, run.stdout
        assert len(tool_calls(upstream, "echo")) == before + 1, "shadow mode must not enforce"
        echo = wait_records(gw, lambda r: r.get("target") == "echo" and r["caller"] == AGENT_ID)[-1]
        assert echo["decision"] == "allow"
        assert echo["shadow"]["decision"] == "deny"
        assert echo["shadow"]["reason"] == "forbid"
        assert echo["shadow"]["policy_ids"] == ["echo-frozen"]
        assert echo["shadow"]["policy_version"] != echo["policy_version"]
        weather = wait_records(gw, lambda r: r.get("target") == "get_weather")[-1]
        assert weather["decision"] == "allow" and "shadow" not in weather, weather
        assert gw.metric("mcp_gateway_shadow_disagreements_total", '{decision="allow",method="tools/call"}') == 1
        assert gw.metric("mcp_gateway_shadow_policies") > gw.metric("mcp_gateway_policies")
    finally:
        gw.stop()


@pytest.fixture()
def idp(tmp_path):
    """An identity provider: a P-256 key and its JWKS file."""
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid="idp-1", alg="ES256", use="sig")
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk]}), encoding="utf-8")

    def token(sub: str, **over) -> str:
        now = int(time.time())
        claims = {"sub": sub, "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 300}
        claims.update(over)
        return jwt.encode(claims, key, algorithm="ES256", headers={"kid": "idp-1"})

    return path, token


def test_same_agent_allowed_for_one_user_and_denied_for_another(spire, upstream, svids, tmp_path, idp):
    jwks, token = idp
    policies = demo_policies_with(tmp_path / "policies", users=ECHO_FOR_ALICE)
    gw = start_gateway(
        tmp_path / "gw",
        spire.endpoint,
        upstream.url,
        SERVER_ID,
        hint="gateway",
        policy_dir=policies,
        extra_yaml=f'user_auth:\n  jwks_file: "{jwks}"\n  issuer: "{ISSUER}"\n  audience: "{AUDIENCE}"\n',
    )
    try:
        gw.wait_ready()
        s = svids["agent"]

        def run_as(tok: str | None):
            headers = [f"Authorization: Bearer {tok}"] if tok else []
            return run_py_agent(gw.url, s.cert, s.key, s.bundle, calls=[ECHO], headers=headers)

        before = len(tool_calls(upstream, "echo"))
        alice = run_as(token("alice"))
        assert call(alice, ECHO)["ok"] is True, alice.stdout
        assert len(tool_calls(upstream, "echo")) == before + 1
        record = wait_records(gw, lambda r: r.get("target") == "echo" and r.get("user", {}).get("sub") == "alice")[-1]
        assert record["decision"] == "allow" and record["caller"] == AGENT_ID
        assert record["user"] == {"sub": "alice", "iss": ISSUER}

        bob = run_as(token("bob"))
        denied = assert_denied(call(bob, ECHO), gw)
        assert denied["reason"] == "forbid" and denied["policy_ids"] == ["echo-only-for-alice"]
        assert denied["user"]["sub"] == "bob"

        anonymous = run_as(None)
        denied = assert_denied(call(anonymous, ECHO), gw)
        assert denied["policy_ids"] == ["echo-only-for-alice"] and "user" not in denied, denied
        assert len(tool_calls(upstream, "echo")) == before + 1, "denied calls reached the upstream"

        # The token is for the gateway: never passed through.
        assert not any("authorization" in r["headers"] for r in upstream.requests())

        # Bad tokens: refused before any decision, 401, -32066, audited.
        bad_tokens = [token("alice", exp=int(time.time()) - 60), token("alice", aud="someone-else"), "not.a.jwt"]
        for n, bad in enumerate(bad_tokens, start=1):
            refused = run_as(bad)
            err = refused.connect_error or call(refused, ECHO)["error"]
            assert err.get("http_status") == 401, refused.stdout
            records = wait_records(gw, lambda r: r["reason"] == "user_token", n=n)
            assert all(r["decision"] == "deny" and r["caller"] == AGENT_ID for r in records)
        assert len(tool_calls(upstream, "echo")) == before + 1
    finally:
        gw.stop()


ECHO_FOR_AGENT_B_USER = f"""
@id("echo-only-on-behalf-of-agent-b")
forbid (principal, action == Mcp::Action::"tools/call", resource == Mcp::Tool::"demo/echo")
unless {{ context has user && context.user.sub == "{AGENT_B_ID}" }};
"""


def test_jwt_svid_from_spire_as_the_end_user(spire, upstream, svids, tmp_path):
    """user_auth.jwt_svid: the token is a JWT-SVID fetched from real SPIRE,
    verified against the JWT bundle the gateway gets from the Workload API."""
    policies = demo_policies_with(tmp_path / "policies", users=ECHO_FOR_AGENT_B_USER)
    gw = start_gateway(
        tmp_path / "gw",
        spire.endpoint,
        upstream.url,
        SERVER_ID,
        hint="gateway",
        policy_dir=policies,
        extra_yaml=f'user_auth:\n  jwt_svid: true\n  audience: "{GATEWAY_ID}"\n',
    )
    try:
        gw.wait_ready()
        s = svids["agent"]

        def run_as(tok: str):
            return run_py_agent(gw.url, s.cert, s.key, s.bundle, calls=[ECHO], headers=[f"Authorization: Bearer {tok}"])

        before = len(tool_calls(upstream, "echo"))
        # The gateway fetches JWT bundles in the background: the first
        # attempt may be refused (401) until they arrive, never allowed early.
        token_b = spire.fetch_jwt(AGENT_B_ID, GATEWAY_ID)
        retry_until_allowed(lambda: run_as(token_b))
        record = wait_records(gw, lambda r: r.get("target") == "echo" and r.get("decision") == "allow")[-1]
        assert record["user"] == {"sub": AGENT_B_ID, "iss": "spiffe://example.org"}
        assert record["caller"] == AGENT_ID
        assert len(tool_calls(upstream, "echo")) == before + 1

        # Another SPIFFE ID as the user: verified, but the policy says no.
        other = run_as(spire.fetch_jwt(SERVER_ID, GATEWAY_ID))
        denied = assert_denied(call(other, ECHO), gw)
        assert denied["user"]["sub"] == SERVER_ID and denied["policy_ids"] == ["echo-only-on-behalf-of-agent-b"]

        # A JWT-SVID for another audience: refused before any decision.
        n = len([r for r in gw.audit() if r["reason"] == "user_token"])
        wrong = run_as(spire.fetch_jwt(AGENT_B_ID, "spiffe://example.org/someone-else"))
        err = wrong.connect_error or call(wrong, ECHO)["error"]
        assert err.get("http_status") == 401, wrong.stdout
        wait_records(gw, lambda r: r["reason"] == "user_token", n=n + 1)
        assert len(tool_calls(upstream, "echo")) == before + 1
    finally:
        gw.stop()
