"""A real local SPIRE (server + agent) for end-to-end tests.

Wraps spire/start.sh and spire/register.sh. Typical pytest use::

    @pytest.fixture(scope="session")
    def spire(tmp_path_factory):
        with Spire.start(tmp_path_factory.mktemp("spire")) as s:
            yield s

    def test_x(spire, tmp_path):
        spire.register("spiffe://example.org/ns/demo/sa/agent", "agent", ttl=60)
        svid = spire.fetch_svid("spiffe://example.org/ns/demo/sa/agent", tmp_path)
        # svid.cert (leaf + intermediates), svid.key, svid.bundle

Every workload of the test runs as the current Unix user, so entries share the
selector ``unix:uid:<uid>`` and a process gets all of them from the Workload
API at ``spire.socket_path``; ``hint`` tells them apart.

The trust bundle served to workloads is the test root CA that start.sh
generated (``upstream_ca()``); SPIRE's signing CA is an intermediate under it
and is sent in each SVID chain. ``mint_leaf`` signs certificates with that
root (they chain to the real bundle) or with a foreign CA (they do not), for
tests proving the gateway refuses them.

Environment: SPIRE_BIN_DIR (use prebuilt binaries instead of spire/build.sh),
SPIRE_START_TIMEOUT, SPIRE_LOG_LEVEL (passed to start.sh).
"""

from __future__ import annotations

import atexit
import datetime as dt
import json
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

import certs
from polling import wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]
SPIRE_DIR = REPO_ROOT / "spire"
TRUST_DOMAIN = "example.org"


class SpireError(RuntimeError):
    """SPIRE did not start, or a SPIRE command failed."""


@dataclass(frozen=True)
class SvidFiles:
    cert: Path  # PEM: the SVID leaf first, then SPIRE's intermediate CA(s)
    key: Path  # PEM: PKCS#8 private key of the leaf
    bundle: Path  # PEM: the X.509 trust bundle of example.org

    def leaf(self) -> x509.Certificate:
        return x509.load_pem_x509_certificates(self.cert.read_bytes())[0]


def uri_sans(cert: x509.Certificate) -> list[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return ext.value.get_values_for_type(x509.UniformResourceIdentifier)


def spire_bin_dir() -> Path:
    """Directory with spire-server and spire-agent; builds them if needed."""
    if os.environ.get("SPIRE_BIN_DIR"):
        return Path(os.environ["SPIRE_BIN_DIR"])
    proc = subprocess.run(
        [str(SPIRE_DIR / "build.sh")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        timeout=3600,
    )
    if proc.returncode != 0:
        raise SpireError(f"spire/build.sh failed:\n{proc.stderr[-4000:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


def _read_env(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep:
            env[key] = value.strip("'")
    return env


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return f"({path} does not exist)"


class Spire:
    """A running SPIRE server + agent under one run directory."""

    def __init__(self, run_dir: Path, env: dict[str, str]):
        self.run_dir = run_dir
        self.bin_dir = Path(env["SPIRE_BIN_DIR"])
        self.trust_domain = env["SPIRE_TRUST_DOMAIN"]
        self.server_address = env["SPIRE_SERVER_ADDRESS"]
        self.server_socket = Path(env["SPIRE_SERVER_SOCKET"])
        self.socket_path = Path(env["SPIRE_AGENT_SOCKET"])
        self.agent_id = env["SPIRE_AGENT_ID"]
        self.server_pid = int(env["SPIRE_SERVER_PID"])
        self.agent_pid = int(env["SPIRE_AGENT_PID"])
        self._stopped = False

    # ---- lifecycle -------------------------------------------------------

    @classmethod
    def start(
        cls, run_dir: str | os.PathLike, *, timeout: float = 60, trust_domain: str = TRUST_DOMAIN
    ) -> "Spire":
        """Builds SPIRE if needed, runs spire/start.sh RUN_DIR, waits until healthy.

        trust_domain: another one (e.g. "partner.test") runs a second,
        independent SPIRE beside the first (own run dir, sockets and port)."""
        run_dir = Path(run_dir).resolve()
        run_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env["SPIRE_BIN_DIR"] = str(spire_bin_dir())
        env["SPIRE_TRUST_DOMAIN"] = trust_domain
        env.setdefault("SPIRE_START_TIMEOUT", str(int(timeout)))
        try:
            proc = subprocess.run(
                [str(SPIRE_DIR / "start.sh"), str(run_dir)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
                timeout=2 * timeout + 30,
            )
        except subprocess.TimeoutExpired as e:
            _stop_run_dir(run_dir)
            raise SpireError(f"spire/start.sh timed out:\n{e.stderr or ''}") from e
        if proc.returncode != 0:
            _stop_run_dir(run_dir)
            raise SpireError(
                f"spire/start.sh failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
            )
        spire = cls(run_dir, _read_env(run_dir / "spire.env"))
        atexit.register(spire.stop)
        return spire

    def stop(self) -> None:
        """Terminates agent and server (SIGTERM, then SIGKILL after 10s) and waits."""
        if self._stopped:
            return
        self._stopped = True
        _stop_run_dir(self.run_dir)
        try:
            atexit.unregister(self.stop)
        except Exception:
            pass

    def __enter__(self) -> "Spire":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- registration ----------------------------------------------------

    @property
    def endpoint(self) -> str:
        """Value for SPIFFE_ENDPOINT_SOCKET."""
        return f"unix://{self.socket_path}"

    def register(
        self,
        spiffe_id: str,
        hint: str,
        ttl: int | None = None,
        dns: str | list[str] | None = None,
        *,
        selector: str | None = None,
        entry_id: str | None = None,
        federates_with: list[str] | None = None,
        jwt_ttl: int | None = None,
    ) -> str:
        """Creates a workload entry under this agent; returns its entry ID.

        ttl: X509-SVID lifetime in seconds (default: the server's 1h).
        selector: default ``unix:uid:<current uid>``.
        federates_with: trust domains (``spiffe://partner.test``) whose
        bundles the workload also receives (``entry create -federatesWith``).
        jwt_ttl: JWT-SVID lifetime in seconds (``-jwtSVIDTTL``).
        """
        args = [
            "-parentID", self.agent_id,
            "-spiffeID", spiffe_id,
            "-selector", selector or f"unix:uid:{os.getuid()}",
            "-hint", hint,
        ]  # fmt: skip
        if ttl is not None:
            args += ["-x509SVIDTTL", str(int(ttl))]
        for name in [dns] if isinstance(dns, str) else dns or []:
            args += ["-dns", name]
        if entry_id:
            args += ["-entryID", entry_id]
        for td in federates_with or []:
            args += ["-federatesWith", td]
        if jwt_ttl is not None:
            args += ["-jwtSVIDTTL", str(int(jwt_ttl))]
        out = self.server("entry", "create", *args, "-output", "json")
        result = json.loads(out)["results"][0]
        if result.get("status", {}).get("code", 0) != 0:
            raise SpireError(f"entry create {spiffe_id}: {result['status']}")
        return result["entry"]["id"]

    def delete_entry(self, entry_id: str) -> None:
        self.server("entry", "delete", "-entryID", entry_id)

    def register_demo(self, **ttls: int) -> str:
        """Runs spire/register.sh (the four demo entries); ttls e.g. GATEWAY_SVID_TTL=60."""
        env = dict(os.environ)
        env.update({k: str(v) for k, v in ttls.items()})
        proc = subprocess.run(
            [str(SPIRE_DIR / "register.sh"), str(self.run_dir)],
            capture_output=True, text=True, env=env, timeout=60,
        )  # fmt: skip
        if proc.returncode != 0:
            raise SpireError(f"spire/register.sh failed:\n{proc.stdout}\n{proc.stderr}")
        return proc.stdout

    def server(self, *args: str, timeout: float = 30) -> str:
        """Runs ``spire-server <subcommand...> -socketPath <server socket> <flags...>``.

        The first arguments not starting with '-' are the subcommand."""
        args = list(args)
        n = next((i for i, a in enumerate(args) if a.startswith("-")), len(args))
        cmd = [str(self.bin_dir / "spire-server"), *args[:n], "-socketPath", str(self.server_socket), *args[n:]]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise SpireError(f"{' '.join(args[:n])} failed: {proc.stdout}{proc.stderr}")
        return proc.stdout

    # ---- federation ------------------------------------------------------

    def bundle_spiffe(self) -> str:
        """This trust domain's bundle in SPIFFE format (a JWKS with the X.509
        roots and the JWT signing keys), as a federated peer receives it."""
        return self.server("bundle", "show", "-format", "spiffe")

    def federate_with(self, other: "Spire") -> None:
        """Stores other's bundle as a federated bundle on this server
        (``spire-server bundle set -format spiffe -id spiffe://<other td>``):
        the static form of a federation relationship. Entries created with
        ``federates_with=["spiffe://<other td>"]`` then carry it to workloads."""
        path = self.run_dir / f"federated-{other.trust_domain}.json"
        path.write_text(other.bundle_spiffe(), encoding="utf-8")
        self.server("bundle", "set", "-id", f"spiffe://{other.trust_domain}", "-path", str(path), "-format", "spiffe")

    # ---- SVIDs -----------------------------------------------------------

    def fetch_svid(
        self,
        spiffe_id: str,
        out_dir: str | os.PathLike,
        *,
        timeout: float = 30,
        name: str | None = None,
    ) -> SvidFiles:
        """Waits until the Workload API serves an SVID for spiffe_id and writes it.

        Files: out_dir/<name>.pem (chain), <name>.key, <name>.bundle.pem, where
        name defaults to the last segment of the SPIFFE ID path. Files are
        replaced atomically, so calling again after a rotation is safe.
        """
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        name = name or spiffe_id.rstrip("/").rsplit("/", 1)[-1]
        last = [""]

        def fetched() -> SvidFiles | None:
            with tempfile.TemporaryDirectory(dir=out_dir, prefix=".fetch-") as tmp:
                proc = subprocess.run(
                    [
                        str(self.bin_dir / "spire-agent"), "api", "fetch", "x509",
                        "-socketPath", str(self.socket_path),
                        "-write", tmp, "-silent", "-timeout", "5s",
                    ],
                    capture_output=True, text=True, timeout=30,
                )  # fmt: skip
                if proc.returncode != 0:
                    last[0] = (proc.stdout + proc.stderr).strip()
                    return None
                found = self._pick(Path(tmp), spiffe_id)
                if found is None:
                    last[0] = f"Workload API answered without {spiffe_id}"
                    return None
                files = SvidFiles(out_dir / f"{name}.pem", out_dir / f"{name}.key", out_dir / f"{name}.bundle.pem")
                for src, dst in zip(found, (files.cert, files.key, files.bundle)):
                    os.replace(src, dst)
                return files

        return wait_for(
            f"an SVID for {spiffe_id}", fetched, timeout, every=0.2, error=SpireError,
            detail=lambda: f"last: {last[0]}\nagent log tail:\n{self.agent_log_tail()}",
        )  # fmt: skip

    def fetch_jwt(self, spiffe_id: str, audience: str, *, timeout: float = 30) -> str:
        """A JWT-SVID for spiffe_id with this audience, from the Workload API
        (``spire-agent api fetch jwt``, which prints ``token(<id>):`` and the
        token on the next line for each identity of the caller)."""
        last = [""]

        def fetched() -> str | None:
            proc = subprocess.run(
                [
                    str(self.bin_dir / "spire-agent"), "api", "fetch", "jwt",
                    "-socketPath", str(self.socket_path), "-audience", audience, "-timeout", "5s",
                ],
                capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            lines = proc.stdout.splitlines()
            for i, line in enumerate(lines[:-1]):
                if line.strip() == f"token({spiffe_id}):":
                    return lines[i + 1].strip()
            last[0] = (proc.stdout + proc.stderr).strip()[-400:]
            return None

        return wait_for(
            f"a JWT-SVID for {spiffe_id}", fetched, timeout, every=0.2, error=SpireError,
            detail=lambda: f"last: {last[0]}",
        )  # fmt: skip

    @staticmethod
    def _pick(tmp: Path, spiffe_id: str) -> tuple[Path, Path, Path] | None:
        i = 0
        while (tmp / f"svid.{i}.pem").exists():
            leaf = x509.load_pem_x509_certificates((tmp / f"svid.{i}.pem").read_bytes())[0]
            if uri_sans(leaf) == [spiffe_id]:
                return tmp / f"svid.{i}.pem", tmp / f"svid.{i}.key", tmp / f"bundle.{i}.pem"
            i += 1
        return None

    # ---- test CAs and forged certificates --------------------------------

    def upstream_ca(self) -> tuple[Path, Path]:
        """(cert PEM, key PEM) of the root CA in the trust bundle workloads receive."""
        return self.run_dir / "upstream-ca.pem", self.run_dir / "upstream-ca.key"

    def foreign_ca(self) -> tuple[Path, Path]:
        """(cert PEM, key PEM) of a self-made CA that is in no SPIRE bundle."""
        cert, key = self.run_dir / "foreign-ca.pem", self.run_dir / "foreign-ca.key"
        if not cert.exists():
            certs.write(cert, key, *certs.new_ca("foreign test root", valid_for=dt.timedelta(days=30)))
        return cert, key

    def mint_leaf(
        self,
        out_dir: str | os.PathLike,
        uri_sans: list[str],
        is_ca: bool = False,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        key_usage_digital_signature: bool = True,
        signer: str = "upstream",
        *,
        dns_sans: list[str] | None = None,
        name: str = "leaf",
    ) -> tuple[Path, Path]:
        """Mints out_dir/<name>.pem + <name>.key signed by the bundle's root
        (signer="upstream") or by a CA outside every bundle (signer="foreign").
        The other arguments are `certs.new_leaf`'s (key_usage_digital_signature
        is its digital_signature); returns (cert path, key path)."""
        if signer == "upstream":
            ca_cert, ca_key = self.upstream_ca()
        elif signer == "foreign":
            ca_cert, ca_key = self.foreign_ca()
        else:
            raise ValueError(f"signer must be 'upstream' or 'foreign', not {signer!r}")
        cert, key = certs.new_leaf(
            *certs.load(ca_cert, ca_key), uri_sans,
            is_ca=is_ca, not_before=not_before, not_after=not_after,
            digital_signature=key_usage_digital_signature,
            dns_sans=dns_sans or (), name=f"minted {name}",
        )  # fmt: skip
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        return certs.write(out_dir / f"{name}.pem", out_dir / f"{name}.key", cert, key)

    # ---- diagnostics -----------------------------------------------------

    @property
    def server_log(self) -> Path:
        return self.run_dir / "logs" / "server.log"

    @property
    def agent_log(self) -> Path:
        return self.run_dir / "logs" / "agent.log"

    def server_log_tail(self, lines: int = 60) -> str:
        return _tail(self.server_log, lines)

    def agent_log_tail(self, lines: int = 60) -> str:
        return _tail(self.agent_log, lines)

    def diagnostics(self, lines: int = 40) -> str:
        return (
            f"--- spire-server log ({self.server_log}) ---\n{self.server_log_tail(lines)}\n"
            f"--- spire-agent log ({self.agent_log}) ---\n{self.agent_log_tail(lines)}"
        )


def _stop_run_dir(run_dir: Path) -> None:
    subprocess.run(
        [str(SPIRE_DIR / "start.sh"), "--stop", str(run_dir)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=60,
    )
