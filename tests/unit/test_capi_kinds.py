"""Cluster API v1beta1 and CAPV supervisor-mode kinds through the real object service on a
throwaway SQLite store: upstream manifests apply unchanged, unknown fields, upstream's
webhook defaults, validation with upstream's messages, and printer columns."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from appliance.api.table import to_table
from appliance.errors import ApiError
from appliance.kinds import default_registry
from appliance.kinds.capi import (ADDONS_GROUP, BOOTSTRAP_GROUP, CLUSTER_NAME_LABEL,
                                  CONTROLPLANE_GROUP, DEPLOYMENT_NAME_LABEL, GROUP, VERSION)
from appliance.kinds.capv import GROUP as CAPV_GROUP
from appliance.kinds.registry import Obj
from appliance.objects import MERGE_PATCH, SYSTEM, ObjectService, Target, WriteOptions
from appliance.store.db import make_engine, migrate
from appliance.store.repo import Store

DATA = Path(__file__).parent / "data" / "capi"
LAB = ("198.18.0.0/24=appliance network", "10.20.0.0/16")
STRICT = WriteOptions(field_validation="Strict")


@pytest.fixture
def service(tmp_path: Path) -> ObjectService:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    migrate(engine)
    svc = ObjectService(Store(engine), default_registry(LAB))
    ns_kind = svc.registry.by_group_plural("", "namespaces")
    assert ns_kind is not None
    svc.create(SYSTEM, Target(ns_kind, "v1"), {"apiVersion": "v1", "kind": "Namespace",
                                               "metadata": {"name": "dev"}})
    return svc


def _target(svc: ObjectService, body: Obj, name: str = "") -> Target:
    group = body["apiVersion"].rpartition("/")[0]
    kind = svc.registry.by_kind(group, body["kind"])
    assert kind is not None, body["kind"]
    return Target(kind, VERSION, "dev", name)


def _create(svc: ObjectService, body: Obj, opts: WriteOptions = STRICT) -> Obj:
    result = svc.create(SYSTEM, _target(svc, body), copy.deepcopy(body), opts)
    assert result.warnings == [], result.warnings
    return result.obj


def _patch(svc: ObjectService, body: Obj, patch: Obj) -> Obj:
    t = _target(svc, body, body["metadata"]["name"])
    return svc.patch(SYSTEM, t, MERGE_PATCH, patch, STRICT).obj


def _refused(svc: ObjectService, body: Obj, patch: Obj | None = None) -> str:
    with pytest.raises(ApiError) as info:
        if patch is None:
            _create(svc, body)
        else:
            _patch(svc, body, patch)
    assert info.value.code == 422, info.value.message
    return info.value.message


def _docs(name: str) -> list[Obj]:
    return [d for d in yaml.safe_load_all((DATA / name).read_text()) if d]


def _doc(name: str, kind: str) -> Obj:
    return next(d for d in _docs(name) if d["kind"] == kind)


TEMPLATE = "cluster-template-supervisor.yaml"
QUICK_START = "clusterclass-quick-start.yaml"


def _machine(**spec: Any) -> Obj:
    body: Obj = {
        "clusterName": "demo",
        "bootstrap": {"configRef": {"apiVersion": f"{BOOTSTRAP_GROUP}/v1beta1",
                                    "kind": "KubeadmConfig", "name": "m0"}},
        "infrastructureRef": {"apiVersion": f"{CAPV_GROUP}/v1beta1", "kind": "VSphereMachine",
                              "name": "m0"},
        "version": "v1.30.2",
    }
    body.update(spec)
    return {"apiVersion": f"{GROUP}/v1beta1", "kind": "Machine", "metadata": {"name": "m0"},
            "spec": body}


def _machine_set(**spec: Any) -> Obj:
    body: Obj = {"clusterName": "demo", "selector": {"matchLabels": {"pool": "a"}},
                 "template": {"metadata": {"labels": {"pool": "a"}},
                              "spec": copy.deepcopy(_machine()["spec"])}}
    body.update(spec)
    return {"apiVersion": f"{GROUP}/v1beta1", "kind": "MachineSet", "metadata": {"name": "ms"},
            "spec": body}


def _mhc(**spec: Any) -> Obj:
    body: Obj = {"clusterName": "demo", "selector": {"matchLabels": {"pool": "a"}},
                 "unhealthyConditions": [{"type": "Ready", "status": "Unknown",
                                          "timeout": "300s"}]}
    body.update(spec)
    return {"apiVersion": f"{GROUP}/v1beta1", "kind": "MachineHealthCheck",
            "metadata": {"name": "mhc"}, "spec": body}


def _kcp(**spec: Any) -> Obj:
    kcp = copy.deepcopy(_doc(TEMPLATE, "KubeadmControlPlane"))
    kcp["spec"].update(spec)
    return kcp


def _cluster(**spec: Any) -> Obj:
    cluster = copy.deepcopy(_doc(TEMPLATE, "Cluster"))
    cluster["spec"].update(spec)
    return cluster


# -- (a) upstream manifests apply unchanged ---------------------------------------------------


def test_capv_supervisor_cluster_template_applies_unchanged(service: ObjectService) -> None:
    created = {d["kind"] + "/" + d["metadata"]["name"]: _create(service, d)
               for d in _docs(TEMPLATE)}
    assert len(created) == 8
    kcp = created["KubeadmControlPlane/demo"]["spec"]
    config = kcp["kubeadmConfigSpec"]
    assert config["users"][0]["sshAuthorizedKeys"][0].startswith("ssh-ed25519 ")
    assert config["clusterConfiguration"]["apiServer"]["extraArgs"] == {
        "cloud-provider": "external"}
    assert config["initConfiguration"]["nodeRegistration"]["kubeletExtraArgs"] == {
        "cloud-provider": "external"}
    assert config["files"][1]["path"] == "/etc/kube-vip.hosts"
    assert created["VSphereMachineTemplate/demo"]["spec"]["template"]["spec"] == {
        "className": "best-effort-small", "imageName": "ubuntu-2204-kube-v1.30.2",
        "powerOffMode": "trySoft", "storageClass": "lab-storage"}
    assert created["Cluster/demo"]["spec"]["clusterNetwork"] == {
        "pods": {"cidrBlocks": ["192.168.0.0/16"]}}


def test_quick_start_clusterclass_and_a_topology_cluster_apply(service: ObjectService) -> None:
    cc, cluster = _docs(QUICK_START)
    stored = _create(service, cc)
    assert stored["spec"]["patches"][0]["definitions"][0]["jsonPatches"][0]["valueFrom"] == {
        "variable": "imageRepository"}
    variables = stored["spec"]["variables"]
    assert variables[3]["schema"]["openAPIV3Schema"]["properties"]["enforce"]["default"] == \
        "baseline"
    made = _create(service, cluster)
    assert made["spec"]["topology"]["variables"][3]["value"] == {"enabled": True,
                                                                 "enforce": "baseline"}


# -- (b) unknown fields -----------------------------------------------------------------------


def test_unknown_fields_are_refused_when_strict_and_pruned_otherwise(
        service: ObjectService) -> None:
    kcp = _kcp()
    kcp["spec"]["kubeadmConfigSpec"]["users"][0]["sshKeys"] = ["x"]
    kcp["spec"]["bogus"] = 1
    with pytest.raises(ApiError) as info:
        _create(service, kcp)
    assert info.value.code == 400
    assert 'unknown field "spec.bogus"' in info.value.message
    assert 'unknown field "spec.kubeadmConfigSpec.users[0].sshKeys"' in info.value.message
    result = service.create(SYSTEM, _target(service, kcp), copy.deepcopy(kcp),
                            WriteOptions(field_validation="Warn"))
    assert 'unknown field "spec.bogus"' in result.warnings
    assert "bogus" not in result.obj["spec"]
    assert "sshKeys" not in result.obj["spec"]["kubeadmConfigSpec"]["users"][0]
    # Free-form corners keep what they are given.
    cc = _doc(QUICK_START, "ClusterClass")
    cc["spec"]["variables"][0]["schema"]["openAPIV3Schema"]["x-kubernetes-validations"] = [
        {"rule": "self != 'x'"}]
    assert "x-kubernetes-validations" in _create(service, cc)["spec"]["variables"][0][
        "schema"]["openAPIV3Schema"]


# -- (c) defaults ----------------------------------------------------------------------------


def test_machine_deployment_defaults_like_upstreams_webhook(service: ObjectService) -> None:
    md = _doc(TEMPLATE, "MachineDeployment")
    del md["spec"]["replicas"]
    spec = _create(service, md)["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "RollingUpdate",
                                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    assert spec["minReadySeconds"] == 0 and spec["revisionHistoryLimit"] == 1
    assert spec["progressDeadlineSeconds"] == 600
    # An empty selector gets the deployment's name; both get the cluster's.
    want = {CLUSTER_NAME_LABEL: "demo", DEPLOYMENT_NAME_LABEL: "demo-md-0"}
    assert spec["selector"]["matchLabels"] == want
    assert spec["template"]["metadata"]["labels"] == want


def test_on_delete_strategy_gets_no_rolling_update(service: ObjectService) -> None:
    md = _doc(TEMPLATE, "MachineDeployment")
    md["spec"]["strategy"] = {"type": "OnDelete"}
    assert _create(service, md)["spec"]["strategy"] == {"type": "OnDelete"}


def test_machine_set_machine_and_mhc_defaults(service: ObjectService) -> None:
    ms = _create(service, _machine_set(template={
        "metadata": {"labels": {"pool": "a"}},
        "spec": {**_machine()["spec"], "version": "1.30.2"}}))
    assert ms["spec"]["deletePolicy"] == "Random" and ms["spec"]["replicas"] == 1
    assert ms["spec"]["selector"]["matchLabels"] == {"pool": "a", CLUSTER_NAME_LABEL: "demo"}
    assert ms["spec"]["template"]["metadata"]["labels"][CLUSTER_NAME_LABEL] == "demo"
    assert ms["spec"]["template"]["spec"]["version"] == "v1.30.2"
    assert ms["metadata"]["labels"][CLUSTER_NAME_LABEL] == "demo"
    machine = _create(service, _machine(version="1.30.2"))
    assert machine["spec"]["version"] == "v1.30.2"
    assert machine["spec"]["nodeDeletionTimeout"] == "10s"
    assert machine["metadata"]["labels"] == {CLUSTER_NAME_LABEL: "demo"}
    mhc = _create(service, _mhc())
    assert mhc["spec"]["maxUnhealthy"] == "100%"
    assert mhc["spec"]["nodeStartupTimeout"] == "10m0s"
    assert mhc["metadata"]["labels"] == {CLUSTER_NAME_LABEL: "demo"}


def test_kubeadm_defaults(service: ObjectService) -> None:
    kcp = _kcp(version="1.30.2")
    del kcp["spec"]["replicas"]
    spec = _create(service, kcp)["spec"]
    assert spec["replicas"] == 1 and spec["version"] == "v1.30.2"
    assert spec["rolloutStrategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}
    config = spec["kubeadmConfigSpec"]
    assert config["format"] == "cloud-config"
    assert config["initConfiguration"]["nodeRegistration"]["imagePullPolicy"] == "IfNotPresent"
    kct = _create(service, _doc(TEMPLATE, "KubeadmConfigTemplate"))
    assert kct["spec"]["template"]["spec"]["format"] == "cloud-config"
    kc = _create(service, {"apiVersion": f"{BOOTSTRAP_GROUP}/v1beta1", "kind": "KubeadmConfig",
                           "metadata": {"name": "kc"}, "spec": {}})
    assert kc["spec"] == {"format": "cloud-config"}


def test_capv_and_addons_defaults(service: ObjectService) -> None:
    vm = _create(service, {"apiVersion": f"{CAPV_GROUP}/v1beta1", "kind": "VSphereMachine",
                           "metadata": {"name": "vm"},
                           "spec": {"className": "small", "imageName": "ubuntu"}})
    assert vm["spec"]["powerOffMode"] == "hard"
    crs = _create(service, _doc(TEMPLATE, "ClusterResourceSet"))
    assert crs["spec"]["strategy"] == "ApplyOnce"


# -- (d) validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(("change", "message"), [
    ({"clusterName": None}, "spec.clusterName: Required value"),
    ({"bootstrap": None}, "spec.bootstrap: Required value"),
    ({"infrastructureRef": None}, "spec.infrastructureRef: Required value"),
    ({"bootstrap": {}}, "spec.bootstrap.data: Required value: expected either "
                        "spec.bootstrap.dataSecretName or spec.bootstrap.configRef to be "
                        "populated"),
    ({"version": "1.30"}, 'spec.version: Invalid value: "v1.30": must be a valid semantic '
                          'version'),
    ({"infrastructureRef": {"kind": "VSphereMachine", "name": "m0", "namespace": "other"}},
     'spec.infrastructureRef.namespace: Invalid value: "other": must match '
     'metadata.namespace'),
])
def test_machine_validation(service: ObjectService, change: Obj, message: str) -> None:
    machine = _machine()
    for key, value in change.items():
        if value is None:
            del machine["spec"][key]
        else:
            machine["spec"][key] = value
    assert message in _refused(service, machine)


def test_machine_without_spec_names_each_required_field(service: ObjectService) -> None:
    message = _refused(service, {"apiVersion": f"{GROUP}/v1beta1", "kind": "Machine",
                                 "metadata": {"name": "bare"}})
    for field_name in ("clusterName", "bootstrap", "infrastructureRef"):
        assert f"spec.{field_name}: Required value" in message


def test_cluster_names_are_immutable(service: ObjectService) -> None:
    machine = _create(service, _machine())
    msg = _refused(service, machine, {"spec": {"clusterName": "other"}})
    assert "spec.clusterName: Forbidden: field is immutable" in msg
    md = _create(service, _doc(TEMPLATE, "MachineDeployment"))
    assert "spec.clusterName: Forbidden: field is immutable" in _refused(
        service, md, {"spec": {"clusterName": "other"}})
    mhc = _create(service, _mhc())
    assert "spec.selector: Forbidden: field is immutable" in _refused(
        service, mhc, {"spec": {"selector": {"matchLabels": {"pool": "b"}}}})


def test_selector_must_match_template_labels(service: ObjectService) -> None:
    ms = _machine_set(template={"metadata": {"labels": {"pool": "b"}},
                                "spec": _machine()["spec"]})
    msg = _refused(service, ms)
    assert "spec.template.metadata.labels: Invalid value: " in msg
    assert f'must match spec.selector "{CLUSTER_NAME_LABEL}=demo,pool=a"' in msg
    md = _doc(TEMPLATE, "MachineDeployment")
    md["spec"]["selector"] = {"matchExpressions": [{"key": "tier", "operator": "In",
                                                    "values": ["web"]}]}
    assert "must match spec.selector" in _refused(service, md)
    md["spec"]["strategy"] = {"rollingUpdate": {"maxSurge": "lots"}}
    md["spec"]["selector"] = {"matchLabels": {}}
    assert ('spec.strategy.rollingUpdate.maxSurge: Invalid value: "lots": must be either an '
            'int or a percentage') in _refused(service, md)


@pytest.mark.parametrize(("change", "message"), [
    ({"replicas": 2}, "spec.replicas: Forbidden: cannot be an even number when etcd is "
                      "stacked"),
    ({"replicas": 0}, "spec.replicas: Forbidden: cannot be less than or equal to 0"),
    ({"version": "latest"}, 'spec.version: Invalid value: "vlatest": must be a valid semantic '
                            'version'),
    ({"rolloutStrategy": {"rollingUpdate": {"maxSurge": 2}}},
     "spec.rolloutStrategy.rollingUpdate.maxSurge: Required value: value must be 1 or 0"),
    ({"rolloutStrategy": {"rollingUpdate": {"maxSurge": 0}}, "replicas": 1},
     "spec.rolloutStrategy.rollingUpdate: Required value: when KubeadmControlPlane is "
     "configured to scale-in, replica count needs to be at least 3"),
])
def test_kcp_validation(service: ObjectService, change: Obj, message: str) -> None:
    assert message in _refused(service, _kcp(**change))


def test_kcp_even_replicas_are_fine_with_external_etcd(service: ObjectService) -> None:
    kcp = _kcp(replicas=2)
    kcp["spec"]["kubeadmConfigSpec"]["clusterConfiguration"]["etcd"] = {"external": {
        "endpoints": ["https://10.0.0.5:2379"], "caFile": "/ca", "certFile": "/c",
        "keyFile": "/k"}}
    assert _create(service, kcp)["spec"]["replicas"] == 2


def test_kcp_updates(service: ObjectService) -> None:
    kcp = _create(service, _kcp())
    assert _patch(service, kcp, {"spec": {"version": "v1.31.1", "replicas": 5}})["spec"][
        "version"] == "v1.31.1"
    msg = _refused(service, kcp, {"spec": {"version": "v1.33.0"}})
    assert "spec.version: Forbidden: cannot update Kubernetes version from v1.31.1 to " \
           "v1.33.0" in msg
    msg = _refused(service, kcp, {"spec": {"kubeadmConfigSpec": {"clusterConfiguration": {
        "clusterName": "renamed"}}}})
    assert "spec.kubeadmConfigSpec.clusterConfiguration.clusterName: Forbidden: cannot be " \
           "modified" in msg
    msg = _refused(service, kcp, {"spec": {"machineTemplate": {"infrastructureRef": {
        "namespace": "other"}}}})
    assert "spec.machineTemplate.infrastructureRef.namespace: Forbidden: cannot be modified" \
        in msg
    # What upstream allows to change does change.
    changed = _patch(service, kcp, {"spec": {"kubeadmConfigSpec": {
        "preKubeadmCommands": ["true"], "ntp": {"servers": ["pool.ntp.org"]},
        "clusterConfiguration": {"apiServer": {"certSANs": ["api.lab"]}}}}})
    assert changed["spec"]["kubeadmConfigSpec"]["ntp"] == {"servers": ["pool.ntp.org"]}


@pytest.mark.parametrize(("config", "message"), [
    ({"files": [{"path": "/a", "content": "x", "contentFrom": {"secret": {"name": "s",
                                                                         "key": "k"}}}]},
     "spec.files[0]: Invalid value: "),
    ({"files": [{"path": "/a", "content": "x"}, {"path": "/a", "content": "y"}]},
     "path property must be unique among all files"),
    ({"users": [{"name": "u", "passwd": "x", "passwdFrom": {"secret": {"name": "s",
                                                                      "key": "k"}}}]},
     "only one of passwd or passwdFrom may be specified for a single user"),
    ({"format": "ignition"}, "spec.format: Forbidden: can be set only if the "
                             "KubeadmBootstrapFormatIgnition feature gate is enabled"),
    ({"format": "yaml"}, "spec.format: Unsupported value"),
])
def test_kubeadm_config_validation(service: ObjectService, config: Obj, message: str) -> None:
    body = {"apiVersion": f"{BOOTSTRAP_GROUP}/v1beta1", "kind": "KubeadmConfig",
            "metadata": {"name": "kc"}, "spec": config}
    assert message in _refused(service, body)


@pytest.mark.parametrize(("network", "message"), [
    ({"pods": {"cidrBlocks": ["10.0.0.0/33"]}},
     'spec.clusterNetwork.pods.cidrBlocks[0]: Invalid value: "10.0.0.0/33": invalid CIDR '
     'address: 10.0.0.0/33'),
    ({"services": {"cidrBlocks": ["10.96.0.1"]}},
     'spec.clusterNetwork.services.cidrBlocks[0]: Invalid value: "10.96.0.1": invalid CIDR '
     'address: 10.96.0.1'),
    ({"pods": {"cidrBlocks": ["10.0.0.0/8"]}, "services": {"cidrBlocks": ["10.96.0.0/12"]}},
     'spec.clusterNetwork.services.cidrBlocks[0]: Invalid value: "10.96.0.0/12": overlaps '
     'spec.clusterNetwork.pods.cidrBlocks[0] (10.0.0.0/8)'),
    ({"pods": {"cidrBlocks": ["198.18.0.0/16"]}},
     'spec.clusterNetwork.pods.cidrBlocks[0]: Invalid value: "198.18.0.0/16": overlaps the '
     "lab's network 198.18.0.0/24 (appliance network)"),
    ({"services": {"cidrBlocks": ["10.20.4.0/24"]}},
     'spec.clusterNetwork.services.cidrBlocks[0]: Invalid value: "10.20.4.0/24": overlaps the '
     "lab's network 10.20.0.0/16"),
])
def test_cluster_network_validation(service: ObjectService, network: Obj, message: str) -> None:
    assert message in _refused(service, _cluster(clusterNetwork=network))


def test_cluster_refs_and_name(service: ObjectService) -> None:
    cluster = _create(service, _cluster())
    assert "spec.infrastructureRef: Forbidden: cannot be removed" in _refused(
        service, cluster, {"spec": {"infrastructureRef": None}})
    bad = _cluster()
    bad["metadata"]["name"] = "x" * 64
    assert "must be a valid label value must be no more than 63 characters" in _refused(
        service, bad)


def test_cluster_topology_rules(service: ObjectService) -> None:
    cc, cluster = _docs(QUICK_START)
    _create(service, cc)
    bad = copy.deepcopy(cluster)
    bad["spec"]["topology"]["class"] = ""
    assert "spec.topology.class: Required value: class cannot be empty" in _refused(
        service, bad)
    bad = copy.deepcopy(cluster)
    bad["spec"]["topology"]["version"] = "one"
    assert 'spec.topology.version: Invalid value: "vone": version must be a valid semantic ' \
           'version' in _refused(service, bad)
    made = _create(service, cluster)
    assert 'version cannot be increased from "1.30.0" to "1.32.0"' in _refused(
        service, made, {"spec": {"topology": {"version": "v1.32.0"}}})
    assert 'version cannot be decreased from "1.30.0" to "1.29.9"' in _refused(
        service, made, {"spec": {"topology": {"version": "v1.29.9"}}})
    assert _patch(service, made, {"spec": {"topology": {"version": "v1.31.0"}}})["spec"][
        "topology"]["version"] == "v1.31.0"
    assert "spec.topology: Forbidden: cannot be removed from an existing Cluster" in _refused(
        service, made, {"spec": {"topology": None}})
    plain = _create(service, _cluster())
    assert "spec.topology.class: Forbidden: class cannot be set on an existing Cluster" in \
        _refused(service, plain, {"spec": {"topology": {"class": "quick-start",
                                                        "version": "v1.30.0"}}})


def test_mhc_validation(service: ObjectService) -> None:
    assert "spec.selector: Required value: selector must not be empty" in _refused(
        service, _mhc(selector={}))
    assert 'spec.nodeStartupTimeout: Invalid value: "10s": must be at least 30s' in _refused(
        service, _mhc(nodeStartupTimeout="10s"))
    assert "cannot specify a cluster selector other than the one specified by ClusterName" in \
        _refused(service, _mhc(selector={"matchLabels": {CLUSTER_NAME_LABEL: "other"}}))
    assert _create(service, _mhc(nodeStartupTimeout="0"))["spec"]["nodeStartupTimeout"] == "0"


def test_capv_machine_and_template_are_immutable(service: ObjectService) -> None:
    vm = _create(service, {"apiVersion": f"{CAPV_GROUP}/v1beta1", "kind": "VSphereMachine",
                           "metadata": {"name": "vm"},
                           "spec": {"className": "small", "imageName": "ubuntu"}})
    assert _patch(service, vm, {"spec": {"providerID": "vsphere://1234"}})["spec"][
        "providerID"] == "vsphere://1234"
    assert "spec: Forbidden: cannot be modified" in _refused(
        service, vm, {"spec": {"className": "large"}})
    vmt = _create(service, _doc(TEMPLATE, "VSphereMachineTemplate"))
    assert "spec.template.spec: Forbidden: VSphereMachineTemplate spec.template.spec field is " \
           "immutable" in _refused(service, vmt, {"spec": {"template": {"spec": {
               "className": "large"}}}})
    assert "spec.imageName: Required value" in _refused(
        service, {"apiVersion": f"{CAPV_GROUP}/v1beta1", "kind": "VSphereMachine",
                  "metadata": {"name": "x"}, "spec": {"className": "small"}})
    assert "spec.powerOffMode: Unsupported value" in _refused(
        service, {"apiVersion": f"{CAPV_GROUP}/v1beta1", "kind": "VSphereMachine",
                  "metadata": {"name": "x"},
                  "spec": {"className": "small", "imageName": "u", "powerOffMode": "Hard"}})


# -- (e) printer columns ----------------------------------------------------------------------


def _table(service: ObjectService, group: str, kind_name: str, obj: Obj,
           status: Obj | None = None) -> dict[str, Any]:
    kind = service.registry.by_kind(group, kind_name)
    assert kind is not None
    if status is not None:
        obj = {**obj, "status": status}
    table = to_table(kind, VERSION, [obj])
    names = [c["name"] for c in table["columnDefinitions"]]
    return dict(zip(names, table["rows"][0]["cells"], strict=True))


def test_printer_columns(service: ObjectService) -> None:
    cluster = _create(service, _cluster())
    row = _table(service, GROUP, "Cluster", cluster, {"phase": "Provisioned"})
    assert list(row) == ["Name", "ClusterClass", "Phase", "Age", "Version"]
    assert row["Phase"] == "Provisioned" and row["Name"] == "demo"
    machine = _create(service, _machine(providerID="vsphere://42"))
    row = _table(service, GROUP, "Machine", machine,
                 {"nodeRef": {"kind": "Node", "name": "demo-node"}, "phase": "Running"})
    assert list(row) == ["Name", "Cluster", "NodeName", "ProviderID", "Phase", "Age", "Version"]
    assert (row["Cluster"], row["NodeName"], row["ProviderID"], row["Phase"], row["Version"]) \
        == ("demo", "demo-node", "vsphere://42", "Running", "v1.30.2")
    md = _create(service, _doc(TEMPLATE, "MachineDeployment"))
    row = _table(service, GROUP, "MachineDeployment", md, {
        "replicas": 2, "readyReplicas": 1, "updatedReplicas": 2, "unavailableReplicas": 1,
        "phase": "ScalingUp"})
    assert list(row) == ["Name", "Cluster", "Desired", "Replicas", "Ready", "Updated",
                         "Unavailable", "Phase", "Age", "Version"]
    assert (row["Desired"], row["Replicas"], row["Ready"], row["Unavailable"]) == (2, 2, 1, 1)
    kcp_body = _kcp()
    kcp_body["metadata"]["labels"] = {CLUSTER_NAME_LABEL: "demo"}
    kcp = _create(service, kcp_body)
    row = _table(service, CONTROLPLANE_GROUP, "KubeadmControlPlane", kcp, {
        "initialized": True, "ready": True, "replicas": 3, "readyReplicas": 3,
        "updatedReplicas": 3, "unavailableReplicas": 0})
    assert list(row) == ["Name", "Cluster", "Initialized", "API Server Available", "Desired",
                         "Replicas", "Ready", "Updated", "Unavailable", "Age", "Version"]
    assert (row["Cluster"], row["Initialized"], row["API Server Available"], row["Version"]) \
        == ("demo", True, True, "v1.30.2")
    mhc = _create(service, _mhc())
    row = _table(service, GROUP, "MachineHealthCheck", mhc,
                 {"expectedMachines": 3, "currentHealthy": 2})
    assert list(row) == ["Name", "Cluster", "ExpectedMachines", "MaxUnhealthy",
                         "CurrentHealthy", "Age"]
    assert row["MaxUnhealthy"] == "100%"
    vm = _create(service, {"apiVersion": f"{CAPV_GROUP}/v1beta1", "kind": "VSphereMachine",
                           "metadata": {"name": "vm"},
                           "spec": {"className": "small", "imageName": "ubuntu"}})
    row = _table(service, CAPV_GROUP, "VSphereMachine", vm, {"vmIp": "10.20.0.5"})
    assert list(row) == ["Name", "Zone", "ProviderID", "IPAddr"]


def test_registry_shape() -> None:
    reg = default_registry()
    short = {k.kind: k.short_names for k in reg.kinds if k.group.endswith("cluster.x-k8s.io")}
    assert short["Cluster"] == ("cl",) and short["MachineDeployment"] == ("md",)
    assert short["KubeadmControlPlane"] == ("kcp",) and short["ClusterClass"] == ("cc",)
    for k in reg.kinds:
        if k.group.endswith("cluster.x-k8s.io"):
            assert k.categories == ("cluster-api",) and k.namespaced
            assert [v.name for v in k.versions] == ["v1beta1"] and k.storage_version.storage
    assert reg.by_kind(ADDONS_GROUP, "ClusterResourceSetBinding") is not None
