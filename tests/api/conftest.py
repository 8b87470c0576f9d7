from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.support.server import LabServer

PASSWORD = "correct-horse-battery"


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabServer]:
    server = LabServer(tmp_path_factory.mktemp("lab") / "state")
    server.start()
    yield server
    server.stop()


@dataclass
class Api:
    """Plain HTTPS requests against the lab, for status-code level checks."""

    lab: LabServer
    token: str

    def session(self) -> requests.Session:
        s = requests.Session()
        s.trust_env = False
        s.verify = self.lab.ca_file
        if self.token:
            s.headers["Authorization"] = f"Bearer {self.token}"
        return s

    def call(self, method: str, path: str, **kw):  # type: ignore[no-untyped-def]
        with self.session() as s:  # the body is read: nothing is left open
            return s.request(method, self.lab.url + path, timeout=30, **kw)


@pytest.fixture(scope="session")
def admin_api(lab: LabServer) -> Api:
    return Api(lab, lab.admin_token())


@dataclass
class People:
    """Users with vSphere roles in namespace ``team-a``; ``team-b`` is someone else's."""

    kubeconfigs: dict[str, Path]
    tokens: dict[str, str]


@pytest.fixture(scope="session")
def people(lab: LabServer, admin_api: Api, tmp_path_factory: pytest.TempPathFactory) -> People:
    for ns in ("team-a", "team-b"):
        r = admin_api.call("POST", "/api/v1/namespaces",
                           json={"apiVersion": "v1", "kind": "Namespace",
                                 "metadata": {"name": ns}})
        assert r.status_code == 201, r.text
    roles = {"olivia": "owner", "eddie": "edit", "vera": "view", "nobody": None}
    tmp = tmp_path_factory.mktemp("people")
    kubeconfigs, tokens = {}, {}
    for name, role in roles.items():
        lab.add_user(name, PASSWORD)
        if role:
            lab.lab("grant", "team-a", name, role)
        token = lab.login(name, PASSWORD)["token"]
        tokens[name] = token
        kubeconfigs[name] = lab.kubeconfig(tmp / f"{name}.kubeconfig", token, "team-a")
    return People(kubeconfigs, tokens)
