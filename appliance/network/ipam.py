"""Address management: pure planning over what is already taken.

The supervisor-wide pool (``NetworkConfig.pool_cidr``, 198.19.0.0/16 by
default) is carved into per-namespace subnets of a configurable prefix length
(/28 by default, as NSX-T does); a namespace that runs out of addresses gets
another subnet. Inside a subnet the first host address is the gateway (the
host's port on the segment); workloads get the others.

Functions here decide, they do not store: the controllers record every
decision as one create of an allocation object whose *name* is the thing
allocated (``Subnet`` ``198.19.0.16-28``, ``IPAddress`` ``198.19.0.18``,
``VLAN`` ``vlan-101``). The store serialises writers and refuses a second
object of the same name, so an address or VLAN can never be handed out twice,
even by two controllers racing; a loser simply plans again.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

Network = ipaddress.IPv4Network
Address = ipaddress.IPv4Address

VLAN_MIN = 100
VLAN_MAX = 3999


class IpamError(Exception):
    """A request the pool cannot satisfy; ``reason`` is a condition reason."""

    reason = "IPAMError"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidCidr(IpamError):
    reason = "InvalidCIDR"


class CidrOverlap(IpamError):
    reason = "CIDROverlap"


class PoolExhausted(IpamError):
    reason = "PoolExhausted"


class SubnetExhausted(IpamError):
    reason = "AddressesExhausted"


def parse_network(text: str, what: str = "CIDR") -> Network:
    """An IPv4 network in strict form (``198.19.0.0/16``, no host bits)."""
    try:
        net = ipaddress.ip_network(str(text), strict=True)
    except ValueError as exc:
        raise InvalidCidr(f"{what} {text!r} is not a valid IPv4 network: {exc}") from exc
    if not isinstance(net, ipaddress.IPv4Network):
        raise InvalidCidr(f"{what} {text!r} is not IPv4")
    return net


def subnet_name(net: Network) -> str:
    """The allocation object's name for a subnet: ``198.19.0.16-28``."""
    return f"{net.network_address}-{net.prefixlen}"


def subnet_from_name(name: str) -> Network:
    address, _, prefix = name.rpartition("-")
    return parse_network(f"{address}/{prefix}")


def gateway_of(subnet: Network) -> Address:
    """The first host address: the host's gateway port on the segment."""
    if subnet.prefixlen > 29:
        raise InvalidCidr(f"subnet {subnet} is too small: a segment needs at least a /29 "
                          "(network, gateway, workloads, broadcast)")
    return subnet.network_address + 1


def workload_addresses(subnet: Network) -> Iterator[Address]:
    """Addresses a workload may get: every host address except the gateway."""
    gateway = gateway_of(subnet)
    for addr in subnet.hosts():
        if addr != gateway:
            yield addr


def capacity(subnets: Iterable[Network]) -> int:
    return sum(max(0, s.num_addresses - 3) for s in subnets)


def overlapping(net: Network, taken: Mapping[Network, str]) -> list[tuple[Network, str]]:
    """Entries of ``taken`` (network -> owner description) that overlap ``net``."""
    return sorted(((other, owner) for other, owner in taken.items() if net.overlaps(other)),
                  key=lambda item: item[0])


def check_requested(requested: Network, taken: Mapping[Network, str],
                    reserved: Mapping[Network, str] = {}) -> None:  # noqa: B006 - read only
    """Refuse an explicitly requested subnet that overlaps another one or a reserved range."""
    if requested.prefixlen > 29:
        raise InvalidCidr(f"subnet {requested} is too small: a segment needs at least a /29")
    clashes = overlapping(requested, {**reserved, **taken})
    if clashes:
        detail = "; ".join(f"{net} ({owner})" for net, owner in clashes)
        raise CidrOverlap(f"CIDR {requested} overlaps {detail}")


def free_subnet(pool: Network, prefix: int, taken: Iterable[Network]) -> Network:
    """The first ``/prefix`` block of ``pool`` that overlaps nothing in ``taken``.

    Blocks are aligned to their size. Runs in O(n log n) over ``taken``.
    """
    if not pool.prefixlen <= prefix <= 29:
        raise InvalidCidr(f"subnet prefix /{prefix} does not fit pool {pool} (it must be "
                          f"between /{pool.prefixlen} and /29)")
    size = 1 << (32 - prefix)
    base = int(pool.network_address)
    end = int(pool.broadcast_address) + 1
    # taken ranges clipped to the pool, sorted by start
    ranges = sorted((max(int(t.network_address), base), min(int(t.broadcast_address) + 1, end))
                    for t in taken if t.overlaps(pool))
    candidate = base
    for start, stop in ranges:
        if candidate + size <= start:
            break
        if stop > candidate:
            # jump past this range, rounded up to the next aligned block
            candidate = base + -(-(stop - base) // size) * size
    if candidate + size > end:
        raise PoolExhausted(f"the namespace pool {pool} has no free /{prefix} left")
    return ipaddress.IPv4Network((candidate, prefix))


def free_address(subnets: Sequence[Network], taken: Iterable[Address]) -> Address:
    """The lowest workload address of ``subnets`` (in order) not in ``taken``."""
    used = set(taken)
    for subnet in subnets:
        for addr in workload_addresses(subnet):
            if addr not in used:
                return addr
    names = ", ".join(str(s) for s in subnets) or "no subnets"
    raise SubnetExhausted(f"no free address in {names}")


def free_in_range(cidr: Network, taken: Iterable[Address]) -> Address:
    """The lowest host address of a range (load-balancer VIPs) not in ``taken``."""
    used = set(taken)
    for addr in cidr.hosts():
        if addr not in used:
            return addr
    raise PoolExhausted(f"the address range {cidr} has no free address left")


def free_vlan(taken: Iterable[int], lo: int = VLAN_MIN, hi: int = VLAN_MAX) -> int:
    used = set(taken)
    for vlan in range(lo, hi + 1):
        if vlan not in used:
            return vlan
    raise PoolExhausted(f"no free VLAN between {lo} and {hi}")


@dataclass(frozen=True)
class PoolLayout:
    """The ranges the configuration reserves; they must not overlap each other."""

    pool: Network
    ingress: Network
    cluster_ips: Network

    def reserved(self) -> dict[Network, str]:
        return {self.ingress: "the load-balancer ingress range",
                self.cluster_ips: "the cluster-IP range"}

    def problems(self) -> list[str]:
        named = [(self.pool, "namespace pool"), (self.ingress, "ingress range"),
                 (self.cluster_ips, "cluster-IP range")]
        out = []
        for i, (a, an) in enumerate(named):
            for b, bn in named[i + 1:]:
                if a.overlaps(b):
                    out.append(f"the {an} {a} overlaps the {bn} {b}")
        return out
