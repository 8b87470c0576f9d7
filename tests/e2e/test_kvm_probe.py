"""The KVM probe on this host: its Linux boot really boots, and the verdict is honest.

The Linux boot probe is only worth trusting if its kernel, initramfs and
firmware path really reach the marker. That is checked here under TCG
(every host has it): the same command the probe runs under KVM, with
``-accel tcg`` and the lab's TCG CPU model. Then ``detect_accelerator()``
is run for real and must agree with its two probes (on the build machines
the paravirtual KVM fails the firmware probe at once: TCG, with QEMU's own
error as the reason). No QEMU the probes start may outlive them.

The timing of the TCG boot is printed, never asserted beyond the deadline.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from hypervisor.hostfacts import (
    LinuxProbe,
    detect_accelerator,
    firmware_probe,
    linux_boot_probe,
)
from hypervisor.proc import Completed, run

pytestmark = pytest.mark.e2e

TCG_DEADLINE = 40.0


@dataclass
class Recorder:
    """The real runner, remembering each command and how long it took."""

    calls: list[list[str]] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    def __call__(self, cmd: Sequence[str], **options: object) -> Completed:
        self.calls.append(list(cmd))
        started = time.monotonic()
        try:
            return run(cmd, **options)  # type: ignore[arg-type]
        finally:
            self.seconds.append(time.monotonic() - started)

    def kernels(self) -> list[str]:
        return [cmd[cmd.index("-kernel") + 1] for cmd in self.calls if "-kernel" in cmd]


def running_with(path: str) -> str:
    """Processes whose command line mentions ``path`` (pgrep's own lines)."""
    found = subprocess.run(["pgrep", "-a", "-f", path], capture_output=True, text=True,
                           timeout=10)
    return found.stdout.strip()


def test_the_linux_probe_boots_under_tcg() -> None:
    runner = Recorder()
    started = time.monotonic()

    error = linux_boot_probe(LinuxProbe(timeout=TCG_DEADLINE), accel="tcg", run_cmd=runner)

    total = time.monotonic() - started
    assert error == ""
    [kernel] = runner.kernels()
    assert running_with(kernel) == ""
    print(f"\n[kvm probe] Linux boot probe under TCG: {total:.2f} s in all, "
          f"QEMU {runner.seconds[0]:.2f} s (kernel and initramfs prepared in "
          f"{total - runner.seconds[0]:.2f} s)")


def test_the_linux_probe_kills_qemu_at_its_deadline() -> None:
    runner = Recorder()

    error = linux_boot_probe(LinuxProbe(timeout=0.5), accel="tcg", run_cmd=runner)

    assert error.startswith("a Linux guest did not boot under TCG: ")
    assert " in 0.5 s" in error
    [kernel] = runner.kernels()
    assert running_with(kernel) == ""
    assert runner.seconds[0] < 10


def test_detect_accelerator_agrees_with_its_probes() -> None:
    runner = Recorder()

    accelerator, reason = detect_accelerator(run_cmd=runner)

    firmware_error = firmware_probe()
    if firmware_error:  # the build machines: "failed to set MSR 0x10a"
        assert (accelerator, reason) == ("tcg", firmware_error)
        assert runner.kernels() == []  # no Linux boot after the cheap probe failed
    else:
        linux_error = linux_boot_probe()
        assert (accelerator, reason) == (("tcg", linux_error) if linux_error else ("kvm", ""))
    assert "\n" not in reason
    for kernel in runner.kernels():
        assert running_with(kernel) == ""
    print(f"\n[kvm probe] this host: {accelerator} ({reason or 'KVM boots Linux'})")
