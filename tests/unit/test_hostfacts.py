"""Host facts with a fake command runner and a fake /proc, /sys and /dev."""

from __future__ import annotations

import gzip
import json
import re
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hypervisor import hostfacts
from hypervisor.domain import QBOOT_ROM
from hypervisor.hostfacts import (
    HostFacts,
    LinuxProbe,
    detect_accelerator,
    detect_ovs_datapath,
    linux_boot_probe,
    probe_host,
    write_facts,
)
from hypervisor.podvm import initramfs
from hypervisor.podvm.domain import BASE_CMDLINE, TCG_CPU_MODEL
from hypervisor.proc import Completed, ProcessError

KVM_PROBE = (hostfacts.QEMU, "-accel", "kvm")
LINUX_PROBE = (hostfacts.QEMU, "-kernel")
MSR_ABORT = ("qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69\n"
             "qemu-system-x86_64: ../../target/i386/kvm/kvm.c:3183: kvm_buf_set_msrs: "
             "Assertion `ret == cpu->kvm_msr_buf->nmsrs' failed.\n")


Answer = Completed | ProcessError | Callable[[list[str]], Completed]


@dataclass
class FakeRunner:
    """Answers with the first entry whose words all appear in the command; records calls.

    An answer may be a function of the command (a fake guest, see ``LinuxGuest``).
    """

    answers: dict[tuple[str, ...], Answer]
    calls: list[list[str]] = field(default_factory=list)
    options: list[dict[str, object]] = field(default_factory=list)

    def __call__(self, cmd: Sequence[str], **options: object) -> Completed:
        self.calls.append(list(cmd))
        self.options.append(options)
        for words, answer in self.answers.items():
            if all(word in cmd for word in words):
                if isinstance(answer, ProcessError):
                    raise answer
                return answer if isinstance(answer, Completed) else answer(list(cmd))
        raise ProcessError(cmd, None, "", "", reason=f"not found: {cmd[0]}")


def parse_newc(archive: bytes) -> dict[str, tuple[int, bytes]]:
    """A newc cpio archive (gzip'd or not) as ``{name: (mode, data)}``; asserts its format."""
    if archive[:2] == b"\x1f\x8b":
        archive = gzip.decompress(archive)
    entries: dict[str, tuple[int, bytes]] = {}
    pos = 0
    while True:
        header = archive[pos:pos + 110]
        assert header[:6] == b"070701", f"bad newc magic at {pos}: {header[:6]!r}"
        fields = [int(header[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
        mode, filesize, namesize = fields[1], fields[6], fields[11]
        name = archive[pos + 110:pos + 110 + namesize]
        assert name.endswith(b"\0")
        pos += 110 + namesize
        pos += -pos % 4
        data = archive[pos:pos + filesize]
        assert len(data) == filesize
        pos += filesize
        pos += -pos % 4
        if name[:-1] == b"TRAILER!!!":
            assert archive[pos:].strip(b"\0") == b""
            return entries
        entries[name[:-1].decode()] = (mode, data)


@dataclass
class LinuxGuest:
    """A fake Linux guest: reads the probe's initramfs from the command and, when
    ``boots``, prints what its /init echoes (the marker) and powers off."""

    boots: bool = True
    entries: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    cmdline: list[str] = field(default_factory=list)

    def __call__(self, cmd: list[str]) -> Completed:
        self.cmdline = cmd
        self.entries = parse_newc(Path(cmd[cmd.index("-initrd") + 1]).read_bytes())
        init = self.entries["init"][1].decode()
        echoed = re.findall(r"^echo (\S+)$", init, re.MULTILINE)
        console = "".join(f"{line}\r\n" for line in echoed) if self.boots else ""
        return done(0, console + "[    1.50] reboot: Power down\r\n")


@pytest.fixture
def linux(tmp_path: Path) -> LinuxProbe:
    """A fake host kernel (not a bzImage: used as it is), its modules.dep, a fake static busybox."""
    boot = tmp_path / "boot"
    boot.mkdir()
    (boot / "vmlinuz-6.1.0-99-amd64").write_bytes(b"not a real kernel")
    modules = tmp_path / "modules"
    (modules / "6.1.0-99-amd64").mkdir(parents=True)
    (modules / "6.1.0-99-amd64/modules.dep").write_text("")
    busybox = tmp_path / "busybox"
    busybox.write_bytes(b"\x7fELF static busybox")
    firmware = tmp_path / "qboot.rom"
    firmware.write_bytes(b"\0" * 64)
    return LinuxProbe(boot_dir=boot, modules_root=modules, busybox=busybox, firmware=firmware,
                      timeout=45.0)


def done(rc: int = 0, stdout: str = "", stderr: str = "") -> Completed:
    return Completed(("fake",), rc, stdout, stderr)


@pytest.fixture
def fake_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "proc").mkdir(parents=True)
    (root / "proc/meminfo").write_text("MemTotal:       24684092 kB\nMemFree: 1 kB\n")
    (root / "dev").mkdir()
    (root / "dev/kvm").touch()
    (root / "sys/module").mkdir(parents=True)
    return root


def test_kvm_when_a_linux_guest_reaches_its_init(fake_root: Path, linux: LinuxProbe) -> None:
    guest = LinuxGuest()
    runner = FakeRunner({LINUX_PROBE: guest, KVM_PROBE: done(hostfacts.PROBE_EXIT_STATUS)})

    assert detect_accelerator(run_cmd=runner, dev_kvm=fake_root / "dev/kvm",
                              linux=linux) == ("kvm", "")

    tiny, boot = runner.calls
    assert "-kernel" not in tiny and tiny[tiny.index("-cpu"):][:2] == ["-cpu", "host"]
    # The pod VM's machine, firmware, kernel file, command line and KVM CPU model.
    assert boot[boot.index("-accel"):][:4] == ["-accel", "kvm", "-cpu", "host"]
    assert boot[boot.index("-machine") + 1] == "pc"
    assert boot[boot.index("-bios") + 1] == str(linux.firmware)
    assert Path(boot[boot.index("-kernel") + 1]).name == "vmlinuz"  # not PVH: the bzImage as is
    assert boot[boot.index("-append") + 1] == " ".join(BASE_CMDLINE)
    assert {"-no-reboot", "-nodefaults"} <= set(boot)
    assert boot[boot.index("-serial") + 1] == "stdio"
    assert runner.options[1]["timeout"] == 45.0
    assert runner.options[1]["input"] == ""  # never the caller's terminal


def test_the_probe_initramfs_is_a_newc_archive_with_an_executable_init(
        linux: LinuxProbe) -> None:
    guest = LinuxGuest()

    assert linux_boot_probe(linux, run_cmd=FakeRunner({LINUX_PROBE: guest})) == ""

    mode, init = guest.entries["init"]
    assert stat.S_ISREG(mode) and mode & 0o111 == 0o111
    assert init.startswith(b"#!/bin/busybox sh\n")
    marker = re.search(rb"^echo (\S+)$", init, re.MULTILINE)
    assert marker and marker.group(1).startswith(hostfacts.LINUX_PROBE_MARKER.encode())
    assert b"\npoweroff -f\n" in init
    busybox_mode, busybox = guest.entries["bin/busybox"]
    assert busybox == b"\x7fELF static busybox" and busybox_mode & 0o111
    assert stat.S_ISCHR(guest.entries["dev/console"][0])


def test_the_marker_differs_per_probe(linux: LinuxProbe) -> None:
    first, second = LinuxGuest(), LinuxGuest()
    linux_boot_probe(linux, run_cmd=FakeRunner({LINUX_PROBE: first}))
    linux_boot_probe(linux, run_cmd=FakeRunner({LINUX_PROBE: second}))

    assert first.entries["init"] != second.entries["init"]


def test_a_console_without_the_marker_is_not_a_boot(linux: LinuxProbe) -> None:
    error = linux_boot_probe(linux, run_cmd=FakeRunner({LINUX_PROBE: LinuxGuest(boots=False)}))

    assert error == ("a Linux guest did not boot under KVM: QEMU exited (rc=0) before the "
                     "guest's init ran: [ 1.50] reboot: Power down")


def test_tcg_probe_uses_the_lab_tcg_cpu(linux: LinuxProbe) -> None:
    guest = LinuxGuest()

    assert linux_boot_probe(linux, accel="tcg", run_cmd=FakeRunner({LINUX_PROBE: guest})) == ""
    cmd = guest.cmdline
    assert cmd[cmd.index("-accel") + 1].startswith("tcg")
    assert cmd[cmd.index("-cpu") + 1] == TCG_CPU_MODEL


KVM_INTERNAL_ERROR = ("KVM internal error. Suberror: 1\n"
                      "extra data[0]: 0x0000000000000000\n"
                      "emulation failure\n"
                      "RAX=0000000000000000 RBX=ffffffff82a03e80 RCX=0000000000000000\n"
                      "Code=f0 48 0f c7 0e <48> 89 c2\n")


@pytest.mark.parametrize("answer", [
    # QEMU stops the VM on an internal error but keeps running: killed at the deadline.
    ProcessError(["qemu"], None, "", KVM_INTERNAL_ERROR, reason="timed out after 45.0s"),
    done(1, "", KVM_INTERNAL_ERROR),
], ids=["hangs", "exits"])
def test_tcg_when_linux_hits_a_kvm_internal_error(fake_root: Path, linux: LinuxProbe,
                                                  answer: Answer) -> None:
    runner = FakeRunner({LINUX_PROBE: answer, KVM_PROBE: done(hostfacts.PROBE_EXIT_STATUS)})

    accel, error = detect_accelerator(run_cmd=runner, dev_kvm=fake_root / "dev/kvm", linux=linux)

    assert (accel, error) == ("tcg", "a Linux guest did not boot under KVM: "
                                     "KVM internal error (emulation failure)")


def test_other_kvm_internal_errors_name_the_suberror(linux: LinuxProbe) -> None:
    runner = FakeRunner({LINUX_PROBE: done(1, "", "KVM internal error. Suberror: 3\n")})

    assert linux_boot_probe(linux, run_cmd=runner) == \
        "a Linux guest did not boot under KVM: KVM internal error (suberror 3)"


@pytest.mark.parametrize(("stdout", "expected"), [
    ("", "a Linux guest did not boot under KVM: it printed nothing in 45 s"),
    ("SeaBIOS-less\r\n[    0.000000] Linux version 6.1.0\r\n",
     "a Linux guest did not boot under KVM: it did not reach its init in 45 s "
     "(last console line: [ 0.000000] Linux version 6.1.0)"),
])
def test_tcg_when_the_linux_guest_times_out(fake_root: Path, linux: LinuxProbe, stdout: str,
                                            expected: str) -> None:
    hung = ProcessError(["qemu"], None, stdout, "", reason="timed out after 45.0s")
    runner = FakeRunner({LINUX_PROBE: hung, KVM_PROBE: done(hostfacts.PROBE_EXIT_STATUS)})

    assert detect_accelerator(run_cmd=runner, dev_kvm=fake_root / "dev/kvm",
                              linux=linux) == ("tcg", expected)


def test_the_marker_counts_even_if_power_off_then_hangs(linux: LinuxProbe) -> None:
    def late(cmd: list[str]) -> Completed:
        marker = LinuxGuest()(cmd).stdout.splitlines()[0]
        raise ProcessError(cmd, None, marker + "\n", "", reason="timed out after 45.0s")

    assert linux_boot_probe(linux, run_cmd=FakeRunner({LINUX_PROBE: late})) == ""


def test_tcg_when_qemu_exits_before_init(linux: LinuxProbe) -> None:
    runner = FakeRunner({LINUX_PROBE: done(1, "", "qemu-system-x86_64: -bios x: "
                                                  "error: could not load PC BIOS\n")})

    assert linux_boot_probe(linux, run_cmd=runner) == (
        "a Linux guest did not boot under KVM: QEMU exited (rc=1) before the guest's init ran: "
        "qemu-system-x86_64: -bios x: error: could not load PC BIOS")


def test_tcg_without_a_kernel_boots_nothing(fake_root: Path, linux: LinuxProbe,
                                           tmp_path: Path) -> None:
    runner = FakeRunner({LINUX_PROBE: LinuxGuest(), KVM_PROBE: done(hostfacts.PROBE_EXIT_STATUS)})
    no_kernel = LinuxProbe(boot_dir=tmp_path / "empty-boot", modules_root=linux.modules_root,
                           busybox=linux.busybox, firmware=linux.firmware)

    accel, error = detect_accelerator(run_cmd=runner, dev_kvm=fake_root / "dev/kvm",
                                      linux=no_kernel)

    assert accel == "tcg"
    assert error.startswith("cannot verify KVM with a Linux boot: no readable ")
    assert "install linux-image-amd64" in error
    assert len(runner.calls) == 1  # the firmware probe only


def test_tcg_without_busybox(linux: LinuxProbe, tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(initramfs, "BUSYBOX_CANDIDATES", (tmp_path / "no-busybox",))
    runner = FakeRunner({LINUX_PROBE: LinuxGuest()})
    probe = LinuxProbe(boot_dir=linux.boot_dir, modules_root=linux.modules_root,
                       firmware=linux.firmware)

    assert linux_boot_probe(probe, run_cmd=runner) == (
        "cannot verify KVM with a Linux boot: no static busybox found; "
        "install the busybox-static package")
    assert runner.calls == []


def test_tcg_without_the_firmware(linux: LinuxProbe, tmp_path: Path) -> None:
    probe = LinuxProbe(boot_dir=linux.boot_dir, modules_root=linux.modules_root,
                       busybox=linux.busybox, firmware=tmp_path / "qboot.rom.missing")

    assert linux_boot_probe(probe, run_cmd=FakeRunner({})) == (
        f"cannot verify KVM with a Linux boot: {tmp_path / 'qboot.rom.missing'} is missing")


def test_the_default_probe_boots_what_pod_vms_boot() -> None:
    assert LinuxProbe().firmware == QBOOT_ROM
    assert LinuxProbe().boot_dir == initramfs.BOOT_DIR
    assert LinuxProbe().modules_root == initramfs.MODULES_ROOT


def test_tcg_when_kvm_init_aborts(fake_root: Path) -> None:
    runner = FakeRunner({KVM_PROBE: done(-6, "", MSR_ABORT)})

    accel, error = detect_accelerator(run_cmd=runner, dev_kvm=fake_root / "dev/kvm")

    assert accel == "tcg"
    assert "failed to set MSR 0x10a" in error
    assert len(runner.calls) == 1  # no Linux boot after the cheap probe failed


def test_tcg_when_the_probe_guest_does_not_finish(fake_root: Path) -> None:
    runner = FakeRunner({KVM_PROBE: done(0)})

    accel, error = detect_accelerator(run_cmd=runner, dev_kvm=fake_root / "dev/kvm")

    assert (accel, error) == ("tcg", "the KVM probe guest did not finish (qemu rc=0)")


def test_probe_firmware_jumps_to_the_exit_port() -> None:
    rom = hostfacts.probe_firmware()

    assert len(rom) == 64 * 1024
    assert rom[-16:-11] == bytes([0xB0, 0x31, 0xE6, 0xF4, 0xF4])
    assert hostfacts.PROBE_EXIT_STATUS == 99


def test_tcg_without_device_node_runs_nothing(tmp_path: Path) -> None:
    runner = FakeRunner({})

    accel, error = detect_accelerator(run_cmd=runner, dev_kvm=tmp_path / "kvm")

    assert accel == "tcg" and "does not exist" in error
    assert runner.calls == []


def test_tcg_when_the_probe_hangs(fake_root: Path) -> None:
    hung = ProcessError(["qemu"], None, "", "", reason="timed out after 30s")
    runner = FakeRunner({KVM_PROBE: hung})

    accel, error = detect_accelerator(run_cmd=runner, dev_kvm=fake_root / "dev/kvm")

    assert accel == "tcg" and "timed out" in error


@pytest.mark.parametrize(("module_dir", "modprobe_rc", "expected"), [
    (True, 1, "system"),
    (False, 0, "system"),
    (False, 1, "netdev"),
])
def test_ovs_datapath(fake_root: Path, module_dir: bool, modprobe_rc: int,
                      expected: str) -> None:
    if module_dir:
        (fake_root / "sys/module/openvswitch").mkdir()
    runner = FakeRunner({("modprobe",): done(modprobe_rc)})

    assert detect_ovs_datapath(run_cmd=runner, sys_module=fake_root / "sys/module") == expected


def test_ovs_datapath_without_modprobe(fake_root: Path) -> None:
    assert detect_ovs_datapath(run_cmd=FakeRunner({}),
                               sys_module=fake_root / "sys/module") == "netdev"


def test_probe_host_collects_everything(fake_root: Path, tmp_path: Path) -> None:
    runner = FakeRunner({
        ("libvirtd", "--version"): done(0, "libvirtd (libvirt) 9.0.0\n"),
        (hostfacts.QEMU, "--version"): done(0, "QEMU emulator version 7.2.22 (Debian)\nCopyright\n"),
        KVM_PROBE: done(-6, "", MSR_ABORT),
        ("modprobe",): done(1),
    })

    facts = probe_host(tmp_path / "not-yet-created", run_cmd=runner, root=fake_root)

    assert isinstance(facts, HostFacts)
    assert facts.accelerator == "tcg"
    assert facts.ovs_datapath == "netdev"
    assert facts.libvirt_version == "9.0.0"
    assert facts.qemu_version == "7.2.22"
    assert facts.memory_bytes == 24684092 * 1024
    assert facts.cpus >= 1
    assert facts.disk_total_bytes >= facts.disk_free_bytes > 0
    assert set(facts.to_dict()) >= {"hostname", "accelerator", "kvm_error", "kernel_version"}


def test_missing_tools_give_no_versions(fake_root: Path, tmp_path: Path) -> None:
    facts = probe_host(tmp_path, run_cmd=FakeRunner({}), root=fake_root)

    assert facts.libvirt_version is None and facts.qemu_version is None
    assert facts.accelerator == "tcg"


def _facts(**changes: object) -> dict[str, object]:
    base: dict[str, object] = {"hostname": "h", "accelerator": "tcg",
                               "disk_free_bytes": 100, "memory_bytes": 1}
    return {**base, **changes}


def test_write_facts_changes_only_on_stable_keys(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "facts.json"

    assert write_facts(path, _facts()) is True
    assert write_facts(path, _facts()) is False
    assert write_facts(path, _facts(disk_free_bytes=50)) is False
    assert json.loads(path.read_text())["disk_free_bytes"] == 50  # volatile, but fresh
    assert write_facts(path, _facts(accelerator="kvm")) is True
    assert [p.name for p in path.parent.iterdir()] == ["facts.json"]  # no temp files left


def test_write_facts_replaces_garbage(tmp_path: Path) -> None:
    path = tmp_path / "facts.json"
    path.write_text("not json")

    assert write_facts(path, _facts()) is True
    assert json.loads(path.read_text()) == _facts()


def test_main_prints_changed_marker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    fake = HostFacts(hostname="h", cpus=2, memory_bytes=1, disk_path=str(tmp_path),
                     disk_total_bytes=10, disk_free_bytes=5, accelerator="tcg",
                     kvm_error="no", ovs_datapath="netdev", libvirt_version="9.0.0",
                     qemu_version="7.2.0", kernel_version="6.1")
    monkeypatch.setattr(hostfacts, "probe_host", lambda *_a, **_k: fake)
    out = tmp_path / "facts.json"

    assert hostfacts.main(["--out", str(out)]) == 0
    first = json.loads(capsys.readouterr().out)
    assert hostfacts.main(["--out", str(out)]) == 0
    second = json.loads(capsys.readouterr().out)

    assert first["changed"] is True and second["changed"] is False
    assert json.loads(out.read_text()) == fake.to_dict()


def test_probe_host_boots_the_kernels_under_its_root(fake_root: Path) -> None:
    runner = FakeRunner({LINUX_PROBE: LinuxGuest(), KVM_PROBE: done(hostfacts.PROBE_EXIT_STATUS)})

    facts = probe_host(fake_root, run_cmd=runner, root=fake_root)  # fake_root has no /boot

    assert facts.accelerator == "tcg"
    assert facts.kvm_error.startswith(f"cannot verify KVM with a Linux boot: no readable "
                                      f"{fake_root / 'boot'}/vmlinuz-*")
