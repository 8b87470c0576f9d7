"""TanzuKubernetesCluster: what a vSphere developer writes, as vSphere 8 builds it.

A TKC becomes a Cluster of the same name with ``spec.topology`` on the
``tanzukubernetescluster`` ClusterClass (shipped in every namespace by
:mod:`appliance.clusters.tkgclass`): the control plane's replicas, one
MachineDeployment per node pool, and the variables that carry each pool's VM
class, storage class and node image. The topology controller and the Cluster
API controllers do the rest; this controller reflects their state back:
phase, the Ready / ControlPlaneReady / NodePoolsReady /
TanzuKubernetesReleaseCompatible / UpdatesAvailable conditions, the endpoint,
the version, and an Event for each phase change, so ``kubectl describe tkc``
tells the story. Deleting a TKC deletes its Cluster, and so everything below.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable

from appliance import errors
from appliance.clusters.objects import (
    CAPI,
    CLUSTER_NAME,
    CLUSTERS,
    MACHINEDEPLOYMENTS,
    MACHINES,
    V1B1,
    condition,
    listed,
    mark,
    owner_reference,
    record,
    write_status,
)
from appliance.clusters.tkgclass import CLASS_NAME, POOL_CLASS
from appliance.controllers.base import Controller, add_finalizer, drop_finalizer, owners
from appliance.kinds.registry import Obj
from appliance.kinds.tanzu import GROUP, TKC_FINALIZER, TKC_STORAGE, tkr_name
from appliance.resources import Ref, ResourceApi, get_or_none

LOG = logging.getLogger(__name__)

RELEASES = Ref(GROUP, "v1alpha3", "tanzukubernetesreleases")
OSIMAGES = Ref(GROUP, "v1alpha3", "osimages")
#: The label vSphere puts on a TKC's Cluster.
TKC_LABEL = "run.tanzu.vmware.com/tkc"


class ReleaseProblem(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class TkcController(Controller):
    group, version, plural, name = GROUP, TKC_STORAGE, "tanzukubernetesclusters", "tkc"
    resync = 10.0

    def __init__(self, api: ResourceApi) -> None:
        super().__init__(api)

    def related(self) -> list[tuple[Ref, Callable[[Obj], list[tuple[str, str]]]]]:
        def by_cluster_label(obj: Obj) -> list[tuple[str, str]]:
            name = (obj["metadata"].get("labels") or {}).get(CLUSTER_NAME)
            return [(obj["metadata"]["namespace"], name)] if name else []
        return [(CLUSTERS, owners("TanzuKubernetesCluster")), (MACHINES, by_cluster_label),
                (MACHINEDEPLOYMENTS, by_cluster_label)]

    def reconcile(self, tkc: Obj) -> float | None:
        meta = tkc["metadata"]
        ns, name = meta["namespace"], meta["name"]
        if meta.get("deletionTimestamp"):
            return self.delete(tkc)
        tkc = add_finalizer(self.api, self.ref, tkc, TKC_FINALIZER)
        status = copy.deepcopy(tkc.get("status") or {})
        conditions = list(status.get("conditions") or [])
        old_phase = status.get("phase")
        try:
            try:
                release, image = self.release(tkc)
            except ReleaseProblem as exc:
                conditions = mark(conditions, "TanzuKubernetesReleaseCompatible", False,
                                  exc.reason, str(exc), "Error")
                conditions = mark(conditions, "Ready", False, exc.reason, str(exc), "Error")
                status["phase"] = "failed" if get_or_none(self.api, CLUSTERS, ns, name) \
                    is None else status.get("phase") or "creating"
                return 15.0
            conditions = mark(conditions, "TanzuKubernetesReleaseCompatible", True, "", "")
            conditions = mark(conditions, "UpdatesAvailable", False, "AlreadyUpToDate",
                              "no newer TanzuKubernetesRelease is available")
            cluster = self.ensure_cluster(tkc, release, image)
            again, conditions = self.observe(tkc, cluster, status, conditions)
            return again
        finally:
            status["conditions"] = conditions
            status["totalWorkerReplicas"] = sum(int(p.get("replicas") or 0) for p in
                                                ((tkc.get("spec") or {}).get("topology") or {})
                                                .get("nodePools") or [])
            tkc = write_status(self.api, self.ref, tkc, status)
            if status.get("phase") != old_phase:
                record(self.api, tkc, "Warning" if status.get("phase") == "failed" else "Normal",
                       f"Phase{str(status.get('phase') or '').capitalize()}",
                       f"TanzuKubernetesCluster {name} is {status.get('phase')}")

    # -- the release -----------------------------------------------------------------------

    def release(self, tkc: Obj) -> tuple[Obj, str]:
        """The control plane's TanzuKubernetesRelease and its node image, or why not."""
        topology = (tkc.get("spec") or {}).get("topology") or {}
        wanted = tkr_name(topology.get("controlPlane"))
        release = get_or_none(self.api, RELEASES, "", wanted) if wanted else None
        if release is None:
            raise ReleaseProblem("TKRNotFound", f"TanzuKubernetesRelease {wanted!r} does not "
                                                "exist (lab tkr build VERSION makes one)")
        ready = condition(release, "Ready") or {}
        if ready.get("status") != "True":
            raise ReleaseProblem("TKRNotReady", f"TanzuKubernetesRelease {wanted} is not Ready, "
                                                "so no node can bootstrap: "
                                                f"{ready.get('message') or 'no Ready condition'}")
        images = [get_or_none(self.api, OSIMAGES, "", o.get("name", ""))
                  for o in (release.get("spec") or {}).get("osImages") or []]
        image = next(((((i.get("spec") or {}).get("image") or {}).get("ref") or {}).get("name")
                      for i in images if i is not None), None)
        if not image:
            raise ReleaseProblem("TKRHasNoImage", f"TanzuKubernetesRelease {wanted} names no "
                                                  "node image")
        return release, str(image)

    # -- the Cluster -----------------------------------------------------------------------

    def desired(self, tkc: Obj, release: Obj, image: str) -> Obj:
        spec = tkc.get("spec") or {}
        topology = spec.get("topology") or {}
        cp = topology.get("controlPlane") or {}
        network = (spec.get("settings") or {}).get("network") or {}
        version = str(((release.get("spec") or {}).get("kubernetes") or {}).get("version") or "")
        variables = [{"name": "vmClass", "value": cp.get("vmClass") or ""},
                     {"name": "storageClass", "value": cp.get("storageClass") or ""},
                     {"name": "imageName", "value": image}]
        pools = []
        for pool in topology.get("nodePools") or []:
            pools.append({
                "class": POOL_CLASS, "name": pool["name"],
                "replicas": int(pool.get("replicas") if pool.get("replicas") is not None else 1),
                "metadata": {"labels": dict(pool.get("labels") or {})},
                "variables": {"overrides": [
                    {"name": "vmClass", "value": pool.get("vmClass") or cp.get("vmClass") or ""},
                    {"name": "storageClass",
                     "value": pool.get("storageClass") or cp.get("storageClass") or ""},
                    {"name": "nodeLabels", "value": ",".join(
                        f"{k}={v}" for k, v in sorted((pool.get("labels") or {}).items()))},
                    {"name": "nodeTaints", "value": [
                        {k: t[k] for k in ("key", "value", "effect") if t.get(k) is not None}
                        for t in pool.get("taints") or []]}]}})
        cluster_network: Obj = {"serviceDomain": network.get("serviceDomain") or "cluster.local"}
        for key in ("pods", "services"):
            blocks = (network.get(key) or {}).get("cidrBlocks")
            if blocks:
                cluster_network[key] = {"cidrBlocks": list(blocks)}
        meta = tkc["metadata"]
        return {"apiVersion": f"{CAPI}/{V1B1}", "kind": "Cluster",
                "metadata": {"name": meta["name"],
                             "labels": {TKC_LABEL: meta["name"], CLUSTER_NAME: meta["name"]},
                             "ownerReferences": [owner_reference(tkc)]},
                "spec": {"clusterNetwork": cluster_network,
                         "topology": {"class": CLASS_NAME, "version": version,
                                      "controlPlane": {"replicas": int(cp.get("replicas") or 1)},
                                      "workers": {"machineDeployments": pools},
                                      "variables": variables}}}

    def ensure_cluster(self, tkc: Obj, release: Obj, image: str) -> Obj:
        meta = tkc["metadata"]
        ns = meta["namespace"]
        want = self.desired(tkc, release, image)
        current = get_or_none(self.api, CLUSTERS, ns, meta["name"])
        if current is None:
            created = self.api.create(CLUSTERS, ns, want)
            record(self.api, tkc, "Normal", "ClusterCreated",
                   f"Cluster {meta['name']} on ClusterClass {CLASS_NAME}")
            return created
        if (current.get("spec") or {}).get("topology") != want["spec"]["topology"]:
            try:
                current = self.api.patch(CLUSTERS, ns, meta["name"], {"spec": {
                    "topology": want["spec"]["topology"]}})
                record(self.api, tkc, "Normal", "TopologyUpdated",
                       "control plane, node pools or release changed")
            except errors.ApiError as err:
                if err.code not in (400, 422):
                    raise
                record(self.api, tkc, "Warning", "TopologyRefused", err.message)
        return current

    def observe(self, tkc: Obj, cluster: Obj, status: Obj, conditions: list[Obj]
                ) -> tuple[float, list[Obj]]:
        """Status from the Cluster and its node pools: (next look, conditions)."""
        ns = tkc["metadata"]["namespace"]
        cstatus = cluster.get("status") or {}
        endpoint = (cluster.get("spec") or {}).get("controlPlaneEndpoint") or {}
        if endpoint.get("host"):
            status["apiEndpoints"] = [{"host": endpoint["host"],
                                       "port": int(endpoint.get("port") or 6443)}]
        cp_ready = condition(cluster, "ControlPlaneReady") or {}
        conditions = mark(conditions, "ControlPlaneReady", cp_ready.get("status") == "True",
                          cp_ready.get("reason") or "WaitingForControlPlane",
                          cp_ready.get("message") or "", cp_ready.get("severity") or "Info")
        pools = [md for md in listed(self.api, MACHINEDEPLOYMENTS, ns,
                                     f"{CLUSTER_NAME}={tkc['metadata']['name']}")]
        unready = [md["metadata"]["name"] for md in pools
                   if (condition(md, "Ready") or {}).get("status") != "True"]
        wanted_pools = len(((tkc.get("spec") or {}).get("topology") or {}).get("nodePools")
                           or [])
        if len(pools) < wanted_pools:
            conditions = mark(conditions, "NodePoolsReady", False, "WaitingForNodePools",
                              f"{len(pools)} of {wanted_pools} node pools exist")
        elif unready:
            conditions = mark(conditions, "NodePoolsReady", False, "NodePoolsNotReady",
                              f"node pools not ready: {', '.join(sorted(unready))}")
        else:
            conditions = mark(conditions, "NodePoolsReady", True)
        topo = condition(cluster, "TopologyReconciled") or {}
        bootstrap = self.bootstrap_failure(ns, tkc["metadata"]["name"])
        ready = cp_ready.get("status") == "True" and not unready and \
            len(pools) >= wanted_pools
        if ready:
            conditions = mark(conditions, "Ready", True)
        elif bootstrap:
            conditions = mark(conditions, "Ready", False, bootstrap["reason"],
                              bootstrap["message"], "Error")
        elif topo.get("status") == "False":
            conditions = mark(conditions, "Ready", False, topo.get("reason") or "", topo.get(
                "message") or "", topo.get("severity") or "Warning")
        else:
            conditions = mark(conditions, "Ready", False, cp_ready.get("reason") or
                              "WaitingForControlPlane", cp_ready.get("message") or "")
        status["version"] = str(((cluster.get("spec") or {}).get("topology") or {}).get(
            "version") or "")
        if bootstrap:
            status["phase"] = "failed"
        elif ready:
            status["phase"] = "running"
        elif cstatus.get("phase") == "Provisioned" and (status.get("phase") in
                                                        ("running", "updating")):
            status["phase"] = "updating"
        else:
            status["phase"] = "creating"
        return (5.0 if not ready else 30.0), conditions

    def bootstrap_failure(self, ns: str, cluster: str) -> dict[str, str] | None:
        """The first machine whose node reported a failed bootstrap, if any."""
        for m in listed(self.api, MACHINES, ns, f"{CLUSTER_NAME}={cluster}"):
            c = condition(m, "BootstrapExecSucceeded") or {}
            if c.get("status") == "False":
                return {"reason": c.get("reason") or "BootstrapFailed",
                        "message": f"machine {m['metadata']['name']}: {c.get('message') or ''}"}
        return None

    def delete(self, tkc: Obj) -> float | None:
        meta = tkc["metadata"]
        cluster = get_or_none(self.api, CLUSTERS, meta["namespace"], meta["name"])
        status = dict(tkc.get("status") or {}, phase="deleting")
        tkc = write_status(self.api, self.ref, tkc, status)
        if cluster is not None:
            if not cluster["metadata"].get("deletionTimestamp"):
                self.api.delete(CLUSTERS, meta["namespace"], meta["name"])
                record(self.api, tkc, "Normal", "ClusterDeleting",
                       f"Cluster {meta['name']} and everything below it are being deleted")
            return 2.0
        drop_finalizer(self.api, self.ref, tkc, TKC_FINALIZER)
        return None
