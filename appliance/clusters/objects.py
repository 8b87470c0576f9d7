"""What the Cluster API controllers share: the kinds they read and write, labels,
owner references, conditions and status writes.

Everything here is plain data over :class:`appliance.resources.ResourceApi`, so
the controllers run the same in the supervisor and in tests.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import logging
import secrets
from typing import Any

from appliance import errors, events
from appliance.controllers.base import merge_diff
from appliance.controllers.scheduler import set_condition
from appliance.kinds.registry import Obj
from appliance.resources import Ref, ResourceApi, get_or_none

LOG = logging.getLogger(__name__)

CAPI = "cluster.x-k8s.io"
BOOTSTRAP = "bootstrap.cluster.x-k8s.io"
CONTROLPLANE = "controlplane.cluster.x-k8s.io"
ADDONS = "addons.cluster.x-k8s.io"
CAPV = "vmware.infrastructure.cluster.x-k8s.io"
VMOP = "vmoperator.vmware.com"
V1B1 = "v1beta1"

CLUSTERS = Ref(CAPI, V1B1, "clusters")
MACHINES = Ref(CAPI, V1B1, "machines")
MACHINESETS = Ref(CAPI, V1B1, "machinesets")
MACHINEDEPLOYMENTS = Ref(CAPI, V1B1, "machinedeployments")
HEALTHCHECKS = Ref(CAPI, V1B1, "machinehealthchecks")
KUBEADMCONFIGS = Ref(BOOTSTRAP, V1B1, "kubeadmconfigs")
CONTROLPLANES = Ref(CONTROLPLANE, V1B1, "kubeadmcontrolplanes")
RESOURCESETS = Ref(ADDONS, V1B1, "clusterresourcesets")
RESOURCESET_BINDINGS = Ref(ADDONS, V1B1, "clusterresourcesetbindings")
VSPHERECLUSTERS = Ref(CAPV, V1B1, "vsphereclusters")
VSPHEREMACHINES = Ref(CAPV, V1B1, "vspheremachines")
CLUSTERCLASSES = Ref(CAPI, V1B1, "clusterclasses")
KUBEADMCONTROLPLANETEMPLATES = Ref(CONTROLPLANE, V1B1, "kubeadmcontrolplanetemplates")
KUBEADMCONFIGTEMPLATES = Ref(BOOTSTRAP, V1B1, "kubeadmconfigtemplates")
VSPHERECLUSTERTEMPLATES = Ref(CAPV, V1B1, "vsphereclustertemplates")
VSPHEREMACHINETEMPLATES = Ref(CAPV, V1B1, "vspheremachinetemplates")
VMS = Ref(VMOP, "v1alpha5", "virtualmachines")
VMSERVICES = Ref(VMOP, "v1alpha5", "virtualmachineservices")
SECRETS = Ref("", "v1", "secrets")
CONFIGMAPS = Ref("", "v1", "configmaps")

CLUSTER_NAME = "cluster.x-k8s.io/cluster-name"
CONTROL_PLANE = "cluster.x-k8s.io/control-plane"
CONTROL_PLANE_NAME = "cluster.x-k8s.io/control-plane-name"
DEPLOYMENT_NAME = "cluster.x-k8s.io/deployment-name"
SET_NAME = "cluster.x-k8s.io/set-name"
CLONED_FROM_NAME = "cluster.x-k8s.io/cloned-from-name"
CLONED_FROM_KIND = "cluster.x-k8s.io/cloned-from-groupkind"
#: CAPV's labels on a machine's VirtualMachine; the endpoint service selects on them.
VM_CLUSTER = "capv.vmware.com/cluster.name"
VM_ROLE = "capv.vmware.com/cluster.role"
SECRET_TYPE = "cluster.x-k8s.io/secret"
#: vSphere's per-cluster SSH key pair, for the sudo user ``vmware-system-user``.
SSH_SUFFIX = "-ssh"
NODE_USER = "vmware-system-user"


def plural_of(kind: str) -> str:
    """The resource name of a kind, as Kubernetes' default pluralisation makes it
    (StorageClass → storageclasses, NetworkPolicy → networkpolicies)."""
    low = kind.lower()
    if low in ("endpoints", "podsecuritypolicies"):
        return low
    if low.endswith(("s", "x", "z", "ch", "sh")):
        return low + "es"
    if low.endswith("y") and low[-2:-1] not in ("a", "e", "i", "o", "u"):
        return low[:-1] + "ies"
    return low + "s"


def ref_for(object_ref: Obj) -> Ref:
    """The Ref of a Kubernetes ObjectReference (apiVersion + kind) to one of our kinds."""
    api_version = str(object_ref.get("apiVersion") or "")
    group, _, version = api_version.rpartition("/")
    kind = str(object_ref.get("kind") or "")
    if group not in (CAPI, BOOTSTRAP, CONTROLPLANE, CAPV, ADDONS) or not kind:
        raise errors.ApiError(422, "Invalid", f"{kind or 'a reference'} in {api_version!r} is "
                                              "not a kind this supervisor provides")
    return Ref(group, version or V1B1, plural_of(kind))


def owner_reference(owner: Obj, controller: bool = True) -> Obj:
    ref: Obj = {"apiVersion": owner["apiVersion"], "kind": owner["kind"],
                "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"]}
    if controller:
        ref.update(controller=True, blockOwnerDeletion=True)
    return ref


def owned_by(obj: Obj, owner: Obj) -> bool:
    uid = owner["metadata"]["uid"]
    return any(o.get("uid") == uid for o in obj["metadata"].get("ownerReferences") or [])


def controller_of(obj: Obj, kind: str) -> Obj | None:
    """The ownerReference of ``obj`` that controls it, if its kind is ``kind``."""
    for o in obj["metadata"].get("ownerReferences") or []:
        if o.get("kind") == kind and o.get("controller"):
            return dict(o)
    return None


def cluster_of(api: ResourceApi, obj: Obj) -> Obj | None:
    """The Cluster an object belongs to, by the cluster-name label or spec.clusterName."""
    meta = obj["metadata"]
    name = (obj.get("spec") or {}).get("clusterName") or \
        (meta.get("labels") or {}).get(CLUSTER_NAME)
    return get_or_none(api, CLUSTERS, meta["namespace"], name) if name else None


def condition(obj: Obj, type_: str) -> Obj | None:
    return next((c for c in (obj.get("status") or {}).get("conditions") or []
                 if c.get("type") == type_), None)


def is_true(obj: Obj | None, type_: str) -> bool:
    return obj is not None and (condition(obj, type_) or {}).get("status") == "True"


def mark(conditions: list[Obj], type_: str, ok: bool | None, reason: str = "",
         message: str = "", severity: str = "Info") -> list[Obj]:
    """CAPI's conditions: True, or False/Unknown with a reason, a message and a severity."""
    if ok:
        return set_condition(conditions, type_, "True", reason or type_, message)
    out = set_condition(conditions, type_, "Unknown" if ok is None else "False", reason, message)
    for c in out:
        if c["type"] == type_:
            c["severity"] = severity
    return out


def summary(conditions: list[Obj], types: tuple[str, ...]) -> list[Obj]:
    """Ready: True when every condition of ``types`` is; else the first that is not."""
    for type_ in types:
        c = next((x for x in conditions if x["type"] == type_), None)
        if c is None or c.get("status") != "True":
            return mark(conditions, "Ready", False, (c or {}).get("reason") or
                        f"Waiting{type_}", (c or {}).get("message") or "",
                        (c or {}).get("severity") or "Info")
    return mark(conditions, "Ready", True)


def write_status(api: ResourceApi, ref: Ref, obj: Obj, status: Obj) -> Obj:
    """Write ``status`` as a diff against what is stored (removed keys become null)."""
    current = obj.get("status") or {}
    if status == current:
        return obj
    meta = obj["metadata"]
    try:
        return api.patch(ref, meta["namespace"], meta["name"],
                         {"status": merge_diff(current, status)}, subresource="status")
    except errors.ApiError as err:
        if err.code != 404:
            raise
        return obj


def record(api: ResourceApi, obj: Obj, type_: str, reason: str, message: str) -> None:
    events.record(api, obj, type_, reason, message, component="pacific-lab-cluster-api")


def transition(api: ResourceApi, obj: Obj, old: Obj, new: list[Obj], type_: str) -> None:
    """An Event when condition ``type_`` changes reason or status (what describe tells)."""
    before = next((c for c in (old.get("status") or {}).get("conditions") or []
                   if c.get("type") == type_), {})
    after = next((c for c in new if c.get("type") == type_), {})
    if (before.get("status"), before.get("reason")) == (after.get("status"), after.get("reason")):
        return
    if after.get("status") == "True":
        record(api, obj, "Normal", after.get("reason") or type_, after.get("message") or
               f"{type_} is True")
    elif after.get("severity") in ("Error", "Warning"):
        record(api, obj, "Warning", after.get("reason") or type_, after.get("message") or "")


def random_suffix(n: int = 5) -> str:
    alphabet = "bcdfghjklmnpqrstvwxz2456789"  # as Kubernetes' generateName
    return "".join(secrets.choice(alphabet) for _ in range(n))


def spec_hash(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:10]


def secret_value(secret: Obj, key: str) -> str | None:
    data = (secret.get("data") or {}).get(key)
    return base64.b64decode(data).decode() if data is not None else None


def create_or_get(api: ResourceApi, ref: Ref, namespace: str, body: Obj) -> Obj:
    """Create ``body``; if it exists already (a pass interrupted earlier), read it."""
    try:
        return api.create(ref, namespace, body)
    except errors.ApiError as err:
        if err.code != 409:
            raise
        return api.get(ref, namespace, body["metadata"]["name"])


def delete_quietly(api: ResourceApi, ref: Ref, namespace: str, name: str) -> None:
    try:
        api.delete(ref, namespace, name)
    except errors.ApiError as err:
        if err.code != 404:
            raise


def listed(api: ResourceApi, ref: Ref, namespace: str, selector: str = "") -> list[Obj]:
    items, _ = api.list(ref, namespace, selector)
    return items


def clone_template(template: Obj, name: str, kind: str, labels: dict[str, str],
                   owner: Obj | None, annotations: dict[str, str] | None = None) -> Obj:
    """A new object from a ``*Template`` (spec.template.{metadata,spec}), as CAPI clones
    infrastructure and bootstrap templates, with the cloned-from annotations."""
    tmpl = (template.get("spec") or {}).get("template") or {}
    tmeta = tmpl.get("metadata") or {}
    group = template["apiVersion"].rpartition("/")[0]
    meta: Obj = {"name": name,
                 "labels": {**(tmeta.get("labels") or {}), **labels},
                 "annotations": {**(tmeta.get("annotations") or {}), **(annotations or {}),
                                 CLONED_FROM_NAME: template["metadata"]["name"],
                                 CLONED_FROM_KIND: f"{template['kind']}.{group}"}}
    if owner is not None:
        meta["ownerReferences"] = [owner_reference(owner)]
    return {"apiVersion": template["apiVersion"], "kind": kind, "metadata": meta,
            "spec": copy.deepcopy(tmpl.get("spec") or {})}


def machine_ready(machine: Obj) -> bool:
    """A machine whose node has joined and is healthy (CAPI's "ready" replica)."""
    return bool((machine.get("status") or {}).get("nodeRef")) and is_true(machine,
                                                                        "NodeHealthy")


def deleting(obj: Obj) -> bool:
    return bool(obj["metadata"].get("deletionTimestamp"))
