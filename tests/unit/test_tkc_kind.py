"""TanzuKubernetesCluster (run.tanzu.vmware.com v1alpha3 and v1alpha2) through the real object
service on a throwaway SQLite store: the vSphere docs' example manifests apply, conversion
between the versions is lossless, the TKG service's admission rules with their messages, and
vSphere's printer columns."""

from __future__ import annotations

import base64
import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from appliance.api.table import to_table
from appliance.errors import ApiError
from appliance.kinds import default_registry
from appliance.kinds.registry import Kind, Obj
from appliance.kinds.tanzu import (CONVERSION_ANNOTATION, GROUP, TKC_FINALIZER, TKC_STORAGE,
                                   tkc_storage_to_v1alpha2, tkc_v1alpha2_to_storage)
from appliance.objects import MERGE_PATCH, SYSTEM, ObjectService, Target, WriteOptions
from appliance.store.db import make_engine, migrate
from appliance.store.repo import Store

LAB = ("198.18.0.0/24=appliance network", "10.20.0.0/16")
STRICT = WriteOptions(field_validation="Strict")
VMOP = "vmoperator.vmware.com"
CATALOG = "vmware-system-vmop"
PEM = base64.b64encode(b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
                       ).decode()

#: Releases: (name, Kubernetes version, Ready).
RELEASES = (
    ("v1.20.8---vmware.1-tkg.2", "v1.20.8", False),
    ("v1.21.2---vmware.1-tkg.1.ee25d55", "v1.21.2", True),
    ("v1.22.9---vmware.1-tkg.1.cc71bc8", "v1.22.9", True),
    ("v1.23.8---vmware.3-tkg.1", "v1.23.8", True),
)
OLD, V121, V122, V123 = (r[0] for r in RELEASES)

# The vSphere 8 docs' v1alpha3 example of a cluster with default settings.
V1ALPHA3_DEFAULT = f"""
apiVersion: run.tanzu.vmware.com/v1alpha3
kind: TanzuKubernetesCluster
metadata:
  name: tkc-01
  namespace: dev
spec:
  topology:
    controlPlane:
      replicas: 3
      vmClass: guaranteed-medium
      storageClass: tkg-storage-policy
      tkr:
        reference:
          name: {V121}
    nodePools:
    - name: worker-nodepool-a1
      replicas: 3
      vmClass: guaranteed-medium
      storageClass: tkg-storage-policy
      tkr:
        reference:
          name: {V121}
"""

# The vSphere 8 docs' v1alpha3 example of a custom cluster (volumes, failure domains, settings).
V1ALPHA3_CUSTOM = f"""
apiVersion: run.tanzu.vmware.com/v1alpha3
kind: TanzuKubernetesCluster
metadata:
  name: tkc-custom
  namespace: dev
spec:
  topology:
    controlPlane:
      replicas: 3
      vmClass: guaranteed-medium
      storageClass: tkg-storage-policy
      volumes:
      - name: etcd
        mountPath: /var/lib/etcd
        capacity:
          storage: 4Gi
      tkr:
        reference:
          name: {V121}
      nodeDrainTimeout: 5m0s
    nodePools:
    - name: node-pool-1
      replicas: 1
      vmClass: guaranteed-large
      storageClass: tkg-storage-policy
      failureDomain: zone-1
      labels:
        tier: web
      taints:
      - key: dedicated
        value: web
        effect: NoSchedule
      volumes:
      - name: containerd
        mountPath: /var/lib/containerd
        capacity:
          storage: 50Gi
    - name: node-pool-2
      replicas: 1
      vmClass: guaranteed-large
      storageClass: tkg-storage-policy
      failureDomain: zone-2
  settings:
    storage:
      classes: ["tkg-storage-policy"]
      defaultClass: tkg-storage-policy
    network:
      cni:
        name: antrea
      services:
        cidrBlocks: ["198.51.100.0/12"]
      pods:
        cidrBlocks: ["192.0.2.0/16"]
      serviceDomain: cluster.local
      proxy:
        httpProxy: http://proxy.example.com:3128
        httpsProxy: http://proxy.example.com:3128
        noProxy: [10.246.0.0/16, 192.168.144.0/20, .example.com]
      trust:
        additionalTrustedCAs:
        - name: CompanyInternalCA-1
          data: {PEM}
"""

# The vSphere 7 docs' v1alpha2 example of a custom cluster.
V1ALPHA2_CUSTOM = f"""
apiVersion: run.tanzu.vmware.com/v1alpha2
kind: TanzuKubernetesCluster
metadata:
  name: tkgs-cluster-1
  namespace: dev
spec:
  topology:
    controlPlane:
      replicas: 3
      vmClass: guaranteed-medium
      storageClass: vwt-storage-policy
      volumes:
        - name: etcd
          mountPath: /var/lib/etcd
          capacity:
            storage: 4Gi
      tkr:
        reference:
          name: {V121}
    nodePools:
    - name: worker-nodepool-a1
      replicas: 3
      vmClass: guaranteed-large
      storageClass: vwt-storage-policy
      volumes:
        - name: containerd
          mountPath: /var/lib/containerd
          capacity:
            storage: 16Gi
      tkr:
        reference:
          name: {V121}
    - name: worker-nodepool-a2
      replicas: 2
      vmClass: guaranteed-medium
      storageClass: vwt-storage-policy
      tkr:
        reference:
          name: {V121}
  settings:
    storage:
      defaultClass: vwt-storage-policy
    network:
      cni:
        name: antrea
      services:
        cidrBlocks: ["198.51.100.0/12"]
      pods:
        cidrBlocks: ["192.0.2.0/16"]
      serviceDomain: cluster.local
      proxy:
        httpProxy: http://proxy.example.com:3128
        httpsProxy: http://proxy.example.com:3128
        noProxy: [10.246.0.0/16, 192.168.144.0/20, 192.168.128.0/20]
      trust:
        additionalTrustedCAs:
          - name: CompanyInternalCA-1
            data: {PEM}
"""


# -- fixtures and helpers -----------------------------------------------------------------------


def _kind(svc: ObjectService, group: str, plural: str) -> Kind:
    kind = svc.registry.by_group_plural(group, plural)
    assert kind is not None, plural
    return kind


def _tkc(svc: ObjectService, version: str = TKC_STORAGE, name: str = "",
         sub: str = "") -> Target:
    return Target(_kind(svc, GROUP, "tanzukubernetesclusters"), version, "dev", name, sub)


@pytest.fixture
def service(tmp_path: Path) -> ObjectService:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    migrate(engine)
    svc = ObjectService(Store(engine), default_registry(LAB))
    ns_kind = _kind(svc, "", "namespaces")
    for ns in ("dev", CATALOG):
        svc.create(SYSTEM, Target(ns_kind, "v1"), {"apiVersion": "v1", "kind": "Namespace",
                                                   "metadata": {"name": ns}})
    classes = _kind(svc, VMOP, "virtualmachineclasses")
    for ns, names in (("dev", ("guaranteed-medium", "guaranteed-large")),
                      (CATALOG, ("guaranteed-medium", "guaranteed-large", "guaranteed-xlarge"))):
        for name in names:
            svc.create(SYSTEM, Target(classes, "v1alpha5", ns), {
                "apiVersion": f"{VMOP}/v1alpha5", "kind": "VirtualMachineClass",
                "metadata": {"name": name},
                "spec": {"hardware": {"cpus": 2, "memory": "8Gi"}}})
    tkrs = _kind(svc, GROUP, "tanzukubernetesreleases")
    for name, version, ready in RELEASES:
        svc.create(SYSTEM, Target(tkrs, "v1alpha3"), {
            "apiVersion": f"{GROUP}/v1alpha3", "kind": "TanzuKubernetesRelease",
            "metadata": {"name": name},
            "spec": {"version": name.replace("---", "+"), "kubernetes": {"version": version}}})
        svc.patch(SYSTEM, Target(tkrs, "v1alpha3", "", name, "status"), MERGE_PATCH,
                  {"status": {"conditions": [{"type": "Ready",
                                              "status": "True" if ready else "False"}]}})
    return svc


def _load(text: str) -> Obj:
    doc: Obj = yaml.safe_load(text)
    return doc


def _version(body: Obj) -> str:
    return body["apiVersion"].rpartition("/")[2]


def _create(svc: ObjectService, body: Obj) -> Obj:
    result = svc.create(SYSTEM, _tkc(svc, _version(body)), copy.deepcopy(body), STRICT)
    assert result.warnings == [], result.warnings
    return result.obj


def _get(svc: ObjectService, name: str, version: str = TKC_STORAGE) -> Obj:
    return svc.get(SYSTEM, _tkc(svc, version, name))


def _patch(svc: ObjectService, name: str, patch: Obj) -> Obj:
    return svc.patch(SYSTEM, _tkc(svc, TKC_STORAGE, name), MERGE_PATCH, patch, STRICT).obj


def _refused(svc: ObjectService, body: Obj, patch: Obj | None = None) -> str:
    with pytest.raises(ApiError) as info:
        if patch is None:
            _create(svc, body)
        else:
            _patch(svc, body["metadata"]["name"], patch)
    assert info.value.code == 422, info.value.message
    return info.value.message


def _default() -> Obj:
    return _load(V1ALPHA3_DEFAULT)


def _with(body: Obj, path: str, value: Any) -> Obj:
    """``body`` with the dotted ``path`` (``nodePools.0.vmClass``) under spec set."""
    out = copy.deepcopy(body)
    holder: Any = out["spec"]
    parts = path.split(".")
    for part in parts[:-1]:
        holder = holder[int(part)] if part.isdigit() else holder.setdefault(part, {})
    holder[parts[-1]] = value
    return out


# -- the kind -----------------------------------------------------------------------------------


def test_kind_is_declared_as_upstream() -> None:
    registry = default_registry(LAB)
    kind = registry.by_group_plural(GROUP, "tanzukubernetesclusters")
    assert kind is not None and kind.kind == "TanzuKubernetesCluster"
    assert kind.namespaced and kind.has_status and kind.short_names == ("tkc",)
    assert kind.categories == ()  # upstream's CRD lists none
    assert [(v.name, v.storage) for v in kind.versions] == [("v1alpha3", True),
                                                           ("v1alpha2", False)]
    assert registry.group_versions(GROUP) == ["v1alpha3", "v1alpha2"]
    assert [k.kind for k in registry.kinds_in(GROUP, "v1alpha2")] == ["TanzuKubernetesCluster"]
    assert kind.default_finalizers == ()  # the controller adds TKC_FINALIZER
    assert TKC_FINALIZER == "tanzukubernetescluster.run.tanzu.vmware.com"
    v3 = kind.storage_version.schema["properties"]["spec"]["properties"]
    v2 = kind.version("v1alpha2").schema["properties"]["spec"]["properties"]  # type: ignore
    assert "distribution" in v2 and "distribution" not in v3
    pool3 = v3["topology"]["properties"]["nodePools"]["items"]["properties"]
    pool2 = v2["topology"]["properties"]["nodePools"]["items"]["properties"]
    assert set(pool3) - set(pool2) == {"failureDomain"}
    assert set(pool3) == {"name", "labels", "taints", "failureDomain", "replicas", "vmClass",
                          "storageClass", "volumes", "tkr", "nodeDrainTimeout"}


def test_printer_columns_as_vsphere_prints_them(service: ObjectService) -> None:
    _create(service, _default())
    service.patch(SYSTEM, _tkc(service, name="tkc-01", sub="status"), MERGE_PATCH, {
        "status": {"totalWorkerReplicas": 3, "conditions": [
            {"type": "Ready", "status": "False", "reason": "WaitingForControlPlane"},
            {"type": "TanzuKubernetesReleaseCompatible", "status": "True"},
            {"type": "UpdatesAvailable", "status": "True",
             "message": "[1.22.9+vmware.1-tkg.1.cc71bc8]"}]}})
    kind = _kind(service, GROUP, "tanzukubernetesclusters")
    for version in ("v1alpha3", "v1alpha2"):
        table = to_table(kind, version, [_get(service, "tkc-01", version)])
        assert [c["name"] for c in table["columnDefinitions"]] == [
            "Name", "Control Plane", "Worker", "TKR Name", "Age", "Ready", "TKR Compatible",
            "Updates Available"]
        cells = table["rows"][0]["cells"]
        assert cells[:4] == ["tkc-01", 3, 3, V121]
        assert cells[5:] == ["False", "True", "[1.22.9+vmware.1-tkg.1.cc71bc8]"]


# -- the docs' manifests and defaults -----------------------------------------------------------


def test_docs_v1alpha3_default_example_applies_with_vsphere_defaults(
        service: ObjectService) -> None:
    created = _create(service, _default())
    assert created["apiVersion"] == f"{GROUP}/v1alpha3"
    assert created["spec"]["settings"] == {"network": {
        "cni": {"name": "antrea"}, "pods": {"cidrBlocks": ["192.168.0.0/16"]},
        "services": {"cidrBlocks": ["10.96.0.0/12"]}, "serviceDomain": "cluster.local"}}
    body = _with(_default(), "topology.controlPlane", {
        k: v for k, v in _default()["spec"]["topology"]["controlPlane"].items()
        if k != "replicas"})
    body["metadata"]["name"] = "tkc-02"
    assert _create(service, body)["spec"]["topology"]["controlPlane"]["replicas"] == 1


def test_nsx_routed_pods_get_no_default_range(service: ObjectService) -> None:
    body = _with(_default(), "settings", {"network": {"cni": {"name": "antrea-nsx-routed"}}})
    assert "pods" not in _create(service, body)["spec"]["settings"]["network"]


def test_docs_v1alpha3_custom_example_applies_unchanged(service: ObjectService) -> None:
    body = _load(V1ALPHA3_CUSTOM)
    created = _create(service, body)
    assert created["spec"] == body["spec"]
    assert CONVERSION_ANNOTATION not in (created["metadata"].get("annotations") or {})


def test_docs_v1alpha2_example_applies_and_reads_back_unchanged(service: ObjectService) -> None:
    body = _load(V1ALPHA2_CUSTOM)
    created = _create(service, body)
    assert created["apiVersion"] == f"{GROUP}/v1alpha2" and created["spec"] == body["spec"]
    stored = _get(service, "tkgs-cluster-1")
    assert stored["apiVersion"] == f"{GROUP}/v1alpha3"
    assert stored["spec"] == body["spec"]  # the example uses no field only v1alpha2 has


# -- conversion -----------------------------------------------------------------------------------


def test_v1alpha2_round_trip_through_storage_keeps_distribution(service: ObjectService) -> None:
    body = _load(V1ALPHA2_CUSTOM)
    body["spec"]["distribution"] = {"fullVersion": "v1.21.2+vmware.1-tkg.1.ee25d55",
                                    "version": "v1.21"}
    _create(service, body)
    stored = _get(service, "tkgs-cluster-1")
    assert "distribution" not in stored["spec"]
    assert '"distribution"' in stored["metadata"]["annotations"][CONVERSION_ANNOTATION]
    back = _get(service, "tkgs-cluster-1", "v1alpha2")
    assert back["spec"] == body["spec"]
    assert CONVERSION_ANNOTATION not in (back["metadata"].get("annotations") or {})


def test_v1alpha3_round_trip_through_v1alpha2_keeps_failure_domains(
        service: ObjectService) -> None:
    body = _load(V1ALPHA3_CUSTOM)
    _create(service, body)
    old = _get(service, "tkc-custom", "v1alpha2")
    assert all("failureDomain" not in p for p in old["spec"]["topology"]["nodePools"])
    assert "zone-1" in old["metadata"]["annotations"][CONVERSION_ANNOTATION]
    # A v1alpha2 client writes back what it read, with a change of its own.
    old["spec"]["topology"]["nodePools"][1]["replicas"] = 2
    service.update(SYSTEM, _tkc(service, "v1alpha2", "tkc-custom"), old, STRICT)
    after = _get(service, "tkc-custom")
    expected = copy.deepcopy(body["spec"])
    expected["topology"]["nodePools"][1]["replicas"] = 2
    assert after["spec"] == expected
    assert CONVERSION_ANNOTATION not in (after["metadata"].get("annotations") or {})


def test_conversion_functions_round_trip_both_ways() -> None:
    v2 = _load(V1ALPHA2_CUSTOM)
    v2["spec"]["distribution"] = {"fullVersion": "", "version": "v1.21"}
    v2["metadata"]["annotations"] = {"team": "a"}
    assert tkc_storage_to_v1alpha2(tkc_v1alpha2_to_storage(v2)) == v2
    v3 = _load(V1ALPHA3_CUSTOM)
    assert tkc_v1alpha2_to_storage(tkc_storage_to_v1alpha2(v3)) == v3


def test_a_v1alpha2_full_version_names_the_release(service: ObjectService) -> None:
    body = _load(V1ALPHA2_CUSTOM)
    body["spec"]["topology"]["controlPlane"].pop("tkr")
    body["spec"]["distribution"] = {"fullVersion": "v1.21.2+vmware.1-tkg.1.ee25d55"}
    _create(service, body)
    cp = _get(service, "tkgs-cluster-1")["spec"]["topology"]["controlPlane"]
    assert cp["tkr"] == {"reference": {"name": V121}}


def test_a_v1alpha2_version_hint_alone_is_not_resolved(service: ObjectService) -> None:
    body = _load(V1ALPHA2_CUSTOM)
    body["spec"]["topology"]["controlPlane"].pop("tkr")
    body["spec"]["distribution"] = {"version": "v1.21"}
    assert "spec.topology.controlPlane.tkr.reference.name: Required value: name a " \
           "TanzuKubernetesRelease (kubectl get tkr) (a spec.distribution version hint is " \
           "not resolved here)" in _refused(service, body)


# -- admission ----------------------------------------------------------------------------------


def test_vm_classes_must_be_assigned_to_the_namespace(service: ObjectService) -> None:
    body = _with(_default(), "topology.controlPlane.vmClass", "guaranteed-xlarge")
    assert ('spec.topology.controlPlane.vmClass: Invalid value: "guaranteed-xlarge": '
            'VirtualMachineClass "guaranteed-xlarge" is not assigned to namespace "dev"'
            ) in _refused(service, body)
    body = _with(_default(), "topology.nodePools.0.vmClass", "nope")
    assert ('spec.topology.nodePools[0].vmClass: Invalid value: "nope": VirtualMachineClass '
            '"nope" not found') in _refused(service, body)


def test_releases_must_exist(service: ObjectService) -> None:
    body = _with(_default(), "topology.controlPlane.tkr", {"reference": {"name": "v9.9.9"}})
    body = _with(body, "topology.nodePools.0.tkr", {"reference": {"name": "v9.9.8"}})
    message = _refused(service, body)
    assert ('spec.topology.controlPlane.tkr.reference.name: Invalid value: "v9.9.9": '
            'TanzuKubernetesRelease "v9.9.9" not found') in message
    assert ('spec.topology.nodePools[0].tkr.reference.name: Invalid value: "v9.9.8": '
            'TanzuKubernetesRelease "v9.9.8" not found') in message
    body = _with(_default(), "topology.controlPlane.tkr", {})
    assert "spec.topology.controlPlane.tkr.reference.name: Required value" in _refused(
        service, body)


def test_a_release_that_is_not_ready_is_accepted(service: ObjectService) -> None:
    body = _with(_default(), "topology.controlPlane.tkr", {"reference": {"name": OLD}})
    body["spec"]["topology"]["nodePools"][0].pop("tkr")  # a pool runs its control plane's
    result = service.create(SYSTEM, _tkc(service, _version(body)), copy.deepcopy(body), STRICT)
    assert result.obj["spec"]["topology"]["controlPlane"]["tkr"] == {"reference": {"name": OLD}}
    # accepted, with a warning that says why its nodes will not bootstrap (kubectl prints it)
    assert len(result.warnings) == 1 and f"TanzuKubernetesRelease {OLD} is not Ready" in \
        result.warnings[0], result.warnings


def test_pod_and_service_ranges(service: ObjectService) -> None:
    def network(pods: list[str], services: list[str]) -> Obj:
        return _with(_default(), "settings", {"network": {"pods": {"cidrBlocks": pods},
                                                          "services": {"cidrBlocks": services}}})

    assert ('spec.settings.network.pods.cidrBlocks[0]: Invalid value: "10.0.0.300/8": invalid '
            'CIDR address: 10.0.0.300/8') in _refused(service, network(["10.0.0.300/8"],
                                                                       ["10.96.0.0/12"]))
    assert ('spec.settings.network.services.cidrBlocks[0]: Invalid value: "10.96.0.0/12": '
            'overlaps spec.settings.network.pods.cidrBlocks[0] (10.0.0.0/8)'
            ) in _refused(service, network(["10.0.0.0/8"], ["10.96.0.0/12"]))
    assert ('spec.settings.network.pods.cidrBlocks[0]: Invalid value: "198.18.0.0/16": '
            "overlaps the lab's network 198.18.0.0/24 (appliance network)"
            ) in _refused(service, network(["198.18.0.0/16"], ["10.96.0.0/12"]))
    assert "overlaps the lab's network 10.20.0.0/16" in _refused(
        service, network(["192.168.0.0/16"], ["10.16.0.0/12"]))
    body = _with(_default(), "settings", {"network": {"serviceDomain": "Not_A_Domain"}})
    assert 'spec.settings.network.serviceDomain: Invalid value: "Not_A_Domain"' in _refused(
        service, body)


def test_proxy_and_trust_settings(service: ObjectService) -> None:
    body = _with(_default(), "settings", {"network": {
        "proxy": {"httpProxy": "proxy.example.com:3128"},
        "trust": {"additionalTrustedCAs": [{"name": "ca", "data": "not base64!"}]}}})
    message = _refused(service, body)
    assert ('spec.settings.network.proxy.httpProxy: Invalid value: "proxy.example.com:3128": '
            "must be an http:// or https:// URL") in message
    assert ("spec.settings.network.trust.additionalTrustedCAs[0].data: Invalid value: must be "
            "base64-encoded PEM certificate data") in message


def test_control_plane_of_one_or_three_that_never_shrinks(service: ObjectService) -> None:
    body = _with(_default(), "topology.controlPlane.replicas", 2)
    assert ('spec.topology.controlPlane.replicas: Unsupported value: 2: supported values: '
            '"1", "3"') in _refused(service, body)
    one = _with(_default(), "topology.controlPlane.replicas", 1)
    _create(service, one)
    scaled = _patch(service, "tkc-01", {"spec": {"topology": {"controlPlane": {"replicas": 3}}}})
    assert scaled["spec"]["topology"]["controlPlane"]["replicas"] == 3
    assert ("spec.topology.controlPlane.replicas: Forbidden: the control plane cannot be "
            "scaled down (from 3 to 1)") in _refused(
        service, one, {"spec": {"topology": {"controlPlane": {"replicas": 1}}}})


def test_node_pool_names_are_unique_dns_labels(service: ObjectService) -> None:
    body = _default()
    pool = body["spec"]["topology"]["nodePools"][0]
    body["spec"]["topology"]["nodePools"] = [pool, copy.deepcopy(pool),
                                             {**copy.deepcopy(pool), "name": "Pool_B"}]
    message = _refused(service, body)
    assert 'spec.topology.nodePools[1].name: Duplicate value: "worker-nodepool-a1"' in message
    assert ('spec.topology.nodePools[2].name: Invalid value: "Pool_B": a lowercase RFC 1123 '
            'label must consist of') in message


def test_node_drain_timeout_and_volumes(service: ObjectService) -> None:
    body = _with(_default(), "topology.controlPlane.nodeDrainTimeout", "five minutes")
    body = _with(body, "topology.nodePools.0.volumes", [
        {"name": "data", "mountPath": "/data", "capacity": {"storage": "1Gi"}},
        {"name": "data", "mountPath": "/data2", "capacity": {"cpu": "1"}}])
    message = _refused(service, body)
    assert ('spec.topology.controlPlane.nodeDrainTimeout: Invalid value: "five minutes": '
            "must be a duration such as 5m0s") in message
    assert 'spec.topology.nodePools[0].volumes[1].name: Duplicate value: "data"' in message
    assert "spec.topology.nodePools[0].volumes[1].capacity.storage: Required value" in message


def test_upgrades_go_one_minor_version_at_a_time(service: ObjectService) -> None:
    _create(service, _default())  # v1.21.2, control plane and pool

    def release(name: str) -> Obj:
        ref = {"tkr": {"reference": {"name": name}}}
        return {"spec": {"topology": {"controlPlane": ref}}}

    message = _refused(service, _default(), release(V123))
    assert ('spec.topology.controlPlane.tkr.reference.name: Invalid value: '
            f'"{V123}": Kubernetes v1.21.2 cannot be upgraded to v1.23.8: upgrade one minor '
            "version at a time (to v1.22 first)") in message
    assert ('spec.topology.nodePools[0].tkr.reference.name: Invalid value: '
            f'"{V121}"') not in message  # the pool stays: no upgrade there
    assert 'Kubernetes v1.21.2 cannot be downgraded to v1.20.8' in _refused(
        service, _default(), release(OLD))
    upgraded = _patch(service, "tkc-01", release(V122))
    assert upgraded["spec"]["topology"]["controlPlane"]["tkr"]["reference"]["name"] == V122
    # The pool follows one minor at a time as well.
    pools = copy.deepcopy(upgraded["spec"]["topology"]["nodePools"])
    pools[0]["tkr"] = {"reference": {"name": V123}}
    assert (f'spec.topology.nodePools[0].tkr.reference.name: Invalid value: "{V123}": '
            "Kubernetes v1.21.2 cannot be upgraded to v1.23.8") in _refused(
        service, _default(), {"spec": {"topology": {"nodePools": pools}}})


def test_unknown_fields_and_schema_errors(service: ObjectService) -> None:
    body = _with(_default(), "topology.controlPlane.count", 3)  # v1alpha1's shape
    with pytest.raises(ApiError) as info:
        _create(service, body)
    assert info.value.code == 400
    assert 'unknown field "spec.topology.controlPlane.count"' in info.value.message
    body = _default()
    del body["spec"]["topology"]["nodePools"][0]["vmClass"]
    assert "spec.topology.nodePools[0].vmClass: Required value" in _refused(service, body)
