"""The rolling upgrade's decisions (appliance.controlplane.upgrade.roll) against fake VMs:
which VMs roll, in which order, what is refused, and what is left running on a failure.
The real roll (SSH, systemd, keepalived, the supervisors' restarts) is the control-plane
e2e's."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from appliance.controlplane.move import MoveError
from appliance.controlplane.upgrade import INSTALL, Member, Stamp, archive, roll
from hypervisor.applianceimage import CODE_STAMP, code_stamp, project_files

VIP = "198.18.0.5"


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    root = tmp_path / "checkout"
    (root / "appliance").mkdir(parents=True)
    (root / "pyproject.toml").write_text(
        '[project]\nname = "x"\ndependencies = ["flask>=3"]\n'
        '[build-system]\nrequires = ["setuptools>=68"]\n')
    (root / "appliance" / "__init__.py").write_text("VERSION = 2\n")
    (root / "lab").write_text("#!/bin/sh\n")
    (root / "lab").chmod(0o755)
    return root


class FakeVm:
    """A control-plane VM as the roll sees it over SSH."""

    def __init__(self, name: str, address: str, stamp: dict[str, str] | None,
                 holds_vip: bool = False) -> None:
        self.name, self.address = name, address
        self.stamp = json.dumps(stamp) if stamp is not None else None
        self.holds_vip = holds_vip
        self.keepalived = True
        self.serving = True
        self.fail_install = False
        self.commands: list[str] = []
        self.installed: bytes | None = None

    def run(self, command: str, stdin: bytes | None = None) -> tuple[int, str, str]:
        self.commands.append(command)
        if command == f"cat {CODE_STAMP}":
            return (0, self.stamp, "") if self.stamp is not None else (1, "", "No such file")
        if command == "ip -4 -o addr show":
            vip = f"2: eth0    inet {VIP}/32 scope global eth0\n" if self.holds_vip else ""
            return 0, f"2: eth0    inet {self.address}/24 scope global eth0\n{vip}", ""
        if command == "sudo systemctl stop keepalived.service":
            self.keepalived = self.holds_vip = False
            return 0, "", ""
        if command == "sudo systemctl start keepalived.service":
            self.keepalived = True
            return 0, "", ""
        if command.startswith("sudo sh -c "):
            assert stdin is not None
            if self.fail_install:
                return 2, "", "tar: short read\ntar: Error is not recoverable"
            self.installed = stdin
            with tarfile.open(fileobj=io.BytesIO(stdin)) as tar:
                member = tar.extractfile(Path(CODE_STAMP).name)
                assert member is not None
                self.stamp = member.read().decode()
            return 0, "", ""
        raise AssertionError(f"unexpected command {command!r}")

    def member(self) -> Member:
        return Member(self.name, self.address, self.run)


def lab(checkout: Path, *stamps: dict[str, str] | None, holder: int = 0) -> list[FakeVm]:
    return [FakeVm(f"pacific-cp-{i + 1}", f"198.18.0.{6 + i}", stamp, holds_vip=i == holder)
            for i, stamp in enumerate(stamps)]


def current(checkout: Path) -> dict[str, str]:
    return code_stamp(checkout, project_files(checkout))


def older(checkout: Path) -> dict[str, str]:
    return {**current(checkout), "code": "0" * 64}


def run_roll(vms: list[FakeVm], checkout: Path, said: list[str] | None = None) -> list[str]:
    def ready(member: Member) -> bool:
        return next(vm for vm in vms if vm.name == member.name).serving

    log = said if said is not None else []
    return roll([vm.member() for vm in vms], checkout, lambda: True, ready, log.append, vip=VIP,
                poll=0, ready_timeout=1, handover_timeout=1, others_timeout=0.05)


def test_vms_that_run_the_checkout_are_left_alone(checkout: Path) -> None:
    vms = lab(checkout, current(checkout), current(checkout), current(checkout))
    assert run_roll(vms, checkout) == []
    assert all(vm.installed is None and vm.keepalived for vm in vms)


def test_only_the_vms_behind_roll_and_the_floating_ips_holder_goes_last(checkout: Path) -> None:
    vms = lab(checkout, older(checkout), current(checkout), older(checkout), holder=0)
    said: list[str] = []
    assert run_roll(vms, checkout, said) == ["pacific-cp-3", "pacific-cp-1"]
    assert vms[1].installed is None
    assert all(Stamp.parse(vm.stamp or "") == Stamp(**current(checkout)) for vm in vms)
    holder = vms[0].commands
    # keepalived stops before the code changes, and starts again afterwards
    stop = holder.index("sudo systemctl stop keepalived.service")
    install = next(i for i, c in enumerate(holder) if c.startswith("sudo sh -c "))
    assert stop < install < holder.index("sudo systemctl start keepalived.service")
    assert vms[0].keepalived
    assert "sudo systemctl stop keepalived.service" not in vms[2].commands
    assert said[0].startswith("pacific-cp-3 runs the new code")
    assert "pacific-cp-1 handed the floating IP 198.18.0.5 over" in said


def test_changed_dependencies_are_refused_before_any_vm_is_touched(checkout: Path) -> None:
    vms = lab(checkout, older(checkout), {**older(checkout), "dependencies": "other"},
              older(checkout))
    with pytest.raises(MoveError, match=r"pacific-cp-2 runs other dependencies .*"
                                        r"--control-plane-vms 0"):
        run_roll(vms, checkout)
    assert all(vm.installed is None and vm.keepalived for vm in vms)


def test_a_vm_without_a_stamp_is_refused(checkout: Path) -> None:
    vms = lab(checkout, None)
    with pytest.raises(MoveError, match="pacific-cp-1 has no readable"):
        run_roll(vms, checkout)


def test_a_vm_out_of_reach_is_named(checkout: Path) -> None:
    vms = lab(checkout, older(checkout))
    vms[0].run = lambda command, stdin=None: (255, "", "[198.18.0.6:22] cannot connect: "  # type: ignore[method-assign]
                                              "timed out")
    with pytest.raises(MoveError, match=r"cannot reach pacific-cp-1: \[198.18.0.6:22\] cannot "
                                        "connect: timed out"):
        run_roll(vms, checkout)


def test_no_vm_rolls_while_another_is_down(checkout: Path) -> None:
    vms = lab(checkout, older(checkout), older(checkout), older(checkout), holder=2)
    vms[1].serving = False
    with pytest.raises(MoveError, match=r"not rolling pacific-cp-1: pacific-cp-2 does not "
                                        r"answer /readyz.*rolled so far: none"):
        run_roll(vms, checkout)
    assert all(vm.installed is None for vm in vms)


def test_a_vm_that_answers_again_soon_does_not_stop_the_roll(checkout: Path) -> None:
    vms = lab(checkout, older(checkout), current(checkout), holder=1)
    asked = []

    def ready(member: Member) -> bool:
        asked.append(member.name)
        return len(asked) > 2  # pacific-cp-2 misses two probes, then answers

    said: list[str] = []
    rolled = roll([vm.member() for vm in vms], checkout, lambda: True, ready, said.append,
                  vip=VIP, poll=0, ready_timeout=1, handover_timeout=1, others_timeout=5)
    assert rolled == ["pacific-cp-1"]
    assert asked[:3] == ["pacific-cp-2"] * 3


def test_a_failed_install_stops_the_roll_and_gives_the_holder_its_keepalived_back(
        checkout: Path) -> None:
    vms = lab(checkout, current(checkout), older(checkout), holder=1)
    vms[1].fail_install = True
    with pytest.raises(MoveError, match="installing the new code on pacific-cp-2 failed: "
                                        "tar: Error is not recoverable"):
        run_roll(vms, checkout)
    assert vms[1].keepalived


def test_the_archive_holds_the_checkout_and_the_stamp_with_relative_paths(
        checkout: Path) -> None:
    files = project_files(checkout)
    data = archive(checkout, files, current(checkout))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert set(members) == {"appliance/__init__.py", "lab", "pyproject.toml",
                                Path(CODE_STAMP).name}
        assert members["lab"].mode == 0o755 and members["pyproject.toml"].mode == 0o644
        assert all(not m.name.startswith("/") and ".." not in m.name.split("/")
                   for m in members.values())
        assert all(m.uid == 0 and m.uname == "" for m in members.values())
        stamp = tar.extractfile(Path(CODE_STAMP).name)
        assert stamp is not None and json.loads(stamp.read()) == current(checkout)


def install(tmp_path: Path, payload: bytes) -> tuple[int, list[str], Path]:
    """The install script run by sh in a directory standing for /opt, with a systemctl that
    only logs what it is asked."""
    opt, bin_dir = tmp_path / "opt", tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "systemctl.log"
    (bin_dir / "systemctl").write_text(f'#!/bin/sh\necho "$*" >> {log}\n')
    (bin_dir / "systemctl").chmod(0o755)
    script = INSTALL.replace("/opt/", f"{opt}/")
    proc = subprocess.run(["sh", "-c", script], input=payload, capture_output=True,
                          env={"PATH": f"{bin_dir}:/usr/bin:/bin"})
    calls = log.read_text().splitlines() if log.exists() else []
    return proc.returncode, calls, opt / "pacific-lab"


def installed_tree(tmp_path: Path) -> Path:
    tree = tmp_path / "opt" / "pacific-lab"
    (tree / ".venv" / "bin").mkdir(parents=True)
    (tree / ".venv" / "bin" / "python").write_text("#!/bin/sh\n")
    (tree / ".venv" / "bin" / "python").chmod(0o755)
    (tree / "appliance").mkdir()
    (tree / "appliance" / "__init__.py").write_text("VERSION = 1\n")
    (tree / "gone.py").write_text("removed upstream\n")
    return tree


def test_the_install_swaps_the_code_around_the_virtual_environment(
        checkout: Path, tmp_path: Path) -> None:
    installed_tree(tmp_path)
    rc, calls, tree = install(tmp_path, archive(checkout, project_files(checkout),
                                                current(checkout)))
    assert rc == 0
    assert calls == ["stop pacific-lab.service", "start pacific-lab.service"]
    assert (tree / "appliance" / "__init__.py").read_text() == "VERSION = 2\n"
    assert (tree / ".venv" / "bin" / "python").exists()
    assert not (tree / "gone.py").exists()  # a file removed upstream is gone
    assert json.loads((tree / Path(CODE_STAMP).name).read_text()) == current(checkout)
    assert (tmp_path / "opt" / "pacific-lab.prev" / "gone.py").exists()  # the old tree, kept


def test_a_broken_stream_changes_nothing_and_never_stops_the_supervisor(tmp_path: Path) -> None:
    installed_tree(tmp_path)
    rc, calls, tree = install(tmp_path, b"not a tar stream")
    assert rc != 0 and calls == []
    assert (tree / "appliance" / "__init__.py").read_text() == "VERSION = 1\n"


def test_a_failed_swap_puts_the_old_tree_back_and_starts_the_supervisor(
        checkout: Path, tmp_path: Path) -> None:
    tree = installed_tree(tmp_path)
    shutil.rmtree(tree / ".venv")  # the swap's last step (moving the venv) fails
    rc, calls, tree = install(tmp_path, archive(checkout, project_files(checkout),
                                                current(checkout)))
    assert rc != 0
    assert calls == ["stop pacific-lab.service", "start pacific-lab.service"]
    assert (tree / "appliance" / "__init__.py").read_text() == "VERSION = 1\n"


def test_a_dropped_handshake_is_tried_again_but_a_started_command_is_not(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from appliance.controlplane import upgrade
    from hypervisor import ssh

    calls: list[str] = []
    answers: list[Exception | tuple[int, str, str]] = [
        ssh.SshError("[198.18.0.6:22] cannot connect: No existing session"),
        (0, "ok", ""),
        ssh.SshError("[198.18.0.6:22] command failed: Socket is closed"),
        ssh.HostKeyMismatch("[198.18.0.6:22] cannot connect: host key changed"),
    ]

    def run_command(host: str, user: str, key: str, command: str, timeout: float,
                    **kwargs: object) -> tuple[int, str, str]:
        calls.append(command)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(ssh, "run_command", run_command)
    monkeypatch.setattr(upgrade.time, "sleep", lambda s: None)
    run = upgrade._remote("198.18.0.6", "pacific", "key", tmp_path / "known", connect_for=60)
    assert run("true") == (0, "ok", "")  # the handshake dropped once, then it ran
    assert run("install") == (255, "", "[198.18.0.6:22] command failed: Socket is closed")
    assert run("true")[0] == 255  # a changed host key is not a transient failure
    assert calls == ["true", "true", "install", "true"]
