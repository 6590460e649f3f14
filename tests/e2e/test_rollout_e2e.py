"""A rollout that drops nothing: two gateway replicas behind HAProxy, real
SDK clients calling all the time, each replica restarted in turn (SIGTERM,
drain, start again), and not one call fails.

The setup, on real SPIRE:

- Two gateway processes, A and B, with one upstream (upstream_server.py,
  which logs every request it receives) and one `sessions.keys_file` (a
  random key the test writes), each with its own audit file, and
  `shutdown.not_ready_delay_seconds` so that a draining replica keeps its
  listener open while the balancer notices its `/readyz` 503.
- HAProxy from Debian in front, `mode tcp`, `balance roundrobin`, no
  stickiness, checking each replica's admin `/readyz` (an HTTP check on the
  admin port) every 100 ms.
- The TypeScript SDK (2025-11-25, one session held throughout) and the
  Python SDK 2.x (2026-07-28, stateless) calling `echo` continuously, each
  call with its own text.

"Round robin per request, no stickiness", with mTLS passed through: the
gateway must see the agent's own certificate, so HAProxy cannot terminate
TLS and sees no HTTP requests, only connections, which it spreads round
robin. The clients therefore open a new connection for every request
(`--no-keepalive`): each request is one connection is one round-robin
choice, and a session's consecutive calls land on either replica. (With
keep-alive a client would stay on one replica until the connection closes,
which is the stickiness the issue rules out; it would also add the
keep-alive race, a request sent on an idle connection the server is just
closing, which no server can win for a non-idempotent POST.) The TS SDK's
GET stream is one long connection on one replica; the gateway keeps it
through the drain until `shutdown.drain_timeout_seconds` and the SDK
reconnects it through the balancer.

What it asserts:

- zero failed calls in both clients' summaries;
- the TS agent held one session id from start to end (the sealed id opened
  by its one `initialize` works on the other replica and on restarted ones);
- every call is accounted for: the upstream received exactly the calls the
  clients saw succeed (by their texts, none twice), and the audit logs of
  A and B together hold exactly one `tools/call` allow record for each
  (matched by the span id the upstream received in `traceparent`);
- calls were really spread: each replica served both clients before and
  after its restart;
- each draining replica left HAProxy's rotation (its check saw 503) while
  its process still ran and before its listener closed, and HAProxy never
  had to retry a connection (no connection reached a closed listener).

Why the not-ready delay: without it (`not_ready_delay_seconds: 0`) the
listener closes at SIGTERM, before the balancer's next check can see the
503; tried once, HAProxy sent two connections to the closed listener in
that window (refused, `SC` in its log) and both clients' calls failed.
`retries` with `option redispatch` (configured here, as in production)
would hide that by connecting again elsewhere, which is why the test also
asserts that HAProxy retried nothing.

Run it alone:
    GATEWAY_BIN=target/debug/spiffe-mcp-gateway .venv/bin/python -m pytest \
        tests/e2e/test_rollout_e2e.py -p no:cacheprovider -q
"""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


from conftest import SERVER_ID
from gateway_fixtures import Gateway, start_gateway
from mcp_fixtures import AgentRun, finish_agent, start_py_agent_loop, start_ts_agent_loop, start_upstream
from polling import wait_for

NOT_READY_DELAY = 2
DRAIN_TIMEOUT = 5
TS_VERSION = "2025-11-25"
PY_VERSION = "2026-07-28"

# HAProxy is installed by scripts/setup: a machine without it fails here
# rather than skipping the test.


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Balancer:
    """HAProxy in front of the replicas; its state read from the stats socket."""

    proc: subprocess.Popen
    port: int
    stats_socket: Path
    log_path: Path

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}/mcp"

    def servers(self) -> dict[str, dict[str, str]]:
        """`show stat` for the replicas, by server name (status, retries, ...)."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(self.stats_socket))
            s.sendall(b"show stat\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        rows = csv.DictReader(io.StringIO(data.decode().lstrip("# ")))
        return {r["svname"]: r for r in rows if r["pxname"] == "gateways" and r["svname"] in ("a", "b")}

    def status(self, name: str) -> str:
        return self.servers()[name]["status"]

    def wait_status(self, name: str, want: str, timeout: float = 30.0) -> None:
        wait_for(f"HAProxy to see replica {name} {want}", lambda: self.status(name) == want, timeout, detail=self.log)

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_balancer(run_dir: Path, replicas: dict[str, Gateway]) -> Balancer:
    run_dir.mkdir(parents=True, exist_ok=True)
    port, sock, log = free_port(), run_dir / "stats.sock", run_dir / "haproxy.log"
    servers = "\n".join(
        f"    server {name} {gw.listen} check port {gw.admin.rsplit(':', 1)[1]} inter 100ms fall 2 rise 1"
        for name, gw in replicas.items()
    )
    config = f"""global
    stats socket {sock} mode 600 level admin
    log stderr format short local0 info

defaults
    mode tcp
    log global
    option tcplog
    timeout connect 2s
    timeout client 5m
    timeout server 5m
    retries 3
    option redispatch 1

frontend mcp
    bind 127.0.0.1:{port}
    default_backend gateways

backend gateways
    balance roundrobin
    option httpchk
    http-check send meth GET uri /readyz
    http-check expect status 200
{servers}
"""
    assert shutil.which("haproxy"), "haproxy is not installed: run scripts/setup"
    cfg = run_dir / "haproxy.cfg"
    cfg.write_text(config, encoding="utf-8")
    check = subprocess.run(["haproxy", "-c", "-q", "-f", str(cfg)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    with open(log, "w", encoding="utf-8") as out:
        proc = subprocess.Popen(["haproxy", "-db", "-f", str(cfg)], stdout=out, stderr=subprocess.STDOUT)
    bal = Balancer(proc=proc, port=port, stats_socket=sock, log_path=log)

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"haproxy exited {proc.returncode}:\n{bal.log()}")
        return sock.exists() and all(bal.status(n) == "UP" for n in replicas)

    wait_for("HAProxy to see both replicas up", up, 30, detail=bal.log)
    return bal


def tool_calls(records: list[dict], version: str) -> list[dict]:
    return [r for r in records if r["method"] == "tools/call" and r["protocol_version"] == version]


def served_both(gw: Gateway, since: int) -> bool:
    """Whether `gw` has served a call of each client after its record `since`."""
    records = gw.audit()[since:]
    return bool(tool_calls(records, TS_VERSION)) and bool(tool_calls(records, PY_VERSION))


class Replicas:
    """A and B: started, and restarted at the same addresses."""

    def __init__(self, tmp: Path, spire, upstream, keys: Path) -> None:
        self.spire, self.upstream, self.tmp = spire, upstream, tmp
        self.extra = (
            f'sessions:\n  keys_file: "{keys}"\n'
            f"shutdown:\n  not_ready_delay_seconds: {NOT_READY_DELAY}\n  drain_timeout_seconds: {DRAIN_TIMEOUT}\n"
        )
        self.gw: dict[str, Gateway] = {}

    def start(self, name: str, **addresses: str) -> Gateway:
        gw = start_gateway(
            self.tmp / name, self.spire.endpoint, self.upstream.url, SERVER_ID, extra_yaml=self.extra, **addresses
        )
        self.gw[name] = gw
        gw.wait_ready()
        return gw

    def restart(self, name: str, balancer: Balancer) -> int:
        """SIGTERM, drain, start again; returns how many audit records the
        replica wrote before it stopped."""
        old = self.gw[name]
        old.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        balancer.wait_status(name, "DOWN", timeout=NOT_READY_DELAY * 5)
        # Out of the rotation while the process still runs, well before its
        # listener closes (the delay after SIGTERM).
        left_after = time.monotonic() - signalled
        assert old.proc.poll() is None, old.log()
        assert left_after < NOT_READY_DELAY, f"HAProxy took {left_after:.2f} s to see {name} draining"
        old.proc.wait(timeout=NOT_READY_DELAY + DRAIN_TIMEOUT + 20)
        assert old.proc.returncode == 0, old.log()
        written = len(old.audit())
        self.start(name, listen_address=old.listen, admin_address=old.admin)
        balancer.wait_status(name, "UP")
        return written

    def stop(self) -> None:
        for gw in self.gw.values():
            gw.stop()


def write_keys(path: Path) -> Path:
    path.write_text(f"k1 {base64.b64encode(os.urandom(32)).decode()}\n", encoding="utf-8")
    path.chmod(0o600)
    return path


def ok_texts(run: AgentRun, prefix: str) -> list[str]:
    return [f"{prefix}-{line['iteration']}" for line in run.iterations if line["ok"]]


def upstream_calls(upstream) -> list[dict]:
    """The upstream's own log of the echo calls: text and traceparent."""
    out = []
    for req in upstream.requests():
        body = req.get("body")
        if isinstance(body, dict) and body.get("method") == "tools/call":
            out.append({"text": body["params"]["arguments"]["text"], "traceparent": req["headers"].get("traceparent")})
    return out


def start_agents(url: str, svid, tmp: Path, stop: Path) -> dict[str, tuple[subprocess.Popen, Path]]:
    """The TS agent (one session) and the Python agent (2026-07-28), each
    calling echo with a numbered text until `stop` appears, a new connection
    per request. Their intervals differ so that the two do not fall into
    step with the balancer's rotation (each always on one replica)."""
    flags = ["--loop-same-client", "--no-keepalive", "--number-calls"]
    ts, py = tmp / "ts.out", tmp / "py.out"
    return {
        "ts": (
            start_ts_agent_loop(
                url, svid.cert, svid.key, svid.bundle, ['echo:{"text":"ts-{i}"}'],
                repeat_until=stop, interval_ms=40, output=ts, extra_args=flags,
            ),
            ts,
        ),
        "py": (
            start_py_agent_loop(
                url, svid.cert, svid.key, svid.bundle, ['echo:{"text":"py-{i}"}'],
                repeat_until=stop, interval_ms=70, output=py, extra_args=[*flags, "--mode", PY_VERSION],
            ),
            py,
        ),
    }  # fmt: skip


def roll(replicas: Replicas, balancer: Balancer, agents: dict) -> dict[str, int]:
    """Waits for both replicas to serve both clients, then restarts A and
    then B, each once it and the other have served both clients; returns
    how many records each replica's first process wrote."""

    def serving(name: str, since: int = 0) -> None:
        def both() -> bool:
            for agent, (proc, path) in agents.items():
                if proc.poll() is not None:
                    err = Path(f"{path}.stderr").read_text()[-3000:]
                    raise AssertionError(f"the {agent} agent stopped early: {path.read_text()[-3000:]}\n{err}")
            return served_both(replicas.gw[name], since)

        wait_for(f"replica {name} to serve both clients", both, 60, every=0.1)

    serving("a")
    serving("b")
    first = {"a": replicas.restart("a", balancer)}
    serving("a", since=first["a"])
    first["b"] = replicas.restart("b", balancer)
    serving("b", since=first["b"])
    return first


def assert_accounted(runs: dict[str, AgentRun], upstream, records: dict[str, list[dict]]) -> None:
    """Every call the clients saw succeed reached the upstream once and has
    one allow record in the audit logs of A and B together."""
    seen = upstream_calls(upstream)
    clients = ok_texts(runs["ts"], "ts") + ok_texts(runs["py"], "py")
    assert sorted(c["text"] for c in seen) == sorted(clients)
    inits = [r for r in upstream.requests() if isinstance(r.get("body"), dict) and r["body"].get("method") == "initialize"]
    assert len(inits) == 1, "the TS agent's one session, opened once"
    calls = [r for log in records.values() for r in log if r["method"] == "tools/call"]
    assert all(r["decision"] == "allow" for r in calls), [r for r in calls if r["decision"] != "allow"]
    assert len(tool_calls(calls, TS_VERSION)) == runs["ts"].loop["ok"]
    assert len(tool_calls(calls, PY_VERSION)) == runs["py"].loop["ok"]
    # The span id the upstream received as parent names one record each.
    assert sorted(r["span_id"] for r in calls) == sorted(c["traceparent"].split("-")[2] for c in seen)
    # One upstream session behind all the TS agent's calls, on every replica.
    assert len({r["session_id"] for r in tool_calls(calls, TS_VERSION)}) == 1


def test_two_replicas_restarted_in_turn_drop_no_call(spire, svids, tmp_path):
    s = svids["mcp-server"]
    upstream = start_upstream(cert=s.cert, key=s.key, ca=s.bundle, request_log=tmp_path / "upstream.jsonl")
    replicas = Replicas(tmp_path, spire, upstream, write_keys(tmp_path / "session-keys"))
    stop = tmp_path / "stop"
    agents: dict[str, tuple[subprocess.Popen, Path]] = {}
    balancer = None
    try:
        try:
            balancer = start_balancer(tmp_path / "haproxy", {"a": replicas.start("a"), "b": replicas.start("b")})
            agents = start_agents(balancer.url, svids["agent"], tmp_path, stop)
            first = roll(replicas, balancer, agents)
            stats = balancer.servers()
        finally:
            stop.write_text("stop")
            runs = {name: finish_agent(proc, timeout=60, output=path) for name, (proc, path) in agents.items()}
            if balancer is not None:
                balancer.stop()
        print(json.dumps({name: run.loop for name, run in runs.items()}))
        for name, run in runs.items():
            assert run.loop, run.stdout[-3000:] + run.stderr[-3000:]
            assert run.loop["failed"] == 0, (name, run.loop)
            assert run.loop["ok"] == len(run.iterations) > 0, (name, run.loop)
        assert len(runs["ts"].loop["session_ids"]) == 1, runs["ts"].loop["session_ids"]
        records = {name: gw.audit() for name, gw in replicas.gw.items()}
        assert_accounted(runs, upstream, records)
        # Spread: each replica served both clients before and after its restart.
        for name, log in records.items():
            before, after = log[: first[name]], log[first[name] :]
            for version in (TS_VERSION, PY_VERSION):
                assert tool_calls(before, version) and tool_calls(after, version), (name, version)
        # No connection reached a closed listener: HAProxy retried none.
        retries = {name: (row["wretr"], row["wredis"]) for name, row in stats.items()}
        assert all(r == ("0", "0") for r in retries.values()), retries
    finally:
        replicas.stop()
        upstream.stop()
