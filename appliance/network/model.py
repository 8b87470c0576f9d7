"""Plain typed views of the network objects that the compilers work on.

The controllers read VirtualNetworks, VirtualNetworkInterfaces, Namespaces
and NetworkPolicies from the store and turn them into these; the policy
compiler and the flow/config renderers only see these, so they are pure and
unit-tested without a store.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

from appliance.network.ipam import Address, Network, gateway_of


@dataclass(frozen=True)
class Segment:
    """A namespace's L2 segment: one VLAN on the integration bridge."""

    namespace: str
    vlan: int
    subnets: tuple[Network, ...]
    gateway_port: str
    snat: bool = True

    @property
    def gateways(self) -> tuple[Address, ...]:
        return tuple(gateway_of(s) for s in self.subnets)


@dataclass(frozen=True)
class Workload:
    """One NIC on a segment (a VirtualNetworkInterface with an address)."""

    namespace: str
    name: str
    ip: Address
    mac: str
    port: str
    hostname: str
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class NamespaceInfo:
    """What a namespaceSelector sees: the namespace's labels and its subnets."""

    name: str
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    subnets: tuple[Network, ...] = ()

    @property
    def selector_labels(self) -> dict[str, str]:
        # As kube-apiserver does since 1.21, every namespace carries its own name.
        return {**self.labels, "kubernetes.io/metadata.name": self.name}


def host_network(address: Address) -> Network:
    return ipaddress.IPv4Network((int(address), 32))
