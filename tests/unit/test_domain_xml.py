"""Domain XML: golden files, spec checks, and the driver on libvirt's in-process test:///default.

Regenerate the golden files with ``UPDATE_GOLDEN=1``.
"""

from __future__ import annotations

import os
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import libvirt
import pytest

from hypervisor.domain import (
    METADATA_NS,
    DiskSpec,
    DomainSpec,
    KernelBoot,
    NicSpec,
    SpecError,
    owned_differences,
    render_domain_xml,
)
from hypervisor.libvirt_driver import (
    DomainNotFound,
    HypervisorError,
    LibvirtDriver,
    StorageNotFound,
    TransientHypervisorError,
    translate,
)

GOLDEN_DIR = Path(__file__).parent / "data" / "libvirt"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"
TEST_URI = "test:///default"
PREFIX = "pytest-unit-"


def cloud_vm(accelerator: str = "tcg") -> DomainSpec:
    return DomainSpec(
        name="pytest-unit-web-1",
        uuid="6a0b4f57-8d0c-4b8e-9a7d-1c2e3f405162",
        vcpus=2,
        memory_mib=2048,
        accelerator=accelerator,  # type: ignore[arg-type]
        disks=(
            DiskSpec(Path("/var/lib/pacific-lab/vms/web-1.qcow2"), "qcow2", "vda", serial="root"),
            DiskSpec(Path("/var/lib/pacific-lab/seeds/web-1.iso"), "raw", "vdb", readonly=True,
                     serial="cidata"),
        ),
        nics=(NicSpec("52:54:00:12:34:56", "network", "default"),),
        serial_log=Path("/var/lib/pacific-lab/logs/web-1.console.log"),
        metadata={"pacific-lab/kind": "VirtualMachine", "pacific-lab/namespace": "dev",
                  "pacific-lab/name": "web-1",
                  "pacific-lab/uid": "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"},
        graphics="vnc",
        guest_agent=True,
    )


def pod_vm() -> DomainSpec:
    return DomainSpec(
        name="pytest-unit-pod-nginx",
        uuid="1b2c3d4e-5f60-4718-9a2b-3c4d5e6f7081",
        vcpus=1,
        memory_mib=256,
        accelerator="tcg",
        kernel=KernelBoot(Path("/var/lib/pacific-lab/kernels/vmlinuz-6.1.0-56-amd64"),
                          Path("/var/lib/pacific-lab/pods/nginx/initrd.gz"),
                          "console=ttyS0 panic=-1 quiet pacific.pod=dev/nginx"),
        loader_rom=Path("/usr/share/qemu/qboot.rom"),
        disks=(DiskSpec(Path("/var/lib/pacific-lab/images/nginx-1.25.erofs"), "raw", "vda",
                        readonly=True, serial="image"),),
        serial_log=Path("/var/lib/pacific-lab/logs/pod-nginx.console.log"),
        serial_socket=Path("/var/lib/pacific-lab/run/pod-nginx.console.sock"),
        metadata={"pacific-lab/kind": "Pod", "pacific-lab/namespace": "dev",
                  "pacific-lab/name": "nginx"},
    )


def ovs_vm() -> DomainSpec:
    return replace(
        cloud_vm("tcg"),
        name="pytest-unit-ovs-1",
        uuid="2c3d4e5f-6071-4829-8a3b-4c5d6e7f8092",
        nics=(NicSpec("52:54:00:ab:cd:ef", "ovs", "pl-ns-dev",
                      interfaceid="3d4e5f60-7182-4930-9b4c-5d6e7f8091a3",
                      port_name="pl-ovs1-0", vlan=101, csum_offload_off=True),),
        graphics="none",
        guest_agent=False,
    )


GOLDEN: dict[str, Callable[[], DomainSpec]] = {
    "cloud-vm-tcg": lambda: cloud_vm("tcg"),
    "cloud-vm-kvm": lambda: cloud_vm("kvm"),
    "pod-vm-qboot": pod_vm,
    "ovs-csum-off": ovs_vm,
}


@pytest.mark.parametrize("case", sorted(GOLDEN))
def test_golden(case: str) -> None:
    xml = render_domain_xml(GOLDEN[case]())
    path = GOLDEN_DIR / f"{case}.xml"
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(xml)
    assert xml == path.read_text(), f"{path} is stale; rerun with UPDATE_GOLDEN=1 and review the diff"


def test_accelerator_decides_domain_type_and_cpu() -> None:
    kvm = ET.fromstring(render_domain_xml(cloud_vm("kvm")))
    tcg = ET.fromstring(render_domain_xml(cloud_vm("tcg")))
    assert kvm.get("type") == "kvm"
    assert kvm.find("cpu").get("mode") == "host-passthrough"  # type: ignore[union-attr]
    assert tcg.get("type") == "qemu"
    assert tcg.find("cpu") is None


def test_consoles_are_files_and_unix_sockets_only() -> None:
    for make in GOLDEN.values():
        root = ET.fromstring(render_domain_xml(make()))
        for dev in root.findall("devices/serial") + root.findall("devices/console"):
            assert dev.get("type") in ("file", "unix")
        for gfx in root.findall("devices/graphics"):
            assert gfx.get("listen") == "127.0.0.1"
            assert gfx.find("listen").get("address") == "127.0.0.1"  # type: ignore[union-attr]


def test_serial_variants() -> None:
    base = pod_vm()
    both = ET.fromstring(render_domain_xml(base)).find("devices/serial")
    assert both is not None and both.get("type") == "unix"
    assert both.find("source").attrib == {"mode": "bind",  # type: ignore[union-attr]
                                          "path": str(base.serial_socket)}
    assert both.find("log").attrib == {"file": str(base.serial_log),  # type: ignore[union-attr]
                                       "append": "on"}
    log_only = ET.fromstring(render_domain_xml(replace(base, serial_socket=None))).find("devices/serial")
    assert log_only is not None and log_only.get("type") == "file"
    socket_only = ET.fromstring(render_domain_xml(replace(base, serial_log=None))).find("devices/serial")
    assert socket_only is not None and socket_only.find("log") is None
    assert ET.fromstring(render_domain_xml(replace(base, serial_log=None, serial_socket=None))
                         ).find("devices/serial") is None


def test_values_are_escaped_not_injected() -> None:
    hostile = "x'/><evil a='1"
    spec = replace(pod_vm(), metadata={"k'&<>\"": hostile},
                   kernel=KernelBoot(Path("/k"), None, "a=<b> c='d' e=\"f\" & g"))
    root = ET.fromstring(render_domain_xml(spec))
    assert root.find(".//evil") is None
    assert root.findtext("os/cmdline") == "a=<b> c='d' e=\"f\" & g"
    entry = root.find(f"metadata/{{{METADATA_NS}}}instance/{{{METADATA_NS}}}entry")
    assert entry is not None and entry.get("key") == "k'&<>\"" and entry.text == hostile


@pytest.mark.parametrize("bad", [
    lambda: replace(pod_vm(), name="../etc"),
    lambda: replace(pod_vm(), name=""),
    lambda: replace(pod_vm(), uuid="not-a-uuid"),
    lambda: replace(pod_vm(), accelerator="xen"),  # type: ignore[arg-type]
    lambda: replace(pod_vm(), vcpus=0),
    lambda: replace(pod_vm(), memory_mib=8),
    lambda: replace(pod_vm(), serial_log=Path("relative.log")),
    lambda: replace(pod_vm(), graphics="spice"),  # type: ignore[arg-type]
    lambda: DiskSpec(Path("/a"), "vmdk"),  # type: ignore[arg-type]
    lambda: DiskSpec(Path("/a"), "raw", "sda", "virtio"),
    lambda: DiskSpec(Path("a"), "raw"),
    lambda: replace(pod_vm(), disks=(DiskSpec(Path("/a")), DiskSpec(Path("/b")))),
    lambda: NicSpec("52:54:00:00:00", "ovs", "br0"),
    lambda: NicSpec("01:00:5e:00:00:01", "ovs", "br0"),
    lambda: NicSpec("52:54:00:00:00:01", "tap", "br0"),  # type: ignore[arg-type]
    lambda: NicSpec("52:54:00:00:00:01", "bridge", "br0", vlan=10),
    lambda: NicSpec("52:54:00:00:00:01", "ovs", "br0", vlan=5000),
    lambda: NicSpec("52:54:00:00:00:01", "ovs", "br0", interfaceid="nope"),
    lambda: NicSpec("52:54:00:00:00:01", "ovs", "br0", port_name="vnet7"),
    lambda: NicSpec("52:54:00:00:00:01", "ovs", "br0", port_name="a-name-far-too-long"),
    lambda: NicSpec("52:54:00:00:00:01", "ovs", "br0'/>"),
    lambda: KernelBoot(Path("/k"), None, "a\nb"),
])
def test_bad_specs_are_refused(bad: Callable[[], object]) -> None:
    with pytest.raises(SpecError):
        bad()


def test_spec_is_frozen_and_normalised() -> None:
    spec = replace(pod_vm(), uuid="1B2C3D4E5F6047189A2B3C4D5E6F7081", disks=[],  # type: ignore[arg-type]
                   metadata={"b": "2", "a": "1"})
    assert spec.uuid == "1b2c3d4e-5f60-4718-9a2b-3c4d5e6f7081"
    assert spec.disks == ()
    assert list(spec.metadata) == ["a", "b"]
    with pytest.raises(TypeError):
        spec.metadata["c"] = "3"  # type: ignore[index]
    assert NicSpec("52:54:00:AB:CD:EF", "bridge", "br0").mac == "52:54:00:ab:cd:ef"


# -- the driver on test:///default ---------------------------------------

@pytest.fixture
def driver() -> Iterator[LibvirtDriver]:
    drv = LibvirtDriver(TEST_URI)
    try:
        yield drv
    finally:
        for name in drv.list_domains(PREFIX):
            drv.ensure_absent(name)
        drv.close()


@pytest.mark.parametrize("case", sorted(GOLDEN))
def test_rendered_domains_define_and_start_on_test_driver(case: str) -> None:
    spec = GOLDEN[case]()
    conn = libvirt.open(TEST_URI)
    try:
        dom = conn.defineXML(render_domain_xml(spec))
        try:
            dom.create()
            assert dom.isActive()
            assert dom.UUIDString() == spec.uuid
            # What libvirt made of it still matches the spec in everything we own.
            assert owned_differences(render_domain_xml(spec),
                                     dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)) == []
        finally:
            if dom.isActive():
                dom.destroy()
            dom.undefine()
    finally:
        conn.close()


def test_ensure_defined_is_idempotent_and_redefines_on_change(driver: LibvirtDriver) -> None:
    spec = ovs_vm()
    assert driver.ensure_defined(spec) is True
    assert driver.ensure_defined(spec) is False
    assert driver.ensure_defined(replace(spec, memory_mib=4096)) is True
    assert driver.ensure_defined(replace(spec, memory_mib=4096)) is False
    observed = driver.observe(spec.name)
    assert observed is not None and observed.memory_mib == 4096
    # A NIC left to libvirt (no interfaceid, no port name) does not cause redefinitions.
    loose = replace(spec, nics=(NicSpec("52:54:00:ab:cd:ef", "ovs", "pl-ns-dev"),))
    assert driver.ensure_defined(loose) is True
    assert driver.ensure_defined(loose) is False


def test_ensure_defined_repairs_changes_made_behind_our_back(driver: LibvirtDriver) -> None:
    spec = cloud_vm()
    driver.ensure_defined(spec)
    conn = libvirt.open(TEST_URI)
    try:
        dom = conn.lookupByName(spec.name)
        dom.setMaxMemory(512 * 1024)
        dom.setMemoryFlags(512 * 1024, libvirt.VIR_DOMAIN_AFFECT_CONFIG)
    finally:
        conn.close()
    assert driver.ensure_defined(spec) is True
    observed = driver.observe(spec.name)
    assert observed is not None and observed.memory_mib == spec.memory_mib


def test_name_taken_by_another_uuid_is_refused(driver: LibvirtDriver) -> None:
    spec = pod_vm()
    driver.ensure_defined(spec)
    with pytest.raises(HypervisorError, match="already exists with uuid"):
        driver.ensure_defined(replace(spec, uuid=str(uuid.uuid4())))


def test_power_cycle_and_observe(driver: LibvirtDriver) -> None:
    spec = pod_vm()
    driver.ensure_defined(spec)
    observed = driver.observe(spec.name)
    assert observed is not None
    assert observed.state == "shutoff" and observed.persistent
    assert observed.uuid == spec.uuid and observed.vcpus == 1 and observed.memory_mib == 256
    assert observed.disk_paths == (spec.disks[0].path,)
    assert observed.serial_log == spec.serial_log and observed.serial_socket == spec.serial_socket
    assert dict(observed.metadata) == dict(spec.metadata)
    assert observed.restart_pending is False

    assert driver.ensure_power(spec.name, "running") is True
    assert driver.ensure_power(spec.name, "running") is False
    assert driver.observe(spec.name).state == "running"  # type: ignore[union-attr]
    assert driver.ensure_power(spec.name, "paused") is True
    assert driver.ensure_power(spec.name, "paused") is False
    assert driver.observe(spec.name).state == "paused"  # type: ignore[union-attr]
    assert driver.ensure_power(spec.name, "running") is True
    # A definition changed while it runs applies at the next start.
    driver.ensure_defined(replace(spec, vcpus=2))
    assert driver.observe(spec.name).restart_pending is True  # type: ignore[union-attr]
    assert driver.ensure_power(spec.name, "shutoff", graceful_timeout=5) is True
    assert driver.ensure_power(spec.name, "shutoff") is False
    # (Starting paused from shutoff needs VIR_DOMAIN_START_PAUSED, which the
    # test driver lacks; the e2e test does it on qemu:///system.)
    assert driver.ensure_power(spec.name, "running") is True
    assert driver.observe(spec.name).vcpus == 2  # type: ignore[union-attr]
    assert driver.observe(spec.name).restart_pending is False  # type: ignore[union-attr]
    assert driver.ensure_power(spec.name, "paused") is True
    assert driver.ensure_power(spec.name, "shutoff", graceful_timeout=0) is True
    assert driver.observe(spec.name).state == "shutoff"  # type: ignore[union-attr]


def test_absent_and_not_found(driver: LibvirtDriver) -> None:
    spec = cloud_vm()
    assert driver.observe(spec.name) is None
    with pytest.raises(DomainNotFound):
        driver.ensure_power(spec.name, "running")
    driver.ensure_defined(spec)
    driver.ensure_power(spec.name, "running")
    assert driver.list_domains(PREFIX) == [spec.name]
    assert driver.ensure_absent(spec.name) is True
    assert driver.ensure_absent(spec.name) is False
    assert driver.list_domains(PREFIX) == []
    with pytest.raises(ValueError):
        driver.ensure_power(spec.name, "hibernated")  # type: ignore[arg-type]


def test_connection_reopens_after_it_died(driver: LibvirtDriver) -> None:
    keeper = libvirt.open(TEST_URI)  # the test driver forgets everything with its last connection
    try:
        spec = pod_vm()
        driver.ensure_defined(spec)
        driver._connection().close()  # what a libvirtd restart does to our end
        assert driver.observe(spec.name) is not None
    finally:
        keeper.close()


def test_no_daemon_is_a_transient_error(tmp_path: Path) -> None:
    drv = LibvirtDriver(f"qemu+unix:///system?socket={tmp_path}/no-libvirtd.sock")
    with pytest.raises(TransientHypervisorError, match="no libvirt connection") as info:
        drv.list_domains("")
    assert not isinstance(info.value, libvirt.libvirtError)


def _libvirt_error(code: int, domain: int, message: str) -> libvirt.libvirtError:
    exc = libvirt.libvirtError(message)
    exc.err = (code, domain, message, libvirt.VIR_ERR_ERROR, None, None, None, -1, -1)
    return exc


@pytest.mark.parametrize(("code", "domain", "expected"), [
    (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_FROM_QEMU, DomainNotFound),
    (libvirt.VIR_ERR_NO_STORAGE_VOL, libvirt.VIR_FROM_STORAGE, StorageNotFound),
    (libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_FROM_RPC, TransientHypervisorError),  # daemon down
    (libvirt.VIR_ERR_OPERATION_TIMEOUT, libvirt.VIR_FROM_QEMU, TransientHypervisorError),
    (libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_FROM_STORAGE, HypervisorError),  # a missing file
    (libvirt.VIR_ERR_XML_ERROR, libvirt.VIR_FROM_DOMAIN, HypervisorError),
])
def test_error_classes(code: int, domain: int, expected: type[HypervisorError]) -> None:
    err = translate(_libvirt_error(code, domain, "boom"), "doing it")
    assert type(err) is expected
    assert err.code == code and str(err) == "doing it: boom"


def test_lost_connection_is_retried_once_then_transient(driver: LibvirtDriver) -> None:
    calls: list[int] = []

    def flaky(conn: libvirt.virConnect) -> str:
        calls.append(1)
        if len(calls) == 1:
            raise _libvirt_error(libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_FROM_RPC, "End of file")
        return "ok"

    assert driver.call("flaky", flaky) == "ok" and len(calls) == 2

    def broken(conn: libvirt.virConnect) -> None:
        raise _libvirt_error(libvirt.VIR_ERR_RPC, libvirt.VIR_FROM_RPC, "gone")

    with pytest.raises(TransientHypervisorError, match="no libvirt connection"):
        driver.call("broken", broken)

    def bad(conn: libvirt.virConnect) -> None:
        calls.append(1)
        raise _libvirt_error(libvirt.VIR_ERR_XML_ERROR, libvirt.VIR_FROM_DOMAIN, "bad XML")

    calls.clear()
    with pytest.raises(HypervisorError, match="bad XML") as info:
        driver.call("bad", bad)
    assert not isinstance(info.value, TransientHypervisorError) and len(calls) == 1
