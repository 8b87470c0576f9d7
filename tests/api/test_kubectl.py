"""Real kubectl binaries (1.20 through 1.33) against the supervisor API."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.api.conftest import Api, People
from tests.support.kubectl import Kubectl, kubectl_binaries
from tests.support.server import LabServer

pytestmark = pytest.mark.api

VERSIONS = kubectl_binaries()


@pytest.fixture(params=VERSIONS, ids=[label for label, _ in VERSIONS])
def kubectl(request: pytest.FixtureRequest, lab: LabServer, admin_api: Api,
            tmp_path: Path) -> Kubectl:
    label, binary = request.param
    ns = "kc-" + label.replace(".", "-")
    r = admin_api.call("GET", f"/api/v1/namespaces/{ns}")
    if r.status_code == 404:
        r = admin_api.call("POST", "/api/v1/namespaces", json={
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        assert r.status_code == 201, r.text
    kc = Kubectl(binary, lab.admin_kubeconfig, tmp_path / "kube-cache")
    kc.namespace = ns  # type: ignore[attr-defined]
    return kc


def _manifest(tmp_path: Path, name: str, ns: str, data: dict[str, str],
              labels: dict[str, str] | None = None) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {
        "name": name, "namespace": ns, "labels": labels or {"app": name}}, "data": data}))
    return path


def test_api_resources(kubectl: Kubectl) -> None:
    out = kubectl.run("api-resources").stdout
    for line in ("configmaps", "namespaces", "resourcequotas", "rolebindings",
                 "clusterroles", "selfsubjectaccessreviews", "nodes"):
        assert line in out
    assert "cm" in out.split("configmaps", 1)[1].splitlines()[0]  # short name


def test_apply_create_change_reapply(kubectl: Kubectl, tmp_path: Path) -> None:
    ns = kubectl.namespace  # type: ignore[attr-defined]
    path = _manifest(tmp_path, "web", ns, {"color": "blue"})
    assert "configmap/web created" in kubectl.run("apply", "-f", str(path)).stdout
    assert "configmap/web unchanged" in kubectl.run("apply", "-f", str(path)).stdout
    path = _manifest(tmp_path, "web", ns, {"color": "green", "size": "m"})
    assert "configmap/web configured" in kubectl.run("apply", "-f", str(path)).stdout
    live = json.loads(kubectl.run("get", "cm", "web", "-n", ns, "-o", "json").stdout)
    assert live["data"] == {"color": "green", "size": "m"}
    # Removing a key from the manifest removes it from the object (three-way merge).
    path = _manifest(tmp_path, "web", ns, {"color": "green"})
    kubectl.run("apply", "-f", str(path))
    live = json.loads(kubectl.run("get", "cm", "web", "-n", ns, "-o", "json").stdout)
    assert live["data"] == {"color": "green"}
    # Server-side dry run changes nothing; diff shows the pending change.
    path = _manifest(tmp_path, "web", ns, {"color": "red"})
    assert "server dry run" in kubectl.run("apply", "--dry-run=server", "-f", str(path)).stdout
    live = json.loads(kubectl.run("get", "cm", "web", "-n", ns, "-o", "json").stdout)
    assert live["data"] == {"color": "green"}
    diff = kubectl.run("diff", "-f", str(path), check=False)
    assert diff.returncode == 1, diff.stderr
    assert "-  color: green" in diff.stdout and "+  color: red" in diff.stdout
    # Server-side apply creates and updates.
    ssa = _manifest(tmp_path, "ssa", ns, {"k": "v1"})
    assert "serverside-applied" in kubectl.run("apply", "--server-side", "-f", str(ssa)).stdout
    ssa = _manifest(tmp_path, "ssa", ns, {"k": "v2"})
    kubectl.run("apply", "--server-side", "-f", str(ssa))
    got = json.loads(kubectl.run("get", "cm", "ssa", "-n", ns, "-o", "json").stdout)
    assert got["data"] == {"k": "v2"}


def test_get_outputs_and_selectors(kubectl: Kubectl, tmp_path: Path) -> None:
    ns = kubectl.namespace  # type: ignore[attr-defined]
    kubectl.run("apply", "-f", str(_manifest(tmp_path, "one", ns, {"a": "1"}, {"tier": "front"})))
    kubectl.run("apply", "-f", str(_manifest(tmp_path, "two", ns, {"a": "1", "b": "2"},
                                             {"tier": "back"})))
    as_yaml = yaml.safe_load(kubectl.run("get", "cm", "one", "-n", ns, "-o", "yaml").stdout)
    assert as_yaml["kind"] == "ConfigMap" and as_yaml["metadata"]["uid"]
    as_json = json.loads(kubectl.run("get", "cm", "-n", ns, "-o", "json").stdout)
    assert {"one", "two"} <= {i["metadata"]["name"] for i in as_json["items"]}
    wide = kubectl.run("get", "cm", "-n", ns, "-o", "wide").stdout
    header = wide.splitlines()[0].split()
    assert header[:3] == ["NAME", "DATA", "AGE"]
    row = next(line.split() for line in wide.splitlines() if line.startswith("two "))
    assert row[1] == "2"
    selected = kubectl.run("get", "cm", "-n", ns, "-l", "tier=back", "-o", "name").stdout.split()
    assert selected == ["configmap/two"]
    none = kubectl.run("get", "cm", "-n", ns, "-l", "tier in (nowhere)")
    assert "No resources found" in none.stderr
    everywhere = kubectl.run("get", "cm", "-A", "-l", "tier=front").stdout
    assert ns in everywhere
    missing = kubectl.run("get", "cm", "nope", "-n", ns, check=False)
    assert missing.returncode == 1
    assert 'configmaps "nope" not found' in missing.stderr


def test_watch_sees_updates(kubectl: Kubectl, tmp_path: Path) -> None:
    ns = kubectl.namespace  # type: ignore[attr-defined]
    kubectl.run("apply", "-f", str(_manifest(tmp_path, "watched", ns, {"n": "0"})))
    every = kubectl.start("get", "cm", "-n", ns, "-w")
    single = kubectl.start("get", "cm", "watched", "-n", ns, "-w")
    try:
        every.wait_for_line(lambda line: line.startswith("watched "))
        single.wait_for_line(lambda line: line.startswith("watched "))
        for i in range(1, 4):
            kubectl.run("patch", "cm", "watched", "-n", ns, "--type", "merge",
                        "-p", json.dumps({"data": {f"k{i}": "x"}}))
        # DATA goes 1 -> 2 -> 3 -> 4: every change is printed, by both watches.
        every.wait_for_line(lambda line: line.split()[:2] == ["watched", "4"])
        single.wait_for_line(lambda line: line.split()[:2] == ["watched", "4"])
        assert [line.split()[1] for line in single.lines if line.startswith("watched")] == \
            ["1", "2", "3", "4"]
    finally:
        every.stop()
        single.stop()


def test_patch_types(kubectl: Kubectl, tmp_path: Path) -> None:
    ns = kubectl.namespace  # type: ignore[attr-defined]
    kubectl.run("apply", "-f", str(_manifest(tmp_path, "patched", ns, {"a": "1"})))
    kubectl.run("patch", "cm", "patched", "-n", ns, "--type", "merge",
                "-p", '{"data":{"b":"2"}}')
    kubectl.run("patch", "cm", "patched", "-n", ns, "--type", "json",
                "-p", '[{"op":"remove","path":"/data/a"},{"op":"add","path":"/data/c","value":"3"}]')
    kubectl.run("patch", "cm", "patched", "-n", ns, "-p", '{"data":{"d":"4"}}')  # strategic
    data = json.loads(kubectl.run("get", "cm", "patched", "-n", ns, "-o", "json").stdout)["data"]
    assert data == {"b": "2", "c": "3", "d": "4"}
    bad = kubectl.run("patch", "cm", "patched", "-n", ns, "--type", "json",
                      "-p", '[{"op":"test","path":"/data/b","value":"nope"}]', check=False)
    assert bad.returncode != 0


def test_delete_waits_for_finalizer(kubectl: Kubectl, tmp_path: Path) -> None:
    ns = kubectl.namespace  # type: ignore[attr-defined]
    kubectl.run("apply", "-f", str(_manifest(tmp_path, "held", ns, {"a": "1"})))
    kubectl.run("patch", "cm", "held", "-n", ns, "--type", "merge",
                "-p", '{"metadata":{"finalizers":["example.com/hold"]}}')
    deleting = kubectl.start("delete", "cm", "held", "-n", ns)
    try:
        deleting.wait_for_line(lambda line: '"held" deleted' in line)
        got = json.loads(kubectl.run("get", "cm", "held", "-n", ns, "-o", "json").stdout)
        assert got["metadata"]["deletionTimestamp"]
        assert deleting.running(), "kubectl delete must wait while a finalizer holds the object"
        kubectl.run("patch", "cm", "held", "-n", ns, "--type", "json",
                    "-p", '[{"op":"remove","path":"/metadata/finalizers"}]')
        assert deleting.wait(30) == 0
    finally:
        deleting.stop()
    gone = kubectl.run("get", "cm", "held", "-n", ns, check=False)
    assert "not found" in gone.stderr


def test_auth_can_i_per_role(kubectl: Kubectl, people: People) -> None:
    expect = {
        # (verb, resource): owner, edit, view, nobody
        ("create", "configmaps"): ("yes", "yes", "no", "no"),
        ("get", "configmaps"): ("yes", "yes", "yes", "no"),
        ("get", "secrets"): ("yes", "yes", "no", "no"),
        ("create", "rolebindings"): ("yes", "no", "no", "no"),
        ("update", "resourcequotas"): ("yes", "no", "no", "no"),
    }
    users = ("olivia", "eddie", "vera", "nobody")
    for (verb, resource), answers in expect.items():
        for user, answer in zip(users, answers, strict=True):
            proc = kubectl.as_user(people.kubeconfigs[user]).run(
                "auth", "can-i", verb, resource, "-n", "team-a", check=False)
            assert proc.stdout.strip().startswith(answer), (user, verb, resource, proc.stdout,
                                                            proc.stderr)
            assert proc.returncode == (0 if answer == "yes" else 1)
    # Nobody but the administrator has rights in a namespace they were not given.
    for user in users:
        proc = kubectl.as_user(people.kubeconfigs[user]).run(
            "auth", "can-i", "create", "configmaps", "-n", "team-b", check=False)
        assert proc.stdout.strip().startswith("no")
    assert kubectl.run("auth", "can-i", "create", "namespaces").stdout.strip() == "yes"
