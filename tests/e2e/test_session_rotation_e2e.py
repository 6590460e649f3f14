"""A session belongs to its SPIFFE ID, not to one certificate (issue 10,
point 3), on real SPIRE with both SDKs.

The caller's SVID lives 20 s (SPIRE rotates it at about half of that). A
Python SDK agent and a TypeScript SDK agent each open one 2025-11-25
session and call `echo` on it every 300 ms, each new TLS connection
presenting the SVID the Workload API serves at that moment, the way a
client that follows its SVID does. The gateway asks each connection to
reconnect before its certificate expires (`Connection: close`) and closes it
at expiry at the latest, so every call after the first SVID's notAfter
arrives with a newer certificate, in the same session. The test runs until
the third SVID has expired (three rotations used): zero failed calls, one
`initialize` per agent, and every call audited in that agent's one session.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from cryptography import x509

from conftest import SERVER_ID, TD
from gateway_fixtures import POLICY_DIR, start_gateway
from mcp_fixtures import finish_agent, start_py_agent_loop, start_ts_agent_loop
from policy_texts import schema_with
from polling import wait_for

ROTATING_ID = f"{TD}/ns/demo/sa/agent-rotating"
TTL = 20
ECHO = 'echo:{"text":"rotating"}'


class SvidFollower:
    """Keeps the rotating agent's SVID files current from the Workload API
    and remembers every certificate it saw (serial -> notAfter)."""

    def __init__(self, spire, out: Path) -> None:
        self.spire, self.out = spire, out
        self.seen: dict[int, float] = {}
        self.files = self._fetch()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _fetch(self):
        files = self.spire.fetch_svid(ROTATING_ID, self.out, name="rotating")
        leaf = x509.load_pem_x509_certificates(files.cert.read_bytes())[0]
        self.seen.setdefault(leaf.serial_number, leaf.not_valid_after_utc.timestamp())
        return files

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            self._fetch()

    def expiries(self) -> list[float]:
        return sorted(self.seen.values())

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def rotating_policies(tmp: Path) -> Path:
    """The demo policies, with the rotating agent in the demo agent's place."""
    text = (POLICY_DIR / "demo.cedar").read_text()
    agent = f'"{TD}/ns/demo/sa/agent"'
    assert agent in text
    return schema_with(tmp / "policies", demo=text.replace(agent, f'"{ROTATING_ID}"'))


def test_a_session_outlives_three_rotations_of_its_callers_svid(spire, upstream, tmp_path):
    entry = spire.register(ROTATING_ID, "agent-rotating", ttl=TTL)
    follower = SvidFollower(spire, tmp_path / "svid")
    gw = start_gateway(
        tmp_path / "gw",
        spire.endpoint,
        upstream.url,
        SERVER_ID,
        hint="gateway",
        policy_dir=rotating_policies(tmp_path),
    )
    stop = tmp_path / "stop"
    agents = []
    try:
        gw.wait_ready()
        f = follower.files
        common = dict(calls=[ECHO], repeat_until=stop, interval_ms=300)
        flags = ["--loop-same-client", "--reload-cert", "--quiet-iterations"]
        agents.append(
            start_py_agent_loop(gw.url, f.cert, f.key, f.bundle, extra_args=[*flags, "--mode", "legacy"], **common)
        )
        agents.append(start_ts_agent_loop(gw.url, f.cert, f.key, f.bundle, extra_args=flags, **common))
        # Rotation and expiry are events in SPIRE and in time: poll until
        # the third certificate the agents could have presented has expired.
        # An agent that stops early ends the wait too; its output is
        # reported below.
        def third_expired() -> bool:
            if any(p.poll() is not None for p in agents):
                return True
            expiries = follower.expiries()
            return len(expiries) >= 4 and time.time() >= expiries[2] + 1

        wait_for("the third SVID to expire", third_expired, 8 * TTL, every=0.5, detail=lambda: f"SVIDs seen: {follower.seen}")
        early = [i for i, p in enumerate(agents) if p.poll() is not None]
    finally:
        stop.write_text("stop")
        runs = [finish_agent(p, timeout=60) for p in agents]
        follower.stop()
        spire.delete_entry(entry)
    try:
        stopped = [(runs[i].returncode, runs[i].stdout[-3000:], runs[i].stderr[-3000:]) for i in early]
        assert not stopped, f"an agent stopped early: {stopped}"
        for run in runs:
            summary = run.loop
            assert summary, run.stdout + run.stderr
            assert summary["failed"] == 0, json.dumps(summary)  # whole: pytest cuts a dict short
            assert summary["ok"] >= 3 * TTL, summary
        third_expired = follower.expiries()[2]
        records = [r for r in gw.audit() if r["caller"] == ROTATING_ID]
        inits = [r for r in records if r["method"] == "initialize"]
        assert len(inits) == 2 and all(r["decision"] == "allow" for r in inits), inits
        calls = [r for r in records if r["method"] == "tools/call"]
        assert calls and all(r["decision"] == "allow" for r in calls), [r for r in calls if r["decision"] != "allow"]
        sessions = {r["session_id"] for r in calls}
        assert len(sessions) == 2 and None not in sessions, sessions
        # Each agent's one session kept being used after the third SVID expired.
        for session in sessions:
            last = max(r["time"] for r in calls if r["session_id"] == session)
            assert _unix(last) > third_expired, (session, last, third_expired)
        # (The gateway closes every connection at its certificate's notAfter
        # and accepts no expired certificate, so the calls after the third
        # expiry came over connections presenting a later SVID.)
        assert not [r for r in records if r["decision"] != "allow"], "a refusal on the way"
    finally:
        gw.stop()


def _unix(rfc3339: str) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()
