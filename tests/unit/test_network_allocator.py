"""Network kinds, admission and store-backed allocation, on a throwaway SQLite store.

No host changes here: the controllers' allocation phases are called directly.
"""

from __future__ import annotations

import ipaddress
import threading
from pathlib import Path
from typing import Any

import pytest

from appliance import errors
from appliance.kinds import default_registry
from appliance.kinds import network as netkinds
from appliance.kinds.registry import Registry
from appliance.network import ipam
from appliance.network.allocator import ADDRESSES, SUBNETS, VLANS, Allocator
from appliance.network.config import NetworkConfig
from appliance.network.controllers import InterfaceController, VirtualNetworkController
from appliance.network.world import INTERFACES, NETWORKS, read_world
from appliance.objects import SYSTEM, ObjectService, Target
from appliance.resources import LocalApi
from appliance.settings import load_settings
from appliance.store.db import make_engine, migrate
from appliance.store.repo import Store


def network_registry() -> Registry:
    registry = default_registry()
    for kind in netkinds.KINDS:
        if registry.by_group_plural(kind.group, kind.plural) is None:
            registry.register(kind)
    return registry


@pytest.fixture
def service(tmp_path: Path) -> ObjectService:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    migrate(engine)
    svc = ObjectService(Store(engine), network_registry())
    for ns in ("team-a", "team-b"):
        create(svc, "", "namespaces", "", {"apiVersion": "v1", "kind": "Namespace",
                                           "metadata": {"name": ns}})
    return svc


@pytest.fixture
def api(service: ObjectService) -> LocalApi:
    return LocalApi(service)


@pytest.fixture
def config(tmp_path: Path) -> NetworkConfig:
    return NetworkConfig(state_dir=tmp_path, pool_cidr="198.19.0.0/24", subnet_prefix=28,
                         tag="tu", bridge="tu-br")


def create(svc: ObjectService, group: str, plural: str, ns: str, body: dict[str, Any]
           ) -> dict[str, Any]:
    kind = svc.registry.by_group_plural(group, plural)
    assert kind is not None
    return svc.create(SYSTEM, Target(kind, kind.storage_version.name, ns), body).obj


def vnet(name: str = "default", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "vmware.com/v1alpha1", "kind": "VirtualNetwork",
            "metadata": {"name": name}, "spec": spec}


def vnif(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "vmware.com/v1alpha1", "kind": "VirtualNetworkInterface",
            "metadata": {"name": name, "labels": {"app": "web"}}, "spec": spec}


def netpol(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name}, "spec": spec}


def invalid(fn: Any) -> list[str]:
    with pytest.raises(errors.ApiError) as caught:
        fn()
    assert caught.value.code == 422, caught.value
    return [c["field"] + ": " + c["message"] for c in caught.value.details.get("causes", [])]


# -- admission ---------------------------------------------------------------------------


def test_network_defaults_and_finalizer(service: ObjectService) -> None:
    obj = create(service, "vmware.com", "virtualnetworks", "team-a", vnet())
    assert obj["spec"]["snat"] is True
    assert obj["metadata"]["finalizers"] == [netkinds.NETWORK_FINALIZER]


def test_bad_cidrs_are_refused(service: ObjectService) -> None:
    causes = invalid(lambda: create(service, "vmware.com", "virtualnetworks", "team-a",
                                    vnet(cidrs=["198.19.0.1/28", "198.19.1.0/30", "x"])))
    assert any(c.startswith("spec.cidrs[0]") and "host bits" in c for c in causes)
    assert any(c.startswith("spec.cidrs[1]") and "/29" in c for c in causes)
    assert any(c.startswith("spec.cidrs[2]") for c in causes)


def test_interface_mac_is_checked(service: ObjectService) -> None:
    causes = invalid(lambda: create(service, "vmware.com", "virtualnetworkinterfaces",
                                    "team-a", vnif("x", macAddress="01:00:5e:00:00:01")))
    assert any("unicast" in c for c in causes)


def test_policy_validation(service: ObjectService) -> None:
    causes = invalid(lambda: create(service, "networking.k8s.io", "networkpolicies", "team-a",
                                    netpol("bad", {
                                        "podSelector": {"matchExpressions": [
                                            {"key": "a", "operator": "Near"}]},
                                        "ingress": [{
                                            "from": [{"ipBlock": {"cidr": "198.18.0.0/24",
                                                                  "except": ["198.19.0.0/28"]},
                                                      "podSelector": {}}, {}],
                                            "ports": [{"protocol": "ICMP", "port": 99999},
                                                      {"port": "http", "endPort": 90}]}]})))
    text = "\n".join(causes)
    assert "spec.podSelector" in text and "Near" in text
    assert "spec.ingress[0].from[0]: Invalid value: ipBlock may not be combined" in text
    assert "spec.ingress[0].from[0].ipBlock.except[0]" in text
    assert "spec.ingress[0].from[1]: Required value" in text
    assert "spec.ingress[0].ports[0].protocol" in text
    assert "spec.ingress[0].ports[0].port" in text
    assert "spec.ingress[0].ports[1].endPort" in text


def test_policy_defaults(service: ObjectService) -> None:
    obj = create(service, "networking.k8s.io", "networkpolicies", "team-a", netpol("ok", {
        "podSelector": {}, "ingress": [{"ports": [{"port": 80}]}]}))
    assert obj["spec"]["ingress"][0]["ports"][0]["protocol"] == "TCP"


def test_service_validation_and_quota_counting(service: ObjectService) -> None:
    causes = invalid(lambda: create(service, "", "services", "team-a", {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
        "spec": {"type": "Balanced", "ports": [{"port": 80}, {"port": 0}]}}))
    text = "\n".join(causes)
    assert "spec.type" in text and "spec.ports[1].port" in text and "name is required" in text
    svc = create(service, "", "services", "team-a", {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"type": "LoadBalancer", "selector": {"app": "web"}, "ports": [{"port": 80}]}})
    assert svc["spec"]["ports"][0]["protocol"] == "TCP"
    assert netkinds.SERVICE.consumes is not None
    assert netkinds.SERVICE.consumes(svc, lambda *a: None) == {"services.loadbalancers": 1}


# -- allocation ----------------------------------------------------------------------------


def test_vlans_and_subnets_per_namespace(api: LocalApi, service: ObjectService,
                                         config: NetworkConfig) -> None:
    alloc = Allocator(api, config)
    a = create(service, "vmware.com", "virtualnetworks", "team-a", vnet())
    b = create(service, "vmware.com", "virtualnetworks", "team-b", vnet())
    assert alloc.vlan_for(a) == 100 and alloc.vlan_for(b) == 101
    assert alloc.vlan_for(a) == 100  # stable
    assert str(alloc.add_subnet(a)) == "198.19.0.0/28"
    assert str(alloc.add_subnet(b)) == "198.19.0.16/28"
    assert str(alloc.add_subnet(a)) == "198.19.0.32/28"
    assert [str(s) for s in alloc.subnets_of(a)] == ["198.19.0.0/28", "198.19.0.32/28"]
    records, _ = api.list(SUBNETS)
    assert sorted(r["metadata"]["name"] for r in records) == \
        ["198.19.0.0-28", "198.19.0.16-28", "198.19.0.32-28"]
    assert alloc.release(a["metadata"]["uid"]) == 3
    assert [r["metadata"]["name"] for r in api.list(VLANS)[0]] == ["vlan-101"]


def test_overlapping_cidr_names_the_other_namespace(api: LocalApi, service: ObjectService,
                                                    config: NetworkConfig) -> None:
    alloc = Allocator(api, config)
    a = create(service, "vmware.com", "virtualnetworks", "team-a", vnet())
    alloc.add_subnet(a)
    b = create(service, "vmware.com", "virtualnetworks", "team-b", vnet(cidrs=["198.19.0.0/24"]))
    with pytest.raises(ipam.CidrOverlap, match=r"198\.19\.0\.0/24 overlaps 198\.19\.0\.0/28 "
                                               r"\(namespace team-a\)"):
        alloc.add_subnet(b, ipam.parse_network("198.19.0.0/24"))
    with pytest.raises(ipam.CidrOverlap, match="ingress range"):
        alloc.add_subnet(b, ipam.parse_network("198.18.128.0/28"))


def test_exhausted_pool(api: LocalApi, service: ObjectService, tmp_path: Path) -> None:
    small = NetworkConfig(state_dir=tmp_path, pool_cidr="198.19.0.0/28", subnet_prefix=28,
                          tag="tu")
    alloc = Allocator(api, small)
    a = create(service, "vmware.com", "virtualnetworks", "team-a", vnet())
    b = create(service, "vmware.com", "virtualnetworks", "team-b", vnet())
    alloc.add_subnet(a)
    with pytest.raises(ipam.PoolExhausted, match=r"pool 198\.19\.0\.0/28 has no free /28"):
        alloc.add_subnet(b)


def test_concurrent_address_allocation_hands_out_each_address_once(
        api: LocalApi, service: ObjectService, config: NetworkConfig) -> None:
    alloc = Allocator(api, config)
    net = create(service, "vmware.com", "virtualnetworks", "team-a", vnet())
    subnets = [alloc.add_subnet(net), alloc.add_subnet(net)]
    owners = [create(service, "vmware.com", "virtualnetworkinterfaces", "team-a",
                     vnif(f"w{i}")) for i in range(26)]
    got: list[ipam.Address] = []
    failures: list[BaseException] = []
    lock = threading.Lock()

    def worker(chunk: list[dict[str, Any]]) -> None:
        for owner in chunk:
            try:
                addr, _ = Allocator(api, config).address_for(owner, subnets)
            except BaseException as exc:  # noqa: BLE001 - reported below
                failures.append(exc)
                continue
            with lock:
                got.append(addr)

    threads = [threading.Thread(target=worker, args=(owners[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
    assert len(got) == 26 and len(set(got)) == 26
    assert all(any(a in s for s in subnets) for a in got)
    extra = create(service, "vmware.com", "virtualnetworkinterfaces", "team-a", vnif("extra"))
    with pytest.raises(ipam.SubnetExhausted):
        alloc.address_for(extra, subnets)
    # stable: asking again gives the same address
    assert alloc.address_for(owners[0], subnets)[0] in got
    records, _ = api.list(ADDRESSES)
    assert len(records) == 26


def test_vips(api: LocalApi, service: ObjectService, config: NetworkConfig) -> None:
    alloc = Allocator(api, config)
    svc = create(service, "", "services", "team-a", {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"type": "LoadBalancer", "selector": {"app": "web"}, "ports": [{"port": 80}]}})
    assert str(alloc.vip_for(svc, "LoadBalancer")) == "198.18.128.1"
    assert str(alloc.vip_for(svc, "LoadBalancer")) == "198.18.128.1"
    other = create(service, "", "services", "team-a", {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "other"},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}})
    with pytest.raises(ipam.CidrOverlap, match="already in use"):
        alloc.vip_for(other, "LoadBalancer", "198.18.128.1")
    with pytest.raises(ipam.InvalidCidr, match="not in the LoadBalancer range"):
        alloc.vip_for(other, "LoadBalancer", "198.19.0.5")
    assert str(alloc.vip_for(other, "ClusterIP")) == "198.18.129.1"


# -- controllers' allocation phases (no playbooks) ----------------------------------------


def test_interfaces_get_addresses_and_the_network_grows(
        api: LocalApi, service: ObjectService, config: NetworkConfig, tmp_path: Path) -> None:
    settings = load_settings(environ={}, state_dir=tmp_path / "state")
    networks = VirtualNetworkController(api, settings, config, datapath="netdev")
    kicked: list[str] = []
    interfaces = InterfaceController(api, config, networks.allocator, kicked.append)
    net = create(service, "vmware.com", "virtualnetworks", "team-a", vnet())
    vlan = networks.allocator.vlan_for(net)
    assert [str(s) for s in networks.ensure_subnets(net)] == ["198.19.0.0/28"]
    api.patch(NETWORKS, "team-a", "default", {"status": {"vlan": vlan}}, subresource="status")
    for i in range(15):  # 13 fit in a /28
        create(service, "vmware.com", "virtualnetworkinterfaces", "team-a", vnif(f"w{i:02}"))
    from appliance.controllers.base import TemporaryError

    waiting = 0
    for i in range(15):
        try:
            interfaces.reconcile(api.get(INTERFACES, "team-a", f"w{i:02}"))
        except TemporaryError:
            waiting += 1
    assert waiting == 2
    w14 = api.get(INTERFACES, "team-a", "w14")
    cond = next(c for c in w14["status"]["conditions"] if c["type"] == "Ready")
    assert cond["reason"] == "WaitingForAddress" and "no free address" in cond["message"]
    assert "team-a" in kicked
    assert [str(s) for s in networks.ensure_subnets(api.get(NETWORKS, "team-a", "default"))] == \
        ["198.19.0.0/28", "198.19.0.16/28"]
    for name in ("w13", "w14"):
        assert interfaces.reconcile(api.get(INTERFACES, "team-a", name)) is None
    w14 = api.get(INTERFACES, "team-a", "w14")
    assert w14["status"]["ipAddresses"][0]["ip"].startswith("198.19.0.1")
    assert w14["status"]["vlan"] == vlan and w14["status"]["portName"].startswith("tuw")
    assert w14["status"]["dnsName"] == "w14.team-a.pacific.internal"
    world = read_world(api, config)
    assert len(world.workloads_in("team-a")) == 15
    assert len({w.ip for w in world.workloads}) == 15
    assert world.namespaces["team-a"].subnets == (ipaddress.IPv4Network("198.19.0.0/28"),
                                                  ipaddress.IPv4Network("198.19.0.16/28"))


def test_explicit_cidrs_do_not_grow(api: LocalApi, service: ObjectService,
                                    config: NetworkConfig, tmp_path: Path) -> None:
    settings = load_settings(environ={}, state_dir=tmp_path / "state")
    networks = VirtualNetworkController(api, settings, config, datapath="netdev")
    net = create(service, "vmware.com", "virtualnetworks", "team-b",
                 vnet(cidrs=["198.19.0.248/29"]))
    assert [str(s) for s in networks.ensure_subnets(net)] == ["198.19.0.248/29"]
    for i in range(6):
        create(service, "vmware.com", "virtualnetworkinterfaces", "team-b", vnif(f"w{i}"))
    with pytest.raises(ipam.SubnetExhausted, match="add a CIDR to spec.cidrs"):
        networks.ensure_subnets(net)
