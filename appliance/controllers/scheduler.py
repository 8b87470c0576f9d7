"""The scheduler: places each VM on a host with room for it, and gives it an address.

It looks at every Ready Node, subtracts what the VMs already placed there take
(memory in full, vCPUs against the host's CPUs times an allocation ratio),
and picks the host with the most free memory that fits. The choice and the
VM's address on the appliance network are written to the VM's status; the
host agent of the chosen host then builds the VM.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from dataclasses import dataclass
from decimal import Decimal

from appliance import errors
from appliance.controllers.base import Controller, drop_finalizer
from appliance.kinds.registry import Obj
from appliance.kinds.vmop import GROUP, STORAGE, VM_FINALIZER
from appliance.resources import Ref, ResourceApi, get_or_none
from appliance.util.quantity import parse_quantity
from appliance.util.timefmt import now_rfc3339
from hypervisor.ssh import generate_keypair

LOG = logging.getLogger(__name__)

NODES = Ref("", "v1", "nodes")
CLASSES = Ref(GROUP, STORAGE, "virtualmachineclasses")
PLACED = "VirtualMachineConditionPlacementReady"
SECRETS = Ref("", "v1", "secrets")
SSH_KEY_SECRET_SUFFIX = "-ssh-key"


@dataclass
class Room:
    node: str
    cpu: Decimal
    memory: Decimal


#: VMs and pod VMs share the appliance network's addresses; their schedulers run in
#: one process and take this lock from "list what is used" to "record the choice".
APPLIANCE_ADDRESSES = threading.Lock()
PODS = Ref("", "v1", "pods")


def pod_address(pod: Obj) -> str | None:
    return (pod.get("status") or {}).get("podIP") or None


def placed_pods(api: ResourceApi) -> list[Obj]:
    """Pods placed on a host that still hold their VM's resources and address."""
    from appliance.kinds.pods import terminal

    try:
        pods, _ = api.list(PODS)
    except errors.ApiError as err:
        if err.code == 404:  # a registry without pods
            return []
        raise
    return [p for p in pods if (p.get("spec") or {}).get("nodeName") and not terminal(p)]


#: The appliance network's first hosts (.1-.9 in a /24) are not handed out: .1 is the
#: host's gateway address, the rest are kept for the host and the supervisor's control
#: plane (its floating IP and VMs: ``appliance.controlplane.config``).
RESERVED_HOSTS = 9
#: The only namespace whose VMs may ask for a reserved address: the supervisor's own.
SYSTEM_NAMESPACE = "kube-system"


def free_appliance_address(network: ipaddress.IPv4Network | ipaddress.IPv6Network,
                           used: set[str | None]) -> str | None:
    for addr in list(network.hosts())[RESERVED_HOSTS:]:
        if str(addr) not in used:
            return str(addr)
    return None


def requested_address(vm: Obj, network: ipaddress.IPv4Network | ipaddress.IPv6Network
                      ) -> tuple[str | None, str]:
    """The static address a VM asks for (vm-operator's ``spec.network.interfaces[0]
    .addresses``, as ``ADDRESS/PREFIX``) on the appliance network: ``(address, "")``,
    ``(None, "")`` when it asks for none, or ``(None, why not)``."""
    interfaces = ((vm.get("spec") or {}).get("network") or {}).get("interfaces") or []
    wanted = [a for a in (interfaces[0].get("addresses") or [])] if interfaces else []
    if not wanted:
        return None, ""
    if len(wanted) > 1 or len(interfaces) > 1:
        return None, "only one static address on one interface is supported"
    text = str(wanted[0])
    try:
        iface = ipaddress.ip_interface(text)
    except ValueError:
        return None, f"static address {text!r} is not ADDRESS/PREFIX"
    if "/" not in text or iface.network.prefixlen != network.prefixlen:
        return None, f"static address {text!r} must have the network's prefix /{network.prefixlen}"
    hosts = list(network.hosts())
    if iface.ip not in network or iface.ip not in hosts:
        return None, f"static address {iface.ip} is not a host address of {network}"
    if hosts.index(iface.ip) < RESERVED_HOSTS and (
            vm["metadata"]["namespace"] != SYSTEM_NAMESPACE or hosts.index(iface.ip) == 0):
        return None, f"static address {iface.ip} is reserved for the host and the supervisor"
    return str(iface.ip), ""


def node_ready(node: Obj) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (node.get("status") or {}).get("conditions") or [])


def vm_address(vm: Obj) -> str | None:
    for iface in ((vm.get("status") or {}).get("network") or {}).get("interfaces") or []:
        for addr in ((iface.get("ip") or {}).get("addresses")) or []:
            return str(addr.get("address", "")).split("/")[0] or None
    return None


def set_condition(conditions: list[Obj], type_: str, status: str, reason: str,
                  message: str, generation: int | None = None) -> list[Obj]:
    """Replace the condition of ``type_``; keep its transition time if the status is unchanged."""
    out = [c for c in conditions if c.get("type") != type_]
    old = next((c for c in conditions if c.get("type") == type_), None)
    since = old.get("lastTransitionTime") if old and old.get("status") == status else None
    cond: Obj = {"type": type_, "status": status, "reason": reason, "message": message,
                 "lastTransitionTime": since or now_rfc3339()}
    if generation is not None:
        cond["observedGeneration"] = generation
    out.append(cond)
    return sorted(out, key=lambda c: str(c["type"]))


def class_size(api: ResourceApi, vm: Obj) -> tuple[Decimal, Decimal] | None:
    """(vCPUs, bytes) of a VM's class, or None when its namespace has no such class."""
    cls = get_or_none(api, CLASSES, vm["metadata"]["namespace"],
                      (vm.get("spec") or {}).get("className", ""))
    if cls is None:
        return None
    hw = (cls.get("spec") or {}).get("hardware") or {}
    return Decimal(int(hw.get("cpus") or 1)), parse_quantity(hw.get("memory") or "1Gi")


def host_rooms(api: ResourceApi, cpu_ratio: Decimal, vms: list[Obj]) -> list[Room]:
    """What each Ready, schedulable host (not cordoned, no NoSchedule taint: not a
    control-plane VM) has left: its CPUs times ``cpu_ratio`` and its memory, minus the
    VMs (by class) and the unfinished pod VMs placed on it."""
    from appliance.kinds.pods import placement_size

    nodes, _ = api.list(NODES)
    rooms = {}
    for node in nodes:
        spec = node.get("spec") or {}
        if not node_ready(node) or spec.get("unschedulable") or any(
                t.get("effect") == "NoSchedule" for t in spec.get("taints") or []):
            continue
        alloc = (node.get("status") or {}).get("allocatable") or {}
        rooms[node["metadata"]["name"]] = Room(
            node["metadata"]["name"], parse_quantity(alloc.get("cpu", "0")) * cpu_ratio,
            parse_quantity(alloc.get("memory", "0")))
    for vm in vms:
        host = (vm.get("status") or {}).get("host")
        size = class_size(api, vm) if host in rooms else None
        if size is not None:
            rooms[host].cpu -= size[0]
            rooms[host].memory -= size[1]
    for pod in placed_pods(api):
        host = pod["spec"]["nodeName"]
        if host in rooms:
            cpus, mib = placement_size(pod)
            rooms[host].cpu -= cpus
            rooms[host].memory -= Decimal(mib) * 2**20
    return list(rooms.values())


class VmScheduler(Controller):
    group, version, plural, name = GROUP, STORAGE, "virtualmachines", "vm-scheduler"
    resync = 30.0

    def __init__(self, api: ResourceApi, cidr: str, cpu_ratio: float = 4.0,
                 namespace_network: bool = False) -> None:
        super().__init__(api)
        self.network = ipaddress.ip_network(cidr)
        self.cpu_ratio = Decimal(str(cpu_ratio))
        # True: addresses come from the namespace's network (VirtualNetworkInterface)
        self.namespace_network = namespace_network

    def on_namespace_network(self, vm: Obj) -> bool:
        """Whether the VM goes on its namespace's segment: with namespace networks on,
        every VM but the supervisor's own, which stay on the appliance network."""
        return self.namespace_network and vm["metadata"]["namespace"] != SYSTEM_NAMESPACE

    def used_addresses(self, vms: list[Obj]) -> set[str | None]:
        return {vm_address(v) for v in vms} | {pod_address(p) for p in placed_pods(self.api)}

    def allocate(self, vms: list[Obj]) -> str | None:
        return free_appliance_address(self.network, self.used_addresses(vms))

    def reconcile(self, vm: Obj) -> float | None:
        meta = vm["metadata"]
        status = vm.get("status") or {}
        on_segment = self.on_namespace_network(vm)
        if meta.get("deletionTimestamp"):
            self._drop_access_key(vm)
            if on_segment:
                from appliance.network.attach import delete_interface

                delete_interface(self.api, vm)
            if not status.get("host"):
                # Never placed, so no host agent built anything or will ever look at it:
                # the finalizer is ours to drop (else the VM, and its namespace, hang).
                drop_finalizer(self.api, self.ref, vm, VM_FINALIZER)
            return None
        self._ensure_access_key(vm)
        if status.get("host"):
            return None
        size = class_size(self.api, vm)
        conditions = list(status.get("conditions") or [])
        if size is None:
            conditions = set_condition(conditions, PLACED, "False", "ClassNotFound",
                                       "the VM's class is not in its namespace")
            self._write(vm, {"conditions": conditions})
            return 30.0
        vms, _ = self.api.list(self.ref)
        fits = [r for r in host_rooms(self.api, self.cpu_ratio, vms)
                if r.cpu >= size[0] and r.memory >= size[1]]
        if not fits:
            conditions = set_condition(conditions, PLACED, "False", "InsufficientCapacity",
                                       f"no Ready host has {size[0]} vCPUs and "
                                       f"{size[1] / 2**20:.0f} MiB free")
            self._write(vm, {"conditions": conditions})
            return 15.0
        room = max(fits, key=lambda r: (r.memory, r.cpu))
        if on_segment:
            if requested_address(vm, self.network) != (None, ""):
                conditions = set_condition(conditions, PLACED, "False", "AddressNotAllowed",
                                           "static addresses are only supported on the "
                                           "appliance network, not on namespace networks")
                self._write(vm, {"conditions": conditions})
                return None
            return self._place_on_namespace_network(vm, room, conditions)
        with APPLIANCE_ADDRESSES:
            wanted, problem = requested_address(vm, self.network)
            if problem:
                conditions = set_condition(conditions, PLACED, "False", "AddressNotAllowed",
                                           problem)
                self._write(vm, {"conditions": conditions})
                return None  # until the spec changes
            vms = self.api.list(self.ref)[0]
            if wanted is not None and wanted in self.used_addresses(vms):
                conditions = set_condition(conditions, PLACED, "False", "AddressInUse",
                                           f"static address {wanted} is taken")
                self._write(vm, {"conditions": conditions})
                return 15.0
            address = wanted or self.allocate(vms)
            if address is None:
                conditions = set_condition(conditions, PLACED, "False", "AddressPoolExhausted",
                                           f"no free address in {self.network}")
                self._write(vm, {"conditions": conditions})
                return 30.0
            gateway = str(next(self.network.hosts()))
            conditions = set_condition(conditions, PLACED, "True", "Placed",
                                       f"placed on {room.node} with address {address}")
            self._write(vm, {"host": room.node, "conditions": conditions, "network": {
                "interfaces": [{"name": "eth0", "ip": {
                    "addresses": [{"address": f"{address}/{self.network.prefixlen}"}],
                    "gateway4": gateway}}]}})
        LOG.info("[%s/%s] placed on %s with %s", meta["namespace"], meta["name"], room.node,
                 address)
        return None

    def _place_on_namespace_network(self, vm: Obj, room: Room, conditions: list[Obj]
                                    ) -> float | None:
        """The VM's address from its namespace's network (one VirtualNetworkInterface)."""
        from appliance.network.attach import attachment, ensure_interface
        from appliance.network.config import mac_for

        meta = vm["metadata"]
        host = ((vm.get("spec") or {}).get("network") or {}).get("hostName") or \
            meta["name"].split(".")[0]
        nic = attachment(ensure_interface(self.api, vm, mac=mac_for(meta["uid"]),
                                          hostname=host))
        if nic is None:
            conditions = set_condition(conditions, PLACED, "False", "WaitingForNetwork",
                                       "waiting for an address on the namespace's network")
            self._write(vm, {"conditions": conditions})
            return 2.0
        conditions = set_condition(conditions, PLACED, "True", "Placed",
                                   f"placed on {room.node} with address {nic.address}")
        self._write(vm, {"host": room.node, "conditions": conditions, "network": {
            "interfaces": [{"name": "eth0", "ip": {
                "addresses": [{"address": nic.cidr}], "gateway4": nic.gateway},
                "dns": {"nameservers": list(nic.nameservers),
                        "searchDomains": list(nic.search_domains)}}]}})
        LOG.info("[%s/%s] placed on %s with %s (VLAN %d)", meta["namespace"], meta["name"],
                 room.node, nic.address, nic.vlan)
        return None

    def _ensure_access_key(self, vm: Obj) -> None:
        """The key pair ``lab ssh`` uses, kept in a Secret next to the VM (as TKG's
        ``<cluster>-ssh`` Secret): readable by the namespace's editors, not viewers."""
        meta = vm["metadata"]
        name = meta["name"] + SSH_KEY_SECRET_SUFFIX
        if get_or_none(self.api, SECRETS, meta["namespace"], name) is not None:
            return
        private, public = generate_keypair(f"{meta['namespace']}/{meta['name']}")
        self.api.create(SECRETS, meta["namespace"], {
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/ssh-auth",
            "metadata": {"name": name, "labels": {"pacific.lab/vm": meta["name"]},
                         "ownerReferences": [{
                             "apiVersion": vm["apiVersion"], "kind": "VirtualMachine",
                             "name": meta["name"], "uid": meta["uid"], "controller": True}]},
            "stringData": {"ssh-privatekey": private, "ssh-publickey": public}})

    def _drop_access_key(self, vm: Obj) -> None:
        meta = vm["metadata"]
        secret = get_or_none(self.api, SECRETS, meta["namespace"],
                             meta["name"] + SSH_KEY_SECRET_SUFFIX)
        owners = [o.get("uid") for o in (secret or {}).get("metadata", {}).get(
            "ownerReferences") or []]
        if secret is not None and meta["uid"] in owners:
            try:
                self.api.delete(SECRETS, meta["namespace"], secret["metadata"]["name"])
            except errors.ApiError as err:
                if err.code != 404:
                    raise

    def _write(self, vm: Obj, status: Obj) -> None:
        self.api.patch(self.ref, vm["metadata"]["namespace"], vm["metadata"]["name"],
                       {"status": status}, subresource="status")
