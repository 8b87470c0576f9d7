"""The pod VM's libvirt domain: a typed spec rendered through ``templates/libvirt/podvm.xml.j2``.

A pod VM boots the host's kernel directly (qboot, no SeaBIOS, no bootloader)
with the shared pod initramfs. Its disks, all raw virtio, are found by the
init through their serials: ``config`` (the pod's configuration tar,
read-only), ``scratch`` (ext4: writable layers and emptyDirs) and
``image0``..``imageN`` (each an erofs container image, read-only and shared
by every pod that uses it: libvirt is told never to relabel it, so it never
chowns the shared file or restores its owner when one pod stops; it must be
readable by QEMU, mode 0644). Four ISA serial ports carry the channels:
ttyS0 console, ttyS1 events, ttyS2 container output (files) and ttyS3
control (a unix socket QEMU listens on).

Nothing here talks to libvirt; see ``hypervisor.podvm.runtime``.
"""

from __future__ import annotations

import re
import string
import uuid as uuidlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from hypervisor.domain import (
    DEFAULT_TEMPLATES_DIR,
    METADATA_NS,
    METADATA_PREFIX,
    QBOOT_ROM,
    Accelerator,
    NicSpec,
    SpecError,
    render_template,
)
from hypervisor.podvm.initramfs import PodKernel

PODVM_TEMPLATE = "libvirt/podvm.xml.j2"

# The kernel command line every pod VM boots with (each item measured under
# TCG): the console on ttyS0, quiet, reboot at once on panic (on_reboot
# destroys the domain), no speculative-execution mitigations (a pod VM is one
# tenant; page-table isolation makes every syscall dear under TCG), no
# timer/TSC checks that only cost time in a VM, no crypto self-tests at boot
# (-0.5 s), PCI interrupt routing without ACPI (evaluating the interrupt link
# objects in AML took 0.15 s per virtio device; virtio uses MSI-X anyway;
# ACPI stays on for power-off), no PS/2 mouse probing.
BASE_CMDLINE: tuple[str, ...] = (
    "console=ttyS0", "quiet", "panic=-1", "mitigations=off", "tsc=reliable", "no_timer_check",
    "cryptomgr.notests", "acpi=noirq", "i8042.noaux", "i8042.nomux", "i8042.nopnp", "8250.nr_uarts=4",
)

# Under TCG: x86-64-v2 (SSE4.2, POPCNT: what RHEL 9-based images need), no
# AVX (whose larger FPU state makes the guest boot ~0.3 s slower than qemu64).
TCG_CPU_MODEL = "Nehalem"

# Under TCG: a cap on QEMU's translated-code cache (1 GiB by default, filled
# as the guest runs new code): a pod VM uses ~50 MiB of it after boot; the
# cap keeps a long-running pod from growing towards 1 GiB of RSS.
TCG_TB_CACHE_MIB = 128

MAX_IMAGE_DISKS = 20
UNIX_PATH_MAX = 108  # sun_path, including the terminating NUL

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$")
_CMDLINE_WORD = re.compile(r"^[A-Za-z0-9_.,:=/+-]+$")


@dataclass(frozen=True)
class PodDisk:
    """One disk as rendered (derived from the spec; see ``PodVmSpec.disks()``)."""

    path: Path
    target: str
    serial: str
    readonly: bool
    shared: bool  # never relabelled by libvirt
    cache: str | None = None


@dataclass(frozen=True)
class PodVmSpec:
    """Everything about one pod VM's domain.

    ``image_disks[i]`` is the disk with serial ``image<i>`` (a container's
    ``image`` index). ``console_log``, ``event_log`` and ``output_log`` are
    truncated when the domain starts. ``control_socket`` must be shorter than
    108 bytes (a unix socket path). ``metadata`` is rendered under our own
    namespace (owner keys; never secrets).
    """

    name: str
    uuid: str
    vcpus: int
    memory_mib: int
    accelerator: Accelerator
    kernel: PodKernel
    image_disks: tuple[Path, ...]
    scratch: Path
    config: Path
    console_log: Path
    event_log: Path
    output_log: Path
    control_socket: Path
    nic: NicSpec | None = None
    metadata: Mapping[str, str] = field(default_factory=dict, hash=False)
    extra_cmdline: tuple[str, ...] = ()
    loader_rom: Path = QBOOT_ROM
    # A virtio balloon that only reports the pages the guest freed, so that the host takes
    # them back (the pod kernel has its driver built in; Debian's would need a module).
    free_page_reporting: bool = False

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.name):
            raise SpecError(f"bad domain name {self.name!r}")
        try:
            object.__setattr__(self, "uuid", str(uuidlib.UUID(str(self.uuid))))
        except ValueError as exc:
            raise SpecError(f"bad domain uuid {self.uuid!r}") from exc
        if self.accelerator not in ("kvm", "tcg"):
            raise SpecError(f"accelerator must be 'kvm' or 'tcg', not {self.accelerator!r}")
        if not 1 <= self.vcpus <= 64:
            raise SpecError(f"vcpus must be 1-64, not {self.vcpus}")
        if not 64 <= self.memory_mib <= 1024 * 1024:
            raise SpecError(f"memory_mib must be at least 64, not {self.memory_mib}")
        object.__setattr__(self, "image_disks", tuple(Path(p) for p in self.image_disks))
        object.__setattr__(self, "extra_cmdline", tuple(self.extra_cmdline))
        if not self.image_disks:
            raise SpecError("a pod VM needs at least one image disk")
        if len(self.image_disks) > MAX_IMAGE_DISKS:
            raise SpecError(f"at most {MAX_IMAGE_DISKS} image disks, not {len(self.image_disks)}")
        paths = [
            (self.kernel.kernel, "kernel"), (self.kernel.initrd, "initrd"),
            *((p, f"image disk {i}") for i, p in enumerate(self.image_disks)),
            (self.scratch, "scratch"), (self.config, "config"), (self.console_log, "console_log"),
            (self.event_log, "event_log"), (self.output_log, "output_log"),
            (self.control_socket, "control_socket"), (self.loader_rom, "loader_rom"),
        ]
        for path, what in paths:
            if not Path(path).is_absolute():
                raise SpecError(f"{what} must be an absolute path, not {str(path)!r}")
            if any(c in str(path) for c in "\0\n\r"):
                raise SpecError(f"{what}: control characters in {str(path)!r}")
        logs = [self.console_log, self.event_log, self.output_log]
        if len(set(logs)) != len(logs):
            raise SpecError("console_log, event_log and output_log must be different files")
        if len(str(self.control_socket).encode()) >= UNIX_PATH_MAX:
            raise SpecError(f"control_socket path is {len(str(self.control_socket).encode())} bytes;"
                            f" a unix socket path must be under {UNIX_PATH_MAX}")
        for word in self.extra_cmdline:
            if not _CMDLINE_WORD.match(word):
                raise SpecError(f"bad kernel command line word {word!r}")
        for key, value in self.metadata.items():
            if not isinstance(key, str) or not isinstance(value, str) or not key:
                raise SpecError("metadata keys and values must be strings (keys non-empty)")
        object.__setattr__(self, "metadata", MappingProxyType(dict(sorted(self.metadata.items()))))

    @property
    def cmdline(self) -> str:
        return " ".join((*BASE_CMDLINE, *self.extra_cmdline))

    def disks(self) -> tuple[PodDisk, ...]:
        """config, scratch, then the images: virtio targets in that order."""
        disks = [
            PodDisk(self.config, "", "config", readonly=True, shared=False),
            PodDisk(self.scratch, "", "scratch", readonly=False, shared=False, cache="unsafe"),
            *(PodDisk(path, "", f"image{i}", readonly=True, shared=True)
              for i, path in enumerate(self.image_disks)),
        ]
        return tuple(PodDisk(d.path, _target(i), d.serial, d.readonly, d.shared, d.cache)
                     for i, d in enumerate(disks))


def _target(index: int) -> str:
    letters = string.ascii_lowercase
    if index < 26:
        return "vd" + letters[index]
    return "vd" + letters[index // 26 - 1] + letters[index % 26]


def render_podvm_xml(spec: PodVmSpec, *, templates_dir: Path = DEFAULT_TEMPLATES_DIR) -> str:
    """The libvirt domain XML for ``spec``."""
    return render_template(
        PODVM_TEMPLATE, templates_dir=templates_dir,
        spec=spec,
        disks=spec.disks(),
        domain_type="kvm" if spec.accelerator == "kvm" else "qemu",
        metadata_ns=METADATA_NS,
        metadata_prefix=METADATA_PREFIX,
        tcg_cpu_model=TCG_CPU_MODEL,
        tcg_tb_cache_mib=TCG_TB_CACHE_MIB,
    )
