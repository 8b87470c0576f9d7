"""The ``tanzukubernetescluster`` ClusterClass, shipped in every namespace that can
create clusters (one with a VM class assigned), as vSphere 8 ships it.

The class and its templates are plain objects in the namespace; a TKC's Cluster
names the class in ``spec.topology`` and the topology controller does the
rest. Variables: ``vmClass``, ``storageClass`` and ``imageName`` (the node
image of the TKC's TanzuKubernetesRelease), patched into the machine
templates of the control plane and of every node pool (a pool overrides
``vmClass`` and ``storageClass`` for itself).
"""

from __future__ import annotations

import logging
from appliance import errors
from appliance.clusters.objects import BOOTSTRAP, CAPI, CAPV, CONTROLPLANE, V1B1, ref_for
from appliance.controllers.base import Controller
from appliance.kinds.registry import Obj
from appliance.kinds.vmop import CATALOG_NAMESPACE, GROUP, STORAGE
from appliance.resources import ResourceApi, get_or_none

LOG = logging.getLogger(__name__)

CLASS_NAME = "tanzukubernetescluster"
POOL_CLASS = "node-pool"
SHIPPED = "run.tanzu.vmware.com/shipped-by"

#: What every node runs before kubeadm (as CAPV's templates): the host name from the
#: VM's metadata, and /etc/hosts to match.
PRE_KUBEADM = [
    'hostnamectl set-hostname "{{ ds.meta_data.hostname }}"',
    'echo "::1         ipv6-localhost ipv6-loopback localhost6 localhost6.localdomain6" '
    ">/etc/hosts",
    'echo "127.0.0.1   {{ ds.meta_data.hostname }} {{ local_hostname }} localhost '
    'localhost.localdomain localhost4 localhost4.localdomain4" >>/etc/hosts',
]
NODE_REGISTRATION = {"criSocket": "unix:///var/run/containerd/containerd.sock",
                     "kubeletExtraArgs": {"cloud-provider": "external"},
                     "name": "{{ ds.meta_data.hostname }}"}


def _ref(api_version: str, kind: str, name: str) -> Obj:
    return {"apiVersion": api_version, "kind": kind, "name": name}


def shipped_objects() -> list[Obj]:
    """The class and its five templates (names are the class's own)."""
    capv, cp, boot = f"{CAPV}/{V1B1}", f"{CONTROLPLANE}/{V1B1}", f"{BOOTSTRAP}/{V1B1}"
    labels = {SHIPPED: "pacific-lab"}

    def meta(name: str) -> Obj:
        return {"name": name, "labels": dict(labels)}
    machine_spec: Obj = {"className": "", "imageName": "", "powerOffMode": "trySoft"}
    cp_name, pool_name = f"{CLASS_NAME}-control-plane", f"{CLASS_NAME}-{POOL_CLASS}"
    selected = {"apiVersion": capv, "kind": "VSphereMachineTemplate",
                "matchResources": {"controlPlane": True,
                                   "machineDeploymentClass": {"names": [POOL_CLASS]}}}
    return [
        {"apiVersion": capv, "kind": "VSphereClusterTemplate", "metadata": meta(CLASS_NAME),
         "spec": {"template": {"spec": {}}}},
        {"apiVersion": capv, "kind": "VSphereMachineTemplate", "metadata": meta(cp_name),
         "spec": {"template": {"spec": dict(machine_spec)}}},
        {"apiVersion": capv, "kind": "VSphereMachineTemplate", "metadata": meta(pool_name),
         "spec": {"template": {"spec": dict(machine_spec)}}},
        {"apiVersion": cp, "kind": "KubeadmControlPlaneTemplate", "metadata": meta(cp_name),
         "spec": {"template": {"spec": {"kubeadmConfigSpec": {
             "clusterConfiguration": {"apiServer": {"extraArgs": {
                 "cloud-provider": "external"}}, "controllerManager": {"extraArgs": {
                     "cloud-provider": "external"}}},
             "initConfiguration": {"nodeRegistration": dict(NODE_REGISTRATION)},
             "joinConfiguration": {"nodeRegistration": dict(NODE_REGISTRATION)},
             "preKubeadmCommands": list(PRE_KUBEADM)}}}}},
        {"apiVersion": boot, "kind": "KubeadmConfigTemplate", "metadata": meta(pool_name),
         "spec": {"template": {"spec": {
             "joinConfiguration": {"nodeRegistration": dict(NODE_REGISTRATION)},
             "preKubeadmCommands": list(PRE_KUBEADM)}}}},
        {"apiVersion": f"{CAPI}/{V1B1}", "kind": "ClusterClass", "metadata": meta(CLASS_NAME),
         "spec": {
             "infrastructure": {"ref": _ref(capv, "VSphereClusterTemplate", CLASS_NAME)},
             "controlPlane": {
                 "ref": _ref(cp, "KubeadmControlPlaneTemplate", cp_name),
                 "machineInfrastructure": {"ref": _ref(capv, "VSphereMachineTemplate",
                                                       cp_name)}},
             "workers": {"machineDeployments": [{"class": POOL_CLASS, "template": {
                 "bootstrap": {"ref": _ref(boot, "KubeadmConfigTemplate", pool_name)},
                 "infrastructure": {"ref": _ref(capv, "VSphereMachineTemplate",
                                                pool_name)}}}]},
             "variables": [
                 {"name": "vmClass", "required": True,
                  "schema": {"openAPIV3Schema": {"type": "string", "minLength": 1}}},
                 {"name": "storageClass", "required": False,
                  "schema": {"openAPIV3Schema": {"type": "string", "default": ""}}},
                 {"name": "imageName", "required": True,
                  "schema": {"openAPIV3Schema": {"type": "string", "minLength": 1}}},
                 {"name": "nodeLabels", "required": False,
                  "schema": {"openAPIV3Schema": {"type": "string", "default": ""}}},
                 {"name": "nodeTaints", "required": False,
                  "schema": {"openAPIV3Schema": {"type": "array", "default": [], "items": {
                      "type": "object", "properties": {
                          "key": {"type": "string"}, "value": {"type": "string"},
                          "effect": {"type": "string"}}}}}}],
             "patches": [{"name": "machine", "definitions": [{
                 "selector": selected,
                 "jsonPatches": [
                     {"op": "replace", "path": "/spec/template/spec/className",
                      "valueFrom": {"variable": "vmClass"}},
                     {"op": "replace", "path": "/spec/template/spec/imageName",
                      "valueFrom": {"variable": "imageName"}},
                     {"op": "add", "path": "/spec/template/spec/storageClass",
                      "valueFrom": {"variable": "storageClass"}}]}]},
                 {"name": "node-pool-labels-and-taints", "definitions": [{
                     "selector": {"apiVersion": boot, "kind": "KubeadmConfigTemplate",
                                  "matchResources": {"machineDeploymentClass": {
                                      "names": [POOL_CLASS]}}},
                     "jsonPatches": [
                         {"op": "add", "path": "/spec/template/spec/joinConfiguration/"
                                               "nodeRegistration/kubeletExtraArgs/node-labels",
                          "valueFrom": {"variable": "nodeLabels"}},
                         {"op": "add", "path": "/spec/template/spec/joinConfiguration/"
                                               "nodeRegistration/taints",
                          "valueFrom": {"variable": "nodeTaints"}}]}]}]}},
    ]


class ShippedClassController(Controller):
    """Ships the class into a namespace when a VM class is assigned to it."""

    group, version, plural, name = GROUP, STORAGE, "virtualmachineclasses", "tkg-clusterclass"
    resync = 300.0

    def __init__(self, api: ResourceApi) -> None:
        super().__init__(api)

    def wants(self, obj: Obj) -> bool:
        ns = obj["metadata"].get("namespace") or ""
        return ns != CATALOG_NAMESPACE and not ns.startswith(("kube-", "vmware-system-"))

    def reconcile(self, cls: Obj) -> float | None:
        ns = cls["metadata"]["namespace"]
        for body in shipped_objects():
            ref = ref_for(body)
            if get_or_none(self.api, ref, ns, body["metadata"]["name"]) is not None:
                continue
            try:
                self.api.create(ref, ns, body)
                LOG.info("[%s/%s] shipped %s", ns, body["metadata"]["name"], body["kind"])
            except errors.ApiError as err:
                if err.code == 409:
                    continue
                if err.code == 403 and "being terminated" in err.message:
                    return None
                raise
        return None

