"""Policies change while a real SDK client keeps calling, on real SPIRE
identities: the gateway picks up the change without a restart, the next call
is decided by the new set, an invalid set is rejected with the old one still
enforced, SIGHUP reloads, and no call fails for any other reason."""

from __future__ import annotations

import signal

from conftest import AGENT_ID, SERVER_ID
from gateway_fixtures import start_gateway
from mcp_fixtures import finish_agent, start_py_agent_loop
from helpers import tool_calls
from policy_texts import FREEZE_ECHO, demo_policies_with
from polling import wait_for

def echo_records(gw) -> list[dict]:
    return [
        r
        for r in gw.audit()
        if r.get("method") == "tools/call" and r.get("target") == "echo" and r["caller"] == AGENT_ID
    ]


def test_policy_change_applies_to_the_next_call_without_restart(spire, upstream, svids, tmp_path):
    policies = demo_policies_with(tmp_path / "policies")
    gw = start_gateway(
        tmp_path / "gw",
        spire.endpoint,
        upstream.url,
        SERVER_ID,
        hint="gateway",
        policy_dir=policies,
        policy_extra=["  watch_interval_ms: 200"],
    )
    stop = tmp_path / "stop"
    agents = []
    try:
        gw.wait_ready()
        s = svids["agent"]
        # Load while policies change: two clients each on one session, one
        # opening a new connection and session for every call.
        for same_client in (True, True, False):
            agents.append(
                start_py_agent_loop(
                    gw.url,
                    s.cert,
                    s.key,
                    s.bundle,
                    ['echo:{"text":"under reload"}'],
                    interval_ms=5,
                    repeat_until=stop,
                    extra_args=["--loop-same-client"] if same_client else [],
                )
            )
        wait_for("allowed echo calls", lambda: sum(r["decision"] == "allow" for r in echo_records(gw)) >= 3)
        v1 = echo_records(gw)[-1]["policy_version"]
        reloads = gw.metric("mcp_gateway_policy_reloads_total", '{result="success"}')

        # 1. A new policy file: the next call is denied by it.
        (policies / "freeze.cedar").write_text(FREEZE_ECHO, encoding="utf-8")
        wait_for("the reload", lambda: gw.metric("mcp_gateway_policy_reloads_total", '{result="success"}') > reloads)
        seen = len(echo_records(gw))
        n = len(agents) + 3
        after = wait_for("calls after the reload", lambda: echo_records(gw)[seen:][:n] if len(echo_records(gw)) >= seen + n else None)
        # Only calls already in flight when the reload landed (one per client)
        # may have been decided on the old set; every later one on the new.
        assert all(r["policy_version"] != v1 for r in after[len(agents):]), after
        v2 = after[-1]["policy_version"]
        assert after[-1]["decision"] == "deny" and after[-1]["policy_ids"] == ["echo-frozen"]

        # 2. An invalid set: rejected, logged, counted; v2 stays in force.
        failures = gw.metric("mcp_gateway_policy_reloads_total", '{result="failure"}')
        (policies / "broken.cedar").write_text('permit (principal, action ==, resource);', encoding="utf-8")
        wait_for("the rejected reload", lambda: gw.metric("mcp_gateway_policy_reloads_total", '{result="failure"}') > failures)
        assert gw.metric("mcp_gateway_policy_reload_failing") == 1
        gw.wait_log("broken.cedar", "rejected")
        seen = len(echo_records(gw))
        wait_for("calls after the rejected reload", lambda: len(echo_records(gw)) >= seen + 3)
        for r in echo_records(gw)[seen:]:
            assert r["policy_version"] == v2 and r["decision"] == "deny", r

        # 3. SIGHUP reloads even when nothing changed since the last look.
        failures = gw.metric("mcp_gateway_policy_reloads_total", '{result="failure"}')
        gw.proc.send_signal(signal.SIGHUP)
        wait_for("the SIGHUP reload", lambda: gw.metric("mcp_gateway_policy_reloads_total", '{result="failure"}') > failures)

        # 4. Back to the original files: the original version, allowed again.
        (policies / "broken.cedar").unlink()
        (policies / "freeze.cedar").unlink()
        wait_for("the original set back", lambda: any(r["policy_version"] == v1 for r in echo_records(gw)[seen:]))
        assert gw.metric("mcp_gateway_policy_reload_failing") == 0
        stop.touch()
        runs = [finish_agent(a) for a in agents]
        agents = []
    finally:
        stop.touch()
        for a in agents:
            a.kill()
        gw.stop()

    # No call failed for any reason but the policy in force at the time.
    summaries = [run.loop for run in runs]
    for summary in summaries:
        assert summary["iterations"] >= 3, summary
        for error in summary["errors"]:
            assert error["code"] == -32060, error
    records = echo_records(gw)
    for r in records:
        assert r["decision"] == ("deny" if r["policy_version"] == v2 else "allow"), r
        assert r["policy_version"] in (v1, v2), r
    # Denied calls never reached the upstream; allowed ones all did.
    allowed = sum(r["decision"] == "allow" for r in records)
    reached = [m for m in tool_calls(upstream, "echo") if m["params"].get("arguments", {}).get("text") == "under reload"]
    assert len(reached) == allowed
    assert sum(x["ok"] for x in summaries) == allowed
    assert sum(x["failed"] for x in summaries) == len(records) - allowed


def test_a_reply_is_filtered_by_the_policies_its_request_was_decided_by(spire, svids, tmp_path):
    """A reload lands while a tools/list is at the upstream (it answers after
    3 s). The reply is filtered by the set the request was decided by, and
    the way-back record cites that set's version: one exchange, one policy
    version. The next list is decided and filtered by the new set."""
    import threading

    from mcp_fixtures import run_py_agent, start_upstream

    s = svids["mcp-server"]
    log = tmp_path / "requests.jsonl"
    slow = start_upstream(cert=s.cert, key=s.key, ca=s.bundle, request_log=log, extra_args=["--list-delay", "3"])
    policies = demo_policies_with(tmp_path / "policies")
    gw = start_gateway(
        tmp_path / "gw", spire.endpoint, slow.url, SERVER_ID, hint="gateway",
        policy_dir=policies, policy_extra=["  watch_interval_ms: 200"],
    )  # fmt: skip
    try:
        gw.wait_ready()
        a = svids["agent"]
        runs = []
        agent = threading.Thread(target=lambda: runs.append(run_py_agent(gw.url, a.cert, a.key, a.bundle, calls=["list"])))
        agent.start()

        def at_upstream():
            return [r for r in slow.requests() if isinstance(r.get("body"), dict) and r["body"].get("method") == "tools/list"]

        wait_for("the tools/list at the upstream", at_upstream)
        reloads = gw.metric("mcp_gateway_policy_reloads_total", '{result="success"}')
        (policies / "freeze.cedar").write_text(FREEZE_ECHO, encoding="utf-8")
        wait_for("the reload", lambda: gw.metric("mcp_gateway_policy_reloads_total", '{result="success"}') > reloads)
        agent.join(timeout=60)
        (run,) = runs
        listed = [t["name"] for t in call_result(run)["tools"]]
        assert "echo" in listed, listed  # the set the request was decided by permits echo

        records = [r for r in gw.audit() if r["caller"] == AGENT_ID and r["method"] == "tools/list"]
        decided = [r for r in records if r["reason"] != "list_filtered"]
        filtered = [r for r in records if r["reason"] == "list_filtered"]
        assert len(decided) == 1 and len(filtered) == 1, records
        assert filtered[0]["policy_version"] == decided[0]["policy_version"], records

        # The next list: the new set hides echo and is the version cited.
        after = run_py_agent(gw.url, a.cert, a.key, a.bundle, calls=["list"])
        assert "echo" not in [t["name"] for t in call_result(after)["tools"]]
        records = [r for r in gw.audit() if r["caller"] == AGENT_ID and r["method"] == "tools/list"]
        newest = [r for r in records if r["reason"] == "list_filtered"][-1]
        assert newest["policy_version"] != decided[0]["policy_version"], records
        assert newest["policy_version"] == [r for r in records if r["reason"] != "list_filtered"][-1]["policy_version"]
    finally:
        gw.stop()
        slow.stop()


def call_result(run) -> dict:
    results = [line for line in run.lines if line.get("call") == "list"]
    assert results and results[0]["ok"] is True, run.stdout + run.stderr
    return results[0]["result"]
