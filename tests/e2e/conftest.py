"""End-to-end fixtures: one real host service with the VM Service and namespace networks, on
real libvirt and Open vSwitch."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server import LabServer, NetworkLab, network_lab


@pytest.fixture(scope="session")
def vmnet() -> Iterator[NetworkLab]:
    """A host service with namespace networks (OVS, dnsmasq, HAProxy on a bridge of its own)
    whose library holds the debian-12 image: the VM Service's full VMs run here.

    The image is built once into the cache directory (LAB_CACHE_DIR, by default
    /var/cache/pacific-lab) and reused by later runs."""
    probe = subprocess.run(["virsh", "-c", "qemu:///system", "version"], capture_output=True,
                           text=True, timeout=60)
    if probe.returncode != 0:
        raise AssertionError("libvirtd does not answer (run the suite with ./lab test, which "
                             f"prepares the host first): {probe.stderr.strip()}")
    with network_lab("vm") as net:
        yield net


@pytest.fixture(scope="session")
def vmlab(vmnet: NetworkLab) -> LabServer:
    return vmnet.server


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
