"""Discovery documents (legacy and aggregated) and the /openapi/v3 documents
(reference/kubectl-api.md sections 2 and 3)."""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import pytest

from appliance.api import discovery, openapi
from appliance.kinds import default_registry
from appliance.kinds.registry import Kind, Registry, Version
from appliance.kinds.schema import integer, obj, string, top_level

GROUP = "vmoperator.vmware.com"
SCHEMA = top_level(spec=obj({"className": string(), "cpus": integer()}))

VM = Kind(group=GROUP, kind="VirtualMachine", plural="virtualmachines",
          singular="virtualmachine", namespaced=True, short_names=("vm",), categories=("all",),
          versions=(Version("v1alpha1", SCHEMA, deprecated=True),
                    Version("v1alpha2", SCHEMA, storage=True)))
VM_CLASS = Kind(group=GROUP, kind="VirtualMachineClass", plural="virtualmachineclasses",
                singular="virtualmachineclass", namespaced=False, short_names=("vmclass",),
                has_status=False, versions=(Version("v1alpha2", SCHEMA, storage=True),))
CM = Kind(group="", kind="ConfigMap", plural="configmaps", singular="configmap",
          namespaced=True, short_names=("cm",), has_status=False, builtin=True,
          versions=(Version("v1", top_level(), storage=True),))
NS = Kind(group="", kind="Namespace", plural="namespaces", singular="namespace",
          namespaced=False, short_names=("ns",), builtin=True,
          extra_subresources=("finalize",), versions=(Version("v1", top_level(), storage=True),))
REVIEW = Kind(group="authorization.k8s.io", kind="SelfSubjectAccessReview",
              plural="selfsubjectaccessreviews", singular="selfsubjectaccessreview",
              namespaced=False, has_status=False, storable=False, verbs=("create",),
              versions=(Version("v1", top_level(), storage=True),))

V2 = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
V2BETA1 = "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList"
SMP = "application/strategic-merge-patch+json"


@pytest.fixture
def registry() -> Registry:
    reg = Registry()
    reg.extend([CM, NS, VM, VM_CLASS, REVIEW])
    return reg


# -- aggregated discovery negotiation ---------------------------------------------------------


@pytest.mark.parametrize(("accept", "expected"), [
    # kubectl 1.30+
    (f"{V2},{V2BETA1},application/json", "v2"),
    # kubectl 1.26-1.29
    (f"{V2BETA1},application/json", "v2beta1"),
    (V2BETA1, "v2beta1"),
    (V2, "v2"),
    # kubectl <= 1.25 and plain clients
    ("application/json, */*", None),
    ("application/json", None),
    ("*/*", None),
    ("", None),
    # Table requests are not discovery
    ("application/json;as=Table;v=v1;g=meta.k8s.io,application/json", None),
    # unknown aggregated versions are not answered
    ("application/json;g=apidiscovery.k8s.io;v=v3;as=APIGroupDiscoveryList,application/json",
     None),
    # parameters with spaces, in another order
    ("application/json; as=APIGroupDiscoveryList; v=v2; g=apidiscovery.k8s.io", "v2"),
    # a group or 'as' that is not aggregated discovery
    ("application/json;g=example.com;v=v2;as=APIGroupDiscoveryList", None),
    ("application/json;g=apidiscovery.k8s.io;v=v2;as=Table", None),
])
def test_aggregated_version(accept: str, expected: str | None) -> None:
    assert discovery.aggregated_version(accept) == expected


def test_v2_is_never_answered_to_a_client_that_listed_only_v2beta1() -> None:
    for accept in (V2BETA1, f"{V2BETA1},application/json", f"application/json,{V2BETA1}"):
        assert discovery.aggregated_version(accept) == "v2beta1"


def test_content_type_constants() -> None:
    assert discovery.AGGREGATED_V2 == V2
    assert discovery.AGGREGATED_V2BETA1 == V2BETA1


# -- legacy discovery -------------------------------------------------------------------------


def test_api_versions() -> None:
    assert discovery.api_versions("10.0.0.1:6443") == {
        "kind": "APIVersions", "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0",
                                        "serverAddress": "10.0.0.1:6443"}]}


def test_api_group_list_has_named_groups_with_preferred_first(registry: Registry) -> None:
    doc = discovery.api_group_list(registry)
    assert doc["kind"] == "APIGroupList"
    assert doc["apiVersion"] == "v1"
    groups = {g["name"]: g for g in doc["groups"]}
    assert set(groups) == {GROUP, "authorization.k8s.io"}  # the core group is under /api
    vmop = groups[GROUP]
    assert vmop["versions"] == [{"groupVersion": f"{GROUP}/v1alpha2", "version": "v1alpha2"},
                                {"groupVersion": f"{GROUP}/v1alpha1", "version": "v1alpha1"}]
    assert vmop["preferredVersion"] == {"groupVersion": f"{GROUP}/v1alpha2",
                                        "version": "v1alpha2"}


def test_api_group(registry: Registry) -> None:
    doc = discovery.api_group(registry, GROUP)
    assert doc["kind"] == "APIGroup"
    assert doc["name"] == GROUP
    assert doc["preferredVersion"]["version"] == "v1alpha2"


def test_resource_list_entries(registry: Registry) -> None:
    doc = discovery.resource_list(registry, GROUP, "v1alpha2")
    assert doc["kind"] == "APIResourceList"
    assert doc["apiVersion"] == "v1"
    assert doc["groupVersion"] == f"{GROUP}/v1alpha2"
    by_name = {r["name"]: r for r in doc["resources"]}
    assert list(by_name) == ["virtualmachines", "virtualmachines/status",
                             "virtualmachineclasses"]
    vm = by_name["virtualmachines"]
    assert vm["singularName"] == "virtualmachine"
    assert vm["namespaced"] is True
    assert vm["kind"] == "VirtualMachine"
    assert vm["verbs"] == ["create", "delete", "deletecollection", "get", "list", "patch",
                           "update", "watch"]
    assert vm["shortNames"] == ["vm"]
    assert vm["categories"] == ["all"]
    status = by_name["virtualmachines/status"]
    assert status["kind"] == "VirtualMachine"
    assert status["namespaced"] is True
    assert status["verbs"] == ["get", "patch", "update"]
    assert "shortNames" not in status
    cls = by_name["virtualmachineclasses"]
    assert cls["namespaced"] is False
    assert cls["shortNames"] == ["vmclass"]
    assert "categories" not in cls


def test_resource_list_for_the_older_version(registry: Registry) -> None:
    doc = discovery.resource_list(registry, GROUP, "v1alpha1")
    assert [r["name"] for r in doc["resources"]] == ["virtualmachines",
                                                     "virtualmachines/status"]


def test_core_resource_list(registry: Registry) -> None:
    doc = discovery.resource_list(registry, "", "v1")
    assert doc["groupVersion"] == "v1"
    assert [r["name"] for r in doc["resources"]] == [
        "configmaps", "namespaces", "namespaces/status", "namespaces/finalize"]
    assert {r["name"]: r.get("shortNames") for r in doc["resources"]}["namespaces"] == ["ns"]


def test_virtual_kind_has_its_own_verbs(registry: Registry) -> None:
    doc = discovery.resource_list(registry, "authorization.k8s.io", "v1")
    assert doc["resources"] == [{
        "name": "selfsubjectaccessreviews", "singularName": "selfsubjectaccessreview",
        "namespaced": False, "kind": "SelfSubjectAccessReview", "verbs": ["create"]}]


# -- aggregated discovery documents ------------------------------------------------------------


def test_aggregated_document_shape(registry: Registry) -> None:
    doc = discovery.aggregated(registry, core=False, version="v2")
    assert doc["kind"] == "APIGroupDiscoveryList"
    assert doc["apiVersion"] == "apidiscovery.k8s.io/v2"
    items = {i["metadata"]["name"]: i for i in doc["items"]}
    assert set(items) == {GROUP, "authorization.k8s.io"}
    versions = items[GROUP]["versions"]
    assert [v["version"] for v in versions] == ["v1alpha2", "v1alpha1"]  # preferred first
    assert {v["freshness"] for v in versions} == {"Current"}
    resources = {r["resource"]: r for r in versions[0]["resources"]}
    assert resources["virtualmachines"] == {
        "resource": "virtualmachines",
        "responseKind": {"group": GROUP, "version": "v1alpha2", "kind": "VirtualMachine"},
        "scope": "Namespaced", "singularResource": "virtualmachine",
        "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update",
                  "watch"],
        "shortNames": ["vm"], "categories": ["all"],
        "subresources": [{"subresource": "status",
                          "responseKind": {"group": GROUP, "version": "v1alpha2",
                                           "kind": "VirtualMachine"},
                          "verbs": ["get", "patch", "update"]}],
    }
    cls = resources["virtualmachineclasses"]
    assert cls["scope"] == "Cluster"
    assert "subresources" not in cls
    older = {r["resource"]: r for r in versions[1]["resources"]}
    assert older["virtualmachines"]["responseKind"]["version"] == "v1alpha1"


def test_aggregated_core_has_one_unnamed_item(registry: Registry) -> None:
    doc = discovery.aggregated(registry, core=True, version="v2beta1")
    assert doc["apiVersion"] == "apidiscovery.k8s.io/v2beta1"
    assert len(doc["items"]) == 1
    item = doc["items"][0]
    assert item["metadata"] == {"name": ""}
    assert [v["version"] for v in item["versions"]] == ["v1"]
    resources = {r["resource"]: r for r in item["versions"][0]["resources"]}
    assert resources["configmaps"]["responseKind"] == {"group": "", "version": "v1",
                                                       "kind": "ConfigMap"}
    assert [s["subresource"] for s in resources["namespaces"]["subresources"]] == [
        "status", "finalize"]


def test_aggregated_document_is_json(registry: Registry) -> None:
    for core in (True, False):
        doc = discovery.aggregated(registry, core=core, version="v2")
        assert json.loads(json.dumps(doc)) == doc


# -- /openapi/v3 -------------------------------------------------------------------------------


def test_index_lists_every_group_version_with_a_hash(registry: Registry) -> None:
    index = openapi.index(registry)
    assert set(index["paths"]) == {"api/v1", f"apis/{GROUP}/v1alpha2",
                                   f"apis/{GROUP}/v1alpha1", "apis/authorization.k8s.io/v1"}
    for path, entry in index["paths"].items():
        assert re.fullmatch(rf"/openapi/v3/{re.escape(path)}\?hash=[0-9A-F]{{32}}",
                            entry["serverRelativeURL"])


def test_index_hash_is_stable_and_follows_the_document(registry: Registry) -> None:
    first = openapi.index(registry)
    assert openapi.index(registry) == first
    other = Registry()
    changed = Version("v1alpha2", top_level(spec=obj({"cpus": string()})), storage=True)
    other.extend([CM, NS, dataclasses.replace(VM, versions=(VM.versions[0], changed)),
                  VM_CLASS, REVIEW])
    second = openapi.index(other)
    key = f"apis/{GROUP}/v1alpha2"
    assert second["paths"][key] != first["paths"][key]
    assert second["paths"]["api/v1"] == first["paths"]["api/v1"]


def test_gv_path() -> None:
    assert openapi.gv_path("", "v1") == "api/v1"
    assert openapi.gv_path(GROUP, "v1alpha2") == f"apis/{GROUP}/v1alpha2"


def _patch_ops(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [item["patch"] for item in doc["paths"].values() if "patch" in item]


def test_gv_document_patch_operation_tells_kubectl_the_server_validates(
        registry: Registry) -> None:
    doc = openapi.gv_document(registry, GROUP, "v1alpha2")
    assert doc["openapi"].startswith("3.")
    named = doc["paths"][
        f"/apis/{GROUP}/v1alpha2/namespaces/{{namespace}}/virtualmachines/{{name}}"]
    patch = named["patch"]
    assert patch["x-kubernetes-group-version-kind"] == {"group": GROUP, "version": "v1alpha2",
                                                        "kind": "VirtualMachine"}
    assert patch["x-kubernetes-action"] == "patch"
    assert {"name": "fieldValidation", "in": "query"}.items() <= next(
        p for p in patch["parameters"] if p["name"] == "fieldValidation").items()
    assert set(patch["requestBody"]["content"]) == {
        "application/json-patch+json", "application/merge-patch+json",
        "application/apply-patch+yaml"}
    assert [p["name"] for p in named["parameters"]] == ["namespace", "name"]


def test_gv_document_paths_for_both_scopes(registry: Registry) -> None:
    doc = openapi.gv_document(registry, GROUP, "v1alpha2")
    base = f"/apis/{GROUP}/v1alpha2"
    assert set(doc["paths"]) == {
        f"{base}/namespaces/{{namespace}}/virtualmachines",
        f"{base}/namespaces/{{namespace}}/virtualmachines/{{name}}",
        f"{base}/virtualmachineclasses",
        f"{base}/virtualmachineclasses/{{name}}",
    }
    cluster = doc["paths"][f"{base}/virtualmachineclasses/{{name}}"]
    assert [p["name"] for p in cluster["parameters"]] == ["name"]
    assert set(cluster) >= {"get", "put", "delete", "patch"}
    post = doc["paths"][f"{base}/namespaces/{{namespace}}/virtualmachines"]["post"]
    assert any(p["name"] == "fieldValidation" and p["in"] == "query" for p in post["parameters"])


def test_gv_document_carries_the_kind_schemas(registry: Registry) -> None:
    doc = openapi.gv_document(registry, GROUP, "v1alpha2")
    schemas = doc["components"]["schemas"]
    assert set(schemas) == {"com.vmware.vmoperator.v1alpha2.VirtualMachine",
                            "com.vmware.vmoperator.v1alpha2.VirtualMachineClass"}
    vm = schemas["com.vmware.vmoperator.v1alpha2.VirtualMachine"]
    assert vm["properties"]["spec"]["properties"]["cpus"] == {"type": "integer"}
    assert vm["x-kubernetes-group-version-kind"] == [
        {"group": GROUP, "version": "v1alpha2", "kind": "VirtualMachine"}]
    ref = doc["paths"][f"/apis/{GROUP}/v1alpha2/namespaces/{{namespace}}/virtualmachines/"
                       "{name}"]["get"]["responses"]["200"]["content"]["application/json"]
    assert ref["schema"] == {"$ref": "#/components/schemas/"
                                     "com.vmware.vmoperator.v1alpha2.VirtualMachine"}
    core = openapi.gv_document(registry, "", "v1")
    assert "core.v1.ConfigMap" in core["components"]["schemas"]


def test_virtual_kind_has_only_create(registry: Registry) -> None:
    doc = openapi.gv_document(registry, "authorization.k8s.io", "v1")
    assert list(doc["paths"]) == ["/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"]
    assert list(doc["paths"]["/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"]) == [
        "parameters", "post"]


def test_no_strategic_merge_patch_anywhere_for_any_served_group_version() -> None:
    reg = default_registry()
    for group in reg.groups():
        for version in reg.group_versions(group):
            doc = openapi.gv_document(reg, group, version)
            text = json.dumps(doc, default=str)
            assert SMP not in text, f"{group}/{version} advertises strategic merge patch"
            for kind in reg.kinds_in(group, version):
                if kind.storable:
                    assert any(op["x-kubernetes-group-version-kind"]["kind"] == kind.kind
                               and any(p["name"] == "fieldValidation" and p["in"] == "query"
                                       for p in op["parameters"])
                               for op in _patch_ops(doc)), kind.kind
    assert SMP not in json.dumps(openapi.index(reg))


def test_every_served_group_version_is_in_the_index() -> None:
    reg = default_registry()
    paths = openapi.index(reg)["paths"]
    for group in reg.groups():
        for version in reg.group_versions(group):
            assert openapi.gv_path(group, version) in paths
