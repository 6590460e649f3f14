"""The container image, checked without a container engine: the tarball that
image/build.sh writes (what `docker load` takes) is opened, its config and
filesystem are checked for what the Helm chart's hardened pod relies on, and
the gateway inside it is run the way a container runtime would run it (its
own root filesystem, read-only, as uid 65532, in its own mount namespace),
on real SPIRE, serving a real MCP SDK agent: the seed test, through the image.

$GATEWAY_IMAGE names the tarball (scripts/test builds the release image);
without it the image is built here from the binary under test.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from conftest import AGENT_ID, GATEWAY_ID, SERVER_ID
from gateway_fixtures import REPO_ROOT, gateway_bin, start_gateway
from policy_texts import demo_policies_with
from mcp_fixtures import run_py_agent
from helpers import DELETE, ECHO, assert_denied, call, tool_calls

NONROOT = 65532
ENTRYPOINT = "/usr/local/bin/spiffe-mcp-gateway"


@pytest.fixture(scope="module")
def image_tar(tmp_path_factory) -> Path:
    given = os.environ.get("GATEWAY_IMAGE")
    if given:
        return Path(given)
    out = tmp_path_factory.mktemp("image") / "spiffe-mcp-gateway.tar"
    subprocess.run(
        [str(REPO_ROOT / "image" / "build.sh"), "--binary", str(gateway_bin()), "--out", str(out)],
        check=True, stdout=subprocess.DEVNULL, timeout=600,
    )  # fmt: skip
    return out


@pytest.fixture(scope="module")
def image(image_tar):
    """(manifest entry, image config, layer members) of the one image in the tarball."""
    with tarfile.open(image_tar) as t:
        manifest = json.load(t.extractfile("manifest.json"))
        assert len(manifest) == 1, manifest
        entry = manifest[0]
        config = json.load(t.extractfile(entry["Config"]))
        members = []
        for layer in entry["Layers"]:
            with tarfile.open(fileobj=t.extractfile(layer), mode="r:*") as lt:
                members += lt.getmembers()
    return entry, config, members


def test_image_config_runs_the_gateway_as_nonroot(image):
    """The chart's `runAsNonRoot` can only verify a numeric user; the
    entrypoint is the gateway; only the MCP and admin ports are declared."""
    entry, config, _ = image
    cfg = config["config"]
    assert entry["RepoTags"] == ["spiffe-mcp-gateway:0.1.0"]
    assert config["os"] == "linux" and config["architecture"] == "amd64"
    assert cfg["User"] == f"{NONROOT}:{NONROOT}"
    assert cfg["Entrypoint"] == [ENTRYPOINT]
    assert set(cfg["ExposedPorts"]) == {"8443/tcp", "9090/tcp"}
    assert not cfg.get("Env"), "the image sets no environment (the chart sets SPIFFE_ENDPOINT_SOCKET)"


def test_image_holds_the_gateway_and_its_libraries_only(image):
    """No shell, no package manager, nothing writable or setuid: the files are
    the binary, the shared objects it links, their Debian copyright files,
    and the passwd/group entries for nonroot."""
    _, _, members = image
    by_name = {m.name.removeprefix("./"): m for m in members}
    files = {n for n, m in by_name.items() if m.isfile()}
    for name in files - {"etc/passwd", "etc/group", "etc/nsswitch.conf", ENTRYPOINT[1:]}:
        assert name.startswith("usr/lib/x86_64-linux-gnu/") and ".so" in name or (
            name.startswith("usr/share/doc/") and name.endswith("/copyright")
        ), f"unexpected file in the image: {name}"
    assert {"usr/lib/x86_64-linux-gnu/libc.so.6", "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"} <= files
    for shell in ["bin/sh", "bin/bash", "usr/bin/sh", "bin/busybox", "usr/bin/apt", "usr/bin/dpkg"]:
        assert shell not in by_name, shell
    binary = by_name[ENTRYPOINT[1:]]
    assert binary.mode & 0o111 and binary.uid == 0
    for name, m in by_name.items():
        assert not m.mode & (stat.S_ISUID | stat.S_ISGID), f"{name} is setuid/setgid"
        assert m.uid == (NONROOT if name == "home/nonroot" else 0), f"{name} owned by {m.uid}"
        if m.mode & 0o002 and not m.issym():
            assert name == "tmp" and m.mode & stat.S_ISVTX, f"{name} is world-writable"
    passwd = by_name["etc/passwd"]
    assert passwd.size > 0


@pytest.fixture(scope="module")
def rootfs(image_tar, image, tmp_path_factory) -> Path:
    """The image's filesystem, unpacked as a container runtime would (owners kept)."""
    entry, _, _ = image
    root = tmp_path_factory.mktemp("image-rootfs")
    with tarfile.open(image_tar) as t:
        for layer in entry["Layers"]:
            with tarfile.open(fileobj=t.extractfile(layer), mode="r:*") as lt:
                lt.extractall(root, numeric_owner=True, filter="fully_trusted")
    root.chmod(0o755)
    return root


def contained(rootfs: Path, run_dir: Path, socket: Path) -> list[str]:
    """The command that runs the image's entrypoint like a container: a
    private mount namespace, the image's filesystem bind-mounted read-only as
    the root, the run directory (config, policies, audit) and the Workload
    API socket mounted in at the same paths, /etc/hosts and /etc/resolv.conf
    from the host (as a runtime mounts them), uid/gid 65532. The process execs
    through, so signals reach the gateway."""
    script = r"""
root=$1 run=$2 sock=$3; shift 3
mkdir -p "$root$run" "$root$(dirname "$sock")"
touch "$root$sock" "$root/etc/hosts" "$root/etc/resolv.conf"
mount --bind "$root" "$root"
mount -o remount,bind,ro "$root"
mount --bind "$run" "$root$run"
mount --bind "$sock" "$root$sock"
for f in /etc/hosts /etc/resolv.conf; do
  [ -e "$f" ] && mount --bind "$f" "$root$f"
done
exec chroot --userspec=65532:65532 "$root" "$@"
"""
    return ["unshare", "--mount", "--", "sh", "-ec", script, "sh", str(rootfs), str(run_dir), str(socket), ENTRYPOINT]


def test_image_serves_the_seed_test_on_real_spire(spire, upstream, svids, rootfs, tmp_path_factory):
    """The gateway from the image, as uid 65532 on a read-only root, gets its
    SVID from real SPIRE (an entry for `unix:uid:65532`, as a pod's own uid
    would be attested) and, in one session of the real Python SDK agent,
    forwards echo and refuses delete_repository with the audit record naming
    the forbid policy."""
    spire.register(GATEWAY_ID, "gateway", dns="localhost", selector=f"unix:uid:{NONROOT}")
    run_dir = tmp_path_factory.mktemp("image-gateway")
    policies = demo_policies_with(run_dir / "policies")
    for path in [run_dir, *run_dir.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    os.chown(run_dir, NONROOT, NONROOT)
    gw = start_gateway(
        run_dir,
        spire.endpoint,
        upstream.url,
        SERVER_ID,
        hint="gateway",
        policy_dir=policies,
        command=contained(rootfs, run_dir, spire.socket_path),
    )
    try:
        gw.wait_ready()
        status = Path(f"/proc/{gw.proc.pid}/status").read_text()
        uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
        assert uids == [str(NONROOT)] * 4, status
        assert os.readlink(f"/proc/{gw.proc.pid}/root") == str(rootfs)

        s = svids["agent"]
        before = len(tool_calls(upstream, "delete_repository"))
        run = run_py_agent(gw.url, s.cert, s.key, s.bundle, calls=[ECHO, DELETE])
        assert run.negotiated, run.stdout + run.stderr
        assert call(run, ECHO)["ok"] is True
        deny = assert_denied(call(run, DELETE), gw)
        assert deny["caller"] == AGENT_ID and deny["policy_ids"] == ["nobody-deletes-repos"]
        assert len(tool_calls(upstream, "delete_repository")) == before
    finally:
        gw.stop()
    assert gw.proc.returncode == 0, gw.log()
