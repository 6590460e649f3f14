"""Traces in a real trace backend: the gateway (`traces:` on) exports its
spans over OTLP/gRPC to Jaeger v2 (built from its Go module by
tests/e2e/jaeger/build.sh), on real SPIRE, with the real Python MCP SDK as
the agent. The test reads each trace back from Jaeger's query API (v3,
OTLP JSON) and checks the spans, their attributes and parentage, and that
the upstream (its own request log) saw the same trace, with the gateway's
request span as its parent."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from conftest import AGENT_ID, SERVER_ID
from gateway_fixtures import start_ready_gateway
from helpers import DELETE, ECHO, call
from mcp_fixtures import run_py_agent
from polling import wait_for

JAEGER_BUILD = Path(__file__).resolve().parent / "jaeger" / "build.sh"
SERVER_KIND, CLIENT_KIND = 2, 3  # OTLP SpanKind


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def jaeger_bin() -> Path:
    if os.environ.get("JAEGER_BIN"):
        return Path(os.environ["JAEGER_BIN"])
    proc = subprocess.run([str(JAEGER_BUILD)], capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"tests/e2e/jaeger/build.sh failed:\n{proc.stderr[-4000:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


class Jaeger:
    """A Jaeger v2 process: OTLP/gRPC in, memory storage, the query API
    out, every port free at start (nothing fixed)."""

    def __init__(self, run_dir: Path) -> None:
        self.otlp = free_port()
        self.query = free_port()
        config = run_dir / "jaeger.yaml"
        config.write_text(
            f"""
service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
extensions:
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 10000
  jaeger_query:
    # Jaeger's own spans would go to a fixed default port.
    enable_tracing: false
    storage:
      traces: memstore
    http:
      endpoint: 127.0.0.1:{self.query}
    grpc:
      endpoint: 127.0.0.1:{free_port()}
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:{self.otlp}
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
""",
            encoding="utf-8",
        )
        self.log = run_dir / "jaeger.log"
        with open(self.log, "w", encoding="utf-8") as log:
            self.proc = subprocess.Popen(
                [str(jaeger_bin()), "--config", f"file:{config}"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for("Jaeger's query API", self._up, timeout=60, detail=self._tail)

    def _tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def _up(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"jaeger exited {self.proc.returncode}:\n{self._tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.query}/api/services", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    @property
    def otlp_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.otlp}"

    def spans(self, trace_id: str) -> list[dict[str, Any]]:
        """Every span of the trace Jaeger holds (none while it holds no trace)."""
        url = f"http://127.0.0.1:{self.query}/api/v3/traces/{trace_id}"
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                body = json.load(r)
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return []
            raise
        out = []
        for rs in body["result"]["resourceSpans"]:
            service = attrs(rs["resource"])["service.name"]
            for ss in rs["scopeSpans"]:
                out += [dict(s, service=service) for s in ss["spans"]]
        return out

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def value(v: dict[str, Any]) -> Any:
    """An OTLP JSON AnyValue as Python."""
    if "arrayValue" in v:
        return [value(x) for x in v["arrayValue"].get("values", [])]
    if "intValue" in v:
        return int(v["intValue"])
    return next(iter(v.values()))


def attrs(item: dict[str, Any]) -> dict[str, Any]:
    return {a["key"]: value(a["value"]) for a in item.get("attributes", [])}


@pytest.fixture(scope="module")
def jaeger(tmp_path_factory):
    j = Jaeger(tmp_path_factory.mktemp("jaeger"))
    yield j
    j.stop()


@pytest.fixture(scope="module")
def traced_gateway(spire, upstream, jaeger, tmp_path_factory):
    traces = (
        "traces:\n"
        f'  otlp_endpoint: "{jaeger.otlp_endpoint}"\n'
        "  service_name: mcp-gateway-e2e\n"
        "  sampling: {ratio: 1.0, parent_based: true}\n"
    )
    gw = start_ready_gateway(
        tmp_path_factory.mktemp("traced-gateway"), spire.endpoint, upstream.url, SERVER_ID, extra_yaml=traces
    )
    yield gw
    gw.stop()


def export_state(gw, jaeger: Jaeger, trace_id: str) -> str:
    """What a failed wait shows: the spans Jaeger holds, the exporter's
    counters, the logs' tails."""
    counters = [line for line in gw.metrics().splitlines() if line.startswith("mcp_gateway_trace_spans")]
    return (
        f"spans: {json.dumps(jaeger.spans(trace_id))[-2000:]}\n{counters}\n"
        f"gateway log: {gw.log()[-2000:]}\njaeger log: {jaeger._tail()[-2000:]}"
    )


def upstream_traceparents(upstream, trace_id: str) -> list[str]:
    """The `traceparent` of each request of the trace the upstream received."""
    out = []
    for req in upstream.requests():
        tp = (req.get("headers") or {}).get("traceparent", "")
        if tp.split("-")[1:2] == [trace_id]:
            out.append(tp)
    return out


def request_span(spans: list[dict[str, Any]], target: str) -> dict[str, Any] | None:
    for s in spans:
        a = attrs(s)
        if s["service"] == "mcp-gateway-e2e" and s["kind"] == SERVER_KIND and a.get("mcp.target") == target:
            return s
    return None


def test_an_allowed_and_a_denied_call_are_spans_of_the_callers_trace(traced_gateway, upstream, jaeger, svids):
    """The caller's traceparent is continued: each call is a server span of
    its trace (parent: the caller's span) naming caller, method, target,
    decision and policy ids; the allowed call has an upstream child span,
    and the upstream saw the same trace with the request span as parent.
    The denied call has no upstream span and never reached the upstream."""
    trace_id = secrets.token_hex(16)
    caller_span = secrets.token_hex(8)
    s = svids["agent"]
    run = run_py_agent(
        traced_gateway.url, s.cert, s.key, s.bundle, calls=[ECHO, DELETE],
        headers=[f"traceparent: 00-{trace_id}-{caller_span}-01"],
    )  # fmt: skip
    assert call(run, ECHO)["ok"] is True, run.stdout + run.stderr
    assert call(run, DELETE)["ok"] is False

    def both() -> list[dict[str, Any]] | None:
        spans = jaeger.spans(trace_id)
        allowed = request_span(spans, "echo")
        hops = [x for x in spans if allowed and x.get("parentSpanId") == allowed["spanId"]]
        return spans if hops and request_span(spans, "delete_repository") else None

    spans = wait_for(f"trace {trace_id} in Jaeger", both, timeout=30, every=0.2,
                     detail=lambda: export_state(traced_gateway, jaeger, trace_id))  # fmt: skip

    allowed = request_span(spans, "echo")
    a = attrs(allowed)
    assert allowed["name"] == "tools/call"
    assert allowed["parentSpanId"] == caller_span, "the caller's span is the parent"
    assert a["spiffe.caller_id"] == AGENT_ID
    assert a["mcp.method"] == "tools/call" and a["mcp.upstream"] == "demo"
    assert a["mcp.decision"] == "allow"
    assert a["mcp.policy_ids"], "an allowed call names the policies that permitted it"
    assert a["http.response.status_code"] == 200

    [hop] = [x for x in spans if x.get("parentSpanId") == allowed["spanId"]]
    assert hop["kind"] == CLIENT_KIND and hop["name"] == "upstream"
    assert attrs(hop)["mcp.upstream"] == "demo"
    assert attrs(hop)["http.response.status_code"] == 200

    denied = request_span(spans, "delete_repository")
    d = attrs(denied)
    assert denied["parentSpanId"] == caller_span
    assert d["spiffe.caller_id"] == AGENT_ID and d["mcp.method"] == "tools/call"
    assert d["mcp.decision"] == "deny" and d["mcp.reason"] == "forbid"
    assert d["mcp.policy_ids"] == ["nobody-deletes-repos"]
    assert not [x for x in spans if x.get("parentSpanId") == denied["spanId"]], "no upstream call"

    # The upstream's own log: the allowed call arrived in this trace, its
    # parent the gateway's request span; the denied one never arrived.
    seen = upstream_traceparents(upstream, trace_id)
    assert f"00-{trace_id}-{allowed['spanId']}-01" in seen, seen
    assert all(tp.split("-")[2] != denied["spanId"] for tp in seen)
    # The audit record of the allowed call names the same trace and span.
    def echo_allowed(r: dict[str, Any]) -> bool:
        return r.get("trace_id") == trace_id and r.get("target") == "echo" and r["decision"] == "allow"

    [record] = [r for r in traced_gateway.wait_audit(echo_allowed) if echo_allowed(r)]
    assert record["span_id"] == allowed["spanId"]


def test_a_trace_the_gateway_starts_is_sampled_upstream_and_exported(traced_gateway, upstream, jaeger, svids):
    """Without a traceparent the gateway starts the trace; sampled (ratio
    1), it says so upstream (flags 01), and the trace is in Jaeger as a
    root span with its upstream child."""
    s = svids["agent"]
    before = len(upstream.requests())
    run = run_py_agent(traced_gateway.url, s.cert, s.key, s.bundle, calls=[ECHO])
    assert call(run, ECHO)["ok"] is True, run.stdout + run.stderr
    calls = [
        r for r in upstream.requests()[before:]
        if isinstance(r.get("body"), dict) and r["body"].get("method") == "tools/call"
    ]  # fmt: skip
    [tp] = [r["headers"]["traceparent"] for r in calls]
    _, trace_id, parent, flags = tp.split("-")
    assert flags == "01", "the gateway's sampling decision goes upstream"

    def exported() -> list[dict[str, Any]] | None:
        spans = jaeger.spans(trace_id)
        return spans if len(spans) >= 2 else None

    spans = wait_for(f"trace {trace_id} in Jaeger", exported, timeout=30, every=0.2,
                     detail=lambda: export_state(traced_gateway, jaeger, trace_id))  # fmt: skip
    root = request_span(spans, "echo")
    assert root["spanId"] == parent and not root.get("parentSpanId"), "a root span, the upstream's parent"
    assert [x["name"] for x in spans if x.get("parentSpanId") == root["spanId"]] == ["upstream"]
    assert traced_gateway.metric("mcp_gateway_trace_spans_exported_total") >= 2
    assert traced_gateway.metric("mcp_gateway_trace_spans_dropped_total", '{reason="queue_full"}') == 0
