"""How a workload (a VM, a pod VM) gets onto its namespace's segment.

The creator of a workload calls :func:`ensure_interface` for each NIC; the
network controllers give the VirtualNetworkInterface an address, and
:func:`attachment` turns its status into what the hypervisor needs (an OVS
NIC: bridge, VLAN tag, port name, MAC) and what the guest needs (address,
gateway, DNS), e.g. for a libvirt ``NicSpec(kind="ovs", ...)`` and a
cloud-init network-config.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from appliance import errors
from appliance.kinds.network import DEFAULT_NETWORK, NET_GROUP, NET_VERSION
from appliance.kinds.registry import Obj
from appliance.resources import Ref, ResourceApi, get_or_none

INTERFACES = Ref(NET_GROUP, NET_VERSION, "virtualnetworkinterfaces")
OWNER_LABEL = "pacific.lab/owner"


@dataclass(frozen=True)
class NicAttachment:
    bridge: str
    vlan: int
    port_name: str
    mac: str
    address: str
    prefix_length: int
    gateway: str
    nameservers: tuple[str, ...]
    search_domains: tuple[str, ...]
    dns_name: str

    @property
    def cidr(self) -> str:
        return f"{self.address}/{self.prefix_length}"


def interface_name(owner_name: str, nic: str = "eth0") -> str:
    name = f"{owner_name}-{nic}"
    if len(name) <= 253:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{owner_name[:253 - len(nic) - 10]}-{digest}-{nic}"


def ensure_interface(api: ResourceApi, owner: Obj, *, nic: str = "eth0",
                     mac: str | None = None, hostname: str | None = None,
                     network: str = DEFAULT_NETWORK) -> Obj:
    """The VirtualNetworkInterface of ``owner``'s NIC ``nic``; created when missing.

    It is owned by ``owner`` (ownerReferences) and carries the owner's name in
    the ``pacific.lab/owner`` label; its DNS name is ``hostname`` (default: the
    owner's name).
    """
    meta = owner["metadata"]
    ns = meta["namespace"]
    name = interface_name(meta["name"], nic)
    current = get_or_none(api, INTERFACES, ns, name)
    if current is not None:
        return current
    spec: Obj = {"virtualNetwork": network, "hostName": hostname or _host_label(meta["name"])}
    if mac:
        spec["macAddress"] = mac
    body = {"apiVersion": f"{NET_GROUP}/{NET_VERSION}", "kind": "VirtualNetworkInterface",
            "metadata": {"name": name, "labels": {OWNER_LABEL: _label_value(meta["name"])},
                         "ownerReferences": [{
                             "apiVersion": owner.get("apiVersion", ""),
                             "kind": owner.get("kind", ""), "name": meta["name"],
                             "uid": meta["uid"], "controller": True,
                             "blockOwnerDeletion": True}]},
            "spec": spec}
    try:
        return api.create(INTERFACES, ns, body)
    except errors.ApiError as err:
        if err.code != 409:
            raise
        return api.get(INTERFACES, ns, name)


def delete_interface(api: ResourceApi, owner: Obj, nic: str = "eth0") -> None:
    meta = owner["metadata"]
    try:
        api.delete(INTERFACES, meta["namespace"], interface_name(meta["name"], nic))
    except errors.ApiError as err:
        if err.code != 404:
            raise


def attachment(interface: Obj) -> NicAttachment | None:
    """What the hypervisor and the guest need, once the interface has an address."""
    status = interface.get("status") or {}
    addresses = status.get("ipAddresses") or []
    if not addresses or not status.get("portName") or not status.get("vlan"):
        return None
    first = addresses[0]
    return NicAttachment(
        bridge=str(status.get("bridge") or ""), vlan=int(status["vlan"]),
        port_name=str(status["portName"]), mac=str(status.get("macAddress") or ""),
        address=str(first["ip"]), prefix_length=int(first["prefixLength"]),
        gateway=str(first.get("gateway") or ""),
        nameservers=tuple(status.get("nameservers") or ()),
        search_domains=tuple(status.get("searchDomains") or ()),
        dns_name=str(status.get("dnsName") or ""))


def _host_label(name: str) -> str:
    """A DNS label from an object name (subdomain names may contain dots)."""
    label = name.replace(".", "-")[:63].strip("-")
    return label or "workload"


def _label_value(name: str) -> str:
    value = name[:63].rstrip("-_.")
    return value
