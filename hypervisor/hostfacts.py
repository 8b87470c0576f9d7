"""What this host can do, measured rather than assumed.

``probe_host()`` returns a ``HostFacts``. The accelerator is decided by
really starting QEMU with ``-accel kvm`` (a device node that exists is not
proof: some kernels only offer a paravirtual KVM that ordinary guests cannot
use). The Open vSwitch datapath is ``system`` only when the kernel module is
loaded or loadable, otherwise the userspace ``netdev`` datapath must be used.

``python -m hypervisor.hostfacts --out FILE`` writes the facts as JSON,
atomically and only when a stable fact changed, and prints one JSON line
``{"changed": ..., "path": ...}`` for the caller (an Ansible task).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hypervisor.proc import Completed, ProcessError, run

QEMU = "qemu-system-x86_64"
KVM_PROBE_TIMEOUT = 30.0
VERSION_TIMEOUT = 15.0

# Facts that change from one run to the next; they are written but do not
# count as a change of the facts file.
VOLATILE_KEYS = frozenset({"disk_free_bytes"})

RunCommand = Callable[..., Completed]


@dataclass(frozen=True)
class HostFacts:
    hostname: str
    cpus: int
    memory_bytes: int
    disk_path: str
    disk_total_bytes: int
    disk_free_bytes: int
    accelerator: str  # "kvm" or "tcg"
    kvm_error: str  # why KVM is unusable; empty when accelerator == "kvm"
    ovs_datapath: str  # "system" (kernel module) or "netdev" (userspace)
    libvirt_version: str | None
    qemu_version: str | None
    kernel_version: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def probe_host(disk_path: Path = Path("/"), *, run_cmd: RunCommand = run,
               root: Path = Path("/")) -> HostFacts:
    """Measure this host. ``run_cmd`` and ``root`` exist so tests can fake the host."""
    accelerator, kvm_error = detect_accelerator(run_cmd=run_cmd, dev_kvm=root / "dev/kvm")
    total, free = _disk_usage(disk_path)
    return HostFacts(
        hostname=socket.gethostname(),
        cpus=_cpu_count(),
        memory_bytes=_memory_bytes(root / "proc/meminfo"),
        disk_path=str(disk_path),
        disk_total_bytes=total,
        disk_free_bytes=free,
        accelerator=accelerator,
        kvm_error=kvm_error,
        ovs_datapath=detect_ovs_datapath(run_cmd=run_cmd, sys_module=root / "sys/module"),
        libvirt_version=_version(run_cmd, ["libvirtd", "--version"], r"(\d+\.\d+\.\d+)\s*$"),
        qemu_version=_version(run_cmd, [QEMU, "--version"], r"version (\d+\.\d+\.\d+)"),
        kernel_version=os.uname().release,
    )


# -- accelerator -------------------------------------------------------

# The probe guest is a 64 KiB firmware image whose reset vector (the last 16
# bytes) runs ``mov al, 0x31; out 0xf4, al; hlt``. With an ``isa-debug-exit``
# device on port 0xf4, QEMU then exits with status (0x31 << 1) | 1 = 99: that
# status proves the vCPU really executed guest code under KVM.
#
# ``-cpu host`` matters: some paravirtual KVM flavours run the default
# ``qemu64`` model far enough for firmware but hang any real guest kernel,
# while they refuse ``-cpu host`` at once ("failed to set MSR 0x10a").
_PROBE_EXIT_PORT = 0xF4
_PROBE_EXIT_VALUE = 0x31
PROBE_EXIT_STATUS = (_PROBE_EXIT_VALUE << 1) | 1
_ROM_SIZE = 64 * 1024
_RESET_VECTOR = _ROM_SIZE - 16
_HLT = 0xF4


def probe_firmware() -> bytes:
    code = bytes([0xB0, _PROBE_EXIT_VALUE,  # mov al, 0x31
                  0xE6, _PROBE_EXIT_PORT,  # out 0xf4, al
                  _HLT])
    rom = bytearray([_HLT]) * _ROM_SIZE
    rom[_RESET_VECTOR:_RESET_VECTOR + len(code)] = code
    return bytes(rom)


def kvm_probe_command(firmware: Path, qemu: str = QEMU) -> list[str]:
    # A broken KVM makes QEMU abort(); keep that from leaving a core file behind.
    no_core = ["prlimit", "--core=0", "--"] if shutil.which("prlimit") else []
    return [*no_core, qemu, "-accel", "kvm", "-cpu", "host", "-machine", "pc", "-m", "16",
            "-nodefaults", "-no-user-config", "-display", "none", "-bios", str(firmware),
            "-device", f"isa-debug-exit,iobase={_PROBE_EXIT_PORT:#x},iosize=0x04"]


def detect_accelerator(*, run_cmd: RunCommand = run, dev_kvm: Path = Path("/dev/kvm"),
                       timeout: float = KVM_PROBE_TIMEOUT) -> tuple[str, str]:
    """Return ``("kvm", "")`` if a guest really runs under KVM, else ``("tcg", reason)``."""
    if not dev_kvm.exists():
        return "tcg", f"{dev_kvm} does not exist"
    if not os.access(dev_kvm, os.R_OK | os.W_OK):
        return "tcg", f"{dev_kvm} is not readable and writable"
    with tempfile.TemporaryDirectory(prefix="kvm-probe-") as tmp:
        firmware = Path(tmp) / "probe.rom"
        firmware.write_bytes(probe_firmware())
        try:
            done = run_cmd(kvm_probe_command(firmware), check=False, timeout=timeout)
        except ProcessError as exc:
            return "tcg", f"KVM probe failed: {exc.reason or exc}"
    error = _kvm_probe_error(done)
    return ("tcg", error) if error else ("kvm", "")


def _kvm_probe_error(done: Completed) -> str:
    if done.rc == PROBE_EXIT_STATUS:
        return ""
    stderr = [line.strip() for line in done.stderr.splitlines() if line.strip()]
    errors = [line for line in stderr if "error" in line.lower()]
    if errors or stderr:
        return (errors or stderr)[-1][:500]
    return f"the KVM probe guest did not finish (qemu rc={done.rc})"


# -- Open vSwitch ------------------------------------------------------

def detect_ovs_datapath(*, run_cmd: RunCommand = run,
                        sys_module: Path = Path("/sys/module")) -> str:
    """``system`` when the openvswitch kernel module is loaded or loadable, else ``netdev``."""
    if (sys_module / "openvswitch").is_dir():
        return "system"
    try:
        done = run_cmd(["modprobe", "--dry-run", "--quiet", "openvswitch"], check=False,
                       timeout=VERSION_TIMEOUT)
    except ProcessError:
        return "netdev"
    return "system" if done.rc == 0 else "netdev"


# -- small facts -------------------------------------------------------

def _version(run_cmd: RunCommand, cmd: Sequence[str], pattern: str) -> str | None:
    try:
        done = run_cmd(list(cmd), check=False, timeout=VERSION_TIMEOUT)
    except ProcessError:
        return None
    first = (done.stdout.strip().splitlines() or [""])[0]
    match = re.search(pattern, first)
    return match.group(1) if done.rc == 0 and match else None


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) or os.cpu_count() or 1


def _memory_bytes(meminfo: Path) -> int:
    for line in meminfo.read_text().splitlines():
        key, _, value = line.partition(":")
        if key == "MemTotal":
            return int(value.split()[0]) * 1024
    raise ValueError(f"{meminfo}: no MemTotal line")


def _disk_usage(path: Path) -> tuple[int, int]:
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    usage = shutil.disk_usage(existing)
    return usage.total, usage.free


# -- facts file --------------------------------------------------------

def stable_view(facts: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in facts.items() if key not in VOLATILE_KEYS}


def write_facts(path: Path, facts: Mapping[str, Any]) -> bool:
    """Write ``facts`` as JSON atomically; return whether a stable fact changed.

    Volatile facts are refreshed on every call but never count as a change.
    """
    previous = _read_json(path)
    changed = previous is None or stable_view(previous) != stable_view(facts)
    if previous != dict(facts):
        _atomic_write(path, json.dumps(dict(facts), indent=2, sort_keys=True) + "\n")
    return changed


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        loaded = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return loaded if isinstance(loaded, dict) else None


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hypervisor.hostfacts",
                                     description="Probe this host and write its facts as JSON.")
    parser.add_argument("--out", type=Path, required=True, help="facts file to (re)write")
    parser.add_argument("--disk-path", type=Path, default=None,
                        help="path whose file system is measured (default: the --out directory)")
    args = parser.parse_args(argv)
    facts = probe_host(args.disk_path or args.out.parent).to_dict()
    changed = write_facts(args.out, facts)
    print(json.dumps({"changed": changed, "path": str(args.out), "facts": facts}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
