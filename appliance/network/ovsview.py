"""What is on the host right now, for drift checks (reading only; playbooks write).

A thin layer over :mod:`hypervisor.ovs` that knows the network layer's names:
:func:`drift` compares one namespace's desired configuration with what the
host has, cheaply (a few ``ovs-vsctl``/``ovs-ofctl``/``nft``/``ip`` calls),
so the controller only runs the playbook when something is off.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping

from appliance.network import flows as flowlib
from appliance.network.config import BASE_COOKIE, NetworkConfig
from appliance.network.hostconfig import NamespaceHost
from hypervisor import ovs

_IN_PORT = re.compile(r"in_port=([A-Za-z][A-Za-z0-9_.-]*)")

bridge_exists = ovs.bridge_exists
default_route_interface = ovs.default_route_interface


def ports(bridge: str) -> list[ovs.OvsPort]:
    return ovs.list_ports(bridge)


def has_address(link: str, address: str) -> bool:
    return any(a.split("/")[0] == address for a in ovs.link_addresses(link))


def host_drift(config: NetworkConfig) -> list[str]:
    """What differs between the bridge-wide configuration and this host ([] when nothing
    does): the bridge, and its pipeline, which lives only in ovs-vswitchd (a restarted
    ovs-vswitchd has the bridge back from its database, and no flows)."""
    if not ovs.bridge_exists(config.bridge):
        return [f"bridge {config.bridge} is missing"]
    flows = ovs.dump_flows(config.bridge, BASE_COOKIE)
    expected = len(flowlib.base_flows())
    if len(flows) != expected:
        return [f"{len(flows)} flows under cookie {BASE_COOKIE:#x}, {expected} expected"]
    return []


def referenced_ports(host: NamespaceHost) -> set[str]:
    """The ports that the namespace's flows match on."""
    return {name for f in host.flows() for name in _IN_PORT.findall(f)}


def ofports(bridge: str, names: set[str]) -> dict[str, int]:
    """The OpenFlow numbers of those of ``names`` that exist now."""
    return {p.name: p.ofport for p in ovs.list_ports(bridge) if p.name in names and p.ofport > 0}


def drift(host: NamespaceHost, installed: Mapping[str, int] | None = None) -> list[str]:
    """What differs between ``host`` and this host ([] when nothing does). ``installed``:
    the ports' OpenFlow numbers when the flows were installed (a flow holds the number, so
    a port deleted and made again, as a VM's is when it is powered off and on, keeps the
    count of flows right and their numbers wrong)."""
    c, s = host.config, host.segment
    found: list[str] = []
    if not ovs.bridge_exists(c.bridge):
        return [f"bridge {c.bridge} is missing"]
    by_name = {p.name: p for p in ovs.list_ports(c.bridge)}
    gw = by_name.get(s.gateway_port)
    if gw is None:
        found.append(f"gateway port {s.gateway_port} is missing")
    elif gw.tag != s.vlan:
        found.append(f"gateway port {s.gateway_port} has tag {gw.tag}, not {s.vlan}")
    live = {p for p, port in by_name.items() if port.ofport > 0}
    expected = [f for f in host.flows() if all(n in live for n in _IN_PORT.findall(f))]
    if installed is not None:
        moved = sorted(n for n in referenced_ports(host) & live
                       if installed.get(n) != by_name[n].ofport)
        if moved:
            found.append("flows hold earlier OpenFlow numbers of " + ", ".join(moved))
    flows = ovs.dump_flows(c.bridge, s.vlan)
    if len(flows) != len(expected):
        found.append(f"{len(flows)} flows under cookie {s.vlan:#x}, {len(expected)} expected")
    want_addrs = set(host.extravars()["lab_ns"]["gateway_addresses"])
    have_addrs = {str(ipaddress.ip_interface(a)) for a in ovs.link_addresses(s.gateway_port)}
    if gw is not None and want_addrs != have_addrs:
        found.append(f"gateway addresses are {sorted(have_addrs)}, not {sorted(want_addrs)}")
    ns_dir = c.namespace_dir(s.vlan)
    if ovs.pid_alive(ns_dir / "dnsmasq.pid", "dnsmasq") is None:
        found.append("dnsmasq is not running")
    if ovs.nft_table_text("inet", c.nft_table(s.vlan)) is None:
        found.append(f"nft table {c.nft_table(s.vlan)} is missing")
    balanced = bool(host.extravars()["lab_ns"]["listeners"])
    if balanced and ovs.pid_alive(ns_dir / "haproxy.pid", "haproxy") is None:
        found.append("haproxy is not running")
    return found
