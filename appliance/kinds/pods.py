"""core/v1 Pod: every pod runs in its own micro-VM (vSphere Pods).

The schema covers the fields people use (containers with image, command,
args, env, envFrom, workingDir, ports, resources; emptyDir, configMap and
secret volumes; restartPolicy, terminationGracePeriodSeconds, nodeName,
imagePullSecrets) and keeps the rest of a typical manifest (affinity,
tolerations, securityContext, probes) as given, so manifests written for
Kubernetes apply unchanged. What a micro-VM cannot honour (host paths, host
namespaces, persistent volumes) is refused with the field that asked for it.

Defaulting follows kube-apiserver (restartPolicy Always, a 30 s grace period,
imagePullPolicy from the tag, terminationMessagePath) plus what a vSphere
namespace's LimitRange would add: containers that request nothing get
:data:`DEFAULT_REQUESTS`, so quota and the VM's size always have numbers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from decimal import Decimal

from appliance.errors import Cause
from appliance.kinds.registry import AdmissionContext, Kind, Lookup, Obj, PrinterColumn, Version
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
from appliance.util.names import dns1123_label, dns1123_subdomain
from appliance.util.quantity import parse_quantity

POD_FINALIZER = "pacific.lab/pod-vm"
#: What a container that asks for nothing is given (a namespace LimitRange's defaults).
DEFAULT_REQUESTS = {"cpu": "100m", "memory": "256Mi"}
#: Memory the pod VM needs beyond its containers' (kernel, init, page cache).
VM_OVERHEAD_MIB = 64
MIN_CONTAINER_MEMORY_MIB = 32
RESTART_POLICIES = ("Always", "OnFailure", "Never")
PULL_POLICIES = ("Always", "IfNotPresent", "Never")
SUPPORTED_VOLUMES = ("emptyDir", "configMap", "secret")
#: Volume sources a pod VM cannot have, and why.
REFUSED_VOLUMES = {
    "hostPath": "host paths are never given to pods: use an emptyDir, configMap or secret",
    "persistentVolumeClaim": "persistent volumes are not supported by vSphere Pods here yet",
}
#: Pod-level fields that would reach into the host.
REFUSED_POD_FIELDS = ("hostNetwork", "hostPID", "hostIPC")
ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
FIELD_REFS = ("metadata.name", "metadata.namespace", "metadata.uid", "spec.nodeName",
              "spec.serviceAccountName", "status.hostIP", "status.podIP", "status.podIPs")

# -- schema ---------------------------------------------------------------------------------

KEY_SELECTOR = obj({"name": string(), "key": string(), "optional": boolean()},
                   required=["key"])
ENV_VAR = obj({
    "name": string(), "value": string(),
    "valueFrom": obj({
        "configMapKeyRef": KEY_SELECTOR, "secretKeyRef": KEY_SELECTOR,
        "fieldRef": obj({"apiVersion": string(), "fieldPath": string()},
                        required=["fieldPath"]),
        "resourceFieldRef": preserve(type="object"),
    }),
}, required=["name"])
ENV_FROM = obj({
    "prefix": string(),
    "configMapRef": obj({"name": string(), "optional": boolean()}),
    "secretRef": obj({"name": string(), "optional": boolean()}),
})
RESOURCES = obj({"requests": map_of(quantity()), "limits": map_of(quantity()),
                 "claims": array(preserve(type="object"))})
CONTAINER_PORT = obj({"name": string(), "containerPort": integer(minimum=1, maximum=65535),
                      "protocol": string(default="TCP"), "hostPort": integer(),
                      "hostIP": string()}, required=["containerPort"])
VOLUME_MOUNT = obj({"name": string(), "mountPath": string(), "readOnly": boolean(),
                    "subPath": string(), "subPathExpr": string(),
                    "mountPropagation": string(), "recursiveReadOnly": string()},
                   required=["name", "mountPath"])
CONTAINER = obj({
    "name": string(), "image": string(), "command": array(string()), "args": array(string()),
    "workingDir": string(), "ports": array(CONTAINER_PORT, merge_key="containerPort"),
    "env": array(ENV_VAR, merge_key="name"), "envFrom": array(ENV_FROM),
    "resources": RESOURCES, "volumeMounts": array(VOLUME_MOUNT, merge_key="mountPath"),
    "imagePullPolicy": string(), "terminationMessagePath": string(),
    "terminationMessagePolicy": string(), "stdin": boolean(), "stdinOnce": boolean(),
    "tty": boolean(), "securityContext": preserve(type="object"),
    "livenessProbe": preserve(type="object"), "readinessProbe": preserve(type="object"),
    "startupProbe": preserve(type="object"), "lifecycle": preserve(type="object"),
    "volumeDevices": array(preserve(type="object")), "resizePolicy": array(
        preserve(type="object")), "restartPolicy": string(),
}, required=["name"])
KEY_TO_PATH = obj({"key": string(), "path": string(), "mode": integer()},
                  required=["key", "path"])
VOLUME = obj({
    "name": string(),
    "emptyDir": obj({"medium": string(), "sizeLimit": quantity()}),
    "configMap": obj({"name": string(), "items": array(KEY_TO_PATH),
                      "defaultMode": integer(), "optional": boolean()}),
    "secret": obj({"secretName": string(), "items": array(KEY_TO_PATH),
                   "defaultMode": integer(), "optional": boolean()}),
    "hostPath": preserve(type="object"), "persistentVolumeClaim": preserve(type="object"),
    "projected": preserve(type="object"), "downwardAPI": preserve(type="object"),
    "ephemeral": preserve(type="object"), "nfs": preserve(type="object"),
    "csi": preserve(type="object"),
}, required=["name"])
POD_SPEC = obj({
    "containers": array(CONTAINER, merge_key="name"),
    "initContainers": array(CONTAINER, merge_key="name"),
    "ephemeralContainers": array(preserve(type="object")),
    "volumes": array(VOLUME, merge_key="name"),
    "restartPolicy": string(default="Always"),
    "terminationGracePeriodSeconds": integer(default=30, minimum=0),
    "activeDeadlineSeconds": integer(minimum=1),
    "dnsPolicy": string(default="ClusterFirst"), "dnsConfig": preserve(type="object"),
    "nodeName": string(), "nodeSelector": string_map(),
    "serviceAccountName": string(), "serviceAccount": string(),
    "automountServiceAccountToken": boolean(),
    "imagePullSecrets": array(obj({"name": string()}), merge_key="name"),
    "hostname": string(), "subdomain": string(), "hostAliases": array(obj({
        "ip": string(), "hostnames": array(string())}), merge_key="ip"),
    "schedulerName": string(default="default-scheduler"),
    "securityContext": preserve(type="object", default={}),
    "affinity": preserve(type="object"), "tolerations": array(preserve(type="object")),
    "priority": integer(), "priorityClassName": string(), "preemptionPolicy": string(),
    "enableServiceLinks": boolean(default=True), "shareProcessNamespace": boolean(),
    "hostNetwork": boolean(), "hostPID": boolean(), "hostIPC": boolean(),
    "readinessGates": array(preserve(type="object")), "runtimeClassName": string(),
    "topologySpreadConstraints": array(preserve(type="object")),
    "overhead": map_of(quantity()), "os": preserve(type="object"),
    "setHostnameAsFQDN": boolean(), "schedulingGates": array(preserve(type="object")),
}, required=["containers"])
STATE = obj({
    "waiting": obj({"reason": string(), "message": string()}),
    "running": obj({"startedAt": string(nullable=True)}),
    "terminated": obj({"exitCode": integer(), "signal": integer(), "reason": string(),
                       "message": string(), "startedAt": string(nullable=True),
                       "finishedAt": string(nullable=True), "containerID": string()}),
})
CONTAINER_STATUS = obj({
    "name": string(), "image": string(), "imageID": string(), "containerID": string(),
    "ready": boolean(), "started": boolean(), "restartCount": integer(), "state": STATE,
    "lastState": STATE,
})
POD_STATUS = obj({
    "phase": string(), "reason": string(), "message": string(), "hostIP": string(),
    "hostIPs": array(obj({"ip": string()})), "podIP": string(),
    "podIPs": array(obj({"ip": string()}), merge_key="ip"), "startTime": string(nullable=True),
    "qosClass": string(), "nominatedNodeName": string(),
    "conditions": array(CONDITION, merge_key="type"),
    "containerStatuses": array(CONTAINER_STATUS),
    "initContainerStatuses": array(CONTAINER_STATUS),
})

# -- defaults -------------------------------------------------------------------------------


def _pull_policy(image: str) -> str:
    """kube-apiserver's default: Always for :latest or no tag, else IfNotPresent."""
    if "@" in image:
        return "IfNotPresent"
    last = image.rsplit("/", 1)[-1]
    tag = last.partition(":")[2]
    return "Always" if tag in ("", "latest") else "IfNotPresent"


def _prepare_pod(pod: Obj) -> None:
    """Defaults the schema cannot express, and the finalizer the host agent removes."""
    spec = pod.setdefault("spec", {})
    for c in spec.get("containers") or []:
        if not isinstance(c, dict):
            continue
        c.setdefault("terminationMessagePath", "/dev/termination-log")
        c.setdefault("terminationMessagePolicy", "File")
        if isinstance(c.get("image"), str):
            c.setdefault("imagePullPolicy", _pull_policy(c["image"]))
        resources = c.setdefault("resources", {})
        if not isinstance(resources, dict):
            continue
        limits = resources.get("limits") or {}
        requests = resources.setdefault("requests", {})
        if not isinstance(requests, dict) or not isinstance(limits, dict):
            continue
        for name, default in DEFAULT_REQUESTS.items():
            if name not in requests:
                # Kubernetes: a limit without a request requests the limit.
                requests[name] = limits.get(name, default)
    pod.setdefault("status", {}).setdefault("phase", "Pending")
    pod["status"].setdefault("qosClass", qos_class(spec))


def qos_class(spec: Obj) -> str:
    containers = [c for c in spec.get("containers") or [] if isinstance(c, dict)]
    guaranteed = True
    for c in containers:
        res = c.get("resources") or {}
        req, lim = res.get("requests") or {}, res.get("limits") or {}
        for name in ("cpu", "memory"):
            if name not in lim or str(req.get(name, lim[name])) != str(lim[name]):
                guaranteed = False
    if guaranteed and containers:
        return "Guaranteed"
    return "Burstable"

# -- validation -----------------------------------------------------------------------------


def _dup(names: Iterable[str]) -> set[str]:
    seen: set[str] = set()
    dups = set()
    for n in names:
        if n in seen:
            dups.add(n)
        seen.add(n)
    return dups


def _validate_container(c: Obj, path: str, volumes: set[str]) -> list[Cause]:
    causes = []
    name = c.get("name") or ""
    causes += [Cause(f"{path}.name", f"Invalid value: {name!r}: {m}")
               for m in dns1123_label(name)]
    if not str(c.get("image") or "").strip():
        causes.append(Cause(f"{path}.image", "Required value", "FieldValueRequired"))
    policy = c.get("imagePullPolicy")
    if policy not in (None, *PULL_POLICIES):
        causes.append(Cause(f"{path}.imagePullPolicy", f"Unsupported value: {policy!r}: "
                            "supported values: " + ", ".join(f'"{p}"' for p in PULL_POLICIES),
                            "FieldValueNotSupported"))
    for i, env in enumerate(c.get("env") or []):
        ename = env.get("name") or ""
        if not ENV_NAME.match(ename):
            causes.append(Cause(f"{path}.env[{i}].name", f"Invalid value: {ename!r}: a valid "
                                "environment variable name must consist of alphabetic "
                                "characters, digits, '_', '-', or '.', and must not start "
                                "with a digit"))
        source = env.get("valueFrom")
        if source is not None:
            if "value" in env and env["value"] != "":
                causes.append(Cause(f"{path}.env[{i}].valueFrom", "Invalid value: may not "
                                    "be specified when `value` is not empty"))
            kinds = [k for k in ("configMapKeyRef", "secretKeyRef", "fieldRef",
                                 "resourceFieldRef") if source.get(k) is not None]
            if len(kinds) != 1:
                causes.append(Cause(f"{path}.env[{i}].valueFrom", "Invalid value: must "
                                    "specify exactly one of: `fieldRef`, `resourceFieldRef`, "
                                    "`configMapKeyRef` or `secretKeyRef`"))
            elif kinds[0] == "fieldRef":
                fpath = source["fieldRef"].get("fieldPath", "")
                if fpath not in FIELD_REFS and not re.match(
                        r"^metadata\.(labels|annotations)\['[^']+'\]$", fpath):
                    causes.append(Cause(f"{path}.env[{i}].valueFrom.fieldRef.fieldPath",
                                        f"Unsupported value: {fpath!r}",
                                        "FieldValueNotSupported"))
            elif kinds[0] == "resourceFieldRef":
                causes.append(Cause(f"{path}.env[{i}].valueFrom.resourceFieldRef",
                                    "Forbidden: not supported by vSphere Pods here",
                                    "FieldValueForbidden"))
    for i, src in enumerate(c.get("envFrom") or []):
        if (src.get("configMapRef") is None) == (src.get("secretRef") is None):
            causes.append(Cause(f"{path}.envFrom[{i}]", "Invalid value: must specify one of: "
                                "`configMapRef` or `secretRef`"))
    mounts = c.get("volumeMounts") or []
    for i, m in enumerate(mounts):
        mpath = str(m.get("mountPath") or "")
        if m.get("name") not in volumes:
            causes.append(Cause(f"{path}.volumeMounts[{i}].name",
                                f"Not found: {m.get('name')!r}", "FieldValueNotFound"))
        if not mpath.startswith("/") or ".." in mpath.split("/") or mpath == "/":
            causes.append(Cause(f"{path}.volumeMounts[{i}].mountPath",
                                f"Invalid value: {mpath!r}: must be an absolute path below / "
                                "without '..'"))
        sub = str(m.get("subPath") or "")
        if sub and (sub.startswith("/") or ".." in sub.split("/")):
            causes.append(Cause(f"{path}.volumeMounts[{i}].subPath",
                                f"Invalid value: {sub!r}: must be a relative path without "
                                "'..'"))
        if m.get("subPathExpr"):
            causes.append(Cause(f"{path}.volumeMounts[{i}].subPathExpr",
                                "Forbidden: not supported by vSphere Pods here",
                                "FieldValueForbidden"))
    for dup in sorted(_dup(str(m.get("mountPath")) for m in mounts)):
        causes.append(Cause(f"{path}.volumeMounts", f"Duplicate value: {dup!r}",
                            "FieldValueDuplicate"))
    res = c.get("resources") or {}
    for kind_ in ("requests", "limits"):
        for rname in res.get(kind_) or {}:
            if rname not in ("cpu", "memory", "ephemeral-storage"):
                causes.append(Cause(f"{path}.resources.{kind_}[{rname}]",
                                    f"Unsupported value: {rname!r}: supported values: "
                                    '"cpu", "memory", "ephemeral-storage"',
                                    "FieldValueNotSupported"))
    for rname, limit in (res.get("limits") or {}).items():
        request = (res.get("requests") or {}).get(rname)
        try:
            if request is not None and parse_quantity(request) > parse_quantity(limit):
                causes.append(Cause(f"{path}.resources.requests",
                                    f"Invalid value: {request!r}: must be less than or equal "
                                    f"to {rname} limit of {limit}"))
        except ValueError:
            pass  # the schema reports malformed quantities
    mem = (res.get("limits") or {}).get("memory") or (res.get("requests") or {}).get("memory")
    try:
        if mem is not None and parse_quantity(mem) < MIN_CONTAINER_MEMORY_MIB * 2**20:
            causes.append(Cause(f"{path}.resources", f"Invalid value: {mem!r}: a pod VM "
                                f"container needs at least {MIN_CONTAINER_MEMORY_MIB}Mi"))
    except ValueError:
        pass
    for i, port in enumerate(c.get("ports") or []):
        if port.get("protocol", "TCP") not in ("TCP", "UDP", "SCTP"):
            causes.append(Cause(f"{path}.ports[{i}].protocol",
                                f"Unsupported value: {port.get('protocol')!r}: supported "
                                'values: "SCTP", "TCP", "UDP"', "FieldValueNotSupported"))
        if port.get("hostPort"):
            causes.append(Cause(f"{path}.ports[{i}].hostPort", "Forbidden: a pod VM has no "
                                "host ports; use a Service", "FieldValueForbidden"))
    return causes


def _validate_volume(v: Obj, path: str) -> list[Cause]:
    causes = [Cause(f"{path}.name", f"Invalid value: {v.get('name')!r}: {m}")
              for m in dns1123_label(str(v.get("name") or ""))]
    sources = [k for k in v if k != "name" and v[k] is not None]
    for src in sources:
        if src in REFUSED_VOLUMES:
            causes.append(Cause(f"{path}.{src}", "Forbidden: " + REFUSED_VOLUMES[src],
                                "FieldValueForbidden"))
        elif src not in SUPPORTED_VOLUMES:
            causes.append(Cause(f"{path}.{src}", "Forbidden: vSphere Pods here support "
                                "emptyDir, configMap and secret volumes", "FieldValueForbidden"))
    if len(sources) != 1:
        causes.append(Cause(path, "Invalid value: must specify exactly one volume type"
                            if sources else "Required value: must specify a volume type",
                            "FieldValueInvalid" if sources else "FieldValueRequired"))
    medium = (v.get("emptyDir") or {}).get("medium", "")
    if medium not in ("", "Memory"):
        causes.append(Cause(f"{path}.emptyDir.medium", f"Unsupported value: {medium!r}: "
                            'supported values: "", "Memory"', "FieldValueNotSupported"))
    for src in ("configMap", "secret"):
        body = v.get(src) or {}
        ref = body.get("name" if src == "configMap" else "secretName")
        if src in v and not ref:
            causes.append(Cause(f"{path}.{src}.{'name' if src == 'configMap' else 'secretName'}",
                                "Required value", "FieldValueRequired"))
        for i, item in enumerate(body.get("items") or []):
            p = str(item.get("path") or "")
            if not p or p.startswith("/") or ".." in p.split("/"):
                causes.append(Cause(f"{path}.{src}.items[{i}].path", f"Invalid value: {p!r}: "
                                    "must be a relative path without '..'"))
        for field in ("defaultMode",):
            mode = body.get(field)
            if mode is not None and not 0 <= int(mode) <= 0o777:
                causes.append(Cause(f"{path}.{src}.{field}", f"Invalid value: {mode}: must be "
                                    "a number between 0 and 0777 (octal), both inclusive"))
    return causes


def _validate_pod(new: Obj, old: Obj | None, ctx: AdmissionContext) -> list[Cause]:
    spec = new.get("spec") or {}
    if old is not None:
        return _validate_pod_update(new, old)
    causes: list[Cause] = []
    containers = spec.get("containers") or []
    if not containers:
        causes.append(Cause("spec.containers", "Required value", "FieldValueRequired"))
    if spec.get("initContainers"):
        causes.append(Cause("spec.initContainers", "Forbidden: init containers are not "
                            "supported by vSphere Pods here yet", "FieldValueForbidden"))
    for field in REFUSED_POD_FIELDS:
        if spec.get(field):
            causes.append(Cause(f"spec.{field}", "Forbidden: a pod VM shares nothing with the "
                                "host", "FieldValueForbidden"))
    volumes = spec.get("volumes") or []
    for i, v in enumerate(volumes):
        causes += _validate_volume(v, f"spec.volumes[{i}]")
    names = {str(v.get("name")) for v in volumes}
    for dup in sorted(_dup(str(v.get("name")) for v in volumes)):
        causes.append(Cause("spec.volumes", f"Duplicate value: {dup!r}", "FieldValueDuplicate"))
    for i, c in enumerate(containers):
        causes += _validate_container(c, f"spec.containers[{i}]", names)
    for dup in sorted(_dup(str(c.get("name")) for c in containers)):
        causes.append(Cause("spec.containers", f"Duplicate value: {dup!r}",
                            "FieldValueDuplicate"))
    policy = spec.get("restartPolicy")
    if policy not in RESTART_POLICIES:
        causes.append(Cause("spec.restartPolicy", f"Unsupported value: {policy!r}: supported "
                            'values: "Always", "OnFailure", "Never"', "FieldValueNotSupported"))
    for i, ref in enumerate(spec.get("imagePullSecrets") or []):
        causes += [Cause(f"spec.imagePullSecrets[{i}].name", f"Invalid value: "
                         f"{ref.get('name')!r}: {m}")
                   for m in dns1123_subdomain(str(ref.get("name") or ""))]
    hostname = spec.get("hostname")
    if hostname:
        causes += [Cause("spec.hostname", f"Invalid value: {hostname!r}: {m}")
                   for m in dns1123_label(hostname)]
    if spec.get("nodeName") and ctx.operation == "CREATE" and ctx.lookup(
            "", "nodes", "", spec["nodeName"]) is None:
        causes.append(Cause("spec.nodeName", f"Not found: {spec['nodeName']!r}",
                            "FieldValueNotFound"))
    return causes


#: What may change in a pod's spec after it exists (everything else needs a new pod VM).
MUTABLE_SPEC = ("nodeName", "activeDeadlineSeconds", "terminationGracePeriodSeconds")


def _validate_pod_update(new: Obj, old: Obj) -> list[Cause]:
    a, b = dict(new.get("spec") or {}), dict(old.get("spec") or {})
    if b.get("nodeName") and a.get("nodeName") != b.get("nodeName"):
        return [Cause("spec.nodeName", "Invalid value: field is immutable once set",
                      "FieldValueForbidden")]
    for field in MUTABLE_SPEC:
        a.pop(field, None)
        b.pop(field, None)
    if a != b:
        return [Cause("spec", "Forbidden: pod updates may not change fields other than "
                      "`spec.activeDeadlineSeconds` or `spec.terminationGracePeriodSeconds`: "
                      "a pod VM is made once; delete the pod and create it again",
                      "FieldValueForbidden")]
    return []

# -- quota and sizing -----------------------------------------------------------------------


def _containers(pod: Obj) -> list[Obj]:
    return [c for c in (pod.get("spec") or {}).get("containers") or [] if isinstance(c, dict)]


def _sum(pod: Obj, section: str, name: str) -> Decimal:
    total = Decimal(0)
    for c in _containers(pod):
        res = c.get("resources") or {}
        value = (res.get(section) or {}).get(name)
        if value is None and section == "limits":
            value = (res.get("requests") or {}).get(name)
        if value is None:
            value = DEFAULT_REQUESTS.get(name, "0")
        total += parse_quantity(value)
    return total


def terminal(pod: Obj) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def _pod_consumes(pod: Obj, lookup: Lookup) -> dict[str, Decimal]:
    """Requests of the pod's containers; a finished pod holds nothing (as in Kubernetes)."""
    if terminal(pod):
        return {}
    return {"requests.cpu": _sum(pod, "requests", "cpu"),
            "requests.memory": _sum(pod, "requests", "memory"),
            "limits.cpu": _sum(pod, "limits", "cpu"),
            "limits.memory": _sum(pod, "limits", "memory")}


def placement_size(pod: Obj) -> tuple[Decimal, int]:
    """(CPUs, MiB) a pod takes from its host when placed: CPU by its requests, as
    Kubernetes schedules, memory as its VM is sized (memory is never overcommitted)."""
    return _sum(pod, "requests", "cpu"), vm_size(pod)[1]


def vm_size(pod: Obj) -> tuple[int, int]:
    """(vCPUs, MiB) of the pod's VM: its containers' limits (or requests), plus overhead."""
    cpus = max(1, math.ceil(_sum(pod, "limits", "cpu")))
    mib = math.ceil(_sum(pod, "limits", "memory") / 2**20) + VM_OVERHEAD_MIB
    return cpus, mib

# -- printing -------------------------------------------------------------------------------


def pod_status_text(pod: Obj) -> str:
    """kubectl's STATUS column (printPod in kubectl's printers)."""
    status = pod.get("status") or {}
    reason = status.get("reason") or status.get("phase") or "Pending"
    has_running = False
    for cs in reversed(status.get("containerStatuses") or []):
        state = cs.get("state") or {}
        if (state.get("waiting") or {}).get("reason"):
            reason = state["waiting"]["reason"]
        elif state.get("terminated") is not None:
            term = state["terminated"]
            if term.get("reason"):
                reason = term["reason"]
            elif term.get("signal"):
                reason = f"Signal:{term['signal']}"
            else:
                reason = f"ExitCode:{term.get('exitCode', 0)}"
        elif state.get("running") is not None and cs.get("ready"):
            has_running = True
    if reason == "Completed" and has_running:
        reason = "Running"
    if pod["metadata"].get("deletionTimestamp"):
        reason = "Terminating"
    return reason


def _ready(pod: Obj) -> str:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    ready = sum(1 for cs in statuses if cs.get("ready"))
    return f"{ready}/{len(_containers(pod))}"


def _restarts(pod: Obj) -> int:
    return sum(int(cs.get("restartCount") or 0)
               for cs in (pod.get("status") or {}).get("containerStatuses") or [])


def _none(path: tuple[str, ...]) -> Callable[[Obj], str]:
    """A column that shows ``<none>`` for an empty field, as kubectl's pod printer does."""
    def value(pod: Obj) -> str:
        cur: object = pod
        for p in path:
            cur = (cur.get(p) if isinstance(cur, dict) else None) or {}
        return cur if isinstance(cur, str) and cur else "<none>"
    return value


POD = Kind(
    group="", kind="Pod", plural="pods", singular="pod", namespaced=True,
    short_names=("po",), categories=("all",), builtin=True, consumes=_pod_consumes,
    validate=_validate_pod, prepare_create=_prepare_pod, default_finalizers=(POD_FINALIZER,),
    extra_subresources=("log",),
    grace_period=lambda pod: int((pod.get("spec") or {}).get("terminationGracePeriodSeconds", 30)
                                 or 0),
    field_selectors=("spec.nodeName", "spec.restartPolicy", "spec.schedulerName",
                     "status.phase", "status.podIP", "status.nominatedNodeName"),
    versions=(Version("v1", top_level(spec=POD_SPEC, status=POD_STATUS), storage=True,
                      printer_columns=(
                          PrinterColumn("Name", format="name", json_path=".metadata.name"),
                          PrinterColumn("Ready", compute=_ready),
                          PrinterColumn("Status", compute=pod_status_text),
                          PrinterColumn("Restarts", type="integer", compute=_restarts),
                          PrinterColumn("Age", type="date",
                                        json_path=".metadata.creationTimestamp"),
                          PrinterColumn("IP", priority=1,
                                        compute=_none(("status", "podIP"))),
                          PrinterColumn("Node", priority=1,
                                        compute=_none(("spec", "nodeName"))),
                          PrinterColumn("Nominated Node", priority=1,
                                        compute=_none(("status", "nominatedNodeName"))),
                          PrinterColumn("Readiness Gates", priority=1,
                                        compute=lambda _p: "<none>"),
                      )),),
)

KINDS = (POD,)

