"""The system under test: SPIRE, the upstream, and the four arms.

SPIRE is the repo's own (spire/start.sh, spire/register.sh). The gateway
takes its SVID from the Workload API; everything else uses files written by
`spire-agent api fetch x509 -write`: the load generator presents the agent
SVID, nginx and ghostunnel the gateway SVID, the upstream the mcp-server SVID.
Each arm's proxy, and the upstream, are started fresh for its turn and
stopped after it.
"""

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from procs import Service, log

HERE = Path(__file__).resolve().parent
CONF = HERE / "conf"
ROOT = HERE.parent
TRUST = "spiffe://example.org/ns/demo/sa/"
WANT_SVIDS = {TRUST + "agent": "agent", TRUST + "gateway": "gateway",
              TRUST + "mcp-server": "mcp-server"}
# The arms of a run by default; `baseline` only with --baseline BIN.
ARMS = ["direct", "gateway", "nginx", "ghostunnel"]
# Arms that are a spiffe-mcp-gateway: their audit files are checked.
GATEWAYS = ("gateway", "baseline")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc=None, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited ({proc.returncode}) before port {port} opened")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} not open after {timeout}s")


def render(template, out, **values):
    text = (CONF / template).read_text()
    for key, value in values.items():
        text = text.replace(f"@{key}@", str(value))
    left = re.findall(r"@[A-Z_]+@", text)
    if left:
        raise RuntimeError(f"{template}: no value for {left}")
    Path(out).write_text(text)


class Env:
    """Run directory, SPIRE and certificates for all rounds; the upstream."""

    def __init__(self, args, run_dir):
        self.a = args
        self.run = run_dir
        self.certs = run_dir / "certs"
        # Unix socket paths are short (spire/start.sh checks): SPIRE's state
        # goes to a short temporary directory, removed after a good run.
        self.spire = Path(tempfile.mkdtemp(prefix="mcp-bench-spire-"))
        self.services = []
        self.upstream = None
        self.spire_started = False

    def start(self):
        self.start_spire()
        self.fetch_svids()

    def fresh_upstream(self, name):
        """Starts a new upstream for an arm's turn (stopping the last one),
        so every arm, direct included, meets a fresh process."""
        if self.upstream is not None:
            self.upstream.stop()
            self.services.remove(self.upstream)
        self.upstream_port = free_port()
        self.upstream = start_nginx(self, self.run / name / "upstream", "upstream.nginx.conf.tmpl",
                                    self.a.load_cpus, PORT=self.upstream_port,
                                    RESPONSE=(CONF / "response.json").read_text())
        self.services.append(self.upstream)

    def start_spire(self):
        env = dict(os.environ, SPIRE_BIN_DIR=self.a.spire_bin)
        log(f"SPIRE: starting (state in {self.spire})")
        subprocess.run(["taskset", "-c", self.a.load_cpus, ROOT / "spire/start.sh", self.spire],
                       env=env, check=True, stdout=subprocess.DEVNULL)
        self.spire_started = True
        # 6 h SVIDs: nothing rotates during a run.
        for var in ("GATEWAY_SVID_TTL", "AGENT_SVID_TTL", "AGENT_B_SVID_TTL", "MCP_SERVER_SVID_TTL"):
            env[var] = "21600"
        subprocess.run([ROOT / "spire/register.sh", self.spire], env=env, check=True,
                       stdout=subprocess.DEVNULL)

    def fetch_svids(self):
        """Writes agent/gateway/mcp-server .pem/.key and bundle.pem to certs/."""
        raw = self.run / "svids"
        deadline = time.monotonic() + 60
        while True:
            shutil.rmtree(raw, ignore_errors=True)
            raw.mkdir(parents=True)
            subprocess.run([Path(self.a.spire_bin) / "spire-agent", "api", "fetch", "x509",
                            "-socketPath", self.spire / "agent.sock", "-write", raw],
                           check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            found = {}
            for pem in sorted(raw.glob("svid.*.pem")):
                uri = svid_uri(pem)
                if uri in WANT_SVIDS:
                    found[WANT_SVIDS[uri]] = pem.name.split(".")[1]
            if len(found) == len(WANT_SVIDS):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"SVIDs not issued within 60 s, have {sorted(found)}")
            time.sleep(0.5)
        self.certs.mkdir(exist_ok=True)
        for name, idx in found.items():
            shutil.copy(raw / f"svid.{idx}.pem", self.certs / f"{name}.pem")
            shutil.copy(raw / f"svid.{idx}.key", self.certs / f"{name}.key")
        shutil.copy(raw / f"bundle.{idx}.pem", self.certs / "bundle.pem")
        log(f"SPIRE: SVIDs of {', '.join(sorted(found))} written to {self.certs}")

    def stop(self, keep_spire_dir=False):
        for svc in reversed(self.services):
            svc.stop()
        self.services = []
        if self.spire_started:
            subprocess.run([ROOT / "spire/start.sh", "--stop", self.spire], check=False)
            self.spire_started = False
        if not keep_spire_dir:
            shutil.rmtree(self.spire, ignore_errors=True)


def svid_uri(pem):
    """The spiffe:// URI SAN of a certificate file (openssl x509)."""
    out = subprocess.run(["openssl", "x509", "-in", pem, "-noout", "-ext", "subjectAltName"],
                         capture_output=True, text=True, check=False).stdout
    m = re.search(r"URI:(spiffe://\S+?)(,|\s|$)", out)
    return m.group(1) if m else None


def start_nginx(env, d, template, cpus, **values):
    """nginx with its own prefix and config in d; returns when it listens
    and its worker exists (so pids() is complete)."""
    for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (d / "temp" / sub).mkdir(parents=True, exist_ok=True)
    # As root, nginx would switch its worker to "nobody"; stay the same user.
    user = "user root;" if os.geteuid() == 0 else ""
    render("nginx-common.conf.tmpl", d / "common.conf", DIR=d, USER=user)
    render(template, d / "nginx.conf", DIR=d, CERTS=env.certs, **values)
    svc = Service(d.name, [env.a.nginx, "-p", d, "-c", d / "nginx.conf", "-e", d / "error.log"],
                  cpus, d / "stdout.log")
    wait_port(values["PORT"], proc=svc.proc)
    deadline = time.monotonic() + 10
    while len(svc.pids()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    return svc


class Arm:
    """One arm in one round: started fresh, measured, stopped."""

    def __init__(self, env, name, rnd):
        self.env, self.name, self.round = env, name, rnd
        self.services = []
        self.audit = None
        self.admin_port = None
        self._offset, self._counts = 0, {}
        self.dir = env.run / f"r{rnd}-{name}"
        self.dir.mkdir(parents=True, exist_ok=True)

    def start(self):
        if self.name == "direct":
            self.port = self.env.upstream_port
            return
        self.port = free_port()
        {"gateway": lambda: self.start_gateway(self.env.a.gateway),
         "baseline": lambda: self.start_gateway(self.env.a.baseline),
         "nginx": self.start_nginx_proxy,
         "ghostunnel": self.start_ghostunnel}[self.name]()

    def start_gateway(self, binary):
        env, a = self.env, self.env.a
        self.admin_port = free_port()
        self.audit = self.dir / "audit.jsonl"
        policies = self.dir / "policies"
        shutil.copytree(ROOT / "policies", policies)
        cfg = self.dir / "gateway.yaml"
        render("gateway.yaml.tmpl", cfg, PORT=self.port, ADMIN_PORT=self.admin_port,
               AGENT_SOCK=env.spire / "agent.sock", POLICY_DIR=policies,
               UPSTREAM_PORT=env.upstream_port, AUDIT=self.audit)
        svc = Service("gateway", [binary, "serve", "--config", cfg], a.proxy_cpu,
                      self.dir / "gateway.log")
        self.services.append(svc)
        deadline = time.monotonic() + 60
        # Ready = holds an SVID. No TCP probe of the listener: the gateway
        # counts a connection closed before its handshake as a failed handshake.
        while not self.ready():
            if not svc.alive():
                raise RuntimeError(f"gateway exited, see {self.dir / 'gateway.log'}")
            if time.monotonic() > deadline:
                raise RuntimeError("gateway not ready within 60 s")
            time.sleep(0.1)

    def ready(self):
        try:
            url = f"http://127.0.0.1:{self.admin_port}/readyz"
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def start_nginx_proxy(self):
        self.services.append(start_nginx(self.env, self.dir / "nginx", "proxy.nginx.conf.tmpl",
                                         self.env.a.proxy_cpu, PORT=self.port,
                                         UPSTREAM_PORT=self.env.upstream_port))

    def start_ghostunnel(self):
        env, a, c = self.env, self.env.a, self.env.certs
        mid = free_port()
        quiet = ["--quiet=conns", "--quiet=conn-errs", "--quiet=handshake-errs"]
        ident = ["--cert", c / "gateway.pem", "--key", c / "gateway.key", "--cacert", c / "bundle.pem"]
        client = Service("ghostunnel-client", [
            a.ghostunnel, "client", "--listen", f"127.0.0.1:{mid}",
            "--target", f"127.0.0.1:{env.upstream_port}", "--override-server-name", "localhost",
            "--verify-uri", TRUST + "mcp-server", *ident, *quiet,
        ], a.proxy_cpu, self.dir / "ghostunnel-client.log")
        self.services.append(client)
        wait_port(mid, proc=client.proc)
        server = Service("ghostunnel-server", [
            a.ghostunnel, "server", "--listen", f"127.0.0.1:{self.port}",
            "--target", f"127.0.0.1:{mid}", "--allow-uri", TRUST + "agent", *ident, *quiet,
        ], a.proxy_cpu, self.dir / "ghostunnel-server.log")
        self.services.append(server)
        wait_port(self.port, proc=server.proc)

    def pids(self):
        """The measured processes: the proxy's, or for direct the upstream's."""
        if self.name == "direct":
            return self.env.upstream.pids()
        return [pid for svc in self.services for pid in svc.pids()]

    def check_alive(self):
        for svc in self.services:
            if not svc.alive():
                raise RuntimeError(f"{svc.name} died (rc {svc.proc.returncode}); see {self.dir}")

    def stop(self):
        for svc in reversed(self.services):
            svc.stop()
        self.services = []

    def audit_counts(self):
        """Records in the gateway's audit file by decision; reads only what
        was appended since the last call (the file grows large in a full run)."""
        if self.audit is None or not self.audit.exists():
            return dict(self._counts)
        with open(self.audit, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        end = data.rfind(b"\n") + 1  # a partly written last line waits for the next call
        self._offset += end
        for line in data[:end].splitlines():
            # The audit chain's own lines (genesis, checkpoints; docs/audit.md)
            # decide nothing: counted apart, never as unparsed.
            if re.search(rb'"chain":"([a-z]+)"', line):
                self._counts["chain"] = self._counts.get("chain", 0) + 1
                continue
            m = re.search(rb'"decision":"([a-z_]+)"', line)
            key = m.group(1).decode() if m else "unparsed"
            self._counts[key] = self._counts.get(key, 0) + 1
        return dict(self._counts)

    def wait_audit(self, expected_allow, timeout=15):
        """Waits until the audit file holds expected_allow allow records (the
        writer batches); returns the counts then, or at the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            counts = self.audit_counts()
            if counts.get("allow", 0) >= expected_allow or time.monotonic() > deadline:
                return counts
            time.sleep(0.05)
