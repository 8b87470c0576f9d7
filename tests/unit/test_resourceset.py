"""The ClusterResourceSet controller through the real object service on a throwaway SQLite
store, with a fake guest cluster in place of ``open_guest`` that records what it is given."""

from __future__ import annotations

import base64
import hashlib
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from appliance.clusters import resourceset
from appliance.clusters.guest import GuestCluster, GuestUnreachable
from appliance.clusters.objects import (
    CLUSTER_NAME,
    CLUSTERS,
    CONFIGMAPS,
    RESOURCESET_BINDINGS,
    RESOURCESETS,
    SECRETS,
    condition,
)
from appliance.clusters.resourceset import (
    FINALIZER,
    UNREACHABLE_RETRY,
    ClusterResourceSetController,
)
from appliance.errors import ApiError
from appliance.events import EVENTS
from appliance.kinds import default_registry
from appliance.kinds.registry import Obj
from appliance.objects import SYSTEM, ObjectService, Target
from appliance.resources import LocalApi, get_or_none
from appliance.store.db import make_engine, migrate
from appliance.store.repo import Store

NS = "dev"
CALICO = [{"apiVersion": "v1", "kind": "ServiceAccount",
           "metadata": {"name": "calico-node", "namespace": "kube-system"}},
          {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "calico-system"}}]
QUOTA = {"apiVersion": "v1", "kind": "ResourceQuota",
         "metadata": {"name": "pods", "namespace": "default"}, "spec": {"hard": {"pods": "10"}}}
CONFIG = {"apiVersion": "v1", "kind": "ConfigMap",
          "metadata": {"name": "addon-config", "namespace": "kube-system"},
          "data": {"level": "info"}}


class FakeGuest:
    """A guest cluster's API: what was created or replaced, in order."""

    def __init__(self, reachable: bool = True) -> None:
        self.reachable = reachable
        self.objects: dict[tuple[str, str, str], Obj] = {}
        self.calls: list[tuple[str, str, str]] = []
        self.closed = 0

    @staticmethod
    def _key(obj: Obj) -> tuple[str, str, str]:
        meta = obj.get("metadata") or {}
        return obj["kind"], meta.get("namespace") or "", meta["name"]

    def _answer(self) -> None:
        if not self.reachable:
            raise GuestUnreachable("https://192.0.2.10:6443: ConnectTimeout")

    def get(self, path: str) -> Any:
        self._answer()
        assert path == "/api/v1/namespaces/default/services/kubernetes"
        return {"kind": "Service", "metadata": {"name": "kubernetes"}}

    def apply(self, obj: Obj) -> str:
        self._answer()
        key = self._key(obj)
        self.calls.append(("apply", key[0], key[2]))
        if key in self.objects:
            return "exists"
        self.objects[key] = obj
        return "created"

    def replace(self, obj: Obj) -> str:
        self._answer()
        key = self._key(obj)
        self.calls.append(("replace", key[0], key[2]))
        outcome = "replaced" if key in self.objects else "created"
        self.objects[key] = obj
        return outcome

    def close(self) -> None:
        self.closed += 1


@pytest.fixture
def api(tmp_path: Path) -> LocalApi:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    migrate(engine)
    svc = ObjectService(Store(engine), default_registry())
    ns_kind = svc.registry.by_group_plural("", "namespaces")
    assert ns_kind is not None
    svc.create(SYSTEM, Target(ns_kind, "v1"), {"apiVersion": "v1", "kind": "Namespace",
                                               "metadata": {"name": NS}})
    return LocalApi(svc)


@pytest.fixture
def guests(monkeypatch: pytest.MonkeyPatch) -> dict[str, FakeGuest]:
    """Fake guests by cluster name; a cluster without one has no kubeconfig yet."""
    fakes: dict[str, FakeGuest] = {}

    def fake_open(api: Any, namespace: str, cluster: str, run_dir: Path) -> FakeGuest:
        assert namespace == NS
        if cluster not in fakes:
            raise GuestUnreachable("no kubeconfig Secret yet")
        return fakes[cluster]

    monkeypatch.setattr(resourceset, "open_guest", fake_open)
    return fakes


@pytest.fixture
def controller(api: LocalApi, tmp_path: Path) -> ClusterResourceSetController:
    return ClusterResourceSetController(api, tmp_path / "run")


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _cluster(api: LocalApi, name: str, initialized: bool = True,
             labels: dict[str, str] | None = None) -> Obj:
    api.create(CLUSTERS, NS, {
        "apiVersion": "cluster.x-k8s.io/v1beta1", "kind": "Cluster",
        "metadata": {"name": name, "labels": labels or {"cni": "calico"}}, "spec": {}})
    status = "True" if initialized else "False"
    return api.patch(CLUSTERS, NS, name, {"status": {"conditions": [
        {"type": "ControlPlaneInitialized", "status": status,
         "reason": "" if initialized else "WaitingForControlPlaneProviderInitialized",
         "lastTransitionTime": "2025-01-01T00:00:00Z"}]}}, subresource="status")


def _configmap(api: LocalApi) -> Obj:
    # Two values; the first holds two YAML documents (the Namespace is created first).
    return api.create(CONFIGMAPS, NS, {
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "calico"},
        "data": {"a-calico.yaml": yaml.safe_dump_all(CALICO),
                 "b-quota.json": '[{"apiVersion": "v1", "kind": "ResourceQuota", '
                                 '"metadata": {"name": "pods", "namespace": "default"}, '
                                 '"spec": {"hard": {"pods": "10"}}}]'}})


def _secret(api: LocalApi, name: str, type_: str) -> Obj:
    return api.create(SECRETS, NS, {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "type": type_,
        "data": {"config.yaml": _b64(yaml.safe_dump(CONFIG))}})


def _crs(api: LocalApi, name: str, resources: list[Obj], strategy: str = "",
         selector: Obj | None = None) -> Obj:
    spec: Obj = {"clusterSelector": {"matchLabels": {"cni": "calico"}}
                 if selector is None else selector, "resources": resources}
    if strategy:
        spec["strategy"] = strategy
    return api.create(RESOURCESETS, NS, {
        "apiVersion": "addons.cluster.x-k8s.io/v1beta1", "kind": "ClusterResourceSet",
        "metadata": {"name": name}, "spec": spec})


def _pass(controller: ClusterResourceSetController, name: str) -> float | None:
    return controller.reconcile(controller.api.get(RESOURCESETS, NS, name))


def _expected_hash(values: list[str]) -> str:
    """CAPI's computeHash over the values in key order."""
    return "sha256:" + hashlib.sha256("".join(values).encode()).hexdigest()


def _events(api: LocalApi, reason: str) -> list[Obj]:
    return [e for e in api.list(EVENTS, NS)[0] if e.get("reason") == reason]


@pytest.fixture
def addons(api: LocalApi) -> dict[str, Obj]:
    return {"configmap": _configmap(api),
            "secret": _secret(api, "addon-config", "addons.cluster.x-k8s.io/resource-set"),
            "opaque": _secret(api, "opaque", "Opaque")}


RESOURCES = [{"kind": "ConfigMap", "name": "calico"}, {"kind": "Secret", "name": "addon-config"}]


def test_apply_once_creates_every_document_once_and_records_the_binding(
        api: LocalApi, controller: ClusterResourceSetController, guests: dict[str, FakeGuest],
        addons: dict[str, Obj]) -> None:
    cluster = _cluster(api, "c1")
    guests["c1"] = guest = FakeGuest()
    _crs(api, "calico", RESOURCES)

    assert _pass(controller, "calico") is None
    assert guest.calls == [("apply", "Namespace", "calico-system"),
                           ("apply", "ServiceAccount", "calico-node"),
                           ("apply", "ResourceQuota", "pods"),
                           ("apply", "ConfigMap", "addon-config")]
    assert guest.objects[("ResourceQuota", "default", "pods")] == QUOTA
    assert guest.objects[("ConfigMap", "kube-system", "addon-config")] == CONFIG
    assert guest.closed == 1

    crs = api.get(RESOURCESETS, NS, "calico")
    assert FINALIZER in crs["metadata"]["finalizers"]
    applied = condition(crs, "ResourcesApplied")
    assert applied is not None and applied["status"] == "True"
    assert crs["status"]["observedGeneration"] == crs["metadata"]["generation"]
    assert _events(api, "Applied")[0]["message"] == \
        "applied ConfigMap/calico, Secret/addon-config to Cluster c1 (ApplyOnce)"

    binding = api.get(RESOURCESET_BINDINGS, NS, "c1")
    assert binding["metadata"]["labels"][CLUSTER_NAME] == "c1"
    owners = binding["metadata"]["ownerReferences"]
    assert {(o["kind"], o["name"], o["uid"]) for o in owners} == {
        ("Cluster", "c1", cluster["metadata"]["uid"]),
        ("ClusterResourceSet", "calico", crs["metadata"]["uid"])}
    assert not any(o.get("controller") for o in owners)
    assert binding["spec"]["clusterName"] == "c1"
    [entry] = binding["spec"]["bindings"]
    assert entry["clusterResourceSetName"] == "calico"
    cm_data = addons["configmap"]["data"]
    assert [(r["kind"], r["name"], r["applied"], r["hash"]) for r in entry["resources"]] == [
        ("ConfigMap", "calico", True,
         _expected_hash([cm_data["a-calico.yaml"], cm_data["b-quota.json"]])),
        ("Secret", "addon-config", True, _expected_hash([yaml.safe_dump(CONFIG)]))]
    assert all(r["lastAppliedTime"].endswith("Z") for r in entry["resources"])

    # The resources are owned by the set (so a change of them leads back to it).
    cm = api.get(CONFIGMAPS, NS, "calico")
    assert [o["name"] for o in cm["metadata"]["ownerReferences"]] == ["calico"]

    # A second pass applies nothing and writes nothing.
    before = api.get(RESOURCESET_BINDINGS, NS, "c1")["metadata"]["resourceVersion"]
    assert _pass(controller, "calico") is None
    assert len(guest.calls) == 4 and guest.closed == 1
    assert api.get(RESOURCESET_BINDINGS, NS, "c1")["metadata"]["resourceVersion"] == before

    # ApplyOnce ignores a change of the data.
    api.patch(CONFIGMAPS, NS, "calico", {"data": {"c-more.yaml": yaml.safe_dump(QUOTA)}})
    assert _pass(controller, "calico") is None
    assert len(guest.calls) == 4


def test_a_secret_of_the_wrong_type_applies_nothing(
        api: LocalApi, controller: ClusterResourceSetController, guests: dict[str, FakeGuest],
        addons: dict[str, Obj]) -> None:
    _cluster(api, "c1")
    guests["c1"] = guest = FakeGuest()
    _crs(api, "wrong", [{"kind": "ConfigMap", "name": "calico"},
                        {"kind": "Secret", "name": "opaque"}])

    assert _pass(controller, "wrong") is None
    applied = condition(api.get(RESOURCESETS, NS, "wrong"), "ResourcesApplied")
    assert applied is not None
    assert (applied["status"], applied["reason"], applied["severity"]) == \
        ("False", "WrongSecretType", "Warning")
    assert "unsupported secret type" in applied["message"] and "'Opaque'" in applied["message"]
    assert guest.calls == []
    assert get_or_none(api, RESOURCESET_BINDINGS, NS, "c1") is None
    assert [e["type"] for e in _events(api, "WrongSecretType")] == ["Warning"]

    # Fixed (a Secret's type is immutable: made again): the set applies.
    api.delete(SECRETS, NS, "opaque")
    _secret(api, "opaque", "addons.cluster.x-k8s.io/resource-set")
    assert _pass(controller, "wrong") is None
    assert condition(api.get(RESOURCESETS, NS, "wrong"), "ResourcesApplied")["status"] == "True"
    assert len(guest.calls) == 4


def test_an_unreachable_or_uninitialised_guest_is_retried_and_the_binding_left_alone(
        api: LocalApi, controller: ClusterResourceSetController, guests: dict[str, FakeGuest],
        addons: dict[str, Obj]) -> None:
    _cluster(api, "c1", initialized=False)
    _crs(api, "calico", RESOURCES)

    assert _pass(controller, "calico") == UNREACHABLE_RETRY
    applied = condition(api.get(RESOURCESETS, NS, "calico"), "ResourcesApplied")
    assert applied is not None
    assert (applied["status"], applied["reason"], applied["severity"]) == \
        ("False", "RemoteClusterClientFailed", "Info")
    assert "not initialized" in applied["message"]

    api.patch(CLUSTERS, NS, "c1", {"status": {"conditions": [
        {"type": "ControlPlaneInitialized", "status": "True", "reason": "",
         "lastTransitionTime": "2025-01-01T00:00:01Z"}]}}, subresource="status")
    # No kubeconfig yet, then an API that does not answer.
    assert _pass(controller, "calico") == UNREACHABLE_RETRY
    guests["c1"] = guest = FakeGuest(reachable=False)
    assert _pass(controller, "calico") == UNREACHABLE_RETRY
    applied = condition(api.get(RESOURCESETS, NS, "calico"), "ResourcesApplied")
    assert (applied["reason"], applied["severity"]) == ("RemoteClusterClientFailed", "Info")
    assert "does not answer" in applied["message"]
    assert get_or_none(api, RESOURCESET_BINDINGS, NS, "c1") is None
    assert guest.closed == 1
    # Waiting is not a warning: no Warning events at all.
    assert [e for e in api.list(EVENTS, NS)[0] if e.get("type") == "Warning"] == []

    guest.reachable = True
    assert _pass(controller, "calico") is None
    assert len(guest.objects) == 4
    assert condition(api.get(RESOURCESETS, NS, "calico"), "ResourcesApplied")["status"] == "True"


def test_reconcile_strategy_applies_again_when_the_data_changes(
        api: LocalApi, controller: ClusterResourceSetController, guests: dict[str, FakeGuest],
        addons: dict[str, Obj]) -> None:
    _cluster(api, "c1")
    guests["c1"] = guest = FakeGuest()
    _crs(api, "calico", RESOURCES, strategy="Reconcile")
    assert _pass(controller, "calico") is None
    assert [c[0] for c in guest.calls] == ["replace"] * 4
    first = api.get(RESOURCESET_BINDINGS, NS, "c1")["spec"]["bindings"][0]["resources"]

    assert _pass(controller, "calico") is None
    assert len(guest.calls) == 4  # unchanged hash: nothing to do

    quota = {**QUOTA, "spec": {"hard": {"pods": "20"}}}
    api.patch(CONFIGMAPS, NS, "calico", {"data": {"b-quota.json": None,
                                                   "b-quota.yaml": yaml.safe_dump(quota)}})
    assert _pass(controller, "calico") is None
    assert guest.calls[4:] == [("replace", "Namespace", "calico-system"),
                               ("replace", "ServiceAccount", "calico-node"),
                               ("replace", "ResourceQuota", "pods")]
    assert guest.objects[("ResourceQuota", "default", "pods")]["spec"]["hard"]["pods"] == "20"
    now = api.get(RESOURCESET_BINDINGS, NS, "c1")["spec"]["bindings"][0]["resources"]
    assert [r["name"] for r in now] == ["addon-config", "calico"]
    assert now[0] == first[1]  # the Secret's entry is untouched
    data = api.get(CONFIGMAPS, NS, "calico")["data"]
    assert now[1]["hash"] == _expected_hash([data["a-calico.yaml"], data["b-quota.yaml"]])
    assert now[1]["hash"] != first[0]["hash"]


def test_selection_an_apply_failure_and_a_missing_resource(
        api: LocalApi, controller: ClusterResourceSetController, guests: dict[str, FakeGuest],
        addons: dict[str, Obj]) -> None:
    _cluster(api, "c1")
    _cluster(api, "other", labels={"cni": "antrea"})
    guests["c1"] = guest = FakeGuest()
    guests["other"] = other = FakeGuest()

    # An empty selector selects nothing; the condition is left alone.
    _crs(api, "none", RESOURCES, selector={})
    assert _pass(controller, "none") is None
    assert condition(api.get(RESOURCESETS, NS, "none"), "ResourcesApplied") is None

    # A missing resource: the others are applied, the condition says what is missing.
    _crs(api, "partial", [{"kind": "ConfigMap", "name": "absent"},
                          {"kind": "Secret", "name": "addon-config"}],
         selector={"matchExpressions": [{"key": "cni", "operator": "In",
                                         "values": ["calico", "cilium"]}]})
    assert _pass(controller, "partial") is None
    applied = condition(api.get(RESOURCESETS, NS, "partial"), "ResourcesApplied")
    assert (applied["status"], applied["reason"]) == ("False", "RetrievingResourceFailed")
    assert applied["message"] == 'configmaps "absent" not found'
    assert guest.calls == [("apply", "ConfigMap", "addon-config")] and other.calls == []

    # The guest refuses an object: ApplyFailed, recorded as not applied, tried again.
    def refuse(obj: Obj) -> str:
        raise ApiError(422, "Invalid", "ResourceQuota.v1 \"pods\" is invalid")

    guest.apply = refuse  # type: ignore[method-assign]
    _crs(api, "quota", [{"kind": "ConfigMap", "name": "calico"}])
    assert _pass(controller, "quota") == controller.resync
    applied = condition(api.get(RESOURCESETS, NS, "quota"), "ResourcesApplied")
    assert (applied["status"], applied["reason"]) == ("False", "ApplyFailed")
    assert "is invalid" in applied["message"]
    entry = next(b for b in api.get(RESOURCESET_BINDINGS, NS, "c1")["spec"]["bindings"]
                 if b["clusterResourceSetName"] == "quota")
    assert entry["resources"][0]["applied"] is False
    assert _events(api, "ApplyFailed")[0]["type"] == "Warning"


def test_deletion_takes_the_set_out_of_every_binding(
        api: LocalApi, controller: ClusterResourceSetController, guests: dict[str, FakeGuest],
        addons: dict[str, Obj]) -> None:
    _cluster(api, "c1")
    _cluster(api, "c2")
    guests["c1"], guests["c2"] = FakeGuest(), FakeGuest()
    _crs(api, "calico", [{"kind": "ConfigMap", "name": "calico"}])
    _crs(api, "config", [{"kind": "Secret", "name": "addon-config"}],
         selector={"matchLabels": {"cni": "calico"}})
    for name in ("calico", "config"):
        assert _pass(controller, name) is None
    for cluster in ("c1", "c2"):
        binding = api.get(RESOURCESET_BINDINGS, NS, cluster)
        assert [b["clusterResourceSetName"] for b in binding["spec"]["bindings"]] == \
            ["calico", "config"]

    api.delete(RESOURCESETS, NS, "calico")
    assert _pass(controller, "calico") is None
    assert get_or_none(api, RESOURCESETS, NS, "calico") is None
    for cluster in ("c1", "c2"):
        binding = api.get(RESOURCESET_BINDINGS, NS, cluster)
        assert [b["clusterResourceSetName"] for b in binding["spec"]["bindings"]] == ["config"]
        assert [o["kind"] for o in binding["metadata"]["ownerReferences"]] == \
            ["Cluster", "ClusterResourceSet"]
        assert binding["metadata"]["ownerReferences"][1]["name"] == "config"

    # The last set out deletes the binding.
    api.delete(RESOURCESETS, NS, "config")
    assert _pass(controller, "config") is None
    assert listed_bindings(api) == []


def listed_bindings(api: LocalApi) -> list[Obj]:
    return api.list(RESOURCESET_BINDINGS, NS)[0]


def test_a_new_cluster_is_seen_through_the_watch(
        api: LocalApi, controller: ClusterResourceSetController, guests: dict[str, FakeGuest],
        addons: dict[str, Obj]) -> None:
    _crs(api, "calico", [{"kind": "ConfigMap", "name": "calico"}])
    guests["late"] = guest = FakeGuest()
    stop = threading.Event()
    runner = threading.Thread(target=controller.run, args=(stop,), daemon=True)
    runner.start()
    try:
        _cluster(api, "late")
        deadline = time.monotonic() + 10.0
        while get_or_none(api, RESOURCESET_BINDINGS, NS, "late") is None:
            assert time.monotonic() < deadline, "the new cluster was not seen"
            stop.wait(0.05)
        assert len(guest.objects) == 3
    finally:
        stop.set()
        runner.join(timeout=5.0)
    assert not runner.is_alive()


class StubClient:
    """The guest's ApiClient: a ResourceQuota exists already."""

    def __init__(self, down: bool = False) -> None:
        self.down = down
        self.requests: list[tuple[str, str, Any]] = []

    def create(self, path: str, body: Obj) -> Obj:
        if self.down:
            raise requests.ConnectionError("refused")
        self.requests.append(("POST", path, body))
        if body["kind"] == "ResourceQuota":
            raise ApiError(409, "AlreadyExists", 'resourcequotas "pods" already exists')
        return body

    def get(self, path: str) -> Obj:
        self.requests.append(("GET", path, None))
        return {"metadata": {"name": "pods", "resourceVersion": "42"}}

    def replace(self, path: str, body: Obj) -> Obj:
        self.requests.append(("PUT", path, body))
        return body


def test_the_guest_client_creates_or_replaces() -> None:
    client = StubClient()
    guest = GuestCluster("https://192.0.2.10:6443", client)  # type: ignore[arg-type]
    assert guest.replace(CONFIG) == "created"
    assert guest.replace(QUOTA) == "replaced"
    item = "/api/v1/namespaces/default/resourcequotas/pods"
    assert [(m, p) for m, p, _ in client.requests] == [
        ("POST", "/api/v1/namespaces/kube-system/configmaps"),
        ("POST", "/api/v1/namespaces/default/resourcequotas"), ("GET", item), ("PUT", item)]
    assert client.requests[-1][2]["metadata"]["resourceVersion"] == "42"
    assert "resourceVersion" not in QUOTA["metadata"]  # the caller's object is not changed
    with pytest.raises(GuestUnreachable):
        GuestCluster("https://192.0.2.10:6443",
                     StubClient(down=True)).replace(QUOTA)  # type: ignore[arg-type]


def test_guest_resource_names_follow_kubernetes_pluralisation() -> None:
    from appliance.clusters.guest import plural_of

    assert [plural_of(k) for k in ("StorageClass", "NetworkPolicy", "Ingress", "Endpoints",
                                   "Deployment", "ConfigMap", "PriorityClass")] == [
        "storageclasses", "networkpolicies", "ingresses", "endpoints", "deployments",
        "configmaps", "priorityclasses"]
