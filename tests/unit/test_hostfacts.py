"""Host facts with a fake command runner and a fake /proc, /sys and /dev."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hypervisor import hostfacts
from hypervisor.hostfacts import (
    HostFacts,
    detect_accelerator,
    detect_ovs_datapath,
    probe_host,
    write_facts,
)
from hypervisor.proc import Completed, ProcessError

KVM_PROBE = (hostfacts.QEMU, "-accel", "kvm")
MSR_ABORT = ("qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69\n"
             "qemu-system-x86_64: ../../target/i386/kvm/kvm.c:3183: kvm_buf_set_msrs: "
             "Assertion `ret == cpu->kvm_msr_buf->nmsrs' failed.\n")


@dataclass
class FakeRunner:
    """Answers with the first entry whose words all appear in the command; records calls."""

    answers: dict[tuple[str, ...], Completed | ProcessError]
    calls: list[list[str]] = field(default_factory=list)

    def __call__(self, cmd: Sequence[str], **_: object) -> Completed:
        self.calls.append(list(cmd))
        for words, answer in self.answers.items():
            if all(word in cmd for word in words):
                if isinstance(answer, ProcessError):
                    raise answer
                return answer
        raise ProcessError(cmd, None, "", "", reason=f"not found: {cmd[0]}")


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


def test_kvm_when_qemu_runs_a_kvm_guest(fake_root: Path) -> None:
    runner = FakeRunner({KVM_PROBE: done(hostfacts.PROBE_EXIT_STATUS)})

    assert detect_accelerator(run_cmd=runner, dev_kvm=fake_root / "dev/kvm") == ("kvm", "")
    assert runner.calls[0][runner.calls[0].index("-cpu"):][:2] == ["-cpu", "host"]


def test_tcg_when_kvm_init_aborts(fake_root: Path) -> None:
    runner = FakeRunner({KVM_PROBE: done(-6, "", MSR_ABORT)})

    accel, error = detect_accelerator(run_cmd=runner, dev_kvm=fake_root / "dev/kvm")

    assert accel == "tcg"
    assert "failed to set MSR 0x10a" in error


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
