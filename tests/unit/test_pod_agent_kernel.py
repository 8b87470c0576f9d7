"""Which kernel the pod agent boots pod VMs with: chosen when its first pod starts, logged."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from appliance.agent import pods as agent_pods
from appliance.agent.pods import PodController
from appliance.settings import Settings
from hypervisor.podvm.initramfs import PodKernel
from hypervisor.podvm.kernelbuild import BuiltKernel, KernelChoice


def controller(tmp_path: Path) -> PodController:
    settings = Settings(state_dir=tmp_path / "state", cache_dir=tmp_path / "cache",
                        registry_enabled=False, pod_kernel_source_dir=tmp_path / "src")
    return PodController(None, "node-1", "198.18.0.1", settings, "tcg", None, "pacific0")  # type: ignore[arg-type]


@pytest.mark.parametrize("built", [False, True])
def test_the_choice_is_made_once_and_logged_with_its_reason(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        built: bool) -> None:
    kernel = PodKernel(tmp_path / "vmlinux", tmp_path / "initrd.img",
                       "6.1.192" if built else "6.1.0-57-amd64")
    choice = KernelChoice(
        BuiltKernel(tmp_path / "vmlinux", tmp_path / "config", "6.1.192", "k" * 24),
        "the pod kernel 6.1.192 (key kkkk)") if built else KernelChoice(
        None, "the pod kernel is not built yet (`lab up` builds it)")
    calls = []

    def choose(cache_dir: Path, *, source_dir: Path) -> tuple[PodKernel, KernelChoice]:
        calls.append((cache_dir, source_dir))
        return kernel, choice

    monkeypatch.setattr(agent_pods, "kernel_for_pods", choose)
    pods = controller(tmp_path)
    with caplog.at_level(logging.INFO, logger="appliance.agent.pods"):
        assert pods.kernel() == kernel
        assert pods.kernel() == kernel
    assert calls == [(tmp_path / "cache", tmp_path / "src")]  # once
    assert pods._kernel_built is built
    logged = [r.getMessage() for r in caplog.records]
    if built:
        assert logged == ["pod VMs boot the pod kernel 6.1.192 (key kkkk)"]
    else:
        assert logged == ["pod VMs boot the distro kernel 6.1.0-57-amd64: the pod kernel is not "
                          "built yet (`lab up` builds it)"]
        assert caplog.records[0].levelno == logging.WARNING
