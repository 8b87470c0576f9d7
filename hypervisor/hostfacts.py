"""What this host can do, measured rather than assumed.

``probe_host()`` returns a ``HostFacts``. The accelerator is decided by
really starting QEMU with ``-accel kvm`` (a device node that exists is not
proof: some kernels only offer a paravirtual KVM that ordinary guests cannot
use), in two steps: a 64 KiB firmware that only runs three instructions
(cheap, and enough to catch a KVM that cannot start a vCPU at all), then the
pod VM's own Linux kernel, machine, firmware (qboot), CPU model and command
line with a tiny busybox initramfs, which must print a marker from its
``/init`` within a deadline (a KVM can pass the first step and still stop
every Linux guest with "KVM internal error" or hang it). KVM is used only
when both pass; otherwise TCG, with the reason in ``kvm_error``. The Open
vSwitch datapath is ``system`` only when the kernel module is
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
import secrets
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hypervisor.domain import QBOOT_ROM
from hypervisor.podvm.domain import BASE_CMDLINE, TCG_CPU_MODEL, TCG_TB_CACHE_MIB
from hypervisor.podvm.initramfs import (
    BOOT_DIR,
    MODULES_ROOT,
    BuiltVmlinux,
    InitramfsError,
    PodKernel,
    init_script,
    pod_kernel,
)
from hypervisor.proc import Completed, ProcessError, run

QEMU = "qemu-system-x86_64"
KVM_PROBE_TIMEOUT = 30.0
# The probe's Linux guest powers off ~2 s after QEMU starts under TCG on the
# build machines (less under KVM). A broken KVM usually hangs the guest (on
# "KVM internal error" QEMU stops the VM but does not exit), so this deadline
# is also what probing such a host costs.
LINUX_PROBE_TIMEOUT = 45.0
LINUX_PROBE_MEMORY_MIB = 128
LINUX_PROBE_MARKER = "pacific-lab-linux-probe-ok"
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
               root: Path = Path("/"), linux: LinuxProbe | None = None) -> HostFacts:
    """Measure this host. ``run_cmd`` and ``root`` exist so tests can fake the host.

    ``linux`` defaults to the kernels under ``root``, the host's busybox and qboot.
    """
    linux = linux or LinuxProbe(boot_dir=root / "boot", modules_root=root / "lib/modules")
    accelerator, kvm_error = detect_accelerator(run_cmd=run_cmd, dev_kvm=root / "dev/kvm",
                                                linux=linux)
    total, free = _disk_usage(disk_path)
    return HostFacts(
        hostname=socket.gethostname(),
        cpus=_cpu_count(),
        memory_bytes=memory_bytes(root / "proc/meminfo"),
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
                       timeout: float = KVM_PROBE_TIMEOUT,
                       linux: LinuxProbe | None = None) -> tuple[str, str]:
    """Return ``("kvm", "")`` if a Linux guest really runs under KVM, else ``("tcg", reason)``.

    First the tiny firmware probe (``timeout``), then, only if it passed, the
    Linux boot probe (``linux_boot_probe(linux)``, with ``linux.timeout``).
    """
    if not dev_kvm.exists():
        return "tcg", f"{dev_kvm} does not exist"
    if not os.access(dev_kvm, os.R_OK | os.W_OK):
        return "tcg", f"{dev_kvm} is not readable and writable"
    error = firmware_probe(run_cmd=run_cmd, timeout=timeout)
    if not error:
        error = linux_boot_probe(linux, run_cmd=run_cmd)
    return ("tcg", error) if error else ("kvm", "")


def firmware_probe(*, run_cmd: RunCommand = run, timeout: float = KVM_PROBE_TIMEOUT) -> str:
    """Run the 64 KiB probe firmware under KVM: ``""`` if it ran, else a one-line reason."""
    with tempfile.TemporaryDirectory(prefix="kvm-probe-") as tmp:
        firmware = Path(tmp) / "probe.rom"
        firmware.write_bytes(probe_firmware())
        try:
            done = run_cmd(kvm_probe_command(firmware), check=False, timeout=timeout)
        except ProcessError as exc:
            return f"KVM probe failed: {exc.reason or exc}"
    return _kvm_probe_error(done)


def _kvm_probe_error(done: Completed) -> str:
    if done.rc == PROBE_EXIT_STATUS:
        return ""
    stderr = [line.strip() for line in done.stderr.splitlines() if line.strip()]
    errors = [line for line in stderr if "error" in line.lower()]
    if errors or stderr:
        return (errors or stderr)[-1][:500]
    return f"the KVM probe guest did not finish (qemu rc={done.rc})"


# -- accelerator: a Linux boot -----------------------------------------

@dataclass(frozen=True)
class LinuxProbe:
    """What the Linux boot probe boots: a pod VM's kernel, machine and firmware.

    The kernel is chosen and prepared exactly as for pod VMs
    (``hypervisor.podvm.initramfs.pod_kernel``: the newest
    ``boot_dir/vmlinuz-*`` with modules under ``modules_root``, unpacked to
    its PVH ``vmlinux`` when it has one); ``busybox`` None means the host's
    static busybox (``find_busybox()``).
    """

    boot_dir: Path = BOOT_DIR
    modules_root: Path = MODULES_ROOT
    busybox: Path | None = None
    firmware: Path = QBOOT_ROM
    timeout: float = LINUX_PROBE_TIMEOUT
    memory_mib: int = LINUX_PROBE_MEMORY_MIB
    built: BuiltVmlinux | None = None  # the pod kernel, when pod VMs boot it (not Debian's)


def linux_probe_init(marker: str) -> str:
    """The probe guest's /init: print ``marker`` on the console, then power off."""
    return init_script(f"echo {marker}\npoweroff -f\necho o > /proc/sysrq-trigger\n")


def linux_probe_command(kernel: PodKernel, *, accel: str, firmware: Path,
                        memory_mib: int = LINUX_PROBE_MEMORY_MIB, qemu: str = QEMU) -> list[str]:
    """QEMU booting ``kernel`` as a pod VM would (machine ``pc``, qboot, the pod
    command line, the CPU model the lab gives pod VMs under ``accel``), its
    console (ttyS0) on stdout; the guest's reboot or panic ends QEMU."""
    if accel == "kvm":
        accel_args = ["-accel", "kvm", "-cpu", "host"]  # <cpu mode='host-passthrough'>
    elif accel == "tcg":
        accel_args = ["-accel", f"tcg,tb-size={TCG_TB_CACHE_MIB}", "-cpu", TCG_CPU_MODEL]
    else:
        raise ValueError(f"accel must be 'kvm' or 'tcg', not {accel!r}")
    no_core = ["prlimit", "--core=0", "--"] if shutil.which("prlimit") else []
    return [*no_core, qemu, *accel_args, "-machine", "pc", "-m", str(memory_mib), "-smp", "1",
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-bios", str(firmware), "-kernel", str(kernel.kernel), "-initrd", str(kernel.initrd),
            "-append", " ".join(BASE_CMDLINE), "-serial", "stdio"]


def linux_boot_probe(probe: LinuxProbe | None = None, *, accel: str = "kvm",
                     run_cmd: RunCommand = run) -> str:
    """Boot the pod VM kernel under ``accel`` to a marker printed by its /init.

    Returns ``""`` when the marker appeared on the console within
    ``probe.timeout`` seconds, else a one-line reason. QEMU is killed at the
    deadline. When the kernel, busybox or firmware is missing nothing is
    booted and the reason says what is missing ("cannot verify ...").
    """
    probe = probe or LinuxProbe()
    what = "KVM" if accel == "kvm" else accel.upper()
    if not probe.firmware.is_file():
        return f"cannot verify {what} with a Linux boot: {probe.firmware} is missing"
    if probe.busybox is not None and not probe.busybox.is_file():
        return f"cannot verify {what} with a Linux boot: {probe.busybox} is missing"
    marker = f"{LINUX_PROBE_MARKER}-{secrets.token_hex(8)}"
    with tempfile.TemporaryDirectory(prefix="pacific-linux-probe-") as tmp:
        try:
            kernel = pod_kernel(Path(tmp), boot_dir=probe.boot_dir,
                                modules_root=probe.modules_root, busybox=probe.busybox,
                                init_text=linux_probe_init(marker), modules=(), built=probe.built)
        except (InitramfsError, OSError) as exc:
            return f"cannot verify {what} with a Linux boot: {_one_line(str(exc))}"
        cmd = linux_probe_command(kernel, accel=accel, firmware=probe.firmware,
                                  memory_mib=probe.memory_mib)
        try:
            done = run_cmd(cmd, check=False, timeout=probe.timeout, input="")
        except ProcessError as exc:
            timed_out = exc.rc is None and exc.reason.startswith("timed out")
            if not timed_out and not exc.stdout and not exc.stderr:
                return f"a Linux guest did not boot under {what}: QEMU did not run: {exc.reason}"
            return _linux_probe_error(marker, what, None, exc.stdout, exc.stderr, probe.timeout)
    return _linux_probe_error(marker, what, done.rc, done.stdout, done.stderr, probe.timeout)


def _linux_probe_error(marker: str, what: str, rc: int | None, stdout: str, stderr: str,
                       timeout: float) -> str:
    """``""`` if the marker line is on the console, else why not (``rc`` None: timed out)."""
    console = [line.strip() for line in stdout.splitlines() if line.strip()]
    if marker in console:
        return ""
    prefix = f"a Linux guest did not boot under {what}: "
    errors = [line.strip() for line in stderr.splitlines() if line.strip()]
    text = f"{stderr}\n{stdout}"
    if "KVM internal error" in text:
        if "emulation failure" in text:
            return prefix + "KVM internal error (emulation failure)"
        suberror = re.search(r"KVM internal error\. Suberror: (\d+)", text)
        return prefix + "KVM internal error" + (f" (suberror {suberror.group(1)})" if suberror else "")
    if rc is None:
        if console:
            return prefix + _one_line(f"it did not reach its init in {timeout:g} s "
                                      f"(last console line: {console[-1][:160]})")
        return prefix + f"it printed nothing in {timeout:g} s"
    failed = [line for line in errors if "error" in line.lower()] or errors or console
    detail = f": {failed[-1][:300]}" if failed else ""
    return prefix + _one_line(f"QEMU exited (rc={rc}) before the guest's init ran{detail}")


def _one_line(text: str) -> str:
    return " ".join(text.split())[:500]


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


def memory_bytes(meminfo: Path = Path("/proc/meminfo")) -> int:
    """MemTotal of ``meminfo``, in bytes."""
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
    parser.add_argument("--linux-probe-timeout", type=float, default=LINUX_PROBE_TIMEOUT,
                        metavar="SECONDS",
                        help="how long a Linux guest may take to boot under KVM before KVM is"
                             " not trusted (default: %(default)s)")
    parser.add_argument("--pod-kernel-cache", type=Path, default=None, metavar="DIR",
                        help="where the pod kernel is built (hypervisor.podvm.kernelbuild): the"
                             " Linux probe boots it when it is there, else Debian's kernel")
    args = parser.parse_args(argv)
    built = None
    if args.pod_kernel_cache is not None:
        from hypervisor.podvm.kernelbuild import pod_kernel_choice

        built = pod_kernel_choice(args.pod_kernel_cache).built
    facts = probe_host(args.disk_path or args.out.parent,
                       linux=LinuxProbe(timeout=args.linux_probe_timeout, built=built)).to_dict()
    changed = write_facts(args.out, facts)
    print(json.dumps({"changed": changed, "path": str(args.out), "facts": facts}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
