"""CAPV's supervisor-mode kinds (``vmware.infrastructure.cluster.x-k8s.io`` v1beta1).

In supervisor mode (vSphere with Tanzu) a VSphereCluster's endpoint is a
VirtualMachineService of type LoadBalancer and a VSphereMachine becomes a vm-operator
VirtualMachine: the machine names a VirtualMachineClass, an image and a storage class
instead of vCenter templates and datastores. Fields follow CAPV's
``apis/vmware/v1beta1`` types and ``config/supervisor/crd`` CRDs.
"""

from __future__ import annotations

from typing import Any

from appliance.errors import Cause
from appliance.kinds.capi import (CATEGORIES, CONDITIONS, FAILURE_DOMAINS, MACHINE_ADDRESSES,
                                  NAMING_STRATEGY, V1BETA2_STATUS, forbidden)
from appliance.kinds.registry import AdmissionContext, Kind, Obj, PrinterColumn, Version
from appliance.kinds.schema import (Schema, array, boolean, integer, map_of, obj, preserve,
                                    quantity, string, top_level)

GROUP = "vmware.infrastructure.cluster.x-k8s.io"
VERSION = "v1beta1"

CLUSTER_FINALIZER = "vspherecluster.vmware.infrastructure.cluster.x-k8s.io"
MACHINE_FINALIZER = "vspheremachine.infrastructure.cluster.x-k8s.io"

POWER_OFF_MODES = ("hard", "soft", "trySoft")
#: ``VirtualMachineState``: what ``status.vmstatus`` reports.
VM_STATES = ("notfound", "created", "poweredon", "pending", "ready", "deleting", "error")

VSPHERE_CLUSTER_SPEC = obj({
    "controlPlaneEndpoint": obj({"host": string(maxLength=512), "port": integer()}),
    "network": obj({"nsxVPC": obj({"createSubnetSet": boolean()})}),
})
VSPHERE_CLUSTER_STATUS = obj({
    "ready": boolean(), "resourcePolicyName": string(), "conditions": CONDITIONS,
    "failureDomains": FAILURE_DOMAINS, "v1beta2": V1BETA2_STATUS,
})

VSPHERE_MACHINE_SPEC = obj({
    "providerID": string(),
    "failureDomain": string(),
    "imageName": string(),
    "className": string(),
    "storageClass": string(),
    "volumes": array(obj({"name": string(), "capacity": map_of(quantity()),
                          "storageClass": string()}, required=["capacity", "name"])),
    "powerOffMode": string(enum=list(POWER_OFF_MODES), default="hard"),
    "minHardwareVersion": string(),
    "namingStrategy": NAMING_STRATEGY,
    "network": preserve(type="object"),
}, required=["className", "imageName"])
VSPHERE_MACHINE_STATUS = obj({
    "ready": boolean(), "addresses": MACHINE_ADDRESSES, "vmID": string(), "vmIp": string(),
    "failureReason": string(), "failureMessage": string(), "vmstatus": string(),
    "conditions": CONDITIONS, "network": preserve(type="object"), "v1beta2": V1BETA2_STATUS,
})


def _template(spec: Schema) -> Schema:
    return obj({"template": obj({"spec": spec}, required=["spec"])}, required=["template"])


def _validate_machine(new: Obj, old: Obj | None, ctx: AdmissionContext) -> list[Cause]:
    """Only ``providerID`` (written by the controller) may change after creation."""
    if old is None:
        return []
    def strip(o: Obj) -> Obj:
        return {k: v for k, v in (o.get("spec") or {}).items() if k != "providerID"}
    return [forbidden("spec", "cannot be modified")] if strip(new) != strip(old) else []


def _validate_machine_template(new: Obj, old: Obj | None, ctx: AdmissionContext) -> list[Cause]:
    def spec(o: Obj) -> Any:
        return ((o.get("spec") or {}).get("template") or {}).get("spec")
    if old is not None and spec(new) != spec(old):
        return [forbidden("spec.template.spec", "VSphereMachineTemplate spec.template.spec "
                                                "field is immutable. Please create a new "
                                                "resource instead.")]
    return []


def _kind(kind: str, plural: str, spec: Schema, status: Schema | None,
          columns: tuple[PrinterColumn, ...] = (), **extra: Any) -> Kind:
    return Kind(group=GROUP, kind=kind, plural=plural, singular=kind.lower(), namespaced=True,
                categories=CATEGORIES, has_status=status is not None,
                versions=(Version(VERSION, top_level(spec=spec, status=status), storage=True,
                                  printer_columns=columns),), **extra)


VSPHERECLUSTER = _kind("VSphereCluster", "vsphereclusters", VSPHERE_CLUSTER_SPEC,
                       VSPHERE_CLUSTER_STATUS)
VSPHERECLUSTERTEMPLATE = _kind("VSphereClusterTemplate", "vsphereclustertemplates",
                               _template(VSPHERE_CLUSTER_SPEC), None)
VSPHEREMACHINE = _kind(
    "VSphereMachine", "vspheremachines", VSPHERE_MACHINE_SPEC, VSPHERE_MACHINE_STATUS,
    columns=(PrinterColumn("Zone", json_path=".spec.failureDomain", description="Zone"),
             PrinterColumn("ProviderID", json_path=".spec.providerID",
                           description="Provider ID"),
             PrinterColumn("IPAddr", json_path=".status.vmIp", description="IP address")),
    validate=_validate_machine)
VSPHEREMACHINETEMPLATE = _kind("VSphereMachineTemplate", "vspheremachinetemplates",
                               _template(VSPHERE_MACHINE_SPEC), None,
                               validate=_validate_machine_template)

KINDS = (VSPHERECLUSTER, VSPHERECLUSTERTEMPLATE, VSPHEREMACHINE, VSPHEREMACHINETEMPLATE)
