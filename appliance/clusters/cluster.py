"""CAPI's cluster controller: a Cluster's phases, its endpoint, its SSH key, its end.

A pass: adopt the infrastructure cluster and the control plane it names
(owner reference, cluster-name label), copy the endpoint the infrastructure
found into ``spec.controlPlaneEndpoint``, mirror readiness into conditions
and the phase (Pending → Provisioning → Provisioned). vSphere's per-cluster
key pair ``<cluster>-ssh`` is made once, here.

Deletion goes top down as CAPI's does: MachineDeployments, MachineSets and
worker Machines first, then the control plane once no worker is left, then the
infrastructure cluster once no machine is left, then what is labelled with the
cluster (Secrets, KubeadmConfigs, health checks, resource-set bindings).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable

from appliance.clusters.objects import (
    CAPI,
    CLUSTER_NAME,
    CONTROLPLANES,
    HEALTHCHECKS,
    KUBEADMCONFIGS,
    MACHINEDEPLOYMENTS,
    MACHINES,
    MACHINESETS,
    RESOURCESET_BINDINGS,
    SECRETS,
    SSH_SUFFIX,
    V1B1,
    VSPHERECLUSTERS,
    controller_of,
    create_or_get,
    delete_quietly,
    is_true,
    listed,
    mark,
    owner_reference,
    record,
    ref_for,
    summary,
    transition,
    write_status,
)
from appliance.clusters.topology import OWNED, TEMPLATE_REFS
from appliance.controllers.base import Controller, add_finalizer, drop_finalizer, owners
from appliance.kinds.registry import Obj
from appliance.resources import Ref, ResourceApi, get_or_none
from hypervisor.ssh import generate_keypair

LOG = logging.getLogger(__name__)

FINALIZER = "cluster.cluster.x-k8s.io"
#: The conditions this controller writes; others on a Cluster belong to other controllers.
OWN_CONDITIONS = frozenset({"Ready", "InfrastructureReady", "ControlPlaneInitialized",
                            "ControlPlaneReady"})


def belongs(obj: Obj, cluster: str) -> bool:
    return ((obj.get("spec") or {}).get("clusterName") or
            (obj["metadata"].get("labels") or {}).get(CLUSTER_NAME)) == cluster


class ClusterController(Controller):
    group, version, plural, name = CAPI, V1B1, "clusters", "capi-cluster"
    resync = 10.0
    workers = 2

    def __init__(self, api: ResourceApi) -> None:
        super().__init__(api)

    def related(self) -> list[tuple[Ref, Callable[[Obj], list[tuple[str, str]]]]]:
        return [(VSPHERECLUSTERS, owners("Cluster")), (CONTROLPLANES, owners("Cluster"))]

    def reconcile(self, cluster: Obj) -> float | None:
        if cluster["metadata"].get("deletionTimestamp"):
            return self.delete(cluster)
        cluster = add_finalizer(self.api, self.ref, cluster, FINALIZER)
        meta, spec = cluster["metadata"], cluster.get("spec") or {}
        ns = meta["namespace"]
        status = copy.deepcopy(cluster.get("status") or {})
        conditions = list(status.get("conditions") or [])
        try:
            self.ensure_ssh_key(cluster)
            infra = self.adopt(cluster, spec.get("infrastructureRef"))
            control_plane = self.adopt(cluster, spec.get("controlPlaneRef"))
            infra_ready = bool(((infra or {}).get("status") or {}).get("ready"))
            status["infrastructureReady"] = infra_ready
            endpoint = ((infra or {}).get("spec") or {}).get("controlPlaneEndpoint") or {}
            mine = spec.get("controlPlaneEndpoint") or {}
            if infra_ready and endpoint.get("host") and not mine.get("host"):
                cluster = self.api.patch(self.ref, ns, meta["name"], {"spec": {
                    "controlPlaneEndpoint": {"host": endpoint["host"],
                                             "port": int(endpoint.get("port") or 6443)}}})
                mine = cluster["spec"]["controlPlaneEndpoint"]
            if infra is None:
                conditions = mark(conditions, "InfrastructureReady", False,
                                  "WaitingForInfrastructure",
                                  "spec.infrastructureRef names no object (yet)", "Info")
            elif infra_ready:
                conditions = mark(conditions, "InfrastructureReady", True)
            else:
                why = next((c for c in (infra.get("status") or {}).get("conditions") or []
                            if c.get("status") != "True" and c.get("type") != "Ready"), {})
                conditions = mark(conditions, "InfrastructureReady", False,
                                  why.get("reason") or "WaitingForInfrastructure",
                                  why.get("message") or f"{infra['kind']} is not ready",
                                  why.get("severity") or "Info")
            cp_status = (control_plane or {}).get("status") or {}
            initialized = bool(cp_status.get("initialized"))
            status["controlPlaneReady"] = bool(cp_status.get("ready"))
            conditions = mark(conditions, "ControlPlaneInitialized", initialized or None,
                              "" if initialized else "WaitingForControlPlaneProviderInitialized",
                              "" if initialized else "waiting for the first control-plane "
                              "node to initialise the cluster")
            if control_plane is not None and not status["controlPlaneReady"]:
                why = next((c for c in cp_status.get("conditions") or []
                            if c.get("status") != "True" and c.get("type") != "Ready"), {})
                conditions = mark(conditions, "ControlPlaneReady", False,
                                  why.get("reason") or "WaitingForControlPlane",
                                  why.get("message") or "the control plane is not ready",
                                  why.get("severity") or "Info")
            else:
                conditions = mark(conditions, "ControlPlaneReady", control_plane is not None,
                                  "" if control_plane else "WaitingForControlPlane",
                                  "" if control_plane else "spec.controlPlaneRef names no "
                                                           "object (yet)")
            conditions = summary(conditions, ("InfrastructureReady", "ControlPlaneReady"))
            if infra_ready and mine.get("host"):
                status["phase"] = "Provisioned"
            elif spec.get("infrastructureRef"):
                status["phase"] = "Provisioning"
            else:
                status["phase"] = "Pending"
            status["observedGeneration"] = meta.get("generation")
        finally:
            # Conditions of other controllers (the topology controller's
            # TopologyReconciled) are kept as they are now, not as they were read: a
            # merge patch replaces the whole list.
            fresh = get_or_none(self.api, self.ref, ns, meta["name"]) or cluster
            status["conditions"] = [c for c in conditions if c["type"] in OWN_CONDITIONS] + [
                c for c in (fresh.get("status") or {}).get("conditions") or []
                if c["type"] not in OWN_CONDITIONS]
            old = cluster
            cluster = write_status(self.api, self.ref, fresh, status)
            for t in ("InfrastructureReady", "ControlPlaneInitialized", "ControlPlaneReady"):
                transition(self.api, cluster, old, conditions, t)
            if (old.get("status") or {}).get("phase") != status.get("phase"):
                record(self.api, cluster, "Normal", status.get("phase") or "Pending",
                       f"Cluster {meta['name']} is {status.get('phase')}")
        return None if is_true(cluster, "Ready") else 5.0

    def adopt(self, cluster: Obj, object_ref: Obj | None) -> Obj | None:
        """The referenced object, owned by and labelled with the cluster."""
        if not object_ref:
            return None
        ref = ref_for(object_ref)
        ns = cluster["metadata"]["namespace"]
        obj = get_or_none(self.api, ref, ns, object_ref.get("name", ""))
        if obj is None:
            return None
        meta = obj["metadata"]
        name = cluster["metadata"]["name"]
        labels = meta.get("labels") or {}
        owners = meta.get("ownerReferences") or []
        if labels.get(CLUSTER_NAME) != name or not any(
                o.get("uid") == cluster["metadata"]["uid"] for o in owners):
            kept = [o for o in owners if o.get("kind") != "Cluster"]
            obj = self.api.patch(ref, ns, meta["name"], {"metadata": {
                "labels": {CLUSTER_NAME: name},
                "ownerReferences": [*kept, owner_reference(cluster)],
                "resourceVersion": meta["resourceVersion"]}})
        return obj

    def ensure_ssh_key(self, cluster: Obj) -> None:
        meta = cluster["metadata"]
        name = meta["name"] + SSH_SUFFIX
        if get_or_none(self.api, SECRETS, meta["namespace"], name) is not None:
            return
        private, public = generate_keypair(f"{meta['namespace']}/{meta['name']}")
        create_or_get(self.api, SECRETS, meta["namespace"], {
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/ssh-auth",
            "metadata": {"name": name, "labels": {CLUSTER_NAME: meta["name"]},
                         "ownerReferences": [owner_reference(cluster)]},
            "stringData": {"ssh-privatekey": private, "ssh-publickey": public}})

    # -- deletion ---------------------------------------------------------------------------

    def delete(self, cluster: Obj) -> float | None:
        meta, spec = cluster["metadata"], cluster.get("spec") or {}
        ns, name = meta["namespace"], meta["name"]
        status = dict(cluster.get("status") or {}, phase="Deleting")
        cluster = write_status(self.api, self.ref, cluster, status)
        waiting = 0
        for md in listed(self.api, MACHINEDEPLOYMENTS, ns):
            if belongs(md, name):
                waiting += 1
                if not md["metadata"].get("deletionTimestamp"):
                    delete_quietly(self.api, MACHINEDEPLOYMENTS, ns, md["metadata"]["name"])
        for ms in listed(self.api, MACHINESETS, ns):
            if belongs(ms, name):
                waiting += 1
                if controller_of(ms, "MachineDeployment") is None and \
                        not ms["metadata"].get("deletionTimestamp"):
                    delete_quietly(self.api, MACHINESETS, ns, ms["metadata"]["name"])
        machines = [m for m in listed(self.api, MACHINES, ns) if belongs(m, name)]
        workers = [m for m in machines if controller_of(m, "KubeadmControlPlane") is None]
        for m in workers:
            if controller_of(m, "MachineSet") is None and \
                    not m["metadata"].get("deletionTimestamp"):
                delete_quietly(self.api, MACHINES, ns, m["metadata"]["name"])
        waiting += len(workers)
        cp_ref = spec.get("controlPlaneRef")
        cp = get_or_none(self.api, ref_for(cp_ref), ns, cp_ref.get("name", "")) \
            if cp_ref else None
        if cp is not None:
            waiting += 1
            if not workers and not cp["metadata"].get("deletionTimestamp"):
                delete_quietly(self.api, ref_for(cp_ref), ns, cp["metadata"]["name"])
        infra_ref = spec.get("infrastructureRef")
        infra = get_or_none(self.api, ref_for(infra_ref), ns, infra_ref.get("name", "")) \
            if infra_ref else None
        if infra is not None:
            waiting += 1
            if not machines and cp is None and not infra["metadata"].get("deletionTimestamp"):
                delete_quietly(self.api, ref_for(infra_ref), ns, infra["metadata"]["name"])
        if waiting:
            LOG.info("[%s/%s] cluster deleting: %d objects still going", ns, name, waiting)
            return 2.0
        selector = f"{CLUSTER_NAME}={name}"
        for ref in (HEALTHCHECKS, KUBEADMCONFIGS, RESOURCESET_BINDINGS, SECRETS):
            for obj in listed(self.api, ref, ns, selector):
                delete_quietly(self.api, ref, ns, obj["metadata"]["name"])
        for ref in TEMPLATE_REFS:  # what the topology controller cloned for this cluster
            for obj in listed(self.api, ref, ns, f"{selector},{OWNED}"):
                delete_quietly(self.api, ref, ns, obj["metadata"]["name"])
        drop_finalizer(self.api, self.ref, cluster, FINALIZER)
        LOG.info("[%s/%s] cluster deleted", ns, name)
        return None

