"""A full state disk (issue 17's faults): writes are refused with a clear Status and
nothing is half-made, reads still answer, the store stays intact, and writes work again
as soon as there is space, with nobody restarting anything.

The lab's state directory is a small tmpfs of its own, filled with a file until the
kernel says ENOSPC; SQLite then answers SQLITE_FULL to the write that would grow its
write-ahead log."""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.support.kubectl import Kubectl
from tests.support.server import LabServer

pytestmark = pytest.mark.api

KUBECTL = Path("/usr/bin/kubectl")
SIZE = "48m"
BIG = "x" * (512 * 1024)  # a ConfigMap that needs pages the full disk cannot give


@pytest.fixture
def small_lab(tmp_path: Path) -> Iterator[LabServer]:
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE},mode=0711", "pacific-full",
                    str(mount)], check=True, timeout=30)
    lab = LabServer(mount / "state")
    try:
        lab.start()
        yield lab
    finally:
        lab.stop()
        subprocess.run(["umount", "-l", str(mount)], check=False, timeout=30)


def _fill(path: Path) -> None:
    """Write zeros to ``path`` until the file system has no block left."""
    chunk = b"\0" * (1 << 20)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        while True:
            try:
                os.write(fd, chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                chunk = chunk[: len(chunk) // 2]
                if len(chunk) < 512:
                    return
    finally:
        os.close(fd)


def _cm(name: str, value: str) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name},
            "data": {"v": value}}


def test_a_full_disk_refuses_writes_clearly_and_recovers_when_space_returns(
        small_lab: LabServer, tmp_path: Path) -> None:
    lab = small_lab
    s = requests.Session()
    s.trust_env = False
    s.verify = lab.ca_file
    s.headers["Authorization"] = f"Bearer {lab.admin_token()}"
    assert s.post(lab.url + "/api/v1/namespaces", timeout=30, json={
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "full"}}).status_code == 201
    url = lab.url + "/api/v1/namespaces/full/configmaps"
    assert s.post(url, json=_cm("before", "small"), timeout=30).status_code == 201
    before = s.get(url, timeout=30).json()["items"]

    filler = lab.state_dir.parent / "filler"
    _fill(filler)
    r = s.post(url, json=_cm("too-big", BIG), timeout=60)
    assert r.status_code == 507, r.text
    status = r.json()
    assert status["reason"] == "InsufficientStorage"
    assert "state disk is full" in status["message"] and "nothing was written" in \
        status["message"]
    # kubectl prints the same message, and exits 1.
    kc = Kubectl(KUBECTL, lab.admin_kubeconfig, tmp_path / "cache")
    manifest = tmp_path / "big.yaml"
    manifest.write_text(f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: by-kubectl}}\n"
                        f"data: {{v: {BIG}}}\n")
    proc = kc.run("create", "-n", "full", "-f", str(manifest), check=False)
    assert proc.returncode == 1 and "state disk is full" in proc.stderr, proc.stderr
    # Reads still answer, and nothing of the refused writes is there.
    after = s.get(url, timeout=30).json()["items"]
    assert [i["metadata"]["name"] for i in after] == [i["metadata"]["name"] for i in before]
    assert s.get(url + "/too-big", timeout=30).status_code == 404

    filler.unlink()
    r = s.post(url, json=_cm("too-big", BIG), timeout=60)
    assert r.status_code == 201, r.text
    created = r.json()["metadata"]["resourceVersion"]
    assert int(created) > int(after[0]["metadata"]["resourceVersion"])
    assert s.get(url + "/too-big", timeout=30).json()["data"]["v"] == BIG
    with contextlib.closing(sqlite3.connect(f"file:{lab.state_dir / 'supervisor.db'}?mode=ro",
                                            uri=True)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
