"""core/v1 kinds of the foundation: Namespace, ConfigMap, Secret, Event,
ResourceQuota and Node."""

from __future__ import annotations

import base64
import binascii

from appliance.errors import Cause
from appliance.kinds.registry import AdmissionContext, Kind, Obj, PrinterColumn, Version
from appliance.kinds.schema import (
    CONDITION,
    array,
    boolean,
    integer,
    map_of,
    obj,
    preserve,
    quantity,
    string,
    string_map,
    top_level,
)

NAME = PrinterColumn("Name", format="name", json_path=".metadata.name",
                     description="Name must be unique within a namespace.")
AGE = PrinterColumn("Age", type="date", json_path=".metadata.creationTimestamp",
                    description="CreationTimestamp of the object.")

# -- Namespace --------------------------------------------------------------------

NAMESPACE_SCHEMA = top_level(
    spec=obj({"finalizers": array(string())}),
    status=obj({"phase": string(enum=["Active", "Terminating"]),
                "conditions": array(CONDITION, merge_key="type")}),
)

#: The finalizer the namespace controller clears once a namespace is empty.
NAMESPACE_FINALIZER = "kubernetes"


def _prepare_namespace(ns: Obj) -> None:
    """As kube-apiserver: a new namespace is Active and held by its finalizer."""
    ns["spec"] = {"finalizers": [NAMESPACE_FINALIZER]}
    ns["status"] = {"phase": "Active"}

NAMESPACE = Kind(
    group="", kind="Namespace", plural="namespaces", singular="namespace", namespaced=False,
    short_names=("ns",), builtin=True, name_rule="label",
    versions=(Version("v1", NAMESPACE_SCHEMA, storage=True, printer_columns=(
        NAME, PrinterColumn("Status", json_path=".status.phase",
                            description="The phase of the namespace"), AGE)),),
    extra_subresources=("finalize",), prepare_create=_prepare_namespace,
    spec_finalizers=True,
)

# -- ConfigMap ----------------------------------------------------------------------

CONFIGMAP = Kind(
    group="", kind="ConfigMap", plural="configmaps", singular="configmap", namespaced=True,
    short_names=("cm",), builtin=True, has_status=False,
    versions=(Version("v1", top_level(
        data=string_map(), binaryData=string_map(), immutable=boolean()), storage=True,
        printer_columns=(NAME, PrinterColumn(
            "Data", type="integer", description="Number of data keys",
            compute=lambda o: len(o.get("data") or {}) + len(o.get("binaryData") or {})), AGE)),),
)

# -- Secret ---------------------------------------------------------------------------


def _validate_secret(new: Obj, old: Obj | None, ctx: AdmissionContext) -> list[Cause]:
    causes = []
    for key, value in (new.get("data") or {}).items():
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            causes.append(Cause(f"data[{key}]", "Invalid value: <hidden>: illegal base64 data"))
    if old is not None and old.get("type") != new.get("type"):
        causes.append(Cause("type", "Invalid value: field is immutable", "FieldValueInvalid"))
    return causes


def _secret_string_data(obj_: Obj) -> Obj:
    """Fold ``stringData`` into ``data`` as the API server does on every write."""
    string_data = obj_.pop("stringData", None)
    if string_data:
        data = obj_.setdefault("data", {})
        for key, value in string_data.items():
            data[key] = base64.b64encode(str(value).encode()).decode()
    return obj_


SECRET = Kind(
    group="", kind="Secret", plural="secrets", singular="secret", namespaced=True,
    builtin=True, has_status=False, validate=_validate_secret,
    versions=(Version("v1", top_level(
        data=string_map(), stringData=string_map(), type=string(default="Opaque"),
        immutable=boolean()), storage=True, to_storage=_secret_string_data,
        printer_columns=(NAME, PrinterColumn("Type", json_path=".type"), PrinterColumn(
            "Data", type="integer", compute=lambda o: len(o.get("data") or {})), AGE)),),
)

# -- Event ------------------------------------------------------------------------------

OBJECT_REFERENCE = obj({
    "apiVersion": string(), "kind": string(), "name": string(), "namespace": string(),
    "uid": string(), "resourceVersion": string(), "fieldPath": string(),
})


def _event_object(o: Obj) -> str:
    ref = o.get("involvedObject") or {}
    return f"{str(ref.get('kind', '')).lower()}/{ref.get('name', '')}"


EVENT = Kind(
    group="", kind="Event", plural="events", singular="event", namespaced=True,
    short_names=("ev",), builtin=True, has_status=False,
    field_selectors=("involvedObject.kind", "involvedObject.namespace", "involvedObject.name",
                     "involvedObject.uid", "involvedObject.apiVersion",
                     "involvedObject.resourceVersion", "involvedObject.fieldPath", "reason",
                     "reportingComponent", "source", "type"),
    versions=(Version("v1", top_level(
        involvedObject=OBJECT_REFERENCE, reason=string(), message=string(),
        type=string(default="Normal"), count=integer(), action=string(),
        firstTimestamp=string(nullable=True), lastTimestamp=string(nullable=True),
        eventTime=string(nullable=True), reportingComponent=string(),
        reportingInstance=string(), source=obj({"component": string(), "host": string()}),
        series=preserve(type="object"), related=OBJECT_REFERENCE), storage=True,
        printer_columns=(
            PrinterColumn("Last Seen", type="date", json_path=".lastTimestamp"),
            PrinterColumn("Type", json_path=".type"),
            PrinterColumn("Reason", json_path=".reason"),
            PrinterColumn("Object", compute=_event_object),
            PrinterColumn("Message", json_path=".message"),
        )),),
)

# -- ResourceQuota ----------------------------------------------------------------------

QUOTA_RESOURCES = (
    "requests.cpu", "requests.memory", "requests.storage", "limits.cpu", "limits.memory",
    "cpu", "memory", "pods", "configmaps", "secrets", "services", "resourcequotas",
    "services.loadbalancers", "persistentvolumeclaims",
)


def quota_resource_known(name: str) -> bool:
    return (name in QUOTA_RESOURCES or name.startswith("count/")
            or name.endswith(".storageclass.storage.k8s.io/requests.storage"))


def _validate_quota(new: Obj, old: Obj | None, ctx: AdmissionContext) -> list[Cause]:
    from appliance.util.quantity import QuantityError, parse_quantity

    causes = []
    for key, value in ((new.get("spec") or {}).get("hard") or {}).items():
        path = f"spec.hard[{key}]"
        if not quota_resource_known(key):
            causes.append(Cause(path, f"Invalid value: {key!r}: must be a standard resource "
                                      "for quota (requests.cpu, requests.memory, "
                                      "requests.storage, count/<resource>, ...)"))
            continue
        try:
            amount = parse_quantity(value)
        except QuantityError as exc:
            causes.append(Cause(path, f"Invalid value: {value!r}: {exc}"))
            continue
        if amount < 0:
            causes.append(Cause(path, f"Invalid value: {value!r}: must be greater than or "
                                      "equal to 0"))
    return causes


def _quota_summary(o: Obj, prefix: str) -> str:
    hard = (o.get("status") or {}).get("hard") or (o.get("spec") or {}).get("hard") or {}
    used = (o.get("status") or {}).get("used") or {}
    parts = [f"{k}: {used.get(k, '0')}/{v}" for k, v in sorted(hard.items())
             if k.startswith(prefix) == (prefix == "limits.")]
    return ", ".join(parts)


RESOURCEQUOTA = Kind(
    group="", kind="ResourceQuota", plural="resourcequotas", singular="resourcequota",
    namespaced=True, short_names=("quota",), builtin=True, validate=_validate_quota,
    versions=(Version("v1", top_level(
        spec=obj({"hard": map_of(quantity()), "scopes": array(string()),
                  "scopeSelector": preserve(type="object")}),
        status=obj({"hard": map_of(quantity()), "used": map_of(quantity())})), storage=True,
        printer_columns=(NAME, AGE,
                         PrinterColumn("Request", compute=lambda o: _quota_summary(o, "")),
                         PrinterColumn("Limit", compute=lambda o: _quota_summary(o, "limits."))),
    ),),
)

# -- Node ---------------------------------------------------------------------------------


def _node_status(o: Obj) -> str:
    ready = next((c for c in (o.get("status") or {}).get("conditions") or []
                  if c.get("type") == "Ready"), None)
    state = "Ready" if ready and ready.get("status") == "True" else "NotReady"
    if (o.get("spec") or {}).get("unschedulable"):
        state += ",SchedulingDisabled"
    return state


def _node_roles(o: Obj) -> str:
    prefix = "node-role.kubernetes.io/"
    roles = sorted(k[len(prefix):] for k in (o["metadata"].get("labels") or {})
                   if k.startswith(prefix))
    return ",".join(roles) or "<none>"


NODE = Kind(
    group="", kind="Node", plural="nodes", singular="node", namespaced=False,
    short_names=("no",), builtin=True,
    versions=(Version("v1", top_level(
        spec=obj({"unschedulable": boolean(), "providerID": string(),
                  "taints": array(preserve(type="object"))}),
        status=obj({
            "capacity": map_of(quantity()), "allocatable": map_of(quantity()),
            "conditions": array(CONDITION, merge_key="type"),
            "addresses": array(obj({"type": string(), "address": string()}), merge_key="type"),
            "nodeInfo": map_of(string()),
            "daemonEndpoints": preserve(type="object"),
        })), storage=True, printer_columns=(
            NAME, PrinterColumn("Status", compute=_node_status),
            PrinterColumn("Roles", compute=_node_roles), AGE,
            PrinterColumn("Version", json_path=".status.nodeInfo.kubeletVersion"),
            PrinterColumn("Accelerator", priority=1,
                          json_path=".metadata.labels.pacific\\.lab/accelerator"),
            PrinterColumn("Internal-IP", priority=1,
                          json_path='.status.addresses[?(@.type=="InternalIP")].address'),
        )),),
)

KINDS = (NAMESPACE, CONFIGMAP, SECRET, EVENT, RESOURCEQUOTA, NODE)


def namespace_phase(ns: Obj) -> str:
    return str(((ns.get("status") or {}).get("phase")) or "Active")


