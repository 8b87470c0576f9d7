"""Who may do what: vSphere's owner/edit/view mapped onto RBAC, and tokens."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests

from tests.api.conftest import PASSWORD, Api, People
from tests.support.kubectl import Kubectl
from tests.support.server import LabServer

pytestmark = pytest.mark.api

KUBECTL = Path("/usr/bin/kubectl")


def _cm(name: str) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name},
            "data": {"k": "v"}}


def _as(lab: LabServer, people: People, user: str) -> Api:
    return Api(lab, people.tokens[user])


def test_view_cannot_create(lab: LabServer, people: People, tmp_path: Path) -> None:
    kc = Kubectl(KUBECTL, people.kubeconfigs["vera"], tmp_path / "cache")
    proc = kc.run("create", "configmap", "nope", "-n", "team-a", check=False)
    assert proc.returncode == 1
    assert "is forbidden" in proc.stderr and 'User "vera" cannot create' in proc.stderr
    r = _as(lab, people, "vera").call("POST", "/api/v1/namespaces/team-a/configmaps",
                                      json=_cm("nope"))
    assert r.status_code == 403 and r.json()["reason"] == "Forbidden"
    # ... but can read what is there, except Secrets.
    assert _as(lab, people, "vera").call("GET", "/api/v1/namespaces/team-a/configmaps"
                                         ).status_code == 200
    assert _as(lab, people, "vera").call("GET", "/api/v1/namespaces/team-a/secrets"
                                         ).status_code == 403


def test_edit_creates_only_in_its_namespace(lab: LabServer, people: People) -> None:
    eddie = _as(lab, people, "eddie")
    assert eddie.call("POST", "/api/v1/namespaces/team-a/configmaps",
                      json=_cm("eddies")).status_code == 201
    r = eddie.call("POST", "/api/v1/namespaces/team-b/configmaps", json=_cm("eddies"))
    assert r.status_code == 403
    assert r.json()["message"] == ('configmaps "eddies" is forbidden: User "eddie" cannot create '
                                   'resource "configmaps" in API group "" in the namespace '
                                   '"team-b"')
    # Editors cannot hand out permissions or change limits.
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": "sneaky"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                           "name": "pacific:namespace-edit"},
               "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io",
                             "name": "nobody"}]}
    assert eddie.call("POST", "/apis/rbac.authorization.k8s.io/v1/namespaces/team-a/rolebindings",
                      json=binding).status_code == 403
    # Nor list namespaces they were not given.
    assert eddie.call("GET", "/api/v1/namespaces/team-b").status_code == 403


def test_owner_manages_role_bindings(lab: LabServer, people: People, tmp_path: Path) -> None:
    olivia = Kubectl(KUBECTL, people.kubeconfigs["olivia"], tmp_path / "cache")
    olivia.run("create", "rolebinding", "nobody-views", "-n", "team-a",
               "--clusterrole=pacific:namespace-view", "--user=nobody")
    nobody = _as(lab, people, "nobody")
    assert nobody.call("GET", "/api/v1/namespaces/team-a/configmaps").status_code == 200
    # An owner cannot grant more than it holds.
    proc = olivia.run("create", "rolebinding", "too-much", "-n", "team-a",
                      "--clusterrole=cluster-admin", "--user=nobody", check=False)
    assert proc.returncode == 1 and "attempting to grant RBAC permissions not currently held" \
        in proc.stderr
    # ... nor manage bindings in a namespace it does not own.
    proc = olivia.run("create", "rolebinding", "elsewhere", "-n", "team-b",
                      "--clusterrole=pacific:namespace-view", "--user=nobody", check=False)
    assert proc.returncode == 1 and "forbidden" in proc.stderr
    olivia.run("delete", "rolebinding", "nobody-views", "-n", "team-a")
    assert nobody.call("GET", "/api/v1/namespaces/team-a/configmaps").status_code == 403


def test_missing_and_bad_tokens_are_401(lab: LabServer, tmp_path: Path) -> None:
    assert Api(lab, "").call("GET", "/api/v1/namespaces").status_code == 401
    r = Api(lab, "plab-not-a-real-token").call("GET", "/api/v1/namespaces")
    assert r.status_code == 401 and r.json()["reason"] == "Unauthorized"
    kc = lab.kubeconfig(tmp_path / "bad.kubeconfig", "plab-not-a-real-token")
    proc = Kubectl(KUBECTL, kc, tmp_path / "cache").run("get", "ns", check=False)
    assert proc.returncode == 1 and "You must be logged in to the server" in proc.stderr
    with requests.Session() as s:
        s.trust_env = False
        r = s.post(lab.url + "/login", auth=("vera", "wrong-password"), verify=lab.ca_file)
    assert r.status_code == 401


def test_expired_token_is_401(tmp_path: Path) -> None:
    short = LabServer(tmp_path / "state", extra_env={"LAB_TOKEN_TTL_SECONDS": "2"})
    short.start()
    try:
        short.add_user("tess", PASSWORD)
        token = short.login("tess", PASSWORD)["token"]
        api = Api(short, token)
        assert api.call("GET", "/apis/authorization.k8s.io/v1").status_code == 200
        deadline = time.monotonic() + 10
        while api.call("GET", "/apis/authorization.k8s.io/v1").status_code == 200:
            assert time.monotonic() < deadline, "token never expired"
            time.sleep(0.5)
        assert api.call("GET", "/apis/authorization.k8s.io/v1").status_code == 401
    finally:
        short.stop()


def test_lab_login_writes_contexts(lab: LabServer, people: People, tmp_path: Path) -> None:
    kubeconfig = tmp_path / "config"
    proc = lab.lab("login", "--server", lab.url, "-u", "eddie", "--password-stdin",
                   "--ca-file", lab.ca_file, "--kubeconfig", str(kubeconfig),
                   input=PASSWORD + "\n")
    assert "team-a" in proc.stdout
    assert oct(kubeconfig.stat().st_mode & 0o777) == "0o600"
    kc = Kubectl(KUBECTL, kubeconfig, tmp_path / "cache")
    kc.run("config", "use-context", "team-a")
    assert "eddies" in kc.run("get", "configmaps").stdout
    bad = lab.lab("login", "--server", lab.url, "-u", "eddie", "--password-stdin",
                  "--ca-file", lab.ca_file, "--kubeconfig", str(kubeconfig),
                  input="wrong\n", check=False)
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines()[-1].startswith("Error: login failed")
