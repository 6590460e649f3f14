"""The sidecar topology around the real `@modelcontextprotocol/server-everything`
(npm, TypeScript SDK 1.x), for the server- and client-sidecar end-to-end tests:

    agent --mTLS--> central gateway --mTLS--> server sidecar --plain HTTP, 127.0.0.1--> server-everything
    (spiffe://example.org/ns/demo/sa/gateway)  (spiffe://example.org/ns/demo/sa/everything)

The server sidecar is a second gateway process with its own SVID (a SPIRE
entry registered here with the hint "everything") and a `plaintext_loopback`
upstream. server-everything listens on every interface by default; the
preload `ts/loopback-listen.mjs` binds it to 127.0.0.1 and reports the port.
Policies are the shipped examples under examples/policies/.

Import the fixtures into a test module:

    from everything_fixtures import central, everything, everything_entry, server_sidecar  # noqa: F401
"""

from __future__ import annotations

import os
import subprocess
import threading
from dataclasses import dataclass, field

import pytest

from conftest import TD
from gateway_fixtures import REPO_ROOT, Gateway, start_gateway
from mcp_fixtures import TS_DIR, ensure_ts_deps, node_bin
from polling import wait_for

EVERYTHING_ID = f"{TD}/ns/demo/sa/everything"
EXAMPLE_POLICIES = REPO_ROOT / "examples" / "policies"
EVERYTHING_JS = TS_DIR / "node_modules" / "@modelcontextprotocol" / "server-everything" / "dist" / "index.js"


@dataclass
class Everything:
    proc: subprocess.Popen
    port: int
    output: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_everything(timeout: float = 30.0) -> Everything:
    """server-everything with its Streamable HTTP transport on 127.0.0.1, a free port."""
    ensure_ts_deps()
    if not EVERYTHING_JS.exists():
        raise RuntimeError(f"{EVERYTHING_JS} missing: run `npm ci` in {TS_DIR}")
    proc = subprocess.Popen(
        [node_bin(), "--import", "./loopback-listen.mjs", str(EVERYTHING_JS), "streamableHttp"],
        cwd=TS_DIR,
        env=dict(os.environ, PORT="0"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    ready: list[int] = []

    def drain() -> None:
        assert proc.stdout is not None
        for line in iter(proc.stdout.readline, ""):
            output.append(line)
            if line.startswith("READY ") and not ready:
                ready.append(int(line.split()[1]))

    threading.Thread(target=drain, daemon=True).start()

    def listening() -> list[int]:
        if proc.poll() is not None:
            raise RuntimeError(f"server-everything exited {proc.returncode}:\n{''.join(output)}")
        return ready

    try:
        wait_for("server-everything to listen", listening, timeout, detail=lambda: "".join(output), error=RuntimeError)
    except RuntimeError:
        proc.kill()
        raise
    return Everything(proc=proc, port=ready[0], output=output)


@pytest.fixture(scope="module")
def everything():
    server = start_everything()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def everything_entry(spire):
    """The server sidecar's SPIRE entry: the SPIFFE ID of server-everything's workload."""
    entry = spire.register(EVERYTHING_ID, "everything", dns="localhost")
    yield EVERYTHING_ID
    spire.delete_entry(entry)


@pytest.fixture(scope="module")
def server_sidecar(spire, everything, everything_entry, tmp_path_factory) -> Gateway:
    """A second gateway process, with the "everything" SVID, in front of
    server-everything over plain HTTP on loopback."""
    gw = start_gateway(
        tmp_path_factory.mktemp("server-sidecar"),
        spire.endpoint,
        everything.url,
        EVERYTHING_ID,
        hint="everything",
        plaintext=True,
        name="everything",
        policy_dir=EXAMPLE_POLICIES / "server-sidecar",
    )
    try:
        gw.wait_ready()
        yield gw
    finally:
        gw.stop()


@pytest.fixture(scope="module")
def central(spire, server_sidecar, tmp_path_factory) -> Gateway:
    """The central gateway: mTLS to the server sidecar, which must present EVERYTHING_ID."""
    gw = start_gateway(
        tmp_path_factory.mktemp("central"),
        spire.endpoint,
        f"https://localhost:{server_sidecar.port}/mcp",
        EVERYTHING_ID,
        hint="gateway",
        name="everything",
        policy_dir=EXAMPLE_POLICIES / "everything-gateway",
    )
    try:
        gw.wait_ready()
        yield gw
    finally:
        gw.stop()


def tool_records(gw: Gateway, tool: str) -> list[dict]:
    """The audit records of tools/call of `tool` at one gateway process."""
    return [r for r in gw.audit() if r.get("method") == "tools/call" and r.get("target") == tool]

