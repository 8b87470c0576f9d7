"""KubeadmControlPlane: the guest cluster's control-plane machines.

As CAPI's KCP controller: the cluster's certificates and kubeconfig first;
then the first machine initialises (``kubeadm init``); the others join one at
a time, each only once every existing machine has a healthy node; scale down
removes one machine at a time, outdated ones first; a change of version,
machine template or kubeadm configuration rolls the machines (one new
machine, then one old one removed: ``rolloutStrategy.rollingUpdate.maxSurge``
of 1).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable

from appliance.clusters.credentials import ensure_certificates, ensure_kubeconfig
from appliance.clusters.machines import (
    MachineRecipe,
    TemplateNotFound,
    ensure_children,
    new_machine,
)
from appliance.clusters.objects import (
    CLUSTER_NAME,
    CLUSTERS,
    CONTROL_PLANE,
    CONTROL_PLANE_NAME,
    CONTROLPLANE,
    MACHINES,
    V1B1,
    controller_of,
    delete_quietly,
    listed,
    machine_ready,
    mark,
    owned_by,
    record,
    spec_hash,
    summary,
    transition,
    write_status,
)
from appliance.controllers.base import Controller, add_finalizer, drop_finalizer, owners
from appliance.kinds.registry import Obj
from appliance.resources import Ref, ResourceApi, get_or_none

LOG = logging.getLogger(__name__)

FINALIZER = "kubeadm.controlplane.cluster.x-k8s.io"
#: What a machine was made from (the kubeadm configuration as a hash, the machine
#: template's name), to see when to roll it.
CONFIG_HASH = "controlplane.cluster.x-k8s.io/kubeadm-config-hash"
TEMPLATE_NAME = "controlplane.cluster.x-k8s.io/infrastructure-template"


def config_hash(kcp: Obj) -> str:
    spec = (kcp.get("spec") or {}).get("kubeadmConfigSpec") or {}
    return spec_hash(spec)


def outdated(kcp: Obj, machine: Obj) -> bool:
    spec = kcp.get("spec") or {}
    mspec = machine.get("spec") or {}
    template = ((spec.get("machineTemplate") or {}).get("infrastructureRef") or {}).get("name")
    annotations = machine["metadata"].get("annotations") or {}
    return (mspec.get("version") != spec.get("version") or
            annotations.get(CONFIG_HASH) != config_hash(kcp) or
            annotations.get(TEMPLATE_NAME) != template)


class KubeadmControlPlaneController(Controller):
    group, version, plural, name = CONTROLPLANE, V1B1, "kubeadmcontrolplanes", "kcp"
    resync = 10.0

    def __init__(self, api: ResourceApi) -> None:
        super().__init__(api)

    def related(self) -> list[tuple[Ref, Callable[[Obj], list[tuple[str, str]]]]]:
        def control_plane_of(cluster: Obj) -> list[tuple[str, str]]:
            ref = (cluster.get("spec") or {}).get("controlPlaneRef") or {}
            return [(cluster["metadata"]["namespace"], ref["name"])] if ref.get("name") else []
        return [(MACHINES, owners("KubeadmControlPlane")), (CLUSTERS, control_plane_of)]

    def machines(self, kcp: Obj) -> list[Obj]:
        ns = kcp["metadata"]["namespace"]
        return sorted((m for m in listed(self.api, MACHINES, ns,
                                         f"{CONTROL_PLANE_NAME}={kcp['metadata']['name']}")
                       if owned_by(m, kcp)),
                      key=lambda m: m["metadata"].get("creationTimestamp") or "")

    def reconcile(self, kcp: Obj) -> float | None:
        meta, _spec = kcp["metadata"], kcp.get("spec") or {}
        ns = meta["namespace"]
        if meta.get("deletionTimestamp"):
            return self.delete(kcp)
        kcp = add_finalizer(self.api, self.ref, kcp, FINALIZER)
        status = copy.deepcopy(kcp.get("status") or {})
        conditions = list(status.get("conditions") or [])
        machines: list[Obj] = []
        try:
            owner = controller_of(kcp, "Cluster")
            cluster = get_or_none(self.api, CLUSTERS, ns, owner["name"]) if owner else None
            if cluster is None:
                conditions = mark(conditions, "Available", False, "WaitingForCluster",
                                  "waiting for a Cluster to own this KubeadmControlPlane")
                return 5.0
            pairs = ensure_certificates(self.api, cluster, kcp)
            conditions = mark(conditions, "CertificatesAvailable", True)
            if not (cluster.get("status") or {}).get("infrastructureReady") or \
                    not ((cluster.get("spec") or {}).get("controlPlaneEndpoint") or {}).get(
                        "host"):
                conditions = mark(conditions, "Available", False,
                                  "WaitingForClusterInfrastructure",
                                  "waiting for the cluster's infrastructure and endpoint")
                return 3.0
            ensure_kubeconfig(self.api, cluster, pairs["ca"], kcp)
            machines = self.machines(kcp)
            recipe_first = self.recipe(kcp, cluster, init=True)
            recipe_join = self.recipe(kcp, cluster, init=False)
            for m in machines:
                if not m["metadata"].get("deletionTimestamp"):
                    first = m is machines[0] and not status.get("initialized")
                    ensure_children(self.api, m, recipe_first if first else recipe_join)
            again, conditions = self.scale(kcp, machines, status, conditions, recipe_first,
                                           recipe_join)
            conditions = mark(conditions, "MachinesCreated", True)
            return again or 5.0
        except TemplateNotFound as exc:
            conditions = mark(conditions, "MachinesCreated", False,
                              "InfrastructureTemplateNotFound", str(exc), "Error")
            return exc.delay
        finally:
            conditions = self.fill_status(kcp, machines, status, conditions)
            failed = tuple(c["type"] for c in conditions
                           if c["type"] == "MachinesCreated" and c["status"] == "False")
            status["conditions"] = summary(conditions, (*failed, "Available",
                                                        "CertificatesAvailable",
                                                        "MachinesReady"))
            old = kcp
            kcp = write_status(self.api, self.ref, kcp, status)
            for t in ("Available", "Resized", "MachinesSpecUpToDate", "MachinesCreated"):
                transition(self.api, kcp, old, status["conditions"], t)

    def recipe(self, kcp: Obj, cluster: Obj, init: bool) -> MachineRecipe:
        spec = kcp.get("spec") or {}
        template = spec.get("machineTemplate") or {}
        bootstrap = copy.deepcopy(spec.get("kubeadmConfigSpec") or {})
        if init:
            bootstrap.pop("joinConfiguration", None)
            bootstrap.setdefault("initConfiguration", {})
            bootstrap.setdefault("clusterConfiguration", {})
        else:
            bootstrap.pop("initConfiguration", None)
            bootstrap.pop("clusterConfiguration", None)
            join = bootstrap.setdefault("joinConfiguration", {})
            join.setdefault("controlPlane", {})
        name = kcp["metadata"]["name"]
        tmeta = template.get("metadata") or {}
        return MachineRecipe(
            cluster=cluster["metadata"]["name"], version=str(spec.get("version") or ""),
            infrastructure_template=template.get("infrastructureRef") or {},
            labels={**(tmeta.get("labels") or {}), CONTROL_PLANE: "",
                    CONTROL_PLANE_NAME: name},
            annotations={**(tmeta.get("annotations") or {}), CONFIG_HASH: config_hash(kcp),
                         TEMPLATE_NAME: str((template.get("infrastructureRef") or {}).get(
                             "name") or "")},
            bootstrap_spec=bootstrap, node_drain_timeout=template.get("nodeDrainTimeout"))

    def scale(self, kcp: Obj, machines: list[Obj], status: Obj, conditions: list[Obj],
              first: MachineRecipe, join: MachineRecipe) -> tuple[float | None, list[Obj]]:
        """One step towards the wanted machines: (when to look again, conditions)."""
        spec = kcp.get("spec") or {}
        ns, name = kcp["metadata"]["namespace"], kcp["metadata"]["name"]
        desired = int(spec.get("replicas") if spec.get("replicas") is not None else 1)
        live = [m for m in machines if not m["metadata"].get("deletionTimestamp")]
        stale = [m for m in live if outdated(kcp, m)]
        initialized = any((m.get("status") or {}).get("nodeRef") for m in machines) or \
            bool(status.get("initialized"))
        status["initialized"] = initialized
        conditions = mark(conditions, "MachinesSpecUpToDate", not stale or None,
                          "" if not stale else "RollingUpdateInProgress",
                          "" if not stale else f"{len(stale)} machines need rollout")
        if len(live) < len(machines):
            return 2.0, mark(conditions, "Resized", False, "ScalingDown" if len(live) >= desired
                          else "ScalingUp", "waiting for a machine to be deleted")
        if not live:
            machine = new_machine(self.api, ns, name, first, kcp)
            record(self.api, kcp, "Normal", "SuccessfulCreate",
                   f"created machine {machine['metadata']['name']} to initialise the cluster")
            return 2.0, mark(conditions, "Resized", False, "ScalingUp",
                          f"scaling up to {desired} replicas (initialising)")
        grow = len(live) < desired or (stale and len(live) == desired)
        if grow:
            if not initialized:
                return 5.0, mark(conditions, "Resized", False, "WaitingForKubeadmInit",
                              "waiting for the first control-plane machine to initialise "
                              "the cluster before more join")
            not_ready = [m["metadata"]["name"] for m in live if not machine_ready(m)]
            if not_ready:
                return 5.0, mark(conditions, "Resized", False, "ScalingUp",
                              f"waiting for {', '.join(not_ready)} to have a healthy node "
                              "before the next joins (one at a time)")
            machine = new_machine(self.api, ns, name, join, kcp)
            record(self.api, kcp, "Normal", "SuccessfulCreate",
                   f"created machine {machine['metadata']['name']} "
                   f"({'rollout' if len(live) >= desired else 'scale up'})")
            return 2.0, mark(conditions, "Resized", False, "ScalingUp",
                          f"scaling to {desired} replicas")
        if len(live) > desired:
            not_ready = [m["metadata"]["name"] for m in live if not machine_ready(m)
                         and m not in stale]
            if stale and not_ready:
                return 5.0, mark(conditions, "Resized", False, "ScalingDown",
                              f"waiting for {', '.join(not_ready)} before removing an "
                              "outdated machine")
            victim = (stale or live)[0]
            delete_quietly(self.api, MACHINES, ns, victim["metadata"]["name"])
            record(self.api, kcp, "Normal", "SuccessfulDelete",
                   f"deleted machine {victim['metadata']['name']}")
            return 2.0, mark(conditions, "Resized", False, "ScalingDown",
                          f"scaling down to {desired} replicas")
        return None, mark(conditions, "Resized", True)

    def fill_status(self, kcp: Obj, machines: list[Obj], status: Obj, conditions: list[Obj]
                    ) -> list[Obj]:
        spec = kcp.get("spec") or {}
        name = kcp["metadata"]["name"]
        cluster = (kcp["metadata"].get("labels") or {}).get(CLUSTER_NAME, "")
        ready = [m for m in machines if machine_ready(m)]
        updated = [m for m in machines if not outdated(kcp, m)]
        desired = int(spec.get("replicas") if spec.get("replicas") is not None else 1)
        status.update(
            replicas=len(machines), readyReplicas=len(ready), updatedReplicas=len(updated),
            unavailableReplicas=len(machines) - len(ready),
            selector=f"{CLUSTER_NAME}={cluster},{CONTROL_PLANE},{CONTROL_PLANE_NAME}={name}",
            observedGeneration=kcp["metadata"].get("generation"), ready=bool(ready))
        if ready:
            status["version"] = min(str((m.get("spec") or {}).get("version") or "")
                                    for m in ready)
        not_ready = [m for m in machines if not machine_ready(m)]
        if not machines:
            conditions = mark(conditions, "MachinesReady", None, "WaitingForMachines",
                              "no machines yet")
        elif not_ready:
            worst = not_ready[0]
            why = next((c for c in (worst.get("status") or {}).get("conditions") or []
                        if c.get("status") != "True" and c.get("type") != "Ready"
                        and c.get("severity") == "Error"), None) or next(
                (c for c in (worst.get("status") or {}).get("conditions") or []
                 if c.get("type") == "Ready"), {})
            conditions = mark(conditions, "MachinesReady", False,
                              why.get("reason") or "WaitingForNode",
                              f"machine {worst['metadata']['name']}: "
                              f"{why.get('message') or 'not ready'}",
                              why.get("severity") or "Info")
        else:
            conditions = mark(conditions, "MachinesReady", True)
        conditions = mark(conditions, "Available", bool(status.get("initialized")) or None,
                          "" if status.get("initialized") else "WaitingForKubeadmInit",
                          "" if status.get("initialized") else
                          "the first control-plane machine has not initialised the cluster "
                          f"(0 of {desired} machines have a node)")
        return conditions

    def delete(self, kcp: Obj) -> float | None:
        ns = kcp["metadata"]["namespace"]
        machines = self.machines(kcp)
        for m in machines:
            if not m["metadata"].get("deletionTimestamp"):
                delete_quietly(self.api, MACHINES, ns, m["metadata"]["name"])
        if machines:
            return 2.0
        drop_finalizer(self.api, self.ref, kcp, FINALIZER)
        return None



