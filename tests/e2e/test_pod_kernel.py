"""The pod kernel, for real: built from Debian's linux-source with make, reproducible from its
cache key, booting the pod init; and Debian's kernel, with the reason said, when it cannot
be built.

Under ``./lab test`` the build runs beside the tiers from the start (``lab pod-kernel build``,
output in ``test-artifacts/pod-kernel.log``): the ``built`` fixture waits for it through the
build's lock, or builds it when this module runs alone (about 8 minutes on 2 cores). The pod
tests after this module (``test_pods.py``) boot every pod on it.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hypervisor.domain import QBOOT_ROM
from hypervisor.hostfacts import linux_probe_command
from hypervisor.podvm.initramfs import find_kernel
from hypervisor.podvm.kernelbuild import (
    DIGESTS,
    BuiltKernel,
    build_pod_kernel,
    kernel_for_pods,
    recorded_digests,
)

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("LAB_CACHE_DIR", "/var/cache/pacific-lab"))
BOOT_TIMEOUT = 120.0


@pytest.fixture(scope="module")
def built() -> BuiltKernel:
    started = time.monotonic()
    kernel = build_pod_kernel(CACHE / "pod-kernel")
    print(f"[pod-kernel] {kernel.release} key {kernel.key}, {kernel.vmlinux.stat().st_size} "
          f"bytes: ready after {time.monotonic() - started:.0f} s")
    return kernel


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def boot_to_pod_init(cache: Path, source_dir: Path | None = None) -> tuple[str, str]:
    """Boot what pod VMs boot (``kernel_for_pods``), bare QEMU under TCG, with the real pod
    initramfs and no disks: the pod init starts, finds no configuration disk, says so and
    powers off. Returns the kernel's release and the console."""
    kwargs = {} if source_dir is None else {"source_dir": source_dir}
    kernel, _ = kernel_for_pods(cache, **kwargs)
    done = subprocess.run(linux_probe_command(kernel, accel="tcg", firmware=QBOOT_ROM),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=BOOT_TIMEOUT, check=False)
    return kernel.release, done.stdout


def lab(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "appliance.cli", *args], cwd=ROOT,
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=120,
                          check=False)


def test_the_build_is_reproducible_from_its_cache_key(built: BuiltKernel, tmp_path: Path) -> None:
    digest = sha256(built.vmlinux)
    recorded = recorded_digests()
    if built.key in recorded:
        # Another machine built these inputs (templates/podvm/kernel.sha256): same bytes.
        assert digest == recorded[built.key], (
            f"the pod kernel for key {built.key} is {digest}; {DIGESTS.name} says "
            f"{recorded[built.key]}")
    else:
        # Inputs nobody recorded (Debian updated linux-source or gcc): build them again here,
        # from scratch in another directory, and compare.
        again = build_pod_kernel(tmp_path / "again")
        assert (again.key, sha256(again.vmlinux)) == (built.key, digest)
    config = built.config.read_text()
    assert "CONFIG_PVH=y" in config and "# CONFIG_MODULES is not set" in config


def test_pod_vms_boot_it_to_the_pod_init(built: BuiltKernel) -> None:
    release, console = boot_to_pod_init(CACHE)
    assert release == built.release
    assert "pod-init:" in console and "booted" in console, console[-2000:]
    # No modules to load: the next step is the disks, which this bare boot has none of.
    assert "FATAL: no disk with serial 'config'" in console, console[-2000:]


def test_an_impossible_build_falls_back_to_the_distro_kernel_with_its_reason(
        tmp_path: Path) -> None:
    empty = tmp_path / "src"
    empty.mkdir()
    env = {"LAB_STATE_DIR": str(tmp_path / "state"), "LAB_CACHE_DIR": str(tmp_path / "cache"),
           "LAB_POD_KERNEL_SOURCE_DIR": str(empty)}
    build = lab("pod-kernel", "build", env=env)
    assert build.returncode == 1
    assert build.stderr.strip().splitlines()[-1] == (
        f"Error: the pod kernel was not built: no linux-source-X.Y.tar.xz in {empty}: install "
        "Debian's linux-source package")
    status = lab("pod-kernel", "status", env=env)
    assert status.returncode == 0, status.stderr
    assert status.stdout.strip() == (
        f"pod VMs boot the distro kernel: the pod kernel cannot be built here: no "
        f"linux-source-X.Y.tar.xz in {empty}: install Debian's linux-source package")
    # And pod VMs do boot: Debian's kernel, its modules loaded by the pod init.
    release, console = boot_to_pod_init(tmp_path / "cache", empty)
    assert release == find_kernel()[1]
    assert "pod-init:" in console and "modules loaded" in console, console[-2000:]
