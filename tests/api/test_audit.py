"""The audit log, as the lab writes it and ``lab audit`` reads it (issue 17): one
``audit.k8s.io/v1`` Event per request, at the Metadata level, never a secret."""

from __future__ import annotations

import json
from typing import Any

import requests

from tests.api.conftest import Api
from tests.support.server import LabServer
from tests.support.wait import wait_for

NS = "audited"
SECRET_VALUE = "s3cret-value-in-data"
WRONG_PASSWORD = "wrong-password-never-logged"


def events(lab: LabServer) -> list[dict[str, Any]]:
    path = lab.state_dir / "logs" / "audit.log"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_who_did_what_is_logged_and_no_secret_is(lab: LabServer, admin_api: Api) -> None:
    r = admin_api.call("POST", "/api/v1/namespaces", json={
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    assert r.status_code == 201, r.text
    r = admin_api.call("POST", f"/api/v1/namespaces/{NS}/secrets", json={
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"},
        "stringData": {"password": SECRET_VALUE}}, headers={"User-Agent": "audit-test/1"})
    assert r.status_code == 201, r.text
    assert admin_api.call("GET", f"/api/v1/namespaces/{NS}/secrets/db").status_code == 200
    assert admin_api.call("DELETE", f"/api/v1/namespaces/{NS}/secrets/db").status_code == 200
    assert admin_api.call("GET", "/readyz").status_code == 200
    bad = requests.post(lab.url + "/login", auth=("mallory", WRONG_PASSWORD),
                        verify=lab.ca_file, timeout=30)
    assert bad.status_code == 401

    def logged() -> list[dict[str, Any]] | None:
        found = [e for e in events(lab) if e.get("objectRef", {}).get("namespace") == NS]
        return found if len(found) >= 3 else None

    ours = wait_for("the Events of the namespace's requests", logged, 10, 0.2)
    create, get, delete = ours[:3]
    assert create["verb"] == "create" and create["responseStatus"]["code"] == 201
    assert create["objectRef"] == {"resource": "secrets", "namespace": NS,
                                   "apiVersion": "v1"}
    assert create["user"]["username"] == "admin"
    assert create["sourceIPs"] == ["127.0.0.1"] and create["userAgent"] == "audit-test/1"
    assert create["stage"] == "ResponseComplete" and create["level"] == "Metadata"
    assert get["verb"] == "get" and get["objectRef"]["name"] == "db"
    assert delete["verb"] == "delete" and delete["responseStatus"]["code"] == 200
    login = [e for e in events(lab) if e["requestURI"] == "/login"]
    assert login and login[-1]["user"]["username"] == "mallory"
    assert login[-1]["responseStatus"]["code"] == 401
    assert not [e for e in events(lab) if e["requestURI"] == "/readyz"]

    text = (lab.state_dir / "logs" / "audit.log").read_text()
    assert SECRET_VALUE not in text and WRONG_PASSWORD not in text
    assert admin_api.token not in text


def test_lab_audit_filters_by_user_and_namespace(lab: LabServer, admin_api: Api) -> None:
    admin_api.call("POST", "/api/v1/namespaces", json={
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "audited-2"}})
    r = admin_api.call("POST", "/api/v1/namespaces/audited-2/configmaps", json={
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "seen"}})
    assert r.status_code == 201, r.text
    lab.add_user("auditor", "auditor-password-1")

    lines = lab.lab("audit", "--user", "admin", "--namespace", "audited-2").stdout.splitlines()
    assert any("admin  127.0.0.1  api  create  configmaps audited-2  201" in line
               for line in lines), lines
    assert all("audited-2" in line for line in lines)
    cli = lab.lab("audit", "--json").stdout.splitlines()
    added = [json.loads(line) for line in cli if '"pacific.lab/client": "cli"' in line]
    assert added and added[-1]["verb"] == "create"
    assert added[-1]["objectRef"] == {"resource": "users", "name": "auditor",
                                      "apiGroup": "pacific.lab"}
    assert added[-1]["user"]["username"].startswith("unix:")
    assert "auditor-password-1" not in "\n".join(cli)
