"""Deleting a namespace empties it, then removes it (the namespace controller)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.api.conftest import Api
from tests.support.kubectl import Kubectl
from tests.support.server import LabServer

pytestmark = pytest.mark.api


def test_delete_namespace_removes_its_contents(lab: LabServer, admin_api: Api,
                                               tmp_path: Path) -> None:
    kc = Kubectl(Path("/usr/bin/kubectl"), lab.admin_kubeconfig, tmp_path / "cache")
    kc.run("create", "namespace", "doomed")
    kc.run("create", "configmap", "a", "-n", "doomed", "--from-literal=k=v")
    kc.run("create", "secret", "generic", "s", "-n", "doomed", "--from-literal=k=v")
    kc.run("create", "quota", "q", "-n", "doomed", "--hard=count/configmaps=5")
    proc = kc.run("delete", "namespace", "doomed", "--timeout=60s")
    assert 'namespace "doomed" deleted' in proc.stdout
    assert admin_api.call("GET", "/api/v1/namespaces/doomed").status_code == 404
    for plural in ("configmaps", "secrets", "resourcequotas"):
        items = admin_api.call("GET", f"/api/v1/{plural}").json()["items"]
        assert not [i for i in items if i["metadata"]["namespace"] == "doomed"]
    # Creating inside a namespace that is going away is refused; a new one with the
    # same name starts empty.
    kc.run("create", "namespace", "doomed")
    assert "No resources found" in kc.run("get", "configmaps", "-n", "doomed").stderr
