"""Admin listener: /metrics is valid Prometheus text (promtool) and a real
Prometheus server scrapes it; /healthz and /readyz answer."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

from mcp_fixtures import run_py_agent
from helpers import DELETE, ECHO
from polling import wait_for

SERIES = [
    'mcp_gateway_decisions_total{decision="allow",method="tools/call"}',
    'mcp_gateway_decisions_total{decision="deny",method="tools/call"}',
    "mcp_gateway_request_duration_seconds_bucket",
    "mcp_gateway_upstream_errors_total",
    "mcp_gateway_svid_expiry_timestamp_seconds",
    "mcp_gateway_svid_rotations_total",
    "mcp_gateway_ready 1",
    'mcp_gateway_policy_reloads_total{result="failure"} 0',
    "mcp_gateway_policy_reload_failing 0",
    "mcp_gateway_policies ",
]

README = Path(__file__).resolve().parents[2] / "README.md"


# The demo policies that permit the echo call and forbid the delete.
BY_POLICY = "mcp_gateway_policy_decisions_total"
ECHO_POLICY = '{effect="permit",policy_id="agent-calls-echo-and-getters"}'
DELETE_POLICY = '{effect="forbid",policy_id="nobody-deletes-repos"}'


def test_metrics_are_valid_and_complete(gateway, svids):
    s = svids["agent"]
    before = [gateway.metric(BY_POLICY, labels) for labels in (ECHO_POLICY, DELETE_POLICY)]
    run_py_agent(gateway.url, s.cert, s.key, s.bundle, calls=[ECHO, DELETE])
    text = gateway.metrics()
    # Each call counted under the policy that decided it (the gateway is
    # shared with other tests: at least once more than before).
    after = [gateway.metric(BY_POLICY, labels) for labels in (ECHO_POLICY, DELETE_POLICY)]
    assert all(a >= b + 1 for a, b in zip(after, before)), (before, after)
    # upstream_errors is a vector: make sure the family is declared even before any error.
    for series in SERIES:
        if series == "mcp_gateway_upstream_errors_total":
            assert "# TYPE mcp_gateway_upstream_errors_total counter" in text
        else:
            assert series in text, f"{series} missing from /metrics"
    assert gateway.metric("mcp_gateway_svid_expiry_timestamp_seconds") > time.time()
    promtool = shutil.which("promtool")
    assert promtool, "promtool not installed (scripts/setup installs the prometheus package)"
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.strip() == "" and check.stderr.strip() == "", "promtool lint findings: " + check.stdout + check.stderr
    # Every family exported is documented in the README's metric table.
    readme = README.read_text(encoding="utf-8")
    families = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
    assert len(families) >= 15, families
    undocumented = [f for f in families if f"`{f}" not in readme]
    assert not undocumented, f"metrics missing from README: {undocumented}"
    # No SPIFFE ID labels unless opted in (metrics.caller_labels).
    assert "spiffe://" not in text


def test_health_endpoints(gateway):
    assert gateway.get("/healthz") == (200, "ok\n")
    assert gateway.get("/readyz") == (200, "ready\n")
    assert gateway.get("/nope")[0] == 404


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_real_prometheus_scrape(gateway, tmp_path):
    """A real Prometheus server scrapes the admin listener and can query the
    decision counter."""
    prometheus = shutil.which("prometheus")
    assert prometheus, "prometheus not installed (scripts/setup installs it)"
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: gateway\n    static_configs: [{{targets: ['{gateway.admin}']}}]\n"
    )
    port = free_port()
    proc = subprocess.Popen(
        [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        query = f"http://127.0.0.1:{port}/api/v1/query?query=mcp_gateway_decisions_total"

        def scraped() -> list | None:
            assert proc.poll() is None, proc.stderr.read()
            try:
                with urllib.request.urlopen(query, timeout=2) as r:
                    return json.load(r)["data"]["result"]
            except OSError:
                return None

        result = wait_for("Prometheus to scrape the gateway", scraped, 60, every=0.5)
        jobs = {s["metric"]["job"] for s in result}
        assert jobs == {"gateway"}
        assert any(s["metric"].get("decision") == "allow" for s in result)
        # The series a dashboard and alerts use, through Prometheus's query API.
        queries = {
            "histogram_quantile(0.99, sum by (le) (rate(mcp_gateway_request_duration_seconds_bucket[1m])))": None,
            'mcp_gateway_upstream_errors_total{kind="upstream_unavailable"}': 0.0,
            "mcp_gateway_svid_expiry_timestamp_seconds - time() > 0": None,
            "mcp_gateway_ready": 1.0,
            'mcp_gateway_policy_reloads_total{result="failure"}': 0.0,
            "mcp_gateway_policy_reload_failing": 0.0,
        }
        for expr, want in queries.items():
            url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})

            def series() -> list:
                with urllib.request.urlopen(url, timeout=5) as r:
                    body = json.load(r)
                assert body["status"] == "success", (expr, body)
                return body["data"]["result"]

            found = wait_for(f"a series for {expr}", series, 30, every=0.5)  # a rate() needs two scrapes
            if want is not None:
                assert float(found[0]["value"][1]) == want, (expr, found)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
