"""CAPV in supervisor mode: infrastructure from the VM Service.

- A VSphereCluster's control-plane endpoint is a VirtualMachineService of type
  LoadBalancer on port 6443 (``<cluster>-control-plane-service``) selecting the
  cluster's control-plane VMs; its VIP becomes ``spec.controlPlaneEndpoint``.
- A VSphereMachine is a vm-operator VirtualMachine of the same name, with the
  class, image and storage class of the machine and the machine's bootstrap
  data Secret as its cloud-init. Its ``providerID`` is ``vsphere://<biosUUID>``.

No second way to make a VM, an address or a load balancer: admission, quota,
placement, the namespace segment and the VIP are the VM Service's.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable

from appliance import errors
from appliance.clusters.objects import (
    CAPV,
    CLUSTER_NAME,
    CLUSTERS,
    CONTROL_PLANE,
    MACHINES,
    V1B1,
    VM_CLUSTER,
    VM_ROLE,
    VMS,
    VMSERVICES,
    controller_of,
    mark,
    owner_reference,
    record,
    summary,
    transition,
    write_status,
)
from appliance.controllers.base import Controller, add_finalizer, drop_finalizer, owners
from appliance.controllers.scheduler import vm_address
from appliance.kinds.registry import Obj
from appliance.kinds.vmop import GUEST_BOOTSTRAP
from appliance.resources import Ref, ResourceApi, get_or_none

LOG = logging.getLogger(__name__)

CLUSTER_FINALIZER = "vmwarecluster.infrastructure.cluster.vmware.com"
MACHINE_FINALIZER = "vmwaremachine.infrastructure.cluster.vmware.com"
API_SERVER_PORT = 6443
#: CAPV's powerOffMode spellings against vm-operator's.
POWER_OFF = {"hard": "Hard", "soft": "Soft", "trySoft": "TrySoft"}


def infrastructure_of(obj: Obj) -> list[tuple[str, str]]:
    """The key of the infrastructure object a Cluster or Machine names."""
    ref = (obj.get("spec") or {}).get("infrastructureRef") or {}
    return [(obj["metadata"].get("namespace", ""), ref["name"])] if ref.get("name") else []


def service_name(cluster: str) -> str:
    return f"{cluster}-control-plane-service"


class VSphereClusterController(Controller):
    group, version, plural, name = CAPV, V1B1, "vsphereclusters", "capv-cluster"
    resync = 10.0

    def __init__(self, api: ResourceApi) -> None:
        super().__init__(api)

    def related(self) -> list[tuple[Ref, Callable[[Obj], list[tuple[str, str]]]]]:
        return [(VMSERVICES, owners("VSphereCluster")), (CLUSTERS, infrastructure_of)]

    def reconcile(self, vc: Obj) -> float | None:
        meta = vc["metadata"]
        ns = meta["namespace"]
        cluster = (meta.get("labels") or {}).get(CLUSTER_NAME)
        if meta.get("deletionTimestamp"):
            if cluster and get_or_none(self.api, VMSERVICES, ns, service_name(cluster)):
                try:
                    self.api.delete(VMSERVICES, ns, service_name(cluster))
                except errors.ApiError as err:
                    if err.code != 404:
                        raise
                return 1.0
            drop_finalizer(self.api, self.ref, vc, CLUSTER_FINALIZER)
            return None
        vc = add_finalizer(self.api, self.ref, vc, CLUSTER_FINALIZER)
        status = copy.deepcopy(vc.get("status") or {})
        conditions = list(status.get("conditions") or [])
        try:
            if not cluster or controller_of(vc, "Cluster") is None:
                conditions = mark(conditions, "LoadBalancerReady", False, "WaitingForCluster",
                                  "waiting for a Cluster to own this VSphereCluster")
                return 5.0
            svc = get_or_none(self.api, VMSERVICES, ns, service_name(cluster))
            if svc is None:
                svc = self.api.create(VMSERVICES, ns, {
                    "apiVersion": "vmoperator.vmware.com/v1alpha5",
                    "kind": "VirtualMachineService",
                    "metadata": {"name": service_name(cluster),
                                 "labels": {CLUSTER_NAME: cluster},
                                 "ownerReferences": [owner_reference(vc)]},
                    "spec": {"type": "LoadBalancer",
                             "ports": [{"name": "apiserver", "protocol": "TCP",
                                        "port": API_SERVER_PORT,
                                        "targetPort": API_SERVER_PORT}],
                             "selector": {VM_CLUSTER: cluster, VM_ROLE: "controlplane"}}})
                record(self.api, vc, "Normal", "LoadBalancerCreated",
                       f"VirtualMachineService {service_name(cluster)} for the API server")
            ingress = ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
            vip = (ingress[0].get("ip") or ingress[0].get("hostname")) if ingress else ""
            if not vip:
                why = next((c for c in (svc.get("status") or {}).get("conditions") or []
                            if c.get("type") == "Ready" and c.get("status") != "True"), {})
                conditions = mark(conditions, "LoadBalancerReady", False,
                                  "WaitingForLoadBalancerIP",
                                  "waiting for the VIP of VirtualMachineService "
                                  f"{service_name(cluster)}" +
                                  (f": {why['message']}" if why.get("message") else ""))
                status["ready"] = False
                return 2.0
            endpoint = (vc.get("spec") or {}).get("controlPlaneEndpoint") or {}
            if endpoint.get("host") != vip:
                vc = self.api.patch(self.ref, ns, meta["name"], {"spec": {
                    "controlPlaneEndpoint": {"host": vip, "port": API_SERVER_PORT}}})
            conditions = mark(conditions, "LoadBalancerReady", True, "",
                              f"{vip}:{API_SERVER_PORT}")
            status["ready"] = True
            return 30.0
        finally:
            status["conditions"] = summary(conditions, ("LoadBalancerReady",))
            old = vc
            vc = write_status(self.api, self.ref, vc, status)
            transition(self.api, vc, old, status["conditions"], "LoadBalancerReady")


class VSphereMachineController(Controller):
    group, version, plural, name = CAPV, V1B1, "vspheremachines", "capv-machine"
    resync = 10.0
    workers = 2

    def __init__(self, api: ResourceApi) -> None:
        super().__init__(api)

    def related(self) -> list[tuple[Ref, Callable[[Obj], list[tuple[str, str]]]]]:
        return [(VMS, owners("VSphereMachine")), (MACHINES, infrastructure_of)]

    def reconcile(self, vm_machine: Obj) -> float | None:
        meta = vm_machine["metadata"]
        ns, name = meta["namespace"], meta["name"]
        if meta.get("deletionTimestamp"):
            vm = get_or_none(self.api, VMS, ns, name)
            if vm is not None:
                if not vm["metadata"].get("deletionTimestamp"):
                    self.api.delete(VMS, ns, name)
                    record(self.api, vm_machine, "Normal", "VMDeleting",
                           f"VirtualMachine {name} is being deleted")
                return 2.0
            drop_finalizer(self.api, self.ref, vm_machine, MACHINE_FINALIZER)
            return None
        vm_machine = add_finalizer(self.api, self.ref, vm_machine, MACHINE_FINALIZER)
        spec = vm_machine.get("spec") or {}
        status = copy.deepcopy(vm_machine.get("status") or {})
        conditions = list(status.get("conditions") or [])
        again: float | None = 5.0
        try:
            owner = controller_of(vm_machine, "Machine")
            machine = get_or_none(self.api, MACHINES, ns, owner["name"]) if owner else None
            if machine is None:
                conditions = mark(conditions, "VMProvisioned", False, "WaitingForMachine",
                                  "waiting for a Machine to own this VSphereMachine")
                return 5.0
            data_secret = ((machine.get("spec") or {}).get("bootstrap") or {}).get(
                "dataSecretName")
            if not data_secret:
                conditions = mark(conditions, "VMProvisioned", False,
                                  "WaitingForBootstrapData",
                                  "waiting for the machine's bootstrap data")
                return 3.0
            vm = get_or_none(self.api, VMS, ns, name)
            if vm is None:
                try:
                    vm = self.api.create(VMS, ns, self.vm_for(vm_machine, machine, data_secret))
                except errors.ApiError as err:
                    if err.code in (400, 403, 422):  # admission: quota, class, image
                        conditions = mark(conditions, "VMProvisioned", False,
                                          "VMCreationFailed", err.message, "Error")
                        status["vmStatus"] = "pending"
                        return 30.0
                    raise
                record(self.api, vm_machine, "Normal", "VMCreated",
                       f"VirtualMachine {name} (class {spec.get('className')}, image "
                       f"{spec.get('imageName')})")
            again = self.observe(vm_machine, vm, status)
            conditions = self.vm_conditions(vm, conditions)
            return again
        finally:
            status["conditions"] = summary(conditions, ("VMProvisioned",))
            old = vm_machine
            vm_machine = write_status(self.api, self.ref, vm_machine, status)
            transition(self.api, vm_machine, old, status["conditions"], "VMProvisioned")
            transition(self.api, vm_machine, old, status["conditions"], GUEST_BOOTSTRAP)

    def vm_for(self, vm_machine: Obj, machine: Obj, data_secret: str) -> Obj:
        spec = vm_machine.get("spec") or {}
        meta = vm_machine["metadata"]
        cluster = (machine.get("spec") or {}).get("clusterName") or ""
        control_plane = CONTROL_PLANE in (machine["metadata"].get("labels") or {})
        vm_spec: Obj = {
            "className": spec.get("className") or "", "imageName": spec.get("imageName") or "",
            "powerState": "PoweredOn",
            "powerOffMode": POWER_OFF.get(spec.get("powerOffMode") or "hard", "Hard"),
            "bootstrap": {"cloudInit": {"rawCloudConfig": {"name": data_secret,
                                                           "key": "value"}}},
            "network": {"hostName": meta["name"]},
        }
        if spec.get("storageClass"):
            vm_spec["storageClass"] = spec["storageClass"]
        if spec.get("minHardwareVersion"):
            vm_spec["minHardwareVersion"] = int(spec["minHardwareVersion"])
        return {"apiVersion": "vmoperator.vmware.com/v1alpha5", "kind": "VirtualMachine",
                "metadata": {"name": meta["name"], "labels": {
                    VM_CLUSTER: cluster, VM_ROLE: "controlplane" if control_plane else "node",
                    CLUSTER_NAME: cluster},
                    "ownerReferences": [owner_reference(vm_machine)]},
                "spec": vm_spec}

    def observe(self, vm_machine: Obj, vm: Obj, status: Obj) -> float | None:
        meta = vm_machine["metadata"]
        vm_status = vm.get("status") or {}
        power = vm_status.get("powerState") or ""
        bios = vm_status.get("biosUUID") or ""
        if bios and (vm_machine.get("spec") or {}).get("providerID") != f"vsphere://{bios}":
            self.api.patch(self.ref, meta["namespace"], meta["name"],
                           {"spec": {"providerID": f"vsphere://{bios}"}})
        ip = (vm_status.get("network") or {}).get("primaryIP4") or ""
        status["vmStatus"] = "ready" if power == "PoweredOn" and ip else \
            {"PoweredOn": "poweredOn", "PoweredOff": "poweredOff", "Suspended": "suspended"
             }.get(power, "created" if bios else "pending")
        address = ip or vm_address(vm) or ""
        if address:
            status["vmIp"] = address
            status["addresses"] = [{"type": "InternalIP", "address": address},
                                   {"type": "InternalDNS", "address": meta["name"]}]
        status["ready"] = bool(power == "PoweredOn" and ip and bios)
        return 10.0 if status["ready"] else 3.0

    @staticmethod
    def vm_conditions(vm: Obj, conditions: list[Obj]) -> list[Obj]:
        vm_status = vm.get("status") or {}
        ready = next((c for c in vm_status.get("conditions") or [] if c["type"] == "Ready"), {})
        created = any(c.get("type") == "VirtualMachineConditionCreated" and
                      c.get("status") == "True" for c in vm_status.get("conditions") or [])
        if ready.get("status") == "True":
            conditions = mark(conditions, "VMProvisioned", True, "", ready.get("message", ""))
        elif not vm_status.get("host"):
            placed = next((c for c in vm_status.get("conditions") or [] if c["type"] ==
                           "VirtualMachineConditionPlacementReady"), {})
            conditions = mark(conditions, "VMProvisioned", False,
                              placed.get("reason") or "WaitingForPlacement",
                              placed.get("message") or "waiting for the scheduler",
                              "Warning" if placed.get("status") == "False" else "Info")
        else:
            conditions = mark(conditions, "VMProvisioned", False,
                              ready.get("reason") or ("Booting" if created else "Creating"),
                              ready.get("message") or "", "Error" if ready.get("reason") in (
                                  "HypervisorError", "ImageNotOnHost", "ClassNotFound",
                                  "InvalidBootstrapData") else "Info")
        guest = next((c for c in vm_status.get("conditions") or []
                      if c["type"] == GUEST_BOOTSTRAP), None)
        if guest is not None:
            conditions = mark(conditions, GUEST_BOOTSTRAP,
                              {"True": True, "False": False}.get(guest.get("status")),
                              guest.get("reason") or "", guest.get("message") or "",
                              "Error" if guest.get("status") == "False" else "Info")
        return conditions
