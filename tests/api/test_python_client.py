"""The official Kubernetes Python client: CRUD and a watch."""

from __future__ import annotations

import threading

import pytest
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from tests.support.server import LabServer

pytestmark = pytest.mark.api


@pytest.fixture
def core(lab: LabServer) -> client.CoreV1Api:
    config = client.Configuration()
    config.host = lab.url
    config.ssl_ca_cert = lab.ca_file
    config.api_key = {"authorization": "Bearer " + lab.admin_token()}
    return client.CoreV1Api(client.ApiClient(config))


def test_crud(core: client.CoreV1Api) -> None:
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="pyclient")))
    cm = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="settings", labels={"a": "b"}),
                            data={"mode": "fast"})
    created = core.create_namespaced_config_map("pyclient", cm)
    assert created.metadata.uid and created.metadata.resource_version
    got = core.read_namespaced_config_map("settings", "pyclient")
    assert got.data == {"mode": "fast"}
    got.data["mode"] = "slow"
    replaced = core.replace_namespaced_config_map("settings", "pyclient", got)
    assert int(replaced.metadata.resource_version) > int(created.metadata.resource_version)
    patched = core.patch_namespaced_config_map("settings", "pyclient",
                                               {"data": {"extra": "1"}})
    assert patched.data == {"mode": "slow", "extra": "1"}
    listed = core.list_namespaced_config_map("pyclient", label_selector="a=b")
    assert [i.metadata.name for i in listed.items] == ["settings"]
    # A stale resourceVersion is a 409 Conflict.
    got.metadata.resource_version = created.metadata.resource_version
    with pytest.raises(ApiException) as stale:
        core.replace_namespaced_config_map("settings", "pyclient", got)
    assert stale.value.status == 409
    core.delete_namespaced_config_map("settings", "pyclient")
    with pytest.raises(ApiException) as gone:
        core.read_namespaced_config_map("settings", "pyclient")
    assert gone.value.status == 404


def test_watch(core: client.CoreV1Api) -> None:
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="pywatch")))
    rv = core.list_namespaced_config_map("pywatch").metadata.resource_version
    seen: list[tuple[str, str]] = []
    w = watch.Watch()

    def follow() -> None:
        for event in w.stream(core.list_namespaced_config_map, "pywatch",
                              resource_version=rv, timeout_seconds=30):
            seen.append((event["type"], event["object"].metadata.name))
            if event["type"] == "DELETED":
                w.stop()

    t = threading.Thread(target=follow)
    t.start()
    core.create_namespaced_config_map("pywatch", client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="w1"), data={"x": "1"}))
    core.patch_namespaced_config_map("w1", "pywatch", {"data": {"x": "2"}})
    core.delete_namespaced_config_map("w1", "pywatch")
    t.join(40)
    assert not t.is_alive()
    assert seen == [("ADDED", "w1"), ("MODIFIED", "w1"), ("DELETED", "w1")]
