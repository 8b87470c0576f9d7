"""The pod scheduler: binds each new Pod to a host with room for its VM, and gives it an
address.

Room is what the host offers (memory in full, vCPUs times the allocation ratio)
minus the VMs and the unfinished pod VMs already there; the pod's VM size comes
from its containers' limits (or requests). The address comes from the pod's
namespace network (a VirtualNetworkInterface owned by the pod) or, without
namespace networks, from the appliance network shared with VMs.

The binding is written as Kubernetes' scheduler writes it: ``spec.nodeName`` (set
once), the ``PodScheduled`` condition, and a ``Scheduled`` event. A pod that fits
nowhere stays Pending with ``PodScheduled=False, reason Unschedulable``.
"""

from __future__ import annotations

import ipaddress
import logging
from decimal import Decimal

from appliance import events
from appliance.controllers.base import Controller
from appliance.controllers.scheduler import (
    APPLIANCE_ADDRESSES,
    free_appliance_address,
    host_rooms,
    placed_pods,
    pod_address,
    set_condition,
    vm_address,
)
from appliance.kinds.pods import placement_size, terminal
from appliance.kinds.registry import Obj
from appliance.kinds.vmop import GROUP, STORAGE
from appliance.resources import Ref, ResourceApi

LOG = logging.getLogger(__name__)

VMS = Ref(GROUP, STORAGE, "virtualmachines")


class PodScheduler(Controller):
    group, version, plural, name = "", "v1", "pods", "pod-scheduler"
    resync = 30.0
    workers = 1  # one decision at a time: two pods never take the same room or address

    def __init__(self, api: ResourceApi, cidr: str, cpu_ratio: float = 4.0,
                 namespace_network: bool = False) -> None:
        super().__init__(api)
        self.network = ipaddress.ip_network(cidr)
        self.cpu_ratio = Decimal(str(cpu_ratio))
        self.namespace_network = namespace_network

    def wants(self, pod: Obj) -> bool:
        return not pod["metadata"].get("deletionTimestamp") and not terminal(pod)

    def reconcile(self, pod: Obj) -> float | None:
        spec = pod.get("spec") or {}
        if spec.get("nodeName"):
            return self._ensure_address(pod, spec["nodeName"])
        cpus, mib = placement_size(pod)
        vms, _ = self.api.list(VMS)
        rooms = host_rooms(self.api, self.cpu_ratio, vms)
        fits = [r for r in rooms if r.cpu >= cpus and r.memory >= Decimal(mib) * 2**20]
        if not fits:
            why = (f"0/{len(rooms)} nodes are available: no Ready host has {cpus} CPUs and "
                   f"{mib} MiB free for the pod's VM")
            self._condition(pod, "False", "Unschedulable", why)
            events.record(self.api, pod, "Warning", "FailedScheduling", why,
                          "default-scheduler")
            return 15.0
        room = max(fits, key=lambda r: (r.memory, r.cpu))
        meta = pod["metadata"]
        self.api.patch(self.ref, meta["namespace"], meta["name"],
                       {"spec": {"nodeName": room.node}})
        events.record(self.api, pod, "Normal", "Scheduled",
                      f"Successfully assigned {meta['namespace']}/{meta['name']} to "
                      f"{room.node}", "default-scheduler")
        pod = self.api.get(self.ref, meta["namespace"], meta["name"])
        return self._ensure_address(pod, room.node)

    def _ensure_address(self, pod: Obj, node: str) -> float | None:
        """The pod's IP, recorded in its status before its VM is made."""
        status = pod.get("status") or {}
        if status.get("podIP"):
            return None
        if self.namespace_network:
            return self._namespace_address(pod, node)
        with APPLIANCE_ADDRESSES:
            vms, _ = self.api.list(VMS)
            used = {vm_address(v) for v in vms} | {pod_address(p) for p in placed_pods(self.api)}
            address = free_appliance_address(self.network, used)
            if address is None:
                self._condition(pod, "False", "Unschedulable",
                                f"no free address in {self.network}")
                return 30.0
            self._bound(pod, node, address)
        return None

    def _namespace_address(self, pod: Obj, node: str) -> float | None:
        from appliance.network.attach import attachment, ensure_interface
        from appliance.network.config import mac_for

        meta = pod["metadata"]
        hostname = (pod.get("spec") or {}).get("hostname") or meta["name"][:63]
        nic = attachment(ensure_interface(self.api, pod, mac=mac_for(meta["uid"]),
                                          hostname=hostname))
        if nic is None:
            return 1.0  # the interface controller has not given it an address yet
        self._bound(pod, node, nic.address)
        return None

    def _bound(self, pod: Obj, node: str, address: str) -> None:
        conditions = set_condition(list((pod.get("status") or {}).get("conditions") or []),
                                   "PodScheduled", "True", "", "")
        self.api.patch(self.ref, pod["metadata"]["namespace"], pod["metadata"]["name"],
                       {"status": {"podIP": address, "podIPs": [{"ip": address}],
                                   "conditions": conditions}}, subresource="status")
        LOG.info("[%s/%s] bound to %s with %s", pod["metadata"]["namespace"],
                 pod["metadata"]["name"], node, address)

    def _condition(self, pod: Obj, status: str, reason: str, message: str) -> None:
        conditions = set_condition(list((pod.get("status") or {}).get("conditions") or []),
                                   "PodScheduled", status, reason, message)
        self.api.patch(self.ref, pod["metadata"]["namespace"], pod["metadata"]["name"],
                       {"status": {"conditions": conditions}}, subresource="status")
