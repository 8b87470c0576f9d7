"""host.yml for real: twice, the second run changes nothing; the facts match the host."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from appliance.ansible import PlaybookEvent, run_playbook
from appliance.hostprep import HostPrepError, host_extravars, load_host_facts, prepare_host
from appliance.settings import Settings, load_settings
from hypervisor.hostfacts import stable_view

pytestmark = pytest.mark.e2e

QMP_QUIT = "".join(json.dumps(cmd) + "\n" for cmd in (
    {"execute": "qmp_capabilities"},
    {"execute": "query-status", "id": "status"},
    {"execute": "quit"},
))


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    base = tmp_path_factory.mktemp("hostprep")
    return load_settings(environ={}, state_dir=base / "state", cache_dir=base / "cache")


@dataclass(frozen=True)
class FirstRun:
    facts: dict[str, Any]
    events: list[PlaybookEvent]


@pytest.fixture(scope="module")
def first_run(settings: Settings) -> FirstRun:
    events: list[PlaybookEvent] = []
    facts = prepare_host(settings, on_event=events.append)  # raises if a task fails
    return FirstRun(facts, events)


def test_first_run_records_facts(settings: Settings, first_run: FirstRun) -> None:
    assert first_run.facts == load_host_facts(settings)
    assert settings.host_facts_path.is_file()
    assert not [e for e in first_run.events if e.failed]
    recorded = [e for e in first_run.events
                if e.task == "Record the host facts" and e.event == "runner_on_ok"]
    assert len(recorded) == 1 and recorded[0].changed  # a new facts file


def test_second_run_changes_nothing(settings: Settings, first_run: FirstRun) -> None:
    second = run_playbook(settings, "host.yml", host_extravars(settings))

    assert second.status == "successful"
    assert second.failures == []
    assert second.unreachable == 0
    assert second.changed == 0, second
    assert stable_view(load_host_facts(settings) or {}) == stable_view(first_run.facts)


def test_daemons_answer(first_run: FirstRun) -> None:
    subprocess.run(["virsh", "-c", "qemu:///system", "version"], check=True,
                   capture_output=True, timeout=30)
    subprocess.run(["ovs-vsctl", "--timeout=5", "show"], check=True, capture_output=True,
                   timeout=30)


def test_facts_match_this_host(settings: Settings, first_run: FirstRun) -> None:
    facts = first_run.facts

    expected_accel = "kvm" if _kvm_cpu_host_starts() else "tcg"
    assert facts["accelerator"] == expected_accel
    assert (facts["kvm_error"] == "") == (expected_accel == "kvm")
    expected_datapath = "system" if _openvswitch_module_available() else "netdev"
    assert facts["ovs_datapath"] == expected_datapath
    assert facts["cpus"] >= 1 and facts["memory_bytes"] > 0
    assert facts["libvirt_version"] and facts["qemu_version"]
    assert facts["disk_path"] == str(settings.state_dir)


def _kvm_cpu_host_starts() -> bool:
    """An independent check: does QEMU get a ``-cpu host`` KVM machine up and running?"""
    cmd = ["prlimit", "--core=0", "--", "qemu-system-x86_64", "-accel", "kvm", "-cpu", "host",
           "-machine", "pc", "-m", "16", "-nodefaults", "-display", "none", "-qmp", "stdio"]
    if not Path("/dev/kvm").exists():
        return False
    proc = subprocess.run(cmd, input=QMP_QUIT, capture_output=True, text=True, timeout=60,
                          check=False)
    return proc.returncode == 0 and '"running": true' in proc.stdout


def _openvswitch_module_available() -> bool:
    if Path("/sys/module/openvswitch").is_dir():
        return True
    proc = subprocess.run(["modprobe", "--dry-run", "--quiet", "openvswitch"],
                          capture_output=True, check=False, timeout=30)
    return proc.returncode == 0


def test_failing_task_is_named_in_the_error(settings: Settings, first_run: FirstRun) -> None:
    with pytest.raises(HostPrepError, match="Install the host packages") as caught:
        prepare_host(settings, extra_packages=["pacific-lab-no-such-package"])

    assert [f.task for f in caught.value.failures] == ["Install the host packages"]
    assert "pacific-lab-no-such-package" in caught.value.failures[0].message
