"""End-to-end fixtures: one real host service with the VM Service, on real libvirt."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server import LabServer


@pytest.fixture(scope="session")
def vmlab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabServer]:
    """A host service whose library holds the debian-12 image.

    The image is built once into the cache directory (LAB_CACHE_DIR, by default
    /var/cache/pacific-lab) and reused by later runs."""
    cache = os.environ.get("LAB_CACHE_DIR", "/var/cache/pacific-lab")
    probe = subprocess.run(["virsh", "-c", "qemu:///system", "version"], capture_output=True,
                           text=True, timeout=60)
    if probe.returncode != 0:
        raise AssertionError("libvirtd does not answer (run the suite with ./lab test, which "
                             f"prepares the host first): {probe.stderr.strip()}")
    # QEMU runs as libvirt-qemu: every directory above the disks must be
    # traversable, which pytest's private tmp directories are not.
    base = Path(tempfile.mkdtemp(prefix="pacific-e2e-", dir="/var/tmp"))
    base.chmod(0o711)
    server = LabServer(base / "state", extra_env={"LAB_CACHE_DIR": cache})
    server.start()
    proc = server.lab("image", "build", "debian-12", check=False)
    if proc.returncode != 0:
        server.stop()
        raise AssertionError(f"lab image build failed: {proc.stderr}")
    try:
        yield server
    finally:
        server.stop()
        print(server.log_tail(80))
        left = server.remove_leftovers()
        shutil.rmtree(base, ignore_errors=True)
        if left:
            print(f"removed domains left behind: {left}")


def kubeconfig_for(server: LabServer, tmp: Path, namespace: str) -> Path:
    return server.kubeconfig(tmp / f"{namespace}.kubeconfig", server.admin_token(), namespace)
