"""One consistent-enough read of everything networking depends on.

The controllers compile host configuration from the store as it is now
(level-triggered): namespaces and their labels, every workload interface with
its address, the subnets of every namespace, and services with their VIPs.
``read_world`` gathers that with a handful of list calls.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from appliance import errors
from appliance.kinds.network import DEFAULT_NETWORK, NET_GROUP, NET_VERSION
from appliance.kinds.registry import Obj
from appliance.network.allocator import ADDRESSES, OWNER_UID, SUBNETS
from appliance.network.config import NetworkConfig, mac_for
from appliance.network.ipam import Address, Network, parse_network
from appliance.network.model import NamespaceInfo, Workload
from appliance.resources import Ref, ResourceApi

LOG = logging.getLogger(__name__)

NAMESPACES = Ref("", "v1", "namespaces")
NETWORKS = Ref(NET_GROUP, NET_VERSION, "virtualnetworks")
INTERFACES = Ref(NET_GROUP, NET_VERSION, "virtualnetworkinterfaces")
POLICIES = Ref("networking.k8s.io", "v1", "networkpolicies")
SERVICES = Ref("", "v1", "services")
VMSERVICES = Ref("vmoperator.vmware.com", "v1alpha5", "virtualmachineservices")
VMS = Ref("vmoperator.vmware.com", "v1alpha5", "virtualmachines")
PODS = Ref("", "v1", "pods")

#: Owner kinds whose labels a workload carries (what Service selectors match).
OWNER_KINDS = {"VirtualMachine": VMS, "Pod": PODS}


def list_or_empty(api: ResourceApi, ref: Ref, namespace: str = "",
                  label_selector: str = "") -> list[Obj]:
    """A list, or [] when the kind is not served by this build (404)."""
    try:
        items, _ = api.list(ref, namespace, label_selector)
    except errors.ApiError as err:
        if err.code == 404:
            return []
        raise
    return items


def served(api: ResourceApi, ref: Ref) -> bool:
    try:
        api.list(ref, "", "pacific.lab/probe=none")
    except errors.ApiError as err:
        if err.code == 404:
            return False
        raise
    return True


@dataclass
class World:
    namespaces: dict[str, NamespaceInfo]
    workloads: list[Workload]
    interfaces: list[Obj]
    networks: dict[str, Obj]
    #: owner uid -> (purpose, address) of service VIPs and cluster IPs
    service_addresses: dict[str, list[tuple[str, Address]]] = field(default_factory=dict)
    subnets_by_namespace: dict[str, list[Network]] = field(default_factory=dict)
    used_by_namespace: dict[str, int] = field(default_factory=dict)

    def workloads_in(self, namespace: str) -> list[Workload]:
        return [w for w in self.workloads if w.namespace == namespace]


def _owner_labels(interface: Obj, owners: Mapping[str, Obj]) -> dict[str, str]:
    for ref in interface["metadata"].get("ownerReferences") or []:
        if ref.get("controller") and ref.get("uid") in owners:
            return dict(owners[ref["uid"]]["metadata"].get("labels") or {})
    return {}


def workload_labels(interface: Obj, owners: Mapping[str, Obj]) -> dict[str, str]:
    """The owner's labels (a VM's, a pod's), then the interface's own labels on top."""
    return {**_owner_labels(interface, owners),
            **(interface["metadata"].get("labels") or {})}


def read_world(api: ResourceApi, config: NetworkConfig) -> World:
    subnets: dict[str, list[Network]] = {}
    for record in list_or_empty(api, SUBNETS):
        subnets.setdefault(record["spec"]["namespace"], []).append(
            parse_network(record["spec"]["cidr"]))
    for nets in subnets.values():
        nets.sort()
    namespaces = {
        ns["metadata"]["name"]: NamespaceInfo(
            ns["metadata"]["name"], dict(ns["metadata"].get("labels") or {}),
            tuple(subnets.get(ns["metadata"]["name"], ())))
        for ns in list_or_empty(api, NAMESPACES)}
    addresses: dict[str, Address] = {}
    service_addresses: dict[str, list[tuple[str, Address]]] = {}
    used: dict[str, int] = {}
    for record in list_or_empty(api, ADDRESSES):
        spec = record["spec"]
        uid = (record["metadata"].get("labels") or {}).get(OWNER_UID) or \
            (spec.get("owner") or {}).get("uid", "")
        addr = ipaddress.IPv4Address(spec["address"])
        if spec.get("purpose") == "Workload":
            addresses[uid] = addr
            used[spec.get("namespace", "")] = used.get(spec.get("namespace", ""), 0) + 1
        else:
            service_addresses.setdefault(uid, []).append((spec["purpose"], addr))
    owners = {o["metadata"]["uid"]: o for ref in OWNER_KINDS.values()
              for o in list_or_empty(api, ref)}
    interfaces = list_or_empty(api, INTERFACES)
    workloads = []
    for itf in interfaces:
        meta = itf["metadata"]
        found = addresses.get(meta["uid"])
        if found is None or meta.get("deletionTimestamp"):
            continue
        spec = itf.get("spec") or {}
        workloads.append(Workload(
            namespace=meta["namespace"], name=meta["name"], ip=found,
            mac=str(spec.get("macAddress") or mac_for(meta["uid"])).lower(),
            port=config.workload_port(meta["uid"]),
            hostname=str(spec.get("hostName") or meta["name"]),
            labels=workload_labels(itf, owners)))
    networks = {n["metadata"]["namespace"]: n for n in list_or_empty(api, NETWORKS)
                if n["metadata"]["name"] == DEFAULT_NETWORK}
    return World(namespaces, sorted(workloads, key=lambda w: (w.namespace, w.name)),
                  interfaces, networks, service_addresses, subnets, used)
