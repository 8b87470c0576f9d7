"""core/v1 Pod through the real object service on a throwaway SQLite store: defaults,
validation with Kubernetes' messages, quota, grace periods and printing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from appliance.errors import ApiError
from appliance.kinds import default_registry
from appliance.kinds.pods import POD_FINALIZER, pod_status_text, qos_class, vm_size
from appliance.kinds.registry import Obj
from appliance.objects import MERGE_PATCH, SYSTEM, ObjectService, Target, WriteOptions
from appliance.store.db import make_engine, migrate
from appliance.store.repo import Store
from appliance.util.timefmt import parse_rfc3339


@pytest.fixture
def service(tmp_path: Path) -> ObjectService:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    migrate(engine)
    svc = ObjectService(Store(engine), default_registry())
    svc.create(SYSTEM, _t(svc, "namespaces", ""), {"apiVersion": "v1", "kind": "Namespace",
                                                   "metadata": {"name": "dev"}})
    return svc


def _t(svc: ObjectService, plural: str, ns: str = "dev", name: str = "",
       sub: str = "") -> Target:
    kind = svc.registry.by_group_plural("", plural)
    assert kind is not None
    return Target(kind, "v1", ns, name, sub)


def _pod(name: str = "p", **spec: Any) -> Obj:
    body: Obj = {"containers": [{"name": "c", "image": "127.0.0.1:5000/demo/busybox:1.36"}]}
    body.update(spec)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": body}


def _invalid(svc: ObjectService, pod: Obj) -> str:
    with pytest.raises(ApiError) as info:
        svc.create(SYSTEM, _t(svc, "pods"), pod)
    assert info.value.code == 422, info.value.message
    return info.value.message


def test_defaults_like_kube_apiserver_and_a_limit_range(service: ObjectService) -> None:
    pod = service.create(SYSTEM, _t(service, "pods"), _pod()).obj
    spec = pod["spec"]
    assert spec["restartPolicy"] == "Always" and spec["terminationGracePeriodSeconds"] == 30
    assert spec["dnsPolicy"] == "ClusterFirst" and spec["schedulerName"] == "default-scheduler"
    c = spec["containers"][0]
    assert c["imagePullPolicy"] == "IfNotPresent"
    assert c["terminationMessagePath"] == "/dev/termination-log"
    assert c["resources"]["requests"] == {"cpu": "100m", "memory": "256Mi"}
    assert pod["status"] == {"phase": "Pending", "qosClass": "Burstable"}
    assert POD_FINALIZER in pod["metadata"]["finalizers"]
    latest = service.create(SYSTEM, _t(service, "pods"), _pod(
        "q", containers=[{"name": "c", "image": "busybox", "resources": {
            "limits": {"cpu": "1", "memory": "128Mi"}}}])).obj
    c = latest["spec"]["containers"][0]
    assert c["imagePullPolicy"] == "Always"
    # A limit without a request requests the limit: Guaranteed.
    assert c["resources"]["requests"] == {"cpu": "1", "memory": "128Mi"}
    assert latest["status"]["qosClass"] == "Guaranteed"


@pytest.mark.parametrize("spec, message", [
    ({"containers": []}, "spec.containers: Required value"),
    ({"containers": [{"name": "Bad_Name", "image": "x"}]}, "spec.containers[0].name"),
    ({"containers": [{"name": "c"}]}, "spec.containers[0].image: Required value"),
    ({"containers": [{"name": "c", "image": "x"}, {"name": "c", "image": "y"}]},
     "spec.containers: Duplicate value: 'c'"),
    ({"restartPolicy": "Sometimes"}, 'spec.restartPolicy: Unsupported value: \'Sometimes\''),
    ({"volumes": [{"name": "h", "hostPath": {"path": "/etc"}}]},
     "spec.volumes[0].hostPath: Forbidden: host paths are never given to pods"),
    ({"volumes": [{"name": "v"}]}, "spec.volumes[0]: Required value: must specify a volume"),
    ({"hostNetwork": True}, "spec.hostNetwork: Forbidden"),
    ({"containers": [{"name": "c", "image": "x", "volumeMounts": [
        {"name": "nope", "mountPath": "/data"}]}]},
     "spec.containers[0].volumeMounts[0].name: Not found: 'nope'"),
    ({"containers": [{"name": "c", "image": "x", "volumeMounts": [
        {"name": "v", "mountPath": "/data/../etc"}]}], "volumes": [{"name": "v", "emptyDir": {}}]},
     "must be an absolute path below / without '..'"),
    ({"containers": [{"name": "c", "image": "x", "env": [{"name": "1X", "value": "y"}]}]},
     "spec.containers[0].env[0].name"),
    ({"containers": [{"name": "c", "image": "x", "resources": {
        "requests": {"cpu": "2"}, "limits": {"cpu": "1"}}}]},
     "must be less than or equal to cpu limit of 1"),
    ({"containers": [{"name": "c", "image": "x", "ports": [
        {"containerPort": 80, "hostPort": 80}]}]}, "hostPort: Forbidden"),
    ({"volumes": [{"name": "s", "secret": {"secretName": "x", "items": [
        {"key": "k", "path": "../escape"}]}}]}, "must be a relative path without '..'"),
])
def test_bad_pods_are_refused_with_the_field(service: ObjectService, spec: Obj,
                                             message: str) -> None:
    assert message in _invalid(service, _pod(**spec))
    assert service.list(SYSTEM, _t(service, "pods")).items == []


def test_spec_is_immutable_but_the_binding_is_set_once(service: ObjectService) -> None:
    service.create(SYSTEM, _t(service, "nodes", ""), {
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": "host-a"}})
    service.create(SYSTEM, _t(service, "pods"), _pod())
    with pytest.raises(ApiError, match="pod updates may not change fields"):
        service.patch(SYSTEM, _t(service, "pods", name="p"), MERGE_PATCH, {"spec": {
            "containers": [{"name": "c", "image": "other:1"}]}}, WriteOptions())
    service.patch(SYSTEM, _t(service, "pods", name="p"), MERGE_PATCH,
                  {"spec": {"nodeName": "host-a"}}, WriteOptions())
    with pytest.raises(ApiError, match="immutable once set"):
        service.patch(SYSTEM, _t(service, "pods", name="p"), MERGE_PATCH,
                      {"spec": {"nodeName": "host-b"}}, WriteOptions())


def test_quota_counts_requests_and_pods_and_frees_them_when_finished(
        service: ObjectService) -> None:
    service.create(SYSTEM, _t(service, "resourcequotas"), {
        "apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "q"},
        "spec": {"hard": {"requests.cpu": "200m", "count/pods": "5"}}})
    service.create(SYSTEM, _t(service, "pods"), _pod("a"))
    service.create(SYSTEM, _t(service, "pods"), _pod("b"))
    with pytest.raises(ApiError) as info:
        service.create(SYSTEM, _t(service, "pods"), _pod("c"))
    assert info.value.code == 403
    assert "exceeded quota: q, requested: requests.cpu=100m, used: requests.cpu=200m, " \
           "limited: requests.cpu=200m" in info.value.message
    # A finished pod holds no CPU: the next one fits.
    service.patch(SYSTEM, _t(service, "pods", name="a", sub="status"), MERGE_PATCH,
                  {"status": {"phase": "Succeeded"}}, WriteOptions())
    service.create(SYSTEM, _t(service, "pods"), _pod("c"))
    quota = service.get(SYSTEM, _t(service, "resourcequotas", name="q"))
    assert quota["status"]["used"]["count/pods"] == "3"
    assert quota["status"]["used"]["requests.cpu"] == "200m"


def test_delete_waits_for_the_agent_with_the_pods_grace_period(
        service: ObjectService) -> None:
    service.create(SYSTEM, _t(service, "pods"), _pod(terminationGracePeriodSeconds=45))
    gone = service.delete(SYSTEM, _t(service, "pods", name="p"))
    meta = gone["metadata"]
    assert meta["deletionGracePeriodSeconds"] == 45
    created = parse_rfc3339(meta["creationTimestamp"])
    assert (parse_rfc3339(meta["deletionTimestamp"]) - created).total_seconds() >= 44
    # kubectl delete --now: a shorter grace period shortens it; a longer one does not.
    again = service.delete(SYSTEM, _t(service, "pods", name="p"), {"gracePeriodSeconds": 1})
    assert again["metadata"]["deletionGracePeriodSeconds"] == 1
    later = service.delete(SYSTEM, _t(service, "pods", name="p"), {"gracePeriodSeconds": 100})
    assert later["metadata"]["deletionGracePeriodSeconds"] == 1
    with pytest.raises(ApiError, match="gracePeriodSeconds must be an integer"):
        service.delete(SYSTEM, _t(service, "pods", name="p"), {"gracePeriodSeconds": "soon"})


def test_vm_size_follows_limits_then_requests() -> None:
    assert vm_size(_pod()) == (1, 256 + 64)
    two = _pod(containers=[
        {"name": "a", "image": "x", "resources": {"limits": {"cpu": "1500m", "memory": "1Gi"}}},
        {"name": "b", "image": "x", "resources": {"requests": {"cpu": "1", "memory": "64Mi"}}}])
    assert vm_size(two) == (3, 1024 + 64 + 64)
    assert qos_class(two["spec"]) == "Burstable"


@pytest.mark.parametrize("status, deleting, shown", [
    ({"phase": "Pending", "containerStatuses": [
        {"name": "c", "state": {"waiting": {"reason": "ContainerCreating"}}}]}, False,
     "ContainerCreating"),
    ({"phase": "Pending", "containerStatuses": [
        {"name": "c", "state": {"waiting": {"reason": "ImagePullBackOff"}}}]}, False,
     "ImagePullBackOff"),
    ({"phase": "Running", "containerStatuses": [
        {"name": "c", "ready": True, "state": {"running": {}}}]}, False, "Running"),
    ({"phase": "Succeeded", "containerStatuses": [
        {"name": "c", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]},
     False, "Completed"),
    ({"phase": "Failed", "containerStatuses": [
        {"name": "c", "state": {"terminated": {"exitCode": 3}}}]}, False, "ExitCode:3"),
    ({"phase": "Running", "containerStatuses": [
        {"name": "c", "ready": True, "state": {"running": {}}}]}, True, "Terminating"),
])
def test_status_column_reads_like_kubectl(status: Obj, deleting: bool, shown: str) -> None:
    pod = _pod()
    pod["status"] = status
    if deleting:
        pod["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert pod_status_text(pod) == shown
