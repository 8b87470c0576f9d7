"""appliance.network.ovsview.host_drift, over a faked hypervisor.ovs (the real thing:
tests/e2e/test_vm_lifecycle.py kills ovs-vswitchd and sees the pipeline come back)."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.network import flows, ovsview
from appliance.network.config import BASE_COOKIE, NetworkConfig
from hypervisor import ovs


@pytest.fixture
def config(tmp_path: Path) -> NetworkConfig:
    return NetworkConfig(state_dir=tmp_path, bridge="t-int")


def _host(monkeypatch: pytest.MonkeyPatch, bridge: bool, base_flows: int) -> list[int | None]:
    asked: list[int | None] = []

    def dump_flows(_bridge: str, cookie: int | None = None) -> list[str]:
        asked.append(cookie)
        return ["flow"] * base_flows

    monkeypatch.setattr(ovs, "bridge_exists", lambda _b: bridge)
    monkeypatch.setattr(ovs, "dump_flows", dump_flows)
    return asked


def test_a_host_with_its_bridge_and_pipeline_has_not_drifted(
        monkeypatch: pytest.MonkeyPatch, config: NetworkConfig) -> None:
    asked = _host(monkeypatch, True, len(flows.base_flows()))
    assert ovsview.host_drift(config) == []
    assert asked == [BASE_COOKIE]


def test_a_restarted_ovs_vswitchd_has_the_bridge_but_no_pipeline(
        monkeypatch: pytest.MonkeyPatch, config: NetworkConfig) -> None:
    _host(monkeypatch, True, 0)
    assert ovsview.host_drift(config) == [
        f"0 flows under cookie {BASE_COOKIE:#x}, {len(flows.base_flows())} expected"]


def test_a_missing_bridge_is_said_first(monkeypatch: pytest.MonkeyPatch,
                                        config: NetworkConfig) -> None:
    _host(monkeypatch, False, 0)
    assert ovsview.host_drift(config) == ["bridge t-int is missing"]
