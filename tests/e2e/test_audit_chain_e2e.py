"""The tamper-evident audit log on real SPIRE (issue 13, points 5 and 6).

The gateway runs on an SVID that lives 16 s (SPIRE rotates it at about
half of that), with a checkpoint every 5 lines or second. Calls go
through it before and after the rotation; at SIGTERM it writes a final
checkpoint. `spiffe-mcp-gateway audit verify` then verifies the file
against the trust bundle SPIRE hands out (exit 0, checkpoints by two
leaves), and names the line when one record is edited (exit 1).
"""

from __future__ import annotations

import json
import subprocess

from conftest import GATEWAY_ID, SERVER_ID, TD
from gateway_fixtures import gateway_bin, start_gateway
from polling import wait_for
from raw_http import PROBE, PROBE_HEADERS, post

GATEWAY_AUDIT_ID = f"{TD}/ns/demo/sa/gateway-audit"
TTL = 16


def verify(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(gateway_bin()), "audit", "verify", *args], capture_output=True, text=True, timeout=60
    )


def test_audit_verify_on_a_real_run_across_an_svid_rotation(spire, svids, upstream, tmp_path):
    spire.register(GATEWAY_AUDIT_ID, "gateway-audit", ttl=TTL, dns="localhost")
    gw = start_gateway(
        tmp_path / "gw",
        spire.endpoint,
        upstream.url,
        SERVER_ID,
        hint="gateway-audit",
        audit_extra=["  checkpoint_every_records: 5", "  checkpoint_interval_seconds: 1"],
    )
    agent = svids["agent"]
    try:
        gw.wait_ready()
        for _ in range(3):
            post(gw.port, agent, PROBE, PROBE_HEADERS)

        def rotated_and_called() -> bool:
            post(gw.port, agent, PROBE, PROBE_HEADERS)
            return gw.metric("mcp_gateway_svid_rotations_total") >= 1

        wait_for("the gateway's SVID to rotate", rotated_and_called, timeout=TTL + 10, every=0.5)
        for _ in range(3):
            post(gw.port, agent, PROBE, PROBE_HEADERS)
    finally:
        gw.stop()
    assert gw.proc.returncode == 0, gw.log()

    path = gw.audit_path
    bundle = str(agent.bundle)
    result = verify(str(path), "--bundle", bundle)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "by 2 certificate(s)" in result.stdout, result.stdout
    assert GATEWAY_AUDIT_ID in result.stdout
    result = verify(str(path), "--bundle", bundle, "--spiffe-id", GATEWAY_AUDIT_ID)
    assert result.returncode == 0, result.stdout + result.stderr
    # Written by another workload than the one expected: refused.
    result = verify(str(path), "--bundle", bundle, "--spiffe-id", GATEWAY_ID)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "WRONG WORKLOAD" in result.stdout, result.stdout

    # One record edited: exit 1, naming the line after it (whose `prev`
    # no longer matches) and the edited line itself.
    lines = path.read_text(encoding="utf-8").splitlines()
    at = next(i for i, line in enumerate(lines) if "chain" not in json.loads(line) and i > 2)
    record = json.loads(lines[at])
    record["caller"] = f"{TD}/ns/demo/sa/someone-else"
    lines[at] = json.dumps(record, separators=(",", ":"))
    edited = tmp_path / "edited.jsonl"
    edited.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = verify(str(edited), "--bundle", bundle)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"TAMPERED at {edited}:{at + 2}" in result.stdout, result.stdout
    assert f"line {edited}:{at + 1} was changed" in result.stdout, result.stdout
