"""The demo: real SPIRE, a real MCP server, the Python and TypeScript MCP SDKs
as agents, and the gateway deciding every message. Run by scripts/demo."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from gateway_fixtures import start_gateway  # noqa: E402
from mcp_fixtures import run_py_agent, run_ts_agent, start_upstream  # noqa: E402
from spire_env import Spire  # noqa: E402

TD = "spiffe://example.org"
AGENT = f"{TD}/ns/demo/sa/agent"
SERVER = f"{TD}/ns/demo/sa/mcp-server"
CALLS = ['echo:{"text":"hello"}', 'delete_repository:{"repo":"acme/prod"}', 'get_weather:{"city":"Lisbon"}']


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def show_calls(run) -> bool:
    ok = True
    for c in run.calls:
        if c["ok"]:
            print(f"  ALLOWED  {c['call']}")
        else:
            err = c["error"]
            print(f"  DENIED   {c['call']}  -> JSON-RPC {err['code']} {err['message']!r} "
                  f"correlation_id={err.get('data', {}).get('correlation_id')}")
    if not run.calls:
        ok = False
        print(run.stdout, run.stderr)
    return ok


def main() -> int:
    run_dir = ROOT / ".cache" / "demo"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    step("Starting SPIRE 1.13.3 (server + agent, join token, unix workload attestation)")
    spire = Spire.start(run_dir / "spire")
    upstream = gateway = None
    try:
        print(spire.register_demo().strip())
        step("Fetching X.509-SVIDs from the Workload API")
        agent = spire.fetch_svid(AGENT, run_dir / "svids")
        server = spire.fetch_svid(SERVER, run_dir / "svids")
        print(f"  agent:      {AGENT}\n  mcp-server: {SERVER}")
        step("Starting the upstream MCP server (Python SDK, mTLS with its own SVID)")
        upstream = start_upstream(server.cert, server.key, server.bundle, request_log=run_dir / "upstream.jsonl")
        step("Starting spiffe-mcp-gateway (its SVID from SPIRE, policies from policies/)")
        gateway = start_gateway(run_dir / "gateway", spire.endpoint, upstream.url, SERVER)
        gateway.wait_ready()
        print(f"  listening on {gateway.url}; metrics on {gateway.admin_url}/metrics")
        ok = True
        for name, runner in (("Python SDK 2.x", run_py_agent), ("TypeScript SDK 1.x", run_ts_agent)):
            step(f"Agent ({name}) as {AGENT}: three calls in one session")
            run = runner(gateway.url, agent.cert, agent.key, agent.bundle, calls=CALLS)
            print(f"  protocol {run.protocol_version}")
            ok &= show_calls(run)
        step("What reached the upstream (its own request log)")
        names = [
            r["body"]["params"]["name"]
            for r in upstream.requests()
            if isinstance(r.get("body"), dict) and r["body"].get("method") == "tools/call"
        ]
        print(f"  tools/call received: {names}")
        ok &= "delete_repository" not in names
        step("Audit log: the tools/call decisions")
        for r in gateway.audit():
            if r.get("method") == "tools/call":
                print("  " + json.dumps({k: r[k] for k in (
                    "time", "correlation_id", "caller", "session_id", "target",
                    "decision", "reason", "policy_ids", "policy_version")}))
        print("\nDemo " + ("passed: the sensitive call was blocked, the adjacent ones allowed."
                           if ok else "FAILED"))
        return 0 if ok else 1
    finally:
        if gateway:
            gateway.stop()
        if upstream:
            upstream.stop()
        spire.stop()


if __name__ == "__main__":
    sys.exit(main())
