"""appliance.network.ovsview.host_drift, over a faked hypervisor.ovs (the real thing:
tests/e2e/test_vm_lifecycle.py kills ovs-vswitchd and sees the pipeline come back)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


def _namespace(tmp_path: Path) -> Any:
    import ipaddress

    from appliance.network.hostconfig import NamespaceHost
    from appliance.network.ipam import parse_network
    from appliance.network.model import Segment, Workload

    cfg = NetworkConfig(state_dir=tmp_path, tag="pl", bridge="t-int")
    seg = Segment("dev", 101, (parse_network("198.19.0.0/28"),), "plg101", snat=True)
    vm = Workload("dev", "web-1-eth0", ipaddress.IPv4Address("198.19.0.2"),
                  "52:54:00:aa:00:01", "plwaaaaaaaaa1", "web-1", {})
    return NamespaceHost(cfg, seg, (vm,), (), (), (), (), uplink="")


def _segment_host(monkeypatch: pytest.MonkeyPatch, host: Any, vm_ofport: int) -> None:
    """This host as the lab left it, but for the VM port's OpenFlow number."""
    ports = [ovs.OvsPort("plg101", 1, 101, "internal"),
             ovs.OvsPort("plwaaaaaaaaa1", vm_ofport, 101, "")]
    monkeypatch.setattr(ovs, "bridge_exists", lambda _b: True)
    monkeypatch.setattr(ovs, "list_ports", lambda _b: ports)
    monkeypatch.setattr(ovs, "dump_flows", lambda _b, _c=None: ["f"] * len(host.flows()))
    monkeypatch.setattr(ovs, "link_addresses", lambda _l: list(
        host.extravars()["lab_ns"]["gateway_addresses"]))
    monkeypatch.setattr(ovs, "pid_alive", lambda _p, _b: 42)
    monkeypatch.setattr(ovs, "nft_table_text", lambda _f, _n: "table")


def test_a_port_made_again_is_drift_though_the_flows_count_right(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A VM powered off and on gets its port back with another OpenFlow number; its flows,
    installed with the old one, are as many as before and match nothing."""
    host = _namespace(tmp_path)
    assert ovsview.referenced_ports(host) == {"plg101", "plwaaaaaaaaa1"}
    _segment_host(monkeypatch, host, vm_ofport=7)
    installed = ovsview.ofports("t-int", ovsview.referenced_ports(host))
    assert installed == {"plg101": 1, "plwaaaaaaaaa1": 7}
    assert ovsview.drift(host, installed) == []
    assert ovsview.drift(host) == []  # without the numbers, nothing to see
    _segment_host(monkeypatch, host, vm_ofport=9)
    assert ovsview.drift(host, installed) == [
        "flows hold earlier OpenFlow numbers of plwaaaaaaaaa1"]
    # Unknown numbers (the port was made again while the playbook ran) are drift too.
    assert ovsview.drift(host, {"plg101": 1, "plwaaaaaaaaa1": -1}) != []
