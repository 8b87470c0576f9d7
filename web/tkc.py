"""Guest clusters as the dashboard shows them: a TanzuKubernetesCluster with its
Cluster API machines and their VMs, read through the object service as the user.

Counts of ready nodes come from the Machines (CAPI's "ready": a node has joined
and is healthy), never from the TKC's spec; a cluster's state word comes from
its status (phase and the Ready condition) written by the TKC controller.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from appliance.auth.users import UserInfo
from appliance.clusters.objects import (CAPI, CLUSTER_NAME, CONTROL_PLANE, SSH_SUFFIX,
                                        VM_CLUSTER, machine_ready)
from appliance.kinds.registry import Obj
from appliance.kinds.tanzu import GROUP as TANZU
from appliance.kinds.vmop import GROUP as VMOP
from web.filters import State, _words, condition
from web.lab import Lab

TKCS = "tanzukubernetesclusters"
TKRS = "tanzukubernetesreleases"
MACHINES = "machines"
KUBECONFIG_SUFFIX = "-kubeconfig"
#: The label Cluster API's topology controller puts on a node pool's machines (its name).
POOL_LABEL = "topology.cluster.x-k8s.io/deployment-name"
PHASES = {"running": State("Running", "ok"), "creating": State("Creating", "info"),
          "updating": State("Updating", "info"), "deleting": State("Deleting", "warn"),
          "failed": State("Failed", "bad")}


def tkc_registered(lab: Lab) -> bool:
    return lab.kind(TANZU, TKCS) is not None


def cluster_state(tkc: Obj) -> State:
    """One word for where a cluster is (its phase), with the Ready message as detail."""
    status = tkc.get("status") or {}
    ready = condition(tkc, "Ready") or {}
    detail = "" if ready.get("status") == "True" else \
        str(ready.get("message") or _words(str(ready.get("reason") or "")))
    if tkc["metadata"].get("deletionTimestamp"):
        return State("Deleting", "warn", "its machines, VMs and Secrets are being removed")
    phase = str(status.get("phase") or "")
    if not phase:
        return State("Pending", "info", detail or "waiting for the cluster controller")
    known = PHASES.get(phase)
    if known is None:
        return State(phase.capitalize(), "info", detail)
    return State(known.label, known.tone, detail)


def condition_tone(c: Obj) -> str:
    """CAPI's conditions: False with severity Info is waiting, not failing."""
    if c.get("type") == "UpdatesAvailable":
        return "info" if c.get("status") == "True" else "muted"
    if c.get("status") == "True":
        return "ok"
    return {"Error": "bad", "Warning": "warn"}.get(str(c.get("severity") or ""), "info")


def conditions(obj: Obj) -> list[Obj]:
    """Ready first, then the rest by type."""
    return sorted((obj.get("status") or {}).get("conditions") or [],
                  key=lambda c: (c.get("type") != "Ready", c.get("type") or ""))


def tkr_of(node: Obj | None) -> str:
    return str((((node or {}).get("tkr") or {}).get("reference") or {}).get("name") or "")


def topology(tkc: Obj) -> Obj:
    return ((tkc.get("spec") or {}).get("topology")) or {}


def node_pools(tkc: Obj) -> list[Obj]:
    return list(topology(tkc).get("nodePools") or [])


@dataclass(frozen=True)
class Node:
    machine: Obj
    vm: Obj | None
    role: str  # "control plane", or the node pool's name
    control_plane: bool
    ip: str
    ready: bool
    #: Conditions of the machine that are not True: what it waits for, or what failed.
    problems: list[Obj] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.machine["metadata"]["name"])

    @property
    def vm_name(self) -> str:
        ref = (self.machine.get("spec") or {}).get("infrastructureRef") or {}
        return str(ref.get("name") or "")


@dataclass(frozen=True)
class Summary:
    tkc: Obj
    state: State
    version: str
    cp_ready: int
    cp_desired: int
    workers_ready: int
    workers_desired: int
    ready: Obj | None  # the Ready condition
    nodes: list[Node]

    @property
    def name(self) -> str:
        return str(self.tkc["metadata"]["name"])

    @property
    def endpoint(self) -> str:
        eps = (self.tkc.get("status") or {}).get("apiEndpoints") or []
        return f"{eps[0].get('host')}:{eps[0].get('port')}" if eps else ""


def _node(machine: Obj, vms: dict[str, Obj]) -> Node:
    labels = machine["metadata"].get("labels") or {}
    control_plane = CONTROL_PLANE in labels
    role = "control plane" if control_plane else str(labels.get(POOL_LABEL) or "worker")
    ref = (machine.get("spec") or {}).get("infrastructureRef") or {}
    vm = vms.get(str(ref.get("name") or ""))
    ip = str((((vm or {}).get("status") or {}).get("network") or {}).get("primaryIP4") or "")
    if not ip:
        addresses = (machine.get("status") or {}).get("addresses") or []
        ip = next((str(a.get("address")) for a in addresses
                   if a.get("type") in ("InternalIP", "ExternalIP") and a.get("address")), "")
    problems = [c for c in conditions(machine) if c.get("status") != "True"]
    if len(problems) > 1:  # Ready only sums up the others
        problems = [c for c in problems if c.get("type") != "Ready"]
    return Node(machine, vm, role, control_plane, ip, machine_ready(machine), problems)


def _summary(tkc: Obj, machines: list[Obj], vms: dict[str, Obj]) -> Summary:
    nodes = sorted((_node(m, vms) for m in machines),
                   key=lambda n: (not n.control_plane, n.role, n.name))
    top = topology(tkc)
    cp = top.get("controlPlane") or {}
    version = str((tkc.get("status") or {}).get("version") or tkr_of(cp))
    return Summary(
        tkc=tkc, state=cluster_state(tkc), version=version,
        cp_ready=sum(1 for n in nodes if n.control_plane and n.ready),
        cp_desired=int(cp.get("replicas") or 1),
        workers_ready=sum(1 for n in nodes if not n.control_plane and n.ready),
        workers_desired=sum(int(p.get("replicas") or 0) for p in node_pools(tkc)),
        ready=condition(tkc, "Ready"), nodes=nodes)


def summaries(lab: Lab, user: UserInfo, ns: str) -> list[Summary]:
    """Every cluster of ``ns`` the user may see, with its machines (two lists in all)."""
    if not tkc_registered(lab):
        return []
    tkcs = lab.list_or_empty(user, TANZU, TKCS, ns)
    if not tkcs:
        return []
    by_cluster: dict[str, list[Obj]] = {}
    for m in lab.list_or_empty(user, CAPI, MACHINES, ns):
        name = (m["metadata"].get("labels") or {}).get(CLUSTER_NAME) or \
            (m.get("spec") or {}).get("clusterName")
        if name:
            by_cluster.setdefault(str(name), []).append(m)
    return [_summary(t, by_cluster.get(t["metadata"]["name"], []), {}) for t in tkcs]


def summary(lab: Lab, user: UserInfo, ns: str, tkc: Obj) -> Summary:
    """One cluster with its nodes: machine → VM → address."""
    name = tkc["metadata"]["name"]
    machines = lab.list_or_empty(user, CAPI, MACHINES, ns, f"{CLUSTER_NAME}={name}")
    vms = {v["metadata"]["name"]: v
           for v in lab.list_or_empty(user, VMOP, "virtualmachines", ns, f"{VM_CLUSTER}={name}")}
    return _summary(tkc, machines, vms)


def secret_names(name: str) -> tuple[str, str]:
    """The Secrets a cluster's credentials live in: (kubeconfig, SSH key)."""
    return name + KUBECONFIG_SUFFIX, name + SSH_SUFFIX


def releases(lab: Lab, user: UserInfo) -> list[dict[str, Any]]:
    """The TanzuKubernetesReleases the user may list, newest first, with readiness."""
    out = []
    for r in lab.list_or_empty(user, TANZU, TKRS):
        ready = condition(r, "Ready") or {}
        kube = str((((r.get("spec") or {}).get("kubernetes") or {}).get("version")) or "")
        out.append({"name": r["metadata"]["name"], "kubernetes": kube,
                    "ready": ready.get("status") == "True",
                    "why": str(ready.get("message") or ready.get("reason") or "not Ready")})
    out.sort(key=lambda x: (_version_key(x["kubernetes"] or x["name"]), x["name"]), reverse=True)
    return out


def _version_key(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.removeprefix("v").split("---")[0].split("+")[0].split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)
