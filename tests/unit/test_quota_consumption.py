"""requests.cpu / requests.memory / requests.storage for any kind that declares
what it consumes, through the real object service on a throwaway SQLite store."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from appliance.errors import ApiError
from appliance.kinds import default_registry
from appliance.kinds.registry import Kind, Lookup, Obj, Version
from appliance.kinds.schema import integer, obj, string, top_level
from appliance.objects import SYSTEM, ObjectService, Target
from appliance.store.db import make_engine, migrate
from appliance.store.repo import Store
from appliance.util.quantity import parse_quantity


def _widget_consumes(o: Obj, _lookup: Lookup) -> dict[str, Decimal]:
    spec = o.get("spec") or {}
    return {"requests.cpu": Decimal(spec.get("cpus", 0)),
            "requests.memory": parse_quantity(spec.get("memory", "0")),
            "requests.storage": parse_quantity(spec.get("disk", "0"))}


WIDGET = Kind(group="example.pacific.lab", kind="Widget", plural="widgets", singular="widget",
              namespaced=True, consumes=_widget_consumes,
              versions=(Version("v1", top_level(spec=obj({
                  "cpus": integer(), "memory": string(), "disk": string()})), storage=True),))


@pytest.fixture
def service(tmp_path: Path) -> ObjectService:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    migrate(engine)
    registry = default_registry()
    registry.register(WIDGET)
    svc = ObjectService(Store(engine), registry)
    ns_kind = registry.by_group_plural("", "namespaces")
    assert ns_kind is not None
    svc.create(SYSTEM, Target(ns_kind, "v1"), {"apiVersion": "v1", "kind": "Namespace",
                                               "metadata": {"name": "dev"}})
    quota_kind = registry.by_group_plural("", "resourcequotas")
    assert quota_kind is not None
    svc.create(SYSTEM, Target(quota_kind, "v1", "dev"), {
        "apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "limits"},
        "spec": {"hard": {"requests.cpu": "4", "requests.memory": "8Gi",
                          "requests.storage": "100Gi", "count/widgets.example.pacific.lab": "5"}}})
    return svc


def _widget(name: str, cpus: int, memory: str = "1Gi", disk: str = "10Gi") -> Obj:
    return {"apiVersion": "example.pacific.lab/v1", "kind": "Widget", "metadata": {"name": name},
            "spec": {"cpus": cpus, "memory": memory, "disk": disk}}


def _used(service: ObjectService) -> dict[str, str]:
    kind = service.registry.by_group_plural("", "resourcequotas")
    assert kind is not None
    return dict(service.get(SYSTEM, Target(kind, "v1", "dev", "limits"))["status"]["used"])


def test_consumption_is_counted_and_enforced(service: ObjectService) -> None:
    t = Target(WIDGET, "v1", "dev")
    service.create(SYSTEM, t, _widget("a", 2))
    service.create(SYSTEM, t, _widget("b", 2, memory="2Gi"))
    assert _used(service) == {"requests.cpu": "4", "requests.memory": "3Gi",
                              "requests.storage": "20Gi",
                              "count/widgets.example.pacific.lab": "2"}
    with pytest.raises(ApiError) as refused:
        service.create(SYSTEM, t, _widget("c", 1))
    assert refused.value.code == 403
    assert refused.value.message == (
        'widgets.example.pacific.lab "c" is forbidden: exceeded quota: limits, requested: '
        'requests.cpu=1, used: requests.cpu=4, limited: requests.cpu=4')
    with pytest.raises(ApiError) as too_big:
        service.create(SYSTEM, t, _widget("d", 0, disk="81Gi"))
    assert "requests.storage=81Gi, used: requests.storage=20Gi" in too_big.value.message
    # Growing an object counts only the difference; deleting frees what it held.
    with pytest.raises(ApiError):
        service.patch(SYSTEM, Target(WIDGET, "v1", "dev", "a"), "application/merge-patch+json",
                      {"spec": {"cpus": 3}})
    service.delete(SYSTEM, Target(WIDGET, "v1", "dev", "b"))
    service.patch(SYSTEM, Target(WIDGET, "v1", "dev", "a"), "application/merge-patch+json",
                  {"spec": {"cpus": 3}})
    assert _used(service)["requests.cpu"] == "3"
    assert _used(service)["count/widgets.example.pacific.lab"] == "1"
    names = [o["metadata"]["name"] for o in service.list(SYSTEM, t).items]
    assert names == ["a"]  # nothing half-made by the refused requests
