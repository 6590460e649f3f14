"""Run the spiffe-mcp-gateway binary for end-to-end tests and the demo.

    gw = start_gateway(run_dir, spire_endpoint, upstream_url, upstream_id, hint="gateway")
    gw.url, gw.admin_url, gw.audit(), gw.metric("mcp_gateway_svid_rotations_total")
    gw.stop()

The gateway binds port 0 for both listeners; the bound addresses are read
from its startup log line.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jsonl import whole_records
from polling import wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]
POLICY_DIR = REPO_ROOT / "policies"


def gateway_bin() -> Path:
    """The gateway binary: $GATEWAY_BIN, else target/debug (built by the test script)."""
    env = os.environ.get("GATEWAY_BIN")
    path = Path(env) if env else REPO_ROOT / "target" / "debug" / "spiffe-mcp-gateway"
    if not path.exists():
        raise RuntimeError(f"gateway binary {path} not found: run `cargo build` first")
    return path


@dataclass
class Gateway:
    proc: subprocess.Popen
    run_dir: Path
    listen: str
    admin: str
    log_lines: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        port = self.listen.rsplit(":", 1)[1]
        return f"https://localhost:{port}/mcp"

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])

    @property
    def admin_url(self) -> str:
        return f"http://{self.admin}"

    @property
    def audit_path(self) -> Path:
        return self.run_dir / "audit.jsonl"

    def audit(self) -> list[dict[str, Any]]:
        """Every audit record of the requests answered so far, oldest first:
        waits until the writer holds none (it commits in groups, so a record
        may wait up to 10 ms for the ones after it)."""
        self.wait_audit_written()
        # The hash chain's own lines (genesis, checkpoints) are not records.
        return [r for r in whole_records(self.audit_path) if "chain" not in r]

    def wait_audit_written(self, timeout: float = 10.0) -> None:
        """Waits until every record the gateway accepted is in the file
        (`mcp_gateway_audit_queued_records` is 0). A stopped gateway, or one
        whose admin port no longer answers (draining), has nothing to wait
        for: it writes what it holds when it stops."""

        def written() -> bool:
            if self.proc.poll() is not None:
                return True
            try:
                status, body = self.get("/metrics")
            except OSError:
                return True
            m = re.search(r"^mcp_gateway_audit_queued_records (\S+)$", body, re.M)
            return status != 200 or m is None or float(m.group(1)) == 0

        wait_for("the audit writer to write every queued record", written, timeout, every=0.005)

    def wait_audit(self, pred, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Waits until some audit record satisfies pred (the writer is async);
        returns every record written by then."""

        def matched() -> list[dict[str, Any]] | None:
            records = self.audit()
            return records if any(pred(r) for r in records) else None

        return wait_for("a matching audit record", matched, timeout, detail=lambda: f"have {self.audit()}")

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.admin_url + path, timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def metrics(self) -> str:
        status, body = self.get("/metrics")
        assert status == 200, body
        return body

    def metric(self, name: str, labels: str = "") -> float:
        """The value of one sample (0 when the series does not exist yet)."""
        pattern = re.compile(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", re.M)
        m = pattern.search(self.metrics())
        return float(m.group(1)) if m else 0.0

    def is_ready(self) -> bool:
        return self.get("/readyz")[0] == 200

    def wait_ready(self, timeout: float = 60.0) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited {self.proc.returncode}:\n{self.log()}")
            return self.is_ready()

        wait_for("the gateway to be ready", ready, timeout, every=0.1, detail=self.log, error=RuntimeError)

    def log(self) -> str:
        return "".join(self.log_lines[-80:])

    def wait_log(self, *parts: str, timeout: float = 10.0) -> str:
        """Waits for a log line holding every one of `parts` (the gateway
        writes it before the event a test observes, but the line reaches
        `log_lines` through a pipe and a reader thread); returns it."""

        def found() -> str | None:
            return next((line for line in self.log_lines if all(p in line for p in parts)), None)

        return wait_for(f"a log line with {parts}", found, timeout, every=0.01, detail=self.log)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def write_config(
    run_dir: Path,
    endpoint: str,
    upstream_url: str,
    upstream_id: str,
    *,
    hint: str | None = "gateway",
    policy_dir: Path = POLICY_DIR,
    plaintext: bool = False,
    max_body_bytes: int | None = None,
    name: str = "demo",
    caller_id_header: str | None = None,
    session_idle_timeout: int | None = None,
    policy_extra: list[str] | None = None,
    extra_yaml: str = "",
    listener_extra: list[str] | None = None,
    upstream_extra: list[str] | None = None,
    upstreams: list[dict[str, Any]] | None = None,
    audit_extra: list[str] | None = None,
    limits_extra: list[str] | None = None,
    listen_address: str = "127.0.0.1:0",
    admin_address: str = "127.0.0.1:0",
) -> Path:
    """`policy_extra`: more lines under `policy:` (indented by the caller);
    `extra_yaml`: top-level YAML appended as is (e.g. a `user_auth:` block);
    `listener_extra`: more lines under `listener:` (indented by the caller);
    `upstream_extra`: more lines under `upstream:` (indented by the caller);
    `audit_extra`: more lines under `audit:` (indented by the caller);
    `limits_extra`: more lines under `limits:` (indented by the caller);
    `upstreams`: the list form instead (each a dict of `upstreams:` entry
    fields; `upstream_url`/`upstream_id` are then unused);
    `listen_address`/`admin_address`: fixed addresses (a replica restarted
    where its load balancer expects it) instead of free ports."""
    lines = [
        "listener:",
        f'  address: "{listen_address}"',
        *(listener_extra or []),
        "admin:",
        f'  address: "{admin_address}"',
        "workload_api:",
        f'  socket: "{endpoint}"',
    ]
    if hint:
        lines.append(f'  svid_hint: "{hint}"')
    lines += [
        "policy:",
        f'  dir: "{policy_dir}"',
        *(policy_extra or []),
    ]
    if upstreams is not None:
        lines.append("upstreams:")
        for entry in upstreams:
            lines += [f"  - {k}: {json.dumps(v)}" if i == 0 else f"    {k}: {json.dumps(v)}" for i, (k, v) in enumerate(entry.items())]
    else:
        lines += [
            "upstream:",
            f'  name: "{name}"',
            f'  url: "{upstream_url}"',
            f'  spiffe_id: "{upstream_id}"',
        ]
    if plaintext:
        lines.append("  plaintext_loopback: true")
    if caller_id_header:
        lines.append(f'  caller_id_header: "{caller_id_header}"')
    lines += upstream_extra or []
    lines += ["audit:", "  sink: file", f'  path: "{run_dir / "audit.jsonl"}"', *(audit_extra or [])]
    limits = []
    if max_body_bytes is not None:
        limits.append(f"  max_body_bytes: {max_body_bytes}")
    if session_idle_timeout is not None:
        limits.append(f"  session_idle_timeout_seconds: {session_idle_timeout}")
    limits += limits_extra or []
    if limits:
        lines += ["limits:", *limits]
    path = run_dir / "gateway.yaml"
    path.write_text("\n".join(lines) + "\n" + extra_yaml, encoding="utf-8")
    return path


_ADDR = re.compile(r"listen_addr=(\S+) admin_addr=(\S+)")


def _bound_addresses(line: str) -> tuple[str, str] | None:
    """The listener addresses from the "gateway listening" log line, JSON
    (the default `log.format`) or text."""
    if line.startswith("{"):
        try:
            event = json.loads(line)
        except ValueError:
            return None
        if "listen_addr" in event and "admin_addr" in event:
            return event["listen_addr"], event["admin_addr"]
        return None
    m = _ADDR.search(re.sub(r"\x1b\[[0-9;]*m", "", line))
    return (m.group(1), m.group(2)) if m else None


def start_gateway(
    run_dir: Path,
    endpoint: str,
    upstream_url: str,
    upstream_id: str,
    *,
    command: list[str] | None = None,
    **kw: Any,
) -> Gateway:
    """Starts the gateway and waits until both listeners are bound (not until ready).

    `command`: what runs the gateway instead of the binary itself (e.g. the
    binary inside the container image); `serve --config <file>` is appended."""
    run_dir.mkdir(parents=True, exist_ok=True)
    config = write_config(run_dir, endpoint, upstream_url, upstream_id, **kw)
    env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "info"), NO_COLOR="1")
    env.pop("SPIFFE_ENDPOINT_SOCKET", None)
    proc = subprocess.Popen(
        [*(command or [str(gateway_bin())]), "serve", "--config", str(config)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    lines: list[str] = []
    bound = threading.Event()
    addrs: list[str] = []

    def drain() -> None:
        assert proc.stderr is not None
        for line in iter(proc.stderr.readline, ""):
            lines.append(line)
            found = _bound_addresses(line)
            if found and not bound.is_set():
                addrs.extend(found)
                bound.set()

    threading.Thread(target=drain, daemon=True).start()
    if not bound.wait(timeout=30):
        proc.kill()
        raise RuntimeError("gateway did not bind its listeners:\n" + "".join(lines))
    return Gateway(proc=proc, run_dir=run_dir, listen=addrs[0], admin=addrs[1], log_lines=lines)


def start_ready_gateway(run_dir: Path, endpoint: str, upstream_url: str, upstream_id: str, **kw: Any) -> Gateway:
    """start_gateway, then waits until it is ready; stops it if it never is."""
    gw = start_gateway(run_dir, endpoint, upstream_url, upstream_id, **kw)
    try:
        gw.wait_ready()
    except Exception:
        gw.stop()
        raise
    return gw
