"""CAPI's topology controller through the real object service on a throwaway SQLite store:
a Cluster on CAPI's quick-start ClusterClass (adapted to CAPV's supervisor kinds, with
variables and patches) becomes its objects, follows topology changes, and cleans up."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from appliance.clusters.cluster import ClusterController
from appliance.clusters.objects import (
    CLUSTER_NAME,
    CLUSTERCLASSES,
    CLUSTERS,
    CONTROLPLANES,
    KUBEADMCONFIGTEMPLATES,
    KUBEADMCONTROLPLANETEMPLATES,
    MACHINEDEPLOYMENTS,
    MACHINESETS,
    VSPHERECLUSTERS,
    VSPHERECLUSTERTEMPLATES,
    VSPHEREMACHINETEMPLATES,
)
from appliance.clusters.topology import (
    APPLIED,
    OWNED,
    TOPOLOGY_DEPLOYMENT,
    TopologyController,
    apply_diff,
    render,
)
from appliance.kinds import default_registry
from appliance.kinds.registry import Obj
from appliance.objects import SYSTEM, ObjectService, Target
from appliance.resources import LocalApi, Ref, get_or_none
from appliance.store.db import make_engine, migrate
from appliance.store.repo import Store

NS = "dev"
CP_GROUP = "controlplane.cluster.x-k8s.io/v1beta1"
BOOT_GROUP = "bootstrap.cluster.x-k8s.io/v1beta1"
CAPV_GROUP = "vmware.infrastructure.cluster.x-k8s.io/v1beta1"
EVENTS = Ref("", "v1", "events")


@pytest.fixture
def api(tmp_path: Path) -> LocalApi:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    migrate(engine)
    svc = ObjectService(Store(engine), default_registry())
    kind = svc.registry.by_group_plural("", "namespaces")
    assert kind is not None
    svc.create(SYSTEM, Target(kind, "v1", "", "", ""),
               {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    return LocalApi(svc)


def _ref(api_version: str, kind: str, name: str) -> Obj:
    return {"ref": {"apiVersion": api_version, "kind": kind, "name": name}}


def _machine_patch(name: str, path: str, md_version: bool = False, **how: Any) -> Obj:
    """A patch of both VSphereMachineTemplates (control plane, default-worker)."""
    def definition(match: Obj, builtin: str) -> Obj:
        op: Obj = {"op": "replace", "path": path}
        if "template" in how:
            op["valueFrom"] = {"template": how["template"].replace("VERSION", builtin)}
        else:
            op.update(how)
        return {"selector": {"apiVersion": CAPV_GROUP, "kind": "VSphereMachineTemplate",
                             "matchResources": match}, "jsonPatches": [op]}
    return {"name": name, "definitions": [
        definition({"controlPlane": True}, ".builtin.controlPlane.version"),
        definition({"machineDeploymentClass": {"names": ["default-*"]}},
                   ".builtin.machineDeployment.version")]}


def _setup_class(api: LocalApi) -> None:
    """CAPI's quick-start ClusterClass, with CAPV's supervisor kinds."""
    api.create(VSPHERECLUSTERTEMPLATES, NS, {
        "apiVersion": CAPV_GROUP, "kind": "VSphereClusterTemplate",
        "metadata": {"name": "qs-cluster"}, "spec": {"template": {"spec": {}}}})
    api.create(KUBEADMCONTROLPLANETEMPLATES, NS, {
        "apiVersion": CP_GROUP, "kind": "KubeadmControlPlaneTemplate",
        "metadata": {"name": "qs-control-plane"},
        "spec": {"template": {"spec": {"kubeadmConfigSpec": {
            "clusterConfiguration": {"apiServer": {"extraArgs": {
                "cloud-provider": "external"}}},
            "initConfiguration": {"nodeRegistration": {"kubeletExtraArgs": {
                "cloud-provider": "external"}}},
            "joinConfiguration": {"nodeRegistration": {"kubeletExtraArgs": {
                "cloud-provider": "external"}}}}}}}})
    for name in ("qs-control-plane", "qs-worker"):
        api.create(VSPHEREMACHINETEMPLATES, NS, {
            "apiVersion": CAPV_GROUP, "kind": "VSphereMachineTemplate",
            "metadata": {"name": name},
            "spec": {"template": {"spec": {"className": "best-effort-xsmall",
                                           "imageName": "unset", "storageClass": "unset",
                                           "powerOffMode": "trySoft"}}}})
    api.create(KUBEADMCONFIGTEMPLATES, NS, {
        "apiVersion": BOOT_GROUP, "kind": "KubeadmConfigTemplate",
        "metadata": {"name": "qs-worker-bootstrap"},
        "spec": {"template": {"spec": {"joinConfiguration": {"nodeRegistration": {
            "kubeletExtraArgs": {"cloud-provider": "external"}}}}}}})
    variables = [
        {"name": "vmClass", "required": True,
         "schema": {"openAPIV3Schema": {"type": "string", "default": "best-effort-small"}}},
        {"name": "storageClass", "required": True,
         "schema": {"openAPIV3Schema": {"type": "string", "minLength": 1}}},
        {"name": "image", "required": False, "schema": {"openAPIV3Schema": {
            "type": "object", "default": {},
            "properties": {"name": {"type": "string", "default": "ubuntu-2204-kube"}}}}},
        {"name": "podSecurityStandard", "required": False, "schema": {"openAPIV3Schema": {
            "type": "object", "properties": {
                "enabled": {"type": "boolean", "default": True},
                "enforce": {"type": "string", "default": "baseline"}}}}},
    ]
    kcp_selector = {"apiVersion": CP_GROUP, "kind": "KubeadmControlPlaneTemplate",
                    "matchResources": {"controlPlane": True}}
    patches = [
        _machine_patch("vmClass", "/spec/template/spec/className",
                       valueFrom={"variable": "vmClass"}),
        _machine_patch("storageClass", "/spec/template/spec/storageClass",
                       valueFrom={"variable": "storageClass"}),
        _machine_patch("image", "/spec/template/spec/imageName",
                       template="{{ .image.name }}-{{ VERSION }}"),
        {"name": "clusterName", "definitions": [{"selector": kcp_selector, "jsonPatches": [
            {"op": "add",
             "path": "/spec/template/spec/kubeadmConfigSpec/clusterConfiguration/clusterName",
             "valueFrom": {"variable": "builtin.cluster.name"}}]}]},
        {"name": "podSecurityStandard", "enabledIf": "{{ .podSecurityStandard.enabled }}",
         "definitions": [{"selector": kcp_selector, "jsonPatches": [
             {"op": "add", "path": "/spec/template/spec/kubeadmConfigSpec/clusterConfiguration"
                                   "/apiServer/extraArgs/admission-control-config-file",
              "valueFrom": {"template": "/etc/kubernetes/pss-{{ .podSecurityStandard.enforce "
                                        "}}.yaml"}}]}]},
        {"name": "nodeLabels", "definitions": [{"selector": {
            "apiVersion": BOOT_GROUP, "kind": "KubeadmConfigTemplate",
            "matchResources": {"machineDeploymentClass": {"names": ["default-worker"]}}},
            "jsonPatches": [{"op": "add", "path": "/spec/template/spec/joinConfiguration/"
                                                  "nodeRegistration/kubeletExtraArgs/node-labels",
                             "valueFrom": {"template": "pool={{ .builtin.machineDeployment."
                                                       "topologyName }}"}}]}]},
        {"name": "vpc", "enabledIf": '{{ eq .builtin.cluster.namespace "dev" }}',
         "definitions": [{"selector": {"apiVersion": CAPV_GROUP, "kind": "VSphereClusterTemplate",
                                       "matchResources": {"infrastructureCluster": True}},
                          "jsonPatches": [{"op": "add", "path": "/spec/template/spec/network",
                                           "value": {"nsxVPC": {"createSubnetSet": True}}}]}]},
    ]
    api.create(CLUSTERCLASSES, NS, {
        "apiVersion": "cluster.x-k8s.io/v1beta1", "kind": "ClusterClass",
        "metadata": {"name": "quick-start"},
        "spec": {
            "infrastructure": _ref(CAPV_GROUP, "VSphereClusterTemplate", "qs-cluster"),
            "controlPlane": {**_ref(CP_GROUP, "KubeadmControlPlaneTemplate",
                                    "qs-control-plane"),
                             "machineInfrastructure": _ref(CAPV_GROUP, "VSphereMachineTemplate",
                                                           "qs-control-plane")},
            "workers": {"machineDeployments": [{
                "class": "default-worker",
                "template": {"metadata": {"labels": {"tier": "worker"}},
                             "bootstrap": _ref(BOOT_GROUP, "KubeadmConfigTemplate",
                                               "qs-worker-bootstrap"),
                             "infrastructure": _ref(CAPV_GROUP, "VSphereMachineTemplate",
                                                    "qs-worker")}}]},
            "variables": variables, "patches": patches}})


def _cluster(api: LocalApi, **topology: Any) -> Obj:
    body: Obj = {
        "class": "quick-start", "version": "v1.30.2",
        "controlPlane": {"replicas": 1, "metadata": {"labels": {"role": "cp"}}},
        "variables": [{"name": "storageClass", "value": "lab-storage"}],
        "workers": {"machineDeployments": [
            {"class": "default-worker", "name": "md-0", "replicas": 2},
            {"class": "default-worker", "name": "md-1", "replicas": 1,
             "variables": {"overrides": [{"name": "vmClass",
                                          "value": "best-effort-large"}]}}]}}
    body.update(topology)
    return api.create(CLUSTERS, NS, {
        "apiVersion": "cluster.x-k8s.io/v1beta1", "kind": "Cluster",
        "metadata": {"name": "demo"},
        "spec": {"clusterNetwork": {"pods": {"cidrBlocks": ["192.168.0.0/16"]}},
                 "topology": body}})


def _get(api: LocalApi, ref: Ref, name: str) -> Obj:
    return api.get(ref, NS, name)


def _reconcile(api: LocalApi, ctl: TopologyController) -> tuple[float | None, Obj]:
    again = ctl.reconcile(_get(api, CLUSTERS, "demo"))
    return again, _get(api, CLUSTERS, "demo")


def _condition(cluster: Obj) -> Obj:
    return next(c for c in cluster["status"]["conditions"] if c["type"] == "TopologyReconciled")


def _mds(api: LocalApi) -> dict[str, Obj]:
    items, _ = api.list(MACHINEDEPLOYMENTS, NS)
    return {md["metadata"]["labels"][TOPOLOGY_DEPLOYMENT]: md for md in items}


def _md_templates(api: LocalApi, md: Obj) -> tuple[Obj, Obj]:
    spec = md["spec"]["template"]["spec"]
    return (_get(api, KUBEADMCONFIGTEMPLATES, spec["bootstrap"]["configRef"]["name"]),
            _get(api, VSPHEREMACHINETEMPLATES, spec["infrastructureRef"]["name"]))


def _kcp(api: LocalApi) -> Obj:
    cluster = _get(api, CLUSTERS, "demo")
    return _get(api, CONTROLPLANES, cluster["spec"]["controlPlaneRef"]["name"])


def _cp_machine(api: LocalApi) -> Obj:
    ref = _kcp(api)["spec"]["machineTemplate"]["infrastructureRef"]
    return _get(api, VSPHEREMACHINETEMPLATES, ref["name"])


def _owned(api: LocalApi, ref: Ref) -> list[str]:
    items, _ = api.list(ref, NS, f"{CLUSTER_NAME}=demo,{OWNED}")
    return sorted(i["metadata"]["name"] for i in items)


def _versions(api: LocalApi) -> dict[str, str]:
    out = {}
    for ref in (CLUSTERS, VSPHERECLUSTERS, CONTROLPLANES, MACHINEDEPLOYMENTS,
                VSPHEREMACHINETEMPLATES, KUBEADMCONFIGTEMPLATES):
        items, _ = api.list(ref, NS)
        out.update({f"{i['kind']}/{i['metadata']['name']}": i["metadata"]["resourceVersion"]
                    for i in items})
    return out


def _stable_control_plane(api: LocalApi, version: str) -> None:
    """What the KCP controller reports once every machine runs ``version``."""
    kcp = _kcp(api)
    n = kcp["spec"]["replicas"]
    api.patch(CONTROLPLANES, NS, kcp["metadata"]["name"], {"status": {
        "version": version, "replicas": n, "updatedReplicas": n, "readyReplicas": n,
        "unavailableReplicas": 0}}, subresource="status")


def _topology(api: LocalApi, **change: Any) -> None:
    cluster = _get(api, CLUSTERS, "demo")
    topology = copy.deepcopy(cluster["spec"]["topology"])
    topology.update(change)
    api.patch(CLUSTERS, NS, "demo", {"spec": {"topology": topology}})


@pytest.fixture
def ready(api: LocalApi) -> TopologyController:
    _setup_class(api)
    _cluster(api)
    ctl = TopologyController(api)
    again, cluster = _reconcile(api, ctl)
    assert again is None, _condition(cluster)
    return ctl


# -- generation ----------------------------------------------------------------------------


def test_generates_the_objects_of_the_class(api: LocalApi, ready: TopologyController) -> None:
    cluster = _get(api, CLUSTERS, "demo")
    cond = _condition(cluster)
    assert cond["status"] == "True", cond
    assert cluster["status"]["observedGeneration"] == cluster["metadata"]["generation"]
    uid = cluster["metadata"]["uid"]

    def owned_by_cluster(obj: Obj) -> None:
        labels = obj["metadata"]["labels"]
        assert labels[CLUSTER_NAME] == "demo" and labels[OWNED] == ""
        owner = obj["metadata"]["ownerReferences"]
        assert [(o["kind"], o["uid"], o.get("controller")) for o in owner] == [
            ("Cluster", uid, True)]

    infra_ref, cp_ref = cluster["spec"]["infrastructureRef"], cluster["spec"]["controlPlaneRef"]
    assert infra_ref["kind"] == "VSphereCluster" and infra_ref["namespace"] == NS
    infra = _get(api, VSPHERECLUSTERS, infra_ref["name"])
    assert infra["metadata"]["name"].startswith("demo-") and len(infra["metadata"]["name"]) == 10
    owned_by_cluster(infra)
    assert infra["metadata"]["annotations"]["cluster.x-k8s.io/cloned-from-name"] == "qs-cluster"
    assert infra["spec"]["network"] == {"nsxVPC": {"createSubnetSet": True}}  # enabledIf eq

    kcp = _get(api, CONTROLPLANES, cp_ref["name"])
    assert cp_ref["kind"] == "KubeadmControlPlane" and kcp["metadata"]["name"].startswith("demo-")
    owned_by_cluster(kcp)
    assert kcp["metadata"]["labels"]["role"] == "cp"
    assert kcp["spec"]["replicas"] == 1 and kcp["spec"]["version"] == "v1.30.2"
    assert kcp["spec"]["machineTemplate"]["metadata"] == {"labels": {"role": "cp"}}
    config = kcp["spec"]["kubeadmConfigSpec"]["clusterConfiguration"]
    assert config["clusterName"] == "demo"  # a builtin
    # podSecurityStandard is not set: its enabledIf renders "<no value>", so no patch.
    assert config["apiServer"]["extraArgs"] == {"cloud-provider": "external"}

    cp_machine = _cp_machine(api)
    assert cp_machine["metadata"]["name"].startswith("demo-")
    owned_by_cluster(cp_machine)
    assert cp_machine["spec"]["template"]["spec"] == {
        "className": "best-effort-small",  # the variable's default
        "imageName": "ubuntu-2204-kube-v1.30.2",  # an object variable's nested default
        "storageClass": "lab-storage", "powerOffMode": "trySoft"}

    mds = _mds(api)
    assert sorted(mds) == ["md-0", "md-1"]
    for topology_name, md in mds.items():
        owned_by_cluster(md)
        assert md["metadata"]["name"].startswith(f"demo-{topology_name}-")
        selector = {CLUSTER_NAME: "demo", OWNED: "", TOPOLOGY_DEPLOYMENT: topology_name}
        assert md["spec"]["selector"]["matchLabels"] == selector
        assert md["spec"]["template"]["metadata"]["labels"] == {**selector, "tier": "worker"}
        assert md["spec"]["clusterName"] == "demo"
        assert md["spec"]["template"]["spec"]["version"] == "v1.30.2"
        assert APPLIED in md["metadata"]["annotations"]
        bootstrap, machine = _md_templates(api, md)
        for template in (bootstrap, machine):
            owned_by_cluster(template)
            assert template["metadata"]["labels"][TOPOLOGY_DEPLOYMENT] == topology_name
            assert template["metadata"]["name"].startswith(f"demo-{topology_name}-")
        assert bootstrap["spec"]["template"]["spec"]["joinConfiguration"]["nodeRegistration"][
            "kubeletExtraArgs"] == {"cloud-provider": "external",
                                    "node-labels": f"pool={topology_name}"}
        assert machine["spec"]["template"]["spec"]["imageName"] == "ubuntu-2204-kube-v1.30.2"
    assert mds["md-0"]["spec"]["replicas"] == 2 and mds["md-1"]["spec"]["replicas"] == 1
    assert _md_templates(api, mds["md-0"])[1]["spec"]["template"]["spec"]["className"] == \
        "best-effort-small"
    # A per-MachineDeployment override.
    assert _md_templates(api, mds["md-1"])[1]["spec"]["template"]["spec"]["className"] == \
        "best-effort-large"
    events, _ = api.list(EVENTS, NS)
    created = [e["message"] for e in events if e["reason"] == "TopologyCreate"]
    assert len(created) == 1 + 1 + 1 + 2 * 3  # infra, CP machine template, KCP, MDs + templates
    assert any(m == f'Created "VSphereCluster {NS}/{infra["metadata"]["name"]}"'
               for m in created)


def test_a_second_pass_changes_nothing(api: LocalApi, ready: TopologyController) -> None:
    before = _versions(api)
    again, _ = _reconcile(api, ready)
    assert again is None
    assert _versions(api) == before


def test_fields_written_by_others_are_kept(api: LocalApi, ready: TopologyController) -> None:
    infra = _get(api, VSPHERECLUSTERS, _get(api, CLUSTERS, "demo")["spec"][
        "infrastructureRef"]["name"])
    api.patch(VSPHERECLUSTERS, NS, infra["metadata"]["name"], {
        "spec": {"controlPlaneEndpoint": {"host": "10.0.0.5", "port": 6443}},
        "metadata": {"labels": {"extra": "x"}}})
    _reconcile(api, ready)
    infra = _get(api, VSPHERECLUSTERS, infra["metadata"]["name"])
    assert infra["spec"]["controlPlaneEndpoint"] == {"host": "10.0.0.5", "port": 6443}
    assert infra["metadata"]["labels"]["extra"] == "x"


def test_three_way_diff_removes_only_what_it_set() -> None:
    last = {"spec": {"a": 1, "b": {"c": 2}}}
    desired = {"spec": {"b": {}}}
    current = {"spec": {"a": 1, "b": {"c": 2, "d": 3}, "theirs": 4}}
    assert apply_diff(last, desired, current) == {"spec": {"a": None, "b": {"c": None}}}
    # Server defaults inside lists do not count as a difference.
    assert apply_diff({}, {"l": [{"x": 1}]}, {"l": [{"x": 1, "y": 2}]}) == {}


def test_text_templates_subset() -> None:
    data = {"a": "", "o": {"on": True, "l": [{"k": "v"}]}}
    assert render('{{ ne .a "" }}', data) == "false"
    assert render("x-{{ .o.l[0].k }}-{{ not .o.on }}", data) == "x-v-false"
    with pytest.raises(ValueError, match="not supported"):
        render('{{ .a | replace "+" "_" }}', data)


# -- failures -------------------------------------------------------------------------------


def test_a_missing_cluster_class(api: LocalApi) -> None:
    _cluster(api)
    ctl = TopologyController(api)
    again, cluster = _reconcile(api, ctl)
    assert again == 10.0
    cond = _condition(cluster)
    assert (cond["status"], cond["reason"], cond["severity"]) == (
        "False", "ClusterClassNotFound", "Error")
    assert "quick-start" in cond["message"]
    events, _ = api.list(EVENTS, NS)
    assert [e["type"] for e in events if e["reason"] == "ClusterClassNotFound"] == ["Warning"]
    # The class appears: the next pass builds everything.
    _setup_class(api)
    again, cluster = _reconcile(api, ctl)
    assert again is None and _condition(cluster)["status"] == "True"


def test_a_missing_required_variable(api: LocalApi) -> None:
    _setup_class(api)
    _cluster(api, variables=[])
    ctl = TopologyController(api)
    _, cluster = _reconcile(api, ctl)
    cond = _condition(cluster)
    assert (cond["status"], cond["reason"]) == ("False", "VariablesReconcileFailed")
    assert "storageClass" in cond["message"] and "Required value" in cond["message"]
    assert "infrastructureRef" not in cluster["spec"]
    assert _mds(api) == {}
    # A value its schema refuses.
    _topology(api, variables=[{"name": "storageClass", "value": ""}])
    _, cluster = _reconcile(api, ctl)
    assert "storageClass" in _condition(cluster)["message"]
    assert _condition(cluster)["reason"] == "VariablesReconcileFailed"


def test_deleting_cluster_is_left_alone(api: LocalApi, ready: TopologyController) -> None:
    cluster = _get(api, CLUSTERS, "demo")
    api.patch(CLUSTERS, NS, "demo", {"metadata": {"finalizers": ["test"]}})
    api.delete(CLUSTERS, NS, "demo")
    before = _versions(api)
    assert ready.reconcile(_get(api, CLUSTERS, "demo")) is None
    assert _versions(api) == before
    assert cluster["metadata"]["uid"] == _get(api, CLUSTERS, "demo")["metadata"]["uid"]


# -- updates ---------------------------------------------------------------------------------


def test_scaling_the_control_plane_and_a_deployment(api: LocalApi,
                                                    ready: TopologyController) -> None:
    templates = _owned(api, VSPHEREMACHINETEMPLATES)
    topology = _get(api, CLUSTERS, "demo")["spec"]["topology"]
    workers = copy.deepcopy(topology["workers"])
    workers["machineDeployments"][0]["replicas"] = 5
    _topology(api, controlPlane={"replicas": 3, "metadata": {"labels": {"role": "cp"}}},
              workers=workers)
    again, cluster = _reconcile(api, ready)
    assert again is None and _condition(cluster)["status"] == "True"
    assert _kcp(api)["spec"]["replicas"] == 3
    mds = _mds(api)
    assert mds["md-0"]["spec"]["replicas"] == 5 and mds["md-1"]["spec"]["replicas"] == 1
    assert _owned(api, VSPHEREMACHINETEMPLATES) == templates  # nothing rotated
    events, _ = api.list(EVENTS, NS)
    assert sum(e["reason"] == "TopologyUpdate" for e in events) == 2


def test_a_version_upgrade_goes_control_plane_first(api: LocalApi,
                                                   ready: TopologyController) -> None:
    _stable_control_plane(api, "v1.30.2")
    old_cp_machine = _cp_machine(api)["metadata"]["name"]
    old_md_machine = _md_templates(api, _mds(api)["md-0"])[1]["metadata"]["name"]
    _topology(api, version="v1.31.0")
    again, cluster = _reconcile(api, ready)
    kcp = _kcp(api)
    assert kcp["spec"]["version"] == "v1.31.0"
    # The control plane's machine template has the new image: a new clone, the old one gone.
    cp_machine = _cp_machine(api)
    assert cp_machine["metadata"]["name"] != old_cp_machine
    assert cp_machine["spec"]["template"]["spec"]["imageName"] == "ubuntu-2204-kube-v1.31.0"
    assert get_or_none(api, VSPHEREMACHINETEMPLATES, NS, old_cp_machine) is None
    # Workers wait for the control plane.
    assert again == 10.0
    cond = _condition(cluster)
    assert (cond["status"], cond["reason"], cond["severity"]) == (
        "False", "MachineDeploymentsUpgradePending", "Info")
    assert {md["spec"]["template"]["spec"]["version"] for md in _mds(api).values()} == {
        "v1.30.2"}
    _reconcile(api, ready)  # the control plane is upgrading: still on hold
    assert _mds(api)["md-0"]["spec"]["template"]["spec"]["version"] == "v1.30.2"
    _stable_control_plane(api, "v1.31.0")
    again, cluster = _reconcile(api, ready)
    assert again is None and _condition(cluster)["status"] == "True"
    mds = _mds(api)
    assert {md["spec"]["template"]["spec"]["version"] for md in mds.values()} == {"v1.31.0"}
    machine = _md_templates(api, mds["md-0"])[1]
    assert machine["metadata"]["name"] != old_md_machine
    assert machine["spec"]["template"]["spec"]["imageName"] == "ubuntu-2204-kube-v1.31.0"
    assert get_or_none(api, VSPHEREMACHINETEMPLATES, NS, old_md_machine) is None
    assert len(_owned(api, VSPHEREMACHINETEMPLATES)) == 3


def test_a_variable_change_rotates_templates(api: LocalApi, ready: TopologyController) -> None:
    mds = _mds(api)
    old_md0 = mds["md-0"]["spec"]["template"]["spec"]["infrastructureRef"]["name"]
    old_md1 = mds["md-1"]["spec"]["template"]["spec"]["infrastructureRef"]["name"]
    old_boot0 = mds["md-0"]["spec"]["template"]["spec"]["bootstrap"]["configRef"]["name"]
    old_cp = _cp_machine(api)["metadata"]["name"]
    # An old MachineSet still names the old template: it must stay until that set is gone.
    ms = api.create(MACHINESETS, NS, {
        "apiVersion": "cluster.x-k8s.io/v1beta1", "kind": "MachineSet",
        "metadata": {"name": "old-set", "labels": {CLUSTER_NAME: "demo"}},
        "spec": {"clusterName": "demo", "replicas": 0,
                 "selector": {"matchLabels": {TOPOLOGY_DEPLOYMENT: "md-0"}},
                 "template": copy.deepcopy(mds["md-0"]["spec"]["template"])}})
    _topology(api, variables=[{"name": "storageClass", "value": "lab-storage"},
                              {"name": "vmClass", "value": "guaranteed-medium"}])
    again, cluster = _reconcile(api, ready)
    assert again is None and _condition(cluster)["status"] == "True"
    mds = _mds(api)
    new_md0 = mds["md-0"]["spec"]["template"]["spec"]["infrastructureRef"]["name"]
    assert new_md0 != old_md0 and new_md0.startswith("demo-md-0-")
    assert _get(api, VSPHEREMACHINETEMPLATES, new_md0)["spec"]["template"]["spec"][
        "className"] == "guaranteed-medium"
    # md-1 overrides vmClass: its template is the same; so is md-0's bootstrap template.
    assert mds["md-1"]["spec"]["template"]["spec"]["infrastructureRef"]["name"] == old_md1
    assert mds["md-0"]["spec"]["template"]["spec"]["bootstrap"]["configRef"]["name"] == \
        old_boot0
    cp_machine = _cp_machine(api)
    assert cp_machine["metadata"]["name"] != old_cp
    assert cp_machine["spec"]["template"]["spec"]["className"] == "guaranteed-medium"
    assert get_or_none(api, VSPHEREMACHINETEMPLATES, NS, old_cp) is None
    assert get_or_none(api, VSPHEREMACHINETEMPLATES, NS, old_md0) is not None  # in use
    api.delete(MACHINESETS, NS, ms["metadata"]["name"])
    _reconcile(api, ready)
    assert get_or_none(api, VSPHEREMACHINETEMPLATES, NS, old_md0) is None
    before = _versions(api)
    _reconcile(api, ready)
    assert _versions(api) == before


def test_a_removed_deployment_is_deleted(api: LocalApi, ready: TopologyController) -> None:
    md1 = _mds(api)["md-1"]
    boot, machine = _md_templates(api, md1)
    workers = copy.deepcopy(_get(api, CLUSTERS, "demo")["spec"]["topology"]["workers"])
    workers["machineDeployments"] = workers["machineDeployments"][:1]
    _topology(api, workers=workers)
    again, cluster = _reconcile(api, ready)
    assert again is None and _condition(cluster)["status"] == "True"
    assert sorted(_mds(api)) == ["md-0"]
    assert get_or_none(api, KUBEADMCONFIGTEMPLATES, NS, boot["metadata"]["name"]) is None
    assert get_or_none(api, VSPHEREMACHINETEMPLATES, NS, machine["metadata"]["name"]) is None
    events, _ = api.list(EVENTS, NS)
    assert f'Deleted "MachineDeployment {NS}/{md1["metadata"]["name"]}"' in [
        e["message"] for e in events if e["reason"] == "TopologyDelete"]


def test_a_new_deployment_waits_for_a_stable_control_plane(
        api: LocalApi, ready: TopologyController) -> None:
    workers = copy.deepcopy(_get(api, CLUSTERS, "demo")["spec"]["topology"]["workers"])
    workers["machineDeployments"].append({"class": "default-worker", "name": "md-2"})
    _topology(api, workers=workers)
    again, cluster = _reconcile(api, ready)  # the control plane has no status yet
    cond = _condition(cluster)
    assert (again, cond["reason"]) == (10.0, "MachineDeploymentsCreatePending")
    assert "md-2" in cond["message"] and "md-2" not in _mds(api)
    _stable_control_plane(api, "v1.30.2")
    again, cluster = _reconcile(api, ready)
    assert again is None and _condition(cluster)["status"] == "True"
    md2 = _mds(api)["md-2"]
    assert md2["spec"]["replicas"] == 1  # the kind's default: the topology sets none


def test_cluster_deletion_removes_generated_templates(api: LocalApi,
                                                      ready: TopologyController) -> None:
    clusters = ClusterController(api)
    clusters.reconcile(_get(api, CLUSTERS, "demo"))  # adopts, adds its finalizer
    assert _owned(api, VSPHEREMACHINETEMPLATES) and _owned(api, KUBEADMCONFIGTEMPLATES)
    api.delete(CLUSTERS, NS, "demo")
    for _ in range(10):
        cluster = get_or_none(api, CLUSTERS, NS, "demo")
        if cluster is None:
            break
        assert ready.reconcile(cluster) is None  # the topology controller stays out
        clusters.reconcile(cluster)
    assert get_or_none(api, CLUSTERS, NS, "demo") is None
    assert _owned(api, VSPHEREMACHINETEMPLATES) == [] == _owned(api, KUBEADMCONFIGTEMPLATES)
    assert _mds(api) == {}
    # The class's own templates are not the cluster's.
    assert get_or_none(api, VSPHEREMACHINETEMPLATES, NS, "qs-worker") is not None


def test_a_patch_that_cannot_apply(api: LocalApi, ready: TopologyController) -> None:
    cc = _get(api, CLUSTERCLASSES, "quick-start")
    patches = [*cc["spec"]["patches"], {"name": "broken", "definitions": [{
        "selector": {"apiVersion": CAPV_GROUP, "kind": "VSphereClusterTemplate",
                     "matchResources": {"infrastructureCluster": True}},
        "jsonPatches": [{"op": "add", "path": "/spec/template/spec/network/nsxVPC/x",
                         "valueFrom": {"variable": "image.missing"}}]}]}]
    api.patch(CLUSTERCLASSES, NS, "quick-start", {"spec": {"patches": patches}})
    before = _versions(api)
    again, cluster = _reconcile(api, ready)
    cond = _condition(cluster)
    assert (again, cond["status"], cond["reason"]) == (30.0, "False", "PatchesApplyFailed")
    assert "broken" in cond["message"] and "image.missing" in cond["message"]
    before.pop("Cluster/demo")
    after = _versions(api)
    after.pop("Cluster/demo")
    assert after == before  # nothing half-applied


def test_a_provisioning_control_plane_holds_an_upgrade(api: LocalApi,
                                                       ready: TopologyController) -> None:
    _topology(api, version="v1.31.0")
    again, cluster = _reconcile(api, ready)  # the KCP reports no version yet
    cond = _condition(cluster)
    assert (again, cond["reason"]) == (10.0, "ControlPlaneUpgradePending")
    assert "v1.31.0" in cond["message"]
    assert _kcp(api)["spec"]["version"] == "v1.30.2"
