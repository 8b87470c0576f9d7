"""The appliance network: one isolated libvirt network VMs are attached to
until namespace segments (Open vSwitch) take over.

It is a Linux bridge with the host's gateway address on it, no DHCP (VMs get
static addresses through cloud-init's network-config) and no forwarding, so
nothing on it is routed anywhere.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass

import libvirt
from jinja2 import Environment, StrictUndefined

LOG = logging.getLogger(__name__)

# libvirt prints every error to stderr unless a handler is registered; ours are
# raised as exceptions and reported by the caller.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

_TEMPLATE = Environment(autoescape=True, undefined=StrictUndefined).from_string(
    "<network>\n"
    "  <name>{{ name }}</name>\n"
    "  <bridge name='{{ bridge }}' stp='off' delay='0'/>\n"
    "  <ip address='{{ address }}' netmask='{{ netmask }}'/>\n"
    "</network>\n")


class NetworkError(RuntimeError):
    pass


@dataclass(frozen=True)
class ApplianceNetwork:
    name: str
    bridge: str
    cidr: str

    @property
    def gateway(self) -> str:
        return str(next(ipaddress.ip_network(self.cidr).hosts()))

    def xml(self) -> str:
        net = ipaddress.ip_network(self.cidr)
        return _TEMPLATE.render(name=self.name, bridge=self.bridge, address=self.gateway,
                                netmask=str(net.netmask))


def ensure_network(spec: ApplianceNetwork, uri: str = "qemu:///system") -> bool:
    """Define, start and autostart the network; True if anything changed."""
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError as exc:
        raise NetworkError(f"cannot connect to libvirt: {exc}") from exc
    changed = False
    try:
        try:
            net = conn.networkLookupByName(spec.name)
        except libvirt.libvirtError:
            net = conn.networkDefineXML(spec.xml())
            changed = True
            LOG.info("defined libvirt network %s (%s on %s)", spec.name, spec.cidr, spec.bridge)
        if not net.isActive():
            net.create()
            changed = True
        if not net.autostart():
            net.setAutostart(1)
            changed = True
    except libvirt.libvirtError as exc:
        raise NetworkError(f"network {spec.name}: {exc}") from exc
    finally:
        conn.close()
    return changed


def remove_network(name: str, uri: str = "qemu:///system") -> None:
    conn = libvirt.open(uri)
    try:
        net = conn.networkLookupByName(name)
        if net.isActive():
            net.destroy()
        net.undefine()
    except libvirt.libvirtError:
        pass
    finally:
        conn.close()
