"""Self-test of the local SPIRE harness (spire/start.sh, spire/register.sh, spire_env.py)."""

from __future__ import annotations

import subprocess
import time

import pytest
from cryptography import x509

from spire_env import Spire, spire_bin_dir, uri_sans

AGENT_ID = "spiffe://example.org/ns/demo/sa/agent"
GATEWAY_ID = "spiffe://example.org/ns/demo/sa/gateway"


def openssl_verify(bundle, cert, untrusted=None) -> subprocess.CompletedProcess:
    cmd = ["openssl", "verify", "-CAfile", str(bundle)]
    if untrusted is not None:
        cmd += ["-untrusted", str(untrusted)]
    return subprocess.run([*cmd, str(cert)], capture_output=True, text=True)


def split_chain(chain_pem, tmp_path):
    """Writes the leaf and the intermediates of a chain PEM to separate files."""
    certs = x509.load_pem_x509_certificates(chain_pem.read_bytes())
    from cryptography.hazmat.primitives.serialization import Encoding

    leaf = tmp_path / "leaf-only.pem"
    leaf.write_bytes(certs[0].public_bytes(Encoding.PEM))
    inter = tmp_path / "intermediates.pem"
    inter.write_bytes(b"".join(c.public_bytes(Encoding.PEM) for c in certs[1:]))
    return leaf, inter, len(certs) - 1


def test_spire_env(tmp_path_factory):
    spire_bin_dir()  # build outside the timing below
    run_dir = tmp_path_factory.mktemp("spire")
    out = tmp_path_factory.mktemp("svids")

    t0 = time.monotonic()
    spire = Spire.start(run_dir)
    try:
        t_started = time.monotonic()
        spire.register_demo(AGENT_SVID_TTL=300)
        t_registered = time.monotonic()
        svid = spire.fetch_svid(AGENT_ID, out)
        t_svid = time.monotonic()
        print(
            f"\nSPIRE start {t_started - t0:.2f}s, register {t_registered - t_started:.2f}s, "
            f"first SVID {t_svid - t_registered:.2f}s, total {t_svid - t0:.2f}s"
        )

        assert spire.socket_path == run_dir / "agent.sock"
        leaf = svid.leaf()
        assert uri_sans(leaf) == [AGENT_ID]
        lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
        assert 300 <= lifetime.total_seconds() <= 330, lifetime  # SPIRE backdates NotBefore by 10s

        # The SVID chains to the bundle: leaf + SPIRE's intermediate -> test root.
        leaf_pem, inter_pem, n_inter = split_chain(svid.cert, out)
        assert n_inter >= 1, "expected SPIRE's intermediate CA in the SVID chain"
        r = openssl_verify(svid.bundle, leaf_pem, untrusted=inter_pem)
        assert r.returncode == 0, r.stdout + r.stderr
        # ...and the bundle is the test root start.sh generated.
        root_pem, _ = spire.upstream_ca()
        bundle = x509.load_pem_x509_certificates(svid.bundle.read_bytes())
        assert x509.load_pem_x509_certificate(root_pem.read_bytes()) in bundle

        # Several SVIDs for one uid, told apart by URI SAN (hint in the API).
        gw = spire.fetch_svid(GATEWAY_ID, out)
        gw_leaf = gw.leaf()
        assert uri_sans(gw_leaf) == [GATEWAY_ID]
        dns = gw_leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert dns.get_values_for_type(x509.DNSName) == ["localhost"]

        # A forged leaf with two URI SANs chains to the real bundle: only the
        # "exactly one URI SAN" rule can reject it.
        forged, _ = spire.mint_leaf(out, [AGENT_ID, GATEWAY_ID], name="two-sans")
        r = openssl_verify(svid.bundle, forged)
        assert r.returncode == 0, r.stdout + r.stderr
        # A leaf from a foreign CA does not chain.
        foreign, _ = spire.mint_leaf(out, [AGENT_ID], signer="foreign", name="foreign")
        assert openssl_verify(svid.bundle, foreign).returncode != 0

        # Register and delete through the Python API.
        eid = spire.register("spiffe://example.org/ns/test/sa/tmp", "tmp", ttl=120)
        tmp_svid = spire.fetch_svid("spiffe://example.org/ns/test/sa/tmp", out)
        assert uri_sans(tmp_svid.leaf()) == ["spiffe://example.org/ns/test/sa/tmp"]
        spire.delete_entry(eid)
    except Exception:
        print(spire.diagnostics())
        raise
    finally:
        spire.stop()

    for pid in (spire.server_pid, spire.agent_pid):
        state = _proc_state(pid)
        assert state in (None, "Z"), f"process {pid} still running after stop()"


def _proc_state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return None


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__, "-s"]))
