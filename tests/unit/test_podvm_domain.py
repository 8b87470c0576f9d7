"""Pod VM domain XML: golden files, escaping, spec checks, and the runtime on libvirt's test:///.

Regenerate the golden files with ``UPDATE_GOLDEN=1``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from hypervisor.domain import METADATA_NS, NicSpec, SpecError
from hypervisor.libvirt_driver import HypervisorError, LibvirtDriver
from hypervisor.podvm.domain import BASE_CMDLINE, PodVmSpec, render_podvm_xml
from hypervisor.podvm.initramfs import PodKernel
from hypervisor.podvm.runtime import PodVmRuntime

GOLDEN_DIR = Path(__file__).parent / "data" / "podvm"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"
POD = Path("/var/lib/pacific-lab/pods/dev/web-0")


def spec(**overrides: object) -> PodVmSpec:
    values: dict[str, object] = dict(
        name="pod-dev-web-0",
        uuid="0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
        vcpus=1,
        memory_mib=256,
        accelerator="tcg",
        kernel=PodKernel(Path("/var/cache/pacific-lab/podvm/6.1.0-56-amd64-abc/vmlinux"),
                         Path("/var/cache/pacific-lab/podvm/6.1.0-56-amd64-abc/initrd.img"),
                         "6.1.0-56-amd64"),
        image_disks=(Path("/var/lib/pacific-lab/images/sha256-aaa.erofs"),
                     Path("/var/lib/pacific-lab/images/sha256-bbb.erofs")),
        scratch=POD / "scratch.raw",
        config=POD / "config.tar",
        console_log=POD / "console.log",
        event_log=POD / "events.log",
        output_log=POD / "output.log",
        control_socket=Path("/run/pacific-lab/pods/0f1e2d3c.sock"),
        nic=NicSpec("52:54:00:12:34:56", "ovs", "pacific0", port_name="pod-0f1e2d3c", vlan=101,
                    interfaceid="6a0b4f57-8d0c-4b8e-9a7d-1c2e3f405162", csum_offload_off=True),
        metadata={"pacific-lab/kind": "Pod", "pacific-lab/namespace": "dev",
                  "pacific-lab/name": "web-0"},
    )
    values.update(overrides)
    return PodVmSpec(**values)  # type: ignore[arg-type]


def check_golden(name: str, xml: str) -> None:
    path = GOLDEN_DIR / name
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(xml)
    assert xml == path.read_text(), f"{name} differs (UPDATE_GOLDEN=1 regenerates it)"


@pytest.mark.parametrize("name, variant", [
    ("podvm-tcg-ovs.xml", {}),
    ("podvm-kvm-bridge.xml", {"accelerator": "kvm", "vcpus": 2, "memory_mib": 512,
                              "free_page_reporting": True,
                              "nic": NicSpec("52:54:00:ab:cd:ef", "bridge", "pltest0")}),
    ("podvm-no-nic.xml", {"nic": None, "metadata": {}, "extra_cmdline": ("loglevel=7",),
                          "image_disks": (Path("/images/one.erofs"),)}),
])
def test_golden(name: str, variant: dict[str, object]) -> None:
    xml = render_podvm_xml(spec(**variant))
    check_golden(name, xml)
    ET.fromstring(xml)


def test_disks_by_serial_and_shared_images_never_relabelled() -> None:
    root = ET.fromstring(render_podvm_xml(spec()))
    disks = root.findall("devices/disk")
    assert [d.findtext("serial") for d in disks] == ["config", "scratch", "image0", "image1"]
    assert [d.find("target").get("dev") for d in disks] == ["vda", "vdb", "vdc", "vdd"]  # type: ignore[union-attr]
    for disk in disks:
        serial = disk.findtext("serial")
        readonly = disk.find("readonly") is not None
        seclabel = disk.find("source/seclabel")
        assert readonly == (serial != "scratch")
        if serial and serial.startswith("image"):
            assert seclabel is not None
            assert (seclabel.get("model"), seclabel.get("relabel")) == ("dac", "no")
        else:
            assert seclabel is None
    assert disks[1].find("driver").get("cache") == "unsafe"  # type: ignore[union-attr]


def test_channels_and_lifecycle() -> None:
    root = ET.fromstring(render_podvm_xml(spec()))
    serials = root.findall("devices/serial")
    assert [(s.get("type"), s.find("target").get("port")) for s in serials] == [  # type: ignore[union-attr]
        ("file", "0"), ("file", "1"), ("file", "2"), ("unix", "3")]
    assert serials[1].find("source").get("path") == str(POD / "events.log")  # type: ignore[union-attr]
    control = serials[3].find("source")
    assert control is not None and control.get("mode") == "bind"
    assert [root.findtext(t) for t in ("on_poweroff", "on_reboot", "on_crash")] == ["destroy"] * 3
    assert root.find("os/loader").get("type") == "rom"  # type: ignore[union-attr]
    assert root.findtext("os/cmdline") == " ".join(BASE_CMDLINE)
    assert root.find("devices/memballoon").get("model") == "none"  # type: ignore[union-attr]
    assert root.find("devices/rng") is None and root.find("devices/graphics") is None
    assert root.find("cpu/model").text == "Nehalem"  # type: ignore[union-attr]


def test_everything_is_escaped() -> None:
    nasty = "x' y=\"<&>"
    xml = render_podvm_xml(spec(metadata={"owner": nasty},
                                console_log=Path(f"/var/lib/pods/{nasty}/console.log")))
    root = ET.fromstring(xml)
    entry = root.find(f"metadata/{{{METADATA_NS}}}instance/{{{METADATA_NS}}}entry")
    assert entry is not None and entry.text == nasty
    assert root.find("devices/serial/source").get("path") == f"/var/lib/pods/{nasty}/console.log"  # type: ignore[union-attr]


@pytest.mark.skipif(shutil.which("virt-xml-validate") is None or shutil.which("xmllint") is None,
                    reason="virt-xml-validate (libvirt-clients) or xmllint (libxml2-utils) missing")
@pytest.mark.parametrize("name", ["podvm-tcg-ovs.xml", "podvm-kvm-bridge.xml", "podvm-no-nic.xml"])
def test_libvirt_schema(name: str) -> None:
    done = subprocess.run(["virt-xml-validate", str(GOLDEN_DIR / name), "domain"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("overrides, message", [
    ({"name": "bad name"}, "domain name"),
    ({"uuid": "nope"}, "uuid"),
    ({"accelerator": "xen"}, "accelerator"),
    ({"vcpus": 0}, "vcpus"),
    ({"memory_mib": 32}, "memory_mib"),
    ({"image_disks": ()}, "at least one image"),
    ({"image_disks": tuple(Path(f"/i/{n}.erofs") for n in range(21))}, "at most"),
    ({"scratch": Path("relative.raw")}, "absolute"),
    ({"event_log": POD / "console.log"}, "different files"),
    ({"control_socket": Path("/" + "s" * 110)}, "unix socket path"),
    ({"extra_cmdline": ("init=/bin/sh; reboot",)}, "command line"),
    ({"config": Path("/a\nb")}, "control characters"),
])
def test_spec_rejects(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        spec(**overrides)


# -- the runtime on libvirt's in-process test driver ------------------------

@pytest.fixture
def runtime() -> Iterator[PodVmRuntime]:
    driver = LibvirtDriver("test:///default")
    try:
        yield PodVmRuntime(driver)
    finally:
        driver.close()


def test_runtime_lifecycle(runtime: PodVmRuntime) -> None:
    pod = spec(name=f"pytest-podvm-{uuid.uuid4().hex[:6]}", uuid=str(uuid.uuid4()), nic=None)
    assert runtime.running(pod.name) is False
    assert runtime.start(pod) is True
    assert runtime.start(pod) is False  # already running
    assert runtime.running(pod.name) is True
    assert runtime.list("pytest-podvm-") == [pod.name]
    with pytest.raises(HypervisorError, match="exists with uuid"):
        runtime.start(replace(pod, uuid=str(uuid.uuid4())))
    assert runtime.kill(pod.name) is True
    assert runtime.kill(pod.name) is False  # transient: gone
    assert runtime.running(pod.name) is False
    assert runtime.list("pytest-podvm-") == []
