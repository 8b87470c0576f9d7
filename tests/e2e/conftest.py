"""End-to-end fixtures: real host services with the VM Service, on real libvirt (and Open
vSwitch for namespace networks)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server import LabServer, NetworkLab, network_lab


def _libvirt_answers() -> None:
    probe = subprocess.run(["virsh", "-c", "qemu:///system", "version"], capture_output=True,
                           text=True, timeout=60)
    if probe.returncode != 0:
        raise AssertionError("libvirtd does not answer (run the suite with ./lab test, which "
                             f"prepares the host first): {probe.stderr.strip()}")


@pytest.fixture(scope="session")
def vmlab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabServer]:
    """A host service whose library holds the debian-12 image, without namespace networks
    (the dashboard's browser test: a browser aborts a page load when the host's addresses
    change, as a namespace network's do when it is made).

    The image is built once into the cache directory (LAB_CACHE_DIR, by default
    /var/cache/pacific-lab) and reused by later runs."""
    _libvirt_answers()
    # QEMU runs as libvirt-qemu: every directory above the disks must be
    # traversable, which pytest's private tmp directories are not.
    base = Path(tempfile.mkdtemp(prefix="pacific-e2e-", dir="/var/tmp"))
    base.chmod(0o711)
    server = LabServer(base / "state", extra_env={
        "LAB_CACHE_DIR": os.environ.get("LAB_CACHE_DIR", "/var/cache/pacific-lab")})
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


@pytest.fixture(scope="session")
def vmnet() -> Iterator[NetworkLab]:
    """A host service with namespace networks (OVS, dnsmasq, HAProxy on a bridge of its own)
    whose library holds the debian-12 image: a full VM's life on its namespace's network."""
    _libvirt_answers()
    # This lab's host service keeps the host's daemons: the fault test kills them.
    with network_lab("vm", extra_env={"LAB_KEEP_HOST_DAEMONS": "true"}) as net:
        yield net


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Iterator[None]:
    """Each phase's report on the test item (``item.rep_call``), so that a fixture can
    gather more evidence when the test itself failed."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def kubeconfig_for(server: LabServer, tmp: Path, namespace: str) -> Path:
    return server.kubeconfig(tmp / f"{namespace}.kubeconfig", server.admin_token(), namespace)
