"""The libvirt driver and disks on the real qemu:///system, with a direct-kernel-boot micro-VM.

The guest is this machine's Debian kernel plus a ~1 MiB busybox initramfs
(``tests/support/busybox.py``) booted through qboot under the accelerator the
spec names ('tcg' here: this machine has no usable KVM). Its /init loads
virtio_blk and the ACPI power button, prints what it reads from its disk (a
qcow2 overlay made by ``hypervisor.disks`` on a raw base image) and a marker
to the serial console, then, depending on the kernel command line, powers off
on the ACPI power button (``pacific.acpi=1``), ignores it
(``pacific.acpi=0``), or powers off by itself (``pacific.exit=1``).

Everything is named with a per-run prefix and removed even when a step fails.
"""

from __future__ import annotations

import json
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import libvirt
import pytest

from hypervisor.disks import DiskStore, VolumeConflict
from hypervisor.domain import QBOOT_ROM, DiskSpec, DomainSpec, KernelBoot
from hypervisor.libvirt_driver import LibvirtDriver
from hypervisor.proc import run
from tests.support.busybox import (
    ACPI_POWER_BUTTON_MODULES,
    ACPI_POWEROFF_SNIPPET,
    VIRTIO_BLK_MODULES,
    build_initramfs,
    find_kernel,
)

pytestmark = pytest.mark.e2e

URI = "qemu:///system"
RUN = uuid.uuid4().hex[:8]
PREFIX = f"pytest-e2e-{RUN}-"
MARKER = "PACIFIC-E2E-MARKER"
BASE_CONTENT = b"PACIFIC-BASE-OK\n"
BOOT_DEADLINE = 45.0

INIT_BODY = f"""\
acpi=1
exit_now=0
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    pacific.acpi=*) acpi="${{arg#pacific.acpi=}}" ;;
    pacific.exit=*) exit_now="${{arg#pacific.exit=}}" ;;
  esac
done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
echo "DISK: $(head -c {len(BASE_CONTENT) - 1} /dev/vda)"
if [ "$acpi" = 1 ]; then
{ACPI_POWEROFF_SNIPPET}
fi
echo "{MARKER} acpi=$acpi exit=$exit_now uptime=$(cut -d' ' -f1 /proc/uptime)"
if [ "$exit_now" = 1 ]; then poweroff -f; fi
sleep 120
echo "PACIFIC-E2E: nobody stopped me; powering off"
poweroff -f
"""


@dataclass(frozen=True)
class Lab:
    state_dir: Path
    driver: LibvirtDriver
    disks: DiskStore
    pool: str
    kernel: Path
    initrd: Path
    base: Path


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    # QEMU runs as its own user: every directory on the way must be searchable,
    # which pytest's private tmp_path (mode 0700) is not.
    state_dir = Path(tempfile.mkdtemp(prefix=f"pacific-e2e-{RUN}-", dir="/var/tmp"))
    state_dir.chmod(0o711)
    driver = LibvirtDriver(URI)
    disks = DiskStore(driver, state_dir)
    pool = f"{PREFIX}vms"
    try:
        vmlinuz, release = find_kernel()
        boot = state_dir / "boot"
        boot.mkdir(mode=0o755)
        kernel = boot / vmlinuz.name
        shutil.copyfile(vmlinuz, kernel)
        initrd = build_initramfs(boot / "initrd.gz", INIT_BODY,
                                 VIRTIO_BLK_MODULES + ACPI_POWER_BUTTON_MODULES,
                                 kernel_release=release)
        images = state_dir / "images"
        images.mkdir(mode=0o755)
        base = images / "base.raw"
        with open(base, "wb") as handle:
            handle.write(BASE_CONTENT)
            handle.seek(1024 * 1024)
            handle.write(b"second-MiB")
            handle.truncate(4 * 1024 * 1024)
        base.chmod(0o644)
        (state_dir / "logs").mkdir(mode=0o711)
        (state_dir / "run").mkdir(mode=0o711)
        disks.ensure_pool(pool, "vms")
        yield Lab(state_dir, driver, disks, pool, kernel, initrd, base)
    finally:
        try:
            for name in driver.list_domains(PREFIX):
                driver.ensure_absent(name)
            disks.remove_pool(pool, delete_volumes=True)
        finally:
            driver.close()
            shutil.rmtree(state_dir, ignore_errors=True)


def wait_for(what: str, check: Callable[[], bool], timeout: float) -> float:
    """Poll ``check`` until it is true; return the seconds it took."""
    started = time.monotonic()
    deadline = started + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.1)
    return time.monotonic() - started


def log_text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def test_direct_kernel_boot_lifecycle(lab: Lab) -> None:
    name = f"{PREFIX}micro"
    disk = lab.disks.ensure_overlay(lab.pool, f"{name}.qcow2", lab.base, "raw", 16 * 1024 * 1024)
    serial_log = lab.state_dir / "logs" / f"{name}.log"
    spec = DomainSpec(
        name=name, uuid=str(uuid.uuid4()), vcpus=1, memory_mib=192, accelerator="tcg",
        kernel=KernelBoot(lab.kernel, lab.initrd, "console=ttyS0 panic=-1 quiet pacific.acpi=1"),
        loader_rom=QBOOT_ROM,
        disks=(DiskSpec(disk, "qcow2", "vda", serial="root"),),
        serial_log=serial_log,
        serial_socket=lab.state_dir / "run" / f"{name}.sock",
        metadata={"pacific-lab/test": "test_direct_kernel_boot_lifecycle", "owner": "e2e <&>"},
    )
    timings: dict[str, float] = {}
    driver = lab.driver

    assert driver.ensure_defined(spec) is True
    assert driver.ensure_defined(spec) is False  # libvirt's defaults are not differences
    assert driver.list_domains(PREFIX) == [name]

    # Boot 1: print the disk and the marker, then power off on the ACPI button.
    started = time.monotonic()
    assert driver.ensure_power(name, "running") is True
    assert driver.ensure_power(name, "running") is False
    timings["boot1_to_marker"] = wait_for("marker 1", lambda: log_text(serial_log).count(MARKER) == 1,
                                          BOOT_DEADLINE)
    assert time.monotonic() - started < BOOT_DEADLINE
    text = log_text(serial_log)
    assert "DISK: PACIFIC-BASE-OK" in text  # the guest reads the base through the overlay
    assert "insmod" not in text  # every module loaded
    observed = driver.observe(name)
    assert observed is not None
    assert observed.state == "running" and observed.persistent
    assert observed.uuid == spec.uuid and observed.vcpus == 1 and observed.memory_mib == 192
    assert observed.disk_paths == (disk,)
    assert observed.macs == ()
    assert observed.serial_log == serial_log and observed.serial_socket == spec.serial_socket
    assert dict(observed.metadata) == dict(spec.metadata)
    assert observed.restart_pending is False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as console:
        console.connect(str(spec.serial_socket))  # the console socket takes a client

    # A new definition while it runs: pending until the next start.
    spec2 = replace(spec, kernel=KernelBoot(lab.kernel, lab.initrd,
                                            "console=ttyS0 panic=-1 quiet pacific.acpi=0"))
    assert driver.ensure_defined(spec2) is True
    assert driver.observe(name).restart_pending is True  # type: ignore[union-attr]

    started = time.monotonic()
    assert driver.ensure_power(name, "shutoff", graceful_timeout=30) is True
    timings["acpi_shutdown"] = time.monotonic() - started
    assert timings["acpi_shutdown"] < 30  # it went down by itself, not by destroy
    assert "acpid: power button" in log_text(serial_log)
    assert driver.observe(name).state == "shutoff"  # type: ignore[union-attr]
    assert driver.ensure_power(name, "shutoff") is False

    # Boot 2: start paused, resume; the guest ignores ACPI, so shutoff destroys it.
    assert driver.ensure_power(name, "paused") is True
    assert driver.observe(name).state == "paused"  # type: ignore[union-attr]
    assert driver.ensure_power(name, "running") is True
    timings["boot2_to_marker"] = wait_for(
        "marker 2", lambda: f"{MARKER} acpi=0" in log_text(serial_log), BOOT_DEADLINE)
    assert driver.observe(name).restart_pending is False  # type: ignore[union-attr]
    assert driver.ensure_power(name, "paused") is True
    assert driver.observe(name).state == "paused"  # type: ignore[union-attr]
    assert driver.ensure_power(name, "running") is True
    started = time.monotonic()
    assert driver.ensure_power(name, "shutoff", graceful_timeout=3) is True
    timings["ignored_acpi_then_destroy"] = time.monotonic() - started
    assert 3 <= timings["ignored_acpi_then_destroy"] < 15
    assert log_text(serial_log).count("acpid: power button") == 1
    assert driver.observe(name).state == "shutoff"  # type: ignore[union-attr]

    # Boot 3: the guest powers itself off; on_poweroff=destroy leaves it shut off.
    spec3 = replace(spec, kernel=KernelBoot(lab.kernel, lab.initrd, "console=ttyS0 panic=-1 quiet "
                                                                    "pacific.acpi=0 pacific.exit=1"))
    assert driver.ensure_defined(spec3) is True
    assert driver.ensure_power(name, "running") is True
    timings["boot3_to_self_poweroff"] = wait_for(
        "the guest to power itself off",
        lambda: driver.observe(name).state == "shutoff",  # type: ignore[union-attr]
        BOOT_DEADLINE)
    assert f"{MARKER} acpi=0 exit=1" in log_text(serial_log)

    assert driver.ensure_absent(name) is True
    assert driver.ensure_absent(name) is False
    assert driver.observe(name) is None
    assert driver.list_domains(PREFIX) == []
    assert lab.disks.remove_volume(lab.pool, f"{name}.qcow2") is True
    assert lab.disks.list_volumes(lab.pool) == []
    conn = libvirt.open(URI)
    try:
        assert name not in [dom.name() for dom in conn.listAllDomains(0)]
    finally:
        conn.close()
    markers = [line.strip() for line in log_text(serial_log).splitlines() if MARKER in line]
    print(f"\ntimings (s): {json.dumps({k: round(v, 2) for k, v in timings.items()})}")
    print("\n".join(markers))


def test_overlay_reads_back_base(lab: Lab) -> None:
    name = f"{PREFIX}overlay.qcow2"
    size = 8 * 1024 * 1024
    path = lab.disks.ensure_overlay(lab.pool, name, lab.base, "raw", size)
    assert path == lab.state_dir / "vms" / name
    info = json.loads(run(["qemu-img", "info", "--output=json", "-U", str(path)]).stdout)
    assert info["format"] == "qcow2"
    assert info["backing-filename"] == str(lab.base)
    assert info["backing-filename-format"] == "raw"
    assert info["virtual-size"] == size
    flat = lab.state_dir / "flat.raw"
    run(["qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw", str(path), str(flat)])
    data = flat.read_bytes()
    base = lab.base.read_bytes()
    assert data[:len(base)] == base
    assert data[1024 * 1024:1024 * 1024 + 10] == b"second-MiB"
    assert data[len(base):] == b"\0" * (size - len(base))
    flat.unlink()

    # Idempotent; grows but never shrinks; refuses another backing file.
    assert lab.disks.ensure_overlay(lab.pool, name, lab.base, "raw", size) == path
    assert lab.disks.ensure_overlay(lab.pool, name, lab.base, "raw", 1024) == path
    assert lab.disks.volume_info(lab.pool, name).capacity == size  # type: ignore[union-attr]
    lab.disks.ensure_overlay(lab.pool, name, lab.base, "raw", 2 * size)
    info2 = lab.disks.volume_info(lab.pool, name)
    assert info2 is not None
    assert info2.capacity == 2 * size and info2.backing == lab.base and info2.format == "qcow2"
    other = lab.state_dir / "images" / "other.raw"
    other.write_bytes(b"\0" * 512)
    with pytest.raises(VolumeConflict):
        lab.disks.ensure_overlay(lab.pool, name, other, "raw", size)
    with pytest.raises(ValueError):
        lab.disks.ensure_overlay(lab.pool, "../escape.qcow2", lab.base, "raw", size)
    with pytest.raises(ValueError):
        lab.disks.ensure_overlay(lab.pool, "x.qcow2", Path("/etc/passwd"), "raw", size)

    # The benchmark's baseline: a full copy, holes kept.
    copy = lab.disks.full_copy(lab.base, lab.state_dir / "images" / "copy.raw")
    assert copy.read_bytes() == base
    assert copy.stat().st_blocks * 512 < len(base)
    with pytest.raises(FileExistsError):
        lab.disks.full_copy(lab.base, copy)

    assert lab.disks.remove_volume(lab.pool, name) is True
    assert lab.disks.remove_volume(lab.pool, name) is False
    assert lab.disks.volume_info(lab.pool, name) is None
    # A pool that is already there is left as it is.
    assert lab.disks.ensure_pool(lab.pool, "vms") == lab.state_dir / "vms"
