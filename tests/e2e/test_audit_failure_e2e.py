"""The audit log under a full disk and log rotation, on real SPIRE.

The audit file lives on a small tmpfs that the test fills:
- `on_failure: refuse` (the default): calls are refused with -32068 and
  `/readyz` is 503 while records cannot be written; when space is freed the
  gateway serves again by itself, and the records kept meanwhile (the
  refusals included) are in the file, with no torn line.
- `on_failure: continue`: calls are served throughout; the failure shows in
  `mcp_gateway_audit_failing`, and the kept records are written afterwards.

Rotation: after the file is renamed or deleted (logrotate without
copytruncate), and after rename + SIGHUP, new records go to a new file at
the configured path.

Mounting a tmpfs needs root; the tmpfs tests are skipped otherwise."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import uuid
from pathlib import Path

import pytest

from conftest import SERVER_ID
from gateway_fixtures import start_gateway
from polling import wait_for
from raw_http import PROBE, PROBE_HEADERS, assert_serving, post

CODE_AUDIT_UNAVAILABLE = -32068


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str = "256k"):
    """A tmpfs of `size` mounted at `path` for the duration of the block."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path) -> Path:
    """Writes a file until the file system is full; returns it."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f:
        chunk = b"x" * 4096
        while True:
            try:
                f.write(chunk)
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
                break
    return filler


def call(gw, svid):
    """One allowed 2026-07-28 request, with a unique id."""
    marker = f"call-{uuid.uuid4().hex}"
    body = PROBE.replace(b'"id":1', f'"id":"{marker}"'.encode())
    return marker, post(gw.port, svid, body, PROBE_HEADERS)


def assert_whole_lines(path: Path) -> list[dict]:
    """Every line of the file is one JSON object, the last one included;
    returns the records (not the hash chain's genesis and checkpoints)."""
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n"), f"torn last line: {text[-200:]!r}"
    return [r for r in (json.loads(line) for line in text.splitlines()) if "chain" not in r]


def test_full_disk_refuses_calls_until_audit_writes_succeed_again(spire, upstream, svids, tmp_path):
    svid = svids["agent"]
    with small_tmpfs(tmp_path / "gw") as run_dir:
        gw = start_gateway(run_dir, spire.endpoint, upstream.url, SERVER_ID, hint="gateway")
        try:
            gw.wait_ready()
            assert_serving(gw.port, svid, gw)
            filler = fill(run_dir)

            # The first records may still fit in the file's last page; then a
            # write fails and calls are refused.
            refused = None
            for _ in range(200):
                _, resp = call(gw, svid)
                if resp.status != 200:
                    refused = resp
                    break
            assert refused is not None, "calls were still served with the audit disk full"
            assert refused.status == 503, refused
            err = refused.json()["error"]
            assert err["code"] == CODE_AUDIT_UNAVAILABLE, refused
            refusals = [err["data"]["correlation_id"]]
            assert gw.get("/readyz")[0] == 503
            assert gw.metric("mcp_gateway_audit_failing") == 1

            # While failing, nothing reaches the upstream.
            seen = len(upstream.requests())
            for _ in range(3):
                _, resp = call(gw, svid)
                assert resp.status == 503, resp
                assert resp.json()["error"]["code"] == CODE_AUDIT_UNAVAILABLE, resp
                refusals.append(resp.json()["error"]["data"]["correlation_id"])
            assert upstream.requests()[seen:] == []

            # Space again: ready and serving without any call to help it.
            filler.unlink()
            wait_for("/readyz 200 after the disk has space", gw.is_ready)
            assert gw.metric("mcp_gateway_audit_failing") == 0
            assert_serving(gw.port, svid, gw)

            # The records kept meanwhile are written, refusals included, and
            # the file has no torn line.
            records = assert_whole_lines(gw.audit_path)
            written = {r["correlation_id"]: r for r in records}
            for cid in refusals:
                assert written[cid]["reason"] == "audit_unavailable", written[cid]
                assert written[cid]["decision"] == "deny"
            assert gw.metric("mcp_gateway_audit_records_lost_total") == 0
        finally:
            gw.stop()


def test_continue_mode_serves_while_the_disk_is_full_and_writes_the_kept_records(
    spire, upstream, svids, tmp_path
):
    svid = svids["agent"]
    with small_tmpfs(tmp_path / "gw") as run_dir:
        gw = start_gateway(
            run_dir,
            spire.endpoint,
            upstream.url,
            SERVER_ID,
            hint="gateway",
            audit_extra=["  on_failure: continue"],
        )
        try:
            gw.wait_ready()
            assert_serving(gw.port, svid, gw)
            filler = fill(run_dir)
            markers = []
            for _ in range(200):
                marker, resp = call(gw, svid)
                assert resp.status == 200, resp
                markers.append(marker)
                if gw.metric("mcp_gateway_audit_failing") == 1:
                    break
            assert gw.metric("mcp_gateway_audit_failing") == 1, "the full disk was never noticed"
            # Still served, still ready.
            for _ in range(3):
                marker, resp = call(gw, svid)
                assert resp.status == 200 and "result" in resp.json(), resp
                markers.append(marker)
            assert gw.is_ready()

            filler.unlink()
            wait_for("audit writes to succeed again", lambda: gw.metric("mcp_gateway_audit_failing") == 0)
            records = assert_whole_lines(gw.audit_path)
            ids = {r.get("request_id") for r in records}
            assert set(markers) <= ids, "records kept during the failure were not written"
            assert gw.metric("mcp_gateway_audit_records_lost_total") == 0
            assert_serving(gw.port, svid, gw)
        finally:
            gw.stop()


def test_renamed_or_deleted_audit_file_is_replaced_and_sighup_reopens(spire, upstream, svids, tmp_path):
    svid = svids["agent"]
    gw = start_gateway(tmp_path / "gw", spire.endpoint, upstream.url, SERVER_ID, hint="gateway")
    try:
        gw.wait_ready()
        assert_serving(gw.port, svid, gw)
        path = gw.audit_path

        # logrotate's rename: the next record goes to a new file at the path.
        rotated = path.with_name("audit.jsonl.1")
        path.rename(rotated)
        assert_serving(gw.port, svid, gw)
        before = assert_whole_lines(rotated)
        assert before, "the renamed file lost its records"

        # Deleted: a new file again, not the deleted inode.
        path.unlink()
        assert_serving(gw.port, svid, gw)
        assert len(assert_whole_lines(path)) >= 1

        # Rename, then SIGHUP (logrotate's postrotate): reopened.
        path.rename(path.with_name("audit.jsonl.2"))
        gw.proc.send_signal(signal.SIGHUP)
        wait_for("the SIGHUP to be handled", lambda: "SIGHUP: reopening the audit file" in "".join(gw.log_lines))
        assert_serving(gw.port, svid, gw)
        assert_whole_lines(path)
        assert gw.metric("mcp_gateway_audit_records_lost_total") == 0
    finally:
        gw.stop()
