"""What the guest kernel's Spectre/Meltdown mitigations cost under QEMU's emulator (TCG).

    python benchmarks/tcg_mitigations.py [--kernel /boot/vmlinuz-...] [--rounds 3] [--out FILE]

Boots a Linux kernel under TCG (CPU model Nehalem, as the lab's VMs use without KVM) with a
busybox initramfs, twice per round: with the kernel's default mitigations and with
``mitigations=off``. Inside, the guest times 40,000 one-byte ``dd`` system calls and 100
fork+exec of ``/bin/true`` (from ``/proc/uptime``), and reports what the kernel says of
Meltdown. The figures are the medians over the rounds, and their ratio.

Why it matters: an emulated CPU never executes speculatively, so the mitigations protect
nothing there, while page-table isolation switches page tables on every system call and
each switch flushes TCG's software TLB. The lab boots its VMs with ``mitigations=off``
under TCG only (``hypervisor.domain.tcg_cmdline``, the Vagrantfile for the box).

Needs qemu-system-x86_64 and busybox (Debian's busybox or busybox-static) on this host.
"""

from __future__ import annotations

import argparse
import glob
import gzip
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

INIT = """#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox mount -t devtmpfs dev /dev
/bin/busybox --install -s /bin
echo "MELTDOWN $(cat /sys/devices/system/cpu/vulnerabilities/meltdown)"
echo "T0 $(cut -d' ' -f1 /proc/uptime)"
dd if=/dev/zero of=/dev/null bs=1 count=20000 2>/dev/null
echo "T1 $(cut -d' ' -f1 /proc/uptime)"
i=0; while [ $i -lt 100 ]; do /bin/true; i=$((i+1)); done
echo "T2 $(cut -d' ' -f1 /proc/uptime)"
poweroff -f
"""
BOOT_TIMEOUT = 300.0


def _cpio_newc(files: dict[str, tuple[int, bytes]]) -> bytes:
    """A newc cpio archive of ``name -> (mode, data)`` (directories have no data)."""
    out = bytearray()
    for ino, (name, (mode, data)) in enumerate([*files.items(), ("TRAILER!!!", (0, b""))], 1):
        raw = name.encode() + b"\0"
        header = "070701" + "".join(f"{v:08x}" for v in (
            ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(raw), 0))
        out += header.encode() + raw
        out += b"\0" * (-len(out) % 4)
        out += data
        out += b"\0" * (-len(out) % 4)
    return bytes(out)


def initramfs(busybox: Path) -> bytes:
    files = {d: (0o040755, b"") for d in ("bin", "proc", "sys", "dev")}
    files["bin/busybox"] = (0o100755, busybox.read_bytes())
    files["init"] = (0o100755, INIT.encode())
    return gzip.compress(_cpio_newc(files), compresslevel=1)


def boot(kernel: Path, initrd: Path, extra: str) -> dict[str, float | str]:
    argv = ["qemu-system-x86_64", "-accel", "tcg", "-cpu", "Nehalem", "-smp", "1", "-m", "256",
            "-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio",
            "-kernel", str(kernel), "-initrd", str(initrd),
            "-append", f"console=ttyS0 quiet rdinit=/init {extra}".strip()]
    out = subprocess.run(argv, capture_output=True, timeout=BOOT_TIMEOUT, check=False,
                         stdin=subprocess.DEVNULL).stdout.decode(errors="replace")
    marks = dict(re.findall(r"^(T\d) ([0-9.]+)\s*$", out, re.M))
    meltdown = re.search(r"MELTDOWN (.*?)\s*$", out, re.M)
    if len(marks) != 3 or meltdown is None:
        raise SystemExit(f"the guest did not report its timings:\n{out[-2000:]}")
    return {"syscalls_40k_s": round(float(marks["T1"]) - float(marks["T0"]), 3),
            "fork_exec_100_s": round(float(marks["T2"]) - float(marks["T1"]), 3),
            "meltdown": meltdown.group(1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    kernels = sorted(glob.glob("/boot/vmlinuz-*"))
    parser.add_argument("--kernel", type=Path, default=Path(kernels[-1]) if kernels else None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    busybox = shutil.which("busybox")
    if args.kernel is None or busybox is None:
        raise SystemExit("needs a kernel (--kernel, or /boot/vmlinuz-*) and busybox")
    with tempfile.TemporaryDirectory(prefix="tcg-mitigations-") as tmp:
        initrd = Path(tmp) / "init.gz"
        initrd.write_bytes(initramfs(Path(busybox)))
        runs: dict[str, list[dict[str, float | str]]] = {"default": [], "mitigations=off": []}
        for _ in range(args.rounds):
            for name in runs:
                runs[name].append(boot(args.kernel, initrd, "" if name == "default" else name))
    result: dict[str, object] = {"kernel": str(args.kernel), "rounds": args.rounds}
    for name, samples in runs.items():
        result[name] = {key: statistics.median(float(s[key]) for s in samples)  # type: ignore[arg-type]
                        for key in ("syscalls_40k_s", "fork_exec_100_s")}
        result[name]["meltdown"] = samples[0]["meltdown"]  # type: ignore[index]
    for key in ("syscalls_40k_s", "fork_exec_100_s"):
        off = result["mitigations=off"][key]  # type: ignore[index]
        result[f"{key}_ratio_default_to_off"] = round(result["default"][key] / off, 1) \
            if off else None  # type: ignore[index]
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    sys.exit(main())
