"""Allocations recorded in the store: one create per allocated VLAN, subnet or address.

Each allocation object is cluster-scoped and named after what it allocates
(``vlan-101``, ``198.19.0.16-28``, ``198.19.0.18``). Creating it is the
allocation: the store serialises writers and refuses a second object of the
same name (409 AlreadyExists), so two controllers racing for the same address
cannot both get it; the loser plans again with the winner's record in view.
Records carry their owner (kind, namespace, name, uid) in ``spec.owner`` and
as labels, so an owner finds its records with one label-selected list and a
deleted owner's records can be swept.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from appliance import errors
from appliance.kinds.network import IPAM_GROUP, IPAM_VERSION
from appliance.kinds.registry import Obj
from appliance.network import ipam
from appliance.network.config import NetworkConfig
from appliance.network.ipam import Address, Network
from appliance.resources import Ref, ResourceApi

LOG = logging.getLogger(__name__)

VLANS = Ref(IPAM_GROUP, IPAM_VERSION, "vlans")
SUBNETS = Ref(IPAM_GROUP, IPAM_VERSION, "subnets")
ADDRESSES = Ref(IPAM_GROUP, IPAM_VERSION, "ipaddresses")

OWNER_UID = "pacific.lab/owner-uid"
OWNER_NAMESPACE = "pacific.lab/namespace"
PURPOSE = "pacific.lab/purpose"
ATTEMPTS = 50

T = TypeVar("T")


def owner_of(obj: Obj) -> dict[str, str]:
    meta = obj["metadata"]
    return {"apiVersion": obj.get("apiVersion", ""), "kind": obj.get("kind", ""),
            "name": meta["name"], "namespace": meta.get("namespace", ""), "uid": meta["uid"]}


def _labels(owner: Obj, purpose: str) -> dict[str, str]:
    return {OWNER_UID: owner["metadata"]["uid"],
            OWNER_NAMESPACE: owner["metadata"].get("namespace", ""), PURPOSE: purpose}


class Allocator:
    def __init__(self, api: ResourceApi, config: NetworkConfig) -> None:
        self.api = api
        self.config = config
        self.layout = config.layout

    # -- generic -------------------------------------------------------------------------

    def owned(self, ref: Ref, uid: str) -> list[Obj]:
        items, _ = self.api.list(ref, "", f"{OWNER_UID}={uid}")
        return items

    def in_namespace(self, ref: Ref, namespace: str) -> list[Obj]:
        items, _ = self.api.list(ref, "", f"{OWNER_NAMESPACE}={namespace}")
        return items

    def _claim(self, ref: Ref, plan: Callable[[list[Obj]], tuple[str, Obj, T]], what: str) -> T:
        """Plan against every record of ``ref``, then create; on a name clash, plan again."""
        for _ in range(ATTEMPTS):
            items, _ = self.api.list(ref)
            name, body, value = plan(items)
            try:
                self.api.create(ref, "", body)
            except errors.ApiError as err:
                if err.code == 409:
                    LOG.info("%s %s was taken concurrently; planning again", what, name)
                    continue
                raise
            return value
        raise ipam.IpamError(f"could not allocate a {what} after {ATTEMPTS} attempts")

    def release(self, uid: str, refs: Iterable[Ref] = (VLANS, SUBNETS, ADDRESSES)) -> int:
        """Delete every record owned by ``uid``; returns how many were deleted."""
        count = 0
        for ref in refs:
            for item in self.owned(ref, uid):
                try:
                    self.api.delete(ref, "", item["metadata"]["name"])
                    count += 1
                except errors.ApiError as err:
                    if err.code != 404:
                        raise
        return count

    # -- VLANs ---------------------------------------------------------------------------

    def vlan_for(self, network: Obj) -> int:
        mine = self.owned(VLANS, network["metadata"]["uid"])
        if mine:
            return int(min(r["spec"]["vlan"] for r in mine))
        ns = network["metadata"]["namespace"]

        def plan(items: list[Obj]) -> tuple[str, Obj, int]:
            vlan = ipam.free_vlan(int(i["spec"]["vlan"]) for i in items)
            return f"vlan-{vlan}", self._record("VLAN", f"vlan-{vlan}", network, "Segment", {
                "vlan": vlan, "namespace": ns}), vlan
        vlan = self._claim(VLANS, plan, "VLAN")
        LOG.info("[%s] VLAN %d allocated", ns, vlan)
        return vlan

    # -- subnets -------------------------------------------------------------------------

    def subnets_of(self, network: Obj) -> list[Network]:
        return sorted(ipam.parse_network(r["spec"]["cidr"])
                      for r in self.owned(SUBNETS, network["metadata"]["uid"]))

    def taken_subnets(self, items: list[Obj]) -> dict[Network, str]:
        return {ipam.parse_network(i["spec"]["cidr"]): f"namespace {i['spec']['namespace']}"
                for i in items}

    def add_subnet(self, network: Obj, requested: Network | None = None) -> Network:
        """Another subnet for ``network``: ``requested`` (checked), or the next free block."""
        ns = network["metadata"]["namespace"]
        prefix = int((network.get("spec") or {}).get("subnetPrefixLength")
                     or self.config.subnet_prefix)

        def plan(items: list[Obj]) -> tuple[str, Obj, Network]:
            taken = self.taken_subnets(items)
            if requested is not None:
                ipam.check_requested(requested, taken, self.layout.reserved())
                net = requested
            else:
                if not self.layout.pool.prefixlen <= prefix <= 29:
                    raise ipam.InvalidCidr(f"subnetPrefixLength /{prefix} does not fit the "
                                           f"pool {self.layout.pool}")
                net = ipam.free_subnet(self.layout.pool, prefix, taken)
            name = ipam.subnet_name(net)
            return name, self._record("Subnet", name, network, "Segment", {
                "cidr": str(net), "gateway": str(ipam.gateway_of(net)), "namespace": ns}), net
        net = self._claim(SUBNETS, plan, "subnet")
        LOG.info("[%s] subnet %s allocated", ns, net)
        return net

    # -- addresses -----------------------------------------------------------------------

    def address_of(self, owner: Obj) -> tuple[Address, Network] | None:
        for record in self.owned(ADDRESSES, owner["metadata"]["uid"]):
            spec = record["spec"]
            addr = ipaddress.IPv4Address(spec["address"])
            return addr, ipaddress.IPv4Network((int(addr), int(spec["prefixLength"])),
                                               strict=False)
        return None

    def address_for(self, owner: Obj, subnets: list[Network]) -> tuple[Address, Network]:
        """The workload address of ``owner`` (an interface); allocated on first call."""
        have = self.address_of(owner)
        if have is not None:
            return have
        ns = owner["metadata"]["namespace"]

        def plan(items: list[Obj]) -> tuple[str, Obj, tuple[Address, Network]]:
            taken = [ipaddress.IPv4Address(i["spec"]["address"]) for i in items]
            addr = ipam.free_address(subnets, taken)
            subnet = next(s for s in subnets if addr in s)
            return str(addr), self._record("IPAddress", str(addr), owner, "Workload", {
                "address": str(addr), "prefixLength": subnet.prefixlen,
                "gateway": str(ipam.gateway_of(subnet)), "purpose": "Workload",
                "namespace": ns}), (addr, subnet)
        result = self._claim(ADDRESSES, plan, "address")
        LOG.info("[%s/%s] address %s allocated", ns, owner["metadata"]["name"], result[0])
        return result

    def vip_for(self, owner: Obj, purpose: str, wanted: str = "") -> Address:
        """A load-balancer VIP (ingress range) or a cluster IP for a service."""
        cidr = self.layout.ingress if purpose == "LoadBalancer" else self.layout.cluster_ips
        for record in self.owned(ADDRESSES, owner["metadata"]["uid"]):
            if record["spec"]["purpose"] == purpose:
                return ipaddress.IPv4Address(record["spec"]["address"])
        ns = owner["metadata"]["namespace"]

        def plan(items: list[Obj]) -> tuple[str, Obj, Address]:
            taken = [ipaddress.IPv4Address(i["spec"]["address"]) for i in items]
            if wanted:
                addr = ipaddress.IPv4Address(wanted)
                if addr not in cidr:
                    raise ipam.InvalidCidr(f"requested address {addr} is not in the "
                                           f"{purpose} range {cidr}")
                if addr in taken:
                    raise ipam.CidrOverlap(f"requested address {addr} is already in use")
            else:
                addr = ipam.free_in_range(cidr, taken)
            return str(addr), self._record("IPAddress", str(addr), owner, purpose, {
                "address": str(addr), "prefixLength": 32, "gateway": "", "purpose": purpose,
                "namespace": ns}), addr
        addr = self._claim(ADDRESSES, plan, f"{purpose} address")
        LOG.info("[%s/%s] %s address %s allocated", ns, owner["metadata"]["name"], purpose,
                 addr)
        return addr

    # -- records -------------------------------------------------------------------------

    def _record(self, kind: str, name: str, owner: Obj, purpose: str, spec: dict[str, Any]
                ) -> Obj:
        return {"apiVersion": f"{IPAM_GROUP}/{IPAM_VERSION}", "kind": kind,
                "metadata": {"name": name, "labels": _labels(owner, purpose)},
                "spec": {**spec, "owner": owner_of(owner)}}
