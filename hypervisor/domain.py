"""Typed libvirt domain specs, rendered through one jinja2 template.

A ``DomainSpec`` says everything this project owns about a libvirt domain;
``render_domain_xml()`` turns it into domain XML with
``templates/libvirt/domain.xml.j2``. ``owned_view()`` reads any domain XML
(ours, or what libvirt hands back after filling in defaults) down to the
parts we own, so that ``owned_differences()`` can tell whether a defined
domain still matches its spec. ``parse_observation()`` reads the facts a
controller reports back (``DomainObservation``).

Nothing here talks to libvirt; see ``hypervisor.libvirt_driver``.
"""

from __future__ import annotations

import re
import uuid as uuidlib
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import jinja2

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TEMPLATES_DIR = PROJECT_ROOT / "templates"
DOMAIN_TEMPLATE = "libvirt/domain.xml.j2"

# Our <metadata> element: <pacific:instance xmlns:pacific=URI><pacific:entry key=..>value</..>
METADATA_NS = "urn:x-pacific-lab:domain:1"
METADATA_PREFIX = "pacific"

QBOOT_ROM = Path("/usr/share/qemu/qboot.rom")

Accelerator = Literal["kvm", "tcg"]
DiskFormat = Literal["qcow2", "raw"]
DiskBus = Literal["virtio", "sata", "scsi"]
NicKind = Literal["bridge", "network", "ovs"]
Graphics = Literal["vnc", "none"]

ACCELERATORS = ("kvm", "tcg")
DISK_FORMATS = ("qcow2", "raw")
DISK_BUSES = ("virtio", "sata", "scsi")
NIC_KINDS = ("bridge", "network", "ovs")
GRAPHICS = ("vnc", "none")

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$")
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_TARGET_RE = {"virtio": re.compile(r"^vd[a-z]{1,2}$"), "sata": re.compile(r"^sd[a-z]{1,2}$"),
              "scsi": re.compile(r"^sd[a-z]{1,2}$")}
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
# libvirt throws away <target dev> names with these prefixes (it generates them itself).
_RESERVED_IFNAME_PREFIXES = ("vnet", "vif", "macvtap", "macvlan")
_SOURCE_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_SERIAL_RE = re.compile(r"^[A-Za-z0-9_.-]{1,20}$")
_MACHINE_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


class SpecError(ValueError):
    """A spec that no libvirt domain can be made from (a permanent error)."""


def _absolute(path: Path | None, what: str) -> None:
    if path is not None and not Path(path).is_absolute():
        raise SpecError(f"{what} must be an absolute path, not {str(path)!r}")


def tcg_cmdline(cmdline: str) -> str:
    """A guest kernel command line for QEMU's emulator (TCG): ``mitigations=off``.

    An emulated CPU never executes speculatively, so Spectre and Meltdown mitigations in
    the guest protect nothing there, and they cost a great deal: page-table isolation
    switches page tables on every system call, and each switch flushes TCG's software TLB
    (``benchmarks/tcg_mitigations.py``: system calls 13.6 times slower with them, figures
    in ``docs/benchmarks.md``). Under KVM the guest keeps them. A command line that
    already says ``mitigations=`` is left as it is."""
    if "mitigations=" in cmdline:
        return cmdline
    return f"{cmdline} mitigations=off".strip()


@dataclass(frozen=True)
class KernelBoot:
    """Direct kernel boot: ``<os><kernel/><initrd/><cmdline/></os>``."""

    kernel: Path
    initrd: Path | None = None
    cmdline: str = ""

    def __post_init__(self) -> None:
        _absolute(self.kernel, "kernel")
        _absolute(self.initrd, "initrd")
        if "\n" in self.cmdline or "\0" in self.cmdline:
            raise SpecError("kernel cmdline must be one line")


@dataclass(frozen=True)
class DiskSpec:
    """A file-backed disk (``device='disk'``; a seed ISO is a read-only raw disk)."""

    path: Path
    format: DiskFormat = "qcow2"
    target: str = "vda"
    bus: DiskBus = "virtio"
    readonly: bool = False
    serial: str | None = None

    def __post_init__(self) -> None:
        _absolute(self.path, "disk path")
        if self.format not in DISK_FORMATS:
            raise SpecError(f"disk format must be one of {DISK_FORMATS}, not {self.format!r}")
        if self.bus not in DISK_BUSES:
            raise SpecError(f"disk bus must be one of {DISK_BUSES}, not {self.bus!r}")
        if not _TARGET_RE[self.bus].match(self.target):
            raise SpecError(f"disk target {self.target!r} does not fit bus {self.bus!r}")
        if self.serial is not None and not _SERIAL_RE.match(self.serial):
            raise SpecError(f"disk serial {self.serial!r}: up to 20 of [A-Za-z0-9_.-]")


@dataclass(frozen=True)
class NicSpec:
    """A virtio NIC on a Linux bridge, a libvirt network or an Open vSwitch bridge.

    ``interfaceid`` is the OVS ``external-ids:iface-id`` (a UUID; libvirt
    makes one up when it is None), ``port_name`` the tap device, which is also
    the OVS port name (libvirt picks ``vnetN`` when it is None), ``vlan`` the
    OVS access tag. ``csum_offload_off`` turns checksum/segmentation offload
    off on both sides, which the OVS userspace datapath needs for TCP.
    """

    mac: str
    kind: NicKind
    source: str
    interfaceid: str | None = None
    port_name: str | None = None
    vlan: int | None = None
    csum_offload_off: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "mac", self.mac.lower())
        if not _MAC_RE.match(self.mac):
            raise SpecError(f"bad MAC address {self.mac!r}")
        if int(self.mac[:2], 16) & 1:
            raise SpecError(f"MAC address {self.mac!r} is a multicast address")
        if self.kind not in NIC_KINDS:
            raise SpecError(f"NIC kind must be one of {NIC_KINDS}, not {self.kind!r}")
        if not _SOURCE_RE.match(self.source):
            raise SpecError(f"bad NIC source {self.source!r}")
        if self.interfaceid is not None:
            if self.kind != "ovs":
                raise SpecError("interfaceid is only for kind 'ovs'")
            try:
                object.__setattr__(self, "interfaceid", str(uuidlib.UUID(self.interfaceid)))
            except ValueError as exc:
                raise SpecError(f"interfaceid {self.interfaceid!r} is not a UUID") from exc
        if self.port_name is not None and (not _IFNAME_RE.match(self.port_name)
                                           or self.port_name.startswith(_RESERVED_IFNAME_PREFIXES)):
            raise SpecError(f"bad port name {self.port_name!r} (1-15 of [A-Za-z0-9_.-], "
                            f"not starting with {', '.join(_RESERVED_IFNAME_PREFIXES)})")
        if self.vlan is not None:
            if self.kind != "ovs":
                raise SpecError("a VLAN tag needs kind 'ovs'")
            if not 0 <= self.vlan <= 4095:
                raise SpecError(f"VLAN tag {self.vlan} is not in 0-4095")


@dataclass(frozen=True)
class DomainSpec:
    """Everything we own about one libvirt domain.

    ``accelerator`` comes from the host facts ('kvm' only where KVM really
    runs a guest). ``serial_log`` and ``serial_socket`` give the serial
    console as a log file, a unix socket (mode bind), or both (the socket, with
    libvirt's ``<log>`` copying everything to the file). ``metadata`` is
    rendered under our own namespace in ``<metadata>`` (owner keys and the like).
    """

    name: str
    uuid: str
    vcpus: int
    memory_mib: int
    accelerator: Accelerator
    disks: tuple[DiskSpec, ...] = ()
    nics: tuple[NicSpec, ...] = ()
    serial_log: Path | None = None
    serial_socket: Path | None = None
    kernel: KernelBoot | None = None
    machine: str = "pc"
    loader_rom: Path | None = None
    metadata: Mapping[str, str] = field(default_factory=dict, hash=False)
    graphics: Graphics = "none"
    guest_agent: bool = False

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.name):
            raise SpecError(f"bad domain name {self.name!r}")
        try:
            object.__setattr__(self, "uuid", str(uuidlib.UUID(str(self.uuid))))
        except ValueError as exc:
            raise SpecError(f"bad domain uuid {self.uuid!r}") from exc
        if self.accelerator not in ACCELERATORS:
            raise SpecError(f"accelerator must be one of {ACCELERATORS}, not {self.accelerator!r}")
        if not 1 <= self.vcpus <= 256:
            raise SpecError(f"vcpus must be 1-256, not {self.vcpus}")
        if not 16 <= self.memory_mib <= 4 * 1024 * 1024:
            raise SpecError(f"memory_mib must be at least 16, not {self.memory_mib}")
        if self.graphics not in GRAPHICS:
            raise SpecError(f"graphics must be one of {GRAPHICS}, not {self.graphics!r}")
        if not _MACHINE_RE.match(self.machine):
            raise SpecError(f"bad machine type {self.machine!r}")
        object.__setattr__(self, "disks", tuple(self.disks))
        object.__setattr__(self, "nics", tuple(self.nics))
        for path, what in ((self.serial_log, "serial_log"), (self.serial_socket, "serial_socket"),
                           (self.loader_rom, "loader_rom")):
            _absolute(path, what)
        targets = [disk.target for disk in self.disks]
        if len(set(targets)) != len(targets):
            raise SpecError(f"disk targets are not unique: {targets}")
        macs = [nic.mac for nic in self.nics]
        if len(set(macs)) != len(macs):
            raise SpecError(f"NIC MAC addresses are not unique: {macs}")
        ports = [nic.port_name for nic in self.nics if nic.port_name]
        if len(set(ports)) != len(ports):
            raise SpecError(f"NIC port names are not unique: {ports}")
        for key, value in self.metadata.items():
            if not isinstance(key, str) or not isinstance(value, str) or not key:
                raise SpecError("metadata keys and values must be strings (keys non-empty)")
        object.__setattr__(self, "metadata", MappingProxyType(dict(sorted(self.metadata.items()))))


@dataclass(frozen=True)
class DomainObservation:
    """What libvirt reports about a domain (from its live XML when it runs)."""

    name: str
    uuid: str
    state: str  # running, blocked, paused, shutdown, shutoff, crashed, pmsuspended, nostate
    persistent: bool
    vcpus: int
    memory_mib: int
    disk_paths: tuple[Path, ...]
    macs: tuple[str, ...]
    port_names: tuple[str, ...]  # tap devices (OVS ports) while running
    serial_log: Path | None
    serial_socket: Path | None
    vnc_port: int | None
    metadata: Mapping[str, str] = field(hash=False)
    # The persistent definition differs from the running domain in what we
    # own: the changes take effect at the next (cold) start.
    restart_pending: bool = False


# -- rendering ---------------------------------------------------------

@lru_cache(maxsize=8)
def _environment(templates_dir: Path) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def render_template(template: str, /, *, templates_dir: Path = DEFAULT_TEMPLATES_DIR,
                    **context: Any) -> str:
    """Render ``templates_dir/template`` (autoescaped XML, undefined names are errors)."""
    return _environment(Path(templates_dir)).get_template(template).render(**context)


def render_domain_xml(spec: DomainSpec, *, templates_dir: Path = DEFAULT_TEMPLATES_DIR) -> str:
    """The libvirt domain XML for ``spec``."""
    return render_template(
        DOMAIN_TEMPLATE, templates_dir=templates_dir,
        spec=spec,
        domain_type="kvm" if spec.accelerator == "kvm" else "qemu",
        metadata_ns=METADATA_NS,
        metadata_prefix=METADATA_PREFIX,
    )


# -- reading domain XML back -------------------------------------------

_MEMORY_UNITS = {"b": 1, "bytes": 1, "kb": 1000, "k": 1024, "kib": 1024, "mb": 1000 ** 2,
                 "m": 1024 ** 2, "mib": 1024 ** 2, "gb": 1000 ** 3, "g": 1024 ** 3,
                 "gib": 1024 ** 3}


def _memory_bytes(element: ET.Element | None) -> int | None:
    if element is None or not (element.text or "").strip():
        return None
    unit = element.get("unit", "KiB").lower()
    return int(element.text.strip()) * _MEMORY_UNITS[unit]  # type: ignore[union-attr]


def _text(root: ET.Element, path: str) -> str | None:
    found = root.find(path)
    return None if found is None or found.text is None else found.text.strip()


def _canonical_machine(machine: str | None) -> str | None:
    """libvirt expands aliases ('pc' -> 'pc-i440fx-7.2', 'q35' -> 'pc-q35-7.2')."""
    if machine is None:
        return None
    for alias, prefix in (("pc", "pc-i440fx-"), ("q35", "pc-q35-")):
        if machine == alias or machine.startswith(prefix):
            return alias
    return machine


def parse_metadata(root: ET.Element) -> dict[str, str]:
    """Our key/value pairs from ``<metadata>`` (empty if there are none)."""
    found: dict[str, str] = {}
    for entry in root.findall(f"./metadata/{{{METADATA_NS}}}instance/{{{METADATA_NS}}}entry"):
        key = entry.get("key")
        if key:
            found[key] = entry.text or ""
    return found


def owned_view(xml: str) -> dict[str, Any]:
    """The parts of a domain XML that ``DomainSpec`` owns, in a canonical form."""
    root = ET.fromstring(xml)
    os_el = root.find("os")
    type_el = os_el.find("type") if os_el is not None else None
    loader = os_el.find("loader") if os_el is not None else None
    cpu = root.find("cpu")
    devices = root.find("devices")
    devices = devices if devices is not None else ET.Element("devices")
    graphics = []
    for gfx in devices.findall("graphics"):
        listen = gfx.find("listen")
        address = listen.get("address") if listen is not None else gfx.get("listen")
        graphics.append((gfx.get("type"), gfx.get("autoport"), address))
    return {
        "type": root.get("type"),
        "name": _text(root, "name"),
        "uuid": (_text(root, "uuid") or "").lower() or None,
        "metadata": parse_metadata(root),
        "memory": _memory_bytes(root.find("memory")),
        "current_memory": _memory_bytes(root.find("currentMemory")),
        "vcpus": int(_text(root, "vcpu") or 1),
        "machine": _canonical_machine(type_el.get("machine") if type_el is not None else None),
        "loader": None if loader is None else (loader.get("type"), (loader.text or "").strip()),
        "kernel": _text(root, "os/kernel"),
        "initrd": _text(root, "os/initrd"),
        "cmdline": _text(root, "os/cmdline") or "",
        "cpu": _cpu_view(cpu),
        "features": sorted(child.tag for child in root.findall("features/*")),
        "lifecycle": tuple(_text(root, tag) for tag in ("on_poweroff", "on_reboot", "on_crash")),
        "disks": [_disk_view(disk) for disk in devices.findall("disk")],
        "nics": [_nic_view(nic) for nic in devices.findall("interface")],
        "serials": [_serial_view(serial) for serial in devices.findall("serial")],
        "graphics": graphics,
        "channels": sorted(target.get("name") or "" for target in devices.findall("channel/target")),
        "rng": sorted(rng.get("model") or "" for rng in devices.findall("rng")),
        "usb": sorted(c.get("model") or "" for c in devices.findall("controller[@type='usb']")),
        "memballoon": [b.get("model") for b in devices.findall("memballoon")],
    }


def _cpu_view(cpu: ET.Element | None) -> tuple[str | None, str | None] | None:
    """None for no <cpu> element, and for what libvirt fills in for one under TCG (qemu64)."""
    if cpu is None:
        return None
    model = _text(cpu, "model")
    if cpu.get("mode", "custom") == "custom" and model in (None, "qemu64"):
        return None
    return cpu.get("mode"), model


def _disk_view(disk: ET.Element) -> dict[str, Any]:
    source = disk.find("source")
    driver = disk.find("driver")
    target = disk.find("target")
    return {
        "device": disk.get("device"),
        "path": source.get("file") if source is not None else None,
        "format": driver.get("type") if driver is not None else None,
        "target": target.get("dev") if target is not None else None,
        "bus": target.get("bus") if target is not None else None,
        "readonly": disk.find("readonly") is not None,
        "serial": _text(disk, "serial"),
    }


def _nic_view(nic: ET.Element) -> dict[str, Any]:
    source = nic.find("source")
    mac = nic.find("mac")
    virtualport = nic.find("virtualport")
    parameters = virtualport.find("parameters") if virtualport is not None else None
    target = nic.find("target")
    model = nic.find("model")
    driver_host = nic.find("driver/host")
    driver_guest = nic.find("driver/guest")
    return {
        "type": nic.get("type"),
        "mac": (mac.get("address") or "").lower() if mac is not None else None,
        "source": (source.get("bridge") or source.get("network")) if source is not None else None,
        "virtualport": virtualport.get("type") if virtualport is not None else None,
        "interfaceid": parameters.get("interfaceid") if parameters is not None else None,
        "port_name": target.get("dev") if target is not None else None,
        "vlan": sorted(tag.get("id") or "" for tag in nic.findall("vlan/tag")),
        "model": model.get("type") if model is not None else None,
        "driver_host": dict(driver_host.attrib) if driver_host is not None else {},
        "driver_guest": dict(driver_guest.attrib) if driver_guest is not None else {},
    }


def _serial_view(serial: ET.Element) -> dict[str, Any]:
    source = serial.find("source")
    log = serial.find("log")
    return {
        "type": serial.get("type"),
        "path": source.get("path") if source is not None else None,
        "mode": source.get("mode") if source is not None else None,
        "log": log.get("file") if log is not None else None,
    }


# Fields of a NIC that a spec may leave to libvirt: when the desired value is
# None, whatever libvirt chose is fine.
_NIC_OPTIONAL = ("interfaceid", "port_name")


def owned_differences(desired_xml: str, current_xml: str) -> list[str]:
    """Names of the owned fields where ``current_xml`` differs from ``desired_xml``."""
    desired = owned_view(desired_xml)
    current = owned_view(current_xml)
    if len(desired["nics"]) == len(current["nics"]):
        current["nics"] = [
            {key: (None if key in _NIC_OPTIONAL and want[key] is None else value)
             for key, value in have.items()}
            for want, have in zip(desired["nics"], current["nics"], strict=True)
        ]
    return [key for key in desired if desired[key] != current.get(key)]


def parse_observation(live_xml: str, *, state: str, persistent: bool,
                      inactive_xml: str | None = None) -> DomainObservation:
    """Build a ``DomainObservation`` from a domain's XML and its state."""
    root = ET.fromstring(live_xml)
    devices = root.find("devices")
    devices = devices if devices is not None else ET.Element("devices")
    disk_paths = tuple(Path(source.get("file", ""))
                       for source in devices.findall("disk/source") if source.get("file"))
    macs = tuple((mac.get("address") or "").lower() for mac in devices.findall("interface/mac"))
    ports = tuple(target.get("dev") or "" for target in devices.findall("interface/target")
                  if target.get("dev"))
    serial_log: Path | None = None
    serial_socket: Path | None = None
    serial = devices.find("serial")
    if serial is not None:
        source = serial.find("source")
        log = serial.find("log")
        if serial.get("type") == "file" and source is not None and source.get("path"):
            serial_log = Path(source.get("path", ""))
        if serial.get("type") == "unix" and source is not None and source.get("path"):
            serial_socket = Path(source.get("path", ""))
        if log is not None and log.get("file"):
            serial_log = Path(log.get("file", ""))
    vnc_port = None
    for gfx in devices.findall("graphics[@type='vnc']"):
        port = int(gfx.get("port") or -1)
        vnc_port = port if port > 0 else None
    memory = _memory_bytes(root.find("currentMemory")) or _memory_bytes(root.find("memory")) or 0
    restart_pending = bool(inactive_xml and owned_differences(inactive_xml, live_xml))
    return DomainObservation(
        name=_text(root, "name") or "",
        uuid=(_text(root, "uuid") or "").lower(),
        state=state,
        persistent=persistent,
        vcpus=int(_text(root, "vcpu") or 1),
        memory_mib=memory // (1024 * 1024),
        disk_paths=disk_paths,
        macs=macs,
        port_names=ports,
        serial_log=serial_log,
        serial_socket=serial_socket,
        vnc_port=vnc_port,
        metadata=MappingProxyType(parse_metadata(root)),
        restart_pending=restart_pending,
    )
