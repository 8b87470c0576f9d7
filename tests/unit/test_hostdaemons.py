"""The watch over the lab host's daemons (appliance.hostdaemons), with a fake playbook runner.

The real thing (libvirtd and ovs-vswitchd killed under a running VM) is in
tests/e2e/test_vm_lifecycle.py."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from appliance import hostdaemons
from appliance.ansible import PlaybookError, PlaybookResult, TaskFailure
from appliance.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
ALL = set(hostdaemons.WATCHED)


def _result(ok: bool) -> PlaybookResult:
    failures = [] if ok else [TaskFailure("Start libvirtd", "localhost", "libvirtd: no")]
    return PlaybookResult("successful" if ok else "failed", 0 if ok else 2, 1, failures, 0, 3)


class FakeRunner:
    def __init__(self, ok: bool = True, error: bool = False) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.ok, self.error = ok, error

    def __call__(self, _settings: Settings, name: str, extravars: dict[str, Any],
                 **_kw: Any) -> PlaybookResult:
        self.calls.append((name, dict(extravars)))
        if self.error:
            raise PlaybookError("playbook host-daemons.yml could not start: no ansible")
        return _result(self.ok)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    settings = Settings(state_dir=tmp_path / "state")
    settings.run_dir.mkdir(parents=True)  # as the host service makes it
    return settings


def _daemons(settings: Settings, running: set[str], runner: FakeRunner
             ) -> hostdaemons.HostDaemons:
    return hostdaemons.HostDaemons(settings, runner=runner, running=lambda: running)


def test_nothing_runs_while_every_daemon_runs(settings: Settings) -> None:
    runner = FakeRunner()
    assert _daemons(settings, ALL | {"bash"}, runner).check() is True
    assert runner.calls == []
    assert hostdaemons.read_state(settings) is None


def test_a_dead_daemon_gets_the_playbook_and_is_counted(
        settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    runner = FakeRunner()
    daemons = _daemons(settings, ALL - {"ovs-vswitchd", "libvirtd"}, runner)
    assert daemons.check() is True
    assert runner.calls == [(hostdaemons.PLAYBOOK, {})]
    assert daemons.restarts == {"libvirtd": 1, "ovs-vswitchd": 1}
    state = hostdaemons.read_state(settings)
    assert state is not None and state["restarts"] == {"libvirtd": 1, "ovs-vswitchd": 1}
    assert state["last"]["daemons"] == ["libvirtd", "ovs-vswitchd"]
    assert state["last"]["error"] == ""
    from appliance import cli

    cli._host_daemons_status(settings)  # what `lab status` prints of it
    printed = capsys.readouterr().out
    assert "host daemons restarted: libvirtd 1, ovs-vswitchd 1 (last: libvirtd, " \
           "ovs-vswitchd at " in printed
    assert "failed" not in printed


def test_a_failing_start_is_not_counted_and_says_so(
        settings: Settings, caplog: Any, capsys: pytest.CaptureFixture[str]) -> None:
    for runner in (FakeRunner(ok=False), FakeRunner(error=True)):
        daemons = _daemons(settings, ALL - {"libvirtd"}, runner)
        assert daemons.check() is False
        assert daemons.restarts == {}
    assert "libvirtd: no" in caplog.text
    assert "could not start: no ansible" in caplog.text
    from appliance import cli

    cli._host_daemons_status(settings)
    assert "host daemons: the last start failed: playbook host-daemons.yml could not " \
           "start: no ansible" in capsys.readouterr().out


def test_the_kernel_s_15_character_names_match() -> None:
    # /proc/PID/comm holds at most 15 characters: "ovs-vswitchd" fits, a longer name is cut.
    assert hostdaemons.missing({"ovs-vswitchd"}, ("ovs-vswitchd",)) == []
    assert hostdaemons.missing({"a-very-long-dae"}, ("a-very-long-daemon",)) == []
    assert hostdaemons.missing(set(), ("libvirtd",)) == ["libvirtd"]


def test_the_watch_backs_off_while_starting_keeps_failing(settings: Settings) -> None:
    runner = FakeRunner(ok=False)
    daemons = hostdaemons.HostDaemons(settings, interval=0.01, runner=runner,
                                      running=lambda: ALL - {"libvirtd"})
    stop = threading.Event()
    thread = threading.Thread(target=daemons.run, args=(stop,))
    thread.start()
    # 0.01, 0.02, 0.04, 0.08, 0.16, 0.32 s: six tries in about 0.6 s, not sixty.
    threading.Event().wait(0.7)
    stop.set()
    thread.join(5)
    assert 3 <= len(runner.calls) <= 8


def test_the_watched_names_are_what_the_playbook_starts() -> None:
    tasks = yaml.safe_load((ROOT / "playbooks/tasks/host-daemons.yml").read_text())
    started = {name for task in tasks for sub in task.get("block", [])
               for name in (sub.get("lab_daemon") or {}).get("processes", [])}
    assert started == ALL
    play = yaml.safe_load((ROOT / "playbooks" / hostdaemons.PLAYBOOK).read_text())
    assert play[0]["vars"]["lab_without_service_manager"] is True


def test_systemd_is_recognised_by_its_run_directory(tmp_path: Path) -> None:
    assert hostdaemons.service_manager_present(tmp_path / "nothing") is False
    (tmp_path / "system").mkdir()
    assert hostdaemons.service_manager_present(tmp_path / "system") is True


def test_a_zombie_does_not_count_as_running(tmp_path: Path) -> None:
    for pid, stat in {"10": "10 (libvirtd) Z 1 10 10 0", "11": "11 (ovs-vswitchd) S 1 11",
                      "12": "12 (a (b) c) R 1 12", "self": "x"}.items():
        (tmp_path / pid).mkdir()
        (tmp_path / pid / "stat").write_text(stat)
    (tmp_path / "13").mkdir()  # gone while we looked: no stat
    assert hostdaemons.running_commands(tmp_path) == {"ovs-vswitchd", "a (b) c"}
    assert hostdaemons.running_commands()  # and the real /proc reads
