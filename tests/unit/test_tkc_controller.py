"""TanzuKubernetesCluster → Cluster on the shipped ``tanzukubernetescluster`` ClusterClass
→ KubeadmControlPlane and a MachineDeployment per node pool, through the real object
service on a throwaway SQLite store (the controllers' passes called directly)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from appliance.clusters.objects import (
    CLUSTERCLASSES,
    CLUSTERS,
    CONTROLPLANES,
    MACHINEDEPLOYMENTS,
    VSPHEREMACHINETEMPLATES,
    ref_for,
)
from appliance.clusters.tkc import TkcController
from appliance.clusters.tkgclass import CLASS_NAME, ShippedClassController, shipped_objects
from appliance.clusters.topology import TopologyController
from appliance.kinds import default_registry
from appliance.kinds.registry import Obj
from appliance.objects import ObjectService
from appliance.resources import LocalApi, Ref, get_or_none
from appliance.store.db import make_engine, migrate
from appliance.store.repo import Store

NS = "dev"
VMOP = "vmoperator.vmware.com"
TKCS = Ref("run.tanzu.vmware.com", "v1alpha3", "tanzukubernetesclusters")
RELEASE = "v1.31.4---pacific.1"


@pytest.fixture
def api(tmp_path: Path) -> LocalApi:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    migrate(engine)
    svc = ObjectService(Store(engine), default_registry())
    api = LocalApi(svc)
    api.create(Ref("", "v1", "namespaces"), "", {"apiVersion": "v1", "kind": "Namespace",
                                                 "metadata": {"name": NS}})
    for ns in (NS, "vmware-system-vmop"):
        if ns != NS:
            api.create(Ref("", "v1", "namespaces"), "", {
                "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        for cls in ("best-effort-xsmall", "best-effort-small"):
            api.create(Ref(VMOP, "v1alpha5", "virtualmachineclasses"), ns, {
                "apiVersion": f"{VMOP}/v1alpha5", "kind": "VirtualMachineClass",
                "metadata": {"name": cls}, "spec": {"hardware": {"cpus": 2, "memory": "2Gi"}}})
    api.create(Ref(VMOP, "v1alpha5", "clustervirtualmachineimages"), "", {
        "apiVersion": f"{VMOP}/v1alpha5", "kind": "ClusterVirtualMachineImage",
        "metadata": {"name": "ob-node"}, "spec": {}})
    from appliance.kinds.tanzu import release_names
    from appliance.vmservice.tkr import publish

    publish(svc, release_names("v1.31.4"), ready=True, reason="", message="",
            node_image="ob-node")
    return api


def tkc(pools: list[Obj] | None = None, cp_replicas: int = 1) -> Obj:
    return {"apiVersion": "run.tanzu.vmware.com/v1alpha3", "kind": "TanzuKubernetesCluster",
            "metadata": {"name": "tkc-1"},
            "spec": {"topology": {
                "controlPlane": {"replicas": cp_replicas, "vmClass": "best-effort-xsmall",
                                 "storageClass": "gold", "tkr": {"reference": {
                                     "name": RELEASE}}},
                "nodePools": pools if pools is not None else [
                    {"name": "workers", "replicas": 2, "vmClass": "best-effort-small",
                     "storageClass": "gold"}]}}}


def converge(api: LocalApi) -> None:
    """A few passes of the shipping, TKC and topology controllers."""
    shipped = ShippedClassController(api)
    for cls in api.list(Ref(VMOP, "v1alpha5", "virtualmachineclasses"), NS)[0]:
        shipped.reconcile(cls)
    tkcs, topology = TkcController(api), TopologyController(api)
    for _ in range(3):
        for obj in api.list(TKCS, NS)[0]:
            tkcs.reconcile(obj)
        for cluster in api.list(CLUSTERS, NS)[0]:
            topology.reconcile(cluster)


def test_the_shipped_class_is_valid_and_shipped_once(api: LocalApi) -> None:
    converge(api)
    cc = api.get(CLUSTERCLASSES, NS, CLASS_NAME)
    assert [v["name"] for v in cc["spec"]["variables"]] == [
        "vmClass", "storageClass", "imageName", "nodeLabels", "nodeTaints"]
    def versions() -> dict[str, str]:
        return {o["kind"]: api.get(ref_for(o), NS, o["metadata"]["name"])["metadata"][
            "resourceVersion"] for o in shipped_objects()}
    before = versions()
    converge(api)  # nothing is made twice or changed
    after = versions()
    assert before == after


def test_a_tkc_becomes_a_cluster_on_the_class_and_its_topology(api: LocalApi) -> None:
    api.create(TKCS, NS, tkc())
    converge(api)
    cluster = api.get(CLUSTERS, NS, "tkc-1")
    topo = cluster["spec"]["topology"]
    assert topo["class"] == CLASS_NAME and topo["version"] == "v1.31.4"
    assert topo["controlPlane"]["replicas"] == 1
    assert {v["name"]: v["value"] for v in topo["variables"]} == {
        "vmClass": "best-effort-xsmall", "storageClass": "gold", "imageName": "ob-node"}
    assert cluster["metadata"]["ownerReferences"][0]["kind"] == "TanzuKubernetesCluster"
    kcp = api.list(CONTROLPLANES, NS)[0][0]
    assert kcp["spec"]["version"] == "v1.31.4" and kcp["spec"]["replicas"] == 1
    mds = api.list(MACHINEDEPLOYMENTS, NS)[0]
    assert [md["spec"]["replicas"] for md in mds] == [2]
    templates = {t["metadata"]["name"]: t["spec"]["template"]["spec"]
                 for t in api.list(VSPHEREMACHINETEMPLATES, NS)[0]}
    cp_template = templates[kcp["spec"]["machineTemplate"]["infrastructureRef"]["name"]]
    md_template = templates[mds[0]["spec"]["template"]["spec"]["infrastructureRef"]["name"]]
    assert cp_template["className"] == "best-effort-xsmall"
    assert md_template["className"] == "best-effort-small"  # the pool's own class
    assert cp_template["imageName"] == md_template["imageName"] == "ob-node"
    assert md_template["storageClass"] == "gold"
    status = api.get(TKCS, NS, "tkc-1")["status"]
    assert status["phase"] == "creating" and status["totalWorkerReplicas"] == 2
    conds = {c["type"]: c for c in status["conditions"]}
    assert conds["TanzuKubernetesReleaseCompatible"]["status"] == "True"
    assert conds["Ready"]["status"] == "False"


def test_scaling_a_pool_and_the_control_plane(api: LocalApi) -> None:
    api.create(TKCS, NS, tkc())
    converge(api)
    current = api.get(TKCS, NS, "tkc-1")
    spec = copy.deepcopy(current["spec"])
    spec["topology"]["nodePools"][0]["replicas"] = 3
    spec["topology"]["controlPlane"]["replicas"] = 3
    api.patch(TKCS, NS, "tkc-1", {"spec": spec})
    converge(api)
    assert api.list(MACHINEDEPLOYMENTS, NS)[0][0]["spec"]["replicas"] == 3
    assert api.list(CONTROLPLANES, NS)[0][0]["spec"]["replicas"] == 3


def test_a_release_that_is_missing_or_not_ready_is_said_on_the_tkc(api: LocalApi) -> None:
    from appliance.kinds.tanzu import release_names
    from appliance.vmservice.tkr import publish

    publish(api.service, release_names("v1.31.4"), ready=False, reason="BinariesMissing",
            message="no Kubernetes v1.31.4 binaries")
    api.create(TKCS, NS, tkc())
    converge(api)
    assert get_or_none(api, CLUSTERS, NS, "tkc-1") is None  # nothing half-made
    status = api.get(TKCS, NS, "tkc-1")["status"]
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "TKRNotReady" and "no Kubernetes v1.31.4 binaries" in \
        ready["message"]
    assert status["phase"] == "failed"


def test_deleting_the_tkc_deletes_its_cluster(api: LocalApi) -> None:
    api.create(TKCS, NS, tkc())
    converge(api)
    api.delete(TKCS, NS, "tkc-1")
    controller = TkcController(api)
    controller.reconcile(api.get(TKCS, NS, "tkc-1"))
    cluster: Any = get_or_none(api, CLUSTERS, NS, "tkc-1")
    assert cluster is None or cluster["metadata"].get("deletionTimestamp")


def test_pool_labels_and_taints_reach_the_kubelet_registration(api: LocalApi) -> None:
    from appliance.clusters.objects import KUBEADMCONFIGTEMPLATES

    api.create(TKCS, NS, tkc([{"name": "gpu", "replicas": 1, "vmClass": "best-effort-small",
                               "storageClass": "gold", "labels": {"tier": "gpu", "a": "b"},
                               "taints": [{"key": "gpu", "value": "yes",
                                           "effect": "NoSchedule"}]}]))
    converge(api)
    md = api.list(MACHINEDEPLOYMENTS, NS)[0][0]
    ref = md["spec"]["template"]["spec"]["bootstrap"]["configRef"]["name"]
    join = api.get(KUBEADMCONFIGTEMPLATES, NS, ref)["spec"]["template"]["spec"][
        "joinConfiguration"]["nodeRegistration"]
    assert join["kubeletExtraArgs"]["node-labels"] == "a=b,tier=gpu"
    assert join["taints"] == [{"key": "gpu", "value": "yes", "effect": "NoSchedule"}]
    assert join["kubeletExtraArgs"]["cloud-provider"] == "external"  # the class's own
