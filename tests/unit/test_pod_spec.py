"""How a pod's containers are resolved: argv, environment, volumes (kubelet's rules)."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from appliance.pods.spec import (
    ConfigError,
    ImageConfig,
    argv_for,
    containers,
    environment,
    expand,
    volumes,
)

IMAGE = ImageConfig(env=("PATH=/usr/bin:/bin", "LANG=C.UTF-8"), entrypoint=("/entry",),
                    cmd=("serve", "--port=80"), working_dir="/srv")
OBJECTS: dict[tuple[str, str], dict[str, Any]] = {
    ("configmaps", "settings"): {"data": {"MODE": "fast", "bad key": "x",
                                          "app.conf": "a=1\n"}},
    ("secrets", "creds"): {"data": {"PASSWORD": base64.b64encode(b"s3cret").decode()}},
}


def read(plural: str, name: str) -> dict[str, Any] | None:
    return OBJECTS.get((plural, name))


def _pod(**container: Any) -> dict[str, Any]:
    return {"metadata": {"name": "web", "namespace": "dev", "uid": "u-1",
                         "labels": {"tier": "front"}},
            "spec": {"nodeName": "host-a", "containers": [{"name": "app", "image": "x",
                                                           **container}]},
            "status": {"podIP": "198.19.0.7"}}


@pytest.mark.parametrize("container, argv", [
    ({}, ("/entry", "serve", "--port=80")),
    ({"args": ["check"]}, ("/entry", "check")),
    ({"command": ["/bin/sh", "-c"], "args": ["echo hi"]}, ("/bin/sh", "-c", "echo hi")),
    ({"command": ["/bin/true"]}, ("/bin/true",)),
])
def test_argv_follows_kubernetes(container: dict[str, Any], argv: tuple[str, ...]) -> None:
    assert argv_for(container, IMAGE) == argv


def test_expand() -> None:
    env = {"A": "1", "B": "two"}
    assert expand("$(A)-$(B)-$(C)-$$(A)-$", env) == "1-two-$(C)-$(A)-$"


def test_environment_order_sources_and_field_refs() -> None:
    pod = _pod(envFrom=[{"configMapRef": {"name": "settings"}, "prefix": "CFG_"}], env=[
        {"name": "GREETING", "value": "hello $(LANG)"},
        {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "PASSWORD"}}},
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "TIER", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['tier']"}}},
        {"name": "OPT", "valueFrom": {"configMapKeyRef": {"name": "missing", "key": "k",
                                                          "optional": True}}},
    ])
    env = dict(environment(pod, pod["spec"]["containers"][0], IMAGE, read))
    assert env["PATH"] == "/usr/bin:/bin" and env["CFG_MODE"] == "fast"
    assert "CFG_bad key" not in env and env["CFG_app.conf"] == "a=1\n"
    assert env["GREETING"] == "hello C.UTF-8" and env["PASSWORD"] == "s3cret"
    assert (env["POD"], env["IP"], env["TIER"]) == ("web", "198.19.0.7", "front")
    assert "OPT" not in env
    bare = _pod()
    assert dict(environment(bare, bare["spec"]["containers"][0], ImageConfig(), read))["PATH"] \
        == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@pytest.mark.parametrize("env, message", [
    ([{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "k"}}}],
     'configmap "nope" not found'),
    ([{"name": "X", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "nope"}}}],
     "couldn't find key nope in Secret dev/creds"),
])
def test_missing_sources_are_config_errors(env: list[Any], message: str) -> None:
    pod = _pod(env=env)
    with pytest.raises(ConfigError, match=message) as info:
        environment(pod, pod["spec"]["containers"][0], IMAGE, read)
    assert info.value.reason == "CreateContainerConfigError"


def test_volumes_and_containers() -> None:
    pod = _pod(volumeMounts=[{"name": "conf", "mountPath": "/etc/app", "readOnly": True},
                             {"name": "scratch", "mountPath": "/tmp/s"}])
    pod["spec"]["volumes"] = [
        {"name": "conf", "configMap": {"name": "settings", "items": [
            {"key": "app.conf", "path": "conf.d/app.conf", "mode": 0o600}]}},
        {"name": "creds", "secret": {"secretName": "creds", "defaultMode": 0o400}},
        {"name": "scratch", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}}]
    vols = {v.name: v for v in volumes(pod, read)}
    assert dict(vols["conf"].files) == {"conf.d/app.conf": (b"a=1\n", 0o600)}
    assert dict(vols["creds"].files) == {"PASSWORD": (b"s3cret", 0o400)}
    assert (vols["scratch"].kind, vols["scratch"].medium,
            vols["scratch"].size_limit_bytes) == ("emptyDir", "Memory", 64 * 2**20)
    (c,) = containers(pod, [IMAGE], {"app": 0}, read)
    assert c.argv == ("/entry", "serve", "--port=80") and c.working_dir == "/srv"
    assert [m.path for m in c.mounts] == ["/etc/app", "/tmp/s"] and c.mounts[0].read_only
    with pytest.raises(ConfigError, match="no command specified"):
        containers(pod, [ImageConfig()], {"app": 0}, read)
