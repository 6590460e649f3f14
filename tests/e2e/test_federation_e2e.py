"""SPIFFE federation, end to end on two real SPIRE deployments.

The session SPIRE (trust domain example.org) and a second one started here
(partner.test, its own server, agent, sockets and port) exchange bundles
(`spire-server bundle set`, the static form of a federation relationship);
entries created with `-federatesWith` make each agent deliver the other
domain's bundle to its workloads. The gateway holds an example.org SVID and,
from its Workload API, the partner.test bundle as well.

- A partner agent (an SVID from the partner SPIRE, the real Python MCP SDK)
  is verified against the partner bundle and decided by policy on
  `principal.trust_domain`: `echo` allowed, `get_weather` denied, although the
  example.org agent with the very same path may call both.
- A caller whose trust domain has no bundle is refused at the handshake:
  first a real partner SVID before the federation exists, then a certificate
  from a CA no SPIRE knows, for a trust domain nobody federates with.
- Forged cross-domain certificates (a partner ID signed by the example.org
  CA, an example.org ID signed by the partner CA) are refused: the bundle is
  chosen by the certificate's trust domain and must then prove the chain.

The partner SPIRE starts once for this module (about 15 s) and the federation
is undone at the end, so the session SPIRE is left as it was found.
"""

from __future__ import annotations

import ssl
import subprocess

import pytest

from conftest import AGENT_ID, SERVER_ID
from gateway_fixtures import start_ready_gateway
from mcp_fixtures import run_py_agent
from spire_env import Spire
from policy_texts import LIFECYCLE, actions, demo_policies_with
from helpers import ECHO, PROBE, WEATHER, assert_denied, call, https_post, retry_until_allowed, tool_calls

PARTNER_TD = "partner.test"
# The same path as the example.org demo agent: only the trust domain differs.
PARTNER_AGENT_ID = f"spiffe://{PARTNER_TD}/ns/demo/sa/agent"
FED_GATEWAY_ID = "spiffe://example.org/ns/fed/sa/gateway"

PARTNER_POLICY = f"""
// Any workload of the federated partner.test may open a session and list tools...
@id("partner-lifecycle")
permit (
  principal,
  action in {actions(LIFECYCLE)},
  resource == Mcp::Server::"demo"
)
when {{ principal.trust_domain == "partner.test" }};

// ...and call `echo`, nothing else.
@id("partner-may-echo")
permit (principal, action == Mcp::Action::"tools/call", resource == Mcp::Tool::"demo/echo")
when {{ principal.trust_domain == "partner.test" }};
"""


def refused_at_handshake(port: int, ca, cert, key) -> bool:
    """True if the gateway refuses this client certificate during the TLS
    handshake (no HTTP answer); False if an HTTP response comes back."""
    try:
        reply = https_post(port, ca, cert, key, PROBE)
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        return True
    # TLS 1.3 reports a refused client certificate on the first read; an
    # empty read is a closed connection, which is a refusal too.
    return reply == b""


@pytest.fixture(scope="module")
def partner(tmp_path_factory):
    """The second SPIRE: trust domain partner.test, not yet federated."""
    p = Spire.start(tmp_path_factory.mktemp("spire-partner"), trust_domain=PARTNER_TD)
    try:
        yield p
    finally:
        p.stop()


@pytest.fixture(scope="module")
def partner_svid(spire, partner, tmp_path_factory):
    """The partner agent's SVID, registered to also receive example.org's
    bundle (the partner side of the federation; the gateway's side is
    `federated`)."""
    partner.federate_with(spire)
    partner.register(PARTNER_AGENT_ID, "partner-agent", federates_with=["spiffe://example.org"])
    return partner.fetch_svid(PARTNER_AGENT_ID, tmp_path_factory.mktemp("partner-svid"))


@pytest.fixture(scope="module")
def federated(spire, partner, partner_svid):
    """Both servers hold each other's bundle, and the gateway's entry federates
    with partner.test. Undone afterwards."""
    spire.federate_with(partner)
    entry = spire.register(
        FED_GATEWAY_ID, "fed-gateway", dns="localhost", federates_with=[f"spiffe://{PARTNER_TD}"]
    )
    try:
        yield
    finally:
        spire.delete_entry(entry)
        spire.server("bundle", "delete", "-id", f"spiffe://{PARTNER_TD}")


def start_fed_gateway(spire, upstream, tmp_path_factory, **kw):
    policies = demo_policies_with(tmp_path_factory.mktemp("fed-policies"), partner=PARTNER_POLICY)
    return start_ready_gateway(
        tmp_path_factory.mktemp("fed-gateway"),
        spire.endpoint,
        upstream.url,
        SERVER_ID,
        hint="fed-gateway",
        policy_dir=policies,
        **kw,
    )


@pytest.fixture(scope="module")
def fed_gateway(federated, spire, upstream, tmp_path_factory):
    gw = start_fed_gateway(spire, upstream, tmp_path_factory)
    try:
        yield gw
    finally:
        gw.stop()


def example_bundle_seen_by_partner(partner: Spire, tmp_path) -> str:
    """The example.org bundle as the partner agent's Workload API delivers it
    (a federated bundle): what a partner client trusts the gateway with."""
    out = tmp_path / "partner-view"
    out.mkdir()
    subprocess.run(
        [
            str(partner.bin_dir / "spire-agent"), "api", "fetch", "x509",
            "-socketPath", str(partner.socket_path), "-write", str(out), "-silent",
        ],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    bundles = sorted(out.glob("federated_bundle.*.pem"))
    assert bundles, f"the partner agent delivered no federated bundle: {sorted(out.iterdir())}"
    return str(bundles[0])


def test_a_trust_domain_without_a_bundle_is_refused(gateway, spire, partner_svid, svids, tmp_path):
    """Before the federation exists the gateway has no partner.test bundle: a
    genuine partner SVID is refused at the handshake, as is a certificate for
    a trust domain nobody federates with. (Runs before the `federated`
    fixture in this module: it needs the unfederated state.)"""
    assert gateway.metric("mcp_gateway_trust_bundles") == 1, "federation already set up"
    ca = svids["agent"].bundle
    s = svids["agent"]
    assert not refused_at_handshake(gateway.port, ca, s.cert, s.key), "control: own domain accepted"
    assert refused_at_handshake(gateway.port, ca, partner_svid.cert, partner_svid.key)
    stranger = spire.mint_leaf(
        tmp_path, ["spiffe://stranger.test/ns/demo/sa/agent"], signer="foreign", name="stranger"
    )
    assert refused_at_handshake(gateway.port, ca, *stranger)
    assert not any(r["caller"].startswith(("spiffe://partner.test", "spiffe://stranger.test")) for r in gateway.audit())


def test_partner_agent_is_verified_with_its_bundle_and_decided_by_policy(
    fed_gateway, partner, partner_svid, upstream, tmp_path
):
    gw = fed_gateway
    assert gw.metric("mcp_gateway_trust_bundles") == 2, gw.metrics()
    ca = example_bundle_seen_by_partner(partner, tmp_path)
    before_echo = len(tool_calls(upstream, "echo"))
    before_weather = len(tool_calls(upstream, "get_weather"))

    run = run_py_agent(gw.url, partner_svid.cert, partner_svid.key, ca, calls=[ECHO, WEATHER])
    assert not run.connect_error, run.stdout + run.stderr
    assert call(run, ECHO)["ok"] is True, run.stdout
    denied = assert_denied(call(run, WEATHER), gw)
    assert denied["caller"] == PARTNER_AGENT_ID
    assert len(tool_calls(upstream, "echo")) == before_echo + 1
    assert len(tool_calls(upstream, "get_weather")) == before_weather, "a denied call reached the upstream"

    allowed = gw.wait_audit(lambda r: r.get("target") == "echo" and r["caller"] == PARTNER_AGENT_ID)
    record = [r for r in allowed if r.get("target") == "echo" and r["caller"] == PARTNER_AGENT_ID][-1]
    assert record["decision"] == "allow" and record["policy_ids"] == ["partner-may-echo"], record


def test_forged_cross_domain_certificates_are_refused(fed_gateway, spire, partner, partner_svid, svids, tmp_path):
    """The bundle is picked by the certificate's trust domain, then must prove
    the chain: a partner ID under the example.org root, or an example.org ID
    under the partner root, is refused. The genuine partner SVID on the same
    path is answered, so the refusals are the forgeries' doing."""
    gw = fed_gateway
    ca = svids["agent"].bundle
    assert not refused_at_handshake(gw.port, ca, partner_svid.cert, partner_svid.key)
    forged = {
        "partner ID signed by the example.org CA": spire.mint_leaf(
            tmp_path, [PARTNER_AGENT_ID], signer="upstream", name="partner-by-example"
        ),
        "example.org ID signed by the partner CA": partner.mint_leaf(
            tmp_path, [AGENT_ID], signer="upstream", name="example-by-partner"
        ),
    }
    failures = gw.metric("mcp_gateway_tls_handshake_failures_total")
    for case, (cert, key) in forged.items():
        assert refused_at_handshake(gw.port, ca, cert, key), case
    assert gw.metric("mcp_gateway_tls_handshake_failures_total") >= failures + len(forged)


def test_partner_jwt_svid_caller_is_verified_with_the_federated_jwt_bundle(
    federated, spire, partner, partner_svid, upstream, tmp_path, tmp_path_factory
):
    """listener.jwt_svid_callers and federation together: a partner agent
    without a client certificate presents a JWT-SVID from the partner SPIRE
    (audience: the gateway's SPIFFE ID); the gateway verifies it with the
    partner JWT bundle it received from its own Workload API, and policy
    decides on `principal.trust_domain` as for a certificate."""
    gw = start_fed_gateway(spire, upstream, tmp_path_factory, listener_extra=["  jwt_svid_callers: {}"])
    try:
        ca = example_bundle_seen_by_partner(partner, tmp_path)
        token = partner.fetch_jwt(PARTNER_AGENT_ID, FED_GATEWAY_ID)
        headers = [f"Authorization: Bearer {token}"]
        # JWT bundles load in the background: refused (never allowed) until then.
        run = retry_until_allowed(lambda: run_py_agent(gw.url, None, None, ca, calls=[ECHO, WEATHER], headers=headers))
        denied = assert_denied(call(run, WEATHER), gw)
        assert denied["caller"] == PARTNER_AGENT_ID, denied
        records = gw.wait_audit(lambda r: r.get("target") == "echo" and r["caller"] == PARTNER_AGENT_ID)
        echo = [r for r in records if r.get("target") == "echo" and r["caller"] == PARTNER_AGENT_ID][-1]
        assert echo["decision"] == "allow" and echo["policy_ids"] == ["partner-may-echo"], echo
    finally:
        gw.stop()
